//! The POP3 and POP2 sessions under the fuzzer: a fake users table and mailbox that check how
//! a session uses them, and (POP3) a checker of the line structure of the output.
//!
//! Flags (first input byte): bit 0 `mailbox_open` fails with `InUse`, bit 1 with `Temporary`,
//! bit 2 `mailbox_update` fails, bit 3 reads fail from octet 1000 on, bit 4 reads return at
//! most 7 octets, bit 5 every login is throttled, bit 6 end by timeout (else shutdown), bit 7
//! a slow client that drains its replies a few octets at a time.
//!
//! Users: `bob` / `bob-pw` and `alice` / `alice-pw`. The mailbox holds four messages: a plain
//! one, one with dot lines and no final line end, an empty one, and 40 KiB of mixed line ends
//! and dot lines (so RETR streams across several output fills).

use std::io;
use std::rc::Rc;
use std::time::Duration;

use postling::buf::OutBuf;
use postling::limits;
use postling::mail::{MailboxDone, MailboxError, MessageInfo};
use postling::proto::pop2::Pop2Session;
use postling::proto::pop3::{Pop3Session, PopSettings};
use postling::proto::{AuthVerdict, Completion, Ctx, MailboxRequest, PopHost, Step};

use crate::{Driver, Input, Session, WireCheck};

const HOSTNAME: &str = "mail.example.test";
const FAILURE_DELAY: Duration = Duration::from_secs(2);
const USERS: [(&str, &[u8]); 2] = [("bob", b"bob-pw"), ("alice", b"alice-pw")];

fn messages() -> Vec<(String, Vec<u8>)> {
    let mut big = Vec::with_capacity(40 * 1024);
    let mut n = 0u32;
    while big.len() < 40 * 1024 {
        match n % 5 {
            0 => big.extend_from_slice(b".starts with a dot\n"),
            1 => big.extend_from_slice(b"crlf line\r\n"),
            2 => big.extend_from_slice(b".\r\n"),
            3 => big.extend_from_slice(b"\n"),
            _ => big.extend_from_slice(&[b'x'; 300]),
        }
        n += 1;
    }
    vec![
        (
            "1.M1P1Q1.h".into(),
            b"Subject: one\n\nfirst body\n".to_vec(),
        ),
        (
            "2.M1P1Q2.h".into(),
            b"Subject: two\n\nline\n.dotted\n..two dots\n.\nlast".to_vec(),
        ),
        ("3.M1P1Q3.h".into(), Vec::new()),
        ("4.M1P1Q4.h".into(), big),
    ]
}

/// Octets of `raw` as sent, with every bare LF counted as CRLF.
fn wire_size(raw: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut prev = 0u8;
    for &b in raw {
        n += if b == b'\n' && prev != b'\r' { 2 } else { 1 };
        prev = b;
    }
    n
}

pub struct FakeMailbox {
    flags: u8,
    messages: Vec<(String, Vec<u8>)>,
    /// The user `authenticate` last accepted.
    accepted: Option<String>,
    /// Messages in the open snapshot; None while no mailbox is open.
    open: Option<usize>,
    /// The mailbox was updated: nothing may touch it again.
    updated: bool,
    /// A read failed (injected): the session must close, possibly mid-message.
    read_failed: bool,
    /// Flags 0x30 together: messages are not in memory. A read at or past `warm_until` (of
    /// that message) says `WouldBlock` and notes `wants_warm`; a `MailboxRequest::Warm`
    /// brings 512 more octets in. No read may come while a read-in is pending.
    warm_until: (usize, u64),
    wants_warm: Option<u64>,
}

impl FakeMailbox {
    fn new(flags: u8) -> FakeMailbox {
        FakeMailbox {
            flags,
            messages: messages(),
            accepted: None,
            open: None,
            updated: false,
            read_failed: false,
            warm_until: (0, 0),
            wants_warm: None,
        }
    }

    fn cold(&self) -> bool {
        self.flags & 0x30 == 0x30
    }

    /// The answer to `MailboxRequest::Warm`.
    fn warm(&mut self) -> MailboxDone {
        let at = self
            .wants_warm
            .take()
            .expect("a read-in no read asked for");
        self.warm_until.1 = at + 512;
        MailboxDone::Warmed
    }

    /// The answer to `MailboxRequest::Size` (POP2's count of one message).
    fn size(&mut self, index: usize) -> MailboxDone {
        let count = self.open.expect("a message sized without an open mailbox");
        assert!(!self.updated, "a size after the update");
        assert!(index < count, "size of message {index} of {count}");
        MailboxDone::Sized(Ok(wire_size(&self.messages[index].1)))
    }
}

impl FakeMailbox {
    /// The reactor's side of `Next::AwaitAuth`: throttle and password check.
    fn authenticate(&mut self, user: &str, password: &[u8]) -> AuthVerdict {
        assert!(self.open.is_none(), "a second login with a mailbox open");
        if self.flags & 0x20 != 0 {
            return AuthVerdict::Throttled;
        }
        match USERS.iter().find(|(u, _)| *u == user) {
            Some((u, p)) if *p == password => {
                self.accepted = Some(u.to_string());
                AuthVerdict::Accepted(u.to_string())
            }
            _ => AuthVerdict::Rejected,
        }
    }
}

impl FakeMailbox {
    /// The reactor's side of `MailboxRequest::Open`.
    fn open_mailbox(&mut self, user: &str) -> Result<Vec<MessageInfo>, MailboxError> {
        assert_eq!(
            self.accepted.as_deref(),
            Some(user),
            "opened a mailbox nobody logged in to"
        );
        assert!(self.open.is_none(), "mailbox opened twice");
        if self.flags & 1 != 0 {
            return Err(MailboxError::InUse);
        }
        if self.flags & 2 != 0 {
            return Err(MailboxError::Temporary("injected".into()));
        }
        self.open = Some(self.messages.len());
        Ok(self
            .messages
            .iter()
            .map(|(uid, raw)| MessageInfo {
                uid: uid.as_str().into(),
                size: wire_size(raw),
            })
            .collect())
    }

    /// The reactor's side of `MailboxRequest::Update`.
    fn update_mailbox(&mut self, deleted: &[usize]) -> Result<(), MailboxError> {
        let count = self.open.expect("an update without an open mailbox");
        assert!(!self.updated, "a second update");
        let mut seen = vec![false; count];
        for &i in deleted {
            assert!(i < count, "deleting message {i} of {count}");
            assert!(!seen[i], "message {i} deleted twice");
            seen[i] = true;
        }
        self.updated = true;
        if self.flags & 4 != 0 {
            return Err(MailboxError::Temporary("injected".into()));
        }
        Ok(())
    }
}

impl PopHost for FakeMailbox {
    fn message_read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.open.expect("a message read without an open mailbox");
        assert!(!self.updated, "a read after the update");
        assert!(index < count, "read of message {index} of {count}");
        assert!(
            buf.len() <= limits::POP_STREAM_CHUNK,
            "a read into {} octets, not a small fixed array",
            buf.len()
        );
        if self.flags & 8 != 0 && offset >= 1000 {
            self.read_failed = true;
            return Err(io::Error::other("injected read error"));
        }
        let mut limit = u64::MAX;
        if self.cold() {
            assert!(
                self.wants_warm.is_none(),
                "a read while its read-in is pending"
            );
            if self.warm_until.0 != index {
                self.warm_until = (index, 0);
            }
            if offset >= self.warm_until.1 {
                self.wants_warm = Some(offset);
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            limit = self.warm_until.1 - offset;
        }
        let raw = &self.messages[index].1;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(raw.len());
        let mut n = (raw.len() - start)
            .min(buf.len())
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        if self.flags & 0x10 != 0 {
            n = n.min(7);
        }
        buf[..n].copy_from_slice(&raw[start..start + n]);
        Ok(n)
    }

    fn mailbox_release(&mut self) {
        self.open = None;
    }
}

/// POP3 output: no bare CR or LF anywhere (message lines are converted, replies never echo
/// one), and a turn ends on a line end.
#[derive(Default)]
pub struct LineCheck {
    after_cr: bool,
    mid_line: bool,
}

impl WireCheck for LineCheck {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.after_cr {
                assert_eq!(b, b'\n', "a bare CR in POP3 output");
                self.after_cr = false;
                self.mid_line = false;
                continue;
            }
            match b {
                b'\r' => self.after_cr = true,
                b'\n' => panic!("a bare LF in POP3 output"),
                _ => self.mid_line = true,
            }
        }
    }

    fn at_rest(&self) {
        assert!(
            !self.after_cr && !self.mid_line,
            "POP3 output stopped inside a line"
        );
    }
}

/// POP2 sends message text of exactly the listed size, line ends converted but possibly
/// without a final one, so only the contract and the host's use are checked.
#[derive(Default)]
pub struct NoCheck;

impl WireCheck for NoCheck {
    fn bytes(&mut self, _bytes: &[u8]) {}
    fn at_rest(&self) {}
}

macro_rules! pop_session {
    ($t:ty) => {
        impl Session for $t {
            type Host = FakeMailbox;

            fn step(
                &mut self,
                input: &[u8],
                ctx: Ctx,
                out: &mut OutBuf,
                host: &mut FakeMailbox,
            ) -> Step {
                <$t>::step(self, input, ctx, out, host)
            }

            fn resume(
                &mut self,
                c: Completion,
                ctx: Ctx,
                out: &mut OutBuf,
                host: &mut FakeMailbox,
            ) {
                <$t>::resume(self, c, ctx, out, host)
            }

            fn on_timeout(&mut self, out: &mut OutBuf) {
                <$t>::on_timeout(self, out)
            }

            fn on_shutdown(&mut self, out: &mut OutBuf) {
                <$t>::on_shutdown(self, out)
            }

            fn auth_result(&mut self, host: &mut FakeMailbox) -> Completion {
                let request = self.take_auth().expect("AwaitAuth without a request");
                Completion::Auth(host.authenticate(&request.user, &request.password))
            }

            fn mailbox_result(&mut self, host: &mut FakeMailbox) -> Completion {
                let done = match self.take_mailbox().expect("AwaitMailbox without a request") {
                    MailboxRequest::Open(user) => MailboxDone::Opened(host.open_mailbox(&user)),
                    MailboxRequest::Update(deleted) => {
                        MailboxDone::Updated(host.update_mailbox(&deleted))
                    }
                    MailboxRequest::Warm => host.warm(),
                    MailboxRequest::Size(index) => host.size(index),
                };
                Completion::Mailbox(done)
            }

            fn commit_result(_host: &mut FakeMailbox) -> Completion {
                panic!("a POP session awaited a commit")
            }

            fn max_sleep(&self) -> Duration {
                FAILURE_DELAY
            }

            fn may_cut_output(host: &FakeMailbox) -> bool {
                host.read_failed
            }
        }
    };
}

pop_session!(Pop3Session);
pop_session!(Pop2Session);

fn settings() -> Rc<PopSettings> {
    Rc::new(PopSettings {
        hostname: HOSTNAME.to_string(),
        auth_failure_delay: FAILURE_DELAY,
        // No certificate in the fuzzed server: STLS is refused like any command not offered.
        stls: false,
    })
}

/// One POP3 fuzz case.
pub fn fuzz_pop3(data: &[u8]) {
    let input = Input::parse(data);
    let mut d = Driver::new(
        Pop3Session::new(settings()),
        FakeMailbox::new(input.flags),
        LineCheck::default(),
        input.flags & 0x80 != 0,
        |s, ctx, out, _| s.greet(ctx, out),
    );
    d.play(input.script, input.seed, input.flags & 0x40 != 0);
}

/// One POP2 fuzz case.
pub fn fuzz_pop2(data: &[u8]) {
    let input = Input::parse(data);
    let mut d = Driver::new(
        Pop2Session::new(settings()),
        FakeMailbox::new(input.flags),
        NoCheck,
        input.flags & 0x80 != 0,
        |s, ctx, out, _| s.greet(ctx, out),
    );
    d.play(input.script, input.seed, input.flags & 0x40 != 0);
}
