//! Users and aliases: who has a mailbox, what an address resolves to, and the RCPT verdict.
//! Parsed from `users_file` and `aliases_file`; re-read when their modification time changes.
//!
//! INTERFACE STUB: the real parser and resolver land from the `directory` branch.

use std::path::PathBuf;

use crate::auth::Credential;

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

/// Where one recipient's copy goes after alias expansion.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resolved {
    /// A local user's Maildir (the canonical, lower-case user name).
    Local { user: String },
    /// A full address outside the local domains (an alias target): needs a relay.
    Remote { address: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// A local domain, but neither user, alias nor catch-all matches (or an alias target is
    /// such an address).
    UnknownUser,
    /// Alias expansion looped (or went deeper than `limits::ALIAS_MAX_DEPTH`); names the alias.
    AliasLoop(String),
    /// The address is not in a local domain.
    NotLocal,
}

/// What the directory is built from (part of the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectorySettings {
    pub users_file: PathBuf,
    pub aliases_file: PathBuf,
    /// Local domains, lower-case.
    pub domains: Vec<String>,
    pub recipient_delimiter: Option<char>,
}

/// An error in the users or aliases file: `FILE:LINE: what is wrong (expected …)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryError(pub String);

impl std::fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Directory {
    settings: DirectorySettings,
}

impl Directory {
    /// Reads both files. Warnings (PLAIN passwords, no `postmaster`) come back beside it.
    pub fn load(
        settings: DirectorySettings,
    ) -> Result<(Directory, Vec<String>), Vec<DirectoryError>> {
        Ok((Directory { settings }, Vec::new()))
    }

    /// Re-reads the files if either changed since they were read (one `stat` each). A file that
    /// fails to parse is logged and the previous tables are kept.
    pub fn refresh(&mut self) {}

    pub fn settings(&self) -> &DirectorySettings {
        &self.settings
    }

    pub fn rcpt_verdict(&self, _rcpt: &str) -> RcptVerdict {
        RcptVerdict::TempFail
    }

    pub fn resolve(&self, _rcpt: &str) -> Result<Vec<Resolved>, ResolveError> {
        Err(ResolveError::NotLocal)
    }

    /// The credential of a user (case-insensitive name), for POP logins.
    pub fn credential(&self, _user: &str) -> Option<(&str, &Credential)> {
        None
    }
}
