//! The io_uring backend: file operations go to the kernel as submission entries, many at
//! once; completions signal an eventfd registered in the mio poll, and `drain` matches each
//! to its slot by `user_data`. The slot owns the operation (its paths and its write buffer)
//! until the completion arrives, so the kernel reads memory nobody else touches, without a
//! copy.
//!
//! Construction (`Uring::ring`) fails with a reason, for `choose` to log and fall back on,
//! when io_uring_setup is refused (`kernel.io_uring_disabled`, a seccomp profile, an old
//! kernel) or the probe finds an opcode used here missing.
//!
//! `ReadDir` (io_uring has no getdents), `WireSize` (a read-and-count loop), `MaildirCopy` (a
//! read-and-write loop), `Warm` (a read into a buffer of the helper's) and `VerifyPassword`
//! (CPU work) go to the helper process this backend also holds; the descriptor of a
//! `ReadDir`, `WireSize`, `MaildirCopy` or `Warm` travels with its frame.
//!
//! The reactor's poll may return EINTR while operations are in flight (the kernel runs
//! io_uring's task work for this thread by interrupting its wait, as a signal would); the
//! reactor already retries an interrupted poll, and must keep doing so.
//!
//! A short write (possible near a full disk) is continued from where it stopped; the
//! completion says `Written` only when every byte is.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{IoUring, Probe, opcode, squeue, types};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::slots::Slots;
use super::{Completion, DiskOp, Errno, Handle, Helper, Outcome, Reject, Rejected, dir_fd};
use crate::limits;

/// A ring and its eventfd, before a helper is attached.
pub struct Ring {
    pub(super) ring: IoUring,
    efd: OwnedFd,
}

/// An operation in the kernel's hands.
struct InFlight {
    tag: u64,
    op: DiskOp,
    /// Bytes of a write already written (a short write is continued from here).
    done: usize,
}

pub struct Uring {
    ring: IoUring,
    efd: OwnedFd,
    slots: Slots<InFlight>,
    helper: Helper,
    cqes: Vec<(u64, i32)>,
    /// Inside `Executor::batch`: entries wait in the submission queue for one
    /// `io_uring_enter` at its end, not one system call each.
    batching: bool,
    /// `io_uring_enter` calls made to submit (for tests: a batch is one call).
    #[cfg(test)]
    pub(super) enters: usize,
}

/// Every opcode this backend submits; all must be supported or construction fails.
const OPCODES: [(&str, u8); 8] = [
    ("OPENAT", opcode::OpenAt::CODE),
    ("WRITE", opcode::Write::CODE),
    ("FSYNC", opcode::Fsync::CODE),
    ("RENAMEAT", opcode::RenameAt::CODE),
    ("LINKAT", opcode::LinkAt::CODE),
    ("UNLINKAT", opcode::UnlinkAt::CODE),
    ("MKDIRAT", opcode::MkDirAt::CODE),
    ("CLOSE", opcode::Close::CODE),
];

/// Ok if `supported` says yes to every opcode used, else the reason naming those missing.
pub(super) fn all_supported(supported: impl Fn(u8) -> bool) -> Result<(), String> {
    let missing: Vec<&str> = OPCODES
        .iter()
        .filter(|(_, code)| !supported(*code))
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the kernel's io_uring lacks {}",
            missing.join(", ")
        ))
    }
}

/// An io::Error as its bare message ("Operation not permitted"), for one-line log reasons.
fn bare(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl Uring {
    /// Sets up a ring sized so it never overflows (entries = the in-flight limit), probes
    /// every opcode used and attaches an eventfd. The error is the reason to log.
    pub fn ring() -> Result<Ring, String> {
        let ring = IoUring::new(limits::EXEC_MAX_IN_FLIGHT as u32)
            .map_err(|e| format!("io_uring_setup: {}", bare(&e)))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("io_uring probe: {}", bare(&e)))?;
        all_supported(|code| probe.is_supported(code))?;
        // SAFETY: eventfd returns a fresh descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("eventfd: {}", bare(&io::Error::last_os_error())));
        }
        // SAFETY: `raw` is ours.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(|e| format!("io_uring register_eventfd: {}", bare(&e)))?;
        // File operations run on the kernel's io-wq worker threads, by default up to four
        // per CPU; a pile of them spinning on one directory's lock took the CPU from the
        // reactor thread. A kernel without the call (before 5.15) keeps its default.
        let mut max = [limits::EXEC_URING_WORKERS, 0];
        if let Err(e) = ring.submitter().register_iowq_max_workers(&mut max) {
            log::debug!("disk_io: io_uring worker limit not set: {}", bare(&e));
        }
        Ok(Ring { ring, efd })
    }

    pub fn new(ring: Ring, helper: Helper) -> Uring {
        Uring {
            ring: ring.ring,
            efd: ring.efd,
            slots: Slots::new(limits::EXEC_MAX_IN_FLIGHT),
            helper,
            cqes: Vec::new(),
            batching: false,
            #[cfg(test)]
            enters: 0,
        }
    }

    /// The helper's end of turn (`Helper::end_turn`): it holds this backend's password checks.
    pub(super) fn end_turn(&mut self) {
        self.helper.end_turn();
    }

    pub(super) fn helper(&self) -> &Helper {
        &self.helper
    }

    pub(super) fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        helper_token: Token,
    ) -> io::Result<()> {
        let fd = self.efd.as_raw_fd();
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        self.helper.register(registry, helper_token)
    }

    /// The poll reported the eventfd (`ring`) or the helper's socket readable.
    pub(super) fn signalled(&mut self, ring: bool) {
        if !ring {
            self.helper.signalled();
        }
    }

    pub(super) fn submit(&mut self, tag: u64, op: DiskOp) -> Result<(), Rejected> {
        match op {
            DiskOp::ReadDir { dir, .. }
            | DiskOp::WireSize { dir, .. }
            | DiskOp::MaildirCopy { dir, .. }
            | DiskOp::Warm { file: dir, .. }
            | DiskOp::Syncfs { file: dir } => {
                return self.helper.submit_with_fd(tag, op, Some(dir.0));
            }
            DiskOp::VerifyPassword { .. } | DiskOp::Rest => return self.helper.submit(tag, op),
            _ => {}
        }
        let slot = match self.slots.insert(InFlight { tag, op, done: 0 }) {
            Ok(slot) => slot,
            Err(back) => {
                return Err(Rejected {
                    reason: Reject::Full,
                    op: back.op,
                });
            }
        };
        if !self.push(slot)
            && let Some(f) = self.slots.remove(slot)
        {
            return Err(Rejected {
                reason: Reject::Full,
                op: f.op,
            });
        }
        if !self.batching {
            self.submit_queued();
        }
        Ok(())
    }

    /// Starts or ends a batch: while one is open, submissions queue up; its end submits them
    /// all with one `io_uring_enter`.
    pub(super) fn set_batching(&mut self, on: bool) {
        self.batching = on;
        if !on {
            self.submit_queued();
        }
    }

    /// Queues the submission entry of slot `slot` (its first, or a short write's next part).
    /// False if the queue had no room, which the sizing (ring entries = slots) rules out.
    fn push(&mut self, slot: usize) -> bool {
        let Some(f) = self.slots.get_mut(slot) else {
            return false;
        };
        let Some(entry) = entry(&f.op, f.done) else {
            return false;
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: every pointer in the entry points into the slot's operation (a CString's or
        // a Vec's heap memory), which stays in the slab, unmoved, until its completion is
        // reaped (`Drop` waits for any still in flight).
        unsafe { self.ring.submission().push(&entry).is_ok() }
    }

    /// Hands queued entries to the kernel. On an error (EAGAIN, EINTR) they stay queued and
    /// the next `submit` or `drain` tries again.
    fn submit_queued(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        #[cfg(test)]
        {
            self.enters += 1;
        }
        if let Err(e) = self.ring.submit() {
            log::warn!("disk_io: io_uring_enter: {e}; retrying on the next turn");
        }
    }

    pub(super) fn drain(&mut self, out: &mut Vec<Completion>) {
        self.helper.signalled();
        self.drain_signalled(out);
    }

    /// Reaps the completion queue (shared memory: no system call) and reads the helper's
    /// socket only if the poll reported it since a read last found it empty. The eventfd is
    /// never read: it is registered edge-triggered, and every completion the kernel posts
    /// signals it, which wakes the poll whatever its count (a 64-bit count that no run
    /// could fill).
    pub(super) fn drain_signalled(&mut self, out: &mut Vec<Completion>) {
        self.submit_queued();
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(slot, res) in &cqes {
            self.complete(slot as usize, res, out);
        }
        cqes.clear();
        self.cqes = cqes;
        self.submit_queued();
        self.helper.drain_signalled(out);
    }

    fn complete(&mut self, slot: usize, res: i32, out: &mut Vec<Completion>) {
        let Some(f) = self.slots.get_mut(slot) else {
            log::error!("disk_io: an io_uring completion for no operation ({slot})");
            return;
        };
        if let DiskOp::Write { data, .. } = &f.op
            && res > 0
        {
            f.done += res as usize;
            if f.done < data.len() {
                if self.push(slot) {
                    return;
                }
                if let Some(f) = self.slots.remove(slot) {
                    out.push(Completion {
                        tag: f.tag,
                        result: Err(Errno(libc::EAGAIN)),
                    });
                }
                return;
            }
        }
        let Some(f) = self.slots.remove(slot) else {
            return;
        };
        let result = if res < 0 {
            Err(Errno(-res))
        } else {
            match f.op {
                DiskOp::Open { .. } => Ok(Outcome::Opened(Handle(res))),
                DiskOp::Write { data, .. } if f.done == data.len() => Ok(Outcome::Written(data)),
                // A write that made no progress: the kernel said 0 bytes for a non-empty buffer.
                DiskOp::Write { .. } => Err(Errno(libc::EIO)),
                _ => Ok(Outcome::Done),
            }
        };
        out.push(Completion { tag: f.tag, result });
    }

    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() + self.helper.in_flight()
    }
}

impl Drop for Uring {
    /// Waits for the kernel to finish with every buffer it may still be reading before the
    /// slots (and their memory) go away.
    fn drop(&mut self) {
        while self.slots.len() > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                // Nothing more can be waited for; leak the buffers rather than free them
                // under the kernel.
                std::mem::forget(std::mem::replace(&mut self.slots, Slots::new(0)));
                return;
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for slot in done {
                self.slots.remove(slot as usize);
            }
        }
    }
}

/// The submission entry for `op`, from byte `done` on for a write; `None` for operations
/// this backend sends to the helper.
fn entry(op: &DiskOp, done: usize) -> Option<squeue::Entry> {
    let fd = |h: Option<Handle>| types::Fd(dir_fd(h));
    Some(match op {
        DiskOp::Open {
            dir,
            path,
            flags,
            mode,
        } => opcode::OpenAt::new(fd(*dir), path.as_ptr())
            .flags(flags | libc::O_CLOEXEC)
            .mode(*mode)
            .build(),
        DiskOp::Write { file, offset, data } => {
            let rest = &data[done..];
            opcode::Write::new(types::Fd(file.0), rest.as_ptr(), rest.len() as u32)
                .offset(offset + done as u64)
                .build()
        }
        DiskOp::Fdatasync { file } => opcode::Fsync::new(types::Fd(file.0))
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        DiskOp::Fsync { file } => opcode::Fsync::new(types::Fd(file.0)).build(),
        DiskOp::Rename {
            from_dir,
            from,
            to_dir,
            to,
        } => opcode::RenameAt::new(fd(*from_dir), from.as_ptr(), fd(*to_dir), to.as_ptr()).build(),
        DiskOp::RenameNoReplace {
            from_dir,
            from,
            to_dir,
            to,
        } => opcode::RenameAt::new(fd(*from_dir), from.as_ptr(), fd(*to_dir), to.as_ptr())
            .flags(libc::RENAME_NOREPLACE)
            .build(),
        DiskOp::Link {
            from_dir,
            from,
            to_dir,
            to,
        } => opcode::LinkAt::new(fd(*from_dir), from.as_ptr(), fd(*to_dir), to.as_ptr()).build(),
        DiskOp::Unlink { dir, path } => opcode::UnlinkAt::new(fd(*dir), path.as_ptr()).build(),
        DiskOp::Mkdir { dir, path, mode } => opcode::MkDirAt::new(fd(*dir), path.as_ptr())
            .mode(*mode)
            .build(),
        DiskOp::Close { file } => opcode::Close::new(types::Fd(file.0)).build(),
        DiskOp::ReadDir { .. }
        | DiskOp::WireSize { .. }
        | DiskOp::MaildirCopy { .. }
        | DiskOp::Warm { .. }
        | DiskOp::Syncfs { .. }
        | DiskOp::VerifyPassword { .. }
        | DiskOp::Rest => {
            return None;
        }
    })
}
