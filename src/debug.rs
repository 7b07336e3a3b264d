//! Debug modes, set by `BUFPOOL_DEBUG` (read once, at first use) or by
//! `pool_set_debugging()`.
//!
//! Two kinds of modes:
//! - process-wide switches read where they act (`no-cache`, `no-global`,
//!   `race-window`): one relaxed load each;
//! - object modes (`poison`, `integrity`, `tag`, `caller`, `cold-first`,
//!   `uaf`, `fail`), fixed into each pool when it is created
//!   ([`Checks`]). A pool with any object mode gets no thread cache and
//!   keeps its idle objects in a debug store apart from their memory
//!   (`shared::debug_store`), so the fast path is untouched and every
//!   alloc/free of such a pool takes the slow path, where the pool calls
//!   the hooks of [`object`]: refuse (`fail`), hand out, check a free,
//!   retire. Pools created before a mode is turned on keep working without it.
//!
//! One table, [`WORDS`], drives the parsing, the `help` text and the
//! modes shown by `dump_pools_to_fd`.

pub(crate) mod object;

use crate::sync::RACE_YIELD;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Once;

pub(crate) use object::{die, Checks};

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

/// What a word does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An object mode (its `M_*` bit); `no-WORD` turns it off.
    Mode(u32),
    /// `poison` or `poison=BYTE`: the `M_POISON` mode and its byte.
    Poison,
    /// `fail=PERCENT`: the `M_FAIL` mode and its share (0 turns it off).
    Fail,
    /// A process-wide switch: `no-cache` / `cache`.
    NoCache,
    /// A process-wide switch: `no-global` / `global`.
    NoGlobal,
    /// `race-window=N|yield`.
    RaceWindow,
    /// `help`.
    Help,
}

/// A debug word: its name, what follows it in the help, what it does.
struct Word {
    name: &'static str,
    arg: &'static str,
    kind: Kind,
    help: &'static str,
}

/// Every word, in the order of the help text. Object modes keep the order
/// of their bits: `dump_pools_to_fd` names them in this order.
const WORDS: [Word; 11] = [
    Word {
        name: "poison",
        arg: "[=BYTE]",
        kind: Kind::Poison,
        help: "fill each object handed out with BYTE (default 0x50; 0..255, decimal or 0x..)",
    },
    Word {
        name: "integrity",
        arg: "",
        kind: Kind::Mode(M_INTEGRITY),
        help: "fill idle objects with a changing pattern, check it on reuse (write after free)",
    },
    Word {
        name: "tag",
        arg: "",
        kind: Kind::Mode(M_TAG),
        help: "a word after each object names its pool: double, wrong-pool and foreign frees abort",
    },
    Word {
        name: "caller",
        arg: "",
        kind: Kind::Mode(M_CALLER),
        help: "remember the last allocating/freeing caller of each object, shown on abort",
    },
    Word {
        name: "cold-first",
        arg: "",
        kind: Kind::Mode(M_COLD_FIRST),
        help: "reuse the idle object freed longest ago first (FIFO), not the last one",
    },
    Word {
        name: "uaf",
        arg: "",
        kind: Kind::Mode(M_UAF),
        help: "each object in its own mapping, unmapped on free (use after free faults)",
    },
    Word {
        name: "fail",
        arg: "=PERCENT",
        kind: Kind::Fail,
        help: "make PERCENT % of allocations fail (0..100); buffer allocations of the classes DB_MUX_TX \
               and DB_PERMANENT are spared",
    },
    Word { name: "no-cache", arg: "", kind: Kind::NoCache, help: "no thread cache" },
    Word { name: "no-global", arg: "", kind: Kind::NoGlobal, help: "no shared cache" },
    Word {
        name: "race-window",
        arg: "=N",
        kind: Kind::RaceWindow,
        help: "spin N pauses (or 'yield') between reading a shared-cache head and its link, in every \
               shared-cache algorithm (DWCAS then crashes when objects go to the OS), and while the \
               maintenance thread holds its lock (for fork tests)",
    },
    Word { name: "help", arg: "", kind: Kind::Help, help: "print this list" },
];

/// The last line of the help text.
const HELP_TAIL: &str = "Object modes (poison..uaf, fail) apply to pools created afterwards; 'no-WORD' turns one off \
                         ('cache', 'global', 'hot-first', 'fail=0', 'race-window=0' likewise).";

/// The name of each object-mode bit, in bit order (for the dump).
fn mode_name(bit: u32) -> &'static str {
    WORDS
        .iter()
        .find(|w| match w.kind {
            Kind::Mode(b) => b == bit,
            Kind::Poison => bit == M_POISON,
            Kind::Fail => bit == M_FAIL,
            _ => false,
        })
        .map_or("?", |w| w.name)
}

/// Writes `text` wrapped at 100 columns, every line after the first
/// indented by `indent` spaces.
fn write_wrapped(out: &mut String, text: &str, first: usize, indent: usize) {
    use std::fmt::Write;
    let mut col = first;
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 && col + 1 + word.len() > 100 {
            let _ = write!(out, "\n{:indent$}", "");
            col = indent;
        } else if i > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
}

/// The `help` text, from `WORDS`.
fn help_text() -> String {
    use std::fmt::Write;
    let mut s = String::from("bufpool: BUFPOOL_DEBUG / pool_set_debugging() take a comma-separated list of:\n");
    for w in &WORDS {
        let left = format!("{}{}", w.name, w.arg);
        let _ = write!(s, "  {left:<16} ");
        write_wrapped(&mut s, w.help, 19, 19);
    }
    s.push_str("  ");
    write_wrapped(&mut s, HELP_TAIL, 2, 2);
    s
}

static ENV_ONCE: Once = Once::new();
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
        // `hot-first` is the opposite of `cold-first`; `cache` and `global`
        // of `no-cache` and `no-global`; `no-WORD` of an object mode.
        let negates = |n: &str| WORDS.iter().any(|w| w.name == n && matches!(w.kind, Kind::Mode(_) | Kind::Poison));
        let (on, name) = match key {
            "hot-first" => (false, "cold-first"),
            "cache" => (false, "no-cache"),
            "global" => (false, "no-global"),
            k => match k.strip_prefix("no-") {
                Some(n) if negates(n) => (false, n),
                _ => (true, k),
            },
        };
        let Some(w) = WORDS.iter().find(|w| w.name == name) else { return Err(word) };
        match (w.kind, val) {
            (Kind::Mode(bit), None) => modes = if on { modes | bit } else { modes & !bit },
            (Kind::Poison, None) => modes = if on { modes | M_POISON } else { modes & !M_POISON },
            (Kind::Poison, Some(b)) if on => match parse_u32(b) {
                Some(b) if b <= 255 => {
                    poison = Some(b);
                    modes |= M_POISON;
                }
                _ => return Err(word),
            },
            (Kind::Fail, Some(n)) if on => match n.parse::<u32>() {
                Ok(n) if n <= 100 => {
                    fail = Some(n);
                    modes = if n == 0 { modes & !M_FAIL } else { modes | M_FAIL };
                }
                _ => return Err(word),
            },
            (Kind::NoCache, None) => no_cache = Some(on),
            (Kind::NoGlobal, None) => no_global = Some(on),
            (Kind::RaceWindow, Some("yield")) => race = Some(RACE_YIELD),
            (Kind::RaceWindow, Some(n)) => match n.parse::<usize>() {
                Ok(n) if n < RACE_YIELD => race = Some(n),
                _ => return Err(word),
            },
            (Kind::Help, None) => help = true,
            _ => return Err(word),
        }
    }
    if help {
        eprint!("{}", help_text());
    }
    if let Some(r) = race {
        crate::sync::set_race_window(r);
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
    (OBJ_MODES.load(Ordering::Relaxed), POISON_BYTE.load(Ordering::Relaxed) as u8, FAIL_PCT.load(Ordering::Relaxed))
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
#[cfg(not(loom))]
pub(crate) fn fork_lock() {
    object::fork_lock();
}

/// After `fork()`, parent or child: lets the registry go.
#[cfg(not(loom))]
pub(crate) fn fork_unlock() {
    // SAFETY: taken by `fork_lock` on this thread.
    unsafe { object::fork_unlock() };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    /// Mode changes would leak into pools other tests create: share their lock.
    use crate::test_support::serial as modes_lock;

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
