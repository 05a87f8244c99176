//! Reads a client's length-prefixed messages (R8) prefix first, into a
//! buffer of the message's own size that becomes the message.
//!
//! Why not [`super::framing::FrameReader`]'s shared read buffer: a client
//! connection is mostly idle, and over TLS, rustls already holds the
//! decrypted bytes, so a buffer of our own would only copy them once more
//! and keep 4 KiB per idle connection. Reading the 2-byte prefix and then
//! exactly the body costs no extra system call (rustls serves both from
//! what it decrypted), no copy, and between messages the reader holds no
//! heap memory at all.
//!
//! Memory follows the bytes that arrived, never the length a peer
//! announced: the body buffer starts at the announced length only up to
//! [`BASE_BUFFER`], and past it grows geometrically as bytes arrive,
//! holding a share of a [`MessageBudget`] for the message's size past the
//! base. A message whose first byte has arrived must be complete within the
//! read timeout, if one is set.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::dns::HEADER_LEN;
use super::framing::FrameError;

/// The body size a reader allocates for any announced length, without
/// drawing on the budget: holds every ordinary query (most are under 128
/// bytes, padded ones exactly 128).
pub const BASE_BUFFER: usize = 4096;

/// Where a body of unknown promise starts: past [`BASE_BUFFER`] a body
/// begins this small and doubles as bytes arrive.
const FIRST_GROWTH: usize = 512;

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
pub const MIN_BUDGET: usize = u16::MAX as usize - BASE_BUFFER;

/// What bounds one reader besides the stream itself.
#[derive(Clone, Debug, Default)]
pub struct ReadLimits {
    /// A message whose first byte arrived must be complete within this.
    pub read_timeout: Option<Duration>,
    /// Shared room for message bodies past [`BASE_BUFFER`].
    pub budget: Option<MessageBudget>,
}

/// One client's message in progress. Holds no stream: the caller passes it
/// to each read, so the same stream can be written between reads.
#[derive(Debug)]
pub struct MessageReader {
    limits: ReadLimits,
    prefix: [u8; 2],
    /// Bytes of `prefix` received (0, 1 or 2).
    prefix_got: u8,
    /// The body so far: `body[..got]` has arrived; `body.len()` is the room
    /// made for it, at most the announced length.
    body: Vec<u8>,
    got: usize,
    /// When the reader first waited for the rest of the message in progress
    /// (its read timeout counts from then: within the same turn as its
    /// first byte's arrival).
    partial_since: Option<Instant>,
    /// Budget held for the body's size past [`BASE_BUFFER`].
    held: Option<OwnedSemaphorePermit>,
}

impl MessageReader {
    pub fn new(limits: ReadLimits) -> Self {
        Self {
            limits,
            prefix: [0; 2],
            prefix_got: 0,
            body: Vec::new(),
            got: 0,
            partial_since: None,
            held: None,
        }
    }

    /// True when part of a message has been received but not all of it.
    pub fn has_partial(&self) -> bool {
        self.prefix_got > 0
    }

    /// Bytes of buffer this reader holds now (for tests and accounting).
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// The announced length, once the prefix is complete.
    fn announced(&self) -> Option<usize> {
        (self.prefix_got == 2).then(|| usize::from(u16::from_be_bytes(self.prefix)))
    }

    /// Returns the next message (without its prefix), or `None` on a clean
    /// end of stream between messages.
    ///
    /// Cancel-safe: bytes already read stay in the reader, so this can be
    /// raced against timers and replies in `select!`.
    pub async fn read_message<R>(&mut self, io: &mut R) -> Result<Option<Vec<u8>>, FrameError>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            if let Some(len) = self.announced() {
                if len < HEADER_LEN {
                    return Err(FrameError::TooShort(len as u16));
                }
                if self.got == len {
                    return Ok(Some(self.take_message()));
                }
            }
            let deadline = self
                .partial_since
                .zip(self.limits.read_timeout)
                .map(|(since, limit)| since + limit);
            // A message begun whose read timeout has not started yet.
            let unclocked =
                deadline.is_none() && self.limits.read_timeout.is_some() && self.has_partial();
            let read = async {
                match self.announced() {
                    None => {
                        let at = usize::from(self.prefix_got);
                        io.read(&mut self.prefix[at..]).await
                    }
                    Some(len) => {
                        self.make_room(len).await;
                        io.read(&mut self.body[self.got..]).await
                    }
                }
            };
            let n = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| FrameError::ReadTimeout)??,
                // The read timeout starts when the rest of a message begun
                // must be waited for: nearly always the whole message is in
                // the TLS record already, and then the clock is not read.
                None if unclocked => match poll_once(read).await {
                    Poll::Ready(n) => n?,
                    Poll::Pending => {
                        self.partial_since = Some(Instant::now());
                        continue;
                    }
                },
                None => read.await?,
            };
            if n == 0 {
                return if self.has_partial() {
                    Err(FrameError::Truncated)
                } else {
                    Ok(None)
                };
            }
            if self.announced().is_none() {
                // `n` is 1 or 2, the room that was left.
                self.prefix_got += n as u8;
            } else {
                self.got += n;
            }
        }
    }

    /// Hands the complete body over and starts afresh with nothing held.
    fn take_message(&mut self) -> Vec<u8> {
        let mut msg = std::mem::take(&mut self.body);
        msg.truncate(self.got);
        self.prefix_got = 0;
        self.got = 0;
        self.partial_since = None;
        self.held = None;
        msg
    }

    /// Ensures there is room for at least one more byte of a body of `len`:
    /// the whole of it up to [`BASE_BUFFER`], past that twice what has
    /// arrived (budget taken for all the message needs past the base, at
    /// once, when the body first grows past it).
    async fn make_room(&mut self, len: usize) {
        if self.got < self.body.len() {
            return;
        }
        let target = if len <= BASE_BUFFER {
            len
        } else {
            (self.got * 2).clamp(FIRST_GROWTH, len)
        };
        if target > BASE_BUFFER && self.held.is_none() {
            if let Some(budget) = &self.limits.budget {
                // All the message needs past the base at once: a reader
                // holding a part while waiting for the rest could wait on
                // another doing the same, and neither would finish.
                budget.take(&mut self.held, len - BASE_BUFFER).await;
            }
        }
        // Exact: the body never holds more than its message.
        self.body.reserve_exact(target - self.body.len());
        self.body.resize(target, 0);
    }
}

/// Polls `fut` once: its output if ready at once, else `Pending` (and
/// `fut`, dropped, must be cancel-safe).
pub(crate) async fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
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

    #[tokio::test]
    async fn reads_many_messages_from_one_write_and_one_from_many() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let mut reader = MessageReader::new(ReadLimits::default());
        let writer = tokio::spawn(async move {
            let mut all = framed(20, 1);
            all.extend(framed(13, 2));
            all.extend(framed(9000, 3));
            // A few messages in one write, the big one split into small pieces.
            for chunk in all.chunks(7) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        assert_eq!(
            reader.read_message(&mut rx).await.unwrap().unwrap(),
            vec![1; 20]
        );
        assert_eq!(
            reader.read_message(&mut rx).await.unwrap().unwrap(),
            vec![2; 13]
        );
        let big = reader.read_message(&mut rx).await.unwrap().unwrap();
        assert_eq!(big, vec![3; 9000]);
        assert_eq!(
            big.capacity(),
            9000,
            "a body never holds more than its message"
        );
        writer.await.unwrap();
        assert!(reader.read_message(&mut rx).await.unwrap().is_none());
        assert_eq!(reader.capacity(), 0, "nothing held between messages");
    }

    #[tokio::test]
    async fn max_size_messages_fit_and_short_ones_are_refused() {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 17);
        let mut reader = MessageReader::new(ReadLimits::default());
        let mut all = framed(100, 9);
        all.extend(framed(65535, 4));
        all.extend([0, 11]);
        tx.write_all(&all).await.unwrap();
        drop(tx);
        let first = reader.read_message(&mut rx).await.unwrap().unwrap();
        assert_eq!((first.len(), first.capacity()), (100, 100));
        assert_eq!(
            reader.read_message(&mut rx).await.unwrap().unwrap().len(),
            65535
        );
        assert!(matches!(
            reader.read_message(&mut rx).await,
            Err(FrameError::TooShort(11))
        ));
    }

    /// Two bytes promising 65535 cost nothing until the body comes; a large
    /// message grows as it arrives, and once handed over the reader holds
    /// neither memory nor budget.
    #[tokio::test]
    async fn memory_follows_bytes_received() {
        let (waits, on_wait) = wait_counter();
        let budget = MessageBudget::new(1 << 20, on_wait);
        let (mut tx, mut rx) = tokio::io::duplex(1 << 17);
        let mut reader = MessageReader::new(ReadLimits {
            read_timeout: None,
            budget: Some(budget.clone()),
        });
        let big = framed(65535, 7);
        tx.write_all(&big[..3]).await.unwrap();
        let pending =
            tokio::time::timeout(Duration::from_millis(50), reader.read_message(&mut rx)).await;
        assert!(pending.is_err(), "no message yet");
        assert!(reader.capacity() <= FIRST_GROWTH, "{}", reader.capacity());
        assert_eq!(budget.in_use(), 0);
        tx.write_all(&big[3..10_000]).await.unwrap();
        let pending =
            tokio::time::timeout(Duration::from_millis(50), reader.read_message(&mut rx)).await;
        assert!(pending.is_err(), "no message yet");
        assert!(reader.capacity() <= 2 * 10_000, "{}", reader.capacity());
        assert_eq!(budget.in_use(), 65535 - BASE_BUFFER);
        tx.write_all(&big[10_000..]).await.unwrap();
        tx.write_all(&framed(20, 1)).await.unwrap();
        let msg = reader.read_message(&mut rx).await.unwrap().unwrap();
        assert_eq!(msg.len(), 65535);
        assert!(msg.iter().all(|&b| b == 7));
        assert_eq!(reader.capacity(), 0);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(
            reader.read_message(&mut rx).await.unwrap().unwrap(),
            vec![1; 20]
        );
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
        let (mut tx_a, mut rx_a) = tokio::io::duplex(1 << 17);
        let (mut tx_b, mut rx_b) = tokio::io::duplex(1 << 17);
        let mut a = MessageReader::new(limits.clone());
        let mut b = MessageReader::new(limits);
        let big = framed(60_000, 3);
        // A holds most of the budget with a message it has not finished.
        tx_a.write_all(&big[..30_000]).await.unwrap();
        let stalled =
            tokio::time::timeout(Duration::from_millis(50), a.read_message(&mut rx_a)).await;
        assert!(stalled.is_err());
        assert_eq!(budget.in_use(), 60_000 - BASE_BUFFER);
        assert!(
            a.capacity() <= 60_000,
            "memory follows bytes: {}",
            a.capacity()
        );
        // B cannot take what it needs while A holds its share.
        tx_b.write_all(&big).await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), b.read_message(&mut rx_b)).await;
        assert!(waiting.is_err(), "B waits for room");
        assert!(waits.load(Ordering::Relaxed) >= 1);
        // A finishes: its room goes back, and B completes.
        tx_a.write_all(&big[30_000..]).await.unwrap();
        assert_eq!(
            a.read_message(&mut rx_a).await.unwrap().unwrap().len(),
            60_000
        );
        assert_eq!(
            b.read_message(&mut rx_b).await.unwrap().unwrap().len(),
            60_000
        );
        assert_eq!(budget.in_use(), 0);
    }

    /// A message begun must end within the read timeout; a reader with
    /// nothing pending waits as long as the caller lets it.
    #[tokio::test(start_paused = true)]
    async fn a_message_begun_must_finish_in_time() {
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let mut reader = MessageReader::new(ReadLimits {
            read_timeout: Some(Duration::from_secs(10)),
            budget: None,
        });
        let idle =
            tokio::time::timeout(Duration::from_secs(60), reader.read_message(&mut rx)).await;
        assert!(idle.is_err(), "nothing begun: no read timeout");
        tx.write_all(&framed(20, 1)).await.unwrap();
        tx.write_all(&[0, 30, 1]).await.unwrap();
        assert_eq!(
            reader.read_message(&mut rx).await.unwrap().unwrap(),
            vec![1; 20]
        );
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
            reader.read_message(&mut rx).await,
            Err(FrameError::ReadTimeout)
        ));
        let waited = started.elapsed();
        assert!(waited <= Duration::from_secs(10), "{waited:?}");
        assert!(waited >= Duration::from_secs(9), "{waited:?}");
        drop(rx);
        dribble.await.unwrap();
    }

    #[tokio::test]
    async fn eof_inside_a_message_is_an_error() {
        for cut in [1, 2, 10] {
            let (mut tx, mut rx) = tokio::io::duplex(64);
            let mut reader = MessageReader::new(ReadLimits::default());
            tx.write_all(&framed(30, 1)[..cut]).await.unwrap();
            drop(tx);
            assert!(
                matches!(
                    reader.read_message(&mut rx).await,
                    Err(FrameError::Truncated)
                ),
                "cut after {cut} bytes"
            );
        }
    }
}
