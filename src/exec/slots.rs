//! A bounded slab of operations in flight: the index of a slot is what the kernel (io_uring
//! `user_data`) or the helper (the frame's sequence number) echoes back, so the caller's own
//! tags may be anything, even duplicates.

pub(super) struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    used: usize,
    cap: usize,
}

impl<T> Slots<T> {
    pub(super) fn new(cap: usize) -> Slots<T> {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
            used: 0,
            cap,
        }
    }

    /// Stores `item` and returns its index, or hands it back when `cap` are in use.
    pub(super) fn insert(&mut self, item: T) -> Result<usize, T> {
        if self.used >= self.cap {
            return Err(item);
        }
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.items[i] = Some(item);
            Ok(i)
        } else {
            self.items.push(Some(item));
            Ok(self.items.len() - 1)
        }
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i).and_then(Option::as_mut)
    }

    pub(super) fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i)?.take()?;
        self.used -= 1;
        self.free.push(i);
        Some(item)
    }

    pub(super) fn len(&self) -> usize {
        self.used
    }

    pub(super) fn is_full(&self) -> bool {
        self.used >= self.cap
    }

    /// Empties the slab, yielding every item (used when the helper is gone).
    pub(super) fn drain_all(&mut self) -> Vec<T> {
        let out: Vec<T> = self.items.drain(..).flatten().collect();
        self.free.clear();
        self.used = 0;
        out
    }
}
