//! The POP3 server session (RFC 1939; RFC 2449 CAPA, RESP-CODES, PIPELINING; RFC 5034 SASL
//! PLAIN; RFC 3206 `[SYS/*]` and `[AUTH]` codes): a sans-I/O state machine.
//!
//! States: AUTHORIZATION (USER, PASS, AUTH PLAIN, CAPA, QUIT), TRANSACTION (STAT, LIST, RETR,
//! DELE, NOOP, RSET, TOP, UIDL, CAPA, QUIT) and UPDATE, which only QUIT in TRANSACTION
//! reaches: the marked messages are removed by a `Next::AwaitMailbox` request
//! (`MailboxRequest::Update`), answered when the removal is done. A drop, a timeout or a
//! shutdown deletes nothing; the reactor releases the mailbox lock.
//!
//! After an accepted password the mailbox is opened the same way (`MailboxRequest::Open`,
//! then `resume(Mailbox(Opened(..)))`): a large Maildir takes time to read, and the session
//! answers PASS only then.
//!
//! Logins: USER always answers `+OK` (it never tells whether a user exists). PASS and AUTH
//! PLAIN hand the password check to the reactor (`Next::AwaitAuth`, `take_auth`, then
//! `resume(Auth(verdict))`), since it takes CPU time; the login goes on from there. A
//! rejected login is answered `-ERR [AUTH]` only after `auth_failure_delay` (`Next::Sleep`,
//! then `resume(Woke)`), identically for unknown users and wrong passwords; after
//! `limits::AUTH_MAX_FAILURES` the connection closes. A throttled address (too many failures, or
//! too many attempts of any outcome) gets `[SYS/TEMP]` after the same delay and is closed. A
//! right password for a mailbox another session holds gets `[IN-USE]` after the same delay
//! too (and may try again): answered at once, a client could loop logins as fast as the
//! reactor answers. A check that could not run (the helper process is gone)
//! gets `[SYS/TEMP]` at once and the session stays in AUTHORIZATION. Before login each reply
//! is flushed before the next command is read, so the delay never holds back an earlier reply.
//!
//! Pipelining: commands are taken one line at a time while the output has
//! `limits::REPLY_RESERVE` free, so a batch gets its replies in order. Multi-line LIST/UIDL and
//! RETR/TOP stream across as many output fills as they need (`Next::NeedOutput`); the input
//! after them waits in the reactor's buffer.

use std::rc::Rc;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use log::{debug, warn};

use super::maildrop::{self, Delayed, Login, Maildrop, Missing};
use super::popline::{Command, Frame, LineFramer, parse_number, push_fmt};
use super::popmsg::{Fill, MessageStream};
use super::sasl::{self, PlainError};
use super::{
    AuthRequest, AuthVerdict, Completion, Ctx, MailboxRequest, Next, OutBuf, PopHost, Step,
};
use crate::limits;
use crate::mail::{MailboxDone, MailboxError};

/// Settings shared by all POP3 and POP2 sessions.
#[derive(Clone, Debug)]
pub struct PopSettings {
    pub hostname: String,
    /// Delay before a failed login is answered.
    pub auth_failure_delay: Duration,
    /// A TLS certificate is loaded: STLS is offered (RFC 2595).
    pub stls: bool,
}

const CAPABILITIES_HEAD: &[u8] = b"+OK Capability list follows\r\n";
/// Offered in AUTHORIZATION while a certificate is loaded and the session is not in TLS.
const CAPABILITY_STLS: &[u8] = b"STLS\r\n";
const CAPABILITIES_BASE: &[u8] = b"TOP\r\nUIDL\r\n";
/// Offered only where a login would be accepted (TLS, loopback, or `allow_plaintext_auth`).
const CAPABILITIES_LOGIN: &[u8] = b"USER\r\nSASL PLAIN\r\n";
const CAPABILITIES: &[u8] = b"RESP-CODES\r\n\
AUTH-RESP-CODE\r\n\
PIPELINING\r\n\
IMPLEMENTATION postling\r\n\
.\r\n";

const _: () = assert!(
    CAPABILITIES_HEAD.len()
        + CAPABILITY_STLS.len()
        + CAPABILITIES_BASE.len()
        + CAPABILITIES_LOGIN.len()
        + CAPABILITIES.len()
        < limits::REPLY_RESERVE
);
const _: () = assert!(limits::POP_SASL_MAX_LINE < limits::MAX_UNIT);

const AUTH_FAILED: &[u8] = b"-ERR [AUTH] Invalid user name or password\r\n";
const THROTTLED: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins from your address, try again later\r\n";
const TOO_MANY_ATTEMPTS: &[u8] =
    b"-ERR [SYS/TEMP] Too many logins from your address, try again later\r\n";
const IN_USE: &[u8] = b"-ERR [IN-USE] mailbox is in use by another session, try again later\r\n";

enum State {
    /// AUTHORIZATION; `user` holds the name from USER (at most a command line) until PASS.
    Authorization {
        user: Option<Box<[u8]>>,
    },
    /// `AUTH PLAIN` was answered `+ `: the next line is the base64 response.
    SaslResponse,
    /// PASS or AUTH PLAIN: the password check is with the reactor (until `take_auth`, the
    /// request is here).
    Verifying(Option<Box<AuthRequest>>),
    /// Opening the mailbox after the login, or QUIT's UPDATE, is with the reactor (until
    /// `take_mailbox`, the request is here).
    AwaitingMailbox(Option<MailboxRequest>),
    /// A login failed; it is answered at `wake_at` (`then` says how).
    Delaying {
        wake_at: Instant,
        then: Delayed,
    },
    Transaction,
    /// A multi-line LIST or UIDL; `next` is the next 0-based index to list.
    Listing {
        uidl: bool,
        next: usize,
    },
    /// RETR or TOP waits for its first bytes to be read in (`Fill::Waiting` from `start`):
    /// nothing of its reply is written yet. Boxed: the other states stay small.
    Starting(Box<Starting>),
    /// RETR or TOP body in flight.
    Sending(MessageStream),
    /// Nothing more is read; the reactor closes once the output is flushed.
    Closed,
}

/// A RETR or TOP to start again once its first bytes are in memory.
struct Starting {
    stream: MessageStream,
    status: ArrayVec<u8, 64>,
    number: u64,
}

#[derive(Clone, Copy)]
enum Verb {
    User,
    Pass,
    Auth,
    Capa,
    Quit,
    Stat,
    List,
    Retr,
    Dele,
    Noop,
    Rset,
    Top,
    Uidl,
    Stls,
}

impl Verb {
    fn parse(cmd: &Command<'_>) -> Option<Verb> {
        const VERBS: [(&str, Verb); 14] = [
            ("USER", Verb::User),
            ("PASS", Verb::Pass),
            ("AUTH", Verb::Auth),
            ("CAPA", Verb::Capa),
            ("QUIT", Verb::Quit),
            ("STAT", Verb::Stat),
            ("LIST", Verb::List),
            ("RETR", Verb::Retr),
            ("DELE", Verb::Dele),
            ("NOOP", Verb::Noop),
            ("RSET", Verb::Rset),
            ("TOP", Verb::Top),
            ("UIDL", Verb::Uidl),
            ("STLS", Verb::Stls),
        ];
        VERBS.iter().find(|(k, _)| cmd.is(k)).map(|&(_, v)| v)
    }
}

/// One POP3 server session.
pub struct Pop3Session {
    settings: Rc<PopSettings>,
    state: State,
    framer: LineFramer,
    /// The login snapshot, from PASS/AUTH until the session ends. Boxed: a session before
    /// login (held by the thousand) carries only the pointer.
    maildrop: Option<Box<Maildrop>>,
    /// Rejected logins on this connection.
    failures: u32,
    /// Erroneous commands on this connection.
    errors: u32,
    /// The session runs over TLS.
    tls: bool,
    /// Logins are accepted without TLS (a loopback client, or `allow_plaintext_auth`).
    clear_login_ok: bool,
    /// STLS was accepted: `step` returns `Next::StartTls` after its reply.
    stls_accepted: bool,
    /// The message being sent must be read in first: `step` returns `Next::AwaitMailbox`
    /// and `take_mailbox` says `MailboxRequest::Warm`.
    warm_wanted: bool,
}

impl Pop3Session {
    pub fn new(settings: Rc<PopSettings>) -> Pop3Session {
        Pop3Session {
            settings,
            state: State::Authorization { user: None },
            framer: LineFramer::default(),
            maildrop: None,
            failures: 0,
            errors: 0,
            tls: false,
            stls_accepted: false,
            clear_login_ok: true,
            warm_wanted: false,
        }
    }

    /// Whether a login without TLS is accepted on this connection (`allow_plaintext_auth`,
    /// or the client is on loopback). The default is yes.
    pub fn with_clear_login(mut self, ok: bool) -> Pop3Session {
        self.clear_login_ok = ok;
        self
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.clear_login_ok
    }

    /// The TLS handshake after STLS (or on an implicit-TLS port) is complete.
    pub fn tls_established(&mut self) {
        self.tls = true;
    }

    fn stls_offered(&self) -> bool {
        self.settings.stls && !self.tls && matches!(self.state, State::Authorization { .. })
    }

    fn capabilities(&self, out: &mut OutBuf) {
        out.push(CAPABILITIES_HEAD);
        if self.stls_offered() {
            out.push(CAPABILITY_STLS);
        }
        out.push(CAPABILITIES_BASE);
        if self.login_allowed() {
            out.push(CAPABILITIES_LOGIN);
        }
        out.push(CAPABILITIES);
    }

    /// RFC 2595 §4: in AUTHORIZATION only, once, with a certificate. On success the session
    /// forgets a pending USER and returns `Next::StartTls` after the reply.
    fn stls(&mut self, cmd: &Command<'_>, out: &mut OutBuf) {
        if self.tls {
            return self.error(out, "command not permitted when TLS active");
        }
        if !self.settings.stls {
            return self.error(out, "STLS not available");
        }
        if cmd.args().next().is_some() {
            return self.error(out, "syntax: STLS");
        }
        out.push(b"+OK Begin TLS negotiation\r\n");
        self.state = State::Authorization { user: None };
        self.framer = LineFramer::default();
        self.stls_accepted = true;
    }

    /// Writes the `+OK` greeting (no APOP timestamp: APOP is not offered).
    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf) {
        out.push(format!("+OK {} POP3 postling ready\r\n", self.settings.hostname).as_bytes());
    }

    /// Consumes whole command lines from `input` and writes their replies; see the module
    /// docs and the contract in `proto`.
    pub fn step(
        &mut self,
        input: &[u8],
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) -> Step {
        let mut consumed = 0;
        loop {
            if self.warm_wanted {
                // (Cleared by `take_mailbox`; resumed with `MailboxDone::Warmed`.)
                return Step::new(consumed, Next::AwaitMailbox);
            }
            match &mut self.state {
                State::Closed => return Step::new(consumed, Next::Close),
                State::Verifying(_) => return Step::new(consumed, Next::AwaitAuth),
                State::AwaitingMailbox(_) => return Step::new(consumed, Next::AwaitMailbox),
                State::Delaying { wake_at, .. } => {
                    let left = wake_at.saturating_duration_since(ctx.now);
                    return Step::new(consumed, Next::Sleep(left));
                }
                State::Starting(_) => {
                    let State::Starting(s) = std::mem::replace(&mut self.state, State::Transaction)
                    else {
                        continue;
                    };
                    let Starting {
                        stream,
                        status,
                        number,
                    } = *s;
                    self.start_stream(number, stream, status, out, host);
                    continue;
                }
                State::Sending(stream) => match stream.fill(host, out) {
                    Fill::Full => return Step::new(consumed, Next::NeedOutput),
                    Fill::Done => self.state = State::Transaction,
                    Fill::Waiting => {
                        self.warm_wanted = true;
                        continue;
                    }
                    Fill::Failed(e) => {
                        warn!("pop3: reading a message failed mid-transfer ({e}); closing");
                        self.state = State::Closed;
                        continue;
                    }
                },
                State::Listing { uidl, next } => {
                    let (uidl, mut cursor) = (*uidl, *next);
                    let done = self.fill_listing(uidl, &mut cursor, out);
                    self.state = if done {
                        State::Transaction
                    } else {
                        State::Listing { uidl, next: cursor }
                    };
                    if !done {
                        return Step::new(consumed, Next::NeedOutput);
                    }
                }
                _ => {}
            }
            if out.free() < limits::REPLY_RESERVE {
                return Step::new(consumed, Next::NeedOutput);
            }
            let sasl = matches!(self.state, State::SaslResponse);
            let pre_login = sasl || matches!(self.state, State::Authorization { .. });
            if pre_login && !out.is_empty() {
                // Flush earlier replies first, so a login delay never holds them back.
                return Step::new(consumed, Next::NeedOutput);
            }
            let max_line = if sasl {
                limits::POP_SASL_MAX_LINE
            } else {
                limits::POP_MAX_LINE
            };
            let (n, frame) = self
                .framer
                .next(input.get(consumed..).unwrap_or_default(), max_line);
            consumed += n;
            match frame {
                Frame::Partial => return Step::new(consumed, Next::NeedInput),
                Frame::TooLong => {
                    if sasl {
                        self.state = State::Authorization { user: None };
                    }
                    self.error(out, "line too long");
                }
                Frame::Line(line) if sasl => self.sasl_response(line, ctx, out, host),
                Frame::Line(line) => self.command(line, ctx, out, host),
            }
            if self.stls_accepted {
                // Nothing after the STLS line is looked at: the reactor drops it.
                self.stls_accepted = false;
                return Step::new(consumed, Next::StartTls);
            }
        }
    }

    /// The password check answered (`Auth`), the mailbox work is done (`Mailbox`), or the
    /// failure delay is over (`Woke`): answer the login or the QUIT.
    pub fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, _host: &mut dyn PopHost) {
        let c = match c {
            Completion::Auth(verdict) => return self.verified(verdict, ctx, out),
            Completion::Mailbox(done) => return self.mailbox_done(done, ctx, out),
            c => c,
        };
        let (Completion::Woke, State::Delaying { then, .. }) = (c, &self.state) else {
            return;
        };
        self.state = match then {
            Delayed::Throttled => {
                out.push(THROTTLED);
                State::Closed
            }
            Delayed::TooManyAttempts => {
                out.push(TOO_MANY_ATTEMPTS);
                State::Closed
            }
            Delayed::InUse => {
                out.push(IN_USE);
                State::Authorization { user: None }
            }
            Delayed::Rejected => {
                out.push(AUTH_FAILED);
                if self.failures >= limits::AUTH_MAX_FAILURES {
                    State::Closed
                } else {
                    State::Authorization { user: None }
                }
            }
        };
    }

    /// The password check `Next::AwaitAuth` asks for; taken once.
    pub fn take_auth(&mut self) -> Option<AuthRequest> {
        match &mut self.state {
            State::Verifying(request) => request.take().map(|b| *b),
            _ => None,
        }
    }

    /// The mailbox work `Next::AwaitMailbox` asks for; taken once.
    pub fn take_mailbox(&mut self) -> Option<MailboxRequest> {
        if std::mem::take(&mut self.warm_wanted) {
            return Some(MailboxRequest::Warm);
        }
        match &mut self.state {
            State::AwaitingMailbox(request) => request.take(),
            _ => None,
        }
    }

    /// In AUTHORIZATION (not waiting out a failed login): closing the session now loses the
    /// client nothing but a reconnect. The reactor may then close it to make room for a
    /// newcomer.
    pub fn holds_nothing(&self) -> bool {
        matches!(
            self.state,
            State::Authorization { .. } | State::SaslResponse
        )
    }

    /// Logged in (TRANSACTION or later): the login deadline no longer applies.
    pub fn logged_in(&self) -> bool {
        self.maildrop.is_some()
    }

    /// The idle deadline or session cap passed. Deletes nothing. In the middle of a
    /// multi-line response the text would read as part of it, so it is left out there.
    pub fn on_timeout(&mut self, out: &mut OutBuf) {
        if !self.in_multiline() {
            out.push(b"-ERR [SYS/TEMP] timeout, closing connection\r\n");
        }
        self.state = State::Closed;
    }

    /// The server is stopping. Deletes nothing (as `on_timeout`).
    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        if !self.in_multiline() {
            out.push(b"-ERR [SYS/TEMP] server shutting down\r\n");
        }
        self.state = State::Closed;
    }

    fn in_multiline(&self) -> bool {
        matches!(self.state, State::Sending(_) | State::Listing { .. })
    }

    /// An erroneous command: `-ERR text`, or the last straw that closes the connection.
    fn error(&mut self, out: &mut OutBuf, text: &str) {
        self.errors += 1;
        if self.errors >= limits::POP_MAX_ERRORS {
            out.push(b"-ERR too many bad commands, closing connection\r\n");
            self.state = State::Closed;
        } else {
            push_fmt(out, format_args!("-ERR {text}\r\n"));
        }
    }

    fn command(&mut self, line: &[u8], ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost) {
        let cmd = Command::parse(line);
        let Some(verb) = Verb::parse(&cmd) else {
            return self.error(out, "unknown command");
        };
        if let Verb::Capa = verb {
            self.capabilities(out);
            return;
        }
        match self.state {
            State::Authorization { .. } => self.authorization(verb, &cmd, ctx, out, host),
            State::Transaction => self.transaction(verb, &cmd, out, host),
            _ => self.error(out, "command not valid now"),
        }
    }

    fn authorization(
        &mut self,
        verb: Verb,
        cmd: &Command<'_>,
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) {
        match verb {
            // RFC 2595 §2.1 and RFC 3206's AUTH code: a login in the clear is refused, not
            // failed; it counts as an erroneous command.
            Verb::User | Verb::Pass | Verb::Auth if !self.login_allowed() => self.error(
                out,
                "[AUTH] TLS required: send STLS first (or use the POP3S port)",
            ),
            Verb::User => match cmd.exact_args::<1>() {
                Some([name]) => {
                    self.state = State::Authorization {
                        user: Some(name.into()),
                    };
                    out.push(b"+OK send PASS\r\n");
                }
                None => self.error(out, "syntax: USER name"),
            },
            Verb::Pass => {
                let user = match &mut self.state {
                    State::Authorization { user } => user.take(),
                    _ => None,
                };
                match user {
                    // RFC 1939 §7: the password is the rest of the line, spaces and all.
                    Some(user) => self.login(&user, cmd.rest, "USER"),
                    None => self.error(out, "send USER first"),
                }
            }
            Verb::Auth => self.auth(cmd, ctx, out, host),
            Verb::Stls => self.stls(cmd, out),
            Verb::Quit => {
                out.push(b"+OK postling POP3 server signing off\r\n");
                self.state = State::Closed;
            }
            _ => self.error(out, "not logged in"),
        }
    }

    /// `AUTH` (list mechanisms) or `AUTH PLAIN [initial-response]` (RFC 5034 §4).
    fn auth(&mut self, cmd: &Command<'_>, ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost) {
        let mut args = cmd.args();
        let (mechanism, initial, extra) = (args.next(), args.next(), args.next());
        match (mechanism, initial, extra) {
            (None, _, _) => {
                out.push(b"+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n");
            }
            (Some(m), _, _) if !m.eq_ignore_ascii_case(b"PLAIN") => {
                out.push(b"-ERR unsupported SASL mechanism\r\n");
            }
            (Some(_), None, _) => {
                self.state = State::SaslResponse;
                out.push(b"+ \r\n");
            }
            // RFC 5034 §4: `=` is an empty initial response.
            (Some(_), Some(b"="), None) => self.plain(b"", ctx, out, host),
            (Some(_), Some(response), None) => self.plain(response, ctx, out, host),
            (Some(_), Some(_), Some(_)) => self.error(out, "syntax: AUTH PLAIN [response]"),
        }
    }

    fn sasl_response(&mut self, line: &[u8], ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost) {
        self.state = State::Authorization { user: None };
        if line == b"*" {
            out.push(b"-ERR authentication cancelled\r\n");
            return;
        }
        self.plain(line, ctx, out, host);
    }

    fn plain(&mut self, base64: &[u8], _ctx: Ctx, out: &mut OutBuf, _host: &mut dyn PopHost) {
        let mut buf = [0u8; limits::POP_SASL_MAX_DECODED];
        match sasl::decode_plain(base64, &mut buf) {
            Ok(p) => {
                let (user, password) = (p.authcid, p.password);
                self.login(user, password, "PLAIN");
            }
            Err(PlainError::Base64) => self.error(out, "invalid base64 in SASL response"),
            Err(PlainError::Malformed) => self.error(out, "malformed SASL PLAIN response"),
            Err(PlainError::Authzid) => {
                self.error(out, "authorization identity must be empty or the user name")
            }
        }
        // The decoded password does not outlive the attempt.
        buf.fill(0);
    }

    /// Hands the check to the reactor; `verified` goes on with its verdict.
    fn login(&mut self, user: &[u8], password: &[u8], mechanism: &'static str) {
        self.state = State::Verifying(Some(Box::new(
            AuthRequest::new(user, password).with_mechanism(mechanism),
        )));
    }

    fn verified(&mut self, verdict: AuthVerdict, ctx: Ctx, out: &mut OutBuf) {
        if !matches!(self.state, State::Verifying(_)) {
            return;
        }
        self.state = State::Authorization { user: None };
        match maildrop::login(verdict) {
            Login::Open(request) => self.state = State::AwaitingMailbox(Some(request)),
            Login::Rejected => {
                self.failures += 1;
                self.delay(ctx, Delayed::Rejected);
            }
            Login::Throttled => self.delay(ctx, Delayed::Throttled),
            Login::TooManyAttempts => self.delay(ctx, Delayed::TooManyAttempts),
            Login::CheckFailed => {
                out.push(b"-ERR [SYS/TEMP] cannot check passwords now, try again later\r\n");
            }
        }
    }

    /// The mailbox was opened (answer PASS) or updated (answer QUIT), or could not be.
    fn mailbox_done(&mut self, done: MailboxDone, ctx: Ctx, out: &mut OutBuf) {
        if !matches!(self.state, State::AwaitingMailbox(_)) {
            return;
        }
        match done {
            MailboxDone::Opened(Ok(messages)) => {
                let drop = Maildrop::new(messages);
                debug!("pop3: logged in, {} messages", drop.total_count());
                push_fmt(
                    out,
                    format_args!(
                        "+OK maildrop has {} messages ({} octets)\r\n",
                        drop.total_count(),
                        drop.total_octets()
                    ),
                );
                self.maildrop = Some(Box::new(drop));
                self.state = State::Transaction;
            }
            MailboxDone::Opened(Err(e)) => {
                self.state = State::Authorization { user: None };
                match e {
                    MailboxError::InUse => self.delay(ctx, Delayed::InUse),
                    MailboxError::Temporary(why) => {
                        warn!("pop3: mailbox open failed: {why}");
                        out.push(b"-ERR [SYS/TEMP] mailbox unavailable, try again later\r\n");
                    }
                    MailboxError::Permanent(why) => {
                        warn!("pop3: mailbox open failed: {why}");
                        out.push(b"-ERR [SYS/PERM] mailbox unavailable\r\n");
                    }
                }
            }
            MailboxDone::Updated(result) => {
                self.signed_off(result, out);
                self.state = State::Closed;
            }
            // (Not awaited in this state: returned above; POP3 never asks for a count.)
            MailboxDone::Warmed | MailboxDone::Sized(_) => {}
        }
    }

    fn delay(&mut self, ctx: Ctx, then: Delayed) {
        self.state = State::Delaying {
            wake_at: ctx.now + self.settings.auth_failure_delay,
            then,
        };
    }

    fn transaction(
        &mut self,
        verb: Verb,
        cmd: &Command<'_>,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) {
        let Some(drop) = self.maildrop.as_mut() else {
            return self.error(out, "no mailbox");
        };
        match verb {
            Verb::Stat | Verb::Noop | Verb::Rset if cmd.exact_args::<0>().is_none() => {
                self.error(out, "this command takes no arguments")
            }
            Verb::Stat => push_fmt(
                out,
                format_args!("+OK {} {}\r\n", drop.live_count(), drop.live_octets()),
            ),
            Verb::Noop => {
                out.push(b"+OK\r\n");
            }
            Verb::Rset => {
                drop.undelete_all();
                push_fmt(
                    out,
                    format_args!(
                        "+OK maildrop has {} messages ({} octets)\r\n",
                        drop.live_count(),
                        drop.live_octets()
                    ),
                );
            }
            Verb::List | Verb::Uidl => self.list(matches!(verb, Verb::Uidl), cmd, out),
            Verb::Retr => match cmd.exact_args::<1>() {
                Some([n]) => self.retr(n, None, out, host),
                None => self.error(out, "syntax: RETR msg"),
            },
            Verb::Top => match cmd.exact_args::<2>() {
                Some([n, lines]) => match parse_number(lines) {
                    Some(lines) => self.retr(n, Some(lines), out, host),
                    None => self.error(out, "invalid line count"),
                },
                None => self.error(out, "syntax: TOP msg lines"),
            },
            Verb::Dele => match cmd.exact_args::<1>() {
                Some([n]) => {
                    if let Some((number, index)) = self.message(n, out) {
                        if let Some(drop) = self.maildrop.as_mut() {
                            drop.delete(index);
                        }
                        push_fmt(out, format_args!("+OK message {number} deleted\r\n"));
                    }
                }
                None => self.error(out, "syntax: DELE msg"),
            },
            Verb::Quit => self.update(),
            Verb::User | Verb::Pass | Verb::Auth => self.error(out, "already logged in"),
            Verb::Capa => self.capabilities(out),
            Verb::Stls => self.error(out, "STLS only before login"),
        }
    }

    /// Resolves a message-number argument, answering the error itself. Returns the number
    /// and the 0-based index.
    fn message(&mut self, arg: &[u8], out: &mut OutBuf) -> Option<(u64, usize)> {
        let Some(number) = parse_number(arg) else {
            self.error(out, "invalid message number");
            return None;
        };
        match self.maildrop.as_ref().map(|d| d.lookup(number)) {
            Some(Ok(index)) => Some((number, index)),
            Some(Err(Missing::Deleted)) => {
                push_fmt(
                    out,
                    format_args!("-ERR message {number} already deleted\r\n"),
                );
                None
            }
            Some(Err(Missing::NoSuchMessage)) | None => {
                out.push(b"-ERR no such message\r\n");
                None
            }
        }
    }

    fn list(&mut self, uidl: bool, cmd: &Command<'_>, out: &mut OutBuf) {
        let mut args = cmd.args();
        match (args.next(), args.next()) {
            (None, _) => {
                if let Some(drop) = &self.maildrop {
                    push_fmt(
                        out,
                        format_args!(
                            "+OK {} messages ({} octets)\r\n",
                            drop.live_count(),
                            drop.live_octets()
                        ),
                    );
                }
                self.state = State::Listing { uidl, next: 0 };
            }
            (Some(n), None) => {
                let Some((number, index)) = self.message(n, out) else {
                    return;
                };
                let Some(info) = self.maildrop.as_ref().and_then(|d| d.info(index)) else {
                    return;
                };
                out.push(b"+OK ");
                write_listing_line(out, uidl, number, &info.uid, info.size);
            }
            (Some(_), Some(_)) => self.error(out, "syntax: LIST/UIDL [msg]"),
        }
    }

    /// Writes listing lines from `next` on while they fit; true once `.` is written too.
    fn fill_listing(&mut self, uidl: bool, next: &mut usize, out: &mut OutBuf) -> bool {
        let Some(drop) = &self.maildrop else {
            return out.push(b".\r\n") == 3;
        };
        while let Some(info) = drop.info(*next) {
            if !drop.is_deleted(*next) {
                let line_len = listing_line_len(uidl, *next as u64 + 1, &info.uid, info.size);
                if out.free() < line_len + 3 {
                    return false;
                }
                write_listing_line(out, uidl, *next as u64 + 1, &info.uid, info.size);
            }
            *next += 1;
        }
        if out.free() < 3 {
            return false;
        }
        out.push(b".\r\n");
        true
    }

    /// RETR (`top_lines` None) or TOP.
    fn retr(
        &mut self,
        arg: &[u8],
        top_lines: Option<u64>,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) {
        let Some((number, index)) = self.message(arg, out) else {
            return;
        };
        let size = self
            .maildrop
            .as_ref()
            .and_then(|d| d.info(index))
            .map_or(0, |m| m.size);
        let mut status = ArrayVec::<u8, 64>::new();
        let stream = match top_lines {
            None => {
                let _ =
                    std::io::Write::write_fmt(&mut status, format_args!("+OK {size} octets\r\n"));
                MessageStream::retr(index)
            }
            Some(lines) => {
                status.extend(b"+OK top of message follows\r\n".iter().copied());
                MessageStream::top(index, lines)
            }
        };
        self.start_stream(number, stream, status, out, host);
    }

    /// Starts sending a RETR or TOP reply (from TRANSACTION): the state it leads to.
    fn start_stream(
        &mut self,
        number: u64,
        mut stream: MessageStream,
        status: ArrayVec<u8, 64>,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) {
        match stream.start(host, out, &status) {
            Ok(Fill::Done) => self.state = State::Transaction,
            Ok(Fill::Full) => self.state = State::Sending(stream),
            Ok(Fill::Waiting) => {
                self.warm_wanted = true;
                self.state = State::Starting(Box::new(Starting {
                    stream,
                    status,
                    number,
                }));
            }
            Ok(Fill::Failed(e)) => {
                warn!("pop3: reading message {number} failed mid-transfer ({e}); closing");
                self.state = State::Closed;
            }
            Err(e) => {
                warn!("pop3: cannot read message {number}: {e}");
                out.push(b"-ERR [SYS/TEMP] cannot read that message now\r\n");
                self.state = State::Transaction;
            }
        }
    }

    /// QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6): the removal of the marked
    /// messages is a `Next::AwaitMailbox` request, answered when it is done (at once when
    /// none are marked).
    fn update(&mut self) {
        let deleted = self
            .maildrop
            .as_ref()
            .map(|m| m.deleted_indices())
            .unwrap_or_default();
        self.state = State::AwaitingMailbox(Some(MailboxRequest::Update(deleted)));
    }

    /// QUIT's reply once the UPDATE is over.
    fn signed_off(&mut self, result: Result<(), MailboxError>, out: &mut OutBuf) {
        let (deleted, left) = self
            .maildrop
            .as_ref()
            .map_or((0, 0), |d| (d.deleted_count(), d.live_count()));
        match result {
            Ok(()) => push_fmt(
                out,
                format_args!(
                    "+OK postling POP3 server signing off ({deleted} deleted, {left} left)\r\n"
                ),
            ),
            Err(e) => {
                warn!("pop3: UPDATE failed: {e:?}");
                out.push(b"-ERR [SYS/TEMP] some deleted messages were not removed\r\n");
            }
        }
    }

    /// Heap bytes held beside the struct itself (tests prove streaming keeps it flat).
    #[cfg(test)]
    pub fn heap_capacity(&self) -> usize {
        self.maildrop.as_ref().map_or(0, |d| d.heap_capacity())
    }
}

/// A UIDL unique-id as written: printable ASCII only (RFC 1939 §7: 0x21 to 0x7E), at most
/// `limits::POP_MAX_UID` octets, so a bad file name can neither break the framing nor stall it.
fn uid_bytes(uid: &str) -> impl Iterator<Item = u8> + '_ {
    uid.bytes()
        .take(limits::POP_MAX_UID)
        .map(|b| if (0x21..=0x7e).contains(&b) { b } else { b'?' })
}

fn listing_line_len(uidl: bool, number: u64, uid: &str, size: u64) -> usize {
    let digits = |n: u64| n.checked_ilog10().unwrap_or(0) as usize + 1;
    let value = if uidl {
        uid.len().min(limits::POP_MAX_UID)
    } else {
        digits(size)
    };
    digits(number) + 1 + value + 2
}

/// `N size` or `N uid`, with CRLF.
fn write_listing_line(out: &mut OutBuf, uidl: bool, number: u64, uid: &str, size: u64) {
    if uidl {
        let mut line = ArrayVec::<u8, { limits::POP_MAX_UID + 32 }>::new();
        let _ = std::io::Write::write_fmt(&mut line, format_args!("{number} "));
        line.extend(uid_bytes(uid));
        line.extend(*b"\r\n");
        out.push(&line);
    } else {
        push_fmt(out, format_args!("{number} {size}\r\n"));
    }
}

#[cfg(test)]
#[path = "pop3_auth_tests.rs"]
mod auth_tests;
#[cfg(test)]
#[path = "pop3_tests.rs"]
mod tests;
