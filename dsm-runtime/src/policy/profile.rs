//! Profiles: named, validated TOML files that select and parameterise the policies.
//!
//! The shipped profiles (`profiles/*.toml` at the repository root) are compiled in, so
//! `dsmrun --profile NAME` works from any directory; anything containing a `/` or ending
//! in `.toml` is read as a file. Every key is optional and defaults to the `default`
//! profile's value. Unknown keys, wrong types and impossible values are rejected with
//! the file, the line and a hint. `docs/profiles.md` documents every key.

use crate::config::{
    RuntimeConfig, FETCH_GRANULARITY_PAGES_MAX, PREFETCH_PAGES_MAX, RECYCLE_PAGES_MAX,
    ZERO_FILL_AHEAD_PAGES_MAX,
};
use crate::policy::eviction::{Clock, EvictionPolicy, Fifo, Heat, TwoQ};
use crate::policy::placement::{Blocked, FirstTouch, Interleaved, Placement, PlacementError};
use crate::policy::prefetch::{Leap, NoPrefetch, PrefetchPolicy, Readahead, Stride};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The shipped profiles, name and text, in the order `dsmrun profiles` lists them.
const SHIPPED: &[(&str, &str)] = &[
    ("default", include_str!("../../../profiles/default.toml")),
    (
        "sequential",
        include_str!("../../../profiles/sequential.toml"),
    ),
    ("random", include_str!("../../../profiles/random.toml")),
    ("strided", include_str!("../../../profiles/strided.toml")),
    ("loop", include_str!("../../../profiles/loop.toml")),
    ("velvet", include_str!("../../../profiles/velvet.toml")),
];

/// Where the profile docs live, for hints.
const DOCS: &str = "docs/profiles.md";

/// Which eviction policy, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictionSpec {
    /// First in, first out.
    Fifo,
    /// Second chance.
    Clock,
    /// Oldest first, but pages of recently used address regions last.
    Heat,
    /// 2Q with its queue shares.
    TwoQ {
        /// `A1in`'s share of the cache, percent.
        a1in_pct: u8,
        /// Ghost queue length, percent of the cache.
        a1out_pct: u16,
    },
}

/// Which prefetch policy, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchSpec {
    /// No prefetch.
    None,
    /// Adaptive sequential readahead.
    Readahead {
        /// First window of a stream.
        window_initial_pages: usize,
        /// Largest window.
        max_pages: usize,
    },
    /// Constant stride.
    Stride {
        /// Strides prefetched ahead.
        max_pages: usize,
    },
    /// Leap's majority trend.
    Leap {
        /// Fault deltas kept for the vote.
        history_deltas: usize,
        /// First prefetch window.
        window_initial_pages: usize,
        /// Largest prefetch window.
        max_pages: usize,
    },
}

/// Which placement, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementSpec {
    /// Round-robin chunks.
    Interleaved {
        /// Pages per chunk.
        chunk_pages: u64,
    },
    /// One contiguous range per node.
    Blocked,
    /// Home assigned at first write-back, node 0 first (pooled mode only).
    FirstTouch,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Name: the shipped name, or the file's stem.
    pub name: String,
    /// Where it came from: `shipped` or the file's path.
    pub origin: String,
    /// One line saying what it is for.
    pub description: String,
    /// Eviction.
    pub eviction: EvictionSpec,
    /// Prefetch.
    pub prefetch: PrefetchSpec,
    /// Placement.
    pub placement: PlacementSpec,
    /// Pages fetched per demand fault (power of two).
    pub fetch_granularity_pages: usize,
    /// Untouched pages zero-filled after a write's zero-fill (0 = off).
    pub zero_fill_ahead_pages: usize,
    /// Fetch pages that were dirty at their last eviction writable.
    pub fetch_writable_if_dirty_before: bool,
    /// Prefetched pages mapped ahead of use but one in this many, staged as probes
    /// (0 or 1: all staged).
    pub prefetch_probe_every: usize,
    /// Evicted pages kept to be recycled for mapped-ahead pages (0: off).
    pub recycle_pages: usize,
    /// Streams prefetched in whole 2 MiB regions, each moved in as one huge page.
    pub huge_regions: bool,
    /// Most pages written back per batch.
    pub writeback_batch_pages: usize,
    /// Background reclaim starts below this much free cache, percent.
    pub reclaim_start_free_pct: u8,
    /// Background reclaim stops at this much free cache, percent.
    pub reclaim_stop_free_pct: u8,
    /// Access sampling: clean pages parked per round (0 = off).
    pub sample_pages: usize,
    /// Access sampling: milliseconds between rounds.
    pub sample_interval_ms: u64,
    /// Milliseconds before the allocator gives a freed span up (-1: never).
    pub purge_delay_ms: i64,
    /// How many places each page is kept at home (`redundancy = "replicate:2"`); `None`
    /// leaves it to `--redundancy` (default `none`). A job-wide setting: `dsmrun` reads it
    /// to size the nodes, and `--redundancy` overrides it.
    pub redundancy: Option<crate::redundancy::Redundancy>,
    /// The compressed tier's share of the cache, percent (0 = off).
    pub compress_share_pct: u8,
    /// A page stays compressed only if it shrinks to this percent of its size or less.
    pub compress_keep_max_pct: u8,
}

/// What kind of mistake a profile file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// Not TOML.
    Syntax,
    /// A key this version does not know.
    UnknownKey,
    /// A value of the wrong type.
    WrongType,
    /// A value of the right type that cannot work.
    Value,
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a shipped name nor a path.
    #[error("unknown profile {name:?}: the shipped profiles are {known}; to load a file, give a path containing '/' or ending in .toml")]
    Unknown {
        /// What was asked for.
        name: String,
        /// The shipped names, comma-separated.
        known: String,
    },
    /// The file could not be read.
    #[error("{}: cannot read profile: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is wrong somewhere.
    #[error("{file}:{line}:{column}: {message}\n  hint: {hint}")]
    Invalid {
        /// The file (`shipped:NAME` for a compiled-in profile).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What kind of mistake.
        kind: InvalidKind,
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
}

impl Profile {
    /// Loads a shipped profile by name, or a file by path (anything with a `/` or a
    /// `.toml` suffix).
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        if let Some((name, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return Profile::parse(text, name, "shipped");
        }
        if !(name_or_path.contains('/') || name_or_path.ends_with(".toml")) {
            return Err(ProfileError::Unknown {
                name: name_or_path.to_owned(),
                known: SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.file_stem().map_or_else(
            || name_or_path.to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        Profile::parse(&text, &name, name_or_path)
    }

    /// The shipped profiles: name and one-line description.
    pub fn list() -> Vec<(&'static str, String)> {
        SHIPPED
            .iter()
            .map(|(name, text)| {
                let description = match Profile::parse(text, name, "shipped") {
                    Ok(p) => p.description,
                    // Tests parse every shipped profile; this is for a broken build only.
                    Err(e) => format!("(does not load: {e})"),
                };
                (*name, description)
            })
            .collect()
    }

    /// Parses profile `text`; `origin` names the file in error messages (`shipped`
    /// becomes `shipped:NAME`).
    pub fn parse(text: &str, name: &str, origin: &str) -> Result<Profile, ProfileError> {
        let file = if origin == "shipped" {
            format!("shipped:{name}")
        } else {
            origin.to_owned()
        };
        let ctx = Ctx { text, file: &file };
        let raw: RawProfile = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
        raw.validate(&ctx, name, origin)
    }

    /// Writes the profile's runtime settings into `config` (placement chunk, fetch
    /// granularity, prefetch limit, write-back batch, reclaim watermarks). Values were
    /// validated against the same limits as [`RuntimeConfig::validate`].
    pub fn apply(&self, config: &mut RuntimeConfig) {
        if let PlacementSpec::Interleaved { chunk_pages } = self.placement {
            config.placement_chunk_pages = chunk_pages;
        }
        config.fetch_granularity_pages = self.fetch_granularity_pages;
        config.zero_fill_ahead_pages = self.zero_fill_ahead_pages;
        config.fetch_writable_if_dirty_before = self.fetch_writable_if_dirty_before;
        config.prefetch_probe_every = self.prefetch_probe_every;
        config.recycle_pages = self.recycle_pages;
        config.huge_regions = self.huge_regions;
        config.prefetch_max_pages = self.prefetch_max_pages();
        config.writeback_batch_pages = self.writeback_batch_pages;
        config.reclaim_start_free_pct = self.reclaim_start_free_pct;
        config.reclaim_stop_free_pct = self.reclaim_stop_free_pct;
        config.sample_pages = self.sample_pages;
        config.sample_interval_ms = self.sample_interval_ms;
        config.purge_delay_ms = self.purge_delay_ms;
        config.compress_share_pct = self.compress_share_pct;
        config.compress_keep_max_pct = self.compress_keep_max_pct;
    }

    /// Most pages the prefetch policy asks for per fault (0 for none).
    pub fn prefetch_max_pages(&self) -> usize {
        match self.prefetch {
            PrefetchSpec::None => 0,
            PrefetchSpec::Readahead { max_pages, .. }
            | PrefetchSpec::Stride { max_pages }
            | PrefetchSpec::Leap { max_pages, .. } => max_pages,
        }
    }

    /// A fresh eviction policy for a cache of `capacity_pages`.
    pub fn eviction(&self, capacity_pages: usize) -> Box<dyn EvictionPolicy> {
        match self.eviction {
            EvictionSpec::Fifo => Box::new(Fifo::with_capacity(capacity_pages)),
            EvictionSpec::Clock => Box::new(Clock::with_capacity(capacity_pages)),
            EvictionSpec::Heat => Box::new(Heat::with_capacity(capacity_pages)),
            EvictionSpec::TwoQ {
                a1in_pct,
                a1out_pct,
            } => Box::new(TwoQ::new(capacity_pages, a1in_pct, a1out_pct)),
        }
    }

    /// A fresh prefetch policy.
    pub fn prefetch(&self) -> Box<dyn PrefetchPolicy> {
        match self.prefetch {
            PrefetchSpec::None => Box::new(NoPrefetch),
            PrefetchSpec::Readahead {
                window_initial_pages,
                max_pages,
            } => Box::new(
                Readahead::new(window_initial_pages, max_pages)
                    .with_fetch_granularity(self.fetch_granularity_pages),
            ),
            PrefetchSpec::Stride { max_pages } => Box::new(Stride::new(max_pages)),
            PrefetchSpec::Leap {
                history_deltas,
                window_initial_pages,
                max_pages,
            } => Box::new(Leap::new(history_deltas, window_initial_pages, max_pages)),
        }
    }

    /// The placement for `nodes` regions of `node_bytes` holding `space_pages` pages.
    pub fn placement(
        &self,
        nodes: usize,
        node_bytes: u64,
        space_pages: u64,
    ) -> Result<Box<dyn Placement>, PlacementError> {
        Ok(match self.placement {
            PlacementSpec::Interleaved { chunk_pages } => Box::new(Interleaved::new(
                nodes,
                node_bytes,
                chunk_pages,
                space_pages,
            )?),
            PlacementSpec::Blocked => Box::new(Blocked::new(nodes, node_bytes, space_pages)?),
            PlacementSpec::FirstTouch => Box::new(FirstTouch::new(nodes, node_bytes, space_pages)?),
        })
    }

    /// One line naming the chosen policies, for logs and the tuner's table.
    pub fn summary(&self) -> String {
        let eviction = match self.eviction {
            EvictionSpec::Fifo => "fifo".to_owned(),
            EvictionSpec::Clock => "clock".to_owned(),
            EvictionSpec::Heat => "heat".to_owned(),
            EvictionSpec::TwoQ {
                a1in_pct,
                a1out_pct,
            } => format!("2q({a1in_pct}%/{a1out_pct}%)"),
        };
        let prefetch = match self.prefetch {
            PrefetchSpec::None => "none".to_owned(),
            PrefetchSpec::Readahead { max_pages, .. } => format!("readahead({max_pages})"),
            PrefetchSpec::Stride { max_pages } => format!("stride({max_pages})"),
            PrefetchSpec::Leap { max_pages, .. } => format!("leap({max_pages})"),
        };
        format!(
            "evict {eviction}, prefetch {prefetch}, fetch {} page(s)",
            self.fetch_granularity_pages
        )
    }
}

// ---- Parsing -------------------------------------------------------------------------

/// The file as written. Integers are read as `i64` so that a negative or huge number
/// gets a range hint from us rather than serde's "expected u64".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: Option<Spanned<String>>,
    redundancy: Option<Spanned<String>>,
    eviction: Option<RawEviction>,
    prefetch: Option<RawPrefetch>,
    placement: Option<RawPlacement>,
    fetch: Option<RawFetch>,
    writeback: Option<RawWriteback>,
    cache: Option<RawCache>,
    compress: Option<RawCompress>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum CompressName {
    None,
    Lz4,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCompress {
    policy: Option<Spanned<CompressName>>,
    share_pct: Option<Spanned<i64>>,
    keep_max_pct: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum EvictionName {
    Fifo,
    Clock,
    Heat,
    #[serde(rename = "2q")]
    TwoQ,
}

impl EvictionName {
    fn as_str(self) -> &'static str {
        match self {
            EvictionName::Fifo => "fifo",
            EvictionName::Clock => "clock",
            EvictionName::Heat => "heat",
            EvictionName::TwoQ => "2q",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEviction {
    policy: Option<Spanned<EvictionName>>,
    a1in_pct: Option<Spanned<i64>>,
    a1out_pct: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum PrefetchName {
    None,
    Readahead,
    Stride,
    Leap,
}

impl PrefetchName {
    fn as_str(self) -> &'static str {
        match self {
            PrefetchName::None => "none",
            PrefetchName::Readahead => "readahead",
            PrefetchName::Stride => "stride",
            PrefetchName::Leap => "leap",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrefetch {
    policy: Option<Spanned<PrefetchName>>,
    max_pages: Option<Spanned<i64>>,
    window_initial_pages: Option<Spanned<i64>>,
    history_deltas: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum PlacementName {
    Interleaved,
    Blocked,
    FirstTouch,
}

impl PlacementName {
    fn as_str(self) -> &'static str {
        match self {
            PlacementName::Interleaved => "interleaved",
            PlacementName::Blocked => "blocked",
            PlacementName::FirstTouch => "first-touch",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    policy: Option<Spanned<PlacementName>>,
    chunk_pages: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    granularity_pages: Option<Spanned<i64>>,
    zero_fill_ahead_pages: Option<Spanned<i64>>,
    writable_if_dirty_before: Option<bool>,
    map_ahead_probe_every: Option<Spanned<i64>>,
    recycle_pages: Option<Spanned<i64>>,
    huge_regions: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWriteback {
    batch_pages: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    reclaim_start_free_pct: Option<Spanned<i64>>,
    reclaim_stop_free_pct: Option<Spanned<i64>>,
    sample_pages: Option<Spanned<i64>>,
    sample_interval_ms: Option<Spanned<i64>>,
    purge_delay_ms: Option<Spanned<i64>>,
}

/// Defaults of prefetcher keys left out that the runtime's configuration does not hold.
const WINDOW_INITIAL_PAGES_DEFAULT: i64 = 4;
const HISTORY_DELTAS_DEFAULT: i64 = 32;
const HISTORY_DELTAS_MAX: i64 = 1024;

/// The text being parsed, for turning byte spans into lines.
struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        kind: InvalidKind,
        message: String,
        hint: String,
    ) -> ProfileError {
        let start = span.map_or(0, |s| s.start.min(self.text.len()));
        let before = &self.text[..floor_char_boundary(self.text, start)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ProfileError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            kind,
            message,
            hint,
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ProfileError {
        let message = e.message().trim().to_owned();
        let (kind, hint) = if message.starts_with("unknown field") {
            (
                InvalidKind::UnknownKey,
                format!("remove the key or fix its spelling; the keys allowed here are listed above and in {DOCS}"),
            )
        } else if message.starts_with("unknown variant") {
            (
                InvalidKind::Value,
                "use one of the names listed above".to_owned(),
            )
        } else if message.starts_with("invalid type") {
            (
                InvalidKind::WrongType,
                format!("numbers are written bare (64), names quoted (\"clock\"), sections as [tables]; see {DOCS}"),
            )
        } else {
            (
                InvalidKind::Syntax,
                "this is not valid TOML: check quotes, brackets and `key = value` syntax"
                    .to_owned(),
            )
        };
        self.error(e.span(), kind, message, hint)
    }

    fn value_error(
        &self,
        span: Range<usize>,
        message: String,
        hint: impl Into<String>,
    ) -> ProfileError {
        self.error(Some(span), InvalidKind::Value, message, hint.into())
    }

    /// `v` (or `default` when absent) within `range`.
    fn int(
        &self,
        key: &str,
        v: &Option<Spanned<i64>>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ProfileError> {
        let Some(v) = v else {
            return Ok(default);
        };
        let n = *v.get_ref();
        if !range.contains(&n) {
            return Err(self.value_error(
                v.span(),
                format!("{key} = {n} is out of range"),
                format!("use {} to {}", range.start(), range.end()),
            ));
        }
        Ok(n)
    }

    /// Rejects a parameter that the chosen policy does not take.
    fn only_for(
        &self,
        key: &str,
        v: &Option<Spanned<i64>>,
        (section, chosen): (&str, &str),
        applies: bool,
        policies: &str,
    ) -> Result<(), ProfileError> {
        match v {
            Some(v) if !applies => Err(self.value_error(
                v.span(),
                format!("{key} does not apply to {section} policy \"{chosen}\""),
                format!("remove it, or choose {section} policy {policies}"),
            )),
            _ => Ok(()),
        }
    }
}

/// The largest char boundary at or below `i` (toml's spans are on boundaries anyway,
/// but a bad one must not panic).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    (0..=i.min(s.len()))
        .rev()
        .find(|&b| s.is_char_boundary(b))
        .unwrap_or(0)
}

impl RawProfile {
    fn validate(self, ctx: &Ctx<'_>, name: &str, origin: &str) -> Result<Profile, ProfileError> {
        let description = match self.description {
            Some(d) if d.get_ref().trim().contains('\n') => {
                return Err(ctx.value_error(
                    d.span(),
                    "description must be one line".to_owned(),
                    "`dsmrun profiles` shows it in a table: keep it short",
                ));
            }
            Some(d) => d.into_inner().trim().to_owned(),
            None => String::new(),
        };
        let eviction = validate_eviction(ctx, self.eviction.unwrap_or_default())?;
        let prefetch = validate_prefetch(ctx, self.prefetch.unwrap_or_default())?;
        let placement = validate_placement(ctx, self.placement.unwrap_or_default())?;
        // Keys left out take the runtime's own defaults.
        let d = RuntimeConfig::default();
        let fetch = self.fetch.unwrap_or_default();
        let granularity = ctx.int(
            "granularity_pages",
            &fetch.granularity_pages,
            d.fetch_granularity_pages as i64,
            1..=FETCH_GRANULARITY_PAGES_MAX as i64,
        )?;
        if let (Some(v), false) = (
            &fetch.granularity_pages,
            (granularity as u64).is_power_of_two(),
        ) {
            return Err(ctx.value_error(
                v.span(),
                format!("granularity_pages = {granularity} is not a power of two"),
                "use 1, 2, 4, 8, 16, 32 or 64: a fault fetches the aligned block around it",
            ));
        }
        let zero_ahead = ctx.int(
            "zero_fill_ahead_pages",
            &fetch.zero_fill_ahead_pages,
            d.zero_fill_ahead_pages as i64,
            0..=ZERO_FILL_AHEAD_PAGES_MAX as i64,
        )?;
        let writable_if_dirty_before = fetch
            .writable_if_dirty_before
            .unwrap_or(d.fetch_writable_if_dirty_before);
        let probe_every = ctx.int(
            "map_ahead_probe_every",
            &fetch.map_ahead_probe_every,
            d.prefetch_probe_every as i64,
            0..=1024,
        )?;
        let recycle = ctx.int(
            "recycle_pages",
            &fetch.recycle_pages,
            d.recycle_pages as i64,
            0..=RECYCLE_PAGES_MAX as i64,
        )?;
        let huge_regions = fetch.huge_regions.unwrap_or(d.huge_regions);
        let writeback = self.writeback.unwrap_or_default();
        let batch = ctx.int(
            "batch_pages",
            &writeback.batch_pages,
            d.writeback_batch_pages as i64,
            1..=1024,
        )?;
        let cache = self.cache.unwrap_or_default();
        let start = ctx.int(
            "reclaim_start_free_pct",
            &cache.reclaim_start_free_pct,
            i64::from(d.reclaim_start_free_pct),
            0..=49,
        )?;
        let stop = ctx.int(
            "reclaim_stop_free_pct",
            &cache.reclaim_stop_free_pct,
            i64::from(d.reclaim_stop_free_pct),
            1..=50,
        )?;
        let sample_pages = ctx.int(
            "sample_pages",
            &cache.sample_pages,
            d.sample_pages as i64,
            0..=4096,
        )?;
        let sample_interval_ms = ctx.int(
            "sample_interval_ms",
            &cache.sample_interval_ms,
            d.sample_interval_ms as i64,
            1..=60_000,
        )?;
        let purge_delay_ms = ctx.int(
            "purge_delay_ms",
            &cache.purge_delay_ms,
            d.purge_delay_ms,
            -1..=3_600_000,
        )?;
        let (compress_share_pct, compress_keep_max_pct) =
            validate_compress(ctx, self.compress.unwrap_or_default(), &d)?;
        if start >= stop {
            let span = cache
                .reclaim_stop_free_pct
                .as_ref()
                .or(cache.reclaim_start_free_pct.as_ref())
                .map(|v| v.span());
            return Err(ctx.error(
                span,
                InvalidKind::Value,
                format!("reclaim_start_free_pct = {start} is not below reclaim_stop_free_pct = {stop}"),
                "reclaim starts when free cache falls below the start mark and stops at the stop mark, so start < stop (e.g. 3 and 8)".to_owned(),
            ));
        }
        let redundancy = match &self.redundancy {
            None => None,
            Some(r) => Some(r.get_ref().parse().map_err(|e: String| {
                ctx.value_error(
                    r.span(),
                    format!("redundancy = {:?} is not a redundancy setting", r.get_ref()),
                    e,
                )
            })?),
        };
        Ok(Profile {
            name: name.to_owned(),
            origin: origin.to_owned(),
            description,
            eviction,
            prefetch,
            placement,
            fetch_granularity_pages: granularity as usize,
            zero_fill_ahead_pages: zero_ahead as usize,
            fetch_writable_if_dirty_before: writable_if_dirty_before,
            prefetch_probe_every: probe_every as usize,
            recycle_pages: recycle as usize,
            huge_regions,
            writeback_batch_pages: batch as usize,
            reclaim_start_free_pct: start as u8,
            reclaim_stop_free_pct: stop as u8,
            sample_pages: sample_pages as usize,
            sample_interval_ms: sample_interval_ms as u64,
            purge_delay_ms,
            redundancy,
            compress_share_pct,
            compress_keep_max_pct,
        })
    }
}

/// `[compress]`: `policy = "lz4"` turns the tier on (taking `share_pct` of the cache,
/// keeping pages that shrink to `keep_max_pct` or less), `"none"` off. Left out, the
/// runtime's default holds. Returns (share, keep) percentages.
fn validate_compress(
    ctx: &Ctx<'_>,
    c: RawCompress,
    d: &RuntimeConfig,
) -> Result<(u8, u8), ProfileError> {
    let on = match &c.policy {
        Some(p) => *p.get_ref() == CompressName::Lz4,
        None => d.compress_share_pct > 0,
    };
    let chosen = if on { "lz4" } else { "none" };
    let at = ("compress", chosen);
    ctx.only_for("share_pct", &c.share_pct, at, on, "\"lz4\"")?;
    ctx.only_for("keep_max_pct", &c.keep_max_pct, at, on, "\"lz4\"")?;
    if !on {
        return Ok((0, d.compress_keep_max_pct));
    }
    let default_share = if d.compress_share_pct > 0 {
        d.compress_share_pct
    } else {
        COMPRESS_SHARE_PCT_DEFAULT
    };
    let share = ctx.int(
        "share_pct",
        &c.share_pct,
        i64::from(default_share),
        1..=i64::from(crate::config::COMPRESS_SHARE_PCT_MAX),
    )?;
    let keep = ctx.int(
        "keep_max_pct",
        &c.keep_max_pct,
        i64::from(d.compress_keep_max_pct),
        1..=90,
    )?;
    Ok((share as u8, keep as u8))
}

/// The tier's share of the cache when a profile turns it on without saying how much.
const COMPRESS_SHARE_PCT_DEFAULT: u8 = 50;

fn validate_eviction(ctx: &Ctx<'_>, e: RawEviction) -> Result<EvictionSpec, ProfileError> {
    let policy = e.policy.map_or(EvictionName::Heat, |p| *p.get_ref());
    let two_q = policy == EvictionName::TwoQ;
    let at = ("eviction", policy.as_str());
    ctx.only_for("a1in_pct", &e.a1in_pct, at, two_q, "\"2q\"")?;
    ctx.only_for("a1out_pct", &e.a1out_pct, at, two_q, "\"2q\"")?;
    Ok(match policy {
        EvictionName::Fifo => EvictionSpec::Fifo,
        EvictionName::Clock => EvictionSpec::Clock,
        EvictionName::Heat => EvictionSpec::Heat,
        EvictionName::TwoQ => EvictionSpec::TwoQ {
            a1in_pct: ctx.int("a1in_pct", &e.a1in_pct, 25, 1..=90)? as u8,
            a1out_pct: ctx.int("a1out_pct", &e.a1out_pct, 50, 1..=400)? as u16,
        },
    })
}

fn validate_prefetch(ctx: &Ctx<'_>, p: RawPrefetch) -> Result<PrefetchSpec, ProfileError> {
    use PrefetchName as N;
    let policy = p.policy.map_or(N::Readahead, |p| *p.get_ref());
    let at = ("prefetch", policy.as_str());
    ctx.only_for(
        "max_pages",
        &p.max_pages,
        at,
        policy != N::None,
        "\"readahead\", \"stride\" or \"leap\"",
    )?;
    let windowed = matches!(policy, N::Readahead | N::Leap);
    ctx.only_for(
        "window_initial_pages",
        &p.window_initial_pages,
        at,
        windowed,
        "\"readahead\" or \"leap\"",
    )?;
    ctx.only_for(
        "history_deltas",
        &p.history_deltas,
        at,
        policy == N::Leap,
        "\"leap\"",
    )?;
    let max = ctx.int(
        "max_pages",
        &p.max_pages,
        RuntimeConfig::default().prefetch_max_pages as i64,
        1..=PREFETCH_PAGES_MAX as i64,
    )?;
    let initial = ctx.int(
        "window_initial_pages",
        &p.window_initial_pages,
        WINDOW_INITIAL_PAGES_DEFAULT.min(max),
        1..=PREFETCH_PAGES_MAX as i64,
    )?;
    if let (Some(v), true) = (&p.window_initial_pages, initial > max) {
        return Err(ctx.value_error(
            v.span(),
            format!("window_initial_pages = {initial} is above max_pages = {max}"),
            "the window starts at window_initial_pages and grows to max_pages: lower it or raise max_pages",
        ));
    }
    let history = ctx.int(
        "history_deltas",
        &p.history_deltas,
        HISTORY_DELTAS_DEFAULT,
        4..=HISTORY_DELTAS_MAX,
    )?;
    let (max, initial, history) = (max as usize, initial as usize, history as usize);
    Ok(match policy {
        N::None => PrefetchSpec::None,
        N::Readahead => PrefetchSpec::Readahead {
            window_initial_pages: initial,
            max_pages: max,
        },
        N::Stride => PrefetchSpec::Stride { max_pages: max },
        N::Leap => PrefetchSpec::Leap {
            history_deltas: history,
            window_initial_pages: initial,
            max_pages: max,
        },
    })
}

fn validate_placement(ctx: &Ctx<'_>, p: RawPlacement) -> Result<PlacementSpec, ProfileError> {
    let policy = p
        .policy
        .map_or(PlacementName::Interleaved, |p| *p.get_ref());
    let interleaved = policy == PlacementName::Interleaved;
    ctx.only_for(
        "chunk_pages",
        &p.chunk_pages,
        ("placement", policy.as_str()),
        interleaved,
        "\"interleaved\"",
    )?;
    Ok(match policy {
        PlacementName::Interleaved => PlacementSpec::Interleaved {
            chunk_pages: ctx.int("chunk_pages", &p.chunk_pages, 1, 1..=1 << 20)? as u64,
        },
        PlacementName::Blocked => PlacementSpec::Blocked,
        PlacementName::FirstTouch => PlacementSpec::FirstTouch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressed_tier_is_a_validated_knob() {
        let p = Profile::parse("[compress]\npolicy = \"lz4\"\n", "t", "t.toml").unwrap();
        assert_eq!((p.compress_share_pct, p.compress_keep_max_pct), (50, 50));
        let p = Profile::parse(
            "[compress]\npolicy = \"lz4\"\nshare_pct = 30\nkeep_max_pct = 40\n",
            "t",
            "t.toml",
        )
        .unwrap();
        let mut config = RuntimeConfig::default();
        p.apply(&mut config);
        assert_eq!(
            (config.compress_share_pct, config.compress_keep_max_pct),
            (30, 40)
        );
        config.validate().unwrap();
        let off = Profile::parse("[compress]\npolicy = \"none\"\n", "t", "t.toml").unwrap();
        assert_eq!(off.compress_share_pct, 0);
        let (kind, line, msg) = invalid("[compress]\npolicy = \"lz4\"\nshare_pct = 95\n");
        assert_eq!((kind, line), (InvalidKind::Value, 3), "{msg}");
        let (kind, _, msg) = invalid("[compress]\npolicy = \"none\"\nkeep_max_pct = 40\n");
        assert_eq!(kind, InvalidKind::Value, "{msg}");
        assert!(msg.contains("does not apply"), "{msg}");
        let (kind, _, msg) = invalid("[compress]\npolicy = \"zip\"\n");
        assert_eq!(kind, InvalidKind::Value, "{msg}");
    }

    fn invalid(text: &str) -> (InvalidKind, usize, String) {
        match Profile::parse(text, "t", "dir/t.toml") {
            Err(e @ ProfileError::Invalid { kind, line, .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with(&format!("dir/t.toml:{line}:")), "{msg}");
                assert!(msg.contains("hint: "), "{msg}");
                (kind, line, msg)
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_shipped_profile_loads_and_applies_to_a_valid_config() {
        for (name, description) in Profile::list() {
            let p = Profile::load(name).unwrap();
            assert_eq!(p.name, name);
            assert!(!description.is_empty() && !description.starts_with("(does not load"));
            let mut c = RuntimeConfig::default();
            p.apply(&mut c);
            c.validate().unwrap();
            p.eviction(1000);
            p.prefetch();
            p.placement(4, 1 << 30, 1000).unwrap();
        }
    }

    #[test]
    fn an_empty_file_means_the_default_profile() {
        let empty = Profile::parse("", "default", "shipped").unwrap();
        let default = Profile::load("default").unwrap();
        assert_eq!(
            Profile {
                description: default.description.clone(),
                ..empty
            },
            default
        );
        // And the default profile leaves the runtime's defaults alone, except prefetch.
        let mut c = RuntimeConfig::default();
        default.apply(&mut c);
        assert_eq!(c, RuntimeConfig::default());
    }

    #[test]
    fn loads_a_file_by_path_and_names_it_by_its_stem() {
        let dir = std::env::temp_dir().join(format!("dsm-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mine.toml");
        std::fs::write(&path, "[eviction]\npolicy = \"2q\"\na1in_pct = 10\n").unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(
            p.eviction,
            EvictionSpec::TwoQ {
                a1in_pct: 10,
                a1out_pct: 50
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_names_and_unreadable_files_say_what_to_do() {
        let e = Profile::load("fast").unwrap_err();
        assert!(matches!(e, ProfileError::Unknown { .. }));
        assert!(
            e.to_string()
                .contains("default, sequential, random, strided, loop, velvet"),
            "{e}"
        );
        let e = Profile::load("/nonexistent/p.toml").unwrap_err();
        assert!(matches!(e, ProfileError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/p.toml"), "{e}");
    }

    #[test]
    fn unknown_keys_give_file_line_and_the_allowed_keys() {
        let (kind, line, msg) =
            invalid("description = \"x\"\n\n[prefetch]\npolicy = \"leap\"\nmax_page = 8\n");
        assert_eq!((kind, line), (InvalidKind::UnknownKey, 5));
        assert!(
            msg.contains("max_page") && msg.contains("max_pages"),
            "{msg}"
        );
        let (kind, line, _) = invalid("[evict]\npolicy = \"fifo\"\n");
        assert_eq!((kind, line), (InvalidKind::UnknownKey, 1));
    }

    #[test]
    fn wrong_types_give_file_and_line() {
        let (kind, line, _) = invalid("[writeback]\nbatch_pages = \"64\"\n");
        assert_eq!((kind, line), (InvalidKind::WrongType, 2));
        let (kind, line, _) = invalid("\n\nprefetch = 3\n");
        assert_eq!((kind, line), (InvalidKind::WrongType, 3));
    }

    #[test]
    fn syntax_errors_give_file_and_line() {
        let (kind, line, _) = invalid("[cache]\nreclaim_start_free_pct = = 3\n");
        assert_eq!((kind, line), (InvalidKind::Syntax, 2));
    }

    #[test]
    fn impossible_values_give_file_line_and_range() {
        let cases: &[(&str, usize, &str)] = &[
            ("[eviction]\npolicy = \"lru\"\n", 2, "fifo"),
            ("[fetch]\ngranularity_pages = 3\n", 2, "power of two"),
            ("[fetch]\ngranularity_pages = 128\n", 2, "1 to 64"),
            ("[writeback]\nbatch_pages = 0\n", 2, "1 to 1024"),
            ("[prefetch]\nmax_pages = -1\n", 2, "1 to 1024"),
            (
                "[placement]\npolicy = \"interleaved\"\nchunk_pages = 0\n",
                3,
                "1 to",
            ),
            (
                "[cache]\nreclaim_start_free_pct = 9\nreclaim_stop_free_pct = 8\n",
                3,
                "start < stop",
            ),
            (
                "[prefetch]\nmax_pages = 8\nwindow_initial_pages = 16\n",
                3,
                "lower it",
            ),
            (
                "[eviction]\npolicy = \"clock\"\na1in_pct = 10\n",
                3,
                "\"2q\"",
            ),
            (
                "[prefetch]\npolicy = \"none\"\nmax_pages = 10\n",
                3,
                "choose prefetch",
            ),
            (
                "[prefetch]\npolicy = \"stride\"\nhistory_deltas = 8\n",
                3,
                "\"leap\"",
            ),
            (
                "[placement]\npolicy = \"blocked\"\nchunk_pages = 8\n",
                3,
                "\"interleaved\"",
            ),
            ("description = \"\"\"two\nlines\"\"\"\n", 1, "one line"),
        ];
        for &(text, want_line, hint) in cases {
            let (kind, line, msg) = invalid(text);
            assert_eq!(
                (kind, line),
                (InvalidKind::Value, want_line),
                "{text}: {msg}"
            );
            assert!(msg.contains(hint), "{text}: {msg}");
        }
    }

    #[test]
    fn shipped_profiles_are_found_by_name_and_build_their_policies() {
        let v = Profile::load("velvet").unwrap();
        assert_eq!(v.eviction(100).name(), "heat");
        let l = Profile::load("loop").unwrap();
        assert_eq!(l.eviction(100).name(), "2q");
        let s = Profile::load("sequential").unwrap();
        assert_eq!(s.prefetch().name(), "readahead");
        assert!(s.huge_regions);
        let r = Profile::load("random").unwrap();
        assert_eq!(r.prefetch().name(), "none");
        assert_eq!(r.prefetch_max_pages(), 0);
    }
}
