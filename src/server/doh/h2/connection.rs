//! One HTTP/2 DoH connection, as DoT's is run
//! ([`crate::server::connection`]): one task that reads what the client
//! sent into the [`Session`], runs its requests inside itself
//! (`server::in_flight`), and writes their responses, batched, in
//! the order they are ready.
//!
//! ```text
//!            ┌──────────────── the connection's task ─────────────────┐
//! client ──> │ Session ──request──> in-flight set ──answer──> Session │ ──> client
//!            └───────────────────────────│────────────────────────────┘
//!                                exchange::answer
//! ```
//!
//! Why not hyper's: its HTTP/2 server (h2) spawns a task per stream and
//! holds fixed buffers of about 28 KiB for a connection's whole life; here
//! an idle connection holds its session (the HPACK table the client
//! filled, a few hundred bytes) and nothing else: reads go through one
//! buffer per thread, and output, streams and requests exist only while a
//! request does (and 100 ms beyond, so that a busy connection
//! does not rebuild them between batches).
//!
//! The rules of its life are DoT's:
//! * while a batch of output is being written, nothing is read: a client
//!   that stops reading stops being read, and is closed once it has not
//!   taken our bytes for its idle timeout;
//! * the idle timer runs only while no stream is open and nothing is
//!   begun, and counts from the latest request or response; it closes the
//!   connection gracefully (GOAWAY, then close_notify and FIN);
//! * something begun (a frame, a header block) must be finished within the
//!   read timeout, or the connection is closed at once; a body not finished
//!   within it gets 408 and the connection goes on;
//! * on shutdown, at the maximum age, or for a client over a rate limit
//!   with `--rate-limit-action close`: GOAWAY, the requests begun are
//!   answered, then the connection closes, at the latest the idle timeout
//!   and the TLS linger after.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::session::{Event, Limits, Session};
use crate::metrics::stats::CloseReason;
use crate::server::client::Client;
use crate::server::connection::{retire_after, with_timeout, Shared, RELEASE_AFTER};
use crate::server::doh::exchange::{self, Answer, Reply};
use crate::server::in_flight::InFlight;
use crate::tls::server_stream::{TlsFailure, LINGER};

/// Header block a request may send, in bytes as decoded: DoH requests
/// carry a few short headers (a GET's path holds at most a 64 KiB message
/// in base64).
const MAX_HEADER_LIST: usize = 96 * 1024;

/// A header block as sent may be no larger than the list it decodes to
/// with some room for literal overhead; past it, the client is flooding.
const MAX_HEADER_BLOCK: usize = 128 * 1024;

/// Requests a client may reset before their answer, beyond those it has
/// earned back (rapid reset, CVE-2023-44487).
const MAX_RESETS: u32 = 64;

/// Streams dotgate may refuse or reset for a client's errors before the
/// connection is closed with ENHANCE_YOUR_CALM.
const MAX_ERROR_RESETS: u32 = 256;

/// Output gathered before it is written: a batch of responses.
const WRITE_BATCH: usize = 16 * 1024;

/// One read from the stream: decrypted bytes for the session, in a buffer
/// per thread, so that an idle connection holds none.
const READ_CHUNK: usize = 32 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Serves one HTTP/2 DoH connection until it closes; returns why.
pub async fn serve<S>(
    mut io: S,
    client: Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let shared = &*shared;
    let client = &client;
    let forwarding = shared
        .forwarding
        .trusts(client.addr.ip())
        .then(|| shared.forwarding.header.name());
    let limits = Limits {
        max_streams: u32::try_from(shared.max_inflight).unwrap_or(u32::MAX),
        max_header_block: MAX_HEADER_BLOCK,
        max_header_list: MAX_HEADER_LIST,
        max_resets: MAX_RESETS,
        max_error_resets: MAX_ERROR_RESETS,
    };
    let mut session = Session::new(limits, forwarding);
    let mut in_flight = InFlight::default();
    let mut answered = Answered::default();
    let timeouts = shared.timeouts;
    // A client that takes longer than its own idle allowance to accept our
    // bytes is treated as gone.
    let write_timeout = timeouts.idle;

    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    let too_old = retire_after(shared.max_age);
    tokio::pin!(too_old);
    // The idle timer; once the connection is closing, the time by which
    // it is closed whatever the client does. One timer for both keeps an
    // idle connection's task small.
    let timer = tokio::time::sleep(timeouts.idle);
    tokio::pin!(timer);
    let unfinished = tokio::time::sleep(timeouts.read);
    tokio::pin!(unfinished);

    let mut closing: Option<CloseReason> = None;
    let mut write_failed = false;
    let mut tls_failed = false;
    // Our SETTINGS first.
    let mut reason = match write(&mut io, &mut session, write_timeout).await {
        Ok(()) => None,
        Err(_) => {
            write_failed = true;
            Some(CloseReason::Error)
        }
    };
    // When the connection last had a request begin or end: the idle timer
    // counts from it, and is moved when it fires rather than on every
    // request (a timer moved is a trip through the runtime's timer wheel).
    let mut last_active = Instant::now();
    // Buffers are given back a moment after the connection goes quiet, not
    // each time it does: under load that is after every batch.
    let mut release_due: Option<Instant> = None;
    while reason.is_none() {
        let mut close_asked = None;
        let mut active = false;
        tokio::select! {
            biased;
            _ = &mut stopping, if closing.is_none() => close_asked = Some(CloseReason::Shutdown),
            _ = &mut too_old, if closing.is_none() => close_asked = Some(CloseReason::Retired),
            Some((stream, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                close_asked = deliver(&mut session, &mut answered, (stream, answer));
                while session.out.len() < WRITE_BATCH {
                    let Some(next) = in_flight.ready() else { break };
                    close_asked = close_asked.or(deliver(&mut session, &mut answered, next));
                }
                active = true;
            }
            read = read_into(&mut io, &mut session) => match read {
                Ok(None) => reason = Some(CloseReason::Client),
                Ok(Some(read_at)) => {
                    // Every request of this read was received now: one
                    // reading of the clock for all.
                    let received = read_at.into_std();
                    if session.failure().is_some() {
                        tracing::debug!(%client, failure = ?session.failure(), "closing DoH connection");
                        reason = Some(CloseReason::Error);
                    }
                    while let Some(event) = session.next_event() {
                        active = true;
                        match event {
                            Event::Request { stream, head, body } => in_flight.push(async move {
                                let answer = exchange::answer(&head, body, received, client, shared).await;
                                (stream, (answer, received))
                            }),
                            Event::Refuse { stream, refusal } => {
                                let reply = exchange::refuse(refusal, &shared.stats);
                                session.respond(stream, reply);
                            }
                        }
                    }
                    if session.peer_gone() && closing.is_none() {
                        closing = Some(CloseReason::Client);
                        timer.as_mut().reset(Instant::now() + timeouts.idle + LINGER);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    reason = Some(CloseReason::Client);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    reason = Some(CloseReason::ReadTimeout);
                }
                Err(e) => {
                    if let Some(failure) = TlsFailure::of(&e) {
                        if *failure == TlsFailure::HandshakeTooLarge {
                            shared.stats.tls_handshake_too_large.inc();
                        }
                        // A fatal alert is queued: nothing may follow it.
                        tls_failed = true;
                    }
                    tracing::debug!(%client, error = %e, "closing DoH connection");
                    reason = Some(CloseReason::Error);
                }
            },
            _ = &mut unfinished => {
                let now = Instant::now();
                let cutoff = now.checked_sub(timeouts.read);
                if let (Some(begun), Some(cutoff)) = (session.begun(), cutoff) {
                    if begun <= cutoff {
                        reason = Some(CloseReason::ReadTimeout);
                    }
                }
                if let Some(cutoff) = cutoff {
                    session.expire_bodies(cutoff);
                    while let Some(event) = session.next_event() {
                        if let Event::Refuse { stream, refusal } = event {
                            let reply = exchange::refuse(refusal, &shared.stats);
                            session.respond(stream, reply);
                        }
                    }
                }
                if release_due.is_some_and(|due| due <= now) {
                    release_due = None;
                    if in_flight.is_empty() && session.is_quiet() {
                        in_flight.release();
                        session.release();
                        answered.release();
                    }
                }
                // Looked at again when the oldest thing begun would run
                // out of time, or buffers are due back.
                let next = [session.begun(), session.oldest_body()]
                    .into_iter()
                    .flatten()
                    .map(|t| t + timeouts.read)
                    .chain(release_due)
                    .min()
                    .unwrap_or(now + timeouts.read);
                unfinished.as_mut().reset(next.max(now + Duration::from_millis(1)));
            }
            _ = &mut timer, if closing.is_some() || in_flight.is_empty() => {
                if closing.is_some() {
                    // Closing took too long: the connection is dropped.
                    reason = closing;
                    break;
                }
                let now = Instant::now();
                let due = last_active + timeouts.idle;
                if due > now {
                    // Requests came and went since the timer was set.
                    timer.as_mut().reset(due);
                } else if session.is_quiet() {
                    close_asked = Some(CloseReason::Idle);
                } else {
                    timer.as_mut().reset(now + timeouts.idle);
                }
            }
        }
        if let Some(asked) = close_asked.filter(|_| closing.is_none()) {
            session.go_away();
            closing = Some(asked);
            timer
                .as_mut()
                .reset(Instant::now() + timeouts.idle + LINGER);
        }
        if tls_failed {
            break;
        }
        if !session.out.is_empty() {
            let written = write(&mut io, &mut session, write_timeout).await;
            answered.observe(&shared.stats, written.is_ok());
            if let Err(e) = written {
                tracing::debug!(%client, error = %e, "closing DoH connection");
                if TlsFailure::of(&e).is_some() {
                    tls_failed = true;
                } else {
                    write_failed = true;
                }
                reason = Some(CloseReason::Error);
            }
        }
        if in_flight.is_empty() {
            if reason.is_none() && closing.is_some() && session.open_streams() == 0 {
                reason = closing;
            }
            if active {
                let now = Instant::now();
                last_active = now;
                if release_due.is_none() {
                    let due = now + RELEASE_AFTER;
                    release_due = Some(due);
                    if unfinished.deadline() > due {
                        unfinished.as_mut().reset(due);
                    }
                }
            }
        }
    }
    let reason = reason.or(closing).unwrap_or(CloseReason::Error);
    if tls_failed {
        // The requests in progress go unanswered: after a fatal alert the
        // stream sends nothing more but the alert, which the close sends,
        // then FIN and the linger.
        in_flight.release();
        let _ = with_timeout(write_timeout + LINGER, io.shutdown()).await;
    } else if write_failed {
        in_flight.release();
    } else {
        // The requests in progress are answered, then the connection
        // closes; within the write timeout and the TLS linger.
        let finished = async {
            while let Some(next) = in_flight.next().await {
                deliver(&mut session, &mut answered, next);
                let written = write(&mut io, &mut session, write_timeout).await;
                answered.observe(&shared.stats, written.is_ok());
                written?;
            }
            with_timeout(write_timeout + LINGER, io.shutdown()).await
        };
        if let Err(e) = finished.await {
            tracing::debug!(%client, error = %e, "closing DoH connection");
        }
    }
    tracing::debug!(%client, ?reason, "DoH connection closed");
    reason
}

/// Hands one answer to the session; the close its reply asks for, if any.
fn deliver(
    session: &mut Session,
    answered: &mut Answered,
    (stream, (answer, received)): (u32, (Answer, std::time::Instant)),
) -> Option<CloseReason> {
    let query = matches!(answer.reply, Reply::Dns(_));
    if session.respond(stream, answer.reply) && query {
        answered.received.push(received);
    }
    answer.close.then_some(CloseReason::RateLimited)
}

/// When each DNS reply given since the last write was asked for, for
/// `dotgate_query_duration_seconds` (from the request to its response
/// written, as for DoT; refusals are not queries). Empty, and holding no
/// memory, while idle.
#[derive(Default)]
struct Answered {
    received: Vec<std::time::Instant>,
}

impl Answered {
    /// Counts the responses just written (`written`), or drops them.
    fn observe(&mut self, stats: &crate::metrics::stats::Stats, written: bool) {
        if written {
            stats.observe_written(&self.received);
        }
        self.received.clear();
    }

    fn release(&mut self) {
        *self = Self::default();
    }
}

/// Reads what the client sent into the session; when it was read, `None`
/// at the end of the stream.
async fn read_into<S>(io: &mut S, session: &mut Session) -> std::io::Result<Option<Instant>>
where
    S: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            if read.is_empty() {
                return Poll::Ready(Ok(None));
            }
            let now = Instant::now();
            session.receive(read, now);
            Poll::Ready(Ok(Some(now)))
        })
    })
    .await
}

/// Writes the session's output within `limit`.
async fn write<S>(io: &mut S, session: &mut Session, limit: Duration) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    with_timeout(limit, async {
        io.write_all(&session.out).await?;
        io.flush().await
    })
    .await?;
    session.out.clear();
    // A large batch grew the buffer past its usual size: give that memory
    // back rather than keep the peak while the connection is busy.
    if session.out.capacity() > 4 * WRITE_BATCH {
        session.out = Vec::new();
    }
    Ok(())
}
