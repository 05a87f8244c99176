//! Client IDs carried in the TLS server name (`--client-id-domain`,
//! `--client-id`, `--client-ids`): a client that asks for
//! `alice-phone.dns.example.org` under the domain `dns.example.org` has the
//! ID `alice-phone`. The pure part: parsing IDs, lists and server names.

use std::path::{Path, PathBuf};

/// The longest ID: one DNS label.
pub const MAX_ID_LEN: usize = 63;

/// `--client-id-domain` and the listed IDs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdSettings {
    /// The domain under which the first label of the server name is the
    /// client's ID; lower case, without a trailing dot. `None`: no IDs.
    pub domain: Option<String>,
    /// `--client-id` values, lower case.
    pub listed: Vec<String>,
    /// `--client-ids FILE`, re-read when it changes and on SIGHUP.
    pub file: Option<PathBuf>,
}

impl ClientIdSettings {
    /// True when only listed IDs are served (any list given).
    pub fn is_private(&self) -> bool {
        !self.listed.is_empty() || self.file.is_some()
    }
}

/// Why an ID or a list is refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientIdError {
    #[error("{0:?} is not a client ID: use 1 to 63 letters, digits and hyphens (one DNS label)")]
    BadId(String),
    #[error("line {line}: {error}")]
    Line {
        line: usize,
        error: Box<ClientIdError>,
    },
    #[error("cannot read --client-ids file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--client-ids file {path}: {error}")]
    File {
        path: String,
        error: Box<ClientIdError>,
    },
}

/// Reads and parses an ID file (see [`parse_id_list`]); the error names
/// the file and, for a bad ID, its line.
pub fn read_id_file(path: &Path) -> Result<Vec<String>, ClientIdError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ClientIdError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_id_list(&text).map_err(|error| ClientIdError::File {
        path: shown,
        error: Box::new(error),
    })
}

/// Checks one ID and returns it in lower case.
pub fn parse_id(id: &str) -> Result<String, ClientIdError> {
    let id = id.trim();
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ClientIdError::BadId(id.to_string()))
    }
}

/// Reads an ID file: one ID a line; blank lines and everything from `#`
/// to the end of a line are ignored. One bad line refuses the whole file,
/// so that a typo never revokes every device at once.
pub fn parse_id_list(text: &str) -> Result<Vec<String>, ClientIdError> {
    let mut ids = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let id = parse_id(line).map_err(|error| ClientIdError::Line {
            line: index + 1,
            error: Box::new(error),
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// The client ID a server name carries under `domain` (lower case, no
/// trailing dot): the one label in front of it, in lower case. `None` for
/// the domain itself, a name outside it, a name with more labels in front,
/// or a label that is not an ID.
pub fn id_from_server_name(domain: &str, server_name: &str) -> Option<String> {
    let name = server_name.strip_suffix('.').unwrap_or(server_name);
    if name.len() <= domain.len() + 1 {
        return None;
    }
    let (label, rest) = name.split_at(name.len() - domain.len() - 1);
    let rest = rest.strip_prefix('.')?;
    if !rest.eq_ignore_ascii_case(domain) || label.contains('.') {
        return None;
    }
    parse_id(label).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_label_of_letters_digits_and_hyphens() {
        assert_eq!(parse_id("Alice-Phone2").unwrap(), "alice-phone2");
        assert_eq!(parse_id(&"a".repeat(63)).unwrap().len(), 63);
        for bad in ["", "a.b", "a_b", "ä", &"a".repeat(64), "a b"] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists_skip_comments_and_name_the_bad_line() {
        let ids = parse_id_list("# family\nalice\n\n  Bob  # tablet\n#carol\n").unwrap();
        assert_eq!(ids, ["alice", "bob"]);
        let e = parse_id_list("alice\nbad id\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bad id"), "{e}");
        assert_eq!(parse_id_list("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_first_label_under_the_domain_is_the_id() {
        let d = "dns.test";
        assert_eq!(
            id_from_server_name(d, "alice.dns.test").as_deref(),
            Some("alice")
        );
        assert_eq!(
            id_from_server_name(d, "ALICE.DNS.Test.").as_deref(),
            Some("alice")
        );
        for none in [
            "dns.test",
            "xdns.test",
            "a.b.dns.test",
            "alice.dns.example",
            ".dns.test",
            "test",
            "a_b.dns.test",
        ] {
            assert_eq!(id_from_server_name(d, none), None, "{none}");
        }
    }
}
