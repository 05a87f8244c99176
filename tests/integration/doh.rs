//! DNS over HTTPS (RFC 8484) against dotgate in-process: HTTP/2 and
//! HTTP/1.1 clients (hyper over rustls, as a browser would speak), the
//! scripted upstream behind, and every status a client can get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{assert_answer, encode, parse, query, with_opt, Pki, Server, TLS_NAME};
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::Upstream;

/// How long any one exchange may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// One HTTP response as a client sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn dns(&self) -> Message {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        assert_eq!(self.header("content-type"), Some("application/dns-message"));
        parse(&self.body)
    }
}

/// An HTTP/2 or HTTP/1.1 connection to a DoH listener.
pub enum Http {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// A TLS client trusting the test CA that offers `alpn`, with `sni` as the
/// server name.
pub fn tls_client(pki: &Pki, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    pki.client_config(
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        alpn,
        true,
    )
}

impl Http {
    /// Connects over TLS with ALPN `h2` (or `http/1.1` when `h1`).
    pub async fn connect(addr: SocketAddr, pki: &Pki, h1: bool) -> Http {
        Http::connect_as(addr, pki, h1, TLS_NAME).await
    }

    /// As [`Http::connect`], asking for the server name `sni`.
    pub async fn connect_as(addr: SocketAddr, pki: &Pki, h1: bool, sni: &str) -> Http {
        let alpn: &[u8] = if h1 { b"http/1.1" } else { b"h2" };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = TlsConnector::from(tls_client(pki, &[alpn]))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the DoH listener");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        Http::over(tls, h1).await
    }

    /// Plain HTTP (the reverse-proxy listener).
    pub async fn connect_plain(addr: SocketAddr, h1: bool) -> Http {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Http::over(tcp, h1).await
    }

    async fn over<T>(io: T, h1: bool) -> Http
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h1 {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Http::H1(send)
        } else {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Http::H2(send)
        }
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        match self {
            Http::H2(send) => send.is_closed(),
            Http::H1(send) => send.is_closed(),
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let exchange = async {
            // An HTTP/1.1 connection takes the next request only once its
            // task has seen the last response end: without waiting, a
            // request sent right after one is refused as "not ready".
            let response = match self {
                Http::H2(send) => match send.ready().await {
                    Ok(()) => send.send_request(req).await,
                    Err(e) => Err(e),
                },
                Http::H1(send) => match send.ready().await {
                    Ok(()) => send.send_request(req).await,
                    Err(e) => Err(e),
                },
            }
            .expect("a response");
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Reply {
                status,
                headers,
                body: body.to_vec(),
            }
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .expect("a response within 10 s")
    }

    /// A GET of `path?dns=...` for `msg`.
    pub async fn get(&mut self, path: &str, msg: &[u8]) -> Reply {
        let uri = format!("{path}?dns={}", URL_SAFE_NO_PAD.encode(msg));
        self.send(request("GET", &uri, None, Vec::new())).await
    }

    /// A POST of `msg` to `path` as application/dns-message.
    pub async fn post(&mut self, path: &str, msg: &[u8]) -> Reply {
        self.send(request(
            "POST",
            path,
            Some("application/dns-message"),
            msg.to_vec(),
        ))
        .await
    }
}

/// A request with an authority (HTTP/2 needs one in the URI; HTTP/1.1 gets
/// it as `host`).
pub fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("https://{TLS_NAME}{path}"))
        .header("host", TLS_NAME);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

fn doh(server: &Server) -> SocketAddr {
    server.doh.expect("a DoH listener")
}

/// POST and GET over HTTP/2 and HTTP/1.1: answered, the reply's ID is the
/// request's (0 for the GET, as browsers send), typed, and cacheable for
/// the answer's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_get_are_answered_over_http2_and_http1() {
    let up = Upstream::start().await;
    up.set_address("ttl.doh.test.", "192.0.2.77".parse().unwrap(), 1234);
    let server = Server::start_doh(up.addr, &[]).await;
    for h1 in [false, true] {
        let mut http = Http::connect(doh(&server), &server.pki, h1).await;
        let post = http
            .post(
                "/dns-query",
                &encode(&query(0x1234, "post.doh.test.", RecordType::A)),
            )
            .await;
        assert_answer(&post.dns(), 0x1234, "post.doh.test.", RecordType::A);
        assert_eq!(post.header("cache-control"), Some("max-age=60"));
        let get = http
            .get(
                "/dns-query",
                &encode(&query(0, "get.doh.test.", RecordType::AAAA)),
            )
            .await;
        assert_answer(&get.dns(), 0, "get.doh.test.", RecordType::AAAA);
        let fixed = http
            .get(
                "/dns-query",
                &encode(&query(0, "ttl.doh.test.", RecordType::A)),
            )
            .await;
        assert_eq!(fixed.dns().answers.len(), 1);
        assert_eq!(
            fixed.header("cache-control"),
            Some("max-age=1234"),
            "h1: {h1}"
        );
    }
}

/// Every way a request can be wrong gets its status and a line saying why;
/// none of them reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_readable_statuses() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_doh(up.addr, &["--metrics-listen", &metrics.to_string()]).await;
    let good = encode(&query(1, "never.doh.test.", RecordType::A));
    for h1 in [false, true] {
        let mut http = Http::connect(doh(&server), &server.pki, h1).await;
        let cases: Vec<(Request<Full<Bytes>>, u16)> = vec![
            (request("GET", "/dns-query", None, vec![]), 400),
            (request("GET", "/dns-query?dns=***", None, vec![]), 400),
            (request("GET", "/dns-query?dns=AAAA", None, vec![]), 400),
            (
                request(
                    "POST",
                    "/dns-query",
                    Some("application/dns-message"),
                    vec![1, 2, 3],
                ),
                400,
            ),
            (
                request("POST", "/dns-query", Some("application/json"), good.clone()),
                415,
            ),
            (request("POST", "/dns-query", None, good.clone()), 415),
            (
                request(
                    "POST",
                    "/dns-query",
                    Some("application/dns-message"),
                    vec![0; 70_000],
                ),
                413,
            ),
            (request("PUT", "/dns-query", None, good.clone()), 405),
            (request("DELETE", "/dns-query", None, vec![]), 405),
            (request("GET", "/", None, vec![]), 404),
            (request("GET", "/dns-query/a/b", None, vec![]), 404),
            (
                request(
                    "POST",
                    "/other",
                    Some("application/dns-message"),
                    good.clone(),
                ),
                404,
            ),
        ];
        for (req, status) in cases {
            let what = format!("{} {} (h1: {h1})", req.method(), req.uri());
            if h1 {
                // HTTP/1.1 cannot go on after a body that was not read (a
                // refused POST's): a client opens another connection.
                http = Http::connect(doh(&server), &server.pki, h1).await;
            }
            let reply = http.send(req).await;
            assert_eq!(reply.status.as_u16(), status, "{what}: {:?}", reply.body);
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|t| t.starts_with("text/plain")),
                "{what}"
            );
            assert!(!reply.body.is_empty(), "{what}: no reason given");
            assert!(reply.header("cache-control").is_none(), "{what}");
            if status == 405 {
                assert_eq!(reply.header("allow"), Some("GET, POST"));
            }
        }
    }
    assert!(
        up.received().is_empty(),
        "a bad request reached the upstream"
    );
    let text = scrape(metrics).await;
    assert_eq!(
        value(&text, "dotgate_doh_responses_total{status=\"404\"}"),
        6.0
    );
    assert_eq!(
        value(&text, "dotgate_doh_responses_total{status=\"400\"}"),
        8.0
    );
}

/// An upstream that does not answer: SERVFAIL inside a 200, never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_is_servfail_in_a_200() {
    let mut up = Upstream::start().await;
    up.stop();
    let server = Server::start_doh(up.addr, &["--upstream-timeout", "300ms"]).await;
    let mut http = Http::connect(doh(&server), &server.pki, false).await;
    let reply = http
        .post(
            "/dns-query",
            &encode(&query(9, "down.doh.test.", RecordType::A)),
        )
        .await;
    let msg = reply.dns();
    assert_eq!(msg.metadata.id, 9);
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert!(reply.header("cache-control").is_none());
}

/// Padding is answered as on DoT; a keepalive option is not (it means
/// nothing over HTTP), and neither goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_is_kept_and_keepalive_is_not_used() {
    let up = Upstream::start().await;
    let server = Server::start_doh(up.addr, &[]).await;
    let mut http = Http::connect(doh(&server), &server.pki, false).await;
    let mut msg = with_opt(query(3, "pad.doh.test.", RecordType::A));
    if let Some(edns) = msg.edns.as_mut() {
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                12,
                vec![0; 8],
            ));
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                11,
                vec![],
            ));
    }
    let reply = http.post("/dns-query", &encode(&msg)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body.len() % 468,
        0,
        "padded to 468: {}",
        reply.body.len()
    );
    let options = crate::upstream::raw_opt_options(&reply.body);
    assert!(options.iter().any(|(code, _)| *code == 12), "{options:?}");
    assert!(
        !options.iter().any(|(code, _)| *code == 11),
        "keepalive over HTTP: {options:?}"
    );
    let sent = up.received();
    assert_eq!(sent.len(), 1);
    assert!(
        !sent[0]
            .options
            .iter()
            .any(|(code, _)| *code == 11 || *code == 12),
        "hop-by-hop options went upstream: {:?}",
        sent[0].options
    );
}

/// The plain listener for a reverse proxy speaks HTTP/1.1 and HTTP/2 with
/// prior knowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_serves_http1_and_h2c() {
    let up = Upstream::start().await;
    let server = Server::start_doh(up.addr, &[]).await;
    let plain = server.doh_plain.expect("a plain DoH listener");
    for h1 in [true, false] {
        let mut http = Http::connect_plain(plain, h1).await;
        let reply = http
            .post(
                "/dns-query",
                &encode(&query(5, "plain.doh.test.", RecordType::A)),
            )
            .await;
        assert_answer(&reply.dns(), 5, "plain.doh.test.", RecordType::A);
    }
}

/// Client IDs by path and by server name; an unlisted or missing ID gets
/// the same 404 as an unknown path, and nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_by_path_and_server_name() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let pki = crate::identity::wildcard_pki();
    let server = Server::start_doh_with_pki(
        pki,
        up.addr,
        &[
            "--client-id-domain",
            "dns.test",
            "--client-id",
            "alice",
            "--client-id",
            "bob",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let msg = encode(&query(0, "id.doh.test.", RecordType::A));
    let mut anonymous = Http::connect(doh(&server), &server.pki, false).await;
    let by_path = anonymous.post("/dns-query/alice", &msg).await;
    assert_answer(&by_path.dns(), 0, "id.doh.test.", RecordType::A);
    let unknown_path = anonymous.post("/nothing-here", &msg).await;
    for refused in ["/dns-query", "/dns-query/mallory", "/dns-query/bad_id"] {
        let reply = anonymous.post(refused, &msg).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{refused}");
        assert_eq!(
            reply.body, unknown_path.body,
            "{refused}: tells itself apart"
        );
        assert_eq!(reply.headers.len(), unknown_path.headers.len(), "{refused}");
    }
    // By server name: bob.dns.test, and the path still wins (over
    // HTTP/1.1, so that both versions are seen here).
    let mut bob = Http::connect_as(doh(&server), &server.pki, true, "bob.dns.test").await;
    assert_eq!(bob.post("/dns-query", &msg).await.status, StatusCode::OK);
    assert_eq!(bob.get("/dns-query", &msg).await.status, StatusCode::OK);
    assert_eq!(
        bob.post("/dns-query/mallory", &msg).await.status,
        StatusCode::NOT_FOUND
    );
    // An unlisted server name still gets TLS (the path may carry an ID).
    let mut mallory = Http::connect_as(doh(&server), &server.pki, false, "mallory.dns.test").await;
    assert_eq!(
        mallory.post("/dns-query", &msg).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        mallory.post("/dns-query/alice", &msg).await.status,
        StatusCode::OK
    );
    assert_eq!(
        up.received().len(),
        4,
        "refused requests reached the upstream"
    );
    let text = scrape(metrics).await;
    assert_eq!(
        value(&text, "dotgate_client_queries_total{client_id=\"alice\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "dotgate_client_queries_total{client_id=\"bob\"}"),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "dotgate_connections_refused_total{reason=\"client_id\"}"
        ),
        5.0
    );
    assert_eq!(
        value(&text, "dotgate_queries_total{transport=\"doh\"}"),
        4.0
    );
    assert_eq!(
        value(&text, "dotgate_queries_total{transport=\"dot\"}"),
        0.0
    );
    // The four answered, over HTTP/2 and HTTP/1.1, are in the latency
    // histogram; the refusals are not.
    assert_eq!(value(&text, "dotgate_query_duration_seconds_count"), 4.0);
}
