//! DNS-01 (RFC 8555 §8.4) by RFC 2136 dynamic update signed with TSIG
//! (RFC 8945), which BIND, Knot, PowerDNS and most self-hosted
//! authoritative servers accept: the only challenge that issues wildcard
//! certificates (`*.dns.example.org`, for client IDs).
//!
//! For `NAME`, the TXT record `_acme-challenge.NAME` is added in the zone
//! that holds it (found from the server's SOA answer), dotgate waits until
//! the server itself answers it, and deletes it after validation. Updates go
//! over TCP; the server's answer must carry a valid TSIG signature.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::op::{update_message, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, RecordSet, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// TTL of the challenge record: short, as it lives for one validation.
const TXT_TTL: u32 = 60;
/// Allowed clock difference with the server for the TSIG signature.
const FUDGE: u16 = 300;
/// One exchange with the server.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the added record may take to show on the server.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read --acme-tsig-key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("--acme-tsig-key {path}: {why}; write name:algorithm:secret (e.g. acme:hmac-sha256:BASE64) or a BIND key block")]
    BadKey { path: String, why: String },
    #[error("the TSIG key: {0}")]
    Signer(String),
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("DNS update server {server}: {why}")]
    Exchange { server: SocketAddr, why: String },
    #[error("DNS update server {server} found no zone for {name} (no SOA in its answer): is it authoritative for it?")]
    NoZone { server: SocketAddr, name: String },
    #[error("DNS update server {server} refused the update of {name} with {rcode} (check that the TSIG key is allowed to update the zone {zone})")]
    Refused {
        server: SocketAddr,
        name: String,
        zone: String,
        rcode: ResponseCode,
    },
    #[error("DNS update server {server}: the answer is not signed with the TSIG key ({why})")]
    Unsigned { server: SocketAddr, why: String },
    #[error("DNS update server {server} does not answer the new TXT record of {name} within 30 s")]
    NotVisible { server: SocketAddr, name: String },
}

/// A TXT record that was added, for its deletion.
#[derive(Debug, Clone)]
pub struct Record {
    owner: Name,
    zone: Name,
    value: String,
}

/// Sends the signed updates to one authoritative server.
pub struct Updater {
    server: SocketAddr,
    signer: TSigner,
}

impl Updater {
    /// Reads the TSIG key file.
    pub fn new(server: SocketAddr, key: &Path) -> Result<Updater, DnsError> {
        let shown = key.display().to_string();
        let text = std::fs::read_to_string(key).map_err(|source| DnsError::ReadKey {
            path: shown.clone(),
            source,
        })?;
        let (name, algorithm, secret) =
            parse_key(&text).map_err(|why| DnsError::BadKey { path: shown, why })?;
        let signer = TSigner::new(secret, algorithm, name, FUDGE)
            .map_err(|e| DnsError::Signer(e.to_string()))?;
        Ok(Updater { server, signer })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Adds `_acme-challenge.NAME TXT value` and waits until the server
    /// answers it.
    pub async fn add(&self, name: &str, value: &str) -> Result<Record, DnsError> {
        let owner = Name::from_ascii(format!("_acme-challenge.{name}."))
            .map_err(|_| DnsError::BadName(name.to_string()))?;
        let zone = self.zone_of(&owner).await?;
        let update = update_message::append(txt_set(&owner, value), zone.clone(), false, false);
        self.update(update, &owner, &zone).await?;
        let deadline = Instant::now() + VISIBLE_TIMEOUT;
        while !self.answers(&owner, value).await? {
            if Instant::now() >= deadline {
                return Err(DnsError::NotVisible {
                    server: self.server,
                    name: owner.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(name = %owner, server = %self.server, "DNS-01: TXT record added");
        Ok(Record {
            owner,
            zone,
            value: value.to_string(),
        })
    }

    /// Deletes the record [`Updater::add`] added (only that value).
    pub async fn delete(&self, record: &Record) -> Result<(), DnsError> {
        let update = update_message::delete_by_rdata(
            txt_set(&record.owner, &record.value),
            record.zone.clone(),
            false,
        );
        self.update(update, &record.owner, &record.zone).await?;
        tracing::info!(name = %record.owner, "DNS-01: TXT record deleted");
        Ok(())
    }

    /// The zone that holds `name`: the owner of the SOA record in the
    /// server's answer (answer section at the apex, authority section
    /// below it).
    async fn zone_of(&self, name: &Name) -> Result<Name, DnsError> {
        let answer = self.query(name, RecordType::SOA).await?;
        answer
            .answers
            .iter()
            .chain(&answer.authorities)
            .find(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name))
            .map(|r| r.name.clone())
            .ok_or_else(|| DnsError::NoZone {
                server: self.server,
                name: name.to_string(),
            })
    }

    /// True when the server answers `value` among the TXT records of `name`.
    async fn answers(&self, name: &Name, value: &str) -> Result<bool, DnsError> {
        let answer = self.query(name, RecordType::TXT).await?;
        Ok(answer.answers.iter().any(|r| match &r.data {
            RData::TXT(txt) => txt
                .txt_data
                .iter()
                .any(|part| part.as_ref() == value.as_bytes()),
            _ => false,
        }))
    }

    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
        let mut message = Message::query();
        message.add_query(Query::query(name.clone(), rtype));
        let bytes = message.to_vec().map_err(|e| self.failed(e.to_string()))?;
        let raw = self.exchange(&bytes).await?;
        let answer = Message::from_vec(&raw).map_err(|e| self.failed(e.to_string()))?;
        if answer.metadata.id != message.metadata.id {
            return Err(self.failed("the answer has another ID".into()));
        }
        Ok(answer)
    }

    /// Signs and sends an update; the answer must be NOERROR and signed.
    async fn update(&self, mut update: Message, owner: &Name, zone: &Name) -> Result<(), DnsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verifier = update
            .finalize(&self.signer, now)
            .map_err(|e| DnsError::Signer(e.to_string()))?;
        let bytes = update.to_vec().map_err(|e| self.failed(e.to_string()))?;
        let raw = self.exchange(&bytes).await?;
        let answer = Message::from_vec(&raw).map_err(|e| self.failed(e.to_string()))?;
        if answer.metadata.id != update.metadata.id {
            return Err(self.failed("the answer has another ID".into()));
        }
        let rcode = answer.metadata.response_code;
        if rcode != ResponseCode::NoError {
            return Err(DnsError::Refused {
                server: self.server,
                name: owner.to_string(),
                zone: zone.to_string(),
                rcode,
            });
        }
        let Some(mut verifier) = verifier else {
            return Err(DnsError::Signer("no verifier for the answer".into()));
        };
        verifier.verify(&raw).map_err(|e| DnsError::Unsigned {
            server: self.server,
            why: e.to_string(),
        })?;
        Ok(())
    }

    /// One message over TCP, two-byte framed (RFC 1035 §4.2.2).
    async fn exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, DnsError> {
        let len = u16::try_from(bytes.len()).map_err(|_| self.failed("message too long".into()))?;
        let exchange = async {
            let mut tcp = TcpStream::connect(self.server).await?;
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(bytes);
            tcp.write_all(&framed).await?;
            let mut prefix = [0u8; 2];
            tcp.read_exact(&mut prefix).await?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            tcp.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("no answer within 10 s".into())),
        }
    }

    fn failed(&self, why: String) -> DnsError {
        DnsError::Exchange {
            server: self.server,
            why,
        }
    }
}

fn txt_set(owner: &Name, value: &str) -> RecordSet {
    let mut set = RecordSet::with_ttl(owner.clone(), RecordType::TXT, TXT_TTL);
    set.add_rdata(RData::TXT(TXT::new(vec![value.to_string()])));
    set
}

/// A TSIG key in one of the usual forms: `name:algorithm:secret` (also
/// `algorithm:name:secret`, as `knsupdate -y` and `nsupdate -y` write it),
/// or a BIND `key "name" { algorithm A; secret "S"; };` block as written by
/// `tsig-keygen`, `rndc-confgen` or `keymgr -t`. Lines starting with `#`
/// or `//` are comments.
fn parse_key(text: &str) -> Result<(Name, TsigAlgorithm, Vec<u8>), String> {
    let text: String = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with('#') && !l.starts_with("//")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (name, algorithm, secret) = if text.contains('{') {
        bind_block(&text)?
    } else {
        let line = text.trim();
        let parts: Vec<&str> = line.split(':').map(str::trim).collect();
        match parts.as_slice() {
            [a, b, secret] if a.to_ascii_lowercase().starts_with("hmac-") => {
                (b.to_string(), a.to_string(), secret.to_string())
            }
            [name, algorithm, secret] => {
                (name.to_string(), algorithm.to_string(), secret.to_string())
            }
            _ => return Err("not name:algorithm:secret".into()),
        }
    };
    let algorithm = match algorithm.to_ascii_lowercase().trim_end_matches('.') {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => {
            return Err(format!(
                "algorithm {other:?} is not supported (hmac-sha256, hmac-sha384 or hmac-sha512)"
            ))
        }
    };
    let name = Name::from_ascii(name.trim_end_matches('.'))
        .map_err(|_| format!("{name:?} is not a key name"))?;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .map_err(|_| "the secret is not base64".to_string())?;
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok((name, algorithm, secret))
}

/// `key "name" { algorithm hmac-sha256; secret "..."; };`
fn bind_block(text: &str) -> Result<(String, String, String), String> {
    let after_key = text
        .split_once("key")
        .map(|(_, rest)| rest)
        .ok_or("no `key` block")?;
    let (head, body) = after_key.split_once('{').ok_or("no `{` after key")?;
    let name = head.trim().trim_matches('"').to_string();
    let field = |field: &str| -> Result<String, String> {
        body.split(';')
            .map(str::trim)
            .find_map(|stmt| stmt.strip_prefix(field))
            .map(|value| value.trim().trim_matches('"').to_string())
            .ok_or_else(|| format!("no `{field}` in the key block"))
    };
    Ok((name, field("algorithm")?, field("secret")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "c2VjcmV0IGJ5dGVzIGZvciB0aGUgdGVzdCBvbmx5IQ==";

    #[test]
    fn key_forms() {
        let want = |text: &str| {
            let (name, algorithm, secret) = parse_key(text).unwrap();
            assert_eq!(name, Name::from_ascii("acme-key").unwrap(), "{text}");
            assert_eq!(algorithm, TsigAlgorithm::HmacSha256, "{text}");
            assert_eq!(secret, b"secret bytes for the test only!", "{text}");
        };
        want(&format!("acme-key:hmac-sha256:{SECRET}\n"));
        want(&format!("hmac-sha256:acme-key:{SECRET}"));
        want(&format!(
            "# made by keymgr\nkey \"acme-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        ));
        want(&format!(
            "key acme-key. {{ algorithm HMAC-SHA256; secret \"{SECRET}\"; }};"
        ));
        for bad in [
            "acme-key:hmac-md5:c2VjcmV0".to_string(),
            "acme-key:hmac-sha256:not base64!".to_string(),
            "just a line".to_string(),
            "key \"k\" { algorithm hmac-sha256; };".to_string(),
        ] {
            assert!(parse_key(&bad).is_err(), "{bad}");
        }
    }
}
