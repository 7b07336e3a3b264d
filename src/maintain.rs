//! Who gives memory back, and when: the time-based release of every pool
//! (`Pool::maintain`) and the decay of idle thread caches
//! (`cache::decay_all`), run in slices.
//!
//! No thread is started behind the program's back. The work runs inside
//! the library's own calls:
//!
//! - a tick on the free path: each thread's cache counts down its releases
//!   (a decrement on the fast path); every 32 releases (every release while
//!   objects are still owed back) the thread reads the coarse clock and,
//!   when work is due, runs one slice of it;
//! - `pool_maintain()`, for an event loop's timer when the program goes
//!   idle: one slice, and the milliseconds until the next is due;
//! - an opt-in maintenance thread (`pool_maintenance_thread(1)` or
//!   `BUFPOOL_MAINTENANCE=thread`), safe across `fork()`: the child does
//!   not inherit the dead thread's state, and starts its own at its first
//!   tick or `pool_maintain()`.
//!
//! A slice does at most about half a millisecond of work (it stops between
//! batches once that much time has passed) and never waits for a lock held
//! elsewhere: on the free path, a thread that finds another slice running,
//! or the registry busy, goes on. `pool_gc()` is the immediate version of
//! the same work, without the slicing.

use crate::{cache, os, pool, registry};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Condvar, Mutex, Once};

/// When the next slice is due, ms of `os::now_ms` (0: now).
static NEXT_DUE: AtomicU64 = AtomicU64::new(0);
/// When the thread caches next decay, ms.
static NEXT_DECAY: AtomicU64 = AtomicU64::new(0);
/// A slice is running (one at a time).
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Objects still owed back after the last slice (the ticks come faster).
static OWED: AtomicUsize = AtomicUsize::new(0);
/// Objects of heap pools given back since malloc was last trimmed.
static HEAP_RELEASED: AtomicUsize = AtomicUsize::new(0);

/// Objects one pool gives back per batch of a slice (128 objects of 16
/// KiB: about a quarter of a millisecond of munmap here).
const BATCH: usize = 128;
/// The time a slice may take, ns.
const SLICE_NS: u64 = 500_000;
/// Releases between ticks while objects are owed back: every release runs
/// a slice then (a slice is at most about half a millisecond), so that a
/// spike given back under light traffic goes in a few hundred ms.
const TICK_BUSY: u32 = 1;

static ENV: Once = Once::new();

/// Reads `BUFPOOL_RELEASE_PERIOD` (ms) and `BUFPOOL_MAINTENANCE=thread`
/// once, at the first call that creates state or changes the period.
pub(crate) fn init_from_env() {
    ENV.call_once(|| {
        if let Some(v) = env(c"BUFPOOL_RELEASE_PERIOD") {
            match v.trim().parse::<u32>() {
                Ok(ms) => pool::set_release_period(ms),
                Err(_) => eprintln!("bufpool: BUFPOOL_RELEASE_PERIOD='{v}' is not a number of ms; ignored"),
            }
        }
        if env(c"BUFPOOL_MAINTENANCE") == Some("thread") {
            set_thread(true);
        }
    });
}

/// An environment variable, without heap allocation (not UTF-8: "?").
fn env(name: &std::ffi::CStr) -> Option<&'static str> {
    // SAFETY: a NUL-terminated name; the result is null or a C string of the environment.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: getenv returned a NUL-terminated string, which the environment keeps.
    (!v.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(v) }.to_str().unwrap_or("?"))
}

/// The free path's tick (a thread's countdown ran out): rearms it, and
/// runs a slice when one is due.
#[cold]
#[inline(never)]
pub(crate) fn tick() {
    restart_thread_if_lost();
    let now = os::now_ms();
    // Relaxed: a hint of when to look; the slice itself is serialised by RUNNING.
    if now >= NEXT_DUE.load(Relaxed) {
        run(now, false);
    }
    let owed = OWED.load(Relaxed) != 0;
    cache::rearm(if owed { TICK_BUSY } else { cache::TICK_EVERY });
}

/// `pool_maintain()`: one slice now; the ms until the next one is due.
pub(crate) fn maintain_now() -> u64 {
    init_from_env();
    restart_thread_if_lost();
    let now = os::now_ms();
    run(now, true).saturating_sub(now)
}

/// Runs one slice of the work due at `now` (ms): the thread caches' decay
/// once a period, then each pool's release, until the slice's time is up.
/// `wait`: the caller may wait for the registry (not on the free path).
/// Returns when the next slice is due.
fn run(now: u64, wait: bool) -> u64 {
    // Acquire: pairs with the Release below; one slice at a time.
    if RUNNING.swap(true, Acquire) {
        return NEXT_DUE.load(Relaxed);
    }
    let period = pool::release_period();
    let start = fine_ns();
    if period != u32::MAX && now >= NEXT_DECAY.load(Relaxed) {
        let decayed = if wait {
            cache::decay_all();
            true
        } else {
            cache::try_decay_all()
        };
        if decayed {
            NEXT_DECAY.store(now + period.max(1) as u64, Relaxed);
        }
    }
    let mut next = now.saturating_add(if period == u32::MAX { 60_000 } else { period.max(1) as u64 });
    let mut owed = 0usize;
    let mut out_of_time = false;
    let mut visit = |p: &pool::Pool| {
        loop {
            if out_of_time {
                // Not visited this slice: it may owe; the next slice is due now.
                next = now;
                owed += 1;
                return;
            }
            let (done, due) = p.maintain(now, BATCH);
            if p.on_heap() {
                HEAP_RELEASED.fetch_add(done, Relaxed);
            }
            if fine_ns().saturating_sub(start) > SLICE_NS {
                out_of_time = true;
            }
            if due > now || done == 0 {
                next = next.min(due);
                owed += (due <= now) as usize;
                return;
            }
            // Still owed: another batch of this pool while time remains.
        }
    };
    let visited = if wait {
        registry::for_each(&mut visit);
        true
    } else {
        registry::try_for_each(&mut visit)
    };
    if !visited {
        next = now;
    }
    OWED.store(owed, Relaxed);
    pool::set_hurry(owed != 0);
    NEXT_DUE.store(next, Relaxed);
    // Release: the next slice sees this one's work.
    RUNNING.store(false, Release);
    next
}

/// A fine-grained clock, ns, for the length of a slice.
fn fine_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Trims malloc when heap pools gave objects back since the last trim (the
/// maintenance thread and `pool_gc` only: a trim of a large heap is not
/// bounded, so the free path never does it).
fn trim_heap() {
    if HEAP_RELEASED.swap(0, Relaxed) != 0 {
        os::trim_malloc();
    }
}

// ---- the maintenance thread ----------------------------------------------

/// The thread is wanted (opt-in).
static WANTED: AtomicBool = AtomicBool::new(false);
/// The thread runs in this process.
static ALIVE: AtomicBool = AtomicBool::new(false);
/// Wakes the thread early (to stop it).
static WAKE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// `pool_maintenance_thread(on)`: starts or stops the thread. False when it
/// could not be started.
pub(crate) fn set_thread(on: bool) -> bool {
    WANTED.store(on, Relaxed);
    if on {
        start_thread()
    } else {
        *WAKE.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        WAKE.1.notify_all();
        true
    }
}

/// In a child after `fork()`, or whenever the thread was lost: start it
/// again if it is wanted.
fn restart_thread_if_lost() {
    // Relaxed, both: hints; `start_thread` settles the race with a swap.
    if WANTED.load(Relaxed) && !ALIVE.load(Relaxed) {
        start_thread();
    }
}

fn start_thread() -> bool {
    // AcqRel: one starter wins.
    if ALIVE.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return true;
    }
    *WAKE.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `thread_main` has the start-routine ABI and takes no argument;
    // the attributes are the defaults.
    let ok = unsafe { libc::pthread_create(&mut tid, std::ptr::null(), thread_main, std::ptr::null_mut()) } == 0;
    if ok {
        // SAFETY: a thread just created, never joined.
        unsafe { libc::pthread_detach(tid) };
    } else {
        ALIVE.store(false, Relaxed);
    }
    ok
}

extern "C" fn thread_main(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        if !WANTED.load(Relaxed) {
            break;
        }
        let now = os::now_ms();
        let next = run(now, true);
        trim_heap();
        let wait = next.saturating_sub(now).clamp(1, 1000);
        let g = WAKE.0.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = WAKE.1.wait_timeout(g, std::time::Duration::from_millis(wait)).unwrap_or_else(|e| e.into_inner());
        if *g {
            break;
        }
    }
    ALIVE.store(false, Relaxed);
    std::ptr::null_mut()
}

/// In a child after `fork()`: the thread and any slice in progress belong
/// to the parent.
pub(crate) fn fork_child() {
    ALIVE.store(false, Relaxed);
    RUNNING.store(false, Relaxed);
    NEXT_DUE.store(0, Relaxed);
}
