//! The SMTP server session (RFC 5321): a sans-I/O state machine.
//!
//! Owns the dialog: command framing (512-octet lines, §4.5.3.1.4, over-long lines discarded
//! in sync), the command sequence (greeting, transaction, DATA), every reply text, the error
//! and rejected-recipient budgets, the `Received:` header, and the streaming of DATA through
//! the dot decoder into the host's spool entry. Paths and parameters are parsed by
//! `smtp_addr`, the data stream by `dotdata`; the host answers recipient verdicts and stores
//! the message.
//!
//! Address harvesting: refused recipients count against this session's budget
//! (`limits::SMTP_MAX_REJECTED_RCPTS`) and, through the host, against the client address's
//! budget across connections. While the address is over it, the session answers `421` at the
//! greeting and at every RCPT, known recipient or not, so reconnecting tells nothing.
//!
//! Submission (RFC 6409, RFC 4954): a session made `with_submission` (the `submission_listen`
//! and `smtps_listen` ports) offers AUTH PLAIN and LOGIN where a login is allowed (TLS, or
//! loopback / `allow_plaintext_auth`; otherwise AUTH gets `538 5.7.11`), refuses MAIL before
//! AUTH (`530 5.7.0`), takes only a sender the user owns (`SmtpHost::sender_owned_by`) and
//! may relay. The password check is the reactor's (`Next::AwaitAuth`, `take_auth`, then
//! `resume(Auth(verdict))`), as for POP; a refused login is answered `535 5.7.8` only after
//! `auth_failure_delay` (`Next::Sleep`, then `resume(Woke)`). On port 25 AUTH is never offered
//! (`502`): it is the MTA port; relaying there is for `relay_networks` clients only.
//!
//! Replies follow RFC 2034: every one carries an RFC 3463 enhanced code except the greeting
//! and the EHLO/HELO reply. Pipelined commands (RFC 2920) are answered in order, as many per
//! `step` as the output buffer has room for.

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod command_tests;
#[cfg(test)]
mod data_tests;
#[cfg(test)]
mod dialog_tests;
mod received;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use memchr::{memchr, memmem};

use super::sasl::{self, PlainError};
use super::smtp_addr::{self, ArgError};
use super::{AuthRequest, Completion, Ctx, Next, OutBuf, Step};
use crate::daemon::events;
use crate::limits;
use crate::mail::{BodyType, Envelope, QueueId, RcptVerdict, SpoolError};

/// Settings shared by all SMTP sessions (swapped as a whole on reload).
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// The name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// `max_message_size`, advertised with SIZE (RFC 1870).
    pub max_message_size: u64,
    /// A TLS certificate is loaded: STARTTLS is offered (RFC 3207).
    pub starttls: bool,
    /// Delay before a failed AUTH is answered (`auth_failure_delay`, as for POP).
    pub auth_failure_delay: Duration,
}

/// Services the SMTP session needs from the reactor.
pub trait SmtpHost {
    /// Has the client's address refused too many recipients lately, across its connections
    /// (`limits::SMTP_REJECTED_RCPTS_PER_CLIENT`)?
    fn client_over_rcpt_budget(&mut self) -> bool;
    /// A recipient of this client was refused: count it against the address's budget.
    fn rcpt_refused(&mut self);
    /// Is this recipient (a forward-path without brackets) acceptable? No alias expansion.
    fn rcpt_verdict(&mut self, rcpt: &str) -> RcptVerdict;
    /// Start a spool entry for this envelope; returns its queue id.
    fn message_begin(&mut self, envelope: &Envelope) -> Result<QueueId, SpoolError>;
    /// Append decoded message bytes (CRLF line endings, dots unstuffed). A write failure is
    /// latched by the host and reported by `message_commit`.
    fn message_append(&mut self, bytes: &[u8]);
    /// The end of data was seen: start the durable commit. `Ok` means the session returns
    /// `Next::AwaitCommit` and later gets `Completion::Committed`; `Err` is an immediate failure
    /// (the entry is already discarded).
    fn message_commit(&mut self) -> Result<(), SpoolError>;
    /// Discard the message being received (over the size limit, RSET, connection lost).
    fn message_abort(&mut self);
    /// Is `sender` one of `user`'s own addresses (the user at a local domain, or an alias
    /// that resolves to that user alone)? Asked only of authenticated sessions.
    fn sender_owned_by(&mut self, _user: &str, _sender: &str) -> bool {
        false
    }
    /// Unpredictable bits for an added Message-ID.
    fn random_token(&mut self) -> u64 {
        0
    }
}

/// One SMTP server session.
pub struct SmtpSession {
    settings: Rc<SmtpSettings>,
    peer: SocketAddr,
    mode: Mode,
    /// Set by EHLO/HELO.
    greeting: Option<Greeting>,
    /// Set by MAIL, cleared by RSET, EHLO/HELO and the end of DATA. Boxed, as `tls` and
    /// `auth`: an idle session (held by the thousand) carries only the pointer.
    transaction: Option<Box<Transaction>>,
    /// Erroneous commands so far (syntax, sequence, unknown).
    errors: u16,
    /// Recipients refused so far in this session.
    rejected_rcpts: u16,
    /// The session runs over TLS: protocol version and cipher suite, for the Received header.
    tls: Option<Box<(&'static str, &'static str)>>,
    /// The client is in `relay_networks`: it may relay without AUTH.
    relay_client: bool,
    /// A submission port (RFC 6409): AUTH offered, required before MAIL. Boxed: port 25
    /// sessions, the many, do not carry it.
    auth: Option<Box<AuthState>>,
}

/// AUTH on a submission port.
struct AuthState {
    /// A login without TLS is allowed (loopback client, or `allow_plaintext_auth`).
    clear_login_ok: bool,
    /// The authenticated user (canonical name).
    user: Option<Box<str>>,
    /// The mechanism of the AUTH in progress (for the log).
    mechanism: &'static str,
    /// Failed AUTH attempts in this session.
    failures: u32,
    /// When a failed login's delay ends (`Mode::Delaying`).
    wake_at: Option<Instant>,
    /// Adds a missing Date and Message-ID to the message being received.
    fix: Option<data::HeaderFix>,
}

enum Mode {
    /// Reading command lines.
    Command,
    /// Reading and dropping the rest of an over-long command line (`auth`: an AUTH response
    /// line, answered `500 5.5.6`).
    DiscardLine { auth: bool },
    /// Waiting for a SASL response line after a `334`.
    AuthResponse(AuthStep),
    /// The password check is the reactor's (`take_auth` takes the request).
    AwaitAuth(Option<Box<AuthRequest>>),
    /// A refused login waits out `auth_failure_delay` (until `AuthState::wake_at`) before
    /// its reply; `close_why`: the client address is over a budget (what it spent), and the
    /// reply is `421` and the end of the session.
    Delaying { close_why: Option<&'static str> },
    /// Receiving message data.
    Data(data::DataReceiver),
    /// The message was handed to the spool; `resume` brings the verdict.
    AwaitCommit,
    /// The session is over; only the output is still drained.
    Closed,
}

/// Which SASL response a `334` asked for.
enum AuthStep {
    Plain,
    LoginUser,
    /// The user name is in.
    LoginPassword(Box<[u8]>),
}

struct Greeting {
    /// Boxed, not a String: the session stays small (`conn`'s memory budget).
    name: Box<str>,
    /// EHLO rather than HELO: ESMTP parameters are allowed.
    extended: bool,
}

struct Transaction {
    sender: String,
    smtputf8: bool,
    body: BodyType,
    recipients: Vec<String>,
}

/// What a command handler wants the loop to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
    AwaitCommit,
    StartTls,
}

/// The outcome of looking at the start of the input.
enum Unit {
    /// Not enough input for a complete unit.
    Incomplete,
    /// This many octets were consumed.
    Done(usize, Flow),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    Auth,
}

const VERBS: [(&[u8], Verb); 13] = [
    (b"EHLO", Verb::Ehlo),
    (b"HELO", Verb::Helo),
    (b"MAIL", Verb::Mail),
    (b"RCPT", Verb::Rcpt),
    (b"DATA", Verb::Data),
    (b"RSET", Verb::Rset),
    (b"NOOP", Verb::Noop),
    (b"QUIT", Verb::Quit),
    (b"HELP", Verb::Help),
    (b"VRFY", Verb::Vrfy),
    (b"EXPN", Verb::Expn),
    (b"STARTTLS", Verb::StartTls),
    (b"AUTH", Verb::Auth),
];

/// First words of HTTP requests: a browser or proxy talking to the SMTP port (cross-protocol
/// attacks) is dropped without a reply rather than answered line by line.
const HTTP_METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"CONNECT ",
    b"OPTIONS ",
    b"DELETE ",
];

/// An EHLO keyword line.
enum Extension {
    StartTls,
    Auth,
    Pipelining,
    Size(u64),
    EightBitMime,
    EnhancedStatusCodes,
    SmtpUtf8,
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extension::StartTls => f.write_str("STARTTLS"),
            Extension::Auth => f.write_str("AUTH PLAIN LOGIN"),
            Extension::Pipelining => f.write_str("PIPELINING"),
            Extension::Size(n) => write!(f, "SIZE {n}"),
            Extension::EightBitMime => f.write_str("8BITMIME"),
            Extension::EnhancedStatusCodes => f.write_str("ENHANCEDSTATUSCODES"),
            Extension::SmtpUtf8 => f.write_str("SMTPUTF8"),
        }
    }
}

/// Appends formatted text to the output buffer (a reply always fits: the loop keeps
/// `limits::REPLY_RESERVE` free before each command).
struct OutWriter<'a>(&'a mut OutBuf);

impl fmt::Write for OutWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push(s.as_bytes());
        Ok(())
    }
}

/// Writes one reply line; the text comes without its CRLF.
fn reply(out: &mut OutBuf, text: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut OutWriter(out), text);
    out.push(b"\r\n");
}

macro_rules! reply {
    ($out:expr, $($arg:tt)*) => { reply($out, format_args!($($arg)*)) };
}

// After the macro, which they use.
mod auth;
mod data;

fn looks_like_http(line: &[u8]) -> bool {
    HTTP_METHODS.iter().any(|m| line.starts_with(m)) || memmem::find(line, b" HTTP/1.").is_some()
}

/// `bytes` without any trailing spaces or tabs (a common client sloppiness, harmless).
fn trim_end_blanks(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

impl SmtpSession {
    pub fn new(settings: Rc<SmtpSettings>, peer: SocketAddr) -> SmtpSession {
        SmtpSession {
            settings,
            peer,
            mode: Mode::Command,
            greeting: None,
            transaction: None,
            errors: 0,
            rejected_rcpts: 0,
            tls: None,
            relay_client: false,
            auth: None,
        }
    }

    /// A submission port (RFC 6409): AUTH offered where a login is allowed, required before
    /// MAIL. `clear_login_ok`: a login without TLS is allowed (loopback, or
    /// `allow_plaintext_auth`).
    pub fn with_submission(mut self, clear_login_ok: bool) -> SmtpSession {
        self.auth = Some(Box::new(AuthState {
            clear_login_ok,
            user: None,
            mechanism: "",
            failures: 0,
            wake_at: None,
            fix: None,
        }));
        self
    }

    /// The client is in `relay_networks`: it may relay without AUTH.
    pub fn with_relay_client(mut self, relay: bool) -> SmtpSession {
        self.relay_client = relay;
        self
    }

    /// The authenticated user, if any (for the session's log line).
    pub fn auth_user(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|a| a.user.as_deref())
    }

    fn user(&self) -> Option<&str> {
        self.auth_user()
    }

    /// The password check `Next::AwaitAuth` asks for; taken once.
    pub fn take_auth(&mut self) -> Option<AuthRequest> {
        match &mut self.mode {
            Mode::AwaitAuth(request) => request.take().map(|b| *b),
            _ => None,
        }
    }

    fn login_allowed(&self) -> bool {
        self.tls.is_some() || self.auth.as_ref().is_some_and(|a| a.clear_login_ok)
    }

    /// The TLS handshake after STARTTLS (or on an implicit-TLS port) is complete.
    pub fn tls_established(&mut self, version: &'static str, cipher: &'static str) {
        self.tls = Some(Box::new((version, cipher)));
    }

    /// Writes the `220` greeting, or `421` (and the session is over) when the client's address
    /// is over its rejected-recipient budget.
    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf, host: &mut dyn SmtpHost) {
        if host.client_over_rcpt_budget() {
            self.over_rcpt_budget(out, "CONNECT");
            self.mode = Mode::Closed;
            return;
        }
        out.push(format!("220 {} ESMTP postling\r\n", self.settings.hostname).as_bytes());
    }

    fn over_rcpt_budget(&self, out: &mut OutBuf, stage: &str) {
        let text = format!(
            "421 4.7.0 {} too many rejected recipients from your address, try again later",
            self.settings.hostname
        );
        events::log_reject(stage, self.peer.ip(), &text);
        reply!(out, "{text}");
    }

    /// Handles as many complete commands (or data lines) of `input` as the output buffer has
    /// room to answer; see the contract in `proto`.
    pub fn step(
        &mut self,
        input: &[u8],
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
    ) -> Step {
        let mut pos = 0;
        loop {
            match self.mode {
                Mode::Closed => return Step::new(pos, Next::Close),
                Mode::AwaitCommit => return Step::new(pos, Next::AwaitCommit),
                // Earlier replies go out first, so the check or the delay never holds them.
                Mode::AwaitAuth(_) | Mode::Delaying { .. } if !out.is_empty() => {
                    return Step::new(pos, Next::NeedOutput);
                }
                Mode::AwaitAuth(_) => return Step::new(pos, Next::AwaitAuth),
                Mode::Delaying { .. } => {
                    let wake_at = self.auth.as_ref().and_then(|a| a.wake_at);
                    let left =
                        wake_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(ctx.now));
                    return Step::new(pos, Next::Sleep(left));
                }
                _ if out.free() < limits::REPLY_RESERVE => {
                    return Step::new(pos, Next::NeedOutput);
                }
                _ => {}
            }
            let rest = input.get(pos..).unwrap_or(&[]);
            let unit = match self.mode {
                Mode::Data(_) => self.data_unit(rest, out, host),
                _ => self.command_unit(rest, ctx, out, host),
            };
            match unit {
                Unit::Incomplete => return Step::new(pos, Next::NeedInput),
                Unit::Done(used, flow) => {
                    pos += used;
                    match flow {
                        Flow::Continue => {}
                        Flow::Close => self.mode = Mode::Closed,
                        Flow::AwaitCommit => self.mode = Mode::AwaitCommit,
                        // Nothing after the STARTTLS line is looked at: the reactor drops it.
                        Flow::StartTls => return Step::new(pos, Next::StartTls),
                    }
                }
            }
        }
    }

    /// The spool's verdict on the message handed over with `Next::AwaitCommit`, the password
    /// check's (`Auth`), or the end of a failed login's delay (`Woke`).
    pub fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, _host: &mut dyn SmtpHost) {
        let result = match c {
            Completion::Committed(result) => result,
            Completion::Auth(verdict) => return self.verified(verdict, ctx, out),
            Completion::Woke => return self.woke(out),
            // Never asked for by an SMTP session.
            Completion::Mailbox(_) => return,
        };
        if !matches!(self.mode, Mode::AwaitCommit) {
            return;
        }
        self.mode = Mode::Command;
        match result {
            Ok(id) => reply!(out, "250 2.0.0 Ok: queued as {id}"),
            Err(e) => self.spool_failure(out, &e),
        }
    }

    /// Outside a mail transaction (before MAIL, or between transactions) and reading commands:
    /// closing the session now loses the client nothing but a reconnect. The reactor may then
    /// close it to make room for a newcomer (`Proto::evicted_reply`).
    pub fn holds_nothing(&self) -> bool {
        matches!(self.mode, Mode::Command) && self.transaction.is_none() && self.user().is_none()
    }

    /// The idle deadline or session cap passed: write `421 4.4.2`.
    pub fn on_timeout(&mut self, out: &mut OutBuf) {
        out.push(
            format!(
                "421 4.4.2 {} Error: timeout exceeded\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
    }

    /// The server is stopping: write `421 4.3.2`.
    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        out.push(
            format!(
                "421 4.3.2 {} Service shutting down\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
    }

    // ---- framing ----------------------------------------------------------------------------

    /// One command line, or a step through an over-long one.
    fn command_unit(
        &mut self,
        rest: &[u8],
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
    ) -> Unit {
        if let Mode::DiscardLine { auth } = self.mode {
            return match memchr(b'\n', rest) {
                Some(lf) => {
                    self.mode = Mode::Command;
                    Unit::Done(lf + 1, self.line_too_long(out, auth))
                }
                None if rest.len() >= limits::MAX_UNIT => Unit::Done(rest.len(), Flow::Continue),
                None => Unit::Incomplete,
            };
        }
        let auth = matches!(self.mode, Mode::AuthResponse(_));
        let max = if auth {
            limits::SMTP_SASL_MAX_LINE
        } else {
            limits::SMTP_MAX_LINE
        };
        let window = rest.get(..max).unwrap_or(rest);
        if let Some(lf) = memchr(b'\n', window) {
            let line = window.get(..=lf).unwrap_or(window);
            let flow = if auth {
                self.auth_response(line, ctx, out)
            } else {
                self.command_line(line, ctx, out, host)
            };
            return Unit::Done(lf + 1, flow);
        }
        if rest.len() < max {
            return Unit::Incomplete;
        }
        // Longer than any command may be. An HTTP request line can be this long too.
        if !auth && looks_like_http(window) {
            return Unit::Done(rest.len(), Flow::Close);
        }
        let beyond = rest.get(max..).unwrap_or(&[]);
        match memchr(b'\n', beyond) {
            Some(k) => {
                // An over-long response ends the exchange (RFC 4954 §4: 500 5.5.6).
                self.mode = Mode::Command;
                Unit::Done(max + k + 1, self.line_too_long(out, auth))
            }
            None if rest.len() >= limits::MAX_UNIT => {
                self.mode = Mode::DiscardLine { auth };
                Unit::Done(rest.len(), Flow::Continue)
            }
            None => Unit::Incomplete,
        }
    }

    fn line_too_long(&mut self, out: &mut OutBuf, auth: bool) -> Flow {
        if auth {
            return self.client_error(
                out,
                format_args!("500 5.5.6 Authentication exchange line is too long"),
            );
        }
        self.client_error(out, format_args!("500 5.5.2 Error: line too long"))
    }

    /// One complete command line, `line` ending in LF (normally CRLF).
    fn command_line(
        &mut self,
        line: &[u8],
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
    ) -> Flow {
        let ended_in_crlf = line.ends_with(b"\r\n");
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if memchr(0, text).is_some() {
            return self.client_error(
                out,
                format_args!("500 5.5.2 Error: NUL character in command"),
            );
        }
        if looks_like_http(text) {
            return Flow::Close;
        }
        let text = trim_end_blanks(text);
        let (word, args) = match memchr(b' ', text) {
            Some(sp) => (
                text.get(..sp).unwrap_or(text),
                text.get(sp + 1..).unwrap_or(&[]),
            ),
            None => (text, &[][..]),
        };
        let Some(verb) = VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map(|&(_, verb)| verb)
        else {
            return self.client_error(out, format_args!("500 5.5.2 Error: command not recognized"));
        };
        match verb {
            Verb::Ehlo => self.ehlo(args, true, out),
            Verb::Helo => self.ehlo(args, false, out),
            Verb::Mail => self.mail(args, out, host),
            Verb::Rcpt => self.rcpt(args, out, host),
            Verb::Data => self.data(args, ended_in_crlf, ctx, out, host),
            Verb::Rset => self.without_args(args, "RSET", out, |s, out| {
                s.transaction = None;
                reply!(out, "250 2.0.0 Ok");
            }),
            Verb::Noop => {
                reply!(out, "250 2.0.0 Ok");
                Flow::Continue
            }
            Verb::Quit => {
                if !args.is_empty() {
                    return self.client_error(out, format_args!("501 5.5.4 Syntax: QUIT"));
                }
                reply!(out, "221 2.0.0 Bye");
                Flow::Close
            }
            Verb::Help => {
                reply!(
                    out,
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY"
                );
                Flow::Continue
            }
            Verb::Vrfy => {
                if args.is_empty() {
                    return self.client_error(out, format_args!("501 5.5.4 Syntax: VRFY address"));
                }
                // Never tells whether a user exists (address harvesting).
                reply!(
                    out,
                    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
                );
                Flow::Continue
            }
            Verb::Expn => {
                reply!(out, "502 5.5.1 EXPN not available");
                Flow::Continue
            }
            Verb::StartTls => self.starttls(args, out),
            // Port 25 is the MTA port: AUTH is known there but never offered (RFC 5321
            // §4.2.4: 502, not 500); users submit on the submission ports.
            Verb::Auth if self.auth.is_none() => {
                self.client_error(out, format_args!("502 5.5.1 Error: AUTH not available"))
            }
            Verb::Auth => self.auth(args, ctx, out),
        }
    }

    /// RFC 3207. On success the session forgets EHLO and any envelope (§4.2) and returns
    /// `Next::StartTls`.
    fn starttls(&mut self, args: &[u8], out: &mut OutBuf) -> Flow {
        if self.tls.is_some() {
            return self.client_error(out, format_args!("503 5.5.1 Error: TLS already active"));
        }
        if !self.settings.starttls {
            return self.client_error(out, format_args!("502 5.5.1 Error: STARTTLS not available"));
        }
        if !args.is_empty() {
            return self.client_error(out, format_args!("501 5.5.4 Syntax: STARTTLS"));
        }
        if self.transaction.is_some() {
            return self.client_error(
                out,
                format_args!("503 5.5.1 Error: STARTTLS not allowed in a mail transaction"),
            );
        }
        reply!(out, "220 2.0.0 Ready to start TLS");
        self.greeting = None;
        self.transaction = None;
        // A login made in the clear (loopback) is knowledge from before TLS too.
        if let Some(a) = self.auth.as_mut() {
            a.user = None;
        }
        Flow::StartTls
    }

    // ---- replies that count against the budgets ---------------------------------------------

    /// A syntax, sequence or unknown-command error: the reply, or `421` once the budget is
    /// spent (scanners and confused peers do not get unlimited tries).
    fn client_error(&mut self, out: &mut OutBuf, text: fmt::Arguments<'_>) -> Flow {
        self.errors = self.errors.saturating_add(1);
        if u32::from(self.errors) >= limits::SMTP_MAX_ERRORS {
            reply!(out, "421 4.7.0 {} too many errors", self.settings.hostname);
            return Flow::Close;
        }
        reply(out, text);
        Flow::Continue
    }

    /// A refused recipient: the reply, or `421` past the session's harvest budget. It counts
    /// against the address's budget too.
    fn rejected_rcpt(
        &mut self,
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
        text: fmt::Arguments<'_>,
    ) -> Flow {
        host.rcpt_refused();
        self.rejected_rcpts = self.rejected_rcpts.saturating_add(1);
        if u32::from(self.rejected_rcpts) > limits::SMTP_MAX_REJECTED_RCPTS {
            let cut = format!(
                "421 4.7.0 {} too many rejected recipients",
                self.settings.hostname
            );
            events::log_reject("RCPT", self.peer.ip(), &cut);
            reply!(out, "{cut}");
            return Flow::Close;
        }
        events::log_reject("RCPT", self.peer.ip(), &text.to_string());
        reply(out, text);
        Flow::Continue
    }

    fn without_args(
        &mut self,
        args: &[u8],
        verb: &str,
        out: &mut OutBuf,
        handler: impl FnOnce(&mut Self, &mut OutBuf),
    ) -> Flow {
        if !args.is_empty() {
            return self.client_error(out, format_args!("501 5.5.4 Syntax: {verb}"));
        }
        handler(self, out);
        Flow::Continue
    }

    // ---- commands ---------------------------------------------------------------------------

    fn ehlo(&mut self, args: &[u8], extended: bool, out: &mut OutBuf) -> Flow {
        let verb = if extended { "EHLO" } else { "HELO" };
        let token = args
            .trim_ascii_start()
            .split(|&b| b == b' ')
            .next()
            .unwrap_or(&[]);
        // Any visible name is taken (real clients send `my_host`, `[::1]`, bare words); the
        // Received header shows it only if it is a valid domain.
        let name = std::str::from_utf8(token).ok().filter(|n| {
            !n.is_empty()
                && n.len() <= limits::SMTP_MAX_HELO
                && n.bytes().all(|b| b > b' ' && b != 0x7f)
        });
        let Some(name) = name else {
            return self.client_error(out, format_args!("501 5.5.2 Syntax: {verb} hostname"));
        };
        self.transaction = None;
        self.greeting = Some(Greeting {
            name: name.into(),
            extended,
        });
        let hostname = &self.settings.hostname;
        if !extended {
            reply!(out, "250 {hostname}");
            return Flow::Continue;
        }
        let starttls =
            (self.settings.starttls && self.tls.is_none()).then_some(Extension::StartTls);
        let auth = (self.auth.is_some() && self.login_allowed() && self.user().is_none())
            .then_some(Extension::Auth);
        let extensions: Vec<Extension> = starttls
            .into_iter()
            .chain(auth)
            .chain([
                Extension::Pipelining,
                Extension::Size(self.settings.max_message_size),
                Extension::EightBitMime,
                Extension::EnhancedStatusCodes,
                Extension::SmtpUtf8,
            ])
            .collect();
        reply!(out, "250-{hostname}");
        let last = extensions.len() - 1;
        for (i, ext) in extensions.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            reply!(out, "250{sep}{ext}");
        }
        Flow::Continue
    }

    fn mail(&mut self, args: &[u8], out: &mut OutBuf, host: &mut dyn SmtpHost) -> Flow {
        let Some(extended) = self.greeting.as_ref().map(|g| g.extended) else {
            return self.client_error(out, format_args!("503 5.5.1 Error: send HELO/EHLO first"));
        };
        if self.transaction.is_some() {
            return self.client_error(out, format_args!("503 5.5.1 Error: nested MAIL command"));
        }
        if self.auth.is_some() && self.user().is_none() {
            return self.client_error(out, format_args!("530 5.7.0 Authentication required"));
        }
        let Ok(args) = std::str::from_utf8(args) else {
            return self.client_error(
                out,
                format_args!("501 5.1.7 Bad sender address syntax: invalid UTF-8"),
            );
        };
        let mail = match smtp_addr::parse_mail(args, extended) {
            Ok(m) => m,
            Err(e) => return self.argument_error(e, "MAIL FROM:<address>", "5.1.7", "sender", out),
        };
        if mail.path.non_ascii && !mail.smtputf8 {
            // RFC 6531 §3.5: a non-ASCII address needs the SMTPUTF8 parameter.
            let text = "553 5.6.7 Non-ASCII sender address not permitted without SMTPUTF8";
            events::log_reject("MAIL", self.peer.ip(), text);
            reply!(out, "{text}");
            return Flow::Continue;
        }
        if mail
            .size
            .is_some_and(|n| n > self.settings.max_message_size)
        {
            let text = "552 5.3.4 Message size exceeds fixed maximum message size";
            events::log_reject("MAIL", self.peer.ip(), text);
            reply!(out, "{text}");
            return Flow::Continue;
        }
        if let Some(user) = self.user() {
            // RFC 6409 §4.1, §6.1: a submitted message's sender is the user's own.
            let sender = mail.path.address;
            if sender.is_empty() {
                reply!(
                    out,
                    "553 5.7.1 Sender address rejected: the null sender is not accepted on submission"
                );
                return Flow::Continue;
            }
            if !host.sender_owned_by(user, sender) {
                reply!(
                    out,
                    "553 5.7.1 <{sender}>: Sender address rejected: not owned by user {user}"
                );
                return Flow::Continue;
            }
        }
        self.transaction = Some(Box::new(Transaction {
            sender: mail.path.address.to_owned(),
            smtputf8: mail.smtputf8,
            body: mail.body.unwrap_or_default(),
            recipients: Vec::new(),
        }));
        reply!(out, "250 2.1.0 Ok");
        Flow::Continue
    }

    fn rcpt(&mut self, args: &[u8], out: &mut OutBuf, host: &mut dyn SmtpHost) -> Flow {
        let Some((accepted, smtputf8)) = self
            .transaction
            .as_ref()
            .map(|t| (t.recipients.len(), t.smtputf8))
        else {
            return self.client_error(out, format_args!("503 5.5.1 Error: need MAIL command"));
        };
        let Ok(args) = std::str::from_utf8(args) else {
            return self.client_error(
                out,
                format_args!("501 5.1.3 Bad recipient address syntax: invalid UTF-8"),
            );
        };
        let rcpt = match smtp_addr::parse_rcpt(args) {
            Ok(r) => Some(r),
            Err(ArgError::UnsafeLocalPart) => None,
            Err(e) => {
                return self.argument_error(e, "RCPT TO:<address>", "5.1.3", "recipient", out);
            }
        };
        if host.client_over_rcpt_budget() {
            // Every recipient alike, known or not: a verdict would let a harvester go on at
            // one probe per connection.
            self.over_rcpt_budget(out, "RCPT");
            return Flow::Close;
        }
        if accepted >= limits::SMTP_MAX_RCPTS {
            reply!(out, "452 4.5.3 Too many recipients");
            return Flow::Continue;
        }
        let Some(rcpt) = rcpt else {
            // Never handed to the directory: such a local part must never become a path.
            return self.rejected_rcpt(
                out,
                host,
                format_args!("550 5.1.3 Recipient address rejected: local part not allowed"),
            );
        };
        let address = rcpt.path.address;
        if rcpt.path.non_ascii && !smtputf8 {
            return self.rejected_rcpt(
                out,
                host,
                format_args!(
                    "553 5.6.7 Non-ASCII recipient address not permitted without SMTPUTF8"
                ),
            );
        }
        let duplicate = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.recipients.iter().any(|r| r == address));
        if duplicate {
            reply!(out, "250 2.1.5 Ok");
            return Flow::Continue;
        }
        let verdict = match host.rcpt_verdict(address) {
            // An authenticated user, or a `relay_networks` client, may relay: the recipient
            // is queued for the relay.
            RcptVerdict::RelayDenied if self.user().is_some() || self.relay_client => {
                RcptVerdict::Accept
            }
            v => v,
        };
        match verdict {
            RcptVerdict::Accept => {
                if let Some(t) = self.transaction.as_mut() {
                    t.recipients.push(address.to_owned());
                }
                reply!(out, "250 2.1.5 Ok");
                Flow::Continue
            }
            RcptVerdict::UnknownUser => self.rejected_rcpt(
                out,
                host,
                format_args!("550 5.1.1 <{address}>: Recipient address rejected: User unknown"),
            ),
            RcptVerdict::RelayDenied => self.rejected_rcpt(
                out,
                host,
                format_args!("550 5.7.1 <{address}>: Relay access denied"),
            ),
            RcptVerdict::TempFail => {
                reply!(
                    out,
                    "451 4.3.0 <{address}>: Temporary lookup failure, try again later"
                );
                Flow::Continue
            }
        }
    }

    /// The reply to a MAIL or RCPT argument that did not parse. `code` and `role` name the
    /// address (5.1.7 sender, 5.1.3 recipient, RFC 3463).
    fn argument_error(
        &mut self,
        e: ArgError<'_>,
        syntax: &str,
        code: &str,
        role: &str,
        out: &mut OutBuf,
    ) -> Flow {
        match e {
            ArgError::Syntax => self.client_error(out, format_args!("501 5.5.2 Syntax: {syntax}")),
            ArgError::BadPath(why) => self.client_error(
                out,
                format_args!("501 {code} Bad {role} address syntax: {why}"),
            ),
            ArgError::PathTooLong => {
                self.client_error(out, format_args!("501 {code} Path too long"))
            }
            ArgError::UnknownParameter(keyword) => self.client_error(
                out,
                format_args!("555 5.5.4 Unsupported parameter: {keyword}"),
            ),
            ArgError::BadParameter(why) => self.client_error(out, format_args!("501 5.5.4 {why}")),
            ArgError::UnsafeLocalPart => self.client_error(
                out,
                format_args!("501 {code} Bad {role} address syntax: local part not allowed"),
            ),
        }
    }
}
