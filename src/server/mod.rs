//! The DoT server, in the order a connection meets it: [`accept`] (listeners,
//! connection caps, [`per_ip`] admission, PROXY trust) -> [`handshake`]
//! (plaintext refusal, TLS) -> [`connection`] (framing, in-flight limit,
//! idle, one writer) -> [`respond`] (the reply to each query); [`shutdown`]
//! turns signals into the drain; [`no_cert`] closes connections at once
//! while `--acme` waits for its first certificate; [`rate_limit`] judges
//! every query of every transport against the per-client limits and bans.
//!
//! [`doh`] is the second transport: its connections share accept and
//! handshake with DoT's, then go to HTTP instead of [`connection`], and
//! reach the same [`respond`].

pub mod accept;
pub mod accept_errors;
pub mod client;
pub mod client_ids;
pub mod connection;
#[cfg(test)]
mod connection_tests;
pub mod doh;
pub mod handshake;
pub(crate) mod in_flight;
pub mod listener;
pub mod no_cert;
pub mod per_ip;
pub mod rate_limit;
pub mod respond;
pub mod shutdown;

pub use accept::{run, run_listeners, run_with_metrics, ServeError};
pub use listener::{Listener, ListenerKind};
