//! What an upstream is told about the client behind a query: its address
//! and TLS server name in a PROXY v2 header (`--upstream-proxy-protocol`),
//! and its network in an EDNS Client Subnet option (`--upstream-ecs`).
//!
//! Built once per client connection, so a query pays for neither unless it
//! is configured. Both reveal the client to the upstream, so both are off
//! unless the operator turns them on, and then only toward the upstreams
//! the operator named (never the resolv.conf default; see `config`).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::ClientToUpstream;
use crate::proto::edns;
use crate::proto::proxy_header::{self, Transport};

/// The client connection as a PROXY header describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyClient {
    /// The client's address (after an inbound PROXY header, if any).
    pub client: SocketAddr,
    /// dotgate's address on that connection.
    pub local: SocketAddr,
    /// The TLS server name the client asked for.
    pub authority: Option<Arc<str>>,
}

/// What the upstream learns about one client connection's queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// PROXY headers toward the upstream: `None` when off; with PROXY on,
    /// `Some(None)` for dotgate's own queries (health probes), which carry
    /// the LOCAL command. Boxed: every connection holds an `Origin` for its
    /// whole life, and most have PROXY off.
    proxy: Option<Option<Box<ProxyClient>>>,
    /// The encoded client subnet option, when `--upstream-ecs` is set.
    subnet: Option<Box<[u8]>>,
}

impl Origin {
    /// Nothing told: the upstream sees dotgate.
    pub const NONE: Origin = Origin {
        proxy: None,
        subnet: None,
    };

    /// The origin of one client connection's queries under `settings`.
    pub fn for_client(
        settings: &ClientToUpstream,
        client: SocketAddr,
        local: SocketAddr,
        sni: Option<&str>,
    ) -> Self {
        let subnet = settings.subnet.map(|prefixes| {
            let mut option = Vec::with_capacity(edns::CLIENT_SUBNET_MAX);
            edns::push_client_subnet(&mut option, client.ip(), prefixes.v4, prefixes.v6);
            option.into_boxed_slice()
        });
        let proxy = settings.proxy_protocol.then(|| {
            Some(Box::new(ProxyClient {
                client,
                local,
                authority: sni.map(Arc::from),
            }))
        });
        Self { proxy, subnet }
    }

    /// This origin for another client address on the same connection: the
    /// client a trusted reverse proxy names for one request (DoH's
    /// forwarding headers). The local address and server name stay.
    pub fn for_forwarded(&self, settings: &ClientToUpstream, client: SocketAddr) -> Self {
        let (local, sni) = match self.proxy_client() {
            Some(p) => (p.local, p.authority.as_deref()),
            None => (client, None),
        };
        Self::for_client(settings, client, local, sni)
    }

    /// The origin of dotgate's own queries (health probes): a LOCAL PROXY
    /// header when PROXY is on, no client subnet.
    pub fn own(settings: &ClientToUpstream) -> Self {
        Self {
            proxy: settings.proxy_protocol.then_some(None),
            subnet: None,
        }
    }

    /// The client subnet option to send, if any.
    pub fn subnet(&self) -> Option<&[u8]> {
        self.subnet.as_deref()
    }

    /// True when queries carry a PROXY header.
    pub fn has_proxy(&self) -> bool {
        self.proxy.is_some()
    }

    /// The client a PROXY header names; `None` for dotgate's own queries
    /// or without PROXY. Stream connections are pooled by it.
    pub fn proxy_client(&self) -> Option<&ProxyClient> {
        self.proxy.as_ref().and_then(Option::as_deref)
    }

    /// Appends the PROXY header for `transport` to `out`, if PROXY is on.
    pub fn write_proxy(&self, out: &mut Vec<u8>, transport: Transport) {
        match &self.proxy {
            None => {}
            Some(None) => proxy_header::write_v2_local(out),
            Some(Some(p)) => {
                proxy_header::write_v2(out, p.client, p.local, transport, p.authority.as_deref())
            }
        }
    }

    /// The PROXY header for a new stream connection; empty without PROXY.
    pub fn stream_prelude(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_proxy(&mut out, Transport::Stream);
        out
    }
}
