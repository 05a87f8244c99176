//! The network side of `dotgate check`: TCP and TLS connections made the way
//! real clients make them, DNS exchanges over them, and a plaintext probe.
//! Every step here takes a time limit; nothing waits unbounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RecordType};
use rustls::{ClientConfig, ClientConnection};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::proto::dns;
use crate::proto::edns::{KEEPALIVE, PADDING};
use crate::proto::framing::{FrameError, FrameReader};
use crate::tools::query::{self, DialError};

/// How long one step may take at most; the overall deadline may cut it
/// shorter.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// systemd-resolved gives up on a handshake after 10 s; a healthy server
/// completes one in a few round trips.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the plaintext probe waits for a reply it should never get.
pub const PLAINTEXT_TIMEOUT: Duration = Duration::from_secs(3);

/// The overall deadline of the command: steps get what is left of it.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Budget {
        Budget {
            deadline: Instant::now() + total,
        }
    }

    /// The time a step may take: `step`, or what is left when that is less.
    /// `None` when too little is left to try.
    pub fn limit(&self, step: Duration) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (left >= Duration::from_millis(200)).then(|| step.min(left))
    }

    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The overall deadline passed before the step could start.
    OutOfTime,
    /// TCP connect failed.
    Tcp(std::io::Error),
    /// TCP connect did not complete in time.
    TcpTimeout(Duration),
    /// The TLS handshake failed.
    Tls(std::io::Error),
    /// The TLS handshake did not complete in time.
    TlsTimeout(Duration),
}

impl ConnectError {
    /// The rustls error behind a failed handshake, if that is what it was.
    pub fn rustls(&self) -> Option<&rustls::Error> {
        match self {
            ConnectError::Tls(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }

    /// True when the handshake itself failed or stalled (TCP worked).
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls(_) | ConnectError::TlsTimeout(_))
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rustls::AlertDescription as A;
        match self {
            ConnectError::OutOfTime => f.write_str("not tried: out of time"),
            ConnectError::Tcp(e) => write!(f, "TCP connection failed ({e})"),
            ConnectError::TcpTimeout(t) => {
                write!(
                    f,
                    "TCP connection not accepted within {} s",
                    t.as_secs_f32()
                )
            }
            ConnectError::TlsTimeout(t) => write!(
                f,
                "the server did not answer the TLS ClientHello within {} s",
                t.as_secs_f32()
            ),
            ConnectError::Tls(e) => match self.rustls() {
                Some(rustls::Error::AlertReceived(A::ProtocolVersion)) => {
                    f.write_str("the server refused the TLS version (protocol_version alert)")
                }
                Some(rustls::Error::AlertReceived(A::HandshakeFailure)) => f.write_str(
                    "the server refused the handshake (handshake_failure alert: no common \
                     version, cipher suite, group or signature scheme)",
                ),
                Some(rustls::Error::AlertReceived(A::NoApplicationProtocol)) => f.write_str(
                    "the server refused the ALPN offered (no_application_protocol alert)",
                ),
                Some(rustls::Error::AlertReceived(alert)) => {
                    write!(f, "the server ended the handshake with a {alert:?} alert")
                }
                Some(
                    rustls::Error::InvalidMessage(_)
                    | rustls::Error::InappropriateMessage { .. }
                    | rustls::Error::InappropriateHandshakeMessage { .. },
                ) => f.write_str("the server's answer is not TLS"),
                Some(other) => write!(f, "TLS error: {other}"),
                None => match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        f.write_str("the server closed the connection during the handshake")
                    }
                    std::io::ErrorKind::ConnectionReset => {
                        f.write_str("the server reset the connection during the handshake")
                    }
                    _ => write!(f, "the handshake failed ({e})"),
                },
            },
        }
    }
}

/// TCP connect within the budget.
pub async fn tcp_connect(addr: SocketAddr, budget: &Budget) -> Result<TcpStream, ConnectError> {
    let limit = budget
        .limit(CONNECT_TIMEOUT)
        .ok_or(ConnectError::OutOfTime)?;
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(ConnectError::Tcp(e)),
        Err(_) => Err(ConnectError::TcpTimeout(limit)),
    }
}

/// A DoT connection: a TLS stream read as length-prefixed frames.
pub struct Conn {
    reader: FrameReader<TlsStream<TcpStream>>,
    /// How long the TLS handshake took.
    pub handshake_time: Duration,
}

/// TCP connect, then the TLS handshake for `name` with `config`.
pub async fn connect(
    addr: SocketAddr,
    name: &ServerName<'static>,
    config: Arc<ClientConfig>,
    budget: &Budget,
) -> Result<Conn, ConnectError> {
    let (stream, handshake_time) = connect_tls(addr, name, config, budget).await?;
    Ok(Conn {
        reader: FrameReader::new(stream),
        handshake_time,
    })
}

/// As [`connect`], the TLS stream itself and the handshake's time (for
/// HTTP on top, `dotgate check https://...`).
pub async fn connect_tls(
    addr: SocketAddr,
    name: &ServerName<'static>,
    config: Arc<ClientConfig>,
    budget: &Budget,
) -> Result<(TlsStream<TcpStream>, Duration), ConnectError> {
    let tcp = tcp_connect(addr, budget).await?;
    let limit = budget
        .limit(HANDSHAKE_TIMEOUT)
        .ok_or(ConnectError::OutOfTime)?;
    let started = Instant::now();
    match tokio::time::timeout(limit, query::handshake(tcp, name.clone(), config)).await {
        Ok(Ok(stream)) => Ok((stream, started.elapsed())),
        Ok(Err(DialError::Handshake { source, .. })) => Err(ConnectError::Tls(source)),
        Ok(Err(DialError::Io(e))) => Err(ConnectError::Tls(e)),
        Ok(Err(other)) => Err(ConnectError::Tls(std::io::Error::other(other.to_string()))),
        Err(_) => Err(ConnectError::TlsTimeout(limit)),
    }
}

/// What reading a reply gave.
#[derive(Debug)]
pub enum Recv {
    Frame(Vec<u8>),
    /// The server closed the connection (cleanly or not) between messages.
    Closed,
    /// The connection failed, or closed inside a message.
    Error(String),
    Timeout,
}

impl Conn {
    pub fn tls(&self) -> &ClientConnection {
        self.reader.get_ref().get_ref().1
    }

    /// Writes already-framed bytes in one write and flushes them.
    pub async fn send_raw(&mut self, bytes: &[u8], budget: &Budget) -> Result<(), String> {
        let limit = budget
            .limit(REPLY_TIMEOUT)
            .ok_or_else(|| "out of time".to_string())?;
        let stream = self.reader.get_mut();
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot send ({e})")),
            Err(_) => Err("cannot send: the server does not read".into()),
        }
    }

    /// Sends one message with its length prefix.
    pub async fn send(&mut self, msg: &[u8], budget: &Budget) -> Result<(), String> {
        self.send_raw(&dns::frame(msg), budget).await
    }

    /// Reads the next frame, waiting at most `limit`.
    pub async fn recv(&mut self, limit: Duration) -> Recv {
        match tokio::time::timeout(limit, self.reader.read_frame()).await {
            Err(_) => Recv::Timeout,
            Ok(Ok(Some(frame))) => Recv::Frame(frame),
            Ok(Ok(None)) => Recv::Closed,
            Ok(Err(FrameError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Recv::Closed
            }
            Ok(Err(e)) => Recv::Error(e.to_string()),
        }
    }

    /// Sends `msg` and waits for the reply with its ID (other frames are
    /// skipped), within the reply timeout and the budget.
    pub async fn exchange(&mut self, msg: &[u8], budget: &Budget) -> Result<Vec<u8>, String> {
        self.send(msg, budget).await?;
        let limit = budget
            .limit(REPLY_TIMEOUT)
            .ok_or_else(|| "out of time".to_string())?;
        let deadline = Instant::now() + limit;
        let id = dns::id(msg);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Recv::Frame(frame) if dns::id(&frame) == id => return Ok(frame),
                Recv::Frame(_) => continue,
                Recv::Closed => {
                    return Err("the server closed the connection without a reply".into())
                }
                Recv::Error(e) => return Err(format!("the connection failed ({e})")),
                Recv::Timeout => {
                    return Err(format!("no reply within {:.1} s", limit.as_secs_f32()))
                }
            }
        }
    }

    /// Sends close_notify and closes, without waiting long.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.reader.get_mut().shutdown())
            .await;
    }
}

// ---------- queries ----------

/// A random label of 8 lower-case letters and digits.
pub fn random_label() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
        .collect()
}

/// A query with RD set; with `options`, an OPT record (payload 1232)
/// carrying them. Padding, if asked for, is sized last so that the query is a
/// multiple of 128 bytes, as Android, stubby and kdig pad.
pub fn query(
    id: u16,
    name: &str,
    rtype: RecordType,
    options: Option<&[(u16, Vec<u8>)]>,
) -> Vec<u8> {
    let build = |options: Option<&[(u16, Vec<u8>)]>| {
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.metadata.recursion_desired = true;
        let name = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
        msg.add_query(Query::query(name, rtype));
        if let Some(options) = options {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            for (code, data) in options {
                edns.options_mut()
                    .insert(EdnsOption::Unknown(*code, data.clone()));
            }
            msg.set_edns(edns);
        }
        msg.to_vec().unwrap_or_default()
    };
    let Some(options) = options else {
        return build(None);
    };
    let Some(pad_at) = options.iter().position(|(code, _)| *code == PADDING) else {
        return build(Some(options));
    };
    let mut options = options.to_vec();
    options[pad_at].1.clear();
    let len = build(Some(&options)).len();
    options[pad_at].1 = vec![0; (128 - len % 128) % 128];
    build(Some(&options))
}

/// The option codes this module asks for.
pub fn keepalive_option() -> (u16, Vec<u8>) {
    (KEEPALIVE, Vec::new())
}

pub fn padding_option() -> (u16, Vec<u8>) {
    (PADDING, Vec::new())
}

/// The header of a reply, read from the bytes (so that a reply hickory
/// cannot parse is still judged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    pub qdcount: u16,
    pub ancount: u16,
}

pub fn header(msg: &[u8]) -> Option<Header> {
    let h = msg.get(..dns::HEADER_LEN)?;
    Some(Header {
        id: u16::from_be_bytes([h[0], h[1]]),
        response: h[2] & 0x80 != 0,
        rcode: h[3] & 0x0f,
        qdcount: u16::from_be_bytes([h[4], h[5]]),
        ancount: u16::from_be_bytes([h[6], h[7]]),
    })
}

/// The name of a header RCODE.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE {other}"),
    }
}

/// The addresses (A and AAAA) in a reply's answer section.
pub fn addresses(reply: &[u8]) -> Vec<String> {
    let Ok(msg) = Message::from_vec(reply) else {
        return Vec::new();
    };
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
            hickory_proto::rr::RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// The data of EDNS option `code` in a reply's OPT record: `None` without
/// an OPT record or without that option.
pub fn option_data(reply: &[u8], code: u16) -> Option<Vec<u8>> {
    let msg = Message::from_vec(reply).ok()?;
    let edns = msg.edns?;
    edns.options()
        .as_ref()
        .iter()
        .find_map(|(_, option)| match option {
            EdnsOption::Unknown(c, data) if *c == code => Some(data.clone()),
            _ => None,
        })
}

// ---------- the plaintext probe (R1) ----------

/// What a plain DNS query over TCP got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plaintext {
    /// A DNS reply to the query: the port serves cleartext DNS.
    Answered { rcode: u8 },
    /// The connection was closed (or reset) without a DNS reply.
    Closed,
    /// Bytes that are not a DNS reply (e.g. a TLS alert), then a close or
    /// silence.
    Refused { first_byte: u8 },
    /// Nothing at all within the wait.
    Silent(Duration),
    /// The probe could not be made.
    NotTried(String),
}

/// Sends one plain DNS query over TCP and waits briefly for a reply.
pub async fn plaintext_probe(addr: SocketAddr, name: &str, budget: &Budget) -> Plaintext {
    let mut tcp = match tcp_connect(addr, budget).await {
        Ok(tcp) => tcp,
        Err(e) => return Plaintext::NotTried(e.to_string()),
    };
    let id: u16 = rand::random();
    let msg = query(id, name, RecordType::A, None);
    if let Err(e) = tcp.write_all(&dns::frame(&msg)).await {
        // A server that resets at once refused it.
        return match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                Plaintext::Closed
            }
            _ => Plaintext::NotTried(format!("cannot send ({e})")),
        };
    }
    let Some(limit) = budget.limit(PLAINTEXT_TIMEOUT) else {
        return Plaintext::NotTried("out of time".into());
    };
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        if got.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([got[0], got[1]]));
            if got.len() >= 2 + len {
                let body = &got[2..2 + len];
                if let Some(h) = header(body) {
                    if h.id == id && h.response {
                        return Plaintext::Answered { rcode: h.rcode };
                    }
                }
                return Plaintext::Refused { first_byte: got[0] };
            }
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return match got.first() {
                    None => Plaintext::Closed,
                    Some(b) => Plaintext::Refused { first_byte: *b },
                }
            }
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return match got.first() {
                    None => Plaintext::Silent(limit),
                    Some(b) => Plaintext::Refused { first_byte: *b },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_queries_are_multiples_of_128() {
        for name in [
            "a.example.",
            "a-much-longer-name.with.several.labels.example.",
        ] {
            let q = query(7, name, RecordType::A, Some(&[padding_option()]));
            assert_eq!(q.len() % 128, 0, "{name}: {}", q.len());
            let msg = Message::from_vec(&q).unwrap();
            assert!(msg.edns.is_some());
            let q = query(
                7,
                name,
                RecordType::A,
                Some(&[keepalive_option(), padding_option()]),
            );
            assert_eq!(q.len() % 128, 0);
        }
        let plain = query(9, "a.example.", RecordType::AAAA, None);
        let h = header(&plain).unwrap();
        assert_eq!((h.id, h.response, h.qdcount), (9, false, 1));
        assert!(Message::from_vec(&plain).unwrap().edns.is_none());
    }

    #[test]
    fn labels_are_random_and_plain() {
        let a = random_label();
        assert_eq!(a.len(), 8);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, random_label());
    }

    #[tokio::test]
    async fn budget_cuts_steps_short() {
        let budget = Budget::new(Duration::from_secs(1));
        let limit = budget.limit(Duration::from_secs(5)).unwrap();
        assert!(limit <= Duration::from_secs(1));
        assert_eq!(
            Budget::new(Duration::ZERO).limit(Duration::from_secs(5)),
            None
        );
    }
}
