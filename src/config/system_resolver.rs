//! The system's resolver as the default upstream: what dotgate forwards to
//! when no `--upstream` is given, and how it says so at start-up.
//!
//! The quick start runs without `--upstream`, so a newcomer's first query
//! goes wherever the machine's own lookups go: the `nameserver` lines of
//! resolv.conf (read by `config::upstreams_from_resolv_conf`). On most
//! desktops and many servers that is systemd-resolved's stub at 127.0.0.53,
//! which dotgate uses as it is: it answers over UDP and TCP, follows the
//! network as a laptop moves between links and VPNs, and caches. (Its
//! uplinks, listed in /run/systemd/resolve/resolv.conf, can be chosen with
//! `--resolv-conf`; they are the way out of a loop when systemd-resolved on
//! this machine itself forwards to dotgate.) The log line names the
//! resolvers and the file, so a SERVFAIL from a dead or wrong default is
//! traced in one look.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// systemd-resolved's stub listener (caching, DNSSEC, per-link routing).
pub const RESOLVED_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));

/// systemd-resolved's proxy stub (systemd 247 and later): queries passed on
/// to its uplinks with no caching or rewriting of their own.
pub const RESOLVED_PROXY_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54));

/// One resolver as the log names it: the address, and what it is when it is
/// one of systemd-resolved's stubs.
pub fn describe(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip == RESOLVED_STUB => format!("{addr} (systemd-resolved's stub)"),
        ip if ip == RESOLVED_PROXY_STUB => format!("{addr} (systemd-resolved's proxy stub)"),
        _ => addr.to_string(),
    }
}

/// The start-up message for upstreams taken from `path` because no
/// `--upstream` was given.
pub fn chosen(addrs: &[SocketAddr], path: &Path) -> String {
    let named: Vec<String> = addrs.iter().copied().map(describe).collect();
    let (noun, list) = match named.as_slice() {
        [one] => ("resolver", one.clone()),
        _ => ("resolvers", named.join(", ")),
    };
    format!(
        "no --upstream: forwarding to the system {noun} {list} from {} (set --upstream to choose)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stubs_are_named() {
        let stub: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let proxy: SocketAddr = "127.0.0.54:53".parse().unwrap();
        let other: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        assert_eq!(describe(stub), "127.0.0.53:53 (systemd-resolved's stub)");
        assert_eq!(
            describe(proxy),
            "127.0.0.54:53 (systemd-resolved's proxy stub)"
        );
        assert_eq!(describe(other), "[2001:db8::1]:53");
        assert_eq!(
            chosen(&[stub], Path::new("/etc/resolv.conf")),
            "no --upstream: forwarding to the system resolver 127.0.0.53:53 (systemd-resolved's stub) \
             from /etc/resolv.conf (set --upstream to choose)"
        );
        assert_eq!(
            chosen(&[other, stub], Path::new("/r")),
            "no --upstream: forwarding to the system resolvers [2001:db8::1]:53, \
             127.0.0.53:53 (systemd-resolved's stub) from /r (set --upstream to choose)"
        );
    }
}
