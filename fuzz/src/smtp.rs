//! The SMTP session under the fuzzer: a fake spool and directory that check how the session
//! uses them, and a checker of every reply line.
//!
//! Flags (first input byte): bit 0 `message_begin` fails with `Full`, bit 1 it fails with
//! `Failed`, bit 2 `message_commit` fails at once, bit 3 the durable commit fails, bit 4 a
//! 100-octet `max_message_size`, bit 5 end by timeout (else shutdown), bit 6 a slow client that
//! drains its replies a few octets at a time, bit 7 a submission port (AUTH PLAIN/LOGIN, where
//! `alice`/`pw` logs in and `alice@example.test` is her address).
//!
//! Recipient verdicts come from the address: a local part containing `unknown` is an unknown
//! user, `temp` a temporary failure, a domain other than `example.test` a relay attempt.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use postling::buf::OutBuf;
use postling::limits;
use postling::mail::{Envelope, QueueId, RcptVerdict, SpoolError};
use postling::proto::smtp::{SmtpHost, SmtpSession, SmtpSettings};
use postling::proto::{AuthVerdict, Completion, Ctx, Step};

use crate::{Driver, Input, Session, WireCheck};

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
const MAX_REPLY_LINE: usize = 512;

const HOSTNAME: &str = "mail.example.test";

#[derive(Default)]
pub struct FakeSpool {
    flags: u8,
    max_message_size: u64,
    begun: u32,
    /// A message is open (between a successful `message_begin` and its commit or abort).
    receiving: bool,
    /// Octets appended to the open message, its Received header included.
    appended: u64,
    header: u64,
    /// The last octet appended, to check line ends across appends.
    last: Option<u8>,
    /// `message_commit` said Ok: the session must return `AwaitCommit` next.
    committing: bool,
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// The checks every path handed to the host must pass: the session parsed it.
fn check_path(path: &str, what: &str) {
    assert!(
        path.len() <= limits::SMTP_MAX_PATH,
        "{what} of {} octets",
        path.len()
    );
    assert!(
        !path.bytes().any(is_control),
        "{what} with a control octet: {path:?}"
    );
    assert!(
        !path.starts_with('<') && !path.ends_with('>'),
        "{what} with its brackets: {path:?}"
    );
}

/// A recipient's local part can name a Maildir: unquoted and unescaped, it must never hold
/// `/`, `..` or a control octet (an independent reading of the rule `smtp_addr` enforces).
fn check_local_part(rcpt: &str) {
    let local = if rcpt.starts_with('"') {
        // A quoted local part may hold `@`; the domain follows the closing quote.
        rcpt.rsplit_once("\"@").map_or(rcpt, |(l, _)| l)
    } else {
        rcpt.rsplit_once('@').map_or(rcpt, |(l, _)| l)
    };
    let body = local.strip_prefix('"').unwrap_or(local);
    let mut content = Vec::with_capacity(body.len());
    let mut escaped = false;
    for b in body.bytes() {
        if !escaped && b == b'\\' && local.starts_with('"') {
            escaped = true;
            continue;
        }
        escaped = false;
        content.push(b);
    }
    let unsafe_part = content.contains(&b'/')
        || content.windows(2).any(|w| w == b"..")
        || content.iter().any(|&b| is_control(b));
    assert!(
        !unsafe_part,
        "an unsafe local part reached the directory: {rcpt:?}"
    );
}

impl SmtpHost for FakeSpool {
    fn client_over_rcpt_budget(&mut self) -> bool {
        false
    }
    fn rcpt_refused(&mut self) {}
    fn rcpt_verdict(&mut self, rcpt: &str) -> RcptVerdict {
        check_path(rcpt, "recipient");
        assert!(!rcpt.is_empty(), "empty recipient");
        check_local_part(rcpt);
        let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, "example.test"));
        if !domain.eq_ignore_ascii_case("example.test") {
            RcptVerdict::RelayDenied
        } else if local.contains("unknown") {
            RcptVerdict::UnknownUser
        } else if local.contains("temp") {
            RcptVerdict::TempFail
        } else {
            RcptVerdict::Accept
        }
    }

    fn message_begin(&mut self, envelope: &Envelope) -> Result<QueueId, SpoolError> {
        assert!(!self.receiving, "message_begin inside a message");
        assert!(
            !self.committing,
            "message_begin while a commit is in flight"
        );
        check_path(&envelope.sender, "sender");
        assert!(
            !envelope.recipients.is_empty() && envelope.recipients.len() <= limits::SMTP_MAX_RCPTS,
            "{} recipients",
            envelope.recipients.len()
        );
        for r in &envelope.recipients {
            check_path(r, "recipient");
            check_local_part(r);
        }
        assert!(
            envelope.helo.len() <= limits::SMTP_MAX_HELO,
            "helo too long"
        );
        if self.flags & 1 != 0 {
            return Err(SpoolError::Full);
        }
        if self.flags & 2 != 0 {
            return Err(SpoolError::Failed("injected".into()));
        }
        self.begun += 1;
        self.receiving = true;
        self.appended = 0;
        self.header = 0;
        self.last = None;
        Ok(QueueId(format!("Q{}", self.begun)))
    }

    fn message_append(&mut self, bytes: &[u8]) {
        assert!(self.receiving, "message_append outside a message");
        assert!(!bytes.is_empty(), "empty append");
        if self.header == 0 {
            // The first append is the Received header.
            self.header = bytes.len() as u64;
            assert!(bytes.starts_with(b"Received: "), "no Received header first");
        }
        self.appended += bytes.len() as u64;
        assert!(
            self.appended <= self.header + self.max_message_size,
            "{} octets appended, limit {} plus a {}-octet header",
            self.appended,
            self.max_message_size,
            self.header
        );
        // The decoder stores every line with CRLF: no bare LF reaches the spool.
        for &b in bytes {
            if b == b'\n' {
                assert_eq!(self.last, Some(b'\r'), "a bare LF reached the spool");
            }
            self.last = Some(b);
        }
    }

    fn message_commit(&mut self) -> Result<(), SpoolError> {
        assert!(self.receiving, "message_commit outside a message");
        self.receiving = false;
        if self.flags & 4 != 0 {
            return Err(SpoolError::Full);
        }
        self.committing = true;
        Ok(())
    }

    fn sender_owned_by(&mut self, user: &str, sender: &str) -> bool {
        user == "alice" && sender == "alice@example.test"
    }

    fn message_abort(&mut self) {
        assert!(
            !self.committing,
            "message_abort while a commit is in flight"
        );
        self.receiving = false;
    }
}

/// Every reply line: `NNN` (2xx-5xx), a space or a hyphen, text, CRLF, within 512 octets; the
/// lines of a multi-line reply share their code, and a turn never ends inside one.
#[derive(Default)]
pub struct ReplyCheck {
    line: Vec<u8>,
    after_cr: bool,
    /// The code of an unfinished multi-line reply.
    continued: Option<[u8; 3]>,
    pub replies: u64,
}

impl ReplyCheck {
    fn line_done(&mut self) {
        let line = &self.line;
        assert!(
            line.len() + 2 <= MAX_REPLY_LINE,
            "a reply line of {} octets",
            line.len() + 2
        );
        let text = String::from_utf8_lossy(line);
        assert!(line.len() >= 4, "a short reply line: {text:?}");
        let code = [line[0], line[1], line[2]];
        assert!(
            (b'2'..=b'5').contains(&code[0])
                && code[1].is_ascii_digit()
                && code[2].is_ascii_digit(),
            "a reply without a code: {text:?}"
        );
        assert!(
            line[3] == b' ' || line[3] == b'-',
            "a bad separator: {text:?}"
        );
        if let Some(c) = self.continued {
            assert_eq!(c, code, "a multi-line reply changed its code: {text:?}");
        }
        self.continued = (line[3] == b'-').then_some(code);
        if self.continued.is_none() {
            self.replies += 1;
        }
        self.line.clear();
    }
}

impl WireCheck for ReplyCheck {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.after_cr {
                assert_eq!(b, b'\n', "a bare CR in a reply");
                self.after_cr = false;
                self.line_done();
                continue;
            }
            match b {
                b'\r' => self.after_cr = true,
                b'\n' => panic!("a bare LF in a reply"),
                _ => {
                    assert!(
                        self.line.len() < MAX_REPLY_LINE,
                        "a reply line past 512 octets"
                    );
                    self.line.push(b);
                }
            }
        }
    }

    fn at_rest(&self) {
        assert!(
            self.line.is_empty() && !self.after_cr,
            "output stopped inside a reply line: {:?}",
            String::from_utf8_lossy(&self.line)
        );
        assert!(
            self.continued.is_none(),
            "output stopped inside a multi-line reply"
        );
    }
}

impl Session for SmtpSession {
    type Host = FakeSpool;

    fn step(&mut self, input: &[u8], ctx: Ctx, out: &mut OutBuf, host: &mut FakeSpool) -> Step {
        let step = SmtpSession::step(self, input, ctx, out, host);
        if host.committing {
            assert_eq!(
                step.next,
                postling::proto::Next::AwaitCommit,
                "message_commit said Ok but the session did not await it"
            );
        }
        step
    }

    fn resume(&mut self, c: Completion, ctx: Ctx, out: &mut OutBuf, host: &mut FakeSpool) {
        SmtpSession::resume(self, c, ctx, out, host)
    }

    fn on_timeout(&mut self, out: &mut OutBuf) {
        SmtpSession::on_timeout(self, out)
    }

    fn on_shutdown(&mut self, out: &mut OutBuf) {
        SmtpSession::on_shutdown(self, out)
    }

    fn commit_result(host: &mut FakeSpool) -> Completion {
        assert!(host.committing, "AwaitCommit without a commit");
        host.committing = false;
        if host.flags & 8 != 0 {
            Completion::Committed(Err(SpoolError::Failed("injected".into())))
        } else {
            Completion::Committed(Ok(QueueId(format!("Q{}", host.begun))))
        }
    }

    fn auth_result(&mut self, _host: &mut FakeSpool) -> Completion {
        let request = self.take_auth().expect("AwaitAuth without a request");
        let ok = request.user == "alice" && request.password == b"pw";
        Completion::Auth(if ok {
            AuthVerdict::Accepted("alice".into())
        } else {
            AuthVerdict::Rejected
        })
    }

    fn max_sleep(&self) -> Duration {
        FAILURE_DELAY
    }
}

/// `auth_failure_delay` of the fuzzed submission sessions.
const FAILURE_DELAY: Duration = Duration::from_secs(2);

/// One fuzz case: the client bytes against a fresh session.
pub fn fuzz(data: &[u8]) {
    let input = Input::parse(data);
    let max_message_size = if input.flags & 0x10 != 0 { 100 } else { 10_000 };
    let settings = Rc::new(SmtpSettings {
        hostname: HOSTNAME.to_string(),
        max_message_size,
        // No certificate in the fuzzed server: STARTTLS is answered 502.
        starttls: false,
        auth_failure_delay: FAILURE_DELAY,
    });
    let peer = SocketAddr::from(([192, 0, 2, 7], 40000));
    let host = FakeSpool {
        flags: input.flags,
        max_message_size,
        ..FakeSpool::default()
    };
    let mut d = Driver::new(
        if input.flags & 0x80 != 0 {
            SmtpSession::new(settings, peer).with_submission(true)
        } else {
            SmtpSession::new(settings, peer)
        },
        host,
        ReplyCheck::default(),
        input.flags & 0x40 != 0,
        |s, ctx, out, host| s.greet(ctx, out, host),
    );
    d.play(input.script, input.seed, input.flags & 0x20 != 0);
    assert!(!d.host.committing, "a commit was started and never awaited");
}

#[cfg(test)]
mod tests {
    /// The driver plays a submission dialog: a failed login (with its delay), a good one, a
    /// sender check, a relay and a message.
    #[test]
    fn submission_dialog_under_the_driver() {
        let mut data = vec![0x80, 7];
        data.extend_from_slice(
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHg=\r\nAUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n\
              MAIL FROM:<bob@example.test>\r\nMAIL FROM:<alice@example.test>\r\n\
              RCPT TO:<far@else.example>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\nQUIT\r\n",
        );
        super::fuzz(&data);
    }
}
