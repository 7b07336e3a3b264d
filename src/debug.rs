//! Debug modes, set by `BUFPOOL_DEBUG` (read once, at first use) or by
//! `pool_set_debugging()`.
//!
//! Two kinds of modes:
//! - process-wide switches read where they act (`no-cache`, `no-global`,
//!   `race-window`): one relaxed load each;
//! - object modes (`poison`, `integrity`, `tag`, `caller`, `cold-first`,
//!   `uaf`, `fail`), snapshotted into each pool when it is created
//!   ([`PoolDebug`]). A pool with any object mode gets no thread cache and
//!   keeps its idle objects in a debug store of its own (below), so the fast
//!   path is untouched and every alloc/free of such a pool takes the slow
//!   path, where the pool calls the small functions of this module. Pools
//!   created before a mode is turned on keep working without it.
//!
//! The per-object work lives in [`object`].

pub(crate) mod object;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

pub(crate) use object::PoolDebug;

/// `race-window=N`: 0 off, `YIELD` for `sched_yield()`, else N `pause`s.
static RACE_WINDOW: AtomicUsize = AtomicUsize::new(0);
const YIELD: usize = usize::MAX;
/// `no-cache`: pools created from now on get no thread cache.
static NO_CACHE: AtomicBool = AtomicBool::new(false);
/// `no-global`: pools created from now on get no shared cache.
static NO_GLOBAL: AtomicBool = AtomicBool::new(false);
/// The object modes pools created from now on get (`M_*` bits).
static OBJ_MODES: AtomicU32 = AtomicU32::new(0);
/// `poison=BYTE`.
static POISON_BYTE: AtomicU32 = AtomicU32::new(DEFAULT_POISON as u32);
/// `fail=PERCENT`.
static FAIL_PCT: AtomicU32 = AtomicU32::new(0);

pub(crate) const M_POISON: u32 = 1 << 0;
pub(crate) const M_INTEGRITY: u32 = 1 << 1;
pub(crate) const M_TAG: u32 = 1 << 2;
pub(crate) const M_CALLER: u32 = 1 << 3;
pub(crate) const M_COLD_FIRST: u32 = 1 << 4;
pub(crate) const M_UAF: u32 = 1 << 5;
pub(crate) const M_FAIL: u32 = 1 << 6;
const DEFAULT_POISON: u8 = 0x50;

/// The object-mode words, each with its `no-` form.
const OBJ_WORDS: [(&str, u32); 6] = [
    ("poison", M_POISON),
    ("integrity", M_INTEGRITY),
    ("tag", M_TAG),
    ("caller", M_CALLER),
    ("cold-first", M_COLD_FIRST),
    ("uaf", M_UAF),
];

static ENV_ONCE: Once = Once::new();

const HELP: &str = "bufpool: BUFPOOL_DEBUG / pool_set_debugging() take a comma-separated list of:
  poison[=BYTE]    fill each object handed out with BYTE (default 0x50; 0..255, decimal or 0x..)
  integrity        fill idle objects with a changing pattern, check it on reuse (write after free)
  tag              a word after each object names its pool: double, wrong-pool and foreign frees abort
  caller           remember the last allocating/freeing caller of each object, shown on abort
  cold-first       reuse the idle object freed longest ago first (FIFO), not the last one
  uaf              each object in its own mapping, unmapped on free (use after free faults)
  fail=PERCENT     make PERCENT % of allocations fail (0..100); buffer allocations of the
                   classes DB_MUX_TX and DB_PERMANENT are spared
  no-cache         no thread cache
  no-global        no shared cache
  race-window=N    spin N pauses (or 'yield') between reading a shared-cache head and its link,
                   in every shared-cache algorithm (DWCAS then crashes when objects go to the OS)
  help             print this list
  Object modes (poison..uaf, fail) apply to pools created afterwards; 'no-WORD' turns one off
  ('cache', 'global', 'hot-first', 'fail=0', 'race-window=0' likewise).\n";

/// Reads `BUFPOOL_DEBUG` once. Called at every entry that creates state.
pub(crate) fn init_from_env() {
    ENV_ONCE.call_once(|| {
        // getenv, not std::env::var: no heap allocation (this runs when
        // memory may be exhausted).
        // SAFETY: a NUL-terminated name; the result is null or a C string.
        let v = unsafe { libc::getenv(c"BUFPOOL_DEBUG".as_ptr()) };
        if v.is_null() {
            return;
        }
        // SAFETY: getenv returned a NUL-terminated string of the environment.
        let v = unsafe { std::ffi::CStr::from_ptr(v) }.to_str().unwrap_or("\u{fffd}");
        if let Err(word) = apply(v) {
            eprintln!("bufpool: unknown BUFPOOL_DEBUG word '{word}' (try BUFPOOL_DEBUG=help); variable ignored");
        }
    });
}

/// Parses a byte: decimal or `0x` hexadecimal.
fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Applies a comma-separated option list. All words are checked before any
/// takes effect; on a bad word nothing changes and the word is returned.
pub(crate) fn apply(opts: &str) -> Result<(), &str> {
    let mut race = None;
    let mut no_cache = None;
    let mut no_global = None;
    let mut help = false;
    // Relaxed: a pool snapshots whatever value it sees when it is created;
    // the caller orders mode changes against pool creation itself.
    let mut modes = OBJ_MODES.load(Ordering::Relaxed);
    let mut poison = None;
    let mut fail = None;
    for word in opts.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (key, val) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let bad = || Err(word);
        match (key, val) {
            ("no-cache", None) => no_cache = Some(true),
            ("cache", None) => no_cache = Some(false),
            ("no-global", None) => no_global = Some(true),
            ("global", None) => no_global = Some(false),
            ("race-window", Some("yield")) => race = Some(YIELD),
            ("race-window", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n < YIELD => race = Some(n),
                _ => return bad(),
            },
            ("poison", Some(b)) => match parse_u32(b) {
                Some(b) if b <= 255 => {
                    poison = Some(b);
                    modes |= M_POISON;
                }
                _ => return bad(),
            },
            ("fail", Some(n)) => match n.parse::<u32>() {
                Ok(n) if n <= 100 => {
                    fail = Some(n);
                    modes = if n == 0 { modes & !M_FAIL } else { modes | M_FAIL };
                }
                _ => return bad(),
            },
            ("hot-first", None) => modes &= !M_COLD_FIRST,
            ("help", None) => help = true,
            (k, None) => {
                let (neg, name) = match k.strip_prefix("no-") {
                    Some(n) => (true, n),
                    None => (false, k),
                };
                match OBJ_WORDS.iter().find(|(w, _)| *w == name) {
                    Some(&(_, bit)) if neg => modes &= !bit,
                    Some(&(_, bit)) => modes |= bit,
                    None => return bad(),
                }
            }
            _ => return bad(),
        }
    }
    if help {
        eprint!("{HELP}");
    }
    if let Some(r) = race {
        RACE_WINDOW.store(r, Ordering::Relaxed);
    }
    if let Some(b) = no_cache {
        NO_CACHE.store(b, Ordering::Relaxed);
    }
    if let Some(b) = no_global {
        NO_GLOBAL.store(b, Ordering::Relaxed);
    }
    if let Some(b) = poison {
        POISON_BYTE.store(b, Ordering::Relaxed);
    }
    if let Some(n) = fail {
        FAIL_PCT.store(n, Ordering::Relaxed);
    }
    OBJ_MODES.store(modes, Ordering::Relaxed);
    Ok(())
}

pub(crate) fn no_cache() -> bool {
    NO_CACHE.load(Ordering::Relaxed)
}

pub(crate) fn no_global() -> bool {
    NO_GLOBAL.load(Ordering::Relaxed)
}

/// The object modes as set now: (bits, poison byte, fail percent).
pub(crate) fn object_modes() -> (u32, u8, u32) {
    (
        OBJ_MODES.load(Ordering::Relaxed),
        POISON_BYTE.load(Ordering::Relaxed) as u8,
        FAIL_PCT.load(Ordering::Relaxed),
    )
}

thread_local! {
    /// Depth of `critical()` sections on this thread.
    static CRITICAL: Cell<u32> = const { Cell::new(0) };
}

/// While alive, `fail=PERCENT` spares this thread's allocations. The
/// buffer code holds one around the allocations that must not fail for
/// the sake of a test (the buffer pool's critical allocations); nothing
/// else should.
pub(crate) struct Critical(());

/// Marks this thread's allocations as critical until the guard drops.
pub(crate) fn critical() -> Critical {
    CRITICAL.with(|c| c.set(c.get() + 1));
    Critical(())
}

impl Drop for Critical {
    fn drop(&mut self) {
        CRITICAL.with(|c| c.set(c.get() - 1));
    }
}

pub(crate) fn in_critical() -> bool {
    CRITICAL.with(|c| c.get() != 0)
}

/// Before `fork()`: takes the registry of tag/uaf objects (after every
/// pool's store, see `pool::fork_prepare`).
pub(crate) fn fork_lock() {
    object::fork_lock();
}

/// After `fork()`, parent or child: lets the registry go.
pub(crate) fn fork_unlock() {
    // SAFETY: taken by `fork_lock` on this thread.
    unsafe { object::fork_unlock() };
}

/// Widens the window between reading a shared-cache head and reading the
/// link of the object it names, when `race-window` is set. Every shared
/// cache algorithm calls it at that point.
#[inline(always)]
pub(crate) fn race_window() {
    #[cfg(not(loom))]
    {
        let n = RACE_WINDOW.load(Ordering::Relaxed);
        if n != 0 {
            race_window_slow(n);
        }
    }
}

#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn race_window_slow(n: usize) {
    if n == YIELD {
        std::thread::yield_now();
    } else {
        for _ in 0..n {
            core::hint::spin_loop();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    /// Mode changes would leak into pools other tests create: share their lock.
    use crate::pool::tests::serial as modes_lock;

    #[test]
    fn words_are_all_checked_before_any_applies() {
        let _g = modes_lock();
        assert_eq!(apply("tag,poison=300"), Err("poison=300"));
        assert_eq!(object_modes().0, 0, "nothing applied");
        for bad in ["fail=101", "fail=-1", "poison=x", "tagg", "no-help", "race-window=q", "tag=1", "no-"] {
            assert_eq!(apply(bad), Err(bad));
        }
        apply("tag, caller ,poison=0xAA,fail=5,cold-first").unwrap();
        assert_eq!(object_modes(), (M_TAG | M_CALLER | M_POISON | M_FAIL | M_COLD_FIRST, 0xAA, 5));
        apply("no-tag,hot-first,fail=0,no-caller,no-poison,poison=0x50,no-poison").unwrap();
        assert_eq!(object_modes().0, 0);
        assert_eq!(object_modes().1, 0x50);
    }

    #[test]
    fn fault_injection_spares_critical_sections_and_is_fixed_at_creation() {
        let _g = modes_lock();
        apply("fail=100").unwrap();
        let p = crate::pool::create(b"f", 64, 0, 0);
        apply("fail=0").unwrap();
        // SAFETY: a live pool, destroyed below.
        let pool = unsafe { &*p };
        assert!(pool.alloc().is_null());
        assert!(pool.alloc_nocache().is_null());
        assert_eq!(pool.failed(), 2);
        let o = {
            let _c = critical();
            pool.alloc()
        };
        assert!(!o.is_null(), "a critical allocation is spared");
        assert!(pool.alloc().is_null(), "the guard is gone, the pool still has fail=100");
        // SAFETY: from `pool`, given back once.
        unsafe { pool.free(o) };
        assert!(crate::pool::destroy(p, |_| {}).is_null());
    }

    #[test]
    fn critical_sections_nest() {
        assert!(!in_critical());
        let a = critical();
        let b = critical();
        drop(a);
        assert!(in_critical());
        drop(b);
        assert!(!in_critical());
    }
}
