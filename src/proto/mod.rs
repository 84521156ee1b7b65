//! Protocol sessions: sans-I/O state machines for SMTP, POP3 and POP2, and the outbound SMTP
//! client (`smtp_client`, with its own step contract, documented there).
//!
//! A session never touches sockets, files or clocks. The reactor calls `step` with the bytes
//! it has buffered, the current time and the connection's output buffer; the session consumes
//! whole units (a command line, a run of message lines), writes replies into the output buffer
//! and says what it needs next (`Next`). Synchronous services (directory lookups, spool
//! appends, reading a mailbox) go through a host trait the reactor implements per call and
//! tests fake; anything that must wait (a group commit, a password check, opening or updating
//! a mailbox, an authentication delay) is a `Next` that the reactor later answers with
//! `resume`.
//!
//! Contract with the reactor:
//! - `step` is only called when the output buffer has at least `limits::REPLY_RESERVE` free.
//! - `step` returns `NeedInput` only while fewer than `limits::MAX_UNIT` bytes are offered;
//!   with more, it consumes (an over-long line is discarded in sync), so a full input buffer
//!   can never stall.
//! - A session consumes a unit only when it is complete, so `consumed > 0` is protocol
//!   progress: the reactor resets the idle deadline on it (a byte trickle does not).

pub mod dotdata;
pub mod maildrop;
pub mod pop2;
pub mod pop3;
#[cfg(test)]
pub mod pop_testing;
pub mod popline;
pub mod popmsg;
pub mod sasl;
pub mod smtp;
pub mod smtp_addr;
pub mod smtp_client;

use std::io;
use std::time::{Duration, Instant, SystemTime};

pub use crate::buf::OutBuf;
use crate::mail::{MailboxDone, QueueId, SpoolError};

/// The time, passed in so sessions stay deterministic under test.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Monotonic time, for anything measured in durations.
    pub now: Instant,
    /// Wall-clock time, for dates written into headers.
    pub wall: SystemTime,
}

/// What a session needs after a `step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Call `step` again (input or a streamed response may continue).
    Continue,
    /// No complete unit in the input: read more from the socket.
    NeedInput,
    /// Output is too full for the next reply or chunk: drain it, then call `step` again.
    NeedOutput,
    /// A commit was handed to the spool; `resume(Completion::Committed(..))` follows.
    AwaitCommit,
    /// A password check is waiting: the reactor takes it with the session's `take_auth`,
    /// has it verified off the reactor (the disk executor's helper process) and answers with
    /// `resume(Completion::Auth(verdict))`. Nothing is read meanwhile.
    AwaitAuth,
    /// Mailbox work is waiting (opening it after a login, or QUIT's deletions): the reactor
    /// takes it with the session's `take_mailbox`, runs it in the disk executor in bounded
    /// batches (`mailbox::job`) and answers with `resume(Completion::Mailbox(done))`. Nothing
    /// is read meanwhile.
    AwaitMailbox,
    /// Answer nothing and read nothing for this long, then `resume(Completion::Woke)`.
    /// (The delay after a failed login.)
    Sleep(Duration),
    /// Flush what is in the output buffer, then close the connection.
    Close,
    /// STARTTLS/STLS was accepted (its reply is in the output buffer): send the output as it
    /// is, discard every input byte after the command (RFC 3207 §4.2, CVE-2011-0411), and
    /// start the TLS handshake; the session goes on once it is done (`tls_established`).
    StartTls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed by this call.
    pub consumed: usize,
    pub next: Next,
}

impl Step {
    pub fn new(consumed: usize, next: Next) -> Step {
        Step { consumed, next }
    }
}

/// Answers to a `Next::AwaitCommit`, `Next::AwaitAuth`, `Next::AwaitMailbox` or `Next::Sleep`.
#[derive(Debug)]
pub enum Completion {
    Committed(Result<QueueId, SpoolError>),
    Woke,
    /// The password check a `Next::AwaitAuth` asked for (throttle included).
    Auth(AuthVerdict),
    /// The mailbox work a `Next::AwaitMailbox` asked for.
    Mailbox(MailboxDone),
}

/// Mailbox work a POP session waits for (`Next::AwaitMailbox`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxRequest {
    /// Lock the user's mailbox and take its snapshot (of `new/` and `cur/`, where they lie).
    Open(String),
    /// UPDATE state: remove these messages (0-based snapshot indices) and release the lock.
    Update(Vec<usize>),
    /// A message being sent is not in memory (`message_read` said `WouldBlock`): read in the
    /// part the host noted, then resume the transfer.
    Warm,
    /// POP2's READ: count snapshot message `index` (0-based) as it is sent (CRLF line
    /// endings, before dot-stuffing) from the file itself, never from a `W=` in its name:
    /// the `=size` reply promises exactly that many octets. Reading a whole message, so not
    /// on the reactor.
    Size(usize),
}

/// A password check a POP session waits for (`Next::AwaitAuth`). The password is wiped when
/// the request is dropped.
pub struct AuthRequest {
    /// As the client sent it (a name that is not UTF-8 cannot exist, but is still checked,
    /// lossily, so it costs the same and counts as a failure).
    pub user: String,
    pub password: Vec<u8>,
    /// How the password came, for the log: `USER` (POP3 USER/PASS, the default), `PLAIN`
    /// (SASL), `HELO` (POP2).
    pub mechanism: &'static str,
}

impl AuthRequest {
    pub fn new(user: &[u8], password: &[u8]) -> AuthRequest {
        AuthRequest {
            user: String::from_utf8_lossy(user).into_owned(),
            password: password.to_vec(),
            mechanism: "USER",
        }
    }

    /// The same, naming the mechanism for the log.
    pub fn with_mechanism(mut self, mechanism: &'static str) -> AuthRequest {
        self.mechanism = mechanism;
        self
    }
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthRequest({:?}, <password>)", self.user)
    }
}

impl Drop for AuthRequest {
    fn drop(&mut self) {
        self.password.fill(0);
    }
}

/// Services a POP3 or POP2 session needs from the reactor for one call. (Passwords are not
/// checked here: that is a `Next::AwaitAuth` request, since it takes CPU time. Unknown users
/// and wrong passwords must be indistinguishable: same verdict, same work; per-address
/// throttling is the reactor's business. Opening a mailbox, QUIT's deletions and POP2's exact
/// sizing are not here either: they grow with the mailbox or the message, so they are a
/// `Next::AwaitMailbox` request.)
pub trait PopHost {
    /// Read raw bytes of snapshot message `index` (0-based) from byte `offset` of its file.
    /// Returns 0 at end of file.
    fn message_read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Release the lock without deleting anything (QUIT in AUTHORIZATION, drop, timeout).
    fn mailbox_release(&mut self);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Credentials are good; carries the canonical user name (the mailbox to open).
    Accepted(String),
    /// Unknown user or wrong password (deliberately the same).
    Rejected,
    /// Too many recent failures from this client address.
    Throttled,
    /// Too many recent login attempts, whatever their outcome, from this client address
    /// (refused without a check, like `Throttled`).
    TooManyAttempts,
    /// The password could not be checked now (the helper process is gone or overloaded):
    /// a temporary failure, not counted against the client.
    Unavailable,
}
