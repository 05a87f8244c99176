//! Integration tests of dotgate, as its users see it: a scripted upstream on
//! 127.0.0.1, dotgate in-process or as the real binary, and TLS clients that
//! send raw frames.
//!
//! Run with `cargo test --test integration`.

mod harness;
mod upstream;

mod answers;
mod edns;
mod framing;
mod lifetime;
mod limits;
mod process;
mod tls;
