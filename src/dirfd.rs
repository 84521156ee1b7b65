//! Directories opened without following symbolic links, and the file operations made relative
//! to them. This module owns the `unsafe` calls (`openat`, `mkdirat`, `renameat`, `unlinkat`,
//! `fstatat`, `fdopendir`/`readdir`) behind safe functions.
//!
//! Why: a Maildir under `mailbox_dir` can be changed by its user (or whoever can write there).
//! Path-based calls follow a symbolic link put in place of the Maildir or of its `tmp/ new/
//! cur/`, so postling would read, write and delete through it, as root when no `user` is set.
//! Here each call names one component relative to a directory descriptor that was itself
//! opened with `O_NOFOLLOW`, and never follows a final symlink either: opens carry
//! `O_NOFOLLOW`, stats `AT_SYMLINK_NOFOLLOW`; `mkdirat`, `renameat` and `unlinkat` never follow
//! the last component (unlinking a symlink removes only the link). Holding the descriptors also
//! means a swap of the directory after it was opened does not redirect later calls.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The error of opening a symbolic link where a directory or file was expected.
#[derive(Debug)]
pub struct IsSymlink;

impl fmt::Display for IsSymlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("is a symbolic link")
    }
}

impl std::error::Error for IsSymlink {}

/// Whether `e` is a refusal to follow a symbolic link (from this module).
pub fn is_symlink(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<IsSymlink>())
}

/// What a directory entry is, as seen without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// `fstatat` without following: the kind and the modification time.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub kind: Kind,
    pub modified: SystemTime,
}

/// An open directory (`O_DIRECTORY`), with the path it was opened as (for messages only: no
/// call goes through the path again).
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name contains NUL"))
}

/// A name must be one component: these calls exist so that nothing walks a path.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        ));
    }
    cstr(OsStr::new(name))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

impl Dir {
    /// Opens the directory at `path`, refusing a symbolic link as its last component (the
    /// components before it are the administrator's, e.g. `mailbox_dir`, and are followed).
    pub fn open(path: &Path) -> io::Result<Dir> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) => Ok(Dir {
                file,
                path: path.to_path_buf(),
            }),
            Err(e) => Err(explain_link(e, || {
                std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            })),
        }
    }

    /// The path this directory was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor as a `File` (for `fsync`, `syncfs`).
    pub fn as_file(&self) -> &File {
        &self.file
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
        let c = component(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        loop {
            // SAFETY: a valid directory descriptor and a NUL-terminated name; the returned
            // descriptor is new and owned by the File alone.
            let rc = unsafe { libc::openat(self.fd(), c.as_ptr(), flags, mode as libc::c_uint) };
            match cvt(rc) {
                Ok(fd) => return Ok(unsafe { File::from_raw_fd(fd) }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(explain_link(e, || {
                        self.stat(name).is_ok_and(|s| s.kind == Kind::Symlink)
                    }));
                }
            }
        }
    }

    /// Opens the subdirectory `name`, refusing a symbolic link.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let file = self.openat(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            file,
            path: self.path.join(name),
        })
    }

    /// Makes the subdirectory `name` (an existing entry of any kind is `AlreadyExists`).
    pub fn make_dir(&self, name: &str, mode: libc::mode_t) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        cvt(unsafe { libc::mkdirat(self.fd(), c.as_ptr(), mode) }).map(|_| ())
    }

    /// Creates the new file `name` for writing; fails if anything of that name exists.
    pub fn create_file(&self, name: &str, mode: libc::mode_t) -> io::Result<File> {
        self.openat(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Opens (creating if missing) the regular file `name` for reading and writing.
    pub fn open_or_create(&self, name: &str, mode: libc::mode_t) -> io::Result<File> {
        self.openat(name, libc::O_RDWR | libc::O_CREAT, mode)
    }

    /// Opens the file `name` for reading, never through a symlink. `O_NONBLOCK` so that a
    /// FIFO put in its place cannot block the process.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        self.openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
    }

    /// Renames `name` here to `to_name` in `to` (replacing an existing `to_name`, as rename(2)).
    pub fn rename_to(&self, name: &str, to: &Dir, to_name: &str) -> io::Result<()> {
        let from = component(name)?;
        let dest = component(to_name)?;
        // SAFETY: valid directory descriptors and NUL-terminated names.
        cvt(unsafe { libc::renameat(self.fd(), from.as_ptr(), to.fd(), dest.as_ptr()) }).map(|_| ())
    }

    /// Makes `name` here a hard link to the file at `from` (a path, resolved from the working
    /// directory; a symlink there is not followed). Fails if `name` exists.
    pub fn link_from(&self, from: &Path, name: &str) -> io::Result<()> {
        let src = CString::new(from.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dest = component(name)?;
        // SAFETY: a valid directory descriptor and NUL-terminated names.
        cvt(unsafe { libc::linkat(libc::AT_FDCWD, src.as_ptr(), self.fd(), dest.as_ptr(), 0) })
            .map(|_| ())
    }

    /// Removes the entry `name` (not a directory); a symlink loses only the link.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        cvt(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// What `name` is, without following it.
    pub fn stat(&self, name: &str) -> io::Result<Stat> {
        let c = component(name)?;
        // SAFETY: zeroed is a valid `stat` (plain integers); fstatat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a pointer to a local.
        cvt(unsafe { libc::fstatat(self.fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        let modified = if st.st_mtime >= 0 {
            UNIX_EPOCH
                + Duration::new(
                    st.st_mtime as u64,
                    st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
                )
        } else {
            UNIX_EPOCH
        };
        Ok(Stat {
            kind: kind_of(st.st_mode),
            modified,
        })
    }

    /// The entries (without `.` and `..`) with their kind, as seen without following them.
    pub fn entries(&self) -> io::Result<Vec<(OsString, Kind)>> {
        // readdir needs a DIR stream of its own; it takes over a duplicate of the descriptor.
        // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one we own.
        let dup = cvt(unsafe { libc::fcntl(self.fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `dup` is ours; on success the stream owns it (closedir closes it).
        let stream = unsafe { libc::fdopendir(dup) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `dup` is still ours to close.
            unsafe { libc::close(dup) };
            return Err(e);
        }
        // The duplicate shares the file offset with `self`: start from the beginning.
        // SAFETY: a valid stream.
        unsafe { libc::rewinddir(stream) };
        let mut out = Vec::new();
        let result = loop {
            // readdir reports errors only through errno, so clear it first.
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a valid stream; the entry stays valid until the next readdir/closedir,
            // and is copied out before either.
            let ent = unsafe { libc::readdir(stream) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    Some(_) => Err(e),
                };
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let (name, d_type) = unsafe {
                (
                    CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes().to_vec(),
                    (*ent).d_type,
                )
            };
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name);
            let kind = match d_type {
                libc::DT_REG => Kind::File,
                libc::DT_DIR => Kind::Dir,
                libc::DT_LNK => Kind::Symlink,
                // Filesystems that do not fill d_type: ask (without following).
                libc::DT_UNKNOWN => name
                    .to_str()
                    .and_then(|n| self.stat(n).ok())
                    .map_or(Kind::Other, |s| s.kind),
                _ => Kind::Other,
            };
            out.push((name, kind));
        };
        // SAFETY: a valid stream, closed once.
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }
}

/// Turns the error of an `O_NOFOLLOW` open into `IsSymlink` when the entry is a symlink
/// (Linux says ELOOP, or ENOTDIR together with `O_DIRECTORY`).
fn explain_link(e: io::Error, is_link: impl FnOnce() -> bool) -> io::Error {
    let maybe = matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR));
    if maybe && is_link() {
        io::Error::other(IsSymlink)
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinked_directories_and_files_are_refused_and_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::write(real.join("f"), b"secret").unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        let e = Dir::open(&t.path().join("link")).unwrap_err();
        assert!(is_symlink(&e), "{e}");
        assert_eq!(e.to_string(), "is a symbolic link");
        let top = Dir::open(t.path()).unwrap();
        assert!(is_symlink(&top.open_dir("link").unwrap_err()));
        symlink(real.join("f"), t.path().join("flink")).unwrap();
        assert!(is_symlink(&top.open_read("flink").unwrap_err()));
        assert!(top.create_file("flink", 0o600).is_err());
        assert!(is_symlink(&top.open_or_create("flink", 0o600).unwrap_err()));
        assert_eq!(top.stat("flink").unwrap().kind, Kind::Symlink);
        // Unlinking a symlink removes the link only.
        top.remove_file("flink").unwrap();
        assert_eq!(fs::read(real.join("f")).unwrap(), b"secret");
        assert!(top.open_dir("../real").is_err());
        assert!(top.open_read("real/f").is_err());
    }

    #[test]
    fn files_are_made_renamed_listed_and_removed_relative_to_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let top = Dir::open(t.path()).unwrap();
        top.make_dir("a", 0o700).unwrap();
        assert_eq!(
            top.make_dir("a", 0o700).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let a = top.open_dir("a").unwrap();
        assert_eq!(a.path(), t.path().join("a"));
        a.create_file("x", 0o600).unwrap().write_all(b"hi").unwrap();
        assert_eq!(
            a.create_file("x", 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        a.rename_to("x", &top, "y").unwrap();
        let mut s = String::new();
        top.open_read("y").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
        symlink("/nonexistent", t.path().join("l")).unwrap();
        let mut e = top.entries().unwrap();
        e.sort_by(|x, y| x.0.cmp(&y.0));
        let want: Vec<(OsString, Kind)> = vec![
            ("a".into(), Kind::Dir),
            ("l".into(), Kind::Symlink),
            ("y".into(), Kind::File),
        ];
        assert_eq!(e, want);
        // A second listing starts from the beginning again.
        assert_eq!(top.entries().unwrap().len(), 3);
        top.remove_file("y").unwrap();
        assert_eq!(top.entries().unwrap().len(), 2);
    }
}
