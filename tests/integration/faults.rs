//! Upstream faults: an upstream that answers wrongly, twice, with broken
//! messages, cuts its TCP connections mid-reply, sends the largest answers,
//! refuses TCP after a truncated answer, or goes away and comes back. Every
//! test asserts that each query sent got exactly one reply, with its own ID
//! and question (and reads on for a while to make sure no second one comes).
//!
//! Covered elsewhere, not repeated here:
//! * an upstream that never answers some names while it answers others:
//!   `hardening::names_that_time_out_never_take_a_serving_upstream_out`;
//! * wrong-ID, wrong-question and wrong-port replies over UDP (with the
//!   mismatched-replies counter): `answers::spoofed_upstream_replies_are_ignored`;
//! * a pooled TCP connection that black-holes its queries:
//!   `hardening::a_black_holed_upstream_connection_is_replaced`;
//! * one of several upstreams going away and coming back:
//!   `pool::first_available_fails_over_and_comes_back` and
//!   `pool::all_upstreams_down_still_get_queries`.
//!
//! The misbehaving upstreams here are served by hand ([`Fake`]): a UDP
//! responder and a TCP server on one port, each following a script per
//! query.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::harness::ask_all;
use crate::harness::{
    assert_answer, assert_reply_header, encode, frame, parse, query, with_opt, Client, Read,
    Server, REPLY_WAIT,
};
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::{lower_fqdn, ordinary_answer, raw_records, Upstream};

const MISMATCHED: &str = "dotgate_upstream_mismatched_replies_total";
const BAD_REPLY: &str =
    "dotgate_synthesized_replies_total{rcode=\"servfail\",cause=\"bad_upstream_reply\"}";
const UPSTREAM_ERROR: &str =
    "dotgate_synthesized_replies_total{rcode=\"servfail\",cause=\"upstream_error\"}";
const LOST: &str = "dotgate_upstream_connections_lost_total";

/// How long a client keeps reading after its last expected reply, to make
/// sure no second reply comes.
const QUIET: Duration = Duration::from_millis(400);

// ---------- a hand-served upstream ----------

/// What a hand-served TCP upstream does, in order, for one query.
enum Out {
    /// A whole message behind its length prefix.
    Frame(Vec<u8>),
    /// Bytes exactly as given (half a frame, a bad prefix).
    Raw(Vec<u8>),
    /// Resets the connection (RST) and serves it no more.
    Reset,
    /// Closes the connection (FIN) and serves it no more.
    Close,
}

/// The TCP script: the query's bytes and the connection's number (0 for
/// the first accepted) give what to send.
type TcpScript = Arc<dyn Fn(&[u8], usize) -> Vec<Out> + Send + Sync>;

/// The UDP script: the query's bytes give the datagrams to send, in order.
type UdpScript = Arc<dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync>;

/// A misbehaving upstream on 127.0.0.1: UDP and TCP on one port.
struct Fake {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
    /// A TCP socket bound to the port and not listening: connections to
    /// the port are refused, and no one else takes it meanwhile.
    _closed_tcp: Option<socket2::Socket>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fake {
    /// A TCP-only upstream (for `tcp://`).
    async fn tcp(script: TcpScript) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, script, accepted.clone()));
        Fake {
            addr,
            accepted,
            tasks: vec![task],
            _closed_tcp: None,
        }
    }

    /// UDP served by `udp`, and TCP on the same port served by `tcp`, or
    /// refused (bound, not listening) when `tcp` is `None`.
    async fn udp(udp: UdpScript, tcp: Option<TcpScript>) -> Fake {
        for _ in 0..20 {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let (listener, closed) = match &tcp {
                Some(_) => match TcpListener::bind(addr).await {
                    Ok(listener) => (Some(listener), None),
                    Err(_) => continue,
                },
                None => {
                    use socket2::{Domain, Socket, Type};
                    let closed = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                    if closed.bind(&addr.into()).is_err() {
                        continue;
                    }
                    (None, Some(closed))
                }
            };
            let mut tasks = vec![tokio::spawn(udp_loop(sock, udp.clone()))];
            if let (Some(listener), Some(script)) = (listener, tcp.clone()) {
                tasks.push(tokio::spawn(accept_loop(
                    listener,
                    script,
                    accepted.clone(),
                )));
            }
            return Fake {
                addr,
                accepted,
                tasks,
                _closed_tcp: closed,
            };
        }
        panic!("no port free for both UDP and TCP");
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn udp_loop(sock: UdpSocket, script: UdpScript) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        for datagram in script(&buf[..n]) {
            let _ = sock.send_to(&datagram, peer).await;
        }
    }
}

async fn accept_loop(listener: TcpListener, script: TcpScript, accepted: Arc<AtomicUsize>) {
    while let Ok((stream, _)) = listener.accept().await {
        let index = accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(serve_connection(stream, script.clone(), index));
    }
}

/// Reads queries one at a time and sends what the script says for each.
async fn serve_connection(mut stream: TcpStream, script: TcpScript, index: usize) {
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        for out in script(&msg, index) {
            let written = match out {
                Out::Frame(reply) => stream.write_all(&frame(&reply)).await,
                Out::Raw(bytes) => stream.write_all(&bytes).await,
                Out::Reset => {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    return;
                }
                Out::Close => {
                    // FIN, then wait (bounded) for the peer to close: a close
                    // with unread bytes would be a reset instead.
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 4096];
                    let drain =
                        async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
                    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    }
}

// ---------- messages a broken upstream sends ----------

/// The query's name, lower case with the trailing dot ("." for a probe).
fn name_of(query: &[u8]) -> String {
    Message::from_vec(query)
        .ok()
        .and_then(|m| m.queries.first().map(|q| lower_fqdn(&q.name().to_ascii())))
        .unwrap_or_default()
}

/// True when a label of the query's name is exactly `label`.
fn has_label(query: &[u8], label: &str) -> bool {
    name_of(query)
        .trim_end_matches('.')
        .split('.')
        .any(|l| l == label)
}

/// The ordinary answer (see [`ordinary_answer`]).
fn real(query: &[u8]) -> Vec<u8> {
    ordinary_answer(query).expect("a DNS query")
}

/// Where the (one, uncompressed) question of `msg` ends.
fn question_end(msg: &[u8]) -> usize {
    let mut pos = 12;
    while msg[pos] != 0 {
        pos += 1 + usize::from(msg[pos]);
    }
    pos + 1 + 4
}

/// The real answer under another ID.
fn wrong_id(query: &[u8]) -> Vec<u8> {
    let mut reply = real(query);
    reply[0] ^= 0x5a;
    reply[1] ^= 0xa5;
    reply
}

/// A reply with the right ID to another question.
fn wrong_question(query: &[u8]) -> Vec<u8> {
    let mut msg = Message::from_vec(query).expect("a DNS query");
    let rtype = msg.queries[0].query_type();
    msg.queries[0] = Query::query(Name::from_ascii("other.fault.test.").unwrap(), rtype);
    real(&encode(&msg))
}

/// The real answer's header and question only: with the right ID and
/// question, it claims an answer (and the OPT record) that are not there.
fn hollow(query: &[u8]) -> Vec<u8> {
    let mut reply = real(query);
    reply.truncate(question_end(&reply));
    assert_ne!(reply[6..8], [0, 0], "the header claims an answer");
    reply
}

/// An empty reply with TC set, echoing ID, question and RD.
fn truncated(query: &[u8]) -> Vec<u8> {
    let mut reply = query[..question_end(query)].to_vec();
    reply[2] = 0x80 | (query[2] & 0x79) | 0x02;
    reply[3] = 0x80;
    reply[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply
}

/// A NOERROR answer of exactly `total` bytes to the query: its ID and
/// question, then TXT records (owner: a pointer to the question) filled
/// with bytes that differ by record and position; no OPT record.
fn huge_answer(query: &[u8], total: usize) -> Vec<u8> {
    const RECORD: usize = 12 + 256;
    let mut out = query[..question_end(query)].to_vec();
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 0x80;
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    let mut records = 0u16;
    while total - out.len() > 0 {
        let left = total - out.len();
        // The last record takes what is left (more than one record's worth
        // and at most two), so that it can never be too short for a header.
        let rdlen = if left > 2 * RECORD { 256 } else { left - 12 };
        out.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
        out.extend_from_slice(&u16::try_from(rdlen).unwrap().to_be_bytes());
        let mut data_left = rdlen;
        let mut i = 0usize;
        while data_left > 0 {
            let chunk = data_left.min(256);
            out.push(u8::try_from(chunk - 1).unwrap());
            for _ in 1..chunk {
                out.push(b'a' + ((usize::from(records) + i) % 26) as u8);
                i += 1;
            }
            data_left -= chunk;
        }
        records += 1;
    }
    out[6..8].copy_from_slice(&records.to_be_bytes());
    assert_eq!(out.len(), total);
    out
}

// ---------- client side ----------

/// Reads the next reply as bytes.
async fn recv_bytes(client: &mut Client) -> Vec<u8> {
    match client.read(REPLY_WAIT).await {
        Read::Frame(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Fails if anything more arrives within [`QUIET`].
async fn assert_no_more_replies(client: &mut Client) {
    match client.read(QUIET).await {
        Read::Timeout => {}
        Read::Frame(bytes) => panic!("a reply too many: {:?}", parse(&bytes)),
        other => panic!("expected silence, got {other:?}"),
    }
}

/// Sends `names` (A queries, IDs from `first_id`) pipelined, and returns
/// the replies in the order of `names`, failing on an unknown or repeated
/// ID or on a reply to another question.
async fn ask_each_once(client: &mut Client, names: &[String], first_id: u16) -> Vec<Message> {
    let mut batch = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let id = first_id + i as u16;
        batch.extend(frame(&encode(&query(id, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    let mut replies: Vec<Option<Message>> = vec![None; names.len()];
    for _ in 0..names.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id.wrapping_sub(first_id));
        assert!(
            index < names.len() && replies[index].is_none(),
            "unexpected or repeated ID {}",
            reply.metadata.id
        );
        assert_eq!(
            reply.queries.len(),
            1,
            "QDCOUNT of the reply for {}",
            names[index]
        );
        assert_eq!(
            lower_fqdn(&reply.queries[0].name().to_ascii()),
            lower_fqdn(&names[index])
        );
        replies[index] = Some(reply);
    }
    replies.into_iter().map(Option::unwrap).collect()
}

/// dotgate toward one `tcp://` upstream, with metrics on `metrics` and no
/// health probe during the test (a probe would meet the same faults).
async fn tcp_server(upstream: SocketAddr, metrics: SocketAddr, timeout: &str) -> Server {
    let entry = format!("tcp://{upstream}");
    let metrics = metrics.to_string();
    Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        timeout,
        "--health-check-interval",
        "60s",
        "--metrics-listen",
        &metrics,
    ])
    .await
}

/// dotgate toward one plain (UDP) upstream, as [`tcp_server`].
async fn udp_server(upstream: SocketAddr, metrics: SocketAddr, timeout: &str) -> Server {
    let metrics = metrics.to_string();
    Server::start(
        upstream,
        &[
            "--upstream-timeout",
            timeout,
            "--health-check-interval",
            "60s",
            "--metrics-listen",
            &metrics,
        ],
    )
    .await
}

// ---------- 2: wrong ID, wrong question ----------

/// A pooled `tcp://` upstream that sends, for every query, a reply with
/// another ID, then one with the right ID and another question, and only
/// then the real one: the two are ignored and counted, the real answer
/// delivered, and the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_id_and_wrong_question_on_a_tcp_upstream_are_ignored() {
    let up = Fake::tcp(Arc::new(|q: &[u8], _| {
        vec![
            Out::Frame(wrong_id(q)),
            Out::Frame(wrong_question(q)),
            Out::Frame(real(q)),
        ]
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "2s").await;
    let mut client = server.client().await;
    for round in 0..3u16 {
        let names: Vec<String> = (0..4)
            .map(|i| format!("q{i}.r{round}.spoof-tcp.test."))
            .collect();
        ask_all(&mut client, &names, round * 10).await;
    }
    let mut alone = server.client().await;
    alone
        .send(&query(99, "alone.spoof-tcp.test.", RecordType::AAAA))
        .await;
    assert_answer(
        &alone.recv().await,
        99,
        "alone.spoof-tcp.test.",
        RecordType::AAAA,
    );
    assert_no_more_replies(&mut client).await;
    assert_no_more_replies(&mut alone).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, MISMATCHED), 2.0 * 13.0, "two per query");
    assert_eq!(up.accepted(), 1, "the connection was kept");
}

// ---------- 3: the same reply twice ----------

/// A UDP upstream that sends every reply twice: one reply per query, the
/// duplicate counted as mismatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_udp_reply_is_delivered_once() {
    let up = Fake::udp(Arc::new(|q: &[u8]| vec![real(q), real(q)]), None).await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "2s").await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..10).map(|i| format!("q{i}.twice-udp.test.")).collect();
    ask_all(&mut client, &names, 0).await;
    for id in 20..25u16 {
        let name = format!("one{id}.twice-udp.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, MISMATCHED), 15.0, "each duplicate counted");
}

/// A pooled `tcp://` upstream that sends every reply twice: one reply per
/// query, the duplicate counted, the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_tcp_reply_is_delivered_once() {
    let up = Fake::tcp(Arc::new(|q: &[u8], _| {
        vec![Out::Frame(real(q)), Out::Frame(real(q))]
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "2s").await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..10).map(|i| format!("q{i}.twice-tcp.test.")).collect();
    ask_all(&mut client, &names, 0).await;
    for id in 20..25u16 {
        let name = format!("one{id}.twice-tcp.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, id, &name, RecordType::A);
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, MISMATCHED), 15.0, "each duplicate counted");
    assert_eq!(up.accepted(), 1, "the connection was kept");
}

// ---------- 4: malformed and too-short messages ----------

const BAD_REPLIES: &str = "dotgate_upstream_bad_replies_total";

/// Over UDP: a 5-byte datagram before the real answer is dropped (counted
/// as mismatched) and the answer delivered; a reply with the right ID and
/// question whose header claims records that are not there is counted and
/// passed over: when the real answer follows it, the client gets the real
/// answer, and when none follows, SERVFAIL with the client's ID and question
/// once the try is over (counted as a bad upstream reply, not a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_udp_replies_are_passed_over_for_the_real_answer() {
    let up = Fake::udp(
        Arc::new(|q: &[u8]| {
            if has_label(q, "short") {
                vec![real(q)[..5].to_vec(), real(q)]
            } else if has_label(q, "hollow") {
                vec![hollow(q)]
            } else if has_label(q, "hollow-then-real") {
                vec![hollow(q), real(q)]
            } else {
                vec![real(q)]
            }
        }),
        None,
    )
    .await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "1s").await;
    let mut client = server.client().await;

    let short: Vec<String> = (0..5)
        .map(|i| format!("short.q{i}.bad-udp.test."))
        .collect();
    ask_all(&mut client, &short, 0).await;

    let then_real: Vec<String> = (0..5)
        .map(|i| format!("hollow-then-real.q{i}.bad-udp.test."))
        .collect();
    ask_all(&mut client, &then_real, 20).await;

    let hollow_names: Vec<String> = (0..5)
        .map(|i| format!("hollow.q{i}.bad-udp.test."))
        .collect();
    for (i, reply) in ask_each_once(&mut client, &hollow_names, 10)
        .await
        .iter()
        .enumerate()
    {
        let id = 10 + i as u16;
        assert_reply_header(
            reply,
            id,
            &hollow_names[i],
            RecordType::A,
            ResponseCode::ServFail,
        );
    }
    // Still serving.
    client
        .send(&query(30, "after.bad-udp.test.", RecordType::A))
        .await;
    assert_answer(
        &client.recv().await,
        30,
        "after.bad-udp.test.",
        RecordType::A,
    );
    assert_no_more_replies(&mut client).await;

    let text = scrape(metrics).await;
    assert_eq!(value(&text, BAD_REPLY), 5.0, "only the hollow-only names");
    // Each hollow reply; a hollow-only query is also sent once more after
    // the resend delay, and gets another.
    let hollow = value(&text, BAD_REPLIES);
    assert!((10.0..=15.0).contains(&hollow), "{BAD_REPLIES} {hollow}");
    assert_eq!(value(&text, MISMATCHED), 5.0, "the short datagrams");
}

/// Over a pooled `tcp://` upstream: a reply whose header claims records
/// that are not there is counted and passed over, so the real answer that
/// follows it is delivered, and a query that gets only such replies is
/// answered SERVFAIL (counted) when its try is over; the connection goes
/// on. A 5-byte frame breaks the framing, so the connection is dropped and
/// the query sent again on a new one, which answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tcp_replies_are_passed_over_for_the_real_answer() {
    let up = Fake::tcp(Arc::new(|q: &[u8], conn| {
        if has_label(q, "hollow") {
            vec![Out::Frame(hollow(q))]
        } else if has_label(q, "hollow-then-real") {
            vec![Out::Frame(hollow(q)), Out::Frame(real(q))]
        } else if has_label(q, "short") && conn == 0 {
            vec![Out::Raw(vec![0, 5, 1, 2, 3, 4, 5])]
        } else {
            vec![Out::Frame(real(q))]
        }
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "1s").await;
    let mut client = server.client().await;

    let names = [
        "hollow.one.bad-tcp.test.",
        "fine.one.bad-tcp.test.",
        "hollow-then-real.one.bad-tcp.test.",
    ];
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let replies = ask_each_once(&mut client, &names, 0).await;
    assert_reply_header(
        &replies[0],
        0,
        &names[0],
        RecordType::A,
        ResponseCode::ServFail,
    );
    assert_answer(&replies[1], 1, &names[1], RecordType::A);
    assert_answer(&replies[2], 2, &names[2], RecordType::A);
    assert_eq!(up.accepted(), 1, "a bad reply does not cost the connection");

    let started = Instant::now();
    client
        .send(&query(5, "short.bad-tcp.test.", RecordType::A))
        .await;
    assert_answer(
        &client.recv().await,
        5,
        "short.bad-tcp.test.",
        RecordType::A,
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let names: Vec<String> = (0..5).map(|i| format!("after{i}.bad-tcp.test.")).collect();
    ask_all(&mut client, &names, 10).await;
    assert_no_more_replies(&mut client).await;
    assert_eq!(
        up.accepted(),
        2,
        "one new connection after the broken frame"
    );

    let text = scrape(metrics).await;
    assert_eq!(value(&text, BAD_REPLY), 1.0);
    assert_eq!(value(&text, BAD_REPLIES), 2.0);
    assert_eq!(value(&text, LOST), 1.0);
}

/// Two upstreams, the first of which answers every query only with replies
/// whose records are broken: each query is failed over when its first try
/// is over, and the second upstream's answer reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_only_sends_broken_replies_is_failed_over() {
    let broken = Fake::udp(Arc::new(|q: &[u8]| vec![hollow(q), hollow(q)]), None).await;
    let good = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &broken.addr.to_string(),
        "--upstream",
        &good.addr.to_string(),
        "--upstream-policy",
        "first-available",
        "--upstream-timeout",
        "1s",
        "--health-check-interval",
        "60s",
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..5).map(|i| format!("q{i}.broken-first.test.")).collect();
    ask_all(&mut client, &names, 0).await;
    assert_no_more_replies(&mut client).await;
    assert_eq!(good.received().len(), 5, "each query failed over once");
    let text = scrape(metrics).await;
    assert_eq!(value(&text, "dotgate_upstream_failovers_total"), 5.0);
    // Two per datagram sent (resends included).
    assert!(value(&text, BAD_REPLIES) >= 10.0);
}

// ---------- a signed reply ----------

/// A TSIG record (RFC 8945) for key `key.example.`, hmac-sha256, with a
/// 32-byte MAC: what a resolver that signs its replies appends last.
fn tsig_record(original_id: [u8; 2]) -> Vec<u8> {
    let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
    rdata.extend_from_slice(&[0, 0, 0x65, 0x43, 0x21, 0x00, 1, 44, 0, 32]);
    rdata.extend((0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5c));
    rdata.extend_from_slice(&original_id);
    rdata.extend_from_slice(&[0, 0, 0, 0]);
    let mut record = b"\x03key\x07example\x00".to_vec();
    record.extend_from_slice(&[0, 250, 0, 255, 0, 0, 0, 0]);
    record.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&rdata);
    record
}

/// A signed answer to `query`, without OPT: the ID and question, one A
/// record whose owner is written out in full (no compression pointer), then
/// a TSIG record as the only additional record.
fn signed_answer(query: &[u8]) -> Vec<u8> {
    let end = question_end(query);
    let mut out = query[..end].to_vec();
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 0x80;
    out[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1]);
    out.extend_from_slice(&query[12..end - 4]);
    out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99]);
    out.extend_from_slice(&tsig_record([query[0], query[1]]));
    out
}

/// A TSIG-signed reply without OPT to a query that had one (and asks for
/// padding and keepalive): the client's reply has dotgate's OPT record
/// before the TSIG record, which is still the last record (RFC 8945) and
/// byte for byte as the upstream sent it; ARCOUNT counts both; and every
/// byte before them is the upstream's (only the ID is the client's), so a
/// client holding the key digests what the upstream signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_reply_gets_its_opt_before_the_untouched_tsig() {
    let up = Fake::udp(Arc::new(|q: &[u8]| vec![signed_answer(q)]), None).await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "2s").await;
    let mut client = server.client().await;
    let name = "signed.tsig.test.";
    let mut asked = with_opt(query(0x1234, name, RecordType::A));
    if let Some(edns) = asked.edns.as_mut() {
        let options = edns.options_mut();
        options.insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
            12,
            Vec::new(),
        ));
        options.insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
            11,
            Vec::new(),
        ));
    }
    client.send(&asked).await;
    let reply = recv_bytes(&mut client).await;
    let expected = signed_answer(&encode(&query(0, name, RecordType::A)));
    let tsig = tsig_record([0, 0]);
    let tsig_at = expected.len() - tsig.len();

    assert_eq!(reply[..2], [0x12, 0x34], "the client's ID");
    assert_eq!(reply[10..12], [0, 2], "ARCOUNT: the OPT and the TSIG");
    let (records, end) = raw_records(&reply);
    assert_eq!(end, reply.len());
    let additional: Vec<u16> = records
        .iter()
        .filter(|r| r.additional)
        .map(|r| r.rtype)
        .collect();
    assert_eq!(additional, [41, 250], "OPT, then TSIG last");
    // The original ID field holds the upstream's own ID (dotgate's random
    // one); every other byte is as signed.
    let tsig_rdata = records.last().unwrap().rdata;
    let original = &tsig_rdata[tsig_rdata.len() - 6..tsig_rdata.len() - 4];
    assert_eq!(
        reply[reply.len() - tsig.len()..],
        tsig_record([original[0], original[1]]),
        "the TSIG record as the upstream sent it"
    );
    assert_eq!(
        reply[2..10],
        expected[2..10],
        "flags and the other counts as sent"
    );
    assert_eq!(
        reply[12..tsig_at],
        expected[12..tsig_at],
        "question and answer untouched (no compression added)"
    );
    let parsed = parse(&reply);
    assert_eq!(parsed.answers.len(), 1);
    assert!(parsed.edns.is_some());
}

// ---------- 5: a TCP connection cut mid-reply ----------

/// A pooled `tcp://` upstream that writes half of a reply and then resets
/// the connection (the first one), or closes it (the second one), with
/// other queries in flight: every query is sent again on a new connection
/// and answered with its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_reply_cut_in_half_is_asked_again() {
    let up = Fake::tcp(Arc::new(|q: &[u8], conn| {
        let reply = frame(&real(q));
        let half = reply[..reply.len() / 2].to_vec();
        if has_label(q, "rst") && conn == 0 {
            vec![Out::Raw(half), Out::Reset]
        } else if has_label(q, "fin") && conn == 1 {
            vec![Out::Raw(half), Out::Close]
        } else {
            vec![Out::Raw(reply)]
        }
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    for (round, cut) in ["rst", "fin"].into_iter().enumerate() {
        // Fewer than a connection's pipeline depth: all on one connection.
        let names: Vec<String> = (0..12)
            .map(|i| {
                if i == 2 {
                    format!("{cut}.q{i}.cut.test.")
                } else {
                    format!("q{i}.{cut}-round.cut.test.")
                }
            })
            .collect();
        let started = Instant::now();
        ask_all(&mut client, &names, 100 * round as u16).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(up.accepted(), round + 2, "a new connection after the cut");
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(
        value(&text, LOST),
        2.0,
        "two connections lost with queries in flight"
    );
}

/// An upstream that cuts every reply in half and resets: the query is tried
/// once more on a new connection, then gets SERVFAIL with its ID and
/// question, long before the upstream timeout; the next query that the
/// upstream answers whole is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_upstream_that_always_cuts_its_replies_gives_servfail() {
    let up = Fake::tcp(Arc::new(|q: &[u8], _| {
        let reply = frame(&real(q));
        if has_label(q, "cut") {
            vec![Out::Raw(reply[..reply.len() / 2].to_vec()), Out::Reset]
        } else {
            vec![Out::Raw(reply)]
        }
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    for id in 0..3u16 {
        let name = format!("cut.q{id}.always.test.");
        let started = Instant::now();
        client.send(&query(id, &name, RecordType::A)).await;
        let reply = client.recv().await;
        assert_reply_header(&reply, id, &name, RecordType::A, ResponseCode::ServFail);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let fine = format!("fine.q{id}.always.test.");
        client.send(&query(100 + id, &fine, RecordType::A)).await;
        assert_answer(&client.recv().await, 100 + id, &fine, RecordType::A);
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, UPSTREAM_ERROR), 3.0);
    assert!(
        up.accepted() >= 6,
        "two tries per cut query: {}",
        up.accepted()
    );
}

/// The TCP retry of a truncated UDP answer, cut in half and reset: SERVFAIL
/// with the client's ID and question, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tc_retry_cut_in_half_gives_servfail() {
    let up = Fake::udp(
        Arc::new(|q: &[u8]| vec![truncated(q)]),
        Some(Arc::new(|q: &[u8], _| {
            let reply = frame(&real(q));
            vec![Out::Raw(reply[..reply.len() / 2].to_vec()), Out::Reset]
        })),
    )
    .await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    let started = Instant::now();
    client.send(&query(7, "cut.tc.test.", RecordType::A)).await;
    let reply = client.recv().await;
    assert_reply_header(
        &reply,
        7,
        "cut.tc.test.",
        RecordType::A,
        ResponseCode::ServFail,
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_no_more_replies(&mut client).await;
    assert_eq!(value(&scrape(metrics).await, UPSTREAM_ERROR), 1.0);
}

// ---------- 6: the largest answers ----------

/// Size of the big answers: close to the 65,535-byte limit.
const HUGE: usize = 65_000;

/// Checks a client's copy of a [`huge_answer`]: the upstream's bytes
/// exactly, with the client's ID, and TXT records for `name` throughout.
fn assert_huge(bytes: &[u8], upstream: &[u8], id: u16, name: &str) {
    assert_eq!(bytes.len(), HUGE);
    let mut want = upstream.to_vec();
    want[..2].copy_from_slice(&id.to_be_bytes());
    assert!(
        bytes == want.as_slice(),
        "the answer was changed on the way"
    );
    let reply = parse(bytes);
    assert_reply_header(&reply, id, name, RecordType::TXT, ResponseCode::NoError);
    assert!(!reply.metadata.truncation);
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[6], bytes[7]])),
        reply.answers.len()
    );
    assert!(reply.answers.len() > 200, "{} records", reply.answers.len());
    for record in &reply.answers {
        assert_eq!(lower_fqdn(&record.name.to_ascii()), lower_fqdn(name));
        assert!(matches!(record.data, RData::TXT(_)), "{record:?}");
    }
}

/// The upstream's last huge answer, as sent (with the upstream's ID).
type Sent = Arc<std::sync::Mutex<Vec<u8>>>;

/// A 65,000-byte answer from a `tcp://` upstream reaches the client whole,
/// byte for byte; so does the next, ordinary answer on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_65000_byte_answer_over_tcp_is_delivered_whole() {
    let sent: Sent = Arc::default();
    let record = sent.clone();
    let up = Fake::tcp(Arc::new(move |q: &[u8], _| {
        if has_label(q, "huge") {
            let reply = huge_answer(q, HUGE);
            *record.lock().unwrap() = reply.clone();
            vec![Out::Frame(reply)]
        } else {
            vec![Out::Frame(real(q))]
        }
    }))
    .await;
    let metrics = metrics_addr();
    let server = tcp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    let name = "huge.big-tcp.test.";
    for id in [1, 2] {
        client.send(&query(id, name, RecordType::TXT)).await;
        let bytes = recv_bytes(&mut client).await;
        let upstream = sent.lock().unwrap().clone();
        assert_huge(&bytes, &upstream, id, name);
        client
            .send(&query(10 + id, "small.big-tcp.test.", RecordType::A))
            .await;
        assert_answer(
            &client.recv().await,
            10 + id,
            "small.big-tcp.test.",
            RecordType::A,
        );
    }
    assert_no_more_replies(&mut client).await;
    assert_eq!(up.accepted(), 1);
}

/// A UDP answer with TC set, then a 65,000-byte answer to the TCP retry:
/// the client gets the whole answer, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_65000_byte_answer_to_a_tc_retry_is_delivered_whole() {
    let sent: Sent = Arc::default();
    let record = sent.clone();
    let up = Fake::udp(
        Arc::new(|q: &[u8]| {
            if has_label(q, "huge") {
                vec![truncated(q)]
            } else {
                vec![real(q)]
            }
        }),
        Some(Arc::new(move |q: &[u8], _| {
            let reply = huge_answer(q, HUGE);
            *record.lock().unwrap() = reply.clone();
            vec![Out::Frame(reply)]
        })),
    )
    .await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    let name = "huge.big-tc.test.";
    client.send(&query(3, name, RecordType::TXT)).await;
    let bytes = recv_bytes(&mut client).await;
    let upstream = sent.lock().unwrap().clone();
    assert_huge(&bytes, &upstream, 3, name);
    client
        .send(&query(4, "small.big-tc.test.", RecordType::A))
        .await;
    assert_answer(&client.recv().await, 4, "small.big-tc.test.", RecordType::A);
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, "dotgate_upstream_tc_fallbacks_total"), 1.0);
    assert_eq!(up.accepted(), 1);
}

/// Truncated answers are retried over TCP on a kept connection: six one
/// after another and eight at once all go over the one connection, and
/// each client gets its own answer; an upstream that closes the connection
/// after an answer gets a new one for the next retry, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_retries_share_a_kept_tcp_connection() {
    let up = Fake::udp(
        Arc::new(|q: &[u8]| {
            if has_label(q, "tc") {
                vec![truncated(q)]
            } else {
                vec![real(q)]
            }
        }),
        Some(Arc::new(|q: &[u8], _| {
            if has_label(q, "close") {
                vec![Out::Frame(real(q)), Out::Close]
            } else {
                vec![Out::Frame(real(q))]
            }
        })),
    )
    .await;
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "3s").await;
    let mut client = server.client().await;
    for i in 0..6u16 {
        let name = format!("tc.one{i}.kept.test.");
        client.send(&query(i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, i, &name, RecordType::A);
    }
    let burst: Vec<String> = (0..8).map(|i| format!("tc.burst{i}.kept.test.")).collect();
    for (i, reply) in ask_each_once(&mut client, &burst, 100)
        .await
        .iter()
        .enumerate()
    {
        assert_answer(reply, 100 + i as u16, &burst[i], RecordType::A);
    }
    assert_eq!(up.accepted(), 1, "one connection for 14 retries");

    // Closed by the upstream after its answer: the next retry opens anew.
    for i in 0..3u16 {
        let name = format!("tc.close.again{i}.kept.test.");
        client.send(&query(200 + i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, 200 + i, &name, RecordType::A);
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, "dotgate_upstream_tc_fallbacks_total"), 17.0);
    assert_eq!(value(&text, UPSTREAM_ERROR), 0.0);
    assert_eq!(up.accepted(), 3, "a new connection after each close");
}

// ---------- 7: TCP refused after a truncated answer ----------

/// An upstream that answers `tc` names over UDP with TC set and refuses TCP
/// on its port: those queries get SERVFAIL with their ID and question, and
/// the upstream is not marked down: 10 such queries (4 of them at once, so
/// more than three fail in a row), interleaved with ordinary ones, which
/// are all answered without delay; no query was ever sent in panic mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_refused_after_tc_gives_servfail_and_keeps_the_upstream() {
    let up = Fake::udp(
        Arc::new(|q: &[u8]| {
            if has_label(q, "tc") {
                vec![truncated(q)]
            } else {
                vec![real(q)]
            }
        }),
        None,
    )
    .await;
    let refused = TcpStream::connect(up.addr).await;
    assert!(
        refused.is_err(),
        "the fake's TCP port must refuse connections"
    );
    let metrics = metrics_addr();
    let server = udp_server(up.addr, metrics, "2s").await;
    let mut client = server.client().await;

    let burst: Vec<String> = (0..4).map(|i| format!("tc.b{i}.refused.test.")).collect();
    for (i, reply) in ask_each_once(&mut client, &burst, 0)
        .await
        .iter()
        .enumerate()
    {
        assert_reply_header(
            reply,
            i as u16,
            &burst[i],
            RecordType::A,
            ResponseCode::ServFail,
        );
    }
    for i in 0..6u16 {
        let tc = format!("tc.q{i}.refused.test.");
        let fine = format!("fine.q{i}.refused.test.");
        client.send(&query(100 + i, &tc, RecordType::A)).await;
        let reply = client.recv().await;
        assert_reply_header(&reply, 100 + i, &tc, RecordType::A, ResponseCode::ServFail);
        let sent = Instant::now();
        client.send(&query(200 + i, &fine, RecordType::A)).await;
        assert_answer(&client.recv().await, 200 + i, &fine, RecordType::A);
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "answered in {:?}",
            sent.elapsed()
        );
    }
    assert_no_more_replies(&mut client).await;
    let text = scrape(metrics).await;
    assert_eq!(value(&text, UPSTREAM_ERROR), 10.0);
    assert_eq!(value(&text, "dotgate_upstream_tc_fallbacks_total"), 10.0);
    let gauge = format!("dotgate_upstream_up{{upstream=\"{}\"}}", up.addr);
    assert_eq!(value(&text, &gauge), 1.0, "the upstream is still up");
    assert_eq!(value(&text, "dotgate_upstream_all_down_total"), 0.0);
}

// ---------- 9: the only upstream goes away and comes back ----------

/// Stops the only upstream: queries get SERVFAIL with their ID and
/// question; restarts it: within a couple of seconds queries are answered
/// again, by the same dotgate.
async fn goes_away_and_comes_back(mut up: Upstream, server: Server, tag: &str) {
    let mut client = server.client().await;
    let first = format!("first.{tag}.test.");
    client.send(&query(1, &first, RecordType::A)).await;
    assert_answer(&client.recv().await, 1, &first, RecordType::A);

    up.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down: Vec<String> = (0..4).map(|i| format!("down{i}.{tag}.test.")).collect();
    let started = Instant::now();
    for (i, reply) in ask_each_once(&mut client, &down, 10)
        .await
        .iter()
        .enumerate()
    {
        assert_reply_header(
            reply,
            10 + i as u16,
            &down[i],
            RecordType::A,
            ResponseCode::ServFail,
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let id = 20;
    let name = format!("still-down.{tag}.test.");
    client.send(&query(id, &name, RecordType::A)).await;
    assert_reply_header(
        &client.recv().await,
        id,
        &name,
        RecordType::A,
        ResponseCode::ServFail,
    );

    up.restart().await;
    let restarted = Instant::now();
    let mut id = 100u16;
    loop {
        let name = format!("back{id}.{tag}.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        let reply = client.recv().await;
        if reply.metadata.response_code == ResponseCode::NoError {
            assert_answer(&reply, id, &name, RecordType::A);
            break;
        }
        assert_reply_header(&reply, id, &name, RecordType::A, ResponseCode::ServFail);
        assert!(
            restarted.elapsed() < Duration::from_secs(3),
            "not answered again within 3 s of the restart"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = (0..10).map(|i| format!("after{i}.{tag}.test.")).collect();
    ask_all(&mut client, &names, 200).await;
    assert_no_more_replies(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_udp_upstream_comes_back_by_itself() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &[
            "--upstream-timeout",
            "500ms",
            "--health-check-interval",
            "200ms",
        ],
    )
    .await;
    goes_away_and_comes_back(up, server, "back-udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_tcp_upstream_comes_back_by_itself() {
    let up = Upstream::start().await;
    let entry = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-timeout",
        "500ms",
        "--health-check-interval",
        "200ms",
    ])
    .await;
    goes_away_and_comes_back(up, server, "back-tcp").await;
}
