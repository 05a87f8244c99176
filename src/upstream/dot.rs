//! A DNS-over-TLS upstream (`tls://NAME[@IP][:PORT]`): where to connect and
//! how to verify it. The connection itself (handshake with the name checked
//! against the certificate, bootstrap lookup) is [`super::connect`]; the
//! trust anchors are [`crate::tls::client`]'s, as for `dotgate query`.
//!
//! Without `@IP`, NAME is resolved through the bootstrap resolver when a
//! connection is opened, and the address is kept for the answer's TTL
//! (clamped to [`MIN_TTL`]..[`MAX_TTL`]); an expired address is resolved
//! again for the next new connection, while open connections go on.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::connect::{self, ConnectError};
use super::quick_ack::QuickAck;
use super::reply::UpstreamError;
use crate::tls::client::DialError;

/// Shortest time a bootstrap answer is kept: a TTL of 0 must not turn every
/// reconnect into a lookup storm.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time a bootstrap answer is kept, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Time allowed for one bootstrap lookup.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct DotTarget {
    name: String,
    port: u16,
    fixed: Option<IpAddr>,
    bootstrap: Option<SocketAddr>,
    config: Arc<ClientConfig>,
    resolved: Mutex<Option<(IpAddr, Instant)>>,
}

impl DotTarget {
    pub fn new(
        name: String,
        ip: Option<IpAddr>,
        port: u16,
        bootstrap: Option<SocketAddr>,
        config: Arc<ClientConfig>,
    ) -> Self {
        Self {
            fixed: ip.or_else(|| name.parse().ok()),
            name,
            port,
            bootstrap,
            config,
            resolved: Mutex::new(None),
        }
    }

    /// Opens a verified TLS connection, writing `prelude` (a PROXY header,
    /// or nothing) before the handshake. A certificate that does not cover
    /// the name fails the handshake: the upstream is never used. The TCP
    /// connection acknowledges at once (see [`QuickAck`]), as toward a
    /// `tcp://` upstream.
    pub async fn connect(&self, prelude: &[u8]) -> Result<TlsStream<QuickAck>, UpstreamError> {
        let ip = self.address().await?;
        let addr = SocketAddr::new(ip, self.port);
        let name = ServerName::try_from(self.name.clone())
            .map_err(|_| ConnectError::from(DialError::BadTlsName(self.name.clone())))?;
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::from(DialError::Connect { addr, source }))?;
        tcp.set_nodelay(true)?;
        if !prelude.is_empty() {
            tcp.write_all(prelude).await?;
        }
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, QuickAck(tcp))
            .await
            .map_err(|source| ConnectError::from(DialError::Handshake { addr, source }))?;
        Ok(stream)
    }

    async fn address(&self) -> Result<IpAddr, UpstreamError> {
        if let Some(ip) = self.fixed {
            return Ok(ip);
        }
        let cached = *self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ip, until)) = cached {
            if Instant::now() < until {
                return Ok(ip);
            }
        }
        let Some(bootstrap) = self.bootstrap else {
            return Err(UpstreamError::Connect(ConnectError::Resolve {
                host: self.name.clone(),
                reason: "no bootstrap resolver".into(),
            }));
        };
        let (ips, ttl) = connect::resolve_via(bootstrap, &self.name, BOOTSTRAP_TIMEOUT).await?;
        let Some(&ip) = ips.first() else {
            return Err(UpstreamError::Connect(ConnectError::Resolve {
                host: self.name.clone(),
                reason: "no addresses".into(),
            }));
        };
        let keep = ttl.clamp(MIN_TTL, MAX_TTL);
        tracing::debug!(upstream = %self.name, %ip, ?keep, "resolved through the bootstrap resolver");
        *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((ip, Instant::now() + keep));
        Ok(ip)
    }
}
