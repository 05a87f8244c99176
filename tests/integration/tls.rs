//! TLS as clients see it: versions and suites (R2), SNI (R4), ALPN (R5),
//! resumption across connections and across replicas (R6), clean close
//! (R7), and certificate hot reload.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{assert_answer, query, Client, Pki, Process, Read, Server, TempDir, TLS_NAME};
use crate::upstream::Upstream;

const BOTH: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// Sends one A query on `client` and checks the answer.
async fn check_answers(client: &mut Client, id: u16, name: &str) {
    client.send(&query(id, name, RecordType::A)).await;
    let reply = client.recv().await;
    assert_answer(&reply, id, name, RecordType::A);
}

/// Connects with `config`, verifying `dns.test`; fails the test on error.
async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Client {
    Client::try_connect_with(addr, config.clone(), TLS_NAME)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with dotgate failed: {e}"))
}

/// Sends close_notify and waits (bounded) for the server's.
async fn close(mut client: Client) {
    let _ = client.stream.shutdown().await;
    let _ = client.read(Duration::from_secs(2)).await;
}

// ---------- versions and suites (R2) ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_each_connect_with_aes_gcm() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let cases: [(&'static SupportedProtocolVersion, _, ProtocolVersion); 4] = [
        (
            &TLS13,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            ProtocolVersion::TLSv1_3,
        ),
        (
            &TLS13,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            ProtocolVersion::TLSv1_3,
        ),
        (
            &TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ProtocolVersion::TLSv1_2,
        ),
        (
            &TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ProtocolVersion::TLSv1_2,
        ),
    ];
    for (i, (version, suite, wire)) in (0u16..).zip(cases) {
        // A client that offers this one version and this one AES-GCM suite.
        let provider = CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        };
        let config = server
            .pki
            .client_config_with(provider, &[version], &[b"dot"], true);
        let mut client = connect(server.addr, &config).await;
        assert_eq!(client.tls().protocol_version(), Some(wire));
        assert_eq!(
            client.tls().negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite.suite())
        );
        check_answers(&mut client, i, &format!("v{i}.versions.test.")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_a_tls12_only_client() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--tls-min-version", "1.3"]).await;
    let only12 = server.pki.client_config(&[&TLS12], &[b"dot"], true);
    let refused = Client::try_connect_with(server.addr, only12, TLS_NAME).await;
    assert!(
        refused.is_err(),
        "a TLS 1.2 client connected to a 1.3-only dotgate"
    );
    let only13 = server.pki.client_config(&[&TLS13], &[b"dot"], true);
    let mut client = connect(server.addr, &only13).await;
    assert_eq!(
        client.tls().protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    check_answers(&mut client, 1, "min13.versions.test.").await;
}

/// A ClientHello written by hand, so that a test can send what rustls
/// clients never send: an old version, or an IP address as SNI. Offers
/// ECDHE-ECDSA suites (GCM and the CBC ones TLS 1.1 clients use), the usual
/// groups and signature schemes, and no supported_versions extension, so
/// `version` is the highest version offered.
fn client_hello(version: u16, sni: Option<&str>) -> Vec<u8> {
    fn u16_len(bytes: &[u8]) -> [u8; 2] {
        u16::try_from(bytes.len()).unwrap().to_be_bytes()
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16_len(body));
        out.extend_from_slice(body);
        out
    }
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session ID
    let suites: &[u16] = &[0xc02b, 0xc02c, 0xc02f, 0xc030, 0xc009, 0xc013, 0x002f];
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend_from_slice(&u16_len(&suites));
    body.extend_from_slice(&suites);
    body.extend_from_slice(&[1, 0]); // compression: null only

    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let mut entry = vec![0u8]; // host_name
        entry.extend_from_slice(&u16_len(name.as_bytes()));
        entry.extend_from_slice(name.as_bytes());
        let mut list = u16_len(&entry).to_vec();
        list.extend_from_slice(&entry);
        extensions.extend(extension(0x0000, &list));
    }
    // supported_groups: x25519, secp256r1
    extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]));
    // ec_point_formats: uncompressed
    extensions.extend(extension(0x000b, &[1, 0]));
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend(extension(
        0x000d,
        &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    ));
    body.extend_from_slice(&u16_len(&extensions));
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16_len(&handshake));
    record.extend_from_slice(&handshake);
    record
}

/// What the server answered to a hand-written ClientHello.
#[derive(Debug)]
enum HelloAnswer {
    /// A ServerHello with this version; `bytes` is everything received up to
    /// ServerHelloDone (TLS 1.2 sends its certificate in the clear).
    ServerHello { version: u16, bytes: Vec<u8> },
    /// An alert record: (level, description).
    Alert(u8, u8),
    /// The connection closed without a record.
    Closed,
    /// Something else, printed when a test fails.
    Other(#[allow(dead_code)] Vec<u8>),
}

/// Sends `hello` and reads the server's first flight, within a few seconds.
async fn send_hello(addr: SocketAddr, hello: &[u8]) -> HelloAnswer {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // A whole first record is enough to classify; for a ServerHello read
        // on until ServerHelloDone (0x0e 00 00 00) or the deadline.
        if got.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([got[3], got[4]]));
            if got.len() >= 5 + len {
                match got[0] {
                    0x15 if len >= 2 => return HelloAnswer::Alert(got[5], got[6]),
                    0x16 if got.get(5) == Some(&2) && len >= 6 => {
                        let done = got.windows(4).any(|w| w == [0x0e, 0, 0, 0]);
                        if done || Instant::now() >= deadline {
                            let version = u16::from_be_bytes([got[9], got[10]]);
                            return HelloAnswer::ServerHello {
                                version,
                                bytes: got,
                            };
                        }
                    }
                    _ => return HelloAnswer::Other(got),
                }
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return if got.is_empty() {
                    HelloAnswer::Closed
                } else {
                    HelloAnswer::Other(got)
                }
            }
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return HelloAnswer::Other(got),
        }
    }
}

/// R2: TLS 1.1 is refused, while the same hand-written hello as TLS 1.2 is
/// answered (so the refusal is about the version, not the hello).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_is_refused() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    match send_hello(server.addr, &client_hello(0x0303, None)).await {
        HelloAnswer::ServerHello {
            version: 0x0303, ..
        } => {}
        other => panic!("the control TLS 1.2 hello was not answered with a ServerHello: {other:?}"),
    }
    match send_hello(server.addr, &client_hello(0x0302, None)).await {
        // protocol_version (70) or handshake_failure (40): fatal either way.
        HelloAnswer::Alert(2, 70 | 40) | HelloAnswer::Closed => {}
        other => panic!("TLS 1.1 was not refused: {other:?}"),
    }
    match send_hello(server.addr, &client_hello(0x0301, None)).await {
        HelloAnswer::Alert(2, 70 | 40) | HelloAnswer::Closed => {}
        other => panic!("TLS 1.0 was not refused: {other:?}"),
    }
}

/// R2 with a real client: `openssl s_client -tls1_1` fails with the
/// server's protocol_version alert, and `-tls1_2` (the control) connects.
/// Ignored by plain `cargo test`; fails where openssl is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs openssl (package openssl); run with --include-ignored"]
async fn openssl_tls11_refused_tls12_accepted() {
    if Command::new("openssl").arg("version").output().is_err() {
        crate::process::missing_tool("openssl", "openssl");
    }
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let s_client = |version: &'static str| {
        let addr = server.addr.to_string();
        let ca = server.pki.ca.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("openssl")
                .args(["s_client", "-connect", &addr, version])
                .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile"])
                .arg(&ca)
                .args(["-servername", TLS_NAME, "-verify_return_error"])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run openssl")
        })
    };
    let old = s_client("-tls1_1").await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&old.stdout),
        String::from_utf8_lossy(&old.stderr)
    );
    assert!(!old.status.success(), "openssl -tls1_1 connected:\n{text}");
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "openssl -tls1_1 failed, but not because dotgate refused the version:\n{text}"
    );
    let ok = s_client("-tls1_2").await.unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "openssl -tls1_2 failed:\n{text}");
    assert!(text.contains("TLSv1.2"), "{text}");
}

// ---------- SNI (R4) and ALPN (R5) ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_gets_the_default_certificate() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    for versions in [&[&TLS13][..], &[&TLS12][..]] {
        let config = server.pki.client_config(versions, &[], false);
        let mut client = connect(server.addr, &config).await;
        check_answers(&mut client, 7, "nosni.sni.test.").await;
    }
}

/// An IP literal as SNI (AdguardTeam/DnsLibs#186), which rustls clients never
/// send: the hand-written hello gets a ServerHello and the default
/// certificate (visible in TLS 1.2's clear-text Certificate message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literal_sni_gets_the_default_certificate() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let leaf = server.pki.leaf_der();
    for sni in ["127.0.0.1", "unknown.example", "::1"] {
        match send_hello(server.addr, &client_hello(0x0303, Some(sni))).await {
            HelloAnswer::ServerHello { bytes, .. } => assert!(
                bytes.windows(leaf.len()).any(|w| w == leaf),
                "SNI {sni}: the default certificate was not sent"
            ),
            other => panic!("SNI {sni}: no ServerHello: {other:?}"),
        }
    }
    // And verified by IP (no SNI is sent for an IP), through to an answer.
    let config = server.pki.client_config(BOTH, &[b"dot"], true);
    let mut client = Client::try_connect_with(server.addr, config, "127.0.0.1")
        .await
        .expect("connect by IP");
    check_answers(&mut client, 3, "byip.sni.test.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_dot_is_offered_never_required() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    // (ALPN offered by the client, ALPN negotiated)
    type Case<'a> = (&'a [&'a [u8]], Option<&'a [u8]>);
    let cases: [Case; 4] = [
        (&[], None),
        (&[b"h2"], None),
        (&[b"dot"], Some(b"dot")),
        (&[b"h2", b"dot"], Some(b"dot")),
    ];
    for (i, (offered, wanted)) in (0u16..).zip(cases) {
        for versions in [&[&TLS13][..], &[&TLS12][..]] {
            let config = server.pki.client_config(versions, offered, true);
            let mut client = connect(server.addr, &config).await;
            assert_eq!(
                client.tls().alpn_protocol(),
                wanted,
                "client offering {offered:?}"
            );
            check_answers(&mut client, i, &format!("alpn{i}.alpn.test.")).await;
        }
    }
}

// ---------- resumption (R6) ----------

/// Connects, asks one question (so that TLS 1.3 tickets, sent after the
/// handshake, have arrived), closes cleanly; returns how the handshake went.
async fn session(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> HandshakeKind {
    let mut client = connect(addr, config).await;
    let kind = client.tls().handshake_kind().expect("handshake done");
    check_answers(&mut client, 1, name).await;
    close(client).await;
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_resumes() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    for (versions, label) in [(&[&TLS13][..], "tls13"), (&[&TLS12][..], "tls12")] {
        let config = server.pki.client_config(versions, &[b"dot"], true);
        let name = format!("{label}.resume.test.");
        assert_eq!(
            session(server.addr, &config, &name).await,
            HandshakeKind::Full
        );
        assert_eq!(
            session(server.addr, &config, &name).await,
            HandshakeKind::Resumed,
            "{label}: the second connection was not resumed"
        );
    }
}

/// Replicas given one `--ticket-key-file` resume each other's sessions;
/// with different files they do not (and still connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_ticket_key_resume_each_others_sessions() {
    let up = Upstream::start().await;
    let keys = TempDir::new();
    let write_key = |name: &str| {
        let path = keys.path().join(name);
        let secret: [u8; 80] = std::array::from_fn(|_| rand::random::<u8>());
        std::fs::write(&path, secret).unwrap();
        path.display().to_string()
    };
    let shared = write_key("shared.key");
    let other = write_key("other.key");
    let a = Server::start(up.addr, &["--ticket-key-file", &shared]).await;
    let b = Server::start_with_pki(a.pki.share(), up.addr, &["--ticket-key-file", &shared]).await;
    let c = Server::start_with_pki(a.pki.share(), up.addr, &["--ticket-key-file", &other]).await;

    for (versions, label) in [(&[&TLS13][..], "tls13"), (&[&TLS12][..], "tls12")] {
        let config = a.pki.client_config(versions, &[b"dot"], true);
        let name = format!("{label}.replicas.test.");
        assert_eq!(session(a.addr, &config, &name).await, HandshakeKind::Full);
        assert_eq!(
            session(b.addr, &config, &name).await,
            HandshakeKind::Resumed,
            "{label}: B did not resume A's session"
        );
        let fresh = a.pki.client_config(versions, &[b"dot"], true);
        assert_eq!(session(a.addr, &fresh, &name).await, HandshakeKind::Full);
        assert_eq!(
            session(c.addr, &fresh, &name).await,
            HandshakeKind::Full,
            "{label}: C, with another key file, resumed A's session"
        );
    }
}

/// A key file too short is refused at start-up, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ticket_key_file_is_a_clear_error() {
    let dir = TempDir::new();
    let path = dir.path().join("short.key");
    std::fs::write(&path, [1u8; 16]).unwrap();
    let pki = Pki::new();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dotgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ])
        .arg("--cert")
        .arg(&pki.cert)
        .arg("--key")
        .arg(&pki.key)
        .arg("--ticket-key-file")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run dotgate");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dotgate started with a 16-byte ticket key file");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("short.key") && stderr.contains("at least 32"),
        "{stderr}"
    );
}

// ---------- clean close (R7) ----------

/// The client's close_notify is answered with close_notify (systemd-resolved
/// waits for it): the client reads a clean end, not an unexpected EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_is_answered() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    for versions in [&[&TLS13][..], &[&TLS12][..]] {
        let config = server.pki.client_config(versions, &[b"dot"], true);
        let mut client = connect(server.addr, &config).await;
        check_answers(&mut client, 1, "close.notify.test.").await;
        client.stream.shutdown().await.expect("send close_notify");
        match client.read(Duration::from_secs(3)).await {
            Read::Eof => {}
            other => panic!("expected the server's close_notify, got {other:?}"),
        }
    }
}

// ---------- certificate reload ----------

/// Writes `contents` next to `path` and renames it over `path`, as certbot
/// and most deployment tools replace files.
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that never resumes, so each connection shows the certificate
/// being served now.
fn fresh_client(pki: &Pki) -> Arc<ClientConfig> {
    let mut config = (*pki.client_config(BOTH, &[b"dot"], true)).clone();
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// The leaf certificate a new connection gets.
async fn served_leaf(addr: SocketAddr, config: &Arc<ClientConfig>) -> Vec<u8> {
    let client = connect(addr, config).await;
    let leaf = client
        .tls()
        .peer_certificates()
        .expect("server certificates")[0]
        .to_vec();
    close(client).await;
    leaf
}

/// Replacing the files changes the certificate of new handshakes within a
/// few seconds; a connection opened before keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_is_served_without_closing_connections() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let config = fresh_client(&server.pki);
    let old_leaf = server.pki.leaf_der();
    assert_eq!(served_leaf(server.addr, &config).await, old_leaf);
    let mut open = connect(server.addr, &config).await;
    check_answers(&mut open, 1, "before.reload.test.").await;

    let (chain, key, new_leaf) = server.pki.issue_leaf();
    replace_file(&server.pki.cert, chain.as_bytes());
    replace_file(&server.pki.key, key.as_bytes());

    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let served = served_leaf(server.addr, &config).await;
        if served == new_leaf {
            break;
        }
        assert_eq!(served, old_leaf, "neither the old nor the new certificate");
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 8 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the reload is untouched.
    check_answers(&mut open, 2, "after.reload.test.").await;
}

/// A garbage replacement keeps the old certificate serving and the process
/// alive, with one error naming the file; a good one after it is taken;
/// SIGHUP reloads and does not kill the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replacement_keeps_the_old_certificate() {
    let up = Upstream::start().await;
    let mut server = Process::start(up.addr, &[]).await;
    let config = fresh_client(&server.pki);
    let old_leaf = server.pki.leaf_der();

    replace_file(
        &server.pki.cert,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    );
    // The change is seen, settles for a poll, is tried and fails: wait for
    // the error, then a few more polls, which must not repeat it.
    let failed = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("certificate reload failed"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    while failed(&server.logs()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no reload error within 8 s\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.wait_exit(Duration::ZERO).await, None, "dotgate died");
    assert_eq!(served_leaf(server.addr, &config).await, old_leaf);
    let mut client = connect(server.addr, &config).await;
    check_answers(&mut client, 1, "garbage.reload.test.").await;
    let logs = server.logs();
    let failures = failed(&logs);
    assert_eq!(failures.len(), 1, "one error for one bad file:\n{logs}");
    let cert_name = server.pki.cert.display().to_string();
    assert!(failures[0].contains(&cert_name), "{}", failures[0]);
    assert!(failures[0].contains("ERROR"), "{}", failures[0]);

    // A good pair after the garbage is served.
    let (chain, key, new_leaf) = server.pki.issue_leaf();
    replace_file(&server.pki.key, key.as_bytes());
    replace_file(&server.pki.cert, chain.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(8);
    while served_leaf(server.addr, &config).await != new_leaf {
        assert!(
            Instant::now() < deadline,
            "the good certificate was not served within 8 s\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = server.logs();
    assert!(
        logs.contains("certificate reloaded") && logs.contains("CN=reissued dns.test"),
        "{logs}"
    );

    // SIGHUP: reloads (logged), keeps serving.
    server.sighup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.logs().contains("SIGHUP: reloading") {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP log\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.wait_exit(Duration::from_millis(300)).await, None);
    check_answers(&mut client, 2, "after.sighup.test.").await;
    assert_eq!(served_leaf(server.addr, &config).await, new_leaf);
}
