//! How an upstream connection is opened: TCP connect, the TLS handshake
//! with the name checked against the certificate, and the lookup of a
//! `tls://NAME` upstream through the bootstrap resolver; and why that failed.
//! The messages are those of `dotgate query`, which does the same.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why no connection to an upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve server {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{0:?} is not a valid TLS name")]
    BadTlsName(String),
    #[error("{0:?} is not a domain name")]
    BadName(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens a TLS connection to `addr`, verifying the certificate for `tls_name`.
pub async fn tls(
    addr: SocketAddr,
    tls_name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let name = ServerName::try_from(tls_name.to_string())
        .map_err(|_| ConnectError::BadTlsName(tls_name.to_string()))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let addr = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })
}

/// Resolves `host` (A, then AAAA when there is no A) through a plain DNS
/// resolver over UDP, without the system resolver: for `tls://NAME`
/// upstreams and `dotgate query --bootstrap`. Returns the addresses and the
/// smallest TTL among them, for how long they may be kept.
pub async fn resolve_via(
    bootstrap: SocketAddr,
    host: &str,
    timeout: Duration,
) -> Result<(Vec<IpAddr>, Duration), ConnectError> {
    let fail = |reason: String| ConnectError::Resolve {
        host: host.to_string(),
        reason,
    };
    // Fully qualified, as the name in the reply's question will be.
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let name = Name::from_utf8(&fqdn).map_err(|_| ConnectError::BadName(host.to_string()))?;
    let bind: SocketAddr = if bootstrap.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(bootstrap).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    for rtype in [RecordType::A, RecordType::AAAA] {
        let id: u16 = rand::random();
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), rtype));
        let bytes = msg
            .to_vec()
            .map_err(|e| ConnectError::Encode(e.to_string()))?;
        sock.send(&bytes).await?;
        let mut buf = vec![0u8; 65_535];
        let reply = loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| fail(format!("no answer from {bootstrap}")))??;
            // Another ID or question is not this reply (RFC 5452): keep waiting.
            let Ok(reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let asked = reply
                .queries
                .first()
                .is_some_and(|q| q.name() == &name && q.query_type() == rtype);
            if reply.metadata.id == id && asked {
                break reply;
            }
        };
        let mut ttl = u32::MAX;
        let ips: Vec<IpAddr> = reply
            .answers
            .iter()
            .filter_map(|r| {
                let ip = match &r.data {
                    hickory_proto::rr::RData::A(a) => IpAddr::V4(a.0),
                    hickory_proto::rr::RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => return None,
                };
                ttl = ttl.min(r.ttl);
                Some(ip)
            })
            .collect();
        if !ips.is_empty() {
            return Ok((ips, Duration::from_secs(u64::from(ttl))));
        }
    }
    Err(fail(format!("{bootstrap} has no address for it")))
}
