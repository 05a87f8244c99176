//! The real binary: shutdown on SIGTERM (R15), kdig interop, and
//! `dotgate query`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::harness::{assert_answer, encode, frame, query, Process, Read, Server};
use crate::upstream::{expected_a, expected_txt, Upstream};

/// R15: SIGTERM with queries in flight: they are answered, the connection
/// is closed cleanly, and the process exits with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_queries_in_flight_then_exits_zero() {
    let up = Upstream::start().await;
    let mut server = Process::start(up.addr, &["--upstream-timeout", "2s"]).await;
    let mut client = server.client().await;
    let names: Vec<String> = (0..3)
        .map(|i| format!("delay-500.t{i}.sigterm.test."))
        .collect();
    let mut batch = Vec::new();
    for (id, name) in (0u16..).zip(&names) {
        batch.extend(frame(&encode(&query(id, name, RecordType::A))));
    }
    client.send_raw(&batch).await;
    up.wait_for_queries(names.len(), Duration::from_secs(2))
        .await;
    server.sigterm();

    let mut answered = [false; 3];
    for _ in 0..names.len() {
        let reply = match client.read(Duration::from_secs(3)).await {
            Read::Frame(bytes) => crate::harness::parse(&bytes),
            other => panic!(
                "query in flight lost at shutdown: {other:?}\n{}",
                server.logs()
            ),
        };
        let id = reply.metadata.id;
        assert!(usize::from(id) < names.len() && !answered[usize::from(id)]);
        answered[usize::from(id)] = true;
        assert_answer(&reply, id, &names[usize::from(id)], RecordType::A);
    }
    match client.read(Duration::from_secs(3)).await {
        Read::Eof => {}
        other => panic!("expected a clean close after the last reply, got {other:?}"),
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("dotgate still running 5 s after SIGTERM\n{}", server.logs()));
    assert!(status.success(), "exit status {status}\n{}", server.logs());
}

/// On one CPU (pinned as `taskset -c 0` would) dotgate runs its
/// single-threaded scheduler, and everything is still served on that one
/// thread: DoT queries pipelined, DoH over HTTP/2 and HTTP/1.1, and a
/// SIGTERM that answers the queries in flight before exiting 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_everything_is_served_by_one_thread() {
    let up = Upstream::start().await;
    let doh = std::net::SocketAddr::from(([127, 0, 0, 1], crate::harness::free_port()));
    let doh_arg = doh.to_string();
    let mut server = Process::start_on_one_cpu(
        up.addr,
        &["--doh-listen", &doh_arg, "--upstream-timeout", "2s"],
    )
    .await;
    assert!(
        server.logs().contains("single-threaded"),
        "the single-threaded scheduler on one CPU\n{}",
        server.logs()
    );
    let mut client = server.client().await;
    let names: Vec<String> = (0..50).map(|i| format!("n{i}.one-cpu.test.")).collect();
    crate::harness::ask_all(&mut client, &names, 100).await;
    for h1 in [false, true] {
        let mut http = crate::doh::Http::connect(doh, &server.pki, h1).await;
        let reply = http
            .post(
                "/dns-query",
                &encode(&query(7, "doh.one-cpu.test.", RecordType::A)),
            )
            .await;
        assert_answer(&reply.dns(), 7, "doh.one-cpu.test.", RecordType::A);
    }

    let slow: Vec<String> = (0..3)
        .map(|i| format!("delay-300.t{i}.one-cpu.test."))
        .collect();
    let mut batch = Vec::new();
    for (id, name) in (0u16..).zip(&slow) {
        batch.extend(frame(&encode(&query(id, name, RecordType::A))));
    }
    let before = up.received().len();
    client.send_raw(&batch).await;
    up.wait_for_queries(before + slow.len(), Duration::from_secs(2))
        .await;
    server.sigterm();
    for _ in 0..slow.len() {
        match client.read(Duration::from_secs(3)).await {
            Read::Frame(bytes) => {
                let reply = crate::harness::parse(&bytes);
                let id = reply.metadata.id;
                assert_answer(&reply, id, &slow[usize::from(id)], RecordType::A);
            }
            other => panic!(
                "query in flight lost at shutdown: {other:?}\n{}",
                server.logs()
            ),
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("dotgate still running 5 s after SIGTERM\n{}", server.logs()));
    assert!(status.success(), "exit status {status}\n{}", server.logs());
}

/// Finds an executable on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Panics, naming the tool, its package and the command that runs these
/// tests, for a test that cannot run without `tool`.
///
/// Such tests are `#[ignore = "needs ..."]`, so that plain `cargo test`
/// lists them as ignored rather than reporting a silent `ok`; once asked for
/// (`cargo test --all-targets -- --include-ignored`, what CI and README.md
/// run) a missing tool is a failure, never a skip.
pub fn missing_tool(tool: &str, package: &str) -> ! {
    panic!(
        "{tool} is needed by this test and is not installed (Debian package {package}); \
         install it (.ci/run does), or run plain `cargo test`, which lists this test as ignored"
    )
}

/// The path of `kdig`; panics (see [`missing_tool`]) when it is not on
/// PATH.
pub fn kdig() -> PathBuf {
    on_path("kdig").unwrap_or_else(|| missing_tool("kdig", "knot-dnsutils"))
}

/// Runs a command off the async threads (bounded by the command's own
/// timeout flags).
pub async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run command"))
        .await
        .unwrap()
}

/// Interop with a real DoT client: kdig verifying the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kdig (package knot-dnsutils); run with --include-ignored"]
async fn kdig_gets_an_answer() {
    let kdig = kdig();
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &[]).await;
    let name = "kdig.example.test.";
    let mut command = Command::new(kdig);
    command.args([
        &format!("+tls-ca={}", server.pki.ca.display()),
        "+tls-hostname=dns.test",
        "+time=3",
        "+retry=0",
        "@127.0.0.1",
        "-p",
        &server.addr.port().to_string(),
        name,
        "A",
    ]);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kdig failed ({}): {stdout}\n{stderr}\n{}",
        out.status,
        server.logs()
    );
    assert_kdig_answer(&stdout, name);
}

/// `dotgate query` with --ca: two pipelined questions answered, exit 0; a
/// TLS name the certificate does not hold: non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotgate_query_verifies_and_prints_answers() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &[]).await;
    let query_cmd = |tls_name: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
        command.arg("query").arg("--ca").arg(&server.pki.ca);
        if let Some(name) = tls_name {
            command.args(["--tls-name", name]);
        }
        command.args([
            "--timeout",
            "5s",
            &format!("@{}", server.addr),
            "one.query.test",
            "A",
            "two.query.test",
            "TXT",
        ]);
        command
    };
    let want_a = expected_a("one.query.test.").to_string();
    let want_txt = String::from_utf8(expected_txt("two.query.test.").remove(0)).unwrap();

    // By name, and by the IP address in the certificate's SAN.
    for tls_name in [Some("dns.test"), None] {
        let out = run(query_cmd(tls_name)).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "--tls-name {tls_name:?}: exit {}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains(&want_a), "A {want_a} missing:\n{stdout}");
        assert!(
            stdout.contains(&want_txt),
            "TXT {want_txt} missing:\n{stdout}"
        );
        assert!(!stdout.contains("no reply"), "{stdout}");
    }
    assert_eq!(up.received().len(), 4);

    let out = run(query_cmd(Some("wrong.test"))).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a certificate for dns.test was accepted as wrong.test:\n{stdout}"
    );
    assert!(!stdout.contains(&want_a), "{stdout}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).is_empty(),
        "the failure is explained on stderr"
    );
    assert_eq!(
        up.received().len(),
        4,
        "no query sent over an unverified connection"
    );
}

/// Checks that kdig printed a NOERROR answer with the upstream's record.
pub fn assert_kdig_answer(stdout: &str, name: &str) {
    assert!(stdout.contains("status: NOERROR"), "{stdout}");
    let want = expected_a(name).to_string();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(name) && l.contains(&want)),
        "no A {want} for {name} in kdig's output:\n{stdout}"
    );
}
