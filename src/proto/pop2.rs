//! The POP2 server session (RFC 937): a sans-I/O state machine.
//!
//! RFC 937's states map as: CALL (before `HELO`), NMBR (a folder selected, `#count` sent),
//! SIZE (`=size` of the current message sent, after `READ` or an acknowledgement) and XFER
//! (the message text sent by `RETR`, awaiting `ACKS`, `ACKD` or `NACK`). Replies are `+` / `-`
//! lines, `#count` and `=size`.
//!
//! - `HELO user password` authenticates and opens the mailbox with the same rules as POP3: a
//!   rejected login is answered only after `auth_failure_delay`, the same for an unknown user
//!   and a wrong password, and so is a mailbox in use by another session or an address over
//!   its failure or attempt budget. As RFC 937 says, a failed `HELO` (bad credentials,
//!   throttled, or a mailbox that cannot be opened) gets `-` and the connection is closed: one
//!   guess per connection and per delay. The password check itself is the reactor's (`Next::AwaitAuth`,
//!   `take_auth`, `resume(Auth(verdict))`); if it cannot run (the helper process is gone) the
//!   `-` comes at once.
//! - `FOLD name` selects the user's own INBOX (case-insensitive) → `#count`; any other name
//!   selects an empty folder → `#0` (RFC 937 has no negative reply to FOLD).
//! - Messages are numbered 1.. over the login snapshot. `READ [n]` makes n (default: the
//!   current one) current and answers `=size` (`=0`: no such message, or deleted). `RETR`
//!   sends exactly `size` octets with CRLF line ends, no dot-stuffing, no terminator. The size
//!   is counted from the file when it is announced (a `MailboxRequest::Size` the session
//!   waits for, since it reads the whole message), never taken from the login listing, whose
//!   Maildir `W=` may lie: a wrong size would cut the text short (and
//!   `ACKD` delete the rest) or leave the client waiting for octets that never come. `ACKS`
//!   keeps it, `ACKD` marks it deleted, both move on and answer `=size` of the next; `NACK`
//!   keeps it current and answers its `=size` again.
//! - `QUIT` deletes the `ACKD` messages (UPDATE) and closes; a drop, timeout or shutdown
//!   deletes nothing.

use std::rc::Rc;
use std::time::Instant;

use log::{debug, warn};

use super::maildrop::{self, Delayed, Login, Maildrop};
use super::pop3::PopSettings;
use super::popline::{Command, Frame, LineFramer, parse_number, push_fmt};
use super::popmsg::{Fill, MessageStream};
use super::{
    AuthRequest, AuthVerdict, Completion, Ctx, MailboxRequest, Next, OutBuf, PopHost, Step,
};
use crate::limits;
use crate::mail::{MailboxDone, MailboxError};

enum State {
    /// CALL: waiting for HELO.
    Call,
    /// HELO's password check is with the reactor (until `take_auth`, the request is here).
    Verifying(Option<Box<AuthRequest>>),
    /// Opening the mailbox after HELO, or QUIT's UPDATE, is with the reactor (until
    /// `take_mailbox`, the request is here).
    AwaitingMailbox(Option<MailboxRequest>),
    /// HELO failed; answered at `wake_at` (`then` says how), then the connection closes.
    Delaying {
        wake_at: Instant,
        then: Delayed,
    },
    /// READ or an acknowledgement made `current` the current message: its exact size is being
    /// counted (`MailboxRequest::Size`, with the reactor once `take_mailbox` took it); the
    /// `=size` reply waits for it.
    Sizing {
        current: u64,
        request: Option<MailboxRequest>,
    },
    /// NMBR (`size` None) or SIZE (`=size` of `current` was sent: exactly what RETR sends).
    Selected {
        current: u64,
        size: Option<u64>,
    },
    /// RETR waits for its first bytes to be read in (`Fill::Waiting` from `start`): nothing
    /// of its text is written yet.
    Starting {
        stream: MessageStream,
        current: u64,
        size: u64,
    },
    /// RETR's text in flight.
    Sending {
        stream: MessageStream,
        current: u64,
    },
    /// XFER: the text of `current` was sent; an acknowledgement is due.
    Xfer {
        current: u64,
    },
    Closed,
}

/// One POP2 server session.
pub struct Pop2Session {
    settings: Rc<PopSettings>,
    state: State,
    framer: LineFramer,
    maildrop: Option<Box<Maildrop>>,
    /// FOLD selected INBOX (the default after HELO) rather than an empty folder.
    inbox: bool,
    errors: u32,
    /// Logins are accepted (POP2 has no TLS: a loopback client, or `allow_plaintext_auth`).
    clear_login_ok: bool,
    /// The message being sent must be read in first: `step` returns `Next::AwaitMailbox`
    /// and `take_mailbox` says `MailboxRequest::Warm`.
    warm_wanted: bool,
}

impl Pop2Session {
    pub fn new(settings: Rc<PopSettings>) -> Pop2Session {
        Pop2Session {
            settings,
            state: State::Call,
            framer: LineFramer::default(),
            maildrop: None,
            inbox: true,
            errors: 0,
            clear_login_ok: true,
            warm_wanted: false,
        }
    }

    /// Whether a login is accepted on this connection (POP2 has no TLS, so: a loopback client
    /// or `allow_plaintext_auth`). The default is yes.
    pub fn with_clear_login(mut self, ok: bool) -> Pop2Session {
        self.clear_login_ok = ok;
        self
    }

    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf) {
        out.push(
            format!(
                "+ POP2 {} postling server ready\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
    }

    /// Consumes whole command lines and writes their replies; see the contract in `proto`.
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
                State::AwaitingMailbox(_) | State::Sizing { .. } => {
                    return Step::new(consumed, Next::AwaitMailbox);
                }
                State::Delaying { wake_at, .. } => {
                    let left = wake_at.saturating_duration_since(ctx.now);
                    return Step::new(consumed, Next::Sleep(left));
                }
                State::Starting { .. } => {
                    let State::Starting {
                        stream,
                        current,
                        size,
                    } = std::mem::replace(&mut self.state, State::Closed)
                    else {
                        continue;
                    };
                    self.start_stream(current, size, stream, out, host);
                    continue;
                }
                State::Sending { stream, current } => match stream.fill(host, out) {
                    Fill::Full => return Step::new(consumed, Next::NeedOutput),
                    Fill::Done => self.state = State::Xfer { current: *current },
                    Fill::Waiting => {
                        self.warm_wanted = true;
                        continue;
                    }
                    Fill::Failed(e) => {
                        warn!("pop2: reading a message failed mid-transfer ({e}); closing");
                        self.state = State::Closed;
                        continue;
                    }
                },
                _ => {}
            }
            if out.free() < limits::REPLY_RESERVE {
                return Step::new(consumed, Next::NeedOutput);
            }
            if matches!(self.state, State::Call) && !out.is_empty() {
                // Flush earlier replies first, so a login delay never holds them back.
                return Step::new(consumed, Next::NeedOutput);
            }
            let (n, frame) = self.framer.next(
                input.get(consumed..).unwrap_or_default(),
                limits::POP_MAX_LINE,
            );
            consumed += n;
            match frame {
                Frame::Partial => return Step::new(consumed, Next::NeedInput),
                Frame::TooLong => self.error(out, "line too long"),
                Frame::Line(line) => self.command(line, ctx, out, host),
            }
        }
    }

    /// HELO's password check answered (`Auth`), the mailbox work is done (`Mailbox`: answer
    /// HELO or QUIT), or the failure delay is over (`Woke`: answer the failed HELO and close).
    pub fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, _host: &mut dyn PopHost) {
        let c = match c {
            Completion::Auth(verdict) => return self.verified(verdict, ctx, out),
            Completion::Mailbox(done) => return self.mailbox_done(done, ctx, out),
            c => c,
        };
        let (Completion::Woke, State::Delaying { then, .. }) = (c, &self.state) else {
            return;
        };
        out.push(match then {
            Delayed::Throttled => {
                b"- Too many failed logins from your address, try again later\r\n".as_slice()
            }
            Delayed::TooManyAttempts => {
                b"- Too many logins from your address, try again later\r\n".as_slice()
            }
            Delayed::InUse => b"- mailbox is in use by another session\r\n".as_slice(),
            Delayed::Rejected => b"- Invalid user name or password\r\n".as_slice(),
        });
        self.state = State::Closed;
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
            State::AwaitingMailbox(request) | State::Sizing { request, .. } => request.take(),
            _ => None,
        }
    }

    /// Before HELO (CALL state): closing the session now loses the client nothing but a
    /// reconnect. The reactor may then close it to make room for a newcomer.
    pub fn holds_nothing(&self) -> bool {
        matches!(self.state, State::Call)
    }

    /// Logged in (a mailbox is open): the login deadline no longer applies.
    pub fn logged_in(&self) -> bool {
        self.maildrop.is_some()
    }

    /// Deletes nothing. During RETR's text the reply would read as message text: left out.
    pub fn on_timeout(&mut self, out: &mut OutBuf) {
        if !matches!(self.state, State::Sending { .. }) {
            out.push(b"- timeout, closing connection\r\n");
        }
        self.state = State::Closed;
    }

    /// Deletes nothing (as `on_timeout`).
    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        if !matches!(self.state, State::Sending { .. }) {
            out.push(b"- server shutting down\r\n");
        }
        self.state = State::Closed;
    }

    fn error(&mut self, out: &mut OutBuf, text: &str) {
        self.errors += 1;
        if self.errors >= limits::POP_MAX_ERRORS {
            out.push(b"- too many bad commands, closing connection\r\n");
            self.state = State::Closed;
        } else {
            push_fmt(out, format_args!("- {text}\r\n"));
        }
    }

    fn command(&mut self, line: &[u8], _ctx: Ctx, out: &mut OutBuf, host: &mut dyn PopHost) {
        let cmd = Command::parse(line);
        if cmd.is("QUIT") {
            return self.quit(out);
        }
        match self.state {
            State::Call if cmd.is("HELO") && !self.clear_login_ok => self.error(
                out,
                "TLS required: POP2 logins are refused in the clear; use POP3 with STLS",
            ),
            State::Call if cmd.is("HELO") => self.helo(&cmd, out),
            State::Call => self.error(out, "send HELO first"),
            _ if cmd.is("HELO") => self.error(out, "already logged in"),
            // XFER: RFC 937 allows only the acknowledgements (and QUIT) here.
            State::Xfer { current } if cmd.is("ACKS") => {
                self.acknowledge(current.saturating_add(1), out)
            }
            State::Xfer { current } if cmd.is("ACKD") => {
                if let Some(index) = self.index(current) {
                    if let Some(drop) = self.maildrop.as_mut() {
                        drop.delete(index);
                    }
                }
                self.acknowledge(current.saturating_add(1), out);
            }
            State::Xfer { current } if cmd.is("NACK") => self.acknowledge(current, out),
            State::Xfer { .. } => self.error(out, "send ACKS, ACKD or NACK"),
            _ if cmd.is("FOLD") => self.fold(&cmd, out),
            _ if cmd.is("READ") => self.read(&cmd, out),
            State::Selected { current, size } if cmd.is("RETR") => {
                self.retr(current, size, out, host)
            }
            _ if ["RETR", "ACKS", "ACKD", "NACK"].iter().any(|k| cmd.is(k)) => {
                self.error(out, "command not valid now")
            }
            _ => self.error(out, "unknown command"),
        }
    }

    /// `HELO user password`; the password is the rest of the line.
    fn helo(&mut self, cmd: &Command<'_>, out: &mut OutBuf) {
        let args = Command::parse(cmd.rest);
        if args.keyword.is_empty() || args.rest.is_empty() {
            return self.error(out, "syntax: HELO user password");
        }
        self.state = State::Verifying(Some(Box::new(
            AuthRequest::new(args.keyword, args.rest).with_mechanism("HELO"),
        )));
    }

    /// HELO goes on with the verdict of its password check.
    fn verified(&mut self, verdict: AuthVerdict, ctx: Ctx, out: &mut OutBuf) {
        if !matches!(self.state, State::Verifying(_)) {
            return;
        }
        self.state = State::Closed;
        let delay = |then| State::Delaying {
            wake_at: ctx.now + self.settings.auth_failure_delay,
            then,
        };
        match maildrop::login(verdict) {
            Login::Open(request) => self.state = State::AwaitingMailbox(Some(request)),
            Login::Rejected => self.state = delay(Delayed::Rejected),
            Login::Throttled => self.state = delay(Delayed::Throttled),
            Login::TooManyAttempts => self.state = delay(Delayed::TooManyAttempts),
            Login::CheckFailed => {
                out.push(b"- cannot check passwords now, try again later\r\n");
                self.state = State::Closed;
            }
        }
    }

    /// The mailbox was opened (answer HELO) or updated (answer QUIT), or could not be; or the
    /// current message was counted (answer READ or the acknowledgement).
    fn mailbox_done(&mut self, done: MailboxDone, ctx: Ctx, out: &mut OutBuf) {
        if let State::Sizing { current, .. } = self.state {
            return self.sized(current, done, out);
        }
        if !matches!(self.state, State::AwaitingMailbox(_)) {
            return;
        }
        self.state = State::Closed;
        match done {
            MailboxDone::Opened(Ok(messages)) => {
                let drop = Maildrop::new(messages);
                debug!("pop2: logged in, {} messages", drop.total_count());
                push_fmt(out, format_args!("#{}\r\n", drop.total_count()));
                self.maildrop = Some(Box::new(drop));
                self.state = State::Selected {
                    current: 1,
                    size: None,
                };
            }
            MailboxDone::Opened(Err(MailboxError::InUse)) => {
                self.state = State::Delaying {
                    wake_at: ctx.now + self.settings.auth_failure_delay,
                    then: Delayed::InUse,
                };
            }
            MailboxDone::Opened(Err(
                MailboxError::Temporary(why) | MailboxError::Permanent(why),
            )) => {
                warn!("pop2: mailbox open failed: {why}");
                out.push(b"- mailbox unavailable, try again later\r\n");
            }
            // (Not awaited in this state: returned above.)
            MailboxDone::Warmed | MailboxDone::Sized(_) => {}
            MailboxDone::Updated(Ok(())) => {
                out.push(b"+ postling POP2 server signing off\r\n");
            }
            MailboxDone::Updated(Err(e)) => {
                warn!("pop2: UPDATE failed: {e:?}");
                out.push(b"- some deleted messages were not removed\r\n");
            }
        }
    }

    fn fold(&mut self, cmd: &Command<'_>, out: &mut OutBuf) {
        let Some([name]) = cmd.exact_args::<1>() else {
            return self.error(out, "syntax: FOLD mailbox");
        };
        self.inbox = name.eq_ignore_ascii_case(b"INBOX");
        let count = match &self.maildrop {
            Some(d) if self.inbox => d.total_count(),
            _ => 0,
        };
        push_fmt(out, format_args!("#{count}\r\n"));
        self.state = State::Selected {
            current: 1,
            size: None,
        };
    }

    fn read(&mut self, cmd: &Command<'_>, out: &mut OutBuf) {
        let current = match (&self.state, cmd.exact_args::<1>()) {
            (_, Some([arg])) => match parse_number(arg) {
                Some(n) => n,
                None => return self.error(out, "invalid message number"),
            },
            (State::Selected { current, .. }, None) if cmd.rest.iter().all(|&b| b == b' ') => {
                *current
            }
            _ => return self.error(out, "syntax: READ [n]"),
        };
        self.acknowledge(current, out);
    }

    /// Makes `current` the current message and answers its `=size` (SIZE state) once it is
    /// counted from the file (`MailboxRequest::Size`), never taken from the listing (a Maildir
    /// `W=` may lie): RETR sends exactly this many octets. A message that is not there is
    /// `=0` at once.
    fn acknowledge(&mut self, current: u64, out: &mut OutBuf) {
        match self.index(current) {
            Some(index) => {
                self.state = State::Sizing {
                    current,
                    request: Some(MailboxRequest::Size(index)),
                };
            }
            None => {
                out.push(b"=0\r\n");
                self.state = State::Selected {
                    current,
                    size: None,
                };
            }
        }
    }

    /// The count `acknowledge` asked for: a message whose file cannot be read (gone since
    /// the login, say) is `=0` and cannot be retrieved.
    fn sized(&mut self, current: u64, done: MailboxDone, out: &mut OutBuf) {
        let size = match done {
            MailboxDone::Sized(Ok(size)) => Some(size),
            MailboxDone::Sized(Err(e)) => {
                warn!("pop2: cannot size message {current}: {e:?}");
                None
            }
            other => {
                warn!("pop2: sizing message {current} was answered {other:?}");
                None
            }
        };
        push_fmt(out, format_args!("={}\r\n", size.unwrap_or(0)));
        self.state = State::Selected { current, size };
    }

    /// The 0-based index of a visible message in the selected folder.
    fn index(&self, number: u64) -> Option<usize> {
        self.maildrop
            .as_ref()
            .filter(|_| self.inbox)
            .and_then(|d| d.lookup(number).ok())
    }

    fn retr(&mut self, current: u64, size: Option<u64>, out: &mut OutBuf, host: &mut dyn PopHost) {
        let (Some(size), Some(index)) = (size, self.index(current)) else {
            return self.error(out, "no message to retrieve (send READ first)");
        };
        let stream = MessageStream::pop2(index, size);
        self.start_stream(current, size, stream, out, host);
    }

    /// Starts sending RETR's text (from the SIZE state it was asked in, `Selected`).
    fn start_stream(
        &mut self,
        current: u64,
        size: u64,
        mut stream: MessageStream,
        out: &mut OutBuf,
        host: &mut dyn PopHost,
    ) {
        match stream.start(host, out, b"") {
            Ok(Fill::Done) => self.state = State::Xfer { current },
            Ok(Fill::Full) => self.state = State::Sending { stream, current },
            Ok(Fill::Waiting) => {
                self.warm_wanted = true;
                self.state = State::Starting {
                    stream,
                    current,
                    size,
                };
            }
            Ok(Fill::Failed(e)) => {
                warn!("pop2: reading message {current} failed mid-transfer ({e}); closing");
                self.state = State::Closed;
            }
            Err(e) => {
                warn!("pop2: cannot read message {current}: {e}");
                out.push(b"- cannot read that message now\r\n");
                self.state = State::Selected {
                    current,
                    size: Some(size),
                };
            }
        }
    }

    /// QUIT: before HELO just closes; after it, the UPDATE removes the `ACKD` messages (a
    /// `Next::AwaitMailbox` request, answered when it is done).
    fn quit(&mut self, out: &mut OutBuf) {
        match &self.maildrop {
            None => {
                out.push(b"+ postling POP2 server signing off\r\n");
                self.state = State::Closed;
            }
            Some(drop) => {
                let deleted = drop.deleted_indices();
                self.state = State::AwaitingMailbox(Some(MailboxRequest::Update(deleted)));
            }
        }
    }
}

#[cfg(test)]
#[path = "pop2_tests.rs"]
mod tests;
