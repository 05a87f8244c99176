//! DNS over HTTPS (RFC 8484): the HTTP adapter in front of the one query
//! path. A DoH listener's connections go through the same accept, caps,
//! PROXY trust and TLS handshake as DoT's ([`crate::server::accept`], with
//! ALPN `h2` and `http/1.1`); then [`connection`] runs hyper's HTTP/1.1 or
//! HTTP/2 server over the stream, [`exchange`] turns each request into a
//! query for [`crate::server::respond::answer`] and its reply into a
//! response, judged by the pure rules of [`request`]; [`activity`] tells
//! the connection when it is idle, and [`watch`] when the client has begun
//! something it has not finished (the read timeout); [`alert_first`] makes
//! sure a TLS failure is counted and its alert sent whatever hyper does.
//!
//! What differs from DoT stays here: status codes instead of closing, the
//! message ID as the client sent it (0 for most GETs: restored like any
//! other), `cache-control`, client IDs in the path, and no EDNS keepalive.

pub mod activity;
pub mod alert_first;
pub mod connection;
pub mod exchange;
pub mod forwarded;
pub mod h2;
pub mod protocol;
pub mod request;
pub mod watch;

pub use connection::serve;
pub use protocol::Protocol;
