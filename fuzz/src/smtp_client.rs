//! The outbound SMTP client session under the fuzzer: the bytes play a server, the driver
//! plays the caller (reads cut by the seed, message data handed over in chunks, TLS handshakes
//! that succeed at once, a second message on the connection when the flags ask).
//!
//! Flags (first input byte): bits 0-1 the STARTTLS policy (0 never, 1 and 3 opportunistic,
//! 2 required), bit 2 AUTH credentials, bit 3 implicit TLS, bit 4 an 8-bit body, bit 5 a UTF-8
//! recipient, bit 6 a second message after the first, bit 7 end by timeout (else the server
//! closes). The seed's top two bits add recipients (1 to 4).
//!
//! Checked on every call: `consumed <= offered`; `NeedInput` never leaves `limits::MAX_UNIT`
//! unconsumed; whenever the client waits for the server its output is whole command lines
//! (nothing cut by the fixed output buffer) and a deadline is armed; no spin; and every
//! recipient of every message gets exactly one verdict, a real one, by the end of the session.

use std::rc::Rc;
use std::time::{Duration, Instant};

use postling::buf::OutBuf;
use postling::limits;
use postling::mail::BodyType;
use postling::proto::smtp_client::{
    ClientNext, ClientSettings, Credentials, OutMessage, Outcome, SmtpClient, Timeouts, TlsPolicy,
};

use crate::{Chunker, Input};

const SPIN_LIMIT: u32 = 1000;
const DATA: &[u8] = b"Subject: fuzz\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast line without CRLF";

fn message(flags: u8, rcpts: usize, n: usize) -> OutMessage {
    let mut recipients: Vec<String> = (0..rcpts)
        .map(|i| format!("r{i}.{n}@example.net"))
        .collect();
    if flags & 0x20 != 0 {
        recipients.push("jörg@example.net".to_owned());
    }
    OutMessage {
        sender: "a@example.org".to_owned(),
        recipients,
        size: DATA.len() as u64,
        body: if flags & 0x10 != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: false,
    }
}

struct Driver {
    client: SmtpClient,
    out: Box<OutBuf>,
    input: Vec<u8>,
    /// Client output since the last line end.
    partial: Vec<u8>,
    in_data: bool,
    data_pos: usize,
    chunker: Chunker,
    now: Instant,
    /// Recipients of the message whose verdicts are still to be taken.
    open: Option<usize>,
    /// Messages still to send after the current one.
    more: u32,
    flags: u8,
    rcpts: usize,
    closed: bool,
}

impl Driver {
    fn drain(&mut self) {
        for &b in self.out.bytes() {
            if b == b'\n' {
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
        self.out.clear();
    }

    /// The client waits for the server: what it wrote must be whole lines.
    fn at_rest(&mut self) {
        self.drain();
        if !self.in_data {
            assert!(
                self.partial.is_empty(),
                "output cut mid-line: {:?}",
                String::from_utf8_lossy(&self.partial)
            );
        }
    }

    fn take(&mut self) {
        let Some(n) = self.open.take() else {
            assert!(
                self.client.take_outcomes().is_none(),
                "verdicts taken twice"
            );
            return;
        };
        let outcomes = self
            .client
            .take_outcomes()
            .expect("no verdicts at the end of a message");
        assert_eq!(outcomes.len(), n, "one verdict per recipient");
        for o in &outcomes {
            let d = match o {
                Outcome::Delivered(d) | Outcome::Temporary(d) | Outcome::Permanent(d) => d,
            };
            assert_ne!(d.text, "no verdict", "a recipient was never decided");
        }
        assert!(
            self.client.take_outcomes().is_none(),
            "verdicts taken twice"
        );
    }

    fn run(&mut self) {
        let mut idle = 0u32;
        while !self.closed {
            if self.out.free() < limits::REPLY_RESERVE {
                self.drain();
            }
            let offered = self.input.len();
            let before = self.out.len();
            let step = self.client.step(&self.input, self.now, &mut self.out);
            assert!(
                step.consumed <= offered,
                "consumed {} of {offered}",
                step.consumed
            );
            self.input.drain(..step.consumed);
            let mut progress = step.consumed > 0 || self.out.len() != before;
            self.in_data = step.next == ClientNext::NeedData;
            match step.next {
                ClientNext::NeedInput => {
                    assert!(
                        self.input.len() < limits::MAX_UNIT,
                        "NeedInput on a full unit"
                    );
                    assert!(
                        self.client.deadline().is_some(),
                        "waiting without a deadline"
                    );
                    self.at_rest();
                    return;
                }
                ClientNext::NeedOutput => {
                    assert!(
                        self.out.free() < limits::REPLY_RESERVE,
                        "NeedOutput with room"
                    );
                    progress |= !self.out.is_empty();
                    self.drain();
                }
                ClientNext::NeedData => {
                    assert!(
                        self.client.deadline().is_some(),
                        "sending without a deadline"
                    );
                    if self.data_pos < DATA.len() {
                        let len = self.chunker.next_len().min(DATA.len() - self.data_pos);
                        let chunk = &DATA[self.data_pos..self.data_pos + len];
                        let n = self.client.send_data(chunk, self.now, &mut self.out);
                        assert!(n <= chunk.len());
                        progress |= n > 0;
                        if n == 0 {
                            progress |= !self.out.is_empty();
                            self.drain();
                        }
                        self.data_pos += n;
                    } else if self.client.end_data(self.now, &mut self.out) {
                        progress = true;
                    } else {
                        progress |= !self.out.is_empty();
                        self.drain();
                    }
                }
                ClientNext::StartTls => {
                    assert!(self.input.is_empty(), "input kept across STARTTLS");
                    self.at_rest();
                    self.client.tls_established(self.now);
                    progress = true;
                }
                ClientNext::MessageDone => {
                    assert!(
                        self.client.deadline().is_none(),
                        "a deadline in the caller's turn"
                    );
                    self.take();
                    if self.more > 0 {
                        self.more -= 1;
                        let m = message(self.flags, self.rcpts, 2);
                        self.open = Some(m.recipients.len());
                        self.data_pos = 0;
                        assert!(self.client.next_message(m, self.now).is_ok());
                    } else {
                        self.client.quit(self.now);
                    }
                    progress = true;
                }
                ClientNext::Close => {
                    self.closed = true;
                    self.at_rest();
                    self.take();
                    return;
                }
            }
            idle = if progress { 0 } else { idle + 1 };
            assert!(idle < SPIN_LIMIT, "the client spins");
        }
    }
}

pub fn fuzz(data: &[u8]) {
    let input = Input::parse(data);
    let flags = input.flags;
    let tls = match flags & 3 {
        0 => TlsPolicy::Never,
        2 => TlsPolicy::Required,
        _ => TlsPolicy::Opportunistic,
    };
    let settings = Rc::new(ClientSettings {
        helo_name: "client.example.test".to_owned(),
        tls,
        credentials: (flags & 4 != 0).then(|| Credentials {
            user: "user".to_owned(),
            password: "secret".to_owned(),
        }),
        timeouts: Timeouts::default(),
    });
    let rcpts = 1 + usize::from(input.seed >> 6);
    let now = Instant::now();
    let first = message(flags, rcpts, 1);
    let mut d = Driver {
        open: Some(first.recipients.len()),
        client: SmtpClient::new(settings, first, flags & 8 != 0, now),
        out: OutBuf::new_boxed(),
        input: Vec::with_capacity(limits::IN_BUF),
        partial: Vec::new(),
        in_data: false,
        data_pos: 0,
        chunker: Chunker::new(input.seed),
        now,
        more: u32::from(flags & 0x40 != 0),
        flags,
        rcpts,
        closed: false,
    };
    d.run();
    let mut rest = input.script;
    while !rest.is_empty() && !d.closed {
        let room = limits::IN_BUF - d.input.len();
        assert!(
            room > 0,
            "the input buffer is full and the client asked for more"
        );
        let take = d.chunker.next_len().min(room).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        d.input.extend_from_slice(chunk);
        d.run();
        d.now += Duration::from_millis(250);
    }
    if !d.closed {
        if flags & 0x80 != 0 {
            let deadline = d
                .client
                .deadline()
                .expect("an open session without a deadline");
            d.client.on_timeout(deadline);
        } else {
            d.client.peer_closed();
        }
        assert!(d.client.is_closed(), "the session outlived its end");
        d.run();
    }
    assert!(d.closed);
    assert!(d.open.is_none(), "a message ended without verdicts");
}
