//! Test harness for the SMTP session: a fake host that records calls, and a driver that plays
//! the reactor (bounded input buffer, lazily drained output, commits answered) while checking
//! the session contract on every step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::buf::Buf;
use crate::proto::AuthVerdict;

/// Everything the session asked of its host, in order. Consecutive appends are merged, so the
/// record does not depend on how the input was split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Call {
    Verdict(String),
    Begin(Envelope),
    Append(Vec<u8>),
    Commit,
    Abort,
    /// A password check (user name as sent).
    Auth(String),
    /// The failed-login delay was waited out.
    Slept,
}

pub(super) struct FakeHost {
    pub calls: Vec<Call>,
    /// Verdicts by address; anything not listed is accepted.
    pub verdicts: HashMap<String, RcptVerdict>,
    /// `Some` makes every `message_begin` fail with it.
    pub begin_error: Option<SpoolError>,
    /// `Some` makes every `message_commit` fail at once with it.
    pub commit_error: Option<SpoolError>,
    /// The result the driver passes to `resume` after `AwaitCommit`; `None` means Ok(id).
    pub durable_error: Option<SpoolError>,
    pub begun: u32,
    /// The real per-address budget, for the session's peer at a fixed time: moving the host
    /// from one `Driver` to the next plays reconnecting from the same address.
    pub rcpt_budget: crate::throttle::RcptBudget,
    pub now: Instant,
    /// Good (user, password) pairs for AUTH.
    pub logins: Vec<(String, String)>,
    /// Every password check answers this instead (Throttled, Unavailable).
    pub auth_override: Option<AuthVerdict>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            calls: Vec::new(),
            verdicts: HashMap::new(),
            begin_error: None,
            commit_error: None,
            durable_error: None,
            begun: 0,
            rcpt_budget: Default::default(),
            now: Instant::now(),
            logins: vec![("alice".into(), "secret".into())],
            auth_override: None,
        }
    }

    /// The verdict the reactor's check would give.
    pub fn check(&mut self, r: &crate::proto::AuthRequest) -> AuthVerdict {
        self.calls.push(Call::Auth(r.user.clone()));
        if let Some(v) = &self.auth_override {
            return v.clone();
        }
        let pw = String::from_utf8_lossy(&r.password);
        if self.logins.iter().any(|(u, p)| *u == r.user && *p == pw) {
            AuthVerdict::Accepted(r.user.clone())
        } else {
            AuthVerdict::Rejected
        }
    }

    pub fn verdict(mut self, addr: &str, v: RcptVerdict) -> FakeHost {
        self.verdicts.insert(addr.to_owned(), v);
        self
    }

    /// All appended bytes, across messages.
    pub fn appended(&self) -> Vec<u8> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Append(b) => Some(b.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    pub fn envelopes(&self) -> Vec<&Envelope> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Begin(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    pub fn verdict_calls(&self) -> Vec<&str> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Verdict(a) => Some(a.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, wanted: &Call) -> usize {
        self.calls.iter().filter(|c| *c == wanted).count()
    }

    fn current_id(&self) -> QueueId {
        QueueId(format!("Q{}", self.begun))
    }
}

impl SmtpHost for FakeHost {
    fn client_over_rcpt_budget(&mut self) -> bool {
        self.rcpt_budget.over(peer().ip(), self.now)
    }
    fn rcpt_refused(&mut self) {
        self.rcpt_budget.refused(peer().ip(), self.now);
    }
    fn rcpt_verdict(&mut self, rcpt: &str) -> RcptVerdict {
        self.calls.push(Call::Verdict(rcpt.to_owned()));
        self.verdicts
            .get(rcpt)
            .copied()
            .unwrap_or(RcptVerdict::Accept)
    }
    fn message_begin(&mut self, envelope: &Envelope) -> Result<QueueId, SpoolError> {
        self.calls.push(Call::Begin(envelope.clone()));
        if let Some(e) = &self.begin_error {
            return Err(e.clone());
        }
        self.begun += 1;
        Ok(self.current_id())
    }
    fn message_append(&mut self, bytes: &[u8]) {
        assert!(!bytes.is_empty(), "empty append");
        if let Some(Call::Append(b)) = self.calls.last_mut() {
            b.extend_from_slice(bytes);
        } else {
            self.calls.push(Call::Append(bytes.to_vec()));
        }
    }
    fn message_commit(&mut self) -> Result<(), SpoolError> {
        self.calls.push(Call::Commit);
        match &self.commit_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
    fn message_abort(&mut self) {
        self.calls.push(Call::Abort);
    }
    /// The user at the local domain only.
    fn sender_owned_by(&mut self, user: &str, sender: &str) -> bool {
        sender == format!("{user}@example.test")
    }
    fn random_token(&mut self) -> u64 {
        0xfeed
    }
}

pub(super) const HOST: &str = "mail.example.test";
pub(super) const MAX_SIZE: u64 = 10_000;

pub(super) fn settings(max_message_size: u64) -> Rc<SmtpSettings> {
    Rc::new(SmtpSettings {
        hostname: HOST.to_owned(),
        max_message_size,
        starttls: false,
        auth_failure_delay: Duration::from_secs(2),
    })
}

pub(super) fn settings_with_tls() -> Rc<SmtpSettings> {
    Rc::new(SmtpSettings {
        hostname: HOST.to_owned(),
        max_message_size: MAX_SIZE,
        starttls: true,
        auth_failure_delay: Duration::from_secs(2),
    })
}

pub(super) fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

pub(super) fn ctx() -> Ctx {
    Ctx {
        now: Instant::now(),
        wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

pub(super) fn arrival() -> SystemTime {
    ctx().wall
}

/// Plays the reactor around one session.
pub(super) struct Driver {
    pub session: SmtpSession,
    pub host: FakeHost,
    out: Box<OutBuf>,
    /// Unconsumed input, never more than `limits::IN_BUF`.
    input: Vec<u8>,
    /// Everything the server wrote, greeting included.
    pub written: Vec<u8>,
    pub closed: bool,
    /// Largest amount of input the session left unconsumed at once.
    pub max_buffered: usize,
    /// Input the reactor dropped at STARTTLS (what the client sent after the command).
    pub discarded_at_starttls: Vec<u8>,
}

impl Driver {
    pub fn new(host: FakeHost) -> Driver {
        Driver::with_settings(host, settings(MAX_SIZE))
    }

    pub fn with_settings(host: FakeHost, settings: Rc<SmtpSettings>) -> Driver {
        Driver::with_session(host, SmtpSession::new(settings, peer()))
    }

    pub fn with_session(host: FakeHost, session: SmtpSession) -> Driver {
        let mut d = Driver {
            session,
            host,
            out: Buf::new_boxed(),
            input: Vec::new(),
            written: Vec::new(),
            closed: false,
            max_buffered: 0,
            discarded_at_starttls: Vec::new(),
        };
        d.session.greet(ctx(), &mut d.out, &mut d.host);
        d.drain();
        d
    }

    fn drain(&mut self) {
        self.written.extend_from_slice(self.out.bytes());
        self.out.clear();
    }

    /// Sends `bytes` in pieces of `chunk` octets (as separate socket reads).
    pub fn send_chunked(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            self.send(piece);
        }
    }

    /// Sends `bytes` as one read (or as many reads as the input buffer needs).
    pub fn send(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed {
            let room = limits::IN_BUF - self.input.len();
            let take = room.min(bytes.len());
            self.input.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let before = self.input.len();
            self.run();
            assert!(
                !(before == limits::IN_BUF && self.input.len() == limits::IN_BUF && !self.closed),
                "session stalled on a full input buffer"
            );
        }
    }

    /// Steps the session until it wants input or closes, checking the contract.
    pub fn run(&mut self) {
        while !self.closed {
            // The reactor only steps with REPLY_RESERVE free; drain lazily so that pipelined
            // batches really meet a filling buffer.
            if self.out.free() < limits::REPLY_RESERVE {
                self.drain();
            }
            let offered = self.input.len();
            let step = self
                .session
                .step(&self.input, ctx(), &mut self.out, &mut self.host);
            assert!(step.consumed <= offered);
            if step.consumed > 0 && step.next != Next::Close {
                assert!(
                    self.input[step.consumed - 1] == b'\n' || offered >= limits::MAX_UNIT,
                    "consumed a partial unit: {:?}",
                    String::from_utf8_lossy(&self.input[..step.consumed])
                );
            }
            self.input.drain(..step.consumed);
            self.max_buffered = self.max_buffered.max(self.input.len());
            match step.next {
                Next::Continue => {}
                Next::NeedOutput => {
                    assert!(
                        self.out.free() < limits::REPLY_RESERVE || !self.out.is_empty(),
                        "NeedOutput with nothing to send"
                    );
                    self.drain();
                }
                Next::NeedInput => {
                    assert!(
                        self.input.len() < limits::MAX_UNIT,
                        "NeedInput with {} bytes offered",
                        self.input.len()
                    );
                    break;
                }
                Next::AwaitCommit => {
                    let result = match self.host.durable_error.clone() {
                        Some(e) => Err(e),
                        None => Ok(self.host.current_id()),
                    };
                    self.session.resume(
                        Completion::Committed(result),
                        ctx(),
                        &mut self.out,
                        &mut self.host,
                    );
                }
                Next::Close => self.closed = true,
                Next::Sleep(d) => {
                    assert!(
                        d > Duration::ZERO,
                        "a failed login is answered after a delay"
                    );
                    assert!(
                        self.out.is_empty(),
                        "earlier replies went out before the delay"
                    );
                    self.host.calls.push(Call::Slept);
                    self.session
                        .resume(Completion::Woke, ctx(), &mut self.out, &mut self.host);
                }
                Next::AwaitAuth => {
                    assert!(
                        self.out.is_empty(),
                        "earlier replies went out before the check"
                    );
                    let request = self.session.take_auth().expect("a request to check");
                    let verdict = self.host.check(&request);
                    assert!(self.session.take_auth().is_none(), "taken once");
                    self.session.resume(
                        Completion::Auth(verdict),
                        ctx(),
                        &mut self.out,
                        &mut self.host,
                    );
                }
                // The reactor's part: the reply goes out, the rest of the input is dropped,
                // the handshake runs, the session is told.
                Next::AwaitMailbox => panic!("an SMTP session never awaits a mailbox"),
                Next::StartTls => {
                    self.drain();
                    self.discarded_at_starttls.append(&mut self.input);
                    self.session
                        .tls_established("TLSv1.3", "TLS_AES_128_GCM_SHA256");
                    break;
                }
            }
        }
        self.drain();
    }

    /// Reply lines after the greeting, without CRLF.
    pub fn replies(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.written).into_owned();
        let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
        assert_eq!(lines.pop().as_deref(), Some(""), "output ends in CRLF");
        assert!(lines[0].starts_with("220 "), "greeting first");
        lines.remove(0);
        lines
    }
}

/// Runs `input` (as one read) against a fresh session with `host`.
pub(super) fn script_with(host: FakeHost, input: &str) -> Driver {
    let mut d = Driver::new(host);
    d.send(input.as_bytes());
    d
}

pub(super) fn script(input: &str) -> Driver {
    script_with(FakeHost::new(), input)
}

/// Asserts the reply lines of `input` after the greeting.
#[track_caller]
pub(super) fn expect(input: &str, replies: &[&str]) -> Driver {
    let d = script(input);
    assert_eq!(d.replies(), replies, "input: {input:?}");
    d
}

#[test]
fn greeting() {
    let d = Driver::new(FakeHost::new());
    assert_eq!(d.written, b"220 mail.example.test ESMTP postling\r\n");
}

#[test]
fn harness_merges_appends_and_reports_contract() {
    let mut d = Driver::new(FakeHost::new());
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@y.org>\r\nDATA\r\n");
    d.send(b"one\r\n");
    d.send(b"two\r\n.\r\n");
    assert_eq!(d.host.envelopes().len(), 1);
    assert_eq!(
        d.host
            .calls
            .iter()
            .filter(|c| matches!(c, Call::Append(_)))
            .count(),
        1
    );
    assert!(d.host.appended().ends_with(b"one\r\ntwo\r\n"));
}

/// Only a session outside a mail transaction may be evicted to make room for a newcomer.
#[test]
fn holds_nothing_only_outside_a_mail_transaction() {
    let mut d = Driver::new(FakeHost::new());
    assert!(d.session.holds_nothing(), "before EHLO");
    d.send(b"EHLO c\r\n");
    assert!(d.session.holds_nothing(), "after EHLO");
    d.send(b"MAIL FROM:<a@b.org>\r\n");
    assert!(!d.session.holds_nothing(), "after MAIL");
    d.send(b"RSET\r\n");
    assert!(d.session.holds_nothing(), "after RSET");
    d.send(b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@y.org>\r\nDATA\r\nSubject: x\r\n");
    assert!(!d.session.holds_nothing(), "inside DATA");
    d.send(b"\r\nbody\r\n.\r\n");
    assert!(d.replies().last().is_some_and(|r| r.starts_with("250")));
    assert!(d.session.holds_nothing(), "between transactions");
}
