//! The blocking system calls behind each `DiskOp`: what the helper process runs for every
//! request and the inline backend runs at submit. Errors are the call's errno.

use std::ffi::CStr;

use super::{DiskOp, Errno, Handle, Outcome, dir_fd, readdir_max};
use crate::auth;
use crate::limits;

fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// Runs one operation to its end with blocking calls.
pub(super) fn run(op: DiskOp) -> Result<Outcome, Errno> {
    match op {
        DiskOp::Open {
            dir,
            path,
            flags,
            mode,
        } => {
            // SAFETY: `path` is a NUL-terminated string alive for the call.
            let fd = check(unsafe {
                libc::openat(dir_fd(dir), path.as_ptr(), flags | libc::O_CLOEXEC, mode)
            })?;
            Ok(Outcome::Opened(Handle(fd)))
        }
        DiskOp::Write { file, offset, data } => {
            write_all_at(file.0, &data, offset)?;
            Ok(Outcome::Written(data))
        }
        // SAFETY (these three): plain descriptor calls; a bad descriptor is EBADF.
        DiskOp::Fdatasync { file } => check(unsafe { libc::fdatasync(file.0) }).map(done),
        // SAFETY: syncfs reads nothing but the descriptor.
        DiskOp::Syncfs { file } => check(unsafe { libc::syncfs(file.0) }).map(done),
        DiskOp::Fsync { file } => check(unsafe { libc::fsync(file.0) }).map(done),
        DiskOp::Close { file } => check(unsafe { libc::close(file.0) }).map(done),
        DiskOp::Rename {
            from_dir,
            from,
            to_dir,
            to,
        } => check(unsafe {
            // SAFETY: both paths are NUL-terminated strings alive for the call.
            libc::renameat(dir_fd(from_dir), from.as_ptr(), dir_fd(to_dir), to.as_ptr())
        })
        .map(done),
        DiskOp::RenameNoReplace {
            from_dir,
            from,
            to_dir,
            to,
        } => check(unsafe {
            // SAFETY: both paths are NUL-terminated strings alive for the call.
            libc::renameat2(
                dir_fd(from_dir),
                from.as_ptr(),
                dir_fd(to_dir),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        })
        .map(done),
        DiskOp::Link {
            from_dir,
            from,
            to_dir,
            to,
        } => check(unsafe {
            // SAFETY: as above.
            libc::linkat(
                dir_fd(from_dir),
                from.as_ptr(),
                dir_fd(to_dir),
                to.as_ptr(),
                0,
            )
        })
        .map(done),
        // SAFETY (these two): as above.
        DiskOp::Unlink { dir, path } => {
            check(unsafe { libc::unlinkat(dir_fd(dir), path.as_ptr(), 0) }).map(done)
        }
        DiskOp::Mkdir { dir, path, mode } => {
            check(unsafe { libc::mkdirat(dir_fd(dir), path.as_ptr(), mode) }).map(done)
        }
        DiskOp::ReadDir { dir, cursor, max } => read_dir(dir.0, cursor, readdir_max(max)),
        DiskOp::WireSize { dir, paths } => {
            // One read buffer for the whole batch.
            let mut buf = vec![0u8; 16 * 1024];
            Ok(Outcome::Sizes(
                paths
                    .iter()
                    .map(|p| wire_size(dir.0, p, &mut buf))
                    .collect(),
            ))
        }
        DiskOp::MaildirCopy {
            dir,
            name,
            head,
            source,
            sync,
        } => {
            let to_errno = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EIO));
            let (file, size, wire) =
                crate::maildir::write_copy(dir.0, &name, &head, &source).map_err(to_errno)?;
            if !sync {
                // (Synced by the caller, soon: its data is on the way meanwhile.)
                crate::durable::start_writeback(&file);
            } else if let Err(e) = file.sync_data() {
                drop(file);
                // SAFETY: a NUL-terminated name alive for the call; the file just made.
                unsafe { libc::unlinkat(dir.0, name.as_ptr(), 0) };
                return Err(to_errno(e));
            }
            Ok(Outcome::Copied { size, wire })
        }
        DiskOp::Warm { file, offset, len } => warm(file.0, offset, len),
        DiskOp::VerifyPassword { hash, password } => {
            Ok(Outcome::Verified(auth::verify(hash.as_ref(), &password)))
        }
        // The code mappings go later, in the helper's loop right before it waits.
        DiskOp::Rest => {
            crate::buf::return_free_memory_to_os();
            Ok(Outcome::Done)
        }
    }
}

fn done(_: libc::c_int) -> Outcome {
    Outcome::Done
}

/// Reads `len` bytes of `fd` from `offset` (to its end if shorter) into a scratch buffer:
/// `DiskOp::Warm`.
fn warm(fd: i32, mut offset: u64, len: u64) -> Result<Outcome, Errno> {
    let mut buf = vec![0u8; 64 * 1024];
    let end = offset.saturating_add(len);
    while offset < end {
        let want = buf
            .len()
            .min(usize::try_from(end - offset).unwrap_or(usize::MAX));
        let off = libc::off_t::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
        // SAFETY: the pointer and length describe `buf`, alive for the call.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), want, off) };
        if n < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    Ok(Outcome::Done)
}

/// pwrite until every byte is written (a short write is continued, EINTR retried).
fn write_all_at(fd: i32, mut data: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        let off = libc::off_t::try_from(offset).map_err(|_| Errno(libc::EFBIG))?;
        // SAFETY: the pointer and length describe `data`, alive for the call.
        let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
        if n < 0 {
            let e = Errno::last();
            if e.0 == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(Errno(libc::EIO));
        }
        let n = n as usize;
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Up to `max` names of the directory open as `fd`, from the getdents cookie `cursor`.
///
/// The cursor is the `d_off` of the last name returned, which is what `seekdir` uses: lseek to
/// it and the next getdents64 continues after that entry, even on ext4's hashed directories.
fn read_dir(fd: i32, cursor: u64, max: usize) -> Result<Outcome, Errno> {
    let start = libc::off_t::try_from(cursor).map_err(|_| Errno(libc::EINVAL))?;
    // SAFETY: a plain descriptor call.
    if unsafe { libc::lseek(fd, start, libc::SEEK_SET) } < 0 {
        return Err(Errno::last());
    }
    let mut buf = vec![0u8; limits::EXEC_GETDENTS_BUF];
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    loop {
        // SAFETY: the buffer is writable for its whole length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(Errno::last());
        }
        if n == 0 {
            return Ok(Outcome::Names {
                names,
                kinds,
                next: None,
            });
        }
        let filled = &buf[..n as usize];
        let mut at = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while at + 19 <= filled.len() {
            let d_off = u64::from_ne_bytes(field(filled, at + 8));
            let reclen = u16::from_ne_bytes(field(filled, at + 16)) as usize;
            let d_type = filled[at + 18];
            if reclen < 19 || at + reclen > filled.len() {
                return Err(Errno(libc::EIO));
            }
            let name = CStr::from_bytes_until_nul(&filled[at + 19..at + reclen])
                .map_err(|_| Errno(libc::EIO))?
                .to_bytes();
            at += reclen;
            // Linux's NAME_MAX; the reply frame gives each name one length byte.
            if name.len() > 255 {
                return Err(Errno(libc::ENAMETOOLONG));
            }
            if name != b"." && name != b".." {
                names.push(name.to_vec());
                kinds.push(d_type);
                if names.len() == max {
                    return Ok(Outcome::Names {
                        names,
                        kinds,
                        next: Some(d_off),
                    });
                }
            }
        }
    }
}

/// One file of a `WireSize`: opens without following a symlink (and without blocking on a
/// FIFO), refuses anything but a regular file, and counts.
fn wire_size(dir: i32, path: &std::ffi::CStr, buf: &mut [u8]) -> Result<u64, Errno> {
    use std::os::fd::FromRawFd;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    // SAFETY: `path` is a NUL-terminated string alive for the call.
    let fd = check(unsafe { libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: a descriptor just opened, owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: fstat into a zeroed struct of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Errno(libc::EINVAL));
    }
    // The byte before the first is no CR: a leading LF counts.
    let (mut extra, mut previous) = (0u64, 0u8);
    let read = crate::lf::read_chunks(&mut file, buf, &mut |chunk| {
        extra += crate::lf::wire_extra(chunk, previous);
        previous = chunk.last().copied().unwrap_or(previous);
        Ok(())
    });
    read.map(|n| n + extra)
        .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
}

fn field<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&buf[at..at + N]);
    a
}
