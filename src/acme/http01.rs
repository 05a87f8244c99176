//! The HTTP-01 responder (RFC 8555 §8.3): on `--acme-http-listen`, answers
//! `GET /.well-known/acme-challenge/TOKEN` with the key authorization of a
//! token dotgate is waiting for, and 404 to everything else. It runs for
//! the life of the process, as renewals need it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::http::accept_bounded;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// Validation requests come from a few CA vantage points at a time; the
/// port is public, so the rest are turned away rather than queued.
const MAX_CONNECTIONS: usize = 64;
/// A request whose headers are not in by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The tokens being answered: token -> key authorization.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<Mutex<HashMap<String, String>>>);

impl Tokens {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.0).insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        lock(&self.0).remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        lock(&self.0).get(token).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays whole whatever a panicking holder did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `tokens` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, tokens: Tokens, shutdown: CancellationToken) {
    accept_bounded(
        listener,
        MAX_CONNECTIONS,
        "HTTP-01",
        shutdown,
        move |tcp, peer| {
            let tokens = tokens.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = respond(&tokens, &req);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service);
                if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    tracing::debug!(%peer, error = %e, "HTTP-01 connection ended");
                }
            }
        },
    )
    .await;
}

fn respond(tokens: &Tokens, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let answer = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .filter(|_| req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD)
        .and_then(|token| tokens.get(token));
    let (status, body) = match answer {
        Some(key_authorization) => {
            tracing::info!(path = %req.uri().path(), "HTTP-01: answered the ACME server's validation request");
            (StatusCode::OK, key_authorization)
        }
        None => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}
