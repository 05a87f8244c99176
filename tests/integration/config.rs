//! The `--config` file and its precedence: flag > environment > file >
//! default; unknown keys; `--check-config`. Run against the real binary,
//! since the merge happens in `main`.

use std::process::Command;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::harness::{assert_answer, query, Process, Read, TempDir};
use crate::process::run;
use crate::upstream::Upstream;

/// Sends queries one at a time and returns how many were answered before the
/// connection closed cleanly (at most `limit`).
async fn answered_before_close(server: &Process, limit: u16) -> u16 {
    let mut client = server.client().await;
    for id in 0..limit {
        let name = format!("q{id}.config.test.");
        client.send(&query(id, &name, RecordType::A)).await;
        match client.read(Duration::from_secs(3)).await {
            Read::Frame(bytes) => {
                assert_answer(&crate::harness::parse(&bytes), id, &name, RecordType::A)
            }
            Read::Eof | Read::Error(_) => return id,
            Read::Timeout => panic!("no reply and no close for query {id}"),
        }
    }
    limit
}

fn write_config(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("dotgate.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The file's value applies when nothing else sets the flag; the
/// environment beats the file; the command line beats both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_environment_beats_file() {
    let up = Upstream::start().await;
    let dir = TempDir::new();
    let file = write_config(
        &dir,
        "max-queries-per-connection = 1\nidle-timeout = \"10s\"\n",
    );

    let from_file = Process::start(up.addr, &["--config", &file]).await;
    assert_eq!(
        answered_before_close(&from_file, 5).await,
        1,
        "file: 1 query"
    );

    let env = [("DOTGATE_MAX_QUERIES_PER_CONNECTION", "2")];
    let from_env = Process::start_with_env(up.addr, &["--config", &file], &env).await;
    assert_eq!(
        answered_before_close(&from_env, 5).await,
        2,
        "environment: 2"
    );

    let from_flag = Process::start_with_env(
        up.addr,
        &["--config", &file, "--max-queries-per-connection", "3"],
        &env,
    )
    .await;
    assert_eq!(answered_before_close(&from_flag, 5).await, 3, "flag: 3");

    // Without the file (or any setting), the default: no limit.
    let default = Process::start(up.addr, &[]).await;
    assert_eq!(
        answered_before_close(&default, 5).await,
        5,
        "default: no limit"
    );
}

/// A file key that is not a flag stops dotgate with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_an_error_that_names_it() {
    let dir = TempDir::new();
    let file = write_config(&dir, "max-inflight = 8\nmax-inflihgt = 9\n");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command.args([
        "serve",
        "--config",
        &file,
        "--self-signed",
        "dns.test",
        "--upstream",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
    ]);
    let out = run(command).await;
    assert!(!out.status.success(), "must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"max-inflihgt\"") && stderr.contains("dotgate.toml"),
        "stderr: {stderr}"
    );
}

/// `--check-config` exits 0 for a configuration that would start (the file
/// supplying the certificate), and lists every problem otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_every_problem() {
    let up = Upstream::start().await;
    // A running server only to borrow its test certificate files.
    let server = Process::start(up.addr, &[]).await;
    let dir = TempDir::new();
    let cert = server.pki.cert.display().to_string();
    let key = server.pki.key.display().to_string();
    let good = write_config(
        &dir,
        &format!("cert = {cert:?}\nkey = {key:?}\nupstream = [\"127.0.0.1:5353\"]\n"),
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command.args(["serve", "--config", &good, "--check-config"]);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}");
    assert!(stdout.contains("configuration OK"), "stdout: {stdout}");

    // The key of another certificate, a bad upstream, a short ticket key.
    let other_key = dir.path().join("other.key");
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&other_key, other.serialize_pem()).unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command.args(["serve", "--check-config", "--cert", &cert, "--key"]);
    command.arg(&other_key);
    command.args(["--upstream", "not-an-address", "--ticket-key-file"]);
    command.arg(&short);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}");
    assert!(stdout.contains("does not match"), "key mismatch: {stdout}");
    assert!(stdout.contains("not-an-address"), "bad upstream: {stdout}");
    assert!(stdout.contains("short.key"), "ticket key: {stdout}");
    assert!(stdout.contains("3 problem(s)"), "{stdout}");
}

/// `--proxy-protocol-from` networks that cannot be (a prefix past the
/// family's length, an IPv4-mapped network under /96) stop `--check-config`
/// with an error naming the flag, given as a flag or as a file key; a
/// mapped network of /96 or more is its IPv4 network and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_proxy_networks_are_refused_naming_the_flag() {
    let dir = TempDir::new();
    let check = |extra: Vec<String>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
        command.args([
            "serve",
            "--check-config",
            "--self-signed",
            "dns.test",
            "--upstream",
            "127.0.0.1:9",
            "--proxy-protocol",
        ]);
        command.args(extra);
        run(command)
    };
    for bad in ["::ffff:1.2.3.4/95", "10.0.0.0/33", "::/200"] {
        let out = check(vec![format!("--proxy-protocol-from={bad}")]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted: {stderr}");
        assert!(
            stderr.contains("--proxy-protocol-from") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
    let file = write_config(&dir, "proxy-protocol-from = [\"::ffff:10.0.0.0/95\"]\n");
    let out = check(vec!["--config".into(), file]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "file value accepted: {stderr}");
    assert!(
        stderr.contains("--proxy-protocol-from") && stderr.contains("/96 or more"),
        "{stderr}"
    );

    let out = check(vec!["--proxy-protocol-from=::ffff:10.0.0.0/104".into()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The quick start's command has no `--upstream`: dotgate forwards to the
/// nameserver of resolv.conf (here one the test writes, naming a scripted
/// upstream on port 53 of a loopback address no real resolver uses, so
/// nothing reaches the machine's own resolver), answers through it, and says
/// in its log which resolver it chose and from which file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs to bind port 53 on 127.x.y.z (root, as CI runs it); run with --include-ignored"]
async fn without_upstream_the_resolv_conf_nameserver_answers_and_is_logged() {
    let ip = std::net::Ipv4Addr::new(127, 53, rand::random::<u8>(), rand::random::<u8>() | 1);
    let addr = std::net::SocketAddr::from((ip, 53));
    let up = Upstream::start_on(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {addr} ({e}): this test needs root"));
    let dir = TempDir::new();
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv_conf,
        format!(
            "# written by the test\nsearch example.test\nnameserver {ip}\noptions edns0 trust-ad\n"
        ),
    )
    .unwrap();
    let server =
        Process::start_without_upstream(&["--resolv-conf", resolv_conf.to_str().unwrap()]).await;
    let mut client = server.client().await;
    let name = "system.resolver.test.";
    client.send(&query(7, name, RecordType::A)).await;
    match client.read(Duration::from_secs(5)).await {
        Read::Frame(bytes) => assert_answer(&crate::harness::parse(&bytes), 7, name, RecordType::A),
        other => panic!("no answer: {other:?}\n{}", server.logs()),
    }
    assert!(
        up.received().iter().any(|q| q.name == name),
        "the query did not reach the resolv.conf nameserver"
    );
    let expected = format!(
        "no --upstream: forwarding to the system resolver {addr} from {} (set --upstream to choose)",
        resolv_conf.display()
    );
    assert!(server.logs().contains(&expected), "{}", server.logs());
}
