use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn put(root: &Path, user: &str, sub: &str, name: &str, data: &[u8]) {
    let d = root.join(user);
    for s in ["tmp", "new", "cur"] {
        fs::create_dir_all(d.join(s)).unwrap();
    }
    fs::write(d.join(sub).join(name), data).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn read_all(mb: &mut Mailbox, index: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = mb.read(index, out.len() as u64, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn uids(infos: &[MessageInfo]) -> Vec<&str> {
    infos.iter().map(|m| &*m.uid).collect()
}

#[test]
fn open_creates_a_private_empty_maildir() {
    let root = tempfile::tempdir().unwrap();
    let (mb, infos) = Mailbox::open(&root.path().join("mail"), "alice").unwrap();
    assert!(infos.is_empty());
    assert_eq!(mb.path(), root.path().join("mail/alice"));
    for sub in ["tmp", "new", "cur"] {
        let meta = fs::metadata(root.path().join("mail/alice").join(sub)).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{sub}");
    }
    assert!(root.path().join("mail/alice").join(LOCK_FILE).is_file());
}

#[test]
fn unsafe_user_names_are_permanent_and_build_no_path() {
    let root = tempfile::tempdir().unwrap();
    let mail = root.path().join("mail");
    for bad in ["../etc", "a/b", ".hidden", "", "x\0y", "a\nb"] {
        match Mailbox::open(&mail, bad) {
            Err(MailboxError::Permanent(_)) => {}
            Err(e) => panic!("{bad:?}: {e:?}"),
            Ok(_) => panic!("{bad:?} opened"),
        }
    }
    assert!(!mail.exists());
    assert!(!root.path().join("etc").exists());
}

#[test]
fn a_blocked_maildir_is_temporary() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("bob"), b"not a directory").unwrap();
    match Mailbox::open(root.path(), "bob") {
        Err(MailboxError::Temporary(why)) => {
            assert!(why.contains("bob: Not a directory"), "{why}")
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn one_session_per_mailbox_until_dropped() {
    let root = tempfile::tempdir().unwrap();
    let (first, _) = Mailbox::open(root.path(), "bob").unwrap();
    // Same process, second open file description: flock conflicts all the same.
    assert!(matches!(
        Mailbox::open(root.path(), "bob"),
        Err(MailboxError::InUse)
    ));
    // Other mailboxes are independent.
    let (carol, _) = Mailbox::open(root.path(), "carol").unwrap();
    drop(first);
    let (second, _) = Mailbox::open(root.path(), "bob").unwrap();
    assert!(matches!(
        Mailbox::open(root.path(), "bob"),
        Err(MailboxError::InUse)
    ));
    // UPDATE releases it too.
    second.update(&[]).unwrap();
    let (_third, _) = Mailbox::open(root.path(), "bob").unwrap();
    drop(carol);
}

#[test]
fn new_messages_are_served_from_new_and_moved_to_cur_at_quit_unless_deleted() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "new", "1000.M1P1Q1.h,S=3", b"a\n\n");
    put(root.path(), "bob", "new", "1001.M1P1Q2.h:2,S", b"b\n");
    put(root.path(), "bob", "new", "1002.M1P1Q3.h", b"deleted\n");
    put(root.path(), "bob", "new", ".hidden", b"x");
    put(root.path(), "bob", "cur", "999.M1P1Q0.h:2,S", b"c\n");
    let (mut mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    let d = root.path().join("bob");
    // The login renames nothing.
    assert_eq!(
        names(&d.join("new")),
        vec![
            ".hidden",
            "1000.M1P1Q1.h,S=3",
            "1001.M1P1Q2.h:2,S",
            "1002.M1P1Q3.h"
        ]
    );
    assert_eq!(names(&d.join("cur")), vec!["999.M1P1Q0.h:2,S"]);
    assert_eq!(
        uids(&infos),
        vec![
            "999.M1P1Q0.h",
            "1000.M1P1Q1.h,S=3",
            "1001.M1P1Q2.h",
            "1002.M1P1Q3.h"
        ]
    );
    assert_eq!(read_all(&mut mb, 1).unwrap(), b"a\n\n");
    assert_eq!(read_all(&mut mb, 2).unwrap(), b"b\n");
    // QUIT: the deleted one goes from new/ itself, the others kept move to cur/ (an info
    // suffix already there is kept as it is).
    mb.update(&[3]).unwrap();
    assert_eq!(names(&d.join("new")), vec![".hidden"]);
    assert_eq!(
        names(&d.join("cur")),
        vec![
            "1000.M1P1Q1.h,S=3:2,",
            "1001.M1P1Q2.h:2,S",
            "999.M1P1Q0.h:2,S"
        ]
    );
    // The next login sees the same messages under the same UIDs.
    let (_mb, again) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(
        uids(&again),
        vec!["999.M1P1Q0.h", "1000.M1P1Q1.h,S=3", "1001.M1P1Q2.h"]
    );
}

#[test]
fn a_session_without_quit_moves_nothing() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "new", "1000.M1P1Q1.h", b"a\n");
    let (mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["1000.M1P1Q1.h"]);
    drop(mb);
    assert_eq!(names(&root.path().join("bob/new")), vec!["1000.M1P1Q1.h"]);
    assert!(names(&root.path().join("bob/cur")).is_empty());
}

#[test]
fn a_name_taken_in_cur_is_not_overwritten_at_quit_but_left_in_new() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "cur", "5.M1P1Q1.h:2,", b"old\n");
    put(root.path(), "bob", "new", "5.M1P1Q1.h", b"newer\n");
    let (mut mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["5.M1P1Q1.h", "5.M1P1Q1.h"]);
    let mut bodies = vec![read_all(&mut mb, 0).unwrap(), read_all(&mut mb, 1).unwrap()];
    bodies.sort();
    assert_eq!(bodies, vec![b"newer\n".to_vec(), b"old\n".to_vec()]);
    mb.update(&[]).unwrap();
    assert_eq!(names(&root.path().join("bob/new")), vec!["5.M1P1Q1.h"]);
    assert_eq!(names(&root.path().join("bob/cur")), vec!["5.M1P1Q1.h:2,"]);
    assert_eq!(
        fs::read(root.path().join("bob/cur/5.M1P1Q1.h:2,")).unwrap(),
        b"old\n"
    );
    // Deleting the one in new/ works as well.
    let (mut mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    let in_new = (0..2)
        .find(|&i| read_all(&mut mb, i).unwrap() == b"newer\n")
        .unwrap();
    mb.update(&[in_new]).unwrap();
    assert!(names(&root.path().join("bob/new")).is_empty());
    assert_eq!(names(&root.path().join("bob/cur")), vec!["5.M1P1Q1.h:2,"]);
}

#[test]
fn snapshot_order_is_by_leading_seconds_then_name() {
    let root = tempfile::tempdir().unwrap();
    for name in [
        "1001.M1P1Q1.h",
        "999.M9P9Q9.h",
        "1000.Mb.h",
        "1000.Ma.h",
        "noseconds.h",
        "20.x",
    ] {
        put(root.path(), "bob", "new", name, b"x\n");
    }
    put(root.path(), "bob", "cur", "1000.Mab.h:2,RS", b"x\n");
    let (_mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(
        uids(&infos),
        vec![
            "20.x",
            "999.M9P9Q9.h",
            "1000.Ma.h",
            "1000.Mab.h",
            "1000.Mb.h",
            "1001.M1P1Q1.h",
            "noseconds.h"
        ]
    );
}

#[test]
fn a_large_snapshot_is_numbered_in_order_with_each_size_and_body_its_own() {
    // Listed in the directory's order (a hash order on ext4), spread over new/ and cur/, some
    // sharing a second; each name's W= and body say which message it is.
    let root = tempfile::tempdir().unwrap();
    for i in 0..600u64 {
        let n = (i * 7919) % 600;
        let (sub, info) = if n % 3 == 0 {
            ("cur", ":2,S")
        } else {
            ("new", "")
        };
        let name = format!("{}.M{n}.h,W={}{info}", 1000 + n / 2, 100 + n);
        put(root.path(), "bob", sub, &name, format!("{n}\n").as_bytes());
    }
    let (mut mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(infos.len(), 600);
    let mut expected: Vec<u64> = (0..600).collect();
    expected.sort_by_key(|n| {
        (
            1000 + n / 2,
            format!("{}.M{n}.h,W={}", 1000 + n / 2, 100 + n),
        )
    });
    for (i, n) in expected.into_iter().enumerate() {
        assert_eq!(
            infos[i].uid.as_ref(),
            format!("{}.M{n}.h,W={}", 1000 + n / 2, 100 + n)
        );
        assert_eq!(infos[i].size, 100 + n);
        assert_eq!(read_all(&mut mb, i).unwrap(), format!("{n}\n").as_bytes());
    }
}

#[test]
fn only_regular_non_dot_files_are_messages() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "cur", "1.M1.h:2,", b"one\n");
    put(root.path(), "bob", "cur", ".2.M1.h:2,", b"dot file\n");
    fs::create_dir(root.path().join("bob/cur/3.M1.h:2,")).unwrap();
    fs::create_dir(root.path().join("bob/new/4.M1.h")).unwrap();
    let secret = root.path().join("secret");
    fs::write(&secret, b"not mail\n").unwrap();
    std::os::unix::fs::symlink(&secret, root.path().join("bob/cur/5.M1.h:2,")).unwrap();
    std::os::unix::fs::symlink(&secret, root.path().join("bob/new/6.M1.h")).unwrap();
    let (_mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["1.M1.h"]);
}

#[test]
fn sizes_come_from_w_or_from_counting() {
    let root = tempfile::tempdir().unwrap();
    // W= is trusted (that is the point: no read at login), even when it disagrees.
    put(root.path(), "bob", "new", "1.M1P1Q1.h,S=4,W=99", b"abc\n");
    // S= alone is the size on disk, not on the wire: counted.
    put(
        root.path(),
        "bob",
        "new",
        "2.M1P1Q1.h,S=30",
        b"Subject: one\n\nfirst body\n",
    );
    put(
        root.path(),
        "bob",
        "new",
        "3.M1P1Q1.h",
        b"a\nb\r\nc\rd\n\nno final newline",
    );
    put(root.path(), "bob", "new", "4.M1P1Q1.h,W=x", b"\n\n");
    put(root.path(), "bob", "new", "5.M1P1Q1.h", b"");
    let (_mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    let sizes: Vec<u64> = infos.iter().map(|m| m.size).collect();
    let one = b"Subject: one\r\n\r\nfirst body\r\n".len() as u64;
    let three = b"a\r\nb\r\nc\rd\r\n\r\nno final newline".len() as u64;
    assert_eq!(sizes, vec![99, one, three, 4, 0]);
}

#[test]
fn read_streams_from_offsets_and_switches_messages() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "new", "1.M1.h", b"first message\n");
    put(root.path(), "bob", "cur", "2.M1.h:2,S", b"second\n");
    let (mut mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(read_all(&mut mb, 0).unwrap(), b"first message\n");
    assert_eq!(read_all(&mut mb, 1).unwrap(), b"second\n");
    let mut buf = [0u8; 4];
    assert_eq!(mb.read(0, 6, &mut buf).unwrap(), 4);
    assert_eq!(&buf, b"mess");
    assert_eq!(mb.read(0, 1000, &mut buf).unwrap(), 0);
    let e = mb.read(2, 0, &mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    // Still usable after a bad index.
    assert_eq!(read_all(&mut mb, 1).unwrap(), b"second\n");
}

#[test]
fn a_message_removed_after_the_snapshot_is_a_read_error() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "cur", "1.M1.h:2,", b"one\n");
    put(root.path(), "bob", "cur", "2.M1.h:2,", b"two\n");
    let (mut mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    fs::remove_file(root.path().join("bob/cur/2.M1.h:2,")).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        mb.read(1, 0, &mut buf).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    // Removed while open: the open file still reads (POP keeps its snapshot).
    assert_eq!(mb.read(0, 0, &mut buf).unwrap(), 4);
    fs::remove_file(root.path().join("bob/cur/1.M1.h:2,")).unwrap();
    assert_eq!(mb.read(0, 0, &mut buf).unwrap(), 4);
}

#[test]
fn update_deletes_only_what_was_marked() {
    let root = tempfile::tempdir().unwrap();
    for i in 1..=4 {
        put(root.path(), "bob", "new", &format!("{i}.M1.h"), b"m\n");
    }
    let (mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(infos.len(), 4);
    // Someone else already removed one of those marked: fine.
    fs::remove_file(root.path().join("bob/new/3.M1.h")).unwrap();
    mb.update(&[0, 2, 2, 99]).unwrap();
    assert!(names(&root.path().join("bob/new")).is_empty());
    assert_eq!(
        names(&root.path().join("bob/cur")),
        vec!["2.M1.h:2,", "4.M1.h:2,"]
    );
    let (_mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["2.M1.h", "4.M1.h"]);
}

#[test]
fn update_failure_is_temporary_names_the_file_and_still_unlocks() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "cur", "1.M1.h:2,", b"one\n");
    put(root.path(), "bob", "cur", "2.M1.h:2,", b"two\n");
    let (mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    // A non-empty directory where the message was: unlink fails even for root.
    let path = root.path().join("bob/cur/1.M1.h:2,");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    fs::write(path.join("x"), b"").unwrap();
    match mb.update(&[0, 1]) {
        Err(MailboxError::Temporary(why)) => {
            assert!(
                why.contains("cannot delete") && why.contains("1.M1.h:2,"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The other deletion still happened, and the lock is gone.
    assert!(!root.path().join("bob/cur/2.M1.h:2,").exists());
    assert!(Mailbox::open(root.path(), "bob").is_ok());
}

#[test]
fn mail_arriving_during_a_session_waits_for_the_next() {
    let root = tempfile::tempdir().unwrap();
    put(root.path(), "bob", "new", "1.M1.h", b"one\n");
    let (mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(infos.len(), 1);
    put(root.path(), "bob", "new", "2.M1.h", b"two\n");
    mb.update(&[]).unwrap();
    assert_eq!(names(&root.path().join("bob/new")), vec!["2.M1.h"]);
    let (_mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["1.M1.h", "2.M1.h"]);
}

// ---- symbolic links are never followed (issue 10 item 6) -----------------------------------

/// Another user's Maildir with one message in `cur/` and one in `new/`: what a symlink in
/// bob's Maildir points at.
fn victim(root: &Path) -> PathBuf {
    put(root, "victim", "cur", "1.M1.v:2,", b"victim cur\n");
    put(root, "victim", "new", "2.M1.v", b"victim new\n");
    root.join("victim")
}

fn victim_untouched(v: &Path) {
    assert_eq!(names(&v.join("cur")), vec!["1.M1.v:2,"]);
    assert_eq!(names(&v.join("new")), vec!["2.M1.v"]);
    assert_eq!(fs::read(v.join("cur/1.M1.v:2,")).unwrap(), b"victim cur\n");
    assert!(!v.join(LOCK_FILE).exists());
}

fn refused(root: &Path, user: &str, link: &Path) {
    match Mailbox::open(root, user) {
        Err(MailboxError::Temporary(why)) => assert_eq!(
            why,
            format!(
                "mailbox {user}: refusing {}: is a symbolic link",
                link.display()
            )
        ),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("opened through {}", link.display()),
    }
}

#[test]
fn a_symlinked_maildir_is_refused_and_its_target_untouched() {
    let root = tempfile::tempdir().unwrap();
    let v = victim(root.path());
    std::os::unix::fs::symlink(&v, root.path().join("bob")).unwrap();
    refused(root.path(), "bob", &root.path().join("bob"));
    victim_untouched(&v);
}

#[test]
fn a_symlinked_cur_or_new_is_refused_and_its_target_untouched() {
    for sub in ["cur", "new"] {
        let root = tempfile::tempdir().unwrap();
        let v = victim(root.path());
        put(root.path(), "bob", "new", "3.M1.b", b"bob's\n");
        let link = root.path().join("bob").join(sub);
        fs::remove_dir_all(&link).unwrap();
        std::os::unix::fs::symlink(v.join(sub), &link).unwrap();
        refused(root.path(), "bob", &link);
        victim_untouched(&v);
    }
}

#[test]
fn a_message_replaced_by_a_symlink_is_not_read_and_deleting_it_removes_only_the_link() {
    let root = tempfile::tempdir().unwrap();
    let v = victim(root.path());
    put(root.path(), "bob", "cur", "1.M1.h:2,", b"one\n");
    let (mut mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(uids(&infos), vec!["1.M1.h"]);
    let path = root.path().join("bob/cur/1.M1.h:2,");
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(v.join("cur/1.M1.v:2,"), &path).unwrap();
    assert!(read_all(&mut mb, 0).is_err());
    mb.update(&[0]).unwrap();
    assert!(fs::symlink_metadata(&path).is_err());
    victim_untouched(&v);
}

#[test]
fn cur_swapped_for_a_symlink_during_a_session_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let v = victim(root.path());
    put(root.path(), "bob", "cur", "1.M1.v:2,", b"bob's own\n");
    let (mut mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    let cur = root.path().join("bob/cur");
    fs::rename(&cur, root.path().join("bob/cur.old")).unwrap();
    std::os::unix::fs::symlink(v.join("cur"), &cur).unwrap();
    // The session keeps reading in the cur/ it opened; QUIT's deletions open cur/ again in
    // the executor (O_NOFOLLOW), so they are refused rather than made through the link.
    assert_eq!(read_all(&mut mb, 0).unwrap(), b"bob's own\n");
    match mb.update(&[0]) {
        Err(MailboxError::Temporary(why)) => assert!(why.contains("bob/cur"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(names(&root.path().join("bob/cur.old")), vec!["1.M1.v:2,"]);
    victim_untouched(&v);
}

#[test]
fn wire_size_counts_the_file_whatever_w_says() {
    let root = tempfile::tempdir().unwrap();
    // W= says more than the file holds, then less, then the truth.
    put(root.path(), "bob", "new", "1.M1P1Q1.h,W=99", b"abc\n");
    put(
        root.path(),
        "bob",
        "new",
        "2.M1P1Q1.h,W=3",
        b"Subject: x\n\nlonger body\n",
    );
    put(root.path(), "bob", "new", "3.M1P1Q1.h,W=5", b"abc\n");
    let (mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    let listed: Vec<u64> = infos.iter().map(|m| m.size).collect();
    assert_eq!(listed, vec![99, 3, 5], "listings still trust W=");
    let real = b"Subject: x\r\n\r\nlonger body\r\n".len() as u64;
    // Counted in the executor (`Job::size`), which hands the mailbox back each time.
    let count = |mb: Mailbox, i| {
        let (mb, size) = mb.size_now(i);
        (mb.expect("the mailbox comes back"), size)
    };
    let (mb, size) = count(mb, 0);
    assert_eq!(size, Ok(5));
    let (mut mb, size) = count(mb, 1);
    assert_eq!(size, Ok(real));
    // Counting again, or after a read, reads from the start (the executor opens the name).
    assert_eq!(
        read_all(&mut mb, 1).unwrap(),
        b"Subject: x\n\nlonger body\n"
    );
    let (mb, size) = count(mb, 1);
    assert_eq!(size, Ok(real));
    let (mb, size) = count(mb, 2);
    assert_eq!(size, Ok(5));
    // No such message; a message removed since the login (named in the error).
    let (mb, size) = count(mb, 3);
    assert!(size.is_err());
    std::fs::remove_file(root.path().join("bob/new/3.M1P1Q1.h,W=5")).unwrap();
    let (_mb, size) = count(mb, 2);
    match size {
        Err(MailboxError::Temporary(why)) => {
            assert!(why.contains("3.M1P1Q1.h,W=5"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

// ---- the jobs, turn by turn (`job::Jobs` on an inline executor) ----------------------------

use crate::exec::{Executor, Inline};
use crate::limits::{EXEC_WIRE_SIZE_BATCH, MAILBOX_IN_FLIGHT};
use job::{Job, JobResult, Jobs};

/// Runs `jobs` turn by turn as the reactor does (one pump, then the completions) until one
/// finishes; returns it and the operations each turn submitted.
fn turns(jobs: &mut Jobs, exec: &mut Executor) -> (job::Finished, Vec<usize>) {
    let mut per_turn = Vec::new();
    let mut done = Vec::new();
    for _ in 0..100_000 {
        let before = exec.in_flight();
        jobs.pump(Some(exec));
        per_turn.push(exec.in_flight() - before);
        exec.drain(&mut done);
        for c in done.drain(..) {
            assert!(job::owns(c.tag));
            jobs.complete(c);
        }
        if let Some(f) = jobs.take_finished().pop() {
            return (f, per_turn);
        }
    }
    panic!("the job never ends");
}

fn inline() -> Executor {
    Executor::Inline(Inline::new())
}

#[test]
fn opening_lists_and_quit_moves_in_bounded_turns() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        put(
            root.path(),
            "bob",
            "new",
            &format!("{}.M{i}.h,S=3,W=4", 1000 + i),
            b"ab\n",
        );
    }
    put(root.path(), "bob", "cur", "5000.counted:2,", b"a\nb\n");
    let mut exec = inline();
    let mut jobs = Jobs::new();
    jobs.start(3, 9, Job::open(root.path(), "bob"));
    // The lock is taken at once, before any executor work.
    assert!(matches!(
        Mailbox::open(root.path(), "bob"),
        Err(MailboxError::InUse)
    ));
    let (f, per_turn) = turns(&mut jobs, &mut exec);
    assert_eq!((f.slot, f.conn), (3, 9));
    let JobResult::Opened(Ok((mb, infos))) = f.result else {
        panic!("not opened");
    };
    assert_eq!(infos.len(), 1001);
    assert_eq!(infos[0].uid.as_ref(), "1000.M0.h,S=3,W=4");
    assert_eq!(infos[0].size, 4);
    assert_eq!(infos[1000].size, 6, "counted: no W=");
    // The opening renames nothing: a listing in batches, a few operations a turn.
    assert_eq!(names(&root.path().join("bob/new")).len(), 1000);
    assert_eq!(names(&root.path().join("bob/cur")).len(), 1);
    assert!(
        per_turn.iter().all(|&n| n <= MAILBOX_IN_FLIGHT),
        "{per_turn:?}"
    );
    assert!(
        per_turn.len() < 1000 / MAILBOX_IN_FLIGHT,
        "a listing, not an operation per message: {} turns",
        per_turn.len()
    );
    // QUIT with nothing deleted: the 1,000 move to cur/, a few operations a turn, so one job
    // never has more than a few operations ahead of other clients' commits.
    jobs.start(3, 9, Ok(Job::update(mb, &[])));
    let (f, per_turn) = turns(&mut jobs, &mut exec);
    assert!(matches!(f.result, JobResult::Updated(Ok(()))));
    assert!(names(&root.path().join("bob/new")).is_empty());
    assert_eq!(names(&root.path().join("bob/cur")).len(), 1001);
    assert!(
        per_turn.iter().all(|&n| n <= MAILBOX_IN_FLIGHT),
        "{per_turn:?}"
    );
    assert!(
        per_turn.len() > 1000 / MAILBOX_IN_FLIGHT,
        "1000 moves take many turns: {}",
        per_turn.len()
    );
}

#[test]
fn messages_without_w_are_counted_in_batches_per_directory() {
    let root = tempfile::tempdir().unwrap();
    // 60 in new/, 40 in cur/, interleaved in time; none with W=, each with n bare LFs.
    for i in 0..100usize {
        let (sub, info) = if i % 5 < 3 {
            ("new", "")
        } else {
            ("cur", ":2,")
        };
        put(
            root.path(),
            "bob",
            sub,
            &format!("{}.M{i}.h{info}", 1000 + i),
            &b"\n".repeat(i),
        );
    }
    let mut exec = inline();
    let mut jobs = Jobs::new();
    jobs.start(3, 9, Job::open(root.path(), "bob"));
    let (f, per_turn) = turns(&mut jobs, &mut exec);
    let JobResult::Opened(Ok((_mb, infos))) = f.result else {
        panic!("not opened");
    };
    let sizes: Vec<u64> = infos.iter().map(|m| m.size).collect();
    assert_eq!(sizes, (0..100).map(|i| 2 * i).collect::<Vec<u64>>());
    // Opening the three directories, one listing each of new/ and cur/, 2 + 2 counting
    // batches (60 and 40 names), three closes: not an operation per message.
    let ops: usize = per_turn.iter().sum();
    assert_eq!(
        ops,
        3 + 2 + 60usize.div_ceil(EXEC_WIRE_SIZE_BATCH) + 40usize.div_ceil(EXEC_WIRE_SIZE_BATCH) + 3
    );
}

#[test]
fn quit_deletes_in_several_turns_and_reports_what_failed() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..300 {
        put(
            root.path(),
            "bob",
            "cur",
            &format!("{}.M{i}.h,W=2:2,", 1000 + i),
            b"x\n",
        );
    }
    let (mb, infos) = Mailbox::open(root.path(), "bob").unwrap();
    assert_eq!(infos.len(), 300);
    // Message 150 becomes a directory with something in it: its unlink fails (EISDIR).
    let stuck = root.path().join("bob/cur/1150.M150.h,W=2:2,");
    fs::remove_file(&stuck).unwrap();
    fs::create_dir(&stuck).unwrap();
    fs::write(stuck.join("x"), b"").unwrap();
    let mut exec = inline();
    let mut jobs = Jobs::new();
    let all: Vec<usize> = (0..300).collect();
    jobs.start(1, 2, Ok(Job::update(mb, &all)));
    let (f, per_turn) = turns(&mut jobs, &mut exec);
    let JobResult::Updated(Err(MailboxError::Temporary(why))) = f.result else {
        panic!("the failure is not reported");
    };
    assert!(why.contains("1 of 300"), "{why}");
    assert!(why.contains("1150.M150.h,W=2:2,"), "{why}");
    assert_eq!(
        names(&root.path().join("bob/cur")),
        vec!["1150.M150.h,W=2:2,"],
        "every other message is gone"
    );
    let unlink_turns = per_turn.iter().filter(|&&n| n == MAILBOX_IN_FLIGHT).count();
    assert!(unlink_turns >= 300 / MAILBOX_IN_FLIGHT, "{per_turn:?}");
    assert!(per_turn.iter().all(|&n| n <= MAILBOX_IN_FLIGHT));
    // The lock went with the job.
    assert!(Mailbox::open(root.path(), "bob").is_ok());
}

/// On io_uring a turn's operations reach the kernel in one `io_uring_enter`, not one each
/// (60,000 unlinks were 60,000 system calls on the reactor, most of its time in QUIT).
#[test]
fn a_turn_submits_to_the_ring_once() {
    let Some(mut exec) = crate::exec::tests::uring() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    for i in 0..300 {
        put(
            root.path(),
            "bob",
            "cur",
            &format!("{}.M{i}.h,W=2:2,", 1000 + i),
            b"x\n",
        );
    }
    let (mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    let mut jobs = Jobs::new();
    let all: Vec<usize> = (0..300).collect();
    jobs.start(1, 2, Ok(Job::update(mb, &all)));
    let mut done = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut busy_turns = 0;
    loop {
        assert!(std::time::Instant::now() < deadline, "the job never ends");
        let (calls, in_flight) = (exec.submit_calls(), exec.in_flight());
        jobs.pump(Some(&mut exec));
        let submitted = exec.in_flight() - in_flight;
        assert!(
            exec.submit_calls() - calls <= 1,
            "{submitted} operations took {} io_uring_enter calls",
            exec.submit_calls() - calls
        );
        busy_turns += usize::from(submitted > 1);
        exec.drain(&mut done);
        for c in done.drain(..) {
            jobs.complete(c);
        }
        if let Some(f) = jobs.take_finished().pop() {
            assert!(matches!(f.result, JobResult::Updated(Ok(()))));
            break;
        }
    }
    assert!(busy_turns > 0, "no turn submitted more than one operation");
    assert!(names(&root.path().join("bob/cur")).is_empty());
}

/// While other work waits in the executor (a client's commit), a mailbox job keeps one
/// operation in flight, not `MAILBOX_IN_FLIGHT`: that work waits behind one at most. The job
/// still ends.
#[test]
fn other_work_in_the_executor_leaves_the_job_one_operation() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..100 {
        put(
            root.path(),
            "bob",
            "cur",
            &format!("{}.M{i}.h,W=2:2,", 1000 + i),
            b"x\n",
        );
    }
    let (mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    let mut exec = inline();
    let mut jobs = Jobs::new();
    let all: Vec<usize> = (0..100).collect();
    jobs.start(1, 2, Ok(Job::update(mb, &all)));
    let other = || crate::exec::DiskOp::Unlink {
        dir: None,
        path: std::ffi::CString::new(root.path().join("nothing").to_str().unwrap()).unwrap(),
    };
    let mut done = Vec::new();
    for turn in 0..10_000 {
        // Someone else's operation is in flight at every pump.
        exec.submit(7, other()).unwrap();
        let before = exec.in_flight();
        jobs.pump(Some(&mut exec));
        let submitted = exec.in_flight() - before;
        assert!(
            submitted <= 1,
            "turn {turn}: {submitted} mailbox operations"
        );
        exec.drain(&mut done);
        for c in done.drain(..) {
            if job::owns(c.tag) {
                jobs.complete(c);
            }
        }
        if let Some(f) = jobs.take_finished().pop() {
            assert!(matches!(f.result, JobResult::Updated(Ok(()))));
            assert!(names(&root.path().join("bob/cur")).is_empty());
            return;
        }
    }
    panic!("the job never ends");
}

#[test]
fn a_detached_opening_stops_and_unlocks_a_detached_update_finishes() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..500 {
        put(
            root.path(),
            "bob",
            "new",
            &format!("{}.M{i}.h,W=2", 1000 + i),
            b"x\n",
        );
    }
    let mut exec = inline();
    let mut jobs = Jobs::new();
    jobs.start(4, 1, Job::open(root.path(), "bob"));
    let mut done = Vec::new();
    // A few turns in, the connection goes.
    for _ in 0..4 {
        jobs.pump(Some(&mut exec));
        exec.drain(&mut done);
        for c in done.drain(..) {
            jobs.complete(c);
        }
    }
    jobs.detach(4);
    for _ in 0..100 {
        jobs.pump(Some(&mut exec));
        exec.drain(&mut done);
        for c in done.drain(..) {
            jobs.complete(c);
        }
        assert!(
            jobs.take_finished().is_empty(),
            "no result for a detached job"
        );
    }
    assert!(!jobs.busy(), "the opening stopped");
    assert!(
        !names(&root.path().join("bob/new")).is_empty(),
        "it stopped before moving everything"
    );
    let (mb, infos) = Mailbox::open(root.path(), "bob").expect("unlocked");
    let all: Vec<usize> = (0..infos.len()).collect();
    jobs.start(4, 2, Ok(Job::update(mb, &all)));
    jobs.detach(4);
    for _ in 0..1000 {
        if !jobs.busy() {
            break;
        }
        jobs.pump(Some(&mut exec));
        exec.drain(&mut done);
        for c in done.drain(..) {
            jobs.complete(c);
        }
        assert!(jobs.take_finished().is_empty());
    }
    assert!(
        names(&root.path().join("bob/cur")).is_empty(),
        "QUIT's deletions all done"
    );
}

#[test]
fn a_full_executor_makes_a_job_wait_not_fail() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..10 {
        put(
            root.path(),
            "bob",
            "cur",
            &format!("{}.M{i}.h,W=2:2,", 1000 + i),
            b"x\n",
        );
    }
    let mut exec = inline();
    // Fill the executor with someone else's operations.
    for t in 0..crate::limits::EXEC_MAX_IN_FLIGHT as u64 {
        let op = crate::exec::DiskOp::Mkdir {
            dir: None,
            path: std::ffi::CString::new("/nonexistent/x").unwrap(),
            mode: 0o700,
        };
        exec.submit(t, op).unwrap();
    }
    let mut jobs = Jobs::new();
    jobs.start(0, 0, Job::open(root.path(), "bob"));
    jobs.pump(Some(&mut exec));
    assert!(!jobs.runnable(), "blocked until a completion comes");
    let mut done = Vec::new();
    exec.drain(&mut done);
    assert_eq!(done.len(), crate::limits::EXEC_MAX_IN_FLIGHT);
    let (f, _) = turns(&mut jobs, &mut exec);
    assert!(matches!(f.result, JobResult::Opened(Ok((_, ref i))) if i.len() == 10));
}

/// Writes `path` out and drops it from the page cache, as a message delivered long ago.
fn drop_from_cache(path: &Path) {
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a plain descriptor call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// A message that is not in the page cache is not read on the reactor: the read says
/// `WouldBlock` and names the part to read in; once that is read in (`Job::warm`, in the
/// executor) the transfer goes on, and the message arrives whole and byte for byte.
#[test]
fn a_message_not_in_memory_is_read_in_first() {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let name = "1.M1P1Q1.h,S=524288,W=524288:2,";
    put(root.path(), "bob", "cur", name, &data);
    drop_from_cache(&root.path().join("bob/cur").join(name));
    let (mut mb, _) = Mailbox::open(root.path(), "bob").unwrap();
    let mut buf = [0u8; 4096];
    let e = mb.read(0, 0, &mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert!(mb.warm.is_some(), "the part to read in is noted");
    let mut out = Vec::new();
    let mut warms = 0;
    loop {
        match mb.read(0, out.len() as u64, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                warms += 1;
                mb = mb.warm_now().unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(out, data);
    // At most one read in per window (the kernel's readahead may make it fewer).
    let windows = (data.len() as u64).div_ceil(crate::limits::POP_WARM_WINDOW);
    assert!((1..=windows).contains(&warms), "{warms} read-ins");
}
