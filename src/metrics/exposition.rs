//! How Prometheus sees what [`Stats`] counts.
//!
//! Exposition is pull-only: [`StatsCollector`] reads the atomics when
//! `/metrics` is scraped and builds the metric families then, so scrapes
//! pay for the allocations and queries never do. It is registered in one
//! owned `prometheus::Registry` per server (no global registry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::stats::{lock, RcodeLabel, Stats, Synthesized};

/// One metric family as the collector builds it.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    metrics: Vec<proto::Metric>,
}

impl Family {
    fn new(
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        labels: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            labels,
            metrics: Vec::new(),
        }
    }

    fn counter(self, counter: &AtomicU64) -> Self {
        self.with(&[], Value::Counter(Stats::get(counter) as f64))
    }

    fn gauge(self, gauge: &AtomicI64) -> Self {
        self.with(&[], Value::Gauge(gauge.load(Ordering::Relaxed) as f64))
    }

    fn with(mut self, label_values: &[&str], value: Value) -> Self {
        let labels = self
            .labels
            .iter()
            .zip(label_values)
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        let mut metric = proto::Metric::from_label(labels);
        match value {
            Value::Counter(v) => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                metric.set_counter(c);
            }
            Value::Gauge(v) => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                metric.set_gauge(g);
            }
            Value::Histogram(h) => metric.set_histogram(h),
        }
        self.metrics.push(metric);
        self
    }

    fn into_proto(self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_string());
        family.set_help(self.help.to_string());
        family.set_field_type(self.kind);
        family.set_metric(self.metrics);
        family
    }
}

enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(proto::Histogram),
}

fn count_of(c: &AtomicU64) -> Value {
    Value::Counter(Stats::get(c) as f64)
}

/// Exposes a [`Stats`] to a `prometheus::Registry`, reading the atomics at
/// each scrape.
pub struct StatsCollector {
    stats: Arc<Stats>,
    descs: Vec<Desc>,
}

impl StatsCollector {
    pub fn new(stats: Arc<Stats>) -> Result<Self, prometheus::Error> {
        let descs = Self::families(&stats)
            .into_iter()
            .map(|f| {
                Desc::new(
                    f.name.to_string(),
                    f.help.to_string(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(StatsCollector { stats, descs })
    }

    /// A registry holding only these statistics: what `/metrics` serves.
    pub fn registry(stats: Arc<Stats>) -> Result<prometheus::Registry, prometheus::Error> {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(StatsCollector::new(stats)?))?;
        Ok(registry)
    }

    /// Every family, with its current values. The README's metric list
    /// follows this function.
    fn families(s: &Stats) -> Vec<Family> {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let mut families = vec![
            Family::new(
                "dotgate_connections_accepted_total",
                "TCP connections admitted past the connection caps.",
                COUNTER,
                &[],
            )
            .counter(&s.connections_accepted),
            Family::new(
                "dotgate_connections_open",
                "Connections open now, handshaking or serving.",
                GAUGE,
                &[],
            )
            .gauge(&s.connections_open),
            Family::new(
                "dotgate_connections_refused_total",
                "Connections closed before serving, by reason.",
                COUNTER,
                &["reason"],
            )
            .with(&["plaintext"], count_of(&s.refused_plaintext))
            .with(&["over_capacity"], count_of(&s.refused_over_capacity))
            .with(&["per_ip"], count_of(&s.refused_per_ip))
            .with(&["handshake_rate"], count_of(&s.refused_handshake_rate))
            .with(&["proxy_malformed"], count_of(&s.refused_proxy_malformed))
            .with(&["proxy_untrusted"], count_of(&s.refused_proxy_untrusted)),
            Family::new(
                "dotgate_accept_errors_total",
                "Failed accepts on a DoT listener (e.g. out of file descriptors), each followed by a pause.",
                COUNTER,
                &[],
            )
            .counter(&s.accept_errors),
            Family::new(
                "dotgate_connections_closed_total",
                "Served connections closed, by reason.",
                COUNTER,
                &["reason"],
            )
            .with(&["idle"], count_of(&s.closed_idle))
            .with(&["client"], count_of(&s.closed_client))
            .with(&["error"], count_of(&s.closed_error))
            .with(&["retired"], count_of(&s.closed_retired))
            .with(&["shutdown"], count_of(&s.closed_shutdown))
            .with(&["read_timeout"], count_of(&s.closed_read_timeout)),
            Family::new(
                "dotgate_message_budget_waits_total",
                "Reads of a large message that waited for room in --message-memory-mib.",
                COUNTER,
                &[],
            )
            .counter(&s.message_budget_waits),
            Family::new(
                "dotgate_tls_handshakes_total",
                "TLS handshakes by result and negotiated version.",
                COUNTER,
                &["result", "version"],
            )
            .with(&["ok", "1.2"], count_of(&s.handshakes_tls12))
            .with(&["ok", "1.3"], count_of(&s.handshakes_tls13))
            .with(&["failed", "none"], count_of(&s.handshake_failures)),
            Family::new(
                "dotgate_tls_handshake_failures_total",
                "Failed TLS handshakes by reason.",
                COUNTER,
                &["reason"],
            )
            .with(&["timeout"], count_of(&s.handshake_timeouts))
            .with(&["closed_early"], count_of(&s.handshake_closed_early))
            .with(&["error"], count_of(&s.handshake_errors)),
            Family::new(
                "dotgate_tls_resumed_handshakes_total",
                "TLS handshakes that resumed a session (ticket or session ID).",
                COUNTER,
                &[],
            )
            .counter(&s.handshakes_resumed),
            Family::new(
                "dotgate_queries_total",
                "DNS queries read from clients.",
                COUNTER,
                &[],
            )
            .counter(&s.queries),
            Family::new(
                "dotgate_queries_in_flight",
                "Queries read and not yet answered.",
                GAUGE,
                &[],
            )
            .gauge(&s.queries_in_flight),
        ];
        let mut replies = Family::new(
            "dotgate_replies_total",
            "Replies produced for clients, by RCODE.",
            COUNTER,
            &["rcode"],
        );
        for label in RcodeLabel::ALL {
            replies = replies.with(&[label.as_str()], count_of(&s.replies[label as usize]));
        }
        families.push(replies);
        let mut synthesized = Family::new(
            "dotgate_synthesized_replies_total",
            "Replies dotgate made itself instead of relaying the upstream, by RCODE and cause.",
            COUNTER,
            &["rcode", "cause"],
        );
        for cause in Synthesized::ALL {
            let (rcode, why) = cause.labels();
            synthesized = synthesized.with(&[rcode, why], count_of(&s.synthesized[cause as usize]));
        }
        families.push(synthesized);
        let mut upstream_queries = Family::new(
            "dotgate_upstream_queries_total",
            "Queries sent to each upstream, by transport.",
            COUNTER,
            &["upstream", "transport"],
        );
        for (name, counters) in lock(&s.upstreams).iter() {
            upstream_queries = upstream_queries
                .with(&[name, "udp"], count_of(&counters.udp))
                .with(&[name, "tcp"], count_of(&counters.tcp));
        }
        families.push(upstream_queries);
        let mut upstream_up = Family::new(
            "dotgate_upstream_up",
            "1 while the pool counts the upstream up (health checks), 0 while down.",
            GAUGE,
            &["upstream"],
        );
        for (name, counters) in lock(&s.upstreams).iter() {
            let up = counters.up.load(Ordering::Relaxed) as f64;
            upstream_up = upstream_up.with(&[name], Value::Gauge(up));
        }
        families.push(upstream_up);
        families.extend([
            Family::new(
                "dotgate_upstream_failovers_total",
                "Queries sent to a second upstream after the first failed or timed out.",
                COUNTER,
                &[],
            )
            .counter(&s.upstream_failovers),
            Family::new(
                "dotgate_upstream_all_down_total",
                "Queries sent while every upstream was marked down (panic mode: sent to them all the same).",
                COUNTER,
                &[],
            )
            .counter(&s.upstream_all_down),
            Family::new(
                "dotgate_upstream_connections_lost_total",
                "Pooled tcp:// or tls:// upstream connections that died with queries in flight.",
                COUNTER,
                &[],
            )
            .counter(&s.upstream_connections_lost),
            Family::new(
                "dotgate_upstream_timeouts_total",
                "Upstream exchanges that got no answer within the upstream timeout.",
                COUNTER,
                &[],
            )
            .counter(&s.upstream_timeouts),
            Family::new(
                "dotgate_upstream_tc_fallbacks_total",
                "Truncated UDP answers retried over TCP.",
                COUNTER,
                &[],
            )
            .counter(&s.tc_fallbacks),
            Family::new(
                "dotgate_upstream_udp_resends_total",
                "UDP queries sent once more after no reply within the resend delay.",
                COUNTER,
                &[],
            )
            .counter(&s.upstream_udp_resends),
            Family::new(
                "dotgate_upstream_mismatched_replies_total",
                "Upstream messages dropped: unknown ID, other question, or too short.",
                COUNTER,
                &[],
            )
            .counter(&s.mismatched_replies),
            Family::new(
                "dotgate_upstream_rtt_seconds",
                "Upstream round trip, from sending a query to its matching answer.",
                HISTOGRAM,
                &[],
            )
            .with(&[], Value::Histogram(s.upstream_rtt.to_proto())),
            Family::new(
                "dotgate_query_duration_seconds",
                "From a query read to its reply written to the client.",
                HISTOGRAM,
                &[],
            )
            .with(&[], Value::Histogram(s.query_duration.to_proto())),
        ]);
        let mut certificate = Family::new(
            "dotgate_certificate_not_after_timestamp_seconds",
            "End of validity of the served certificate, in UNIX seconds.",
            GAUGE,
            &["subject"],
        );
        if let Some((subject, not_after)) = lock(&s.certificate).as_ref() {
            certificate = certificate.with(&[subject], Value::Gauge(*not_after as f64));
        }
        families.push(certificate);
        families
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Self::families(&self.stats)
            .into_iter()
            .filter(|f| !f.metrics.is_empty())
            .map(Family::into_proto)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::stats::{CloseReason, HandshakeFailure, TlsVersionLabel};

    fn scrape(stats: &Arc<Stats>) -> String {
        let registry = StatsCollector::registry(stats.clone()).unwrap();
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_reach_the_exposition_with_their_labels() {
        let stats = Arc::new(Stats::default());
        stats.count(&stats.queries);
        stats.count(&stats.queries);
        stats.count_reply(0);
        stats.count_reply(16);
        stats.count_reply(9);
        stats.count_close(CloseReason::Idle);
        stats.count_synthesized(Synthesized::ServFailTimeout);
        stats.count(&stats.refused_plaintext);
        stats.count(&stats.accept_errors);
        stats.count_handshake(TlsVersionLabel::Tls13, true);
        stats.count_handshake_failure(HandshakeFailure::Timeout);
        let up = stats.upstream("127.0.0.1:53");
        stats.count(&up.udp);
        stats.set_certificate("CN=dns.test", 1_900_000_000);
        let text = scrape(&stats);
        assert_eq!(value(&text, "dotgate_queries_total"), 2.0);
        assert_eq!(
            value(&text, "dotgate_replies_total{rcode=\"noerror\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "dotgate_replies_total{rcode=\"badvers\"}"),
            1.0
        );
        assert_eq!(value(&text, "dotgate_replies_total{rcode=\"other\"}"), 1.0);
        assert_eq!(
            value(&text, "dotgate_replies_total{rcode=\"nxdomain\"}"),
            0.0
        );
        assert_eq!(
            value(&text, "dotgate_connections_closed_total{reason=\"idle\"}"),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "dotgate_synthesized_replies_total{rcode=\"servfail\",cause=\"upstream_timeout\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "dotgate_connections_refused_total{reason=\"plaintext\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "dotgate_tls_handshakes_total{result=\"ok\",version=\"1.3\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "dotgate_tls_resumed_handshakes_total"), 1.0);
        assert_eq!(value(&text, "dotgate_accept_errors_total"), 1.0);
        assert_eq!(
            value(
                &text,
                "dotgate_tls_handshake_failures_total{reason=\"timeout\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "dotgate_upstream_queries_total{upstream=\"127.0.0.1:53\",transport=\"udp\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "dotgate_certificate_not_after_timestamp_seconds{subject=\"CN=dns.test\"}"
            ),
            1_900_000_000.0
        );
    }

    #[test]
    fn latency_buckets_are_cumulative_and_count_agrees() {
        let stats = Arc::new(Stats::default());
        stats.query_duration.observe(Duration::from_micros(50));
        stats.query_duration.observe(Duration::from_millis(3));
        stats.query_duration.observe(Duration::from_secs(9));
        let text = scrape(&stats);
        let bucket = |le: &str| {
            value(
                &text,
                &format!("dotgate_query_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0001"), 1.0);
        assert_eq!(bucket("0.0025"), 1.0);
        assert_eq!(bucket("0.005"), 2.0);
        assert_eq!(bucket("5"), 2.0);
        assert_eq!(bucket("+Inf"), 3.0);
        assert_eq!(value(&text, "dotgate_query_duration_seconds_count"), 3.0);
        let sum = value(&text, "dotgate_query_duration_seconds_sum");
        assert!((sum - 9.00305).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn gauges_follow_their_guards() {
        let stats = Arc::new(Stats::default());
        let open = stats.open_connection();
        let inflight = stats.query_in_flight();
        let text = scrape(&stats);
        assert_eq!(value(&text, "dotgate_connections_open"), 1.0);
        assert_eq!(value(&text, "dotgate_queries_in_flight"), 1.0);
        drop(open);
        drop(inflight);
        let text = scrape(&stats);
        assert_eq!(value(&text, "dotgate_connections_open"), 0.0);
        assert_eq!(value(&text, "dotgate_queries_in_flight"), 0.0);
    }
}
