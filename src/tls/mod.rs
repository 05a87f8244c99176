//! TLS set-up: the rustls server configurations around the identity of
//! [`crate::tls::identity`], and the start of the reloader.
//!
//! Server configurations are built from one certificate: for DoT, ones that
//! offer ALPN `dot` and ones that offer no ALPN (rustls refuses a client
//! whose ALPN list shares nothing with the server's, so a DoT client
//! offering only other protocols gets the second kind and still receives
//! DNS, R5); for DoH, ones that offer `h2` and `http/1.1` (a DoH client
//! offering neither is refused with `no_application_protocol`: it could not
//! speak HTTP to us anyway). Each kind comes in two orders of cipher suites
//! (see `SuiteOrder`).
//!
//! All configurations share one [`CurrentCert`] (which the reloader swaps),
//! one session-ticket encrypter and one session cache, so that a session
//! made under one resumes under another (R6). TLS 1.2 and 1.3 only (R2),
//! with rustls' default suites, all AEAD: AES-128-GCM, AES-256-GCM and
//! ChaCha20-Poly1305. No 0-RTT: `max_early_data_size` stays 0, as DNS
//! queries replayed by an attacker are not worth the saved round trip.

pub mod chain;
pub mod client;
pub mod identity;
pub mod records;
pub mod reload;
pub mod server_stream;
pub mod tickets;

use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ProducesTickets, ServerSessionMemoryCache};
use rustls::{CipherSuite, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::{CertSource, Config, TlsSettings, TlsVersion};
use crate::metrics::stats::{Stats, Transport};
use crate::proto::framing::ALPN_DOT;
use crate::tls::identity::{
    load_pem_files, provider, self_signed, CurrentCert, Identity, TlsError,
};
use reload::{Fingerprint, Reloader};
use tickets::Ticketer;

/// Sessions remembered for TLS 1.2 clients that resume by session ID rather
/// than by ticket (tickets need no server memory). A few hundred bytes each.
pub const SESSION_CACHE_SIZE: usize = 8192;

/// ALPN protocol IDs of DNS over HTTPS (RFC 7301's registry): HTTP/2 is
/// preferred, HTTP/1.1 is for clients such as curl `--http1.1`.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The ALPN protocol of TLS-ALPN-01 validations (RFC 8737 §6.2). Here, not
/// in `acme`, because the DoH listeners' configurations pick the ACME
/// responder's for it (`ServerConfigs::for_client`).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// True when a ClientHello offers `acme-tls/1`: only an ACME server's
/// validation does.
pub fn offers_acme(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS))
}

/// The server configurations for one identity, picked per ClientHello:
/// DoT with or without ALPN, or DoH, and one of two orders of cipher suites.
#[derive(Clone)]
pub struct ServerConfigs {
    /// Indexed by [`SuiteOrder`].
    with_alpn: [Arc<ServerConfig>; 2],
    without_alpn: [Arc<ServerConfig>; 2],
    doh: [Arc<ServerConfig>; 2],
    /// TLS-ALPN-01 on the DoH listeners: for a DoH ClientHello offering
    /// `acme-tls/1` (see [`ServerConfigs::answer_acme`]).
    acme: Option<Arc<ServerConfig>>,
    current: Arc<CurrentCert>,
}

/// Which cipher suite the server picks among those a client offers.
///
/// The server's order, not the client's: clients built on OpenSSL (stubby,
/// Python) put AES-256-GCM-SHA384 first, whose SHA-384 key schedule took a
/// tenth of a full handshake's CPU in a profile (aws-lc's SHA-512 has no
/// hardware help on common CPUs), while AES-128-GCM-SHA256 is as safe at
/// the 128-bit level that X25519 and P-256 give anyway. A client that
/// puts ChaCha20-Poly1305 first (a phone without AES instructions) keeps
/// it, as BoringSSL's "prioritize ChaCha" servers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SuiteOrder {
    AesFirst = 0,
    ChaChaFirst = 1,
}

impl SuiteOrder {
    /// A suite's place in this order (lower first).
    fn rank(self, suite: CipherSuite) -> u8 {
        match (self, suite_kind(suite)) {
            (Self::AesFirst, SuiteKind::Aes128) | (Self::ChaChaFirst, SuiteKind::ChaCha) => 0,
            (Self::AesFirst, SuiteKind::ChaCha) | (Self::ChaChaFirst, SuiteKind::Aes128) => 1,
            (_, SuiteKind::Aes256 | SuiteKind::Other) => 2,
        }
    }

    /// The order for a client: ChaCha20 first when the first of its
    /// suites that dotgate knows is a ChaCha20 one (unknown values, such as
    /// GREASE, are skipped).
    fn for_client(hello: &ClientHello<'_>) -> Self {
        let first = hello
            .cipher_suites()
            .iter()
            .map(|&suite| suite_kind(suite))
            .find(|kind| *kind != SuiteKind::Other)
            .unwrap_or(SuiteKind::Other);
        if first == SuiteKind::ChaCha {
            Self::ChaChaFirst
        } else {
            Self::AesFirst
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SuiteKind {
    Aes128,
    ChaCha,
    Aes256,
    /// Not one of rustls' default suites (GREASE, or older ones).
    Other,
}

fn suite_kind(suite: CipherSuite) -> SuiteKind {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => SuiteKind::Aes128,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => SuiteKind::ChaCha,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => SuiteKind::Aes256,
        _ => SuiteKind::Other,
    }
}

/// The crypto provider with its suites in `order` (a stable sort: suites
/// of one kind keep the provider's order).
fn ordered_provider(order: SuiteOrder) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = (*provider()).clone();
    provider
        .cipher_suites
        .sort_by_key(|suite| order.rank(suite.suite()));
    Arc::new(provider)
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
        let build = |alpn: &[&[u8]], order: SuiteOrder| -> Result<Arc<ServerConfig>, TlsError> {
            let mut config = ServerConfig::builder_with_provider(ordered_provider(order))
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config.ignore_client_order = true;
            config.ticketer = ticketer.clone();
            config.session_storage = sessions.clone();
            Ok(Arc::new(config))
        };
        let pair = |alpn: &[&[u8]]| -> Result<[Arc<ServerConfig>; 2], TlsError> {
            Ok([
                build(alpn, SuiteOrder::AesFirst)?,
                build(alpn, SuiteOrder::ChaChaFirst)?,
            ])
        };
        Ok(Self {
            with_alpn: pair(&[ALPN_DOT])?,
            without_alpn: pair(&[])?,
            doh: pair(&[ALPN_H2, ALPN_HTTP1])?,
            acme: None,
            current,
        })
    }

    /// Answers TLS-ALPN-01 on the DoH listeners: a DoH ClientHello that
    /// offers `acme-tls/1` gets `config` (the ACME responder's, which shows
    /// the validation certificate of the name asked for, or fails).
    pub fn answer_acme(&mut self, config: Arc<ServerConfig>) {
        self.acme = Some(config);
    }

    /// The certificate both configurations serve, for the reloader.
    pub fn current(&self) -> &Arc<CurrentCert> {
        &self.current
    }

    /// Chooses the configuration for a client of `transport`: for DoT, ALPN
    /// `dot` when the client offers it or offers nothing, no ALPN when it
    /// offers only others; for DoH, `h2` and `http/1.1`. The suite order of
    /// `SuiteOrder::for_client`.
    pub fn for_client(&self, hello: &ClientHello<'_>, transport: Transport) -> Arc<ServerConfig> {
        let order = SuiteOrder::for_client(hello) as usize;
        if transport == Transport::Doh {
            if let Some(acme) = self.acme.as_ref().filter(|_| offers_acme(hello)) {
                return acme.clone();
            }
            return self.doh[order].clone();
        }
        let offers_others_only = hello
            .alpn()
            .is_some_and(|mut offered| !offered.any(|p| p == ALPN_DOT));
        if offers_others_only {
            self.without_alpn[order].clone()
        } else {
            self.with_alpn[order].clone()
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
    let client_id_domain = config.client_ids.domain.clone();
    let serving = reload::announce(
        &identity,
        &source,
        tls_name,
        client_id_domain.as_deref(),
        "serving certificate",
    );
    reload::record_certificate(stats, serving.as_ref());
    Reloader {
        files,
        tls_name: config.tls.name.clone(),
        client_id_domain,
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
    fn all_configs_share_tickets_sessions_and_certificate_without_0rtt() {
        let settings = TlsSettings {
            min_version: TlsVersion::Tls12,
            name: None,
            ticket_key_file: None,
        };
        let configs = ServerConfigs::new(&identity(), &settings).unwrap();
        let first = &configs.with_alpn[0];
        for config in configs
            .with_alpn
            .iter()
            .chain(&configs.without_alpn)
            .chain(&configs.doh)
        {
            assert!(config.ticketer.enabled());
            assert_eq!(config.max_early_data_size, 0, "no 0-RTT");
            assert!(config.ignore_client_order, "the server's suite order");
            assert!(Arc::ptr_eq(&config.ticketer, &first.ticketer));
            assert!(Arc::ptr_eq(&config.session_storage, &first.session_storage));
        }
        for config in &configs.with_alpn {
            assert_eq!(config.alpn_protocols, vec![ALPN_DOT.to_vec()]);
        }
        for config in &configs.without_alpn {
            assert!(config.alpn_protocols.is_empty());
        }
        for config in &configs.doh {
            assert_eq!(
                config.alpn_protocols,
                vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
            );
        }
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
