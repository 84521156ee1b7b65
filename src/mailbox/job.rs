//! The POP mailbox work whose cost grows with the mailbox, as requests to the disk executor
//! in bounded pieces, so a session opening or emptying a 100,000-message Maildir never makes
//! another client wait: the session is answered when its job ends.
//!
//! - Opening (after the password check): the lock and the Maildir's directories are taken on
//!   the reactor (`Mailbox::lock`, a fixed handful of calls); then, in the executor, the
//!   Maildir, `new/` and `cur/` are opened again as executor handles (`O_NOFOLLOW`, each
//!   relative to the one before: the `crate::dirfd` rule), `new/` and `cur/` are listed in
//!   batches (`ReadDir` with a cursor), and every message without a usable `W=` is counted
//!   (`WireSize`, up to `limits::EXEC_WIRE_SIZE_BATCH` files of one directory a request).
//!   Nothing is renamed: a message in `new/` is served from there, so an
//!   opening costs a listing, not a rename per new message.
//! - QUIT's UPDATE: the same handles are opened again, the marked messages unlinked where they
//!   are, each directory that lost one synced, and every message of the snapshot still in
//!   `new/` that was not deleted moved to `cur/` with the `:2,` suffix (`RenameNoReplace`: a
//!   name already taken in `cur/` leaves it in `new/`), as qmail-pop3d does: it has been seen
//!   by a client now. An unlink that fails is counted and reported, the others go on; a move
//!   that fails is only logged (the message stays in `new/`, where the next login finds it).
//!   The moves need no sync: one undone by a crash leaves the message in `new/`. The lock is
//!   released when the job ends, not before.
//!
//! `Jobs` holds every job, tags their operations (`TAG_BIT` set, so the reactor tells them from
//! password checks), and submits at most `limits::MAILBOX_OPS_PER_TURN` operations per
//! `pump` (one per reactor turn), each job with at most `limits::MAILBOX_IN_FLIGHT` in flight,
//! and one while any other work is in the executor (which serves in order: a client's commit
//! waits behind one mailbox operation, never a queue of them), all
//! of a turn's in one submission to the kernel (`Executor::batch`). The work left on the
//! reactor per turn is that many completions plus one step (`limits::MAILBOX_CPU_STEPS_PER_TURN`)
//! of the work that grows with the mailbox and needs no disk: ordering an opening's snapshot
//! (`stepsort`), building it, and freeing a job's list of messages, each a few hundred µs at
//! most. A job whose connection ended is detached: an opening is cut short (its
//! operations in flight are awaited, its handles closed, the lock dropped), an UPDATE runs to
//! its end, since the client asked for it.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::path::Path;

use log::{info, warn};

use super::stepsort::StepSort;
use super::{Mailbox, Message, Sub, temporary};
use crate::exec::{Completion, DiskOp, Errno, Executor, Handle, Outcome, Reject};
use crate::limits;
use crate::mail::{MailboxDone, MailboxError, MessageInfo};
use crate::maildir::cur_name;

/// Set in every tag of a mailbox job's operation (connection ids, the password checks' tags,
/// never reach it).
pub const TAG_BIT: u64 = 1 << 63;

/// Is this completion a mailbox job's?
pub fn owns(tag: u64) -> bool {
    tag & TAG_BIT != 0
}

const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// What an operation in flight was for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    OpenUser,
    OpenSub(Sub),
    List(Sub),
    /// Moving snapshot message `i` from `new/` to `cur/` (UPDATE).
    Move(usize),
    /// Counting the messages of `first..end` in `sub` that need it (one `WireSize` batch).
    Size {
        sub: Sub,
        first: usize,
        end: usize,
    },
    /// Unlinking snapshot message `i`.
    Unlink(usize),
    Sync,
    Close,
    /// Reading part of the message being sent into the page cache.
    Warm,
    /// Counting one message for POP2 (`WireSize` of one file in a directory of the mailbox's).
    Measure,
}

#[derive(Debug)]
enum Phase {
    OpenUser {
        sent: bool,
    },
    OpenSubs {
        sent: u8,
    },
    /// `cursor`: the next batch to ask for (None while one is in flight, or at the end).
    List {
        sub: Sub,
        cursor: Option<u64>,
    },
    Move {
        next: usize,
    },
    /// New messages first, then those in `cur/`: a batch names files of one directory.
    Size {
        sub: Sub,
        next: usize,
    },
    /// Work on the reactor, a step a turn: ordering the snapshot (`order`), then taking its
    /// messages in that order (`next`: the next position of `order` to take).
    Sort,
    Build {
        next: usize,
    },
    Unlink {
        next: usize,
    },
    Sync {
        sent: bool,
    },
    Close,
    /// Freeing the job's list of messages, a step a turn (one allocation each: 60,000 of them
    /// freed at once held the reactor for 3 ms).
    Release,
    /// A warm-up or a count: its one operation, on a descriptor the mailbox holds (the
    /// message's file, and the part to read; or its directory, and its name).
    Single {
        purpose: Purpose,
        op: Option<DiskOp>,
    },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Open,
    Update,
    Warm,
    Size,
}

/// One opening or UPDATE of one mailbox (sans-I/O: it says which operation comes next and is
/// told how each ended).
pub struct Job {
    kind: Kind,
    phase: Phase,
    /// The locked mailbox (its reactor-side directories and the flock); its snapshot is filled
    /// in at the end of an opening.
    mailbox: Mailbox,
    user: Option<Handle>,
    new: Option<Handle>,
    cur: Option<Handle>,
    /// An operation the executor had no room for, to submit first next time.
    retry: Option<(Purpose, DiskOp)>,
    in_flight: usize,
    /// UPDATE: the snapshot indices of the messages in `new/` that stay (moved to `cur/`).
    kept_new: Vec<usize>,
    /// Opening: the messages in listing order; `measure[i]`: its size must be counted (no
    /// `W=`, or a type the listing did not give).
    messages: Vec<Message>,
    measure: Vec<bool>,
    sizes: Vec<Option<u64>>,
    /// Opening: the delivery order being found, as (leading seconds, listing index) keys.
    order: StepSort<(u64, usize)>,
    /// Opening: the snapshot, in delivery order, and what the session is told of it.
    snapshot: Vec<Message>,
    infos: Vec<MessageInfo>,
    /// UPDATE: the snapshot indices to remove, and those whose removal failed.
    deleted: Vec<usize>,
    failed: usize,
    /// Which of `cur/`, `new/` lost a file (and so must be synced).
    touched: [bool; 2],
    /// The first failure: an opening ends with it; an UPDATE reports it at the end.
    error: Option<MailboxError>,
    /// The connection went away: an opening stops (an UPDATE does not).
    cancelled: bool,
    /// POP2's count: the snapshot index of the message, and its size once it came.
    measuring: usize,
    measured: Option<u64>,
}

impl Job {
    /// Locks `<root>/<user>` on the reactor and prepares the opening (`Err`: answer at once).
    pub fn open(root: &Path, user: &str) -> Result<Job, MailboxError> {
        Ok(Job::new(
            Kind::Open,
            Mailbox::lock(root, user)?,
            Vec::new(),
            Vec::new(),
        ))
    }

    /// QUIT's UPDATE of an open mailbox: remove the messages at these snapshot indices.
    pub fn update(mailbox: Mailbox, deleted: &[usize]) -> Job {
        let mut deleted = deleted.to_vec();
        deleted.sort_unstable();
        deleted.dedup();
        deleted.retain(|&i| i < mailbox.messages.len());
        let kept_new = (0..mailbox.messages.len())
            .filter(|i| mailbox.messages[*i].sub == Sub::New && deleted.binary_search(i).is_err())
            .collect();
        Job::new(Kind::Update, mailbox, deleted, kept_new)
    }

    /// A read of the message being sent into the page cache (`Mailbox::take_warm`): the part
    /// a read without waiting could not get. Nothing to read ends at once.
    pub fn warm(mut mailbox: Mailbox) -> Job {
        let op = mailbox.take_warm().map(|(file, offset, len)| DiskOp::Warm {
            file: Handle::own(file),
            offset,
            len,
        });
        // (`new` would close the message file, which the read needs.)
        let current = mailbox.current.take();
        let mut job = Job::new(Kind::Warm, mailbox, Vec::new(), Vec::new());
        job.mailbox.current = current;
        job.phase = match op {
            Some(op) => Phase::Single {
                purpose: Purpose::Warm,
                op: Some(op),
            },
            None => Phase::Done,
        };
        job
    }

    /// POP2's count of snapshot message `index` as it is sent (a `WireSize` of its name in
    /// the mailbox's own `new/` or `cur/`, run by the helper process: it reads the whole file).
    pub fn size(mut mailbox: Mailbox, index: usize) -> Job {
        let op = mailbox
            .message_at(index)
            .map(|(dir, name)| DiskOp::WireSize {
                dir: Handle::own(dir.as_file()),
                paths: vec![cstring(name)],
            });
        // (Kept open: the RETR that usually follows reads it.)
        let current = mailbox.current.take();
        let mut job = Job::new(Kind::Size, mailbox, Vec::new(), Vec::new());
        job.mailbox.current = current;
        job.measuring = index;
        job.phase = match op {
            Ok(op) => Phase::Single {
                purpose: Purpose::Measure,
                op: Some(op),
            },
            Err(e) => {
                job.error = Some(MailboxError::Temporary(e.to_string()));
                Phase::Done
            }
        };
        job
    }

    fn new(kind: Kind, mut mailbox: Mailbox, deleted: Vec<usize>, kept_new: Vec<usize>) -> Job {
        mailbox.current = None;
        // Nothing to remove or move: no operation at all, the lock goes at once.
        let nothing = kind == Kind::Update && deleted.is_empty() && kept_new.is_empty();
        Job {
            kind,
            phase: if nothing {
                Phase::Done
            } else {
                Phase::OpenUser { sent: false }
            },
            mailbox,
            user: None,
            new: None,
            cur: None,
            retry: None,
            in_flight: 0,
            kept_new,
            messages: Vec::new(),
            measure: Vec::new(),
            sizes: Vec::new(),
            order: StepSort::new(Vec::new()),
            snapshot: Vec::new(),
            infos: Vec::new(),
            deleted,
            failed: 0,
            touched: [false, false],
            error: None,
            cancelled: false,
            measuring: 0,
            measured: None,
        }
    }

    /// All work is done and nothing is in flight.
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Done) && self.in_flight == 0 && self.retry.is_none()
    }

    fn handle(&self, sub: Sub) -> Option<Handle> {
        match sub {
            Sub::Cur => self.cur,
            Sub::New => self.new,
        }
    }

    fn path_of(&self, sub: Sub, name: &str) -> std::path::PathBuf {
        self.mailbox.dir.join(sub.dir()).join(name)
    }

    fn fail(&mut self, what: &str, path: &Path, e: Errno) {
        if self.error.is_none() {
            self.error = Some(temporary(what, path, &io::Error::from(e)));
        }
    }

    /// The next operation to submit, or None until a completion comes, until the next turn
    /// (`cpu_steps`, the steps of reactor work this turn still allows, is used up), or at the
    /// end.
    fn next_op(&mut self, cpu_steps: &mut usize) -> Option<(Purpose, DiskOp)> {
        if let Some(op) = self.retry.take() {
            return Some(op);
        }
        loop {
            if let Some(op) = self.op_of_phase() {
                return Some(op);
            }
            if self.in_flight > 0 || matches!(self.phase, Phase::Done) {
                return None;
            }
            let cpu = match self.phase {
                Phase::Sort | Phase::Build { .. } => !self.stopping(),
                Phase::Release => true,
                _ => false,
            };
            if cpu {
                if *cpu_steps == 0 {
                    return None;
                }
                *cpu_steps -= 1;
                if !self.cpu_step() {
                    return None;
                }
            }
            self.advance();
        }
    }

    /// An opening that failed or lost its client does no more than close its handles.
    fn stopping(&self) -> bool {
        self.kind == Kind::Open && (self.error.is_some() || self.cancelled)
    }

    /// Waits for nothing but a turn of the reactor (a `pump` now makes progress).
    fn runnable(&self) -> bool {
        self.in_flight == 0
    }

    /// One step of the reactor-side work of the phase; true when the phase's work is done.
    fn cpu_step(&mut self) -> bool {
        match self.phase {
            Phase::Sort => {
                let messages = &self.messages;
                // Delivery order (`Message::order`) with integer keys first: names are only
                // compared within a second.
                crate::turnstat::timed("mb.sort", || {
                    self.order.step(|a, b| {
                        a.0.cmp(&b.0)
                            .then_with(|| messages[a.1].order(&messages[b.1]))
                            .then(a.1.cmp(&b.1))
                    })
                })
            }
            Phase::Build { next } => crate::turnstat::timed("mb.build", || self.build_step(next)),
            Phase::Release => {
                fn cut<T>(list: &mut Vec<T>) -> bool {
                    list.truncate(list.len().saturating_sub(limits::MAILBOX_RELEASE_STEP));
                    list.is_empty()
                }
                match self.kind {
                    // The snapshot an UPDATE was given.
                    Kind::Update => cut(&mut self.mailbox.messages),
                    Kind::Warm | Kind::Size => true,
                    // An opening's own list (its names taken into the snapshot unless it
                    // stopped), and a snapshot that goes to no one.
                    Kind::Open if self.stopping() => {
                        cut(&mut self.messages) & cut(&mut self.snapshot) & cut(&mut self.infos)
                    }
                    Kind::Open => cut(&mut self.messages),
                }
            }
            _ => true,
        }
    }

    /// Takes the next `limits::MAILBOX_BUILD_STEP` messages in delivery order into the
    /// snapshot, leaving out those that turned out not to be messages.
    fn build_step(&mut self, next: usize) -> bool {
        let order = self.order.items();
        let end = order.len().min(next + limits::MAILBOX_BUILD_STEP);
        for &(_, i) in &order[next..end] {
            let (Some(size), Some(m)) = (self.sizes[i], self.messages.get_mut(i)) else {
                continue;
            };
            let m = Message {
                file: std::mem::take(&mut m.file),
                ..*m
            };
            self.infos.push(MessageInfo {
                uid: m.uid().into(),
                size,
            });
            self.snapshot.push(m);
        }
        self.phase = Phase::Build { next: end };
        end == order.len()
    }

    fn op_of_phase(&mut self) -> Option<(Purpose, DiskOp)> {
        if self.stopping() && !matches!(self.phase, Phase::Close) {
            return None;
        }
        match &mut self.phase {
            Phase::OpenUser { sent } if !*sent => {
                *sent = true;
                let path = CString::new(self.mailbox.dir.as_os_str().as_encoded_bytes()).ok();
                let Some(path) = path else {
                    self.error = Some(MailboxError::Temporary("a NUL in the path".into()));
                    return None;
                };
                Some((
                    Purpose::OpenUser,
                    DiskOp::Open {
                        dir: None,
                        path,
                        flags: DIR_FLAGS,
                        mode: 0,
                    },
                ))
            }
            Phase::OpenSubs { sent } if *sent < 2 => {
                let sub = if *sent == 0 { Sub::New } else { Sub::Cur };
                *sent += 1;
                Some((
                    Purpose::OpenSub(sub),
                    DiskOp::Open {
                        dir: self.user,
                        path: cstring(sub.dir()),
                        flags: DIR_FLAGS,
                        mode: 0,
                    },
                ))
            }
            Phase::List { sub, cursor } => {
                let sub = *sub;
                let c = cursor.take()?;
                let dir = self.handle(sub)?;
                Some((
                    Purpose::List(sub),
                    DiskOp::ReadDir {
                        dir,
                        cursor: c,
                        max: limits::EXEC_READDIR_MAX_NAMES,
                    },
                ))
            }
            Phase::Move { next } => {
                let i = *self.kept_new.get(*next)?;
                *next += 1;
                let name = &self.mailbox.messages.get(i)?.file;
                Some((
                    Purpose::Move(i),
                    DiskOp::RenameNoReplace {
                        from_dir: self.new,
                        from: cstring(name),
                        to_dir: self.cur,
                        to: cstring(&cur_name(name)),
                    },
                ))
            }
            Phase::Size { .. } => self.next_size_batch(),
            Phase::Unlink { next } => {
                let i = *self.deleted.get(*next)?;
                *next += 1;
                let m = self.mailbox.messages.get(i)?;
                let dir = match m.sub {
                    Sub::Cur => self.cur,
                    Sub::New => self.new,
                };
                // unlinkat never follows: a symlink put in place of a message loses only
                // itself.
                Some((
                    Purpose::Unlink(i),
                    DiskOp::Unlink {
                        dir,
                        path: cstring(&m.file),
                    },
                ))
            }
            Phase::Sync { sent } if !*sent => {
                // The unlinks are durable once their directory is synced: one op per
                // directory that lost a file (at most two, so both are returned in turn).
                if self.touched[0] {
                    self.touched[0] = false;
                    return self.cur.map(|file| (Purpose::Sync, DiskOp::Fsync { file }));
                }
                if self.touched[1] {
                    self.touched[1] = false;
                    return self.new.map(|file| (Purpose::Sync, DiskOp::Fsync { file }));
                }
                *sent = true;
                None
            }
            Phase::Close => {
                let file = self
                    .user
                    .take()
                    .or_else(|| self.new.take())
                    .or_else(|| self.cur.take())?;
                Some((Purpose::Close, DiskOp::Close { file }))
            }
            // (A warm-up or count whose client left is not started.)
            Phase::Single { purpose, op } if !self.cancelled => op.take().map(|op| (*purpose, op)),
            _ => None,
        }
    }

    /// The next `WireSize` batch: up to `limits::EXEC_WIRE_SIZE_BATCH` messages of one
    /// directory that need counting, `new/` first, then `cur/`.
    fn next_size_batch(&mut self) -> Option<(Purpose, DiskOp)> {
        loop {
            let Phase::Size { sub, next: first } = self.phase else {
                return None;
            };
            let mut paths = Vec::new();
            let mut end = first;
            while end < self.messages.len() && paths.len() < limits::EXEC_WIRE_SIZE_BATCH {
                if self.measure[end] && self.messages[end].sub == sub {
                    paths.push(cstring(&self.messages[end].file));
                }
                end += 1;
            }
            self.phase = Phase::Size { sub, next: end };
            if !paths.is_empty() {
                let dir = self.handle(sub)?;
                return Some((
                    Purpose::Size { sub, first, end },
                    DiskOp::WireSize { dir, paths },
                ));
            }
            if sub == Sub::Cur {
                return None;
            }
            self.phase = Phase::Size {
                sub: Sub::Cur,
                next: 0,
            };
        }
    }

    /// The current phase has nothing more to submit and nothing in flight: the next one.
    fn advance(&mut self) {
        // An opening stops at its first failure or when its client is gone; an UPDATE only
        // when it cannot get its directories (it removes what it can, for a client that
        // asked for it).
        let opening = matches!(self.phase, Phase::OpenUser { .. } | Phase::OpenSubs { .. });
        let stop = match self.kind {
            Kind::Open => self.error.is_some() || self.cancelled,
            Kind::Update => self.error.is_some() && opening,
            Kind::Warm | Kind::Size => false,
        };
        self.phase = match self.phase {
            Phase::Close => Phase::Release,
            Phase::Release | Phase::Done | Phase::Single { .. } => Phase::Done,
            _ if stop => Phase::Close,
            Phase::OpenUser { .. } => Phase::OpenSubs { sent: 0 },
            Phase::OpenSubs { .. } => match self.kind {
                Kind::Open => Phase::List {
                    sub: Sub::New,
                    cursor: Some(0),
                },
                Kind::Update | Kind::Warm | Kind::Size => Phase::Unlink { next: 0 },
            },
            Phase::List { sub: Sub::New, .. } => Phase::List {
                sub: Sub::Cur,
                cursor: Some(0),
            },
            Phase::List { sub: Sub::Cur, .. } => Phase::Size {
                sub: Sub::New,
                next: 0,
            },
            Phase::Size { .. } => {
                let keys = self.messages.iter().enumerate();
                let keys = keys.map(|(i, m)| (m.seconds.unwrap_or(u64::MAX), i));
                self.order = StepSort::new(keys.collect());
                Phase::Sort
            }
            Phase::Sort => {
                self.snapshot.reserve_exact(self.messages.len());
                self.infos.reserve_exact(self.messages.len());
                Phase::Build { next: 0 }
            }
            Phase::Build { .. } => Phase::Close,
            Phase::Unlink { .. } => Phase::Move { next: 0 },
            Phase::Move { .. } => Phase::Sync { sent: false },
            Phase::Sync { .. } => Phase::Close,
        };
    }

    /// A listing batch: keeps regular, non-dot files with UTF-8 names (a `DT_UNKNOWN` entry is
    /// kept and counted, which refuses anything but a regular file).
    fn listed(&mut self, sub: Sub, names: Vec<Vec<u8>>, kinds: Vec<u8>) {
        for (i, name) in names.into_iter().enumerate() {
            let kind = kinds.get(i).copied().unwrap_or(libc::DT_UNKNOWN);
            if kind != libc::DT_REG && kind != libc::DT_UNKNOWN {
                continue;
            }
            let name = match String::from_utf8(name) {
                Ok(n) => n,
                Err(e) => {
                    warn!(
                        "{}: skipping {:?}: the name is not UTF-8",
                        self.mailbox.dir.join(sub.dir()).display(),
                        String::from_utf8_lossy(e.as_bytes())
                    );
                    continue;
                }
            };
            if name.starts_with('.') {
                continue;
            }
            self.push_message(sub, name, kind);
        }
    }

    fn push_message(&mut self, sub: Sub, name: String, kind: u8) {
        let m = Message::new(sub, name);
        let size = m.size_from_name();
        self.measure
            .push(kind == libc::DT_UNKNOWN || size.is_none());
        self.sizes.push(size);
        self.messages.push(m);
    }

    /// How the operation for `purpose` ended.
    fn complete(&mut self, purpose: Purpose, result: Result<Outcome, Errno>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match (purpose, result) {
            (Purpose::OpenUser, Ok(Outcome::Opened(h))) => self.user = Some(h),
            (Purpose::OpenSub(Sub::New), Ok(Outcome::Opened(h))) => self.new = Some(h),
            (Purpose::OpenSub(Sub::Cur), Ok(Outcome::Opened(h))) => self.cur = Some(h),
            (Purpose::OpenUser, Err(e)) => {
                let path = self.mailbox.dir.clone();
                self.fail("cannot open", &path, e);
            }
            (Purpose::OpenSub(sub), Err(e)) => {
                let path = self.mailbox.dir.join(sub.dir());
                self.fail("cannot open", &path, e);
            }
            (Purpose::List(sub), Ok(Outcome::Names { names, kinds, next })) => {
                self.listed(sub, names, kinds);
                if let Phase::List { cursor, .. } = &mut self.phase {
                    *cursor = if self.cancelled { None } else { next };
                }
            }
            (Purpose::List(sub), Err(e)) => {
                let path = self.mailbox.dir.join(sub.dir());
                self.fail("cannot list", &path, e);
            }
            (Purpose::Move(_), Ok(_)) => {}
            // Another reader moved or removed it since the listing.
            (Purpose::Move(_), Err(Errno(libc::ENOENT))) => {}
            (Purpose::Move(i), Err(e)) => {
                let Some(name) = self.mailbox.messages.get(i).map(|m| m.file.clone()) else {
                    return;
                };
                if e.0 == libc::EEXIST {
                    warn!(
                        "{}: {} already exists in cur/; leaving {name} in new/",
                        self.mailbox.dir.join("cur").display(),
                        cur_name(&name)
                    );
                } else {
                    warn!(
                        "cannot move {} to cur/: {e}; leaving it in new/",
                        self.path_of(Sub::New, &name).display()
                    );
                }
            }
            (Purpose::Size { sub, first, end }, Ok(Outcome::Sizes(sizes))) => {
                let counted: Vec<usize> = (first..end.min(self.messages.len()))
                    .filter(|&i| self.measure[i] && self.messages[i].sub == sub)
                    .collect();
                let mut sizes = sizes.into_iter();
                for i in counted {
                    match sizes.next().unwrap_or(Err(Errno(libc::EIO))) {
                        Ok(n) => self.sizes[i] = Some(n),
                        // Removed since the listing, a symlink, or not a regular file: not
                        // a message.
                        Err(Errno(libc::ENOENT | libc::ELOOP | libc::EINVAL)) => {
                            self.sizes[i] = None
                        }
                        Err(e) => {
                            let path = self.path_of(sub, &self.messages[i].file);
                            self.fail("cannot read", &path, e);
                        }
                    }
                }
            }
            (Purpose::Size { sub, .. }, Err(e)) => {
                let path = self.mailbox.dir.join(sub.dir());
                self.fail("cannot count the messages in", &path, e);
            }
            // Someone else removed it: the outcome the client asked for.
            (Purpose::Unlink(i), Ok(_) | Err(Errno(libc::ENOENT))) => {
                if let Some(m) = self.mailbox.messages.get(i) {
                    self.touched[usize::from(m.sub == Sub::New)] = true;
                }
            }
            (Purpose::Unlink(i), Err(e)) => {
                self.failed += 1;
                if let Some(m) = self.mailbox.messages.get(i) {
                    let path = self.path_of(m.sub, &m.file);
                    self.fail("cannot delete", &path, e);
                }
            }
            (Purpose::Sync, Err(e)) => {
                let path = self.mailbox.dir.clone();
                self.fail("cannot sync a directory of", &path, e);
            }
            (Purpose::Close, _) | (Purpose::Sync, Ok(_)) => {}
            // Either way the next read may wait (`Mailbox::warmed`), and says what failed.
            (Purpose::Warm, r) => {
                if let Err(e) = r {
                    info!(
                        "{}: reading a message in failed: {e}",
                        self.mailbox.dir.display()
                    );
                }
                self.mailbox.warmed();
            }
            (Purpose::Measure, Ok(Outcome::Sizes(sizes))) => match sizes.first() {
                Some(Ok(size)) => self.measured = Some(*size),
                Some(Err(e)) => self.measure_failed(*e),
                None => self.measure_failed(Errno(libc::EIO)),
            },
            (Purpose::Measure, Err(e)) => self.measure_failed(e),
            (p, Ok(other)) => {
                warn!("mailbox: {p:?} answered {other:?}");
                self.error.get_or_insert_with(|| {
                    MailboxError::Temporary(format!("{p:?} answered {other:?}"))
                });
            }
        }
    }

    /// The outcome of a finished job (the mailbox goes with an opening's success; otherwise
    /// it is dropped here, which releases the lock).
    pub fn result(mut self) -> JobResult {
        match self.kind {
            Kind::Open => {
                if let Some(e) = self.error.take() {
                    return JobResult::Opened(Err(e));
                }
                let mut mailbox = self.mailbox;
                if !self.snapshot.iter().any(|m| m.sub == Sub::New) {
                    mailbox.new = None;
                }
                mailbox.messages = self.snapshot;
                JobResult::Opened(Ok((mailbox, self.infos)))
            }
            Kind::Update => {
                let total = self.deleted.len();
                match self.error.take() {
                    None => JobResult::Updated(Ok(())),
                    Some(MailboxError::Temporary(why)) => {
                        JobResult::Updated(Err(MailboxError::Temporary(format!(
                            "{} of {total} marked messages not removed; first: {why}",
                            self.failed
                        ))))
                    }
                    Some(e) => JobResult::Updated(Err(e)),
                }
            }
            // A job with nothing to read, or one whose read never went: the next read may wait.
            Kind::Warm => {
                let mut mailbox = self.mailbox;
                mailbox.warmed();
                JobResult::Warmed(Some(mailbox))
            }
            Kind::Size => {
                let size = match (self.error.take(), self.measured) {
                    (Some(e), _) => Err(e),
                    (None, Some(size)) => Ok(size),
                    (None, None) => Err(MailboxError::Temporary("the count never ran".into())),
                };
                JobResult::Sized(Some(self.mailbox), size)
            }
        }
    }

    fn measure_failed(&mut self, e: Errno) {
        let path = match self.mailbox.messages.get(self.measuring) {
            Some(m) => self.path_of(m.sub, &m.file),
            None => self.mailbox.dir.clone(),
        };
        self.fail("cannot count", &path, e);
    }
}

fn cstring(s: &str) -> CString {
    // Names come from a directory listing or are constants: a NUL cannot be in them.
    CString::new(s).unwrap_or_default()
}

/// How a job ended.
pub enum JobResult {
    Opened(Result<(Mailbox, Vec<MessageInfo>), MailboxError>),
    Updated(Result<(), MailboxError>),
    /// The mailbox back, its message read in (None: there was no open mailbox).
    Warmed(Option<Mailbox>),
    /// The mailbox back (None: there was none) and POP2's count of one message.
    Sized(Option<Mailbox>, Result<u64, MailboxError>),
}

impl JobResult {
    /// What the session is told (an opened mailbox stays with the caller).
    pub fn split(self) -> (Option<Mailbox>, MailboxDone) {
        match self {
            JobResult::Opened(Ok((m, infos))) => (Some(m), MailboxDone::Opened(Ok(infos))),
            JobResult::Opened(Err(e)) => (None, MailboxDone::Opened(Err(e))),
            JobResult::Updated(r) => (None, MailboxDone::Updated(r)),
            JobResult::Warmed(m) => (m, MailboxDone::Warmed),
            JobResult::Sized(m, r) => (m, MailboxDone::Sized(r)),
        }
    }
}

struct Entry {
    slot: usize,
    conn: u64,
    job: Job,
    /// Its connection ended: the result goes to no one.
    detached: bool,
}

/// A finished job for a connection still there.
pub struct Finished {
    pub slot: usize,
    pub conn: u64,
    pub result: JobResult,
}

/// Every mailbox job in progress.
#[derive(Default)]
pub struct Jobs {
    jobs: HashMap<u64, Entry>,
    /// Operation tag → (job, what it is for).
    tags: HashMap<u64, (u64, Purpose)>,
    next_job: u64,
    next_tag: u64,
    /// Results decided without the executor (a lock refused), for the next `take_finished`.
    ready: Vec<Finished>,
    /// The executor said `Full` with this many operations in flight (others' too): wait until
    /// it holds fewer before trying again.
    blocked: Option<usize>,
}

impl Jobs {
    pub fn new() -> Jobs {
        Jobs::default()
    }

    /// Starts a job for the connection `conn` in `slot` (an opening that failed at once is
    /// answered so).
    pub fn start(&mut self, slot: usize, conn: u64, job: Result<Job, MailboxError>) {
        let job = match job {
            Ok(j) => j,
            Err(e) => return self.answer(slot, conn, JobResult::Opened(Err(e))),
        };
        self.next_job += 1;
        self.jobs.insert(
            self.next_job,
            Entry {
                slot,
                conn,
                job,
                detached: false,
            },
        );
    }

    /// Answers the connection `conn` in `slot` without a job (its request could not start).
    pub fn answer(&mut self, slot: usize, conn: u64, result: JobResult) {
        self.ready.push(Finished { slot, conn, result });
    }

    /// Jobs in progress or results not yet taken.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty() || !self.ready.is_empty()
    }

    /// A `pump` now would make progress (so the reactor must not wait for an event).
    pub fn runnable(&self) -> bool {
        !self.ready.is_empty()
            || self.blocked.is_none() && self.jobs.values().any(|e| e.job.runnable())
    }

    /// The connection in `slot` ended: its opening stops, its UPDATE goes on; no result is
    /// handed out for either.
    pub fn detach(&mut self, slot: usize) {
        for e in self.jobs.values_mut().filter(|e| e.slot == slot) {
            e.detached = true;
            e.job.cancelled = true;
        }
        self.ready.retain(|f| f.slot != slot);
    }

    /// A completion with `TAG_BIT` set.
    pub fn complete(&mut self, c: Completion) {
        let Some((id, purpose)) = self.tags.remove(&c.tag) else {
            return;
        };
        if let Some(e) = self.jobs.get_mut(&id) {
            e.job.complete(purpose, c.result);
        }
    }

    /// Submits the next operations: at most `limits::MAILBOX_OPS_PER_TURN` in all, and no job
    /// above `limits::MAILBOX_IN_FLIGHT` in flight. Without an executor every operation fails (`ENXIO`).
    pub fn pump(&mut self, exec: Option<&mut Executor>) {
        match exec {
            // One submission to the kernel for the whole batch (io_uring).
            Some(exec) => exec.batch(|exec| self.pump_into(Some(exec))),
            None => self.pump_into(None),
        }
    }

    fn pump_into(&mut self, mut exec: Option<&mut Executor>) {
        let mut budget = limits::MAILBOX_OPS_PER_TURN;
        let mut cpu_steps = limits::MAILBOX_CPU_STEPS_PER_TURN;
        if let (Some(level), Some(exec)) = (self.blocked, exec.as_deref())
            && exec.in_flight() >= level
        {
            return;
        }
        self.blocked = None;
        // Other work in the executor (a client's commit, a delivery's sync, a password check)
        // is served in order behind ours: while there is any, each job keeps one operation in
        // flight, so that work waits for one mailbox operation at most, never a queue of them.
        let ours: usize = self.jobs.values().map(|e| e.job.in_flight).sum();
        let others = exec
            .as_deref()
            .map_or(0, |x| x.in_flight().saturating_sub(ours));
        let cap = if others > 0 {
            1
        } else {
            limits::MAILBOX_IN_FLIGHT
        };
        let mut ids: Vec<u64> = self.jobs.keys().copied().collect();
        ids.sort_unstable();
        'jobs: for id in ids {
            let Some(e) = self.jobs.get_mut(&id) else {
                continue;
            };
            while budget > 0 && e.job.in_flight < cap {
                let Some((purpose, op)) = e.job.next_op(&mut cpu_steps) else {
                    break;
                };
                budget -= 1;
                e.job.in_flight += 1;
                let tag = TAG_BIT | self.next_tag;
                self.next_tag = (self.next_tag + 1) & !TAG_BIT;
                let Some(exec) = exec.as_deref_mut() else {
                    e.job.complete(purpose, Err(Errno(libc::ENXIO)));
                    continue;
                };
                // A warm-up or a count uses a descriptor of the reactor's (the message, or the
                // directory, the mailbox holds).
                let submitted = if matches!(purpose, Purpose::Warm | Purpose::Measure) {
                    exec.submit_own(tag, op)
                } else {
                    exec.submit(tag, op)
                };
                match submitted {
                    Ok(()) => {
                        self.tags.insert(tag, (id, purpose));
                    }
                    Err(rejected) => {
                        e.job.in_flight -= 1;
                        match rejected.reason {
                            Reject::Full => {
                                e.job.retry = Some((purpose, rejected.op));
                                // Nothing in flight at all cannot be full; retry next turn.
                                let level = exec.in_flight();
                                self.blocked = (level > 0).then_some(level);
                                break 'jobs;
                            }
                            Reject::Gone => {
                                e.job.in_flight += 1;
                                e.job.complete(purpose, Err(Errno(libc::EPIPE)));
                            }
                            Reject::TooLarge => {
                                e.job.in_flight += 1;
                                e.job.complete(purpose, Err(Errno(libc::ENAMETOOLONG)));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The jobs that ended, for connections still there (a detached one is dropped here,
    /// releasing its lock).
    pub fn take_finished(&mut self) -> Vec<Finished> {
        let mut out = std::mem::take(&mut self.ready);
        let done: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.job.finished())
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            let Some(e) = self.jobs.remove(&id) else {
                continue;
            };
            let result = e.job.result();
            if e.detached {
                if let JobResult::Updated(r) = &result {
                    info!("pop: UPDATE finished after its client left: {r:?}");
                }
                continue;
            }
            out.push(Finished {
                slot: e.slot,
                conn: e.conn,
                result,
            });
        }
        if self.jobs.is_empty() {
            self.tags.clear();
            self.jobs.shrink_to_fit();
            self.tags.shrink_to_fit();
        }
        out
    }
}

/// Runs one job to its end on `exec` (tests, and the synchronous `Mailbox::open`/`update`
/// kept for them): pump, wait, repeat.
#[cfg(test)]
pub fn run_to_end(job: Job, exec: &mut Executor) -> JobResult {
    let mut jobs = Jobs::new();
    jobs.start(0, 0, Ok(job));
    let mut done = Vec::new();
    loop {
        jobs.pump(Some(exec));
        exec.drain(&mut done);
        for c in done.drain(..) {
            jobs.complete(c);
        }
        if let Some(f) = jobs.take_finished().pop() {
            return f.result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turns (calls of `next_op` with one step allowed) an opening takes from its last
    /// listing to its end, with `n` messages whose sizes are all known from `W=`.
    fn cpu_turns(job: &mut Job) -> usize {
        let mut turns = 0;
        while !job.finished() {
            let mut steps = limits::MAILBOX_CPU_STEPS_PER_TURN;
            assert!(
                job.next_op(&mut steps).is_none(),
                "no handles: no operation"
            );
            turns += 1;
            assert!(turns < 100_000, "the opening does not end");
        }
        turns
    }

    /// An opening of an empty Maildir (its directory kept alive by the first half).
    fn opening() -> (tempfile::TempDir, Job) {
        let root = tempfile::tempdir().unwrap();
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.path().join("bob").join(sub)).unwrap();
        }
        let job = Job::open(root.path(), "bob").unwrap();
        (root, job)
    }

    #[test]
    fn a_large_snapshot_is_ordered_built_and_freed_one_step_a_turn() {
        let (_root, mut job) = opening();
        // Listing order is hash order: the numbers are scattered, eight messages share each
        // second (so names decide within it), and a few names have no leading seconds.
        let mut expected = Vec::new();
        for i in 0..10_000u64 {
            let x = i * 7919 % 10_000;
            let name = format!("{}.M{x:05}P1.h,S=3,W=4", 1000 + x / 8);
            let sub = if i % 3 == 0 { Sub::New } else { Sub::Cur };
            expected.push((1000 + x / 8, name.clone()));
            job.push_message(sub, name, libc::DT_REG);
        }
        for i in 0..5 {
            let name = format!("x{i}.h,S=3,W=4");
            expected.push((u64::MAX, name.clone()));
            job.push_message(Sub::New, name, libc::DT_REG);
        }
        expected.sort();
        let n = expected.len();
        job.phase = Phase::Size {
            sub: Sub::Cur,
            next: n,
        };
        let turns = cpu_turns(&mut job);
        let JobResult::Opened(Ok((mailbox, infos))) = job.result() else {
            panic!("not opened");
        };
        let got: Vec<&str> = infos.iter().map(|m| m.uid.as_ref()).collect();
        let want: Vec<&str> = expected.iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(got, want);
        assert!(infos.iter().all(|m| m.size == 4));
        let files: Vec<&str> = mailbox.messages.iter().map(|m| m.file.as_str()).collect();
        assert_eq!(
            files, want,
            "the snapshot in the order the session numbers it"
        );
        // One step a turn: each chunk sorted, each merge step, each build and release step
        // took a turn of its own.
        let mut passes = 0;
        let mut width = limits::SORT_CHUNK;
        while width < n {
            passes += 1;
            width *= 2;
        }
        let steps = n.div_ceil(limits::SORT_CHUNK)
            + (passes * n).div_ceil(limits::SORT_MERGE_STEP)
            + n.div_ceil(limits::MAILBOX_BUILD_STEP)
            + n.div_ceil(limits::MAILBOX_RELEASE_STEP);
        assert_eq!(turns, steps);
    }

    #[test]
    fn an_opening_cut_short_while_building_frees_what_it_built_in_steps_too() {
        let (_root, mut job) = opening();
        let n = 3 * limits::MAILBOX_RELEASE_STEP;
        for i in 0..n {
            job.push_message(
                Sub::New,
                format!("{}.M{i}.h,S=3,W=4", 1000 + i),
                libc::DT_REG,
            );
        }
        job.phase = Phase::Size {
            sub: Sub::Cur,
            next: n,
        };
        let mut steps = usize::MAX;
        while !matches!(job.phase, Phase::Build { next } if next > n / 2) {
            assert!(job.next_op(&mut steps).is_none());
        }
        // The client went away half-way through the building.
        job.cancelled = true;
        let built = job.snapshot.len();
        assert!(built > limits::MAILBOX_RELEASE_STEP && job.infos.len() == built);
        let turns = cpu_turns(&mut job);
        assert!(job.messages.is_empty() && job.snapshot.is_empty() && job.infos.is_empty());
        assert_eq!(
            turns,
            n.div_ceil(limits::MAILBOX_RELEASE_STEP),
            "the longest list's steps"
        );
    }
}
