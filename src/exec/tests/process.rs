//! The helper as a process: it exits and is reaped when its parent's end closes, a dead
//! helper fails what was in flight instead of hanging it, its socket is not a handle, frames
//! wait for room, and in uring mode password hashing burns the helper's CPU, not ours.

use super::{ALICE_HASH, Driver, helper, uring};
use crate::exec::choose_with;
use crate::exec::*;
use crate::limits;

/// In uring mode the password check runs in the helper process, not in the caller: the
/// helper's CPU time grows by the hashing while ours barely does.
#[test]
fn uring_mode_hashes_in_the_helper() {
    let Some(exec) = uring() else { return };
    let pid = exec.helper_pid().unwrap();
    let mut d = Driver::new(exec);
    let before = cpu_ticks(pid);
    for _ in 0..40 {
        let op = DiskOp::VerifyPassword {
            hash: Some(crate::auth::Credential::Sha512Crypt(ALICE_HASH.into())),
            password: b"alice-pw".to_vec(),
        };
        assert_eq!(d.run(op), Ok(Outcome::Verified(true)));
    }
    // 40 checks of 5 000 rounds are well over a clock tick of the helper's CPU.
    assert!(cpu_ticks(pid) > before, "the helper did no work");
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn helper_exits_when_its_parent_end_closes() {
    let h = Helper::spawn().unwrap();
    let pid = h.pid();
    let status = h.close_and_wait().unwrap();
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
    // Reaped: no zombie is left, the pid is no longer our child.
    let mut st = 0;
    // SAFETY: `st` is writable.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ECHILD)
    );
}

#[test]
fn dropping_the_executor_reaps_the_helper() {
    let exec = helper();
    let pid = exec.helper_pid().unwrap();
    drop(exec);
    let mut st = 0;
    // SAFETY: `st` is writable.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ECHILD)
    );
}

/// A helper killed under the reactor: what was in flight fails with EPIPE (never hangs), and
/// later submits are refused with `Gone`.
#[test]
fn a_dead_helper_fails_in_flight_ops_with_epipe() {
    let exec = helper();
    let pid = exec.helper_pid().unwrap();
    let mut d = Driver::new(exec);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let op = DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    d.exec.submit(5, op).unwrap();
    let got = d.wait(1);
    assert_eq!(got[0].tag, 5);
    assert_eq!(got[0].result, Err(Errno(libc::EPIPE)));
    let again = d
        .exec
        .submit(6, DiskOp::Fsync { file: Handle(0) })
        .unwrap_err();
    assert_eq!(again.reason, Reject::Gone);
    assert_eq!(d.exec.in_flight(), 0);
}

/// Inside the helper, no operation may touch its socket (a caller's stray handle would
/// otherwise corrupt the protocol or cut the helper off).
#[test]
fn the_helper_socket_is_not_a_handle() {
    let mut d = Driver::new(helper());
    let sock = Handle(3);
    assert_eq!(d.run(DiskOp::Close { file: sock }), Err(Errno(libc::EBADF)));
    let write = DiskOp::Write {
        file: sock,
        offset: 0,
        data: b"junk".to_vec(),
    };
    assert_eq!(d.run(write), Err(Errno(libc::EBADF)));
    let check = DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    assert_eq!(d.run(check), Ok(Outcome::Verified(false)));
}

/// More write data than the socket buffer holds: frames wait in the queue and go out as room
/// appears (on a reply or a writable event), and every write lands whole in its place.
#[test]
fn helper_frames_wait_for_room_and_all_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Driver::new(helper());
    let path = tmp.path().join("big");
    let flags = libc::O_WRONLY | libc::O_CREAT;
    let f = d.open(None, path.to_str().unwrap(), flags).unwrap();
    // A slow password check first keeps the helper busy while the writes pile up, so the
    // socket buffer fills however fast the disk is.
    let slow = ALICE_HASH.replacen("$6$", "$6$rounds=20000$", 1);
    let hash = Some(crate::auth::Credential::Sha512Crypt(slow));
    let check = DiskOp::VerifyPassword {
        hash,
        password: b"alice-pw".to_vec(),
    };
    d.exec.submit(u64::MAX, check).unwrap();
    // (Checks go to the helper at a turn's end, with nothing else in it.)
    d.exec.end_turn();
    let n = 64usize;
    for i in 0..n {
        let data = vec![i as u8; limits::EXEC_WRITE_MAX];
        let offset = (i * limits::EXEC_WRITE_MAX) as u64;
        d.exec
            .submit(
                i as u64,
                DiskOp::Write {
                    file: f,
                    offset,
                    data,
                },
            )
            .unwrap();
    }
    let Executor::Helper(h) = &d.exec else {
        unreachable!()
    };
    assert!(
        h.queued() > 0,
        "4 MiB fit the socket buffer: the queue was not exercised"
    );
    let mut got = d.wait(n + 1);
    let slow = got.iter().position(|c| c.tag == u64::MAX).unwrap();
    assert_eq!(got.remove(slow).result, Ok(Outcome::Verified(false)));
    assert!(got.iter().all(
        |c| matches!(&c.result, Ok(Outcome::Written(b)) if b.len() == limits::EXEC_WRITE_MAX)
    ));
    d.ok(DiskOp::Close { file: f });
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), n * limits::EXEC_WRITE_MAX);
    assert!((0..n).all(|i| bytes[i * limits::EXEC_WRITE_MAX] == i as u8));
}

/// A real refusal, not a stand-in: in a child whose seccomp filter answers io_uring_setup
/// with EPERM (as a container's default profile does), `Uring::ring` fails with that reason
/// and `auto` runs the helper, whose operations work. The child reports by exit status.
#[test]
fn auto_falls_back_when_the_kernel_refuses_io_uring() {
    // SAFETY: the child runs only the closure below and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(refused_child).unwrap_or(100);
        // SAFETY: ends the child without running the test harness's code.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is writable; `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    let what = [
        "ok",
        "seccomp could not be installed",
        "Uring::ring did not fail with io_uring_setup: Operation not permitted",
        "choose_with(Auto) did not pick the helper with the expected line",
        "the helper's operations failed",
    ];
    assert_eq!(code, 0, "{}", what.get(code as usize).unwrap_or(&"panic"));
}

/// The child's side of the test above: an exit code saying which step failed.
fn refused_child() -> i32 {
    // seccomp_data.nr == io_uring_setup ? ERRNO(EPERM) : ALLOW (classic BPF, no arch check).
    let filter = [
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut _,
    };
    // SAFETY: `prog` points at `filter`, both alive for the call.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _,
            ) == 0
    };
    if !installed {
        return 1;
    }
    if Uring::ring().err().as_deref() != Some("io_uring_setup: Operation not permitted") {
        return 2;
    }
    let Ok((exec, line)) = choose_with(DiskIo::Auto, Uring::ring) else {
        return 3;
    };
    let want = "disk_io: uring unavailable (io_uring_setup: Operation not permitted); using the helper process";
    if exec.backend() != "helper" || line != want {
        return 3;
    }
    let mut d = Driver::new(exec);
    let check = DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    let fsync_root = d.open(None, "/", libc::O_RDONLY | libc::O_DIRECTORY);
    match (d.run(check), fsync_root) {
        (Ok(Outcome::Verified(false)), Ok(h)) if d.run(DiskOp::Close { file: h }).is_ok() => 0,
        _ => 4,
    }
}

/// A daemon may run with stdin/stdout closed, so the socketpair gets descriptors 0 and 1: the
/// child must still drop its copy of the parent's end (below 3, out of close_range's reach)
/// or it would never read EOF. Run in a forked child with an alarm, so a hang fails the test.
#[test]
fn helper_exits_even_where_stdio_was_closed() {
    // SAFETY: the child runs only the closure below and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            // SAFETY: plain calls on this (child) process.
            unsafe {
                libc::alarm(10);
                libc::close(0);
                libc::close(1);
            }
            let Ok(h) = Helper::spawn() else { return 2 };
            match h.close_and_wait() {
                Ok(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => 0,
                _ => 3,
            }
        })
        .unwrap_or(100);
        // SAFETY: ends the child without running the test harness's code.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is writable; `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "killed by signal {} (SIGALRM: the helper never saw EOF)",
        libc::WTERMSIG(status)
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

/// The helper backend under a poll, and a file it opened (in a directory dropped with the
/// first value).
fn helper_with_a_file() -> (tempfile::TempDir, Driver, Handle) {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Driver::new(helper());
    let path = tmp.path().join("f");
    let f = d
        .open(None, path.to_str().unwrap(), libc::O_WRONLY | libc::O_CREAT)
        .unwrap();
    (tmp, d, f)
}

/// File operations go before waiting password checks: with one check in the helper and two
/// more waiting, an fsync submitted after them completes before the waiting ones, and the
/// checks all complete in turn. Without the parent's queue the fsync waited for all three
/// hashes (a login flood stalled every commit behind its hashes).
#[test]
fn file_ops_overtake_waiting_password_checks() {
    let (_tmp, mut d, f) = helper_with_a_file();
    let check = || DiskOp::VerifyPassword {
        hash: Some(crate::auth::Credential::Sha512Crypt(ALICE_HASH.into())),
        password: b"alice-pw".to_vec(),
    };
    d.exec.submit(100, check()).unwrap();
    d.exec.end_turn();
    d.exec.submit(101, check()).unwrap();
    d.exec.submit(102, check()).unwrap();
    d.exec.submit(1, DiskOp::Fsync { file: f }).unwrap();
    assert_eq!(d.exec.in_flight(), 4, "waiting checks count as in flight");
    let got = d.wait(4);
    let order: Vec<u64> = got.iter().map(|c| c.tag).collect();
    assert_eq!(order, vec![100, 1, 101, 102]);
    assert!(got.iter().all(|c| c.result.is_ok()));
    assert_eq!(got[2].result, Ok(Outcome::Verified(true)));
    d.ok(DiskOp::Close { file: f });
}

/// A helper that dies with checks still waiting on the parent's side fails them with EPIPE
/// too: nothing waits forever for a process that is gone.
#[test]
fn waiting_checks_fail_when_the_helper_dies() {
    let exec = helper();
    let pid = exec.helper_pid().unwrap();
    let mut d = Driver::new(exec);
    let check = || DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    // One check in the helper, two waiting behind it.
    d.exec.submit(1, check()).unwrap();
    d.exec.end_turn();
    d.exec.submit(2, check()).unwrap();
    d.exec.submit(3, check()).unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let mut got = d.wait(3);
    got.sort_by_key(|c| c.tag);
    let tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![1, 2, 3]);
    // The first may have been answered before the kill; the waiting ones cannot have been.
    assert!(
        got[1..].iter().all(|c| c.result == Err(Errno(libc::EPIPE))),
        "{got:?}"
    );
    assert_eq!(d.exec.in_flight(), 0);
}

/// A stream of file operations does not starve password checks: with an operation still in
/// the helper (its reply not yet taken), a waiting check goes out at a turn's end once
/// `limits::HELPER_CHECK_YIELD` has passed since the last check ended.
#[test]
fn a_waiting_check_goes_out_after_the_yield_despite_file_ops() {
    let (_tmp, mut d, f) = helper_with_a_file();
    let check = || DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    assert_eq!(d.run(check()), Ok(Outcome::Verified(false)));
    // An fsync in the helper, not drained, so it stays in flight for the parent.
    d.exec.submit(1, DiskOp::Fsync { file: f }).unwrap();
    d.exec.submit(2, check()).unwrap();
    // Past the yield (a time threshold, not a wait for an event).
    std::thread::sleep(limits::HELPER_CHECK_YIELD + std::time::Duration::from_millis(5));
    d.exec.end_turn();
    let Executor::Helper(h) = &d.exec else {
        unreachable!()
    };
    assert_eq!(h.waiting_checks(), 0, "the check was still held back");
    let mut got = d.wait(2);
    got.sort_by_key(|c| c.tag);
    assert_eq!(got[0].result, Ok(Outcome::Done));
    assert_eq!(got[1].result, Ok(Outcome::Verified(false)));
    d.ok(DiskOp::Close { file: f });
}
