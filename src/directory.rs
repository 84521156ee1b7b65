//! Users and aliases: who has a mailbox, what an address resolves to, and the RCPT verdict.
//! Parsed from `users_file` and `aliases_file` (formats in `directory/parse.rs`); `refresh`
//! re-reads a file only when one `stat` shows it changed.
//!
//! How an address is matched (the SMTP RCPT check and delivery use the same rules):
//! - The domain and the local part are compared ignoring ASCII case only (A-Z are lower-cased;
//!   user names and alias names are stored so). Other characters compare exactly: Unicode
//!   folding would make U+212A KELVIN SIGN `k`, so `\u{212A}ate` would reach `kate`, a name a
//!   person reads as different. The local domains are `settings.domains`;
//!   anything else is `RelayDenied` / `NotLocal`. An address without `@` (only `postmaster`
//!   arrives that way, RFC 5321 §4.5.1) is local.
//! - A local part that is empty, starts with `.`, or contains `/`, `\`, `..`, NUL or another
//!   control character is never a user, alias or catch-all match (`UnknownUser`), so it can
//!   never become a path under the Maildir root.
//! - Lookup order for a local part: an alias of that name, then a user of that name; then, with
//!   subaddressing (`recipient_delimiter`, split at its first occurrence), the same for the part
//!   before the delimiter (`bob+lists` → `bob`, unless `bob+lists` itself is an alias or user);
//!   then `postmaster` falls back to the first user when neither file names it; last the
//!   catch-all alias `*`.
//! - `rcpt_verdict` stops there and never expands alias targets (as Postfix does): a bad alias
//!   target bounces at delivery, not at RCPT.
//! - `resolve` expands aliases: a target is a user or alias name (looked up as above, but
//!   never through the catch-all, so a typo in an alias bounces instead of vanishing into it),
//!   or a full address, which resolves again if its domain is local and is `Remote` otherwise.
//!   An alias that names itself (`alice: alice, alice@elsewhere.example`) means the user of that
//!   name. Any other cycle, a chain deeper than `limits::ALIAS_MAX_DEPTH` or more than
//!   `limits::ALIAS_MAX_EXPANSION` targets is `AliasLoop`; any unknown target makes the whole
//!   recipient `UnknownUser`. Each user and remote address appears once in the result.
//!
//! `refresh` never leaves the directory without tables: a file that vanishes (the users file)
//! or stops parsing is logged once and the tables read before stay in force, so the directory
//! itself never answers `RcptVerdict::TempFail`; that verdict is the host's, for when it has
//! no directory at all.

mod parse;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::auth::Credential;
use crate::limits;
use crate::mail::RcptVerdict;

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
    /// Alias expansion looped (or went deeper than `limits::ALIAS_MAX_DEPTH`, or past
    /// `limits::ALIAS_MAX_EXPANSION` targets); names the alias where it stopped.
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

/// The name of the catch-all alias.
const CATCH_ALL: &str = "*";
const POSTMASTER: &str = "postmaster";

/// What identifies one version of a file: any change of content or a replacement by rename
/// changes at least one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The users file, parsed.
#[derive(Debug, Default)]
struct Users {
    by_name: HashMap<String, Credential>,
    /// In file order: the postmaster fallback is the first.
    first: Option<String>,
}

/// One alias target as written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A user or alias name, lower-case.
    Name(String),
    /// `local@domain`: the local part as written, the domain lower-case.
    Address { local: String, domain: String },
}

#[derive(Debug)]
struct Alias {
    line: usize,
    targets: Vec<Target>,
}

/// The aliases file, parsed.
#[derive(Debug, Default)]
struct Aliases {
    by_name: HashMap<String, Alias>,
    catch_all: Option<Alias>,
}

/// What a local part matched, before any expansion.
#[derive(Clone, Copy, Debug)]
enum Hit<'a> {
    Alias(&'a str),
    User(&'a str),
}

/// A recipient address sorted by what it can be.
enum Address {
    NotLocal,
    /// A local domain, but the local part could escape a directory or is empty.
    Unsafe,
    /// A local domain; the lower-cased local part.
    Local(String),
}

pub struct Directory {
    settings: DirectorySettings,
    users: Users,
    aliases: Aliases,
    /// The version of each file last looked at (`None`: missing or not stat-able), whether it
    /// parsed or not: a bad file is reported once, not at every `refresh`.
    users_seen: Option<Stamp>,
    aliases_seen: Option<Stamp>,
    /// Set when neither file names `postmaster` (RFC 5321 §4.5.1 requires it to exist).
    postmaster_fallback: Option<String>,
    /// File reads so far; lets tests prove an unchanged file is not read again.
    reads: u64,
    /// Times `refresh` replaced the users table (the login cache is dropped on each).
    users_reloads: u64,
}

/// The local-part rule that keeps addresses from ever naming a path (see the module doc).
pub fn unsafe_local_part(local: &str) -> bool {
    local.is_empty()
        || local.starts_with('.')
        || local.contains("..")
        || local
            .bytes()
            .any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
}

/// A quoted local part means the same as its content (RFC 5321 §4.1.2: `"alice"` and `alice`
/// are one mailbox): the quotes and the backslashes of quoted pairs go. Whatever the content
/// then is (an `@`, a `/`) is judged as if it had been sent unquoted.
fn unquote(local: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return std::borrow::Cow::Borrowed(local);
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `name` (already lower-cased) may be a user or alias name: reachable by mail, safe
/// as a Maildir directory name, and unambiguous in the files. The error says what is expected.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let bad = unsafe_local_part(name)
        || !crate::maildir::safe_mailbox_name(name)
        || name
            .chars()
            .any(|c| c == '@' || c == ':' || c.is_whitespace());
    if bad {
        Err(
            "expected 1 to 255 octets without '/', '\\', '..', '@', ':', whitespace or control \
             characters, not starting with '.'"
                .to_string(),
        )
    } else {
        Ok(())
    }
}

impl Directory {
    /// Reads both files. Warnings (PLAIN passwords, no `postmaster`) come back beside it.
    pub fn load(
        mut settings: DirectorySettings,
    ) -> Result<(Directory, Vec<String>), Vec<DirectoryError>> {
        for d in &mut settings.domains {
            *d = d.to_ascii_lowercase();
        }
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut reads = 0;
        let users = parse::load_users(&settings.users_file, &mut reads);
        let aliases = parse::load_aliases(&settings.aliases_file, &mut reads);
        let (users, users_seen) = match users {
            Ok((users, stamp, w)) => {
                warnings.extend(w);
                (users, Some(stamp))
            }
            Err(e) => {
                errors.extend(e);
                (Users::default(), None)
            }
        };
        let (aliases, aliases_seen) = match aliases {
            Ok((aliases, stamp, w)) => {
                warnings.extend(w);
                (aliases, stamp)
            }
            Err(e) => {
                errors.extend(e);
                (Aliases::default(), None)
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut dir = Directory {
            settings,
            users,
            aliases,
            users_seen,
            aliases_seen,
            postmaster_fallback: None,
            reads,
            users_reloads: 0,
        };
        warnings.extend(dir.derive());
        Ok((dir, warnings))
    }

    /// Re-reads the files if either changed since they were read (one `stat` each). A file that
    /// fails to parse is logged and the previous tables are kept.
    pub fn refresh(&mut self) {
        let mut changed = false;
        let users_now = stamp_of(&self.settings.users_file);
        if users_now != self.users_seen {
            self.users_seen = users_now;
            match parse::load_users(&self.settings.users_file, &mut self.reads) {
                Ok((users, stamp, warnings)) => {
                    info!(
                        "re-read {}: {} user(s)",
                        self.settings.users_file.display(),
                        users.by_name.len()
                    );
                    self.users = users;
                    self.users_seen = Some(stamp);
                    self.users_reloads += 1;
                    changed = true;
                    log_warnings(&warnings);
                }
                Err(errors) => log_rejected(&self.settings.users_file, &errors),
            }
        }
        let aliases_now = stamp_of(&self.settings.aliases_file);
        if aliases_now != self.aliases_seen {
            self.aliases_seen = aliases_now;
            match parse::load_aliases(&self.settings.aliases_file, &mut self.reads) {
                Ok((aliases, stamp, warnings)) => {
                    info!(
                        "re-read {}: {} alias(es){}",
                        self.settings.aliases_file.display(),
                        aliases.by_name.len(),
                        if aliases.catch_all.is_some() {
                            " and a catch-all"
                        } else {
                            ""
                        }
                    );
                    self.aliases = aliases;
                    self.aliases_seen = stamp;
                    changed = true;
                    log_warnings(&warnings);
                }
                Err(errors) => log_rejected(&self.settings.aliases_file, &errors),
            }
        }
        if changed {
            let warnings = self.derive();
            log_warnings(&warnings);
        }
    }

    /// How often `refresh` re-read the users file: a change means passwords may have changed.
    pub fn users_reloads(&self) -> u64 {
        self.users_reloads
    }

    pub fn settings(&self) -> &DirectorySettings {
        &self.settings
    }

    pub fn rcpt_verdict(&self, rcpt: &str) -> RcptVerdict {
        match self.classify(rcpt) {
            Address::NotLocal => RcptVerdict::RelayDenied,
            Address::Unsafe => RcptVerdict::UnknownUser,
            Address::Local(local) => {
                if self.lookup(&local).is_some() || self.aliases.catch_all.is_some() {
                    RcptVerdict::Accept
                } else {
                    RcptVerdict::UnknownUser
                }
            }
        }
    }

    pub fn resolve(&self, rcpt: &str) -> Result<Vec<Resolved>, ResolveError> {
        match self.classify(rcpt) {
            Address::NotLocal => Err(ResolveError::NotLocal),
            Address::Unsafe => Err(ResolveError::UnknownUser),
            Address::Local(local) => {
                let mut expansion = Expansion::new(self);
                expansion.local(&local, true)?;
                Ok(expansion.out)
            }
        }
    }

    /// Is `sender` one of `user`'s own addresses: in a local domain (or without one), and
    /// resolving to that user alone: the user's name (or a subaddress of it), or an alias whose
    /// every target is that user. The catch-all never makes an address anybody's.
    pub fn sender_owned_by(&self, user: &str, sender: &str) -> bool {
        let Address::Local(local) = self.classify(sender) else {
            return false;
        };
        let mut expansion = Expansion::new(self);
        if expansion.local(&local, false).is_err() {
            return false;
        }
        matches!(expansion.out.as_slice(), [Resolved::Local { user: u }] if u == user)
    }

    /// The credential of a user (name matched with ASCII case folded only), for POP logins.
    pub fn credential(&self, user: &str) -> Option<(&str, &Credential)> {
        self.users
            .by_name
            .get_key_value(&user.to_ascii_lowercase())
            .map(|(name, cred)| (name.as_str(), cred))
    }

    /// Tables computed from both files; returns the warnings about them.
    fn derive(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let named = self.users.by_name.contains_key(POSTMASTER)
            || self.aliases.by_name.contains_key(POSTMASTER);
        self.postmaster_fallback = None;
        if !named {
            match &self.users.first {
                Some(first) => {
                    warnings.push(format!(
                        "no postmaster user or alias in {} or {} (RFC 5321 §4.5.1 requires one); \
                         mail to postmaster goes to {first}, the first user",
                        self.settings.users_file.display(),
                        self.settings.aliases_file.display()
                    ));
                    self.postmaster_fallback = Some(first.clone());
                }
                None => warnings.push(format!(
                    "{} has no users: no mail can be delivered and nobody can log in",
                    self.settings.users_file.display()
                )),
            }
        }
        let mut names: Vec<(&String, &Alias)> = self.aliases.by_name.iter().collect();
        names.sort_unstable_by_key(|(_, a)| a.line);
        let catch_all = self.aliases.catch_all.iter().map(|a| (CATCH_ALL, a));
        let all = names
            .into_iter()
            .map(|(n, a)| (n.as_str(), a))
            .chain(catch_all);
        for (name, alias) in all {
            for target in &alias.targets {
                let known = match target {
                    Target::Name(n) => self.lookup(n).is_some(),
                    Target::Address { local, domain } => {
                        !self.is_local_domain(domain)
                            || self.aliases.catch_all.is_some()
                            || (!unsafe_local_part(local)
                                && self.lookup(&local.to_ascii_lowercase()).is_some())
                    }
                };
                if !known {
                    warnings.push(format!(
                        "{}:{}: alias {name}: target {} is neither a user nor an alias; \
                         mail to {name} will bounce",
                        self.settings.aliases_file.display(),
                        alias.line,
                        target_text(target)
                    ));
                }
            }
        }
        warnings
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.settings.domains.iter().any(|d| d == domain)
    }

    fn classify(&self, rcpt: &str) -> Address {
        // The last `@` ends a quoted local part that may itself contain `@`.
        let local = match rcpt.rsplit_once('@') {
            Some((local, domain)) => {
                if !self.is_local_domain(&domain.to_ascii_lowercase()) {
                    return Address::NotLocal;
                }
                local
            }
            None => rcpt,
        };
        let local = unquote(local);
        if unsafe_local_part(&local) {
            Address::Unsafe
        } else {
            Address::Local(local.to_ascii_lowercase())
        }
    }

    /// An alias, a user or the postmaster fallback of exactly this name.
    fn find(&self, name: &str) -> Option<Hit<'_>> {
        if let Some((key, _)) = self.aliases.by_name.get_key_value(name) {
            return Some(Hit::Alias(key));
        }
        if let Some((key, _)) = self.users.by_name.get_key_value(name) {
            return Some(Hit::User(key));
        }
        match &self.postmaster_fallback {
            Some(user) if name == POSTMASTER => Some(Hit::User(user)),
            _ => None,
        }
    }

    /// `find` on the whole local part, then on the part before the subaddress delimiter.
    fn lookup(&self, local: &str) -> Option<Hit<'_>> {
        self.find(local).or_else(|| {
            let delimiter = self.settings.recipient_delimiter?;
            let (base, _tag) = local.split_once(delimiter)?;
            self.find(base)
        })
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads
    }
}

fn target_text(target: &Target) -> String {
    match target {
        Target::Name(n) => n.clone(),
        Target::Address { local, domain } => format!("{local}@{domain}"),
    }
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| stamp_from(&m))
}

fn stamp_from(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    }
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        warn!("{w}");
    }
}

fn log_rejected(path: &Path, errors: &[DirectoryError]) {
    for e in errors {
        warn!("{e}");
    }
    warn!(
        "{} has {} error(s); keeping the tables read before",
        path.display(),
        errors.len()
    );
}

/// One recipient's alias expansion in progress.
struct Expansion<'d> {
    dir: &'d Directory,
    out: Vec<Resolved>,
    seen: HashSet<Resolved>,
    /// Aliases being expanded, outermost first: meeting one again is a loop.
    chain: Vec<&'d str>,
    /// Aliases fully expanded already: their targets are in `out`, a second visit adds nothing.
    done: HashSet<&'d str>,
    targets_visited: usize,
}

impl<'d> Expansion<'d> {
    fn new(dir: &'d Directory) -> Expansion<'d> {
        Expansion {
            dir,
            out: Vec::new(),
            seen: HashSet::new(),
            chain: Vec::new(),
            done: HashSet::new(),
            targets_visited: 0,
        }
    }

    fn push(&mut self, r: Resolved) {
        if self.seen.insert(r.clone()) {
            self.out.push(r);
        }
    }

    fn local(&mut self, local: &str, catch_all: bool) -> Result<(), ResolveError> {
        match self.dir.lookup(local) {
            Some(Hit::Alias(key)) => self.alias(key),
            Some(Hit::User(user)) => {
                self.push(Resolved::Local {
                    user: user.to_string(),
                });
                Ok(())
            }
            None if catch_all && self.dir.aliases.catch_all.is_some() => self.alias(CATCH_ALL),
            None => Err(ResolveError::UnknownUser),
        }
    }

    fn alias(&mut self, key: &'d str) -> Result<(), ResolveError> {
        let dir = self.dir;
        if self.chain.contains(&key) {
            if let Some((user, _)) = dir.users.by_name.get_key_value(key) {
                self.push(Resolved::Local { user: user.clone() });
                return Ok(());
            }
            return Err(ResolveError::AliasLoop(key.to_string()));
        }
        if self.done.contains(key) {
            return Ok(());
        }
        if self.chain.len() >= limits::ALIAS_MAX_DEPTH {
            return Err(ResolveError::AliasLoop(key.to_string()));
        }
        let alias = if key == CATCH_ALL {
            dir.aliases.catch_all.as_ref()
        } else {
            dir.aliases.by_name.get(key)
        };
        let Some(alias) = alias else {
            return Err(ResolveError::UnknownUser);
        };
        self.chain.push(key);
        for target in &alias.targets {
            self.targets_visited += 1;
            if self.targets_visited > limits::ALIAS_MAX_EXPANSION {
                return Err(ResolveError::AliasLoop(key.to_string()));
            }
            match target {
                Target::Name(name) => self.local(name, false)?,
                Target::Address { local, domain } if dir.is_local_domain(domain) => {
                    if unsafe_local_part(local) {
                        return Err(ResolveError::UnknownUser);
                    }
                    self.local(&local.to_ascii_lowercase(), true)?;
                }
                Target::Address { local, domain } => self.push(Resolved::Remote {
                    address: format!("{local}@{domain}"),
                }),
            }
        }
        self.chain.pop();
        self.done.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
