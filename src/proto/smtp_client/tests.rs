//! Test harness for the SMTP client session: a driver that plays the caller (bounded input
//! buffer, lazily drained output, the message data handed over in chunks, the TLS handshake
//! done at once) while checking the step contract, and `check`, which replays a server script
//! whole, split at every byte boundary and one byte at a time and demands the same result.

use std::collections::VecDeque;
use std::sync::OnceLock;

use super::*;
use crate::buf::Buf;

pub(super) const NAME: &str = "client.example.test";

pub(super) fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub(super) fn settings(tls: TlsPolicy, credentials: Option<(&str, &str)>) -> Rc<ClientSettings> {
    Rc::new(ClientSettings {
        helo_name: NAME.to_owned(),
        tls,
        credentials: credentials.map(|(u, p)| Credentials {
            user: u.to_owned(),
            password: p.to_owned(),
        }),
        timeouts: Timeouts::default(),
    })
}

pub(super) fn plain() -> Rc<ClientSettings> {
    settings(TlsPolicy::Opportunistic, None)
}

pub(super) const BODY: &[u8] = b"Subject: t\r\n\r\nhello\r\n";

/// A 7-bit message from a@example.org to `rcpts`, with `BODY` as its data.
pub(super) fn msg(rcpts: &[&str]) -> OutMessage {
    OutMessage {
        sender: "a@example.org".to_owned(),
        recipients: rcpts.iter().map(|r| (*r).to_owned()).collect(),
        size: BODY.len() as u64,
        body: BodyType::SevenBit,
        smtputf8: false,
    }
}

/// How a script's bytes are cut into reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cut {
    Whole,
    /// Split at this offset of the whole script (segment boundaries stay boundaries).
    At(usize),
    Bytes,
}

/// Plays the caller around one client session.
pub(super) struct Driver {
    pub client: SmtpClient,
    out: Box<OutBuf>,
    input: Vec<u8>,
    /// Everything the client wrote.
    pub written: Vec<u8>,
    data: Vec<u8>,
    data_pos: usize,
    data_chunk: usize,
    /// Messages for `next_message`, with their data; after the last, `quit`.
    pub queue: VecDeque<(OutMessage, Vec<u8>)>,
    /// Outcomes of every finished message, in order.
    pub outcomes: Vec<Vec<Outcome>>,
    pub closed: bool,
    pub handshakes: u32,
    pub now: Instant,
    /// Largest input left unconsumed at once.
    pub max_buffered: usize,
    /// A STARTTLS handshake happened in this read: drop the rest of the flight.
    handshake_in_read: bool,
    /// Play a caller that stalls: never finish the handshake, never hand over data.
    pub hold: bool,
}

impl Driver {
    pub fn new(
        settings: Rc<ClientSettings>,
        message: OutMessage,
        data: &[u8],
        tls: bool,
    ) -> Driver {
        Driver {
            client: SmtpClient::new(settings, message, tls, t0()),
            out: Buf::new_boxed(),
            input: Vec::new(),
            written: Vec::new(),
            data: data.to_vec(),
            data_pos: 0,
            data_chunk: 4096,
            queue: VecDeque::new(),
            outcomes: Vec::new(),
            closed: false,
            handshakes: 0,
            now: t0(),
            max_buffered: 0,
            handshake_in_read: false,
            hold: false,
        }
    }

    pub fn then(mut self, message: OutMessage, data: &[u8]) -> Driver {
        self.queue.push_back((message, data.to_vec()));
        self
    }

    fn drain(&mut self) {
        self.written.extend_from_slice(self.out.bytes());
        self.out.clear();
    }

    /// Plays `segments` (one flight of server bytes each) cut as `cut` says.
    pub fn play(&mut self, segments: &[&[u8]], cut: Cut) {
        if cut == Cut::Bytes {
            self.data_chunk = 1;
        } else if let Cut::At(i) = cut {
            self.data_chunk = i % 7 + 1;
        }
        self.run();
        let mut offset = 0;
        for seg in segments {
            let pieces: Vec<&[u8]> = match cut {
                Cut::Whole => vec![seg],
                Cut::Bytes => seg.chunks(1).collect(),
                Cut::At(i) if i > offset && i < offset + seg.len() => {
                    let (a, b) = seg.split_at(i - offset);
                    vec![a, b]
                }
                Cut::At(_) => vec![seg],
            };
            offset += seg.len();
            self.handshake_in_read = false;
            for p in pieces {
                if self.handshake_in_read {
                    break;
                }
                self.send(p);
            }
        }
    }

    /// One flight, as one read (or as many as the input buffer needs).
    pub fn send(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.closed && !self.handshake_in_read {
            let room = limits::IN_BUF - self.input.len();
            let take = room.min(bytes.len());
            self.input.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.run();
            assert!(
                self.input.len() < limits::IN_BUF || self.closed,
                "stalled on a full input buffer"
            );
        }
    }

    /// Steps until the client wants input or closes, checking the contract.
    pub fn run(&mut self) {
        let mut idle = 0;
        while !self.closed {
            idle += 1;
            assert!(idle < 100_000, "the client spins");
            if self.out.free() < limits::REPLY_RESERVE {
                self.drain();
            }
            let offered = self.input.len();
            let step = self.client.step(&self.input, self.now, &mut self.out);
            assert!(step.consumed <= offered);
            self.input.drain(..step.consumed);
            self.max_buffered = self.max_buffered.max(self.input.len());
            match step.next {
                ClientNext::NeedInput => {
                    assert!(
                        self.input.len() < limits::MAX_UNIT,
                        "NeedInput on a full unit"
                    );
                    break;
                }
                ClientNext::NeedOutput => {
                    assert!(
                        self.out.free() < limits::REPLY_RESERVE,
                        "NeedOutput with room"
                    );
                    self.drain();
                }
                ClientNext::NeedData | ClientNext::StartTls if self.hold => break,
                ClientNext::NeedData => {
                    if self.data_pos < self.data.len() {
                        let end = (self.data_pos + self.data_chunk).min(self.data.len());
                        let chunk = &self.data[self.data_pos..end];
                        let n = self.client.send_data(chunk, self.now, &mut self.out);
                        if n < chunk.len() {
                            self.drain();
                        }
                        self.data_pos += n;
                    } else if !self.client.end_data(self.now, &mut self.out) {
                        self.drain();
                    }
                }
                ClientNext::StartTls => {
                    assert!(
                        self.input.is_empty(),
                        "bytes after the 220 to STARTTLS kept"
                    );
                    self.handshakes += 1;
                    self.handshake_in_read = true;
                    self.client.tls_established(self.now);
                }
                ClientNext::MessageDone => {
                    let o = self
                        .client
                        .take_outcomes()
                        .expect("outcomes at MessageDone");
                    self.outcomes.push(o);
                    assert!(self.client.take_outcomes().is_none(), "outcomes twice");
                    match self.queue.pop_front() {
                        Some((m, data)) => {
                            self.data = data;
                            self.data_pos = 0;
                            assert!(self.client.next_message(m, self.now).is_ok());
                        }
                        None => self.client.quit(self.now),
                    }
                }
                ClientNext::Close => {
                    self.closed = true;
                    self.finish();
                }
            }
        }
        self.drain();
    }

    /// Collects the outcomes of a session that ended without `MessageDone`.
    pub fn finish(&mut self) {
        if let Some(o) = self.client.take_outcomes() {
            self.outcomes.push(o);
        }
    }

    pub fn timeout(&mut self) {
        let deadline = self.client.deadline().expect("a deadline");
        self.client.on_timeout(deadline);
        self.run();
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.written).into_owned()
    }

    /// "delivered|temporary|permanent: text" per recipient of every message.
    pub fn summary(&self) -> Vec<Vec<String>> {
        self.outcomes
            .iter()
            .map(|m| m.iter().map(summary).collect())
            .collect()
    }
}

pub(super) fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Delivered(d) => format!("delivered: {d}"),
        Outcome::Temporary(d) => format!("temporary: {d}"),
        Outcome::Permanent(d) => format!("permanent: {d}"),
    }
}

/// Everything a run produced, for comparing runs.
type Result = (String, Vec<Vec<String>>, bool, u32);

fn result(d: &Driver) -> Result {
    (d.text(), d.summary(), d.closed, d.handshakes)
}

/// Plays the script whole, at every split point and one byte at a time (the data then also
/// one byte at a time); all must agree. Returns the whole run.
pub(super) fn check(make: impl Fn() -> Driver, segments: &[&[u8]]) -> Driver {
    let mut whole = make();
    whole.play(segments, Cut::Whole);
    let expected = result(&whole);
    let total: usize = segments.iter().map(|s| s.len()).sum();
    for cut in (1..total).map(Cut::At).chain([Cut::Bytes]) {
        let mut d = make();
        d.play(segments, cut);
        assert_eq!(result(&d), expected, "{cut:?}");
    }
    whole
}

/// A fresh client without TLS or AUTH for `rcpts`, checked over `segments`.
pub(super) fn check_plain(rcpts: &[&str], segments: &[&[u8]]) -> Driver {
    check(|| Driver::new(plain(), msg(rcpts), BODY, false), segments)
}

pub(super) const GREETING: &str = "220 mx.example.net ESMTP\r\n";
pub(super) const EHLO: &str = "EHLO client.example.test\r\n";

#[test]
fn reply_lines() {
    use super::reply::{Parsed, parse_line};
    assert_eq!(parse_line(b"250 ok"), Parsed::Incomplete);
    assert!(matches!(
        parse_line(b"250-a\r\n"),
        Parsed::Line {
            used: 7,
            code: 250,
            last: false,
            text: b"a",
            rest_follows: false
        }
    ));
    assert!(matches!(
        parse_line(b"250\r\n"),
        Parsed::Line {
            last: true,
            text: b"",
            ..
        }
    ));
    assert_eq!(
        parse_line(b"250 ok\n"),
        Parsed::Bad("a reply line ended in a bare LF")
    );
    assert!(matches!(parse_line(b"25 ok\r\n"), Parsed::Bad(_)));
    assert!(matches!(parse_line(b"199 ok\r\n"), Parsed::Bad(_)));
    assert!(matches!(parse_line(b"260 ok\r\n"), Parsed::Bad(_)));
    assert!(matches!(parse_line(b"250_ok\r\n"), Parsed::Bad(_)));
    let long = vec![b'x'; limits::MAX_UNIT];
    let mut line = b"550 ".to_vec();
    line.extend_from_slice(&long);
    match parse_line(&line) {
        Parsed::Line {
            used,
            text,
            rest_follows: true,
            ..
        } => {
            assert_eq!(
                used,
                limits::MAX_UNIT,
                "only the head; the next line is not swallowed"
            );
            assert_eq!(text.len(), limits::SMTP_CLIENT_LINE_KEEP);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn enhanced_codes_and_kept_text() {
    use super::reply::{keep_text, split_enhanced};
    let (e, rest) = split_enhanced(550, b"5.1.1 no such user");
    assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("5.1.1"));
    assert_eq!(rest, b"no such user");
    // The class must match the reply code's.
    assert_eq!(split_enhanced(250, b"5.1.1 x").0, None);
    assert_eq!(split_enhanced(250, b"2.1234.0 x").0, None);
    let mut kept = String::new();
    keep_text(&mut kept, b"a\x01b\xff");
    assert_eq!(kept, "a?b?");
    let mut kept = String::new();
    for _ in 0..100 {
        keep_text(&mut kept, &[b'y'; 100]);
    }
    assert!(kept.len() <= limits::SMTP_CLIENT_REPLY_KEEP);
}

#[test]
fn base64_vectors() {
    // RFC 4648 §10.
    use super::reply::base64;
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

#[test]
fn ehlo_keywords() {
    let mut e = Extensions::default();
    for line in [
        &b"pipelining"[..],
        b"SIZE 35882577",
        b"8BITMIME",
        b"SMTPUTF8",
        b"STARTTLS",
        b"AUTH=LOGIN",
        b"AUTH CRAM-MD5 plain",
        b"X-UNKNOWN 1 2",
        b"",
    ] {
        e.keyword(line);
    }
    let all = Extensions {
        pipelining: true,
        size: Some(35_882_577),
        eight_bit_mime: true,
        smtputf8: true,
        starttls: true,
        auth_plain: true,
        auth_login: true,
    };
    assert_eq!(e, all);
    let mut e = Extensions::default();
    e.keyword(b"SIZE");
    assert_eq!(e.size, Some(0));
}
