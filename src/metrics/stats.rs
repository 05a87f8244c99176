//! What dotgate counts.
//!
//! Every event is a relaxed atomic in [`Stats`]: counting on the hot path is
//! one `fetch_add`, with no lock and no allocation. A labelled metric is a
//! fixed set of fields or an array indexed by a closed enum, so every label
//! value is known at compile time (never a client address or a query name)
//! and no child is looked up per event. The only per-process label values
//! are the upstream addresses, registered once at start-up, and the served
//! certificate's subject, replaced on reload.
//!
//! How Prometheus sees these counts is [`super::exposition`]'s job.
//!
//! To add a counter: add an `AtomicU64` field, count it with
//! `stats.count(&stats.field)`, and list it in [`Stats::log_summary`] and in
//! `StatsCollector::families` in `exposition.rs` (and the README's metric
//! list).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::proto;

/// Why a connection ended, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing in flight and nothing received for the idle timeout.
    Idle,
    /// The client closed (close_notify or FIN) between messages.
    Client,
    /// The client broke the framing, or the connection failed.
    Error,
    /// The server is shutting down.
    Shutdown,
    /// `--max-queries-per-connection` or `--max-connection-age` was reached.
    Retired,
    /// A message begun was not complete within `--read-timeout`.
    ReadTimeout,
}

/// What dotgate counts. Plain fields are monotonic counters unless their
/// comment says gauge.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: AtomicU64,
    /// Gauge: connections from accept (or admission) to close.
    pub connections_open: AtomicI64,
    /// First byte was not a TLS handshake record (R1).
    pub refused_plaintext: AtomicU64,
    /// Over `--max-connections`.
    pub refused_over_capacity: AtomicU64,
    /// Over `--max-connections-per-ip`.
    pub refused_per_ip: AtomicU64,
    /// Over `--max-handshakes-per-ip-per-sec`.
    pub refused_handshake_rate: AtomicU64,
    /// A PROXY protocol header that could not be read.
    pub refused_proxy_malformed: AtomicU64,
    /// A connection from outside `--proxy-protocol-from` while PROXY is on.
    pub refused_proxy_untrusted: AtomicU64,
    /// Failed accepts on a DoT listener (out of file descriptors, mostly);
    /// each one is followed by a pause, see `server::AcceptErrors`.
    pub accept_errors: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_client: AtomicU64,
    pub closed_error: AtomicU64,
    pub closed_retired: AtomicU64,
    pub closed_shutdown: AtomicU64,
    pub closed_read_timeout: AtomicU64,
    /// Reads that waited for room in the shared message budget.
    pub message_budget_waits: AtomicU64,
    /// All failed handshakes; the three below split them by reason.
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    /// The peer closed before the handshake finished.
    pub handshake_closed_early: AtomicU64,
    /// A TLS protocol error (bad ClientHello, no common version or suite...).
    pub handshake_errors: AtomicU64,
    pub handshakes_tls12: AtomicU64,
    pub handshakes_tls13: AtomicU64,
    pub handshakes_resumed: AtomicU64,
    pub queries: AtomicU64,
    /// Gauge: queries read and not yet answered, over all connections.
    pub queries_in_flight: AtomicI64,
    /// Replies produced, by RCODE; indexed by [`RcodeLabel`].
    pub replies: [AtomicU64; RcodeLabel::ALL.len()],
    /// Totals of the synthesized replies (for the shutdown log line).
    pub formerr_synthesized: AtomicU64,
    pub servfail_synthesized: AtomicU64,
    /// Synthesized replies by cause; indexed by [`Synthesized`].
    pub synthesized: [AtomicU64; Synthesized::ALL.len()],
    pub upstream_timeouts: AtomicU64,
    pub tc_fallbacks: AtomicU64,
    /// UDP queries sent a second time after no reply within the resend delay.
    pub upstream_udp_resends: AtomicU64,
    /// Upstream messages with an unknown ID or a different question.
    pub mismatched_replies: AtomicU64,
    /// Queries sent to a second upstream after the first failed or timed out.
    pub upstream_failovers: AtomicU64,
    /// Queries sent while every upstream was marked down (panic mode).
    pub upstream_all_down: AtomicU64,
    /// Queries whose pooled TCP/TLS upstream connection died under them
    /// (each is sent again on another connection).
    pub upstream_connections_lost: AtomicU64,
    /// From the upstream query's send to its matching reply.
    pub upstream_rtt: Latency,
    /// From a query's last byte read to its reply handed to the TLS writer
    /// and flushed.
    pub query_duration: Latency,
    /// Per-upstream counters, registered at start-up by [`Stats::upstream`].
    pub(super) upstreams: Mutex<Vec<(String, Arc<UpstreamCounters>)>>,
    /// Milliseconds since the UNIX epoch of the last upstream answer; 0 for
    /// never. For `/readyz`.
    last_upstream_answer_ms: AtomicU64,
    /// The served certificate: subject and not-after (UNIX seconds).
    pub(super) certificate: Mutex<Option<(String, i64)>>,
    certificate_loaded: AtomicBool,
    listening: AtomicBool,
}

/// Queries sent to one upstream, by transport (health probes included),
/// and whether the pool counts it up.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    pub udp: AtomicU64,
    pub tcp: AtomicU64,
    /// 1 while the pool considers the upstream up, 0 while down.
    pub up: AtomicU64,
}

/// The bounded set of RCODE label values of `dotgate_replies_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcodeLabel {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    BadVers,
    Other,
}

impl RcodeLabel {
    pub const ALL: [RcodeLabel; 8] = [
        RcodeLabel::NoError,
        RcodeLabel::FormErr,
        RcodeLabel::ServFail,
        RcodeLabel::NxDomain,
        RcodeLabel::NotImp,
        RcodeLabel::Refused,
        RcodeLabel::BadVers,
        RcodeLabel::Other,
    ];

    /// The label of a (possibly extended) RCODE.
    pub fn of(rcode: u16) -> Self {
        match rcode {
            0 => RcodeLabel::NoError,
            1 => RcodeLabel::FormErr,
            2 => RcodeLabel::ServFail,
            3 => RcodeLabel::NxDomain,
            4 => RcodeLabel::NotImp,
            5 => RcodeLabel::Refused,
            16 => RcodeLabel::BadVers,
            _ => RcodeLabel::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RcodeLabel::NoError => "noerror",
            RcodeLabel::FormErr => "formerr",
            RcodeLabel::ServFail => "servfail",
            RcodeLabel::NxDomain => "nxdomain",
            RcodeLabel::NotImp => "notimp",
            RcodeLabel::Refused => "refused",
            RcodeLabel::BadVers => "badvers",
            RcodeLabel::Other => "other",
        }
    }
}

/// Why dotgate answered a query itself instead of relaying the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthesized {
    /// FORMERR: the query could not be read past its header.
    FormErrUnparsable,
    /// FORMERR: an OPT record dotgate refuses (several OPT, option 11 with a
    /// value).
    FormErrEdns,
    /// BADVERS: EDNS version above 0.
    BadVersEdns,
    /// SERVFAIL: the upstream did not answer within the upstream timeout.
    ServFailTimeout,
    /// SERVFAIL: the upstream exchange failed (I/O, closed, busy).
    ServFailUpstream,
    /// SERVFAIL: the upstream's answer could not be turned into a reply.
    ServFailBadReply,
}

impl Synthesized {
    pub const ALL: [Synthesized; 6] = [
        Synthesized::FormErrUnparsable,
        Synthesized::FormErrEdns,
        Synthesized::BadVersEdns,
        Synthesized::ServFailTimeout,
        Synthesized::ServFailUpstream,
        Synthesized::ServFailBadReply,
    ];

    /// The (rcode, cause) labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Synthesized::FormErrUnparsable => ("formerr", "unparsable"),
            Synthesized::FormErrEdns => ("formerr", "edns"),
            Synthesized::BadVersEdns => ("badvers", "edns_version"),
            Synthesized::ServFailTimeout => ("servfail", "upstream_timeout"),
            Synthesized::ServFailUpstream => ("servfail", "upstream_error"),
            Synthesized::ServFailBadReply => ("servfail", "bad_upstream_reply"),
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    ClosedEarly,
    Error,
}

/// A negotiated TLS version, for `dotgate_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersionLabel {
    Tls12,
    Tls13,
}

/// Why `/readyz` says not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("not listening yet")]
    NotListening,
    #[error("no certificate loaded")]
    NoCertificate,
    #[error("no upstream has answered yet")]
    NoUpstreamAnswer,
    #[error("no upstream answer within the readiness window")]
    UpstreamStale,
}

impl Stats {
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a connection's end by its reason.
    pub fn count_close(&self, reason: CloseReason) {
        self.count(match reason {
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Client => &self.closed_client,
            CloseReason::Error => &self.closed_error,
            CloseReason::Retired => &self.closed_retired,
            CloseReason::Shutdown => &self.closed_shutdown,
            CloseReason::ReadTimeout => &self.closed_read_timeout,
        });
    }

    /// Counts a failed handshake, in the total and by reason.
    pub fn count_handshake_failure(&self, why: HandshakeFailure) {
        self.count(&self.handshake_failures);
        self.count(match why {
            HandshakeFailure::Timeout => &self.handshake_timeouts,
            HandshakeFailure::ClosedEarly => &self.handshake_closed_early,
            HandshakeFailure::Error => &self.handshake_errors,
        });
    }

    /// Counts a finished handshake by version, and whether it resumed.
    pub fn count_handshake(&self, version: TlsVersionLabel, resumed: bool) {
        self.count(match version {
            TlsVersionLabel::Tls12 => &self.handshakes_tls12,
            TlsVersionLabel::Tls13 => &self.handshakes_tls13,
        });
        if resumed {
            self.count(&self.handshakes_resumed);
        }
    }

    /// Counts one reply by its (possibly extended) RCODE.
    pub fn count_reply(&self, rcode: u16) {
        let label = RcodeLabel::of(rcode);
        // ALL lists every variant in declaration order.
        self.count(&self.replies[label as usize]);
    }

    /// Counts a synthesized reply by cause (and in its RCODE's total).
    pub fn count_synthesized(&self, cause: Synthesized) {
        self.count(&self.synthesized[cause as usize]);
        match cause {
            Synthesized::FormErrUnparsable | Synthesized::FormErrEdns => {
                self.count(&self.formerr_synthesized)
            }
            Synthesized::ServFailTimeout
            | Synthesized::ServFailUpstream
            | Synthesized::ServFailBadReply => self.count(&self.servfail_synthesized),
            Synthesized::BadVersEdns => {}
        }
    }

    /// One more open connection until the guard drops.
    pub fn open_connection(&self) -> GaugeGuard<'_> {
        GaugeGuard::new(&self.connections_open)
    }

    /// One more query in flight until the guard drops.
    pub fn query_in_flight(self: &Arc<Self>) -> OwnedGaugeGuard {
        self.queries_in_flight.fetch_add(1, Ordering::Relaxed);
        OwnedGaugeGuard {
            stats: self.clone(),
        }
    }

    /// The counters of the upstream called `name` (as written on the
    /// command line: a bounded label set), registered on first call (at
    /// start-up: this takes a lock), shared by every later call for the same
    /// name. The pool keeps the handle and counts on it per query.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamCounters> {
        let mut upstreams = lock(&self.upstreams);
        if let Some((_, counters)) = upstreams.iter().find(|(n, _)| n == name) {
            return counters.clone();
        }
        let counters = Arc::new(UpstreamCounters::default());
        upstreams.push((name.to_string(), counters.clone()));
        counters
    }

    /// Records that an upstream answered (a query or a health probe): the
    /// upstream leg works, which `/readyz` reports.
    pub fn note_upstream_answer(&self) {
        self.last_upstream_answer_ms
            .store(unix_millis().max(1), Ordering::Relaxed);
    }

    /// Records the served certificate (at start-up and on every reload).
    pub fn set_certificate(&self, subject: &str, not_after_unix: i64) {
        *lock(&self.certificate) = Some((subject.to_string(), not_after_unix));
        self.certificate_loaded.store(true, Ordering::Relaxed);
    }

    /// Records that a certificate is loaded even when its fields could not
    /// be read for the not-after gauge.
    pub fn set_certificate_loaded(&self) {
        self.certificate_loaded.store(true, Ordering::Relaxed);
    }

    /// Records that the accept loops run.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    /// Ready when listening, with a certificate, and some upstream answered
    /// within `window`.
    pub fn readiness(&self, window: Duration) -> Result<(), NotReady> {
        if !self.listening.load(Ordering::Relaxed) {
            return Err(NotReady::NotListening);
        }
        if !self.certificate_loaded.load(Ordering::Relaxed) {
            return Err(NotReady::NoCertificate);
        }
        let last = self.last_upstream_answer_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err(NotReady::NoUpstreamAnswer);
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if unix_millis().saturating_sub(last) > window_ms {
            return Err(NotReady::UpstreamStale);
        }
        Ok(())
    }

    /// Logs every counter in one line.
    pub fn log_summary(&self) {
        tracing::info!(
            connections_accepted = Self::get(&self.connections_accepted),
            refused_plaintext = Self::get(&self.refused_plaintext),
            refused_over_capacity = Self::get(&self.refused_over_capacity),
            refused_per_ip = Self::get(&self.refused_per_ip),
            refused_handshake_rate = Self::get(&self.refused_handshake_rate),
            refused_proxy_malformed = Self::get(&self.refused_proxy_malformed),
            refused_proxy_untrusted = Self::get(&self.refused_proxy_untrusted),
            accept_errors = Self::get(&self.accept_errors),
            handshake_failures = Self::get(&self.handshake_failures),
            queries = Self::get(&self.queries),
            formerr_synthesized = Self::get(&self.formerr_synthesized),
            servfail_synthesized = Self::get(&self.servfail_synthesized),
            upstream_timeouts = Self::get(&self.upstream_timeouts),
            tc_fallbacks = Self::get(&self.tc_fallbacks),
            mismatched_replies = Self::get(&self.mismatched_replies),
            upstream_failovers = Self::get(&self.upstream_failovers),
            upstream_all_down = Self::get(&self.upstream_all_down),
            upstream_connections_lost = Self::get(&self.upstream_connections_lost),
            "totals"
        );
    }
}

/// A lock held only at start-up, on reload and on scrape; a poisoned one
/// still holds consistent data (every write is one assignment or push).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decrements its gauge on drop.
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements `queries_in_flight` on drop; movable into a query's task.
pub struct OwnedGaugeGuard {
    stats: Arc<Stats>,
}

impl Drop for OwnedGaugeGuard {
    fn drop(&mut self) {
        self.stats.queries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs to 5 s in 1-2.5-5
/// steps, fine enough for a loopback resolver (sub-millisecond) and for a
/// slow recursion (seconds), and few enough to keep scrapes small.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram of atomics: one `fetch_add` per bucket hit and one
/// for the sum, no lock. The count is the sum of the buckets, so a scrape
/// always sees count and buckets agree.
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The histogram as Prometheus exposes it: cumulative buckets.
    pub(super) fn to_proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (bound, hits) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += hits.load(Ordering::Relaxed);
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
        let count = cumulative + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(count);
        h.set_sample_sum(self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_listening_a_certificate_and_a_recent_answer() {
        let stats = Stats::default();
        let window = Duration::from_secs(30);
        assert_eq!(stats.readiness(window), Err(NotReady::NotListening));
        stats.set_listening();
        assert_eq!(stats.readiness(window), Err(NotReady::NoCertificate));
        stats.set_certificate_loaded();
        assert_eq!(stats.readiness(window), Err(NotReady::NoUpstreamAnswer));
        stats.note_upstream_answer();
        assert_eq!(stats.readiness(window), Ok(()));
        stats
            .last_upstream_answer_ms
            .store(unix_millis() - 60_000, Ordering::Relaxed);
        assert_eq!(stats.readiness(window), Err(NotReady::UpstreamStale));
    }

    #[test]
    fn the_same_upstream_gets_the_same_counters() {
        let stats = Stats::default();
        let a = stats.upstream("192.0.2.1:53");
        let b = stats.upstream("192.0.2.1:53");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
