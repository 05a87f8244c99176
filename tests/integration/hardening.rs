//! A resolver's bad day and broken input: what one client or one name does
//! never costs another client its answers. Every test here asserts that each
//! query sent got exactly one reply, with its own ID and question.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    ask_all, assert_answer, assert_reply_header, encode, frame, query, Process, Read, Server,
    REPLY_WAIT,
};
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::{ordinary_answer, Transport, Upstream};

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
    // Each an answer, not the SERVFAIL of the 3 s upstream timeout: no
    // query waited on a desynchronised connection (no wall-clock bound).
    assert_eq!(up.count(Transport::Udp), 0, "tcp:// never uses UDP");
    // Each query reached the upstream once: no connection was lost and
    // nothing was resent.
    assert_eq!(up.count(Transport::Tcp), before.len() + after.len() + 3);
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A memory figure of a process's `/proc/PID/status` (`VmRSS`, `VmHWM`...),
/// in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// A prefix promising 65535 bytes, then one byte every 200 ms: closed at
/// `--read-timeout` (not at the later idle timeout), counted, while another
/// client keeps getting answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_message_is_closed_at_the_read_timeout() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let metrics_flag = metrics.to_string();
    let server = Server::start(
        up.addr,
        &[
            "--read-timeout",
            "1s",
            "--idle-timeout",
            "30s",
            "--metrics-listen",
            &metrics_flag,
        ],
    )
    .await;
    let mut slow = server.client().await;
    let mut other = server.client().await;
    let started = Instant::now();
    slow.send_raw(&[0xff, 0xff]).await;
    let dribble = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.stream.write_all(&[0]).await.is_err() || slow.stream.flush().await.is_err() {
                break;
            }
        }
        slow
    };
    let others = async {
        for id in 0..10u16 {
            let name = format!("n{id}.dribble.test.");
            other.send(&query(id, &name, RecordType::A)).await;
            assert_answer(&other.recv().await, id, &name, RecordType::A);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (mut slow, ()) = tokio::join!(dribble, others);
    match slow.read(Duration::from_secs(5)).await {
        Read::Eof | Read::Error(_) => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    let closed = started.elapsed();
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    let text = scrape(metrics).await;
    assert_eq!(
        value(
            &text,
            "dotgate_connections_closed_total{reason=\"read_timeout\"}"
        ),
        1.0
    );
}

/// Raises this process's soft limit on open files to its hard limit (the
/// dotgate it starts inherits it), and checks that `needed` fit.
fn raise_nofile(needed: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) and setrlimit(2) with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_cur
    );
}

/// Bytes the kernel holds unread on the established TCP sockets whose local
/// port is `port` (IPv4, from /proc/net/tcp): 0 once the server has read
/// everything its clients sent.
fn unread_on_port(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let state = fields.get(3)?;
            let rx = fields.get(4)?.split(':').nth(1)?;
            (u16::from_str_radix(local_port, 16).ok()? == port && *state == "01")
                .then(|| u64::from_str_radix(rx, 16).ok())
                .flatten()
        })
        .sum()
}

/// Connections that each promised a 65535-byte message and sent one byte
/// of it hold about what an idle connection holds, not 64 KiB each, nor
/// even 4 KiB more each; every one of them is closed at the read timeout,
/// after which a client is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_lengths_cost_no_memory_until_the_bytes_come() {
    // Many, so that the process's own noise (an allocator arena, a thread
    // stack touched) is a small share per connection.
    const CONNECTIONS: usize = 800;
    raise_nofile(2 * CONNECTIONS as libc::rlim_t + 200);
    let up = Upstream::start().await;
    let server = Process::start(
        up.addr,
        &["--read-timeout", "10s", "--max-connections-per-ip", "1000"],
    )
    .await;
    let mut probe = server.client().await;
    probe
        .send(&query(1, "before.rss.test.", RecordType::A))
        .await;
    assert_answer(&probe.recv().await, 1, "before.rss.test.", RecordType::A);
    let before = rss_kib(server.pid());
    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = server.client().await;
        c.send_raw(&[0xff, 0xff, 0]).await;
        stalled.push(c);
    }
    // Waited for: the server has read what was sent (nothing left unread
    // in its sockets), so each reader has seen its prefix and first byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_on_port(server.addr.port()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server never read the prefixes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = rss_kib(server.pid());
    let per_connection = during.saturating_sub(before) as f64 / CONNECTIONS as f64;
    eprintln!("{per_connection:.1} KiB per stalled connection ({before} KiB before, {during} KiB with {CONNECTIONS})");
    // Measured 7.0 KiB here (the debug binary; the release build's idle
    // connection is 6.0 KiB, PERFORMANCE.md), runs within 0.1 KiB of each
    // other. 10 KiB leaves 3 KiB for noise, while a regression of 4 KiB a
    // connection (a 4 KiB buffer kept per reader, tried: 11.0) fails;
    // buffering the announced 64 KiB would be far over.
    assert!(
        per_connection < 10.0,
        "{per_connection:.1} KiB per stalled connection ({before} KiB before, {during} KiB with them)"
    );
    for c in stalled.iter_mut() {
        match c.read(Duration::from_secs(15)).await {
            Read::Eof | Read::Error(_) => {}
            other => panic!("expected a close at the read timeout, got {other:?}"),
        }
    }
    probe
        .send(&query(2, "after.rss.test.", RecordType::A))
        .await;
    assert_answer(&probe.recv().await, 2, "after.rss.test.", RecordType::A);
}

/// A TCP upstream that answers every query, until `black_hole` is set: then
/// the connection that reads the next query keeps it, never answers, and
/// stops reading, with its socket left open (a stateful firewall that lost
/// the flow, a resolver wedged on one connection). Connections opened after
/// that are served normally. Returns its address, the switch, and the
/// number of connections accepted.
async fn black_holing_upstream() -> (SocketAddr, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let black_hole = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (switch, count) = (black_hole.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_until_black_hole(stream, switch.clone()));
        }
    });
    (addr, black_hole, accepted)
}

async fn serve_until_black_hole(mut stream: TcpStream, black_hole: Arc<AtomicBool>) {
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut query = vec![0; usize::from(u16::from_be_bytes(prefix))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        if black_hole.swap(false, Ordering::SeqCst) {
            // Hold the socket open, read nothing more, answer nothing.
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        let Some(reply) = ordinary_answer(&query) else {
            return;
        };
        if stream.write_all(&frame(&reply)).await.is_err() {
            return;
        }
    }
}

/// Defect: a pooled `tcp://` connection that stops answering stayed in use,
/// so every later query timed out on it. Now the query that times out
/// there retires it, and the next query goes to a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_upstream_connection_is_replaced() {
    let (addr, black_hole, accepted) = black_holing_upstream().await;
    let entry = format!("tcp://{addr}");
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        "1s",
        "--health-check-interval",
        "60s",
    ])
    .await;
    let mut client = server.client().await;
    client
        .send(&query(1, "first.hole.test.", RecordType::A))
        .await;
    assert_answer(&client.recv().await, 1, "first.hole.test.", RecordType::A);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    black_hole.store(true, Ordering::SeqCst);
    client
        .send(&query(2, "lost.hole.test.", RecordType::A))
        .await;
    let reply = client.recv().await;
    assert_reply_header(
        &reply,
        2,
        "lost.hole.test.",
        RecordType::A,
        ResponseCode::ServFail,
    );
    for id in 3..8u16 {
        let name = format!("after{id}.hole.test.");
        let sent = Instant::now();
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
        assert!(
            sent.elapsed() < Duration::from_millis(900),
            "{:?}",
            sent.elapsed()
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one fresh connection");
}

/// Defect: over UDP, one lost datagram cost the whole upstream timeout and
/// a SERVFAIL. Now the query is sent once more after the resend delay (at
/// least 500 ms) and answered well before the 2 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_udp_datagram_is_sent_again() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--upstream-timeout", "2s", "--health-check-interval", "60s"],
    )
    .await;
    let mut client = server.client().await;
    for id in 0..3u16 {
        let name = format!("lose-first.n{id}.lossy.test.");
        let sent = Instant::now();
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
        let took = sent.elapsed();
        assert!(
            took >= Duration::from_millis(450),
            "answered after {took:?}: sent twice at once?"
        );
        assert!(
            took < Duration::from_millis(1500),
            "answered after {took:?}"
        );
    }
    // Each name reached the upstream exactly twice, over UDP.
    let received = up.received();
    for id in 0..3u16 {
        let name = format!("lose-first.n{id}.lossy.test.");
        let copies = received.iter().filter(|r| r.name == name).count();
        assert_eq!(copies, 2, "{name}");
    }
    assert_eq!(up.count(Transport::Tcp), 0);
}
