//! A resolver's bad day and broken input: what one client or one name does
//! never costs another client its answers. Every test here asserts that each
//! query sent got exactly one reply, with its own ID and question.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{
    assert_answer, assert_reply_header, encode, frame, query, Client, Server, REPLY_WAIT,
};
use crate::upstream::{Transport, Upstream};

/// Sends `names` (A queries, IDs from `first_id`) pipelined in one write and
/// checks that each gets exactly one reply, its own answer, in any order.
pub async fn ask_all(client: &mut Client, names: &[String], first_id: u16) {
    let mut batch = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let id = first_id.wrapping_add(i as u16);
        batch.extend(frame(&encode(&query(id, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    let mut answered = vec![false; names.len()];
    for _ in 0..names.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id.wrapping_sub(first_id));
        assert!(
            index < names.len() && !answered[index],
            "unexpected or repeated ID {}",
            reply.metadata.id
        );
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &names[index], RecordType::A);
    }
}

/// Defect: three queries in a row for names whose servers never answer
/// marked the only upstream down, and then every client got SERVFAIL until
/// the next probe. A resolver that answers other queries stays in service:
/// 20 such queries, interleaved with other clients' ordinary ones, cost
/// only their own answers (SERVFAIL, with their ID and question).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_time_out_never_take_a_serving_upstream_out() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &[
            "--upstream-timeout",
            "400ms",
            // No probe during the test: a wrong verdict would last.
            "--health-check-interval",
            "60s",
        ],
    )
    .await;
    let mut slow = server.client().await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(server.client().await);
    }
    let dropped = tokio::spawn(async move {
        // In bursts, as a page full of names on one dead domain: their
        // timeouts come together, with no answer between them.
        for burst in 0..5u16 {
            let mut batch = Vec::new();
            for id in burst * 4..burst * 4 + 4 {
                let name = format!("drop.n{id}.slow.test.");
                batch.extend(frame(&encode(&query(id, &name, RecordType::A))));
            }
            slow.send_raw(&batch).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        for _ in 0..20 {
            let reply = slow.recv().await;
            let id = reply.metadata.id;
            let name = format!("drop.n{id}.slow.test.");
            assert_reply_header(&reply, id, &name, RecordType::A, ResponseCode::ServFail);
        }
    });
    let mut tasks = Vec::new();
    for (c, mut client) in others.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for id in 0..40u16 {
                let name = format!("n{id}.c{c}.fine.test.");
                client.send(&query(id, &name, RecordType::A)).await;
                assert_answer(&client.recv().await, id, &name, RecordType::A);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    dropped.await.unwrap();
}

/// A query for `name` A of exactly `len` bytes, without OPT: the question,
/// then one authority record (type NULL) whose data fills the rest, as a
/// hostile or broken client could send.
fn oversized_query(id: u16, name: &str, len: usize) -> Vec<u8> {
    let mut q = encode(&query(id, name, RecordType::A));
    // NSCOUNT = 1.
    q[8..10].copy_from_slice(&1u16.to_be_bytes());
    // Owner: the root; type NULL (10), class IN, TTL 0, then RDLENGTH.
    let rdlen = len - q.len() - 11;
    q.extend_from_slice(&[0, 0, 10, 0, 1, 0, 0, 0, 0]);
    q.extend_from_slice(&u16::try_from(rdlen).unwrap().to_be_bytes());
    q.resize(len, 0xaa);
    q
}

/// Defect: a 65,535-byte query without OPT grew past its length prefix on a
/// pooled `tcp://` connection, and the upstream read its tail as the start
/// of another message, costing the other clients their answers. Now each
/// query on the shared connection gets its own answer, the big one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_query_never_desynchronises_a_shared_tcp_upstream() {
    let up = Upstream::start().await;
    let entry = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        "3s",
        "--health-check-interval",
        "60s",
    ])
    .await;
    let mut other = server.client().await;
    let mut big = server.client().await;
    // Queries of the other client in flight on the pooled connection (fewer
    // than its pipeline depth, so all share one connection).
    let before: Vec<String> = (0..10)
        .map(|i| format!("delay-300.b{i}.shared.test."))
        .collect();
    let after: Vec<String> = (0..20).map(|i| format!("a{i}.shared.test.")).collect();
    let mut batch = Vec::new();
    for (i, name) in before.iter().enumerate() {
        batch.extend(frame(&encode(&query(i as u16, name, RecordType::A))));
    }
    other.send_raw(&batch).await;
    up.wait_for_queries(10, REPLY_WAIT).await;

    let started = Instant::now();
    for len in [65_535, 65_530, 65_525] {
        big.send_raw(&frame(&oversized_query(7, "big.shared.test.", len)))
            .await;
        let reply = big.recv().await;
        // An answer of its own, or an error reply of its own: never another's.
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(
            crate::upstream::lower_fqdn(&reply.queries[0].name().to_ascii()),
            "big.shared.test."
        );
    }
    ask_all(&mut other, &after, 100).await;
    let mut answered = vec![false; before.len()];
    for _ in 0..before.len() {
        let reply = other.recv().await;
        let index = usize::from(reply.metadata.id);
        assert!(index < before.len() && !answered[index]);
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &before[index], RecordType::A);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count(Transport::Udp), 0, "tcp:// never uses UDP");
    // Each query reached the upstream once: no connection was lost and
    // nothing was resent.
    assert_eq!(up.count(Transport::Tcp), before.len() + after.len() + 3);
}
