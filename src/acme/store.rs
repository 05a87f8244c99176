//! The `--acme-dir` directory: the ACME account, and the certificate with
//! its key, kept across restarts so that a restart neither registers a new
//! account nor orders a certificate that is still fresh.
//!
//! The directory is mode 0700 and every file 0600: the account key can
//! revoke the certificates, the certificate key impersonates the server.
//! Files are replaced by writing a temporary file and renaming it over the
//! old one, so a crash leaves the old file or the new one, never half of
//! either; the certificate reloader (`tls/reload.rs`) sees the rename.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;

use crate::config::acme::{CERT_FILE, KEY_FILE};

/// The account: the directory it belongs to and instant-acme's credentials.
const ACCOUNT_FILE: &str = "account.json";
/// Which directory issued `cert.pem`, so that a switch from staging to
/// production orders a trusted certificate at once.
const ISSUED_FILE: &str = "issued.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or use --acme-dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}): move it away to register a new ACME account")]
    BadAccount { path: PathBuf, why: String },
}

/// Whether [`Store::open`] would succeed, without creating anything: the
/// directory, or the nearest ancestor that exists, must take a new file.
pub fn check_writable(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| err(std::io::ErrorKind::NotFound.into()))?;
    if !existing.is_dir() {
        return Err(err(std::io::Error::other(format!(
            "{} is not a directory",
            existing.display()
        ))));
    }
    let probe = existing.join(format!(".dotgate-write-test-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The opened `--acme-dir`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory if needed (0700), makes it 0700 if it was
    /// looser, and checks that a file can be written in it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        let store = Store {
            dir: dir.to_path_buf(),
        };
        let probe = store.dir.join(".write-test");
        store.write_private(&probe, b"").map_err(|e| match e {
            StoreError::Write { source, .. } => err(source),
            other => other,
        })?;
        let _ = std::fs::remove_file(&probe);
        Ok(store)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The stored account for `directory`; None when there is none, or
    /// when it belongs to another directory (a new one is then registered
    /// and replaces it).
    pub fn load_account(&self, directory: &str) -> Result<Option<AccountCredentials>, StoreError> {
        let path = self.dir.join(ACCOUNT_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let bad = |why: String| StoreError::BadAccount {
            path: path.clone(),
            why,
        };
        let mut value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if value.get("directory").and_then(|d| d.as_str()) != Some(directory) {
            return Ok(None);
        }
        let credentials = value
            .get_mut("credentials")
            .map(serde_json::Value::take)
            .ok_or_else(|| bad("no credentials".into()))?;
        serde_json::from_value(credentials)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: &AccountCredentials,
    ) -> Result<(), StoreError> {
        let path = self.dir.join(ACCOUNT_FILE);
        let value = serde_json::json!({
            "directory": directory,
            "credentials": credentials,
        });
        self.write_private(&path, value.to_string().as_bytes())
    }

    /// The directory that issued the stored certificate, if recorded.
    pub fn issued_by(&self) -> Option<String> {
        let text = std::fs::read(self.dir.join(ISSUED_FILE)).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
        value.get("directory")?.as_str().map(str::to_string)
    }

    /// Stores a new certificate: the key first, then the chain, then who
    /// issued it; the reloader loads the pair once both have settled.
    pub fn save_certificate(
        &self,
        directory: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), StoreError> {
        self.write_private(&self.key_path(), key_pem.as_bytes())?;
        self.write_private(&self.cert_path(), chain_pem.as_bytes())?;
        let issued = serde_json::json!({ "directory": directory });
        self.write_private(&self.dir.join(ISSUED_FILE), issued.to_string().as_bytes())
    }

    /// Writes `bytes` to a new 0600 file beside `path`, syncs it, and
    /// renames it over `path`.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let err = |source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(source) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(source));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> Dir {
        Dir(std::env::temp_dir().join(format!(
            "dotgate-acme-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        )))
    }

    #[test]
    fn directory_0700_files_0600_and_replaced_whole() {
        let base = dir();
        let acme = base.0.join("var/lib/dotgate/acme");
        let store = Store::open(&acme).unwrap();
        assert_eq!(std::fs::metadata(&acme).unwrap().mode() & 0o777, 0o700);
        store
            .save_certificate("https://ca/dir", "CERT", "KEY")
            .unwrap();
        store
            .save_certificate("https://ca/dir", "CERT2", "KEY2")
            .unwrap();
        for file in [CERT_FILE, KEY_FILE, ISSUED_FILE] {
            let meta = std::fs::metadata(acme.join(file)).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{file}");
        }
        assert_eq!(std::fs::read_to_string(store.cert_path()).unwrap(), "CERT2");
        assert_eq!(store.issued_by().as_deref(), Some("https://ca/dir"));
        let leftovers: Vec<_> = std::fs::read_dir(&acme)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp") || n.starts_with(".write"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// base64url without padding, as instant-acme stores the key.
    fn b64url(bytes: &[u8]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    /// An account file as [`Store::save_account`] writes it, with a fresh key.
    fn account_json(directory: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        serde_json::json!({
            "directory": directory,
            "credentials": {
                "id": format!("{directory}/acct/1"),
                "key_pkcs8": b64url(&key.serialize_der()),
                "directory": directory,
            },
        })
        .to_string()
    }

    #[test]
    fn an_account_of_another_directory_is_not_reused() {
        let base = dir();
        let store = Store::open(&base.0).unwrap();
        assert!(store.load_account("https://a/dir").unwrap().is_none());
        std::fs::write(base.0.join(ACCOUNT_FILE), account_json("https://a/dir")).unwrap();
        assert!(store.load_account("https://a/dir").unwrap().is_some());
        assert!(store.load_account("https://b/dir").unwrap().is_none());
        std::fs::write(base.0.join(ACCOUNT_FILE), "{").unwrap();
        let e = match store.load_account("https://a/dir") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a damaged account file loaded"),
        };
        assert!(e.contains("account.json"), "{e}");
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        let base = dir();
        std::fs::create_dir_all(&base.0).unwrap();
        let file = base.0.join("file");
        std::fs::write(&file, "").unwrap();
        let e = Store::open(&file.join("acme")).unwrap_err().to_string();
        assert!(e.contains("--acme-dir"), "{e}");
    }
}
