//! Reserving the global range at its fixed base.

use std::io;

/// Why the range could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Something already occupies part of the range.
    #[error(
        "the global range {base:#x}..{end:#x} overlaps an existing mapping; choose another base \
         (--space-base / DSM_SPACE_BASE) or a smaller pool"
    )]
    Taken { base: usize, end: usize },
    /// mmap refused for another reason (size, limits).
    #[error("cannot reserve {len} bytes at {base:#x}: {source}")]
    Mmap {
        base: usize,
        len: usize,
        source: io::Error,
    },
}

/// An owned anonymous mapping at a fixed address, unmapped on drop.
#[derive(Debug)]
pub struct Reservation {
    base: usize,
    len: usize,
}

impl Reservation {
    /// Maps `len` bytes at exactly `base`, never replacing an existing mapping.
    ///
    /// The mapping is `MAP_NORESERVE`: it costs nothing until pages are installed.
    pub fn new(base: usize, len: usize) -> Result<Reservation, ReserveError> {
        // SAFETY: MAP_FIXED_NOREPLACE never clobbers existing mappings; the result is checked.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EEXIST) {
                return Err(ReserveError::Taken {
                    base,
                    end: base + len,
                });
            }
            return Err(ReserveError::Mmap { base, len, source });
        }
        if p as usize != base {
            // Kernels before 4.17 ignore the flag and may place the mapping elsewhere.
            // SAFETY: unmapping the mapping we just made.
            unsafe { libc::munmap(p, len) };
            return Err(ReserveError::Taken {
                base,
                end: base + len,
            });
        }
        Ok(Reservation { base, len })
    }

    /// First byte.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the reservation is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this value owns.
        let rc = unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
        debug_assert_eq!(rc, 0, "munmap of the global range failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_range_is_a_clear_error() {
        let base = 0x2100_0000_0000;
        let first = Reservation::new(base, 1 << 30).unwrap();
        let err = Reservation::new(base + 4096, 4096).unwrap_err();
        assert!(matches!(err, ReserveError::Taken { .. }), "{err}");
        assert!(err.to_string().contains("overlaps"));
        drop(first);
        Reservation::new(base + 4096, 4096).unwrap();
    }

    #[test]
    fn many_terabytes_reserve_for_free() {
        let r = Reservation::new(0x2200_0000_0000, 16 << 40).unwrap();
        assert_eq!(r.len(), 16 << 40);
    }
}
