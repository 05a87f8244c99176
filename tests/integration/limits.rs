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

    let started = Instant::now();
    let third = tokio::time::timeout(
        Duration::from_secs(3),
        Client::try_connect(server.addr, &server.pki),
    )
    .await
    .expect("the third connection must be closed, not left hanging");
    match third {
        Err(_) => {}
        Ok(mut third) => match third.read(Duration::from_secs(2)).await {
            Read::Eof | Read::Error(_) => {}
            other => panic!("the third connection should be closed, got {other:?}"),
        },
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, took {:?}",
        started.elapsed()
    );

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
