//! TLS set-up: the rustls server configurations around the identity of
//! [`crate::tls::identity`], and the start of the reloader.
//!
//! Two server configurations are built from one certificate: one that offers
//! ALPN `dot` and one that offers no ALPN. rustls refuses a client whose ALPN
//! list shares nothing with the server's, so a client offering only other
//! protocols gets the second one and still receives DNS (R5).
//!
//! Both configurations share one [`CurrentCert`] (which the reloader swaps),
//! one session-ticket encrypter and one session cache, so that a session
//! made under either resumes under either (R6). TLS 1.2 and 1.3 only (R2),
//! with rustls' default suites, all AEAD: AES-256-GCM, AES-128-GCM and
//! ChaCha20-Poly1305. No 0-RTT: `max_early_data_size` stays 0, as DNS
//! queries replayed by an attacker are not worth the saved round trip.

pub mod chain;
pub mod client;
pub mod identity;
pub mod reload;
pub mod server_stream;
pub mod tickets;

use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ProducesTickets, ServerSessionMemoryCache};
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{CertSource, Config, TlsSettings, TlsVersion};
use crate::metrics::stats::Stats;
use crate::proto::framing::ALPN_DOT;
use crate::tls::identity::{
    load_pem_files, provider, self_signed, CurrentCert, Identity, TlsError,
};
use reload::{Fingerprint, Reloader};
use tickets::Ticketer;

/// Sessions remembered for TLS 1.2 clients that resume by session ID rather
/// than by ticket (tickets need no server memory). A few hundred bytes each.
pub const SESSION_CACHE_SIZE: usize = 8192;

/// The server configurations for one identity, picked per ClientHello.
#[derive(Clone)]
pub struct ServerConfigs {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    current: Arc<CurrentCert>,
}

impl ServerConfigs {
    /// Builds both configurations around `identity` with the versions and the
    /// ticket keys of `settings` (reading `--ticket-key-file`).
    pub fn new(identity: &Identity, settings: &TlsSettings) -> Result<Self, TlsError> {
        let secret = match &settings.ticket_key_file {
            Some(path) => tickets::read_secret(path)?,
            None => tickets::random_secret()?,
        };
        let ticketer: Arc<dyn ProducesTickets> = Arc::new(Ticketer::new(secret));
        Self::with_ticketer(identity, settings.min_version, ticketer)
    }

    /// As [`ServerConfigs::new`], with a given ticket encrypter.
    pub fn with_ticketer(
        identity: &Identity,
        min_version: TlsVersion,
        ticketer: Arc<dyn ProducesTickets>,
    ) -> Result<Self, TlsError> {
        let current = Arc::new(CurrentCert::new(identity.certified.clone()));
        let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let sessions = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
            config.alpn_protocols = alpn;
            config.ticketer = ticketer.clone();
            config.session_storage = sessions.clone();
            Ok(Arc::new(config))
        };
        Ok(Self {
            with_alpn: build(vec![ALPN_DOT.to_vec()])?,
            without_alpn: build(Vec::new())?,
            current,
        })
    }

    /// The certificate both configurations serve, for the reloader.
    pub fn current(&self) -> &Arc<CurrentCert> {
        &self.current
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

/// Everything TLS needs before the first accept: loads and checks the
/// certificate (logging what is served and any chain warnings), builds the
/// configurations, and starts the reloader (file watch and SIGHUP), which
/// stops with `shutdown`. The served certificate is recorded in `stats`
/// (not-after gauge, readiness), now and on every reload. Needs a Tokio
/// runtime.
pub fn setup(
    config: &Config,
    shutdown: &CancellationToken,
    stats: &Arc<Stats>,
) -> Result<ServerConfigs, TlsError> {
    let tls_name = config.tls.name.as_deref();
    let (identity, files, loaded, source) = match &config.cert {
        CertSource::Files { cert, key } => {
            // Taken before reading, so a change during the load is seen.
            let loaded = Fingerprint::of(cert, key);
            let identity = load_pem_files(cert, key)?;
            let files = Some((cert.clone(), key.clone()));
            (identity, files, loaded, cert.display().to_string())
        }
        CertSource::SelfSigned(name) => {
            tracing::warn!(
                "serving a SELF-SIGNED certificate: clients that verify certificates \
                 (Android strict mode, stubby, kdig +tls-ca) will refuse it; pass --cert and --key for real use"
            );
            let identity = self_signed(name)?;
            let nowhere = Fingerprint::of(Path::new(""), Path::new(""));
            (identity, None, nowhere, format!("self-signed for {name}"))
        }
    };
    let configs = ServerConfigs::new(&identity, &config.tls)?;
    let serving = reload::announce(&identity, &source, tls_name, "serving certificate");
    reload::record_certificate(stats, serving.as_ref());
    Reloader {
        files,
        tls_name: config.tls.name.clone(),
        current: configs.current().clone(),
        loaded,
        serving,
        stats: stats.clone(),
    }
    .spawn(shutdown.clone());
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use rustls::CipherSuite;

    fn identity() -> Identity {
        self_signed("dns.test").expect("self-signed identity")
    }

    #[test]
    fn aes_gcm_is_offered_for_both_versions() {
        let suites: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        for wanted in [
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ] {
            assert!(
                suites.contains(&wanted),
                "{wanted:?} missing from {suites:?}"
            );
        }
    }

    #[test]
    fn both_configs_share_tickets_sessions_and_certificate_without_0rtt() {
        let settings = TlsSettings {
            min_version: TlsVersion::Tls12,
            name: None,
            ticket_key_file: None,
        };
        let configs = ServerConfigs::new(&identity(), &settings).unwrap();
        for config in [&configs.with_alpn, &configs.without_alpn] {
            assert!(config.ticketer.enabled());
            assert_eq!(config.max_early_data_size, 0, "no 0-RTT");
        }
        assert!(Arc::ptr_eq(
            &configs.with_alpn.ticketer,
            &configs.without_alpn.ticketer
        ));
        assert!(Arc::ptr_eq(
            &configs.with_alpn.session_storage,
            &configs.without_alpn.session_storage
        ));
        assert_eq!(configs.with_alpn.alpn_protocols, vec![ALPN_DOT.to_vec()]);
        assert!(configs.without_alpn.alpn_protocols.is_empty());
    }

    #[test]
    fn the_current_certificate_is_swapped_for_new_handshakes() {
        let first = identity();
        let second = identity();
        let current = CurrentCert::new(first.certified.clone());
        assert!(Arc::ptr_eq(&current.get(), &first.certified));
        current.set(second.certified.clone());
        assert!(Arc::ptr_eq(&current.get(), &second.certified));
    }

    #[test]
    fn a_bad_ticket_key_file_fails_the_configuration() {
        let settings = TlsSettings {
            min_version: TlsVersion::Tls13,
            name: None,
            ticket_key_file: Some(PathBuf::from("/nonexistent/dotgate-ticket.key")),
        };
        let e = ServerConfigs::new(&identity(), &settings)
            .err()
            .expect("a missing key file is an error")
            .to_string();
        assert!(e.contains("/nonexistent/dotgate-ticket.key"), "{e}");
    }
}
