//! The server: accept loops over already-bound listeners, the global
//! connection cap, one task per connection, and the drain on shutdown.
//!
//! `run` takes bound listeners and a shutdown token (the mini-redis shape),
//! so tests bind port 0, and main binds the configured addresses.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::alpn01;
use crate::config::proxy::ProxySettings;
use crate::config::Config;
use crate::metrics::http;
use crate::metrics::stats::{HandshakeFailure, Stats, TlsVersionLabel, Transport};
use crate::proto::message_reader::{MessageBudget, ReadLimits};
use crate::proto::proxy_header;
use crate::server::accept_errors::AcceptErrors;
use crate::server::client::Client;
use crate::server::client_ids::ClientIds;
use crate::server::connection::{self, Shared};
use crate::server::doh;
use crate::server::handshake::{self, HandshakeError};
use crate::server::listener::{Listener, ListenerKind};
use crate::server::per_ip::{IpSlot, PerIp, Refusal};
use crate::server::rate_limit::RateLimiter;
use crate::tls::{self, ServerConfigs};
use crate::upstream::{Origin, Pool, PoolError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] crate::tls::identity::TlsError),
    #[error(transparent)]
    Upstream(#[from] PoolError),
    #[error("cannot listen for metrics on {addr} (--metrics-listen): {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    ClientIds(#[from] crate::config::client_id::ClientIdError),
    #[error(transparent)]
    AcmeAlpn(#[from] crate::acme::alpn01::AlpnError),
}

/// Serves DoT on `listeners` until `shutdown` is cancelled, then drains.
/// Every listener expects PROXY headers exactly when `--proxy-protocol` is on.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let proxy = config.proxy.enabled;
    let listeners = listeners
        .into_iter()
        .map(|socket| Listener::dot(socket, proxy))
        .collect();
    run_listeners(config, listeners, shutdown).await
}

/// As [`run`], with PROXY protocol chosen per listener
/// (`--proxy-protocol-listen`).
pub async fn run_listeners(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    run_with_metrics(config, listeners, metrics, shutdown).await
}

/// As [`run`], with the `--metrics-listen` socket already bound (tests bind
/// port 0); `None` serves no metrics whatever the configuration says.
pub async fn run_with_metrics(
    config: Config,
    listeners: Vec<Listener>,
    metrics: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Built first so that a registry error stops start-up before anything
    // is served.
    let stats = Arc::new(Stats::new()?);
    let client_ids = Arc::new(ClientIds::new(&config.client_ids)?);
    // Up before the certificate, so that /readyz says 503 while an ACME
    // order is under way.
    if let Some(listener) = metrics {
        let endpoint = http::Endpoint {
            stats: stats.clone(),
            // A health probe goes out every interval and may take up to the
            // upstream timeout to come back.
            ready_window: config.pool.health_interval + config.timeouts.upstream,
        };
        tokio::spawn(http::serve(listener, endpoint, shutdown.clone()));
    }
    // TLS-ALPN-01 answered on the DoH listeners (no --acme-tls-alpn-listen):
    // the responder's certificates and configuration, shared with them.
    let acme_certs = alpn01::Certs::default();
    let acme_on_doh = match &config.acme {
        Some(acme) if acme.challenge.on_doh_listener() => Some(alpn01::server_config(&acme_certs)?),
        _ => None,
    };
    // --acme: a certificate in --acme-dir before the files are loaded below.
    if let Some(acme) = &config.acme {
        // Meanwhile connections are closed at once rather than left in the
        // backlog, where no timeout runs.
        let prepare = crate::acme::prepare(acme, &stats, &shutdown, &acme_certs);
        if !super::no_cert::refuse_until(&listeners, &stats, acme_on_doh.clone(), prepare).await? {
            return Ok(());
        }
    }
    // Loads and checks the certificate, and starts its reloader (R3, R6).
    let mut configs = tls::setup(&config, &shutdown, &stats)?;
    if let Some(acme) = acme_on_doh {
        configs.answer_acme(acme);
    }
    let upstream = Pool::new(
        &config.upstreams,
        &config.pool,
        &config.tell_upstream,
        config.timeouts.upstream,
        stats.clone(),
    )
    .await?;
    client_ids.spawn_reloader(shutdown.clone());
    if let Some(domain) = &config.client_ids.domain {
        if client_ids.is_private() {
            tracing::info!(%domain, listed = client_ids.listed(), "private endpoint: only listed client IDs are served");
        } else {
            tracing::info!(%domain, "client IDs are read from the TLS server name (every client is served)");
        }
    }
    if config.tell_upstream.proxy_protocol {
        tracing::info!("upstream queries carry a PROXY v2 header naming the client");
    }
    if let Some(prefixes) = config.tell_upstream.subnet {
        tracing::info!(
            v4 = prefixes.v4,
            v6 = prefixes.v6,
            "upstream queries carry the client's subnet (EDNS Client Subnet)"
        );
    }
    let upstreams = config
        .upstreams
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let shared = Arc::new(Shared {
        upstream,
        stats: stats.clone(),
        timeouts: config.timeouts,
        max_inflight: config.limits.max_inflight,
        max_queries: config.limits.max_queries_per_connection,
        max_age: config.limits.max_connection_age,
        allow: config.allow.clone(),
        client_ids,
        tell_upstream: config.tell_upstream,
        doh_path: config.doh.path.clone(),
        forwarding: config.doh.forwarded.clone(),
        rate_limit: RateLimiter::new(&config.rate_limit, &stats, std::time::Instant::now()),
        read_limits: ReadLimits {
            read_timeout: Some(config.timeouts.read),
            budget: Some(MessageBudget::new(config.limits.message_memory, {
                let waits = stats.message_budget_waits.clone();
                Arc::new(move || waits.inc())
            })),
        },
    });
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let per_ip = PerIp::new(
        config.limits.max_connections_per_ip,
        config.limits.max_handshakes_per_ip_per_sec,
        std::time::Instant::now(),
    );
    let tracker = TaskTracker::new();
    let any_proxy = listeners.iter().any(|l| l.proxy);
    for Listener {
        socket,
        proxy,
        kind,
    } in listeners
    {
        if let Ok(local) = socket.local_addr() {
            let serving = match kind {
                ListenerKind::Dot => "serving DNS over TLS",
                ListenerKind::Doh => "serving DNS over HTTPS",
                ListenerKind::DohPlain => "serving DNS over HTTP without TLS (for a reverse proxy)",
            };
            tracing::info!(listen = %local, proxy_protocol = proxy, %upstreams, policy = ?config.pool.policy, "{serving}");
        }
        let accept = AcceptLoop {
            listener: socket,
            slots: slots.clone(),
            per_ip: per_ip.clone(),
            configs: configs.clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            kind,
            proxy: Arc::new(ProxySettings {
                enabled: proxy,
                trusted: config.proxy.trusted.clone(),
            }),
        };
        tracker.spawn(accept.run());
    }
    if any_proxy {
        if config.proxy.trusted.is_empty() {
            tracing::warn!("--proxy-protocol without --proxy-protocol-from: any peer can claim any client address");
        } else {
            let from: Vec<String> = config
                .proxy
                .trusted
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::info!(from = %from.join(","), "expecting PROXY protocol headers");
        }
    }
    stats.set_listening();
    shutdown.cancelled().await;
    tracker.close();
    if tokio::time::timeout(config.timeouts.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            drain = ?config.timeouts.drain,
            "connections still open after the drain timeout: exiting anyway"
        );
    }
    stats.log_summary();
    Ok(())
}

struct AcceptLoop {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    configs: ServerConfigs,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    kind: ListenerKind,
    proxy: Arc<ProxySettings>,
}

impl AcceptLoop {
    async fn run(self) {
        let mut errors = AcceptErrors::new();
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => {
                    errors.succeeded();
                    pair
                }
                Err(e) => {
                    let pause = errors.failed(&e, &self.shared.stats);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            let stats = &self.shared.stats;
            // Judged first, before a slot or any byte is read; behind PROXY
            // the client is only known from the header.
            if !self.proxy.enabled && !allowed_at_accept(self.kind, &self.shared, peer) {
                stats.refused_not_allowed.inc();
                tracing::debug!(%peer, "not in --allow-from: closed");
                drop(tcp);
                continue;
            }
            if !self.proxy.enabled && banned(&self.shared, peer) {
                drop(tcp);
                continue;
            }
            let Ok(global) = self.slots.clone().try_acquire_owned() else {
                stats.refused_over_capacity.inc();
                tracing::debug!(%peer, "over --max-connections: closed");
                drop(tcp);
                continue;
            };
            let slot = if self.proxy.enabled {
                if !self.proxy.trusts(peer.ip()) {
                    stats.refused_proxy_untrusted.inc();
                    tracing::debug!(%peer, "not in --proxy-protocol-from: closed");
                    drop(tcp);
                    continue;
                }
                // The client's address is in the PROXY header, read in the
                // connection's task: per-address admission happens there.
                Admission {
                    _global: global,
                    _ip: None,
                }
            } else {
                match admit(&self.per_ip, peer, self.kind.transport(), stats) {
                    Some(ip) => Admission {
                        _global: global,
                        _ip: Some(ip),
                    },
                    None => {
                        drop(tcp);
                        continue;
                    }
                }
            };
            self.tracker.spawn(handle(
                (tcp, peer),
                self.kind,
                slot,
                self.proxy.enabled.then(|| self.per_ip.clone()),
                self.configs.clone(),
                self.shared.clone(),
                self.shutdown.clone(),
            ));
        }
    }
}

/// `--allow-from` at accept (or after the PROXY header). A trusted DoH
/// proxy (`--doh-trusted-proxy`) passes here: each of its requests is
/// judged for the client it names instead (`doh::exchange`).
fn allowed_at_accept(kind: ListenerKind, shared: &Shared, client: SocketAddr) -> bool {
    shared.allow.allows(client.ip())
        || (kind.transport() == Transport::Doh && shared.forwarding.trusts(client.ip()))
}

/// True (and counted) when `client` is banned (`--ban-after`): its
/// connection is closed before anything is read, or after the PROXY header.
fn banned(shared: &Shared, client: SocketAddr) -> bool {
    let banned = shared
        .rate_limit
        .as_ref()
        .is_some_and(|limits| limits.banned(client.ip(), std::time::Instant::now()));
    if banned {
        shared.stats.refused_banned.inc();
        tracing::debug!(%client, "banned: closed");
    }
    banned
}

/// Admits `client` under the per-address limits, counting the connection
/// as accepted or refused; `None` when refused.
fn admit(
    per_ip: &Arc<PerIp>,
    client: SocketAddr,
    transport: Transport,
    stats: &Stats,
) -> Option<IpSlot> {
    match per_ip.admit(client.ip(), std::time::Instant::now()) {
        Ok(ip) => {
            stats.connections_accepted[transport as usize].inc();
            Some(ip)
        }
        Err(refusal) => {
            match refusal {
                Refusal::TooManyConnections => &stats.refused_per_ip,
                Refusal::HandshakeRate => &stats.refused_handshake_rate,
            }
            .inc();
            tracing::debug!(%client, ?refusal, "over a per-address limit: closed");
            None
        }
    }
}

/// The kernel send buffer of a client connection (Linux doubles it for its
/// bookkeeping: 128 KiB). Left to autotuning, it grows to `tcp_wmem`'s
/// maximum (4 MiB by default) for a client that sends queries for large
/// answers and never reads them: 40 bytes of queries then pin megabytes of
/// kernel memory per connection until the write timeout, and dotgate keeps
/// reading and forwarding that client's queries meanwhile. Fixed, a client
/// that stops reading holds at most this plus `--max-inflight` replies, and
/// is stopped after a few dozen queries. Twice a largest DNS message is
/// ample for DNS: it limits one connection to 128 KiB per round trip.
const CLIENT_SEND_BUFFER: usize = 64 * 1024;

/// A connection's places under the global and the per-address caps, held
/// for its whole life and released together. The per-address place is
/// taken after the PROXY header when PROXY is on.
struct Admission {
    _global: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
}

/// One connection's whole life, from TCP accept to close. Holds its slot of
/// the global cap until the end. With `proxy_admission` (PROXY on), reads
/// the PROXY header first and admits the client it names under the
/// per-address limits; the header and the TLS handshake share the
/// handshake timeout.
async fn handle(
    (mut tcp, peer): (TcpStream, SocketAddr),
    kind: ListenerKind,
    mut slot: Admission,
    proxy_admission: Option<Arc<PerIp>>,
    configs: ServerConfigs,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let stats = &shared.stats;
    let _open = stats.open_connection(kind.transport());
    let _ = tcp.set_nodelay(true);
    // dotgate's address on this connection, for PROXY headers upstream
    // (read only when they are sent).
    let local = if shared.tell_upstream.proxy_protocol {
        tcp.local_addr().unwrap_or(peer)
    } else {
        peer
    };
    // Best effort: without it the kernel's autotuning holds the default.
    let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(CLIENT_SEND_BUFFER);
    let deadline = tokio::time::Instant::now() + shared.timeouts.handshake;
    // The address used for limits and logs: the socket's peer, or the
    // client a trusted proxy names.
    let mut client = peer;
    if let Some(per_ip) = proxy_admission {
        let header = tokio::select! {
            _ = shutdown.cancelled() => return,
            header = tokio::time::timeout_at(deadline, proxy_header::read_header(&mut tcp)) => header,
        };
        match header {
            Ok(Ok(source)) => client = source.unwrap_or(peer),
            Ok(Err(proxy_header::ProxyError::Io(e))) => {
                stats.count_handshake_failure(HandshakeFailure::ClosedEarly);
                tracing::debug!(%peer, error = %e, "closed before the PROXY header");
                return;
            }
            Ok(Err(e)) => {
                stats.refused_proxy_malformed.inc();
                tracing::debug!(%peer, error = %e, "bad PROXY header: closed");
                return;
            }
            Err(_) => {
                stats.count_handshake_failure(HandshakeFailure::Timeout);
                tracing::debug!(%peer, "no PROXY header within the handshake timeout");
                return;
            }
        }
        tracing::debug!(%client, proxy = %peer, "PROXY header read");
        if !allowed_at_accept(kind, &shared, client) {
            stats.refused_not_allowed.inc();
            tracing::debug!(%client, proxy = %peer, "not in --allow-from: closed");
            return;
        }
        if banned(&shared, client) {
            return;
        }
        match admit(&per_ip, client, kind.transport(), stats) {
            Some(ip) => slot._ip = Some(ip),
            None => return,
        }
    }
    if kind == ListenerKind::DohPlain {
        // No TLS: the reverse proxy in front has terminated it.
        let protocol = match plain_protocol(&tcp, deadline).await {
            Some(protocol) => protocol,
            None => {
                stats.count_handshake_failure(HandshakeFailure::ClosedEarly);
                return;
            }
        };
        let origin = Origin::for_client(&shared.tell_upstream, client, local, None);
        let client = Client {
            addr: client,
            id: None,
            origin,
            queries: None,
        };
        tracing::debug!(%client, ?protocol, "serving DoH without TLS");
        // Boxed, as below.
        let reason = Box::pin(doh::serve(tcp, protocol, client, shared.clone(), shutdown)).await;
        stats.count_close(reason);
        return;
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        // Boxed: the handshake's state lives only as long as the handshake,
        // not in the connection's task for its whole life.
        result = Box::pin(handshake::accept_tls(
            tcp,
            &configs,
            &shared.client_ids,
            remaining,
            shared.timeouts.read,
            kind.transport(),
        )) => result,
    };
    let (tls, hello) = match handshake {
        Ok(accepted) => accepted,
        Err(e) => {
            match e {
                HandshakeError::Plaintext(_) => stats.refused_plaintext.inc(),
                HandshakeError::NoClientId(_) => stats.refused_client_id.inc(),
                HandshakeError::Timeout => stats.count_handshake_failure(HandshakeFailure::Timeout),
                HandshakeError::ClosedEarly => {
                    stats.count_handshake_failure(HandshakeFailure::ClosedEarly)
                }
                HandshakeError::CertificateRejected(_) => {
                    stats.count_handshake_failure(HandshakeFailure::CertificateRejected);
                    // What an operator must see: a client that does not
                    // trust the certificate fails with no error of its own
                    // to read.
                    tracing::warn!(%client, error = %e, "certificate probably not trusted by the client");
                    return;
                }
                HandshakeError::Tls(ref error) => {
                    if error.too_large() {
                        stats.tls_handshake_too_large.inc();
                    }
                    stats.count_handshake_failure(HandshakeFailure::Error)
                }
            }
            tracing::debug!(%client, error = %e, "connection refused");
            return;
        }
    };
    let session = tls.session();
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => Some(TlsVersionLabel::Tls12),
        Some(rustls::ProtocolVersion::TLSv1_3) => Some(TlsVersionLabel::Tls13),
        _ => None,
    };
    if let Some(version) = version {
        let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        stats.count_handshake(version, resumed);
    }
    if session.alpn_protocol() == Some(alpn01::ALPN_ACME_TLS) {
        // The ACME server's TLS-ALPN-01 validation: the handshake was the
        // whole answer (RFC 8737 §3); close cleanly.
        alpn01::answered(
            hello.server_name.as_deref(),
            " on the DoH listener, while serving",
        );
        use tokio::io::AsyncWriteExt;
        let mut tls = tls;
        let _ = tokio::time::timeout(shared.timeouts.handshake, tls.shutdown()).await;
        return;
    }
    let protocol = if session.alpn_protocol() == Some(tls::ALPN_H2) {
        doh::Protocol::Http2
    } else {
        doh::Protocol::Http1
    };
    // The server name is not kept past this point: an idle connection
    // holds only what it needs.
    let handshake::Hello { server_name, id } = hello;
    let origin = Origin::for_client(&shared.tell_upstream, client, local, server_name.as_deref());
    drop(server_name);
    let queries = id
        .as_deref()
        .filter(|_| shared.client_ids.is_private() && kind == ListenerKind::Dot)
        .map(|id| stats.client_queries(id));
    let client = Client {
        addr: client,
        id,
        origin,
        queries,
    };
    tracing::debug!(%client, "serving");
    let reason = match kind {
        ListenerKind::Dot => connection::serve(tls, client, shared.clone(), shutdown).await,
        ListenerKind::Doh | ListenerKind::DohPlain => {
            // Boxed: hyper's connection state is kilobytes, and unboxed it
            // would size every connection's task, DoT's included (an idle
            // DoT connection went from 7 to 10 KiB).
            Box::pin(doh::serve(tls, protocol, client, shared.clone(), shutdown)).await
        }
    };
    stats.count_close(reason);
}

/// The HTTP version a plain connection speaks: HTTP/2 when it opens with
/// the HTTP/2 preface ("prior knowledge", as Caddy's and Envoy's h2c
/// upstreams do), HTTP/1.1 otherwise. `None` when the client closes (or
/// sends nothing) before the handshake deadline.
async fn plain_protocol(tcp: &TcpStream, deadline: tokio::time::Instant) -> Option<doh::Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let mut first = [0u8; PREFACE.len()];
    let peek = async {
        loop {
            let n = tcp.peek(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            if first[..n] != PREFACE[..n] {
                return Some(false);
            }
            if n == PREFACE.len() {
                return Some(true);
            }
            // The bytes so far begin the preface and no more have come
            // (a rare split; peeking again at once would spin, as the
            // socket stays readable): look again a little later.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let h2 = tokio::time::timeout_at(deadline, peek).await.ok()??;
    Some(if h2 {
        doh::Protocol::Http2
    } else {
        doh::Protocol::Http1
    })
}
