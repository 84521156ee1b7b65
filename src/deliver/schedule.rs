//! When queue entries are tried: a FIFO of entries due now and a min-heap of deferred ones.
//!
//! Nothing here scans the spool: an entry enters the schedule when it is committed (or found by
//! the one start-up scan) and re-enters with a due time after a temporary failure. A queue of
//! 10,000 deferred messages costs one wake-up per due retry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::spool::QueueId;

#[derive(Default)]
pub struct Schedule {
    ready: VecDeque<QueueId>,
    deferred: BinaryHeap<Reverse<(Instant, QueueId)>>,
}

impl Schedule {
    pub fn due_now(&mut self, id: QueueId) {
        self.ready.push_back(id);
    }

    pub fn defer(&mut self, id: QueueId, at: Instant) {
        self.deferred.push(Reverse((at, id)));
    }

    /// Everything deferred becomes due now (SIGUSR2).
    pub fn flush(&mut self) {
        let mut all: Vec<_> = self
            .deferred
            .drain()
            .map(|Reverse((at, id))| (at, id))
            .collect();
        all.sort();
        self.ready.extend(all.into_iter().map(|(_, id)| id));
    }

    /// How long the reactor may sleep as far as delivery is concerned.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        self.deferred
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// The next entry to attempt, if any is due; at most one deferred entry is moved per call,
    /// so the work per call is O(log n) whatever the queue length.
    pub fn next_due(&mut self, now: Instant) -> Option<QueueId> {
        if let Some(id) = self.ready.pop_front() {
            return Some(id);
        }
        match self.deferred.peek() {
            Some(Reverse((at, _))) if *at <= now => self.deferred.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// Gives back capacity a burst grew.
    pub fn shrink(&mut self) {
        self.ready.shrink_to_fit();
        self.deferred.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.ready.len() + self.deferred.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exponential back-off: `min` after the first failure, doubling, never above `max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    min.checked_mul(1u32 << shift).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QueueId {
        QueueId(s.to_string())
    }

    #[test]
    fn ready_first_then_deferred_in_time_order() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        assert_eq!(s.timeout(t0), None, "empty schedule: block forever");
        s.defer(id("late"), t0 + Duration::from_secs(20));
        s.defer(id("soon"), t0 + Duration::from_secs(10));
        assert_eq!(s.timeout(t0), Some(Duration::from_secs(10)));
        s.due_now(id("now"));
        assert_eq!(s.timeout(t0), Some(Duration::ZERO));
        assert_eq!(s.next_due(t0), Some(id("now")));
        assert_eq!(s.next_due(t0), None);
        assert_eq!(s.next_due(t0 + Duration::from_secs(10)), Some(id("soon")));
        assert_eq!(s.next_due(t0 + Duration::from_secs(30)), Some(id("late")));
        assert!(s.is_empty());
    }

    #[test]
    fn flush_makes_everything_due() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.defer(id("b"), t0 + Duration::from_secs(3600));
        s.defer(id("a"), t0 + Duration::from_secs(60));
        s.flush();
        assert_eq!(s.next_due(t0), Some(id("a")));
        assert_eq!(s.next_due(t0), Some(id("b")));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let got: Vec<u64> = (1..=9).map(|f| backoff(f, min, max).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }
}
