//! Unit tests of the cache against in-memory effects: every wait is bounded.

use super::*;
use crate::fault::uffd::UffdError;

/// A fixed, small process: `pages` pages, a cache of `cache` pages, no prefetch, one page
/// per fetch and per write-back, a node timeout of 50 ms.
fn process(pages: u64, cache: usize) -> Process {
    process_with(pages, cache, 0, |_| {})
}

/// [`process`] with pages filled with `fill_words` random words and `tweak` applied to
/// its configuration.
fn process_with(
    pages: u64,
    cache: usize,
    fill_words: usize,
    tweak: impl FnOnce(&mut RuntimeConfig),
) -> Process {
    let mut config = RuntimeConfig {
        space_base: BASE,
        space_bytes: pages * PAGE_BYTES as u64,
        cache_bytes_max: (cache * PAGE_BYTES) as u64,
        reclaim_start_free_pct: 0,
        reclaim_stop_free_pct: 1,
        writeback_batch_pages: 1,
        fault_batch_max: 4,
        prefetch_max_pages: 0,
        zero_fill_ahead_pages: 0,
        staging_pages: 1,
        node_timeout_ms: 50,
        ..RuntimeConfig::default()
    };
    tweak(&mut config);
    let shape = Shape {
        pages,
        config,
        profile: "[eviction]\npolicy = \"fifo\"\n[prefetch]\npolicy = \"none\"\n".into(),
        fill_words,
    };
    Process::with_shape(shape, SimOptions::default()).unwrap()
}

fn runtime_error(r: Result<impl std::fmt::Debug, Stop>) -> RuntimeError {
    match r {
        Err(Stop::Runtime(e)) => e,
        Err(Stop::Broken(m)) => panic!("expected a runtime error, got: {m}"),
        Ok(v) => panic!("expected a runtime error, got {v:?}"),
    }
}

fn ok<T>(r: Result<T, Stop>) -> T {
    match r {
        Ok(v) => v,
        Err(Stop::Runtime(e)) => panic!("runtime error: {e}"),
        Err(Stop::Broken(m)) => panic!("{m}"),
    }
}

/// Writes `pages` and evicts them all, so that each has data at home only.
fn written_home(p: &mut Process, pages: std::ops::Range<u64>) {
    for q in pages {
        ok(p.write(q, 0x100 + q));
        p.model[q as usize] = 0x100 + q;
    }
    while p.evictor.evict(&p.core, p.session.as_mut(), 8).unwrap() > 0 {}
    p.check().unwrap();
}

#[test]
fn write_protect_refused_with_eagain_is_retried_then_fails_within_the_timeout() {
    let mut p = process(16, 8);
    assert_eq!(ok(p.read(0)), 0, "a read zero-fills, write-protected");
    p.core.fx.refuse_write_protect(3);
    ok(p.write(0, 7));
    p.model[0] = 7;
    p.check().unwrap();

    assert_eq!(ok(p.read(1)), 0);
    p.core.fx.refuse_write_protect(u64::MAX);
    let t = std::time::Instant::now();
    let e = runtime_error(p.write(1, 8));
    assert!(
        matches!(
            e,
            RuntimeError::Uffd(UffdError::KeptRefusing {
                call: "UFFDIO_WRITEPROTECT",
                ..
            })
        ),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded by the node timeout"
    );
    assert!(e.to_string().contains("EAGAIN"), "{e}");
}

#[test]
fn discarding_a_page_locked_for_good_fails_instead_of_spinning() {
    let mut p = process(16, 8);
    for q in 0..4 {
        ok(p.write(q, 1 + q));
    }
    let held = p.core.table.try_lock(PageNum(2)).unwrap();
    let t = std::time::Instant::now();
    let e = p.core.discard(PageNum(0), 4).unwrap_err();
    assert!(matches!(e, RuntimeError::PageStuck { page: 2, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // The pages before it were discarded and none is left locked but the one we hold.
    assert_eq!(
        p.core.table.get(PageNum(0)),
        crate::coherence::PageState::UNTOUCHED
    );
    assert!(p.core.table.try_lock(PageNum(3)).is_some());
    assert!(held.resident());
}

#[test]
fn a_round_whose_own_fetches_hold_the_whole_cache_completes() {
    let mut p = process(32, 3);
    written_home(&mut p, 0..6);
    // Six faults in one round on pages at home, for a cache of three: the first three
    // fetches hold all the budget before any is installed.
    let faults: Vec<Fault> = (0..6)
        .map(|q| Fault {
            addr: p.addr(q),
            kind: FaultKind::MissingRead,
            tid: 1 + q as u32,
        })
        .collect();
    let t = std::time::Instant::now();
    p.handler
        .serve(&p.core, &faults)
        .unwrap_or_else(|e| panic!("the round wedged: {e}"));
    assert!(t.elapsed() < Duration::from_secs(5));
    p.check().unwrap();
    for q in 0..6 {
        assert_eq!(ok(p.read(q)), 0x100 + q);
    }
    p.check().unwrap();
}

#[test]
fn a_cache_held_by_other_threads_is_declared_wedged_within_a_bound() {
    let mut p = process(32, 3);
    // Three pages locked mid-operation by "other threads", holding all the budget.
    for q in 10..13 {
        p.core.table.try_lock(PageNum(q)).unwrap();
        assert!(p.core.budget.try_take());
    }
    let t = std::time::Instant::now();
    let e = runtime_error(p.read(0));
    assert!(
        matches!(e, RuntimeError::CacheWedged { capacity_pages: 3 }),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_clean_page_dropped_behind_our_back_is_installed_again() {
    let mut p = process(16, 8);
    written_home(&mut p, 5..6);
    assert_eq!(ok(p.read(5)), 0x105, "fetched, mapped write-protected");
    assert_eq!(ok(p.read(2)), 0, "zero-filled, mapped write-protected");
    for q in [5, 2] {
        assert!(p.core.fx.zap(p.addr(q)));
    }
    assert_eq!(ok(p.read(5)), 0x105, "fetched again from home");
    assert_eq!(ok(p.read(2)), 0, "zero-filled again");
    assert_eq!(p.core.stats.pages_remapped.load(Ordering::Relaxed), 2);
    p.check().unwrap();
    ok(p.write(2, 9));
    p.model[2] = 9;
    p.check().unwrap();
}

#[test]
fn missing_faults_on_a_page_that_is_mapped_only_wake() {
    let mut p = process(16, 8);
    ok(p.write(3, 0x33));
    p.model[3] = 0x33;
    let fault = Fault {
        addr: p.addr(3),
        kind: FaultKind::MissingRead,
        tid: 9,
    };
    for _ in 0..10 {
        // As if the thread kept racing with installs: the page is there each time.
        p.handler.serve(&p.core, &[fault]).unwrap();
    }
    assert_eq!(p.core.stats.pages_remapped.load(Ordering::Relaxed), 0);
    assert_eq!(ok(p.read(3)), 0x33);
    p.check().unwrap();
}

#[test]
fn a_dirty_page_dropped_behind_our_back_is_a_clear_error() {
    let mut p = process(16, 8);
    ok(p.write(1, 0x77));
    assert!(p.core.fx.zap(p.addr(1)));
    let e = runtime_error(p.read(1));
    assert!(matches!(e, RuntimeError::PageLost { page: 1, .. }), "{e}");
    assert!(e.to_string().contains("data is lost"), "{e}");
}

#[test]
fn node_failure_ends_in_a_transport_error() {
    let mut p = process(16, 2);
    written_home(&mut p, 0..2);
    p.nodes.fail(true);
    let e = runtime_error(p.read(0));
    assert!(matches!(e, RuntimeError::Transport(_)), "{e}");
}

/// Dirty pages kept compressed stay dirty under pressure: the tier (a quarter of a
/// four-page cache, a few copies of about 800 bytes) demotes its oldest copies by writing
/// them home first, and every page reads back what was last written, from the tier
/// (no fetch) or from home.
#[test]
fn dirty_compressed_pages_reach_home_before_their_copy_is_dropped() {
    let mut p = process_with(32, 4, 100, |c| {
        c.compress_share_pct = 25;
        c.compress_keep_max_pct = 50;
    });
    for q in 0..32 {
        ok(p.write(q, 0x100 + q));
        p.model[q as usize] = 0x100 + q;
        p.check().unwrap();
    }
    let st = p.core.stats.snapshot();
    assert!(
        st.compressed_in_dirty >= 28,
        "every victim kept dirty: {st:?}"
    );
    assert!(
        st.compressed_demoted_dirty > 0,
        "the tier outgrew its share: {st:?}"
    );
    assert_eq!(st.compressed_demoted_dirty, st.remote_write_pages, "{st:?}");
    assert_eq!(st.remote_read_pages, 0, "nothing was read yet");
    let (copies, _, held) = p.core.compressed.as_ref().unwrap().usage();
    assert!(copies > 0 && held <= 1, "{copies} copies in {held} page(s)");
    for q in (0..32).rev() {
        assert_eq!(ok(p.read(q)), 0x100 + q, "page {q}");
        p.check().unwrap();
    }
    let st = p.core.stats.snapshot();
    assert!(st.compressed_hits > 0, "{st:?}");
    assert_eq!(
        st.faults_read,
        st.remote_read_pages + st.compressed_hits,
        "each read fault was served from home or from the tier: {st:?}"
    );
}
