//! The reactor's side of the sessions' host traits, and the services behind them: the spool
//! (messages being received, the group commit), the directory (users, aliases), the delivery
//! engine (and its schedule), open POP mailboxes, and the budgets kept per client address
//! across connections: the failed-login throttle and the rejected-recipient budget.
//!
//! Password checks are split in two around the disk executor (the reactor holds it):
//! `auth_begin` decides on the reactor whatever needs no hashing (a throttled client, a
//! success remembered by the login cache, `auth::cache`) or hands back the `VerifyPassword`
//! operation to submit; `auth_finish` takes its completion, counts a failure against the
//! client, remembers a success, and logs the outcome.
//!
//! Per-connection state (a message being received, a locked mailbox) is keyed by the
//! connection's slot; the reactor reports every slot's end through `session_ended`, so nothing
//! outlives its connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};

use crate::auth::Credential;
use crate::auth::cache::{AuthCache, CacheKey};
use crate::config::Config;
use crate::daemon::StartError;
use crate::daemon::{events, flood};
use crate::deliver::engine::{DeliveryPolicy, Engine, RemoteOutcome};
use crate::deliver::local::Maildirs;
use crate::deliver::schedule::{Linger, Schedule};
use crate::deliver::store::SpoolStore;
use crate::directory::Directory;
use crate::directory::watch::DirWatch;
use crate::exec::{Completion as ExecCompletion, Executor};
use crate::exec::{DiskOp, Errno, Outcome};
use crate::limits;
use crate::mail::{Envelope, MailboxDone, MailboxError, QueueId, RcptVerdict, SpoolError};
use crate::mailbox::Mailbox;
use crate::mailbox::job::{Job, JobResult, Jobs};
use crate::pickup::{Loaded, Pickup, PickupSettings};
use crate::proto::smtp::SmtpHost;
use crate::proto::{AuthRequest, AuthVerdict, MailboxRequest, PopHost};
use crate::spool::{Incoming, Spool};
use crate::throttle::{Admission, ClientKey, RcptBudget, Refusal, Throttle};

/// Everything sessions reach through their host traits, and the delivery side of the queue.
pub struct Services {
    spool: Spool,
    spool_dir: PathBuf,
    /// The spool lock (`control::lock_spool`), held for the process's life: while it is
    /// held, `postling queue` asks this process instead of touching the spool.
    _spool_lock: std::fs::File,
    /// The message each SMTP slot is receiving.
    incoming: HashMap<usize, Incoming>,
    /// Its sender and recipient count, for the `from=` log line at the commit.
    incoming_env: HashMap<usize, (String, usize)>,
    /// Commits in progress: ticket → their `from=` log line, written when the commit is
    /// durable (even if the client has gone by then).
    queued_lines: HashMap<usize, String>,
    directory: Directory,
    engine: Engine,
    mailbox_root: PathBuf,
    /// The name deliveries put into Maildir file names.
    hostname: String,
    /// The mailbox each POP slot has locked.
    mailboxes: HashMap<usize, Mailbox>,
    /// Mailboxes being opened or updated in the executor (`mailbox::job`).
    mailbox_jobs: Jobs,
    /// Failed logins per client, shared by every protocol that takes a password.
    throttle: Throttle,
    /// Password checks running in the executor, per client (the throttle counts them).
    checks_in_flight: HashMap<ClientKey, u32>,
    /// Successful password checks, remembered briefly.
    auth_cache: AuthCache,
    /// `Directory::users_reloads` when the cache was last valid.
    users_reloads_seen: u64,
    /// A failed password check (the helper process gone) was logged.
    check_failure_logged: bool,
    /// `disk_io` as started (a reload cannot change the executor).
    disk_io: crate::exec::DiskIo,
    /// Refused SMTP recipients per client, across its connections.
    rcpt_budget: RcptBudget,
    /// Commits in progress: ticket (the spool's tag) → connection slot, and back.
    tickets: HashMap<usize, usize>,
    slot_ticket: HashMap<usize, usize>,
    next_ticket: usize,
    /// `maildrop/`: local submissions by `sendmail` (None: it could not be prepared).
    pickup: Option<Pickup>,
    /// Remote delivery (attached by the reactor, which owns the poll its sockets are in).
    outbound: Option<crate::outbound::Outbound>,
    /// Outcomes of remote delivery not yet settled: settled a slice of a turn at a time
    /// (`limits::WORK_SLICE`), since a destination that refuses every connection answers for
    /// all its queued messages at once.
    remote_results: std::collections::VecDeque<(QueueId, Vec<RemoteOutcome>)>,
    /// Test hook (`POSTLING_TEST_ABORT_AFTER_PICKUP_COMMIT` set at start): SIGKILL itself
    /// between a pickup's commit and its drop file's unlink, the crash the start-up scan must
    /// survive (tests/integration/test_sendmail.py).
    abort_after_pickup_commit: bool,
    /// The users and aliases files were checked for changes in this reactor turn: one `stat`
    /// each per turn at most, however many RCPTs, logins and deliveries it has.
    directory_checked: bool,
    /// Says when those files may have changed (inotify), so turns without a change make no
    /// `stat` at all. None where inotify is not available: then every turn checks.
    directory_watch: Option<DirWatch>,
}

fn policy(config: &Config) -> DeliveryPolicy {
    DeliveryPolicy {
        hostname: config.hostname.clone(),
        retry_min: config.retry_min,
        retry_max: config.retry_max,
        queue_lifetime: config.queue_lifetime,
        delay_warning: config.delay_warning_time,
    }
}

fn maildirs(config: &Config) -> Maildirs {
    let mut m = Maildirs::new(&config.mailbox_dir, &config.hostname);
    m.set_sync_mode(config.fsync);
    m
}

impl Services {
    /// Opens the spool (removing what a crash left half-done), reads the users and aliases,
    /// and schedules every queued message for an attempt at once. Returns warnings to log.
    pub fn start(config: &Config) -> Result<(Services, Vec<String>), StartError> {
        let lock = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.spool_dir)
            .and_then(|()| crate::control::lock_spool(&config.spool_dir, true))
            .and_then(|l| l.ok_or_else(|| std::io::Error::other("lock not taken")))
            .map_err(|e| {
                StartError::os(format!(
                    "cannot lock the spool {}: {e}",
                    config.spool_dir.display()
                ))
            })?;
        let (mut spool, queued) = Spool::open(&config.spool_dir).map_err(|e| {
            StartError::os(format!(
                "cannot open the spool {}: {e}; check that the directory is writable by the user postling runs as (spool_dir in {})",
                config.spool_dir.display(),
                config.path.display()
            ))
        })?;
        let (directory, warnings) =
            Directory::load(config.directory_settings()).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                StartError::config(lines.join("\n"))
            })?;
        spool.set_sync_mode(config.fsync);
        let mut engine = Engine::new(maildirs(config), policy(config));
        engine.schedule = Schedule::with_linger(Linger {
            wait: limits::DELIVERY_LINGER,
            batch: limits::DELIVERIES_PER_TURN,
        });
        let mut warnings = warnings;
        let pickup = open_pickup(config, &spool, &queued, &mut warnings);
        let directory_watch = {
            let s = directory.settings();
            match DirWatch::new(&[&s.users_file, &s.aliases_file]) {
                Ok(w) => Some(w),
                Err(e) => {
                    info!(
                        "no inotify for the users and aliases files ({e}): they are checked \
                         with a stat in each busy reactor turn instead"
                    );
                    None
                }
            }
        };
        if !queued.is_empty() {
            info!(
                "{} message(s) in the queue; delivering them now",
                queued.len()
            );
        }
        let mut held = 0;
        for id in queued {
            if spool.is_held(&id) {
                held += 1;
                engine.recovered_held(id);
            } else {
                engine.recovered(id);
            }
        }
        if held > 0 {
            info!("{held} of them held (postling queue release delivers them)");
        }
        let services = Services {
            spool,
            spool_dir: config.spool_dir.clone(),
            _spool_lock: lock,
            incoming: HashMap::new(),
            incoming_env: HashMap::new(),
            queued_lines: HashMap::new(),
            directory,
            engine,
            mailbox_root: config.mailbox_dir.clone(),
            hostname: config.hostname.clone(),
            mailboxes: HashMap::new(),
            mailbox_jobs: Jobs::new(),
            throttle: Throttle::new(config.login_attempts_per_client),
            checks_in_flight: HashMap::new(),
            auth_cache: AuthCache::new(),
            users_reloads_seen: 0,
            check_failure_logged: false,
            disk_io: config.disk_io,
            rcpt_budget: RcptBudget::default(),
            directory_checked: false,
            directory_watch,
            pickup,
            abort_after_pickup_commit: std::env::var_os("POSTLING_TEST_ABORT_AFTER_PICKUP_COMMIT")
                .is_some(),
            tickets: HashMap::new(),
            slot_ticket: HashMap::new(),
            next_ticket: 0,
            outbound: None,
            remote_results: std::collections::VecDeque::new(),
        };
        Ok((services, warnings))
    }

    /// A poll returned, at the start of a reactor turn or within one (`Reactor::poll_now`):
    /// what it reports may follow an edit of the users or aliases files, so they are looked
    /// at again before the next RCPT (at most once per poll).
    pub fn begin_turn(&mut self) {
        self.directory_checked = false;
    }

    /// Picks up edits of the users and aliases files: a `stat` of each, at most once a turn
    /// and only after the watch saw something happen to them (`directory::watch`).
    fn directory_fresh(&mut self) -> &Directory {
        if !self.directory_checked {
            self.directory_checked = true;
            if self.directory_watch.as_mut().is_none_or(DirWatch::stale) {
                self.directory.refresh();
                self.drop_cache_if_users_changed();
            }
        }
        &self.directory
    }

    /// The watch's inotify descriptor, for the poll.
    pub fn directory_watch_fd(&self) -> Option<std::os::fd::RawFd> {
        self.directory_watch.as_ref().map(DirWatch::fd)
    }

    /// The watch's descriptor is readable: the files are checked at their next use. The
    /// reactor calls this before it serves the turn's connections, so a RCPT sent after an
    /// edit (and so reported with or after the edit's event) sees the edit.
    pub fn directory_changed(&mut self) {
        if let Some(w) = self.directory_watch.as_mut() {
            w.readable();
        }
    }

    pub fn smtp_host(&mut self, slot: usize, peer: SocketAddr, now: Instant) -> SmtpHostFor<'_> {
        SmtpHostFor {
            services: self,
            slot,
            peer,
            now,
        }
    }

    /// (`peer` and `now` are not needed since password checks left the host trait; kept so
    /// the hosts are made alike.)
    pub fn pop_host(&mut self, slot: usize, _peer: SocketAddr, _now: Instant) -> PopHostFor<'_> {
        PopHostFor {
            services: self,
            slot,
        }
    }

    /// A login, first half (on the reactor): a client over its failure budget is refused
    /// without a check (counting its checks still running as failures); a success the login
    /// cache remembers is accepted without one. Otherwise the check to run in the executor,
    /// an unknown user's against no credential (the same cost, the same verdict).
    pub fn auth_begin(
        &mut self,
        proto: &'static str,
        request: &AuthRequest,
        ip: IpAddr,
        now: Instant,
    ) -> AuthStart {
        let key = ClientKey::from(ip);
        let running = self.checks_in_flight.get(&key).copied().unwrap_or(0);
        let (verdict, why) = match self.throttle.admit(ip, now, running) {
            Admission::Check { now_limited } => {
                if now_limited {
                    let n = self.throttle.attempt_budget();
                    warn!(
                        "throttle: {proto}: {key} made {n} logins; its logins are refused (after auth_failure_delay, without a check) until the count drains ({n} a minute; login_attempts_per_client)"
                    );
                }
                (None, "")
            }
            Admission::Refused(Refusal::Failures) => {
                (Some(AuthVerdict::Throttled), "too many recent failures")
            }
            Admission::Refused(Refusal::Attempts) => {
                (Some(AuthVerdict::TooManyAttempts), "too many recent logins")
            }
        };
        if let Some(verdict) = verdict {
            // No check, no hash and no cache lookup: the refusal costs the same for a right
            // and a wrong password, and the session answers it only after the failure delay.
            events::log_flood(
                &format!("auth refused: {proto}"),
                ip,
                &format!(
                    "auth refused: {proto} {} from [{ip}] user=<{}>: {why}",
                    request.mechanism,
                    events::clean(&request.user)
                ),
            );
            return AuthStart::Done(verdict);
        }
        self.directory_fresh();
        let found = self.directory.credential(&request.user);
        let name = found.map(|(name, _)| name.to_string());
        let credential: Option<Credential> = found.map(|(_, c)| c.clone());
        let cache_key = match (&name, &credential) {
            (Some(n), Some(c)) => self.auth_cache.key_for(n, c, &request.password),
            _ => None,
        };
        if let (Some(k), Some(n)) = (&cache_key, &name) {
            if self.auth_cache.hit(k, now) {
                // A client looping logins (e.g. against a mailbox in use) would write one of
                // these per attempt: summarised per client in a storm (`daemon::flood`).
                info!(
                    target: &flood::target(&format!("{proto} password accepted"), ip),
                    "{proto}: password accepted for {n} from {ip} (a check made in the last {}s)",
                    limits::AUTH_CACHE_TTL.as_secs()
                );
                return AuthStart::Done(AuthVerdict::Accepted(n.clone()));
            }
        }
        *self.checks_in_flight.entry(key).or_insert(0) += 1;
        debug!(
            "{proto}: checking the password of {:?} from {ip}",
            request.user
        );
        AuthStart::Check(
            PendingCheck {
                proto,
                mechanism: request.mechanism,
                user: request.user.clone(),
                name,
                cache_key,
                client: key,
            },
            DiskOp::VerifyPassword {
                hash: credential,
                password: request.password.clone(),
            },
        )
    }

    /// A login, second half: the executor's answer to the check `auth_begin` asked for
    /// (`Verified`, or an errno when it could not run: a temporary failure, not counted).
    pub fn auth_finish(
        &mut self,
        pending: PendingCheck,
        result: Result<Outcome, Errno>,
        ip: IpAddr,
        now: Instant,
    ) -> AuthVerdict {
        if let Some(n) = self.checks_in_flight.get_mut(&pending.client) {
            *n -= 1;
            if *n == 0 {
                self.checks_in_flight.remove(&pending.client);
            }
        }
        let proto = pending.proto;
        let accepted = match result {
            Ok(Outcome::Verified(ok)) => ok,
            Ok(other) => {
                warn!("{proto}: a password check answered {other:?}; refusing the login");
                false
            }
            Err(e) if e.0 == libc::EAGAIN => {
                info!(
                    "{proto}: login as {:?} from {ip} not checked: too many checks in flight",
                    pending.user
                );
                return AuthVerdict::Unavailable;
            }
            Err(e) => {
                if !self.check_failure_logged {
                    self.check_failure_logged = true;
                    warn!(
                        "{proto}: passwords cannot be checked ({e}); logins get [SYS/TEMP] until the helper process is back (restart postling)"
                    );
                }
                info!(
                    "{proto}: login as {:?} from {ip} not checked: {e}",
                    pending.user
                );
                return AuthVerdict::Unavailable;
            }
        };
        match (accepted, pending.name) {
            (true, Some(name)) => {
                // "Accepted", not "logged in": the mailbox may still be in use or unavailable.
                info!(
                    target: &flood::target(&format!("{proto} password accepted"), ip),
                    "{proto}: password accepted for {name} from {ip}"
                );
                if let Some(k) = pending.cache_key {
                    self.drop_cache_if_users_changed();
                    self.auth_cache.insert(k, now);
                }
                AuthVerdict::Accepted(name)
            }
            _ => {
                events::log_auth_failed(proto, pending.mechanism, ip, &pending.user);
                self.auth_cache.forget_user(&pending.user);
                if self.throttle.failed(ip, now) {
                    warn!(
                        "throttle: {proto}: {} had {} failed logins; its logins are refused until the count drains (one more try each {}s)",
                        pending.client,
                        limits::AUTH_THROTTLE_FAILURES,
                        limits::AUTH_THROTTLE_INTERVAL.as_secs()
                    );
                }
                AuthVerdict::Rejected
            }
        }
    }

    /// The users file was re-read since the cache was last valid: forget every success.
    fn drop_cache_if_users_changed(&mut self) {
        let reloads = self.directory.users_reloads();
        if reloads != self.users_reloads_seen {
            self.users_reloads_seen = reloads;
            self.auth_cache.clear();
        }
    }

    /// Successful checks the login cache holds (for tests and logs).
    pub fn auth_cache_len(&self) -> usize {
        self.auth_cache.len()
    }

    /// SIGHUP: re-read users and aliases, pick up changed paths and delivery settings. A
    /// directory that fails to load keeps the previous tables.
    pub fn reload(&mut self, config: &Config) {
        let settings = config.directory_settings();
        if &settings != self.directory.settings() {
            match Directory::load(settings) {
                Ok((directory, warnings)) => {
                    for w in warnings {
                        warn!("{w}");
                    }
                    self.directory = directory;
                    self.users_reloads_seen = self.directory.users_reloads();
                    self.auth_cache.clear();
                    if let Some(w) = self.directory_watch.as_mut() {
                        let s = self.directory.settings();
                        w.set_files(&[&s.users_file, &s.aliases_file]);
                    }
                }
                Err(errors) => {
                    for e in errors {
                        warn!("{e}");
                    }
                    warn!("keeping the previous users and aliases");
                }
            }
        } else {
            self.directory.refresh();
            self.drop_cache_if_users_changed();
        }
        self.engine.set_policy(policy(config));
        self.throttle
            .set_attempt_budget(config.login_attempts_per_client);
        if let Some(o) = self.outbound.as_mut() {
            o.set_settings(crate::outbound::OutboundSettings::from_config(config));
        }
        self.spool.set_sync_mode(config.fsync);
        self.engine.set_sync_mode(config.fsync);
        if config.mailbox_dir != self.mailbox_root || config.hostname != self.hostname {
            self.engine.set_maildirs(maildirs(config));
            self.hostname = config.hostname.clone();
        }
        self.mailbox_root = config.mailbox_dir.clone();
        if let Some(p) = self.pickup.as_mut() {
            p.set_settings(PickupSettings::from_config(config));
        }
        if config.disk_io != self.disk_io {
            warn!(
                "disk_io changed to {}; the change takes effect at the next restart (still using {})",
                format!("{:?}", config.disk_io).to_lowercase(),
                format!("{:?}", self.disk_io).to_lowercase()
            );
        }
        if config.spool_dir != self.spool_dir {
            warn!(
                "spool_dir changed to {}; the change takes effect at the next restart (still using {})",
                config.spool_dir.display(),
                self.spool_dir.display()
            );
        }
    }

    /// The connection in `slot` is going away: drop its unfinished message (removing its temp
    /// file) and release its mailbox lock without deleting anything.
    pub fn session_ended(&mut self, slot: usize, _session: &mut crate::conn::Session) {
        if let Some(inc) = self.incoming.remove(&slot) {
            self.spool.abort(inc);
        }
        self.incoming_env.remove(&slot);
        // A commit still in progress goes on, but its outcome must not reach the next
        // connection that is given this slot.
        if let Some(ticket) = self.slot_ticket.remove(&slot) {
            self.tickets.remove(&ticket);
        }
        self.mailboxes.remove(&slot);
        self.mailbox_jobs.detach(slot);
    }

    /// A POP session's `Next::AwaitMailbox`: starts the job it asks for (opening: the lock is
    /// taken now; the snapshot is read in the executor), for connection `conn` in `slot`.
    /// Its result comes from `mailbox_finished`, in this turn or a later one.
    pub fn mailbox_begin(&mut self, slot: usize, conn: u64, request: Option<MailboxRequest>) {
        let job = match request {
            Some(MailboxRequest::Open(user)) => {
                self.mailboxes.remove(&slot);
                Job::open(&self.mailbox_root, &user)
            }
            Some(MailboxRequest::Update(deleted)) => match self.mailboxes.remove(&slot) {
                Some(m) => Ok(Job::update(m, &deleted)),
                None => {
                    let why = MailboxError::Temporary("no mailbox open".into());
                    let result = JobResult::Updated(Err(why));
                    return self.mailbox_jobs.answer(slot, conn, result);
                }
            },
            // The mailbox goes with the job and comes back when the read is done.
            Some(MailboxRequest::Warm) => match self.mailboxes.remove(&slot) {
                Some(m) => Ok(Job::warm(m)),
                None => {
                    return self
                        .mailbox_jobs
                        .answer(slot, conn, JobResult::Warmed(None));
                }
            },
            // The same: the count runs on the mailbox's own directory.
            Some(MailboxRequest::Size(index)) => match self.mailboxes.remove(&slot) {
                Some(m) => Ok(Job::size(m, index)),
                None => {
                    let why = MailboxError::Temporary("no mailbox open".into());
                    let result = JobResult::Sized(None, Err(why));
                    return self.mailbox_jobs.answer(slot, conn, result);
                }
            },
            None => Err(MailboxError::Temporary(
                "a session awaited mailbox work it did not ask for".into(),
            )),
        };
        self.mailbox_jobs.start(slot, conn, job);
    }

    /// Mailbox jobs are running or have results to hand out.
    pub fn mailbox_busy(&self) -> bool {
        self.mailbox_jobs.busy()
    }

    /// An executor completion whose tag `deliver::local::owns`.
    pub fn delivery_completion(&mut self, c: ExecCompletion) {
        self.engine.complete(c);
    }

    /// An executor completion whose tag `mailbox::job::owns`.
    pub fn mailbox_completion(&mut self, c: ExecCompletion) {
        self.mailbox_jobs.complete(c);
    }

    /// Once a turn: submits the mailbox jobs' next operations (a bounded number) and returns
    /// the jobs that ended, as (slot, connection id, what to resume the session with). An
    /// opened mailbox is kept for the slot (`message_read`) from here on.
    pub fn mailbox_turn(&mut self, exec: Option<&mut Executor>) -> Vec<(usize, u64, MailboxDone)> {
        self.mailbox_jobs.pump(exec);
        let mut out = Vec::new();
        for f in self.mailbox_jobs.take_finished() {
            // (The session logs a failure, with its protocol's name.)
            let (mailbox, done) = f.result.split();
            if let Some(m) = mailbox {
                self.mailboxes.insert(f.slot, m);
            }
            out.push((f.slot, f.conn, done));
        }
        out
    }

    /// Are commits in progress?
    pub fn commit_pending(&self) -> bool {
        self.spool.commit_pending()
    }

    /// Can the commits move on without a completion from the executor (the reactor must
    /// come back without waiting)?
    pub fn commit_runnable(&self) -> bool {
        self.spool.commit_runnable()
    }

    /// Once a turn: the spool makes files ahead in `exec` while messages arrive
    /// (`Spool::prepare_files`).
    pub fn spool_prepare(&mut self, exec: Option<&mut Executor>) {
        crate::turnstat::timed("spool.prepare", || self.spool.prepare_files(exec));
    }

    /// An executor completion whose tag `spool::prepare_owns`.
    pub fn spool_prepared(&mut self, c: ExecCompletion, exec: Option<&mut Executor>) {
        self.spool.prepared(c, exec);
    }

    /// An executor completion whose tag `spool::commit_owns`.
    pub fn commit_completion(&mut self, c: ExecCompletion) {
        self.spool.commit_completion(c);
    }

    /// Moves the group commit on (in `exec`, or by steps on this thread until `deadline`
    /// without one: see `spool::commit`); returns the outcome for each connection slot
    /// whose message finished, and schedules every committed message for delivery (as fresh
    /// mail, which lingers for a batch). A commit whose connection went away meanwhile is
    /// still delivered, but reported to no one.
    pub fn commit_work(
        &mut self,
        deadline: Instant,
        exec: Option<&mut Executor>,
    ) -> Vec<(usize, Result<QueueId, SpoolError>)> {
        let mut out = Vec::new();
        let committed = self.spool.commit_work(deadline, exec);
        let at = Instant::now();
        let wall = SystemTime::now();
        for (ticket, r) in committed {
            if crate::deliver::engine::owns_ticket(ticket) {
                // A bounce or delay warning: its entry's settling goes on.
                let mut store = SpoolStore::with_group_commit(&mut self.spool);
                self.engine
                    .notice_committed(ticket, r, &mut store, at, wall);
                continue;
            }
            let line = self.queued_lines.remove(&ticket);
            if let Ok(id) = &r {
                if let Some(line) = line {
                    events::log(&line);
                }
                self.engine.schedule.due_fresh(id.clone(), at);
            }
            if let Some(slot) = self.tickets.remove(&ticket) {
                self.slot_ticket.remove(&slot);
                out.push((slot, r));
            }
        }
        out
    }

    /// Delivery steps until `deadline` (at least one when any is due), so a backlog never
    /// starves the clients: batches of up to `limits::DELIVERIES_PER_TURN` entries (fresh
    /// mail waits up to `limits::DELIVERY_LINGER` for a whole batch).
    /// The Maildir commit of a batch runs in `exec` (`Engine::work`; its completions come back
    /// through `delivery_completion`).
    pub fn deliver(
        &mut self,
        now: Instant,
        wall: SystemTime,
        deadline: Instant,
        exec: Option<&mut Executor>,
    ) {
        if !self.engine.has_work(now) {
            if !self.spool.commit_pending() {
                // Nothing due and nothing being committed: give back the spool files kept
                // while mail was flowing, a few per turn.
                self.spool.trim_free(limits::SPOOL_TRIM_PER_TURN);
            }
            return;
        }
        self.directory_fresh();
        let mut store = SpoolStore::with_group_commit(&mut self.spool);
        self.engine.work(
            limits::DELIVERIES_PER_TURN,
            &mut store,
            &self.directory,
            now,
            wall,
            deadline,
            exec,
        );
        self.shuttle_remote(now, wall);
    }

    /// Attaches remote delivery (its sockets go into the reactor's poll through `registry`).
    pub fn attach_outbound(&mut self, outbound: crate::outbound::Outbound) {
        self.outbound = Some(outbound);
    }

    /// Moves work between the engine and remote delivery: new remote parts out, cancelled
    /// ones stopped, finished ones settled (durably, by the engine).
    fn shuttle_remote(&mut self, now: Instant, wall: SystemTime) {
        for id in self.engine.take_cancelled() {
            if let Some(o) = self.outbound.as_mut() {
                o.cancel(&id);
            }
        }
        for mut job in self.engine.take_remote_jobs() {
            let located = self.spool.read_entry(&job.id).and_then(|e| {
                let (size, eight_bit) = e.received_shape()?;
                if e.is_maildir_form() && eight_bit {
                    // The Maildir form keeps no BODY=: 8-bit data goes out as 8BITMIME.
                    job.body = crate::mail::BodyType::EightBitMime;
                }
                Ok(crate::outbound::DataLocation {
                    path: e.data_path().to_path_buf(),
                    offset: e.data_offset(),
                    len: e.data_len(),
                    lf: e.is_maildir_form(),
                    size,
                })
            });
            match (self.outbound.as_mut(), located) {
                (Some(o), Ok(data)) => o.submit(crate::outbound::Job { remote: job, data }, now),
                (o, located) => {
                    let why = match (o, located) {
                        (None, _) => "4.3.0 remote delivery is not running".to_string(),
                        (_, Err(e)) => format!("4.3.0 cannot read the queue entry: {e}"),
                        _ => "4.3.0 remote delivery failed".to_string(),
                    };
                    let outcomes = (0..job.recipients.len())
                        .map(|tag| RemoteOutcome {
                            tag,
                            outcome: crate::deliver::Outcome::Temporary(why.clone()),
                            relay: "none".to_string(),
                            note: None,
                        })
                        .collect();
                    let mut store = SpoolStore::with_group_commit(&mut self.spool);
                    self.engine
                        .remote_done(&job.id, outcomes, &mut store, now, wall);
                }
            }
        }
        if let Some(o) = self.outbound.as_mut() {
            self.remote_results.extend(o.take_results());
        }
        self.settle_remote_results(now, wall, Instant::now() + limits::WORK_SLICE);
    }

    /// Settles remote outcomes (reading each entry's state, recording the new one) until
    /// `until` has passed, one at least: a refusing destination answers for all its queued
    /// messages at once, and settling them all in one turn took milliseconds. The rest wait
    /// for the next turn (`delivery_timeout` is zero meanwhile), or for shutdown.
    fn settle_remote_results(&mut self, now: Instant, wall: SystemTime, until: Instant) {
        if self.remote_results.is_empty() {
            return;
        }
        let mut store = SpoolStore::with_group_commit(&mut self.spool);
        while let Some((id, outcomes)) = self.remote_results.pop_front() {
            self.engine
                .remote_done(&id, outcomes, &mut store, now, wall);
            if Instant::now() >= until {
                break;
            }
        }
    }

    /// A socket of remote delivery is ready.
    pub fn outbound_ready(
        &mut self,
        token: mio::Token,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        if let Some(o) = self.outbound.as_mut() {
            o.ready(token, readable, writable, now);
        }
        self.shuttle_remote(now, SystemTime::now());
    }

    /// Remote delivery's deadlines and leftover work.
    pub fn outbound_turn(&mut self, now: Instant) {
        if let Some(o) = self.outbound.as_mut() {
            o.turn(now);
        }
        self.shuttle_remote(now, SystemTime::now());
    }

    /// When remote delivery needs a turn (None: only on its sockets' events).
    pub fn outbound_deadline(&self, now: Instant) -> Option<Instant> {
        self.outbound.as_ref().and_then(|o| o.deadline(now))
    }

    /// Shutdown: finishes the commits and the delivery batch in progress, so nothing is left
    /// half done (a delivered message whose queue entry was not yet removed would be
    /// delivered again after the restart).
    pub fn finish_in_flight(&mut self, exec: Option<&mut Executor>) {
        let mut exec = exec;
        let committed = self.spool.commit_flush_with(exec.as_deref_mut());
        // From here every notice is committed before `enqueue` returns.
        let mut store = SpoolStore::new(&mut self.spool);
        let (now, wall) = (Instant::now(), SystemTime::now());
        // Notices that were in the group commit: their entries' settling goes on.
        for (ticket, r) in committed {
            if crate::deliver::engine::owns_ticket(ticket) {
                self.engine
                    .notice_committed(ticket, r, &mut store, now, wall);
            }
        }
        // Remote outcomes not yet settled: what a remote server took must be recorded.
        while let Some((id, outcomes)) = self.remote_results.pop_front() {
            self.engine
                .remote_done(&id, outcomes, &mut store, now, wall);
        }
        self.engine
            .finish_batch(&mut store, &self.directory, SystemTime::now());
        self.spool.finish_removals(exec);
    }

    /// How long the reactor may sleep as far as delivery (and the mailbox jobs, which may have
    /// operations to submit) are concerned (None: forever).
    pub fn delivery_timeout(&self, now: Instant) -> Option<Duration> {
        if self.engine.has_work(now)
            || self.spool.free_excess()
            || self.spool.states_submittable()
            || !self.remote_results.is_empty()
            || self.mailbox_jobs.runnable()
        {
            return Some(Duration::ZERO);
        }
        self.engine.timeout(now)
    }

    /// Nothing to commit, deliver or trim (the reactor then hands memory back).
    pub fn at_rest(&self, now: Instant) -> bool {
        self.outbound.as_ref().is_none_or(|o| o.idle())
            && self.engine.parked_len() == 0
            && self.engine.notices_len() == 0
            && !self.spool.commit_pending()
            && !self.spool.preparing()
            && !self.pickup_pending()
            && !self.engine.has_work(now)
            && !self.engine.busy()
            && !self.engine.schedule.has_ready()
            && !self.spool.free_excess()
    }

    /// Gives back table capacity a burst grew.
    /// Drained per-client counts are forgotten too (those still counting are kept).
    pub fn release_memory(&mut self, now: Instant) {
        if let Some(o) = self.outbound.as_mut() {
            o.release_memory();
        }
        self.throttle.forget_drained(now);
        self.auth_cache.shrink(now);
        self.checks_in_flight.shrink_to_fit();
        self.rcpt_budget.forget_drained(now);
        self.spool.release_memory();
        self.engine.schedule.shrink();
        self.remote_results.shrink_to_fit();
        self.incoming.shrink_to_fit();
        self.incoming_env.shrink_to_fit();
        self.queued_lines.shrink_to_fit();
        self.mailboxes.shrink_to_fit();
        self.tickets.shrink_to_fit();
        self.slot_ticket.shrink_to_fit();
    }

    /// The spool directory the control socket lives in.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    /// Is a delivery batch in progress (queue commands wait for its end)?
    pub fn delivery_busy(&self) -> bool {
        self.engine.busy()
    }

    /// Carries out the next slice of a `postling queue` command (between delivery batches,
    /// until `deadline`), appending its reply lines to `out`; true when it is done.
    pub fn control_step(
        &mut self,
        work: &mut crate::control::Progress,
        deadline: Instant,
        out: &mut Vec<crate::control::Line>,
    ) -> bool {
        let done = work.step(
            &mut self.spool,
            &mut self.engine,
            true,
            SystemTime::now(),
            deadline,
            out,
        );
        // Entries removed while out with remote delivery: stop that now, before their spool
        // files can be reused.
        self.shuttle_remote(Instant::now(), SystemTime::now());
        done
    }

    /// SIGUSR2: every queued message is due now.
    pub fn queue_run_now(&mut self) {
        info!(
            "queue run requested: {} message(s) due now",
            self.engine.schedule.len()
        );
        self.engine.schedule.flush();
        if let Some(p) = self.pickup.as_mut() {
            p.rescan();
        }
    }

    /// The inotify descriptor of `maildrop/`, for the poll.
    pub fn pickup_fd(&self) -> Option<std::os::fd::RawFd> {
        self.pickup.as_ref().map(Pickup::fd)
    }

    /// The inotify descriptor is readable: queue the names that arrived.
    pub fn pickup_readable(&mut self) {
        if let Some(p) = self.pickup.as_mut() {
            p.readable();
        }
    }

    /// Drop files wait to be picked up (the reactor must come back without waiting).
    pub fn pickup_pending(&self) -> bool {
        self.pickup.as_ref().is_some_and(Pickup::has_work)
    }

    /// Picks up waiting drop files until `deadline` (at least one, at most
    /// `limits::PICKUPS_PER_TURN`): each is checked, queued (committed on its own, like a
    /// bounce), then its drop file removed; an invalid one goes to `maildrop/bad/`.
    pub fn pickup_work(&mut self, deadline: Instant) {
        let Some(mut p) = self.pickup.take() else {
            return;
        };
        for _ in 0..limits::PICKUPS_PER_TURN {
            let Some(name) = p.next_name() else {
                break;
            };
            match p.load(&name) {
                Loaded::Skip => {}
                Loaded::Later(why) => warn!(
                    "pickup: maildrop/{name}: {why}; left there for the next start or queue run (sendmail -q)"
                ),
                Loaded::Invalid(why) => p.reject(&name, &why),
                Loaded::Accepted(a) => self.queue_pickup(&mut p, &name, a),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.pickup = Some(p);
    }

    fn queue_pickup(&mut self, p: &mut Pickup, name: &str, a: crate::pickup::Accepted) {
        let later = "left in maildrop/ for the next start or queue run (sendmail -q)";
        let mut inc = match self.spool.begin(&a.envelope) {
            Ok(inc) => inc,
            Err(e) => {
                warn!("pickup: maildrop/{name} not queued: {e:?}; {later}");
                return;
            }
        };
        let date = crate::date::rfc5322_date(SystemTime::now());
        let received = crate::pickup::received_header(
            a.user.as_deref(),
            a.uid,
            &self.hostname,
            &inc.id().0,
            &date,
        );
        self.spool.append(&mut inc, received.as_bytes());
        self.spool.append(&mut inc, &a.data);
        let id = match self.spool.commit_one(inc) {
            Ok(id) => id,
            Err(e) => {
                warn!("pickup: maildrop/{name} not queued: {e:?}; {later}");
                return;
            }
        };
        events::log(&events::pickup(
            &id.0,
            a.uid,
            a.user.as_deref(),
            &a.envelope.sender,
            name,
        ));
        events::log(&events::queued(
            &id.0,
            &a.envelope.sender,
            (received.len() + a.data.len()) as u64,
            a.envelope.recipients.len(),
        ));
        if self.abort_after_pickup_commit {
            // SAFETY: kill with our own pid: the test's kill -9 at exactly this point.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if let Err(e) = p.remove(name) {
            // The entry records its drop file: the next start removes the file instead of
            // queuing it again.
            warn!("pickup: {id}: cannot remove maildrop/{name}: {e}");
        }
        self.engine.schedule.due_fresh(id, Instant::now());
    }
}

/// Prepares `maildrop/` and its watch, and sorts what waits there: a drop file whose name a
/// queue entry records was queued before a crash cut its removal short, so it is only removed;
/// every other one is picked up. Failure disables local submission (with a warning), not the
/// server.
fn open_pickup(
    config: &Config,
    spool: &Spool,
    queued: &[QueueId],
    warnings: &mut Vec<String>,
) -> Option<Pickup> {
    let (mut p, names) = match Pickup::open(&config.spool_dir, PickupSettings::from_config(config))
    {
        Ok(x) => x,
        Err(e) => {
            warnings.push(format!(
                "local submission (sendmail) disabled: cannot prepare {}/maildrop: {e}",
                config.spool_dir.display()
            ));
            return None;
        }
    };
    let already = if names.is_empty() {
        std::collections::HashSet::new()
    } else {
        spool.pickup_names(queued)
    };
    for name in names {
        if already.contains(&name) {
            match p.remove(&name) {
                Ok(()) => info!(
                    "pickup: maildrop/{name} was already queued (a stop cut its removal short); removed it"
                ),
                Err(e) => warn!("pickup: cannot remove maildrop/{name}, already queued: {e}"),
            }
        } else {
            p.offer(name);
        }
    }
    if p.has_work() {
        info!("pickup: drop files waiting in maildrop/; queuing them now");
    }
    Some(p)
}

/// What `Services::auth_begin` decided.
pub enum AuthStart {
    /// No check needed: the verdict.
    Done(AuthVerdict),
    /// Submit this operation; give its completion and this to `auth_finish`.
    Check(PendingCheck, DiskOp),
}

/// A password check in the executor's hands: what `auth_finish` needs (never the password).
#[derive(Debug)]
pub struct PendingCheck {
    proto: &'static str,
    /// How the password came (`USER`, `PLAIN`, …), for the log.
    mechanism: &'static str,
    /// The name as the client sent it (for the log and the cache on failure).
    user: String,
    /// The canonical name, if the user exists.
    name: Option<String>,
    cache_key: Option<CacheKey>,
    client: ClientKey,
}

pub struct SmtpHostFor<'a> {
    services: &'a mut Services,
    slot: usize,
    peer: SocketAddr,
    now: Instant,
}

impl SmtpHost for SmtpHostFor<'_> {
    fn client_over_rcpt_budget(&mut self) -> bool {
        self.services.rcpt_budget.over(self.peer.ip(), self.now)
    }

    fn rcpt_refused(&mut self) {
        let ip = self.peer.ip();
        if self.services.rcpt_budget.refused(ip, self.now) {
            warn!(
                "throttle: smtp: {} had {} recipients refused; its sessions get 421 until the count drains (one more each {}s)",
                crate::throttle::ClientKey::from(ip),
                limits::SMTP_REJECTED_RCPTS_PER_CLIENT,
                limits::SMTP_REJECTED_RCPTS_INTERVAL.as_secs()
            );
        }
    }

    fn rcpt_verdict(&mut self, rcpt: &str) -> RcptVerdict {
        self.services.directory_fresh().rcpt_verdict(rcpt)
    }

    fn message_begin(&mut self, envelope: &Envelope) -> Result<QueueId, SpoolError> {
        if let Some(old) = self.services.incoming.remove(&self.slot) {
            self.services.spool.abort(old);
        }
        self.services.incoming_env.remove(&self.slot);
        // One recipient that resolves to one local Maildir: the spool writes the file as
        // that Maildir's copy, and delivery links it there (doc/spool.md, "link-1").
        let maildir_form = match envelope.recipients.as_slice() {
            [rcpt] => matches!(
                self.services.directory_fresh().resolve(rcpt).as_deref(),
                Ok([crate::directory::Resolved::Local { .. }])
            ),
            _ => false,
        };
        let inc = self
            .services
            .spool
            .begin_with(envelope, maildir_form)
            .inspect_err(|e| {
                warn!("spool: cannot start a message: {e:?}");
            })?;
        let id = inc.id().clone();
        self.services.incoming.insert(self.slot, inc);
        self.services.incoming_env.insert(
            self.slot,
            (envelope.sender.clone(), envelope.recipients.len()),
        );
        Ok(id)
    }

    fn message_append(&mut self, bytes: &[u8]) {
        let services = &mut *self.services;
        if let Some(inc) = services.incoming.get_mut(&self.slot) {
            services.spool.append(inc, bytes);
        }
    }

    fn message_commit(&mut self) -> Result<(), SpoolError> {
        let Some(inc) = self.services.incoming.remove(&self.slot) else {
            return Err(SpoolError::Failed("no message in progress".into()));
        };
        let id = inc.id().clone();
        let services = &mut *self.services;
        let (sender, nrcpt) = services.incoming_env.remove(&self.slot).unwrap_or_default();
        let line = events::queued(&id.0, &sender, inc.data_size(), nrcpt);
        services.next_ticket = services.next_ticket.wrapping_add(1);
        let ticket = services.next_ticket;
        services
            .spool
            .commit_enqueue(inc, ticket)
            .inspect_err(|e| warn!("spool: {id} not committed: {e:?}"))?;
        services.tickets.insert(ticket, self.slot);
        services.slot_ticket.insert(self.slot, ticket);
        services.queued_lines.insert(ticket, line);
        Ok(())
    }

    fn message_abort(&mut self) {
        self.services.incoming_env.remove(&self.slot);
        if let Some(inc) = self.services.incoming.remove(&self.slot) {
            self.services.spool.abort(inc);
        }
    }

    fn sender_owned_by(&mut self, user: &str, sender: &str) -> bool {
        self.services
            .directory_fresh()
            .sender_owned_by(user, sender)
    }

    fn random_token(&mut self) -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: getrandom into a local buffer of its stated length.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
        if n != 8 {
            // Unique enough with the queue id beside it: the time's nanoseconds.
            return SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
        }
        u64::from_ne_bytes(buf)
    }
}

pub struct PopHostFor<'a> {
    services: &'a mut Services,
    slot: usize,
}

impl PopHost for PopHostFor<'_> {
    fn message_read(
        &mut self,
        index: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<usize> {
        match self.services.mailboxes.get_mut(&self.slot) {
            Some(m) => m.read(index, offset, buf),
            None => Err(std::io::Error::other("no mailbox open")),
        }
    }

    fn mailbox_release(&mut self) {
        self.services.mailboxes.remove(&self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Services on a spool of `n` messages for a remote address, their remote parts handed
    /// out (as remote delivery takes them) and back with `outcome` for each.
    fn with_remote_outcomes(
        n: usize,
        outcome: crate::deliver::Outcome,
    ) -> (tempfile::TempDir, Services, Vec<QueueId>) {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(&d.path().join("postling.conf"));
        config.spool_dir = d.path().join("spool");
        config.mailbox_dir = d.path().join("mail");
        config.users_file = d.path().join("users");
        config.aliases_file = d.path().join("aliases");
        std::fs::write(&config.users_file, "").unwrap();
        std::fs::write(&config.aliases_file, "").unwrap();
        std::fs::create_dir_all(&config.spool_dir).unwrap();
        let ids: Vec<QueueId> = {
            let (mut spool, _) = Spool::open(&config.spool_dir).unwrap();
            (0..n)
                .map(|_| {
                    let mut inc = spool
                        .begin(&Envelope {
                            sender: "s@example.org".into(),
                            recipients: vec!["far@elsewhere.test".into()],
                            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                            helo: "localhost".into(),
                            arrival: SystemTime::now(),
                            smtputf8: false,
                            body: crate::mail::BodyType::SevenBit,
                            pickup: None,
                        })
                        .unwrap();
                    inc.append(b"Subject: x\r\n\r\nbody\r\n");
                    spool.commit_one(inc).unwrap()
                })
                .collect()
        };
        let (mut s, _) = Services::start(&config).unwrap();
        let now = Instant::now();
        let mut store = SpoolStore::with_group_commit(&mut s.spool);
        let far = now + Duration::from_secs(30);
        s.engine.work(
            100,
            &mut store,
            &s.directory,
            now,
            SystemTime::now(),
            far,
            None,
        );
        let jobs = s.engine.take_remote_jobs();
        assert_eq!(jobs.len(), n);
        for job in jobs {
            let back = vec![RemoteOutcome {
                tag: 0,
                outcome: outcome.clone(),
                relay: "sink.test[127.0.0.1]:25".into(),
                note: None,
            }];
            s.remote_results.push_back((job.id, back));
        }
        assert_eq!(s.engine.parked_len(), n);
        (d, s, ids)
    }

    /// Remote outcomes are settled one slice of a turn at a time: past its deadline a turn
    /// settles one, and the reactor comes back at once while any wait.
    #[test]
    fn remote_outcomes_are_settled_a_slice_at_a_time() {
        let (_d, mut s, ids) = with_remote_outcomes(3, crate::deliver::Outcome::Delivered);
        let past = Instant::now();
        for left in (0..3).rev() {
            assert_eq!(s.delivery_timeout(Instant::now()), Some(Duration::ZERO));
            s.settle_remote_results(Instant::now(), SystemTime::now(), past);
            assert_eq!(s.remote_results.len(), left);
            assert_eq!(s.engine.parked_len(), left);
        }
        // With time left, all at once.
        let (_d2, mut s2, _) = with_remote_outcomes(4, crate::deliver::Outcome::Delivered);
        let later = Instant::now() + Duration::from_secs(30);
        s2.settle_remote_results(Instant::now(), SystemTime::now(), later);
        assert!(s2.remote_results.is_empty());
        assert_eq!(s2.engine.parked_len(), 0);
        s.finish_in_flight(None);
        for id in &ids {
            assert!(!s.spool.contains(id), "{id}: delivered, removed");
        }
    }

    /// Shutdown settles every remote outcome still waiting: what a remote server took is not
    /// sent again after the restart, and a deferral is recorded.
    #[test]
    fn shutdown_settles_the_remote_outcomes_left() {
        let (_d, mut s, ids) = with_remote_outcomes(3, crate::deliver::Outcome::Delivered);
        s.settle_remote_results(Instant::now(), SystemTime::now(), Instant::now());
        assert_eq!(s.remote_results.len(), 2);
        s.finish_in_flight(None);
        assert!(s.remote_results.is_empty());
        assert_eq!(s.engine.parked_len(), 0);
        for id in &ids {
            assert!(!s.spool.contains(id), "{id}: delivered, removed");
        }
        let why = "4.4.1 sink.test: connection refused";
        let temporary = crate::deliver::Outcome::Temporary(why.into());
        let (d, mut s, ids) = with_remote_outcomes(2, temporary);
        s.finish_in_flight(None);
        assert_eq!(s.engine.parked_len(), 0);
        drop(s);
        // What a restart finds: both still queued, each with its deferral recorded.
        let (mut spool, _) = Spool::open(&d.path().join("spool")).unwrap();
        for id in &ids {
            let entry = spool.read_entry(id).unwrap();
            assert_eq!(entry.attempts, 1, "{id}");
            let why = entry.last_error.unwrap_or_default();
            assert!(why.contains("connection refused"), "{id}: {why}");
        }
    }

    #[test]
    fn start_up_removes_a_drop_file_already_queued_and_picks_up_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(&d.path().join("postling.conf"));
        config.spool_dir = d.path().join("spool");
        let (mut spool, _) = Spool::open(&config.spool_dir).unwrap();
        let queued_name = "0123456789abcdef0123456789abcdef";
        let waiting_name = "fedcba9876543210fedcba9876543210";
        let mut inc = spool
            .begin(&Envelope {
                sender: String::new(),
                recipients: vec!["a@example.test".into()],
                client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
                helo: "localhost".into(),
                arrival: SystemTime::now(),
                smtputf8: false,
                body: crate::mail::BodyType::SevenBit,
                pickup: Some(queued_name.into()),
            })
            .unwrap();
        inc.append(b"From: x\r\n\r\n");
        let id = spool.commit_one(inc).unwrap();
        let drop_dir = config.spool_dir.join("maildrop");
        std::fs::create_dir(&drop_dir).unwrap();
        std::fs::write(drop_dir.join(queued_name), "queued before the crash").unwrap();
        std::fs::write(drop_dir.join(waiting_name), "still to pick up").unwrap();
        let mut warnings = Vec::new();
        let mut p = open_pickup(&config, &spool, &[id], &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(
            !drop_dir.join(queued_name).exists(),
            "already queued: removed"
        );
        assert!(drop_dir.join(waiting_name).exists());
        assert_eq!(p.next_name().as_deref(), Some(waiting_name));
        assert_eq!(p.next_name(), None);
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&drop_dir), 0o1733);
        assert_eq!(mode(&drop_dir.join("bad")), 0o700);
        assert_eq!(mode(&config.spool_dir) & 0o011, 0o011, "searchable");
    }
}
