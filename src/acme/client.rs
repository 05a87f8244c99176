//! HTTPS to the ACME server for instant-acme, through the hyper and rustls
//! dotgate already builds (instant-acme's own client would bring
//! hyper-rustls, HTTP/2 and the platform verifier).
//!
//! One connection per request: an order is a few dozen requests spread over
//! seconds to minutes, so a pool would save nothing worth its code. Every
//! request, body included, is bounded by `REQUEST_TIMEOUT` and
//! `MAX_BODY`, so a stuck or hostile server cannot hold the renewal task.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::identity::provider;

/// Connect, TLS, request and whole response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// ACME responses are small JSON documents and PEM chains.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--acme-ca: {0}")]
    Ca(#[from] crate::tls::client::TrustError),
    #[error("no trust anchors: the system has no CA certificates (install ca-certificates) and no --acme-ca was given")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Why one request failed, in words for the log.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the ACME URL {0} is not https://HOST[:PORT]/...")]
    BadUrl(String),
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP with {host}: {source}")]
    Http { host: String, source: hyper::Error },
    #[error("reading the response of {host}: {source}")]
    Body {
        host: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no answer from {0} within 30 s")]
    Timeout(String),
}

/// The HTTP client handed to instant-acme.
pub struct HttpsClient {
    tls: TlsConnector,
}

impl HttpsClient {
    /// Trusts the system's roots and, with `--acme-ca`, the certificates of
    /// that file too.
    pub fn new(extra_ca: Option<&Path>) -> Result<HttpsClient, ClientError> {
        let mut roots = RootCertStore::empty();
        // A system without a CA bundle (a scratch container) is fine when
        // --acme-ca names the server's root.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_ca {
            // The same reading and checks as `--ca` and `--upstream-ca`.
            roots
                .roots
                .extend(crate::tls::client::roots_from_file(path)?.roots);
        }
        if roots.is_empty() {
            return Err(ClientError::NoRoots);
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }
}

impl HttpClient for HttpsClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = req.uri().host().unwrap_or_default().to_string();
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(Ok(response)) => Ok(BytesResponse::from(response)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(Box::new(RequestError::Timeout(
                    host,
                )))),
            }
        })
    }
}

/// One request on a new connection, the whole body read.
async fn send(
    tls: TlsConnector,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let uri = req.uri().clone();
    let bad = || RequestError::BadUrl(uri.to_string());
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|source| RequestError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let name = ServerName::try_from(bare).map_err(|_| bad())?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|source| RequestError::Tls {
            host: host.clone(),
            source,
        })?;
    let http = |source| RequestError::Http {
        host: host.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "ACME connection ended");
        }
    });
    // HTTP/1.1 origin form, with the authority in Host.
    let authority = uri.authority().map(|a| a.as_str().to_string());
    let path = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| bad())?;
    *req.uri_mut() = path;
    if let Some(authority) = authority {
        if let Ok(value) = authority.parse() {
            req.headers_mut().insert(HOST, value);
        }
    }
    let response = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|source| RequestError::Body {
            host: host.clone(),
            source,
        })?
        .to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}
