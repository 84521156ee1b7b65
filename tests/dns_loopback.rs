//! The resolver against a real DNS server on 127.0.0.1: a small authoritative server written
//! here (UDP and TCP on one port, each in a thread of the test) serves MX, no MX, null MX,
//! NXDOMAIN, SERVFAIL, CNAME and truncated answers, and a blocking driver carries out the
//! resolver's outputs with std sockets. Nothing is sent anywhere but loopback (the driver
//! refuses any other address), and no resolv.conf is read.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postling::dns::testing::{
    addr_rr, mx_rdata, name, name_text, ptr, query_question, response, rr,
};
use postling::dns::wire::{TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX};
use postling::dns::{AddrResult, Answer, LookupId, MxResult, Name, Output, Resolver, Want};

/// How the test server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Serves the test zone.
    Zone,
    /// Answers SERVFAIL to everything.
    ServFail,
    /// Never answers.
    Silent,
}

const BIG_MX: u16 = 20;

/// The test zone: the answer to one query, or None for no answer.
fn answer(query: &[u8], over_tcp: bool, mode: Mode) -> Option<Vec<u8>> {
    let (id, qname, qtype) = query_question(query)?;
    let owner = ptr(12);
    let reply = |rcode: u8, tc: bool, answers: &[Vec<u8>]| {
        Some(response(id, rcode, tc, &qname, qtype, answers))
    };
    match mode {
        Mode::Silent => return None,
        Mode::ServFail => return reply(2, false, &[]),
        Mode::Zone => {}
    }
    let mx = |pref: u16, host: &str| rr(&owner, TYPE_MX, &mx_rdata(pref, &name(host)));
    match (name_text(&qname).as_str(), qtype) {
        ("mx.test", TYPE_MX) => reply(0, false, &[mx(20, "mx2.mx.test"), mx(10, "mx1.mx.test")]),
        ("cname.test", TYPE_MX) => {
            let target = name("mx.test");
            let c = rr(&owner, TYPE_CNAME, &target);
            let m = |pref: u16, host: &str| rr(&target, TYPE_MX, &mx_rdata(pref, &name(host)));
            reply(0, false, &[c, m(10, "mx1.mx.test"), m(20, "mx2.mx.test")])
        }
        ("nomx.test", TYPE_MX) => reply(0, false, &[]),
        ("nomx.test", TYPE_A) => reply(
            0,
            false,
            &[addr_rr(&owner, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)))],
        ),
        ("nomx.test", TYPE_AAAA) => {
            let v6: Ipv6Addr = "2001:db8::10".parse().expect("literal");
            reply(0, false, &[addr_rr(&owner, IpAddr::V6(v6))])
        }
        ("nullmx.test", TYPE_MX) => reply(0, false, &[rr(&owner, TYPE_MX, &mx_rdata(0, &[0]))]),
        ("servfail.test", _) => reply(2, false, &[]),
        ("big.test", TYPE_MX) if !over_tcp => reply(0, true, &[]),
        ("big.test", TYPE_MX) => {
            let all: Vec<Vec<u8>> = (0..BIG_MX)
                .map(|i| {
                    mx(
                        i,
                        &format!("mx{i}.a-rather-long-name-to-fill-the-answer.big.test"),
                    )
                })
                .collect();
            reply(0, false, &all)
        }
        (_, _) => reply(3, false, &[]),
    }
}

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port) until dropped.
struct TestDns {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestDns {
    fn start(mode: Mode) -> TestDns {
        // A free UDP port whose TCP twin is free too.
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = udp.local_addr().ok()?.port();
                let tcp = TcpListener::bind(("127.0.0.1", port)).ok()?;
                Some((udp, tcp))
            })
            .expect("a free port for UDP and TCP");
        let addr = udp.local_addr().expect("bound");
        let stop = Arc::new(AtomicBool::new(false));
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        {
            let (stop, count) = (stop.clone(), udp_queries.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Some(a) = answer(&buf[..n], false, mode) {
                        let _ = udp.send_to(&a, from);
                    }
                }
            }));
        }
        {
            let (stop, count) = (stop.clone(), tcp_queries.clone());
            threads.push(std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut q).is_err() {
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Some(a) = answer(&q, true, mode) {
                        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&a);
                        let _ = conn.write_all(&framed);
                    }
                }
            }));
        }
        TestDns {
            addr,
            udp_queries,
            tcp_queries,
            stop,
            threads,
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        // Wake both threads with a packet and a connection of their own; they see the flag.
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
            let _ = s.send_to(b"stop", self.addr);
        }
        let _ = TcpStream::connect(self.addr);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Drives `r` with real sockets until every lookup in `ids` is answered; panics after
/// `cap` (a hang is a failure, not a wait).
fn drive(r: &mut Resolver, ids: &[LookupId], cap: Duration) -> HashMap<LookupId, Answer> {
    let started = Instant::now();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut results = HashMap::new();
    let mut tcp: HashMap<postling::dns::TcpId, TcpStream> = HashMap::new();
    let mut queue: VecDeque<Output> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(started.elapsed() < cap, "no answer within {cap:?}");
        queue.extend(std::iter::from_fn(|| r.poll_output()));
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send { server, datagram } => {
                    assert!(server.ip().is_loopback(), "a query to {server}");
                    udp.send_to(&datagram, server).expect("send");
                }
                Output::TcpConnect {
                    conn,
                    server,
                    request,
                } => {
                    assert!(server.ip().is_loopback(), "a TCP query to {server}");
                    let Ok(mut s) = TcpStream::connect(server) else {
                        r.handle_tcp_closed(Instant::now(), conn);
                        continue;
                    };
                    s.write_all(&request).expect("write");
                    s.set_read_timeout(Some(cap)).expect("timeout");
                    tcp.insert(conn, s);
                    // Read until the resolver closes it (whole answer) or the peer does.
                    'read: while let Some(s) = tcp.get_mut(&conn) {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                tcp.remove(&conn);
                                r.handle_tcp_closed(Instant::now(), conn);
                                break;
                            }
                            Ok(n) => r.handle_tcp_data(Instant::now(), conn, &buf[..n]),
                        }
                        while let Some(o) = r.poll_output() {
                            let closes = o == Output::TcpClose { conn };
                            queue.push_back(o);
                            if closes {
                                break 'read;
                            }
                        }
                    }
                }
                Output::TcpClose { conn } => {
                    tcp.remove(&conn);
                }
                Output::Done { lookup, answer, .. } => {
                    results.insert(lookup, answer);
                }
            }
            queue.extend(std::iter::from_fn(|| r.poll_output()));
        }
        if ids.iter().all(|id| results.contains_key(id)) {
            return results;
        }
        let deadline = r.next_deadline().expect("lookups pending, so a deadline");
        let now = Instant::now();
        if deadline <= now {
            r.handle_timeout(now);
            continue;
        }
        udp.set_read_timeout(Some(deadline - now)).expect("timeout");
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => r.handle_datagram(Instant::now(), from, &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                r.handle_timeout(Instant::now())
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn hosts(pairs: &[(u16, &str)]) -> Answer {
    Answer::Mx(MxResult::Hosts(
        pairs
            .iter()
            .map(|(p, h)| (*p, Name::from_text(h).expect("valid")))
            .collect(),
    ))
}

#[test]
fn lookups_against_a_dns_server_on_loopback() {
    let dns = TestDns::start(Mode::Zone);
    let mut r = Resolver::new(vec![dns.addr]);
    let now = Instant::now();
    let mut ask = |name: &str, want: Want| r.resolve(now, name, want).expect("valid name");
    let mx = ask("MX.test", Want::Mx);
    let cname = ask("cname.test", Want::Mx);
    let nomx = ask("nomx.test", Want::Mx);
    let implicit = ask("nomx.test", Want::Addresses);
    let null = ask("nullmx.test", Want::Mx);
    let nx = ask("nx.test", Want::Mx);
    let nx_addr = ask("nx.test", Want::Addresses);
    let servfail = ask("servfail.test", Want::Mx);
    let big = ask("big.test", Want::Mx);
    let ids = [mx, cname, nomx, implicit, null, nx, nx_addr, servfail, big];
    let results = drive(&mut r, &ids, Duration::from_secs(30));

    let mx_hosts = hosts(&[(10, "mx1.mx.test"), (20, "mx2.mx.test")]);
    assert_eq!(results[&mx], mx_hosts);
    assert_eq!(results[&cname], mx_hosts);
    assert_eq!(results[&nomx], Answer::Mx(MxResult::NoMx));
    assert_eq!(
        results[&implicit],
        Answer::Addresses(AddrResult::Addrs(vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            IpAddr::V6("2001:db8::10".parse().expect("literal")),
        ]))
    );
    assert_eq!(results[&null], Answer::Mx(MxResult::NullMx));
    assert_eq!(results[&nx], Answer::Mx(MxResult::NxDomain));
    assert_eq!(results[&nx_addr], Answer::Addresses(AddrResult::NxDomain));
    assert_eq!(
        results[&servfail],
        Answer::Mx(MxResult::TempFail(format!(
            "MX servfail.test: SERVFAIL from {}",
            dns.addr
        )))
    );
    let Answer::Mx(MxResult::Hosts(big_hosts)) = &results[&big] else {
        panic!("big.test: {:?}", results[&big]);
    };
    assert_eq!(big_hosts.len(), BIG_MX as usize);
    assert_eq!(
        big_hosts[0].1.to_string(),
        "mx0.a-rather-long-name-to-fill-the-answer.big.test"
    );
    // big.test went to TCP after its truncated UDP answer, and only it did.
    assert_eq!(r.stats().tcp, 1);
    assert_eq!(dns.tcp_queries.load(Ordering::SeqCst), 1);
    // One datagram per question: seven MX, two A, two AAAA; SERVFAIL asked only once (its only
    // server answered with an error, so it is not asked again).
    assert_eq!(dns.udp_queries.load(Ordering::SeqCst), 11);
    assert_eq!(r.stats().ignored, 0);
    assert_eq!(r.pending(), 0);
}

#[test]
fn a_servfail_server_is_followed_by_the_next_at_once() {
    let failing = TestDns::start(Mode::ServFail);
    let good = TestDns::start(Mode::Zone);
    let mut r = Resolver::new(vec![failing.addr, good.addr]);
    let started = Instant::now();
    let id = r.resolve(started, "mx.test", Want::Mx).expect("valid");
    let results = drive(&mut r, &[id], Duration::from_secs(30));
    assert_eq!(
        results[&id],
        hosts(&[(10, "mx1.mx.test"), (20, "mx2.mx.test")])
    );
    assert_eq!(failing.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(good.udp_queries.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() < postling::limits::DNS_UDP_TIMEOUT,
        "waited {:?} although the failure was immediate",
        started.elapsed()
    );
}

#[test]
fn a_silent_server_is_followed_by_the_next_after_its_timeout() {
    let silent = TestDns::start(Mode::Silent);
    let good = TestDns::start(Mode::Zone);
    let mut r = Resolver::new(vec![silent.addr, good.addr]);
    let started = Instant::now();
    let id = r.resolve(started, "nullmx.test", Want::Mx).expect("valid");
    let results = drive(&mut r, &[id], Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(results[&id], Answer::Mx(MxResult::NullMx));
    assert_eq!(silent.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(good.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(r.stats().timeouts, 1);
    println!("answered by the second server after {took:?}");
    assert!(took >= postling::limits::DNS_UDP_TIMEOUT, "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
