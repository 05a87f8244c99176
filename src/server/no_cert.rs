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

//!
//! One exception: with TLS-ALPN-01 answered on the DoH listeners (no
//! `--acme-tls-alpn-listen`), their connections get the ACME responder's
//! handshake, which shows the validation certificate to the ACME server
//! and fails every other client's handshake at its ClientHello.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::accept_errors::AcceptErrors;
use super::listener::{Listener, ListenerKind};
use crate::acme::alpn01;
use crate::metrics::stats::Stats;

/// Validation handshakes under way at once on the DoH listeners; more are
/// closed at once (an ACME server makes a few).
const MAX_ACME_HANDSHAKES: usize = 64;

/// Runs `until` (the wait for the first certificate) while refusing every
/// connection on `listeners`; returns what `until` returns, leaving the
/// listeners to be served. With `acme` (TLS-ALPN-01 on the DoH listeners),
/// DoH connections get its handshake instead.
pub async fn refuse_until<F: Future>(
    listeners: &[Listener],
    stats: &Stats,
    acme: Option<Arc<ServerConfig>>,
    until: F,
) -> F::Output {
    let acme = acme.map(|config| Acme {
        acceptor: TlsAcceptor::from(config),
        slots: Arc::new(Semaphore::new(MAX_ACME_HANDSHAKES)),
    });
    let refusing = join_all(listeners.iter().map(|l| {
        let answer = acme.as_ref().filter(|_| l.kind == ListenerKind::Doh);
        refuse(&l.socket, stats, answer)
    }));
    tokio::pin!(until);
    tokio::select! {
        out = &mut until => out,
        // Ends only when there is no listener to refuse on.
        _ = refusing => until.await,
    }
}

/// The TLS-ALPN-01 responder on the DoH listeners.
struct Acme {
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
}

/// Accepts and closes, for as long as it is polled; failed accepts pause as
/// in the real accept loop. With `acme`, a connection is handed to the
/// TLS-ALPN-01 responder in a task of its own (bounded in number and by
/// its handshake timeout).
async fn refuse(listener: &TcpListener, stats: &Stats, acme: Option<&Acme>) {
    let mut errors = AcceptErrors::new();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                errors.succeeded();
                if let Some(acme) = acme {
                    if let Ok(slot) = acme.slots.clone().try_acquire_owned() {
                        let acceptor = acme.acceptor.clone();
                        let refused = stats.refused_no_certificate.clone();
                        tokio::spawn(async move {
                            let place = " on the DoH listener, before the first certificate";
                            if !alpn01::answer(&acceptor, tcp, peer, place).await {
                                // A DoH client, whose handshake failed.
                                refused.inc();
                            }
                            drop(slot);
                        });
                        continue;
                    }
                }
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
