//! Per-client query rate limits and bans (`--max-qps-per-ip`,
//! `--ban-after`): a flooder (dnsperf over TLS) from 127.0.0.2 is held at
//! its limit and banned while a client from 127.0.0.3 is served; behind
//! PROXY the carried address is limited; DoH gets REFUSED in a 200, or 429
//! and a close; a scan of 100,000 addresses keeps the table within bound.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::doh::Http;
use crate::harness::{assert_answer, encode, query, Client, Server, REPLY_WAIT};
use crate::hostile::wait_for_series;
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::Upstream;

/// A TCP connection to `addr` from `source` (any 127.0.0.0/8 address is
/// local on Linux, so one host can be many clients).
async fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(addr).await
}

/// The client address an upstream query carried in its EDNS Client Subnet
/// option (`--upstream-ecs 32,128`), if any.
fn subnet_of(options: &[(u16, Vec<u8>)]) -> Option<Ipv4Addr> {
    let (_, data) = options.iter().find(|(code, _)| *code == 8)?;
    let octets: [u8; 4] = data.get(4..8)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Writes dnsperf's query file: one name, asked over and over.
fn query_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("flood.txt");
    std::fs::write(&path, "flood.test A\n").unwrap();
    path
}

const RATE: f64 = 50.0;
const BURST: f64 = 50.0;

/// dnsperf floods over TLS from 127.0.0.2 at up to 2,000 queries a second
/// against a limit of 50 a second (burst 50) and a ban after 2 s over it;
/// a client from 127.0.0.3 asks every 50 ms meanwhile. The upstream sees
/// from the flooder its burst plus the rate for the time until the ban
/// (attributed by the client subnet dotgate adds), then nothing; the ban is
/// counted and refuses the flooder's next connection; the other client's
/// every query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsperf (Debian package dnsperf); CI runs it with --include-ignored"]
async fn a_flooder_is_held_at_its_limit_then_banned_and_others_are_served() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let upstream = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &upstream,
        "--upstream-ecs",
        "32,128",
        "--max-qps-per-ip",
        "50",
        "--max-qps-burst",
        "50",
        "--ban-after",
        "2s",
        "--ban-for",
        "5m",
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    scrape(metrics).await;
    let dir = crate::harness::TempDir::new();
    let file = query_file(dir.path());

    // The calm client first, so that it is connected before the flood.
    let calm_source = Ipv4Addr::new(127, 0, 0, 3);
    let tcp = connect_from(server.addr, calm_source).await.unwrap();
    let mut calm = Client::try_connect_over(tcp, &server.pki).await.unwrap();

    let started = Instant::now();
    let dnsperf = std::process::Command::new("dnsperf")
        .args(["-m", "dot", "-s", "127.0.0.1", "-a", "127.0.0.2"])
        .args(["-p", &server.addr.port().to_string()])
        .args(["-d", &file.display().to_string()])
        .args(["-l", "6", "-c", "1", "-Q", "2000", "-t", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dnsperf (Debian package dnsperf)");

    // Every 50 ms a query from the calm client until the ban is seen (at
    // most 15 s), and a little after.
    let mut asked = 0u16;
    let mut banned_at = None;
    let deadline = started + Duration::from_secs(15);
    loop {
        asked += 1;
        let name = format!("calm{asked}.test.");
        calm.send(&query(asked, &name, RecordType::A)).await;
        assert_answer(&calm.recv().await, asked, &name, RecordType::A);
        if banned_at.is_none() && value(&scrape(metrics).await, "dotgate_bans_total") >= 1.0 {
            banned_at = Some(started.elapsed());
        }
        if banned_at.is_some_and(|at| started.elapsed() > at + Duration::from_millis(500)) {
            break;
        }
        assert!(Instant::now() < deadline, "no ban within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let banned_at = banned_at.unwrap_or_default();

    // A new connection from the flooder is refused at accept.
    let tcp = connect_from(server.addr, Ipv4Addr::new(127, 0, 0, 2))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(REPLY_WAIT, Client::try_connect_over(tcp, &server.pki))
            .await
            .expect("closed, not left hanging")
            .is_err(),
        "a banned address got a TLS connection"
    );
    // dnsperf stops itself after its 6 s (-l 6).
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || dnsperf.wait_with_output()),
    )
    .await
    .expect("dnsperf ends after its 6 s")
    .unwrap()
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);

    let from = |source: Ipv4Addr| {
        up.received()
            .iter()
            .filter(|q| subnet_of(&q.options) == Some(source))
            .count() as f64
    };
    let flooder = from(Ipv4Addr::new(127, 0, 0, 2));
    let calm_upstream = from(calm_source);
    let scraped = scrape(metrics).await;
    let refused = value(
        &scraped,
        "dotgate_rate_limited_queries_total{transport=\"dot\",limit=\"ip\"}",
    );
    let at_accept = value(
        &scraped,
        "dotgate_connections_refused_total{reason=\"banned\"}",
    );
    println!(
        "flooder: {flooder} queries upstream, {refused} refused, ban seen at {banned_at:?}, {at_accept} connections refused at accept; calm: {asked} asked, {calm_upstream} upstream\ndnsperf: {report}"
    );
    // Held at the limit: the burst, then the rate while it kept going
    // over for --ban-after (2 s), and never more than the rate allows in
    // the time until the ban was seen.
    let most = BURST + RATE * banned_at.as_secs_f64() + 1.0;
    assert!(
        flooder >= BURST + RATE * 2.0 - 5.0 && flooder <= most,
        "the flooder had {flooder} queries upstream (bounds {} to {most})",
        BURST + RATE * 2.0 - 5.0
    );
    assert!(refused > flooder, "dnsperf sent far more than the limit");
    assert!(at_accept >= 1.0);
    assert_eq!(value(&scraped, "dotgate_bans_total"), 1.0);
    assert_eq!(
        calm_upstream,
        f64::from(asked),
        "every calm query reached the upstream"
    );
}

/// Behind PROXY, the address the header carries is what is limited: eight
/// pipelined queries for 192.0.2.10 get the burst (3) answered and the rest
/// REFUSED, while a second connection from the same proxy for 192.0.2.11
/// is served in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_proxy_the_carried_address_is_limited() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--proxy-protocol",
            "--max-qps-per-ip",
            "1",
            "--max-qps-burst",
            "3",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let connect = |client: &'static str| {
        let server = &server;
        async move {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            tcp.write_all(&crate::proxy::v1(client)).await.unwrap();
            Client::try_connect_over(tcp, &server.pki).await.unwrap()
        }
    };
    let mut limited = connect("192.0.2.10:5353").await;
    let started = Instant::now();
    for id in 1..=8u16 {
        limited
            .send(&query(id, &format!("p{id}.test."), RecordType::A))
            .await;
    }
    let mut answered = 0;
    let mut refused = 0;
    for _ in 0..8 {
        let reply = limited.recv().await;
        match reply.metadata.response_code {
            ResponseCode::NoError => answered += 1,
            ResponseCode::Refused => {
                assert!(reply.answers.is_empty());
                assert_eq!(reply.queries.len(), 1, "the question is kept");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let most = 3 + started.elapsed().as_secs() as usize;
    assert!(
        (3..=most).contains(&answered),
        "{answered} answered, {refused} refused"
    );
    assert_eq!(answered + refused, 8);

    let mut other = connect("192.0.2.11:5353").await;
    for id in 1..=3u16 {
        let name = format!("o{id}.test.");
        other.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&other.recv().await, id, &name, RecordType::A);
    }
    let scraped = scrape(metrics).await;
    assert_eq!(
        value(
            &scraped,
            "dotgate_rate_limited_queries_total{transport=\"dot\",limit=\"ip\"}"
        ),
        refused as f64
    );
    assert_eq!(
        value(&scraped, "dotgate_replies_total{rcode=\"refused\"}"),
        refused as f64
    );
}

/// Over DoH, `refused` is a 200 carrying REFUSED; `close` is 429 with
/// Retry-After, after which the server closes the connection (HTTP/1.1:
/// end of keep-alive; HTTP/2: GOAWAY); `drop` is 429 and the connection
/// goes on. The upstream sees only the queries under the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_refuses_in_a_200_or_answers_429_and_closes() {
    let up = Upstream::start().await;
    let msg = encode(&query(0, "h.test.", RecordType::A));
    for (action, h1) in [
        ("refused", false),
        ("drop", true),
        ("close", true),
        ("close", false),
    ] {
        let server = Server::start_doh(
            up.addr,
            &[
                "--max-qps-per-ip",
                "1",
                "--max-qps-burst",
                "1",
                "--rate-limit-action",
                action,
            ],
        )
        .await;
        let before = up.received().len();
        let mut http = Http::connect(server.doh.unwrap(), &server.pki, h1).await;
        assert_answer(
            &http.get("/dns-query", &msg).await.dns(),
            0,
            "h.test.",
            RecordType::A,
        );
        ready(&mut http).await;
        let second = http.get("/dns-query", &msg).await;
        match action {
            "refused" => {
                assert_eq!(second.dns().metadata.response_code, ResponseCode::Refused);
            }
            _ => {
                assert_eq!(second.status, 429, "{action}");
                assert_eq!(second.header("retry-after"), Some("1"));
            }
        }
        if action == "close" {
            // The server ends the connection once the 429 is out: wait
            // for that (bounded).
            let deadline = Instant::now() + REPLY_WAIT;
            while !http.is_closed() {
                assert!(
                    Instant::now() < deadline,
                    "{action} (HTTP/1.1: {h1}): still open"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            // Still open: another request gets a response (429 or REFUSED
            // again, never sent upstream).
            ready(&mut http).await;
            let third = http.get("/dns-query", &msg).await;
            assert!(third.status == 429 || third.status == 200, "{action}");
        }
        assert_eq!(up.received().len() - before, 1, "{action}");
    }
}

/// A scan from 100,000 distinct addresses, each named by the PROXY header
/// of its own connection to the plain DoH listener: every one is served,
/// and the limiter's table stays at its bound (4,096 entries), forgetting
/// the least recently seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_100000_addresses_keeps_the_table_within_its_bound() {
    const SCAN: u32 = 100_000;
    const TASKS: u32 = 32;
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_doh(
        up.addr,
        &[
            "--proxy-protocol",
            "--max-qps-per-ip",
            "10",
            "--rate-limit-table-size",
            "4096",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    scrape(metrics).await;
    let plain = server.doh_plain.unwrap();
    let get = format!(
        "GET /dns-query?dns={} HTTP/1.1\r\nhost: dns.test\r\nconnection: close\r\n\r\n",
        base64_url(&encode(&query(0, "scan.test", RecordType::A)))
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let get = get.clone();
            tokio::spawn(async move {
                // Each task has its own source address: 100,000 connections
                // from one would run out of ephemeral ports in TIME_WAIT.
                let source = Ipv4Addr::new(127, 0, 1, task as u8 + 1);
                let mut n = task;
                while n < SCAN {
                    let client = Ipv4Addr::from(0x0a00_0000 + n);
                    let header = format!("PROXY TCP4 {client} 198.51.100.1 5353 443\r\n");
                    let mut tcp = connect_from(plain, source).await.unwrap();
                    tcp.write_all(header.as_bytes()).await.unwrap();
                    tcp.write_all(get.as_bytes()).await.unwrap();
                    let mut response = Vec::new();
                    tokio::time::timeout(REPLY_WAIT, tcp.read_to_end(&mut response))
                        .await
                        .expect("a response within 5 s")
                        .unwrap();
                    assert!(
                        response.starts_with(b"HTTP/1.1 200"),
                        "{client}: {}",
                        String::from_utf8_lossy(&response)
                    );
                    n += TASKS;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let took = started.elapsed();
    let scraped = scrape(metrics).await;
    let entries = value(&scraped, "dotgate_rate_limit_entries");
    let evictions = value(&scraped, "dotgate_rate_limit_evictions_total");
    println!("scan of {SCAN} addresses over PROXY: {took:?}; table {entries} entries, {evictions} evictions");
    assert_eq!(entries, 4096.0);
    assert_eq!(evictions, f64::from(SCAN) - 4096.0);
    assert_eq!(
        value(&scraped, "dotgate_rate_limited_queries_total"),
        0.0,
        "nobody went over"
    );
    wait_for_series(metrics, "dotgate_connections_open", 0.0).await;
}

/// Waits until an HTTP/1.1 connection can take its next request (hyper's
/// client refuses one sent before).
async fn ready(http: &mut Http) {
    if let Http::H1(send) = http {
        tokio::time::timeout(REPLY_WAIT, send.ready())
            .await
            .expect("ready within 5 s")
            .expect("the connection is still open");
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// DoT with `--rate-limit-action drop`: queries over the limit get no
/// reply at all (R11 deliberately broken), hold nothing in flight, and the
/// connection goes on: the next query under the limit is answered, and
/// the only replies ever read are those of served queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_drop_sends_no_reply_and_leaks_nothing() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--max-qps-per-ip",
            "5",
            "--max-qps-burst",
            "2",
            "--rate-limit-action",
            "drop",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let mut client = server.client().await;
    for id in 1..=5u16 {
        client
            .send(&query(id, &format!("d{id}.test."), RecordType::A))
            .await;
    }
    // Replies come in the order they are ready (R10).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = client.recv().await;
        let id = reply.metadata.id;
        assert_answer(&reply, id, &format!("d{id}.test."), RecordType::A);
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, [1, 2]);
    wait_for_series(
        metrics,
        "dotgate_rate_limited_queries_total{transport=\"dot\",limit=\"ip\"}",
        3.0,
    )
    .await;
    assert_eq!(
        value(&scrape(metrics).await, "dotgate_queries_in_flight"),
        0.0
    );
    // Ask again until the bucket has refilled (5 a second): the first reply
    // read is the answer to a retry, never to a dropped query.
    let mut answered = None;
    for id in 100..150u16 {
        let name = format!("r{id}.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        match client.read(Duration::from_millis(100)).await {
            crate::harness::Read::Frame(bytes) => {
                let reply = crate::harness::parse(&bytes);
                assert!(
                    reply.metadata.id >= 100,
                    "a dropped query was answered: {reply:?}"
                );
                answered = Some(reply.metadata.id);
                break;
            }
            crate::harness::Read::Timeout => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
    assert!(answered.is_some(), "nothing answered within 5 s");
    drop(client);
    wait_for_series(metrics, "dotgate_connections_open", 0.0).await;
    assert_eq!(
        value(&scrape(metrics).await, "dotgate_queries_in_flight"),
        0.0
    );
}

/// DoT with `--rate-limit-action close`: the query over the limit closes
/// the connection, after the replies in flight are written; counted as
/// closed for `rate_limited`, and never sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_close_answers_what_is_in_flight_then_closes() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--max-qps-per-ip",
            "1",
            "--max-qps-burst",
            "2",
            "--rate-limit-action",
            "close",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    scrape(metrics).await;
    let mut client = server.client().await;
    let mut batch = Vec::new();
    for id in 1..=3u16 {
        batch.extend(crate::harness::frame(&encode(&query(
            id,
            &format!("c{id}.test."),
            RecordType::A,
        ))));
    }
    client.send_raw(&batch).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = client.recv().await;
        ids.push(reply.metadata.id);
    }
    ids.sort();
    assert_eq!(ids, [1, 2]);
    assert!(
        matches!(client.read(REPLY_WAIT).await, crate::harness::Read::Eof),
        "closed cleanly after the replies in flight"
    );
    wait_for_series(
        metrics,
        "dotgate_connections_closed_total{reason=\"rate_limited\"}",
        1.0,
    )
    .await;
    let names: Vec<String> = up.received().iter().map(|q| q.name.clone()).collect();
    assert!(!names.contains(&"c3.test.".to_string()), "{names:?}");
}
