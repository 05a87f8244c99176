//! The stream's own tests: echoes over both TLS versions, the buffers
//! held between messages, the close, and the server's order of suites.

mod echo {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::*;
    use crate::config::{TlsSettings, TlsVersion};
    use crate::tls::client::{self, Trust};
    use crate::tls::identity::self_signed;

    fn serve_all(hello: &ClientHello<'_>) -> Result<(Arc<ServerConfig>, ()), Refused> {
        Ok((
            configs().for_client(hello, crate::metrics::stats::Transport::Dot),
            (),
        ))
    }

    fn configs() -> crate::tls::ServerConfigs {
        let settings = TlsSettings {
            min_version: TlsVersion::Tls12,
            name: None,
            ticket_key_file: None,
        };
        crate::tls::ServerConfigs::new(&self_signed("dns.test").unwrap(), &settings).unwrap()
    }

    fn framed(len: usize, fill: u8) -> Vec<u8> {
        let mut v = (len as u16).to_be_bytes().to_vec();
        v.extend(std::iter::repeat_n(fill, len));
        v
    }

    /// A server that echoes length-prefixed messages and reports, after
    /// each echo, how much buffer its stream holds; it ends with the
    /// client's close and closes in turn.
    async fn echo_server(
        listener: TcpListener,
    ) -> (Vec<usize>, io::Result<()>, Option<rustls::ProtocolVersion>) {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut stream, ()) = accept(tcp, Duration::from_secs(10), serve_all)
            .await
            .unwrap();
        let version = stream.session().protocol_version();
        let mut held = Vec::new();
        let end = loop {
            let mut prefix = [0u8; 2];
            match stream.read_exact(&mut prefix).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break if stream.peer_closed { Ok(()) } else { Err(e) };
                }
                Err(e) => break Err(e),
            }
            let mut body = vec![0; usize::from(u16::from_be_bytes(prefix))];
            stream.read_exact(&mut body).await.unwrap();
            let mut reply = prefix.to_vec();
            reply.extend(body);
            stream.write_all(&reply).await.unwrap();
            stream.flush().await.unwrap();
            held.push(stream.buffered());
        };
        let _ = stream.shutdown().await;
        (held, end, version)
    }

    /// Whole messages, many in one record and one over several records,
    /// come back intact over both TLS versions; between messages the stream
    /// holds no buffer; close_notify ends the stream cleanly both ways.
    #[tokio::test]
    async fn echoes_whole_messages_and_holds_nothing_between_them() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(echo_server(listener));
            let config = client::tls_config(&Trust::Insecure, &[version]).unwrap();
            let mut tls = client::dial(addr, "dns.test", Arc::new(config))
                .await
                .unwrap();
            // One at a time: each is answered before the next is sent.
            for (len, fill) in [(20, 1), (40_000, 2)] {
                let sent = framed(len, fill);
                tls.write_all(&sent).await.unwrap();
                let mut back = vec![0; sent.len()];
                tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(back == sent, "echoed bytes differ");
            }
            // Pipelined: many in one record, one over several.
            let mut sent = framed(20, 1);
            sent.extend(framed(13, 2));
            sent.extend(framed(40_000, 3));
            sent.extend(framed(12, 4));
            tls.write_all(&sent).await.unwrap();
            let mut back = vec![0; sent.len()];
            tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert!(back == sent, "echoed bytes differ");
            tls.shutdown().await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest))
                .await
                .unwrap()
                .unwrap();
            assert!(rest.is_empty());
            let (held, end, negotiated) = server.await.unwrap();
            // Nothing held once a message is answered and nothing more has
            // come; while a pipeline is being read, the rest waits.
            assert_eq!(held.len(), 6);
            assert_eq!(held[..2], [0, 0], "{version:?}: held between messages");
            assert_eq!(held[5], 0, "{version:?}: held after the pipeline");
            end.unwrap();
            assert_eq!(negotiated, Some(version.version));
        }
    }

    /// A FIN without close_notify is an unexpected end, as tokio-rustls
    /// reports it, so the connection can tell it from a clean close.
    #[tokio::test]
    async fn fin_without_close_notify_is_an_unexpected_eof() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(echo_server(listener));
        let config = client::client_config(&Trust::Insecure).unwrap();
        let mut tls = client::dial(addr, "dns.test", config).await.unwrap();
        tls.write_all(&framed(12, 9)).await.unwrap();
        let mut back = [0; 14];
        tls.read_exact(&mut back).await.unwrap();
        // Close the TCP connection under TLS.
        let (tcp, _) = tls.into_inner();
        drop(tcp);
        let (held, end, _) = server.await.unwrap();
        assert_eq!(held, vec![0]);
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Garbage after a ClientHello-looking first byte fails the handshake
    /// with an error, never a hang or a panic.
    #[tokio::test]
    async fn garbage_fails_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, Duration::from_secs(10), serve_all)
                .await
                .map(|_| ())
        });
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8])
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_err());
    }
}

mod suites {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::{CipherSuite, ClientConfig, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::*;
    use crate::config::{TlsSettings, TlsVersion};
    use crate::tls::client::{self, AcceptAnyCert};
    use crate::tls::identity::self_signed;

    /// The suite a client offering `offered` (in its order of preference)
    /// gets from the server.
    async fn negotiated(
        offered: &[CipherSuite],
        version: &'static SupportedProtocolVersion,
    ) -> CipherSuite {
        let settings = TlsSettings {
            min_version: TlsVersion::Tls12,
            name: None,
            ticket_key_file: None,
        };
        let configs =
            crate::tls::ServerConfigs::new(&self_signed("dns.test").unwrap(), &settings).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut stream, ()) = accept(tcp, std::time::Duration::from_secs(10), |h| {
                Ok((
                    configs.for_client(h, crate::metrics::stats::Transport::Dot),
                    (),
                ))
            })
            .await
            .unwrap();
            let suite = stream.session().negotiated_cipher_suite().unwrap().suite();
            // Wait for the client's close.
            let _ = stream.read(&mut [0; 16]).await;
            suite
        });
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = offered
            .iter()
            .map(|want| {
                *rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| s.suite() == *want)
                    .unwrap()
            })
            .collect();
        let provider: Arc<CryptoProvider> = Arc::new(provider);
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        let mut tls = client::dial(addr, "dns.test", Arc::new(config))
            .await
            .unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        tls.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), suite);
        suite
    }

    /// The server picks AES-128-GCM over AES-256-GCM whatever the client's
    /// order, keeps ChaCha20 for a client that puts it first, and still
    /// serves a client that offers AES-256 alone.
    #[tokio::test]
    async fn the_server_orders_suites_but_keeps_chacha_first_clients() {
        use CipherSuite::*;
        let v13 = &rustls::version::TLS13;
        let v12 = &rustls::version::TLS12;
        let cases: [(
            &[CipherSuite],
            &'static SupportedProtocolVersion,
            CipherSuite,
        ); 7] = [
            // OpenSSL's default order (Python, stubby): ChaCha20 is not first.
            (
                &[
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_CHACHA20_POLY1305_SHA256,
                    TLS13_AES_128_GCM_SHA256,
                ],
                v13,
                TLS13_AES_128_GCM_SHA256,
            ),
            (
                &[
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_AES_128_GCM_SHA256,
                    TLS13_CHACHA20_POLY1305_SHA256,
                ],
                v13,
                TLS13_AES_128_GCM_SHA256,
            ),
            (
                &[
                    TLS13_CHACHA20_POLY1305_SHA256,
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_AES_128_GCM_SHA256,
                ],
                v13,
                TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (&[TLS13_AES_256_GCM_SHA384], v13, TLS13_AES_256_GCM_SHA384),
            (
                &[
                    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                v12,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
            (
                &[
                    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                v12,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ),
            (
                &[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384],
                v12,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ),
        ];
        for (offered, version, expected) in cases {
            assert_eq!(
                negotiated(offered, version).await,
                expected,
                "offered {offered:?}"
            );
        }
    }
}
