//! A node's snapshots: the pages of its region written since its previous snapshot, in a
//! file that a fresh node loads back (`dsmrun node --restore BASE DELTA...`).
//!
//! The node cannot see the writes: the `shm` transport copies into the region's memfd
//! with no work by the node's CPU. So a snapshot compares each page's checksum (xxh3) with
//! the one the previous snapshot saw, over the pages the memfd holds (`SEEK_DATA`: an
//! untouched terabyte of span costs nothing to scan). All-zero pages are holes: they are
//! not kept, and a page that was kept and is zero now is recorded as a zero page.
//!
//! File layout (little endian): [`MAGIC`], node id (u32), page size (u32), region bytes
//! (u64), record count (u64); then each record: page number (u64, [`ZERO_PAGE`] bit set
//! for a zero page) and, unless zero, the page's bytes; then the xxh3-64 of everything
//! before it (u64).

use super::region::Region;
use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"DSMSNAP1";
/// Page size of the records.
pub const PAGE: u64 = 4096;
/// Bit of a record's page number that marks a page that became zero.
pub const ZERO_PAGE: u64 = 1 << 63;
/// Bytes of the header.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8;

/// Checksums of the non-zero pages as the last snapshot (or restore) saw them.
pub type PageSums = HashMap<u64, u64>;

/// What one snapshot wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Pages saved with their data.
    pub pages: u64,
    /// Pages recorded as turned zero.
    pub zeroed: u64,
    /// Size of the file.
    pub bytes: u64,
}

/// Why a snapshot cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a node snapshot (bad magic)")]
    Magic,
    #[error("snapshot of node {found}, loaded into node {expected}")]
    WrongNode { found: u32, expected: u32 },
    #[error("page size {0}, expected 4096")]
    PageSize(u32),
    #[error("page {page} lies outside the node's {region_bytes}-byte region")]
    OutOfRegion { page: u64, region_bytes: u64 },
    #[error("the file is cut short")]
    Truncated,
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    #[error("{0} bytes after the checksum")]
    Trailing(u64),
}

/// The region's pages that differ from `previous`, by page number, with their new
/// checksums; all-zero pages count as absent.
pub fn changed_pages(region: &Region, previous: &PageSums) -> io::Result<(Vec<u64>, PageSums)> {
    let zero_sum = xxh3_64(&[0u8; PAGE as usize]);
    let mut now = PageSums::new();
    let mut changed = Vec::new();
    for (start, end) in data_extents(region)? {
        for page in start / PAGE..end.div_ceil(PAGE) {
            let sum = xxh3_64(page_bytes(region, page));
            if sum == zero_sum {
                continue;
            }
            now.insert(page, sum);
            if previous.get(&page) != Some(&sum) {
                changed.push(page);
            }
        }
    }
    changed.extend(
        previous
            .keys()
            .filter(|p| !now.contains_key(p))
            .map(|p| p | ZERO_PAGE),
    );
    changed.sort_unstable_by_key(|p| p & !ZERO_PAGE);
    Ok((changed, now))
}

/// Writes the pages of `region` that differ from `previous` to `path` (created, synced);
/// returns what it wrote and the checksums to compare the next snapshot with.
pub fn write(
    region: &Region,
    node: u32,
    previous: &PageSums,
    path: &Path,
) -> io::Result<(Written, PageSums)> {
    let (records, now) = changed_pages(region, previous)?;
    let file = std::fs::File::create(path)?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, &file));
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&node.to_le_bytes());
    header.extend_from_slice(&(PAGE as u32).to_le_bytes());
    header.extend_from_slice(&region.len().to_le_bytes());
    header.extend_from_slice(&(records.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    let mut written = Written::default();
    for &record in &records {
        out.write_all(&record.to_le_bytes())?;
        if record & ZERO_PAGE != 0 {
            written.zeroed += 1;
        } else {
            out.write_all(page_bytes(region, record))?;
            written.pages += 1;
        }
    }
    let sum = out.hasher.digest();
    let mut inner = out.inner;
    inner.write_all(&sum.to_le_bytes())?;
    inner.flush()?;
    drop(inner);
    file.sync_all()?;
    written.bytes = file.metadata()?.len();
    Ok((written, now))
}

/// Loads the snapshot at `path` into `region` (node `node`'s); the whole file is checked
/// (checksum, bounds) and a damaged one is an error, possibly after some pages were copied.
pub fn load(region: &Region, node: u32, path: &Path) -> Result<u64, SnapshotError> {
    let file = std::fs::File::open(path)?;
    let mut input = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let mut header = [0u8; HEADER_BYTES];
    input.read_exact(&mut header).map_err(truncated)?;
    if &header[..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if found != node {
        return Err(SnapshotError::WrongNode {
            found,
            expected: node,
        });
    }
    let page_size = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if u64::from(page_size) != PAGE {
        return Err(SnapshotError::PageSize(page_size));
    }
    let count = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let mut buf = vec![0u8; PAGE as usize];
    for _ in 0..count {
        let mut word = [0u8; 8];
        input.read_exact(&mut word).map_err(truncated)?;
        let record = u64::from_le_bytes(word);
        let page = record & !ZERO_PAGE;
        let Some(dest) = region.ptr(page.saturating_mul(PAGE), PAGE) else {
            return Err(SnapshotError::OutOfRegion {
                page,
                region_bytes: region.len(),
            });
        };
        if record & ZERO_PAGE != 0 {
            buf.fill(0);
        } else {
            input.read_exact(&mut buf).map_err(truncated)?;
        }
        // SAFETY: `dest` points at a whole page inside the region; the node serves nobody
        // while it loads.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dest, buf.len()) };
    }
    let expected = input.hasher.digest();
    let mut word = [0u8; 8];
    input.inner.read_exact(&mut word).map_err(truncated)?;
    if u64::from_le_bytes(word) != expected {
        return Err(SnapshotError::Checksum);
    }
    let trailing = io::copy(&mut input.inner, &mut io::sink())?;
    if trailing != 0 {
        return Err(SnapshotError::Trailing(trailing));
    }
    Ok(count)
}

fn truncated(e: io::Error) -> SnapshotError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotError::Truncated
    } else {
        SnapshotError::Io(e)
    }
}

/// The page `page` of the region, as bytes (it lies inside: callers found it there).
fn page_bytes(region: &Region, page: u64) -> &[u8] {
    let p = region
        .ptr(page * PAGE, PAGE)
        .expect("a page of the region's data extents");
    // SAFETY: a whole page inside the mapping, which lives as long as `region`; read while
    // the job is quiesced (nobody writes it).
    unsafe { std::slice::from_raw_parts(p, PAGE as usize) }
}

/// The byte ranges of the region's memfd that hold data (`SEEK_DATA`/`SEEK_HOLE`).
fn data_extents(region: &Region) -> io::Result<Vec<(u64, u64)>> {
    let fd = region.file();
    let len = region.len() as libc::off_t;
    let mut extents = Vec::new();
    let mut at: libc::off_t = 0;
    while at < len {
        // SAFETY: lseek on the region's own descriptor (the offset is only read here).
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = end.min(len);
        extents.push((start as u64, end as u64));
        at = end;
    }
    Ok(extents)
}

/// A writer that hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hasher: Xxh3,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Xxh3::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Xxh3,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Xxh3::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(region: &Region, page: u64, byte: u8) {
        let p = region.ptr(page * PAGE, PAGE).unwrap();
        // SAFETY: a page inside the region.
        unsafe { p.write_bytes(byte, PAGE as usize) };
    }

    fn byte_at(region: &Region, page: u64) -> u8 {
        // SAFETY: a page inside the region.
        unsafe { *region.ptr(page * PAGE, 1).unwrap() }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("dsm-snap-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_base_and_a_delta_restore_the_region_and_the_delta_holds_only_changes() {
        let region = Region::new(1 << 30).unwrap();
        fill(&region, 3, 1);
        fill(&region, 1000, 2);
        fill(&region, 5, 9);
        let (base_path, delta_path) = (tmp("base"), tmp("delta"));
        let (base, sums) = write(&region, 7, &PageSums::new(), &base_path).unwrap();
        assert_eq!((base.pages, base.zeroed), (3, 0));
        fill(&region, 1000, 4); // changed
        fill(&region, 5, 0); // became zero
        fill(&region, 20000, 6); // new
        let (delta, _) = write(&region, 7, &sums, &delta_path).unwrap();
        assert_eq!((delta.pages, delta.zeroed), (2, 1));
        let fresh = Region::new(1 << 30).unwrap();
        fill(&fresh, 5, 1);
        assert_eq!(load(&fresh, 7, &base_path).unwrap(), 3);
        assert_eq!(load(&fresh, 7, &delta_path).unwrap(), 3);
        for page in [3, 1000, 5, 20000, 4] {
            assert_eq!(byte_at(&fresh, page), byte_at(&region, page), "page {page}");
        }
        let _ = std::fs::remove_file(base_path);
        let _ = std::fs::remove_file(delta_path);
    }

    #[test]
    fn damaged_or_foreign_snapshots_are_refused() {
        let region = Region::new(1 << 20).unwrap();
        fill(&region, 2, 3);
        let path = tmp("damaged");
        write(&region, 1, &PageSums::new(), &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let fresh = Region::new(1 << 20).unwrap();
        assert!(matches!(
            load(&fresh, 2, &path),
            Err(SnapshotError::WrongNode { .. })
        ));
        let small = Region::new(8192).unwrap();
        assert!(matches!(
            load(&small, 1, &path),
            Err(SnapshotError::OutOfRegion { page: 2, .. })
        ));
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 8 + 100] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            load(&fresh, 1, &path),
            Err(SnapshotError::Checksum)
        ));
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(matches!(
            load(&fresh, 1, &path),
            Err(SnapshotError::Truncated)
        ));
        std::fs::write(&path, b"not a snapshot at all, really not").unwrap();
        assert!(matches!(load(&fresh, 1, &path), Err(SnapshotError::Magic)));
        let _ = std::fs::remove_file(path);
    }
}
