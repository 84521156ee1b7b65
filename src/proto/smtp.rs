//! The SMTP server session (RFC 5321): a sans-I/O state machine.

use std::rc::Rc;

use super::{Completion, Ctx, Next, OutBuf, Step};
use crate::directory::RcptVerdict;
use crate::spool::{Envelope, QueueId, SpoolError};

/// Settings shared by all SMTP sessions (swapped as a whole on reload).
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// The name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// `max_message_size`, advertised with SIZE (RFC 1870).
    pub max_message_size: u64,
}

/// Services the SMTP session needs from the reactor.
pub trait SmtpHost {
    /// Is this recipient (a forward-path without brackets) acceptable? No alias expansion.
    fn rcpt_verdict(&mut self, rcpt: &str) -> RcptVerdict;
    /// Start a spool entry for this envelope; returns its queue id.
    fn message_begin(&mut self, envelope: &Envelope) -> Result<QueueId, SpoolError>;
    /// Append decoded message bytes (CRLF line endings, dots unstuffed). A write failure is
    /// latched by the host and reported by `message_commit`.
    fn message_append(&mut self, bytes: &[u8]);
    /// The end of data was seen: start the durable commit. `Ok` means the session returns
    /// `Next::AwaitCommit` and later gets `Completion::Committed`; `Err` is an immediate failure
    /// (the entry is already discarded).
    fn message_commit(&mut self) -> Result<(), SpoolError>;
    /// Discard the message being received (over the size limit, RSET, connection lost).
    fn message_abort(&mut self);
}

/// One SMTP server session.
pub struct SmtpSession {
    settings: Rc<SmtpSettings>,
    peer: std::net::SocketAddr,
}

impl SmtpSession {
    pub fn new(settings: Rc<SmtpSettings>, peer: std::net::SocketAddr) -> SmtpSession {
        SmtpSession { settings, peer }
    }

    /// Writes the `220` greeting.
    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf) {
        out.push(format!("220 {} ESMTP postling\r\n", self.settings.hostname).as_bytes());
    }

    pub fn step(
        &mut self,
        _input: &[u8],
        _ctx: Ctx,
        _out: &mut OutBuf,
        _host: &mut dyn SmtpHost,
    ) -> Step {
        let _ = self.peer;
        Step::new(0, Next::NeedInput)
    }

    pub fn resume(
        &mut self,
        _c: Completion,
        _ctx: Ctx,
        _out: &mut OutBuf,
        _host: &mut dyn SmtpHost,
    ) {
    }

    /// The idle deadline or session cap passed: write `421 4.4.2`.
    pub fn on_timeout(&mut self, out: &mut OutBuf) {
        out.push(
            format!(
                "421 4.4.2 {} Error: timeout exceeded\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
    }

    /// The server is stopping: write `421 4.3.2`.
    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        out.push(
            format!(
                "421 4.3.2 {} Service shutting down\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
    }
}
