//! Property checks shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*`)
//! and by `tests/fuzz_replay.rs`, which replays the committed corpora
//! (`fuzz/corpus/<target>/*`) through the same functions on stable.
//!
//! Every entry point takes the raw fuzz input and panics when a property
//! does not hold. [`TARGETS`] maps each corpus directory to its check.
//!
//! The checks look at the output bytes with their own small DNS walker
//! ([`walk`]) rather than with dotgate's private helpers, so that a bug in
//! those helpers cannot hide itself; client subnet options are also read
//! with hickory-proto's decoder, and what dotgate's should hold is worked
//! out here from RFC 7871 ([`Ecs::expected`]).

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dotgate::proto::dns::{self, QueryError, QueryInfo, ReplyMatch};
use dotgate::proto::edns::{self, LegOptions};
use dotgate::proto::framing::{self, FrameError, FrameReader};
use dotgate::proto::message_reader::{MessageBudget, MIN_BUDGET};
use dotgate::proto::message_reader::{MessageReader, ReadLimits};
use dotgate::proto::proxy_header::{self as proxy, ProxyError};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use tokio::io::{AsyncRead, ReadBuf};

pub mod h2_session;
pub mod hpack_decode;
pub mod tls_stream;

/// A property check over one fuzz input; panics on a violation.
pub type Check = fn(&[u8]);

/// The corpus directories and the check each one's files go through.
pub const TARGETS: &[(&str, Check)] = &[
    ("framing", framing),
    ("dns_query", dns_query),
    ("dns_reply", dns_reply),
    ("proxy", proxy),
    ("tls_stream", tls_stream::tls_stream),
    ("doh_request", doh_request),
    ("hpack_decode", hpack_decode::hpack_decode),
    ("h2_session", h2_session::h2_session),
];

const MAX_MESSAGE: usize = u16::MAX as usize;
const HEADER_LEN: usize = dns::HEADER_LEN;
const TYPE_OPT: u16 = 41;

// ---------------------------------------------------------------------------
// Input helpers

/// Reads `n` bytes off the front of `data` (zeros past its end).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// An in-memory stream that hands out its bytes in chunks whose sizes come
/// from `schedule` (cycled), and that answers `Pending` for a schedule entry
/// of 0 (never twice in a row, so every poll loop terminates). Counts what
/// it handed out, so a reader's consumption can be checked.
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pos: usize,
    schedule: Vec<u8>,
    step: usize,
    just_pended: bool,
    /// Calls of `poll_read` so far.
    reads: usize,
}

impl<'a> ChunkedReader<'a> {
    /// Splits fuzz input into a chunk schedule and the stream: the low
    /// three bits of the first byte say how many schedule bytes follow.
    /// Returns the reader and the first byte (for other flags).
    pub fn from_input(data: &'a [u8]) -> (Self, u8) {
        let Some((&first, rest)) = data.split_first() else {
            return (Self::new(&[], Vec::new()), 0);
        };
        let n = usize::from(first & 7).min(rest.len());
        let (schedule, stream) = rest.split_at(n);
        (Self::new(stream, schedule.to_vec()), first)
    }

    pub fn new(data: &'a [u8], schedule: Vec<u8>) -> Self {
        Self {
            data,
            pos: 0,
            schedule,
            step: 0,
            just_pended: false,
            reads: 0,
        }
    }

    /// Chunks are at least 1/1024 of the stream, so that a large stream
    /// takes a bounded number of reads (small ones are read byte by byte).
    fn min_chunk(&self) -> usize {
        (self.data.len() / 1024).max(1)
    }

    /// Bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The whole stream.
    pub fn stream(&self) -> &'a [u8] {
        self.data
    }

    /// Size of the next chunk, or `None` for a `Pending`.
    fn next_chunk(&mut self) -> Option<usize> {
        if self.schedule.is_empty() {
            return Some(usize::MAX);
        }
        let s = self.schedule[self.step % self.schedule.len()];
        self.step += 1;
        let size = match s {
            0 if !self.just_pended => return None,
            0 => 1,
            1..=127 => usize::from(s),
            _ => usize::from(s - 127) * 512,
        };
        Some(size.max(self.min_chunk()))
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        let Some(chunk) = self.next_chunk() else {
            self.just_pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        self.just_pended = false;
        let n = chunk.min(buf.remaining()).min(self.data.len() - self.pos);
        let from = self.pos;
        buf.put_slice(&self.data[from..from + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Polls a future to completion without a runtime (every `Pending` of
/// [`ChunkedReader`] is followed by progress, so this terminates).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------
// An independent DNS walker for checking outputs

/// What [`walk`] found in a message.
#[derive(Debug)]
pub struct Walked {
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    /// Byte range of each OPT record in the additional section.
    pub opts: Vec<std::ops::Range<usize>>,
    /// Offset just past the last record.
    pub end: usize,
}

/// Steps over a name (a pointer ends it, unfollowed).
fn walk_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + usize::from(len),
            0xc0..=0xff => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Walks every section of `msg`; `None` when a record runs past its end.
pub fn walk(msg: &[u8]) -> Option<Walked> {
    if msg.len() < HEADER_LEN {
        return None;
    }
    let c = |i: usize| be16([msg[4 + 2 * i], msg[5 + 2 * i]]);
    let (qd, an, ns, ar) = (c(0), c(1), c(2), c(3));
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = walk_name(msg, pos)? + 4;
        if pos > msg.len() {
            return None;
        }
    }
    let mut opts = Vec::new();
    let before_additional = usize::from(an) + usize::from(ns);
    for index in 0..before_additional + usize::from(ar) {
        let start = pos;
        let after = walk_name(msg, pos)?;
        let fixed = msg.get(after..after + 10)?;
        let rtype = be16([fixed[0], fixed[1]]);
        let end = after + 10 + usize::from(be16([fixed[8], fixed[9]]));
        if end > msg.len() {
            return None;
        }
        if index >= before_additional && rtype == TYPE_OPT {
            opts.push(start..end);
        }
        pos = end;
    }
    Some(Walked {
        qdcount: qd,
        ancount: an,
        nscount: ns,
        arcount: ar,
        opts,
        end: pos,
    })
}

/// The RDATA of the OPT record at `opt`.
fn opt_rdata<'a>(msg: &'a [u8], opt: &std::ops::Range<usize>) -> &'a [u8] {
    let after = walk_name(msg, opt.start).expect("walked");
    &msg[after + 10..opt.end]
}

/// The options of OPT RDATA as (code, data); `None` when malformed.
pub fn options(rdata: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    Some(
        option_spans(rdata)?
            .into_iter()
            .map(|(code, span)| (code, &rdata[span.start + 4..span.end]))
            .collect(),
    )
}

/// The options of OPT RDATA as (code, byte range of the whole option in
/// `rdata`); `None` when malformed.
fn option_spans(rdata: &[u8]) -> Option<Vec<(u16, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < rdata.len() {
        let h = rdata.get(pos..pos + 4)?;
        let end = pos + 4 + usize::from(be16([h[2], h[3]]));
        if end > rdata.len() {
            return None;
        }
        out.push((be16([h[0], h[1]]), pos..end));
        pos = end;
    }
    Some(out)
}

/// The data of every option `code` in the OPT records of `msg` (all of
/// them, in order; malformed options are not read). `None` when `msg` does
/// not walk.
fn options_named(msg: &[u8], code: u16) -> Option<Vec<Vec<u8>>> {
    let w = walk(msg)?;
    let mut out = Vec::new();
    for opt in &w.opts {
        for (c, data) in options(opt_rdata(msg, opt)).unwrap_or_default() {
            if c == code {
                out.push(data.to_vec());
            }
        }
    }
    Some(out)
}

/// A client subnet option's data as RFC 7871 §6 has it: a known family,
/// a source prefix within it, and exactly the address bytes that prefix
/// needs.
fn subnet_well_formed(data: &[u8]) -> bool {
    let Some((head, address)) = data.split_at_checked(4) else {
        return false;
    };
    let family = u16::from_be_bytes([head[0], head[1]]);
    let source = usize::from(head[2]);
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return false,
    };
    source <= max && address.len() == source.div_ceil(8)
}

/// `msg` (one OPT record) without the OPT's options that `drop` picks, its
/// RDLENGTH reduced to match.
fn without_options(msg: &[u8], drop: impl Fn(u16, &[u8]) -> bool) -> Vec<u8> {
    let w = walk(msg).expect("walks");
    let Some(opt) = w.opts.first() else {
        return msg.to_vec();
    };
    let rdata_at = walk_name(msg, opt.start).expect("walked") + 10;
    let rdata = &msg[rdata_at..opt.end];
    let spans = option_spans(rdata).expect("well-formed options");
    let mut out = msg[..rdata_at].to_vec();
    for (code, span) in spans {
        if !drop(code, &rdata[span.start + 4..span.end]) {
            out.extend_from_slice(&rdata[span]);
        }
    }
    let rdlen = (out.len() - rdata_at) as u16;
    out[rdata_at - 2..rdata_at].copy_from_slice(&rdlen.to_be_bytes());
    out.extend_from_slice(&msg[opt.end..]);
    out
}

/// Whether a full decoder reads `msg`, a message dotgate is to rewrite.
/// A compression pointer into the header (whose ID and ARCOUNT dotgate
/// rewrites) is nonsense that may decode by chance, so a message with
/// anything like one (the bytes C0 00 to C0 0B anywhere) counts as not
/// decoding.
fn hickory_decodes(msg: &[u8]) -> bool {
    let points_into_header = msg
        .windows(2)
        .any(|w| w[0] == 0xc0 && usize::from(w[1]) < HEADER_LEN);
    !points_into_header && decode(msg).is_some()
}

/// `msg` as hickory-proto's decoder reads it.
fn decode(msg: &[u8]) -> Option<hickory_proto::op::Message> {
    hickory_proto::op::Message::from_vec(msg).ok()
}

/// The client subnet options hickory-proto's decoder finds in `msg`'s OPT.
fn hickory_subnets(msg: &hickory_proto::op::Message) -> Vec<EdnsOption> {
    msg.edns
        .iter()
        .flat_map(|e| e.options().get_all(EdnsCode::Subnet))
        .cloned()
        .collect()
}

/// The end of a query's uncompressed question at offset 12.
fn plain_question_end(msg: &[u8]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
    }
    (pos - HEADER_LEN <= 255 && pos + 4 <= msg.len()).then_some(pos + 4)
}

fn id(msg: &[u8]) -> u16 {
    be16([msg[0], msg[1]])
}

fn count(msg: &[u8], index: usize) -> u16 {
    be16([msg[4 + 2 * index], msg[5 + 2 * index]])
}

// ---------------------------------------------------------------------------
// framing: split_frame, FrameReader and MessageReader

/// The frames a correct reader yields from `stream`, and how it ends.
fn reference_frames(stream: &[u8]) -> (Vec<&[u8]>, Result<(), FrameEnd>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match rest.len() {
            0 => return (frames, Ok(())),
            1 => return (frames, Err(FrameEnd::Truncated)),
            _ => {}
        }
        let len = usize::from(be16([rest[0], rest[1]]));
        if len < HEADER_LEN {
            return (frames, Err(FrameEnd::TooShort(len as u16)));
        }
        if rest.len() < 2 + len {
            return (frames, Err(FrameEnd::Truncated));
        }
        frames.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
}

#[derive(Debug, PartialEq, Eq)]
enum FrameEnd {
    TooShort(u16),
    Truncated,
}

/// Bit 7 of the first byte: the stream is described compactly as
/// `[len_hi, len_lo, fill]` triples (each a whole frame of `fill` bytes; one
/// or two leftover bytes are appended raw), so that large frames and buffer
/// growth are reachable from small inputs.
fn expand_compact(desc: &[u8]) -> Vec<u8> {
    // Enough for two frames of the largest size.
    const CAP: usize = 140_000;
    let mut out = Vec::new();
    let mut triples = desc.chunks_exact(3);
    for t in triples.by_ref() {
        if out.len() > CAP {
            break;
        }
        out.extend_from_slice(&t[..2]);
        out.resize(out.len() + usize::from(be16([t[0], t[1]])), t[2]);
    }
    out.extend_from_slice(triples.remainder());
    out
}

/// `split_frame` and `FrameReader` over an arbitrary byte stream delivered
/// in arbitrary chunks, with `read_frame` dropped and restarted at every
/// `Pending` (it claims to be cancel-safe): the frames are exactly those of
/// the stream, each of its announced length, a length under 12 is an error,
/// and the stream ends as it should (clean, `Truncated`, `TooShort`).
pub fn framing(data: &[u8]) {
    // The pure rule on the raw input.
    match framing::split_frame(data) {
        Ok(None) => {
            assert!(data.len() < 2 || data.len() < 2 + usize::from(be16([data[0], data[1]])))
        }
        Ok(Some(len)) => {
            assert_eq!(len, usize::from(be16([data[0], data[1]])));
            assert!(len >= HEADER_LEN && data.len() >= 2 + len);
        }
        Err(FrameError::TooShort(len)) => {
            assert!(data.len() >= 2 && len == be16([data[0], data[1]]));
            assert!(usize::from(len) < HEADER_LEN);
        }
        Err(e) => panic!("split_frame: unexpected {e:?}"),
    }

    let (stream, schedule, first) = framing_input(data);
    let reader = ChunkedReader::new(&stream, schedule);
    let stream = reader.stream();
    let (expected, expected_end) = reference_frames(stream);

    let mut frames = FrameReader::new(reader);
    let mut got = 0;
    let end = loop {
        // One read_frame call per poll: a Pending drops it (cancellation)
        // and the next iteration starts a new one.
        let polled = std::pin::pin!(frames.read_frame())
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        match polled {
            Poll::Pending => continue,
            Poll::Ready(Ok(Some(frame))) => {
                assert!(got < expected.len(), "a frame the stream does not hold");
                assert_eq!(frame.len(), expected[got].len(), "frame {got}: length");
                assert!(frame == expected[got], "frame {got}: bytes");
                got += 1;
            }
            Poll::Ready(Ok(None)) => break Ok(()),
            Poll::Ready(Err(FrameError::Truncated)) => break Err(FrameEnd::Truncated),
            Poll::Ready(Err(FrameError::TooShort(n))) => break Err(FrameEnd::TooShort(n)),
            Poll::Ready(Err(FrameError::Io(e))) => panic!("I/O error from memory: {e}"),
            Poll::Ready(Err(FrameError::ReadTimeout)) => panic!("a read timeout, none being set"),
        }
    };
    assert_eq!(got, expected.len(), "frames yielded");
    assert_eq!(end, expected_end, "how the stream ends");
    assert!(!frames.has_partial() || end.is_err());
    // The reader read the whole stream, and no further (it cannot).
    let reader = frames.get_ref();
    if end.is_ok() || end == Err(FrameEnd::Truncated) {
        assert_eq!(reader.consumed(), stream.len());
    }

    // The clients' reader yields the same messages from the same chunks.
    let mut io = ChunkedReader::new(stream, reader.schedule.clone());
    let mut messages = MessageReader::new(ReadLimits::default());
    let mut got = 0;
    let end = loop {
        let polled = std::pin::pin!(messages.read_message(&mut io))
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        match polled {
            Poll::Pending => continue,
            Poll::Ready(Ok(Some(msg))) => {
                assert!(got < expected.len(), "a message the stream does not hold");
                assert!(msg == expected[got], "message {got}");
                assert_eq!(msg.capacity(), msg.len(), "message {got}: exact size");
                got += 1;
            }
            Poll::Ready(Ok(None)) => break Ok(()),
            Poll::Ready(Err(FrameError::Truncated)) => break Err(FrameEnd::Truncated),
            Poll::Ready(Err(FrameError::TooShort(n))) => break Err(FrameEnd::TooShort(n)),
            Poll::Ready(Err(e)) => panic!("message reader: unexpected {e}"),
        }
    };
    assert_eq!(got, expected.len(), "messages yielded");
    assert_eq!(
        end, expected_end,
        "how the stream ends for the message reader"
    );
    if end.is_ok() {
        assert_eq!(messages.capacity(), 0, "nothing held between messages");
    }

    check_budget(stream, &reader.schedule, first, &expected, &expected_end);
}

/// Several clients' readers sharing one small [`MessageBudget`], each
/// reading the same stream in its own chunks (the schedule rotated by its
/// index), polled in turn, with every `Pending` dropping its
/// `read_message` (as a `select!` does): none deadlocks (while one waits
/// for budget, another makes progress), each yields exactly the stream's
/// messages and ends as it should, and the budget is all given back
/// between messages and when readers go.
///
/// Bits of the first input byte: bit 3, three readers rather than two;
/// bits 4-6, the budget past [`MIN_BUDGET`] in 8 KiB steps (so two
/// messages near 64 KiB need more than it has). Returns how many times a
/// reader had to wait for budget.
fn check_budget(
    stream: &[u8],
    schedule: &[u8],
    first: u8,
    expected: &[&[u8]],
    expected_end: &Result<(), FrameEnd>,
) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let readers = 2 + usize::from(first >> 3 & 1);
    let total = MIN_BUDGET + usize::from(first >> 4 & 7) * 8192;
    let waits = Arc::new(AtomicUsize::new(0));
    let counted = waits.clone();
    let budget = MessageBudget::new(
        total,
        Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
    );
    let limits = ReadLimits {
        read_timeout: None,
        budget: Some(budget.clone()),
    };
    struct Client<'a> {
        io: ChunkedReader<'a>,
        reader: MessageReader,
        got: usize,
        end: Option<Result<(), FrameEnd>>,
    }
    let mut clients: Vec<Client> = (0..readers)
        .map(|i| {
            let mut schedule = schedule.to_vec();
            if !schedule.is_empty() {
                let by = i % schedule.len();
                schedule.rotate_left(by);
            }
            Client {
                io: ChunkedReader::new(stream, schedule),
                reader: MessageReader::new(limits.clone()),
                got: 0,
                end: None,
            }
        })
        .collect();
    // A round in which no reader reads its stream or ends a message, twice
    // in a row, is a deadlock: every reader left is waiting for budget. The cap on rounds only
    // bounds the loop should that reasoning be wrong.
    let mut idle_rounds = 0;
    let max_rounds = readers * 4 * (stream.len() + 8);
    for round in 0.. {
        assert!(
            round < max_rounds,
            "budget readers: no end after {round} rounds"
        );
        if clients.iter().all(|c| c.end.is_some()) {
            break;
        }
        let mut progress = false;
        for k in 0..readers {
            let c = &mut clients[(round + k) % readers];
            if c.end.is_some() {
                continue;
            }
            let before = c.io.reads;
            let polled = std::pin::pin!(c.reader.read_message(&mut c.io))
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            // A read brings bytes, the end, or a `Pending` after which the
            // next one does.
            progress |= c.io.reads != before;
            match polled {
                Poll::Pending => continue,
                Poll::Ready(Ok(Some(msg))) => {
                    assert!(c.got < expected.len(), "a message the stream does not hold");
                    assert!(msg == expected[c.got], "budget reader: message {}", c.got);
                    c.got += 1;
                }
                Poll::Ready(Ok(None)) => c.end = Some(Ok(())),
                Poll::Ready(Err(FrameError::Truncated)) => c.end = Some(Err(FrameEnd::Truncated)),
                Poll::Ready(Err(FrameError::TooShort(n))) => {
                    c.end = Some(Err(FrameEnd::TooShort(n)))
                }
                Poll::Ready(Err(e)) => panic!("budget reader: unexpected {e}"),
            }
            progress = true;
        }
        idle_rounds = if progress { 0 } else { idle_rounds + 1 };
        assert!(
            idle_rounds < 2,
            "deadlock: {} readers wait for budget ({} of {total} bytes in use)",
            clients.iter().filter(|c| c.end.is_none()).count(),
            budget.in_use()
        );
    }
    for c in &clients {
        assert_eq!(c.got, expected.len(), "budget reader: messages yielded");
        assert_eq!(c.end.as_ref(), Some(expected_end), "budget reader: end");
    }
    // A reader ends holding budget only with a message cut short.
    if *expected_end != Err(FrameEnd::Truncated) {
        assert_eq!(budget.in_use(), 0, "budget held between messages");
    }
    drop(clients);
    assert_eq!(budget.in_use(), 0, "budget held by readers that are gone");
    waits.load(Ordering::Relaxed)
}

/// How many times [`framing`]'s budget readers wait for budget on `data`
/// (so that a test can show a seed reaches the wait).
pub fn framing_budget_waits(data: &[u8]) -> usize {
    let (stream, schedule, first) = framing_input(data);
    let (expected, end) = reference_frames(&stream);
    check_budget(&stream, &schedule, first, &expected, &end)
}

/// The [`framing`] target's input: the stream (expanded from its compact
/// form when the first byte's top bit says so), the chunk schedule, and
/// that first byte.
fn framing_input(data: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Vec<u8>, u8) {
    let (reader, first) = ChunkedReader::from_input(data);
    let stream = if first & 0x80 != 0 {
        std::borrow::Cow::Owned(expand_compact(reader.stream()))
    } else {
        std::borrow::Cow::Borrowed(reader.stream())
    };
    (stream, reader.schedule, first)
}

// ---------------------------------------------------------------------------
// --upstream-ecs: the client subnet option dotgate sends for a client

/// `--upstream-ecs V4LEN,V6LEN` and the client's address, as a fuzz input
/// chooses them.
#[derive(Debug, Clone, Copy)]
struct Ecs {
    client: IpAddr,
    v4: u8,
    v6: u8,
}

impl Ecs {
    /// Reads 18 bytes: the IPv4 prefix length (mod 33), the IPv6 one (mod
    /// 129) (the values `--upstream-ecs` accepts), and 16 address bytes, of
    /// which an IPv4 client uses the first 4. `flags` bit 3: the client is
    /// IPv6; bit 4: an IPv6 client is IPv4-mapped (a dual-stack socket).
    fn take(flags: u8, d: &mut &[u8]) -> Self {
        let [v4, v6] = take(d);
        let addr: [u8; 16] = take(d);
        let v4addr = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
        let client = match (flags & 8 != 0, flags & 0x10 != 0) {
            (false, _) => IpAddr::V4(v4addr),
            (true, false) => IpAddr::V6(Ipv6Addr::from(addr)),
            (true, true) => IpAddr::V6(v4addr.to_ipv6_mapped()),
        };
        Self {
            client,
            v4: v4 % 33,
            v6: v6 % 129,
        }
    }

    /// The option dotgate builds for this client (the code under test).
    fn option(&self) -> Vec<u8> {
        let mut out = Vec::new();
        edns::push_client_subnet(&mut out, self.client, self.v4, self.v6);
        out
    }

    /// What RFC 7871 §6 says that option holds, worked out here with
    /// integer masks rather than dotgate's byte code: the family of the
    /// client's address (an IPv4-mapped one is IPv4), that family's
    /// prefix, a scope of 0, and the address cut to the prefix in as few
    /// bytes as it needs, the bits past it zero.
    fn expected(&self) -> ExpectedSubnet {
        let v4 = match self.client {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let (family, prefix, addr, octets) = match (v4, self.client) {
            (Some(v4), _) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
                let cut = Ipv4Addr::from(u32::from(v4) & mask);
                (1u16, self.v4, IpAddr::V4(cut), cut.octets().to_vec())
            }
            (None, IpAddr::V6(v6)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
                let cut = Ipv6Addr::from(u128::from(v6) & mask);
                (2u16, self.v6, IpAddr::V6(cut), cut.octets().to_vec())
            }
            (None, IpAddr::V4(_)) => unreachable!("an IPv4 client is IPv4"),
        };
        let mut data = family.to_be_bytes().to_vec();
        data.extend_from_slice(&[prefix, 0]);
        data.extend_from_slice(&octets[..usize::from(prefix).div_ceil(8)]);
        ExpectedSubnet { addr, prefix, data }
    }
}

/// dotgate's client subnet option as it should be.
#[derive(Debug)]
struct ExpectedSubnet {
    /// The address cut to the prefix.
    addr: IpAddr,
    prefix: u8,
    /// The option's data (after code and length).
    data: Vec<u8>,
}

impl ExpectedSubnet {
    /// The whole option: code 8, length, data.
    fn option(&self) -> Vec<u8> {
        let mut out = edns::CLIENT_SUBNET.to_be_bytes().to_vec();
        out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// The same option as hickory-proto decodes it.
    fn decoded(&self) -> EdnsOption {
        EdnsOption::Subnet(ClientSubnet::new(self.addr, self.prefix, 0))
    }
}

// ---------------------------------------------------------------------------
// dns_query: parse_query, upstream_query, stream_query, error_reply

/// Input: upstream ID (2), flags (1: bit 0 the leg asks for keepalive,
/// bit 1 for padding, bit 2 `--upstream-ecs` is set, bits 3 and 4 the
/// client's address family, see [`Ecs::take`]), keepalive timeout (2),
/// RCODE (2, 12 bits used), growth (2: zero bytes appended to the message,
/// so that messages near 65535 bytes come from small inputs), when bit 2 is
/// set the ECS prefixes and client address (18, [`Ecs::take`]), then the
/// query. The query is capped at 65535 bytes, as the framing guarantees,
/// and must hold a header.
pub fn dns_query(data: &[u8]) {
    let mut d = data;
    let upstream_id = be16(take(&mut d));
    let [flags] = take(&mut d);
    let timeout = be16(take(&mut d));
    let rcode = be16(take(&mut d)) & 0x0fff;
    let grow = usize::from(be16(take(&mut d)));
    let ecs = (flags & 4 != 0).then(|| Ecs::take(flags, &mut d));
    let leg = LegOptions {
        keepalive: (flags & 1 != 0).then_some(timeout),
        padding: flags & 2 != 0,
        strip_subnet: ecs.is_some(),
    };
    let mut msg = d.to_vec();
    msg.resize((msg.len() + grow).min(MAX_MESSAGE), 0);
    if msg.len() < HEADER_LEN {
        return;
    }
    check_query(&msg, upstream_id, leg, rcode, ecs);
}

fn check_query(msg: &[u8], upstream_id: u16, leg: LegOptions, rcode: u16, ecs: Option<Ecs>) {
    // Without the query's details: a bare header.
    let bare = dns::error_reply(msg, None, rcode, leg);
    assert_eq!(bare.len(), HEADER_LEN);
    check_error_header(&bare, msg, rcode, 0);
    assert_eq!(&bare[6..], &[0; 6], "no records");

    let info = match dns::parse_query(msg) {
        Ok(info) => info,
        Err(e) => {
            match e {
                QueryError::NotAQuery => assert!(msg[2] & 0x80 != 0),
                QueryError::QuestionCount(n) => {
                    assert!(msg[2] & 0x80 == 0 && n == count(msg, 0) && n != 1)
                }
                _ => assert!(msg[2] & 0x80 == 0 && count(msg, 0) == 1),
            }
            return;
        }
    };

    // parse_query's invariants.
    assert_eq!(msg[2] & 0x80, 0, "accepted a response");
    assert_eq!(count(msg, 0), 1);
    assert_eq!(info.id, id(msg));
    assert_eq!(info.question.start, HEADER_LEN);
    assert_eq!(Some(info.question.end), plain_question_end(msg));
    let walked = walk(msg).expect("an accepted query walks");
    assert!(walked.opts.len() <= 1);
    assert_eq!(info.opt, walked.opts.first().cloned());
    if let Some(opt) = &info.opt {
        assert_eq!(msg[opt.start], 0, "OPT owner is the root");
        match options(opt_rdata(msg, opt)) {
            Some(opts) if info.edns_error.is_none() => {
                let has = |code| opts.iter().any(|(c, _)| *c == code);
                assert_eq!(info.edns.keepalive, has(edns::KEEPALIVE));
                assert_eq!(info.edns.padding, has(edns::PADDING));
                assert_eq!(info.edns.client_subnet, has(edns::CLIENT_SUBNET));
            }
            Some(_) => {}
            None => assert!(info.edns_error.is_some(), "malformed options accepted"),
        }
    } else {
        assert_eq!(info.edns, edns::Request::default());
        assert_eq!(info.edns_error, None);
    }
    let question = &msg[info.question.clone()];
    // dotgate's client subnet option, checked against RFC 7871 first.
    let expected = ecs.map(|e| e.expected());
    let subnet = ecs.map(|e| e.option());
    if let (Some(expected), Some(subnet)) = (&expected, &subnet) {
        assert_eq!(*subnet, expected.option(), "the client subnet option");
    }
    let subnet = subnet.as_deref();

    // upstream_query.
    let up = dns::upstream_query(msg, &info, upstream_id, subnet);
    assert!(
        up.len() <= MAX_MESSAGE,
        "upstream query of {} bytes",
        up.len()
    );
    assert_eq!(id(&up), upstream_id, "upstream ID");
    assert_eq!(&up[2..4], &msg[2..4], "flags pass through");
    // An OPT is added to a query without one whose additional section is
    // empty, when it fits 16 bits.
    let adds_opt = info.opt.is_none() && count(msg, 3) == 0 && msg.len() + 11 <= MAX_MESSAGE;
    if info.opt.is_none() && !adds_opt {
        assert!(up[2..] == msg[2..], "nothing to change");
    }
    let up_info = dns::parse_query(&up).expect("the upstream query parses");
    assert!(&up[up_info.question.clone()] == question, "same question");
    assert_eq!(up_info.opt.is_some(), info.opt.is_some() || adds_opt);
    assert!(
        !up_info.edns.has_hop_by_hop(),
        "hop-by-hop options forwarded"
    );
    if info.edns_error.is_none() {
        assert_eq!(up_info.edns_error, None);
        check_upstream_subnets(msg, &up, expected.as_ref(), 0);
    }
    if let Some(opt) = &up_info.opt {
        assert_eq!(&up[opt.start + 3..opt.start + 5], &1232u16.to_be_bytes());
        // (A query with a refused OPT is answered by dotgate, never
        // forwarded: its options are not looked at.)
        if let Some(opts) = options(opt_rdata(&up, opt)).filter(|_| info.edns_error.is_none()) {
            assert!(opts
                .iter()
                .all(|(c, _)| *c != edns::KEEPALIVE && *c != edns::PADDING));
        }
    }

    // stream_query.
    let framed = dns::stream_query(msg, &info, subnet);
    let body = &framed[2..];
    assert_eq!(
        usize::from(be16([framed[0], framed[1]])),
        body.len(),
        "the length prefix announces the body"
    );
    assert!(body.len() <= MAX_MESSAGE, "body of {} bytes", body.len());
    assert_eq!(id(body), 0);
    let body_info = dns::parse_query(body).expect("the stream query parses");
    assert!(
        &body[body_info.question.clone()] == question,
        "same question"
    );
    let forwarded = info.edns_error.is_none();
    if !forwarded {
        // A query with a refused OPT (e.g. a keepalive carrying a value) is
        // answered by dotgate and never forwarded: only its size matters.
        return check_error_reply(msg, &info, rcode, leg);
    }
    assert_eq!(body_info.edns_error, None);
    // The keepalive request is owed whenever it fits.
    let fits = if info.opt.is_some() {
        msg.len() + 4 <= MAX_MESSAGE
    } else {
        adds_opt && msg.len() + 15 <= MAX_MESSAGE
    };
    if fits {
        assert!(body_info.edns.keepalive, "no keepalive request");
    }
    // Of hop-by-hop options, only dotgate's own empty keepalive request.
    if let Some(opt) = &body_info.opt {
        let opts = options(opt_rdata(body, opt)).expect("well-formed options");
        let keepalives: Vec<_> = opts.iter().filter(|(c, _)| *c == edns::KEEPALIVE).collect();
        assert!(
            keepalives.len() <= 1 && keepalives.iter().all(|(_, d)| d.is_empty()),
            "a keepalive option other than the empty request"
        );
        assert!(
            opts.iter().all(|(c, _)| *c != edns::PADDING),
            "padding forwarded"
        );
    }
    check_upstream_subnets(msg, body, expected.as_ref(), 4);
    // The stream form is the UDP form with ID 0, plus the keepalive
    // request (dotgate's subnet option aside: near 65535 bytes, the one
    // form may have room for it and the other not; both are checked above).
    let plain = dns::upstream_query(msg, &info, 0, subnet);
    let ours = |code: u16, data: &[u8]| {
        code == edns::CLIENT_SUBNET && subnet.is_some_and(|s| s[4..] == *data)
    };
    let bare_body = without_options(body, |c, d| {
        (c == edns::KEEPALIVE && d.is_empty()) || ours(c, d)
    });
    let bare_plain = without_options(&plain, ours);
    assert!(
        bare_body == bare_plain,
        "the stream form is the UDP form with ID 0 and the keepalive request"
    );
    if !body_info.edns.keepalive && subnet.is_none() {
        assert!(body == &plain[..], "nothing added to the UDP form");
    }

    check_error_reply(msg, &info, rcode, leg);
}

/// The client subnet options of a forwarded query's upstream form `up`:
/// without `--upstream-ecs` (`expected` is `None`), the client's own, as
/// sent; with it, never the client's, at most one, and exactly one
/// whenever it fits (`extra`: the bytes dotgate adds besides, the keepalive
/// request) — dotgate's, as RFC 7871 has it, read by the props' walker and
/// by hickory-proto's decoder.
fn check_upstream_subnets(msg: &[u8], up: &[u8], expected: Option<&ExpectedSubnet>, extra: usize) {
    let sent = options_named(msg, edns::CLIENT_SUBNET).expect("an accepted query walks");
    let forwarded = options_named(up, edns::CLIENT_SUBNET).expect("the upstream form walks");
    let decoded = decode(up);
    // dotgate rewrites the OPT record and moves what follows it. A name
    // pointing at or past the OPT's start changes meaning (fuzz finding,
    // issue 19: a TSIG owner pointing into a padding option's data, which
    // dotgate strips, points into the TSIG record itself upstream; left
    // for parse_query to refuse), so such queries are left out here.
    let moves_from = walk(msg)
        .and_then(|w| w.opts.first().map(|o| o.start))
        .unwrap_or(msg.len());
    let points_into_moved = msg
        .windows(2)
        .any(|w| w[0] >= 0xc0 && usize::from(be16([w[0] & 0x3f, w[1]])) >= moves_from);
    if hickory_decodes(msg) && !points_into_moved {
        assert!(
            decoded.is_some(),
            "the query decodes, its upstream form does not"
        );
    }
    let Some(expected) = expected else {
        assert_eq!(
            forwarded, sent,
            "the client's subnet passes without --upstream-ecs"
        );
        return;
    };
    assert!(
        forwarded.len() <= 1,
        "{} client subnet options upstream",
        forwarded.len()
    );
    for data in &forwarded {
        assert_eq!(*data, expected.data, "a client subnet other than dotgate's");
    }
    let has_opt = walk(up).is_some_and(|w| !w.opts.is_empty());
    let room = msg.len() + 11 + extra + expected.option().len() <= MAX_MESSAGE;
    if has_opt && room {
        assert_eq!(forwarded.len(), 1, "dotgate's client subnet left out");
    }
    if let Some(decoded) = decoded {
        let subnets = hickory_subnets(&decoded);
        assert_eq!(subnets.len(), forwarded.len(), "hickory: client subnets");
        for s in subnets {
            assert_eq!(s, expected.decoded(), "hickory: dotgate's client subnet");
        }
    }
}

/// `error_reply` with the query's details: the client's question, an OPT
/// exactly when the query had one, carrying the extended RCODE and the
/// leg's options (never a client subnet), padded when the leg asks.
fn check_error_reply(msg: &[u8], info: &QueryInfo, rcode: u16, leg: LegOptions) {
    let question = &msg[info.question.clone()];
    let r = dns::error_reply(msg, Some(info), rcode, leg);
    check_error_header(&r, msg, rcode, 1);
    assert!(
        &r[HEADER_LEN..HEADER_LEN + question.len()] == question,
        "question"
    );
    let rw = walk(&r).expect("an error reply walks");
    assert_eq!(rw.end, r.len());
    assert_eq!((rw.ancount, rw.nscount), (0, 0));
    assert_eq!(rw.opts.len(), usize::from(info.opt.is_some()), "R17");
    assert_eq!(usize::from(rw.arcount), rw.opts.len());
    if let Some(opt) = rw.opts.first() {
        assert_eq!(r[opt.start + 5], (rcode >> 4) as u8, "extended RCODE");
        assert_eq!(r[opt.start + 6], 0, "EDNS version 0");
        let opts = options(opt_rdata(&r, opt)).expect("well-formed options");
        check_leg_options(&opts, leg);
        assert!(
            opts.iter().all(|(c, _)| *c != edns::CLIENT_SUBNET),
            "a client subnet in an error reply"
        );
        if leg.padding {
            assert_eq!(r.len() % edns::RESPONSE_BLOCK, 0, "padded error reply");
        }
    }
}

/// The header of an error reply to `query`.
fn check_error_header(r: &[u8], query: &[u8], rcode: u16, qdcount: u16) {
    assert_eq!(id(r), id(query), "client's ID");
    assert_ne!(r[2] & 0x80, 0, "QR set");
    assert_eq!(r[2] & 0x79, query[2] & 0x79, "opcode and RD");
    assert_eq!(r[3] & 0x10, query[3] & 0x10, "CD");
    assert_eq!(u16::from(r[3] & 0x0f), rcode & 0x0f, "RCODE");
    assert_eq!(count(r, 0), qdcount, "QDCOUNT");
}

/// The options dotgate adds for the leg: at most one keepalive (exactly
/// when asked, carrying its timeout) and one padding option (only when
/// asked), and nothing else hop-by-hop.
fn check_leg_options(opts: &[(u16, &[u8])], leg: LegOptions) {
    let keepalives: Vec<_> = opts.iter().filter(|(c, _)| *c == edns::KEEPALIVE).collect();
    match leg.keepalive {
        Some(t) => assert_eq!(keepalives, [&(edns::KEEPALIVE, &t.to_be_bytes()[..])]),
        None => assert!(keepalives.is_empty(), "a keepalive the leg did not add"),
    }
    let paddings: Vec<_> = opts.iter().filter(|(c, _)| *c == edns::PADDING).collect();
    assert!(
        paddings.len() <= usize::from(leg.padding),
        "padding the leg did not add"
    );
    assert!(paddings.iter().all(|(_, d)| d.iter().all(|&b| b == 0)));
}

// ---------------------------------------------------------------------------
// dns_reply: match_reply and client_reply

const FALLBACK_QUESTION: &[u8] = b"\x07example\x03com\x00\x00\x01\x00\x01";

/// A client's own client subnet option: 192.0.2.0/24.
const CLIENT_OWN_SUBNET: [u8; 11] = [0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2];

/// Input: flags (1: bit 0 the query has an OPT, bit 1 it asks for
/// keepalive, bit 2 for padding, bit 3 the connection is retiring, bit 4
/// the query's question is the reply's own when that is a plain one, bit 5
/// the query's OPT also carries a cookie, bit 6 `--upstream-ecs` is set,
/// bit 7 the query's OPT carries the client's own client subnet), idle
/// timeout in seconds (1), client ID (2), growth of the reply (2, zero
/// bytes appended), then the upstream's reply (capped at 65535 bytes).
///
/// The query is built from these and goes through `parse_query`; the leg
/// options are what `LegOptions::for_request` owes the query, and strip the
/// upstream's client subnet when dotgate sent one the client did not (RFC
/// 7871 §7.2.2).
pub fn dns_reply(data: &[u8]) {
    let mut d = data;
    let [flags] = take(&mut d);
    let [idle] = take(&mut d);
    let client_id = be16(take(&mut d));
    let grow = usize::from(be16(take(&mut d)));
    let mut reply = d.to_vec();
    reply.resize((reply.len() + grow).min(MAX_MESSAGE), 0);
    if reply.len() < HEADER_LEN {
        return;
    }

    // The client's query.
    let question = if flags & 0x10 != 0 {
        plain_question_end(&reply)
            .map(|end| &reply[HEADER_LEN..end])
            .unwrap_or(FALLBACK_QUESTION)
    } else {
        FALLBACK_QUESTION
    };
    let with_opt = flags & 1 != 0;
    let mut query = client_id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(with_opt)]);
    query.extend_from_slice(question);
    if with_opt {
        let mut rdata = Vec::new();
        if flags & 2 != 0 {
            rdata.extend_from_slice(&[0, 11, 0, 0]);
        }
        if flags & 0x20 != 0 {
            rdata.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        }
        if flags & 4 != 0 {
            rdata.extend_from_slice(&[0, 12, 0, 3, 0, 0, 0]);
        }
        if flags & 0x80 != 0 {
            rdata.extend_from_slice(&CLIENT_OWN_SUBNET);
        }
        query.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
        query.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        query.extend_from_slice(&rdata);
    }
    let info = dns::parse_query(&query).expect("a well-formed query parses");
    assert_eq!(info.edns_error, None);
    assert_eq!(info.edns.keepalive, with_opt && flags & 2 != 0);
    assert_eq!(info.edns.padding, with_opt && flags & 4 != 0);
    let client_subnet = with_opt && flags & 0x80 != 0;
    assert_eq!(info.edns.client_subnet, client_subnet);
    let mut leg = LegOptions::for_request(
        info.edns,
        Duration::from_secs(u64::from(idle)),
        flags & 8 != 0,
    );
    leg.strip_subnet = flags & 0x40 != 0 && !client_subnet;
    let question = &query[info.question.clone()];

    let answered = check_match(&reply, question);
    check_reply_keepalive(&reply);
    if answered {
        check_client_reply(reply, &info, leg);
    } else {
        // dotgate never passes such a message on (the upstream code
        // classifies it first), but it must not panic either.
        if let Ok(out) = dns::client_reply(reply, &info, leg) {
            assert!(out.len() <= MAX_MESSAGE);
            assert_eq!(id(&out), info.id);
            check_stripped_subnet(&out, leg);
        }
    }
}

/// Checks `match_reply`; true when it takes `reply` as the answer.
fn check_match(reply: &[u8], question: &[u8]) -> bool {
    let is_response = reply[2] & 0x80 != 0;
    let rcode = reply[3] & 0x0f;
    let same_question = count(reply, 0) == 1
        && plain_question_end(reply).is_some_and(|end| {
            let q = &reply[HEADER_LEN..end];
            q.len() == question.len()
                && q[q.len() - 4..] == question[question.len() - 4..]
                && q[..q.len() - 4].eq_ignore_ascii_case(&question[..question.len() - 4])
        });
    match dns::match_reply(reply, question) {
        ReplyMatch::Answer => {
            assert!(is_response && same_question, "a reply to another question");
            return true;
        }
        ReplyMatch::ErrorWithoutQuestion(rc) => {
            assert!(is_response && count(reply, 0) == 0);
            assert_eq!(rc, rcode);
            assert!(
                matches!(rc, 1 | 2 | 4 | 5),
                "a question-less reply with RCODE {rc} accepted (only FORMERR, SERVFAIL, NOTIMP, REFUSED)"
            );
        }
        ReplyMatch::Broken => {
            assert!(is_response && same_question, "a reply to another question");
            // A reply whose records all lie within it and whose OPT records
            // hold whole options is never refused.
            let whole = walk(reply).is_some_and(|w| {
                w.opts
                    .iter()
                    .all(|opt| options(opt_rdata(reply, opt)).is_some())
            });
            assert!(!whole, "a well-formed reply refused as broken");
        }
        ReplyMatch::Mismatch => assert!(!(is_response && same_question), "its own reply refused"),
    }
    false
}

/// `reply_keepalive` reads the first timeout-carrying option 11 of the
/// reply's OPT record.
fn check_reply_keepalive(reply: &[u8]) {
    let got = dns::reply_keepalive(reply);
    let Some(w) = walk(reply) else { return };
    let expected = w.opts.first().and_then(|opt| {
        let mut rd = opt_rdata(reply, opt);
        // Options up to a malformed one.
        let mut found = None;
        while let Some(h) = rd.get(..4) {
            let len = usize::from(be16([h[2], h[3]]));
            let Some(data) = rd.get(4..4 + len) else {
                break;
            };
            if be16([h[0], h[1]]) == edns::KEEPALIVE && len == 2 {
                found = Some(be16([data[0], data[1]]));
                break;
            }
            rd = &rd[4 + len..];
        }
        found
    });
    assert_eq!(got, expected, "reply_keepalive");
}

/// `client_reply` on a reply `match_reply` took as the answer: the
/// client's ID, an OPT exactly when the query had one, only the leg's
/// hop-by-hop options, padding to the block when owed, every other record
/// kept, and a message that still decodes.
fn check_client_reply(reply: Vec<u8>, info: &QueryInfo, leg: LegOptions) {
    let before = walk(&reply);
    let parsed_before = hickory_decodes(&reply);
    let out = match dns::client_reply(reply.clone(), info, leg) {
        Ok(out) => out,
        Err(e) => {
            // A well-formed reply to a query without OPT, without OPT
            // itself, needs no change and cannot fail.
            if let Some(w) = &before {
                assert!(
                    !(info.opt.is_none()
                        && w.opts.is_empty()
                        && w.qdcount == 1
                        && plain_question_end(&reply).is_some()),
                    "client_reply refused a reply that needs no change: {e:?}"
                );
            }
            return;
        }
    };
    assert!(out.len() <= MAX_MESSAGE, "reply of {} bytes", out.len());
    assert_eq!(id(&out), info.id, "the client's ID is restored");
    assert_eq!(out[2] & 0x80, reply[2] & 0x80, "QR kept");
    let w = walk(&out).expect("the client's reply walks");
    assert_eq!(w.end, out.len(), "nothing after the last record");
    if parsed_before {
        if let Err(e) = hickory_proto::op::Message::from_vec(&out) {
            panic!("the reply parsed, the client's reply does not: {e}");
        }
    }
    check_stripped_subnet(&out, leg);
    // Otherwise the upstream's client subnet reaches a client that asked
    // with EDNS, as it came (a reply whose one OPT's options are readable,
    // and whose subnets are well-formed: the slow path re-encodes options
    // through hickory-proto, which cuts an address longer than its prefix).
    if !leg.strip_subnet && info.opt.is_some() {
        if let Some(w) = before.as_ref().filter(|w| w.opts.len() == 1) {
            let subnets_well_formed = options_named(&reply, edns::CLIENT_SUBNET)
                .is_some_and(|subnets| subnets.iter().all(|s| subnet_well_formed(s)));
            if options(opt_rdata(&reply, &w.opts[0])).is_some() && subnets_well_formed {
                assert_eq!(
                    options_named(&out, edns::CLIENT_SUBNET),
                    options_named(&reply, edns::CLIENT_SUBNET),
                    "the upstream's client subnet kept"
                );
            }
        }
    }
    // R17: an OPT exactly when the query had one.
    assert_eq!(
        w.opts.len(),
        usize::from(info.opt.is_some()),
        "OPT mirrors the query"
    );
    let before = before.expect("a reply client_reply accepted walks");
    assert_eq!(w.qdcount, before.qdcount);
    assert_eq!(w.ancount, before.ancount);
    assert_eq!(w.nscount, before.nscount);
    assert_eq!(
        usize::from(w.arcount) + before.opts.len(),
        usize::from(before.arcount) + w.opts.len(),
        "only OPT records added or removed"
    );
    if info.opt.is_none() && before.opts.is_empty() {
        let mut expected = reply[..before.end].to_vec();
        expected[..2].copy_from_slice(&info.id.to_be_bytes());
        assert!(out == expected, "a reply that needs no change was changed");
    }
    if let Some(opt) = w.opts.first() {
        let opts = options(opt_rdata(&out, opt)).expect("well-formed options");
        check_leg_options(&opts, leg);
        let padded = opts.iter().any(|(c, _)| *c == edns::PADDING);
        if padded {
            assert_eq!(out.len() % edns::RESPONSE_BLOCK, 0, "padded to the block");
        } else if leg.padding {
            assert_eq!(
                edns::padding_len(out.len()),
                None,
                "unpadded though padding fits"
            );
        }
    }
}

/// When dotgate sent a client subnet the client did not, the client's
/// reply carries none (RFC 7871 §7.2.2): in any OPT record, by the props'
/// walker and by hickory-proto's decoder.
fn check_stripped_subnet(out: &[u8], leg: LegOptions) {
    if !leg.strip_subnet {
        return;
    }
    if let Some(found) = options_named(out, edns::CLIENT_SUBNET) {
        assert!(found.is_empty(), "a client subnet the client did not send");
    }
    if let Some(decoded) = decode(out) {
        assert!(
            hickory_subnets(&decoded).is_empty(),
            "hickory: a client subnet the client did not send"
        );
    }
}

// ---------------------------------------------------------------------------
// proxy: read_header, parse_v1, parse_v2

/// `read_header` over an arbitrarily chunked stream consumes exactly the
/// header (as the spec delimits it, computed here independently), never
/// more than 107 bytes of a v1 line or 16 + 4096 of a v2 header, and agrees
/// with the pure parsers; the pure parsers return addresses that are in
/// their input.
pub fn proxy(data: &[u8]) {
    let (mut reader, _) = ChunkedReader::from_input(data);
    let stream = reader.stream();
    check_v1(stream);
    if let Some(payload) = stream.get(14..) {
        check_v2(stream[12], stream[13], payload);
    }
    let result = block_on(proxy::read_header(&mut reader));
    let consumed = reader.consumed();

    if stream.len() < 12 {
        assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}");
        return;
    }
    if stream[..12] == proxy::V2_SIGNATURE {
        let Some(head) = stream.get(12..16) else {
            assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}");
            return;
        };
        let len = usize::from(be16([head[2], head[3]]));
        if len > proxy::V2_MAX_PAYLOAD {
            assert!(matches!(result, Err(ProxyError::V2(_))), "{result:?}");
            assert_eq!(consumed, 16);
        } else if let Some(payload) = stream.get(16..16 + len) {
            assert_eq!(consumed, 16 + len, "v2 header length");
            check_v2(head[0], head[1], payload);
            assert_eq!(
                format!("{result:?}"),
                format!("{:?}", proxy::parse_v2(head[0], head[1], payload))
            );
        } else {
            assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}");
        }
        return;
    }
    if !stream.starts_with(b"PROXY ") {
        assert!(matches!(result, Err(ProxyError::Missing)), "{result:?}");
        assert_eq!(consumed, 12);
        return;
    }
    // The line ends at the first CRLF ending at or after byte 12.
    let crlf_end =
        (12..=stream.len().min(proxy::V1_MAX_LINE)).find(|&e| &stream[e - 2..e] == b"\r\n");
    match crlf_end {
        Some(end) => {
            assert_eq!(consumed, end, "v1 line length");
            check_v1(&stream[..end]);
            assert_eq!(
                format!("{result:?}"),
                format!("{:?}", proxy::parse_v1(&stream[..end]))
            );
        }
        None if stream.len() >= proxy::V1_MAX_LINE => {
            assert!(matches!(result, Err(ProxyError::V1(_))), "{result:?}");
            assert_eq!(consumed, proxy::V1_MAX_LINE);
        }
        None => assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}"),
    }
}

fn check_v1(line: &[u8]) {
    let result = proxy::parse_v1(line);
    let Ok(addr) = result else { return };
    let text = std::str::from_utf8(line).expect("accepted non-UTF-8");
    let text = text.strip_suffix("\r\n").expect("accepted without CRLF");
    let fields: Vec<&str> = text.split(' ').collect();
    assert_eq!(fields[0], "PROXY");
    let Some(addr) = addr else {
        assert_eq!(fields[1], "UNKNOWN");
        return;
    };
    assert_eq!(fields.len(), 6);
    let ip: IpAddr = match fields[1] {
        "TCP4" => IpAddr::V4(fields[2].parse::<Ipv4Addr>().expect("IPv4 source")),
        "TCP6" => IpAddr::V6(fields[2].parse::<Ipv6Addr>().expect("IPv6 source")),
        other => panic!("accepted protocol {other:?}"),
    };
    assert_eq!(addr, SocketAddr::new(ip, fields[4].parse().expect("port")));
    assert!(fields[4].bytes().all(|b| b.is_ascii_digit()));
    assert!(fields[5].bytes().all(|b| b.is_ascii_digit()) && fields[5].parse::<u16>().is_ok());
}

fn check_v2(version_command: u8, family_transport: u8, payload: &[u8]) {
    let Ok(addr) = proxy::parse_v2(version_command, family_transport, payload) else {
        return;
    };
    assert_eq!(version_command >> 4, 2);
    let family = family_transport >> 4;
    match addr {
        None => assert!(version_command & 0x0f == 0 || matches!(family, 0 | 3)),
        Some(addr) => {
            assert_eq!(version_command & 0x0f, 1);
            assert_eq!(family_transport & 0x0f, 1, "STREAM");
            let (ip, port_at) = match family {
                1 => {
                    let o: [u8; 4] = payload[..4].try_into().unwrap();
                    (IpAddr::from(o), 8)
                }
                2 => {
                    let o: [u8; 16] = payload[..16].try_into().unwrap();
                    (IpAddr::from(o), 32)
                }
                _ => panic!("an address from family {family}"),
            };
            let port = be16([payload[port_at], payload[port_at + 1]]);
            assert_eq!(addr, SocketAddr::new(ip, port));
        }
    }
}

/// The DoH request rules (`server::doh::request`) and the forwarding
/// header (`server::doh::forwarded`): every part of a request a peer
/// writes. The input is split at NUL bytes into a path, a query string, a
/// content type and a forwarding header; its first byte picks the header
/// kind and whether the peer is a trusted proxy.
pub fn doh_request(data: &[u8]) {
    use base64::Engine;
    use dotgate::config::forwarded::{ForwardedHeader, Forwarding};
    use dotgate::server::doh::{forwarded, request};

    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = parts.next().unwrap_or_default();
    let forwarding_value = parts.next().unwrap_or_default();

    // The path: the endpoint itself, or one segment after it.
    let base = "/dns-query";
    match request::route(base, &path) {
        Ok(request::Route::Plain) => assert_eq!(path, base),
        Ok(request::Route::WithId(id)) => {
            assert_eq!(path, format!("{base}/{id}"));
            assert!(!id.is_empty() && !id.contains('/'), "{id:?}");
        }
        Err(refusal) => {
            assert_eq!(refusal, request::Refusal::NotFound);
            assert_ne!(path, base);
        }
    }

    // The dns parameter: what is decoded is what the first `dns=` carries.
    let first_dns = query.split('&').find_map(|pair| pair.strip_prefix("dns="));
    match request::get_message(Some(&query)) {
        Ok(message) => {
            assert!(message.len() <= request::MAX_MESSAGE);
            let value = first_dns.expect("a message without a dns parameter");
            let unpadded = value.trim_end_matches('=');
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(unpadded)
                .expect("accepted, so it decodes");
            assert_eq!(decoded, message);
            // A message dotgate can read is at least a header.
            if request::check_message(&message).is_ok() {
                assert!(message.len() >= dns::HEADER_LEN);
            }
        }
        Err(request::Refusal::NoDnsParameter) => assert!(first_dns.is_none()),
        Err(request::Refusal::BadBase64 | request::Refusal::TooLarge) => {
            assert!(first_dns.is_some())
        }
        Err(other) => panic!("get_message refused with {other:?}"),
    }

    // The content type: the media type before any parameter, any case.
    if request::is_dns_message(Some(content_type)) {
        let text = std::str::from_utf8(content_type).expect("accepted, so UTF-8");
        let media = text.split(';').next().unwrap_or_default().trim();
        assert!(media.eq_ignore_ascii_case(request::DNS_MESSAGE), "{text:?}");
    }

    // The forwarding header: a trusted peer's names a client that the
    // header holds; an untrusted peer's is never read.
    let header = if selector & 1 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let forwarding = Forwarding {
        trusted: vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "10.0.0.0/8".parse().expect("a CIDR"),
        ],
        header,
    };
    let peer: IpAddr = if selector & 2 == 0 {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::new(192, 0, 2, 1).into()
    };
    let mut headers = hyper::HeaderMap::new();
    if let Ok(value) = hyper::header::HeaderValue::from_bytes(forwarding_value) {
        headers.insert(header.name(), value);
    }
    match forwarded::client(&forwarding, peer, &headers) {
        Ok(Some(ip)) => {
            assert!(
                forwarding.trusts(peer),
                "an untrusted peer's header was read"
            );
            let text = String::from_utf8_lossy(forwarding_value).to_ascii_lowercase();
            let shown = ip.to_string();
            // An IPv4 address is in the header as written (an IPv6 one
            // may be written in several forms).
            assert!(
                ip.is_ipv6() || text.contains(&shown),
                "{ip} is not in {text:?}"
            );
        }
        Ok(None) => {}
        Err(_) => assert!(forwarding.trusts(peer)),
    }
}
