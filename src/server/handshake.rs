//! From an accepted TCP socket to a TLS stream: plaintext refusal (R1) and
//! the handshake, both under the handshake timeout, in the connection's own
//! task (never in the accept loop, where one slow client would stall all).

use std::time::Duration;

use tokio::net::TcpStream;

use crate::tls::server_stream::{self, ServerStream};
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
    #[error("handshake failed: {0}")]
    Tls(std::io::Error),
}

/// Checks the first byte and runs the TLS handshake within `limit`.
///
/// The stream comes boxed: a TLS stream is over a kilobyte, and a
/// connection's task would otherwise carry it several times over (each
/// `async fn` that takes it by value keeps its own copy in its state).
pub async fn accept_tls(
    tcp: TcpStream,
    configs: &ServerConfigs,
    limit: Duration,
) -> Result<Box<ServerStream>, HandshakeError> {
    let handshake = async {
        let mut first = [0u8; 1];
        let peeked = tcp.peek(&mut first).await.map_err(HandshakeError::Tls)?;
        if peeked == 0 {
            return Err(HandshakeError::ClosedEarly);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Err(HandshakeError::Plaintext(first[0]));
        }
        let tls = server_stream::accept(tcp, configs)
            .await
            .map_err(HandshakeError::Tls)?;
        Ok(Box::new(tls))
    };
    tokio::time::timeout(limit, handshake)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}
