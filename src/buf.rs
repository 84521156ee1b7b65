//! Fixed-size byte buffers and the pool that lends them to connections.
//!
//! A connection holds a buffer only while bytes are in flight (unparsed input or undrained
//! output); an idle connection holds none, so ten thousand idle clients cost a few hundred
//! bytes each. Buffers never grow: a full buffer is back-pressure, not a reallocation.

use crate::limits;

/// A fixed-capacity byte queue: bytes are appended at the end and consumed from the front.
pub struct Buf<const N: usize> {
    data: [u8; N],
    start: usize,
    end: usize,
}

impl<const N: usize> Buf<N> {
    pub fn new_boxed() -> Box<Self> {
        Box::new(Buf {
            data: [0; N],
            start: 0,
            end: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        N
    }

    /// Room left for appending (after compacting, which `spare_mut` does).
    pub fn free(&self) -> usize {
        N - self.len()
    }

    pub fn is_full(&self) -> bool {
        self.len() == N
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The unconsumed bytes, writable in place (rustls decrypts TLS records where they lie).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// The writable tail, compacted so that all free room is contiguous. Call `commit` with
    /// the number of bytes written into it.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= N);
        self.end = (self.end + n).min(N);
    }

    /// Appends as much of `bytes` as fits; returns how much was taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare_mut();
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }
}

pub type InBuf = Buf<{ limits::IN_BUF }>;
pub type OutBuf = Buf<{ limits::OUT_BUF }>;
/// Ciphertext of a TLS connection: one whole record (see `tls`).
pub type TlsInBuf = Buf<{ limits::TLS_IN_BUF }>;

/// Free lists of input and output buffers.
#[derive(Default)]
pub struct Pool {
    inputs: Vec<Box<InBuf>>,
    outputs: Vec<Box<OutBuf>>,
    tls_inputs: Vec<Box<TlsInBuf>>,
}

impl Pool {
    pub fn take_in(&mut self) -> Box<InBuf> {
        self.inputs.pop().unwrap_or_else(InBuf::new_boxed)
    }

    pub fn take_out(&mut self) -> Box<OutBuf> {
        self.outputs.pop().unwrap_or_else(OutBuf::new_boxed)
    }

    pub fn take_tls_in(&mut self) -> Box<TlsInBuf> {
        self.tls_inputs.pop().unwrap_or_else(TlsInBuf::new_boxed)
    }

    pub fn give_tls_in(&mut self, mut b: Box<TlsInBuf>) {
        if self.tls_inputs.len() < limits::POOL_KEEP {
            b.clear();
            self.tls_inputs.push(b);
        }
    }

    pub fn give_in(&mut self, mut b: Box<InBuf>) {
        if self.inputs.len() < limits::POOL_KEEP {
            b.clear();
            self.inputs.push(b);
        }
    }

    /// Frees every pooled buffer (the server is at rest).
    pub fn clear(&mut self) {
        self.inputs = Vec::new();
        self.outputs = Vec::new();
        self.tls_inputs = Vec::new();
    }

    pub fn give_out(&mut self, mut b: Box<OutBuf>) {
        if self.outputs.len() < limits::POOL_KEEP {
            b.clear();
            self.outputs.push(b);
        }
    }
}

/// Makes the C allocator serve every allocation of a buffer's size or more (connection and
/// spool buffers, large tables) from its own mapping, returned to the kernel when freed.
/// Otherwise they come from the heap, where the small objects a burst leaves behind pin the
/// pages around them and an idle server stays at the size of its last burst.
pub fn allocate_buffers_outside_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called once, before the reactor runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, limits::IN_BUF as libc::c_int);
    }
}

/// Asks the C allocator to give its free pages back to the kernel (glibc keeps freed heap
/// memory for reuse otherwise, so an idle server would stay at the size of its last burst).
pub fn return_free_memory_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_consume_compact() {
        let mut b = Buf::<8>::new_boxed();
        assert_eq!(b.push(b"abcdef"), 6);
        b.consume(4);
        assert_eq!(b.bytes(), b"ef");
        assert_eq!(b.push(b"123456789"), 6);
        assert_eq!(b.bytes(), b"ef123456");
        assert!(b.is_full());
        b.consume(8);
        assert!(b.is_empty());
    }
}
