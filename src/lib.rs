//! dotgate: DNS over TLS (RFC 7858) in front of a plain DNS resolver.
//!
//! The path of one query, one module per step:
//!
//! ```text
//! server (accept, caps) -> listener (plaintext refusal, TLS handshake)
//!   -> connection (framing, in-flight limit, idle) -> upstream (UDP, TCP on TC)
//!   -> connection's single writer -> client
//! ```
//!
//! * [`config`] validates the command line once into a [`config::Config`];
//! * [`server::run`] serves already-bound listeners until a shutdown token
//!   fires, which is how both `main` and the tests start it;
//! * [`dns`], [`edns`] and [`framing`] are pure wire-format code;
//! * [`tls`] builds the rustls configurations, with [`tickets`] for
//!   session-ticket keys, [`reload`] for certificate hot reload and
//!   [`certcheck`] for the chain checks;
//! * [`per_ip`] admits connections per client address;
//! * [`client`] is the pipelining DoT client behind `dotgate query`.

pub mod config;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod tls;
pub mod tools;
pub mod upstream;
