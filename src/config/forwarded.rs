//! `--doh-trusted-proxy` and `--doh-forwarded-header`: which DoH peers (a
//! reverse proxy in front) may name the client in a forwarding header, and
//! which header that is. The header itself is read per request by
//! [`crate::server::doh::forwarded`].

use std::net::IpAddr;

use super::proxy::Cidr;

/// The forwarding header a trusted proxy writes.
///
/// One, not both: a proxy appends to the header it knows and passes any
/// other through untouched, so a client could write the other one itself
/// and have its claim taken as the proxy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (nginx, HAProxy `option
    /// forwardfor`, Caddy, Traefik).
    #[default]
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239; HAProxy `option
    /// forwarded`, or an nginx `proxy_set_header`).
    #[value(name = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case as HTTP/2 carries it.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// Whose forwarding header is believed on DoH listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Trusted proxies; empty means none (never every peer, unlike
    /// `--proxy-protocol-from`: a forwarding header costs a client nothing
    /// to write, and a DoH listener faces clients directly).
    pub trusted: Vec<Cidr>,
    pub header: ForwardedHeader,
}

impl Forwarding {
    /// True when `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_is_trusted_by_default() {
        let none = Forwarding::default();
        assert!(!none.trusts("127.0.0.1".parse().unwrap()));
        let some = Forwarding {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            header: ForwardedHeader::Forwarded,
        };
        assert!(some.trusts("10.9.8.7".parse().unwrap()));
        assert!(some.trusts("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!some.trusts("11.0.0.1".parse().unwrap()));
    }
}
