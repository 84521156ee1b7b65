//! The resolver's sockets: carries out what the sans-I/O `dns::Resolver` asks for (datagrams
//! from one UDP socket per address family, TCP connections after a truncated answer) inside
//! the reactor's poll, and keeps its server list (`dns_servers`, or /etc/resolv.conf
//! re-read when it changes).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use crate::dns::{Answer, LookupId, NameError, Output, ResolvConf, Resolver, TcpId, Want};
/// Datagrams and TCP reads: answers are asked for at most `limits::DNS_EDNS_UDP_SIZE` octets over
/// UDP (a larger one is cut and then ignored); TCP answers arrive in pieces of this size.
const READ_BUF: usize = 4096;

/// One TCP connection to a nameserver (RFC 7766), asked for by the resolver.
struct DnsTcp {
    stream: TcpStream,
    token: Token,
    request: Vec<u8>,
    written: usize,
}

pub struct DnsDriver {
    resolver: Resolver,
    /// None when `dns_servers` overrides the system's list.
    resolv_conf: Option<ResolvConf>,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    tcp: HashMap<TcpId, DnsTcp>,
    done: Vec<(LookupId, Answer)>,
    /// Tokens: `base` and `base + 1` the UDP sockets, from `base + 2` the TCP connections.
    base: usize,
    tcp_range: usize,
}

impl DnsDriver {
    /// `servers` from `dns_servers`; empty means /etc/resolv.conf.
    pub fn new(servers: Vec<SocketAddr>, base: usize, tcp_range: usize) -> DnsDriver {
        let resolv_conf = servers
            .is_empty()
            .then(|| ResolvConf::new(crate::dns::resolv_conf::SYSTEM_RESOLV_CONF));
        DnsDriver {
            resolver: Resolver::new(servers),
            resolv_conf,
            udp4: None,
            udp6: None,
            tcp: HashMap::new(),
            done: Vec::new(),
            base,
            tcp_range,
        }
    }

    /// A config reload: new `dns_servers` (empty: back to resolv.conf).
    pub fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        if servers.is_empty() {
            if self.resolv_conf.is_none() {
                self.resolv_conf =
                    Some(ResolvConf::new(crate::dns::resolv_conf::SYSTEM_RESOLV_CONF));
                self.resolver.set_servers(Vec::new());
            }
        } else {
            self.resolv_conf = None;
            self.resolver.set_servers(servers);
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.base && token.0 < self.base + 2 + self.tcp_range
    }

    pub fn resolve(
        &mut self,
        registry: &Registry,
        now: Instant,
        name: &str,
        want: Want,
    ) -> Result<LookupId, NameError> {
        if let Some(rc) = self.resolv_conf.as_mut() {
            if let Some(servers) = rc.refresh(now) {
                debug!("resolver: nameservers now {servers:?}");
                self.resolver.set_servers(servers);
            }
        }
        let id = self.resolver.resolve(now, name, want)?;
        self.carry_out(registry, now);
        Ok(id)
    }

    /// Lookups finished since the last call.
    pub fn take_done(&mut self) -> Vec<(LookupId, Answer)> {
        std::mem::take(&mut self.done)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.resolver.next_deadline()
    }

    pub fn idle(&self) -> bool {
        self.resolver.pending() == 0 && self.tcp.is_empty()
    }

    pub fn turn(&mut self, registry: &Registry, now: Instant) {
        if self.resolver.next_deadline().is_some_and(|d| d <= now) {
            self.resolver.handle_timeout(now);
            self.carry_out(registry, now);
        }
    }

    /// A socket of the resolver is ready.
    pub fn ready(&mut self, registry: &Registry, token: Token, now: Instant) {
        let mut buf = [0u8; READ_BUF];
        if token.0 < self.base + 2 {
            let sock = if token.0 == self.base {
                self.udp4.as_ref()
            } else {
                self.udp6.as_ref()
            };
            if let Some(sock) = sock {
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => self.resolver.handle_datagram(now, from, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // WouldBlock, or an ICMP error reported on the socket: the question
                        // times out and moves to the next server.
                        Err(_) => break,
                    }
                }
            }
        } else if let Some((&id, _)) = self.tcp.iter().find(|(_, c)| c.token == token) {
            self.drive_tcp(id, now, &mut buf);
        }
        self.carry_out(registry, now);
    }

    fn drive_tcp(&mut self, id: TcpId, now: Instant, buf: &mut [u8]) {
        loop {
            let Some(c) = self.tcp.get_mut(&id) else {
                return;
            };
            let mut closed = false;
            while c.written < c.request.len() {
                match c.stream.write(&c.request[c.written..]) {
                    Ok(n) => c.written += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) =>
                    {
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !closed {
                match c.stream.read(buf) {
                    Ok(0) => closed = true,
                    Ok(n) => {
                        // (The resolver may close the connection once it has the answer.)
                        self.resolver.handle_tcp_data(now, id, &buf[..n]);
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) =>
                    {
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => closed = true,
                }
            }
            if closed {
                self.tcp.remove(&id);
                self.resolver.handle_tcp_closed(now, id);
                return;
            }
        }
    }

    /// Carries out the resolver's outputs.
    fn carry_out(&mut self, registry: &Registry, now: Instant) {
        while let Some(o) = self.resolver.poll_output() {
            match o {
                Output::Send { server, datagram } => {
                    if let Some(sock) = self.udp_for(registry, server) {
                        // A failed send is a lost datagram: the question times out.
                        let _ = sock.send_to(&datagram, server);
                    }
                }
                Output::TcpConnect {
                    conn,
                    server,
                    request,
                } => {
                    let token = Token(self.base + 2 + (conn.0 as usize % self.tcp_range));
                    match TcpStream::connect(server).and_then(|mut s| {
                        registry
                            .register(&mut s, token, Interest::READABLE | Interest::WRITABLE)
                            .map(|()| s)
                    }) {
                        Ok(stream) => {
                            self.tcp.insert(
                                conn,
                                DnsTcp {
                                    stream,
                                    token,
                                    request,
                                    written: 0,
                                },
                            );
                        }
                        Err(_) => self.resolver.handle_tcp_closed(now, conn),
                    }
                }
                Output::TcpClose { conn } => {
                    if let Some(mut c) = self.tcp.remove(&conn) {
                        let _ = registry.deregister(&mut c.stream);
                    }
                }
                Output::Done { lookup, answer, .. } => self.done.push((lookup, answer)),
            }
        }
    }

    fn udp_for(&mut self, registry: &Registry, server: SocketAddr) -> Option<&UdpSocket> {
        let (slot, bind, token) = if server.is_ipv4() {
            (&mut self.udp4, "0.0.0.0:0", Token(self.base))
        } else {
            (&mut self.udp6, "[::]:0", Token(self.base + 1))
        };
        if slot.is_none() {
            let addr: SocketAddr = bind.parse().ok()?;
            let mut s = UdpSocket::bind(addr).ok()?;
            registry.register(&mut s, token, Interest::READABLE).ok()?;
            *slot = Some(s);
        }
        slot.as_ref()
    }
}
