//! Test support for the POP sessions: an in-memory `PopHost` with programmable failures, and
//! a harness that drives a session the way the reactor does (output drained when it asks,
//! `step` only with `REPLY_RESERVE` free, `AwaitAuth` answered inline from the fake users
//! table, `AwaitMailbox` from the fake mailbox, `Sleep` answered with `resume(Woke)`),
//! checking the session contract on every call.

pub mod dialog;

use std::io;
use std::time::{Duration, Instant, SystemTime};

use crate::buf::OutBuf;
use crate::limits;
use crate::mail::{MailboxDone, MailboxError, MessageInfo};
use crate::proto::pop2::Pop2Session;
use crate::proto::pop3::Pop3Session;
use crate::proto::{
    AuthRequest, AuthVerdict, Completion, Ctx, MailboxRequest, Next, PopHost, Step,
};

/// The body of a fake message.
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `Subject: big\n\n` then lines of 99 `x` and LF, cut at `len` octets; generated on read
    /// so a 50 MiB message costs no test memory.
    Synthetic {
        len: u64,
    },
}

const SYNTH_HEAD: &[u8] = b"Subject: big\n\n";

impl Body {
    /// The octets of the file.
    pub fn file_len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Synthetic { len } => *len,
        }
    }

    fn byte_at(&self, pos: u64) -> u8 {
        match self {
            Body::Bytes(b) => b.get(pos as usize).copied().unwrap_or(0),
            Body::Synthetic { .. } => {
                let head = SYNTH_HEAD.len() as u64;
                if pos < head {
                    SYNTH_HEAD[pos as usize]
                } else if (pos - head) % 100 == 99 {
                    b'\n'
                } else {
                    b'x'
                }
            }
        }
    }

    /// Octets as sent: CRLF line ends, before dot-stuffing (what `MessageInfo.size` says).
    pub fn wire_size(&self) -> u64 {
        match self {
            Body::Bytes(b) => wire_size(b),
            Body::Synthetic { len } => {
                let head = SYNTH_HEAD.len() as u64;
                let lines = len.saturating_sub(head) / 100;
                len + 2 + lines
            }
        }
    }
}

/// Octets of `raw` with every bare LF counted as CRLF.
pub fn wire_size(raw: &[u8]) -> u64 {
    let bare_lf = raw
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
        .count();
    (raw.len() + bare_lf) as u64
}

/// An in-memory mailbox and users table.
#[derive(Default)]
pub struct FakeHost {
    users: Vec<(String, Vec<u8>)>,
    messages: Vec<(String, Body)>,
    /// `open_mailbox` fails with this (taken once, so a retry can succeed).
    pub open_error: Option<MailboxError>,
    /// `update_mailbox` fails with this.
    pub update_error: Option<MailboxError>,
    /// `authenticate` answers Throttled whatever the credentials.
    pub throttled: bool,
    /// `authenticate` answers TooManyAttempts whatever the credentials.
    pub too_many_attempts: bool,
    /// `authenticate` answers Unavailable (the helper process is gone).
    pub check_unavailable: bool,
    /// Reads of any message at or past this offset fail.
    pub read_error_at: Option<u64>,
    /// Each read returns at most this many octets (short reads, odd chunk boundaries).
    pub max_read: Option<usize>,
    pub auth_calls: Vec<(String, Vec<u8>)>,
    pub opened: Vec<String>,
    pub updates: Vec<Vec<usize>>,
    pub releases: u32,
    pub reads: u64,
    /// The largest buffer a read was given: proves reads use a small fixed array.
    pub largest_read_buf: usize,
    /// `(index, size)`: `open_mailbox` lists the message with this size instead of its real
    /// one (a Maildir `W=` that lies).
    pub listed_sizes: Vec<(usize, u64)>,
    /// `MailboxRequest::Size` fails.
    pub size_error: bool,
    /// The `MailboxRequest::Size` indices answered, in order.
    pub sized: Vec<usize>,
    /// Messages are not in memory: a read at or past `warm_until` says `WouldBlock`, and a
    /// `MailboxRequest::Warm` brings this many more octets in (from where the read was).
    pub cold_window: Option<u64>,
    /// The message and the offset up to which it is "in memory" (`cold_window`).
    pub warm_until: (usize, u64),
    /// Where a read said `WouldBlock`, for the warm-up to start at.
    pub wants_warm: Option<u64>,
    pub warms: u32,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    pub fn add_user(&mut self, name: &str, password: &str) {
        self.users
            .push((name.to_string(), password.as_bytes().to_vec()));
    }

    pub fn add_message(&mut self, uid: &str, raw: &[u8]) {
        self.messages
            .push((uid.to_string(), Body::Bytes(raw.to_vec())));
    }

    pub fn add_body(&mut self, uid: &str, body: Body) {
        self.messages.push((uid.to_string(), body));
    }
}

impl FakeHost {
    /// The driver's answer to a session's `Next::AwaitAuth` (the reactor's throttle and
    /// password check, inline).
    pub fn authenticate(&mut self, user: &str, password: &[u8]) -> AuthVerdict {
        self.auth_calls.push((user.to_string(), password.to_vec()));
        if self.throttled {
            return AuthVerdict::Throttled;
        }
        if self.too_many_attempts {
            return AuthVerdict::TooManyAttempts;
        }
        if self.check_unavailable {
            return AuthVerdict::Unavailable;
        }
        match self.users.iter().find(|(u, _)| u == user) {
            Some((u, p)) if p == password => AuthVerdict::Accepted(u.clone()),
            _ => AuthVerdict::Rejected,
        }
    }
}

impl FakeHost {
    /// The driver's answer to a `MailboxRequest`.
    pub fn answer(&mut self, request: &MailboxRequest) -> MailboxDone {
        match request {
            MailboxRequest::Open(user) => MailboxDone::Opened(self.open_mailbox(user)),
            MailboxRequest::Update(deleted) => MailboxDone::Updated(self.update_mailbox(deleted)),
            MailboxRequest::Warm => {
                let at = self.wants_warm.take().expect("a warm-up no read asked for");
                self.warm_until.1 = at + self.cold_window.unwrap_or(0);
                self.warms += 1;
                MailboxDone::Warmed
            }
            MailboxRequest::Size(index) => MailboxDone::Sized(self.size_message(*index)),
        }
    }

    /// Count message `index` as POP2 sends it.
    pub fn size_message(&mut self, index: usize) -> Result<u64, MailboxError> {
        self.sized.push(index);
        if self.size_error {
            return Err(MailboxError::Temporary("injected size error".into()));
        }
        self.messages
            .get(index)
            .map(|(_, body)| body.wire_size())
            .ok_or_else(|| MailboxError::Temporary("no such index".into()))
    }

    /// Lock the user's mailbox and take a snapshot of its messages.
    pub fn open_mailbox(&mut self, user: &str) -> Result<Vec<MessageInfo>, MailboxError> {
        if let Some(e) = self.open_error.take() {
            return Err(e);
        }
        self.opened.push(user.to_string());
        Ok(self
            .messages
            .iter()
            .enumerate()
            .map(|(i, (uid, body))| MessageInfo {
                uid: uid.as_str().into(),
                size: self
                    .listed_sizes
                    .iter()
                    .find(|&&(at, _)| at == i)
                    .map_or_else(|| body.wire_size(), |&(_, size)| size),
            })
            .collect())
    }

    /// Remove these messages and release the lock.
    pub fn update_mailbox(&mut self, deleted: &[usize]) -> Result<(), MailboxError> {
        self.updates.push(deleted.to_vec());
        match self.update_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl PopHost for FakeHost {
    fn message_read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        self.largest_read_buf = self.largest_read_buf.max(buf.len());
        if self.cold_window.is_some() {
            if self.warm_until.0 != index {
                self.warm_until = (index, 0);
            }
            if offset >= self.warm_until.1 {
                self.wants_warm = Some(offset);
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
        }
        if self.read_error_at.is_some_and(|at| offset >= at) {
            return Err(io::Error::other("injected read error"));
        }
        let body = &self
            .messages
            .get(index)
            .ok_or_else(|| io::Error::other("no such index"))?
            .1;
        let len = body.file_len();
        let mut limit = len;
        if let Some(at) = self.read_error_at {
            limit = limit.min(at);
        }
        if self.cold_window.is_some() {
            // What is "in memory" and no more, as a read that does not wait gives it.
            limit = limit.min(self.warm_until.1);
        }
        let n = (limit.saturating_sub(offset))
            .min(buf.len() as u64)
            .min(self.max_read.unwrap_or(usize::MAX) as u64) as usize;
        if let Body::Bytes(b) = body {
            buf[..n].copy_from_slice(&b[offset as usize..offset as usize + n]);
        } else {
            for (i, slot) in buf[..n].iter_mut().enumerate() {
                *slot = body.byte_at(offset + i as u64);
            }
        }
        Ok(n)
    }

    fn mailbox_release(&mut self) {
        self.releases += 1;
    }
}

/// What both POP sessions look like to the harness.
pub trait PopSession {
    fn greet(&mut self, ctx: Ctx, out: &mut OutBuf);
    fn step(&mut self, input: &[u8], ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost) -> Step;
    fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost);
    fn take_auth(&mut self) -> Option<AuthRequest>;
    fn take_mailbox(&mut self) -> Option<MailboxRequest>;
    fn on_timeout(&mut self, out: &mut OutBuf);
    fn on_shutdown(&mut self, out: &mut OutBuf);
}

macro_rules! impl_pop_session {
    ($t:ty) => {
        impl PopSession for $t {
            fn greet(&mut self, ctx: Ctx, out: &mut OutBuf) {
                <$t>::greet(self, ctx, out)
            }
            fn step(
                &mut self,
                input: &[u8],
                ctx: Ctx,
                out: &mut OutBuf,
                host: &mut dyn PopHost,
            ) -> Step {
                <$t>::step(self, input, ctx, out, host)
            }
            fn resume(
                &mut self,
                c: Completion,
                ctx: Ctx,
                out: &mut OutBuf,
                host: &mut dyn PopHost,
            ) {
                <$t>::resume(self, c, ctx, out, host)
            }
            fn take_auth(&mut self) -> Option<AuthRequest> {
                <$t>::take_auth(self)
            }
            fn take_mailbox(&mut self) -> Option<MailboxRequest> {
                <$t>::take_mailbox(self)
            }
            fn on_timeout(&mut self, out: &mut OutBuf) {
                <$t>::on_timeout(self, out)
            }
            fn on_shutdown(&mut self, out: &mut OutBuf) {
                <$t>::on_shutdown(self, out)
            }
        }
    };
}
impl_pop_session!(Pop3Session);
impl_pop_session!(Pop2Session);

/// Why `Harness::run` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    NeedInput,
    /// The session waits for its password check (`auto_verify` off): `verify` answers it.
    AwaitAuth,
    /// The session waits for its mailbox work (`auto_mailbox` off): `mailbox_done` answers it.
    AwaitMailbox,
    Sleep(Duration),
    Close,
}

/// Drives one session against a `FakeHost` like the reactor would.
pub struct Harness<S: PopSession> {
    pub session: S,
    pub host: FakeHost,
    out: Box<OutBuf>,
    input: Vec<u8>,
    /// Everything the session wrote, in order (unless `keep_wire` is false).
    pub wire: Vec<u8>,
    pub keep_wire: bool,
    pub wire_len: u64,
    /// The last octets written, kept even when `keep_wire` is false.
    pub wire_tail: Vec<u8>,
    /// Drain at most this much per drain (a slow socket); None drains everything.
    pub drain_limit: Option<usize>,
    /// Answer `Sleep` at once with `resume(Woke)` (recorded in `sleeps`).
    pub auto_wake: bool,
    /// Answer `AwaitAuth` at once from the fake host (else `run` stops with `Stop::AwaitAuth`).
    pub auto_verify: bool,
    /// Answer `AwaitMailbox` at once from the fake host (else `run` stops with
    /// `Stop::AwaitMailbox`).
    pub auto_mailbox: bool,
    /// The mailbox work the session asked for, in order.
    pub mailbox_requests: Vec<MailboxRequest>,
    /// The password checks the session asked for, in order: (user, password).
    pub auth_requests: Vec<(String, Vec<u8>)>,
    pub sleeps: Vec<Duration>,
    pub closed: bool,
    pub now: Instant,
    /// Calls of `step` that returned `NeedOutput`.
    pub output_waits: u64,
}

impl<S: PopSession> Harness<S> {
    pub fn new(session: S, host: FakeHost) -> Harness<S> {
        let mut h = Harness {
            session,
            host,
            out: OutBuf::new_boxed(),
            input: Vec::new(),
            wire: Vec::new(),
            keep_wire: true,
            wire_len: 0,
            wire_tail: Vec::new(),
            drain_limit: None,
            auto_wake: true,
            auto_verify: true,
            auto_mailbox: true,
            mailbox_requests: Vec::new(),
            auth_requests: Vec::new(),
            sleeps: Vec::new(),
            closed: false,
            now: Instant::now(),
            output_waits: 0,
        };
        let ctx = h.ctx();
        h.session.greet(ctx, &mut h.out);
        h.drain(usize::MAX);
        h
    }

    pub fn ctx(&self) -> Ctx {
        Ctx {
            now: self.now,
            wall: SystemTime::UNIX_EPOCH,
        }
    }

    fn drain(&mut self, limit: usize) -> usize {
        let n = self.out.len().min(limit);
        let bytes = &self.out.bytes()[..n];
        if self.keep_wire {
            self.wire.extend_from_slice(bytes);
        }
        self.wire_tail.extend_from_slice(bytes);
        let excess = self.wire_tail.len().saturating_sub(16);
        self.wire_tail.drain(..excess);
        self.wire_len += n as u64;
        self.out.consume(n);
        n
    }

    fn drain_some(&mut self) -> usize {
        self.drain(self.drain_limit.unwrap_or(usize::MAX))
    }

    /// Queues client bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Bytes sent but not yet consumed.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// Runs the session until it needs input, sleeps (without `auto_wake`) or closes.
    pub fn run(&mut self) -> Stop {
        let mut idle_rounds = 0;
        loop {
            if self.closed {
                return Stop::Close;
            }
            while self.out.free() < limits::REPLY_RESERVE {
                self.drain_some();
            }
            let before_out = self.out.len();
            let before_in = self.input.len();
            let ctx = self.ctx();
            let step = self
                .session
                .step(&self.input, ctx, &mut self.out, &mut self.host);
            assert!(step.consumed <= before_in, "consumed more than offered");
            self.input.drain(..step.consumed);
            let progressed = step.consumed > 0 || self.out.len() != before_out;
            match step.next {
                Next::Continue => {}
                Next::NeedOutput => {
                    self.output_waits += 1;
                    let drained = self.drain_some();
                    assert!(
                        progressed || drained > 0,
                        "NeedOutput with nothing written, consumed or pending"
                    );
                }
                Next::NeedInput => {
                    assert!(
                        before_in < limits::MAX_UNIT || step.consumed > 0,
                        "NeedInput with {before_in} bytes offered"
                    );
                    self.drain(usize::MAX);
                    return Stop::NeedInput;
                }
                Next::AwaitCommit => panic!("a POP session never awaits a commit"),
                Next::AwaitAuth => {
                    // The reactor writes nothing while the check runs: earlier replies first.
                    self.drain(usize::MAX);
                    let request = self.session.take_auth();
                    let request = request.expect("AwaitAuth without a request to take");
                    assert!(
                        self.session.take_auth().is_none(),
                        "a request is taken once"
                    );
                    self.auth_requests
                        .push((request.user.clone(), request.password.clone()));
                    if !self.auto_verify {
                        return Stop::AwaitAuth;
                    }
                    let verdict = self.host.authenticate(&request.user, &request.password);
                    self.verify(verdict);
                    // The session still answers `AwaitAuth` until it is resumed.
                }
                Next::AwaitMailbox => {
                    self.drain(usize::MAX);
                    let request = self.session.take_mailbox();
                    let request = request.expect("AwaitMailbox without a request to take");
                    assert!(
                        self.session.take_mailbox().is_none(),
                        "a request is taken once"
                    );
                    self.mailbox_requests.push(request.clone());
                    if !self.auto_mailbox {
                        return Stop::AwaitMailbox;
                    }
                    let done = self.host.answer(&request);
                    self.mailbox_done(done);
                }
                Next::StartTls => panic!("STLS is not expected here"),
                Next::Sleep(d) => {
                    self.sleeps.push(d);
                    if !self.auto_wake {
                        self.drain(usize::MAX);
                        return Stop::Sleep(d);
                    }
                    self.wake_after(d);
                }
                Next::Close => {
                    self.closed = true;
                    self.drain(usize::MAX);
                    return Stop::Close;
                }
            }
            idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
            assert!(idle_rounds < 1000, "session spins without progress");
        }
    }

    /// Answers the password check the session waits for.
    pub fn verify(&mut self, verdict: AuthVerdict) {
        let ctx = self.ctx();
        self.session.resume(
            Completion::Auth(verdict),
            ctx,
            &mut self.out,
            &mut self.host,
        );
    }

    /// Answers the mailbox work the session waits for.
    pub fn mailbox_done(&mut self, done: MailboxDone) {
        let ctx = self.ctx();
        self.session.resume(
            Completion::Mailbox(done),
            ctx,
            &mut self.out,
            &mut self.host,
        );
    }

    /// Lets `d` pass and answers the sleep.
    pub fn wake_after(&mut self, d: Duration) {
        self.now += d;
        let ctx = self.ctx();
        self.session
            .resume(Completion::Woke, ctx, &mut self.out, &mut self.host);
    }

    /// Sends `bytes`, runs, and returns what the session wrote meanwhile.
    pub fn exchange(&mut self, bytes: &[u8]) -> Vec<u8> {
        let start = self.wire.len();
        self.send(bytes);
        self.run();
        self.wire[start..].to_vec()
    }

    /// The idle deadline passed (the reactor writes the reply only with room for it).
    pub fn timeout(&mut self) {
        self.session.on_timeout(&mut self.out);
        self.drain(usize::MAX);
    }

    pub fn shutdown(&mut self) {
        self.session.on_shutdown(&mut self.out);
        self.drain(usize::MAX);
    }

    pub fn wire_str(&self) -> String {
        String::from_utf8_lossy(&self.wire).into_owned()
    }
}

/// Sends `script` split into pieces at the given cut points and returns the whole wire.
pub fn run_split<S: PopSession>(
    make: impl Fn() -> Harness<S>,
    script: &[u8],
    cuts: &[usize],
) -> Vec<u8> {
    let mut h = make();
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&script.len())) {
        h.send(&script[last..cut]);
        last = cut;
        if h.run() == Stop::Close {
            break;
        }
    }
    h.wire
}
