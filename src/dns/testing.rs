//! Builders of DNS responses for the tests, the loopback test server and the fuzz seeds: they
//! make well-formed and deliberately broken packets by hand, independent of the parser they
//! test. Not used by the server itself.

use std::net::IpAddr;

use super::wire::{self, HEADER_LEN};

/// A name in uncompressed wire form ("." is the root).
pub fn name(text: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in text
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

/// A compression pointer to `offset`; `ptr(12)` is the question's name.
pub fn ptr(offset: u16) -> Vec<u8> {
    (0xc000 | offset).to_be_bytes().to_vec()
}

/// A resource record: `owner` in wire form (plain, or ending in a pointer), type, class IN,
/// TTL 300, and `rdata`.
pub fn rr(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    r.extend_from_slice(&300u32.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

pub fn mx_rdata(pref: u16, exchange: &[u8]) -> Vec<u8> {
    let mut d = pref.to_be_bytes().to_vec();
    d.extend_from_slice(exchange);
    d
}

pub fn addr_rr(owner: &[u8], ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => rr(owner, wire::TYPE_A, &a.octets()),
        IpAddr::V6(a) => rr(owner, wire::TYPE_AAAA, &a.octets()),
    }
}

/// A response header and question: QR, RD, RA set, `rcode`, TC if `tc`, ANCOUNT `ancount`.
pub fn header_and_question(
    id: u16,
    rcode: u8,
    tc: bool,
    qname: &[u8],
    qtype: u16,
    ancount: u16,
) -> Vec<u8> {
    let mut flags: u16 = 0x8180 | rcode as u16;
    if tc {
        flags |= 0x0200;
    }
    let mut m = Vec::new();
    for w in [id, flags, 1, ancount, 0, 0] {
        m.extend_from_slice(&w.to_be_bytes());
    }
    m.extend_from_slice(qname);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    m
}

/// A whole response with the given answer records.
pub fn response(
    id: u16,
    rcode: u8,
    tc: bool,
    qname: &[u8],
    qtype: u16,
    answers: &[Vec<u8>],
) -> Vec<u8> {
    let mut m = header_and_question(id, rcode, tc, qname, qtype, answers.len() as u16);
    for a in answers {
        m.extend_from_slice(a);
    }
    m
}

/// The id, question name (wire form, as sent) and type of a query, or None if it is not a
/// one-question query this module built.
pub fn query_question(query: &[u8]) -> Option<(u16, Vec<u8>, u16)> {
    if query.len() < HEADER_LEN + 5 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let mut pos = HEADER_LEN;
    loop {
        let len = *query.get(pos)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    let qname = query.get(HEADER_LEN..pos)?.to_vec();
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    Some((id, qname, qtype))
}

/// The dotted text of a wire-form name without compression (lower-cased).
pub fn name_text(wire_name: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut pos = 0;
    while let Some(&len) = wire_name.get(pos) {
        if len == 0 {
            break;
        }
        let label = wire_name
            .get(pos + 1..pos + 1 + len as usize)
            .unwrap_or(&[]);
        parts.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len as usize;
    }
    parts.join(".")
}
