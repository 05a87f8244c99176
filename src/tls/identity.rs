//! The server's identity: loading the certificate chain and key, the
//! self-signed first-run certificate, and the [`CurrentCert`] that every
//! handshake reads and the reloader swaps.
//!
//! PEM is read with rustls-pki-types' `PemObject` API (rustls-pemfile is
//! archived, RUSTSEC-2025-0134; PemObject is the same code, moved).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertSource;
use crate::tls::tickets::TicketKeyError;

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
    #[error(transparent)]
    TicketKey(#[from] TicketKeyError),
}

/// The server's certificate chain and key, checked to belong together.
#[derive(Debug, Clone)]
pub struct Identity {
    pub certified: Arc<CertifiedKey>,
    /// True for a `--self-signed` certificate: chain warnings do not apply.
    pub self_signed: bool,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
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

/// The certificate being served: every handshake reads it, whatever SNI the
/// client sent (none, an unknown name, or an IP literal: R4), and the
/// reloader replaces it. Connections already established keep the key they
/// were made with.
#[derive(Debug)]
pub struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    pub fn new(certified: Arc<CertifiedKey>) -> Self {
        CurrentCert(RwLock::new(certified))
    }

    /// The certificate new handshakes get.
    pub fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a whole Arc: the writer only assigns.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `certified` from the next handshake on.
    pub fn set(&self, certified: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = certified;
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}
