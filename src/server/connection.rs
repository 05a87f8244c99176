//! One client connection after its TLS handshake: a reader loop, one task per
//! query, and one writer.
//!
//! ```text
//! reader ──query──> query task ──> upstream ──reply──> channel ──> writer
//! ```
//!
//! Invariants:
//! * only the writer touches the write half, and it writes each reply's
//!   length prefix and body as one unit (R9);
//! * replies are written in the order they are ready, not the order the
//!   queries came in (R10);
//! * every query read gets exactly one reply while the client is there
//!   (R11): the query task always produces one, SERVFAIL at worst;
//! * at most `max_inflight` queries are in flight; at the limit the reader
//!   stops reading rather than dropping anything (R16);
//! * the idle timer runs only while nothing is in flight, and restarts on
//!   each complete message (R13);
//! * on every way out (idle, client close, shutdown) reading stops first,
//!   the replies in flight are written, and then the writer sends
//!   close_notify and FIN (R7, R15).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Timeouts;
use crate::metrics::stats::{CloseReason, Stats};
use crate::proto::framing::{FrameError, FrameReader, ReadLimits};
use crate::server::respond;
use crate::upstream::Pool;

/// What every connection shares: the upstream, the counters, the settings.
pub struct Shared {
    pub upstream: Pool,
    pub stats: Arc<Stats>,
    pub timeouts: Timeouts,
    pub max_inflight: usize,
    /// Queries after which a connection is retired, if limited.
    pub max_queries: Option<u64>,
    /// Age after which a connection is retired, if limited.
    pub max_age: Option<Duration>,
    /// The read timeout and the shared message budget.
    pub read_limits: ReadLimits,
}

/// Largest batch of replies the writer coalesces into one write.
const WRITE_BATCH: usize = 16 * 1024;

/// Serves one connection until it closes; returns why.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    // Capacity equals the in-flight limit: a reply's sender waits only when
    // the client stops reading, which then stops the reader too.
    // Each reply travels with the time its query was read, for
    // `dotgate_query_duration_seconds`.
    let (tx, rx) = mpsc::channel::<(Vec<u8>, std::time::Instant)>(shared.max_inflight);
    let writer_failed = CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        write_half,
        rx,
        // A client that takes longer than its own idle allowance to accept
        // our bytes is treated as gone.
        shared.timeouts.idle,
        writer_failed.clone(),
        shared.stats.clone(),
    ));
    let inflight = InFlight::new(shared.max_inflight);
    let mut reader = FrameReader::with_limits(read_half, shared.read_limits.clone());
    let lifetime = Lifetime::new(shared.max_queries, shared.max_age);
    // Without a maximum age this sleep never completes.
    let too_old = lifetime.retire_at(tokio::time::Instant::now());
    tokio::pin!(too_old);

    let reason = loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break CloseReason::Shutdown,
            _ = writer_failed.cancelled() => break CloseReason::Error,
            _ = &mut too_old => break CloseReason::Retired,
            permit = inflight.permit() => match permit {
                Some(permit) => permit,
                None => break CloseReason::Error,
            },
        };
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break CloseReason::Shutdown,
            _ = writer_failed.cancelled() => break CloseReason::Error,
            _ = &mut too_old => break CloseReason::Retired,
            _ = inflight.idle_for(shared.timeouts.idle) => break CloseReason::Idle,
            read = reader.read_frame() => read,
        };
        let msg = match read {
            Ok(Some(msg)) => msg,
            Ok(None) => break CloseReason::Client,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // FIN without close_notify: the client is gone all the same.
                break CloseReason::Client;
            }
            Err(FrameError::ReadTimeout) => break CloseReason::ReadTimeout,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "closing connection");
                break CloseReason::Error;
            }
        };
        // The last query before retirement already learns of it (keepalive 0).
        let last = lifetime.count_query();
        let ticket = inflight.start(permit);
        let shared = shared.clone();
        let tx = tx.clone();
        let lifetime_view = lifetime.clone();
        let received = std::time::Instant::now();
        let in_flight = shared.stats.query_in_flight();
        tokio::spawn(async move {
            let reply = respond::answer(
                &shared.upstream,
                &shared.stats,
                shared.timeouts.idle,
                msg,
                || lifetime_view.is_retiring(),
            )
            .await;
            drop(in_flight);
            // The writer is gone only when the client is: drop the reply.
            let _ = tx.send((reply, received)).await;
            drop(ticket);
        });
        if last {
            break CloseReason::Retired;
        }
    };
    // Replies still in flight tell keepalive-aware clients not to reuse this
    // connection (R15).
    lifetime.retire();

    // Stop reading; the writer ends once every query task has sent its reply
    // and dropped its sender.
    drop(reader);
    drop(tx);
    let written = writer.await;
    let reason = match written {
        Ok(Ok(())) => reason,
        _ => CloseReason::Error,
    };
    tracing::debug!(%peer, ?reason, "connection closed");
    reason
}

/// Writes replies as they come, coalescing those that are ready together
/// into one write, then closes with close_notify and FIN.
async fn write_loop<W>(
    mut writer: W,
    mut replies: mpsc::Receiver<(Vec<u8>, std::time::Instant)>,
    write_timeout: Duration,
    failed: CancellationToken,
    stats: Arc<Stats>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let result = async {
        // Grows on first use only: an idle connection holds no write buffer.
        let mut batch = Vec::new();
        // When each query of the batch was read; grows once, like `batch`.
        let mut received = Vec::new();
        while let Some((reply, read_at)) = replies.recv().await {
            batch.clear();
            received.clear();
            push_framed(&mut batch, &reply);
            received.push(read_at);
            while batch.len() < WRITE_BATCH {
                match replies.try_recv() {
                    Ok((reply, read_at)) => {
                        push_framed(&mut batch, &reply);
                        received.push(read_at);
                    }
                    Err(_) => break,
                }
            }
            with_timeout(write_timeout, async {
                writer.write_all(&batch).await?;
                writer.flush().await
            })
            .await?;
            for read_at in &received {
                stats
                    .query_duration
                    .observe(read_at.elapsed().as_secs_f64());
            }
            // A large reply grew the batch past its usual size: give that
            // memory back rather than keep the peak for the connection's life.
            if batch.capacity() > WRITE_BATCH {
                batch = Vec::new();
            }
        }
        // All senders are gone: nothing more to write.
        with_timeout(write_timeout, writer.shutdown()).await
    }
    .await;
    if result.is_err() {
        failed.cancel();
    }
    result
}

fn push_framed(batch: &mut Vec<u8>, msg: &[u8]) {
    // Messages are at most 65535 bytes: they come from 16-bit framing or from
    // a UDP datagram, and synthesized replies are small.
    batch.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    batch.extend_from_slice(msg);
}

async fn with_timeout<F>(limit: Duration, io: F) -> std::io::Result<()>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    tokio::time::timeout(limit, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

/// Counts the queries of one connection that are in flight, and limits them.
struct InFlight {
    limit: Arc<Semaphore>,
    count: AtomicUsize,
    none_left: Notify,
}

/// Held by a query task; its drop marks the query answered.
struct Ticket {
    _permit: OwnedSemaphorePermit,
    inflight: Arc<InFlight>,
}

impl InFlight {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: Arc::new(Semaphore::new(max)),
            count: AtomicUsize::new(0),
            none_left: Notify::new(),
        })
    }

    /// Waits for room for one more query. `None` only if the semaphore were
    /// closed, which nothing does.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.limit.clone().acquire_owned().await.ok()
    }

    fn start(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Ticket {
        self.count.fetch_add(1, Ordering::AcqRel);
        Ticket {
            _permit: permit,
            inflight: self.clone(),
        }
    }

    /// Completes after `idle` has passed with nothing in flight. Only the
    /// reader starts queries, and it drops this future when it does, so the
    /// count cannot rise while the timer runs.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        tokio::time::sleep(idle).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.inflight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inflight.none_left.notify_waiters();
        }
    }
}

/// Where a connection stands in its life: how many queries it has read, and
/// whether it is being retired. Shared by the reader and its query tasks, so
/// that replies written after retirement began can say so (keepalive 0).
#[derive(Clone)]
pub struct Lifetime(Arc<LifetimeInner>);

struct LifetimeInner {
    max_queries: Option<u64>,
    max_age: Option<Duration>,
    queries: AtomicU64,
    retiring: AtomicBool,
}

impl Lifetime {
    fn new(max_queries: Option<u64>, max_age: Option<Duration>) -> Self {
        Self(Arc::new(LifetimeInner {
            max_queries,
            max_age,
            queries: AtomicU64::new(0),
            retiring: AtomicBool::new(false),
        }))
    }

    /// Sleeps until the connection is too old; forever without a maximum age.
    async fn retire_at(&self, opened: tokio::time::Instant) {
        match self.0.max_age {
            Some(age) => tokio::time::sleep_until(opened + age).await,
            None => std::future::pending().await,
        }
    }

    /// Counts one query read; true when it is the last one allowed, in which
    /// case retirement has begun.
    fn count_query(&self) -> bool {
        let n = self.0.queries.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.0.max_queries.is_some_and(|max| n >= max);
        if last {
            self.retire();
        }
        last
    }

    fn retire(&self) {
        self.0.retiring.store(true, Ordering::Relaxed);
    }

    /// True once the connection has stopped reading: its replies should
    /// advertise a keepalive of 0 (R14, R15).
    pub fn is_retiring(&self) -> bool {
        self.0.retiring.load(Ordering::Relaxed)
    }
}
