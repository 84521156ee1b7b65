//! Reading a user's Maildir for POP: lock, snapshot, streaming reads, and the UPDATE state.
//!
//! - The Maildir is `<root>/<user>`, created (`tmp new cur`, mode 0700) when missing; the user
//!   name is checked with `safe_mailbox_name` before any path is built.
//! - One session per mailbox: an exclusive, non-blocking `flock` on `.postling-pop.lock` inside
//!   the Maildir, held by the open `Mailbox` and released when it is dropped in any way. The
//!   kernel drops flocks with the descriptor, so a crashed daemon leaves no stale lock. (A
//!   second open in the same process is a second open file description and conflicts too.)
//! - The snapshot at login: every file of `new/` is moved to `cur/` with the `:2,` info suffix
//!   (Maildir spec), then `cur/` is listed, skipping dot files and anything but regular files.
//!   A file that cannot be moved is served from `new/`. Order: the leading decimal seconds of
//!   the name (delivery time), then the name. The UID is the unique name, before `:2,`.
//! - Sizes are octets as POP sends them (CRLF line endings, before dot-stuffing): `W=<n>` from
//!   the name when present (postling's own deliveries carry it), else counted by reading the
//!   file once: its length plus one per LF not preceded by CR. These snapshot sizes serve
//!   POP3's STAT and LIST, where a wrong `W=` misleads only a size display (RETR streams the
//!   whole file up to its terminator). POP2 announces the exact length of the text it sends, so
//!   it asks `wire_size`, which always counts the file.
//! - No symbolic link is followed at or below `<root>/<user>` (see `crate::dirfd`): the
//!   Maildir, `new/` and `cur/` are opened with `O_NOFOLLOW` and held by the `Mailbox`; every
//!   listing, rename, open and unlink is relative to them. A symlink in their place fails the
//!   login with a temporary error naming it; a message file that is a symlink is never
//!   listed or read (deleting one would remove only the link).

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use log::warn;

use crate::deliver::maildir::{make_sub, open_sub, open_user_dir, safe_mailbox_name};
use crate::dirfd::{Dir, Kind};
use crate::proto::{MailboxError, MessageInfo};

/// The lock file inside each Maildir; a dot file, so Maildir readers ignore it.
pub const LOCK_FILE: &str = ".postling-pop.lock";
/// The Maildir info suffix of a message with no flags set.
const INFO_SUFFIX: &str = ":2,";

/// Which directory of the Maildir a snapshot message lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sub {
    Cur,
    New,
}

impl Sub {
    fn dir(self) -> &'static str {
        match self {
            Sub::Cur => "cur",
            Sub::New => "new",
        }
    }
}

#[derive(Debug)]
struct Message {
    sub: Sub,
    /// The file name, with its info suffix.
    file: String,
    /// The unique name: `file` before `:2,`.
    uid_len: usize,
    seconds: Option<u64>,
}

impl Message {
    fn new(sub: Sub, file: String) -> Message {
        let uid_len = file.find(':').unwrap_or(file.len());
        let digits = file.bytes().take_while(u8::is_ascii_digit).count();
        let seconds = file.get(..digits).and_then(|d| d.parse().ok());
        Message {
            sub,
            file,
            uid_len,
            seconds,
        }
    }

    fn uid(&self) -> &str {
        self.file.get(..self.uid_len).unwrap_or(&self.file)
    }

    /// Delivery order: names without leading seconds last.
    fn order(&self, other: &Message) -> Ordering {
        let a = self.seconds.unwrap_or(u64::MAX);
        let b = other.seconds.unwrap_or(u64::MAX);
        a.cmp(&b).then_with(|| self.uid().cmp(other.uid()))
    }
}

/// One locked mailbox with its login snapshot.
pub struct Mailbox {
    dir: PathBuf,
    cur: Dir,
    /// Held only while some snapshot message is served from `new/`.
    new: Option<Dir>,
    /// Holds the flock; closing it (drop) releases the mailbox.
    _lock: File,
    messages: Vec<Message>,
    /// The message being read, kept open between `read` calls.
    current: Option<(usize, File)>,
}

fn temporary(what: &str, path: &Path, e: &io::Error) -> MailboxError {
    MailboxError::Temporary(format!("{what} {}: {e}", path.display()))
}

/// Takes the mailbox's lock without waiting.
fn lock(dir: &Dir) -> Result<File, MailboxError> {
    let path = dir.path().join(LOCK_FILE);
    let file = dir
        .open_or_create(LOCK_FILE, 0o600)
        .map_err(|e| temporary("cannot open the lock file", &path, &e))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Err(MailboxError::InUse),
            _ => return Err(temporary("cannot lock", &path, &e)),
        }
    }
}

/// Regular, non-dot files of one Maildir directory with UTF-8 names.
fn list(dir: &Dir) -> Result<Vec<String>, MailboxError> {
    let entries = dir
        .entries()
        .map_err(|e| temporary("cannot list", dir.path(), &e))?;
    let mut names = Vec::new();
    for (name, kind) in entries {
        let is_file = kind == Kind::File;
        let Some(name) = name.to_str() else {
            warn!(
                "{}: skipping {name:?}: the name is not UTF-8",
                dir.path().display(),
            );
            continue;
        };
        if is_file && !name.starts_with('.') {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Moves `new/` into `cur/` as the Maildir spec asks of a reader; returns what could not be
/// moved (those are served from `new/`).
fn move_new_to_cur(new: &Dir, cur: &Dir) -> Result<Vec<Message>, MailboxError> {
    let mut stayed = Vec::new();
    for name in list(new)? {
        let from = new.path().join(&name);
        let target = if name.contains(':') {
            name.clone()
        } else {
            format!("{name}{INFO_SUFFIX}")
        };
        // rename(2) would silently replace a message of the same name in cur/.
        if cur.stat(&target).is_ok() {
            warn!(
                "{}: {target} already exists in cur/; serving {name} from new/",
                cur.path().display()
            );
            stayed.push(Message::new(Sub::New, name));
            continue;
        }
        match new.rename_to(&name, cur, &target) {
            Ok(()) => {}
            // Another reader moved or removed it since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(
                    "cannot move {} to cur/: {e}; serving it from new/",
                    from.display()
                );
                stayed.push(Message::new(Sub::New, name));
            }
        }
    }
    Ok(stayed)
}

/// The POP size of a message: `W=` from the unique name, or counted from the file.
fn pop_size(dir: &Dir, m: &Message) -> io::Result<u64> {
    let from_name = m
        .uid()
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("W="))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(size) = from_name {
        return Ok(size);
    }
    let mut file = dir.open_read(&m.file)?;
    wire_size(&mut file)
}

/// Length plus one CR for every LF that POP will expand to CRLF.
fn wire_size(data: &mut dyn Read) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut size = 0u64;
    let mut previous = 0u8;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(size),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        size += n as u64;
        for i in memchr::memchr_iter(b'\n', chunk) {
            let before = if i == 0 { previous } else { chunk[i - 1] };
            if before != b'\r' {
                size += 1;
            }
        }
        previous = chunk[n - 1];
    }
}

/// Sequential reads by `pread`, so the shared file position never matters.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl Mailbox {
    /// Locks `<root>/<user>` (creating the Maildir if missing) and takes the snapshot.
    pub fn open(root: &Path, user: &str) -> Result<(Mailbox, Vec<MessageInfo>), MailboxError> {
        if !safe_mailbox_name(user) {
            return Err(MailboxError::Permanent(format!(
                "mailbox name {user:?} is not allowed"
            )));
        }
        // Nothing below follows a symlink: the Maildir, new/ and cur/ are opened O_NOFOLLOW
        // and everything else is relative to them.
        let (user_dir, _) = open_user_dir(root, user).map_err(MailboxError::Temporary)?;
        make_sub(user, &user_dir, "tmp").map_err(MailboxError::Temporary)?;
        let new = open_sub(user, &user_dir, "new").map_err(MailboxError::Temporary)?;
        let cur = open_sub(user, &user_dir, "cur").map_err(MailboxError::Temporary)?;
        let lock = lock(&user_dir)?;
        let dir = user_dir.path().to_path_buf();
        drop(user_dir);
        let mut messages = move_new_to_cur(&new, &cur)?;
        messages.extend(
            list(&cur)?
                .into_iter()
                .map(|name| Message::new(Sub::Cur, name)),
        );
        messages.sort_by(Message::order);
        let mut infos = Vec::with_capacity(messages.len());
        let mut kept = Vec::with_capacity(messages.len());
        for m in messages {
            let sub = match m.sub {
                Sub::Cur => &cur,
                Sub::New => &new,
            };
            match pop_size(sub, &m) {
                Ok(size) => {
                    infos.push(MessageInfo {
                        uid: m.uid().into(),
                        size,
                    });
                    kept.push(m);
                }
                // Removed by another program since the listing: not part of the snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let path = dir.join(m.sub.dir()).join(&m.file);
                    return Err(temporary("cannot read", &path, &e));
                }
            }
        }
        let new = kept.iter().any(|m| m.sub == Sub::New).then_some(new);
        let mailbox = Mailbox {
            dir,
            cur,
            new,
            _lock: lock,
            messages: kept,
            current: None,
        };
        Ok((mailbox, infos))
    }

    /// Reads bytes of snapshot message `index` from `offset`; 0 at end of file. A message
    /// removed since the snapshot is an error.
    pub fn read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.open_current(index)?;
        loop {
            match file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// The POP size of snapshot message `index` counted from the file itself, never from a
    /// `W=` in its name (which anyone writing into the Maildir may get wrong). For POP2, whose
    /// `=size` reply promises the exact length before the text.
    pub fn wire_size(&mut self, index: usize) -> io::Result<u64> {
        let file = self.open_current(index)?;
        wire_size(&mut ReadAt { file, offset: 0 })
    }

    /// The open file of snapshot message `index`, opened now unless it is the current one.
    fn open_current(&mut self, index: usize) -> io::Result<&File> {
        if self.current.as_ref().map(|(i, _)| *i) != Some(index) {
            self.current = None;
            let (dir, name) = self.message_at(index)?;
            self.current = Some((index, dir.open_read(name)?));
        }
        match &self.current {
            Some((_, file)) => Ok(file),
            None => Err(io::Error::other("no message open")),
        }
    }

    /// Removes the messages at these snapshot indices; the lock goes with `self`.
    pub fn update(mut self, deleted: &[usize]) -> Result<(), MailboxError> {
        self.current = None;
        let mut first_error = None;
        let mut synced = [false, false];
        for &index in deleted {
            let Ok((dir, name)) = self.message_at(index) else {
                continue;
            };
            let path = dir.path().join(name);
            // unlinkat never follows: a symlink put in place of a message loses only itself.
            match dir.remove_file(name) {
                Ok(()) => {}
                // Someone else removed it: the outcome the client asked for.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| temporary("cannot delete", &path, &e));
                    continue;
                }
            }
            if let Some(m) = self.messages.get(index) {
                synced[usize::from(m.sub == Sub::New)] = true;
            }
        }
        // The unlinks are durable once their directory is synced.
        for (dir, touched) in [Some(&self.cur), self.new.as_ref()].into_iter().zip(synced) {
            if let (Some(d), true) = (dir, touched) {
                if let Err(e) = d.as_file().sync_all() {
                    first_error.get_or_insert_with(|| temporary("cannot sync", d.path(), &e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The Maildir directory.
    pub fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The directory and file name of snapshot message `index`.
    fn message_at(&self, index: usize) -> io::Result<(&Dir, &str)> {
        let m = self.messages.get(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no message {index} in the snapshot"),
            )
        })?;
        let dir = match m.sub {
            Sub::Cur => Some(&self.cur),
            Sub::New => self.new.as_ref(),
        };
        let dir = dir.ok_or_else(|| io::Error::other("new/ is not open"))?;
        Ok((dir, &m.file))
    }
}

#[cfg(test)]
mod tests;
