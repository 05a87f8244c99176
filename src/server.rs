//! The server: accept loops over already-bound listeners, the global
//! connection cap, one task per connection, and the drain on shutdown.
//!
//! `run` takes bound listeners and a shutdown token (the mini-redis shape),
//! so tests bind port 0, and main binds the configured addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::{self, Shared};
use crate::listener::{self, HandshakeError};
use crate::per_ip::{IpSlot, PerIp, Refusal};
use crate::stats::Stats;
use crate::tls::{self, ServerConfigs};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot open sockets toward upstream {addr}: {source}")]
    Upstream {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves DoT on `listeners` until `shutdown` is cancelled, then drains.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Loads and checks the certificate, and starts its reloader (R3, R6).
    let configs = tls::setup(&config, &shutdown)?;
    let stats = Arc::new(Stats::default());
    // The upstream pool will take the whole list; for now the first serves.
    let addr = config.upstreams[0];
    let upstream = Upstream::new(addr, config.timeouts.upstream, stats.clone())
        .await
        .map_err(|source| ServeError::Upstream { addr, source })?;
    let shared = Arc::new(Shared {
        upstream,
        stats: stats.clone(),
        timeouts: config.timeouts,
        max_inflight: config.limits.max_inflight,
        max_queries: config.limits.max_queries_per_connection,
        max_age: config.limits.max_connection_age,
    });
    let slots = Arc::new(Semaphore::new(config.limits.max_connections));
    let per_ip = PerIp::new(
        config.limits.max_connections_per_ip,
        config.limits.max_handshakes_per_ip_per_sec,
        std::time::Instant::now(),
    );
    let tracker = TaskTracker::new();
    for listener in listeners {
        if let Ok(local) = listener.local_addr() {
            tracing::info!(listen = %local, upstream = %addr, "serving DNS over TLS");
        }
        let accept = AcceptLoop {
            listener,
            slots: slots.clone(),
            per_ip: per_ip.clone(),
            configs: configs.clone(),
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(accept.run());
    }
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
}

/// Pause after an accept error (such as running out of file descriptors),
/// doubling up to the maximum, so the loop does not spin.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl AcceptLoop {
    async fn run(self) {
        let mut backoff = ACCEPT_BACKOFF_START;
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => {
                    backoff = ACCEPT_BACKOFF_START;
                    pair
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; pausing {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let stats = &self.shared.stats;
            let Ok(global) = self.slots.clone().try_acquire_owned() else {
                stats.count(&stats.refused_over_capacity);
                tracing::debug!(%peer, "over --max-connections: closed");
                drop(tcp);
                continue;
            };
            let ip = match self.per_ip.admit(peer.ip(), std::time::Instant::now()) {
                Ok(ip) => ip,
                Err(refusal) => {
                    let counter = match refusal {
                        Refusal::TooManyConnections => &stats.refused_per_ip,
                        Refusal::HandshakeRate => &stats.refused_handshake_rate,
                    };
                    stats.count(counter);
                    tracing::debug!(%peer, ?refusal, "over a per-address limit: closed");
                    drop(tcp);
                    continue;
                }
            };
            let slot = Admission {
                _global: global,
                _ip: ip,
            };
            stats.count(&stats.connections_accepted);
            self.tracker.spawn(handle(
                tcp,
                peer,
                slot,
                self.configs.clone(),
                self.shared.clone(),
                self.shutdown.clone(),
            ));
        }
    }
}

/// A connection's places under the global and the per-address caps, held
/// for its whole life and released together.
struct Admission {
    _global: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// One connection's whole life, from TCP accept to close. Holds its slot of
/// the global cap until the end.
async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: Admission,
    configs: ServerConfigs,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let stats = &shared.stats;
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        result = listener::accept_tls(tcp, &configs, shared.timeouts.handshake) => result,
    };
    let tls = match handshake {
        Ok(tls) => tls,
        Err(e) => {
            match e {
                HandshakeError::Plaintext(_) => stats.count(&stats.refused_plaintext),
                _ => stats.count(&stats.handshake_failures),
            }
            tracing::debug!(%peer, error = %e, "connection refused");
            return;
        }
    };
    connection::serve(tls, peer, shared.clone(), shutdown).await;
}
