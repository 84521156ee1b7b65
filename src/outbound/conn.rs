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
use crate::buf::{InBuf, OutBuf, TlsInBuf};
use crate::limits;
use crate::proto::smtp_client::{ClientNext, ClientSettings, Outcome, SmtpClient};
use crate::tls::{Buffers, TlsClientSession};

/// How a connection protects itself, chosen by the manager per destination.
#[derive(Clone)]
pub enum TlsMode {
    /// Never TLS (or STARTTLS refused for lack of a configuration).
    Off,
    /// STARTTLS when the session asks for it, with this configuration.
    Starttls(std::sync::Arc<rustls::ClientConfig>),
    /// TLS from the first byte (RFC 8314).
    Implicit(std::sync::Arc<rustls::ClientConfig>),
}

/// How a new connection talks: the client session's settings, TLS, the connect timeout.
pub struct Setup {
    pub client: Rc<ClientSettings>,
    pub tls: TlsMode,
    pub connect_timeout: std::time::Duration,
}

/// The TLS layer of an outbound connection: ciphertext buffers around the session's
/// plaintext ones.
struct ClientTls {
    session: TlsClientSession,
    tls_in: Box<TlsInBuf>,
    tls_out: Box<OutBuf>,
    /// Decrypted plaintext waits in the session for room in the input buffer.
    held: bool,
    /// The session was told the handshake is done (STARTTLS).
    told: bool,
}

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
    /// Every LF read becomes CRLF (`DataLocation::lf`).
    lf: bool,
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
    /// A STARTTLS handshake failed: opportunistic TLS may try again in plain text.
    pub tls_failed: bool,
    /// No route could be connected to, and why: what else waits for the destination defers
    /// too rather than each message waiting for its own connect timeouts.
    pub unreachable: Option<String>,
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
    tls_mode: TlsMode,
    tls: Option<Box<ClientTls>>,
    /// TLS is up (the handshake is done), for the log.
    pub tls_negotiated: Option<(&'static str, &'static str)>,
    /// A STARTTLS handshake failed on this connection.
    tls_failed: bool,
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
        setup: Setup,
        registry: &Registry,
        now: Instant,
    ) -> Result<OutConn, Box<(Part, String)>> {
        let Setup {
            client: settings,
            tls: tls_mode,
            connect_timeout,
        } = setup;
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
            tls_mode,
            tls: None,
            tls_negotiated: None,
            tls_failed: false,
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
    pub fn carries(&self, id: &crate::mail::QueueId) -> bool {
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
                    // Commands are small writes answered by the peer: without this, Nagle's
                    // algorithm and the peer's delayed ACK cost ~40 ms per exchange.
                    let _ = s.set_nodelay(true);
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
                    self.tls = None;
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
            unreachable: Some(reason.clone()),
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
                    let message = part.message();
                    let implicit = match &self.tls_mode {
                        TlsMode::Implicit(config) => Some(config.clone()),
                        _ => None,
                    };
                    let mut failed = None;
                    if let Some(config) = implicit {
                        failed = self.start_tls(config).err();
                    }
                    let tls_up = self.tls.is_some() || failed.is_some();
                    let mut client = SmtpClient::new(self.settings.clone(), message, tls_up, now);
                    if let Some(why) = failed {
                        // The recipients defer at once with the reason.
                        client.abort(&why);
                    }
                    self.state = State::Session(Box::new(client));
                    // The client speaks first in TLS: its hello goes out now.
                    self.pump_tls();
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
                    // Response injection: nothing the server sent before the handshake counts.
                    self.input.clear();
                    if self.tls.is_none() {
                        let started = match &self.tls_mode {
                            TlsMode::Starttls(config) => self.start_tls(config.clone()),
                            _ => Err("4.7.0 STARTTLS without a TLS configuration".to_string()),
                        };
                        if let Err(e) = started {
                            if let State::Session(client) = &mut self.state {
                                client.abort(&e);
                            }
                        }
                    } else if !self.can_read && !self.can_write {
                        return out;
                    }
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
                    out.tls_failed = self.tls_failed;
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
            // (In the LF form half a chunk at most: each byte may become two.)
            let room = if d.lf {
                d.chunk.len() / 2
            } else {
                d.chunk.len()
            };
            let want = room.min(usize::try_from(d.left).unwrap_or(usize::MAX));
            match d.file.read(&mut d.chunk[..want]) {
                Ok(0) => {
                    client.abort("the queued message is shorter than its entry says");
                    return true;
                }
                Ok(n) => {
                    d.start = 0;
                    d.end = if d.lf {
                        crlf_in_place(&mut d.chunk[..], n)
                    } else {
                        n
                    };
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

    /// Starts the TLS layer for the route's name (SNI, and the name a verified
    /// configuration checks).
    fn start_tls(&mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Result<(), String> {
        let name = self
            .routes
            .get(self.route)
            .map_or_else(String::new, |r| r.host.clone());
        let session = TlsClientSession::new(config, &name)
            .map_err(|e| format!("4.7.0 TLS with {name}: {e}"))?;
        self.tls = Some(Box::new(ClientTls {
            session,
            tls_in: TlsInBuf::new_boxed(),
            tls_out: OutBuf::new_boxed(),
            held: false,
            told: false,
        }));
        Ok(())
    }

    /// One read from the socket: plaintext straight into the session's input; with TLS into
    /// the ciphertext buffer (when the session wants more), then through the TLS layer.
    fn read(&mut self) -> io::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        match self.tls.as_mut() {
            None => {
                read_into(s, &mut self.input, &mut self.eof, &mut self.can_read)?;
            }
            Some(t) => {
                if t.session.wants_read() && !t.held {
                    read_into(s, &mut t.tls_in, &mut self.eof, &mut self.can_read)?;
                }
                self.pump_tls();
            }
        }
        Ok(())
    }

    /// Moves bytes through the TLS layer until it stops: ciphertext in → plaintext into the
    /// session's input; the session's output → records to send.
    fn pump_tls(&mut self) {
        let Some(t) = self.tls.as_mut() else {
            return;
        };
        for _ in 0..limits::TLS_PUMPS_PER_CALL {
            let p = t.session.pump(Buffers {
                tls_in: t.tls_in.bytes_mut(),
                plain_out: self.output.bytes(),
                plain_in: self.input.spare_mut(),
                tls_out: t.tls_out.spare_mut(),
            });
            t.tls_in.consume(p.tls_consumed);
            self.output.consume(p.plain_consumed);
            self.input.commit(p.plaintext_len);
            t.tls_out.commit(p.tls_out_len);
            t.held = p.plaintext_held;
            if let Some(e) = p.error {
                let label = self
                    .routes
                    .get(self.route)
                    .map_or_else(|| "the server".to_string(), Route::label);
                let why = if t.session.handshake_done() {
                    format!("4.7.0 TLS with {label} failed: {e}")
                } else {
                    self.tls_failed = matches!(self.tls_mode, TlsMode::Starttls(_));
                    format!("4.7.0 TLS handshake with {label} failed: {e}")
                };
                if let State::Session(c) = &mut self.state {
                    c.abort(&why);
                }
                return;
            }
            if t.session.handshake_done() && !t.told {
                t.told = true;
                self.tls_negotiated = t.session.negotiated();
                if let State::Session(c) = &mut self.state {
                    // After STARTTLS the dialog starts over; with implicit TLS the session
                    // was made with TLS up and ignores this.
                    c.tls_established(Instant::now());
                }
            }
            if (p.peer_closed || p.closed) && !p.plaintext_held {
                self.eof = true;
            }
            let moved = p.tls_consumed + p.plain_consumed + p.plaintext_len + p.tls_out_len > 0;
            if !moved || p.closed {
                return;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tls.is_some() {
            self.pump_tls();
        }
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let buf = match self.tls.as_mut() {
            Some(t) => &mut *t.tls_out,
            None => &mut *self.output,
        };
        while !buf.is_empty() && self.can_write {
            match s.write(buf.bytes()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.can_write = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tls.is_some() && !self.output.is_empty() && self.can_write {
            // Records went out: encrypt more of what waits.
            self.pump_tls();
        }
        Ok(())
    }
}

/// One read from the socket into `buf`; notes EOF and WouldBlock.
fn read_into<const N: usize>(
    s: &mut TcpStream,
    buf: &mut crate::buf::Buf<N>,
    eof: &mut bool,
    can_read: &mut bool,
) -> io::Result<usize> {
    let spare = buf.spare_mut();
    if spare.is_empty() {
        // Full: nothing is read until the session or the TLS layer takes some.
        return Ok(0);
    }
    loop {
        match s.read(spare) {
            Ok(0) => {
                *eof = true;
                return Ok(0);
            }
            Ok(n) => {
                buf.commit(n);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *can_read = false;
                return Ok(0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
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
            lf: self.data.lf,
            chunk: Box::new([0; limits::OUTBOUND_DATA_CHUNK]),
            start: 0,
            end: 0,
        })
    }
}

/// Turns every LF of `buf[..n]` into CRLF in place (`buf` has room for the growth: at least
/// twice `n`); returns the new length.
fn crlf_in_place(buf: &mut [u8], n: usize) -> usize {
    let lfs = memchr::memchr_iter(b'\n', &buf[..n]).count();
    let mut w = n + lfs;
    for r in (0..n).rev() {
        let b = buf[r];
        w -= 1;
        buf[w] = b;
        if b == b'\n' {
            w -= 1;
            buf[w] = b'\r';
        }
    }
    n + lfs
}

fn local_detail(text: &str) -> crate::proto::smtp_client::Detail {
    crate::proto::smtp_client::Detail {
        reply: None,
        text: text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::crlf_in_place;

    #[test]
    fn lf_data_goes_out_with_crlf() {
        let mut buf = [0u8; 16];
        buf[..6].copy_from_slice(b"a\nb\r\n\n");
        let n = crlf_in_place(&mut buf, 6);
        assert_eq!(&buf[..n], b"a\r\nb\r\r\n\r\n");
        assert_eq!(crlf_in_place(&mut buf, 0), 0);
    }
}
