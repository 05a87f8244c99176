//! `--max-qps-per-ip` and its companions: the validated settings of the
//! per-client query rate limits and temporary bans
//! ([`crate::server::rate_limit`] enforces them).

use std::time::Duration;

use super::cli::ServeArgs;
use super::proxy::Cidr;
use super::ConfigError;

/// What a flag that tunes the limits needs beside it.
const A_LIMIT: &str = "--max-qps-per-ip or --max-qps-per-client-id";

/// What happens to a query over its client's limit (`--rate-limit-action`);
/// declared with the flags, whose values it is.
pub use super::cli::RateLimitAction as Action;

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Queries per second, sustained.
    pub per_sec: u32,
    /// Queries allowed at once above the rate (the bucket's size).
    pub burst: u32,
}

/// `--ban-after` and `--ban-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanSettings {
    /// How long an address must keep going over its limit to be banned.
    pub after: Duration,
    /// How long a ban lasts.
    pub length: Duration,
}

/// Every rate-limit flag, checked. Off (the default) when neither limit is
/// set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub per_ip: Option<Rate>,
    pub per_client_id: Option<Rate>,
    /// IPv6 clients share a bucket per prefix of this length.
    pub v6_prefix: u8,
    pub action: Action,
    /// Networks never limited nor banned.
    pub exempt: Vec<Cidr>,
    pub ban: Option<BanSettings>,
    /// Entries (addresses or IDs) each table tracks at most.
    pub table_size: usize,
}

impl RateLimitSettings {
    /// True when any limit is on.
    pub fn enabled(&self) -> bool {
        self.per_ip.is_some() || self.per_client_id.is_some()
    }

    /// Checks the flags: positive rates, bursts and sizes, a prefix length
    /// IPv6 has, and no companion flag without the limit it modifies.
    pub fn from_args(args: &ServeArgs) -> Result<Self, ConfigError> {
        let positive = |value: Option<u32>, flag: &'static str| match value {
            Some(0) => Err(ConfigError::Zero { flag }),
            other => Ok(other),
        };
        let per_ip_qps = positive(args.max_qps_per_ip, "--max-qps-per-ip")?;
        let burst = positive(args.max_qps_burst, "--max-qps-burst")?;
        let per_id_qps = positive(args.max_qps_per_client_id, "--max-qps-per-client-id")?;
        let needs = |set: bool, flag: &'static str, needed: &'static str| {
            if set && per_ip_qps.is_none() && (needed != A_LIMIT || per_id_qps.is_none()) {
                Err(ConfigError::RateLimitFlagAlone { flag, needed })
            } else {
                Ok(())
            }
        };
        needs(burst.is_some(), "--max-qps-burst", A_LIMIT)?;
        needs(args.ban_after.is_some(), "--ban-after", "--max-qps-per-ip")?;
        needs(
            !args.rate_limit_exempt.is_empty(),
            "--rate-limit-exempt",
            A_LIMIT,
        )?;
        if args.rate_limit_v6_prefix == 0 || args.rate_limit_v6_prefix > 128 {
            return Err(ConfigError::BadV6Prefix(args.rate_limit_v6_prefix));
        }
        if args.rate_limit_table_size == 0 {
            return Err(ConfigError::Zero {
                flag: "--rate-limit-table-size",
            });
        }
        let rate = |per_sec: u32| Rate {
            per_sec,
            // One second's worth unless told otherwise.
            burst: burst.unwrap_or(per_sec),
        };
        let nonzero = |d: Duration, flag: &'static str| {
            if d.is_zero() {
                Err(ConfigError::ZeroDuration { flag })
            } else {
                Ok(d)
            }
        };
        let ban = match args.ban_after {
            Some(after) => Some(BanSettings {
                after: nonzero(after.0, "--ban-after")?,
                length: nonzero(args.ban_for.0, "--ban-for")?,
            }),
            None => None,
        };
        Ok(Self {
            per_ip: per_ip_qps.map(rate),
            per_client_id: per_id_qps.map(rate),
            v6_prefix: args.rate_limit_v6_prefix,
            action: args.rate_limit_action,
            exempt: args.rate_limit_exempt.clone(),
            ban,
            table_size: args.rate_limit_table_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{Cli, Command};
    use clap::Parser;

    fn settings(extra: &[&str]) -> Result<RateLimitSettings, String> {
        let mut argv = vec!["dotgate", "serve"];
        argv.extend_from_slice(extra);
        let args = match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        };
        RateLimitSettings::from_args(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_with_its_defaults() {
        let s = settings(&[]).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.v6_prefix, 56);
        assert_eq!(s.action, Action::Refused);
        assert_eq!(s.table_size, 65_536);
        assert_eq!(s.ban, None);
    }

    #[test]
    fn the_burst_defaults_to_one_second_and_bans_to_five_minutes() {
        let s = settings(&["--max-qps-per-ip", "20", "--ban-after", "10s"]).unwrap();
        assert_eq!(
            s.per_ip,
            Some(Rate {
                per_sec: 20,
                burst: 20
            })
        );
        assert_eq!(
            s.ban,
            Some(BanSettings {
                after: Duration::from_secs(10),
                length: Duration::from_secs(300)
            })
        );
        let s = settings(&[
            "--max-qps-per-client-id",
            "5",
            "--max-qps-burst",
            "50",
            "--rate-limit-action",
            "close",
            "--rate-limit-exempt",
            "10.0.0.0/8,fd00::/8",
        ])
        .unwrap();
        assert_eq!(
            s.per_client_id,
            Some(Rate {
                per_sec: 5,
                burst: 50
            })
        );
        assert_eq!(s.per_ip, None);
        assert_eq!(s.action, Action::Close);
        assert_eq!(s.exempt.len(), 2);
    }

    /// Each bad value is refused with an error that names the flag.
    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (argv, needle) in [
            (
                &["--max-qps-per-ip", "0"][..],
                "--max-qps-per-ip must be at least 1",
            ),
            (
                &["--max-qps-burst", "10"],
                "--max-qps-burst needs --max-qps-per-ip",
            ),
            (
                &["--ban-after", "10s"],
                "--ban-after needs --max-qps-per-ip",
            ),
            (
                &["--max-qps-per-client-id", "5", "--ban-after", "10s"],
                "--ban-after needs --max-qps-per-ip",
            ),
            (
                &["--rate-limit-exempt", "10.0.0.0/8"],
                "--rate-limit-exempt needs",
            ),
            (
                &["--max-qps-per-ip", "5", "--rate-limit-v6-prefix", "129"],
                "--rate-limit-v6-prefix 129",
            ),
            (
                &["--max-qps-per-ip", "5", "--rate-limit-table-size", "0"],
                "--rate-limit-table-size must be at least 1",
            ),
            (
                &["--max-qps-per-ip", "5", "--ban-after", "0s"],
                "--ban-after must be longer than zero",
            ),
            (&["--rate-limit-action", "block"], "invalid value 'block'"),
        ] {
            let error = settings(argv).expect_err(needle);
            assert!(error.contains(needle), "{argv:?}: {error}");
        }
    }
}
