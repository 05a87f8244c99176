//! The TLS client side shared by `dotgate query`, `dotgate check` and the
//! `tls://` upstreams: which certificates are trusted, the rustls client
//! configuration offering ALPN `dot`, and opening a connection with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::proto::framing::ALPN_DOT;

/// Why a TLS connection to a server could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0:?} is not a valid TLS name")]
    BadTlsName(String),
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
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens a TLS connection to `addr`, verifying the certificate for `tls_name`.
pub async fn dial(
    addr: SocketAddr,
    tls_name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, DialError> {
    let name = ServerName::try_from(tls_name.to_string())
        .map_err(|_| DialError::BadTlsName(tls_name.to_string()))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| DialError::Connect { addr, source })?;
    handshake(tcp, name, config).await
}

/// The TLS handshake over an open TCP connection, for `name` (the SNI, when
/// the configuration sends one, and the name verified).
pub async fn handshake(
    tcp: TcpStream,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, DialError> {
    let addr = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| DialError::Handshake { addr, source })
}

/// Why no client configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read CA file {path}: {source}")]
    Ca {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {0} holds no usable certificate")]
    NoCa(PathBuf),
    #[error("no system root certificates found; pass --ca FILE")]
    NoSystemRoots,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The operating system's root store.
    System,
    /// Trust anchors from a PEM file.
    Ca(PathBuf),
    /// No verification at all (testing only).
    Insecure,
}

/// Builds a client TLS configuration for the given trust, offering ALPN `dot`.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TrustError> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    Ok(Arc::new(tls_config(trust, &versions)?))
}

/// As [`client_config`], offering only `versions`, for a caller that goes on
/// to change ALPN, SNI or resumption (`dotgate check`).
pub fn tls_config(
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ClientConfig, TrustError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let mut config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        Trust::Ca(path) => builder
            .with_root_certificates(roots_from_file(path)?)
            .with_no_client_auth(),
        Trust::System => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_DOT.to_vec()];
    Ok(config)
}

/// The trust anchors of a PEM file.
pub fn roots_from_file(path: &Path) -> Result<RootCertStore, TrustError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TrustError::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TrustError::NoCa(path.to_path_buf()));
    }
    Ok(roots)
}

/// The operating system's root certificates.
pub fn system_roots() -> Result<RootCertStore, TrustError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TrustError::NoSystemRoots);
    }
    Ok(roots)
}

/// Accepts any certificate, but still checks the handshake signatures so the
/// connection is at least consistent. For `--insecure` only.
#[derive(Debug)]
pub(crate) struct AcceptAnyCert(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
