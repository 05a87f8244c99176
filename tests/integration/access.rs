//! `--allow-from`: clients outside the allowed networks are closed at
//! accept, before any TLS, and counted; behind PROXY, the carried client
//! address is what is judged.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Server;
use crate::metrics::{metrics_addr, scrape, value};
use crate::proxy::{served, v1};
use crate::upstream::Upstream;

const NOT_ALLOWED: &str = "dotgate_connections_refused_total{reason=\"not_allowed\"}";

/// What a raw TCP client gets back after sending the start of a TLS
/// ClientHello: every byte the server sent before closing.
async fn bytes_back(server: &Server) -> Vec<u8> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The server may already have closed: a failed write is an answer too.
    let _ = tcp
        .write_all(&[0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 0, 0, 0, 0, 0])
        .await;
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
    assert!(
        read.is_ok(),
        "the connection was neither answered nor closed"
    );
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allow_from_never_reach_tls_and_are_counted() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--allow-from",
            "10.0.0.0/8,2001:db8::/32",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let before = scrape(metrics).await;
    // A real DoT client from 127.0.0.1 is refused...
    let (ok, _) = served(&server, b"", 1).await;
    assert!(!ok, "a client outside --allow-from was served");
    // ...and a raw one gets no byte back: no ServerHello, nothing.
    assert!(bytes_back(&server).await.is_empty());
    let after = scrape(metrics).await;
    assert_eq!(
        value(&after, NOT_ALLOWED) - value(&before, NOT_ALLOWED),
        2.0
    );
    drop(server);

    // The same client is served once its network is listed.
    let server = Server::start(up.addr, &["--allow-from", "10.0.0.0/8,127.0.0.0/8"]).await;
    let (ok, _) = served(&server, b"", 2).await;
    assert!(ok, "a client inside --allow-from was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_proxy_the_carried_client_address_is_judged() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    // The balancer (127.0.0.1) itself is not in the list: only its clients.
    let server = Server::start(
        up.addr,
        &[
            "--proxy-protocol",
            "--allow-from",
            "10.0.0.0/8",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let before = scrape(metrics).await;
    let (ok, _) = served(&server, &v1("10.1.2.3:5000"), 1).await;
    assert!(ok, "an allowed client behind PROXY was refused");
    let (ok, _) = served(&server, &v1("192.0.2.10:5000"), 2).await;
    assert!(!ok, "a client outside --allow-from was served behind PROXY");
    let after = scrape(metrics).await;
    assert_eq!(
        value(&after, NOT_ALLOWED) - value(&before, NOT_ALLOWED),
        1.0
    );
}
