//! What dotgate counts ([`stats`]: counters, gauges, histograms), how
//! Prometheus sees it ([`exposition`]) and the HTTP endpoint serving it with
//! the health checks ([`http`]: `/metrics`, `/healthz`, `/readyz`).

pub mod exposition;
pub mod http;
pub mod stats;
