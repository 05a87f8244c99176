//! The client behind `dotgate query`: one verified TLS connection, every
//! question sent at once without waiting, replies matched by ID and
//! question. Over DoT the questions are pipelined (as RFC 7858 intends) and
//! replies taken in whatever order they arrive; over DoH ([`ask_https`])
//! each is its own request, HTTP/2 streams side by side.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proto::dns;
use crate::proto::framing::FrameReader;
pub use crate::tls::client::{
    client_config, dial, handshake, roots_from_file, system_roots, tls_config, DialError, Trust,
    TrustError,
};
use crate::tools::doh::{DohClient, HttpReply};

/// Port of DNS over TLS (RFC 7858 §3.1).
pub const DOT_PORT: u16 = 853;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server {0:?}: write @IP, @IP:PORT, @[IPv6]:PORT or @NAME[:PORT]")]
    BadServer(String),
    #[error("cannot resolve server {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{0:?} is not a domain name")]
    BadName(String),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A server as written on the command line: `@HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: String,
    pub port: u16,
}

impl FromStr for ServerSpec {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClientError::BadServer(s.to_string());
        let rest = s.strip_prefix('@').unwrap_or(s);
        if rest.is_empty() {
            return Err(bad());
        }
        if let Ok(addr) = rest.parse::<SocketAddr>() {
            return Ok(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let unbracketed = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Ok(ip) = unbracketed.unwrap_or(rest).parse::<IpAddr>() {
            return Ok(Self {
                host: ip.to_string(),
                port: DOT_PORT,
            });
        }
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => Ok(Self {
                host: host.to_string(),
                port: port.parse().map_err(|_| bad())?,
            }),
            Some(_) => Err(bad()),
            None => Ok(Self {
                host: rest.to_string(),
                port: DOT_PORT,
            }),
        }
    }
}

/// Resolves the server spec to socket addresses (an IP literal needs no lookup).
pub async fn resolve(spec: &ServerSpec) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(ip) = spec.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, spec.port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((spec.host.as_str(), spec.port))
        .await
        .map_err(|e| ClientError::Resolve {
            host: spec.host.clone(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::Resolve {
            host: spec.host.clone(),
            reason: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// One question to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub rtype: RecordType,
}

/// Reads `NAME [TYPE] [NAME [TYPE]]...`: a word that is a record type name
/// belongs to the name before it.
pub fn parse_questions(words: &[String]) -> Result<Vec<Question>, ClientError> {
    let mut out: Vec<Question> = Vec::new();
    let mut words = words.iter().peekable();
    while let Some(word) = words.next() {
        let name = Name::from_utf8(word).map_err(|_| ClientError::BadName(word.clone()))?;
        let rtype = match words
            .peek()
            .and_then(|w| RecordType::from_str(&w.to_ascii_uppercase()).ok())
        {
            Some(rtype) => {
                words.next();
                rtype
            }
            None => RecordType::A,
        };
        out.push(Question { name, rtype });
    }
    Ok(out)
}

/// The outcome of one question.
#[derive(Debug)]
pub struct Answer {
    pub question: Question,
    /// The reply and the time from sending all queries to its arrival.
    pub reply: Option<(Message, Duration)>,
    /// Why there is no reply, when more is known than that none came (an
    /// HTTP status, a content type).
    pub failure: Option<String>,
}

/// The query for `q` with ID `id` and RD set, and the wire bytes of its
/// question (to match the reply's against).
fn encode_question(q: &Question, id: u16) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(q.name.clone(), q.rtype));
    let bytes = msg
        .to_vec()
        .map_err(|e| ClientError::Encode(e.to_string()))?;
    let question = dns::parse_query(&bytes)
        .map(|info| bytes[info.question].to_vec())
        .map_err(|e| ClientError::Encode(e.to_string()))?;
    Ok((bytes, question))
}

/// Sends every question at once over `stream`, then reads replies until all
/// have arrived or `timeout` passes. IDs are distinct per connection.
pub async fn pipeline(
    stream: TlsStream<TcpStream>,
    questions: &[Question],
    timeout: Duration,
) -> Result<Vec<Answer>, ClientError> {
    let mut out = Vec::with_capacity(questions.len() * 64);
    // ID -> (question index, the question's wire bytes).
    let mut waiting: HashMap<u16, (usize, Vec<u8>)> = HashMap::new();
    let first_id: u16 = rand::random();
    for (index, q) in questions.iter().enumerate() {
        let id = first_id.wrapping_add(index as u16);
        let (bytes, question) = encode_question(q, id)?;
        out.extend_from_slice(&dns::frame(&bytes));
        waiting.insert(id, (index, question));
    }
    let (read_half, mut write_half) = tokio::io::split(stream);
    let started = Instant::now();
    write_half.write_all(&out).await?;
    write_half.flush().await?;
    let mut answers: Vec<Answer> = questions
        .iter()
        .map(|q| Answer {
            question: q.clone(),
            reply: None,
            failure: None,
        })
        .collect();
    let mut reader: FrameReader<ReadHalf<_>> = FrameReader::new(read_half);
    let read_all = async {
        while !waiting.is_empty() {
            let Some(frame) = reader.read_frame().await? else {
                break;
            };
            // The same rule as the upstreams: the ID and the question must
            // both match (RFC 5452); anything else is ignored.
            let id = dns::id(&frame);
            let matches = waiting.get(&id).is_some_and(|(_, question)| {
                dns::match_reply(&frame, question) != dns::ReplyMatch::Mismatch
            });
            let Some((index, _)) = matches.then(|| waiting.remove(&id)).flatten() else {
                continue;
            };
            if let Ok(msg) = Message::from_vec(&frame) {
                answers[index].reply = Some((msg, started.elapsed()));
            }
        }
        Ok::<(), crate::proto::framing::FrameError>(())
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection ended while reading replies"),
    }
    // Polite close: close_notify, then FIN.
    let _ = tokio::time::timeout(Duration::from_secs(1), write_half.shutdown()).await;
    Ok(answers)
}

/// Asks every question over DoH at once, one request each, HTTP/2 streams
/// side by side (HTTP/1.1 requests one after the other): POSTs with
/// distinct IDs, or with `get` GETs with ID 0, as RFC 8484 §4.1 advises for
/// HTTP caches. A reply counts when it is a 200 of type
/// `application/dns-message` with the request's ID and question; what else
/// came is said in [`Answer::failure`]. Every request ends within `timeout`.
pub async fn ask_https(
    client: &DohClient,
    questions: &[Question],
    get: bool,
    timeout: Duration,
) -> Result<Vec<Answer>, ClientError> {
    let first_id: u16 = rand::random();
    let mut asks = Vec::with_capacity(questions.len());
    for (index, q) in questions.iter().enumerate() {
        let id = if get {
            0
        } else {
            first_id.wrapping_add(index as u16)
        };
        asks.push((q, encode_question(q, id)?));
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let asks = asks.into_iter().map(|(q, (bytes, question))| async move {
        let sent = async {
            if get {
                client.get(&bytes).await
            } else {
                client.post(&bytes).await
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(reply)) => https_reply(&reply, &bytes, &question),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no response within {} ms", timeout.as_millis())),
        };
        match outcome {
            Ok(msg) => Answer {
                question: q.clone(),
                reply: Some((msg, started.elapsed())),
                failure: None,
            },
            Err(why) => Answer {
                question: q.clone(),
                reply: None,
                failure: Some(why),
            },
        }
    });
    Ok(futures_util::future::join_all(asks).await)
}

/// The DNS reply in an HTTP response to `query`, or what is wrong with it.
fn https_reply(reply: &HttpReply, query: &[u8], question: &[u8]) -> Result<Message, String> {
    if reply.status != 200 {
        return Err(format!(
            "HTTP status {} ({})",
            reply.status,
            reply.content_type.as_deref().unwrap_or("no content-type")
        ));
    }
    if !reply.is_dns_message() {
        return Err(format!(
            "HTTP 200 of content-type {}, not {}",
            reply.content_type.as_deref().unwrap_or("(none)"),
            crate::tools::doh::DNS_MESSAGE
        ));
    }
    let id = dns::id(query);
    if reply.body.len() < dns::HEADER_LEN || dns::id(&reply.body) != id {
        return Err(format!(
            "the reply does not carry the query's ID {id} (RFC 8484 §4.1)"
        ));
    }
    if dns::match_reply(&reply.body, question) == dns::ReplyMatch::Mismatch {
        return Err("the reply is not for the question asked".into());
    }
    Message::from_vec(&reply.body).map_err(|e| format!("the reply does not parse: {e}"))
}

/// Formats one answer the way dig does, closely enough for a person to
/// read; `transport` names how it came (`TLS`, `HTTPS, HTTP/2`).
pub fn format_answer(answer: &Answer, server: SocketAddr, transport: &str) -> String {
    let mut s = String::new();
    let q = &answer.question;
    let Some((msg, elapsed)) = &answer.reply else {
        match &answer.failure {
            Some(why) => {
                let _ = writeln!(s, ";; {} {}: no reply: {why}", q.name, q.rtype);
            }
            None => {
                let _ = writeln!(s, ";; {} {}: no reply", q.name, q.rtype);
            }
        }
        return s;
    };
    let h = &msg.metadata;
    let mut flags = vec!["qr"];
    for (on, name) in [
        (h.authoritative, "aa"),
        (h.truncation, "tc"),
        (h.recursion_desired, "rd"),
        (h.recursion_available, "ra"),
        (h.authentic_data, "ad"),
        (h.checking_disabled, "cd"),
    ] {
        if on {
            flags.push(name);
        }
    }
    let _ = writeln!(
        s,
        ";; ->>HEADER<<- opcode: {:?}, status: {}, id: {}",
        h.op_code, h.response_code, h.id
    );
    let _ = writeln!(
        s,
        ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
        flags.join(" "),
        msg.queries.len(),
        msg.answers.len(),
        msg.authorities.len(),
        msg.additionals.len() + usize::from(msg.edns.is_some())
    );
    let _ = writeln!(s, "\n;; QUESTION SECTION:");
    for query in &msg.queries {
        let _ = writeln!(
            s,
            ";{}\t\t{}\t{}",
            query.name(),
            query.query_class(),
            query.query_type()
        );
    }
    for (title, records) in [
        ("ANSWER", &msg.answers),
        ("AUTHORITY", &msg.authorities),
        ("ADDITIONAL", &msg.additionals),
    ] {
        if !records.is_empty() {
            let _ = writeln!(s, "\n;; {title} SECTION:");
            for r in records {
                let _ = writeln!(s, "{r}");
            }
        }
    }
    let _ = writeln!(s, "\n;; Query time: {} msec", elapsed.as_millis());
    let _ = writeln!(s, ";; SERVER: {server} ({transport})");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        let p = |s: &str| s.parse::<ServerSpec>().unwrap();
        assert_eq!(
            p("@127.0.0.1"),
            ServerSpec {
                host: "127.0.0.1".into(),
                port: 853
            }
        );
        assert_eq!(
            p("@127.0.0.1:8853"),
            ServerSpec {
                host: "127.0.0.1".into(),
                port: 8853
            }
        );
        assert_eq!(
            p("@::1"),
            ServerSpec {
                host: "::1".into(),
                port: 853
            }
        );
        assert_eq!(
            p("@[::1]:99"),
            ServerSpec {
                host: "::1".into(),
                port: 99
            }
        );
        assert_eq!(
            p("@dns.example"),
            ServerSpec {
                host: "dns.example".into(),
                port: 853
            }
        );
        assert_eq!(
            p("@dns.example:8853"),
            ServerSpec {
                host: "dns.example".into(),
                port: 8853
            }
        );
        assert!("@".parse::<ServerSpec>().is_err());
        assert!("@host:notaport".parse::<ServerSpec>().is_err());
    }

    #[test]
    fn questions_take_an_optional_type() {
        let words: Vec<String> = ["example.com", "AAAA", "example.org", "a.example", "txt"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let qs = parse_questions(&words).unwrap();
        let types: Vec<_> = qs.iter().map(|q| q.rtype).collect();
        assert_eq!(
            types,
            vec![RecordType::AAAA, RecordType::A, RecordType::TXT]
        );
    }
}
