//! The self-locked head: HAProxy's fix for the crash of the lock-free
//! shared cache under musl (a popper read the link of an object that
//! another thread had popped and freed to an allocator that unmapped it).
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
// Spin: for fork_lock and take_all only.
#[cfg(any(test, not(loom)))]
use crate::sync::Spin;
use crate::sync::{release_store, wait_held, AtomicPtr, Ordering};
use crossbeam_utils::CachePadded;

/// The lock marker. Objects are at least 8-byte aligned, so 1 is never one.
pub(crate) const BUSY: *mut Link = core::ptr::without_provenance_mut(1);

pub(crate) struct XchgList {
    head: CachePadded<AtomicPtr<Link>>,
    /// The head saved by `fork_lock` while the list is held across `fork()`.
    #[cfg(not(loom))]
    fork_saved: AtomicPtr<Link>,
}

impl XchgList {
    pub(crate) fn new() -> Self {
        XchgList {
            head: CachePadded::new(AtomicPtr::new(core::ptr::null_mut())),
            #[cfg(not(loom))]
            fork_saved: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Takes the list as a popper does (the head becomes `BUSY`) and keeps
    /// it until `fork_unlock`.
    #[cfg(not(loom))]
    pub(crate) fn fork_lock(&self) {
        let mut spin = Spin::new();
        loop {
            // Acquire: as in `pop`, we own the chain the head names.
            let seen = self.head.swap(BUSY, Ordering::Acquire);
            if seen != BUSY {
                // Relaxed: only this thread reads it back, in `fork_unlock`.
                self.fork_saved.store(seen, Ordering::Relaxed);
                return;
            }
            spin.wait();
        }
    }

    /// # Safety
    /// `fork_lock` took the list on this thread.
    #[cfg(not(loom))]
    pub(crate) unsafe fn fork_unlock(&self) {
        debug_assert_eq!(self.head.load(Ordering::Relaxed), BUSY, "held since fork_lock");
        // Relaxed: written by this thread in `fork_lock`.
        let head = self.fork_saved.load(Ordering::Relaxed);
        // Release (inside release_store): hands the list back, as `pop` does.
        release_store(&self.head, head);
    }

    /// Takes the list: returns its first object with the head left holding
    /// BUSY, so that the caller alone owns the objects until it stores the
    /// head back with `release_store`; null (the head given back at once)
    /// when the list is empty.
    fn hold(&self) -> *mut Link {
        loop {
            // Acquire: pairs with the Release that published the list's links.
            // The exchange comes first, without a peek: a load before it
            // would fetch the line shared and then again to own it, two
            // transfers where one does under contention.
            let first = self.head.swap(BUSY, Ordering::Acquire);
            if first != BUSY {
                if first.is_null() {
                    release_store(&self.head, first);
                } else {
                    crate::sync::race_window();
                }
                return first;
            }
            // Held by another thread: look once in a while (`wait_held`)
            // until it lets go.
            // Relaxed: only a hint of when to try the exchange again.
            while self.head.load(Ordering::Relaxed) == BUSY {
                wait_held();
            }
        }
    }

    /// Takes the first idle object, or null when the list is empty.
    pub(crate) fn pop(&self) -> *mut Link {
        let first = self.hold();
        if first.is_null() {
            return first;
        }
        // SAFETY: the head holds BUSY (`hold`), so this thread alone owns
        // `first` until it stores the head back: no one can pop it, free it
        // or unmap it, and its link was published by the push we acquired.
        let next = unsafe { next_of(first) };
        // Release: hands the list, and what we read of it, to the next holder.
        release_store(&self.head, next);
        first
    }

    /// Puts an idle object at the head.
    ///
    /// # Safety
    /// `item` is an object the caller owns and that is in no list.
    pub(crate) unsafe fn push(&self, item: *mut Link) {
        // SAFETY: a chain of one object, owned by the caller.
        unsafe { self.push_chain(item, item) };
    }

    /// Puts a chain of idle objects (`first` .. `last`, linked) at the
    /// head with one compare-and-swap. Only `last`'s link is written, by
    /// us, who own the chain until the CAS publishes it: the rule of the
    /// self-locked head (only the holder reads a published link) holds.
    /// (Holding the head for the push instead, as a popper does, measured
    /// up to 10% faster with two threads and the same with sixteen: not
    /// worth a second locking protocol.)
    ///
    /// # Safety
    /// The chain is owned by the caller, in no list, linked from `first` to
    /// `last`.
    pub(crate) unsafe fn push_chain(&self, first: *mut Link, last: *mut Link) {
        // SAFETY: the caller's guarantee.
        unsafe { self.push_chain_ordered(first, last, Ordering::Release) }
    }

    /// `push_chain` with the CAS's ordering as a parameter, so that a loom
    /// model can show why it must release (`loom_break_push_without_release`).
    ///
    /// # Safety
    /// As `push_chain`.
    #[inline(always)]
    unsafe fn push_chain_ordered(&self, first: *mut Link, last: *mut Link, order: Ordering) {
        let mut seen = self.head.load(Ordering::Relaxed);
        loop {
            if seen == BUSY {
                wait_held();
                seen = self.head.load(Ordering::Relaxed);
                continue;
            }
            // SAFETY: the caller owns the chain; it is published only by the CAS.
            unsafe { set_next(last, seen) };
            // Release: publishes the links of the chain to the popper that acquires it.
            match self.head.compare_exchange_weak(seen, first, order, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// Takes up to `max` (at least 1) idle objects from the head, holding
    /// the list while it walks their links. Returns the chain (null-ended)
    /// and its length; (null, 0) when the list is empty.
    pub(crate) fn pop_batch(&self, max: usize) -> (*mut Link, usize) {
        debug_assert!(max >= 1, "a batch of at least one object");
        let first = self.hold();
        if first.is_null() {
            return (first, 0);
        }
        let (mut last, mut n) = (first, 1);
        // SAFETY: the head holds BUSY (`hold`): this thread alone owns the
        // list's objects until it stores the head back, so their links are
        // stable and their memory mapped.
        let mut next = unsafe { next_of(first) };
        while n < max && !next.is_null() {
            last = next;
            n += 1;
            // SAFETY: as above: `last` is in the list we hold.
            next = unsafe { next_of(last) };
        }
        // SAFETY: `last` is ours now (cut off the list we hold).
        unsafe { set_next(last, core::ptr::null_mut()) };
        // Release: hands the rest of the list to the next holder.
        release_store(&self.head, next);
        (first, n)
    }

    /// Detaches the whole list (for flush and gc) and returns its first object.
    #[cfg(test)]
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shared::next_of;

    fn nodes(n: usize) -> Vec<*mut Link> {
        (0..n)
            .map(|_| Box::into_raw(Box::new(Link { next: crate::sync::RawCell::new(core::ptr::null_mut()) })))
            .collect()
    }

    fn free(v: &[*mut Link]) {
        for &p in v {
            // SAFETY: made by Box::into_raw in `nodes`, no longer in any list.
            drop(unsafe { Box::from_raw(p) });
        }
    }

    #[test]
    fn lifo_and_empty() {
        let l = XchgList::new();
        let v = nodes(3);
        assert!(l.pop().is_null());
        for &p in &v {
            // SAFETY: test-owned nodes, each pushed once.
            unsafe { l.push(p) };
        }
        assert_eq!(l.pop(), v[2]);
        let chain = l.take_all();
        assert_eq!(chain, v[1]);
        // SAFETY: the detached chain is ours.
        assert_eq!(unsafe { next_of(chain) }, v[0]);
        assert!(l.pop().is_null() && l.take_all().is_null());
        free(&v);
    }

    /// Many threads pop and push the same objects: none is lost or duplicated.
    #[test]
    fn threads_never_lose_or_duplicate() {
        let l = XchgList::new();
        let v = nodes(64);
        for &p in &v {
            // SAFETY: test-owned nodes, each pushed once.
            unsafe { l.push(p) };
        }
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut held = Vec::new();
                    for i in 0..20_000 {
                        if i % 3 != 2 {
                            let p = l.pop();
                            if !p.is_null() {
                                held.push(p as usize);
                            }
                        } else if let Some(p) = held.pop() {
                            // SAFETY: popped by this thread, so owned by it.
                            unsafe { l.push(p as *mut Link) };
                        }
                    }
                    for p in held {
                        // SAFETY: popped by this thread and not pushed since: owned by it.
                        unsafe { l.push(p as *mut Link) };
                    }
                });
            }
        });
        let mut seen = Vec::new();
        let mut p = l.take_all();
        while !p.is_null() {
            seen.push(p as usize);
            // SAFETY: the detached chain is ours.
            p = unsafe { next_of(p) };
        }
        seen.sort_unstable();
        let mut want: Vec<usize> = v.iter().map(|&p| p as usize).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        free(&v);
    }
}

/// Loom model: pushes, pops and flushes from 2-3 threads never lose or
/// duplicate an object, and a popper reads a link only while it holds the
/// head (loom reports a data race on the link otherwise).
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use crate::shared::next_of;
    use crate::sync::RawCell;
    use loom::sync::Arc;

    struct Nodes(Vec<usize>);

    fn node() -> usize {
        Box::into_raw(Box::new(Link { next: RawCell::new(core::ptr::null_mut()) })) as usize
    }

    fn drain(l: &XchgList, out: &mut Vec<usize>) {
        let mut p = l.take_all();
        while !p.is_null() {
            out.push(p as usize);
            // SAFETY: the detached chain is ours.
            p = unsafe { next_of(p) };
        }
    }

    fn check(mut got: Vec<usize>, nodes: Nodes) {
        got.sort_unstable();
        let mut want = nodes.0;
        want.sort_unstable();
        assert_eq!(got, want, "an object was lost or duplicated");
        for p in want {
            // SAFETY: made by Box::into_raw in `node`, out of every list now.
            drop(unsafe { Box::from_raw(p as *mut Link) });
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(2);
        b.max_branches = 100_000;
        b.check(f);
    }

    #[test]
    fn loom_pop_races_push() {
        model(|| {
            let l = Arc::new(XchgList::new());
            let (a, b) = (node(), node());
            // SAFETY: fresh node, owned here.
            unsafe { l.push(a as *mut Link) };
            let l1 = l.clone();
            let t = loom::thread::spawn(move || l1.pop() as usize);
            // SAFETY: fresh node, owned here.
            unsafe { l.push(b as *mut Link) };
            let popped = t.join().unwrap();
            let mut got = vec![];
            if popped != 0 {
                got.push(popped);
            }
            drain(&l, &mut got);
            check(got, Nodes(vec![a, b]));
        });
    }

    /// Two pushes from two threads, then two pops on a third that waited
    /// for a Relaxed count of them: each pop reads a link that a pusher
    /// wrote, published only by the pushers' CASes. `order`: the CAS's
    /// (Release as in `push_chain`; Relaxed: loom sees the race on a link).
    fn pushes_then_pops(order: Ordering) {
        model(move || {
            let l = Arc::new(XchgList::new());
            let (a, b) = (node(), node());
            // Counts the pushes done, Relaxed: it tells the popper when to
            // pop, and orders nothing (the list alone must).
            let done = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let (l1, l2, d1, d2) = (l.clone(), l.clone(), done.clone(), done.clone());
            let t1 = loom::thread::spawn(move || {
                // SAFETY: a fresh node, owned by this thread.
                unsafe { l1.push_chain_ordered(a as *mut Link, a as *mut Link, order) };
                d1.fetch_add(1, Ordering::Relaxed);
            });
            let t2 = loom::thread::spawn(move || {
                // SAFETY: as above.
                unsafe { l2.push_chain_ordered(b as *mut Link, b as *mut Link, order) };
                d2.fetch_add(1, Ordering::Relaxed);
            });
            // Popped before the pushers are joined: no join orders them first.
            while done.load(Ordering::Relaxed) < 2 {
                loom::thread::yield_now();
            }
            let got = vec![l.pop() as usize, l.pop() as usize];
            t1.join().unwrap();
            t2.join().unwrap();
            check(got, Nodes(vec![a, b]));
        });
    }

    #[test]
    fn loom_pushes_then_pops() {
        pushes_then_pops(Ordering::Release);
    }

    /// The break: a push whose CAS does not release leaves its link
    /// unordered before the popper's read of it.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_break_push_without_release() {
        pushes_then_pops(Ordering::Relaxed);
    }

    #[test]
    fn loom_two_pops_and_a_push() {
        model(|| {
            let l = Arc::new(XchgList::new());
            let (a, b, c) = (node(), node(), node());
            // SAFETY: fresh nodes, owned here.
            unsafe {
                l.push(a as *mut Link);
                l.push(b as *mut Link);
            }
            let (l1, l2) = (l.clone(), l.clone());
            let t1 = loom::thread::spawn(move || l1.pop() as usize);
            let t2 = loom::thread::spawn(move || {
                let p = l2.pop();
                if !p.is_null() {
                    // Give it straight back, as a thread cache eviction would.
                    // SAFETY: popped, so owned by this thread.
                    unsafe { l2.push(p) };
                }
            });
            // SAFETY: fresh node, owned here.
            unsafe { l.push(c as *mut Link) };
            let p1 = t1.join().unwrap();
            t2.join().unwrap();
            let mut got = vec![];
            if p1 != 0 {
                got.push(p1);
            }
            drain(&l, &mut got);
            check(got, Nodes(vec![a, b, c]));
        });
    }

    #[test]
    fn loom_flush_races_pop_and_push() {
        model(|| {
            let l = Arc::new(XchgList::new());
            let (a, b) = (node(), node());
            // SAFETY: fresh node, owned here.
            unsafe { l.push(a as *mut Link) };
            let (l1, l2) = (l.clone(), l.clone());
            let t1 = loom::thread::spawn(move || {
                let mut v = vec![];
                drain(&l1, &mut v);
                v
            });
            let t2 = loom::thread::spawn(move || l2.pop() as usize);
            // SAFETY: fresh node, owned here.
            unsafe { l.push(b as *mut Link) };
            let mut got = t1.join().unwrap();
            let p = t2.join().unwrap();
            if p != 0 {
                got.push(p);
            }
            drain(&l, &mut got);
            check(got, Nodes(vec![a, b]));
        });
    }
}
