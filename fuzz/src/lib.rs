//! The fuzz harness: plays the reactor around one sans-I/O session (SMTP, POP3 or POP2) with
//! fake hosts, and asserts the session contract of `postling::proto` on every call (the
//! outbound SMTP client has a contract and a driver of its own, in `smtp_client`):
//!
//! - `step` is only called with `limits::REPLY_RESERVE` free in the output buffer (the driver
//!   guarantees it), and `consumed <= offered`;
//! - `NeedInput` never leaves `limits::MAX_UNIT` or more bytes unconsumed (a full input buffer
//!   can never stall), and `NeedOutput` never comes with nothing to drain and no progress;
//! - no session spins: a run of calls that neither consume, write nor change state is bounded;
//! - the output never overflows: a reply is never cut by the fixed buffer (every SMTP reply line
//!   is `NNN<SP or ->text CRLF`, at most 512 octets, and POP3 output never has a bare CR or LF
//!   and always ends a turn on CRLF);
//! - the host is used in order (no append outside a message, no mailbox read before a login,
//!   deleted indices within the snapshot, reads through a small fixed array);
//! - nothing panics (a panic is a crash libFuzzer reports with its input).
//!
//! A fuzz input is `[flags][seed][client bytes...]`: `flags` picks host failures and the drain
//! policy, `seed` the way the client bytes are cut into socket reads (0: as large as the
//! input buffer allows). `fuzz/make_seeds.py` writes the committed seed corpus in that form.

pub mod config;
pub mod dns;
pub mod pop;
pub mod smtp;
pub mod smtp_client;

use std::time::{Duration, Instant, UNIX_EPOCH};

use postling::buf::OutBuf;
use postling::limits;
use postling::proto::{Completion, Ctx, Next, Step};

/// Calls in a row without any progress before the driver calls it a spin.
const SPIN_LIMIT: u32 = 1000;
/// The most a slow client drains per turn when the flags ask for a slow socket.
const SLOW_DRAIN: usize = 97;

/// What the driver needs from a session and its fake host, whatever the protocol.
pub trait Session {
    type Host;
    fn step(&mut self, input: &[u8], ctx: Ctx, out: &mut OutBuf, host: &mut Self::Host) -> Step;
    fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, host: &mut Self::Host);
    fn on_timeout(&mut self, out: &mut OutBuf);
    fn on_shutdown(&mut self, out: &mut OutBuf);
    /// The answer to `Next::AwaitCommit` (SMTP only; POP sessions must never ask).
    fn commit_result(host: &mut Self::Host) -> Completion;
    /// The answer to `Next::AwaitAuth` (POP only): the fake host checks the request the
    /// session hands over, as the reactor's throttle and executor would.
    fn auth_result(&mut self, _host: &mut Self::Host) -> Completion {
        panic!("this session awaited a password check")
    }
    /// The answer to `Next::AwaitMailbox` (POP only): the fake host opens or updates the
    /// mailbox the session asks for, as the reactor's mailbox jobs would.
    fn mailbox_result(&mut self, _host: &mut Self::Host) -> Completion {
        panic!("this session awaited mailbox work")
    }
    /// The longest `Next::Sleep` the session may ask for.
    fn max_sleep(&self) -> Duration;
    /// A close may cut the output mid-line: a message read failed after part of it was sent,
    /// which cannot be reported in-band (see `postling::proto::popmsg`).
    fn may_cut_output(_host: &Self::Host) -> bool {
        false
    }
}

/// Checks the bytes a session writes, as they are drained.
pub trait WireCheck {
    fn bytes(&mut self, bytes: &[u8]);
    /// The session is waiting for the client (or closed): its output must be complete.
    fn at_rest(&self);
}

/// The split of a fuzz input.
pub struct Input<'a> {
    pub flags: u8,
    pub seed: u8,
    pub script: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Input<'a> {
        match data {
            [flags, seed, script @ ..] => Input {
                flags: *flags,
                seed: *seed,
                script,
            },
            [flags] => Input {
                flags: *flags,
                seed: 0,
                script: &[],
            },
            [] => Input {
                flags: 0,
                seed: 0,
                script: &[],
            },
        }
    }
}

/// Cuts the client bytes into socket reads of pseudo-random sizes chosen by `seed`.
pub(crate) struct Chunker {
    state: u32,
    seed: u8,
}

impl Chunker {
    pub(crate) fn new(seed: u8) -> Chunker {
        Chunker {
            state: 0x9e37_79b9 ^ u32::from(seed),
            seed,
        }
    }

    pub(crate) fn next_len(&mut self) -> usize {
        if self.seed == 0 {
            return usize::MAX;
        }
        // xorshift32: cheap, deterministic, good enough to vary the cut points.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let sizes = [1usize, 2, 3, 7, 64, 511, 513, 2047, 4096, usize::MAX];
        let pick = (self.state as usize) % sizes.len();
        sizes[pick.min(sizes.len() - 1)]
    }
}

/// Plays the reactor around one session.
pub struct Driver<S: Session, W: WireCheck> {
    pub session: S,
    pub host: S::Host,
    pub check: W,
    out: Box<OutBuf>,
    /// Unconsumed client bytes, never more than the reactor's input buffer.
    input: Vec<u8>,
    now: Instant,
    slow_drain: bool,
    pub closed: bool,
}

impl<S: Session, W: WireCheck> Driver<S, W> {
    /// `greet` writes the session's greeting.
    pub fn new(
        mut session: S,
        mut host: S::Host,
        check: W,
        slow_drain: bool,
        greet: impl FnOnce(&mut S, Ctx, &mut OutBuf, &mut S::Host),
    ) -> Driver<S, W> {
        let now = Instant::now();
        let mut out = OutBuf::new_boxed();
        greet(&mut session, ctx_at(now), &mut out, &mut host);
        let mut d = Driver {
            session,
            host,
            check,
            out,
            input: Vec::with_capacity(limits::IN_BUF),
            now,
            slow_drain,
            closed: false,
        };
        d.drain_all();
        d.check.at_rest();
        d
    }

    fn ctx(&self) -> Ctx {
        ctx_at(self.now)
    }

    fn drain(&mut self, limit: usize) -> usize {
        let n = self.out.len().min(limit);
        let bytes = self.out.bytes().get(..n).unwrap_or_default();
        self.check.bytes(bytes);
        self.out.consume(n);
        n
    }

    fn drain_some(&mut self) -> usize {
        let limit = if self.slow_drain {
            SLOW_DRAIN
        } else {
            usize::MAX
        };
        self.drain(limit)
    }

    fn drain_all(&mut self) {
        while !self.out.is_empty() {
            self.drain_some();
        }
    }

    /// Feeds the whole script, cut by `seed`, then ends the session by timeout or shutdown.
    pub fn play(&mut self, script: &[u8], seed: u8, end_by_timeout: bool) {
        let mut chunker = Chunker::new(seed);
        let mut rest = script;
        while !rest.is_empty() && !self.closed {
            let room = limits::IN_BUF - self.input.len();
            assert!(
                room > 0,
                "the input buffer is full and the session asked for more input"
            );
            let take = chunker.next_len().min(room).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            self.input.extend_from_slice(chunk);
            rest = tail;
            self.run();
            // Client think time between reads, so time-based state moves on.
            self.now += Duration::from_millis(250);
        }
        if !self.closed {
            while self.out.free() < limits::REPLY_RESERVE {
                self.drain_some();
            }
            if end_by_timeout {
                self.session.on_timeout(&mut self.out);
            } else {
                self.session.on_shutdown(&mut self.out);
            }
            self.drain_all();
            self.check.at_rest();
        }
    }

    /// Steps the session until it needs input or closes.
    fn run(&mut self) {
        let mut idle = 0u32;
        while !self.closed {
            while self.out.free() < limits::REPLY_RESERVE {
                self.drain_some();
            }
            let offered = self.input.len();
            let out_before = self.out.len();
            let ctx = self.ctx();
            let step = self
                .session
                .step(&self.input, ctx, &mut self.out, &mut self.host);
            assert!(
                step.consumed <= offered,
                "consumed {} of {offered} bytes",
                step.consumed
            );
            self.input.drain(..step.consumed);
            let mut progressed = step.consumed > 0 || self.out.len() != out_before;
            match step.next {
                Next::Continue => {}
                Next::NeedInput => {
                    assert!(
                        self.input.len() < limits::MAX_UNIT,
                        "NeedInput with {} bytes unconsumed (offered {offered})",
                        self.input.len()
                    );
                    self.drain_all();
                    self.check.at_rest();
                    return;
                }
                Next::NeedOutput => {
                    let drained = self.drain_some();
                    assert!(
                        progressed || drained > 0,
                        "NeedOutput with nothing written, consumed or pending"
                    );
                    progressed = true;
                }
                Next::AwaitAuth => {
                    let ctx = self.ctx();
                    let result = self.session.auth_result(&mut self.host);
                    self.session
                        .resume(result, ctx, &mut self.out, &mut self.host);
                    progressed = true;
                }
                Next::AwaitMailbox => {
                    let ctx = self.ctx();
                    let result = self.session.mailbox_result(&mut self.host);
                    self.session
                        .resume(result, ctx, &mut self.out, &mut self.host);
                    progressed = true;
                }
                Next::AwaitCommit => {
                    let ctx = self.ctx();
                    let result = S::commit_result(&mut self.host);
                    self.session
                        .resume(result, ctx, &mut self.out, &mut self.host);
                    progressed = true;
                }
                Next::Sleep(d) => {
                    assert!(
                        d <= self.session.max_sleep(),
                        "asked to sleep {d:?}, longer than the failure delay"
                    );
                    // The reactor writes nothing while a session sleeps; what it wrote before
                    // must already be complete.
                    self.drain_all();
                    self.check.at_rest();
                    self.now += d;
                    let ctx = self.ctx();
                    self.session
                        .resume(Completion::Woke, ctx, &mut self.out, &mut self.host);
                    progressed = true;
                }
                Next::StartTls => {
                    // The fuzzed servers have no certificate, so they never offer TLS.
                    panic!("StartTls from a session without a certificate");
                }
                Next::Close => {
                    self.closed = true;
                    self.drain_all();
                    if !S::may_cut_output(&self.host) {
                        self.check.at_rest();
                    }
                    return;
                }
            }
            idle = if progressed { 0 } else { idle + 1 };
            assert!(idle < SPIN_LIMIT, "the session spins without progress");
        }
    }
}

fn ctx_at(now: Instant) -> Ctx {
    Ctx {
        now,
        wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}
