//! The HTTP/2 session's rules, byte for byte and without a socket: what a
//! client sends goes in, the frames dotgate would send come out and are
//! read back here.

use tokio::time::{Duration, Instant};

use super::frame::{flag, ErrorCode, Header, Kind, HEADER_LEN, PREFACE};
use super::session::{Event, Failure, Limits, Session, CONNECTION_WINDOW};
use crate::server::doh::exchange::Reply;
use crate::server::doh::request::{Method, Refusal};

const LIMITS: Limits = Limits {
    max_streams: 4,
    max_header_block: 1024,
    max_header_list: 4096,
    max_resets: 8,
    max_error_resets: 16,
};

/// A frame as dotgate wrote it.
#[derive(Debug)]
struct Out {
    kind: Kind,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Out {
    fn code(&self) -> u32 {
        let at = if self.kind == Kind::GoAway { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// Takes the frames in the session's output.
fn frames(session: &mut Session) -> Vec<Out> {
    let bytes = std::mem::take(&mut session.out);
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let header = Header::parse(rest[..HEADER_LEN].try_into().unwrap());
        let end = HEADER_LEN + header.len;
        out.push(Out {
            kind: header.kind,
            flags: header.flags,
            stream: header.stream,
            payload: rest[HEADER_LEN..end].to_vec(),
        });
        rest = &rest[end..];
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    super::frame::write_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PRIORITY: u8 = 0x2;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

/// A literal header field without indexing, new name, no Huffman.
fn field(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// The header block of a request (`:method`, `:scheme`, `:path`, and the
/// fields given).
fn block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, ":method", method);
    field(&mut out, ":scheme", "https");
    field(&mut out, ":path", path);
    for (name, value) in extra {
        field(&mut out, name, value);
    }
    out
}

fn get(stream: u32) -> Vec<u8> {
    frame(
        HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        stream,
        &block("GET", "/dns-query?dns=AAAB", &[]),
    )
}

/// A session past the preface and both SETTINGS, its output read.
fn open() -> (Session, Instant) {
    let now = Instant::now();
    let mut session = Session::new(LIMITS, None);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    session.receive(&hello, now);
    let first = frames(&mut session);
    // Ours first (streams and header list), the connection's window
    // widened, then the acknowledgement of the client's.
    assert_eq!(first[0].kind, Kind::Settings);
    assert_eq!(first[0].flags, 0);
    assert_eq!(first[1].kind, Kind::WindowUpdate);
    assert_eq!(first[2].kind, Kind::Settings);
    assert_eq!(first[2].flags, flag::ACK);
    (session, now)
}

fn request(session: &mut Session) -> Option<(u32, Vec<u8>, Option<Vec<u8>>)> {
    match session.next_event()? {
        Event::Request { stream, head, body } => {
            assert_eq!(
                head.method,
                Ok(if body.is_some() {
                    Method::Post
                } else {
                    Method::Get
                })
            );
            Some((stream, head.target.into_bytes(), body))
        }
        Event::Refuse { stream, refusal } => panic!("stream {stream} refused: {refusal}"),
    }
}

fn dns(len: usize) -> Reply {
    Reply::Dns(vec![0; len])
}

#[test]
fn a_get_becomes_a_request_and_its_answer_ends_the_stream() {
    let (mut session, now) = open();
    session.receive(&get(1), now);
    let (stream, target, body) = request(&mut session).unwrap();
    assert_eq!(
        (stream, &target[..], body),
        (1, &b"/dns-query?dns=AAAB"[..], None)
    );
    assert!(!session.is_quiet());
    assert!(session.respond(1, dns(40)));
    let out = frames(&mut session);
    assert_eq!(out[0].kind, Kind::Headers);
    assert_eq!(out[0].flags, flag::END_HEADERS);
    assert_eq!(out[1].kind, Kind::Data);
    assert_eq!(out[1].flags, flag::END_STREAM);
    assert_eq!(out[1].payload.len(), 40);
    assert!(session.is_quiet());
    // Nothing is held once the connection is quiet but what the HPACK
    // table keeps.
    session.release();
    assert!(session.out.capacity() == 0);
}

#[test]
fn a_post_body_in_padded_pieces_is_joined() {
    let (mut session, now) = open();
    let head = block(
        "POST",
        "/dns-query",
        &[("content-type", "application/dns-message")],
    );
    let post = |stream: u32| {
        [
            frame(HEADERS, flag::END_HEADERS, stream, &head),
            frame(DATA, flag::PADDED, stream, &[2, b'a', b'b', 0, 0]),
            frame(DATA, flag::END_STREAM, stream, b"cd"),
        ]
        .concat()
    };
    let len = post(1).len();
    // Split anywhere, the same request comes out.
    for (i, cut) in [1, 9, 10, 40, len - 1].into_iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        let bytes = post(stream);
        session.receive(&bytes[..cut], now);
        assert!(session.begun().is_some() || session.oldest_body().is_some());
        session.receive(&bytes[cut..], now);
        let (got, _, body) = request(&mut session).unwrap();
        assert_eq!((got, body), (stream, Some(b"abcd".to_vec())));
        assert!(session.begun().is_none());
        session.respond(stream, dns(1));
        frames(&mut session);
        assert!(session.is_quiet());
    }
}

#[test]
fn a_response_waits_for_the_clients_window() {
    let (mut session, now) = open();
    // The client allows 10 bytes per stream.
    session.receive(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]), now);
    frames(&mut session);
    session.receive(&get(1), now);
    request(&mut session).unwrap();
    session.respond(1, dns(25));
    let out = frames(&mut session);
    let data: Vec<_> = out.iter().filter(|f| f.kind == Kind::Data).collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].payload.len(), 10);
    assert_eq!(data[0].flags, 0);
    assert!(!session.is_quiet());
    session.receive(&frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()), now);
    let out = frames(&mut session);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload.len(), 15);
    assert_eq!(out[0].flags, flag::END_STREAM);
    assert!(session.is_quiet());
}

#[test]
fn a_request_reset_in_the_same_read_never_reaches_the_upstream() {
    let (mut session, now) = open();
    let mut bytes = get(1);
    bytes.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    session.receive(&bytes, now);
    assert!(session.next_event().is_none());
    assert!(session.is_quiet());
}

#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let (mut session, now) = open();
    let mut stream = 1;
    for _ in 0..=LIMITS.max_resets {
        let mut bytes = get(stream);
        bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        session.receive(&bytes, now);
        stream += 2;
    }
    assert!(matches!(session.failure(), Some(Failure::Calm(_))));
    let out = frames(&mut session);
    let goaway = out.last().unwrap();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(goaway.code(), ErrorCode::EnhanceYourCalm as u32);
}

#[test]
fn answered_requests_earn_back_resets() {
    let (mut session, now) = open();
    let mut stream = 1;
    // A browser cancelling now and then, over many requests.
    for i in 0..(LIMITS.max_resets * 10) {
        session.receive(&get(stream), now);
        if i % 2 == 0 {
            session.receive(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()), now);
        } else {
            request(&mut session).unwrap();
            session.respond(stream, dns(12));
        }
        stream += 2;
        frames(&mut session);
    }
    assert_eq!(session.failure(), None);
}

#[test]
fn streams_past_the_limit_are_refused() {
    let (mut session, now) = open();
    let bytes: Vec<u8> = (0..5).flat_map(|i| get(2 * i + 1)).collect();
    session.receive(&bytes, now);
    let taken = std::iter::from_fn(|| request(&mut session)).count();
    assert_eq!(taken, LIMITS.max_streams as usize);
    let out = frames(&mut session);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].kind, out[0].stream), (Kind::RstStream, 9));
    assert_eq!(out[0].code(), ErrorCode::RefusedStream as u32);
}

#[test]
fn too_many_refusals_end_the_connection() {
    let (mut session, now) = open();
    let mut stream = 1;
    for _ in 0..LIMITS.max_streams {
        session.receive(&get(stream), now);
        stream += 2;
    }
    for _ in 0..=LIMITS.max_error_resets {
        session.receive(&get(stream), now);
        stream += 2;
    }
    assert!(matches!(session.failure(), Some(Failure::Calm(_))));
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    let (mut session, now) = open();
    session.receive(&frame(HEADERS, 0, 1, &block("GET", "/dns-query", &[])), now);
    assert!(session.begun().is_some());
    for _ in 0..10 {
        session.receive(&frame(CONTINUATION, 0, 1, &[0x41; 200]), now);
    }
    assert!(matches!(session.failure(), Some(Failure::Calm(_))));
    let out = frames(&mut session);
    assert_eq!(
        out.last().unwrap().code(),
        ErrorCode::EnhanceYourCalm as u32
    );
}

#[test]
fn a_header_block_in_pieces_is_one_request() {
    let (mut session, now) = open();
    let head = block("GET", "/dns-query?dns=AAAB", &[]);
    let (first, rest) = head.split_at(5);
    let mut bytes = frame(HEADERS, flag::END_STREAM, 1, first);
    bytes.extend(frame(CONTINUATION, flag::END_HEADERS, 1, rest));
    session.receive(&bytes, now);
    assert_eq!(request(&mut session).unwrap().0, 1);
    // Another frame inside a header block is an error.
    let mut bytes = frame(HEADERS, flag::END_STREAM, 3, first);
    bytes.extend(frame(PING, 0, 0, &[0; 8]));
    session.receive(&bytes, now);
    assert_eq!(
        session.failure(),
        Some(Failure::Protocol("a header block was interrupted"))
    );
}

#[test]
fn bad_prefaces_and_oversized_frames_end_the_connection() {
    let now = Instant::now();
    let mut session = Session::new(LIMITS, None);
    session.receive(b"GET / HTTP/1.1\r\n", now);
    assert_eq!(session.failure(), Some(Failure::Preface));
    let out = frames(&mut session);
    assert_eq!(out.last().unwrap().code(), ErrorCode::ProtocolError as u32);

    let (mut session, now) = open();
    // A header announcing a frame of 1 MiB: refused before its payload.
    session.receive(&[0x10, 0, 0, DATA, 0, 0, 0, 0, 1], now);
    assert_eq!(session.failure(), Some(Failure::FrameSize));

    let mut session = Session::new(LIMITS, None);
    let mut hello = PREFACE.to_vec();
    hello.extend(get(1));
    session.receive(&hello, now);
    assert_eq!(
        session.failure(),
        Some(Failure::Protocol("the first frame must be SETTINGS"))
    );
}

#[test]
fn a_body_past_one_message_is_refused_at_once() {
    let (mut session, now) = open();
    let head = block(
        "POST",
        "/dns-query",
        &[("content-type", "application/dns-message")],
    );
    session.receive(&frame(HEADERS, flag::END_HEADERS, 1, &head), now);
    let chunk = [0u8; 16_384];
    for _ in 0..4 {
        session.receive(&frame(DATA, 0, 1, &chunk), now);
    }
    assert!(matches!(
        session.next_event(),
        Some(Event::Refuse {
            stream: 1,
            refusal: Refusal::TooLarge
        })
    ));
    // Its window was widened while it was being read, then no more.
    let out = frames(&mut session);
    assert!(out
        .iter()
        .any(|f| f.kind == Kind::WindowUpdate && f.stream == 1));
    // The refusal is sent, and the stream reset: its body is still coming.
    session.respond(1, Reply::Refused(Refusal::TooLarge));
    let out = frames(&mut session);
    let reset = out.iter().find(|f| f.kind == Kind::RstStream).unwrap();
    assert_eq!((reset.stream, reset.code()), (1, 0));
    // Its share of the connection's window is given back with it.
    assert!(out
        .iter()
        .any(|f| f.kind == Kind::WindowUpdate && f.stream == 0));
    assert!(session.is_quiet());
    // What was still on its way is dropped.
    session.receive(&frame(DATA, flag::END_STREAM, 1, &chunk[..100]), now);
    assert_eq!(session.failure(), None);
}

#[test]
fn a_body_that_stops_coming_gets_408() {
    let (mut session, now) = open();
    let head = block(
        "POST",
        "/dns-query",
        &[
            ("content-type", "application/dns-message"),
            ("content-length", "100"),
        ],
    );
    session.receive(&frame(HEADERS, flag::END_HEADERS, 1, &head), now);
    assert_eq!(session.oldest_body(), Some(now));
    session.expire_bodies(now - Duration::from_millis(1));
    assert!(session.next_event().is_none());
    session.expire_bodies(now);
    assert!(matches!(
        session.next_event(),
        Some(Event::Refuse {
            refusal: Refusal::Timeout,
            ..
        })
    ));
    assert_eq!(session.oldest_body(), None);
}

#[test]
fn pings_are_answered_and_goaway_is_graceful() {
    let (mut session, now) = open();
    session.receive(&get(1), now);
    request(&mut session).unwrap();
    session.receive(&frame(PING, 0, 0, b"12345678"), now);
    let out = frames(&mut session);
    assert_eq!((out[0].kind, out[0].flags), (Kind::Ping, flag::ACK));
    assert_eq!(out[0].payload, b"12345678");
    session.go_away();
    // A stream after the GOAWAY's last is refused; the one before is
    // still answered.
    session.receive(&get(3), now);
    let out = frames(&mut session);
    assert_eq!(out[0].kind, Kind::GoAway);
    assert_eq!(
        u32::from_be_bytes(out[0].payload[..4].try_into().unwrap()),
        1
    );
    assert_eq!((out[1].kind, out[1].stream), (Kind::RstStream, 3));
    assert!(session.respond(1, dns(12)));
    assert!(session.is_quiet());
}

#[test]
fn the_connection_window_is_given_back_as_requests_end() {
    let (mut session, now) = open();
    let head = block(
        "POST",
        "/dns-query",
        &[("content-type", "application/dns-message")],
    );
    let body = vec![0u8; 16_000];
    let mut stream = 1;
    let mut given = 0u32;
    for _ in 0..8 {
        let mut bytes = frame(HEADERS, flag::END_HEADERS, stream, &head);
        bytes.extend(frame(DATA, flag::END_STREAM, stream, &body));
        session.receive(&bytes, now);
        request(&mut session).unwrap();
        session.respond(stream, dns(12));
        for f in frames(&mut session) {
            if f.kind == Kind::WindowUpdate && f.stream == 0 {
                given += f.code();
            }
        }
        stream += 2;
    }
    assert!(given >= CONNECTION_WINDOW / 4, "{given}");
    assert_eq!(session.failure(), None);
}

#[test]
fn a_stream_reset_for_a_bad_priority_is_not_opened_again() {
    let (mut session, now) = open();
    // PRIORITY of 3 bytes on idle stream 7: a stream error, reset.
    session.receive(&frame(PRIORITY, 0, 7, &[0; 3]), now);
    let out = frames(&mut session);
    assert_eq!((out[0].kind, out[0].stream), (Kind::RstStream, 7));
    assert_eq!(out[0].code(), ErrorCode::FrameSizeError as u32);
    // The stream is closed: a request on it is not served.
    session.receive(&get(7), now);
    assert!(session.next_event().is_none());
    assert!(session.failure().is_some() || session.is_quiet());
}
