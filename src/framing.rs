//! The 2-byte length framing of DNS over TCP and TLS (RFC 1035 §4.2.2,
//! RFC 7766 §8), robust to any segmentation (R8).
//!
//! [`split_frame`] is the pure rule; [`FrameReader`] applies it to a stream
//! with one reusable buffer, so several messages in one read and one message
//! split over many reads both come out whole.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::dns::HEADER_LEN;

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

/// Size of the first read buffer: holds many typical queries (most are under
/// 128 bytes, padded ones exactly 128), grows only for a large message.
const INITIAL_BUFFER: usize = 4096;

/// Reads length-prefixed messages from a stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    start: usize,
    /// End of received bytes in `buf`.
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
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
        self.end > self.start
    }

    /// Returns the next message (without its prefix), or `None` on a clean
    /// end of stream between messages.
    ///
    /// Cancel-safe: bytes already read stay in the buffer, so this can be
    /// raced against timers in `select!`.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(len) = split_frame(&self.buf[self.start..self.end])? {
                let body = self.start + 2;
                let msg = self.buf[body..body + len].to_vec();
                self.start = body + len;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(Some(msg));
            }
            self.make_room();
            let n = self.inner.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return if self.has_partial() {
                    Err(FrameError::Truncated)
                } else {
                    Ok(None)
                };
            }
            self.end += n;
        }
    }

    /// Ensures there is space to read into, and that a whole frame of the
    /// announced length fits.
    fn make_room(&mut self) {
        let pending = self.end - self.start;
        let needed = match self.buf.get(self.start..self.start + 2) {
            Some(p) if pending >= 2 => 2 + u16::from_be_bytes([p[0], p[1]]) as usize,
            _ => 2,
        };
        if self.start > 0 && (self.end == self.buf.len() || self.start + needed > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        if needed > self.buf.len() {
            self.buf.resize(needed, 0);
        }
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
