//! The spool: the only code that writes under `spool_dir`. It owns the on-disk formats, the
//! queue ids, and the commit protocol: a message is `Committed` only after its files are
//! fsync'ed, renamed into the queue and the queue directory is fsync'ed.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

/// A queue id: short, unique across restarts, safe as a file name.
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
    pub fn from_io(e: &std::io::Error) -> SpoolError {
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
}
