//! DoH behind a reverse proxy: the plain listener (`--doh-listen-plain`)
//! with the client named by a trusted proxy's forwarding header
//! (`--doh-trusted-proxy`) or by PROXY protocol, as the upstream's client
//! subnet (`--upstream-ecs 32,128` names the address whole) and
//! `--allow-from` see it; and HAProxy in `mode http` in front.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::doh::{request, Http, Reply};
use crate::harness::{assert_answer, encode, free_port, query, Server, TempDir};
use crate::metrics::{metrics_addr, scrape, value};
use crate::process::{missing_tool, on_path};
use crate::upstream::Upstream;
use hickory_proto::rr::RecordType;

/// The client subnet options (code 8) among a query's EDNS options.
fn subnets(options: &[(u16, Vec<u8>)]) -> Vec<Vec<u8>> {
    options
        .iter()
        .filter(|(code, _)| *code == 8)
        .map(|(_, data)| data.clone())
        .collect()
}

/// The ECS option of a full-length IPv4 subnet for `ip`.
fn ecs_v4(ip: [u8; 4]) -> Vec<u8> {
    let mut option = vec![0, 1, 32, 0];
    option.extend_from_slice(&ip);
    option
}

/// Extra request headers, name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// A POST of a query for `name` with `headers` added.
fn post_with(name: &str, id: u16, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = request(
        "POST",
        "/dns-query",
        Some("application/dns-message"),
        encode(&query(id, name, RecordType::A)),
    );
    for (k, v) in headers {
        req.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

/// Asks `name` through `http` with `headers`; returns the reply and the
/// client subnet the upstream was told (`None` when nothing reached it).
async fn ask(
    http: &mut Http,
    up: &Upstream,
    name: &str,
    id: u16,
    headers: &[(&str, &str)],
) -> (Reply, Option<Vec<Vec<u8>>>) {
    let reply = http.send(post_with(name, id, headers)).await;
    let seen = up
        .received()
        .into_iter()
        .rfind(|r| r.name == name)
        .map(|r| subnets(&r.options));
    (reply, seen)
}

/// A trusted proxy's X-Forwarded-For names the client the upstream is
/// told about (the right-most address that is not a trusted proxy: what
/// the client wrote left of it is not believed); a malformed header is
/// ignored; the same header from a peer that is not trusted is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_others_do_not() {
    let up = Upstream::start().await;
    let server = Server::start_doh(
        up.addr,
        &[
            "--upstream-ecs",
            "32,128",
            "--doh-trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let mut http = Http::connect_plain(server.doh_plain.unwrap(), true).await;
    let cases: [(&str, Headers, [u8; 4]); 5] = [
        ("none.xff.test.", &[], [127, 0, 0, 1]),
        (
            "one.xff.test.",
            &[("x-forwarded-for", "192.0.2.7")],
            [192, 0, 2, 7],
        ),
        (
            "spoof.xff.test.",
            &[("x-forwarded-for", "6.6.6.6, 192.0.2.8")],
            [192, 0, 2, 8],
        ),
        (
            "chain.xff.test.",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "192.0.2.9, 127.0.0.1"),
            ],
            [192, 0, 2, 9],
        ),
        (
            "bad.xff.test.",
            &[("x-forwarded-for", "192.0.2.7, not-an-address")],
            [127, 0, 0, 1],
        ),
    ];
    for (id, (name, headers, client)) in cases.into_iter().enumerate() {
        let (reply, seen) = ask(&mut http, &up, name, id as u16 + 1, headers).await;
        assert_answer(&reply.dns(), id as u16 + 1, name, RecordType::A);
        assert_eq!(seen, Some(vec![ecs_v4(client)]), "{name} {headers:?}");
    }
    // `Forwarded` is not read when X-Forwarded-For is the header.
    let (_, seen) = ask(
        &mut http,
        &up,
        "other.xff.test.",
        9,
        &[("forwarded", "for=192.0.2.7")],
    )
    .await;
    assert_eq!(seen, Some(vec![ecs_v4([127, 0, 0, 1])]));
    drop(server);

    // Not trusted: the header is the client's own claim.
    let server = Server::start_doh(
        up.addr,
        &[
            "--upstream-ecs",
            "32,128",
            "--doh-trusted-proxy",
            "10.0.0.0/8",
        ],
    )
    .await;
    let mut http = Http::connect_plain(server.doh_plain.unwrap(), true).await;
    let (reply, seen) = ask(
        &mut http,
        &up,
        "untrusted.xff.test.",
        10,
        &[("x-forwarded-for", "192.0.2.7")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(seen, Some(vec![ecs_v4([127, 0, 0, 1])]));
}

/// RFC 7239 `Forwarded` with `--doh-forwarded-header forwarded`, over
/// HTTP/2 (h2c) this time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_is_read_when_it_is_the_header() {
    let up = Upstream::start().await;
    let server = Server::start_doh(
        up.addr,
        &[
            "--upstream-ecs",
            "32,128",
            "--doh-trusted-proxy",
            "127.0.0.0/8",
            "--doh-forwarded-header",
            "forwarded",
        ],
    )
    .await;
    let mut http = Http::connect_plain(server.doh_plain.unwrap(), false).await;
    let (reply, seen) = ask(
        &mut http,
        &up,
        "fwd.test.",
        1,
        &[
            (
                "forwarded",
                "for=6.6.6.6, for=\"192.0.2.60:4711\";proto=https",
            ),
            ("x-forwarded-for", "6.6.6.7"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(seen, Some(vec![ecs_v4([192, 0, 2, 60])]));
}

/// `--allow-from` is judged on the client a trusted proxy names, per
/// request: one outside gets 403 and nothing goes upstream, one inside on
/// the same connection is answered; the proxy itself need not be in the
/// list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_judges_the_forwarded_client_per_request() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_doh(
        up.addr,
        &[
            "--allow-from",
            "192.0.2.0/24",
            "--doh-trusted-proxy",
            "127.0.0.1",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let mut http = Http::connect_plain(server.doh_plain.unwrap(), true).await;
    let (reply, seen) = ask(
        &mut http,
        &up,
        "out.allow.test.",
        1,
        &[("x-forwarded-for", "198.51.100.1")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(seen, None, "a refused client's query went upstream");
    let (reply, _) = ask(&mut http, &up, "proxy.allow.test.", 2, &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "the proxy's own request is judged by its address"
    );
    let (reply, seen) = ask(
        &mut http,
        &up,
        "in.allow.test.",
        3,
        &[("x-forwarded-for", "192.0.2.7")],
    )
    .await;
    assert_answer(&reply.dns(), 3, "in.allow.test.", RecordType::A);
    assert!(seen.is_some());
    let text = scrape(metrics).await;
    assert_eq!(
        value(
            &text,
            "dotgate_connections_refused_total{reason=\"not_allowed\"}"
        ),
        2.0,
        "{text}"
    );
    // An untrusted peer outside the list is still closed at accept.
    drop(server);
}

/// PROXY protocol on the plain listener (`--proxy-protocol`): the header's
/// client is the one the upstream is told about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_on_the_plain_listener() {
    let up = Upstream::start().await;
    let server =
        Server::start_doh(up.addr, &["--upstream-ecs", "32,128", "--proxy-protocol"]).await;
    let mut tcp = TcpStream::connect(server.doh_plain.unwrap()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.33 127.0.0.1 40000 80\r\n")
        .await
        .unwrap();
    let mut http = h1_over(tcp).await;
    let (reply, seen) = ask(&mut http, &up, "pp.plain.test.", 1, &[]).await;
    assert_answer(&reply.dns(), 1, "pp.plain.test.", RecordType::A);
    assert_eq!(seen, Some(vec![ecs_v4([192, 0, 2, 33])]));
}

/// HTTP/1.1 over an already connected stream.
async fn h1_over(tcp: TcpStream) -> Http {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    Http::H1(send)
}

/// HAProxy in `mode http` with `option forwardfor` in front of the plain
/// listener: a real reverse proxy, which appends the address it saw. The
/// client connects to HAProxy from 127.0.0.2 (and claims 6.6.6.6 in a
/// header of its own); HAProxy reaches dotgate from 127.0.0.1, the one
/// trusted proxy. The upstream is told 127.0.0.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy (package haproxy); run with --include-ignored"]
async fn haproxy_in_front_names_the_client() {
    let haproxy_bin = on_path("haproxy").unwrap_or_else(|| missing_tool("haproxy", "haproxy"));
    let up = Upstream::start().await;
    let server = Server::start_doh(
        up.addr,
        &[
            "--upstream-ecs",
            "32,128",
            "--doh-trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let dir = TempDir::new();
    let front: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let haproxy = Haproxy::start(&haproxy_bin, dir.path(), front, server.doh_plain.unwrap());
    let tcp = connect_from([127, 0, 0, 2], front).await;
    let mut http = h1_over(tcp).await;
    let (reply, seen) = ask(
        &mut http,
        &up,
        "haproxy.xff.test.",
        7,
        &[("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    assert_answer(&reply.dns(), 7, "haproxy.xff.test.", RecordType::A);
    assert_eq!(
        seen,
        Some(vec![ecs_v4([127, 0, 0, 2])]),
        "haproxy's log:\n{}",
        haproxy.log()
    );
}

/// Connects to `to` from `from` (any port), retrying for at most 10 s
/// while the listener comes up.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        match socket.connect(to).await {
            Ok(tcp) => return tcp,
            Err(e) => assert!(Instant::now() < deadline, "{to} never came up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// HAProxy in `mode http`, stopped when dropped.
struct Haproxy {
    child: Child,
    log: std::path::PathBuf,
}

impl Haproxy {
    fn start(bin: &Path, dir: &Path, front: SocketAddr, backend: SocketAddr) -> Haproxy {
        let config = format!(
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n\
             \x20   timeout server 30s\n\
             frontend doh\n    bind {front}\n    option forwardfor\n    default_backend dotgate\n\
             backend dotgate\n    server dotgate {backend} source 127.0.0.1\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let child = Command::new(bin)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create haproxy.log"))
            .spawn()
            .expect("spawn haproxy");
        Haproxy { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
