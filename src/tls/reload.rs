//! Hot reload of the certificate and key: on SIGHUP, and when either file
//! changes, without a restart and without touching open connections.
//!
//! Watching is a poll of both files' metadata every [`POLL_INTERVAL`],
//! following symlinks (device, inode, size, mtime of the target). That sees
//! every way certificates get replaced: an edit in place (mtime, size), a
//! rename over the old file (certbot's `--deploy-hook` scripts, `mv`: a new
//! inode), certbot's `live/` symlinks moving to a new `archive/` file, and
//! cert-manager's or Kubernetes' swap of the `..data` symlink of the parent
//! directory (a new target inode). It needs no dependency and no inotify
//! watch that a directory swap would orphan.
//!
//! A change is loaded once the files have held still for one poll, so that a
//! renewal that replaces the certificate and then the key is read as one
//! pair rather than as a mismatch in between.
//!
//! Invariants:
//! * handshakes read the current certificate from [`CurrentCert`]; a reload
//!   swaps it, so new handshakes get the new one and established
//!   connections, which no longer look at it, are untouched;
//! * a pair that fails to load or does not match keeps the old one serving
//!   and is logged once, as one error naming the file; the same files are
//!   not retried (and not logged again) until they change or SIGHUP comes;
//! * every successful load logs the certificate served (subject, not-after)
//!   and the chain checks' warnings (R3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::metrics::stats::Stats;
use crate::tls::chain::{self, LeafInfo};
use crate::tls::identity::{self, CurrentCert, Identity};

/// How often the certificate and key files are looked at. Two `stat` calls a
/// second cost nothing, and a renewal is served within two seconds.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a poll sees of one file (also the client-ID file's watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Present {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
    },
    /// Missing or unreadable, by kind: a file that comes back is a change.
    Unavailable(std::io::ErrorKind),
}

impl FileState {
    pub fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        // `metadata` follows symlinks: a swapped link shows its new target.
        match std::fs::metadata(path) {
            Ok(m) => FileState::Present {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
            },
            Err(e) => FileState::Unavailable(e.kind()),
        }
    }
}

/// The state of the certificate and key files at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    cert: FileState,
    key: FileState,
}

impl Fingerprint {
    pub fn of(cert: &Path, key: &Path) -> Self {
        Fingerprint {
            cert: FileState::of(cert),
            key: FileState::of(key),
        }
    }
}

/// Decides, poll by poll, when to load the files again.
#[derive(Debug)]
pub struct Watch {
    /// What the previous poll saw.
    seen: Fingerprint,
    /// The files as they were when last loaded (successfully or not).
    attempted: Fingerprint,
}

impl Watch {
    /// Starts from the fingerprint taken just before the first load.
    pub fn new(loaded: Fingerprint) -> Self {
        Watch {
            seen: loaded.clone(),
            attempted: loaded,
        }
    }

    /// Feeds one poll. True when the files differ from the last load attempt
    /// and have not changed since the previous poll; the caller then loads
    /// and calls [`Watch::attempted`].
    pub fn poll(&mut self, now: Fingerprint) -> bool {
        let settled = now == self.seen;
        self.seen = now;
        settled && self.seen != self.attempted
    }

    /// Records a load attempt of the files as `fingerprint` showed them.
    pub fn attempted(&mut self, fingerprint: Fingerprint) {
        self.seen = fingerprint.clone();
        self.attempted = fingerprint;
    }

    /// What the last poll saw.
    pub fn seen(&self) -> &Fingerprint {
        &self.seen
    }
}

/// Seconds since the UNIX epoch, for the expiry checks.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs the chain checks on `identity` and logs the certificate served and
/// every warning. `event` is the log message (start-up or reload); `source`
/// names the file in the log. Returns what was logged of the leaf.
pub fn announce(
    identity: &Identity,
    source: &str,
    tls_name: Option<&str>,
    client_id_domain: Option<&str>,
    event: &str,
) -> Option<LeafInfo> {
    let report = chain::check_chain(
        &identity.certified.cert,
        identity.self_signed,
        tls_name,
        unix_now(),
    );
    match &report.leaf {
        Some(leaf) => tracing::info!(
            cert = %source,
            subject = %leaf.subject,
            issuer = %leaf.issuer,
            not_after = %leaf.not_after,
            chain = leaf.chain_len,
            "{event}"
        ),
        None => tracing::info!(cert = %source, "{event}"),
    }
    for finding in &report.findings {
        tracing::warn!(cert = %source, "{finding}");
    }
    if let Some(domain) = client_id_domain {
        if !covers_client_ids(identity, domain) {
            tracing::warn!(
                cert = %source,
                "the certificate does not cover *.{domain}: clients that name a client ID \
                 (ID.{domain}) will refuse it; use a wildcard certificate for *.{domain}"
            );
        }
    }
    report.leaf
}

/// True when the leaf covers any one label under `domain`, as the client
/// IDs of `--client-id-domain` need: a `*.domain` SAN.
pub fn covers_client_ids(identity: &Identity, domain: &str) -> bool {
    let Some(leaf) = identity.certified.cert.first() else {
        return false;
    };
    // A label no real SAN lists by name: only a wildcard covers it.
    let probe = format!("dotgate-client-id-check.{domain}");
    chain::cert_facts(leaf).is_ok_and(|facts| chain::name_covered(&probe, &facts.sans))
}

/// The reloader's task: polls the files, listens for SIGHUP, and swaps the
/// certificate in `current`. `files` is `None` for `--self-signed`, which has
/// nothing to reload (SIGHUP is then logged and ignored rather than killing
/// the process).
pub struct Reloader {
    pub files: Option<(PathBuf, PathBuf)>,
    pub tls_name: Option<String>,
    /// `--client-id-domain`: the certificate should cover `*.DOMAIN`.
    pub client_id_domain: Option<String>,
    pub current: Arc<CurrentCert>,
    /// The fingerprint taken just before the first load.
    pub loaded: Fingerprint,
    /// What the first load logged, for the error message of a failed reload.
    pub serving: Option<LeafInfo>,
    /// Where the served certificate's not-after is published.
    pub stats: Arc<Stats>,
}

impl Reloader {
    /// Spawns the task; it ends when `shutdown` is cancelled.
    pub fn spawn(self, shutdown: CancellationToken) {
        // Installed here, synchronously, so that a SIGHUP right after start-up
        // already finds the handler instead of the default action (exit).
        let hangup = match signal(SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificate files are still watched");
                None
            }
        };
        tokio::spawn(self.run(hangup, shutdown));
    }

    async fn run(mut self, mut hangup: Option<Signal>, shutdown: CancellationToken) {
        let mut watch = Watch::new(self.loaded.clone());
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = next_hangup(&mut hangup) => {
                    let Some((cert, key)) = self.files.clone() else {
                        tracing::info!("SIGHUP: the certificate is self-signed in memory: nothing to reload");
                        continue;
                    };
                    tracing::info!("SIGHUP: reloading the certificate and key");
                    let fingerprint = Fingerprint::of(&cert, &key);
                    watch.attempted(fingerprint);
                    self.load(&cert, &key).await;
                }
                _ = tick.tick() => {
                    let Some((cert, key)) = self.files.clone() else {
                        continue;
                    };
                    if watch.poll(Fingerprint::of(&cert, &key)) {
                        watch.attempted(watch.seen().clone());
                        self.load(&cert, &key).await;
                    }
                }
            }
        }
    }

    /// Loads the pair; serves it if it is good, logs one error if not.
    async fn load(&mut self, cert: &Path, key: &Path) {
        let (cert_owned, key_owned) = (cert.to_path_buf(), key.to_path_buf());
        // File reads off the async threads: the files may sit on slow storage.
        let loaded =
            tokio::task::spawn_blocking(move || identity::load_pem_files(&cert_owned, &key_owned))
                .await;
        let identity = match loaded {
            Ok(Ok(identity)) => identity,
            Ok(Err(e)) => {
                self.log_failure(&e.to_string());
                return;
            }
            Err(e) => {
                self.log_failure(&format!("the loading task failed: {e}"));
                return;
            }
        };
        let source = cert.display().to_string();
        self.serving = announce(
            &identity,
            &source,
            self.tls_name.as_deref(),
            self.client_id_domain.as_deref(),
            "certificate reloaded: new handshakes get this certificate",
        );
        self.current.set(identity.certified);
        record_certificate(&self.stats, self.serving.as_ref());
    }

    fn log_failure(&self, error: &str) {
        match &self.serving {
            Some(old) => tracing::error!(
                error = %error,
                serving_subject = %old.subject,
                serving_not_after = %old.not_after,
                "certificate reload failed: still serving the previous certificate"
            ),
            None => tracing::error!(
                error = %error,
                "certificate reload failed: still serving the previous certificate"
            ),
        }
    }
}

/// Publishes the served certificate in the metrics (subject and not-after,
/// when the leaf could be read) and marks a certificate loaded for /readyz.
pub fn record_certificate(stats: &Stats, leaf: Option<&LeafInfo>) {
    match leaf {
        Some(leaf) => stats.set_certificate(&leaf.subject, leaf.not_after_unix),
        None => stats.set_certificate_loaded(),
    }
}

/// The next SIGHUP, or never when there is no handler.
async fn next_hangup(hangup: &mut Option<Signal>) {
    match hangup {
        Some(stream) => {
            if stream.recv().await.is_none() {
                // The signal driver is gone: stop listening, keep polling.
                *hangup = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "dotgate-reload-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_change_is_loaded_once_it_has_settled_and_only_once() {
        let dir = Dir::new();
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, "one").unwrap();
        std::fs::write(&key, "one").unwrap();
        let mut watch = Watch::new(Fingerprint::of(&cert, &key));
        assert!(!watch.poll(Fingerprint::of(&cert, &key)), "nothing changed");

        // Replaced by rename: a new inode, same size.
        let tmp = dir.0.join("cert.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &cert).unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)), "not settled yet");
        assert!(watch.poll(Fingerprint::of(&cert, &key)), "settled: load");
        watch.attempted(watch.seen().clone());
        assert!(!watch.poll(Fingerprint::of(&cert, &key)), "loaded already");
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
    }

    #[test]
    fn cert_then_key_is_read_as_one_pair() {
        let dir = Dir::new();
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, "one").unwrap();
        std::fs::write(&key, "one").unwrap();
        let mut watch = Watch::new(Fingerprint::of(&cert, &key));
        std::fs::write(&cert, "two, longer").unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
        std::fs::write(&key, "two, longer").unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)), "key moved too");
        assert!(watch.poll(Fingerprint::of(&cert, &key)));
    }

    #[test]
    fn a_symlink_swap_of_the_directory_is_seen() {
        // cert-manager's layout: tls.crt -> ..data/tls.crt, ..data -> ..v1
        let dir = Dir::new();
        for version in ["..v1", "..v2"] {
            std::fs::create_dir(dir.0.join(version)).unwrap();
            std::fs::write(dir.0.join(version).join("tls.crt"), "same").unwrap();
            std::fs::write(dir.0.join(version).join("tls.key"), "same").unwrap();
        }
        std::os::unix::fs::symlink("..v1", dir.0.join("..data")).unwrap();
        let cert = dir.0.join("tls.crt");
        let key = dir.0.join("tls.key");
        std::os::unix::fs::symlink("..data/tls.crt", &cert).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", &key).unwrap();
        let mut watch = Watch::new(Fingerprint::of(&cert, &key));
        // Swap ..data atomically, as the kubelet does.
        std::os::unix::fs::symlink("..v2", dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
        assert!(watch.poll(Fingerprint::of(&cert, &key)));
    }

    #[test]
    fn a_file_that_vanishes_and_comes_back_is_a_change() {
        let dir = Dir::new();
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        std::fs::write(&cert, "one").unwrap();
        std::fs::write(&key, "one").unwrap();
        let mut watch = Watch::new(Fingerprint::of(&cert, &key));
        std::fs::remove_file(&cert).unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
        // Gone for a whole interval: loaded (and the failure logged once).
        assert!(watch.poll(Fingerprint::of(&cert, &key)));
        watch.attempted(watch.seen().clone());
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
        std::fs::write(&cert, "one").unwrap();
        assert!(!watch.poll(Fingerprint::of(&cert, &key)));
        assert!(watch.poll(Fingerprint::of(&cert, &key)));
    }
}
