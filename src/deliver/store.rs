//! The spool as the delivery engine's `QueueStore`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::engine::{Entry, QueueStore};
use crate::spool::{Deferral, Envelope, QueueId, Spool, SpoolError};

pub struct SpoolStore<'a> {
    pub spool: &'a mut Spool,
    /// Where the data of the last loaded entry starts, so each local target does not re-read
    /// the envelope header.
    last: Option<(QueueId, PathBuf, u64, u64)>,
}

impl<'a> SpoolStore<'a> {
    pub fn new(spool: &'a mut Spool) -> SpoolStore<'a> {
        SpoolStore { spool, last: None }
    }
}

impl QueueStore for SpoolStore<'_> {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry> {
        let e = self.spool.read_entry(id)?;
        self.last = Some((
            id.clone(),
            e.data_path().to_path_buf(),
            e.data_offset(),
            e.data_len(),
        ));
        Ok(Entry {
            pending: e.pending().map(|(i, _)| i).collect(),
            attempts: e.attempts,
            delay_warned: e.delay_warned.is_some(),
            envelope: e.envelope,
        })
    }

    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>> {
        let (path, offset, len) = match &self.last {
            Some((last, path, offset, len)) if last == id => (path.clone(), *offset, *len),
            _ => {
                let e = self.spool.read_entry(id)?;
                (e.data_path().to_path_buf(), e.data_offset(), e.data_len())
            }
        };
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f.take(len)))
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

    fn remove(&mut self, id: &QueueId) -> io::Result<()> {
        self.spool.remove(id)
    }

    fn enqueue(&mut self, envelope: &Envelope, data: &[u8]) -> Result<QueueId, SpoolError> {
        let mut inc = self.spool.begin(envelope)?;
        self.spool.append(&mut inc, data);
        self.spool.commit_one(inc)
    }
}
