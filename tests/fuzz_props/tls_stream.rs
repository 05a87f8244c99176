//! The `tls_stream` target: dotgate's server TLS stream
//! (`tls::server_stream`) against a real rustls client whose records are
//! delivered in chunks, flipped, cut, and mixed with raw bytes.
//!
//! The input is a small program ([`tls_stream`] documents it), run on a
//! current-thread runtime with paused time, so timers fire only when the
//! program advances the clock. The harness polls both ends by hand, to a
//! standstill after every operation: the client is rustls' buffered
//! `ClientConnection`; the server is `accept`, then an echo of
//! length-prefixed messages that checks `buffered()` after every read and
//! write, then a close; its socket ([`Probe`]) tells the harness what the
//! handshake reads without answering and when the close began.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use dotgate::config::{TlsSettings, TlsVersion};
use dotgate::tls::client::{tls_config, Trust};
use dotgate::tls::identity::{self_signed, Identity};
use dotgate::tls::records::{MAX_HELD, MAX_RECORD};
use dotgate::tls::server_stream::{accept, AcceptError, ServerStream, TlsFailure, LINGER};
use dotgate::tls::ServerConfigs;
use rustls::{ClientConfig, ClientConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::Instant;

use super::take;

/// `server_stream`'s private read scratch (two of the largest records)
/// and `OUTGOING_HIGH` (what a write may leave unsent before it waits).
const SCRATCH: usize = 2 * (5 + 16 * 1024 + 256);
const OUTGOING_HIGH: usize = 64 * 1024;
/// What `buffered()` (capacities of `incoming`, `plain`, `outgoing`) may
/// reach after the handshake. `incoming` holds at most `MAX_HELD` (checked
/// after every pump) plus the start of a record, and before a pump one
/// socket read more; `plain` is filled, only while empty, from those
/// bytes; `outgoing` takes a write (at most a whole 65537-byte message,
/// one record per 16 KiB) only while under `OUTGOING_HIGH`, plus small
/// handshake replies. A `Vec` grown by appends at most doubles its need.
const BUFFERED_BOUND: usize =
    2 * 2 * (MAX_HELD + MAX_RECORD + SCRATCH) + 2 * (OUTGOING_HIGH + 65_537 + 5 * MAX_RECORD);
/// What the handshake may read without writing: the ClientHello stage
/// reads 16 KiB at a time up to rustls' 64 KiB hello, then answers; later,
/// `MAX_HELD` of a message, the start of a record and one read more, then
/// it fails and sends its alert.
const HANDSHAKE_SILENT: usize = MAX_HELD + MAX_RECORD + SCRATCH + 16 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on the polling loops, and on what the flood operation adds
/// (past `HANDSHAKE_SILENT`, small enough to keep runs fast).
const POLLS: usize = 1024;
const FLOOD_MAX: usize = 256 * 1024;

/// The server's configurations: one identity for every run, the rest
/// (session cache, ticket keys) made anew, so that no run leaves state
/// behind (libFuzzer then runs a leak check after each run, 10x slower).
fn server_configs() -> ServerConfigs {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    let identity = IDENTITY.get_or_init(|| self_signed("dns.test").unwrap());
    let (min_version, name, ticket_key_file) = (TlsVersion::Tls12, None, None);
    let settings = TlsSettings {
        min_version,
        name,
        ticket_key_file,
    };
    ServerConfigs::new(identity, &settings).unwrap()
}

/// TLS 1.3 and 1.2 clients, without resumption so that runs are alike.
fn client_config(tls12: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let make = |v: &'static rustls::SupportedProtocolVersion| {
        let mut config = tls_config(&Trust::Insecure, &[v]).unwrap();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let configs =
        CONFIGS.get_or_init(|| [&rustls::version::TLS13, &rustls::version::TLS12].map(make));
    configs[usize::from(tls12)].clone()
}

/// A waker that records that it was woken: the server is polled only then.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the server's socket reports: bytes read since its last write
/// (`None` after the handshake or the FIN), and when it sent its FIN.
#[derive(Default)]
struct Watch {
    silent: Cell<Option<usize>>,
    fin_at: Cell<Option<Instant>>,
}

struct Probe(DuplexStream, Rc<Watch>);

impl AsyncRead for Probe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.1.silent.set(self.1.silent.get().map(|n| n + read));
        polled
    }
}

impl AsyncWrite for Probe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.0).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(1..))) && self.1.silent.get().is_some() {
            self.1.silent.set(Some(0));
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.1.silent.set(None);
        self.1
            .fin_at
            .set(self.1.fin_at.get().or(Some(Instant::now())));
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How the server's reading ended.
#[derive(Debug)]
enum End {
    /// close_notify, or FIN without it.
    Clean,
    Eof,
    /// The server refused the bytes (rustls, or a message too large): it
    /// owes the client a fatal alert.
    Tls(String),
    /// The peer's own alert, a timeout, an early close.
    Other(String),
}

impl End {
    fn of(e: &io::Error) -> End {
        match TlsFailure::of(e) {
            Some(TlsFailure::Protocol(rustls::Error::AlertReceived(_))) => {
                End::Other(e.to_string())
            }
            Some(TlsFailure::Protocol(_) | TlsFailure::HandshakeTooLarge) => {
                End::Tls(e.to_string())
            }
            _ if e.kind() == io::ErrorKind::UnexpectedEof => End::Eof,
            _ => End::Other(e.to_string()),
        }
    }
}

fn check_held(stream: &ServerStream<Probe>) {
    let held = stream.buffered();
    assert!(held <= BUFFERED_BOUND, "the server holds {held} bytes");
}

/// The server: the handshake, an echo of whole messages, the close.
async fn serve(probe: Probe) -> End {
    let (watch, configs) = (probe.1.clone(), server_configs());
    let mut stream = match accept(probe, READ_TIMEOUT, |hello| {
        Ok((
            configs.for_client(hello, dotgate::metrics::stats::Transport::Dot),
            (),
        ))
    })
    .await
    {
        Ok((stream, ())) => stream,
        Err(AcceptError::Io(e)) => return End::of(&e),
        Err(e) => return End::Other(e.to_string()),
    };
    watch.silent.set(None);
    let (mut buf, mut pending) = (vec![0; 16 * 1024], Vec::new());
    let end = 'echo: loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break End::Clean,
            Ok(n) => n,
            Err(e) => break End::of(&e),
        };
        check_held(&stream);
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 2
            && pending.len() >= 2 + usize::from(u16::from_be_bytes([pending[0], pending[1]]))
        {
            let message: Vec<u8> = pending
                .drain(..2 + usize::from(u16::from_be_bytes([pending[0], pending[1]])))
                .collect();
            let written = stream.write_all(&message).await;
            check_held(&stream);
            if let Err(e) = written {
                break 'echo End::of(&e);
            }
        }
        if let Err(e) = stream.flush().await {
            break End::of(&e);
        }
    };
    let _ = stream.shutdown().await;
    check_held(&stream);
    end
}

struct Harness {
    server: Option<Pin<Box<dyn Future<Output = End>>>>,
    end: Option<End>,
    watch: Rc<Watch>,
    flag: Arc<Flag>,
    client: ClientConnection,
    io: DuplexStream,
    /// Client TLS bytes not yet delivered: what mutations act on.
    to_server: Vec<u8>,
    /// The messages the client sent, and what came back.
    sent: Vec<u8>,
    echoed: Vec<u8>,
    client_error: Option<rustls::Error>,
    client_eof: bool,
    /// The client sent close_notify or FIN, or only FIN.
    closed: bool,
    fin: bool,
    /// The exchange was disturbed: bytes changed or lost, or a close
    /// during the handshake.
    tainted: bool,
}

impl Harness {
    /// Polls the server while it is woken. Returns whether it ran.
    fn settle(&mut self) -> bool {
        let ran = self.flag.0.load(Ordering::SeqCst);
        let waker = Waker::from(self.flag.clone());
        for _ in 0..POLLS {
            if !self.flag.0.swap(false, Ordering::SeqCst) {
                break;
            }
            if let Some(Poll::Ready(end)) = self
                .server
                .as_mut()
                .map(|s| s.as_mut().poll(&mut Context::from_waker(&waker)))
            {
                (self.end, self.server) = (Some(end), None);
            }
            let silent = self.watch.silent.get().unwrap_or(0);
            assert!(
                silent <= HANDSHAKE_SILENT,
                "the handshake read {silent} bytes without answering"
            );
        }
        ran
    }

    /// Moves the client's output to `to_server`, and the server's bytes
    /// into the client. Returns whether there were any.
    fn pump_client(&mut self) -> bool {
        let mut progress = false;
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..POLLS {
            let mut rb = ReadBuf::new(&mut buf);
            let polled =
                Pin::new(&mut self.io).poll_read(&mut Context::from_waker(Waker::noop()), &mut rb);
            let mut bytes = match polled {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => rb.filled(),
                Poll::Ready(Ok(())) => {
                    self.client_eof = true;
                    break;
                }
                _ => break,
            };
            progress = true;
            // rustls takes nothing after an error or close_notify.
            while self.client_error.is_none() && matches!(self.client.read_tls(&mut bytes), Ok(1..))
            {
                if let Err(e) = self.client.process_new_packets() {
                    self.client_error = Some(e);
                }
                let _ = self.client.reader().read_to_end(&mut self.echoed);
            }
            assert!(
                self.sent.starts_with(&self.echoed),
                "echoed bytes differ from those sent"
            );
        }
        while self.client.wants_write() && self.client.write_tls(&mut self.to_server).is_ok() {}
        progress
    }

    /// Runs both sides until neither moves.
    fn run(&mut self) {
        for _ in 0..POLLS {
            let (ran, moved) = (self.settle(), self.pump_client());
            if !ran && !moved {
                break;
            }
        }
        if let (Some(_), Some(fin_at)) = (&self.server, self.watch.fin_at.get()) {
            let waited = Instant::now() - fin_at;
            assert!(
                waited <= LINGER + Duration::from_millis(10),
                "the close still lingers after {waited:?}"
            );
        }
    }

    /// Hands up to `n` of the client's bytes to the server's socket.
    fn deliver(&mut self, n: usize) {
        if self.fin {
            return;
        }
        let n = n.min(self.to_server.len());
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.io).poll_write(&mut cx, &self.to_server[..n])
        {
            self.to_server.drain(..n);
        }
        self.run();
    }

    fn deliver_all(&mut self) {
        for _ in 0..POLLS {
            if self.to_server.is_empty() || self.fin {
                break;
            }
            self.deliver(usize::MAX);
        }
    }

    /// close_notify. During the handshake it is a disturbance (a TLS 1.3
    /// server answers it with decode_error), sent here as a plaintext
    /// record behind rustls' back: rustls counts its own close_notify as a
    /// fatal alert sent, and a second one (on a receive error, after a
    /// mutated hello) trips its debug assertion.
    fn close_notify(&mut self) {
        if self.closed {
            return;
        }
        if self.client.is_handshaking() {
            self.tainted = true;
            self.to_server.extend_from_slice(&[0x15, 3, 3, 0, 2, 1, 0]);
        } else {
            self.client.send_close_notify();
        }
        self.closed = true;
    }

    /// The client's FIN: bytes not delivered are lost.
    fn fin(&mut self) {
        self.tainted |= !self.to_server.is_empty();
        let _ = Pin::new(&mut self.io).poll_shutdown(&mut Context::from_waker(Waker::noop()));
        (self.closed, self.fin, self.to_server) = (true, true, Vec::new());
    }

    async fn advance(&mut self, by: Duration) {
        tokio::time::advance(by).await;
        self.run();
    }
}

/// The `tls_stream` check. Input: a flags byte (bit 0: TLS 1.2, else 1.3;
/// bits 1-3: the socket buffer, 1 KiB << n), then operations, a byte (mod
/// 12) and its arguments: 0 write a message (length: u16), 1 KeyUpdate, 2
/// close_notify, 3 FIN, 4 deliver a chunk (b: b+1 bytes under 128, else
/// (b-127)*512), 5 deliver all, then acting on the bytes not yet delivered
/// at pos (u16, modulo their length): 6 flip (pos, bit), 7 insert (pos,
/// byte), 8 delete (pos, 1 + b%8 bytes), 9 inject (pos, k, k%32 bytes), 10
/// flood (pos, k, repeats: u16, a pattern of k%16+1 bytes, at most 256 KiB);
/// 11 advance the clock (b * 40 ms).
///
/// Properties: no panic; `buffered()` stays under [`BUFFERED_BOUND`] and
/// the handshake reads at most [`HANDSHAKE_SILENT`] without answering;
/// what comes back is a prefix of what was sent; a close ends within
/// [`LINGER`] of the server's FIN; at the end (everything delivered,
/// close_notify, time run on, the client's FIN) the server has finished,
/// the client saw its FIN, after a TLS error an alert came first (the
/// client failed), and without mutations neither side failed with a TLS
/// error and a server that read to the end echoed every message.
pub fn tls_stream(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(tokio::task::unconstrained(program(data)));
}

async fn program(mut data: &[u8]) {
    let [flags] = take::<1>(&mut data);
    let (io, server_io) = tokio::io::duplex(1024 << ((flags >> 1) & 7));
    let watch = Rc::new(Watch {
        silent: Cell::new(Some(0)),
        fin_at: Cell::new(None),
    });
    let mut client = ClientConnection::new(
        client_config(flags & 1 == 1),
        "dns.test".try_into().unwrap(),
    )
    .unwrap();
    client.set_buffer_limit(None);
    let mut h = Harness {
        server: Some(Box::pin(serve(Probe(server_io, watch.clone())))),
        end: None,
        watch,
        flag: Arc::new(Flag(AtomicBool::new(true))),
        client,
        io,
        to_server: Vec::new(),
        sent: Vec::new(),
        echoed: Vec::new(),
        client_error: None,
        client_eof: false,
        closed: false,
        fin: false,
        tainted: false,
    };
    h.run();
    let mut messages = 0u8;
    // KeyUpdates since the last message: rustls refuses a 33rd in a row
    // (TooManyKeyUpdateRequests, BoringSSL's limit), as it should.
    let mut key_updates = 0u32;
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let at = |h: &Harness, pos: [u8; 2]| {
            usize::from(u16::from_be_bytes(pos)) % (h.to_server.len() + 1)
        };
        match op % 12 {
            0 => {
                let len = take::<2>(&mut data);
                let mut message = len.to_vec();
                message.resize(2 + usize::from(u16::from_be_bytes(len)), messages);
                messages = messages.wrapping_add(1);
                if !h.closed && h.client.writer().write_all(&message).is_ok() {
                    h.sent.extend_from_slice(&message);
                    key_updates = 0;
                }
            }
            1 => {
                drop(h.client.refresh_traffic_keys());
                key_updates += 1;
                if key_updates > 32 {
                    h.tainted = true;
                }
            }
            2 => h.close_notify(),
            3 => h.fin(),
            4 => {
                let [b] = take::<1>(&mut data);
                h.deliver(if b < 128 {
                    usize::from(b) + 1
                } else {
                    usize::from(b - 127) * 512
                });
            }
            5 => h.deliver_all(),
            11 => {
                let [b] = take::<1>(&mut data);
                h.advance(Duration::from_millis(40 * u64::from(b))).await;
            }
            mutation => {
                let at = at(&h, take::<2>(&mut data));
                let ([b], len) = (take::<1>(&mut data), h.to_server.len());
                let added = match mutation {
                    6 | 8 if at == len => continue,
                    6 => {
                        h.to_server[at] ^= 1 << (b & 7);
                        Vec::new()
                    }
                    7 => vec![b],
                    8 => {
                        h.to_server.drain(at..len.min(at + 1 + usize::from(b % 8)));
                        Vec::new()
                    }
                    9 => take_bytes(&mut data, usize::from(b % 32)).to_vec(),
                    _ => {
                        let repeats = usize::from(u16::from_be_bytes(take::<2>(&mut data)));
                        let pattern = take_bytes(&mut data, usize::from(b % 16) + 1);
                        pattern.repeat(repeats.min(FLOOD_MAX / pattern.len().max(1)))
                    }
                };
                h.to_server.splice(at..at, added);
                h.tainted = true;
            }
        }
        h.run();
    }
    finish(h).await;
}

/// Up to `n` bytes off the input.
fn take_bytes<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (bytes, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    bytes
}

/// The end: everything delivered, close_notify, the clock run past every
/// timer, then the client's FIN: the server must be done by then.
async fn finish(mut h: Harness) {
    h.deliver_all();
    if !h.closed {
        h.close_notify();
        h.pump_client();
        h.deliver_all();
    }
    for _ in 0..(READ_TIMEOUT + LINGER).as_millis() / 500 + 2 {
        h.advance(Duration::from_millis(500)).await;
    }
    if !h.fin {
        h.deliver_all();
        h.fin();
    }
    h.advance(LINGER).await;
    assert!(h.server.is_none(), "the server did not finish");
    assert!(h.client_eof, "the client never saw the server's FIN");
    match &h.end {
        Some(End::Tls(e)) => {
            assert!(h.tainted, "a TLS error without a mutation: {e}");
            assert!(
                h.client_error.is_some(),
                "no alert before the FIN after: {e}"
            );
        }
        Some(End::Clean | End::Eof) if !h.tainted => {
            let (echoed, sent) = (h.echoed.len(), h.sent.len());
            assert!(echoed == sent, "{echoed} of {sent} bytes echoed");
        }
        _ => {}
    }
    if !h.tainted {
        assert!(
            h.client_error.is_none(),
            "client: {:?} ({:?})",
            h.client_error,
            h.end
        );
    }
}
