//! Vectored socket I/O on raw iovecs.
//!
//! Page data moves between sockets and memory that other threads (or, on a node, other
//! connections) may write at the same time, so it is never turned into a Rust slice:
//! these helpers take raw `iovec`s and loop over partial transfers.

use std::io;
use std::os::fd::RawFd;

/// Most iovecs per system call (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// An iovec over raw memory.
pub fn iovec(ptr: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    }
}

/// Drops `n` transferred bytes from the front of `iov`; returns the new start index.
fn advance(iov: &mut [libc::iovec], mut start: usize, mut n: usize) -> usize {
    while n > 0 && start < iov.len() {
        let first = &mut iov[start];
        if n >= first.iov_len {
            n -= first.iov_len;
            // Mark it consumed, so a later call on the same iovecs skips it.
            first.iov_len = 0;
            start += 1;
        } else {
            // SAFETY: `n < iov_len`, so the new base stays inside the same buffer.
            first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
            first.iov_len -= n;
            n = 0;
        }
    }
    while start < iov.len() && iov[start].iov_len == 0 {
        start += 1;
    }
    start
}

/// Writes every byte the iovecs describe. The iovecs are consumed (modified).
///
/// # Safety
/// Every iovec must describe memory valid for reads for the duration of the call.
pub unsafe fn write_all(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<()> {
    let mut start = advance(iov, 0, 0);
    while start < iov.len() {
        let cnt = (iov.len() - start).min(IOV_MAX);
        // SAFETY: the caller guarantees the iovecs are readable; the count is in bounds.
        let n = unsafe { libc::writev(fd, iov[start..].as_ptr(), cnt as i32) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        start = advance(iov, start, n as usize);
    }
    Ok(())
}

/// One `readv`: fills the iovecs as far as the bytes already available go (at least one
/// byte, blocking until then), advancing them in place; returns the bytes read (0 only
/// when the iovecs were already full).
///
/// # Safety
/// Every iovec must describe memory valid for writes for the duration of the call.
pub unsafe fn read_once(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<usize> {
    let start = advance(iov, 0, 0);
    if start == iov.len() {
        return Ok(0);
    }
    loop {
        let cnt = (iov.len() - start).min(IOV_MAX);
        // SAFETY: the caller guarantees the iovecs are writable; the count is in bounds.
        let n = unsafe { libc::readv(fd, iov[start..].as_ptr(), cnt as i32) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        advance(iov, start, n as usize);
        return Ok(n as usize);
    }
}

/// Copies `bytes` into the front of the iovecs and advances them past it.
///
/// # Safety
/// Every iovec must describe memory valid for writes, and `bytes` must not overlap them.
pub unsafe fn fill_from(iov: &mut [libc::iovec], mut bytes: &[u8]) {
    let mut start = advance(iov, 0, 0);
    while !bytes.is_empty() && start < iov.len() {
        let n = bytes.len().min(iov[start].iov_len);
        // SAFETY: `n` bytes fit in the first iovec (caller: writable, not overlapping).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), iov[start].iov_base.cast(), n) };
        bytes = &bytes[n..];
        start = advance(iov, start, n);
    }
}

/// Fills every byte the iovecs describe, or fails (EOF is `UnexpectedEof`).
///
/// # Safety
/// Every iovec must describe memory valid for writes for the duration of the call.
pub unsafe fn read_exact(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<()> {
    // SAFETY: forwarded from the caller.
    while unsafe { read_once(fd, iov) }? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_fill_then_read_exact_continues_where_it_stopped() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut x = [0u8; 4];
        let mut y = [0u8; 4];
        let mut iov = vec![iovec(x.as_mut_ptr(), 4), iovec(y.as_mut_ptr(), 4)];
        // SAFETY: `x` and `y` outlive the calls; the source does not overlap them.
        unsafe { fill_from(&mut iov, &[1, 2, 3, 4, 5]) };
        (&a).write_all(&[6, 7, 8]).unwrap();
        // SAFETY: as above.
        unsafe { read_exact(b.as_raw_fd(), &mut iov) }.unwrap();
        assert_eq!((x, y), ([1, 2, 3, 4], [5, 6, 7, 8]));
    }
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn round_trips_many_small_buffers_across_partial_transfers() {
        let (a, b) = UnixStream::pair().unwrap();
        let src: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![i as u8; 1 + (i % 7) as usize])
            .collect();
        let total: usize = src.iter().map(Vec::len).sum();
        let writer = {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut iov: Vec<_> = src.iter().map(|v| iovec(v.as_ptr(), v.len())).collect();
                // SAFETY: `src` outlives the call.
                unsafe { write_all(a.as_raw_fd(), &mut iov) }.unwrap();
            })
        };
        let mut dst = vec![0u8; total];
        let mut iov = vec![iovec(dst.as_mut_ptr(), total)];
        // SAFETY: `dst` outlives the call.
        unsafe { read_exact(b.as_raw_fd(), &mut iov) }.unwrap();
        writer.join().unwrap();
        assert_eq!(dst, src.concat());
    }
}
