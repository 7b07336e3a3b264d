//! The shared cache: where a pool keeps idle objects that any thread may
//! take. Each algorithm lives in a file of its own; a pool picks one at
//! creation from its flags and keeps it for life.
//!
//! Every algorithm threads its list through the first word of each idle
//! object (a [`Link`]), so an idle object costs no memory besides itself.
//! This module depends on the leaves only (flags, sync, link).
//!
//! Each list calls [`crate::sync::race_window`] between reading its head
//! and reading the link of the object the head names: the window in which
//! the lock-free list can read memory another thread already gave back to
//! the OS (the musl crash that the self-locked head fixes). The self-locked
//! and locked lists own the list at that point, so widening it only slows
//! them down; the DWCAS list does not, and crashes. `None` has no list and
//! no link to read, so no window.

pub(crate) mod debug_store;
#[cfg(all(target_arch = "x86_64", not(loom)))]
pub(crate) mod dwcas;
pub(crate) mod locked;
pub(crate) mod xchg;

pub(crate) use crate::link::{next_of, set_next, Link};

/// The algorithm a pool uses for its shared cache.
pub(crate) enum Shared {
    /// Self-locked head (HAProxy's fix for the musl crash): the default.
    Xchg(xchg::XchgList),
    /// A lock around the list.
    Locked(locked::LockedList),
    /// The racy lock-free list, for reproduction and comparison only.
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    Dwcas(dwcas::DwcasList),
    /// No shared cache: released objects go back to the OS at once.
    None,
    /// The store of a debug pool: a deque apart from the objects' memory.
    Debug(debug_store::DebugStore),
}

impl Shared {
    /// Takes one idle object, or null when there is none.
    #[inline]
    pub(crate) fn pop(&self) -> *mut Link {
        match self {
            Shared::Xchg(l) => l.pop(),
            Shared::Locked(l) => l.pop(),
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(l) => l.pop(),
            Shared::None => core::ptr::null_mut(),
            Shared::Debug(s) => s.pop(),
        }
    }

    /// Keeps an idle object. Returns false when this algorithm keeps
    /// nothing, in which case the caller frees it to the OS.
    ///
    /// # Safety
    /// `item` is an object of this pool that the caller owns.
    #[inline]
    pub(crate) unsafe fn push(&self, item: *mut Link) -> bool {
        match self {
            // SAFETY: the caller owns `item`, in no list: what each list's push requires.
            Shared::Xchg(l) => unsafe { l.push(item) },
            // SAFETY: the caller owns `item`, in no list.
            Shared::Locked(l) => unsafe { l.push(item) },
            // SAFETY: the caller owns `item`, in no list.
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(l) => unsafe { l.push(item) },
            Shared::None => return false,
            Shared::Debug(s) => return s.push(item),
        }
        true
    }

    /// Keeps a chain of idle objects (`first` .. `last`, `n` of them): one
    /// exchange or CAS for the self-locked head, one lock for the locked
    /// list. Returns false when this store keeps nothing (the caller frees
    /// them to the OS).
    ///
    /// # Safety
    /// The chain is of this pool, owned by the caller, in no list, linked
    /// from `first` to `last`, `n` objects long.
    pub(crate) unsafe fn push_chain(&self, first: *mut Link, last: *mut Link, n: usize) -> bool {
        debug_assert!(n >= 1, "a chain of at least one object");
        match self {
            // SAFETY: the caller's guarantee, which is `push_chain`'s.
            Shared::Xchg(l) => unsafe { l.push_chain(first, last) },
            // SAFETY: the caller's guarantee, which is `push_chain`'s.
            Shared::Locked(l) => unsafe { l.push_chain(first, last) },
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(l) => {
                // One object at a time: the old list is kept as it was.
                let mut p = first;
                for _ in 0..n {
                    // SAFETY: the caller's chain: ours; read the link before pushing.
                    let next = unsafe { next_of(p) };
                    // SAFETY: an object of the caller's chain, in no list now.
                    unsafe { l.push(p) };
                    p = next;
                }
            }
            Shared::None => return false,
            Shared::Debug(s) => {
                let mut p = first;
                for _ in 0..n {
                    // SAFETY: the caller's chain: ours; read the link before pushing.
                    let next = unsafe { next_of(p) };
                    if !s.push(p) {
                        // No memory for the store: the rest goes to the OS.
                        // (Debug pools have no thread cache, so no chain
                        // longer than one reaches here.)
                        debug_assert!(p == first, "debug pools release one object at a time");
                        return false;
                    }
                    p = next;
                }
            }
        }
        true
    }

    /// Takes up to `max` (at least 1) idle objects: the chain (null-ended)
    /// and its length; (null, 0) when empty. Not for the debug store, whose
    /// objects must not be linked through their memory (debug pools have no
    /// thread cache, and give idle objects back one at a time).
    pub(crate) fn pop_batch(&self, max: usize) -> (*mut Link, usize) {
        match self {
            Shared::Xchg(l) => l.pop_batch(max),
            Shared::Locked(l) => l.pop_batch(max),
            _ => {
                debug_assert!(!self.keeps_all(), "the debug store is never popped in batches");
                // One at a time (the DWCAS list as it was).
                let first = self.pop();
                if first.is_null() {
                    return (first, 0);
                }
                let (mut last, mut n) = (first, 1);
                while n < max {
                    let p = self.pop();
                    if p.is_null() {
                        break;
                    }
                    // SAFETY: `last` and `p` were popped: ours.
                    unsafe { set_next(last, p) };
                    last = p;
                    n += 1;
                }
                // SAFETY: `last` was popped: ours.
                unsafe { set_next(last, core::ptr::null_mut()) };
                (first, n)
            }
        }
    }

    /// Does it keep every object it is given (so that its pool is never
    /// crowded)? Only the debug store does.
    pub(crate) fn keeps_all(&self) -> bool {
        matches!(self, Shared::Debug(_))
    }

    /// Detaches the whole list and returns its first object (null-terminated
    /// chain); the debug store has no chain. (For the tests: the pool gives
    /// idle objects back in batches with `pop_batch`.)
    #[cfg(all(test, not(loom)))]
    fn take_all(&self) -> *mut Link {
        match self {
            Shared::Xchg(l) => l.take_all(),
            Shared::Locked(l) => l.take_all(),
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(l) => l.take_all(),
            Shared::None => core::ptr::null_mut(),
            // Not a chain: `take_all_each` pops it one object at a time.
            Shared::Debug(_) => core::ptr::null_mut(),
        }
    }

    /// Before `fork()`: takes the list, so that no thread is inside it when
    /// the process is copied (a child would find it locked forever). The
    /// lock-free DWCAS list has no lock to take, and needs none: a thread
    /// inside it leaves it consistent at every step.
    #[cfg(not(loom))]
    pub(crate) fn fork_lock(&self) {
        match self {
            Shared::Xchg(l) => l.fork_lock(),
            Shared::Locked(l) => l.fork_lock(),
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(_) => {}
            Shared::None => {}
            Shared::Debug(s) => s.fork_lock(),
        }
    }

    /// After `fork()`, parent or child: lets the list go.
    ///
    /// # Safety
    /// `fork_lock` took it on this thread.
    #[cfg(not(loom))]
    pub(crate) unsafe fn fork_unlock(&self) {
        match self {
            // SAFETY: this thread took the list in `fork_lock` (the caller's guarantee).
            Shared::Xchg(l) => unsafe { l.fork_unlock() },
            // SAFETY: this thread took the lock in `fork_lock` (the caller's guarantee).
            Shared::Locked(l) => unsafe { l.fork_unlock() },
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(_) => {}
            Shared::None => {}
            // SAFETY: the caller's guarantee: `fork_lock` took it on this thread.
            Shared::Debug(s) => unsafe { s.fork_unlock() },
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Shared::Xchg(_) => "xchg",
            Shared::Locked(_) => "locked",
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            Shared::Dwcas(_) => "dwcas",
            Shared::None => "none",
            Shared::Debug(_) => "debug",
        }
    }
}

impl Shared {
    /// The list for the algorithm flag `algo` (one `POOL_F_SHARED_*`, or 0
    /// for the default). DWCAS needs x86-64 with `cmpxchg16b`; elsewhere,
    /// and in loom builds, it falls back to the locked list.
    pub(crate) fn for_flag(algo: u32) -> Shared {
        use crate::flags::{POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE};
        match algo {
            POOL_F_SHARED_NONE => Shared::None,
            POOL_F_SHARED_LOCKED => Shared::Locked(locked::LockedList::new()),
            #[cfg(all(target_arch = "x86_64", not(loom)))]
            POOL_F_SHARED_DWCAS => match dwcas::DwcasList::new() {
                Some(l) => Shared::Dwcas(l),
                None => Shared::Locked(locked::LockedList::new()),
            },
            #[cfg(not(all(target_arch = "x86_64", not(loom))))]
            POOL_F_SHARED_DWCAS => Shared::Locked(locked::LockedList::new()),
            _ => Shared::Xchg(xchg::XchgList::new()),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::flags::{POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE, POOL_F_SHARED_XCHG};
    use crate::sync::RawCell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LISTS: [u32; 3] = [POOL_F_SHARED_XCHG, POOL_F_SHARED_LOCKED, POOL_F_SHARED_DWCAS];

    /// A test object: the link, then an owner word.
    #[repr(C)]
    struct Obj {
        link: Link,
        owner: AtomicUsize,
    }

    fn objs(n: usize) -> Vec<*mut Link> {
        (0..n)
            .map(|_| {
                Box::into_raw(Box::new(Obj {
                    link: Link { next: RawCell::new(core::ptr::null_mut()) },
                    owner: AtomicUsize::new(0),
                }))
                .cast()
            })
            .collect()
    }

    fn free(v: Vec<*mut Link>) {
        for p in v {
            // SAFETY: made by Box::into_raw in `objs`, in no list any more.
            drop(unsafe { Box::from_raw(p.cast::<Obj>()) });
        }
    }

    #[test]
    fn each_list_is_lifo_and_take_all_detaches_it() {
        for flag in LISTS {
            let s = Shared::for_flag(flag);
            let o = objs(3);
            for &p in &o {
                // SAFETY: ours, in no list.
                assert!(unsafe { s.push(p) }, "{}", s.name());
            }
            assert_eq!(s.pop(), o[2], "{}", s.name());
            assert_eq!(s.pop(), o[1]);
            assert_eq!(s.pop(), o[0]);
            assert!(s.pop().is_null());
            // SAFETY: ours, in no list.
            unsafe { assert!(s.push(o[0]) && s.push(o[1])) };
            let chain = s.take_all();
            assert_eq!(chain, o[1]);
            // SAFETY: the detached chain is ours.
            unsafe { assert_eq!(next_of(chain), o[0]) };
            // SAFETY: `o[0]` is in the detached chain, which is ours.
            unsafe { assert!(next_of(o[0]).is_null()) };
            assert!(s.pop().is_null() && s.take_all().is_null());
            free(o);
        }
    }

    #[test]
    fn flags_pick_their_algorithm() {
        assert_eq!(Shared::for_flag(0).name(), "xchg");
        assert_eq!(Shared::for_flag(POOL_F_SHARED_XCHG).name(), "xchg");
        assert_eq!(Shared::for_flag(POOL_F_SHARED_LOCKED).name(), "locked");
        assert_eq!(Shared::for_flag(POOL_F_SHARED_NONE).name(), "none");
        let dw = if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("cmpxchg16b") {
            "dwcas"
        } else {
            "locked"
        };
        assert_eq!(Shared::for_flag(POOL_F_SHARED_DWCAS).name(), dw);
        let none = Shared::for_flag(POOL_F_SHARED_NONE);
        let o = objs(1);
        // SAFETY: ours, in no list.
        assert!(!unsafe { none.push(o[0]) });
        assert!(none.pop().is_null());
        free(o);
    }

    /// Objects stay mapped here, so even DWCAS must never hand one object to
    /// two threads at once (its counter stops ABA), nor lose one.
    #[test]
    fn threads_never_hold_the_same_object() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 20_000;
        for flag in LISTS {
            let s = Shared::for_flag(flag);
            let o = objs(THREADS * 2);
            for &p in &o {
                // SAFETY: ours, in no list.
                unsafe { s.push(p) };
            }
            let clashes = AtomicUsize::new(0);
            std::thread::scope(|sc| {
                for t in 1..=THREADS {
                    let (s, clashes) = (&s, &clashes);
                    sc.spawn(move || {
                        for _ in 0..ROUNDS {
                            let p = s.pop();
                            if p.is_null() {
                                continue;
                            }
                            // SAFETY: popped objects are live `Obj`s (freed only at the end).
                            let obj = unsafe { &*p.cast::<Obj>() };
                            // Relaxed: the swap itself detects a second holder.
                            if obj.owner.swap(t, Ordering::Relaxed) != 0 {
                                clashes.fetch_add(1, Ordering::Relaxed);
                            }
                            obj.owner.store(0, Ordering::Relaxed);
                            // SAFETY: we hold `p` and it is in no list.
                            unsafe { s.push(p) };
                        }
                    });
                }
            });
            assert_eq!(clashes.load(Ordering::Relaxed), 0, "{}", s.name());
            let mut n = 0;
            while !s.pop().is_null() {
                n += 1;
            }
            assert_eq!(n, o.len(), "{}: objects lost", s.name());
            free(o);
        }
    }
}
