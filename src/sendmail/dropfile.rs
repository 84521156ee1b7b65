//! The drop file `sendmail` writes into `maildrop/` and the daemon's pickup reads: a small
//! envelope header in the spool's own notation (one `key value` per line, percent-escaped
//! values, after a version line; see doc/spool.md), an empty line, then the message with
//! CRLF line endings.
//!
//! ```text
//! postling-drop 1
//! uid 1000
//! arrival 1714566896.250000000
//! sender alice@example.org
//! rcpt bob@example.org
//!
//! From: ...
//! ```

use std::time::SystemTime;

use crate::spool::format::{push_field, split_field, time_decode, time_encode, unescape};

pub const DROP_MAGIC: &str = "postling-drop 1";

/// The envelope of a drop file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropEnvelope {
    /// The submitting user; the pickup checks it against the file's owner.
    pub uid: u32,
    pub arrival: SystemTime,
    /// Empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
}

/// The header, ending with its empty line.
pub fn encode(env: &DropEnvelope) -> String {
    let mut h = String::with_capacity(128);
    h.push_str(DROP_MAGIC);
    h.push('\n');
    push_field(&mut h, "uid", &env.uid.to_string());
    push_field(&mut h, "arrival", &time_encode(env.arrival));
    push_field(&mut h, "sender", &env.sender);
    for r in &env.recipients {
        push_field(&mut h, "rcpt", r);
    }
    h.push('\n');
    h
}

/// Parses a whole drop file: the envelope and the offset where the message starts. The
/// header may be at most `max_header` bytes. Every field once, `rcpt` at least once.
pub fn decode(file: &[u8], max_header: usize) -> Result<(DropEnvelope, usize), String> {
    let window = file.get(..file.len().min(max_header)).unwrap_or_default();
    let end = window
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("the envelope header does not end (or is too large)")?;
    let text = std::str::from_utf8(window.get(..end).unwrap_or_default())
        .map_err(|_| "the envelope header is not UTF-8")?;
    let mut lines = text.split('\n');
    if lines.next() != Some(DROP_MAGIC) {
        return Err("not a postling drop file".into());
    }
    let (mut uid, mut arrival, mut sender) = (None, None, None);
    let mut recipients = Vec::new();
    for line in lines {
        let (key, raw) = split_field(line);
        let value = unescape(raw).map_err(|e| e.to_string())?;
        let repeated = match key {
            "uid" => uid
                .replace(value.parse::<u32>().map_err(|_| "bad uid")?)
                .is_some(),
            "arrival" => arrival
                .replace(time_decode(&value).map_err(|e| e.to_string())?)
                .is_some(),
            "sender" => sender.replace(value).is_some(),
            "rcpt" => {
                recipients.push(value);
                false
            }
            k => return Err(format!("unknown envelope field {k:?}")),
        };
        if repeated {
            return Err(format!("envelope field {key} repeated"));
        }
    }
    if recipients.is_empty() {
        return Err("no recipients".into());
    }
    let env = DropEnvelope {
        uid: uid.ok_or("no uid")?,
        arrival: arrival.ok_or("no arrival time")?,
        sender: sender.ok_or("no sender")?,
        recipients,
    };
    Ok((env, end + 2))
}

/// Is `name` a drop file's final name (32 lowercase hex digits)? Anything else in `maildrop/`
/// is either being written (`<name>.tmp`) or not ours.
pub fn is_drop_name(name: &str) -> bool {
    name.len() == 32
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The name a drop file is written under before its rename makes it visible.
pub fn is_tmp_name(name: &str) -> bool {
    name.strip_suffix(".tmp").is_some_and(is_drop_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn env() -> DropEnvelope {
        DropEnvelope {
            uid: 65534,
            arrival: UNIX_EPOCH + Duration::new(1_714_566_896, 250_000_001),
            sender: "nobody@mail.example.test".into(),
            recipients: vec!["alice@example.test".into(), "we%ird\n@x.test".into()],
        }
    }

    #[test]
    fn round_trip() {
        let e = env();
        let mut file = encode(&e).into_bytes();
        assert!(file.starts_with(b"postling-drop 1\nuid 65534\narrival 1714566896.250000001\nsender nobody@mail.example.test\nrcpt alice@example.test\nrcpt we%25ird%0A@x.test\n\n"));
        let at = file.len();
        file.extend_from_slice(b"From: x\r\n\r\nbody\r\n");
        let (back, offset) = decode(&file, 1 << 20).unwrap();
        assert_eq!(back, e);
        assert_eq!(offset, at);
        assert_eq!(&file[offset..], b"From: x\r\n\r\nbody\r\n");
        // The null sender.
        let e = DropEnvelope {
            sender: String::new(),
            ..env()
        };
        assert_eq!(decode(encode(&e).as_bytes(), 1 << 20).unwrap().0, e);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let good = encode(&env());
        assert!(
            decode(good.as_bytes(), 10).is_err(),
            "header over the bound"
        );
        for (bad, why) in [
            ("postling-drop 2\nuid 1\n\n", "not a postling drop file"),
            (
                "postling-drop 1\nuid 1\narrival 1.000000000\nsender a\n\n",
                "no recipients",
            ),
            ("postling-drop 1\nuid x\n\n", "bad uid"),
            (
                "postling-drop 1\nuid 1\nuid 1\n\n",
                "envelope field uid repeated",
            ),
            (
                "postling-drop 1\nrcpt a\nsender a\narrival 1.000000000\n\n",
                "no uid",
            ),
            (
                "postling-drop 1\nhelo x\n\n",
                "unknown envelope field \"helo\"",
            ),
            (
                "postling-drop 1\nuid 1\n",
                "the envelope header does not end (or is too large)",
            ),
        ] {
            assert_eq!(decode(bad.as_bytes(), 1 << 20).unwrap_err(), why, "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(is_drop_name("0123456789abcdef0123456789abcdef"));
        assert!(!is_drop_name("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_drop_name("bad"));
        assert!(is_tmp_name("0123456789abcdef0123456789abcdef.tmp"));
        assert!(!is_tmp_name("0123456789abcdef0123456789abcdef"));
    }
}
