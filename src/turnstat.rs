//! Turn statistics for measuring the reactor (`POSTLING_TURN_STATS=1` in the environment):
//! how long each turn's work took (from the poll's return to the next poll), how many events
//! it handled, and which part of the turn the time went to. Written to the log at shutdown.
//! Off (the default) it costs one branch per mark: no clock is read.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The parts of a turn, in the order the reactor runs them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    /// Socket events of client connections (reading, the sessions, writing).
    Conns,
    /// Executor completions (password checks, commit, Maildir and mailbox completions).
    Exec,
    /// Other events (listeners, signals, control, pickup, outbound).
    Other,
    Accept,
    Mailboxes,
    Commits,
    Control,
    Pickup,
    Deliver,
    Outbound,
    Deadlines,
    Rest,
}

const PARTS: [Part; 12] = [
    Part::Conns,
    Part::Exec,
    Part::Other,
    Part::Accept,
    Part::Mailboxes,
    Part::Commits,
    Part::Control,
    Part::Pickup,
    Part::Deliver,
    Part::Outbound,
    Part::Deadlines,
    Part::Rest,
];

/// Upper bounds (µs) of the turn-duration buckets; the last bucket is everything above.
const BOUNDS_US: [u64; 9] = [50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000];

#[derive(Default)]
struct Stats {
    turns: u64,
    busy: Duration,
    hist: [u64; BOUNDS_US.len() + 1],
    part_sum: [Duration; PARTS.len()],
    part_max: [Duration; PARTS.len()],
    events: u64,
    events_max: usize,
    /// Named counters the modules add to (`count`): occurrences, total and longest time.
    counters: Vec<(&'static str, u64, Duration, Duration)>,
    turn_start: Option<Instant>,
    mark: Option<Instant>,
}

thread_local! {
    static ON: bool = std::env::var_os("POSTLING_TURN_STATS").is_some();
    static STATS: RefCell<Stats> = RefCell::new(Stats::default());
}

pub fn on() -> bool {
    ON.with(|o| *o)
}

/// The poll returned with `events` events: a turn starts.
pub fn begin(events: usize) {
    if !on() {
        return;
    }
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let now = Instant::now();
        s.turn_start = Some(now);
        s.mark = Some(now);
        s.events += events as u64;
        s.events_max = s.events_max.max(events);
    });
}

/// The time since the last mark went to `part`.
pub fn mark(part: Part) {
    if !on() {
        return;
    }
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let now = Instant::now();
        if let Some(m) = s.mark {
            let i = PARTS.iter().position(|p| *p == part).unwrap_or(0);
            let d = now - m;
            s.part_sum[i] += d;
            s.part_max[i] = s.part_max[i].max(d);
        }
        s.mark = Some(now);
    });
}

/// The turn ends (the reactor is about to poll).
pub fn end() {
    if !on() {
        return;
    }
    mark(Part::Rest);
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let Some(start) = s.turn_start.take() else {
            return;
        };
        let d = start.elapsed();
        s.turns += 1;
        s.busy += d;
        let us = d.as_micros() as u64;
        let b = BOUNDS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(BOUNDS_US.len());
        s.hist[b] += 1;
    });
}

/// Adds one occurrence of `name` that took `d`.
pub fn count(name: &'static str, d: Duration) {
    if !on() {
        return;
    }
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        match s.counters.iter_mut().find(|c| c.0 == name) {
            Some(c) => {
                c.1 += 1;
                c.2 += d;
                c.3 = c.3.max(d);
            }
            None => s.counters.push((name, 1, d, d)),
        }
    });
}

/// Times `f` as one occurrence of `name`.
pub fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !on() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    count(name, t.elapsed());
    r
}

/// The statistics so far, as lines for the log.
pub fn report() -> Vec<String> {
    if !on() {
        return Vec::new();
    }
    STATS.with(|s| {
        let s = s.borrow();
        let mut out = Vec::new();
        let turns = s.turns.max(1);
        out.push(format!(
            "turn stats: {} turns, busy {:.3}s, mean {:.1}us, events {} (mean {:.2}, max {})",
            s.turns,
            s.busy.as_secs_f64(),
            s.busy.as_secs_f64() * 1e6 / turns as f64,
            s.events,
            s.events as f64 / turns as f64,
            s.events_max
        ));
        let mut h = String::from("turn stats: durations");
        for (i, n) in s.hist.iter().enumerate() {
            match BOUNDS_US.get(i) {
                Some(b) => h.push_str(&format!(" <{b}us:{n}")),
                None => h.push_str(&format!(" more:{n}")),
            }
        }
        out.push(h);
        for (i, p) in PARTS.iter().enumerate() {
            out.push(format!(
                "turn stats: {:?}: total {:.3}s, mean/turn {:.1}us, max {}us",
                p,
                s.part_sum[i].as_secs_f64(),
                s.part_sum[i].as_secs_f64() * 1e6 / turns as f64,
                s.part_max[i].as_micros()
            ));
        }
        for (name, n, d, max) in &s.counters {
            out.push(format!(
                "turn stats: {name}: {n} times, total {:.3}s, mean {:.1}us, max {}us",
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / (*n).max(1) as f64,
                max.as_micros()
            ));
        }
        out
    })
}
