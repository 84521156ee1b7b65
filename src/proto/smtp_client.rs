//! The outbound SMTP client session (RFC 5321): a sans-I/O state machine that delivers one
//! message after another over one connection to a relay or an MX.
//!
//! Owns the client side of the dialog: greeting, EHLO (HELO fallback), STARTTLS (as a request:
//! the caller does the handshake), AUTH PLAIN/LOGIN, the transaction (pipelined per RFC 2920
//! when offered), dot-stuffing of the message data, the RFC 5321 §4.5.3.2 timeout of every
//! step, and the verdict per recipient. Reply framing lives in `reply`.
//!
//! Call order (the caller owns the socket, the TLS transport, the spool file and the clock):
//! 1. `SmtpClient::new(settings, message, tls_up, now)`; arm `deadline()` (the greeting's).
//! 2. Loop on `step(input, now, out)`, removing `consumed` input, then by `next`:
//!    - `NeedInput`: read from the socket; `NeedOutput`: drain `out`;
//!    - `NeedData`: call `send_data(chunk, now, out)` with the next spool bytes (it takes what
//!      fits in `out`), and `end_data(now, out)` once the file is at its end;
//!    - `StartTls`: drop every byte read so far, do the handshake, then `tls_established(now)`
//!      (or `abort(reason)` if it fails);
//!    - `MessageDone`: `take_outcomes()`, then `next_message(message)` (RSET and a new
//!      transaction) or `quit()`;
//!    - `Close`: drain `out`, close; `take_outcomes()` has the verdicts if not taken yet.
//!
//!    After each call re-arm `deadline()`; when it passes call `on_timeout(now)`; on EOF or a
//!    socket error call `peer_closed()` / `abort(reason)`.
//!
//! Failure policy, per recipient (`Outcome`): a 2xx to the final dot delivers; a 4xx anywhere,
//! a timeout, a lost connection or a protocol error is temporary (retry later); a 5xx to MAIL,
//! RCPT, DATA or the final dot, a 5xx greeting or HELO, and a message this server cannot take
//! (SIZE, 8BITMIME, SMTPUTF8) are permanent. TLS and authentication failures are temporary
//! whatever their code: a misconfigured smarthost must defer mail, never bounce it all.
//!
//! Response injection (RFC 3207 §4, CVE-2011-0411 and kin): a server, or a man in the middle,
//! may send bytes after its `220` to STARTTLS that would then be read as replies to commands
//! sent over TLS. The session consumes and drops everything offered with that `220` and
//! anything offered until `tls_established`; the caller must also drop bytes it read from the
//! socket before the handshake.

#[cfg(test)]
mod dialog_tests;
mod reply;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;
#[cfg(test)]
mod tls_tests;

use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use memchr::memchr;

pub use self::reply::{Enhanced, Extensions, Reply};
use self::reply::{Parsed, base64, keep_text, parse_line, split_enhanced};
use super::OutBuf;
use crate::limits;
use crate::mail::BodyType;

/// Whether to use STARTTLS (RFC 3207).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never, even when offered.
    Never,
    /// When offered; a server that does not offer it, or refuses it, gets the mail in clear.
    Opportunistic,
    /// Always: a server that does not offer it, or refuses it, defers the mail.
    Required,
}

/// How long each step may take (RFC 5321 §4.5.3.2); `Default` gives the RFC's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS and its handshake, AUTH, RSET, QUIT.
    pub command: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    /// The server taking each block of message data.
    pub data_block: Duration,
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            greeting: limits::SMTP_CLIENT_GREETING_TIMEOUT,
            command: limits::SMTP_CLIENT_COMMAND_TIMEOUT,
            mail: limits::SMTP_CLIENT_MAIL_TIMEOUT,
            rcpt: limits::SMTP_CLIENT_RCPT_TIMEOUT,
            data_init: limits::SMTP_CLIENT_DATA_INIT_TIMEOUT,
            data_block: limits::SMTP_CLIENT_DATA_BLOCK_TIMEOUT,
            data_end: limits::SMTP_CLIENT_DATA_END_TIMEOUT,
        }
    }
}

/// AUTH credentials for a smarthost. Sent only over TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

/// Settings of one outbound connection.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
    pub timeouts: Timeouts,
}

/// The envelope of one message to send; its data comes through `send_data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutMessage {
    /// Reverse-path without brackets (empty for the null sender).
    pub sender: String,
    /// Forward-paths without brackets; outcomes come back in this order.
    pub recipients: Vec<String>,
    /// Octets of the data as stored (CRLF line ends, before dot-stuffing), for SIZE=.
    pub size: u64,
    /// `EightBitMime` needs a server offering 8BITMIME.
    pub body: BodyType,
    /// Needs SMTPUTF8 (also implied by any non-ASCII address).
    pub smtputf8: bool,
}

/// Why a recipient got its outcome: the server's reply, if one decided it, and a sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    pub reply: Option<Reply>,
    /// "RCPT TO: 550 5.1.1 no such user", "timeout waiting for the reply to DATA", ...
    pub text: String,
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The verdict on one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Detail),
    /// Retry later.
    Temporary(Detail),
    /// Bounce.
    Permanent(Detail),
}

/// What the session needs after a `step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientNext {
    /// Read more from the server.
    NeedInput,
    /// Drain the output buffer, then step again.
    NeedOutput,
    /// Hand message data to `send_data`, or `end_data` at its end.
    NeedData,
    /// Drop buffered input, do the TLS handshake, then `tls_established`.
    StartTls,
    /// The message has its outcomes: `take_outcomes`, then `next_message` or `quit`.
    MessageDone,
    /// Flush the output, then close the connection.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientStep {
    pub consumed: usize,
    pub next: ClientNext,
}

/// What the session is waiting for (and names in a timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Handshake,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataBlock,
    DataEnd,
    Rset,
    Quit,
}

impl Wait {
    fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            Wait::Greeting => t.greeting,
            Wait::Mail => t.mail,
            Wait::Rcpt => t.rcpt,
            Wait::Data => t.data_init,
            Wait::DataBlock => t.data_block,
            Wait::DataEnd => t.data_end,
            _ => t.command,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Wait::Greeting => "the greeting",
            Wait::Ehlo => "the reply to EHLO",
            Wait::Helo => "the reply to HELO",
            Wait::StartTls => "the reply to STARTTLS",
            Wait::Handshake => "the TLS handshake",
            Wait::Auth => "the reply to AUTH",
            Wait::Mail => "the reply to MAIL FROM",
            Wait::Rcpt => "the reply to RCPT TO",
            Wait::Data => "the reply to DATA",
            Wait::DataBlock => "the server to take the message data",
            Wait::DataEnd => "the reply to the end of data",
            Wait::Rset => "the reply to RSET",
            Wait::Quit => "the reply to QUIT",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Awaiting the reply named by `wait` to a command already written (or queued in `send`).
    Await(Wait),
    /// STARTTLS was accepted; the caller does the handshake.
    Handshake,
    /// MAIL, RCPT and DATA being written and answered (`Tx`).
    Transaction,
    /// Sending message data.
    Data,
    MessageDone,
    Closed,
}

/// A command waiting for room in the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    AuthLogin,
    LoginUser,
    LoginPassword,
    Rset,
    Quit,
    /// The lone `.` after a 354 that no recipient needs (RFC 2920 §3.1).
    EmptyData,
}

/// Progress of one transaction. Commands are numbered: 0 MAIL, 1..=k the RCPTs of `order`,
/// k+1 DATA.
#[derive(Debug, Default)]
struct Tx {
    /// Recipient indices to send RCPT for (those with a sendable address).
    order: Vec<usize>,
    sent: usize,
    replied: usize,
    accepted: Vec<usize>,
    /// MAIL was refused: remaining replies of the batch are read and ignored.
    mail_failed: bool,
}

/// The reply being read.
#[derive(Debug, Default)]
struct Acc {
    code: u16,
    lines: u32,
    enhanced: Option<Enhanced>,
    text: String,
    /// Inside an over-long line: drop input through its LF; `Some(true)` if it was the last.
    discard: Option<bool>,
    /// Keywords of an EHLO reply.
    ehlo: Extensions,
}

/// One outbound SMTP session.
pub struct SmtpClient {
    settings: Rc<ClientSettings>,
    state: State,
    send: Option<Cmd>,
    wait: Option<Wait>,
    deadline: Option<Instant>,
    acc: Acc,
    ext: Extensions,
    tls: bool,
    msg: OutMessage,
    outcomes: Vec<Option<Outcome>>,
    taken: bool,
    tx: Tx,
    /// The AUTH command or response last written (LOGIN takes three round trips).
    auth_sent: Option<Cmd>,
    /// Data state: at the start of a line (a `.` there is doubled).
    line_start: bool,
    /// Data state: the data written so far ends in CRLF (or is empty).
    ends_crlf: bool,
    last_cr: bool,
}

fn detail(reply: Option<Reply>, text: String) -> Detail {
    Detail { reply, text }
}

fn said(step: &str, reply: &Reply) -> Detail {
    detail(Some(reply.clone()), format!("{step}: {reply}"))
}

fn local(text: impl Into<String>) -> Detail {
    detail(None, text.into())
}

/// An address that can go into a command line as is.
fn sendable(addr: &str) -> bool {
    addr.len() <= limits::SMTP_MAX_PATH && !addr.bytes().any(|b| b < 0x20 || b == 0x7f)
}

impl SmtpClient {
    /// A session for a freshly connected socket; `tls_up` for implicit TLS (RFC 8314).
    pub fn new(
        settings: Rc<ClientSettings>,
        message: OutMessage,
        tls_up: bool,
        now: Instant,
    ) -> SmtpClient {
        let outcomes = vec![None; message.recipients.len()];
        let mut s = SmtpClient {
            settings,
            state: State::Await(Wait::Greeting),
            send: None,
            wait: None,
            deadline: None,
            acc: Acc::default(),
            ext: Extensions::default(),
            tls: tls_up,
            msg: message,
            outcomes,
            taken: false,
            tx: Tx::default(),
            auth_sent: None,
            line_start: true,
            ends_crlf: true,
            last_cr: false,
        };
        s.arm(Wait::Greeting, now);
        s
    }

    /// When `on_timeout` is due; `None` while the caller holds the turn (`MessageDone`) or
    /// after the end.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// What the server advertised in its last EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    fn arm(&mut self, wait: Wait, now: Instant) {
        self.wait = Some(wait);
        self.deadline = now.checked_add(wait.timeout(&self.settings.timeouts));
    }

    fn disarm(&mut self) {
        self.wait = None;
        self.deadline = None;
    }

    /// Consumes server replies and writes commands; see the call order in the module docs.
    pub fn step(&mut self, input: &[u8], now: Instant, out: &mut OutBuf) -> ClientStep {
        let mut pos = 0;
        loop {
            let next = match self.state {
                State::Closed => Some(ClientNext::Close),
                // Response injection: whatever came with or after the 220 is dropped.
                State::Handshake => return ClientStep::new(input.len(), ClientNext::StartTls),
                State::MessageDone => Some(ClientNext::MessageDone),
                _ if out.free() < limits::REPLY_RESERVE => Some(ClientNext::NeedOutput),
                State::Data => Some(ClientNext::NeedData),
                _ => None,
            };
            if let Some(next) = next {
                return ClientStep::new(pos, next);
            }
            if let Some(cmd) = self.send.take() {
                self.write_cmd(cmd, out);
                continue;
            }
            if self.state == State::Transaction && self.write_tx(now, out) {
                continue;
            }
            match self.read_reply(input, &mut pos) {
                Err(why) => self.protocol_error(why),
                Ok(None) => return ClientStep::new(pos, ClientNext::NeedInput),
                Ok(Some(reply)) => self.on_reply(reply, now),
            }
        }
    }

    /// Takes one reply from `input[*pos..]`, or as much of it as is there.
    fn read_reply(&mut self, input: &[u8], pos: &mut usize) -> Result<Option<Reply>, String> {
        loop {
            let rest = input.get(*pos..).unwrap_or(&[]);
            if let Some(last) = self.acc.discard {
                let Some(lf) = memchr(b'\n', rest) else {
                    *pos = input.len();
                    return Ok(None);
                };
                *pos += lf + 1;
                self.acc.discard = None;
                if last {
                    return Ok(Some(self.finish_reply()));
                }
                continue;
            }
            let (used, code, last, text, rest_follows) = match parse_line(rest) {
                Parsed::Incomplete => return Ok(None),
                Parsed::Bad(why) => return Err(why.to_owned()),
                Parsed::Line {
                    used,
                    code,
                    last,
                    text,
                    rest_follows,
                } => (used, code, last, text, rest_follows),
            };
            if self.acc.lines == 0 {
                self.acc.code = code;
            } else if code != self.acc.code {
                return Err(format!(
                    "reply code {code} inside a {} reply",
                    self.acc.code
                ));
            }
            if self.acc.lines > 0 && self.state == State::Await(Wait::Ehlo) {
                self.acc.ehlo.keyword(text);
            }
            let (enhanced, stripped) = split_enhanced(code, text);
            let text = if self.acc.lines == 0 {
                self.acc.enhanced = enhanced;
                stripped
            } else if enhanced.is_some() && enhanced == self.acc.enhanced {
                // RFC 2034 repeats the code on every line; keep it once.
                stripped
            } else {
                text
            };
            keep_text(&mut self.acc.text, text);
            self.acc.lines = self.acc.lines.saturating_add(1);
            *pos += used;
            if rest_follows {
                self.acc.discard = Some(last);
            } else if last {
                return Ok(Some(self.finish_reply()));
            }
        }
    }

    fn finish_reply(&mut self) -> Reply {
        let acc = std::mem::take(&mut self.acc);
        if self.state == State::Await(Wait::Ehlo) {
            self.ext = acc.ehlo;
        }
        Reply {
            code: acc.code,
            enhanced: acc.enhanced,
            text: acc.text,
        }
    }
}

impl ClientStep {
    fn new(consumed: usize, next: ClientNext) -> ClientStep {
        ClientStep { consumed, next }
    }
}

mod dialog;
