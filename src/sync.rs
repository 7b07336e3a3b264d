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
pub(crate) struct ForkSlot<G>(core::cell::UnsafeCell<Option<G>>);

// SAFETY: only the thread running the fork handlers touches the slot, and
// only while it holds the lock the slot keeps the guard of: `put` is called
// with that lock held, `take` by the same thread before anyone else can
// take the lock. Two forking threads are serialised by that very lock.
unsafe impl<G> Sync for ForkSlot<G> {}

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
pub(crate) use loom::sync::{atomic::AtomicU32, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic::AtomicU32, Condvar, Mutex, MutexGuard};

/// A number that identifies the calling thread among the live ones: the
/// address of a thread-local byte.
pub(crate) fn thread_token() -> usize {
    #[cfg(not(loom))]
    std::thread_local! { static TOKEN: u8 = const { 0 }; }
    #[cfg(loom)]
    loom::thread_local! { static TOKEN: u8 = 0; }
    TOKEN.with(|t| t as *const u8 as usize)
}
