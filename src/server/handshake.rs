//! From an accepted TCP socket to a TLS stream: plaintext refusal (R1) and
//! the handshake, both under the handshake timeout, in the connection's own
//! task (never in the accept loop, where one slow client would stall all).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::stats::Transport;
use crate::server::client_ids::{ClientIds, Judgement, REFUSAL_ALERT};
use crate::tls::server_stream::{self, AcceptError, Refused, ServerStream};
use crate::tls::ServerConfigs;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("first byte {0:#04x} is not a TLS handshake: plaintext refused")]
    Plaintext(u8),
    #[error("closed before the handshake")]
    ClosedEarly,
    #[error("handshake timed out")]
    Timeout,
    #[error("no listed client ID in the TLS server name {0:?}: handshake refused")]
    NoClientId(Option<String>),
    /// The client closed, reset or sent a certificate alert right after
    /// our certificate: it most likely does not trust it.
    #[error("handshake failed: {0}")]
    CertificateRejected(AcceptError),
    #[error("handshake failed: {0}")]
    Tls(AcceptError),
}

/// What the ClientHello told of the client.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// The TLS server name (SNI) it asked for.
    pub server_name: Option<Arc<str>>,
    /// The client ID in that name, under `--client-id-domain`.
    pub id: Option<Arc<str>>,
}

/// Checks the first byte and runs the TLS handshake within `limit`, with the
/// configurations of `transport`. A DoT client without a listed ID (when
/// `ids` is private) is refused with an alert on its ClientHello; a DoH
/// client is not, since its ID may be in the request's path instead: each
/// of its requests is judged (`server::doh`).
///
/// The stream comes boxed: a TLS stream is over a kilobyte, and a
/// connection's task would otherwise carry it several times over (each
/// `async fn` that takes it by value keeps its own copy in its state).
pub async fn accept_tls(
    tcp: TcpStream,
    configs: &ServerConfigs,
    ids: &ClientIds,
    limit: Duration,
    read_timeout: Duration,
    transport: Transport,
) -> Result<(Box<ServerStream>, Hello), HandshakeError> {
    let handshake = async {
        let mut first = [0u8; 1];
        let peeked = tcp
            .peek(&mut first)
            .await
            .map_err(|e| HandshakeError::Tls(AcceptError::Io(e)))?;
        if peeked == 0 {
            return Err(HandshakeError::ClosedEarly);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Err(HandshakeError::Plaintext(first[0]));
        }
        let mut refused_name = None;
        let accepted = server_stream::accept(tcp, read_timeout, |hello| {
            let server_name = hello.server_name();
            let judged = match (ids.judge(server_name), transport) {
                (Judgement::Refuse, Transport::Doh) => Judgement::Admit(None),
                (judged, _) => judged,
            };
            match judged {
                Judgement::Admit(id) => Ok((
                    configs.for_client(hello, transport),
                    Hello {
                        server_name: server_name.map(Arc::from),
                        id,
                    },
                )),
                Judgement::Refuse => {
                    refused_name = Some(server_name.map(str::to_string));
                    Err(Refused(REFUSAL_ALERT))
                }
            }
        })
        .await;
        match accepted {
            Ok((tls, hello)) => Ok((Box::new(tls), hello)),
            Err(_) if refused_name.is_some() => {
                Err(HandshakeError::NoClientId(refused_name.flatten()))
            }
            Err(AcceptError::ClosedEarly) => Err(HandshakeError::ClosedEarly),
            Err(e @ AcceptError::CertificateRejected(_)) => {
                Err(HandshakeError::CertificateRejected(e))
            }
            Err(e) => Err(HandshakeError::Tls(e)),
        }
    };
    tokio::time::timeout(limit, handshake)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}
