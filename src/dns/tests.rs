//! Unit tests: the codec on hand-built packets, the resolver on virtual time, and the
//! nameserver configuration. No test sends or receives a packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::resolv_conf::{ResolvConf, parse_dns_servers, parse_resolv_conf};
use super::resolver::{AddrResult, Answer, MxResult, NO_SERVERS, Output, Resolver, TcpId, Want};
use super::testing::{
    addr_rr, header_and_question, mx_rdata, name, ptr, query_question, response, rr,
};
use super::wire::{self, Name, NameError, Outcome, QType, WireError, parse_response};
use crate::limits;

const MX: u16 = wire::TYPE_MX;
const A: u16 = wire::TYPE_A;
const AAAA: u16 = wire::TYPE_AAAA;
const CNAME: u16 = wire::TYPE_CNAME;

fn n(text: &str) -> Name {
    Name::from_text(text).expect("test names are valid")
}

fn parse(msg: &[u8], id: u16, q: &str, t: QType) -> Result<Outcome, WireError> {
    parse_response(msg, id, &n(q), t)
}

fn mx_list(pairs: &[(u16, &str)]) -> Vec<(u16, Name)> {
    pairs.iter().map(|(p, h)| (*p, n(h))).collect()
}

// ---- names ----------------------------------------------------------------------------------

#[test]
fn names_from_text() {
    assert_eq!(n("Example.ORG.").to_string(), "example.org");
    assert_eq!(n("a.b").as_wire(), b"\x01a\x01b\x00");
    assert_eq!(Name::from_text(""), Err(NameError::Empty));
    assert_eq!(Name::from_text("."), Err(NameError::Empty));
    assert_eq!(Name::from_text("a..b"), Err(NameError::EmptyLabel));
    assert_eq!(
        Name::from_text(&"x".repeat(64)),
        Err(NameError::LabelTooLong)
    );
    assert!(Name::from_text(&"x".repeat(63)).is_ok());
    // 127 one-octet labels are 254 octets with the root: the longest name; one more is not.
    let longest = vec!["a"; 127].join(".");
    assert_eq!(n(&longest).as_wire().len(), 255);
    let too_long = vec!["a"; 128].join(".");
    assert_eq!(Name::from_text(&too_long), Err(NameError::TooLong));
    assert_eq!(Name::from_text("a b"), Err(NameError::BadChar(' ')));
    assert_eq!(Name::from_text("bücher.de"), Err(NameError::BadChar('ü')));
    assert_eq!(Name::from_text("a\\.b"), Err(NameError::BadChar('\\')));
    assert!(Name::root().is_root());
    assert_eq!(Name::root().to_string(), ".");
}

#[test]
fn names_from_the_wire_are_shown_escaped() {
    let msg = b"\x03a.b\x02\x00\n\x00";
    let (name, end) = wire::read_name(msg, 0).expect("valid");
    assert_eq!(end, msg.len());
    assert_eq!(name.to_string(), "a\\046b.\\000\\010");
}

// ---- queries --------------------------------------------------------------------------------

#[test]
fn a_query_has_rd_one_question_and_an_opt_record() {
    let q = wire::build_query(0xbeef, &n("Example.org"), QType::Mx, true);
    assert_eq!(
        &q[..12],
        b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
    );
    assert_eq!(&q[12..25], b"\x07example\x03org\x00");
    assert_eq!(&q[25..29], b"\x00\x0f\x00\x01");
    // OPT: root owner, type 41, class = 1232, TTL 0, RDLENGTH 0
    assert_eq!(&q[29..], b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00");
    let q = wire::build_query(1, &n("a"), QType::Aaaa, false);
    assert_eq!(q.len(), 12 + 3 + 4);
    assert_eq!(&q[15..17], b"\x00\x1c");
    let (id, qname, qtype) = query_question(&q).expect("parsable");
    assert_eq!((id, qname.as_slice(), qtype), (1, &b"\x01a\x00"[..], AAAA));
}

// ---- responses ------------------------------------------------------------------------------

/// MX 10 mx1.example.org, MX 20 mx2.example.org, with the owners and the exchanges' domain
/// compressed against the question.
fn mx_response(id: u16) -> Vec<u8> {
    let qname = name("example.org");
    // question name at 12; "mx1" + pointer to 12 in the first record's rdata.
    let r1 = rr(
        &ptr(12),
        MX,
        &mx_rdata(10, &[b"\x03mx1".as_slice(), &ptr(12)].concat()),
    );
    let r2 = rr(
        &ptr(12),
        MX,
        &mx_rdata(20, &[b"\x03mx2".as_slice(), &ptr(12)].concat()),
    );
    response(id, 0, false, &qname, MX, &[r2, r1])
}

#[test]
fn mx_answers_with_compression() {
    let msg = mx_response(7);
    assert_eq!(
        parse(&msg, 7, "EXAMPLE.org", QType::Mx),
        Ok(Outcome::Mx(mx_list(&[
            (20, "mx2.example.org"),
            (10, "mx1.example.org")
        ])))
    );
}

#[test]
fn the_question_is_matched_ignoring_case_only() {
    let msg = response(1, 0, false, &name("ExAmPle.Org"), MX, &[]);
    assert_eq!(
        parse(&msg, 1, "example.org", QType::Mx),
        Ok(Outcome::NoData)
    );
    assert_eq!(
        parse(&msg, 1, "example.net", QType::Mx),
        Err(WireError::QuestionMismatch)
    );
    assert_eq!(
        parse(&msg, 1, "example.org", QType::A),
        Err(WireError::QuestionMismatch)
    );
    assert_eq!(
        parse(&msg, 2, "example.org", QType::Mx),
        Err(WireError::IdMismatch)
    );
    // class CH instead of IN
    let mut chaos = msg.clone();
    let l = chaos.len();
    chaos[l - 1] = 3;
    assert_eq!(
        parse(&chaos, 1, "example.org", QType::Mx),
        Err(WireError::QuestionMismatch)
    );
    // no question at all, or two
    let mut none = msg.clone();
    none[5] = 0;
    assert_eq!(
        parse(&none, 1, "example.org", QType::Mx),
        Err(WireError::QuestionMismatch)
    );
    let mut query = msg.clone();
    query[2] &= 0x7f;
    assert_eq!(
        parse(&query, 1, "example.org", QType::Mx),
        Err(WireError::NotResponse)
    );
    let mut opcode = msg;
    opcode[2] |= 0x10;
    assert_eq!(
        parse(&opcode, 1, "example.org", QType::Mx),
        Err(WireError::Opcode(2))
    );
}

#[test]
fn every_truncation_of_a_response_is_an_error() {
    let msg = mx_response(9);
    for len in 0..msg.len() {
        assert!(
            parse(&msg[..len], 9, "example.org", QType::Mx).is_err(),
            "cut at {len} was accepted"
        );
    }
    assert!(parse(&msg, 9, "example.org", QType::Mx).is_ok());
}

#[test]
fn pointer_loops_and_forward_pointers_are_refused() {
    // A pointer to itself, in the question.
    let mut m = header_and_question(1, 0, false, &[], MX, 0);
    m.truncate(12);
    m.extend_from_slice(&ptr(12));
    m.extend_from_slice(b"\x00\x0f\x00\x01");
    assert_eq!(
        parse(&m, 1, "example.org", QType::Mx),
        Err(WireError::ForwardPointer)
    );
    // Two labels that point at each other: the second pointer is a forward one.
    let (_, e) = wire::read_name(b"\x01a\xc0\x00", 0).expect_err_pair();
    assert_eq!(e, WireError::NameTooLong);
    assert_eq!(
        wire::read_name(b"\xc0\x02\xc0\x00", 0).err(),
        Some(WireError::ForwardPointer)
    );
    // A label type 01 or 10.
    assert_eq!(
        wire::read_name(b"\x41a", 0).err(),
        Some(WireError::BadLabelType)
    );
    assert_eq!(
        wire::read_name(b"\x81a", 0).err(),
        Some(WireError::BadLabelType)
    );
}

/// `read_name` of a name that loops through labels: backward pointers only, but the label is
/// read again and again until the name is too long.
trait ExpectErrPair {
    fn expect_err_pair(self) -> ((), WireError);
}
impl ExpectErrPair for Result<(Name, usize), WireError> {
    fn expect_err_pair(self) -> ((), WireError) {
        match self {
            Ok((n, _)) => panic!("accepted {n}"),
            Err(e) => ((), e),
        }
    }
}

#[test]
fn a_chain_of_pointers_is_bounded() {
    // Pointers at 2, 4, 6, ... each to the one before; the first points at a root octet.
    let mut m = vec![0u8, 0];
    for i in 0..200u16 {
        m.extend_from_slice(&ptr(i * 2));
    }
    // From offset 2 + 2*126 the chain has 127 jumps: allowed; one more is not.
    assert!(wire::read_name(&m, 2 + 2 * 126).is_ok());
    assert_eq!(
        wire::read_name(&m, 2 + 2 * 127).err(),
        Some(WireError::PointerChain)
    );
}

#[test]
fn a_name_longer_than_255_octets_through_pointers_is_refused() {
    // 63-octet labels: four of them are 256 octets with the root.
    let mut m = vec![0u8];
    let mut last = 0u16;
    for _ in 0..4 {
        let at = m.len() as u16;
        m.push(63);
        m.extend_from_slice(&[b'x'; 63]);
        m.extend_from_slice(&ptr(last));
        last = at;
    }
    assert_eq!(
        wire::read_name(&m, last as usize).err(),
        Some(WireError::NameTooLong)
    );
    // Three are 193 octets: fine.
    let third = 1 + 2 * 66;
    assert_eq!(
        wire::read_name(&m, third).map(|(n, _)| n.as_wire().len()),
        Ok(3 * 64 + 1)
    );
}

#[test]
fn record_data_must_have_its_types_length() {
    let q = name("h.example");
    let bad_a = rr(&ptr(12), A, &[1, 2, 3, 4, 5]);
    assert_eq!(
        parse(
            &response(1, 0, false, &q, A, &[bad_a]),
            1,
            "h.example",
            QType::A
        ),
        Err(WireError::BadRdata)
    );
    let bad_aaaa = rr(&ptr(12), AAAA, &[0; 15]);
    assert_eq!(
        parse(
            &response(1, 0, false, &q, AAAA, &[bad_aaaa]),
            1,
            "h.example",
            QType::Aaaa
        ),
        Err(WireError::BadRdata)
    );
    // An exchange that ends before the record data does.
    let bad_mx = rr(
        &ptr(12),
        MX,
        &[&mx_rdata(1, &name("m"))[..], b"junk"].concat(),
    );
    assert_eq!(
        parse(
            &response(1, 0, false, &q, MX, &[bad_mx]),
            1,
            "h.example",
            QType::Mx
        ),
        Err(WireError::BadRdata)
    );
    // Record data running past the message.
    let mut over = response(1, 0, false, &q, A, &[rr(&ptr(12), A, &[1, 2, 3, 4])]);
    over.truncate(over.len() - 1);
    assert_eq!(
        parse(&over, 1, "h.example", QType::A),
        Err(WireError::Truncated)
    );
}

#[test]
fn other_types_and_classes_in_the_answer_are_skipped() {
    let q = name("h.example");
    let txt = rr(&ptr(12), 16, b"\x05hello");
    let mut chaos_a = rr(&ptr(12), A, &[9, 9, 9, 9]);
    chaos_a[4] = 0; // class 3 (CH)
    chaos_a[5] = 3;
    let a = addr_rr(&ptr(12), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    // An A record for another owner is not the answer either.
    let other = addr_rr(
        &name("other.example"),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
    );
    let msg = response(3, 0, false, &q, A, &[txt, chaos_a, other, a]);
    assert_eq!(
        parse(&msg, 3, "h.example", QType::A),
        Ok(Outcome::Addrs(vec![IpAddr::V4(Ipv4Addr::new(
            192, 0, 2, 7
        ))]))
    );
}

#[test]
fn cname_chains_are_followed_within_the_answer() {
    let q = name("www.example");
    // www.example CNAME a.example; a.example CNAME b.example; b.example AAAA ::1
    let c1 = rr(&ptr(12), CNAME, &name("a.example"));
    let c2 = rr(&name("A.example"), CNAME, &name("b.example"));
    let data = addr_rr(&name("b.example"), IpAddr::V6(Ipv6Addr::LOCALHOST));
    let msg = response(5, 0, false, &q, AAAA, &[data, c2.clone(), c1.clone()]);
    assert_eq!(
        parse(&msg, 5, "www.example", QType::Aaaa),
        Ok(Outcome::Addrs(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]))
    );
    // The chain ends at a name the answer has nothing for: ask for it.
    let msg = response(5, 0, false, &q, AAAA, &[c1.clone(), c2]);
    assert_eq!(
        parse(&msg, 5, "www.example", QType::Aaaa),
        Ok(Outcome::Cname(Box::new(n("b.example"))))
    );
    // A loop of CNAMEs is refused.
    let back = rr(&name("a.example"), CNAME, &name("www.example"));
    let msg = response(5, 0, false, &q, AAAA, &[c1, back]);
    assert_eq!(
        parse(&msg, 5, "www.example", QType::Aaaa),
        Err(WireError::BadRdata)
    );
}

#[test]
fn rcodes_and_truncation() {
    let q = name("x.example");
    assert_eq!(
        parse(
            &response(1, 3, false, &q, MX, &[]),
            1,
            "x.example",
            QType::Mx
        ),
        Ok(Outcome::NxDomain)
    );
    assert_eq!(
        parse(
            &response(1, 2, false, &q, MX, &[]),
            1,
            "x.example",
            QType::Mx
        ),
        Ok(Outcome::ServerFailure(2))
    );
    assert_eq!(
        parse(
            &response(1, 5, false, &q, MX, &[]),
            1,
            "x.example",
            QType::Mx
        ),
        Ok(Outcome::ServerFailure(5))
    );
    // TC: the answer section is not read (it may be cut anywhere).
    let mut tc = response(1, 0, true, &q, MX, &[]);
    tc[7] = 5;
    tc.extend_from_slice(b"\xc0");
    assert_eq!(
        parse(&tc, 1, "x.example", QType::Mx),
        Ok(Outcome::Truncated)
    );
    // Null MX parses as an MX to the root; the resolver says what it means.
    let null = rr(&ptr(12), MX, &mx_rdata(0, &[0]));
    assert_eq!(
        parse(
            &response(1, 0, false, &q, MX, &[null]),
            1,
            "x.example",
            QType::Mx
        ),
        Ok(Outcome::Mx(vec![(0, Name::root())]))
    );
}

#[test]
fn answers_kept_are_bounded() {
    let q = name("many.example");
    let answers: Vec<Vec<u8>> = (0..200u16)
        .map(|i| rr(&ptr(12), MX, &mx_rdata(i, &ptr(12))))
        .collect();
    let msg = response(1, 0, false, &q, MX, &answers);
    match parse(&msg, 1, "many.example", QType::Mx) {
        Ok(Outcome::Mx(list)) => assert_eq!(list.len(), limits::DNS_MAX_ANSWERS),
        other => panic!("{other:?}"),
    }
    let mut huge = msg;
    huge.resize(limits::DNS_MESSAGE_MAX + 1, 0);
    assert_eq!(
        parse(&huge, 1, "many.example", QType::Mx),
        Err(WireError::TooLong)
    );
}

// ---- the resolver on virtual time -----------------------------------------------------------

fn s1() -> SocketAddr {
    "192.0.2.1:53".parse().expect("literal")
}
fn s2() -> SocketAddr {
    "192.0.2.2:53".parse().expect("literal")
}

/// Drains the resolver's outputs.
fn outputs(r: &mut Resolver) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

/// The one datagram among `outs`: (server, id, qname wire, qtype).
/// A datagram sent: server, id, question name (wire form), question type, the bytes.
type Sent = (SocketAddr, u16, Vec<u8>, u16, Vec<u8>);

fn sent(outs: &[Output]) -> Vec<Sent> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { server, datagram } => {
                let (id, qn, qt) = query_question(datagram).expect("a query");
                Some((*server, id, qn, qt, datagram.clone()))
            }
            _ => None,
        })
        .collect()
}

fn done(outs: &[Output]) -> Vec<Answer> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Done { answer, .. } => Some(answer.clone()),
            _ => None,
        })
        .collect()
}

/// A reply to a sent query, built from its id and question.
fn reply(
    q: &(SocketAddr, u16, Vec<u8>, u16, Vec<u8>),
    rcode: u8,
    tc: bool,
    answers: &[Vec<u8>],
) -> Vec<u8> {
    response(q.1, rcode, tc, &q.2, q.3, answers)
}

fn mx_rrs(pairs: &[(u16, &str)]) -> Vec<Vec<u8>> {
    pairs
        .iter()
        .map(|(p, h)| rr(&ptr(12), MX, &mx_rdata(*p, &name(h))))
        .collect()
}

#[test]
fn without_servers_every_lookup_fails_temporarily_at_once() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    r.resolve(now, "example.org", Want::Addresses)
        .expect("valid");
    let outs = outputs(&mut r);
    assert_eq!(
        done(&outs),
        vec![
            Answer::Mx(MxResult::TempFail(NO_SERVERS.to_string())),
            Answer::Addresses(AddrResult::TempFail(NO_SERVERS.to_string()))
        ]
    );
    assert_eq!(r.next_deadline(), None);
    assert_eq!(r.stats().sent, 0);
    assert!(r.resolve(now, "bad..name", Want::Mx).is_err());
}

#[test]
fn an_mx_answer_gives_the_hosts_by_preference() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    let id = r.resolve(now, "Example.ORG", Want::Mx).expect("valid");
    let outs = outputs(&mut r);
    let q = &sent(&outs)[0];
    assert_eq!(q.0, s1());
    assert_eq!(q.3, MX);
    assert_eq!(r.next_deadline(), Some(now + limits::DNS_UDP_TIMEOUT));
    let msg = reply(
        q,
        0,
        false,
        &mx_rrs(&[(20, "b.example"), (10, "a.example"), (20, "c.example")]),
    );
    r.handle_datagram(now, s1(), &msg);
    let outs = outputs(&mut r);
    assert_eq!(
        outs,
        vec![Output::Done {
            lookup: id,
            name: n("example.org"),
            answer: Answer::Mx(MxResult::Hosts(mx_list(&[
                (10, "a.example"),
                (20, "b.example"),
                (20, "c.example")
            ])))
        }]
    );
    assert_eq!(r.pending(), 0);
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn no_mx_null_mx_and_nxdomain() {
    let now = Instant::now();
    let cases: Vec<(u8, Vec<Vec<u8>>, MxResult)> = vec![
        (0, vec![], MxResult::NoMx),
        (
            0,
            vec![rr(&ptr(12), MX, &mx_rdata(0, &[0]))],
            MxResult::NullMx,
        ),
        (
            0,
            vec![
                rr(&ptr(12), MX, &mx_rdata(0, &[0])),
                rr(&ptr(12), MX, &mx_rdata(5, &name("real.example"))),
            ],
            MxResult::Hosts(mx_list(&[(5, "real.example")])),
        ),
        (3, vec![], MxResult::NxDomain),
    ];
    for (rcode, answers, want) in cases {
        let mut r = Resolver::new(vec![s1()]);
        r.resolve(now, "example.org", Want::Mx).expect("valid");
        let q = sent(&outputs(&mut r))[0].clone();
        r.handle_datagram(now, s1(), &reply(&q, rcode, false, &answers));
        assert_eq!(done(&outputs(&mut r)), vec![Answer::Mx(want)]);
    }
}

#[test]
fn mismatched_answers_are_ignored_and_counted() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    let good = reply(&q, 0, false, &mx_rrs(&[(1, "mx.example.org")]));
    // Wrong id.
    let mut wrong_id = good.clone();
    wrong_id[0] ^= 0xff;
    r.handle_datagram(now, s1(), &wrong_id);
    // Right id from the wrong server (or port).
    r.handle_datagram(now, s2(), &good);
    r.handle_datagram(now, "192.0.2.1:5353".parse().expect("literal"), &good);
    // Right id and server, another question.
    let other = response(
        q.1,
        0,
        false,
        &name("evil.example"),
        MX,
        &mx_rrs(&[(1, "evil.example")]),
    );
    r.handle_datagram(now, s1(), &other);
    // A query, not a response, and junk.
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    r.handle_datagram(now, s1(), &not_response);
    r.handle_datagram(now, s1(), b"\x01");
    assert_eq!(outputs(&mut r), vec![]);
    assert_eq!(r.stats().ignored, 6);
    // The real answer still counts.
    r.handle_datagram(now, s1(), &good);
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::Hosts(mx_list(&[(
            1,
            "mx.example.org"
        )])))]
    );
    // A duplicate after the answer is ignored too.
    r.handle_datagram(now, s1(), &good);
    assert_eq!(outputs(&mut r), vec![]);
    assert_eq!(r.stats().ignored, 7);
}

#[test]
fn timeouts_move_across_servers_then_fail_temporarily() {
    let t0 = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(t0, "example.org", Want::Mx).expect("valid");
    let first = sent(&outputs(&mut r));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, s1());
    // Nothing happens before the deadline.
    r.handle_timeout(t0 + Duration::from_millis(1999));
    assert_eq!(outputs(&mut r), vec![]);
    // Rounds: s1 2 s, s2 2 s, s1 4 s, s2 4 s; then a temporary failure naming the last.
    let mut at = t0;
    let mut ids = vec![first[0].1];
    for (server, wait) in [(s2(), 2), (s1(), 2), (s2(), 4)] {
        at += Duration::from_secs(wait);
        assert_eq!(r.next_deadline(), Some(at));
        r.handle_timeout(at);
        let q = sent(&outputs(&mut r));
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, server);
        ids.push(q[0].1);
        // A late answer to an earlier attempt is no longer accepted.
        let late = reply(&first[0], 0, false, &[]);
        r.handle_datagram(at, s1(), &late);
        assert_eq!(outputs(&mut r), vec![]);
    }
    at += Duration::from_secs(4);
    assert_eq!(r.next_deadline(), Some(at));
    r.handle_timeout(at);
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::TempFail(
            "MX example.org: no answer from 192.0.2.2:53 within 4s".to_string()
        ))]
    );
    assert_eq!(r.stats().timeouts, 4);
    assert_eq!(r.stats().sent, 4);
    assert_eq!(r.next_deadline(), None);
    // Four fresh ids (at least two different: the chance that four random ids are equal is
    // 2^-48).
    ids.dedup();
    assert!(ids.len() > 1, "ids {ids:?}");
}

#[test]
fn servfail_and_refused_try_the_next_server_then_fail_temporarily() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    r.handle_datagram(now, s1(), &reply(&q, 2, false, &[]));
    let q2 = sent(&outputs(&mut r));
    assert_eq!(q2.len(), 1, "asked the second server at once");
    assert_eq!(q2[0].0, s2());
    r.handle_datagram(now, s2(), &reply(&q2[0], 5, false, &[]));
    // Both refused: no third try of either, no waiting.
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::TempFail(
            "MX example.org: REFUSED from 192.0.2.2:53".to_string()
        ))]
    );
    assert_eq!(r.next_deadline(), None);

    // SERVFAIL from the first, an answer from the second.
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    r.handle_datagram(now, s1(), &reply(&q, 2, false, &[]));
    let q2 = sent(&outputs(&mut r))[0].clone();
    r.handle_datagram(
        now,
        s2(),
        &reply(&q2, 0, false, &mx_rrs(&[(5, "mx.example.org")])),
    );
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::Hosts(mx_list(&[(
            5,
            "mx.example.org"
        )])))]
    );
}

#[test]
fn a_malformed_answer_from_the_server_moves_on() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    let mut bad = reply(&q, 0, false, &mx_rrs(&[(5, "mx.example.org")]));
    bad.pop();
    r.handle_datagram(now, s1(), &bad);
    // One server, asked once more (second round), then it fails for good.
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::TempFail(
            "MX example.org: malformed DNS response: message ends early from 192.0.2.1:53"
                .to_string()
        ))]
    );
}

#[test]
fn a_formerr_is_asked_again_without_edns_then_counts_as_a_failure() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    assert_eq!(&q.4[10..12], b"\x00\x01", "first query has an OPT record");
    r.handle_datagram(now, s1(), &reply(&q, 1, false, &[]));
    let q2 = sent(&outputs(&mut r));
    assert_eq!(q2.len(), 1);
    assert_eq!(q2[0].0, s1(), "the same server again");
    assert_eq!(&q2[0].4[10..12], b"\x00\x00", "without OPT");
    assert_ne!(q2[0].1, q.1, "with a fresh id");
    // A second FORMERR is a failure of that server like SERVFAIL.
    r.handle_datagram(now, s1(), &reply(&q2[0], 1, false, &[]));
    let q3 = sent(&outputs(&mut r));
    assert_eq!(q3[0].0, s2());
    r.handle_datagram(
        now,
        s2(),
        &reply(&q3[0], 0, false, &mx_rrs(&[(1, "mx.example.org")])),
    );
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::Hosts(mx_list(&[(
            1,
            "mx.example.org"
        )])))]
    );
}

fn tcp_connect(outs: &[Output]) -> (TcpId, SocketAddr, Vec<u8>) {
    outs.iter()
        .find_map(|o| match o {
            Output::TcpConnect {
                conn,
                server,
                request,
            } => Some((*conn, *server, request.clone())),
            _ => None,
        })
        .expect("a TCP connect")
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "big.example", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    r.handle_datagram(now, s1(), &reply(&q, 0, true, &[]));
    let (conn, server, request) = tcp_connect(&outputs(&mut r));
    assert_eq!(server, s1(), "TCP to the server that truncated");
    assert_eq!(r.next_deadline(), Some(now + limits::DNS_TCP_TIMEOUT));
    let len = u16::from_be_bytes([request[0], request[1]]) as usize;
    assert_eq!(request.len(), 2 + len);
    let (id, qn, qt) = query_question(&request[2..]).expect("a query");
    // A datagram with the TCP query's id is not accepted: the question is on TCP now.
    let answers = mx_rrs(&[(10, "mx1.big.example"), (20, "mx2.big.example")]);
    let msg = response(id, 0, false, &qn, qt, &answers);
    r.handle_datagram(now, s1(), &msg);
    assert_eq!(outputs(&mut r), vec![]);
    // The TCP answer, one byte at a time.
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    for b in &framed[..framed.len() - 1] {
        r.handle_tcp_data(now, conn, std::slice::from_ref(b));
        assert_eq!(outputs(&mut r), vec![]);
    }
    r.handle_tcp_data(now, conn, &framed[framed.len() - 1..]);
    let outs = outputs(&mut r);
    assert_eq!(outs[0], Output::TcpClose { conn });
    assert_eq!(
        done(&outs),
        vec![Answer::Mx(MxResult::Hosts(mx_list(&[
            (10, "mx1.big.example"),
            (20, "mx2.big.example")
        ])))]
    );
    assert_eq!(r.stats().tcp, 1);
}

#[test]
fn a_failed_tcp_exchange_moves_to_the_next_server() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1(), s2()]);
    r.resolve(now, "big.example", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    r.handle_datagram(now, s1(), &reply(&q, 0, true, &[]));
    let (conn, _, _) = tcp_connect(&outputs(&mut r));
    r.handle_tcp_closed(now, conn);
    let q2 = sent(&outputs(&mut r));
    assert_eq!(q2.len(), 1);
    assert_eq!(q2[0].0, s2());
    // s2 truncates too and its TCP exchange times out: a TCP close and a UDP retry of s1?
    // No: s1 failed over TCP, so only s2 is left, and it is asked again in round two.
    r.handle_datagram(now, s2(), &reply(&q2[0], 0, true, &[]));
    let (conn2, server2, _) = tcp_connect(&outputs(&mut r));
    assert_eq!(server2, s2());
    let at = now + limits::DNS_TCP_TIMEOUT;
    r.handle_timeout(at);
    let outs = outputs(&mut r);
    assert!(outs.contains(&Output::TcpClose { conn: conn2 }));
    let q3 = sent(&outs);
    assert_eq!(q3.len(), 1);
    assert_eq!(q3[0].0, s2());
}

#[test]
fn addresses_combine_a_and_aaaa() {
    let now = Instant::now();
    let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25));
    let v6 = IpAddr::V6("2001:db8::25".parse().expect("literal"));
    type Case = (Option<IpAddr>, u8, Option<IpAddr>, u8, AddrResult);
    let cases: Vec<Case> = vec![
        (Some(v4), 0, Some(v6), 0, AddrResult::Addrs(vec![v4, v6])),
        (None, 0, Some(v6), 0, AddrResult::Addrs(vec![v6])),
        (Some(v4), 0, None, 2, AddrResult::Addrs(vec![v4])),
        (None, 0, None, 0, AddrResult::NoAddresses),
        (None, 3, None, 3, AddrResult::NxDomain),
    ];
    for (a, a_rcode, aaaa, aaaa_rcode, want) in cases {
        let mut r = Resolver::new(vec![s1()]);
        r.resolve(now, "mx.example", Want::Addresses)
            .expect("valid");
        let qs = sent(&outputs(&mut r));
        assert_eq!(qs.len(), 2);
        // Answer AAAA first: the order of arrival does not matter.
        let (qa, qaaaa) = if qs[0].3 == A {
            (&qs[0], &qs[1])
        } else {
            (&qs[1], &qs[0])
        };
        let rrs = |ip: Option<IpAddr>| ip.map(|ip| vec![addr_rr(&ptr(12), ip)]).unwrap_or_default();
        r.handle_datagram(now, s1(), &reply(qaaaa, aaaa_rcode, false, &rrs(aaaa)));
        if aaaa_rcode == 2 {
            // SERVFAIL from the only server: it is not asked again, the AAAA question fails.
            assert_eq!(sent(&outputs(&mut r)), vec![]);
        }
        r.handle_datagram(now, s1(), &reply(qa, a_rcode, false, &rrs(a)));
        assert_eq!(done(&outputs(&mut r)), vec![Answer::Addresses(want)]);
    }
}

#[test]
fn a_cname_outside_the_answer_is_asked_for() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    r.resolve(now, "alias.example", Want::Mx).expect("valid");
    let q = sent(&outputs(&mut r))[0].clone();
    let c = rr(&ptr(12), CNAME, &name("real.example"));
    r.handle_datagram(now, s1(), &reply(&q, 0, false, &[c]));
    let q2 = sent(&outputs(&mut r));
    assert_eq!(q2.len(), 1);
    assert_eq!(super::testing::name_text(&q2[0].2), "real.example");
    r.handle_datagram(
        now,
        s1(),
        &reply(&q2[0], 0, false, &mx_rrs(&[(1, "mx.real.example")])),
    );
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::Hosts(mx_list(&[(
            1,
            "mx.real.example"
        )])))]
    );
    // A chain that goes on and on ends as a temporary failure.
    let mut r = Resolver::new(vec![s1()]);
    r.resolve(now, "c0.example", Want::Mx).expect("valid");
    let mut last = outputs(&mut r);
    for i in 0..=limits::DNS_MAX_CNAME_CHAIN {
        let q = sent(&last)[0].clone();
        let c = rr(&ptr(12), CNAME, &name(&format!("c{}.example", i + 1)));
        r.handle_datagram(now, s1(), &reply(&q, 0, false, &[c]));
        last = outputs(&mut r);
    }
    assert_eq!(
        done(&last),
        vec![Answer::Mx(MxResult::TempFail(format!(
            "MX c0.example: more than {} CNAMEs",
            limits::DNS_MAX_CNAME_CHAIN
        )))]
    );
}

#[test]
fn questions_in_flight_are_bounded() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    for i in 0..limits::DNS_MAX_IN_FLIGHT + 5 {
        r.resolve(now, &format!("d{i}.example"), Want::Mx)
            .expect("valid");
    }
    let qs = sent(&outputs(&mut r));
    assert_eq!(qs.len(), limits::DNS_MAX_IN_FLIGHT);
    // Each answer lets one waiting question go.
    r.handle_datagram(now, s1(), &reply(&qs[0], 3, false, &[]));
    let outs = outputs(&mut r);
    assert_eq!(done(&outs), vec![Answer::Mx(MxResult::NxDomain)]);
    let next = sent(&outs);
    assert_eq!(next.len(), 1);
    assert_eq!(
        super::testing::name_text(&next[0].2),
        format!("d{}.example", limits::DNS_MAX_IN_FLIGHT)
    );
    // Ids in flight to one server are all different.
    let mut ids: Vec<u16> = qs.iter().map(|q| q.1).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), limits::DNS_MAX_IN_FLIGHT);
}

#[test]
fn lookups_past_the_limit_fail_temporarily() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    for i in 0..limits::DNS_MAX_LOOKUPS {
        r.resolve(now, &format!("d{i}.example"), Want::Mx)
            .expect("valid");
    }
    outputs(&mut r);
    r.resolve(now, "one-more.example", Want::Mx).expect("valid");
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::TempFail(format!(
            "resolver busy: {} lookups waiting",
            limits::DNS_MAX_LOOKUPS
        )))]
    );
}

#[test]
fn servers_removed_while_asking_fail_the_next_attempt() {
    let now = Instant::now();
    let mut r = Resolver::new(vec![s1()]);
    r.resolve(now, "example.org", Want::Mx).expect("valid");
    outputs(&mut r);
    r.set_servers(vec![]);
    r.handle_timeout(now + limits::DNS_UDP_TIMEOUT);
    assert_eq!(
        done(&outputs(&mut r)),
        vec![Answer::Mx(MxResult::TempFail(NO_SERVERS.to_string()))]
    );
    // More than three servers: the first three are used.
    let many: Vec<SocketAddr> = (1..=5)
        .map(|i| SocketAddr::from(([192, 0, 2, i], 53)))
        .collect();
    r.set_servers(many);
    assert_eq!(r.servers().len(), limits::DNS_MAX_SERVERS);
}

// ---- nameserver configuration ---------------------------------------------------------------

fn no_if(_: &str) -> Option<u32> {
    None
}

#[test]
fn resolv_conf_nameserver_lines() {
    let text = "# comment\n; another\nsearch example.org\noptions ndots:2 timeout:1\n\
                nameserver 192.0.2.53   # trailing comment\n\
                nameserver\tfe80::1%eth7\n\
                nameserver fe80::2%3\n\
                nameserver ns.example.org\n\
                nameserver 192.0.2.53\n\
                  nameserver 2001:db8::53\n\
                nameserver 192.0.2.54\n";
    let if_index = |name: &str| (name == "eth7").then_some(7);
    let servers = parse_resolv_conf(text, &if_index);
    let want: Vec<SocketAddr> = vec![
        "192.0.2.53:53".parse().expect("literal"),
        "[fe80::1%7]:53".parse().expect("literal"),
        "[fe80::2%3]:53".parse().expect("literal"),
    ];
    assert_eq!(servers, want);
    // Unknown interface: that line is dropped; 2001:db8::53 then makes the third.
    let servers = parse_resolv_conf(text, &no_if);
    assert_eq!(servers.len(), 3);
    assert_eq!(servers[2], "[2001:db8::53]:53".parse().expect("literal"));
    assert_eq!(parse_resolv_conf("", &no_if), vec![]);
    assert_eq!(
        parse_resolv_conf(
            "nameserver\nnameservers 1.2.3.4\nnameserver fe80::1%\n",
            &no_if
        ),
        vec![]
    );
}

#[test]
fn resolv_conf_is_reread_only_when_changed_and_not_too_often() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolv.conf");
    let t0 = Instant::now();
    let mut rc = ResolvConf::new(&path);
    // Missing: no servers, not an error.
    assert_eq!(rc.refresh(t0), None);
    assert_eq!(rc.servers(), &[] as &[SocketAddr]);
    std::fs::write(&path, "nameserver 127.0.0.53\n").expect("write");
    // Within 15 s of the last check nothing is looked at.
    assert_eq!(rc.refresh(t0 + Duration::from_secs(14)), None);
    assert_eq!(rc.reads(), 0);
    let t1 = t0 + limits::RESOLV_CONF_CHECK_INTERVAL;
    assert_eq!(
        rc.refresh(t1),
        Some(vec!["127.0.0.53:53".parse().expect("literal")])
    );
    assert_eq!(rc.reads(), 1);
    // Unchanged: stat only, no read.
    assert_eq!(rc.refresh(t1 + limits::RESOLV_CONF_CHECK_INTERVAL), None);
    assert_eq!(rc.reads(), 1);
    // Replaced by a new file (a new inode, as resolvconf and NetworkManager do).
    let tmp = dir.path().join("resolv.conf.new");
    std::fs::write(&tmp, "nameserver 127.0.0.54\nnameserver ::1\n").expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let t2 = t1 + 2 * limits::RESOLV_CONF_CHECK_INTERVAL;
    assert_eq!(rc.refresh(t2 - Duration::from_secs(1)), None, "too soon");
    assert_eq!(
        rc.refresh(t2),
        Some(vec![
            "127.0.0.54:53".parse().expect("literal"),
            "[::1]:53".parse().expect("literal")
        ])
    );
    assert_eq!(rc.reads(), 2);
    // Removed: no servers.
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(
        rc.refresh(t2 + limits::RESOLV_CONF_CHECK_INTERVAL),
        Some(vec![])
    );
}

#[test]
fn dns_servers_values() {
    let v = parse_dns_servers("127.0.0.1:5353, ::1 [2001:db8::1]:54").expect("valid");
    let want: Vec<SocketAddr> = vec![
        "127.0.0.1:5353".parse().expect("literal"),
        "[::1]:53".parse().expect("literal"),
        "[2001:db8::1]:54".parse().expect("literal"),
    ];
    assert_eq!(v, want);
    assert_eq!(parse_dns_servers(""), Ok(vec![]));
    assert_eq!(
        parse_dns_servers("[fe80::1%2]"),
        Ok(vec!["[fe80::1%2]:53".parse().expect("literal")])
    );
    assert_eq!(
        parse_dns_servers("192.0.2.1"),
        Ok(vec!["192.0.2.1:53".parse().expect("literal")])
    );
    assert!(parse_dns_servers("ns.example.org").is_err());
    assert!(parse_dns_servers("127.0.0.1:0").is_err());
    assert!(parse_dns_servers("127.0.0.1:99999").is_err());
    let four = parse_dns_servers("192.0.2.1, 192.0.2.2, 192.0.2.3, 192.0.2.4");
    assert_eq!(
        four,
        Err("4 servers listed; at most 3 are used".to_string())
    );
}
