//! One outbound SMTP connection: its socket, its buffers, the client session driving it, the
//! message data read from the spool, and the routes it may still try. The manager
//! (`outbound`) owns the connections and hands them messages; this module moves bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::Part;
use super::route::Route;
use crate::buf::{InBuf, OutBuf};
use crate::limits;
use crate::proto::smtp_client::{ClientNext, ClientSettings, Outcome, SmtpClient};

/// Where a connection stands.
enum State {
    /// Waiting for the TCP connect to `routes[route]` to finish.
    Connecting { deadline: Instant },
    /// The SMTP dialog runs.
    Session(Box<SmtpClient>),
    /// Nothing more to do: the manager removes it.
    Done,
}

/// A message's data being sent: the spool file, what is left of it, and a chunk read but not
/// yet taken by the session (dot-stuffing may take less than a whole chunk).
struct DataReader {
    file: File,
    left: u64,
    chunk: Box<[u8; limits::OUTBOUND_DATA_CHUNK]>,
    start: usize,
    end: usize,
}

/// What one `drive` call produced for the manager.
#[derive(Default)]
pub struct Driven {
    /// Messages finished on this connection, with one verdict per recipient.
    pub finished: Vec<(Part, Vec<Outcome>, String)>,
    /// The connection is over (its part, if any, is in `finished`).
    pub closed: bool,
}

pub struct OutConn {
    pub token: Token,
    /// The addresses this connection may try, in order; `route` is the current one.
    routes: Rc<Vec<Route>>,
    route: usize,
    stream: Option<TcpStream>,
    state: State,
    settings: Rc<ClientSettings>,
    input: Box<InBuf>,
    output: Box<OutBuf>,
    can_read: bool,
    can_write: bool,
    eof: bool,
    /// The message being sent, and its data once the session asks for it.
    part: Option<Part>,
    data: Option<DataReader>,
    /// Messages carried so far (a connection says QUIT after
    /// `limits::OUTBOUND_MESSAGES_PER_CONNECTION`).
    sent: usize,
    /// Why the last connect attempts failed, for the deferral reason.
    connect_errors: Vec<String>,
    connect_timeout: std::time::Duration,
    /// The drive loop stopped at its bound with work left: drive again this turn.
    pub more: bool,
}

impl OutConn {
    /// Starts connecting to the first route that takes a socket; None (with `part` handed
    /// back and the reason) when none does.
    pub fn open(
        token: Token,
        routes: Rc<Vec<Route>>,
        part: Part,
        settings: Rc<ClientSettings>,
        connect_timeout: std::time::Duration,
        registry: &Registry,
        now: Instant,
    ) -> Result<OutConn, Box<(Part, String)>> {
        let mut c = OutConn {
            token,
            routes,
            route: 0,
            stream: None,
            state: State::Done,
            settings,
            input: InBuf::new_boxed(),
            output: OutBuf::new_boxed(),
            can_read: false,
            can_write: false,
            eof: false,
            part: None,
            data: None,
            sent: 0,
            connect_errors: Vec::new(),
            connect_timeout,
            more: false,
        };
        if c.connect_from(0, registry, now) {
            c.part = Some(part);
            Ok(c)
        } else {
            Err(Box::new((part, c.connect_failure())))
        }
    }

    /// The server being talked to, `host[ip]:port` (the log's `relay=`).
    pub fn label(&self) -> String {
        self.routes
            .get(self.route)
            .map_or_else(|| "none".to_string(), Route::label)
    }

    /// When `on_timeout` is due.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { deadline } => Some(*deadline),
            State::Session(c) => c.deadline(),
            State::Done => None,
        }
    }

    /// The queue id of the message on this connection.
    pub fn carries(&self, id: &crate::spool::QueueId) -> bool {
        self.part.as_ref().is_some_and(|p| &p.id == id)
    }

    /// Connects to the first route from `first` that takes a socket; false when none did.
    fn connect_from(&mut self, first: usize, registry: &Registry, now: Instant) -> bool {
        self.close_socket(registry);
        for i in first..self.routes.len() {
            let Some(route) = self.routes.get(i) else {
                break;
            };
            match TcpStream::connect(route.addr) {
                Ok(mut s) => {
                    if let Err(e) = registry.register(
                        &mut s,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.connect_errors.push(format!("{}: {e}", route.label()));
                        continue;
                    }
                    self.stream = Some(s);
                    self.route = i;
                    self.can_read = false;
                    self.can_write = false;
                    self.eof = false;
                    self.input.clear();
                    self.output.clear();
                    self.state = State::Connecting {
                        deadline: now + self.connect_timeout,
                    };
                    return true;
                }
                Err(e) => self.connect_errors.push(format!("{}: {e}", route.label())),
            }
        }
        self.route = self.routes.len();
        false
    }

    fn close_socket(&mut self, registry: &Registry) {
        if let Some(mut s) = self.stream.take() {
            let _ = registry.deregister(&mut s);
        }
    }

    fn connect_failure(&self) -> String {
        format!(
            "4.4.1 cannot connect: {}",
            if self.connect_errors.is_empty() {
                "no address to try".to_string()
            } else {
                self.connect_errors.join("; ")
            }
        )
    }

    /// The poller's news for this socket.
    pub fn ready(&mut self, readable: bool, writable: bool) {
        self.can_read |= readable;
        self.can_write |= writable;
    }

    /// The deadline passed: a connect moves on to the next route; a dialog step fails.
    pub fn on_timeout(
        &mut self,
        registry: &Registry,
        now: Instant,
        next: &mut dyn FnMut() -> Option<Part>,
    ) -> Driven {
        match &mut self.state {
            State::Connecting { deadline } if *deadline <= now => {
                let label = self.label();
                self.connect_errors
                    .push(format!("{label}: connect timed out"));
                let from = self.route + 1;
                if !self.connect_from(from, registry, now) {
                    return self.give_up(registry);
                }
                Driven::default()
            }
            State::Session(c) => {
                c.on_timeout(now);
                self.drive(registry, now, next)
            }
            _ => Driven::default(),
        }
    }

    /// Every route failed before a dialog started: the part goes back with the reasons.
    fn give_up(&mut self, registry: &Registry) -> Driven {
        self.close_socket(registry);
        self.state = State::Done;
        let reason = self.connect_failure();
        let mut d = Driven {
            closed: true,
            ..Driven::default()
        };
        if let Some(p) = self.part.take() {
            let n = p.recipients.len();
            d.finished.push((
                p,
                vec![Outcome::Temporary(local_detail(&reason)); n],
                "none".to_string(),
            ));
        }
        d
    }

    /// Moves bytes and steps the session until it waits for the network (or a bound is
    /// reached: `more` is then set). `next` hands over the destination's next message.
    pub fn drive(
        &mut self,
        registry: &Registry,
        now: Instant,
        next: &mut dyn FnMut() -> Option<Part>,
    ) -> Driven {
        let mut out = Driven::default();
        self.more = false;
        if let State::Connecting { .. } = self.state {
            if !self.can_write && !self.can_read {
                return out;
            }
            let connected = match self.stream.as_ref() {
                Some(s) => match s.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => s.peer_addr().map(|_| ()),
                },
                None => Err(io::Error::other("no socket")),
            };
            match connected {
                Ok(()) => {
                    let Some(part) = self.part.as_ref() else {
                        self.close_socket(registry);
                        self.state = State::Done;
                        out.closed = true;
                        return out;
                    };
                    let client = SmtpClient::new(self.settings.clone(), part.message(), false, now);
                    self.state = State::Session(Box::new(client));
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    // Not yet (a spurious wake-up): wait for the next event.
                    self.can_read = false;
                    self.can_write = false;
                    return out;
                }
                Err(e) => {
                    let label = self.label();
                    self.connect_errors.push(format!("{label}: {e}"));
                    let from = self.route + 1;
                    if !self.connect_from(from, registry, now) {
                        return self.give_up(registry);
                    }
                    return out;
                }
            }
        }
        for _ in 0..limits::OUTBOUND_STEPS_PER_DRIVE {
            if let Err(e) = self.flush() {
                self.abort(&format!("write failed: {e}"));
            }
            if !self.eof && self.can_read && !self.input.is_full() {
                if let Err(e) = self.read() {
                    self.abort(&format!("read failed: {e}"));
                }
            }
            let State::Session(client) = &mut self.state else {
                return out;
            };
            let step = client.step(self.input.bytes(), now, &mut self.output);
            self.input.consume(step.consumed);
            match step.next {
                ClientNext::NeedInput => {
                    if self.eof {
                        client.peer_closed();
                        continue;
                    }
                    let can_flush = !self.output.is_empty() && self.can_write;
                    if !(self.can_read || can_flush) {
                        return out;
                    }
                }
                ClientNext::NeedOutput => {
                    if !self.can_write {
                        return out;
                    }
                }
                ClientNext::NeedData => {
                    if !self.feed_data(now) && !self.can_write {
                        return out;
                    }
                }
                ClientNext::StartTls => {
                    // No TLS client in this build of the connection: give up on TLS here.
                    self.input.clear();
                    client.abort("4.7.0 TLS is not available for outbound connections");
                }
                ClientNext::MessageDone => {
                    let outcomes = client.take_outcomes().unwrap_or_default();
                    self.sent += 1;
                    self.data = None;
                    let label = self.label();
                    if let Some(done) = self.part.take() {
                        out.finished.push((done, outcomes, label));
                    }
                    let following = if self.sent < limits::OUTBOUND_MESSAGES_PER_CONNECTION {
                        next()
                    } else {
                        None
                    };
                    let State::Session(client) = &mut self.state else {
                        return out;
                    };
                    match following {
                        Some(p) => {
                            let msg = p.message();
                            self.part = Some(p);
                            if let Err(m) = client.next_message(msg, now) {
                                // Cannot happen after MessageDone; keep the message safe.
                                let _ = m;
                                client.quit(now);
                            }
                        }
                        None => client.quit(now),
                    }
                }
                ClientNext::Close => {
                    let outcomes = client.take_outcomes();
                    let _ = self.flush();
                    let label = self.label();
                    if let Some(p) = self.part.take() {
                        let n = p.recipients.len();
                        let outcomes = outcomes.unwrap_or_else(|| {
                            vec![Outcome::Temporary(local_detail("connection closed")); n]
                        });
                        out.finished.push((p, outcomes, label));
                    }
                    self.close_socket(registry);
                    self.state = State::Done;
                    out.closed = true;
                    return out;
                }
            }
        }
        self.more = true;
        out
    }

    /// A local failure (socket, spool file): every open recipient defers.
    fn abort(&mut self, reason: &str) {
        if let State::Session(c) = &mut self.state {
            c.abort(reason);
        }
        self.can_read = false;
        self.can_write = false;
    }

    /// Cancels the connection (its message was removed from the queue): the session ends
    /// now and its outcomes are dropped by the caller.
    pub fn cancel(&mut self, registry: &Registry) {
        self.close_socket(registry);
        self.part = None;
        self.data = None;
        self.state = State::Done;
    }

    /// Hands spool data to the session; true when it made progress.
    fn feed_data(&mut self, now: Instant) -> bool {
        let State::Session(client) = &mut self.state else {
            return false;
        };
        if self.data.is_none() {
            let opened = self.part.as_ref().map(|p| p.open_data());
            match opened {
                Some(Ok(d)) => self.data = Some(d),
                Some(Err(e)) => {
                    client.abort(&format!("cannot read the queued message: {e}"));
                    return true;
                }
                None => {
                    client.abort("no message to send");
                    return true;
                }
            }
        }
        let Some(d) = self.data.as_mut() else {
            return false;
        };
        if d.start == d.end {
            if d.left == 0 {
                return client.end_data(now, &mut self.output);
            }
            let want = d.chunk.len().min(d.left as usize);
            match d.file.read(&mut d.chunk[..want]) {
                Ok(0) => {
                    client.abort("the queued message is shorter than its entry says");
                    return true;
                }
                Ok(n) => {
                    d.start = 0;
                    d.end = n;
                    d.left -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
                Err(e) => {
                    client.abort(&format!("cannot read the queued message: {e}"));
                    return true;
                }
            }
        }
        let taken = client.send_data(&d.chunk[d.start..d.end], now, &mut self.output);
        d.start += taken;
        taken > 0
    }

    fn read(&mut self) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let spare = self.input.spare_mut();
        loop {
            match s.read(spare) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.input.commit(n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.can_read = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        while !self.output.is_empty() && self.can_write {
            match s.write(self.output.bytes()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.output.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.can_write = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Part {
    /// Opens the message data in the spool at its first byte.
    fn open_data(&self) -> io::Result<DataReader> {
        let mut file = File::open(&self.data.path)?;
        file.seek(SeekFrom::Start(self.data.offset))?;
        Ok(DataReader {
            file,
            left: self.data.len,
            chunk: Box::new([0; limits::OUTBOUND_DATA_CHUNK]),
            start: 0,
            end: 0,
        })
    }
}

fn local_detail(text: &str) -> crate::proto::smtp_client::Detail {
    crate::proto::smtp_client::Detail {
        reply: None,
        text: text.to_string(),
    }
}
