//! EDNS on the TLS leg: keepalive (R14, R15), padding (R18), hop-by-hop
//! options (R22), BADVERS (R17), the Android probe (R23), and kdig interop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::RecordType;

use crate::harness::{
    assert_answer, assert_reply_header, encode, frame, parse, query, with_opt, Client, Process,
    Read, Server, REPLY_WAIT,
};
use crate::process::{assert_kdig_answer, kdig, run};
use crate::upstream::{raw_opt_options, Transport, Upstream, UPSTREAM_KEEPALIVE, UPSTREAM_NSID};

const KEEPALIVE: u16 = 11;
const PADDING: u16 = 12;
const COOKIE: u16 = 10;
const ECS: u16 = 8;
const NSID: u16 = 3;
const BLOCK: usize = 468;

/// `msg` with an OPT record (payload 4096) carrying `options` in order.
fn with_options(msg: Message, options: &[(u16, &[u8])]) -> Message {
    let mut msg = with_opt(msg);
    if let Some(edns) = msg.edns.as_mut() {
        for (code, data) in options {
            edns.options_mut()
                .insert(EdnsOption::Unknown(*code, data.to_vec()));
        }
    }
    msg
}

/// A query asking for keepalive.
fn keepalive_query(id: u16, name: &str) -> Message {
    with_options(query(id, name, RecordType::A), &[(KEEPALIVE, &[])])
}

/// Padding for a query of this size, as the clients do: to 128 bytes
/// (RFC 8467 §4.1).
fn client_padding(unpadded: &Message) -> Vec<u8> {
    let len = encode(unpadded).len() + 4;
    vec![0; (128 - len % 128) % 128]
}

/// A query asking for padding, itself padded to 128 bytes.
fn padded_query(id: u16, name: &str, extra: &[(u16, &[u8])]) -> Message {
    let unpadded = with_options(query(id, name, RecordType::A), extra);
    let pad = client_padding(&unpadded);
    let mut options = extra.to_vec();
    options.push((PADDING, &pad));
    let msg = with_options(query(id, name, RecordType::A), &options);
    assert_eq!(encode(&msg).len() % 128, 0, "the test pads its query");
    msg
}

fn frame_bytes(read: Read) -> Vec<u8> {
    match read {
        Read::Frame(bytes) => bytes,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Sends `msg` and returns the raw reply and its parse.
async fn exchange(client: &mut Client, msg: &Message) -> (Vec<u8>, Message) {
    client.send(msg).await;
    let bytes = frame_bytes(client.read(REPLY_WAIT).await);
    let parsed = parse(&bytes);
    (bytes, parsed)
}

/// The keepalive timeout in a reply's OPT record, if there is one; fails on
/// a keepalive option that is not two bytes long, or twice.
fn keepalive_of(reply: &[u8]) -> Option<u16> {
    let values: Vec<Vec<u8>> = raw_opt_options(reply)
        .into_iter()
        .filter(|(code, _)| *code == KEEPALIVE)
        .map(|(_, data)| data)
        .collect();
    assert!(
        values.len() <= 1,
        "one keepalive option at most: {values:?}"
    );
    values.first().map(|v| {
        assert_eq!(v.len(), 2, "keepalive carries a 16-bit timeout");
        u16::from_be_bytes([v[0], v[1]])
    })
}

fn option_codes(reply: &[u8]) -> Vec<u16> {
    raw_opt_options(reply)
        .iter()
        .map(|(code, _)| *code)
        .collect()
}

/// Reads until the server closes; fails unless the close is clean.
async fn assert_clean_close(client: &mut Client) {
    match client.read(Duration::from_secs(3)).await {
        Read::Eof => {}
        other => panic!("expected close_notify then EOF, got {other:?}"),
    }
}

/// R14: a query with an empty keepalive option learns the idle timeout in
/// 100 ms units, SERVFAIL replies included; a query without one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_advertises_the_idle_timeout() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--idle-timeout", "30s", "--upstream-timeout", "300ms"],
    )
    .await;
    let mut client = server.client().await;

    let name = "keepalive.example.test.";
    let (bytes, reply) = exchange(&mut client, &keepalive_query(1, name)).await;
    assert_answer(&reply, 1, name, RecordType::A);
    assert_eq!(keepalive_of(&bytes), Some(300), "30 s in 100 ms units");

    let name = "no-keepalive.example.test.";
    let (bytes, reply) = exchange(&mut client, &with_opt(query(2, name, RecordType::A))).await;
    assert_answer(&reply, 2, name, RecordType::A);
    assert_eq!(keepalive_of(&bytes), None, "not asked, not given");

    let name = "drop.keepalive.example.test.";
    let (bytes, reply) = exchange(&mut client, &keepalive_query(3, name)).await;
    assert_reply_header(&reply, 3, name, RecordType::A, ResponseCode::ServFail);
    assert_eq!(keepalive_of(&bytes), Some(300), "SERVFAIL carries it too");

    for seen in up.received() {
        assert!(
            !seen.options.iter().any(|(code, _)| *code == KEEPALIVE),
            "keepalive forwarded: {seen:?}"
        );
    }
}

/// R14: a keepalive option with a value in a query gets FORMERR, with the
/// question and an OPT record; it is not forwarded and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_with_a_value_gets_formerr() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;

    let name = "valued.keepalive.test.";
    let q = with_options(
        query(0x0b0b, name, RecordType::A),
        &[(KEEPALIVE, &[0, 100])],
    );
    let (bytes, reply) = exchange(&mut client, &q).await;
    assert_reply_header(&reply, 0x0b0b, name, RecordType::A, ResponseCode::FormErr);
    assert!(reply.edns.is_some(), "OPT mirrored");
    assert_eq!(keepalive_of(&bytes), None);

    let name = "after.keepalive.test.";
    let (_, reply) = exchange(&mut client, &keepalive_query(0x0c0c, name)).await;
    assert_answer(&reply, 0x0c0c, name, RecordType::A);
    let asked: Vec<_> = up.received().into_iter().map(|r| r.name).collect();
    assert_eq!(asked, [name], "the FORMERR query was not forwarded");
}

/// R15: with --max-queries-per-connection 3, the third query is the last one
/// read; its reply advertises keepalive 0, the earlier ones the idle timeout,
/// and the connection then closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_query_before_retirement_gets_keepalive_zero() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--max-queries-per-connection", "3", "--idle-timeout", "20s"],
    )
    .await;
    let mut client = server.client().await;
    for (id, want) in [(1, 200), (2, 200), (3, 0)] {
        let name = format!("q{id}.retire.test.");
        let (bytes, reply) = exchange(&mut client, &keepalive_query(id, &name)).await;
        assert_answer(&reply, id, &name, RecordType::A);
        assert_eq!(keepalive_of(&bytes), Some(want), "keepalive of reply {id}");
    }
    assert_clean_close(&mut client).await;
}

/// R15: a query in flight when the connection reaches --max-connection-age
/// is answered with keepalive 0; the connection then closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_max_age_gets_keepalive_zero() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--max-connection-age", "500ms", "--upstream-timeout", "3s"],
    )
    .await;
    let mut client = server.client().await;
    let name = "young.age.test.";
    let (bytes, reply) = exchange(&mut client, &keepalive_query(1, name)).await;
    assert_answer(&reply, 1, name, RecordType::A);
    assert_eq!(keepalive_of(&bytes), Some(300), "default idle timeout 30 s");

    let name = "delay-1000.old.age.test.";
    let (bytes, reply) = exchange(&mut client, &keepalive_query(2, name)).await;
    assert_answer(&reply, 2, name, RecordType::A);
    assert_eq!(keepalive_of(&bytes), Some(0), "retired while in flight");
    assert_clean_close(&mut client).await;
}

/// R15: SIGTERM with keepalive queries in flight: each is answered with
/// keepalive 0, then the connection closes cleanly (the real binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_replies_advertise_keepalive_zero() {
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &["--upstream-timeout", "2s"]).await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..2)
        .map(|i| format!("delay-500.t{i}.sigterm-keepalive.test."))
        .collect();
    let mut batch = Vec::new();
    for (id, name) in (0u16..).zip(&names) {
        batch.extend(frame(&encode(&keepalive_query(id, name))));
    }
    client.send_raw(&batch).await;
    up.wait_for_queries(names.len(), Duration::from_secs(2))
        .await;
    server.sigterm();
    for _ in 0..names.len() {
        let bytes = match client.read(Duration::from_secs(3)).await {
            Read::Frame(bytes) => bytes,
            other => panic!("query lost at shutdown: {other:?}\n{}", server.logs()),
        };
        let reply = parse(&bytes);
        let id = reply.metadata.id;
        assert_answer(&reply, id, &names[usize::from(id)], RecordType::A);
        assert_eq!(keepalive_of(&bytes), Some(0), "reply {id} after SIGTERM");
    }
    assert_clean_close(&mut client).await;
}

/// R18: a padded query gets a reply padded to a multiple of 468 bytes, with
/// one padding option (after the keepalive, when both are asked for), for
/// answers and synthesized errors alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_queries_get_replies_padded_to_468() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-timeout", "300ms"]).await;
    let mut client = server.client().await;

    let name = "padded.example.test.";
    let (bytes, reply) = exchange(&mut client, &padded_query(1, name, &[])).await;
    assert_answer(&reply, 1, name, RecordType::A);
    assert_eq!(bytes.len() % BLOCK, 0, "reply of {} bytes", bytes.len());
    assert_eq!(option_codes(&bytes), [PADDING]);

    let name = "padded-keepalive.example.test.";
    let q = padded_query(2, name, &[(KEEPALIVE, &[])]);
    let (bytes, reply) = exchange(&mut client, &q).await;
    assert_answer(&reply, 2, name, RecordType::A);
    assert_eq!(bytes.len() % BLOCK, 0, "reply of {} bytes", bytes.len());
    assert_eq!(option_codes(&bytes), [KEEPALIVE, PADDING]);

    let name = "drop.padded.example.test.";
    let (bytes, reply) = exchange(&mut client, &padded_query(3, name, &[])).await;
    assert_reply_header(&reply, 3, name, RecordType::A, ResponseCode::ServFail);
    assert_eq!(bytes.len() % BLOCK, 0, "SERVFAIL of {} bytes", bytes.len());

    // Not asked: not padded.
    let name = "unpadded.example.test.";
    let (bytes, _) = exchange(&mut client, &with_opt(query(4, name, RecordType::A))).await;
    assert!(bytes.len() < 100, "reply of {} bytes", bytes.len());
    assert_eq!(option_codes(&bytes), Vec::<u16>::new());
}

/// R18, R22: an upstream that pads its reply (and sends a keepalive of its
/// own): the client that did not ask for padding sees neither; the one that
/// did gets dotgate's padding to 468 only; other options pass through; a
/// client without EDNS gets no OPT at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_padding_is_removed_or_replaced() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;
    let nsid = (NSID, UPSTREAM_NSID.to_vec());

    let name = "pad.not-asked.test.";
    let (bytes, reply) = exchange(&mut client, &with_opt(query(1, name, RecordType::A))).await;
    assert_answer(&reply, 1, name, RecordType::A);
    assert_eq!(
        raw_opt_options(&bytes),
        std::slice::from_ref(&nsid),
        "only the NSID left"
    );

    let name = "pad.asked.test.";
    let (bytes, reply) = exchange(&mut client, &padded_query(2, name, &[])).await;
    assert_answer(&reply, 2, name, RecordType::A);
    assert_eq!(bytes.len() % BLOCK, 0, "reply of {} bytes", bytes.len());
    let options = raw_opt_options(&bytes);
    assert_eq!(options.len(), 2, "{options:?}");
    assert_eq!(options[0], nsid);
    assert_eq!(options[1].0, PADDING);

    let name = "pad.keepalive.test.";
    let (bytes, reply) = exchange(&mut client, &keepalive_query(3, name)).await;
    assert_answer(&reply, 3, name, RecordType::A);
    assert_eq!(
        keepalive_of(&bytes),
        Some(300),
        "dotgate's, not the upstream's"
    );
    assert_ne!(keepalive_of(&bytes), Some(UPSTREAM_KEEPALIVE));

    let name = "pad.no-edns.test.";
    let (bytes, reply) = exchange(&mut client, &query(4, name, RecordType::A)).await;
    assert_answer(&reply, 4, name, RecordType::A);
    assert!(reply.edns.is_none());
    assert_eq!(&bytes[10..12], &[0, 0], "ARCOUNT 0");
    assert!(up.received().iter().all(|r| r.name.starts_with("pad.")));
}

/// R22, R17: the client's options 11 and 12 never reach the upstream, over
/// UDP nor over the TCP retry; cookies and ECS pass byte for byte and in order, and so do
/// the DO and CD bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_options_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;
    let cookie: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
    let ecs: &[u8] = &[0, 1, 24, 0, 192, 0, 2];
    let forwarded = vec![(COOKIE, cookie.to_vec()), (ECS, ecs.to_vec())];

    for (id, name, rtype) in [
        (1, "hop.example.test.", RecordType::A),
        (2, "tc.hop.example.test.", RecordType::TXT),
    ] {
        let mut q = query(id, name, rtype);
        q.metadata.checking_disabled = true;
        let options = [(KEEPALIVE, &[][..]), (COOKIE, cookie), (ECS, ecs)];
        let unpadded = with_options(q.clone(), &options);
        let pad = client_padding(&unpadded);
        let mut options = options.to_vec();
        options.insert(2, (PADDING, &pad));
        let mut q = with_options(q, &options);
        if let Some(edns) = q.edns.as_mut() {
            edns.set_dnssec_ok(true);
        }
        let (bytes, reply) = exchange(&mut client, &q).await;
        assert_reply_header(&reply, id, name, rtype, ResponseCode::NoError);
        assert_eq!(bytes.len() % BLOCK, 0);
        assert_eq!(keepalive_of(&bytes), Some(300));
        assert!(
            reply.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            "the upstream's DO bit reaches the client"
        );
    }

    let seen = up.received();
    assert_eq!(
        seen.iter().map(|r| r.transport).collect::<Vec<_>>(),
        [Transport::Udp, Transport::Udp, Transport::Tcp],
        "{seen:?}"
    );
    // The TCP retry runs on dotgate's pooled connection, which asks the
    // upstream for its own keepalive (an empty option 11, last, as toward
    // a tcp:// upstream): the client's option, which came first, is not it.
    let mut on_tcp = forwarded.clone();
    on_tcp.push((KEEPALIVE, vec![]));
    for r in &seen {
        let expected = match r.transport {
            Transport::Tcp => &on_tcp,
            _ => &forwarded,
        };
        assert_eq!(
            &r.options, expected,
            "options the upstream saw for {}",
            r.name
        );
        assert!(r.dnssec_ok, "DO forwarded for {}", r.name);
        assert!(r.checking_disabled, "CD forwarded for {}", r.name);
    }
}

/// R17: EDNS version 1 gets BADVERS (header RCODE 0, extended RCODE 1) with
/// an OPT record of version 0, the client's ID and question; nothing is
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_version_1_gets_badvers() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;

    let name = "version-one.example.test.";
    let mut q = keepalive_query(0x5151, name);
    if let Some(edns) = q.edns.as_mut() {
        edns.set_version(1);
    }
    let (bytes, reply) = exchange(&mut client, &q).await;
    assert_eq!(reply.metadata.id, 0x5151);
    assert_eq!(bytes[3] & 0x0f, 0, "header RCODE 0");
    // hickory calls 16 BADSIG, its TSIG meaning; BADVERS is the same number.
    assert_eq!(u16::from(reply.metadata.response_code), 16, "BADVERS");
    let edns = reply.edns.as_ref().expect("an OPT record");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.rcode_high(), 1, "extended RCODE 1");
    assert_eq!(reply.queries.len(), 1);
    assert_eq!(reply.queries[0].name().to_ascii(), name);
    assert_eq!(keepalive_of(&bytes), None, "a version-1 OPT is not read");

    let name = "version-zero.example.test.";
    let (_, reply) = exchange(&mut client, &with_opt(query(2, name, RecordType::A))).await;
    assert_answer(&reply, 2, name, RecordType::A);
    assert_eq!(
        up.received().len(),
        1,
        "the BADVERS query was not forwarded"
    );
}

/// R23: Android's Private DNS probe (AAAA, RD, no EDNS) against an upstream
/// that answers SERVFAIL: a reply with QDCOUNT 1 and no OPT record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_probe_gets_qdcount_1_and_no_opt() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let mut client = server.client().await;
    let name = "abc123-dnsotls-ds.metric.gstatic.com.";
    let probe = query(0, name, RecordType::AAAA);
    assert!(probe.metadata.recursion_desired && probe.edns.is_none());
    let (bytes, reply) = exchange(&mut client, &probe).await;
    assert_reply_header(&reply, 0, name, RecordType::AAAA, ResponseCode::ServFail);
    assert_eq!(&bytes[4..6], &[0, 1], "QDCOUNT 1");
    assert_eq!(&bytes[10..12], &[0, 0], "ARCOUNT 0: no OPT");
    assert!(reply.edns.is_none());
    assert!(reply.metadata.recursion_desired, "RD echoed");
    let seen = up.received();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].had_opt,
        "the upstream was asked with dotgate's OPT, and answered with one"
    );
}

/// Runs kdig over TLS against `server` with `options`; returns its stdout,
/// failing the test if kdig fails or gets no reply.
async fn run_kdig(kdig: &Path, server: &Process, options: &[&str], name: &str) -> String {
    let mut command = Command::new(kdig);
    command.args([
        &format!("+tls-ca={}", server.pki.ca.display()),
        "+tls-hostname=dns.test",
        "+time=3",
        "+retry=0",
    ]);
    command.args(options);
    command.args([
        "@127.0.0.1",
        "-p",
        &server.addr.port().to_string(),
        name,
        "A",
    ]);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kdig failed ({}): {stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    assert!(stdout.contains(";; Received "), "no reply:\n{stdout}");
    stdout
}

/// R14 with a real client: `kdig +ednsopt=11` shows the idle timeout, and
/// `+ednsopt=11:0064` gets FORMERR.
/// kdig 3.2 prints the option raw (`;; Option (11): 012C`, 300 in hex);
/// later versions name it (`KEEPALIVE`) and print seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kdig (package knot-dnsutils); run with --include-ignored"]
async fn kdig_sees_the_keepalive() {
    let kdig = kdig();
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &["--idle-timeout", "30s"]).await;
    let name = "keepalive.kdig.test.";
    let stdout = run_kdig(&kdig, &server, &["+ednsopt=11"], name).await;
    assert_kdig_answer(&stdout, name);
    let raw = stdout
        .lines()
        .find_map(|l| l.strip_prefix(";; Option (11):"));
    match raw {
        Some(value) => assert_eq!(value.trim().to_ascii_uppercase(), "012C", "{stdout}"),
        None => {
            let line = stdout
                .lines()
                .find(|l| l.contains("KEEPALIVE"))
                .unwrap_or_else(|| panic!("no keepalive in kdig's output:\n{stdout}"));
            assert!(line.contains("30"), "keepalive of 30 s expected: {line}");
        }
    }

    // A keepalive with a value is the client's error.
    let stdout = run_kdig(&kdig, &server, &["+ednsopt=11:0064"], "valued.kdig.test.").await;
    assert!(stdout.contains("status: FORMERR"), "{stdout}");
    assert_eq!(
        up.received().len(),
        1,
        "the FORMERR query was not forwarded"
    );
}

/// R18 with a real client: `kdig +padding` receives a reply whose size is a
/// multiple of 468.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kdig (package knot-dnsutils); run with --include-ignored"]
async fn kdig_gets_a_padded_reply() {
    let kdig = kdig();
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &[]).await;
    let name = "padding.kdig.test.";
    let stdout = run_kdig(&kdig, &server, &["+padding"], name).await;
    assert_kdig_answer(&stdout, name);
    let received: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(";; Received ")?
                .strip_suffix(" B")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ';; Received N B' in kdig's output:\n{stdout}"));
    assert_eq!(received % BLOCK, 0, "reply of {received} bytes:\n{stdout}");
    assert!(stdout.contains("PADDING"), "{stdout}");
}
