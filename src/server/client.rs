//! Who is on the other end of one served connection, as far as dotgate
//! knows: the address (after PROXY), the client ID from the TLS server
//! name, what the upstream is told about it, and its per-ID counter.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::upstream::Origin;

/// One connection's client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address: the socket's peer, or the one a trusted
    /// PROXY header names.
    pub addr: SocketAddr,
    /// The client ID its TLS server name carries (`--client-id-domain`).
    pub id: Option<Arc<str>>,
    /// What the upstream is told about it (PROXY header, client subnet).
    pub origin: Origin,
    /// Its ID's query counter, when an ID list bounds the label values.
    pub queries: Option<IntCounter>,
}

impl From<SocketAddr> for Client {
    /// A client known only by its address.
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            id: None,
            origin: Origin::NONE,
            queries: None,
        }
    }
}

/// The address, and the ID when there is one: what debug logs show.
impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{} (client ID {id})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}
