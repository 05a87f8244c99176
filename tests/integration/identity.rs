//! A private endpoint that knows who is asking: client IDs in the TLS
//! server name (`--client-id-domain`, `--client-id`, `--client-ids`), and
//! the client's identity passed to the resolver (`--upstream-ecs`, and
//! `--upstream-proxy-protocol` against a real unbound).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::net::TcpSocket;

use crate::harness::{
    assert_answer, encode, query, with_opt, Client, Pki, Read, Server, TempDir, REPLY_WAIT,
};
use crate::hostile::wait_for_series;
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::{raw_opt_options, Upstream};

const REFUSED_CLIENT_ID: &str = "dotgate_connections_refused_total{reason=\"client_id\"}";

/// A PKI whose server certificate covers `*.dns.test` and `dns.test`: what
/// a private endpoint with client IDs serves.
pub(crate) fn wildcard_pki() -> Pki {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let pki = Pki::new();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["*.dns.test".to_string(), "dns.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "*.dns.test");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &*pki.issuer).unwrap();
    std::fs::write(&pki.cert, format!("{}{}", leaf.pem(), pki.issuer.pem())).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// A DoT connection asking for `name` (SNI and verification), or without
/// SNI at all when `name` is `None`.
async fn connect_as(server: &Server, name: Option<&str>) -> std::io::Result<Client> {
    match name {
        Some(name) => Client::try_connect_with(server.addr, server.pki.client.clone(), name).await,
        None => {
            let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
            let config = server.pki.client_config(&versions, &[b"dot"], false);
            Client::try_connect_with(server.addr, config, "dns.test").await
        }
    }
}

/// The client subnet options (code 8) among EDNS options, their data.
fn subnets(options: &[(u16, Vec<u8>)]) -> Vec<Vec<u8>> {
    options
        .iter()
        .filter(|(code, _)| *code == 8)
        .map(|(_, data)| data.clone())
        .collect()
}

/// One A query on `client`, answered as the scripted upstream answers.
async fn answered(client: &mut Client, id: u16, name: &str) {
    client.send(&query(id, name, RecordType::A)).await;
    let reply = client.recv().await;
    assert_answer(&reply, id, name, RecordType::A);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_client_ids_finish_the_handshake_and_the_list_reloads() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let ids = TempDir::new();
    let id_file = ids.path().join("client-ids");
    std::fs::write(&id_file, "# the family\nalice\n").unwrap();
    let server = Server::start_with_pki(
        wildcard_pki(),
        up.addr,
        &[
            "--client-id-domain",
            "dns.test",
            "--client-ids",
            &id_file.display().to_string(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let before = scrape(metrics).await;

    let mut alice = connect_as(&server, Some("alice.dns.test"))
        .await
        .expect("a listed ID is served");
    answered(&mut alice, 1, "a1.id.test.").await;

    // An unlisted ID, the bare domain, and no server name: the handshake
    // fails on the server's alert, before any DNS.
    for name in [Some("mallory.dns.test"), Some("dns.test"), None] {
        match connect_as(&server, name).await {
            Ok(_) => panic!("{name:?} was served"),
            Err(e) => assert!(
                e.to_string().contains("AccessDenied"),
                "{name:?}: not refused by the access_denied alert: {e}"
            ),
        }
    }
    // The refusal is counted when the handshake task ends, which may be
    // just after this client has read the alert: wait for the count.
    wait_for_series(
        metrics,
        REFUSED_CLIENT_ID,
        value(&before, REFUSED_CLIENT_ID) + 3.0,
    )
    .await;
    let after = scrape(metrics).await;
    assert_eq!(
        value(&after, "dotgate_client_queries_total{client_id=\"alice\"}"),
        1.0
    );
    assert_eq!(
        up.received().len(),
        1,
        "refused clients sent nothing upstream"
    );

    // bob is added to the file: admitted within seconds, no restart, and
    // alice's open connection goes on.
    std::fs::write(&id_file, "alice\nbob # tablet\n").unwrap();
    let mut bob = None;
    for _ in 0..50 {
        if let Ok(client) = connect_as(&server, Some("bob.dns.test")).await {
            bob = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bob = bob.expect("bob admitted within 5 s of the file edit");
    answered(&mut bob, 2, "b2.id.test.").await;
    answered(&mut alice, 3, "a3.id.test.").await;

    // alice is revoked: new connections are refused, the open one is left
    // alone (it ends at its idle timeout).
    std::fs::write(&id_file, "bob\n").unwrap();
    let mut revoked = false;
    for _ in 0..50 {
        if connect_as(&server, Some("alice.dns.test")).await.is_err() {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        revoked,
        "alice still admitted 5 s after her line was removed"
    );
    answered(&mut alice, 4, "a4.id.test.").await;
    let last = scrape(metrics).await;
    assert_eq!(
        value(&last, "dotgate_client_queries_total{client_id=\"alice\"}"),
        3.0
    );
    assert_eq!(
        value(&last, "dotgate_client_queries_total{client_id=\"bob\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_list_every_client_is_served_and_no_per_id_metric() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_with_pki(
        wildcard_pki(),
        up.addr,
        &[
            "--client-id-domain",
            "dns.test",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    for (id, name) in [
        (1, Some("carol.dns.test")),
        (2, Some("dns.test")),
        (3, None),
    ] {
        let mut client = connect_as(&server, name).await.expect("served");
        answered(&mut client, id, &format!("n{id}.id.test.")).await;
    }
    let body = scrape(metrics).await;
    assert!(
        !body.contains("dotgate_client_queries_total{"),
        "a per-ID series without an ID list:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subnet_is_added_replaced_and_stripped() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-ecs", "24,56"]).await;
    let mut client = server.client().await;
    let ours = vec![0u8, 1, 24, 0, 127, 0, 0];

    // No ECS from the client: the upstream gets 127.0.0.0/24; the reply
    // carries no ECS (RFC 7871 §7.2.2), though the upstream echoed it.
    client
        .send(&with_opt(query(1, "one.ecs.test.", RecordType::A)))
        .await;
    let reply = client.recv().await;
    assert_answer(&reply, 1, "one.ecs.test.", RecordType::A);
    let seen = up.received().pop().expect("the query reached the upstream");
    assert_eq!(
        subnets(&seen.options),
        std::slice::from_ref(&ours),
        "the client's address cut to /24"
    );
    assert!(
        subnets(&raw_opt_options(&encode(&reply))).is_empty(),
        "ECS in a reply to a client that sent none"
    );

    // The client claims another network: replaced by its own, and the
    // echo it asked for comes back.
    let mut bytes = encode(&with_opt(query(2, "two.ecs.test.", RecordType::A)));
    let theirs = [0u8, 8, 0, 7, 0, 1, 24, 0, 203, 0, 113];
    bytes.extend_from_slice(&theirs);
    let rdlen_at = bytes.len() - theirs.len() - 2;
    bytes[rdlen_at..rdlen_at + 2].copy_from_slice(&(theirs.len() as u16).to_be_bytes());
    client.send_raw(&crate::harness::frame(&bytes)).await;
    let reply = client.recv().await;
    assert_answer(&reply, 2, "two.ecs.test.", RecordType::A);
    let seen = up.received().pop().unwrap();
    assert_eq!(
        subnets(&seen.options),
        std::slice::from_ref(&ours),
        "the client's own claim went upstream"
    );
    assert!(
        !subnets(&raw_opt_options(&encode(&reply))).is_empty(),
        "the client asked for ECS and got no echo"
    );

    // Without EDNS at all: an OPT is added upstream for the subnet, and the
    // reply has no OPT.
    client
        .send(&query(3, "three.ecs.test.", RecordType::A))
        .await;
    let reply = client.recv().await;
    assert_answer(&reply, 3, "three.ecs.test.", RecordType::A);
    assert!(reply.edns.is_none());
    let seen = up.received().pop().unwrap();
    assert_eq!(subnets(&seen.options), [ours]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_length_subnet_names_the_device() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--upstream-ecs", "32,128"]).await;
    let mut client = server.client().await;
    client.send(&query(1, "dev.ecs.test.", RecordType::A)).await;
    client.recv().await;
    let seen = up.received().pop().unwrap();
    assert_eq!(subnets(&seen.options), [vec![0, 1, 32, 0, 127, 0, 0, 1]]);
}

// ---------- PROXY v2 toward a real unbound ----------

/// unbound on two ports of 127.0.0.1: `plain`, and `proxied` where every
/// query must come behind a PROXY v2 header. It answers `host.test` from a
/// local zone, refuses every other name (it never recurses: nothing leaves
/// the machine), and refuses clients at 127.0.0.3 by access control.
struct Unbound {
    child: Child,
    plain: u16,
    proxied: u16,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Unbound {
    fn start() -> Unbound {
        let dir = TempDir::new();
        let plain = crate::harness::free_port();
        let proxied = crate::harness::free_port();
        let log = dir.path().join("unbound.log");
        let conf = dir.path().join("unbound.conf");
        std::fs::write(
            &conf,
            format!(
                r#"server:
    interface: 127.0.0.1@{plain}
    interface: 127.0.0.1@{proxied}
    proxy-protocol-port: {proxied}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: ""
    use-syslog: no
    logfile: "{log}"
    log-queries: yes
    verbosity: 1
    num-threads: 1
    incoming-num-tcp: 64
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    access-control: 127.0.0.3/32 refuse
    local-zone: "." refuse
    local-zone: "test." static
    local-data: "host.test. 60 IN A 192.0.2.53"
remote-control:
    control-enable: no
"#,
                dir = dir.path().display(),
                log = log.display(),
            ),
        )
        .unwrap();
        let child = Command::new(unbound_binary())
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unbound (installed by .ci/run)");
        Unbound {
            child,
            plain,
            proxied,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until unbound answers on its plain port.
    async fn ready(&self) {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let q = encode(&query(7, "host.test.", RecordType::A));
        for _ in 0..100 {
            let _ = sock.send_to(&q, ("127.0.0.1", self.plain)).await;
            let mut buf = [0u8; 512];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await
            {
                return;
            }
        }
        panic!("unbound did not start:\n{}", self.log());
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unbound_binary() -> &'static str {
    if Path::new("/usr/sbin/unbound").exists() {
        "/usr/sbin/unbound"
    } else {
        "unbound"
    }
}

/// The RCODE a DoT client at source address `from` gets for `host.test A`.
async fn rcode_from(server: &Server, from: [u8; 4], id: u16) -> ResponseCode {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let tcp = socket
        .connect(server.addr)
        .await
        .expect("connect to dotgate");
    let mut client = Client::try_connect_over(tcp, &server.pki)
        .await
        .expect("TLS to dotgate");
    client.send(&query(id, "host.test.", RecordType::A)).await;
    match client.read(REPLY_WAIT).await {
        Read::Frame(bytes) => crate::harness::parse(&bytes).metadata.response_code,
        other => panic!("no reply from {from:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs unbound (installed by .ci/run)"]
async fn unbound_sees_each_client_through_proxy_v2_over_udp_and_tcp() {
    let unbound = Unbound::start();
    unbound.ready().await;
    for transport in ["", "tcp://"] {
        // Through the PROXY port: unbound judges the carried address.
        let upstream = format!("{transport}127.0.0.1:{}", unbound.proxied);
        let metrics = metrics_addr();
        let server = Server::start_without_default_upstream(&[
            "--upstream",
            &upstream,
            "--upstream-proxy-protocol",
            "--health-check-interval",
            "100ms",
            "--metrics-listen",
            &metrics.to_string(),
        ])
        .await;
        assert_eq!(
            rcode_from(&server, [127, 0, 0, 2], 1).await,
            ResponseCode::NoError,
            "{upstream}: 127.0.0.2 is allowed"
        );
        assert_eq!(
            rcode_from(&server, [127, 0, 0, 3], 2).await,
            ResponseCode::Refused,
            "{upstream}: 127.0.0.3 is refused by unbound's access control"
        );
        // dotgate's own health probes (LOCAL command) are answered too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let up = format!("dotgate_upstream_up{{upstream=\"{upstream}\"}}");
        assert_eq!(value(&scrape(metrics).await, &up), 1.0, "{upstream} probes");
        drop(server);

        // The control: through the plain port, unbound sees only dotgate.
        let upstream = format!("{transport}127.0.0.1:{}", unbound.plain);
        let server = Server::start_without_default_upstream(&["--upstream", &upstream]).await;
        for (from, id) in [([127, 0, 0, 2], 3), ([127, 0, 0, 3], 4)] {
            assert_eq!(
                rcode_from(&server, from, id).await,
                ResponseCode::NoError,
                "{upstream}: without PROXY every client is dotgate to unbound"
            );
        }
    }
    // unbound's own log names the client behind dotgate.
    let log = unbound.log();
    assert!(
        log.contains("127.0.0.2 host.test. A IN"),
        "unbound never logged the client's address:\n{log}"
    );
    println!("unbound's log:\n{log}");
}

/// `dotgate query --tls-name ID.DOMAIN` against a private endpoint: a
/// listed ID gets its answer, another fails with the server's alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotgate_query_with_a_client_id_name() {
    let up = Upstream::start().await;
    let server = Server::start_with_pki(
        wildcard_pki(),
        up.addr,
        &["--client-id-domain", "dns.test", "--client-id", "alice"],
    )
    .await;
    let query = |name: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
        command.arg("query").arg("--ca").arg(&server.pki.ca).args([
            "--tls-name",
            name,
            "--timeout",
            "5s",
            &format!("@{}", server.addr),
            "q.id.test",
            "A",
        ]);
        crate::process::run(command)
    };
    // Bounded by its own --timeout.
    let out = query("alice.dns.test").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "alice: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&crate::upstream::expected_a("q.id.test.").to_string()),
        "{stdout}"
    );
    let out = query("mallory.dns.test").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mallory was answered");
    assert!(stderr.contains("AccessDenied"), "{stderr}");
}

/// The certificate check at start-up says when client IDs cannot work: a
/// certificate without `*.DOMAIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_wildcard_is_warned_about() {
    let up = Upstream::start().await;
    let plain = crate::harness::Process::start(up.addr, &["--client-id-domain", "dns.test"]).await;
    let wildcard = crate::harness::Process::start_with_pki(
        wildcard_pki(),
        up.addr,
        &["--client-id-domain", "dns.test"],
        &[],
    )
    .await;
    let warning = "does not cover *.dns.test";
    // The port is bound before the start-up logs are written.
    for process in [&plain, &wildcard] {
        for _ in 0..50 {
            if process.logs().contains("serving DNS over TLS") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let logs = plain.logs();
    assert!(logs.contains(warning), "no warning:\n{logs}");
    let logs = wildcard.logs();
    assert!(!logs.contains(warning), "warned for a wildcard:\n{logs}");
    assert!(
        logs.contains("client IDs are read from the TLS server name"),
        "{logs}"
    );
}

/// `tls://` with `--upstream-proxy-protocol`: the header goes before the
/// TLS handshake, one pool per client. The upstream here is a second
/// dotgate that reads PROXY headers and serves only 127.0.0.2 (and
/// 127.0.0.1, the front's own probes): it answers the client at 127.0.0.2
/// and closes on the one at 127.0.0.3, which then gets SERVFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_reading_proxy_sees_each_client() {
    let up = Upstream::start().await;
    let back = Server::start(
        up.addr,
        &[
            "--proxy-protocol",
            "--allow-from",
            "127.0.0.2/32,127.0.0.1/32",
        ],
    )
    .await;
    let upstream = format!("tls://dns.test@{}", back.addr);
    let front = Server::start_without_default_upstream(&[
        "--upstream",
        &upstream,
        "--upstream-ca",
        &back.pki.ca.display().to_string(),
        "--upstream-proxy-protocol",
        "--upstream-timeout",
        "1s",
    ])
    .await;
    assert_eq!(
        rcode_from(&front, [127, 0, 0, 2], 1).await,
        ResponseCode::NoError
    );
    assert_eq!(
        rcode_from(&front, [127, 0, 0, 3], 2).await,
        ResponseCode::ServFail,
        "the back end refused 127.0.0.3, so no answer came back"
    );
    // Again from 127.0.0.2, on its own pooled connection.
    assert_eq!(
        rcode_from(&front, [127, 0, 0, 2], 3).await,
        ResponseCode::NoError
    );
    assert_eq!(
        up.received().len(),
        2,
        "only 127.0.0.2's queries got through"
    );
}

/// A `tcp://` upstream that reads a PROXY header at the start of every
/// connection and answers as the scripted upstream does; it counts the
/// connections open at once and the most ever open.
struct ProxyReadingUpstream {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyReadingUpstream {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (o, m) = (open.clone(), most.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let (open, most) = (o.clone(), m.clone());
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if dotgate::proto::proxy_header::read_header(&mut tcp)
                        .await
                        .is_ok()
                    {
                        loop {
                            let mut len = [0u8; 2];
                            if tcp.read_exact(&mut len).await.is_err() {
                                break;
                            }
                            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                            if tcp.read_exact(&mut q).await.is_err() {
                                break;
                            }
                            let Some(reply) = crate::upstream::ordinary_answer(&q) else {
                                break;
                            };
                            if tcp.write_all(&crate::harness::frame(&reply)).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            open,
            most,
            task,
        }
    }
}

impl Drop for ProxyReadingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hostile churn: without an ID list, a client can ask for a new server
/// name on every connection, and each name gets its own upstream pool
/// under `--upstream-proxy-protocol`. 300 names one after another, each
/// connection kept open: every query is answered, and dotgate never holds
/// more than its bound of 256 client pools (plus the probes' own) open
/// toward the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_churn_cannot_open_unbounded_upstream_connections() {
    use std::sync::atomic::Ordering;
    let up = ProxyReadingUpstream::start().await;
    let upstream = format!("tcp://{}", up.addr);
    let server = Server::start_without_default_upstream_with_pki(
        wildcard_pki(),
        &[
            "--upstream",
            &upstream,
            "--upstream-proxy-protocol",
            "--client-id-domain",
            "dns.test",
            // All 300 come from 127.0.0.1.
            "--max-connections-per-ip",
            "1000",
        ],
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..300u16 {
        let name = format!("c{i}.dns.test");
        let mut client = connect_as(&server, Some(&name)).await.expect("served");
        answered(&mut client, i, &format!("q{i}.churn.test.")).await;
        clients.push(client);
    }
    // 256 client pools and the probes' own; an evicted pool's connection
    // closes as the next one opens, so a few may overlap for a moment.
    let most = up.most.load(Ordering::SeqCst);
    assert!(
        (256..=266).contains(&most),
        "{most} upstream connections open at once for 300 server names"
    );
    // The evicted pools' connections are closed, not leaked.
    let mut open = up.open.load(Ordering::SeqCst);
    for _ in 0..20 {
        if open <= 257 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = up.open.load(Ordering::SeqCst);
    }
    assert!(open <= 257, "{open} upstream connections still open");
    drop(clients);
}
