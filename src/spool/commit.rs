//! The group commit, done in steps so the reactor never waits for the disk long at a time.
//!
//! A group is every message whose end of data arrived before the group started. Its steps,
//! in the order that makes a crash harmless: start every file's writeback; make each file's
//! data durable (one fdatasync per step, or one syncfs for the whole group); rename them all
//! into `queue/` (the commit point); make `queue/` durable; only then report `Ok(id)`. The
//! reactor runs steps until its time slice is used and polls its sockets in between, so a
//! session waiting for a NOOP reply waits for one step at most, not for a whole group.
//! Messages finishing meanwhile form the next group.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::time::Instant;

use super::{Incoming, QueueId, Spool, SpoolError};
use crate::durable::{self, SyncMode};

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

impl Spool {
    /// Are commits handed over and not yet reported?
    pub fn commit_pending(&self) -> bool {
        !self.pending.is_empty() || self.group.is_some()
    }

    /// Runs commit steps until `deadline` has passed (at least one step when work is
    /// pending); returns the commits that finished, each by its tag.
    pub fn commit_work(&mut self, deadline: Instant) -> Vec<Committed> {
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
        let mut out = Vec::new();
        while self.commit_pending() {
            out.extend(self.commit_work(Instant::now()));
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
                    if let Some(env) = inc.envelope.take() {
                        self.fresh
                            .insert(inc.id.clone(), (env, inc.header_len, inc.written));
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
                for (tag, id) in g.renamed.drain(..) {
                    self.fresh.remove(&id);
                    if let Err(e2) = fs::remove_file(self.message_path(&id)) {
                        log::warn!("spool: cannot withdraw {id}: {e2}");
                    }
                    g.done.push((tag, Err(SpoolError::from_io(&e))));
                }
            }
        }
    }
}
