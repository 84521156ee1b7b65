//! Streaming one message from the mailbox to the client through the fixed output buffer,
//! shared by POP3 RETR/TOP and POP2 RETR.
//!
//! The file is read in chunks of at most `limits::POP_STREAM_CHUNK` octets into a stack array
//! and converted straight into the output buffer's free space: bare LF becomes CRLF (an
//! existing CRLF is left alone), and for POP3 a line starting with `.` gets another `.`
//! (RFC 1939 §3), a missing final line end gets CRLF, and `.CRLF` follows. Each chunk is sized
//! so its worst-case expansion (every octet doubled) still fits, so nothing is ever held back.
//! All state between fills lives in `MessageStream` (a few dozen bytes): a 100 MiB message
//! costs no more memory than a small one.
//!
//! A read that would wait for the disk (`message_read` says `WouldBlock`) is `Fill::Waiting`:
//! the session asks for the bytes to be read in (`MailboxRequest::Warm`) and calls again once
//! they are; `start` has then written nothing, so its error can still be answered in-band.
//!
//! A read error after the first chunk cannot be reported in-band (the `+OK` and part of the
//! body are already on the wire), so `fill` returns `Fill::Failed` and the session closes the
//! connection: the client sees a message without its terminator and discards it, and nothing
//! is deleted. A failure on the very first read is reported before anything is written.

use std::io;

use memchr::memchr;

use crate::limits;
use crate::proto::{OutBuf, PopHost};

/// Room kept free after each converted chunk for the longest ending: CRLF, `.`, CRLF.
const END_ROOM: usize = 5;

const _: () = assert!(2 * limits::POP_STREAM_CHUNK + END_ROOM <= limits::OUT_BUF);
const _: () = assert!(2 * limits::POP_STREAM_MIN_READ + END_ROOM + 64 <= limits::REPLY_RESERVE);

/// What one `fill` achieved.
#[derive(Debug)]
pub enum Fill {
    /// The output buffer has too little room left: drain it, then call `fill` again.
    Full,
    /// The whole message, with its terminator, is in the output buffer.
    Done,
    /// Reading the file failed (or it ended before its listed POP2 size). The connection must
    /// be closed: what was already sent cannot be taken back.
    Failed(io::Error),
    /// The next bytes are not in memory (`message_read` said `WouldBlock`): have them read in
    /// (`MailboxRequest::Warm`), then call `fill` (or, from `start`, `start`) again. Nothing
    /// was lost: the stream stands where it stood.
    Waiting,
}

/// One message being sent. Create it with `retr`, `top` or `pop2`, call `start` once with the
/// status line, then `fill` after every drain until it says `Done` or `Failed`.
#[derive(Debug)]
pub struct MessageStream {
    index: usize,
    /// Next octet of the file to read.
    offset: u64,
    stuff_dots: bool,
    /// POP3: end with (CRLF) `.CRLF`; cleared once written.
    terminate: bool,
    /// Octets still allowed out: POP2 sends exactly the listed size; POP3 is unbounded.
    budget: u64,
    at_line_start: bool,
    /// The last octet sent was a CR, so an LF that follows needs no CR of its own.
    after_cr: bool,
    /// TOP only: body lines still to send after the header section; None sends everything.
    body_lines: Option<u64>,
    /// TOP only: still inside the header section.
    in_header: bool,
    /// The current line has nothing but CRs so far (the blank line ending the header).
    line_blank: bool,
    /// No more file content will be sent (end of file, TOP's lines sent, POP2 size reached).
    content_done: bool,
}

impl MessageStream {
    fn new(index: usize, stuff_dots: bool, budget: u64, body_lines: Option<u64>) -> Self {
        MessageStream {
            index,
            offset: 0,
            stuff_dots,
            terminate: stuff_dots,
            budget,
            at_line_start: true,
            after_cr: false,
            body_lines,
            in_header: body_lines.is_some(),
            line_blank: true,
            content_done: false,
        }
    }

    /// POP3 RETR of snapshot message `index`.
    pub fn retr(index: usize) -> Self {
        Self::new(index, true, u64::MAX, None)
    }

    /// POP3 TOP: the header section, the blank line, then `lines` body lines.
    pub fn top(index: usize, lines: u64) -> Self {
        Self::new(index, true, u64::MAX, Some(lines))
    }

    /// POP2 RETR: exactly `size` octets with CRLF line ends, nothing else.
    pub fn pop2(index: usize, size: u64) -> Self {
        Self::new(index, false, size, None)
    }

    /// Reads the first chunk, and only if that works writes `status` (the `+OK` line, if any)
    /// and goes on filling. An error here has written nothing, so it can be answered `-ERR`.
    /// Needs at least `limits::REPLY_RESERVE` free in `out`.
    pub fn start(
        &mut self,
        host: &mut dyn PopHost,
        out: &mut OutBuf,
        status: &[u8],
    ) -> io::Result<Fill> {
        let mut chunk = [0u8; limits::POP_STREAM_CHUNK];
        let room = out.free().saturating_sub(status.len());
        if let Some(want) = self.read_size(room) {
            let n = match self.read(host, chunk.get_mut(..want).unwrap_or_default()) {
                // Nothing written: `start` is called again once the bytes are in.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Waiting),
                r => r?,
            };
            out.push(status);
            self.convert(chunk.get(..n).unwrap_or_default(), out)?;
        } else {
            out.push(status);
        }
        Ok(self.fill(host, out))
    }

    /// Converts as much of the message into `out` as fits.
    pub fn fill(&mut self, host: &mut dyn PopHost, out: &mut OutBuf) -> Fill {
        let mut chunk = [0u8; limits::POP_STREAM_CHUNK];
        loop {
            if self.budget == 0 {
                self.content_done = true;
            }
            if self.content_done {
                return self.finish(out);
            }
            let Some(want) = self.read_size(out.free()) else {
                return Fill::Full;
            };
            let n = match self.read(host, chunk.get_mut(..want).unwrap_or_default()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fill::Waiting,
                Err(e) => return Fill::Failed(e),
            };
            if let Err(e) = self.convert(chunk.get(..n).unwrap_or_default(), out) {
                return Fill::Failed(e);
            }
        }
    }

    /// How many file octets to read when `free` octets of output are available, or None if
    /// that is too little to be worth a read.
    fn read_size(&self, free: usize) -> Option<usize> {
        let want = (free.saturating_sub(END_ROOM) / 2)
            .min(limits::POP_STREAM_CHUNK)
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        (want >= limits::POP_STREAM_MIN_READ || (want > 0 && want as u64 == self.budget))
            .then_some(want)
    }

    /// One read from the host; end of file marks the content done (too early for POP2 is an
    /// error: the client was promised exactly `size` octets).
    fn read(&mut self, host: &mut dyn PopHost, buf: &mut [u8]) -> io::Result<usize> {
        let n = host
            .message_read(self.index, self.offset, buf)?
            .min(buf.len());
        if n == 0 {
            self.content_done = true;
            if !self.terminate && self.budget > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "message file is shorter than its listed size",
                ));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    /// Converts `src` into the free space of `out`. The caller sized `src` so the result fits.
    fn convert(&mut self, src: &[u8], out: &mut OutBuf) -> io::Result<()> {
        let mut sink = Sink {
            dst: out.spare_mut(),
            len: 0,
            budget: self.budget,
            overflow: false,
        };
        let mut rest = src;
        while !rest.is_empty() && !self.content_done {
            if self.at_line_start {
                self.at_line_start = false;
                self.line_blank = true;
                if self.stuff_dots && rest.first() == Some(&b'.') {
                    sink.put(b".");
                }
            }
            match memchr(b'\n', rest) {
                None => {
                    sink.put(rest);
                    if self.in_header {
                        self.line_blank &= rest.iter().all(|&b| b == b'\r');
                    }
                    self.after_cr = rest.last() == Some(&b'\r');
                    rest = &[];
                }
                Some(lf) => {
                    let line = rest.get(..lf).unwrap_or_default();
                    let cr_sent = line.last().map_or(self.after_cr, |&b| b == b'\r');
                    sink.put(line);
                    if !cr_sent {
                        sink.put(b"\r");
                    }
                    sink.put(b"\n");
                    if self.in_header {
                        self.line_blank &= line.iter().all(|&b| b == b'\r');
                    }
                    self.after_cr = false;
                    self.at_line_start = true;
                    rest = rest.get(lf + 1..).unwrap_or_default();
                    self.end_of_line();
                }
            }
            if sink.budget == 0 {
                self.content_done = true;
            }
        }
        let (written, overflow) = (sink.len, sink.overflow);
        self.budget = sink.budget;
        out.commit(written);
        if overflow {
            return Err(io::Error::other(
                "stream chunk did not fit the output buffer",
            ));
        }
        Ok(())
    }

    /// TOP's accounting at the end of each line.
    fn end_of_line(&mut self) {
        let Some(left) = self.body_lines.as_mut() else {
            return;
        };
        if self.in_header {
            if self.line_blank {
                self.in_header = false;
            } else {
                return;
            }
        } else {
            *left = left.saturating_sub(1);
        }
        if *left == 0 {
            self.content_done = true;
        }
    }

    /// Writes the POP3 terminator (ending an unfinished last line first).
    fn finish(&mut self, out: &mut OutBuf) -> Fill {
        if !self.terminate {
            return Fill::Done;
        }
        let tail: &[u8] = if self.at_line_start {
            b".\r\n"
        } else if self.after_cr {
            b"\n.\r\n"
        } else {
            b"\r\n.\r\n"
        };
        if out.free() < tail.len() {
            return Fill::Full;
        }
        out.push(tail);
        self.terminate = false;
        Fill::Done
    }
}

/// The output buffer's free space, filled front to back, never past `budget` octets.
struct Sink<'a> {
    dst: &'a mut [u8],
    len: usize,
    budget: u64,
    /// Set if a write did not fit `dst`: a sizing bug, reported instead of losing bytes.
    overflow: bool,
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let allowed = usize::try_from(self.budget).unwrap_or(usize::MAX);
        let n = bytes.len().min(allowed);
        match self.dst.get_mut(self.len..self.len + n) {
            Some(slot) => {
                if let Some(src) = bytes.get(..n) {
                    slot.copy_from_slice(src);
                }
                self.len += n;
                self.budget -= n as u64;
            }
            None => self.overflow = true,
        }
    }
}

#[cfg(test)]
#[path = "popmsg_tests.rs"]
mod tests;
