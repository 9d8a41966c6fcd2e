//! The registered bounce buffer of a session, with the RDMA lifetime rule in its types:
//! a buffer under an in-flight work request cannot be read, reused or freed before its
//! completion is reaped.
//!
//! ```text
//! Bounce --stage()--> Staging --post()--> Posted --completed()--> Completed
//!   (copy data in, make SGEs)   (borrow held;     (reaped: bytes
//!                                drop = poison)    readable)
//! ```
//!
//! Each state holds the `&mut Bounce` borrow, so nothing else can touch the memory while
//! a batch is built or in flight. A `Posted` dropped without `completed()` (a timeout, a
//! failed post) poisons the buffer: the session refuses further work and the memory and
//! its registration are leaked rather than freed under a device that may still write.

use super::ffi::{ProtectionDomain, RegisteredBuffer, Sge, VerbsError};
use std::sync::Arc;

/// A session's registered scratch memory.
#[derive(Debug)]
pub struct Bounce {
    buf: Option<RegisteredBuffer>,
    poisoned: bool,
}

impl Bounce {
    /// Maps and registers `len` bytes.
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize) -> Result<Bounce, VerbsError> {
        Ok(Bounce {
            buf: Some(RegisteredBuffer::new(pd, len)?),
            poisoned: false,
        })
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, RegisteredBuffer::len)
    }

    /// Never empty while usable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an earlier batch was abandoned in flight.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Starts a batch; `None` once poisoned.
    pub fn stage(&mut self) -> Option<Staging<'_>> {
        if self.poisoned || self.buf.is_none() {
            return None;
        }
        Some(Staging { b: self })
    }

    fn buf(&self) -> &RegisteredBuffer {
        self.buf.as_ref().expect("present until drop")
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        if self.poisoned {
            if let Some(b) = self.buf.take() {
                b.leak();
            }
        }
    }
}

/// A batch being built: data may be copied in and SGEs made.
pub struct Staging<'b> {
    b: &'b mut Bounce,
}

impl<'b> Staging<'b> {
    /// Copies `data` to byte `off` (bounds-checked).
    pub fn write(&mut self, off: usize, data: &[u8]) {
        let buf = self.b.buf();
        assert!(off + data.len() <= buf.len(), "bounce write out of range");
        // SAFETY: in bounds (checked); no work request is in flight (we hold the only
        // borrow and are before `post`), so nothing else writes these bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr(off), data.len()) };
    }

    /// The scatter/gather entry for `len` bytes at `off`.
    pub fn sge(&self, off: usize, len: usize) -> Sge {
        let buf = self.b.buf();
        assert!(off + len <= buf.len(), "bounce SGE out of range");
        Sge {
            addr: buf.addr() + off as u64,
            length: len as u32,
            lkey: buf.lkey(),
        }
    }

    /// Marks the batch as handed to the device. Call it *before* the first
    /// `ibv_post_send`, so that any early return leaves a `Posted` to poison the buffer.
    pub fn post(self) -> Posted<'b> {
        Posted { b: Some(self.b) }
    }
}

/// A batch the device may be working on.
pub struct Posted<'b> {
    b: Option<&'b mut Bounce>,
}

impl<'b> Posted<'b> {
    /// Declares every work request of the batch reaped from the CQ (successfully or not).
    pub fn completed(mut self) -> Completed<'b> {
        Completed {
            b: self.b.take().expect("taken once"),
        }
    }
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.b.take() {
            b.poisoned = true;
        }
    }
}

/// A batch whose completions were all reaped: its bytes may be read.
pub struct Completed<'b> {
    b: &'b mut Bounce,
}

impl Completed<'_> {
    /// Copies `out.len()` bytes from byte `off` (bounds-checked).
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let buf = self.b.buf();
        assert!(off + out.len() <= buf.len(), "bounce read out of range");
        // SAFETY: in bounds (checked); every request of the batch completed, so the
        // device no longer writes these bytes.
        unsafe { std::ptr::copy_nonoverlapping(buf.ptr(off), out.as_mut_ptr(), out.len()) };
    }

    /// The host-order 8 bytes at `off`: where a compare-and-swap returns the old value.
    pub fn read_u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        u64::from_ne_bytes(b)
    }
}
