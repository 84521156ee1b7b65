//! The dialog of the client session: what each reply leads to, the commands it writes, the
//! transaction batch, the dot-stuffed data and the verdicts.

use super::*;

impl Wait {
    /// The command whose reply this is, as a verdict names it ("RCPT TO: 550 ...").
    fn command(self) -> &'static str {
        match self {
            Wait::Greeting => "greeting",
            Wait::Ehlo => "EHLO",
            Wait::Helo => "HELO",
            Wait::StartTls | Wait::Handshake => "STARTTLS",
            Wait::Auth => "AUTH",
            Wait::Mail => "MAIL FROM",
            Wait::Rcpt => "RCPT TO",
            Wait::Data | Wait::DataBlock => "DATA",
            Wait::DataEnd => "end of data",
            Wait::Rset => "RSET",
            Wait::Quit => "QUIT",
        }
    }
}

/// Writes one command line. Every line is far below `limits::REPLY_RESERVE` (a path is at most
/// `limits::SMTP_MAX_PATH`, credentials at most `limits::PASSWORD_MAX` each), which `step`
/// keeps free before it writes.
fn push_line(out: &mut OutBuf, line: &str) {
    debug_assert!(line.len() + 2 <= out.free(), "command line does not fit");
    out.push(line.as_bytes());
    out.push(b"\r\n");
}

impl SmtpClient {
    /// Queues a command for the next write and starts waiting for its reply.
    fn queue(&mut self, cmd: Cmd, wait: Wait, now: Instant) {
        self.send = Some(cmd);
        self.state = State::Await(wait);
        self.arm(wait, now);
    }

    fn decide(&mut self, i: usize, outcome: Outcome) {
        if let Some(slot @ None) = self.outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
    }

    /// Every recipient without a verdict gets `make(detail)`.
    fn decide_rest(&mut self, make: fn(Detail) -> Outcome, d: Detail) {
        for slot in self.outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = Some(make(d.clone()));
        }
    }

    fn close(&mut self) {
        self.send = None;
        self.state = State::Closed;
        self.disarm();
    }

    fn message_done(&mut self) {
        self.state = State::MessageDone;
        self.disarm();
    }

    /// Defers every open recipient; then QUIT (the connection still works) or close.
    pub(super) fn fail_temp(&mut self, d: Detail, quit: Option<Instant>) {
        self.decide_rest(Outcome::Temporary, d);
        match quit {
            Some(now) => self.queue(Cmd::Quit, Wait::Quit, now),
            None => self.close(),
        }
    }

    pub(super) fn protocol_error(&mut self, why: String) {
        self.fail_temp(local(format!("protocol error: {why}")), None);
    }

    fn unexpected(&mut self, w: Wait, r: &Reply) {
        self.protocol_error(format!("unexpected reply to {}: {r}", w.command()));
    }

    pub(super) fn on_reply(&mut self, r: Reply, now: Instant) {
        let w = self.wait.unwrap_or(Wait::Quit);
        // RFC 5321 §3.8: 421 means the server is closing the channel; no QUIT.
        if r.code == 421 {
            self.fail_temp(said(w.command(), &r), None);
            return;
        }
        match self.state {
            State::Await(w) => self.on_command_reply(w, r, now),
            State::Transaction => self.on_tx_reply(r, now),
            _ => self.unexpected(w, &r),
        }
    }

    fn on_command_reply(&mut self, w: Wait, r: Reply, now: Instant) {
        let class = r.class();
        match (w, class) {
            (Wait::Greeting, 2) if r.code == 220 => self.queue(Cmd::Ehlo, Wait::Ehlo, now),
            (Wait::Greeting | Wait::Helo, 5) => {
                self.decide_rest(Outcome::Permanent, said(w.command(), &r));
                self.queue(Cmd::Quit, Wait::Quit, now);
            }
            (Wait::Greeting | Wait::Ehlo | Wait::Helo | Wait::Rset, 4) | (Wait::Rset, 5) => {
                self.fail_temp(said(w.command(), &r), Some(now));
            }
            (Wait::Ehlo, 2) => self.after_hello(now),
            // RFC 5321 §3.2: a server that does not know EHLO gets HELO.
            (Wait::Ehlo, 5) => self.queue(Cmd::Helo, Wait::Helo, now),
            (Wait::Helo, 2) => {
                self.ext = Extensions::default();
                self.after_hello(now);
            }
            (Wait::StartTls, 2) if r.code == 220 => {
                self.state = State::Handshake;
                self.arm(Wait::Handshake, now);
            }
            (Wait::StartTls, 4 | 5) if self.settings.tls == TlsPolicy::Required => {
                let d = detail(Some(r.clone()), format!("STARTTLS refused: {r}"));
                self.fail_temp(d, Some(now));
            }
            (Wait::StartTls, 4 | 5) => self.auth_or_begin(now),
            (Wait::Auth, _) => self.on_auth_reply(r, now),
            (Wait::DataEnd, _) => self.on_final_reply(w, r),
            (Wait::Rset, 2) => self.begin_message(now),
            (Wait::Quit, _) => self.close(),
            _ => self.unexpected(w, &r),
        }
    }

    /// After a 2xx to EHLO or HELO: STARTTLS, AUTH or the transaction.
    fn after_hello(&mut self, now: Instant) {
        if !self.tls && self.settings.tls != TlsPolicy::Never && self.ext.starttls {
            self.queue(Cmd::StartTls, Wait::StartTls, now);
        } else if !self.tls && self.settings.tls == TlsPolicy::Required {
            self.fail_temp(local("TLS required but not offered"), Some(now));
        } else {
            self.auth_or_begin(now);
        }
    }

    fn auth_or_begin(&mut self, now: Instant) {
        let Some(c) = &self.settings.credentials else {
            self.begin_message(now);
            return;
        };
        let failure = if !self.tls {
            "authentication failed: not sending credentials over a connection without TLS"
        } else if c.user.len() > limits::PASSWORD_MAX || c.password.len() > limits::PASSWORD_MAX {
            "authentication failed: user name or password longer than 255 octets"
        } else if self.ext.auth_plain {
            self.auth_sent = Some(Cmd::AuthPlain);
            return self.queue(Cmd::AuthPlain, Wait::Auth, now);
        } else if self.ext.auth_login {
            self.auth_sent = Some(Cmd::AuthLogin);
            return self.queue(Cmd::AuthLogin, Wait::Auth, now);
        } else {
            "authentication failed: the server offers neither AUTH PLAIN nor AUTH LOGIN"
        };
        self.fail_temp(local(failure), Some(now));
    }

    /// RFC 4954: 235 is success, 334 asks for the next LOGIN response. Every failure defers:
    /// a wrong password at the smarthost is the administrator's to fix, not a bounce.
    fn on_auth_reply(&mut self, r: Reply, now: Instant) {
        match (self.auth_sent, r.code) {
            (_, 235) => {
                self.auth_sent = None;
                self.begin_message(now);
            }
            (Some(Cmd::AuthLogin), 334) => {
                self.auth_sent = Some(Cmd::LoginUser);
                self.queue(Cmd::LoginUser, Wait::Auth, now);
            }
            (Some(Cmd::LoginUser), 334) => {
                self.auth_sent = Some(Cmd::LoginPassword);
                self.queue(Cmd::LoginPassword, Wait::Auth, now);
            }
            _ => {
                let d = detail(Some(r.clone()), format!("authentication failed: AUTH: {r}"));
                self.fail_temp(d, Some(now));
            }
        }
    }

    /// Checks what this server can take, then starts the transaction.
    fn begin_message(&mut self, now: Instant) {
        let m = &self.msg;
        let utf8 = m.smtputf8 || !m.sender.is_ascii() || m.recipients.iter().any(|r| !r.is_ascii());
        let refusal = if !sendable(&m.sender) {
            Some("invalid sender address".to_owned())
        } else if m.body == BodyType::EightBitMime && !self.ext.eight_bit_mime {
            Some("the message has 8-bit data but the server does not offer 8BITMIME".to_owned())
        } else if utf8 && !self.ext.smtputf8 {
            Some(
                "the message needs SMTPUTF8 (UTF-8 addresses or headers) but the server does \
                 not offer it"
                    .to_owned(),
            )
        } else {
            match self.ext.size {
                Some(limit) if limit > 0 && m.size > limit => Some(format!(
                    "message size {} exceeds the server's limit {limit}",
                    m.size
                )),
                _ => None,
            }
        };
        if let Some(text) = refusal {
            self.decide_rest(Outcome::Permanent, local(text));
            return self.message_done();
        }
        let order: Vec<usize> = (0..m.recipients.len())
            .filter(|&i| sendable(&m.recipients[i]))
            .collect();
        for i in 0..self.outcomes.len() {
            if !order.contains(&i) {
                self.decide(i, Outcome::Permanent(local("invalid recipient address")));
            }
        }
        if order.is_empty() {
            return self.message_done();
        }
        self.tx = Tx {
            order,
            ..Tx::default()
        };
        self.state = State::Transaction;
        self.arm(Wait::Mail, now);
    }

    /// Which reply command `i` of the transaction waits for.
    fn tx_wait(&self, i: usize) -> Wait {
        match i {
            0 => Wait::Mail,
            i if i <= self.tx.order.len() => Wait::Rcpt,
            _ => Wait::Data,
        }
    }

    /// Writes the next commands of the transaction: all of them at once with PIPELINING
    /// (RFC 2920: MAIL, every RCPT and DATA in one batch), else one per reply. Returns whether
    /// anything was written.
    pub(super) fn write_tx(&mut self, now: Instant, out: &mut OutBuf) -> bool {
        let k = self.tx.order.len();
        let mut wrote = false;
        while !self.tx.mail_failed
            && self.tx.sent < k + 2
            && (self.ext.pipelining || self.tx.sent == self.tx.replied)
            && out.free() >= limits::REPLY_RESERVE
        {
            let i = self.tx.sent;
            if i == k + 1 && !self.ext.pipelining && self.tx.accepted.is_empty() {
                break;
            }
            if i == 0 {
                let m = &self.msg;
                let mut line = format!("MAIL FROM:<{}>", m.sender);
                if self.ext.size.is_some() {
                    line += &format!(" SIZE={}", m.size);
                }
                if m.body == BodyType::EightBitMime {
                    line += " BODY=8BITMIME";
                }
                let utf8 = m.smtputf8
                    || !m.sender.is_ascii()
                    || m.recipients.iter().any(|r| !r.is_ascii());
                if utf8 {
                    line += " SMTPUTF8";
                }
                push_line(out, &line);
            } else if i <= k {
                let r = &self.msg.recipients[self.tx.order[i - 1]];
                push_line(out, &format!("RCPT TO:<{r}>"));
            } else {
                push_line(out, "DATA");
            }
            if i == self.tx.replied {
                self.arm(self.tx_wait(i), now);
            }
            self.tx.sent += 1;
            wrote = true;
        }
        wrote
    }

    fn on_tx_reply(&mut self, r: Reply, now: Instant) {
        let k = self.tx.order.len();
        let i = self.tx.replied;
        if i >= self.tx.sent {
            return self.protocol_error(format!("a reply to no command: {r}"));
        }
        self.tx.replied += 1;
        let w = self.tx_wait(i);
        match (w, r.class()) {
            (Wait::Mail, 2) => {}
            (Wait::Mail, 4 | 5) => {
                let make = if r.class() == 4 {
                    Outcome::Temporary
                } else {
                    Outcome::Permanent
                };
                self.decide_rest(make, said("MAIL FROM", &r));
                self.tx.mail_failed = true;
            }
            (Wait::Rcpt, _) if self.tx.mail_failed => {}
            (Wait::Rcpt, 2) => self.tx.accepted.push(self.tx.order[i - 1]),
            (Wait::Rcpt, 4) => self.decide(
                self.tx.order[i - 1],
                Outcome::Temporary(said("RCPT TO", &r)),
            ),
            (Wait::Rcpt, 5) => self.decide(
                self.tx.order[i - 1],
                Outcome::Permanent(said("RCPT TO", &r)),
            ),
            (Wait::Data, _) => return self.on_data_reply(r, now),
            _ => return self.unexpected(w, &r),
        }
        if self.tx.replied < self.tx.sent {
            self.arm(self.tx_wait(self.tx.replied), now);
        } else if self.tx.mail_failed || (self.tx.replied == k + 1 && self.tx.accepted.is_empty()) {
            self.message_done();
        }
    }

    fn on_data_reply(&mut self, r: Reply, now: Instant) {
        let nobody = self.tx.mail_failed || self.tx.accepted.is_empty();
        match r.class() {
            // RFC 2920 §3.1: a 354 after every RCPT failed gets an empty message.
            3 if r.code == 354 && nobody => self.queue(Cmd::EmptyData, Wait::DataEnd, now),
            3 if r.code == 354 => {
                self.state = State::Data;
                self.line_start = true;
                self.ends_crlf = true;
                self.last_cr = false;
                self.arm(Wait::DataBlock, now);
            }
            4 | 5 if nobody => self.message_done(),
            4 | 5 => {
                let make = if r.class() == 4 {
                    Outcome::Temporary
                } else {
                    Outcome::Permanent
                };
                for i in std::mem::take(&mut self.tx.accepted) {
                    self.decide(i, make(said("DATA", &r)));
                }
                self.message_done();
            }
            _ => self.unexpected(Wait::Data, &r),
        }
    }

    fn on_final_reply(&mut self, w: Wait, r: Reply) {
        if self.tx.mail_failed || self.tx.accepted.is_empty() {
            // The empty message after a needless 354: every verdict is already in.
            return self.message_done();
        }
        let make = match r.class() {
            2 => Outcome::Delivered,
            4 => Outcome::Temporary,
            5 => Outcome::Permanent,
            _ => return self.unexpected(w, &r),
        };
        for i in std::mem::take(&mut self.tx.accepted) {
            self.decide(i, make(said("end of data", &r)));
        }
        self.message_done();
    }

    pub(super) fn write_cmd(&mut self, cmd: Cmd, out: &mut OutBuf) {
        let name: String = self
            .settings
            .helo_name
            .chars()
            .filter(|c| !c.is_control())
            .take(limits::SMTP_MAX_HELO)
            .collect();
        let creds = self.settings.credentials.as_ref();
        let user = creds.map_or("", |c| c.user.as_str());
        let password = creds.map_or("", |c| c.password.as_str());
        let line = match cmd {
            Cmd::Ehlo => format!("EHLO {name}"),
            Cmd::Helo => format!("HELO {name}"),
            Cmd::StartTls => "STARTTLS".to_owned(),
            // RFC 4616 §2: authzid (empty) NUL authcid NUL passwd.
            Cmd::AuthPlain => format!(
                "AUTH PLAIN {}",
                base64(format!("\0{user}\0{password}").as_bytes())
            ),
            Cmd::AuthLogin => "AUTH LOGIN".to_owned(),
            Cmd::LoginUser => base64(user.as_bytes()),
            Cmd::LoginPassword => base64(password.as_bytes()),
            Cmd::Rset => "RSET".to_owned(),
            Cmd::Quit => "QUIT".to_owned(),
            Cmd::EmptyData => ".".to_owned(),
        };
        push_line(out, &line);
    }

    /// The caller's TLS handshake after STARTTLS succeeded: the dialog starts over with EHLO
    /// (RFC 3207 §4.2: forget everything the server said before).
    pub fn tls_established(&mut self, now: Instant) {
        if self.state == State::Handshake {
            self.tls = true;
            self.ext = Extensions::default();
            self.acc = Acc::default();
            self.queue(Cmd::Ehlo, Wait::Ehlo, now);
        }
    }

    /// Dot-stuffs (RFC 5321 §4.5.2) as much of `chunk` as fits into `out`; returns how much of
    /// `chunk` it took. Only in the data phase (`ClientNext::NeedData`); takes nothing otherwise.
    pub fn send_data(&mut self, chunk: &[u8], now: Instant, out: &mut OutBuf) -> usize {
        if self.state != State::Data {
            return 0;
        }
        let mut pos = 0;
        while let Some(rest) = chunk.get(pos..).filter(|r| !r.is_empty()) {
            let free = out.free();
            if self.line_start && rest[0] == b'.' {
                if free < 2 {
                    break;
                }
                out.push(b"..");
                pos += 1;
                self.line_start = false;
                self.ends_crlf = false;
                self.last_cr = false;
                continue;
            }
            let run = memchr(b'\n', rest)
                .map_or(rest.len(), |lf| lf + 1)
                .min(free);
            if run == 0 {
                break;
            }
            let taken = &rest[..run];
            out.push(taken);
            pos += run;
            // A bare LF ends a line too for a receiver that accepts it, so a dot after one is
            // doubled as well: stuffing a line that needs none is harmless, the reverse is not.
            let last = taken[run - 1];
            let before = if run >= 2 {
                taken[run - 2] == b'\r'
            } else {
                self.last_cr
            };
            self.line_start = last == b'\n';
            self.ends_crlf = last == b'\n' && before;
            self.last_cr = last == b'\r';
        }
        if pos > 0 {
            self.arm(Wait::DataBlock, now);
        }
        pos
    }

    /// Ends the data (`.` CRLF, after a CRLF of our own unless the data ended in one) and
    /// waits for the final reply. Returns false, writing nothing, if `out` lacks the 5 octets
    /// (drain it and call again) or the session is not sending data.
    pub fn end_data(&mut self, now: Instant, out: &mut OutBuf) -> bool {
        if self.state != State::Data || out.free() < 5 {
            return false;
        }
        out.push(if self.ends_crlf {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        });
        self.state = State::Await(Wait::DataEnd);
        self.arm(Wait::DataEnd, now);
        true
    }

    /// Verdicts on the current message, in the order of its recipients: once, after
    /// `MessageDone` or at `Close`.
    pub fn take_outcomes(&mut self) -> Option<Vec<Outcome>> {
        if self.taken || !matches!(self.state, State::MessageDone | State::Closed) {
            return None;
        }
        self.taken = true;
        let outcomes = std::mem::take(&mut self.outcomes);
        Some(
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Outcome::Temporary(local("no verdict"))))
                .collect(),
        )
    }

    /// After `MessageDone`: RSET, then the transaction of `message` on the same connection.
    /// Hands the message back in any other state.
    pub fn next_message(&mut self, message: OutMessage, now: Instant) -> Result<(), OutMessage> {
        if self.state != State::MessageDone {
            return Err(message);
        }
        self.outcomes = vec![None; message.recipients.len()];
        self.msg = message;
        self.taken = false;
        self.tx = Tx::default();
        self.queue(Cmd::Rset, Wait::Rset, now);
        Ok(())
    }

    /// Ends the session politely: QUIT after `MessageDone`. Anywhere else open recipients are
    /// deferred ("delivery cancelled") and the connection is closed (with QUIT when the
    /// dialog allows a command).
    pub fn quit(&mut self, now: Instant) {
        match self.state {
            State::Closed | State::Await(Wait::Quit) => {}
            State::MessageDone => self.queue(Cmd::Quit, Wait::Quit, now),
            State::Data | State::Handshake => self.fail_temp(local("delivery cancelled"), None),
            _ => self.fail_temp(local("delivery cancelled"), Some(now)),
        }
    }

    /// The deadline passed: every open recipient defers and the connection is closed.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.state == State::Closed || self.deadline.is_none_or(|d| now < d) {
            return;
        }
        let what = self.wait.map_or("the server", Wait::describe);
        self.fail_temp(local(format!("timeout waiting for {what}")), None);
    }

    /// The server closed the connection (EOF).
    pub fn peer_closed(&mut self) {
        if self.state == State::Closed {
            return;
        }
        let what = self.wait.map_or("the server", Wait::describe);
        let text = format!("connection closed by the server while waiting for {what}");
        self.fail_temp(local(text), None);
    }

    /// A connection or TLS failure the caller saw: every open recipient defers with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if self.state != State::Closed {
            self.fail_temp(local(reason), None);
        }
    }
}
