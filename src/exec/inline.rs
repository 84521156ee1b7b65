//! The inline backend: runs each operation with blocking calls at submit and queues its
//! completion for the next `drain`. For unit tests of callers (every dialog testable without
//! a helper or a ring); a server never uses it, since it makes the reactor wait.

use std::collections::VecDeque;

use super::{Completion, DiskOp, Reject, Rejected, sys};
use crate::limits;

pub struct Inline {
    done: VecDeque<Completion>,
}

impl Inline {
    pub fn new() -> Inline {
        Inline {
            done: VecDeque::new(),
        }
    }

    pub(super) fn submit(&mut self, tag: u64, op: DiskOp) -> Result<(), Rejected> {
        // The same bound as the real backends, so a caller's handling of `Full` is testable.
        if self.done.len() >= limits::EXEC_MAX_IN_FLIGHT {
            return Err(Rejected {
                reason: Reject::Full,
                op,
            });
        }
        self.done.push_back(Completion {
            tag,
            result: sys::run(op),
        });
        Ok(())
    }

    pub(super) fn drain(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }

    pub(super) fn in_flight(&self) -> usize {
        self.done.len()
    }
}

impl Default for Inline {
    fn default() -> Inline {
        Inline::new()
    }
}
