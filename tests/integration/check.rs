//! `dotgate check` as the real binary, against dotgate itself and against
//! servers broken on purpose: each mistake of the issue is caught, with the
//! check's line saying so, and the exit status is 1 exactly when something
//! FAILs. Always `--quick` (no 20 s idle wait) and `--ca`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::harness::{ChainSpec, Pki, Process, Server, TLS_NAME};
use crate::process::run;
use crate::upstream::Upstream;

/// What one run of `dotgate check` gave.
struct Outcome {
    code: Option<i32>,
    json: Value,
    elapsed: Duration,
    stderr: String,
}

impl Outcome {
    /// The check with this id: (status, reason).
    fn check(&self, id: &str) -> (String, String) {
        let checks = self.json["checks"].as_array().expect("a checks array");
        let c = checks
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id} in {}", self.pretty()));
        (
            c["status"].as_str().unwrap().to_string(),
            c["reason"].as_str().unwrap().to_string(),
        )
    }

    fn status(&self, id: &str) -> String {
        self.check(id).0
    }

    /// The summary of one client: (works, first FAIL's id).
    fn summary(&self, client: &str) -> (bool, Option<String>) {
        let s = self.json["summary"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["client"] == client)
            .unwrap_or_else(|| panic!("no summary for {client}"));
        (
            s["works"].as_bool().unwrap(),
            s["first_fail"].as_str().map(str::to_string),
        )
    }

    fn pretty(&self) -> String {
        format!(
            "exit {:?}\n{}\n{}",
            self.code,
            serde_json::to_string_pretty(&self.json).unwrap(),
            self.stderr
        )
    }
}

fn check_command(addr: SocketAddr, ca: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("check")
        .arg(addr.to_string())
        .args(["--tls-name", TLS_NAME, "--quick", "--ca"])
        .arg(ca)
        .args(extra);
    command
}

/// Runs `dotgate check ADDR --tls-name dns.test --quick --ca CA --json`.
async fn check(addr: SocketAddr, ca: &Path) -> Outcome {
    let started = Instant::now();
    let out = run(check_command(addr, ca, &["--json"])).await;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{stdout}\n{stderr}"));
    let outcome = Outcome {
        code: out.status.code(),
        json,
        elapsed,
        stderr,
    };
    // Whatever the server: one object, every check once, exit status and
    // "ok" agreeing, and within the --quick time bound.
    let checks = outcome.json["checks"].as_array().unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a check twice: {ids:?}");
    assert_eq!(ids.len(), 22, "{ids:?}");
    let ok = outcome.json["ok"].as_bool().unwrap();
    assert_eq!(
        outcome.code,
        Some(if ok { 0 } else { 1 }),
        "{}",
        outcome.pretty()
    );
    let any_fail = checks.iter().any(|c| c["status"] == "FAIL");
    assert_eq!(ok, !any_fail);
    for c in checks {
        let has_fix = c["fix"].is_string();
        let wants_fix = c["status"] == "WARN" || c["status"] == "FAIL";
        assert_eq!(has_fix, wants_fix, "{c}");
    }
    assert!(
        outcome.elapsed < Duration::from_secs(16),
        "--quick took {:?}",
        outcome.elapsed
    );
    outcome
}

fn assert_status(outcome: &Outcome, id: &str, want: &str) {
    assert_eq!(outcome.status(id), want, "{id}: {}", outcome.pretty());
}

// ---------- dotgate itself ----------

/// A root, an intermediate and a leaf, served in full by dotgate: every
/// check passes but two. The scripted upstream answers Android's probe name
/// with SERVFAIL (question echoed), so the probe passes but strict mode's
/// address lookup is a WARN; the idle wait is skipped by --quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotgate_with_a_full_chain_passes() {
    let up = Upstream::start().await;
    let server =
        Server::start_with_pki(Pki::with_intermediate(&ChainSpec::default()), up.addr, &[]).await;
    let outcome = check(server.addr, &server.pki.ca).await;
    assert_eq!(outcome.code, Some(0), "{}", outcome.pretty());
    for c in outcome.json["checks"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let want = match id {
            "android-strict" => "WARN",
            "idle" => "SKIP",
            _ => "PASS",
        };
        assert_eq!(c["status"], want, "{id}: {}", outcome.pretty());
    }
    let (_, reason) = outcome.check("android-strict");
    assert!(reason.contains("SERVFAIL"), "{reason}");
    let (_, reason) = outcome.check("intermediates");
    assert!(
        reason.contains("sends 2 certificates") && reason.contains("intermediate CA"),
        "{reason}"
    );
    let (_, reason) = outcome.check("keepalive");
    assert!(reason.contains("30.0 s"), "{reason}");
    let (_, reason) = outcome.check("idle");
    assert!(reason.contains("--quick"), "{reason}");
    for client in [
        "android-strict",
        "android-opportunistic",
        "stubby",
        "systemd-resolved",
    ] {
        assert_eq!(outcome.summary(client), (true, None), "{client}");
    }
    assert_eq!(outcome.json["target"]["tls_name"], TLS_NAME);
    assert_eq!(outcome.json["target"]["address"], server.addr.to_string());

    // By name, with --address instead of a lookup: the same verdict.
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("check")
        .arg(format!("{TLS_NAME}:{}", server.addr.port()))
        .args(["--address", "127.0.0.1", "--quick", "--json", "--ca"])
        .arg(&server.pki.ca);
    let out = run(command).await;
    let by_name: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(out.status.success(), "{by_name}");
    assert_eq!(by_name["counts"], outcome.json["counts"], "{by_name}");
    assert_eq!(by_name["target"]["host"], TLS_NAME);
    let resolve = &by_name["checks"][0];
    assert_eq!(resolve["id"], "resolve");
    assert!(
        resolve["reason"]
            .as_str()
            .unwrap()
            .contains("--address 127.0.0.1"),
        "{resolve}"
    );

    // The text report: one line per check, then the summaries.
    let out = run(check_command(server.addr, &server.pki.ca, &[])).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\nPASS tls "), "{text}");
    assert!(text.contains("\nPASS pipelining "), "{text}");
    assert!(
        text.contains("\nAndroid strict mode: should work"),
        "{text}"
    );
    assert!(
        text.contains("\nAndroid opportunistic mode: should work\n"),
        "{text}"
    );
    assert!(text.contains("\nsystemd-resolved: should work\n"), "{text}");
    let check_lines = text
        .lines()
        .filter(|l| {
            ["PASS ", "WARN ", "FAIL ", "SKIP "]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .count();
    assert_eq!(check_lines, 22, "{text}");
}

/// The leaf alone: Android strict mode fails for want of the intermediate;
/// opportunistic mode, which verifies nothing, still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_only_chain_fails_for_the_missing_intermediate() {
    let up = Upstream::start().await;
    let spec = ChainSpec {
        leaf_only: true,
        ..ChainSpec::default()
    };
    let server = Server::start_with_pki(Pki::with_intermediate(&spec), up.addr, &[]).await;
    let outcome = check(server.addr, &server.pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("intermediates");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(
        reason.contains("the server does not send its intermediate certificate"),
        "{reason}"
    );
    assert_status(&outcome, "chain", "FAIL");
    assert_status(&outcome, "pipelining", "PASS");
    assert_eq!(
        outcome.summary("android-strict"),
        (false, Some("intermediates".into()))
    );
    assert_eq!(outcome.summary("android-opportunistic"), (true, None));
}

/// The leaf, then a certificate that did not issue it: the server's
/// start-up warning and `dotgate check` give the same verdict, in the same
/// words: the leaf's issuer is not sent. (The server used to count the
/// certificates, two, and say nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_second_certificate_is_missing_the_intermediate_for_both() {
    let up = Upstream::start().await;
    let spec = ChainSpec {
        unrelated_second: true,
        ..ChainSpec::default()
    };
    let server = Process::start_with_pki(Pki::with_intermediate(&spec), up.addr, &[], &[]).await;
    let verdict = "the leaf's issuer (CN=dotgate test intermediate CA) is not sent: \
                   the other certificate sent did not issue the leaf";
    let deadline = Instant::now() + Duration::from_secs(5);
    let warning = loop {
        let logs = server.logs();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains("WARN") && l.contains("intermediate certificate is missing"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no start-up warning about the intermediate:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(warning.contains(verdict), "{warning}");

    let outcome = check(server.addr, &server.pki.ca).await;
    let (status, reason) = outcome.check("intermediates");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(
        reason.contains("the server does not send its intermediate certificate")
            && reason.contains(verdict),
        "{reason}"
    );
    assert_status(&outcome, "chain", "FAIL");
    assert_eq!(
        outcome.summary("android-strict"),
        (false, Some("intermediates".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails() {
    let up = Upstream::start().await;
    let spec = ChainSpec {
        expired: true,
        ..ChainSpec::default()
    };
    let server = Server::start_with_pki(Pki::with_intermediate(&spec), up.addr, &[]).await;
    let outcome = check(server.addr, &server.pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("expiry");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(reason.contains("expired on"), "{reason}");
    assert_status(&outcome, "chain", "FAIL");
    assert_status(&outcome, "intermediates", "PASS");
    assert_eq!(outcome.summary("stubby"), (false, Some("expiry".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_fails() {
    let up = Upstream::start().await;
    let spec = ChainSpec {
        names: Some(vec!["other.test".into()]),
        ..ChainSpec::default()
    };
    let server = Server::start_with_pki(Pki::with_intermediate(&spec), up.addr, &[]).await;
    let outcome = check(server.addr, &server.pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("name");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(
        reason.contains("does not cover dns.test") && reason.contains("DNS:other.test"),
        "{reason}"
    );
    // The chain itself is good: only the name is wrong.
    assert_status(&outcome, "chain", "PASS");
    assert_eq!(
        outcome.summary("android-strict"),
        (false, Some("name".into()))
    );
    assert_eq!(outcome.summary("android-opportunistic"), (true, None));
}

/// `--tls-min-version 1.3`: a WARN for old clients, not a FAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_only_server_warns_for_old_clients() {
    let up = Upstream::start().await;
    let server = Server::start_with_pki(
        Pki::with_intermediate(&ChainSpec::default()),
        up.addr,
        &["--tls-min-version", "1.3"],
    )
    .await;
    let outcome = check(server.addr, &server.pki.ca).await;
    assert_eq!(outcome.code, Some(0), "{}", outcome.pretty());
    let (status, reason) = outcome.check("tls1.2");
    assert_eq!(status, "WARN", "{}", outcome.pretty());
    assert!(
        reason.contains("old Android and Windows clients fail"),
        "{reason}"
    );
    assert_status(&outcome, "tls1.3", "PASS");
    assert_status(&outcome, "tls", "PASS");
}

// ---------- servers broken on purpose ----------

/// A rustls server configuration for the PKI's chain and key.
fn server_config(pki: &Pki) -> Arc<ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"dot".to_vec()];
    Arc::new(config)
}

/// A reply to `query`: the same message with QR and RA set (question and
/// any OPT record echoed, no answer).
fn echo_reply(query: &[u8]) -> Vec<u8> {
    let mut reply = query.to_vec();
    reply[2] |= 0x80;
    reply[3] |= 0x80;
    reply
}

/// A SERVFAIL that carries only a header: no question (QDCOUNT 0).
fn bare_servfail(query: &[u8]) -> Vec<u8> {
    let mut reply = vec![0u8; 12];
    reply[..2].copy_from_slice(&query[..2]);
    reply[2] = 0x81; // QR, RD
    reply[3] = 0x82; // RA, SERVFAIL
    reply
}

/// Reads one length-prefixed message; `None` at the end of the stream.
async fn read_message<R: AsyncReadExt + Unpin>(stream: &mut R) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await.ok()?;
    (msg.len() >= 12).then_some(msg)
}

async fn write_message<W: AsyncWriteExt + Unpin>(stream: &mut W, msg: &[u8]) -> bool {
    let mut out = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok()
}

/// What a hand-made TLS responder does on each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers the first query, then closes (close_notify and FIN).
    CloseAfterOneReply,
    /// Answers every query with SERVFAIL and no question section.
    ServfailWithoutQuestion,
}

/// A small DoT server on 127.0.0.1 for the PKI, behaving as told; stopped
/// when the handle is dropped (aborted).
struct Responder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_responder(pki: &Pki, behaviour: Behaviour) -> Responder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(pki));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                else {
                    return;
                };
                while let Some(query) = read_message(&mut tls).await {
                    match behaviour {
                        Behaviour::CloseAfterOneReply => {
                            write_message(&mut tls, &echo_reply(&query)).await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                        Behaviour::ServfailWithoutQuestion => {
                            if !write_message(&mut tls, &bare_servfail(&query)).await {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Responder { addr, task }
}

/// One reply per connection: the pipelining check fails (Android sends
/// every query over one connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_after_one_reply_fails_pipelining() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = tls_responder(&pki, Behaviour::CloseAfterOneReply).await;
    let outcome = check(server.addr, &pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("pipelining");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(
        reason.contains("only 1 of 10") && reason.contains("closed the connection after 1 reply;"),
        "{reason}"
    );
    // Its TLS and certificate are fine.
    for id in [
        "tls",
        "tls1.2",
        "tls1.3",
        "chain",
        "intermediates",
        "android-probe",
    ] {
        assert_status(&outcome, id, "PASS");
    }
    for client in [
        "android-strict",
        "android-opportunistic",
        "stubby",
        "systemd-resolved",
    ] {
        assert_eq!(
            outcome.summary(client),
            (false, Some("pipelining".into())),
            "{client}"
        );
    }
}

/// A plain DNS-over-TCP server on the port: it answers the plaintext probe
/// and never completes a TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_dns_listener_fails_for_no_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A ClientHello reads as a 5635-byte message that never
                // completes: the handshake stalls, as with a real server.
                while let Some(query) = read_message::<TcpStream>(&mut tcp).await {
                    if !write_message(&mut tcp, &echo_reply(&query)).await {
                        return;
                    }
                }
            });
        }
    });
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let outcome = check(addr, &pki.ca).await;
    task.abort();
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("tls");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(reason.starts_with("no TLS"), "{reason}");
    let (status, reason) = outcome.check("plaintext");
    assert_eq!(status, "FAIL");
    assert!(reason.contains("unencrypted"), "{reason}");
    assert_status(&outcome, "reachable", "PASS");
    // Nothing after the handshake ran.
    for id in ["chain", "pipelining", "android-probe"] {
        assert_status(&outcome, id, "SKIP");
    }
    assert_eq!(
        outcome.summary("android-strict"),
        (false, Some("tls".into()))
    );
}

/// SERVFAIL without the question: Android's validation (QDCOUNT 1) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_without_a_question_fails_the_android_probe() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = tls_responder(&pki, Behaviour::ServfailWithoutQuestion).await;
    let outcome = check(server.addr, &pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    let (status, reason) = outcome.check("android-probe");
    assert_eq!(status, "FAIL", "{}", outcome.pretty());
    assert!(
        reason.contains("SERVFAIL") && reason.contains("QDCOUNT 0"),
        "{reason}"
    );
    assert_status(&outcome, "pipelining", "PASS");
    assert_eq!(
        outcome.summary("android-opportunistic"),
        (false, Some("android-probe".into()))
    );
    // stubby does not run Android's probe.
    assert!(outcome.summary("stubby").0);
}

/// Nothing listening: the port check fails and the rest is skipped, fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_reachability() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let addr: SocketAddr = ([127, 0, 0, 1], crate::harness::free_port()).into();
    let outcome = check(addr, &pki.ca).await;
    assert_eq!(outcome.code, Some(1));
    assert_status(&outcome, "reachable", "FAIL");
    assert_status(&outcome, "tls", "SKIP");
    assert!(
        outcome.elapsed < Duration::from_secs(5),
        "{:?}",
        outcome.elapsed
    );
}

/// A CA file that cannot be read is the command's error: exit 2, on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_is_exit_2() {
    let out = run(check_command(
        ([127, 0, 0, 1], 9).into(),
        Path::new("/nonexistent/ca.pem"),
        &[],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

/// The one run without --quick: a server that closes idle connections
/// after 2 s gets a WARN for the idle check, and the run still ends in a
/// few seconds (the close ends the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_idle_timeout_warns() {
    let up = Upstream::start().await;
    let server = Server::start_with_pki(
        Pki::with_intermediate(&ChainSpec::default()),
        up.addr,
        &["--idle-timeout", "2s"],
    )
    .await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("check")
        .arg(server.addr.to_string())
        .args(["--tls-name", TLS_NAME, "--json", "--ca"])
        .arg(&server.pki.ca);
    let started = Instant::now();
    let out = run(command).await;
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(out.status.success(), "{json}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let idle = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "idle")
        .unwrap();
    assert_eq!(idle["status"], "WARN", "{json}");
    let reason = idle["reason"].as_str().unwrap();
    assert!(
        reason.contains("closed the connection after 2."),
        "{reason}"
    );
    assert_eq!(json["target"]["quick"], false);
}
