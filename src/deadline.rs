//! Deadlines as data: a min-heap of `(when, slot, connection id)` with lazy deletion.
//!
//! A connection's deadline moves on every command, so the heap keeps at most the *earliest*
//! entry per connection: a later deadline is not pushed at all, and when the stale earlier
//! entry comes due the owner re-arms with its true deadline. The heap therefore stays at about
//! one entry per connection however many commands pass, and nothing wakes the process unless
//! an entry is really due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

/// Per-owner record of the entry it has in the heap.
#[derive(Default, Clone, Copy, Debug)]
pub struct Armed(Option<Instant>);

impl Deadlines {
    /// Makes sure an entry no later than `when` exists for `(slot, id)`.
    pub fn arm(&mut self, armed: &mut Armed, when: Instant, slot: usize, id: u64) {
        match armed.0 {
            Some(t) if t <= when => {}
            _ => {
                self.heap.push(Reverse((when, slot, id)));
                armed.0 = Some(when);
            }
        }
    }

    /// Time until the earliest entry; `None` when nothing is armed (poll blocks forever).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_duration_since(now))
    }

    /// Pops the next entry due at `now`. The caller checks that `(slot, id)` still names the
    /// same owner and calls `fired` on its `Armed` (which returns false for a stale entry).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Drops every entry and the heap's memory; only when no owner is left (each owner's
    /// `Armed` would otherwise believe it still has an entry).
    pub fn clear(&mut self) {
        self.heap = BinaryHeap::new();
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

impl Armed {
    /// The heap entry for `at` was popped. True if it was this owner's live entry (it is then
    /// disarmed and the owner must check its real deadline and re-arm if it lies ahead).
    pub fn fired(&mut self, at: Instant) -> bool {
        if self.0 == Some(at) {
            self.0 = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_deadlines_do_not_grow_the_heap() {
        let mut d = Deadlines::default();
        let mut a = Armed::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            d.arm(&mut a, t0 + Duration::from_secs(300 + i), 7, 1);
        }
        assert_eq!(d.len(), 1);
        assert!(d.pop_due(t0).is_none());
        let (t, slot, id) = d.pop_due(t0 + Duration::from_secs(300)).expect("due");
        assert_eq!((slot, id), (7, 1));
        assert!(a.fired(t));
        assert!(d.is_empty());
    }

    #[test]
    fn earlier_deadline_supersedes_and_stale_entry_is_ignored() {
        let mut d = Deadlines::default();
        let mut a = Armed::default();
        let t0 = Instant::now();
        d.arm(&mut a, t0 + Duration::from_secs(10), 1, 1);
        d.arm(&mut a, t0 + Duration::from_secs(2), 1, 1);
        assert_eq!(d.timeout(t0), Some(Duration::from_secs(2)));
        let (t, _, _) = d.pop_due(t0 + Duration::from_secs(2)).expect("due");
        assert!(a.fired(t));
        let (t, _, _) = d.pop_due(t0 + Duration::from_secs(10)).expect("stale");
        assert!(!a.fired(t));
        assert_eq!(d.timeout(t0), None);
    }
}
