//! `dotgate check https://HOST[:PORT]/PATH`: a DoH server (RFC 8484) checked
//! the way browsers, Windows 11 and Apple's systems reach one: TLS with ALPN
//! `h2` (HTTP/1.1 only is a WARN), the certificate chain as for DoT, then on
//! one HTTP connection a POST and a GET of a query (200,
//! `application/dns-message`, a DNS reply to the question), the reply IDs
//! (the POST's own, 0 for the GET), `cache-control` on answers, and the 400
//! of a GET without its `dns` parameter.
//!
//! The network steps and the chain judgement are shared with the DoT
//! checks ([`super::probes`], [`super::cert`]); the verdicts here are pure
//! functions of what came back, tested on hand-made replies.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use rustls::ClientConnection;
use tokio::time::Instant;

use super::probes::{self, Budget, ConnectError};
use super::report::{self, Check, Clients, Report, Target};
use super::{Options, BOTH, FULL_BUDGET, QUICK_BUDGET};
use crate::proto::dns;
use crate::tools::doh::{self, DohClient, DohUrl, HttpReply, ALPN_H2, ALPN_HTTP1, DNS_MESSAGE};
use crate::tools::query::{self, ClientError, Trust};

/// Every DoH check concerns the same clients.
const DOH: Clients = Clients::DOH;

/// What one request got: the response and how long it took, or why none
/// came.
type Asked = Result<(HttpReply, Duration), String>;

/// Runs every DoH check; an error is the command line's or this machine's
/// (an unreadable CA file), as for DoT.
pub async fn run(opts: &Options, path: &str) -> Result<Report, ClientError> {
    let started = Instant::now();
    let budget = Budget::new(if opts.quick {
        QUICK_BUDGET
    } else {
        FULL_BUDGET
    });
    let (name, roots, trust_label) = super::trust_of(opts)?;
    let roots = Arc::new(roots);
    let url = DohUrl {
        host: opts.host.clone(),
        port: opts.port,
        path: path.to_string(),
    };
    let mut target = Target {
        host: opts.host.clone(),
        port: opts.port,
        tls_name: opts.tls_name.clone(),
        address: None,
        quick: opts.quick,
        doh_path: Some(path.to_string()),
    };
    let mut checks = Vec::new();
    let finish = |target: Target, mut checks: Vec<Check>, reason: &str| {
        super::skip_rest_of(&mut checks, report::DOH_ORDER, reason);
        for check in &mut checks {
            // The DoT client matrix does not apply: every DoH client
            // verifies the certificate and takes both methods.
            if check.clients != Clients::NONE {
                check.clients = DOH;
            }
        }
        Report::new(target, checks, started.elapsed())
    };

    let (check, addrs) = super::resolve_step(opts, &budget).await;
    checks.push(match opts.host.parse::<std::net::IpAddr>() {
        // The DoT wording speaks of Android's setting, which is not DoH's.
        Ok(ip) if opts.address.is_none() => Check::pass(
            "resolve",
            DOH,
            format!("{ip} is an address: nothing to resolve"),
        ),
        _ => check,
    });
    if addrs.is_empty() {
        return Ok(finish(target, checks, "not run: no address to connect to"));
    }
    let (check, addr) = super::reachable_step(&addrs, &budget).await;
    checks.push(check);
    let Some(addr) = addr else {
        return Ok(finish(target, checks, "not run: the port is not reachable"));
    };
    target.address = Some(addr);

    // Any certificate is accepted here; the chain is judged below.
    let config = doh::for_https(query::tls_config(&Trust::Insecure, BOTH)?);
    let (stream, handshake_time) = match probes::connect_tls(addr, &name, config, &budget).await {
        Ok(connected) => connected,
        Err(e) => {
            checks.push(tls_failed(&e));
            return Ok(finish(target, checks, "not run: no TLS handshake"));
        }
    };
    let tls = stream.get_ref().1;
    checks.push(tls_check(tls, handshake_time));
    checks.push(alpn_check(tls.alpn_protocol()));
    let chain = tls
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let name_text = name.to_str();
    checks.extend(super::cert::chain_checks(&super::cert::ChainInput {
        chain: &chain,
        roots: &roots,
        trust_label: &trust_label,
        name: &name,
        name_text: &name_text,
        now,
    }));

    let Some(limit) = budget.limit(probes::REPLY_TIMEOUT) else {
        return Ok(finish(target, checks, "not run: out of time"));
    };
    let client = match tokio::time::timeout(limit, DohClient::start(stream, &url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            checks.push(no_http("post", e.to_string()));
            return Ok(finish(target, checks, "not run: no HTTP connection"));
        }
        Err(_) => {
            checks.push(no_http(
                "post",
                "the HTTP handshake did not complete".into(),
            ));
            return Ok(finish(target, checks, "not run: no HTTP connection"));
        }
    };

    let run = probes::random_label();
    let post_query = probes::query(
        rand::random_range(1..=u16::MAX),
        &format!("post-{run}.dotgate-check.example."),
        RecordType::A,
        None,
    );
    // ID 0, as RFC 8484 §4.1 advises for GET (cache-friendly).
    let get_query = probes::query(
        0,
        &format!("get-{run}.dotgate-check.example."),
        RecordType::A,
        None,
    );
    let post = ask(&budget, client.post(&post_query)).await;
    checks.push(exchange_verdict("post", &post, &post_query));
    let get = ask(&budget, client.get(&get_query)).await;
    checks.push(exchange_verdict("get", &get, &get_query));
    let post_reply = post.as_ref().ok().map(|(r, _)| r);
    let get_reply = get.as_ref().ok().map(|(r, _)| r);
    checks.push(id_verdict(
        post_reply.map(|r| (r, dns::id(&post_query))),
        get_reply.map(|r| (r, 0)),
    ));
    checks.push(cache_control_verdict(&[
        ("POST", post_reply),
        ("GET", get_reply),
    ]));
    let bad = ask(&budget, client.send("GET", &url.path, None, Vec::new())).await;
    checks.push(bad_request_verdict(&bad));
    Ok(finish(target, checks, "not run: out of time"))
}

/// One request within the reply timeout and the budget.
async fn ask(
    budget: &Budget,
    request: impl std::future::Future<Output = Result<HttpReply, doh::DohError>>,
) -> Asked {
    let limit = budget
        .limit(probes::REPLY_TIMEOUT)
        .ok_or_else(|| "out of time".to_string())?;
    let started = Instant::now();
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(reply)) => Ok((reply, started.elapsed())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no response within {:.1} s", limit.as_secs_f32())),
    }
}

fn tls_failed(e: &ConnectError) -> Check {
    let fix = match e {
        ConnectError::TlsTimeout(_) => "check that this port serves HTTPS and not another service",
        ConnectError::OutOfTime => "run again with more time (without --quick)",
        _ => "check the server's TLS configuration (certificate and key loaded, TLS 1.2 and 1.3 enabled) and its logs",
    };
    Check::fail("tls", DOH, format!("no TLS: {e}"), fix)
}

fn tls_check(tls: &ClientConnection, handshake_time: Duration) -> Check {
    let certs = tls.peer_certificates().map_or(0, <[_]>::len);
    Check::pass(
        "tls",
        DOH,
        format!(
            "{} ({}), {certs} certificate{} sent, handshake in {} ms",
            super::tls_version_name(tls),
            super::tls_suite_name(tls),
            if certs == 1 { "" } else { "s" },
            handshake_time.as_millis()
        ),
    )
}

/// HTTP/2 is what browsers use for DoH and RFC 8484 §5.2 recommends;
/// HTTP/1.1 works, one query at a time per connection.
fn alpn_check(chosen: Option<&[u8]>) -> Check {
    const ID: &str = "alpn";
    let fix = "offer ALPN h2 (HTTP/2, the minimum RECOMMENDED version for DoH, RFC 8484 §5.2)";
    match chosen {
        Some(ALPN_H2) => Check::pass(
            ID,
            DOH,
            "ALPN h2: HTTP/2, queries side by side on one connection (RFC 8484 §5.2)",
        ),
        Some(ALPN_HTTP1) => Check::warn(
            ID,
            DOH,
            "ALPN http/1.1 was chosen over h2: HTTP/1.1 carries one query at a time per connection, so a slow answer holds up the rest",
            fix,
        ),
        Some(other) => Check::warn(
            ID,
            DOH,
            format!(
                "ALPN {} was chosen, neither h2 nor http/1.1",
                String::from_utf8_lossy(other)
            ),
            fix,
        ),
        None => Check::warn(
            ID,
            DOH,
            "no ALPN was chosen (h2 and http/1.1 offered): HTTP/1.1 assumed, and clients that insist on HTTP/2 fail",
            fix,
        ),
    }
}

/// The HTTP connection could not be set up: the first request's check says
/// so, the rest are skipped.
fn no_http(id: &'static str, why: String) -> Check {
    Check::fail(
        id,
        DOH,
        format!("no HTTP over the TLS connection: {why}"),
        "serve HTTP/2 (or HTTP/1.1) on this port once TLS is up",
    )
}

/// The reply to a query sent by `method` ("post" or "get"): a 200 of
/// `application/dns-message` holding a DNS reply to the question.
fn exchange_verdict(id: &'static str, asked: &Asked, query: &[u8]) -> Check {
    let method = id.to_ascii_uppercase();
    let fix_method = match id {
        "get" => "answer GET requests with the query in ?dns= (base64url, RFC 8484 §4.1): every DoH server must take both GET and POST",
        _ => "answer POST requests of content-type application/dns-message (RFC 8484 §4.1): every DoH server must take both GET and POST",
    };
    let (reply, took) = match asked {
        Ok(got) => got,
        Err(why) => {
            return Check::fail(
                id,
                DOH,
                format!("a {method} of a query got no response: {why}"),
                fix_method,
            )
        }
    };
    let content_type = reply.content_type.as_deref().unwrap_or("none");
    if reply.status != 200 {
        let fix = match reply.status {
            404 => "check the path: the server serves DoH at another one (dotgate: --doh-path)",
            400..=499 => fix_method,
            _ => "answer every query with 200 and a DNS message; a resolver failure is a SERVFAIL in a 200 (RFC 8484 §4.2.1)",
        };
        return Check::fail(
            id,
            DOH,
            format!(
                "a {method} of a query got HTTP {} (content-type {content_type}): clients take it for no answer",
                reply.status
            ),
            fix,
        );
    }
    if !reply.is_dns_message() {
        return Check::fail(
            id,
            DOH,
            format!(
                "a {method} of a query got 200 with content-type {content_type}, not {DNS_MESSAGE}: clients drop it"
            ),
            "send DNS replies as application/dns-message (RFC 8484 §6)",
        );
    }
    let header = probes::header(&reply.body).filter(|h| h.response);
    let question = dns::parse_query(query)
        .ok()
        .map(|info| query[info.question].to_vec());
    let Some(header) = header else {
        return Check::fail(
            id,
            DOH,
            format!(
                "a {method} of a query got 200 {DNS_MESSAGE}, but its {} byte body is not a DNS reply",
                reply.body.len()
            ),
            "send the resolver's DNS reply as the body",
        );
    };
    if question.is_some_and(|q| dns::match_reply(&reply.body, &q) == dns::ReplyMatch::Mismatch) {
        return Check::fail(
            id,
            DOH,
            format!("a {method} of a query got a DNS reply to another question"),
            "answer each request with the reply to its own query",
        );
    }
    Check::pass(
        id,
        DOH,
        format!(
            "a {method} of a query got 200 {DNS_MESSAGE}: {}, {} answer record{}, in {} ms",
            probes::rcode_name(header.rcode),
            header.ancount,
            if header.ancount == 1 { "" } else { "s" },
            took.as_millis()
        ),
    )
}

/// The IDs of the DNS replies, each against its query's (`want`): clients
/// drop a reply whose ID differs (RFC 8484 §4.1: the GET's is 0).
fn id_verdict(post: Option<(&HttpReply, u16)>, get: Option<(&HttpReply, u16)>) -> Check {
    const ID: &str = "id";
    let mut judged = Vec::new();
    for (method, asked) in [("POST", post), ("GET", get)] {
        let Some((reply, want)) = asked else { continue };
        let Some(header) = probes::header(&reply.body).filter(|h| h.response) else {
            continue;
        };
        if reply.status != 200 || !reply.is_dns_message() {
            continue;
        }
        if header.id != want {
            return Check::fail(
                ID,
                DOH,
                format!(
                    "the {method}'s reply carries ID {}, not its query's {want}: clients drop it",
                    header.id
                ),
                "copy the query's ID into the reply, 0 included (RFC 8484 §4.1)",
            );
        }
        judged.push(format!("the {method}'s ({want})"));
    }
    if judged.is_empty() {
        return Check::skip(ID, DOH, "not run: no DNS reply to compare");
    }
    Check::pass(
        ID,
        DOH,
        format!(
            "the replies carry their queries' IDs: {}",
            judged.join(", ")
        ),
    )
}

/// `cache-control` on the replies that hold answers: a `max-age` no longer
/// than the smallest TTL (RFC 8484 §5.1), so that HTTP caches and browsers
/// keep an answer as long as DNS would, and no longer.
fn cache_control_verdict(replies: &[(&str, Option<&HttpReply>)]) -> Check {
    const ID: &str = "cache-control";
    let fix = "send cache-control: max-age=<the smallest TTL of the answer> on DNS replies (RFC 8484 §5.1)";
    let mut judged = Vec::new();
    for (method, reply) in replies {
        let Some(reply) = reply.filter(|r| r.status == 200 && r.is_dns_message()) else {
            continue;
        };
        let Ok(msg) = Message::from_vec(&reply.body) else {
            continue;
        };
        let Some(min_ttl) = msg.answers.iter().map(|r| r.ttl).min() else {
            continue;
        };
        match reply.max_age() {
            None => {
                return Check::warn(
                    ID,
                    DOH,
                    format!(
                        "the {method}'s reply holds {} answer record{} but no cache-control max-age ({}): HTTP caches cannot tell how long it stays true",
                        msg.answers.len(),
                        if msg.answers.len() == 1 { "" } else { "s" },
                        reply.cache_control.as_deref().unwrap_or("no cache-control header")
                    ),
                    fix,
                )
            }
            Some(age) if age > min_ttl => {
                return Check::warn(
                    ID,
                    DOH,
                    format!(
                        "the {method}'s reply has max-age={age}, longer than its smallest TTL ({min_ttl} s): caches keep the answer after it expires"
                    ),
                    fix,
                )
            }
            Some(age) => judged.push(format!("{method} max-age={age} (smallest TTL {min_ttl})")),
        }
    }
    if judged.is_empty() {
        return Check::skip(
            ID,
            DOH,
            "no reply held answer records (the check's names do not exist): nothing to judge",
        );
    }
    Check::pass(
        ID,
        DOH,
        format!(
            "answers carry cache-control within their TTL: {}",
            judged.join(", ")
        ),
    )
}

/// A GET without the `dns` parameter: a 400 tells a client its request was
/// wrong; a 5xx reads as the server failing, a 200 as an answer.
fn bad_request_verdict(asked: &Asked) -> Check {
    const ID: &str = "bad-request";
    let fix = "answer a request without a DNS query (no ?dns=) with 400 Bad Request";
    match asked {
        Err(why) => Check::warn(
            ID,
            DOH,
            format!("a GET without the dns parameter got no response: {why}"),
            fix,
        ),
        Ok((reply, _)) if reply.status == 400 => Check::pass(
            ID,
            DOH,
            "a GET without the dns parameter got 400 Bad Request",
        ),
        Ok((reply, _)) if (400..500).contains(&reply.status) => Check::pass(
            ID,
            DOH,
            format!(
                "a GET without the dns parameter got {} (a client error, though 400 is usual)",
                reply.status
            ),
        ),
        Ok((reply, _)) => Check::warn(
            ID,
            DOH,
            format!(
                "a GET without the dns parameter got {}, not a 4xx: clients cannot tell their mistake from {}",
                reply.status,
                if reply.status >= 500 {
                    "a server failure"
                } else {
                    "an answer"
                }
            ),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::check::Status;

    fn http(status: u16, content_type: &str, cache: Option<&str>, body: Vec<u8>) -> HttpReply {
        HttpReply {
            status,
            content_type: Some(content_type.to_string()),
            cache_control: cache.map(str::to_string),
            body,
        }
    }

    /// A query for `name` and its reply: ID `reply_id`, one A record of TTL
    /// `ttl` unless `None`.
    fn exchange(id: u16, reply_id: u16, ttl: Option<u32>) -> (Vec<u8>, Vec<u8>) {
        use hickory_proto::rr::{rdata::A, RData, Record};
        let query = probes::query(id, "x.dotgate-check.example.", RecordType::A, None);
        let mut msg = Message::from_vec(&query).unwrap();
        msg.metadata.id = reply_id;
        msg.metadata.message_type = hickory_proto::op::MessageType::Response;
        if let Some(ttl) = ttl {
            let name = msg.queries[0].name().clone();
            msg.add_answer(Record::from_rdata(
                name,
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        (query, msg.to_vec().unwrap())
    }

    fn ok(reply: HttpReply) -> Asked {
        Ok((reply, Duration::from_millis(3)))
    }

    #[test]
    fn an_answer_is_a_200_dns_message_for_the_question() {
        let (query, reply) = exchange(7, 7, Some(60));
        let pass = exchange_verdict(
            "post",
            &ok(http(200, DNS_MESSAGE, None, reply.clone())),
            &query,
        );
        assert_eq!(pass.status, Status::Pass, "{pass:?}");
        assert!(
            pass.reason.contains("NOERROR, 1 answer record,"),
            "{pass:?}"
        );

        let wrong_type = exchange_verdict(
            "get",
            &ok(http(200, "text/html", None, reply.clone())),
            &query,
        );
        assert_eq!(wrong_type.status, Status::Fail);
        assert!(
            wrong_type.reason.contains("content-type text/html"),
            "{wrong_type:?}"
        );

        let error = exchange_verdict(
            "post",
            &ok(http(500, "text/plain", None, Vec::new())),
            &query,
        );
        assert_eq!(error.status, Status::Fail);
        assert!(error.reason.contains("HTTP 500"), "{error:?}");
        assert!(error.fix.unwrap().contains("SERVFAIL in a 200"));

        let not_found = exchange_verdict(
            "get",
            &ok(http(404, "text/plain", None, Vec::new())),
            &query,
        );
        assert!(not_found.fix.unwrap().contains("--doh-path"));

        let junk = exchange_verdict(
            "post",
            &ok(http(200, DNS_MESSAGE, None, b"hi".to_vec())),
            &query,
        );
        assert_eq!(junk.status, Status::Fail);
        assert!(junk.reason.contains("not a DNS reply"), "{junk:?}");

        let (_, other) = exchange(7, 7, None);
        let mut other = Message::from_vec(&other).unwrap();
        other.queries[0].set_name(hickory_proto::rr::Name::from_ascii("y.example.").unwrap());
        let other = exchange_verdict(
            "post",
            &ok(http(200, DNS_MESSAGE, None, other.to_vec().unwrap())),
            &query,
        );
        assert_eq!(other.status, Status::Fail);
        assert!(other.reason.contains("another question"), "{other:?}");

        let lost = exchange_verdict("get", &Err("no response within 5.0 s".into()), &query);
        assert_eq!(lost.status, Status::Fail);
        assert!(lost.reason.contains("no response"), "{lost:?}");
    }

    #[test]
    fn reply_ids_must_be_the_queries() {
        let (_, post) = exchange(7, 7, None);
        let (_, get) = exchange(0, 0, None);
        let post = http(200, DNS_MESSAGE, None, post);
        let get = http(200, DNS_MESSAGE, None, get);
        let pass = id_verdict(Some((&post, 7)), Some((&get, 0)));
        assert_eq!(pass.status, Status::Pass, "{pass:?}");
        assert!(
            pass.reason.contains("POST's (7), the GET's (0)"),
            "{pass:?}"
        );

        let (_, wrong) = exchange(0, 4660, None);
        let wrong = http(200, DNS_MESSAGE, None, wrong);
        let fail = id_verdict(Some((&post, 7)), Some((&wrong, 0)));
        assert_eq!(fail.status, Status::Fail);
        assert!(
            fail.reason
                .contains("GET's reply carries ID 4660, not its query's 0"),
            "{fail:?}"
        );

        assert_eq!(id_verdict(None, None).status, Status::Skip);
    }

    #[test]
    fn cache_control_is_judged_on_answers_only() {
        let (_, answered) = exchange(7, 7, Some(60));
        let (_, empty) = exchange(0, 0, None);
        let with = |cc: Option<&str>, body: &[u8]| http(200, DNS_MESSAGE, cc, body.to_vec());

        let good = with(Some("max-age=60"), &answered);
        let pass = cache_control_verdict(&[("POST", Some(&good)), ("GET", None)]);
        assert_eq!(pass.status, Status::Pass, "{pass:?}");
        assert!(pass.reason.contains("POST max-age=60 (smallest TTL 60)"));

        let missing = with(None, &answered);
        let warn = cache_control_verdict(&[("POST", Some(&good)), ("GET", Some(&missing))]);
        assert_eq!(warn.status, Status::Warn, "{warn:?}");
        assert!(warn
            .reason
            .contains("GET's reply holds 1 answer record but no cache-control"));

        let long = with(Some("max-age=3600"), &answered);
        let warn = cache_control_verdict(&[("POST", Some(&long))]);
        assert_eq!(warn.status, Status::Warn);
        assert!(warn
            .reason
            .contains("max-age=3600, longer than its smallest TTL (60 s)"));

        // NXDOMAIN or NODATA: nothing to say.
        let none = with(None, &empty);
        assert_eq!(
            cache_control_verdict(&[("POST", Some(&none))]).status,
            Status::Skip
        );
    }

    #[test]
    fn a_bad_request_wants_a_4xx() {
        let status =
            |code: u16| bad_request_verdict(&ok(http(code, "text/plain", None, Vec::new())));
        assert_eq!(status(400).status, Status::Pass);
        assert_eq!(status(415).status, Status::Pass);
        let server_error = status(500);
        assert_eq!(server_error.status, Status::Warn);
        assert!(server_error.reason.contains("a server failure"));
        let answered = status(200);
        assert_eq!(answered.status, Status::Warn);
        assert!(answered.reason.contains("an answer"));
    }

    #[test]
    fn options_and_report_name_the_url() {
        let o = Options::new(
            "https://[::1]:8443/dns-query/kid",
            None,
            Trust::Insecure,
            None,
            true,
        )
        .unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 8443));
        assert_eq!(o.doh_path.as_deref(), Some("/dns-query/kid"));
        assert_eq!(o.tls_name, "::1");
        assert!(Options::new("https://dns.example:x/", None, Trust::Insecure, None, true).is_err());
        let dot = Options::new("dns.example", None, Trust::Insecure, None, true).unwrap();
        assert_eq!(dot.doh_path, None);

        let target = Target {
            host: "::1".into(),
            port: 8443,
            tls_name: "dns.test".into(),
            address: None,
            quick: true,
            doh_path: Some("/dns-query".into()),
        };
        let report = Report::new(
            target,
            vec![
                Check::pass("post", DOH, "ok"),
                Check::pass("alpn", DOH, "ok"),
            ],
            Duration::ZERO,
        );
        let text = report.to_text();
        assert!(
            text.starts_with("dotgate check https://[::1]:8443/dns-query (TLS name dns.test"),
            "{text}"
        );
        // DoH order, and the one DoH summary.
        assert!(text.find("PASS alpn").unwrap() < text.find("PASS post").unwrap());
        assert!(text.contains("\nDoH clients (browsers, Windows 11, iOS and macOS): should work\n"));
        let json = report.to_json();
        assert_eq!(json["target"]["url"], "https://[::1]:8443/dns-query");
        assert_eq!(json["summary"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn http2_is_expected() {
        assert_eq!(alpn_check(Some(b"h2")).status, Status::Pass);
        assert_eq!(alpn_check(Some(b"http/1.1")).status, Status::Warn);
        assert_eq!(alpn_check(None).status, Status::Warn);
    }
}
