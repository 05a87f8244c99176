//! Tests of the connection loop, through `connection::serve` and its
//! signature only (a stream, a peer, [`Shared`], a shutdown token -> a
//! [`CloseReason`]), so that they hold whatever its internals become.
//!
//! The client side is a `tokio::io::duplex` stream speaking RFC 7858 framing;
//! the upstream is a real [`Pool`] toward a UDP responder on 127.0.0.1 that
//! answers each name after the delay the name asks for, or never. Every
//! wait is bounded. Timing is asserted only in ways a loaded machine cannot
//! break: a lower bound (a timer never fires early), an order of events, or
//! a count; where an exact duration matters (the idle timer), the test runs
//! on tokio's paused clock with messages dotgate answers itself, so that no
//! socket is involved while the clock jumps.
//!
//! Over 700 lines because each invariant needs its own scenario; the
//! responder and the client helpers at the top are shared by all of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{PoolSettings, Timeouts, UpstreamPolicy, UpstreamSpec};
use crate::metrics::stats::{CloseReason, Stats};
use crate::proto::edns::KEEPALIVE;
use crate::proto::message_reader::{MessageBudget, ReadLimits};
use crate::server::connection::{serve, Shared};
use crate::upstream::Pool;

/// The longest any single step of a test may take before it fails:
/// generous, as it only decides how long a failure takes to show.
const BOUND: Duration = Duration::from_secs(10);

// ---------- the upstream ----------

/// What the responder has seen.
#[derive(Default)]
struct Seen {
    /// Queries received (resends included).
    received: AtomicUsize,
    /// Queries received and not yet answered.
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A UDP responder on 127.0.0.1. The first label of a name says what it
/// does: `q<N>-d<MS>` answers after MS milliseconds with the A record
/// [`address`]`(N)`; `q<N>-drop` is never answered.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer for query number `n`: unique per query, so that an answer
/// given to the wrong query shows.
fn address(n: u16) -> Ipv4Addr {
    let [hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(10, 53, hi, lo)
}

/// `(n, Some(delay))` or `(n, None)` for a name that is never answered.
fn script(name: &str) -> Option<(u16, Option<Duration>)> {
    let label = name.split('.').next()?;
    let (n, what) = label.strip_prefix('q')?.split_once('-')?;
    let n = n.parse().ok()?;
    if what == "drop" {
        return Some((n, None));
    }
    let ms = what.strip_prefix('d')?.parse().ok()?;
    Some((n, Some(Duration::from_millis(ms))))
}

impl Upstream {
    async fn start() -> Upstream {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first() else {
                    continue;
                };
                let Some((number, delay)) = script(&q.name().to_ascii()) else {
                    continue;
                };
                state.received.fetch_add(1, Ordering::SeqCst);
                let Some(delay) = delay else {
                    continue;
                };
                let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
                state.max_active.fetch_max(now, Ordering::SeqCst);
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.queries = query.queries.clone();
                if query.edns.is_some() {
                    let mut edns = Edns::new();
                    edns.set_max_payload(1232);
                    reply.set_edns(edns);
                }
                if q.query_type() == RecordType::A {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A(address(number))),
                    ));
                }
                let sock = sock.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // Counted as answered before it leaves, so that the
                    // next query it lets in is never counted with it.
                    state.active.fetch_sub(1, Ordering::SeqCst);
                    let _ = sock.send_to(&reply.to_vec().unwrap(), from).await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    fn received(&self) -> usize {
        self.seen.received.load(Ordering::SeqCst)
    }

    fn max_active(&self) -> usize {
        self.seen.max_active.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the responder has received `n` queries.
    async fn wait_received(&self, n: usize) {
        let deadline = Instant::now() + BOUND;
        while self.received() < n {
            assert!(
                Instant::now() < deadline,
                "the upstream got {} of {n} queries",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------- the server side ----------

/// The settings of one test's connection.
#[derive(Clone, Copy)]
struct Settings {
    idle: Duration,
    read: Duration,
    upstream: Duration,
    max_inflight: usize,
    max_queries: Option<u64>,
    max_age: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            idle: Duration::from_secs(10),
            read: Duration::from_secs(10),
            // Far above any scripted delay, so that a loaded machine does
            // not turn a slow answer into SERVFAIL.
            upstream: Duration::from_secs(8),
            max_inflight: 128,
            max_queries: None,
            max_age: None,
        }
    }
}

/// [`Shared`] as the server builds it (server/accept.rs), toward `upstream`.
async fn shared(upstream: &Upstream, s: Settings) -> Arc<Shared> {
    let stats = Arc::new(Stats::new().expect("metrics register"));
    let pool = Pool::new(
        &[UpstreamSpec::Plain(upstream.addr)],
        &PoolSettings {
            policy: UpstreamPolicy::FirstAvailable,
            // No health probes during a test.
            health_interval: Duration::from_secs(3600),
            ca: None,
            bootstrap: None,
        },
        &Default::default(),
        s.upstream,
        stats.clone(),
    )
    .await
    .expect("the upstream pool");
    Arc::new(Shared {
        upstream: pool,
        stats: stats.clone(),
        timeouts: Timeouts {
            idle: s.idle,
            handshake: Duration::from_secs(10),
            read: s.read,
            upstream: s.upstream,
            drain: s.upstream + Duration::from_secs(3),
        },
        max_inflight: s.max_inflight,
        max_queries: s.max_queries,
        max_age: s.max_age,
        allow: Default::default(),
        client_ids: Arc::new(
            crate::server::client_ids::ClientIds::new(&Default::default()).expect("no ID file"),
        ),
        tell_upstream: Default::default(),
        doh_path: "/dns-query".to_string(),
        forwarding: Default::default(),
        rate_limit: None,
        read_limits: ReadLimits {
            read_timeout: Some(s.read),
            budget: Some(MessageBudget::new(64 << 20, Arc::new(|| {}))),
        },
    })
}

// ---------- the client side ----------

/// What the client read.
#[derive(Debug)]
enum Read {
    Reply(Message),
    /// The server closed its side (after its last reply).
    Eof,
    Timeout,
}

/// The client end of a connection served by `serve` in its own task.
struct Client {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    served: JoinHandle<CloseReason>,
}

impl Client {
    fn open(shared: Arc<Shared>, shutdown: CancellationToken) -> Client {
        Client::open_with_buffer(shared, shutdown, 64 * 1024)
    }

    /// With `buffer` bytes of room in each direction of the stream.
    fn open_with_buffer(shared: Arc<Shared>, shutdown: CancellationToken, buffer: usize) -> Client {
        let (client, server) = tokio::io::duplex(buffer);
        let peer: SocketAddr = ([127, 0, 0, 1], 50_853).into();
        let served = tokio::spawn(serve(server, peer.into(), shared, shutdown));
        let (rd, wr) = tokio::io::split(client);
        Client { rd, wr, served }
    }

    /// Sends raw bytes in one write.
    async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(BOUND, async {
            self.wr.write_all(bytes).await.unwrap();
            self.wr.flush().await.unwrap();
        })
        .await
        .expect("the server reads");
    }

    /// Sends the messages, each with its length prefix, in one write.
    async fn send(&mut self, msgs: &[Vec<u8>]) {
        let mut batch = Vec::new();
        for msg in msgs {
            batch.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
            batch.extend_from_slice(msg);
        }
        self.send_raw(&batch).await;
    }

    /// FIN: the client will send nothing more, and still reads.
    async fn close_write(&mut self) {
        tokio::time::timeout(BOUND, self.wr.shutdown())
            .await
            .expect("shutdown in time")
            .unwrap();
    }

    async fn read(&mut self, limit: Duration) -> Read {
        let frame = async {
            let mut len = [0u8; 2];
            match self.rd.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Read::Eof,
                Err(e) => panic!("reading a reply: {e}"),
            }
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            self.rd
                .read_exact(&mut msg)
                .await
                .expect("a whole reply after its length");
            Read::Reply(Message::from_vec(&msg).expect("a DNS reply"))
        };
        tokio::time::timeout(limit, frame)
            .await
            .unwrap_or(Read::Timeout)
    }

    /// The next reply, within [`BOUND`]; fails the test on anything else.
    async fn reply(&mut self) -> Message {
        match self.read(BOUND).await {
            Read::Reply(m) => m,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The end of the server's stream, within [`BOUND`]; fails on a reply.
    async fn eof(&mut self) {
        match self.read(BOUND).await {
            Read::Eof => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }

    /// Why `serve` returned, within [`BOUND`].
    async fn reason(self) -> CloseReason {
        tokio::time::timeout(BOUND, self.served)
            .await
            .expect("serve returns")
            .expect("serve does not panic")
    }
}

// ---------- DNS messages ----------

/// A query for A `name` with RD set.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    msg.to_vec().unwrap()
}

/// The same query with an OPT record asking for edns-tcp-keepalive.
fn query_keepalive(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::from_vec(&query(id, name)).unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Unknown(KEEPALIVE, Vec::new()));
    msg.set_edns(edns);
    msg.to_vec().unwrap()
}

/// Query number `n`'s name, answered after `delay_ms`.
fn slow(n: u16, delay_ms: u64) -> String {
    format!("q{n}-d{delay_ms}.conn.test.")
}

/// Query number `n`'s name, never answered.
fn dropped(n: u16) -> String {
    format!("q{n}-drop.conn.test.")
}

/// Checks that `reply` is the response to query `id` for `name`, with
/// `rcode`, and (for NOERROR) the answer the responder gives that name.
fn assert_reply(reply: &Message, id: u16, name: &str, rcode: ResponseCode) {
    assert_eq!(reply.metadata.id, id, "reply ID for {name}");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.response_code, rcode, "RCODE for {name}");
    assert_eq!(reply.queries.len(), 1, "the question echoed for {name}");
    assert_eq!(reply.queries[0].name().to_ascii().to_lowercase(), name);
    if rcode == ResponseCode::NoError {
        let (n, _) = script(name).unwrap();
        assert_eq!(reply.answers.len(), 1, "one answer for {name}");
        assert_eq!(reply.answers[0].data, RData::A(A(address(n))), "{name}");
    }
}

/// The keepalive a reply advertises, in 100 ms units.
fn keepalive(reply: &Message) -> Option<u16> {
    reply
        .edns
        .as_ref()?
        .options()
        .as_ref()
        .iter()
        .find_map(|(_, o)| match o {
            EdnsOption::Unknown(KEEPALIVE, data) if data.len() == 2 => {
                Some(u16::from_be_bytes([data[0], data[1]]))
            }
            _ => None,
        })
}

// ---------- one reply per query, in completion order (R10, R11) ----------

/// 50 pipelined queries with mixed delays: exactly 50 replies, each with its
/// query's ID, question and answer, in the order they were ready: every
/// fast one before every slower one, and the slow first query last.
#[tokio::test]
async fn pipelined_queries_get_one_reply_each_in_completion_order() {
    let up = Upstream::start().await;
    let mut client = Client::open(
        shared(&up, Settings::default()).await,
        CancellationToken::new(),
    );
    // Query 0 takes 450 ms; the others 0, 150 or 300 ms.
    let delay = |n: u16| if n == 0 { 450 } else { u64::from(n % 3) * 150 };
    let id = |n: u16| 0x4000 + n * 7;
    let names: Vec<String> = (0..50).map(|n| slow(n, delay(n))).collect();
    let queries: Vec<Vec<u8>> = (0..50).map(|n| query(id(n), &names[n as usize])).collect();
    client.send(&queries).await;

    let mut answered = [false; 50];
    let mut delays = Vec::new();
    for _ in 0..50 {
        let reply = client.reply().await;
        let n = (0..50)
            .find(|&n| id(n) == reply.metadata.id)
            .unwrap_or_else(|| panic!("a reply with an unknown ID {}", reply.metadata.id));
        assert!(!answered[n as usize], "two replies for query {n}");
        answered[n as usize] = true;
        assert_reply(&reply, id(n), &names[n as usize], ResponseCode::NoError);
        delays.push(delay(n));
    }
    assert!(
        delays.windows(2).all(|w| w[0] <= w[1]),
        "replies not in completion order: {delays:?}"
    );
    assert_eq!(delays.last(), Some(&450), "the slow first query comes last");
    // Pipelined, not one after another: the 34 delayed queries were at the
    // upstream together (a count, not a wall-clock bound).
    assert!(
        up.max_active() >= 10,
        "at most {} queries at the upstream at once",
        up.max_active()
    );

    client.close_write().await;
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Client);
    assert_eq!(up.received(), 50, "each query sent upstream once");
}

/// A query the upstream never answers gets exactly one reply: SERVFAIL with
/// its ID and question, after the upstream timeout; the query after it is
/// answered first, as soon as it is ready.
#[tokio::test]
async fn an_unanswered_query_gets_exactly_one_servfail() {
    let up = Upstream::start().await;
    let settings = Settings {
        upstream: Duration::from_millis(300),
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let started = Instant::now();
    client
        .send(&[query(0xbeef, &dropped(0)), query(0x0102, &slow(1, 0))])
        .await;
    let first = client.reply().await;
    assert_reply(&first, 0x0102, &slow(1, 0), ResponseCode::NoError);
    let second = client.reply().await;
    assert_reply(&second, 0xbeef, &dropped(0), ResponseCode::ServFail);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "SERVFAIL only at the upstream timeout: {:?}",
        started.elapsed()
    );
    // Nothing more for it: the next thing after FIN is the server's close.
    client.close_write().await;
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Client);
}

/// A query dotgate cannot read past its header still gets exactly one
/// reply (FORMERR, with its ID), and the connection goes on.
#[tokio::test]
async fn an_unreadable_query_gets_exactly_one_formerr() {
    let up = Upstream::start().await;
    let mut client = Client::open(
        shared(&up, Settings::default()).await,
        CancellationToken::new(),
    );
    // A header with no question (QDCOUNT 0).
    let mut headless = vec![0u8; 12];
    headless[..2].copy_from_slice(&0x5151u16.to_be_bytes());
    client.send(&[headless, query(0x5152, &slow(2, 50))]).await;
    let reply = client.reply().await;
    assert_eq!(reply.metadata.id, 0x5151);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_reply(
        &client.reply().await,
        0x5152,
        &slow(2, 50),
        ResponseCode::NoError,
    );
    client.close_write().await;
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Client);
    assert_eq!(up.received(), 1, "only the readable query went upstream");
}

// ---------- the idle timer (R13) ----------

/// Idle timeout T and an answer that takes about 2T: the connection stays
/// open until the reply is written (the reply, not the close, comes first),
/// and closes as Idle no sooner than T after it. The reply advertises T as
/// the keepalive (R14).
#[tokio::test]
async fn the_idle_timer_waits_for_the_query_in_flight() {
    let up = Upstream::start().await;
    let idle = Duration::from_millis(200);
    let settings = Settings {
        idle,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let started = Instant::now();
    client.send(&[query_keepalive(7, &slow(0, 450))]).await;
    let reply = client.reply().await;
    assert_reply(&reply, 7, &slow(0, 450), ResponseCode::NoError);
    assert_eq!(keepalive(&reply), Some(2), "T in 100 ms units");
    client.eof().await;
    // Lower bounds only (a timer never fires early): the reply was written
    // no sooner than 450 ms in, and the idle timer ran only after it. A
    // timer that ran during the query would have closed before the reply.
    let open = started.elapsed();
    assert!(
        open >= Duration::from_millis(450) + idle,
        "closed {open:?} after the query; the answer took 450 ms, the idle timeout is {idle:?}"
    );
    assert_eq!(client.reason().await, CloseReason::Idle);
}

/// The idle timer restarts with each message: messages every T/3 keep the
/// connection open to 2T and past it, then it closes as Idle exactly T
/// after the last reply. On the paused clock, with messages dotgate answers
/// itself, so the durations are exact whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn each_message_restarts_the_idle_timer() {
    let up = Upstream::start().await;
    let idle = Duration::from_secs(3);
    let settings = Settings {
        idle,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let started = Instant::now();
    for n in 0..6u16 {
        client.send_raw(&local_query(n)).await;
        let reply = client.reply().await;
        assert_eq!(reply.metadata.id, n);
        tokio::time::sleep(idle / 3).await;
    }
    assert_eq!(started.elapsed(), idle * 2, "open for 2T");
    let last = Instant::now() - idle / 3;
    client.eof().await;
    assert_eq!(last.elapsed(), idle, "closed T after the last reply");
    assert_eq!(client.reason().await, CloseReason::Idle);
}

/// A message dotgate answers itself, with no upstream and no timer: a
/// header with no question (FORMERR), framed. The idle tests use it so that
/// nothing but the paused clock decides when things happen.
fn local_query(id: u16) -> Vec<u8> {
    let mut framed = vec![0, 12];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&[0; 10]);
    framed
}

/// Idle timeout T: a query whose first byte arrives just before T and the
/// rest just after it is answered, not cut (the read timeout governs a
/// message once begun); the idle timer then counts from that reply.
#[tokio::test(start_paused = true)]
async fn a_message_begun_before_the_idle_deadline_is_answered() {
    let up = Upstream::start().await;
    // Under BOUND, which bounds each wait of the client's.
    let idle = Duration::from_secs(2);
    let settings = Settings {
        idle,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let framed = local_query(0x0808);
    tokio::time::sleep(idle - Duration::from_millis(1)).await;
    client.send_raw(&framed[..1]).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    // Before the fix the server has closed by now: the write may fail, the
    // read below then sees the close instead of the reply.
    let _ = client.wr.write_all(&framed[1..]).await;
    let reply = client.reply().await;
    let replied = Instant::now();
    assert_eq!(reply.metadata.id, 0x0808);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    client.eof().await;
    assert_eq!(replied.elapsed(), idle, "idle counts from the reply");
    assert_eq!(client.reason().await, CloseReason::Idle);
}

/// A message begun just before the idle deadline and never finished is
/// closed by the read timeout, counted from its first byte, not by the idle
/// timer.
#[tokio::test(start_paused = true)]
async fn a_message_begun_before_the_idle_deadline_is_bounded_by_the_read_timeout() {
    let up = Upstream::start().await;
    let idle = Duration::from_secs(2);
    let read = Duration::from_secs(1);
    let settings = Settings {
        idle,
        read,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    tokio::time::sleep(idle - Duration::from_millis(1)).await;
    client.send_raw(&local_query(1)[..3]).await;
    let begun = Instant::now();
    client.eof().await;
    assert_eq!(begun.elapsed(), read, "closed at the read timeout");
    assert_eq!(client.reason().await, CloseReason::ReadTimeout);
}

// ---------- the in-flight limit (R16) ----------

/// max_inflight 2 and three slow queries: all three get replies, at most two
/// are ever at the upstream, and the third is read only once a reply frees
/// a place.
#[tokio::test]
async fn at_the_inflight_limit_the_reader_waits_and_drops_nothing() {
    let up = Upstream::start().await;
    let settings = Settings {
        max_inflight: 2,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let names: Vec<String> = (0..3).map(|n| slow(n, 200)).collect();
    let started = Instant::now();
    client
        .send(&[
            query(10, &names[0]),
            query(11, &names[1]),
            query(12, &names[2]),
        ])
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = client.reply().await;
        let n = usize::from(reply.metadata.id - 10);
        assert_reply(&reply, reply.metadata.id, &names[n], ResponseCode::NoError);
        ids.push(reply.metadata.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, [10, 11, 12], "one reply each");
    assert_eq!(
        up.max_active(),
        2,
        "two at the upstream at once, never three"
    );
    // A lower bound: the third query could start only once a first reply
    // (200 ms) freed a place, so its own reply came 400 ms in at the soonest.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the third query waited for a place: all three in {:?}",
        started.elapsed()
    );
    client.close_write().await;
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Client);
}

// ---------- ways out (R7, R15) ----------

/// The client sends FIN with three queries in flight: their replies are
/// written, then the server closes, and the reason is Client.
#[tokio::test]
async fn client_close_writes_the_replies_in_flight_first() {
    let up = Upstream::start().await;
    let mut client = Client::open(
        shared(&up, Settings::default()).await,
        CancellationToken::new(),
    );
    let names: Vec<String> = (0..3).map(|n| slow(n, 150 + u64::from(n) * 50)).collect();
    let queries: Vec<Vec<u8>> = (0..3).map(|n| query(n, &names[usize::from(n)])).collect();
    client.send(&queries).await;
    client.close_write().await;
    for n in 0..3u16 {
        let reply = client.reply().await;
        assert_reply(&reply, n, &names[usize::from(n)], ResponseCode::NoError);
    }
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Client);
}

/// A client gone altogether (both directions) between messages, nothing in
/// flight: Client.
#[tokio::test]
async fn a_client_that_goes_away_idle_is_client() {
    let up = Upstream::start().await;
    let mut client = Client::open(
        shared(&up, Settings::default()).await,
        CancellationToken::new(),
    );
    client.send(&[query(1, &slow(1, 0))]).await;
    assert_reply(&client.reply().await, 1, &slow(1, 0), ResponseCode::NoError);
    let Client { rd, wr, served } = client;
    drop(rd);
    drop(wr);
    let reason = tokio::time::timeout(BOUND, served)
        .await
        .expect("serve returns")
        .unwrap();
    assert_eq!(reason, CloseReason::Client);
}

/// Shutdown with three queries in flight: Shutdown, and their real answers
/// (not SERVFAILs) are written before the server closes.
#[tokio::test]
async fn shutdown_writes_the_pending_replies_then_closes() {
    let up = Upstream::start().await;
    let shutdown = CancellationToken::new();
    let mut client = Client::open(shared(&up, Settings::default()).await, shutdown.clone());
    let names: Vec<String> = (0..3).map(|n| slow(n, 300)).collect();
    let queries: Vec<Vec<u8>> = (0..3).map(|n| query(n, &names[usize::from(n)])).collect();
    client.send(&queries).await;
    up.wait_received(3).await;
    shutdown.cancel();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = client.reply().await;
        let n = reply.metadata.id;
        assert_reply(&reply, n, &names[usize::from(n)], ResponseCode::NoError);
        ids.push(n);
    }
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Shutdown);
}

/// max_queries 3 and four queries in one write: the first three are
/// answered (the last of them too), the fourth is never read, the replies
/// written after retirement began advertise keepalive 0, and the reason is
/// Retired.
#[tokio::test]
async fn max_queries_retires_after_the_last_reply() {
    let up = Upstream::start().await;
    let settings = Settings {
        max_queries: Some(3),
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let names = [slow(0, 200), slow(1, 0), slow(2, 100), slow(3, 0)];
    let queries: Vec<Vec<u8>> = (0..4)
        .map(|n| query_keepalive(n, &names[usize::from(n)]))
        .collect();
    client.send(&queries).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = client.reply().await;
        let n = reply.metadata.id;
        assert!(n < 3, "query {n} was past the limit, yet answered");
        assert_reply(&reply, n, &names[usize::from(n)], ResponseCode::NoError);
        if n != 1 {
            // Answered well after the third query was read.
            assert_eq!(keepalive(&reply), Some(0), "reply {n}: keepalive 0");
        }
        ids.push(n);
    }
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2]);
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Retired);
    assert_eq!(up.received(), 3, "the fourth query never went upstream");
}

/// A maximum age with a query in flight: the connection is retired at that
/// age, the query's reply still comes (keepalive 0), then the close.
#[tokio::test]
async fn max_age_retires_with_the_reply_in_flight_written() {
    let up = Upstream::start().await;
    let settings = Settings {
        max_age: Some(Duration::from_millis(200)),
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let started = Instant::now();
    client.send(&[query_keepalive(5, &slow(5, 400))]).await;
    let reply = client.reply().await;
    assert_reply(&reply, 5, &slow(5, 400), ResponseCode::NoError);
    assert_eq!(keepalive(&reply), Some(0), "written after retirement began");
    client.eof().await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(client.reason().await, CloseReason::Retired);
}

// ---------- broken clients ----------

/// A message begun and not finished within the read timeout: ReadTimeout.
#[tokio::test]
async fn a_partial_message_times_out() {
    let up = Upstream::start().await;
    let read = Duration::from_millis(200);
    let settings = Settings {
        read,
        ..Settings::default()
    };
    let mut client = Client::open(shared(&up, settings).await, CancellationToken::new());
    let full = query(9, &slow(9, 0));
    let mut framed = u16::try_from(full.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&full[..full.len() / 2]);
    let started = Instant::now();
    client.send_raw(&framed).await;
    client.eof().await;
    assert!(
        started.elapsed() >= read.mul_f32(0.9),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.reason().await, CloseReason::ReadTimeout);
}

/// A frame too short for a DNS header after a slow query: the connection
/// ends as Error, and the slow query's reply is still written first.
#[tokio::test]
async fn a_broken_frame_ends_with_error_after_the_replies_in_flight() {
    let up = Upstream::start().await;
    let mut client = Client::open(
        shared(&up, Settings::default()).await,
        CancellationToken::new(),
    );
    let mut bytes = Vec::new();
    let q = query(3, &slow(3, 150));
    bytes.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&q);
    bytes.extend_from_slice(&[0, 5, 1, 2, 3, 4, 5]);
    client.send_raw(&bytes).await;
    assert_reply(
        &client.reply().await,
        3,
        &slow(3, 150),
        ResponseCode::NoError,
    );
    client.eof().await;
    assert_eq!(client.reason().await, CloseReason::Error);
}

/// A client that sends queries and never reads: once its stream is full the
/// writer gives up after the idle timeout, and the connection ends (Error)
/// instead of hanging.
#[tokio::test]
async fn a_client_that_never_reads_is_closed() {
    let up = Upstream::start().await;
    let idle = Duration::from_millis(200);
    let settings = Settings {
        idle,
        ..Settings::default()
    };
    // Room for a couple of replies only.
    let mut client =
        Client::open_with_buffer(shared(&up, settings).await, CancellationToken::new(), 128);
    let queries: Vec<Vec<u8>> = (0..8).map(|n| query(n, &slow(n, 0))).collect();
    let started = Instant::now();
    client.send(&queries).await;
    // Within BOUND (client.reason), and not before the writer waited out
    // the idle timeout.
    let reason = client.reason().await;
    assert_eq!(reason, CloseReason::Error);
    assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
}

/// The task of an idle connection is most of what it holds: a DoH
/// connection's (HTTP/2, dotgate's own) stays near DoT's, and HTTP/1.1's
/// hyper state is not part of it (it once made every DoH task 2.5 KiB).
#[tokio::test]
async fn an_idle_connections_task_stays_small() {
    let upstream = Upstream::start().await;
    let shared = shared(&upstream, Settings::default()).await;
    let client = crate::server::client::Client::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)));
    let (io, _peer) = tokio::io::duplex(64);
    let dot = serve(io, client.clone(), shared.clone(), CancellationToken::new());
    let (io, _peer) = tokio::io::duplex(64);
    let doh = crate::server::doh::serve(
        io,
        crate::server::doh::Protocol::Http2,
        client,
        shared,
        CancellationToken::new(),
    );
    let (dot, doh) = (std::mem::size_of_val(&dot), std::mem::size_of_val(&doh));
    eprintln!("task of an idle connection: DoT {dot} bytes, DoH {doh} bytes");
    assert!(dot <= 1536, "DoT: {dot} bytes");
    assert!(doh <= 2048, "DoH: {doh} bytes");
}

/// Each request in flight is a future in its connection's task (and one
/// allocation): the UDP path's is kept small by boxing what only other
/// transports use (a stream upstream's state, the TCP retry).
#[tokio::test]
async fn a_query_in_flight_stays_small() {
    let upstream = Upstream::start().await;
    let shared = shared(&upstream, Settings::default()).await;
    let client = crate::server::client::Client::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)));
    let msg = query(1, "small.test.");
    let info = crate::proto::dns::parse_query(&msg).unwrap();
    let exchange = shared
        .upstream
        .exchange(&msg, &info, &client.origin, std::time::Instant::now());
    let head = crate::server::doh::exchange::Head {
        method: Ok(crate::server::doh::request::Method::Get),
        target: String::new(),
        dns_content_type: false,
        content_length: None,
        forwarded: Default::default(),
    };
    let now = std::time::Instant::now();
    let doh = crate::server::doh::exchange::answer(&head, None, now, &client, &shared);
    let (exchange, doh) = (
        std::mem::size_of_val(&exchange),
        std::mem::size_of_val(&doh),
    );
    eprintln!("a query in flight: upstream exchange {exchange} bytes, DoH request {doh} bytes");
    assert!(exchange <= 1024, "upstream exchange: {exchange} bytes");
    assert!(doh <= 1536, "DoH request: {doh} bytes");
}
