//! Properties of dotgate's HTTP/2 session (`server::doh::h2::session`)
//! driven like a hostile client would: arbitrary bytes fed in arbitrary
//! chunks, every request answered (some answers large enough to wait for
//! flow-control window), graceful GOAWAY, body timeouts and `release` mixed
//! in. Shared by the `h2_session` fuzz target and `tests/fuzz_replay.rs`.
//!
//! Everything dotgate sends is read back frame by frame and checked
//! against what the client sent, as seen by an independent splitter of the
//! client's bytes ([`ClientView`]) and against the answers given (bodies
//! are patterns, so every DATA byte is checked in place).

use std::collections::{HashMap, HashSet};

use dotgate::server::doh::exchange::Reply;
use dotgate::server::doh::h2::frame::PREFACE;
use dotgate::server::doh::h2::hpack::Decoder;
use dotgate::server::doh::h2::session::{Event, Failure, Limits, Session};
use tokio::time::{Duration, Instant};

/// The session limits an input picks from (flags bits 1-2): production's,
/// tight ones, the unit tests', and none at all.
const LIMITS: [Limits; 4] = [
    Limits {
        max_streams: 100,
        max_header_block: 128 * 1024,
        max_header_list: 96 * 1024,
        max_resets: 64,
        max_error_resets: 256,
    },
    Limits {
        max_streams: 1,
        max_header_block: 64,
        max_header_list: 128,
        max_resets: 2,
        max_error_resets: 3,
    },
    Limits {
        max_streams: 4,
        max_header_block: 1024,
        max_header_list: 4096,
        max_resets: 8,
        max_error_resets: 16,
    },
    Limits {
        max_streams: 0,
        max_header_block: 1024,
        max_header_list: 4096,
        max_resets: 0,
        max_error_resets: 0,
    },
];

/// Response body sizes, picked per answer: empty, DNS-sized, one byte past
/// a frame, and more than a stream's default window allows at once.
const SIZES: [usize; 8] = [0, 1, 12, 100, 512, 4000, 16_385, 20_000];

/// A response's HEADERS frame: a header and a head block of a few short
/// fields (status, content type and length, cache-control).
const HEAD_BOUND: usize = 9 + 256;

/// Frame header, and the frames dotgate writes of fixed size.
const FRAME_HEADER: usize = 9;
const RST_LEN: usize = FRAME_HEADER + 4;
const WINDOW_UPDATE_LEN: usize = FRAME_HEADER + 4;
const GOAWAY_LEN: usize = FRAME_HEADER + 8;

/// Output bytes a byte of input may cause (a 9-byte frame can cost a
/// reset, a window update of the connection and the GOAWAY of too many
/// resets: 43 bytes).
const OUT_PER_IN: usize = 5;

const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The body of the answer on `stream`: a pattern, so a byte out of place
/// shows.
fn body(stream: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (stream as usize).wrapping_mul(7).wrapping_add(i) as u8)
        .collect()
}

/// The GOAWAY code RFC 9113 §7 gives each failure (worked out here, not
/// taken from the session).
fn code_of(failure: Failure) -> u32 {
    match failure {
        Failure::Preface | Failure::Protocol(_) => 0x1,
        Failure::FlowControl => 0x3,
        Failure::FrameSize => 0x6,
        Failure::Compression => 0x9,
        Failure::Calm(_) => 0xb,
    }
}

/// The client's bytes split into frames independently of the session, for
/// what the client allowed: frame sizes, windows, streams opened and reset.
#[derive(Default)]
struct ClientView {
    /// Bytes not yet split (a partial preface or frame).
    buf: Vec<u8>,
    preface_done: bool,
    /// Not HTTP/2 any more (bad preface, oversized frame): nothing after
    /// counts.
    dead: bool,
    /// The largest SETTINGS_MAX_FRAME_SIZE the client announced (or the
    /// default).
    max_frame: usize,
    /// SETTINGS_INITIAL_WINDOW_SIZE as last announced, and the largest it
    /// was during the bytes last fed (a stream's window is at most that
    /// plus its updates, whenever in those bytes dotgate sent).
    initial_window: i64,
    window_bound: i64,
    /// WINDOW_UPDATE increments of the connection and of each stream.
    conn_updates: i64,
    stream_updates: HashMap<u32, i64>,
    /// The highest stream a HEADERS frame named.
    highest_headers: u32,
    /// Streams the client reset in the bytes last fed.
    new_resets: Vec<u32>,
}

impl ClientView {
    fn new() -> ClientView {
        ClientView {
            max_frame: DEFAULT_MAX_FRAME,
            initial_window: DEFAULT_WINDOW,
            window_bound: DEFAULT_WINDOW,
            ..ClientView::default()
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.window_bound = self.initial_window;
        if self.dead {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if !self.preface_done {
            if self.buf.len() < PREFACE.len() {
                self.dead = !PREFACE.starts_with(&self.buf);
                return;
            }
            if self.buf[..PREFACE.len()] != PREFACE[..] {
                self.dead = true;
                return;
            }
            self.buf.drain(..PREFACE.len());
            self.preface_done = true;
        }
        let mut at = 0;
        while let Some(h) = self.buf.get(at..at + FRAME_HEADER) {
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
            if len > DEFAULT_MAX_FRAME {
                self.dead = true;
                return;
            }
            let Some(payload) = self.buf.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
                break;
            };
            let payload = payload.to_vec();
            at += FRAME_HEADER + len;
            self.frame(kind, flags, stream, &payload);
        }
        self.buf.drain(..at);
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        match kind {
            0x1 => self.highest_headers = self.highest_headers.max(stream),
            0x3 if stream != 0 && payload.len() == 4 => self.new_resets.push(stream),
            0x4 if stream == 0 && flags & 1 == 0 && payload.len().is_multiple_of(6) => {
                for entry in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([entry[0], entry[1]]);
                    let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    match id {
                        4 if value <= MAX_WINDOW => {
                            self.initial_window = i64::from(value);
                            self.window_bound = self.window_bound.max(self.initial_window);
                        }
                        5 if (16_384..=0x00ff_ffff).contains(&value) => {
                            self.max_frame = self.max_frame.max(value as usize);
                        }
                        _ => {}
                    }
                }
            }
            0x8 if payload.len() == 4 => {
                let increment = i64::from(
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & MAX_WINDOW,
                );
                if stream == 0 {
                    self.conn_updates += increment;
                } else {
                    *self.stream_updates.entry(stream).or_default() += increment;
                }
            }
            _ => {}
        }
    }
}

/// What dotgate has sent and been asked to send, and the checks on it.
struct Checker {
    session: Session,
    client: ClientView,
    limits: Limits,
    now: Instant,
    /// Bytes fed, and bytes dotgate wrote (all of them, the first SETTINGS
    /// included), and what they may be at most besides the input's share.
    bytes_in: usize,
    bytes_out: usize,
    allowance: usize,
    /// Requests and refusals handed out and not answered yet, in order.
    pending: Vec<(u32, Reply)>,
    /// Every stream that had an event.
    evented: HashSet<u32>,
    /// Streams answered (`respond` said true), with the body given.
    answered: HashMap<u32, Vec<u8>>,
    /// Body bytes sent per stream, and on the connection.
    sent: HashMap<u32, usize>,
    conn_sent: i64,
    headers_sent: HashSet<u32>,
    ended: HashSet<u32>,
    /// Streams reset, by either side.
    reset: HashSet<u32>,
    /// The failure once seen, and the last frame written (type, code).
    failed: Option<Failure>,
    last_frame: Option<(u8, u32)>,
    error_goaways: usize,
    answers: usize,
}

impl Checker {
    fn new(limits: Limits, forwarding: Option<&'static str>) -> Checker {
        let mut c = Checker {
            session: Session::new(limits, forwarding),
            client: ClientView::new(),
            limits,
            now: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            // The GOAWAY of a failure, and the one of a graceful close.
            allowance: 2 * GOAWAY_LEN,
            pending: Vec::new(),
            evented: HashSet::new(),
            answered: HashMap::new(),
            sent: HashMap::new(),
            conn_sent: 0,
            headers_sent: HashSet::new(),
            ended: HashSet::new(),
            reset: HashSet::new(),
            failed: None,
            last_frame: None,
            error_goaways: 0,
            answers: 0,
        };
        // The first SETTINGS and window update are the session's own.
        c.allowance += c.session.out.len();
        c.drain_out();
        c
    }

    /// Feeds `chunk` and checks what came of it.
    fn receive(&mut self, chunk: &[u8]) {
        let failed_before = self.session.failure();
        self.session.receive(chunk, self.now);
        self.bytes_in += chunk.len();
        self.client.feed(chunk);
        if failed_before.is_some() {
            assert!(
                self.session.out.is_empty(),
                "{} bytes written after the failure {failed_before:?}",
                self.session.out.len()
            );
            assert!(
                self.session.next_event().is_none(),
                "an event after the failure {failed_before:?}"
            );
        }
        assert!(
            self.session.open_streams() <= self.limits.max_streams as usize,
            "{} streams open, limit {}",
            self.session.open_streams(),
            self.limits.max_streams
        );
        self.drain_out();
        // The client's resets count once what they caused is read, and
        // only if the session read them: not if it failed meanwhile (the
        // connection is then closed, its requests dropped).
        let resets = std::mem::take(&mut self.client.new_resets);
        if self.session.failure().is_none() {
            self.reset.extend(resets);
        }
        self.take_events();
    }

    /// Checks the frames written since the last call.
    fn drain_out(&mut self) {
        let out = std::mem::take(&mut self.session.out);
        if !out.is_empty() {
            assert!(
                self.failed.is_none(),
                "{} bytes written after the failure {:?}",
                out.len(),
                self.failed
            );
        }
        self.bytes_out += out.len();
        let bound = self.allowance + OUT_PER_IN * self.bytes_in;
        assert!(
            self.bytes_out <= bound,
            "{} bytes out for {} in (bound {bound})",
            self.bytes_out,
            self.bytes_in
        );
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert!(rest.len() >= FRAME_HEADER, "a partial frame header out");
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            assert!(rest[5] & 0x80 == 0, "the reserved bit set");
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            assert!(
                len <= self.client.max_frame,
                "a frame of {len} bytes (max {})",
                self.client.max_frame
            );
            assert!(rest.len() >= FRAME_HEADER + len, "a partial frame out");
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            rest = &rest[FRAME_HEADER + len..];
            self.frame_out(kind, flags, stream, payload);
        }
        if let Some(failure) = self.session.failure() {
            if self.failed.is_none() {
                self.failed = Some(failure);
                let code = code_of(failure);
                assert_eq!(
                    self.last_frame,
                    Some((0x7, code)),
                    "the last frame after {failure:?} is not its GOAWAY"
                );
            }
        }
    }

    fn frame_out(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let word = |at: usize| {
            u32::from_be_bytes([
                payload[at],
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
            ])
        };
        let mut code = 0;
        match kind {
            0x0 => self.data_out(flags, stream, payload),
            0x1 => self.headers_out(flags, stream, payload),
            0x3 => {
                assert!(stream != 0 && payload.len() == 4, "RST_STREAM malformed");
                code = word(0);
                self.reset.insert(stream);
            }
            0x4 => {
                assert_eq!(stream, 0, "SETTINGS on a stream");
                assert!(
                    payload.len().is_multiple_of(6),
                    "SETTINGS of {} bytes",
                    payload.len()
                );
                assert!(
                    flags & 1 == 0 || payload.is_empty(),
                    "SETTINGS ACK with values"
                );
            }
            0x6 => {
                assert_eq!((stream, flags, payload.len()), (0, 1, 8), "PING malformed");
            }
            0x7 => {
                assert!(stream == 0 && payload.len() == 8, "GOAWAY malformed");
                assert!(word(0) & 0x8000_0000 == 0, "GOAWAY reserved bit");
                code = word(4);
                if code != 0 {
                    self.error_goaways += 1;
                    assert_eq!(self.error_goaways, 1, "a second GOAWAY with an error");
                }
            }
            0x8 => {
                assert!(payload.len() == 4, "WINDOW_UPDATE malformed");
                let increment = word(0);
                assert!(
                    (1..=MAX_WINDOW).contains(&increment),
                    "WINDOW_UPDATE of {increment}"
                );
            }
            other => panic!("dotgate wrote a frame of type {other}"),
        }
        self.last_frame = Some((kind, code));
    }

    fn headers_out(&mut self, flags: u8, stream: u32, block: &[u8]) {
        let Some(body) = self.answered.get(&stream) else {
            panic!("HEADERS on stream {stream}, never answered");
        };
        assert!(
            !self.reset.contains(&stream),
            "HEADERS on {stream} after a reset"
        );
        assert!(self.headers_sent.insert(stream), "two HEADERS on {stream}");
        assert!(flags & 0x4 != 0, "a response head without END_HEADERS");
        assert_eq!(flags & 0x8, 0, "a padded response head");
        let end = flags & 0x1 != 0;
        assert_eq!(end, body.is_empty(), "END_STREAM on the head of {stream}");
        if end {
            self.ended.insert(stream);
        }
        // The encoder keeps no table: each block decodes on its own.
        let mut fields = Vec::new();
        Decoder::new(0)
            .decode(block, usize::MAX, |n, v| {
                fields.push((n.to_vec(), v.to_vec()))
            })
            .unwrap_or_else(|e| panic!("the head of {stream} does not decode: {e:?}"));
        assert_eq!(fields.first().map(|f| &f.0[..]), Some(&b":status"[..]));
        let length = body.len().to_string().into_bytes();
        assert!(
            fields
                .iter()
                .any(|(n, v)| n == b"content-length" && *v == length),
            "content-length of {stream} is not {}: {fields:?}",
            body.len()
        );
    }

    fn data_out(&mut self, flags: u8, stream: u32, payload: &[u8]) {
        let Some(body) = self.answered.get(&stream) else {
            panic!("DATA on stream {stream}, never answered");
        };
        assert!(
            self.headers_sent.contains(&stream),
            "DATA before HEADERS on {stream}"
        );
        assert!(
            !self.reset.contains(&stream),
            "DATA on {stream} after a reset"
        );
        assert!(
            !self.ended.contains(&stream),
            "DATA on {stream} after END_STREAM"
        );
        assert_eq!(flags & !0x1, 0, "DATA flags {flags:#x}");
        assert!(!payload.is_empty(), "an empty DATA frame on {stream}");
        let from = self.sent.get(&stream).copied().unwrap_or(0);
        let to = from + payload.len();
        assert!(
            to <= body.len(),
            "{to} bytes sent of a {} byte body",
            body.len()
        );
        assert!(
            payload == &body[from..to],
            "DATA bytes out of place on {stream}"
        );
        let end = flags & 0x1 != 0;
        assert_eq!(
            end,
            to == body.len(),
            "END_STREAM at {to} of {}",
            body.len()
        );
        if end {
            self.ended.insert(stream);
        }
        self.sent.insert(stream, to);
        // Within what the client allowed, at most.
        let allowed = self.client.window_bound
            + self
                .client
                .stream_updates
                .get(&stream)
                .copied()
                .unwrap_or(0);
        assert!(
            to as i64 <= allowed,
            "{to} bytes on {stream}, window at most {allowed}"
        );
        self.conn_sent += payload.len() as i64;
        let allowed = DEFAULT_WINDOW + self.client.conn_updates;
        assert!(
            self.conn_sent <= allowed,
            "{} bytes on the connection, window at most {allowed}",
            self.conn_sent
        );
    }

    fn take_events(&mut self) {
        while let Some(event) = self.session.next_event() {
            let (stream, reply) = match event {
                Event::Request { stream, head, body } => {
                    let len =
                        SIZES[(self.answers + head.target.len() + body.map_or(0, |b| b.len()))
                            % SIZES.len()];
                    (stream, Reply::Dns(self::body(stream, len)))
                }
                Event::Refuse { stream, refusal } => (stream, Reply::Refused(refusal)),
            };
            assert!(stream % 2 == 1, "an event on even stream {stream}");
            assert!(self.evented.insert(stream), "a second event on {stream}");
            assert!(
                stream <= self.client.highest_headers,
                "an event on {stream}, past the client's streams"
            );
            assert!(
                !self.reset.contains(&stream),
                "an event on {stream} after a reset"
            );
            self.answers += 1;
            self.pending.push((stream, reply));
        }
    }

    /// Answers what is pending (`large`: with 20,000 bytes), oldest first
    /// or newest first.
    fn answer(&mut self, large: bool, newest_first: bool) {
        let mut pending = std::mem::take(&mut self.pending);
        if newest_first {
            pending.reverse();
        }
        for (stream, reply) in pending {
            let reply = match reply {
                Reply::Dns(_) if large => Reply::Dns(body(stream, 20_000)),
                other => other,
            };
            self.respond(stream, reply, None);
        }
    }

    /// `respond`, checking its answer when it is known (`expect`), and
    /// whenever the stream is gone or the connection failed.
    fn respond(&mut self, stream: u32, reply: Reply, expect: Option<bool>) {
        let fresh = !self.answered.contains_key(&stream);
        let gone = self.reset.contains(&stream) || self.session.failure().is_some();
        let expected = body_of(&reply);
        let len = expected.len();
        if fresh {
            self.answered.insert(stream, expected);
        }
        let ok = self.session.respond(stream, reply);
        if gone || !fresh {
            assert!(
                !ok,
                "respond on {stream} (gone or answered already) said true"
            );
        }
        if let Some(expect) = expect {
            assert_eq!(ok, expect, "respond on {stream}");
        }
        if ok {
            self.allowance += HEAD_BOUND + 2 * RST_LEN + WINDOW_UPDATE_LEN + 10 * len;
        } else if fresh {
            self.answered.remove(&stream);
        }
        self.drain_out();
    }

    /// Answers a stream that is not the client's, or was answered already:
    /// `respond` must say false.
    fn respond_unknown(&mut self, pick: u8) {
        let answered: Vec<u32> = self.answered.keys().copied().collect();
        let stream = match (pick % 3, answered.is_empty()) {
            (0, false) => answered[usize::from(pick) % answered.len()],
            (1, _) => 2 * u32::from(pick) + 2,
            _ => {
                self.client
                    .highest_headers
                    .max(1)
                    .saturating_add(2 * u32::from(pick) + 2)
                    | 1
            }
        };
        if self.evented.contains(&stream) && !self.answered.contains_key(&stream) {
            // Pending: not unknown.
            return;
        }
        self.respond(stream, Reply::Dns(vec![1; 3]), Some(false));
    }

    fn go_away(&mut self) {
        self.session.go_away();
        self.drain_out();
    }

    fn expire(&mut self) {
        if self.session.failure().is_some() {
            // The connection's task has closed it: nothing more runs.
            return;
        }
        self.session
            .expire_bodies(self.now - Duration::from_secs(1));
        assert!(self.session.out.is_empty(), "expire_bodies wrote");
        self.take_events();
    }

    fn release(&mut self) {
        self.session.release();
        self.drain_out();
    }
}

/// The body `reply` is sent with.
fn body_of(reply: &Reply) -> Vec<u8> {
    match reply {
        Reply::Dns(body) => body.clone(),
        Reply::Refused(refusal) => format!("{refusal}\n").into_bytes(),
    }
}

/// Input: a flags byte, then a chunk schedule, then the client's bytes.
///
/// Flags: bit 0 prefixes the client's bytes with the real preface and an
/// empty SETTINGS (else they are all the input's, preface included); bits
/// 1-2 pick [`LIMITS`]; bit 3 trusts a forwarding header; bits 4-6 say how
/// many schedule bytes follow (none: everything in one chunk); bit 7
/// answers newest first.
///
/// Each schedule byte (cycled) says how much is fed next (low 5 bits: 0
/// the rest, 1-15 that many bytes, 16-31 (n-15) * 128 bytes) and what
/// follows (high 3 bits): 0-1 answer what is pending, 2 answer with 20,000
/// bytes, 3 GOAWAY then answer, 4 expire bodies begun over a second ago
/// then answer, 5 `release` then answer, 6 hold the answers, 7 answer a
/// stream that is unknown or answered already (false) then answer. The
/// clock moves 100 ms a chunk.
///
/// Properties: no panic; the bytes out stay within [`OUT_PER_IN`] per byte
/// in plus what the answers account for; streams open within the limit;
/// after a failure, its GOAWAY is the last frame, with its code, and
/// nothing more is written or handed out; events only on odd streams the
/// client opened, one per stream, none after a reset; `respond` false on
/// a stream gone or unknown; frames out well-formed, within the client's
/// frame size, HEADERS and DATA only on answered streams, once END_STREAM
/// each, the body's bytes in place and within the client's windows.
pub fn h2_session(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = LIMITS[usize::from(flags >> 1 & 3)];
    let forwarding = (flags & 8 != 0).then_some("x-forwarded-for");
    let n = usize::from(flags >> 4 & 7).min(rest.len());
    let (schedule, input) = rest.split_at(n);
    let mut stream = Vec::new();
    if flags & 1 != 0 {
        stream.extend_from_slice(PREFACE);
        stream.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }
    stream.extend_from_slice(input);
    let newest_first = flags & 0x80 != 0;

    let mut c = Checker::new(limits, forwarding);
    let mut fed = 0;
    let mut step = 0;
    // Every step feeds at least a byte, or ends: bounded by the input.
    while fed < stream.len() {
        let s = if schedule.is_empty() {
            0
        } else {
            schedule[step % schedule.len()]
        };
        step += 1;
        let size = match s & 0x1f {
            0 => stream.len() - fed,
            small @ 1..=15 => usize::from(small),
            large => usize::from(large - 15) * 128,
        };
        let to = (fed + size).min(stream.len());
        c.receive(&stream[fed..to]);
        fed = to;
        c.now += Duration::from_millis(100);
        match s >> 5 {
            2 => c.answer(true, newest_first),
            3 => {
                c.go_away();
                c.answer(false, newest_first);
            }
            4 => {
                c.expire();
                c.answer(false, newest_first);
            }
            5 => {
                c.release();
                c.answer(false, newest_first);
            }
            6 => {}
            7 => {
                c.respond_unknown(s);
                c.answer(false, newest_first);
            }
            _ => c.answer(false, newest_first),
        }
    }
    c.answer(false, newest_first);
    c.receive(&[]);
    if c.session.failure().is_none() && c.session.is_quiet() {
        c.release();
    }
}
