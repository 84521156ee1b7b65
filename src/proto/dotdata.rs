//! The DATA decoder: CRLF.CRLF framing, dot-unstuffing, bare-LF normalisation (RFC 5321 §4.5.2).
//!
//! A small byte state machine, independent of the session: it is fed arbitrary chunks of the
//! mail data and hands decoded bytes to a callback, mostly as slices of the input (a run of
//! ordinary lines is passed on in one piece), so nothing is allocated or held per line and a
//! line of any length streams through.
//!
//! The rules, chosen so that no message boundary can be smuggled (SMTP smuggling, 2023):
//! - The end of data is `<CRLF>.<CRLF>` and nothing else: the `.` line must follow a line that
//!   ended in a real CRLF and must itself end in CRLF. The line end of the DATA command counts
//!   as the first preceding line end.
//! - A line ending in a bare LF is stored as if it ended in CRLF, so everything downstream
//!   (Maildir, POP3, a relay that dot-stuffs) sees ordinary lines. A bare CR is data.
//! - So `<LF>.<LF>`, `<LF>.<CRLF>` and `<CRLF>.<LF>` are ordinary lines holding one `.`,
//!   stored as `.` CRLF; they are never unstuffed because nothing follows their dot.
//! - A line that begins with `.` followed by at least one more octet before its line end has
//!   that first dot removed (§4.5.2), whatever ended the line before it.

use memchr::memchr;

/// Where in the data stream the decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line; `after_crlf` says whether the previous line ended in a real CRLF
    /// (only then can a `.` line end the data).
    LineStart { after_crlf: bool },
    /// A line began with `.`; the dot is held back until the next octet decides.
    Dot { after_crlf: bool },
    /// A line began with `.` CR; the next octet decides between the end, a `.` line and data.
    DotCr { after_crlf: bool },
    /// Inside a line.
    Mid,
    /// Inside a line whose last octet so far, a CR, ended the previous chunk and is held back
    /// until the next octet says whether it is the first half of a CRLF.
    MidCr,
    /// `<CRLF>.<CRLF>` was seen.
    Done,
}

/// The result of one `decode` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input octets used. Less than offered only when the end was found: the rest belongs to
    /// whatever follows the data (pipelined commands).
    pub consumed: usize,
    /// The terminating `.` CRLF was consumed.
    pub finished: bool,
}

/// Decodes one message's data. Holds no bytes, only its position in the line grammar.
#[derive(Clone, Debug)]
pub struct DotDecoder {
    state: State,
}

const CRLF: &[u8] = b"\r\n";
const DOT_CRLF: &[u8] = b".\r\n";
const CR: &[u8] = b"\r";

impl DotDecoder {
    /// A decoder for data that follows a DATA command line. `command_ended_in_crlf` says whether
    /// that line ended in a real CRLF: if it did not, an immediate `.` CRLF is an ordinary line.
    pub fn new(command_ended_in_crlf: bool) -> DotDecoder {
        DotDecoder {
            state: State::LineStart {
                after_crlf: command_ended_in_crlf,
            },
        }
    }

    /// Has the end of data been seen?
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, passing the decoded octets (CRLF line ends, dots unstuffed) to `emit`
    /// in order. Consumes all of `input` unless the end of data lies inside it.
    pub fn decode(&mut self, input: &[u8], emit: &mut dyn FnMut(&[u8])) -> Decoded {
        // Octets input[run..i] are ordinary data not yet passed to `emit`; they go out in one
        // slice whenever something must be dropped, held back or replaced.
        let mut run = 0;
        let mut i = 0;
        let len = input.len();
        let flush = |emit: &mut dyn FnMut(&[u8]), from: usize, to: usize| {
            if let Some(bytes) = input.get(from..to) {
                if !bytes.is_empty() {
                    emit(bytes);
                }
            }
        };
        while i < len {
            let byte = input.get(i).copied().unwrap_or(0);
            match self.state {
                State::Done => break,
                State::LineStart { after_crlf } => {
                    if byte == b'.' {
                        flush(emit, run, i);
                        i += 1;
                        run = i;
                        self.state = State::Dot { after_crlf };
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot { after_crlf } => match byte {
                    b'\r' => {
                        i += 1;
                        run = i;
                        self.state = State::DotCr { after_crlf };
                    }
                    b'\n' => {
                        emit(DOT_CRLF);
                        i += 1;
                        run = i;
                        self.state = State::LineStart { after_crlf: false };
                    }
                    // More follows the dot: the dot was stuffing and stays dropped.
                    _ => self.state = State::Mid,
                },
                State::DotCr { after_crlf } => {
                    if byte == b'\n' {
                        i += 1;
                        run = i;
                        if after_crlf {
                            self.state = State::Done;
                            return Decoded {
                                consumed: i,
                                finished: true,
                            };
                        }
                        emit(DOT_CRLF);
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        // `.` CR then more: the dot was stuffing, the CR is data.
                        emit(CR);
                        self.state = State::Mid;
                    }
                }
                State::MidCr => {
                    if byte == b'\n' {
                        emit(CRLF);
                        i += 1;
                        run = i;
                        self.state = State::LineStart { after_crlf: true };
                    } else {
                        emit(CR);
                        self.state = State::Mid;
                    }
                }
                State::Mid => {
                    let rest = input.get(i..).unwrap_or(&[]);
                    match memchr(b'\n', rest) {
                        Some(k) => {
                            let lf = i + k;
                            if k > 0 && input.get(lf - 1) == Some(&b'\r') {
                                // A real CRLF: the line stays part of the run.
                                i = lf + 1;
                                self.state = State::LineStart { after_crlf: true };
                            } else {
                                flush(emit, run, lf);
                                emit(CRLF);
                                i = lf + 1;
                                run = i;
                                self.state = State::LineStart { after_crlf: false };
                            }
                        }
                        None => {
                            if input.last() == Some(&b'\r') {
                                flush(emit, run, len - 1);
                                run = len;
                                self.state = State::MidCr;
                            }
                            i = len;
                        }
                    }
                }
            }
        }
        flush(emit, run, i);
        Decoded {
            consumed: i,
            finished: self.state == State::Done,
        }
    }
}

#[cfg(test)]
#[path = "dotdata_tests.rs"]
mod tests;
