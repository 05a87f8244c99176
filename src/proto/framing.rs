//! The 2-byte length framing of DNS over TCP and TLS (RFC 1035 §4.2.2,
//! RFC 7766 §8), robust to any segmentation (R8).
//!
//! [`split_frame`] is the pure rule; [`FrameReader`] applies it to a stream
//! with one reusable buffer, so several messages in one read and one message
//! split over many reads both come out whole. It reads what dotgate's own
//! peers send (upstream connections, the replies `dotgate query` and
//! `dotgate check` receive), where one buffer saves system calls on plain
//! TCP; clients' queries are read by [`super::message_reader`], which holds
//! nothing between messages and bounds what a hostile peer can make it hold.
//!
//! Memory follows the bytes that arrived, never the length a peer announced:
//! the buffer grows geometrically past its base size as bytes arrive, and
//! goes back to the base size once the large message is consumed.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::dns::HEADER_LEN;

/// The ALPN protocol ID of DNS over TLS (RFC 7858 registration).
pub const ALPN_DOT: &[u8] = b"dot";

/// Why a stream stopped yielding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A length under 12 cannot hold a DNS header; such a peer is broken or
    /// hostile, and the connection is closed (R8).
    #[error("frame length {0} is shorter than a DNS header")]
    TooShort(u16),
    /// The peer closed in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// A message begun was not complete within the read timeout.
    #[error("a message was not complete within the read timeout")]
    ReadTimeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns the message length when `buf` holds the prefix and the whole
/// message, `None` when more bytes are needed.
pub fn split_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([prefix[0], prefix[1]]);
    if (len as usize) < HEADER_LEN {
        return Err(FrameError::TooShort(len));
    }
    Ok((buf.len() >= 2 + len as usize).then_some(len as usize))
}

/// The read buffer a reader keeps between messages: holds many typical
/// messages at once.
const BASE_BUFFER: usize = 4096;

/// Reads length-prefixed messages from a stream.
pub struct FrameReader<R> {
    inner: R,
    /// Received bytes are `buf[start..]`; the capacity past `buf.len()` is
    /// room for the next read.
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The stream, for writing to it (`dotgate check` keeps one reader per
    /// connection and writes through it). Reading from it directly would
    /// lose buffered bytes.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream, for inspecting it (e.g. its TLS session).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// True when part of a message has been received but not all of it.
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.start
    }

    /// Bytes of buffer this reader holds now (for tests and accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Returns the next message (without its prefix), or `None` on a clean
    /// end of stream between messages.
    ///
    /// Cancel-safe: bytes already read stay in the buffer, so this can be
    /// raced against timers in `select!`.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(len) = split_frame(&self.buf[self.start..])? {
                let body = self.start + 2;
                let msg = self.buf[body..body + len].to_vec();
                self.start = body + len;
                self.consumed();
                return Ok(Some(msg));
            }
            self.make_room();
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.has_partial() {
                    Err(FrameError::Truncated)
                } else {
                    Ok(None)
                };
            }
        }
    }

    /// After a frame was taken: forget consumed bytes, and give back any
    /// room past the base size that the rest does not need.
    fn consumed(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if self.buf.capacity() > BASE_BUFFER {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.shrink_to(BASE_BUFFER);
        }
    }

    /// Ensures there is room to read into, growing toward the announced
    /// length only as bytes arrive (at most doubling what is there).
    fn make_room(&mut self) {
        if self.buf.len() < self.buf.capacity() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
            if self.buf.len() < self.buf.capacity() {
                return;
            }
        }
        let pending = self.buf.len();
        let needed = match self.buf.get(..2) {
            Some(p) => 2 + usize::from(u16::from_be_bytes([p[0], p[1]])),
            None => 2,
        };
        let target = needed.min(pending.max(BASE_BUFFER) * 2).max(BASE_BUFFER);
        self.buf.reserve_exact(target - pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn framed(len: usize, fill: u8) -> Vec<u8> {
        let mut v = (len as u16).to_be_bytes().to_vec();
        v.extend(std::iter::repeat_n(fill, len));
        v
    }

    #[test]
    fn split_needs_the_whole_message() {
        let f = framed(12, 1);
        assert_eq!(split_frame(&f[..1]).unwrap(), None);
        assert_eq!(split_frame(&f[..13]).unwrap(), None);
        assert_eq!(split_frame(&f).unwrap(), Some(12));
        assert!(matches!(split_frame(&[0, 5]), Err(FrameError::TooShort(5))));
        assert!(matches!(split_frame(&[0, 0]), Err(FrameError::TooShort(0))));
    }

    #[tokio::test]
    async fn reads_many_frames_from_one_write_and_one_frame_from_many() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx);
        let writer = tokio::spawn(async move {
            let mut all = framed(20, 1);
            all.extend(framed(13, 2));
            all.extend(framed(9000, 3));
            // A few frames in one write, the big one split into small pieces.
            for chunk in all.chunks(7) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), vec![1; 20]);
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), vec![2; 13]);
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), vec![3; 9000]);
        writer.await.unwrap();
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn max_size_frames_fit() {
        let (mut tx, rx) = tokio::io::duplex(1 << 17);
        let mut reader = FrameReader::new(rx);
        let mut all = framed(100, 9);
        all.extend(framed(65535, 4));
        tx.write_all(&all).await.unwrap();
        drop(tx);
        assert_eq!(reader.read_frame().await.unwrap().unwrap().len(), 100);
        assert_eq!(reader.read_frame().await.unwrap().unwrap().len(), 65535);
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_inside_a_message_is_an_error() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx);
        tx.write_all(&framed(30, 1)[..10]).await.unwrap();
        drop(tx);
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::Truncated)
        ));
    }
}
