//! Event counters: relaxed atomics, no lock and no allocation per query.
//!
//! The counters are logged in one line at shutdown; the metrics endpoint
//! (Prometheus) will expose the same events.

use std::sync::atomic::{AtomicU64, Ordering};

/// What dotgate counts. Every field is a monotonic counter.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    /// First byte was not a TLS handshake record (R1).
    pub refused_plaintext: AtomicU64,
    /// Over `--max-connections`.
    pub refused_over_capacity: AtomicU64,
    /// Over `--max-connections-per-ip`.
    pub refused_per_ip: AtomicU64,
    /// Over `--max-handshakes-per-ip-per-sec`.
    pub refused_handshake_rate: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub queries: AtomicU64,
    pub formerr_synthesized: AtomicU64,
    pub servfail_synthesized: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    pub tc_fallbacks: AtomicU64,
    /// Upstream messages with an unknown ID or a different question.
    pub mismatched_replies: AtomicU64,
}

impl Stats {
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Logs every counter in one line.
    pub fn log_summary(&self) {
        tracing::info!(
            connections_accepted = Self::get(&self.connections_accepted),
            refused_plaintext = Self::get(&self.refused_plaintext),
            refused_over_capacity = Self::get(&self.refused_over_capacity),
            refused_per_ip = Self::get(&self.refused_per_ip),
            refused_handshake_rate = Self::get(&self.refused_handshake_rate),
            handshake_failures = Self::get(&self.handshake_failures),
            queries = Self::get(&self.queries),
            formerr_synthesized = Self::get(&self.formerr_synthesized),
            servfail_synthesized = Self::get(&self.servfail_synthesized),
            upstream_timeouts = Self::get(&self.upstream_timeouts),
            tc_fallbacks = Self::get(&self.tc_fallbacks),
            mismatched_replies = Self::get(&self.mismatched_replies),
            "totals"
        );
    }
}
