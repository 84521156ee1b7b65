//! The reactor's side of the session host traits: it lends each session the spool, the
//! directory and the mailbox store for one call, keyed by the connection's slot.

use std::net::SocketAddr;

use crate::directory::RcptVerdict;
use crate::proto::smtp::SmtpHost;
use crate::proto::{AuthVerdict, MailboxError, MessageInfo, PopHost};
use crate::spool::{Envelope, QueueId, SpoolError};

/// Everything sessions reach through their host traits.
#[derive(Default)]
pub struct Services {}

impl Services {
    pub fn smtp_host(&mut self, _slot: usize, _peer: SocketAddr) -> SmtpHostFor<'_> {
        SmtpHostFor { _services: self }
    }

    pub fn pop_host(&mut self, _slot: usize, _peer: SocketAddr) -> PopHostFor<'_> {
        PopHostFor { _services: self }
    }

    /// SIGHUP: re-read users and aliases, pick up changed paths and settings.
    pub fn reload(&mut self, _config: &crate::config::Config) {}

    /// The connection in `slot` is going away: drop its unfinished message, release its mailbox.
    pub fn session_ended(&mut self, _slot: usize, _session: &mut crate::conn::Session) {}

    /// Makes this turn's finished messages durable; returns each waiting slot's outcome.
    pub fn commit_flush(&mut self) -> Vec<(usize, Result<QueueId, SpoolError>)> {
        Vec::new()
    }
}

pub struct SmtpHostFor<'a> {
    _services: &'a mut Services,
}

impl SmtpHost for SmtpHostFor<'_> {
    fn rcpt_verdict(&mut self, _rcpt: &str) -> RcptVerdict {
        RcptVerdict::TempFail
    }
    fn message_begin(&mut self, _envelope: &Envelope) -> Result<QueueId, SpoolError> {
        Err(SpoolError::Failed("spool not available".into()))
    }
    fn message_append(&mut self, _bytes: &[u8]) {}
    fn message_commit(&mut self) -> Result<(), SpoolError> {
        Err(SpoolError::Failed("spool not available".into()))
    }
    fn message_abort(&mut self) {}
}

pub struct PopHostFor<'a> {
    _services: &'a mut Services,
}

impl PopHost for PopHostFor<'_> {
    fn authenticate(&mut self, _user: &str, _password: &[u8]) -> AuthVerdict {
        AuthVerdict::Rejected
    }
    fn mailbox_open(&mut self, _user: &str) -> Result<Vec<MessageInfo>, MailboxError> {
        Err(MailboxError::Temporary("mailboxes not available".into()))
    }
    fn message_read(
        &mut self,
        _index: usize,
        _offset: u64,
        _buf: &mut [u8],
    ) -> std::io::Result<usize> {
        Ok(0)
    }
    fn mailbox_update(&mut self, _deleted: &[usize]) -> Result<(), MailboxError> {
        Ok(())
    }
    fn mailbox_release(&mut self) {}
}
