//! DoT before there is a certificate to serve (`--acme` with nothing stored
//! yet, while the first order runs, which may take minutes or keep failing).
//!
//! The listeners are bound before that wait, so without a loop of our own
//! the kernel would complete clients' TCP handshakes into the backlog,
//! where nothing reads them and no timeout runs: a client would wait for
//! ever. Here each connection is accepted and closed at once instead,
//! counted as refused (`no_certificate`); `/readyz` says why
//! ("no certificate loaded yet"), and the real accept loops take over the
//! listeners the moment the certificate is there.

use std::future::Future;

use futures_util::future::join_all;
use tokio::net::TcpListener;

use super::accept::{AcceptErrors, Listener};
use crate::metrics::stats::Stats;

/// Runs `until` (the wait for the first certificate) while refusing every
/// connection on `listeners`; returns what `until` returns, leaving the
/// listeners to be served.
pub async fn refuse_until<F: Future>(listeners: &[Listener], stats: &Stats, until: F) -> F::Output {
    let refusing = join_all(listeners.iter().map(|l| refuse(&l.socket, stats)));
    tokio::pin!(until);
    tokio::select! {
        out = &mut until => out,
        // Ends only when there is no listener to refuse on.
        _ = refusing => until.await,
    }
}

/// Accepts and closes, for as long as it is polled; failed accepts pause as
/// in the real accept loop.
async fn refuse(listener: &TcpListener, stats: &Stats) {
    let mut errors = AcceptErrors::new();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                errors.succeeded();
                stats.refused_no_certificate.inc();
                tracing::debug!(%peer, "no certificate yet: closed");
                drop(tcp);
            }
            Err(e) => {
                let pause = errors.failed(&e, stats);
                tokio::time::sleep(pause).await;
            }
        }
    }
}
