//! Users and aliases: who has a mailbox, what an address resolves to, and the RCPT verdict.
//! Parsed from `users_file` and `aliases_file`; re-read when their modification time changes.

/// How the SMTP server answers a RCPT for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A local user, alias name, subaddress of one, or caught by the catch-all: `250`.
    Accept,
    /// A local domain but no such user or alias: `550 5.1.1`.
    UnknownUser,
    /// Not a local domain and relaying is not allowed: `550 5.7.1`.
    RelayDenied,
    /// The tables could not be read just now: `451 4.3.0`.
    TempFail,
}
