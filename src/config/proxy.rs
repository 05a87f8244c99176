//! Who may send a PROXY header (`--proxy-protocol`,
//! `--proxy-protocol-from`): the [`Cidr`] networks of trusted balancers.
//! The header itself is read by [`crate::proto::proxy_header`].

use std::net::IpAddr;
use std::str::FromStr;

/// An IP network, `ADDR/PREFIX` or a single address, for
/// `--proxy-protocol-from`.
///
/// Always held in its plain family: an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it stands for
/// (`10.0.0.0/8`), so that `prefix` never exceeds the family's length and
/// [`Cidr::contains`] compares like with like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a `--proxy-protocol-from` value is not a network. The value is
/// quoted; clap adds the flag's name (for a flag, a `DOTGATE_*` variable or
/// a config file key alike, since the file is parsed as flags).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "{0:?} is not a network: write ADDR/PREFIX (e.g. 10.0.0.0/8, fd00::/8) or one address"
    )]
    Syntax(String),
    #[error("{value:?}: the prefix /{prefix} is longer than an {family} address ({max} bits)")]
    PrefixTooLong {
        value: String,
        prefix: u32,
        family: &'static str,
        max: u32,
    },
    #[error(
        "{value:?}: an IPv4-mapped network (::ffff:a.b.c.d) needs a prefix of /96 or more \
         (96 plus the IPv4 prefix), not /{prefix}; write the IPv4 network instead, e.g. 10.0.0.0/8"
    )]
    MappedPrefixTooShort { value: String, prefix: u32 },
}

/// The bits of the IPv6 prefix `::ffff:0:0/96` under which IPv4 addresses
/// are mapped.
const MAPPED_PREFIX: u32 = 96;

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim();
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| syntax())?;
        // Digits only: `u32::from_str` would also take "+8". A value too
        // long for u32 is no prefix of any family either.
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u32>().unwrap_or(u32::MAX))
            }
            Some(_) => return Err(syntax()),
            None => None,
        };
        let (family, max) = match net {
            IpAddr::V4(_) => ("IPv4", 32),
            IpAddr::V6(_) => ("IPv6", 128),
        };
        if let Some(prefix) = prefix.filter(|p| *p > max) {
            return Err(CidrError::PrefixTooLong {
                value: s.to_string(),
                prefix,
                family,
                max,
            });
        }
        let prefix = prefix.unwrap_or(max);
        let (net, prefix) = match net {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => match prefix.checked_sub(MAPPED_PREFIX) {
                    Some(v4_prefix) => (IpAddr::V4(v4), v4_prefix),
                    None => {
                        return Err(CidrError::MappedPrefixTooShort {
                            value: s.to_string(),
                            prefix,
                        })
                    }
                },
                None => (net, prefix),
            },
            IpAddr::V4(_) => (net, prefix),
        };
        // At most 128 by the checks above.
        let prefix = u8::try_from(prefix).map_err(|_| syntax())?;
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    /// True when `ip` is in this network. An IPv4-mapped IPv6 address (from
    /// a dual-stack listener) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                // `saturating_sub`: parsing keeps the prefix within 32, and
                // should it not, an exact match is the safe reading.
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether PROXY headers are expected, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Read a PROXY header before TLS on every connection.
    pub enabled: bool,
    /// Peers allowed to send one; empty means any peer.
    pub trusted: Vec<Cidr>,
}

impl ProxySettings {
    /// True when a connection from `peer` may carry a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.is_empty() || self.trusted.iter().any(|net| net.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_membership() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.net/8", "10.0.0.0/", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let settings = ProxySettings {
            enabled: true,
            trusted: vec![net],
        };
        assert!(!settings.trusts("127.0.0.1".parse().unwrap()));
        assert!(ProxySettings::default().trusts("127.0.0.1".parse().unwrap()));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `::ffff:10.0.0.0/104` is 10.0.0.0/8: it used to be compared as
    /// IPv4 with the IPv6 prefix, `32 - 104` (a panic in debug builds, a
    /// mask trusting every IPv4 peer in release ones).
    #[test]
    fn mapped_networks_are_their_ipv4_network() {
        let net: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(net, "10.0.0.0/8".parse().unwrap());
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::ffff:11.0.0.1")));
        assert!(
            !net.contains(ip("::a01:203")),
            "IPv4-compatible is not mapped"
        );
        let one: Cidr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let all_v4: Cidr = "::ffff:0.0.0.0/96".parse().unwrap();
        assert!(all_v4.contains(ip("203.0.113.9")));
        assert!(!all_v4.contains(ip("2001:db8::1")));
    }

    /// A peer reached over a dual-stack listener (`::ffff:a.b.c.d`) is
    /// judged exactly as the same peer over IPv4.
    #[test]
    fn mapped_peers_are_judged_as_ipv4() {
        for net in [
            "10.0.0.0/8",
            "::ffff:10.0.0.0/104",
            "10.2.0.0/16",
            "0.0.0.0/0",
        ] {
            let net: Cidr = net.parse().unwrap();
            for peer in ["10.2.3.4", "10.3.0.1", "11.0.0.1", "127.0.0.1"] {
                let mapped = ip(&format!("::ffff:{peer}"));
                assert_eq!(net.contains(ip(peer)), net.contains(mapped), "{net} {peer}");
            }
        }
    }

    #[test]
    fn impossible_prefixes_are_refused_with_the_reason() {
        for (bad, says) in [
            ("10.0.0.0/33", "longer than an IPv4 address (32 bits)"),
            ("::/200", "longer than an IPv6 address (128 bits)"),
            ("::ffff:10.0.0.0/200", "longer than an IPv6 address"),
            ("10.0.0.0/99999999999", "longer than an IPv4 address"),
            ("::ffff:1.2.3.4/95", "/96 or more"),
            ("::ffff:0.0.0.0/0", "/96 or more"),
            ("10.0.0.0/+8", "is not a network"),
            ("10.0.0.0/ 8", "is not a network"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }
}
