//! What dotgate counts ([`stats`]: counters, gauges, histograms and their
//! Prometheus exposition) and the HTTP endpoint serving them with the health
//! checks ([`http`]: `/metrics`, `/healthz`, `/readyz`).

pub mod http;
pub mod stats;
