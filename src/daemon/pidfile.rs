//! The pid file (`pid_file`): created (0644) and locked before the privilege drop, holding the
//! daemon's pid while it runs, removed on a clean exit.
//!
//! The lock, not the file's existence, says "running": `flock(LOCK_EX|LOCK_NB)` on the open
//! file description, which the fork shares with the daemon, and which the kernel drops when
//! the daemon dies however it dies. A file nobody holds locked is stale and never blocks a
//! start; a second instance finds the lock taken and names the holder's pid.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StartError;
use crate::limits;

/// A locked pid file. Dropping it closes the file (releasing the lock) but leaves it on disk;
/// `release` removes it.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

/// What `release` managed to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    Removed,
    /// The directory is not writable (after the privilege drop): the file was emptied instead,
    /// which every reader treats as "not running".
    Truncated,
    /// Someone removed or replaced the file meanwhile; the new one is not ours to delete.
    NotOurs,
}

impl PidFile {
    /// Opens (creating it 0644) and locks `path`, and writes this process's pid into it, so
    /// the file names a live process from the first moment; the daemon rewrites it with its
    /// own pid after the fork (`write_pid`).
    pub fn lock(path: &Path) -> Result<PidFile, StartError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // A symlink planted in a shared directory must not make root write elsewhere.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::ELOOP) {
                    "it is a symbolic link; remove it".to_string()
                } else {
                    "check pid_file and that its directory exists and is writable".to_string()
                };
                StartError::os(format!(
                    "cannot open the pid file {}: {e}; {hint}",
                    path.display()
                ))
            })?;
        // SAFETY: flock on a descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder =
                    read_pid(&file).map_or_else(|| "unknown".to_string(), |p| p.to_string());
                return Err(StartError::os(format!(
                    "another postling (pid {holder}) holds {}; not started",
                    path.display()
                )));
            }
            return Err(StartError::os(format!(
                "cannot lock the pid file {}: {e}",
                path.display()
            )));
        }
        // The creation mode passed through the umask; the file must be world-readable so
        // status checks work for anyone.
        let _ = file.set_permissions(Permissions::from_mode(0o644));
        let mut pid_file = PidFile {
            path: path.to_path_buf(),
            file,
        };
        pid_file.write_pid(std::process::id())?;
        Ok(pid_file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the content with `pid` and a newline.
    pub fn write_pid(&mut self, pid: u32) -> Result<(), StartError> {
        let line = format!("{pid}\n");
        self.file
            .set_len(0)
            .and_then(|()| self.file.write_all_at(line.as_bytes(), 0))
            .map_err(|e| {
                StartError::os(format!(
                    "cannot write the pid file {}: {e}",
                    self.path.display()
                ))
            })
    }

    /// Clean exit: removes the file if it is still the one we locked; if the directory does
    /// not let us (we dropped privileges), empties it instead.
    pub fn release(self) -> io::Result<Released> {
        let ours = self.file.metadata()?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {}
            Ok(_) => return Ok(Released::NotOurs),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::NotOurs),
            Err(e) => return Err(e),
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(Released::Removed),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.file.set_len(0)?;
                Ok(Released::Truncated)
            }
            Err(e) => Err(e),
        }
        // The lock goes with `self.file`, after the name is gone: a new instance starting in
        // between creates and locks a new file.
    }
}

/// The pid another instance wrote, if the file holds one.
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; limits::PID_FILE_MAX];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(buf.get(..n)?).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn lock_creates_0644_with_our_pid_and_release_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postling.pid");
        let mut pf = PidFile::lock(&path).unwrap();
        assert_eq!(content(&path), format!("{}\n", std::process::id()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        pf.write_pid(42).unwrap();
        assert_eq!(content(&path), "42\n");
        assert_eq!(pf.release().unwrap(), Released::Removed);
        assert!(!path.exists());
    }

    #[test]
    fn second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        let mut first = PidFile::lock(&path).unwrap();
        first.write_pid(4321).unwrap();
        // flock conflicts between two open file descriptions even within one process.
        let err = PidFile::lock(&path).unwrap_err();
        assert_eq!(err.status, 71);
        assert_eq!(
            err.message,
            format!(
                "another postling (pid 4321) holds {}; not started",
                path.display()
            )
        );
        assert_eq!(
            content(&path),
            "4321\n",
            "the refused start leaves the file alone"
        );
        drop(first);
        // The holder is gone (lock released): the file is stale and does not block.
        let again = PidFile::lock(&path).unwrap();
        assert_eq!(content(&path), format!("{}\n", std::process::id()));
        drop(again);
    }

    #[test]
    fn holder_with_unreadable_pid_is_named_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        let first = PidFile::lock(&path).unwrap();
        first.file.set_len(0).unwrap();
        let err = PidFile::lock(&path).unwrap_err();
        assert!(err.message.contains("(pid unknown)"), "{}", err.message);
    }

    #[test]
    fn stale_file_with_garbage_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        std::fs::write(&path, "99999999999999999999 and more text than a pid\n").unwrap();
        let _pf = PidFile::lock(&path).unwrap();
        assert_eq!(content(&path), format!("{}\n", std::process::id()));
    }

    #[test]
    fn symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let path = dir.path().join("p.pid");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = PidFile::lock(&path).unwrap_err();
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        assert!(!target.exists(), "nothing written through the link");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/p.pid");
        let err = PidFile::lock(&path).unwrap_err();
        assert_eq!(err.status, 71);
        assert!(
            err.message
                .starts_with(&format!("cannot open the pid file {}", path.display())),
            "{}",
            err.message
        );
        assert!(err.message.contains("check pid_file"), "{}", err.message);
    }

    #[test]
    fn release_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pid");
        let pf = PidFile::lock(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "777\n").unwrap();
        assert_eq!(pf.release().unwrap(), Released::NotOurs);
        assert_eq!(content(&path), "777\n");

        let pf = PidFile::lock(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(pf.release().unwrap(), Released::NotOurs);
    }
}
