//! What dotgate counts.
//!
//! Every metric is a typed metric of the `prometheus` crate (`IntCounter`,
//! `IntGauge`, `Histogram`), registered in the server's own registry when
//! [`Stats::new`] builds it (no global registry). A labelled metric has a
//! closed set of children, each resolved once in [`Stats::new`] and kept in
//! a field, or an array indexed by a closed enum, so every label value is
//! known at compile time (never a client address or a query name) and
//! counting on the hot path is `counter.inc()`: one relaxed atomic add, with
//! no lock, no child lookup and no allocation. The only per-process label
//! values are the upstream addresses, resolved once at start-up by
//! [`Stats::upstream`], and the served certificate's subject, replaced on
//! reload.
//!
//! The registry and its text encoding are [`super::exposition`]'s job.
//!
//! To add a counter: add an `IntCounter` field, create it in [`Stats::new`]
//! with its name and help (`registrar.counter(NAME, HELP)?`, or a child of a
//! `registrar.counter_vec`), count it with `stats.field.inc()`, and list it
//! in [`Stats::log_summary`] (and in the metric list of docs/operations.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::exposition::Registrar;

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
    /// A query over a rate limit with `--rate-limit-action close`, or from
    /// a banned address.
    RateLimited,
}

/// What dotgate counts. A child of a labelled family is a field of its own
/// (or an entry of an array), resolved once by [`Stats::new`].
#[derive(Debug)]
pub struct Stats {
    /// Indexed by [`Transport`].
    pub connections_accepted: [IntCounter; 2],
    /// Connections from accept (or admission) to close; indexed by
    /// [`Transport`].
    pub connections_open: [IntGauge; 2],
    /// First byte was not a TLS handshake record (R1).
    pub refused_plaintext: IntCounter,
    /// Over `--max-connections`.
    pub refused_over_capacity: IntCounter,
    /// Over `--max-connections-per-ip`.
    pub refused_per_ip: IntCounter,
    /// Over `--max-handshakes-per-ip-per-sec`.
    pub refused_handshake_rate: IntCounter,
    /// A PROXY protocol header that could not be read.
    pub refused_proxy_malformed: IntCounter,
    /// A connection from outside `--proxy-protocol-from` while PROXY is on.
    pub refused_proxy_untrusted: IntCounter,
    /// A client outside `--allow-from`.
    pub refused_not_allowed: IntCounter,
    /// A TLS server name without a listed client ID (`--client-id`,
    /// `--client-ids`): the handshake was refused.
    pub refused_client_id: IntCounter,
    /// `--acme` has no certificate yet: closed at accept.
    pub refused_no_certificate: IntCounter,
    /// The client's address is banned (`--ban-after`).
    pub refused_banned: IntCounter,
    /// Bans begun (`--ban-after`).
    pub bans: IntCounter,
    /// Addresses and client IDs the rate limiter tracks now.
    pub rate_limit_entries: IntGauge,
    /// Tracked entries forgotten to make room for a new one.
    pub rate_limit_evictions: IntCounter,
    /// Queries over a rate limit, by transport and limit; resolved by
    /// [`Stats::rate_limited`].
    rate_limited: IntCounterVec,
    /// Failed accepts on a DoT listener (out of file descriptors, mostly);
    /// each one is followed by a pause, see `server::AcceptErrors`.
    pub accept_errors: IntCounter,
    pub closed_idle: IntCounter,
    pub closed_client: IntCounter,
    pub closed_error: IntCounter,
    pub closed_retired: IntCounter,
    pub closed_shutdown: IntCounter,
    pub closed_read_timeout: IntCounter,
    pub closed_rate_limited: IntCounter,
    /// Reads that waited for room in the shared message budget.
    pub message_budget_waits: IntCounter,
    /// All failed handshakes; the three below split them by reason.
    pub handshake_failures: IntCounter,
    pub handshake_timeouts: IntCounter,
    /// The peer closed before the handshake finished.
    pub handshake_closed_early: IntCounter,
    /// A TLS protocol error (bad ClientHello, no common version or suite...).
    pub handshake_errors: IntCounter,
    /// The client closed, reset or sent a certificate alert right after
    /// our certificate (it likely does not trust it).
    pub handshake_certificate_rejected: IntCounter,
    /// Connections failed for a TLS handshake message that held over
    /// 68 KiB of records before it was complete.
    pub tls_handshake_too_large: IntCounter,
    pub handshakes_tls12: IntCounter,
    pub handshakes_tls13: IntCounter,
    pub handshakes_resumed: IntCounter,
    /// Indexed by [`Transport`].
    pub queries: [IntCounter; 2],
    /// HTTP responses of the DoH listeners, by status.
    pub doh_responses: IntCounterVec,
    /// The `200` child of `doh_responses`, resolved at the first answer
    /// (not at start-up, so that a server without DoH shows no series):
    /// every DNS answer over DoH counts on it.
    doh_ok: OnceLock<IntCounter>,
    /// Queries read and not yet answered, over all connections.
    pub queries_in_flight: IntGauge,
    /// Replies produced, by RCODE; indexed by [`RcodeLabel`].
    pub replies: [IntCounter; RcodeLabel::ALL.len()],
    /// Synthesized replies by cause; indexed by [`Synthesized`].
    pub synthesized: [IntCounter; Synthesized::ALL.len()],
    pub upstream_timeouts: IntCounter,
    pub tc_fallbacks: IntCounter,
    /// UDP queries sent a second time after no reply within the resend delay.
    pub upstream_udp_resends: IntCounter,
    /// Upstream messages with an unknown ID or a different question.
    pub mismatched_replies: IntCounter,
    /// Upstream replies to the right ID and question that cannot be passed
    /// on (malformed records): the query waits on for a valid one.
    pub upstream_bad_replies: IntCounter,
    /// Queries sent to a second upstream after the first failed or timed out.
    pub upstream_failovers: IntCounter,
    /// Queries sent while every upstream was marked down (panic mode).
    pub upstream_all_down: IntCounter,
    /// Queries whose pooled TCP/TLS upstream connection died under them
    /// (each is sent again on another connection).
    pub upstream_connections_lost: IntCounter,
    // The prometheus crate's `Histogram::observe` does four atomic
    // operations (hot shard, bucket, an f64 compare-and-swap for the sum,
    // count) where the hand-written histogram it replaced did two: measured
    // by examples/metrics_hot_path.rs on the shared 2-core box, 12 ns per
    // call against 7.5 ns on one thread, 25-40 ns against 18-37 ns with two
    // threads on the same histogram (about 1.6x; counters: equal, 3.5 ns).
    // Under the 2x the issue allowed, for two observations per query, so the
    // typed histogram is used.
    /// From the upstream query's send to its matching reply, in seconds
    /// (buckets: [`LATENCY_BUCKETS`]).
    pub upstream_rtt: Histogram,
    /// From a query's last byte read to its reply handed to the TLS writer
    /// and flushed, in seconds (buckets: [`LATENCY_BUCKETS`]).
    pub query_duration: Histogram,
    /// Per-upstream children are resolved by [`Stats::upstream`].
    upstream_queries: IntCounterVec,
    /// Queries per listed client ID, resolved by [`Stats::client_queries`]
    /// (no child at all without an ID list).
    client_queries: IntCounterVec,
    upstream_up: IntGaugeVec,
    /// The served certificate's not-after (UNIX seconds), under its subject.
    certificate_not_after: IntGaugeVec,
    /// The subject of `certificate_not_after`'s one child, if any; held
    /// while the child is replaced, and by a scrape while it collects the
    /// family, so that a scrape never sees two series (or none).
    certificate_subject: Arc<Mutex<Option<String>>>,
    /// Milliseconds from `epoch` to the last upstream answer, plus one; 0
    /// for never. For `/readyz`. A monotonic clock: a wall clock set back
    /// cannot make the answer look stale or fresh.
    last_upstream_answer_ms: AtomicU64,
    epoch: Instant,
    certificate_loaded: AtomicBool,
    listening: AtomicBool,
    /// Holds every metric above: what `/metrics` serves.
    registry: Registry,
}

/// Queries sent to one upstream, by transport (health probes included),
/// and whether the pool counts it up: children of the per-upstream
/// families, resolved once by [`Stats::upstream`].
#[derive(Debug, Clone)]
pub struct UpstreamCounters {
    pub udp: IntCounter,
    pub tcp: IntCounter,
    /// 1 while the pool considers the upstream up, 0 while down.
    pub up: IntGauge,
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
    /// Closed, reset or alerted right after our certificate.
    CertificateRejected,
    Error,
}

/// How a client's queries reach dotgate: the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// DNS over TLS (RFC 7858).
    Dot = 0,
    /// DNS over HTTPS (RFC 8484), with or without TLS of its own.
    Doh = 1,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Dot, Transport::Doh];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Dot => "dot",
            Transport::Doh => "doh",
        }
    }
}

/// Which limit a query went over, for `dotgate_rate_limited_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitLabel {
    Ip = 0,
    ClientId = 1,
    /// The address is banned (`--ban-after`).
    Banned = 2,
}

impl RateLimitLabel {
    pub const ALL: [RateLimitLabel; 3] = [
        RateLimitLabel::Ip,
        RateLimitLabel::ClientId,
        RateLimitLabel::Banned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitLabel::Ip => "ip",
            RateLimitLabel::ClientId => "client_id",
            RateLimitLabel::Banned => "banned",
        }
    }
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
    #[error("no certificate loaded yet")]
    NoCertificate,
    #[error("no upstream has answered yet")]
    NoUpstreamAnswer,
    #[error("no upstream answer within the readiness window")]
    UpstreamStale,
}

impl Stats {
    /// Every metric, at zero, registered in a new registry of its own. The
    /// names, help texts and labels here are what `/metrics` shows (the
    /// metric list of docs/operations.md follows them). Fails only if two metrics share a
    /// name or one is malformed: a bug, caught by every test that builds one.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        let refused = r.counter_vec(
            "dotgate_connections_refused_total",
            "Connections closed before serving, by reason.",
            &["reason"],
        )?;
        let closed = r.counter_vec(
            "dotgate_connections_closed_total",
            "Served connections closed, by reason.",
            &["reason"],
        )?;
        let handshakes = r.counter_vec(
            "dotgate_tls_handshakes_total",
            "TLS handshakes by result and negotiated version.",
            &["result", "version"],
        )?;
        let handshake_failures = r.counter_vec(
            "dotgate_tls_handshake_failures_total",
            "Failed TLS handshakes by reason.",
            &["reason"],
        )?;
        let replies = r.counter_vec(
            "dotgate_replies_total",
            "Replies produced for clients, by RCODE.",
            &["rcode"],
        )?;
        let synthesized = r.counter_vec(
            "dotgate_synthesized_replies_total",
            "Replies dotgate made itself instead of relaying the upstream, by RCODE and cause.",
            &["rcode", "cause"],
        )?;
        let accepted = r.counter_vec(
            "dotgate_connections_accepted_total",
            "TCP connections admitted past the connection caps, by transport.",
            &["transport"],
        )?;
        let open = r.gauge_vec(
            "dotgate_connections_open",
            "Connections open now, handshaking or serving, by transport.",
            &["transport"],
        )?;
        let queries = r.counter_vec(
            "dotgate_queries_total",
            "DNS queries read from clients, by transport.",
            &["transport"],
        )?;
        let certificate_subject = Arc::new(Mutex::new(None));
        Ok(Stats {
            connections_accepted: Transport::ALL.map(|t| accepted.with_label_values(&[t.as_str()])),
            connections_open: Transport::ALL.map(|t| open.with_label_values(&[t.as_str()])),
            refused_plaintext: refused.with_label_values(&["plaintext"]),
            refused_over_capacity: refused.with_label_values(&["over_capacity"]),
            refused_per_ip: refused.with_label_values(&["per_ip"]),
            refused_handshake_rate: refused.with_label_values(&["handshake_rate"]),
            refused_proxy_malformed: refused.with_label_values(&["proxy_malformed"]),
            refused_proxy_untrusted: refused.with_label_values(&["proxy_untrusted"]),
            refused_not_allowed: refused.with_label_values(&["not_allowed"]),
            refused_client_id: refused.with_label_values(&["client_id"]),
            refused_no_certificate: refused.with_label_values(&["no_certificate"]),
            refused_banned: refused.with_label_values(&["banned"]),
            bans: r.counter(
                "dotgate_bans_total",
                "Client addresses banned for going over --max-qps-per-ip for --ban-after.",
            )?,
            rate_limit_entries: r.gauge(
                "dotgate_rate_limit_entries",
                "Client addresses and IDs the rate limiter tracks (at most --rate-limit-table-size each).",
            )?,
            rate_limit_evictions: r.counter(
                "dotgate_rate_limit_evictions_total",
                "Tracked addresses or IDs forgotten to make room for new ones (the least recently seen).",
            )?,
            rate_limited: r.counter_vec(
                "dotgate_rate_limited_queries_total",
                "Queries over a rate limit (never sent upstream), by transport and limit (ip, client_id, banned).",
                &["transport", "limit"],
            )?,
            accept_errors: r.counter(
                "dotgate_accept_errors_total",
                "Failed accepts on a DoT listener (e.g. out of file descriptors), each followed by a pause.",
            )?,
            closed_idle: closed.with_label_values(&["idle"]),
            closed_client: closed.with_label_values(&["client"]),
            closed_error: closed.with_label_values(&["error"]),
            closed_retired: closed.with_label_values(&["retired"]),
            closed_shutdown: closed.with_label_values(&["shutdown"]),
            closed_read_timeout: closed.with_label_values(&["read_timeout"]),
            closed_rate_limited: closed.with_label_values(&["rate_limited"]),
            message_budget_waits: r.counter(
                "dotgate_message_budget_waits_total",
                "Reads of a large message that waited for room in --message-memory-mib.",
            )?,
            handshake_failures: handshakes.with_label_values(&["failed", "none"]),
            handshake_timeouts: handshake_failures.with_label_values(&["timeout"]),
            handshake_closed_early: handshake_failures.with_label_values(&["closed_early"]),
            handshake_errors: handshake_failures.with_label_values(&["error"]),
            handshake_certificate_rejected: handshake_failures
                .with_label_values(&["certificate_rejected"]),
            tls_handshake_too_large: r.counter(
                "dotgate_tls_handshake_too_large_total",
                "Connections failed (decode_error sent) for a TLS handshake message held over 68 KiB before it was complete.",
            )?,
            handshakes_tls12: handshakes.with_label_values(&["ok", "1.2"]),
            handshakes_tls13: handshakes.with_label_values(&["ok", "1.3"]),
            handshakes_resumed: r.counter(
                "dotgate_tls_resumed_handshakes_total",
                "TLS handshakes that resumed a session (ticket or session ID).",
            )?,
            queries: Transport::ALL.map(|t| queries.with_label_values(&[t.as_str()])),
            doh_responses: r.counter_vec(
                "dotgate_doh_responses_total",
                "HTTP responses on the DoH listeners, by status code.",
                &["status"],
            )?,
            doh_ok: OnceLock::new(),
            queries_in_flight: r.gauge(
                "dotgate_queries_in_flight",
                "Queries read and not yet answered.",
            )?,
            replies: RcodeLabel::ALL.map(|label| replies.with_label_values(&[label.as_str()])),
            synthesized: Synthesized::ALL.map(|cause| {
                let (rcode, why) = cause.labels();
                synthesized.with_label_values(&[rcode, why])
            }),
            upstream_queries: r.counter_vec(
                "dotgate_upstream_queries_total",
                "Queries sent to each upstream, by transport.",
                &["upstream", "transport"],
            )?,
            client_queries: r.counter_vec(
                "dotgate_client_queries_total",
                "Queries by client ID, for the IDs of --client-id and --client-ids only.",
                &["client_id"],
            )?,
            upstream_up: r.gauge_vec(
                "dotgate_upstream_up",
                "1 while the pool counts the upstream up (health checks), 0 while down.",
                &["upstream"],
            )?,
            upstream_failovers: r.counter(
                "dotgate_upstream_failovers_total",
                "Queries sent to a second upstream after the first failed or timed out.",
            )?,
            upstream_all_down: r.counter(
                "dotgate_upstream_all_down_total",
                "Queries sent while every upstream was marked down (panic mode: sent to them all the same).",
            )?,
            upstream_connections_lost: r.counter(
                "dotgate_upstream_connections_lost_total",
                "Pooled tcp:// or tls:// upstream connections that died with queries in flight.",
            )?,
            upstream_timeouts: r.counter(
                "dotgate_upstream_timeouts_total",
                "Upstream exchanges that got no answer within the upstream timeout.",
            )?,
            tc_fallbacks: r.counter(
                "dotgate_upstream_tc_fallbacks_total",
                "Truncated UDP answers retried over TCP.",
            )?,
            upstream_udp_resends: r.counter(
                "dotgate_upstream_udp_resends_total",
                "UDP queries sent once more after no reply within the resend delay.",
            )?,
            mismatched_replies: r.counter(
                "dotgate_upstream_mismatched_replies_total",
                "Upstream messages dropped: unknown ID, other question, or too short.",
            )?,
            upstream_bad_replies: r.counter(
                "dotgate_upstream_bad_replies_total",
                "Upstream replies to the right ID and question that were malformed: ignored, the query waits on within its try.",
            )?,
            upstream_rtt: r.histogram(
                "dotgate_upstream_rtt_seconds",
                "Upstream round trip, from sending a query to its matching answer.",
                &LATENCY_BUCKETS,
            )?,
            query_duration: r.histogram(
                "dotgate_query_duration_seconds",
                "From a query read to its reply written to the client.",
                &LATENCY_BUCKETS,
            )?,
            certificate_not_after: r.gauge_vec_stepped(
                "dotgate_certificate_not_after_timestamp_seconds",
                "End of validity of the served certificate, in UNIX seconds.",
                &["subject"],
                certificate_subject.clone(),
            )?,
            certificate_subject,
            last_upstream_answer_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            certificate_loaded: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            registry,
        })
    }

    /// The registry holding every metric of these statistics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a connection's end by its reason.
    pub fn count_close(&self, reason: CloseReason) {
        match reason {
            CloseReason::Idle => &self.closed_idle,
            CloseReason::Client => &self.closed_client,
            CloseReason::Error => &self.closed_error,
            CloseReason::Retired => &self.closed_retired,
            CloseReason::Shutdown => &self.closed_shutdown,
            CloseReason::ReadTimeout => &self.closed_read_timeout,
            CloseReason::RateLimited => &self.closed_rate_limited,
        }
        .inc();
    }

    /// Counts a failed handshake, in the total and by reason.
    pub fn count_handshake_failure(&self, why: HandshakeFailure) {
        self.handshake_failures.inc();
        match why {
            HandshakeFailure::Timeout => &self.handshake_timeouts,
            HandshakeFailure::ClosedEarly => &self.handshake_closed_early,
            HandshakeFailure::CertificateRejected => &self.handshake_certificate_rejected,
            HandshakeFailure::Error => &self.handshake_errors,
        }
        .inc();
    }

    /// Counts a finished handshake by version, and whether it resumed.
    pub fn count_handshake(&self, version: TlsVersionLabel, resumed: bool) {
        match version {
            TlsVersionLabel::Tls12 => &self.handshakes_tls12,
            TlsVersionLabel::Tls13 => &self.handshakes_tls13,
        }
        .inc();
        if resumed {
            self.handshakes_resumed.inc();
        }
    }

    /// Counts one reply by its (possibly extended) RCODE.
    pub fn count_reply(&self, rcode: u16) {
        let label = RcodeLabel::of(rcode);
        // ALL lists every variant in declaration order.
        self.replies[label as usize].inc();
    }

    /// Counts a synthesized reply by cause.
    pub fn count_synthesized(&self, cause: Synthesized) {
        // ALL lists every variant in declaration order.
        self.synthesized[cause as usize].inc();
    }

    /// Synthesized replies so far whose RCODE label is `rcode`.
    fn synthesized_with(&self, rcode: &str) -> u64 {
        Synthesized::ALL
            .iter()
            .filter(|cause| cause.labels().0 == rcode)
            .map(|&cause| self.synthesized[cause as usize].get())
            .sum()
    }

    /// One more open connection until the guard drops.
    pub fn open_connection(&self, transport: Transport) -> GaugeGuard<'_> {
        GaugeGuard::new(&self.connections_open[transport as usize])
    }

    /// One more DNS query read from a client over `transport`.
    pub fn count_query(&self, transport: Transport) {
        self.queries[transport as usize].inc();
    }

    /// One more HTTP response with `status` on a DoH listener. The label
    /// values are the few statuses dotgate itself sends. A 200, the answer
    /// to nearly every request, counts without the family's lock or a
    /// label string; the refusals resolve their child each time.
    pub fn count_doh_response(&self, status: u16) {
        if status == 200 {
            self.doh_ok
                .get_or_init(|| self.doh_responses.with_label_values(&["200"]))
                .inc();
        } else {
            self.doh_responses
                .with_label_values(&[&status.to_string()])
                .inc();
        }
    }

    /// Counts in `dotgate_query_duration_seconds` the replies just written,
    /// each from when its query was `received`: one reading of the clock
    /// for the whole batch.
    pub fn observe_written(&self, received: &[Instant]) {
        let written = Instant::now();
        for received in received {
            self.query_duration
                .observe(written.saturating_duration_since(*received).as_secs_f64());
        }
    }

    /// One more query in flight until the guard drops.
    pub fn query_in_flight(&self) -> GaugeGuard<'_> {
        GaugeGuard::new(&self.queries_in_flight)
    }

    /// The counters of the upstream called `name` (as written on the
    /// command line: a bounded label set). Resolving a child takes the
    /// family's lock and may allocate, so this is called once per upstream
    /// at start-up; the pool keeps the handles and counts on them per
    /// query. Every call for the same name gets the same children.
    pub fn upstream(&self, name: &str) -> UpstreamCounters {
        UpstreamCounters {
            udp: self.upstream_queries.with_label_values(&[name, "udp"]),
            tcp: self.upstream_queries.with_label_values(&[name, "tcp"]),
            up: self.upstream_up.with_label_values(&[name]),
        }
    }

    /// The counter of queries over `limit` on `transport`. Resolved once,
    /// when the limiter is built.
    pub fn rate_limited(&self, transport: Transport, limit: RateLimitLabel) -> IntCounter {
        self.rate_limited
            .with_label_values(&[transport.as_str(), limit.as_str()])
    }

    /// The query counter of a listed client ID (the label values are
    /// bounded by the ID list). Resolved once per connection.
    pub fn client_queries(&self, id: &str) -> IntCounter {
        self.client_queries.with_label_values(&[id])
    }

    /// Records that an upstream answered at `at` (a query or a health
    /// probe): the upstream leg works, which `/readyz` reports. Written
    /// only when the millisecond changed: not a shared write per query.
    pub fn note_upstream_answer(&self, at: Instant) {
        let ms = self.millis(at);
        if self.last_upstream_answer_ms.load(Ordering::Relaxed) < ms {
            self.last_upstream_answer_ms
                .fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// `at` in whole milliseconds from `epoch`, plus one (0 stands for
    /// never).
    fn millis(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
    }

    /// Records the served certificate (at start-up and on every reload):
    /// the not-after gauge gets a child for the new subject and loses the
    /// previous one, so it always has at most one series.
    pub fn set_certificate(&self, subject: &str, not_after_unix: i64) {
        let mut current = lock(&self.certificate_subject);
        self.certificate_not_after
            .with_label_values(&[subject])
            .set(not_after_unix);
        if let Some(previous) = current.as_deref().filter(|&p| p != subject) {
            // Err only when there is no such child: then nothing to remove.
            let _ = self.certificate_not_after.remove_label_values(&[previous]);
        }
        *current = Some(subject.to_string());
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
        self.readiness_at(window, Instant::now())
    }

    /// [`Self::readiness`] judged at `now`.
    fn readiness_at(&self, window: Duration, now: Instant) -> Result<(), NotReady> {
        // The certificate first: with --acme, the first order runs before
        // dotgate listens, and that is what an operator should read.
        if !self.certificate_loaded.load(Ordering::Relaxed) {
            return Err(NotReady::NoCertificate);
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err(NotReady::NotListening);
        }
        let last = self.last_upstream_answer_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Err(NotReady::NoUpstreamAnswer);
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if self.millis(now).saturating_sub(last) > window_ms {
            return Err(NotReady::UpstreamStale);
        }
        Ok(())
    }

    /// Logs every counter in one line.
    pub fn log_summary(&self) {
        tracing::info!(
            connections_accepted = self
                .connections_accepted
                .iter()
                .map(IntCounter::get)
                .sum::<u64>(),
            refused_plaintext = self.refused_plaintext.get(),
            refused_over_capacity = self.refused_over_capacity.get(),
            refused_per_ip = self.refused_per_ip.get(),
            refused_handshake_rate = self.refused_handshake_rate.get(),
            refused_proxy_malformed = self.refused_proxy_malformed.get(),
            refused_proxy_untrusted = self.refused_proxy_untrusted.get(),
            refused_not_allowed = self.refused_not_allowed.get(),
            refused_client_id = self.refused_client_id.get(),
            refused_no_certificate = self.refused_no_certificate.get(),
            refused_banned = self.refused_banned.get(),
            bans = self.bans.get(),
            accept_errors = self.accept_errors.get(),
            handshake_failures = self.handshake_failures.get(),
            queries = self.queries.iter().map(IntCounter::get).sum::<u64>(),
            formerr_synthesized = self.synthesized_with("formerr"),
            servfail_synthesized = self.synthesized_with("servfail"),
            upstream_timeouts = self.upstream_timeouts.get(),
            tc_fallbacks = self.tc_fallbacks.get(),
            mismatched_replies = self.mismatched_replies.get(),
            upstream_bad_replies = self.upstream_bad_replies.get(),
            upstream_failovers = self.upstream_failovers.get(),
            upstream_all_down = self.upstream_all_down.get(),
            upstream_connections_lost = self.upstream_connections_lost.get(),
            "totals"
        );
    }
}

/// A lock held only on reload; a poisoned one still holds consistent data
/// (every write is one assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements its gauge on drop.
pub struct GaugeGuard<'a>(&'a IntGauge);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs to 5 s in 1-2.5-5
/// steps, fine enough for a loopback resolver (sub-millisecond) and for a
/// slow recursion (seconds), and few enough to keep scrapes small.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_listening_a_certificate_and_a_recent_answer() {
        let stats = Stats::new().unwrap();
        let window = Duration::from_secs(30);
        assert_eq!(stats.readiness(window), Err(NotReady::NoCertificate));
        stats.set_certificate_loaded();
        assert_eq!(stats.readiness(window), Err(NotReady::NotListening));
        stats.set_listening();
        assert_eq!(stats.readiness(window), Err(NotReady::NoUpstreamAnswer));
        let answered = Instant::now();
        stats.note_upstream_answer(answered);
        assert_eq!(stats.readiness(window), Ok(()));
        let later = answered + Duration::from_secs(60);
        assert_eq!(
            stats.readiness_at(window, later),
            Err(NotReady::UpstreamStale)
        );
        stats.note_upstream_answer(later);
        assert_eq!(stats.readiness_at(window, later), Ok(()));
    }

    #[test]
    fn the_same_upstream_gets_the_same_counters() {
        let stats = Stats::new().unwrap();
        let a = stats.upstream("192.0.2.1:53");
        let b = stats.upstream("192.0.2.1:53");
        a.udp.inc();
        b.up.set(1);
        assert_eq!(b.udp.get(), 1);
        assert_eq!(a.up.get(), 1);
        assert_eq!(stats.upstream("192.0.2.2:53").udp.get(), 0);
    }

    #[test]
    fn a_new_certificate_replaces_the_previous_series() {
        let stats = Stats::new().unwrap();
        stats.set_certificate("CN=a.test", 1);
        stats.set_certificate("CN=a.test", 2);
        stats.set_certificate("CN=b.test", 3);
        let families = stats.registry().gather();
        let family = families
            .iter()
            .find(|f| f.name() == "dotgate_certificate_not_after_timestamp_seconds")
            .expect("the certificate family");
        let series: Vec<_> = family
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_string(),
                    m.get_gauge().get_value(),
                )
            })
            .collect();
        assert_eq!(series, [("CN=b.test".to_string(), 3.0)]);
    }

    /// Scrapes while another thread swaps the certificate back and forth
    /// (reloads): no scrape ever sees two certificate series, or none once
    /// one was set. Bounded by count on both sides.
    #[test]
    fn a_scrape_during_a_reload_sees_one_certificate_series() {
        const SCRAPES: usize = 3000;
        let stats = Arc::new(Stats::new().unwrap());
        stats.set_certificate("CN=a.test", 1);
        let done = Arc::new(AtomicBool::new(false));
        let reloader = {
            let (stats, done) = (stats.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n: i64 = 0;
                while !done.load(Ordering::Relaxed) && n < 100_000_000 {
                    let subject = if n % 2 == 0 { "CN=b.test" } else { "CN=a.test" };
                    stats.set_certificate(subject, n);
                    n += 1;
                }
            })
        };
        let mut seen = Vec::new();
        for _ in 0..SCRAPES {
            let families = stats.registry().gather();
            let series = families
                .iter()
                .find(|f| f.name() == "dotgate_certificate_not_after_timestamp_seconds")
                .map_or(0, |f| f.get_metric().len());
            if series != 1 {
                seen.push(series);
            }
        }
        done.store(true, Ordering::Relaxed);
        reloader.join().unwrap();
        assert!(
            seen.is_empty(),
            "{} of {SCRAPES} scrapes saw other than one series: {:?}",
            seen.len(),
            &seen[..seen.len().min(10)]
        );
    }

    #[test]
    fn the_shutdown_totals_add_up_synthesized_replies_by_rcode() {
        let stats = Stats::new().unwrap();
        stats.count_synthesized(Synthesized::FormErrEdns);
        stats.count_synthesized(Synthesized::FormErrUnparsable);
        stats.count_synthesized(Synthesized::ServFailTimeout);
        stats.count_synthesized(Synthesized::BadVersEdns);
        assert_eq!(stats.synthesized_with("formerr"), 2);
        assert_eq!(stats.synthesized_with("servfail"), 1);
    }
}
