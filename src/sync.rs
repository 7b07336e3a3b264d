//! One place that decides where atomics, cells and spinning come from:
//! `std` in the real build, `loom` under `cfg(loom)` so that the lock-free
//! pieces can be model-checked with the very same source.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicPtr};
#[cfg(not(loom))]
#[allow(unused_imports)] // `fence` is used by the loom build only
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicPtr};

pub(crate) use std::sync::atomic::Ordering;

/// Backs off in a spin wait: a few `pause` first, then `sched_yield()`, so
/// that 16 threads on 2 cores do not spin out whole time slices while the
/// holder of a lock is descheduled. Under loom it yields to the model.
pub(crate) struct Spin {
    #[cfg(not(loom))]
    backoff: crossbeam_utils::Backoff,
}

impl Spin {
    #[inline]
    pub(crate) fn new() -> Self {
        Spin {
            #[cfg(not(loom))]
            backoff: crossbeam_utils::Backoff::new(),
        }
    }

    #[inline]
    pub(crate) fn wait(&mut self) {
        #[cfg(not(loom))]
        self.backoff.snooze();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}

/// `pause`s between two looks at a held head (`wait_held`): about 1 us
/// on this machine's CPUs (16 ns a `pause`).
#[cfg(not(loom))]
pub(crate) const PAUSES_BETWEEN_LOOKS: u32 = 64;

/// Waits a while for another thread to let go of a self-locked head:
/// `PAUSES_BETWEEN_LOOKS` pauses without touching the head's line, then a
/// `sched_yield()`. The caller looks again afterwards.
///
/// Why not `Spin`: its first waits are a few pauses each, so a waiter
/// reads the head again and again while it is held; each read takes the
/// line from the holder, whose release store must then fetch it back, and
/// two threads that share the head run at a third of a hand-written list's
/// speed (docs/BENCH.md). Looking once a microsecond lets the holder run
/// several operations with the line in its cache; the yield lets a holder
/// that was descheduled run.
#[inline]
pub(crate) fn wait_held() {
    #[cfg(not(loom))]
    {
        for _ in 0..PAUSES_BETWEEN_LOOKS {
            core::hint::spin_loop();
        }
        std::thread::yield_now();
    }
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A cell whose accesses loom can see; a plain `UnsafeCell` otherwise.
/// `repr(transparent)` in the real build: it lays over an object's first word.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct RawCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> RawCell<T> {
    #[allow(dead_code)]
    pub(crate) const fn new(v: T) -> Self {
        RawCell(core::cell::UnsafeCell::new(v))
    }
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell as RawCell;

/// Releases a lock word. A plain store is the right thing on hardware;
/// under loom a spinner never sees a plain store "happen" in a bounded
/// model, so the release is a swap there (as the project notes require).
#[inline(always)]
pub(crate) fn release_store<T>(p: &AtomicPtr<T>, v: *mut T) {
    #[cfg(not(loom))]
    p.store(v, Ordering::Release);
    #[cfg(loom)]
    {
        p.swap(v, Ordering::Release);
    }
}

#[inline(always)]
pub(crate) fn release_flag(b: &AtomicBool) {
    #[cfg(not(loom))]
    b.store(false, Ordering::Release);
    #[cfg(loom)]
    {
        b.swap(false, Ordering::Release);
    }
}

/// Clears a flag word (to 0) with Release, as `release_store` does.
#[inline(always)]
pub(crate) fn release_u32(w: &AtomicU32) {
    #[cfg(not(loom))]
    w.store(0, Ordering::Release);
    #[cfg(loom)]
    {
        w.swap(0, Ordering::Release);
    }
}

/// A place where the thread that calls `fork()` keeps the guards of the
/// locks it took in the prepare handler, until the parent or child handler
/// (on the same thread) lets them go.
#[cfg(not(loom))]
pub(crate) struct ForkSlot<G>(core::cell::UnsafeCell<Option<G>>);

// SAFETY: only the thread running the fork handlers touches the slot, and
// only while it holds the lock the slot keeps the guard of: `put` is called
// with that lock held, `take` by the same thread before anyone else can
// take the lock. Two forking threads are serialised by that very lock.
#[cfg(not(loom))]
unsafe impl<G> Sync for ForkSlot<G> {}

#[cfg(not(loom))]
impl<G> ForkSlot<G> {
    pub(crate) const fn new() -> Self {
        ForkSlot(core::cell::UnsafeCell::new(None))
    }

    /// Keeps a guard; the caller holds the lock the guard is of.
    pub(crate) fn put(&self, g: G) {
        // SAFETY: see the Sync impl: we hold the lock, so we are the only user.
        unsafe { *self.0.get() = Some(g) };
    }

    /// Gives the guard back, on the thread that `put` it.
    pub(crate) fn take(&self) -> Option<G> {
        // SAFETY: see the Sync impl.
        unsafe { (*self.0.get()).take() }
    }
}

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU32, AtomicU64},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU32, AtomicU64},
    Condvar, Mutex, MutexGuard,
};

/// A number that identifies the calling thread among the live ones: the
/// address of a thread-local byte.
pub(crate) fn thread_token() -> usize {
    #[cfg(not(loom))]
    std::thread_local! { static TOKEN: u8 = const { 0 }; }
    #[cfg(loom)]
    loom::thread_local! { static TOKEN: u8 = 0; }
    TOKEN.with(|t| t as *const u8 as usize)
}

// ---- the race window ------------------------------------------------------

/// `race-window=N` (a `BUFPOOL_DEBUG` word): 0 off, `RACE_YIELD` for
/// `sched_yield()`, else N `pause`s. It widens, in every shared-cache
/// algorithm, the window between reading the head and reading the link of
/// the object the head names: the window in which the lock-free list can
/// read memory another thread already gave back to the OS; and the window
/// in which the maintenance thread holds its mutex (which a `fork()` must
/// not cut); and the window in which a search at a pool's limit holds a
/// thread's stack between reading and taking from it (what an owner that
/// ignored the protocol, as a broken inline fast path would, runs into).
/// It belongs to the races, not to debugging, hence here.
static RACE_WINDOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub(crate) const RACE_YIELD: usize = usize::MAX;

/// Sets the race window (see `RACE_WINDOW`).
pub(crate) fn set_race_window(n: usize) {
    // Relaxed: a setting; when it takes effect does not matter.
    RACE_WINDOW.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Widens the window between reading a shared-cache head and reading the
/// link of the object it names, when `race-window` is set. Every shared
/// cache algorithm calls it at that point.
#[inline(always)]
pub(crate) fn race_window() {
    #[cfg(not(loom))]
    {
        // Relaxed: a setting; when it takes effect does not matter.
        let n = RACE_WINDOW.load(std::sync::atomic::Ordering::Relaxed);
        if n != 0 {
            race_window_slow(n);
        }
    }
}

#[cold]
#[inline(never)]
#[cfg(not(loom))]
fn race_window_slow(n: usize) {
    if n == RACE_YIELD {
        std::thread::yield_now();
    } else {
        for _ in 0..n {
            core::hint::spin_loop();
        }
    }
}

// ---- a spin lock for the debug paths ----------------------------------------

/// A small lock of our own rather than `std::sync::Mutex`: its acquire and
/// release are atomics compiled into this crate, so ThreadSanitizer sees
/// the hand-over of objects between threads through a debug pool (std's
/// mutex is compiled into an uninstrumented std), and it can be held
/// across `fork()`. Debug paths only: waiters yield, never sleep. Always
/// std atomics (it is not part of any loom model).
pub(crate) struct SpinLock<T> {
    held: std::sync::atomic::AtomicBool,
    val: core::cell::UnsafeCell<T>,
}

// SAFETY: `val` is only reached through a `Guard`, one at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

pub(crate) struct SpinGuard<'a, T>(&'a SpinLock<T>);

impl<T> SpinLock<T> {
    pub(crate) const fn new(v: T) -> Self {
        SpinLock { held: std::sync::atomic::AtomicBool::new(false), val: core::cell::UnsafeCell::new(v) }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        // Acquire: pairs with the Release in `drop(SpinGuard)`: we see the last holder's writes.
        while self.held.swap(true, std::sync::atomic::Ordering::Acquire) {
            std::thread::yield_now();
        }
        SpinGuard(self)
    }

    /// Takes the lock and keeps it past this call (across `fork()`).
    #[cfg(not(loom))]
    pub(crate) fn lock_forever(&self) {
        std::mem::forget(self.lock());
    }

    /// Releases a lock taken by `lock_forever`.
    ///
    /// # Safety
    /// This thread took it with `lock_forever` and holds no guard of it.
    #[cfg(not(loom))]
    pub(crate) unsafe fn unlock_forever(&self) {
        // Release: as in `drop(SpinGuard)`.
        self.held.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.0.val.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock.
        unsafe { &mut *self.0.val.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release: publishes our writes to the next holder.
        self.0.held.store(false, std::sync::atomic::Ordering::Release);
    }
}
