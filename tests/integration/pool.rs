//! The upstream pool as a client sees it: failover when an upstream dies and
//! return when it comes back, the spreading policies, SERVFAIL at once when
//! every upstream is down, pipelined TCP that survives a reset, and DoT
//! upstreams (a second dotgate) verified by name, found through a bootstrap
//! resolver.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    ask_all, assert_answer, assert_reply_header, encode, frame, query, Process, Server, REPLY_WAIT,
};
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::{Transport, Upstream};

/// Health-check interval of these tests: short, so that they are fast.
const INTERVAL: &str = "200ms";

/// Sends 1000 queries over 10 connections, 100 pipelined on each, and checks
/// every answer.
async fn ask_1000(server: &Server, tag: &str) {
    let mut tasks = Vec::new();
    for c in 0..10 {
        let mut client = server.client().await;
        let names: Vec<String> = (0..100).map(|i| format!("q{i}.c{c}.{tag}.test.")).collect();
        tasks.push(tokio::spawn(async move {
            ask_all(&mut client, &names, 1000).await;
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
}

fn udp_queries(up: &Upstream) -> usize {
    up.count(Transport::Udp)
}

/// Distinct names `up` was asked over UDP: a query resent after the resend
/// delay (a datagram that may have been lost) counts once.
fn udp_names(up: &Upstream) -> usize {
    let names: std::collections::HashSet<String> = up
        .received()
        .into_iter()
        .filter(|r| r.transport == Transport::Udp)
        .map(|r| r.name)
        .collect();
    names.len()
}

/// First-available: all traffic on the first upstream; when it dies with 20
/// queries in flight, each of them is still answered (failover to the
/// second), and once the health checks mark it down new queries go
/// straight to the second (no failover counted); when it comes back,
/// traffic returns to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_available_fails_over_and_comes_back() {
    let mut a = Upstream::start().await;
    let b = Upstream::start().await;
    let b_entry = b.addr.to_string();
    let metrics = metrics_addr();
    let server = Server::start(
        a.addr,
        &[
            "--upstream",
            &b_entry,
            "--upstream-timeout",
            "1s",
            "--health-check-interval",
            INTERVAL,
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..10).map(|i| format!("n{i}.first.test.")).collect();
    ask_all(&mut client, &names, 0).await;
    assert_eq!(
        (udp_queries(&a), udp_queries(&b)),
        (10, 0),
        "all on the first"
    );

    // 20 slow queries in flight at A when it dies.
    let slow: Vec<String> = (0..20)
        .map(|i| format!("delay-300.s{i}.first.test."))
        .collect();
    let mut batch = Vec::new();
    for (i, name) in slow.iter().enumerate() {
        batch.extend(frame(&encode(&query(100 + i as u16, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    a.wait_for_queries(30, REPLY_WAIT).await;
    a.stop();
    let mut answered = vec![false; slow.len()];
    for _ in 0..slow.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id - 100);
        assert!(!answered[index], "two replies for ID {}", reply.metadata.id);
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &slow[index], RecordType::A);
    }
    assert_eq!(udp_names(&b), 20, "the 20 in flight were retried on B");

    // Once the health checks mark A down (waited for, bounded), new queries
    // go straight to B: none of them tries A first and fails over. Counted
    // by dotgate itself, not judged by how fast the answers come.
    let up_a = format!("dotgate_upstream_up{{upstream=\"{}\"}}", a.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(metrics).await, &up_a) != 0.0 {
        assert!(Instant::now() < deadline, "A never marked down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failovers = || async { value(&scrape(metrics).await, "dotgate_upstream_failovers_total") };
    let before = failovers().await;
    for i in 0..5u16 {
        let name = format!("after-stop{i}.first.test.");
        client.send(&query(200 + i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, 200 + i, &name, RecordType::A);
    }
    assert_eq!(
        failovers().await,
        before,
        "a query still tried the dead upstream first"
    );

    // Back: within a few intervals traffic returns to A.
    a.restart().await;
    let before = udp_queries(&a);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut i = 0u16;
    while udp_queries(&a) == before {
        assert!(
            Instant::now() < deadline,
            "traffic did not come back to the restarted upstream"
        );
        let name = format!("back{i}.first.test.");
        client.send(&query(300 + i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, 300 + i, &name, RecordType::A);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.probes() > 0, "the restarted upstream was probed");
}

/// Round-robin: 1000 queries over three upstreams give each a third, within
/// 10% (no failover happens, so the split is in fact exact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_queries_evenly() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let (b, c) = (ups[1].addr.to_string(), ups[2].addr.to_string());
    let server = Server::start(
        ups[0].addr,
        &[
            "--upstream",
            &b,
            "--upstream",
            &c,
            "--upstream-policy",
            "round-robin",
            "--health-check-interval",
            INTERVAL,
        ],
    )
    .await;
    ask_1000(&server, "rr").await;
    // Distinct names: on a loaded machine a reply can miss the resend delay
    // and the query goes out twice, to the same upstream (seen: 1007).
    let counts: Vec<usize> = ups.iter().map(udp_names).collect();
    assert_eq!(counts.iter().sum::<usize>(), 1000, "{counts:?}");
    for n in &counts {
        assert!((300..=367).contains(n), "uneven split: {counts:?}");
    }
}

/// Least-outstanding: with the first upstream 100 ms slower than the
/// second, 1000 queries in waves (10 connections, each sending 10 waves of
/// 10 pipelined queries, a wave once the previous one is answered) are sent
/// where the fewest are in flight. The fast upstream empties its queue
/// sooner, so it takes at least 60%, where round-robin would give each
/// exactly half; ties go to the first, the slow one, so only the
/// fewest-in-flight rule moves the queries. Waves rather than one burst
/// per connection: a burst read all at once on a busy machine is spread
/// before any reply could come back, and says nothing about the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_steers_away_from_a_slow_upstream() {
    let slow = Upstream::start().await;
    let fast = Upstream::start().await;
    slow.set_delay(Duration::from_millis(100));
    let fast_entry = fast.addr.to_string();
    let server = Server::start(
        slow.addr,
        &[
            "--upstream",
            &fast_entry,
            "--upstream-policy",
            "least-outstanding",
            "--health-check-interval",
            INTERVAL,
        ],
    )
    .await;
    let mut tasks = Vec::new();
    for c in 0..10 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for wave in 0..10u16 {
                let names: Vec<String> = (0..10)
                    .map(|i| format!("q{i}.w{wave}.c{c}.lo.test."))
                    .collect();
                ask_all(&mut client, &names, wave * 10).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (s, f) = (udp_queries(&slow), udp_queries(&fast));
    assert_eq!(s + f, 1000);
    eprintln!("least-outstanding: fast upstream {f}, slow one {s}");
    assert!(f >= 600, "fast upstream took {f}, slow one {s}");
}

/// With every upstream marked down, queries are still sent (panic mode):
/// an upstream that is back answers at once, before any probe could mark
/// it up again, and while both are really gone each client gets SERVFAIL
/// with its ID and question after the upstream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_still_get_queries() {
    let mut a = Upstream::start().await;
    let mut b = Upstream::start().await;
    let b_entry = b.addr.to_string();
    let server = Server::start(
        a.addr,
        &[
            "--upstream",
            &b_entry,
            "--upstream-timeout",
            "1s",
            // No probe during the test: only queries judge health.
            "--health-check-interval",
            "60s",
        ],
    )
    .await;
    let mut client = server.client().await;
    client.send(&query(1, "up.down.test.", RecordType::A)).await;
    assert_answer(&client.recv().await, 1, "up.down.test.", RecordType::A);
    a.stop();
    b.stop();
    // Past the millisecond of the last answer (health's clock), then three
    // queries that get no answer from either: both marked down.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut batch = Vec::new();
    for id in 2..5u16 {
        batch.extend(frame(&encode(&query(
            id,
            &format!("q{id}.down.test."),
            RecordType::A,
        ))));
    }
    client.send_raw(&batch).await;
    for _ in 2..5u16 {
        let reply = client.recv().await;
        let id = reply.metadata.id;
        let name = format!("q{id}.down.test.");
        assert_reply_header(&reply, id, &name, RecordType::A, ResponseCode::ServFail);
    }
    b.restart().await;
    // Answered (within the 1 s upstream timeout, or it would be SERVFAIL)
    // while no probe runs for 60 s: sent although B was marked down.
    for id in 5..8u16 {
        let name = format!("q{id}.back.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }
}

/// A `tcp://` upstream: 50 queries pipelined on the pooled connection; the
/// upstream resets the connection with all 50 in flight; each is sent again
/// on a new connection and all 50 are answered correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_upstream_reset_with_50_in_flight_answers_all() {
    let up = Upstream::start().await;
    let entry = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        "3s",
        "--health-check-interval",
        "10s",
    ])
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..50)
        .map(|i| format!("delay-300.r{i}.reset.test."))
        .collect();
    let mut batch = Vec::new();
    for (i, name) in names.iter().enumerate() {
        batch.extend(frame(&encode(&query(i as u16, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    up.wait_for_queries(50, REPLY_WAIT).await;
    assert!(
        up.max_outstanding() >= 40,
        "pipelined: {} at once",
        up.max_outstanding()
    );
    up.reset_tcp();
    let mut answered = vec![false; names.len()];
    for _ in 0..names.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id);
        assert!(!answered[index], "two replies for ID {index}");
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &names[index], RecordType::A);
    }
    // Each answered (a query lost in the reset would be SERVFAIL at the 3 s
    // upstream timeout), and resent exactly once.
    assert_eq!(up.count(Transport::Udp), 0, "tcp:// never uses UDP");
    assert_eq!(up.count(Transport::Tcp), 100, "each query sent twice");
}

/// A TCP proxy that counts the connections it accepts, in front of `to`.
async fn counting_proxy(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// A `tls://NAME@IP:PORT` upstream run by a second dotgate with a
/// certificate for NAME: 12 slow queries (fewer than the 16 a connection
/// takes before the pool opens another) are pipelined over one verified
/// connection (the backend sees them at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_upstream_pipelines_over_one_verified_connection() {
    let backend = Upstream::start().await;
    let dot = Server::start(backend.addr, &[]).await;
    let (proxy, connections) = counting_proxy(dot.addr).await;
    let entry = format!("tls://dns.test@{proxy}");
    let ca = dot.pki.ca.display().to_string();
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-ca",
        &ca,
        "--health-check-interval",
        INTERVAL,
    ])
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..12)
        .map(|i| format!("delay-200.d{i}.dot.test."))
        .collect();
    ask_all(&mut client, &names, 0).await;
    // Pipelined: the backend had them at once (a count, not a duration).
    assert!(
        backend.max_outstanding() >= 10,
        "pipelined: {} at once",
        backend.max_outstanding()
    );
    assert_eq!(backend.received().len(), 12);
    // Probes (every 200 ms) ride the same connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ask_all(&mut client, &["later.dot.test.".to_string()], 500).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one TLS connection");
}

/// A `tls://` upstream whose certificate is not for the given name is
/// refused: no query ever goes through it, the other upstream answers all
/// (even under round-robin), and the refusal is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_upstream_with_the_wrong_name_is_never_used() {
    let backend = Upstream::start().await;
    let dot = Server::start(backend.addr, &[]).await;
    let plain = Upstream::start().await;
    let entry = format!("tls://wrong.test@{}", dot.addr);
    let ca = dot.pki.ca.display().to_string();
    let server = Process::start(
        plain.addr,
        &[
            "--upstream",
            &entry,
            "--upstream-ca",
            &ca,
            "--upstream-policy",
            "round-robin",
            "--health-check-interval",
            INTERVAL,
        ],
    )
    .await;
    let mut client = server.client().await;
    for i in 0..20u16 {
        let name = format!("q{i}.wrong-name.test.");
        client.send(&query(i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, i, &name, RecordType::A);
    }
    assert!(backend.received().is_empty(), "{:?}", backend.received());
    assert_eq!(plain.count(Transport::Udp), 20);
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let logs = server.logs();
        if logs.contains("upstream is down") && logs.contains("tls://wrong.test") {
            assert!(logs.contains("certificate"), "{logs}");
            break;
        }
        assert!(Instant::now() < deadline, "refusal not logged:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tls://NAME:PORT` without an IP: NAME is resolved through `--bootstrap`
/// (a scripted upstream that answers 127.0.0.1), then used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_name_is_resolved_through_the_bootstrap() {
    let backend = Upstream::start().await;
    let dot = Server::start(backend.addr, &[]).await;
    let bootstrap = Upstream::start().await;
    bootstrap.set_address("dns.test", Ipv4Addr::LOCALHOST, 60);
    let entry = format!("tls://dns.test:{}", dot.addr.port());
    let ca = dot.pki.ca.display().to_string();
    let boot = bootstrap.addr.to_string();
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--bootstrap",
        &boot,
        "--upstream-ca",
        &ca,
        "--health-check-interval",
        INTERVAL,
    ])
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..5).map(|i| format!("b{i}.boot.test.")).collect();
    ask_all(&mut client, &names, 0).await;
    assert_eq!(
        backend.received().len(),
        5,
        "answered through the DoT upstream"
    );
    let asked: Vec<_> = bootstrap
        .received()
        .iter()
        .map(|r| (r.name.clone(), r.rtype))
        .collect();
    assert_eq!(asked, vec![("dns.test.".to_string(), RecordType::A)]);
}

/// Waits (bounded) until no query is in flight in dotgate, as its metrics
/// on `metrics` tell.
async fn wait_no_query_in_flight(metrics: SocketAddr) {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let text = crate::metrics::scrape(metrics).await;
        if crate::metrics::value(&text, "dotgate_queries_in_flight") == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "queries still in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that pipelines queries to a `tcp://` upstream and hangs up
/// (a reset) before they are answered, five times over: 16 queries the
/// upstream never answers fill one pooled connection, 4 slow ones go to a
/// second, and the client is gone when the first slow answer comes back.
/// Its abandoned queries are not the upstream's fault: the pool keeps its
/// two connections (the upstream accepts no third one), and a client that
/// stays is answered every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_do_not_churn_the_upstream_connections() {
    let up = Upstream::start().await;
    let (proxy, connections) = counting_proxy(up.addr).await;
    let entry = format!("tcp://{proxy}");
    let metrics = crate::metrics::metrics_addr();
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        "5s",
        "--health-check-interval",
        "60s",
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    let mut stays = server.client().await;
    let mut asked = 0;
    for round in 0..5u16 {
        let mut leaves = server.client().await;
        let mut silent = Vec::new();
        for i in 0..16u16 {
            let name = format!("drop.q{i}.r{round}.leaves.test.");
            silent.extend(frame(&encode(&query(i, &name, RecordType::A))));
        }
        leaves.send_raw(&silent).await;
        asked += 16;
        up.wait_for_queries(asked, REPLY_WAIT).await;
        let mut slow = Vec::new();
        for i in 0..4u16 {
            let name = format!("delay-100.q{i}.r{round}.leaves.test.");
            slow.extend(frame(&encode(&query(100 + i, &name, RecordType::A))));
        }
        leaves.send_raw(&slow).await;
        asked += 4;
        up.wait_for_queries(asked, REPLY_WAIT).await;
        socket2::SockRef::from(leaves.stream.get_ref().0)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(leaves);
        wait_no_query_in_flight(metrics).await;

        let names: Vec<String> = (0..5)
            .map(|i| format!("q{i}.r{round}.stays.test."))
            .collect();
        ask_all(&mut stays, &names, round * 10).await;
        asked += 5;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the pool's connections were kept"
    );
}
