//! Unit tests of `dotgate check`: each decision that turns what a server did
//! into PASS, WARN, FAIL or SKIP and the sentence the user reads, first on
//! hand-made inputs, then against a real dotgate on 127.0.0.1 (in this
//! process, in front of a small UDP responder on 127.0.0.1).
//!
//! The real server comes from `crate::server`, which `tools` never imports
//! outside of these tests.
//!
//! Over 700 lines because `dotgate check` makes 22 checks and each decision
//! is tested both ways; split by check it would scatter the shared server
//! and reply builders.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Parser as _;
use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::proto::edns::{KEEPALIVE, PADDING, RESPONSE_BLOCK};

// ---------- hand-made replies ----------

const PROBE_NAME: &str = "abcd1234-dnsotls-ds.metric.gstatic.com.";

/// A response to an AAAA query for `name` with `rcode` and these addresses
/// (IPv4 as A records, IPv6 as AAAA records) in its answer section.
fn reply(name: &str, rcode: ResponseCode, addresses: &[&str]) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = 0;
    msg.metadata.message_type = MessageType::Response;
    msg.metadata.response_code = rcode;
    let owner = Name::from_ascii(name).unwrap();
    msg.add_query(hickory_proto::op::Query::query(
        owner.clone(),
        RecordType::AAAA,
    ));
    for a in addresses {
        let data = match a.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v4) => RData::A(A(v4)),
            std::net::IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        msg.add_answer(Record::from_rdata(owner.clone(), 60, data));
    }
    msg
}

fn bytes(msg: &Message) -> Vec<u8> {
    msg.to_vec().unwrap()
}

/// The same reply with an OPT record carrying `options`.
fn with_options(mut msg: Message, options: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    for (code, data) in options {
        edns.options_mut()
            .insert(EdnsOption::Unknown(*code, data.clone()));
    }
    msg.set_edns(edns);
    bytes(&msg)
}

fn noerror() -> Message {
    reply("q.dotgate-check.example.", ResponseCode::NoError, &[])
}

/// The check's status and reason, for assertion messages.
fn shown(c: &Check) -> String {
    format!(
        "{} {}: {} (fix: {:?})",
        c.status.label(),
        c.id,
        c.reason,
        c.fix
    )
}

// ---------- plaintext ----------

/// A DNS reply over plain TCP is the one FAIL; every kind of refusal is a
/// PASS that says what came back; a probe that could not run is a SKIP.
#[test]
fn plaintext_fails_only_when_the_port_answers_plain_dns() {
    let answered = plaintext_check(&Plaintext::Answered { rcode: 3 });
    assert_eq!(answered.status, Status::Fail, "{}", shown(&answered));
    assert!(
        answered.reason.contains("got a DNS reply (NXDOMAIN)")
            && answered.reason.contains("serves unencrypted DNS"),
        "{}",
        shown(&answered)
    );
    assert!(answered.fix.as_deref().unwrap().contains("port 53"));

    let closed = plaintext_check(&Plaintext::Closed);
    assert_eq!(closed.status, Status::Pass);
    assert!(
        closed.reason.contains("connection was closed"),
        "{}",
        shown(&closed)
    );

    let alert = plaintext_check(&Plaintext::Refused { first_byte: 0x15 });
    assert_eq!(alert.status, Status::Pass);
    assert!(alert.reason.contains("a TLS alert"), "{}", shown(&alert));

    let other = plaintext_check(&Plaintext::Refused { first_byte: 0x48 });
    assert_eq!(other.status, Status::Pass);
    assert!(
        other.reason.contains("bytes starting 0x48"),
        "{}",
        shown(&other)
    );
    assert!(!other.reason.contains("TLS alert"));

    let silent = plaintext_check(&Plaintext::Silent(Duration::from_secs(3)));
    assert_eq!(silent.status, Status::Pass);
    assert!(
        silent.reason.contains("no reply within 3 s"),
        "{}",
        shown(&silent)
    );

    let not_tried = plaintext_check(&Plaintext::NotTried("out of time".into()));
    assert_eq!(not_tried.status, Status::Skip);
    assert_eq!(not_tried.reason, "not run: out of time");

    for c in [&answered, &closed, &alert, &other, &silent, &not_tried] {
        assert_eq!(c.id, "plaintext");
    }
}

// ---------- TLS ----------

/// No handshake is always a FAIL for every client; the fix depends on why:
/// plain DNS on the port, a stalled handshake, the budget, or anything else.
#[test]
fn a_failed_handshake_fails_with_a_fix_for_its_cause() {
    let refused = || {
        ConnectError::Tls(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    };
    let plain = tls_failed(&refused(), &Plaintext::Answered { rcode: 0 }, "dns.test");
    assert_eq!((plain.id, plain.status), ("tls", Status::Fail));
    assert_eq!(plain.clients, Clients::ALL);
    assert!(
        plain
            .reason
            .starts_with("no TLS: the port answers plain DNS over TCP, and the server reset"),
        "{}",
        shown(&plain)
    );
    assert!(plain.fix.as_deref().unwrap().contains("DoT is port 853"));

    let stalled = tls_failed(
        &ConnectError::TlsTimeout(Duration::from_secs(5)),
        &Plaintext::Silent(Duration::from_secs(3)),
        "dns.test",
    );
    assert_eq!(stalled.status, Status::Fail);
    assert!(
        stalled
            .reason
            .contains("did not answer the TLS ClientHello within 5 s"),
        "{}",
        shown(&stalled)
    );
    assert!(stalled
        .fix
        .as_deref()
        .unwrap()
        .contains("not another service"));

    let late = tls_failed(&ConnectError::OutOfTime, &Plaintext::Closed, "dns.test");
    assert_eq!(late.status, Status::Fail);
    assert!(late.fix.as_deref().unwrap().contains("without --quick"));

    let other = tls_failed(&refused(), &Plaintext::Closed, "dns.test");
    assert_eq!(other.status, Status::Fail);
    assert_eq!(
        other.reason,
        "no TLS: the server reset the connection during the handshake"
    );
    assert!(other
        .fix
        .as_deref()
        .unwrap()
        .contains("TLS 1.2 and 1.3 enabled"));
}

/// Two WARNs (each version refused alone, though a handshake worked) become
/// two FAILs; any other pair is kept as it is.
#[test]
fn both_versions_refused_is_a_fail_each() {
    let warn = |id| Check::warn(id, Clients::NONE, "refused", "enable it");
    let pass = |id| Check::pass(id, Clients::ALL, "completes");
    let skip = |id| Check::skip(id, Clients::NONE, "out of time");

    let [a, b] = both_versions(warn("tls1.2"), warn("tls1.3"));
    assert_eq!((a.id, a.status), ("tls1.2", Status::Fail));
    assert_eq!((b.id, b.status), ("tls1.3", Status::Fail));
    assert_eq!(a.reason, "refused", "only the status changes");

    for (x, y) in [
        (warn("tls1.2"), pass("tls1.3")),
        (pass("tls1.2"), warn("tls1.3")),
        (warn("tls1.2"), skip("tls1.3")),
        (pass("tls1.2"), pass("tls1.3")),
    ] {
        let before = (x.status, y.status);
        let [a, b] = both_versions(x, y);
        assert_eq!((a.status, b.status), before);
    }
}

// ---------- Android's probe ----------

/// Android's validation passes on any response that echoes the question,
/// SERVFAIL included, and fails on one without it or on a non-response.
#[test]
fn the_android_probe_needs_a_response_with_its_question() {
    let ok = probe_verdict(
        PROBE_NAME,
        &bytes(&reply(PROBE_NAME, ResponseCode::NoError, &["2001:db8::1"])),
        12,
    );
    assert_eq!((ok.id, ok.status), ("android-probe", Status::Pass));
    assert!(
        ok.reason
            .contains("got NOERROR with its question (QDCOUNT 1) in 12 ms"),
        "{}",
        shown(&ok)
    );
    assert!(ok.reason.contains(PROBE_NAME));

    let servfail = probe_verdict(
        PROBE_NAME,
        &bytes(&reply(PROBE_NAME, ResponseCode::ServFail, &[])),
        3,
    );
    assert_eq!(servfail.status, Status::Pass, "{}", shown(&servfail));
    assert!(servfail.reason.contains("got SERVFAIL"));

    let mut bare = bytes(&reply(PROBE_NAME, ResponseCode::ServFail, &[]));
    bare.truncate(12);
    bare[4..6].copy_from_slice(&0u16.to_be_bytes());
    let bare = probe_verdict(PROBE_NAME, &bare, 3);
    assert_eq!(bare.status, Status::Fail, "{}", shown(&bare));
    assert!(
        bare.reason.contains("(SERVFAIL) has QDCOUNT 0"),
        "{}",
        shown(&bare)
    );
    assert!(bare.fix.as_deref().unwrap().contains("echo the question"));

    let mut query = bytes(&reply(PROBE_NAME, ResponseCode::NoError, &[]));
    query[2] &= 0x7f; // QR clear: a query, not a response
    for not_a_reply in [query, vec![0u8; 5]] {
        let c = probe_verdict(PROBE_NAME, &not_a_reply, 3);
        assert_eq!(c.status, Status::Fail, "{}", shown(&c));
        assert!(c.reason.contains("not a DNS response"), "{}", shown(&c));
    }
    assert_eq!(
        ok.clients,
        Clients::ANDROID_STRICT.or(Clients::ANDROID_OPPORTUNISTIC)
    );
}

/// Strict mode needs a real address for the probe name: one is a PASS, a
/// sinkhole address or NXDOMAIN/REFUSED is a FAIL (blocked), and no address
/// otherwise is a WARN.
#[test]
fn strict_mode_needs_a_real_address_for_the_probe_name() {
    let check = |rcode, found: &[&str]| {
        let found: Vec<String> = found.iter().map(|s| s.to_string()).collect();
        let r = bytes(&reply(PROBE_NAME, rcode, &[]));
        strict_answer_check(PROBE_NAME, &r, &found)
    };

    let ok = check(ResponseCode::NoError, &["2001:db8::1"]);
    assert_eq!((ok.id, ok.status), ("android-strict", Status::Pass));
    assert!(ok.reason.contains("(2001:db8::1)"), "{}", shown(&ok));
    assert_eq!(ok.clients, Clients::ANDROID_STRICT);

    // One real address among sinkholes is enough.
    let mixed = check(ResponseCode::NoError, &["0.0.0.0", "192.0.2.7"]);
    assert_eq!(mixed.status, Status::Pass, "{}", shown(&mixed));

    for sinkhole in ["0.0.0.0", "::", "127.0.0.1", "::1"] {
        let c = check(ResponseCode::NoError, &[sinkhole]);
        assert_eq!(c.status, Status::Fail, "{sinkhole}: {}", shown(&c));
        assert!(
            c.reason.contains(&format!("got only {sinkhole}"))
                && c.reason.ends_with("the name looks blocked"),
            "{}",
            shown(&c)
        );
        assert!(c.fix.as_deref().unwrap().contains("block lists"));
    }

    for (rcode, name) in [
        (ResponseCode::NXDomain, "NXDOMAIN"),
        (ResponseCode::Refused, "REFUSED"),
    ] {
        let c = check(rcode, &[]);
        assert_eq!(c.status, Status::Fail, "{}", shown(&c));
        assert!(
            c.reason.contains(&format!("got {name} and no address")),
            "{}",
            shown(&c)
        );
        assert!(c.reason.contains("looks blocked"));
    }

    for (rcode, name) in [
        (ResponseCode::NoError, "NOERROR"),
        (ResponseCode::ServFail, "SERVFAIL"),
    ] {
        let c = check(rcode, &[]);
        assert_eq!(c.status, Status::Warn, "{}", shown(&c));
        assert!(
            c.reason.contains(&format!("got {name} and no address")),
            "{}",
            shown(&c)
        );
        assert!(!c.reason.contains("blocked"), "{}", shown(&c));
        assert!(c.fix.as_deref().unwrap().contains("can resolve"));
    }

    // A reply too short to read counts as SERVFAIL: a WARN, not a block.
    let c = strict_answer_check(PROBE_NAME, &[0u8; 3], &[]);
    assert_eq!(c.status, Status::Warn, "{}", shown(&c));
    assert!(c.reason.contains("got SERVFAIL and no address"));
}

// ---------- pipelining ----------

#[test]
fn replies_are_counted_in_words() {
    assert_eq!(replies(0), "0 replies");
    assert_eq!(replies(1), "1 reply");
    assert_eq!(replies(3), "3 replies");
}

/// All ten answered is a PASS that says whether they came in order; fewer is
/// a FAIL that says how many and why reading stopped.
#[test]
fn pipelining_passes_only_when_all_ten_are_answered() {
    let in_order: Vec<u16> = (0..PIPELINED).collect();
    let c = pipelining_verdict(&in_order, None, 42);
    assert_eq!((c.id, c.status), ("pipelining", Status::Pass));
    assert!(
        c.reason.starts_with(
            "10 of 10 pipelined queries answered on one connection in 42 ms, in the order sent"
        ),
        "{}",
        shown(&c)
    );

    let mut shuffled = in_order.clone();
    shuffled.swap(0, 9);
    let c = pipelining_verdict(&shuffled, None, 42);
    assert_eq!(c.status, Status::Pass);
    assert!(c.reason.contains("out of order"), "{}", shown(&c));

    let c = pipelining_verdict(
        &[0],
        Some(format!(
            "the server closed the connection after {}",
            replies(1)
        )),
        42,
    );
    assert_eq!(c.status, Status::Fail, "{}", shown(&c));
    assert_eq!(c.clients, Clients::ALL);
    assert!(
        c.reason.starts_with(
            "only 1 of 10 pipelined queries answered on one connection: the server closed the connection after 1 reply; Android"
        ),
        "{}",
        shown(&c)
    );
    assert!(c.fix.as_deref().unwrap().contains("RFC 7766"));

    let c = pipelining_verdict(&[], Some("no more replies within 5 s".into()), 5000);
    assert_eq!(c.status, Status::Fail);
    assert!(c.reason.starts_with("only 0 of 10"), "{}", shown(&c));
}

// ---------- keepalive and padding ----------

/// A two-byte keepalive is a PASS in seconds, and its value is returned for
/// the --quick idle line; a wrong length or none is a WARN for stubby.
#[test]
fn keepalive_is_read_in_tenths_of_a_second() {
    let (c, units) = keepalive_verdict(&with_options(noerror(), &[(KEEPALIVE, vec![1, 44])]));
    assert_eq!((c.id, c.status), ("keepalive", Status::Pass));
    assert_eq!(units, Some(300));
    assert!(
        c.reason.contains("an idle timeout of 30.0 s"),
        "{}",
        shown(&c)
    );
    assert_eq!(c.clients, Clients::STUBBY);

    let (c, units) = keepalive_verdict(&with_options(noerror(), &[(KEEPALIVE, vec![5])]));
    assert_eq!(c.status, Status::Warn, "{}", shown(&c));
    assert_eq!(units, None);
    assert!(c.reason.contains("is 1 bytes long, not 2"), "{}", shown(&c));

    let (c, units) = keepalive_verdict(&with_options(noerror(), &[]));
    assert_eq!(c.status, Status::Warn);
    assert_eq!(units, None);
    assert!(
        c.reason
            .starts_with("the reply (NOERROR) has no edns-tcp-keepalive option"),
        "{}",
        shown(&c)
    );

    let servfail = reply("q.example.", ResponseCode::ServFail, &[]);
    let (c, _) = keepalive_verdict(&bytes(&servfail));
    assert_eq!(c.status, Status::Warn);
    assert!(c.reason.contains("(SERVFAIL)"), "{}", shown(&c));
}

/// A padded reply passes, saying whether its size is a multiple of 468; an
/// unpadded one is a WARN that gives its size.
#[test]
fn padding_is_judged_by_the_option_and_the_block_size() {
    let unpadded_len = with_options(noerror(), &[(PADDING, Vec::new())]).len();
    let fill = RESPONSE_BLOCK - unpadded_len;
    let blocked = with_options(noerror(), &[(PADDING, vec![0; fill])]);
    assert_eq!(blocked.len(), RESPONSE_BLOCK);
    let c = padding_verdict(&blocked);
    assert_eq!((c.id, c.status), ("padding", Status::Pass));
    assert!(
        c.reason.contains("padded to 468 bytes (a multiple of 468"),
        "{}",
        shown(&c)
    );

    let odd = with_options(noerror(), &[(PADDING, vec![0; 10])]);
    let c = padding_verdict(&odd);
    assert_eq!(c.status, Status::Pass);
    assert!(
        c.reason
            .contains(&format!("a padded reply ({} bytes; RFC 8467", odd.len())),
        "{}",
        shown(&c)
    );

    let none = with_options(noerror(), &[(KEEPALIVE, vec![1, 44])]);
    let c = padding_verdict(&none);
    assert_eq!(c.status, Status::Warn, "{}", shown(&c));
    assert!(
        c.reason
            .contains(&format!("an unpadded reply ({} bytes)", none.len())),
        "{}",
        shown(&c)
    );
    assert_eq!(c.clients, PADDING_CLIENTS);
    assert!(!c.clients.contains(Clients::RESOLVED));
}

// ---------- the report's skeleton ----------

/// Every check not run gets one SKIP with the reason, concerning no client;
/// checks already there are kept as they are.
#[test]
fn skip_rest_fills_in_every_missing_check_once() {
    let mut checks = vec![
        Check::pass("resolve", Clients::ALL, "resolves"),
        Check::fail("reachable", Clients::ALL, "nothing accepts", "start it"),
    ];
    skip_rest(&mut checks, "not run: the port is not reachable");
    assert_eq!(checks.len(), report::ORDER.len());
    for id in report::ORDER {
        assert_eq!(
            checks.iter().filter(|c| c.id == *id).count(),
            1,
            "{id} once"
        );
    }
    assert_eq!(checks[0].status, Status::Pass);
    assert_eq!(checks[1].status, Status::Fail);
    for c in &checks[2..] {
        assert_eq!(c.status, Status::Skip, "{}", shown(c));
        assert_eq!(c.reason, "not run: the port is not reachable");
        assert_eq!(c.clients, Clients::NONE);
    }
    // Nothing more to add the second time.
    skip_rest(&mut checks, "again");
    assert_eq!(checks.len(), report::ORDER.len());
    let report = Report::new(
        Target {
            host: "dns.test".into(),
            port: 853,
            tls_name: "dns.test".into(),
            address: None,
            quick: true,
            doh_path: None,
        },
        checks,
        Duration::ZERO,
    );
    assert!(!report.ok());
    assert_eq!(report.count(Status::Skip), report::ORDER.len() - 2);
}

#[test]
fn options_take_host_port_and_tls_name() {
    let o = Options::new("@dns.example:8853", None, Trust::Insecure, None, true).unwrap();
    assert_eq!((o.host.as_str(), o.port), ("dns.example", 8853));
    assert_eq!(o.tls_name, "dns.example", "the host by default");
    assert!(o.quick);

    let o = Options::new(
        "192.0.2.1",
        Some("dns.test".into()),
        Trust::Insecure,
        None,
        false,
    )
    .unwrap();
    assert_eq!((o.host.as_str(), o.port), ("192.0.2.1", 853));
    assert_eq!(o.tls_name, "dns.test");

    assert!(Options::new("", None, Trust::Insecure, None, false).is_err());
    assert!(Options::new("dns.example:port", None, Trust::Insecure, None, false).is_err());
}

#[test]
fn each_run_asks_names_of_its_own_and_watches_the_budget() {
    let ctx = |total| Ctx {
        budget: Budget::new(total),
        addr: ([127, 0, 0, 1], 853).into(),
        name: ServerName::try_from("dns.test").unwrap(),
        run: "r4nd0m42".into(),
    };
    let c = ctx(FULL_BUDGET);
    assert_eq!(c.qname("p3"), "p3-r4nd0m42.dotgate-check.example.");
    assert!(!c.out_of_time());
    assert!(ctx(Duration::from_millis(100)).out_of_time());
}

/// The client configurations offer ALPN `dot` or nothing, SNI or not, as
/// asked.
#[test]
fn tls_configs_offer_alpn_and_sni_as_asked() {
    let c = tls_config(BOTH, true, true).unwrap();
    assert_eq!(c.alpn_protocols, vec![b"dot".to_vec()]);
    assert!(c.enable_sni);
    let c = tls_config(BOTH, false, false).unwrap();
    assert!(c.alpn_protocols.is_empty());
    assert!(!c.enable_sni);
}

/// An address on the command line, or an IP as the host, is not resolved
/// (nothing is sent to any resolver).
#[tokio::test]
async fn addresses_are_not_resolved() {
    let budget = Budget::new(QUICK_BUDGET);
    let opts = Options::new(
        "dns.test:8853",
        None,
        Trust::Insecure,
        Some("127.0.0.1".parse().unwrap()),
        true,
    )
    .unwrap();
    let (c, addrs) = resolve_step(&opts, &budget).await;
    assert_eq!((c.id, c.status), ("resolve", Status::Pass));
    assert!(
        c.reason.contains("not resolved: --address 127.0.0.1 given"),
        "{}",
        shown(&c)
    );
    assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 8853))]);

    let opts = Options::new("::1", None, Trust::Insecure, None, true).unwrap();
    let (c, addrs) = resolve_step(&opts, &budget).await;
    assert_eq!(c.status, Status::Pass);
    assert!(
        c.reason
            .contains("::1 is an address (Android's Private DNS setting takes a hostname)"),
        "{}",
        shown(&c)
    );
    assert_eq!(addrs, vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 853))]);
}

/// A port that refused a connection a moment ago (its listener dropped).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// All addresses accept: PASS; some: WARN naming the ones that do not
/// (Android tries them all); none: FAIL. The checks go on with the first
/// that accepts.
#[tokio::test]
async fn reachability_is_judged_over_every_address() {
    let budget = Budget::new(QUICK_BUDGET);
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_addr = open.local_addr().unwrap();
    let closed = closed_port().await;

    let (c, first) = reachable_step(&[open_addr], &budget).await;
    assert_eq!(
        (c.id, c.status),
        ("reachable", Status::Pass),
        "{}",
        shown(&c)
    );
    assert!(c.reason.contains("accepts connections"), "{}", shown(&c));
    assert_eq!(first, Some(open_addr));

    let (c, first) = reachable_step(&[closed, open_addr], &budget).await;
    assert_eq!(c.status, Status::Warn, "{}", shown(&c));
    assert!(
        c.reason.contains(&format!(
            "accepts connections on {open_addr} but not on {closed}"
        )),
        "{}",
        shown(&c)
    );
    assert_eq!(first, Some(open_addr), "the first address that accepts");

    let (c, first) = reachable_step(&[closed], &budget).await;
    assert_eq!(c.status, Status::Fail, "{}", shown(&c));
    assert!(
        c.reason.starts_with(&format!(
            "nothing accepts TCP connections on port {}",
            closed.port()
        )),
        "{}",
        shown(&c)
    );
    assert_eq!(first, None);
}

// ---------- against a real dotgate on 127.0.0.1 ----------

/// What the UDP responder puts in its answers.
#[derive(Clone, Copy)]
struct Answers {
    a: Ipv4Addr,
    /// No AAAA record when `None` (NOERROR, empty answer).
    aaaa: Option<Ipv6Addr>,
}

const ORDINARY: Answers = Answers {
    a: Ipv4Addr::new(192, 0, 2, 1),
    aaaa: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
};

/// A UDP DNS responder on 127.0.0.1 that answers every A and AAAA query at
/// once, echoing ID and question.
async fn udp_responder(answers: Answers) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.queries = query.queries.clone();
            if query.edns.is_some() {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                reply.set_edns(edns);
            }
            if let Some(q) = query.queries.first() {
                let data = match q.query_type() {
                    RecordType::A => Some(RData::A(A(answers.a))),
                    RecordType::AAAA => answers.aaaa.map(|v6| RData::AAAA(AAAA(v6))),
                    _ => None,
                };
                if let Some(data) = data {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 60, data));
                }
            }
            if let Ok(out) = reply.to_vec() {
                let _ = sock.send_to(&out, from).await;
            }
        }
    });
    (addr, task)
}

/// A CA and a leaf for `dns.test` and 127.0.0.1 it signed, generated now,
/// in a directory removed on drop: `ca.pem`, `cert.pem` (leaf, then CA) and
/// `key.pem`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dotgate check unit test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![
            "dns.test".to_string(),
            "*.dns.test".to_string(),
            "127.0.0.1".into(),
        ])
        .unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "dns.test");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();

        let dir = std::env::temp_dir().join(format!(
            "dotgate-check-unit-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.join("cert.pem"),
            format!("{}{}", leaf_cert.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// dotgate served in this test's runtime on 127.0.0.1, in front of a UDP
/// responder; stopped on drop.
struct Dotgate {
    addr: SocketAddr,
    pki: Pki,
    shutdown: CancellationToken,
    upstream: JoinHandle<()>,
}

impl Drop for Dotgate {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.upstream.abort();
    }
}

impl Dotgate {
    /// Starts dotgate with `extra` serve flags (such as `--idle-timeout`).
    async fn start(answers: Answers, extra: &[&str]) -> Dotgate {
        let (upstream_addr, upstream) = udp_responder(answers).await;
        let pki = Pki::new();
        let mut argv: Vec<String> = vec![
            "dotgate".into(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            pki.path("cert.pem").display().to_string(),
            "--key".into(),
            pki.path("key.pem").display().to_string(),
            "--upstream".into(),
            upstream_addr.to_string(),
            "--health-check-interval".into(),
            "1h".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = match crate::config::cli::Cli::try_parse_from(argv)
            .expect("serve flags")
            .command
        {
            crate::config::cli::Command::Serve(args) => *args,
            _ => unreachable!("a serve command line"),
        };
        let config = crate::config::Config::from_args(&args, Path::new("/nonexistent/resolv.conf"))
            .expect("a valid configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            crate::server::run(config, vec![listener], token)
                .await
                .expect("dotgate serves");
        });
        Dotgate {
            addr,
            pki,
            shutdown,
            upstream,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            budget: Budget::new(FULL_BUDGET),
            addr: self.addr,
            name: ServerName::try_from("dns.test").unwrap(),
            run: probes::random_label(),
        }
    }
}

/// Bounds every step of a test that talks to a server.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 5 s"))
}

/// Ten pipelined queries to dotgate: all answered on one connection.
#[tokio::test]
async fn pipelining_passes_against_dotgate() {
    let server = Dotgate::start(ORDINARY, &[]).await;
    let c = within("pipelining", pipelining_check(&server.ctx())).await;
    assert_eq!(c.status, Status::Pass, "{}", shown(&c));
    assert!(
        c.reason
            .starts_with("10 of 10 pipelined queries answered on one connection"),
        "{}",
        shown(&c)
    );
}

/// The keepalive dotgate advertises is its idle timeout, in 100 ms units.
#[tokio::test]
async fn keepalive_reports_dotgate_idle_timeout() {
    let server = Dotgate::start(ORDINARY, &["--idle-timeout", "12s"]).await;
    let (c, units) = within("keepalive", keepalive_check(&server.ctx())).await;
    assert_eq!(c.status, Status::Pass, "{}", shown(&c));
    assert_eq!(units, Some(120));
    assert!(
        c.reason.contains("an idle timeout of 12.0 s"),
        "{}",
        shown(&c)
    );
}

/// dotgate pads replies to padded queries to a multiple of 468 bytes.
#[tokio::test]
async fn padding_passes_against_dotgate() {
    let server = Dotgate::start(ORDINARY, &[]).await;
    let c = within("padding", padding_check(&server.ctx())).await;
    assert_eq!(c.status, Status::Pass, "{}", shown(&c));
    assert!(c.reason.contains("(a multiple of 468"), "{}", shown(&c));
}

/// A server that closes idle connections before Android's 20 s: a WARN
/// saying after how long, found as soon as the server closes (not after
/// 20 s). Under --quick the wait is not made at all.
#[tokio::test]
async fn a_short_idle_timeout_warns_as_soon_as_the_server_closes() {
    let server = Dotgate::start(ORDINARY, &["--idle-timeout", "300ms"]).await;
    let ctx = server.ctx();
    assert!(idle_check(&ctx, true).await.is_none(), "--quick skips it");

    let started = Instant::now();
    let c = within("idle", idle_check(&ctx, false))
        .await
        .expect("a verdict without --quick");
    let took = started.elapsed();
    assert_eq!((c.id, c.status), ("idle", Status::Warn), "{}", shown(&c));
    let after: f32 = c
        .reason
        .strip_prefix("the server closed the connection after ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {}", shown(&c)));
    assert!((0.2..=1.5).contains(&after), "{after} s: {}", shown(&c));
    assert!(c
        .reason
        .contains("Android keeps connections open 20 s idle"));
    assert!(c.fix.as_deref().unwrap().contains("--idle-timeout"));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A DoT server that answers the first query, sends a stray message
/// (another ID) `stray_after` later, answers what comes next, and closes
/// the connection `close_after` after its first answer: a server whose
/// idle timeout is shorter than the check's wait.
async fn stray_then_close(pki: &Pki, stray_after: Duration, close_after: Duration) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path("key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"dot".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        // The answer to the query read from `tls`, framed; `None` at its end.
        async fn answer<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> Option<Vec<u8>> {
            let mut len = [0u8; 2];
            tls.read_exact(&mut len).await.ok()?;
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            tls.read_exact(&mut query).await.ok()?;
            let query = Message::from_vec(&query).ok()?;
            let name = query.queries.first()?.name().to_ascii();
            let mut answer = reply(&name, ResponseCode::NoError, &["192.0.2.1"]);
            answer.metadata.id = query.metadata.id;
            let body = bytes(&answer);
            let mut out = u16::try_from(body.len()).ok()?.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            Some(out)
        }
        let first = answer(&mut tls).await.unwrap();
        tls.write_all(&first).await.unwrap();
        tls.flush().await.unwrap();
        let answered = Instant::now();
        tokio::time::sleep(stray_after).await;
        // The same answer again: an ID no query is waiting for now.
        let _ = tls.write_all(&first).await;
        let _ = tls.flush().await;
        let _ = tokio::time::timeout_at(answered + close_after, async {
            while let Some(out) = answer(&mut tls).await {
                if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = tls.shutdown().await;
    });
    addr
}

/// A stray message during the idle wait does not end it: a server that
/// sends one 100 ms into the wait and closes 1 s in is reported as closing
/// (WARN), not as staying open (PASS), for a 2 s wait.
#[tokio::test]
async fn a_stray_message_does_not_end_the_idle_wait() {
    let pki = Pki::new();
    let addr = stray_then_close(&pki, Duration::from_millis(100), Duration::from_secs(1)).await;
    let ctx = Ctx {
        budget: Budget::new(FULL_BUDGET),
        addr,
        name: ServerName::try_from("dns.test").unwrap(),
        run: probes::random_label(),
    };
    let c = within("idle", idle_check_for(&ctx, Duration::from_secs(2)))
        .await
        .expect("a verdict");
    assert_eq!((c.id, c.status), ("idle", Status::Warn), "{}", shown(&c));
    assert!(
        c.reason
            .starts_with("the server closed the connection after "),
        "{}",
        shown(&c)
    );
}

/// Version and suite names, and the TLS line, from real handshakes pinned
/// to each version.
#[tokio::test]
async fn versions_and_suites_are_named_from_the_handshake() {
    let server = Dotgate::start(ORDINARY, &[]).await;
    let ctx = server.ctx();

    let conn = within(
        "TLS 1.2",
        ctx.connect(tls_config(&[&TLS12], true, true).unwrap()),
    )
    .await
    .expect("a TLS 1.2 handshake");
    assert_eq!(version_name(&conn), "TLS 1.2");
    assert!(
        suite_name(&conn).starts_with("TLS_ECDHE_"),
        "{}",
        suite_name(&conn)
    );
    conn.close().await;

    let conn = within(
        "TLS 1.3",
        ctx.connect(tls_config(&[&TLS13], false, true).unwrap()),
    )
    .await
    .expect("a TLS 1.3 handshake");
    assert_eq!(version_name(&conn), "TLS 1.3");
    assert!(
        suite_name(&conn).starts_with("TLS13_"),
        "{}",
        suite_name(&conn)
    );
    let c = tls_check(&conn);
    assert_eq!((c.id, c.status), ("tls", Status::Pass));
    assert!(
        c.reason.starts_with("TLS 1.3 (TLS13_") && c.reason.contains("no ALPN chosen"),
        "{}",
        shown(&c)
    );
    conn.close().await;

    let conn = within("TLS", ctx.connect(tls_config(BOTH, true, true).unwrap()))
        .await
        .expect("a handshake");
    let c = tls_check(&conn);
    assert!(
        c.reason
            .contains("ALPN dot, 2 certificates sent, handshake in "),
        "{}",
        shown(&c)
    );
    conn.close().await;

    for (version, id, label) in [(&TLS12, "tls1.2", "TLS 1.2"), (&TLS13, "tls1.3", "TLS 1.3")] {
        let c = within(label, version_check(&ctx, version)).await.unwrap();
        assert_eq!((c.id, c.status), (id, Status::Pass), "{}", shown(&c));
        assert!(
            c.reason
                .starts_with(&format!("{label} handshake completes (")),
            "{}",
            shown(&c)
        );
    }
}

/// A server that refuses TLS 1.2: a WARN for Android (old versions have no
/// TLS 1.3), and TLS 1.3 still passes.
#[tokio::test]
async fn a_tls13_only_dotgate_warns_for_tls12() {
    let server = Dotgate::start(ORDINARY, &["--tls-min-version", "1.3"]).await;
    let ctx = server.ctx();
    let v12 = within("TLS 1.2", version_check(&ctx, &TLS12))
        .await
        .unwrap();
    let v13 = within("TLS 1.3", version_check(&ctx, &TLS13))
        .await
        .unwrap();
    assert_eq!(v12.status, Status::Warn, "{}", shown(&v12));
    assert!(
        v12.reason.starts_with("TLS 1.2 refused: ")
            && v12.reason.contains("old Android and Windows clients fail"),
        "{}",
        shown(&v12)
    );
    assert_eq!(
        v12.clients,
        Clients::ANDROID_STRICT.or(Clients::ANDROID_OPPORTUNISTIC)
    );
    assert_eq!(v13.status, Status::Pass, "{}", shown(&v13));
    // One refused version is not made a FAIL.
    let [a, b] = both_versions(v12, v13);
    assert_eq!((a.status, b.status), (Status::Warn, Status::Pass));
}

/// dotgate resumes sessions, serves the same certificate without SNI, and
/// refuses plain DNS.
#[tokio::test]
async fn resumption_no_sni_and_plaintext_pass_against_dotgate() {
    let server = Dotgate::start(ORDINARY, &[]).await;
    let ctx = server.ctx();

    let c = within("resumption", resumption_check(&ctx)).await;
    assert_eq!(
        (c.id, c.status),
        ("resumption", Status::Pass),
        "{}",
        shown(&c)
    );
    assert!(
        c.reason.contains("resumed the first one's session"),
        "{}",
        shown(&c)
    );

    let conn = within("TLS", ctx.connect(tls_config(BOTH, true, true).unwrap()))
        .await
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = conn.tls().peer_certificates().unwrap().to_vec();
    conn.close().await;
    let roots = Arc::new(query::roots_from_file(&server.pki.path("ca.pem")).unwrap());
    let c = within(
        "no SNI",
        no_sni_check(&ctx, &chain, &roots, "the test CA", 0),
    )
    .await;
    assert_eq!((c.id, c.status), ("no-sni", Status::Pass), "{}", shown(&c));
    assert!(
        c.reason.ends_with("with the same certificate"),
        "{}",
        shown(&c)
    );

    let plain = within(
        "plaintext",
        probes::plaintext_probe(ctx.addr, &ctx.qname("plain"), &ctx.budget),
    )
    .await;
    let c = plaintext_check(&plain);
    assert_eq!(c.status, Status::Pass, "{plain:?}: {}", shown(&c));
}

/// Android's probe through dotgate: the question is echoed (PASS), and the
/// probe name's address decides strict mode: a real one passes, only a
/// sinkhole (found by the A query that follows an empty AAAA answer) fails.
#[tokio::test]
async fn android_checks_through_dotgate() {
    let server = Dotgate::start(ORDINARY, &[]).await;
    let ctx = server.ctx();
    let conn = within(
        "no ALPN",
        ctx.connect(tls_config(BOTH, false, true).unwrap()),
    )
    .await
    .unwrap();
    let [probe, strict] = within("android", android_checks(&ctx, Some(conn))).await;
    assert_eq!(probe.status, Status::Pass, "{}", shown(&probe));
    assert!(
        probe.reason.contains("got NOERROR with its question"),
        "{}",
        shown(&probe)
    );
    assert_eq!(strict.status, Status::Pass, "{}", shown(&strict));
    assert!(
        strict.reason.contains("(2001:db8::1)"),
        "{}",
        shown(&strict)
    );

    let blocked = Answers {
        a: Ipv4Addr::UNSPECIFIED,
        aaaa: None,
    };
    let server = Dotgate::start(blocked, &[]).await;
    let ctx = server.ctx();
    let conn = within(
        "no ALPN",
        ctx.connect(tls_config(BOTH, false, true).unwrap()),
    )
    .await
    .unwrap();
    let [probe, strict] = within("android", android_checks(&ctx, Some(conn))).await;
    assert_eq!(probe.status, Status::Pass, "{}", shown(&probe));
    assert_eq!(strict.status, Status::Fail, "{}", shown(&strict));
    assert!(
        strict.reason.contains("got only 0.0.0.0") && strict.reason.contains("looks blocked"),
        "{}",
        shown(&strict)
    );

    let [probe, strict] = android_checks(&ctx, None).await;
    assert_eq!((probe.status, strict.status), (Status::Skip, Status::Skip));
    assert!(probe.reason.contains("no connection without ALPN"));
}

/// The whole `dotgate check --quick` against dotgate: every check once, no
/// FAIL, and the idle line says what the server advertises instead of
/// waiting 20 s.
#[tokio::test]
async fn a_quick_run_against_dotgate_passes() {
    let server = Dotgate::start(ORDINARY, &["--idle-timeout", "25s"]).await;
    let opts = Options::new(
        &server.addr.to_string(),
        Some("dns.test".into()),
        Trust::Ca(server.pki.path("ca.pem")),
        None,
        true,
    )
    .unwrap();
    let report = within("dotgate check --quick", run(&opts)).await.unwrap();
    let ids: Vec<&str> = report.checks.iter().map(|c| c.id).collect();
    assert_eq!(ids, report::ORDER, "every check once, in report order");
    let all: Vec<String> = report.checks.iter().map(shown).collect();
    assert!(report.ok(), "{all:#?}");
    assert_eq!(report.target.address, Some(server.addr));
    let idle = report.checks.iter().find(|c| c.id == "idle").unwrap();
    assert_eq!(idle.status, Status::Skip);
    assert_eq!(
        idle.reason,
        "--quick: did not wait 20 s idle (the server advertises 25.0 s by keepalive)"
    );
    for id in [
        "tls",
        "tls1.2",
        "tls1.3",
        "chain",
        "pipelining",
        "android-probe",
    ] {
        let c = report.checks.iter().find(|c| c.id == id).unwrap();
        assert_eq!(c.status, Status::Pass, "{}", shown(c));
    }
}

/// Nothing listening: the run stops after reachability and skips the rest,
/// saying why.
#[tokio::test]
async fn a_run_against_a_closed_port_skips_the_rest() {
    let pki = Pki::new();
    let addr = closed_port().await;
    let opts = Options::new(
        &addr.to_string(),
        None,
        Trust::Ca(pki.path("ca.pem")),
        None,
        true,
    )
    .unwrap();
    let report = within("dotgate check --quick", run(&opts)).await.unwrap();
    let reachable = report.checks.iter().find(|c| c.id == "reachable").unwrap();
    assert_eq!(reachable.status, Status::Fail, "{}", shown(reachable));
    let tls = report.checks.iter().find(|c| c.id == "tls").unwrap();
    assert_eq!(tls.status, Status::Skip);
    assert_eq!(tls.reason, "not run: the port is not reachable");
    assert_eq!(report.checks.len(), report::ORDER.len());
}

/// A private endpoint (client IDs): a listed ID passes and is named in the
/// heading, a handshake without SNI is a WARN that says why, and an
/// unlisted ID fails the TLS check with the alert and what to do.
#[tokio::test]
async fn client_ids_are_reported_and_refusals_explained() {
    let server = Dotgate::start(
        ORDINARY,
        &["--client-id-domain", "dns.test", "--client-id", "alice"],
    )
    .await;
    let opts = |name: &str| {
        Options::new(
            &server.addr.to_string(),
            Some(name.into()),
            Trust::Ca(server.pki.path("ca.pem")),
            None,
            true,
        )
        .unwrap()
    };
    let report = within("dotgate check alice", run(&opts("alice.dns.test")))
        .await
        .unwrap();
    let find = |r: &Report, id: &str| r.checks.iter().find(|c| c.id == id).unwrap().clone();
    let tls = find(&report, "tls");
    assert_eq!(tls.status, Status::Pass, "{}", shown(&tls));
    let no_sni = find(&report, "no-sni");
    assert_eq!(no_sni.status, Status::Warn, "{}", shown(&no_sni));
    assert!(no_sni.reason.contains("access_denied") && no_sni.reason.contains("private endpoint"));
    let text = report.to_text();
    assert!(
        text.contains("client ID \"alice\" under dns.test"),
        "{text}"
    );

    let report = within("dotgate check mallory", run(&opts("mallory.dns.test")))
        .await
        .unwrap();
    let tls = find(&report, "tls");
    assert_eq!(tls.status, Status::Fail, "{}", shown(&tls));
    assert!(
        tls.reason.contains("alert access_denied") && tls.reason.contains("\"mallory\""),
        "{}",
        shown(&tls)
    );
    assert!(tls.fix.as_deref().unwrap().contains("--client-ids"));
    assert!(client_id_of("127.0.0.1").is_none());
    assert!(client_id_of("dns.example").is_none());
    assert_eq!(client_id_of("a.dns.example"), Some(("a", "dns.example")));
}
