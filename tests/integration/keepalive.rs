//! edns-tcp-keepalive (RFC 7828) toward pooled `tcp://` and `tls://`
//! upstreams, from the client side: every query asks for the upstream's idle
//! timeout; dotgate closes a connection itself a little before that timeout,
//! never sends on a connection the upstream is about to close, retires a
//! connection advertised with keepalive 0, and never lets the upstream's
//! keepalive reach its own clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{
    assert_answer, encode, frame, parse, query, with_opt, Client, Read, Server, REPLY_WAIT,
};
use crate::upstream::{raw_opt_options, Transport, Upstream};

const KEEPALIVE: u16 = 11;

/// Which side of a proxied connection closed it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    /// dotgate, the client of the upstream.
    Dotgate,
    Upstream,
}

/// What a [`watching_proxy`] saw.
#[derive(Default)]
struct Watch {
    connections: AtomicUsize,
    /// Per connection, in accept order: who closed first, once known.
    first_closer: Mutex<Vec<Option<Closer>>>,
}

impl Watch {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn closers(&self) -> Vec<Option<Closer>> {
        self.first_closer.lock().unwrap().clone()
    }

    /// Waits (bounded) until the first `n` connections are closed, and
    /// returns who closed each.
    async fn wait_closed(&self, n: usize) -> Vec<Closer> {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            let closers = self.closers();
            if closers.len() >= n && closers[..n].iter().all(Option::is_some) {
                return closers[..n].iter().flatten().copied().collect();
            }
            assert!(
                Instant::now() < deadline,
                "connections not closed: {closers:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Copies `from` to `to` until `from` ends, then records `side` as the
/// first closer of connection `index` (unless the other side was first) and
/// passes the close on.
async fn pump<R, W>(mut from: R, mut to: W, watch: Arc<Watch>, index: usize, side: Closer)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    watch.first_closer.lock().unwrap()[index].get_or_insert(side);
    let _ = to.shutdown().await;
}

/// A TCP proxy in front of `to` that counts connections and notes which
/// side closed each one first.
async fn watching_proxy(to: SocketAddr) -> (SocketAddr, Arc<Watch>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let watch = Arc::new(Watch::default());
    let watched = watch.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let index = {
                let mut closers = watched.first_closer.lock().unwrap();
                closers.push(None);
                closers.len() - 1
            };
            watched.connections.fetch_add(1, Ordering::SeqCst);
            let watch = watched.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::join!(
                    pump(in_read, out_write, watch.clone(), index, Closer::Dotgate),
                    pump(out_read, in_write, watch, index, Closer::Upstream),
                );
            });
        }
    });
    (addr, watch)
}

/// Sends `msg` and returns the raw reply.
async fn exchange(client: &mut Client, msg: &hickory_proto::op::Message) -> Vec<u8> {
    client.send(msg).await;
    match client.read(REPLY_WAIT).await {
        Read::Frame(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// `msg` with an OPT record carrying `options`.
fn with_options(
    msg: hickory_proto::op::Message,
    options: &[(u16, &[u8])],
) -> hickory_proto::op::Message {
    let mut msg = with_opt(msg);
    if let Some(edns) = msg.edns.as_mut() {
        for (code, data) in options {
            edns.options_mut()
                .insert(EdnsOption::Unknown(*code, data.to_vec()));
        }
    }
    msg
}

/// The values of the keepalive options of a message's OPT record.
fn keepalives(msg: &[u8]) -> Vec<Vec<u8>> {
    raw_opt_options(msg)
        .into_iter()
        .filter(|(code, _)| *code == KEEPALIVE)
        .map(|(_, data)| data)
        .collect()
}

/// A DoT upstream that is a second dotgate with `--idle-timeout 1s` (it
/// answers the keepalive request with 10, i.e. 1 s): after one query, the
/// idle connection is closed by dotgate's side, before the upstream's idle
/// close (waited for as an event); the next query is answered on a new
/// connection and sent once, so no query was ever sent on a dying
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_upstream_keepalive_closes_idle_connections_first() {
    let backend = Upstream::start().await;
    let dot = Server::start(backend.addr, &["--idle-timeout", "1s"]).await;
    let (proxy, watch) = watching_proxy(dot.addr).await;
    let entry = format!("tls://dns.test@{proxy}");
    let ca = dot.pki.ca.display().to_string();
    // No probe during the test: only the test's queries use connections.
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--upstream-ca",
        &ca,
        "--health-check-interval",
        "30s",
    ])
    .await;
    let mut client = server.client().await;

    let name = "first.dot-keepalive.test.";
    client.send(&query(1, name, RecordType::A)).await;
    assert_answer(&client.recv().await, 1, name, RecordType::A);
    assert_eq!(watch.connections(), 1);

    // dotgate's limit comes first (about 0.5 s after the reply, against
    // the upstream's 1 s): the first close is dotgate's.
    assert_eq!(watch.wait_closed(1).await, [Closer::Dotgate]);

    let name = "second.dot-keepalive.test.";
    client.send(&query(2, name, RecordType::A)).await;
    assert_answer(&client.recv().await, 2, name, RecordType::A);
    assert_eq!(watch.connections(), 2, "a new connection for the second");
    assert_eq!(watch.closers()[1], None, "the second is still open");
    let asked: Vec<String> = backend.received().iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        asked,
        ["first.dot-keepalive.test.", "second.dot-keepalive.test."],
        "each query sent once"
    );
}

/// A `tcp://` upstream that answers with keepalive 0: each connection is
/// closed by dotgate once its queries are answered and never takes another
/// one. Sequential queries each open their own connection; a pipelined
/// burst shares one, and every query on it is still answered after the
/// first reply has retired it. Nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_zero_retires_the_connection() {
    let up = Upstream::start().await;
    let (proxy, watch) = watching_proxy(up.addr).await;
    let entry = format!("tcp://{proxy}");
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--health-check-interval",
        "30s",
    ])
    .await;
    let mut client = server.client().await;
    for i in 0..3u16 {
        let name = format!("keepalive-0.s{i}.zero.test.");
        client.send(&query(i, &name, RecordType::A)).await;
        assert_answer(&client.recv().await, i, &name, RecordType::A);
        // Closed by dotgate, without waiting for the next query.
        assert_eq!(
            watch.wait_closed(usize::from(i) + 1).await,
            vec![Closer::Dotgate; usize::from(i) + 1]
        );
    }
    assert_eq!(watch.connections(), 3, "one connection per query");

    // A burst: the first reply (after 100 ms) retires the connection while
    // the others are still in flight on it.
    let names: Vec<String> = (0..5)
        .map(|i| format!("delay-{}.keepalive-0.p{i}.zero.test.", 100 + 50 * i))
        .collect();
    let mut batch = Vec::new();
    for (i, name) in names.iter().enumerate() {
        batch.extend(frame(&encode(&query(100 + i as u16, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    let mut answered = [false; 5];
    for _ in 0..names.len() {
        let reply = client.recv().await;
        let index = usize::from(reply.metadata.id - 100);
        assert!(!answered[index], "two replies for ID {}", reply.metadata.id);
        answered[index] = true;
        assert_answer(&reply, reply.metadata.id, &names[index], RecordType::A);
    }
    assert!(up.max_outstanding() >= 5, "{}", up.max_outstanding());
    assert_eq!(watch.connections(), 4, "the burst shared one connection");
    assert_eq!(watch.wait_closed(4).await, vec![Closer::Dotgate; 4]);
    assert_eq!(up.count(Transport::Tcp), 8, "nothing sent twice");

    // And the next query is answered on a fresh connection.
    let name = "keepalive-0.after.zero.test.";
    client.send(&query(200, name, RecordType::A)).await;
    assert_answer(&client.recv().await, 200, name, RecordType::A);
    assert_eq!(watch.connections(), 5);
}

/// Every query dotgate sends over `tcp://` carries one empty keepalive
/// option, whatever the client sent: no OPT, an OPT without options, its
/// own keepalive request (replaced, not doubled), or other options (kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queries_carry_an_empty_keepalive() {
    let up = Upstream::start().await;
    let entry = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--health-check-interval",
        "30s",
    ])
    .await;
    let mut client = server.client().await;
    let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
    let queries = [
        query(1, "plain.ask.test.", RecordType::A),
        with_opt(query(2, "opt.ask.test.", RecordType::A)),
        with_options(
            query(3, "own.ask.test.", RecordType::A),
            &[(KEEPALIVE, &[])],
        ),
        with_options(query(4, "cookie.ask.test.", RecordType::A), &[(10, cookie)]),
    ];
    for q in &queries {
        let name = q.queries[0].name().to_ascii();
        let reply = parse(&exchange(&mut client, q).await);
        assert_answer(&reply, q.metadata.id, &name, RecordType::A);
    }
    let received = up.received();
    assert_eq!(received.len(), 4);
    for r in &received {
        assert!(r.had_opt, "{r:?}");
        assert_eq!(r.transport, Transport::Tcp);
    }
    assert_eq!(received[0].options, [(KEEPALIVE, vec![])]);
    assert_eq!(received[1].options, [(KEEPALIVE, vec![])]);
    assert_eq!(received[2].options, [(KEEPALIVE, vec![])]);
    assert_eq!(
        received[3].options,
        [(10, cookie.to_vec()), (KEEPALIVE, vec![])]
    );
}

/// The upstream's keepalive in a stream reply is about the upstream leg:
/// the client gets dotgate's own timeout (30 s by default) when it asked,
/// and no keepalive when it did not, whether the upstream said 0 or 123.4 s
/// (with padding and NSID: `pad`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_in_stream_replies_never_reaches_clients() {
    let up = Upstream::start().await;
    let entry = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream(&[
        "--upstream",
        &entry,
        "--health-check-interval",
        "30s",
    ])
    .await;
    let mut client = server.client().await;
    let mut id = 0u16;
    for label in ["keepalive-0", "keepalive-50", "pad"] {
        for asked in [false, true] {
            id += 1;
            let name = format!("{label}.a{}.leg.test.", u8::from(asked));
            let q = if asked {
                with_options(query(id, &name, RecordType::A), &[(KEEPALIVE, &[])])
            } else {
                with_opt(query(id, &name, RecordType::A))
            };
            let bytes = exchange(&mut client, &q).await;
            assert_answer(&parse(&bytes), id, &name, RecordType::A);
            let expected: Vec<Vec<u8>> = if asked {
                vec![300u16.to_be_bytes().to_vec()]
            } else {
                vec![]
            };
            assert_eq!(keepalives(&bytes), expected, "{name}");
        }
    }
    // The upstream did advertise them.
    assert_eq!(up.count(Transport::Tcp), 6);
}
