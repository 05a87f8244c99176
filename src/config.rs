//! One validated [`Config`], built once from the command line and
//! environment, then handed to the components.
//!
//! Everything an operator can get wrong is checked here, with an error that
//! names the flag and says what to pass; the components then trust the values.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{ServeArgs, TlsVersion};

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A PEM chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// An in-memory self-signed certificate for this name.
    SelfSigned(String),
}

/// The four named timeouts. Each exists for a reason given on its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Idle time, counted only while nothing is in flight. Longer than every
    /// known client's own (Android 20 s, stubby and resolved 10 s) so that the
    /// client, not the server, closes first (R13).
    pub idle: Duration,
    /// Accept to finished handshake, including the first byte. Keeps slow or
    /// silent peers from holding connection slots.
    pub handshake: Duration,
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
    /// Upstream resolvers in order; the first is used (failover comes with the
    /// upstream pool).
    pub upstreams: Vec<SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no certificate: pass --cert FILE --key FILE (a PEM chain, leaf first, and its key), or --self-signed NAME for a first run")]
    NoCertificate,
    #[error("--listen needs at least one address")]
    NoListen,
    #[error("--upstream {0:?} is not an address: write IP or IP:PORT, e.g. 127.0.0.1, 127.0.0.1:5353 or [::1]:53")]
    BadUpstream(String),
    #[error("no upstream: pass --upstream IP[:PORT], or list a nameserver in {path}")]
    NoUpstream { path: String },
    #[error("cannot read {path} for the default upstream ({source}); pass --upstream IP[:PORT]")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("{flag} must be at least 1")]
    Zero { flag: &'static str },
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
        let cert = match (&args.cert, &args.key, &args.self_signed) {
            (Some(cert), Some(key), _) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, Some(name)) => CertSource::SelfSigned(name.clone()),
            _ => return Err(ConfigError::NoCertificate),
        };
        let upstreams = if args.upstream.is_empty() {
            upstreams_from_resolv_conf(resolv_conf)?
        } else {
            args.upstream
                .iter()
                .map(|s| parse_upstream(s))
                .collect::<Result<_, _>>()?
        };
        let nonzero = |d: crate::duration::Duration, flag| {
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
        let max_connection_age = args
            .max_connection_age
            .map(|age| nonzero(age, "--max-connection-age"))
            .transpose()?;
        Ok(Config {
            listen: args.listen.clone(),
            cert,
            tls: TlsSettings {
                min_version: args.tls_min_version,
                name: args.tls_name.clone(),
                ticket_key_file: args.ticket_key_file.clone(),
            },
            upstreams,
            timeouts,
            limits: Limits {
                max_inflight: args.max_inflight,
                max_connections: args.max_connections,
                max_connections_per_ip: args.max_connections_per_ip,
                max_handshakes_per_ip_per_sec: args.max_handshakes_per_ip_per_sec,
                max_queries_per_connection: args.max_queries_per_connection,
                max_connection_age,
            },
        })
    }
}

/// Parses `IP` or `IP:PORT` (IPv6 with a port in brackets); port 53 by default.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::BadUpstream(s.to_string()))
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
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["dotgate", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => *a,
            Command::Query(_) => unreachable!(),
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
}
