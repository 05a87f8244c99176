//! Built-in ACME (RFC 8555): dotgate gets its certificate from Let's
//! Encrypt (or any ACME server) and renews it, so that a self-hoster needs
//! no certbot, deploy hook or reload.
//!
//! The ACME code writes the certificate and key into `--acme-dir`, and the
//! configuration serves those two files like `--cert`/`--key`: the existing
//! reloader (`tls/reload.rs`) swaps a renewed certificate in for new
//! handshakes while open connections keep theirs, and the not-after gauge
//! and `/readyz` cover it without a line of their own.
//!
//! Parts: [`store`] (the directory; the flags are `config/acme.rs`),
//! [`client`] (HTTPS to the ACME server), [`challenge`] with [`http01`],
//! [`alpn01`] and [`dns01`] (the responders), [`order`] (one order) and
//! [`renew`] (when to order, retries).

pub mod alpn01;
pub mod challenge;
pub mod client;
pub mod dns01;
pub mod http01;
pub mod order;
pub mod renew;
pub mod store;

use prometheus::{IntCounterVec, Opts};
use tokio_util::sync::CancellationToken;

pub use crate::config::acme::AcmeSettings;

use crate::metrics::stats::Stats;
use challenge::{ChallengeError, Responder};
use renew::{when, Held, Renewer};
use store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("cannot register the ACME metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `--check-config`: what would stop ACME from working, short of asking the
/// ACME server (the names and flags are checked by [`AcmeSettings`]).
pub fn check(settings: &AcmeSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = store::check_writable(&settings.dir) {
        problems.push(e.to_string());
    }
    if let Err(e) = client::HttpsClient::new(settings.ca.as_deref()) {
        problems.push(e.to_string());
    }
    if let crate::config::acme::Challenge::Dns01 { server, tsig_key } = &settings.challenge {
        if let Err(e) = dns01::Updater::new(*server, tsig_key) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Before TLS is set up: makes sure `--acme-dir` holds a certificate to
/// serve, and starts the renewal task (which ends with `shutdown`).
///
/// With a stored certificate that covers the names and has not expired,
/// returns at once. Without one, orders one first, retrying until it comes
/// or `shutdown` (then `Ok(false)`: nothing to serve). The challenge
/// responder is started here and runs for the process's life; TLS-ALPN-01
/// on the DoH listeners presents its certificates through `on_doh`.
pub async fn prepare(
    settings: &AcmeSettings,
    stats: &Stats,
    shutdown: &CancellationToken,
    on_doh: &alpn01::Certs,
) -> Result<bool, AcmeError> {
    let store = Store::open(&settings.dir)?;
    let orders = IntCounterVec::new(
        Opts::new(
            "dotgate_acme_orders_total",
            "Certificate orders to the ACME server, by result (success, failure).",
        ),
        &["result"],
    )?;
    stats.registry().register(Box::new(orders.clone()))?;
    // The trust is checked now, so that a bad --acme-ca stops start-up.
    client::HttpsClient::new(settings.ca.as_deref())?;
    let responder = Responder::start(settings, shutdown, on_doh).await?;
    let mut renewer = Renewer {
        settings: settings.clone(),
        store: store.clone(),
        responder,
        ca_trust: settings.ca.clone(),
        account: None,
        orders_ok: orders.with_label_values(&["success"]),
        orders_failed: orders.with_label_values(&["failure"]),
    };
    let held = match Held::stored(&store, settings) {
        Some(held) => {
            tracing::info!(
                names = %settings.names.join(","),
                not_after = %when(held.not_after),
                dir = %settings.dir.display(),
                "ACME: serving the stored certificate"
            );
            held
        }
        None => {
            tracing::info!(
                names = %settings.names.join(","),
                directory = %settings.directory,
                dir = %settings.dir.display(),
                "ACME: no usable certificate stored: getting one before serving DNS over TLS; {}",
                renewer.responder.describe()
            );
            match renewer.obtain(None, shutdown).await {
                Some(held) => held,
                None => return Ok(false),
            }
        }
    };
    tokio::spawn(renewer.run(held, shutdown.clone()));
    Ok(true)
}
