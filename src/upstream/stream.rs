//! Pooled, pipelined stream connections (plain TCP or TLS) toward one
//! upstream: the transport of `tcp://` and `tls://` upstreams.
//!
//! A few long-lived connections carry every query, many at once (RFC 7766
//! §6.2.1.1). Each query gets a random ID unused on its connection; a reply
//! is delivered only when its ID is in use and it repeats the question sent
//! (RFC 5452), so replies may come in any order.
//!
//! Invariants:
//! * one writer task per connection owns the write half and writes each
//!   framed query as one unit;
//! * a connection is marked dead under its pending-map lock, and its waiters
//!   are drained under the same lock: no query can register on a dead
//!   connection and wait forever; a drained waiter sees `Lost` and is tried
//!   once more on another (or a new) connection, within its deadline;
//! * the remote closing an idle connection is normal: it is dropped from the
//!   pool and the next query opens a new one;
//! * every query asks for edns-tcp-keepalive (RFC 7828). Once a reply
//!   advertises a timeout, the connection is closed by dotgate after it has
//!   been idle (nothing in flight) for a little less than that timeout, and
//!   no query is sent on it once it is that old: a query never crosses the
//!   upstream's idle close on the wire. A timeout of 0 retires the
//!   connection at once: no new query, closed when its last one is
//!   answered. Idleness, the timeout and retirement live under the
//!   pending-map lock, so a query registers only on a connection that will
//!   not be closed under it;
//! * a reply to the question that is malformed is counted and passed over:
//!   the query waits, until the end of its try, for a valid one;
//! * a connection that stops answering is not kept: when a query on it
//!   times out (its try's deadline passed; not a client that left) and
//!   nothing at all came back on that connection since the query was sent,
//!   the connection is retired (no new query; closed once its last one is
//!   answered or abandoned), so the next query opens a fresh one; a write
//!   that does not complete within the write timeout ends the connection
//!   (its queries go elsewhere);
//! * the plain mutexes are held for map and list operations only, never
//!   across an await; only opening a connection is serialized (by an async
//!   gate), so a burst does not open one connection per query.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::connect::{ConnectError, DialError};
use super::dot::DotTarget;
use super::ids::{Ids, Ticket};
use super::quick_ack::QuickAck;
use super::reply::{classify, Reply, UpstreamError, Verdict};
use crate::metrics::stats::Stats;
use crate::proto::dns::{self, QueryInfo};
use crate::proto::framing::FrameReader;

/// Connections per upstream at most. A second opens only when the first has
/// [`PIPELINE_DEPTH`] queries in flight.
const MAX_CONNECTIONS: usize = 8;

/// Queries in flight on one connection before another one is opened. Kept
/// modest because many servers (NSD among them) work through one TCP
/// connection's queries one at a time: with 128 queries queued on a single
/// connection, the benchmark's p99 latency was 46 ms and dotgate idled at
/// 40% of a core; spread over connections of 16, it was 6 ms at full load.
const PIPELINE_DEPTH: usize = 16;

/// Framed queries waiting for a connection's writer.
const WRITE_QUEUE: usize = 1024;

/// Largest write the writer gathers from queued queries.
const WRITE_BATCH: usize = 16 * 1024;

/// Least margin kept before an upstream's advertised keepalive timeout: the
/// upstream counts from when it sent its last reply, dotgate from when it
/// read it, and a new query takes time to arrive, so closing exactly at the
/// timeout could still cross the upstream's close.
const KEEPALIVE_MARGIN: Duration = Duration::from_millis(500);

/// Time allowed to close dotgate's side of an idle connection (TLS
/// close_notify, then FIN) before it is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Connections one query may be offered to before giving up: a connection
/// can retire between being picked and taking the query, and then another
/// is picked (or opened).
const MAX_PICKS: usize = MAX_CONNECTIONS + 4;

/// How to open a connection.
#[derive(Clone)]
pub enum Connector {
    Tcp(SocketAddr),
    /// Shared by the per-client pools of one upstream (its address cache).
    Tls(Arc<DotTarget>),
}

struct Waiter {
    question: Box<[u8]>,
    tx: oneshot::Sender<Reply>,
    /// When the query was registered, to tell a stalled connection (nothing
    /// answered since) from a slow name.
    sent: Instant,
    /// A malformed reply to the question came: if no valid one follows
    /// within the try, the query fails as a bad reply, not a timeout.
    broken: bool,
}

struct Pending {
    dead: bool,
    waiters: Ids<Waiter>,
    /// No new query may register: the upstream advertised keepalive 0, or
    /// the connection outlived its idle limit. It closes once `waiters` is
    /// empty.
    retiring: bool,
    /// How long the connection may stay idle, from the upstream's latest
    /// keepalive (less [`idle_limit`]'s margin); `None` until a reply
    /// carries one, and then the remote's idle close is simply awaited.
    idle_limit: Option<Duration>,
    /// When `waiters` last became empty (or the connection opened).
    idle_since: Instant,
    /// When the latest matching reply arrived on this connection.
    last_reply: Option<Instant>,
}

impl Pending {
    /// True once the connection has been idle for its whole idle limit.
    fn idle_expired(&self) -> bool {
        self.waiters.is_empty()
            && self
                .idle_limit
                .is_some_and(|limit| self.idle_since.elapsed() >= limit)
    }
}

struct Conn {
    pending: Mutex<Pending>,
    out: mpsc::Sender<Vec<u8>>,
    /// Mirrors `pending.dead` for lock-free checks when picking.
    dead: AtomicBool,
    /// Mirrors `pending.retiring` for lock-free checks when picking.
    retiring: AtomicBool,
    /// Set once a reply carried a keepalive timeout: until then the writer
    /// has no idle limit to watch and never takes the lock for it.
    keepalive_known: AtomicBool,
    /// Wakes the writer's idle watch: the connection became idle, learned
    /// or changed its idle limit, or retired.
    idle_changed: Notify,
    inflight: AtomicUsize,
    /// Order of opening within the pool: a query resent after a lost
    /// connection only goes to a connection opened after the loss.
    generation: u64,
    /// The pool's next generation when this connection died (set under the
    /// pending lock before its waiters are failed; [`UNKNOWN`] until then):
    /// the queries it took down go to connections of this generation or
    /// later, however late each of them notices the loss.
    lost_at: AtomicU64,
}

/// `lost_at` of a connection not yet dead.
const UNKNOWN: u64 = u64::MAX;

impl Conn {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Every operation under this lock is a single map or flag update.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Open and taking new queries.
    fn is_usable(&self) -> bool {
        !self.is_dead() && !self.retiring.load(Ordering::Relaxed)
    }

    /// Under the pending lock: no query registers on this connection any
    /// more; the writer closes it once it is idle.
    fn retire(&self, pending: &mut Pending) {
        pending.retiring = true;
        self.retiring.store(true, Ordering::Relaxed);
        self.idle_changed.notify_one();
    }

    /// Under the pending lock, after a waiter was removed: starts the idle
    /// clock when it was the last one, and wakes the idle watch when there
    /// is one.
    fn removed(&self, pending: &mut Pending) {
        if pending.waiters.is_empty() {
            pending.idle_since = Instant::now();
            if pending.idle_limit.is_some() || pending.retiring {
                self.idle_changed.notify_one();
            }
        }
    }

    /// Under the pending lock: applies a keepalive timeout (100 ms units)
    /// read from a reply on this connection.
    fn learn_keepalive(&self, pending: &mut Pending, units: u16) {
        let limit = idle_limit(units);
        if pending.idle_limit != Some(limit) {
            tracing::debug!(timeout = ?limit, "upstream advertised edns-tcp-keepalive");
            pending.idle_limit = Some(limit);
            self.keepalive_known.store(true, Ordering::Relaxed);
            self.idle_changed.notify_one();
        }
        if units == 0 && !pending.retiring {
            tracing::debug!("upstream advertised keepalive 0: retiring the connection");
            self.retire(pending);
        }
    }

    /// What the idle watch should do now.
    fn idle_state(&self) -> Idle {
        if !self.keepalive_known.load(Ordering::Relaxed) && !self.retiring.load(Ordering::Relaxed) {
            return Idle::Wait(None);
        }
        let mut pending = self.pending();
        if !pending.waiters.is_empty() {
            return Idle::Wait(None);
        }
        if pending.retiring {
            return Idle::Close;
        }
        let Some(limit) = pending.idle_limit else {
            return Idle::Wait(None);
        };
        let idle = pending.idle_since.elapsed();
        if idle >= limit {
            self.retire(&mut pending);
            return Idle::Close;
        }
        Idle::Wait(Some(limit - idle))
    }

    /// Marks the connection dead and fails every waiter (their senders are
    /// dropped, which their queries see as [`SendError::Lost`]), noting the pool's
    /// `next_generation` for where they go next. Returns how many queries
    /// were in flight.
    fn kill(&self, next_generation: u64) -> usize {
        let drained: Vec<Waiter> = {
            let mut pending = self.pending();
            self.lost_at.store(next_generation, Ordering::Relaxed);
            pending.dead = true;
            self.dead.store(true, Ordering::Relaxed);
            pending.waiters.drain().collect()
        };
        drained.len()
    }
}

/// Why a query got no reply on a connection.
enum SendError {
    /// The try's deadline passed; `broken` when only malformed replies came.
    Expired { broken: bool },
    /// The connection died with this query in flight: retryable elsewhere.
    Lost,
    /// The connection retired before the query was registered: it was never
    /// sent, so it goes to another connection without counting as lost.
    Retired,
}

/// What a connection's idle watch should do.
enum Idle {
    /// Close the connection: idle and retired.
    Close,
    /// Look again after this long, or when woken.
    Wait(Option<Duration>),
}

/// The idle limit for an advertised keepalive of `units` × 100 ms: the
/// timeout less a tenth of it, and at least [`KEEPALIVE_MARGIN`] less,
/// never below zero.
fn idle_limit(units: u16) -> Duration {
    let advertised = Duration::from_millis(u64::from(units) * 100);
    advertised.saturating_sub((advertised / 10).max(KEEPALIVE_MARGIN))
}

/// The pooled connections toward one upstream.
pub struct StreamPool {
    connector: Connector,
    /// Written first on every new connection, before TLS: the PROXY header
    /// of the client this pool serves (`--upstream-proxy-protocol`), or
    /// nothing.
    prelude: Box<[u8]>,
    /// Longest a write to the upstream may take before the connection is
    /// given up: the upstream timeout, after which its queries failed anyway.
    write_timeout: Duration,
    conns: Mutex<Vec<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    stats: Arc<Stats>,
    /// Ends every connection task when the pool is dropped.
    stop: CancellationToken,
    /// Generation of the next connection opened (shared with the
    /// connection tasks, which note it when their connection dies).
    generations: Arc<AtomicU64>,
}

impl Drop for StreamPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StreamPool {
    pub fn new(connector: Connector, stats: Arc<Stats>, write_timeout: Duration) -> Self {
        Self::with_prelude(connector, Box::default(), stats, write_timeout)
    }

    /// As [`StreamPool::new`], writing `prelude` (a PROXY header) first on
    /// every connection it opens.
    pub fn with_prelude(
        connector: Connector,
        prelude: Box<[u8]>,
        stats: Arc<Stats>,
        write_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            prelude,
            write_timeout,
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            stats,
            stop: CancellationToken::new(),
            generations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Open connections right now (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns().iter().filter(|c| !c.is_dead()).count()
    }

    fn conns(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one query and waits for its reply until `deadline`, the end of
    /// the try. A query whose connection dies is sent once more on another
    /// connection; one whose connection retired before taking it goes to
    /// another without counting as a loss.
    pub async fn exchange(
        &self,
        msg: &[u8],
        info: &QueryInfo,
        subnet: Option<&[u8]>,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, UpstreamError> {
        // Built once, and moved into the first try: a second try (rare)
        // builds its own copy.
        let mut first = Some(dns::stream_query(msg, info, subnet));
        let question = &msg[info.question.clone()];
        let mut lost = false;
        // After a loss, only connections opened from then on: when an
        // upstream resets every connection at once, the others are just as
        // dead but may not have noticed yet.
        let mut newer_than = 0;
        for _ in 0..MAX_PICKS {
            let conn = self.connection(newer_than).await?;
            let out = first
                .take()
                .unwrap_or_else(|| dns::stream_query(msg, info, subnet));
            match send(&conn, out, question, deadline).await {
                Ok(reply) => return Ok(reply),
                Err(SendError::Expired { broken: true }) => return Err(UpstreamError::BadReply),
                Err(SendError::Expired { broken: false }) => return Err(UpstreamError::Timeout),
                Err(SendError::Retired) => {}
                Err(SendError::Lost) if !lost => {
                    lost = true;
                    // Connections opened since the loss, including those
                    // other lost queries opened before this one woke: not
                    // one new connection per lost query.
                    newer_than = match conn.lost_at.load(Ordering::Relaxed) {
                        // The writer's queue closed just before the
                        // connection was marked dead.
                        UNKNOWN => self.generations.load(Ordering::Relaxed),
                        at => at,
                    };
                    tracing::debug!("upstream connection lost with a query in flight: resending");
                }
                Err(SendError::Lost) => return Err(UpstreamError::Closed),
            }
        }
        Err(UpstreamError::Closed)
    }

    /// The least loaded usable connection, unless all are at the pipeline
    /// depth and another may be opened. Retiring connections (finishing
    /// their last queries) take nothing new and do not count toward
    /// [`MAX_CONNECTIONS`].
    fn pick(&self, newer_than: u64) -> Option<Arc<Conn>> {
        let mut conns = self.conns();
        conns.retain(|c| !c.is_dead());
        let usable = conns
            .iter()
            .filter(|c| c.is_usable() && c.generation >= newer_than);
        let best = usable
            .clone()
            .min_by_key(|c| c.inflight.load(Ordering::Relaxed))?;
        if best.inflight.load(Ordering::Relaxed) < PIPELINE_DEPTH
            || usable.count() >= MAX_CONNECTIONS
        {
            Some(best.clone())
        } else {
            None
        }
    }

    /// A connection of generation `newer_than` or later, opened if need be.
    async fn connection(&self, newer_than: u64) -> Result<Arc<Conn>, UpstreamError> {
        if let Some(conn) = self.pick(newer_than) {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        // Another query may have opened one while this one waited.
        if let Some(conn) = self.pick(newer_than) {
            return Ok(conn);
        }
        let conn = match &self.connector {
            Connector::Tcp(addr) => {
                let mut stream = tokio::net::TcpStream::connect(*addr)
                    .await
                    .map_err(|source| {
                        UpstreamError::Connect(ConnectError::Dial(DialError::Connect {
                            addr: *addr,
                            source,
                        }))
                    })?;
                stream.set_nodelay(true)?;
                if !self.prelude.is_empty() {
                    stream.write_all(&self.prelude).await?;
                }
                self.spawn(QuickAck(stream))
            }
            Connector::Tls(target) => self.spawn(target.connect(&self.prelude).await?),
        };
        self.conns().push(conn.clone());
        Ok(conn)
    }

    fn spawn<S>(&self, stream: S) -> Arc<Conn>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn {
            pending: Mutex::new(Pending {
                dead: false,
                waiters: Ids::default(),
                retiring: false,
                idle_limit: None,
                idle_since: Instant::now(),
                last_reply: None,
            }),
            out: tx,
            dead: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            keepalive_known: AtomicBool::new(false),
            idle_changed: Notify::new(),
            inflight: AtomicUsize::new(0),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            lost_at: AtomicU64::new(UNKNOWN),
        });
        tokio::spawn(run(
            stream,
            conn.clone(),
            rx,
            self.stats.clone(),
            self.stop.child_token(),
            self.write_timeout,
            self.generations.clone(),
        ));
        conn
    }
}

/// Registers a waiter under a fresh ID, queues the framed query and waits
/// until `deadline`. A connection that is retiring, or idle past its limit
/// (and so about to be closed by either side), takes no new query.
async fn send(
    conn: &Arc<Conn>,
    mut out: Vec<u8>,
    question: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Reply, SendError> {
    let (tx, rx) = oneshot::channel();
    let ticket = {
        let mut pending = conn.pending();
        if pending.dead {
            return Err(SendError::Lost);
        }
        if pending.idle_expired() {
            conn.retire(&mut pending);
        }
        if pending.retiring {
            return Err(SendError::Retired);
        }
        let waiter = Waiter {
            question: question.into(),
            tx,
            sent: Instant::now(),
            broken: false,
        };
        // Every ID in use: as if the connection were lost, tried elsewhere.
        pending.waiters.insert(waiter).ok_or(SendError::Lost)?
    };
    conn.inflight.fetch_add(1, Ordering::Relaxed);
    let mut guard = WaiterGuard {
        conn,
        ticket,
        timed_out: false,
    };
    // The ID sits after the 2-byte length prefix.
    dns::set_id(&mut out[2..], ticket.id);
    let wait = async {
        conn.out.send(out).await.map_err(|_| SendError::Lost)?;
        rx.await.map_err(|_| SendError::Lost)
    };
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(result) => result,
        Err(_) => {
            guard.timed_out = true;
            let broken = conn
                .pending()
                .waiters
                .get_ticket(ticket)
                .is_some_and(|w| w.broken);
            Err(SendError::Expired { broken })
        }
    }
}

/// Counts a query in flight on its connection and removes its waiter when
/// the query is abandoned (its try timed out, its client left), never a
/// later one. Only a timed-out try can retire a stalled connection: a client
/// that leaves says nothing about the upstream, and a connection retired
/// for it would be replaced by a new one (retiring ones do not count toward
/// [`MAX_CONNECTIONS`]), so a client that pipelines and hangs up, again and
/// again, would churn the connections every other client shares.
struct WaiterGuard<'a> {
    conn: &'a Conn,
    ticket: Ticket,
    /// Set when the try's deadline passed with the query still waiting.
    timed_out: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.conn.inflight.fetch_sub(1, Ordering::Relaxed);
        let mut pending = self.conn.pending();
        if let Some(Waiter { sent, .. }) = pending.waiters.remove_ticket(self.ticket) {
            // Nothing at all came back on this connection since the query
            // went out: it is stalled or black-holed, not just slow on a name.
            let stalled = pending.last_reply.is_none_or(|at| at < sent);
            if self.timed_out && stalled && !pending.retiring && !pending.dead {
                tracing::debug!(
                    "no reply on an upstream connection since an abandoned query: retiring it"
                );
                self.conn.retire(&mut pending);
            }
            self.conn.removed(&mut pending);
        }
    }
}

/// One connection's reader and writer, until either ends, the remote closes,
/// the connection is idle past its keepalive limit (or retired and idle), or
/// the pool is dropped; then every waiter is failed over.
async fn run<S>(
    stream: S,
    conn: Arc<Conn>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    write_timeout: Duration,
    generations: Arc<AtomicU64>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let reader = async {
        let mut frames = FrameReader::new(read_half);
        loop {
            match frames.read_frame().await {
                Ok(Some(frame)) => deliver(&conn, &frame, &stats),
                Ok(None) => {
                    tracing::debug!("upstream closed the connection");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upstream connection failed");
                    return;
                }
            }
        }
    };
    let writer = async {
        let mut batch = Vec::new();
        loop {
            let first = tokio::select! {
                // Queued queries first. The idle watch closes only with no
                // waiter registered, so what is still queued then belongs to
                // abandoned queries.
                biased;
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => return,
                },
                () = idle_watch(&conn) => {
                    // Nothing in flight and nothing may register: close
                    // dotgate's side cleanly (close_notify and FIN on TLS).
                    tracing::debug!("closing an idle upstream connection before its keepalive timeout");
                    let _ = tokio::time::timeout(CLOSE_WAIT, write_half.shutdown()).await;
                    return;
                }
            };
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.extend_from_slice(&next),
                    Err(_) => break,
                }
            }
            let written = async {
                write_half.write_all(&batch).await?;
                write_half.flush().await
            };
            match tokio::time::timeout(write_timeout, written).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot write to the upstream");
                    return;
                }
                Err(_) => {
                    tracing::debug!(timeout = ?write_timeout, "upstream not reading: giving the connection up");
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = stop.cancelled() => {}
    }
    // Counted once per connection, however many queries it took down.
    if conn.kill(generations.load(Ordering::Relaxed)) > 0 {
        stats.upstream_connections_lost.inc();
    }
}

/// Returns once the connection should be closed: retired or idle past its
/// keepalive limit, with nothing in flight. Pending forever on a connection
/// whose upstream never advertised keepalive.
async fn idle_watch(conn: &Conn) {
    loop {
        match conn.idle_state() {
            Idle::Close => return,
            Idle::Wait(None) => conn.idle_changed.notified().await,
            Idle::Wait(Some(left)) => {
                let _ = tokio::time::timeout(left, conn.idle_changed.notified()).await;
            }
        }
    }
}

/// Hands a reply to its waiter; a matched reply's keepalive option sets the
/// connection's idle limit.
fn deliver(conn: &Conn, reply: &[u8], stats: &Stats) {
    if reply.len() < dns::HEADER_LEN {
        stats.mismatched_replies.inc();
        return;
    }
    let id = dns::id(reply);
    // Read before taking the lock; applied only if the reply matches.
    let keepalive = dns::reply_keepalive(reply);
    let waiter = {
        let mut pending = conn.pending();
        let Some(waiter) = pending.waiters.get_mut(id) else {
            drop(pending);
            stats.mismatched_replies.inc();
            return;
        };
        let delivered = match classify(reply, &waiter.question) {
            Verdict::Reply(result) => pending.waiters.remove(id).map(|w| (w, result)),
            Verdict::Broken => {
                // Not delivered: the query waits on for a valid reply. The
                // connection is alive all the same.
                waiter.broken = true;
                pending.last_reply = Some(Instant::now());
                drop(pending);
                stats.upstream_bad_replies.inc();
                return;
            }
            Verdict::Mismatch => None,
        };
        if delivered.is_some() {
            pending.last_reply = Some(Instant::now());
            if let Some(units) = keepalive {
                conn.learn_keepalive(&mut pending, units);
            }
            conn.removed(&mut pending);
        }
        delivered
    };
    match waiter {
        // The receiver may have given up (timeout): nothing to do.
        Some((waiter, result)) => {
            let _ = waiter.tx.send(result);
        }
        None => stats.mismatched_replies.inc(),
    }
}
