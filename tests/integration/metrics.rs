//! The operator's HTTP endpoint (`--metrics-listen`): /metrics moves by the
//! right amounts after a known sequence of events, /readyz waits for an
//! upstream answer, /healthz answers, other paths are 404.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{assert_answer, assert_reply_header, frame, free_port, query, Read, Server};
use crate::upstream::Upstream;

/// An HTTP response as a test sees it.
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` over HTTP/1.1 with `Connection: close`, within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP GET"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// A free 127.0.0.1 address for `--metrics-listen`.
pub fn metrics_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// GETs `path` until the endpoint is up (it starts after the certificate
/// and upstreams are set up): at most 5 s.
pub async fn get_when_up(addr: SocketAddr, path: &str) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(addr, path).await {
            Ok(response) => return response,
            Err(e) if Instant::now() >= deadline => panic!("metrics endpoint never up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The value of one series (`name{labels}` exactly as exposed) in a scrape.
pub fn value(scrape: &str, series: &str) -> f64 {
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{series}: {e}"))
    };
    if let Some(v) = scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    {
        return parse(v);
    }
    // A family name alone (`dotgate_queries_total`) stands for the sum of
    // its series over every label value (such as each transport).
    let labelled = format!("{series}{{");
    let values: Vec<f64> = scrape
        .lines()
        .filter(|line| line.starts_with(&labelled))
        .filter_map(|line| line.rsplit_once(' ').map(|(_, v)| parse(v)))
        .collect();
    assert!(
        !series.contains('{') && !values.is_empty(),
        "{series} is not in the scrape:\n{scrape}"
    );
    values.iter().sum()
}

/// A scrape once the server serves: its metrics endpoint is up before the
/// upstream pool has registered its per-upstream series (so that `/readyz`
/// can say 503 meanwhile), and a scrape taken in between lacks them.
pub async fn scrape_when_serving(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        if text.contains("dotgate_upstream_queries_total{") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no per-upstream series within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn scrape(addr: SocketAddr) -> String {
    let response = get_when_up(addr, "/metrics").await;
    assert_eq!(response.status, 200, "/metrics: {}", response.body);
    response.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_unknown_paths() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(up.addr, &["--metrics-listen", &metrics.to_string()]).await;

    let healthz = get_when_up(metrics, "/healthz").await;
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    let unknown = http_get(metrics, "/nope").await.unwrap();
    assert_eq!(unknown.status, 404);
    let root = http_get(metrics, "/").await.unwrap();
    assert_eq!(root.status, 404);

    let readyz = http_get(metrics, "/readyz").await.unwrap();
    assert_eq!(
        readyz.status, 503,
        "ready before any upstream answered: {}",
        readyz.body
    );
    assert!(readyz.body.contains("upstream"), "{}", readyz.body);

    let mut client = server.client().await;
    client
        .send(&query(7, "ready.metrics.test.", RecordType::A))
        .await;
    assert_answer(
        &client.recv().await,
        7,
        "ready.metrics.test.",
        RecordType::A,
    );
    let readyz = http_get(metrics, "/readyz").await.unwrap();
    assert_eq!(readyz.status, 200, "{}", readyz.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_events_that_happened() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--metrics-listen",
            &metrics.to_string(),
            "--idle-timeout",
            "300ms",
        ],
    )
    .await;
    let before = scrape_when_serving(metrics).await;

    // Three answered queries, one relayed SERVFAIL, one FORMERR made here.
    let mut client = server.client().await;
    for id in 1..=3u16 {
        let name = format!("q{id}.metrics.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }
    client
        .send(&query(4, "servfail.metrics.test.", RecordType::A))
        .await;
    let reply = client.recv().await;
    assert_reply_header(
        &reply,
        4,
        "servfail.metrics.test.",
        RecordType::A,
        hickory_proto::op::ResponseCode::ServFail,
    );
    // A header claiming one question, and no question: FORMERR.
    let mut bad = vec![0u8; 12];
    bad[0..2].copy_from_slice(&5u16.to_be_bytes());
    bad[5] = 1;
    client.send_raw(&frame(&bad)).await;
    let formerr = client.recv().await;
    assert_eq!(
        formerr.metadata.response_code,
        hickory_proto::op::ResponseCode::FormErr
    );
    // Nothing more: the idle timeout closes the connection.
    match client.read(Duration::from_secs(3)).await {
        Read::Eof => {}
        other => panic!("expected an idle close, got {other:?}"),
    }

    // Plain DNS over TCP: refused, never answered.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(&frame(&crate::harness::encode(&query(
            9,
            "plain.metrics.test.",
            RecordType::A,
        ))))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), plain.read(&mut buf))
        .await
        .expect("plaintext connection closed");
    assert!(matches!(read, Ok(0) | Err(_)), "plaintext got {read:?}");

    // The close is counted once the connection task ends, after it has
    // lingered for the client's FIN (2 s at most): poll until then.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(metrics).await;
        let closed = "dotgate_connections_closed_total{reason=\"idle\"}";
        if value(&after, closed) > value(&before, closed) || Instant::now() >= deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("dotgate_queries_total"), 5.0);
    assert_eq!(moved("dotgate_replies_total{rcode=\"noerror\"}"), 3.0);
    assert_eq!(moved("dotgate_replies_total{rcode=\"servfail\"}"), 1.0);
    assert_eq!(moved("dotgate_replies_total{rcode=\"formerr\"}"), 1.0);
    assert_eq!(moved("dotgate_replies_total{rcode=\"nxdomain\"}"), 0.0);
    // Four queries went upstream over UDP (health probes may add more).
    let upstream = up.addr.to_string();
    let udp =
        format!("dotgate_upstream_queries_total{{transport=\"udp\",upstream=\"{upstream}\"}}");
    let udp_alt =
        format!("dotgate_upstream_queries_total{{upstream=\"{upstream}\",transport=\"udp\"}}");
    let series = if after.contains(&udp) { udp } else { udp_alt };
    assert!(moved(&series) >= 4.0, "{series} moved {}", moved(&series));
    assert_eq!(
        value(
            &after,
            &format!("dotgate_upstream_up{{upstream=\"{upstream}\"}}")
        ),
        1.0
    );
    assert_eq!(
        moved("dotgate_synthesized_replies_total{rcode=\"formerr\",cause=\"unparsable\"}"),
        1.0
    );
    assert_eq!(
        moved("dotgate_synthesized_replies_total{rcode=\"servfail\",cause=\"upstream_timeout\"}"),
        0.0,
        "the upstream's SERVFAIL is relayed, not synthesized"
    );
    assert_eq!(
        moved("dotgate_connections_refused_total{reason=\"plaintext\"}"),
        1.0
    );
    assert_eq!(
        moved("dotgate_connections_closed_total{reason=\"idle\"}"),
        1.0
    );
    assert_eq!(moved("dotgate_connections_accepted_total"), 2.0);
    assert_eq!(
        moved("dotgate_tls_handshakes_total{result=\"ok\",version=\"1.3\"}"),
        1.0
    );
    assert_eq!(value(&after, "dotgate_connections_open"), 0.0);
    assert_eq!(value(&after, "dotgate_queries_in_flight"), 0.0);
    assert_eq!(moved("dotgate_query_duration_seconds_count"), 5.0);
    // The FORMERR never reached the upstream.
    assert_eq!(moved("dotgate_upstream_rtt_seconds_count"), 4.0);
    // The served certificate expires in the future, under its subject.
    let not_after = after
        .lines()
        .find(|l| l.starts_with("dotgate_certificate_not_after_timestamp_seconds{subject="))
        .unwrap_or_else(|| panic!("no certificate gauge:\n{after}"));
    assert!(not_after.contains("dns.test"), "{not_after}");
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expires: f64 = not_after.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(expires > unix_now, "{not_after}");
}

/// Every metric the Grafana dashboard queries is one dotgate exposes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exposed_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/dotgate.json");
    let dashboard = std::fs::read_to_string(path).expect("read the dashboard");
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let _server = Server::start(up.addr, &["--metrics-listen", &metrics.to_string()]).await;
    let exposed = scrape_when_serving(metrics).await;
    let mut checked = 0;
    for (start, _) in dashboard.match_indices("dotgate_") {
        let name: String = dashboard[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name == "dotgate_" {
            continue;
        }
        assert!(
            exposed.contains(&format!("# TYPE {name} "))
                || exposed.contains(&format!("{name}{{"))
                || exposed.contains(&format!("{name} ")),
            "the dashboard queries {name}, which /metrics does not expose"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} metric references found");
}
