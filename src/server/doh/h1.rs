//! The HTTP/1.1 side of DoH: a request hyper has read turned into a
//! [`Head`] and a body for [`exchange::answer`], and its [`Reply`] into
//! hyper's response. The connection itself (hyper's HTTP/1.1 server, the
//! timers) is [`super::connection`]'s.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{HeaderMap, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use super::activity::Activity;
use super::exchange::{self, Head, Reply};
use super::request::{self, Method, Refusal, MAX_MESSAGE};
use crate::server::client::Client;
use crate::server::connection::Shared;

/// What every request of one connection shares.
pub struct Context {
    /// The client as the connection knows it: address, and the ID of its
    /// TLS server name, if any.
    pub client: Client,
    pub shared: Arc<Shared>,
    /// The connection's requests in progress, for its idle timer.
    pub activity: Arc<Activity>,
    /// Cancelled to close the connection gracefully (a rate-limited
    /// client with `--rate-limit-action close`, or a banned one).
    pub close: CancellationToken,
}

/// Answers one request; never fails (every refusal is a status).
pub async fn respond(req: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let _busy = ctx.activity.begin();
    let received = std::time::Instant::now();
    let shared = &*ctx.shared;
    let (parts, body) = req.into_parts();
    let forwarding = shared
        .forwarding
        .trusts(ctx.client.addr.ip())
        .then(|| shared.forwarding.header.name());
    let head = head(&parts, forwarding);
    let reply = match read(&head, body, shared.timeouts.read).await {
        Ok(body) => {
            // The body is whole now: the upstream's deadline counts from here.
            let whole = tokio::time::Instant::now().into_std();
            let answer = exchange::answer(&head, body, whole, &ctx.client, shared).await;
            if answer.close {
                ctx.close.cancel();
            }
            if matches!(answer.reply, Reply::Dns(_)) {
                // Until the response is handed to hyper, which writes it.
                shared
                    .stats
                    .query_duration
                    .observe(received.elapsed().as_secs_f64());
            }
            answer.reply
        }
        Err(refusal) => {
            tracing::debug!(client = %ctx.client, status = refusal.status(), error = %refusal, "DoH request refused");
            exchange::refuse(refusal, &shared.stats)
        }
    };
    response(reply)
}

/// What RFC 8484 looks at in `parts`; the forwarding header named
/// `forwarding` only when the peer is a trusted proxy.
fn head(parts: &hyper::http::request::Parts, forwarding: Option<&'static str>) -> Head {
    let headers = &parts.headers;
    let mut forwarded = HeaderMap::new();
    if let Some(name) = forwarding {
        for value in headers.get_all(name) {
            forwarded.append(HeaderName::from_static(name), value.clone());
        }
    }
    Head {
        method: Method::of(parts.method.as_str()),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
        dns_content_type: request::is_dns_message(
            headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        ),
        content_length: headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        forwarded,
    }
}

/// The body of a POST, read whole before the request is judged; the body
/// of any other request is read too and dropped, so that a refused
/// request's body is drained: answering while the body is still coming
/// ends the keep-alive on HTTP/1.1. A body announced larger than a message
/// is not read.
async fn read(
    head: &Head,
    body: Incoming,
    limit: std::time::Duration,
) -> Result<Option<Vec<u8>>, Refusal> {
    if head.announces_too_much() {
        return Err(Refusal::TooLarge);
    }
    let collected = tokio::time::timeout(limit, Limited::new(body, MAX_MESSAGE).collect())
        .await
        .map_err(|_| Refusal::Timeout)?;
    match collected {
        Ok(body) if head.method == Ok(Method::Post) => Ok(Some(body.to_bytes().to_vec())),
        Ok(_) => Ok(None),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        // The client broke the framing: nobody will read the status,
        // which says so all the same.
        Err(_) => Err(Refusal::BadMessage),
    }
}

/// hyper's response for `reply`.
fn response(reply: Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let fields = reply.headers();
    let mut response = Response::new(Full::new(Bytes::from(reply.into_body())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(fields.content_type));
    if let Some(seconds) = fields.max_age {
        if let Ok(value) = HeaderValue::from_str(&format!("max-age={seconds}")) {
            headers.insert(CACHE_CONTROL, value);
        }
    }
    if let Some(allow) = fields.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(after) = fields.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(after));
    }
    response
}
