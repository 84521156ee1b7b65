//! The DNS message codec (RFC 1035 §4): builds one-question queries and parses exactly the
//! parts of a response the resolver uses: header, question echo, and the answer section's MX,
//! A, AAAA and CNAME records. Everything else (authority, additional, other types) is skipped
//! without being interpreted.
//!
//! Strict and bounded: names follow RFC 1035 §2.3.4 (labels of 1-63 octets, at most 255
//! octets in all) and compression pointers may only point backwards, so a pointer loop cannot
//! exist and every name costs at most one pass over the message. Every malformed input is a
//! [`WireError`], never a panic, and the work done is linear in the message length.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arrayvec::ArrayVec;

use crate::limits;

/// RR types and the class used (RFC 1035 §3.2.2, RFC 3596 §2.1, RFC 6891 §6.1.1).
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_MX: u16 = 15;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

/// RCODEs the resolver tells apart (RFC 1035 §4.1.1).
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_REFUSED: u8 = 5;

/// Header length (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;

/// Longest query built: header, a 255-octet name, type and class, and an OPT record.
pub const QUERY_MAX: usize = HEADER_LEN + limits::DNS_NAME_MAX + 4 + 11;

/// The record types a lookup asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    Mx,
    A,
    Aaaa,
}

impl QType {
    pub fn code(self) -> u16 {
        match self {
            QType::Mx => TYPE_MX,
            QType::A => TYPE_A,
            QType::Aaaa => TYPE_AAAA,
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QType::Mx => "MX",
            QType::A => "A",
            QType::Aaaa => "AAAA",
        })
    }
}

/// A domain name in uncompressed wire form (length-prefixed labels, ending with the root's
/// zero octet), ASCII letters folded to lower case so that equality is DNS equality
/// (RFC 4343). Held inline: no allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name {
    wire: ArrayVec<u8, { limits::DNS_NAME_MAX }>,
}

/// Why a name given as text is not a usable domain name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    EmptyLabel,
    LabelTooLong,
    TooLong,
    /// A character other than a printable ASCII one (IDNs must be given as A-labels).
    BadChar(char),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty domain name"),
            NameError::EmptyLabel => f.write_str("empty label in domain name"),
            NameError::LabelTooLong => f.write_str("label longer than 63 octets in domain name"),
            NameError::TooLong => f.write_str("domain name longer than 255 octets"),
            NameError::BadChar(c) => write!(f, "character {c:?} in domain name"),
        }
    }
}

impl std::error::Error for NameError {}

impl Name {
    /// The root name ".".
    pub fn root() -> Name {
        let mut wire = ArrayVec::new();
        wire.push(0);
        Name { wire }
    }

    /// Parses a dotted name ("mx.example.org", an optional final dot). Letters are folded to
    /// lower case; any printable ASCII character except `.` and `\` is allowed in a label
    /// (underscores and the like appear in real names), nothing else.
    pub fn from_text(text: &str) -> Result<Name, NameError> {
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Err(NameError::Empty);
        }
        let mut wire: ArrayVec<u8, { limits::DNS_NAME_MAX }> = ArrayVec::new();
        for label in text.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > limits::DNS_LABEL_MAX {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label.chars().find(|c| !c.is_ascii_graphic() || *c == '\\') {
                return Err(NameError::BadChar(c));
            }
            // The length octet, the label and the root's final zero must still fit.
            if wire.len() + 1 + label.len() + 1 > limits::DNS_NAME_MAX {
                return Err(NameError::TooLong);
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        wire.push(0);
        Ok(Name { wire })
    }

    pub fn is_root(&self) -> bool {
        self.wire.len() == 1
    }

    /// The wire form, ending with the root's zero octet.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// The labels, outermost last.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest: &[u8] = &self.wire;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            if len == 0 {
                return None;
            }
            let (label, tail) = tail.split_at(len as usize);
            rest = tail;
            Some(label)
        })
    }
}

impl fmt::Display for Name {
    /// Dotted text without the final dot ("." for the root); an octet that is not printable
    /// ASCII, or is `.` or `\`, is written `\DDD` (RFC 1035 §5.1), so what a server sent
    /// cannot forge a different name or a control character in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        for (i, label) in self.labels().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for &b in label {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// Why a message was refused. Messages from the network are never trusted: each of these is
/// an ordinary outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside a header, name, record or record data.
    Truncated,
    /// Longer than any DNS message can be (65535 octets, the TCP length prefix).
    TooLong,
    /// QR is 0: a query, not a response.
    NotResponse,
    /// An opcode other than QUERY.
    Opcode(u8),
    /// The id differs from the query's.
    IdMismatch,
    /// QDCOUNT is not 1, or the question differs from the one asked.
    QuestionMismatch,
    /// A label type other than a plain label or a pointer (RFC 6891 §5 and RFC 2673 are
    /// obsolete or unused).
    BadLabelType,
    /// A compression pointer to its own position or further on (also rules out loops).
    ForwardPointer,
    /// A name over 255 octets (so also over 127 labels).
    NameTooLong,
    /// More compression pointers in one name than it could have labels: a legitimate name
    /// never needs more, and without this bound a chain of pointers could make every name in
    /// a message cost a walk over the whole message.
    PointerChain,
    /// Record data of the wrong length for its type, or a name not ending where the data
    /// does.
    BadRdata,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("malformed DNS response: message ends early"),
            WireError::TooLong => f.write_str("malformed DNS response: over 65535 octets"),
            WireError::NotResponse => f.write_str("malformed DNS response: not a response"),
            WireError::Opcode(o) => write!(f, "malformed DNS response: opcode {o}"),
            WireError::IdMismatch => f.write_str("DNS response with another id"),
            WireError::QuestionMismatch => f.write_str("DNS response to another question"),
            WireError::BadLabelType => f.write_str("malformed DNS response: bad label type"),
            WireError::ForwardPointer => {
                f.write_str("malformed DNS response: forward compression pointer")
            }
            WireError::NameTooLong => f.write_str("malformed DNS response: name too long"),
            WireError::PointerChain => {
                f.write_str("malformed DNS response: too many compression pointers")
            }
            WireError::BadRdata => f.write_str("malformed DNS response: bad record data"),
        }
    }
}

impl std::error::Error for WireError {}

/// The fixed header (RFC 1035 §4.1.1), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub qr: bool,
    pub opcode: u8,
    pub tc: bool,
    pub rcode: u8,
    pub qdcount: u16,
    pub ancount: u16,
}

/// Decodes the header; only fails when the message is shorter than a header.
pub fn parse_header(msg: &[u8]) -> Result<Header, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    Ok(Header {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        qr: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        tc: flags & 0x0200 != 0,
        rcode: (flags & 0xf) as u8,
        qdcount: u16::from_be_bytes([msg[4], msg[5]]),
        ancount: u16::from_be_bytes([msg[6], msg[7]]),
    })
}

/// Builds a standard query: RD set (we ask a recursive resolver), one question of class IN,
/// and with `edns` an OPT record offering `limits::DNS_EDNS_UDP_SIZE` (RFC 6891 §6) so large
/// answers fit a datagram without a TCP retry.
pub fn build_query(id: u16, name: &Name, qtype: QType, edns: bool) -> ArrayVec<u8, QUERY_MAX> {
    let mut q = ArrayVec::new();
    let arcount: u16 = if edns { 1 } else { 0 };
    // id, flags (RD), QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT
    for word in [id, 0x0100, 1, 0, 0, arcount] {
        q.extend(word.to_be_bytes());
    }
    q.extend(name.as_wire().iter().copied());
    q.extend(qtype.code().to_be_bytes());
    q.extend(CLASS_IN.to_be_bytes());
    if edns {
        // root owner, TYPE OPT, CLASS = UDP payload size, TTL = ext-rcode/version/flags 0,
        // RDLENGTH 0
        q.push(0);
        q.extend(TYPE_OPT.to_be_bytes());
        q.extend(limits::DNS_EDNS_UDP_SIZE.to_be_bytes());
        q.extend([0, 0, 0, 0, 0, 0]);
    }
    q
}

/// What an answer said about the question, once its CNAMEs are followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// TC set: the answer did not fit; ask again over TCP (RFC 7766 §5).
    Truncated,
    /// NOERROR with records of the asked type. The MX list is in the order sent; the
    /// addresses likewise. At most `limits::DNS_MAX_ANSWERS` are kept.
    Mx(Vec<(u16, Name)>),
    Addrs(Vec<IpAddr>),
    /// NOERROR, but the name (after CNAMEs) has no record of the asked type.
    NoData,
    /// The chain ended on a CNAME whose target the answer does not cover: ask for it.
    Cname(Box<Name>),
    NxDomain,
    /// SERVFAIL, REFUSED or any other error RCODE: try another server.
    ServerFailure(u8),
}

/// One answer record the parser kept.
enum Rec {
    Cname(Name),
    Mx(u16, Name),
    Addr(IpAddr),
}

/// Parses `msg` as the response to query `id` for (`qname`, `qtype`).
///
/// The id and the question must match (a mismatch is an error the caller treats as "not our
/// answer"). With TC set nothing past the question is read. Answer records are followed
/// from `qname` through at most `limits::DNS_MAX_CNAME_CHAIN` CNAMEs; records for other
/// owners, other types or other classes are skipped.
pub fn parse_response(
    msg: &[u8],
    id: u16,
    qname: &Name,
    qtype: QType,
) -> Result<Outcome, WireError> {
    if msg.len() > limits::DNS_MESSAGE_MAX {
        return Err(WireError::TooLong);
    }
    let h = parse_header(msg)?;
    if h.id != id {
        return Err(WireError::IdMismatch);
    }
    if !h.qr {
        return Err(WireError::NotResponse);
    }
    if h.opcode != 0 {
        return Err(WireError::Opcode(h.opcode));
    }
    if h.qdcount != 1 {
        return Err(WireError::QuestionMismatch);
    }
    let (name, mut pos) = read_name(msg, HEADER_LEN)?;
    let qt = read_u16(msg, pos)?;
    let qc = read_u16(msg, pos + 2)?;
    pos += 4;
    if name != *qname || qt != qtype.code() || qc != CLASS_IN {
        return Err(WireError::QuestionMismatch);
    }
    if h.tc {
        return Ok(Outcome::Truncated);
    }
    match h.rcode {
        RCODE_NOERROR => {}
        RCODE_NXDOMAIN => return Ok(Outcome::NxDomain),
        other => return Ok(Outcome::ServerFailure(other)),
    }

    // Every answer record is read (so a malformed one is an error wherever it sits); those
    // worth keeping are stored with their owner. Bounded: a record is at least 11 octets, so
    // a message holds at most ~6000, and at most DNS_MAX_RECORDS are kept.
    let mut kept: Vec<(Name, Rec)> = Vec::new();
    for _ in 0..h.ancount {
        let (owner, p) = read_name(msg, pos)?;
        let rtype = read_u16(msg, p)?;
        let rclass = read_u16(msg, p + 2)?;
        let rdlen = read_u16(msg, p + 8)? as usize;
        let start = p + 10;
        let end = start + rdlen;
        if end > msg.len() {
            return Err(WireError::Truncated);
        }
        pos = end;
        if rclass != CLASS_IN {
            continue;
        }
        let rec = match rtype {
            TYPE_CNAME => {
                let (target, e) = read_name(msg, start)?;
                if e != end {
                    return Err(WireError::BadRdata);
                }
                Rec::Cname(target)
            }
            TYPE_MX if qtype == QType::Mx => {
                let pref = read_u16(msg, start)?;
                if rdlen < 3 {
                    return Err(WireError::BadRdata);
                }
                let (exchange, e) = read_name(msg, start + 2)?;
                if e != end {
                    return Err(WireError::BadRdata);
                }
                Rec::Mx(pref, exchange)
            }
            TYPE_A if qtype == QType::A => {
                let b: [u8; 4] = msg[start..end]
                    .try_into()
                    .map_err(|_| WireError::BadRdata)?;
                Rec::Addr(IpAddr::V4(Ipv4Addr::from(b)))
            }
            TYPE_AAAA if qtype == QType::Aaaa => {
                let b: [u8; 16] = msg[start..end]
                    .try_into()
                    .map_err(|_| WireError::BadRdata)?;
                Rec::Addr(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => continue,
        };
        if kept.len() < limits::DNS_MAX_RECORDS {
            kept.push((owner, rec));
        }
    }

    // Follow the chain from the question's name.
    let mut current = qname.clone();
    for _ in 0..=limits::DNS_MAX_CNAME_CHAIN {
        let mut mx = Vec::new();
        let mut addrs = Vec::new();
        let mut cname = None;
        for (owner, rec) in &kept {
            if *owner != current {
                continue;
            }
            match rec {
                Rec::Mx(p, n) if mx.len() < limits::DNS_MAX_ANSWERS => mx.push((*p, n.clone())),
                Rec::Addr(a) if addrs.len() < limits::DNS_MAX_ANSWERS => addrs.push(*a),
                Rec::Cname(t) if cname.is_none() => cname = Some(t.clone()),
                _ => {}
            }
        }
        if !mx.is_empty() {
            return Ok(Outcome::Mx(mx));
        }
        if !addrs.is_empty() {
            return Ok(Outcome::Addrs(addrs));
        }
        match cname {
            Some(target) => current = target,
            None if current == *qname => return Ok(Outcome::NoData),
            // NOERROR with a chain ending in a name the answer says nothing more about: the
            // server did not chase it (or it has no data); the caller asks for it.
            None => return Ok(Outcome::Cname(Box::new(current))),
        }
    }
    // Longer than the bound (or a CNAME loop): the caller cannot use it either way.
    Err(WireError::BadRdata)
}

fn read_u16(msg: &[u8], pos: usize) -> Result<u16, WireError> {
    match msg.get(pos..pos + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(WireError::Truncated),
    }
}

/// Reads a possibly compressed name starting at `pos`; returns it and the position just past
/// it in place (after its first pointer, or its root octet).
///
/// A pointer must point strictly before the position it was read from (RFC 1035 §4.1.4 only
/// lets names point back at earlier occurrences): every jump goes backwards, so there is no
/// loop and the walk ends within one pass over the message.
pub fn read_name(msg: &[u8], mut pos: usize) -> Result<(Name, usize), WireError> {
    let mut wire: ArrayVec<u8, { limits::DNS_NAME_MAX }> = ArrayVec::new();
    let mut end: Option<usize> = None;
    let mut jumps = 0;
    loop {
        let Some(&len) = msg.get(pos) else {
            return Err(WireError::Truncated);
        };
        match len & 0xc0 {
            0x00 => {
                let len = len as usize;
                if len == 0 {
                    if wire.try_push(0).is_err() {
                        return Err(WireError::NameTooLong);
                    }
                    return Ok((Name { wire }, end.unwrap_or(pos + 1)));
                }
                let Some(label) = msg.get(pos + 1..pos + 1 + len) else {
                    return Err(WireError::Truncated);
                };
                // Room for this label and the root octet after it.
                if wire.len() + 1 + len + 1 > limits::DNS_NAME_MAX {
                    return Err(WireError::NameTooLong);
                }
                wire.push(len as u8);
                wire.extend(label.iter().map(|b| b.to_ascii_lowercase()));
                pos += 1 + len;
            }
            0xc0 => {
                let Some(&low) = msg.get(pos + 1) else {
                    return Err(WireError::Truncated);
                };
                let target = (((len & 0x3f) as usize) << 8) | low as usize;
                if target >= pos {
                    return Err(WireError::ForwardPointer);
                }
                jumps += 1;
                if jumps > limits::DNS_MAX_LABELS {
                    return Err(WireError::PointerChain);
                }
                if end.is_none() {
                    end = Some(pos + 2);
                }
                pos = target;
            }
            _ => return Err(WireError::BadLabelType),
        }
    }
}
