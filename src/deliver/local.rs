//! Delivery into a local user's Maildir (the Maildir specification: tmp/ → fsync → new/).
//!
//! Files are written with LF line endings (the Unix convention every Maildir reader expects),
//! headed by `Return-Path:` and `Delivered-To:`, and named as `crate::maildir` says (the
//! unique part from the queue entry alone, then `S=` and `W=`). Every attempt at the same
//! entry therefore names its file the same way, which makes delivery idempotent across a
//! crash: a rename into `new/` over a copy already there replaces it, and an entry found in
//! the queue at start-up first looks for its copy in `new/` and `cur/` (`delivered_before`)
//! and counts it delivered instead of writing it again. The file in `tmp/` keeps a
//! per-process name, so a half-written leftover of a crashed attempt is never in the way.
//!
//! No symbolic link is followed at or below `<mailbox_dir>/<user>` (`crate::maildir`'s rule,
//! through `crate::dirfd`): the Maildir and its `tmp/ new/` are opened with `O_NOFOLLOW` once
//! per delivery batch and user, and every file is created, renamed and removed relative to
//! those descriptors. A symlink in their place is refused with a temporary failure naming it
//! (the administrator fixes it; the message waits in the queue).
//!
//! A queue entry in the Maildir form (see `crate::spool`, "link-1") is not copied: its file
//! already holds the copy's bytes, so `stage_link` stages a link into `new/` under the same
//! name a copy would get, which the commit makes in the executor alongside the other files'
//! data syncs (a link on the reactor waited for the disk now and then: most likely behind the
//! executor's sync of the same `new/`), and for it only `new/` is synced. When the link fails
//! (another file system), the file is copied in the same commit.
//!
//! Staging writes nothing (`stage` opens the user's directories and notes what to copy); a
//! batch's commit makes its files and waits for the disk in the executor, not on the reactor
//! (`Maildirs::commit_pump`): every copy is created in `tmp/`, written and synced
//! (`exec::DiskOp::MaildirCopy`, given the `tmp/` descriptor) and every link made, then,
//! once all are in, the copies are renamed into `new/` (relative to the same descriptors),
//! then each `new/` directory's sync is submitted; a file counts as delivered only when the
//! sync of its `new/` is in. A failure at any step is a temporary failure of the files it
//! concerns only. Without an executor (tests, shutdown), `commit_step` does the same with
//! blocking calls.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Outcome;
use crate::dirfd::{Dir, Kind};
use crate::durable::{self, SyncMode};
use crate::exec::{DiskOp, Errno, Executor, Handle, Outcome as ExecOutcome, Reject};
use crate::maildir::{
    self, CopySource, MessageKey, make_sub, open_sub, open_user_dir, queue_id_of,
    safe_mailbox_name, unique_part,
};

pub struct Maildirs {
    root: PathBuf,
    /// The host name with `/` and `:` replaced, as the Maildir spec asks.
    host: String,
    pid: u32,
    seq: u64,
    /// Users whose `cur/` was seen or made and whose `tmp/` was cleaned in this process.
    ready: HashSet<String>,
    /// Per user, the unique names of the copies in `new/` and `cur/` of entries that may have
    /// been delivered before a restart: one listing per user, made at the first question.
    seen: HashMap<String, HashSet<String>>,
    /// The directories of each user delivered to in the current batch, opened once for the
    /// whole batch (see `commit_step`, which forgets them when the batch is committed).
    open: HashMap<String, Rc<UserDirs>>,
    sync_mode: SyncMode,
    /// A link failed with EXDEV (the spool is on another file system), which was logged:
    /// from then on entries in the Maildir form are copied without trying.
    links_cross_filesystems: bool,
}

/// One user's Maildir directories, opened without following symlinks.
pub struct UserDirs {
    tmp: Dir,
    new: Dir,
}

/// Removes files from a Maildir's `tmp/` not touched for `limits::MAILDIR_TMP_MAX_AGE`, as the
/// Maildir specification asks: what a crash left half-written. Done on the first delivery to
/// each user after start-up, so it costs one directory read per user and process.
fn clean_tmp(tmp: &Dir, now: SystemTime) {
    let Ok(entries) = tmp.entries() else {
        return;
    };
    for (name, kind) in entries {
        let Some(name) = name.to_str().filter(|_| kind == Kind::File) else {
            continue;
        };
        let old = tmp
            .stat(name)
            .ok()
            .filter(|st| st.kind == Kind::File)
            .and_then(|st| now.duration_since(st.modified).ok())
            .is_some_and(|age| age >= crate::limits::MAILDIR_TMP_MAX_AGE);
        if old {
            let path = tmp.path().join(name);
            match tmp.remove_file(name) {
                Ok(()) => log::info!("maildir: removed stale {}", path.display()),
                Err(e) => log::warn!("maildir: cannot remove {}: {e}", path.display()),
            }
        }
    }
}

fn temporary(what: &str, path: &Path, e: &io::Error) -> Outcome {
    Outcome::Temporary(format!("{what} {}: {e}", path.display()))
}

impl Maildirs {
    pub fn new(root: &Path, hostname: &str) -> Maildirs {
        let host = maildir::host_component(hostname);
        Maildirs {
            root: root.to_path_buf(),
            host,
            pid: std::process::id(),
            seq: 0,
            ready: HashSet::new(),
            seen: HashMap::new(),
            open: HashMap::new(),
            sync_mode: SyncMode::default(),
            links_cross_filesystems: false,
        }
    }

    pub fn user_dir(&self, user: &str) -> PathBuf {
        self.root.join(user)
    }

    /// The unique part of the name of every copy of one queue entry (`maildir::unique_name`
    /// with this host's name).
    pub fn unique_name(&self, key: &MessageKey) -> String {
        maildir::unique_name(key, &self.host)
    }

    /// Is a copy named `unique` (see `unique_name`) already in `user`'s `new/` or `cur/`, in
    /// `cur/` with whatever info a reader added? For entries that may have been delivered
    /// before a restart; `maybe_delivered` says which queue ids those are. The first question
    /// about a user lists `new/` and `cur/` once and keeps only the names of those entries,
    /// so the cost is one listing per user and start, and the memory is bounded by the queue.
    /// (A copy delivered, fetched and deleted over POP before the restart is not there to be
    /// found: that entry is delivered again.)
    pub fn delivered_before(
        &mut self,
        user: &str,
        unique: &str,
        maybe_delivered: &dyn Fn(&str) -> bool,
    ) -> bool {
        if !safe_mailbox_name(user) {
            return false;
        }
        if !self.seen.contains_key(user) {
            let mut names = HashSet::new();
            // Read through descriptors that never follow a symlink, like every other access.
            let maildir = Dir::open(&self.user_dir(user));
            for sub in ["new", "cur"] {
                let Some(entries) = maildir
                    .as_ref()
                    .ok()
                    .and_then(|m| m.open_dir(sub).ok())
                    .and_then(|d| d.entries().ok())
                else {
                    continue;
                };
                for (name, _) in entries {
                    let Some(name) = name.to_str() else { continue };
                    let unique = unique_part(name);
                    if queue_id_of(unique).is_some_and(maybe_delivered) {
                        names.insert(unique.to_string());
                    }
                }
            }
            self.seen.insert(user.to_string(), names);
        }
        self.seen
            .get(user)
            .is_some_and(|n| n.contains(unique_part(unique)))
    }

    /// Drops the listings `delivered_before` made (every entry they were for is settled).
    pub fn forget_listings(&mut self) {
        self.seen = HashMap::new();
    }

    /// The user's `tmp/` and `new/` for this batch: opened (and made where missing) at the
    /// first delivery to the user in the batch, shared by the rest. On the first delivery
    /// after start-up (or after the Maildir was made again) also makes `cur/` and cleans
    /// `tmp/`.
    fn dirs_for(&mut self, user: &str, now: SystemTime) -> Result<Rc<UserDirs>, Outcome> {
        if let Some(d) = self.open.get(user) {
            return Ok(Rc::clone(d));
        }
        let opened = (|| {
            let (dir, created) = open_user_dir(&self.root, user)?;
            let tmp = open_sub(user, &dir, "tmp")?;
            let new = open_sub(user, &dir, "new")?;
            let fresh = created || !self.ready.contains(user);
            if fresh {
                make_sub(user, &dir, "cur")?;
            }
            Ok::<_, String>((UserDirs { tmp, new }, fresh))
        })();
        let (dirs, fresh) = opened.map_err(Outcome::Temporary)?;
        if fresh {
            clean_tmp(&dirs.tmp, now);
            self.ready.insert(user.to_string());
        }
        let dirs = Rc::new(dirs);
        self.open.insert(user.to_string(), Rc::clone(&dirs));
        Ok(dirs)
    }

    /// Delivers one queued message (`source`) to `user` as the file `unique` (see
    /// `unique_name`) with blocking calls. Returns only after the file is durable in `new/`.
    pub fn deliver(
        &mut self,
        user: &str,
        unique: &str,
        return_path: &str,
        delivered_to: &str,
        source: CopySource,
        now: SystemTime,
    ) -> Outcome {
        match self.stage(user, unique, return_path, delivered_to, source, now) {
            Ok(staged) => self
                .commit(vec![staged])
                .pop()
                .unwrap_or(Outcome::Delivered),
            Err(outcome) => outcome,
        }
    }

    /// A file name in `tmp/`, unique to this process and attempt: a crashed attempt's leftover
    /// in tmp/ (same entry, same final name) is never in the way.
    fn tmp_name(&mut self, now: SystemTime) -> String {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.seq += 1;
        format!(
            "{}.M{}P{}Q{}.{}",
            since.as_secs(),
            since.subsec_micros(),
            self.pid,
            self.seq,
            self.host
        )
    }

    /// First half of a delivery: checks the user name, opens (or makes) the Maildir and
    /// stages a copy of the queued message (`source`) into its `tmp/`, to be written by the
    /// commit: in the disk executor with the other files of the batch (`commit_pump`), or
    /// with blocking calls (`commit_step`). The copy's name in `new/` carries its sizes, known
    /// once it is written.
    pub fn stage(
        &mut self,
        user: &str,
        unique: &str,
        return_path: &str,
        delivered_to: &str,
        source: CopySource,
        now: SystemTime,
    ) -> Result<Staged, Outcome> {
        if !safe_mailbox_name(user) {
            return Err(Outcome::Permanent(format!(
                "5.1.3 mailbox name {user:?} is not allowed"
            )));
        }
        let head = crate::lf::maildir_head(return_path, delivered_to).into_bytes();
        if head.len() > crate::limits::EXEC_COPY_HEAD_MAX {
            return Err(Outcome::Permanent(
                "5.1.3 address too long for a Maildir trace line".into(),
            ));
        }
        let dirs = self.dirs_for(user, now)?;
        Ok(Staged {
            dirs,
            tmp: self.tmp_name(now),
            name: String::new(),
            file: None,
            made: false,
            link: None,
            copy: Some(Copy {
                unique: unique.to_string(),
                head,
                source,
                instead_of_link: None,
            }),
        })
    }

    /// First half of a delivery by link: `queued` is the spool's file of the entry, in the
    /// Maildir form (the very bytes `stage` would write), and is to get a second name in
    /// `new/`, `unique` with its sizes. The link itself is made by the commit, in the disk
    /// executor with the other files' syncs (on the reactor a link waited for the disk now
    /// and then: up to 2 ms under a steady load). Its data was made
    /// durable by the spool's commit, so the commit only syncs `new/` for it. An earlier
    /// attempt's name already there (a crash came before the entry was removed) is that same
    /// file: it is kept. A link that fails is replaced by a copy of the file in the same
    /// commit (`copy_instead`). None when links are known to fail (EXDEV seen: another file
    /// system) or the Maildir cannot be opened: the caller copies, which also reports what is
    /// wrong with the Maildir.
    pub fn stage_link(
        &mut self,
        user: &str,
        unique: &str,
        queued: &Path,
        size: u64,
        wire_size: u64,
        now: SystemTime,
    ) -> Option<Staged> {
        if !safe_mailbox_name(user) || self.links_cross_filesystems {
            return None;
        }
        let dirs = self.dirs_for(user, now).ok()?;
        Some(Staged {
            dirs,
            tmp: String::new(),
            name: maildir::sized_name(unique, size, wire_size),
            file: None,
            made: false,
            link: Some(queued.to_path_buf()),
            copy: None,
        })
    }

    /// A link into `new/` that failed with `e`: the queued file's bytes (already the Maildir
    /// form) are to be copied into `tmp/` instead, then synced and renamed like any copy.
    /// False (the staged file stays a failed link) if its path cannot name a file.
    fn copy_instead(&mut self, s: &mut Staged, e: &io::Error) -> bool {
        let Some(queued) = s.link.clone() else {
            return false;
        };
        let exdev = e.raw_os_error() == Some(libc::EXDEV);
        if !exdev || !self.links_cross_filesystems {
            log::info!(
                "maildir: cannot link {} into {}: {e}; copying instead",
                queued.display(),
                s.dirs.new.path().display()
            );
        }
        self.links_cross_filesystems |= exdev;
        let Ok(path) = CString::new(queued.as_os_str().as_bytes()) else {
            return false;
        };
        s.copy = Some(Copy {
            unique: unique_part(&s.name).to_string(),
            head: Vec::new(),
            source: CopySource {
                path,
                offset: 0,
                len: u64::MAX,
                lf_form: true,
            },
            instead_of_link: Some(queued),
        });
        s.tmp = self.tmp_name(SystemTime::now());
        s.link = None;
        true
    }

    /// A staged copy written with blocking calls (`commit_step`): into a fresh name in
    /// `tmp/` (an executor's copy cut short may have left the earlier one), then its writeback
    /// started. A copy the executor made already is opened to be synced.
    fn copy_now(&mut self, s: &mut Staged) -> io::Result<()> {
        if s.made {
            s.file = Some(s.dirs.tmp.open_read(&s.tmp)?);
            s.made = false;
            return Ok(());
        }
        let Some(copy) = s.copy.take() else {
            return Ok(());
        };
        s.tmp = self.tmp_name(SystemTime::now());
        let made = CString::new(s.tmp.as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|name| {
                crate::turnstat::timed("maildir.write", || {
                    maildir::write_copy(
                        s.dirs.tmp.as_file().as_raw_fd(),
                        &name,
                        &copy.head,
                        &copy.source,
                    )
                })
            });
        match made {
            Ok((file, size, wire)) => {
                if self.sync_mode == SyncMode::File {
                    durable::start_writeback(&file);
                }
                s.name = maildir::sized_name(&copy.unique, size, wire);
                s.file = Some(file);
                Ok(())
            }
            Err(e) => {
                // (Named for the failure's message.)
                s.copy = Some(copy);
                Err(e)
            }
        }
    }

    /// The blocking form of a staged link (`commit_step`): made now, or copied instead.
    fn link_now(&mut self, s: &mut Staged) -> io::Result<()> {
        let Some(queued) = s.link.as_deref() else {
            return Ok(());
        };
        match s.dirs.new.link_from(queued, &s.name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                if !self.copy_instead(s, &e) {
                    return Err(e);
                }
                return self.copy_now(s);
            }
        }
        s.link = None;
        Ok(())
    }

    /// Second half, all at once: makes every staged file durable, moves it into `new/`, and
    /// syncs each `new/` directory once. One outcome per staged file, in order.
    pub fn commit(&mut self, staged: Vec<Staged>) -> Vec<Outcome> {
        let mut c = Commit::new(staged);
        while !self.commit_step(&mut c) {}
        c.outcomes()
    }

    /// One step of a commit (one wait for the disk at most); true when it is finished. In
    /// order: each file's data durable (fdatasync each, or one syncfs), then every file
    /// renamed into `new/`, then each `new/` directory durable. A file that failed is removed
    /// from `tmp/`.
    pub fn commit_step(&mut self, c: &mut Commit) -> bool {
        // Blocking from here to the end, whatever was submitted before.
        c.finish_blocking();
        let done = self.commit_step_inner(c);
        if done {
            // The batch is committed: its directories are not held into the next one (the
            // staged files keep what they still need until the commit is dropped).
            self.open.clear();
        }
        done
    }

    fn commit_step_inner(&mut self, c: &mut Commit) -> bool {
        match c.stage {
            Stage::Data => {
                let range = match self.sync_mode {
                    SyncMode::File => c.next..(c.next + 1).min(c.staged.len()),
                    SyncMode::Filesystem => c.next..c.staged.len(),
                };
                let mut make_errors: Vec<Option<io::Error>> = Vec::new();
                for s in &mut c.staged[range.clone()] {
                    let made = if s.link.is_some() {
                        self.link_now(s)
                    } else {
                        self.copy_now(s)
                    };
                    make_errors.push(made.err());
                }
                // (A link has nothing to sync: `Ok` without a call.)
                let files: Vec<&File> = c.staged[range.clone()]
                    .iter()
                    .filter_map(|s| s.file.as_ref())
                    .collect();
                let mut results = durable::files(self.sync_mode, &files).into_iter();
                let results: Vec<io::Result<()>> = c.staged[range.clone()]
                    .iter()
                    .zip(make_errors)
                    .map(|(s, make_error)| match (&s.file, make_error) {
                        (Some(_), _) => results.next().unwrap_or(Ok(())),
                        (None, Some(e)) => Err(e),
                        (None, None) => Ok(()),
                    })
                    .collect();
                for (i, r) in range.zip(results) {
                    let s = &c.staged[i];
                    c.moved
                        .push(r.map(|()| usize::MAX).map_err(|e| failed_data(s, &e)));
                    c.next = i + 1;
                }
                if c.next >= c.staged.len() {
                    c.stage = Stage::Rename;
                }
                false
            }
            Stage::Rename => {
                for (s, m) in c.staged.iter().zip(c.moved.iter_mut()) {
                    if m.is_err() {
                        continue;
                    }
                    let moved = if s.file.is_some() || s.made {
                        s.dirs.tmp.rename_to(&s.tmp, &s.dirs.new, &s.name)
                    } else {
                        // Linked into `new/` at the data stage.
                        Ok(())
                    };
                    *m = match moved {
                        // Identified by the open directory, not its path: a Maildir made
                        // again within the batch is another directory to sync.
                        Ok(()) => match c.dirs.iter().position(|(d, _)| Rc::ptr_eq(d, &s.dirs)) {
                            Some(i) => Ok(i),
                            None => {
                                c.dirs.push((Rc::clone(&s.dirs), None));
                                Ok(c.dirs.len() - 1)
                            }
                        },
                        Err(e) => {
                            let _ = s.dirs.tmp.remove_file(&s.tmp);
                            let path = s.dirs.new.path().join(&s.name);
                            Err(temporary("cannot move into", &path, &e))
                        }
                    };
                }
                c.next = 0;
                c.stage = Stage::Dirs;
                c.dirs.is_empty()
            }
            Stage::Dirs => {
                self.sync_dirs_step(c);
                c.next >= c.dirs.len()
            }
        }
    }

    /// One turn of a commit through the disk executor; true when it is finished. The same
    /// order as `commit_step`, without waiting: every staged copy (written and synced in
    /// one operation) and link is submitted, and only when all of their completions are in
    /// (`Commit::complete`; a failed link is copied, `settle_links`) are the copies renamed
    /// into `new/` under the names their sizes give (on the reactor: a rename does not wait
    /// for the disk), then each `new/` directory's sync is submitted, and the commit is
    /// finished when those are in. Operations the executor has no room for are submitted at
    /// a later turn. With `fsync = filesystem` the copies are not synced one by one: each
    /// stage ends with one `syncfs` per filesystem (the helper process makes it: io_uring
    /// has none).
    pub fn commit_pump(&mut self, c: &mut Commit, exec: &mut Executor) -> bool {
        if !exec.runs_file_ops() {
            // (One whose helper process died ends with blocking calls.)
            c.finish_blocking();
        }
        let per_filesystem = self.sync_mode == SyncMode::Filesystem;
        if c.blocking {
            return self.commit_step(c);
        }
        let done = loop {
            match c.stage {
                Stage::Data => {
                    if c.synced.len() != c.staged.len() {
                        c.synced = c.staged.iter().map(|_| None).collect();
                        c.copied = c.staged.iter().map(|_| None).collect();
                    }
                    while c.submitted < c.staged.len() {
                        let i = c.submitted;
                        // A link (nothing to sync) or a copy (written, and synced but with
                        // `fsync = filesystem`), made in the executor.
                        let op = if c.staged[i].link.is_some() {
                            Self::link_op(&c.staged[i])
                        } else {
                            Self::copy_op(&c.staged[i])
                        };
                        match op {
                            Some(op) => match exec.submit_own(commit_tag(DATA, i), op) {
                                Ok(()) => c.in_flight += 1,
                                Err(r) if r.reason == Reject::Full => break,
                                Err(_) => c.synced[i] = Some(Err(Errno(libc::EPIPE))),
                            },
                            // (A NUL in a name: no such file can be made.)
                            None if c.staged[i].link.is_some() => {
                                c.synced[i] = Some(Err(Errno(libc::EINVAL)))
                            }
                            None => c.synced[i] = Some(Ok(())),
                        }
                        c.submitted += 1;
                    }
                    if c.in_flight > 0 || c.submitted < c.staged.len() {
                        break false;
                    }
                    if self.settle_links(c, exec) {
                        // Copies made for failed links: in flight.
                        break false;
                    }
                    if Self::settle_copies(c, exec, per_filesystem) {
                        // With `fsync = filesystem`: the copies' `syncfs`s, in flight.
                        break false;
                    }
                    for &(i, leader) in &c.fs_followers {
                        c.synced[i] = c.synced[leader];
                    }
                    for (s, r) in c.staged.iter().zip(&c.synced) {
                        let r = r.unwrap_or(Err(Errno(libc::EIO)));
                        c.moved.push(
                            r.map(|()| usize::MAX)
                                .map_err(|e| failed_data(s, &io::Error::from(e))),
                        );
                    }
                    c.next = c.staged.len();
                    c.stage = Stage::Rename;
                }
                Stage::Rename => {
                    if self.commit_step_inner(c) {
                        break true;
                    }
                    c.new_stage();
                }
                Stage::Dirs => {
                    while c.submitted < c.dirs.len() {
                        let k = c.submitted;
                        let fd = c.dirs[k].0.new.as_file().as_raw_fd();
                        if per_filesystem && c.covered_by_syncfs(fd, k) {
                            c.submitted += 1;
                            continue;
                        }
                        let tag = commit_tag(DIR, k);
                        let r = if per_filesystem {
                            exec.submit_syncfs(tag, fd)
                        } else {
                            exec.submit_sync(tag, fd, false)
                        };
                        match r {
                            Ok(()) => c.in_flight += 1,
                            Err(r) if r.reason == Reject::Full => {
                                c.fs_leaders.retain(|&(_, l)| l != k);
                                break;
                            }
                            Err(_) => c.set_dir(k, Err(Errno(libc::EPIPE))),
                        }
                        c.submitted += 1;
                    }
                    let done = c.in_flight == 0 && c.submitted >= c.dirs.len();
                    if done {
                        for (k, leader) in std::mem::take(&mut c.fs_followers) {
                            let r = match &c.dirs[leader].1 {
                                Some(Ok(())) => Ok(()),
                                _ => Err(Errno(libc::EIO)),
                            };
                            c.set_dir(k, r);
                        }
                    }
                    break done;
                }
            }
        };
        if done {
            c.next = c.dirs.len();
            self.open.clear();
        }
        done
    }

    /// The executor's operation for a staged link not yet made: from the queued file's path
    /// into `new/`, a descriptor the reactor owns (`Executor::submit_own`).
    fn link_op(s: &Staged) -> Option<DiskOp> {
        let queued = s.link.as_ref()?;
        Some(DiskOp::Link {
            from_dir: None,
            from: CString::new(queued.as_os_str().as_bytes()).ok()?,
            to_dir: Some(Handle::own(s.dirs.new.as_file())),
            to: CString::new(s.name.as_bytes()).ok()?,
        })
    }

    /// The executor's operation for a staged copy not yet made: written into `tmp/`, a
    /// descriptor the reactor owns, its writeback started; its sync follows
    /// (`settle_copies`), together with the others'.
    fn copy_op(s: &Staged) -> Option<DiskOp> {
        let copy = s.copy.as_ref()?;
        Some(DiskOp::MaildirCopy {
            dir: Handle::own(s.dirs.tmp.as_file()),
            name: CString::new(s.tmp.as_bytes()).ok()?,
            head: copy.head.clone().into(),
            source: Box::new(copy.source.clone()),
            sync: false,
        })
    }

    /// Once the data stage's completions are in: each link made (or found made by an earlier
    /// attempt: EEXIST) is done; each that failed is to be copied instead (`copy_instead`),
    /// and the copy is submitted. True when such copies are in flight (the stage waits for
    /// them).
    fn settle_links(&mut self, c: &mut Commit, exec: &mut Executor) -> bool {
        let mut waiting = false;
        for i in 0..c.staged.len() {
            if c.staged[i].link.is_none() {
                continue;
            }
            let e = match c.synced[i] {
                Some(Ok(())) | Some(Err(Errno(libc::EEXIST))) => {
                    c.synced[i] = Some(Ok(()));
                    c.staged[i].link = None;
                    continue;
                }
                Some(Err(e)) => e,
                None => Errno(libc::EIO),
            };
            if !self.copy_instead(&mut c.staged[i], &io::Error::from(e)) {
                continue;
            }
            c.synced[i] = None;
            let op = Self::copy_op(&c.staged[i]);
            match op.map(|op| exec.submit_own(commit_tag(DATA, i), op)) {
                Some(Ok(())) => {
                    c.in_flight += 1;
                    waiting = true;
                }
                _ => c.synced[i] = Some(Err(Errno(libc::EAGAIN))),
            }
        }
        waiting
    }

    /// Once every copy's completion is in: each copy made gets its name in `new/` (its sizes
    /// are known now), and its data sync is submitted: an `fdatasync` of each (the copy opened
    /// again here, in the `tmp/` the reactor holds: a lookup, no wait for the disk), all at
    /// once, so the disk gets their flushes together (one at a time in the helper process,
    /// 2,000 two-recipient messages took 2.3-2.5 s to deliver instead of 1.7-1.8 s); with
    /// `fsync = filesystem` one `syncfs` per filesystem of their `tmp/`s. True while the stage
    /// waits for them (those the executor had no room for go at a later turn).
    fn settle_copies(c: &mut Commit, exec: &mut Executor, per_filesystem: bool) -> bool {
        let mut made = Vec::new();
        for (i, s) in c.staged.iter_mut().enumerate() {
            let (Some(copy), Some(Ok(()))) = (&s.copy, c.synced[i]) else {
                continue;
            };
            let Some(&Some((size, wire))) = c.copied.get(i) else {
                c.synced[i] = Some(Err(Errno(libc::EIO)));
                continue;
            };
            s.name = maildir::sized_name(&copy.unique, size, wire);
            s.copy = None;
            s.made = true;
            made.push(i);
        }
        if per_filesystem && !made.is_empty() {
            // The data stage made no `syncfs` before this one: every leader is a copy's.
            c.fs_leaders.clear();
            for i in made {
                let fd = c.staged[i].dirs.tmp.as_file().as_raw_fd();
                if c.covered_by_syncfs(fd, i) {
                    continue;
                }
                c.synced[i] = None;
                match exec.submit_syncfs(commit_tag(DATA, i), fd) {
                    Ok(()) => c.in_flight += 1,
                    Err(_) => c.synced[i] = Some(Err(Errno(libc::EAGAIN))),
                }
            }
            return c.in_flight > 0;
        }
        for i in made {
            let s = &mut c.staged[i];
            match s.dirs.tmp.open_read(&s.tmp) {
                Ok(f) => {
                    s.file = Some(f);
                    c.synced[i] = None;
                    c.to_sync.push_back(i);
                }
                Err(e) => c.synced[i] = Some(Err(Errno(e.raw_os_error().unwrap_or(libc::EIO)))),
            }
        }
        while let Some(&i) = c.to_sync.front() {
            let Some(fd) = c.staged[i].file.as_ref().map(|f| f.as_raw_fd()) else {
                c.to_sync.pop_front();
                continue;
            };
            match exec.submit_sync(commit_tag(DATA, i), fd, true) {
                Ok(()) => c.in_flight += 1,
                Err(r) if r.reason == Reject::Full => break,
                Err(_) => c.synced[i] = Some(Err(Errno(libc::EPIPE))),
            }
            c.to_sync.pop_front();
        }
        c.in_flight > 0 || !c.to_sync.is_empty()
    }

    /// Makes the renames into the next `new/` durable (per file), or all of them (syncfs,
    /// named by any file on each filesystem).
    fn sync_dirs_step(&self, c: &mut Commit) {
        match self.sync_mode {
            SyncMode::File => {
                let Some((d, result)) = c.dirs.get_mut(c.next) else {
                    return;
                };
                // The `new/` descriptor the files were renamed into.
                let new = &d.new;
                *result = Some(
                    durable::dirs(SyncMode::File, &[new.as_file()])
                        .pop()
                        .unwrap_or(Ok(()))
                        .map_err(|e| temporary("cannot sync", new.path(), &e)),
                );
                c.next += 1;
            }
            SyncMode::Filesystem => {
                let handles: Vec<&File> = c.dirs.iter().map(|(d, _)| d.new.as_file()).collect();
                let results = durable::dirs(SyncMode::Filesystem, &handles);
                for ((d, result), r) in c.dirs.iter_mut().zip(results) {
                    *result = Some(r.map_err(|e| temporary("cannot sync", d.new.path(), &e)));
                }
                c.next = c.dirs.len();
            }
        }
    }

    /// How deliveries are made durable (the `fsync` config key).
    pub fn set_sync_mode(&mut self, mode: SyncMode) {
        self.sync_mode = mode;
    }
}

/// Where a `Commit` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Data,
    Rename,
    Dirs,
}

/// Whether a `new/` directory was made durable.
type SyncResult = Result<(), Outcome>;

/// Set in the tag of every operation of a Maildir commit (`Maildirs::commit_pump`): mailbox
/// jobs use bit 63, the spool's group commit bit 62, password checks connection ids, which
/// never reach bit 61.
pub const COMMIT_TAG_BIT: u64 = 1 << 61;
/// The kinds of commit operation, in the tag above the index.
const DATA: u64 = 0;
const DIR: u64 = 1;

/// Is this completion a Maildir commit's?
pub fn owns(tag: u64) -> bool {
    tag & (COMMIT_TAG_BIT | crate::mailbox::job::TAG_BIT) == COMMIT_TAG_BIT
        && !crate::spool::commit_owns(tag)
}

fn commit_tag(kind: u64, index: usize) -> u64 {
    COMMIT_TAG_BIT | (kind << 32) | (index as u64 & 0xffff_ffff)
}

/// A batch of staged files on their way into `new/` (see `Maildirs::commit_step`).
pub struct Commit {
    staged: Vec<Staged>,
    stage: Stage,
    /// The next file (Data) or directory (Dirs) to sync.
    next: usize,
    /// Per staged file, once decided: the index in `dirs` of the `new/` it went into, or why
    /// it failed.
    moved: Vec<Result<usize, Outcome>>,
    /// Each Maildir whose `new/` was written into, with its sync result once done.
    dirs: Vec<(Rc<UserDirs>, Option<SyncResult>)>,
    /// Through the executor (`commit_pump`): the operations of the current stage submitted
    /// so far, those whose completion is not yet in, and each staged file's data sync result.
    submitted: usize,
    in_flight: usize,
    synced: Vec<Option<Result<(), Errno>>>,
    /// Per staged file, a copy's sizes on disk and as POP3 sends it, once made.
    copied: Vec<Option<(u64, u64)>>,
    /// Copies made whose `fdatasync` the executor had no room for yet (`settle_copies`).
    to_sync: std::collections::VecDeque<usize>,
    /// `fsync = filesystem`, through the executor: one `syncfs` per filesystem and stage.
    /// The files (or directories) that submitted it, by device, and those that share its
    /// outcome: (follower, leader) indexes of the current stage.
    fs_leaders: Vec<(u64, usize)>,
    fs_followers: Vec<(usize, usize)>,
    /// Finished with blocking calls from here on (`finish_blocking`).
    blocking: bool,
}

impl Commit {
    pub fn new(staged: Vec<Staged>) -> Commit {
        let stage = if staged.is_empty() {
            Stage::Dirs
        } else {
            Stage::Data
        };
        Commit {
            moved: Vec::with_capacity(staged.len()),
            staged,
            stage,
            next: 0,
            dirs: Vec::new(),
            submitted: 0,
            in_flight: 0,
            synced: Vec::new(),
            copied: Vec::new(),
            to_sync: std::collections::VecDeque::new(),
            fs_leaders: Vec::new(),
            fs_followers: Vec::new(),
            blocking: false,
        }
    }

    /// With `fsync = filesystem`: whether item `i` (a file or a `new/` of this stage) is on a
    /// filesystem an earlier item's `syncfs` covers; it then shares that item's outcome. An
    /// `fstat` (no disk wait); where it fails, the item gets a `syncfs` of its own.
    fn covered_by_syncfs(&mut self, fd: std::os::fd::RawFd, i: usize) -> bool {
        // SAFETY: fstat writes only into `st`; `fd` is open while the commit holds it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return false;
        }
        let dev = st.st_dev;
        match self.fs_leaders.iter().find(|(d, _)| *d == dev) {
            Some(&(_, leader)) => {
                self.fs_followers.push((i, leader));
                true
            }
            None => {
                self.fs_leaders.push((dev, i));
                false
            }
        }
    }

    fn new_stage(&mut self) {
        self.submitted = 0;
        self.fs_leaders.clear();
        self.fs_followers.clear();
    }

    /// An executor completion that `owns` says is a commit's. One of another commit (an
    /// earlier batch finished with `finish_blocking`) names nothing waited for and is dropped.
    pub fn complete(&mut self, tag: u64, result: Result<ExecOutcome, Errno>) {
        if self.blocking || self.in_flight == 0 {
            return;
        }
        let kind = (tag & !COMMIT_TAG_BIT) >> 32;
        let index = (tag & 0xffff_ffff) as usize;
        if let (Ok(ExecOutcome::Copied { size, wire }), Some(slot)) =
            (&result, self.copied.get_mut(index))
        {
            *slot = Some((*size, *wire));
        }
        let result = result.map(|_| ());
        match (self.stage, kind) {
            (Stage::Data, DATA) if index < self.submitted => {
                if let Some(slot @ None) = self.synced.get_mut(index) {
                    *slot = Some(result);
                    self.in_flight -= 1;
                }
            }
            (Stage::Dirs, DIR) if index < self.submitted => {
                if matches!(self.dirs.get(index), Some((_, None))) {
                    self.set_dir(index, result);
                    self.in_flight -= 1;
                }
            }
            _ => {}
        }
    }

    /// Is the commit waiting for completions only (nothing to do until one comes)?
    pub fn waiting(&self) -> bool {
        // (Operations the executor had no room for wait for these completions too.)
        !self.blocking && self.in_flight > 0 && self.stage != Stage::Rename
    }

    /// Finishes the rest with blocking calls (`Maildirs::commit_step`; shutdown, or no
    /// executor): the current stage is done again from its start, whatever was in flight
    /// (a sync done twice is harmless; its late completion is dropped).
    pub fn finish_blocking(&mut self) {
        if self.blocking {
            return;
        }
        self.blocking = true;
        self.in_flight = 0;
        self.fs_leaders.clear();
        self.fs_followers.clear();
        match self.stage {
            Stage::Data => {
                self.next = 0;
                self.moved.clear();
            }
            Stage::Dirs => {
                self.next = 0;
                for d in &mut self.dirs {
                    d.1 = None;
                }
            }
            Stage::Rename => {}
        }
    }

    fn set_dir(&mut self, k: usize, result: Result<(), Errno>) {
        if let Some((d, slot)) = self.dirs.get_mut(k) {
            *slot = Some(
                result.map_err(|e| temporary("cannot sync", d.new.path(), &io::Error::from(e))),
            );
        }
    }

    /// One outcome per staged file, in order (after the last `commit_step`).
    pub fn outcomes(self) -> Vec<Outcome> {
        let dirs = self.dirs;
        self.moved
            .into_iter()
            .map(|m| match m {
                Ok(i) => match dirs.get(i) {
                    Some((_, Some(Err(outcome)))) => outcome.clone(),
                    Some((_, Some(Ok(())))) => Outcome::Delivered,
                    _ => Outcome::Temporary("the Maildir directory was not synced".into()),
                },
                Err(outcome) => outcome,
            })
            .collect()
    }
}

/// A copy of a queued message into a Maildir's `tmp/`, or a queued file to link into its
/// `new/`, waiting for `Maildirs::commit`.
pub struct Staged {
    /// The user's Maildir directories, held until the commit is done.
    dirs: Rc<UserDirs>,
    /// The file name in `tmp/` (empty for a link).
    tmp: String,
    /// The final name in `new/` (for a copy, set once it is written: it carries the sizes).
    name: String,
    /// A copy to write at the commit; None once it is written (or for a link).
    copy: Option<Copy>,
    /// The copy in `tmp/`, written with blocking calls (`commit_step`); None for a link (the
    /// queued file's data is durable already, and once linked its name is in `new/`: only
    /// `new/` is left to sync) and for a copy the executor made.
    file: Option<File>,
    /// The executor wrote the copy into `tmp/` (and synced it, but with `fsync =
    /// filesystem`, which syncs it after).
    made: bool,
    /// A link to make at the commit: the queued file. None once it is made (or replaced by a
    /// copy); still there after the data stage only if neither could be made.
    link: Option<PathBuf>,
}

/// What a staged copy is made of: the trace lines and the queued data, and the unique part of
/// its name (the sizes follow once it is written).
struct Copy {
    unique: String,
    head: Vec<u8>,
    source: CopySource,
    /// Made instead of a link to this queued file, which failed (`copy_instead`).
    instead_of_link: Option<PathBuf>,
}

/// Why a staged file failed at the data stage: a link that could neither be made nor copied,
/// or a copy not written or synced (which is removed from `tmp/`).
fn failed_data(s: &Staged, e: &io::Error) -> Outcome {
    let copied_from = s.copy.as_ref().and_then(|c| c.instead_of_link.as_ref());
    if let Some(queued) = s.link.as_ref().or(copied_from) {
        return temporary(
            &format!("cannot link or copy {} into", queued.display()),
            &s.dirs.new.path().join(&s.name),
            e,
        );
    }
    let _ = s.dirs.tmp.remove_file(&s.tmp);
    temporary("cannot write", &s.dirs.tmp.path().join(&s.tmp), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Queued data for a copy (as the spool keeps it: CRLF line ends), in a file of its own
    /// outside every Maildir root.
    fn src(data: &[u8]) -> CopySource {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("postling-local-tests-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
        fs::write(&path, data).unwrap();
        CopySource {
            path: CString::new(path.as_os_str().as_bytes()).unwrap(),
            offset: 0,
            len: data.len() as u64,
            lf_form: false,
        }
    }

    /// A unique name as `unique_name` makes them, for tests about other things.
    const UNIQUE: &str = "1700000000.M1Q000000000001H00000000.h";

    fn key<'a>(queue_id: &'a str, recipients: &'a [String]) -> MessageKey<'a> {
        MessageKey {
            queue_id,
            arrival: UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789),
            sender: "s@example.org",
            recipients,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_attempt_at_an_entry_names_its_copy_the_same_and_other_entries_differently() {
        let rcpts = vec!["a@example.test".to_string(), "b@example.test".to_string()];
        let first = Maildirs::new(Path::new("/x"), "mail/host:1");
        // Another process, later: same name (nothing of the attempt's time or pid in it).
        let again = Maildirs::new(Path::new("/y"), "mail/host:1");
        let name = first.unique_name(&key("0ABCDEFGHJKM", &rcpts));
        assert_eq!(name, again.unique_name(&key("0ABCDEFGHJKM", &rcpts)));
        assert!(
            name.starts_with("1700000000.M123456Q0ABCDEFGHJKMH"),
            "the arrival time, then the queue id: {name}"
        );
        assert!(name.ends_with(".mail\\057host\\0721"), "{name}");
        assert!(!name.contains('/') && !name.contains(':') && !name.contains(','));
        assert_eq!(queue_id_of(&name), Some("0ABCDEFGHJKM"));
        assert_eq!(unique_part(&format!("{name},S=1,W=2:2,S")), name);
        // Any difference in the entry gives another name.
        let mut others = vec![
            first.unique_name(&key("0ABCDEFGHJKN", &rcpts)),
            first.unique_name(&key("0ABCDEFGHJKM", &rcpts[..1])),
            first.unique_name(&MessageKey {
                sender: "t@example.org",
                ..key("0ABCDEFGHJKM", &rcpts)
            }),
            first.unique_name(&MessageKey {
                arrival: UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_457_000),
                ..key("0ABCDEFGHJKM", &rcpts)
            }),
            Maildirs::new(Path::new("/x"), "other").unique_name(&key("0ABCDEFGHJKM", &rcpts)),
        ];
        others.push(name);
        let n = others.len();
        others.sort();
        others.dedup();
        assert_eq!(others.len(), n, "{others:?}");
        // Characters that separate the parts of a name are escaped in a queue id.
        let odd = first.unique_name(&key("a/b:c.d,e", &rcpts));
        assert_eq!(
            queue_id_of(&odd),
            Some("a\\057b\\072c\\056d\\054e"),
            "{odd}"
        );
    }

    #[test]
    fn a_repeated_delivery_of_an_entry_replaces_its_copy_in_new() {
        let root = tempfile::tempdir().unwrap();
        let rcpts = vec!["u@h".to_string()];
        let unique = Maildirs::new(root.path(), "h").unique_name(&key("0ABCDEFGHJKM", &rcpts));
        for _ in 0..2 {
            // A new process each time: the crash and the restart.
            let mut m = Maildirs::new(root.path(), "h");
            let out = m.deliver("u", &unique, "", "u@h", src(b"x\r\n"), SystemTime::now());
            assert_eq!(out, Outcome::Delivered);
        }
        assert_eq!(names(&root.path().join("u/new")).len(), 1);
        assert!(names(&root.path().join("u/tmp")).is_empty());
    }

    #[test]
    fn a_copy_already_in_new_or_in_cur_with_any_flags_is_found() {
        let root = tempfile::tempdir().unwrap();
        let rcpts = vec!["u@h".to_string()];
        let mut m = Maildirs::new(root.path(), "h");
        let one = m.unique_name(&key("0ABCDEFGHJK1", &rcpts));
        let two = m.unique_name(&key("0ABCDEFGHJK2", &rcpts));
        let never = m.unique_name(&key("0ABCDEFGHJK3", &rcpts));
        for u in [&one, &two] {
            let out = m.deliver("u", u, "", "u@h", src(b"x\r\n"), SystemTime::now());
            assert_eq!(out, Outcome::Delivered);
        }
        // A reader took `two` into cur/ and flagged it seen.
        let new = root.path().join("u/new");
        let two_file = names(&new)
            .into_iter()
            .find(|n| n.starts_with(&two))
            .unwrap();
        fs::rename(
            new.join(&two_file),
            root.path().join("u/cur").join(format!("{two_file}:2,S")),
        )
        .unwrap();
        let all = |_: &str| true;
        let mut after = Maildirs::new(root.path(), "h");
        assert!(after.delivered_before("u", &one, &all), "in new/");
        assert!(
            after.delivered_before("u", &two, &all),
            "in cur/ with flags"
        );
        assert!(!after.delivered_before("u", &never, &all));
        assert!(!after.delivered_before("nobody", &one, &all), "no Maildir");
        assert!(!after.delivered_before("../u", &one, &all));
        // Only the entries asked about are kept from the listing.
        let mut only_one = Maildirs::new(root.path(), "h");
        let is_one = |q: &str| q == "0ABCDEFGHJK1";
        assert!(only_one.delivered_before("u", &one, &is_one));
        assert!(!only_one.delivered_before("u", &two, &is_one));
        assert_eq!(only_one.seen.get("u").map(HashSet::len), Some(1));
        only_one.forget_listings();
        assert!(only_one.seen.is_empty());
    }

    fn only_file(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(v.len(), 1, "{v:?}");
        v.pop().unwrap()
    }

    #[test]
    fn delivers_with_lf_endings_trace_headers_and_sizes() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "mail.example.test");
        let msg = b"Subject: hi\r\n\r\nline one\r\n.dot\r\nbare\rcr\r\n";
        let unique = m.unique_name(&key("0ABCDEFGHJKM", &["alice@example.test".into()]));
        let out = m.deliver(
            "alice",
            &unique,
            "bob@example.org",
            "alice@example.test",
            src(msg),
            SystemTime::now(),
        );
        assert_eq!(out, Outcome::Delivered);
        let f = only_file(&root.path().join("alice/new"));
        let body = fs::read(&f).unwrap();
        assert_eq!(
            body,
            b"Return-Path: <bob@example.org>\nDelivered-To: alice@example.test\nSubject: hi\n\nline one\n.dot\nbare\rcr\n"
        );
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let wire = body.len() + body.iter().filter(|&&b| b == b'\n').count();
        assert!(
            name.ends_with(&format!(",S={},W={}", body.len(), wire)),
            "{name}"
        );
        assert!(name.starts_with(&format!("{unique},S=")), "{name}");
        assert!(name.contains(".mail.example.test,"));
        for sub in ["tmp", "cur"] {
            assert!(root.path().join("alice").join(sub).is_dir());
        }
        assert_eq!(
            fs::read_dir(root.path().join("alice/tmp")).unwrap().count(),
            0
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.path().join("alice/new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    /// The copy reads the queued data 64 KiB at a time: a CR LF whose CR ends one read is
    /// still one line end, a CR CR LF stays CR LF, and a CR at the very end stays.
    #[test]
    fn crlf_split_across_reads_is_still_one_line_end() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let mut data = vec![b'a'; 64 * 1024 - 1];
        data.extend(b"\r\nb\r\r\nc\r");
        let out = m.deliver("u", UNIQUE, "", "u@h", src(&data), SystemTime::now());
        assert_eq!(out, Outcome::Delivered);
        let body = fs::read(only_file(&root.path().join("u/new"))).unwrap();
        let mut expected = b"Return-Path: <>\nDelivered-To: u@h\n".to_vec();
        expected.extend(vec![b'a'; 64 * 1024 - 1]);
        expected.extend(b"\nb\r\nc\r");
        assert_eq!(body, expected);
    }

    #[test]
    fn unsafe_names_are_permanent_failures_and_touch_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(&root.path().join("mail"), "h");
        for bad in ["../etc", "a/b", ".hidden", "", "x\0y", "a\nb"] {
            let out = m.deliver(bad, UNIQUE, "", "x", src(b"x\r\n"), SystemTime::now());
            assert!(matches!(out, Outcome::Permanent(_)), "{bad:?}");
        }
        assert!(!root.path().join("mail").exists());
        assert!(!root.path().join("etc").exists());
        // Trace lines longer than a copy's request may carry: refused before anything is made.
        let long = format!("{}@h", "x".repeat(crate::limits::EXEC_COPY_HEAD_MAX));
        let out = m.deliver("u", UNIQUE, "", &long, src(b"x\r\n"), SystemTime::now());
        assert!(matches!(out, Outcome::Permanent(_)), "{out:?}");
        assert!(!root.path().join("mail").exists());
    }

    #[test]
    fn stale_tmp_files_are_removed_at_the_first_delivery_and_fresh_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("u/tmp");
        fs::create_dir_all(&tmp).unwrap();
        let stale = tmp.join("1.M1P1Q1.crashed");
        let fresh = tmp.join("2.M1P2Q1.writing");
        fs::write(&stale, b"half").unwrap();
        fs::write(&fresh, b"half").unwrap();
        let long_ago = SystemTime::now() - crate::limits::MAILDIR_TMP_MAX_AGE;
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let out = m.deliver("u", UNIQUE, "", "u@h", src(b"x\r\n"), SystemTime::now());
        assert_eq!(out, Outcome::Delivered);
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    #[test]
    fn a_maildir_removed_after_a_delivery_is_made_again() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let deliver =
            |m: &mut Maildirs| m.deliver("u", UNIQUE, "", "u@h", src(b"x\r\n"), SystemTime::now());
        assert_eq!(deliver(&mut m), Outcome::Delivered);
        fs::remove_dir_all(root.path().join("u")).unwrap();
        assert_eq!(deliver(&mut m), Outcome::Delivered);
        assert_eq!(fs::read_dir(root.path().join("u/new")).unwrap().count(), 1);
        assert!(root.path().join("u/cur").is_dir());
    }

    #[test]
    fn unwritable_maildir_is_a_temporary_failure() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        // A plain file where the user's Maildir should be: cannot create tmp/ under it.
        fs::write(root.path().join("carol"), b"").unwrap();
        let out = m.deliver(
            "carol",
            UNIQUE,
            "",
            "carol@h",
            src(b"x\r\n"),
            SystemTime::now(),
        );
        assert!(matches!(out, Outcome::Temporary(_)), "{out:?}");
    }

    // ---- symbolic links are never followed (issue 10 item 6) -------------------------------

    /// A unique name of its own for every test copy, as distinct queue entries have.
    fn fresh_unique() -> String {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("1.M0Q{n}H00000000.h")
    }

    fn deliver_x(m: &mut Maildirs, user: &str) -> Outcome {
        let unique = fresh_unique();
        m.deliver(user, &unique, "", "x@h", src(b"x\r\n"), SystemTime::now())
    }

    fn refused(out: Outcome, user: &str, link: &Path) {
        assert_eq!(
            out,
            Outcome::Temporary(format!(
                "mailbox {user}: refusing {}: is a symbolic link",
                link.display()
            ))
        );
    }

    fn empty_dir(root: &Path) -> PathBuf {
        let target = root.join("target");
        fs::create_dir(&target).unwrap();
        target
    }

    #[test]
    fn a_symlinked_maildir_is_a_temporary_refusal_and_nothing_is_written_through_it() {
        let root = tempfile::tempdir().unwrap();
        let target = empty_dir(root.path());
        std::os::unix::fs::symlink(&target, root.path().join("u")).unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        refused(deliver_x(&mut m, "u"), "u", &root.path().join("u"));
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn a_symlinked_tmp_or_new_is_a_temporary_refusal_and_its_target_untouched() {
        for sub in ["tmp", "new"] {
            let root = tempfile::tempdir().unwrap();
            let target = empty_dir(root.path());
            let mut m = Maildirs::new(root.path(), "h");
            // Delivered once (the Maildir is known), then the directory is swapped.
            assert_eq!(deliver_x(&mut m, "u"), Outcome::Delivered);
            let link = root.path().join("u").join(sub);
            fs::remove_dir_all(&link).unwrap();
            std::os::unix::fs::symlink(&target, &link).unwrap();
            refused(deliver_x(&mut m, "u"), "u", &link);
            assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "{sub}");
        }
    }

    #[test]
    fn a_symlinked_cur_is_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        let target = empty_dir(root.path());
        fs::create_dir_all(root.path().join("u")).unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("u/cur")).unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        // Delivery writes tmp/ and new/ only; cur/ is the reader's (POP refuses it).
        assert_eq!(deliver_x(&mut m, "u"), Outcome::Delivered);
        assert_eq!(fs::read_dir(root.path().join("u/new")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn a_swap_during_a_batch_goes_to_the_directory_opened_not_the_link() {
        let root = tempfile::tempdir().unwrap();
        let target = empty_dir(root.path());
        let mut m = Maildirs::new(root.path(), "h");
        let staged = m
            .stage(
                "u",
                &fresh_unique(),
                "",
                "u@h",
                src(b"x\r\n"),
                SystemTime::now(),
            )
            .unwrap();
        let new = root.path().join("u/new");
        fs::rename(&new, root.path().join("u/new.old")).unwrap();
        std::os::unix::fs::symlink(&target, &new).unwrap();
        assert_eq!(m.commit(vec![staged]), vec![Outcome::Delivered]);
        assert_eq!(
            fs::read_dir(root.path().join("u/new.old")).unwrap().count(),
            1
        );
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        // The next batch opens the Maildir again and sees the link.
        refused(deliver_x(&mut m, "u"), "u", &new);
    }

    #[test]
    fn a_maildir_removed_within_a_batch_fails_it_for_now_and_is_made_again_by_the_next() {
        for mode in [SyncMode::File, SyncMode::Filesystem] {
            let root = tempfile::tempdir().unwrap();
            let mut m = Maildirs::new(root.path(), "h");
            m.set_sync_mode(mode);
            let stage = |m: &mut Maildirs| {
                let unique = fresh_unique();
                m.stage("u", &unique, "", "u@h", src(b"x\r\n"), SystemTime::now())
            };
            let first = stage(&mut m).unwrap();
            fs::remove_dir_all(root.path().join("u")).unwrap();
            let second = stage(&mut m).unwrap();
            // Written at the commit, into the directories the batch opened: both fail for
            // now (the entries are tried again), and the next batch makes the Maildir again.
            let out = m.commit(vec![first, second]);
            assert!(matches!(out[0], Outcome::Temporary(_)), "{out:?}");
            assert!(matches!(out[1], Outcome::Temporary(_)), "{out:?}");
            let third = stage(&mut m).unwrap();
            assert_eq!(m.commit(vec![third]), vec![Outcome::Delivered], "{mode:?}");
            assert_eq!(fs::read_dir(root.path().join("u/new")).unwrap().count(), 1);
        }
    }

    // ---- the commit through the disk executor (issue 11) ----------------------------------

    use crate::exec::{Completion, Inline};

    fn stage_for(m: &mut Maildirs, user: &str) -> Staged {
        m.stage(
            user,
            &fresh_unique(),
            "",
            &format!("{user}@h"),
            src(b"x\r\n"),
            SystemTime::now(),
        )
        .unwrap()
    }

    const MAILDIR_FORM: &[u8] = b"Return-Path: <s@h>\nDelivered-To: u@h\n\nx\n";

    /// The one file in `<root>/u/new`: its bytes and inode.
    fn only_new(root: &Path) -> (Vec<u8>, u64) {
        use std::os::unix::fs::MetadataExt;
        let names: Vec<_> = fs::read_dir(root.join("u/new")).unwrap().collect();
        assert_eq!(names.len(), 1);
        let path = names[0].as_ref().unwrap().path();
        (fs::read(&path).unwrap(), fs::metadata(&path).unwrap().ino())
    }

    /// A link the executor reports failed (EXDEV, put in place of the link's own answer) is
    /// replaced by a copy in the same commit: the link, the copy, its sync, the sync of `new/`.
    /// Entries in the Maildir form are copied from then on, without trying.
    #[test]
    fn through_the_executor_a_failed_link_is_copied_in_the_same_commit() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let queued = root.path().join("queued");
        fs::write(&queued, MAILDIR_FORM).unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let now = SystemTime::now();
        let s = m.stage_link("u", &fresh_unique(), &queued, 40, 44, now);
        let mut exec = Executor::Inline(Inline::new());
        let mut c = Commit::new(vec![s.unwrap()]);
        let mut rounds = 0;
        while !m.commit_pump(&mut c, &mut exec) {
            rounds += 1;
            assert!(
                rounds <= 4,
                "the link, the copy, its sync, the sync of new/"
            );
            for d in drain(&mut exec) {
                let result = if rounds == 1 {
                    Err(Errno(libc::EXDEV))
                } else {
                    d.result
                };
                c.complete(d.tag, result);
            }
        }
        assert_eq!(rounds, 4);
        assert_eq!(c.outcomes(), vec![Outcome::Delivered]);
        let (bytes, ino) = only_new(root.path());
        assert_eq!(bytes, MAILDIR_FORM);
        assert_ne!(ino, fs::metadata(&queued).unwrap().ino(), "a copy");
        assert!(
            m.stage_link("u", &fresh_unique(), &queued, 40, 44, now)
                .is_none()
        );
    }

    /// Without an executor the link is made with a blocking call at the commit, and a real
    /// EXDEV (the queued file on /dev/shm, the Maildir on the test's file system) is copied.
    #[test]
    fn a_link_across_file_systems_is_copied_in_the_same_commit() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(root.path()),
            dev(shm.path()),
            "this test needs /dev/shm and the temporary directory on different file systems"
        );
        let queued = shm.path().join("queued");
        fs::write(&queued, MAILDIR_FORM).unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let now = SystemTime::now();
        let s = m.stage_link("u", &fresh_unique(), &queued, 40, 44, now);
        assert_eq!(m.commit(vec![s.unwrap()]), vec![Outcome::Delivered]);
        assert_eq!(only_new(root.path()).0, MAILDIR_FORM);
        assert!(
            m.stage_link("u", &fresh_unique(), &queued, 40, 44, now)
                .is_none()
        );
        // Linked on the same file system, and a name already there (an earlier attempt) kept.
        let mut m = Maildirs::new(root.path(), "h");
        let local = root.path().join("queued");
        fs::write(&local, MAILDIR_FORM).unwrap();
        let unique = fresh_unique();
        for _ in 0..2 {
            let s = m.stage_link("v", &unique, &local, 40, 44, now).unwrap();
            assert_eq!(m.commit(vec![s]), vec![Outcome::Delivered]);
        }
        assert_eq!(fs::metadata(&local).unwrap().nlink(), 2);
    }

    fn drain(exec: &mut Executor) -> Vec<Completion> {
        let mut out = Vec::new();
        exec.drain(&mut out);
        out
    }

    fn in_new(root: &Path, user: &str) -> usize {
        fs::read_dir(root.join(user).join("new")).unwrap().count()
    }

    /// Runs a commit through the inline executor, letting `tamper` change each completion
    /// (kind DATA or DIR, index, result) and, between the data syncs and the renames, act on
    /// the staged files; returns the outcomes.
    /// Every file of the data stage is done (made and synced, or failed): its next pump
    /// renames.
    fn data_done(c: &Commit) -> bool {
        c.in_flight == 0
            && c.to_sync.is_empty()
            && c.synced.len() == c.staged.len()
            && c.synced.iter().all(Option::is_some)
            && c.staged.iter().zip(&c.synced).all(|(s, r)| {
                r.is_some_and(|r| r.is_err()) || (s.copy.is_none() && s.link.is_none())
            })
    }

    fn pump_commit(
        m: &mut Maildirs,
        staged: Vec<Staged>,
        mut before_renames: impl FnMut(&Commit),
        tamper: impl Fn(u64, usize) -> Option<Errno>,
    ) -> Vec<Outcome> {
        let mut exec = Executor::Inline(Inline::new());
        let mut c = Commit::new(staged);
        let mut rounds = 0;
        let mut renames_next = false;
        while !m.commit_pump(&mut c, &mut exec) {
            assert!(c.waiting(), "a commit not finished waits for completions");
            rounds += 1;
            assert!(
                rounds <= 3,
                "one round of copies (and links), one of their data syncs, one of directory syncs"
            );
            let done = drain(&mut exec);
            assert!(!done.is_empty());
            for d in done {
                assert!(owns(d.tag), "{:x}", d.tag);
                let (kind, index) = (
                    (d.tag & !COMMIT_TAG_BIT) >> 32,
                    (d.tag & 0xffff_ffff) as usize,
                );
                let result = match tamper(kind, index) {
                    Some(e) => Err(e),
                    None => d.result,
                };
                c.complete(d.tag, result);
            }
            if !renames_next && data_done(&c) {
                // Every copy is made and synced; the next pump renames.
                assert_eq!(c.stage, Stage::Data);
                renames_next = true;
                before_renames(&c);
            }
        }
        assert!(drain(&mut exec).is_empty(), "nothing left in flight");
        c.outcomes()
    }

    #[test]
    fn the_executor_commit_syncs_data_then_renames_then_syncs_new_then_reports() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let staged = vec![
            stage_for(&mut m, "u"),
            stage_for(&mut m, "v"),
            stage_for(&mut m, "u"),
        ];
        // Staging writes nothing: the copies are made by the commit, in the executor.
        let in_tmp = |u: &str| names(&root.path().join(u).join("tmp")).len();
        assert_eq!(in_tmp("u") + in_tmp("v"), 0);
        let mut exec = Executor::Inline(Inline::new());
        let mut c = Commit::new(staged);
        // First turn: every file copied (in the helper), nothing in new/ yet.
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert!(c.waiting());
        let copies = drain(&mut exec);
        assert!(
            copies
                .iter()
                .all(|d| matches!(d.result, Ok(ExecOutcome::Copied { size: 36, wire: 39 }))),
            "{copies:?}"
        );
        assert_eq!((in_tmp("u"), in_tmp("v")), (2, 1));
        let kinds = |v: &[Completion]| {
            let mut k: Vec<(u64, u64)> = v
                .iter()
                .map(|d| ((d.tag & !COMMIT_TAG_BIT) >> 32, d.tag & 0xffff_ffff))
                .collect();
            k.sort();
            k
        };
        assert_eq!(kinds(&copies), vec![(DATA, 0), (DATA, 1), (DATA, 2)]);
        for d in copies {
            c.complete(d.tag, d.result);
        }
        // Then every copy's data sync, all at once.
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert!(c.waiting());
        let data = drain(&mut exec);
        assert!(data.iter().all(|d| d.result == Ok(ExecOutcome::Done)));
        assert_eq!(kinds(&data), vec![(DATA, 0), (DATA, 1), (DATA, 2)]);
        assert_eq!(in_new(root.path(), "u") + in_new(root.path(), "v"), 0);
        // Until the last data sync is in, nothing is renamed.
        let mut data = data.into_iter();
        let last = data.next().unwrap();
        for d in data {
            c.complete(d.tag, d.result);
        }
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert!(drain(&mut exec).is_empty());
        assert_eq!(in_new(root.path(), "u") + in_new(root.path(), "v"), 0);
        c.complete(last.tag, last.result);
        // Then the renames, and one sync of each new/ (two Maildirs).
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert_eq!((in_new(root.path(), "u"), in_new(root.path(), "v")), (2, 1));
        let dirs = drain(&mut exec);
        assert_eq!(kinds(&dirs), vec![(DIR, 0), (DIR, 1)]);
        // Not delivered before the directories are synced.
        assert!(c.waiting());
        for d in dirs {
            c.complete(d.tag, d.result);
        }
        assert!(m.commit_pump(&mut c, &mut exec));
        assert_eq!(c.outcomes(), vec![Outcome::Delivered; 3]);
        assert!(m.open.is_empty(), "the batch's directories are let go");
        // Each copy is named with the sizes the executor reported.
        let in_new = names(&root.path().join("u/new"));
        assert!(
            in_new.iter().all(|n| n.ends_with(",S=36,W=39")),
            "{in_new:?}"
        );
        assert_eq!(in_tmp("u") + in_tmp("v"), 0);
    }

    #[test]
    fn a_failed_data_sync_fails_only_its_file_and_removes_it_from_tmp() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let staged = vec![stage_for(&mut m, "u"), stage_for(&mut m, "u")];
        let out = pump_commit(
            &mut m,
            staged,
            |_| {},
            |kind, i| (kind == DATA && i == 0).then_some(Errno(libc::ENOSPC)),
        );
        assert!(
            matches!(&out[0], Outcome::Temporary(r) if r.contains("cannot write") && r.contains("No space left")),
            "{out:?}"
        );
        assert_eq!(out[1], Outcome::Delivered);
        assert_eq!(in_new(root.path(), "u"), 1);
        assert!(names(&root.path().join("u/tmp")).is_empty());
    }

    #[test]
    fn a_failed_rename_fails_only_its_file() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let staged = vec![stage_for(&mut m, "u"), stage_for(&mut m, "u")];
        let out = pump_commit(
            &mut m,
            staged,
            |c| {
                // The tmp/ file of the first is gone when the renames come.
                let s = &c.staged[0];
                s.dirs.tmp.remove_file(&s.tmp).unwrap();
            },
            |_, _| None,
        );
        assert!(
            matches!(&out[0], Outcome::Temporary(r) if r.contains("cannot move into")),
            "{out:?}"
        );
        assert_eq!(out[1], Outcome::Delivered);
        assert_eq!(in_new(root.path(), "u"), 1);
    }

    #[test]
    fn a_failed_directory_sync_fails_only_the_files_of_that_maildir() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        let staged = vec![
            stage_for(&mut m, "u"),
            stage_for(&mut m, "v"),
            stage_for(&mut m, "u"),
        ];
        let out = pump_commit(
            &mut m,
            staged,
            |_| {},
            |kind, i| (kind == DIR && i == 0).then_some(Errno(libc::EIO)),
        );
        let u_new = root.path().join("u/new");
        let want = Outcome::Temporary(format!(
            "cannot sync {}: {}",
            u_new.display(),
            io::Error::from_raw_os_error(libc::EIO)
        ));
        assert_eq!(out, vec![want.clone(), Outcome::Delivered, want]);
    }

    #[test]
    fn a_commit_cut_short_finishes_with_blocking_calls_and_ignores_late_completions() {
        // Cut while the copies, their data syncs, or the directory syncs are out.
        for cut_after in [0, 1, 2] {
            let root = tempfile::tempdir().unwrap();
            let mut m = Maildirs::new(root.path(), "h");
            let staged = vec![stage_for(&mut m, "u"), stage_for(&mut m, "v")];
            let mut exec = Executor::Inline(Inline::new());
            let mut c = Commit::new(staged);
            assert!(!m.commit_pump(&mut c, &mut exec));
            for _ in 0..cut_after {
                for d in drain(&mut exec) {
                    c.complete(d.tag, d.result);
                }
                assert!(!m.commit_pump(&mut c, &mut exec));
            }
            let expected = [Stage::Data, Stage::Data, Stage::Dirs][cut_after];
            assert_eq!(c.stage, expected, "{cut_after}");
            // Shutdown: what was in flight is done again, without the executor.
            c.finish_blocking();
            assert!(!c.waiting());
            for d in drain(&mut exec) {
                c.complete(d.tag, Err(Errno(libc::EIO)));
            }
            while !m.commit_step(&mut c) {}
            assert_eq!(c.outcomes(), vec![Outcome::Delivered; 2], "{cut_after}");
            assert_eq!(in_new(root.path(), "u") + in_new(root.path(), "v"), 2);
        }
    }

    #[test]
    fn commit_tags_are_told_from_mailbox_jobs_and_password_checks() {
        assert!(owns(commit_tag(DATA, 5)) && owns(commit_tag(DIR, 0)));
        assert!(!owns(crate::mailbox::job::TAG_BIT | 7));
        assert!(!owns(crate::mailbox::job::TAG_BIT | COMMIT_TAG_BIT));
        assert!(!owns(12345));
        // The spool's group commit (bit 62) and this one never claim each other's tags.
        let spool_tag = (1 << 62) | 7;
        assert!(crate::spool::commit_owns(spool_tag) && !owns(spool_tag));
        assert!(!crate::spool::commit_owns(commit_tag(DATA, 5)));
        assert!(!crate::mailbox::job::owns(commit_tag(DIR, 3)));
    }

    /// `fsync = filesystem`: the copies are written without a sync of their own, then one
    /// syncfs per filesystem in each stage, in the executor (two Maildirs on one filesystem:
    /// one for the three files' data, one for both `new/`); a failed one fails every file it
    /// covered.
    #[test]
    fn with_fsync_filesystem_one_syncfs_per_filesystem_and_stage_in_the_executor() {
        let root = tempfile::tempdir().unwrap();
        let mut m = Maildirs::new(root.path(), "h");
        m.set_sync_mode(SyncMode::Filesystem);
        let staged = vec![
            stage_for(&mut m, "u"),
            stage_for(&mut m, "v"),
            stage_for(&mut m, "u"),
        ];
        let mut exec = Executor::Inline(Inline::new());
        let mut c = Commit::new(staged);
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert!(c.waiting());
        let copies = drain(&mut exec);
        assert_eq!(copies.len(), 3, "three copies");
        for d in copies {
            assert!(matches!(d.result, Ok(ExecOutcome::Copied { .. })));
            c.complete(d.tag, d.result);
        }
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert!(c.waiting());
        let data = drain(&mut exec);
        assert_eq!(data.len(), 1, "one syncfs covers the three files");
        for d in data {
            c.complete(d.tag, d.result);
        }
        assert!(!m.commit_pump(&mut c, &mut exec));
        assert_eq!((in_new(root.path(), "u"), in_new(root.path(), "v")), (2, 1));
        let dirs = drain(&mut exec);
        assert_eq!(dirs.len(), 1, "one syncfs covers both new/");
        assert!(
            c.waiting(),
            "not delivered before the directories are durable"
        );
        for d in dirs {
            c.complete(d.tag, d.result);
        }
        assert!(m.commit_pump(&mut c, &mut exec));
        assert_eq!(c.outcomes(), vec![Outcome::Delivered; 3]);

        // A failed data syncfs: every file it covered fails, none reaches new/.
        let staged = vec![stage_for(&mut m, "w"), stage_for(&mut m, "x")];
        let outcomes = pump_commit(
            &mut m,
            staged,
            |_| {},
            |kind, _| (kind == DATA).then_some(Errno(libc::EIO)),
        );
        assert!(
            outcomes.iter().all(|o| matches!(o, Outcome::Temporary(_))),
            "{outcomes:?}"
        );
        assert_eq!(in_new(root.path(), "w") + in_new(root.path(), "x"), 0);
    }
}
