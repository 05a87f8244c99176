//! The server side of one TLS connection, on rustls' unbuffered API, so
//! that the connection's buffers are its own and an idle one holds none.
//!
//! Why not tokio-rustls' stream: rustls' buffered `ServerConnection` keeps
//! a receive buffer of at least 4 KiB for its whole life, which was the
//! largest single part of an idle DoT connection. Here the socket is read
//! into one scratch buffer per thread, and a connection keeps only what it
//! could not finish with: the part of a record that has not all arrived,
//! the records of a handshake message that has not all arrived, decrypted
//! bytes its reader has not taken yet, and encrypted bytes the socket has
//! not taken yet. Between messages all of them are empty and hold no memory.
//!
//! [`accept()`] runs the handshake: it reads the ClientHello first, through a
//! throwaway [`Acceptor`], to pick the configuration (ALPN, see
//! [`super::ServerConfigs::for_client`]), then hands the same bytes to the real
//! connection. [`ServerStream`] then reads and writes like any stream.
//! The handshake lives in `accept.rs`, the stream's own tests in `tests.rs`.
//!
//! Invariants (each one a defect once found under attack):
//! * rustls is given one record at a time ([`records::next`]), so that what
//!   it holds (`incoming[..held]`, a handshake message being reassembled in
//!   place) and what it has not seen are always known; what it holds is
//!   capped at [`records::MAX_HELD`], like rustls' own buffered reader;
//! * one state machine, `ServerStream::pump`, drives rustls for reading,
//!   writing and closing;
//! * after the first TLS error the stream is failed: rustls is never given
//!   input again (its buffers would no longer match it), the fatal alert it
//!   queued is sent, or one is provoked where it queued none
//!   ([`records::Provoke`]); reads and writes fail, shutdown only flushes;
//! * a close sends close_notify and FIN, then reads and discards what the
//!   client still sends until it closes or [`LINGER`] passes, so the kernel
//!   never answers unread bytes with a reset that would destroy replies
//!   the client has not read yet ("lingering close", as HTTP servers do).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
};
use rustls::{
    AlertDescription, CommonState, Error as RustlsError, HandshakeKind, PeerMisbehaved,
    ProtocolVersion, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::records::{self, Next, Provoke, HEADER_LEN, MAX_HELD};

mod accept;
#[cfg(test)]
mod tests;

pub use accept::{accept, AcceptError, Refused};

/// How much one read from a socket may take: two of the largest records,
/// so that a burst of queries is decrypted in one go.
const SCRATCH: usize = 2 * (5 + 16 * 1024 + 256);

/// Encrypted bytes a writer may leave unsent before it waits for the
/// socket: a few batches of replies.
const OUTGOING_HIGH: usize = 64 * 1024;

/// How long a closed connection keeps reading (and discarding) what the
/// client still sends, waiting for its FIN: long enough for a client to
/// read our close_notify and close (a round trip or two), short enough that
/// a client that never closes costs little. Apache's lingering close waits
/// 2 s as well.
pub const LINGER: Duration = Duration::from_secs(2);

/// A bound on the steps of one [`ServerStream::pump`]: each step takes
/// bytes, yields output or changes state, and one record takes a handful;
/// this only guards against a rustls that stops making progress.
const MAX_STEPS: usize = 1 << 20;

thread_local! {
    /// Where each worker thread reads sockets into: the bytes are decrypted
    /// (or copied to the connection, for an incomplete record) before the
    /// read returns, so one buffer serves every connection of the thread.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Why a TLS connection failed. Carried inside the `io::Error`s the stream
/// returns (kind `InvalidData`), for the caller to count.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TlsFailure {
    /// rustls refused what the peer sent.
    #[error("TLS error: {0}")]
    Protocol(RustlsError),
    /// A handshake message held more than [`MAX_HELD`] bytes of records
    /// before it was complete.
    #[error("a TLS handshake message held over {MAX_HELD} bytes before it was complete")]
    HandshakeTooLarge,
    /// rustls reached a state this stream does not handle.
    #[error("TLS: {0}")]
    Internal(&'static str),
}

impl TlsFailure {
    /// The failure an `io::Error` from this stream carries, if it is one.
    pub fn of(e: &io::Error) -> Option<&TlsFailure> {
        e.get_ref()?.downcast_ref::<Failed>().map(|f| &f.cause)
    }
}

/// A failed stream's record: why, and whether the peer was sent a fatal
/// alert.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{cause}{}", if *.alert_sent { "" } else { " (no alert sent)" })]
struct Failed {
    cause: TlsFailure,
    alert_sent: bool,
}

impl Failed {
    fn io(&self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self.clone())
    }
}

/// How far a close has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Open,
    /// close_notify is queued (or the stream failed and will send no more).
    Queued,
    /// FIN sent; reading and discarding until the peer's FIN or [`LINGER`].
    Lingering,
    Done,
}

/// What [`ServerStream::pump`] does once rustls has taken every whole record.
#[derive(Clone, Copy)]
enum Then<'a> {
    Read,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// What rustls stopped on, for the pump's loop.
enum Step {
    /// Call rustls again on the same bytes.
    Again,
    /// rustls took all it was given: give it the next record, or finish.
    Took,
    /// Finished (the `Then` is done, or the connection is closed).
    Done,
}

/// Where a failed pump stood in its buffer, to provoke an alert from there.
struct Stuck {
    cause: TlsFailure,
    /// Where rustls' view of the buffer started.
    origin: usize,
    /// How to send an alert where rustls queued none.
    remedy: Option<Remedy>,
}

/// An alert for an error rustls queued none for.
enum Remedy {
    /// Hand rustls the bytes of its view up to the first field, then this
    /// record: it refuses it with an alert of its own, under its keys.
    Provoke(usize, Provoke),
    /// Write this fatal alert as a plaintext record (the server has not
    /// started encrypting).
    Plaintext(AlertDescription),
}

/// One server-side TLS connection after its handshake, over a TCP socket
/// (or, in tests and the fuzzer, any byte stream).
pub struct ServerStream<S = TcpStream> {
    tcp: S,
    conn: UnbufferedServerConnection,
    /// Received bytes: `incoming[..held]` are records rustls has processed
    /// but not released (a handshake message being reassembled in place,
    /// which its offsets point into); the rest is the start of a record
    /// that has not all arrived.
    incoming: Vec<u8>,
    held: usize,
    /// Decrypted bytes the reader has not taken: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken: `outgoing[out_at..]`.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify: no more data will come.
    peer_closed: bool,
    /// The socket reached its end (FIN).
    eof: bool,
    close: Close,
    /// Boxed: a rustls error is large, and most streams never fail.
    failed: Option<Box<Failed>>,
    /// While part of a record is held: when it must be complete (the read
    /// timeout). While lingering: when to stop. Boxed and only then, so an
    /// idle stream holds no timer.
    timer: Option<Pin<Box<Sleep>>>,
    read_timeout: Duration,
}

/// The alert for an error rustls queued none for, written in plaintext
/// during a handshake: what RFC 8446 §6.2 names for the kind of error.
fn plaintext_alert_for(error: &RustlsError) -> AlertDescription {
    match error {
        RustlsError::InvalidMessage(_) => AlertDescription::DecodeError,
        RustlsError::InappropriateMessage { .. }
        | RustlsError::InappropriateHandshakeMessage { .. }
        | RustlsError::PeerMisbehaved(_) => AlertDescription::UnexpectedMessage,
        _ => AlertDescription::HandshakeFailure,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerStream<S> {
    /// The negotiated TLS session (version, resumption, ALPN).
    pub fn session(&self) -> &CommonState {
        &self.conn
    }

    /// Bytes of buffer this stream holds besides rustls' own state (for
    /// tests: zero between messages).
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    /// Drives rustls over what `incoming` holds, then does `then`; the
    /// stream fails at the first error (see [`ServerStream::fail`]).
    fn pump(&mut self, then: Then<'_>) -> io::Result<()> {
        if let Some(failed) = &self.failed {
            return Err(failed.io());
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        match self.run(&mut incoming, then) {
            Ok(left) => {
                incoming.drain(..left);
                // No memory kept once nothing is left.
                self.incoming = if incoming.is_empty() {
                    Vec::new()
                } else {
                    incoming
                };
                Ok(())
            }
            Err(stuck) => Err(self.fail(&incoming, stuck)),
        }
    }

    /// [`ServerStream::pump`] over bytes just read into `scratch`, when
    /// `incoming` is empty (the usual case: whole records, processed in
    /// place); only what is left is copied.
    fn pump_scratch(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        debug_assert!(self.incoming.is_empty() && self.held == 0);
        if let Some(failed) = &self.failed {
            return Err(failed.io());
        }
        match self.run(scratch, Then::Read) {
            Ok(left) => {
                self.incoming.extend_from_slice(&scratch[left..]);
                Ok(())
            }
            Err(stuck) => Err(self.fail(scratch, stuck)),
        }
    }

    /// The state machine: gives rustls one record of `buf` at a time
    /// (`buf[..self.held]` being what it already holds), handles every
    /// state it returns, and once it has taken every whole record does
    /// `then`. Returns where what is left starts (`buf[left..]`: what rustls
    /// holds, then the start of a record).
    fn run(&mut self, buf: &mut [u8], then: Then<'_>) -> Result<usize, Stuck> {
        // rustls' view is `buf[origin..end]`: `origin` moves past what it
        // releases, `end` past each record it is given.
        let mut origin = 0;
        let mut end = self.held;
        let mut took = true;
        for _ in 0..MAX_STEPS {
            if took && !self.peer_closed {
                match records::next(&buf[end..]) {
                    Next::Record(len) => end += len,
                    // Refused by rustls on its header, with its alert.
                    Next::BadHeader => end += HEADER_LEN,
                    Next::Partial => {}
                }
            }
            // Whether a whole record waits after this one.
            let more_after = !matches!(records::next(&buf[end..]), Next::Partial);
            let record = origin + self.held;
            let status = self.conn.process_tls_records(&mut buf[origin..end]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(error) => {
                    let remedy = self.provocation(&error, origin, record, end, discard);
                    return Err(Stuck {
                        cause: TlsFailure::Protocol(error),
                        origin: origin + discard,
                        remedy,
                    });
                }
            };
            let more = more_after && !self.peer_closed;
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    keep_plaintext(&mut self.plain, &mut traffic)
                        .map_err(|cause| Stuck::without_alert(cause, origin + discard))?;
                    Step::Again
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode_into(&mut self.outgoing, &mut data)
                        .map_err(|cause| Stuck::without_alert(cause, origin + discard))?;
                    Step::Again
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes wait in `outgoing` until the next send.
                    transmit.done();
                    Step::Again
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Step::Again
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    if !matches!(then, Then::Read) {
                        return Err(Stuck::without_alert(
                            TlsFailure::Internal("the TLS connection is closed"),
                            origin + discard,
                        ));
                    }
                    Step::Done
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) if more => {
                    Step::Took
                }
                ConnectionState::BlockedHandshake => {
                    check_held(origin + discard, end)?;
                    if !matches!(then, Then::Read) {
                        return Err(Stuck::without_alert(
                            TlsFailure::Internal("write before the handshake finished"),
                            origin + discard,
                        ));
                    }
                    Step::Done
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    check_held(origin + discard, end)?;
                    let data = match then {
                        Then::Read => None,
                        Then::Encrypt(data) => Some(data),
                        Then::CloseNotify => {
                            self.close = Close::Queued;
                            None
                        }
                    };
                    if !matches!(then, Then::Read) {
                        encrypt_into(&mut self.outgoing, &mut traffic, data)
                            .map_err(|cause| Stuck::without_alert(cause, origin + discard))?;
                    }
                    Step::Done
                }
                // Early data is never enabled, and future states are unknown.
                _ => {
                    return Err(Stuck::without_alert(
                        TlsFailure::Internal("unexpected TLS state"),
                        origin + discard,
                    ))
                }
            };
            origin += discard;
            match step {
                Step::Again => took = false,
                Step::Took => {
                    self.held = end - origin;
                    took = true;
                }
                Step::Done => {
                    if self.peer_closed {
                        // rustls reads nothing after close_notify.
                        self.held = 0;
                        return Ok(buf.len());
                    }
                    self.held = end - origin;
                    return Ok(origin);
                }
            }
        }
        Err(Stuck::without_alert(
            TlsFailure::Internal("TLS made no progress"),
            origin,
        ))
    }

    /// Where rustls fails without an alert of its own, how to send one: the
    /// one the RFC names where a record can make rustls send it, a
    /// plaintext one while the server still writes in plaintext, and
    /// otherwise `decode_error`, provoked. Never an answer to the peer's own
    /// alert.
    fn provocation(
        &self,
        error: &RustlsError,
        origin: usize,
        record: usize,
        end: usize,
        discard: usize,
    ) -> Option<Remedy> {
        match error {
            RustlsError::AlertReceived(_) => None,
            // rustls refused the record at `record` before taking it (it
            // was decrypted, so it cannot be given again).
            RustlsError::PeerMisbehaved(
                PeerMisbehaved::MessageInterleavedWithHandshakeMessage
                | PeerMisbehaved::IllegalTlsInnerPlaintext
                | PeerMisbehaved::TooManyEmptyFragments,
            ) if discard == 0 => {
                let provoke = if record == origin {
                    Provoke::UnexpectedMessage {
                        tls13_handshake: self.conn.is_handshaking()
                            && self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3),
                    }
                } else {
                    // Mid-message, rustls refuses any non-handshake record
                    // without an alert; a bad header still gets one.
                    Provoke::DecodeError
                };
                Some(Remedy::Provoke(record, provoke))
            }
            // Before a TLS 1.2 server's ChangeCipherSpec (or before any
            // ServerHello) its records are plaintext: the alert can be
            // written as such, and say what went wrong (a TLS 1.2 client
            // with no signature scheme for the certificate's key, a key
            // exchange that does not decode).
            _ if self.writes_plaintext() => Some(Remedy::Plaintext(plaintext_alert_for(error))),
            // Anything else: rustls has taken the bytes up to `end`, and
            // refuses a bad header after them with `decode_error`, under
            // whatever keys it writes with.
            _ => Some(Remedy::Provoke(end, Provoke::DecodeError)),
        }
    }

    /// Whether the server still writes plaintext records: during a TLS 1.2
    /// full handshake (it encrypts from its ChangeCipherSpec, the last
    /// thing it sends), or before the version is chosen.
    fn writes_plaintext(&self) -> bool {
        self.conn.is_handshaking()
            && match self.conn.protocol_version() {
                None => true,
                Some(ProtocolVersion::TLSv1_2) => {
                    self.conn.handshake_kind() != Some(HandshakeKind::Resumed)
                }
                Some(_) => false,
            }
    }

    /// Ends the stream at its first error: the fatal alert rustls queued
    /// goes to `outgoing` (or one is provoked where it queued none), and
    /// from now on rustls is never given input again, reads and writes
    /// fail, and shutdown only flushes. `buf` is the buffer rustls failed
    /// on.
    fn fail(&mut self, buf: &[u8], stuck: Stuck) -> io::Error {
        let mut alert_sent = self.drain_queued();
        if !alert_sent && self.close == Close::Open {
            match stuck.remedy {
                Some(Remedy::Provoke(keep, provoke)) => {
                    let mut view = buf[stuck.origin..keep].to_vec();
                    view.extend_from_slice(provoke.bytes());
                    let status = self.conn.process_tls_records(&mut view);
                    if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
                        alert_sent = encode_into(&mut self.outgoing, &mut data).is_ok();
                    }
                    alert_sent |= self.drain_queued();
                }
                Some(Remedy::Plaintext(alert)) => {
                    self.outgoing
                        .extend_from_slice(&records::plaintext_alert(alert));
                    alert_sent = true;
                }
                None => {}
            }
        }
        self.incoming = Vec::new();
        self.held = 0;
        self.plain = Vec::new();
        self.plain_at = 0;
        self.timer = None;
        let failed = Failed {
            cause: stuck.cause,
            alert_sent,
        };
        let error = failed.io();
        self.failed = Some(Box::new(failed));
        error
    }

    /// Encodes what rustls has queued to send (a fatal alert, after an
    /// error) into `outgoing`. rustls is called only while it has something
    /// queued: it then returns before it looks at its input, so the empty
    /// buffer given is never read. Returns whether anything was queued.
    fn drain_queued(&mut self) -> bool {
        let before = self.outgoing.len();
        for _ in 0..64 {
            if !self.conn.wants_write() {
                break;
            }
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode_into(&mut self.outgoing, &mut data).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    // Decrypted before the failure: never handed out.
                    while traffic.next_record().is_some() {}
                }
                _ => break,
            }
        }
        self.outgoing.len() > before
    }

    /// Reads what the socket has into the thread's scratch buffer and
    /// processes it. `Ready(Ok(false))` at the socket's end. Part of a
    /// record held longer than the read timeout ends the stream
    /// (`TimedOut`): a record once begun must finish, like a DNS message.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if let Some(failed) = &self.failed {
            return Poll::Ready(Err(failed.io()));
        }
        // What rustls has not seen yet: the start of a record.
        let unseen_before = self.incoming.len() - self.held;
        let received = SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                self.eof = true;
                return Poll::Ready(Ok(0));
            }
            if self.incoming.is_empty() {
                self.pump_scratch(&mut scratch[..n])?;
            } else {
                self.incoming.extend_from_slice(&scratch[..n]);
                self.pump(Then::Read)?;
            }
            Poll::Ready(Ok(n))
        });
        let received = match received {
            Poll::Ready(received) => received,
            // Nothing more has come: the deadline of what is held is
            // judged only now, so that time this connection spent not
            // reading (its in-flight limit reached) is not held against
            // the client.
            Poll::Pending => {
                if let Some(timer) = self.timer.as_mut() {
                    if timer.as_mut().poll(cx).is_ready() {
                        self.timer = None;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "a TLS record was not complete within the read timeout",
                        )));
                    }
                }
                return Poll::Pending;
            }
        };
        let n = match received {
            Ok(0) => return Poll::Ready(Ok(false)),
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        // The read timeout bounds each record (and a handshake message
        // from its first record), not the time since the buffer was last
        // empty: a busy connection's reads often end inside a record.
        let took_a_record = self.incoming.len() - self.held < unseen_before + n;
        if self.incoming.is_empty() {
            self.timer = None;
        } else if took_a_record && self.held == 0 {
            let deadline = tokio::time::Instant::now() + self.read_timeout;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        } else if self.timer.is_none() {
            self.timer = Some(Box::pin(tokio::time::sleep(self.read_timeout)));
        }
        Poll::Ready(Ok(true))
    }

    /// Writes `outgoing` to the socket until all is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        // Sent: give the memory back.
        self.outgoing = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// The close: close_notify (unless failed: then only the alert already
    /// queued), everything sent, FIN, then a lingering read until the
    /// client's FIN or [`LINGER`].
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.close {
                Close::Open => {
                    if self.failed.is_none() {
                        // On an error the stream is failed, with its alert
                        // queued: the close goes on without close_notify.
                        let _ = self.pump(Then::CloseNotify);
                    }
                    self.close = Close::Queued;
                }
                Close::Queued => {
                    ready!(self.poll_send(cx))?;
                    ready!(Pin::new(&mut self.tcp).poll_shutdown(cx))?;
                    self.incoming = Vec::new();
                    self.held = 0;
                    self.plain = Vec::new();
                    self.plain_at = 0;
                    self.timer = Some(Box::pin(tokio::time::sleep(LINGER)));
                    self.close = Close::Lingering;
                }
                Close::Lingering => {
                    ready!(self.poll_linger(cx));
                    self.timer = None;
                    self.close = Close::Done;
                }
                Close::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Reads and discards until the client's FIN, an error, or the linger
    /// timer.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.eof {
            return Poll::Ready(());
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        // A bounded number of reads per wake-up, so that a client that
        // floods cannot hold the thread.
        for _ in 0..64 {
            let read = SCRATCH_BUF.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut self.tcp).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len()),
                    Poll::Ready(Err(_)) => Poll::Ready(0),
                    Poll::Pending => Poll::Pending,
                }
            });
            match read {
                Poll::Ready(0) => {
                    self.eof = true;
                    return Poll::Ready(());
                }
                Poll::Ready(_) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Fails when rustls holds more than [`MAX_HELD`] bytes for a handshake
/// message (`buf[origin..end]`, all of it processed).
fn check_held(origin: usize, end: usize) -> Result<(), Stuck> {
    if end - origin > MAX_HELD {
        return Err(Stuck {
            cause: TlsFailure::HandshakeTooLarge,
            origin,
            // rustls has processed all it holds: the provoking record
            // goes right after it.
            remedy: Some(Remedy::Provoke(end, Provoke::DecodeError)),
        });
    }
    Ok(())
}

impl Stuck {
    fn without_alert(cause: TlsFailure, origin: usize) -> Self {
        Stuck {
            cause,
            origin,
            remedy: None,
        }
    }
}

/// Appends the application data rustls decrypted to `plain`, for the
/// reader. (`plain` is never left holding only consumed bytes: the reader
/// frees it when it takes the last of them.)
fn keep_plaintext<Data>(
    plain: &mut Vec<u8>,
    traffic: &mut ReadTraffic<'_, '_, Data>,
) -> Result<(), TlsFailure> {
    while let Some(record) = traffic.next_record() {
        let record = record.map_err(TlsFailure::Protocol)?;
        plain.extend_from_slice(record.payload);
    }
    Ok(())
}

/// Appends a handshake record rustls has ready to `outgoing`.
fn encode_into<Data>(
    outgoing: &mut Vec<u8>,
    data: &mut EncodeTlsData<'_, Data>,
) -> Result<usize, TlsFailure> {
    grow_into(outgoing, 1024, |spare| match data.encode(spare) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Err(Some(required_size))
        }
        Err(EncodeError::AlreadyEncoded) => Err(None),
    })
}

/// Appends `data` encrypted, or close_notify for `None`, to `outgoing`.
fn encrypt_into<Data>(
    outgoing: &mut Vec<u8>,
    traffic: &mut rustls::unbuffered::WriteTraffic<'_, Data>,
    data: Option<&[u8]>,
) -> Result<usize, TlsFailure> {
    let estimate = data.map_or(64, |d| d.len() + 64 * (1 + d.len() / 16_384));
    grow_into(outgoing, estimate, |spare| {
        let encrypted = match data {
            Some(data) => traffic.encrypt(data, spare),
            None => traffic.queue_close_notify(spare),
        };
        match encrypted {
            Ok(n) => Ok(n),
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                Err(Some(required_size))
            }
            Err(_) => Err(None),
        }
    })
}

/// Appends to `buf` what `fill` writes into spare room, growing the room to
/// what `fill` says it needs (`Err(Some(n))`) and retrying once.
fn grow_into(
    buf: &mut Vec<u8>,
    estimate: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<usize, TlsFailure> {
    let start = buf.len();
    let mut room = estimate;
    for _ in 0..2 {
        buf.resize(start + room, 0);
        match fill(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(n);
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => break,
        }
    }
    buf.truncate(start);
    Err(TlsFailure::Internal("TLS could not encode its output"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    // All taken: no memory kept between messages.
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(failed) = &this.failed {
                return Poll::Ready(Err(failed.io()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // FIN without close_notify, as tokio-rustls reports it.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Replies to the peer's handshake messages (a key update) go out
            // as soon as possible, not with the next reply.
            if this.out_at < this.outgoing.len() {
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close != Close::Open && this.failed.is_none() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outgoing.len() - this.out_at >= OUTGOING_HIGH {
            ready!(this.poll_send(cx))?;
        }
        this.pump(Then::Encrypt(data))?;
        // Sent now if the socket takes it; otherwise by the next flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx)
    }
}
