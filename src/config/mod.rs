//! One validated [`Config`], built once from the command line and
//! environment, then handed to the components.
//!
//! Everything an operator can get wrong is checked here, with an error that
//! names the flag and says what to pass; the components then trust the values.

pub mod access;
pub mod acme;
pub mod cli;
pub mod client_id;
pub mod duration;
pub mod file;
pub mod forwarded;
pub mod proxy;
pub mod rate_limit;
pub mod system_resolver;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cli::ServeArgs;

/// How the upstream pool picks an upstream for a query (`--upstream-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamPolicy {
    /// The first healthy upstream in the order given: the others are standbys.
    FirstAvailable,
    /// Each healthy upstream in turn.
    RoundRobin,
    /// The healthy upstream with the fewest queries in flight (ties: the first
    /// in order), which steers load away from a slow upstream.
    LeastOutstanding,
}

impl From<cli::UpstreamPolicy> for UpstreamPolicy {
    fn from(policy: cli::UpstreamPolicy) -> Self {
        match policy {
            cli::UpstreamPolicy::FirstAvailable => UpstreamPolicy::FirstAvailable,
            cli::UpstreamPolicy::RoundRobin => UpstreamPolicy::RoundRobin,
            cli::UpstreamPolicy::LeastOutstanding => UpstreamPolicy::LeastOutstanding,
        }
    }
}

/// The lowest TLS version served (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl From<cli::TlsVersion> for TlsVersion {
    fn from(version: cli::TlsVersion) -> Self {
        match version {
            cli::TlsVersion::Tls12 => TlsVersion::Tls12,
            cli::TlsVersion::Tls13 => TlsVersion::Tls13,
        }
    }
}

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A PEM chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// An in-memory self-signed certificate for this name.
    SelfSigned(String),
}

/// The five named timeouts. Each exists for a reason given on its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle time, counted only while nothing is in flight and no message has
    /// begun (from the latest reply, or the start). Longer than every
    /// known client's own (Android 20 s, stubby and resolved 10 s) so that the
    /// client, not the server, closes first (R13).
    pub idle: Duration,
    /// Accept to finished handshake, including the first byte. Keeps slow or
    /// silent peers from holding connection slots.
    pub handshake: Duration,
    /// First byte of a message to its last. The idle timer stops once a
    /// message begins and pauses while queries are in flight, so without this
    /// a peer could hold a partial message (and its buffer) for ever.
    pub read: Duration,
    /// Per query: after this the client gets SERVFAIL (R11). Android has no
    /// per-query timeout of its own.
    pub upstream: Duration,
    /// How long shutdown waits for in-flight queries before exiting anyway.
    pub drain: Duration,
}

/// Limits that protect the server without dropping queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Queries in flight per connection before reading pauses (R16).
    pub max_inflight: usize,
    /// Open connections in total; over it, new ones are closed at once.
    pub max_connections: usize,
    /// Open connections per client address; loose, for NAT (RFC 7766 §6.2.2).
    pub max_connections_per_ip: usize,
    /// New handshakes per client address per second, if limited.
    pub max_handshakes_per_ip_per_sec: Option<u32>,
    /// Queries after which a connection is retired (R15), if limited.
    pub max_queries_per_connection: Option<u64>,
    /// Age after which a connection is retired (R15), if limited.
    pub max_connection_age: Option<Duration>,
    /// Bytes of message buffers past each connection's base read buffer,
    /// shared by all connections (see [`crate::proto::message_reader::MessageBudget`]).
    pub message_memory: usize,
}

/// TLS settings beyond the certificate itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// TLS 1.2 by default: Android, systemd-resolved and dnsperf need it (R2).
    pub min_version: TlsVersion,
    /// The name clients use; the certificate is checked to cover it (R3).
    pub name: Option<String>,
    /// Shared secret for session-ticket keys, so replicas resume each other's
    /// sessions (R6); without it, keys are per process.
    pub ticket_key_file: Option<PathBuf>,
}

/// The whole validated configuration of `dotgate serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub cert: CertSource,
    pub tls: TlsSettings,
    /// Upstream resolvers in the order given (the order matters to the
    /// `first-available` policy).
    pub upstreams: Vec<UpstreamSpec>,
    /// How the upstream pool chooses, checks and reaches them.
    pub pool: PoolSettings,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// `--metrics-listen`: where /metrics, /healthz and /readyz are served;
    /// None for nowhere (the default).
    pub metrics_listen: Option<SocketAddr>,
    /// `--proxy-protocol` and `--proxy-protocol-from`: `enabled` applies to
    /// the `listen` addresses.
    pub proxy: crate::config::proxy::ProxySettings,
    /// Extra addresses where every connection carries a PROXY header,
    /// whatever `proxy.enabled` says (`--proxy-protocol-listen`).
    pub proxy_listen: Vec<SocketAddr>,
    /// `--allow-from`: the networks whose clients are served.
    pub allow: crate::config::access::AllowList,
    /// `--acme`: the certificate (`cert`, files in `--acme-dir`) is
    /// obtained and renewed by ACME.
    pub acme: Option<crate::config::acme::AcmeSettings>,
    /// `--client-id-domain`, `--client-id`, `--client-ids`.
    pub client_ids: client_id::ClientIdSettings,
    /// What the upstream is told about each client.
    pub tell_upstream: ClientToUpstream,
    /// `--doh-listen`, `--doh-listen-plain`, `--doh-path`.
    pub doh: DohSettings,
    /// `--max-qps-per-ip` and the other rate-limit and ban flags.
    pub rate_limit: rate_limit::RateLimitSettings,
}

/// Where and how DNS over HTTPS is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DohSettings {
    /// TLS listeners (ALPN h2 and http/1.1).
    pub listen: Vec<SocketAddr>,
    /// Listeners without TLS, for a reverse proxy in front.
    pub listen_plain: Vec<SocketAddr>,
    /// The path of the endpoint: starts with `/`, no trailing `/`.
    pub path: String,
    /// `--doh-trusted-proxy`, `--doh-forwarded-header`: whose forwarding
    /// header names the client.
    pub forwarded: forwarded::Forwarding,
}

impl DohSettings {
    /// True when any DoH listener is configured.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.listen_plain.is_empty()
    }
}

/// What dotgate tells the upstream about the client behind each query
/// (`--upstream-proxy-protocol`, `--upstream-ecs`). Both reveal clients'
/// addresses, so both are off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientToUpstream {
    /// A PROXY v2 header with the client's address and server name.
    pub proxy_protocol: bool,
    /// An EDNS Client Subnet option with the client's address cut to these
    /// prefixes.
    pub subnet: Option<SubnetPrefixes>,
}

/// Prefix lengths of the client subnet sent upstream, by address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPrefixes {
    pub v4: u8,
    pub v6: u8,
}

impl std::str::FromStr for SubnetPrefixes {
    type Err = ConfigError;

    /// `V4LEN,V6LEN`: 0 to 32, then 0 to 128.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadEcs(s.to_string());
        let (v4, v6) = s.split_once(',').ok_or_else(bad)?;
        let v4: u8 = v4.trim().parse().map_err(|_| bad())?;
        let v6: u8 = v6.trim().parse().map_err(|_| bad())?;
        if v4 > 32 || v6 > 128 {
            return Err(bad());
        }
        Ok(SubnetPrefixes { v4, v6 })
    }
}

/// Port of DNS over TLS (RFC 7858 §3.1), the default of `tls://` upstreams.
pub const DOT_PORT: u16 = 853;

/// One `--upstream` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// `IP[:PORT]`: UDP over shared sockets, TCP when an answer is truncated.
    Plain(SocketAddr),
    /// `tcp://IP[:PORT]`: pooled, pipelined TCP only.
    Tcp(SocketAddr),
    /// `tls://NAME[@IP][:PORT]`: DNS over TLS, the certificate checked for
    /// NAME; without an IP, NAME is resolved through the bootstrap resolver.
    Tls {
        name: String,
        ip: Option<IpAddr>,
        port: u16,
    },
}

impl std::fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamSpec::Plain(addr) => write!(f, "{addr}"),
            UpstreamSpec::Tcp(addr) => write!(f, "tcp://{addr}"),
            UpstreamSpec::Tls { name, ip, port } => match ip {
                Some(ip) => write!(f, "tls://{name}@{}", SocketAddr::new(*ip, *port)),
                None => write!(f, "tls://{name}:{port}"),
            },
        }
    }
}

impl std::str::FromStr for UpstreamSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_upstream(s)
    }
}

/// How the upstream pool chooses, checks and reaches its upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub policy: UpstreamPolicy,
    /// Time between two probes of each upstream.
    pub health_interval: Duration,
    /// Trust anchors for `tls://` upstreams; None for the system's roots.
    pub ca: Option<PathBuf>,
    /// Resolver for the names of `tls://` upstreams given without an IP;
    /// None when every `tls://` upstream has one (or there is none).
    pub bootstrap: Option<SocketAddr>,
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no certificate: pass --cert FILE --key FILE (a PEM chain, leaf first, and its key), --acme NAME to get one from Let's Encrypt, or --self-signed NAME for a first run")]
    NoCertificate,
    #[error("--acme gets the certificate itself: it cannot be combined with --cert/--key or --self-signed (drop those, or drop --acme)")]
    AcmeWithCertificate,
    #[error(transparent)]
    Acme(#[from] crate::config::acme::SettingsError),
    #[error("--doh-path {0:?} must be a path such as /dns-query: starting with /, without a trailing /, of letters, digits and -._~")]
    BadDohPath(String),
    #[error("--listen needs at least one address")]
    NoListen,
    #[error("--upstream {0:?} is not an upstream: write IP or IP:PORT (e.g. 127.0.0.1, 127.0.0.1:5353 or [::1]:53), tcp://IP[:PORT], or tls://NAME[@IP][:PORT] (e.g. tls://dns.example@192.0.2.1)")]
    BadUpstream(String),
    #[error("--bootstrap {0:?} is not an address: write IP or IP:PORT")]
    BadBootstrap(String),
    #[error("no upstream: pass --upstream IP[:PORT], or list a nameserver in {path}")]
    NoUpstream { path: String },
    #[error("cannot read {path} for the default upstream ({source}); pass --upstream IP[:PORT]")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("--proxy-protocol-from needs --proxy-protocol or --proxy-protocol-listen: it lists who may send PROXY headers")]
    ProxyFromWithoutProxy,
    #[error("--upstream-ecs {0:?}: write two prefix lengths V4LEN,V6LEN, IPv4 0-32 and IPv6 0-128 (e.g. 32,128 for one device each, 24,56 for its network)")]
    BadEcs(String),
    #[error("{flag} sends client addresses to the upstream, so it needs the upstream named with --upstream (never the resolv.conf default)")]
    TellsUnnamedUpstream { flag: &'static str },
    #[error("--client-id-domain {0:?} is not a domain name")]
    BadClientIdDomain(String),
    #[error("{flag} needs --client-id-domain (the ID is the label in front of that domain in the TLS server name) or a DoH listener (the ID is the last segment of the path)")]
    ClientIdWithoutDomain { flag: &'static str },
    #[error("--client-id: {0}")]
    BadClientId(#[from] client_id::ClientIdError),
    #[error("{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("{flag} needs {needed}: it changes how that limit works")]
    RateLimitFlagAlone {
        flag: &'static str,
        needed: &'static str,
    },
    #[error("--rate-limit-v6-prefix {0}: write a prefix length from 1 to 128 (56 for one site, 64 for one host's network)")]
    BadV6Prefix(u8),
    #[error("{flag} must be longer than zero")]
    ZeroDuration { flag: &'static str },
}

/// Where the default upstreams are read from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Extra time given to shutdown beyond the upstream timeout, for writing the
/// last replies.
const DRAIN_SLACK: Duration = Duration::from_secs(3);

impl Config {
    /// Validates command-line arguments. `resolv_conf` is the file the default
    /// upstreams come from (a parameter so that tests can write their own).
    pub fn from_args(args: &ServeArgs, resolv_conf: &Path) -> Result<Self, ConfigError> {
        if args.listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        let mut acme = crate::config::acme::AcmeSettings::from_args(&args.acme)?;
        if let Some(acme) = acme.as_mut() {
            if args.acme.acme_tls_alpn_listen.is_none() && !args.doh_listen.is_empty() {
                acme.challenge.answer_on_doh();
            }
        }
        let cert = match (&args.cert, &args.key, &args.self_signed, &acme) {
            (None, None, None, Some(acme)) => CertSource::Files {
                cert: acme.cert_path(),
                key: acme.key_path(),
            },
            (_, _, _, Some(_)) => return Err(ConfigError::AcmeWithCertificate),
            (Some(cert), Some(key), _, None) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, Some(name), None) => CertSource::SelfSigned(name.clone()),
            _ => return Err(ConfigError::NoCertificate),
        };
        // Before resolv.conf is read: its resolvers are never told.
        if args.upstream.is_empty() {
            if args.upstream_proxy_protocol {
                return Err(ConfigError::TellsUnnamedUpstream {
                    flag: "--upstream-proxy-protocol",
                });
            }
            if args.upstream_ecs.is_some() {
                return Err(ConfigError::TellsUnnamedUpstream {
                    flag: "--upstream-ecs",
                });
            }
        }
        let upstreams: Vec<UpstreamSpec> = if args.upstream.is_empty() {
            upstreams_from_resolv_conf(resolv_conf)?
                .into_iter()
                .map(UpstreamSpec::Plain)
                .collect()
        } else {
            args.upstream
                .iter()
                .map(|s| parse_upstream(s))
                .collect::<Result<_, _>>()?
        };
        let pool = PoolSettings {
            policy: args.upstream_policy.into(),
            health_interval: nonzero_duration(
                args.health_check_interval,
                "--health-check-interval",
            )?,
            ca: args.upstream_ca.clone(),
            bootstrap: bootstrap(args.bootstrap.as_deref(), &upstreams, resolv_conf)?,
        };
        let nonzero = |d: crate::config::duration::Duration, flag| {
            if d.0.is_zero() {
                Err(ConfigError::ZeroDuration { flag })
            } else {
                Ok(d.0)
            }
        };
        let upstream = nonzero(args.upstream_timeout, "--upstream-timeout")?;
        let timeouts = Timeouts {
            idle: nonzero(args.idle_timeout, "--idle-timeout")?,
            handshake: nonzero(args.handshake_timeout, "--handshake-timeout")?,
            read: nonzero(args.read_timeout, "--read-timeout")?,
            upstream,
            drain: upstream + DRAIN_SLACK,
        };
        if args.max_inflight == 0 {
            return Err(ConfigError::Zero {
                flag: "--max-inflight",
            });
        }
        for (value, flag) in [
            (args.max_connections, "--max-connections"),
            (args.message_memory_mib, "--message-memory-mib"),
            (args.max_connections_per_ip, "--max-connections-per-ip"),
            (
                args.max_queries_per_connection.map_or(1, |n| n as usize),
                "--max-queries-per-connection",
            ),
            (
                args.max_handshakes_per_ip_per_sec.map_or(1, |n| n as usize),
                "--max-handshakes-per-ip-per-sec",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        if !args.proxy_protocol_from.is_empty()
            && !args.proxy_protocol
            && args.proxy_protocol_listen.is_empty()
        {
            return Err(ConfigError::ProxyFromWithoutProxy);
        }
        let doh = doh_settings(args)?;
        let rate_limit = rate_limit::RateLimitSettings::from_args(args)?;
        let client_ids = client_id_settings(args, doh.enabled())?;
        let tell_upstream = ClientToUpstream {
            proxy_protocol: args.upstream_proxy_protocol,
            subnet: args.upstream_ecs.as_deref().map(str::parse).transpose()?,
        };
        let max_connection_age = args
            .max_connection_age
            .map(|age| nonzero(age, "--max-connection-age"))
            .transpose()?;
        Ok(Config {
            listen: args.listen.clone(),
            cert,
            tls: TlsSettings {
                min_version: args.tls_min_version.into(),
                name: args.tls_name.clone(),
                ticket_key_file: args.ticket_key_file.clone(),
            },
            upstreams,
            pool,
            timeouts,
            limits: Limits {
                max_inflight: args.max_inflight,
                max_connections: args.max_connections,
                max_connections_per_ip: args.max_connections_per_ip,
                max_handshakes_per_ip_per_sec: args.max_handshakes_per_ip_per_sec,
                max_queries_per_connection: args.max_queries_per_connection,
                max_connection_age,
                // At least 1 MiB (checked above), which holds a largest
                // message (`message_reader::MIN_BUDGET`).
                message_memory: args.message_memory_mib.saturating_mul(1 << 20),
            },
            metrics_listen: args.metrics_listen,
            proxy: crate::config::proxy::ProxySettings {
                enabled: args.proxy_protocol,
                trusted: args.proxy_protocol_from.clone(),
            },
            proxy_listen: args.proxy_protocol_listen.clone(),
            allow: crate::config::access::AllowList::new(args.allow_from.clone()),
            acme,
            client_ids,
            tell_upstream,
            doh,
            rate_limit,
        })
    }
}

/// Checks `--doh-path`: an absolute path of plain segments, without query,
/// fragment or trailing slash (the ID segment goes after it).
fn doh_settings(args: &ServeArgs) -> Result<DohSettings, ConfigError> {
    let path = args.doh_path.trim();
    let valid = path.len() > 1
        && path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !valid {
        return Err(ConfigError::BadDohPath(args.doh_path.clone()));
    }
    Ok(DohSettings {
        listen: args.doh_listen.clone(),
        listen_plain: args.doh_listen_plain.clone(),
        path: path.to_string(),
        forwarded: forwarded::Forwarding {
            trusted: args.doh_trusted_proxy.clone(),
            header: args.doh_forwarded_header,
        },
    })
}

/// Checks the client-ID flags: IDs need the domain (unless DoH is served,
/// whose clients can carry their ID in the path), the domain must be a
/// name, and every listed ID one label.
fn client_id_settings(
    args: &ServeArgs,
    doh: bool,
) -> Result<client_id::ClientIdSettings, ConfigError> {
    let domain = match &args.client_id_domain {
        Some(d) => {
            let domain = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = !domain.is_empty()
                && domain
                    .split('.')
                    .all(|label| client_id::parse_id(label).is_ok());
            if !valid {
                return Err(ConfigError::BadClientIdDomain(d.clone()));
            }
            Some(domain)
        }
        None => None,
    };
    if domain.is_none() && !doh {
        if !args.client_id.is_empty() {
            return Err(ConfigError::ClientIdWithoutDomain {
                flag: "--client-id",
            });
        }
        if args.client_ids.is_some() {
            return Err(ConfigError::ClientIdWithoutDomain {
                flag: "--client-ids",
            });
        }
    }
    let listed = args
        .client_id
        .iter()
        .map(|id| client_id::parse_id(id))
        .collect::<Result<_, _>>()?;
    Ok(client_id::ClientIdSettings {
        domain,
        listed,
        file: args.client_ids.clone(),
    })
}

/// Parses an `--upstream` entry: `IP[:PORT]`, `tcp://IP[:PORT]` (port 53 by
/// default, IPv6 with a port in brackets) or `tls://NAME[@IP][:PORT]` (port
/// 853 by default).
pub fn parse_upstream(s: &str) -> Result<UpstreamSpec, ConfigError> {
    let s = s.trim();
    let bad = || ConfigError::BadUpstream(s.to_string());
    if let Some(rest) = s.strip_prefix("tcp://") {
        return parse_addr(rest, 53).map(UpstreamSpec::Tcp).ok_or_else(bad);
    }
    if let Some(rest) = s.strip_prefix("tls://") {
        let (name, ip, port) = match rest.split_once('@') {
            Some((name, at)) => {
                let addr = parse_addr(at, DOT_PORT).ok_or_else(bad)?;
                (name, Some(addr.ip()), addr.port())
            }
            None => match parse_addr(rest, DOT_PORT) {
                // tls://IP: the certificate must then cover the IP address.
                Some(addr) => {
                    return Ok(UpstreamSpec::Tls {
                        name: addr.ip().to_string(),
                        ip: Some(addr.ip()),
                        port: addr.port(),
                    })
                }
                None => match rest.rsplit_once(':') {
                    Some((name, port)) => (name, None, port.parse().map_err(|_| bad())?),
                    None => (rest, None, DOT_PORT),
                },
            },
        };
        let name = name.trim_end_matches('.');
        if rustls_pki_types::ServerName::try_from(name).is_err() || name.is_empty() {
            return Err(bad());
        }
        return Ok(UpstreamSpec::Tls {
            name: name.to_ascii_lowercase(),
            ip,
            port,
        });
    }
    parse_addr(s, 53).map(UpstreamSpec::Plain).ok_or_else(bad)
}

/// `IP` or `IP:PORT` (IPv6 with a port in brackets), `port` by default.
pub(crate) fn parse_addr(s: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// The resolver for `tls://NAME` upstreams without an IP: `--bootstrap`,
/// else the first plain (`IP[:PORT]`) upstream, else the first nameserver of
/// resolv.conf. None when no upstream needs one (resolv.conf is then not
/// read).
fn bootstrap(
    flag: Option<&str>,
    upstreams: &[UpstreamSpec],
    resolv_conf: &Path,
) -> Result<Option<SocketAddr>, ConfigError> {
    if let Some(flag) = flag {
        return parse_addr(flag.trim(), 53)
            .map(Some)
            .ok_or_else(|| ConfigError::BadBootstrap(flag.to_string()));
    }
    let needed = upstreams
        .iter()
        .any(|u| matches!(u, UpstreamSpec::Tls { ip: None, .. }));
    if !needed {
        return Ok(None);
    }
    let plain = upstreams.iter().find_map(|u| match u {
        UpstreamSpec::Plain(addr) => Some(*addr),
        _ => None,
    });
    match plain {
        Some(addr) => Ok(Some(addr)),
        None => Ok(upstreams_from_resolv_conf(resolv_conf)?.first().copied()),
    }
}

fn nonzero_duration(
    d: crate::config::duration::Duration,
    flag: &'static str,
) -> Result<Duration, ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::ZeroDuration { flag })
    } else {
        Ok(d.0)
    }
}

/// Reads the `nameserver` lines of a resolv.conf file. Link-local IPv6
/// addresses with a zone (`fe80::1%eth0`) are skipped: they cannot be written
/// as a plain socket address.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    let found: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if found.is_empty() {
        return Err(ConfigError::NoUpstream {
            path: path.display().to_string(),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["dotgate", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    fn resolv(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A throwaway directory for a test file, removed on drop.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "dotgate-config-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    /// TLS-ALPN-01 is answered on the DoH listener when DoH is served and
    /// no --acme-tls-alpn-listen is given; an explicit address wins, and
    /// without DoH the default stays [::]:443.
    #[test]
    fn tls_alpn01_goes_to_the_doh_listener_unless_told_otherwise() {
        let acme = |extra: &[&str]| {
            let mut flags = vec!["--upstream", "127.0.0.1", "--acme", "dns.example.org"];
            flags.extend_from_slice(extra);
            Config::from_args(&args(&flags), Path::new("/nonexistent"))
                .unwrap()
                .acme
                .unwrap()
                .challenge
        };
        let alpn = ["--acme-challenge", "tls-alpn-01"];
        let doh = ["--doh-listen", "[::]:443"];
        assert!(acme(&[&alpn[..], &doh[..]].concat()).on_doh_listener());
        let own = acme(
            &[
                &alpn[..],
                &doh[..],
                &["--acme-tls-alpn-listen", "[::]:8443"],
            ]
            .concat(),
        );
        assert_eq!(
            own,
            acme::Challenge::TlsAlpn01 {
                listen: Some("[::]:8443".parse().unwrap())
            }
        );
        assert_eq!(
            acme(&alpn),
            acme::Challenge::TlsAlpn01 {
                listen: Some("[::]:443".parse().unwrap())
            }
        );
        assert!(!acme(&doh).on_doh_listener(), "http-01 stays http-01");
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::from_args(
            &args(&["--self-signed", "localhost", "--upstream", "127.0.0.1"]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(c.listen, vec!["[::]:853".parse().unwrap()]);
        assert_eq!(c.upstreams, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(c.timeouts.idle, Duration::from_secs(30));
        assert_eq!(c.timeouts.handshake, Duration::from_secs(10));
        assert_eq!(c.timeouts.upstream, Duration::from_secs(2));
        assert_eq!(c.limits.max_inflight, 128);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.max_connections_per_ip, 256);
        assert_eq!(c.limits.max_handshakes_per_ip_per_sec, None);
        assert_eq!(c.limits.max_queries_per_connection, None);
        assert_eq!(c.limits.max_connection_age, None);
        assert_eq!(c.tls.min_version, TlsVersion::Tls12);
        assert_eq!(c.tls.name, None);
        assert_eq!(c.tls.ticket_key_file, None);
        assert_eq!(c.cert, CertSource::SelfSigned("localhost".into()));
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(
            parse_upstream("[::1]").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("10.0.0.1:5300").unwrap(),
            "10.0.0.1:5300".parse().unwrap()
        );
        let e = parse_upstream("dns.example").unwrap_err().to_string();
        assert!(e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn tcp_and_tls_upstream_forms() {
        let p = |s: &str| parse_upstream(s).unwrap();
        assert_eq!(
            p("tcp://10.0.0.1"),
            UpstreamSpec::Tcp("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            p("tcp://[::1]:5353"),
            UpstreamSpec::Tcp("[::1]:5353".parse().unwrap())
        );
        let tls = |name: &str, ip: Option<&str>, port| UpstreamSpec::Tls {
            name: name.into(),
            ip: ip.map(|ip| ip.parse().unwrap()),
            port,
        };
        assert_eq!(p("tls://dns.example"), tls("dns.example", None, 853));
        assert_eq!(p("tls://DNS.example.:8853"), tls("dns.example", None, 8853));
        assert_eq!(
            p("tls://dns.example@192.0.2.1"),
            tls("dns.example", Some("192.0.2.1"), 853)
        );
        assert_eq!(
            p("tls://dns.example@[2001:db8::1]:8853"),
            tls("dns.example", Some("2001:db8::1"), 8853)
        );
        assert_eq!(
            p("tls://192.0.2.1"),
            tls("192.0.2.1", Some("192.0.2.1"), 853)
        );
        for bad in [
            "tls://",
            "tls://a@b",
            "tcp://name",
            "tls://x:port",
            "udp://1.2.3.4",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
        assert_eq!(
            p("tls://dns.example@192.0.2.1:853").to_string(),
            "tls://dns.example@192.0.2.1:853"
        );
    }

    #[test]
    fn bootstrap_defaults_to_the_first_plain_upstream() {
        let c = Config::from_args(
            &args(&[
                "--self-signed",
                "x",
                "--upstream",
                "tls://dns.example,tcp://10.0.0.9,10.0.0.1:5300",
            ]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(c.pool.bootstrap, Some("10.0.0.1:5300".parse().unwrap()));
        assert_eq!(c.pool.policy, UpstreamPolicy::FirstAvailable);
        assert_eq!(c.pool.health_interval, Duration::from_secs(1));
        let (_d, path) = resolv("nameserver 10.9.9.9\n");
        let c = Config::from_args(
            &args(&["--self-signed", "x", "--upstream", "tls://dns.example"]),
            &path,
        )
        .unwrap();
        assert_eq!(c.pool.bootstrap, Some("10.9.9.9:53".parse().unwrap()));
        let c = Config::from_args(
            &args(&[
                "--self-signed",
                "x",
                "--upstream",
                "tls://d.example@10.0.0.2",
            ]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(c.pool.bootstrap, None, "not needed, resolv.conf not read");
    }

    #[test]
    fn missing_certificate_says_what_to_pass() {
        let e = Config::from_args(&args(&["--upstream", "127.0.0.1"]), Path::new("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cert") && e.contains("--self-signed"), "{e}");
    }

    #[test]
    fn default_upstreams_come_from_resolv_conf() {
        let (_d, path) = resolv(
            "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver ::1\noptions edns0\n",
        );
        let c = Config::from_args(&args(&["--self-signed", "x"]), &path).unwrap();
        assert_eq!(
            c.upstreams,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn empty_resolv_conf_is_a_clear_error() {
        let (_d, path) = resolv("search example\n");
        let e = Config::from_args(&args(&["--self-signed", "x"]), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--upstream") && e.contains("resolv.conf"), "{e}");
    }

    #[test]
    fn zero_limits_are_refused() {
        let e = Config::from_args(
            &args(&[
                "--self-signed",
                "x",
                "--upstream",
                "::1",
                "--max-inflight",
                "0",
            ]),
            Path::new("/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--max-inflight"), "{e}");
        let e = Config::from_args(
            &args(&[
                "--self-signed",
                "x",
                "--upstream",
                "::1",
                "--idle-timeout",
                "0s",
            ]),
            Path::new("/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--idle-timeout"), "{e}");
    }

    #[test]
    fn client_identity_flags_are_checked() {
        let err = |extra: &[&str]| {
            let mut all = vec!["--self-signed", "x"];
            all.extend_from_slice(extra);
            Config::from_args(&args(&all), Path::new("/nonexistent"))
                .unwrap_err()
                .to_string()
        };
        let e = err(&["--upstream-ecs", "24,56"]);
        assert!(
            e.contains("--upstream-ecs") && e.contains("--upstream"),
            "{e}"
        );
        let e = err(&["--upstream-proxy-protocol"]);
        assert!(e.contains("resolv.conf"), "{e}");
        for bad in ["24", "33,56", "24,129", "a,b", "24;56"] {
            let e = err(&["--upstream", "::1", "--upstream-ecs", bad]);
            assert!(e.contains("V4LEN,V6LEN"), "{bad}: {e}");
        }
        let e = err(&["--upstream", "::1", "--client-id", "alice"]);
        assert!(e.contains("--client-id-domain"), "{e}");
        let e = err(&["--upstream", "::1", "--client-ids", "/x"]);
        assert!(e.contains("--client-id-domain"), "{e}");
        let e = err(&["--upstream", "::1", "--client-id-domain", "dns..test"]);
        assert!(e.contains("not a domain name"), "{e}");
        let e = err(&[
            "--upstream",
            "::1",
            "--client-id-domain",
            "dns.test",
            "--client-id",
            "bad_id",
        ]);
        assert!(e.contains("bad_id"), "{e}");

        let c = Config::from_args(
            &args(&[
                "--self-signed",
                "x",
                "--upstream",
                "::1",
                "--upstream-ecs",
                "32, 128",
                "--upstream-proxy-protocol",
                "--client-id-domain",
                "DNS.Test.",
                "--client-id",
                "Alice,bob",
            ]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(
            c.tell_upstream,
            ClientToUpstream {
                proxy_protocol: true,
                subnet: Some(SubnetPrefixes { v4: 32, v6: 128 }),
            }
        );
        assert_eq!(c.client_ids.domain.as_deref(), Some("dns.test"));
        assert_eq!(c.client_ids.listed, ["alice", "bob"]);
        assert!(c.client_ids.is_private());
    }
}
