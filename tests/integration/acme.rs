//! Built-in ACME against a real ACME server: Debian's pebble (Let's
//! Encrypt's test server) on 127.0.0.1 with its own HTTPS certificate made
//! here, validating through pebble-challtestsrv as its DNS (every name is
//! 127.0.0.1), or through knotd for DNS-01. A DoT client that trusts only
//! pebble's issuing root (fetched from pebble's management interface)
//! verifies the chain dotgate serves. Nothing leaves the machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{assert_answer, free_port, query, Client, Pki, TempDir};
use crate::metrics::{http_get, value};
use crate::process::{missing_tool, on_path};
use crate::upstream::Upstream;

/// The name dotgate gets its certificate for (pebble's mock DNS answers
/// 127.0.0.1 for every name).
const NAME: &str = "dns.test";

/// How long the first certificate may take (pebble without sleeps: ~1 s).
const ISSUE_WAIT: Duration = Duration::from_secs(60);

fn pebble_bin() -> PathBuf {
    on_path("pebble").unwrap_or_else(|| missing_tool("pebble", "pebble"))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Pebble and its mock DNS, killed on drop.
pub struct Pebble {
    /// Pebble's HTTPS certificate and the CA for `--acme-ca`; its directory
    /// holds the config and logs.
    pub pki: Pki,
    pub acme: SocketAddr,
    pub management: SocketAddr,
    /// Where pebble validates HTTP-01 and TLS-ALPN-01: dotgate's
    /// `--acme-http-listen` and `--acme-tls-alpn-listen`.
    pub http_port: u16,
    pub tls_port: u16,
    children: Vec<Child>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            kill(child);
        }
    }
}

/// Which DNS server pebble's validation asks.
pub enum PebbleDns {
    /// pebble-challtestsrv started here: every A query is 127.0.0.1.
    Mock,
    /// An authoritative server the test runs (DNS-01).
    At(SocketAddr),
}

impl Pebble {
    /// Starts pebble, certificates valid `validity` (pebble's default: 5
    /// years), with no validation sleeps, no rejected nonces and no reuse
    /// of earlier authorizations (each order is validated anew).
    pub async fn start(validity: Option<Duration>, dns: PebbleDns) -> Pebble {
        let pebble = pebble_bin();
        let pki = Pki::new();
        let dir = pki.dir.path().to_path_buf();
        let mut children = Vec::new();
        let dns_addr = match dns {
            PebbleDns::At(addr) => addr,
            PebbleDns::Mock => {
                let challtest = on_path("pebble-challtestsrv")
                    .unwrap_or_else(|| missing_tool("pebble-challtestsrv", "pebble"));
                let dns_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
                let management = format!("127.0.0.1:{}", free_port());
                let child = Command::new(challtest)
                    .args(["-dns01", &dns_addr.to_string()])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &management])
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .stdin(Stdio::null())
                    .stdout(log_file(&dir, "challtestsrv.log"))
                    .stderr(log_file(&dir, "challtestsrv.err"))
                    .spawn()
                    .expect("spawn pebble-challtestsrv");
                children.push(child);
                dns_addr
            }
        };
        let acme: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let (http_port, tls_port) = (free_port(), free_port());
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": acme.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": pki.cert.display().to_string(),
                "privateKey": pki.key.display().to_string(),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(validity) = validity {
            config["pebble"]["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let child = Command::new(pebble)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &dns_addr.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log_file(&dir, "pebble.log"))
            .stderr(log_file(&dir, "pebble.err"))
            .spawn()
            .expect("spawn pebble");
        children.push(child);
        let pebble = Pebble {
            pki,
            acme,
            management,
            http_port,
            tls_port,
            children,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(pebble.acme).await.is_err()
            || TcpStream::connect(pebble.management).await.is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ] {
            let text = std::fs::read_to_string(self.pki.dir.path().join(name)).unwrap_or_default();
            all.push_str(&format!("--- {name}\n{text}"));
        }
        all
    }

    /// Pebble's issuing root (made anew at each start), from its management
    /// interface.
    pub async fn root(&self) -> CertificateDer<'static> {
        let mut roots = RootCertStore::empty();
        roots.add(self.pki.issuer.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let fetch = async {
            let tcp = TcpStream::connect(self.management).await?;
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let request = format!(
                "GET /roots/0 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.management
            );
            tls.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            // Go closes without close_notify at times: keep what came.
            let _ = tls.read_to_end(&mut raw).await;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .expect("pebble's management interface answers")
            .expect("GET /roots/0");
        let text = String::from_utf8_lossy(&raw);
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("no certificate in {text}"));
        CertificateDer::from_pem_slice(text[start..].as_bytes()).expect("pebble's root")
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("create a log file")
}

/// A DoT client configuration trusting only `root`.
pub fn trusting(root: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"dot".to_vec()];
    Arc::new(config)
}

/// `dotgate serve --acme ...` as a process; killed on drop.
pub struct AcmeDotgate {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Drop for AcmeDotgate {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl AcmeDotgate {
    /// Starts dotgate toward `up`, its ACME directory `dir`, with the
    /// `--acme*` flags in `acme`. Returns at once: use [`Self::wait_log`].
    pub fn spawn(pebble: &Pebble, up: &Upstream, dir: &Path, acme: &[&str], log: &str) -> Self {
        let ca = pebble.pki.ca.display().to_string();
        let mut flags = vec!["--acme-ca", &ca];
        flags.extend_from_slice(acme);
        Self::spawn_toward(&pebble.directory(), up, dir, &flags, log)
    }

    /// As [`Self::spawn`], toward the ACME directory URL `directory`.
    pub fn spawn_toward(
        directory: &str,
        up: &Upstream,
        dir: &Path,
        acme: &[&str],
        log: &str,
    ) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.parent().expect("a parent").join(log);
        let child = Command::new(env!("CARGO_BIN_EXE_dotgate"))
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--upstream", &up.addr.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--acme-directory", directory])
            .arg("--acme-dir")
            .arg(dir)
            .args(acme)
            .args(["--log-level", "dotgate=debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn dotgate");
        AcmeDotgate {
            addr,
            metrics,
            child,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `times` times; panics with the
    /// logs after `limit` or if dotgate exits.
    pub async fn wait_log(&mut self, needle: &str, times: usize, limit: Duration, pebble: &Pebble) {
        let deadline = Instant::now() + limit;
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= times {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "dotgate exited ({status}) before logging {needle:?}:\n{logs}\n{}",
                    pebble.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} ({times}x) within {limit:?}:\n{logs}\n{}",
                pebble.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A DoT connection verified against `root` for [`NAME`].
    pub async fn client(&self, root: &CertificateDer<'static>) -> Client {
        Client::try_connect_with(self.addr, trusting(root), NAME)
            .await
            .unwrap_or_else(|e| panic!("DoT with the ACME certificate: {e}\n{}", self.logs()))
    }

    pub async fn scrape(&self) -> String {
        let response = http_get(self.metrics, "/metrics").await.expect("/metrics");
        response.body
    }
}

/// One query over `client`, answered by the test upstream.
async fn ask(client: &mut Client, id: u16, name: &str) {
    client.send(&query(id, name, RecordType::A)).await;
    let reply = client.recv().await;
    assert_answer(&reply, id, name, RecordType::A);
}

/// The leaf a connection was served.
fn leaf(client: &Client) -> Vec<u8> {
    client
        .tls()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a server certificate")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").mode() & 0o777
}

/// HTTP-01 from nothing: /readyz is 503 until the certificate is served,
/// the chain verifies against pebble's root, the files are private; then a
/// restart reuses the stored account and certificate without a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble); run with --include-ignored"]
async fn http01_certificate_from_nothing_then_reused_across_restart() {
    let pebble = Pebble::start(None, PebbleDns::Mock).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let http = format!("127.0.0.1:{}", pebble.http_port);
    let flags = ["--acme", NAME, "--acme-http-listen", &http];

    let mut first = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "first.log");
    first
        .wait_log("serving DNS over TLS listen=", 1, ISSUE_WAIT, &pebble)
        .await;
    let logs = first.logs();
    assert!(
        logs.contains("getting one before serving DNS over TLS") && logs.contains("http-01"),
        "the log says what it waits for:\n{logs}"
    );
    let root = pebble.root().await;
    let mut client = first.client(&root).await;
    ask(&mut client, 1, "first.acme.test.").await;
    let issued = leaf(&client);
    let scrape = first.scrape().await;
    assert_eq!(
        value(&scrape, "dotgate_acme_orders_total{result=\"success\"}"),
        1.0
    );
    assert!(
        scrape.contains("dotgate_certificate_not_after_timestamp_seconds{subject=\"CN=dns.test\"}")
            || scrape.contains("dotgate_certificate_not_after_timestamp_seconds{subject=\"\"}"),
        "the not-after gauge covers the ACME certificate:\n{scrape}"
    );
    assert_eq!(mode(&dir), 0o700);
    for file in ["account.json", "cert.pem", "key.pem"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    let account = std::fs::read(dir.join("account.json")).unwrap();
    // The HTTP-01 responder answers only tokens being validated: none now.
    let responder: SocketAddr = ([127, 0, 0, 1], pebble.http_port).into();
    for path in ["/.well-known/acme-challenge/unknown-token", "/"] {
        let response = http_get(responder, path).await.expect("HTTP-01 responder");
        assert_eq!(response.status, 404, "{path}: {}", response.body);
    }
    drop(client);
    drop(first);

    let mut second = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "second.log");
    second
        .wait_log(
            "serving DNS over TLS listen=",
            1,
            Duration::from_secs(20),
            &pebble,
        )
        .await;
    let logs = second.logs();
    assert!(
        logs.contains("serving the stored certificate") && !logs.contains("ordering"),
        "a fresh stored certificate is served without an order:\n{logs}"
    );
    let mut client = second.client(&root).await;
    ask(&mut client, 2, "second.acme.test.").await;
    assert_eq!(leaf(&client), issued, "the same certificate");
    assert_eq!(
        std::fs::read(dir.join("account.json")).unwrap(),
        account,
        "the same account"
    );
    let scrape = second.scrape().await;
    assert_eq!(
        value(&scrape, "dotgate_acme_orders_total{result=\"success\"}"),
        0.0
    );
    let ready = http_get(second.metrics, "/readyz").await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
}

/// TLS-ALPN-01 (RFC 8737) from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble); run with --include-ignored"]
async fn tls_alpn01_certificate_from_nothing() {
    let pebble = Pebble::start(None, PebbleDns::Mock).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let alpn = format!("127.0.0.1:{}", pebble.tls_port);
    let flags = [
        "--acme",
        NAME,
        "--acme-challenge",
        "tls-alpn-01",
        "--acme-tls-alpn-listen",
        &alpn,
    ];
    let mut server = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "alpn.log");
    server
        .wait_log("serving DNS over TLS listen=", 1, ISSUE_WAIT, &pebble)
        .await;
    assert!(
        server.logs().contains("TLS-ALPN-01: answered"),
        "{}",
        server.logs()
    );
    let root = pebble.root().await;
    let mut client = server.client(&root).await;
    ask(&mut client, 1, "alpn.acme.test.").await;
}

/// Renewal: with 24-second certificates, a new one is served after about
/// 16 s, while a connection opened before keeps getting answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble); run with --include-ignored"]
async fn renewal_is_served_while_an_open_connection_keeps_going() {
    let pebble = Pebble::start(Some(Duration::from_secs(24)), PebbleDns::Mock).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let http = format!("127.0.0.1:{}", pebble.http_port);
    let flags = ["--acme", NAME, "--acme-http-listen", &http];
    let mut server = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "renew.log");
    server
        .wait_log("serving DNS over TLS listen=", 1, ISSUE_WAIT, &pebble)
        .await;
    let root = pebble.root().await;
    let mut open = server.client(&root).await;
    let first = leaf(&open);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut id = 0u16;
    let renewed = loop {
        id += 1;
        ask(&mut open, id, &format!("q{id}.open.acme.test.")).await;
        let fresh = server.client(&root).await;
        if leaf(&fresh) != first {
            break fresh;
        }
        assert!(
            Instant::now() < deadline,
            "no renewed certificate within 40 s:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut renewed = renewed;
    ask(&mut renewed, 1, "renewed.acme.test.").await;
    for _ in 0..3 {
        id += 1;
        ask(&mut open, id, &format!("q{id}.open.acme.test.")).await;
    }
    assert_eq!(leaf(&open), first, "the open connection kept its session");
    let scrape = server.scrape().await;
    assert!(
        value(&scrape, "dotgate_acme_orders_total{result=\"success\"}") >= 2.0,
        "{scrape}"
    );
    assert!(server.logs().contains("certificate reloaded"));
}

/// Failure: with nothing listening where pebble validates, the log carries
/// pebble's reason ("connection refused"), /readyz stays 503 while there
/// is no certificate, and with a stored certificate the old one is served
/// while the renewal is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble); run with --include-ignored"]
async fn failure_logs_the_reason_keeps_the_old_certificate_and_retries() {
    let pebble = Pebble::start(Some(Duration::from_secs(30)), PebbleDns::Mock).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let right = format!("127.0.0.1:{}", pebble.http_port);
    let wrong = format!("127.0.0.1:{}", free_port());
    let failing = [
        "--acme",
        NAME,
        "--acme-http-listen",
        &wrong,
        "--acme-retry-delay",
        "1s",
    ];

    // No certificate yet: not ready, the reason logged, retried.
    let mut none = AcmeDotgate::spawn(&pebble, &up, &dir, &failing, "none.log");
    none.wait_log("ACME order failed", 2, Duration::from_secs(30), &pebble)
        .await;
    let logs = none.logs();
    assert!(
        logs.to_ascii_lowercase().contains("connection refused")
            && logs.contains("could not validate dns.test by http-01")
            && logs.contains("--acme-http-listen"),
        "pebble's reason, and what to fix, are in the log:\n{logs}"
    );
    let ready = http_get(none.metrics, "/readyz").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("no certificate loaded yet"),
        "/readyz says what it waits for: {}",
        ready.body
    );
    assert!(
        value(
            &none.scrape().await,
            "dotgate_acme_orders_total{result=\"failure\"}"
        ) >= 2.0
    );
    assert!(
        Client::try_connect_with(none.addr, trusting(&pebble.root().await), NAME)
            .await
            .is_err(),
        "no DoT without a certificate"
    );
    drop(none);

    // A certificate, valid 30 s (renewal due after 20 s).
    let mut good = AcmeDotgate::spawn(
        &pebble,
        &up,
        &dir,
        &["--acme", NAME, "--acme-http-listen", &right],
        "good.log",
    );
    good.wait_log("serving DNS over TLS listen=", 1, ISSUE_WAIT, &pebble)
        .await;
    let root = pebble.root().await;
    let old = leaf(&good.client(&root).await);
    drop(good);

    // Restarted where validation cannot reach it: the stored certificate
    // is served at once, and the renewal fails and is retried.
    let mut stuck = AcmeDotgate::spawn(&pebble, &up, &dir, &failing, "stuck.log");
    stuck
        .wait_log(
            "serving DNS over TLS listen=",
            1,
            Duration::from_secs(20),
            &pebble,
        )
        .await;
    stuck
        .wait_log(
            "ACME renewal failed: still serving the previous certificate",
            2,
            Duration::from_secs(40),
            &pebble,
        )
        .await;
    let logs = stuck.logs();
    assert!(
        logs.to_ascii_lowercase().contains("connection refused"),
        "{logs}"
    );
    let mut client = stuck.client(&root).await;
    ask(&mut client, 1, "stuck.acme.test.").await;
    assert_eq!(leaf(&client), old, "the previous certificate is served");
}

/// `--acme` with nothing stored while the ACME server never answers: the
/// DoT port is bound, yet a client that connects is closed at once (counted
/// as `no_certificate`) instead of waiting in the listen backlog with no
/// timeout running, and `/readyz` says why. Needs no pebble: the "ACME
/// server" is a loopback listener that never accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_certificate_dot_connections_are_closed_at_once() {
    let up = Upstream::start().await;
    let work = TempDir::new();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let directory = format!("https://{}/directory", silent.local_addr().unwrap());
    let http = format!("127.0.0.1:{}", free_port());
    let dotgate = AcmeDotgate::spawn_toward(
        &directory,
        &up,
        &work.path().join("acme"),
        &["--acme", NAME, "--acme-http-listen", &http],
        "waiting.log",
    );
    // dotgate is up and waiting for its certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ready) = http_get(dotgate.metrics, "/readyz").await {
            assert_eq!(ready.status, 503, "{}", ready.body);
            assert!(
                ready.body.contains("no certificate loaded yet"),
                "/readyz says why: {}",
                ready.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no /readyz within 20 s:\n{}",
            dotgate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for attempt in 0..3 {
        let mut tcp =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(dotgate.addr))
                .await
                .expect("connect in time")
                .expect("the DoT port is bound");
        // A ClientHello's first bytes: a client that has begun its
        // handshake is not left waiting either.
        let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await;
        let mut buf = [0u8; 64];
        // Closed or reset: both end the client's wait. A client in the
        // backlog would see nothing at all.
        let ended = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        assert!(
            matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
            "connection {attempt}: not closed within 10 s ({ended:?}):\n{}",
            dotgate.logs()
        );
    }
    assert!(
        value(
            &dotgate.scrape().await,
            "dotgate_connections_refused_total{reason=\"no_certificate\"}"
        ) >= 3.0
    );
    drop(silent);
}

/// `--check-config` with `--acme`: a directory that cannot be written and a
/// name the CA would refuse are each reported; a good setup passes.
#[test]
fn check_config_reports_acme_problems() {
    let work = TempDir::new();
    let blocker = work.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dotgate"))
            .args(["serve", "--check-config", "--upstream", "127.0.0.1"])
            .args(extra)
            .output()
            .expect("run dotgate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let unwritable = blocker.join("acme");
    let (code, text) = run(&["--acme", NAME, "--acme-dir", unwritable.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--acme-dir"), "{text}");
    let (code, text) = run(&["--acme", "192.0.2.1"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a DNS name"), "{text}");
    let (code, text) = run(&[
        "--acme",
        NAME,
        "--acme-challenge",
        "dns-01",
        "--acme-dns-update",
        "127.0.0.1:5300",
        "--acme-tsig-key",
        "/nonexistent/acme.tsig",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--acme-tsig-key"), "{text}");
    let good = work.path().join("new/acme");
    let (code, text) = run(&["--acme", NAME, "--acme-dir", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!good.exists(), "--check-config creates nothing");
}

/// knotd, authoritative for `dns.test`, taking updates signed with a TSIG
/// key the test made; killed on drop.
struct Knot {
    addr: SocketAddr,
    dir: TempDir,
    /// `name:algorithm:secret`, as `--acme-tsig-key` reads it.
    key_file: PathBuf,
    child: Child,
}

impl Drop for Knot {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl Knot {
    async fn start() -> Knot {
        let knotd = on_path("knotd")
            .or_else(|| Some(PathBuf::from("/usr/sbin/knotd")).filter(|p| p.is_file()))
            .unwrap_or_else(|| missing_tool("knotd", "knot"));
        let dir = TempDir::new();
        let d = dir.path();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let secret: [u8; 32] = rand::random();
        let secret = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
        let key_file = d.join("acme.tsig");
        std::fs::write(&key_file, format!("acme-key:hmac-sha256:{secret}\n")).unwrap();
        std::fs::write(
            d.join("dns.test.zone"),
            "$ORIGIN dns.test.\n$TTL 60\n\
             @ SOA ns.dns.test. hostmaster.dns.test. 1 60 60 600 60\n\
             @ NS ns.dns.test.\n\
             ns A 127.0.0.1\n\
             @ A 127.0.0.1\n",
        )
        .unwrap();
        let config = format!(
            "server:\n    listen: {ip}@{port}\n    rundir: {d}\n\
             database:\n    storage: {d}\n\
             control:\n    listen: {d}/knot.sock\n\
             log:\n  - target: stderr\n    any: info\n\
             key:\n  - id: acme-key\n    algorithm: hmac-sha256\n    secret: {secret}\n\
             acl:\n  - id: acme\n    key: acme-key\n    action: update\n\
             zone:\n  - domain: dns.test\n    file: {d}/dns.test.zone\n    acl: acme\n",
            ip = addr.ip(),
            port = addr.port(),
            d = d.display(),
        );
        let config_path = d.join("knot.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(knotd)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file(d, "knotd.out"))
            .stderr(log_file(d, "knotd.log"))
            .spawn()
            .expect("spawn knotd");
        let mut knot = Knot {
            addr,
            dir,
            key_file,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(knot.addr).await.is_err() {
            if let Ok(Some(status)) = knot.child.try_wait() {
                panic!("knotd exited ({status}):\n{}", knot.logs());
            }
            assert!(
                Instant::now() < deadline,
                "knotd did not start:\n{}",
                knot.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        knot
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    /// The TXT records of `name` as knotd answers them (`kdig +short`).
    async fn txt(&self, name: &str) -> String {
        let mut command = Command::new(crate::process::kdig());
        command.args([
            "@127.0.0.1",
            "-p",
            &self.addr.port().to_string(),
            "+tcp",
            "+short",
            "+time=3",
            "+retry=0",
            name,
            "TXT",
        ]);
        let out = crate::process::run(command).await;
        assert!(
            out.status.success(),
            "kdig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// DNS-01: dotgate adds the TXT record to knotd by a TSIG-signed RFC 2136
/// update, pebble validates through knotd, the wildcard certificate is
/// served for `alice.dns.test` (a client-ID name), and the record is gone
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble), knotd (knot) and kdig (knot-dnsutils); run with --include-ignored"]
async fn dns01_wildcard_certificate_through_knot() {
    let knot = Knot::start().await;
    let pebble = Pebble::start(None, PebbleDns::At(knot.addr)).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let server = knot.addr.to_string();
    let key = knot.key_file.display().to_string();
    let flags = [
        "--acme",
        "dns.test,*.dns.test",
        "--acme-challenge",
        "dns-01",
        "--acme-dns-update",
        &server,
        "--acme-tsig-key",
        &key,
        // The private endpoint the wildcard is for: only alice is served.
        "--client-id-domain",
        NAME,
        "--client-id",
        "alice",
    ];
    let mut dotgate = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "dns01.log");
    dotgate
        .wait_log("serving DNS over TLS listen=", 1, ISSUE_WAIT, &pebble)
        .await;
    let logs = dotgate.logs();
    assert!(
        logs.contains("DNS-01: TXT record added"),
        "{logs}\n{}",
        knot.logs()
    );
    assert!(
        knot.logs().contains("DDNS"),
        "knotd logged the update:\n{}",
        knot.logs()
    );
    let root = pebble.root().await;
    let mut client = Client::try_connect_with(dotgate.addr, trusting(&root), "alice.dns.test")
        .await
        .unwrap_or_else(|e| panic!("DoT for alice.dns.test: {e}\n{}", dotgate.logs()));
    ask(&mut client, 1, "wildcard.acme.test.").await;
    assert!(
        Client::try_connect_with(dotgate.addr, trusting(&root), "mallory.dns.test")
            .await
            .is_err(),
        "an unlisted client ID is refused"
    );
    assert_eq!(
        knot.txt("_acme-challenge.dns.test.").await.trim(),
        "",
        "the challenge records are deleted:\n{}",
        dotgate.logs()
    );
}
