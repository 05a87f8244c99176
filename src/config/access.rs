//! `--allow-from`: the networks whose clients dotgate serves at all.

use std::net::IpAddr;

use super::proxy::Cidr;

/// Networks allowed to use the server; empty means everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Cidr>);

impl AllowList {
    pub fn new(networks: Vec<Cidr>) -> Self {
        Self(networks)
    }

    /// True when a client at `ip` may be served. An IPv4 client seen as an
    /// IPv4-mapped IPv6 address (on a dual-stack listener) is judged by its
    /// IPv4 address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|net| net.contains(ip))
    }

    /// The networks, for logs.
    pub fn networks(&self) -> &[Cidr] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_allows_everyone_and_a_list_only_its_networks() {
        assert!(AllowList::default().allows("203.0.113.9".parse().unwrap()));
        let list = AllowList::new(vec![
            "192.168.1.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(list.allows("192.168.1.77".parse().unwrap()));
        assert!(list.allows("::ffff:192.168.1.77".parse().unwrap()));
        assert!(list.allows("2001:db8::1".parse().unwrap()));
        assert!(!list.allows("192.168.2.1".parse().unwrap()));
        assert!(!list.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!list.allows("2001:db9::1".parse().unwrap()));
    }
}
