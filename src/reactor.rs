//! The reactor: one `mio::Poll` in one thread owning every listener, connection and deadline.
//!
//! Each turn waits for readiness with the nearest deadline as the timeout (none pending: it
//! blocks indefinitely, so an idle server makes no wake-ups), drives the connections that
//! became ready, finishes the turn's group commit, and fires due deadlines. Connections are
//! edge-triggered and registered once for both directions; `Conn::can_read`/`can_write`
//! remember whether the socket may have more, so interest is derived from state, never polled.
//! The control socket (`postling queue`, see `control`) is one more source in the same poll;
//! its commands run between delivery batches.
//!
//! The disk executor (`exec`, attached at start with `attach_executor`) is one more source in
//! the poll (`EXEC_TOKEN`). Password checks go there (see `begin_check` and `finish_checks`):
//! a POP session returns `Next::AwaitAuth`, the reactor asks the services (throttle, login
//! cache) and, when a check is needed, submits `VerifyPassword` tagged with the connection's
//! id (its generation: unique for the life of the process); the completion is matched back to
//! the slot, and dropped if that slot now holds another connection or no longer waits.
//! Mailbox work (`Next::AwaitMailbox`: opening a Maildir, QUIT's deletions) goes there too,
//! through the services (`Services::mailbox_begin`, `mailbox_turn`, `mailbox::job`), whose
//! operations carry tags with `mailbox::job::TAG_BIT` set; the reactor only dispatches.
//! So does the SMTP group commit (`Next::AwaitCommit`): its syncs and renames wait in the
//! executor (`spool::commit`, tags with `spool::commit_owns`); `finish_commits` moves it
//! on once a turn and resumes the sessions whose message is durable.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::buf::Pool;
use crate::config::Config;
use crate::conn::{Conn, LINGER, Phase, Proto, Session, TlsTransport};
use crate::control::{ControlServer, Progress};
use crate::daemon::flood;
use crate::deadline::Deadlines;
use crate::exec::{DiskOp, Errno, Executor, Outcome, Reject};
use crate::hosts::{AuthStart, PendingCheck, Services};
use crate::limits;
use crate::listen::Listener;
use crate::outbound::{Outbound, OutboundSettings};
use crate::proto::pop2::Pop2Session;
use crate::proto::pop3::{Pop3Session, PopSettings};
use crate::proto::smtp::{SmtpSession, SmtpSettings};
use crate::proto::{AuthVerdict, Completion, Ctx, Next, OutBuf, Step};
use crate::tls::TlsServerSession;
use crate::turnstat::{self, Part};

const SIGNAL_TOKEN: Token = Token(0);
/// The disk executor's completions. The tokens at the top of the range are each one source's:
/// `usize::MAX` the maildrop's inotify (`PICKUP_TOKEN`), `usize::MAX - 1` and `- 2` the control
/// socket's listener and client (see `control`), `usize::MAX - 3` the executor's ring,
/// `- 4` its helper process (`HELPER_TOKEN`), `- 5` the users and aliases files' watch.
const EXEC_TOKEN: Token = Token(usize::MAX - 3);
/// The helper process's socket (see `exec`), apart from the ring's eventfd so that an event
/// for one does not make the reactor read the other.
const HELPER_TOKEN: Token = Token(usize::MAX - 4);
const LISTENER_BASE: usize = 1;
const MAX_LISTENERS: usize = 1023;
const CONN_BASE: usize = LISTENER_BASE + MAX_LISTENERS;
/// The inotify descriptor watching `maildrop/` (see `pickup`): out of every other range.
const PICKUP_TOKEN: Token = Token(usize::MAX);
/// The inotify descriptor watching the users and aliases files (`directory::watch`).
const DIRECTORY_TOKEN: Token = Token(usize::MAX - 5);

/// Values the reactor needs from the config, in the form it uses them.
pub struct Settings {
    pub smtp: Rc<SmtpSettings>,
    pub pop: Rc<PopSettings>,
    pub smtp_timeout: Duration,
    pub pop3_timeout: Duration,
    pub pop_login_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The current TLS identity (None: TLS off); connections keep the one they started with.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub tls_handshake_timeout: Duration,
    /// POP logins without TLS from other than loopback (`allow_plaintext_auth`).
    pub allow_plaintext_auth: bool,
    pub max_tls_handshakes: usize,
    /// Clients that may relay through port 25 without AUTH.
    pub relay_networks: Vec<crate::config::values::Cidr>,
}

pub struct Reactor {
    poll: Poll,
    /// Slots are stable (a token names a slot) so a reload can close some and add others.
    listeners: Vec<Option<Listener>>,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    deadlines: Deadlines,
    pool: Pool,
    next_id: u64,
    /// Accepting is paused until then after the process ran out of descriptors.
    accept_paused_until: Option<Instant>,
    /// Set while accepts fail for lack of descriptors, so the condition is logged once.
    descriptors_exhausted: bool,
    signals: Signals,
    /// Set by SIGTERM/SIGINT: the time by which the process exits whatever is still open.
    stop_by: Option<Instant>,
    settings: Settings,
    services: Services,
    /// Re-read on SIGHUP.
    config_path: PathBuf,
    /// Memory was handed back since the last activity ended (see `release_memory`).
    rested: bool,
    /// The code mappings go before the next wait that follows the helper's rest.
    code_release_due: bool,
    /// `spool_dir/control.sock`, where `postling queue` sends its commands.
    control: ControlServer,
    /// The queue command being carried out, a slice a turn (delivery waits for it).
    control_work: Option<Progress>,
    /// Runs password checks (and later file operations) off the reactor; see the module doc.
    exec: Option<Executor>,
    /// Password checks in the executor, by tag (the connection's id).
    checks: HashMap<u64, Check>,
    /// TLS handshakes in flight (`Conn::handshake_in_flight`); at `max_tls_handshakes` the
    /// implicit-TLS listeners are not accepted from.
    handshakes: usize,
    /// Connections that spent their turn's I/O (`limits::IO_PER_DRIVE`) with more to do, as
    /// (slot, id): driven again next turn, after that turn's events, without an event of their
    /// own (edge-triggered readiness would raise none for bytes already there).
    again: Vec<(usize, u64)>,
    /// The buffer of the polls made within a turn (`poll_now`); None while one is handled.
    inner_events: Option<Events>,
    /// Emptied batches of copied-out events, kept for the next polls: a turn allocates none.
    spare_batches: Vec<Vec<Ready>>,
}

/// A password check in flight, and whom it is for.
struct Check {
    slot: usize,
    id: u64,
    ip: IpAddr,
    pending: PendingCheck,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            smtp: Rc::new(SmtpSettings {
                hostname: config.hostname.clone(),
                max_message_size: config.max_message_size,
                starttls: false,
                auth_failure_delay: config.auth_failure_delay,
            }),
            pop: Rc::new(PopSettings {
                hostname: config.hostname.clone(),
                auth_failure_delay: config.auth_failure_delay,
                stls: false,
            }),
            smtp_timeout: config.smtp_timeout,
            pop3_timeout: config.pop3_timeout,
            pop_login_timeout: config.pop3_login_timeout,
            max_connections: fit_descriptor_limit(config.max_connections),
            max_connections_per_ip: config.max_connections_per_ip,
            tls: None,
            tls_handshake_timeout: config.tls_handshake_timeout,
            allow_plaintext_auth: config.allow_plaintext_auth,
            max_tls_handshakes: config.max_tls_handshakes,
            relay_networks: config.relay_networks.clone(),
        }
    }
}

impl Settings {
    /// Sets the TLS identity, and with it what sessions offer (STARTTLS, STLS).
    pub fn set_tls(&mut self, tls: Option<std::sync::Arc<rustls::ServerConfig>>) {
        let mut smtp = (*self.smtp).clone();
        smtp.starttls = tls.is_some();
        self.smtp = Rc::new(smtp);
        let mut pop = (*self.pop).clone();
        pop.stls = tls.is_some();
        self.pop = Rc::new(pop);
        self.tls = tls;
    }
}

/// An evictable connection as `choose_victim` sees it.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    slot: usize,
    proto: Proto,
    /// Connections open from its client address (all of them, evictable or not).
    from_address: usize,
    /// Its last protocol progress.
    idle_since: Instant,
}

/// The slot of the connection to evict for a newcomer, among evictable ones: from the protocol
/// with the most evictable connections; within it from the client address with the most
/// connections; among those the one idle the longest.
///
/// Why this order: a crowd of idle connections on one protocol makes room for the other
/// protocols out of its own ranks, and when the crowd itself comes back it finds its own
/// protocol the largest and evicts its own members, never the other protocol's sessions.
/// Those are taken only while their protocol holds more idle connections than any other, so
/// a crowd can at most even the idle counts out, not take every slot in turn. Inside a
/// protocol the address holding the most connections loses first, so a client with a single
/// connection goes last; longest idle last of all, so a client that just connected (and is
/// about to send MAIL or log in) is the least likely victim. Sessions in a mail transaction
/// or logged in are never candidates.
fn choose_victim<I>(candidates: I) -> Option<usize>
where
    I: Iterator<Item = Candidate> + Clone,
{
    let mut idle_per_proto = [0usize; Proto::COUNT];
    for c in candidates.clone() {
        idle_per_proto[c.proto.index()] += 1;
    }
    candidates
        .max_by_key(|c| {
            (
                idle_per_proto[c.proto.index()],
                c.from_address,
                std::cmp::Reverse(c.idle_since),
            )
        })
        .map(|c| c.slot)
}

/// Every configured listen address with its protocol, whether it is implicit TLS, and whether
/// it is a submission port (`submission_listen`; `smtps_listen` too, RFC 8314 §3.3).
pub fn wanted_listeners(config: &Config) -> Vec<crate::listen::Wanted> {
    let mut v = Vec::new();
    for (proto, addrs, tls, submission) in [
        (Proto::Smtp, &config.smtp_listen, false, false),
        (Proto::Pop3, &config.pop3_listen, false, false),
        (Proto::Pop2, &config.pop2_listen, false, false),
        (Proto::Smtp, &config.smtps_listen, true, true),
        (Proto::Pop3, &config.pop3s_listen, true, false),
        (Proto::Smtp, &config.submission_listen, false, true),
    ] {
        v.extend(addrs.iter().map(|&a| (proto, a, tls, submission)));
    }
    v
}

/// Raises the soft descriptor limit as far as `max_connections` needs (and the hard limit
/// allows) and returns the number of connections that really fit, warning if it is fewer.
fn fit_descriptor_limit(max_connections: usize) -> usize {
    let wanted = (max_connections + limits::FD_RESERVE) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    if lim.rlim_cur >= wanted {
        return max_connections;
    }
    let effective = (lim.rlim_cur as usize)
        .saturating_sub(limits::FD_RESERVE)
        .max(1);
    warn!(
        "the descriptor limit (ulimit -n) is {}, enough for {effective} connections, not max_connections = {max_connections}; \
         serving at most {effective} (raise the limit, e.g. `ulimit -n {wanted}`, to allow more)",
        lim.rlim_cur
    );
    effective
}

impl Reactor {
    pub fn new(
        listeners: Vec<Listener>,
        settings: Settings,
        services: Services,
        config_path: PathBuf,
    ) -> io::Result<Reactor> {
        if listeners.len() > MAX_LISTENERS {
            return Err(io::Error::other(format!(
                "at most {MAX_LISTENERS} listen addresses are supported"
            )));
        }
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])?;
        poll.registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        let control = ControlServer::bind(services.spool_dir(), poll.registry()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the control socket in {}: {e}",
                    services.spool_dir().display()
                ),
            )
        })?;
        // The inotify descriptors: maildrop/, and the users and aliases files.
        for (fd, token) in [
            (services.pickup_fd(), PICKUP_TOKEN),
            (services.directory_watch_fd(), DIRECTORY_TOKEN),
        ] {
            if let Some(fd) = fd {
                poll.registry().register(
                    &mut mio::unix::SourceFd(&fd),
                    token,
                    Interest::READABLE,
                )?;
            }
        }
        let mut reactor = Reactor {
            poll,
            listeners: Vec::new(),
            conns: Vec::new(),
            free_slots: Vec::new(),
            open: 0,
            per_ip: HashMap::new(),
            deadlines: Deadlines::default(),
            pool: Pool::default(),
            next_id: 1,
            accept_paused_until: None,
            descriptors_exhausted: false,
            signals,
            stop_by: None,
            settings,
            services,
            config_path,
            // Not yet: start-up's code and allocations go at the first rest.
            rested: false,
            code_release_due: false,
            control,
            control_work: None,
            exec: None,
            checks: HashMap::new(),
            handshakes: 0,
            again: Vec::new(),
            inner_events: Some(Events::with_capacity(limits::EVENTS_PER_POLL)),
            spare_batches: Vec::new(),
        };
        for l in listeners {
            reactor.add_listener(l)?;
        }
        Ok(reactor)
    }

    /// Runs until SIGTERM/SIGINT and every connection has said goodbye (or the grace period
    /// ran out).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(limits::EVENTS_PER_POLL);
        loop {
            let now = Instant::now();
            if let Some(stop_by) = self.stop_by {
                if self.open == 0 || now >= stop_by {
                    self.services.finish_in_flight(self.exec.as_mut());
                    for line in crate::turnstat::report() {
                        info!("{line}");
                    }
                    info!("stopped ({} connections cut at shutdown)", self.open);
                    return Ok(());
                }
            }
            // At rest: no connection, no disk or delivery work, no log summary still to
            // write. Anything else (a connection, a retry coming due) starts a new burst,
            // whose end hands back memory and code again.
            let resting = self.open == 0
                && crate::daemon::log::flood_due().is_none()
                && self.services.at_rest(now);
            if !resting {
                self.rested = false;
            } else if !self.rested {
                self.release_memory();
            }
            let timeout = self.poll_timeout(now);
            // Last before the wait, once the helper has answered its rest: what runs between
            // here and the next event is all that stays mapped (`daemon::pages`).
            if self.code_release_due
                && self.open == 0
                && self.exec.as_ref().is_none_or(|e| e.in_flight() == 0)
            {
                self.code_release_due = false;
                crate::daemon::pages::release_startup_code();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            turnstat::begin(events.iter().count());
            crate::daemon::log::hold_lines();
            crate::daemon::log::flush_floods(now);
            self.services.begin_turn();
            turnstat::mark(Part::Rest);
            // Last turn's leftovers go after this turn's events (whose own leftovers wait for
            // the next turn), so a busy connection takes its turn in line with the others.
            let again = std::mem::take(&mut self.again);
            self.dispatch(&events, now);
            for (slot, id) in again {
                if self
                    .conns
                    .get(slot)
                    .and_then(|c| c.as_ref())
                    .is_some_and(|c| c.id == id)
                {
                    self.drive(slot, now);
                }
            }
            self.poll_within_turn(now);
            self.accept_backlogs(now);
            turnstat::mark(Part::Accept);
            if !self.checks.is_empty()
                || self.services.mailbox_busy()
                || self.services.commit_pending()
                || self.services.delivery_busy()
            {
                // Completions made without an event (a helper found gone at submit).
                self.finish_checks(now);
            }
            turnstat::mark(Part::Exec);
            self.finish_mailboxes(now);
            turnstat::mark(Part::Mailboxes);
            // Disk work gets slices of each turn, one wait for the disk at a time, so no
            // client waits behind a whole batch of fsyncs: one slice for commits (clients wait
            // for them), one for deliveries (so they keep up under a steady load).
            self.finish_commits(now, Instant::now() + limits::WORK_SLICE);
            turnstat::mark(Part::Commits);
            self.poll_within_turn(now);
            self.serve_control(now);
            turnstat::mark(Part::Control);
            self.services
                .pickup_work(Instant::now() + limits::WORK_SLICE);
            turnstat::mark(Part::Pickup);
            if self.control_work.is_none() {
                self.exec_batching(true);
                self.services.deliver(
                    now,
                    SystemTime::now(),
                    Instant::now() + limits::WORK_SLICE,
                    self.exec.as_mut(),
                );
                self.exec_batching(false);
            }
            // After the sessions and the deliveries: files for the messages begun this turn
            // are made ahead, and the entries removed this turn go to free/ (`spool::prepare`).
            self.exec_batching(true);
            self.services.spool_prepare(self.exec.as_mut());
            self.exec_batching(false);
            turnstat::mark(Part::Deliver);
            self.poll_within_turn(now);
            self.services.outbound_turn(Instant::now());
            turnstat::mark(Part::Outbound);
            self.fire_deadlines(now);
            turnstat::mark(Part::Deadlines);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.resume_accepting(now);
            }
            if let Some(exec) = self.exec.as_mut() {
                exec.end_turn();
            }
            crate::daemon::log::release_lines();
            turnstat::end();
        }
    }

    /// Late in a long turn (`limits::POLL_WITHIN_TURN_AFTER` after its poll), between pieces
    /// of disk work: whatever became ready since is handled now, so a client waiting for a
    /// one-line reply waits for one piece of that work, not for the rest of the turn and the
    /// next turn's events before its own.
    fn poll_within_turn(&mut self, turn_start: Instant) {
        if turn_start.elapsed() >= limits::POLL_WITHIN_TURN_AFTER {
            self.poll_now(true);
        }
    }

    /// Polls without waiting and handles what it reports (`nested`: polling again within
    /// that batch as `dispatch` does; a poll made inside a batch does not nest further).
    fn poll_now(&mut self, nested: bool) {
        let Some(mut events) = self.inner_events.take() else {
            return;
        };
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        // An error (EINTR) is left to the next poll.
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() {
            batch.extend(events.iter().map(Ready::of));
        }
        self.inner_events = Some(events);
        if !batch.is_empty() {
            self.services.begin_turn();
            self.handle_batch(&batch, Instant::now(), nested);
        }
        batch.clear();
        self.spare_batches.push(batch);
    }

    /// Handles the events of the turn's poll.
    fn dispatch(&mut self, events: &Events, now: Instant) {
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        batch.extend(events.iter().map(Ready::of));
        self.handle_batch(&batch, now, true);
        batch.clear();
        self.spare_batches.push(batch);
    }

    /// Handles one poll's events in order, each connection's driven at once. With `nested`,
    /// every `limits::POLL_WITHIN_TURN_AFTER` of it the poll is asked again and what became
    /// ready meanwhile is handled before the rest of the batch: a batch of 20 busy sessions
    /// took 0.3-0.6 ms, and a client waiting for a one-line reply waited for all of it and
    /// then for its own turn.
    fn handle_batch(&mut self, batch: &[Ready], now: Instant, nested: bool) {
        // An edit of the users or aliases file counts before any RCPT of this batch does.
        if batch.iter().any(|r| r.token == DIRECTORY_TOKEN) {
            self.services.directory_changed();
        }
        let mut polled = Instant::now();
        for &ready in batch {
            self.handle_ready(ready, now);
            if nested && polled.elapsed() >= limits::POLL_WITHIN_TURN_AFTER {
                self.poll_now(false);
                polled = Instant::now();
            }
        }
    }

    fn handle_ready(&mut self, ready: Ready, now: Instant) {
        let part = match ready.token {
            EXEC_TOKEN | HELPER_TOKEN => Part::Exec,
            Token(t) if t >= CONN_BASE && !Outbound::owns(Token(t)) => Part::Conns,
            _ => Part::Other,
        };
        match ready.token {
            SIGNAL_TOKEN => self.handle_signals(now),
            DIRECTORY_TOKEN => {} // (seen in `handle_batch`)
            t if ControlServer::owns(t) => self.control.ready(t),
            PICKUP_TOKEN => self.services.pickup_readable(),
            t @ (EXEC_TOKEN | HELPER_TOKEN) => {
                if let Some(exec) = self.exec.as_mut() {
                    exec.signalled(t == EXEC_TOKEN);
                }
                self.finish_checks(now)
            }
            t if Outbound::owns(t) => {
                self.services
                    .outbound_ready(t, ready.readable, ready.writable, now)
            }
            Token(t) if t >= CONN_BASE => {
                let slot = t - CONN_BASE;
                if let Some(Some(conn)) = self.conns.get_mut(slot) {
                    conn.can_read |= ready.readable;
                    conn.read_closed |= ready.read_closed;
                    conn.can_write |= ready.writable;
                    self.drive(slot, now);
                }
            }
            Token(t) => {
                if let Some(Some(l)) = self.listeners.get_mut(t - LISTENER_BASE) {
                    l.backlog = true;
                }
            }
        }
        turnstat::mark(part);
    }

    /// No connection is open and no disk work is pending: hand back what a burst grew (pooled
    /// buffers, slab and table capacity, the allocator's free pages) and, in both processes,
    /// the mappings of code run since the last rest (`daemon::pages`), so an idle server is
    /// as small as it can be. Runs once after start-up and once per burst, before the poll
    /// that would wait.
    fn release_memory(&mut self) {
        self.rested = true;
        self.pool.clear();
        while matches!(self.conns.last(), Some(None)) {
            self.conns.pop();
        }
        let slots = self.conns.len();
        self.free_slots.retain(|&s| s < slots);
        self.conns.shrink_to_fit();
        self.free_slots.shrink_to_fit();
        self.per_ip.shrink_to_fit();
        self.checks.shrink_to_fit();
        self.spare_batches = Vec::new();
        // With no connection open every entry left in the heap is stale.
        self.deadlines.clear();
        self.services.release_memory(Instant::now());
        crate::buf::return_free_memory_to_os();
        // The helper process rests too (the uring backend's helper included). If it cannot
        // take the request now, the next rest will ask again.
        if let Some(exec) = self.exec.as_mut() {
            let _ = exec.submit(crate::exec::REST_TAG, crate::exec::DiskOp::Rest);
        }
        self.code_release_due = true;
        debug!("at rest: memory handed back");
    }

    /// `postling queue`: accepts and reads a command, and carries it out when no delivery
    /// batch is in progress (so it never acts on an entry being attempted; a batch lasts
    /// milliseconds, and the poll does not wait while one runs), a slice of its entries per
    /// turn (`control::Progress`).
    fn serve_control(&mut self, now: Instant) {
        self.control.turn(self.poll.registry(), now);
        if self.services.delivery_busy() {
            return;
        }
        if self.control_work.is_none() {
            self.control_work = self.control.take_request().map(Progress::new);
        }
        if let Some(work) = self.control_work.as_mut() {
            // A slice of its entries a turn; delivery waits until the command is done.
            let mut lines = Vec::new();
            let deadline = Instant::now() + limits::WORK_SLICE;
            let done = self.services.control_step(work, deadline, &mut lines);
            if done {
                self.control_work = None;
            }
            self.control
                .reply_part(&lines, done, self.poll.registry(), now);
        }
        // A parse error is answered by the next `turn`; a finished client makes room.
        self.control.turn(self.poll.registry(), now);
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.services.commit_runnable()
            || self.control_work.is_some()
            || self.services.pickup_pending()
            || self.backlog_waiting()
            || !self.again.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut t = self.deadlines.timeout(now);
        if let Some(d) = self.control.timeout(now) {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        if let Some(d) = self.services.delivery_timeout(now) {
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        if let Some(at) = self.services.outbound_deadline(now) {
            let d = at.saturating_duration_since(now);
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        // A pending log flood summary, only while one is pending: idle stays without wake-ups.
        let flood = crate::daemon::log::flood_due();
        for extra in [self.accept_paused_until, self.stop_by, flood]
            .into_iter()
            .flatten()
        {
            let d = extra.saturating_duration_since(now);
            t = Some(t.map_or(d, |t| t.min(d)));
        }
        t
    }

    fn handle_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGTERM | SIGINT => self.begin_stop(now),
                SIGHUP => self.reload(),
                SIGUSR1 => crate::daemon::log::reopen_on_signal(),
                SIGUSR2 => self.services.queue_run_now(),
                _ => {}
            }
        }
    }

    /// SIGHUP: re-read the config; a bad one is logged and the running one kept. New sessions
    /// get the new settings, open sessions keep theirs.
    fn reload(&mut self) {
        let path = self.config_path.clone();
        match Config::load(&path) {
            Err(errors) => {
                warn!(
                    "reload of {} failed with {} error(s); still running on the previous config",
                    path.display(),
                    errors.len()
                );
                for e in &errors {
                    warn!("{e}");
                }
            }
            Ok((config, warnings)) => {
                for w in &warnings {
                    warn!("{w}");
                }
                let old_tls = self.settings.tls.take();
                self.settings = Settings::from_config(&config);
                let tls = match config.load_tls() {
                    Ok(Some(identity)) => {
                        if let Some(w) = crate::config::tls_expiry_warning(&config, &identity) {
                            warn!("{w}");
                        }
                        info!(
                            "TLS certificate loaded from {}",
                            config
                                .tls_cert
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .display()
                        );
                        Some(identity.config)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        warn!("{e}; keeping the previous TLS certificate");
                        old_tls
                    }
                };
                self.settings.set_tls(tls);
                if self.stop_by.is_none() {
                    self.set_listeners(&wanted_listeners(&config));
                }
                self.services.reload(&config);
                info!("reloaded {}", path.display());
            }
        }
    }

    /// Stop accepting, say goodbye to every session and exit once they are gone.
    fn begin_stop(&mut self, now: Instant) {
        if self.stop_by.is_some() {
            return;
        }
        info!("shutting down: {} connections open", self.open);
        self.stop_by = Some(now + limits::SHUTDOWN_GRACE);
        for mut l in self.listeners.drain(..).flatten() {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.accept_paused_until = None;
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if conn.phase == Phase::Closing || conn.phase == Phase::AwaitCommit {
                // A commit in flight is answered first (when it finishes, in this turn or,
                // waiting in the executor, a later one).
                continue;
            }
            self.say_goodbye(slot, now);
        }
    }

    fn say_goodbye(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        self.services.session_ended(slot, &mut conn.session);
        let out = conn.output.get_or_insert_with(|| self.pool.take_out());
        if out.free() >= limits::REPLY_RESERVE {
            match &mut conn.session {
                Session::Smtp(s) => s.on_shutdown(out),
                Session::Pop3(s) => s.on_shutdown(out),
                Session::Pop2(s) => s.on_shutdown(out),
            }
        }
        self.start_closing(slot, "shutdown", now);
        self.drive(slot, now);
    }

    fn backlog_waiting(&self) -> bool {
        self.accept_paused_until.is_none()
            && self.stop_by.is_none()
            && self.listeners.iter().flatten().any(|l| self.may_accept(l))
    }

    /// A listener's backlog may be taken from now: implicit-TLS ones wait while
    /// `max_tls_handshakes` handshakes are in flight.
    fn may_accept(&self, l: &Listener) -> bool {
        l.backlog && (!l.tls || self.handshakes < self.settings.max_tls_handshakes)
    }

    /// Takes connections from every listener with a backlog, one from each in turn, so a
    /// crowd on one port cannot starve another (which matters most when descriptors run out
    /// and only a few more can be taken), and at most `ACCEPTS_PER_TURN` per turn, so the
    /// open connections are served between bursts. A listener still holding a backlog stays
    /// marked and the next turn comes at once.
    fn accept_backlogs(&mut self, now: Instant) {
        let mut budget = limits::ACCEPTS_PER_TURN;
        while budget > 0 && self.backlog_waiting() {
            for index in 0..self.listeners.len() {
                if budget == 0 || self.accept_paused_until.is_some() {
                    break;
                }
                if self.listeners[index]
                    .as_ref()
                    .is_some_and(|l| self.may_accept(l))
                {
                    self.accept_one(index, now);
                    budget -= 1;
                }
            }
        }
    }

    fn accept_one(&mut self, index: usize, now: Instant) {
        loop {
            let Some(Some(listener)) = self.listeners.get_mut(index) else {
                return;
            };
            let proto = listener.proto;
            let tls = listener.tls;
            let submission = listener.submission;
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    if self.descriptors_exhausted {
                        self.descriptors_exhausted = false;
                        info!("accepting connections again ({} open)", self.open);
                    }
                    self.admit(stream, peer, (proto, tls, submission), now);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    listener.backlog = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        if !self.descriptors_exhausted {
                            self.descriptors_exhausted = true;
                            warn!(
                                "cannot accept connections: {e}; pausing accepts for {:?} at a time, or until a connection closes ({} open)",
                                limits::ACCEPT_BACKOFF,
                                self.open
                            );
                        }
                        self.accept_paused_until = Some(now + limits::ACCEPT_BACKOFF);
                        return;
                    }
                    // The peer vanished between SYN and accept; nothing to do for it.
                    Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::ECONNRESET) => {
                        continue;
                    }
                    _ => {
                        // Not retried in a loop: the next readiness event tries again.
                        listener.backlog = false;
                        warn!("accept on {} failed: {e}", listener.addr);
                        return;
                    }
                },
            }
        }
    }

    fn add_listener(&mut self, mut l: Listener) -> io::Result<()> {
        let slot = match self.listeners.iter().position(|l| l.is_none()) {
            Some(i) => i,
            None if self.listeners.len() < MAX_LISTENERS => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
            None => {
                return Err(io::Error::other(format!(
                    "at most {MAX_LISTENERS} listen addresses are supported"
                )));
            }
        };
        self.poll.registry().register(
            &mut l.socket,
            Token(LISTENER_BASE + slot),
            Interest::READABLE,
        )?;
        info!("listening for {} on {}", l.proto.name(), l.addr);
        self.listeners[slot] = Some(l);
        Ok(())
    }

    /// Makes the open listeners match `wanted`: closes the ones no longer configured and binds
    /// the new ones. A new address that cannot be bound is logged and skipped; the server keeps
    /// running on the others (unlike at start-up, where that is fatal).
    pub fn set_listeners(&mut self, wanted: &[crate::listen::Wanted]) {
        for slot in 0..self.listeners.len() {
            let keep = self.listeners[slot].as_ref().is_some_and(|l| {
                wanted.iter().any(|&(p, a, t, s)| {
                    p == l.proto && a == l.addr && t == l.tls && s == l.submission
                })
            });
            if !keep {
                if let Some(mut l) = self.listeners[slot].take() {
                    let _ = self.poll.registry().deregister(&mut l.socket);
                    info!("no longer listening for {} on {}", l.proto.name(), l.addr);
                }
            }
        }
        for &(proto, addr, tls, submission) in wanted {
            if self.listeners.iter().flatten().any(|l| {
                l.proto == proto && l.addr == addr && l.tls == tls && l.submission == submission
            }) {
                continue;
            }
            match crate::listen::bind(proto, addr, tls, submission) {
                Ok(l) => {
                    if let Err(e) = self.add_listener(l) {
                        warn!("cannot listen for {} on {addr}: {e}", proto.name());
                    }
                }
                Err(e) => warn!("{e}; keeping the other listeners"),
            }
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        self.accept_paused_until = None;
        self.accept_backlogs(now);
    }

    fn admit(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        (proto, implicit_tls, submission): (Proto, bool, bool),
        now: Instant,
    ) {
        let ip = peer.ip();
        let per_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip >= self.settings.max_connections_per_ip
            || (self.open >= self.settings.max_connections && !self.evict_one(proto, peer, now))
        {
            // Logged before the refusal is written, so whoever reads the refusal finds the
            // reason in the log already.
            info!(
                target: &flood::target(&format!("{} refused", proto.name()), ip),
                "{} refused {peer}: {} ({} open, {per_ip} from this address)",
                proto.name(),
                if per_ip >= self.settings.max_connections_per_ip {
                    "max_connections_per_ip"
                } else {
                    "max_connections"
                },
                self.open
            );
            // Best effort: a fresh socket's send buffer takes one short line without blocking.
            // An implicit-TLS port never carries plaintext: the refusal there is the close.
            if !implicit_tls {
                let _ = io::Write::write(&mut stream, proto.busy_reply());
            }
            return;
        }
        let tls = if implicit_tls {
            let session = self
                .settings
                .tls
                .clone()
                .ok_or_else(|| "no TLS certificate loaded".to_string())
                .and_then(|c| TlsServerSession::new(c).map_err(|e| e.to_string()));
            match session {
                Ok(session) => Some(TlsTransport::new(
                    session,
                    now + self.settings.tls_handshake_timeout,
                )),
                Err(e) => {
                    warn!("{} cannot start TLS for {peer}: {e}", proto.name());
                    return;
                }
            }
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(CONN_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("{} cannot register {peer}: {e}", proto.name());
            self.free_slots.push(slot);
            return;
        }
        // A password may cross the network in the clear only to a loopback client, or where
        // the administrator allows it.
        let clear_login_ok =
            self.settings.allow_plaintext_auth || peer.ip().to_canonical().is_loopback();
        let (session, idle_timeout, cap) = match proto {
            Proto::Smtp => (
                Session::Smtp({
                    let s = SmtpSession::new(self.settings.smtp.clone(), peer);
                    if submission {
                        s.with_submission(clear_login_ok)
                    } else {
                        let ip = peer.ip();
                        let relay = self.settings.relay_networks.iter().any(|c| c.contains(ip));
                        s.with_relay_client(relay)
                    }
                }),
                self.settings.smtp_timeout,
                limits::SMTP_SESSION_CAP,
            ),
            // Until the login the session cap is the login deadline (see `drive`).
            Proto::Pop3 => (
                Session::Pop3(
                    Pop3Session::new(self.settings.pop.clone()).with_clear_login(clear_login_ok),
                ),
                self.settings.pop3_timeout,
                limits::POP_SESSION_CAP.min(self.settings.pop_login_timeout),
            ),
            Proto::Pop2 => (
                Session::Pop2(
                    Pop2Session::new(self.settings.pop.clone()).with_clear_login(clear_login_ok),
                ),
                self.settings.pop3_timeout,
                limits::POP_SESSION_CAP.min(self.settings.pop_login_timeout),
            ),
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut conn = Conn {
            stream,
            peer,
            proto,
            session,
            input: None,
            stash: arrayvec::ArrayVec::new(),
            output: None,
            tls,
            phase: Phase::Active,
            can_read: true,
            read_closed: false,
            can_write: true,
            eof: false,
            id,
            opened: now,
            idle_timeout,
            idle_deadline: now + idle_timeout,
            cap_deadline: now + cap,
            wake_at: None,
            linger_deadline: None,
            armed: Default::default(),
            close_reason: "",
        };
        let ctx = Ctx {
            now,
            wall: SystemTime::now(),
        };
        let out = conn.output.get_or_insert_with(|| self.pool.take_out());
        match &mut conn.session {
            Session::Smtp(s) => s.greet(ctx, out, &mut self.services.smtp_host(slot, peer, now)),
            Session::Pop3(s) => s.greet(ctx, out),
            Session::Pop2(s) => s.greet(ctx, out),
        }
        if conn.tls.is_some() {
            self.handshakes += 1;
        }
        self.conns[slot] = Some(conn);
        self.open += 1;
        self.rested = false;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        debug!("{} connect from {peer}", proto.name());
        self.drive(slot, now);
    }

    /// At `max_connections`, closes one idle connection that holds nothing of value (see
    /// `Conn::evictable`) so a newcomer can have its place; which one is `choose_victim`'s
    /// rule. Returns false if there is none: the newcomer is then refused.
    ///
    /// Two passes over the connection table, only while the server is full. Measured with a
    /// release build at the default 512: a crowd of 5,000 connects (4,489 evictions) cost the
    /// server 0.40 s of CPU against 0.19 s when the same crowd was refused, so about 45 us
    /// per eviction including the victim's goodbye and close.
    fn evict_one(&mut self, newcomer: Proto, peer: SocketAddr, now: Instant) -> bool {
        let per_ip = &self.per_ip;
        let candidates = self.conns.iter().enumerate().filter_map(|(slot, c)| {
            let c = c.as_ref().filter(|c| c.evictable())?;
            Some(Candidate {
                slot,
                proto: c.proto,
                from_address: per_ip.get(&c.peer.ip()).copied().unwrap_or(0),
                idle_since: c.idle_since(),
            })
        });
        let victim = choose_victim(candidates);
        let Some(slot) = victim else {
            return false;
        };
        let Some(conn) = self.conns[slot].as_mut() else {
            return false;
        };
        info!(
            "{} admits {peer} at max_connections by evicting idle {} {} (idle {:.3}s)",
            newcomer.name(),
            conn.proto.name(),
            conn.peer,
            now.saturating_duration_since(conn.idle_since())
                .as_secs_f64(),
        );
        self.services.session_ended(slot, &mut conn.session);
        let out = conn.output.get_or_insert_with(|| self.pool.take_out());
        out.push(conn.proto.evicted_reply());
        conn.close_reason = "evicted for a newcomer at max_connections";
        // Its output was drained, so the socket takes one line; try even if the last write
        // met WouldBlock before the drain.
        conn.can_write = true;
        self.start_closing(slot, "evicted", now);
        self.drive(slot, now);
        // The goodbye is best effort: the slot is needed now, whatever the peer reads.
        if self.conns.get(slot).is_some_and(|c| c.is_some()) {
            self.close(slot, now);
        }
        true
    }

    /// Moves bytes and runs the session until nothing more can happen without the network,
    /// the spool or the clock, or until it made `limits::IO_PER_DRIVE` socket reads and
    /// writes or used `limits::DRIVE_SLICE`: then the rest waits for the next turn (`again`).
    fn drive(&mut self, slot: usize, now: Instant) {
        let ctx = Ctx {
            now,
            wall: SystemTime::now(),
        };
        let mut io = IoBudget::new();
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                return;
            };
            if io.spent() {
                debug!(
                    "{} {}: the turn's I/O budget is spent; going on next turn",
                    conn.proto.name(),
                    conn.peer
                );
                self.again.push((slot, conn.id));
                return;
            }

            if conn.pending_output() && conn.can_write {
                io.take();
                match conn.flush(&mut self.pool) {
                    Ok(true) => conn.progress(now),
                    Ok(false) => {}
                    Err(e) => {
                        conn.close_reason = if e.kind() == io::ErrorKind::BrokenPipe {
                            "peer closed"
                        } else {
                            "write error"
                        };
                        self.close(slot, now);
                        return;
                    }
                }
            }
            if conn.phase == Phase::Closing {
                if !conn.pending_output() {
                    self.close(slot, now);
                } else {
                    self.arm(slot);
                }
                return;
            }
            if conn.phase != Phase::Active {
                break;
            }
            let cut_off = conn.session_cut_off();
            if !cut_off {
                if let Some((version, cipher)) = conn.take_tls_news() {
                    self.handshakes = self.handshakes.saturating_sub(1);
                    match &mut conn.session {
                        Session::Smtp(s) => s.tls_established(version, cipher),
                        Session::Pop3(s) => s.tls_established(),
                        Session::Pop2(_) => {}
                    }
                }
            }
            let out = conn.output.get_or_insert_with(|| self.pool.take_out());
            if out.free() < limits::REPLY_RESERVE {
                if conn.can_write {
                    continue;
                }
                break;
            }
            // Field by field: the session and the output buffer are borrowed mutably beside it.
            let input: &[u8] = conn.input.as_ref().map_or(&conn.stash[..], |b| b.bytes());
            let offered = input.len();
            let step = match &mut conn.session {
                // Nothing the session says can go out before the TLS handshake is done, and
                // nothing comes in: only the transport moves.
                _ if cut_off => Step::new(0, Next::NeedInput),
                Session::Smtp(s) => s.step(
                    input,
                    ctx,
                    out,
                    &mut self.services.smtp_host(slot, conn.peer, now),
                ),
                Session::Pop3(s) => s.step(
                    input,
                    ctx,
                    out,
                    &mut self.services.pop_host(slot, conn.peer, now),
                ),
                Session::Pop2(s) => s.step(
                    input,
                    ctx,
                    out,
                    &mut self.services.pop_host(slot, conn.peer, now),
                ),
            };
            if step.consumed > 0 {
                conn.consume_input(step.consumed);
                conn.progress(now);
                let full_cap = conn.opened + limits::POP_SESSION_CAP;
                if conn.cap_deadline < full_cap && conn.session.logged_in() {
                    // Logged in: the login deadline gives way to the whole-session cap.
                    conn.cap_deadline = full_cap;
                }
            }
            match step.next {
                Next::Continue => {}
                Next::NeedOutput => {
                    if !conn.can_write {
                        break;
                    }
                }
                Next::NeedInput => {
                    debug_assert!(
                        offered < limits::MAX_UNIT || step.consumed > 0,
                        "session stalled on a full buffer"
                    );
                    if conn.buffered_input() >= limits::IN_BUF && step.consumed == 0 {
                        // Contract breach by a session: never spin, never grow; drop the client.
                        conn.close_reason = "session made no progress on a full buffer";
                        self.close(slot, now);
                        return;
                    }
                    if conn.eof {
                        if conn.close_reason.is_empty() {
                            conn.close_reason = "peer closed";
                        }
                        if conn.pending_output() {
                            self.start_closing(slot, "peer closed", now);
                            continue;
                        }
                        self.close(slot, now);
                        return;
                    }
                    if (!conn.can_read && !conn.transport_has_input())
                        || !conn.transport_ready_for_input()
                    {
                        if conn.pending_output() && conn.can_write {
                            // Replies written by this step still go out before the wait.
                            continue;
                        }
                        break;
                    }
                    io.take();
                    match conn.read_some(&mut self.pool) {
                        Ok(_) => {}
                        Err(_) => {
                            conn.close_reason = "read error";
                            self.close(slot, now);
                            return;
                        }
                    }
                }
                Next::AwaitCommit => {
                    conn.phase = Phase::AwaitCommit;
                    break;
                }
                Next::AwaitAuth => {
                    let (id, peer) = (conn.id, conn.peer);
                    let started = begin_check(
                        &mut self.services,
                        &mut self.exec,
                        &mut self.checks,
                        (slot, id, peer),
                        &mut conn.session,
                        now,
                    );
                    match started {
                        // Submitted: resumed by `finish_checks`.
                        None => {
                            conn.phase = Phase::AwaitAuth;
                            break;
                        }
                        Some(verdict) => {
                            let out = conn.output.get_or_insert_with(|| self.pool.take_out());
                            let host = (&mut self.services, slot, peer);
                            resume_auth(&mut conn.session, verdict, ctx, out, host);
                            lift_login_deadline(conn);
                        }
                    }
                }
                Next::AwaitMailbox => {
                    let request = match &mut conn.session {
                        Session::Pop3(s) => s.take_mailbox(),
                        Session::Pop2(s) => s.take_mailbox(),
                        Session::Smtp(_) => None,
                    };
                    // Answered by `finish_mailboxes`, in this turn or a later one.
                    self.services.mailbox_begin(slot, conn.id, request);
                    conn.phase = Phase::AwaitMailbox;
                    break;
                }
                Next::Sleep(d) => {
                    conn.phase = Phase::Sleeping;
                    conn.wake_at = Some(now + d);
                    break;
                }
                Next::Close => {
                    self.start_closing(slot, "session ended", now);
                }
                Next::StartTls => {
                    let session = self.settings.tls.clone().map(TlsServerSession::new);
                    match session {
                        // A session asks once and only in plaintext; anything else is a bug
                        // that must not stack TLS on TLS.
                        Some(Ok(session)) if conn.tls.is_none() => {
                            let deadline = now + self.settings.tls_handshake_timeout;
                            conn.start_tls(TlsTransport::new(session, deadline), &mut self.pool);
                            self.handshakes += 1;
                        }
                        _ => {
                            // Only a reload that removed the certificate between EHLO and
                            // STARTTLS gets here; the client expects TLS, so nothing else fits.
                            conn.close_reason = "STARTTLS without a certificate";
                            self.close(slot, now);
                            return;
                        }
                    }
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) {
            conn.return_buffers(&mut self.pool);
        }
        self.arm(slot);
    }

    fn start_closing(&mut self, slot: usize, reason: &'static str, now: Instant) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) {
            if conn.phase != Phase::Closing {
                conn.phase = Phase::Closing;
                if conn.close_reason.is_empty() {
                    conn.close_reason = reason;
                }
                conn.linger_deadline = Some(now + LINGER);
                conn.close_transport();
            }
        }
    }

    fn arm(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) {
            let when = conn.deadline();
            self.deadlines.arm(&mut conn.armed, when, slot, conn.id);
        }
    }

    fn close(&mut self, slot: usize, now: Instant) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(|c| c.take()) else {
            return;
        };
        self.services.session_ended(slot, &mut conn.session);
        if conn.handshake_in_flight() {
            self.handshakes = self.handshakes.saturating_sub(1);
        }
        // Not deregistered: closing the socket (when `conn` drops) takes it out of the poll,
        // as no other descriptor shares it, and saves a system call per connection.
        let ip = conn.peer.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        conn.release_buffers(&mut self.pool);
        self.open -= 1;
        self.free_slots.push(slot);
        let auth = match &conn.session {
            Session::Smtp(s) => s.auth_user().map(|u| format!(" auth={u}")),
            _ => None,
        };
        // Summarised per protocol and address in a storm (`daemon::flood`).
        info!(
            target: &flood::target(&format!("{} close", conn.proto.name()), conn.peer.ip()),
            "{} close {} ({}{}) after {:.3}s: {}",
            conn.proto.name(),
            conn.peer,
            conn.transport_name(),
            auth.unwrap_or_default(),
            now.duration_since(conn.opened).as_secs_f64(),
            if conn.close_reason.is_empty() {
                "done"
            } else {
                conn.close_reason
            }
        );
        if self.accept_paused_until.is_some() {
            // A descriptor was just freed: try the backlog now rather than at the back-off.
            self.resume_accepting(now);
        }
    }

    fn finish_commits(&mut self, now: Instant, work_until: Instant) {
        if !self.services.commit_pending() {
            return;
        }
        self.exec_batching(true);
        let results = self.services.commit_work(work_until, self.exec.as_mut());
        self.exec_batching(false);
        for (slot, result) in results {
            let ctx = Ctx {
                now,
                wall: SystemTime::now(),
            };
            let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                continue;
            };
            if conn.phase != Phase::AwaitCommit {
                continue;
            }
            conn.phase = Phase::Active;
            let out = conn.output.get_or_insert_with(|| self.pool.take_out());
            if let Session::Smtp(s) = &mut conn.session {
                s.resume(
                    Completion::Committed(result),
                    ctx,
                    out,
                    &mut self.services.smtp_host(slot, conn.peer, now),
                );
            }
            conn.progress(now);
            if self.stop_by.is_some() {
                self.say_goodbye(slot, now);
            } else {
                self.drive(slot, now);
            }
        }
    }

    /// Opens or closes a batch of the executor's submissions (`Executor::set_batching`).
    fn exec_batching(&mut self, on: bool) {
        if let Some(exec) = self.exec.as_mut() {
            exec.set_batching(on);
        }
    }

    /// Makes `exec` the reactor's executor and registers its completions in the poll.
    pub fn attach_executor(&mut self, mut exec: Executor) -> io::Result<()> {
        exec.register(self.poll.registry(), EXEC_TOKEN, HELPER_TOKEN)?;
        self.exec = Some(exec);
        Ok(())
    }

    /// Starts remote delivery, its sockets in this reactor's poll.
    pub fn attach_outbound(&mut self, settings: OutboundSettings) -> io::Result<()> {
        let registry = self.poll.registry().try_clone()?;
        self.services
            .attach_outbound(Outbound::new(settings, registry));
        Ok(())
    }

    /// The pid of the executor's helper process, if there is one.
    pub fn helper_pid(&self) -> Option<i32> {
        self.exec.as_ref().and_then(Executor::helper_pid)
    }

    /// Takes the executor's completions: each password check is finished by the services
    /// (throttle, cache, log) whether or not its connection is still there, and its session
    /// resumed if the same connection (same id) still waits for it.
    fn finish_checks(&mut self, now: Instant) {
        // What the completions start (a file's close after its open, ...) goes in one batch.
        self.exec_batching(true);
        self.finish_completions(now);
        self.exec_batching(false);
    }

    fn finish_completions(&mut self, now: Instant) {
        let mut done = Vec::new();
        loop {
            let Some(exec) = self.exec.as_mut() else {
                return;
            };
            exec.drain_signalled(&mut done);
            if done.is_empty() {
                return;
            }
            for c in done.drain(..) {
                if crate::mailbox::job::owns(c.tag) {
                    self.services.mailbox_completion(c);
                    continue;
                }
                if crate::spool::commit_owns(c.tag) {
                    self.services.commit_completion(c);
                    continue;
                }
                if crate::spool::prepare_owns(c.tag) {
                    self.services.spool_prepared(c, self.exec.as_mut());
                    continue;
                }
                if crate::deliver::local::owns(c.tag) {
                    self.services.delivery_completion(c);
                    continue;
                }
                let Some(check) = self.checks.remove(&c.tag) else {
                    continue;
                };
                let verdict = self
                    .services
                    .auth_finish(check.pending, c.result, check.ip, now);
                let slot = check.slot;
                let Some(conn) = resumable(&mut self.conns, slot, check.id, Phase::AwaitAuth)
                else {
                    continue;
                };
                let ctx = Ctx {
                    now,
                    wall: SystemTime::now(),
                };
                let out = conn.output.get_or_insert_with(|| self.pool.take_out());
                let host = (&mut self.services, slot, conn.peer);
                resume_auth(&mut conn.session, verdict, ctx, out, host);
                lift_login_deadline(conn);
                conn.progress(now);
                if self.stop_by.is_some() {
                    self.say_goodbye(slot, now);
                } else {
                    self.drive(slot, now);
                }
            }
        }
    }

    /// Once a turn: the mailbox jobs submit their next bounded batch, and the sessions whose
    /// job ended are resumed (if the same connection still waits for it).
    fn finish_mailboxes(&mut self, now: Instant) {
        if !self.services.mailbox_busy() {
            return;
        }
        for (slot, id, done) in self.services.mailbox_turn(self.exec.as_mut()) {
            let Some(conn) = resumable(&mut self.conns, slot, id, Phase::AwaitMailbox) else {
                continue;
            };
            let ctx = Ctx {
                now,
                wall: SystemTime::now(),
            };
            let out = conn.output.get_or_insert_with(|| self.pool.take_out());
            let host = &mut self.services.pop_host(slot, conn.peer, now);
            match &mut conn.session {
                Session::Pop3(s) => s.resume(Completion::Mailbox(done), ctx, out, host),
                Session::Pop2(s) => s.resume(Completion::Mailbox(done), ctx, out, host),
                Session::Smtp(_) => {}
            }
            lift_login_deadline(conn);
            conn.progress(now);
            if self.stop_by.is_some() {
                self.say_goodbye(slot, now);
            } else {
                self.drive(slot, now);
            }
        }
    }

    fn fire_deadlines(&mut self, now: Instant) {
        while let Some((at, slot, id)) = self.deadlines.pop_due(now) {
            let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                continue;
            };
            if conn.id != id || !conn.armed.fired(at) {
                continue;
            }
            if conn.linger_deadline.is_some_and(|t| t <= now) {
                conn.close_reason = "peer did not read its last reply";
                self.close(slot, now);
                continue;
            }
            if conn.phase == Phase::Closing {
                self.arm(slot);
                continue;
            }
            if conn.handshake_deadline().is_some_and(|t| t <= now) {
                // Nothing can be said in plaintext on a TLS connection, and nothing encrypted
                // before the handshake: just close.
                conn.close_reason = "TLS handshake timeout";
                self.close(slot, now);
                continue;
            }
            if conn.wake_at.is_some_and(|t| t <= now) {
                conn.wake_at = None;
                conn.phase = Phase::Active;
                let ctx = Ctx {
                    now,
                    wall: SystemTime::now(),
                };
                let out = conn.output.get_or_insert_with(|| self.pool.take_out());
                match &mut conn.session {
                    Session::Smtp(s) => s.resume(
                        Completion::Woke,
                        ctx,
                        out,
                        &mut self.services.smtp_host(slot, conn.peer, now),
                    ),
                    Session::Pop3(s) => s.resume(
                        Completion::Woke,
                        ctx,
                        out,
                        &mut self.services.pop_host(slot, conn.peer, now),
                    ),
                    Session::Pop2(s) => s.resume(
                        Completion::Woke,
                        ctx,
                        out,
                        &mut self.services.pop_host(slot, conn.peer, now),
                    ),
                }
                self.drive(slot, now);
                continue;
            }
            if conn.idle_deadline <= now || conn.cap_deadline <= now {
                let reason = if conn.cap_deadline <= now {
                    if conn.session.logged_in() {
                        "session time cap"
                    } else {
                        "login timeout"
                    }
                } else {
                    "idle timeout"
                };
                self.services.session_ended(slot, &mut conn.session);
                let out = conn.output.get_or_insert_with(|| self.pool.take_out());
                if out.free() >= limits::REPLY_RESERVE {
                    match &mut conn.session {
                        Session::Smtp(s) => s.on_timeout(out),
                        Session::Pop3(s) => s.on_timeout(out),
                        Session::Pop2(s) => s.on_timeout(out),
                    }
                }
                conn.close_reason = reason;
                self.start_closing(slot, reason, now);
                self.drive(slot, now);
                continue;
            }
            self.arm(slot);
        }
    }
}

/// One poll event, copied out of the poll's buffer so that the poll can be asked again while
/// the batch is handled (`Reactor::handle_batch`).
#[derive(Clone, Copy)]
struct Ready {
    token: Token,
    /// Readable, or closed for reading, or in error: a read will tell which.
    readable: bool,
    read_closed: bool,
    writable: bool,
}

impl Ready {
    fn of(e: &mio::event::Event) -> Ready {
        Ready {
            token: e.token(),
            readable: e.is_readable() || e.is_read_closed() || e.is_error(),
            read_closed: e.is_read_closed() || e.is_error(),
            writable: e.is_writable() || e.is_write_closed() || e.is_error(),
        }
    }
}

/// Socket reads and writes left to one `drive` call (`limits::IO_PER_DRIVE`), and the time
/// (`limits::DRIVE_SLICE`): a client pipelining thousands of one-line commands (a POP3 DELE
/// of every message) fills few reads, and 32 of them kept the reactor for 2.7 ms.
struct IoBudget {
    left: usize,
    until: Instant,
}

impl IoBudget {
    fn new() -> IoBudget {
        IoBudget {
            left: limits::IO_PER_DRIVE,
            until: Instant::now() + limits::DRIVE_SLICE,
        }
    }

    /// One read or write is made.
    fn take(&mut self) {
        self.left = self.left.saturating_sub(1);
    }

    /// None left: the connection waits for the next turn.
    fn spent(&self) -> bool {
        self.left == 0 || Instant::now() >= self.until
    }
}

/// A session's `Next::AwaitAuth`: the services decide at once where no hashing is needed
/// (throttled, a remembered success) and the verdict is returned; otherwise the check goes to
/// the executor under the connection's id and None is returned. A check the executor refuses
/// is a temporary failure (`Full`, `Gone`) or, for a password too long to be right, a failure.
fn begin_check(
    services: &mut Services,
    exec: &mut Option<Executor>,
    checks: &mut HashMap<u64, Check>,
    (slot, id, peer): (usize, u64, SocketAddr),
    session: &mut Session,
    now: Instant,
) -> Option<AuthVerdict> {
    let (proto, request) = match session {
        Session::Pop3(s) => ("pop3", s.take_auth()),
        Session::Pop2(s) => ("pop2", s.take_auth()),
        // The mechanism travels in the request (`AuthRequest::mechanism`) into the log lines.
        Session::Smtp(s) => ("smtp", s.take_auth()),
    };
    let ip = peer.ip();
    let Some(request) = request else {
        warn!("{proto}: a session awaited a password check it did not ask for");
        return Some(AuthVerdict::Unavailable);
    };
    let (pending, op) = match services.auth_begin(proto, &request, ip, now) {
        AuthStart::Done(verdict) => return Some(verdict),
        AuthStart::Check(pending, op) => (pending, op),
    };
    drop(request);
    let Some(exec) = exec.as_mut() else {
        return Some(services.auth_finish(pending, Err(Errno(libc::ENXIO)), ip, now));
    };
    match exec.submit(id, op) {
        Ok(()) => {
            checks.insert(
                id,
                Check {
                    slot,
                    id,
                    ip,
                    pending,
                },
            );
            None
        }
        Err(rejected) => {
            let result = match rejected.reason {
                Reject::TooLarge => Ok(Outcome::Verified(false)),
                Reject::Full => Err(Errno(libc::EAGAIN)),
                Reject::Gone => Err(Errno(libc::EPIPE)),
            };
            if let DiskOp::VerifyPassword { mut password, .. } = rejected.op {
                password.fill(0);
            }
            Some(services.auth_finish(pending, result, ip, now))
        }
    }
}

/// Logged in by a check's verdict: the login deadline gives way to the whole-session cap (as
/// in `drive`, where the PASS line itself was consumed before the verdict came).
/// The connection in `slot` if it is still the one (`id`) that waits in `phase` for a
/// completion, made active again; None if it left or moved on (the completion is dropped).
fn resumable(conns: &mut [Option<Conn>], slot: usize, id: u64, phase: Phase) -> Option<&mut Conn> {
    let conn = conns.get_mut(slot)?.as_mut()?;
    if conn.id != id || conn.phase != phase {
        return None;
    }
    conn.phase = Phase::Active;
    Some(conn)
}

fn lift_login_deadline(conn: &mut Conn) {
    let full_cap = conn.opened + limits::POP_SESSION_CAP;
    if conn.cap_deadline < full_cap && conn.session.logged_in() {
        conn.cap_deadline = full_cap;
    }
}

/// Resumes a session with the verdict of its password check.
fn resume_auth(
    session: &mut Session,
    verdict: AuthVerdict,
    ctx: Ctx,
    out: &mut OutBuf,
    (services, slot, peer): (&mut Services, usize, SocketAddr),
) {
    let c = Completion::Auth(verdict);
    let now = ctx.now;
    match session {
        Session::Pop3(s) => s.resume(c, ctx, out, &mut services.pop_host(slot, peer, now)),
        Session::Pop2(s) => s.resume(c, ctx, out, &mut services.pop_host(slot, peer, now)),
        Session::Smtp(s) => s.resume(c, ctx, out, &mut services.smtp_host(slot, peer, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drive_ends_when_its_time_is_used_even_with_reads_and_writes_left() {
        let mut io = IoBudget::new();
        io.take();
        assert!(!io.spent(), "one of 32 taken, no time used");
        io.until = Instant::now();
        assert!(io.spent(), "the slice is used");
        let mut io = IoBudget::new();
        (0..limits::IO_PER_DRIVE).for_each(|_| io.take());
        assert!(io.spent(), "every read and write taken");
    }

    #[test]
    fn every_source_has_its_own_token() {
        let special = [
            SIGNAL_TOKEN,
            EXEC_TOKEN,
            HELPER_TOKEN,
            DIRECTORY_TOKEN,
            PICKUP_TOKEN,
        ];
        for (i, a) in special.iter().enumerate() {
            assert!(
                !ControlServer::owns(*a),
                "{a:?} is also the control socket's"
            );
            assert!(
                a.0 < LISTENER_BASE || a.0 >= CONN_BASE + 10_000_000,
                "{a:?} in a range"
            );
            for b in &special[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn cand(
        slot: usize,
        proto: Proto,
        from_address: usize,
        idle_secs: u64,
        t0: Instant,
    ) -> Candidate {
        Candidate {
            slot,
            proto,
            from_address,
            idle_since: t0 - Duration::from_secs(idle_secs),
        }
    }

    #[test]
    fn nothing_evictable_means_no_victim() {
        assert_eq!(choose_victim(std::iter::empty()), None);
    }

    #[test]
    fn an_idle_pop3_crowd_makes_room_out_of_its_own_ranks() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        // 511 idle POP3 connections from 32 addresses, one idle SMTP session (idle longest).
        let mut v: Vec<Candidate> = (0..511)
            .map(|i| cand(i, Proto::Pop3, 16, 60 + (i as u64 % 7), t0))
            .collect();
        v.push(cand(511, Proto::Smtp, 1, 600, t0));
        let victim = choose_victim(v.iter().copied()).unwrap();
        assert_eq!(v[victim].proto, Proto::Pop3);
        assert_eq!(
            v[victim].idle_since,
            t0 - Duration::from_secs(66),
            "longest idle of the crowd"
        );
        // Even a lone idle POP3 client beside a larger idle SMTP crowd is safe.
        let mut w: Vec<Candidate> = (0..3).map(|i| cand(i, Proto::Smtp, 3, 10, t0)).collect();
        w.push(cand(3, Proto::Pop3, 1, 500, t0));
        let victim = choose_victim(w.iter().copied()).unwrap();
        assert_eq!(w[victim].proto, Proto::Smtp);
    }

    #[test]
    fn within_a_protocol_the_busiest_address_loses_first_then_the_longest_idle() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let v = [
            cand(0, Proto::Smtp, 1, 900, t0),
            cand(1, Proto::Smtp, 5, 10, t0),
            cand(2, Proto::Smtp, 5, 20, t0),
            cand(3, Proto::Pop2, 9, 999, t0),
        ];
        assert_eq!(choose_victim(v.iter().copied()), Some(2));
        let v = [
            cand(0, Proto::Pop3, 2, 5, t0),
            cand(1, Proto::Pop3, 2, 50, t0),
        ];
        assert_eq!(choose_victim(v.iter().copied()), Some(1));
    }
}
