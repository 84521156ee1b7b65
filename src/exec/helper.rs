//! The helper process: one child forked at start that makes the blocking calls (file
//! operations, `ReadDir`, password checks) and answers over a `SOCK_SEQPACKET` socketpair, so
//! the reactor never waits on the disk or the CPU. One thread per process, always: the child
//! runs one request at a time, in order.
//!
//! The child ends when its parent does (`PR_SET_PDEATHSIG` = SIGKILL, and a check that the
//! parent had not already gone before that was set) or when it reads EOF on its socket (the
//! parent closed its end: `Drop` does so, then reaps the child so no zombie is left). It
//! ignores SIGINT, SIGTERM, SIGHUP, SIGUSR1/2 and SIGPIPE, so a signal sent to the process
//! group (a Ctrl-C) does not fail the parent's writes in flight; the parent decides when to
//! stop. It closes every inherited descriptor but its socket and stdin/stdout/stderr.
//!
//! Parent side: the socket is non-blocking and registered in the poll for reading, and for
//! writing only while frames that found the socket buffer full wait in a queue (bounded by
//! the in-flight limit); an idle helper costs no wake-ups. If the helper dies, every
//! operation in flight completes with `EPIPE` and later submits are refused with `Gone`.
//!
//! Password checks wait on the parent's side: the helper holds one at a time, and a new one
//! goes out at the end of a reactor turn (`end_turn`) only when no other operation is in the
//! helper, or when the last check ended `limits::HELPER_CHECK_YIELD` ago. A check is
//! milliseconds of CPU; without this, a flood of logins queued every file operation (a
//! message's fdatasync, its rename, the directory's fsync: three in a row before its `250`)
//! behind all of them. Now a file operation waits for the one check in progress at most,
//! and a stream of file operations still lets a check through every few milliseconds.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::slots::Slots;
use super::{Completion, DiskOp, Errno, Handle, Outcome, Reject, Rejected, sys, wire};
use crate::limits;

/// An operation the helper has (or will have) in hand.
struct Pending {
    tag: u64,
    /// A write's buffer, copied into the frame and handed back in the completion.
    kept: Option<Vec<u8>>,
}

/// A frame waiting for room in the socket, with a descriptor to pass along (SCM_RIGHTS).
struct Outgoing {
    seq: usize,
    frame: Vec<u8>,
    fd: Option<RawFd>,
}

pub struct Helper {
    sock: Option<OwnedFd>,
    pid: libc::pid_t,
    slots: Slots<Pending>,
    outq: VecDeque<Outgoing>,
    /// Completions made up locally (EPIPE after the helper died), handed out by `drain`.
    failed: Vec<Completion>,
    gone: bool,
    recv_buf: Vec<u8>,
    /// Where the socket is registered, to add or drop writability as the queue fills/empties.
    poll: Option<(Registry, Token)>,
    want_write: bool,
    /// Password checks submitted and not yet sent, oldest first (see the module docs).
    checks: VecDeque<(u64, DiskOp)>,
    /// The slot of the check the helper holds, if any.
    check_seq: Option<usize>,
    /// When the helper's last check ended (or the helper started).
    check_ended: Instant,
    /// The poll said the socket may hold replies (set by `signalled`, cleared when a read
    /// finds none): `drain_signalled` reads only then, not once more per drain.
    readable: bool,
}

impl Helper {
    /// The helper process is gone (its socket closed): nothing more can run here.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Forks the helper. Call while the process is single-threaded: the child runs only the
    /// loop below (system calls and glibc's fork-safe allocator), never the parent's code.
    pub fn spawn() -> io::Result<Helper> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair returned two fresh descriptors we now own.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        size_send_buffer(ours.as_raw_fd());
        size_send_buffer(theirs.as_raw_fd());
        // Non-blocking before the fork, so nothing can fail after it with a child to reap.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(ours.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only runs `child_main`, which never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            let (sock, parents_end) = (theirs.as_raw_fd(), ours.as_raw_fd());
            std::mem::forget(theirs);
            std::mem::forget(ours);
            child_main(sock, parents_end, parent);
        }
        drop(theirs);
        Ok(Helper {
            sock: Some(ours),
            pid,
            slots: Slots::new(limits::EXEC_MAX_IN_FLIGHT),
            outq: VecDeque::new(),
            failed: Vec::new(),
            gone: false,
            recv_buf: Vec::new(),
            poll: None,
            want_write: false,
            checks: VecDeque::new(),
            check_seq: None,
            check_ended: Instant::now(),
            readable: true,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let Some(sock) = &self.sock else {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        };
        let fd = sock.as_raw_fd();
        self.poll = Some((registry.try_clone()?, token));
        self.want_write = false;
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        // Frames submitted before registration may be waiting for room already.
        self.update_interest();
        Ok(())
    }

    pub(super) fn submit(&mut self, tag: u64, op: DiskOp) -> Result<(), Rejected> {
        self.submit_with_fd(tag, op, None)
    }

    /// Submits `op`; with `fd`, that descriptor travels with the frame (the uring backend's
    /// `ReadDir`: the helper reads a directory the reactor opened).
    pub(super) fn submit_with_fd(
        &mut self,
        tag: u64,
        op: DiskOp,
        fd: Option<RawFd>,
    ) -> Result<(), Rejected> {
        if self.gone {
            self.try_reap();
            return Err(Rejected {
                reason: Reject::Gone,
                op,
            });
        }
        if self.slots.len() + self.checks.len() >= limits::EXEC_MAX_IN_FLIGHT
            || self.slots.is_full()
        {
            return Err(Rejected {
                reason: Reject::Full,
                op,
            });
        }
        if matches!(op, DiskOp::VerifyPassword { .. }) {
            self.checks.push_back((tag, op));
            return Ok(());
        }
        self.send(tag, op, fd).map(|_| ())
    }

    /// Puts `op` in a slot and its frame on the way.
    fn send(&mut self, tag: u64, op: DiskOp, fd: Option<RawFd>) -> Result<usize, Rejected> {
        let Ok(seq) = self.slots.insert(Pending { tag, kept: None }) else {
            return Err(Rejected {
                reason: Reject::Full,
                op,
            });
        };
        let frame = wire::encode_request(seq as u64, &op, fd.is_some());
        if let DiskOp::Write { data, .. } = op
            && let Some(p) = self.slots.get_mut(seq)
        {
            p.kept = Some(data);
        }
        self.outq.push_back(Outgoing { seq, frame, fd });
        self.flush();
        Ok(seq)
    }

    /// The end of a reactor turn, after everything the turn submitted: sends the oldest
    /// waiting password check if the helper holds none and either has no other operation or
    /// has run file operations alone for `limits::HELPER_CHECK_YIELD`. Progress needs no
    /// timer: a check held back waits for an operation in flight, whose reply ends a turn.
    pub(super) fn end_turn(&mut self) {
        // No clock read in the common turn: nothing waiting, or a check already out.
        if self.checks.is_empty() || self.gone || self.check_seq.is_some() {
            return;
        }
        if !check_may_go(self.slots.len() > 0, self.check_ended.elapsed()) {
            return;
        }
        let Some((tag, op)) = self.checks.pop_front() else {
            return;
        };
        match self.send(tag, op, None) {
            Ok(seq) => self.check_seq = Some(seq),
            // Slots full: it waits for the next turn's end.
            Err(r) => self.checks.push_front((tag, r.op)),
        }
    }

    /// Password checks submitted and not yet sent to the helper.
    #[cfg(test)]
    pub(super) fn waiting_checks(&self) -> usize {
        self.checks.len()
    }

    /// Frames waiting for room in the socket.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.outq.len()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() + self.failed.len() + self.checks.len()
    }

    /// Sends queued frames until the socket is full.
    fn flush(&mut self) {
        self.send_queued();
        self.update_interest();
    }

    /// Asks the poll for writability only while frames wait for room, so replies are the only
    /// wake-ups otherwise (a unix socket reports "writable" each time the helper reads).
    fn update_interest(&mut self) {
        let want = !self.outq.is_empty();
        if want == self.want_write {
            return;
        }
        let (Some((registry, token)), Some(sock)) = (&self.poll, &self.sock) else {
            return;
        };
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let fd = sock.as_raw_fd();
        match registry.reregister(&mut SourceFd(&fd), *token, interest) {
            Ok(()) => self.want_write = want,
            Err(e) => {
                log::error!("disk_io: cannot change the helper socket's poll interest ({e})");
                self.fail_all();
            }
        }
    }

    fn send_queued(&mut self) {
        while let Some(next) = self.outq.front() {
            let Some(sock) = &self.sock else { return };
            match send_frame(sock.as_raw_fd(), &next.frame, next.fd) {
                Ok(()) => {
                    self.outq.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => {
                    log::error!("disk_io: the helper process is unreachable ({e})");
                    self.fail_all();
                    return;
                }
                // This frame alone could not be sent (EBADF: the descriptor to pass along is
                // not open): it fails, the helper stays.
                Err(e) => {
                    let seq = next.seq;
                    self.outq.pop_front();
                    if let Some(p) = self.slots.remove(seq) {
                        let errno = Errno(e.raw_os_error().unwrap_or(libc::EIO));
                        self.failed.push(Completion {
                            tag: p.tag,
                            result: Err(errno),
                        });
                    }
                }
            }
        }
    }

    /// The poll reported the socket readable: the next `drain_signalled` reads it.
    pub(super) fn signalled(&mut self) {
        self.readable = true;
    }

    pub(super) fn drain(&mut self, out: &mut Vec<Completion>) {
        self.readable = true;
        self.drain_signalled(out);
    }

    /// Like `drain`, but reads the socket only if the poll said it is readable since a read
    /// last found it empty (the socket is edge-triggered: a reply arriving later is a new
    /// event). Spares the reactor a failed `recv` per drain.
    pub(super) fn drain_signalled(&mut self, out: &mut Vec<Completion>) {
        self.flush();
        out.append(&mut self.failed);
        if !self.readable {
            return;
        }
        if self.recv_buf.is_empty() {
            self.recv_buf = vec![0; limits::EXEC_FRAME_MAX];
        }
        while let Some(sock) = &self.sock {
            // SAFETY: the buffer is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    self.recv_buf.as_mut_ptr().cast(),
                    self.recv_buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.readable = false;
                        break;
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        log::error!("disk_io: reading from the helper process failed ({e})");
                        self.fail_all();
                        break;
                    }
                }
            }
            if n == 0 {
                log::error!("disk_io: the helper process exited");
                self.fail_all();
                break;
            }
            let reply = wire::decode_reply(&self.recv_buf[..n as usize]);
            let Some((seq, mut result)) = reply else {
                log::error!("disk_io: a malformed reply from the helper process");
                self.fail_all();
                break;
            };
            let seq = usize::try_from(seq).ok();
            if seq.is_some() && seq == self.check_seq {
                self.check_seq = None;
                self.check_ended = Instant::now();
            }
            let Some(p) = seq.and_then(|s| self.slots.remove(s)) else {
                log::error!("disk_io: the helper process answered an unknown request");
                self.fail_all();
                break;
            };
            if let (Ok(Outcome::Written(buf)), Some(kept)) = (&mut result, p.kept) {
                *buf = kept;
            }
            out.push(Completion { tag: p.tag, result });
        }
        out.append(&mut self.failed);
    }

    /// The helper is unusable: every operation in flight fails with EPIPE, nothing more is
    /// sent, and the socket is closed so the child (if alive) sees EOF and exits.
    fn fail_all(&mut self) {
        self.gone = true;
        self.outq.clear();
        self.sock = None;
        self.check_seq = None;
        self.try_reap();
        let waiting = self.checks.drain(..).map(|(tag, _)| tag);
        for tag in self
            .slots
            .drain_all()
            .into_iter()
            .map(|p| p.tag)
            .chain(waiting)
        {
            self.failed.push(Completion {
                tag,
                result: Err(Errno(libc::EPIPE)),
            });
        }
    }

    /// Reaps the child if it has exited, without waiting: a helper that died while the server
    /// runs must not stay a zombie until the server exits. Tried when the helper is found
    /// gone and again at each refused submit (the child may still be exiting the first time).
    fn try_reap(&mut self) {
        if self.pid <= 0 {
            return;
        }
        let mut status = 0;
        // SAFETY: waits for our own child, without blocking.
        if unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } == self.pid {
            self.pid = 0;
        }
    }

    /// Closes the parent's end and waits for the child; returns its wait status.
    pub fn close_and_wait(mut self) -> io::Result<libc::c_int> {
        self.sock = None;
        let status = reap(self.pid);
        self.pid = 0;
        status
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.sock = None;
        if self.pid > 0 {
            let _ = reap(self.pid);
        }
    }
}

/// The peer is gone (or the socket unusable): nothing more can be sent.
/// May a waiting password check go to a helper that holds none? Yes when it holds no other
/// operation; while it does (a commit's next step may follow at once), only once the last
/// check ended `limits::HELPER_CHECK_YIELD` ago, so checks are not starved.
fn check_may_go(file_ops_in_helper: bool, since_last_check: std::time::Duration) -> bool {
    !file_ops_in_helper || since_last_check >= limits::HELPER_CHECK_YIELD
}

#[cfg(test)]
#[test]
fn checks_yield_to_file_ops_for_a_while_only() {
    use std::time::Duration;
    assert!(check_may_go(false, Duration::ZERO));
    assert!(!check_may_go(true, Duration::ZERO));
    assert!(!check_may_go(
        true,
        limits::HELPER_CHECK_YIELD - Duration::from_micros(1)
    ));
    assert!(check_may_go(true, limits::HELPER_CHECK_YIELD));
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNREFUSED | libc::ENOTSOCK)
    )
}

/// Asks for a send buffer of a few whole frames, so the largest frame always fits even
/// where `net.core.wmem_default` is small (best effort: capped by `wmem_max`).
fn size_send_buffer(fd: RawFd) {
    let size = (4 * limits::EXEC_FRAME_MAX) as libc::c_int;
    // SAFETY: `size` is a valid c_int option value for the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// waitpid until the child has exited (it does on EOF, after the operation it is running).
fn reap(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One sendmsg of a whole frame, with an optional descriptor as SCM_RIGHTS.
fn send_frame(sock: RawFd, frame: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // Room for one cmsghdr carrying one int, aligned as CMSG_SPACE requires.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_* compute within `cbuf`, which is large enough for one descriptor.
        unsafe {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` describes valid memory.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One blocking recvmsg: the frame's length and a descriptor that came with it, if any.
fn recv_frame(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in `send_frame`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` describes valid memory.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it within its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((n as usize, fd))
}

/// The child: set up, then answer requests until EOF. Never returns.
fn child_main(sock: RawFd, parents_end: RawFd, parent: libc::pid_t) -> ! {
    // Whatever happens (even a panic), the child must not run on into the parent's code.
    let code = std::panic::catch_unwind(|| {
        child_setup(sock, parents_end, parent);
        serve(CHILD_SOCK)
    })
    .unwrap_or(101);
    // SAFETY: _exit ends the process without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

/// Where the child keeps its socket: every other descriptor above stderr is closed.
const CHILD_SOCK: RawFd = 3;

fn child_setup(sock: RawFd, parents_end: RawFd, parent: libc::pid_t) {
    // SAFETY: plain process-attribute calls on our own process.
    unsafe {
        // Our copy of the parent's end first (it may sit below 3 where stdio was closed): while
        // we hold it, we would never read EOF.
        libc::close(parents_end);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        if sock != CHILD_SOCK {
            if libc::dup3(sock, CHILD_SOCK, libc::O_CLOEXEC) < 0 {
                libc::_exit(1);
            }
            libc::close(sock);
        }
        let first = (CHILD_SOCK + 1) as libc::c_uint;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) < 0 {
            // Kernels before 5.9: close what a server of this size can have open.
            for fd in first as RawFd..65536 {
                libc::close(fd);
            }
        }
    }
}

/// True if `op` would use or close the helper's own socket.
fn names_socket(op: &DiskOp) -> bool {
    let is = |h: &Handle| h.0 == CHILD_SOCK;
    let dir_is = |d: &Option<Handle>| d.as_ref().is_some_and(is);
    match op {
        DiskOp::Open { dir, .. } | DiskOp::Unlink { dir, .. } | DiskOp::Mkdir { dir, .. } => {
            dir_is(dir)
        }
        DiskOp::Write { file, .. }
        | DiskOp::Warm { file, .. }
        | DiskOp::Fdatasync { file }
        | DiskOp::Fsync { file }
        | DiskOp::Syncfs { file }
        | DiskOp::Close { file } => is(file),
        DiskOp::Rename {
            from_dir, to_dir, ..
        }
        | DiskOp::RenameNoReplace {
            from_dir, to_dir, ..
        }
        | DiskOp::Link {
            from_dir, to_dir, ..
        } => dir_is(from_dir) || dir_is(to_dir),
        DiskOp::ReadDir { dir, .. }
        | DiskOp::WireSize { dir, .. }
        | DiskOp::MaildirCopy { dir, .. } => is(dir),
        DiskOp::VerifyPassword { .. } | DiskOp::Rest => false,
    }
}

/// The blocking loop: one request, one reply. Returns the exit code.
fn serve(sock: RawFd) -> i32 {
    let mut buf = vec![0u8; limits::EXEC_FRAME_MAX];
    let mut rest_next = false;
    loop {
        if std::mem::take(&mut rest_next) {
            // Last before the wait: only what the next request runs is mapped again.
            crate::daemon::pages::release_startup_code();
        }
        let (n, passed) = match recv_frame(sock, &mut buf) {
            Ok((0, _)) => return 0,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        };
        let reply = match wire::decode_request(&buf[..n]) {
            Ok(req) => {
                let op = match (req.op, &passed) {
                    (DiskOp::ReadDir { cursor, max, .. }, Some(fd)) if req.fd_attached => {
                        DiskOp::ReadDir {
                            dir: Handle(fd.as_raw_fd()),
                            cursor,
                            max,
                        }
                    }
                    (DiskOp::WireSize { paths, .. }, Some(fd)) if req.fd_attached => {
                        DiskOp::WireSize {
                            dir: Handle(fd.as_raw_fd()),
                            paths,
                        }
                    }
                    (
                        DiskOp::MaildirCopy {
                            name,
                            head,
                            source,
                            sync,
                            ..
                        },
                        Some(fd),
                    ) if req.fd_attached => DiskOp::MaildirCopy {
                        dir: Handle(fd.as_raw_fd()),
                        name,
                        head,
                        source,
                        sync,
                    },
                    (DiskOp::Warm { offset, len, .. }, Some(fd)) if req.fd_attached => {
                        DiskOp::Warm {
                            file: Handle(fd.as_raw_fd()),
                            offset,
                            len,
                        }
                    }
                    // `Executor::submit_own`: the parent's descriptor, passed along.
                    (DiskOp::Fdatasync { .. }, Some(fd)) if req.fd_attached => DiskOp::Fdatasync {
                        file: Handle(fd.as_raw_fd()),
                    },
                    (DiskOp::Fsync { .. }, Some(fd)) if req.fd_attached => DiskOp::Fsync {
                        file: Handle(fd.as_raw_fd()),
                    },
                    (DiskOp::Syncfs { .. }, Some(fd)) if req.fd_attached => DiskOp::Syncfs {
                        file: Handle(fd.as_raw_fd()),
                    },
                    (
                        DiskOp::Link {
                            from_dir: None,
                            from,
                            to,
                            ..
                        },
                        Some(fd),
                    ) if req.fd_attached => DiskOp::Link {
                        from_dir: None,
                        from,
                        to_dir: Some(Handle(fd.as_raw_fd())),
                        to,
                    },
                    (op, _) => op,
                };
                rest_next = matches!(op, DiskOp::Rest);
                if names_socket(&op) {
                    // Only a caller's bug can name it; answering keeps the protocol intact.
                    wire::encode_reply(req.seq, &Err(Errno(libc::EBADF)))
                } else {
                    wire::encode_reply(req.seq, &sys::run(op))
                }
            }
            Err(Some(seq)) => wire::encode_reply(seq, &Err(Errno(libc::EINVAL))),
            // No sequence number to answer: end, so the parent fails everything in flight.
            Err(None) => return 2,
        };
        drop(passed);
        loop {
            // SAFETY: the reply buffer is valid for its length.
            let sent =
                unsafe { libc::send(sock, reply.as_ptr().cast(), reply.len(), libc::MSG_NOSIGNAL) };
            if sent >= 0 {
                break;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return 1;
            }
        }
    }
}
