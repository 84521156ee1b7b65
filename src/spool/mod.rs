//! The spool: the only code that writes under `spool_dir`. It owns the on-disk formats, the
//! queue ids, and the commit protocol: a message is `Committed` only after its files are
//! fsync'ed, renamed into the queue and the queue directory is fsync'ed.
//!
//! Like qmail's queue (notqmail INTERNALS.md §2), every state of a message is named by which
//! files exist, and every transition is one rename or unlink:
//!
//! - `tmp/<id>`: a message being received (envelope header, then data). Garbage after a crash.
//! - `tmp/<id>.state`: a state file being written. Garbage after a crash.
//! - `queue/<id>`: a committed message. Its rename from `tmp/` is the commit point; its
//!   unlink is the removal point. Either an envelope header then the data (CRLF), or, for
//!   one recipient that resolves to one local Maildir, the Maildir form ("link-1"): the very
//!   bytes of that Maildir's copy (`Return-Path:`, `Delivered-To:`, the data with LF), which
//!   delivery links into the Maildir; such a file, once linked, is never emptied or reused.
//! - `queue/<id>.state`: delivery bookkeeping (per-recipient outcomes, attempts, next attempt),
//!   replaced atomically by rename, in the disk executor when there is one (`state`, which
//!   also removes such entries). Without `queue/<id>` it is the remnant of a removal.
//! - `queue/<id>.hold`: an empty marker: the entry is held (`postling queue hold`) and is not
//!   attempted until the marker is unlinked. Created and unlinked as one step each; without
//!   `queue/<id>` it is the remnant of a removal.
//! - `free/f<n>`: the emptied file of a removed message, kept so a new message reuses its
//!   inode. Holds no bytes and no blocks: cut to 0 when it arrives and, should a crash come
//!   in between, at start-up. Given back (unlinked) when the disk is full.
//!
//! `Spool::open` scans both directories once at start-up; after that no directory is listed
//! again (`list_queue`, read-only, for `postling -q`, and `ids` for `postling queue delete all`
//! are the exceptions, both for the administrator). doc/spool.md carries the
//! full state table.

mod commit;
pub(crate) mod format;
mod listing;
mod prepare;
mod state;
#[cfg(test)]
mod tests;

pub use commit::{Committed, owns as commit_owns};
pub use format::RcptState;
pub use listing::{QueueSummary, format_queue, list_queue};
pub use prepare::owns as prepare_owns;

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use format::{DeliveryState, ID_LIMIT, bad, id_decode, id_encode};

use crate::durable::{self, SyncMode};
use crate::limits;
use crate::mail::{BodyType, Envelope, QueueId, SpoolError};

/// Sub-directory of files under construction; emptied at start-up.
const TMP_DIR: &str = "tmp";
/// Sub-directory of committed entries.
const QUEUE_DIR: &str = "queue";
/// Sub-directory of message files kept for reuse (see `Spool::recycle`). Never read.
const FREE_DIR: &str = "free";
/// Suffix of a state file beside its message.
const STATE_SUFFIX: &str = ".state";
/// Suffix of the empty marker that holds an entry.
const HOLD_SUFFIX: &str = ".hold";

impl QueueId {
    /// Is this a well-formed id (and so a safe file name)?
    pub fn is_valid(&self) -> bool {
        id_decode(&self.0).is_some()
    }
}

fn check_state_size(id: &QueueId, text: &str) -> io::Result<()> {
    if text.len() > limits::SPOOL_MAX_CONTROL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("state of {id} too large"),
        ));
    }
    Ok(())
}

fn check_id(id: &QueueId) -> io::Result<()> {
    if id.is_valid() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a queue id: {:?}", id.0),
        ))
    }
}

/// The durable queue. One per process; owns `spool_dir`.
pub struct Spool {
    tmp: PathBuf,
    queue: PathBuf,
    /// Kept open to fsync the queue directory after renames (the commit's last step).
    queue_dir: File,
    /// Highest id value handed out or found on disk: ids only grow, even within one
    /// microsecond or when the clock steps back.
    last_id: u64,
    /// Entries handed to `commit_enqueue`, made durable together by the next group.
    pending: Vec<(usize, Incoming)>,
    /// The group commit in progress (see `commit.rs`).
    group: Option<commit::Group>,
    /// The group commit in progress in the disk executor (see `commit.rs`).
    xgroup: Option<commit::ExecGroup>,
    /// `free/`: message files of removed entries, kept to be rewritten by new messages.
    free_dir: PathBuf,
    /// The numbers `n` of the files `free/f<n>` (numbers, not paths: one small allocation
    /// for all of them, so the list never pins heap pages all over a burst's garbage).
    free: Vec<u64>,
    /// Names the next file put into `free/`.
    free_seq: u64,
    /// Write buffers of messages already written out, for the next ones
    /// (`limits::SPOOL_SPARE_BUFS`).
    spare_bufs: Vec<Box<[u8]>>,
    /// Files being made ahead in the executor (`prepare.rs`).
    ahead: prepare::Ahead,
    /// Test hook: runs on a message being received once a full disk made the spool give
    /// back its free files, before the write is tried again (the test makes room there).
    #[cfg(test)]
    on_release: Option<fn(&mut Incoming)>,
    /// Entries that have a state file: without one, reading and removing an entry need no
    /// look at `<id>.state` at all.
    stated: HashSet<QueueId>,
    /// Envelopes of entries committed by this process and not yet read back, so the first
    /// delivery attempt does not re-read and re-parse what was just written.
    fresh: HashMap<QueueId, Fresh>,
    /// Entries with a hold marker (`queue/<id>.hold`): found at start-up or set by `hold`.
    held: HashSet<QueueId>,
    sync_mode: SyncMode,
    /// State files being written in the executor, and their newest texts (`state`).
    states: state::StateWrites,
}

/// What the spool remembers of an entry it committed and has not read back yet.
struct Fresh {
    envelope: Envelope,
    /// Where the data starts.
    header_len: u64,
    /// The file's length.
    written: u64,
    /// In the Maildir form: the POP3 size (`W=`) of the whole file.
    wire: Option<u64>,
}

/// A message being received: a temp file and a fixed write buffer.
pub struct Incoming {
    id: QueueId,
    file: File,
    /// Where the file is written before the commit renames it into `queue/`: `tmp/<id>`
    /// for a new file, `free/f<n>` for a recycled one.
    tmp_path: PathBuf,
    buf: Box<[u8]>,
    used: usize,
    /// The first write error; later appends are ignored and the commit fails with it. After
    /// `Full` the bytes the disk refused are still in `buf`, so the spool can make room (by
    /// giving back its free files) and try them again.
    error: Option<SpoolError>,
    /// The temp file exists and is ours to remove when this is dropped.
    armed: bool,
    /// Bytes written to the file so far (header and data).
    written: u64,
    /// The envelope and header length, for the spool's cache of fresh entries.
    envelope: Option<Envelope>,
    header_len: u64,
    /// In the Maildir form ("link-1"): the data goes through this on its way into the
    /// buffer (CRLF to LF), and `data_in` counts the bytes as received.
    lf: Option<crate::lf::LfWriter>,
    data_in: u64,
}

impl Incoming {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Buffers `bytes`, writing the buffer out whenever it fills. Never fails: the first error
    /// is latched and reported by `Spool::commit_enqueue`. `Spool::append` is the same but
    /// first gives back the spool's free files when the disk is full.
    pub fn append(&mut self, bytes: &[u8]) {
        match self.lf.take() {
            None => {
                self.append_some(bytes);
            }
            Some(mut lf) => {
                self.data_in += bytes.len() as u64;
                let _ = lf.feed(bytes, &mut |b| {
                    self.append_some(b);
                    Ok(())
                });
                self.lf = Some(lf);
            }
        }
    }

    /// What the spool's cache of fresh entries keeps of this one, once committed.
    fn take_fresh(&mut self) -> Option<Fresh> {
        let envelope = self.envelope.take()?;
        Some(Fresh {
            envelope,
            header_len: self.header_len,
            written: self.written,
            // The two LFs of the head, then those of the data, each sent as CRLF by POP3.
            wire: self.lf.map(|lf| self.written + 2 + lf.lfs),
        })
    }

    /// Is this entry written in the Maildir form?
    pub fn maildir_form(&self) -> bool {
        self.lf.is_some()
    }

    /// `append` up to the first error; returns how many of `bytes` were taken.
    fn append_some(&mut self, mut bytes: &[u8]) -> usize {
        let total = bytes.len();
        if self.buf.is_empty() && !bytes.is_empty() {
            // (Its buffer went back to the spool when it was written out.)
            self.buf = vec![0; limits::SPOOL_WRITE_BUF].into_boxed_slice();
        }
        while !bytes.is_empty() && self.error.is_none() {
            let room = self.buf.get_mut(self.used..).unwrap_or_default();
            let n = room.len().min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            if let Some(dst) = room.get_mut(..n) {
                dst.copy_from_slice(now);
            }
            self.used += n;
            bytes = rest;
            if self.used == self.buf.len() {
                crate::turnstat::timed("spool.flush", || self.flush_buf());
            }
        }
        total - bytes.len()
    }

    /// The message bytes taken so far, without the envelope header (the `size=` of the log).
    pub fn data_size(&self) -> u64 {
        if self.lf.is_some() {
            return self.data_in;
        }
        (self.written + self.used as u64).saturating_sub(self.header_len)
    }

    /// Has a write failed?
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Writes the buffer out. What a full disk refused stays in the buffer (see `error`).
    fn flush_buf(&mut self) {
        if self.error.is_some() {
            return;
        }
        let mut done = 0;
        while done < self.used {
            let data = self.buf.get(done..self.used).unwrap_or_default();
            match self.file.write(data) {
                Ok(0) => {
                    self.error = Some(SpoolError::Failed("write returned 0".into()));
                    break;
                }
                Ok(n) => {
                    done += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(SpoolError::from_io(&e));
                    break;
                }
            }
        }
        if self.error == Some(SpoolError::Full) {
            self.buf.copy_within(done..self.used, 0);
            self.used -= done;
        } else {
            self.used = 0;
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_file(&self.tmp_path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("spool: cannot remove {}: {e}", self.tmp_path.display());
                }
            }
        }
    }
}

/// A committed entry as read back for delivery.
#[derive(Debug)]
pub struct QueueEntry {
    pub id: QueueId,
    pub envelope: Envelope,
    /// One per `envelope.recipients`, same order.
    pub rcpts: Vec<RcptState>,
    /// Delivery attempts recorded with `record_deferral`.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When to try again; the arrival time when nothing was recorded (due at once).
    pub next_attempt: SystemTime,
    /// One per `envelope.recipients`: the last temporary reason of a pending recipient.
    pub rcpt_errors: Vec<Option<String>>,
    /// When the delay warning DSN was queued; `None`: not yet.
    pub delay_warned: Option<SystemTime>,
    path: PathBuf,
    data_offset: u64,
    data_len: u64,
    /// Written in the Maildir form ("link-1"): the data is in the LF form after the
    /// `Return-Path:`/`Delivered-To:` lines; with its POP3 size (`W=`) once known.
    maildir_form: Option<Option<u64>>,
}

impl QueueEntry {
    /// Is the file in the Maildir form (the data with LF line ends after two trace lines)?
    pub fn is_maildir_form(&self) -> bool {
        self.maildir_form.is_some()
    }

    /// For a file in the Maildir form: its length and its POP3 size (`W=`), the two sizes its
    /// Maildir name carries. The POP3 size is counted from the file unless this process wrote
    /// it. None for the envelope form.
    pub fn maildir_sizes(&self) -> io::Result<Option<(u64, u64)>> {
        let Some(wire) = self.maildir_form else {
            return Ok(None);
        };
        let size = self.data_offset + self.data_len;
        if let Some(w) = wire {
            return Ok(Some((size, w)));
        }
        let mut f = File::open(&self.path)?;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut extra, mut prev) = (0u64, b'\n');
        let n = crate::lf::read_chunks(&mut f, &mut buf, &mut |chunk| {
            extra += crate::lf::wire_extra(chunk, prev);
            prev = chunk.last().copied().unwrap_or(prev);
            Ok(())
        })?;
        if n != size {
            return Err(bad("the file changed while it was read"));
        }
        Ok(Some((size, size + extra)))
    }

    /// Where a Maildir copy of the data is read from (`maildir::write_copy`, in the disk
    /// executor): the message file from the data's first byte, in the file's form.
    pub fn copy_source(&self) -> io::Result<crate::maildir::CopySource> {
        use std::os::unix::ffi::OsStrExt;
        Ok(crate::maildir::CopySource {
            path: std::ffi::CString::new(self.path.as_os_str().as_bytes())
                .map_err(|_| bad("a NUL in the spool's path"))?,
            offset: self.data_offset,
            len: self.data_len,
            lf_form: self.is_maildir_form(),
        })
    }

    /// The message file. The data starts at `data_offset()`, after the envelope header.
    pub fn data_path(&self) -> &Path {
        &self.path
    }

    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the message data in octets (as received: CRLF lines, unstuffed).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Opens the message file positioned at the start of the data; returns it with the data's
    /// length (the data runs to the end of the file).
    pub fn open_data(&self) -> io::Result<(File, u64)> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.data_offset))?;
        Ok((f, self.data_len))
    }

    /// The length of the data as received (CRLF line ends), and whether it holds a byte
    /// above 127 (a relay's `SIZE=` and `BODY=`): for the envelope form its length and the
    /// `BODY` the client declared; for the Maildir form, which keeps no `BODY`, both counted
    /// by reading the file back (rare: such an entry is for a local Maildir unless the
    /// aliases changed).
    pub fn received_shape(&self) -> io::Result<(u64, bool)> {
        if !self.is_maildir_form() {
            return Ok((self.data_len, self.envelope.body == BodyType::EightBitMime));
        }
        let mut r = self.read_data()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut eight = false;
        let n = crate::lf::read_chunks(&mut r, &mut buf, &mut |chunk| {
            eight |= chunk.iter().any(|&b| b >= 0x80);
            Ok(())
        })?;
        Ok((n, eight))
    }

    /// The message data as received (CRLF line ends), whatever the file's form.
    pub fn read_data(&self) -> io::Result<Box<dyn Read>> {
        let (f, len) = self.open_data()?;
        let f = f.take(len);
        Ok(if self.is_maildir_form() {
            Box::new(crate::lf::CrlfReader::new(f))
        } else {
            Box::new(f)
        })
    }

    /// Recipients still to be delivered, with their index in the envelope.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &str)> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.rcpts)
            .enumerate()
            .filter(|(_, (_, st))| **st == RcptState::Pending)
            .map(|(i, (r, _))| (i, r.as_str()))
    }

    /// The last reason recorded for a pending recipient (by its index in the envelope).
    pub fn rcpt_error(&self, idx: usize) -> Option<&str> {
        self.rcpt_errors.get(idx).and_then(Option::as_deref)
    }

    /// No recipient is pending: the entry can be removed (after any bounce is enqueued).
    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }
}

/// A deferral to record with an attempt (see `Spool::record_attempt`).
#[derive(Clone, Copy, Debug)]
pub struct Deferral<'a> {
    pub attempts: u32,
    /// The entry's last error (one line for the whole entry).
    pub last_error: &'a str,
    pub next_attempt: SystemTime,
    /// The reason of each recipient still pending after this attempt, by its index in the
    /// envelope; it replaces that recipient's earlier reason. Stored without control
    /// characters and cut to `limits::SPOOL_MAX_RCPT_REASON` bytes.
    pub rcpt_errors: &'a [(usize, String)],
    /// The delay warning DSN has been queued (at this time). Recorded once and kept: `None`
    /// never clears an earlier mark.
    pub delay_warned: Option<SystemTime>,
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn mkdir_0700(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// The names of a directory that are ids, optionally with `suffix`, plus the rest.
enum DirName {
    Message(u64),
    State(u64),
    Hold(u64),
    Other,
}

fn classify(name: &std::ffi::OsStr) -> DirName {
    let Some(name) = name.to_str() else {
        return DirName::Other;
    };
    if let Some(v) = id_decode(name) {
        return DirName::Message(v);
    }
    if let Some(v) = name.strip_suffix(STATE_SUFFIX).and_then(id_decode) {
        return DirName::State(v);
    }
    match name.strip_suffix(HOLD_SUFFIX).and_then(id_decode) {
        Some(v) => DirName::Hold(v),
        None => DirName::Other,
    }
}

/// Reads the envelope header at the top of the message file of `id`: (id, envelope, data
/// offset, in the Maildir form). A file in the Maildir form carries no id: `id` is returned.
fn read_header(file: &File, id: &QueueId) -> io::Result<(QueueId, Envelope, u64, bool)> {
    let mut r = BufReader::new(file).take(limits::SPOOL_MAX_CONTROL as u64);
    let mut text = Vec::with_capacity(512);
    if r.read_until(b'\n', &mut text)? == 0 || !text.ends_with(b"\n") {
        return Err(bad("envelope header not terminated"));
    }
    if text.starts_with(format::LINK_RETURN_PATH.as_bytes()) {
        let first = text.len();
        if r.read_until(b'\n', &mut text)? == 0 || !text.ends_with(b"\n") {
            return Err(bad("Maildir form without Delivered-To"));
        }
        let line = |b: &[u8]| -> io::Result<String> {
            let b = b.strip_suffix(b"\n").unwrap_or(b);
            String::from_utf8(b.to_vec()).map_err(|_| bad("header is not UTF-8"))
        };
        let env = format::link_decode(
            id,
            &line(text.get(..first).unwrap_or_default())?,
            &line(text.get(first..).unwrap_or_default())?,
        )?;
        return Ok((id.clone(), env, text.len() as u64, true));
    }
    loop {
        let start = text.len();
        if r.read_until(b'\n', &mut text)? == 0 || !text.ends_with(b"\n") {
            return Err(bad("envelope header not terminated"));
        }
        if text.len() - start == 1 {
            break;
        }
    }
    let offset = text.len() as u64;
    let body = text.get(..text.len().saturating_sub(2)).unwrap_or_default();
    let body = std::str::from_utf8(body).map_err(|_| bad("header is not UTF-8"))?;
    let (id, env) = format::header_decode(body)?;
    Ok((id, env, offset, false))
}

/// The files waiting in `free/` and the number after the highest name; anything else there is
/// removed (only the spool writes into it). A file still holding bytes is what a crash between
/// a removal's rename and its truncation leaves: it is emptied now (removed if that fails), so
/// delivered mail never stays readable in `free/` and every free file is empty.
fn scan_free(dir: &Path) -> io::Result<(Vec<u64>, u64)> {
    let mut free = Vec::new();
    let mut seq = 0;
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let n = ent
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix('f'))
            .and_then(|n| n.parse::<u64>().ok());
        let is_file = ent.file_type().is_ok_and(|t| t.is_file());
        match n {
            Some(n)
                if is_file && free.len() < limits::SPOOL_FREE_KEEP && empty_file(&ent.path()) =>
            {
                seq = seq.max(n);
                free.push(n);
            }
            _ => {
                if let Err(e) = fs::remove_file(ent.path()) {
                    log::warn!("spool: cannot remove {}: {e}", ent.path().display());
                }
            }
        }
    }
    Ok((free, seq))
}

/// Makes the file at `path` empty, giving its blocks back; false if that failed.
fn empty_file(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        // Linked from a Maildir (a crash in `remove` between the rename and the unlink):
        // that message is not the spool's to empty; the caller unlinks this name.
        Ok(m) if m.nlink() > 1 => false,
        Ok(m) if m.len() == 0 => true,
        Ok(_) => match OpenOptions::new().write(true).truncate(true).open(path) {
            Ok(_) => true,
            Err(e) => {
                log::warn!("spool: cannot empty {}: {e}", path.display());
                false
            }
        },
        Err(_) => false,
    }
}

/// Reads a state file; a missing one means nothing was recorded yet.
fn read_state(path: &Path, n_rcpts: usize) -> io::Result<DeliveryState> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DeliveryState::fresh(n_rcpts)),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(limits::SPOOL_MAX_CONTROL as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > limits::SPOOL_MAX_CONTROL {
        return Err(bad("state file too large"));
    }
    format::state_decode(&text, n_rcpts)
}

impl Spool {
    /// Opens (creating, mode 0700) the spool at `dir`, removes what a crash left half-done,
    /// and returns the committed entries, oldest first.
    pub fn open(dir: &Path) -> io::Result<(Spool, Vec<QueueId>)> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let tmp = dir.join(TMP_DIR);
        let queue = dir.join(QUEUE_DIR);
        let free_dir = dir.join(FREE_DIR);
        mkdir_0700(&tmp)?;
        mkdir_0700(&queue)?;
        mkdir_0700(&free_dir)?;
        // The sub-directories must survive a crash before anything is committed into them.
        fsync_dir(dir)?;
        let mut last_id = 0;

        for ent in fs::read_dir(&tmp)? {
            let ent = ent?;
            if let DirName::Message(v) | DirName::State(v) | DirName::Hold(v) =
                classify(&ent.file_name())
            {
                last_id = last_id.max(v);
            }
            // Everything in tmp/ is an unfinished message or state file: the commit or the
            // state replacement never happened, so the entry's committed state is unchanged.
            match fs::remove_file(ent.path()) {
                Ok(()) => log::info!("spool: removed leftover {}", ent.path().display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("spool: cannot remove {}: {e}", ent.path().display()),
            }
        }

        let (free, free_seq) = scan_free(&free_dir)?;

        let mut messages = Vec::new();
        let mut states = Vec::new();
        let mut holds = Vec::new();
        for ent in fs::read_dir(&queue)? {
            let ent = ent?;
            match classify(&ent.file_name()) {
                DirName::Message(v) => messages.push(v),
                DirName::State(v) => states.push((v, ent.path())),
                DirName::Hold(v) => holds.push((v, ent.path())),
                DirName::Other => {
                    log::warn!("spool: ignoring unknown file {}", ent.path().display())
                }
            }
        }
        messages.sort_unstable();
        let mut stated = HashSet::new();
        for (v, path) in states {
            last_id = last_id.max(v);
            if messages.binary_search(&v).is_ok() {
                stated.insert(id_encode(v));
            }
            // A state file without its message is what a crash during `remove` leaves.
            if messages.binary_search(&v).is_err() {
                match fs::remove_file(&path) {
                    Ok(()) => log::info!("spool: removed orphan {}", path.display()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("spool: cannot remove {}: {e}", path.display()),
                }
            }
        }
        let mut held = HashSet::new();
        for (v, path) in holds {
            last_id = last_id.max(v);
            if messages.binary_search(&v).is_ok() {
                held.insert(id_encode(v));
                continue;
            }
            // A hold marker without its message is what a crash during `remove` leaves.
            match fs::remove_file(&path) {
                Ok(()) => log::info!("spool: removed orphan {}", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("spool: cannot remove {}: {e}", path.display()),
            }
        }
        if let Some(&v) = messages.last() {
            last_id = last_id.max(v);
        }
        let queue_dir = File::open(&queue)?;
        let spool = Spool {
            tmp,
            queue,
            queue_dir,
            last_id,
            pending: Vec::new(),
            group: None,
            xgroup: None,
            free_dir,
            free,
            free_seq,
            spare_bufs: Vec::new(),
            ahead: prepare::Ahead::default(),
            states: state::StateWrites::default(),
            #[cfg(test)]
            on_release: None,
            stated,
            fresh: HashMap::new(),
            held,
            sync_mode: SyncMode::default(),
        };
        Ok((spool, messages.into_iter().map(id_encode).collect()))
    }

    fn next_id(&mut self) -> u64 {
        let now = format::micros_since_epoch(SystemTime::now()).min(ID_LIMIT - 1);
        let mut v = now.max(self.last_id.saturating_add(1));
        if v >= ID_LIMIT {
            // Only reachable through a forged name on disk; the existence checks in `begin`
            // keep ids unique anyway.
            v = now;
        }
        self.last_id = v;
        v
    }

    fn message_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(&id.0)
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{}{STATE_SUFFIX}", id.0))
    }

    fn hold_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{}{HOLD_SUFFIX}", id.0))
    }

    /// Is `id` a committed entry (its message file is in `queue/`)?
    pub fn contains(&self, id: &QueueId) -> bool {
        id.is_valid() && fs::symlink_metadata(self.message_path(id)).is_ok()
    }

    /// Does `id` carry a hold marker?
    pub fn is_held(&self, id: &QueueId) -> bool {
        self.held.contains(id)
    }

    /// The ids of every committed entry, oldest first: one listing of `queue/`, for the
    /// administrator's commands (`postling queue delete all`), never for delivery.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        let mut v = Vec::new();
        for ent in fs::read_dir(&self.queue)? {
            if let DirName::Message(n) = classify(&ent?.file_name()) {
                v.push(n);
            }
        }
        v.sort_unstable();
        Ok(v.into_iter().map(id_encode).collect())
    }

    /// Holds an entry: creates the empty marker `queue/<id>.hold` (one step: it exists or it
    /// does not) and syncs `queue/`, so a hold survives a crash. False if it was held already.
    /// NotFound if the entry does not exist.
    pub fn hold(&mut self, id: &QueueId) -> io::Result<bool> {
        check_id(id)?;
        fs::symlink_metadata(self.message_path(id))?;
        let created = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.hold_path(id))
        {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        self.held.insert(id.clone());
        // A removal racing the creation (only the daemon removes, and it does not while it
        // carries out a command) would leave an orphan marker, which start-up removes.
        self.sync_queue_dir()?;
        Ok(created)
    }

    /// Releases a held entry: unlinks its marker and syncs `queue/`. False if it was not held.
    /// NotFound if the entry does not exist.
    pub fn release(&mut self, id: &QueueId) -> io::Result<bool> {
        check_id(id)?;
        fs::symlink_metadata(self.message_path(id))?;
        self.held.remove(id);
        match fs::remove_file(self.hold_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        self.sync_queue_dir()?;
        Ok(true)
    }

    /// Starts a new entry: a temp file named by a fresh id, the envelope header written first.
    pub fn begin(&mut self, env: &Envelope) -> Result<Incoming, SpoolError> {
        self.begin_with(env, false)
    }

    /// `begin`, in the Maildir form when `maildir_form` and the envelope allows it
    /// (`format::link_qualifies`): the caller says the one recipient resolves to one local
    /// Maildir, so delivery can link the file there instead of writing a copy. The file then
    /// holds `Return-Path:` and `Delivered-To:` lines and the data with LF line ends, the very
    /// bytes of that copy; the entry's arrival time is its id's.
    pub fn begin_with(
        &mut self,
        env: &Envelope,
        maildir_form: bool,
    ) -> Result<Incoming, SpoolError> {
        if env.recipients.is_empty() {
            return Err(SpoolError::Failed("envelope without recipients".into()));
        }
        let forbidden = format::has_forbidden(&env.sender)
            || format::has_forbidden(&env.helo)
            || env.recipients.iter().any(|r| format::has_forbidden(r));
        if forbidden {
            return Err(SpoolError::Failed("envelope contains CR, LF or NUL".into()));
        }
        let mut inc = crate::turnstat::timed("spool.create", || self.create_incoming())?;
        if maildir_form && format::link_qualifies(env) {
            let head = crate::lf::maildir_head(&env.sender, &env.recipients[0]);
            self.append_raw(&mut inc, head.as_bytes());
            inc.header_len = head.len() as u64;
            inc.lf = Some(crate::lf::LfWriter::default());
            if self.fresh.len() < limits::SPOOL_FRESH_MAX {
                let mut env = env.clone();
                env.arrival = format::id_time(id_decode(&inc.id.0).unwrap_or(0));
                // As `format::link_decode` reads it back: the rest is not kept.
                env.client_ip = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
                env.helo.clear();
                env.body = BodyType::SevenBit;
                inc.envelope = Some(env);
            }
            return match inc.error.take() {
                Some(e) => Err(e),
                None => Ok(inc),
            };
        }
        let header = format::header_encode(&inc.id, env);
        if header.len() > limits::SPOOL_MAX_CONTROL {
            return Err(SpoolError::Failed("envelope too large".into()));
        }
        self.append(&mut inc, header.as_bytes());
        inc.header_len = header.len() as u64;
        if self.fresh.len() < limits::SPOOL_FRESH_MAX {
            inc.envelope = Some(env.clone());
        }
        match inc.error.take() {
            Some(e) => Err(e),
            None => Ok(inc),
        }
    }

    fn create_incoming(&mut self) -> Result<Incoming, SpoolError> {
        self.ahead.wanted = true;
        for _ in 0..limits::SPOOL_ID_TRIES {
            let id = id_encode(self.next_id());
            let (file, tmp_path) = match self.take_free() {
                Some(taken) => taken,
                None => {
                    let tmp_path = self.tmp.join(&id.0);
                    match OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp_path)
                    {
                        Ok(f) => (f, tmp_path),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(SpoolError::from_io(&e)),
                    }
                }
            };
            let inc = Incoming {
                file,
                tmp_path,
                buf: self
                    .spare_bufs
                    .pop()
                    .unwrap_or_else(|| vec![0; limits::SPOOL_WRITE_BUF].into_boxed_slice()),
                used: 0,
                error: None,
                armed: true,
                written: 0,
                envelope: None,
                header_len: 0,
                lf: None,
                data_in: 0,
                id,
            };
            // The clock may have stepped back past a committed entry: never reuse its name.
            match fs::symlink_metadata(self.message_path(&inc.id)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(inc),
                Err(e) => return Err(SpoolError::from_io(&e)),
                Ok(_) => continue, // dropping `inc` removes its temp file
            }
        }
        Err(SpoolError::Failed("no free queue id".into()))
    }

    /// A file from `free/` (empty: see `recycle`), opened for writing where it lies: its rename
    /// into `queue/` is the commit point as for a new file in `tmp/` (whatever a crash leaves
    /// in `free/` is free space by definition). Reusing files instead of creating new ones
    /// spares the filesystem an inode allocation per message, which on a busy ext4 is the
    /// most expensive step of the whole commit.
    fn take_free(&mut self) -> Option<(File, PathBuf)> {
        while let Some(n) = self.free.pop() {
            let path = self.free_path(n);
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                return Some((f, path));
            }
        }
        None
    }

    /// Discards a message being received and its temp file.
    pub fn abort(&mut self, inc: Incoming) {
        drop(inc);
    }

    /// Appends to a message being received (`Incoming::append`). When the disk is full the
    /// spool first gives back the files it keeps in `free/` and tries again: mail is refused
    /// for want of space only when the spool holds nothing it could give back.
    pub fn append(&mut self, inc: &mut Incoming, bytes: &[u8]) {
        match inc.lf.take() {
            None => self.append_raw(inc, bytes),
            Some(mut lf) => {
                inc.data_in += bytes.len() as u64;
                let _ = lf.feed(bytes, &mut |b| {
                    self.append_raw(inc, b);
                    Ok(())
                });
                inc.lf = Some(lf);
            }
        }
    }

    /// `append` of bytes as they go into the file.
    fn append_raw(&mut self, inc: &mut Incoming, mut bytes: &[u8]) {
        if inc.error.is_some() {
            return;
        }
        loop {
            let taken = inc.append_some(bytes);
            bytes = bytes.get(taken..).unwrap_or_default();
            if !self.make_room(inc) {
                return;
            }
        }
    }

    /// `inc` just failed a write for want of space: unlinks every free file and writes what
    /// the disk refused again. False when there was nothing to give back (the error stands).
    fn make_room(&mut self, inc: &mut Incoming) -> bool {
        if inc.error != Some(SpoolError::Full) || self.free.is_empty() {
            return false;
        }
        self.release_free();
        #[cfg(test)]
        if let Some(hook) = self.on_release {
            hook(inc);
        }
        inc.error = None;
        inc.flush_buf();
        true
    }

    /// The disk is full: unlinks every file kept in `free/`. Emptied files hold no blocks,
    /// but an inode each and whatever a failed truncation left.
    fn release_free(&mut self) {
        let n = self.free.len();
        while let Some(f) = self.free.pop() {
            let path = self.free_path(f);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("spool: cannot remove {}: {e}", path.display());
                }
            }
        }
        if n > 0 {
            log::info!("spool: disk full: gave back {n} free file(s)");
        }
    }

    /// Writes out what `inc` still buffers, giving back the free files if the disk is full.
    fn finish_writes(&mut self, inc: &mut Incoming) -> Result<(), SpoolError> {
        if let Some(mut lf) = inc.lf.take() {
            let _ = lf.finish(&mut |b| {
                self.append_raw(inc, b);
                Ok(())
            });
            inc.lf = Some(lf);
        }
        if inc.error.is_none() {
            crate::turnstat::timed("spool.flush.last", || inc.flush_buf());
            self.make_room(inc);
        }
        match inc.error.take() {
            Some(e) => Err(e),
            None => {
                // Written out: its buffer serves the next message.
                let buf = std::mem::take(&mut inc.buf);
                if buf.len() == limits::SPOOL_WRITE_BUF
                    && self.spare_bufs.len() < limits::SPOOL_SPARE_BUFS
                {
                    self.spare_bufs.push(buf);
                }
                Ok(())
            }
        }
    }

    /// Hands a finished message to the next commit group. A write error seen while
    /// receiving fails here at once and the entry is discarded.
    pub fn commit_enqueue(&mut self, mut inc: Incoming, tag: usize) -> Result<(), SpoolError> {
        self.finish_writes(&mut inc)?;
        self.pending.push((tag, inc));
        Ok(())
    }

    /// Reads a committed entry: its envelope, delivery state and where its data is.
    pub fn read_entry(&mut self, id: &QueueId) -> io::Result<QueueEntry> {
        check_id(id)?;
        let path = self.message_path(id);
        if let Some(text) = self.state_pending(id) {
            // Recorded, its write still in the executor (or failed): newer than any file.
            return read_entry_at(&path, StateFrom::Text(text), id);
        }
        if let Some(Fresh {
            envelope,
            header_len: data_offset,
            written,
            wire,
        }) = self.fresh.remove(id)
        {
            let data_len = written
                .checked_sub(data_offset)
                .ok_or_else(|| bad("file shorter than its header"))?;
            return Ok(QueueEntry {
                id: id.clone(),
                next_attempt: envelope.arrival,
                rcpts: vec![RcptState::Pending; envelope.recipients.len()],
                attempts: 0,
                last_error: None,
                rcpt_errors: vec![None; envelope.recipients.len()],
                delay_warned: None,
                envelope,
                path,
                data_offset,
                data_len,
                maildir_form: wire.map(Some),
            });
        }
        let state = self.stated.contains(id).then(|| self.state_path(id));
        match state {
            Some(p) => read_entry_at(&path, StateFrom::File(&p), id),
            None => read_entry_at(&path, StateFrom::Nothing, id),
        }
    }

    /// Durably records per-recipient outcomes (indices into the envelope's recipients).
    pub fn record_progress(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
    ) -> io::Result<()> {
        self.record_attempt(id, delivered, failed, None)
    }

    /// Durably records a deferral: the attempt count, the last temporary error and when to
    /// try again.
    pub fn record_deferral(
        &mut self,
        id: &QueueId,
        attempts: u32,
        last_error: &str,
        next_attempt: SystemTime,
    ) -> io::Result<()> {
        let d = Deferral {
            attempts,
            last_error,
            next_attempt,
            rcpt_errors: &[],
            delay_warned: None,
        };
        self.record_attempt(id, &[], &[], Some(d))
    }

    /// `record_progress` and `record_deferral` in one state replacement (one fsync pair
    /// instead of two). Where the executor runs file operations the replacement is written
    /// there (`state`): this returns once the new state is worked out, and reads see it.
    pub fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        deferral: Option<Deferral<'_>>,
    ) -> io::Result<()> {
        check_id(id)?;
        let (_, env, _, _) = read_header(&File::open(self.message_path(id))?, id)?;
        let n = env.recipients.len();
        let state_path = self.state_path(id);
        let mut st = match self.state_pending(id) {
            Some(text) => format::state_decode(text, n)?,
            None => read_state(&state_path, n)?,
        };
        let out_of_range = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("recipient index out of range for {id}"),
            )
        };
        for &i in delivered {
            *st.rcpts.get_mut(i).ok_or_else(out_of_range)? = RcptState::Delivered;
        }
        for (i, why) in failed {
            *st.rcpts.get_mut(*i).ok_or_else(out_of_range)? =
                RcptState::Failed(format::clip_reason(why).to_string());
        }
        if let Some(d) = deferral {
            st.attempts = d.attempts;
            st.last_error = Some(format::clip_reason(d.last_error).to_string());
            st.next_attempt = Some(d.next_attempt);
            for (i, why) in d.rcpt_errors {
                *st.rcpt_errors.get_mut(*i).ok_or_else(out_of_range)? =
                    Some(format::clean_rcpt_reason(why));
            }
            if st.delay_warned.is_none() {
                st.delay_warned = d.delay_warned;
            }
        }
        let text = format::state_encode(&st);
        if !self.ahead.offload && !self.state_in_flight(id) {
            self.write_state(id, &state_path, &text)?;
            // The file has the newest state now: no older text waits to be written.
            self.state_superseded(id);
            return Ok(());
        }
        // In the executor (`state`): from here on the recorded state, not the cached fresh
        // envelope, is the truth.
        check_state_size(id, &text)?;
        self.fresh.remove(id);
        self.state_later(id, text);
        Ok(())
    }

    /// Replaces the state file: temp file, fdatasync, rename over the old, fsync `queue/`.
    fn write_state(&mut self, id: &QueueId, dest: &Path, text: &str) -> io::Result<()> {
        check_state_size(id, text)?;
        let tmp = self.state_tmp_path(id);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            durable::files(self.sync_mode, &[&f])
                .pop()
                .unwrap_or(Ok(()))?;
            fs::rename(&tmp, dest)?;
            // From here on the state file, not the cached fresh envelope, is the truth.
            self.fresh.remove(id);
            self.stated.insert(id.clone());
            self.sync_queue_dir()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes an entry. The message file goes first (the entry no longer exists once that
    /// unlink is durable), then its state file and hold marker; a crash in between leaves an
    /// orphan state file or marker, which `open` removes. Removing an entry that is already
    /// gone is not an error.
    ///
    /// Without a state file (the usual case: delivered at the first attempt) the unlink is not
    /// fsync'ed: the entry is already delivered, and should a power cut undo the unlink, the
    /// only cost is a second delivery (at least once). With a state file the fsync orders the
    /// two unlinks, so a crash can never keep the message but lose its progress. Where the
    /// executor runs file operations all of this happens there, at the next turn
    /// (`prepare`, `state`).
    pub fn remove(&mut self, id: &QueueId) -> io::Result<()> {
        self.remove_in(id, self.ahead.offload)
    }

    /// `remove` with blocking calls, done when it returns: for the administrator's commands
    /// (`postling queue delete`, `bounce`), whose answer, and a `postling -q` after it, must
    /// find the entry gone.
    pub fn remove_now(&mut self, id: &QueueId) -> io::Result<()> {
        self.remove_in(id, false)
    }

    fn remove_in(&mut self, id: &QueueId, later: bool) -> io::Result<()> {
        check_id(id)?;
        self.fresh.remove(id);
        self.state_removed(id);
        let path = self.message_path(id);
        // A file in the Maildir form that delivery linked into a Maildir is the mailbox's
        // message now: only its name here goes, its inode is never reused (nor emptied, so
        // it never goes to free/, in the executor or here).
        let linked = fs::symlink_metadata(&path).is_ok_and(|m| m.nlink() > 1);
        if later {
            let held = self.held.remove(id);
            let stated = self.stated.remove(id);
            if held || stated {
                self.removal_later(id, linked, stated, held);
            } else if linked {
                self.unlink_later(path);
            } else {
                self.retire_later(path);
            }
            return Ok(());
        }
        let removed = if linked {
            fs::remove_file(&path)
        } else {
            self.recycle(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let held = self.held.remove(id);
        let stated = self.stated.remove(id);
        if !held && !stated {
            return Ok(());
        }
        self.sync_queue_dir()?;
        for (had, path) in [(stated, self.state_path(id)), (held, self.hold_path(id))] {
            if !had {
                continue;
            }
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The `maildrop/` files (`pickup` field) that the entries `ids` were made from. Read at
    /// start-up, and only when drop files are waiting, to tell those already queued (a crash
    /// came between the commit and the drop file's unlink) from those still to pick up.
    pub fn pickup_names(&self, ids: &[QueueId]) -> HashSet<String> {
        ids.iter()
            .filter_map(|id| Some((File::open(self.message_path(id)).ok()?, id)))
            .filter_map(|(f, id)| read_header(&f, id).ok())
            .filter_map(|(_, env, _, _)| env.pickup)
            .collect()
    }

    /// How commits are made durable (the `fsync` config key).
    pub fn set_sync_mode(&mut self, mode: SyncMode) {
        self.sync_mode = mode;
    }

    fn sync_queue_dir(&self) -> io::Result<()> {
        durable::dirs(self.sync_mode, &[&self.queue_dir])
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Takes a removed entry's file out of `queue/` into `free/` for reuse: one rename (the
    /// removal point), then the file is emptied. Only the inode is reused: the old message's
    /// bytes must not stay readable, and its blocks must not stay taken on a filesystem that
    /// new mail needs. Emptying after the rename keeps removal one step that a crash cannot
    /// leave half done (an empty `queue/<id>` would be a damaged entry); a crash before the
    /// truncation leaves a full file in `free/`, which `open` empties. A file that cannot be
    /// emptied is unlinked instead.
    ///
    /// There is no cap while mail flows: an unlink now would make every file creation of the
    /// next minutes slower (ext4 skips recently freed inodes one by one when it allocates), and
    /// the files are needed again as soon as new mail arrives. `trim_free` gives the excess
    /// back once the queue is idle.
    fn recycle(&mut self, path: &Path) -> io::Result<()> {
        self.free_seq += 1;
        let dest = self.free_path(self.free_seq);
        fs::rename(path, &dest)?;
        // Emptied only if no other name links it (a Maildir's, see `remove`): checked on the
        // open file, which cannot change under us, before it is cut.
        let emptied = OpenOptions::new().write(true).open(&dest).and_then(|f| {
            if f.metadata()?.nlink() > 1 {
                return Err(io::Error::other("linked elsewhere"));
            }
            f.set_len(0)
        });
        match emptied {
            Ok(()) => self.free.push(self.free_seq),
            Err(e) => {
                log::warn!("spool: cannot empty {}: {e}", dest.display());
                if let Err(e) = fs::remove_file(&dest) {
                    log::warn!("spool: cannot remove {}: {e}", dest.display());
                }
            }
        }
        Ok(())
    }

    fn free_path(&self, n: u64) -> PathBuf {
        self.free_dir.join(format!("f{n}"))
    }

    /// Gives back table capacity a burst grew (the fresh-entry cache, the free list).
    pub fn release_memory(&mut self) {
        self.spare_bufs = Vec::new();
        self.fresh.shrink_to_fit();
        self.free.shrink_to_fit();
        self.stated.shrink_to_fit();
        self.states.shrink();
    }

    /// Are more files waiting in `free/` than `limits::SPOOL_FREE_KEEP`?
    pub fn free_excess(&self) -> bool {
        self.free.len() > limits::SPOOL_FREE_KEEP
    }

    /// Unlinks up to `max` free files beyond `limits::SPOOL_FREE_KEEP` (the oldest first is
    /// not needed: any free file is as good as another).
    pub fn trim_free(&mut self, max: usize) {
        for _ in 0..max {
            if !self.free_excess() {
                return;
            }
            if let Some(n) = self.free.pop() {
                let path = self.free_path(n);
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::warn!("spool: cannot remove {}: {e}", path.display());
                    }
                }
            }
        }
    }
}

/// Where an entry's delivery state comes from.
enum StateFrom<'a> {
    /// Known to have no state file (nothing recorded yet).
    Nothing,
    File(&'a Path),
    /// Recorded, not yet written (`state`).
    Text(&'a str),
}

fn read_entry_at(path: &Path, state: StateFrom, id: &QueueId) -> io::Result<QueueEntry> {
    let file = File::open(path)?;
    let (stored_id, envelope, data_offset, maildir_form) = read_header(&file, id)?;
    if stored_id != *id {
        return Err(bad("id in header does not match the file name"));
    }
    let data_len = file
        .metadata()?
        .len()
        .checked_sub(data_offset)
        .ok_or_else(|| bad("file shorter than its header"))?;
    let st = match state {
        StateFrom::File(p) => read_state(p, envelope.recipients.len())?,
        StateFrom::Text(text) => format::state_decode(text, envelope.recipients.len())?,
        StateFrom::Nothing => DeliveryState::fresh(envelope.recipients.len()),
    };
    Ok(QueueEntry {
        id: id.clone(),
        next_attempt: st.next_attempt.unwrap_or(envelope.arrival),
        envelope,
        rcpts: st.rcpts,
        attempts: st.attempts,
        last_error: st.last_error,
        rcpt_errors: st.rcpt_errors,
        delay_warned: st.delay_warned,
        path: path.to_path_buf(),
        data_offset,
        data_len,
        maildir_form: maildir_form.then_some(None),
    })
}
