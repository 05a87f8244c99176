//! Session-ticket keys (R6): stateless resumption that several replicas can
//! share without talking to each other.
//!
//! Time is cut into periods of [`PERIOD`] (12 hours). The key of period `N`
//! is HKDF-SHA256 of the secret with `N` as the info, used with AES-256-GCM
//! and a random 96-bit nonce. A ticket is
//!
//! ```text
//! N (8 bytes, big-endian) || nonce (12 bytes) || ciphertext and tag
//! ```
//!
//! with `N` also authenticated as the AEAD's associated data. The current
//! period's key encrypts; the current and the previous period's keys decrypt.
//! A ticket therefore stays usable for at least one period, which is the
//! lifetime announced to clients, and for at most two.
//!
//! Replicas given the same secret (`--ticket-key-file`) derive the same keys
//! from their clocks alone, so a client resumes on any of them, and keys
//! rotate everywhere at the same moment without coordination. Without the
//! flag the secret is random per process: the same rotation, no sharing.
//!
//! Invariants: the secret and derived keys never leave this module and are
//! never logged; `decrypt` takes attacker-controlled bytes and only ever
//! returns `None` on anything malformed.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use rustls::server::ProducesTickets;

/// How long one ticket key encrypts. Twelve hours keeps the window in which a
/// stolen key decrypts recorded sessions short (forward secrecy), while a
/// phone that reconnects a few times a day still resumes.
pub const PERIOD: Duration = Duration::from_secs(12 * 60 * 60);

/// The shortest secret accepted: 256 bits, the size of the derived key.
pub const MIN_SECRET_LEN: usize = 32;

/// The longest secret file read. Real ones are 32 to 80 bytes; a larger file
/// is probably the wrong one (or a device such as /dev/urandom, which would
/// give each replica a different secret).
pub const MAX_SECRET_LEN: usize = 4096;

/// HKDF salt: separates these keys from anything else derived from the same
/// file (dnsdist and unbound key files may be reused by operators).
const SALT: &[u8] = b"dotgate session-ticket key v1";

/// Bytes of the period number at the front of a ticket.
const PERIOD_LEN: usize = 8;

/// AES-256-GCM's tag length.
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("cannot read --ticket-key-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--ticket-key-file {path} holds {len} bytes; it needs at least {MIN_SECRET_LEN} random bytes \
         (make one with `openssl rand 80 > {path}` and give every replica the same file)"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error("--ticket-key-file {path} is larger than {MAX_SECRET_LEN} bytes: is it the right file? (`openssl rand 80` makes one)")]
    TooLong { path: PathBuf },
    #[error("cannot draw a random session-ticket secret from the system")]
    Random,
}

/// Seconds since the UNIX epoch; injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`]. A clock before 1970 counts as 0: tickets
/// then simply do not resume across replicas, nothing fails.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Reads a shared secret file: at least [`MIN_SECRET_LEN`] bytes, used whole
/// (binary from `openssl rand 80`, or any text of that size).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, TicketKeyError> {
    let read_err = |source| TicketKeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut secret = Vec::new();
    file.take(MAX_SECRET_LEN as u64 + 1)
        .read_to_end(&mut secret)
        .map_err(read_err)?;
    if secret.len() > MAX_SECRET_LEN {
        return Err(TicketKeyError::TooLong {
            path: path.to_path_buf(),
        });
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(TicketKeyError::TooShort {
            path: path.to_path_buf(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// A fresh random secret for a process that shares its tickets with nobody.
pub fn random_secret() -> Result<Vec<u8>, TicketKeyError> {
    let mut secret = vec![0u8; MIN_SECRET_LEN];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| TicketKeyError::Random)?;
    Ok(secret)
}

/// The keys of one period and the one before it, derived once per period.
struct Keys {
    period: u64,
    current: RandomizedNonceKey,
    /// `None` in period 0 only (a clock at the epoch).
    previous: Option<RandomizedNonceKey>,
}

/// rustls' ticket encrypter: period-derived AES-256-GCM keys (see the module
/// documentation).
pub struct Ticketer {
    secret: Vec<u8>,
    period_secs: u64,
    clock: Clock,
    /// The keys of the period last used; replaced when the period changes.
    /// Handshakes clone the `Arc` and work outside the lock.
    keys: RwLock<Option<Arc<Keys>>>,
}

impl fmt::Debug for Ticketer {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("period_secs", &self.period_secs)
            .finish_non_exhaustive()
    }
}

impl Ticketer {
    /// Keys from `secret`, rotating every [`PERIOD`] by the system clock.
    pub fn new(secret: Vec<u8>) -> Self {
        Self::with_clock(secret, PERIOD, system_clock())
    }

    /// Keys from `secret`, rotating every `period` (at least one second) by
    /// `clock`.
    pub fn with_clock(secret: Vec<u8>, period: Duration, clock: Clock) -> Self {
        Self {
            secret,
            period_secs: period.as_secs().max(1),
            clock,
            keys: RwLock::new(None),
        }
    }

    /// The period number now.
    fn period_now(&self) -> u64 {
        (self.clock)() / self.period_secs
    }

    /// The key of period `n`: HKDF-SHA256(salt, secret) expanded with `n`.
    fn derive(&self, n: u64) -> Option<RandomizedNonceKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&self.secret);
        let info = n.to_be_bytes();
        let info = [&info[..]];
        let okm = prk.expand(&info, &AES_256_GCM).ok()?;
        let mut key = [0u8; 32];
        okm.fill(&mut key).ok()?;
        RandomizedNonceKey::new(&AES_256_GCM, &key).ok()
    }

    /// The keys for the period now, derived on the first use in a period.
    fn keys(&self) -> Option<Arc<Keys>> {
        let period = self.period_now();
        let cached = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(keys) = cached.filter(|k| k.period == period) {
            return Some(keys);
        }
        let previous = match period.checked_sub(1) {
            Some(p) => Some(self.derive(p)?),
            None => None,
        };
        let keys = Arc::new(Keys {
            period,
            current: self.derive(period)?,
            previous,
        });
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
        Some(keys)
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// One period: every ticket decrypts for at least that long.
    fn lifetime(&self) -> u32 {
        u32::try_from(self.period_secs).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys()?;
        let aad = keys.period.to_be_bytes();
        let mut sealed = plain.to_vec();
        let nonce = keys
            .current
            .seal_in_place_append_tag(Aad::from(aad), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(PERIOD_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&aad);
        ticket.extend_from_slice(nonce.as_ref());
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < PERIOD_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (period_bytes, rest) = cipher.split_at(PERIOD_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let aad: [u8; PERIOD_LEN] = period_bytes.try_into().ok()?;
        let period = u64::from_be_bytes(aad);
        let keys = self.keys()?;
        let key = if period == keys.period {
            &keys.current
        } else if period.checked_add(1) == Some(keys.period) {
            keys.previous.as_ref()?
        } else {
            return None;
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const HOUR: u64 = 3600;

    /// A ticketer with the real period and a clock the test moves.
    fn ticketer(secret: &[u8]) -> (Ticketer, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(1_700_000_000));
        let clock_now = now.clone();
        let clock: Clock = Arc::new(move || clock_now.load(Ordering::Relaxed));
        (Ticketer::with_clock(secret.to_vec(), PERIOD, clock), now)
    }

    fn set(now: &AtomicU64, secs: u64) {
        now.store(secs, Ordering::Relaxed);
    }

    /// The start of the period that holds `secs`.
    fn period_start(secs: u64) -> u64 {
        secs - secs % PERIOD.as_secs()
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let (t, _) = ticketer(&[7; 32]);
        let a = t.encrypt(b"session state").unwrap();
        let b = t.encrypt(b"session state").unwrap();
        assert_ne!(a, b, "each ticket has its own nonce");
        assert_eq!(a.len(), PERIOD_LEN + NONCE_LEN + 13 + TAG_LEN);
        assert_eq!(t.decrypt(&a).unwrap(), b"session state");
        assert_eq!(t.decrypt(&b).unwrap(), b"session state");
        assert_eq!(t.lifetime(), 12 * 3600);
        assert!(t.enabled());
    }

    #[test]
    fn the_ticket_names_its_period() {
        let (t, now) = ticketer(&[7; 32]);
        let secs = now.load(Ordering::Relaxed);
        let ticket = t.encrypt(b"x").unwrap();
        let period = u64::from_be_bytes(ticket[..8].try_into().unwrap());
        assert_eq!(period, secs / PERIOD.as_secs());
    }

    #[test]
    fn previous_period_decrypts_older_does_not() {
        let (t, now) = ticketer(&[1; 40]);
        let start = period_start(now.load(Ordering::Relaxed));
        set(&now, start + 11 * HOUR);
        let ticket = t.encrypt(b"state").unwrap();
        // Next period: still accepted (the previous key decrypts).
        set(&now, start + 13 * HOUR);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"state");
        // And a new ticket is made with the new period's key.
        let newer = t.encrypt(b"newer").unwrap();
        assert_ne!(newer[..8], ticket[..8]);
        // Two periods on: the old key is gone.
        set(&now, start + 25 * HOUR);
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&newer).unwrap(), b"newer");
        // Back in time (a clock step): a ticket from the future is refused.
        set(&now, start + HOUR);
        assert_eq!(t.decrypt(&newer), None);
    }

    #[test]
    fn replicas_with_one_secret_share_tickets() {
        let (a, now_a) = ticketer(&[9; 80]);
        let (b, now_b) = ticketer(&[9; 80]);
        let (other, _) = ticketer(&[8; 80]);
        let ticket = a.encrypt(b"state").unwrap();
        assert_eq!(b.decrypt(&ticket).unwrap(), b"state");
        assert_eq!(other.decrypt(&ticket), None);
        // Both rotate on their own and still agree.
        let later = period_start(now_a.load(Ordering::Relaxed)) + 13 * HOUR;
        set(&now_a, later);
        set(&now_b, later);
        let ticket = b.encrypt(b"later").unwrap();
        assert_eq!(a.decrypt(&ticket).unwrap(), b"later");
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let (t, _) = ticketer(&[3; 32]);
        let ticket = t.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(t.decrypt(&bad), None, "flipped byte {i} accepted");
        }
        for len in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..len]), None, "truncated to {len}");
        }
        assert_eq!(t.decrypt(&[0xff; 64]), None);
        assert_eq!(t.decrypt(&[]), None);
    }

    #[test]
    fn period_zero_has_no_previous_key() {
        let now = Arc::new(AtomicU64::new(5));
        let clock_now = now.clone();
        let t = Ticketer::with_clock(
            vec![4; 32],
            PERIOD,
            Arc::new(move || clock_now.load(Ordering::Relaxed)),
        );
        let ticket = t.encrypt(b"state").unwrap();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"state");
        let mut forged = ticket.clone();
        forged[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(t.decrypt(&forged), None);
    }

    #[test]
    fn secret_file_rules_name_the_file() {
        let dir = std::env::temp_dir().join(format!(
            "dotgate-tickets-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, [0u8; 31]).unwrap();
        let e = read_secret(&short).unwrap_err().to_string();
        assert!(e.contains("short.key") && e.contains("31 bytes"), "{e}");

        let missing = dir.join("missing.key");
        let e = read_secret(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.key"), "{e}");

        let huge = dir.join("huge.key");
        std::fs::write(&huge, vec![1u8; MAX_SECRET_LEN + 1]).unwrap();
        let e = read_secret(&huge).unwrap_err().to_string();
        assert!(e.contains("huge.key"), "{e}");

        let good = dir.join("good.key");
        std::fs::write(&good, [5u8; 80]).unwrap();
        assert_eq!(read_secret(&good).unwrap(), vec![5u8; 80]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn random_secrets_differ() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_eq!(a.len(), MIN_SECRET_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let (t, _) = ticketer(&[0xab; 32]);
        let shown = format!("{t:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains("period_secs"), "{shown}");
    }
}
