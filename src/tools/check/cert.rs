//! The certificate checks of `dotgate check`, on the chain a server sent:
//! verification as Android strict mode does it (the certificates sent, the
//! trust store, nothing fetched), the intermediates, expiry, and what R24
//! asks of the leaf. Pure functions of the chain, the roots, the name and
//! the time. What the server judges as well (intermediates, expiry,
//! name) is decided by [`chain::judge`], the one judge both use; only
//! the wording, and path verification by webpki, are this module's.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::chain::{
    self, date, CertFacts, Eku, Expiry, Intermediates, JudgeError, KeyVerdict, NameVerdict,
    SignatureKind, Verdict,
};

use super::report::{Check, Clients, CHAIN_CAUSES};

/// Who each certificate check matters to: the clients that verify.
const VERIFYING: Clients = Clients::VERIFYING;

/// What a refused certificate means to clients, for the reasons.
const STRICT_SAYS: &str =
    "clients that verify refuse it (Android strict mode: \"Couldn't connect\")";

/// What the chain checks look at.
pub struct ChainInput<'a> {
    /// The certificates the server sent, leaf first.
    pub chain: &'a [CertificateDer<'static>],
    pub roots: &'a Arc<RootCertStore>,
    /// How the trust store is named in reasons: "the system roots", or the
    /// CA file.
    pub trust_label: &'a str,
    pub name: &'a ServerName<'static>,
    pub name_text: &'a str,
    /// Seconds since the UNIX epoch.
    pub now: i64,
}

/// How verification by webpki went, reduced to what the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verified {
    Yes,
    /// The path is fine, the name is not.
    WrongName,
    UnknownIssuer,
    Expired,
    NotValidYet,
    NotForServers,
    Other(String),
}

fn verify(input: &ChainInput<'_>) -> Verified {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(input.roots.clone(), provider).build() {
            Ok(v) => v,
            Err(e) => return Verified::Other(e.to_string()),
        };
    let Some((leaf, intermediates)) = input.chain.split_first() else {
        return Verified::Other("the server sent no certificate".into());
    };
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(input.now).unwrap_or(0),
    ));
    match verifier.verify_server_cert(leaf, intermediates, input.name, &[], now) {
        Ok(_) => Verified::Yes,
        Err(rustls::Error::InvalidCertificate(e)) => {
            match e {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Verified::WrongName,
                CertificateError::UnknownIssuer => Verified::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Verified::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Verified::NotValidYet
                }
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Verified::NotForServers,
                other => Verified::Other(format!("{other:?}")),
            }
        }
        Err(other) => Verified::Other(other.to_string()),
    }
}

/// The value of a DER element: its bytes after the tag and length. Trust
/// anchors keep a subject name this way, certificates with the header.
fn der_value(der: &[u8]) -> &[u8] {
    let Some(&len) = der.get(1) else {
        return der;
    };
    let header = if len < 0x80 {
        2
    } else {
        2 + usize::from(len & 0x7f)
    };
    der.get(header..).unwrap_or(der)
}

fn is_trusted_root_name(roots: &RootCertStore, name_der: &[u8]) -> bool {
    let value = der_value(name_der);
    roots
        .roots
        .iter()
        .any(|anchor| anchor.subject.as_ref() == value || anchor.subject.as_ref() == name_der)
}

/// "CN=x" for a reason: the subject, or a placeholder.
fn who(facts: &CertFacts) -> &str {
    if facts.subject.is_empty() {
        "(empty subject)"
    } else {
        &facts.subject
    }
}

/// Every certificate check, in report order: chain, intermediates, expiry,
/// name, eku, key, signature.
pub fn chain_checks(input: &ChainInput<'_>) -> Vec<Check> {
    let is_trusted_root = |name: &[u8]| is_trusted_root_name(input.roots, name);
    let judged = chain::judge(
        input.chain,
        &chain::Judge {
            self_signed_on_purpose: false,
            is_trusted_root: &is_trusted_root,
            name: Some(input.name_text),
            now: input.now,
        },
    );
    let verdict = match judged {
        Ok(verdict) => verdict,
        Err(JudgeError::Empty) => {
            return vec![Check::fail(
                "chain",
                VERIFYING,
                "the server sent no certificate",
                "configure a certificate",
            )]
        }
        Err(e @ JudgeError::UnreadableLeaf(_)) => {
            let reason = e.to_string();
            return std::iter::once("chain")
                .chain(CHAIN_CAUSES.iter().copied())
                .map(|id| {
                    Check::fail(
                        id,
                        VERIFYING,
                        reason.clone(),
                        "serve a well-formed X.509 certificate",
                    )
                })
                .collect();
        }
    };
    let verified = verify(input);
    vec![
        chain_check(input, &verdict, &verified),
        intermediates_check(input, &verdict),
        expiry_check(&verdict, &verified),
        name_check(&verdict),
        eku_check(&verdict.leaf),
        key_check(&verdict.leaf),
        signature_check(&verdict.leaf, &verdict.others),
    ]
}

fn chain_check(input: &ChainInput<'_>, verdict: &Verdict, verified: &Verified) -> Check {
    let trust = input.trust_label;
    let (leaf, others) = (&verdict.leaf, &verdict.others);
    let n = input.chain.len();
    let sent = if n == 1 {
        "the one certificate sent".to_string()
    } else {
        format!("the {n} certificates sent")
    };
    match verified {
        Verified::Yes => Check::pass(
            "chain",
            VERIFYING,
            format!(
                "verifies against {trust} for {} from {sent}, fetching nothing (as Android strict mode)",
                input.name_text
            ),
        ),
        Verified::WrongName => Check::pass(
            "chain",
            VERIFYING,
            format!("the chain verifies against {trust} (the name does not: see name)"),
        ),
        Verified::UnknownIssuer => {
            let (why, fix) = match &verdict.intermediates {
                Intermediates::SelfSigned => (
                    format!("a self-signed certificate ({}) that {trust} does not hold", who(leaf)),
                    "use a certificate from a CA clients trust (e.g. Let's Encrypt); for a private CA \
                     on purpose, check with --ca CA.pem"
                        .to_string(),
                ),
                Intermediates::Missing(missing) => (
                    format!("no path to a trusted root: {missing}, nor is it in {trust}"),
                    "serve the full chain, leaf first, then intermediates (certbot's fullchain.pem)"
                        .to_string(),
                ),
                Intermediates::Sent { .. } | Intermediates::IssuerIsTrustedRoot { .. } => {
                    let top = others.last().unwrap_or(leaf);
                    (
                        format!(
                            "no path to a trusted root: the chain ends at {}, issued by {}, which is not in {trust}",
                            who(top),
                            top.issuer
                        ),
                        "use a certificate from a CA clients trust; for a private CA, check with --ca CA.pem"
                            .to_string(),
                    )
                }
            };
            Check::fail("chain", VERIFYING, format!("does not verify: {why}; {STRICT_SAYS}"), fix)
        }
        Verified::Expired => Check::fail(
            "chain",
            VERIFYING,
            format!("does not verify: a certificate of the chain has expired (see expiry); {STRICT_SAYS}"),
            "renew the certificate and reload the server",
        ),
        Verified::NotValidYet => Check::fail(
            "chain",
            VERIFYING,
            "does not verify: a certificate of the chain is not valid yet (see expiry)",
            "check the clocks of this machine and of the CA",
        ),
        Verified::NotForServers => Check::fail(
            "chain",
            VERIFYING,
            format!("does not verify: the chain is not valid for TLS servers (extended key usage); {STRICT_SAYS}"),
            "reissue the certificate with extendedKeyUsage serverAuth",
        ),
        Verified::Other(e) => Check::fail(
            "chain",
            VERIFYING,
            format!("does not verify against {trust}: {e}"),
            "serve a certificate chain from a CA clients trust, leaf first",
        ),
    }
}

fn intermediates_check(input: &ChainInput<'_>, verdict: &Verdict) -> Check {
    const ID: &str = "intermediates";
    let n = verdict.sent;
    let names: Vec<&str> = verdict.others.iter().map(who).collect();
    match &verdict.intermediates {
        Intermediates::SelfSigned => Check::pass(
            ID,
            VERIFYING,
            "a self-signed certificate: there is no intermediate to send",
        ),
        Intermediates::Sent { in_order: true } => Check::pass(
            ID,
            VERIFYING,
            format!(
                "sends {n} certificates: the leaf, then {}",
                names.join(", then ")
            ),
        ),
        Intermediates::Sent { in_order: false } => Check::warn(
            ID,
            VERIFYING,
            format!(
                "sends its intermediates, but not in order (leaf, then each issuer): {}",
                names.join(", ")
            ),
            "order the chain file: leaf first, then the certificate that issued it, and so on",
        ),
        Intermediates::IssuerIsTrustedRoot { issuer } => {
            let sends = if n == 1 {
                "sends the leaf only, and its issuer".to_string()
            } else {
                "does not send the leaf's issuer, but that issuer".to_string()
            };
            Check::pass(
                ID,
                VERIFYING,
                format!(
                    "{sends} ({issuer}) is itself a root in {}: nothing to fetch",
                    input.trust_label
                ),
            )
        }
        Intermediates::Missing(missing) => Check::fail(
            ID,
            VERIFYING,
            format!(
                "the server does not send its intermediate certificate: {missing}, nor is it a root in {}; \
                 Android strict mode does not fetch missing intermediates",
                input.trust_label
            ),
            format!(
                "serve the full chain, leaf first, then intermediates (certbot's fullchain.pem, not cert.pem); \
                 if {} is your own root CA, check with --ca",
                missing.issuer
            ),
        ),
    }
}

fn expiry_check(verdict: &Verdict, verified: &Verified) -> Check {
    const ID: &str = "expiry";
    let leaf = &verdict.leaf;
    match &verdict.expiry {
        Expiry::Expired { not_after } => Check::fail(
            ID,
            VERIFYING,
            format!("the certificate ({}) expired on {}", who(leaf), date(*not_after)),
            "renew the certificate and reload the server (certbot renew; dotgate reloads renewed files itself)",
        ),
        Expiry::NotYetValid { not_before } => Check::fail(
            ID,
            VERIFYING,
            format!(
                "the certificate ({}) is not valid before {}",
                who(leaf),
                date(*not_before)
            ),
            "check the clocks of this machine and of the server",
        ),
        Expiry::OtherExpired { subject, not_after } => {
            let reason = format!("{subject} in the chain expired on {}", date(*not_after));
            if *verified == Verified::Expired {
                Check::fail(
                    ID,
                    VERIFYING,
                    reason,
                    "get the current intermediate from the CA and serve it instead",
                )
            } else {
                Check::warn(
                    ID,
                    VERIFYING,
                    format!(
                        "{reason}; clients that build the path through it fail (as with the expired DST Root CA X3 cross-sign)"
                    ),
                    "remove the expired certificate from the chain file",
                )
            }
        }
        Expiry::ExpiresSoon {
            subject,
            not_after,
            days_left,
        } => {
            let which = match subject {
                Some(subject) => format!("{subject} in the chain"),
                None => format!("the certificate ({})", who(leaf)),
            };
            Check::warn(
                ID,
                VERIFYING,
                format!("{which} expires in {days_left} days ({})", date(*not_after)),
                "renew now, and check that renewal is automatic",
            )
        }
        Expiry::InDate {
            not_after,
            days_left,
        } => Check::pass(
            ID,
            VERIFYING,
            format!(
                "valid until {} ({days_left} days); every certificate sent is in date",
                date(*not_after)
            ),
        ),
    }
}

fn name_check(verdict: &Verdict) -> Check {
    const ID: &str = "name";
    match &verdict.name {
        Some(NameVerdict::Covered { name, by }) => Check::pass(
            ID,
            VERIFYING,
            format!("the leaf's subjectAltName covers {name} ({by})"),
        ),
        Some(NameVerdict::NotCovered { name, sans }) => {
            let listed = if sans.is_empty() {
                "none".to_string()
            } else {
                sans.join(", ")
            };
            Check::fail(
                ID,
                VERIFYING,
                format!(
                    "the certificate does not cover {name}: its subjectAltNames are {listed}; clients that verify the name refuse it"
                ),
                format!("get a certificate whose subjectAltName holds {name}, or check with --tls-name the name clients use"),
            )
        }
        None => Check::skip(ID, VERIFYING, "no name to check the certificate against"),
    }
}

fn eku_check(leaf: &CertFacts) -> Check {
    const ID: &str = "eku";
    match leaf.eku {
        Eku::ServerAuth => Check::pass(ID, VERIFYING, "the leaf is for TLS servers (extendedKeyUsage serverAuth)"),
        Eku::Absent => Check::warn(
            ID,
            VERIFYING,
            "the leaf has no extendedKeyUsage: Apple devices refuse TLS certificates without serverAuth",
            "reissue the certificate with extendedKeyUsage serverAuth",
        ),
        Eku::Other => Check::fail(
            ID,
            VERIFYING,
            "the leaf's extendedKeyUsage does not include serverAuth: TLS clients refuse it",
            "reissue the certificate with extendedKeyUsage serverAuth",
        ),
    }
}

fn key_check(leaf: &CertFacts) -> Check {
    const ID: &str = "key";
    let key = &leaf.key;
    match key.verdict() {
        KeyVerdict::Accepted => Check::pass(ID, VERIFYING, format!("{key}")),
        KeyVerdict::Unusual => Check::warn(
            ID,
            VERIFYING,
            format!("{key}: not every client accepts it (Apple and Android expect RSA >= 2048 or ECDSA P-256)"),
            "reissue with an ECDSA P-256 or RSA 2048 key",
        ),
        KeyVerdict::Refused => Check::fail(
            ID,
            VERIFYING,
            format!("{key}: clients refuse it (they need RSA >= 2048 or ECDSA P-256/P-384)"),
            "reissue with an ECDSA P-256 or RSA 2048 key",
        ),
    }
}

fn signature_check(leaf: &CertFacts, others: &[CertFacts]) -> Check {
    const ID: &str = "signature";
    // A self-issued certificate's own signature is never checked: the trust
    // store vouches for it.
    let signed: Vec<&CertFacts> = std::iter::once(leaf)
        .chain(others.iter().filter(|c| !c.self_issued))
        .collect();
    if let Some(bad) = signed
        .iter()
        .find(|c| matches!(c.signature, SignatureKind::Obsolete(_)))
    {
        return Check::fail(
            ID,
            VERIFYING,
            format!(
                "{} is signed with {}: clients refuse SHA-1 and MD5",
                who(bad),
                bad.signature
            ),
            "reissue the certificate (a current CA signs with SHA-256)",
        );
    }
    if let Some(odd) = signed
        .iter()
        .find(|c| !matches!(c.signature, SignatureKind::Sha2(_)))
    {
        return Check::warn(
            ID,
            VERIFYING,
            format!(
                "{} is signed with {}: not every client accepts it",
                who(odd),
                odd.signature
            ),
            "use a CA that signs with SHA-256 (RSA or ECDSA)",
        );
    }
    let mut names: Vec<String> = signed.iter().map(|c| c.signature.to_string()).collect();
    names.dedup();
    Check::pass(
        ID,
        VERIFYING,
        format!("SHA-2 signatures ({})", names.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::chain::DAY;
    use crate::tools::check::report::Status;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    const NOW: i64 = 1_750_000_000;

    fn ca(
        name: &str,
        issuer: Option<&CertifiedIssuer<'static, KeyPair>>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        match issuer {
            None => CertifiedIssuer::self_signed(params, key).unwrap(),
            Some(issuer) => CertifiedIssuer::signed_by(params, key, issuer).unwrap(),
        }
    }

    fn leaf(
        names: &[&str],
        until: i64,
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "leaf.test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let secs = |t: i64| std::time::Duration::from_secs(u64::try_from(t).unwrap());
        params.not_before = epoch + secs(NOW - 30 * DAY);
        params.not_after = epoch + secs(until);
        params
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap()
            .der()
            .clone()
    }

    fn run(
        chain: &[CertificateDer<'static>],
        root: &CertificateDer<'static>,
        name: &str,
    ) -> Vec<Check> {
        let mut roots = RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let roots = Arc::new(roots);
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        chain_checks(&ChainInput {
            chain,
            roots: &roots,
            trust_label: "the test CA",
            name: &server_name,
            name_text: name,
            now: NOW,
        })
    }

    fn status<'a>(checks: &'a [Check], id: &str) -> (&'a Status, &'a str) {
        let c = checks.iter().find(|c| c.id == id).unwrap();
        (&c.status, &c.reason)
    }

    #[test]
    fn a_full_chain_passes_everything() {
        let root = ca("root", None);
        let inter = ca("intermediate", Some(&root));
        let chain = vec![
            leaf(&["dns.test"], NOW + 90 * DAY, &inter),
            inter.der().clone(),
        ];
        let checks = run(&chain, root.der(), "dns.test");
        for c in &checks {
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
        assert_eq!(checks.len(), 7);
    }

    #[test]
    fn leaf_only_is_the_missing_intermediate() {
        let root = ca("root", None);
        let inter = ca("intermediate", Some(&root));
        let chain = vec![leaf(&["dns.test"], NOW + 90 * DAY, &inter)];
        let checks = run(&chain, root.der(), "dns.test");
        let (s, reason) = status(&checks, "intermediates");
        assert_eq!(*s, Status::Fail);
        assert!(
            reason.contains("the server does not send its intermediate certificate"),
            "{reason}"
        );
        assert_eq!(*status(&checks, "chain").0, Status::Fail);
        // Issued by the root itself: nothing is missing.
        let chain = vec![leaf(&["dns.test"], NOW + 90 * DAY, &root)];
        let checks = run(&chain, root.der(), "dns.test");
        assert_eq!(*status(&checks, "intermediates").0, Status::Pass);
        assert_eq!(*status(&checks, "chain").0, Status::Pass);
    }

    #[test]
    fn expiry_and_names() {
        let root = ca("root", None);
        let chain = vec![leaf(&["dns.test"], NOW - DAY, &root), root.der().clone()];
        let checks = run(&chain, root.der(), "dns.test");
        assert_eq!(*status(&checks, "expiry").0, Status::Fail);
        assert_eq!(*status(&checks, "chain").0, Status::Fail);
        let chain = vec![leaf(&["dns.test"], NOW + 5 * DAY, &root)];
        assert_eq!(
            *status(&run(&chain, root.der(), "dns.test"), "expiry").0,
            Status::Warn
        );
        let checks = run(&chain, root.der(), "other.test");
        assert_eq!(*status(&checks, "name").0, Status::Fail);
        assert_eq!(*status(&checks, "chain").0, Status::Pass);
    }

    #[test]
    fn an_untrusted_root_is_not_a_missing_intermediate() {
        let root = ca("root", None);
        let other = ca("other root", None);
        let chain = vec![
            leaf(&["dns.test"], NOW + 90 * DAY, &root),
            root.der().clone(),
        ];
        let checks = run(&chain, other.der(), "dns.test");
        let (s, reason) = status(&checks, "chain");
        assert_eq!(*s, Status::Fail);
        assert!(reason.contains("ends at CN=root"), "{reason}");
        assert_eq!(*status(&checks, "intermediates").0, Status::Pass);
    }

    /// [leaf, a certificate that did not issue it]: the issuer is missing,
    /// in the words the server's warning uses too.
    #[test]
    fn an_unrelated_second_certificate_is_a_missing_intermediate() {
        let root = ca("root", None);
        let inter = ca("intermediate", Some(&root));
        let unrelated = ca("unrelated", None);
        let chain = vec![
            leaf(&["dns.test"], NOW + 90 * DAY, &inter),
            unrelated.der().clone(),
        ];
        let checks = run(&chain, root.der(), "dns.test");
        let (s, reason) = status(&checks, "intermediates");
        assert_eq!(*s, Status::Fail);
        let server = chain::check_chain(&chain, false, Some("dns.test"), NOW).findings;
        let [chain::Finding::MissingIntermediate(missing)] = &server[..] else {
            panic!("the server judged otherwise: {server:?}");
        };
        assert!(reason.contains(&missing.to_string()), "{reason}");
        assert!(
            reason.contains("the leaf's issuer (CN=intermediate) is not sent"),
            "{reason}"
        );
        let (s, reason) = status(&checks, "chain");
        assert_eq!(*s, Status::Fail);
        assert!(reason.contains(&missing.to_string()), "{reason}");
    }
}
