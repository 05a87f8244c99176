//! Command-line and environment surface, declared with clap's derive API.
//!
//! No logic lives here: values are checked and turned into a
//! [`crate::config::Config`] by `config.rs`. Every `serve` flag can also come
//! from an environment variable `DOTGATE_<FLAG>` (for Docker); repeatable
//! flags take a comma-separated list there.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::duration::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "dotgate",
    version,
    about = "DNS-over-TLS (RFC 7858) in front of a plain DNS resolver"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accept DNS-over-TLS connections and forward queries to an upstream resolver.
    Serve(Box<ServeArgs>),
    /// Send queries to a DoT server, pipelined over one connection, and print the replies.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to accept DoT connections on; repeatable. `[::]:853` also takes IPv4.
    #[arg(
        long,
        env = "DOTGATE_LISTEN",
        value_delimiter = ',',
        default_value = "[::]:853"
    )]
    pub listen: Vec<SocketAddr>,

    /// PEM file with the certificate chain, leaf first, then intermediates.
    #[arg(
        long,
        env = "DOTGATE_CERT",
        requires = "key",
        conflicts_with = "self_signed"
    )]
    pub cert: Option<PathBuf>,

    /// PEM file with the private key of the leaf certificate.
    #[arg(long, env = "DOTGATE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Serve an in-memory self-signed certificate for NAME (first runs and tests only:
    /// clients that verify certificates will refuse it).
    #[arg(long, env = "DOTGATE_SELF_SIGNED", value_name = "NAME")]
    pub self_signed: Option<String>,

    /// Upstream resolver, `IP` or `IP:PORT` (port 53 by default); repeatable.
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long, env = "DOTGATE_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,

    /// Close a connection after this long with nothing in flight and nothing received.
    #[arg(long, env = "DOTGATE_IDLE_TIMEOUT", default_value = "30s")]
    pub idle_timeout: Duration,

    /// Give up on a TLS handshake (from accept to finished) after this long.
    #[arg(long, env = "DOTGATE_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: Duration,

    /// Answer SERVFAIL when the upstream has not replied within this long.
    #[arg(long, env = "DOTGATE_UPSTREAM_TIMEOUT", default_value = "2s")]
    pub upstream_timeout: Duration,

    /// Queries in flight per connection; at the limit dotgate stops reading that
    /// connection until a reply goes out.
    #[arg(long, env = "DOTGATE_MAX_INFLIGHT", default_value_t = 128)]
    pub max_inflight: usize,

    /// Open connections in total; new connections over it are closed at once.
    #[arg(long, env = "DOTGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Log filter, e.g. `info` or `dotgate=debug` (default: RUST_LOG, else `info`).
    #[arg(long, env = "DOTGATE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Name to verify the server's certificate against (default: the server as given).
    #[arg(long)]
    pub tls_name: Option<String>,

    /// PEM file of trust anchors to verify the server with (default: the system's roots).
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,

    /// Do not verify the server's certificate at all.
    #[arg(long)]
    pub insecure: bool,

    /// Give up when the replies have not all arrived within this long.
    #[arg(long, default_value = "5s")]
    pub timeout: Duration,

    /// `@SERVER[:PORT]` (port 853 by default), then `NAME [TYPE]` pairs; TYPE defaults to A.
    #[arg(required = true, num_args = 2.., value_name = "@SERVER[:PORT] NAME [TYPE]")]
    pub args: Vec<String>,
}
