//! One client connection after its TLS handshake: one task that reads
//! queries, runs them, and writes their replies.
//!
//! ```text
//!            ┌────────────── the connection's task ──────────────┐
//! client ──> │ reader ──query──> in-flight set ──reply──> writer │ ──> client
//!            └──────────────────────────│────────────────────────┘
//!                                    upstream
//! ```
//!
//! One task, not a reader and a writer: an idle connection is then one
//! task's memory, with no channel, no lock around a split stream, and no
//! buffer of its own (the reader holds nothing between messages, and the
//! write batch lives only while replies are pending). The queries in flight
//! run inside this task (`server::in_flight`): an upstream reply
//! wakes the connection, which polls only the query it belongs to.
//!
//! Invariants:
//! * replies are written whole (length prefix and body in one buffer, R9),
//!   in the order they are ready, not the order the queries came in (R10);
//! * every query read gets exactly one reply while the client is there
//!   (R11): a query always produces one, SERVFAIL at worst;
//! * at most `max_inflight` queries are in flight; at the limit the
//!   connection stops reading rather than dropping anything (R16);
//! * while a batch of replies is being written, nothing is read: a client
//!   that stops reading stops being read, and is closed once it has not
//!   taken our bytes for its idle timeout;
//! * the idle timer runs only while nothing is in flight and no message has
//!   begun arriving (the read timeout bounds a message once begun), and
//!   counts from the latest reply (or the start) (R13);
//! * on every way out (idle, client close, shutdown, retirement) reading
//!   stops first, the replies in flight are written, and then close_notify
//!   and FIN are sent (R7, R15).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::access::AllowList;
use crate::config::{ClientToUpstream, Timeouts};
use crate::metrics::stats::{CloseReason, Stats, Transport};
use crate::proto::edns::LegOptions;
use crate::proto::framing::FrameError;
use crate::proto::message_reader::{poll_once, MessageReader, ReadLimits};
use crate::server::client::Client;
use crate::server::client_ids::ClientIds;
use crate::server::in_flight::InFlight;
use crate::server::rate_limit::{Decision, RateLimiter};
use crate::server::respond;
use crate::tls::server_stream::{TlsFailure, LINGER};
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
    /// `--allow-from`: judged at accept, or after the PROXY header.
    pub allow: AllowList,
    /// The client-ID gate, judged on each ClientHello.
    pub client_ids: Arc<ClientIds>,
    /// What the upstream is told about each client.
    pub tell_upstream: ClientToUpstream,
    /// `--doh-path`: where DoH listeners answer.
    pub doh_path: String,
    /// `--doh-trusted-proxy`: DoH peers whose forwarding header names the
    /// client; `--allow-from` is judged on each of their requests instead
    /// of at accept.
    pub forwarding: crate::config::forwarded::Forwarding,
    /// `--max-qps-per-ip` and the other per-client limits; `None` when off.
    pub rate_limit: Option<RateLimiter>,
}

/// Largest batch of replies coalesced into one write.
const WRITE_BATCH: usize = 16 * 1024;

/// How long a connection (DoT or HTTP/2) that went quiet keeps its buffers
/// (the in-flight set, the write batch; for HTTP/2 also the stream table)
/// before giving them back: a client that asks one query at a time, or a
/// busy one quiet between batches, reuses them rather than rebuilding them
/// every time, and an idle connection still holds none.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_millis(100);

/// Serves one connection until it closes; returns why.
pub async fn serve<S>(
    mut stream: S,
    client: Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let shared = &*shared;
    // Set once the connection stops reading: replies written from then on
    // advertise a keepalive of 0 (R14, R15).
    let retiring = AtomicBool::new(false);
    let mut queries_read: u64 = 0;
    let mut reader = MessageReader::new(shared.read_limits.clone());
    let mut in_flight = InFlight::default();
    let mut replies = Replies::default();
    // A client that takes longer than its own idle allowance to accept our
    // bytes is treated as gone.
    let write_timeout = shared.timeouts.idle;
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    // Without a maximum age this never completes.
    let too_old = retire_after(shared.max_age);
    tokio::pin!(too_old);
    let idle = tokio::time::sleep(shared.timeouts.idle);
    tokio::pin!(idle);
    // While the buffers are kept after the last reply: when the idle
    // timeout proper falls. The idle timer first fires at the release.
    let mut idle_due: Option<tokio::time::Instant> = None;

    let mut write_failed = false;
    let mut tls_failed = false;
    let reason = loop {
        tokio::select! {
            biased;
            _ = &mut stopping => break CloseReason::Shutdown,
            _ = &mut too_old => break CloseReason::Retired,
            Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                replies.gather(reply, &mut in_flight);
                if let Err(e) = replies.write(&mut stream, write_timeout, &shared.stats).await {
                    tracing::debug!(%client, error = %e, "closing connection");
                    write_failed = true;
                    break CloseReason::Error;
                }
                if in_flight.is_empty() {
                    let now = tokio::time::Instant::now();
                    let due = now + shared.timeouts.idle;
                    if shared.timeouts.idle > RELEASE_AFTER {
                        idle_due = Some(due);
                        idle.as_mut().reset(now + RELEASE_AFTER);
                    } else {
                        in_flight.release();
                        replies.release();
                        idle.as_mut().reset(due);
                    }
                }
            }
            read = reader.read_message(&mut stream), if in_flight.len() < shared.max_inflight => {
                let msg = match read {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break CloseReason::Client,
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // FIN without close_notify: the client is gone all the same.
                        break CloseReason::Client;
                    }
                    Err(FrameError::ReadTimeout) => break CloseReason::ReadTimeout,
                    // Part of a TLS record held past the read timeout.
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                        break CloseReason::ReadTimeout;
                    }
                    Err(FrameError::Io(e)) if TlsFailure::of(&e).is_some() => {
                        if TlsFailure::of(&e) == Some(&TlsFailure::HandshakeTooLarge) {
                            shared.stats.tls_handshake_too_large.inc();
                        }
                        tracing::debug!(%client, error = %e, "closing connection");
                        // A fatal alert is queued: nothing may follow it.
                        tls_failed = true;
                        break CloseReason::Error;
                    }
                    Err(e) => {
                        tracing::debug!(%client, error = %e, "closing connection");
                        break CloseReason::Error;
                    }
                };
                queries_read += 1;
                let decision = shared.rate_limit.as_ref().map_or(Decision::Serve, |limits| {
                    limits.judge(client.addr.ip(), client.id.as_deref(), Transport::Dot, Instant::now())
                });
                match decision {
                    Decision::Serve | Decision::Refuse => {}
                    // No reply, deliberately (R11 does not hold for it):
                    // the query is gone with its buffer, nothing is in
                    // flight for it, and the client's own timeout ends
                    // its wait.
                    Decision::Drop => {
                        shared.stats.count_query(Transport::Dot);
                        continue;
                    }
                    // What is in flight is still answered below.
                    Decision::Close => {
                        shared.stats.count_query(Transport::Dot);
                        break CloseReason::RateLimited;
                    }
                }
                // The last query before retirement already learns of it.
                let last = shared.max_queries.is_some_and(|max| queries_read >= max);
                if last {
                    retiring.store(true, Ordering::Relaxed);
                }
                let refused = decision == Decision::Refuse;
                in_flight.push(answer_one(shared, &client, msg, &retiring, refused));
                if last {
                    break CloseReason::Retired;
                }
            }
            // A message begun when the deadline passed is the read
            // timeout's to bound (the reader enforces it), not the idle
            // timer's: the timer stays off until that message is answered.
            _ = &mut idle, if in_flight.is_empty() && !reader.has_partial() => {
                if let Some(due) = idle_due.take() {
                    // Quiet for a moment: the buffers go back, and the idle
                    // timeout runs on from the last reply.
                    in_flight.release();
                    replies.release();
                    idle.as_mut().reset(due);
                    continue;
                }
                // Again: the read branch, polled in this same select, may
                // have begun a message since the guard was judged.
                if !reader.has_partial() {
                    break CloseReason::Idle;
                }
            }
        }
    };
    // Replies still in flight tell keepalive-aware clients not to reuse this
    // connection (R15).
    retiring.store(true, Ordering::Relaxed);
    drop(reader);

    let mut reason = reason;
    if tls_failed {
        // The queries in flight go unanswered: after a fatal alert the
        // stream sends nothing more but what is queued.
        in_flight.release();
    }
    if !write_failed {
        let finished = async {
            while let Some(reply) = in_flight.next().await {
                replies.gather(reply, &mut in_flight);
                replies
                    .write(&mut stream, write_timeout, &shared.stats)
                    .await?;
            }
            // The close lingers (see `server_stream::LINGER`) on top of
            // the time the client may take to read our last bytes; a
            // failed stream sends its alert then.
            with_timeout(write_timeout + LINGER, stream.shutdown()).await
        };
        if let Err(e) = finished.await {
            tracing::debug!(%client, error = %e, "closing connection");
            reason = CloseReason::Error;
        }
    }
    tracing::debug!(%client, ?reason, "connection closed");
    reason
}

/// One query's way through the upstream, with when it was read (for
/// `dotgate_query_duration_seconds`); REFUSED at once, without the
/// upstream, when it is over a rate limit (`refused`).
async fn answer_one(
    shared: &Shared,
    client: &Client,
    msg: Vec<u8>,
    retiring: &AtomicBool,
    refused: bool,
) -> (Vec<u8>, Instant) {
    // One reading of the clock: the query's duration and its upstream
    // deadline count from it.
    let received = tokio::time::Instant::now().into_std();
    if refused {
        return (
            respond::refused(&shared.stats, Transport::Dot, &msg),
            received,
        );
    }
    let _in_flight = shared.stats.query_in_flight();
    if let Some(queries) = &client.queries {
        queries.inc();
    }
    let reply = respond::answer(
        &shared.upstream,
        &client.origin,
        &shared.stats,
        Transport::Dot,
        msg,
        received,
        |request| {
            LegOptions::for_request(
                request,
                shared.timeouts.idle,
                retiring.load(Ordering::Relaxed),
            )
        },
    )
    .await;
    (reply, received)
}

/// Sleeps for `age`; forever without one.
pub(crate) async fn retire_after(age: Option<Duration>) {
    match age {
        Some(age) => tokio::time::sleep(age).await,
        None => std::future::pending().await,
    }
}

/// Replies ready to be written, framed, and when each one's query was read.
/// Empty (no heap memory) while nothing is pending.
#[derive(Default)]
struct Replies {
    batch: Vec<u8>,
    received: Vec<Instant>,
}

impl Replies {
    fn push(&mut self, (reply, received): (Vec<u8>, Instant)) {
        // Messages are at most 65535 bytes: they come from 16-bit framing or
        // from a UDP datagram, and synthesized replies are small.
        // Room for prefix and reply at once, not the prefix's first.
        self.batch.reserve(2 + reply.len());
        self.batch
            .extend_from_slice(&(reply.len() as u16).to_be_bytes());
        self.batch.extend_from_slice(&reply);
        self.received.push(received);
    }

    /// Takes `first` and whatever other reply is ready now, up to a batch,
    /// so that they go out in one write.
    fn gather<F>(&mut self, first: (Vec<u8>, Instant), in_flight: &mut InFlight<F>)
    where
        F: Future<Output = (Vec<u8>, Instant)>,
    {
        self.push(first);
        while self.batch.len() < WRITE_BATCH {
            match in_flight.ready() {
                Some(reply) => self.push(reply),
                None => break,
            }
        }
    }

    /// Writes the batch within `limit` and counts each reply's duration.
    async fn write<S>(&mut self, io: &mut S, limit: Duration, stats: &Stats) -> std::io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        with_timeout(limit, async {
            io.write_all(&self.batch).await?;
            io.flush().await
        })
        .await?;
        stats.observe_written(&self.received);
        self.batch.clear();
        self.received.clear();
        // A large reply grew the batch past its usual size: give that memory
        // back rather than keep the peak while the connection is busy.
        if self.batch.capacity() > WRITE_BATCH {
            self.batch = Vec::new();
        }
        Ok(())
    }

    /// Gives the buffers back: nothing is in flight.
    fn release(&mut self) {
        *self = Self::default();
    }
}

/// `io` within `limit`, which counts from its first poll. The timer is
/// armed only when `io` has to wait: nearly every write completes at once,
/// and arming it costs a reading of the clock.
pub(crate) async fn with_timeout<F>(limit: Duration, io: F) -> std::io::Result<()>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let mut io = std::pin::pin!(io);
    if let std::task::Poll::Ready(done) = poll_once(io.as_mut()).await {
        return done;
    }
    tokio::time::timeout(limit, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}
