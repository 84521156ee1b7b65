//! The types that the sessions, the spool, the directory, delivery and the mailboxes
//! share: a message's envelope and queue id, why the spool could not take a message, the
//! verdict on a recipient, a mailbox snapshot's messages and how mailbox work ended. This
//! module depends on none of those modules, so each of them (and every test that fakes one)
//! can name these types without depending on the others.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::SystemTime;

/// A queue id: short, unique across restarts, safe as a file name (the spool makes them and
/// checks their form: `QueueId::is_valid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub String);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the spool could not take a message. Both are temporary for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpoolError {
    /// Out of disk space or quota: SMTP `452 4.3.1`.
    Full,
    /// Any other failure (permissions, I/O error): SMTP `451 4.3.0`. Carries the cause for the log.
    Failed(String),
}

impl SpoolError {
    pub fn from_io(e: &io::Error) -> SpoolError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::Full,
            _ => SpoolError::Failed(e.to_string()),
        }
    }
}

/// The body type declared with `MAIL FROM ... BODY=` (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// Everything known about a message besides its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// Forward-paths as accepted by RCPT, without angle brackets or source routes.
    pub recipients: Vec<String>,
    pub client_ip: IpAddr,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// When the message was accepted (set by the session at DATA).
    pub arrival: SystemTime,
    pub smtputf8: bool,
    pub body: BodyType,
    /// The `maildrop/` file this entry was made from (local submission by `sendmail`), so
    /// the start-up scan can tell a drop file already queued from one still to pick up.
    pub pickup: Option<String>,
}

/// How the SMTP server answers a RCPT for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A local user, alias name, subaddress of one, or caught by the catch-all: `250`.
    Accept,
    /// A local domain but no such user or alias: `550 5.1.1`.
    UnknownUser,
    /// Not a local domain and relaying is not allowed: `550 5.7.1`.
    RelayDenied,
    /// The tables could not be read just now: `451 4.3.0`.
    TempFail,
}

/// One message of a mailbox snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// The Maildir unique name (before `:2,`): the UIDL.
    pub uid: Box<str>,
    /// Size in octets as sent: with CRLF line endings, before dot-stuffing. Taken from a
    /// Maildir `W=` when the name has one, so only good for listings (POP2 has a message
    /// counted: `proto::MailboxRequest::Size`).
    pub size: u64,
}

/// Why mailbox work failed, as the POP reply's response code (RFC 2449) tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxError {
    /// Another session holds this mailbox (`[IN-USE]`).
    InUse,
    /// A transient problem (`[SYS/TEMP]`): unreadable directory, I/O error.
    Temporary(String),
    /// A permanent problem (`[SYS/PERM]`).
    Permanent(String),
}

/// How mailbox work a POP session asked for (`proto::MailboxRequest`) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxDone {
    /// The snapshot (the host now holds the locked mailbox for `message_read`), or why not.
    Opened(Result<Vec<MessageInfo>, MailboxError>),
    /// Every marked message is gone (the lock is released either way), or what went wrong.
    Updated(Result<(), MailboxError>),
    /// The part of a message a read would have waited for is in memory now (or the read in
    /// failed: the next read says how); the transfer goes on.
    Warmed,
    /// The octets a POP2 RETR of the message will send (`MailboxRequest::Size`), or why it
    /// could not be counted.
    Sized(Result<u64, MailboxError>),
}
