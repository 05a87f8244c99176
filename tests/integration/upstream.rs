//! A scripted upstream resolver: UDP and TCP on one 127.0.0.1 port.
//!
//! What it does is chosen by the labels of the query name:
//! * `delay-<ms>`: reply after that many milliseconds;
//! * `drop`: never reply;
//! * `tc`: over UDP, an empty reply with TC set; over TCP, a big complete
//!   TXT answer ([`big_txt`], several KB);
//! * `spoof`: over UDP, first a reply with a wrong ID, then one with the
//!   right ID but another question, then one with the right ID and question
//!   but from another port, and only then the real reply;
//! * `pad`: the usual answer, and an OPT record (when the query had one)
//!   carrying the upstream's own padding ([`UPSTREAM_PADDING`] bytes), a
//!   keepalive of [`UPSTREAM_KEEPALIVE`] and an NSID of [`UPSTREAM_NSID`], as
//!   a resolver that pads for its own clients would send;
//! * `keepalive-<units>`: the usual answer, and (when the query had an OPT
//!   record) an edns-tcp-keepalive option with that timeout, as a stream
//!   upstream advertising its idle timeout (or 0: "close this connection")
//!   would send;
//! * `ecs`: the usual answer, and (when the query had an OPT record) every
//!   client subnet option of the query echoed back, as an ECS-aware
//!   resolver does;
//! * `lose-first`: over UDP, the first datagram of the name is dropped as
//!   if lost on the way, and a second copy is answered as usual;
//! * `servfail`, or a first label ending in `-dnsotls-ds` (Android's Private
//!   DNS probe, `<random>-dnsotls-ds.metric.gstatic.com`): SERVFAIL with the
//!   question echoed;
//! * otherwise: A, AAAA or TXT records derived from the name
//!   ([`expected_a`], [`expected_aaaa`], [`expected_txt`]), so that an answer
//!   delivered to the wrong query is detectable.
//!
//! Every reply echoes the upstream's ID and question, and has an OPT record
//! exactly when the query had one (with the query's DO bit). Every query
//! received is logged, with its EDNS options as raw bytes, except dotgate's
//! health probes (`. NS`), which are only counted ([`Upstream::probes`]) and
//! never count as outstanding, so tests of the query path see only their
//! own queries.
//!
//! A test can also stop and restart the upstream on the same port
//! ([`Upstream::stop`], [`Upstream::restart`]: queries in flight are never
//! answered), reset its TCP connections ([`Upstream::reset_tcp`]), slow every
//! reply ([`Upstream::set_delay`]) and fix the address of a name (its A
//! answer, and no AAAA: [`Upstream::set_address`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Address the spoofed replies claim; never the right answer.
pub const SPOOFED_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);

/// Length of the padding option's data in `pad` replies.
pub const UPSTREAM_PADDING: usize = 100;
/// Keepalive (100 ms units) in `pad` replies: about the upstream leg, never
/// for a DoT client.
pub const UPSTREAM_KEEPALIVE: u16 = 1234;
/// NSID (option 3) in `pad` replies: an ordinary option that passes through.
pub const UPSTREAM_NSID: &[u8] = b"scripted-upstream";

/// Transport a query arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub transport: Transport,
    pub id: u16,
    /// Lower-case name, with the trailing dot.
    pub name: String,
    pub rtype: RecordType,
    pub had_opt: bool,
    /// The options of the query's OPT record, in order: (code, data) exactly
    /// as they were on the wire.
    pub options: Vec<(u16, Vec<u8>)>,
    /// The OPT record's DO bit.
    pub dnssec_ok: bool,
    /// The header's CD bit.
    pub checking_disabled: bool,
    /// The port the query came from.
    pub source_port: u16,
}

#[derive(Default)]
struct State {
    log: Mutex<Vec<Received>>,
    /// Queries received and not yet answered (delayed ones included).
    outstanding: AtomicUsize,
    max_outstanding: AtomicUsize,
    /// Health probes (`. NS`) received.
    probes: AtomicUsize,
    /// Added to the first pause of every reply, in milliseconds.
    extra_delay_ms: AtomicU64,
    /// Cancelled to kill every TCP connection and pending reply; replaced
    /// by a fresh token for what comes after.
    kill: Mutex<CancellationToken>,
    /// Fixed A answers: lower-case name with the dot -> (address, TTL).
    addresses: Mutex<HashMap<String, (Ipv4Addr, u32)>>,
    /// `lose-first` names whose first UDP datagram was already dropped.
    lost_once: Mutex<std::collections::HashSet<String>>,
}

impl State {
    fn kill_token(&self) -> CancellationToken {
        self.kill.lock().unwrap().clone()
    }

    fn kill_all(&self) {
        let old = std::mem::take(&mut *self.kill.lock().unwrap());
        old.cancel();
    }
}

/// True for dotgate's health probe: a query for `. NS`.
fn is_probe(bytes: &[u8]) -> bool {
    Message::from_vec(bytes).is_ok_and(|m| {
        m.queries
            .first()
            .is_some_and(|q| q.name().is_root() && q.query_type() == RecordType::NS)
    })
}

pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Upstream {
    /// Binds UDP on a free port, then TCP on the same port (retrying with a
    /// new port when the TCP port is taken).
    pub async fn start() -> Upstream {
        let mut last_error = None;
        for _ in 0..20 {
            let udp = bind_udp();
            let addr = udp.local_addr().expect("UDP address");
            let tcp = match TcpListener::bind(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let state = Arc::new(State::default());
            let udp = Arc::new(udp);
            let tasks = vec![
                tokio::spawn(udp_loop(udp, state.clone())),
                tokio::spawn(tcp_loop(tcp, state.clone())),
            ];
            return Upstream { addr, state, tasks };
        }
        panic!("no port free for both UDP and TCP: {last_error:?}");
    }

    /// Serves UDP and TCP on `addr` (e.g. port 53 of a loopback address, as
    /// a resolv.conf `nameserver` line names it); the bind's error when the
    /// port cannot be had.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Upstream> {
        let udp = try_bind_udp(addr)?;
        let tcp = TcpListener::bind(addr).await?;
        let state = Arc::new(State::default());
        let tasks = vec![
            tokio::spawn(udp_loop(Arc::new(udp), state.clone())),
            tokio::spawn(tcp_loop(tcp, state.clone())),
        ];
        Ok(Upstream { addr, state, tasks })
    }

    /// Every query received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Health probes received so far.
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// Stops answering: closes the UDP and TCP ports, resets every TCP
    /// connection and drops every reply not yet sent.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.state.kill_all();
    }

    /// Serves again on the same port after [`Upstream::stop`] (retrying the
    /// bind for up to 5 s while the old sockets close).
    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let bound = match try_bind_udp(self.addr) {
                Ok(udp) => TcpListener::bind(self.addr).await.map(|tcp| (udp, tcp)),
                Err(e) => Err(e),
            };
            match bound {
                Ok((udp, tcp)) => {
                    self.tasks = vec![
                        tokio::spawn(udp_loop(Arc::new(udp), self.state.clone())),
                        tokio::spawn(tcp_loop(tcp, self.state.clone())),
                    ];
                    return;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot bind {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Resets (RST) every open TCP connection, dropping the replies they
    /// still owed; the port stays open for new connections.
    pub fn reset_tcp(&self) {
        self.state.kill_all();
    }

    /// Delays every reply (probes included) by `delay` more.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .extra_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers A queries for `name` with `ip` and this TTL, and AAAA
    /// queries with no address (NODATA): a client that takes both connects
    /// to `ip` only.
    pub fn set_address(&self, name: &str, ip: Ipv4Addr, ttl: u32) {
        self.state
            .addresses
            .lock()
            .unwrap()
            .insert(lower_fqdn(name), (ip, ttl));
    }

    pub fn count(&self, transport: Transport) -> usize {
        self.received()
            .iter()
            .filter(|r| r.transport == transport)
            .count()
    }

    /// The largest number of queries that were waiting for their reply at
    /// the same time.
    pub fn max_outstanding(&self) -> usize {
        self.state.max_outstanding.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` queries have been received (bounded).
    pub async fn wait_for_queries(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.received().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream received {} queries, expected {n} within {limit:?}",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A UDP socket on a free 127.0.0.1 port with a large receive buffer, so that
/// bursts of hundreds of queries are not dropped by the kernel before this
/// upstream reads them (the default buffer holds only about 200 datagrams).
fn bind_udp() -> UdpSocket {
    try_bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind UDP")
}

fn try_bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

// ---------- what the answers are ----------

fn fnv1a(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.to_ascii_lowercase().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The A record the upstream gives `name`: 192.0.2.x, x from a hash.
pub fn expected_a(name: &str) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (fnv1a(name) % 256) as u8)
}

/// The AAAA record: 2001:db8::/64 with the low 64 bits a hash of the name.
pub fn expected_aaaa(name: &str) -> Ipv6Addr {
    let h = fnv1a(name);
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        (h >> 48) as u16,
        (h >> 32) as u16,
        (h >> 16) as u16,
        h as u16,
    )
}

/// The TXT record: one string naming the question exactly.
pub fn expected_txt(name: &str) -> Vec<Vec<u8>> {
    vec![format!("answer-for={}", lower_fqdn(name)).into_bytes()]
}

/// The TXT answer to a `tc` name over TCP: 20 strings of 250 bytes.
pub fn big_txt(name: &str) -> Vec<Vec<u8>> {
    let name = lower_fqdn(name);
    (0..20)
        .map(|i| {
            let mut s = format!("{i:02}-{name}-").into_bytes();
            s.resize(250, b'a' + (i % 26) as u8);
            s
        })
        .collect()
}

/// `name` in lower case with a trailing dot.
pub fn lower_fqdn(name: &str) -> String {
    let mut s = name.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

// ---------- the scripted behaviour ----------

/// One message to send, after a pause.
struct Step {
    pause: Duration,
    msg: Vec<u8>,
    /// Send from another UDP port than the upstream's (a forged source).
    other_port: bool,
}

impl Step {
    fn after(pause: Duration, msg: Vec<u8>) -> Step {
        Step {
            pause,
            msg,
            other_port: false,
        }
    }
}

/// What to send for one query.
type Script = Vec<Step>;

fn script(query: &Message, transport: Transport) -> Script {
    let Some(q) = query.queries.first() else {
        return Vec::new();
    };
    let name = lower_fqdn(&q.name().to_ascii());
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    let delay = labels
        .iter()
        .find_map(|l| l.strip_prefix("delay-")?.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let has = |label: &str| labels.contains(&label);

    if has("drop") {
        return Vec::new();
    }
    if has("tc") {
        let mut reply = reply_to(query);
        match transport {
            Transport::Udp => reply.metadata.truncation = true,
            Transport::Tcp => {
                let data = big_txt(&name);
                let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                reply.add_answer(record(q.name(), RData::TXT(TXT::from_bytes(parts))));
            }
        }
        return vec![Step::after(delay, encode(&reply))];
    }
    if has("servfail") || labels[0].ends_with("-dnsotls-ds") {
        let mut reply = reply_to(query);
        reply.metadata.response_code = ResponseCode::ServFail;
        return vec![Step::after(delay, encode(&reply))];
    }
    if has("pad") {
        let mut reply = answer(query);
        if let Some(edns) = reply.edns.as_mut() {
            let options = edns.options_mut();
            options.insert(EdnsOption::Unknown(12, vec![0; UPSTREAM_PADDING]));
            options.insert(EdnsOption::Unknown(3, UPSTREAM_NSID.to_vec()));
            options.insert(EdnsOption::Unknown(
                11,
                UPSTREAM_KEEPALIVE.to_be_bytes().to_vec(),
            ));
        }
        return vec![Step::after(delay, encode(&reply))];
    }
    if has("ecs") {
        let mut reply = answer(query);
        let asked: Vec<EdnsOption> = query
            .edns
            .as_ref()
            .map(|e| {
                e.options()
                    .as_ref()
                    .iter()
                    .filter(|(code, _)| u16::from(*code) == 8)
                    .map(|(_, option)| option.clone())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(edns) = reply.edns.as_mut() {
            for option in asked {
                edns.options_mut().insert(option);
            }
        }
        return vec![Step::after(delay, encode(&reply))];
    }
    let keepalive = labels
        .iter()
        .find_map(|l| l.strip_prefix("keepalive-")?.parse::<u16>().ok());
    if let Some(units) = keepalive {
        let mut reply = answer(query);
        if let Some(edns) = reply.edns.as_mut() {
            edns.options_mut()
                .insert(EdnsOption::Unknown(11, units.to_be_bytes().to_vec()));
        }
        return vec![Step::after(delay, encode(&reply))];
    }
    let real = encode(&answer(query));
    if has("spoof") && transport == Transport::Udp {
        let mut wrong_id = answer(query);
        wrong_id.metadata.id = query.metadata.id ^ 0x5a5a;
        wrong_id.answers = vec![record(q.name(), RData::A(A(SPOOFED_A)))];
        let mut wrong_question = reply_to(query);
        let other = Name::from_ascii("other.spoof.test.").unwrap();
        wrong_question.queries[0] = hickory_proto::op::Query::query(other.clone(), q.query_type());
        wrong_question.add_answer(record(&other, RData::A(A(SPOOFED_A))));
        let mut wrong_port = answer(query);
        wrong_port.answers = vec![record(q.name(), RData::A(A(SPOOFED_A)))];
        return vec![
            Step::after(delay, encode(&wrong_id)),
            Step::after(Duration::ZERO, encode(&wrong_question)),
            Step {
                pause: Duration::ZERO,
                msg: encode(&wrong_port),
                other_port: true,
            },
            Step::after(Duration::from_millis(30), real),
        ];
    }
    vec![Step::after(delay, real)]
}

/// An empty NOERROR reply echoing the query's ID, question and RD, with OPT
/// exactly when the query had one.
fn reply_to(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = ResponseCode::NoError;
    reply.queries = query.queries.clone();
    if let Some(asked) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(asked.flags().dnssec_ok);
        reply.set_edns(edns);
    }
    reply
}

fn answer(query: &Message) -> Message {
    let mut reply = reply_to(query);
    if let Some(q) = query.queries.first() {
        let name = q.name().to_ascii();
        let data = match q.query_type() {
            RecordType::A => Some(RData::A(A(expected_a(&name)))),
            RecordType::AAAA => Some(RData::AAAA(AAAA(expected_aaaa(&name)))),
            RecordType::TXT => {
                let txt = expected_txt(&name);
                let parts: Vec<&[u8]> = txt.iter().map(Vec::as_slice).collect();
                Some(RData::TXT(TXT::from_bytes(parts)))
            }
            _ => None,
        };
        if let Some(data) = data {
            reply.add_answer(record(q.name(), data));
        }
    }
    reply
}

/// The scripted upstream's ordinary answer to the bytes of a query, for
/// tests that serve a misbehaving upstream by hand; `None` for bytes that
/// are not a DNS message.
pub fn ordinary_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    Some(encode(&answer(&query)))
}

fn record(name: &Name, data: RData) -> Record {
    Record::from_rdata(name.clone(), 60, data)
}

fn encode(msg: &Message) -> Vec<u8> {
    msg.to_vec().expect("the upstream encodes its reply")
}

/// Logs a query and returns its script, or None for a message that is not a
/// DNS query (then nothing is sent).
fn receive(state: &State, bytes: &[u8], transport: Transport, source_port: u16) -> Option<Script> {
    let query = Message::from_vec(bytes).ok()?;
    let q = query.queries.first()?;
    let extra = Duration::from_millis(state.extra_delay_ms.load(Ordering::SeqCst));
    let slowed = |mut script: Script| {
        if let Some(first) = script.first_mut() {
            first.pause += extra;
        }
        script
    };
    if q.name().is_root() && q.query_type() == RecordType::NS {
        state.probes.fetch_add(1, Ordering::SeqCst);
        return Some(slowed(script(&query, transport)));
    }
    let name = lower_fqdn(&q.name().to_ascii());
    let fixed = state.addresses.lock().unwrap().get(&name).copied();
    let rtype = q.query_type();
    if let (Some((ip, ttl)), RecordType::A | RecordType::AAAA) = (fixed, rtype) {
        let mut reply = reply_to(&query);
        if rtype == RecordType::A {
            reply.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
        }
        state.log.lock().unwrap().push(Received {
            transport,
            id: query.metadata.id,
            name,
            rtype: q.query_type(),
            had_opt: query.edns.is_some(),
            options: raw_opt_options(bytes),
            dnssec_ok: query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            checking_disabled: query.metadata.checking_disabled,
            source_port,
        });
        return Some(slowed(vec![Step::after(Duration::ZERO, encode(&reply))]));
    }
    let first_loss = transport == Transport::Udp
        && name.split('.').any(|label| label == "lose-first")
        && state.lost_once.lock().unwrap().insert(name.clone());
    state.log.lock().unwrap().push(Received {
        transport,
        id: query.metadata.id,
        name: lower_fqdn(&q.name().to_ascii()),
        rtype: q.query_type(),
        had_opt: query.edns.is_some(),
        options: raw_opt_options(bytes),
        dnssec_ok: query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        checking_disabled: query.metadata.checking_disabled,
        source_port,
    });
    if first_loss {
        return Some(Vec::new());
    }
    Some(slowed(script(&query, transport)))
}

/// The options of the last OPT record of a message hickory has already
/// parsed (empty without one), read from the wire so that nothing is
/// normalized.
pub fn raw_opt_options(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let (records, _) = raw_records(msg);
    let mut options = Vec::new();
    for record in records.iter().filter(|r| r.rtype == 41) {
        options.clear();
        let mut rdata = record.rdata;
        while rdata.len() >= 4 {
            let code = u16::from_be_bytes([rdata[0], rdata[1]]);
            let len = usize::from(u16::from_be_bytes([rdata[2], rdata[3]]));
            options.push((code, rdata[4..4 + len].to_vec()));
            rdata = &rdata[4 + len..];
        }
    }
    options
}

/// One resource record as found on the wire.
pub struct RawRecord<'a> {
    pub additional: bool,
    pub rtype: u16,
    pub rdata: &'a [u8],
}

/// Every resource record of a message, walked by hand rather than through
/// hickory (which folds OPT into `edns` and refuses duplicates), and the
/// offset where the last one ends.
pub fn raw_records(msg: &[u8]) -> (Vec<RawRecord<'_>>, usize) {
    fn skip_name(msg: &[u8], mut pos: usize) -> usize {
        loop {
            let len = usize::from(msg[pos]);
            if len == 0 {
                return pos + 1;
            }
            if len >= 0xc0 {
                return pos + 2;
            }
            pos += 1 + len;
        }
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[4 + 2 * i], msg[5 + 2 * i]]));
    let mut pos = 12;
    for _ in 0..count(0) {
        pos = skip_name(msg, pos) + 4;
    }
    let before_additional = count(1) + count(2);
    let mut records = Vec::new();
    for index in 0..before_additional + count(3) {
        pos = skip_name(msg, pos);
        let rtype = u16::from_be_bytes([msg[pos], msg[pos + 1]]);
        let rdlen = usize::from(u16::from_be_bytes([msg[pos + 8], msg[pos + 9]]));
        records.push(RawRecord {
            additional: index >= before_additional,
            rtype,
            rdata: &msg[pos + 10..pos + 10 + rdlen],
        });
        pos += 10 + rdlen;
    }
    (records, pos)
}

/// Tracks one query from arrival until just before its last message is sent.
struct Outstanding(Arc<State>);

impl Outstanding {
    fn new(state: &Arc<State>) -> Self {
        let now = state.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_outstanding.fetch_max(now, Ordering::SeqCst);
        Outstanding(state.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, state: Arc<State>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let probe = is_probe(&buf[..n]);
        let Some(script) = receive(&state, &buf[..n], Transport::Udp, peer.port()) else {
            continue;
        };
        let sock = sock.clone();
        let guard = (!probe).then(|| Outstanding::new(&state));
        let killed = state.kill_token();
        tokio::spawn(killed.run_until_cancelled_owned(async move {
            let mut guard = Some(guard);
            let last = script.len().saturating_sub(1);
            for (index, step) in script.into_iter().enumerate() {
                tokio::time::sleep(step.pause).await;
                if index == last {
                    // Answered from here on: the reply may reach dotgate,
                    // and its next query come in, before this task resumes.
                    guard.take();
                }
                if step.other_port {
                    let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    let _ = forger.send_to(&step.msg, peer).await;
                } else {
                    let _ = sock.send_to(&step.msg, peer).await;
                }
            }
        }));
    }
}

async fn tcp_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        tokio::spawn(tcp_connection(stream, state.clone()));
    }
}

async fn read_message(read: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    read.read_exact(&mut len).await.ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

async fn tcp_connection(stream: TcpStream, state: Arc<State>) {
    let killed = state.kill_token();
    let source_port = stream.peer_addr().map_or(0, |peer| peer.port());
    let (mut read, write) = stream.into_split();
    let write = Arc::new(tokio::sync::Mutex::new(write));
    // Reply tasks, aborted (with the connection reset) when killed.
    let mut replies = tokio::task::JoinSet::new();
    loop {
        while replies.try_join_next().is_some() {}
        let msg = tokio::select! {
            _ = killed.cancelled() => {
                // Linger 0: closing sends RST, as a crashed resolver would.
                let _ = socket2::SockRef::from(read.as_ref()).set_linger(Some(Duration::ZERO));
                replies.abort_all();
                return;
            }
            msg = read_message(&mut read) => msg,
        };
        let Some(msg) = msg else {
            // The peer closed: what is still delayed may finish.
            replies.detach_all();
            return;
        };
        let probe = is_probe(&msg);
        let Some(script) = receive(&state, &msg, Transport::Tcp, source_port) else {
            continue;
        };
        let write = write.clone();
        let guard = (!probe).then(|| Outstanding::new(&state));
        replies.spawn(async move {
            let mut guard = Some(guard);
            let last = script.len().saturating_sub(1);
            for (index, step) in script.into_iter().enumerate() {
                tokio::time::sleep(step.pause).await;
                if index == last {
                    guard.take();
                }
                let mut framed = (step.msg.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&step.msg);
                let _ = write.lock().await.write_all(&framed).await;
            }
        });
    }
}
