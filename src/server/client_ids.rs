//! The client-ID gate: who may finish a TLS handshake, judged on the
//! server name of the ClientHello (`--client-id-domain`, `--client-id`,
//! `--client-ids`), and the reload of the ID file.
//!
//! Refused clients get the fatal alert `access_denied` instead of a
//! ServerHello. Why that one and not `unrecognized_name`: the name was
//! read and understood; it is the access policy that says no, which is
//! what `access_denied` means (RFC 8446 §6.2). `unrecognized_name` tells a
//! client that the server has no such virtual host, and some clients
//! answer it by retrying without a server name, which would only fail
//! again. Either way, Android shows its usual "couldn't connect".
//!
//! The ID file is watched like the certificate: its metadata is polled
//! every [`POLL_INTERVAL`] and it is read again once it changed and held
//! still for a poll, or at once on SIGHUP. A file that fails to read or
//! parse keeps the previous list (one error in the log); open connections
//! are never touched by a reload, only new handshakes see the new list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::AlertDescription;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::client_id::{self, ClientIdError, ClientIdSettings};
use crate::tls::reload::{FileState, POLL_INTERVAL};

/// The alert a client without a listed ID gets.
pub const REFUSAL_ALERT: AlertDescription = AlertDescription::AccessDenied;

/// What the gate makes of one ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Served, with the client's ID if its server name carries one.
    Admit(Option<Arc<str>>),
    /// Not served: no listed ID.
    Refuse,
}

/// The domain, whether only listed IDs are served, and the list.
pub struct ClientIds {
    domain: Option<String>,
    private: bool,
    /// `--client-id` values, always listed.
    fixed: Vec<String>,
    file: Option<PathBuf>,
    /// `fixed` plus the file's IDs; swapped whole on a reload.
    listed: RwLock<Arc<HashSet<String>>>,
}

impl ClientIds {
    /// Reads the ID file, if any: a start-up with an unreadable or bad
    /// file fails, rather than serving nobody (or everybody).
    pub fn new(settings: &ClientIdSettings) -> Result<Self, ClientIdError> {
        let from_file = match &settings.file {
            Some(path) => client_id::read_id_file(path)?,
            None => Vec::new(),
        };
        let listed: HashSet<String> = settings.listed.iter().cloned().chain(from_file).collect();
        Ok(Self {
            domain: settings.domain.clone(),
            private: settings.is_private(),
            fixed: settings.listed.clone(),
            file: settings.file.clone(),
            listed: RwLock::new(Arc::new(listed)),
        })
    }

    /// True when only listed IDs are served.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// How many IDs are listed now.
    pub fn listed(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<HashSet<String>> {
        self.listed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Judges a client by the server name it sent (if any).
    pub fn judge(&self, server_name: Option<&str>) -> Judgement {
        let id = self
            .domain
            .as_deref()
            .zip(server_name)
            .and_then(|(domain, name)| client_id::id_from_server_name(domain, name));
        if !self.private {
            return Judgement::Admit(id.map(Arc::from));
        }
        match id {
            Some(id) if self.current().contains(&id) => Judgement::Admit(Some(Arc::from(id))),
            _ => Judgement::Refuse,
        }
    }

    /// Judges one DoH request: by the ID in its path when there is one
    /// (`/dns-query/ID`), or else by the ID its TLS server name carried
    /// (`sni`, admitted at the handshake). A path ID needs no domain; a
    /// malformed one is refused like an unlisted one.
    pub fn judge_request(&self, path_id: Option<&str>, sni: Option<&Arc<str>>) -> Judgement {
        match path_id {
            Some(id) => match client_id::parse_id(id) {
                Ok(id) if !self.private || self.current().contains(&id) => {
                    Judgement::Admit(Some(Arc::from(id)))
                }
                _ => Judgement::Refuse,
            },
            None if sni.is_some() || !self.private => Judgement::Admit(sni.cloned()),
            None => Judgement::Refuse,
        }
    }

    /// Watches the ID file (if any) until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        // Installed now, so that a SIGHUP right after start-up is caught.
        let hangup = signal(SignalKind::hangup());
        let ids = self.clone();
        tokio::spawn(async move {
            let mut hangup = match hangup {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; the client ID file is still watched");
                    None
                }
            };
            let mut attempted = FileState::of(&path);
            let mut seen = attempted.clone();
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let forced = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = next_hangup(&mut hangup) => true,
                    _ = tick.tick() => false,
                };
                let now = FileState::of(&path);
                let settled = now == seen;
                seen = now.clone();
                if forced || (settled && now != attempted) {
                    attempted = now;
                    ids.reload(&path).await;
                }
            }
        });
    }

    async fn reload(&self, path: &Path) {
        let owned = path.to_path_buf();
        let read = tokio::task::spawn_blocking(move || client_id::read_id_file(&owned)).await;
        match read {
            Ok(Ok(ids)) => {
                let listed: HashSet<String> = self.fixed.iter().cloned().chain(ids).collect();
                let count = listed.len();
                *self.listed.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(listed);
                tracing::info!(file = %path.display(), ids = count, "client IDs reloaded: new handshakes see the new list");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "client ID reload failed: still serving the previous list")
            }
            Err(e) => {
                tracing::error!(error = %e, "client ID reload failed: still serving the previous list")
            }
        }
    }
}

/// The next SIGHUP; never when there is no handler (or it is gone).
async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(stream) = hangup {
        if stream.recv().await.is_some() {
            return;
        }
        *hangup = None;
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(listed: &[&str]) -> ClientIds {
        ClientIds::new(&ClientIdSettings {
            domain: Some("dns.test".into()),
            listed: listed.iter().map(|s| s.to_string()).collect(),
            file: None,
        })
        .unwrap()
    }

    #[test]
    fn a_private_gate_admits_listed_ids_only() {
        let g = gate(&["alice"]);
        assert_eq!(
            g.judge(Some("Alice.dns.test")),
            Judgement::Admit(Some("alice".into()))
        );
        for refused in [
            Some("mallory.dns.test"),
            Some("dns.test"),
            Some("other.example"),
            None,
        ] {
            assert_eq!(g.judge(refused), Judgement::Refuse, "{refused:?}");
        }
    }

    #[test]
    fn an_open_gate_admits_all_and_names_ids() {
        let g = gate(&[]);
        assert!(!g.is_private());
        assert_eq!(
            g.judge(Some("bob.dns.test")),
            Judgement::Admit(Some("bob".into()))
        );
        assert_eq!(g.judge(None), Judgement::Admit(None));
    }

    #[test]
    fn a_doh_request_is_judged_by_its_path_id_or_else_its_server_name() {
        let g = gate(&["alice", "bob"]);
        let bob: Arc<str> = Arc::from("bob");
        assert_eq!(
            g.judge_request(Some("Alice"), None),
            Judgement::Admit(Some("alice".into()))
        );
        // The path wins over the server name.
        assert_eq!(
            g.judge_request(Some("alice"), Some(&bob)),
            Judgement::Admit(Some("alice".into()))
        );
        assert_eq!(
            g.judge_request(None, Some(&bob)),
            Judgement::Admit(Some("bob".into()))
        );
        for (path, sni) in [
            (Some("mallory"), None),
            (Some("mallory"), Some(&bob)),
            (Some("a.b"), None),
            (Some("a%20b"), None),
            (None, None),
        ] {
            assert_eq!(g.judge_request(path, sni), Judgement::Refuse, "{path:?}");
        }
        let open = gate(&[]);
        assert_eq!(open.judge_request(None, None), Judgement::Admit(None));
        assert_eq!(
            open.judge_request(Some("carol"), None),
            Judgement::Admit(Some("carol".into()))
        );
        assert_eq!(open.judge_request(Some("bad_id"), None), Judgement::Refuse);
    }
}
