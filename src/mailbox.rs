//! Reading a user's Maildir for POP: lock, snapshot, streaming reads, and the UPDATE state.
//!
//! INTERFACE STUB: the real implementation lands from the `directory` branch.

use std::io;
use std::path::{Path, PathBuf};

use crate::proto::{MailboxError, MessageInfo};

/// One locked mailbox with its login snapshot.
pub struct Mailbox {}

impl Mailbox {
    /// Locks `<root>/<user>` (creating the Maildir if missing) and takes the snapshot.
    pub fn open(_root: &Path, _user: &str) -> Result<(Mailbox, Vec<MessageInfo>), MailboxError> {
        Err(MailboxError::Temporary("not implemented".into()))
    }

    pub fn read(&mut self, _index: usize, _offset: u64, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }

    /// Removes the messages at these snapshot indices; the lock goes with `self`.
    pub fn update(self, _deleted: &[usize]) -> Result<(), MailboxError> {
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::new()
    }
}
