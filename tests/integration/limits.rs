//! Connection and in-flight limits (R16).

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::harness::{assert_answer, encode, frame, query, Client, Read, Server};
use crate::upstream::Upstream;

/// R16: over --max-connections, a new connection is closed at once; the
/// open ones keep working, and a freed slot can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_the_cap_is_closed_at_once() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--max-connections", "2"]).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    for (id, client) in [(1, &mut first), (2, &mut second)] {
        let name = format!("before.c{id}.cap.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }

    // "At once": closed well within the 10 s handshake timeout, which is
    // what a connection that was admitted and then ignored would wait for
    // (an event with a bound, not a wall-clock race).
    let third = tokio::time::timeout(
        Duration::from_secs(3),
        Client::try_connect(server.addr, &server.pki),
    )
    .await
    .expect("the third connection must be closed, not left hanging");
    match third {
        Err(_) => {}
        Ok(mut third) => match third.read(Duration::from_secs(3)).await {
            Read::Eof | Read::Error(_) => {}
            other => panic!("the third connection should be closed, got {other:?}"),
        },
    }

    for (id, client) in [(11, &mut first), (12, &mut second)] {
        let name = format!("after.c{id}.cap.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }

    // Closing one frees its slot for a new connection.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    let name = "again.cap.test.";
    loop {
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        if let Ok(mut client) = Client::try_connect(server.addr, &server.pki).await {
            client.send(&query(21, name, RecordType::A)).await;
            if let Read::Frame(bytes) = client.read(Duration::from_secs(2)).await {
                assert_answer(&crate::harness::parse(&bytes), 21, name, RecordType::A);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// R16: with --max-inflight 4, 20 pipelined slow queries are all answered
/// (backpressure, not drops), never more than 4 at the upstream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_cap_applies_backpressure_without_drops() {
    const QUERIES: u16 = 20;
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--max-inflight", "4", "--upstream-timeout", "2s"],
    )
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..QUERIES)
        .map(|i| format!("delay-200.q{i}.inflight.test."))
        .collect();
    let mut batch = Vec::new();
    for (id, name) in (0..QUERIES).zip(&names) {
        batch.extend(frame(&encode(&query(100 + id, name, RecordType::A))));
    }
    let sent = Instant::now();
    client.send_raw(&batch).await;
    let mut answered = vec![false; QUERIES as usize];
    for _ in 0..QUERIES {
        let reply = client.recv().await;
        let index = reply.metadata.id.wrapping_sub(100) as usize;
        assert!(
            index < answered.len() && !answered[index],
            "ID {}",
            reply.metadata.id
        );
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &names[index], RecordType::A);
    }
    assert_eq!(
        up.max_outstanding(),
        4,
        "queries at the upstream at once: at most the cap, and the cap reached"
    );
    // Five rounds of 200 ms each, at the least.
    assert!(
        sent.elapsed() >= Duration::from_millis(800),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(up.received().len(), QUERIES as usize);
}

/// Expects a connection attempt to be refused at once: either the handshake
/// fails or the first read sees the connection closed, both well within the
/// 10 s handshake timeout that an ignored connection would wait for.
async fn assert_refused_at_once(server: &Server) {
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        Client::try_connect(server.addr, &server.pki),
    )
    .await
    .expect("a refused connection must be closed, not left hanging");
    if let Ok(mut client) = attempt {
        client
            .send(&query(99, "refused.test.", RecordType::A))
            .await;
        match client.read(Duration::from_secs(3)).await {
            Read::Eof | Read::Error(_) => {}
            other => panic!("the connection should be refused, got {other:?}"),
        }
    }
}

/// R16: over --max-connections-per-ip, a new connection from the same
/// address is refused at once while the open ones keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_the_per_address_cap_is_refused() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--max-connections-per-ip", "2"]).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    assert_refused_at_once(&server).await;
    for (id, client) in [(1, &mut first), (2, &mut second)] {
        let name = format!("c{id}.per-ip.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }
    assert_eq!(
        up.received().len(),
        2,
        "the refused connection sent nothing upstream"
    );
}

/// R16: with --max-handshakes-per-ip-per-sec 2, a third handshake within the
/// same second is refused, and the allowance comes back a moment later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_per_address_rate_are_refused() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--max-handshakes-per-ip-per-sec", "2"]).await;
    let mut first = server.client().await;
    let _second = server.client().await;
    assert_refused_at_once(&server).await;
    // The open connections are not affected.
    first.send(&query(1, "rate.test.", RecordType::A)).await;
    assert_answer(&first.recv().await, 1, "rate.test.", RecordType::A);
    // Refilled at 2 per second: a new handshake is allowed again soon.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut later = server.client().await;
    later
        .send(&query(2, "later.rate.test.", RecordType::A))
        .await;
    assert_answer(&later.recv().await, 2, "later.rate.test.", RecordType::A);
}

/// R15: with --max-queries-per-connection 3, dotgate reads three queries,
/// answers all three even though they are slow, then closes cleanly
/// (close_notify); the queries after the third are never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_after_max_queries_answers_what_is_in_flight() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--max-queries-per-connection", "3", "--idle-timeout", "10s"],
    )
    .await;
    let mut client = server.client().await;
    let mut batch = Vec::new();
    for id in 0..5u16 {
        let name = format!("delay-300.q{id}.retire.test.");
        batch.extend(frame(&encode(&query(id, &name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = client.recv().await;
        let name = format!("delay-300.q{}.retire.test.", reply.metadata.id);
        assert_answer(&reply, reply.metadata.id, &name, RecordType::A);
        ids.push(reply.metadata.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2]);
    match client.read(Duration::from_secs(3)).await {
        Read::Eof => {}
        other => panic!("expected a clean close after the third reply, got {other:?}"),
    }
    assert_eq!(up.received().len(), 3);
}

/// R15: with --max-connection-age 2s, a query in flight when the age is
/// reached is still answered, then the connection closes cleanly.
///
/// The query goes out at once and takes 3 s, so it is in flight when the
/// age is reached however late (within 2 s) dotgate reads it; no sleep
/// races the age. The order (reply, then close) and a lower bound are
/// asserted, not a wall-clock window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_at_max_age_answers_what_is_in_flight() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &[
            "--max-connection-age",
            "2s",
            "--idle-timeout",
            "30s",
            "--upstream-timeout",
            "10s",
        ],
    )
    .await;
    let mut client = server.client().await;
    let name = "delay-3000.age.test.";
    let sent = Instant::now();
    client.send(&query(7, name, RecordType::A)).await;
    assert_answer(&client.recv().await, 7, name, RecordType::A);
    match client.read(Duration::from_secs(10)).await {
        Read::Eof => {}
        other => panic!("expected a clean close after the reply, got {other:?}"),
    }
    // Not retired before the reply (which took 3 s), nor left open for the
    // 30 s idle timeout (the read above is bounded by 10 s).
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
}
