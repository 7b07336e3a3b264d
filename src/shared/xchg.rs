//! The self-locked head of seed 004.
//!
//! The head word is either null, the address of the first idle object, or
//! [`BUSY`]. A popper exchanges the head with `BUSY`: in one atomic step it
//! reads the first object and locks the list, so it is the only thread that
//! ever reads that object's link, and no other thread can pop the object,
//! use it and free it back to the OS while the link is being read (the
//! crash of the lock-free list under musl). A pusher compare-and-swaps the
//! head from the value it saw to its object; it never sees `BUSY` as an
//! expected value, so it cannot succeed while the list is locked.

use super::{next_of, set_next, Link};
use crate::sync::{release_store, AtomicPtr, Ordering, Spin};
use crossbeam_utils::CachePadded;

/// The lock marker. Objects are at least 8-byte aligned, so 1 is never one.
pub(crate) const BUSY: *mut Link = 1 as *mut Link;

pub(crate) struct XchgList {
    head: CachePadded<AtomicPtr<Link>>,
}

impl XchgList {
    pub(crate) fn new() -> Self {
        XchgList { head: CachePadded::new(AtomicPtr::new(core::ptr::null_mut())) }
    }

    /// Takes the first idle object, or null when the list is empty.
    pub(crate) fn pop(&self) -> *mut Link {
        let mut spin = Spin::new();
        loop {
            // Relaxed peek: an empty or busy list costs no bus write.
            let seen = self.head.load(Ordering::Relaxed);
            if seen.is_null() {
                return seen;
            }
            if seen == BUSY {
                spin.wait();
                continue;
            }
            // Acquire: pairs with the Release that published this object's link.
            let first = self.head.swap(BUSY, Ordering::Acquire);
            if first == BUSY {
                spin.wait();
                continue;
            }
            if first.is_null() {
                release_store(&self.head, first);
                return first;
            }
            crate::debug::race_window();
            // SAFETY: the head holds BUSY, so this thread alone owns `first`
            // until it stores the head back: no one can pop it, free it or
            // unmap it, and its link was published by the push we acquired.
            let next = unsafe { next_of(first) };
            // Release: hands the list, and what we read of it, to the next holder.
            release_store(&self.head, next);
            return first;
        }
    }

    /// Puts an idle object at the head.
    ///
    /// # Safety
    /// `item` is an object the caller owns and that is in no list.
    pub(crate) unsafe fn push(&self, item: *mut Link) {
        let mut spin = Spin::new();
        let mut seen = self.head.load(Ordering::Relaxed);
        loop {
            if seen == BUSY {
                spin.wait();
                seen = self.head.load(Ordering::Relaxed);
                continue;
            }
            // SAFETY: the caller owns `item`; it is published only by the CAS.
            unsafe { set_next(item, seen) };
            // Release: publishes the link we just wrote to the popper that acquires it.
            match self.head.compare_exchange_weak(seen, item, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// Detaches the whole list (for flush and gc) and returns its first object.
    pub(crate) fn take_all(&self) -> *mut Link {
        let mut spin = Spin::new();
        let mut seen = self.head.load(Ordering::Relaxed);
        loop {
            if seen.is_null() {
                return seen;
            }
            if seen == BUSY {
                spin.wait();
                seen = self.head.load(Ordering::Relaxed);
                continue;
            }
            // Acquire: we are about to read every link of the chain.
            match self.head.compare_exchange_weak(seen, core::ptr::null_mut(), Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return seen,
                Err(now) => seen = now,
            }
        }
    }
}
