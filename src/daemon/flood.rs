//! Flood summarising for log lines: owns the small fixed table that decides whether a line
//! that can come in storms (a rejection, a failed login, a refused or closed connection) is
//! written or only counted. Lines opt in by their `log` target: `flood:<key>`, where the key
//! names the event kind and the client (`reject: RCPT from [192.0.2.7]`); every other line is
//! always written.
//!
//! Per key, the first `limits::LOG_FLOOD_BURST` lines of a `limits::LOG_FLOOD_WINDOW` are
//! written; later ones are counted, and one line `<key>: N more like this in the last S s`
//! is written when the window ends (`due` gives that instant, for the reactor's poll timeout,
//! and only while a count is pending), before the next line that is written (so the order
//! stays readable), or when the key's slot is taken for a new key. Nothing here wakes up on
//! its own: idle costs nothing.

use std::time::Instant;

use crate::limits;

/// The `log` target prefix of a line that may be summarised.
pub const TARGET_PREFIX: &str = "flood:";

/// The target for a line of this kind from this client (cut to `limits::LOG_FLOOD_KEY_MAX`).
pub fn target(kind: &str, ip: std::net::IpAddr) -> String {
    let mut t = format!("{TARGET_PREFIX}{kind} from [{ip}]");
    if t.len() > TARGET_PREFIX.len() + limits::LOG_FLOOD_KEY_MAX {
        let mut end = TARGET_PREFIX.len() + limits::LOG_FLOOD_KEY_MAX;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}

struct Slot {
    key: String,
    /// When this key's window began.
    start: Instant,
    /// Lines seen in the window.
    seen: u32,
    /// Lines counted but not written since the last summary, and when the first came.
    suppressed: u32,
    suppressed_since: Instant,
}

/// The table (at most `limits::LOG_FLOOD_SLOTS` keys).
#[derive(Default)]
pub struct Flood {
    slots: Vec<Slot>,
}

impl Flood {
    pub fn new() -> Flood {
        Flood {
            slots: Vec::with_capacity(limits::LOG_FLOOD_SLOTS),
        }
    }

    /// A line is to be logged: `key` is its flood key (`None`: a line that is never
    /// summarised). Summaries to write before it are appended to `out`; true when the line
    /// itself is to be written.
    pub fn offer(&mut self, key: Option<&str>, now: Instant, out: &mut Vec<String>) -> bool {
        self.flush_due(now, out);
        let Some(key) = key else {
            self.flush_all(now, out);
            return true;
        };
        if let Some(i) = self.slots.iter().position(|s| s.key == key) {
            let slot = &mut self.slots[i];
            slot.seen = slot.seen.saturating_add(1);
            if slot.seen > limits::LOG_FLOOD_BURST {
                if slot.suppressed == 0 {
                    slot.suppressed_since = now;
                }
                slot.suppressed = slot.suppressed.saturating_add(1);
                return false;
            }
            self.flush_all(now, out);
            return true;
        }
        if self.slots.len() >= limits::LOG_FLOOD_SLOTS {
            // The oldest window goes; its count is not lost.
            if let Some((i, _)) = self.slots.iter().enumerate().min_by_key(|(_, s)| s.start) {
                let old = self.slots.swap_remove(i);
                if old.suppressed > 0 {
                    out.push(summary(&old, now));
                }
            }
        }
        self.flush_all(now, out);
        self.slots.push(Slot {
            key: key.to_string(),
            start: now,
            seen: 1,
            suppressed: 0,
            suppressed_since: now,
        });
        true
    }

    /// When the earliest pending summary is due; `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.suppressed > 0)
            .map(|s| s.start + limits::LOG_FLOOD_WINDOW)
            .min()
    }

    /// Ends the windows that are over: their summaries go to `out`, their slots are freed.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<String>) {
        self.slots.retain(|s| {
            if now < s.start + limits::LOG_FLOOD_WINDOW {
                return true;
            }
            if s.suppressed > 0 {
                out.push(summary(s, now));
            }
            false
        });
    }

    /// A line is about to be written: the counts pending so far are said first (the windows
    /// go on, so a storm stays summarised).
    fn flush_all(&mut self, now: Instant, out: &mut Vec<String>) {
        for s in &mut self.slots {
            if s.suppressed > 0 {
                out.push(summary(s, now));
                s.suppressed = 0;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// `reject: RCPT from [192.0.2.7]: 495 more like this in the last 9.8 s`
fn summary(s: &Slot, now: Instant) -> String {
    format!(
        "{}: {} more like this in the last {:.1} s",
        s.key,
        s.suppressed,
        now.saturating_duration_since(s.suppressed_since)
            .as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BURST: usize = limits::LOG_FLOOD_BURST as usize;

    /// Offers `n` lines of `key` at `at`; returns how many were to be written, and the
    /// summaries.
    fn offer_n(f: &mut Flood, key: Option<&str>, n: usize, at: Instant) -> (usize, Vec<String>) {
        let mut out = Vec::new();
        let written = (0..n).filter(|_| f.offer(key, at, &mut out)).count();
        (written, out)
    }

    #[test]
    fn the_first_lines_of_a_storm_are_written_then_only_counted() {
        let mut f = Flood::new();
        let t = Instant::now();
        let (written, out) = offer_n(&mut f, Some("reject: RCPT from [192.0.2.7]"), 500, t);
        assert_eq!(written, BURST);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(f.due(), Some(t + limits::LOG_FLOOD_WINDOW));
    }

    #[test]
    fn the_summary_comes_when_the_window_ends() {
        let mut f = Flood::new();
        let t = Instant::now();
        offer_n(&mut f, Some("k"), BURST + 7, t);
        let mut out = Vec::new();
        f.flush_due(
            t + limits::LOG_FLOOD_WINDOW - Duration::from_millis(1),
            &mut out,
        );
        assert!(out.is_empty());
        f.flush_due(t + limits::LOG_FLOOD_WINDOW, &mut out);
        assert_eq!(out, ["k: 7 more like this in the last 10.0 s"]);
        assert_eq!(f.due(), None, "nothing pending: no wake-up");
        assert_eq!(f.len(), 0);
        // A new window writes again.
        let (written, _) = offer_n(&mut f, Some("k"), 1, t + limits::LOG_FLOOD_WINDOW);
        assert_eq!(written, 1);
    }

    #[test]
    fn a_different_line_flushes_the_count_first_and_the_storm_stays_summarised() {
        let mut f = Flood::new();
        let t = Instant::now();
        offer_n(&mut f, Some("k"), BURST + 3, t);
        let mut out = Vec::new();
        assert!(f.offer(None, t + Duration::from_millis(500), &mut out));
        assert_eq!(out, ["k: 3 more like this in the last 0.5 s"]);
        // Same window: still only counted, and nothing pending to say twice.
        let (written, out) = offer_n(&mut f, Some("k"), 2, t + Duration::from_secs(1));
        assert_eq!((written, out.len()), (0, 0));
        let (written, out) = offer_n(&mut f, Some("other"), 1, t + Duration::from_secs(2));
        assert_eq!(written, 1);
        assert_eq!(out, ["k: 2 more like this in the last 1.0 s"]);
    }

    #[test]
    fn lines_without_a_key_are_always_written_and_wake_nothing() {
        let mut f = Flood::new();
        let (written, out) = offer_n(&mut f, None, 1000, Instant::now());
        assert_eq!((written, out.len()), (1000, 0));
        assert_eq!(f.due(), None);
        // Keys under the burst leave nothing pending either.
        offer_n(&mut f, Some("k"), BURST, Instant::now());
        assert_eq!(f.due(), None);
    }

    #[test]
    fn the_table_is_bounded_and_an_evicted_count_is_not_lost() {
        let mut f = Flood::new();
        let t = Instant::now();
        offer_n(&mut f, Some("first"), BURST + 4, t);
        let mut out = Vec::new();
        for i in 0..(limits::LOG_FLOOD_SLOTS * 10) {
            let key = format!("client {i}");
            assert!(f.offer(Some(&key), t + Duration::from_millis(1), &mut out));
            assert!(f.len() <= limits::LOG_FLOOD_SLOTS);
        }
        assert_eq!(out, ["first: 4 more like this in the last 0.0 s"]);
    }

    #[test]
    fn targets_name_kind_and_client_and_are_bounded() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            target("reject: RCPT", ip),
            "flood:reject: RCPT from [192.0.2.7]"
        );
        let long = "é".repeat(200);
        let t = target(&long, ip);
        assert!(t.len() <= TARGET_PREFIX.len() + limits::LOG_FLOOD_KEY_MAX);
    }
}
