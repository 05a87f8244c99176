//! Health of one upstream: passive (failed real queries) and active (a
//! periodic `. NS` probe).
//!
//! A recursive resolver times out on some names every day (a dead
//! authoritative server, a cold cache behind a slow link) while it keeps
//! answering everything else. So a timeout or an error of one query counts
//! against the upstream only when the upstream answered nothing at all since
//! that query was sent: "it is resolving a slow name" and "it is gone" look
//! the same for one query, but not next to the other queries.
//!
//! Invariants:
//! * every upstream starts up: before the first probe, queries are not
//!   refused for lack of evidence;
//! * a state change is logged exactly once (the flag is swapped, and only the
//!   caller that flipped it logs);
//! * the hot path reads the flag, and writes shared state only when the
//!   failure count is not already zero or the answer clock moved on by a
//!   millisecond, so a healthy upstream costs at most one store per
//!   millisecond.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::reply::UpstreamError;
use crate::proto::dns::QueryInfo;

/// Consecutive failed queries that mark an upstream down, each of which saw
/// no answer at all from the upstream while it waited. More than one, so
/// that one lost packet does not take a resolver out.
pub const PASSIVE_FAILURES: u32 = 3;

/// The probe: `. NS`, RD set, ID 0 (rewritten like any query). Any
/// well-formed reply, whatever its RCODE, proves the upstream is serving.
pub const PROBE: [u8; 17] = [
    0, 0, // ID
    0x01, 0x00, // RD
    0, 1, // QDCOUNT
    0, 0, 0, 0, 0, 0, // AN, NS, AR
    0, // root name
    0, 2, // NS
    0, 1, // IN
];

/// What [`crate::proto::dns::parse_query`] finds in [`PROBE`], written out so that
/// no parse can fail at run time.
pub fn probe_info() -> QueryInfo {
    QueryInfo {
        id: 0,
        question: crate::proto::dns::HEADER_LEN..PROBE.len(),
        opt: None,
        edns: Default::default(),
        edns_error: None,
    }
}

/// The time a probe may take: no longer than the interval (so probes never
/// pile up), nor than the per-try timeout of queries.
pub fn probe_timeout(interval: Duration, try_timeout: Duration) -> Duration {
    interval.min(try_timeout)
}

/// Up/down state, the consecutive failure count, and when the upstream
/// last answered anything.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    failures: AtomicU32,
    /// Milliseconds from `epoch` to the latest answer, plus one (0: never).
    last_answer: AtomicU64,
    epoch: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            last_answer: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The answer clock at `at`: whole milliseconds from `epoch`, plus one.
    fn tick(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// A well-formed reply came back to a query sent at `sent`: the upstream
    /// is serving. The answer is dated by its query's sending, read once
    /// per query anyway, rather than by a further reading of the clock: a
    /// query sent at or after another's sending was answered, so that
    /// other's failure says more about its name than about the upstream.
    pub fn success(&self, name: &str, sent: Instant) {
        let at = self.tick(sent);
        if self.last_answer.load(Ordering::Relaxed) < at {
            self.last_answer.fetch_max(at, Ordering::Relaxed);
        }
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if !self.is_up() && !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %name, "upstream is up");
        }
    }

    /// True when the upstream answered a query sent at or after `since` (to
    /// the millisecond): then a query sent at `since` that failed says more
    /// about its name than about the upstream.
    pub fn answered_since(&self, since: Instant) -> bool {
        self.last_answer.load(Ordering::Relaxed) >= self.tick(since)
    }

    /// A query sent at `sent`, or a probe, failed. `definitive` failures (a
    /// failed probe, a refused connection, a certificate that does not
    /// match) mark the upstream down at once. Others count only when the
    /// upstream answered nothing since `sent`, and mark it down after
    /// [`PASSIVE_FAILURES`] such failures in a row. Returns whether this
    /// failure counted.
    pub fn failure(
        &self,
        name: &str,
        error: &UpstreamError,
        definitive: bool,
        sent: Instant,
    ) -> bool {
        if !definitive && self.answered_since(sent) {
            return false;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if (definitive || failures >= PASSIVE_FAILURES)
            && self.is_up()
            && self.up.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(upstream = %name, error = %error, failures, "upstream is down");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_parses_as_described() {
        let info = crate::proto::dns::parse_query(&PROBE).unwrap();
        assert_eq!(info, probe_info());
    }

    #[test]
    fn passive_failures_need_a_run_of_silence() {
        let h = Health::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(10);
        let fail = |definitive, sent| h.failure("x", &UpstreamError::Timeout, definitive, sent);
        assert!(h.is_up());
        for _ in 0..PASSIVE_FAILURES - 1 {
            assert!(fail(false, t0));
        }
        assert!(h.is_up());
        h.success("x", t0);
        // Sent before a query that was answered: the upstream was serving.
        let before = t0 - Duration::from_secs(1);
        for _ in 0..10 {
            assert!(!fail(false, before));
        }
        assert!(
            h.is_up(),
            "timeouts of queries sent before an answered one do not count"
        );
        // Sent after the last answered query: silence, which counts.
        for _ in 0..PASSIVE_FAILURES - 1 {
            assert!(fail(false, later));
        }
        assert!(h.is_up(), "a success resets the run");
        assert!(fail(false, later));
        assert!(!h.is_up());
        h.success("x", later);
        assert!(h.is_up());
        assert!(
            fail(true, later),
            "definitive failures count even after answers"
        );
        assert!(!h.is_up(), "definitive failures count at once");
    }
}
