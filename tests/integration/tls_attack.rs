//! The TLS stream under attack, by a hand-made TLS 1.3 client: after a
//! normal handshake (rustls, with its traffic secrets extracted), it seals
//! whatever records it likes with the session's own keys, and opens the
//! server's records to see which alert came back. Each test is a way the
//! server side of TLS once failed: memory held for a handshake message
//! that never completes, panics, alerts lost, ClientHellos refused, resets
//! at close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use hickory_proto::rr::RecordType;
use rustls::{ClientConfig, ConnectionTrafficSecrets};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{assert_answer, encode, frame, query, Pki, Process, Read, Server, TLS_NAME};
use crate::hostile::wait_for_series;
use crate::metrics::{metrics_addr, scrape, value};
use crate::upstream::Upstream;

/// TLS alert descriptions the tests expect.
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const DECODE_ERROR: u8 = 50;
const CLOSE_NOTIFY: u8 = 0;

/// Content types.
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// How long a test waits for the server's answer to an attack.
const WAIT: Duration = Duration::from_secs(10);

/// One direction's record protection: AES-128-GCM, as TLS 1.3 or TLS 1.2
/// frames it.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    tls12: bool,
}

impl Keys {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets, tls12: bool) -> Keys {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the attacker offers AES-128-GCM only");
        };
        Keys {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
            tls12,
        }
    }

    /// The next nonce: the IV xor the sequence number (TLS 1.3, and
    /// rustls' TLS 1.2 GCM, whose explicit part is the last 8 bytes).
    fn nonce(&mut self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        nonce
    }

    /// TLS 1.2's additional data: sequence number, type, version, length.
    fn aad12(seq: u64, typ: u8, len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&seq.to_be_bytes());
        aad[8..11].copy_from_slice(&[typ, 3, 3]);
        aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aad
    }

    /// A record: `payload` of content type `typ`, with (TLS 1.3 only)
    /// `padding` zero bytes after the type (RFC 8446 §5.4).
    fn seal(&mut self, typ: u8, payload: &[u8], padding: usize) -> Vec<u8> {
        if self.tls12 {
            let seq = self.seq;
            let nonce = self.nonce();
            let mut body = payload.to_vec();
            self.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(Self::aad12(seq, typ, payload.len())),
                    &mut body,
                )
                .unwrap();
            let len = 8 + body.len();
            let mut record = vec![typ, 3, 3, (len >> 8) as u8, len as u8];
            record.extend_from_slice(&nonce[4..]);
            record.extend(body);
            return record;
        }
        let mut inner = payload.to_vec();
        inner.push(typ);
        inner.resize(inner.len() + padding, 0);
        let len = inner.len() + 16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = Nonce::assume_unique_for_key(self.nonce());
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(header), &mut inner)
            .unwrap();
        let mut record = header.to_vec();
        record.extend(inner);
        record
    }

    /// The content type and payload of a protected record.
    fn open(&mut self, header: &[u8], body: &[u8]) -> (u8, Vec<u8>) {
        if self.tls12 {
            let seq = self.seq;
            self.seq += 1;
            let mut nonce = self.iv;
            nonce[4..].copy_from_slice(&body[..8]);
            let mut sealed = body[8..].to_vec();
            let aad = Self::aad12(seq, header[0], sealed.len() - 16);
            let plain = self
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut sealed,
                )
                .expect("a record the server protected");
            return (header[0], plain.to_vec());
        }
        let mut body = body.to_vec();
        let nonce = Nonce::assume_unique_for_key(self.nonce());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut body)
            .expect("a record the server protected");
        let end = plain.iter().rposition(|&b| b != 0).expect("a content type");
        (plain[end], plain[..end].to_vec())
    }
}

/// What came back from the server after an attack.
#[derive(Debug)]
struct Outcome {
    /// Records as (content type, payload), opened where protected.
    records: Vec<(u8, Vec<u8>)>,
    /// How the byte stream ended.
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    Eof,
    Reset,
    Timeout,
}

impl Outcome {
    /// The alerts received, as (level, description).
    fn alerts(&self) -> Vec<(u8, u8)> {
        self.records
            .iter()
            .filter(|(typ, payload)| *typ == ALERT && payload.len() == 2)
            .map(|(_, p)| (p[0], p[1]))
            .collect()
    }

    /// Asserts one fatal alert `description`, as the last record, then a
    /// clean end of stream.
    fn assert_fatal(&self, description: u8) {
        assert_eq!(
            self.alerts(),
            [(2, description)],
            "expected one fatal alert {description} ({self:?})"
        );
        assert_eq!(
            self.records.last().map(|r| r.0),
            Some(ALERT),
            "nothing after the alert"
        );
        assert_eq!(
            self.end,
            End::Eof,
            "the stream must end in FIN, not a reset"
        );
    }
}

/// A TLS 1.3 client that can send any record under the session's keys.
struct Attacker {
    tcp: TcpStream,
    tx: Keys,
    rx: Keys,
}

impl Attacker {
    /// Handshakes with rustls, asks one query (so the session tickets
    /// before its answer are read), then takes the keys.
    async fn connect(addr: SocketAddr, pki: &Pki) -> Attacker {
        Attacker::connect_with(addr, pki, false).await
    }

    /// As [`Attacker::connect`], over TLS 1.2 when `tls12`.
    async fn connect_with(addr: SocketAddr, pki: &Pki, tls12: bool) -> Attacker {
        let mut tls = Attacker::handshake(addr, pki, tls12, b"dot").await;
        tls.write_all(&frame(&encode(&query(
            1,
            "before.attack.test.",
            RecordType::A,
        ))))
        .await
        .unwrap();
        let mut len = [0u8; 2];
        tls.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
        tls.read_exact(&mut reply).await.unwrap();
        assert_answer(
            &crate::harness::parse(&reply),
            1,
            "before.attack.test.",
            RecordType::A,
        );
        Attacker::take_keys(tls, tls12)
    }

    /// As [`Attacker::connect`] on a DoH listener over HTTP/2: the preface
    /// and SETTINGS sent, the server's SETTINGS read, then the keys taken.
    async fn connect_h2(addr: SocketAddr, pki: &Pki) -> Attacker {
        let mut tls = Attacker::handshake(addr, pki, false, b"h2").await;
        // The preface, then an empty SETTINGS frame.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tls.write_all(&hello).await.unwrap();
        let mut settings = [0u8; 9];
        tls.read_exact(&mut settings).await.unwrap();
        assert_eq!(settings[3], 4, "the server's SETTINGS first");
        let mut payload = vec![0u8; usize::from(settings[2]) | usize::from(settings[1]) << 8];
        tls.read_exact(&mut payload).await.unwrap();
        Attacker::take_keys(tls, false)
    }

    /// As [`Attacker::connect`] on a DoH listener: ALPN `http/1.1`, and one
    /// GET answered before the keys are taken.
    async fn connect_doh(addr: SocketAddr, pki: &Pki) -> Attacker {
        use base64::Engine;
        let mut tls = Attacker::handshake(addr, pki, false, b"http/1.1").await;
        let dns = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(encode(&query(
            0,
            "before.attack.test.",
            RecordType::A,
        )));
        let request = format!("GET /dns-query?dns={dns} HTTP/1.1\r\nhost: {TLS_NAME}\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        // The response: its headers, then as many bytes as they announce.
        let mut got = Vec::new();
        let complete = loop {
            let mut chunk = [0u8; 4096];
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the response: {got:?}");
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if got.len() >= end + 4 + length {
                    break text[..end].to_string();
                }
            }
        };
        assert!(complete.starts_with("HTTP/1.1 200"), "{complete}");
        Attacker::take_keys(tls, false)
    }

    /// A completed handshake of a client that offers `alpn` and lets its
    /// traffic secrets be taken.
    async fn handshake(
        addr: SocketAddr,
        pki: &Pki,
        tls12: bool,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites.retain(|s| {
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
            .contains(&s.suite())
        });
        let version = if tls12 {
            &rustls::version::TLS12
        } else {
            &rustls::version::TLS13
        };
        let mut config: ClientConfig =
            (*pki.client_config_with(provider, &[version], &[alpn], true)).clone();
        config.enable_secret_extraction = true;
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from(TLS_NAME.to_string()).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake")
    }

    /// The TCP stream under `tls` and the keys of both directions.
    fn take_keys(tls: tokio_rustls::client::TlsStream<TcpStream>, tls12: bool) -> Attacker {
        let (tcp, conn) = tls.into_inner();
        let secrets = conn.dangerous_extract_secrets().expect("secrets");
        Attacker {
            tcp,
            tx: Keys::new(secrets.tx.0, secrets.tx.1, tls12),
            rx: Keys::new(secrets.rx.0, secrets.rx.1, tls12),
        }
    }

    /// Sends one protected record; false once the server no longer takes
    /// bytes.
    async fn send(&mut self, typ: u8, payload: &[u8], padding: usize) -> bool {
        let record = self.tx.seal(typ, payload, padding);
        self.tcp.write_all(&record).await.is_ok()
    }

    /// Sends FIN and reads what the server sent until it ends.
    async fn finish(mut self) -> Outcome {
        let _ = self.tcp.shutdown().await;
        self.read_to_end().await
    }

    /// Reads what the server sent until it ends.
    async fn read_to_end(mut self) -> Outcome {
        let mut bytes = Vec::new();
        let deadline = Instant::now() + WAIT;
        let end = loop {
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline.into(), self.tcp.read(&mut chunk)).await {
                Err(_) => break End::Timeout,
                Ok(Ok(0)) => break End::Eof,
                Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
                Ok(Err(e)) => panic!("read: {e}"),
            }
        };
        let mut records = Vec::new();
        let mut at = 0;
        while bytes.len() >= at + 5 {
            let len = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
            if bytes.len() < at + 5 + len {
                break;
            }
            let (header, body) = (&bytes[at..at + 5], &bytes[at + 5..at + 5 + len]);
            // TLS 1.3 protects every record as application data; TLS 1.2
            // protects them all under their own types, after the handshake.
            records.push(if header[0] == APPLICATION_DATA || self.rx.tls12 {
                self.rx.open(header, body)
            } else {
                (header[0], body.to_vec())
            });
            at += 5 + len;
        }
        Outcome { records, end }
    }
}

async fn serve(extra: &[&str]) -> (Upstream, Server, SocketAddr) {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let metrics_flag = metrics.to_string();
    let mut args = vec!["--metrics-listen", &metrics_flag];
    args.extend_from_slice(extra);
    let server = Server::start(up.addr, &args).await;
    (up, server, metrics)
}

/// A KeyUpdate announcing 65,535 bytes, then 1-byte fragments padded to
/// 16 KB each: the records stayed in the buffer until the message was
/// complete, so one connection once held 939 MiB. Now the connection fails
/// once a handshake message holds 68 KiB of records, with `decode_error`,
/// counted, and a FIN after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_message_that_never_completes_is_refused_at_its_limit() {
    let (_up, server, metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    assert!(
        attacker
            .send(HANDSHAKE, &[24, 0x00, 0xff, 0xff], 16_000)
            .await
    );
    // 1.6 MB of fragments of one byte each; the server reads and drops
    // what follows its alert until this client closes.
    for _ in 0..100 {
        assert!(
            attacker.send(HANDSHAKE, &[1], 16_000).await,
            "the server must not reset while it lingers"
        );
    }
    attacker.finish().await.assert_fatal(DECODE_ERROR);
    let scrape = scrape(metrics).await;
    assert_eq!(value(&scrape, "dotgate_tls_handshake_too_large_total"), 1.0);
    // The server goes on serving.
    let mut client = server.client().await;
    client
        .send(&query(2, "after.attack.test.", RecordType::A))
        .await;
    assert_answer(&client.recv().await, 2, "after.attack.test.", RecordType::A);
}

/// The peak resident memory of a process (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    crate::hardening::status_kib(pid, "VmHWM")
}

/// What one connection can make the real binary hold with one handshake
/// message that never completes: 64 MB sent in padded 1-byte fragments
/// once raised the process's peak memory by as much; now the peak grows by
/// the 68 KiB limit and the scratch reads, a few MiB at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_can_make_dotgate_hold_only_the_limit() {
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    let before = peak_kib(server.pid());
    attacker
        .send(HANDSHAKE, &[24, 0x00, 0xff, 0xff], 16_000)
        .await;
    let mut sent = 0usize;
    for _ in 0..4000 {
        if !attacker.send(HANDSHAKE, &[1], 16_000).await {
            break;
        }
        sent += 16_000;
    }
    let peak = peak_kib(server.pid());
    eprintln!(
        "one connection, {sent} bytes of one handshake message: peak RSS {before} -> {peak} KiB"
    );
    attacker.finish().await.assert_fatal(DECODE_ERROR);
    assert!(
        peak - before < 8 * 1024,
        "peak memory grew by {} KiB for one connection",
        peak - before
    );
}

/// The same in TLS 1.2, with the fragments of a renegotiation ClientHello
/// (records are not padded there: one byte of message per 30 bytes sent,
/// 1.9 MB held per connection once): refused at the same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_renegotiation_hello_that_never_completes_is_refused_at_its_limit() {
    let (_up, server, metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect_with(server.addr, &server.pki, true).await;
    assert!(attacker.send(HANDSHAKE, &[1, 0x00, 0xff, 0xff], 0).await);
    let mut fragments = Vec::new();
    for _ in 0..4000 {
        fragments.extend(attacker.tx.seal(HANDSHAKE, &[3], 0));
    }
    attacker
        .tcp
        .write_all(&fragments)
        .await
        .expect("the server must not reset while it lingers");
    attacker.finish().await.assert_fatal(DECODE_ERROR);
    let scrape = scrape(metrics).await;
    assert_eq!(value(&scrape, "dotgate_tls_handshake_too_large_total"), 1.0);
}

/// The same KeyUpdate flood on a DoH connection (HTTP/1.1 after one GET):
/// hyper drops a stream that fails, so the alert must be sent before it
/// sees the error. The client gets `decode_error` and a FIN, not a reset,
/// and the listener goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doh_connection_that_fails_its_tls_gets_the_alert_and_a_fin() {
    let up = Upstream::start().await;
    let metrics = metrics_addr();
    let server = Server::start_doh(up.addr, &["--metrics-listen", &metrics.to_string()]).await;
    let doh = server.doh.expect("a DoH listener");
    for (round, h2) in [false, true].into_iter().enumerate() {
        let mut attacker = if h2 {
            Attacker::connect_h2(doh, &server.pki).await
        } else {
            Attacker::connect_doh(doh, &server.pki).await
        };
        assert!(
            attacker
                .send(HANDSHAKE, &[24, 0x00, 0xff, 0xff], 16_000)
                .await
        );
        for _ in 0..100 {
            if !attacker.send(HANDSHAKE, &[1], 16_000).await {
                break;
            }
        }
        attacker.finish().await.assert_fatal(DECODE_ERROR);
        wait_for_series(
            metrics,
            "dotgate_tls_handshake_too_large_total",
            round as f64 + 1.0,
        )
        .await;
    }
    // The listener goes on serving.
    Attacker::connect_doh(doh, &server.pki).await;
}

/// The same flood from 50 connections at once against the real binary: its
/// memory grows by a few MiB, not by the 1.8 GiB it once held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_flooding_one_handshake_message_hold_little_memory() {
    let up = Upstream::start().await;
    let server = Process::start(up.addr, &[]).await;
    let before = crate::hardening::rss_kib(server.pid());
    let mut attackers = Vec::new();
    for _ in 0..50 {
        attackers.push(Attacker::connect(server.addr, &server.pki).await);
    }
    let floods = attackers.into_iter().map(|mut attacker| async move {
        attacker
            .send(HANDSHAKE, &[24, 0x00, 0xff, 0xff], 16_000)
            .await;
        // 4 MB each, 200 MB in all, unless the server stops taking them.
        for _ in 0..250 {
            if !attacker.send(HANDSHAKE, &[1], 16_000).await {
                break;
            }
        }
        attacker
    });
    let attackers = futures_util::future::join_all(floods).await;
    let during = crate::hardening::rss_kib(server.pid());
    let grown = during.saturating_sub(before);
    // The figure for the record (`--nocapture`).
    eprintln!("50 connections x 4 MB of one handshake message: RSS {before} -> {during} KiB");
    for attacker in attackers {
        attacker.finish().await.assert_fatal(DECODE_ERROR);
    }
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB for 50 flooding connections (before {before} KiB)"
    );
}

/// Two KeyUpdates in one record made the glue call rustls again with a
/// buffer that no longer matched it: a panic inside rustls and a reset.
/// Now: rustls' own `unexpected_message`, delivered, then FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_updates_in_one_record_get_unexpected_message() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    attacker
        .send(HANDSHAKE, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0], 0)
        .await;
    attacker.finish().await.assert_fatal(UNEXPECTED_MESSAGE);
}

/// A handshake message announcing 128 KiB: rustls refuses it without an
/// alert; the glue once panicked after it. Now `decode_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_message_announcing_128_kib_gets_decode_error() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    let mut message = vec![20, 0x02, 0x00, 0x00];
    message.resize(4 + 1000, 7);
    attacker.send(HANDSHAKE, &message, 0).await;
    attacker.finish().await.assert_fatal(DECODE_ERROR);
}

/// A record that does not decrypt: rustls queues `bad_record_mac`, and the
/// close once decrypted the same record again and returned before sending
/// it. Now it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decrypt_gets_bad_record_mac() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    // Two padded records of no data first, so that the bad one is cut by
    // the server's 33 KB read and waits in its buffer (where the old close
    // decrypted it again).
    let mut bytes = attacker.tx.seal(APPLICATION_DATA, &[], 16_000);
    bytes.extend(attacker.tx.seal(APPLICATION_DATA, &[], 16_000));
    bytes.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0x08, 0x00]);
    bytes.extend((0..2048u32).map(|i| (i * 37) as u8));
    attacker.tcp.write_all(&bytes).await.unwrap();
    attacker.finish().await.assert_fatal(BAD_RECORD_MAC);
}

/// A query to a slow upstream, then a record that does not decrypt: the
/// fatal alert is the last thing the client gets. The reply was once
/// encrypted and sent after it (or, later, the alert lost behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_after_a_fatal_alert() {
    let (up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    let slow = frame(&encode(&query(2, "delay-500.attack.test.", RecordType::A)));
    assert!(attacker.send(APPLICATION_DATA, &slow, 0).await);
    // In flight once the upstream has it.
    let deadline = Instant::now() + WAIT;
    while !up
        .received()
        .iter()
        .any(|r| r.name == "delay-500.attack.test.")
    {
        assert!(
            Instant::now() < deadline,
            "the query never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut garbage = vec![APPLICATION_DATA, 3, 3, 0, 40];
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    attacker.tcp.write_all(&garbage).await.unwrap();
    attacker.finish().await.assert_fatal(BAD_RECORD_MAC);
}

/// A record whose inner plaintext is all zeros (no content type): rustls
/// refuses it without an alert; RFC 8446 §5.4 names `unexpected_message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_content_type_gets_unexpected_message() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    attacker.send(0, &[], 10).await;
    attacker.finish().await.assert_fatal(UNEXPECTED_MESSAGE);
}

/// Application data between two fragments of a handshake message: rustls
/// refuses it without an alert. Mid-message rustls answers any record but
/// a malformed one without an alert, so the alert provoked is
/// `decode_error`; what matters is that one arrives, then FIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_inside_a_fragmented_handshake_message_gets_an_alert() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    attacker.send(HANDSHAKE, &[24, 0, 0], 0).await;
    attacker
        .send(APPLICATION_DATA, b"\x00\x0cinterleaved", 0)
        .await;
    attacker.finish().await.assert_fatal(DECODE_ERROR);
}

/// A client's ClientHello as rustls writes it, grown by a padding
/// extension to `size` bytes of handshake message, in records of at most
/// 16 KiB.
fn big_client_hello(pki: &Pki, size: usize) -> Vec<u8> {
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"dot"], true);
    let name = ServerName::try_from(TLS_NAME.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut wire = Vec::new();
    conn.write_tls(&mut wire).unwrap();
    assert_eq!(wire[0], HANDSHAKE);
    let message = wire[5..].to_vec();
    assert_eq!(message[0], 1, "a ClientHello");
    // The body: version, random, session ID, suites, compression, then the
    // extensions with their 2-byte length.
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(message[at]);
    at += 2 + usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    at += 1 + usize::from(message[at]);
    let extensions_len = usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
    assert_eq!(at + 2 + extensions_len, message.len());
    let pad = size - message.len() - 4;
    let mut grown = message[..at].to_vec();
    grown.extend_from_slice(&((extensions_len + 4 + pad) as u16).to_be_bytes());
    // The padding extension first: a pre_shared_key, if any, stays last.
    grown.extend_from_slice(&[0x00, 0x15]);
    grown.extend_from_slice(&(pad as u16).to_be_bytes());
    grown.resize(grown.len() + pad, 0);
    grown.extend_from_slice(&message[at + 2..]);
    let body = (grown.len() - 4) as u32;
    grown[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
    let mut records = Vec::new();
    for chunk in grown.chunks(16_384) {
        records.extend_from_slice(&[HANDSHAKE, 3, 1]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

/// ClientHellos over two full records (18.4 KB up to the protocol's
/// 64 KiB) were refused as "message buffer full", with no alert: post-
/// quantum key shares make hellos grow. Now each gets a ServerHello; one
/// over 64 KiB gets a plaintext `decode_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hellos_up_to_64_kib_are_answered() {
    let (_up, server, _metrics) = serve(&[]).await;
    for size in [18_500, 40_000, 65_000] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&big_client_hello(&server.pki, size))
            .await
            .unwrap();
        let mut first = [0u8; 10];
        tokio::time::timeout(WAIT, tcp.read_exact(&mut first))
            .await
            .unwrap_or_else(|_| panic!("no answer to a ClientHello of {size} bytes"))
            .unwrap_or_else(|e| panic!("ClientHello of {size} bytes: {e}"));
        assert_eq!(
            (first[0], first[5]),
            (HANDSHAKE, 2),
            "a ServerHello for a ClientHello of {size} bytes"
        );
    }
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // Over 64 KiB: the rest need not all be taken.
    let _ = tcp
        .write_all(&big_client_hello(&server.pki, 65_535 + 4))
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert_eq!(answer, [ALERT, 3, 3, 0, 2, 2, DECODE_ERROR]);
}

/// A first message that is not a ClientHello: rustls refuses it without
/// an alert; the plaintext `unexpected_message` goes out instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_that_is_not_a_client_hello_gets_unexpected_message() {
    let (_up, server, _metrics) = serve(&[]).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // A well-formed KeyUpdate.
    tcp.write_all(&[HANDSHAKE, 3, 3, 0, 5, 24, 0, 0, 1, 0])
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert_eq!(answer, [ALERT, 3, 3, 0, 2, 2, UNEXPECTED_MESSAGE]);
}

/// Part of a record, and nothing more: the read timeout governs it, as it
/// governs a DNS message once begun; before, only the idle timeout did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_of_a_record_is_held_only_for_the_read_timeout() {
    let (_up, server, metrics) = serve(&["--read-timeout", "500ms", "--idle-timeout", "60s"]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    let record = attacker.tx.seal(APPLICATION_DATA, b"\x00\x0cpartial", 0);
    attacker.tcp.write_all(&record[..10]).await.unwrap();
    // The server closes on its own, cleanly: close_notify, then FIN.
    let outcome = attacker.read_to_end().await;
    assert_eq!(
        outcome.end,
        End::Eof,
        "part of a record held past the read timeout"
    );
    assert_eq!(outcome.alerts(), [(1, CLOSE_NOTIFY)]);
    // Counted when the connection's task ends, after its lingering close.
    wait_for_series(
        metrics,
        "dotgate_connections_closed_total{reason=\"read_timeout\"}",
        1.0,
    )
    .await;
}

/// A busy connection whose reads keep ending inside a record: the read
/// timeout bounds each record, not the time since the buffer was last
/// empty, so queries streamed for three times the read timeout are all
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_whose_reads_end_inside_records_is_not_timed_out() {
    let (_up, server, _metrics) = serve(&["--read-timeout", "1s"]).await;
    let mut attacker = Attacker::connect(server.addr, &server.pki).await;
    let mut pending = Vec::new();
    let start = Instant::now();
    let mut sent = 0u16;
    // Each write ends halfway through a record, for 3 s.
    while start.elapsed() < Duration::from_secs(3) && sent < 1000 {
        sent += 1;
        let name = format!("q{sent}.busy.test.");
        let query = frame(&encode(&query(sent, &name, RecordType::A)));
        let record = attacker.tx.seal(APPLICATION_DATA, &query, 0);
        let half = record.len() / 2;
        pending.extend_from_slice(&record[..half]);
        attacker.tcp.write_all(&pending).await.unwrap();
        pending = record[half..].to_vec();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attacker.tcp.write_all(&pending).await.unwrap();
    let outcome = attacker.finish().await;
    // The replies' bytes, as the client reads them, and their frames.
    let stream: Vec<u8> = outcome
        .records
        .iter()
        .filter(|(typ, _)| *typ == APPLICATION_DATA)
        .flat_map(|(_, payload)| payload.iter().copied())
        .collect();
    let mut at = 0;
    let mut ids = Vec::new();
    while stream.len() >= at + 2 {
        let len = usize::from(u16::from_be_bytes([stream[at], stream[at + 1]]));
        let reply = crate::harness::parse(&stream[at + 2..at + 2 + len]);
        ids.push(reply.metadata.id);
        at += 2 + len;
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=sent).collect::<Vec<_>>(),
        "every query answered before the close"
    );
    assert_eq!(outcome.alerts(), [(1, CLOSE_NOTIFY)]);
    assert_eq!(outcome.end, End::Eof);
}

/// A client that keeps pipelining past the server's close (here,
/// retirement after 5 queries) still reads every answer sent, then
/// close_notify and EOF, never a reset: dotgate reads and drops what
/// follows its close until the client's FIN. Before, the kernel answered
/// the unread queries with a reset, which can destroy answers the client
/// has not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_past_the_close_reads_every_answer_then_eof() {
    let (_up, server, _metrics) = serve(&["--max-queries-per-connection", "5"]).await;
    let mut client = server.client().await;
    // Queries one by one, nothing read yet: those after the fifth arrive
    // after the server has closed.
    for id in 0..20u16 {
        let name = format!("q{id}.linger.test.");
        client
            .stream
            .write_all(&frame(&encode(&query(id, &name, RecordType::A))))
            .await
            .expect("the server must not reset while it lingers");
        client.stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.stream.get_mut().0.shutdown().await.unwrap();
    let mut answered = 0;
    loop {
        match client.read(WAIT).await {
            Read::Frame(bytes) => {
                let name = format!("q{answered}.linger.test.");
                assert_answer(
                    &crate::harness::parse(&bytes),
                    answered,
                    &name,
                    RecordType::A,
                );
                answered += 1;
            }
            Read::Eof => break,
            other => panic!("after {answered} answers: {other:?} (a reset?)"),
        }
    }
    assert_eq!(answered, 5);
}

/// systemd-resolved rejects an untrusted certificate by closing, without
/// an alert; other clients send a certificate alert. Both are counted as
/// `certificate_rejected` (and logged at warn), not as a plain error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_rejects_the_certificate_is_counted_as_such() {
    let (_up, server, metrics) = serve(&[]).await;
    // A rustls client trusting another CA: it sends an alert.
    let stranger = Pki::new();
    let refused = crate::harness::Client::try_connect(server.addr, &stranger).await;
    assert!(refused.is_err());
    // A client that reads the server's flight and closes without a word.
    let config = server
        .pki
        .client_config(&[&rustls::version::TLS13], &[b"dot"], true);
    let name = ServerName::try_from(TLS_NAME.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut flight = [0u8; 512];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut flight))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0 && flight[0] == HANDSHAKE);
    drop(tcp);
    wait_for_series(
        metrics,
        "dotgate_tls_handshake_failures_total{reason=\"certificate_rejected\"}",
        2.0,
    )
    .await;
}
