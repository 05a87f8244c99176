//! When to order, and the task that does it: the first certificate before
//! DoT is served, then each renewal while the current one keeps serving.
//!
//! Schedule: a certificate is renewed when a third of its lifetime is left
//! (day 60 of a 90-day certificate, day 43 of 64), or earlier when the ACME
//! server's renewal information (RFC 9773) suggests a window that opens
//! sooner. A failed order is retried after `--acme-retry-delay` (1 min),
//! doubling up to [`MAX_BACKOFF`], and the old certificate is served all the
//! while; the log says each time why it failed and until when the old one
//! is valid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, CertificateIdentifier, NewAccount};
use prometheus::IntCounter;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::acme::challenge::Responder;
use crate::acme::client::HttpsClient;
use crate::acme::order::{self, Issued, OrderError};
use crate::acme::store::{Store, StoreError};
use crate::config::acme::AcmeSettings;
use crate::tls::identity;

/// The longest wait between two failed orders: a few tries a day stay well
/// inside Let's Encrypt's failed-validation limits.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Long sleeps are cut into pieces so that a suspended machine or a clock
/// step is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("registering or loading the ACME account: {0}")]
    Account(instant_acme::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ACME server sent a certificate that does not load: {0}")]
    Unusable(#[from] identity::TlsError),
}

/// What is known of the certificate being served.
#[derive(Debug, Clone)]
pub struct Held {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf, for the renewal information request.
    pub leaf: CertificateDer<'static>,
}

impl Held {
    /// Reads the stored pair; None when it is missing, does not load, does
    /// not cover every name, was issued by another directory, or has
    /// expired.
    pub fn stored(store: &Store, settings: &AcmeSettings) -> Option<Held> {
        if store.issued_by().as_deref() != Some(settings.directory.as_str()) {
            return None;
        }
        let identity = identity::load_pem_files(&store.cert_path(), &store.key_path()).ok()?;
        let leaf = identity.certified.cert.first()?.clone();
        let held = Held::of(leaf)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(held.leaf.as_ref()).ok()?;
        let covered: Vec<String> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            Some(d.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let all = settings.names.iter().all(|n| covered.contains(n));
        (all && SystemTime::now() < held.not_after).then_some(held)
    }

    /// The validity of a leaf certificate.
    pub fn of(leaf: CertificateDer<'static>) -> Option<Held> {
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let time = |t: x509_parser::time::ASN1Time| {
            u64::try_from(t.timestamp())
                .ok()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        };
        Some(Held {
            not_before: time(parsed.validity().not_before)?,
            not_after: time(parsed.validity().not_after)?,
            leaf,
        })
    }

    /// When a third of the lifetime is left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }
}

/// Formats a time for the log, as UTC.
pub fn when(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    x509_parser::time::ASN1Time::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_or_else(|_| format!("{secs} s after 1970"), |t| t.to_string())
}

/// The doubling wait after `failures` failed orders in a row.
pub fn backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Orders certificates for the settings, with the account kept in the
/// store.
pub struct Renewer {
    pub settings: AcmeSettings,
    pub store: Store,
    pub responder: Responder,
    pub ca_trust: Option<std::path::PathBuf>,
    pub account: Option<Account>,
    pub orders_ok: IntCounter,
    pub orders_failed: IntCounter,
}

impl Renewer {
    /// Orders until one succeeds (the new certificate is then stored) or
    /// `shutdown`; None on shutdown. `held` is what is served meanwhile.
    pub async fn obtain(
        &mut self,
        held: Option<&Held>,
        shutdown: &CancellationToken,
    ) -> Option<Held> {
        let mut failures = 0u32;
        loop {
            // An order can take minutes (validation, issuance): shutdown
            // does not wait for it.
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return None,
                attempt = self.attempt() => attempt,
            };
            match attempt {
                Ok(new) => {
                    self.orders_ok.inc();
                    return Some(new);
                }
                Err(e) => {
                    self.orders_failed.inc();
                    failures += 1;
                    let retry = backoff(self.settings.retry_delay, failures);
                    match held {
                        Some(held) => tracing::error!(
                            error = %e,
                            retry_in = ?retry,
                            serving_until = %when(held.not_after),
                            "ACME renewal failed: still serving the previous certificate, will retry"
                        ),
                        None => tracing::error!(
                            error = %e,
                            retry_in = ?retry,
                            "ACME order failed: no certificate yet, so DNS over TLS is not served; will retry"
                        ),
                    }
                    if !sleep(retry, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One order, from account to stored certificate.
    async fn attempt(&mut self) -> Result<Held, AttemptError> {
        let account = self.account().await?;
        tracing::info!(
            names = %self.settings.names.join(","),
            directory = %self.settings.directory,
            "ACME: ordering a certificate; {}",
            self.responder.describe()
        );
        let issued = match order::issue(&account, &self.settings.names, &self.responder).await {
            Err(e) if e.account_gone() => {
                tracing::warn!(
                    "the ACME server no longer knows the stored account: registering a new one"
                );
                self.account = None;
                let account = self.account().await?;
                order::issue(&account, &self.settings.names, &self.responder).await?
            }
            other => other?,
        };
        self.store(issued)
    }

    /// Checks the issued pair loads, stores it, and returns its validity.
    fn store(&self, issued: Issued) -> Result<Held, AttemptError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::PrivateKeyDer;
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| identity::TlsError::ReadCert {
                path: "(the ACME server's answer)".into(),
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(|source| {
            identity::TlsError::ReadKey {
                path: "(the new key)".into(),
                source,
            }
        })?;
        let leaf = chain
            .first()
            .cloned()
            .ok_or_else(|| identity::TlsError::NoCert("(the ACME server's answer)".into()))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &identity::provider())
            .map_err(identity::TlsError::Rustls)?;
        let held = Held::of(leaf).ok_or_else(|| {
            identity::TlsError::NoCert("(the ACME server's answer: unreadable validity)".into())
        })?;
        self.store.save_certificate(
            &self.settings.directory,
            &issued.chain_pem,
            &issued.key_pem,
        )?;
        tracing::info!(
            names = %self.settings.names.join(","),
            not_after = %when(held.not_after),
            renew_at = %when(held.renew_at()),
            dir = %self.settings.dir.display(),
            "ACME: certificate issued and stored"
        );
        Ok(held)
    }

    /// The account: the stored one, else a new registration (stored at
    /// once, so that a restart never registers another).
    async fn account(&mut self) -> Result<Account, AttemptError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let http = || -> Result<Box<HttpsClient>, AttemptError> {
            HttpsClient::new(self.ca_trust.as_deref())
                .map(Box::new)
                .map_err(|e| AttemptError::Account(instant_acme::Error::Other(Box::new(e))))
        };
        let directory = &self.settings.directory;
        let account = match self.store.load_account(directory)? {
            Some(credentials) => Account::builder_with_http(http()?)
                .from_credentials(credentials)
                .await
                .map_err(AttemptError::Account)?,
            None => {
                let contact: Vec<String> = self
                    .settings
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials): (Account, AccountCredentials) =
                    Account::builder_with_http(http()?)
                        .create(
                            &NewAccount {
                                contact: &contact,
                                terms_of_service_agreed: true,
                                only_return_existing: false,
                            },
                            directory.clone(),
                            None,
                        )
                        .await
                        .map_err(AttemptError::Account)?;
                self.store.save_account(directory, &credentials)?;
                tracing::info!(account = %account.id(), %directory, "ACME: account registered and stored");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// When to renew `held`: a third of the lifetime before its end, or the
    /// start of the server's suggested window if that is sooner (a random
    /// point in the window, as RFC 9773 asks, so that clients spread out).
    pub async fn due(&mut self, held: &Held) -> SystemTime {
        let by_lifetime = held.renew_at();
        let Ok(account) = self.account().await else {
            return by_lifetime;
        };
        let Ok(id) = CertificateIdentifier::try_from(&held.leaf) else {
            return by_lifetime;
        };
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                let start = SystemTime::from(info.suggested_window.start);
                let end = SystemTime::from(info.suggested_window.end);
                let due = in_window(start, end, rand::random::<f64>()).min(by_lifetime);
                tracing::info!(window_start = %when(start), window_end = %when(end), "ACME: the server suggests a renewal window");
                due
            }
            Err(instant_acme::Error::Unsupported(_)) => by_lifetime,
            Err(e) => {
                tracing::debug!(error = %e, "ACME renewal information unavailable");
                by_lifetime
            }
        }
    }

    /// Renews for ever: waits until `held` is due, orders (retrying), and
    /// starts over with the new certificate, which the certificate reloader
    /// picks up from the store.
    pub async fn run(mut self, mut held: Held, shutdown: CancellationToken) {
        loop {
            let due = self.due(&held).await;
            tracing::info!(renew_at = %when(due), not_after = %when(held.not_after), "ACME: next renewal");
            if !sleep_until(due, &shutdown).await {
                return;
            }
            match self.obtain(Some(&held), &shutdown).await {
                Some(new) => held = new,
                None => return,
            }
        }
    }
}

/// The point `fraction` (0 to 1) of the way through a suggested window; the
/// start when the window is empty or reversed.
fn in_window(start: SystemTime, end: SystemTime, fraction: f64) -> SystemTime {
    let span = end.duration_since(start).unwrap_or_default();
    start + span.mul_f64(fraction.clamp(0.0, 1.0))
}

/// Sleeps `d`; false when `shutdown` came first.
async fn sleep(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Sleeps until the wall clock reaches `t`; false when `shutdown` came first.
async fn sleep_until(t: SystemTime, shutdown: &CancellationToken) -> bool {
    loop {
        let Ok(left) = t.duration_since(SystemTime::now()) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        if !sleep(left.min(MAX_SLEEP), shutdown).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_six_hours() {
        let first = Duration::from_secs(60);
        assert_eq!(backoff(first, 1), Duration::from_secs(60));
        assert_eq!(backoff(first, 2), Duration::from_secs(120));
        assert_eq!(backoff(first, 4), Duration::from_secs(480));
        assert_eq!(backoff(first, 30), MAX_BACKOFF);
    }

    #[test]
    fn a_point_inside_the_suggested_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_secs(100);
        assert_eq!(in_window(start, end, 0.0), start);
        assert_eq!(in_window(start, end, 0.5), start + Duration::from_secs(50));
        assert_eq!(in_window(start, end, 1.0), end);
        assert_eq!(in_window(end, start, 0.5), end, "a reversed window");
    }

    #[test]
    fn renewal_when_a_third_of_the_lifetime_is_left() {
        let not_before = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let held = Held {
            not_before,
            not_after: not_before + Duration::from_secs(90 * 86400),
            leaf: CertificateDer::from(Vec::new()),
        };
        assert_eq!(
            held.renew_at(),
            not_before + Duration::from_secs(60 * 86400)
        );
    }
}
