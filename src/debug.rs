//! Debug modes, set by `BUFPOOL_DEBUG` (read once, at first use) or by
//! `pool_set_debugging()`. Each mode is one relaxed atomic read where it
//! acts, so a build with no mode set pays one predictable branch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// `race-window=N`: 0 off, `YIELD` for `sched_yield()`, else N `pause`s.
static RACE_WINDOW: AtomicUsize = AtomicUsize::new(0);
const YIELD: usize = usize::MAX;
/// `no-cache`: pools created from now on get no thread cache.
static NO_CACHE: AtomicBool = AtomicBool::new(false);
/// `no-global`: pools created from now on get no shared cache.
static NO_GLOBAL: AtomicBool = AtomicBool::new(false);

static ENV_ONCE: Once = Once::new();

const HELP: &str = "bufpool: BUFPOOL_DEBUG takes a comma-separated list of:\n\
  no-cache         pools created afterwards get no thread cache\n\
  no-global        pools created afterwards get no shared cache\n\
  race-window=N    spin N pauses (or 'yield') between reading a shared-cache head and its link,\n\
                   in every shared-cache algorithm (DWCAS then crashes when objects go to the OS)\n\
  help             print this list\n";

/// Reads `BUFPOOL_DEBUG` once. Called at every entry that creates state.
pub(crate) fn init_from_env() {
    ENV_ONCE.call_once(|| {
        if let Ok(v) = std::env::var("BUFPOOL_DEBUG") {
            if let Err(word) = apply(&v) {
                eprintln!("bufpool: unknown BUFPOOL_DEBUG word '{word}' (try BUFPOOL_DEBUG=help); variable ignored");
            }
        }
    });
}

/// Applies a comma-separated option list. All words are checked before any
/// takes effect; on a bad word nothing changes and the word is returned.
pub(crate) fn apply(opts: &str) -> Result<(), String> {
    let mut race = None;
    let mut no_cache = None;
    let mut no_global = None;
    let mut help = false;
    for word in opts.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (key, val) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        match (key, val) {
            ("no-cache", None) => no_cache = Some(true),
            ("no-global", None) => no_global = Some(true),
            ("race-window", Some("yield")) => race = Some(YIELD),
            ("race-window", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n < YIELD => race = Some(n),
                _ => return Err(word.to_string()),
            },
            ("help", None) => help = true,
            _ => return Err(word.to_string()),
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
    Ok(())
}

pub(crate) fn no_cache() -> bool {
    NO_CACHE.load(Ordering::Relaxed)
}

pub(crate) fn no_global() -> bool {
    NO_GLOBAL.load(Ordering::Relaxed)
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
