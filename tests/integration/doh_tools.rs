//! `dotgate query @https://...` and `dotgate check https://...` as the real
//! binary: against dotgate's own DoH listener (in-process, the scripted
//! upstream behind it), and against a small hyper server that gets DoH wrong
//! on purpose (wrong content type, 500, HTTP/1.1 only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::harness::{ChainSpec, Pki, Server, TLS_NAME};
use crate::process::run;
use crate::upstream::{expected_a, expected_txt, ordinary_answer, Upstream};

/// The DoH URL of a listener.
fn url(addr: SocketAddr) -> String {
    format!("https://{addr}/dns-query")
}

/// `dotgate query --ca CA --tls-name dns.test [extra] @URL NAME TYPE...`.
async fn query(url: &str, ca: &Path, extra: &[&str], questions: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("query")
        .arg("--ca")
        .arg(ca)
        .args(["--tls-name", TLS_NAME, "--timeout", "5s"])
        .args(extra)
        .arg(format!("@{url}"))
        .args(questions);
    run(command).await
}

/// `dotgate check URL --tls-name dns.test --quick --json --ca CA`: the exit
/// code and the report.
async fn check(url: &str, ca: &Path) -> (Option<i32>, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("check")
        .arg(url)
        .args(["--tls-name", TLS_NAME, "--quick", "--json", "--ca"])
        .arg(ca);
    let out = run(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // One line per DoH check, in order, and the exit status agreeing.
    let ids: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "resolve",
            "reachable",
            "tls",
            "alpn",
            "chain",
            "intermediates",
            "expiry",
            "name",
            "eku",
            "key",
            "signature",
            "post",
            "get",
            "id",
            "cache-control",
            "bad-request"
        ],
        "{json}"
    );
    let ok = json["ok"].as_bool().unwrap();
    assert_eq!(out.status.code(), Some(if ok { 0 } else { 1 }), "{json}");
    (out.status.code(), json)
}

/// The status and reason of check `id`.
fn status(json: &Value, id: &str) -> (String, String) {
    let c = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {json}"));
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

// ---------- against dotgate ----------

/// POST (by default) and GET (`--get`) over HTTP/2: both questions
/// answered, each reaching the upstream, and the transport named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_asks_a_doh_server_by_post_and_get() {
    let up = Upstream::start().await;
    let server = Server::start_doh(up.addr, &[]).await;
    let url = url(server.doh.unwrap());
    let want_a = expected_a("one.doh-query.test.").to_string();
    let want_txt = String::from_utf8(expected_txt("two.doh-query.test.").remove(0)).unwrap();
    for extra in [&[][..], &["--get"][..]] {
        let out = query(
            &url,
            &server.pki.ca,
            extra,
            &["one.doh-query.test", "A", "two.doh-query.test", "TXT"],
        )
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stdout}\n{stderr}");
        assert!(stdout.contains(&want_a), "{extra:?}: {stdout}");
        assert!(stdout.contains(&want_txt), "{extra:?}: {stdout}");
        assert!(
            stdout.contains(&format!("({url}, HTTP/2)")),
            "{extra:?}: {stdout}"
        );
        // GET asks with ID 0 (RFC 8484 §4.1); POST with its own IDs.
        let ids = stdout.matches(", id: 0\n").count();
        assert_eq!(ids, if extra.is_empty() { 0 } else { 2 }, "{stdout}");
    }
    assert_eq!(up.received().len(), 4);

    // A certificate that does not cover the name: nothing is asked.
    let mut command = Command::new(env!("CARGO_BIN_EXE_dotgate"));
    command
        .arg("query")
        .arg("--ca")
        .arg(&server.pki.ca)
        .args(["--tls-name", "wrong.test"])
        .arg(format!("@{url}"))
        .arg("three.doh-query.test");
    let out = run(command).await;
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    assert_eq!(
        up.received().len(),
        4,
        "nothing asked over a bad certificate"
    );
}

/// dotgate's DoH listener with a full chain: every DoH check passes, the
/// answers' cache-control included, and the report names the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_dotgate_over_doh() {
    let up = Upstream::start().await;
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = Server::start_doh_with_pki(pki, up.addr, &[]).await;
    let url = url(server.doh.unwrap());
    let (code, json) = check(&url, &server.pki.ca).await;
    assert_eq!(code, Some(0), "{json}");
    for c in json["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "PASS", "{json}");
        assert_eq!(c["clients"], serde_json::json!(["doh"]), "{c}");
    }
    assert!(status(&json, "alpn").1.contains("ALPN h2"));
    assert!(status(&json, "cache-control")
        .1
        .contains("POST max-age=60 (smallest TTL 60), GET max-age=60"));
    assert!(status(&json, "id").1.contains("the GET's (0)"));
    assert!(status(&json, "bad-request").1.contains("400"));
    assert_eq!(json["target"]["protocol"], "doh");
    assert_eq!(json["target"]["url"], url);
    let summary = &json["summary"].as_array().unwrap()[..];
    assert_eq!(summary.len(), 1, "{json}");
    assert_eq!(summary[0]["works"], true);
    // The POST and the GET reached the upstream; the bad request did not.
    assert_eq!(up.received().len(), 2);
}

// ---------- servers that get DoH wrong ----------

/// What the hand-made DoH server does wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// Answers with the right body, as `application/octet-stream`.
    WrongContentType,
    /// 500 to everything.
    ServerError,
    /// Right answers, but it offers only ALPN http/1.1 and sends no
    /// cache-control.
    Http1Only,
}

/// A DoH server on 127.0.0.1 with the PKI's certificate; stopped when
/// dropped.
struct BadServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<ServerConfig> {
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The scripted upstream's answer to the query of a request, or `None`
/// for a request without one.
async fn answer_of(req: Request<Incoming>) -> Option<Vec<u8>> {
    let query = match req.uri().query() {
        Some(q) => URL_SAFE_NO_PAD
            .decode(q.split('&').find_map(|p| p.strip_prefix("dns="))?)
            .ok()?,
        None => req.into_body().collect().await.ok()?.to_bytes().to_vec(),
    };
    ordinary_answer(&query)
}

async fn respond(
    fault: Fault,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, content_type: &str, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if let Fault::ServerError = fault {
        return reply(500, "text/plain", b"internal error".to_vec());
    }
    let content_type = match fault {
        Fault::WrongContentType => "application/octet-stream",
        _ => "application/dns-message",
    };
    match answer_of(req).await {
        Some(answer) => reply(200, content_type, answer),
        None => reply(400, "text/plain", b"no query".to_vec()),
    }
}

async fn bad_server(pki: &Pki, fault: Fault) -> BadServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let alpn: &[&[u8]] = match fault {
        Fault::Http1Only => &[b"http/1.1"],
        _ => &[b"h2", b"http/1.1"],
    };
    let acceptor = TlsAcceptor::from(server_config(pki, alpn));
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(move |req| respond(fault, req));
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    BadServer { addr, task }
}

/// 200 with the right DNS reply but typed `application/octet-stream`:
/// POST and GET FAIL (clients drop it), `query` says why, exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_fails_post_and_get() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = bad_server(&pki, Fault::WrongContentType).await;
    let (code, json) = check(&url(server.addr), &pki.ca).await;
    assert_eq!(code, Some(1), "{json}");
    for id in ["post", "get"] {
        let (status, reason) = status(&json, id);
        assert_eq!(status, "FAIL", "{json}");
        assert!(
            reason.contains("content-type application/octet-stream, not application/dns-message"),
            "{reason}"
        );
    }
    for id in ["tls", "alpn", "chain", "bad-request"] {
        assert_eq!(status(&json, id).0, "PASS", "{id}: {json}");
    }
    assert_eq!(json["summary"][0]["first_fail"], "post");

    let out = query(&url(server.addr), &pki.ca, &[], &["x.test"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("no reply: HTTP 200 of content-type application/octet-stream"),
        "{stdout}"
    );
}

/// 500 to everything: POST and GET FAIL with the status, the bad request
/// is a WARN (a 5xx is not a client error), nothing to compare IDs of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_fails_post_and_get() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = bad_server(&pki, Fault::ServerError).await;
    let (code, json) = check(&url(server.addr), &pki.ca).await;
    assert_eq!(code, Some(1), "{json}");
    for id in ["post", "get"] {
        let (status, reason) = status(&json, id);
        assert_eq!(status, "FAIL", "{json}");
        assert!(reason.contains("got HTTP 500"), "{reason}");
    }
    assert_eq!(status(&json, "bad-request").0, "WARN", "{json}");
    assert_eq!(status(&json, "id").0, "SKIP", "{json}");

    let out = query(&url(server.addr), &pki.ca, &["--get"], &["x.test"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no reply: HTTP status 500"), "{stdout}");
}

/// A server that picks HTTP/1.1: `query` falls back and is answered, and
/// `check` WARNs for ALPN and for the missing cache-control, but passes
/// the exchanges themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_is_answered_with_warnings() {
    let pki = Pki::with_intermediate(&ChainSpec::default());
    let server = bad_server(&pki, Fault::Http1Only).await;
    let (code, json) = check(&url(server.addr), &pki.ca).await;
    assert_eq!(code, Some(0), "{json}");
    let (alpn, reason) = status(&json, "alpn");
    assert_eq!(alpn, "WARN", "{json}");
    assert!(reason.contains("ALPN http/1.1"), "{reason}");
    let (cache, reason) = status(&json, "cache-control");
    assert_eq!(cache, "WARN", "{json}");
    assert!(reason.contains("no cache-control max-age"), "{reason}");
    for id in ["post", "get", "id", "bad-request"] {
        assert_eq!(status(&json, id).0, "PASS", "{id}: {json}");
    }

    let out = query(
        &url(server.addr),
        &pki.ca,
        &[],
        &["one.h1.test", "two.h1.test", "AAAA"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(", HTTP/1.1)"), "{stdout}");
    assert!(
        stdout.contains(&expected_a("one.h1.test.").to_string()),
        "{stdout}"
    );
}
