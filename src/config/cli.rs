//! Command-line and environment surface, declared with clap's derive API.
//!
//! No logic lives here: values are checked and turned into a
//! [`crate::config::Config`] by `config/mod.rs`. Every `serve` flag can also come
//! from an environment variable `DOTGATE_<FLAG>` (for Docker); repeatable
//! flags take a comma-separated list there.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::duration::Duration;

/// The version `--version` prints: the crate's, and the git commit it was
/// built from (`build.rs`; "unknown" without git), so a report names the
/// exact source.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DOTGATE_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "dotgate",
    version = VERSION,
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
    /// Send queries to a DoT server (pipelined over one connection) or a DoH
    /// server (`@https://HOST[:PORT]/PATH`, one HTTP/2 stream each), and print the replies.
    Query(QueryArgs),
    /// Check a DoT server (dotgate or any other) the way Android, stubby and
    /// systemd-resolved connect, or a DoH server (`https://HOST[:PORT]/PATH`) the
    /// way browsers do, and say what will fail and why.
    Check(CheckArgs),
    /// Print a completion script for SHELL on stdout, e.g.
    /// `dotgate completions bash > /etc/bash_completion.d/dotgate`.
    Completions(CompletionsArgs),
    /// Print the man page, dotgate(1), on stdout (`dotgate manpage | man -l -`),
    /// or write one page per subcommand into a folder.
    Manpage(ManpageArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file whose keys are these flags' names (`max-inflight = 64`); flags and
    /// environment variables win over it.
    #[arg(long, env = "DOTGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (files readable, certificate and key match,
    /// upstreams parse), print each problem, and exit: 0 when it would start.
    #[arg(long)]
    pub check_config: bool,

    /// Address to accept DoT connections on; repeatable. `[::]:853` also takes IPv4.
    #[arg(
        long,
        env = "DOTGATE_LISTEN",
        value_delimiter = ',',
        default_value = "[::]:853"
    )]
    pub listen: Vec<SocketAddr>,

    /// Address to accept DNS over HTTPS (RFC 8484) on, e.g. `[::]:443`; repeatable.
    /// TLS with the same certificate as DoT, ALPN h2 and http/1.1. Off by default.
    #[arg(
        long,
        env = "DOTGATE_DOH_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub doh_listen: Vec<SocketAddr>,

    /// Address to accept DoH over plain HTTP on (HTTP/1.1, or HTTP/2 with prior
    /// knowledge), for a reverse proxy (nginx, Caddy, Traefik) that terminates TLS
    /// in front; repeatable. Never expose it to clients directly.
    #[arg(
        long,
        env = "DOTGATE_DOH_LISTEN_PLAIN",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub doh_listen_plain: Vec<SocketAddr>,

    /// Peers (CIDR, e.g. `127.0.0.1` or `10.0.0.0/8`) whose `--doh-forwarded-header`
    /// names the client on DoH listeners: the right-most address not in this list
    /// is the client, for --allow-from (judged per request: 403), ECS, PROXY toward
    /// the upstream and logs. Repeatable. Default: none (headers are ignored).
    #[arg(
        long,
        env = "DOTGATE_DOH_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub doh_trusted_proxy: Vec<crate::config::proxy::Cidr>,

    /// The header a --doh-trusted-proxy names the client in: `x-forwarded-for`
    /// or `forwarded` (RFC 7239, its `for=`); only the one your proxy writes,
    /// since a client can send the other.
    #[arg(
        long,
        env = "DOTGATE_DOH_FORWARDED_HEADER",
        value_name = "HEADER",
        default_value = "x-forwarded-for"
    )]
    pub doh_forwarded_header: crate::config::forwarded::ForwardedHeader,

    /// The URL path DoH is served at; `PATH/ID` carries a client ID.
    #[arg(
        long,
        env = "DOTGATE_DOH_PATH",
        value_name = "PATH",
        default_value = "/dns-query"
    )]
    pub doh_path: String,

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

    /// Upstream resolver; repeatable. `IP[:PORT]` (UDP, TCP when truncated; port 53),
    /// `tcp://IP[:PORT]` (pipelined TCP only) or `tls://NAME[@IP][:PORT]` (DNS over
    /// TLS, port 853, certificate checked for NAME). Default: the nameservers of
    /// --resolv-conf, as they are (systemd-resolved's stub 127.0.0.53 included).
    #[arg(long, env = "DOTGATE_UPSTREAM", value_delimiter = ',')]
    pub upstream: Vec<String>,

    /// The resolv.conf whose nameservers are the upstreams when no --upstream is
    /// given (and the bootstrap resolver's fallback), e.g.
    /// /run/systemd/resolve/resolv.conf for systemd-resolved's own uplinks.
    #[arg(
        long,
        env = "DOTGATE_RESOLV_CONF",
        value_name = "FILE",
        default_value = crate::config::RESOLV_CONF
    )]
    pub resolv_conf: PathBuf,

    /// How queries are spread over the healthy upstreams: `first-available` (in
    /// order, the first healthy one), `round-robin` or `least-outstanding` (fewest
    /// queries in flight).
    #[arg(
        long,
        env = "DOTGATE_UPSTREAM_POLICY",
        default_value = "first-available"
    )]
    pub upstream_policy: UpstreamPolicy,

    /// Probe every upstream this often with a `. NS` query; a down upstream comes
    /// back when it answers.
    #[arg(long, env = "DOTGATE_HEALTH_CHECK_INTERVAL", default_value = "1s")]
    pub health_check_interval: Duration,

    /// PEM file of trust anchors for `tls://` upstreams (default: the system's roots).
    #[arg(long, env = "DOTGATE_UPSTREAM_CA", value_name = "PEM")]
    pub upstream_ca: Option<PathBuf>,

    /// Resolver (`IP[:PORT]`) that finds the address of a `tls://NAME` upstream
    /// given without `@IP`. Default: the first plain upstream, else /etc/resolv.conf.
    #[arg(long, env = "DOTGATE_BOOTSTRAP", value_name = "IP[:PORT]")]
    pub bootstrap: Option<String>,

    /// Close a connection after this long with nothing in flight and no message begun.
    #[arg(long, env = "DOTGATE_IDLE_TIMEOUT", default_value = "30s")]
    pub idle_timeout: Duration,

    /// Give up on a TLS handshake (from accept to finished) after this long.
    #[arg(long, env = "DOTGATE_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: Duration,

    /// Close a connection whose message, once its first byte arrived, is not
    /// complete within this long.
    #[arg(long, env = "DOTGATE_READ_TIMEOUT", default_value = "10s")]
    pub read_timeout: Duration,

    /// Answer SERVFAIL when the upstream has not replied within this long.
    #[arg(long, env = "DOTGATE_UPSTREAM_TIMEOUT", default_value = "2s")]
    pub upstream_timeout: Duration,

    /// Queries in flight per connection; at the limit dotgate stops reading that
    /// connection until a reply goes out.
    #[arg(long, env = "DOTGATE_MAX_INFLIGHT", default_value_t = 128)]
    pub max_inflight: usize,

    /// Memory in MiB, shared by all connections, for messages larger than
    /// 4 KiB; over it, such reads wait.
    #[arg(
        long,
        env = "DOTGATE_MESSAGE_MEMORY_MIB",
        default_value_t = 64,
        value_name = "MIB"
    )]
    pub message_memory_mib: usize,

    /// Open connections in total; new connections over it are closed at once.
    #[arg(long, env = "DOTGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Lowest TLS version accepted: 1.2 (Android, resolved and dnsperf need it) or 1.3.
    #[arg(long, env = "DOTGATE_TLS_MIN_VERSION", default_value = "1.2")]
    pub tls_min_version: TlsVersion,

    /// The name clients use for this server: the certificate is checked to cover it.
    #[arg(long, env = "DOTGATE_TLS_NAME", value_name = "NAME")]
    pub tls_name: Option<String>,

    /// File with a secret (at least 32 bytes, e.g. `openssl rand 80`) from which
    /// session-ticket keys are derived, so replicas resume each other's sessions.
    #[arg(long, env = "DOTGATE_TICKET_KEY_FILE", value_name = "PATH")]
    pub ticket_key_file: Option<PathBuf>,

    /// Retire a connection after this many queries: stop reading, answer what is
    /// in flight, close. Off by default.
    #[arg(long, env = "DOTGATE_MAX_QUERIES_PER_CONNECTION", value_name = "N")]
    pub max_queries_per_connection: Option<u64>,

    /// Retire a connection this long after it opened. Off by default.
    #[arg(long, env = "DOTGATE_MAX_CONNECTION_AGE", value_name = "D")]
    pub max_connection_age: Option<Duration>,

    /// Open connections per client IP address (generous: many users share one
    /// address behind NAT).
    #[arg(long, env = "DOTGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// New TLS handshakes per client IP address per second. Off by default.
    #[arg(long, env = "DOTGATE_MAX_HANDSHAKES_PER_IP_PER_SEC", value_name = "N")]
    pub max_handshakes_per_ip_per_sec: Option<u32>,

    /// Queries per second per client address (after PROXY; IPv6 per
    /// --rate-limit-v6-prefix), over every transport; over it, --rate-limit-action.
    /// Off by default.
    #[arg(long, env = "DOTGATE_MAX_QPS_PER_IP", value_name = "N")]
    pub max_qps_per_ip: Option<u32>,

    /// Queries a client may send at once above its rate (default: one second's worth).
    #[arg(long, env = "DOTGATE_MAX_QPS_BURST", value_name = "B")]
    pub max_qps_burst: Option<u32>,

    /// Queries per second per client ID (TLS server name or DoH path). Off by default.
    #[arg(long, env = "DOTGATE_MAX_QPS_PER_CLIENT_ID", value_name = "N")]
    pub max_qps_per_client_id: Option<u32>,

    /// IPv6 clients share one rate limit per prefix of this length (one site).
    #[arg(
        long,
        env = "DOTGATE_RATE_LIMIT_V6_PREFIX",
        value_name = "LEN",
        default_value_t = 56
    )]
    pub rate_limit_v6_prefix: u8,

    /// What a query over the limit gets: `refused` (a REFUSED reply), `drop` (no
    /// reply; DoH: 429) or `close` (the connection is closed; DoH: 429, then closed).
    #[arg(long, env = "DOTGATE_RATE_LIMIT_ACTION", default_value = "refused")]
    pub rate_limit_action: RateLimitAction,

    /// Never rate-limit nor ban clients of this network (CIDR); repeatable.
    #[arg(
        long,
        env = "DOTGATE_RATE_LIMIT_EXEMPT",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub rate_limit_exempt: Vec<crate::config::proxy::Cidr>,

    /// Ban an address that keeps going over --max-qps-per-ip for this long: its
    /// connections are refused at accept for --ban-for. Off by default.
    #[arg(long, env = "DOTGATE_BAN_AFTER", value_name = "D")]
    pub ban_after: Option<Duration>,

    /// How long a ban (--ban-after) lasts.
    #[arg(long, env = "DOTGATE_BAN_FOR", value_name = "D", default_value = "5m")]
    pub ban_for: Duration,

    /// Addresses (and client IDs) the rate limiter tracks at most, in a fixed
    /// table (64 bytes each); the least recently seen is forgotten first.
    #[arg(
        long,
        env = "DOTGATE_RATE_LIMIT_TABLE_SIZE",
        value_name = "N",
        default_value_t = 65_536
    )]
    pub rate_limit_table_size: usize,

    /// Log filter, e.g. `info` or `dotgate=debug` (default: RUST_LOG, else `info`).
    #[arg(long, env = "DOTGATE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address,
    /// e.g. `127.0.0.1:9853`. Off by default.
    #[arg(long, env = "DOTGATE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve only clients from this network (CIDR, e.g. `192.168.1.0/24`); others
    /// are closed at accept, before any TLS. Repeatable. Default: everyone. Behind
    /// PROXY, the client address the header carries is what is judged.
    #[arg(
        long,
        env = "DOTGATE_ALLOW_FROM",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_from: Vec<crate::config::proxy::Cidr>,

    /// Client IDs: a client whose TLS server name is `LABEL.DOMAIN` has the ID
    /// LABEL (logged at debug level; with an ID list, only listed IDs are served).
    #[arg(long, env = "DOTGATE_CLIENT_ID_DOMAIN", value_name = "DOMAIN")]
    pub client_id_domain: Option<String>,

    /// Serve only this client ID (repeatable; needs --client-id-domain, or DoH with
    /// the ID in the path): other DoT clients fail the TLS handshake with the alert
    /// access_denied, other DoH requests get 404.
    #[arg(
        long,
        env = "DOTGATE_CLIENT_ID",
        value_delimiter = ',',
        value_name = "ID"
    )]
    pub client_id: Vec<String>,

    /// File of client IDs to serve, one a line (`#` comments), re-read when it
    /// changes and on SIGHUP; adds to --client-id.
    #[arg(long, env = "DOTGATE_CLIENT_IDS", value_name = "FILE")]
    pub client_ids: Option<PathBuf>,

    /// Send each query to the upstream behind a PROXY v2 header naming the client
    /// (address, port, TLS server name): for unbound's proxy-protocol-port, dnsdist
    /// or Knot Resolver. Only for upstreams given with --upstream.
    #[arg(long, env = "DOTGATE_UPSTREAM_PROXY_PROTOCOL")]
    pub upstream_proxy_protocol: bool,

    /// Add an EDNS Client Subnet option with the client's address cut to these
    /// prefix lengths (`V4LEN,V6LEN`, e.g. `32,128` for one device each), in place
    /// of any the client sent. Reveals client addresses to the upstream. Off by default.
    #[arg(long, env = "DOTGATE_UPSTREAM_ECS", value_name = "V4LEN,V6LEN")]
    pub upstream_ecs: Option<String>,

    /// Expect a PROXY protocol header (v1 or v2) before TLS on every connection of
    /// --listen, --doh-listen and --doh-listen-plain, as sent by a load balancer; the
    /// client address it carries is used for the per-address limits and in logs.
    #[arg(long, env = "DOTGATE_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// An extra address to accept DoT on, where every connection starts with a
    /// PROXY header (for a load balancer), while --listen addresses take clients
    /// directly. Repeatable.
    #[arg(
        long,
        env = "DOTGATE_PROXY_PROTOCOL_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub proxy_protocol_listen: Vec<SocketAddr>,

    /// Where PROXY headers are expected, accept connections only from this network
    /// (CIDR, e.g. `10.0.0.0/8`); others are refused. Repeatable. Default: from anywhere.
    #[arg(
        long,
        env = "DOTGATE_PROXY_PROTOCOL_FROM",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub proxy_protocol_from: Vec<crate::config::proxy::Cidr>,

    /// The certificate by ACME (`--acme NAME` and the other `--acme-*` flags).
    #[command(flatten)]
    pub acme: crate::config::acme::AcmeArgs,
}

/// How the upstream pool picks an upstream for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamPolicy {
    /// The first healthy upstream in the order given: the others are standbys.
    FirstAvailable,
    /// Each healthy upstream in turn.
    RoundRobin,
    /// The healthy upstream with the fewest queries in flight (ties: the first
    /// in order), which steers load away from a slow upstream.
    LeastOutstanding,
}

/// A TLS protocol version, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
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

    /// Resolver (`IP[:PORT]`, plain DNS) that finds the address of a server given
    /// by name (default: the system's resolver).
    #[arg(long, value_name = "IP[:PORT]")]
    pub bootstrap: Option<String>,

    /// Over DoH, ask with GET requests (ID 0, cacheable) instead of POST.
    #[arg(long)]
    pub get: bool,

    /// `@SERVER[:PORT]` (DoT, port 853 by default) or `@https://HOST[:PORT]/PATH`
    /// (DoH, port 443 and `/dns-query` by default), then `NAME [TYPE]` pairs; TYPE
    /// defaults to A.
    #[arg(required = true, num_args = 2.., value_name = "@SERVER[:PORT] NAME [TYPE]")]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The server: `HOST[:PORT]` for DoT (port 853 by default), or
    /// `https://HOST[:PORT]/PATH` for DoH (port 443 and `/dns-query` by default);
    /// HOST is a name or an address.
    #[arg(value_name = "HOST[:PORT] | https://HOST[:PORT]/PATH")]
    pub server: String,

    /// The name the certificate must cover (default: HOST), as set in Android's
    /// Private DNS or stubby's tls_auth_name.
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,

    /// PEM file of trust anchors to verify the chain with (default: the system's
    /// roots, as Android strict mode uses).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,

    /// Connect to this address instead of resolving HOST.
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Skip the 20 s idle-connection wait (ends within about 15 s).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `dotgate completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write dotgate.1 and one page per subcommand (dotgate-serve.1, ...) into
    /// this existing folder instead of printing dotgate.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// What happens to a query over its client's limit (`--rate-limit-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateLimitAction {
    /// A REFUSED reply at once (DoH: a 200 carrying it): the client knows
    /// and stops waiting.
    Refused,
    /// No reply (DoT); DoH answers 429, since an HTTP request must get a
    /// response.
    Drop,
    /// The connection is closed (DoH: 429, then the HTTP connection is
    /// closed gracefully).
    Close,
}
