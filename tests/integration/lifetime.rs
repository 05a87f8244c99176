//! Time: SERVFAIL on upstream timeout (R11) and the idle timeout (R7, R13).

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{assert_answer, assert_reply_header, query, with_opt, Read, Server};
use crate::upstream::Upstream;

/// Asserts `elapsed` is within [0.8, 3] times `nominal`.
fn assert_about(elapsed: Duration, nominal: Duration, what: &str) {
    assert!(
        elapsed >= nominal.mul_f64(0.8) && elapsed <= nominal * 3,
        "{what} after {elapsed:?}, expected about {nominal:?}"
    );
}

/// R11: a query the upstream never answers gets SERVFAIL with the client's
/// ID and question, about the upstream timeout later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_query_gets_servfail_after_the_upstream_timeout() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-timeout", "500ms"]).await;
    let mut client = server.client().await;
    let name = "drop.example.test.";
    let sent = Instant::now();
    client.send(&query(0x0bad, name, RecordType::A)).await;
    let reply = client.recv().await;
    assert_about(sent.elapsed(), Duration::from_millis(500), "SERVFAIL");
    assert_reply_header(&reply, 0x0bad, name, RecordType::A, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    // Sent, then once more after the resend delay (a lost datagram?).
    assert_eq!(up.received().len(), 2);

    // The connection goes on.
    client
        .send(&query(0x0bae, "alive.example.test.", RecordType::A))
        .await;
    assert_answer(
        &client.recv().await,
        0x0bae,
        "alive.example.test.",
        RecordType::A,
    );
}

/// R11: with nothing listening at the upstream's port, every query still
/// gets SERVFAIL (QDCOUNT 1, OPT mirrored) within about the upstream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_gives_servfail() {
    let dead = {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.local_addr().unwrap()
    };
    let server = Server::start(dead, &["--upstream-timeout", "500ms"]).await;
    let mut client = server.client().await;
    for (id, name, opt) in [
        (1, "dead-a.example.test.", false),
        (2, "dead-b.example.test.", true),
    ] {
        let q = query(id, name, RecordType::AAAA);
        let sent = Instant::now();
        client.send(&if opt { with_opt(q) } else { q }).await;
        let reply = client.recv().await;
        assert_about(sent.elapsed(), Duration::from_millis(500), "SERVFAIL");
        assert_reply_header(&reply, id, name, RecordType::AAAA, ResponseCode::ServFail);
        assert_eq!(reply.edns.is_some(), opt, "OPT mirrors the query");
    }
}

/// R7, R13: an idle connection is closed after the idle timeout, cleanly:
/// the client reads close_notify (a clean EOF), not a bare FIN or RST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_with_close_notify() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--idle-timeout", "1s"]).await;
    let mut client = server.client().await;
    let name = "before-idle.example.test.";
    client.send(&query(1, name, RecordType::A)).await;
    assert_answer(&client.recv().await, 1, name, RecordType::A);
    let answered = Instant::now();
    match client.read(Duration::from_secs(5)).await {
        Read::Eof => {}
        Read::Error(e) => panic!("closed without close_notify: {e}"),
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    assert_about(answered.elapsed(), Duration::from_secs(1), "idle close");
}

/// R13: the idle timer does not run while a query is in flight: a reply that
/// takes 2 s (idle timeout 1 s) still arrives, and the connection closes only
/// about one idle timeout after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_in_flight_keeps_an_idle_connection_open() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--idle-timeout", "1s", "--upstream-timeout", "4s"],
    )
    .await;
    let mut client = server.client().await;
    let name = "delay-2000.in-flight.example.test.";
    let sent = Instant::now();
    client.send(&query(42, name, RecordType::A)).await;
    let reply = match client.read(Duration::from_secs(5)).await {
        Read::Frame(bytes) => crate::harness::parse(&bytes),
        other => panic!("the connection closed with a query in flight: {other:?}"),
    };
    assert_answer(&reply, 42, name, RecordType::A);
    assert!(sent.elapsed() >= Duration::from_millis(1900));
    let answered = Instant::now();
    match client.read(Duration::from_secs(5)).await {
        Read::Eof => {}
        Read::Error(e) => panic!("closed without close_notify: {e}"),
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
    assert_about(answered.elapsed(), Duration::from_secs(1), "idle close");
}
