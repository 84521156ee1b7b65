//! Reply framing for the SMTP client (RFC 5321 §4.2): one reply line at a time, in bounded
//! memory, plus what is kept of a reply for the record (its code, its RFC 3463 enhanced code
//! and a cut text) and what an EHLO reply advertises.
//!
//! A reply line must end in CRLF and start with a three-digit code (first digit 2-5, second
//! 0-5) followed by SP, `-` or the line end; the code must be the same on every line of a
//! multi-line reply. Anything else is a protocol error: the session gives up on the server
//! rather than guess what it meant. A line longer than `limits::MAX_UNIT` is taken in pieces:
//! its head is parsed and kept (cut to `limits::SMTP_CLIENT_LINE_KEEP`), the rest consumed and
//! dropped, so a hostile server can never make the client buffer without bound.

use std::fmt;

use memchr::memchr;

use crate::limits;

/// What is kept of one server reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 enhanced status code of the first line, when it carries one.
    pub enhanced: Option<Enhanced>,
    /// The text of every line without codes, joined by single spaces, control characters
    /// replaced by `?`, cut to `limits::SMTP_CLIENT_REPLY_KEEP` octets.
    pub text: String,
}

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

impl Reply {
    /// The first digit: 2 success, 3 intermediate, 4 transient, 5 permanent.
    pub fn class(&self) -> u16 {
        self.code / 100
    }
}

/// One reply line taken from the front of the input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed<'a> {
    /// No complete line yet (and less than `limits::MAX_UNIT` offered).
    Incomplete,
    Line {
        /// Octets consumed.
        used: usize,
        code: u16,
        /// SP or nothing after the code: the last line of its reply.
        last: bool,
        /// The text after the code and separator, cut to `limits::SMTP_CLIENT_LINE_KEEP`.
        text: &'a [u8],
        /// Only the head of an over-long line was consumed: drop input through the next LF.
        rest_follows: bool,
    },
    /// Not a reply line.
    Bad(&'static str),
}

pub(super) fn parse_line(input: &[u8]) -> Parsed<'_> {
    let window = input.get(..limits::MAX_UNIT).unwrap_or(input);
    let (content, used, rest_follows) = match memchr(b'\n', window) {
        Some(lf) => match input[..lf].strip_suffix(b"\r") {
            Some(content) => (content, lf + 1, false),
            None => return Parsed::Bad("a reply line ended in a bare LF"),
        },
        None if input.len() >= limits::MAX_UNIT => (window, window.len(), true),
        None => return Parsed::Incomplete,
    };
    let code = match content {
        [a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9', ..] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Parsed::Bad("a reply line without a valid reply code"),
    };
    let (last, text) = match content.get(3..) {
        Some([]) | None => (true, &[][..]),
        Some([b' ', text @ ..]) => (true, text),
        Some([b'-', text @ ..]) => (false, text),
        Some(_) => return Parsed::Bad("a reply code followed by neither SP nor '-'"),
    };
    let text = text.get(..limits::SMTP_CLIENT_LINE_KEEP).unwrap_or(text);
    Parsed::Line {
        used,
        code,
        last,
        text,
        rest_follows,
    }
}

/// Splits a leading `class.subject.detail ` off a line's text when its class matches the
/// reply code's first digit (RFC 3463 §2: subject and detail are 1-3 digits).
pub(super) fn split_enhanced(code: u16, text: &[u8]) -> (Option<Enhanced>, &[u8]) {
    fn number(s: &[u8]) -> Option<u16> {
        if s.is_empty() || s.len() > 3 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        s.iter()
            .try_fold(0u16, |n, d| Some(n * 10 + u16::from(d - b'0')))
    }
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let word = &text[..end];
    let mut parts = word.split(|&b| b == b'.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    let class = match c {
        [c @ (b'2' | b'4' | b'5')] if u16::from(c - b'0') == code / 100 => c - b'0',
        _ => return (None, text),
    };
    let (Some(subject), Some(detail)) = (number(s), number(d)) else {
        return (None, text);
    };
    let rest = text.get(end + 1..).unwrap_or(&[]);
    (
        Some(Enhanced {
            class,
            subject,
            detail,
        }),
        rest,
    )
}

/// Appends reply text for the record: invalid UTF-8 and control characters become `?`, and
/// nothing beyond `limits::SMTP_CLIENT_REPLY_KEEP` octets is kept.
pub(super) fn keep_text(kept: &mut String, text: &[u8]) {
    if !kept.is_empty() && !text.is_empty() && kept.len() < limits::SMTP_CLIENT_REPLY_KEEP {
        kept.push(' ');
    }
    for c in String::from_utf8_lossy(text).chars() {
        let c = if c.is_control() || c == char::REPLACEMENT_CHARACTER {
            '?'
        } else {
            c
        };
        if kept.len() + c.len_utf8() > limits::SMTP_CLIENT_REPLY_KEEP {
            return;
        }
        kept.push(c);
    }
}

/// What an EHLO reply advertised (RFC 5321 §4.1.1.1: one keyword per line after the first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` when SIZE came without a limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 4954 with RFC 4616 PLAIN.
    pub auth_plain: bool,
    /// RFC 4954 with the (undocumented but universal) LOGIN mechanism.
    pub auth_login: bool,
}

impl Extensions {
    /// Reads one EHLO keyword line (its text, after `250-`/`250 `).
    pub(super) fn keyword(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { return };
        let first = first.to_ascii_uppercase();
        // "AUTH=PLAIN LOGIN" is the form some old servers use for broken clients.
        let (keyword, inline) = match first.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (first, None),
        };
        match keyword.as_str() {
            "PIPELINING" => self.pipelining = true,
            "SIZE" => self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => self.eight_bit_mime = true,
            "SMTPUTF8" => self.smtputf8 = true,
            "STARTTLS" => self.starttls = true,
            "AUTH" => {
                for mech in inline.iter().map(String::as_str).chain(words) {
                    match mech.to_ascii_uppercase().as_str() {
                        "PLAIN" => self.auth_plain = true,
                        "LOGIN" => self.auth_login = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Base64 (RFC 4648 §4, padded) for the AUTH exchanges.
pub(super) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                s.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}
