//! Delivery state files (`queue/<id>.state`) written in the disk executor, so that recording
//! a delivery attempt (a deferral, a partial delivery, a remote outcome) costs the reactor no
//! wait for the disk. Before, each record made an fdatasync and an fsync of `queue/` on the
//! reactor: with the relay host down, 2,000 deferrals stalled it about 0.45 ms each, in
//! turns of up to 10 ms.
//!
//! `Spool::record_attempt` still works out the new state on the reactor (reading the entry's
//! header and its current state); where the executor runs file operations it hands the text
//! here instead of writing it with blocking calls. The write is the same sequence as
//! `Spool::write_state`'s, one operation at a time in the executor: create `tmp/<id>.state`,
//! write, fdatasync (syncfs with `fsync = filesystem`), close, rename over `queue/<id>.state`,
//! fsync `queue/`. Until its last step completes, the newest text is kept here and every read
//! of the entry's state sees it (`Spool::read_entry`, the next `record_attempt`), so nothing
//! reads a state older than the one last recorded.
//!
//! A crash before the write is durable leaves the previous state, as a crash just before the
//! record would: Maildir copies are found again by their names, and a remote recipient may get
//! the message twice, as when a crash comes between the remote server's `250` and the record.
//! One write per entry is in flight at a time: a newer state for an entry being written waits
//! for that write to end, then goes out (only the newest). A write that fails keeps its text
//! here, so reads still see it (as the engine's memory of the recipients done did), is
//! logged, and has its temp file closed and unlinked; the entry's next record writes again. An entry removed while its write is in
//! flight has its state file unlinked once the write ends (a crash in between leaves an
//! orphan state file, which `Spool::open` removes).
//!
//! The removal of an entry that has a state file or a hold marker runs here too
//! (`removal_later`): its message file goes first (renamed into `free/`, or unlinked where a
//! Maildir links it), then `queue/` is synced, then the state file and the marker are
//! unlinked, as `Spool::remove` does with blocking calls; a removed file in `free/` is then
//! emptied as every recycled file is (`prepare`). Until the rename the entry is still in
//! `queue/`, and a crash delivers it again, as after an unsynced removal: its state file says
//! which recipients already have it.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

use super::prepare::{REMOVAL, STATE, STATE_CLEANUP, TAG_BIT, cpath};
use super::{QueueId, STATE_SUFFIX, Spool};
use crate::durable::SyncMode;
use crate::exec::{DiskOp, Errno, Executor, Handle, Outcome, Reject};
use crate::limits;

/// The state writes of a spool (see the module docs).
#[derive(Default)]
pub(super) struct StateWrites {
    /// Per entry whose state is not (yet) its file's: the newest text.
    newest: HashMap<QueueId, Newest>,
    /// Entries whose write is to start at the next submission.
    queued: Vec<QueueId>,
    /// Writes in flight, by number (the low bits of their operations' tags).
    flights: HashMap<u64, Flight>,
    seq: u64,
    /// The executor was full at the last submission: wait for a completion.
    blocked: bool,
    /// Removals of entries with a state file or hold marker, not yet submitted.
    removals_queued: Vec<Removal>,
    /// Removals in flight, by number (as `flights`).
    removals: HashMap<u64, Removal>,
    /// Writes whose next step the executor had no room for: submitted first next time.
    stalled: Vec<(u64, Flight)>,
}

/// The removal of an entry that has a state file or a hold marker (see the module docs).
struct Removal {
    id: QueueId,
    /// The free file its message goes to; None: a Maildir links the file, only the name goes.
    recycled: Option<u64>,
    stated: bool,
    held: bool,
    step: Gone,
}

/// The steps of a `Removal`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    Message,
    DirSync,
    State,
    Hold,
}

struct Newest {
    text: String,
    /// A write of this entry is in flight (of this text, or of an older one if `again`).
    busy: bool,
    /// The text changed while a write was in flight: write again when it ends.
    again: bool,
    /// In `queued`.
    queued: bool,
    /// The entry was removed while its write was in flight.
    removed: bool,
    /// Log lines for when this text is on disk (`log_when_recorded`).
    notes: Vec<String>,
}

struct Flight {
    id: QueueId,
    text: Vec<u8>,
    step: Step,
    file: Option<Handle>,
    written: usize,
    /// Log lines for when this flight's text is on disk.
    notes: Vec<String>,
    /// Why the write failed (while its temp file is discarded).
    failed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Open,
    Write,
    Sync,
    Close,
    Rename,
    DirSync,
    /// After a failure: the file is closed (if it was open), then `tmp/<id>.state` is
    /// unlinked, before the entry may have another write.
    DiscardClose,
    DiscardUnlink,
}

impl StateWrites {
    /// Are writes waiting or in flight (the reactor must come back for them)?
    pub(super) fn busy(&self) -> bool {
        !self.queued.is_empty()
            || !self.flights.is_empty()
            || !self.stalled.is_empty()
            || !self.removals_queued.is_empty()
            || !self.removals.is_empty()
    }

    /// Gives back the capacity a burst of records grew.
    pub(super) fn shrink(&mut self) {
        self.newest.shrink_to_fit();
        self.queued.shrink_to_fit();
        self.flights.shrink_to_fit();
        self.removals_queued.shrink_to_fit();
        self.removals.shrink_to_fit();
        self.stalled.shrink_to_fit();
    }

    /// Are writes or removals waiting for a submission that can go ahead now?
    pub(super) fn submittable(&self) -> bool {
        (!self.queued.is_empty() || !self.stalled.is_empty() || !self.removals_queued.is_empty())
            && !self.blocked
    }
}

impl Spool {
    /// The newest recorded state of `id` while it is not yet (or could not be) its file's.
    pub(super) fn state_pending(&self, id: &QueueId) -> Option<&str> {
        self.states.newest.get(id).map(|n| n.text.as_str())
    }

    /// Is a write of `id`'s state in the executor now (a blocking write could be overtaken
    /// by its rename)?
    pub(super) fn state_in_flight(&self, id: &QueueId) -> bool {
        self.states.newest.get(id).is_some_and(|n| n.busy)
    }

    /// `id`'s state was written with blocking calls, newer than any text kept here (one
    /// whose write failed, or one queued before the executor went away): that text goes.
    pub(super) fn state_superseded(&mut self, id: &QueueId) {
        if let Some(n) = self.states.newest.remove(id) {
            if n.queued {
                self.states.queued.retain(|q| q != id);
            }
            log_notes(n.notes);
        }
    }

    /// Records `text` as `id`'s state, to be written in the executor (`submit_states`).
    pub(super) fn state_later(&mut self, id: &QueueId, text: String) {
        let n = self.states.newest.entry(id.clone()).or_insert(Newest {
            text: String::new(),
            busy: false,
            again: false,
            queued: false,
            removed: false,
            notes: Vec::new(),
        });
        n.text = text;
        n.removed = false;
        if n.busy {
            n.again = true;
        } else if !n.queued {
            n.queued = true;
            self.states.queued.push(id.clone());
        }
    }

    /// Logs `line` once `id`'s last recorded state is on disk: at once if nothing of it is
    /// waiting to be written.
    pub fn log_when_recorded(&mut self, id: &QueueId, line: String) {
        match self.states.newest.get_mut(id) {
            Some(n) if n.busy || n.queued => n.notes.push(line),
            _ => log_notes(vec![line]),
        }
    }

    /// `id` is being removed: a write not yet started is dropped, one in flight has the
    /// state file it leaves unlinked when it ends.
    pub(super) fn state_removed(&mut self, id: &QueueId) {
        let Some(n) = self.states.newest.get_mut(id) else {
            return;
        };
        if n.busy {
            n.removed = true;
            n.again = false;
            return;
        }
        if n.queued {
            self.states.queued.retain(|q| q != id);
        }
        if let Some(n) = self.states.newest.remove(id) {
            log_notes(n.notes);
        }
    }

    /// Starts the queued writes (once a turn, and after completions). A write the executor
    /// cannot take at all (its helper gone) is made with blocking calls.
    pub(super) fn submit_states(&mut self, exec: &mut Executor) {
        self.states.blocked = false;
        while let Some((number, f)) = self.states.stalled.pop() {
            if !self.state_step(number, f, exec) {
                return;
            }
        }
        while let Some(r) = self.states.removals_queued.pop() {
            if !self.removal_submit(r, exec) {
                return;
            }
        }
        while let Some(id) = self.states.queued.pop() {
            let Some(n) = self.states.newest.get_mut(&id) else {
                continue;
            };
            n.queued = false;
            n.busy = true;
            self.states.seq = (self.states.seq + 1) & super::prepare::FILE_MASK;
            let number = self.states.seq;
            let flight = Flight {
                id: id.clone(),
                text: n.text.as_bytes().to_vec(),
                step: Step::Open,
                file: None,
                written: 0,
                notes: std::mem::take(&mut n.notes),
                failed: None,
            };
            let Some(op) = self.state_op(&flight) else {
                self.state_inline(&id, flight.notes);
                continue;
            };
            match submit_step(exec, TAG_BIT | STATE | number, op, flight.step) {
                Ok(()) => {
                    self.states.flights.insert(number, flight);
                }
                Err(r) if r.reason == Reject::Full => {
                    if let Some(n) = self.states.newest.get_mut(&id) {
                        n.busy = false;
                        n.queued = true;
                        n.notes.splice(0..0, flight.notes);
                    }
                    self.states.queued.push(id);
                    self.states.blocked = true;
                    return;
                }
                Err(_) => self.state_inline(&id, flight.notes),
            }
        }
    }

    /// The operation of `f`'s step.
    fn state_op(&self, f: &Flight) -> Option<DiskOp> {
        let tmp = cpath(&self.state_tmp_path(&f.id))?;
        Some(match (f.step, f.file) {
            (Step::Open, _) => DiskOp::Open {
                dir: None,
                path: tmp,
                flags: libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                mode: 0o600,
            },
            (Step::Write, Some(file)) => {
                let end = f.text.len().min(f.written + limits::EXEC_WRITE_MAX);
                DiskOp::Write {
                    file,
                    offset: f.written as u64,
                    data: f.text.get(f.written..end)?.to_vec(),
                }
            }
            (Step::Sync, Some(file)) => match self.sync_mode {
                SyncMode::File => DiskOp::Fdatasync { file },
                SyncMode::Filesystem => DiskOp::Syncfs { file },
            },
            (Step::Close | Step::DiscardClose, Some(file)) => DiskOp::Close { file },
            (Step::DiscardUnlink, _) => DiskOp::Unlink {
                dir: None,
                path: tmp,
            },
            (Step::Rename, _) => DiskOp::Rename {
                from_dir: None,
                from: tmp,
                to_dir: None,
                to: cpath(&self.state_path(&f.id))?,
            },
            (Step::DirSync, _) => {
                let file = Handle::own(&self.queue_dir);
                match self.sync_mode {
                    SyncMode::File => DiskOp::Fsync { file },
                    SyncMode::Filesystem => DiskOp::Syncfs { file },
                }
            }
            (_, None) => return None,
        })
    }

    /// A completion of a state write's operation (its number from the tag).
    pub(super) fn state_completion(
        &mut self,
        number: u64,
        result: Result<Outcome, Errno>,
        exec: Option<&mut Executor>,
    ) {
        self.states.blocked = false;
        let Some(mut f) = self.states.flights.remove(&number) else {
            return;
        };
        if matches!(f.step, Step::Close | Step::DiscardClose) {
            // Closed whatever the outcome: never closed again (its number may be reused).
            f.file = None;
        }
        let next = match (f.step, result) {
            (Step::DiscardClose, _) => Some(Step::DiscardUnlink),
            (Step::DiscardUnlink, _) => {
                let why = f.failed.take().unwrap_or_default();
                self.state_failed(f, &why, exec);
                return;
            }
            (Step::Open, Ok(Outcome::Opened(file))) => {
                f.file = Some(file);
                Some(if f.text.is_empty() {
                    Step::Sync
                } else {
                    Step::Write
                })
            }
            (Step::Write, Ok(Outcome::Written(data))) => {
                f.written += data.len();
                Some(if f.written < f.text.len() {
                    Step::Write
                } else {
                    Step::Sync
                })
            }
            (Step::Sync, Ok(_)) => Some(Step::Close),
            (Step::Close, Ok(_)) => Some(Step::Rename),
            (Step::Rename, Ok(_)) => Some(Step::DirSync),
            (Step::DirSync, Ok(_)) => None,
            (step, Ok(other)) => {
                self.state_discard(number, f, format!("{step:?} gave {other:?}"), exec);
                return;
            }
            (_, Err(e)) if e.0 == libc::EPIPE => {
                // The helper process is gone with the operation: the write is made here.
                self.state_takeover(f);
                return;
            }
            (step, Err(e)) => {
                let why = format!("{step:?}: {}", std::io::Error::from(e));
                self.state_discard(number, f, why, exec);
                return;
            }
        };
        let Some(step) = next else {
            // Durable: the file is the truth from now on (unless the entry is gone).
            let id = f.id.clone();
            log_notes(f.notes);
            let removed = self.state_done(&id);
            if !removed {
                self.stated.insert(id.clone());
                self.fresh.remove(&id);
            } else {
                self.state_cleanup(
                    DiskOp::Unlink {
                        dir: None,
                        path: match cpath(&self.state_path(&id)) {
                            Some(p) => p,
                            None => return,
                        },
                    },
                    exec,
                );
            }
            return;
        };
        f.step = step;
        let Some(exec) = exec else {
            self.state_takeover(f);
            return;
        };
        self.state_step(number, f, exec);
    }

    /// Submits `f`'s current step; false if the executor is full (`f` then waits in
    /// `stalled` for the next submission). One it cannot take at all (its helper gone) has
    /// the write made with blocking calls.
    fn state_step(&mut self, number: u64, mut f: Flight, exec: &mut Executor) -> bool {
        let Some(op) = self.state_op(&f) else {
            self.state_failed(f, "no operation", Some(exec));
            return true;
        };
        match submit_step(exec, TAG_BIT | STATE | number, op, f.step) {
            Ok(()) => {
                self.states.flights.insert(number, f);
                true
            }
            Err(r) if r.reason == Reject::Full => {
                self.states.stalled.push((number, f));
                self.states.blocked = true;
                false
            }
            Err(_) if f.failed.is_some() => {
                // Discarding without the executor: the unlink here (a close is lost with it).
                let _ = std::fs::remove_file(self.state_tmp_path(&f.id));
                let why = f.failed.take().unwrap_or_default();
                self.state_failed(f, &why, None);
                true
            }
            Err(_) => {
                if let Some(file) = f.file.take() {
                    self.state_cleanup(DiskOp::Close { file }, Some(exec));
                }
                self.state_takeover(f);
                true
            }
        }
    }

    /// A step failed: the temp file is closed and unlinked (in the executor, as the next
    /// steps of this write, so a later write of the entry cannot race it), then the failure
    /// is recorded (`state_failed`).
    fn state_discard(
        &mut self,
        number: u64,
        mut f: Flight,
        why: String,
        exec: Option<&mut Executor>,
    ) {
        f.failed = Some(why);
        f.step = if f.file.is_some() {
            Step::DiscardClose
        } else {
            Step::DiscardUnlink
        };
        match exec {
            Some(exec) => {
                self.state_step(number, f, exec);
            }
            None => {
                let _ = std::fs::remove_file(self.state_tmp_path(&f.id));
                let why = f.failed.take().unwrap_or_default();
                self.state_failed(f, &why, None);
            }
        }
    }

    /// A write's flight ended (durable, failed or taken over): the entry's text is dropped
    /// unless a newer one waits, which is queued. True if the entry was removed meanwhile.
    fn state_done(&mut self, id: &QueueId) -> bool {
        let Some(n) = self.states.newest.get_mut(id) else {
            return false;
        };
        n.busy = false;
        if n.removed {
            if let Some(n) = self.states.newest.remove(id) {
                log_notes(n.notes);
            }
            return true;
        }
        if n.again {
            n.again = false;
            n.queued = true;
            self.states.queued.push(id.clone());
        } else if let Some(n) = self.states.newest.remove(id) {
            log_notes(n.notes);
        }
        false
    }

    /// A step failed: the text stays for reads, the file as it was; the entry's next record
    /// writes again.
    fn state_failed(&mut self, f: Flight, why: &str, exec: Option<&mut Executor>) {
        log::warn!(
            "{}: cannot record the delivery attempt: {why}; kept in memory until the next attempt",
            f.id
        );
        if let Some(file) = f.file {
            self.state_cleanup(DiskOp::Close { file }, exec);
        }
        // What the lines say holds in memory.
        log_notes(f.notes);
        if let Some(n) = self.states.newest.get_mut(&f.id) {
            n.busy = false;
            if n.removed {
                if let Some(n) = self.states.newest.remove(&f.id) {
                    log_notes(n.notes);
                }
            } else if n.again {
                n.again = false;
                n.queued = true;
                self.states.queued.push(f.id.clone());
            }
            // Else kept, not queued: reads see it until a record or a removal.
        }
    }

    /// An operation nobody waits for (a close after a failure, the unlink of a removed
    /// entry's state file).
    fn state_cleanup(&mut self, op: DiskOp, exec: Option<&mut Executor>) {
        let refused = match exec {
            Some(exec) => exec.submit(TAG_BIT | STATE_CLEANUP, op).err().map(|r| r.op),
            None => Some(op),
        };
        if let Some(DiskOp::Unlink { path, .. }) = refused {
            // Without the executor: the orphan goes now (a close is lost with its process).
            let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(path.to_bytes()));
        }
    }

    /// A flight that cannot go on in the executor: the newest text is written with blocking
    /// calls (or, for an entry removed meanwhile, its state file unlinked).
    fn state_takeover(&mut self, f: Flight) {
        let id = &f.id;
        let Some(n) = self.states.newest.get_mut(id) else {
            log_notes(f.notes);
            return;
        };
        n.busy = false;
        n.again = false;
        if n.removed {
            if let Some(n) = self.states.newest.remove(id) {
                log_notes(f.notes);
                log_notes(n.notes);
            }
            let _ = std::fs::remove_file(self.state_path(id));
            return;
        }
        self.state_inline(id, f.notes);
    }

    /// Writes `id`'s newest text with blocking calls (no executor for it); then logs
    /// `notes` (a flight's) and the text's own.
    fn state_inline(&mut self, id: &QueueId, notes: Vec<String>) {
        let Some(mut n) = self.states.newest.remove(id) else {
            log_notes(notes);
            return;
        };
        if n.queued {
            self.states.queued.retain(|q| q != id);
        }
        let dest = self.state_path(id);
        let written = self.write_state(id, &dest, &n.text);
        if let Err(e) = &written {
            log::warn!(
                "{id}: cannot record the delivery attempt: {e}; kept in memory until the next attempt"
            );
        }
        log_notes(notes);
        log_notes(std::mem::take(&mut n.notes));
        if written.is_err() {
            self.states.newest.insert(
                id.clone(),
                Newest {
                    busy: false,
                    again: false,
                    queued: false,
                    removed: false,
                    ..n
                },
            );
        }
    }

    /// Every write and removal not yet started, made with blocking calls (shutdown, or no
    /// executor).
    pub(super) fn states_inline(&mut self) {
        self.removals_inline();
        for id in std::mem::take(&mut self.states.queued) {
            self.state_inline(&id, Vec::new());
        }
    }

    /// `remove` of an entry with a state file or hold marker while the executor runs file
    /// operations: submitted at the next turn (see the module docs).
    pub(super) fn removal_later(&mut self, id: &QueueId, linked: bool, stated: bool, held: bool) {
        let recycled = (!linked).then(|| {
            self.free_seq += 1;
            self.free_seq
        });
        self.states.removals_queued.push(Removal {
            id: id.clone(),
            recycled,
            stated,
            held,
            step: Gone::Message,
        });
    }

    /// The operation of `r`'s step; None when the step has nothing to do.
    fn removal_op(&self, r: &Removal) -> Option<(DiskOp, bool)> {
        Some(match r.step {
            Gone::Message => {
                let from = cpath(&self.message_path(&r.id))?;
                match r.recycled {
                    Some(n) => (
                        DiskOp::Rename {
                            from_dir: None,
                            from,
                            to_dir: None,
                            to: cpath(&self.free_path(n))?,
                        },
                        false,
                    ),
                    None => (
                        DiskOp::Unlink {
                            dir: None,
                            path: from,
                        },
                        false,
                    ),
                }
            }
            Gone::DirSync => {
                let file = Handle::own(&self.queue_dir);
                let op = match self.sync_mode {
                    SyncMode::File => DiskOp::Fsync { file },
                    SyncMode::Filesystem => DiskOp::Syncfs { file },
                };
                (op, true)
            }
            Gone::State if r.stated => (
                DiskOp::Unlink {
                    dir: None,
                    path: cpath(&self.state_path(&r.id))?,
                },
                false,
            ),
            Gone::Hold if r.held => (
                DiskOp::Unlink {
                    dir: None,
                    path: cpath(&self.hold_path(&r.id))?,
                },
                false,
            ),
            Gone::State | Gone::Hold => return None,
        })
    }

    /// Submits `r`'s current step, skipping steps with nothing to do; false if the executor
    /// is full (`r` waits for the next submission). An executor that cannot take it at all
    /// (its helper gone) has the rest done with blocking calls.
    fn removal_submit(&mut self, mut r: Removal, exec: &mut Executor) -> bool {
        loop {
            let Some((op, own)) = self.removal_op(&r) else {
                match r.step {
                    Gone::State => {
                        r.step = Gone::Hold;
                        continue;
                    }
                    Gone::Hold => {
                        self.removal_finished(&r, Some(exec));
                        return true;
                    }
                    // A path that is no C string: not one of ours.
                    _ => return true,
                }
            };
            self.states.seq = (self.states.seq + 1) & super::prepare::FILE_MASK;
            let number = self.states.seq;
            let tag = TAG_BIT | REMOVAL | number;
            let submitted = if own {
                exec.submit_own(tag, op)
            } else {
                exec.submit(tag, op)
            };
            return match submitted {
                Ok(()) => {
                    self.states.removals.insert(number, r);
                    true
                }
                Err(rej) if rej.reason == Reject::Full => {
                    self.states.removals_queued.push(r);
                    self.states.blocked = true;
                    false
                }
                Err(_) => {
                    self.removal_inline(r);
                    true
                }
            };
        }
    }

    /// A completion of a removal's step.
    pub(super) fn removal_completion(
        &mut self,
        number: u64,
        result: Result<Outcome, Errno>,
        exec: Option<&mut Executor>,
    ) {
        self.states.blocked = false;
        let Some(mut r) = self.states.removals.remove(&number) else {
            return;
        };

        match (r.step, result) {
            (_, Err(e)) if e.0 == libc::EPIPE => return self.removal_inline(r),
            // Already gone (removed twice): what is left still goes.
            (Gone::Message, Err(e)) if e.0 == libc::ENOENT => r.recycled = None,
            (Gone::State | Gone::Hold, Err(e)) if e.0 == libc::ENOENT => {}
            (Gone::Message, Err(e)) => {
                super::prepare::removal_failed(
                    Some(&self.message_path(&r.id)),
                    &std::io::Error::from(e),
                );
                return;
            }
            (step, Err(e)) => {
                // The message is (or may not yet durably be) gone; what is left is an orphan
                // that start-up removes.
                log::warn!(
                    "{}: removal, {step:?}: {}; start-up removes what is left",
                    r.id,
                    std::io::Error::from(e)
                );
                return self.removal_finished(&r, exec);
            }
            (_, Ok(_)) => {}
        }
        r.step = match r.step {
            Gone::Message => Gone::DirSync,
            Gone::DirSync => Gone::State,
            Gone::State => Gone::Hold,
            Gone::Hold => return self.removal_finished(&r, exec),
        };
        match exec {
            Some(exec) => {
                if !self.removal_submit(r, exec) {
                    // Waits in `removals_queued` for the next turn.
                }
            }
            None => self.removal_inline(r),
        }
    }

    /// The rest of `r` with blocking calls: `Spool::remove_now`, told of the state file and
    /// marker, skips what is done already (a file already gone is not an error). A message
    /// file the executor moved into `free/` is then emptied.
    fn removal_inline(&mut self, r: Removal) {
        if r.stated {
            self.stated.insert(r.id.clone());
        }
        if r.held {
            self.held.insert(r.id.clone());
        }
        if let Err(e) = self.remove_now(&r.id) {
            super::prepare::removal_failed(Some(&self.message_path(&r.id)), &e);
        }
        if r.step != Gone::Message {
            self.removal_finished(&r, None);
        }
    }

    /// The removal is done: a recycled file is emptied for reuse.
    fn removal_finished(&mut self, r: &Removal, exec: Option<&mut Executor>) {
        if let Some(n) = r.recycled {
            self.truncate_later(n, exec);
        }
    }

    /// Every removal not yet started, made with blocking calls (shutdown, or no executor).
    pub(super) fn removals_inline(&mut self) {
        for r in std::mem::take(&mut self.states.removals_queued) {
            self.removal_inline(r);
        }
    }

    pub(super) fn state_tmp_path(&self, id: &QueueId) -> std::path::PathBuf {
        self.tmp.join(format!("{}{STATE_SUFFIX}", id.0))
    }
}

fn log_notes(notes: Vec<String>) {
    for line in notes {
        log::info!("{line}");
        #[cfg(test)]
        LOGGED.with(|l| l.borrow_mut().push(line));
    }
}

#[cfg(test)]
thread_local! {
    /// The lines `log_notes` wrote on this thread (the tests' view of the log).
    pub(super) static LOGGED: std::cell::RefCell<Vec<String>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Submits a state write's step: the sync of `queue/` names the spool's own descriptor,
/// which the helper process gets with the request (`Executor::submit_own`).
fn submit_step(
    exec: &mut Executor,
    tag: u64,
    op: DiskOp,
    step: Step,
) -> Result<(), crate::exec::Rejected> {
    if step == Step::DirSync {
        exec.submit_own(tag, op)
    } else {
        exec.submit(tag, op)
    }
}
