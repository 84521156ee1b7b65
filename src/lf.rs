//! The Maildir form of a message's line ends, in one place: the Maildir copy (`deliver::maildir`)
//! and the spool's Maildir-form entries (`spool`, "link-1") must hold the very same bytes, so
//! that one file can be both (a hard link) and a copy made by either path is named the same.
//!
//! Forward (`LfWriter`): CRLF becomes LF; a bare CR or LF stays as it is. Backward
//! (`CrlfReader`): every LF becomes CRLF. Backward after forward gives the data the forward
//! step would turn into the same bytes again (a CR CR LF of the data is CR LF on disk and CR CR
//! LF again when read back), which is what a copy, a relay or a bounce needs.

use std::io::{self, Read};

/// The two trace lines every Maildir copy starts with (RFC 5321 §4.4 `Return-Path:`, and
/// `Delivered-To:` naming the envelope recipient).
pub fn maildir_head(return_path: &str, delivered_to: &str) -> String {
    format!("Return-Path: <{return_path}>\nDelivered-To: {delivered_to}\n")
}

/// Streams data with CRLF line ends into its LF form, counting what the POP3 size (`W=`)
/// needs: every LF on disk not preceded by CR is sent as CRLF (POP3 leaves an existing CRLF
/// alone).
#[derive(Clone, Copy, Debug)]
pub struct LfWriter {
    /// A CR ended the last chunk: it pairs with an LF starting the next one, or stays.
    pending_cr: bool,
    /// The last byte written (LF before anything: a first LF counts as a line end).
    last: u8,
    /// Bytes written.
    pub size: u64,
    /// LFs written that POP3 expands to CRLF.
    pub lfs: u64,
}

impl Default for LfWriter {
    fn default() -> LfWriter {
        LfWriter {
            pending_cr: false,
            last: b'\n',
            size: 0,
            lfs: 0,
        }
    }
}

impl LfWriter {
    fn emit(
        &mut self,
        bytes: &[u8],
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if bytes == b"\n" && self.last != b'\r' {
            self.lfs += 1;
        }
        self.size += bytes.len() as u64;
        self.last = bytes[bytes.len() - 1];
        out(bytes)
    }

    /// Converts `chunk`, handing the output to `out` in pieces.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut chunk = chunk;
        if chunk.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                self.emit(b"\n", out)?;
                chunk = &chunk[1..];
            } else {
                self.emit(b"\r", out)?;
            }
        }
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', chunk) {
            let end = if i > start && chunk[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            self.emit(&chunk[start..end], out)?;
            self.emit(b"\n", out)?;
            start = i + 1;
        }
        let mut tail = &chunk[start..];
        if tail.last() == Some(&b'\r') {
            self.pending_cr = true;
            tail = &tail[..tail.len() - 1];
        }
        self.emit(tail, out)
    }

    /// The end of the data: a CR it ended with is written as it is.
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if std::mem::take(&mut self.pending_cr) {
            self.emit(b"\r", out)?;
        }
        Ok(())
    }
}

/// The POP3 size (`W=`) of bytes already in the LF form: their length plus one for every LF
/// not preceded by CR. `prev` is the byte before `bytes` (LF at the start of a file).
pub fn wire_extra(bytes: &[u8], prev: u8) -> u64 {
    let mut n = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        let before = if i == 0 { prev } else { bytes[i - 1] };
        if before != b'\r' {
            n += 1;
        }
    }
    n
}

/// Reads `r` to its end in chunks of up to `buf`'s size, handing each to `each` (an
/// interrupted read is retried); returns the bytes read.
pub fn read_chunks(
    r: &mut dyn io::Read,
    buf: &mut [u8],
    each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        each(buf.get(..n).unwrap_or_default())?;
        total += n as u64;
    }
}

/// Reads data in the LF form back with CRLF line ends (every LF becomes CRLF).
pub struct CrlfReader<R> {
    inner: R,
    /// Bytes read from `inner` not yet returned; an LF at `start` may be half returned.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The CR of the LF at `start` was returned, the LF not yet.
    cr_sent: bool,
}

impl<R: Read> CrlfReader<R> {
    pub fn new(inner: R) -> CrlfReader<R> {
        CrlfReader {
            inner,
            buf: vec![0; 8192].into_boxed_slice(),
            start: 0,
            end: 0,
            cr_sent: false,
        }
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = self.inner.read(&mut self.buf)?;
            if self.end == 0 {
                return Ok(0);
            }
        }
        let mut n = 0;
        while n < out.len() && self.start < self.end {
            let b = self.buf[self.start];
            if b == b'\n' && !self.cr_sent {
                out[n] = b'\r';
                self.cr_sent = true;
            } else {
                out[n] = b;
                self.cr_sent = false;
                self.start += 1;
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(data: &[u8], split: &[usize]) -> (Vec<u8>, LfWriter) {
        let mut w = LfWriter::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &s in split.iter().chain(std::iter::once(&data.len())) {
            let s = s.clamp(at, data.len());
            w.feed(&data[at..s], &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            at = s;
        }
        w.finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        (out, w)
    }

    #[test]
    fn crlf_becomes_lf_at_every_split_and_reads_back() {
        let samples: [&[u8]; 6] = [
            b"Subject: x\r\n\r\nbody\r\n",
            b"a\r\r\nb\rc\nd\r",
            b"\r\n\r\n",
            b"\n\r\r\r\n\r",
            b"",
            b"no line end",
        ];
        for data in samples {
            let (whole, w0) = forward(data, &[]);
            assert_eq!(w0.size, whole.len() as u64);
            assert_eq!(w0.lfs, wire_extra(&whole, b'\n'), "{data:?}");
            for i in 0..=data.len() {
                for j in i..=data.len() {
                    let (out, w) = forward(data, &[i, j]);
                    assert_eq!(out, whole, "{data:?} split at {i},{j}");
                    assert_eq!((w.size, w.lfs), (w0.size, w0.lfs), "{data:?} at {i},{j}");
                }
            }
            // Read back and written again: the same bytes.
            let mut back = Vec::new();
            CrlfReader::new(&whole[..]).read_to_end(&mut back).unwrap();
            assert_eq!(forward(&back, &[]).0, whole, "{data:?}");
        }
        assert_eq!(forward(b"a\r\nb\r\n", &[]).0, b"a\nb\n");
        let mut back = Vec::new();
        CrlfReader::new(&b"a\nb\r\n"[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, b"a\r\nb\r\r\n");
    }

    #[test]
    fn the_reader_returns_crlf_whole_through_tiny_reads() {
        let mut r = CrlfReader::new(&b"x\n\ny"[..]);
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        while r.read(&mut one).unwrap() == 1 {
            got.push(one[0]);
        }
        assert_eq!(got, b"x\r\n\r\ny");
    }

    /// A reader that is interrupted once, then hands out 3 bytes a call.
    struct Jumpy<'a>(&'a [u8], bool);
    impl io::Read for Jumpy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !std::mem::replace(&mut self.1, true) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(3).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn every_byte_once_in_order_and_errors_stop_it() {
        let mut got = Vec::new();
        let mut buf = [0u8; 8];
        let n = read_chunks(&mut Jumpy(b"hello world", false), &mut buf, &mut |c| {
            got.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!((n, got.as_slice()), (11, &b"hello world"[..]));
        let err = read_chunks(&mut Jumpy(b"abc", true), &mut buf, &mut |_| {
            Err(io::Error::other("full"))
        });
        assert_eq!(err.unwrap_err().to_string(), "full");
    }
}
