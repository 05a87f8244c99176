//! The DoH listener with built-in ACME and readiness: TLS-ALPN-01
//! answered on the DoH listener itself (`--acme-challenge tls-alpn-01`
//! with `--doh-listen` and no `--acme-tls-alpn-listen`), against Debian's
//! pebble as in `acme.rs`, both before the first certificate and at
//! renewal while DoH is served; `/readyz` says 503 while the DoH listener
//! has nothing to serve and 200 once it answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::acme::{trusting, AcmeDotgate, Pebble, PebbleDns};
use crate::doh::Http;
use crate::harness::{assert_answer, encode, free_port, query, TempDir};
use crate::metrics::{http_get, value};
use crate::upstream::Upstream;

/// The name of the certificate (pebble's mock DNS answers 127.0.0.1).
const NAME: &str = "dns.test";

/// The log line of a validation answered on the DoH listener before there
/// was a certificate, and the one of a validation answered while serving.
const BEFORE: &str = "TLS-ALPN-01: answered the ACME server's validation handshake on the DoH listener, before the first certificate";
const SERVING: &str =
    "TLS-ALPN-01: answered the ACME server's validation handshake on the DoH listener, while serving";

/// A TLS client trusting only `root` that offers `alpn`.
fn client_config(root: &CertificateDer<'static>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut config = (*trusting(root)).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// An HTTP/2 DoH connection to `addr`, verified against `root` for NAME.
async fn doh_client(addr: SocketAddr, root: &CertificateDer<'static>) -> Http {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(client_config(root, b"h2"))
            .connect(ServerName::try_from(NAME).unwrap(), tcp),
    )
    .await
    .expect("a handshake within 10 s")
    .expect("a DoH handshake with the ACME certificate");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    Http::H2(send)
}

/// Waits (at most `limit`) until `/readyz` says `status`; returns its body.
async fn wait_readyz(
    metrics: SocketAddr,
    status: u16,
    limit: Duration,
    logs: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(ready) = http_get(metrics, "/readyz").await {
            if ready.status == status {
                return ready.body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said {status} within {limit:?}:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TLS-ALPN-01 on the DoH listener, where pebble validates (its `tlsPort`
/// is the DoH port): the first certificate while nothing else is served,
/// then, with 24-second certificates, the renewal's validation answered by
/// the serving listener (the ClientHello offering `acme-tls/1` gets the
/// validation certificate, the others the ACME one). No separate listener
/// is bound. `/readyz` is 200 once DoH is served, and a DoH client that
/// verifies pebble's chain is answered on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (Debian package pebble); run with --include-ignored"]
async fn tls_alpn01_is_answered_on_the_doh_listener_first_and_at_renewal() {
    let pebble = Pebble::start(Some(Duration::from_secs(24)), PebbleDns::Mock).await;
    let up = Upstream::start().await;
    let work = TempDir::new();
    let dir = work.path().join("acme");
    let doh: SocketAddr = ([127, 0, 0, 1], pebble.tls_port).into();
    let doh_flag = doh.to_string();
    let flags = [
        "--acme",
        NAME,
        "--acme-challenge",
        "tls-alpn-01",
        "--doh-listen",
        &doh_flag,
    ];
    let mut server = AcmeDotgate::spawn(&pebble, &up, &dir, &flags, "doh-alpn.log");
    server
        .wait_log(
            "serving DNS over HTTPS listen=",
            1,
            Duration::from_secs(60),
            &pebble,
        )
        .await;
    let logs = server.logs();
    assert!(
        logs.contains("answered on the DoH listener (--doh-listen)") && logs.contains(BEFORE),
        "{logs}"
    );
    wait_readyz(server.metrics, 200, Duration::from_secs(20), || {
        server.logs()
    })
    .await;
    let root = pebble.root().await;
    let mut http = doh_client(doh, &root).await;
    let reply = http
        .post(
            "/dns-query",
            &encode(&query(0, "first.doh-acme.test.", RecordType::A)),
        )
        .await;
    assert_answer(&reply.dns(), 0, "first.doh-acme.test.", RecordType::A);

    // Renewal (about 16 s in): validated by the serving DoH listener.
    server
        .wait_log(SERVING, 1, Duration::from_secs(40), &pebble)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(
        &server.scrape().await,
        "dotgate_acme_orders_total{result=\"success\"}",
    ) < 2.0
    {
        assert!(Instant::now() < deadline, "no renewal:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut http = doh_client(doh, &root).await;
    let reply = http
        .post(
            "/dns-query",
            &encode(&query(0, "renewed.doh-acme.test.", RecordType::A)),
        )
        .await;
    assert_answer(&reply.dns(), 0, "renewed.doh-acme.test.", RecordType::A);
}

/// Before the first certificate (the ACME server never answers), with
/// TLS-ALPN-01 on the DoH listener: `/readyz` is 503 and says why, and a
/// DoH client is not left waiting: its handshake fails at once (it offers
/// no `acme-tls/1`), counted as `no_certificate`. Needs no pebble.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_certificate_doh_is_not_ready_and_clients_are_refused() {
    let up = Upstream::start().await;
    let work = TempDir::new();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let directory = format!("https://{}/directory", silent.local_addr().unwrap());
    let doh: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let doh_flag = doh.to_string();
    let dotgate = AcmeDotgate::spawn_toward(
        &directory,
        &up,
        &work.path().join("acme"),
        &[
            "--acme",
            NAME,
            "--acme-challenge",
            "tls-alpn-01",
            "--doh-listen",
            &doh_flag,
        ],
        "doh-waiting.log",
    );
    let body = wait_readyz(dotgate.metrics, 503, Duration::from_secs(20), || {
        dotgate.logs()
    })
    .await;
    assert!(
        body.contains("no certificate loaded yet"),
        "/readyz says why: {body}"
    );
    let pki = crate::harness::Pki::new();
    let config = crate::doh::tls_client(&pki, &[b"h2"]);
    for attempt in 0..3 {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(doh))
            .await
            .expect("connect in time")
            .expect("the DoH port is bound");
        let handshake =
            TlsConnector::from(config.clone()).connect(ServerName::try_from(NAME).unwrap(), tcp);
        let ended = tokio::time::timeout(Duration::from_secs(10), handshake).await;
        match ended {
            Ok(Err(_)) => {}
            Ok(Ok(mut tls)) => {
                let mut buf = [0u8; 16];
                let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
                panic!("attempt {attempt}: a handshake without a certificate ({read:?})");
            }
            Err(_) => panic!("attempt {attempt}: left waiting:\n{}", dotgate.logs()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = value(
            &dotgate.scrape().await,
            "dotgate_connections_refused_total{reason=\"no_certificate\"}",
        );
        if refused >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused {refused}:\n{}",
            dotgate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
}
