//! One DoH request to one answer, whatever HTTP version carried it: the
//! client it is for (behind a trusted reverse proxy, the one its forwarding
//! header names, see [`super::forwarded`]), the RFC 8484 checks of
//! [`super::request`], the client-ID gate, then the one query path
//! ([`crate::server::respond::answer`]) that DoT uses too.
//!
//! Each HTTP version hands a request over as a [`Head`] and its whole body
//! (HTTP/2: [`super::h2`]; HTTP/1.1: [`super::h1`]) and writes the
//! [`Answer`] in its own framing: the versions differ only in how bytes
//! arrive and leave.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use hyper::HeaderMap;

use super::forwarded;
use super::request::{self, Method, Refusal, Route, DNS_MESSAGE, MAX_MESSAGE};
use crate::metrics::stats::{Stats, Transport};
use crate::proto::dns;
use crate::proto::edns::LegOptions;
use crate::server::client::Client;
use crate::server::client_ids::Judgement;
use crate::server::connection::Shared;
use crate::server::rate_limit::Decision;
use crate::server::respond;
use crate::upstream::Origin;

/// What RFC 8484 looks at in a request, taken from its head by the HTTP
/// version that read it.
#[derive(Debug)]
pub struct Head {
    /// GET or POST; any other method is refused (405).
    pub method: Result<Method, Refusal>,
    /// The request target: the path and its query string, if any.
    pub target: String,
    /// `content-type` is `application/dns-message`.
    pub dns_content_type: bool,
    /// `content-length`, when given and a number.
    pub content_length: Option<u64>,
    /// The forwarding headers (`Forwarded`, `X-Forwarded-For`), kept only
    /// when the connection's peer is a trusted proxy; empty otherwise.
    pub forwarded: HeaderMap,
}

impl Head {
    /// The path, without the query string.
    fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// The query string, if any.
    fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// Whether a POST's body is refused before it is read: announced
    /// larger than a message may be.
    pub fn announces_too_much(&self) -> bool {
        self.content_length
            .is_some_and(|len| len > MAX_MESSAGE as u64)
    }
}

/// What one request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the DNS reply.
    Dns(Vec<u8>),
    /// The refusal's status, with one line saying why.
    Refused(Refusal),
}

impl Reply {
    /// The response's status code.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Dns(_) => 200,
            Reply::Refused(refusal) => refusal.status(),
        }
    }

    /// The response's body.
    pub fn into_body(self) -> Vec<u8> {
        match self {
            Reply::Dns(reply) => reply,
            Reply::Refused(refusal) => format!("{refusal}\n").into_bytes(),
        }
    }

    /// The response's headers besides its status and length, in order
    /// (the caller writes `content-length` itself).
    pub fn headers(&self) -> ResponseHeaders {
        match self {
            Reply::Dns(reply) => ResponseHeaders {
                content_type: DNS_MESSAGE,
                // Cacheable for its smallest TTL when it is an answer
                // (RFC 8484 §5.1), not when it is an error.
                max_age: dns::freshness(reply),
                allow: None,
                retry_after: None,
            },
            Reply::Refused(refusal) => ResponseHeaders {
                content_type: "text/plain; charset=utf-8",
                max_age: None,
                allow: (*refusal == Refusal::MethodNotAllowed).then_some("GET, POST"),
                retry_after: (*refusal == Refusal::RateLimited).then_some("1"),
            },
        }
    }
}

/// The headers of a response, for each HTTP version to encode its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeaders {
    pub content_type: &'static str,
    /// `cache-control: max-age=` this many seconds.
    pub max_age: Option<u32>,
    pub allow: Option<&'static str>,
    pub retry_after: Option<&'static str>,
}

/// A request's reply, and whether the connection is to close gracefully
/// once the responses in progress are sent (a rate-limited client with
/// `--rate-limit-action close`, or a banned one).
#[derive(Debug)]
pub struct Answer {
    pub reply: Reply,
    pub close: bool,
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
    /// The client of a request with `headers` on `client`'s connection.
    /// Each request of a proxy's connection may be for another client; the
    /// connection's caps (per-address connections and handshakes) stay on
    /// the proxy's address, as they were taken at accept.
    fn of(headers: &HeaderMap, client: &'a Client, shared: &Shared) -> Self {
        let peer = client.addr;
        let judge_here = shared.forwarding.trusts(peer.ip());
        let named = forwarded::client(&shared.forwarding, peer.ip(), headers).unwrap_or_else(|e| {
            tracing::debug!(%client, error = %e, "forwarding header ignored");
            None
        });
        match named {
            Some(ip) => {
                let addr = SocketAddr::new(ip, 0);
                Requester {
                    addr,
                    origin: Cow::Owned(client.origin.for_forwarded(&shared.tell_upstream, addr)),
                    judge_here,
                }
            }
            None => Requester {
                addr: peer,
                origin: Cow::Borrowed(&client.origin),
                judge_here,
            },
        }
    }
}

/// Answers one request whose body (a POST's) has been read whole; never
/// fails (every refusal is a status). Counts the response's status.
/// `received` is when the request was whole, by the runtime's clock (see
/// [`respond::answer`]).
pub async fn answer(
    head: &Head,
    body: Option<Vec<u8>>,
    received: Instant,
    client: &Client,
    shared: &Shared,
) -> Answer {
    let who = Requester::of(&head.forwarded, client, shared);
    let mut close = false;
    let reply = match dns_reply(head, body, received, client, shared, &who, &mut close).await {
        Ok(reply) => Reply::Dns(reply),
        Err(refusal) => {
            tracing::debug!(client = %who.addr, peer = %client, status = refusal.status(), error = %refusal, "DoH request refused");
            Reply::Refused(refusal)
        }
    };
    shared.stats.count_doh_response(reply.status());
    Answer { reply, close }
}

/// The refusal an HTTP version makes on its own (a body too large or too
/// slow), counted as [`answer`] counts its own.
pub fn refuse(refusal: Refusal, stats: &Stats) -> Reply {
    stats.count_doh_response(refusal.status());
    Reply::Refused(refusal)
}

/// The DNS reply to a request, or why there is none.
async fn dns_reply(
    head: &Head,
    body: Option<Vec<u8>>,
    received: Instant,
    client: &Client,
    shared: &Shared,
    who: &Requester<'_>,
    close: &mut bool,
) -> Result<Vec<u8>, Refusal> {
    // First, as at accept: a client outside the list learns nothing more.
    if who.judge_here && !shared.allow.allows(who.addr.ip()) {
        shared.stats.refused_not_allowed.inc();
        return Err(Refusal::Forbidden);
    }
    let route = request::route(&shared.doh_path, head.path())?;
    let path_id = match route {
        Route::Plain => None,
        Route::WithId(id) => Some(id),
    };
    let id = match shared.client_ids.judge_request(path_id, client.id.as_ref()) {
        Judgement::Admit(id) => id,
        Judgement::Refuse => {
            shared.stats.refused_client_id.inc();
            return Err(Refusal::NotFound);
        }
    };
    let message = match head.method? {
        Method::Get => request::get_message(head.query())?,
        Method::Post => {
            if !head.dns_content_type {
                return Err(Refusal::UnsupportedMediaType);
            }
            if head.announces_too_much() {
                return Err(Refusal::TooLarge);
            }
            body.ok_or(Refusal::BadMessage)?
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
                *close = true;
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
        received,
        LegOptions::for_http,
    )
    .await)
}
