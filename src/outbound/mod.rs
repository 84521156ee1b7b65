//! Outbound delivery: carries the remote part of queued messages to a smarthost
//! (`relay_host`) or to each domain's mail exchangers, over connections of its own in the
//! reactor's poll.
//!
//! Owns the destinations (one per smarthost or recipient domain) with their queues of
//! messages and the routes (addresses) looked up for them, the outbound connections
//! (`conn`), the resolver's sockets (`dns`), and the per-message gathering of recipient
//! outcomes. It owns no queue state: the delivery engine hands it `RemoteJob`s and settles
//! each entry, durably, from the outcomes `take_results` returns.
//!
//! Limits: `outbound_concurrency` connections per destination, `outbound_max_connections`
//! in all; these are not counted against the inbound `max_connections`. A connection carries
//! every recipient of a message for its destination, then the destination's next message
//! (RSET between), up to `limits::OUTBOUND_MESSAGES_PER_CONNECTION`.
//!
//! Tokens: a range of its own from `TOKEN_BASE` (see `owns`), far above the inbound
//! connections' and below the reactor's special sources at the top of the range.

mod conn;
mod dns;
pub mod route;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::info;
use mio::{Registry, Token};

use self::conn::{Driven, OutConn, Setup, TlsMode};
use self::dns::DnsDriver;
use self::route::{DestKey, Route, build_routes, usable_mx};
use crate::config::values::RelayTls;
use crate::deliver::Outcome;
use crate::deliver::engine::{RemoteJob, RemoteOutcome};
use crate::dns::{AddrResult, Answer, LookupId, MxResult, Want};
use crate::mail::{BodyType, QueueId};
use crate::proto::smtp_client::{
    self, ClientSettings, Credentials, OutMessage, Timeouts, TlsPolicy,
};

/// The first token of outbound delivery's range: the resolver's sockets, then connections.
const TOKEN_BASE: usize = usize::MAX / 2;
/// Tokens for the resolver's TCP connections (RFC 7766), after its two UDP sockets.
const DNS_TCP_TOKENS: usize = 1 << 16;
/// Connection tokens start here.
const CONN_TOKEN_BASE: usize = TOKEN_BASE + 2 + DNS_TCP_TOKENS;
/// Connection slots (far more than `outbound_max_connections` allows).
const CONN_TOKENS: usize = 1 << 16;

/// The smarthost.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub host: String,
    pub port: u16,
    pub tls: RelayTls,
    pub verify: bool,
    pub credentials: Option<Credentials>,
}

/// What outbound delivery needs from the config.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// Our name in EHLO, and the name an MX list must not lead back to.
    pub hostname: String,
    pub relay: Option<RelaySettings>,
    /// The port MX delivery connects to.
    pub port: u16,
    pub allow_private: bool,
    pub concurrency: usize,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    /// This server's listening addresses: never connected to.
    pub own: Vec<SocketAddr>,
    /// `dns_servers`; empty: /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub ca_file: Option<PathBuf>,
}

impl OutboundSettings {
    pub fn from_config(config: &crate::config::Config) -> OutboundSettings {
        let own = config
            .smtp_listen
            .iter()
            .chain(&config.smtps_listen)
            .chain(&config.submission_listen)
            .copied()
            .collect();
        OutboundSettings {
            hostname: config.hostname.clone(),
            relay: config.relay_host.as_ref().map(|r| RelaySettings {
                host: r.host.clone(),
                port: r.port,
                tls: config.relay_tls,
                verify: config.relay_tls_verify,
                credentials: config.relay_auth.clone(),
            }),
            port: config.outbound_port,
            allow_private: config.outbound_allow_private,
            concurrency: config.outbound_concurrency,
            max_connections: config.outbound_max_connections,
            connect_timeout: config.outbound_connect_timeout,
            timeouts: config.outbound_timeouts,
            own,
            dns_servers: config.dns_servers.clone(),
            ca_file: config.tls_ca_file.clone(),
        }
    }
}

/// Where a queued message's data is in the spool.
#[derive(Clone, Debug)]
pub struct DataLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// The data is in the Maildir form (LF line ends: a spool entry of the "link-1" form
    /// whose recipient now resolves to a remote address): every LF is sent as CRLF.
    pub lf: bool,
    /// The data's size as sent (CRLF line ends), for `SIZE=`.
    pub size: u64,
}

/// A remote part from the engine with where its data is.
pub struct Job {
    pub remote: RemoteJob,
    pub data: DataLocation,
}

/// The recipients of one message for one destination.
pub struct Part {
    id: QueueId,
    sender: String,
    recipients: Vec<String>,
    /// Beside each recipient: its tag in the `RemoteJob`.
    tags: Vec<usize>,
    data: Rc<DataLocation>,
    body: BodyType,
    smtputf8: bool,
}

impl Part {
    fn message(&self) -> OutMessage {
        OutMessage {
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            size: self.data.size,
            body: self.body,
            smtputf8: self.smtputf8,
        }
    }
}

/// What is known of a destination's addresses.
enum Routes {
    Unknown,
    /// The MX lookup is out.
    Mx,
    /// Address lookups are out: one per exchange (or one for the smarthost or the implicit
    /// MX), answers filled in as they come.
    Addrs(Vec<(String, Option<AddrResult>)>),
    Ready {
        list: Rc<Vec<Route>>,
        until: Instant,
    },
}

struct Dest {
    queue: VecDeque<Part>,
    active: usize,
    routes: Routes,
    /// An MX failed the STARTTLS handshake: opportunistic TLS (RFC 7435 §3) goes on in
    /// plain text for this destination, as Postfix's `may` level does.
    plain_only: bool,
}

/// The outcomes of one message's remote recipients, gathered over its parts.
struct Gather {
    parts_left: usize,
    outcomes: Vec<RemoteOutcome>,
}

pub struct Outbound {
    settings: Rc<OutboundSettings>,
    relay_client: Rc<ClientSettings>,
    mx_client: Rc<ClientSettings>,
    /// To an MX whose STARTTLS failed (`Dest::plain_only`).
    mx_plain_client: Rc<ClientSettings>,
    /// TLS towards the smarthost, made at the first use (the system's CA bundle costs
    /// memory an idle server need not hold). An error (a bad `tls_ca_file`) defers the
    /// relay's mail with that reason and is tried again at the next attempt.
    relay_tls: Option<Result<TlsMode, String>>,
    /// Opportunistic STARTTLS towards an MX (RFC 7435), made at the first use.
    mx_tls: Option<TlsMode>,
    registry: Registry,
    dns: DnsDriver,
    dests: HashMap<DestKey, Dest>,
    /// Lookups out: for which destination, and which exchange (None: the MX lookup).
    lookups: HashMap<LookupId, (DestKey, Option<usize>)>,
    conns: Vec<Option<(DestKey, OutConn)>>,
    free: Vec<usize>,
    open: usize,
    gathers: HashMap<QueueId, Gather>,
    results: Vec<(QueueId, Vec<RemoteOutcome>)>,
}

fn client_settings(s: &OutboundSettings, relay: bool) -> ClientSettings {
    let (tls, credentials) = match (&s.relay, relay) {
        (Some(r), true) => (
            match r.tls {
                // Implicit TLS is up before the dialog starts.
                RelayTls::Starttls => TlsPolicy::Required,
                RelayTls::Implicit | RelayTls::None => TlsPolicy::Never,
            },
            r.credentials.clone(),
        ),
        // To an MX: encrypt when offered (RFC 7435).
        _ => (TlsPolicy::Opportunistic, None),
    };
    ClientSettings {
        helo_name: s.hostname.clone(),
        tls,
        credentials,
        timeouts: s.timeouts,
    }
}

fn plain(mut c: ClientSettings) -> ClientSettings {
    c.tls = TlsPolicy::Never;
    c
}

/// The TLS a smarthost connection uses: verified against `tls_ca_file` (or the system's
/// bundle) unless `relay_tls_verify = no`.
fn relay_tls(s: &OutboundSettings) -> Result<TlsMode, String> {
    let Some(r) = &s.relay else {
        return Ok(TlsMode::Off);
    };
    let config = || {
        if r.verify {
            crate::tls::client_config_verified(s.ca_file.as_deref())
                .map_err(|e| format!("4.7.5 cannot verify {}: {e}", r.host))
        } else {
            Ok(crate::tls::client_config_unverified())
        }
    };
    Ok(match r.tls {
        RelayTls::None => TlsMode::Off,
        RelayTls::Starttls => TlsMode::Starttls(config()?),
        RelayTls::Implicit => TlsMode::Implicit(config()?),
    })
}

impl Outbound {
    pub fn new(settings: OutboundSettings, registry: Registry) -> Outbound {
        let dns = DnsDriver::new(settings.dns_servers.clone(), TOKEN_BASE, DNS_TCP_TOKENS);
        Outbound {
            relay_tls: None,
            mx_tls: None,
            relay_client: Rc::new(client_settings(&settings, true)),
            mx_client: Rc::new(client_settings(&settings, false)),
            mx_plain_client: Rc::new(plain(client_settings(&settings, false))),
            settings: Rc::new(settings),
            registry,
            dns,
            dests: HashMap::new(),
            lookups: HashMap::new(),
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            gathers: HashMap::new(),
            results: Vec::new(),
        }
    }

    /// A config reload: new connections use the new settings; routes are looked up again.
    pub fn set_settings(&mut self, settings: OutboundSettings) {
        self.dns.set_servers(settings.dns_servers.clone());
        self.relay_tls = None;
        self.relay_client = Rc::new(client_settings(&settings, true));
        self.mx_client = Rc::new(client_settings(&settings, false));
        self.mx_plain_client = Rc::new(plain(client_settings(&settings, false)));
        self.settings = Rc::new(settings);
        for d in self.dests.values_mut() {
            if let Routes::Ready { .. } = d.routes {
                d.routes = Routes::Unknown;
            }
        }
    }

    /// Is this token one of outbound delivery's?
    pub fn owns(token: Token) -> bool {
        token.0 >= TOKEN_BASE && token.0 < CONN_TOKEN_BASE + CONN_TOKENS
    }

    /// Nothing queued, connected, looked up or gathered.
    pub fn idle(&self) -> bool {
        self.open == 0 && self.dests.is_empty() && self.gathers.is_empty() && self.dns.idle()
    }

    /// Idle: drops the TLS configurations (made again at the next use).
    pub fn release_memory(&mut self) {
        if self.idle() {
            self.relay_tls = None;
            self.mx_tls = None;
        }
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.open
    }

    /// When `turn` must run next (None: only on socket events).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        let mut t = self.dns.deadline();
        for (_, c) in self.conns.iter().flatten() {
            let d = if c.more { Some(now) } else { c.deadline() };
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        }
        if !self.results.is_empty() {
            t = Some(now);
        }
        t
    }

    /// Hands over the remote part of one message.
    pub fn submit(&mut self, job: Job, now: Instant) {
        let relay = self.settings.relay.is_some();
        let data = Rc::new(job.data);
        let remote = job.remote;
        let mut parts: Vec<(DestKey, Part)> = Vec::new();
        for (tag, rcpt) in remote.recipients.iter().enumerate() {
            let key = DestKey::of(rcpt, relay);
            match parts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, p)) => {
                    p.recipients.push(rcpt.clone());
                    p.tags.push(tag);
                }
                None => parts.push((
                    key,
                    Part {
                        id: remote.id.clone(),
                        sender: remote.sender.clone(),
                        recipients: vec![rcpt.clone()],
                        tags: vec![tag],
                        data: data.clone(),
                        body: remote.body,
                        smtputf8: remote.smtputf8,
                    },
                )),
            }
        }
        if parts.is_empty() {
            self.results.push((remote.id, Vec::new()));
            return;
        }
        self.gathers.insert(
            remote.id.clone(),
            Gather {
                parts_left: parts.len(),
                outcomes: Vec::new(),
            },
        );
        let keys: Vec<DestKey> = parts.iter().map(|(k, _)| k.clone()).collect();
        for (key, part) in parts {
            self.dests
                .entry(key)
                .or_insert_with(|| Dest {
                    queue: VecDeque::new(),
                    active: 0,
                    routes: Routes::Unknown,
                    plain_only: false,
                })
                .queue
                .push_back(part);
        }
        for key in keys {
            self.kick(&key, now);
        }
    }

    /// Stops all work on a message (removed from the queue by an administrator): its parts
    /// leave the queues, connections carrying it are closed, nothing is reported for it.
    pub fn cancel(&mut self, id: &QueueId) {
        self.gathers.remove(id);
        self.results.retain(|(r, _)| r != id);
        for d in self.dests.values_mut() {
            d.queue.retain(|p| &p.id != id);
        }
        for slot in 0..self.conns.len() {
            let carries = matches!(&self.conns[slot], Some((_, c)) if c.carries(id));
            if carries {
                if let Some((_, c)) = self.conns[slot].as_mut() {
                    c.cancel(&self.registry);
                }
                self.release(slot);
            }
        }
        self.tidy();
        // A connection closed here leaves room for what else waits.
        self.kick_waiting(Instant::now());
    }

    /// Gives every destination with mail waiting a chance at the connections free now.
    fn kick_waiting(&mut self, now: Instant) {
        let waiting: Vec<DestKey> = self
            .dests
            .iter()
            .filter(|(_, d)| !d.queue.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in waiting {
            self.kick(&k, now);
        }
    }

    /// Outcomes of messages whose every remote recipient has one.
    pub fn take_results(&mut self) -> Vec<(QueueId, Vec<RemoteOutcome>)> {
        std::mem::take(&mut self.results)
    }

    /// A socket of ours is ready.
    pub fn ready(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        if self.dns.owns(token) {
            self.dns.ready(&self.registry, token, now);
            self.lookups_done(now);
            return;
        }
        let slot = token.0.wrapping_sub(CONN_TOKEN_BASE);
        let Some(Some((_, c))) = self.conns.get_mut(slot) else {
            return;
        };
        c.ready(readable, writable);
        self.drive(slot, now, false);
    }

    /// Deadlines (connects, dialog steps, DNS retries) and connections with work left.
    pub fn turn(&mut self, now: Instant) {
        self.dns.turn(&self.registry, now);
        self.lookups_done(now);
        for slot in 0..self.conns.len() {
            let (due, more) = match &self.conns[slot] {
                Some((_, c)) => (c.deadline().is_some_and(|d| d <= now), c.more),
                None => continue,
            };
            if due || more {
                self.drive(slot, now, due);
            }
        }
    }

    fn drive(&mut self, slot: usize, now: Instant, timeout: bool) {
        let Some(Some((key, c))) = self.conns.get_mut(slot) else {
            return;
        };
        let dests = &mut self.dests;
        let mut next = || dests.get_mut(key).and_then(|d| d.queue.pop_front());
        let driven = if timeout {
            c.on_timeout(&self.registry, now, &mut next)
        } else {
            c.drive(&self.registry, now, &mut next)
        };
        let key = key.clone();
        self.after_drive(slot, &key, driven, now);
    }

    fn after_drive(&mut self, slot: usize, key: &DestKey, driven: Driven, now: Instant) {
        let relay = *key == DestKey::Relay;
        let retry_plain = driven.tls_failed && !relay;
        for (part, outcomes, label) in driven.finished {
            let dest = self.dests.get_mut(key);
            match dest {
                Some(d) if retry_plain && !d.plain_only => {
                    info!(
                        "{}: STARTTLS with {label} failed; trying again without TLS",
                        part.id
                    );
                    d.queue.push_front(part);
                }
                _ => self.part_done(part, &outcomes, &label),
            }
        }
        if retry_plain {
            if let Some(d) = self.dests.get_mut(key) {
                d.plain_only = true;
            }
        }
        if driven.closed {
            self.release(slot);
            // A destination that could not be reached at all: what waits for it defers too
            // (unless another connection still works for it), and its routes are looked up
            // again next time.
            if let Some(why) = driven.unreachable {
                let idle = self.dests.get(key).is_some_and(|d| d.active == 0);
                if idle {
                    self.fail_dest(key, &Outcome::Temporary(why));
                }
            }
            self.kick(key, now);
            self.tidy();
            self.kick_waiting(now);
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(Some((key, _))) = self.conns.get(slot) {
            if let Some(d) = self.dests.get_mut(key) {
                d.active = d.active.saturating_sub(1);
            }
            self.conns[slot] = None;
            self.free.push(slot);
            self.open = self.open.saturating_sub(1);
        }
    }

    /// Forgets destinations with nothing queued, connected or looked up; trims the slab.
    fn tidy(&mut self) {
        let lookups = &self.lookups;
        self.dests.retain(|k, d| {
            !d.queue.is_empty() || d.active > 0 || lookups.values().any(|(lk, _)| lk == k)
        });
        while matches!(self.conns.last(), Some(None)) {
            self.conns.pop();
        }
        let len = self.conns.len();
        self.free.retain(|&s| s < len);
        if self.idle() {
            self.conns.shrink_to_fit();
            self.free.shrink_to_fit();
            self.dests.shrink_to_fit();
            self.gathers.shrink_to_fit();
        }
    }

    /// Records the outcomes of one part; a message whose parts are all done is a result.
    fn part_done(&mut self, part: Part, outcomes: &[smtp_client::Outcome], label: &str) {
        let Some(g) = self.gathers.get_mut(&part.id) else {
            return;
        };
        for (i, tag) in part.tags.iter().enumerate() {
            let (outcome, note) = match outcomes.get(i) {
                Some(o) => convert(o, label),
                None => (
                    Outcome::Temporary(format!("4.4.2 {label}: no verdict")),
                    None,
                ),
            };
            log_outcome(&part.id, part.recipients.get(i), label, &outcome);
            g.outcomes.push(RemoteOutcome {
                tag: *tag,
                outcome,
                relay: label.to_string(),
                note,
            });
        }
        g.parts_left = g.parts_left.saturating_sub(1);
        if g.parts_left == 0 {
            if let Some(g) = self.gathers.remove(&part.id) {
                self.results.push((part.id, g.outcomes));
            }
        }
    }

    /// Every part waiting for `key` gets `outcome` (the destination cannot be reached).
    fn fail_waiting(&mut self, key: &DestKey, outcome: &Outcome) {
        let parts: Vec<Part> = match self.dests.get_mut(key) {
            Some(d) => d.queue.drain(..).collect(),
            None => return,
        };
        let outcome = match (outcome, *key == DestKey::Relay) {
            // A smarthost problem defers, never bounces: no bounce storm from a typo.
            (Outcome::Permanent(r), true) => Outcome::Temporary(r.clone()),
            (o, _) => o.clone(),
        };
        for part in parts {
            let Some(g) = self.gathers.get_mut(&part.id) else {
                continue;
            };
            for (i, tag) in part.tags.iter().enumerate() {
                log_outcome(&part.id, part.recipients.get(i), "none", &outcome);
                g.outcomes.push(RemoteOutcome {
                    tag: *tag,
                    outcome: outcome.clone(),
                    relay: "none".to_string(),
                    note: None,
                });
            }
            g.parts_left = g.parts_left.saturating_sub(1);
            if g.parts_left == 0 {
                if let Some(g) = self.gathers.remove(&part.id) {
                    self.results.push((part.id, g.outcomes));
                }
            }
        }
    }

    /// Moves a destination on: looks up its routes, or opens connections for what waits.
    fn kick(&mut self, key: &DestKey, now: Instant) {
        loop {
            let Some(d) = self.dests.get_mut(key) else {
                return;
            };
            if d.queue.is_empty() {
                return;
            }
            let list = match &d.routes {
                Routes::Mx | Routes::Addrs(_) => return,
                Routes::Ready { list, until } if *until > now => list.clone(),
                Routes::Ready { .. } | Routes::Unknown => {
                    self.look_up(key, now);
                    continue;
                }
            };
            if d.active >= self.settings.concurrency || self.open >= self.settings.max_connections {
                return;
            }
            let Some(part) = d.queue.pop_front() else {
                return;
            };
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    if self.conns.len() >= CONN_TOKENS {
                        d.queue.push_front(part);
                        return;
                    }
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let relay = *key == DestKey::Relay;
            let (client, tls) = if relay {
                if !matches!(self.relay_tls, Some(Ok(_))) {
                    let made = relay_tls(&self.settings);
                    if let Err(e) = &made {
                        log::warn!("relay_host: {e}; its mail waits until this is fixed");
                    }
                    self.relay_tls = Some(made);
                }
                match self.relay_tls.as_ref().unwrap_or(&Ok(TlsMode::Off)) {
                    Ok(t) => (self.relay_client.clone(), t.clone()),
                    Err(e) => {
                        let o = Outcome::Temporary(e.clone());
                        d.queue.push_front(part);
                        self.free.push(slot);
                        self.fail_waiting(key, &o);
                        return;
                    }
                }
            } else if d.plain_only {
                (self.mx_plain_client.clone(), TlsMode::Off)
            } else {
                let tls = self
                    .mx_tls
                    .get_or_insert_with(
                        || TlsMode::Starttls(crate::tls::client_config_unverified()),
                    )
                    .clone();
                (self.mx_client.clone(), tls)
            };
            match OutConn::open(
                Token(CONN_TOKEN_BASE + slot),
                list,
                part,
                Setup {
                    client,
                    tls,
                    connect_timeout: self.settings.connect_timeout,
                },
                &self.registry,
                now,
            ) {
                Ok(c) => {
                    d.active += 1;
                    self.open += 1;
                    self.conns[slot] = Some((key.clone(), c));
                }
                Err(failed) => {
                    let (part, reason) = *failed;
                    self.free.push(slot);
                    d.queue.push_front(part);
                    d.routes = Routes::Unknown;
                    if d.active == 0 {
                        self.fail_waiting(key, &Outcome::Temporary(reason));
                    }
                    return;
                }
            }
        }
    }

    /// Starts finding a destination's routes; a result known at once (an address literal,
    /// a bad name) settles it here.
    fn look_up(&mut self, key: &DestKey, now: Instant) {
        let s = self.settings.clone();
        let (name, want, port) = match (key, &s.relay) {
            (DestKey::Relay, Some(r)) => (r.host.clone(), Want::Addresses, r.port),
            (DestKey::Relay, None) => {
                let o = Outcome::Temporary("4.3.5 relay_host is no longer configured".into());
                self.fail_dest(key, &o);
                return;
            }
            (DestKey::Domain(d), _) => (d.clone(), Want::Mx, s.port),
        };
        let literal = match key {
            DestKey::Relay => literal_ip(&name),
            DestKey::Domain(d) => route::address_literal(d),
        };
        if let Some(ip) = literal {
            let answers = [(name.clone(), AddrResult::Addrs(vec![ip]))];
            if let Err(o) = self.ready_routes(key, &name, &answers, port, now) {
                self.fail_dest(key, &o);
            }
            return;
        }
        match self.dns.resolve(&self.registry, now, &name, want) {
            Ok(id) => {
                let index = (want == Want::Addresses).then_some(0);
                self.lookups.insert(id, (key.clone(), index));
                if let Some(d) = self.dests.get_mut(key) {
                    d.routes = match want {
                        Want::Mx => Routes::Mx,
                        Want::Addresses => Routes::Addrs(vec![(name, None)]),
                    };
                }
                self.lookups_done(now);
            }
            Err(e) => {
                let o = Outcome::Permanent(format!("5.1.2 bad destination {name}: {e}"));
                self.fail_dest(key, &o);
            }
        }
    }

    /// The destination cannot be reached now: what waits for it gets `o`, and its routes
    /// are looked up again next time.
    fn fail_dest(&mut self, key: &DestKey, o: &Outcome) {
        if let Some(d) = self.dests.get_mut(key) {
            d.routes = Routes::Unknown;
        }
        self.fail_waiting(key, o);
    }

    /// Makes a destination's routes from address answers, or says why there are none.
    fn ready_routes(
        &mut self,
        key: &DestKey,
        what: &str,
        answers: &[(String, AddrResult)],
        port: u16,
        now: Instant,
    ) -> Result<(), Outcome> {
        let relay = *key == DestKey::Relay;
        let allow_private = relay || self.settings.allow_private;
        let list = build_routes(what, answers, port, &self.settings.own, allow_private)?;
        if let Some(d) = self.dests.get_mut(key) {
            d.routes = Routes::Ready {
                list: Rc::new(list),
                until: now + crate::limits::OUTBOUND_ROUTE_TTL,
            };
        }
        Ok(())
    }

    /// Takes the resolver's answers and moves their destinations on.
    fn lookups_done(&mut self, now: Instant) {
        loop {
            let done = self.dns.take_done();
            if done.is_empty() {
                return;
            }
            for (id, answer) in done {
                let Some((key, index)) = self.lookups.remove(&id) else {
                    continue;
                };
                self.answer(&key, index, answer, now);
            }
        }
    }

    fn answer(&mut self, key: &DestKey, index: Option<usize>, answer: Answer, now: Instant) {
        let domain = match key {
            DestKey::Domain(d) => d.clone(),
            DestKey::Relay => self
                .settings
                .relay
                .as_ref()
                .map_or_else(String::new, |r| r.host.clone()),
        };
        let failure = match (index, answer) {
            (None, Answer::Mx(mx)) => match mx {
                MxResult::Hosts(hosts) => match usable_mx(&domain, &hosts, &self.settings.hostname)
                {
                    Ok(names) => {
                        self.ask_addresses(key, names, now);
                        None
                    }
                    Err(o) => Some(o),
                },
                MxResult::NoMx => {
                    self.ask_addresses(key, vec![domain.clone()], now);
                    None
                }
                MxResult::NullMx => Some(Outcome::Permanent(format!(
                    "5.1.10 {domain} accepts no mail (null MX, RFC 7505)"
                ))),
                MxResult::NxDomain => Some(Outcome::Permanent(format!(
                    "5.1.2 the domain {domain} does not exist (DNS: NXDOMAIN)"
                ))),
                MxResult::TempFail(why) => Some(Outcome::Temporary(format!(
                    "4.4.3 DNS lookup of the MX of {domain} failed: {why}"
                ))),
            },
            (Some(i), Answer::Addresses(a)) => {
                let complete = match self.dests.get_mut(key) {
                    Some(Dest {
                        routes: Routes::Addrs(answers),
                        ..
                    }) => {
                        if let Some(slot) = answers.get_mut(i) {
                            slot.1 = Some(a);
                        }
                        answers
                            .iter()
                            .map(|(n, a)| a.clone().map(|a| (n.clone(), a)))
                            .collect::<Option<Vec<(String, AddrResult)>>>()
                    }
                    _ => None,
                };
                match complete {
                    None => None,
                    Some(answers) => {
                        let port = match (&self.settings.relay, key) {
                            (Some(r), DestKey::Relay) => r.port,
                            _ => self.settings.port,
                        };
                        self.ready_routes(key, &domain, &answers, port, now).err()
                    }
                }
            }
            _ => Some(Outcome::Temporary("4.4.3 unexpected DNS answer".into())),
        };
        if let Some(o) = failure {
            info!("outbound: {domain}: {}", reason_of(&o));
            self.fail_dest(key, &o);
            self.tidy();
        } else {
            self.kick(key, now);
        }
    }

    fn ask_addresses(&mut self, key: &DestKey, names: Vec<String>, now: Instant) {
        let mut answers: Vec<(String, Option<AddrResult>)> = Vec::new();
        let mut ids = Vec::new();
        for (i, n) in names.into_iter().enumerate() {
            match self.dns.resolve(&self.registry, now, &n, Want::Addresses) {
                Ok(id) => {
                    ids.push((id, i));
                    answers.push((n, None));
                }
                // A bad exchange name: counts as a name without addresses.
                Err(_) => answers.push((n, Some(AddrResult::NoAddresses))),
            }
        }
        for (id, i) in ids {
            self.lookups.insert(id, (key.clone(), Some(i)));
        }
        if let Some(d) = self.dests.get_mut(key) {
            d.routes = Routes::Addrs(answers);
        }
        self.lookups_done(now);
    }
}

/// An IP literal (`192.0.2.1`, `[2001:db8::1]`) as an address.
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn reason_of(o: &Outcome) -> &str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Temporary(r) | Outcome::Permanent(r) => r,
    }
}

/// The engine's outcome from the client's verdict, with an RFC 3463 status first (the DSN
/// takes it from there) and the server named. Permanent failures at the smarthost that are
/// about the connection (not about a recipient) never reach here: the client makes TLS and
/// authentication failures temporary.
fn convert(o: &smtp_client::Outcome, label: &str) -> (Outcome, Option<String>) {
    match o {
        smtp_client::Outcome::Delivered(d) => {
            // The log's `(…)` holds the server's reply, as Postfix writes it.
            let note = d.reply.as_ref().map_or_else(
                || d.text.clone(),
                |r| match r.enhanced {
                    Some(e) => format!("{} {e} {}", r.code, r.text),
                    None => format!("{} {}", r.code, r.text),
                },
            );
            (Outcome::Delivered, Some(note))
        }
        smtp_client::Outcome::Temporary(d) => {
            (Outcome::Temporary(describe(d, label, "4.4.2")), None)
        }
        smtp_client::Outcome::Permanent(d) => {
            (Outcome::Permanent(describe(d, label, "5.0.0")), None)
        }
    }
}

fn describe(d: &smtp_client::Detail, label: &str, default: &str) -> String {
    match &d.reply {
        Some(r) => {
            let status = r
                .enhanced
                .map_or_else(|| status_from_code(r.code, default), |e| e.to_string());
            // The client's text is `STEP: REPLY`; written the way Postfix logs it.
            match d.text.split_once(": ") {
                Some((step, reply)) => {
                    format!("{status} host {label} said: {reply} (in reply to {step})")
                }
                None => format!("{status} host {label} said: {}", d.text),
            }
        }
        None => {
            // A local reason may already start with a status (ours).
            let first = d.text.split(' ').next().unwrap_or("");
            if first.split('.').count() == 3 && first.starts_with(['4', '5']) {
                format!("{first} {label}: {}", d.text[first.len()..].trim_start())
            } else {
                format!("{default} {label}: {}", d.text)
            }
        }
    }
}

fn status_from_code(code: u16, default: &str) -> String {
    match code / 100 {
        4 => "4.0.0".to_string(),
        5 => "5.0.0".to_string(),
        _ => default.to_string(),
    }
}

fn log_outcome(id: &QueueId, rcpt: Option<&String>, label: &str, outcome: &Outcome) {
    let rcpt = rcpt.map_or("", String::as_str);
    match outcome {
        Outcome::Delivered => log::debug!("{id}: <{rcpt}> accepted by {label}"),
        Outcome::Temporary(r) => log::debug!("{id}: <{rcpt}> deferred: {r}"),
        Outcome::Permanent(r) => log::debug!("{id}: <{rcpt}> refused: {r}"),
    }
}

#[cfg(test)]
mod tests;
