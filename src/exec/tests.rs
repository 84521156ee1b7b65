//! The same operation sequences run against every backend available here (inline, helper,
//! uring), driven through a real mio poll with a deadline: never a sleep.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::*;
use crate::limits;

mod frames;
mod process;

/// `openssl passwd -6 -salt testsalt alice-pw` (as in the auth tests).
pub(super) const ALICE_HASH: &str = "$6$testsalt$i4yyMFQKJACF7.bISz9DrkIZ2EvZ8alMoYXKcH1dn2jtxaeT.XVaISuuqDJ.4cw8dVLd/Z1OcSRNnHEk.hl1F1";

/// How long a test waits for completions before it fails (never reached when things work).
const PATIENCE: Duration = Duration::from_secs(20);

pub(super) fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn inline() -> Executor {
    Executor::Inline(Inline::new())
}

pub(crate) fn helper() -> Executor {
    Executor::Helper(Box::new(Helper::spawn().unwrap()))
}

/// The uring backend, or `None` after saying loudly that this machine cannot test it.
pub(crate) fn uring() -> Option<Executor> {
    let helper = Helper::spawn().unwrap();
    match Uring::ring() {
        Ok(r) => Some(Executor::Uring(Box::new(Uring::new(r, helper)))),
        Err(why) => {
            eprintln!(
                "\n!!!!! io_uring is UNAVAILABLE here ({why}): the uring backend is NOT tested on \
                 this machine; only its fallback is (choose_falls_back_to_the_helper) !!!!!\n"
            );
            None
        }
    }
}

/// An executor under a mio poll, as the reactor will drive it.
pub(super) struct Driver {
    pub(super) exec: Executor,
    poll: Poll,
    events: Events,
    done: Vec<Completion>,
    next_tag: u64,
}

impl Driver {
    pub(super) fn new(mut exec: Executor) -> Driver {
        let poll = Poll::new().unwrap();
        exec.register(poll.registry(), Token(7), Token(8)).unwrap();
        Driver {
            exec,
            poll,
            events: Events::with_capacity(16),
            done: Vec::new(),
            next_tag: 1,
        }
    }

    /// Waits until `n` completions are collected (drain, then poll with what is left of the
    /// deadline), and returns them. Drains as the reactor does: only the sources the poll
    /// reported (`signalled`, `drain_signalled`), so every test here also shows that no
    /// completion is missed that way.
    /// `wait(n)`, as (tag, result) pairs in tag order.
    pub(super) fn wait_sorted(&mut self, n: usize) -> Vec<(u64, Result<Outcome, Errno>)> {
        let mut got: Vec<(u64, Result<Outcome, Errno>)> = self
            .wait(n)
            .into_iter()
            .map(|c| (c.tag, c.result))
            .collect();
        got.sort_by_key(|g| g.0);
        got
    }

    pub(super) fn wait(&mut self, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.exec.drain_signalled(&mut self.done);
            self.exec.end_turn();
            if self.done.len() >= n {
                return std::mem::take(&mut self.done);
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "only {} of {n} completions arrived",
                self.done.len()
            );
            // io_uring's task work can interrupt epoll_wait (EINTR), as a signal can: retry.
            match self.poll.poll(&mut self.events, Some(deadline - now)) {
                Ok(()) => {
                    for event in self.events.iter() {
                        self.exec.signalled(event.token() == Token(7));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    /// Runs one operation to its completion.
    pub(super) fn run(&mut self, op: DiskOp) -> Result<Outcome, Errno> {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.exec.submit(tag, op).unwrap();
        let mut got = self.wait(1);
        assert_eq!(got.len(), 1);
        let c = got.pop().unwrap();
        assert_eq!(c.tag, tag);
        c.result
    }

    pub(super) fn open(
        &mut self,
        dir: Option<Handle>,
        path: &str,
        flags: i32,
    ) -> Result<Handle, Errno> {
        match self.run(DiskOp::Open {
            dir,
            path: c(path),
            flags,
            mode: 0o600,
        })? {
            Outcome::Opened(h) => Ok(h),
            other => panic!("open gave {other:?}"),
        }
    }

    pub(super) fn ok(&mut self, op: DiskOp) {
        assert_eq!(self.run(op), Ok(Outcome::Done));
    }
}

const DIR: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[test]
            fn inline() {
                super::$name(super::inline());
            }
            #[test]
            fn helper() {
                super::$name(super::helper());
            }
            #[test]
            fn uring() {
                if let Some(e) = super::uring() {
                    super::$name(e);
                }
            }
        }
    };
}

on_every_backend!(op_sequence);
on_every_backend!(syncs_of_our_own_descriptors);
on_every_backend!(errors_come_back_as_errnos);
on_every_backend!(readdir_in_batches_with_a_cursor);
on_every_backend!(many_in_flight_are_matched_by_tag);
on_every_backend!(full_and_too_large_hand_the_op_back);
on_every_backend!(passwords);
on_every_backend!(bad_handles_fail_alone);
on_every_backend!(maildir_ops);
on_every_backend!(rest_then_serve_on);

/// A rest hands back memory and the code mappings of the process that runs it (the helper's
/// own, on the helper and uring backends); everything works as before afterwards.
fn rest_then_serve_on(exec: Executor) {
    let mut d = Driver::new(exec);
    for _ in 0..3 {
        d.ok(DiskOp::Rest);
        let check = d.run(DiskOp::VerifyPassword {
            hash: Some(crate::auth::Credential::Sha512Crypt(ALICE_HASH.into())),
            password: b"alice-pw".to_vec(),
        });
        assert_eq!(check, Ok(Outcome::Verified(true)));
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    d.ok(DiskOp::Rest);
    d.ok(DiskOp::Mkdir {
        dir: Some(dir),
        path: c"after-rest".into(),
        mode: 0o700,
    });
    assert!(tmp.path().join("after-rest").is_dir());
    d.ok(DiskOp::Close { file: dir });
}

/// What reading a Maildir for POP needs: names with their types, a rename that never replaces,
/// and POP sizes counted without following a symlink.
fn maildir_ops(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    std::fs::write(p.join("plain"), b"a\nb\r\nc\n").unwrap();
    std::fs::write(p.join("taken"), b"new").unwrap();
    std::fs::write(p.join("taken:2,"), b"old").unwrap();
    std::fs::write(p.join("empty"), b"").unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    symlink(p.join("plain"), p.join("link")).unwrap();
    let mut d = Driver::new(exec);
    let dir = d.open(None, p.to_str().unwrap(), DIR).unwrap();
    let Ok(Outcome::Names { names, kinds, next }) = d.run(DiskOp::ReadDir {
        dir,
        cursor: 0,
        max: 100,
    }) else {
        panic!("readdir failed");
    };
    assert_eq!(next, None);
    let kind = |n: &str| kinds[names.iter().position(|x| x == n.as_bytes()).unwrap()];
    // tmpfs and ext4 both fill d_type; DT_UNKNOWN would be legal but is not what runs here.
    assert_eq!(kind("plain"), libc::DT_REG);
    assert_eq!(kind("sub"), libc::DT_DIR);
    assert_eq!(kind("link"), libc::DT_LNK);

    let sizes = |d: &mut Driver, names: &[&str]| {
        d.run(DiskOp::WireSize {
            dir,
            paths: names.iter().map(|n| c(n)).collect(),
        })
    };
    let size = |d: &mut Driver, n: &str| match sizes(d, &[n]) {
        Ok(Outcome::Sizes(v)) if v.len() == 1 => v[0],
        other => panic!("{other:?}"),
    };
    // 7 octets, two bare LFs.
    assert_eq!(size(&mut d, "plain"), Ok(9));
    assert_eq!(size(&mut d, "empty"), Ok(0));
    assert_eq!(size(&mut d, "link"), Err(Errno(libc::ELOOP)));
    assert_eq!(size(&mut d, "sub"), Err(Errno(libc::EINVAL)));
    assert_eq!(size(&mut d, "gone"), Err(Errno(libc::ENOENT)));
    let big: Vec<u8> = b"x\n".repeat(20_000);
    std::fs::write(p.join("big"), &big).unwrap();
    assert_eq!(size(&mut d, "big"), Ok(60_000));
    // A CR that ends one read and the LF that starts the next are one line end; an LF that
    // starts a read after something else is one more octet.
    let chunk = 16 * 1024;
    let mut split = vec![b'x'; chunk - 1];
    split.extend_from_slice(b"\r\n\n");
    std::fs::write(p.join("split"), &split).unwrap();
    assert_eq!(size(&mut d, "split"), Ok(split.len() as u64 + 1));
    let mut lf_first = vec![b'x'; chunk];
    lf_first.extend_from_slice(b"\n\n");
    std::fs::write(p.join("lf-first"), &lf_first).unwrap();
    assert_eq!(size(&mut d, "lf-first"), Ok(lf_first.len() as u64 + 2));
    // A batch answers each name in order, a failure only for its own.
    assert_eq!(
        sizes(&mut d, &["big", "gone", "plain", "link", "empty"]),
        Ok(Outcome::Sizes(vec![
            Ok(60_000),
            Err(Errno(libc::ENOENT)),
            Ok(9),
            Err(Errno(libc::ELOOP)),
            Ok(0)
        ]))
    );
    // More names than a batch may hold, or a name longer than a file name can be: refused.
    let many = vec!["plain"; crate::limits::EXEC_WIRE_SIZE_BATCH + 1];
    assert!(matches!(
        d.exec.submit(
            1,
            DiskOp::WireSize {
                dir,
                paths: many.iter().map(|n| c(n)).collect()
            }
        ),
        Err(Rejected {
            reason: Reject::TooLarge,
            ..
        })
    ));
    let long = "x".repeat(crate::limits::FILE_NAME_MAX + 1);
    assert!(matches!(
        d.exec.submit(
            1,
            DiskOp::WireSize {
                dir,
                paths: vec![c(&long)]
            }
        ),
        Err(Rejected {
            reason: Reject::TooLarge,
            ..
        })
    ));

    let rename = |from: &str, to: &str| DiskOp::RenameNoReplace {
        from_dir: Some(dir),
        from: c(from),
        to_dir: Some(dir),
        to: c(to),
    };
    assert_eq!(d.run(rename("taken", "taken:2,")), Err(Errno(libc::EEXIST)));
    assert_eq!(std::fs::read(p.join("taken:2,")).unwrap(), b"old");
    assert_eq!(std::fs::read(p.join("taken")).unwrap(), b"new");
    d.ok(rename("plain", "plain:2,"));
    assert!(!p.join("plain").exists());
    assert_eq!(size(&mut d, "plain:2,"), Ok(9));
    d.ok(DiskOp::Close { file: dir });
}

/// Create, two writes at offsets, fdatasync, rename into another directory, fsync it, link,
/// unlink: the file ends where and as it should.
fn op_sequence(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Driver::new(exec);
    let root = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    d.ok(DiskOp::Mkdir {
        dir: Some(root),
        path: c("a"),
        mode: 0o700,
    });
    d.ok(DiskOp::Mkdir {
        dir: Some(root),
        path: c("b"),
        mode: 0o700,
    });
    let a = d.open(Some(root), "a", DIR).unwrap();
    let b = d.open(Some(root), "b", DIR).unwrap();
    let f = d
        .open(
            Some(a),
            "msg",
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        )
        .unwrap();

    // Both writes in flight at once; each buffer comes back in its own completion.
    d.exec
        .submit(
            10,
            DiskOp::Write {
                file: f,
                offset: 6,
                data: b"world\n".to_vec(),
            },
        )
        .unwrap();
    d.exec
        .submit(
            11,
            DiskOp::Write {
                file: f,
                offset: 0,
                data: b"hello ".to_vec(),
            },
        )
        .unwrap();
    let got = d.wait_sorted(2);
    assert_eq!(
        got,
        vec![
            (10, Ok(Outcome::Written(b"world\n".to_vec()))),
            (11, Ok(Outcome::Written(b"hello ".to_vec())))
        ]
    );
    d.ok(DiskOp::Fdatasync { file: f });
    d.ok(DiskOp::Fsync { file: f });
    d.ok(DiskOp::Close { file: f });
    d.ok(DiskOp::Rename {
        from_dir: Some(a),
        from: c("msg"),
        to_dir: Some(b),
        to: c("msg"),
    });
    d.ok(DiskOp::Fsync { file: b });
    d.ok(DiskOp::Link {
        from_dir: Some(b),
        from: c("msg"),
        to_dir: Some(a),
        to: c("linked"),
    });
    d.ok(DiskOp::Unlink {
        dir: Some(b),
        path: c("msg"),
    });
    for h in [a, b, root] {
        d.ok(DiskOp::Close { file: h });
    }
    assert_eq!(
        std::fs::read(tmp.path().join("a/linked")).unwrap(),
        b"hello world\n"
    );
    assert!(!tmp.path().join("a/msg").exists());
    assert!(!tmp.path().join("b/msg").exists());
    assert_eq!(d.exec.in_flight(), 0);
}

fn errors_come_back_as_errnos(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("there"), b"x").unwrap();
    symlink("there", tmp.path().join("link")).unwrap();
    let mut d = Driver::new(exec);
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    let ro = libc::O_RDONLY;
    assert_eq!(d.open(Some(dir), "missing", ro), Err(Errno(libc::ENOENT)));
    let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    assert_eq!(d.open(Some(dir), "there", excl), Err(Errno(libc::EEXIST)));
    assert_eq!(
        d.open(Some(dir), "link", ro | libc::O_NOFOLLOW),
        Err(Errno(libc::ELOOP))
    );
    // Without O_NOFOLLOW the same symlink opens: the error above is the flag's doing.
    let through = d.open(Some(dir), "link", ro).unwrap();
    d.ok(DiskOp::Close { file: through });
    let unlink = DiskOp::Unlink {
        dir: Some(dir),
        path: c("missing"),
    };
    assert_eq!(d.run(unlink), Err(Errno(libc::ENOENT)));
    let rename = DiskOp::Rename {
        from_dir: Some(dir),
        from: c("missing"),
        to_dir: None,
        to: c("x"),
    };
    assert_eq!(d.run(rename), Err(Errno(libc::ENOENT)));
    let link = DiskOp::Link {
        from_dir: Some(dir),
        from: c("there"),
        to_dir: Some(dir),
        to: c("link"),
    };
    assert_eq!(d.run(link), Err(Errno(libc::EEXIST)));
    let mkdir = DiskOp::Mkdir {
        dir: Some(dir),
        path: c("there"),
        mode: 0o700,
    };
    assert_eq!(d.run(mkdir), Err(Errno(libc::EEXIST)));
    // A handle that names nothing: EBADF, not a crash of the helper or the ring.
    assert_eq!(
        d.run(DiskOp::Fsync { file: Handle(9999) }),
        Err(Errno(libc::EBADF))
    );
    d.ok(DiskOp::Close { file: dir });
}

/// Reads a directory batch by batch; returns the batch sizes and all names.
fn read_all(d: &mut Driver, dir: Handle, max: usize) -> (Vec<usize>, Vec<Vec<u8>>) {
    let (mut sizes, mut all, mut cursor) = (Vec::new(), Vec::new(), 0);
    loop {
        let Ok(Outcome::Names { names, kinds, next }) = d.run(DiskOp::ReadDir { dir, cursor, max })
        else {
            panic!("readdir failed");
        };
        assert_eq!(kinds.len(), names.len());
        sizes.push(names.len());
        all.extend(names);
        match next {
            Some(n) => cursor = n,
            None => return (sizes, all),
        }
        assert!(sizes.len() < 10_000, "the cursor does not advance");
    }
}

fn readdir_in_batches_with_a_cursor(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(tmp.path().join(format!("m{i}")), b"").unwrap();
    }
    let mut d = Driver::new(exec);
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    let (sizes, mut names) = read_all(&mut d, dir, 2);
    assert_eq!(sizes, vec![2, 2, 1]);
    names.sort();
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(names, want);

    // More names than one getdents buffer and than one batch: every name exactly once.
    for i in 5..1000 {
        std::fs::write(tmp.path().join(format!("m{i}")), b"").unwrap();
    }
    let (sizes, mut names) = read_all(&mut d, dir, usize::MAX);
    assert_eq!(sizes, vec![256, 256, 256, 232]);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 1000);
    d.ok(DiskOp::Close { file: dir });
}

/// Opens of existing files and unlinks of missing ones, all in flight at once under tags
/// that are not in submission order: each completion is the one its tag asked for.
fn many_in_flight_are_matched_by_tag(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    let n = 200u64;
    for i in 0..n {
        std::fs::write(tmp.path().join(format!("f{i}")), b"").unwrap();
    }
    let mut d = Driver::new(exec);
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    for i in 0..n {
        let tag = (i * 7919) % n + 1_000;
        let op = if i % 2 == 0 {
            DiskOp::Open {
                dir: Some(dir),
                path: c(&format!("f{i}")),
                flags: libc::O_RDONLY,
                mode: 0,
            }
        } else {
            DiskOp::Unlink {
                dir: Some(dir),
                path: c(&format!("gone{i}")),
            }
        };
        d.exec.submit(tag, op).unwrap();
    }
    assert!(d.exec.in_flight() > 0);
    let got = d.wait(n as usize);
    assert_eq!(got.len(), n as usize);
    let mut by_tag = HashMap::new();
    for c in got {
        assert!(
            by_tag.insert(c.tag, c.result).is_none(),
            "tag {} twice",
            c.tag
        );
    }
    for i in 0..n {
        let tag = (i * 7919) % n + 1_000;
        match by_tag.remove(&tag) {
            Some(Ok(Outcome::Opened(h))) if i % 2 == 0 => {
                d.exec.submit(i, DiskOp::Close { file: h }).unwrap()
            }
            Some(Err(Errno(libc::ENOENT))) if i % 2 == 1 => {}
            other => panic!("tag {tag} (op {i}) completed as {other:?}"),
        }
    }
    let closes = d.wait((n / 2) as usize);
    assert!(closes.iter().all(|c| c.result == Ok(Outcome::Done)));
    assert_eq!(d.exec.in_flight(), 0);
}

/// Submissions between `set_batching(true)` and `set_batching(false)` (how the reactor
/// brackets a turn's phase of disk work) reach the kernel in one `io_uring_enter`, and every
/// one of them completes; outside a batch each submission is a call of its own.
#[test]
fn a_batch_is_one_submission_call() {
    let Some(exec) = uring() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Driver::new(exec);
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    let before = d.exec.submit_calls();
    d.exec.set_batching(true);
    for i in 0..20u64 {
        let op = DiskOp::Unlink {
            dir: Some(dir),
            path: c(&format!("gone{i}")),
        };
        d.exec.submit(i, op).unwrap();
    }
    assert_eq!(
        d.exec.submit_calls(),
        before,
        "submitted before the batch ended"
    );
    d.exec.set_batching(false);
    assert_eq!(d.exec.submit_calls(), before + 1);
    let got = d.wait_sorted(20);
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|(_, r)| *r == Err(Errno(libc::ENOENT))));
    for i in 0..2u64 {
        let op = DiskOp::Unlink {
            dir: Some(dir),
            path: c(&format!("alone{i}")),
        };
        d.exec.submit(100 + i, op).unwrap();
    }
    assert_eq!(d.exec.submit_calls(), before + 3);
    assert_eq!(d.wait(2).len(), 2);
}

/// Beyond the in-flight limit `submit` refuses with `Full` and hands the operation back;
/// after the completions are drained there is room again. An over-long write is `TooLarge`.
fn full_and_too_large_hand_the_op_back(exec: Executor) {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Driver::new(exec);
    let dir = d.open(None, tmp.path().to_str().unwrap(), DIR).unwrap();
    let missing = || DiskOp::Unlink {
        dir: Some(dir),
        path: c("nothing"),
    };
    for tag in 0..limits::EXEC_MAX_IN_FLIGHT as u64 {
        d.exec.submit(tag, missing()).unwrap();
    }
    let refused = d.exec.submit(999, missing()).unwrap_err();
    assert_eq!(refused.reason, Reject::Full);
    assert!(matches!(refused.op, DiskOp::Unlink { .. }));
    let got = d.wait(limits::EXEC_MAX_IN_FLIGHT);
    assert!(got.iter().all(|c| c.result == Err(Errno(libc::ENOENT))));
    assert_eq!(d.run(missing()), Err(Errno(libc::ENOENT)));

    let big = vec![7u8; limits::EXEC_WRITE_MAX + 1];
    let refused = d
        .exec
        .submit(
            1,
            DiskOp::Write {
                file: dir,
                offset: 0,
                data: big,
            },
        )
        .unwrap_err();
    assert_eq!(refused.reason, Reject::TooLarge);
    assert!(
        matches!(refused.op, DiskOp::Write { data, .. } if data.len() == limits::EXEC_WRITE_MAX + 1)
    );

    // The largest allowed write goes through whole.
    let f = d
        .open(Some(dir), "big", libc::O_WRONLY | libc::O_CREAT)
        .unwrap();
    let max = vec![7u8; limits::EXEC_WRITE_MAX];
    let wrote = d.run(DiskOp::Write {
        file: f,
        offset: 1,
        data: max.clone(),
    });
    assert_eq!(wrote, Ok(Outcome::Written(max)));
    d.ok(DiskOp::Close { file: f });
    let len = std::fs::metadata(tmp.path().join("big")).unwrap().len();
    assert_eq!(len, limits::EXEC_WRITE_MAX as u64 + 1);
    d.ok(DiskOp::Close { file: dir });
}

fn passwords(exec: Executor) {
    let mut d = Driver::new(exec);
    let alice = || Some(crate::auth::Credential::Sha512Crypt(ALICE_HASH.into()));
    let check = |d: &mut Driver, hash, pw: &[u8]| {
        d.run(DiskOp::VerifyPassword {
            hash,
            password: pw.to_vec(),
        })
    };
    assert_eq!(
        check(&mut d, alice(), b"alice-pw"),
        Ok(Outcome::Verified(true))
    );
    assert_eq!(
        check(&mut d, alice(), b"alice-pW"),
        Ok(Outcome::Verified(false))
    );
    assert_eq!(
        check(&mut d, None, b"alice-pw"),
        Ok(Outcome::Verified(false))
    );
    let plain = || Some(crate::auth::Credential::Plain(b"s3cret".to_vec()));
    assert_eq!(
        check(&mut d, plain(), b"s3cret"),
        Ok(Outcome::Verified(true))
    );
    assert_eq!(
        check(&mut d, plain(), b"s3cre"),
        Ok(Outcome::Verified(false))
    );
    let long = vec![b'x'; limits::PASSWORD_MAX + 1];
    let refused = d.exec.submit(
        1,
        DiskOp::VerifyPassword {
            hash: alice(),
            password: long,
        },
    );
    assert_eq!(refused.unwrap_err().reason, Reject::TooLarge);
}

fn failing_ring() -> Result<Ring, String> {
    Err("io_uring_setup: Operation not permitted".into())
}

/// Where io_uring is refused, `auto` runs the helper and says why; `uring` refuses to start.
/// The fallback executor then passes the whole operation sequence.
#[test]
fn choose_falls_back_to_the_helper() {
    let (exec, line) = choose_with(DiskIo::Auto, failing_ring).unwrap();
    assert_eq!(exec.backend(), "helper");
    assert_eq!(
        line,
        "disk_io: uring unavailable (io_uring_setup: Operation not permitted); using the helper process"
    );
    op_sequence(exec);
    let err = choose_with(DiskIo::Uring, failing_ring).err().unwrap();
    assert_eq!(
        err,
        "disk_io = uring, but io_uring is unavailable (io_uring_setup: Operation not permitted)"
    );
    let (exec, line) = choose_with(DiskIo::Helper, Uring::ring).unwrap();
    assert_eq!(
        (exec.backend(), line.as_str()),
        ("helper", "disk_io: helper process (disk_io = helper)")
    );
}

/// The ring runs its file operations on at most `EXEC_URING_WORKERS` kernel threads, not
/// the kernel's four per CPU, so they leave the reactor a CPU.
#[test]
fn the_ring_has_few_workers() {
    let Ok(ring) = Uring::ring() else {
        return;
    };
    // Zeros ask for the current limits without changing them.
    let mut max = [0u32, 0];
    if ring
        .ring
        .submitter()
        .register_iowq_max_workers(&mut max)
        .is_err()
    {
        eprintln!("this kernel cannot limit io_uring workers (before 5.15)");
        return;
    }
    assert_eq!(max[0], limits::EXEC_URING_WORKERS);
}

#[test]
fn choose_auto_takes_uring_where_it_works() {
    match Uring::ring() {
        Ok(_) => {
            let (exec, line) = choose_with(DiskIo::Auto, Uring::ring).unwrap();
            assert_eq!(exec.backend(), "uring");
            assert_eq!(
                line,
                "disk_io: uring (io_uring supports every operation used)"
            );
        }
        Err(why) => {
            eprintln!("\n!!!!! io_uring is UNAVAILABLE here ({why}); auto picks the helper !!!!!\n")
        }
    }
    assert_eq!(DiskIo::parse("auto"), Some(DiskIo::Auto));
    assert_eq!(DiskIo::parse("uring"), Some(DiskIo::Uring));
    assert_eq!(DiskIo::parse("helper"), Some(DiskIo::Helper));
    assert_eq!(DiskIo::parse("Uring"), None);
}

/// A handle that names nothing fails its own operation with EBADF; the backend (and its
/// helper) keeps working. On uring, `ReadDir` passes the descriptor over the socket, where a
/// bad one is refused by sendmsg itself.
fn bad_handles_fail_alone(exec: Executor) {
    let mut d = Driver::new(exec);
    let bad = Handle(9999);
    let readdir = DiskOp::ReadDir {
        dir: bad,
        cursor: 0,
        max: 5,
    };
    assert_eq!(d.run(readdir), Err(Errno(libc::EBADF)));
    let write = DiskOp::Write {
        file: bad,
        offset: 0,
        data: b"x".to_vec(),
    };
    assert_eq!(d.run(write), Err(Errno(libc::EBADF)));
    assert_eq!(d.run(DiskOp::Close { file: bad }), Err(Errno(libc::EBADF)));
    let check = DiskOp::VerifyPassword {
        hash: None,
        password: b"pw".to_vec(),
    };
    assert_eq!(d.run(check), Ok(Outcome::Verified(false)));
}

/// `submit_own`: the spool syncs files it opened itself; the helper gets a copy of each
/// descriptor. A pipe cannot be synced (EINVAL comes back); anything but a sync is refused.
fn syncs_of_our_own_descriptors(exec: Executor) {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut d = Driver::new(exec);
    let t = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(t.path().join("m")).unwrap();
    f.write_all(b"data").unwrap();
    let dir = std::fs::File::open(t.path()).unwrap();
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh descriptors, owned from here on.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let ops = [
        DiskOp::Fdatasync {
            file: Handle::own(&f),
        },
        DiskOp::Fsync {
            file: Handle::own(&dir),
        },
        DiskOp::Fdatasync {
            file: Handle::own(&r),
        },
        // `fsync = filesystem`: the whole filesystem, named by any descriptor on it.
        DiskOp::Syncfs {
            file: Handle::own(&dir),
        },
    ];
    for (tag, op) in ops.into_iter().enumerate() {
        d.exec.submit_own(tag as u64, op).unwrap();
    }
    let got = d.wait_sorted(4);
    assert_eq!(
        got,
        vec![
            (0, Ok(Outcome::Done)),
            (1, Ok(Outcome::Done)),
            (2, Err(Errno(libc::EINVAL))),
            (3, Ok(Outcome::Done)),
        ]
    );
    let refused = d.exec.submit_own(
        9,
        DiskOp::Close {
            file: Handle::own(&f),
        },
    );
    assert_eq!(refused.map_err(|r| r.reason), Err(Reject::TooLarge));
    assert_eq!(d.exec.in_flight(), 0);
}

/// `submit_sync` (the Maildir commit's data and directory syncs): a descriptor the reactor
/// owns is synced on every backend; the helper gets it with the request (its own table holds
/// no such number: without the passed copy the sync would be EBADF there).
#[test]
fn a_reactor_descriptor_is_synced_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(tmp.path().join("f")).unwrap();
    let dir = std::fs::File::open(tmp.path()).unwrap();
    let mut backends = vec![("inline", inline()), ("helper", helper())];
    backends.extend(uring().map(|u| ("uring", u)));
    for (name, exec) in backends {
        let mut d = Driver::new(exec);
        use std::os::fd::AsRawFd;
        d.exec.submit_sync(1, file.as_raw_fd(), true).unwrap();
        d.exec.submit_sync(2, dir.as_raw_fd(), false).unwrap();
        let got = d.wait_sorted(2);
        assert_eq!(
            got,
            vec![(1, Ok(Outcome::Done)), (2, Ok(Outcome::Done))],
            "{name}"
        );
    }
}

/// `submit_own` with a `Link` (the Maildir delivery of a queued file): from a path into a
/// directory the reactor owns, on every backend; a name taken is EEXIST, a missing source
/// ENOENT, and the file is the same inode under both names.
#[test]
fn a_link_into_a_reactor_directory_is_made_on_every_backend() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("queued");
    std::fs::write(&src, b"Return-Path: <>\n").unwrap();
    let mut backends = vec![("inline", inline()), ("helper", helper())];
    backends.extend(uring().map(|u| ("uring", u)));
    for (name, exec) in backends {
        let new = tmp.path().join(format!("new-{name}"));
        std::fs::create_dir(&new).unwrap();
        let dir = std::fs::File::open(&new).unwrap();
        let mut d = Driver::new(exec);
        let link = |from: &std::path::Path, to: &str| DiskOp::Link {
            from_dir: None,
            from: CString::new(from.as_os_str().as_encoded_bytes()).unwrap(),
            to_dir: Some(Handle::own(&dir)),
            to: CString::new(to).unwrap(),
        };
        d.exec.submit_own(1, link(&src, "m")).unwrap();
        assert_eq!(d.wait(1)[0].result, Ok(Outcome::Done), "{name}");
        d.exec.submit_own(2, link(&src, "m")).unwrap();
        d.exec
            .submit_own(3, link(&tmp.path().join("gone"), "n"))
            .unwrap();
        let got = d.wait_sorted(2);
        assert_eq!(
            got,
            vec![(2, Err(Errno(libc::EEXIST))), (3, Err(Errno(libc::ENOENT)))],
            "{name}"
        );
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&new.join("m")), ino(&src), "{name}");
    }
}

/// `submit_own` with a `MaildirCopy` (a Maildir copy of a queued message, into a `tmp/` the
/// reactor owns), on every backend: CRLF data becomes LF after the trace lines, the sizes are
/// those of the file (`S=`) and as POP3 sends it (`W=`), a source already in the Maildir form
/// is copied as it is, a name taken is EEXIST (the file there untouched), a symlink in its
/// place is never written through, and a copy that fails leaves no file.
#[test]
fn a_maildir_copy_is_made_into_a_reactor_directory_on_every_backend() {
    use crate::maildir::CopySource;
    let tmp = tempfile::tempdir().unwrap();
    // Data after a 5-byte envelope; a CRLF split across the copy's 64 KiB chunks; a bare LF.
    let mut crlf = b"ENVL\n".to_vec();
    crlf.extend(b"Subject: s\r\n\r\n");
    crlf.resize(5 + 64 * 1024 - 1, b'x');
    crlf.extend(b"\r\nbare\nend\r\n");
    let queued = tmp.path().join("queued");
    std::fs::write(&queued, &crlf).unwrap();
    let lf_form = tmp.path().join("lf-form");
    std::fs::write(&lf_form, b"Return-Path: <>\nDelivered-To: u@h\nbody\n").unwrap();
    let source = |p: &std::path::Path, offset: u64, len: u64, lf_form: bool| CopySource {
        path: CString::new(p.as_os_str().as_encoded_bytes()).unwrap(),
        offset,
        len,
        lf_form,
    };
    let head = b"Return-Path: <a@b>\nDelivered-To: c@d\n".to_vec();
    let mut expected = head.clone();
    expected.extend(b"Subject: s\n\n");
    // (The data's x run: what is left of 64 KiB - 1 after the 14 octets of its first lines.)
    expected.resize(head.len() + 12 + (64 * 1024 - 1 - 14), b'x');
    expected.extend(b"\nbare\nend\n");
    // Every LF of the expected copy is sent as CRLF by POP3.
    let lfs = expected.iter().filter(|&&b| b == b'\n').count() as u64;
    let mut backends = vec![("inline", inline()), ("helper", helper())];
    backends.extend(uring().map(|u| ("uring", u)));
    for (name, exec) in backends {
        let dir_path = tmp.path().join(format!("tmp-{name}"));
        std::fs::create_dir(&dir_path).unwrap();
        std::fs::write(dir_path.join("taken"), b"old").unwrap();
        symlink(tmp.path().join("elsewhere"), dir_path.join("link")).unwrap();
        let dir = std::fs::File::open(&dir_path).unwrap();
        let mut d = Driver::new(exec);
        let copy = |to: &str, source: CopySource, head: &[u8], sync: bool| DiskOp::MaildirCopy {
            dir: Handle::own(&dir),
            name: c(to),
            head: head.into(),
            source: Box::new(source),
            sync,
        };
        let whole = crlf.len() as u64 - 5;
        d.exec
            .submit_own(1, copy("a", source(&queued, 5, whole, false), &head, true))
            .unwrap();
        d.exec
            .submit_own(2, copy("b", source(&lf_form, 0, 1 << 20, true), b"", false))
            .unwrap();
        d.exec
            .submit_own(
                3,
                copy("taken", source(&queued, 5, whole, false), &head, true),
            )
            .unwrap();
        d.exec
            .submit_own(
                4,
                copy("link", source(&queued, 5, whole, false), &head, true),
            )
            .unwrap();
        d.exec
            .submit_own(
                5,
                copy(
                    "c",
                    source(&tmp.path().join("gone"), 0, 9, false),
                    &head,
                    true,
                ),
            )
            .unwrap();
        let got = d.wait_sorted(5);
        let len = expected.len() as u64;
        assert_eq!(
            got,
            vec![
                (
                    1,
                    Ok(Outcome::Copied {
                        size: len,
                        wire: len + lfs
                    })
                ),
                (2, Ok(Outcome::Copied { size: 39, wire: 42 })),
                (3, Err(Errno(libc::EEXIST))),
                (4, Err(Errno(libc::EEXIST))),
                (5, Err(Errno(libc::ENOENT))),
            ],
            "{name}"
        );
        assert_eq!(
            std::fs::read(dir_path.join("a")).unwrap(),
            expected,
            "{name}"
        );
        assert_eq!(
            std::fs::read(dir_path.join("b")).unwrap(),
            std::fs::read(&lf_form).unwrap(),
            "{name}"
        );
        assert_eq!(std::fs::read(dir_path.join("taken")).unwrap(), b"old");
        assert!(!tmp.path().join("elsewhere").exists(), "{name}");
        assert!(
            !dir_path.join("c").exists(),
            "{name}: a failed copy leaves no file"
        );
    }
}

/// `submit_own` with a `Warm` (a POP message not in memory): a file the reactor has open is
/// read into the page cache on every backend (the helper reads its copy of the descriptor);
/// past the end is no error, a directory is EISDIR, and more than a warm may read is refused.
#[test]
fn a_reactor_file_is_warmed_on_every_backend() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("message");
    std::fs::write(&path, vec![b'x'; 300 * 1024]).unwrap();
    let mut backends = vec![("inline", inline()), ("helper", helper())];
    backends.extend(uring().map(|u| ("uring", u)));
    for (name, exec) in backends {
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a plain descriptor call.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 4096];
        let cold = crate::mailbox::read_nowait(&file, &mut buf, 200 * 1024);
        assert_eq!(
            cold.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "{name}: dropped from the cache"
        );
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let warm = |file: &std::fs::File, offset: u64, len: u64| DiskOp::Warm {
            file: Handle::own(file),
            offset,
            len,
        };
        let mut d = Driver::new(exec);
        d.exec
            .submit_own(1, warm(&file, 128 * 1024, 128 * 1024))
            .unwrap();
        d.exec.submit_own(2, warm(&file, 1 << 30, 4096)).unwrap();
        d.exec.submit_own(3, warm(&dir, 0, 4096)).unwrap();
        let got = d.wait_sorted(3);
        assert_eq!(
            got,
            vec![
                (1, Ok(Outcome::Done)),
                (2, Ok(Outcome::Done)),
                (3, Err(Errno(libc::EISDIR)))
            ],
            "{name}"
        );
        assert_eq!(
            crate::mailbox::read_nowait(&file, &mut buf, 200 * 1024).unwrap(),
            4096,
            "{name}: in the cache now"
        );
        let too_much = warm(&file, 0, crate::limits::EXEC_WARM_MAX + 1);
        assert!(matches!(
            d.exec.submit_own(4, too_much),
            Err(Rejected {
                reason: Reject::TooLarge,
                ..
            })
        ));
    }
}

/// `submit_own` with a `WireSize` (POP2's count of one message): names in a directory the
/// reactor has open are counted on every backend (the helper with its copy of the descriptor).
#[test]
fn a_reactor_directory_is_counted_in_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    // 6 octets, two of the LFs bare.
    std::fs::write(tmp.path().join("m"), b"a\nb\r\n\n").unwrap();
    let mut backends = vec![("inline", inline()), ("helper", helper())];
    backends.extend(uring().map(|u| ("uring", u)));
    for (name, exec) in backends {
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let mut d = Driver::new(exec);
        let op = DiskOp::WireSize {
            dir: Handle::own(&dir),
            paths: vec![c("m"), c("gone")],
        };
        d.exec.submit_own(1, op).unwrap();
        assert_eq!(
            d.wait_sorted(1),
            vec![(1, Ok(Outcome::Sizes(vec![Ok(8), Err(Errno(libc::ENOENT))])))],
            "{name}"
        );
    }
}

/// The rest's completion is dropped by the reactor: no job that reads completions may take
/// its tag for one of its own (the file preparation once used the same bit).
#[test]
fn the_rest_tag_is_nobody_elses() {
    let t = super::REST_TAG;
    assert!(!crate::mailbox::job::owns(t));
    assert!(!crate::spool::commit_owns(t));
    assert!(!crate::deliver::local::owns(t));
    assert!(!crate::spool::prepare_owns(t));
}
