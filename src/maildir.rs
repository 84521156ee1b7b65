//! Maildir's on-disk form, in one place: how postling names the files it delivers, what a
//! reader may add to a name (the `:2,` info), what the sizes in a name say, and the one
//! rule for paths under the Maildir root (a user name is one safe path component, and no
//! symbolic link is followed at or below `<mailbox_dir>/<user>`). Delivery
//! (`deliver::local`) writes these names; the POP mailboxes (`mailbox`) read them; the
//! directory checks user names with the same rule.
//!
//! A delivered file is named `<secs>.M<usec>Q<queue id>H<hash>.<host>,S=<bytes on
//! disk>,W=<bytes with CRLF>`: `W=` is the size as POP3 sends it, so a POP3 login never has
//! to read the files to count them. The unique part (before `,S=`) is derived from the queue
//! entry alone (`unique_name`), so every attempt at one entry names its copy the same way,
//! which makes delivery idempotent across a crash.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dirfd::{self, Dir};

/// The Maildir info suffix of a message with no flags set (a message moved to `cur/`).
pub const INFO_SUFFIX: &str = ":2,";

/// What names a queue entry's copies: the same for every attempt, in every process.
pub struct MessageKey<'a> {
    pub queue_id: &'a str,
    /// The arrival time stored in the spool (never the time of the attempt).
    pub arrival: SystemTime,
    pub sender: &'a str,
    pub recipients: &'a [String],
}

/// 32-bit FNV-1a: stable across builds and Rust versions (the std hasher is not), which a
/// name that must be found again after an upgrade needs.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A name component with the characters a Maildir name reserves (`/`, `:`) and the ones that
/// separate its parts here (`.`, `,`) escaped as the Maildir spec does (`\ooo`).
fn escape_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '/' | ':' | '.' | ',' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The queue id in the unique part of a file name made by `unique_name`, if it is one:
/// `<secs>.M<usec>Q<id>H<hash>.<host>...`.
pub fn queue_id_of(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once('.')?;
    let middle = rest.split('.').next()?;
    let after_m = middle.strip_prefix('M')?;
    let (usec, tail) = after_m.split_at(after_m.find('Q')?);
    if usec.is_empty() || !usec.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let tail = tail.strip_prefix('Q')?;
    let (id, hash) = tail.split_at(tail.rfind('H')?);
    let hash = hash.strip_prefix('H')?;
    (!id.is_empty() && hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The unique part of a Maildir file name: before the first `,` (`S=`, `W=`) or `:` (the
/// info a reader adds in `cur/`).
pub fn unique_part(name: &str) -> &str {
    name.split([',', ':']).next().unwrap_or(name)
}

/// The host part of a unique name: the host name with `/` and `:` replaced, as the Maildir
/// specification asks.
pub fn host_component(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// The unique part of the name of every copy of one queue entry:
/// `<arrival secs>.M<arrival usec>Q<queue id>H<envelope hash>.<host>` (`host` from
/// `host_component`). Deterministic, so a repeated attempt finds (or replaces) the copy of an
/// earlier one; unique, because the queue id is unique within a spool and the arrival time and
/// the hash of sender and recipients keep two spools, or an id given again after the clock
/// stepped back, apart.
pub fn unique_name(key: &MessageKey, host: &str) -> String {
    let since = key.arrival.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(key.recipients.len() + 1);
    parts.push(key.sender.as_bytes());
    parts.extend(key.recipients.iter().map(|r| r.as_bytes()));
    format!(
        "{}.M{}Q{}H{:08x}.{}",
        since.as_secs(),
        since.subsec_micros(),
        escape_component(key.queue_id),
        fnv1a(&parts),
        host
    )
}

/// A delivered file's full name: the unique part, its size on disk (`S=`, LF line ends) and
/// its size as POP3 sends it (`W=`, CRLF line ends).
pub fn sized_name(unique: &str, size: u64, wire_size: u64) -> String {
    format!("{unique},S={size},W={wire_size}")
}

/// A file name without the info a reader added (`:2,...`): the POP3 UIDL.
pub fn without_info(name: &str) -> &str {
    name.find(':').map_or(name, |i| &name[..i])
}

/// The name a message gets in `cur/`: with the `:2,` info unless it has an info already.
pub fn cur_name(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}{INFO_SUFFIX}")
    }
}

/// `W=<n>` of a name, if it has one (anyone writing into the Maildir may get it wrong: good
/// for listings, never for what is sent).
pub fn wire_size(name: &str) -> Option<u64> {
    without_info(name)
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("W="))
        .and_then(|n| n.parse::<u64>().ok())
}

/// The seconds a name begins with (the delivery time, by the Maildir convention), if any.
pub fn leading_seconds(name: &str) -> Option<u64> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    name.get(..digits).and_then(|d| d.parse().ok())
}

/// A local part or user name that is safe as one path component under the Maildir root.
pub fn safe_mailbox_name(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('.')
        && user.len() <= 255
        && !user
            .bytes()
            .any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
}

/// Why a Maildir directory cannot be used, for logs, queue reasons and POP replies:
/// `mailbox alice: refusing /var/mail/alice/new: is a symbolic link`.
fn refusal(user: &str, what: &str, path: &Path, e: &io::Error) -> String {
    if dirfd::is_symlink(e) {
        format!("mailbox {user}: refusing {}: {e}", path.display())
    } else {
        format!("mailbox {user}: {what} {}: {e}", path.display())
    }
}

/// Opens the Maildir `<root>/<user>` without following a symlink there, creating it (mode
/// 0700, and `root` if missing) when it does not exist; true if it was created. `user` must
/// have passed `safe_mailbox_name`.
pub fn open_user_dir(root: &Path, user: &str) -> Result<(Dir, bool), String> {
    let path = root.join(user);
    match Dir::open(&path) {
        Ok(d) => return Ok((d, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(refusal(user, "cannot open", &path, &e)),
    }
    if !root.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| refusal(user, "cannot create", root, &e))?;
    }
    // mkdir(2) never follows a symlink of that name; the open below refuses it.
    match DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refusal(user, "cannot create", &path, &e)),
    }
    Dir::open(&path)
        .map(|d| (d, true))
        .map_err(|e| refusal(user, "cannot open", &path, &e))
}

/// Makes the subdirectory `name` (mode 0700) of a Maildir unless something of that name exists.
pub fn make_sub(user: &str, dir: &Dir, name: &str) -> Result<(), String> {
    match dir.make_dir(name, 0o700) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(refusal(user, "cannot create", &dir.path().join(name), &e)),
    }
}

/// Opens the subdirectory `name` of a Maildir without following a symlink, making it first
/// when missing.
pub fn open_sub(user: &str, dir: &Dir, name: &str) -> Result<Dir, String> {
    let path = || dir.path().join(name);
    match dir.open_dir(name) {
        Ok(d) => return Ok(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(refusal(user, "cannot open", &path(), &e)),
    }
    make_sub(user, dir, name)?;
    dir.open_dir(name)
        .map_err(|e| refusal(user, "cannot open", &path(), &e))
}

/// Where a Maildir copy's bytes come from: `len` octets of the queued file `path` from
/// `offset` (the message data), with CRLF line ends (`lf_form` false: each CRLF becomes LF
/// as it is copied) or already in the Maildir form (`lf_form`: copied as they are; see
/// `crate::lf`, whose forward step leaves that form unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySource {
    pub path: CString,
    pub offset: u64,
    pub len: u64,
    pub lf_form: bool,
}

/// The bytes a copy reads and writes at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// Creates `name` in the open directory `dir` (never through a symbolic link, never over an
/// existing file; mode 0600) and writes `head` then the data of `source` into it in the
/// Maildir form. Returns the file, not yet synced, with its size on disk and as POP3 sends it
/// (`S=`, `W=`). A file that could not be written whole is removed again. Blocking: the
/// disk executor runs it (`exec::DiskOp::MaildirCopy`), and delivery's blocking path.
pub fn write_copy(
    dir: RawFd,
    name: &CStr,
    head: &[u8],
    source: &CopySource,
) -> io::Result<(File, u64, u64)> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name alive for the call; the descriptor returned is new and
    // owned by the File alone.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let file = unsafe { File::from_raw_fd(fd) };
    match fill_copy(&file, head, source) {
        Ok((size, wire)) => Ok((file, size, wire)),
        Err(e) => {
            drop(file);
            // SAFETY: as above; the file this call created.
            unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
            Err(e)
        }
    }
}

fn fill_copy(out: &File, head: &[u8], source: &CopySource) -> io::Result<(u64, u64)> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut from = File::open(OsStr::from_bytes(source.path.as_bytes()))?;
    from.seek(SeekFrom::Start(source.offset))?;
    let mut from = from.take(source.len);
    let mut w = io::BufWriter::with_capacity(COPY_CHUNK, out);
    // Bytes written, and the POP3 size: every LF not preceded by CR counts twice.
    let (mut size, mut wire, mut last) = (0u64, 0u64, b'\n');
    let mut put = |bytes: &[u8]| -> io::Result<()> {
        if let Some(&b) = bytes.last() {
            wire += bytes.len() as u64 + crate::lf::wire_extra(bytes, last);
            size += bytes.len() as u64;
            last = b;
        }
        w.write_all(bytes)
    };
    put(head)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    if source.lf_form {
        crate::lf::read_chunks(&mut from, &mut buf, &mut put)?;
    } else {
        let mut lf = crate::lf::LfWriter::default();
        crate::lf::read_chunks(&mut from, &mut buf, &mut |chunk| lf.feed(chunk, &mut put))?;
        lf.finish(&mut put)?;
    }
    w.flush()?;
    Ok((size, wire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_sizes_and_lose_only_the_info() {
        let name = sized_name("1700000000.M1Q0ABCDEFGHJKMH00000000.h", 12, 14);
        assert_eq!(name, "1700000000.M1Q0ABCDEFGHJKMH00000000.h,S=12,W=14");
        assert_eq!(wire_size(&name), Some(14));
        let read = format!("{name}:2,S");
        assert_eq!(without_info(&read), name);
        assert_eq!(wire_size(&read), Some(14));
        assert_eq!(unique_part(&read), "1700000000.M1Q0ABCDEFGHJKMH00000000.h");
        assert_eq!(leading_seconds(&name), Some(1_700_000_000));
        assert_eq!(cur_name(&name), format!("{name}:2,"));
        assert_eq!(cur_name(&read), read);
        // Names other programs make: no sizes, no seconds, a W= that is not a number.
        assert_eq!(wire_size("1.2.host"), None);
        assert_eq!(wire_size("1.2.host,W=x"), None);
        assert_eq!(
            wire_size("1.2.host:2,W=5"),
            None,
            "the info is not the name"
        );
        assert_eq!(leading_seconds("abc.host"), None);
        assert_eq!(without_info("x"), "x");
    }

    #[test]
    fn a_user_name_is_one_safe_path_component() {
        for good in ["alice", "a.b", "user+tag", "Ü"] {
            assert!(safe_mailbox_name(good), "{good}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a\nb",
            "a\x7fb",
            long.as_str(),
        ] {
            assert!(!safe_mailbox_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_host_part_escapes_what_a_name_reserves() {
        assert_eq!(host_component("mail/host:1"), "mail\\057host\\0721");
    }
}
