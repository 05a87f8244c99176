//! The `--acme*` flags of `dotgate serve` (flattened into
//! [`crate::config::cli::ServeArgs`]) and their checked form,
//! [`AcmeSettings`]: every mistake an operator can make before the first
//! order (a name the ACME server would refuse, a wildcard without DNS-01, a
//! plain-HTTP directory) is an error here, at start-up and in
//! `--check-config`. The ACME client itself is `src/acme/`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::duration::Duration;

/// Let's Encrypt's production directory: publicly trusted certificates, and
/// rate limits (a few failed orders an hour), hence the staging advice in the
/// TLS page (docs/tls.md) for trials.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Args)]
pub struct AcmeArgs {
    /// Get the certificate for NAME by ACME (Let's Encrypt by default) and renew
    /// it; repeatable for several names on one certificate (`*.NAME` needs
    /// `--acme-challenge dns-01`). Replaces --cert/--key.
    #[arg(long, env = "DOTGATE_ACME", value_delimiter = ',', value_name = "NAME")]
    pub acme: Vec<String>,

    /// Contact address given to the ACME server with the account.
    #[arg(long, env = "DOTGATE_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// ACME directory URL. Let's Encrypt's staging directory,
    /// <https://acme-staging-v02.api.letsencrypt.org/directory>, is for trials.
    #[arg(long, env = "DOTGATE_ACME_DIRECTORY", value_name = "URL", default_value = LETS_ENCRYPT)]
    pub acme_directory: String,

    /// Where the ACME account key, the certificate and its key are kept (mode
    /// 0700, files 0600) and reused across restarts.
    #[arg(
        long,
        env = "DOTGATE_ACME_DIR",
        value_name = "PATH",
        default_value = "/var/lib/dotgate/acme"
    )]
    pub acme_dir: PathBuf,

    /// PEM file of extra trust anchors for the ACME server's HTTPS (a private
    /// ACME server, or tests), on top of the system's roots.
    #[arg(long, env = "DOTGATE_ACME_CA", value_name = "PEM")]
    pub acme_ca: Option<PathBuf>,

    /// How the ACME server checks that the names are ours: `http-01` (port 80
    /// must reach --acme-http-listen), `tls-alpn-01` (port 443 must reach
    /// --acme-tls-alpn-listen, or the --doh-listen listener when that flag is
    /// not given) or `dns-01` (a TXT record by RFC 2136 update; the only one
    /// for `*.` names).
    #[arg(
        long,
        env = "DOTGATE_ACME_CHALLENGE",
        value_name = "TYPE",
        default_value = "http-01"
    )]
    pub acme_challenge: ChallengeKind,

    /// Address of the HTTP-01 responder; it answers only the tokens it is
    /// waiting for.
    #[arg(
        long,
        env = "DOTGATE_ACME_HTTP_LISTEN",
        value_name = "ADDR",
        default_value = "[::]:80"
    )]
    pub acme_http_listen: SocketAddr,

    /// Address of the TLS-ALPN-01 responder (default with `--acme-challenge
    /// tls-alpn-01`: the --doh-listen listeners when DoH is served, which answer
    /// ALPN acme-tls/1 themselves; else `[::]:443`).
    #[arg(long, env = "DOTGATE_ACME_TLS_ALPN_LISTEN", value_name = "ADDR")]
    pub acme_tls_alpn_listen: Option<SocketAddr>,

    /// DNS-01: the authoritative server (`IP[:PORT]`, port 53) that takes RFC 2136
    /// dynamic updates for the zone of the names.
    #[arg(long, env = "DOTGATE_ACME_DNS_UPDATE", value_name = "SERVER")]
    pub acme_dns_update: Option<String>,

    /// DNS-01: the TSIG key signing the updates, a file holding
    /// `name:algorithm:secret` (e.g. `hmac-sha256`, secret in base64) or a BIND
    /// `key "name" { algorithm ...; secret "..."; };` block.
    #[arg(long, env = "DOTGATE_ACME_TSIG_KEY", value_name = "FILE")]
    pub acme_tsig_key: Option<PathBuf>,

    /// First wait after a failed order; it doubles on each failure up to 6 h.
    /// Shorter only for tests against a local ACME server.
    #[arg(
        long,
        env = "DOTGATE_ACME_RETRY_DELAY",
        value_name = "D",
        default_value = "1m",
        hide = true
    )]
    pub acme_retry_delay: Duration,
}

/// `--acme-challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChallengeKind {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    #[value(name = "dns-01")]
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

/// The certificate chain in `--acme-dir`, leaf first, as the ACME server
/// sent it; served like `--cert`.
pub const CERT_FILE: &str = "cert.pem";
/// Its private key (PKCS#8 PEM); served like `--key`.
pub const KEY_FILE: &str = "key.pem";

/// The checked ACME configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The certificate's names, lower case, without a trailing dot, in the
    /// order given (the first is the subject).
    pub names: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    pub dir: PathBuf,
    /// Extra trust anchors for the ACME server's HTTPS.
    pub ca: Option<PathBuf>,
    pub challenge: Challenge,
    /// First wait after a failed order (doubling, see `renew.rs`).
    pub retry_delay: std::time::Duration,
}

/// How the ACME server validates the names, with what that needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Http01 {
        listen: SocketAddr,
    },
    TlsAlpn01 {
        /// `--acme-tls-alpn-listen` (or `[::]:443`); `None` when the DoH
        /// listeners answer instead (see [`Challenge::answer_on_doh`]).
        listen: Option<SocketAddr>,
    },
    Dns01 {
        server: SocketAddr,
        tsig_key: PathBuf,
    },
}

impl Challenge {
    pub fn kind(&self) -> ChallengeKind {
        match self {
            Challenge::Http01 { .. } => ChallengeKind::Http01,
            Challenge::TlsAlpn01 { .. } => ChallengeKind::TlsAlpn01,
            Challenge::Dns01 { .. } => ChallengeKind::Dns01,
        }
    }

    /// TLS-ALPN-01 without `--acme-tls-alpn-listen` while `--doh-listen`
    /// is served: the DoH listener answers the ACME server's `acme-tls/1`
    /// handshakes itself, since it is the one holding port 443 (a second
    /// listener could not bind it). Other challenges are left as they are.
    pub fn answer_on_doh(&mut self) {
        if let Challenge::TlsAlpn01 { listen } = self {
            *listen = None;
        }
    }

    /// True when the DoH listeners answer TLS-ALPN-01.
    pub fn on_doh_listener(&self) -> bool {
        matches!(self, Challenge::TlsAlpn01 { listen: None })
    }
}

/// Where TLS-ALPN-01 is answered unless `--acme-tls-alpn-listen` says
/// otherwise: the ACME server always connects to port 443.
const DEFAULT_TLS_ALPN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 443);

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--acme {0:?} is not a DNS name the ACME server can issue for: write a name such as dns.example.org (letters, digits and hyphens, labels of at most 63 characters, no IP address)")]
    BadName(String),
    #[error("--acme {0:?}: a wildcard name needs --acme-challenge dns-01 (the ACME server validates wildcards only through DNS)")]
    WildcardNeedsDns(String),
    #[error("--acme-directory {0:?} must be an https:// URL (RFC 8555 requires HTTPS)")]
    BadDirectory(String),
    #[error("--acme-email {0:?} is not an e-mail address")]
    BadEmail(String),
    #[error("--acme-challenge dns-01 needs --acme-dns-update SERVER (the authoritative server that takes dynamic updates) and --acme-tsig-key FILE")]
    DnsIncomplete,
    #[error("--acme-dns-update {0:?} is not an address: write IP or IP:PORT")]
    BadDnsServer(String),
    #[error("--acme-retry-delay must be longer than zero")]
    ZeroRetry,
}

impl AcmeSettings {
    /// None when no `--acme` name is given (the other `--acme-*` flags then
    /// have no effect).
    pub fn from_args(args: &AcmeArgs) -> Result<Option<Self>, SettingsError> {
        if args.acme.is_empty() {
            return Ok(None);
        }
        let mut names: Vec<String> = Vec::with_capacity(args.acme.len());
        for raw in &args.acme {
            let name = normalize_name(raw).ok_or_else(|| SettingsError::BadName(raw.clone()))?;
            if name.starts_with("*.") && args.acme_challenge != ChallengeKind::Dns01 {
                return Err(SettingsError::WildcardNeedsDns(raw.clone()));
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if !args.acme_directory.starts_with("https://") {
            return Err(SettingsError::BadDirectory(args.acme_directory.clone()));
        }
        if let Some(email) = &args.acme_email {
            let ok = email
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
                && !email.contains(char::is_whitespace);
            if !ok {
                return Err(SettingsError::BadEmail(email.clone()));
            }
        }
        let challenge = match args.acme_challenge {
            ChallengeKind::Http01 => Challenge::Http01 {
                listen: args.acme_http_listen,
            },
            ChallengeKind::TlsAlpn01 => Challenge::TlsAlpn01 {
                listen: Some(match args.acme_tls_alpn_listen {
                    Some(addr) => addr,
                    None => DEFAULT_TLS_ALPN_LISTEN,
                }),
            },
            ChallengeKind::Dns01 => {
                let (Some(server), Some(key)) = (&args.acme_dns_update, &args.acme_tsig_key) else {
                    return Err(SettingsError::DnsIncomplete);
                };
                Challenge::Dns01 {
                    server: super::parse_addr(server.trim(), 53)
                        .ok_or_else(|| SettingsError::BadDnsServer(server.clone()))?,
                    tsig_key: key.clone(),
                }
            }
        };
        if args.acme_retry_delay.0.is_zero() {
            return Err(SettingsError::ZeroRetry);
        }
        Ok(Some(AcmeSettings {
            names,
            email: args.acme_email.clone(),
            directory: args.acme_directory.clone(),
            dir: args.acme_dir.clone(),
            ca: args.acme_ca.clone(),
            challenge,
            retry_delay: args.acme_retry_delay.0,
        }))
    }

    /// The certificate chain file, which the certificate reloader watches.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    /// The certificate's private key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
}

/// A DNS name as ACME orders carry it: lower case, no trailing dot, an
/// optional leading `*.`; None for anything else (IP addresses included:
/// public CAs do not issue for them through these challenges).
pub fn normalize_name(raw: &str) -> Option<String> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    if bare.is_empty() || bare.len() > 253 || bare.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let labels_ok = bare.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    labels_ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{Cli, Command};
    use clap::Parser;

    fn settings(extra: &[&str]) -> Result<Option<AcmeSettings>, SettingsError> {
        let mut argv = vec!["dotgate", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Serve(args)) => AcmeSettings::from_args(&args.acme),
            other => panic!("not a serve command: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let s = settings(&["--acme", "DNS.Example.org."]).unwrap().unwrap();
        assert_eq!(s.names, vec!["dns.example.org".to_string()]);
        assert_eq!(s.directory, LETS_ENCRYPT);
        assert_eq!(s.dir, PathBuf::from("/var/lib/dotgate/acme"));
        assert_eq!(
            s.challenge,
            Challenge::Http01 {
                listen: "[::]:80".parse().unwrap()
            }
        );
        assert_eq!(s.retry_delay, std::time::Duration::from_secs(60));
        let s = settings(&["--acme", "a.example", "--acme-challenge", "tls-alpn-01"])
            .unwrap()
            .unwrap();
        assert_eq!(
            s.challenge,
            Challenge::TlsAlpn01 {
                listen: Some("[::]:443".parse().unwrap())
            }
        );
        assert!(settings(&[]).unwrap().is_none());
    }

    #[test]
    fn names_the_ca_would_refuse_are_errors() {
        for bad in ["192.0.2.1", "a..b", "-a.example", "a_b.example", ""] {
            let flag = format!("--acme={bad}");
            let e = settings(&[&flag]).unwrap_err().to_string();
            assert!(e.contains("--acme"), "{bad}: {e}");
        }
        let e = settings(&["--acme", "*.dns.example"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dns-01"), "{e}");
        let e = settings(&["--acme", "a.example", "--acme-directory", "http://x/dir"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
        let e = settings(&["--acme", "a.example", "--acme-challenge", "dns-01"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--acme-dns-update"), "{e}");
    }

    #[test]
    fn several_names_and_a_wildcard_with_dns01() {
        let s = settings(&[
            "--acme",
            "dns.example,*.dns.example",
            "--acme",
            "dns.example",
            "--acme-challenge",
            "dns-01",
            "--acme-dns-update",
            "127.0.0.1:5300",
            "--acme-tsig-key",
            "/k",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.names, vec!["dns.example", "*.dns.example"]);
        assert_eq!(
            s.challenge,
            Challenge::Dns01 {
                server: "127.0.0.1:5300".parse().unwrap(),
                tsig_key: "/k".into()
            }
        );
    }

    #[test]
    fn acme_replaces_cert_and_key_and_cannot_be_combined_with_them() {
        use crate::config::{CertSource, Config};
        let parse = |extra: &[&str]| {
            let mut argv = vec!["dotgate", "serve", "--upstream", "127.0.0.1"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Serve(args)) => Config::from_args(&args, std::path::Path::new("/x")),
                other => panic!("not a serve command: {other:?}"),
            }
        };
        let c = parse(&["--acme", "dns.example", "--acme-dir", "/srv/acme"]).unwrap();
        assert_eq!(
            c.cert,
            CertSource::Files {
                cert: "/srv/acme/cert.pem".into(),
                key: "/srv/acme/key.pem".into()
            }
        );
        assert!(c.acme.is_some());
        for other in [
            &["--self-signed", "x"][..],
            &["--cert", "/c", "--key", "/k"][..],
        ] {
            let mut flags = vec!["--acme", "dns.example"];
            flags.extend_from_slice(other);
            let e = parse(&flags).unwrap_err().to_string();
            assert!(e.contains("cannot be combined"), "{e}");
        }
    }
}
