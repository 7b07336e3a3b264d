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
//! A slice does at most about 0.4 ms of work (it stops between
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

/// Objects one pool gives back per batch of a slice (64 objects of 16
/// KiB: about an eighth of a millisecond of madvise or munmap here), so
/// that a slice overruns its time by that much at most.
const RELEASE_BATCH: usize = 64;
/// The time a slice may take, ns.
const SLICE_NS: u64 = 400_000;
/// Releases between ticks while objects are owed back: every release runs
/// a slice then (a slice is at most about 0.4 ms), so that a
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

/// The release period changed (`pool_set_release_period`): the next tick
/// looks again, and the decay follows the new period from now (a due time
/// computed under the old one, `UINT_MAX`'s minute say, must not stand).
pub(crate) fn period_changed() {
    // Relaxed: hints of when to look; a tick racing the change looks now or soon.
    NEXT_DUE.store(0, Relaxed);
    NEXT_DECAY.store(0, Relaxed);
}

/// `pool_maintain()`: one slice now; the ms until the next one is due.
pub(crate) fn maintain_now() -> u64 {
    init_from_env();
    restart_thread_if_lost();
    let now = os::now_ms();
    run(now, true).saturating_sub(now)
}

/// Runs one slice of the work due at `now` (ms): the thread caches' decay
/// once a window (a quarter of the period), then each pool's release, until the slice's time is up.
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
            NEXT_DECAY.store(now + (period as u64 / pool::WINDOWS as u64).max(1), Relaxed);
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
            let (done, due) = p.maintain(now, RELEASE_BATCH);
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

/// The thread's state, under its mutex: whether it is wanted, whether one
/// runs (from its creation until it has decided, under the mutex, to exit),
/// its id (to join it), and the pid it runs in (a child after `fork()` has
/// none of its parent's threads).
struct Control {
    wanted: bool,
    running: bool,
    tid: libc::pthread_t,
    pid: libc::pid_t,
}

/// The thread's state and its wake-up. Lock order: after every other lock
/// of the library (the thread takes nothing while it holds it, and the
/// fork handlers take it last).
static CONTROL: Mutex<Control> = Mutex::new(Control { wanted: false, running: false, tid: 0, pid: 0 });
static WAKE: Condvar = Condvar::new();
/// The thread is wanted: a hint for the free path's tick (read without the
/// mutex; `start_thread` decides under it).
static WANTED: AtomicBool = AtomicBool::new(false);
/// A thread runs in this process: a hint for the tick, so that it takes no
/// lock while the thread runs (set by `start_thread`, cleared when the
/// thread decides to exit and in a forked child).
static ALIVE: AtomicBool = AtomicBool::new(false);
/// Starts and stops are one at a time (a stop joins the thread with the
/// state's mutex let go). Outermost of the library's locks.
static STARTSTOP: Mutex<()> = Mutex::new(());

fn control() -> std::sync::MutexGuard<'static, Control> {
    CONTROL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `pool_maintenance_thread(on)`: starts the thread (returns once it is
/// created) or stops it (returns once it has exited). False when it could
/// not be started.
pub(crate) fn set_thread(on: bool) -> bool {
    let _one = STARTSTOP.lock().unwrap_or_else(|e| e.into_inner());
    WANTED.store(on, Relaxed);
    if on {
        return start_thread();
    }
    let tid = {
        let mut c = control();
        c.wanted = false;
        WAKE.notify_all();
        // A thread of this process only (after fork() the parent's is not ours).
        // SAFETY: getpid has no preconditions.
        if c.running && c.pid == unsafe { libc::getpid() } {
            Some(c.tid)
        } else {
            None
        }
    };
    if let Some(tid) = tid {
        // SAFETY: a joinable thread we created and nobody else joins
        // (starts and stops are serialised by STARTSTOP).
        unsafe { libc::pthread_join(tid, std::ptr::null_mut()) };
    }
    true
}

/// In a child after `fork()`, or whenever the thread was lost: start it
/// again if it is wanted. Never waits (the free path calls it).
fn restart_thread_if_lost() {
    // Relaxed, both: hints; the decision is made under the mutexes.
    if !WANTED.load(Relaxed) || ALIVE.load(Relaxed) {
        return;
    }
    let Ok(_one) = STARTSTOP.try_lock() else { return };
    // Again under STARTSTOP: a stop that ran since our look wins.
    if WANTED.load(Relaxed) {
        start_thread();
    }
}

/// Starts the thread unless one runs. The caller holds STARTSTOP.
fn start_thread() -> bool {
    let mut c = control();
    c.wanted = true;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if c.running && c.pid == pid {
        return true; // it will see `wanted` when it looks next
    }
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `thread_main` has the start-routine ABI and takes no argument;
    // the attributes are the defaults (joinable).
    let ok = unsafe { libc::pthread_create(&mut tid, std::ptr::null(), thread_main, std::ptr::null_mut()) } == 0;
    if ok {
        c.running = true;
        c.tid = tid;
        c.pid = pid;
        ALIVE.store(true, Relaxed);
    }
    ok
}

extern "C" fn thread_main(_: *mut libc::c_void) -> *mut libc::c_void {
    loop {
        let now = os::now_ms();
        let next = run(now, true);
        trim_heap();
        let wait = next.saturating_sub(now).clamp(1, 1000);
        let g = control();
        crate::sync::race_window();
        if !g.wanted {
            return exit_thread(g);
        }
        let (g, _) = WAKE.wait_timeout(g, std::time::Duration::from_millis(wait)).unwrap_or_else(|e| e.into_inner());
        crate::sync::race_window();
        if !g.wanted {
            return exit_thread(g);
        }
    }
}

/// The thread decides to exit, under the mutex: from then on a start makes
/// a new one.
fn exit_thread(mut g: std::sync::MutexGuard<'static, Control>) -> *mut libc::c_void {
    g.running = false;
    ALIVE.store(false, Relaxed);
    std::ptr::null_mut()
}

/// The state's locks, held across `fork()` by the forking thread.
#[cfg(not(loom))]
static FORK_HELD: crate::sync::ForkSlot<(std::sync::MutexGuard<'static, ()>, std::sync::MutexGuard<'static, Control>)> =
    crate::sync::ForkSlot::new();

/// Before `fork()`: a stop or start in progress finishes first (STARTSTOP,
/// the outermost lock), and the thread's state is not in the middle of a
/// change (CONTROL, the innermost): the child must find both free.
#[cfg(not(loom))]
pub(crate) fn fork_prepare_outer() {
    let one = STARTSTOP.lock().unwrap_or_else(|e| e.into_inner());
    FORK_OUTER.put(one);
}

#[cfg(not(loom))]
static FORK_OUTER: crate::sync::ForkSlot<std::sync::MutexGuard<'static, ()>> = crate::sync::ForkSlot::new();

/// See `fork_prepare_outer`: after every other lock of the library.
#[cfg(not(loom))]
pub(crate) fn fork_prepare_inner() {
    let c = control();
    if let Some(one) = FORK_OUTER.take() {
        FORK_HELD.put((one, c));
    }
}

/// After `fork()`, in the parent: lets both go.
#[cfg(not(loom))]
pub(crate) fn fork_parent() {
    drop(FORK_HELD.take());
}

/// After `fork()`, in the child: the thread and any slice in progress
/// belong to the parent; both locks are let go (this thread took them).
#[cfg(not(loom))]
pub(crate) fn fork_child() {
    if let Some((one, mut c)) = FORK_HELD.take() {
        c.running = false;
        drop(c);
        drop(one);
    }
    ALIVE.store(false, Relaxed);
    RUNNING.store(false, Relaxed);
    NEXT_DUE.store(0, Relaxed);
}
