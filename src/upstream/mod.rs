//! The upstream pool: several resolvers, a policy choosing among the healthy
//! ones, health checks, and failover inside one query.
//!
//! This layer answers one question: "what did an upstream say to this
//! query, within the upstream timeout?". Turning that into the client's
//! reply (ID, OPT, SERVFAIL) is the connection's job.
//!
//! One module per transport: `udp` (shared sockets, random IDs, TCP on TC
//! through `tcp`), `stream` (pooled, pipelined TCP or TLS connections),
//! `dot` (where a DoT upstream is and how it is verified), with
//! `connect` opening the connections; `reply` is what one exchange gives,
//! `ids` hands out the random query IDs of both, `health` keeps the
//! up/down state and `policy` picks an upstream.
//!
//! Failover: when another upstream is up, the first try gets only
//! [`TRY_FRACTION`] of the upstream timeout; if it fails or times out, the
//! query is sent once to another healthy upstream (never the same one) for
//! the time left. With every upstream marked down, queries are still sent,
//! to all of them by the policy ("panic mode", see `policy::choose`): a
//! health verdict may be wrong, and a query that is sent may be answered.

mod connect;
mod dot;
mod health;
mod ids;
mod origin;
mod per_client;
mod policy;
mod quick_ack;
mod reply;
mod stream;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

pub use connect::{resolve_via, ConnectError};
pub use origin::{Origin, ProxyClient};
pub use per_client::MAX_CLIENTS as MAX_PROXIED_CLIENTS;
pub use policy::Policy;
pub use reply::{Reply, UpstreamError};

use crate::config::{ClientToUpstream, PoolSettings, UpstreamSpec};
use crate::metrics::stats::{Stats, UpstreamCounters};
use crate::proto::dns::{self, QueryInfo};
use crate::tls::client::{self, Trust, TrustError};
use health::Health;
use per_client::PerClient;
use stream::{Connector, StreamPool};

/// Share of the upstream timeout the first try gets when a failover is
/// possible: half, so the second upstream has as long as the first.
pub const TRY_FRACTION: f64 = 0.5;

/// Why the pool cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot open sockets toward upstream {addr}: {source}")]
    Udp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("trust anchors for tls:// upstreams: {0}")]
    Trust(#[from] TrustError),
}

enum Transport {
    /// UDP, and TCP when the answer is truncated (R19): over pooled,
    /// pipelined connections (`tc`, opened on the first truncated answer),
    /// or, with PROXY toward the upstream (one client per connection), a
    /// one-shot connection.
    Plain {
        addr: SocketAddr,
        udp: udp::UdpTransport,
        tc: StreamPool,
    },
    /// `tcp://` and `tls://`: pooled pipelined connections.
    Stream(StreamPool),
    /// `tcp://` and `tls://` with `--upstream-proxy-protocol`: a pool per
    /// client, as a PROXY header names one client per connection.
    PerClient(PerClient),
}

/// One upstream of the pool.
struct Member {
    /// As written on the command line, for logs and metrics.
    name: String,
    transport: Transport,
    health: Health,
    /// Queries in flight; kept only under `least-outstanding`, so the other
    /// policies pay no shared write per query.
    outstanding: AtomicUsize,
    /// This upstream's metrics: queries by transport, up/down.
    counters: UpstreamCounters,
}

impl policy::Candidate for Member {
    fn is_up(&self) -> bool {
        self.health.is_up()
    }
    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

impl Member {
    /// One exchange, sent at `sent`, waiting for the reply until `deadline`
    /// (the end of the try), which the transports see so that they can tell
    /// a try that timed out from a caller that went away. `sent` is read
    /// once by the caller and reused here (for UDP's resend, and for health):
    /// the clock is read as few times per query as can be. Bounded by
    /// `deadline` as a whole:
    /// UDP ends its own wait there (one timer per query, not two), and what
    /// else can take time (the TCP retry after a truncated answer,
    /// connecting a stream) is bounded here.
    async fn exchange(
        &self,
        msg: &[u8],
        info: &QueryInfo,
        origin: &Origin,
        stats: &Stats,
        sent: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, UpstreamError> {
        match &self.transport {
            Transport::Plain { addr, udp, tc } => {
                self.counters.udp.inc();
                let start = tokio::time::Instant::from_std(sent);
                match udp.exchange(msg, info, origin, start, deadline).await? {
                    Reply::Message(m) if dns::is_truncated(&m) => {
                        // The upstream answered: a TCP retry that fails (a
                        // resolver that refuses TCP) is not its being down.
                        self.health.success(&self.name, sent);
                        stats.tc_fallbacks.inc();
                        self.counters.tcp.inc();
                        // Boxed: rare, and its state would size every
                        // query's future.
                        Box::pin(retry_truncated(
                            *addr, tc, msg, info, origin, stats, deadline,
                        ))
                        .await
                    }
                    other => Ok(other),
                }
            }
            Transport::Stream(pool) => {
                self.counters.tcp.inc();
                // Boxed with its timer, as below: a stream's state is about
                // 2 KiB, which would size every query's future, UDP's too.
                let exchange = pool.exchange(msg, info, origin.subnet(), deadline);
                bounded(Box::pin(tokio::time::timeout_at(deadline, exchange)).await)
            }
            Transport::PerClient(pools) => {
                self.counters.tcp.inc();
                let exchange = pools.exchange(msg, info, origin, deadline);
                bounded(Box::pin(tokio::time::timeout_at(deadline, exchange)).await)
            }
        }
    }

    /// Copies the health state to the `dotgate_upstream_up` gauge.
    fn publish_health(&self) {
        self.counters.up.set(i64::from(self.health.is_up()));
    }
}

struct Inner {
    members: Vec<Member>,
    policy: Policy,
    next: AtomicUsize,
    timeout: Duration,
    try_timeout: Duration,
    stats: Arc<Stats>,
    /// What health probes tell the upstream: a LOCAL PROXY header when
    /// PROXY is on.
    own: Origin,
}

/// Every upstream resolver, with their health and the policy. Probe tasks
/// stop when the pool is dropped.
pub struct Pool {
    inner: Arc<Inner>,
    probes: Vec<JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for task in &self.probes {
            task.abort();
        }
    }
}

impl Pool {
    /// Opens the UDP sockets of the plain upstreams and starts one probe
    /// task per upstream. Stream connections open on first use. Must run
    /// inside a tokio runtime.
    pub async fn new(
        specs: &[UpstreamSpec],
        settings: &PoolSettings,
        tell: &ClientToUpstream,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Result<Self, PoolError> {
        let stream = |connector: Connector| {
            if tell.proxy_protocol {
                Transport::PerClient(PerClient::new(connector, stats.clone(), timeout))
            } else {
                Transport::Stream(StreamPool::new(connector, stats.clone(), timeout))
            }
        };
        // The shortest time a try may get (with a failover possible).
        let try_timeout = timeout.mul_f64(TRY_FRACTION);
        // Built once, for the first tls:// upstream, and shared by all.
        let mut tls_config = None;
        let mut members = Vec::with_capacity(specs.len());
        for spec in specs {
            let transport = match spec {
                UpstreamSpec::Plain(addr) => Transport::Plain {
                    addr: *addr,
                    tc: StreamPool::new(Connector::Tcp(*addr), stats.clone(), timeout),
                    udp: udp::UdpTransport::new(*addr, stats.clone(), try_timeout)
                        .await
                        .map_err(|source| PoolError::Udp {
                            addr: *addr,
                            source,
                        })?,
                },
                UpstreamSpec::Tcp(addr) => stream(Connector::Tcp(*addr)),
                UpstreamSpec::Tls { name, ip, port } => {
                    let config = match &tls_config {
                        Some(config) => Arc::clone(config),
                        None => {
                            let trust = match &settings.ca {
                                Some(path) => Trust::Ca(path.clone()),
                                None => Trust::System,
                            };
                            let config = client::client_config(&trust)?;
                            tls_config = Some(config.clone());
                            config
                        }
                    };
                    let target =
                        dot::DotTarget::new(name.clone(), *ip, *port, settings.bootstrap, config);
                    stream(Connector::Tls(Arc::new(target)))
                }
            };
            let name = spec.to_string();
            let counters = stats.upstream(&name);
            let member = Member {
                name,
                transport,
                health: Health::default(),
                outstanding: AtomicUsize::new(0),
                counters,
            };
            member.publish_health();
            members.push(member);
        }
        let inner = Arc::new(Inner {
            members,
            policy: settings.policy,
            next: AtomicUsize::new(0),
            timeout,
            try_timeout,
            stats,
            own: Origin::own(tell),
        });
        let probe_timeout = health::probe_timeout(settings.health_interval, inner.try_timeout);
        let probes = (0..inner.members.len())
            .map(|index| {
                tokio::spawn(probe_loop(
                    inner.clone(),
                    index,
                    settings.health_interval,
                    probe_timeout,
                ))
            })
            .collect();
        Ok(Self { inner, probes })
    }

    /// Each upstream as written on the command line, and whether it is up:
    /// for a per-upstream gauge.
    pub fn states(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.inner
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.health.is_up()))
    }

    /// Open stream connections per upstream (for plain ones, those kept for
    /// truncated answers).
    pub fn connections(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.inner.members.iter().map(|m| {
            let open = match &m.transport {
                Transport::Stream(pool) | Transport::Plain { tc: pool, .. } => pool.connections(),
                Transport::PerClient(pools) => pools.connections(),
            };
            (m.name.as_str(), open)
        })
    }

    /// Asks an upstream the client's query `msg` (described by `info`),
    /// failing over once to another healthy upstream, all within the
    /// upstream timeout counted from `started` (the caller's reading of the
    /// clock as it asks: one reading serves the deadline, the resend timer
    /// and health); `origin` is what the upstream is told of the client.
    pub async fn exchange(
        &self,
        msg: &[u8],
        info: &QueryInfo,
        origin: &Origin,
        started: Instant,
    ) -> Result<Reply, UpstreamError> {
        let inner = &*self.inner;
        let Some(first) = policy::choose(inner.policy, &inner.members, &inner.next, None) else {
            return Err(UpstreamError::Closed);
        };
        if !inner.members[first].health.is_up() {
            // Every upstream is marked down: sent anyway (panic mode).
            inner.stats.upstream_all_down.inc();
        }
        let budget = if policy::has_alternative(&inner.members, first) {
            inner.try_timeout
        } else {
            inner.timeout
        };
        let error = match inner
            .attempt(first, msg, info, origin, started, budget)
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        // The runtime's clock, as the caller's `started` (driven in tests).
        let now = tokio::time::Instant::now().into_std();
        let left = inner
            .timeout
            .saturating_sub(now.saturating_duration_since(started));
        let second = policy::choose(inner.policy, &inner.members, &inner.next, Some(first));
        match second {
            Some(second) if !left.is_zero() => {
                inner.stats.upstream_failovers.inc();
                tracing::debug!(
                    from = %inner.members[first].name,
                    to = %inner.members[second].name,
                    %error,
                    "failing over"
                );
                inner.attempt(second, msg, info, origin, now, left).await
            }
            _ => Err(error),
        }
    }
}

impl Inner {
    /// One try on one upstream, sent at `sent`, under `budget`, feeding its
    /// health.
    async fn attempt(
        &self,
        index: usize,
        msg: &[u8],
        info: &QueryInfo,
        origin: &Origin,
        sent: Instant,
        budget: Duration,
    ) -> Result<Reply, UpstreamError> {
        let member = &self.members[index];
        let _outstanding = (self.policy == Policy::LeastOutstanding)
            .then(|| OutstandingGuard::new(&member.outstanding));
        let deadline = tokio::time::Instant::from_std(sent) + budget;
        let result = member
            .exchange(msg, info, origin, &self.stats, sent, deadline)
            .await;
        match result {
            Ok(reply) => {
                // The gauge is written only on a change: no shared write
                // per answered query.
                let was_up = member.health.is_up();
                member.health.success(&member.name, sent);
                if !was_up {
                    member.publish_health();
                }
                Ok(reply)
            }
            Err(UpstreamError::Timeout) => {
                self.stats.upstream_timeouts.inc();
                let e = UpstreamError::Timeout;
                if member.health.failure(&member.name, &e, false, sent) {
                    member.publish_health();
                }
                Err(e)
            }
            Err(e) => {
                if !e.is_local() {
                    member
                        .health
                        .failure(&member.name, &e, e.is_definitive(), sent);
                    member.publish_health();
                }
                Err(e)
            }
        }
    }
}

/// Asks the query of a truncated UDP answer again over TCP (R19), until
/// `deadline`: on the kept connections of `pool`, or, with a PROXY header
/// toward the upstream (which names one client per connection), on a
/// connection of its own. A connection per retry (the handshake, the close
/// and seven system calls) cost 4.9% of DoT's queries per core in the
/// benchmark, where 2% of answers are truncated.
async fn retry_truncated(
    addr: SocketAddr,
    pool: &StreamPool,
    msg: &[u8],
    info: &QueryInfo,
    origin: &Origin,
    stats: &Stats,
    deadline: tokio::time::Instant,
) -> Result<Reply, UpstreamError> {
    if origin.has_proxy() {
        let retry = tcp::exchange(addr, msg, info, origin, stats);
        bounded(tokio::time::timeout_at(deadline, retry).await)
    } else {
        let retry = pool.exchange(msg, info, origin.subnet(), deadline);
        bounded(tokio::time::timeout_at(deadline, retry).await).map_err(UpstreamError::after_answer)
    }
}

/// The result of an exchange bounded by its try's deadline:
/// [`UpstreamError::Timeout`] past it. The transports that see the
/// deadline end their wait at it themselves and are polled first, so they
/// report the timeout.
fn bounded(
    result: Result<Result<Reply, UpstreamError>, tokio::time::error::Elapsed>,
) -> Result<Reply, UpstreamError> {
    result.unwrap_or(Err(UpstreamError::Timeout))
}

struct OutstandingGuard<'a>(&'a AtomicUsize);

impl<'a> OutstandingGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for OutstandingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Probes one upstream every `interval` (the first after one interval, so a
/// fresh start does not wait on probes). A failed probe marks it down at
/// once, unless the upstream answered real queries meanwhile; an answered
/// one brings it back.
async fn probe_loop(inner: Arc<Inner>, index: usize, interval: Duration, limit: Duration) {
    let info = health::probe_info();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let member = &inner.members[index];
        let sent = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let result = tokio::time::timeout_at(
            deadline,
            member.exchange(
                &health::PROBE,
                &info,
                &inner.own,
                &inner.stats,
                sent,
                deadline,
            ),
        )
        .await;
        let failed = match result {
            Ok(Ok(_)) => {
                member.health.success(&member.name, sent);
                // An answered probe shows the upstream leg works: /readyz.
                inner.stats.note_upstream_answer(Instant::now());
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(UpstreamError::Timeout),
        };
        // A lost probe while real queries are being answered says nothing.
        if let Some(e) = failed.filter(|_| !member.health.answered_since(sent)) {
            member.health.failure(&member.name, &e, true, sent);
        }
        member.publish_health();
    }
}
