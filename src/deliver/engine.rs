//! The delivery engine: takes due queue entries from the schedule, resolves each pending
//! recipient, delivers into Maildirs, records per-recipient progress durably, and finally
//! removes the entry, defers it with back-off, or bounces what failed for good.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};

use super::Outcome;
use super::bounce::{self, FailedRecipient};
use super::local::{Commit, Maildirs, Staged};
use super::schedule::{Schedule, backoff};
use crate::daemon::events::{self, Delivery, Status};
use crate::date::rfc5322_date;
use crate::directory::{Directory, ResolveError, Resolved};
use crate::limits;
use crate::mail::{BodyType, Envelope, QueueId, SpoolError};
use crate::maildir::{CopySource, MessageKey};
use crate::spool::Deferral;

/// One queue entry as delivery sees it.
pub struct Entry {
    pub envelope: Envelope,
    /// Indices into `envelope.recipients` still to be delivered.
    pub pending: Vec<usize>,
    /// Failed attempts so far (drives the back-off).
    pub attempts: u32,
    /// The delay warning DSN has already been queued for this entry.
    pub delay_warned: bool,
    /// The queued file is in the Maildir form: it is the copy for the one recipient, to be
    /// linked into its Maildir (see doc/spool.md, "link-1").
    pub linkable: Option<Linkable>,
}

/// A queued file that is already a Maildir copy: where it is and the sizes its name carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linkable {
    pub path: std::path::PathBuf,
    /// Its length (`S=`).
    pub size: u64,
    /// Its POP3 size (`W=`).
    pub wire: u64,
}

/// What the engine needs from the spool. The real spool implements it in `hosts.rs`; tests
/// use an in-memory fake.
pub trait QueueStore {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry>;
    /// The stored message data (CRLF line endings, whatever the form of the file), from its
    /// first byte.
    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>>;
    /// Where a Maildir copy of the data is read from (the queued file, its data's offset,
    /// length and form): the copy is made in the disk executor, not on the event loop.
    fn copy_source(&mut self, id: &QueueId) -> io::Result<CopySource>;
    /// Durably records the recipients finished in this attempt and, in `deferral`, when to
    /// try the rest, each pending recipient's last reason and whether the delay warning went.
    fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        deferral: &Deferral<'_>,
    ) -> io::Result<()>;
    /// Logs `line` (info) once the last `record_attempt` of `id` is on disk. Where records
    /// are durable when `record_attempt` returns, that is at once; the spool writes them in
    /// the disk executor and logs the line when the write has ended, so a `postling -q` made
    /// after the line shows what it says.
    fn log_when_recorded(&mut self, id: &QueueId, line: String) {
        let _ = id;
        info!("{line}");
    }
    fn remove(&mut self, id: &QueueId) -> io::Result<()>;
    /// Queues a new message (a bounce or a delay warning): durable before this returns
    /// (`Enqueued::Durable`), or handed to the spool's group commit under `ticket`, whose
    /// outcome comes back through `Engine::notice_committed` (`Enqueued::Committing`).
    fn enqueue(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
        ticket: usize,
    ) -> Result<Enqueued, SpoolError>;
}

/// Where a queued notice stands when `QueueStore::enqueue` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// On disk, with this id.
    Durable(QueueId),
    /// In the group commit, as this id: durable (or failed) once its ticket comes back.
    Committing(QueueId),
}

/// Set in the commit ticket of every notice the engine queues (`QueueStore::enqueue`), so the
/// group commit's outcomes are told from the SMTP sessions' (which count up from 1).
pub const NOTICE_TICKET_BIT: usize = 1 << (usize::BITS - 1);

/// Is this group-commit ticket one of the engine's notices?
pub fn owns_ticket(ticket: usize) -> bool {
    ticket & NOTICE_TICKET_BIT != 0
}

pub struct DeliveryPolicy {
    pub hostname: String,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub queue_lifetime: Duration,
    /// `delay_warning_time`: zero for never.
    pub delay_warning: Duration,
}

/// One entry of a delivery batch between staging and settling.
struct Attempt {
    id: QueueId,
    entry: Entry,
    /// Each pending recipient's index with where its copies went.
    rcpts: Vec<(usize, Vec<Target>)>,
    /// For the log, beside each target of `rcpts`: its final address, relay and what the
    /// relay said.
    finals: Vec<Vec<Final>>,
    /// Remote addresses of this entry (`Target::Remote` indexes it), each once.
    remote: Vec<String>,
}

/// One copy of a recipient as the log names it.
struct Final {
    to: String,
    /// `local`, `none`, or the remote server (`host[ip]:port`) once it was tried.
    relay: String,
    /// What a remote server answered on success (local deliveries say nothing more).
    note: Option<String>,
}

/// The remote part of an entry, handed to outbound delivery (`Engine::take_remote_jobs`).
pub struct RemoteJob {
    pub id: QueueId,
    pub sender: String,
    /// Each remote address once; its index is the tag of its result.
    pub recipients: Vec<String>,
    pub body: BodyType,
    pub smtputf8: bool,
}

/// What became of one remote address of a `RemoteJob`.
pub struct RemoteOutcome {
    /// The index into `RemoteJob::recipients`.
    pub tag: usize,
    pub outcome: Outcome,
    /// The server tried (`host[ip]:port`), or `none` when no connection was made.
    pub relay: String,
    /// The server's answer to a delivered recipient, for the log.
    pub note: Option<String>,
}

/// An entry whose local copies are done and whose remote copies are out with the outbound
/// side (`Engine::remote_done` settles it).
struct Parked {
    attempt: Attempt,
}

/// Where one resolved copy of a recipient stands.
#[derive(Clone)]
enum Target {
    /// Decided without a file (resolution failed, no relay, staging failed).
    Done(Outcome),
    /// Written to a Maildir's tmp/: its outcome comes from the batch commit.
    Staged(usize),
    /// A remote address (`Attempt::remote` index): its outcome comes from outbound delivery.
    Remote(usize),
}

/// A recipient's outcome from its copies: any temporary failure keeps it pending; otherwise
/// any permanent failure bounces it; otherwise it is delivered.
fn combine(targets: &[Target], committed: &[Outcome]) -> Outcome {
    let mut result = Outcome::Delivered;
    for t in targets {
        let o = match t {
            Target::Done(o) => o,
            Target::Staged(i) => match committed.get(*i) {
                Some(o) => o,
                None => return Outcome::Temporary("the Maildir commit reported nothing".into()),
            },
            Target::Remote(_) => {
                return Outcome::Temporary("the remote delivery reported nothing".into());
            }
        };
        match o {
            Outcome::Temporary(_) => return o.clone(),
            Outcome::Permanent(_) => result = o.clone(),
            Outcome::Delivered => {}
        }
    }
    result
}

pub struct Engine {
    pub schedule: Schedule,
    maildirs: Maildirs,
    policy: DeliveryPolicy,
    /// The batch in progress (see `work`).
    batch: Option<Batch>,
    /// Outcomes that could not be written to the spool (it was full): kept here so that no
    /// retry in this process delivers or bounces those recipients again, and written with
    /// the next state that can be.
    unrecorded: HashMap<QueueId, Recorded>,
    /// Entries found in the queue at start-up and not yet settled: a crash may have cut their
    /// last attempt between its Maildir renames and the queue update, so before writing a
    /// copy they look for one already there (`Maildirs::delivered_before`).
    recovered: HashSet<String>,
    /// Held entries (`postling queue hold`): never in the schedule, never attempted, so they
    /// never expire either, until `release`. True for one found held at start-up: on release
    /// it is treated as `recovered` (a crashed process may have delivered some of it before
    /// it was held with the daemon stopped).
    held: HashMap<QueueId, bool>,
    /// Entries out with the outbound side: never staged again until settled.
    parked: HashMap<QueueId, Parked>,
    /// Remote parts to hand to outbound delivery.
    remote_jobs: Vec<RemoteJob>,
    /// Parked entries an administrator removed: their outbound work must stop.
    cancelled: Vec<QueueId>,
    /// Entries whose settling waits for a notice to the sender (a bounce, a delay warning) to
    /// be committed, by the notice's ticket: never staged again until settled.
    notices: HashMap<usize, Settlement>,
    next_notice: usize,
}

/// An entry's attempt being settled (`Engine::settle`): its outcomes, what follows from them,
/// and how far settling got. Kept while a notice to its sender is being committed.
struct Settlement {
    /// Every target resolved (`Target::Done`).
    attempt: Attempt,
    delivered: Vec<usize>,
    failed: Vec<(usize, String)>,
    /// The last temporary reason, for the deferral.
    temporary: Option<String>,
    /// The reason of each recipient that stays pending (`postling -q`, the delay warning).
    rcpt_errors: Vec<(usize, String)>,
    bounce: Option<QueueId>,
    /// The notice being committed: a bounce (the failures are logged and recorded once it is
    /// durable) or the delay warning (the deferral is recorded once it is durable).
    waiting_for: Notice,
    /// The record being made (deferral stage): what is done, and when the warning went.
    record: Option<Recorded>,
    /// The size of the notice being committed, for the log.
    notice_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice {
    Bounce,
    DelayWarning,
}

/// Recipients of an entry that are done: delivered, and failed with the reason; and when its
/// delay warning was queued.
#[derive(Default)]
struct Recorded {
    delivered: Vec<usize>,
    failed: Vec<(usize, String)>,
    delay_warned: Option<SystemTime>,
}

impl Recorded {
    fn contains(&self, idx: usize) -> bool {
        self.delivered.contains(&idx) || self.failed.iter().any(|(f, _)| *f == idx)
    }
}

/// A delivery batch: entries staged one per step, their Maildir files committed in steps,
/// then each entry settled.
#[derive(Default)]
struct Batch {
    /// Staged and not yet settled, in staging order.
    attempts: VecDeque<Attempt>,
    /// Files written while staging; moved into `commit` when staging ends.
    staged: Vec<Staged>,
    /// No more entries join (shutdown).
    staging_closed: bool,
    phase: Phase,
}

#[derive(Default)]
enum Phase {
    /// Entries join one per step until `budget` or nothing more is due.
    #[default]
    Staging,
    /// The batch's Maildir files are being made durable: in the disk executor when the
    /// reactor has one (the steps stop while its completions are out), else one blocking
    /// sync per step.
    Committing(Box<Commit>),
    /// One outcome per staged file; entries are settled one per step.
    Settling(Vec<Outcome>),
}

/// What one `Engine::step` did.
struct Step {
    /// Nothing to do: no batch and nothing due.
    idle: bool,
    /// Entries settled by this step.
    settled: usize,
}

/// Splits `"5.1.1 text"` into its RFC 3463 status and the text.
fn split_status(reason: &str, default: &str) -> (String, String) {
    let mut parts = reason.splitn(2, ' ');
    let first = parts.next().unwrap_or("");
    let is_status = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_status {
        (first.to_string(), parts.next().unwrap_or("").to_string())
    } else {
        (default.to_string(), reason.to_string())
    }
}

impl Engine {
    pub fn new(maildirs: Maildirs, policy: DeliveryPolicy) -> Engine {
        Engine {
            schedule: Schedule::default(),
            maildirs,
            policy,
            batch: None,
            unrecorded: HashMap::new(),
            recovered: HashSet::new(),
            held: HashMap::new(),
            parked: HashMap::new(),
            remote_jobs: Vec::new(),
            cancelled: Vec::new(),
            notices: HashMap::new(),
            next_notice: 0,
        }
    }

    /// A ticket for a notice's commit (`QueueStore::enqueue`).
    fn notice_ticket(&mut self) -> usize {
        self.next_notice = self.next_notice.wrapping_add(1) & !NOTICE_TICKET_BIT;
        self.next_notice | NOTICE_TICKET_BIT
    }

    /// Is an entry's settling waiting for a notice to its sender to be committed?
    pub fn awaits_notice(&self, id: &QueueId) -> bool {
        self.notices.values().any(|s| s.attempt.id == *id)
    }

    /// Notices being committed.
    pub fn notices_len(&self) -> usize {
        self.notices.len()
    }

    /// The group commit's outcome for a notice (`owns_ticket`): settling its entry goes on.
    pub fn notice_committed(
        &mut self,
        ticket: usize,
        result: Result<QueueId, SpoolError>,
        store: &mut dyn QueueStore,
        now: Instant,
        wall: SystemTime,
    ) {
        let Some(mut s) = self.notices.remove(&ticket) else {
            // Its entry was removed meanwhile (`forget`): the notice still goes out.
            if let Ok(new_id) = result {
                self.schedule.due_now(new_id);
            }
            return;
        };
        let id = s.attempt.id.clone();
        match (s.waiting_for, result) {
            (Notice::Bounce, Ok(new_id)) => {
                self.bounce_queued(&new_id, s.notice_size);
                s.bounce = Some(new_id);
                self.settle_outcomes(s, store, now, wall);
            }
            (Notice::Bounce, Err(e)) => {
                s.bounce = None;
                s.bounce_not_queued(&id, &e);
                self.settle_outcomes(s, store, now, wall);
            }
            (Notice::DelayWarning, r) => {
                let mut record = s.record.take().unwrap_or_default();
                record.delay_warned = match r {
                    Ok(new_id) => {
                        let env = &s.attempt.entry.envelope;
                        self.delay_warning_queued(&id, env, &new_id, s.notice_size, wall);
                        Some(wall)
                    }
                    Err(e) => {
                        warn!("{id}: cannot queue the delay warning: {e:?}; will retry");
                        None
                    }
                };
                self.settle_deferral(s, record, store, now, wall);
            }
        }
    }

    /// Remote parts staged since the last call (for outbound delivery).
    pub fn take_remote_jobs(&mut self) -> Vec<RemoteJob> {
        std::mem::take(&mut self.remote_jobs)
    }

    /// Entries removed while their remote part was out: outbound delivery must drop them.
    pub fn take_cancelled(&mut self) -> Vec<QueueId> {
        std::mem::take(&mut self.cancelled)
    }

    /// Is this entry's remote part out with outbound delivery?
    pub fn is_parked(&self, id: &QueueId) -> bool {
        self.parked.contains_key(id)
    }

    /// Entries whose remote part is out.
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    /// Settles a parked entry with the outcomes of its remote addresses. Outcomes for an
    /// entry no longer parked (removed meanwhile) are dropped.
    pub fn remote_done(
        &mut self,
        id: &QueueId,
        outcomes: Vec<RemoteOutcome>,
        store: &mut dyn QueueStore,
        now: Instant,
        wall: SystemTime,
    ) {
        let Some(Parked { mut attempt }) = self.parked.remove(id) else {
            return;
        };
        let mut by_tag: Vec<Option<RemoteOutcome>> = Vec::new();
        by_tag.resize_with(attempt.remote.len(), || None);
        for o in outcomes {
            if let Some(slot) = by_tag.get_mut(o.tag) {
                *slot = Some(o);
            }
        }
        for ((_, targets), finals) in attempt.rcpts.iter_mut().zip(attempt.finals.iter_mut()) {
            for (target, fin) in targets.iter_mut().zip(finals.iter_mut()) {
                if let Target::Remote(k) = *target {
                    *target = match by_tag.get(k).and_then(Option::as_ref) {
                        Some(r) => {
                            fin.relay.clone_from(&r.relay);
                            fin.note.clone_from(&r.note);
                            Target::Done(r.outcome.clone())
                        }
                        None => Target::Done(Outcome::Temporary(
                            "the remote delivery reported nothing".into(),
                        )),
                    };
                }
            }
        }
        self.settle(attempt, &[], store, now, wall);
    }

    /// Holds an entry: out of the schedule until `release`. Call between batches (`busy`
    /// false): an entry in a batch is being attempted right now.
    pub fn hold(&mut self, id: QueueId) {
        self.schedule.remove(&id);
        self.held.entry(id).or_insert(false);
    }

    /// Releases a held entry (or one found held at start-up): due now.
    pub fn release(&mut self, id: QueueId) {
        if self.held.remove(&id) == Some(true) {
            self.recovered.insert(id.0.clone());
        }
        self.schedule.remove(&id);
        if !self.parked.contains_key(&id) {
            // (A parked entry is rescheduled when its remote part settles.)
            self.schedule.due_now(id);
        }
    }

    pub fn is_held(&self, id: &QueueId) -> bool {
        self.held.contains_key(id)
    }

    /// Makes a queued entry due now (`postling queue flush ID`); a held one stays held.
    pub fn flush_one(&mut self, id: QueueId) {
        if self.held.contains_key(&id) || self.parked.contains_key(&id) || self.awaits_notice(&id) {
            return;
        }
        self.schedule.remove(&id);
        self.schedule.due_now(id);
    }

    /// Forgets an entry that an administrator removed from the spool.
    pub fn forget(&mut self, id: &QueueId) {
        if self.parked.remove(id).is_some() {
            self.cancelled.push(id.clone());
        }
        // A notice being committed still goes out; the entry is not settled any further.
        self.notices.retain(|_, s| s.attempt.id != *id);
        self.schedule.remove(id);
        self.held.remove(id);
        self.unrecorded.remove(id);
        self.settled(id);
    }

    /// Is a delivery batch in progress? Administrator's commands wait until it is over, so
    /// they never act on an entry that is being attempted.
    pub fn busy(&self) -> bool {
        self.batch.is_some()
    }

    /// Returns an entry to its sender now (`postling queue bounce`): every pending recipient
    /// fails with `5.0.0 returned by the administrator`, a delivery status notification is
    /// queued for the sender (none for the null sender), and the entry is removed. Returns
    /// how many recipients were returned. NotFound if the entry does not exist. Call between
    /// batches, with a store whose notices are durable when queued (`SpoolStore::immediate`):
    /// the entry is removed right after.
    pub fn return_to_sender(
        &mut self,
        id: &QueueId,
        store: &mut dyn QueueStore,
        wall: SystemTime,
    ) -> io::Result<usize> {
        let mut entry = store.load(id)?;
        if let Some(done) = self.unrecorded.get(id) {
            entry.pending.retain(|&i| !done.contains(i));
        }
        let failed: Vec<(usize, String)> = entry
            .pending
            .iter()
            .map(|&i| (i, "5.0.0 returned by the administrator".to_string()))
            .collect();
        let env = &entry.envelope;
        let mut bounce_id = None;
        if failed.is_empty() {
            // Nothing pending (a crash cut the removal short): nothing to return.
        } else if env.sender.is_empty() {
            info!("{id}: returned by postling queue bounce; no bounce for the null sender");
        } else {
            let ticket = self.notice_ticket();
            match self.bounce(id, env, &failed, store, wall, ticket) {
                Ok((Enqueued::Durable(new_id), size)) => {
                    self.bounce_queued(&new_id, size);
                    bounce_id = Some(new_id);
                }
                Ok((Enqueued::Committing(new_id), _)) => {
                    return Err(io::Error::other(format!(
                        "{new_id}: the bounce is not durable yet (a store that commits notices \
                         in the group commit)"
                    )));
                }
                Err(e) => {
                    return Err(io::Error::other(format!("cannot queue the bounce: {e:?}")));
                }
            }
        }
        let delay = wall.duration_since(env.arrival).unwrap_or_default();
        for (idx, r) in &failed {
            let rcpt = env.recipients.get(*idx).map_or("", String::as_str);
            events::log(&events::delivery(&Delivery {
                id: &id.0,
                to: rcpt,
                orig_to: rcpt,
                relay: "none",
                delay,
                status: Status::Bounced,
                reason: r,
            }));
        }
        if let Some(new_id) = &bounce_id {
            events::log(&events::bounce_notice(&id.0, &new_id.0));
        }
        store.remove(id)?;
        self.forget(id);
        events::log(&events::removed(&id.0));
        info!("{id}: returned to sender by postling queue bounce");
        Ok(failed.len())
    }

    /// Schedules an entry found in the queue at start-up: due now, and its copies may already
    /// be in the Maildirs.
    pub fn recovered(&mut self, id: QueueId) {
        self.recovered.insert(id.0.clone());
        self.schedule.due_now(id);
    }

    /// Schedules nothing for an entry found held at start-up: it waits for `release`, which
    /// makes it due and `recovered`.
    pub fn recovered_held(&mut self, id: QueueId) {
        self.held.insert(id, true);
    }

    /// An entry's attempt is settled (or the entry is gone): whatever a crashed process
    /// delivered of it has been found by now.
    fn settled(&mut self, id: &QueueId) {
        if self.recovered.remove(&id.0) && self.recovered.is_empty() {
            self.maildirs.forget_listings();
            self.recovered.shrink_to_fit();
        }
    }

    pub fn set_policy(&mut self, policy: DeliveryPolicy) {
        self.policy = policy;
    }

    pub fn set_maildirs(&mut self, maildirs: Maildirs) {
        self.maildirs = maildirs;
    }

    pub fn set_sync_mode(&mut self, mode: crate::durable::SyncMode) {
        self.maildirs.set_sync_mode(mode);
    }

    /// Runs one whole delivery batch of up to `budget` due entries; returns how many were
    /// attempted. (Tests; the reactor uses `work`, which spreads a batch over turns.)
    pub fn run(
        &mut self,
        budget: usize,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
    ) -> usize {
        let mut attempted = 0;
        if self.step(budget, store, dir, now, wall, None).idle {
            return 0;
        }
        while self.batch.is_some() {
            attempted += self.step(budget, store, dir, now, wall, None).settled;
        }
        attempted
    }

    /// Finishes the batch in progress, if any, without starting another (shutdown).
    pub fn finish_batch(&mut self, store: &mut dyn QueueStore, dir: &Directory, wall: SystemTime) {
        let now = Instant::now();
        while self.batch.is_some() {
            if let Some(b) = self.batch.as_mut() {
                b.staging_closed = true;
            }
            self.step(0, store, dir, now, wall, None);
        }
    }

    /// Is there a step to take now: a batch in progress that is not only waiting for the
    /// executor's completions (`complete` ends the wait), or an entry due?
    pub fn has_work(&self, now: Instant) -> bool {
        match &self.batch {
            Some(b) => !matches!(&b.phase, Phase::Committing(c) if c.waiting()),
            None => self.schedule.timeout(now) == Some(Duration::ZERO),
        }
    }

    /// How long the reactor may sleep as far as the engine is concerned (None: until an
    /// executor completion or an event). While a batch waits for its Maildir commit in the
    /// executor, entries that came due meanwhile wait for the batch's end (a batch at a
    /// time), so they must not wake the reactor: that was a busy loop of zero timeouts for
    /// every commit under load, spinning a core the clients needed.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        match &self.batch {
            Some(b) if matches!(&b.phase, Phase::Committing(c) if c.waiting()) => None,
            Some(_) => Some(Duration::ZERO),
            None => self.schedule.timeout(now),
        }
    }

    /// An executor completion that `local::owns` says is a Maildir commit's.
    pub fn complete(&mut self, c: crate::exec::Completion) {
        if let Some(Batch {
            phase: Phase::Committing(commit),
            ..
        }) = self.batch.as_mut()
        {
            commit.complete(c.tag, c.result);
        }
    }

    /// Delivery steps until `deadline` has passed (at least one when there is work). One
    /// step waits for the disk at most once: staging one entry (its Maildir files written),
    /// or settling one entry. The batch's commit runs in `exec` when there is one: its syncs
    /// are submitted there and the steps stop until their completions come (`complete`);
    /// without one, one step is one sync. A batch gathers up to `budget` due entries, so its
    /// syncs are shared, and the reactor polls its sockets between steps.
    #[allow(clippy::too_many_arguments)]
    pub fn work(
        &mut self,
        budget: usize,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
        deadline: Instant,
        mut exec: Option<&mut crate::exec::Executor>,
    ) {
        loop {
            let step = self.step(budget, store, dir, now, wall, exec.as_deref_mut());
            if step.idle || Instant::now() >= deadline {
                return;
            }
        }
    }

    fn step(
        &mut self,
        budget: usize,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
        exec: Option<&mut crate::exec::Executor>,
    ) -> Step {
        let Some(mut batch) = self.batch.take() else {
            if self.schedule.timeout(now) != Some(Duration::ZERO) {
                return Step {
                    idle: true,
                    settled: 0,
                };
            }
            self.batch = Some(Batch::default());
            return Step {
                idle: false,
                settled: 0,
            };
        };
        let mut settled = 0;
        match &mut batch.phase {
            Phase::Staging => {
                let next = if batch.staging_closed || batch.attempts.len() >= budget {
                    None
                } else {
                    self.schedule.next_due(now)
                };
                match next {
                    Some(id) => {
                        if let Some(a) = crate::turnstat::timed("deliver.stage", || {
                            self.load_and_stage(id, store, dir, now, wall, &mut batch.staged)
                        }) {
                            batch.attempts.push_back(a);
                        }
                    }
                    None => {
                        batch.phase = Phase::Committing(Box::new(Commit::new(std::mem::take(
                            &mut batch.staged,
                        ))))
                    }
                }
            }
            Phase::Committing(commit) => {
                let finished = crate::turnstat::timed("deliver.commit", || match exec {
                    Some(exec) => self.maildirs.commit_pump(commit, exec),
                    None => self.maildirs.commit_step(commit),
                });
                if !finished && commit.waiting() {
                    // Nothing to do before a completion comes.
                    self.batch = Some(batch);
                    return Step {
                        idle: true,
                        settled: 0,
                    };
                }
                if finished {
                    let done = std::mem::replace(&mut batch.phase, Phase::Settling(Vec::new()));
                    if let Phase::Committing(c) = done {
                        batch.phase = Phase::Settling(c.outcomes());
                    }
                }
            }
            Phase::Settling(outcomes) => match batch.attempts.pop_front() {
                Some(attempt) => {
                    if attempt.remote.is_empty() {
                        crate::turnstat::timed("deliver.settle", || {
                            self.settle(attempt, outcomes, store, now, wall)
                        });
                    } else {
                        self.park(attempt, outcomes);
                    }
                    settled = 1;
                }
                // Every entry settled: the batch is over.
                None => {
                    return Step {
                        idle: false,
                        settled: 0,
                    };
                }
            },
        }
        self.batch = Some(batch);
        Step {
            idle: false,
            settled,
        }
    }

    /// Reads one due entry and stages its Maildir files; None if it vanished or is unreadable
    /// (then it is deferred).
    fn load_and_stage(
        &mut self,
        id: QueueId,
        store: &mut dyn QueueStore,
        dir: &Directory,
        now: Instant,
        wall: SystemTime,
        staged: &mut Vec<Staged>,
    ) -> Option<Attempt> {
        if self.held.contains_key(&id) {
            // Held since it was scheduled: it waits for `release`, out of the schedule.
            return None;
        }
        if self.parked.contains_key(&id) || self.awaits_notice(&id) {
            // Its remote part is still out, or a notice to its sender is being committed
            // (`queue flush` of every entry): it is settled, and rescheduled, when that ends.
            return None;
        }
        match store.load(&id) {
            Ok(mut entry) => {
                if let Some(done) = self.unrecorded.get(&id) {
                    entry.pending.retain(|&i| !done.contains(i));
                }
                Some(self.stage(id, entry, store, dir, wall, staged))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.settled(&id);
                None
            }
            Err(e) => {
                warn!(
                    "{id}: cannot read queue entry: {e}; retrying in {}",
                    human(self.policy.retry_max)
                );
                self.schedule.defer(id, now + self.policy.retry_max);
                None
            }
        }
    }

    /// Resolves every pending recipient of one entry and writes a Maildir file per local user
    /// (one per user, however many recipients lead there).
    fn stage(
        &mut self,
        id: QueueId,
        entry: Entry,
        store: &mut dyn QueueStore,
        dir: &Directory,
        wall: SystemTime,
        staged: &mut Vec<Staged>,
    ) -> Attempt {
        let mut users: HashMap<String, Target> = HashMap::new();
        let mut rcpts = Vec::with_capacity(entry.pending.len());
        let mut finals = Vec::with_capacity(entry.pending.len());
        let unique = self.maildirs.unique_name(&MessageKey {
            queue_id: &id.0,
            arrival: entry.envelope.arrival,
            sender: &entry.envelope.sender,
            recipients: &entry.envelope.recipients,
        });
        let recovered = self.recovered.contains(&id.0);
        let mut remote: Vec<String> = Vec::new();
        // Received headers in the message, counted at the first remote copy (loop check).
        let mut hops: Option<usize> = None;
        for &idx in &entry.pending {
            let Some(rcpt) = entry.envelope.recipients.get(idx) else {
                continue;
            };
            let resolution = dir.resolve(rcpt);
            finals.push(final_addresses(rcpt, &resolution));
            let targets =
                match resolution {
                    Err(ResolveError::UnknownUser) => {
                        vec![Target::Done(Outcome::Permanent(
                            "5.1.1 unknown user".into(),
                        ))]
                    }
                    Err(ResolveError::AliasLoop(name)) => vec![Target::Done(Outcome::Permanent(
                        format!("5.4.6 alias loop at {name}"),
                    ))],
                    Err(ResolveError::NotLocal) => {
                        vec![remote_target(&mut remote, &mut hops, rcpt, || {
                            count_received(store, &id)
                        })]
                    }
                    Ok(resolved) => {
                        // The queued file is this recipient's Maildir copy (the spool wrote it so
                        // because it resolved to one Maildir): linked there, not copied.
                        let link = entry.linkable.as_ref().filter(|_| {
                            resolved.len() == 1 && entry.envelope.recipients.len() == 1
                        });
                        resolved
                    .iter()
                    .map(|t| match t {
                        Resolved::Local { user } => {
                            if let Some(t) = users.get(user) {
                                return t.clone();
                            }
                            let maybe = |q: &str| self.recovered.contains(q);
                            if recovered && self.maildirs.delivered_before(user, &unique, &maybe) {
                                info!("{id}: {user} already has its copy, from before the restart");
                                let target = Target::Done(Outcome::Delivered);
                                users.insert(user.clone(), target.clone());
                                return target;
                            }
                            if let Some(s) = link.and_then(|l| {
                                self.maildirs
                                    .stage_link(user, &unique, &l.path, l.size, l.wire, wall)
                            }) {
                                staged.push(s);
                                let target = Target::Staged(staged.len() - 1);
                                users.insert(user.clone(), target.clone());
                                return target;
                            }
                            let target = match store.copy_source(&id) {
                                Ok(source) => match self.maildirs.stage(
                                    user,
                                    &unique,
                                    &entry.envelope.sender,
                                    rcpt,
                                    source,
                                    wall,
                                ) {
                                    Ok(s) => {
                                        staged.push(s);
                                        Target::Staged(staged.len() - 1)
                                    }
                                    Err(outcome) => Target::Done(outcome),
                                },
                                Err(e) => Target::Done(Outcome::Temporary(format!(
                                    "cannot read queued message: {e}"
                                ))),
                            };
                            users.insert(user.clone(), target.clone());
                            target
                        }
                        Resolved::Remote { address } => {
                            remote_target(&mut remote, &mut hops, address, || {
                                count_received(store, &id)
                            })
                        }
                    })
                    .collect()
                    }
                };
            rcpts.push((idx, targets));
        }
        Attempt {
            id,
            entry,
            rcpts,
            finals,
            remote,
        }
    }

    /// Hands an entry's remote addresses to outbound delivery once its local copies are
    /// committed; it is settled by `remote_done`.
    fn park(&mut self, mut attempt: Attempt, committed: &[Outcome]) {
        resolve_staged(&mut attempt, committed);
        let env = &attempt.entry.envelope;
        self.remote_jobs.push(RemoteJob {
            id: attempt.id.clone(),
            sender: env.sender.clone(),
            recipients: attempt.remote.clone(),
            body: env.body,
            smtputf8: env.smtputf8,
        });
        self.parked.insert(attempt.id.clone(), Parked { attempt });
    }

    /// Decides what happens to one entry once its Maildir files are committed: the outcome
    /// of each recipient, then (`settle_outcomes`) the bounce for those that failed, the log,
    /// and the removal or the deferral record (`settle_deferral`). A notice to the sender
    /// that the spool commits in its group commit (`Enqueued::Committing`) holds the rest
    /// until it is durable (`notice_committed`): the failures are recorded only once their
    /// bounce is safe, and a deferral only once its delay warning is.
    fn settle(
        &mut self,
        mut attempt: Attempt,
        outcomes: &[Outcome],
        store: &mut dyn QueueStore,
        now: Instant,
        wall: SystemTime,
    ) {
        resolve_staged(&mut attempt, outcomes);
        self.settled(&attempt.id);
        let env = &attempt.entry.envelope;
        let expired =
            wall.duration_since(env.arrival).unwrap_or_default() >= self.policy.queue_lifetime;
        let mut delivered = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut temporary: Option<String> = None;
        let mut rcpt_errors: Vec<(usize, String)> = Vec::new();
        for (idx, targets) in &attempt.rcpts {
            let rcpt = env.recipients.get(*idx).map_or("", String::as_str);
            match combine(targets, &[]) {
                Outcome::Delivered => delivered.push(*idx),
                Outcome::Permanent(r) => failed.push((*idx, r)),
                Outcome::Temporary(r) if expired => failed.push((
                    *idx,
                    format!(
                        "4.4.7 message expired after {}; last error: {r}",
                        human(self.policy.queue_lifetime)
                    ),
                )),
                Outcome::Temporary(r) => {
                    temporary = Some(format!("{rcpt}: {r}"));
                    rcpt_errors.push((*idx, r));
                }
            }
        }
        let mut s = Settlement {
            attempt,
            delivered,
            failed,
            temporary,
            rcpt_errors,
            bounce: None,
            waiting_for: Notice::Bounce,
            record: None,
            notice_size: 0,
        };
        if !s.failed.is_empty() {
            let id = s.attempt.id.clone();
            if s.attempt.entry.envelope.sender.is_empty() {
                info!(
                    "{id}: {} recipient(s) failed; no bounce for the null sender",
                    s.failed.len()
                );
            } else {
                let env = s.attempt.entry.envelope.clone();
                let ticket = self.notice_ticket();
                match self.bounce(&id, &env, &s.failed, store, wall, ticket) {
                    Ok((Enqueued::Durable(new_id), size)) => {
                        self.bounce_queued(&new_id, size);
                        s.bounce = Some(new_id);
                    }
                    Ok((Enqueued::Committing(new_id), size)) => {
                        s.bounce = Some(new_id);
                        s.notice_size = size;
                        self.await_notice(s, Notice::Bounce, ticket);
                        return;
                    }
                    Err(e) => s.bounce_not_queued(&id, &e),
                }
            }
        }
        self.settle_outcomes(s, store, now, wall);
    }

    /// Holds `s` until its notice's commit comes back under `ticket` (`notice_committed`).
    fn await_notice(&mut self, mut s: Settlement, notice: Notice, ticket: usize) {
        s.waiting_for = notice;
        self.notices.insert(ticket, s);
    }

    /// With the bounce queued (or not): logs each copy's outcome, then removes the entry if
    /// every recipient is done, else goes on to its deferral (`settle_deferral`), queueing
    /// the delay warning first if it is due.
    fn settle_outcomes(
        &mut self,
        mut s: Settlement,
        store: &mut dyn QueueStore,
        now: Instant,
        wall: SystemTime,
    ) {
        let id = s.attempt.id.clone();
        let env = &s.attempt.entry.envelope;
        let delay = wall.duration_since(env.arrival).unwrap_or_default();
        for ((idx, targets), labels) in s.attempt.rcpts.iter().zip(&s.attempt.finals) {
            let orig = env.recipients.get(*idx).map_or("", String::as_str);
            let bounced = s
                .failed
                .iter()
                .find(|(f, _)| f == idx)
                .map(|(_, r)| r.as_str());
            for (target, fin) in targets.iter().zip(labels) {
                let outcome = match target {
                    Target::Done(o) => Some(o),
                    Target::Staged(_) | Target::Remote(_) => None,
                };
                let (status, reason) = match (outcome, bounced) {
                    (Some(Outcome::Delivered), _) => (
                        Status::Sent,
                        fin.note.as_deref().unwrap_or("delivered to maildir"),
                    ),
                    (Some(Outcome::Permanent(r)), Some(_)) => (Status::Bounced, r.as_str()),
                    (_, Some(r)) => (Status::Bounced, r),
                    (Some(Outcome::Temporary(r) | Outcome::Permanent(r)), None) => {
                        (Status::Deferred, r.as_str())
                    }
                    (None, None) => (Status::Deferred, "the Maildir commit reported nothing"),
                };
                events::log(&events::delivery(&Delivery {
                    id: &id.0,
                    to: &fin.to,
                    orig_to: orig,
                    relay: &fin.relay,
                    delay,
                    status,
                    reason,
                }));
            }
        }
        if let Some(new_id) = &s.bounce {
            events::log(&events::bounce_notice(&id.0, &new_id.0));
        }
        if s.delivered.len() + s.failed.len() == s.attempt.entry.pending.len() {
            self.unrecorded.remove(&id);
            match crate::turnstat::timed("deliver.settle.remove", || store.remove(&id)) {
                Ok(()) => events::log(&events::removed(&id.0)),
                Err(e) => warn!("{id}: delivered but cannot remove the queue entry: {e}"),
            }
            return;
        }
        let mut record = self.unrecorded.remove(&id).unwrap_or_default();
        record.delivered.extend(std::mem::take(&mut s.delivered));
        record.failed.extend(std::mem::take(&mut s.failed));
        if !s.attempt.entry.delay_warned && record.delay_warned.is_none() {
            // Queued before it is recorded (see `delay_warning`).
            let ticket = self.notice_ticket();
            let env = s.attempt.entry.envelope.clone();
            match self.delay_warning(&id, &env, &s.rcpt_errors, store, wall, ticket) {
                Some((Enqueued::Durable(new_id), size)) => {
                    self.delay_warning_queued(&id, &env, &new_id, size, wall);
                    record.delay_warned = Some(wall);
                }
                Some((Enqueued::Committing(_), size)) => {
                    s.record = Some(record);
                    s.notice_size = size;
                    self.await_notice(s, Notice::DelayWarning, ticket);
                    return;
                }
                None => {}
            }
        }
        self.settle_deferral(s, record, store, now, wall);
    }

    /// Records the attempt of an entry with recipients still pending (`record`: what is done
    /// now and before) and schedules its next attempt.
    fn settle_deferral(
        &mut self,
        s: Settlement,
        record: Recorded,
        store: &mut dyn QueueStore,
        now: Instant,
        wall: SystemTime,
    ) {
        let id = s.attempt.id;
        let attempts = s.attempt.entry.attempts + 1;
        let delay = backoff(attempts, self.policy.retry_min, self.policy.retry_max);
        let reason = s.temporary.unwrap_or_else(|| "temporary failure".into());
        let deferral = Deferral {
            attempts,
            last_error: &reason,
            next_attempt: wall + delay,
            rcpt_errors: &s.rcpt_errors,
            delay_warned: record.delay_warned,
        };
        if let Err(e) = store.record_attempt(&id, &record.delivered, &record.failed, &deferral) {
            warn!(
                "{id}: cannot record the delivery attempt: {e}; the recipients done are kept in memory"
            );
            self.unrecorded.insert(id.clone(), record);
        }
        store.log_when_recorded(
            &id,
            format!("{id}: deferred for {}: {reason}", human(delay)),
        );
        if !self.held.contains_key(&id) {
            self.schedule.defer(id, now + delay);
        }
    }

    /// The envelope of a notification (bounce or delay warning) about `env` to its sender.
    fn notice_envelope(&self, env: &Envelope, wall: SystemTime) -> Envelope {
        Envelope {
            sender: String::new(),
            recipients: vec![env.sender.clone()],
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            helo: self.policy.hostname.clone(),
            arrival: wall,
            smtputf8: env.smtputf8,
            body: BodyType::EightBitMime,
            pickup: None,
        }
    }

    /// Builds the bounce for `failed` and queues it (`QueueStore::enqueue`, under `ticket`);
    /// with its size.
    fn bounce(
        &mut self,
        id: &QueueId,
        env: &Envelope,
        failed: &[(usize, String)],
        store: &mut dyn QueueStore,
        wall: SystemTime,
        ticket: usize,
    ) -> Result<(Enqueued, u64), SpoolError> {
        let failed: Vec<FailedRecipient> = failed
            .iter()
            .map(|(idx, reason)| {
                let (status, text) = split_status(reason, "5.0.0");
                FailedRecipient {
                    address: env.recipients.get(*idx).cloned().unwrap_or_default(),
                    status,
                    reason: text,
                }
            })
            .collect();
        let head = read_head(store, id);
        let report = bounce::build(&bounce::BounceInput {
            hostname: &self.policy.hostname,
            queue_id: &id.0,
            sender: &env.sender,
            arrival_date: &rfc5322_date(env.arrival),
            date: &rfc5322_date(wall),
            failed: &failed,
            original_headers: bounce::header_section(&head),
        });
        let bounce_env = self.notice_envelope(env, wall);
        let queued = store.enqueue(&bounce_env, &report, ticket)?;
        Ok((queued, report.len() as u64))
    }

    /// A bounce of `size` octets is durable: logged, and due for delivery.
    fn bounce_queued(&mut self, new_id: &QueueId, size: u64) {
        events::log(&events::queued(&new_id.0, "", size, 1));
        self.schedule.due_now(new_id.clone());
    }
}

impl Settlement {
    /// The bounce could not be queued: the failed recipients stay pending, so the bounce is
    /// not lost, and are tried again later.
    fn bounce_not_queued(&mut self, id: &QueueId, e: &SpoolError) {
        warn!("{id}: cannot queue the bounce: {e:?}; will retry");
        self.temporary
            .get_or_insert_with(|| format!("cannot queue bounce: {e:?}"));
        let why = format!("its bounce cannot be queued: {e:?}");
        self.rcpt_errors
            .extend(self.failed.iter().map(|(i, _)| (*i, why.clone())));
        self.failed.clear();
    }
}

/// Turns each target staged in this batch into its commit's outcome (`committed`, by index).
fn resolve_staged(attempt: &mut Attempt, committed: &[Outcome]) {
    for (_, targets) in &mut attempt.rcpts {
        for t in targets.iter_mut() {
            if let Target::Staged(i) = *t {
                *t = Target::Done(committed.get(i).cloned().unwrap_or_else(|| {
                    Outcome::Temporary("the Maildir commit reported nothing".into())
                }));
            }
        }
    }
}

/// `90s` → `1m30s`-style short durations for log lines.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// For the log: where each copy of `rcpt` goes (beside the targets `stage` makes from the
/// same resolution), with its relay. A recipient delivered to its own mailbox keeps its
/// address (no `orig_to=`); an alias's targets are named as they resolved. A remote copy is
/// `relay=none` until outbound delivery names the server it tried.
fn final_addresses(rcpt: &str, resolution: &Result<Vec<Resolved>, ResolveError>) -> Vec<Final> {
    let fin = |to: &str, relay: &str| Final {
        to: to.to_string(),
        relay: relay.to_string(),
        note: None,
    };
    match resolution {
        Err(ResolveError::NotLocal) => vec![fin(rcpt, "none")],
        Err(_) => vec![fin(rcpt, "local")],
        Ok(resolved) => {
            let local_part = rcpt.rsplit_once('@').map_or(rcpt, |(l, _)| l);
            let direct = resolved.len() == 1;
            resolved
                .iter()
                .map(|r| match r {
                    Resolved::Local { user } if direct && user.eq_ignore_ascii_case(local_part) => {
                        fin(rcpt, "local")
                    }
                    Resolved::Local { user } => fin(user, "local"),
                    Resolved::Remote { address } => fin(address, "none"),
                })
                .collect()
        }
    }
}

/// The target of one remote copy: an index into `remote` (each address once per entry), or
/// a bounce when the message has already passed through too many servers (a mail loop,
/// RFC 5321 §6.3). `hops` caches the count of Received headers, read at the first remote copy.
fn remote_target(
    remote: &mut Vec<String>,
    hops: &mut Option<usize>,
    address: &str,
    count: impl FnOnce() -> usize,
) -> Target {
    let received = *hops.get_or_insert_with(count);
    if received > limits::MAX_RECEIVED_HEADERS {
        return Target::Done(Outcome::Permanent(format!(
            "5.4.6 mail loop: the message has passed through {received} servers (Received headers)"
        )));
    }
    if let Some(k) = remote.iter().position(|a| a.eq_ignore_ascii_case(address)) {
        return Target::Remote(k);
    }
    remote.push(address.to_string());
    Target::Remote(remote.len() - 1)
}

/// Counts the Received header fields in the header section of a queued message (its first
/// `bounce::MAX_RETURNED_HEADERS` octets; a header section longer than that counts what fits).
fn count_received(store: &mut dyn QueueStore, id: &QueueId) -> usize {
    let head = read_head(store, id);
    bounce::header_section(&head)
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// The first `bounce::MAX_RETURNED_HEADERS` octets of a queued message (less if it is
/// shorter or unreadable): its header section for a notification or the loop check.
fn read_head(store: &mut dyn QueueStore, id: &QueueId) -> Vec<u8> {
    let mut head = vec![0u8; bounce::MAX_RETURNED_HEADERS];
    let mut n = 0;
    if let Ok(mut data) = store.open_data(id) {
        while n < head.len() {
            match data.read(&mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    }
    head.truncate(n);
    head
}

mod delay;
#[cfg(test)]
mod tests;
