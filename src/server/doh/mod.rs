//! DNS over HTTPS (RFC 8484): the HTTP adapter in front of the one query
//! path. A DoH listener's connections go through the same accept, caps,
//! PROXY trust and TLS handshake as DoT's ([`crate::server::accept`], with
//! ALPN `h2` and `http/1.1`); then [`connection`] hands HTTP/2 to
//! dotgate's own server ([`h2`]: one task per connection, as DoT's) and
//! HTTP/1.1 to hyper's ([`h1`], with [`watch`] and [`activity`] for its
//! read and idle timeouts and [`alert_first`] for its TLS failures). Both
//! turn each request into a [`exchange::Head`] and its body, which
//! [`exchange`] judges by the pure rules of [`request`] and answers through
//! [`crate::server::respond::answer`].
//!
//! What differs from DoT stays here: status codes instead of closing, the
//! message ID as the client sent it (0 for most GETs: restored like any
//! other), `cache-control`, client IDs in the path, and no EDNS keepalive.

pub mod activity;
pub mod alert_first;
pub mod connection;
pub mod exchange;
pub mod forwarded;
pub mod h1;
pub mod h2;
pub mod protocol;
pub mod request;
pub mod watch;

pub use connection::serve;
pub use protocol::Protocol;
