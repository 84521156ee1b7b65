//! A merge sort done in steps of bounded work. A POP opening orders its snapshot on the
//! reactor; sorted in one piece, 60,000 messages held every other client for 6-9 ms, and the
//! time grows with the mailbox. In steps, each turn does one piece and polls in between.
//!
//! First every chunk of `limits::SORT_CHUNK` items is sorted on its own (one step each), then
//! sorted runs are merged pairwise, pass by pass, `limits::SORT_MERGE_STEP` items a step. The
//! comparator comes with each step (it may borrow what the items index), so it must be the
//! same every time; items equal under it keep no particular order.

use std::cmp::Ordering;

use crate::limits;

pub struct StepSort<T: Copy> {
    /// The items; after the last step, in order.
    src: Vec<T>,
    /// The merge pass's output (as long as `src` once merging began).
    dst: Vec<T>,
    /// Chunks before this index are sorted (`src.len()` once all are).
    chunked: usize,
    /// The length of the sorted runs the current pass merges pairwise.
    width: usize,
    /// Where the current pair of runs starts, and how far each of its two runs is taken.
    pair: usize,
    left: usize,
    right: usize,
}

impl<T: Copy> StepSort<T> {
    pub fn new(items: Vec<T>) -> StepSort<T> {
        StepSort {
            src: items,
            dst: Vec::new(),
            chunked: 0,
            width: limits::SORT_CHUNK,
            pair: 0,
            left: 0,
            right: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.chunked >= self.src.len() && self.width >= self.src.len()
    }

    /// One bounded piece of the work; true once the items are in order.
    pub fn step(&mut self, mut cmp: impl FnMut(&T, &T) -> Ordering) -> bool {
        let n = self.src.len();
        if self.chunked < n {
            let end = n.min(self.chunked + limits::SORT_CHUNK);
            self.src[self.chunked..end].sort_unstable_by(&mut cmp);
            self.chunked = end;
            if end == n && self.width < n {
                self.dst = self.src.clone();
                self.begin_pair(0);
            }
            return self.done();
        }
        let mut budget = limits::SORT_MERGE_STEP;
        while self.width < n && budget > 0 {
            let mid = n.min(self.pair + self.width);
            let end = n.min(self.pair + 2 * self.width);
            while budget > 0 && (self.left < mid || self.right < end) {
                let out = self.left + self.right - mid;
                let take_left = self.right >= end
                    || self.left < mid
                        && cmp(&self.src[self.right], &self.src[self.left]) != Ordering::Less;
                if take_left {
                    self.dst[out] = self.src[self.left];
                    self.left += 1;
                } else {
                    self.dst[out] = self.src[self.right];
                    self.right += 1;
                }
                budget -= 1;
            }
            if self.left < mid || self.right < end {
                break;
            }
            if end < n {
                self.begin_pair(end);
            } else {
                // A pass is over: its output is the next pass's input.
                std::mem::swap(&mut self.src, &mut self.dst);
                self.width *= 2;
                self.begin_pair(0);
            }
        }
        if self.done() {
            self.dst = Vec::new();
        }
        self.done()
    }

    fn begin_pair(&mut self, start: usize) {
        self.pair = start;
        self.left = start;
        self.right = self.src.len().min(start + self.width);
    }

    /// The items, in order once `step` returned true.
    pub fn items(&self) -> &[T] {
        &self.src
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_in_steps(items: Vec<(u32, u32)>) -> (Vec<(u32, u32)>, usize) {
        let mut s = StepSort::new(items);
        let mut steps = 1;
        while !s.step(|a, b| a.cmp(b)) {
            steps += 1;
            assert!(steps < 10_000, "the sort does not end");
        }
        assert!(s.done());
        (s.items().to_vec(), steps)
    }

    #[test]
    fn sorts_every_length_around_the_chunk_and_pass_boundaries() {
        let c = limits::SORT_CHUNK;
        let mut seed = 0x2545_f491u32;
        for n in [0, 1, 2, c - 1, c, c + 1, 2 * c, 3 * c + 5, 4 * c, 7 * c + 3] {
            // Few distinct values: many ties, as messages delivered in one second.
            let items: Vec<(u32, u32)> = (0..n as u32)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed % 97, i)
                })
                .collect();
            let mut expected = items.clone();
            expected.sort();
            let (got, _) = sorted_in_steps(items);
            assert_eq!(got, expected, "n = {n}");
        }
    }

    #[test]
    fn steps_are_one_chunk_each_then_merges_of_a_bounded_size() {
        let c = limits::SORT_CHUNK;
        let n = 9 * c + 17;
        let items: Vec<(u32, u32)> = (0..n as u32).rev().map(|i| (i, 0)).collect();
        let (got, steps) = sorted_in_steps(items);
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
        // 10 chunks, then 4 passes (runs of 1, 2, 4, 8 chunks) over n items, taken
        // SORT_MERGE_STEP items a step.
        assert_eq!(steps, 10 + (4 * n).div_ceil(limits::SORT_MERGE_STEP));
        let (_, steps) = sorted_in_steps((0..c as u32).map(|i| (i, i)).collect());
        assert_eq!(steps, 1, "one chunk is one step");
    }
}
