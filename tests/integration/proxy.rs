//! PROXY protocol (`--proxy-protocol`): v1 and v2 headers set the client
//! address that the per-address cap and the logs see; a malformed header
//! closes the connection; a peer outside `--proxy-protocol-from` is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::harness::{assert_answer, encode, frame, parse, query, Process, Server, TLS_NAME};
use crate::metrics::{get_when_up, metrics_addr, value};
use crate::upstream::Upstream;

const DOTGATE: &str = "198.51.100.1:853";

pub(crate) fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if client.is_ipv4() {
        "198.51.100.1"
    } else {
        "2001:db8::1"
    };
    format!(
        "PROXY {family} {} {dst} {} 853\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

fn v2(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let dst: SocketAddr = DOTGATE.parse().unwrap();
    let std::net::IpAddr::V4(src) = client.ip() else {
        panic!("IPv4 only here")
    };
    let std::net::IpAddr::V4(dst_ip) = dst.ip() else {
        unreachable!()
    };
    let mut out = dotgate::proto::proxy_header::V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst_ip.octets());
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// Connects, sends `header`, then runs a TLS handshake on the same stream.
async fn connect_with(
    addr: SocketAddr,
    header: &[u8],
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connect = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(header).await?;
        let name = ServerName::try_from(TLS_NAME.to_string()).expect("a valid name");
        TlsConnector::from(config).connect(name, tcp).await
    };
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))?
}

/// Sends one A query and returns true if it was answered correctly, false
/// if the connection was closed instead.
async fn answered(stream: &mut TlsStream<TcpStream>, id: u16, name: &str) -> bool {
    let exchange = async {
        stream
            .write_all(&frame(&encode(&query(id, name, RecordType::A))))
            .await?;
        stream.flush().await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut msg).await?;
        Ok::<_, std::io::Error>(msg)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(msg)) => {
            assert_answer(&parse(&msg), id, name, RecordType::A);
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("neither an answer nor a close for {name}"),
    }
}

/// Opens a connection behind `header`; true if it is served.
pub(crate) async fn served(
    server: &Server,
    header: &[u8],
    id: u16,
) -> (bool, Option<TlsStream<TcpStream>>) {
    match connect_with(server.addr, header, server.pki.client.clone()).await {
        Ok(mut stream) => {
            let ok = answered(&mut stream, id, &format!("q{id}.proxy.test.")).await;
            (ok, ok.then_some(stream))
        }
        Err(_) => (false, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_set_the_address_of_the_per_ip_cap() {
    let up = Upstream::start().await;
    let server = Server::start(
        up.addr,
        &["--proxy-protocol", "--max-connections-per-ip", "1"],
    )
    .await;
    // Each round has addresses of its own, so the first round's closes need
    // not have released their slots when the second starts.
    for (version, header, net) in [
        ("v1", v1 as fn(&str) -> Vec<u8>, "192.0.2"),
        ("v2", v2, "198.51.100"),
    ] {
        // Two clients behind the same proxy (127.0.0.1), with other addresses.
        let (a_ok, a) = served(&server, &header(&format!("{net}.10:5000")), 1).await;
        assert!(a_ok, "{version}: first client refused");
        let (b_ok, b) = served(&server, &header(&format!("{net}.11:5000")), 2).await;
        assert!(b_ok, "{version}: a second client address was refused");
        // The same client address again: over the cap of 1.
        let (c_ok, _) = served(&server, &header(&format!("{net}.10:5001")), 3).await;
        assert!(!c_ok, "{version}: the cap did not see the PROXY address");
        drop((a, b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_local_uses_the_socket_address() {
    let up = Upstream::start().await;
    let server = Server::start(up.addr, &["--proxy-protocol"]).await;
    let mut local = dotgate::proto::proxy_header::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (ok, _) = served(&server, &local, 1).await;
    assert!(ok, "a LOCAL header must be served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_untrusted_headers_are_closed_and_counted() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &["--proxy-protocol", "--metrics-listen", &metrics.to_string()],
    )
    .await;
    let before = crate::metrics::scrape(metrics).await;
    for bad in [
        &b"PROXY TCP4 192.0.2.10 198.51.100.1 5000\r\n"[..],
        b"PROXY TCP9 a b c d\r\n",
        // A TLS ClientHello without any header.
        &[0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 0, 0, 0, 0, 0],
    ] {
        let (ok, _) = served(&server, bad, 1).await;
        assert!(!ok, "{:?} was served", String::from_utf8_lossy(bad));
    }
    let after = crate::metrics::scrape(metrics).await;
    let series = "dotgate_connections_refused_total{reason=\"proxy_malformed\"}";
    assert_eq!(value(&after, series) - value(&before, series), 3.0);
    drop(server);

    let metrics = metrics_addr();
    let server = Server::start(
        up.addr,
        &[
            "--proxy-protocol",
            "--proxy-protocol-from",
            "10.0.0.0/8",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    )
    .await;
    let (ok, _) = served(&server, &v1("192.0.2.10:5000"), 1).await;
    assert!(!ok, "a PROXY header from 127.0.0.1 was trusted");
    let scrape = get_when_up(metrics, "/metrics").await.body;
    assert_eq!(
        value(
            &scrape,
            "dotgate_connections_refused_total{reason=\"proxy_untrusted\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_the_client_of_the_proxy_header() {
    let up = Upstream::start().await;
    let mut process = Process::start(up.addr, &["--proxy-protocol"]).await;
    let header = v1("203.0.113.77:4242");
    let mut stream = connect_with(process.addr, &header, process.pki.client.clone())
        .await
        .expect("served behind a PROXY header");
    assert!(answered(&mut stream, 1, "logged.proxy.test.").await);
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let logs = process.logs();
        if logs.contains("203.0.113.77:4242") && logs.contains("connection closed") {
            assert!(
                logs.lines()
                    .filter(|l| l.contains("connection closed"))
                    .all(|l| !l.contains("peer=127.0.0.1")),
                "logs use the proxy's address:\n{logs}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client address is not in the logs:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.sigterm();
    assert!(process.wait_exit(Duration::from_secs(10)).await.is_some());
}

/// `--proxy-protocol-listen` (what the config file uses to set PROXY per
/// listener): that address expects a header, the `--listen` address does
/// not, in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_can_be_set_per_listener() {
    let up = Upstream::start().await;
    let behind: SocketAddr = ([127, 0, 0, 1], crate::harness::free_port()).into();
    let server = Process::start(up.addr, &["--proxy-protocol-listen", &behind.to_string()]).await;
    // The plain listener: clients connect directly, no header.
    let mut direct = server.client().await;
    direct
        .send(&query(1, "direct.proxy.test.", RecordType::A))
        .await;
    assert_answer(&direct.recv().await, 1, "direct.proxy.test.", RecordType::A);
    // The PROXY listener: served behind a header...
    let mut stream = connect_with(behind, &v1("192.0.2.50:4000"), server.pki.client.clone())
        .await
        .expect("served behind a PROXY header");
    assert!(answered(&mut stream, 2, "behind.proxy.test.").await);
    // ...and refused without one (the TLS ClientHello is not a header).
    let refused = match connect_with(behind, b"", server.pki.client.clone()).await {
        Err(_) => true,
        Ok(mut stream) => !answered(&mut stream, 3, "nohdr.proxy.test.").await,
    };
    assert!(refused, "a connection without a header must be refused");
    assert!(
        server.logs().contains("192.0.2.50:4000"),
        "the PROXY client address is logged"
    );
}
