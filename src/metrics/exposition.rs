//! How Prometheus sees what [`Stats`](super::stats::Stats) counts: the
//! registry its metrics live in, and the text format `/metrics` serves.
//!
//! Each server owns one `prometheus::Registry` (no global registry), filled
//! by `Stats::new` through a `Registrar`. A scrape reads the atomics of the
//! typed metrics and builds the text then, so scrapes pay for the
//! allocations and queries never do.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Creates typed metrics and registers them in one registry.
pub(super) struct Registrar<'a> {
    registry: &'a Registry,
}

impl<'a> Registrar<'a> {
    pub(super) fn new(registry: &'a Registry) -> Self {
        Registrar { registry }
    }

    pub(super) fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        let counter = IntCounter::new(name, help)?;
        self.registry.register(Box::new(counter.clone()))?;
        Ok(counter)
    }

    pub(super) fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        let gauge = IntGauge::new(name, help)?;
        self.registry.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    pub(super) fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry
            .register(Box::new(InDeclaredOrder(family.clone())))?;
        Ok(family)
    }

    pub(super) fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        let family = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry
            .register(Box::new(InDeclaredOrder(family.clone())))?;
        Ok(family)
    }

    /// As [`Self::gauge_vec`], for a family whose series change in steps of
    /// more than one call (one child added, another removed): scrapes
    /// collect it only while holding `step`, which the writer holds for the
    /// whole step, so a scrape sees the family before or after a step,
    /// never halfway.
    pub(super) fn gauge_vec_stepped<T: Send + 'static>(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        step: Arc<Mutex<T>>,
    ) -> Result<IntGaugeVec, prometheus::Error> {
        let family = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(Stepped {
            family: InDeclaredOrder(family.clone()),
            step,
        }))?;
        Ok(family)
    }

    pub(super) fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        let histogram =
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
        self.registry.register(Box::new(histogram.clone()))?;
        Ok(histogram)
    }
}

/// A labelled family that shows each series' labels in the order they were
/// declared (`rcode` before `cause`, `upstream` before `transport`), as
/// dotgate always has. The prometheus crate sorts a child's labels by name;
/// Prometheus itself does not care, but people and scripts reading the
/// text do, and series are ordered by their first label's value.
struct InDeclaredOrder<C>(C);

impl<C: Collector> Collector for InDeclaredOrder<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        for family in &mut families {
            let Some(desc) = self
                .0
                .desc()
                .into_iter()
                .find(|d| d.fq_name == family.name())
            else {
                continue;
            };
            for metric in family.mut_metric() {
                metric.mut_label().sort_by_key(|pair| {
                    desc.variable_labels
                        .iter()
                        .position(|label| label == pair.name())
                });
            }
        }
        families
    }
}

/// A family collected under its writer's lock (see
/// [`Registrar::gauge_vec_stepped`]).
struct Stepped<C, T> {
    family: C,
    step: Arc<Mutex<T>>,
}

impl<C: Collector, T: Send + 'static> Collector for Stepped<C, T> {
    fn desc(&self) -> Vec<&Desc> {
        self.family.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A writer that panicked left the family as it was: still readable.
        let _step = self.step.lock().unwrap_or_else(PoisonError::into_inner);
        self.family.collect()
    }
}

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(&registry.gather())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::stats::{
        CloseReason, HandshakeFailure, Stats, Synthesized, TlsVersionLabel, Transport,
    };

    fn scrape(stats: &Stats) -> String {
        encode(stats.registry()).unwrap()
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
        let stats = Stats::new().unwrap();
        stats.count_query(Transport::Dot);
        stats.count_query(Transport::Dot);
        stats.count_query(Transport::Doh);
        stats.count_reply(0);
        stats.count_reply(16);
        stats.count_reply(9);
        stats.count_close(CloseReason::Idle);
        stats.count_synthesized(Synthesized::ServFailTimeout);
        stats.refused_plaintext.inc();
        stats.accept_errors.inc();
        stats.count_handshake(TlsVersionLabel::Tls13, true);
        stats.count_handshake_failure(HandshakeFailure::Timeout);
        let up = stats.upstream("127.0.0.1:53");
        up.udp.inc();
        stats.set_certificate("CN=dns.test", 1_900_000_000);
        let text = scrape(&stats);
        assert_eq!(
            value(&text, "dotgate_queries_total{transport=\"dot\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "dotgate_queries_total{transport=\"doh\"}"),
            1.0
        );
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

    /// Families with no series yet (no upstream, no certificate) are not
    /// shown at all, as before any upstream is registered.
    #[test]
    fn families_without_series_are_left_out() {
        let stats = Stats::new().unwrap();
        let text = scrape(&stats);
        assert!(!text.contains("dotgate_upstream_queries_total"), "{text}");
        assert!(!text.contains("dotgate_certificate_not_after"), "{text}");
        assert!(
            text.contains("# TYPE dotgate_queries_total counter"),
            "{text}"
        );
    }

    #[test]
    fn latency_buckets_are_cumulative_and_count_agrees() {
        let stats = Stats::new().unwrap();
        for elapsed in [
            Duration::from_micros(50),
            Duration::from_millis(3),
            Duration::from_secs(9),
        ] {
            stats.query_duration.observe(elapsed.as_secs_f64());
        }
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

    /// DoH answers (200) and refusals land on their own series, and no
    /// series exists before the first response.
    #[test]
    fn doh_responses_are_counted_by_status() {
        let stats = Stats::new().unwrap();
        assert!(!scrape(&stats).contains("dotgate_doh_responses_total{"));
        stats.count_doh_response(200);
        stats.count_doh_response(200);
        stats.count_doh_response(404);
        let text = scrape(&stats);
        assert_eq!(
            value(&text, "dotgate_doh_responses_total{status=\"200\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "dotgate_doh_responses_total{status=\"404\"}"),
            1.0
        );
    }

    #[test]
    fn gauges_follow_their_guards() {
        let stats = Stats::new().unwrap();
        let open = stats.open_connection(Transport::Doh);
        let inflight = stats.query_in_flight();
        let text = scrape(&stats);
        assert_eq!(
            value(&text, "dotgate_connections_open{transport=\"doh\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "dotgate_connections_open{transport=\"dot\"}"),
            0.0
        );
        assert_eq!(value(&text, "dotgate_queries_in_flight"), 1.0);
        drop(open);
        drop(inflight);
        let text = scrape(&stats);
        assert_eq!(
            value(&text, "dotgate_connections_open{transport=\"doh\"}"),
            0.0
        );
        assert_eq!(value(&text, "dotgate_queries_in_flight"), 0.0);
    }
}
