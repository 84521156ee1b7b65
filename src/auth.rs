//! Password verification and hashing for the users file.
//!
//! INTERFACE STUB: the real implementation lands from the `directory` branch.

/// A stored password, as parsed from `user:{SCHEME}value` in the users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `{SHA512-CRYPT}$6$...`: the full crypt string.
    Sha512Crypt(String),
    /// `{PLAIN}secret`.
    Plain(Vec<u8>),
}

/// Checks `password` against `cred`. With `None` (an unknown user) the same work is done
/// against a dummy hash and false is returned, so the two cannot be told apart by timing.
pub fn verify(_cred: Option<&Credential>, _password: &[u8]) -> bool {
    false
}
