//! Integration tests of dotgate, as its users see it: a scripted upstream on
//! 127.0.0.1, dotgate in-process or as the real binary, and TLS clients that
//! send raw frames.
//!
//! Run with `cargo test --test integration`.

mod harness;
mod upstream;

mod access;
mod acme;
mod answers;
mod check;
mod config;
mod deploy;
mod doh;
mod doh_acme;
mod doh_clients;
mod doh_hostile;
mod doh_proxy;
mod doh_tools;
mod edns;
mod faults;
mod framing;
mod hardening;
mod hostile;
mod identity;
mod keepalive;
mod lifetime;
mod limits;
mod manual;
mod metrics;
mod pool;
mod process;
mod proxy;
mod rate_limit;
mod replicas;
mod tls;
mod tls_attack;
