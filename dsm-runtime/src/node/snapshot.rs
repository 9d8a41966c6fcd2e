//! A node's snapshots: the pages of its region written since its previous snapshot, in a
//! file that a fresh node restores lazily (`dsmrun node --restore BASE DELTA...`, see
//! `node/restore.rs`).
//!
//! The node cannot see the writes: the `shm` transport copies into the region's memfd
//! with no work by the node's CPU. So a snapshot compares each page's checksum (xxh3) with
//! the one the previous snapshot saw, over the pages the memfd holds (`SEEK_DATA`: an
//! untouched terabyte of span costs nothing to scan). All-zero pages are holes: they are
//! not kept, and a page that was kept and is zero now is recorded as a zero page.
//!
//! File layout (little endian): a header: [`MAGIC`], node id (u32), page size (u32),
//! region bytes (u64), record count (u64); then each record: page number (u64,
//! [`ZERO_PAGE`] bit set for a zero page) and, unless zero, the page's bytes; then the
//! index, one entry per record: page number (as in the record), offset of the page's
//! bytes in the file (u64, 0 for a zero page), xxh3-64 of the page's bytes (u64); then the
//! trailer: the index's offset (u64) and the xxh3-64 of the header, the index and that
//! offset (u64).
//!
//! So a restart checks a file cheaply, reading only its header, index and trailer
//! ([`read_index`]), and each page's bytes are checked against their index entry when
//! they are loaded ([`read_page`]): restart time does not grow with the data.

use super::region::Region;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"DSMSNAP2";
/// Page size of the records.
pub const PAGE: u64 = 4096;
/// Bit of a record's page number that marks a page that became zero.
pub const ZERO_PAGE: u64 = 1 << 63;
/// Bytes of the header.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8;
/// Bytes of one index entry.
const INDEX_ENTRY_BYTES: u64 = 24;
/// Bytes of the trailer.
const TRAILER_BYTES: u64 = 16;

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
    #[error("checksum mismatch in its header or index: the file is damaged")]
    Checksum,
    #[error("page {page}: checksum mismatch: the file is damaged")]
    PageDamaged { page: u64 },
}

/// One record of a snapshot, as its index describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The page number, with [`ZERO_PAGE`] set for a page that became zero.
    pub record: u64,
    /// Where the page's bytes start in the file (0 for a zero page).
    pub offset: u64,
    /// xxh3-64 of the page's bytes (0 for a zero page).
    pub sum: u64,
}

impl IndexEntry {
    /// The page number.
    pub fn page(&self) -> u64 {
        self.record & !ZERO_PAGE
    }

    /// Whether the record says the page became zero.
    pub fn is_zero(&self) -> bool {
        self.record & ZERO_PAGE != 0
    }
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
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&node.to_le_bytes());
    header.extend_from_slice(&(PAGE as u32).to_le_bytes());
    header.extend_from_slice(&region.len().to_le_bytes());
    header.extend_from_slice(&(records.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    let mut index = Vec::with_capacity(records.len() * INDEX_ENTRY_BYTES as usize);
    let mut at = HEADER_BYTES as u64;
    let mut written = Written::default();
    for &record in &records {
        out.write_all(&record.to_le_bytes())?;
        at += 8;
        let (offset, sum) = if record & ZERO_PAGE != 0 {
            written.zeroed += 1;
            (0, 0)
        } else {
            let bytes = page_bytes(region, record);
            // The job is quiesced: the checksum `changed_pages` took still holds.
            let sum = now.get(&record).copied().unwrap_or_else(|| xxh3_64(bytes));
            out.write_all(bytes)?;
            written.pages += 1;
            at += PAGE;
            (at - PAGE, sum)
        };
        for word in [record, offset, sum] {
            index.extend_from_slice(&word.to_le_bytes());
        }
    }
    out.write_all(&index)?;
    out.write_all(&at.to_le_bytes())?;
    out.write_all(&index_sum(&header, &index, at).to_le_bytes())?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    written.bytes = file.metadata()?.len();
    Ok((written, now))
}

/// The trailer's checksum: over the header, the index and the index's offset.
fn index_sum(header: &[u8], index: &[u8], index_offset: u64) -> u64 {
    let mut h = Xxh3::new();
    h.update(header);
    h.update(index);
    h.update(&index_offset.to_le_bytes());
    h.digest()
}

/// Reads and checks the header, index and trailer of the snapshot `file` (node `node`'s
/// when given, for a region of `region_bytes` when given), without reading the pages.
pub fn read_index(
    file: &File,
    node: Option<u32>,
    region_bytes: Option<u64>,
) -> Result<Vec<IndexEntry>, SnapshotError> {
    let len = file.metadata()?.len();
    let mut header = [0u8; HEADER_BYTES];
    read_at(file, &mut header, 0)?;
    if &header[..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if let Some(expected) = node.filter(|&n| n != found) {
        return Err(SnapshotError::WrongNode { found, expected });
    }
    let page_size = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    if u64::from(page_size) != PAGE {
        return Err(SnapshotError::PageSize(page_size));
    }
    let count = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let least = count
        .checked_mul(8 + INDEX_ENTRY_BYTES)
        .and_then(|b| b.checked_add(HEADER_BYTES as u64 + TRAILER_BYTES));
    if least.is_none_or(|least| len < least) {
        return Err(SnapshotError::Truncated);
    }
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    read_at(file, &mut trailer, len - TRAILER_BYTES)?;
    let index_offset = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let stored = u64::from_le_bytes(trailer[8..].try_into().expect("8 bytes"));
    let index_bytes = count * INDEX_ENTRY_BYTES;
    if index_offset.checked_add(index_bytes + TRAILER_BYTES) != Some(len) {
        return Err(SnapshotError::Checksum);
    }
    let mut index = vec![0u8; index_bytes as usize];
    read_at(file, &mut index, index_offset)?;
    if index_sum(&header, &index, index_offset) != stored {
        return Err(SnapshotError::Checksum);
    }
    let entries = index
        .chunks_exact(INDEX_ENTRY_BYTES as usize)
        .map(|c| IndexEntry {
            record: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")),
            sum: u64::from_le_bytes(c[16..].try_into().expect("8 bytes")),
        })
        .collect::<Vec<_>>();
    for e in &entries {
        check_entry(e, index_offset, region_bytes)?;
    }
    Ok(entries)
}

/// An index entry must name a page of the region and bytes between header and index.
fn check_entry(
    e: &IndexEntry,
    index_offset: u64,
    region_bytes: Option<u64>,
) -> Result<(), SnapshotError> {
    if let Some(region_bytes) = region_bytes {
        let end = e
            .page()
            .checked_mul(PAGE)
            .and_then(|at| at.checked_add(PAGE));
        if end.is_none_or(|end| end > region_bytes) {
            return Err(SnapshotError::OutOfRegion {
                page: e.page(),
                region_bytes,
            });
        }
    }
    let inside = e.offset >= HEADER_BYTES as u64 + 8
        && e.offset
            .checked_add(PAGE)
            .is_some_and(|end| end <= index_offset);
    if !e.is_zero() && !inside {
        return Err(SnapshotError::Checksum);
    }
    Ok(())
}

/// Reads the page `entry` describes into `buf`, checking its record's page number and
/// its bytes' checksum against the index.
pub fn read_page(
    file: &File,
    entry: &IndexEntry,
    buf: &mut [u8; 8 + PAGE as usize],
) -> Result<(), SnapshotError> {
    read_at(file, buf, entry.offset - 8)?;
    let word = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if word != entry.record || xxh3_64(&buf[8..]) != entry.sum {
        return Err(SnapshotError::PageDamaged { page: entry.page() });
    }
    Ok(())
}

fn read_at(file: &File, buf: &mut [u8], at: u64) -> Result<(), SnapshotError> {
    file.read_exact_at(buf, at).map_err(truncated)
}

/// Where the newest version of a page lives in a chain of snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPage {
    /// The page number.
    pub page: u64,
    /// Which file of the chain holds it.
    pub file: u32,
    /// Its record, in that file's index.
    pub entry: IndexEntry,
}

/// A chain of snapshots (a base, then deltas), opened and indexed: for each page, the
/// newest version, found without reading any page.
#[derive(Debug)]
pub struct Chain {
    files: Vec<(PathBuf, File)>,
    /// Non-zero pages in their newest version, by page number.
    pages: Vec<ChainPage>,
}

impl Chain {
    /// Opens `paths` (in order) for node `node`'s region of `region_bytes`, checking each
    /// file's header and index; an error names the file.
    pub fn open(
        paths: &[PathBuf],
        node: u32,
        region_bytes: u64,
    ) -> Result<Chain, (PathBuf, SnapshotError)> {
        let mut all: Vec<ChainPage> = Vec::new();
        let mut files = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            let fail = |e| (path.clone(), e);
            let file = File::open(path).map_err(|e| fail(e.into()))?;
            let entries = read_index(&file, Some(node), Some(region_bytes)).map_err(fail)?;
            all.extend(entries.into_iter().map(|entry| ChainPage {
                page: entry.page(),
                file: i as u32,
                entry,
            }));
            files.push((path.clone(), file));
        }
        // Each file's index is in page order (as written), so this stable sort merges a
        // few sorted runs: no hashing, which would cost more than reading the indexes.
        if !all.is_sorted_by_key(|p| p.page) {
            all.sort_by_key(|p| (p.page, p.file));
        }
        let mut pages: Vec<ChainPage> = Vec::with_capacity(all.len());
        for p in all {
            match pages.last_mut() {
                Some(last) if last.page == p.page => *last = p,
                _ => pages.push(p),
            }
        }
        pages.retain(|p| !p.entry.is_zero());
        Ok(Chain { files, pages })
    }

    /// The pages to restore, by page number.
    pub fn pages(&self) -> &[ChainPage] {
        &self.pages
    }

    /// The checksums of the restored region's non-zero pages, as a snapshot would take
    /// them: the next snapshot saves only what changes after the restore.
    pub fn sums(&self) -> PageSums {
        self.pages.iter().map(|p| (p.page, p.entry.sum)).collect()
    }

    /// The file holding `page`.
    pub fn path_of(&self, page: &ChainPage) -> &Path {
        &self.files[page.file as usize].0
    }

    /// Reads `page`'s bytes (checked) into `buf[8..]`.
    pub fn read(
        &self,
        page: &ChainPage,
        buf: &mut [u8; 8 + PAGE as usize],
    ) -> Result<(), SnapshotError> {
        read_page(&self.files[page.file as usize].1, &page.entry, buf)
    }
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

    /// Restores `paths` into `fresh` eagerly (what the node does lazily); returns the
    /// number of pages restored.
    fn load_all(
        fresh: &Region,
        node: u32,
        paths: &[std::path::PathBuf],
    ) -> Result<usize, SnapshotError> {
        let chain = Chain::open(paths, node, fresh.len()).map_err(|(_, e)| e)?;
        let mut buf = [0u8; 8 + PAGE as usize];
        for p in chain.pages() {
            chain.read(p, &mut buf)?;
            let dest = fresh.ptr(p.page * PAGE, PAGE).unwrap();
            // SAFETY: a page inside the region, which nobody else uses.
            unsafe { std::ptr::copy_nonoverlapping(buf[8..].as_ptr(), dest, PAGE as usize) };
        }
        Ok(chain.pages().len())
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
        let (delta, now) = write(&region, 7, &sums, &delta_path).unwrap();
        assert_eq!((delta.pages, delta.zeroed), (2, 1));
        let fresh = Region::new(1 << 30).unwrap();
        let chain = vec![base_path.clone(), delta_path.clone()];
        // Page 5 became zero: only 3, 1000 and 20000 are left to restore.
        assert_eq!(load_all(&fresh, 7, &chain).unwrap(), 3);
        for page in [3, 1000, 5, 20000, 4] {
            assert_eq!(byte_at(&fresh, page), byte_at(&region, page), "page {page}");
        }
        // The chain's index gives the checksums a full scan would: no page is read.
        assert_eq!(Chain::open(&chain, 7, 1 << 30).unwrap().sums(), now);
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
        let one = [path.clone()];
        assert!(matches!(
            load_all(&fresh, 2, &one),
            Err(SnapshotError::WrongNode { .. })
        ));
        let small = Region::new(8192).unwrap();
        assert!(matches!(
            load_all(&small, 1, &one),
            Err(SnapshotError::OutOfRegion { page: 2, .. })
        ));
        // Damage to a page's bytes passes the cheap check and is found when the page is
        // loaded.
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 8 + 100] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let file = File::open(&path).unwrap();
        assert!(read_index(&file, Some(1), None).is_ok());
        assert!(matches!(
            load_all(&fresh, 1, &one),
            Err(SnapshotError::PageDamaged { page: 2 })
        ));
        // Damage to the header or the index is found by the cheap check.
        for at in [9, good.len() - TRAILER_BYTES as usize - 5, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 1;
            std::fs::write(&path, &flipped).unwrap();
            let e = load_all(&fresh, 1, &one).unwrap_err();
            assert!(
                matches!(e, SnapshotError::Checksum | SnapshotError::WrongNode { .. }),
                "byte {at}: {e}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(matches!(
            load_all(&fresh, 1, &one),
            Err(SnapshotError::Truncated | SnapshotError::Checksum)
        ));
        std::fs::write(&path, &good[..20]).unwrap();
        assert!(matches!(
            load_all(&fresh, 1, &one),
            Err(SnapshotError::Truncated)
        ));
        std::fs::write(&path, b"not a snapshot at all, really not").unwrap();
        assert!(matches!(
            load_all(&fresh, 1, &one),
            Err(SnapshotError::Magic)
        ));
        let _ = std::fs::remove_file(path);
    }
}
