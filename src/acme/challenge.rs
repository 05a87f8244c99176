//! The challenge responders behind one interface: what the ACME server is
//! shown for a name, and how that is taken down again after validation.

use std::net::SocketAddr;

use instant_acme::{ChallengeType, KeyAuthorization};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::acme::alpn01::{self, AlpnError, Certs};
use crate::acme::dns01::{self, DnsError, Updater};
use crate::acme::http01::{self, Tokens};
use crate::config::acme::{AcmeSettings, Challenge};

#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Alpn(#[from] AlpnError),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

/// The responder of the configured challenge.
pub enum Responder {
    Http {
        tokens: Tokens,
        listen: SocketAddr,
    },
    /// `listen` is `None` when the DoH listeners present `certs`.
    TlsAlpn {
        certs: Certs,
        listen: Option<SocketAddr>,
    },
    Dns(Updater),
}

/// What was put up for one authorization, for [`Responder::withdraw`].
pub struct Presented {
    name: String,
    token: String,
    record: Option<dns01::Record>,
}

impl Responder {
    /// Binds the listener the challenge needs and serves it until
    /// `shutdown`; for DNS-01, reads the TSIG key. TLS-ALPN-01 on the DoH
    /// listeners binds nothing: it puts its certificates in `on_doh`, which
    /// those listeners present.
    pub async fn start(
        settings: &AcmeSettings,
        shutdown: &CancellationToken,
        on_doh: &Certs,
    ) -> Result<Responder, ChallengeError> {
        match &settings.challenge {
            Challenge::Http01 { listen } => {
                let listener = bind(*listen, "HTTP-01 (--acme-http-listen)")?;
                let tokens = Tokens::default();
                tokio::spawn(http01::serve(listener, tokens.clone(), shutdown.clone()));
                Ok(Responder::Http {
                    tokens,
                    listen: *listen,
                })
            }
            Challenge::TlsAlpn01 { listen: None } => Ok(Responder::TlsAlpn {
                certs: on_doh.clone(),
                listen: None,
            }),
            Challenge::TlsAlpn01 {
                listen: Some(listen),
            } => {
                let listener = bind(*listen, "TLS-ALPN-01 (--acme-tls-alpn-listen)")?;
                let certs = Certs::default();
                let config = alpn01::server_config(&certs)?;
                tokio::spawn(alpn01::serve(listener, config, shutdown.clone()));
                Ok(Responder::TlsAlpn {
                    certs,
                    listen: Some(*listen),
                })
            }
            Challenge::Dns01 { server, tsig_key } => {
                Ok(Responder::Dns(Updater::new(*server, tsig_key)?))
            }
        }
    }

    pub fn kind(&self) -> ChallengeType {
        match self {
            Responder::Http { .. } => ChallengeType::Http01,
            Responder::TlsAlpn { .. } => ChallengeType::TlsAlpn01,
            Responder::Dns(_) => ChallengeType::Dns01,
        }
    }

    /// What the ACME server will check, for the log line of a self-hoster
    /// waiting for a certificate.
    pub fn describe(&self) -> String {
        match self {
            Responder::Http { listen, .. } => format!(
                "http-01: the ACME server fetches http://NAME/.well-known/acme-challenge/... on port 80, answered on {listen}"
            ),
            Responder::TlsAlpn {
                listen: Some(listen),
                ..
            } => format!(
                "tls-alpn-01: the ACME server connects to NAME on port 443 with ALPN acme-tls/1, answered on {listen}"
            ),
            Responder::TlsAlpn { listen: None, .. } => {
                "tls-alpn-01: the ACME server connects to NAME on port 443 with ALPN acme-tls/1, answered on the DoH listener (--doh-listen)".to_string()
            }
            Responder::Dns(updater) => format!(
                "dns-01: a TXT record _acme-challenge.NAME added by RFC 2136 update to {}",
                updater.server()
            ),
        }
    }

    /// Puts up the answer for `name` (without `*.`; a wildcard's record is
    /// that of its base name).
    pub async fn present(
        &self,
        name: &str,
        token: &str,
        key_authorization: &KeyAuthorization,
    ) -> Result<Presented, ChallengeError> {
        let mut presented = Presented {
            name: name.to_string(),
            token: token.to_string(),
            record: None,
        };
        match self {
            Responder::Http { tokens, .. } => tokens.insert(token, key_authorization.as_str()),
            Responder::TlsAlpn { certs, .. } => {
                certs.insert(name, key_authorization.digest().as_ref())?
            }
            Responder::Dns(updater) => {
                presented.record = Some(updater.add(name, &key_authorization.dns_value()).await?);
            }
        }
        Ok(presented)
    }

    /// Takes down what [`Responder::present`] put up; a failure is logged,
    /// not returned (a leftover TXT record harms nothing but tidiness).
    pub async fn withdraw(&self, presented: &Presented) {
        match self {
            Responder::Http { tokens, .. } => tokens.remove(&presented.token),
            Responder::TlsAlpn { certs, .. } => certs.remove(&presented.name),
            Responder::Dns(updater) => {
                if let Some(record) = &presented.record {
                    if let Err(e) = updater.delete(record).await {
                        tracing::warn!(name = %presented.name, error = %e, "DNS-01: cannot delete the _acme-challenge TXT record; delete it by hand");
                    }
                }
            }
        }
    }
}

/// Binds a challenge listener. An IPv6 wildcard also takes IPv4, as for the
/// DoT listeners, so the default `[::]:80` serves both.
fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ChallengeError> {
    use socket2::{Domain, Socket, Type};
    let err = |source| ChallengeError::Listen { addr, what, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(128).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}
