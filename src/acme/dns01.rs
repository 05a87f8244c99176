//! DNS-01 by RFC 2136 dynamic update signed with TSIG (RFC 8945).

use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns-01 is not available yet")]
    Unsupported,
}

/// A TXT record that was added, for its deletion.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub value: String,
}

pub struct Updater {
    server: SocketAddr,
}

impl Updater {
    pub fn new(server: SocketAddr, _key: &Path) -> Result<Updater, DnsError> {
        let _ = Updater { server };
        Err(DnsError::Unsupported)
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub async fn add(&self, _name: &str, _value: &str) -> Result<Record, DnsError> {
        Err(DnsError::Unsupported)
    }

    pub async fn delete(&self, _record: &Record) -> Result<(), DnsError> {
        Err(DnsError::Unsupported)
    }
}
