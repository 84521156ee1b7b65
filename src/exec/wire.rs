//! Frames between the reactor and the helper process. One frame is one SOCK_SEQPACKET
//! message: a little-endian `u32` length of what follows, a `u64` sequence number (the
//! parent's slot, echoed in the reply), a kind byte and the fields. Every frame is at most
//! `limits::EXEC_FRAME_MAX` bytes; a frame whose length prefix disagrees with the message is
//! refused (a bug, not data to guess at).
//!
//! Requests: paths are `u16` length + bytes (no NUL), a write's data `u32` length + bytes,
//! handles `i32` (`AT_FDCWD` for "no directory"). Replies: an errno, `Done`, a handle, `Written`
//! (the parent kept its buffer, so no data comes back), a batch of names (a `d_type` byte and
//! a `u8` length each), sizes, a copy's two sizes, or a verdict.

use std::ffi::CString;

use super::{DiskOp, Errno, Handle, Outcome, dir_fd};
use crate::auth::Credential;
use crate::maildir::CopySource;

const OPEN: u8 = 1;
const WRITE: u8 = 2;
const FDATASYNC: u8 = 3;
const FSYNC: u8 = 4;
const RENAME: u8 = 5;
const LINK: u8 = 6;
const UNLINK: u8 = 7;
const MKDIR: u8 = 8;
const CLOSE: u8 = 9;
const READDIR: u8 = 10;
const VERIFY: u8 = 11;
const RENAME_NOREPLACE: u8 = 12;
const WIRE_SIZE: u8 = 13;
const REST: u8 = 14;
const SYNCFS: u8 = 15;
const MAILDIR_COPY: u8 = 16;
const WARM: u8 = 17;

const R_ERR: u8 = 0;
const R_DONE: u8 = 1;
const R_OPENED: u8 = 2;
const R_WRITTEN: u8 = 3;
const R_NAMES: u8 = 4;
const R_VERIFIED: u8 = 5;
const R_SIZES: u8 = 6;
const R_COPIED: u8 = 7;

struct Out(Vec<u8>);

impl Out {
    fn new(seq: u64, kind: u8) -> Out {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&seq.to_le_bytes());
        v.push(kind);
        Out(v)
    }
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn i32(&mut self, x: i32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    /// Lengths were checked against the limits at submit, so they fit their prefixes.
    fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.0.extend_from_slice(b);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        self.0
    }
}

struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.arr()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn path(&mut self) -> Option<CString> {
        CString::new(self.bytes16()?).ok()
    }
    fn dir(&mut self) -> Option<Option<Handle>> {
        let fd = self.i32()?;
        Some(if fd == libc::AT_FDCWD {
            None
        } else {
            Some(Handle(fd))
        })
    }
}

/// Splits a received message into sequence number, kind and body, checking the prefix.
fn open_frame(msg: &[u8]) -> Option<(u64, u8, In<'_>)> {
    let mut r = In(msg);
    let len = r.u32()? as usize;
    if len != msg.len() - 4 {
        return None;
    }
    let seq = r.u64()?;
    let kind = r.u8()?;
    Some((seq, kind, r))
}

/// Encodes a request. For a `ReadDir`, `WireSize`, `MaildirCopy`, `Warm`, `Fdatasync` or `Fsync`
/// whose descriptor travels with the frame (SCM_RIGHTS),
/// `fd_attached` is true and the helper uses the descriptor it receives instead.
pub(super) fn encode_request(seq: u64, op: &DiskOp, fd_attached: bool) -> Vec<u8> {
    match op {
        DiskOp::Open {
            dir,
            path,
            flags,
            mode,
        } => {
            let mut o = Out::new(seq, OPEN);
            o.i32(dir_fd(*dir));
            o.i32(*flags);
            o.u32(*mode);
            o.bytes16(path.as_bytes());
            o.finish()
        }
        DiskOp::Write { file, offset, data } => {
            let mut o = Out::new(seq, WRITE);
            o.i32(file.0);
            o.u64(*offset);
            o.u32(data.len() as u32);
            o.0.extend_from_slice(data);
            o.finish()
        }
        DiskOp::Fdatasync { file }
        | DiskOp::Fsync { file }
        | DiskOp::Syncfs { file }
        | DiskOp::Close { file } => {
            let kind = match op {
                DiskOp::Fdatasync { .. } => FDATASYNC,
                DiskOp::Fsync { .. } => FSYNC,
                DiskOp::Syncfs { .. } => SYNCFS,
                _ => CLOSE,
            };
            let mut o = Out::new(seq, kind);
            o.i32(file.0);
            if kind != CLOSE {
                // `Executor::submit_own`: the descriptor travels with the frame.
                o.u8(u8::from(fd_attached));
            }
            o.finish()
        }
        DiskOp::Rename {
            from_dir,
            from,
            to_dir,
            to,
        }
        | DiskOp::RenameNoReplace {
            from_dir,
            from,
            to_dir,
            to,
        }
        | DiskOp::Link {
            from_dir,
            from,
            to_dir,
            to,
        } => {
            let kind = match op {
                DiskOp::Rename { .. } => RENAME,
                DiskOp::RenameNoReplace { .. } => RENAME_NOREPLACE,
                _ => LINK,
            };
            let mut o = Out::new(seq, kind);
            o.i32(dir_fd(*from_dir));
            o.bytes16(from.as_bytes());
            o.i32(dir_fd(*to_dir));
            o.bytes16(to.as_bytes());
            if kind == LINK {
                // `Executor::submit_own`: the target directory travels with the frame.
                o.u8(u8::from(fd_attached));
            }
            o.finish()
        }
        DiskOp::Unlink { dir, path } => {
            let mut o = Out::new(seq, UNLINK);
            o.i32(dir_fd(*dir));
            o.bytes16(path.as_bytes());
            o.finish()
        }
        DiskOp::Mkdir { dir, path, mode } => {
            let mut o = Out::new(seq, MKDIR);
            o.i32(dir_fd(*dir));
            o.u32(*mode);
            o.bytes16(path.as_bytes());
            o.finish()
        }
        DiskOp::ReadDir { dir, cursor, max } => {
            let mut o = Out::new(seq, READDIR);
            o.i32(dir.0);
            o.u8(u8::from(fd_attached));
            o.u64(*cursor);
            o.u32(super::readdir_max(*max) as u32);
            o.finish()
        }
        DiskOp::WireSize { dir, paths } => {
            let mut o = Out::new(seq, WIRE_SIZE);
            o.i32(dir.0);
            o.u8(u8::from(fd_attached));
            o.u16(paths.len() as u16);
            for p in paths {
                o.bytes16(p.as_bytes());
            }
            o.finish()
        }
        DiskOp::MaildirCopy {
            dir,
            name,
            head,
            source,
            sync,
        } => {
            let mut o = Out::new(seq, MAILDIR_COPY);
            o.i32(dir.0);
            o.u8(u8::from(fd_attached));
            o.bytes16(name.as_bytes());
            o.bytes16(head);
            o.bytes16(source.path.as_bytes());
            o.u64(source.offset);
            o.u64(source.len);
            o.u8(u8::from(source.lf_form));
            o.u8(u8::from(*sync));
            o.finish()
        }
        DiskOp::Warm { file, offset, len } => {
            let mut o = Out::new(seq, WARM);
            o.i32(file.0);
            o.u8(u8::from(fd_attached));
            o.u64(*offset);
            o.u64(*len);
            o.finish()
        }
        DiskOp::VerifyPassword { hash, password } => {
            let mut o = Out::new(seq, VERIFY);
            match hash {
                None => o.u8(0),
                Some(Credential::Sha512Crypt(s)) => {
                    o.u8(1);
                    o.bytes16(s.as_bytes());
                }
                Some(Credential::Plain(p)) => {
                    o.u8(2);
                    o.bytes16(p);
                }
            }
            o.bytes16(password);
            o.finish()
        }
        DiskOp::Rest => Out::new(seq, REST).finish(),
    }
}

/// A decoded request: the operation, and whether its directory descriptor came attached.
pub(super) struct Request {
    pub(super) seq: u64,
    pub(super) op: DiskOp,
    pub(super) fd_attached: bool,
}

/// Decodes a request; `Err(Some(seq))` if the body is malformed but the header was readable
/// (answered with EINVAL), `Err(None)` if not even that.
pub(super) fn decode_request(msg: &[u8]) -> Result<Request, Option<u64>> {
    let (seq, kind, mut r) = open_frame(msg).ok_or(None)?;
    let mut fd_attached = false;
    let op = (|| {
        Some(match kind {
            OPEN => {
                let dir = r.dir()?;
                let flags = r.i32()?;
                let mode = r.u32()?;
                DiskOp::Open {
                    dir,
                    path: r.path()?,
                    flags,
                    mode,
                }
            }
            WRITE => {
                let file = Handle(r.i32()?);
                let offset = r.u64()?;
                let n = r.u32()? as usize;
                DiskOp::Write {
                    file,
                    offset,
                    data: r.take(n)?.to_vec(),
                }
            }
            FDATASYNC | FSYNC | SYNCFS => {
                let file = Handle(r.i32()?);
                fd_attached = r.u8()? != 0;
                match kind {
                    FDATASYNC => DiskOp::Fdatasync { file },
                    FSYNC => DiskOp::Fsync { file },
                    _ => DiskOp::Syncfs { file },
                }
            }
            CLOSE => DiskOp::Close {
                file: Handle(r.i32()?),
            },
            RENAME | RENAME_NOREPLACE | LINK => {
                let from_dir = r.dir()?;
                let from = r.path()?;
                let to_dir = r.dir()?;
                let to = r.path()?;
                if kind == LINK {
                    fd_attached = r.u8()? != 0;
                }
                if kind == RENAME {
                    DiskOp::Rename {
                        from_dir,
                        from,
                        to_dir,
                        to,
                    }
                } else if kind == RENAME_NOREPLACE {
                    DiskOp::RenameNoReplace {
                        from_dir,
                        from,
                        to_dir,
                        to,
                    }
                } else {
                    DiskOp::Link {
                        from_dir,
                        from,
                        to_dir,
                        to,
                    }
                }
            }
            UNLINK => DiskOp::Unlink {
                dir: r.dir()?,
                path: r.path()?,
            },
            MKDIR => {
                let dir = r.dir()?;
                let mode = r.u32()?;
                DiskOp::Mkdir {
                    dir,
                    path: r.path()?,
                    mode,
                }
            }
            READDIR => {
                let dir = Handle(r.i32()?);
                fd_attached = r.u8()? != 0;
                let cursor = r.u64()?;
                let max = r.u32()? as usize;
                DiskOp::ReadDir { dir, cursor, max }
            }
            WIRE_SIZE => {
                let dir = Handle(r.i32()?);
                fd_attached = r.u8()? != 0;
                let count = r.u16()? as usize;
                if count > crate::limits::EXEC_WIRE_SIZE_BATCH {
                    return None;
                }
                let mut paths = Vec::with_capacity(count);
                for _ in 0..count {
                    paths.push(r.path()?);
                }
                DiskOp::WireSize { dir, paths }
            }
            MAILDIR_COPY => {
                let dir = Handle(r.i32()?);
                fd_attached = r.u8()? != 0;
                let name = r.path()?;
                let head = r.bytes16()?.into();
                let path = r.path()?;
                let offset = r.u64()?;
                let len = r.u64()?;
                let lf_form = r.u8()? != 0;
                let sync = r.u8()? != 0;
                DiskOp::MaildirCopy {
                    dir,
                    name,
                    head,
                    source: Box::new(CopySource {
                        path,
                        offset,
                        len,
                        lf_form,
                    }),
                    sync,
                }
            }
            WARM => {
                let file = Handle(r.i32()?);
                fd_attached = r.u8()? != 0;
                DiskOp::Warm {
                    file,
                    offset: r.u64()?,
                    len: r.u64()?,
                }
            }
            VERIFY => {
                let hash = match r.u8()? {
                    0 => None,
                    1 => Some(Credential::Sha512Crypt(
                        String::from_utf8(r.bytes16()?.to_vec()).ok()?,
                    )),
                    2 => Some(Credential::Plain(r.bytes16()?.to_vec())),
                    _ => return None,
                };
                DiskOp::VerifyPassword {
                    hash,
                    password: r.bytes16()?.to_vec(),
                }
            }
            REST => DiskOp::Rest,
            _ => return None,
        })
    })()
    .ok_or(Some(seq))?;
    if !r.0.is_empty() {
        return Err(Some(seq));
    }
    Ok(Request {
        seq,
        op,
        fd_attached,
    })
}

/// Encodes the reply to request `seq`.
pub(super) fn encode_reply(seq: u64, result: &Result<Outcome, Errno>) -> Vec<u8> {
    match result {
        Err(e) => {
            let mut o = Out::new(seq, R_ERR);
            o.i32(e.0);
            o.finish()
        }
        Ok(Outcome::Done) => Out::new(seq, R_DONE).finish(),
        Ok(Outcome::Opened(h)) => {
            let mut o = Out::new(seq, R_OPENED);
            o.i32(h.0);
            o.finish()
        }
        Ok(Outcome::Written(_)) => Out::new(seq, R_WRITTEN).finish(),
        Ok(Outcome::Names { names, kinds, next }) => {
            let mut o = Out::new(seq, R_NAMES);
            o.u8(u8::from(next.is_some()));
            o.u64(next.unwrap_or(0));
            o.u16(names.len() as u16);
            for (i, n) in names.iter().enumerate() {
                o.u8(kinds.get(i).copied().unwrap_or(libc::DT_UNKNOWN));
                // NAME_MAX is 255, so a name's length fits its byte.
                o.u8(n.len() as u8);
                o.0.extend_from_slice(n);
            }
            o.finish()
        }
        Ok(Outcome::Sizes(sizes)) => {
            let mut o = Out::new(seq, R_SIZES);
            o.u16(sizes.len() as u16);
            for s in sizes {
                match s {
                    Ok(n) => {
                        o.u8(1);
                        o.u64(*n);
                    }
                    Err(e) => {
                        o.u8(0);
                        o.i32(e.0);
                    }
                }
            }
            o.finish()
        }
        Ok(Outcome::Copied { size, wire }) => {
            let mut o = Out::new(seq, R_COPIED);
            o.u64(*size);
            o.u64(*wire);
            o.finish()
        }
        Ok(Outcome::Verified(ok)) => {
            let mut o = Out::new(seq, R_VERIFIED);
            o.u8(u8::from(*ok));
            o.finish()
        }
    }
}

/// Decodes a reply; `None` if malformed. A `Written` comes back with an empty buffer: the
/// parent puts its own back in.
pub(super) fn decode_reply(msg: &[u8]) -> Option<(u64, Result<Outcome, Errno>)> {
    let (seq, kind, mut r) = open_frame(msg)?;
    let result = match kind {
        R_ERR => Err(Errno(r.i32()?)),
        R_DONE => Ok(Outcome::Done),
        R_OPENED => Ok(Outcome::Opened(Handle(r.i32()?))),
        R_WRITTEN => Ok(Outcome::Written(Vec::new())),
        R_NAMES => {
            let has_next = r.u8()? != 0;
            let next = r.u64()?;
            let count = r.u16()? as usize;
            let mut names = Vec::with_capacity(count.min(crate::limits::EXEC_READDIR_MAX_NAMES));
            let mut kinds = Vec::with_capacity(names.capacity());
            for _ in 0..count {
                kinds.push(r.u8()?);
                let n = r.u8()? as usize;
                names.push(r.take(n)?.to_vec());
            }
            Ok(Outcome::Names {
                names,
                kinds,
                next: has_next.then_some(next),
            })
        }
        R_SIZES => {
            let count = r.u16()? as usize;
            if count > crate::limits::EXEC_WIRE_SIZE_BATCH {
                return None;
            }
            let mut sizes = Vec::with_capacity(count);
            for _ in 0..count {
                sizes.push(match r.u8()? {
                    1 => Ok(r.u64()?),
                    0 => Err(Errno(r.i32()?)),
                    _ => return None,
                });
            }
            Ok(Outcome::Sizes(sizes))
        }
        R_VERIFIED => Ok(Outcome::Verified(r.u8()? != 0)),
        R_COPIED => Ok(Outcome::Copied {
            size: r.u64()?,
            wire: r.u64()?,
        }),
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some((seq, result))
}
