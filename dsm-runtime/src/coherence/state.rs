//! Page states and their transitions, as pure functions (no I/O) so they can be checked
//! exhaustively.
//!
//! ```text
//!                 read fault (fetch or zero-fill)
//!     Invalid  ------------------------------------>  Shared (mapped write-protected)
//!        |  ^                                            |  |
//!        |  |  evict: drop, no traffic                   |  | first write (WP fault):
//!        |  +--------------------------------------------+  | upgrade, unprotect
//!        |  |                                               v
//!        |  |  evict: write-protect, write home       Exclusive (mapped writable,
//!        |  +------------------------------------------   dirty)
//!        |     write fault (fetch or zero-fill)              ^
//!        +---------------------------------------------------+
//! ```
//!
//! `home_valid` records whether the home node holds data for the page: until the first
//! write-back it does not, and a fault is served by zero-filling without a network trip.
//! `busy` is the per-page lock: whoever sets it owns the page until it stores the next
//! state. `referenced` is the recency hint that eviction policies consume.
//! `dirty_before` records that the page was dirty when it was last evicted: a page that
//! was written once is usually written again (a counter, a graph node), so the handler
//! may install its next fetch writable and spare the write-protect fault that would
//! follow (at the price of writing it home at its next eviction even if it stayed clean).
//!
//! A *staged* page is Invalid (not mapped) but has a local copy in a staging slot:
//! prefetched pages wait there for their first use, and sampled pages are parked there so
//! that their next use traps cheaply. A fault on it installs the local copy; no network.
//! A page parked while dirty is *staged dirty*: its slot holds the only up-to-date copy,
//! so a fault installs it writable (still dirty) and an eviction writes the slot home.
//!
//! A *compressed* page is Invalid with an lz4 copy in the compressed tier
//! ([`crate::cache::compressed`]): it left the mapped cache but not this machine. A fault
//! on it decompresses and installs locally; no network. *Compressed dirty* means that copy
//! is newer than home: it is installed writable, and it must be written home before the
//! tier drops it (a demotion).

/// What this process may do with a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Not mapped: any access faults.
    Invalid,
    /// Mapped read-only (write-protected): clean, identical to the home copy.
    Shared,
    /// Mapped writable: may differ from the home copy.
    Exclusive,
}

const ACCESS_MASK: u32 = 0b11;
const HOME_VALID: u32 = 1 << 2;
const BUSY: u32 = 1 << 3;
const REFERENCED: u32 = 1 << 4;
const PREFETCHED: u32 = 1 << 5;
const STAGED: u32 = 1 << 6;
const DIRTY_BEFORE: u32 = 1 << 7;
const STAGED_DIRTY: u32 = 1 << 8;
const COMPRESSED: u32 = 1 << 9;
const COMPRESSED_DIRTY: u32 = 1 << 10;
const INCOMPRESSIBLE: u32 = 1 << 11;
const SLOT_SHIFT: u32 = 12;
/// Most staging slots a state word can name.
pub const MAX_STAGING_SLOTS: u32 = 1 << (32 - SLOT_SHIFT);

/// A page's state, packed in 32 bits so the page table is one atomic word per page.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageState(pub u32);

impl std::fmt::Debug for PageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageState")
            .field("access", &self.access())
            .field("home_valid", &self.home_valid())
            .field("busy", &self.busy())
            .field("referenced", &self.referenced())
            .field("staged", &self.staged())
            .field("staged_dirty", &self.staged_dirty())
            .field("compressed", &self.compressed())
            .field("compressed_dirty", &self.compressed_dirty())
            .field("dirty_before", &self.dirty_before())
            .finish()
    }
}

impl PageState {
    /// A page nobody has touched: invalid, nothing at home.
    pub const UNTOUCHED: PageState = PageState(0);

    /// Access rights.
    pub fn access(self) -> Access {
        match self.0 & ACCESS_MASK {
            0 => Access::Invalid,
            1 => Access::Shared,
            2 => Access::Exclusive,
            _ => unreachable!("access bits 0b11 are never stored"),
        }
    }

    /// With other access rights.
    pub fn with_access(self, a: Access) -> PageState {
        let bits = match a {
            Access::Invalid => 0,
            Access::Shared => 1,
            Access::Exclusive => 2,
        };
        PageState((self.0 & !ACCESS_MASK) | bits)
    }

    /// Whether the page is mapped locally.
    pub fn resident(self) -> bool {
        self.access() != Access::Invalid
    }

    /// Whether the home node holds data for the page.
    pub fn home_valid(self) -> bool {
        self.0 & HOME_VALID != 0
    }

    /// Whether someone holds the page's lock.
    pub fn busy(self) -> bool {
        self.0 & BUSY != 0
    }

    /// Whether the page was used since the eviction policy last looked.
    pub fn referenced(self) -> bool {
        self.0 & REFERENCED != 0
    }

    /// Whether the page was brought in by prefetch and not yet used.
    pub fn prefetched(self) -> bool {
        self.0 & PREFETCHED != 0
    }

    /// Whether the page was dirty when it was last evicted.
    pub fn dirty_before(self) -> bool {
        self.0 & DIRTY_BEFORE != 0
    }

    /// The staging slot holding the page's local copy, if staged.
    pub fn staged(self) -> Option<u32> {
        (self.0 & STAGED != 0).then_some(self.0 >> SLOT_SHIFT)
    }

    /// Whether the page is staged with data newer than its home copy.
    pub fn staged_dirty(self) -> bool {
        self.0 & STAGED_DIRTY != 0
    }

    /// Invalid with a local copy, newer than home (dirty), in staging slot `slot`.
    pub fn with_staged_dirty(self, slot: u32) -> PageState {
        self.with_staged(slot).set(STAGED_DIRTY, true)
    }

    /// Invalid with a clean local copy in staging slot `slot`.
    pub fn with_staged(self, slot: u32) -> PageState {
        debug_assert!(slot < MAX_STAGING_SLOTS);
        debug_assert!(
            self.access() == Access::Invalid,
            "only unmapped pages are staged"
        );
        PageState((self.0 & ((1 << SLOT_SHIFT) - 1)) | STAGED | (slot << SLOT_SHIFT))
    }

    /// Whether the page's local copy is in the compressed tier.
    pub fn compressed(self) -> bool {
        self.0 & COMPRESSED != 0
    }

    /// Whether the compressed copy is newer than home.
    pub fn compressed_dirty(self) -> bool {
        self.0 & COMPRESSED_DIRTY != 0
    }

    /// Whether the page once failed to compress small enough: it is not tried again
    /// (sticky until the page is discarded).
    pub fn incompressible(self) -> bool {
        self.0 & INCOMPRESSIBLE != 0
    }

    /// With the incompressible mark set or cleared.
    pub fn with_incompressible(self, on: bool) -> PageState {
        self.set(INCOMPRESSIBLE, on)
    }

    /// Invalid with its copy in the compressed tier, newer than home if `dirty`.
    pub fn with_compressed(self, dirty: bool) -> PageState {
        debug_assert!(
            self.access() == Access::Invalid && self.staged().is_none(),
            "only unmapped, unstaged pages are compressed"
        );
        self.set(COMPRESSED, true).set(COMPRESSED_DIRTY, dirty)
    }

    /// Without a staged or compressed local copy.
    fn without_staged(self) -> PageState {
        PageState(
            self.0
                & ((1 << SLOT_SHIFT) - 1)
                & !(STAGED | STAGED_DIRTY | COMPRESSED | COMPRESSED_DIRTY),
        )
    }

    fn set(self, bit: u32, on: bool) -> PageState {
        PageState(if on { self.0 | bit } else { self.0 & !bit })
    }

    /// With the lock bit set or cleared.
    pub fn with_busy(self, on: bool) -> PageState {
        self.set(BUSY, on)
    }

    /// With the recency bit set or cleared.
    pub fn with_referenced(self, on: bool) -> PageState {
        self.set(REFERENCED, on)
    }

    /// With the prefetch bit set or cleared.
    pub fn with_prefetched(self, on: bool) -> PageState {
        self.set(PREFETCHED, on)
    }

    /// With the home-valid bit set or cleared (for models of the cache; the runtime sets
    /// it only through [`after_evict`]).
    pub fn with_home_valid(self, on: bool) -> PageState {
        self.set(HOME_VALID, on)
    }
}

/// What to do about a missing fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Someone else mapped it meanwhile: just wake the thread.
    Wake,
    /// Install zeros (nothing at home), writable if the access was a write.
    ZeroFill { writable: bool },
    /// Fetch from home and install, writable if the access was a write.
    Fetch { writable: bool },
    /// Shared copy present and the thread wants to write: lift write protection.
    Upgrade,
    /// A local copy waits in staging: install it, writable if the access was a write or
    /// the copy is dirty.
    InstallStaged { writable: bool },
    /// A compressed local copy: decompress and install it, writable if the access was a
    /// write or the copy is dirty.
    InstallCompressed { writable: bool },
}

/// Decides a fault on a page in state `s` (not busy). `write` is the access kind; `wp`
/// says the fault was a write-protect fault rather than a missing one.
pub fn on_fault(s: PageState, write: bool, wp: bool) -> FaultAction {
    debug_assert!(!s.busy(), "deciding a fault on a locked page");
    match (s.access(), write || wp) {
        // A WP fault on a page evicted meanwhile: the retried access faults as missing.
        (Access::Invalid, _) if wp => FaultAction::Wake,
        (Access::Invalid, writable) if s.staged().is_some() => FaultAction::InstallStaged {
            writable: writable || s.staged_dirty(),
        },
        (Access::Invalid, writable) if s.compressed() => FaultAction::InstallCompressed {
            writable: writable || s.compressed_dirty(),
        },
        (Access::Invalid, writable) if s.home_valid() => FaultAction::Fetch { writable },
        (Access::Invalid, writable) => FaultAction::ZeroFill { writable },
        (Access::Shared, true) => FaultAction::Upgrade,
        (Access::Shared, false) | (Access::Exclusive, _) => FaultAction::Wake,
    }
}

impl FaultAction {
    /// Whether the fault is served from a local copy (staged or compressed): no network.
    pub fn is_install_local(self) -> bool {
        matches!(
            self,
            FaultAction::InstallStaged { .. } | FaultAction::InstallCompressed { .. }
        )
    }
}

/// With `enabled` (the `writable_if_dirty_before` setting), a page coming back from
/// home (fetched, or prefetched and now used) that was dirty at its last eviction is
/// installed writable even for a read: it will most likely be written again, and this
/// spares that write's write-protect fault.
pub fn writable_if_dirty_before(enabled: bool, s: PageState, action: FaultAction) -> FaultAction {
    if !enabled || !s.dirty_before() {
        return action;
    }
    match action {
        FaultAction::Fetch { .. } => FaultAction::Fetch { writable: true },
        FaultAction::InstallStaged { .. } if s.prefetched() => {
            FaultAction::InstallStaged { writable: true }
        }
        other => other,
    }
}

/// State after a fault's action completed.
pub fn after_fault(s: PageState, action: FaultAction) -> PageState {
    let next = match action {
        FaultAction::Wake => s,
        FaultAction::ZeroFill { writable }
        | FaultAction::Fetch { writable }
        | FaultAction::InstallStaged { writable }
        | FaultAction::InstallCompressed { writable } => {
            s.without_staged().with_access(if writable {
                Access::Exclusive
            } else {
                Access::Shared
            })
        }
        FaultAction::Upgrade => s.with_access(Access::Exclusive),
    };
    next.with_referenced(true).with_busy(false)
}

/// What eviction must do with a resident page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictAction {
    /// Clean: unmap, no traffic.
    Drop,
    /// Dirty: write-protect, write home, then unmap.
    WriteBack,
    /// Staged and never used: free the staging slot, no traffic.
    DropStaged,
    /// Staged dirty: write the staging slot home, free it. Nothing is mapped.
    WriteBackStaged,
    /// Compressed and clean, leaving the compressed tier (a demotion): drop the copy.
    DropCompressed,
    /// Compressed dirty, leaving the compressed tier: decompress, write home, drop.
    WriteBackCompressed,
}

impl EvictAction {
    /// Whether the eviction writes the page home.
    pub fn writes_back(self) -> bool {
        matches!(
            self,
            EvictAction::WriteBack
                | EvictAction::WriteBackStaged
                | EvictAction::WriteBackCompressed
        )
    }

    /// Whether the page leaves the compressed tier.
    pub fn demotes(self) -> bool {
        matches!(
            self,
            EvictAction::DropCompressed | EvictAction::WriteBackCompressed
        )
    }

    /// Whether the page is mapped and must be unmapped.
    pub fn unmaps(self) -> bool {
        matches!(self, EvictAction::Drop | EvictAction::WriteBack)
    }
}

/// Decides the eviction of cached page `s` (mapped, staged or compressed).
pub fn on_evict(s: PageState) -> EvictAction {
    debug_assert!(
        s.resident() || s.staged().is_some() || s.compressed(),
        "evicting a page that is not cached"
    );
    match s.access() {
        Access::Exclusive => EvictAction::WriteBack,
        Access::Shared => EvictAction::Drop,
        Access::Invalid if s.staged_dirty() => EvictAction::WriteBackStaged,
        Access::Invalid if s.compressed_dirty() => EvictAction::WriteBackCompressed,
        Access::Invalid if s.compressed() => EvictAction::DropCompressed,
        Access::Invalid => EvictAction::DropStaged,
    }
}

/// State of a victim of `action` whose copy was kept in the compressed tier instead of
/// leaving: unmapped (or its staging slot freed), dirty if the eviction would have
/// written it home. Home is unchanged.
pub fn after_compress(s: PageState, action: EvictAction) -> PageState {
    debug_assert!(
        !action.demotes(),
        "a compressed page is not compressed again"
    );
    s.without_staged()
        .with_access(Access::Invalid)
        .with_compressed(action.writes_back())
        .with_referenced(false)
        .with_prefetched(false)
        .with_busy(false)
}

/// The action for a victim whose bytes turned out to be all zeros: a page with no copy
/// at home need not be written there, since a zero-fill recreates it (pages zero-filled
/// ahead of a sparse write would otherwise all travel home).
pub fn when_zero(s: PageState, action: EvictAction) -> EvictAction {
    match action {
        EvictAction::WriteBack if !s.home_valid() => EvictAction::Drop,
        EvictAction::WriteBackStaged if !s.home_valid() => EvictAction::DropStaged,
        EvictAction::WriteBackCompressed if !s.home_valid() => EvictAction::DropCompressed,
        other => other,
    }
}

/// State of a mapped page that a checkpoint made clean while keeping it: write-protected
/// again (later writes fault and mark it dirty anew), its home holding its data if it
/// was written there (`written`; a never-homed page of zeros is not, a zero-fill
/// recreates it).
pub fn after_write_home(s: PageState, written: bool) -> PageState {
    debug_assert!(s.resident(), "only mapped pages are kept");
    s.with_access(Access::Shared)
        .with_home_valid(s.home_valid() || written)
        .with_busy(false)
}

/// State after an eviction completed.
pub fn after_evict(s: PageState, action: EvictAction) -> PageState {
    let home_valid = s.home_valid() || action.writes_back();
    s.without_staged()
        .with_access(Access::Invalid)
        .with_home_valid(home_valid)
        .set(DIRTY_BEFORE, action.writes_back())
        .with_referenced(false)
        .with_prefetched(false)
        .with_busy(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pages_never_home_skip_their_write_back_when_zero() {
        let dirty = PageState::UNTOUCHED.with_access(Access::Exclusive);
        assert_eq!(when_zero(dirty, on_evict(dirty)), EvictAction::Drop);
        let parked = PageState::UNTOUCHED.with_staged_dirty(3);
        assert_eq!(when_zero(parked, on_evict(parked)), EvictAction::DropStaged);
        // A zero page whose home holds older data must overwrite it.
        let homed = dirty.with_home_valid(true);
        assert_eq!(when_zero(homed, on_evict(homed)), EvictAction::WriteBack);
        let after = after_evict(dirty, when_zero(dirty, on_evict(dirty)));
        assert!(!after.home_valid() && !after.resident());
    }

    fn all_states() -> impl Iterator<Item = PageState> {
        // Every combination of the defined bits with valid access values.
        let plain = (0u32..256)
            .map(PageState)
            .filter(|s| s.0 & ACCESS_MASK != 3 && s.0 & STAGED == 0);
        let staged = (0u32..256)
            .map(PageState)
            .filter(|s| s.0 & ACCESS_MASK == 0 && s.home_valid())
            .map(|s| s.with_staged(5));
        // Parked while dirty: home may hold an older copy, or none yet.
        let staged_dirty = (0u32..256)
            .map(PageState)
            .filter(|s| s.0 & ACCESS_MASK == 0)
            .map(|s| s.with_staged_dirty(7));
        // Kept in the compressed tier, clean (home holds it) or dirty.
        let compressed = (0u32..256)
            .map(PageState)
            .filter(|s| s.0 & ACCESS_MASK == 0 && s.0 & (STAGED | STAGED_DIRTY) == 0)
            .flat_map(|s| [s.with_compressed(true), s.with_compressed(false)])
            .filter(|s| s.compressed_dirty() || s.home_valid());
        plain
            .chain(staged)
            .chain(staged_dirty)
            .chain(compressed)
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Exhaustive check of the machine: every reachable state and event keeps the
    /// invariants "data is never lost" and "a written page is never mapped read-only
    /// while it differs from home".
    #[test]
    fn transitions_never_lose_data() {
        for s in all_states().filter(|s| !s.busy()) {
            for (write, wp) in [(false, false), (true, false), (true, true)] {
                let a = on_fault(s, write, wp);
                if s.access() == Access::Invalid
                    && s.home_valid()
                    && s.staged().is_none()
                    && !s.compressed()
                    && !wp
                {
                    assert!(
                        matches!(a, FaultAction::Fetch { .. }),
                        "{s:?}: must fetch, got {a:?}"
                    );
                }
                if !s.home_valid() {
                    assert!(
                        !matches!(a, FaultAction::Fetch { .. }),
                        "{s:?}: nothing to fetch"
                    );
                }
                let n = after_fault(s, a);
                assert!(!n.busy());
                if (write || wp) && a != FaultAction::Wake {
                    assert_eq!(n.access(), Access::Exclusive, "{s:?} {a:?}");
                }
                if s.staged_dirty() && a != FaultAction::Wake {
                    assert_eq!(
                        n.access(),
                        Access::Exclusive,
                        "{s:?}: a dirty copy stays dirty"
                    );
                }
                assert!(!n.staged_dirty() || n.staged().is_some());
                assert_eq!(n.home_valid(), s.home_valid(), "faults never change home");
                assert_eq!(n.dirty_before(), s.dirty_before(), "only evictions set it");
                if s.compressed() && !wp {
                    assert!(
                        matches!(a, FaultAction::InstallCompressed { .. }),
                        "{s:?}: the compressed copy first, no network"
                    );
                    assert!(
                        !n.compressed() && !n.compressed_dirty(),
                        "{s:?}: copy dropped"
                    );
                    if s.compressed_dirty() {
                        assert_eq!(n.access(), Access::Exclusive, "{s:?}: stays dirty");
                    }
                }
                if s.staged().is_some() && !wp {
                    assert!(
                        matches!(a, FaultAction::InstallStaged { .. }),
                        "{s:?}: local copy first"
                    );
                    assert_eq!(n.staged(), None, "the staging slot is released on install");
                }
            }
            if s.compressed() {
                let a = on_evict(s);
                assert!(a.demotes() && !a.unmaps(), "{s:?}: {a:?}");
                assert_eq!(
                    a.writes_back(),
                    s.compressed_dirty(),
                    "{s:?}: dirty goes home"
                );
                let n = after_evict(s, a);
                assert!(!n.compressed() && !n.compressed_dirty());
                assert!(n.home_valid(), "{s:?}: home holds it after the demotion");
            }
            if s.resident() || s.staged().is_some() {
                let a = on_evict(s);
                if !(s.staged().is_some() && s.prefetched()) {
                    let k = after_compress(s, a);
                    assert!(k.compressed() && k.access() == Access::Invalid);
                    assert_eq!(k.compressed_dirty(), a.writes_back(), "{s:?}: dirt kept");
                    assert_eq!(k.home_valid(), s.home_valid());
                    assert!(on_fault(k, false, false).is_install_local());
                }
                let n = after_evict(s, a);
                assert_eq!(n.access(), Access::Invalid);
                assert_eq!(n.staged(), None);
                if s.access() == Access::Exclusive {
                    assert_eq!(a, EvictAction::WriteBack, "dirty pages are written back");
                    assert!(n.home_valid());
                }
                if s.staged_dirty() {
                    assert_eq!(a, EvictAction::WriteBackStaged, "a dirty slot goes home");
                    assert!(n.home_valid());
                }
                assert_eq!(
                    a.unmaps(),
                    s.resident(),
                    "{s:?}: unmap exactly mapped pages"
                );
                assert!(!n.staged_dirty());
                assert_eq!(n.home_valid(), s.home_valid() || a.writes_back());
                assert_eq!(n.dirty_before(), a.writes_back());
            }
        }
    }

    #[test]
    fn untouched_pages_zero_fill_and_written_ones_come_back() {
        let s = PageState::UNTOUCHED;
        assert_eq!(
            on_fault(s, false, false),
            FaultAction::ZeroFill { writable: false }
        );
        let s = after_fault(s, FaultAction::ZeroFill { writable: false });
        assert_eq!(on_fault(s, true, true), FaultAction::Upgrade);
        let s = after_fault(s, FaultAction::Upgrade);
        let s = after_evict(s, on_evict(s));
        assert_eq!(
            on_fault(s, false, false),
            FaultAction::Fetch { writable: false }
        );
        // A WP fault that lost the race with eviction just retries.
        assert_eq!(on_fault(s, true, true), FaultAction::Wake);
    }
}
