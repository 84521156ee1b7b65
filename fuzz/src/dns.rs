//! The DNS codec and the resolver session under the fuzzer: arbitrary bytes as the response
//! to a fixed query for `example.org`.
//!
//! Input: `[flags][message...]`. Flags: bits 0-1 the question type (0 and 3 MX, 1 A,
//! 2 AAAA); bit 2 keeps the message's own id (otherwise the query's id is written over its
//! first two octets, so the fuzzer gets past the id check at once); bit 3 delivers the
//! message over TCP, after a truncated UDP answer, in pieces whose sizes come from the
//! message itself.
//!
//! Checks: nothing panics; the parser keeps at most `DNS_MAX_ANSWERS` results of well-formed
//! names that display without control characters; parsing is deterministic; the resolver,
//! given the bytes as its answer, produces a bounded number of outputs and, with time moved
//! on, always finishes the lookup (no hang, no stuck question).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postling::dns::testing::{query_question, response};
use postling::dns::wire::{Outcome, parse_response};
use postling::dns::{AddrResult, Answer, MxResult, Name, Output, QType, Resolver, Want};
use postling::limits;

fn check_name(n: &Name) {
    assert!(n.as_wire().len() <= limits::DNS_NAME_MAX);
    let text = n.to_string();
    assert!(text.len() <= 4 * limits::DNS_NAME_MAX);
    assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
}

pub fn fuzz(data: &[u8]) {
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    let qtype = match flags & 3 {
        1 => QType::A,
        2 => QType::Aaaa,
        _ => QType::Mx,
    };
    let keep_id = flags & 4 != 0;
    let over_tcp = flags & 8 != 0;
    let qname = Name::from_text("example.org").expect("a valid name");

    // The codec alone.
    let id: u16 = 0x1234;
    let mut m = msg.to_vec();
    if !keep_id && m.len() >= 2 {
        m[..2].copy_from_slice(&id.to_be_bytes());
    }
    let parsed = parse_response(&m, id, &qname, qtype);
    assert_eq!(
        parsed,
        parse_response(&m, id, &qname, qtype),
        "not deterministic"
    );
    match &parsed {
        Ok(Outcome::Mx(list)) => {
            assert!(!list.is_empty() && list.len() <= limits::DNS_MAX_ANSWERS);
            list.iter().for_each(|(_, n)| check_name(n));
        }
        Ok(Outcome::Addrs(a)) => assert!(!a.is_empty() && a.len() <= limits::DNS_MAX_ANSWERS),
        Ok(Outcome::Cname(n)) => {
            check_name(n);
            assert!(**n != qname);
        }
        _ => {}
    }

    // The resolver, with the bytes as the answer to its query (no I/O happens here).
    let server = SocketAddr::from(([127, 0, 0, 1], 53));
    let mut r = Resolver::new(vec![server]);
    let t0 = Instant::now();
    let want = if qtype == QType::Mx {
        Want::Mx
    } else {
        Want::Addresses
    };
    r.resolve(t0, "example.org", want).expect("a valid name");
    let outs: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    let Some((qid, q_name, q_type)) = outs.iter().find_map(|o| match o {
        Output::Send { datagram, .. } => {
            query_question(datagram).filter(|(_, _, t)| *t == qtype.code())
        }
        _ => None,
    }) else {
        panic!("no query for {qtype}: {outs:?}");
    };
    if !keep_id && m.len() >= 2 {
        m[..2].copy_from_slice(&qid.to_be_bytes());
    }
    if over_tcp {
        r.handle_datagram(t0, server, &response(qid, 0, true, &q_name, q_type, &[]));
        let conn = std::iter::from_fn(|| r.poll_output()).find_map(|o| match o {
            Output::TcpConnect { conn, request, .. } => Some((conn, request)),
            _ => None,
        });
        let Some((conn, request)) = conn else {
            panic!("a truncated answer did not lead to TCP");
        };
        let (tcp_id, _, _) = query_question(&request[2..]).expect("a query");
        if !keep_id && m.len() >= 2 {
            m[..2].copy_from_slice(&tcp_id.to_be_bytes());
        }
        let mut framed = (m.len().min(u16::MAX as usize) as u16)
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&m);
        let mut rest = &framed[..];
        let mut i = 0;
        while !rest.is_empty() {
            let cut = (1 + *m.get(i).unwrap_or(&255) as usize).min(rest.len());
            r.handle_tcp_data(t0, conn, &rest[..cut]);
            rest = &rest[cut..];
            i += 1;
        }
    } else {
        r.handle_datagram(t0, server, &m);
    }

    // Move time on until the lookup finishes; it must, within the retry budget.
    let mut finished = false;
    let mut now = t0;
    for _ in 0..64 {
        let mut outputs = 0;
        while let Some(o) = r.poll_output() {
            outputs += 1;
            assert!(outputs <= 16, "too many outputs for one step");
            if let Output::Done { answer, .. } = o {
                finished = true;
                match answer {
                    Answer::Mx(MxResult::Hosts(h)) => {
                        assert!(!h.is_empty() && h.len() <= limits::DNS_MAX_ANSWERS);
                        assert!(h.windows(2).all(|w| w[0].0 <= w[1].0), "not sorted");
                        h.iter().for_each(|(_, n)| {
                            check_name(n);
                            assert!(!n.is_root());
                        });
                    }
                    Answer::Addresses(AddrResult::Addrs(a)) => {
                        assert!(!a.is_empty() && a.len() <= 2 * limits::DNS_MAX_ANSWERS)
                    }
                    _ => {}
                }
            }
        }
        if finished {
            break;
        }
        match r.next_deadline() {
            Some(d) => {
                assert!(d > now, "a deadline in the past");
                assert!(
                    d - now <= Duration::from_secs(60),
                    "a deadline too far away"
                );
                now = d;
                r.handle_timeout(now);
            }
            None => panic!("lookup pending without a deadline"),
        }
    }
    assert!(finished, "the lookup never finished");
    assert_eq!(r.pending(), 0);
    assert_eq!(r.next_deadline(), None);
}
