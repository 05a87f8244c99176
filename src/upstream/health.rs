//! Health of one upstream: passive (consecutive failures of real queries)
//! and active (a periodic `. NS` probe).
//!
//! Invariants:
//! * every upstream starts up: before the first probe, queries are not
//!   refused for lack of evidence;
//! * a state change is logged exactly once (the flag is swapped, and only the
//!   caller that flipped it logs);
//! * the hot path only reads the flag and writes the failure count when it
//!   is not already zero, so a healthy upstream costs no shared writes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::UpstreamError;
use crate::dns::QueryInfo;

/// Consecutive failed queries (timeouts, errors) that mark an upstream down.
/// More than one, so that a single name whose authoritative servers never
/// answer does not take a healthy resolver out; real traffic interleaves
/// successes that reset the count.
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

/// What [`crate::dns::parse_query`] finds in [`PROBE`], written out so that
/// no parse can fail at run time.
pub fn probe_info() -> QueryInfo {
    QueryInfo {
        id: 0,
        question: crate::dns::HEADER_LEN..PROBE.len(),
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

/// Up/down state and the consecutive failure count of one upstream.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    failures: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
        }
    }
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A well-formed reply came back: the upstream is serving.
    pub fn success(&self, name: &str) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if !self.is_up() && !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %name, "upstream is up");
        }
    }

    /// A query or probe failed. `definitive` failures (a failed probe, a
    /// refused connection, a certificate that does not match) mark the
    /// upstream down at once; others only after [`PASSIVE_FAILURES`] in a row.
    pub fn failure(&self, name: &str, error: &UpstreamError, definitive: bool) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_parses_as_described() {
        let info = crate::dns::parse_query(&PROBE).unwrap();
        assert_eq!(info, probe_info());
    }

    #[test]
    fn passive_failures_need_a_run() {
        let h = Health::default();
        assert!(h.is_up());
        for _ in 0..PASSIVE_FAILURES - 1 {
            h.failure("x", &UpstreamError::Timeout, false);
        }
        assert!(h.is_up());
        h.success("x");
        for _ in 0..PASSIVE_FAILURES - 1 {
            h.failure("x", &UpstreamError::Timeout, false);
        }
        assert!(h.is_up(), "a success resets the run");
        h.failure("x", &UpstreamError::Timeout, false);
        assert!(!h.is_up());
        h.success("x");
        assert!(h.is_up());
        h.failure("x", &UpstreamError::Timeout, true);
        assert!(!h.is_up(), "definitive failures count at once");
    }
}
