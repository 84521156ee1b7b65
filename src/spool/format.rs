//! The spool's on-disk text formats: queue ids, the envelope header at the top of every
//! message file and the per-entry delivery state file. Pure functions over bytes, so every
//! format decision is unit-tested without touching a disk.
//!
//! Both formats are one field per line, `key SP value LF`, after a version line. Values are
//! percent-escaped (`%`, C0 controls and DEL become `%XX`), so no value can contain the line
//! separator or smuggle another field; everything else, UTF-8 included, is stored as is so the
//! files stay readable with `cat`.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits;
use crate::mail::{BodyType, Envelope, QueueId};

/// First line of a message file: names the format and its version.
pub const HEADER_MAGIC: &str = "postling-message 1";
/// First line of a state file.
pub const STATE_MAGIC: &str = "postling-state 1";

// ---- queue ids -------------------------------------------------------------------------------

/// Crockford's base32 alphabet: digits before letters, so that ASCII order of fixed-width ids
/// is numeric order (the start-up scan sorts names to get the oldest first). No I, L, O, U.
const ID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 12 characters of 5 bits: 60 bits of microseconds since 1970, enough for 36,000 years.
pub const ID_LEN: usize = 12;
/// Values at or above this do not fit in `ID_LEN` characters.
pub const ID_LIMIT: u64 = 1 << (5 * ID_LEN);

pub fn id_encode(mut v: u64) -> QueueId {
    let mut out = [b'0'; ID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ID_ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    QueueId(out.iter().map(|&b| b as char).collect())
}

/// The numeric value of a well-formed id; `None` for anything else (which also keeps a
/// caller-supplied id from naming a path outside the queue).
pub fn id_decode(s: &str) -> Option<u64> {
    if s.len() != ID_LEN {
        return None;
    }
    let mut v: u64 = 0;
    for b in s.bytes() {
        let d = ID_ALPHABET.iter().position(|&a| a == b)?;
        v = (v << 5) | d as u64;
    }
    Some(v)
}

pub fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The moment an id was made: the arrival time for display when the envelope is unreadable.
pub fn id_time(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(v)
}

// ---- escaping --------------------------------------------------------------------------------

fn needs_escape(b: u8) -> bool {
    b == b'%' || b < 0x20 || b == 0x7f
}

pub fn escape_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for c in value.chars() {
        if c.is_ascii() && needs_escape(c as u8) {
            let b = c as u8;
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(c);
        }
    }
}

pub fn unescape(value: &str) -> io::Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&h| (h as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|&l| (l as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(bad("malformed %-escape")),
            }
            i += 3;
        } else if needs_escape(b) {
            return Err(bad("unescaped control character"));
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("value is not UTF-8"))
}

pub fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spool file: {what}"))
}

pub fn push_field(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    if !value.is_empty() {
        out.push(' ');
        escape_into(out, value);
    }
    out.push('\n');
}

/// Splits `key SP value`; a bare `key` has an empty value.
pub fn split_field(line: &str) -> (&str, &str) {
    line.split_once(' ').unwrap_or((line, ""))
}

// ---- times -----------------------------------------------------------------------------------

/// `seconds.nanoseconds` since 1970, exact, so a stored time reads back identical.
pub fn time_encode(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

pub fn time_decode(s: &str) -> io::Result<SystemTime> {
    let (secs, nanos) = s.split_once('.').ok_or_else(|| bad("malformed time"))?;
    let secs = parse_digits(secs)?;
    if nanos.len() != 9 {
        return Err(bad("malformed time"));
    }
    let nanos = u32::try_from(parse_digits(nanos)?).map_err(|_| bad("malformed time"))?;
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or_else(|| bad("time out of range"))
}

/// Strict decimal: digits only, no sign, no overflow.
fn parse_digits(s: &str) -> io::Result<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("malformed number"));
    }
    s.parse().map_err(|_| bad("number out of range"))
}

// ---- message header --------------------------------------------------------------------------

/// A value the envelope may not carry: it would be refused by any SMTP peer later (RFC 5321
/// §2.3.8 forbids bare CR and LF; NUL ends strings in too many tools).
pub fn has_forbidden(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// The header written before the message data; ends with the empty line.
pub fn header_encode(id: &QueueId, env: &Envelope) -> String {
    let mut h = String::with_capacity(256);
    h.push_str(HEADER_MAGIC);
    h.push('\n');
    push_field(&mut h, "id", &id.0);
    push_field(&mut h, "arrival", &time_encode(env.arrival));
    push_field(&mut h, "client", &env.client_ip.to_string());
    push_field(&mut h, "helo", &env.helo);
    push_field(&mut h, "smtputf8", if env.smtputf8 { "1" } else { "0" });
    push_field(
        &mut h,
        "body",
        match env.body {
            BodyType::SevenBit => "7bit",
            BodyType::EightBitMime => "8bitmime",
        },
    );
    push_field(&mut h, "sender", &env.sender);
    if let Some(p) = &env.pickup {
        push_field(&mut h, "pickup", p);
    }
    for r in &env.recipients {
        push_field(&mut h, "rcpt", r);
    }
    h.push('\n');
    h
}

/// Parses a header (without its final empty line). Every field must be present exactly once,
/// except `rcpt`, which appears at least once.
pub fn header_decode(text: &str) -> io::Result<(QueueId, Envelope)> {
    let mut lines = text.split('\n');
    if lines.next() != Some(HEADER_MAGIC) {
        return Err(bad("not a postling message file"));
    }
    let mut id = None;
    let mut arrival = None;
    let mut client = None;
    let mut helo = None;
    let mut smtputf8 = None;
    let mut body = None;
    let mut sender = None;
    let mut pickup = None;
    let mut recipients = Vec::new();
    for line in lines {
        let (key, raw) = split_field(line);
        let value = unescape(raw)?;
        let slot_taken = match key {
            "id" => id.replace(QueueId(value)).is_some(),
            "arrival" => arrival.replace(time_decode(&value)?).is_some(),
            "client" => client
                .replace(value.parse::<IpAddr>().map_err(|_| bad("bad client"))?)
                .is_some(),
            "helo" => helo.replace(value).is_some(),
            "smtputf8" => smtputf8
                .replace(match value.as_str() {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad("bad smtputf8")),
                })
                .is_some(),
            "body" => body
                .replace(match value.as_str() {
                    "7bit" => BodyType::SevenBit,
                    "8bitmime" => BodyType::EightBitMime,
                    _ => return Err(bad("bad body")),
                })
                .is_some(),
            "sender" => sender.replace(value).is_some(),
            "pickup" => pickup.replace(value).is_some(),
            "rcpt" => {
                recipients.push(value);
                false
            }
            _ => return Err(bad("unknown header field")),
        };
        if slot_taken {
            return Err(bad("repeated header field"));
        }
    }
    let missing = || bad("missing header field");
    if recipients.is_empty() {
        return Err(missing());
    }
    let env = Envelope {
        sender: sender.ok_or_else(missing)?,
        recipients,
        client_ip: client.ok_or_else(missing)?,
        helo: helo.ok_or_else(missing)?,
        arrival: arrival.ok_or_else(missing)?,
        smtputf8: smtputf8.ok_or_else(missing)?,
        body: body.ok_or_else(missing)?,
        pickup,
    };
    Ok((id.ok_or_else(missing)?, env))
}

// ---- the Maildir form ("link-1") ------------------------------------------------------------

/// The first line of a message file in the Maildir form starts so; `HEADER_MAGIC` never does.
pub const LINK_RETURN_PATH: &str = "Return-Path: <";
/// The second line of a message file in the Maildir form starts so.
pub const LINK_DELIVERED_TO: &str = "Delivered-To: ";

/// Can `env` be stored in the Maildir form (the file is then the Maildir copy itself, see
/// doc/spool.md)? Only what its two first lines and the queue id carry: one recipient, no
/// `SMTPUTF8`, no drop file. The client's address and HELO name are not kept (they are in the
/// message's `Received:` header, and nothing after the commit uses them), nor is `BODY=`: a
/// relay, should the recipient lead off the machine later, tells it from the data.
pub fn link_qualifies(env: &Envelope) -> bool {
    env.recipients.len() == 1 && env.pickup.is_none() && !env.smtputf8
}

/// The envelope of a file in the Maildir form, from its id and its two first lines (without
/// their LF). The arrival time is the id's (the spool sets it so when it writes the entry).
pub fn link_decode(id: &QueueId, first: &str, second: &str) -> io::Result<Envelope> {
    let v = id_decode(&id.0).ok_or_else(|| bad("bad queue id"))?;
    let sender = first
        .strip_prefix(LINK_RETURN_PATH)
        .and_then(|r| r.strip_suffix('>'))
        .ok_or_else(|| bad("not a postling message file"))?;
    let rcpt = second
        .strip_prefix(LINK_DELIVERED_TO)
        .ok_or_else(|| bad("Maildir form without Delivered-To"))?;
    if rcpt.is_empty() || has_forbidden(sender) || has_forbidden(rcpt) {
        return Err(bad("bad Maildir form envelope"));
    }
    Ok(Envelope {
        sender: sender.to_string(),
        recipients: vec![rcpt.to_string()],
        client_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        helo: String::new(),
        arrival: id_time(v),
        smtputf8: false,
        body: BodyType::SevenBit,
        pickup: None,
    })
}

// ---- delivery state --------------------------------------------------------------------------

/// Where delivery stands for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    /// Failed permanently; the reason goes into the bounce.
    Failed(String),
}

/// The mutable part of an entry: absent file means "nothing attempted yet".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryState {
    pub rcpts: Vec<RcptState>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// `None`: due at once.
    pub next_attempt: Option<SystemTime>,
    /// One per recipient: the last temporary reason of a pending one (`None`: never
    /// deferred, or an entry written before this field existed). Kept only while pending.
    pub rcpt_errors: Vec<Option<String>>,
    /// When the delay warning DSN was queued; `None` (the field absent): not yet.
    pub delay_warned: Option<SystemTime>,
}

impl DeliveryState {
    pub fn fresh(n_rcpts: usize) -> DeliveryState {
        DeliveryState {
            rcpts: vec![RcptState::Pending; n_rcpts],
            attempts: 0,
            last_error: None,
            next_attempt: None,
            rcpt_errors: vec![None; n_rcpts],
            delay_warned: None,
        }
    }
}

/// Cuts an error text to `SPOOL_MAX_REASON` bytes on a character boundary.
pub fn clip_reason(s: &str) -> &str {
    let mut end = s.len().min(limits::SPOOL_MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// A recipient's last reason as stored: it comes from remote servers and resolvers, so
/// CR, LF and every other control character become a space (one line in the state file,
/// in `postling -q` and in the delay warning), cut to `SPOOL_MAX_RCPT_REASON` bytes.
pub fn clean_rcpt_reason(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(limits::SPOOL_MAX_RCPT_REASON));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > limits::SPOOL_MAX_RCPT_REASON {
            break;
        }
        out.push(c);
    }
    out
}

/// Delivered and failed recipients are listed by their index in the envelope; a pending one
/// only when it has a last reason (`deferred`).
pub fn state_encode(st: &DeliveryState) -> String {
    let mut s = String::with_capacity(128);
    s.push_str(STATE_MAGIC);
    s.push('\n');
    push_field(&mut s, "attempts", &st.attempts.to_string());
    if let Some(t) = st.next_attempt {
        push_field(&mut s, "next", &time_encode(t));
    }
    if let Some(e) = &st.last_error {
        push_field(&mut s, "error", clip_reason(e));
    }
    if let Some(t) = st.delay_warned {
        push_field(&mut s, "warned", &time_encode(t));
    }
    for (i, r) in st.rcpts.iter().enumerate() {
        match r {
            RcptState::Pending => {
                if let Some(Some(why)) = st.rcpt_errors.get(i) {
                    push_field(&mut s, "deferred", &format!("{i} {why}"));
                }
            }
            RcptState::Delivered => push_field(&mut s, "delivered", &i.to_string()),
            RcptState::Failed(why) => {
                let mut v = i.to_string();
                v.push(' ');
                v.push_str(clip_reason(why));
                push_field(&mut s, "failed", &v);
            }
        }
    }
    s
}

pub fn state_decode(text: &str, n_rcpts: usize) -> io::Result<DeliveryState> {
    let mut lines = text.split('\n');
    if lines.next() != Some(STATE_MAGIC) {
        return Err(bad("not a postling state file"));
    }
    let mut st = DeliveryState::fresh(n_rcpts);
    let index = |s: &str| -> io::Result<usize> {
        let i = usize::try_from(parse_digits(s)?).map_err(|_| bad("bad index"))?;
        if i < n_rcpts {
            Ok(i)
        } else {
            Err(bad("recipient index out of range"))
        }
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (key, raw) = split_field(line);
        let value = unescape(raw)?;
        match key {
            "attempts" => {
                st.attempts = u32::try_from(parse_digits(&value)?).map_err(|_| bad("attempts"))?
            }
            "next" => st.next_attempt = Some(time_decode(&value)?),
            "error" => st.last_error = Some(value),
            "warned" => st.delay_warned = Some(time_decode(&value)?),
            "deferred" => {
                let (i, why) = value.split_once(' ').unwrap_or((value.as_str(), ""));
                let i = index(i)?;
                if let Some(slot) = st.rcpt_errors.get_mut(i) {
                    *slot = Some(why.to_string());
                }
            }
            "delivered" => {
                let i = index(&value)?;
                if let Some(slot) = st.rcpts.get_mut(i) {
                    *slot = RcptState::Delivered;
                }
            }
            "failed" => {
                let (i, why) = value.split_once(' ').unwrap_or((value.as_str(), ""));
                let i = index(i)?;
                if let Some(slot) = st.rcpts.get_mut(i) {
                    *slot = RcptState::Failed(why.to_string());
                }
            }
            _ => return Err(bad("unknown state field")),
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn ids_are_fixed_width_and_sort_numerically() {
        let a = id_encode(1_700_000_000_000_000);
        let b = id_encode(1_700_000_000_000_001);
        let c = id_encode(1_700_000_000_000_032);
        assert_eq!(a.0.len(), ID_LEN);
        assert!(a < b && b < c);
        assert_eq!(id_decode(&a.0), Some(1_700_000_000_000_000));
        assert_eq!(id_decode(&id_encode(ID_LIMIT - 1).0), Some(ID_LIMIT - 1));
        assert_eq!(id_encode(0).0, "000000000000");
        for bad in [
            "",
            "../etc/passw",
            "0000000000000",
            "00000000000I",
            "00000000000a",
        ] {
            assert_eq!(id_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn escaping_round_trips_odd_values() {
        for v in [
            "",
            "plain",
            "with space and = and %41 and %",
            "\"quoted\" 'single'",
            "grüße@bücher.example",
            "日本語@例え.jp",
            "tab\there\u{7f}del\u{1b}[31m",
            "trailing space ",
            " leading",
        ] {
            let mut e = String::new();
            escape_into(&mut e, v);
            assert!(!e.bytes().any(|b| b < 0x20 || b == 0x7f), "{e:?}");
            assert_eq!(unescape(&e).unwrap(), v);
        }
        let mut e = String::new();
        escape_into(&mut e, "a%b\tc");
        assert_eq!(e, "a%25b%09c");
    }

    #[test]
    fn unescape_rejects_malformed() {
        assert!(unescape("%").is_err());
        assert!(unescape("%4").is_err());
        assert!(unescape("%zz").is_err());
        assert!(unescape("a\tb").is_err());
        assert!(unescape("%FF").is_err()); // not UTF-8
    }

    fn env() -> Envelope {
        Envelope {
            sender: "odd \"sender\"=%x@example.org".into(),
            recipients: vec!["a@example.org".into(), "b c=%@例え.jp".into()],
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            helo: "[IPv6:::1]".into(),
            arrival: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            smtputf8: true,
            body: BodyType::EightBitMime,
            pickup: None,
        }
    }

    #[test]
    fn header_round_trip() {
        let id = id_encode(42);
        let e = env();
        let h = header_encode(&id, &e);
        assert!(h.ends_with("\n\n"));
        let body = h.strip_suffix("\n\n").unwrap();
        let (id2, e2) = header_decode(body).unwrap();
        assert_eq!(id2, id);
        assert_eq!(e2, e);
    }

    #[test]
    fn header_round_trip_with_the_drop_file_it_came_from() {
        let id = id_encode(43);
        let mut e = env();
        e.pickup = Some("0123456789abcdef0123456789abcdef".into());
        let h = header_encode(&id, &e);
        assert!(h.contains("\npickup 0123456789abcdef0123456789abcdef\n"));
        let (_, e2) = header_decode(h.trim_end_matches('\n')).unwrap();
        assert_eq!(e2, e);
        // Entries without it (SMTP, bounces) have no such line.
        assert!(!header_encode(&id, &env()).contains("pickup"));
        let twice = format!("{}\npickup x", h.trim_end_matches('\n'));
        assert!(header_decode(&twice).is_err());
    }

    #[test]
    fn header_null_sender_and_errors() {
        let id = id_encode(7);
        let mut e = env();
        e.sender.clear();
        let h = header_encode(&id, &e);
        assert!(h.contains("\nsender\n"));
        let (_, e2) = header_decode(h.trim_end_matches('\n')).unwrap();
        assert_eq!(e2.sender, "");
        let body = h.trim_end_matches('\n');
        assert!(header_decode(&body.replace("rcpt", "xrcpt")).is_err());
        assert!(header_decode(&format!("{body}\nhelo again")).is_err());
        assert!(header_decode(&body.replace("postling-message 1", "postling-message 2")).is_err());
        assert!(header_decode(&body.replace("smtputf8 1", "smtputf8 2")).is_err());
    }

    #[test]
    fn the_maildir_form_carries_sender_and_recipient_and_the_id_gives_the_arrival() {
        let id = id_encode(1_700_000_000_123_456);
        let e = link_decode(
            &id,
            "Return-Path: <odd >name<@example.org>",
            "Delivered-To: b c@例え.jp",
        )
        .unwrap();
        assert_eq!(e.sender, "odd >name<@example.org");
        assert_eq!(e.recipients, vec!["b c@例え.jp".to_string()]);
        assert_eq!(e.arrival, id_time(1_700_000_000_123_456));
        assert_eq!(
            (e.smtputf8, e.body, e.pickup),
            (false, BodyType::SevenBit, None)
        );
        let null = link_decode(&id, "Return-Path: <>", "Delivered-To: a@x").unwrap();
        assert_eq!(null.sender, "");
        for (a, b) in [
            ("Return-Path: <x", "Delivered-To: a@x"),
            ("Return-Path: x>", "Delivered-To: a@x"),
            ("Return-Path: <x>", "X-Delivered-To: a@x"),
            ("Return-Path: <x>", "Delivered-To: "),
            ("Return-Path: <x\r>", "Delivered-To: a@x"),
        ] {
            assert!(link_decode(&id, a, b).is_err(), "{a:?} {b:?}");
        }
        assert!(
            link_decode(
                &QueueId("bad".into()),
                "Return-Path: <>",
                "Delivered-To: a@x"
            )
            .is_err()
        );
        let mut e = env();
        e.recipients.truncate(1);
        e.smtputf8 = false;
        assert!(link_qualifies(&e), "BODY=8BITMIME is not kept, nor needed");
        assert!(!HEADER_MAGIC.starts_with(LINK_RETURN_PATH));
    }

    #[test]
    fn state_round_trip() {
        let st = DeliveryState {
            rcpts: vec![
                RcptState::Delivered,
                RcptState::Pending,
                RcptState::Failed("550 5.1.1 no such user: \"x\"\n%".into()),
            ],
            attempts: 3,
            last_error: Some("451 try later".into()),
            next_attempt: Some(UNIX_EPOCH + Duration::new(1_800_000_000, 5)),
            rcpt_errors: vec![
                None,
                Some("451 4.7.1 greylisted, 100% \"sure\"".into()),
                None,
            ],
            delay_warned: Some(UNIX_EPOCH + Duration::new(1_800_000_100, 0)),
        };
        let text = state_encode(&st);
        assert!(text.contains("\nwarned 1800000100.000000000\n"), "{text}");
        assert!(text.contains("\ndeferred 1 451 4.7.1 greylisted, 100%25 \"sure\"\n"));
        assert_eq!(state_decode(&text, 3).unwrap(), st);
        assert!(state_decode(&text, 2).is_err(), "index out of range");
        let fresh = state_decode(&state_encode(&DeliveryState::fresh(2)), 2).unwrap();
        assert_eq!(fresh, DeliveryState::fresh(2));
    }

    #[test]
    fn state_written_before_reasons_and_warnings_reads_as_neither() {
        // The state file of an entry queued by an older postling: no `deferred`, no `warned`.
        let old = "postling-state 1\nattempts 2\nnext 1800000000.000000005\nerror bob: busy\ndelivered 0\n";
        let st = state_decode(old, 2).unwrap();
        assert_eq!(st.rcpt_errors, vec![None, None]);
        assert_eq!(st.delay_warned, None, "absent means not warned");
        assert_eq!(
            (st.attempts, st.last_error.as_deref()),
            (2, Some("bob: busy"))
        );
        // A reason is kept only while its recipient is pending.
        let mut st = st;
        st.rcpt_errors = vec![Some("gone".into()), Some("451 later".into())];
        let text = state_encode(&st);
        assert!(!text.contains("deferred 0"), "{text}");
        assert!(text.contains("deferred 1 451 later\n"), "{text}");
        assert!(
            state_decode("postling-state 1\ndeferred 2 x\n", 2).is_err(),
            "index out of range"
        );
        assert!(state_decode("postling-state 1\nwarned soon\n", 2).is_err());
    }

    #[test]
    fn recipient_reasons_lose_control_characters_and_are_bounded() {
        assert_eq!(
            clean_rcpt_reason("451 4.7.1 a\r\nInjected: x\u{1b}[2J\tb"),
            "451 4.7.1 a  Injected: x [2J b"
        );
        let long = "é".repeat(limits::SPOOL_MAX_RCPT_REASON);
        let c = clean_rcpt_reason(&long);
        assert!(
            c.len() <= limits::SPOOL_MAX_RCPT_REASON
                && c.len() >= limits::SPOOL_MAX_RCPT_REASON - 1
        );
        assert_eq!(clean_rcpt_reason("short"), "short");
    }

    #[test]
    fn reasons_are_clipped_on_char_boundaries() {
        let long = "é".repeat(limits::SPOOL_MAX_REASON);
        let c = clip_reason(&long);
        assert!(c.len() <= limits::SPOOL_MAX_REASON && c.len() >= limits::SPOOL_MAX_REASON - 1);
        assert_eq!(clip_reason("short"), "short");
    }
}
