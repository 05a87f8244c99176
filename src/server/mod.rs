//! The DoT server, in the order a connection meets it: [`accept`] (listeners,
//! connection caps, [`per_ip`] admission, PROXY trust) -> [`handshake`]
//! (plaintext refusal, TLS) -> [`connection`] (framing, in-flight limit,
//! idle, one writer) -> [`respond`] (the reply to each query); [`shutdown`]
//! turns signals into the drain.

pub mod accept;
pub mod client;
pub mod client_ids;
pub mod connection;
#[cfg(test)]
mod connection_tests;
pub mod handshake;
pub mod per_ip;
pub mod respond;
pub mod shutdown;

pub use accept::{run, run_listeners, run_with_metrics, Listener, ServeError};
