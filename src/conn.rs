//! One client connection: its socket, lent buffers, session, and deadlines.
//!
//! The connection knows how to move bytes between the socket and its fixed buffers and what
//! its deadline is; it never parses protocol. The reactor drives it (see `reactor::drive`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use arrayvec::ArrayVec;

use crate::buf::{InBuf, OutBuf, Pool};
use crate::deadline::Armed;
use crate::limits;
use crate::proto::pop2::Pop2Session;
use crate::proto::pop3::Pop3Session;
use crate::proto::smtp::SmtpSession;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Smtp,
    Pop3,
    Pop2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Smtp => "smtp",
            Proto::Pop3 => "pop3",
            Proto::Pop2 => "pop2",
        }
    }

    /// The one-line refusal sent when a connection limit is reached.
    pub fn busy_reply(self) -> &'static [u8] {
        match self {
            Proto::Smtp => b"421 4.3.2 Too many connections, try again later\r\n",
            Proto::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            Proto::Pop2 => b"- Too many connections, try again later\r\n",
        }
    }

    /// The one-line goodbye to an idle session closed to make room for a newcomer.
    pub fn evicted_reply(self) -> &'static [u8] {
        match self {
            Proto::Smtp => b"421 4.3.2 Server busy, closing idle connection\r\n",
            Proto::Pop3 => b"-ERR [SYS/TEMP] Server busy, closing idle connection\r\n",
            Proto::Pop2 => b"- Server busy, closing idle connection\r\n",
        }
    }

    /// A dense index, for per-protocol counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub const COUNT: usize = 3;
}

pub enum Session {
    Smtp(SmtpSession),
    Pop3(Pop3Session),
    Pop2(Pop2Session),
}

impl Session {
    /// Closing the session now loses the client nothing but a reconnect: SMTP outside a mail
    /// transaction, POP before login (see each session's `holds_nothing`).
    pub fn holds_nothing(&self) -> bool {
        match self {
            Session::Smtp(s) => s.holds_nothing(),
            Session::Pop3(s) => s.holds_nothing(),
            Session::Pop2(s) => s.holds_nothing(),
        }
    }

    /// POP: the client has logged in, so the login deadline no longer applies. SMTP has no
    /// login deadline: always true.
    pub fn logged_in(&self) -> bool {
        match self {
            Session::Smtp(_) => true,
            Session::Pop3(s) => s.logged_in(),
            Session::Pop2(s) => s.logged_in(),
        }
    }
}

/// Where the connection is in its life, as far as the reactor is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The session takes input.
    Active,
    /// Waiting for the spool's group commit.
    AwaitCommit,
    /// Waiting for a password check in the disk executor (`Next::AwaitAuth`).
    AwaitAuth,
    /// Waiting until `wake_at` (a delayed authentication failure).
    Sleeping,
    /// Flushing its last output; closes when the output is empty or the linger deadline passes.
    Closing,
}

/// How long a closing connection may take to drain its last reply.
pub const LINGER: Duration = Duration::from_secs(5);

pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub proto: Proto,
    pub session: Session,
    /// Lent from the pool only while it holds bytes.
    pub input: Option<Box<InBuf>>,
    /// A few unconsumed input bytes kept inline (a partial command line) so the input buffer
    /// can go back to the pool: a client sending a byte now and then holds no 8 KiB buffer.
    pub stash: ArrayVec<u8, { limits::INPUT_STASH }>,
    pub output: Option<Box<OutBuf>>,
    pub phase: Phase,
    /// The last read did not hit WouldBlock, so the socket may have more (edge-triggered).
    pub can_read: bool,
    /// The poller reported the peer's FIN (or an error): read until it is seen, even after a
    /// short read.
    pub read_closed: bool,
    /// The last write did not hit WouldBlock.
    pub can_write: bool,
    /// The peer closed its sending side.
    pub eof: bool,
    /// Unique over the process lifetime, so a stale deadline never hits a reused slot.
    pub id: u64,
    pub opened: Instant,
    pub idle_timeout: Duration,
    pub idle_deadline: Instant,
    pub cap_deadline: Instant,
    pub wake_at: Option<Instant>,
    pub linger_deadline: Option<Instant>,
    pub armed: Armed,
    /// Why it is closing, for the log line.
    pub close_reason: &'static str,
}

impl Conn {
    pub fn deadline(&self) -> Instant {
        // A closing connection has said its last word: only the linger limit is left. (Its
        // idle deadline has often passed already; arming it again would fire at once, forever.)
        if self.phase == Phase::Closing {
            if let Some(l) = self.linger_deadline {
                return l;
            }
        }
        let mut d = self.idle_deadline.min(self.cap_deadline);
        if let Some(w) = self.wake_at {
            d = d.min(w);
        }
        if let Some(l) = self.linger_deadline {
            d = d.min(l);
        }
        d
    }

    /// When the connection last made progress (its idle deadline minus its idle timeout).
    pub fn idle_since(&self) -> Instant {
        self.idle_deadline
            .checked_sub(self.idle_timeout)
            .unwrap_or(self.opened)
    }

    /// May be closed to make room for a newcomer at `max_connections`: its session holds
    /// nothing of value, it waits for the client (not for the spool, a login delay or the
    /// drain of its output) and it has not started closing.
    pub fn evictable(&self) -> bool {
        self.phase == Phase::Active && !self.pending_output() && self.session.holds_nothing()
    }

    /// Protocol progress: a complete unit consumed or output fully drained.
    pub fn progress(&mut self, now: Instant) {
        self.idle_deadline = now + self.idle_timeout;
    }

    pub fn pending_output(&self) -> bool {
        self.output.as_ref().is_some_and(|b| !b.is_empty())
    }

    pub fn buffered_input(&self) -> usize {
        self.input.as_ref().map_or(self.stash.len(), |b| b.len())
    }

    /// The session consumed `n` bytes of the unconsumed input (buffer or stash).
    pub fn consume_input(&mut self, n: usize) {
        match self.input.as_mut() {
            Some(b) => b.consume(n),
            None => {
                self.stash.drain(..n.min(self.stash.len()));
            }
        }
    }

    /// Reads once into the input buffer. Returns bytes read; sets `eof` / clears `can_read`.
    pub fn read_some(&mut self, pool: &mut Pool) -> io::Result<usize> {
        let stash = &mut self.stash;
        let buf = self.input.get_or_insert_with(|| {
            let mut b = pool.take_in();
            b.push(stash);
            stash.clear();
            b
        });
        let spare = buf.spare_mut();
        if spare.is_empty() {
            return Ok(0);
        }
        loop {
            match self.stream.read(spare) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    // A short read drained the socket: with edge-triggered readiness, bytes
                    // arriving later raise a new event, so asking again now would only return
                    // WouldBlock (one syscall saved per read).
                    if n < spare.len() && !self.read_closed {
                        self.can_read = false;
                    }
                    buf.commit(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_read = false;
                    return Ok(0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much pending output as the socket takes. Returns true when it is all gone.
    pub fn flush(&mut self) -> io::Result<bool> {
        let Some(buf) = self.output.as_mut() else {
            return Ok(true);
        };
        while !buf.is_empty() {
            match self.stream.write(buf.bytes()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_write = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Gives empty buffers back to the pool: an idle connection holds none.
    pub fn return_buffers(&mut self, pool: &mut Pool) {
        if self
            .input
            .as_ref()
            .is_some_and(|b| b.len() <= self.stash.capacity() - self.stash.len())
        {
            if let Some(b) = self.input.take() {
                self.stash.extend(b.bytes().iter().copied());
                pool.give_in(b);
            }
        }
        if self.output.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = self.output.take() {
                pool.give_out(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection holds no buffers, so its cost is this struct plus a slab slot: the
    /// budget is 1 KiB per idle connection in all (10,000 of them in well under 16 MiB).
    #[test]
    fn an_idle_connection_fits_its_memory_budget() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 512, "Conn is {size} bytes");
    }
}
