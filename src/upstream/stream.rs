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
//! * the plain mutexes are held for map and list operations only, never
//!   across an await; only opening a connection is serialized (by an async
//!   gate), so a burst does not open one connection per query.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{classify, dot::DotTarget, Reply, UpstreamError};
use crate::dns::{self, QueryInfo};
use crate::framing::FrameReader;
use crate::stats::Stats;

/// Connections per upstream at most. Pipelining makes one enough for most
/// loads; a second opens only when the first has [`PIPELINE_DEPTH`] queries
/// in flight.
const MAX_CONNECTIONS: usize = 4;

/// Queries in flight on one connection before another one is opened.
const PIPELINE_DEPTH: usize = 256;

/// Framed queries waiting for a connection's writer.
const WRITE_QUEUE: usize = 1024;

/// Largest write the writer gathers from queued queries.
const WRITE_BATCH: usize = 16 * 1024;

/// How to open a connection.
pub enum Connector {
    Tcp(SocketAddr),
    Tls(DotTarget),
}

struct Waiter {
    seq: u64,
    question: Box<[u8]>,
    tx: oneshot::Sender<Reply>,
}

struct Pending {
    dead: bool,
    waiters: HashMap<u16, Waiter>,
}

struct Conn {
    pending: Mutex<Pending>,
    out: mpsc::Sender<Vec<u8>>,
    /// Mirrors `pending.dead` for lock-free checks when picking.
    dead: AtomicBool,
    inflight: AtomicUsize,
    next_seq: AtomicU64,
}

impl Conn {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Every operation under this lock is a single map or flag update.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Marks the connection dead and fails every waiter (their senders are
    /// dropped, which their queries see as [`Lost`]).
    fn kill(&self) {
        let drained: Vec<Waiter> = {
            let mut pending = self.pending();
            pending.dead = true;
            self.dead.store(true, Ordering::Relaxed);
            pending.waiters.drain().map(|(_, w)| w).collect()
        };
        drop(drained);
    }
}

/// The connection died with this query in flight: retryable elsewhere.
struct Lost;

/// The pooled connections toward one upstream.
pub struct StreamPool {
    connector: Connector,
    conns: Mutex<Vec<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    stats: Arc<Stats>,
    /// Ends every connection task when the pool is dropped.
    stop: CancellationToken,
}

impl Drop for StreamPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StreamPool {
    pub fn new(connector: Connector, stats: Arc<Stats>) -> Self {
        Self {
            connector,
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            stats,
            stop: CancellationToken::new(),
        }
    }

    /// Open connections right now (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns().iter().filter(|c| !c.is_dead()).count()
    }

    fn conns(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one query and waits for its reply (no timeout here: the pool
    /// bounds each try). A query whose connection dies is sent once more on
    /// another connection.
    pub async fn exchange(&self, msg: &[u8], info: &QueryInfo) -> Result<Reply, UpstreamError> {
        let out = dns::frame(&dns::upstream_query(msg, info, 0));
        let question = &msg[info.question.clone()];
        let mut lost = false;
        loop {
            let conn = self.connection().await?;
            match send(&conn, out.clone(), question).await {
                Ok(reply) => return Ok(reply),
                Err(Lost) if !lost => {
                    lost = true;
                    self.stats.count(&self.stats.upstream_connections_lost);
                    tracing::debug!("upstream connection lost with a query in flight: resending");
                }
                Err(Lost) => return Err(UpstreamError::Closed),
            }
        }
    }

    /// The least loaded live connection, unless all are at the pipeline
    /// depth and another may be opened.
    fn pick(&self) -> Option<Arc<Conn>> {
        let mut conns = self.conns();
        conns.retain(|c| !c.is_dead());
        let best = conns
            .iter()
            .min_by_key(|c| c.inflight.load(Ordering::Relaxed))?;
        if best.inflight.load(Ordering::Relaxed) < PIPELINE_DEPTH || conns.len() >= MAX_CONNECTIONS
        {
            Some(best.clone())
        } else {
            None
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, UpstreamError> {
        if let Some(conn) = self.pick() {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        // Another query may have opened one while this one waited.
        if let Some(conn) = self.pick() {
            return Ok(conn);
        }
        let conn = match &self.connector {
            Connector::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(*addr)
                    .await
                    .map_err(|source| {
                        UpstreamError::Connect(crate::client::ClientError::Connect {
                            addr: *addr,
                            source,
                        })
                    })?;
                stream.set_nodelay(true)?;
                self.spawn(stream)
            }
            Connector::Tls(target) => self.spawn(target.connect().await?),
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
                waiters: HashMap::new(),
            }),
            out: tx,
            dead: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
        });
        tokio::spawn(run(
            stream,
            conn.clone(),
            rx,
            self.stats.clone(),
            self.stop.child_token(),
        ));
        conn
    }
}

/// Registers a waiter under a fresh ID, queues the framed query and waits.
async fn send(conn: &Arc<Conn>, mut out: Vec<u8>, question: &[u8]) -> Result<Reply, Lost> {
    let (tx, rx) = oneshot::channel();
    let seq = conn.next_seq.fetch_add(1, Ordering::Relaxed);
    let id = {
        let mut pending = conn.pending();
        if pending.dead || pending.waiters.len() >= usize::from(u16::MAX) {
            return Err(Lost);
        }
        loop {
            let id: u16 = rand::random();
            if let Entry::Vacant(slot) = pending.waiters.entry(id) {
                slot.insert(Waiter {
                    seq,
                    question: question.into(),
                    tx,
                });
                break id;
            }
        }
    };
    conn.inflight.fetch_add(1, Ordering::Relaxed);
    let _guard = WaiterGuard { conn, id, seq };
    // The ID sits after the 2-byte length prefix.
    dns::set_id(&mut out[2..], id);
    if conn.out.send(out).await.is_err() {
        return Err(Lost);
    }
    rx.await.map_err(|_| Lost)
}

/// Counts a query in flight on its connection and removes its waiter when
/// the query is abandoned (timeout, client gone), never a later one.
struct WaiterGuard<'a> {
    conn: &'a Conn,
    id: u16,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.conn.inflight.fetch_sub(1, Ordering::Relaxed);
        let mut pending = self.conn.pending();
        if pending
            .waiters
            .get(&self.id)
            .is_some_and(|w| w.seq == self.seq)
        {
            pending.waiters.remove(&self.id);
        }
    }
}

/// One connection's reader and writer, until either ends, the remote closes,
/// or the pool is dropped; then every waiter is failed over.
async fn run<S>(
    stream: S,
    conn: Arc<Conn>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
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
        while let Some(first) = queue.recv().await {
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
            if let Err(e) = written.await {
                tracing::debug!(error = %e, "cannot write to the upstream");
                return;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = stop.cancelled() => {}
    }
    conn.kill();
}

fn deliver(conn: &Conn, reply: &[u8], stats: &Stats) {
    if reply.len() < dns::HEADER_LEN {
        stats.count(&stats.mismatched_replies);
        return;
    }
    let id = dns::id(reply);
    let waiter = {
        let mut pending = conn.pending();
        let Some(waiter) = pending.waiters.get(&id) else {
            drop(pending);
            stats.count(&stats.mismatched_replies);
            return;
        };
        match classify(reply, &waiter.question) {
            Some(result) => pending.waiters.remove(&id).map(|w| (w, result)),
            None => None,
        }
    };
    match waiter {
        // The receiver may have given up (timeout): nothing to do.
        Some((waiter, result)) => {
            let _ = waiter.tx.send(result);
        }
        None => stats.count(&stats.mismatched_replies),
    }
}
