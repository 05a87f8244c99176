//! Framing and pipelining on one connection (R1, R8, R9, R10).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{assert_answer, encode, frame, query, Read, Server, REPLY_WAIT};
use crate::upstream::Upstream;

/// R10: a slow query then a fast one on one connection: the fast reply
/// arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_reply_overtakes_a_slow_one() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-timeout", "2s"]).await;
    let mut client = server.client().await;
    let slow = "delay-500.slow.example.test.";
    let fast = "fast.example.test.";
    let mut both = frame(&encode(&query(1, slow, RecordType::A)));
    both.extend(frame(&encode(&query(2, fast, RecordType::A))));
    let sent = Instant::now();
    client.send_raw(&both).await;

    let first = client.recv().await;
    let first_after = sent.elapsed();
    assert_answer(&first, 2, fast, RecordType::A);
    assert!(
        first_after < Duration::from_millis(400),
        "the fast reply waited for the slow one: {first_after:?}"
    );
    let second = client.recv().await;
    assert_answer(&second, 1, slow, RecordType::A);
    assert!(sent.elapsed() >= Duration::from_millis(450));
}

/// R9: 200 pipelined queries with random upstream delays are all answered;
/// every frame is a valid DNS message with the right ID and question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pipelined_queries_are_all_answered() {
    const QUERIES: u16 = 200;
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-timeout", "2s"]).await;
    let mut client = server.client().await;
    let mut expected: HashMap<u16, String> = HashMap::new();
    let mut batch = Vec::new();
    for i in 0..QUERIES {
        let id = i.wrapping_mul(331).wrapping_add(17);
        let delay = rand::random_range(0..=100u32);
        let name = format!("delay-{delay}.p{i}.pipeline.test.");
        batch.extend(frame(&encode(&query(id, &name, RecordType::TXT))));
        assert!(expected.insert(id, name).is_none());
    }
    client.send_raw(&batch).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0..QUERIES {
        assert!(Instant::now() < deadline, "only {n} replies in 10 s");
        let reply = client.recv().await;
        let id = reply.metadata.id;
        let name = expected
            .remove(&id)
            .unwrap_or_else(|| panic!("reply {n}: ID {id} unknown or answered twice"));
        assert_answer(&reply, id, &name, RecordType::TXT);
    }
    assert!(expected.is_empty());
    match client.read(Duration::from_millis(200)).await {
        Read::Timeout => {}
        other => panic!("nothing more was expected, got {other:?}"),
    }
}

/// R1: cleartext DNS over TCP to the TLS port gets no reply, and the
/// connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_dns_gets_no_reply_and_a_close() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&frame(&encode(&query(
        9,
        "plain.example.test.",
        RecordType::A,
    ))))
    .await
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
        .await
        .expect("the server must close a plaintext connection, not leave it open");
    match read {
        Ok(0) => {}
        Ok(n) => panic!("cleartext got {n} bytes back: {:02x?}", &buf[..n]),
        // A close with unread data in the server's buffer is a reset: fine.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "closed at once");
    assert!(up.received().is_empty(), "nothing forwarded");
}

/// R8: a query written one byte at a time, each byte its own TLS record, is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_sent_one_byte_at_a_time_is_answered() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;
    let name = "one-byte-at-a-time.example.test.";
    let bytes = frame(&encode(&query(0x0101, name, RecordType::AAAA)));
    for byte in &bytes {
        client.send_raw(std::slice::from_ref(byte)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_answer(&client.recv().await, 0x0101, name, RecordType::AAAA);
}

/// R8: a frame length shorter than a DNS header (5, and 0) closes the
/// connection, without a reply; what came before it is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_shorter_than_a_header_closes_the_connection() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    for bad in [&[0u8, 5, 1, 2, 3, 4, 5][..], &[0, 0]] {
        let mut client = server.client().await;
        let name = "before-bad-frame.example.test.";
        client.send(&query(3, name, RecordType::A)).await;
        assert_answer(&client.recv().await, 3, name, RecordType::A);

        client.send_raw(bad).await;
        match client.read(REPLY_WAIT).await {
            Read::Eof | Read::Error(_) => {}
            other => panic!("frame {bad:?}: expected a close, got {other:?}"),
        }
    }
    assert_eq!(up.received().len(), 2);
}
