//! How an accept loop paces itself after failed accepts (out of file
//! descriptors, most often): a pause that doubles up to a maximum, every
//! failure counted, and at most one warning a second. Shared by the
//! serving accept loops and the one that refuses connections while
//! `--acme` waits for its first certificate.

use std::time::Duration;

use crate::metrics::stats::Stats;

/// Pause after an accept error (most often EMFILE or ENFILE: out of file
/// descriptors), doubling up to the maximum and reset by the next success.
/// The listener stays readable while connections wait in the backlog, so
/// without a pause the loop would retry at once and spin a core; the
/// maximum is short so that service resumes within a tenth of a second once
/// descriptors are freed (an accept attempt that fails costs microseconds).
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// At most one warning per this long about failing accepts: a process out
/// of descriptors would otherwise log ten lines a second until it recovers.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(1);

/// The accept loop's error pacing: the current pause, and when it last
/// warned and how many errors it has not reported yet.
pub struct AcceptErrors {
    backoff: Duration,
    warned: Option<tokio::time::Instant>,
    unreported: u64,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        Self::new()
    }
}

impl AcceptErrors {
    pub fn new() -> Self {
        Self {
            backoff: ACCEPT_BACKOFF_START,
            warned: None,
            unreported: 0,
        }
    }

    pub fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_START;
    }

    /// Counts and (at most once a second) logs one failed
    /// accept; returns how long to pause before the next attempt.
    pub fn failed(&mut self, error: &std::io::Error, stats: &Stats) -> Duration {
        stats.accept_errors.inc();
        self.unreported += 1;
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_WARN_EVERY)
        {
            tracing::warn!(
                %error,
                failures = self.unreported,
                "accepting connections failed; pausing up to {ACCEPT_BACKOFF_MAX:?} between attempts"
            );
            self.warned = Some(now);
            self.unreported = 0;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(24)
    }

    /// The pause doubles from 1 ms to at most 100 ms, every failure is
    /// counted, and a success starts over from 1 ms.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_and_reset_on_success() {
        let stats = Stats::new().unwrap();
        let mut errors = AcceptErrors::new();
        let pauses: Vec<u64> = (0..10)
            .map(|_| errors.failed(&emfile(), &stats).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
        assert_eq!(stats.accept_errors.get(), 10);
        errors.succeeded();
        assert_eq!(errors.failed(&emfile(), &stats), ACCEPT_BACKOFF_START);
    }

    /// One warning, then the failures of the next second are only tallied,
    /// and reported with the next warning.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_warn_at_most_once_a_second() {
        let stats = Stats::new().unwrap();
        let mut errors = AcceptErrors::new();
        errors.failed(&emfile(), &stats);
        assert_eq!(errors.unreported, 0, "the first failure is logged");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(100)).await;
            errors.failed(&emfile(), &stats);
        }
        assert_eq!(errors.unreported, 5, "not logged within the second");
        tokio::time::advance(ACCEPT_WARN_EVERY).await;
        errors.failed(&emfile(), &stats);
        assert_eq!(errors.unreported, 0, "logged again a second later");
    }
}
