//! A lock around the list (`POOL_F_SHARED_LOCKED`): the plain reference.
//!
//! One spin lock word guards a singly linked list. Waiters look at it about
//! once a microsecond and yield in between ([`wait_held`], as the self-locked
//! head does), so that 16 threads on 2 cores do not burn whole time slices
//! while the holder is descheduled, and the holder keeps the lock's line.
//! Every operation takes the lock, so a popper reads the first object's
//! link while no other thread can pop that object, let alone free it.

use super::{next_of, set_next, Link};
use crate::sync::{release_flag, wait_held, AtomicBool, Ordering, RawCell};
use crossbeam_utils::CachePadded;

pub(crate) struct LockedList {
    inner: CachePadded<Inner>,
}

/// The lock and the head share one cache line: whoever holds the one
/// touches the other next.
struct Inner {
    lock: AtomicBool,
    head: RawCell<*mut Link>,
}

// SAFETY: `head` is only read or written by the holder of `lock`.
unsafe impl Sync for LockedList {}
// SAFETY: the list holds raw object addresses only; any thread may own it.
unsafe impl Send for LockedList {}

impl LockedList {
    pub(crate) fn new() -> Self {
        LockedList {
            inner: CachePadded::new(Inner { lock: AtomicBool::new(false), head: RawCell::new(core::ptr::null_mut()) }),
        }
    }

    #[inline]
    fn lock(&self) {
        loop {
            // Acquire: pairs with the Release of `unlock`, so the head and the
            // links written by the last holder are visible to us.
            if !self.inner.lock.swap(true, Ordering::Acquire) {
                return;
            }
            // Wait on a plain read: no bus write while the lock is held.
            while self.inner.lock.load(Ordering::Relaxed) {
                wait_held();
            }
        }
    }

    #[inline]
    fn unlock(&self) {
        // Release (inside release_flag): publishes our list writes to the next holder.
        release_flag(&self.inner.lock);
    }

    /// Takes the lock and keeps it until `fork_unlock`.
    #[cfg(not(loom))]
    pub(crate) fn fork_lock(&self) {
        self.lock();
    }

    /// # Safety
    /// `fork_lock` took the lock on this thread.
    #[cfg(not(loom))]
    pub(crate) unsafe fn fork_unlock(&self) {
        self.unlock();
    }

    /// Takes the first idle object, or null when the list is empty.
    pub(crate) fn pop(&self) -> *mut Link {
        self.lock();
        // SAFETY: we hold the lock, the only way to reach `head`.
        let first = unsafe { self.inner.head.with(|h| *h) };
        if !first.is_null() {
            crate::sync::race_window();
            // SAFETY: under the lock no one else can pop `first`, so it is
            // idle, mapped, and its link is stable.
            let next = unsafe { next_of(first) };
            // SAFETY: we hold the lock.
            unsafe { self.inner.head.with_mut(|h| *h = next) };
        }
        self.unlock();
        first
    }

    /// Puts an idle object at the head.
    ///
    /// # Safety
    /// `item` is an object the caller owns and that is in no list.
    pub(crate) unsafe fn push(&self, item: *mut Link) {
        self.lock();
        // SAFETY: we hold the lock; the caller owns `item`.
        unsafe {
            let head = self.inner.head.with(|h| *h);
            set_next(item, head);
            self.inner.head.with_mut(|h| *h = item);
        }
        self.unlock();
    }

    /// Puts a chain (`first` .. `last`) at the head, under the lock.
    ///
    /// # Safety
    /// The chain is owned by the caller, in no list, linked from `first` to `last`.
    pub(crate) unsafe fn push_chain(&self, first: *mut Link, last: *mut Link) {
        self.lock();
        // SAFETY: we hold the lock; the caller owns the chain.
        unsafe {
            let head = self.inner.head.with(|h| *h);
            set_next(last, head);
            self.inner.head.with_mut(|h| *h = first);
        }
        self.unlock();
    }

    /// Takes up to `max` (at least 1) objects from the head: the chain
    /// (null-ended) and its length.
    pub(crate) fn pop_batch(&self, max: usize) -> (*mut Link, usize) {
        self.lock();
        // SAFETY: we hold the lock, the only way to reach `head`.
        let first = unsafe { self.inner.head.with(|h| *h) };
        let mut n = 0;
        if !first.is_null() {
            crate::sync::race_window();
            let (mut last, mut count) = (first, 1);
            // SAFETY: under the lock the list's objects are ours: mapped, links stable.
            let mut next = unsafe { next_of(first) };
            while count < max && !next.is_null() {
                last = next;
                count += 1;
                // SAFETY: as above.
                next = unsafe { next_of(last) };
            }
            // SAFETY: under the lock; `last` leaves the list with the batch.
            unsafe {
                set_next(last, core::ptr::null_mut());
                self.inner.head.with_mut(|h| *h = next);
            }
            n = count;
        }
        self.unlock();
        (first, n)
    }

    /// Detaches the whole list and returns its first object.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn take_all(&self) -> *mut Link {
        self.lock();
        // SAFETY: we hold the lock.
        let first = unsafe { self.inner.head.with_mut(|h| core::mem::replace(&mut *h, core::ptr::null_mut())) };
        self.unlock();
        first
    }
}
