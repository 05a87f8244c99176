//! DNS over HTTPS with real clients against the real binary: kdig (POST and
//! GET), curl (HTTP/2 and HTTP/1.1, every error status, and `--doh-url`
//! resolving a page's name), h2load (20,000 POSTs) and headless Chromium
//! (its own DoH client in secure mode). The scripted upstream is behind;
//! everything stays on loopback.
//!
//! The tests need tools outside Rust, so they are `#[ignore]`d (plain
//! `cargo test` lists them as ignored); `.ci/run` installs the tools and
//! runs them with `--include-ignored`, where a missing tool is a failure.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::harness::{assert_answer, encode, free_port, parse, query, Process, TLS_NAME};
use crate::process::{assert_kdig_answer, kdig, missing_tool, on_path, run};
use crate::upstream::Upstream;

/// The query path every test uses (dotgate's default `--doh-path`).
const PATH: &str = "/dns-query";

/// The page's name: only the scripted upstream knows it (as 127.0.0.1), so a
/// client that fetched the page resolved it through dotgate.
const PAGE_NAME: &str = "page.doh.test";

/// What the local web server answers, and what the clients must show.
const PAGE_TEXT: &str = "dotgate-doh-page-served";

/// The real binary with a DoH listener on a port of its own.
struct DohProcess {
    server: Process,
    doh: SocketAddr,
}

impl DohProcess {
    /// Starts `dotgate serve` toward `upstream` with `--doh-listen` and
    /// `extra` flags, and waits (bounded) until the DoH port accepts.
    async fn start(upstream: SocketAddr, extra: &[&str]) -> DohProcess {
        let doh = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let doh_flag = doh.to_string();
        let mut args = vec!["--doh-listen", doh_flag.as_str()];
        args.extend_from_slice(extra);
        let server = Process::start(upstream, &args).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(doh).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the DoH listener {doh} did not open\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        DohProcess { server, doh }
    }

    /// `https://127.0.0.1:PORT/dns-query`: the certificate holds the IP.
    fn url(&self) -> String {
        format!("https://{}{PATH}", self.doh)
    }

    fn ca(&self) -> &Path {
        &self.server.pki.ca
    }
}

/// The path of a tool the test needs, or a failure naming its package.
fn tool(name: &str, package: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| missing_tool(name, package))
}

/// Runs `command`, failing the test (with its output and dotgate's logs) if
/// it does not exit 0; returns stdout.
async fn run_ok(command: Command, server: &Process) -> String {
    let what = format!("{command:?}");
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {stdout}\nstderr: {}\ndotgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    stdout
}

// ---------- kdig ----------

/// kdig 3.2 over DoH (HTTP/2, libnghttp2), verifying the certificate:
/// `+https` POSTs, `+https-get` GETs; both get the upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kdig (package knot-dnsutils); run with --include-ignored"]
async fn kdig_posts_and_gets() {
    let kdig = kdig();
    let up = Upstream::start().await;
    let server = DohProcess::start(up.addr, &[]).await;
    for (get, name, session) in [
        (false, "post.kdig.doh.test.", "(HTTP/2-POST)"),
        (true, "get.kdig.doh.test.", "(HTTP/2-GET)"),
    ] {
        let mut command = Command::new(&kdig);
        command.args([
            "@127.0.0.1",
            "-p",
            &server.doh.port().to_string(),
            &format!("+https={PATH}"),
            &format!("+tls-ca={}", server.ca().display()),
            &format!("+tls-hostname={TLS_NAME}"),
            "+time=5",
            "+retry=0",
        ]);
        if get {
            command.arg("+https-get");
        }
        command.args([name, "A"]);
        let stdout = run_ok(command, &server.server).await;
        assert_kdig_answer(&stdout, name);
        // kdig names the HTTP session it used: ";; HTTP session
        // (HTTP/2-POST)-(dns.test/dns-query)-(status: 200)".
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(";; HTTP session") && l.contains(session)),
            "not a DoH {session}:\n{stdout}"
        );
    }
    let sent: Vec<String> = up.received().into_iter().map(|r| r.name).collect();
    assert_eq!(sent, ["post.kdig.doh.test.", "get.kdig.doh.test."]);
}

// ---------- curl ----------

/// curl against the DoH listener, trusting the test CA.
fn curl(server: &DohProcess) -> Command {
    let mut command = Command::new(tool("curl", "curl"));
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--cacert")
        .arg(server.ca());
    command
}

/// One curl request: (HTTP status, body, the HTTP version curl used).
async fn curl_status(mut command: Command, server: &DohProcess) -> (u16, Vec<u8>, String) {
    command.args([
        "--output",
        "-",
        "--write-out",
        "\n%{http_code} %{http_version}",
    ]);
    let what = format!("{command:?}");
    let out = run(command).await;
    assert!(
        out.status.success(),
        "{what}: {}\n{}\ndotgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.server.logs()
    );
    let stdout = out.stdout;
    let split = stdout
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("{what}: no --write-out line"));
    let trailer = String::from_utf8_lossy(&stdout[split + 1..]).into_owned();
    let (code, version) = trailer
        .split_once(' ')
        .unwrap_or_else(|| panic!("{what}: trailer {trailer:?}"));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("{what}: status {code:?}"));
    (code, stdout[..split].to_vec(), version.to_string())
}

/// curl POSTs and GETs over HTTP/2 (its default over TLS with ALPN) and
/// HTTP/1.1: each gets a 200 with the upstream's answer under the request's
/// ID, typed and cacheable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl (package curl); run with --include-ignored"]
async fn curl_posts_and_gets_over_http2_and_http1() {
    let up = Upstream::start().await;
    let server = DohProcess::start(up.addr, &[]).await;
    let dir = crate::harness::TempDir::new();
    for (version_flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let name = format!("post-h{}.curl.doh.test.", version.replace('.', ""));
        let body = dir.path().join(format!("query-{version}.bin"));
        std::fs::write(&body, encode(&query(0x4242, &name, RecordType::A))).unwrap();
        let mut post = curl(&server);
        post.args([
            version_flag,
            "--header",
            "content-type: application/dns-message",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(server.url());
        let (status, reply, used) = curl_status(post, &server).await;
        assert_eq!(
            (status, used.as_str()),
            (200, version),
            "POST {version_flag}"
        );
        assert_answer(&parse(&reply), 0x4242, &name, RecordType::A);

        let name = format!("get-h{}.curl.doh.test.", version.replace('.', ""));
        let dns = URL_SAFE_NO_PAD.encode(encode(&query(0, &name, RecordType::AAAA)));
        let mut get = curl(&server);
        get.args([version_flag, "--include"])
            .arg(format!("{}?dns={dns}", server.url()));
        let (status, reply, used) = curl_status(get, &server).await;
        assert_eq!(
            (status, used.as_str()),
            (200, version),
            "GET {version_flag}"
        );
        // With --include the headers come first, then a blank line.
        let head_end = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("headers, then the body");
        let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
        assert!(
            head.contains("content-type: application/dns-message"),
            "{head}"
        );
        assert!(head.contains("cache-control: max-age=60"), "{head}");
        assert_answer(&parse(&reply[head_end + 4..]), 0, &name, RecordType::AAAA);
    }
    assert_eq!(up.received().len(), 4);
}

/// Every refusal of the issue, once each through curl: the status, and
/// nothing sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl (package curl); run with --include-ignored"]
async fn curl_sees_every_error_status() {
    let up = Upstream::start().await;
    let server = DohProcess::start(up.addr, &[]).await;
    let dir = crate::harness::TempDir::new();
    let good = dir.path().join("good.bin");
    std::fs::write(
        &good,
        encode(&query(1, "never.curl.doh.test.", RecordType::A)),
    )
    .unwrap();
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, vec![0u8; 70_000]).unwrap();
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, [1u8, 2, 3]).unwrap();
    let at = |p: &Path| format!("@{}", p.display());
    let dns_type = "content-type: application/dns-message";
    let url = server.url();
    let base = format!("https://{}", server.doh);
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        ("GET without dns", vec![url.clone()], 400),
        ("GET with bad base64", vec![format!("{url}?dns=***")], 400),
        (
            "GET of a message that does not parse",
            vec![format!("{url}?dns=AAAA")],
            400,
        ),
        (
            "POST of a message that does not parse",
            vec![
                "-H".into(),
                dns_type.into(),
                "--data-binary".into(),
                at(&garbage),
                url.clone(),
            ],
            400,
        ),
        (
            "PUT",
            vec![
                "-X".into(),
                "PUT".into(),
                "-H".into(),
                dns_type.into(),
                "--data-binary".into(),
                at(&good),
                url.clone(),
            ],
            405,
        ),
        (
            "POST as application/json",
            vec![
                "-H".into(),
                "content-type: application/json".into(),
                "--data-binary".into(),
                at(&good),
                url.clone(),
            ],
            415,
        ),
        // Over HTTP/1.1: over HTTP/2 dotgate answers 413 before the body
        // has all come and then resets the stream with NO_ERROR (RFC 9113
        // section 8.1), which curl 7.88 reports as error 92 instead of
        // showing the response.
        (
            "POST of 70,000 bytes",
            vec![
                "--http1.1".into(),
                "-H".into(),
                dns_type.into(),
                "--data-binary".into(),
                at(&huge),
                url.clone(),
            ],
            413,
        ),
        ("GET of an unknown path", vec![format!("{base}/other")], 404),
    ];
    for (what, args, want) in cases {
        let mut command = curl(&server);
        command.args(&args);
        let (status, body, _) = curl_status(command, &server).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(!body.is_empty(), "{what}: no reason given");
    }
    assert!(
        up.received().is_empty(),
        "a refused request reached the upstream: {:?}",
        up.received()
    );
}

/// One HTTP/2 frame as read off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// HTTP/2 frame types and flags this test uses (RFC 9113 section 6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the next frame (within [`crate::harness::REPLY_WAIT`]),
/// acknowledging the server's SETTINGS on the way.
async fn next_frame<S>(io: &mut S) -> Frame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let read = async {
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await?;
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                io.write_all(&h2_frame(SETTINGS, ACK, 0, &[])).await?;
                continue;
            }
            return Ok::<_, std::io::Error>(frame);
        }
    };
    tokio::time::timeout(crate::harness::REPLY_WAIT, read)
        .await
        .expect("a frame in time")
        .expect("the connection stays open")
}

/// What curl 7.88 needs to show a refusal over HTTP/2: the refusal of a
/// request whose body is still coming (a PUT, here) is sent once the body
/// has ended, not before with a reset stream, which curl reports as "Stream
/// error in the HTTP/2 framing layer" (exit 92) instead of the status.
/// Spoken frame by frame, so that the order is seen: the server reads the
/// first part of the body (its WINDOW_UPDATE for the stream) before it
/// answers, and answers after the body ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_waits_for_the_request_body_over_http2() {
    use hickory_proto::rr::RecordType as T;
    let up = Upstream::start().await;
    let server = crate::harness::Server::start_doh(up.addr, &[]).await;
    let tcp = TcpStream::connect(server.doh.expect("a DoH listener"))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(TLS_NAME).unwrap();
    let mut io = tokio_rustls::TlsConnector::from(crate::doh::tls_client(&server.pki, &[b"h2"]))
        .connect(name, tcp)
        .await
        .unwrap();

    // HPACK without Huffman: :method PUT (name index 2), :scheme https
    // (index 7), :path (name index 4), :authority (name index 1),
    // content-type (name index 31).
    let literal = |prefix: &[u8], value: &str| {
        let mut out = prefix.to_vec();
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
        out
    };
    let mut block = literal(&[0x02], "PUT");
    block.push(0x87);
    block.extend(literal(&[0x04], PATH));
    block.extend(literal(&[0x01], TLS_NAME));
    block.extend(literal(&[0x0f, 0x10], "application/dns-message"));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(HEADERS, END_HEADERS, 1, &block));
    // 40,000 bytes of body (more than half the stream window, so that a
    // server that reads them says so), the end not yet sent.
    let mut body = encode(&query(0, "put.doh.test.", T::A));
    body.resize(40_000, 0);
    for chunk in body.chunks(16_384) {
        hello.extend(h2_frame(DATA, 0, 1, chunk));
    }
    io.write_all(&hello).await.unwrap();
    io.flush().await.unwrap();

    let first = loop {
        let frame = next_frame(&mut io).await;
        if frame.stream == 1 {
            break frame;
        }
    };
    assert_eq!(
        first.kind, WINDOW_UPDATE,
        "while the body was still coming the server sent frame type {} (1: HEADERS, 3: RST_STREAM) on the stream",
        first.kind
    );

    io.write_all(&h2_frame(DATA, END_STREAM, 1, &[]))
        .await
        .unwrap();
    io.flush().await.unwrap();
    let mut reply = Vec::new();
    let mut headers = false;
    loop {
        let frame = next_frame(&mut io).await;
        if frame.stream != 1 {
            continue;
        }
        assert_ne!(frame.kind, RST_STREAM, "the refusal was reset");
        headers |= frame.kind == HEADERS;
        if frame.kind == DATA {
            reply.extend_from_slice(&frame.payload);
        }
        if frame.flags & END_STREAM != 0 {
            break;
        }
    }
    assert!(headers);
    assert_eq!(reply, b"only GET and POST are served here\n");
    assert!(up.received().is_empty());
}

/// A web server on 127.0.0.1 that answers every request with [`PAGE_TEXT`]
/// and keeps the head of each request it served.
struct Page {
    port: u16,
    served: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Page {
    async fn start() -> Page {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    if let Ok(head) = serve_page(stream).await {
                        log.lock().unwrap().push(head);
                    }
                });
            }
        });
        Page { port, served, task }
    }

    /// `http://page.doh.test:PORT/`.
    fn url(&self) -> String {
        format!("http://{PAGE_NAME}:{}/", self.port)
    }

    /// The heads of the requests served so far.
    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }

    /// Checks that the page itself was asked for by its name (a browser
    /// may also ask for /favicon.ico).
    fn assert_fetched_by_name(&self) {
        let served = self.served();
        let host = format!("host: {PAGE_NAME}:{}", self.port);
        assert!(
            served
                .iter()
                .any(|head| head.starts_with("GET / HTTP/1.1\r\n")
                    && head.to_ascii_lowercase().contains(&host)),
            "no GET / for {host}: {served:?}"
        );
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's head (bounded in size and time), answers the page
/// and closes the connection; returns the head.
async fn serve_page(mut stream: TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), read_head).await??;
    let body = format!("<html><body><p id=\"page\">{PAGE_TEXT}</p></body></html>");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// curl's own DoH client (`--doh-url`) resolves a name only the scripted
/// upstream knows, through dotgate, and fetches the page there. `--cacert`
/// is what makes curl trust dotgate's certificate for its DoH requests too
/// (curl 7.88 passes the CA file on to them): without it the lookup fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl (package curl); run with --include-ignored"]
async fn curl_doh_url_resolves_a_page_through_dotgate() {
    let up = Upstream::start().await;
    up.set_address(PAGE_NAME, Ipv4Addr::LOCALHOST, 300);
    let page = Page::start().await;
    let server = DohProcess::start(up.addr, &[]).await;

    let mut command = curl(&server);
    command.args(["--doh-url", &server.url()]).arg(page.url());
    let stdout = run_ok(command, &server.server).await;
    assert!(stdout.contains(PAGE_TEXT), "{stdout}");
    page.assert_fetched_by_name();
    assert_eq!(page.served().len(), 1);
    // curl asks for both families (the upstream has no AAAA for the page).
    let mut asked: Vec<(String, RecordType)> = up
        .received()
        .into_iter()
        .map(|r| (r.name, r.rtype))
        .collect();
    asked.sort();
    let fqdn = format!("{PAGE_NAME}.");
    assert_eq!(
        asked,
        [(fqdn.clone(), RecordType::A), (fqdn, RecordType::AAAA)]
    );

    // The same without the CA: curl refuses dotgate's certificate, so
    // nothing is asked, the name does not resolve and the page is not
    // fetched (curl 7.88 exits 27 here, from its DoH code, rather than 6).
    let asked_before = up.received().len();
    let mut untrusting = Command::new(tool("curl", "curl"));
    untrusting
        .args([
            "--silent",
            "--max-time",
            "10",
            "--ipv4",
            "--doh-url",
            &server.url(),
        ])
        .arg(page.url());
    let out = run(untrusting).await;
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(page.served().len(), 1);
    assert_eq!(up.received().len(), asked_before);
}

// ---------- h2load ----------

/// The figure before `label` on h2load's summary line that starts with
/// `line`: in "requests: 20000 total, ... 0 failed, 0 errored", the one
/// before "failed" is 0.
fn h2load_figure(stdout: &str, line: &str, label: &str) -> u64 {
    let summary = stdout
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no {line:?} line in h2load's output:\n{stdout}"));
    let words: Vec<&str> = summary
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find(|pair| pair[1] == label)
        .and_then(|pair| pair[0].parse().ok())
        .unwrap_or_else(|| panic!("no figure for {label:?} in {summary:?}"))
}

/// h2load (nghttp2's load generator): 20,000 POSTs over 16 HTTP/2
/// connections with 32 streams each; every one answered with a 2xx, none
/// failed or errored, and each went to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs h2load (package nghttp2-client); run with --include-ignored"]
async fn h2load_20000_posts_all_answered() {
    const REQUESTS: u64 = 20_000;
    let h2load = tool("h2load", "nghttp2-client");
    let up = Upstream::start().await;
    let server = DohProcess::start(up.addr, &[]).await;
    let dir = crate::harness::TempDir::new();
    let body = dir.path().join("query.bin");
    std::fs::write(
        &body,
        encode(&query(0, "load.h2load.doh.test.", RecordType::A)),
    )
    .unwrap();
    let mut command = Command::new(h2load);
    command
        .args(["-n", &REQUESTS.to_string(), "-c", "16", "-m", "32", "-d"])
        .arg(&body)
        .args([
            "-H",
            "content-type: application/dns-message",
            // Bounds the run: no request may wait longer than this.
            "--connection-inactivity-timeout=30",
        ])
        .arg(server.url());
    let started = Instant::now();
    let stdout = run_ok(command, &server.server).await;
    let took = started.elapsed();
    let figure = |line, label| h2load_figure(&stdout, line, label);
    assert_eq!(figure("requests:", "total"), REQUESTS, "{stdout}");
    assert_eq!(figure("requests:", "succeeded"), REQUESTS, "{stdout}");
    assert_eq!(figure("requests:", "failed"), 0, "{stdout}");
    assert_eq!(figure("requests:", "errored"), 0, "{stdout}");
    assert_eq!(figure("requests:", "timeout"), 0, "{stdout}");
    assert_eq!(figure("status codes:", "2xx"), REQUESTS, "{stdout}");
    // Each went upstream (dotgate may have sent one again over UDP when the
    // upstream, on the same two cores, was slow to answer).
    assert!(up.received().len() as u64 >= REQUESTS);
    eprintln!(
        "h2load: {REQUESTS} POSTs in {took:?}\n{}",
        stdout
            .lines()
            .find(|l| l.starts_with("finished in"))
            .unwrap_or_default()
    );
}

// ---------- headless Chromium ----------

/// Headless Chromium's own DoH client, in secure mode (it never falls back
/// to the system resolver), with dotgate as its only server: it resolves
/// the page's name through dotgate and shows the page. The test CA is
/// trusted through an NSS database under a temporary HOME, as a user's
/// `certutil` import would; the DoH settings are the `Local State` prefs
/// that chrome://settings/security writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (package chromium) and certutil (libnss3-tools); run with --include-ignored"]
async fn chromium_resolves_a_page_through_dotgate_in_secure_mode() {
    let chromium = tool("chromium", "chromium");
    let certutil = tool("certutil", "libnss3-tools");
    let up = Upstream::start().await;
    up.set_address(PAGE_NAME, Ipv4Addr::LOCALHOST, 300);
    let page = Page::start().await;
    let server = DohProcess::start(up.addr, &[]).await;

    let home = crate::harness::TempDir::new();
    let nssdb = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let mut create = Command::new(&certutil);
    create.args(["-N", "--empty-password", "-d", &db]);
    run_ok(create, &server.server).await;
    let mut import = Command::new(&certutil);
    import
        .args(["-A", "-t", "C,,", "-n", "dotgate test CA", "-d", &db, "-i"])
        .arg(server.ca());
    run_ok(import, &server.server).await;

    let profile = home.path().join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let local_state = format!(
        r#"{{"dns_over_https": {{"mode": "secure", "templates": "{}"}}}}"#,
        server.url()
    );
    std::fs::write(profile.join("Local State"), local_state).unwrap();

    // Every name but the page's fails without a lookup: the browser's own
    // background requests (component updates, sign-in) go nowhere, and the
    // page's name is resolved as usual, through the DoH template. The
    // template's IP literal is excluded too, or "MAP *" takes it.
    let rules = format!(
        "MAP * ~NOTFOUND, EXCLUDE {PAGE_NAME}, EXCLUDE {}",
        server.doh.ip()
    );
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5", "60"])
        .arg(&chromium)
        .env("HOME", home.path())
        .args([
            "--headless",
            // The sandbox needs user namespaces, which root in a container
            // does not have.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
        ])
        .arg(format!("--host-resolver-rules={rules}"))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(page.url());
    let started = Instant::now();
    let out = run(command).await;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let asked: Vec<(String, RecordType)> = up
        .received()
        .into_iter()
        .map(|r| (r.name, r.rtype))
        .collect();
    assert!(
        out.status.success() && stdout.contains(PAGE_TEXT),
        "the page was not shown ({}): {stdout}\nchromium's stderr:\n{}\nthe upstream was asked {asked:?}\ndotgate:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.server.logs()
    );
    page.assert_fetched_by_name();
    // The page's address came from the upstream, through dotgate; nothing
    // else was asked.
    let fqdn = format!("{PAGE_NAME}.");
    assert!(asked.contains(&(fqdn.clone(), RecordType::A)), "{asked:?}");
    assert!(
        asked.iter().all(|(name, _)| name.ends_with(&fqdn)),
        "{asked:?}"
    );
    eprintln!("chromium: page shown in {took:?}; the upstream was asked {asked:?}");
}
