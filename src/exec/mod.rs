//! The disk executor: owns every file operation and password check that would make the one
//! reactor thread wait, turning each into a request with a caller-chosen tag and, later, a
//! completion carrying that tag. Completions may come back in any order.
//!
//! Backends (one `Executor` type, chosen once at start; see `choose`):
//! - `Uring` (`uring.rs`): the kernel's io_uring. Many operations in flight; its completions
//!   signal an eventfd registered in the mio poll. At construction a probe checks that every
//!   opcode used is supported, so `auto` can fall back with a clear reason.
//! - `Helper` (`helper.rs`): one child process forked at start, making the same calls with
//!   blocking syscalls and answering over a `SOCK_SEQPACKET` socketpair whose parent end is
//!   registered in the poll. One thread per process, always.
//! - `Inline` (`inline.rs`): runs each operation at submit and queues its completion; for unit
//!   tests of callers, never for serving.
//!
//! Two kinds of work always go to a helper process, so one exists in every serving mode:
//! `VerifyPassword` (SHA512-CRYPT is CPU time), `ReadDir` (io_uring has no getdents),
//! `WireSize` (a read-and-count loop), `MaildirCopy` (a read-and-write loop) and `Warm` (a read
//! into the helper's own buffer); for the last four the uring backend passes the descriptor
//! over the socket with SCM_RIGHTS.
//!
//! Files are named by a `Handle`: a real descriptor on the uring and inline sides, a helper-side
//! descriptor number on the helper side. Callers never look inside; they get handles from
//! `Outcome::Opened` and give them back in later operations, and must not close a handle that
//! an operation in flight still names.
//!
//! Bounded: each backend holds at most `limits::EXEC_MAX_IN_FLIGHT` operations; beyond that
//! `submit` hands the operation back with `Reject::Full`. A write carries at most
//! `limits::EXEC_WRITE_MAX` bytes, on every backend.
//!
//! `submit_own` syncs a descriptor the caller opened itself (the spool's files): the helper
//! backend receives a copy of it with the request.
//!
//! Its callers today are the reactor (`reactor::begin_check`, `finish_checks`): POP password
//! checks, the POP mailbox jobs (`mailbox::job`): opening a Maildir and QUIT's deletions, the
//! delivery engine's Maildir commits (`deliver::local::Maildirs::commit_pump`: the data and
//! directory syncs of the reactor's own descriptors, `submit_sync`), and the spool: its group
//! commit, the files it makes ahead, its removals and its state files (`spool::commit`,
//! `spool::prepare`, `spool::state`). The short cache of successful checks that keeps clients
//! looping USER/PASS with a right password from making the helper rehash belongs to the caller
//! that knows the user (`auth::cache`, held by `hosts::Services`), not to the executor.

mod helper;
mod inline;
mod slots;
mod sys;
mod uring;
mod wire;

#[cfg(test)]
pub(crate) mod tests;

use std::ffi::CString;

use crate::maildir::CopySource;
use std::fmt;
use std::io;
use std::os::fd::RawFd;

use mio::{Registry, Token};

use crate::auth::Credential;

pub use helper::Helper;
pub use inline::Inline;
pub use uring::{Ring, Uring};

/// A file or directory as the executor names it. On the uring and inline backends it is the
/// reactor's own descriptor; on the helper backend, a descriptor number inside the helper.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle(i32);

impl Handle {
    /// The descriptor number (in whichever process owns it); for logs and tests.
    pub fn raw(self) -> i32 {
        self.0
    }

    /// A descriptor of this process's own (the spool's files and `queue/`), for
    /// `Executor::submit_own` only: the helper backend cannot name it otherwise.
    pub fn own(fd: &impl std::os::fd::AsRawFd) -> Handle {
        Handle(fd.as_raw_fd())
    }
}

/// `None` as a directory means the current working directory (`AT_FDCWD`).
fn dir_fd(dir: Option<Handle>) -> i32 {
    dir.map_or(libc::AT_FDCWD, |h| h.0)
}

/// One request. Paths are relative to `dir` (or absolute); buffers are owned by the operation
/// and handed back in the completion, so the kernel can use them while in flight.
#[derive(Debug)]
pub enum DiskOp {
    /// `openat(dir, path, flags | O_CLOEXEC, mode)` → `Outcome::Opened`.
    Open {
        dir: Option<Handle>,
        path: CString,
        flags: i32,
        mode: u32,
    },
    /// Writes all of `data` at `offset` (short writes are continued) → `Outcome::Written`
    /// with the same buffer back. At most `limits::EXEC_WRITE_MAX` bytes.
    Write {
        file: Handle,
        offset: u64,
        data: Vec<u8>,
    },
    /// `fdatasync(file)` → `Outcome::Done`.
    Fdatasync { file: Handle },
    /// `fsync(file)`, also of a directory → `Outcome::Done`.
    Fsync { file: Handle },
    /// `syncfs(file)`: everything written to `file`'s filesystem (`fsync = filesystem`) →
    /// `Outcome::Done`. io_uring has no such operation: the uring backend hands it to its
    /// helper process, with the descriptor (as `ReadDir`).
    Syncfs { file: Handle },
    /// `renameat(from_dir, from, to_dir, to)` → `Outcome::Done`.
    Rename {
        from_dir: Option<Handle>,
        from: CString,
        to_dir: Option<Handle>,
        to: CString,
    },
    /// `renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE)` → `Outcome::Done`, or `EEXIST`
    /// where `to` exists (a plain rename would silently replace it: Maildir's new/ → cur/).
    RenameNoReplace {
        from_dir: Option<Handle>,
        from: CString,
        to_dir: Option<Handle>,
        to: CString,
    },
    /// `linkat(from_dir, from, to_dir, to, 0)` → `Outcome::Done`.
    Link {
        from_dir: Option<Handle>,
        from: CString,
        to_dir: Option<Handle>,
        to: CString,
    },
    /// `unlinkat(dir, path, 0)` → `Outcome::Done`.
    Unlink { dir: Option<Handle>, path: CString },
    /// `mkdirat(dir, path, mode)` → `Outcome::Done`.
    Mkdir {
        dir: Option<Handle>,
        path: CString,
        mode: u32,
    },
    /// `close(file)` → `Outcome::Done`. The handle is invalid from submission on.
    Close { file: Handle },
    /// Up to `max` (at most `limits::EXEC_READDIR_MAX_NAMES`) names of the open directory
    /// `dir`, starting at `cursor` (0 = the beginning; else a `next` from an earlier batch),
    /// without `.` and `..` → `Outcome::Names`.
    ReadDir {
        dir: Handle,
        cursor: u64,
        max: usize,
    },
    /// The sizes of the regular files `paths` (names, at most `limits::EXEC_WIRE_SIZE_BATCH`)
    /// in the open directory `dir` as POP sends them (each one's length plus one CR per LF not
    /// preceded by CR) → `Outcome::Sizes`, one result per name, in order. Each is opened with
    /// `O_NOFOLLOW`: a symlink is `ELOOP`, anything but a regular file `EINVAL`. Runs in a
    /// helper process on the uring backend (as `ReadDir`: reading and counting whole files).
    /// A batch, because one file is a few microseconds of work and a round trip to the
    /// helper several times that: 1,000 files one at a time took 22 ms of a POP3 login.
    WireSize { dir: Handle, paths: Vec<CString> },
    /// A Maildir copy of a queued message (`maildir::write_copy`): `name` created in the open
    /// directory `dir` (a Maildir's `tmp/`; never through a symlink, never over a file),
    /// `head` and the data of `source` written into it in the Maildir form, then `fdatasync`
    /// where `sync` (else its writeback is started), then closed → `Outcome::Copied`. A copy
    /// that fails leaves no file. A read-and-write loop: it runs in a helper process on the
    /// uring backend too, and `dir` is the caller's own descriptor (`Executor::submit_own`),
    /// which travels with the request. `head` is at most `limits::EXEC_COPY_HEAD_MAX` bytes.
    MaildirCopy {
        dir: Handle,
        name: CString,
        // (Boxed: the operation stays as small as the others.)
        head: Box<[u8]>,
        source: Box<CopySource>,
        sync: bool,
    },
    /// Reads `len` bytes of the open `file` from `offset` (fewer at its end) and discards them:
    /// they are in the page cache when this completes → `Outcome::Done`. For a POP client's
    /// message that was not in memory: the reactor reads without waiting (`RWF_NOWAIT`) and
    /// leaves the wait to this. Runs in a helper process on the uring backend too (a read
    /// into a buffer the request would have to own); `file` is the caller's own descriptor
    /// (`Executor::submit_own`). At most `limits::EXEC_WARM_MAX` bytes.
    Warm { file: Handle, offset: u64, len: u64 },
    /// Checks `password` against the stored credential (`None`: an unknown user, checked
    /// against a dummy hash in the same time) with `auth::verify` → `Outcome::Verified`.
    /// Always runs in a helper process (the inline backend runs it at submit).
    VerifyPassword {
        hash: Option<Credential>,
        password: Vec<u8>,
    },
    /// The server is at rest: the process running this hands back what a burst grew (the
    /// allocator's free pages) and its mappings of start-up code (`daemon::pages`) →
    /// `Outcome::Done`. Runs in the helper process on both the helper and the uring backend.
    Rest,
}

/// The tag of `DiskOp::Rest`: nobody waits for its completion. Bits 60 to 63 are the file
/// preparation's, the Maildir commit's, the group commit's and the mailbox jobs'.
pub const REST_TAG: u64 = 1 << 59;

/// What a successful operation produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Opened(Handle),
    /// The whole buffer was written; here it is back for reuse.
    Written(Vec<u8>),
    /// A batch of names; `kinds[i]` is the `d_type` of `names[i]` (`libc::DT_REG`, …;
    /// `DT_UNKNOWN` where the filesystem does not say); `next` is the cursor of the following
    /// batch, `None` at the end.
    Names {
        names: Vec<Vec<u8>>,
        kinds: Vec<u8>,
        next: Option<u64>,
    },
    /// `WireSize`: octets as POP sends each file, or why it could not be counted.
    Sizes(Vec<Result<u64, Errno>>),
    Verified(bool),
    /// `MaildirCopy`: the copy's size on disk and as POP3 sends it (`S=`, `W=`).
    Copied {
        size: u64,
        wire: u64,
    },
}

/// An operation's failure: the errno of the failing call. `EPIPE` means the helper process
/// is gone (it never answered).
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub(crate) fn last() -> Errno {
        Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&io::Error::from_raw_os_error(self.0), f)
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

/// One finished operation, matched to its submission by the caller's tag.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<Outcome, Errno>,
}

/// Why `submit` refused an operation (which it hands back unchanged in `Rejected`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// `limits::EXEC_MAX_IN_FLIGHT` operations are in flight; retry after completions.
    Full,
    /// A write above `EXEC_WRITE_MAX`, a path above `EXEC_PATH_MAX`, a password or credential
    /// above its limit.
    TooLarge,
    /// The helper process has exited; nothing more can run on it.
    Gone,
}

#[derive(Debug)]
pub struct Rejected {
    pub reason: Reject,
    pub op: DiskOp,
}

/// The `disk_io` setting.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DiskIo {
    /// io_uring if the kernel allows it and supports every operation, else the helper.
    Auto,
    /// io_uring or a start-up error.
    Uring,
    /// The helper process for everything.
    Helper,
}

impl DiskIo {
    pub fn parse(s: &str) -> Option<DiskIo> {
        match s {
            "auto" => Some(DiskIo::Auto),
            "uring" => Some(DiskIo::Uring),
            "helper" => Some(DiskIo::Helper),
            _ => None,
        }
    }
}

/// The executor: one of the backends, behind one interface.
pub enum Executor {
    Inline(Inline),
    Uring(Box<Uring>),
    Helper(Box<Helper>),
}

impl Executor {
    /// Builds the backend `mode` asks for and logs which one runs and why. Forks the helper
    /// process, so call it while the process is still single-threaded (after the privilege
    /// drop, before anything that starts threads).
    pub fn choose(mode: DiskIo) -> Result<Executor, String> {
        let (exec, line) = choose_with(mode, Uring::ring)?;
        log::info!("{line}");
        Ok(exec)
    }

    /// Which backend runs: "inline", "uring" or "helper".
    pub fn backend(&self) -> &'static str {
        match self {
            Executor::Inline(_) => "inline",
            Executor::Uring(_) => "uring",
            Executor::Helper(_) => "helper",
        }
    }

    /// Registers the sources of completions: the ring's eventfd under `token`, the helper's
    /// socket under `helper_token` (the two may be equal). On an event for either, call
    /// `signalled` with the token, then `drain_signalled`.
    pub fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        helper_token: Token,
    ) -> io::Result<()> {
        match self {
            Executor::Inline(_) => Ok(()),
            Executor::Uring(u) => u.register(registry, token, helper_token),
            Executor::Helper(h) => h.register(registry, helper_token),
        }
    }

    /// The poll reported a source readable: the ring's eventfd (`ring`), else the helper's
    /// socket.
    pub fn signalled(&mut self, ring: bool) {
        match self {
            Executor::Inline(_) => {}
            Executor::Uring(u) => u.signalled(ring),
            Executor::Helper(h) => h.signalled(),
        }
    }

    /// Like `drain`, but looks only at the sources the poll reported since they were last
    /// found empty (plus the ring's completion queue, which costs no system call): what the
    /// reactor calls, so a drain that finds nothing makes no system call.
    pub fn drain_signalled(&mut self, out: &mut Vec<Completion>) {
        match self {
            Executor::Inline(i) => i.drain(out),
            Executor::Uring(u) => u.drain_signalled(out),
            Executor::Helper(h) => h.drain_signalled(out),
        }
    }

    /// Starts `op`; its completion carries `tag`. Tags are the caller's: the executor never
    /// looks at them, and two operations in flight may even share one.
    pub fn submit(&mut self, tag: u64, op: DiskOp) -> Result<(), Rejected> {
        if let Err(reason) = check_sizes(&op) {
            return Err(Rejected { reason, op });
        }
        match self {
            Executor::Inline(i) => i.submit(tag, op),
            Executor::Uring(u) => u.submit(tag, op),
            Executor::Helper(h) => h.submit(tag, op),
        }
    }

    /// Runs `f`, whose submissions go to the kernel together at its end (io_uring: one
    /// `io_uring_enter` for the lot instead of one each, which for a mailbox job's batch of
    /// unlinks was most of the reactor's time). The other backends submit as usual.
    pub fn batch<R>(&mut self, f: impl FnOnce(&mut Executor) -> R) -> R {
        if let Executor::Uring(u) = self {
            u.set_batching(true);
        }
        let r = f(self);
        if let Executor::Uring(u) = self {
            u.set_batching(false);
        }
        r
    }

    /// Opens (`true`) or closes (`false`) a batch, as `batch` does, for a caller that cannot
    /// lend itself to a closure: the reactor batches each of a turn's phases of disk work
    /// (a commit group's syncs, a delivery step's links, the files made ahead), so a phase
    /// costs one `io_uring_enter` instead of one per operation.
    pub fn set_batching(&mut self, on: bool) {
        if let Executor::Uring(u) = self {
            u.set_batching(on);
        }
    }

    /// The `io_uring_enter` calls made to submit so far (0 on the other backends).
    #[cfg(test)]
    pub fn submit_calls(&self) -> usize {
        match self {
            Executor::Uring(u) => u.enters,
            _ => 0,
        }
    }

    /// Starts `op`, an `Fdatasync`, `Fsync` or `Syncfs` of a descriptor this process owns
    /// (`Handle::own`), a `Link` from a path into a directory it owns or a `MaildirCopy` into
    /// one, a `WireSize` of names in one, or a `Warm` of a file it has open, not one the executor
    /// opened: the helper backend gets a copy of the descriptor with the request (SCM_RIGHTS). The caller keeps the descriptor open until the completion. Any other
    /// operation is refused (`TooLarge`, handed back unchanged).
    pub fn submit_own(&mut self, tag: u64, op: DiskOp) -> Result<(), Rejected> {
        let fd = match &op {
            DiskOp::Fdatasync { file } | DiskOp::Fsync { file } | DiskOp::Syncfs { file } => file.0,
            // A Maildir copy into a `tmp/` the caller owns.
            DiskOp::MaildirCopy { dir, .. } => dir.0,
            // A POP message the caller has open.
            DiskOp::Warm { file, .. } => file.0,
            // POP2's count of a message in a Maildir directory the caller has open.
            DiskOp::WireSize { dir, .. } => dir.0,
            // A link into a directory the caller owns, from a path (the Maildir delivery of a
            // queued file in the Maildir form).
            DiskOp::Link {
                from_dir: None,
                to_dir: Some(dir),
                ..
            } => dir.0,
            _ => {
                return Err(Rejected {
                    reason: Reject::TooLarge,
                    op,
                });
            }
        };
        if let Err(reason) = check_sizes(&op) {
            return Err(Rejected { reason, op });
        }
        match self {
            Executor::Inline(i) => i.submit(tag, op),
            Executor::Uring(u) => u.submit(tag, op),
            Executor::Helper(h) => h.submit_with_fd(tag, op, Some(fd)),
        }
    }

    /// Syncs a descriptor the caller owns (`fdatasync` if `data_only`, else `fsync`, also of
    /// a directory): `submit_own` for a raw descriptor (the Maildir commit's files and `new/`).
    pub fn submit_sync(&mut self, tag: u64, fd: RawFd, data_only: bool) -> Result<(), Rejected> {
        let file = Handle(fd);
        let op = if data_only {
            DiskOp::Fdatasync { file }
        } else {
            DiskOp::Fsync { file }
        };
        self.submit_own(tag, op)
    }

    /// `syncfs` of the filesystem a descriptor the caller owns is on (`fsync = filesystem`).
    pub fn submit_syncfs(&mut self, tag: u64, fd: RawFd) -> Result<(), Rejected> {
        self.submit_own(tag, DiskOp::Syncfs { file: Handle(fd) })
    }

    /// Moves every completion that has arrived into `out` without blocking, and sends what
    /// was waiting for room on the helper socket. Call it on every event for the token.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        match self {
            Executor::Inline(i) => i.drain(out),
            Executor::Uring(u) => u.drain(out),
            Executor::Helper(h) => h.drain(out),
        }
    }

    /// Call once at the end of every reactor turn, after the turn's submissions: the helper
    /// sends a password check it held back so that file operations go first
    /// (`exec::helper`).
    pub fn end_turn(&mut self) {
        match self {
            Executor::Inline(_) => {}
            Executor::Uring(u) => u.end_turn(),
            Executor::Helper(h) => h.end_turn(),
        }
    }

    /// Operations submitted whose completion has not yet been handed out by `drain`.
    pub fn in_flight(&self) -> usize {
        match self {
            Executor::Inline(i) => i.in_flight(),
            Executor::Uring(u) => u.in_flight(),
            Executor::Helper(h) => h.in_flight(),
        }
    }

    /// Can it still run file operations? False once the helper backend's process is gone:
    /// callers then do their file work with blocking calls rather than fail it (a dead helper
    /// must not stop the server taking or delivering mail).
    pub fn runs_file_ops(&self) -> bool {
        match self {
            Executor::Helper(h) => !h.is_gone(),
            Executor::Inline(_) | Executor::Uring(_) => true,
        }
    }

    /// The helper process's pid, where there is one.
    pub fn helper_pid(&self) -> Option<i32> {
        match self {
            Executor::Inline(_) => None,
            Executor::Uring(u) => Some(u.helper().pid()),
            Executor::Helper(h) => Some(h.pid()),
        }
    }
}

/// `choose` without the logging, with the io_uring constructor as a parameter so the fallback
/// is testable where io_uring works. Returns the executor and the line to log.
fn choose_with(
    mode: DiskIo,
    ring: fn() -> Result<Ring, String>,
) -> Result<(Executor, String), String> {
    // The helper first: it must be forked before the ring exists (io_uring's kernel workers
    // belong to the process; the child must inherit neither them nor the ring).
    let helper =
        Helper::spawn().map_err(|e| format!("disk_io: cannot start the helper process: {e}"))?;
    match mode {
        DiskIo::Helper => Ok((
            Executor::Helper(Box::new(helper)),
            "disk_io: helper process (disk_io = helper)".into(),
        )),
        DiskIo::Uring => match ring() {
            Ok(r) => Ok((
                Executor::Uring(Box::new(Uring::new(r, helper))),
                "disk_io: uring (disk_io = uring)".into(),
            )),
            Err(why) => Err(format!(
                "disk_io = uring, but io_uring is unavailable ({why})"
            )),
        },
        DiskIo::Auto => match ring() {
            Ok(r) => Ok((
                Executor::Uring(Box::new(Uring::new(r, helper))),
                "disk_io: uring (io_uring supports every operation used)".into(),
            )),
            Err(why) => Ok((
                Executor::Helper(Box::new(helper)),
                format!("disk_io: uring unavailable ({why}); using the helper process"),
            )),
        },
    }
}

fn path_ok(p: &CString) -> bool {
    p.as_bytes_with_nul().len() <= crate::limits::EXEC_PATH_MAX
}

/// The size limits every backend shares, so a caller sees the same refusals everywhere.
fn check_sizes(op: &DiskOp) -> Result<(), Reject> {
    use crate::limits::{EXEC_CREDENTIAL_MAX, EXEC_WRITE_MAX, PASSWORD_MAX};
    let ok = match op {
        DiskOp::Open { path, .. } | DiskOp::Unlink { path, .. } | DiskOp::Mkdir { path, .. } => {
            path_ok(path)
        }
        DiskOp::WireSize { paths, .. } => {
            paths.len() <= crate::limits::EXEC_WIRE_SIZE_BATCH
                && paths
                    .iter()
                    .all(|p| p.as_bytes().len() <= crate::limits::FILE_NAME_MAX)
        }
        DiskOp::MaildirCopy {
            name, head, source, ..
        } => {
            name.as_bytes().len() <= crate::limits::FILE_NAME_MAX
                && path_ok(&source.path)
                && head.len() <= crate::limits::EXEC_COPY_HEAD_MAX
        }
        DiskOp::Rename { from, to, .. }
        | DiskOp::RenameNoReplace { from, to, .. }
        | DiskOp::Link { from, to, .. } => path_ok(from) && path_ok(to),
        DiskOp::Write { data, .. } => data.len() <= EXEC_WRITE_MAX,
        DiskOp::Warm { len, .. } => *len <= crate::limits::EXEC_WARM_MAX,
        DiskOp::VerifyPassword { hash, password } => {
            let cred_len = match hash {
                None => 0,
                Some(Credential::Sha512Crypt(s)) => s.len(),
                Some(Credential::Plain(p)) => p.len(),
            };
            // A longer password cannot arrive over POP (a command line is at most 255 octets).
            password.len() <= PASSWORD_MAX && cred_len <= EXEC_CREDENTIAL_MAX
        }
        DiskOp::Fdatasync { .. }
        | DiskOp::Fsync { .. }
        | DiskOp::Syncfs { .. }
        | DiskOp::Close { .. }
        | DiskOp::ReadDir { .. }
        | DiskOp::Rest => true,
    };
    if ok { Ok(()) } else { Err(Reject::TooLarge) }
}

/// `max` as the backends use it: at least one name, at most the limit.
fn readdir_max(max: usize) -> usize {
    max.clamp(1, crate::limits::EXEC_READDIR_MAX_NAMES)
}
