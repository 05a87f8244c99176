//! The TLS-ALPN-01 responder (RFC 8737): on `--acme-tls-alpn-listen`, a
//! TLS server that offers only ALPN `acme-tls/1` and, for a name being
//! validated, presents a self-signed certificate for that name carrying the
//! critical acmeIdentifier extension (the SHA-256 of the key
//! authorization). Handshakes for any other name or ALPN fail; nothing is
//! ever read or written after the handshake.
//!
//! Without `--acme-tls-alpn-listen`, the DoH listeners answer instead
//! (they hold port 443): with the same [`Certs`] and [`server_config`],
//! chosen for a ClientHello that offers `acme-tls/1` (`tls::ServerConfigs`),
//! and through [`answer`] while there is no certificate yet
//! (`server::no_cert`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::http::accept_bounded;
use crate::tls::identity::provider;

pub use crate::tls::ALPN_ACME_TLS;
const MAX_CONNECTIONS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AlpnError {
    #[error("cannot make the TLS-ALPN-01 certificate for {name}: {source}")]
    Cert { name: String, source: rcgen::Error },
    #[error("the TLS-ALPN-01 certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The validation certificates being presented: name -> certificate.
#[derive(Debug, Clone, Default)]
pub struct Certs(Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>);

impl Certs {
    /// Makes and presents the certificate for `name` whose acmeIdentifier is
    /// `digest` (SHA-256 of the key authorization).
    pub fn insert(&self, name: &str, digest: &[u8]) -> Result<(), AlpnError> {
        let err = |source| AlpnError::Cert {
            name: name.to_string(),
            source,
        };
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        // Not `CertifiedKey::from_der`: its key check parses the certificate
        // with webpki, which refuses the critical acmeIdentifier extension.
        let signing = provider().key_provider.load_private_key(private)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing);
        lock(&self.0).insert(name.to_string(), Arc::new(certified));
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        lock(&self.0).remove(name);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !offers_acme(&hello) {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        lock(&self.0).get(&name).cloned()
    }
}

/// The server configuration around `certs`.
pub fn server_config(certs: &Certs) -> Result<Arc<ServerConfig>, AlpnError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs.clone()));
    config.alpn_protocols = vec![ALPN_ACME_TLS.to_vec()];
    Ok(Arc::new(config))
}

/// Serves `certs` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, config: Arc<ServerConfig>, shutdown: CancellationToken) {
    let acceptor = TlsAcceptor::from(config);
    accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "TLS-ALPN-01",
        shutdown,
        move |tcp, peer| {
            let acceptor = acceptor.clone();
            async move {
                answer(&acceptor, tcp, peer, "").await;
            }
        },
    )
    .await;
}

/// One validation connection: the handshake within the timeout, then a
/// clean close. True when the handshake succeeded (the ACME server was
/// shown a validation certificate). `place` ends the log line.
pub async fn answer(acceptor: &TlsAcceptor, tcp: TcpStream, peer: SocketAddr, place: &str) -> bool {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(mut stream)) => {
            answered(stream.get_ref().1.server_name(), place);
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.shutdown()).await;
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS-ALPN-01 handshake failed");
            false
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS-ALPN-01 handshake timed out");
            false
        }
    }
}

/// Logs a validation handshake for `name`; `place` says where, when not on
/// `--acme-tls-alpn-listen`.
pub fn answered(name: Option<&str>, place: &str) {
    let name = name.unwrap_or("");
    tracing::info!(%name, "TLS-ALPN-01: answered the ACME server's validation handshake{place}");
}

pub use crate::tls::offers_acme;
