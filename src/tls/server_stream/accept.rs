//! The server side of a TLS handshake: the ClientHello read through a
//! throwaway [`Acceptor`] (to pick the configuration, or refuse the client
//! before a ServerHello), then the rest driven by [`ServerStream`]'s state
//! machine; a failed handshake sends its alert, FIN, and lingers. A client
//! that closes right after the certificate is told apart (it likely does
//! not trust it).

use super::*;

/// A client refused on its ClientHello, before anything was sent to it:
/// it gets this fatal alert instead of a ServerHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refused on the ClientHello ({0:?} sent)")]
pub struct Refused(pub AlertDescription);

/// Why a handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Refused(Refused),
    /// The client closed, or sent a certificate alert, right after the
    /// server's certificate: the classic sign of a client that does not
    /// trust it (systemd-resolved closes without an alert).
    #[error(
        "the client {0} after our certificate: it probably does not trust it (try `dotgate check`)"
    )]
    CertificateRejected(String),
    #[error("closed during the handshake")]
    ClosedEarly,
    #[error(transparent)]
    Io(io::Error),
}

impl AcceptError {
    /// The handshake failed for a handshake message over [`MAX_HELD`].
    pub fn too_large(&self) -> bool {
        matches!(self, AcceptError::Io(e) if TlsFailure::of(e) == Some(&TlsFailure::HandshakeTooLarge))
    }
}

impl From<io::Error> for AcceptError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            AcceptError::ClosedEarly
        } else {
            AcceptError::Io(e)
        }
    }
}

/// Runs the server side of a TLS handshake on `tcp`. `choose` sees the
/// ClientHello first and picks the configuration (see
/// [`crate::tls::ServerConfigs::for_client`]) and what the caller wants to keep of the
/// hello, or refuses the client: it then gets a fatal alert and the error
/// is [`AcceptError::Refused`]. `read_timeout` bounds, after the
/// handshake, how long part of a record may wait for the rest. The caller
/// bounds the handshake in time; a failed one sends its alert and FIN and
/// lingers (within that bound) before it returns.
pub async fn accept<S, T>(
    tcp: S,
    read_timeout: Duration,
    choose: impl FnOnce(&ClientHello<'_>) -> Result<(Arc<ServerConfig>, T), Refused>,
) -> Result<(ServerStream<S>, T), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tcp, hello, config, kept) = match read_hello(tcp, choose).await? {
        HelloRead::Chosen(tcp, hello, config, kept) => (tcp, hello, config, kept),
        HelloRead::Refuse(mut tcp, alert, error) => {
            let _ = tcp.write_all(&alert).await;
            let _ = tcp.shutdown().await;
            linger(&mut tcp).await;
            return Err(error);
        }
    };
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = ServerStream {
        tcp,
        conn,
        incoming: hello,
        held: 0,
        plain: Vec::new(),
        plain_at: 0,
        outgoing: Vec::new(),
        out_at: 0,
        peer_closed: false,
        eof: false,
        close: Close::Open,
        failed: None,
        timer: None,
        read_timeout,
    };
    match stream.handshake().await {
        Ok(()) => {
            // The ClientHello's read room is not kept for the connection's life.
            stream.incoming.shrink_to_fit();
            Ok((stream, kept))
        }
        Err(e) => {
            // The alert (if any) and FIN, then the client's last bytes
            // read, so no reset destroys the alert.
            let _ = stream.shutdown().await;
            Err(e)
        }
    }
}

/// What the ClientHello led to.
enum HelloRead<S, T> {
    /// The hello's bytes (for the real connection to process again), the
    /// configuration and what `choose` kept.
    Chosen(S, Vec<u8>, Arc<ServerConfig>, T),
    /// Refused before any keys exist: the plaintext alert to send.
    Refuse(S, Vec<u8>, AcceptError),
}

/// Reads the ClientHello through a throwaway [`Acceptor`], keeping its
/// bytes for the real connection to process again. `accept()` follows each
/// `read_tls`, so the acceptor knows a handshake message is being joined
/// and takes one of up to 64 KiB (without it, a hello over two full
/// records was refused as "message buffer full").
async fn read_hello<S: AsyncRead + Unpin, T>(
    mut tcp: S,
    choose: impl FnOnce(&ClientHello<'_>) -> Result<(Arc<ServerConfig>, T), Refused>,
) -> Result<HelloRead<S, T>, AcceptError> {
    let mut acceptor = Acceptor::default();
    let mut hello = Vec::new();
    loop {
        let at = hello.len();
        hello.resize(at + 16 * 1024, 0);
        let n = tcp.read(&mut hello[at..]).await?;
        hello.truncate(at + n);
        if n == 0 {
            return Err(AcceptError::ClosedEarly);
        }
        let mut fresh = &hello[at..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                // Over the acceptor's 64 KiB for a ClientHello.
                let alert = records::plaintext_alert(AlertDescription::DecodeError).to_vec();
                let failed = Failed {
                    cause: TlsFailure::HandshakeTooLarge,
                    alert_sent: true,
                };
                return Ok(HelloRead::Refuse(tcp, alert, AcceptError::Io(failed.io())));
            }
            match acceptor.accept() {
                Ok(None) => {}
                Ok(Some(accepted)) => {
                    return Ok(match choose(&accepted.client_hello()) {
                        Ok((config, kept)) => HelloRead::Chosen(tcp, hello, config, kept),
                        Err(refused) => {
                            let alert = records::plaintext_alert(refused.0).to_vec();
                            HelloRead::Refuse(tcp, alert, AcceptError::Refused(refused))
                        }
                    });
                }
                Err((error, mut alert)) => {
                    let mut bytes = Vec::new();
                    let _ = alert.write(&mut bytes);
                    if bytes.is_empty() {
                        // rustls queued none (a first message that is not
                        // a ClientHello, say): the one the RFC names.
                        bytes = records::plaintext_alert(hello_alert(&error)).to_vec();
                    }
                    let failed = Failed {
                        cause: TlsFailure::Protocol(error),
                        alert_sent: true,
                    };
                    return Ok(HelloRead::Refuse(tcp, bytes, AcceptError::Io(failed.io())));
                }
            }
        }
    }
}

/// The plaintext alert for a ClientHello rustls refused without one.
fn hello_alert(error: &RustlsError) -> AlertDescription {
    match error {
        RustlsError::InvalidMessage(_) => AlertDescription::DecodeError,
        _ => AlertDescription::UnexpectedMessage,
    }
}

/// After a refusal's alert and FIN: reads and discards what the client
/// still sends until it closes, for at most [`LINGER`], so that closing
/// with unread bytes does not answer the client with a reset that could
/// destroy the alert before it is read.
async fn linger<S: AsyncRead + Unpin>(tcp: &mut S) {
    let mut sink = [0u8; 2048];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The certificate alert a client sent, if that is why `e` ended the
/// handshake.
fn certificate_alert(e: &io::Error) -> Option<AlertDescription> {
    match TlsFailure::of(e)? {
        TlsFailure::Protocol(RustlsError::AlertReceived(alert)) => match alert {
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            // A signature in the chain (or ours) that does not verify.
            | AlertDescription::DecryptError => Some(*alert),
            _ => None,
        },
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerStream<S> {
    /// The handshake after the ClientHello: flights out, the client's in,
    /// until rustls says it is done.
    async fn handshake(&mut self) -> Result<(), AcceptError> {
        let mut processed = self.pump(Then::Read);
        // Flights sent, and whether the client sent anything since the last.
        let mut flights = 0u32;
        let mut heard = true;
        loop {
            if let Err(e) = processed {
                if let Some(TlsFailure::Protocol(RustlsError::AlertReceived(
                    AlertDescription::CloseNotify,
                ))) = TlsFailure::of(&e)
                {
                    return Err(AcceptError::ClosedEarly);
                }
                return Err(match certificate_alert(&e) {
                    Some(alert) if self.sent_certificate(flights) => {
                        AcceptError::CertificateRejected(format!("sent the alert {alert:?}"))
                    }
                    _ => e.into(),
                });
            }
            if self.out_at < self.outgoing.len() {
                std::future::poll_fn(|cx| self.poll_send(cx)).await?;
                flights += 1;
                heard = false;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.peer_closed {
                return Err(AcceptError::ClosedEarly);
            }
            // More of the client's flight is needed.
            let after_certificate = !heard && self.sent_certificate(flights);
            processed = match std::future::poll_fn(|cx| self.poll_receive(cx)).await {
                Ok(true) => {
                    heard = true;
                    Ok(())
                }
                Ok(false) if after_certificate => {
                    return Err(AcceptError::CertificateRejected(
                        "closed the connection".into(),
                    ))
                }
                Ok(false) => return Err(AcceptError::ClosedEarly),
                Err(e) if after_certificate && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(AcceptError::CertificateRejected(
                        "reset the connection".into(),
                    ))
                }
                Err(e) => Err(e),
            };
        }
    }

    /// Whether the flights sent so far included the certificate (a full
    /// handshake's first flight, or its second after a HelloRetryRequest).
    fn sent_certificate(&self, flights: u32) -> bool {
        match self.conn.handshake_kind() {
            Some(HandshakeKind::Full) => flights >= 1,
            Some(HandshakeKind::FullWithHelloRetryRequest) => flights >= 2,
            _ => false,
        }
    }
}
