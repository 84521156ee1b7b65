//! Queue control (`postling queue flush|hold|release|delete|bounce`): the commands, what each
//! does to the spool and the delivery engine, and the daemon's control socket.
//!
//! Who acts on the spool: exactly one process at a time, the one holding the spool lock
//! (`flock` on `spool_dir` itself, see `lock_spool`). A running daemon holds it for its
//! whole life, so while it runs a command is never carried out by the command-line process:
//! that sends the request over the Unix socket `spool_dir/control.sock` and the daemon's
//! reactor carries it out between two delivery batches (`Progress`, a slice of its entries per
//! turn, with its own spool and engine, starting no batch until it is done), so no command
//! ever touches an entry that is being attempted, and one over thousands of entries does not
//! hold the other clients. With no daemon the
//! command takes the lock itself (a daemon starting meanwhile waits for it) and runs the same
//! `apply` on the spool directly. Either way every change is one of the spool's own
//! transitions (a hold marker created or unlinked, an entry removed, a bounce committed).
//!
//! The socket lives in `spool_dir` (mode 0700, owned by the user the daemon runs as), so only
//! that user and root can reach it. Protocol: one request line (`hold ID ID…`), then the
//! reply lines (`ok TEXT`, `unknown TEXT`, `failed TEXT`, written as they come), then the
//! daemon closes.

pub mod cli;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use log::{info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::deliver::engine::Engine;
use crate::deliver::store::SpoolStore;
use crate::limits;
use crate::mail::QueueId;
use crate::spool::Spool;

/// File name of the control socket inside `spool_dir`.
pub const SOCKET_NAME: &str = "control.sock";

/// A queue command. Ids are taken as typed; a malformed one is reported as unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Make these entries (all when empty) due now.
    Flush(Vec<QueueId>),
    Hold(Vec<QueueId>),
    Release(Vec<QueueId>),
    /// Remove these entries without a bounce; `DeleteAll` removes every entry.
    Delete(Vec<QueueId>),
    DeleteAll,
    /// Fail every pending recipient now and bounce to the sender.
    Bounce(Vec<QueueId>),
}

impl Command {
    /// Parses `VERB [ID…]` as typed after `postling queue` (and as sent on the socket).
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Command, String> {
        let Some((verb, args)) = words.split_first() else {
            return Err("a command is needed: list, flush, hold, release, delete or bounce".into());
        };
        let ids = || -> Vec<QueueId> {
            args.iter()
                .map(|a| QueueId(a.as_ref().to_string()))
                .collect()
        };
        let need_ids = |what: &str| -> Result<Vec<QueueId>, String> {
            if args.is_empty() {
                Err(format!("{what} needs at least one queue id"))
            } else {
                Ok(ids())
            }
        };
        match verb.as_ref() {
            "flush" => Ok(Command::Flush(ids())),
            "hold" => need_ids("hold").map(Command::Hold),
            "release" => need_ids("release").map(Command::Release),
            "bounce" => need_ids("bounce").map(Command::Bounce),
            "delete" => match args {
                [one] if one.as_ref() == "all" => Ok(Command::DeleteAll),
                _ if args.iter().any(|a| a.as_ref() == "all") => {
                    Err("delete all takes no queue ids".into())
                }
                _ => need_ids("delete (or delete all)").map(Command::Delete),
            },
            other => Err(format!("unknown queue command '{other}'")),
        }
    }

    /// The request line sent to the daemon (ids were checked to be single words).
    pub fn encode(&self) -> String {
        let (verb, ids): (&str, &[QueueId]) = match self {
            Command::Flush(v) => ("flush", v),
            Command::Hold(v) => ("hold", v),
            Command::Release(v) => ("release", v),
            Command::Delete(v) => ("delete", v),
            Command::DeleteAll => ("delete all", &[]),
            Command::Bounce(v) => ("bounce", v),
        };
        let mut s = verb.to_string();
        for id in ids {
            s.push(' ');
            s.push_str(&id.0);
        }
        s.push('\n');
        s
    }
}

/// How one part of a command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// No such entry (or not a queue id).
    Unknown,
    /// The spool refused the change (an I/O error); the entry is as it was.
    Failed,
}

/// One reply line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    pub text: String,
}

impl Line {
    fn ok(text: String) -> Line {
        Line {
            status: Status::Ok,
            text,
        }
    }

    fn unknown(id: &QueueId) -> Line {
        let text = if id.is_valid() {
            format!("{id}: no such message in the queue")
        } else {
            format!("{:?}: not a queue id", printable(&id.0))
        };
        Line {
            status: Status::Unknown,
            text,
        }
    }

    fn failed(text: String) -> Line {
        Line {
            status: Status::Failed,
            text,
        }
    }

    /// `ok TEXT` etc., one line (the text never holds a line break).
    pub fn encode(&self) -> String {
        let word = match self.status {
            Status::Ok => "ok",
            Status::Unknown => "unknown",
            Status::Failed => "failed",
        };
        format!("{word} {}\n", self.text.replace(['\r', '\n'], " "))
    }

    pub fn decode(line: &str) -> Option<Line> {
        let (word, text) = line.split_once(' ').unwrap_or((line, ""));
        let status = match word {
            "ok" => Status::Ok,
            "unknown" => Status::Unknown,
            "failed" => Status::Failed,
            _ => return None,
        };
        Some(Line {
            status,
            text: text.to_string(),
        })
    }
}

/// Control characters of a typed argument are shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Carries out `cmd` on the spool and the engine, all of it at once: in the command's own
/// process holding the spool lock with no daemon (`running` false: nothing is scheduled there,
/// and the daemon attempts every entry that is not held when it starts). The daemon runs the
/// same steps a slice at a time (`Progress`).
pub fn apply(
    cmd: &Command,
    spool: &mut Spool,
    engine: &mut Engine,
    running: bool,
    wall: SystemTime,
) -> Vec<Line> {
    let mut progress = Progress::new(cmd.clone());
    let mut out = Vec::new();
    while !progress.step(spool, engine, running, wall, Instant::now(), &mut out) {}
    out
}

/// A queue command being carried out in the daemon, a slice of its entries at a time between
/// delivery batches (`running` true), so that a command over thousands of entries (each a
/// file created or removed and a sync of `queue/`) never holds the other clients for more
/// than a slice; delivery waits until the command is done (the reactor starts no batch
/// meanwhile), so it never acts on an entry being attempted.
pub struct Progress {
    cmd: Command,
    /// The entries to act on, in the order given (`DeleteAll`: listed at the first step).
    ids: Vec<QueueId>,
    next: usize,
    started: bool,
}

impl Progress {
    pub fn new(cmd: Command) -> Progress {
        let ids = match &cmd {
            Command::Flush(ids)
            | Command::Hold(ids)
            | Command::Release(ids)
            | Command::Delete(ids)
            | Command::Bounce(ids) => ids.clone(),
            Command::DeleteAll => Vec::new(),
        };
        Progress {
            cmd,
            ids,
            next: 0,
            started: false,
        }
    }

    /// Acts on entries until `deadline` has passed (on one at least), appending a reply line
    /// for each to `out`; true when the command is done.
    pub fn step(
        &mut self,
        spool: &mut Spool,
        engine: &mut Engine,
        running: bool,
        wall: SystemTime,
        deadline: Instant,
        out: &mut Vec<Line>,
    ) -> bool {
        if !std::mem::replace(&mut self.started, true) {
            match &self.cmd {
                Command::Flush(ids) if ids.is_empty() => {
                    out.push(flush_all(engine, running));
                    return true;
                }
                Command::DeleteAll => match spool.ids() {
                    Ok(ids) if ids.is_empty() => {
                        out.push(Line::ok("the queue is empty".into()));
                        return true;
                    }
                    Ok(ids) => self.ids = ids,
                    Err(e) => {
                        out.push(Line::failed(format!("cannot list the queue: {e}")));
                        return true;
                    }
                },
                _ => {}
            }
        }
        while let Some(id) = self.ids.get(self.next) {
            self.next += 1;
            out.push(match &self.cmd {
                Command::DeleteAll => delete(id, spool, engine),
                _ if !spool.contains(id) => Line::unknown(id),
                cmd => act(cmd, id, spool, engine, running, wall),
            });
            if Instant::now() >= deadline {
                break;
            }
        }
        self.next >= self.ids.len()
    }
}

fn flush_all(engine: &mut Engine, running: bool) -> Line {
    if running {
        let n = engine.schedule.len();
        engine.schedule.flush();
        info!("queue run requested by postling queue flush: {n} message(s) due now");
        Line::ok(format!("{n} message(s) due now"))
    } else {
        Line::ok(
            "no daemon running: every message that is not held is attempted when it starts".into(),
        )
    }
}

/// One entry of a command (that the spool holds).
fn act(
    cmd: &Command,
    id: &QueueId,
    spool: &mut Spool,
    engine: &mut Engine,
    running: bool,
    wall: SystemTime,
) -> Line {
    match cmd {
        Command::Flush(_) => {
            if spool.is_held(id) {
                Line::ok(format!(
                    "{id}: held; it stays held (release it to deliver it)"
                ))
            } else if running {
                engine.flush_one(id.clone());
                Line::ok(format!("{id}: due now"))
            } else {
                Line::ok(format!("{id}: attempted when the daemon starts"))
            }
        }
        Command::Hold(_) => match spool.hold(id) {
            Ok(created) => {
                engine.hold(id.clone());
                if created {
                    info!("{id}: held by postling queue hold");
                    Line::ok(format!("{id}: held"))
                } else {
                    Line::ok(format!("{id}: held already"))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Line::unknown(id),
            Err(e) => {
                warn!("{id}: cannot hold: {e}");
                Line::failed(format!("{id}: cannot hold: {e}"))
            }
        },
        Command::Release(_) => match spool.release(id) {
            Ok(true) => {
                info!("{id}: released by postling queue release");
                if running {
                    engine.release(id.clone());
                    Line::ok(format!("{id}: released, due now"))
                } else {
                    Line::ok(format!("{id}: released, attempted when the daemon starts"))
                }
            }
            Ok(false) => Line::ok(format!("{id}: was not held")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Line::unknown(id),
            Err(e) => {
                warn!("{id}: cannot release: {e}");
                Line::failed(format!("{id}: cannot release: {e}"))
            }
        },
        Command::Delete(_) | Command::DeleteAll => delete(id, spool, engine),
        Command::Bounce(_) => {
            let mut store = SpoolStore::immediate(spool);
            match engine.return_to_sender(id, &mut store, wall) {
                Ok(n) => Line::ok(format!("{id}: returned to the sender ({n} recipient(s))")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Line::unknown(id),
                Err(e) => {
                    warn!("{id}: cannot return to the sender: {e}");
                    Line::failed(format!("{id}: cannot return to the sender: {e}"))
                }
            }
        }
    }
}

fn delete(id: &QueueId, spool: &mut Spool, engine: &mut Engine) -> Line {
    match spool.remove_now(id) {
        Ok(()) => {
            engine.forget(id);
            info!("{id}: removed by postling queue delete");
            Line::ok(format!("{id}: deleted"))
        }
        Err(e) => {
            warn!("{id}: cannot delete: {e}");
            Line::failed(format!("{id}: cannot delete: {e}"))
        }
    }
}

/// Takes the spool lock: `flock` on the spool directory itself (no lock file whose owner
/// could differ from the directory's). `wait` blocks until it is free (the daemon at start-up,
/// where a command holds it for milliseconds); otherwise None when someone holds it.
pub fn lock_spool(dir: &Path, wait: bool) -> io::Result<Option<File>> {
    let f = File::open(dir)?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(f));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The address of the control socket in `dir`: its path when that fits a socket address,
/// else a path through the open directory (`/proc/self/fd/N/control.sock`), which does.
/// `dir_fd` must stay open while the address is used.
pub fn socket_address(dir: &Path, dir_fd: &File) -> PathBuf {
    let full = dir.join(SOCKET_NAME);
    // sun_path holds 108 bytes with the terminating NUL.
    if full.as_os_str().len() < 100 {
        full
    } else {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{SOCKET_NAME}",
            dir_fd.as_raw_fd()
        ))
    }
}

const LISTENER: Token = Token(usize::MAX - 1);
const CLIENT: Token = Token(usize::MAX - 2);

/// The daemon's end of the control socket: one client at a time (the next waits in the
/// listen backlog), read until its request line, answered once the engine is between
/// batches, then closed.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// The listener may have connections waiting (edge-triggered).
    backlog: bool,
    client: Option<Client>,
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    /// The request, once its line is complete, until it is carried out.
    request: Option<Result<Command, String>>,
    output: Vec<u8>,
    written: usize,
    /// Its command is being carried out: reply lines are written as they come, and the
    /// deadline waits until the last of them is out.
    working: bool,
    /// Some reply line was queued (a command that says nothing is answered `ok`).
    answered: bool,
    /// The reply is complete: the client goes once `output` is written.
    finished: bool,
    /// Dropped when still connected by then.
    deadline: Instant,
}

impl ControlServer {
    /// Binds `spool_dir/control.sock` (replacing a stale one: the caller holds the spool lock,
    /// so no other daemon serves it) with mode 0600 and registers it.
    pub fn bind(spool_dir: &Path, registry: &Registry) -> io::Result<ControlServer> {
        let dir = File::open(spool_dir)?;
        let path = spool_dir.join(SOCKET_NAME);
        let addr = socket_address(spool_dir, &dir);
        match std::fs::remove_file(&addr) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // The umask decides the socket's mode at bind; 0600 from the first moment.
        // SAFETY: umask only changes this process's creation mask; restored at once.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(&addr);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mut listener = bound?;
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(ControlServer {
            listener,
            path,
            backlog: true,
            client: None,
        })
    }

    /// Is `token` one of ours?
    pub fn owns(token: Token) -> bool {
        token == LISTENER || token == CLIENT
    }

    /// A readiness event for one of our tokens.
    pub fn ready(&mut self, token: Token) {
        if token == LISTENER {
            self.backlog = true;
        }
    }

    /// Accepts a waiting client if none is being served, reads its request, writes its reply.
    pub fn turn(&mut self, registry: &Registry, now: Instant) {
        if self.client.is_none() && self.backlog {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if registry
                        .register(&mut stream, CLIENT, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        self.client = Some(Client {
                            stream,
                            input: Vec::new(),
                            request: None,
                            output: Vec::new(),
                            written: 0,
                            working: false,
                            answered: false,
                            finished: false,
                            deadline: now + limits::CONTROL_CLIENT_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.backlog = false,
                Err(e) => {
                    warn!("control: accept failed: {e}");
                    self.backlog = false;
                }
            }
        }
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let done = if c.deadline <= now && !c.working {
            warn!("control: client did not finish in time; dropped");
            true
        } else {
            c.read_request() || c.write_reply()
        };
        if done {
            self.drop_client(registry);
        }
    }

    fn drop_client(&mut self, registry: &Registry) {
        if let Some(mut c) = self.client.take() {
            let _ = registry.deregister(&mut c.stream);
        }
        // The next client may already wait: make the next turn look.
        self.backlog = true;
    }

    /// A request waiting to be carried out (parse errors are answered at once); its reply
    /// comes through `reply_part`.
    pub fn take_request(&mut self) -> Option<Command> {
        let c = self.client.as_mut()?;
        if c.finished || c.working {
            return None;
        }
        match c.request.take()? {
            Ok(cmd) => {
                c.working = true;
                Some(cmd)
            }
            Err(e) => {
                c.set_reply(&[Line::failed(e)]);
                None
            }
        }
    }

    /// Reply lines to the request `take_request` gave (`done`: the last of them), written
    /// now as far as the socket takes; the client has `limits::CONTROL_CLIENT_TIMEOUT` from
    /// the last to read them all. (A client gone meanwhile is not told.)
    pub fn reply_part(&mut self, lines: &[Line], done: bool, registry: &Registry, now: Instant) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        if !c.working {
            return;
        }
        for line in lines {
            c.output.extend_from_slice(line.encode().as_bytes());
            c.answered = true;
        }
        if done {
            if !c.answered {
                c.output.extend_from_slice(b"ok\n");
            }
            c.working = false;
            c.finished = true;
            c.deadline = now + limits::CONTROL_CLIENT_TIMEOUT;
        }
        if c.write_reply() {
            self.drop_client(registry);
        }
    }

    /// The reactor must come back at once (a request or a waiting client to serve), or by
    /// the client's deadline.
    pub fn timeout(&self, now: Instant) -> Option<std::time::Duration> {
        match &self.client {
            Some(c) if c.request.is_some() => Some(std::time::Duration::ZERO),
            Some(c) => Some(c.deadline.saturating_duration_since(now)),
            None if self.backlog => Some(std::time::Duration::ZERO),
            None => None,
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Client {
    /// Reads until the request line is complete; true when the client is to be dropped.
    fn read_request(&mut self) -> bool {
        if self.request.is_some() || self.finished || self.working {
            return false;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    self.input
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    if let Some(end) = self.input.iter().position(|&b| b == b'\n') {
                        let line = self.input.get(..end).unwrap_or_default();
                        self.request = Some(match std::str::from_utf8(line) {
                            Ok(text) => {
                                let words: Vec<&str> = text.split_ascii_whitespace().collect();
                                Command::parse(&words)
                            }
                            Err(_) => Err("request is not UTF-8".into()),
                        });
                        self.input = Vec::new();
                        return false;
                    }
                    if self.input.len() > limits::CONTROL_MAX_REQUEST {
                        self.set_reply(&[Line::failed("request too long".into())]);
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    fn set_reply(&mut self, lines: &[Line]) {
        self.output = lines
            .iter()
            .map(Line::encode)
            .collect::<String>()
            .into_bytes();
        if self.output.is_empty() {
            self.output = b"ok\n".to_vec();
        }
        self.written = 0;
        self.input = Vec::new();
        self.request = None;
        self.finished = true;
    }

    /// Writes what the socket takes; true when the whole reply is out (or cannot be
    /// delivered).
    fn write_reply(&mut self) -> bool {
        while self.written < self.output.len() {
            match self
                .stream
                .write(self.output.get(self.written..).unwrap_or_default())
            {
                Ok(0) => return true,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        // All written so far (more may come while the command runs).
        self.output.clear();
        self.written = 0;
        self.finished
    }
}

#[cfg(test)]
mod tests;
