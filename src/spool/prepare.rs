//! Spool files made ahead, in the disk executor, while mail is arriving.
//!
//! Creating a file allocates an inode: on a busy ext4 that waits for the journal, measured at
//! 0.3-0.4 ms a file on average and several ms at worst under the 20-session load, and it was
//! done on the reactor when a message began (`Spool::begin`) with no emptied file in `free/`
//! to reuse. So while messages begin (`Spool::begin` notes the demand), the spool keeps up to
//! `limits::SPOOL_READY_FILES` empty files in `free/`, creating the missing ones in the
//! executor (`openat(O_CREAT | O_EXCL)`, then `close`); `begin` then only opens one that
//! exists. A file made ahead is an empty file in `free/`, which is free space by definition
//! (see `Spool::recycle`), so a crash at any point leaves nothing to repair. Without an
//! executor that runs file operations (the helper process gone) nothing is made ahead and
//! `begin` creates its file itself, as before.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use super::Spool;
use crate::exec::{Completion, DiskOp, Executor, Outcome};
use crate::limits;

/// Set in the tag of every operation that makes a file ahead; bits 61-63 (the Maildir
/// commit, the group commit, the mailbox jobs) are clear.
pub const TAG_BIT: u64 = 1 << 60;
/// The operation, in the tag above the file number.
const OPEN: u64 = 0;
const CLOSE: u64 = 1 << 40;
/// A removed entry's rename into `free/` (see `Spool::recycle`), then its truncation.
const RENAME: u64 = 2 << 40;
const TRUNCATE: u64 = 3 << 40;
/// A removed entry whose file delivery linked into a Maildir: only its name goes (the number
/// is the unlink's own, not a free file's).
const UNLINK: u64 = 4 << 40;
/// A step of a state file's write (`spool::state`); the number is the write's.
pub(super) const STATE: u64 = 5 << 40;
/// An operation of a state write that nobody waits for (a close after a failure, an unlink).
pub(super) const STATE_CLEANUP: u64 = 6 << 40;
/// A step of the removal of an entry with a state file or hold marker (`spool::state`).
pub(super) const REMOVAL: u64 = 7 << 40;
const KIND_MASK: u64 = 7 << 40;
pub(super) const FILE_MASK: u64 = (1 << 40) - 1;

/// Is this completion one of a file made ahead?
pub fn owns(tag: u64) -> bool {
    tag & (0b1111 << 60) == TAG_BIT
}

/// How many files to start making now: enough that those ready and those on their way
/// reach `target`, and no more than `room` (what may still go in flight this turn).
pub fn to_make(ready: usize, in_flight: usize, target: usize, room: usize) -> usize {
    target.saturating_sub(ready + in_flight).min(room)
}

/// The files on their way (see the module docs).
#[derive(Default)]
pub(super) struct Ahead {
    /// A message began since the last turn: files are wanted.
    pub(super) wanted: bool,
    /// Operations in flight (opens and closes).
    pub(super) in_flight: usize,
    /// Closes the executor refused for now (full): retried next turn.
    unsent: Vec<(u64, DiskOp)>,
    /// The executor ran file operations at the last turn: removals go there.
    pub(super) offload: bool,
    /// Removed entries' files to move into `free/` (path in `queue/`, free file number),
    /// not yet submitted.
    retire: Vec<(std::path::PathBuf, u64)>,
    /// Renames in flight, by free file number: a failed one (the helper process died) is
    /// done again with a blocking call, so no delivered entry stays in `queue/`.
    renaming: std::collections::HashMap<u64, std::path::PathBuf>,
    /// Removed entries linked into a Maildir (see `Spool::remove`), whose names in `queue/`
    /// are to be unlinked, not yet submitted.
    unlink: Vec<std::path::PathBuf>,
    /// Unlinks in flight, by their number (as `renaming`).
    unlinking: std::collections::HashMap<u64, std::path::PathBuf>,
    /// Numbers the unlinks.
    unlink_seq: u64,
}

impl Spool {
    /// Once a turn: submits the files to make ahead (only after a message began since the
    /// last turn, and only where `exec` runs file operations).
    pub fn prepare_files(&mut self, exec: Option<&mut Executor>) {
        let Some(exec) = exec else {
            self.ahead.offload = false;
            self.retire_inline();
            self.states_inline();
            return;
        };
        self.ahead.offload = exec.runs_file_ops();
        if !self.ahead.offload {
            self.retire_inline();
            self.states_inline();
        } else {
            self.submit_states(exec);
        }
        while let Some(path) = self.ahead.unlink.pop() {
            let Some(c) = cpath(&path) else {
                continue;
            };
            self.ahead.unlink_seq = (self.ahead.unlink_seq + 1) & FILE_MASK;
            let number = self.ahead.unlink_seq;
            match exec.submit(
                TAG_BIT | UNLINK | number,
                DiskOp::Unlink { dir: None, path: c },
            ) {
                Ok(()) => {
                    self.ahead.in_flight += 1;
                    self.ahead.unlinking.insert(number, path);
                }
                Err(r) if r.reason == crate::exec::Reject::Full => {
                    self.ahead.unlink.push(path);
                    return;
                }
                Err(_) => {
                    self.ahead.unlink.push(path);
                    self.retire_inline();
                }
            }
        }
        while let Some((path, number)) = self.ahead.retire.pop() {
            let (Some(from), Some(to)) = (cpath(&path), cpath(&self.free_path(number))) else {
                continue;
            };
            let op = DiskOp::Rename {
                from_dir: None,
                from,
                to_dir: None,
                to,
            };
            match exec.submit(TAG_BIT | RENAME | number, op) {
                Ok(()) => {
                    self.ahead.in_flight += 1;
                    self.ahead.renaming.insert(number, path);
                }
                Err(r) if r.reason == crate::exec::Reject::Full => {
                    self.ahead.retire.push((path, number));
                    return;
                }
                Err(_) => {
                    self.ahead.retire.push((path, number));
                    self.retire_inline();
                }
            }
        }
        while let Some((tag, op)) = self.ahead.unsent.pop() {
            match exec.submit(tag, op) {
                Ok(()) => self.ahead.in_flight += 1,
                Err(r) if r.reason == crate::exec::Reject::Full => {
                    self.ahead.unsent.push((tag, r.op));
                    return;
                }
                Err(_) => {}
            }
        }
        if !std::mem::take(&mut self.ahead.wanted) || !exec.runs_file_ops() {
            return;
        }
        let n = to_make(
            self.free.len(),
            self.ahead.in_flight,
            limits::SPOOL_READY_FILES,
            limits::SPOOL_READY_FILES,
        );
        for _ in 0..n {
            let number = self.free_seq + 1;
            let Ok(path) = CString::new(self.free_path(number).as_os_str().as_bytes()) else {
                return;
            };
            let op = DiskOp::Open {
                dir: None,
                path,
                flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                mode: 0o600,
            };
            if exec.submit(TAG_BIT | OPEN | number, op).is_err() {
                // Full, or the helper gone: `begin` creates its own file meanwhile.
                return;
            }
            self.free_seq = number;
            self.ahead.in_flight += 1;
        }
    }

    /// A completion whose tag `owns` says is a file made ahead's: an open is followed by
    /// its close; once closed, the file joins the free list.
    pub fn prepared(&mut self, c: Completion, exec: Option<&mut Executor>) {
        let number = c.tag & FILE_MASK;
        match c.tag & KIND_MASK {
            STATE => return self.state_completion(number, c.result, exec),
            REMOVAL => return self.removal_completion(number, c.result, exec),
            STATE_CLEANUP => return,
            _ => {}
        }
        self.ahead.in_flight = self.ahead.in_flight.saturating_sub(1);
        match c.tag & KIND_MASK {
            CLOSE => {
                self.free.push(number);
                return;
            }
            UNLINK => {
                let path = self.ahead.unlinking.remove(&number);
                match c.result {
                    Ok(_) => {}
                    Err(e) if e.0 == libc::ENOENT => {}
                    Err(e) if e.0 == libc::EPIPE => {
                        if let Some(path) = path {
                            self.ahead.unlink.push(path);
                            self.retire_inline();
                        }
                    }
                    Err(e) => removal_failed(path.as_deref(), &std::io::Error::from(e)),
                }
                return;
            }
            RENAME => {
                let path = self.ahead.renaming.remove(&number);
                match c.result {
                    Ok(_) => self.truncate_later(number, exec),
                    Err(e) if e.0 == libc::ENOENT => {}
                    Err(e) if e.0 == libc::EPIPE => {
                        if let Some(path) = path {
                            self.ahead.retire.push((path, number));
                            self.retire_inline();
                        }
                    }
                    Err(e) => removal_failed(path.as_deref(), &std::io::Error::from(e)),
                }
                return;
            }
            _ => {}
        }
        match c.result {
            Ok(Outcome::Opened(file)) => {
                let op = DiskOp::Close { file };
                let tag = TAG_BIT | CLOSE | number;
                match exec.map(|e| e.submit(tag, op)) {
                    Some(Ok(())) => self.ahead.in_flight += 1,
                    Some(Err(r)) if r.reason == crate::exec::Reject::Full => {
                        self.ahead.unsent.push((tag, r.op))
                    }
                    // The helper is gone (its descriptors with it): the file exists all the
                    // same.
                    _ => self.free.push(number),
                }
            }
            Ok(_) => {}
            Err(e) if c.tag & KIND_MASK == TRUNCATE && e.0 == libc::EPIPE => {
                self.truncate_inline(number)
            }
            // A file that cannot be emptied stays in `free/` unused: `open` empties it.
            Err(e) if c.tag & KIND_MASK == TRUNCATE => log::warn!(
                "spool: cannot empty {}: {e:?}",
                self.free_path(number).display()
            ),
            Err(e) => log::debug!(
                "spool: cannot make {} ahead: {e:?}",
                self.free_path(number).display()
            ),
        }
    }

    /// A removed entry's file is in `free/`: empties it (an open with `O_TRUNC`, then the
    /// close that puts it on the free list).
    pub(super) fn truncate_later(&mut self, number: u64, exec: Option<&mut Executor>) {
        let Some(path) = cpath(&self.free_path(number)) else {
            return;
        };
        let op = DiskOp::Open {
            dir: None,
            path,
            flags: libc::O_WRONLY | libc::O_TRUNC,
            mode: 0,
        };
        match exec.map(|e| e.submit(TAG_BIT | TRUNCATE | number, op)) {
            Some(Ok(())) => self.ahead.in_flight += 1,
            Some(Err(r)) if r.reason == crate::exec::Reject::Full => {
                self.ahead.unsent.push((TAG_BIT | TRUNCATE | number, r.op))
            }
            _ => self.truncate_inline(number),
        }
    }

    fn truncate_inline(&mut self, number: u64) {
        let path = self.free_path(number);
        match std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
        {
            Ok(_) => self.free.push(number),
            Err(e) => log::warn!("spool: cannot empty {}: {e}", path.display()),
        }
    }

    /// The removals not yet submitted, done here with blocking calls (no executor for file
    /// operations: the helper process is gone).
    fn retire_inline(&mut self) {
        while let Some((path, number)) = self.ahead.retire.pop() {
            match std::fs::rename(&path, self.free_path(number)) {
                Ok(()) => self.truncate_inline(number),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => removal_failed(Some(&path), &e),
            }
        }
        while let Some(path) = self.ahead.unlink.pop() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => removal_failed(Some(&path), &e),
            }
        }
    }

    /// `remove` of an entry without state file or hold marker while the executor runs file
    /// operations: its file goes to `free/` at the next turn, in the executor (a rename, the
    /// removal point, then the truncation). Until then the entry is still in `queue/`; a
    /// crash meanwhile delivers it again, as an unsynced unlink would (see `remove`).
    pub(super) fn retire_later(&mut self, path: std::path::PathBuf) {
        self.free_seq += 1;
        self.ahead.retire.push((path, self.free_seq));
    }

    /// `remove` of an entry linked into a Maildir, without state file or hold marker, while
    /// the executor runs file operations: its name in `queue/` is unlinked at the next turn,
    /// in the executor. A crash meanwhile leaves the entry, which start-up finds delivered
    /// (its copy is in the Maildir under the name delivery gives it) and removes.
    pub(super) fn unlink_later(&mut self, path: std::path::PathBuf) {
        self.ahead.unlink.push(path);
    }

    /// Shutdown: every removal handed over is carried out, and every operation in flight
    /// waited for (spinning on `drain`, as `commit_flush_with`; at most
    /// `limits::SPOOL_REMOVALS_WAIT`), so a clean stop leaves no delivered entry in `queue/`.
    /// Other completions that arrive meanwhile are dropped.
    pub fn finish_removals(&mut self, mut exec: Option<&mut Executor>) {
        self.ahead.wanted = false;
        self.prepare_files(exec.as_deref_mut());
        let mut got = Vec::new();
        let give_up = std::time::Instant::now() + limits::SPOOL_REMOVALS_WAIT;
        while self.preparing() && std::time::Instant::now() < give_up {
            let Some(e) = exec.as_deref_mut() else {
                break;
            };
            e.drain(&mut got);
            for c in got.drain(..) {
                if owns(c.tag) {
                    self.prepared(c, Some(&mut *e));
                }
            }
            self.prepare_files(Some(&mut *e));
        }
        self.retire_inline();
        self.states_inline();
    }

    /// State writes waiting for a submission that can go ahead now: the reactor comes back
    /// at once for them (a record made after this turn's submission, in remote delivery).
    pub fn states_submittable(&self) -> bool {
        self.ahead.offload && self.states.submittable()
    }

    /// Are files on their way, state writes or removals not yet done (their completions will
    /// wake the reactor, or the next turn submits them)?
    pub fn preparing(&self) -> bool {
        self.states.busy()
            || self.ahead.in_flight > 0
            || !self.ahead.unsent.is_empty()
            || !self.ahead.retire.is_empty()
            || !self.ahead.unlink.is_empty()
    }
}

/// The entry stays in `queue/` (as when `remove` failed on the reactor): it is delivered
/// again after a restart.
pub(super) fn removal_failed(path: Option<&std::path::Path>, e: &std::io::Error) {
    let id = path
        .and_then(|p| p.file_name())
        .map_or_else(|| "?".into(), |n| n.to_string_lossy());
    log::warn!("{id}: delivered but cannot remove the queue entry: {e}");
}

pub(super) fn cpath(p: &std::path::Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_up_to_the_target_counting_those_on_their_way() {
        assert_eq!(to_make(0, 0, 32, 32), 32);
        assert_eq!(to_make(10, 5, 32, 32), 17);
        assert_eq!(to_make(40, 0, 32, 32), 0);
        assert_eq!(to_make(0, 32, 32, 32), 0);
        assert_eq!(to_make(0, 0, 32, 8), 8);
    }

    #[test]
    fn its_tags_are_its_own() {
        assert!(owns(TAG_BIT | CLOSE | 7));
        assert!(!owns(crate::spool::commit::TAG_BIT | 7));
        assert!(!owns(crate::mailbox::job::TAG_BIT | TAG_BIT));
        assert!(!owns(crate::deliver::local::COMMIT_TAG_BIT | TAG_BIT));
        assert!(!owns(12345));
    }
}
