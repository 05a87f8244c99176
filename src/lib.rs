//! dotgate: DNS over TLS (RFC 7858) in front of a plain DNS resolver.
//!
//! The house, one folder per layer; data flows one way, and a layer imports
//! only the layers listed below it:
//!
//! ```text
//! main.rs (the binary's edge)
//!   tools/     dotgate query, dotgate check, serve --check-config
//!   server/    accept -> handshake -> connection -> respond; client, client_ids, per_ip, shutdown
//!   upstream/  pool, policy, health, origin, reply, udp, tcp, stream, per_client, dot, connect
//!   acme/      --acme: store, client, challenge (http01, alpn01, dns01), order, renew
//!   tls/       server configs, server_stream, records, identity, reload, tickets, chain, client
//!   config/    cli (clap), file (TOML), duration, proxy, forwarded, access, client_id -> one Config
//!   metrics/   stats (counters), exposition, the /metrics, /healthz, /readyz server
//!   proto/     dns, edns, framing, message_reader, proxy_header: pure wire code
//! ```
//!
//! `tools` never imports `server`; clap types stop at `config`; `proto` and
//! `metrics` import nothing else of dotgate.
//!
//! The path of one query:
//!
//! ```text
//! server::accept (caps, per-address, PROXY trust)
//!   -> server::handshake (plaintext refusal, TLS handshake)
//!   -> server::connection (framing, in-flight limit, idle)
//!   -> server::respond -> upstream (UDP, TCP on TC, pooled TCP/TLS)
//!   -> back to the connection's task, which writes the replies -> client
//! ```
//!
//! * [`config`] validates the command line once into a [`config::Config`];
//! * [`server::run`] serves already-bound listeners until a shutdown token
//!   fires, which is how both `main` and the tests start it;
//! * [`proto`] is pure wire-format code: [`proto::dns`], [`proto::edns`],
//!   [`proto::framing`], [`proto::message_reader`] and [`proto::proxy_header`];
//! * [`upstream`] answers "what did an upstream say to this query?", with
//!   its own connector and error type;
//! * [`acme`] gets and renews the certificate by ACME (`--acme`) into the
//!   files that [`tls`] then serves and reloads like `--cert`/`--key`;
//! * [`tls`] builds the rustls server configurations, with
//!   [`tls::server_stream`] for the server side of each connection,
//!   [`tls::identity`] for the certificate and key, [`tls::tickets`] for
//!   session-ticket keys, [`tls::reload`] for certificate hot reload,
//!   [`tls::chain`] for the chain checks and [`tls::client`] for the client
//!   side (trust anchors, ALPN `dot`);
//! * [`metrics`] counts ([`metrics::stats`]), shows the counts to
//!   Prometheus ([`metrics::exposition`]) and serves them
//!   ([`metrics::http`]);
//! * [`tools`] holds the subcommands besides `serve`: [`tools::query`], the
//!   pipelining DoT client behind `dotgate query`, [`tools::check`] and
//!   [`tools::validate`].

pub mod acme;
pub mod config;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod tls;
pub mod tools;
pub mod upstream;
