//! When queue entries are tried: a FIFO of entries due now and a min-heap of deferred ones.
//!
//! Nothing here scans the spool: an entry enters the schedule when it is committed (or found by
//! the one start-up scan) and re-enters with a due time after a temporary failure. A queue of
//! 10,000 deferred messages costs one wake-up per due retry.
//!
//! Freshly accepted mail lingers a few milliseconds before a batch starts for it, until a
//! whole batch is due, so a steady stream (one SMTP session sending message after message)
//! is delivered in batches that share their directory syncs instead of one sync per message.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::mail::QueueId;

#[derive(Default)]
pub struct Schedule {
    /// Due entries in order; with the time a fresh one was accepted (None: due at once).
    ready: VecDeque<(QueueId, Option<Instant>)>,
    deferred: BinaryHeap<Reverse<(Instant, QueueId)>>,
    linger: Option<Linger>,
}

/// How long fresh entries may wait for company, and how many make a batch.
#[derive(Clone, Copy)]
pub struct Linger {
    pub wait: Duration,
    pub batch: usize,
}

impl Schedule {
    pub fn with_linger(linger: Linger) -> Schedule {
        Schedule {
            linger: Some(linger),
            ..Schedule::default()
        }
    }

    pub fn due_now(&mut self, id: QueueId) {
        self.ready.push_back((id, None));
    }

    /// Mail accepted at `at`: due once `linger.batch` entries are ready or it waited
    /// `linger.wait`, whichever comes first.
    pub fn due_fresh(&mut self, id: QueueId, at: Instant) {
        self.ready.push_back((id, Some(at)));
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
        all.sort_unstable();
        self.ready.extend(all.into_iter().map(|(_, id)| (id, None)));
    }

    /// Takes `id` out of the schedule wherever it waits (an administrator's command: the
    /// deferred heap is rebuilt, O(n)). True if it was there.
    pub fn remove(&mut self, id: &QueueId) -> bool {
        let before = self.len();
        self.ready.retain(|(r, _)| r != id);
        self.deferred.retain(|Reverse((_, d))| d != id);
        self.len() != before
    }

    /// How long the reactor may sleep as far as delivery is concerned.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        let deferred = self
            .deferred
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now));
        let ready = match (self.ready.front(), self.linger) {
            (None, _) => None,
            (Some((_, Some(accepted))), Some(l)) if self.ready.len() < l.batch => {
                Some((*accepted + l.wait).saturating_duration_since(now))
            }
            (Some(_), _) => Some(Duration::ZERO),
        };
        match (ready, deferred) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        }
    }

    /// The next entry to attempt, if any is due; at most one deferred entry is moved per call,
    /// so the work per call is O(log n) whatever the queue length.
    pub fn next_due(&mut self, now: Instant) -> Option<QueueId> {
        if let Some((id, _)) = self.ready.pop_front() {
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

    /// Entries are waiting to be taken, lingering or not.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
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
    fn fresh_mail_lingers_until_a_batch_is_due_or_the_wait_is_over() {
        let linger = Linger {
            wait: Duration::from_millis(10),
            batch: 3,
        };
        let mut s = Schedule::with_linger(linger);
        let t0 = Instant::now();
        s.due_fresh(id("a"), t0);
        assert_eq!(s.timeout(t0), Some(Duration::from_millis(10)));
        s.due_fresh(id("b"), t0 + Duration::from_millis(4));
        assert_eq!(
            s.timeout(t0 + Duration::from_millis(4)),
            Some(Duration::from_millis(6)),
            "the oldest decides how long the rest wait"
        );
        assert_eq!(
            s.timeout(t0 + Duration::from_millis(10)),
            Some(Duration::ZERO)
        );
        s.due_fresh(id("c"), t0 + Duration::from_millis(5));
        assert_eq!(
            s.timeout(t0 + Duration::from_millis(5)),
            Some(Duration::ZERO),
            "a whole batch is due at once"
        );
        // A started batch takes whatever is ready.
        assert_eq!(s.next_due(t0), Some(id("a")));
        assert_eq!(s.next_due(t0), Some(id("b")));
        assert_eq!(s.next_due(t0), Some(id("c")));
        // Retries and SIGUSR2 do not linger, and a deferred entry that is due wins the wait.
        s.due_now(id("retry"));
        assert_eq!(s.timeout(t0), Some(Duration::ZERO));
        assert_eq!(s.next_due(t0), Some(id("retry")));
        s.due_fresh(id("new"), t0);
        s.defer(id("old"), t0 + Duration::from_millis(2));
        assert_eq!(s.timeout(t0), Some(Duration::from_millis(2)));
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
    fn remove_takes_an_entry_out_wherever_it_waits() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.defer(id("d"), t0 + Duration::from_secs(60));
        s.defer(id("e"), t0 + Duration::from_secs(30));
        s.due_now(id("r"));
        assert!(s.remove(&id("d")));
        assert!(s.remove(&id("r")));
        assert!(!s.remove(&id("r")));
        assert_eq!(s.len(), 1);
        assert_eq!(s.next_due(t0 + Duration::from_secs(99)), Some(id("e")));
        assert!(s.is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let got: Vec<u64> = (1..=9).map(|f| backoff(f, min, max).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }
}
