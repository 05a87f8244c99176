//! The operator's HTTP endpoint (`--metrics-listen`): `GET /metrics`
//! (Prometheus text format), `GET /healthz` (the process is alive) and
//! `GET /readyz` (it can serve: see [`Stats::readiness`]). Anything else is
//! 404.
//!
//! HTTP/1.1 only, on its own listener and its own tasks, so that a slow
//! scraper never touches the DoT path. Every connection has a header-read
//! timeout and their number is capped, so an open metrics port cannot be
//! used to pile up tasks. It stops accepting with the server's shutdown
//! token, and lets a request being answered finish. That bounded accept
//! loop, [`accept_bounded`], also runs the ACME challenge responders.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::exposition;
use crate::metrics::stats::Stats;

/// Scrapers and probes are few; more connections than this at once are
/// closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// A client that has not sent its request headers by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves.
pub struct Endpoint {
    /// Its registry is what `/metrics` serves; its readiness, `/readyz`.
    pub stats: Arc<Stats>,
    /// How recent an upstream answer must be for `/readyz` to say ready.
    pub ready_window: Duration,
}

/// Serves `endpoint` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(listen = %local, "serving /metrics, /healthz and /readyz");
    }
    let endpoint = Arc::new(endpoint);
    let stop = shutdown.clone();
    accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "metrics",
        shutdown,
        move |tcp, peer| {
            let endpoint = endpoint.clone();
            let shutdown = stop.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(respond(&endpoint, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "metrics connection ended");
                }
            }
        },
    )
    .await;
}

/// The accept loop of a small side listener (this endpoint, the ACME
/// challenge responders): until `shutdown`, each connection runs `handle`
/// in a task of its own, at most `max` at once; more are closed at accept,
/// so an open port cannot pile up tasks. A failed accept (out of
/// descriptors and the like) pauses 50 ms rather than spin. `what` names
/// the listener in debug logs.
pub async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    max: usize,
    what: &'static str,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many {what} connections: closed");
            continue;
        };
        let connection = handle(tcp, peer);
        tokio::spawn(async move {
            let _slot = slot;
            connection.await;
        });
    }
}

/// Routes one request.
fn respond(endpoint: &Endpoint, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match path {
        "/metrics" => metrics(endpoint),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => match endpoint.stats.readiness(endpoint.ready_window) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
    }
}

fn metrics(endpoint: &Endpoint) -> Response<Full<Bytes>> {
    match exposition::encode(endpoint.stats.registry()) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the metrics");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n".into(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
