//! A listening socket as the server takes it: the socket, what it serves
//! (DoT, DoH, plain DoH), and whether its connections start with a PROXY
//! header. Bound by main (or a test, on port 0) and handed to
//! [`crate::server::run_listeners`].

use tokio::net::TcpListener;

use crate::metrics::stats::Transport;

/// A bound listening socket, what it serves, and whether its connections
/// start with a PROXY protocol header.
pub struct Listener {
    pub socket: TcpListener,
    pub proxy: bool,
    pub kind: ListenerKind,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// DNS over TLS (`--listen`, `--proxy-protocol-listen`).
    Dot,
    /// DNS over HTTPS, TLS with ALPN `h2` and `http/1.1` (`--doh-listen`).
    Doh,
    /// DNS over HTTP without TLS, for a reverse proxy that terminates TLS
    /// in front (`--doh-listen-plain`).
    DohPlain,
}

impl ListenerKind {
    /// The transport its queries are counted under.
    pub fn transport(self) -> Transport {
        match self {
            ListenerKind::Dot => Transport::Dot,
            ListenerKind::Doh | ListenerKind::DohPlain => Transport::Doh,
        }
    }
}

impl Listener {
    /// A DoT listener.
    pub fn dot(socket: TcpListener, proxy: bool) -> Self {
        Self {
            socket,
            proxy,
            kind: ListenerKind::Dot,
        }
    }
}
