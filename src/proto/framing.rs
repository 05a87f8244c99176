//! The 2-byte length framing of DNS over TCP and TLS (RFC 1035 §4.2.2,
//! RFC 7766 §8), robust to any segmentation (R8).
//!
//! [`split_frame`] is the pure rule; [`FrameReader`] applies it to a stream
//! with one reusable buffer, so several messages in one read and one message
//! split over many reads both come out whole.
//!
//! Memory follows the bytes that arrived, never the length a peer announced:
//! two bytes promising 65535 cost nothing until the body comes. Past
//! [`BASE_BUFFER`], a reader grows geometrically as bytes arrive, holding a
//! share of a [`MessageBudget`] for the extra, and goes back to the base size
//! once the large message is consumed. A message whose first byte has
//! arrived must be complete within the read timeout, if one is set.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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

/// The read buffer every reader may keep without drawing on the budget:
/// holds many typical queries (most are under 128 bytes, padded ones
/// exactly 128).
pub const BASE_BUFFER: usize = 4096;

/// Bytes of message buffers beyond [`BASE_BUFFER`] that all readers sharing
/// it may hold at once. A reader whose message outgrows the base size takes
/// what that message needs past it, all at once; over the budget, it waits
/// (within its read timeout) until others give some back, so a crowd of
/// peers each sending most of a 64 KiB message cannot take the process's
/// memory, while ordinary queries, which fit the base size, never wait.
/// Must be at least [`MIN_BUDGET`], or a largest message could never fit.
#[derive(Clone)]
pub struct MessageBudget {
    room: Arc<Semaphore>,
    total: usize,
    on_wait: OnWait,
}

/// Called each time a reader has to wait for room in a [`MessageBudget`]
/// (the server counts it); never on the path of a message that fits.
pub type OnWait = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for MessageBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBudget")
            .field("room", &self.room)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl MessageBudget {
    /// A budget of `bytes`; each time a reader has to wait for room,
    /// `on_wait` is called.
    pub fn new(bytes: usize, on_wait: OnWait) -> Self {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Self {
            room: Arc::new(Semaphore::new(bytes)),
            total: bytes,
            on_wait,
        }
    }

    /// Bytes taken from the budget right now.
    pub fn in_use(&self) -> usize {
        self.total - self.room.available_permits()
    }

    /// Takes `bytes` into `held`, waiting for room when there is none.
    async fn take(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) {
        let Ok(bytes32) = u32::try_from(bytes) else {
            return;
        };
        *held = match self.room.clone().try_acquire_many_owned(bytes32) {
            Ok(permit) => Some(permit),
            Err(_) => {
                (self.on_wait)();
                // Never closed: `None` cannot happen.
                self.room.clone().acquire_many_owned(bytes32).await.ok()
            }
        };
    }
}

/// The least budget that lets one largest message through.
pub const MIN_BUDGET: usize = 2 + u16::MAX as usize - BASE_BUFFER;

/// What bounds one reader besides the stream itself.
#[derive(Clone, Debug, Default)]
pub struct ReadLimits {
    /// A message whose first byte arrived must be complete within this.
    pub read_timeout: Option<Duration>,
    /// Shared room for buffers past [`BASE_BUFFER`].
    pub budget: Option<MessageBudget>,
}

/// Reads length-prefixed messages from a stream.
pub struct FrameReader<R> {
    inner: R,
    /// Received bytes are `buf[start..]`; the capacity past `buf.len()` is
    /// room for the next read.
    buf: Vec<u8>,
    start: usize,
    limits: ReadLimits,
    /// When the first byte of the oldest unconsumed message arrived (at the
    /// latest): the read timeout counts from here.
    partial_since: Option<Instant>,
    /// Budget held for the capacity past [`BASE_BUFFER`].
    held: Option<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader without read timeout or budget (upstream connections, the
    /// command-line tools).
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, ReadLimits::default())
    }

    pub fn with_limits(inner: R, limits: ReadLimits) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            limits,
            partial_since: None,
            held: None,
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
            let deadline = self
                .partial_since
                .zip(self.limits.read_timeout)
                .map(|(since, limit)| since + limit);
            let read = async {
                self.make_room().await;
                self.inner.read_buf(&mut self.buf).await
            };
            let n = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| FrameError::ReadTimeout)??,
                None => read.await?,
            };
            if n == 0 {
                return if self.has_partial() {
                    Err(FrameError::Truncated)
                } else {
                    Ok(None)
                };
            }
            if self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
        }
    }

    /// After a frame was taken: forget consumed bytes, and give back any
    /// room past the base size that the rest does not need.
    fn consumed(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.partial_since = None;
        } else {
            // The rest arrived with the latest read at the earliest.
            self.partial_since = Some(Instant::now());
        }
        if self.buf.capacity() > BASE_BUFFER {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.shrink_to(BASE_BUFFER);
            self.settle_budget();
        }
    }

    /// Ensures there is room to read into, growing toward the announced
    /// length only as bytes arrive (at most doubling what is there), and
    /// taking budget for the growth past the base size.
    async fn make_room(&mut self) {
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
        if target > BASE_BUFFER && self.held.is_none() {
            if let Some(budget) = &self.limits.budget {
                // All the message needs past the base at once: a reader
                // holding a part while waiting for the rest could wait on
                // another doing the same, and neither would finish.
                budget.take(&mut self.held, needed - BASE_BUFFER).await;
            }
        }
        self.buf.reserve_exact(target - pending);
    }

    /// Gives the budget back once the buffer is at its base size again.
    fn settle_budget(&mut self) {
        if self.buf.capacity() <= BASE_BUFFER {
            self.held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A wait hook that counts into the returned atomic.
    fn wait_counter() -> (Arc<AtomicU64>, OnWait) {
        let waits = Arc::new(AtomicU64::new(0));
        let counted = waits.clone();
        (
            waits,
            Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            }),
        )
    }

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

    /// Two bytes promising 65535 cost nothing until the body comes; a large
    /// message grows the buffer as it arrives, and once consumed the reader
    /// is back to the base size and holds no budget.
    #[tokio::test]
    async fn memory_follows_bytes_received_and_shrinks_back() {
        let (waits, on_wait) = wait_counter();
        let budget = MessageBudget::new(1 << 20, on_wait);
        let (mut tx, rx) = tokio::io::duplex(1 << 17);
        let mut reader = FrameReader::with_limits(
            rx,
            ReadLimits {
                read_timeout: None,
                budget: Some(budget.clone()),
            },
        );
        let big = framed(65535, 7);
        tx.write_all(&big[..3]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), reader.read_frame()).await;
        assert!(pending.is_err(), "no frame yet");
        assert!(reader.capacity() <= BASE_BUFFER, "{}", reader.capacity());
        assert_eq!(budget.in_use(), 0);
        tx.write_all(&big[3..]).await.unwrap();
        tx.write_all(&framed(20, 1)).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap().len(), 65535);
        assert!(reader.capacity() <= BASE_BUFFER, "{}", reader.capacity());
        assert_eq!(budget.in_use(), 0);
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), vec![1; 20]);
        assert_eq!(waits.load(Ordering::Relaxed), 0);
    }

    /// Over the budget, a reader that needs more room waits until another
    /// gives some back; the wait is counted.
    #[tokio::test]
    async fn readers_wait_for_the_shared_budget() {
        let (waits, on_wait) = wait_counter();
        // Room for one 60 KB message, not two.
        let budget = MessageBudget::new(100_000, on_wait);
        let limits = ReadLimits {
            read_timeout: None,
            budget: Some(budget.clone()),
        };
        let (mut tx_a, rx_a) = tokio::io::duplex(1 << 17);
        let (mut tx_b, rx_b) = tokio::io::duplex(1 << 17);
        let mut a = FrameReader::with_limits(rx_a, limits.clone());
        let mut b = FrameReader::with_limits(rx_b, limits);
        let big = framed(60_000, 3);
        // A holds most of the budget with a message it has not finished.
        tx_a.write_all(&big[..30_000]).await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(50), a.read_frame()).await;
        assert!(stalled.is_err());
        assert_eq!(budget.in_use(), 60_002 - BASE_BUFFER);
        assert!(
            a.capacity() < 40_000,
            "memory follows bytes: {}",
            a.capacity()
        );
        // B cannot take what it needs while A holds its share.
        tx_b.write_all(&big).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.read_frame()).await;
        assert!(waiting.is_err(), "B waits for room");
        assert!(waits.load(Ordering::Relaxed) >= 1);
        // A finishes: its room goes back, and B completes.
        tx_a.write_all(&big[30_000..]).await.unwrap();
        assert_eq!(a.read_frame().await.unwrap().unwrap().len(), 60_000);
        assert_eq!(b.read_frame().await.unwrap().unwrap().len(), 60_000);
        assert_eq!(budget.in_use(), 0);
    }

    /// A message begun must end within the read timeout; a reader with
    /// nothing pending waits as long as the caller lets it.
    #[tokio::test(start_paused = true)]
    async fn a_message_begun_must_finish_in_time() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::with_limits(
            rx,
            ReadLimits {
                read_timeout: Some(Duration::from_secs(10)),
                budget: None,
            },
        );
        let idle = tokio::time::timeout(Duration::from_secs(60), reader.read_frame()).await;
        assert!(idle.is_err(), "nothing begun: no read timeout");
        tx.write_all(&framed(20, 1)).await.unwrap();
        tx.write_all(&[0, 30, 1]).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), vec![1; 20]);
        let started = Instant::now();
        // One more byte a second does not extend the deadline.
        let dribble = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.write_all(&[1]).await.is_err() {
                    break;
                }
            }
        });
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::ReadTimeout)
        ));
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(10), "{waited:?}");
        assert!(waited >= Duration::from_secs(9), "{waited:?}");
        drop(reader);
        dribble.await.unwrap();
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
