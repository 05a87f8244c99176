//! The one judge of a certificate chain, for the server's start-up and
//! reload warnings and for `dotgate check` alike, so that both give the
//! same answer on the same chain (R3): whether the leaf's issuer is sent
//! (Android strict mode does not fetch missing intermediates), whether the
//! name is covered, and expiry.
//!
//! [`judge`] decides; [`check_chain`] words its verdict as the server's log
//! warnings, `check::cert` as `dotgate check` lines. What only a client can
//! judge (path verification against a trust store) stays in `check::cert`;
//! what depends on the trust store here is passed in as a predicate, which
//! the server, knowing no store, answers with "no".
//!
//! Pure functions of the chain, the name and the time, so that they are unit
//! tested with generated certificates. None of the findings stops dotgate: a
//! key that does not match the leaf is the one fatal problem, and
//! `CertifiedKey::from_der` reports it before these checks run.
//!
//! Over 700 lines: about 400 of them are unit tests over generated chains.
//! Splitting the checks from the DER field reading is left for later.

use std::fmt;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// Warn this long before a certificate of the chain expires: time for one
/// failed renewal and a retry (certbot renews 30 days ahead, cert-manager
/// at two thirds of life).
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Seconds in a day, for the expiry arithmetic on UNIX times.
pub const DAY: i64 = 24 * 60 * 60;

/// The one way the chain checks write a date: `YYYY-MM-DD` (UTC), from
/// x509-parser's own calendar (the `time` crate).
pub fn date(unix: i64) -> String {
    match ASN1Time::from_timestamp(unix) {
        Ok(t) => t.to_datetime().date().to_string(),
        // Out of `time`'s range (years beyond ±9999): never from a parsed
        // certificate, whose dates come from that same range.
        Err(_) => format!("{unix} s after 1970"),
    }
}

/// What the judge needs besides the chain.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    /// `--self-signed`: a leaf without issuer is expected.
    pub self_signed_on_purpose: bool,
    /// True when a name (DER) is a root of the trust store in use; then a
    /// leaf it issued needs no intermediate. The server, which cannot know
    /// its clients' stores, answers false.
    pub is_trusted_root: &'a dyn Fn(&[u8]) -> bool,
    /// The name clients ask for, if known (`--tls-name`).
    pub name: Option<&'a str>,
    /// Seconds since the UNIX epoch.
    pub now: i64,
}

/// Why a chain could not be judged at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeError {
    #[error("the chain is empty")]
    Empty,
    #[error("cannot read the leaf certificate ({0})")]
    UnreadableLeaf(String),
}

/// Whether the certificates a client needs to reach a root are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intermediates {
    /// The leaf is self-issued (or `--self-signed`): no issuer to send.
    SelfSigned,
    /// The leaf's issuer is sent; `in_order` when each certificate is
    /// followed by its issuer, as TLS 1.2 requires and old clients expect.
    Sent { in_order: bool },
    /// Not sent, but the trust store holds the issuer as a root itself.
    IssuerIsTrustedRoot { issuer: String },
    /// Not sent, and not known as a root: clients that do not fetch
    /// intermediates refuse the chain.
    Missing(MissingIssuer),
}

/// The leaf's issuer is in no certificate sent after it. `Display` is the
/// sentence both the server and `dotgate check` use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingIssuer {
    /// The leaf's issuer, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: String,
    /// How many certificates are sent besides the leaf (none of which
    /// issued it).
    pub others: usize,
}

impl fmt::Display for MissingIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuer = &self.issuer;
        match self.others {
            0 => write!(f, "the leaf's issuer ({issuer}) is not sent: only the leaf is"),
            1 => write!(
                f,
                "the leaf's issuer ({issuer}) is not sent: the other certificate sent did not issue the leaf"
            ),
            n => write!(
                f,
                "the leaf's issuer ({issuer}) is not sent: none of the {n} other certificates sent issued the leaf"
            ),
        }
    }
}

/// The validity of the chain; the first that applies, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// The leaf has expired (UNIX time of its end).
    Expired { not_after: i64 },
    /// The leaf is not valid yet (a clock problem, or a certificate from the
    /// future).
    NotYetValid { not_before: i64 },
    /// Another certificate sent has expired: clients that build the path
    /// through it fail (as with the expired DST Root CA X3 cross-sign).
    OtherExpired { subject: String, not_after: i64 },
    /// The leaf, or an intermediate (`subject` set), expires within
    /// [`EXPIRY_WARNING_DAYS`].
    ExpiresSoon {
        subject: Option<String>,
        not_after: i64,
        days_left: i64,
    },
    /// Everything sent is in date; the leaf lasts `days_left` more days.
    InDate { not_after: i64, days_left: i64 },
}

/// Whether the leaf covers the name clients ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameVerdict {
    /// Covered, by this SAN (e.g. `DNS:*.example.net`).
    Covered { name: String, by: String },
    /// Not covered; `sans` are the leaf's SANs as text.
    NotCovered { name: String, sans: Vec<String> },
}

/// The judge's answer on one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub leaf: CertFacts,
    /// The other certificates sent that could be read, in order.
    pub others: Vec<CertFacts>,
    /// How many certificates were sent, the leaf and unreadable ones
    /// included.
    pub sent: usize,
    pub intermediates: Intermediates,
    pub expiry: Expiry,
    /// `None` when no name was given.
    pub name: Option<NameVerdict>,
}

/// Judges `chain` (leaf first).
pub fn judge(chain: &[CertificateDer<'_>], judge: &Judge<'_>) -> Result<Verdict, JudgeError> {
    let first = chain.first().ok_or(JudgeError::Empty)?;
    let leaf = cert_facts(first).map_err(JudgeError::UnreadableLeaf)?;
    let others: Vec<CertFacts> = chain[1..]
        .iter()
        .filter_map(|c| cert_facts(c).ok())
        .collect();
    Ok(Verdict {
        intermediates: intermediates(&leaf, &others, chain.len(), judge),
        expiry: expiry(&leaf, &others, judge.now),
        name: judge.name.map(|name| name_verdict(name, &leaf.sans)),
        leaf,
        others,
        sent: chain.len(),
    })
}

fn intermediates(
    leaf: &CertFacts,
    others: &[CertFacts],
    sent: usize,
    judge: &Judge<'_>,
) -> Intermediates {
    if leaf.self_issued || judge.self_signed_on_purpose {
        return Intermediates::SelfSigned;
    }
    if others.iter().any(|c| c.subject_der == leaf.issuer_der) {
        let in_order = std::iter::once(leaf)
            .chain(others)
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0].issuer_der == w[1].subject_der);
        return Intermediates::Sent { in_order };
    }
    if (judge.is_trusted_root)(&leaf.issuer_der) {
        return Intermediates::IssuerIsTrustedRoot {
            issuer: leaf.issuer.clone(),
        };
    }
    Intermediates::Missing(MissingIssuer {
        issuer: leaf.issuer.clone(),
        others: sent.saturating_sub(1),
    })
}

fn expiry(leaf: &CertFacts, others: &[CertFacts], now: i64) -> Expiry {
    if now > leaf.not_after {
        return Expiry::Expired {
            not_after: leaf.not_after,
        };
    }
    if now < leaf.not_before {
        return Expiry::NotYetValid {
            not_before: leaf.not_before,
        };
    }
    if let Some(gone) = others.iter().find(|c| now > c.not_after) {
        return Expiry::OtherExpired {
            subject: gone.subject.clone(),
            not_after: gone.not_after,
        };
    }
    // Roots sent along are not counted: clients use their own copy.
    let soonest = others
        .iter()
        .filter(|c| !c.self_issued && c.not_after < leaf.not_after)
        .min_by_key(|c| c.not_after);
    let (subject, not_after) = match soonest {
        Some(c) => (Some(c.subject.clone()), c.not_after),
        None => (None, leaf.not_after),
    };
    if not_after - now < EXPIRY_WARNING_DAYS * DAY {
        return Expiry::ExpiresSoon {
            subject,
            not_after,
            days_left: (not_after - now) / DAY,
        };
    }
    Expiry::InDate {
        not_after: leaf.not_after,
        days_left: (leaf.not_after - now) / DAY,
    }
}

fn name_verdict(name: &str, sans: &[San]) -> NameVerdict {
    match sans
        .iter()
        .find(|san| name_covered(name, std::slice::from_ref(*san)))
    {
        Some(san) => NameVerdict::Covered {
            name: name.to_string(),
            by: san.to_string(),
        },
        None => NameVerdict::NotCovered {
            name: name.to_string(),
            sans: sans.iter().map(San::to_string).collect(),
        },
    }
}

/// What the log says about the certificate being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The subject's distinguished name, e.g. `CN=dns.example`.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The end of validity, as [`date`] writes it.
    pub not_after: String,
    /// The end of validity in seconds since the UNIX epoch.
    pub not_after_unix: i64,
    /// Certificates in the chain, the leaf included.
    pub chain_len: usize,
}

/// A problem worth a warning in the server's log; `Display` is the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The chain cannot be judged (rustls accepted it).
    Unparsable(String),
    /// The leaf's issuer is not sent: the intermediates are missing.
    MissingIntermediate(MissingIssuer),
    /// The leaf's SANs do not cover `--tls-name`.
    NameNotCovered { name: String, sans: Vec<String> },
    /// The leaf, or the intermediate `subject`, expires within
    /// [`EXPIRY_WARNING_DAYS`].
    ExpiresSoon {
        subject: Option<String>,
        not_after: String,
        days_left: i64,
    },
    /// The leaf has expired.
    Expired { not_after: String },
    /// Another certificate of the chain has expired.
    OtherExpired { subject: String, not_after: String },
    /// The leaf is not valid yet (a clock problem, or a certificate from the
    /// future).
    NotYetValid { not_before: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unparsable(e) => write!(
                f,
                "cannot read the certificate for the chain checks ({e}); serving it unchecked"
            ),
            Finding::MissingIntermediate(missing) => write!(
                f,
                "the intermediate certificate is missing: {missing}: \
                 clients that do not fetch intermediates, Android's Private DNS among them, \
                 will refuse it; give the full chain, leaf first (certbot's fullchain.pem). \
                 Ignore this only if every client trusts that issuer itself (a private CA, \
                 as with certs/gen-test-certs.sh)"
            ),
            Finding::NameNotCovered { name, sans } => {
                let sans = if sans.is_empty() {
                    "none".to_string()
                } else {
                    sans.join(", ")
                };
                write!(
                    f,
                    "the certificate does not cover --tls-name {name} (its subject alternative names: {sans}): \
                     clients that verify the name will refuse it"
                )
            }
            Finding::ExpiresSoon {
                subject,
                not_after,
                days_left,
            } => {
                let which = match subject {
                    Some(subject) => format!("the intermediate certificate {subject}"),
                    None => "the certificate".to_string(),
                };
                write!(
                    f,
                    "{which} expires in {days_left} days ({not_after}): renew it \
                     (dotgate reloads renewed files by itself, or on SIGHUP)"
                )
            }
            Finding::Expired { not_after } => write!(
                f,
                "the certificate EXPIRED on {not_after}: clients that verify it refuse every connection"
            ),
            Finding::OtherExpired { subject, not_after } => write!(
                f,
                "{subject} in the certificate file EXPIRED on {not_after}: clients that build the \
                 path through it fail; serve the CA's current intermediate instead"
            ),
            Finding::NotYetValid { not_before } => write!(
                f,
                "the certificate is not valid before {not_before}: check the system clock"
            ),
        }
    }
}

/// The result of checking one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `None` when the leaf cannot be parsed (then `findings` says so).
    pub leaf: Option<LeafInfo>,
    pub findings: Vec<Finding>,
}

/// The server's reading of [`judge`]: checks `chain` (leaf first) at `now`
/// (seconds since the UNIX epoch), knowing no trust store.
/// `self_signed_on_purpose` is set for `--self-signed`, where a one-element
/// chain is expected. `tls_name` is `--tls-name`, if given.
pub fn check_chain(
    chain: &[CertificateDer<'_>],
    self_signed_on_purpose: bool,
    tls_name: Option<&str>,
    now: i64,
) -> Report {
    let verdict = match judge(
        chain,
        &Judge {
            self_signed_on_purpose,
            is_trusted_root: &|_| false,
            name: tls_name,
            now,
        },
    ) {
        Ok(verdict) => verdict,
        Err(e) => {
            return Report {
                leaf: None,
                findings: vec![Finding::Unparsable(e.to_string())],
            }
        }
    };
    let leaf = &verdict.leaf;
    let info = LeafInfo {
        subject: leaf.subject.clone(),
        issuer: leaf.issuer.clone(),
        not_after: date(leaf.not_after),
        not_after_unix: leaf.not_after,
        chain_len: verdict.sent,
    };
    let mut findings = Vec::new();
    if let Intermediates::Missing(missing) = &verdict.intermediates {
        findings.push(Finding::MissingIntermediate(missing.clone()));
    }
    if let Some(NameVerdict::NotCovered { name, sans }) = &verdict.name {
        findings.push(Finding::NameNotCovered {
            name: name.clone(),
            sans: sans.clone(),
        });
    }
    match &verdict.expiry {
        Expiry::Expired { not_after } => findings.push(Finding::Expired {
            not_after: date(*not_after),
        }),
        Expiry::NotYetValid { not_before } => findings.push(Finding::NotYetValid {
            not_before: date(*not_before),
        }),
        Expiry::OtherExpired { subject, not_after } => findings.push(Finding::OtherExpired {
            subject: subject.clone(),
            not_after: date(*not_after),
        }),
        Expiry::ExpiresSoon {
            subject,
            not_after,
            days_left,
        } => findings.push(Finding::ExpiresSoon {
            subject: subject.clone(),
            not_after: date(*not_after),
            days_left: *days_left,
        }),
        Expiry::InDate { .. } => {}
    }
    Report {
        leaf: Some(info),
        findings,
    }
}

/// What `dotgate check` reads from one certificate of a served chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Distinguished names, e.g. `CN=dns.example`.
    pub subject: String,
    pub issuer: String,
    /// The same names as DER, for matching a certificate to its issuer.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    /// Subject and issuer are the same name (a root, or a self-signed leaf).
    pub self_issued: bool,
    /// Validity, in seconds since the UNIX epoch, and the end as written.
    pub not_before: i64,
    pub not_after: i64,
    pub not_after_text: String,
    pub sans: Vec<San>,
    pub eku: Eku,
    pub key: KeyKind,
    pub signature: SignatureKind,
}

/// The extended key usage extension, as TLS clients read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eku {
    /// No extension: any purpose for RFC 5280 and webpki; Apple requires one.
    Absent,
    /// serverAuth (or anyExtendedKeyUsage) is listed.
    ServerAuth,
    /// The extension lists other purposes only: TLS clients refuse the leaf.
    Other,
}

/// The certificate's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Rsa {
        bits: usize,
    },
    /// An elliptic-curve key on a named curve (`P-256`, `P-384`, `P-521`, or
    /// the curve's OID).
    Ec {
        curve: String,
    },
    Ed25519,
    Other {
        algorithm: String,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits} bits"),
            KeyKind::Ec { curve } => write!(f, "ECDSA {curve}"),
            KeyKind::Ed25519 => write!(f, "Ed25519"),
            KeyKind::Other { algorithm } => write!(f, "key algorithm {algorithm}"),
        }
    }
}

/// How R24 judges a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// RSA of at least 2048 bits, or ECDSA P-256 or P-384: every client.
    Accepted,
    /// Valid, but some clients (Apple's, Android's) do not accept it.
    Unusual,
    /// Too weak, or unknown: clients refuse it.
    Refused,
}

impl KeyKind {
    pub fn verdict(&self) -> KeyVerdict {
        match self {
            KeyKind::Rsa { bits } if *bits >= 2048 => KeyVerdict::Accepted,
            KeyKind::Rsa { .. } => KeyVerdict::Refused,
            KeyKind::Ec { curve } if curve == "P-256" || curve == "P-384" => KeyVerdict::Accepted,
            KeyKind::Ec { curve } if curve == "P-521" => KeyVerdict::Unusual,
            KeyKind::Ed25519 => KeyVerdict::Unusual,
            KeyKind::Ec { .. } | KeyKind::Other { .. } => KeyVerdict::Refused,
        }
    }
}

/// The algorithm a certificate is signed with (by its issuer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureKind {
    /// A SHA-2 signature, e.g. `sha256WithRSAEncryption`, `ecdsa-with-SHA384`,
    /// `RSASSA-PSS`.
    Sha2(&'static str),
    /// SHA-1 or MD5 based: refused by current clients.
    Obsolete(&'static str),
    Ed25519,
    /// Anything else, by OID.
    Other(String),
}

impl fmt::Display for SignatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureKind::Sha2(name) | SignatureKind::Obsolete(name) => f.write_str(name),
            SignatureKind::Ed25519 => f.write_str("Ed25519"),
            SignatureKind::Other(oid) => write!(f, "signature algorithm {oid}"),
        }
    }
}

/// Reads the facts of one DER certificate; the error is x509-parser's.
pub fn cert_facts(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    let eku = match cert.extended_key_usage() {
        Ok(Some(ext)) if ext.value.server_auth || ext.value.any => Eku::ServerAuth,
        Ok(Some(_)) => Eku::Other,
        Ok(None) => Eku::Absent,
        Err(e) => return Err(e.to_string()),
    };
    Ok(CertFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        subject_der: cert.subject().as_raw().to_vec(),
        issuer_der: cert.issuer().as_raw().to_vec(),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        not_after_text: validity.not_after.to_string(),
        sans: subject_alt_names(&cert),
        eku,
        key: key_kind(&cert),
        signature: signature_kind(&cert.signature_algorithm.algorithm.to_id_string()),
    })
}

fn key_kind(cert: &X509Certificate<'_>) -> KeyKind {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyKind::Rsa {
            bits: unsigned_bits(rsa.modulus),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string())
                .unwrap_or_default();
            let curve = match curve.as_str() {
                "1.2.840.10045.3.1.7" => "P-256".to_string(),
                "1.3.132.0.34" => "P-384".to_string(),
                "1.3.132.0.35" => "P-521".to_string(),
                _ => curve,
            };
            KeyKind::Ec { curve }
        }
        _ if algorithm == "1.3.101.112" => KeyKind::Ed25519,
        _ => KeyKind::Other { algorithm },
    }
}

/// The size in bits of a big-endian unsigned integer (leading zeros skipped).
fn unsigned_bits(bytes: &[u8]) -> usize {
    let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
    match bytes.first() {
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn signature_kind(oid: &str) -> SignatureKind {
    match oid {
        "1.2.840.113549.1.1.11" => SignatureKind::Sha2("sha256WithRSAEncryption"),
        "1.2.840.113549.1.1.12" => SignatureKind::Sha2("sha384WithRSAEncryption"),
        "1.2.840.113549.1.1.13" => SignatureKind::Sha2("sha512WithRSAEncryption"),
        "1.2.840.113549.1.1.10" => SignatureKind::Sha2("RSASSA-PSS"),
        "1.2.840.10045.4.3.2" => SignatureKind::Sha2("ecdsa-with-SHA256"),
        "1.2.840.10045.4.3.3" => SignatureKind::Sha2("ecdsa-with-SHA384"),
        "1.2.840.10045.4.3.4" => SignatureKind::Sha2("ecdsa-with-SHA512"),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => {
            SignatureKind::Obsolete("sha1WithRSAEncryption")
        }
        "1.2.840.10045.4.1" => SignatureKind::Obsolete("ecdsa-with-SHA1"),
        "1.2.840.113549.1.1.4" => SignatureKind::Obsolete("md5WithRSAEncryption"),
        "1.3.101.112" => SignatureKind::Ed25519,
        other => SignatureKind::Other(other.to_string()),
    }
}

/// A subject alternative name that clients match against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => write!(f, "DNS:{name}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// The dNSName and iPAddress SANs of `cert`. Clients ignore the subject CN
/// when SANs are present (and Android and Apple ignore it always), so the CN
/// is not consulted.
fn subject_alt_names(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|general| match general {
            GeneralName::DNSName(name) => Some(San::Dns(name.to_string())),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(San::Ip),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

/// True when one of `sans` covers `name`: an IP literal must equal an IP
/// SAN; a DNS name must equal a dNSName (case-insensitive, trailing dot
/// ignored) or match a wildcard one.
pub fn name_covered(name: &str, sans: &[San]) -> bool {
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return sans.iter().any(|san| matches!(san, San::Ip(s) if *s == ip));
    }
    sans.iter().any(|san| match san {
        San::Dns(pattern) => dns_name_matches(pattern, name),
        San::Ip(_) => false,
    })
}

/// RFC 6125 §6.4 as browsers and Android apply it: `*` only as the whole
/// leftmost label, standing for exactly one non-empty label, and not
/// directly above a single-label name (`*.com` matches nothing).
pub fn dns_name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || pattern.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        None => pattern == name,
        Some(parent) => {
            if !parent.contains('.') || parent.contains('*') {
                return false;
            }
            match name.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest == parent,
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    const NOW: i64 = 1_750_000_000;

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "check test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A leaf for `sans`, valid from `from` to `until` (UNIX seconds).
    fn leaf(
        sans: &[&str],
        from: i64,
        until: i64,
        issuer: &CertifiedIssuer<'static, KeyPair>,
    ) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "leaf.test");
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let secs = |t: i64| std::time::Duration::from_secs(u64::try_from(t).unwrap());
        params.not_before = epoch + secs(from);
        params.not_after = epoch + secs(until);
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn year_around_now(
        sans: &[&str],
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) -> CertificateDer<'static> {
        leaf(sans, NOW - 30 * DAY, NOW + 300 * DAY, ca)
    }

    #[test]
    fn a_good_chain_has_no_findings_and_reports_the_leaf() {
        let ca = ca();
        let chain = vec![year_around_now(&["dns.test"], &ca), ca.der().clone()];
        let report = check_chain(&chain, false, Some("dns.test"), NOW);
        assert_eq!(report.findings, vec![]);
        let info = report.leaf.unwrap();
        assert_eq!(info.subject, "CN=leaf.test");
        assert_eq!(info.issuer, "CN=check test CA");
        assert_eq!(info.not_after_unix, NOW + 300 * DAY);
        assert_eq!(info.chain_len, 2);
    }

    #[test]
    fn leaf_only_warns_unless_self_signed() {
        let ca = ca();
        let chain = vec![year_around_now(&["dns.test"], &ca)];
        let report = check_chain(&chain, false, None, NOW);
        assert_eq!(
            report.findings,
            vec![Finding::MissingIntermediate(MissingIssuer {
                issuer: "CN=check test CA".into(),
                others: 0,
            })]
        );
        assert!(report.findings[0].to_string().contains("fullchain.pem"));
        // --self-signed: expected.
        assert_eq!(check_chain(&chain, true, None, NOW).findings, vec![]);
        // A self-issued certificate alone (made by hand with openssl): fine.
        let own = rcgen::generate_simple_self_signed(vec!["dns.test".to_string()]).unwrap();
        let report = check_chain(&[own.cert.der().clone()], false, None, NOW);
        assert!(
            !report
                .findings
                .iter()
                .any(|f| matches!(f, Finding::MissingIntermediate(_))),
            "{report:?}"
        );
    }

    /// [leaf, a certificate that did not issue it]: the issuer is missing
    /// as surely as with the leaf alone. The server used to count
    /// certificates (two: fine) while `dotgate check` looked for the issuer.
    #[test]
    fn an_unrelated_second_certificate_is_no_intermediate() {
        let ca = ca();
        let unrelated = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).unwrap();
        let chain = vec![
            year_around_now(&["dns.test"], &ca),
            unrelated.cert.der().clone(),
        ];
        let missing = MissingIssuer {
            issuer: "CN=check test CA".into(),
            others: 1,
        };
        let no_roots = Judge {
            self_signed_on_purpose: false,
            is_trusted_root: &|_| false,
            name: Some("dns.test"),
            now: NOW,
        };
        let verdict = judge(&chain, &no_roots).unwrap();
        assert_eq!(
            verdict.intermediates,
            Intermediates::Missing(missing.clone())
        );
        assert_eq!(
            missing.to_string(),
            "the leaf's issuer (CN=check test CA) is not sent: \
             the other certificate sent did not issue the leaf"
        );
        // The server's warning says the same.
        let findings = check_chain(&chain, false, Some("dns.test"), NOW).findings;
        assert_eq!(
            findings,
            vec![Finding::MissingIntermediate(missing.clone())]
        );
        assert!(findings[0].to_string().contains(&missing.to_string()));
        // Unless the trust store in use holds the issuer as a root.
        let ca_name = cert_facts(ca.der()).unwrap().subject_der;
        let is_ca = |name: &[u8]| name == ca_name.as_slice();
        let with_ca = Judge {
            is_trusted_root: &is_ca,
            ..no_roots
        };
        assert_eq!(
            judge(&chain, &with_ca).unwrap().intermediates,
            Intermediates::IssuerIsTrustedRoot {
                issuer: "CN=check test CA".into()
            }
        );
        // With the CA sent after the unrelated one: sent, out of order.
        let mut disordered = chain.clone();
        disordered.push(ca.der().clone());
        assert_eq!(
            judge(&disordered, &no_roots).unwrap().intermediates,
            Intermediates::Sent { in_order: false }
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(NOW), "2025-06-15");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(-DAY), "1969-12-31");
        assert!(!date(i64::MAX).is_empty());
    }

    #[test]
    fn tls_name_must_be_covered() {
        let ca = ca();
        let chain = vec![
            year_around_now(
                &["dns.test", "*.wild.test", "192.0.2.1", "2001:db8::1"],
                &ca,
            ),
            ca.der().clone(),
        ];
        for good in [
            "dns.test",
            "DNS.Test.",
            "a.wild.test",
            "192.0.2.1",
            "2001:db8::1",
            "[2001:db8::1]",
        ] {
            assert_eq!(
                check_chain(&chain, false, Some(good), NOW).findings,
                vec![],
                "{good}"
            );
        }
        for bad in [
            "other.test",
            "wild.test",
            "a.b.wild.test",
            "192.0.2.2",
            "::1",
        ] {
            let findings = check_chain(&chain, false, Some(bad), NOW).findings;
            assert!(
                matches!(&findings[..], [Finding::NameNotCovered { name, .. }] if name == bad),
                "{bad}: {findings:?}"
            );
        }
        let message = check_chain(&chain, false, Some("other.test"), NOW).findings[0].to_string();
        assert!(
            message.contains("other.test")
                && message.contains("DNS:dns.test")
                && message.contains("IP:192.0.2.1"),
            "{message}"
        );
    }

    #[test]
    fn expiry_warnings() {
        let ca = ca();
        let check = |until: i64| {
            let chain = vec![
                leaf(&["dns.test"], NOW - 90 * DAY, until, &ca),
                ca.der().clone(),
            ];
            check_chain(&chain, false, None, NOW).findings
        };
        assert_eq!(check(NOW + 15 * DAY), vec![]);
        let soon = check(NOW + 13 * DAY + 60);
        assert!(
            matches!(&soon[..], [Finding::ExpiresSoon { days_left: 13, .. }]),
            "{soon:?}"
        );
        let gone = check(NOW - 60);
        assert!(matches!(&gone[..], [Finding::Expired { .. }]), "{gone:?}");
        assert!(gone[0].to_string().contains("EXPIRED"));
    }

    /// An intermediate's expiry counts as the leaf's does: soon is a
    /// warning naming it, past is a warning that it EXPIRED.
    #[test]
    fn intermediate_expiry_warnings() {
        let ca = ca();
        let inter = |until: i64| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "check test intermediate");
            let epoch = rcgen::date_time_ymd(1970, 1, 1);
            params.not_before = epoch + std::time::Duration::from_secs((NOW - 90 * DAY) as u64);
            params.not_after = epoch + std::time::Duration::from_secs(until as u64);
            CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &ca).unwrap()
        };
        let check = |until: i64| {
            let inter = inter(until);
            let chain = vec![year_around_now(&["dns.test"], &inter), inter.der().clone()];
            check_chain(&chain, false, None, NOW).findings
        };
        let soon = check(NOW + 3 * DAY + 60);
        assert!(
            matches!(&soon[..], [Finding::ExpiresSoon { subject: Some(s), days_left: 3, .. }]
                if s == "CN=check test intermediate"),
            "{soon:?}"
        );
        let gone = check(NOW - DAY);
        assert!(
            matches!(&gone[..], [Finding::OtherExpired { .. }]),
            "{gone:?}"
        );
        assert!(gone[0].to_string().contains("EXPIRED"), "{}", gone[0]);
    }

    #[test]
    fn not_yet_valid_is_reported() {
        let ca = ca();
        let chain = vec![
            leaf(&["dns.test"], NOW + DAY, NOW + 90 * DAY, &ca),
            ca.der().clone(),
        ];
        let findings = check_chain(&chain, false, None, NOW).findings;
        assert!(
            matches!(&findings[..], [Finding::NotYetValid { .. }]),
            "{findings:?}"
        );
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        let report = check_chain(&[garbage], false, Some("dns.test"), NOW);
        assert_eq!(report.leaf, None);
        assert!(matches!(&report.findings[..], [Finding::Unparsable(_)]));
        let report = check_chain(&[], false, None, NOW);
        assert!(matches!(&report.findings[..], [Finding::Unparsable(_)]));
    }

    #[test]
    fn wildcard_rules() {
        assert!(dns_name_matches("*.example.com", "a.example.com"));
        assert!(dns_name_matches("*.Example.com.", "A.example.COM"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("*.example.com", ".example.com"));
        assert!(!dns_name_matches("*.com", "example.com"));
        assert!(!dns_name_matches("a*.example.com", "ab.example.com"));
        assert!(!dns_name_matches("*.*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("", ""));
        assert!(dns_name_matches("example.com", "example.com."));
    }

    /// A certificate for dns.test signed by `ca`, with this key and EKU.
    fn cert_with(
        key: &KeyPair,
        eku: Vec<rcgen::ExtendedKeyUsagePurpose>,
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["dns.test".to_string()]).unwrap();
        params.extended_key_usages = eku;
        params.signed_by(key, ca).unwrap().der().clone()
    }

    #[test]
    fn facts_of_keys_signatures_and_ekus() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = ca();
        let ec = KeyPair::generate().unwrap();
        let facts = cert_facts(&cert_with(&ec, vec![ServerAuth], &ca)).unwrap();
        assert_eq!(
            facts.key,
            KeyKind::Ec {
                curve: "P-256".into()
            }
        );
        assert_eq!(facts.key.verdict(), KeyVerdict::Accepted);
        assert_eq!(facts.signature, SignatureKind::Sha2("ecdsa-with-SHA256"));
        assert_eq!(facts.eku, Eku::ServerAuth);
        assert_eq!(facts.sans, vec![San::Dns("dns.test".into())]);
        assert_eq!(facts.issuer, "CN=check test CA");
        assert!(!facts.self_issued);
        assert_eq!(facts.issuer_der, cert_facts(ca.der()).unwrap().subject_der);
        assert!(cert_facts(ca.der()).unwrap().self_issued);

        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let facts = cert_facts(&cert_with(&p384, vec![ClientAuth], &ca)).unwrap();
        assert_eq!(
            facts.key,
            KeyKind::Ec {
                curve: "P-384".into()
            }
        );
        assert_eq!(facts.eku, Eku::Other);
        assert_eq!(
            cert_facts(&cert_with(&p384, vec![], &ca)).unwrap().eku,
            Eku::Absent
        );

        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let facts = cert_facts(&cert_with(&ed, vec![ServerAuth], &ca)).unwrap();
        assert_eq!(facts.key, KeyKind::Ed25519);
        assert_eq!(facts.key.verdict(), KeyVerdict::Unusual);

        let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let facts = cert_facts(&cert_with(&rsa, vec![ServerAuth], &ca)).unwrap();
        assert_eq!(facts.key, KeyKind::Rsa { bits: 2048 });
        assert_eq!(facts.key.verdict(), KeyVerdict::Accepted);
        // Signed by the RSA key: the signature algorithm is the issuer's.
        let mut params = CertificateParams::new(vec!["rsa.test".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let rsa_ca = CertifiedIssuer::self_signed(params, rsa).unwrap();
        let facts = cert_facts(&cert_with(&ec, vec![ServerAuth], &rsa_ca)).unwrap();
        assert_eq!(
            facts.signature,
            SignatureKind::Sha2("sha256WithRSAEncryption")
        );
        assert_eq!(KeyKind::Rsa { bits: 1024 }.verdict(), KeyVerdict::Refused);
    }

    #[test]
    fn signature_names_and_bit_counts() {
        assert_eq!(
            signature_kind("1.2.840.113549.1.1.5"),
            SignatureKind::Obsolete("sha1WithRSAEncryption")
        );
        assert_eq!(
            signature_kind("1.2.840.10045.4.3.3"),
            SignatureKind::Sha2("ecdsa-with-SHA384")
        );
        assert_eq!(unsigned_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(unsigned_bits(&[0x7f, 0xff]), 15);
        assert_eq!(unsigned_bits(&[0, 0]), 0);
        assert!(cert_facts(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])).is_err());
    }

    #[test]
    fn ip_sans_only_cover_ip_literals() {
        let sans = [San::Ip("127.0.0.1".parse().unwrap())];
        assert!(name_covered("127.0.0.1", &sans));
        assert!(!name_covered("localhost", &sans));
        assert!(!name_covered("127.0.0.1", &[San::Dns("127.0.0.1".into())]));
    }
}
