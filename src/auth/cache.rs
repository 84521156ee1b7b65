//! A short cache of successful password checks, so that a client logging in again and again
//! with a right password (a mail program polling, or a flood of logins against an `[IN-USE]`
//! mailbox) does not cost a SHA512-CRYPT each time. Owned by the reactor's services (which
//! know the user and see every failure), never by the disk executor.
//!
//! An entry is the canonical user name and a keyed hash (HMAC-SHA256 under a key drawn at
//! random when the process starts, never stored) of the user, the stored credential and the
//! password: the password itself is never kept, and a changed credential in the users file
//! simply misses. An entry lives `limits::AUTH_CACHE_TTL` from the check that made it (a hit
//! does not extend it); at most `limits::AUTH_CACHE_ENTRIES` are kept (the oldest goes). Every
//! failed login for a user drops that user's entries, and a reload of the users file drops
//! them all, so a cache hit never outlives a password change or a failure.

use std::time::Instant;

use super::Credential;
use crate::limits;

type Mac = [u8; 32];

struct Entry {
    user: Box<str>,
    mac: Mac,
    expires: Instant,
}

/// One check as the cache knows it: the user and the keyed hash (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    user: Box<str>,
    mac: Mac,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({:?})", self.user)
    }
}

pub struct AuthCache {
    /// None: no random key could be had; nothing is cached (every login is checked).
    key: Option<[u8; 32]>,
    /// In insertion order, which is expiry order (one lifetime for all).
    entries: Vec<Entry>,
}

impl AuthCache {
    /// A cache under a fresh random key (from getrandom(2)).
    pub fn new() -> AuthCache {
        let mut key = [0u8; 32];
        let key = fill_random(&mut key).then_some(key);
        if key.is_none() {
            log::warn!(
                "no random key for the login cache (getrandom failed); every login is checked"
            );
        }
        AuthCache {
            key,
            entries: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn with_key(key: [u8; 32]) -> AuthCache {
        AuthCache {
            key: Some(key),
            entries: Vec::new(),
        }
    }

    /// What a check of `password` for `user` (canonical name) against `cred` is remembered
    /// by: taken when the check starts, so the password need not be kept until it ends.
    /// None when the cache is off.
    pub fn key_for(&self, user: &str, cred: &Credential, password: &[u8]) -> Option<CacheKey> {
        Some(CacheKey {
            user: user.into(),
            mac: self.mac(user, cred, password)?,
        })
    }

    fn mac(&self, user: &str, cred: &Credential, password: &[u8]) -> Option<Mac> {
        let key = self.key.as_ref()?;
        let cred: &[u8] = match cred {
            Credential::Sha512Crypt(s) => s.as_bytes(),
            Credential::Plain(p) => p,
        };
        // Length-prefixed fields, so no two different triples hash the same input.
        let mut msg = Vec::with_capacity(8 + user.len() + cred.len() + password.len());
        msg.extend((user.len() as u32).to_be_bytes());
        msg.extend(user.as_bytes());
        msg.extend((cred.len() as u32).to_be_bytes());
        msg.extend(cred);
        msg.extend(password);
        let mac = hmac_sha256(key, &msg);
        msg.fill(0);
        Some(mac)
    }

    /// Was this check made and found good within the last `AUTH_CACHE_TTL`?
    pub fn hit(&self, key: &CacheKey, now: Instant) -> bool {
        self.entries
            .iter()
            .any(|e| e.expires > now && e.user == key.user && e.mac == key.mac)
    }

    /// Remembers a successful check.
    pub fn insert(&mut self, key: CacheKey, now: Instant) {
        self.entries
            .retain(|e| e.expires > now && !(e.user == key.user && e.mac == key.mac));
        if self.entries.len() >= limits::AUTH_CACHE_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push(Entry {
            user: key.user,
            mac: key.mac,
            expires: now + limits::AUTH_CACHE_TTL,
        });
    }

    /// A login as `user` failed: forget every success of that user (names compare as the
    /// users file does, ignoring ASCII case).
    pub fn forget_user(&mut self, user: &str) {
        self.entries.retain(|e| !e.user.eq_ignore_ascii_case(user));
    }

    /// The users file was re-read: forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// At rest: drop what expired and give back the spare capacity.
    pub fn shrink(&mut self, now: Instant) {
        self.entries.retain(|e| e.expires > now);
        self.entries.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for AuthCache {
    fn default() -> AuthCache {
        AuthCache::new()
    }
}

/// HMAC-SHA256 (RFC 2104) with a 32-octet key (ring's, as TLS uses).
fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> Mac {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut mac = [0u8; 32];
    mac.copy_from_slice(ring::hmac::sign(&key, msg).as_ref());
    mac
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cred(s: &str) -> Credential {
        Credential::Sha512Crypt(s.to_string())
    }

    fn hit(c: &AuthCache, user: &str, cred: &Credential, pw: &[u8], now: Instant) -> bool {
        c.hit(&c.key_for(user, cred, pw).unwrap(), now)
    }

    fn insert(c: &mut AuthCache, user: &str, cred: &Credential, pw: &[u8], now: Instant) {
        let k = c.key_for(user, cred, pw).unwrap();
        c.insert(k, now);
    }

    #[test]
    fn hmac_matches_an_independent_implementation() {
        // Key 0x0b * 32, "Hi There": `hmac.new(b'\x0b'*32, b'Hi There', hashlib.sha256)` in
        // Python gives this.
        let mac = hmac_sha256(&[0x0b; 32], b"Hi There");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
    }

    #[test]
    fn hit_only_for_the_same_user_credential_and_password() {
        let t0 = Instant::now();
        let mut c = AuthCache::with_key([7; 32]);
        let a = cred("$6$salt$aaa");
        assert!(!hit(&c, "bob", &a, b"pw", t0));
        insert(&mut c, "bob", &a, b"pw", t0);
        assert!(hit(&c, "bob", &a, b"pw", t0));
        assert!(!hit(&c, "bob", &a, b"pw2", t0), "another password");
        assert!(!hit(&c, "alice", &a, b"pw", t0), "another user");
        assert!(
            !hit(&c, "bob", &cred("$6$salt$bbb"), b"pw", t0),
            "a changed credential"
        );
        // The password is not stored: only the user and a 32-octet MAC are.
        assert_eq!(c.len(), 1);
        assert_ne!(&c.entries[0].mac[..2], b"pw");
    }

    #[test]
    fn entries_expire() {
        let t0 = Instant::now();
        let mut c = AuthCache::with_key([1; 32]);
        let a = cred("$6$s$h");
        insert(&mut c, "bob", &a, b"pw", t0);
        assert!(hit(
            &c,
            "bob",
            &a,
            b"pw",
            t0 + limits::AUTH_CACHE_TTL - Duration::from_millis(1)
        ));
        assert!(!hit(&c, "bob", &a, b"pw", t0 + limits::AUTH_CACHE_TTL));
        // A hit does not extend the entry.
        insert(&mut c, "bob", &a, b"pw", t0);
        assert!(hit(&c, "bob", &a, b"pw", t0 + Duration::from_secs(10)));
        assert!(!hit(&c, "bob", &a, b"pw", t0 + limits::AUTH_CACHE_TTL));
        c.shrink(t0 + limits::AUTH_CACHE_TTL);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_the_oldest_goes() {
        let t0 = Instant::now();
        let mut c = AuthCache::with_key([2; 32]);
        let a = cred("$6$s$h");
        for i in 0..limits::AUTH_CACHE_ENTRIES + 10 {
            insert(
                &mut c,
                &format!("u{i}"),
                &a,
                b"pw",
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(c.len(), limits::AUTH_CACHE_ENTRIES);
        let now = t0 + Duration::from_secs(1);
        assert!(!hit(&c, "u0", &a, b"pw", now));
        assert!(!hit(&c, "u9", &a, b"pw", now));
        assert!(hit(&c, "u10", &a, b"pw", now));
        assert!(hit(
            &c,
            &format!("u{}", limits::AUTH_CACHE_ENTRIES + 9),
            &a,
            b"pw",
            now
        ));
        // The same login again replaces its entry rather than adding one.
        insert(&mut c, "u10", &a, b"pw", now);
        assert_eq!(c.len(), limits::AUTH_CACHE_ENTRIES);
    }

    #[test]
    fn a_failure_forgets_the_user_and_a_reload_everything() {
        let t0 = Instant::now();
        let mut c = AuthCache::with_key([3; 32]);
        let a = cred("$6$s$h");
        insert(&mut c, "bob", &a, b"pw", t0);
        insert(&mut c, "alice", &a, b"pw", t0);
        c.forget_user("BOB");
        assert!(!hit(&c, "bob", &a, b"pw", t0));
        assert!(hit(&c, "alice", &a, b"pw", t0));
        c.clear();
        assert!(!hit(&c, "alice", &a, b"pw", t0));
    }

    #[test]
    fn keys_differ_per_cache() {
        let a = cred("$6$s$h");
        let (x, y) = (AuthCache::new(), AuthCache::new());
        assert_ne!(x.mac("bob", &a, b"pw"), y.mac("bob", &a, b"pw"));
    }
}
