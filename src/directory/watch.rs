//! When the users or aliases file may have changed: one inotify descriptor in the reactor's
//! poll, so `Directory::refresh` (a `stat` of each file) runs only after the kernel saw
//! something happen to them, not in every reactor turn that needs the tables.
//!
//! Each file is watched twice: its inode (an edit in place, a `touch`; through a symbolic
//! link, the file it points to) and the directory holding its name, for name events only (a
//! new file moved over it, a delete, an editor's rename dance): `IN_MODIFY` on the directory
//! would report every write to any file in it, a log file next to `users` included. Any event
//! counts, even one for another name in the directory: the cost is one needless `stat`. After
//! each event the watches are set again, since a file replaced by `mv` is a new inode.
//!
//! Where inotify cannot be had (no instances left, `fs.inotify.max_user_watches` reached, a
//! filesystem without it) or a directory cannot be watched, the caller checks the files in
//! every turn that needs them, as before: `stale` then always says yes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::limits;

/// What happens to a file's inode that may change its content or stamp.
const FILE_EVENTS: u32 = libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// What happens to names in a directory (and to the directory itself).
const DIR_EVENTS: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct DirWatch {
    fd: OwnedFd,
    files: Vec<PathBuf>,
    /// An event came (or the watches were just set): the files need a check.
    stale: bool,
    /// A directory could not be watched: every check is due.
    blind: bool,
}

impl DirWatch {
    /// Watches `files` (and their directories). Err where inotify is not available.
    pub fn new(files: &[&Path]) -> io::Result<DirWatch> {
        // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, ours from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut w = DirWatch {
            fd,
            files: Vec::new(),
            stale: true,
            blind: false,
        };
        w.set_files(files);
        Ok(w)
    }

    /// The descriptor to register (edge-triggered, readable): on an event, call `readable`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches these files from now on (a reload may name others; the old watches stay,
    /// which costs at most a needless check).
    pub fn set_files(&mut self, files: &[&Path]) {
        self.files = files.iter().map(|f| f.to_path_buf()).collect();
        self.stale = true;
        self.arm();
    }

    /// Reads every pending event; any marks the files for a check.
    pub fn readable(&mut self) {
        let mut buf = [0u8; limits::INOTIFY_BUF];
        loop {
            // SAFETY: read into a buffer we own, at most its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.stale = true;
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
    }

    /// Is a check of the files due? True once after each event (then the watches are set
    /// again for the files as they are now), always when blind.
    pub fn stale(&mut self) -> bool {
        if self.blind {
            self.arm();
            return true;
        }
        if !std::mem::take(&mut self.stale) {
            return false;
        }
        self.arm();
        true
    }

    /// Sets the watches on each file and its directory. A file that does not exist is not
    /// watched (its directory's watch sees it appear); a directory that cannot be watched
    /// makes the watch blind until it can.
    fn arm(&mut self) {
        let mut blind = false;
        for file in &self.files {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if add_watch(self.fd.as_raw_fd(), dir, DIR_EVENTS | libc::IN_ONLYDIR).is_err() {
                blind = true;
            }
            let _ = add_watch(self.fd.as_raw_fd(), file, FILE_EVENTS);
        }
        if blind && !self.blind {
            log::info!(
                "cannot watch the directories of the users and aliases files with inotify; \
                 they are checked with a stat in each busy reactor turn instead"
            );
        }
        self.blind = blind;
    }
}

fn add_watch(fd: RawFd, path: &Path, mask: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid inotify descriptor and a NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the events: the kernel queues them as the change is made, so what a change
    /// caused is there when the call that made it returns.
    fn settle(w: &mut DirWatch) {
        w.readable();
    }

    #[test]
    fn every_kind_of_edit_makes_a_check_due_and_nothing_else_does() {
        let d = tempfile::tempdir().unwrap();
        let users = d.path().join("users");
        let aliases = d.path().join("aliases");
        std::fs::write(&users, "alice:x\n").unwrap();
        let mut w = DirWatch::new(&[&users, &aliases]).unwrap();
        assert!(w.stale(), "due at first");
        settle(&mut w);
        assert!(!w.stale(), "nothing happened");

        // In place.
        std::fs::write(&users, "alice:y\n").unwrap();
        settle(&mut w);
        assert!(w.stale());
        settle(&mut w);
        assert!(!w.stale());

        // Replaced by mv (a new inode), twice: the second needs the watch set again.
        for round in 0..2 {
            let new = d.path().join(format!("users.new{round}"));
            std::fs::write(&new, "bob:x\n").unwrap();
            settle(&mut w);
            let _ = w.stale(); // (its creation, in the same directory)
            std::fs::rename(&new, &users).unwrap();
            settle(&mut w);
            assert!(w.stale(), "round {round}");
            std::fs::write(&users, "carol:x\n").unwrap();
            settle(&mut w);
            assert!(w.stale(), "the new inode is watched (round {round})");
        }

        // A file that did not exist appears; then is removed.
        std::fs::write(&aliases, "a: alice\n").unwrap();
        settle(&mut w);
        assert!(w.stale());
        std::fs::remove_file(&aliases).unwrap();
        settle(&mut w);
        assert!(w.stale());

        // Writes to another file in the directory (a log file) are not events here.
        let log = d.path().join("postling.log");
        std::fs::write(&log, "x").unwrap();
        settle(&mut w);
        let _ = w.stale();
        for _ in 0..3 {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"line\n").unwrap();
        }
        settle(&mut w);
        assert!(!w.stale(), "appends to a neighbour are not a change");
    }

    #[test]
    fn a_file_behind_a_symlink_is_watched_where_it_lives() {
        let etc = tempfile::tempdir().unwrap();
        let srv = tempfile::tempdir().unwrap();
        let real = srv.path().join("users");
        std::fs::write(&real, "alice:x\n").unwrap();
        let link = etc.path().join("users");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut w = DirWatch::new(&[&link]).unwrap();
        assert!(w.stale());
        settle(&mut w);
        assert!(!w.stale());
        std::fs::write(&real, "bob:x\n").unwrap();
        settle(&mut w);
        assert!(w.stale());
    }

    #[test]
    fn an_unwatchable_directory_makes_every_check_due() {
        let mut w = DirWatch::new(&[Path::new("/nonexistent-postling-dir/users")]).unwrap();
        for _ in 0..3 {
            assert!(w.stale());
        }
    }
}
