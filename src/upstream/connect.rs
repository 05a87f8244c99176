//! Why an upstream connection could not be opened (the TLS dial itself is
//! [`crate::tls::client::dial`], shared with `dotgate query`), and the lookup
//! of a `tls://NAME` upstream through the bootstrap resolver. The messages
//! are those of `dotgate query`, which does the same.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::tls::client::DialError;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// Why no connection to an upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve server {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{0:?} is not a domain name")]
    BadName(String),
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Resolves `host` (A, then AAAA when there is no A) through a plain DNS
/// resolver over UDP, without the system resolver: for `tls://NAME`
/// upstreams and `dotgate query --bootstrap`. Returns the addresses and the
/// smallest TTL among them, for how long they may be kept.
pub async fn resolve_via(
    bootstrap: SocketAddr,
    host: &str,
    timeout: Duration,
) -> Result<(Vec<IpAddr>, Duration), ConnectError> {
    let fail = |reason: String| ConnectError::Resolve {
        host: host.to_string(),
        reason,
    };
    // Fully qualified, as the name in the reply's question will be.
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let name = Name::from_utf8(&fqdn).map_err(|_| ConnectError::BadName(host.to_string()))?;
    let bind: SocketAddr = if bootstrap.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(bootstrap).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    for rtype in [RecordType::A, RecordType::AAAA] {
        let id: u16 = rand::random();
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), rtype));
        let bytes = msg
            .to_vec()
            .map_err(|e| ConnectError::Encode(e.to_string()))?;
        sock.send(&bytes).await?;
        let mut buf = vec![0u8; 65_535];
        let reply = loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| fail(format!("no answer from {bootstrap}")))??;
            // Another ID or question is not this reply (RFC 5452): keep waiting.
            let Ok(reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let asked = reply
                .queries
                .first()
                .is_some_and(|q| q.name() == &name && q.query_type() == rtype);
            if reply.metadata.id == id && asked {
                break reply;
            }
        };
        let mut ttl = u32::MAX;
        let ips: Vec<IpAddr> = reply
            .answers
            .iter()
            .filter_map(|r| {
                let ip = match &r.data {
                    hickory_proto::rr::RData::A(a) => IpAddr::V4(a.0),
                    hickory_proto::rr::RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => return None,
                };
                ttl = ttl.min(r.ttl);
                Some(ip)
            })
            .collect();
        if !ips.is_empty() {
            return Ok((ips, Duration::from_secs(u64::from(ttl))));
        }
    }
    Err(fail(format!("{bootstrap} has no address for it")))
}
