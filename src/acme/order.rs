//! One certificate order (RFC 8555 §7.4), from the new order to the
//! downloaded chain: every authorization's challenge is put up, announced,
//! and taken down again whatever the outcome; the CSR is made here, with a
//! new P-256 key for every certificate.
//!
//! When validation fails, the error carries the ACME server's own problem
//! document for the challenge (e.g. "connection refused" from its
//! validation of port 80): that is the sentence a self-hoster can act on.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use crate::acme::challenge::{ChallengeError, Presented, Responder};

/// How long the server may take to validate (DNS-01 waits for the record
/// on the authoritative server first, see `dns01.rs`).
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to issue once the CSR is in.
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error(
        "the ACME server could not validate {name} by {kind}: {problem}; {}",
        hint(kind, name)
    )]
    Validation {
        name: String,
        kind: &'static str,
        problem: String,
    },
    #[error("the ACME server offers no {kind} challenge for {name} (pick another with --acme-challenge)")]
    NoChallenge { name: String, kind: &'static str },
    #[error("the authorization for {name} is {status:?}: the ACME server will not issue for it")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order became invalid without saying why")]
    Invalid,
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error("cannot make the key or the CSR: {0}")]
    Csr(#[from] rcgen::Error),
}

impl OrderError {
    /// True when the stored account is unknown to the server (a test server
    /// restarted, or the account deactivated): a new one must be registered.
    pub fn account_gone(&self) -> bool {
        matches!(self, OrderError::Acme(instant_acme::Error::Api(problem))
            if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// A certificate as the ACME server issued it, with its new key.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What must hold for the challenge to pass, to go with the server's reason.
fn hint(kind: &str, name: &str) -> String {
    let name = name.trim_start_matches("*.");
    match kind {
        "http-01" => format!("TCP port 80 of {name}, from the internet, must reach dotgate's --acme-http-listen"),
        "tls-alpn-01" => format!("TCP port 443 of {name}, from the internet, must reach dotgate's --acme-tls-alpn-listen (or, without it, its --doh-listen)"),
        "dns-01" => format!("_acme-challenge.{name} TXT must be served by the authoritative servers of its zone, where --acme-dns-update adds it"),
        _ => "pick a challenge the server offers with --acme-challenge".into(),
    }
}

fn kind_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        ChallengeType::Dns01 => "dns-01",
        _ => "another challenge",
    }
}

/// Orders a certificate for `names` and returns it.
pub async fn issue(
    account: &Account,
    names: &[String],
    responder: &Responder,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut presented = Vec::new();
    let validated = validate(&mut order, responder, &mut presented).await;
    for p in &presented {
        responder.withdraw(p).await;
    }
    validated?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::new().timeout(ISSUANCE_TIMEOUT))
        .await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Answers every pending authorization and waits for the order to be ready.
async fn validate(
    order: &mut instant_acme::Order,
    responder: &Responder,
    presented: &mut Vec<Presented>,
) -> Result<(), OrderError> {
    let kind = responder.kind();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let name = bare_name(&authz.identifier());
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => return Err(OrderError::Authorization { name, status }),
        }
        let Some(mut challenge) = authz.challenge(kind.clone()) else {
            return Err(OrderError::NoChallenge {
                name,
                kind: kind_name(&kind),
            });
        };
        let key_authorization = challenge.key_authorization();
        let token = challenge.token.clone();
        presented.push(responder.present(&name, &token, &key_authorization).await?);
        challenge.set_ready().await?;
    }
    let polled = order
        .poll_ready(
            &RetryPolicy::new()
                .initial_delay(Duration::from_millis(500))
                .timeout(VALIDATION_TIMEOUT),
        )
        .await;
    // An invalid order comes back as its status, or as the error the
    // server put in the order (pebble, Boulder): either way, the failed
    // challenge says best what went wrong.
    let order_problem = match polled {
        Ok(OrderStatus::Ready) => return Ok(()),
        Ok(_) => None,
        Err(instant_acme::Error::Api(problem)) => Some(problem),
        Err(e) => return Err(e.into()),
    };
    match (why_invalid(order, &kind).await, order_problem) {
        (OrderError::Invalid, Some(problem)) => Err(OrderError::Acme(problem.into())),
        (why, _) => Err(why),
    }
}

/// The ACME server's reason for an invalid order: the error of the first
/// failed challenge, as its problem document says it.
async fn why_invalid(order: &mut instant_acme::Order, kind: &ChallengeType) -> OrderError {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = match authz {
            Ok(authz) => authz,
            Err(e) => return OrderError::Acme(e),
        };
        let state = match authz.refresh().await {
            Ok(state) => state,
            Err(e) => return OrderError::Acme(e),
        };
        let name = state.identifier().to_string();
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                return OrderError::Validation {
                    name,
                    kind: kind_name(&challenge.r#type),
                    problem: problem_text(problem),
                };
            }
        }
        if state.status == AuthorizationStatus::Invalid {
            return OrderError::Validation {
                name,
                kind: kind_name(kind),
                problem: "the authorization is invalid (no detail given)".into(),
            };
        }
    }
    OrderError::Invalid
}

/// `detail (type)`, the way the ACME server put it.
fn problem_text(problem: &instant_acme::Problem) -> String {
    match (&problem.detail, &problem.r#type) {
        (Some(detail), Some(kind)) => format!("{detail} ({kind})"),
        (Some(detail), None) => detail.clone(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => "no detail given".into(),
    }
}

/// The bare DNS name of an identifier: a wildcard's base name, which is
/// where its DNS-01 record goes.
fn bare_name(id: &instant_acme::AuthorizedIdentifier<'_>) -> String {
    match id.identifier {
        Identifier::Dns(name) => name.clone(),
        other => format!("{other:?}"),
    }
}
