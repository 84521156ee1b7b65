//! Reading a user's Maildir for POP: lock, snapshot, streaming reads, and the UPDATE state.
//!
//! - The Maildir is `<root>/<user>`, created (`tmp new cur`, mode 0700) when missing; the user
//!   name is checked with `safe_mailbox_name` before any path is built.
//! - One session per mailbox: an exclusive, non-blocking `flock` on `.postling-pop.lock` inside
//!   the Maildir, held by the open `Mailbox` and released when it is dropped in any way. The
//!   kernel drops flocks with the descriptor, so a crashed daemon leaves no stale lock. (A
//!   second open in the same process is a second open file description and conflicts too.)
//! - Locking is done on the reactor (`Mailbox::lock`: a fixed handful of calls); the snapshot
//!   and QUIT's deletions, whose cost grows with the mailbox, are requests to the disk
//!   executor in bounded batches (`job`).
//! - The snapshot at login: `new/` and `cur/` are listed, skipping dot files and anything but
//!   regular files; each message is served from where it lies. Order: the leading decimal
//!   seconds of the name (delivery time), then the name. The UID is the unique name, before
//!   `:2,`, so it stays the same when QUIT's UPDATE moves a message that was not deleted from
//!   `new/` to `cur/` with the `:2,` info suffix (Maildir spec: a client has seen it).
//! - Sizes are octets as POP sends them (CRLF line endings, before dot-stuffing): `W=<n>` from
//!   the name when present (postling's own deliveries carry it), else counted by reading the
//!   file once: its length plus one per LF not preceded by CR. These snapshot sizes serve
//!   POP3's STAT and LIST, where a wrong `W=` misleads only a size display (RETR streams the
//!   whole file up to its terminator). POP2 announces the exact length of the text it sends, so
//!   it has the file counted whatever its name says (`job::Job::size`, in the executor).
//! - A message is read for RETR and TOP without waiting for the disk (`preadv2` with
//!   `RWF_NOWAIT`): bytes not in the page cache are a `WouldBlock`, and the read that brings
//!   them in (`limits::POP_WARM_WINDOW` of them, `exec::DiskOp::Warm`) is a request the session
//!   waits for (`MailboxRequest::Warm`, run by `job`) while other clients are served. The read
//!   after it may wait (a plain `pread`), so a page dropped again meanwhile cannot make the
//!   transfer go round in circles. Where the kernel or file system refuses `RWF_NOWAIT`, reads
//!   are plain `pread`s.
//! - No symbolic link is followed at or below `<root>/<user>` (see `crate::dirfd`): the
//!   Maildir, `new/` and `cur/` are opened with `O_NOFOLLOW` and held by the `Mailbox`; every
//!   listing, rename, open and unlink is relative to them. A symlink in their place fails the
//!   login with a temporary error naming it; a message file that is a symlink is never
//!   listed or read (deleting one would remove only the link).

use std::cmp::Ordering;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::dirfd::Dir;
use crate::mail::MailboxError;
#[cfg(test)]
use crate::mail::MessageInfo;
use crate::maildir::{self, make_sub, open_sub, open_user_dir, safe_mailbox_name};

/// The lock file inside each Maildir; a dot file, so Maildir readers ignore it.
pub const LOCK_FILE: &str = ".postling-pop.lock";

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
        let uid_len = maildir::without_info(&file).len();
        let seconds = maildir::leading_seconds(&file);
        Message {
            sub,
            file,
            uid_len,
            seconds,
        }
    }

    /// `W=<n>` from the unique name, if it has one.
    fn size_from_name(&self) -> Option<u64> {
        maildir::wire_size(self.uid())
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
    /// Held only while some snapshot message is in `new/`.
    new: Option<Dir>,
    /// Holds the flock; closing it (drop) releases the mailbox.
    _lock: File,
    messages: Vec<Message>,
    /// The message being read, kept open between `read` calls.
    current: Option<(usize, File)>,
    /// A `read` would have waited for the disk: the part of the current message to bring into
    /// the page cache (offset, length) before it is tried again (`take_warm`).
    warm: Option<(u64, u64)>,
    /// The next `read` may wait for the disk (once a warm-up ended, whatever its outcome).
    may_wait: bool,
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

/// Whether `preadv2(RWF_NOWAIT)` was refused (an old kernel, a file system without it): from
/// then on reads are plain `pread`s.
static NOWAIT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `pread` that never waits for the disk: `WouldBlock` when the bytes at `offset` are not in
/// the page cache (a short count when only some are). A plain `pread` where `RWF_NOWAIT` is
/// refused.
pub(crate) fn read_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::sync::atomic::Ordering;
    if NOWAIT_REFUSED.load(Ordering::Relaxed) {
        return file.read_at(buf, offset);
    }
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, alive and writable for the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => {
            log::info!("pop: reads without waiting are not supported here ({e}); using pread");
            NOWAIT_REFUSED.store(true, Ordering::Relaxed);
            file.read_at(buf, offset)
        }
        _ => Err(e),
    }
}

impl Mailbox {
    /// Locks `<root>/<user>` (creating the Maildir if missing) and holds its `new/` and
    /// `cur/`, with an empty snapshot: a fixed handful of calls, made on the reactor; the
    /// snapshot itself is `job::Job`'s work in the executor.
    fn lock(root: &Path, user: &str) -> Result<Mailbox, MailboxError> {
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
        Ok(Mailbox {
            dir: user_dir.path().to_path_buf(),
            cur,
            new: Some(new),
            _lock: lock,
            messages: Vec::new(),
            current: None,
            warm: None,
            may_wait: false,
        })
    }

    /// Locks and takes the snapshot at once, on an inline executor (for tests; the server
    /// runs `job::Job::open` through its executor).
    #[cfg(test)]
    pub fn open(root: &Path, user: &str) -> Result<(Mailbox, Vec<MessageInfo>), MailboxError> {
        let job = job::Job::open(root, user)?;
        let mut exec = crate::exec::Executor::Inline(crate::exec::Inline::new());
        match job::run_to_end(job, &mut exec) {
            job::JobResult::Opened(r) => r,
            _ => Err(MailboxError::Temporary("not an opening".into())),
        }
    }

    /// Reads bytes of snapshot message `index` from `offset`; 0 at end of file. A message
    /// removed since the snapshot is an error. Bytes not in the page cache are `WouldBlock`:
    /// `take_warm` then says what to read in (`exec::DiskOp::Warm`) before calling again.
    pub fn read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let may_wait = std::mem::take(&mut self.may_wait);
        let file = self.open_current(index)?;
        loop {
            let r = if may_wait {
                file.read_at(buf, offset)
            } else {
                read_nowait(file, buf, offset)
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.warm = Some((offset, crate::limits::POP_WARM_WINDOW));
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// What a `read` that said `WouldBlock` needs read into the page cache: the open file of
    /// the message and the part of it. Taken once.
    pub fn take_warm(&mut self) -> Option<(&File, u64, u64)> {
        let (offset, len) = self.warm.take()?;
        self.current.as_ref().map(|(_, f)| (f, offset, len))
    }

    /// The warm-up `take_warm` asked for ended (`ok`: the bytes are in the page cache): the
    /// next `read` may wait for the disk, so the transfer moves on whatever happened to them.
    pub fn warmed(&mut self) {
        self.may_wait = true;
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

    /// Removes the messages at these snapshot indices at once, on an inline executor (for
    /// tests; the server runs `job::Job::update`); the lock goes with `self`.
    #[cfg(test)]
    pub fn update(self, deleted: &[usize]) -> Result<(), MailboxError> {
        let mut exec = crate::exec::Executor::Inline(crate::exec::Inline::new());
        match job::run_to_end(job::Job::update(self, deleted), &mut exec) {
            job::JobResult::Updated(r) => r,
            _ => Err(MailboxError::Temporary("not an update".into())),
        }
    }

    /// Reads in what the last `read` could not get without waiting, at once, on an inline
    /// executor (for tests; the server runs `job::Job::warm`).
    #[cfg(test)]
    pub fn warm_now(self) -> Option<Mailbox> {
        let mut exec = crate::exec::Executor::Inline(crate::exec::Inline::new());
        match job::run_to_end(job::Job::warm(self), &mut exec) {
            job::JobResult::Warmed(m) => m,
            _ => None,
        }
    }

    /// Counts snapshot message `index` as POP2 sends it, at once, on an inline executor (for
    /// tests; the server runs `job::Job::size`).
    #[cfg(test)]
    pub fn size_now(self, index: usize) -> (Option<Mailbox>, Result<u64, MailboxError>) {
        let mut exec = crate::exec::Executor::Inline(crate::exec::Inline::new());
        match job::run_to_end(job::Job::size(self, index), &mut exec) {
            job::JobResult::Sized(m, r) => (m, r),
            _ => (None, Err(MailboxError::Temporary("not a count".into()))),
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

pub mod job;
mod stepsort;

#[cfg(test)]
mod tests;
