//! The requests in progress on one DoH connection, and when the last one
//! ended: what its idle timer judges by. HTTP has no DNS framing to watch,
//! so a connection is idle when no request is being answered and none has
//! ended for the idle timeout (a client's PINGs or half-sent headers do not
//! keep it open). It also holds when the client began a request head that
//! has not ended yet (see [`super::watch`]), which the read timeout judges.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::time::Instant;

/// Counts requests in progress; shared by the connection and its requests.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    active: AtomicUsize,
    /// Milliseconds from `start` to the end of the latest request.
    last_end_ms: AtomicU64,
    /// One more than the milliseconds from `start` to the first byte of a
    /// request head not yet
    /// complete; 0 when there is none.
    begun_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            begun_ms: AtomicU64::new(0),
        }
    }

    /// Whether a request is being answered.
    pub fn is_busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// The client has begun something that must be complete within the
    /// read timeout; an earlier beginning not yet ended is kept.
    pub fn message_begun(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let _ = self.begun_ms.compare_exchange(
            0,
            now.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// What the client began is complete.
    pub fn message_ended(&self) {
        self.begun_ms.store(0, Ordering::Relaxed);
    }

    /// When what the client began runs out of `read` time, if it began
    /// something not yet complete.
    pub fn read_deadline(&self, read: std::time::Duration) -> Option<Instant> {
        match self.begun_ms.load(Ordering::Relaxed) {
            0 => None,
            begun => Some(self.start + std::time::Duration::from_millis(begun - 1) + read),
        }
    }

    /// One request in progress until the guard drops.
    pub fn begin(&self) -> Busy<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        Busy(self)
    }

    /// When the connection has been idle for `idle`, if nothing is in
    /// progress: `None` while a request is.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.start + last + idle)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A request in progress.
#[derive(Debug)]
pub struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let since = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.fetch_max(since, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_latest_request() {
        let activity = Activity::new();
        let start = Instant::now();
        let idle = Duration::from_secs(10);
        assert_eq!(activity.idle_deadline(idle), Some(start + idle));
        let busy = activity.begin();
        assert_eq!(activity.idle_deadline(idle), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(busy);
        assert_eq!(
            activity.idle_deadline(idle),
            Some(start + Duration::from_secs(40))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_deadline_counts_from_the_first_beginning() {
        let activity = Activity::new();
        let start = Instant::now();
        let read = Duration::from_secs(5);
        assert_eq!(activity.read_deadline(read), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.message_begun();
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.message_begun();
        assert_eq!(
            activity.read_deadline(read),
            Some(start + Duration::from_secs(7))
        );
        activity.message_ended();
        assert_eq!(activity.read_deadline(read), None);
    }
}
