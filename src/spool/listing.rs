//! The queue listing for `postling -q` and `postling queue list`: reads `queue/` directly and read-only, so it works
//! with or without a running daemon, and tolerates entries that vanish while it reads.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::format::{id_decode, id_encode, id_time};
use super::{HOLD_SUFFIX, QUEUE_DIR, STATE_SUFFIX, StateFrom, read_entry_at};
use crate::mail::QueueId;

/// One line of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSummary {
    pub id: QueueId,
    pub arrival: SystemTime,
    /// Message data in octets.
    pub size: u64,
    /// Empty for the null sender.
    pub sender: String,
    /// Recipients not yet delivered nor failed.
    pub pending: Vec<String>,
    /// Beside each of `pending`: its last temporary reason, if it was tried.
    pub pending_reasons: Vec<Option<String>>,
    pub last_error: Option<String>,
    pub next_attempt: SystemTime,
    /// Held (`postling queue hold`): not attempted until released.
    pub held: bool,
}

/// Summarises every committed entry under `dir` (the spool directory), oldest first. An
/// entry that disappears meanwhile is skipped; one that cannot be read is listed with the
/// reason as its error.
pub fn list_queue(dir: &Path) -> io::Result<Vec<QueueSummary>> {
    let queue = dir.join(QUEUE_DIR);
    let mut ids = Vec::new();
    for ent in fs::read_dir(&queue)? {
        let ent = ent?;
        if let Some(v) = ent.file_name().to_str().and_then(id_decode) {
            ids.push(v);
        }
    }
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for v in ids {
        let id = id_encode(v);
        let path = queue.join(&id.0);
        let state_path = queue.join(format!("{}{STATE_SUFFIX}", id.0));
        let held = fs::symlink_metadata(queue.join(format!("{}{HOLD_SUFFIX}", id.0))).is_ok();
        match read_entry_at(&path, StateFrom::File(&state_path), &id) {
            Ok(e) => out.push(QueueSummary {
                pending: e.pending().map(|(_, r)| r.to_string()).collect(),
                pending_reasons: e
                    .pending()
                    .map(|(i, _)| e.rcpt_error(i).map(str::to_string))
                    .collect(),
                size: e.data_len(),
                id: e.id,
                arrival: e.envelope.arrival,
                sender: e.envelope.sender,
                last_error: e.last_error,
                next_attempt: e.next_attempt,
                held,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.push(QueueSummary {
                id,
                arrival: id_time(v),
                size: fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                sender: "?".into(),
                pending: Vec::new(),
                pending_reasons: Vec::new(),
                last_error: Some(format!("unreadable entry: {e}")),
                next_attempt: id_time(v),
                held,
            }),
        }
    }
    Ok(out)
}

/// Renders the listing, one line per message, then a count. Under a message whose waiting
/// recipients have a last reason, each waiting recipient follows on its own line (indented),
/// with its reason in parentheses on the next, as Postfix's `mailq` shows them. Addresses and
/// errors come from clients and remote servers, so control and direction-changing characters
/// are shown as `?` to keep them from driving the terminal.
pub fn format_queue(entries: &[QueueSummary], now: SystemTime) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".to_string();
    }
    let mut s = String::new();
    s.push_str("QUEUE-ID      AGE       SIZE SENDER RECIPIENTS LAST-ERROR NEXT-ATTEMPT\n");
    for e in entries {
        let age = now.duration_since(e.arrival).unwrap_or(Duration::ZERO);
        let sender = if e.sender.is_empty() {
            "<>".to_string()
        } else {
            printable(&e.sender)
        };
        let rcpts = if e.pending.is_empty() {
            "-".to_string()
        } else {
            printable(&e.pending.join(","))
        };
        let error = match &e.last_error {
            Some(err) => format!("\"{}\"", printable(err).replace('"', "\\\"")),
            None => "-".to_string(),
        };
        let next = if e.held {
            "HELD".to_string()
        } else if e.next_attempt <= now {
            "now".to_string()
        } else {
            utc(e.next_attempt)
        };
        let _ = writeln!(
            s,
            "{:<12} {:>4} {:>10} {sender} {rcpts} {error} {next}",
            e.id.0,
            age_text(age),
            e.size
        );
        if e.pending_reasons.iter().any(Option::is_some) {
            for (i, rcpt) in e.pending.iter().enumerate() {
                let _ = writeln!(s, "  {}", printable(rcpt));
                if let Some(Some(why)) = e.pending_reasons.get(i) {
                    let _ = writeln!(s, "      ({})", printable(why));
                }
            }
        }
    }
    let n = entries.len();
    let held = entries.iter().filter(|e| e.held).count();
    let _ = writeln!(
        s,
        "{n} {} in queue{}",
        if n == 1 { "message" } else { "messages" },
        if held > 0 {
            format!(", {held} held")
        } else {
            String::new()
        }
    );
    s
}

/// `45s`, `3m`, `2h`, `1d`: the largest whole unit.
fn age_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi || c == '\u{2028}' || c == '\u{2029}' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// ISO 8601 in UTC, to the second (`2024-05-01T12:34:56Z`).
fn utc(t: SystemTime) -> String {
    crate::date::rfc3339_utc(t, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_714_566_896)),
            "2024-05-01T12:34:56Z"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(age_text(Duration::from_secs(0)), "0s");
        assert_eq!(age_text(Duration::from_secs(59)), "59s");
        assert_eq!(age_text(Duration::from_secs(180)), "3m");
        assert_eq!(age_text(Duration::from_secs(2 * 3600 + 5)), "2h");
        assert_eq!(age_text(Duration::from_secs(86400 * 3)), "3d");
    }

    #[test]
    fn waiting_recipients_are_listed_with_their_last_reason() {
        let now = UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        let entry = |pending: &[&str], reasons: Vec<Option<String>>| QueueSummary {
            id: QueueId("0000000000AB".into()),
            arrival: now - Duration::from_secs(600),
            size: 12,
            sender: "s@example.org".into(),
            pending: pending.iter().map(|r| r.to_string()).collect(),
            pending_reasons: reasons,
            last_error: Some("b@x: 451 4.7.1 greylisted".into()),
            next_attempt: now + Duration::from_secs(60),
            held: false,
        };
        let text = format_queue(
            &[entry(
                &["a@x", "b@x", "c@x"],
                vec![
                    Some("forwarding to far@y needs a relay".into()),
                    Some("451 4.7.1 greylisted\u{1b}[2J".into()),
                    None,
                ],
            )],
            now,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "0000000000AB  10m         12 s@example.org a@x,b@x,c@x \"b@x: 451 4.7.1 greylisted\" 2024-05-01T12:35:56Z",
                "  a@x",
                "      (forwarding to far@y needs a relay)",
                "  b@x",
                "      (451 4.7.1 greylisted?[2J)",
                "  c@x",
                "1 message in queue",
            ]
        );
        // Never tried (or queued by an older postling): the one line only.
        let text = format_queue(&[entry(&["a@x"], vec![None])], now);
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn hostile_text_is_neutralised() {
        assert_eq!(printable("a\u{1b}[2Jb\u{202e}c"), "a?[2Jb?c");
        assert_eq!(printable("grüße"), "grüße");
    }
}
