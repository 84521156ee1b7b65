//! The group commit, done in steps so the reactor never waits for the disk long at a time.
//!
//! A group is every message whose end of data arrived before the group started. Its steps,
//! in the order that makes a crash harmless: start every file's writeback; make each file's
//! data durable (one fdatasync per step, or one syncfs for the whole group); rename them all
//! into `queue/` (the commit point); make `queue/` durable; only then report `Ok(id)`. The
//! reactor runs steps until its time slice is used and polls its sockets in between, so a
//! session waiting for a NOOP reply waits for one step at most, not for a whole group.
//! Messages finishing meanwhile form the next group.
//!
//! With a disk executor (the server's case, `fsync = file`), the same steps wait in the
//! executor instead (`ExecGroup`, driven by `commit_work` with the executor and
//! `commit_completion`): a stage's operations are all submitted at once (every file's
//! `fdatasync`; then every rename into `queue/`; then one `fsync` of `queue/`), the next stage
//! starts only when every completion of the one before is in, and the outcomes are reported
//! only after the directory's sync completed. The reactor does no waiting for the disk of its
//! own; what is left on it is starting writeback and, on a failed directory sync, the unlinks
//! that withdraw the group. With `fsync = filesystem` the data stage is one `syncfs` for the
//! whole group and the directory stage a `syncfs` too (io_uring lacks it: its helper process
//! makes the call).

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use super::{Incoming, Spool};

use crate::durable::{self, SyncMode};
use crate::exec::{Completion, DiskOp, Errno, Executor, Handle, Reject};
use crate::mail::{QueueId, SpoolError};

/// Set in the tag of every executor operation of a commit (the mailbox jobs use bit 63;
/// connection ids, the password checks' tags, reach neither).
pub const TAG_BIT: u64 = 1 << 62;

/// Is this completion a commit's? (Ask `mailbox::job::owns` first.)
pub fn owns(tag: u64) -> bool {
    tag & TAG_BIT != 0
}

/// One commit's outcome, by the tag its caller gave (the connection slot).
pub type Committed = (usize, Result<QueueId, SpoolError>);

pub(super) struct Group {
    /// Data not yet durable, oldest first.
    waiting: VecDeque<(usize, Incoming)>,
    /// Data durable, not yet renamed.
    synced: Vec<(usize, Incoming)>,
    /// Renamed into `queue/`, waiting for the directory sync.
    renamed: Vec<(usize, QueueId)>,
    /// Finished (failed) outcomes not yet reported.
    done: Vec<Committed>,
}

impl Group {
    /// Starts a group: per file, writeback is started for every file at once. A recycled
    /// file needs no cut to length: it was empty when taken (see `Spool::recycle`).
    fn start(items: Vec<(usize, Incoming)>, mode: SyncMode) -> Group {
        let mut g = Group {
            waiting: VecDeque::with_capacity(items.len()),
            synced: Vec::with_capacity(items.len()),
            renamed: Vec::new(),
            done: Vec::new(),
        };
        for (tag, inc) in items {
            if mode == SyncMode::File {
                durable::start_writeback(&inc.file);
            }
            g.waiting.push_back((tag, inc));
        }
        g
    }
}

/// Which operations of an `ExecGroup` are in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Every file's `fdatasync`, or one `syncfs` for all (`fsync = filesystem`).
    Data,
    /// Every synced file's rename into `queue/`.
    Rename,
    /// The one `fsync` of `queue/` (`syncfs` with `fsync = filesystem`).
    Dir,
}

/// One message of an `ExecGroup`.
struct Member {
    tag: usize,
    /// None once its outcome is decided (reported failed, or renamed: then in `renamed`).
    inc: Option<Incoming>,
    /// The completion of this member's operation in the current stage.
    result: Option<Result<(), Errno>>,
}

/// A group commit whose waits run in the disk executor (see the module docs). Renames name
/// paths as the spool does (relative to the working directory, which the helper process
/// shares: nothing changes it after start).
pub(super) struct ExecGroup {
    stage: Stage,
    members: Vec<Member>,
    /// Operations not yet accepted by the executor (it said `Full`): (tag, op, own descriptor).
    unsent: VecDeque<(u64, DiskOp, bool)>,
    in_flight: usize,
    /// Renamed into `queue/`: (member index, id), reported once `queue/` is durable.
    renamed: Vec<(usize, QueueId)>,
    dir_result: Option<Result<(), Errno>>,
    done: Vec<Committed>,
}

fn cpath(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

fn spool_error(e: Errno) -> SpoolError {
    SpoolError::from_io(&std::io::Error::from(e))
}

/// The tag index of a data stage's one `syncfs`, whose outcome is every member's.
const ALL_MEMBERS: u64 = (1 << 40) - 1;

impl ExecGroup {
    /// Starts writeback of every file and queues its `fdatasync`; with `fsync = filesystem`,
    /// queues one `syncfs` for all of them instead.
    fn start(items: Vec<(usize, Incoming)>, mode: SyncMode) -> ExecGroup {
        let mut g = ExecGroup {
            stage: Stage::Data,
            members: Vec::with_capacity(items.len()),
            unsent: VecDeque::with_capacity(items.len()),
            in_flight: 0,
            renamed: Vec::new(),
            dir_result: None,
            done: Vec::new(),
        };
        // Writeback started for every file at once lets the disk take them together while
        // the executor's few workers sync them in turn; a lone file's fdatasync starts its own
        // writeback, and the call would only be one more system call on the reactor.
        let several = items.len() > 1;
        for (i, (tag, inc)) in items.into_iter().enumerate() {
            if mode == SyncMode::Filesystem {
                if i == 0 {
                    g.unsent.push_back((
                        TAG_BIT | ALL_MEMBERS,
                        DiskOp::Syncfs {
                            file: Handle::own(&inc.file),
                        },
                        true,
                    ));
                }
            } else {
                if several {
                    durable::start_writeback(&inc.file);
                }
                g.unsent.push_back((
                    TAG_BIT | i as u64,
                    DiskOp::Fdatasync {
                        file: Handle::own(&inc.file),
                    },
                    true,
                ));
            }
            g.members.push(Member {
                tag,
                inc: Some(inc),
                result: None,
            });
        }
        g
    }

    /// Hands the unsent operations to `exec` until it is full. An operation it cannot run at
    /// all (its helper gone, a path too long) completes at once with an error.
    fn submit(&mut self, exec: &mut Executor) {
        while let Some((tag, op, own)) = self.unsent.pop_front() {
            let r = if own {
                exec.submit_own(tag, op)
            } else {
                exec.submit(tag, op)
            };
            match r {
                Ok(()) => self.in_flight += 1,
                Err(rejected) => {
                    let errno = match rejected.reason {
                        Reject::Full => {
                            self.unsent.push_front((tag, rejected.op, own));
                            return;
                        }
                        Reject::Gone => Errno(libc::EPIPE),
                        Reject::TooLarge => Errno(libc::ENAMETOOLONG),
                    };
                    self.record(tag, Err(errno));
                }
            }
        }
    }

    fn record(&mut self, tag: u64, result: Result<(), Errno>) {
        if self.stage == Stage::Dir {
            self.dir_result = Some(result);
            return;
        }
        let i = tag & !TAG_BIT;
        if i == ALL_MEMBERS {
            for m in self.members.iter_mut() {
                m.result = Some(result);
            }
        } else if let Some(m) = self.members.get_mut(i as usize) {
            m.result = Some(result);
        }
    }

    /// Nothing in flight and nothing left to send: the stage is over.
    fn stage_over(&self) -> bool {
        self.in_flight == 0 && self.unsent.is_empty()
    }

    /// Waiting for nothing but the executor's completions (the reactor may sleep).
    fn waiting(&self) -> bool {
        self.in_flight > 0
    }
}

impl Spool {
    /// Are commits handed over and not yet reported?
    pub fn commit_pending(&self) -> bool {
        !self.pending.is_empty() || self.group.is_some() || self.xgroup.is_some()
    }

    /// Would `commit_work` make progress now, without a completion from the executor?
    pub fn commit_runnable(&self) -> bool {
        match &self.xgroup {
            Some(g) => !g.waiting(),
            None => self.group.is_some() || !self.pending.is_empty(),
        }
    }

    /// A completion whose tag `owns` says is a commit's.
    pub fn commit_completion(&mut self, c: Completion) {
        if let Some(g) = self.xgroup.as_mut() {
            g.in_flight = g.in_flight.saturating_sub(1);
            g.record(c.tag, c.result.map(|_| ()));
        }
    }

    /// Moves the commits forward and returns those that finished, each by its tag. With an
    /// executor the waits run there: this submits the next stage's operations and returns
    /// at once. Without one, runs commit steps until `deadline` has
    /// passed (at least one step when work is pending).
    pub fn commit_work(
        &mut self,
        deadline: Instant,
        exec: Option<&mut Executor>,
    ) -> Vec<Committed> {
        // A group already in the executor ends there (a dead helper fails its members with
        // EPIPE: 451, the client tries again); new groups go there only while it can run them.
        if let Some(exec) = exec
            && (self.xgroup.is_some() || (exec.runs_file_ops() && self.group.is_none()))
        {
            return crate::turnstat::timed("spool.commit_pump", || self.commit_pump(exec));
        }
        crate::turnstat::timed("spool.commit_steps", || self.commit_steps(deadline))
    }

    /// The executor's side of `commit_work`: advances the group in the executor as far as
    /// its completions allow, starting the next group when one ends.
    fn commit_pump(&mut self, exec: &mut Executor) -> Vec<Committed> {
        let mut out = Vec::new();
        loop {
            let mut g = match self.xgroup.take() {
                Some(g) => g,
                // (Nor while the executor cannot run it: `commit_work` then takes the steps.)
                None if self.pending.is_empty() || !exec.runs_file_ops() => {
                    return out;
                }
                None => ExecGroup::start(std::mem::take(&mut self.pending), self.sync_mode),
            };
            g.submit(exec);
            if !g.stage_over() {
                self.xgroup = Some(g);
                return out;
            }
            if self.advance(&mut g) {
                self.release_if_full(&g.done);
                out.append(&mut g.done);
            } else {
                self.xgroup = Some(g);
            }
        }
    }

    /// Every completion of `g`'s stage is in: decides its outcomes and queues the next
    /// stage's operations. True when the group is finished (all outcomes in `done`).
    fn advance(&mut self, g: &mut ExecGroup) -> bool {
        match g.stage {
            Stage::Data => {
                g.stage = Stage::Rename;
                for (i, m) in g.members.iter_mut().enumerate() {
                    let Some(inc) = &m.inc else { continue };
                    match m.result.take() {
                        Some(Ok(())) => {
                            let to = self.queue.join(&inc.id.0);
                            match (cpath(&inc.tmp_path), cpath(&to)) {
                                (Some(from), Some(to)) => g.unsent.push_back((
                                    TAG_BIT | i as u64,
                                    DiskOp::Rename {
                                        from_dir: None,
                                        from,
                                        to_dir: None,
                                        to,
                                    },
                                    false,
                                )),
                                _ => m.result = Some(Err(Errno(libc::EINVAL))),
                            }
                        }
                        Some(Err(e)) => {
                            log::warn!("spool: cannot make {} durable: {e}", inc.id);
                            g.done.push((m.tag, Err(spool_error(e))));
                            m.inc = None;
                        }
                        None => {
                            g.done
                                .push((m.tag, Err(SpoolError::Failed("no sync".into()))));
                            m.inc = None;
                        }
                    }
                }
                // A member whose path could not be named fails as a failed rename would.
                for m in g.members.iter_mut() {
                    if let (Some(Err(e)), Some(inc)) = (m.result, &m.inc) {
                        log::warn!("spool: rename of {} failed: {e}", inc.id);
                        g.done.push((m.tag, Err(spool_error(e))));
                        m.inc = None;
                        m.result = None;
                    }
                }
                g.unsent.is_empty() && g.members.iter().all(|m| m.inc.is_none())
            }
            Stage::Rename => {
                for (i, m) in g.members.iter_mut().enumerate() {
                    let Some(mut inc) = m.inc.take() else {
                        continue;
                    };
                    match m.result.take() {
                        // From here on a crash leaves a complete entry in queue/.
                        Some(Ok(())) => {
                            inc.armed = false;
                            if let Some(f) = inc.take_fresh() {
                                self.fresh.insert(inc.id.clone(), f);
                            }
                            g.renamed.push((i, inc.id.clone()));
                        }
                        Some(Err(e)) => {
                            log::warn!("spool: rename of {} failed: {e}", inc.id);
                            g.done.push((m.tag, Err(spool_error(e))));
                        }
                        None => g
                            .done
                            .push((m.tag, Err(SpoolError::Failed("no rename".into())))),
                    }
                }
                if g.renamed.is_empty() {
                    return true;
                }
                g.stage = Stage::Dir;
                let file = Handle::own(&self.queue_dir);
                let op = match self.sync_mode {
                    SyncMode::File => DiskOp::Fsync { file },
                    SyncMode::Filesystem => DiskOp::Syncfs { file },
                };
                g.unsent.push_back((TAG_BIT, op, true));
                false
            }
            Stage::Dir => {
                let result = g.dir_result.take().unwrap_or(Err(Errno(libc::EIO)));
                let renamed = std::mem::take(&mut g.renamed);
                match result {
                    Ok(()) => {
                        for (i, id) in renamed {
                            g.done.push((g.members[i].tag, Ok(id)));
                        }
                    }
                    Err(e) => {
                        // As in `sync_dir_step`: take the renames back, the retry is the copy.
                        log::warn!("spool: fsync of {} failed: {e}", self.queue.display());
                        for (i, id) in renamed {
                            self.withdraw(&id);
                            g.done.push((g.members[i].tag, Err(spool_error(e))));
                        }
                    }
                }
                true
            }
        }
    }

    /// A renamed entry whose directory sync failed: out of the queue again.
    fn withdraw(&mut self, id: &QueueId) {
        self.fresh.remove(id);
        if let Err(e) = fs::remove_file(self.message_path(id)) {
            log::warn!("spool: cannot withdraw {id}: {e}");
        }
    }

    /// Runs commit steps on this thread until `deadline` has passed (at least one step when
    /// work is pending); returns the commits that finished, each by its tag.
    fn commit_steps(&mut self, deadline: Instant) -> Vec<Committed> {
        let mut out = Vec::new();
        loop {
            let mut group = match self.group.take() {
                Some(g) => g,
                None if self.pending.is_empty() => break,
                None => Group::start(std::mem::take(&mut self.pending), self.sync_mode),
            };
            let finished = self.commit_step(&mut group);
            self.release_if_full(&group.done);
            out.append(&mut group.done);
            if !finished {
                self.group = Some(group);
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        out
    }

    /// Makes every commit handed over durable and reports each by its tag.
    pub fn commit_flush(&mut self) -> Vec<Committed> {
        self.commit_flush_with(None)
    }

    /// `commit_flush` where commits may be in the executor (shutdown): waits for their
    /// completions, spinning on `drain`. The spool's own other completions (files made ahead,
    /// removals) are handed on; others that arrive meanwhile are dropped.
    pub fn commit_flush_with(&mut self, mut exec: Option<&mut Executor>) -> Vec<Committed> {
        let mut out = Vec::new();
        let mut got = Vec::new();
        while self.commit_pending() {
            out.extend(self.commit_work(Instant::now(), exec.as_deref_mut()));
            if let Some(exec) = exec.as_deref_mut() {
                exec.drain(&mut got);
                for c in got.drain(..) {
                    if !crate::mailbox::job::owns(c.tag) && owns(c.tag) {
                        self.commit_completion(c);
                    } else if super::prepare_owns(c.tag) {
                        // Not dropped: `finish_removals` waits for every one of them.
                        self.prepared(c, Some(&mut *exec));
                    }
                }
            }
        }
        out
    }

    /// Commits one message on its own, outside any group (a bounce made by delivery).
    pub fn commit_one(&mut self, mut inc: Incoming) -> Result<QueueId, SpoolError> {
        self.finish_writes(&mut inc)?;
        let mut group = Group::start(vec![(0, inc)], self.sync_mode);
        while !self.commit_step(&mut group) {}
        self.release_if_full(&group.done);
        group
            .done
            .pop()
            .map(|(_, r)| r)
            .unwrap_or_else(|| Err(SpoolError::Failed("commit reported nothing".into())))
    }

    /// A commit step failed for want of space (a sync or a rename): the free files are
    /// given back, so the client's retry finds the room they held.
    fn release_if_full(&mut self, done: &[Committed]) {
        if done.iter().any(|(_, r)| *r == Err(SpoolError::Full)) {
            self.release_free();
        }
    }

    /// One step of `group`; true when the group is finished (all outcomes in `done`).
    fn commit_step(&mut self, g: &mut Group) -> bool {
        if !g.waiting.is_empty() {
            self.sync_data_step(g);
            return false;
        }
        if !g.synced.is_empty() {
            self.rename_all(g);
            return g.renamed.is_empty();
        }
        if !g.renamed.is_empty() {
            self.sync_dir_step(g);
        }
        true
    }

    /// Data durable: the oldest waiting file (per file), or all of them (syncfs).
    fn sync_data_step(&mut self, g: &mut Group) {
        let batch: Vec<(usize, Incoming)> = match self.sync_mode {
            SyncMode::File => g.waiting.pop_front().into_iter().collect(),
            SyncMode::Filesystem => g.waiting.drain(..).collect(),
        };
        let files: Vec<&File> = batch.iter().map(|(_, inc)| &inc.file).collect();
        let outcomes = durable::files(self.sync_mode, &files);
        for ((tag, inc), outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => g.synced.push((tag, inc)),
                Err(e) => {
                    log::warn!("spool: cannot make {} durable: {e}", inc.id);
                    g.done.push((tag, Err(SpoolError::from_io(&e))));
                }
            }
        }
    }

    /// The commit point of every synced file: its rename into `queue/`.
    fn rename_all(&mut self, g: &mut Group) {
        for (tag, mut inc) in g.synced.drain(..) {
            // From here on a crash leaves a complete entry in queue/.
            match fs::rename(&inc.tmp_path, self.message_path(&inc.id)) {
                Ok(()) => {
                    inc.armed = false;
                    if let Some(f) = inc.take_fresh() {
                        self.fresh.insert(inc.id.clone(), f);
                    }
                    g.renamed.push((tag, inc.id.clone()));
                }
                Err(e) => {
                    log::warn!("spool: rename of {} failed: {e}", inc.id);
                    g.done.push((tag, Err(SpoolError::from_io(&e))));
                }
            }
        }
    }

    /// `queue/` durable: the renames survive a crash; report them.
    fn sync_dir_step(&mut self, g: &mut Group) {
        match self.sync_queue_dir() {
            Ok(()) => g
                .done
                .extend(g.renamed.drain(..).map(|(tag, id)| (tag, Ok(id)))),
            Err(e) => {
                // The renames may or may not survive a crash: take them back so the client's
                // retry is the only copy (a failed unlink risks a duplicate, never a loss).
                log::warn!("spool: fsync of {} failed: {e}", self.queue.display());
                for (tag, id) in std::mem::take(&mut g.renamed) {
                    self.withdraw(&id);
                    g.done.push((tag, Err(SpoolError::from_io(&e))));
                }
            }
        }
    }
}
