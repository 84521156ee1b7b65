//! Command-line framing and argument parsing shared by the POP3 and POP2 sessions.
//!
//! Owns three things: cutting the input into lines under a length limit (an over-long line is
//! discarded up to its end, so the dialog stays in sync and memory never grows), splitting a
//! line into its keyword and arguments, and parsing message numbers strictly (popa3d's rule:
//! digits only, no sign, no wrap-around, so `LIST 4294967297` is an error, never message 1).

use std::io::Write;

use arrayvec::ArrayVec;
use memchr::memchr;

use crate::limits;
use crate::proto::OutBuf;

/// What `LineFramer::next` found at the front of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line within the limit, without its CRLF (or bare LF).
    Line(&'a [u8]),
    /// A line longer than the limit ended here; it has been discarded whole.
    TooLong,
    /// No complete line yet: read more input.
    Partial,
}

/// Cuts command lines out of the input. Remembers only whether it is in the middle of
/// discarding an over-long line.
#[derive(Debug, Default)]
pub struct LineFramer {
    discarding: bool,
}

impl LineFramer {
    /// Looks for the next line in `input` (lines longer than `max_line` octets including
    /// their terminator are too long). Returns the octets consumed and what was found.
    ///
    /// Consumes only whole lines, except when `limits::MAX_UNIT` or more octets arrive without
    /// a line end: those are consumed as the start of an over-long line, so a full input buffer
    /// can never stall the session (the contract in `proto`).
    pub fn next<'a>(&mut self, input: &'a [u8], max_line: usize) -> (usize, Frame<'a>) {
        match memchr(b'\n', input) {
            Some(lf) => {
                let consumed = lf + 1;
                if self.discarding || consumed > max_line {
                    self.discarding = false;
                    return (consumed, Frame::TooLong);
                }
                let line = input.get(..lf).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                (consumed, Frame::Line(line))
            }
            None if input.len() >= limits::MAX_UNIT => {
                self.discarding = true;
                (input.len(), Frame::Partial)
            }
            None => (0, Frame::Partial),
        }
    }
}

/// A command line split into its keyword and the text after the first space.
pub struct Command<'a> {
    pub keyword: &'a [u8],
    /// Everything after the single space that ends the keyword (empty if there is none).
    pub rest: &'a [u8],
}

impl<'a> Command<'a> {
    pub fn parse(line: &'a [u8]) -> Command<'a> {
        match memchr(b' ', line) {
            Some(sp) => Command {
                keyword: line.get(..sp).unwrap_or_default(),
                rest: line.get(sp + 1..).unwrap_or_default(),
            },
            None => Command {
                keyword: line,
                rest: &[],
            },
        }
    }

    pub fn is(&self, keyword: &str) -> bool {
        self.keyword.eq_ignore_ascii_case(keyword.as_bytes())
    }

    /// The space-separated arguments (runs of spaces count as one separator; clients that
    /// send a trailing space are common).
    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.rest.split(|&b| b == b' ').filter(|a| !a.is_empty())
    }

    /// Exactly `N` arguments, or None.
    pub fn exact_args<const N: usize>(&self) -> Option<[&'a [u8]; N]> {
        let mut out: [&[u8]; N] = [&[]; N];
        let mut it = self.args();
        for slot in out.iter_mut() {
            *slot = it.next()?;
        }
        match it.next() {
            Some(_) => None,
            None => Some(out),
        }
    }
}

/// A message number or line count: one to twenty ASCII digits whose value fits in a u64.
/// No sign, no spaces, no hex, no trailing garbage.
pub fn parse_number(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || arg.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in arg {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Formats one reply into a stack buffer and appends it to `out`: replies never allocate.
/// The caller has checked that `out` has `limits::REPLY_RESERVE` free; a reply longer than
/// that (none is) would be cut rather than grow anything.
pub fn push_fmt(out: &mut OutBuf, args: std::fmt::Arguments<'_>) {
    let mut line = ArrayVec::<u8, { limits::REPLY_RESERVE }>::new();
    let _ = line.write_fmt(args);
    out.push(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_strictly() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"1", Some(1)),
            (b"0", Some(0)),
            (b"007", Some(7)),
            (b"4294967297", Some(4_294_967_297)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"99999999999999999999", None),
            (b"000000000000000000001", None),
            (b"", None),
            (b"-1", None),
            (b"+1", None),
            (b"1x", None),
            (b"x1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"0x10", None),
            (b"1.0", None),
            ("\u{0661}".as_bytes(), None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_number(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn framer_cuts_lines_and_strips_cr() {
        let mut f = LineFramer::default();
        assert_eq!(f.next(b"STAT\r\nLIST", 255), (6, Frame::Line(b"STAT")));
        assert_eq!(f.next(b"LIST", 255), (0, Frame::Partial));
        assert_eq!(f.next(b"NOOP\n", 255), (5, Frame::Line(b"NOOP")));
        assert_eq!(f.next(b"\r\n", 255), (2, Frame::Line(b"")));
    }

    #[test]
    fn framer_limit_counts_the_terminator() {
        let mut f = LineFramer::default();
        let mut line = vec![b'a'; 253];
        line.extend_from_slice(b"\r\n");
        assert_eq!(f.next(&line, 255), (255, Frame::Line(&line[..253])));
        let mut long = vec![b'a'; 254];
        long.extend_from_slice(b"\r\n");
        assert_eq!(f.next(&long, 255), (256, Frame::TooLong));
    }

    #[test]
    fn framer_waits_below_max_unit_then_discards_in_sync() {
        let mut f = LineFramer::default();
        let junk = vec![b'x'; limits::MAX_UNIT - 1];
        assert_eq!(f.next(&junk, 255), (0, Frame::Partial));
        let junk = vec![b'x'; limits::MAX_UNIT];
        assert_eq!(f.next(&junk, 255), (limits::MAX_UNIT, Frame::Partial));
        // Still inside the long line: a short tail waits, the end reports it once.
        assert_eq!(f.next(b"xxx", 255), (0, Frame::Partial));
        assert_eq!(f.next(b"xxx\r\nNOOP\r\n", 255), (5, Frame::TooLong));
        assert_eq!(f.next(b"NOOP\r\n", 255), (6, Frame::Line(b"NOOP")));
    }

    #[test]
    fn command_split_and_args() {
        let c = Command::parse(b"top 1  10 ");
        assert!(c.is("TOP"));
        assert_eq!(c.exact_args::<2>(), Some([&b"1"[..], &b"10"[..]]));
        assert_eq!(c.exact_args::<1>(), None);
        assert_eq!(c.exact_args::<3>(), None);
        let c = Command::parse(b"PASS  two words ");
        assert_eq!(c.rest, b" two words ");
        let c = Command::parse(b"STAT");
        assert!(c.is("stat"));
        assert_eq!(c.rest, b"");
        assert_eq!(c.exact_args::<0>(), Some([]));
    }
}
