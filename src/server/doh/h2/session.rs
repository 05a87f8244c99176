//! The HTTP/2 protocol of one DoH connection, without I/O: bytes the
//! client sent go in ([`Session::receive`]), requests whose head and body
//! have all arrived come out ([`Session::next_event`]), responses go in
//! ([`Session::respond`]), and the bytes to send pile up in
//! [`Session::out`] for the connection's task to write. Time comes in as an
//! argument, so every rule here is tested without a socket or a clock.
//!
//! What a DoH server needs of RFC 9113, and no more: no server push, no
//! priorities (parsed and ignored), no trailers kept, one request and one
//! response per stream, bodies of at most one DNS message. The limits are
//! the connection's defence, each a rule here:
//! * frames larger than 16 KiB, header blocks larger than
//!   [`Limits::max_header_block`] (a CONTINUATION flood) and more resets
//!   than [`Limits::max_resets`] of requests not yet answered (rapid
//!   reset, CVE-2023-44487) end the connection with a GOAWAY;
//! * streams past [`Limits::max_streams`] are refused, and a client that
//!   makes dotgate refuse or reset too many ends the connection too;
//! * request bodies are held only up to one DNS message per stream, and
//!   the connection's window is given back only as requests are answered,
//!   so what a connection holds in bodies is bounded by
//!   [`CONNECTION_WINDOW`];
//! * nothing is held between frames but what the client has begun: a
//!   partial frame, an unfinished header block, a body still coming.
//!   Everything else (the stream table, buffers) is given back whenever the
//!   connection has no request ([`Session::release`]).

use std::collections::VecDeque;

use tokio::time::Instant;

use hyper::header::HeaderName;
use hyper::HeaderMap;

use super::frame::{
    self, flag, setting, ErrorCode, Header, Kind, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, HEADER_LEN,
    MAX_WINDOW, PREFACE,
};
use super::hpack::{Decoder, HpackError};
use super::response;
use crate::server::doh::exchange::{Head, Reply};
use crate::server::doh::request::{self, Method, Refusal, MAX_MESSAGE};

/// The connection's receive window: what bodies its requests in progress
/// may hold at once, over all streams. A stream's own stays at the
/// default (65,535), one message.
pub const CONNECTION_WINDOW: u32 = 256 * 1024;

/// The dynamic table dotgate lets a client's header encoder use: the
/// default of RFC 7541; a DoH client's repeated fields fit in a fraction.
pub const HEADER_TABLE_SIZE: u32 = 4096;

/// The connection's rules against what a client may ask of it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// One header block (HEADERS and its CONTINUATIONs), in bytes as sent.
    pub max_header_block: usize,
    /// One decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list: usize,
    /// Requests the client may reset before they are answered, beyond
    /// those earned back by answered requests (one each).
    pub max_resets: u32,
    /// Streams dotgate may refuse or reset for the client's errors.
    pub max_error_resets: u32,
}

/// What the client asked, for the connection's task.
#[derive(Debug)]
pub enum Event {
    /// A request whose head and body have all arrived (the body is
    /// `None` but for a POST).
    Request {
        stream: u32,
        head: Head,
        body: Option<Vec<u8>>,
    },
    /// A request refused by the framing itself, before the DNS is looked
    /// at (a body too large): answer it with this refusal.
    Refuse { stream: u32, refusal: Refusal },
}

impl Event {
    fn stream(&self) -> u32 {
        match self {
            Event::Request { stream, .. } | Event::Refuse { stream, .. } => *stream,
        }
    }
}

/// Why the session ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("not an HTTP/2 connection preface")]
    Preface,
    #[error("HTTP/2 protocol error: {0}")]
    Protocol(&'static str),
    #[error("HTTP/2 frame too large")]
    FrameSize,
    #[error("HTTP/2 flow control violated")]
    FlowControl,
    #[error("a header block does not decode (HPACK)")]
    Compression,
    #[error("HTTP/2 abuse: {0}")]
    Calm(&'static str),
}

impl Failure {
    fn code(self) -> ErrorCode {
        match self {
            Failure::Preface | Failure::Protocol(_) => ErrorCode::ProtocolError,
            Failure::FrameSize => ErrorCode::FrameSizeError,
            Failure::FlowControl => ErrorCode::FlowControlError,
            Failure::Compression => ErrorCode::CompressionError,
            Failure::Calm(_) => ErrorCode::EnhanceYourCalm,
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Bytes of the client preface matched so far.
    Preface(usize),
    /// The preface has arrived: the next frame must be SETTINGS.
    FirstSettings,
    Open,
    /// The connection failed: GOAWAY sent, nothing more is read.
    Failed(Failure),
}

/// A header block being received.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// What one stream is doing.
#[derive(Debug)]
enum State {
    /// The head has arrived; the body is coming.
    Receiving { head: Head, body: Vec<u8> },
    /// Answered before the body ended (too large, or too slow): the rest of
    /// the body is dropped as it comes.
    Discarding,
    /// The request is being answered.
    Waiting,
    /// The response is partly sent, waiting for flow-control window.
    Sending { rest: Vec<u8>, from: usize },
}

#[derive(Debug)]
struct Stream {
    id: u32,
    state: State,
    /// The client's side has ended (END_STREAM received).
    ended: bool,
    /// When its head arrived: a body must follow within the read timeout.
    opened: Instant,
    /// What dotgate may send on it.
    send_window: i64,
    /// Body bytes received (and counted against the connection's window)
    /// that have not been given back.
    received: u32,
    /// Body bytes received since the stream's window was last widened.
    unacked: u32,
    /// What the client may still send on it.
    recv_window: i64,
}

/// One connection's HTTP/2 state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    phase: Phase,
    /// Bytes of a frame not yet all arrived (its header first).
    partial: Vec<u8>,
    /// When the client began what is not finished yet: a partial frame or
    /// an open header block.
    begun: Option<Instant>,
    block: Option<Block>,
    decoder: Decoder,
    streams: Vec<Stream>,
    /// The highest stream the client has opened.
    last_stream: u32,
    /// After a GOAWAY of dotgate's: the last stream it will answer.
    going_away: Option<u32>,
    /// The client sent GOAWAY.
    peer_gone: bool,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_window: i64,
    peer_max_frame: usize,
    /// What dotgate may send on the connection.
    send_window: i64,
    /// What the client may send on the connection before it hears more.
    recv_window: i64,
    /// Bytes of the connection's window to give back.
    credit: u32,
    /// Resets of unanswered requests, less one per answered request.
    resets: u32,
    error_resets: u32,
    /// The forwarding header to keep, when the peer is a trusted proxy.
    forwarding: Option<&'static str>,
    events: VecDeque<Event>,
    /// Bytes to send.
    pub out: Vec<u8>,
}

impl Session {
    /// A session whose first bytes out are dotgate's SETTINGS and the
    /// widening of the connection's window. `forwarding`: the forwarding
    /// header to keep, when the peer is a trusted proxy.
    pub fn new(limits: Limits, forwarding: Option<&'static str>) -> Session {
        let mut out = Vec::new();
        frame::settings(
            &mut out,
            &[
                (setting::MAX_CONCURRENT_STREAMS, limits.max_streams),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    u32::try_from(limits.max_header_list).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::window_update(&mut out, 0, CONNECTION_WINDOW - DEFAULT_WINDOW);
        Session {
            limits,
            phase: Phase::Preface(0),
            partial: Vec::new(),
            begun: None,
            block: None,
            decoder: Decoder::new(HEADER_TABLE_SIZE as usize),
            streams: Vec::new(),
            last_stream: 0,
            going_away: None,
            peer_gone: false,
            peer_window: i64::from(DEFAULT_WINDOW),
            peer_max_frame: DEFAULT_MAX_FRAME,
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: i64::from(CONNECTION_WINDOW),
            credit: 0,
            resets: 0,
            error_resets: 0,
            forwarding,
            events: VecDeque::new(),
            out,
        }
    }

    /// Why the connection failed, once it has: its GOAWAY is in
    /// [`Session::out`], and nothing more is read.
    pub fn failure(&self) -> Option<Failure> {
        match self.phase {
            Phase::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    /// When the client began something it has not finished (a frame, a
    /// header block): the read timeout bounds it.
    pub fn begun(&self) -> Option<Instant> {
        self.begun
    }

    /// The oldest stream whose body is still coming, and when its head came.
    pub fn oldest_body(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter(|s| matches!(s.state, State::Receiving { .. }))
            .map(|s| s.opened)
            .min()
    }

    /// No stream is open and nothing is begun: the idle timer may run.
    pub fn is_quiet(&self) -> bool {
        self.streams.is_empty() && self.begun.is_none()
    }

    /// Streams open (requests being received, answered or sent).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The client sent GOAWAY: no new request will come.
    pub fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// The next request that has arrived, oldest first.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Gives back the memory of buffers that are empty (called when the
    /// connection has no request in progress).
    pub fn release(&mut self) {
        if self.streams.is_empty() {
            self.streams = Vec::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
        if self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    /// Says GOAWAY (NO_ERROR) to close gracefully: the requests already
    /// begun are answered, no new one is taken.
    pub fn go_away(&mut self) {
        if self.going_away.is_none() && self.failure().is_none() {
            self.going_away = Some(self.last_stream);
            frame::goaway(&mut self.out, self.last_stream, ErrorCode::NoError);
        }
    }

    /// Takes what the client sent at `now`.
    pub fn receive(&mut self, mut input: &[u8], now: Instant) {
        if let Phase::Preface(matched) = self.phase {
            let take = input.len().min(PREFACE.len() - matched);
            if input[..take] != PREFACE[matched..matched + take] {
                return self.fail(Failure::Preface);
            }
            input = &input[take..];
            self.phase = if matched + take == PREFACE.len() {
                Phase::FirstSettings
            } else {
                self.begun.get_or_insert(now);
                Phase::Preface(matched + take)
            };
        }
        while !input.is_empty() && self.failure().is_none() {
            if self.partial.is_empty() {
                // Whole frames straight from the input, without a copy.
                let Some(head) = input.first_chunk::<HEADER_LEN>() else {
                    self.hold(input, now);
                    break;
                };
                let header = Header::parse(head);
                if header.len > DEFAULT_MAX_FRAME {
                    return self.fail(Failure::FrameSize);
                }
                let end = HEADER_LEN + header.len;
                if input.len() < end {
                    self.hold(input, now);
                    break;
                }
                self.frame(header, &input[HEADER_LEN..end], now);
                input = &input[end..];
            } else {
                input = self.complete_partial(input, now);
            }
        }
        if self.partial.is_empty()
            && self.block.is_none()
            && !matches!(self.phase, Phase::Preface(_))
        {
            self.begun = None;
        }
    }

    /// Keeps the start of a frame that has not all arrived.
    fn hold(&mut self, bytes: &[u8], now: Instant) {
        self.begun.get_or_insert(now);
        self.partial.extend_from_slice(bytes);
    }

    /// Adds to the partial frame from `input`; runs it once whole. Returns
    /// the input left.
    fn complete_partial<'a>(&mut self, input: &'a [u8], now: Instant) -> &'a [u8] {
        let mut input = input;
        if self.partial.len() < HEADER_LEN {
            let take = input.len().min(HEADER_LEN - self.partial.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        let Some(head) = self.partial.first_chunk::<HEADER_LEN>() else {
            return input;
        };
        let header = Header::parse(head);
        if header.len > DEFAULT_MAX_FRAME {
            self.fail(Failure::FrameSize);
            return &[];
        }
        let missing = HEADER_LEN + header.len - self.partial.len();
        let take = input.len().min(missing);
        self.partial.extend_from_slice(&input[..take]);
        if take == missing {
            let whole = std::mem::take(&mut self.partial);
            self.frame(header, &whole[HEADER_LEN..], now);
            // The buffer is kept for the next partial frame while the
            // connection is busy; `release` gives it back.
            self.partial = whole;
            self.partial.clear();
        }
        &input[take..]
    }

    /// Ends the connection: GOAWAY with `failure`'s code.
    fn fail(&mut self, failure: Failure) {
        if self.failure().is_none() {
            frame::goaway(&mut self.out, self.last_stream, failure.code());
            self.phase = Phase::Failed(failure);
            self.partial = Vec::new();
            self.block = None;
        }
    }

    /// Ends one stream with RST_STREAM; counted against the client.
    fn reset(&mut self, stream: u32, code: ErrorCode) {
        frame::rst_stream(&mut self.out, stream, code);
        self.close_stream(stream);
        self.error_resets += 1;
        if self.error_resets > self.limits.max_error_resets {
            self.fail(Failure::Calm("too many streams refused or reset"));
        }
    }

    fn position(&self, stream: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == stream)
    }

    /// Forgets a stream, giving back its share of the connection's window.
    fn close_stream(&mut self, stream: u32) {
        if let Some(at) = self.position(stream) {
            let gone = self.streams.swap_remove(at);
            self.give_back(gone.received);
        }
        self.events.retain(|e| e.stream() != stream);
    }

    /// Gives `bytes` of the connection's window back to the client, in
    /// updates of at least a quarter of the window.
    fn give_back(&mut self, bytes: u32) {
        self.credit += bytes;
        if self.credit >= CONNECTION_WINDOW / 4 {
            frame::window_update(&mut self.out, 0, self.credit);
            self.recv_window += i64::from(self.credit);
            self.credit = 0;
        }
    }

    /// One whole frame.
    fn frame(&mut self, header: Header, payload: &[u8], now: Instant) {
        if self.phase == Phase::FirstSettings {
            if header.kind != Kind::Settings || header.has(flag::ACK) {
                return self.fail(Failure::Protocol("the first frame must be SETTINGS"));
            }
            self.phase = Phase::Open;
        }
        if let Some(block) = &self.block {
            if header.kind != Kind::Continuation || header.stream != block.stream {
                return self.fail(Failure::Protocol("a header block was interrupted"));
            }
        }
        match header.kind {
            Kind::Data => self.data(header, payload),
            Kind::Headers => self.headers(header, payload, now),
            Kind::Continuation => self.continuation(header, payload, now),
            Kind::Priority => {
                if header.stream == 0 {
                    self.fail(Failure::Protocol("PRIORITY on stream 0"));
                } else if payload.len() != 5 {
                    // A stream error (§6.3) closes the stream, idle or not:
                    // a later HEADERS may not open it again.
                    self.last_stream = self.last_stream.max(header.stream);
                    self.reset(header.stream, ErrorCode::FrameSizeError);
                }
            }
            Kind::RstStream => self.rst_stream(header, payload),
            Kind::Settings => self.settings(header, payload),
            Kind::PushPromise => self.fail(Failure::Protocol("a client may not push")),
            Kind::Ping => {
                if header.stream != 0 {
                    return self.fail(Failure::Protocol("PING on a stream"));
                }
                let Ok(ping) = <&[u8; 8]>::try_from(payload) else {
                    return self.fail(Failure::FrameSize);
                };
                if !header.has(flag::ACK) {
                    frame::ping_ack(&mut self.out, ping);
                }
            }
            Kind::GoAway => {
                if header.stream != 0 {
                    return self.fail(Failure::Protocol("GOAWAY on a stream"));
                }
                self.peer_gone = true;
            }
            Kind::WindowUpdate => self.window_update(header, payload),
            Kind::Unknown => {}
        }
    }

    fn data(&mut self, header: Header, payload: &[u8]) {
        if header.stream == 0 {
            return self.fail(Failure::Protocol("DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included.
        let len = payload.len() as u32;
        self.recv_window -= i64::from(len);
        if self.recv_window < 0 {
            return self.fail(Failure::FlowControl);
        }
        let Some(data) = frame::unpadded(&header, payload) else {
            return self.fail(Failure::Protocol("padding longer than the frame"));
        };
        let Some(at) = self.position(header.stream) else {
            // A stream already closed (or reset by either side): the bytes
            // are dropped and their window given back.
            self.give_back(len);
            if header.stream > self.last_stream {
                self.fail(Failure::Protocol("DATA on a stream never opened"));
            }
            return;
        };
        let stream = &mut self.streams[at];
        if stream.ended {
            return self.reset(header.stream, ErrorCode::StreamClosed);
        }
        stream.received += len;
        stream.recv_window -= i64::from(len);
        if stream.recv_window < 0 {
            return self.reset(header.stream, ErrorCode::FlowControlError);
        }
        let end = header.has(flag::END_STREAM);
        stream.ended = end;
        let mut too_large = false;
        if let State::Receiving { body, .. } = &mut stream.state {
            if body.len() + data.len() > MAX_MESSAGE {
                too_large = true;
            } else {
                body.extend_from_slice(data);
                stream.unacked += len;
            }
        }
        // A body still coming has used half the stream's window: widen it,
        // so that the client sees it read (and curl does not give up). The
        // body's own limit, not the window, bounds what it may hold.
        if !end && stream.unacked >= DEFAULT_WINDOW / 2 {
            let widen = stream.unacked;
            stream.unacked = 0;
            stream.recv_window += i64::from(widen);
            frame::window_update(&mut self.out, header.stream, widen);
        }
        if too_large {
            self.streams[at].state = State::Discarding;
            self.events.push_back(Event::Refuse {
                stream: header.stream,
                refusal: Refusal::TooLarge,
            });
        } else if end {
            self.request_complete(at);
        }
    }

    fn headers(&mut self, header: Header, payload: &[u8], now: Instant) {
        if header.stream == 0 {
            return self.fail(Failure::Protocol("HEADERS on stream 0"));
        }
        let Some(mut fragment) = frame::unpadded(&header, payload) else {
            return self.fail(Failure::Protocol("padding longer than the frame"));
        };
        if header.has(flag::PRIORITY) {
            let Some(rest) = fragment.get(5..) else {
                return self.fail(Failure::FrameSize);
            };
            fragment = rest;
        }
        if header.stream.is_multiple_of(2) {
            return self.fail(Failure::Protocol("a client stream must be odd"));
        }
        let known = self.position(header.stream).is_some();
        if !known && header.stream <= self.last_stream {
            // A stream closed already: a new one may not reuse it (§5.1.1),
            // unless these are trailers of one that was reset meanwhile.
            if !header.has(flag::END_STREAM) {
                return self.fail(Failure::Protocol("stream ids must increase"));
            }
        }
        let block = Block {
            stream: header.stream,
            end_stream: header.has(flag::END_STREAM),
            bytes: Vec::new(),
        };
        if header.has(flag::END_HEADERS) {
            self.header_block(block, fragment, now);
        } else {
            self.begun.get_or_insert(now);
            let mut block = block;
            block.bytes.extend_from_slice(fragment);
            self.block = Some(block);
            self.check_block_size();
        }
    }

    fn continuation(&mut self, header: Header, payload: &[u8], now: Instant) {
        let Some(mut block) = self.block.take() else {
            return self.fail(Failure::Protocol("CONTINUATION without HEADERS"));
        };
        block.bytes.extend_from_slice(payload);
        if header.has(flag::END_HEADERS) {
            let bytes = std::mem::take(&mut block.bytes);
            self.header_block(block, &bytes, now);
        } else {
            self.block = Some(block);
            self.check_block_size();
        }
    }

    fn check_block_size(&mut self) {
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.bytes.len() > self.limits.max_header_block)
        {
            self.fail(Failure::Calm("header block too large"));
        }
    }

    /// A whole header block: a new request's head, or trailers.
    fn header_block(&mut self, block: Block, bytes: &[u8], now: Instant) {
        self.block = None;
        let trusted = self.forwarding;
        let mut fields = Fields::new(trusted);
        let decoded = self
            .decoder
            .decode(bytes, self.limits.max_header_list, |name, value| {
                fields.add(name, value)
            });
        match decoded {
            Ok(()) => {}
            Err(HpackError::ListTooLarge) => {
                if block.stream > self.last_stream {
                    self.last_stream = block.stream;
                }
                return self.reset(block.stream, ErrorCode::ProtocolError);
            }
            Err(e) => {
                tracing::debug!(error = %e, "HPACK");
                return self.fail(Failure::Compression);
            }
        }
        if let Some(at) = self.position(block.stream) {
            // Trailers: they end the request; what they say is not used.
            if !block.end_stream {
                return self.reset(block.stream, ErrorCode::ProtocolError);
            }
            self.streams[at].ended = true;
            if matches!(self.streams[at].state, State::Receiving { .. }) {
                self.request_complete(at);
            }
            return;
        }
        if block.stream <= self.last_stream {
            // Trailers of a stream already closed: dropped.
            return;
        }
        self.last_stream = block.stream;
        if self.going_away.is_some_and(|last| block.stream > last) {
            return self.reset(block.stream, ErrorCode::RefusedStream);
        }
        if self.streams.len() >= self.limits.max_streams as usize {
            return self.reset(block.stream, ErrorCode::RefusedStream);
        }
        let Some(head) = fields.head() else {
            return self.reset(block.stream, ErrorCode::ProtocolError);
        };
        let refuse_now = head.announces_too_much();
        self.streams.push(Stream {
            id: block.stream,
            state: State::Receiving {
                head,
                body: Vec::new(),
            },
            ended: block.end_stream,
            opened: now,
            send_window: self.peer_window,
            received: 0,
            unacked: 0,
            recv_window: i64::from(DEFAULT_WINDOW),
        });
        let at = self.streams.len() - 1;
        if refuse_now {
            self.streams[at].state = State::Discarding;
            self.events.push_back(Event::Refuse {
                stream: block.stream,
                refusal: Refusal::TooLarge,
            });
        } else if block.end_stream {
            self.request_complete(at);
        }
    }

    /// The request on stream `at` has all arrived: handed over to be
    /// answered.
    fn request_complete(&mut self, at: usize) {
        let stream = &mut self.streams[at];
        let State::Receiving { head, body } = std::mem::replace(&mut stream.state, State::Waiting)
        else {
            return;
        };
        let body = (head.method == Ok(Method::Post)).then_some(body);
        self.events.push_back(Event::Request {
            stream: stream.id,
            head,
            body,
        });
    }

    fn rst_stream(&mut self, header: Header, payload: &[u8]) {
        if header.stream == 0 {
            return self.fail(Failure::Protocol("RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return self.fail(Failure::FrameSize);
        }
        if header.stream > self.last_stream {
            return self.fail(Failure::Protocol("RST_STREAM on a stream never opened"));
        }
        let Some(at) = self.position(header.stream) else {
            return;
        };
        // A request reset before it was answered cost dotgate work for
        // nothing: past a budget, that is an attack (rapid reset).
        if !matches!(self.streams[at].state, State::Sending { .. }) {
            self.resets += 1;
        }
        self.close_stream(header.stream);
        if self.resets > self.limits.max_resets {
            self.fail(Failure::Calm("too many requests reset before their answer"));
        }
    }

    fn settings(&mut self, header: Header, payload: &[u8]) {
        if header.stream != 0 {
            return self.fail(Failure::Protocol("SETTINGS on a stream"));
        }
        if header.has(flag::ACK) {
            if !payload.is_empty() {
                self.fail(Failure::FrameSize);
            }
            return;
        }
        if !payload.len().is_multiple_of(6) {
            return self.fail(Failure::FrameSize);
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return self.fail(Failure::Protocol("ENABLE_PUSH above 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return self.fail(Failure::FlowControl);
                    }
                    let delta = value - self.peer_window;
                    self.peer_window = value;
                    for stream in &mut self.streams {
                        stream.send_window += delta;
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME as u32..=0x00ff_ffff).contains(&value) {
                        return self.fail(Failure::Protocol("MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // HEADER_TABLE_SIZE: dotgate's encoder keeps no table; the
                // others do not concern a server.
                _ => {}
            }
        }
        frame::settings_ack(&mut self.out);
        self.send_pending();
    }

    fn window_update(&mut self, header: Header, payload: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return self.fail(Failure::FrameSize);
        };
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if header.stream == 0 {
            if increment == 0 {
                return self.fail(Failure::Protocol("WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return self.fail(Failure::FlowControl);
            }
        } else if let Some(at) = self.position(header.stream) {
            if increment == 0 {
                return self.reset(header.stream, ErrorCode::ProtocolError);
            }
            let stream = &mut self.streams[at];
            stream.send_window += increment;
            if stream.send_window > MAX_WINDOW {
                return self.reset(header.stream, ErrorCode::FlowControlError);
            }
        } else if header.stream > self.last_stream {
            return self.fail(Failure::Protocol("WINDOW_UPDATE on a stream never opened"));
        }
        self.send_pending();
    }

    /// Answers the request on `stream` with `reply`; false if the stream
    /// is gone (the client reset it), and the reply dropped.
    pub fn respond(&mut self, stream: u32, reply: Reply) -> bool {
        if self.failure().is_some() {
            return false;
        }
        let Some(at) = self.position(stream) else {
            return false;
        };
        if matches!(self.streams[at].state, State::Sending { .. }) {
            return false;
        }
        // An answered request earns back one reset.
        self.resets = self.resets.saturating_sub(1);
        let status = reply.status();
        let headers = reply.headers();
        let body = reply.into_body();
        // The header block: a few dozen bytes, always one frame.
        let start = self.out.len();
        frame::write_header(&mut self.out, 0, frame::HEADERS, flag::END_HEADERS, stream);
        response::head_block(&mut self.out, status, &headers, body.len());
        let len = self.out.len() - start - HEADER_LEN;
        let len_bytes = (len as u32).to_be_bytes();
        self.out[start..start + 3].copy_from_slice(&len_bytes[1..]);
        if body.is_empty() {
            self.out[start + 4] |= flag::END_STREAM;
            self.finish(at);
            return true;
        }
        self.streams[at].state = State::Sending {
            rest: body,
            from: 0,
        };
        self.send_stream(at);
        true
    }

    /// Sends what the windows allow of stream `at`'s response; closes the
    /// stream once it is all sent. Returns whether it was.
    fn send_stream(&mut self, at: usize) -> bool {
        let max_frame = self.peer_max_frame;
        let stream = &mut self.streams[at];
        let State::Sending { rest, from } = &mut stream.state else {
            return false;
        };
        while *from < rest.len() {
            let allowed = stream.send_window.min(self.send_window);
            if allowed <= 0 {
                return false;
            }
            let take = (rest.len() - *from).min(max_frame).min(allowed as usize);
            let last = *from + take == rest.len();
            frame::write_header(
                &mut self.out,
                take,
                frame::DATA,
                if last { flag::END_STREAM } else { 0 },
                stream.id,
            );
            self.out.extend_from_slice(&rest[*from..*from + take]);
            *from += take;
            stream.send_window -= take as i64;
            self.send_window -= take as i64;
        }
        self.finish(at);
        true
    }

    /// The response on stream `at` is all sent: the stream ends, with a
    /// reset (NO_ERROR) if the client's body was still coming.
    fn finish(&mut self, at: usize) {
        let id = self.streams[at].id;
        if !self.streams[at].ended {
            frame::rst_stream(&mut self.out, id, ErrorCode::NoError);
        }
        self.close_stream(id);
    }

    /// Sends what waited for window, oldest stream first.
    fn send_pending(&mut self) {
        let mut at = 0;
        while at < self.streams.len() && self.send_window > 0 {
            let waiting = matches!(self.streams[at].state, State::Sending { .. });
            // A stream all sent is removed (swapped with the last): look at
            // the same place again.
            if !(waiting && self.send_stream(at)) {
                at += 1;
            }
        }
    }

    /// Answers with 408 every request whose body has been coming since
    /// before `cutoff`.
    pub fn expire_bodies(&mut self, cutoff: Instant) {
        for stream in &mut self.streams {
            if matches!(stream.state, State::Receiving { .. }) && stream.opened <= cutoff {
                stream.state = State::Discarding;
                self.events.push_back(Event::Refuse {
                    stream: stream.id,
                    refusal: Refusal::Timeout,
                });
            }
        }
    }
}

/// The fields of a request head that DoH looks at, gathered as HPACK
/// decodes them.
struct Fields {
    method: Option<Result<Method, Refusal>>,
    path: Option<String>,
    dns_content_type: bool,
    content_length: Option<u64>,
    forwarding: Option<&'static str>,
    forwarded: HeaderMap,
    malformed: bool,
    regular_seen: bool,
}

impl Fields {
    fn new(forwarding: Option<&'static str>) -> Fields {
        Fields {
            method: None,
            path: None,
            dns_content_type: false,
            content_length: None,
            forwarding,
            forwarded: HeaderMap::new(),
            malformed: false,
            regular_seen: false,
        }
    }

    fn add(&mut self, name: &[u8], value: &[u8]) {
        if let Some(pseudo) = name.strip_prefix(b":") {
            // Pseudo-headers come first, each once (RFC 9113 §8.3).
            if self.regular_seen {
                self.malformed = true;
            }
            match pseudo {
                b"method" if self.method.is_none() => {
                    self.method = Some(
                        std::str::from_utf8(value)
                            .map_or(Err(Refusal::MethodNotAllowed), Method::of),
                    );
                }
                b"path" if self.path.is_none() => match std::str::from_utf8(value) {
                    Ok(path) if !path.is_empty() => self.path = Some(path.to_string()),
                    _ => self.malformed = true,
                },
                b"scheme" | b"authority" => {}
                _ => self.malformed = true,
            }
            return;
        }
        self.regular_seen = true;
        match name {
            b"content-type" => self.dns_content_type = request::is_dns_message(Some(value)),
            b"content-length" => {
                self.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {
                if let Some(wanted) = self.forwarding {
                    if name == wanted.as_bytes() {
                        if let Ok(value) = hyper::header::HeaderValue::from_bytes(value) {
                            self.forwarded
                                .append(HeaderName::from_static(wanted), value);
                        }
                    }
                }
            }
        }
    }

    /// The head, if the request has the pseudo-headers a request needs.
    fn head(self) -> Option<Head> {
        if self.malformed {
            return None;
        }
        Some(Head {
            method: self.method?,
            target: self.path?,
            dns_content_type: self.dns_content_type,
            content_length: self.content_length,
            forwarded: self.forwarded,
        })
    }
}
