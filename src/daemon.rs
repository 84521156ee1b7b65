//! Running from init: detaching, the pid file, the privilege drop, the state directories and
//! where log lines go. Owns the start-up order after the listeners are bound (see `settle`)
//! and the start-up report a detached daemon sends back to the command that started it.
//!
//! Detaching forks with a pipe: the child does the rest of the start-up and writes `ready`
//! (or an exit status and the error line) into it; the parent waits for that line, prints an
//! error to its stderr and exits with the child's status. So `postling` returns to an init
//! script only once the daemon really serves, and every start-up failure, even one after the
//! fork, is a non-zero exit with a message.

pub mod accounts;
pub mod events;
pub mod flood;
pub mod log;
pub mod pages;
pub mod pidfile;
pub mod privilege;
pub mod state;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use crate::config::Config;
use crate::limits;

use pidfile::PidFile;
use privilege::Identity;

/// Exit status for an OS failure at start (sysexits.h EX_OSERR).
pub const EX_OSERR: u8 = 71;
/// Exit status for a configuration error (sysexits.h EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

/// A start-up failure: the exit status and one line for the administrator (without the
/// `postling: ` prefix, which the printer adds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    pub status: u8,
    pub message: String,
}

impl StartError {
    pub fn os(message: impl Into<String>) -> StartError {
        StartError {
            status: EX_OSERR,
            message: message.into(),
        }
    }

    pub fn config(message: impl Into<String>) -> StartError {
        StartError {
            status: EX_CONFIG,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of `detach` in each of the two processes.
pub enum Detached {
    /// The original process, once the daemon reported: exit with this status.
    Parent(u8),
    /// The daemon: finish the start-up, then report through this.
    Child(Readiness),
}

/// The daemon's side of the start-up report. Reporting consumes it; dropping it unreported
/// (an early return nobody thought of) reports a failure, so the parent never waits in vain.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// Foreground (`-f`, or before the fork): failures go straight to stderr.
    pub fn foreground() -> Readiness {
        Readiness { pipe: None }
    }

    /// The daemon serves: the waiting parent exits 0.
    pub fn ready(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // A parent that is gone (killed) cannot be told; the daemon serves anyway.
            let _ = pipe.write_all(b"ready\n");
        }
    }

    /// Start-up failed: the parent (or, in the foreground, this process) prints the line.
    pub fn fail(mut self, error: &StartError) {
        match self.pipe.take() {
            Some(mut pipe) => {
                let _ = pipe.write_all(&encode_failure(error));
            }
            None => eprintln!("postling: {}", error.message),
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(&encode_failure(&StartError::os(
                "the daemon ended its start-up without reporting ready (a bug; see the log)",
            )));
        }
    }
}

/// `<status> <message>\n`, the message on one line and cut to fit the parent's buffer.
fn encode_failure(error: &StartError) -> Vec<u8> {
    let mut line = format!("{} ", error.status).into_bytes();
    let room = limits::START_REPORT_MAX.saturating_sub(line.len() + 1);
    line.extend(
        error
            .message
            .bytes()
            .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .take(room),
    );
    line.push(b'\n');
    line
}

/// What the parent read from the pipe.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    Ready,
    Failed(u8, String),
    /// EOF before any line: the child died (a signal, an abort) before reporting.
    Nothing,
}

/// Parses the child's report. A status that is not one postling uses becomes 71, so a
/// garbled report is still a failure.
pub fn parse_report(bytes: &[u8]) -> Report {
    let line = match memchr::memchr(b'\n', bytes) {
        Some(end) => &bytes[..end],
        None => bytes,
    };
    if line.is_empty() {
        return Report::Nothing;
    }
    if line == b"ready" {
        return Report::Ready;
    }
    let text = String::from_utf8_lossy(line);
    let (status, message) = text.split_once(' ').unwrap_or(("", &text));
    let status = match status.parse::<u8>() {
        Ok(s) if s == EX_OSERR || s == EX_CONFIG => s,
        _ => EX_OSERR,
    };
    Report::Failed(status, message.to_string())
}

/// Forks. The child starts a new session (no controlling terminal, no signals from the
/// shell's job control), points stdin/stdout/stderr at /dev/null and returns its `Readiness`;
/// the parent waits for the child's report and returns the status to exit with. Call only
/// while the process has a single thread.
pub fn detach() -> Result<Detached, StartError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(StartError::os(format!(
            "cannot detach: pipe: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded (the caller's contract), so the child's copy of memory is
    // consistent; both sides continue as ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(StartError::os(format!(
            "cannot detach: fork: {}",
            io::Error::last_os_error()
        ))),
        0 => {
            drop(read_end);
            let readiness = Readiness {
                pipe: Some(File::from(write_end)),
            };
            match become_session_leader() {
                Ok(()) => Ok(Detached::Child(readiness)),
                Err(e) => {
                    readiness.fail(&e);
                    // SAFETY: leaving the child without unwinding into the parent's frames.
                    unsafe { libc::_exit(i32::from(e.status)) }
                }
            }
        }
        child => {
            drop(write_end);
            Ok(Detached::Parent(wait_for_report(
                File::from(read_end),
                child,
            )))
        }
    }
}

/// setsid, then stdio to /dev/null: the daemon must not hold the starting terminal open.
fn become_session_leader() -> Result<(), StartError> {
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        if libc::setsid() == -1 {
            return Err(StartError::os(format!(
                "cannot detach: setsid: {}",
                io::Error::last_os_error()
            )));
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            return Err(StartError::os(format!(
                "cannot detach: open /dev/null: {}",
                io::Error::last_os_error()
            )));
        }
        for fd in 0..3 {
            if libc::dup2(null, fd) < 0 {
                return Err(StartError::os(format!(
                    "cannot detach: dup2: {}",
                    io::Error::last_os_error()
                )));
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
    Ok(())
}

/// The parent's side: read the child's report until EOF and turn it into an exit status.
fn wait_for_report(mut pipe: File, child: libc::pid_t) -> u8 {
    let mut buf = [0u8; limits::START_REPORT_MAX];
    let mut len = 0;
    while len < buf.len() {
        match pipe.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if memchr::memchr(b'\n', &buf[..len]).is_some() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    match parse_report(&buf[..len]) {
        Report::Ready => 0,
        Report::Failed(status, message) => {
            // The child exits right after its report; wait for it, so that its listening
            // sockets are closed when we return (an init script that retries at once must not
            // find the ports still taken).
            let mut ignored = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child, &mut ignored, 0) };
            eprintln!("postling: {message}");
            status
        }
        Report::Nothing => {
            let mut status = 0;
            // SAFETY: waits for our own child, which closed the pipe by exiting.
            let reaped = unsafe { libc::waitpid(child, &mut status, 0) } == child;
            let how = if !reaped {
                "its status is unknown".to_string()
            } else if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exit status {}", libc::WEXITSTATUS(status))
            };
            eprintln!("postling: the daemon died during start-up ({how}); see the log");
            EX_OSERR
        }
    }
}

/// The start-up after binding (and after the fork): record the daemon's pid, create the
/// state directories (owned by `user`), drop privileges, then check that the running user
/// can write both directories. The order matters: directories are created and chowned while
/// still root; the writability check runs as the user who will write them.
pub fn settle(
    config: &Config,
    identity: &Identity,
    pid_file: Option<&mut PidFile>,
) -> Result<(), StartError> {
    if let Some(p) = pid_file {
        p.write_pid(std::process::id())?;
    }
    let owner = identity.owner();
    state::prepare("spool_dir", &config.spool_dir, owner)?;
    state::prepare("mailbox_dir", &config.mailbox_dir, owner)?;
    if let Identity::DropTo(account) = identity {
        privilege::drop_to(account)?;
        ::log::info!(
            "running as user {} (uid {}, gid {})",
            account.name,
            account.uid,
            account.gid
        );
    }
    let running = privilege::running_user();
    state::check_writable("spool_dir", &config.spool_dir, &running)?;
    state::check_writable("mailbox_dir", &config.mailbox_dir, &running)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ready_and_failures_round_trip() {
        assert_eq!(parse_report(b"ready\n"), Report::Ready);
        let e = StartError::os("spool_dir /x is not writable");
        assert_eq!(
            parse_report(&encode_failure(&e)),
            Report::Failed(71, "spool_dir /x is not writable".into())
        );
        let e = StartError::config("bad\nline");
        assert_eq!(
            parse_report(&encode_failure(&e)),
            Report::Failed(78, "bad line".into()),
            "a message stays on one line"
        );
    }

    #[test]
    fn report_nothing_and_garbage() {
        assert_eq!(parse_report(b""), Report::Nothing);
        assert_eq!(parse_report(b"\n"), Report::Nothing);
        assert_eq!(
            parse_report(b"0 pretend success\n"),
            Report::Failed(71, "pretend success".into()),
            "only 71 and 78 are failure statuses; anything else is still a failure"
        );
        assert_eq!(
            parse_report(b"garbage"),
            Report::Failed(71, "garbage".into())
        );
    }

    #[test]
    fn long_failure_is_cut_to_the_report_limit() {
        let e = StartError::os("x".repeat(10 * limits::START_REPORT_MAX));
        let bytes = encode_failure(&e);
        assert_eq!(bytes.len(), limits::START_REPORT_MAX);
        assert_eq!(bytes.last(), Some(&b'\n'));
        match parse_report(&bytes) {
            Report::Failed(71, m) => assert_eq!(m.len(), limits::START_REPORT_MAX - 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readiness_reports_through_the_pipe_and_on_drop() {
        let pipe = |f: &dyn Fn(Readiness)| {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
            f(Readiness { pipe: Some(w) });
            let mut out = Vec::new();
            let mut r = r;
            r.read_to_end(&mut out).unwrap();
            parse_report(&out)
        };
        assert_eq!(pipe(&|r| r.ready()), Report::Ready);
        assert_eq!(
            pipe(&|r| r.fail(&StartError::config("x: y"))),
            Report::Failed(78, "x: y".into())
        );
        match pipe(&|r| drop(r)) {
            Report::Failed(71, m) => assert!(m.contains("without reporting ready"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
