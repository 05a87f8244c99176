//! The client behind a trusted reverse proxy, from the forwarding header
//! of one request (`--doh-trusted-proxy`, `--doh-forwarded-header`). Pure,
//! so every shape of header is tested without a socket.
//!
//! The client is the right-most address that is not a trusted proxy, as
//! nginx's `real_ip_recursive on` takes it: each proxy appends the address
//! it saw, so the entries right of that one were written by proxies we
//! trust, and everything left of it by the client itself (which can write
//! anything there). Taking the left-most would let any client pick its
//! address, past `--allow-from` and into the upstream's ECS. When every
//! entry is a trusted proxy, the left-most one is the client (again as
//! nginx does). A malformed entry met on the way, or an obfuscated or
//! `unknown` node, leaves the header unread: the peer stays the client.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;

use crate::config::forwarded::{ForwardedHeader, Forwarding};

/// Why a forwarding header was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("{header}: {entry:?} is not an address")]
    Malformed { header: &'static str, entry: String },
}

/// The client a request from `peer` comes for: `Ok(None)` when `peer` is
/// not a trusted proxy or sent no forwarding header (the peer is the
/// client), `Ok(Some(ip))` for the address the header names.
pub fn client(
    forwarding: &Forwarding,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<Option<IpAddr>, ForwardedError> {
    if !forwarding.trusts(peer) {
        return Ok(None);
    }
    let header = forwarding.header;
    let name = header.name();
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in headers.get_all(name) {
        entries.extend(value.as_bytes().split(|&b| b == b','));
    }
    let mut leftmost = None;
    for raw in entries.iter().rev() {
        let malformed = || ForwardedError::Malformed {
            header: name,
            entry: String::from_utf8_lossy(raw).into_owned(),
        };
        let text = std::str::from_utf8(raw).map_err(|_| malformed())?;
        let ip = match header {
            ForwardedHeader::XForwardedFor => node(text.trim()),
            ForwardedHeader::Forwarded => forwarded_for(text),
        }
        .ok_or_else(malformed)?;
        if !forwarding.trusts(ip) {
            return Ok(Some(ip));
        }
        leftmost = Some(ip);
    }
    Ok(leftmost)
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `For="[2001:db8::17]:4711"`); `None` without one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        node(value)
    })
}

/// An address, with or without a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn forwarding(header: ForwardedHeader, trusted: &[&str]) -> Forwarding {
        Forwarding {
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PROXY: &str = "10.0.0.1";

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let f = forwarding(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let xff = |v: &[&str]| client(&f, ip(PROXY), &headers("x-forwarded-for", v));
        // The client wrote 6.6.6.6 itself; the proxy appended 192.0.2.7.
        assert_eq!(xff(&["6.6.6.6, 192.0.2.7"]), Ok(Some(ip("192.0.2.7"))));
        // A chain of trusted proxies is skipped.
        assert_eq!(
            xff(&["6.6.6.6, 192.0.2.7, 10.1.1.1, 10.2.2.2"]),
            Ok(Some(ip("192.0.2.7")))
        );
        // Lines are one list (HAProxy adds a line of its own).
        assert_eq!(xff(&["6.6.6.6", "192.0.2.7"]), Ok(Some(ip("192.0.2.7"))));
        // Only proxies: the left-most.
        assert_eq!(xff(&["10.3.3.3, 10.2.2.2"]), Ok(Some(ip("10.3.3.3"))));
        // Ports and brackets.
        assert_eq!(xff(&["192.0.2.7:5353"]), Ok(Some(ip("192.0.2.7"))));
        assert_eq!(xff(&["[2001:db8::7]:443"]), Ok(Some(ip("2001:db8::7"))));
        assert_eq!(xff(&["[2001:db8::7]"]), Ok(Some(ip("2001:db8::7"))));
        assert_eq!(xff(&[" 2001:db8::7 "]), Ok(Some(ip("2001:db8::7"))));
        // No header: the peer is the client.
        assert_eq!(xff(&[]), Ok(None));
    }

    #[test]
    fn an_untrusted_peer_is_never_believed() {
        let f = forwarding(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        let h = headers("x-forwarded-for", &["192.0.2.7"]);
        assert_eq!(client(&f, ip("203.0.113.1"), &h), Ok(None));
        let nobody = Forwarding::default();
        assert_eq!(client(&nobody, ip(PROXY), &h), Ok(None));
    }

    #[test]
    fn malformed_entries_leave_the_header_unread() {
        let f = forwarding(ForwardedHeader::XForwardedFor, &["10.0.0.0/8"]);
        for bad in [
            "not-an-ip",
            "192.0.2.7, ",
            "192.0.2.7,,10.1.1.1",
            "unknown",
            "192.0.2.300",
            "[192.0.2.7]",
            "",
        ] {
            let h = headers("x-forwarded-for", &[bad]);
            assert!(
                matches!(
                    client(&f, ip(PROXY), &h),
                    Err(ForwardedError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        // Garbage left of the client is never read.
        let h = headers("x-forwarded-for", &["garbage, 192.0.2.7"]);
        assert_eq!(client(&f, ip(PROXY), &h), Ok(Some(ip("192.0.2.7"))));
        let h = headers("x-forwarded-for", &[]);
        let mut h2 = h.clone();
        h2.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(client(&f, ip(PROXY), &h2).is_err());
    }

    #[test]
    fn forwarded_takes_for_nodes_in_every_spelling() {
        let f = forwarding(ForwardedHeader::Forwarded, &["10.0.0.0/8"]);
        let fwd = |v: &[&str]| client(&f, ip(PROXY), &headers("forwarded", v));
        assert_eq!(
            fwd(&["for=6.6.6.6, for=192.0.2.60;proto=http;by=10.0.0.1"]),
            Ok(Some(ip("192.0.2.60")))
        );
        assert_eq!(
            fwd(&["For=\"[2001:db8:cafe::17]:4711\""]),
            Ok(Some(ip("2001:db8:cafe::17")))
        );
        assert_eq!(
            fwd(&["proto=https; for=\"192.0.2.60:80\""]),
            Ok(Some(ip("192.0.2.60")))
        );
        for bad in ["for=unknown", "for=_hidden", "proto=https", "for=\"[::1\""] {
            assert!(fwd(&[bad]).is_err(), "{bad:?}");
        }
        // X-Forwarded-For is not read when Forwarded is the header.
        let h = headers("x-forwarded-for", &["192.0.2.7"]);
        assert_eq!(client(&f, ip(PROXY), &h), Ok(None));
    }
}
