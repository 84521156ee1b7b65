//! The spool as the delivery engine's `QueueStore`.

use std::io::{self, Read};

use super::engine::{Enqueued, Entry, Linkable, QueueStore};
use crate::mail::{Envelope, QueueId, SpoolError};
use crate::maildir::CopySource;
use crate::spool::{Deferral, QueueEntry, Spool};

pub struct SpoolStore<'a> {
    pub spool: &'a mut Spool,
    /// The last loaded entry, so each local target does not re-read the envelope header.
    last: Option<QueueEntry>,
    /// Removals are done before `remove` returns (`Spool::remove_now`).
    immediate: bool,
    /// Notices (bounces, delay warnings) go to the group commit (`Enqueued::Committing`);
    /// else each is committed on its own before `enqueue` returns.
    notices_in_group: bool,
}

impl<'a> SpoolStore<'a> {
    pub fn new(spool: &'a mut Spool) -> SpoolStore<'a> {
        SpoolStore {
            spool,
            last: None,
            immediate: false,
            notices_in_group: false,
        }
    }

    /// For delivery while the server runs: a notice is committed in the group commit, whose
    /// outcome the caller hands to `Engine::notice_committed` (its ticket `owns_ticket`).
    pub fn with_group_commit(spool: &'a mut Spool) -> SpoolStore<'a> {
        SpoolStore {
            notices_in_group: true,
            ..SpoolStore::new(spool)
        }
    }

    /// For the administrator's commands: an entry removed is gone from the disk when
    /// `remove` returns.
    pub fn immediate(spool: &'a mut Spool) -> SpoolStore<'a> {
        SpoolStore {
            immediate: true,
            ..SpoolStore::new(spool)
        }
    }
}

impl QueueStore for SpoolStore<'_> {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry> {
        let e = self.spool.read_entry(id)?;
        let linkable = match e.maildir_sizes() {
            Ok(Some((size, wire))) => Some(Linkable {
                path: e.data_path().to_path_buf(),
                size,
                wire,
            }),
            Ok(None) => None,
            // Delivery copies it instead (and reports what is wrong with the file).
            Err(err) => {
                log::warn!("{id}: cannot size the queued file for a link: {err}");
                None
            }
        };
        let entry = Entry {
            pending: e.pending().map(|(i, _)| i).collect(),
            attempts: e.attempts,
            delay_warned: e.delay_warned.is_some(),
            envelope: e.envelope.clone(),
            linkable,
        };
        self.last = Some(e);
        Ok(entry)
    }

    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>> {
        match &self.last {
            Some(e) if e.id == *id => e.read_data(),
            _ => self.spool.read_entry(id)?.read_data(),
        }
    }

    fn copy_source(&mut self, id: &QueueId) -> io::Result<CopySource> {
        match &self.last {
            Some(e) if e.id == *id => e.copy_source(),
            _ => self.spool.read_entry(id)?.copy_source(),
        }
    }

    fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        deferral: &Deferral<'_>,
    ) -> io::Result<()> {
        self.spool
            .record_attempt(id, delivered, failed, Some(*deferral))
    }

    fn log_when_recorded(&mut self, id: &QueueId, line: String) {
        self.spool.log_when_recorded(id, line);
    }

    fn remove(&mut self, id: &QueueId) -> io::Result<()> {
        if self.immediate {
            self.spool.remove_now(id)
        } else {
            self.spool.remove(id)
        }
    }

    fn enqueue(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
        ticket: usize,
    ) -> Result<Enqueued, SpoolError> {
        let mut inc = self.spool.begin(envelope)?;
        self.spool.append(&mut inc, data);
        if self.notices_in_group {
            let id = inc.id().clone();
            self.spool.commit_enqueue(inc, ticket)?;
            return Ok(Enqueued::Committing(id));
        }
        self.spool.commit_one(inc).map(Enqueued::Durable)
    }
}
