//! The idle store of a debug pool (a pool created with an object debug
//! mode, see `crate::debug`): idle objects are kept apart from their
//! memory, in a deque under a lock, never threaded through the objects
//! themselves. A write after free then cannot corrupt a list, and the
//! `integrity` pattern covers every byte of an idle object. LIFO, or FIFO
//! with `cold-first` (the object freed longest ago is reused first, which
//! gives a write after free the longest time to show).
//!
//! It keeps every object it is given (a debug pool is never crowded: its
//! idle objects stay until flush, gc or destroy), unless memory for the
//! deque itself is short: then `push` says so and the object goes to the OS.

use crate::link::Link;
use crate::sync::SpinLock;
use std::collections::VecDeque;
use std::ptr::null_mut;

pub(crate) struct DebugStore {
    cold_first: bool,
    idle: SpinLock<VecDeque<usize>>,
}

impl DebugStore {
    pub(crate) const fn new(cold_first: bool) -> Self {
        DebugStore { cold_first, idle: SpinLock::new(VecDeque::new()) }
    }

    /// Takes an idle object (the coldest with `cold-first`); null if none.
    pub(crate) fn pop(&self) -> *mut Link {
        let mut s = self.idle.lock();
        let p = if self.cold_first { s.pop_front() } else { s.pop_back() };
        p.map_or(null_mut(), |a| a as *mut Link)
    }

    /// Keeps an idle object; false when there is no memory to keep it.
    pub(crate) fn push(&self, item: *mut Link) -> bool {
        let mut s = self.idle.lock();
        if s.try_reserve(1).is_err() {
            return false;
        }
        s.push_back(item as usize);
        true
    }

    /// Before `fork()`: takes the lock.
    #[cfg(not(loom))]
    pub(crate) fn fork_lock(&self) {
        self.idle.lock_forever();
    }

    /// # Safety
    /// `fork_lock` took the lock on this thread.
    #[cfg(not(loom))]
    pub(crate) unsafe fn fork_unlock(&self) {
        // SAFETY: the caller's guarantee: this thread holds the lock by `fork_lock`.
        unsafe { self.idle.unlock_forever() };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn lifo_or_coldest_first() {
        // Addresses only: the store never reads an object.
        let (a, b) = (core::ptr::without_provenance_mut(8), core::ptr::without_provenance_mut(16));
        let hot = DebugStore::new(false);
        assert!(hot.push(a) && hot.push(b));
        assert_eq!((hot.pop(), hot.pop(), hot.pop()), (b, a, null_mut()));
        let cold = DebugStore::new(true);
        assert!(cold.push(a) && cold.push(b));
        assert_eq!((cold.pop(), cold.pop(), cold.pop()), (a, b, null_mut()));
    }
}
