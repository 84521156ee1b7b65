//! Passwords of the users file: parsing a stored credential, checking a password against it in
//! time that does not depend on whether the user exists, and making new `{SHA512-CRYPT}` hashes
//! (`postling passwd USER`, in `auth/passwd.rs`).
//!
//! Schemes (the credential is everything after the first `:` of a users-file line):
//! - `{SHA512-CRYPT}$6$[rounds=N$]SALT$HASH`: glibc's SHA-crypt, what `openssl passwd -6` and
//!   `mkpasswd -m sha-512` print. Checked by `auth::shacrypt` (on ring's SHA-512). Rounds above
//!   `limits::SHA512_CRYPT_MAX_ROUNDS` are refused when the file is loaded, so a hostile or
//!   careless users file cannot make one login stall the reactor.
//! - `{PLAIN}secret`: compared in constant time over a fixed-size padded buffer, so neither the
//!   content nor the length of the secret shows in the timing (loading warns about it).
//!
//! Every check, whatever the scheme and also for an unknown user, runs one SHA-crypt of the
//! default 5 000 rounds, so a wrong password, an unknown user and a `{PLAIN}` user all take the
//! same time as a typical `{SHA512-CRYPT}` user.

pub mod cache;
mod passwd;
mod shacrypt;

pub use passwd::passwd_main;

use shacrypt::{ROUNDS_DEFAULT, ROUNDS_MIN, sha512_crypt_b64};
use subtle::ConstantTimeEq;

use crate::limits;

/// A stored password, as parsed from `user:{SCHEME}value` in the users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `{SHA512-CRYPT}$6$...`: the full crypt string.
    Sha512Crypt(String),
    /// `{PLAIN}secret`.
    Plain(Vec<u8>),
}

const SCHEME_SHA512_CRYPT: &str = "SHA512-CRYPT";
const SCHEME_PLAIN: &str = "PLAIN";
/// The crypt(3) base-64 alphabet of salts and hashes.
const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// SHA-crypt keeps at most 16 salt characters.
const SALT_LEN: usize = shacrypt::SALT_MAX;
/// 64 digest bytes in crypt base-64.
const HASH_LEN: usize = 86;
/// Checked for unknown users and burned beside `{PLAIN}` checks so all take the same time.
/// (`openssl passwd -6 -salt postlingdummy00 'not a password'`; default 5 000 rounds.)
const DUMMY_HASH: &str = "$6$postlingdummy00$uFUKI5/jUbj2yucDOU.7PsbRVVIyVWGftN0ag4kFuWsR4qlunokwRysG512ggydC9fD./9PzraNsdhlKwX9a71";

/// The fields of a `$6$` string, checked for shape.
#[derive(Debug, PartialEq, Eq)]
struct CryptParts<'a> {
    rounds: usize,
    salt: &'a str,
    hash: &'a str,
}

/// Parses the credential part of a users-file line. The error says what is wrong and what was
/// expected; the caller prefixes file, line and user.
pub fn parse_credential(value: &str) -> Result<Credential, String> {
    let Some(rest) = value.strip_prefix('{') else {
        return Err(if value.starts_with("$6$") {
            "the hash has no scheme (expected {SHA512-CRYPT}$6$…)".to_string()
        } else {
            "the password has no scheme (expected {SHA512-CRYPT}$6$… or {PLAIN}secret)".to_string()
        });
    };
    let Some((scheme, secret)) = rest.split_once('}') else {
        return Err("unterminated scheme (expected {SHA512-CRYPT}$6$… or {PLAIN}secret)".into());
    };
    if scheme.eq_ignore_ascii_case(SCHEME_SHA512_CRYPT) {
        parse_sha512_crypt(secret)?;
        Ok(Credential::Sha512Crypt(secret.to_string()))
    } else if scheme.eq_ignore_ascii_case(SCHEME_PLAIN) {
        if secret.is_empty() {
            return Err("empty {PLAIN} password (expected {PLAIN}secret)".into());
        }
        if secret.len() > limits::PASSWORD_MAX {
            return Err(format!(
                "{{PLAIN}} password longer than {} octets (expected a password a POP3 client can send)",
                limits::PASSWORD_MAX
            ));
        }
        Ok(Credential::Plain(secret.as_bytes().to_vec()))
    } else {
        Err(format!(
            "unknown password scheme {{{scheme}}} (expected {{SHA512-CRYPT}} or {{PLAIN}})"
        ))
    }
}

/// Checks the shape of `$6$[rounds=N$]SALT$HASH` without hashing anything.
fn parse_sha512_crypt(s: &str) -> Result<CryptParts<'_>, String> {
    const EXPECTED: &str = "expected $6$[rounds=N$]SALT$HASH as `openssl passwd -6` prints";
    let Some(rest) = s.strip_prefix("$6$") else {
        return Err(format!("not a SHA512-CRYPT hash ({EXPECTED})"));
    };
    let mut fields = rest.split('$');
    let mut salt = fields.next().unwrap_or("");
    let mut rounds = ROUNDS_DEFAULT;
    if let Some(digits) = salt.strip_prefix("rounds=") {
        // Nine digits already exceed any cap; refusing more keeps the parse from overflowing.
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("rounds={digits} is not a number ({EXPECTED})"));
        }
        rounds = digits.parse().unwrap_or(usize::MAX);
        if !(ROUNDS_MIN..=limits::SHA512_CRYPT_MAX_ROUNDS).contains(&rounds) {
            return Err(format!(
                "rounds={rounds} is out of range (expected {ROUNDS_MIN} to {}; the default is {ROUNDS_DEFAULT})",
                limits::SHA512_CRYPT_MAX_ROUNDS
            ));
        }
        salt = fields.next().unwrap_or("");
    }
    if salt.is_empty() || salt.len() > SALT_LEN || !salt.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "bad salt {salt:?} (expected 1 to {SALT_LEN} printable characters; {EXPECTED})"
        ));
    }
    let Some(hash) = fields.next() else {
        return Err(format!("no hash after the salt ({EXPECTED})"));
    };
    if fields.next().is_some() {
        return Err(format!("extra `$` fields after the hash ({EXPECTED})"));
    }
    // 64 bytes are 86 characters whose last carries only two bits: one of `./01`.
    let canonical = hash.len() == HASH_LEN
        && hash.bytes().all(|b| CRYPT_ALPHABET.contains(&b))
        && hash.ends_with(['.', '/', '0', '1']);
    if !canonical {
        return Err(format!(
            "the hash is not {HASH_LEN} crypt base-64 characters ({EXPECTED})"
        ));
    }
    Ok(CryptParts { rounds, salt, hash })
}

/// True if `password` crypts to `parts.hash`; the comparison is constant-time.
fn crypt_matches(parts: &CryptParts<'_>, password: &[u8]) -> bool {
    // SHA-crypt's cost grows with the password; nothing longer can arrive over POP anyway.
    let candidate = password.get(..limits::PASSWORD_MAX).unwrap_or(password);
    let computed = sha512_crypt_b64(candidate, parts.salt.as_bytes(), parts.rounds);
    let same: bool = computed.as_bytes().ct_eq(parts.hash.as_bytes()).into();
    same && candidate.len() == password.len()
}

/// One SHA-crypt of the default cost whose result is thrown away.
fn burn_default_rounds(password: &[u8]) {
    if let Ok(parts) = parse_sha512_crypt(DUMMY_HASH) {
        std::hint::black_box(crypt_matches(&parts, password));
    }
}

/// Compares over `PASSWORD_MAX` bytes whatever the lengths, so timing shows neither.
fn plain_matches(secret: &[u8], password: &[u8]) -> bool {
    let mut a = [0u8; limits::PASSWORD_MAX];
    let mut b = [0u8; limits::PASSWORD_MAX];
    for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
        *x = secret.get(i).copied().unwrap_or(0);
        *y = password.get(i).copied().unwrap_or(0);
    }
    let fits = secret.len() <= limits::PASSWORD_MAX && password.len() <= limits::PASSWORD_MAX;
    let same_len = (secret.len() as u64).ct_eq(&(password.len() as u64));
    let same_bytes = a.ct_eq(&b);
    fits && bool::from(same_len & same_bytes)
}

/// Checks `password` against `cred`. With `None` (an unknown user) the same work is done
/// against a dummy hash and false is returned, so the two cannot be told apart by timing.
pub fn verify(cred: Option<&Credential>, password: &[u8]) -> bool {
    match cred {
        Some(Credential::Sha512Crypt(stored)) => match parse_sha512_crypt(stored) {
            Ok(parts) => crypt_matches(&parts, password),
            Err(_) => {
                burn_default_rounds(password);
                false
            }
        },
        Some(Credential::Plain(secret)) => {
            burn_default_rounds(password);
            plain_matches(secret, password)
        }
        None => {
            burn_default_rounds(password);
            false
        }
    }
}

/// `{SHA512-CRYPT}$6$<16-character random salt>$<hash>` with the default 5 000 rounds, so the
/// line is interchangeable with what `openssl passwd -6` prints.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    if password.is_empty() {
        return Err("empty password".into());
    }
    if password.len() > limits::PASSWORD_MAX {
        return Err(format!(
            "password longer than {} octets (a POP3 client could not send it)",
            limits::PASSWORD_MAX
        ));
    }
    let salt = random_salt()?;
    let hash = sha512_crypt_b64(password, salt.as_bytes(), ROUNDS_DEFAULT);
    Ok(format!("{{{SCHEME_SHA512_CRYPT}}}$6${salt}${hash}"))
}

/// 16 salt characters from the kernel's random source.
fn random_salt() -> Result<String, String> {
    let mut bytes = [0u8; SALT_LEN];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("cannot get random bytes for the salt: {e}"));
        }
        filled += n as usize;
    }
    // 64 symbols: the low six bits of a random byte pick one uniformly.
    Ok(bytes
        .iter()
        .map(|b| char::from(CRYPT_ALPHABET[usize::from(b & 63)]))
        .collect())
}

#[cfg(test)]
mod tests;
