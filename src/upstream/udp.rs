//! Shared UDP sockets toward one upstream, with unpredictable IDs (R21) and
//! source ports (RFC 5452 §9.2).
//!
//! Every query from every connection goes out on one of a few connected UDP
//! sockets under a fresh random ID that is not in use on that socket. Each
//! socket is bound to a port the kernel picks at random from its ephemeral
//! range, and is replaced by a socket on a new port after
//! [`ROTATE_AFTER_QUERIES`] queries or [`ROTATE_AFTER`], whichever comes
//! first: a forger must guess the port as well as the ID, and a port learnt
//! or guessed is soon of no use. A replaced socket takes no new query; it
//! still receives the replies to its queries in flight, and closes once the
//! last of them is answered or abandoned (each within its try). A reply
//! is delivered only when it comes from the upstream's address (the socket is
//! connected, so the kernel filters the source), carries an ID in use, and
//! repeats the question that was sent (RFC 5452). Anything else is counted and
//! ignored; the real reply may still arrive. So is a reply to the question
//! that is malformed: the query waits on, until the end of its try, for a
//! valid one.
//!
//! A datagram can be lost on the way. As stub resolvers do, a query with no
//! reply after a short delay (four smoothed round-trip times, at least
//! [`MIN_RESEND`], at most half the try's timeout) is sent once more, with
//! the same ID, so one lost packet costs that delay rather than a SERVFAIL.
//!
//! The pending map is behind a plain mutex, held only for a map operation and
//! never across an await.

#[cfg(target_os = "linux")]
mod batch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::ids::{Ids, Ticket};
use super::origin::Origin;
use super::reply::{classify, Reply, UpstreamError, Verdict};
use crate::metrics::stats::Stats;
use crate::proto::dns::{self, QueryInfo};
use crate::proto::proxy_header;

/// Number of sockets per upstream: more source ports make spoofing harder and
/// spread the receive work over tasks.
const SOCKETS: usize = 4;

/// Queries a socket carries before it is replaced by one on a new port. At
/// 50,000 queries a second, about 50 new sockets a second over the four:
/// a few system calls each, next to the queries' own.
pub const ROTATE_AFTER_QUERIES: u64 = 1000;

/// Longest a socket is used before it is replaced by one on a new port, so
/// that a quiet upstream's ports change too.
pub const ROTATE_AFTER: Duration = Duration::from_secs(10);

/// Requested receive buffer per socket.
const RECV_BUFFER: usize = 4 << 20;

/// Largest datagram the receive buffer takes.
#[cfg(not(target_os = "linux"))]
const MAX_DATAGRAM: usize = 65_535;

/// Least wait before a query is sent again (unless half the try's timeout is
/// shorter): long enough for a recursive resolver to answer most cache
/// misses, so the resend is for lost packets rather than for slow names.
pub const MIN_RESEND: Duration = Duration::from_millis(500);

/// One reply in this many updates the smoothed round-trip time: enough to
/// follow the upstream, without a shared write per query.
const RTT_SAMPLE: u64 = 8;

/// Receive errors in a row after which the receive task starts pausing
/// between reads, so an error that repeats cannot spin a core.
const ERRORS_BEFORE_BACKOFF: u32 = 8;

/// Longest pause between reads after repeated receive errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_millis(100);

struct Waiter {
    question: Question,
    tx: oneshot::Sender<Reply>,
    /// A malformed reply to the question came: if no valid one follows
    /// within the try, the query fails as a bad reply, not a timeout.
    broken: bool,
}

/// Question sections up to this long are kept in the waiter itself: a
/// name of up to 58 bytes on the wire, which is nearly all of them, costs
/// no allocation of its own. The size makes a [`Question`] 64 bytes.
const INLINE_QUESTION: usize = 62;

/// The question section a reply must repeat.
enum Question {
    Inline {
        len: u8,
        bytes: [u8; INLINE_QUESTION],
    },
    Heap(Box<[u8]>),
}

impl Question {
    fn new(question: &[u8]) -> Self {
        match u8::try_from(question.len()) {
            Ok(len) if question.len() <= INLINE_QUESTION => {
                let mut bytes = [0; INLINE_QUESTION];
                bytes[..question.len()].copy_from_slice(question);
                Question::Inline { len, bytes }
            }
            _ => Question::Heap(question.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Question::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Question::Heap(bytes) => bytes,
        }
    }
}

struct Socket {
    sock: UdpSocket,
    pending: Mutex<Ids<Waiter>>,
    /// Queries sent on this socket: to sample the round-trip time, and to
    /// replace the socket after [`ROTATE_AFTER_QUERIES`].
    queries: AtomicU64,
    /// When the socket was opened, to replace it after [`ROTATE_AFTER`].
    opened: tokio::time::Instant,
    /// Replaced: takes no new query, and closes once `pending` is empty.
    retired: AtomicBool,
    /// Wakes the receive task of a retired socket when its last query is
    /// done.
    drained: Notify,
    /// System calls that read replies: how well receiving batches (tests).
    receive_calls: AtomicU64,
}

impl Socket {
    /// Opens a socket connected to `upstream`, on a port the kernel picks
    /// (at random within its ephemeral range).
    fn open(upstream: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        // Replies to a burst of queries arrive together; a larger receive
        // buffer (capped by net.core.rmem_max) keeps them from being
        // dropped before the receive task reads them.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(RECV_BUFFER);
        sock.connect(upstream)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock: UdpSocket::from_std(sock)?,
            pending: Mutex::new(Ids::default()),
            queries: AtomicU64::new(0),
            opened: tokio::time::Instant::now(),
            retired: AtomicBool::new(false),
            drained: Notify::new(),
            receive_calls: AtomicU64::new(0),
        })
    }

    /// Due for replacement at `now`: enough queries, or old enough.
    fn worn(&self, rotation: &Rotation, now: tokio::time::Instant) -> bool {
        self.queries.load(Ordering::Relaxed) >= rotation.queries
            || now.saturating_duration_since(self.opened) >= rotation.age
    }

    /// Wakes the receive task when the socket is retired and idle.
    fn wake_if_drained(&self, pending: &Ids<Waiter>) {
        if pending.is_empty() && self.retired.load(Ordering::Relaxed) {
            self.drained.notify_one();
        }
    }

    fn pending(&self) -> MutexGuard<'_, Ids<Waiter>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so poisoning is
        // ignored rather than spread.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When a socket is replaced.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    queries: u64,
    age: Duration,
}

/// Wait after a failure to open a new socket before the next attempt (the
/// worn socket goes on meanwhile): no attempt, and no warning, per query.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// One of the sockets taking new queries.
struct Slot {
    socket: Arc<Socket>,
    /// After a failure to open its replacement: not before then again.
    next_attempt: Option<tokio::time::Instant>,
}

/// The UDP sockets toward one upstream, their queries in flight, and the
/// measured round trip.
pub struct UdpTransport {
    upstream: SocketAddr,
    /// The sockets taking new queries; each slot's socket is replaced in
    /// place when worn.
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    rotation: Rotation,
    /// Ends every receive task when the transport is dropped.
    stop: CancellationToken,
    /// Smoothed round-trip time in microseconds (0: none measured yet).
    srtt_us: AtomicU32,
    /// The resend delay never exceeds this: half the try's timeout.
    resend_cap: Duration,
    stats: Arc<Stats>,
}

impl UdpTransport {
    /// Sockets toward `upstream`; `try_timeout` is the shortest time a try
    /// on it may get, which bounds the resend delay.
    pub async fn new(
        upstream: SocketAddr,
        stats: Arc<Stats>,
        try_timeout: Duration,
    ) -> std::io::Result<Self> {
        let rotation = Rotation {
            queries: ROTATE_AFTER_QUERIES,
            age: ROTATE_AFTER,
        };
        Self::with_rotation(upstream, stats, try_timeout, rotation)
    }

    fn with_rotation(
        upstream: SocketAddr,
        stats: Arc<Stats>,
        try_timeout: Duration,
        rotation: Rotation,
    ) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        // All opened before any receive task starts: an error leaves none.
        let sockets = (0..SOCKETS)
            .map(|_| Socket::open(upstream).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let slots = sockets
            .into_iter()
            .map(|socket| {
                tokio::spawn(receive_loop(
                    socket.clone(),
                    stats.clone(),
                    stop.child_token(),
                ));
                Mutex::new(Slot {
                    socket,
                    next_attempt: None,
                })
            })
            .collect();
        Ok(Self {
            upstream,
            slots,
            next: AtomicUsize::new(0),
            rotation,
            stop,
            srtt_us: AtomicU32::new(0),
            resend_cap: try_timeout / 2,
            stats,
        })
    }

    /// Registers `waiter` on the socket of the next slot, first replaced by
    /// one on a new port when worn (should the new socket fail to open, the
    /// worn one goes on, and the next query tries again). Registered under
    /// the slot's lock, under which sockets are retired: a retired socket
    /// never takes a query after its receive task has seen it drained.
    fn register(
        &self,
        waiter: Waiter,
        now: tokio::time::Instant,
    ) -> Result<(Arc<Socket>, Ticket), UpstreamError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // Poisoning is ignored: a slot is changed by whole assignments only.
        let mut slot = self.slots[index].lock().unwrap_or_else(|e| e.into_inner());
        let due =
            slot.socket.worn(&self.rotation, now) && slot.next_attempt.is_none_or(|at| now >= at);
        if due {
            match Socket::open(self.upstream) {
                Ok(fresh) => {
                    let fresh = Arc::new(fresh);
                    tokio::spawn(receive_loop(
                        fresh.clone(),
                        self.stats.clone(),
                        self.stop.child_token(),
                    ));
                    let old = std::mem::replace(&mut slot.socket, fresh);
                    slot.next_attempt = None;
                    old.retired.store(true, Ordering::Relaxed);
                    old.wake_if_drained(&old.pending());
                }
                Err(e) => {
                    slot.next_attempt = Some(now + REOPEN_BACKOFF);
                    tracing::warn!(upstream = %self.upstream, error = %e, "cannot open a UDP socket on a new port: the old one goes on");
                }
            }
        }
        let ticket = slot
            .socket
            .pending()
            .insert(waiter)
            .ok_or(UpstreamError::Busy)?;
        Ok((slot.socket.clone(), ticket))
    }

    /// How long to wait for a reply before sending the query again.
    fn resend_delay(&self) -> Duration {
        let srtt = Duration::from_micros(u64::from(self.srtt_us.load(Ordering::Relaxed)));
        (srtt * 4).max(MIN_RESEND).min(self.resend_cap)
    }

    /// Folds one measured round trip into the smoothed one (RFC 6298's 1/8).
    fn sample_rtt(&self, rtt: Duration) {
        let rtt = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        let old = self.srtt_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            rtt
        } else {
            let smoothed = (u64::from(old) * 7 + u64::from(rtt)) / 8;
            u32::try_from(smoothed).unwrap_or(u32::MAX)
        };
        self.srtt_us.store(new, Ordering::Relaxed);
    }

    /// Sends one query and waits for its matching reply until `deadline`,
    /// the end of the try: [`UpstreamError::Timeout`] then, or
    /// [`UpstreamError::BadReply`] when only malformed replies came. `start`
    /// is the caller's reading of the clock as it asked: the resend delay
    /// and the sampled round-trip time count from it.
    pub async fn exchange(
        &self,
        msg: &[u8],
        info: &QueryInfo,
        origin: &Origin,
        start: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, UpstreamError> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            question: Question::new(&msg[info.question.clone()]),
            tx,
            broken: false,
        };
        let (socket, ticket) = self.register(waiter, start)?;
        let socket = &*socket;
        let seq = socket.queries.fetch_add(1, Ordering::Relaxed);
        let mut guard = PendingGuard {
            socket,
            ticket,
            delivered: false,
        };
        let id = ticket.id;
        let out = if origin.has_proxy() {
            // The header precedes every datagram (PROXY v2 over UDP).
            let mut out = Vec::with_capacity(proxy_header::v2_len(255) + msg.len() + 64);
            origin.write_proxy(&mut out, proxy_header::Transport::Datagram);
            dns::write_upstream_query(&mut out, msg, info, id, false, origin.subnet());
            out
        } else {
            dns::upstream_query(msg, info, id, origin.subnet())
        };
        send(socket, &out).await?;
        // One query in RTT_SAMPLE is sampled: the clock is read again for
        // it only, at its reply.
        let sampled = seq.is_multiple_of(RTT_SAMPLE);
        // One timer per query: first the resend's, then moved to the end
        // of the try.
        let resend_at = start + self.resend_delay();
        let timer = tokio::time::sleep_until(resend_at.min(deadline));
        tokio::pin!(timer);
        let mut resent = resend_at >= deadline;
        let mut rx = rx;
        let reply = loop {
            tokio::select! {
                biased;
                reply = &mut rx => {
                    // A reply sent here was taken out of the map as it was.
                    guard.delivered = reply.is_ok();
                    break reply.map_err(|_| UpstreamError::Closed);
                }
                () = &mut timer => {
                    if resent {
                        let broken = socket
                            .pending()
                            .get_ticket(ticket)
                            .is_some_and(|w| w.broken);
                        return Err(if broken {
                            UpstreamError::BadReply
                        } else {
                            UpstreamError::Timeout
                        });
                    }
                    // Lost on the way, or just slow: either way, once more.
                    resent = true;
                    self.stats.upstream_udp_resends.inc();
                    send(socket, &out).await?;
                    timer.as_mut().reset(deadline);
                }
            }
        };
        let reply = reply?;
        if sampled {
            self.sample_rtt(start.elapsed());
        }
        Ok(reply)
    }
}

/// Sends one datagram: at once when the socket takes it, which it nearly
/// always does. A connected UDP socket reports an earlier ICMP "port
/// unreachable" on whichever call comes next; that error belongs to an old
/// datagram, not this one, so it is sent once more.
async fn send(socket: &Socket, out: &[u8]) -> Result<(), UpstreamError> {
    for attempt in 0..2 {
        match socket.sock.try_send(out) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && attempt == 0 => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    // The socket's buffer is full, or the runtime has not seen a new socket
    // writable yet: wait for it. Boxed: rare, and a waiting send's state
    // (about 230 bytes) would size every query's future.
    Box::pin(send_when_writable(socket, out)).await
}

/// [`send`], waiting until the socket takes the datagram.
async fn send_when_writable(socket: &Socket, out: &[u8]) -> Result<(), UpstreamError> {
    if let Err(e) = socket.sock.send(out).await {
        if e.kind() != std::io::ErrorKind::ConnectionRefused {
            return Err(e.into());
        }
        socket.sock.send(out).await?;
    }
    Ok(())
}

/// The pause after `errors` receive errors in a row: none for the first
/// few, then 1 ms doubling up to [`MAX_ERROR_BACKOFF`].
fn error_backoff(errors: u32) -> Option<Duration> {
    let over = errors.checked_sub(ERRORS_BEFORE_BACKOFF)?;
    let pause = Duration::from_millis(1).saturating_mul(1 << over.min(16));
    Some(pause.min(MAX_ERROR_BACKOFF))
}

impl Drop for UdpTransport {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Removes a waiter whose query was abandoned (timeout, client gone), but
/// never a later waiter that reuses the ID.
struct PendingGuard<'a> {
    socket: &'a Socket,
    ticket: Ticket,
    /// Its reply came: the receive task already took it out of the map.
    delivered: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        let mut pending = self.socket.pending();
        pending.remove_ticket(self.ticket);
        self.socket.wake_if_drained(&pending);
    }
}

/// Reads one socket's replies and hands each to its query, until the
/// transport is dropped or the socket, retired, has no query left.
async fn receive_loop(socket: Arc<Socket>, stats: Arc<Stats>, stop: CancellationToken) {
    let mut errors = 0u32;
    // Made once, not per datagram: waiting on them costs no allocation.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let drained = socket.drained.notified();
    tokio::pin!(drained);
    loop {
        let ready = tokio::select! {
            biased;
            ready = socket.sock.readable() => ready,
            () = &mut drained => {
                if socket.retired.load(Ordering::Relaxed) && socket.pending().is_empty() {
                    return;
                }
                drained.set(socket.drained.notified());
                continue;
            }
            () = &mut stopped => return,
        };
        // Between two awaits: the thread's buffers are free.
        match ready.and_then(|()| receive_ready(&socket, &stats)) {
            Ok(()) => errors = 0,
            Err(e) => {
                // ICMP port unreachable shows up here as ECONNREFUSED on a
                // connected socket: the upstream is down, the queries time
                // out, and the socket stays usable. Any error that repeats
                // (this one included) slows the loop down rather than spin.
                tracing::debug!(error = %e, "upstream UDP receive error");
                errors = errors.saturating_add(1);
                if let Some(pause) = error_backoff(errors) {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
thread_local! {
    /// The receive buffers of this worker thread, lent to one receive task
    /// at a time between two of its awaits (188 KiB per thread, where a
    /// 64 KiB buffer per socket was).
    static BATCH: std::cell::RefCell<batch::Batch> = std::cell::RefCell::new(batch::Batch::new());
}

/// Reads one batch of the replies waiting on a socket found readable (up
/// to [`batch::CAPACITY`] in one `recvmmsg`), and hands each to its query.
/// A full batch leaves the socket marked readable, so the loop comes back
/// at once (within tokio's cooperative budget); a batch that found the
/// socket empty clears the mark, which spares the call that would only
/// learn so.
#[cfg(target_os = "linux")]
fn receive_ready(socket: &Socket, stats: &Stats) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    BATCH.with_borrow_mut(|batch| {
        let read = socket.sock.try_io(tokio::io::Interest::READABLE, || {
            socket.receive_calls.fetch_add(1, Ordering::Relaxed);
            if batch.receive(socket.sock.as_fd())? {
                // recvmmsg with MSG_DONTWAIT stops short only where the
                // socket ran empty: what tokio's WouldBlock means.
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        for datagram in batch.datagrams() {
            match datagram {
                batch::Datagram::Whole(reply) => deliver(socket, stats, reply),
                batch::Datagram::Truncated(start) => deliver_truncated(socket, stats, start),
            }
        }
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    })
}

#[cfg(not(target_os = "linux"))]
thread_local! {
    /// The receive buffer of this worker thread, lent to one receive task
    /// at a time between two of its awaits.
    static BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// Reads one reply waiting on a socket found readable, and hands it to its
/// query (one datagram per system call where `recvmmsg` is not available).
#[cfg(not(target_os = "linux"))]
fn receive_ready(socket: &Socket, stats: &Stats) -> std::io::Result<()> {
    BUFFER.with_borrow_mut(|buf| {
        socket.receive_calls.fetch_add(1, Ordering::Relaxed);
        match socket.sock.try_recv(buf) {
            Ok(n) => {
                deliver(socket, stats, &buf[..n]);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    })
}

/// Hands one datagram to the query waiting on its ID, if it is a reply to
/// that query's question; anything else is counted and ignored.
fn deliver(socket: &Socket, stats: &Stats, reply: &[u8]) {
    if reply.len() < dns::HEADER_LEN {
        stats.mismatched_replies.inc();
        return;
    }
    let id = dns::id(reply);
    let mut pending = socket.pending();
    let Some(waiter) = pending.get_mut(id) else {
        drop(pending);
        stats.mismatched_replies.inc();
        tracing::debug!(id, "upstream reply with an ID not in use: ignored");
        return;
    };
    match classify(reply, waiter.question.as_bytes()) {
        Verdict::Reply(result) => {
            if let Some(waiter) = pending.remove(id) {
                socket.wake_if_drained(&pending);
                drop(pending);
                // The receiver may have given up (timeout): nothing to do.
                let _ = waiter.tx.send(result);
            }
        }
        Verdict::Broken => {
            waiter.broken = true;
            drop(pending);
            stats.upstream_bad_replies.inc();
            tracing::debug!(id, "malformed upstream reply: waiting for a valid one");
        }
        Verdict::Mismatch => {
            drop(pending);
            stats.mismatched_replies.inc();
            tracing::debug!(id, "upstream reply whose question does not match: ignored");
        }
    }
}

/// A datagram longer than its receive buffer (and than the 1,232 bytes
/// dotgate asks for), of which only `start` was kept, is never passed on as
/// it is: its query gets the reply's header and question with TC set and no
/// records, the form of a truncated answer, under the same rules as any
/// reply (ID in use, same question), and is retried over TCP, where length
/// is no limit (`dotgate_upstream_tc_fallbacks_total`). Without its
/// question, it is counted and ignored as any stray datagram.
#[cfg(target_os = "linux")]
fn deliver_truncated(socket: &Socket, stats: &Stats, start: &[u8]) {
    let question_len = match start.get(..dns::HEADER_LEN) {
        Some(header) => socket
            .pending()
            .get_mut(dns::id(header))
            .map(|waiter| waiter.question.as_bytes().len()),
        None => None,
    };
    let Some(stub) = question_len.and_then(|len| truncated_reply(start, len)) else {
        stats.mismatched_replies.inc();
        tracing::debug!(
            "upstream reply too long for its buffer, without a question in use: ignored"
        );
        return;
    };
    tracing::debug!("upstream reply too long for its buffer: passed on as truncated, for TCP");
    deliver(socket, stats, &stub);
}

/// The header of `start` with TC set and only the question (of
/// `question_len` bytes) counted, then that question.
#[cfg(target_os = "linux")]
fn truncated_reply(start: &[u8], question_len: usize) -> Option<Vec<u8>> {
    let question = start.get(dns::HEADER_LEN..dns::HEADER_LEN + question_len)?;
    let mut stub = Vec::with_capacity(dns::HEADER_LEN + question_len);
    stub.extend_from_slice(&start[..4]);
    stub[2] |= 0x02;
    stub.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    stub.extend_from_slice(question);
    Some(stub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_back_off_up_to_a_cap() {
        assert_eq!(error_backoff(1), None);
        assert_eq!(error_backoff(ERRORS_BEFORE_BACKOFF - 1), None);
        assert_eq!(
            error_backoff(ERRORS_BEFORE_BACKOFF),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            error_backoff(ERRORS_BEFORE_BACKOFF + 3),
            Some(Duration::from_millis(8))
        );
        assert_eq!(error_backoff(u32::MAX), Some(MAX_ERROR_BACKOFF));
    }

    #[test]
    fn questions_are_kept_whole_inline_or_not() {
        assert_eq!(std::mem::size_of::<Question>(), 64);
        for len in [
            0,
            5,
            21,
            INLINE_QUESTION - 1,
            INLINE_QUESTION,
            INLINE_QUESTION + 1,
            259,
        ] {
            let question: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let kept = Question::new(&question);
            assert_eq!(kept.as_bytes(), question.as_slice(), "{len} bytes");
            assert_eq!(
                matches!(kept, Question::Inline { .. }),
                len <= INLINE_QUESTION,
                "{len} bytes"
            );
        }
    }

    /// A query for `name` (A, no OPT) and what dotgate reads of it.
    fn query(name: &str) -> (Vec<u8>, QueryInfo) {
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let info = dns::parse_query(&q).unwrap();
        (q, info)
    }

    fn no_proxy() -> Origin {
        Origin::own(&crate::config::ClientToUpstream {
            proxy_protocol: false,
            subnet: None,
        })
    }

    /// An upstream on loopback that answers each query with itself as the
    /// reply (QR set), except names starting with `slow`, held until
    /// `release` is notified; it records the source port of every query.
    async fn echo_upstream(
        release: Arc<Notify>,
    ) -> (
        SocketAddr,
        Arc<Mutex<Vec<u16>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let ports = Arc::new(Mutex::new(Vec::new()));
        let seen = ports.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                seen.lock().unwrap().push(peer.port());
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80;
                let (sock, release) = (sock.clone(), release.clone());
                tokio::spawn(async move {
                    if reply[13..17] == *b"slow" {
                        release.notified().await;
                    }
                    let _ = sock.send_to(&reply, peer).await;
                });
            }
        });
        (addr, ports, task)
    }

    fn rotating(upstream: SocketAddr, queries: u64) -> UdpTransport {
        let rotation = Rotation {
            queries,
            age: Duration::from_secs(3600),
        };
        UdpTransport::with_rotation(
            upstream,
            Arc::new(Stats::new().unwrap()),
            Duration::from_secs(2),
            rotation,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sockets_move_to_new_ports_and_replies_keep_matching() {
        let (upstream, ports, _task) = echo_upstream(Arc::new(Notify::new())).await;
        let udp = rotating(upstream, 5);
        for i in 0..100 {
            let (q, info) = query(&format!("q{i}.example"));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let reply = udp
                .exchange(
                    &q,
                    &info,
                    &no_proxy(),
                    tokio::time::Instant::now(),
                    deadline,
                )
                .await;
            let Ok(Reply::Message(reply)) = reply else {
                panic!("query {i}: {reply:?}");
            };
            assert_eq!(reply[12..q.len()], q[12..], "its own question");
        }
        let distinct: std::collections::HashSet<u16> =
            ports.lock().unwrap().iter().copied().collect();
        // 100 queries, 5 per socket: 20 sockets, on ports the kernel picked.
        assert!(distinct.len() >= 15, "{} source ports", distinct.len());
    }

    #[tokio::test]
    async fn a_replaced_socket_answers_its_queries_then_closes() {
        let release = Arc::new(Notify::new());
        let (upstream, _ports, _task) = echo_upstream(release.clone()).await;
        let udp = rotating(upstream, 3);
        let originals: Vec<_> = udp
            .slots
            .iter()
            .map(|slot| Arc::downgrade(&slot.lock().unwrap().socket))
            .collect();
        let first = originals[0].clone();
        let (slow, slow_info) = query("slow.example");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let origin = no_proxy();
        let waiting = udp.exchange(
            &slow,
            &slow_info,
            &origin,
            tokio::time::Instant::now(),
            deadline,
        );
        let others = async {
            // Enough queries to replace every socket, the slow one's too.
            for i in 0..40 {
                let (q, info) = query(&format!("q{i}.example"));
                let reply = udp
                    .exchange(&q, &info, &origin, tokio::time::Instant::now(), deadline)
                    .await;
                assert!(matches!(reply, Ok(Reply::Message(_))), "{reply:?}");
            }
            assert!(
                !Arc::ptr_eq(
                    &first.upgrade().unwrap(),
                    &udp.slots[0].lock().unwrap().socket
                ),
                "replaced"
            );
            release.notify_one();
        };
        let (reply, ()) = tokio::join!(waiting, others);
        let Ok(Reply::Message(reply)) = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(
            reply[12..slow.len()],
            slow[12..],
            "answered on the replaced socket"
        );
        // The receive tasks of the replaced sockets end, and the sockets
        // with them: the slow one's after its answer, the others' at once.
        let closed_by = tokio::time::Instant::now() + Duration::from_secs(2);
        while originals.iter().any(|socket| socket.upgrade().is_some()) {
            assert!(tokio::time::Instant::now() < closed_by, "still open");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_is_worn_by_queries_or_by_age() {
        let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let socket = Socket::open(upstream).unwrap();
        let rotation = Rotation {
            queries: 3,
            age: Duration::from_secs(10),
        };
        assert!(!socket.worn(&rotation, tokio::time::Instant::now()));
        socket.queries.store(3, Ordering::Relaxed);
        assert!(socket.worn(&rotation, tokio::time::Instant::now()));
        socket.queries.store(0, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!socket.worn(&rotation, tokio::time::Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            socket.worn(&rotation, tokio::time::Instant::now()),
            "ten seconds old"
        );
    }

    #[tokio::test]
    async fn resend_delay_follows_the_rtt_within_bounds() {
        let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let udp = UdpTransport::new(
            upstream,
            Arc::new(Stats::new().unwrap()),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(udp.resend_delay(), MIN_RESEND, "nothing measured yet");
        udp.sample_rtt(Duration::from_millis(1));
        assert_eq!(udp.resend_delay(), MIN_RESEND, "a fast LAN: the floor");
        for _ in 0..50 {
            udp.sample_rtt(Duration::from_millis(200));
        }
        let delay = udp.resend_delay();
        assert!(
            delay > Duration::from_millis(700) && delay <= Duration::from_secs(1),
            "{delay:?}"
        );
        for _ in 0..50 {
            udp.sample_rtt(Duration::from_secs(5));
        }
        assert_eq!(
            udp.resend_delay(),
            Duration::from_secs(1),
            "half the try's timeout"
        );
    }

    /// Where the question section of `msg` ends.
    fn question_end(msg: &[u8]) -> usize {
        let mut at = dns::HEADER_LEN;
        while msg[at] != 0 {
            at += 1 + usize::from(msg[at]);
        }
        at + 5
    }

    /// The reply to `query`: itself with QR set, grown to `size` bytes by
    /// an answer of type NULL when `size` is larger.
    fn reply_of(query: &[u8], size: usize) -> Vec<u8> {
        let mut reply = query.to_vec();
        reply[2] |= 0x80;
        if size > reply.len() {
            let end = question_end(&reply);
            let rdata = size - reply.len() - 12;
            let mut record = vec![0xc0, 12, 0, 10, 0, 1, 0, 0, 0, 60];
            record.extend_from_slice(&u16::try_from(rdata).unwrap().to_be_bytes());
            record.resize(record.len() + rdata, 0x5a);
            reply.splice(end..end, record);
            reply[6..8].copy_from_slice(&1u16.to_be_bytes());
        }
        reply
    }

    /// An upstream on loopback, in a thread of its own, that holds its
    /// replies until it has `count` distinct queries (a resend is not
    /// counted twice), says so, waits for `go`, then sends every reply
    /// back to back (the k-th to each source port `size(k)` bytes long)
    /// and says so again.
    struct BurstUpstream {
        addr: SocketAddr,
        collected: oneshot::Receiver<()>,
        go: std::sync::mpsc::Sender<()>,
        sent: std::sync::mpsc::Receiver<()>,
    }

    fn burst_upstream(count: usize, size: fn(usize) -> usize) -> BurstUpstream {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let (collected_tx, collected) = oneshot::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let (sent_tx, sent) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut queries: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            let mut buf = [0u8; 2048];
            while queries.len() < count {
                // A timeout ends the thread, and the test fails waiting.
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    return;
                };
                let query = buf[..n].to_vec();
                if !queries
                    .iter()
                    .any(|(p, seen)| *p == peer && seen[..2] == query[..2])
                {
                    queries.push((peer, query));
                }
            }
            let _ = collected_tx.send(());
            if go_rx.recv().is_err() {
                return;
            }
            let mut per_port = std::collections::HashMap::<u16, usize>::new();
            for (peer, query) in &queries {
                let k = per_port.entry(peer.port()).or_default();
                sock.send_to(&reply_of(query, size(*k)), peer).unwrap();
                *k += 1;
            }
            let _ = sent_tx.send(());
        });
        BurstUpstream {
            addr,
            collected,
            go,
            sent,
        }
    }

    /// What each query got back.
    type Answered = Vec<(Vec<u8>, Result<Reply, UpstreamError>)>;

    /// Sends `count` queries at once and has them answered in one burst,
    /// sent while this test's only runtime thread is held: every reply is
    /// queued on its socket before any receive task reads.
    async fn exchange_in_one_burst(
        count: usize,
        size: fn(usize) -> usize,
    ) -> (Arc<UdpTransport>, Answered) {
        let upstream = burst_upstream(count, size);
        let udp = Arc::new(rotating(upstream.addr, 1_000_000));
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let udp = udp.clone();
                tokio::spawn(async move {
                    let (q, info) = query(&format!("q{i}.example"));
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    let reply = udp
                        .exchange(
                            &q,
                            &info,
                            &no_proxy(),
                            tokio::time::Instant::now(),
                            deadline,
                        )
                        .await;
                    (q, reply)
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(10), upstream.collected)
            .await
            .unwrap()
            .unwrap();
        upstream.go.send(()).unwrap();
        // Blocks the runtime's one thread, receive tasks included.
        upstream.sent.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut answered = Vec::new();
        for task in tasks {
            answered.push(task.await.unwrap());
        }
        (udp, answered)
    }

    fn receive_calls(udp: &UdpTransport) -> u64 {
        udp.slots
            .iter()
            .map(|slot| {
                slot.lock()
                    .unwrap()
                    .socket
                    .receive_calls
                    .load(Ordering::Relaxed)
            })
            .sum()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_burst_of_replies_is_read_in_batches_each_to_its_query() {
        let (udp, answered) = exchange_in_one_burst(200, |_| 0).await;
        for (q, reply) in &answered {
            let Ok(Reply::Message(reply)) = reply else {
                panic!("{reply:?}");
            };
            assert_eq!(reply[12..q.len()], q[12..], "its own question");
        }
        // 50 replies queued on each of the 4 sockets: two reads each
        // (32 + 18), where one per datagram made 200.
        let calls = receive_calls(&udp);
        assert!(calls <= 12, "{calls} receive calls for 200 replies");
    }

    #[tokio::test]
    async fn a_large_reply_is_delivered_whole() {
        // One 30,000-byte reply on each socket.
        let (_udp, answered) = exchange_in_one_burst(4, |_| 30_000).await;
        for (q, reply) in &answered {
            let Ok(Reply::Message(reply)) = reply else {
                panic!("{reply:?}");
            };
            assert_eq!(reply.len(), 30_000);
            assert_eq!(reply[12..q.len()], q[12..], "its own question");
            let answer = reply[q.len()..].iter().filter(|&&b| b == 0x5a).count();
            assert!(answer >= 29_900, "{answer} bytes of the answer");
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_reply_too_long_for_its_buffer_comes_back_truncated_for_tcp() {
        // Two replies queued on each socket, read together: a short one,
        // then one longer than any buffer but the first.
        let (udp, answered) =
            exchange_in_one_burst(8, |k| if k == 0 { 0 } else { batch::SLOT + 1000 }).await;
        let mut truncated = 0;
        for (q, reply) in &answered {
            let Ok(Reply::Message(reply)) = reply else {
                panic!("{reply:?}");
            };
            assert_eq!(reply[12..q.len()], q[12..], "its own question");
            if dns::is_truncated(reply) {
                truncated += 1;
                assert_eq!(reply.len(), q.len(), "header and question only");
                assert_eq!(reply[6..12], [0; 6], "no records");
            } else {
                assert!(reply.len() < batch::SLOT, "{} bytes", reply.len());
            }
        }
        assert_eq!(truncated, 4, "the second reply on each socket");
        assert_eq!(receive_calls(&udp), 4, "one read per socket");
    }
}
