//! The server side of one TLS connection, on rustls' unbuffered API, so
//! that the connection's buffers are its own and an idle one holds none.
//!
//! Why not tokio-rustls' stream: rustls' buffered `ServerConnection` keeps
//! a receive buffer of at least 4 KiB for its whole life, which was the
//! largest single part of an idle DoT connection. Here the socket is read
//! into one scratch buffer per thread, and a connection keeps only what it
//! could not finish with: the part of a record that has not all arrived,
//! decrypted bytes its reader has not taken yet, and encrypted bytes the
//! socket has not taken yet. Between messages all three are empty and hold
//! no memory.
//!
//! [`accept`] runs the handshake: it reads the ClientHello first, through a
//! throwaway [`Acceptor`], to pick the configuration (ALPN, see
//! [`super::ServerConfigs::for_client`]), then hands the same bytes to the real
//! connection. [`ServerStream`] then reads and writes like any stream.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::Arc;

use rustls::server::{Acceptor, ClientHello, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
};
use rustls::{AlertDescription, CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much one read from a socket may take: two of the largest records,
/// so that a burst of queries is decrypted in one go.
const SCRATCH: usize = 2 * (5 + 16 * 1024 + 256);

/// Encrypted bytes a writer may leave unsent before it waits for the
/// socket: a few batches of replies.
const OUTGOING_HIGH: usize = 64 * 1024;

thread_local! {
    /// Where each worker thread reads sockets into: the bytes are decrypted
    /// (or copied to the connection, for an incomplete record) before the
    /// read returns, so one buffer serves every connection of the thread.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One server-side TLS connection after its handshake.
pub struct ServerStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes not processed yet: the start of a record that has not
    /// all arrived.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader has not taken: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken: `outgoing[out_at..]`.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify: no more data will come.
    peer_closed: bool,
    /// The socket reached its end (FIN).
    eof: bool,
    /// close_notify is queued.
    closing: bool,
}

/// A client refused on its ClientHello, before anything was sent to it:
/// it gets this fatal alert instead of a ServerHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refused on the ClientHello ({0:?} sent)")]
pub struct Refused(pub AlertDescription);

/// Runs the server side of a TLS handshake on `tcp`. `choose` sees the
/// ClientHello first and picks the configuration (see
/// [`super::ServerConfigs::for_client`]) and what the caller wants to keep of the
/// hello, or refuses the client: it then gets a fatal alert and the error
/// is a [`Refused`] (kind `PermissionDenied`). The caller bounds it in time.
pub async fn accept<T>(
    mut tcp: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Result<(Arc<ServerConfig>, T), Refused>,
) -> io::Result<(ServerStream, T)> {
    // The ClientHello, read through a throwaway acceptor; its bytes are kept
    // to be processed again by the real connection.
    let mut acceptor = Acceptor::default();
    let mut hello = Vec::new();
    let (config, kept) = loop {
        let at = hello.len();
        hello.resize(at + 4096, 0);
        let n = tcp.read(&mut hello[at..]).await?;
        hello.truncate(at + n);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut fresh = &hello[at..];
        while !fresh.is_empty() {
            acceptor.read_tls(&mut fresh)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => match choose(&accepted.client_hello()) {
                Ok(chosen) => break chosen,
                Err(refused) => {
                    // A plaintext alert record, as before any ServerHello:
                    // TLS 1.2 record version, level fatal, the description.
                    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(refused.0)];
                    let _ = tcp.try_write(&alert);
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, refused));
                }
            },
            Ok(None) => continue,
            Err((e, mut alert)) => {
                let mut bytes = Vec::new();
                let _ = alert.write(&mut bytes);
                let _ = tcp.try_write(&bytes);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    };
    drop(acceptor);
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = ServerStream {
        tcp,
        conn,
        incoming: hello,
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        peer_closed: false,
        eof: false,
        closing: false,
    };
    let mut processed = stream.process_incoming();
    loop {
        if let Err(e) = processed {
            // The alert rustls queued for the error, if any, best effort.
            let _ = stream.process(&mut []);
            let _ = stream.tcp.try_write(&stream.outgoing[stream.out_at..]);
            return Err(e);
        }
        std::future::poll_fn(|cx| stream.poll_send(cx)).await?;
        if !stream.conn.is_handshaking() {
            // The ClientHello's read room is not kept for the connection's life.
            stream.incoming.shrink_to_fit();
            return Ok((stream, kept));
        }
        if stream.peer_closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // More of the client's flight is needed.
        processed = match std::future::poll_fn(|cx| stream.poll_receive(cx)).await {
            Ok(true) => Ok(()),
            Ok(false) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => Err(e),
        };
    }
}

impl ServerStream {
    /// The negotiated TLS session (version, resumption, ALPN).
    pub fn session(&self) -> &CommonState {
        &self.conn
    }

    /// Bytes of buffer this stream holds besides rustls' own state (for
    /// tests: zero between messages).
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }

    /// Processes the TLS records at the start of `bytes`: handshake
    /// messages answered into `outgoing`, application data decrypted into
    /// `plain`. Returns how many bytes were used; the rest is the start of
    /// a record that has not all arrived.
    fn process(&mut self, bytes: &mut [u8]) -> io::Result<usize> {
        let mut used = 0;
        loop {
            let status = self.conn.process_tls_records(&mut bytes[used..]);
            let discard = status.discard;
            let state = status
                .state
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let more = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    keep_plaintext(&mut self.plain, &mut traffic)?;
                    true
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode_into(&mut self.outgoing, &mut data)?;
                    true
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes wait in `outgoing` until the next send.
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    true
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    false
                }
                // Nothing more to do with these bytes.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => false,
                // Early data is never enabled, and future states are unknown.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS state",
                    ))
                }
            };
            used += discard;
            if !more {
                return Ok(used);
            }
        }
    }

    /// Reads what the socket has into the thread's scratch buffer and
    /// processes it. `Ready(Ok(false))` at the socket's end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                self.eof = true;
                return Poll::Ready(Ok(false));
            }
            if self.incoming.is_empty() {
                // The usual case: whole records, processed in place.
                let used = self.process(&mut scratch[..n])?;
                self.incoming.extend_from_slice(&scratch[used..n]);
            } else {
                self.incoming.extend_from_slice(&scratch[..n]);
                self.process_incoming()?;
            }
            Poll::Ready(Ok(true))
        })
    }

    /// Processes what `incoming` holds, keeping only the start of a record
    /// that has not all arrived, and no memory once nothing is left.
    fn process_incoming(&mut self) -> io::Result<()> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let used = self.process(&mut incoming);
        incoming.drain(..used.as_ref().copied().unwrap_or(0));
        self.incoming = if incoming.is_empty() {
            Vec::new()
        } else {
            incoming
        };
        used.map(|_| ())
    }

    /// Writes `outgoing` to the socket until all is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        // Sent: give the memory back.
        self.outgoing = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts into `outgoing`: application data, or close_notify when
    /// `data` is `None`.
    fn encrypt(&mut self, data: Option<&[u8]>) -> io::Result<()> {
        // Whatever rustls wants to send first (a key update, say) goes
        // first; then the connection is ready for application data.
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = loop {
            let status = self.conn.process_tls_records(&mut incoming);
            // Nothing is consumed from an incomplete record.
            debug_assert_eq!(status.discard, 0);
            let state = match status.state {
                Ok(state) => state,
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            match state {
                ConnectionState::EncodeTlsData(mut data) => {
                    if let Err(e) = encode_into(&mut self.outgoing, &mut data) {
                        break Err(e);
                    }
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let estimate = data.map_or(64, |d| d.len() + 64 * (1 + d.len() / 16_384));
                    break grow_into(&mut self.outgoing, estimate, |spare| {
                        let encrypted = match data {
                            Some(data) => traffic.encrypt(data, spare),
                            None => traffic.queue_close_notify(spare),
                        };
                        match encrypted {
                            Ok(n) => Ok(n),
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => Err(Some(required_size)),
                            Err(_) => Err(None),
                        }
                    })
                    .map(|_| ());
                }
                ConnectionState::ReadTraffic(mut traffic) => {
                    // Decrypted data not collected yet: keep it for the reader.
                    if let Err(e) = keep_plaintext(&mut self.plain, &mut traffic) {
                        break Err(e);
                    }
                }
                ConnectionState::PeerClosed => self.peer_closed = true,
                _ => {
                    break Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    ))
                }
            }
        };
        self.incoming = incoming;
        result
    }
}

/// Appends the application data rustls decrypted to `plain`, for the
/// reader. (`plain` is never left holding only consumed bytes: the reader
/// frees it when it takes the last of them.)
fn keep_plaintext<Data>(
    plain: &mut Vec<u8>,
    traffic: &mut ReadTraffic<'_, '_, Data>,
) -> io::Result<()> {
    while let Some(record) = traffic.next_record() {
        let record = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        plain.extend_from_slice(record.payload);
    }
    Ok(())
}

/// Appends a handshake record rustls has ready to `outgoing`.
fn encode_into<Data>(
    outgoing: &mut Vec<u8>,
    data: &mut EncodeTlsData<'_, Data>,
) -> io::Result<usize> {
    grow_into(outgoing, 1024, |spare| match data.encode(spare) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            Err(Some(required_size))
        }
        Err(EncodeError::AlreadyEncoded) => Err(None),
    })
}

/// Appends to `buf` what `fill` writes into spare room, growing the room to
/// what `fill` says it needs (`Err(Some(n))`) and retrying once.
fn grow_into(
    buf: &mut Vec<u8>,
    estimate: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<usize> {
    let start = buf.len();
    let mut room = estimate;
    for _ in 0..2 {
        buf.resize(start + room, 0);
        match fill(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(n);
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => break,
        }
    }
    buf.truncate(start);
    Err(io::Error::other("TLS could not encode its output"))
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_at);
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    // All taken: no memory kept between messages.
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // FIN without close_notify, as tokio-rustls reports it.
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Replies to the peer's handshake messages (a key update) go out
            // as soon as possible, not with the next reply.
            if this.out_at < this.outgoing.len() {
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.len() - this.out_at >= OUTGOING_HIGH {
            ready!(this.poll_send(cx))?;
        }
        this.encrypt(Some(data))?;
        // Sent now if the socket takes it; otherwise by the next flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.encrypt(None)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{TlsSettings, TlsVersion};
    use crate::tls::client::{self, Trust};
    use crate::tls::identity::self_signed;

    fn serve_all(hello: &ClientHello<'_>) -> Result<(Arc<ServerConfig>, ()), Refused> {
        Ok((configs().for_client(hello), ()))
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
        let (mut stream, ()) = accept(tcp, serve_all).await.unwrap();
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
            accept(tcp, serve_all).await.map(|_| ())
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

#[cfg(test)]
mod suite_tests {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::{CipherSuite, ClientConfig, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
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
            let (mut stream, ()) = accept(tcp, |h| Ok((configs.for_client(h), ())))
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
