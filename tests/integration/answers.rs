//! What comes back: answers, TC fallback, spoofing, EDNS, FORMERR, and
//! isolation between connections that reuse the same IDs.

use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::harness::{
    assert_answer, assert_reply_header, encode, frame, parse, query, with_opt, Read, Server,
    REPLY_WAIT,
};
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::{big_txt, Transport, Upstream, SPOOFED_A};

/// R12: ID echoed, question echoed, and the upstream's records delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_aaaa_and_txt() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;
    let cases = [
        (0x1234, "www.example.test.", RecordType::A),
        (0xbeef, "v6.example.test.", RecordType::AAAA),
        (0, "text.example.test.", RecordType::TXT),
    ];
    for (id, name, rtype) in cases {
        client.send(&query(id, name, rtype)).await;
        let reply = client.recv().await;
        assert_answer(&reply, id, name, rtype);
        assert!(reply.metadata.recursion_desired, "RD echoed");
        assert!(!reply.metadata.truncation);
    }
    assert_eq!(up.count(Transport::Udp), 3);
    let seen = up.received();
    let asked: Vec<_> = seen.iter().map(|r| (r.name.as_str(), r.rtype)).collect();
    let sent: Vec<_> = cases
        .iter()
        .map(|&(_, name, rtype)| (name, rtype))
        .collect();
    assert_eq!(asked, sent, "the upstream was asked the client's questions");
    // R21: the upstream sees IDs of dotgate's choosing, not the client's.
    assert!(
        seen.iter().zip(&cases).any(|(r, &(id, _, _))| r.id != id),
        "client IDs forwarded unchanged: {seen:?}"
    );
}

/// R19: a truncated UDP answer is asked again over TCP and comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_answer_comes_back_complete_over_tcp() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-timeout", "2s"]).await;
    let mut client = server.client().await;
    let name = "tc.big.example.test.";
    client.send(&query(77, name, RecordType::TXT)).await;
    let bytes = match client.read(REPLY_WAIT).await {
        Read::Frame(bytes) => bytes,
        other => panic!("expected the big answer, got {other:?}"),
    };
    assert!(bytes.len() > 4000, "reply is {} bytes", bytes.len());
    let reply = parse(&bytes);
    assert_reply_header(&reply, 77, name, RecordType::TXT, ResponseCode::NoError);
    assert!(!reply.metadata.truncation, "TC must be clear over TLS");
    assert_eq!(reply.answers.len(), 1);
    let want = big_txt(name);
    let want = RData::TXT(TXT::from_bytes(want.iter().map(Vec::as_slice).collect()));
    assert_eq!(reply.answers[0].data, want);
    assert_eq!(up.count(Transport::Udp), 1, "asked once over UDP");
    assert_eq!(up.count(Transport::Tcp), 1, "then once over TCP");
}

/// R21: replies with a wrong ID, with the right ID and another question, or
/// with the right ID and question from another source port, are ignored;
/// the real one is delivered. The first two are counted as mismatched (the
/// kernel drops the third: the socket is connected to the upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_upstream_replies_are_ignored() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let metrics_flag = metrics.to_string();
    let server = Server::start(
        up.addr,
        &[
            "--upstream-timeout",
            "1s",
            "--metrics-listen",
            &metrics_flag,
        ],
    )
    .await;
    let mut client = server.client().await;
    for (id, name) in [(5, "spoof.one.test."), (6, "spoof.two.test.")] {
        client.send(&query(id, name, RecordType::A)).await;
        let reply = client.recv().await;
        assert_ne!(
            reply.answers.first().map(|r| r.data.clone()),
            Some(RData::A(A(SPOOFED_A))),
            "a spoofed reply was delivered"
        );
        assert_answer(&reply, id, name, RecordType::A);
    }
    // Each query was asked exactly once: the real reply came on the first try.
    assert_eq!(up.count(Transport::Udp), 2);
    match client.read(Duration::from_millis(300)).await {
        Read::Timeout => {}
        other => panic!("one reply per query, then {other:?}"),
    }
    let text = scrape(metrics).await;
    assert_eq!(
        value(&text, "dotgate_upstream_mismatched_replies_total"),
        4.0,
        "a wrong ID and a wrong question per query"
    );
}

/// RFC 5452 §9.2: over 6,000 queries the upstream sees them come from more
/// source ports than dotgate's four UDP sockets (each is replaced by one on
/// a new port after 1,000 queries), every answer still matches its query,
/// and after the change a reply forged from another port is still ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_source_ports_rotate_and_answers_keep_matching() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--health-check-interval",
            "60s",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let mut tasks = Vec::new();
    for c in 0..6 {
        let mut client = server.client().await;
        let names: Vec<String> = (0..1000)
            .map(|i| format!("q{i}.c{c}.ports.test."))
            .collect();
        tasks.push(tokio::spawn(async move {
            crate::harness::ask_all(&mut client, &names, 0).await;
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
    let received = up.received();
    // Each query sent once, but for the UDP resends dotgate counts (a busy
    // machine can delay a reply past the resend delay).
    let resends = value(&scrape(metrics).await, "dotgate_upstream_udp_resends_total");
    let asked: std::collections::HashSet<&str> = received.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(asked.len(), 6000, "every query reached the upstream");
    assert_eq!(
        received.len() as f64,
        6000.0 + resends,
        "each query sent once, resends aside"
    );
    let ports: std::collections::HashSet<u16> = received.iter().map(|r| r.source_port).collect();
    assert!(
        ports.len() >= 8,
        "6,000 queries from {} source ports",
        ports.len()
    );

    let mut client = server.client().await;
    let before = value(
        &scrape(metrics).await,
        "dotgate_upstream_mismatched_replies_total",
    );
    for (id, name) in [(5, "spoof.one.ports.test."), (6, "spoof.two.ports.test.")] {
        client.send(&query(id, name, RecordType::A)).await;
        let reply = client.recv().await;
        assert_answer(&reply, id, name, RecordType::A);
    }
    let text = scrape(metrics).await;
    assert_eq!(
        value(&text, "dotgate_upstream_mismatched_replies_total") - before,
        4.0,
        "a wrong ID and a wrong question per query; the wrong port never reached dotgate"
    );
}

/// R17: OPT in the query gives exactly one OPT in the reply; no OPT gives
/// none, although dotgate adds one toward the upstream, which echoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_presence_in_reply_mirrors_the_query() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;

    let name = "with-opt.example.test.";
    client.send(&with_opt(query(21, name, RecordType::A))).await;
    let bytes = frame_bytes(client.read(REPLY_WAIT).await);
    assert_eq!(count_opt_records(&bytes), 1, "exactly one OPT");
    let reply = parse(&bytes);
    assert_answer(&reply, 21, name, RecordType::A);
    assert!(reply.edns.is_some());

    let name = "without-opt.example.test.";
    client.send(&query(22, name, RecordType::A)).await;
    let bytes = frame_bytes(client.read(REPLY_WAIT).await);
    assert_eq!(count_opt_records(&bytes), 0, "no OPT");
    let reply = parse(&bytes);
    assert_answer(&reply, 22, name, RecordType::A);
    assert!(reply.edns.is_none());
    assert!(reply.additionals.is_empty());

    let seen = up.received();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.had_opt),
        "dotgate sends OPT upstream in both cases, so the upstream answered with OPT: {seen:?}"
    );
}

/// R11: a query with a readable header but a broken body gets FORMERR with
/// the client's ID, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_query_gets_formerr_and_connection_stays_usable() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;

    // QDCOUNT 1, but the question stops in the middle of the name.
    let whole = encode(&query(0x4242, "cut.example.test.", RecordType::A));
    client.send_raw(&frame(&whole[..12 + 5])).await;
    let reply = client.recv().await;
    assert_eq!(reply.metadata.id, 0x4242);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert!(reply.answers.is_empty());

    // QDCOUNT 2.
    let mut two = Message::query();
    two.metadata.id = 0x4343;
    for name in ["one.example.test.", "two.example.test."] {
        two.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    }
    client.send(&two).await;
    let reply = client.recv().await;
    assert_eq!(reply.metadata.id, 0x4343);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    // The connection still answers.
    client
        .send(&query(0x4444, "after.example.test.", RecordType::A))
        .await;
    assert_answer(
        &client.recv().await,
        0x4444,
        "after.example.test.",
        RecordType::A,
    );
    assert_eq!(up.received().len(), 1, "broken queries are not forwarded");
}

/// R12, R21: 50 connections at once, all using IDs 0-9, each get the
/// answers to their own questions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_with_the_same_ids_get_their_own_answers() {
    const CONNECTIONS: usize = 50;
    const IDS: u16 = 10;
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    // All connections open first, so that they are all in use at once.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.client().await);
    }
    let mut tasks = Vec::new();
    for (conn, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let names: Vec<String> = (0..IDS)
                .map(|id| {
                    let delay = rand::random_range(0..30u32);
                    format!("delay-{delay}.c{conn}-q{id}.xtalk.test.")
                })
                .collect();
            let mut batch = Vec::new();
            for (id, name) in (0..IDS).zip(&names) {
                batch.extend(frame(&encode(&query(id, name, RecordType::TXT))));
            }
            client.send_raw(&batch).await;
            let mut seen = [false; IDS as usize];
            for _ in 0..IDS {
                let reply = client.recv().await;
                let id = reply.metadata.id;
                assert!(id < IDS, "connection {conn}: unknown ID {id}");
                assert!(!seen[id as usize], "connection {conn}: ID {id} twice");
                seen[id as usize] = true;
                assert_answer(&reply, id, &names[id as usize], RecordType::TXT);
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.expect("a connection's checks failed");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("all connections answered in time");
    assert_eq!(up.received().len(), CONNECTIONS * IDS as usize);
}

fn frame_bytes(read: Read) -> Vec<u8> {
    match read {
        Read::Frame(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Counts OPT records in the additional section by walking the wire format
/// (hickory folds OPT into `edns` and refuses duplicates; this counts them).
fn count_opt_records(msg: &[u8]) -> usize {
    let (records, end) = crate::upstream::raw_records(msg);
    assert_eq!(end, msg.len(), "records end where the message ends");
    records
        .iter()
        .filter(|r| r.additional && r.rtype == 41)
        .count()
}
