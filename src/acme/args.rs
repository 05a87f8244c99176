//! The `--acme*` flags of `dotgate serve`, flattened into
//! [`crate::config::cli::ServeArgs`] so that they live beside the code that
//! uses them. Checked and turned into [`crate::acme::AcmeSettings`] by
//! `acme/settings.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::duration::Duration;

/// Let's Encrypt's production directory: publicly trusted certificates, and
/// rate limits (a few failed orders an hour), hence the staging advice in the
/// README for trials.
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
    /// https://acme-staging-v02.api.letsencrypt.org/directory, is for trials.
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
    /// --acme-tls-alpn-listen) or `dns-01` (a TXT record by RFC 2136 update;
    /// the only one for `*.` names).
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

    /// Address of the TLS-ALPN-01 responder (default `[::]:443` with
    /// `--acme-challenge tls-alpn-01`, else none).
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
