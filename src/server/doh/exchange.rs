//! One DoH request to one response: the client it is for (behind a
//! trusted reverse proxy, the one its forwarding header names, see
//! [`super::forwarded`]), the RFC 8484 checks of [`super::request`], the
//! client-ID gate, then the one query path
//! ([`crate::server::respond::answer`]) that DoT uses too, and the HTTP
//! response around its reply.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};

use super::activity::Activity;
use super::forwarded;
use super::request::{self, Method, Refusal, Route, DNS_MESSAGE, MAX_MESSAGE};
use crate::metrics::stats::Transport;
use crate::proto::dns;
use crate::proto::edns::LegOptions;
use crate::server::client::Client;
use crate::server::client_ids::Judgement;
use crate::server::connection::Shared;
use crate::server::rate_limit::Decision;
use crate::server::respond;
use crate::upstream::Origin;
use tokio_util::sync::CancellationToken;

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

/// Who one request is for.
struct Requester<'a> {
    /// The client's address: the connection's, or the one a trusted
    /// proxy's forwarding header names (port 0: headers rarely carry one).
    addr: SocketAddr,
    /// What the upstream is told about it.
    origin: Cow<'a, Origin>,
    /// The connection's peer is a trusted proxy: `--allow-from` was not
    /// judged at accept, and is judged here on `addr`.
    judge_here: bool,
}

impl<'a> Requester<'a> {
    /// The client of `req`. Each request of a proxy's connection may be
    /// for another client; the connection's caps (per-address connections
    /// and handshakes) stay on the proxy's address, as they were taken at
    /// accept.
    fn of<B>(req: &Request<B>, ctx: &'a Context) -> Self {
        let shared = &*ctx.shared;
        let peer = ctx.client.addr;
        let judge_here = shared.forwarding.trusts(peer.ip());
        let named =
            forwarded::client(&shared.forwarding, peer.ip(), req.headers()).unwrap_or_else(|e| {
                tracing::debug!(client = %ctx.client, error = %e, "forwarding header ignored");
                None
            });
        match named {
            Some(ip) => {
                let addr = SocketAddr::new(ip, 0);
                Requester {
                    addr,
                    origin: Cow::Owned(
                        ctx.client.origin.for_forwarded(&shared.tell_upstream, addr),
                    ),
                    judge_here,
                }
            }
            None => Requester {
                addr: peer,
                origin: Cow::Borrowed(&ctx.client.origin),
                judge_here,
            },
        }
    }
}

/// Answers one request; never fails (every refusal is a status).
pub async fn respond(req: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let _busy = ctx.activity.begin();
    let who = Requester::of(&req, ctx);
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let response = match dns_reply(&parts, &mut body, ctx, &who).await {
        Ok(reply) => dns_response(reply),
        Err(refusal) => {
            tracing::debug!(client = %who.addr, peer = %ctx.client, status = refusal.status(), error = %refusal, "DoH request refused");
            if let Some(unread) = body.filter(|_| refusal != Refusal::TooLarge) {
                drain(unread, ctx.shared.timeouts.read).await;
            }
            refusal_response(refusal)
        }
    };
    ctx.shared
        .stats
        .count_doh_response(response.status().as_u16());
    response
}

/// The DNS reply to a request, or why there is none. A POST's body is
/// taken from `body` when it is read; a refusal made before leaves it there.
async fn dns_reply(
    req: &Parts,
    body: &mut Option<Incoming>,
    ctx: &Context,
    who: &Requester<'_>,
) -> Result<Vec<u8>, Refusal> {
    let shared = &*ctx.shared;
    // First, as at accept: a client outside the list learns nothing more.
    if who.judge_here && !shared.allow.allows(who.addr.ip()) {
        shared.stats.refused_not_allowed.inc();
        return Err(Refusal::Forbidden);
    }
    let route = request::route(&shared.doh_path, req.uri.path())?;
    let path_id = match route {
        Route::Plain => None,
        Route::WithId(id) => Some(id),
    };
    let id = match shared
        .client_ids
        .judge_request(path_id, ctx.client.id.as_ref())
    {
        Judgement::Admit(id) => id,
        Judgement::Refuse => {
            shared.stats.refused_client_id.inc();
            return Err(Refusal::NotFound);
        }
    };
    let message = match Method::of(req.method.as_str())? {
        Method::Get => request::get_message(req.uri.query())?,
        Method::Post => {
            let headers = &req.headers;
            if !request::is_dns_message(headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes)) {
                return Err(Refusal::UnsupportedMediaType);
            }
            let announced = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|len| len > MAX_MESSAGE as u64) {
                return Err(Refusal::TooLarge);
            }
            match body.take() {
                Some(body) => read_body(body, shared.timeouts.read).await?,
                None => return Err(Refusal::BadMessage),
            }
        }
    };
    let info = request::check_message(&message)?;
    if let Some(limits) = &shared.rate_limit {
        // The client a trusted proxy names, or the connection's.
        let addr = who.addr.ip();
        let now = std::time::Instant::now();
        match limits.judge(addr, id.as_deref(), Transport::Doh, now) {
            Decision::Serve => {}
            // A 200 carrying REFUSED, as DoT's reply would be.
            Decision::Refuse => {
                return Ok(respond::refused(&shared.stats, Transport::Doh, &message))
            }
            // An HTTP request must get a response: 429 stands for no reply.
            Decision::Drop => {
                shared.stats.count_query(Transport::Doh);
                return Err(Refusal::RateLimited);
            }
            // 429, then GOAWAY (HTTP/2) or the end of keep-alive (HTTP/1.1)
            // once the responses in progress are sent.
            Decision::Close => {
                shared.stats.count_query(Transport::Doh);
                ctx.close.cancel();
                return Err(Refusal::RateLimited);
            }
        }
    }
    if let Some(id) = id.as_deref().filter(|_| shared.client_ids.is_private()) {
        shared.stats.client_queries(id).inc();
    }
    let _in_flight = shared.stats.query_in_flight();
    Ok(respond::answer_parsed(
        &shared.upstream,
        &who.origin,
        &shared.stats,
        Transport::Doh,
        message,
        info,
        LegOptions::for_http,
    )
    .await)
}

/// A POST body of at most [`MAX_MESSAGE`] bytes, within the read timeout
/// (a body announced and never sent must not hold its stream forever).
async fn read_body(body: Incoming, limit: std::time::Duration) -> Result<Vec<u8>, Refusal> {
    let collected = tokio::time::timeout(limit, Limited::new(body, MAX_MESSAGE).collect())
        .await
        .map_err(|_| Refusal::Timeout)?;
    match collected {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        // The client reset its stream or broke the framing: nobody will
        // read the status, which says so all the same.
        Err(_) => Err(Refusal::BadMessage),
    }
}

/// Reads and drops what is left of the body of a refused request (at most
/// [`MAX_MESSAGE`] bytes, within the read timeout) before the refusal is
/// sent. Answering while the body is still coming is allowed (RFC 9113
/// section 8.1: the server then resets the stream with NO_ERROR), but curl
/// 7.88 (Debian 12's) takes that reset for an error and shows "Stream error
/// in the HTTP/2 framing layer" instead of the status; on HTTP/1.1, an
/// unread body ends the keep-alive. A body that is too large, or too slow,
/// is left as it is.
async fn drain(body: Incoming, limit: std::time::Duration) {
    let _ = read_body(body, limit).await;
}

/// 200 with the reply; cacheable for its smallest TTL when it is an
/// answer (RFC 8484 §5.1), not when it is an error.
fn dns_response(reply: Vec<u8>) -> Response<Full<Bytes>> {
    let freshness = dns::freshness(&reply);
    let mut response = Response::new(Full::new(Bytes::from(reply)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    if let Some(seconds) = freshness {
        if let Ok(value) = HeaderValue::from_str(&format!("max-age={seconds}")) {
            headers.insert(CACHE_CONTROL, value);
        }
    }
    response
}

/// The refusal's status, with one line saying why in plain text.
fn refusal_response(refusal: Refusal) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{refusal}\n"))));
    *response.status_mut() =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if refusal == Refusal::MethodNotAllowed {
        headers.insert(ALLOW, HeaderValue::from_static("GET, POST"));
    }
    if refusal == Refusal::RateLimited {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
