//! The DNS-over-HTTPS (RFC 8484) client side of `dotgate query` and
//! `dotgate check`: a server written as `https://HOST[:PORT]/PATH`, one TLS
//! connection offering ALPN `h2` then `http/1.1`, and hyper's HTTP/2 client
//! on it (its HTTP/1.1 client when the server picks `http/1.1` or nothing).
//!
//! A request is one DNS message, as a POST body or a GET's `dns` parameter;
//! its response is returned whatever its status or type, so that the
//! callers can say what was wrong with it. Bodies are bounded by the
//! largest DNS message.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;

/// The port of HTTPS.
pub const HTTPS_PORT: u16 = 443;
/// The path RFC 8484's examples use, and most servers serve.
pub const DEFAULT_PATH: &str = "/dns-query";
/// The media type of DNS messages over HTTP (RFC 8484 §6).
pub const DNS_MESSAGE: &str = "application/dns-message";
/// ALPN for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// A response body longer than the largest DNS message is not an answer.
const MAX_BODY: usize = 65_535;

/// Why a DoH request got no response to judge.
#[derive(Debug, thiserror::Error)]
pub enum DohError {
    #[error("{0:?}: write https://HOST[:PORT][/PATH]")]
    BadUrl(String),
    #[error("the HTTP/{version} handshake failed: {source}")]
    Handshake {
        version: &'static str,
        source: hyper::Error,
    },
    #[error("the request could not be built: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no HTTP response: {0}")]
    Http(#[from] hyper::Error),
    #[error("the response body could not be read: {0}")]
    Body(String),
}

/// A DoH server as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DohUrl {
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The path of queries, `/dns-query` when the URL has none.
    pub path: String,
}

impl DohUrl {
    /// True for a server written as a URL (`https://...`), as opposed to a
    /// DoT `HOST[:PORT]`.
    pub fn is_url(s: &str) -> bool {
        s.get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }

    /// The authority of requests (`:authority`, `Host`): the host as
    /// written (IPv6 in brackets), and the port unless it is 443.
    pub fn authority(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.host.clone(),
        };
        if self.port == HTTPS_PORT {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for DohUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.path)
    }
}

impl FromStr for DohUrl {
    type Err = DohError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DohError::BadUrl(s.to_string());
        if !DohUrl::is_url(s) {
            return Err(bad());
        }
        let rest = &s[8..];
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        // A query or fragment is not part of a DoH template's path.
        if path.contains(['?', '#']) || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) = bracketed.split_once(']').ok_or_else(bad)?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
            let port = match after {
                "" => HTTPS_PORT,
                _ => after
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            };
            (ip.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().map_err(|_| bad())?),
                None => (authority.to_string(), HTTPS_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(DohUrl {
            host,
            port,
            path: if path.is_empty() || path == "/" {
                DEFAULT_PATH.to_string()
            } else {
                path.to_string()
            },
        })
    }
}

/// Offers ALPN `h2`, then `http/1.1`, on a client configuration built for
/// DoT (which offers `dot`).
pub fn for_https(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Arc::new(config)
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    H2,
    H1,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::H2 => "HTTP/2",
            Version::H1 => "HTTP/1.1",
        }
    }
}

/// How requests reach the connection: HTTP/2 streams run side by side;
/// HTTP/1.1 requests take turns (the lock), one at a time.
enum Sender {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>),
}

/// An HTTP connection to a DoH server; its connection task ends when this
/// is dropped.
pub struct DohClient {
    sender: Sender,
    pub version: Version,
    authority: String,
    path: String,
}

/// A response as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// True when the content type is `application/dns-message` (case and
    /// parameters after `;` aside).
    pub fn is_dns_message(&self) -> bool {
        self.content_type
            .as_deref()
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case(DNS_MESSAGE))
    }

    /// The `max-age` of `cache-control`, when there is one.
    pub fn max_age(&self) -> Option<u32> {
        self.cache_control.as_deref()?.split(',').find_map(|part| {
            let (key, value) = part.trim().split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| value.trim().parse().ok())?
        })
    }
}

impl DohClient {
    /// Starts HTTP on an established TLS connection: HTTP/2 when ALPN chose
    /// `h2`, HTTP/1.1 otherwise.
    pub async fn start(tls: TlsStream<TcpStream>, url: &DohUrl) -> Result<DohClient, DohError> {
        let version = match tls.get_ref().1.alpn_protocol() {
            Some(ALPN_H2) => Version::H2,
            _ => Version::H1,
        };
        let io = TokioIo::new(tls);
        let sender = match version {
            Version::H2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|source| DohError::Handshake {
                        version: "2",
                        source,
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "DoH connection ended");
                    }
                });
                Sender::H2(send)
            }
            Version::H1 => {
                let (send, conn) =
                    hyper::client::conn::http1::handshake(io)
                        .await
                        .map_err(|source| DohError::Handshake {
                            version: "1.1",
                            source,
                        })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "DoH connection ended");
                    }
                });
                Sender::H1(Mutex::new(send))
            }
        };
        Ok(DohClient {
            sender,
            version,
            authority: url.authority(),
            path: url.path.clone(),
        })
    }

    /// POSTs `msg` as `application/dns-message` (RFC 8484 §4.1).
    pub async fn post(&self, msg: &[u8]) -> Result<HttpReply, DohError> {
        self.send("POST", &self.path, Some(DNS_MESSAGE), msg.to_vec())
            .await
    }

    /// GETs `msg` as the `dns` parameter, base64url without padding.
    pub async fn get(&self, msg: &[u8]) -> Result<HttpReply, DohError> {
        let target = format!("{}?dns={}", self.path, URL_SAFE_NO_PAD.encode(msg));
        self.send("GET", &target, None, Vec::new()).await
    }

    /// A request of `method` for `target` (a path and query) on this
    /// server, asking for DNS messages; the whole response is read.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<HttpReply, DohError> {
        let mut builder = Request::builder()
            .method(method)
            .header(hyper::header::ACCEPT, DNS_MESSAGE);
        builder = match self.version {
            // HTTP/2 takes the authority from the URI (`:authority`).
            Version::H2 => builder.uri(format!("https://{}{target}", self.authority)),
            Version::H1 => builder
                .uri(target)
                .header(hyper::header::HOST, &self.authority),
        };
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder.body(Full::new(Bytes::from(body)))?;
        let response = match &self.sender {
            Sender::H2(send) => send.clone().send_request(request).await?,
            Sender::H1(send) => {
                let mut send = send.lock().await;
                send.ready().await?;
                send.send_request(request).await?
            }
        };
        let header = |name: hyper::header::HeaderName| {
            response
                .headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let content_type = header(hyper::header::CONTENT_TYPE);
        let cache_control = header(hyper::header::CACHE_CONTROL);
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| DohError::Body(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(HttpReply {
            status,
            content_type,
            cache_control,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> DohUrl {
        s.parse().unwrap()
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            url("https://127.0.0.1:8443/dns-query"),
            DohUrl {
                host: "127.0.0.1".into(),
                port: 8443,
                path: "/dns-query".into()
            }
        );
        assert_eq!(
            url("https://dns.example"),
            DohUrl {
                host: "dns.example".into(),
                port: 443,
                path: "/dns-query".into()
            }
        );
        let v6 = url("https://[::1]:444/q/abc");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 444));
        assert_eq!(v6.path, "/q/abc");
        assert_eq!(v6.authority(), "[::1]:444");
        assert_eq!(url("HTTPS://[::1]/").authority(), "[::1]");
        assert_eq!(
            url("https://dns.example:443/dns-query/kid").to_string(),
            "https://dns.example/dns-query/kid"
        );
        for bad in [
            "http://dns.example/dns-query",
            "https://",
            "https://:443/x",
            "https://dns.example:port/",
            "https://[::1/",
            "https://[dns.example]/",
            "https://user@dns.example/",
            "https://dns.example/dns-query?dns=AAAB",
            "dns.example",
        ] {
            assert!(bad.parse::<DohUrl>().is_err(), "{bad}");
        }
        assert!(DohUrl::is_url("https://x") && !DohUrl::is_url("@1.2.3.4"));
    }

    #[test]
    fn media_type_and_max_age_are_read_leniently() {
        let reply = |ct: Option<&str>, cc: Option<&str>| HttpReply {
            status: 200,
            content_type: ct.map(str::to_string),
            cache_control: cc.map(str::to_string),
            body: Vec::new(),
        };
        assert!(reply(Some("Application/DNS-Message; charset=x"), None).is_dns_message());
        assert!(!reply(Some("text/html"), None).is_dns_message());
        assert!(!reply(None, None).is_dns_message());
        assert_eq!(reply(None, Some("max-age=60")).max_age(), Some(60));
        assert_eq!(
            reply(None, Some("public, Max-Age = 7, immutable")).max_age(),
            Some(7)
        );
        assert_eq!(reply(None, Some("no-store")).max_age(), None);
        assert_eq!(reply(None, Some("max-age=soon")).max_age(), None);
    }
}
