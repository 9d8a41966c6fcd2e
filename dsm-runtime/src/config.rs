//! The runtime's one typed configuration, validated once and passed explicitly.
//!
//! Units are last in names (`cache_bytes_max`, `node_timeout_ms`). Later issues build it
//! from flags, `DSM_*` environment variables and profile files; every path ends in
//! [`RuntimeConfig::validate`].

pub mod job;

use crate::space::PAGE_BYTES;

/// Default base of the global range: 16 TiB, above where non-PIE programs and their
/// `brk` heap live.
pub const DEFAULT_SPACE_BASE: usize = 0x1000_0000_0000;
/// Highest address the global range may reach: below 0x5500_0000_0000, where the kernel
/// loads PIE executables and their heap, and far below shared libraries and default
/// mmaps (just under 128 TiB). Leaves 64 TiB above the default base.
pub const SPACE_END_MAX: usize = 0x5000_0000_0000;

/// How fault-handler threads wait for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandlerWait {
    /// Sleep in `poll(2)` until the kernel queues a fault: no CPU burned while idle.
    Block,
    /// Poll a non-blocking read, yielding the CPU between polls: no wake-up latency for
    /// the handler, at the price of one busy CPU per handler while the program runs.
    Spin,
}

/// Everything the runtime needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Fixed base address of the global range.
    pub space_base: usize,
    /// Size of the global range in bytes; `0` means the sum of the nodes' regions.
    pub space_bytes: u64,
    /// Global page number of this process's first page: placement maps page `p` of this
    /// range as global page `space_page_offset + p`, so processes of one job that use
    /// disjoint slices of the global space also use disjoint node memory.
    pub space_page_offset: u64,
    /// The job slot this process holds, whose pages are counted against the nodes'
    /// capacity as they are written home (`space::pool`); `None` for a runtime outside a
    /// job (tests, benchmarks), whose pages are not counted.
    pub pool_slot: Option<usize>,
    /// Most bytes of the global range resident locally at once.
    pub cache_bytes_max: u64,
    /// Background reclaim starts when free cache falls below this percentage.
    pub reclaim_start_free_pct: u8,
    /// Background reclaim stops once free cache reaches this percentage.
    pub reclaim_stop_free_pct: u8,
    /// Most pages written back in one batch.
    pub writeback_batch_pages: usize,
    /// Number of fault-handler threads.
    pub handler_threads: usize,
    /// How handler threads wait.
    pub handler_wait: HandlerWait,
    /// Most fault events read and served in one round.
    pub fault_batch_max: usize,
    /// Pages per placement chunk (interleaving granularity).
    pub placement_chunk_pages: u64,
    /// Any node operation slower than this fails, naming the node.
    pub node_timeout_ms: u64,
    /// CPU to pin handler threads to (`None`: let the scheduler decide).
    pub handler_cpu: Option<usize>,
    /// Without `handler_cpu`: a handler moves to the CPU of the thread that makes all its
    /// faults, so that a fault does not cross vCPUs (see `fault::follow`).
    pub handler_follows_faults: bool,
    /// Pages fetched per demand fault: the aligned block of this many pages around the
    /// faulting page (a power of two, 1 to [`FETCH_GRANULARITY_PAGES_MAX`]).
    pub fetch_granularity_pages: usize,
    /// Most pages the prefetch policy may request per fault (0 disables prefetch).
    pub prefetch_max_pages: usize,
    /// Prefetched pages are mapped ahead of use, write-protected, except one in this many
    /// (by page number) and the last of each batch, which stay staged as probes whose use
    /// traps and is counted (see `fault::map_ahead`); 0 or 1 = map none ahead, stage all.
    pub prefetch_probe_every: usize,
    /// Evicted pages recycled for mapped-ahead prefetched pages: at most this many wait
    /// between an eviction and the next prefetch, moved with `UFFDIO_MOVE` instead of
    /// being freed and allocated again (see `cache::spares`; 0 = off, at most
    /// [`RECYCLE_PAGES_MAX`]; off too on a kernel without `UFFDIO_MOVE`).
    pub recycle_pages: usize,
    /// Prefetch streams in whole 2 MiB regions: once a stream has come through a region,
    /// the next region the readahead reaches, with no page of it cached, is fetched into
    /// a huge page and moved into the range as one on the first fault in it (see
    /// `fault::regions`; off on a kernel without `UFFDIO_MOVE`).
    pub huge_regions: bool,
    /// On a write's zero-fill, zero-fill up to this many following untouched pages too,
    /// writable, in the same call (0 to [`ZERO_FILL_AHEAD_PAGES_MAX`]; 0 = off).
    pub zero_fill_ahead_pages: usize,
    /// Install a fetched page writable when it was dirty at its last eviction, sparing the
    /// write-protect fault of its next write (it is then written home when evicted again,
    /// written or not).
    pub fetch_writable_if_dirty_before: bool,
    /// Staging slots (pages prefetched or sampled, not yet mapped); 0 = a quarter of the
    /// cache, at most 16384.
    pub staging_pages: usize,
    /// Access sampling: clean pages parked per round to learn whether they are still used
    /// (0 = off; eviction then sees only faults).
    pub sample_pages: usize,
    /// Access sampling: time between rounds.
    pub sample_interval_ms: u64,
    /// How long the program's allocator keeps a freed span before giving it up (a
    /// discard: no write-back, zero-filled when reused); -1 = never. Read by the preload.
    pub purge_delay_ms: i64,
    /// How many places each page is kept at home (`--redundancy`); checked against the
    /// node count when the runtime starts.
    pub redundancy: crate::redundancy::Redundancy,
    /// The last this many nodes hold no pages until one stands in for a dead node
    /// (`--spare-nodes`, `redundancy::reprotect`).
    pub spare_nodes: usize,
    /// The compressed tier's share of the cache, percent: pages leaving the mapped cache
    /// are kept here lz4-compressed, counted at their compressed size, before they go
    /// home (0 = off; at most [`COMPRESS_SHARE_PCT_MAX`]).
    pub compress_share_pct: u8,
    /// A page is kept compressed only if it shrinks to at most this percent of its size
    /// (1 to 90); pages that do not go home.
    pub compress_keep_max_pct: u8,
}

/// Upper bound of [`RuntimeConfig::compress_share_pct`]: the rest stays mapped.
pub const COMPRESS_SHARE_PCT_MAX: u8 = 90;

/// Default of [`RuntimeConfig::purge_delay_ms`].
pub const PURGE_DELAY_MS_DEFAULT: i64 = 10;

/// Largest fetch granularity: 64 pages (256 KiB) per demand fault.
pub const FETCH_GRANULARITY_PAGES_MAX: usize = 64;
/// Upper bound of [`RuntimeConfig::zero_fill_ahead_pages`].
pub const ZERO_FILL_AHEAD_PAGES_MAX: usize = 63;
/// Upper bound of [`RuntimeConfig::recycle_pages`] (64 MiB of spare pages).
pub const RECYCLE_PAGES_MAX: usize = 16384;
/// Largest prefetch request per fault.
pub const PREFETCH_PAGES_MAX: usize = 1024;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            space_base: DEFAULT_SPACE_BASE,
            space_bytes: 0,
            space_page_offset: 0,
            pool_slot: None,
            cache_bytes_max: 256 << 20,
            reclaim_start_free_pct: 3,
            reclaim_stop_free_pct: 8,
            writeback_batch_pages: 64,
            handler_threads: 1,
            handler_wait: HandlerWait::Block,
            fault_batch_max: 64,
            placement_chunk_pages: 1,
            node_timeout_ms: 5000,
            handler_cpu: None,
            handler_follows_faults: true,
            fetch_granularity_pages: 1,
            prefetch_max_pages: 32,
            prefetch_probe_every: 16,
            recycle_pages: 0,
            huge_regions: true,
            zero_fill_ahead_pages: 15,
            fetch_writable_if_dirty_before: false,
            staging_pages: 0,
            sample_pages: 0,
            sample_interval_ms: 20,
            purge_delay_ms: PURGE_DELAY_MS_DEFAULT,
            redundancy: crate::redundancy::Redundancy::None,
            spare_nodes: 0,
            compress_share_pct: 0,
            compress_keep_max_pct: 50,
        }
    }
}

/// A configuration value that cannot work, with what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field} = {value}: {hint}")]
pub struct ConfigError {
    /// The offending setting.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// What would work.
    pub hint: String,
}

fn invalid(field: &'static str, value: impl ToString, hint: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        value: value.to_string(),
        hint: hint.into(),
    }
}

impl RuntimeConfig {
    /// Checks every setting on its own and against the others.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let page = PAGE_BYTES as u64;
        if self.space_base % PAGE_BYTES != 0 || self.space_base == 0 {
            return Err(invalid(
                "space_base",
                format!("{:#x}", self.space_base),
                "use a non-zero, page-aligned address",
            ));
        }
        let end = (self.space_base as u64).checked_add(self.space_bytes);
        if end.is_none_or(|e| e > SPACE_END_MAX as u64) {
            return Err(invalid(
                "space_bytes",
                self.space_bytes,
                format!("base + size must stay below {SPACE_END_MAX:#x}"),
            ));
        }
        if self.cache_bytes_max < 64 * page {
            return Err(invalid(
                "cache_bytes_max",
                self.cache_bytes_max,
                "the local cache needs at least 64 pages (256 KiB)",
            ));
        }
        if self.reclaim_start_free_pct >= self.reclaim_stop_free_pct
            || self.reclaim_stop_free_pct > 50
        {
            return Err(invalid(
                "reclaim_stop_free_pct",
                self.reclaim_stop_free_pct,
                "reclaim must stop above where it starts, and at most at 50% free",
            ));
        }
        if self.writeback_batch_pages == 0 || self.writeback_batch_pages > 1024 {
            return Err(invalid(
                "writeback_batch_pages",
                self.writeback_batch_pages,
                "use 1 to 1024",
            ));
        }
        if self.handler_threads == 0 || self.handler_threads > 64 {
            return Err(invalid(
                "handler_threads",
                self.handler_threads,
                "use 1 to 64",
            ));
        }
        if self.fault_batch_max == 0 || self.fault_batch_max > 1024 {
            return Err(invalid(
                "fault_batch_max",
                self.fault_batch_max,
                "use 1 to 1024",
            ));
        }
        if self.placement_chunk_pages == 0 {
            return Err(invalid("placement_chunk_pages", 0, "use at least 1"));
        }
        if !self.fetch_granularity_pages.is_power_of_two()
            || self.fetch_granularity_pages > FETCH_GRANULARITY_PAGES_MAX
        {
            return Err(invalid(
                "fetch_granularity_pages",
                self.fetch_granularity_pages,
                format!("use a power of two from 1 to {FETCH_GRANULARITY_PAGES_MAX}"),
            ));
        }
        if self.zero_fill_ahead_pages > ZERO_FILL_AHEAD_PAGES_MAX {
            return Err(invalid(
                "zero_fill_ahead_pages",
                self.zero_fill_ahead_pages,
                format!("use 0 to {ZERO_FILL_AHEAD_PAGES_MAX}"),
            ));
        }
        if self.recycle_pages > RECYCLE_PAGES_MAX {
            return Err(invalid(
                "recycle_pages",
                self.recycle_pages,
                format!("use 0 (off) to {RECYCLE_PAGES_MAX}"),
            ));
        }
        if self.prefetch_max_pages > PREFETCH_PAGES_MAX {
            return Err(invalid(
                "prefetch_max_pages",
                self.prefetch_max_pages,
                format!("use 0 (no prefetch) to {PREFETCH_PAGES_MAX}"),
            ));
        }
        if self.staging_pages > self.cache_pages() {
            return Err(invalid(
                "staging_pages",
                self.staging_pages,
                "staged pages count against the cache: use at most the cache size",
            ));
        }
        if self.sample_pages > 4096 || (self.sample_pages > 0 && self.sample_interval_ms == 0) {
            return Err(invalid(
                "sample_pages",
                self.sample_pages,
                "use 0 (off) to 4096 pages per round, with a positive sample_interval_ms",
            ));
        }
        if self.compress_share_pct > COMPRESS_SHARE_PCT_MAX {
            return Err(invalid(
                "compress_share_pct",
                self.compress_share_pct,
                format!("use 0 (off) to {COMPRESS_SHARE_PCT_MAX} percent of the cache"),
            ));
        }
        if !(1..=90).contains(&self.compress_keep_max_pct) {
            return Err(invalid(
                "compress_keep_max_pct",
                self.compress_keep_max_pct,
                "use 1 to 90 (percent of a page a kept copy may take)",
            ));
        }
        if self.node_timeout_ms == 0 {
            return Err(invalid("node_timeout_ms", 0, "use a positive timeout"));
        }
        Ok(())
    }

    /// Cache capacity in pages.
    pub fn cache_pages(&self) -> usize {
        (self.cache_bytes_max / PAGE_BYTES as u64) as usize
    }

    /// Staging runs for whole regions: with `huge_regions` on and a cache of at least 8
    /// regions (16 MiB), three (one region being used, two fetched ahead); else none.
    pub fn region_runs(&self) -> usize {
        const REGION_PAGES: usize = crate::cache::page_table::REGION_PAGES as usize;
        if self.huge_regions && self.cache_pages() >= 8 * REGION_PAGES {
            3
        } else {
            0
        }
    }

    /// Staging slots to allocate.
    pub fn staging_slots(&self) -> usize {
        if self.staging_pages == 0 {
            (self.cache_pages() / 4).clamp(1, 16384)
        } else {
            self.staging_pages
        }
    }
}

/// Parses a size such as `4096`, `64K`, `64M`, `8G`, `1T` (binary units, optional `B`/`iB`).
/// A percentage (`50%`) is resolved against `percent_of` when given.
pub fn parse_size(text: &str, percent_of: Option<u64>) -> Result<u64, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let Some(total) = percent_of else {
            return Err(format!("{text:?}: a percentage is not allowed here"));
        };
        let pct: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: not a percentage"))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(format!("{text:?}: percentage must be in (0, 100]"));
        }
        return Ok((total as f64 * pct / 100.0) as u64);
    }
    let upper = t.to_ascii_uppercase();
    let body = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        Some('P') => (&body[..body.len() - 1], 50),
        _ => (body, 0),
    };
    let hint = || format!("{text:?}: expected a size like 4096, 64M, 8G or 1T");
    let n: u64 = digits.trim().parse().map_err(|_| hint())?;
    n.checked_mul(1u64 << shift).ok_or_else(hint)
}

/// Total physical memory of this machine, in bytes.
pub fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages.max(0) as u64) * (size.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_percentages() {
        assert_eq!(parse_size("4096", None), Ok(4096));
        assert_eq!(parse_size("64M", None), Ok(64 << 20));
        assert_eq!(parse_size("8g", None), Ok(8 << 30));
        assert_eq!(parse_size("1TiB", None), Ok(1 << 40));
        assert_eq!(parse_size("2KB", None), Ok(2048));
        assert_eq!(parse_size("50%", Some(1000)), Ok(500));
        assert!(parse_size("50%", None).is_err());
        assert!(parse_size("0%", Some(10)).is_err());
        assert!(parse_size("lots", None).is_err());
        assert!(parse_size("99999999999T", None).is_err());
        assert!(parse_size("-1G", None).is_err());
    }

    #[test]
    fn default_config_is_valid_and_bad_values_name_their_field() {
        RuntimeConfig::default().validate().unwrap();
        let c = RuntimeConfig {
            cache_bytes_max: 4096,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "cache_bytes_max");
        let c = RuntimeConfig {
            space_bytes: 1 << 50,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "space_bytes");
        let c = RuntimeConfig {
            fetch_granularity_pages: 3,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "fetch_granularity_pages");
        let c = RuntimeConfig {
            prefetch_max_pages: 5000,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "prefetch_max_pages");
    }
}
