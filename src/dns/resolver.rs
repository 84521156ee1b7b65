//! The resolver session: a sans-I/O state machine that turns "resolve this name" into
//! datagrams and TCP exchanges for a driver to carry out, and the driver's input back into
//! results. It never touches a socket or a clock: every call takes `now`, and the driver asks
//! `next_deadline` when to call `handle_timeout`.
//!
//! A lookup asks one or two questions (MX; or A and AAAA). Each question is asked of one
//! server at a time with a fresh id from the kernel's CSPRNG; an answer counts only when it
//! comes from that server, carries that id and echoes the question; anything else is counted
//! and dropped, so a spoofer must guess 16 random bits while the question is in flight.
//! No answer within the timeout, a malformed answer, SERVFAIL, REFUSED or any other error
//! code moves the question to the next server; a server that answered with an error is not
//! asked again for that question. After `limits::DNS_ROUNDS` rounds over the servers the
//! question fails temporarily. A truncated UDP answer (TC) repeats the question over TCP to
//! the same server (RFC 7766 §5).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::wire::{self, Name, NameError, Outcome, QType, WireError};
use crate::limits;

/// The reason every lookup fails with while no server is configured.
pub const NO_SERVERS: &str = "no DNS servers (resolv.conf has none and dns_servers is empty)";

/// Names one lookup for the caller; unique for the resolver's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// Names one TCP connection the driver opened for the resolver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpId(pub u64);

/// What a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The MX set of a mail domain.
    Mx,
    /// The A and AAAA addresses of a host.
    Addresses,
}

/// The result of an MX lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxResult {
    /// The exchanges, lowest preference first (equal preferences in the order received).
    Hosts(Vec<(u16, Name)>),
    /// The domain exists but has no MX: its own A/AAAA are the implicit MX (RFC 5321 §5.1).
    NoMx,
    /// A single MX with the root as exchange (RFC 7505): the domain accepts no mail.
    NullMx,
    /// The domain does not exist: permanent.
    NxDomain,
    /// Try again later, with the reason.
    TempFail(String),
}

/// The result of an address lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrResult {
    /// IPv4 addresses first, then IPv6, each in the order received.
    Addrs(Vec<IpAddr>),
    /// The name exists but has neither A nor AAAA records.
    NoAddresses,
    NxDomain,
    TempFail(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Mx(MxResult),
    Addresses(AddrResult),
}

/// What the driver must do next; drained with `Resolver::poll_output`.
// `Done` carries an inline 255-octet name: outputs live only between a call and the driver
// draining them, so boxing would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram to `server` from the resolver's UDP socket.
    Send {
        server: SocketAddr,
        datagram: Vec<u8>,
    },
    /// Connect to `server` over TCP, write `request` (already length-prefixed) and pass what
    /// arrives to `handle_tcp_data`, or report the failure or EOF to `handle_tcp_closed`.
    TcpConnect {
        conn: TcpId,
        server: SocketAddr,
        request: Vec<u8>,
    },
    /// The resolver is done with this connection: close it.
    TcpClose { conn: TcpId },
    /// A lookup finished.
    Done {
        lookup: LookupId,
        name: Name,
        answer: Answer,
    },
}

/// Counters for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent (first tries and retries).
    pub sent: u64,
    /// Datagrams dropped: unknown id, wrong server, wrong question, not a response.
    pub ignored: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// TCP exchanges started after a truncated answer.
    pub tcp: u64,
}

#[derive(Debug)]
enum Transport {
    Udp,
    Tcp { conn: TcpId, buf: Vec<u8> },
}

/// One question being asked (or waiting for a slot).
#[derive(Debug)]
struct Question {
    lookup: LookupId,
    qtype: QType,
    qname: Name,
    id: u16,
    /// Attempts made so far, counting the current one; attempt k goes to server k mod n.
    attempt: usize,
    server: SocketAddr,
    /// Servers (by index) that answered with an error: not asked again.
    failed: u32,
    transport: Transport,
    deadline: Instant,
    last_error: String,
    /// Whether queries carry an OPT record; cleared after a FORMERR (RFC 6891 §7: a server
    /// that does not know EDNS is asked again without it).
    edns: bool,
}

/// What one question came to.
#[derive(Clone, Debug)]
enum QResult {
    Mx(Vec<(u16, Name)>),
    Addrs(Vec<IpAddr>),
    NoData,
    NxDomain,
    Temp(String),
}

struct Lookup {
    want: Want,
    name: Name,
    /// CNAME re-queries made so far (shared by the lookup's questions).
    chain: usize,
    /// For Addresses: the A and the AAAA result, as they arrive.
    a: Option<QResult>,
    aaaa: Option<QResult>,
}

/// A small pool of kernel random bytes: one getrandom(2) call per 32 query ids.
struct Rng {
    pool: [u8; 64],
    used: usize,
}

impl Rng {
    fn u16(&mut self) -> Result<u16, String> {
        if self.used + 2 > self.pool.len() {
            fill_random(&mut self.pool)?;
            self.used = 0;
        }
        let v = u16::from_be_bytes([self.pool[self.used], self.pool[self.used + 1]]);
        self.used += 2;
        Ok(v)
    }
}

/// Fills `buf` from the kernel CSPRNG (getrandom(2), blocking only before the pool is first
/// initialised at boot).
fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr().cast::<libc::c_void>(),
                buf.len() - done,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("no random DNS query id: getrandom: {e}"));
        }
        done += n as usize;
    }
    Ok(())
}

/// The resolver session. See the module documentation.
pub struct Resolver {
    servers: Vec<SocketAddr>,
    lookups: HashMap<LookupId, Lookup>,
    /// Questions on the wire, at most `limits::DNS_MAX_IN_FLIGHT`.
    active: Vec<Question>,
    /// Questions waiting for a slot, in order.
    waiting: VecDeque<Question>,
    out: VecDeque<Output>,
    next_lookup: u64,
    next_conn: u64,
    rng: Rng,
    stats: Stats,
}

impl Resolver {
    /// A resolver asking `servers` (at most `limits::DNS_MAX_SERVERS` are used). No servers
    /// is allowed: every lookup then fails temporarily with [`NO_SERVERS`].
    pub fn new(servers: Vec<SocketAddr>) -> Resolver {
        let mut r = Resolver {
            servers: Vec::new(),
            lookups: HashMap::new(),
            active: Vec::new(),
            waiting: VecDeque::new(),
            out: VecDeque::new(),
            next_lookup: 1,
            next_conn: 1,
            rng: Rng {
                pool: [0; 64],
                used: 64,
            },
            stats: Stats::default(),
        };
        r.set_servers(servers);
        r
    }

    /// Replaces the server list (resolv.conf changed). Questions in flight finish with the
    /// server they are asking; their next attempt uses the new list.
    pub fn set_servers(&mut self, mut servers: Vec<SocketAddr>) {
        servers.truncate(limits::DNS_MAX_SERVERS);
        self.servers = servers;
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Lookups not yet answered.
    pub fn pending(&self) -> usize {
        self.lookups.len()
    }

    /// Starts a lookup. A name that is not a domain name is refused here; every other
    /// failure (no servers, too many lookups) arrives as a `Done` output like any answer.
    pub fn resolve(&mut self, now: Instant, name: &str, want: Want) -> Result<LookupId, NameError> {
        let name = Name::from_text(name)?;
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let fail = if self.servers.is_empty() {
            Some(NO_SERVERS.to_string())
        } else if self.lookups.len() >= limits::DNS_MAX_LOOKUPS {
            Some(format!(
                "resolver busy: {} lookups waiting",
                limits::DNS_MAX_LOOKUPS
            ))
        } else {
            None
        };
        if let Some(reason) = fail {
            let answer = match want {
                Want::Mx => Answer::Mx(MxResult::TempFail(reason)),
                Want::Addresses => Answer::Addresses(AddrResult::TempFail(reason)),
            };
            self.out.push_back(Output::Done {
                lookup: id,
                name,
                answer,
            });
            return Ok(id);
        }
        self.lookups.insert(
            id,
            Lookup {
                want,
                name: name.clone(),
                chain: 0,
                a: None,
                aaaa: None,
            },
        );
        match want {
            Want::Mx => self.enqueue(now, id, QType::Mx, name),
            Want::Addresses => {
                self.enqueue(now, id, QType::A, name.clone());
                self.enqueue(now, id, QType::Aaaa, name);
            }
        }
        self.pump(now);
        Ok(id)
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.iter().map(|q| q.deadline).min()
    }

    /// Moves every question whose attempt has run out of time on to its next attempt.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].deadline > now {
                i += 1;
                continue;
            }
            let mut q = self.active.swap_remove(i);
            self.stats.timeouts += 1;
            let (how, t) = match &q.transport {
                Transport::Udp => ("", udp_timeout(q.attempt, self.servers.len())),
                Transport::Tcp { conn, .. } => {
                    self.out.push_back(Output::TcpClose { conn: *conn });
                    (" over TCP", limits::DNS_TCP_TIMEOUT)
                }
            };
            q.last_error = format!(
                "{} {}: no answer from {}{how} within {}s",
                q.qtype,
                q.qname,
                q.server,
                t.as_secs()
            );
            self.retry(q, now, false);
        }
        self.pump(now);
    }

    /// A datagram arrived on the resolver's UDP socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, msg: &[u8]) {
        let Ok(h) = wire::parse_header(msg) else {
            self.stats.ignored += 1;
            return;
        };
        let Some(i) = self.active.iter().position(|q| {
            matches!(q.transport, Transport::Udp) && q.id == h.id && q.server == from
        }) else {
            self.stats.ignored += 1;
            return;
        };
        let q = &self.active[i];
        match wire::parse_response(msg, q.id, &q.qname, q.qtype) {
            // Not an answer to this question: possibly forged. Keep waiting for the real one.
            Err(WireError::IdMismatch | WireError::QuestionMismatch | WireError::NotResponse) => {
                self.stats.ignored += 1;
            }
            Ok(Outcome::Truncated) => {
                let mut q = self.active.swap_remove(i);
                self.switch_to_tcp(&mut q, now);
                self.active.push(q);
            }
            r => {
                let q = self.active.swap_remove(i);
                self.answered(q, r, now);
            }
        }
        self.pump(now);
    }

    /// Bytes arrived on a TCP connection the resolver asked for.
    pub fn handle_tcp_data(&mut self, now: Instant, conn: TcpId, bytes: &[u8]) {
        let Some(i) = self
            .active
            .iter()
            .position(|q| matches!(&q.transport, Transport::Tcp { conn: c, .. } if *c == conn))
        else {
            return;
        };
        let Transport::Tcp { buf, .. } = &mut self.active[i].transport else {
            return;
        };
        let room = 2 + limits::DNS_MESSAGE_MAX - buf.len();
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if buf.len() < 2 {
            return;
        }
        let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        if buf.len() < 2 + len {
            return;
        }
        let q = self.active.swap_remove(i);
        self.out.push_back(Output::TcpClose { conn });
        let Transport::Tcp { buf, .. } = &q.transport else {
            return;
        };
        let r = match wire::parse_response(&buf[2..2 + len], q.id, &q.qname, q.qtype) {
            // Over TCP a truncated answer cannot be improved on.
            Ok(Outcome::Truncated) => Err(WireError::Truncated),
            r => r,
        };
        self.answered(q, r, now);
        self.pump(now);
    }

    /// A TCP connection failed or was closed before a whole answer arrived.
    pub fn handle_tcp_closed(&mut self, now: Instant, conn: TcpId) {
        let Some(i) = self
            .active
            .iter()
            .position(|q| matches!(&q.transport, Transport::Tcp { conn: c, .. } if *c == conn))
        else {
            return;
        };
        let mut q = self.active.swap_remove(i);
        q.last_error = format!(
            "{} {}: TCP connection to {} closed without an answer",
            q.qtype, q.qname, q.server
        );
        self.retry(q, now, true);
        self.pump(now);
    }

    fn enqueue(&mut self, now: Instant, lookup: LookupId, qtype: QType, qname: Name) {
        self.waiting.push_back(Question {
            lookup,
            qtype,
            qname,
            id: 0,
            attempt: 0,
            server: SocketAddr::from(([0, 0, 0, 0], 0)),
            failed: 0,
            transport: Transport::Udp,
            deadline: now,
            last_error: String::new(),
            edns: true,
        });
    }

    /// Starts waiting questions while there are free slots.
    fn pump(&mut self, now: Instant) {
        while self.active.len() < limits::DNS_MAX_IN_FLIGHT {
            let Some(mut q) = self.waiting.pop_front() else {
                break;
            };
            if !self.lookups.contains_key(&q.lookup) {
                continue;
            }
            q.attempt = 0;
            if self.servers.is_empty() {
                self.question_done(
                    q.lookup,
                    q.qtype,
                    QResult::Temp(NO_SERVERS.to_string()),
                    now,
                );
                continue;
            }
            match self.send_udp(&mut q, now) {
                Ok(()) => self.active.push(q),
                Err(e) => self.question_done(q.lookup, q.qtype, QResult::Temp(e), now),
            }
        }
    }

    /// A fresh id not used by another question in flight to the same server.
    fn fresh_id(&mut self, server: SocketAddr) -> Result<u16, String> {
        loop {
            let id = self.rng.u16()?;
            if !self.active.iter().any(|q| q.id == id && q.server == server) {
                return Ok(id);
            }
        }
    }

    /// Sends attempt `q.attempt` over UDP to its server.
    fn send_udp(&mut self, q: &mut Question, now: Instant) -> Result<(), String> {
        let n = self.servers.len();
        q.server = self.servers[q.attempt % n];
        self.send_udp_to_current(q, now)
    }

    /// Sends the question over UDP to `q.server` again, with a fresh id.
    fn send_udp_to_current(&mut self, q: &mut Question, now: Instant) -> Result<(), String> {
        let n = self.servers.len();
        q.id = self.fresh_id(q.server)?;
        q.transport = Transport::Udp;
        q.deadline = now + udp_timeout(q.attempt, n);
        let msg = wire::build_query(q.id, &q.qname, q.qtype, q.edns);
        self.stats.sent += 1;
        self.out.push_back(Output::Send {
            server: q.server,
            datagram: msg.to_vec(),
        });
        Ok(())
    }

    /// The UDP answer was truncated: ask the same server over TCP.
    fn switch_to_tcp(&mut self, q: &mut Question, now: Instant) {
        let id = match self.fresh_id(q.server) {
            Ok(id) => id,
            Err(_) => q.id,
        };
        q.id = id;
        let conn = TcpId(self.next_conn);
        self.next_conn += 1;
        let msg = wire::build_query(id, &q.qname, q.qtype, q.edns);
        let mut request = Vec::with_capacity(2 + msg.len());
        request.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        request.extend_from_slice(&msg);
        q.transport = Transport::Tcp {
            conn,
            buf: Vec::new(),
        };
        q.deadline = now + limits::DNS_TCP_TIMEOUT;
        self.stats.tcp += 1;
        self.out.push_back(Output::TcpConnect {
            conn,
            server: q.server,
            request,
        });
    }

    /// The server answered (or sent something malformed that claims to be the answer).
    fn answered(&mut self, mut q: Question, r: Result<Outcome, WireError>, now: Instant) {
        let result = match r {
            Ok(Outcome::Mx(list)) => QResult::Mx(list),
            Ok(Outcome::Addrs(a)) => QResult::Addrs(a),
            Ok(Outcome::NoData) => QResult::NoData,
            Ok(Outcome::NxDomain) => QResult::NxDomain,
            Ok(Outcome::Cname(target)) => {
                self.follow_cname(q.lookup, q.qtype, *target, now);
                return;
            }
            Ok(Outcome::ServerFailure(wire::RCODE_FORMERR))
                if q.edns && matches!(q.transport, Transport::Udp) =>
            {
                q.edns = false;
                match self.send_udp_to_current(&mut q, now) {
                    Ok(()) => self.active.push(q),
                    Err(e) => self.question_done(q.lookup, q.qtype, QResult::Temp(e), now),
                }
                return;
            }
            Ok(Outcome::ServerFailure(rcode)) => {
                q.last_error = format!(
                    "{} {}: {} from {}",
                    q.qtype,
                    q.qname,
                    rcode_name(rcode),
                    q.server
                );
                self.retry(q, now, true);
                return;
            }
            Ok(Outcome::Truncated) | Err(_) => {
                let e = r.err().unwrap_or(WireError::Truncated);
                q.last_error = format!("{} {}: {e} from {}", q.qtype, q.qname, q.server);
                self.retry(q, now, true);
                return;
            }
        };
        self.question_done(q.lookup, q.qtype, result, now);
    }

    /// Moves `q` to its next attempt, skipping servers that answered with an error; with none
    /// left, the question fails temporarily with its last error.
    fn retry(&mut self, mut q: Question, now: Instant, server_failed: bool) {
        let n = self.servers.len();
        if server_failed && n > 0 {
            if let Some(idx) = self.servers.iter().position(|s| *s == q.server) {
                q.failed |= 1 << idx;
            }
        }
        let total = n * limits::DNS_ROUNDS;
        loop {
            q.attempt += 1;
            if n == 0 || q.attempt >= total {
                let reason = if n == 0 {
                    NO_SERVERS.to_string()
                } else {
                    std::mem::take(&mut q.last_error)
                };
                self.question_done(q.lookup, q.qtype, QResult::Temp(reason), now);
                return;
            }
            if q.failed & (1 << (q.attempt % n)) == 0 {
                break;
            }
        }
        match self.send_udp(&mut q, now) {
            Ok(()) => self.active.push(q),
            Err(e) => self.question_done(q.lookup, q.qtype, QResult::Temp(e), now),
        }
    }

    /// The answer ended at a CNAME whose target it did not cover: ask again for the target.
    fn follow_cname(&mut self, lookup: LookupId, qtype: QType, target: Name, now: Instant) {
        let Some(l) = self.lookups.get_mut(&lookup) else {
            return;
        };
        l.chain += 1;
        if l.chain > limits::DNS_MAX_CNAME_CHAIN {
            let reason = format!(
                "{qtype} {}: more than {} CNAMEs",
                l.name,
                limits::DNS_MAX_CNAME_CHAIN
            );
            self.question_done(lookup, qtype, QResult::Temp(reason), now);
            return;
        }
        // The new question goes to the front: it continues a lookup already under way.
        self.enqueue(now, lookup, qtype, target);
        if let Some(q) = self.waiting.pop_back() {
            self.waiting.push_front(q);
        }
    }

    /// Records a question's result; finishes the lookup when it has all it needs.
    fn question_done(&mut self, lookup: LookupId, qtype: QType, r: QResult, _now: Instant) {
        let Some(l) = self.lookups.get_mut(&lookup) else {
            return;
        };
        let answer = match l.want {
            Want::Mx => Answer::Mx(mx_result(r)),
            Want::Addresses => {
                if qtype == QType::Aaaa {
                    l.aaaa = Some(r);
                } else {
                    l.a = Some(r);
                }
                let (Some(a), Some(aaaa)) = (&l.a, &l.aaaa) else {
                    return;
                };
                Answer::Addresses(addr_result(a, aaaa))
            }
        };
        let Some(l) = self.lookups.remove(&lookup) else {
            return;
        };
        self.out.push_back(Output::Done {
            lookup,
            name: l.name,
            answer,
        });
    }
}

/// The wait for UDP attempt `attempt` with `n` servers: doubled each round.
fn udp_timeout(attempt: usize, n: usize) -> Duration {
    let round = attempt / n.max(1);
    limits::DNS_UDP_TIMEOUT * (1u32 << round.min(4))
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        wire::RCODE_SERVFAIL => "SERVFAIL".to_string(),
        wire::RCODE_REFUSED => "REFUSED".to_string(),
        wire::RCODE_FORMERR => "FORMERR".to_string(),
        4 => "NOTIMP".to_string(),
        n => format!("RCODE {n}"),
    }
}

fn mx_result(r: QResult) -> MxResult {
    match r {
        QResult::Mx(mut list) => {
            // RFC 7505 §3: a null MX is the only MX of its domain. Root exchanges next to
            // real ones are unusable and dropped; only roots left means no mail.
            list.retain(|(_, n)| !n.is_root());
            if list.is_empty() {
                return MxResult::NullMx;
            }
            list.sort_by_key(|(p, _)| *p);
            MxResult::Hosts(list)
        }
        QResult::Addrs(_) | QResult::NoData => MxResult::NoMx,
        QResult::NxDomain => MxResult::NxDomain,
        QResult::Temp(reason) => MxResult::TempFail(reason),
    }
}

fn addr_result(a: &QResult, aaaa: &QResult) -> AddrResult {
    let mut addrs = Vec::new();
    for r in [a, aaaa] {
        if let QResult::Addrs(list) = r {
            addrs.extend_from_slice(list);
        }
    }
    if !addrs.is_empty() {
        return AddrResult::Addrs(addrs);
    }
    for r in [a, aaaa] {
        if let QResult::Temp(reason) = r {
            return AddrResult::TempFail(reason.clone());
        }
    }
    if matches!(a, QResult::NxDomain) || matches!(aaaa, QResult::NxDomain) {
        return AddrResult::NxDomain;
    }
    AddrResult::NoAddresses
}
