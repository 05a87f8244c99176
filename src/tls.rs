//! TLS set-up: loading the certificate chain and key, the self-signed
//! first-run certificate, and the rustls server configurations.
//!
//! PEM is read with rustls-pki-types' `PemObject` API (rustls-pemfile is
//! archived, RUSTSEC-2025-0134; PemObject is the same code, moved).
//!
//! Two server configurations are built from one certificate: one that offers
//! ALPN `dot` and one that offers no ALPN. rustls refuses a client whose ALPN
//! list shares nothing with the server's, so a client offering only other
//! protocols gets the second one and still receives DNS (R5).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertSource;

/// The ALPN protocol ID of DNS over TLS (RFC 7858 registration).
pub const ALPN_DOT: &[u8] = b"dot";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate file {0} holds no certificate (expected PEM blocks \"BEGIN CERTIFICATE\", leaf first)")]
    NoCert(PathBuf),
    #[error("cannot read private key file {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the private key in {key} does not match the certificate in {cert}, or is of an unsupported kind: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot make a self-signed certificate for {name:?}: {source}")]
    SelfSigned { name: String, source: rcgen::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's certificate chain and key, checked to belong together.
#[derive(Debug, Clone)]
pub struct Identity {
    pub certified: Arc<CertifiedKey>,
    /// True for a `--self-signed` certificate: chain warnings do not apply.
    pub self_signed: bool,
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Loads the identity the configuration names.
pub fn load_identity(source: &CertSource) -> Result<Identity, TlsError> {
    match source {
        CertSource::Files { cert, key } => load_pem_files(cert, key),
        CertSource::SelfSigned(name) => self_signed(name),
    }
}

/// Loads a PEM chain (leaf first) and its key, and checks that they match.
pub fn load_pem_files(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCert {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|source| {
        TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        }
    })?;
    Ok(Identity {
        certified: Arc::new(certified),
        self_signed: false,
    })
}

/// Makes an in-memory self-signed certificate for `name` (a DNS name or an IP
/// address), P-256 with SHA-256, as clients expect of any certificate (R24).
pub fn self_signed(name: &str) -> Result<Identity, TlsError> {
    let err = |source| TlsError::SelfSigned {
        name: name.to_string(),
        source,
    };
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).map_err(err)?;
    let chain = vec![generated.cert.der().clone()];
    let private = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let certified = CertifiedKey::from_der(chain, private, &provider())?;
    Ok(Identity {
        certified: Arc::new(certified),
        self_signed: true,
    })
}

/// Always presents the one certificate, whatever SNI the client sent: none,
/// an unknown name, or an IP literal (R4).
#[derive(Debug)]
struct DefaultCert(Arc<CertifiedKey>);

impl ResolvesServerCert for DefaultCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The server configurations for one identity, picked per ClientHello.
#[derive(Clone)]
pub struct ServerConfigs {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
}

impl ServerConfigs {
    pub fn new(identity: &Identity) -> Result<Self, TlsError> {
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(DefaultCert(identity.certified.clone())));
            config.alpn_protocols = alpn;
            Ok(Arc::new(config))
        };
        Ok(Self {
            with_alpn: build(vec![ALPN_DOT.to_vec()])?,
            without_alpn: build(Vec::new())?,
        })
    }

    /// Chooses the configuration for a client: ALPN `dot` when the client
    /// offers it or offers nothing, no ALPN when it offers only others.
    pub fn for_client(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let offers_others_only = hello
            .alpn()
            .is_some_and(|mut offered| !offered.any(|p| p == ALPN_DOT));
        if offers_others_only {
            self.without_alpn.clone()
        } else {
            self.with_alpn.clone()
        }
    }
}
