//! The users and aliases file formats. Every problem is reported, each as
//! `FILE:LINE: what is wrong (expected …)`, so one run of `postling -t` shows them all.
//!
//! Both files: UTF-8, one entry a line, blank lines and lines whose first non-blank character
//! is `#` ignored, a trailing CR (a file edited on Windows) dropped.
//! - users: `name:{SCHEME}credential`; the credential is everything after the first `:`
//!   (see `auth.rs` for the schemes); names are lower-cased and checked by `check_user_name`.
//! - aliases: `name: target, target, …`; `*` is the catch-all; a target is a user or alias
//!   name or a full address `local@domain`; names and domains are lower-cased.
//!
//! A missing users file is an error; a missing aliases file means no aliases (a warning).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{Alias, Aliases, CATCH_ALL, DirectoryError, Stamp, Target, Users, check_user_name};
use crate::auth::{self, Credential};
use crate::limits;

const USERS_EXPECTED: &str = "expected user:{SHA512-CRYPT}$6$… or user:{PLAIN}secret";
const ALIASES_EXPECTED: &str = "expected name: target, target, …";

/// Reads a whole file with the version it had when opened. Refuses anything but a regular file
/// (a FIFO would block the reactor) and anything over `limits::DIRECTORY_FILE_MAX`.
fn read_file(path: &Path, reads: &mut u64) -> io::Result<(Vec<u8>, Stamp)> {
    *reads += 1;
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > limits::DIRECTORY_FILE_MAX {
        return Err(io::Error::other(format!(
            "larger than {} octets",
            limits::DIRECTORY_FILE_MAX
        )));
    }
    let mut data = Vec::new();
    file.take(limits::DIRECTORY_FILE_MAX + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > limits::DIRECTORY_FILE_MAX {
        return Err(io::Error::other(format!(
            "larger than {} octets",
            limits::DIRECTORY_FILE_MAX
        )));
    }
    Ok((data, super::stamp_from(&meta)))
}

/// The lines that carry entries: (line number, text without line end). Lines that are not
/// UTF-8 are reported and skipped.
fn entries<'d>(
    file: &str,
    data: &'d [u8],
    errors: &mut Vec<DirectoryError>,
) -> Vec<(usize, &'d str)> {
    let mut found = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(DirectoryError(format!(
                "{file}:{n}: the line is not valid UTF-8 (expected UTF-8 text)"
            )));
            continue;
        };
        let content = line.trim_start();
        if !content.is_empty() && !content.starts_with('#') {
            found.push((n, line));
        }
    }
    found
}

pub(super) type Loaded<T> = Result<(T, Stamp, Vec<String>), Vec<DirectoryError>>;

pub(super) fn load_users(path: &Path, reads: &mut u64) -> Loaded<Users> {
    let file = path.display().to_string();
    match read_file(path, reads) {
        Ok((data, stamp)) => parse_users(&file, &data).map(|(u, w)| (u, stamp, w)),
        Err(e) => Err(vec![DirectoryError(format!(
            "{file}: cannot read the users file: {e} ({USERS_EXPECTED} lines)"
        ))]),
    }
}

/// Like `Loaded`, but a missing file is no aliases and no stamp.
pub(super) fn load_aliases(
    path: &Path,
    reads: &mut u64,
) -> Result<(Aliases, Option<Stamp>, Vec<String>), Vec<DirectoryError>> {
    let file = path.display().to_string();
    match read_file(path, reads) {
        Ok((data, stamp)) => parse_aliases(&file, &data).map(|(a, w)| (a, Some(stamp), w)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((
            Aliases::default(),
            None,
            vec![format!("{file}: not found; no aliases")],
        )),
        Err(e) => Err(vec![DirectoryError(format!(
            "{file}: cannot read the aliases file: {e} ({ALIASES_EXPECTED} lines)"
        ))]),
    }
}

pub(super) fn parse_users(
    file: &str,
    data: &[u8],
) -> Result<(Users, Vec<String>), Vec<DirectoryError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut users = Users::default();
    let mut lines_of: HashMap<String, usize> = HashMap::new();
    for (n, line) in entries(file, data, &mut errors) {
        let Some((name, credential)) = line.split_once(':') else {
            errors.push(DirectoryError(format!(
                "{file}:{n}: no ':' after the user name ({USERS_EXPECTED})"
            )));
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if let Err(expected) = check_user_name(&lower) {
            errors.push(DirectoryError(format!(
                "{file}:{n}: user name {name:?} is not allowed ({expected})"
            )));
            continue;
        }
        if let Some(first) = lines_of.get(&lower) {
            errors.push(DirectoryError(format!(
                "{file}:{n}: user {lower} is already defined on line {first} (expected each user once)"
            )));
            continue;
        }
        let credential = match auth::parse_credential(credential) {
            Ok(c) => c,
            Err(e) => {
                errors.push(DirectoryError(format!("{file}:{n}: user {lower}: {e}")));
                continue;
            }
        };
        if matches!(credential, Credential::Plain(_)) {
            warnings.push(format!(
                "{file}:{n}: user {lower} has a {{PLAIN}} password; \
                 `postling passwd {lower}` prints a {{SHA512-CRYPT}} line to use instead"
            ));
        }
        lines_of.insert(lower.clone(), n);
        if users.first.is_none() {
            users.first = Some(lower.clone());
        }
        users.by_name.insert(lower, credential);
    }
    if errors.is_empty() {
        Ok((users, warnings))
    } else {
        Err(errors)
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
    if text.is_empty() {
        return Err(format!("an empty target ({ALIASES_EXPECTED})"));
    }
    if text.starts_with('|') || text.starts_with('/') || text.starts_with(":include:") {
        return Err(format!(
            "target {text:?}: pipes, files and includes are not supported \
             (expected a user, an alias or local@domain)"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!(
            "target {text:?} contains whitespace (expected targets separated by commas; \
             comments go on lines of their own)"
        ));
    }
    match text.rsplit_once('@') {
        Some((local, domain)) => {
            let domain_ok = !domain.is_empty()
                && domain
                    .chars()
                    .all(|c| !c.is_control() && c != '@' && c != '/' && c != '\\');
            if local.is_empty() || !domain_ok {
                return Err(format!(
                    "target {text:?} is not an address (expected local@domain)"
                ));
            }
            Ok(Target::Address {
                local: local.to_string(),
                domain: domain.to_ascii_lowercase(),
            })
        }
        None => {
            let name = text.to_ascii_lowercase();
            check_user_name(&name)
                .map_err(|expected| format!("target {text:?} is not a valid name ({expected})"))?;
            Ok(Target::Name(name))
        }
    }
}

pub(super) fn parse_aliases(
    file: &str,
    data: &[u8],
) -> Result<(Aliases, Vec<String>), Vec<DirectoryError>> {
    let mut errors = Vec::new();
    let mut aliases = Aliases::default();
    for (n, line) in entries(file, data, &mut errors) {
        let Some((name, list)) = line.split_once(':') else {
            errors.push(DirectoryError(format!(
                "{file}:{n}: no ':' after the alias name ({ALIASES_EXPECTED})"
            )));
            continue;
        };
        let name = name.trim();
        let key = name.to_ascii_lowercase();
        if key != CATCH_ALL {
            if let Err(expected) = check_user_name(&key) {
                errors.push(DirectoryError(format!(
                    "{file}:{n}: alias name {name:?} is not allowed ({expected}, or * for the catch-all)"
                )));
                continue;
            }
        }
        let mut targets = Vec::new();
        let mut bad = false;
        for text in list.split(',').map(str::trim) {
            match parse_target(text) {
                Ok(t) => targets.push(t),
                Err(e) => {
                    errors.push(DirectoryError(format!("{file}:{n}: alias {key}: {e}")));
                    bad = true;
                }
            }
        }
        if bad {
            continue;
        }
        let earlier = if key == CATCH_ALL {
            aliases.catch_all.as_ref()
        } else {
            aliases.by_name.get(&key)
        };
        if let Some(first) = earlier {
            errors.push(DirectoryError(format!(
                "{file}:{n}: alias {key} is already defined on line {} (expected each name once)",
                first.line
            )));
            continue;
        }
        let alias = Alias { line: n, targets };
        if key == CATCH_ALL {
            aliases.catch_all = Some(alias);
        } else {
            aliases.by_name.insert(key, alias);
        }
    }
    if errors.is_empty() {
        Ok((aliases, Vec::new()))
    } else {
        Err(errors)
    }
}
