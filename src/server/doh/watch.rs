//! The read side of a DoH connection, watched for what the read timeout
//! judges: whether the client has begun something it has not finished.
//! hyper owns the parsing and tells nothing of a request until its head is
//! whole, so a slow loris (a head sent a byte at a time) or an HTTP/2
//! header block never ended would otherwise hold its connection until the
//! idle timeout, or forever on HTTP/2 while other frames keep it busy.
//!
//! - HTTP/1.1: bytes that arrive while no request is being answered begin
//!   a request head; the head ends when hyper hands the request over (the
//!   connection calls [`Activity::message_ended`] then). hyper's own
//!   `header_read_timeout` is not used: it runs from the moment hyper waits
//!   for a head, so it closed idle keep-alive connections between requests
//!   at the read timeout instead of the idle timeout.
//! - HTTP/2: [`Frames`] follows the frame headers (9 bytes each, RFC 9113
//!   §4.1) without decoding anything else: a frame partly read, or a header
//!   block whose HEADERS has no END_HEADERS yet, is begun and not finished.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;
use super::protocol::Protocol;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4), before the
/// first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where an HTTP/2 client is in its stream of frames.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Preface bytes still to come.
    preface_left: usize,
    /// The frame header read so far.
    header: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// A HEADERS (or PUSH_PROMISE) frame came without END_HEADERS, and no
    /// CONTINUATION with it yet.
    block_open: bool,
}

impl Frames {
    pub fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            have: 0,
            payload_left: 0,
            block_open: false,
        }
    }

    /// Follows `bytes`, the next the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER_LEN {
                    self.have = 0;
                    let [a, b, c, kind, flags, ..] = self.header;
                    self.payload_left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    if matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION) {
                        self.block_open = flags & END_HEADERS == 0;
                    }
                }
            }
        }
    }

    /// Whether the client has begun something it has not finished: the
    /// preface, a frame, or a header block.
    pub fn unfinished(&self) -> bool {
        (self.preface_left > 0 && self.preface_left < PREFACE_LEN)
            || self.have > 0
            || self.payload_left > 0
            || self.block_open
    }
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection's stream, telling its [`Activity`] what the client began
/// and finished as bytes are read; writes pass through.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// `None` on HTTP/1.1.
    frames: Option<Frames>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, protocol: Protocol, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            frames: (protocol == Protocol::Http2).then(Frames::new),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match &mut self.frames {
            Some(frames) => {
                frames.feed(bytes);
                if frames.unfinished() {
                    self.activity.message_begun();
                } else {
                    self.activity.message_ended();
                }
            }
            None => {
                if !self.activity.is_busy() {
                    self.activity.message_begun();
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.saw(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        out.extend_from_slice(payload);
        out
    }

    /// Fed one byte at a time, the tracker says unfinished inside the
    /// preface and inside every frame, and finished between frames.
    #[test]
    fn frames_are_followed_byte_by_byte() {
        let mut frames = Frames::new();
        assert!(!frames.unfinished(), "nothing yet");
        let settings = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]);
        let ping = frame(0x6, 0, &[1; 8]);
        for part in [PREFACE, &settings, &ping] {
            for (i, byte) in part.iter().enumerate() {
                frames.feed(&[*byte]);
                assert_eq!(frames.unfinished(), i + 1 < part.len(), "byte {i}");
            }
        }
    }

    /// A header block stays unfinished across whole HEADERS and
    /// CONTINUATION frames until END_HEADERS.
    #[test]
    fn a_header_block_is_unfinished_until_end_headers() {
        let mut frames = Frames::new();
        frames.feed(PREFACE);
        frames.feed(&frame(HEADERS, 0x1, &[0x82]));
        assert!(frames.unfinished());
        frames.feed(&frame(CONTINUATION, 0, &[0x87]));
        assert!(frames.unfinished());
        frames.feed(&frame(CONTINUATION, END_HEADERS, &[0x84]));
        assert!(!frames.unfinished());
        let mut whole = frame(HEADERS, END_HEADERS | 0x1, &[0x82]);
        whole.extend(frame(0x0, 0x1, &[0; 40]));
        frames.feed(&whole);
        assert!(!frames.unfinished());
    }
}
