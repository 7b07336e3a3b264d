//! A value that one thread (its owner) works on without ever waiting, and
//! that other threads may hold from outside now and then: the protocol of
//! the thread caches.
//!
//! Two flags, each written by one side only (Dekker's scheme):
//!
//! - the owner sets `busy`, makes the store visible with a full barrier,
//!   then reads `foreign`: if a foreign holder is there or coming, it
//!   clears `busy` and gives up (its caller takes a slow path that does not
//!   need the value);
//! - a foreign holder sets `foreign`, makes it visible with a full barrier,
//!   then waits until `busy` is clear.
//!
//! With a full barrier between each side's store and its load, at least
//! one of them sees the other's flag: they are never inside together. The
//! owner never waits, and a foreign holder waits for at most the one
//! operation the owner had begun. Foreign holders must exclude each other
//! by other means (the caches' registry mutex does it).
//!
//! Where the owner's barrier comes from ([`crate::barrier`]): normally the
//! foreign side pays for both, with `membarrier()`, which runs a full
//! barrier on every running thread of the process; the owner's `busy`
//! store is then a plain store behind a compiler barrier, and its fast path
//! has no atomic read-modify-write and no fence. In the fallback (no usable
//! `membarrier`) the owner fences after its store, on a cold path that a
//! bit of `foreign` sends it to. Under loom both barriers are SeqCst
//! fences, which loom models fully (it treats SeqCst accesses as AcqRel,
//! which would make the model report false races).

use crate::sync::{AtomicU32, Ordering, RawCell, Spin};

/// `foreign`: a foreign holder is in or coming.
const FOREIGN: u32 = 1;
/// `foreign`: the owner fences its own `busy` store (the fallback, without
/// `membarrier`). Fixed for the value's life; keeping it in the word the
/// owner reads anyway costs the fast path nothing: any non-zero `foreign`
/// sends the owner to its slow path and `enter_fenced`.
const FENCED: u32 = 2;

pub(crate) struct Owned<T> {
    /// 1 while the owner works on `val`. Written by the owner only.
    busy: AtomicU32,
    /// `FOREIGN` while a foreign thread holds the value or is taking it
    /// (written by foreign holders only), and `FENCED` in the fallback.
    foreign: AtomicU32,
    val: RawCell<T>,
}

// SAFETY: `val` is reached only by the owner between `enter` and `exit`, or
// by a foreign holder between `hold` and `unhold`, never both at once (the
// scheme above); it moves between threads with the Release/Acquire pairs
// named at each flag access.
unsafe impl<T: Send> Sync for Owned<T> {}

impl<T> Owned<T> {
    /// A value no owner may ever enter (the stand-in cache of threads that
    /// have none: their fast path fails at its `foreign` test).
    #[cfg(not(loom))]
    pub(crate) const fn parked(v: T) -> Self {
        Owned { busy: AtomicU32::new(0), foreign: AtomicU32::new(FOREIGN), val: RawCell::new(v) }
    }

    /// A value whose owner fences itself if `fenced`.
    pub(crate) fn new(v: T, fenced: bool) -> Self {
        let foreign = if fenced { FENCED } else { 0 };
        Owned { busy: AtomicU32::new(0), foreign: AtomicU32::new(foreign), val: RawCell::new(v) }
    }

    /// Makes the owner fence itself from now on (a child after `fork()`
    /// where `membarrier` was refused; it has one thread).
    pub(crate) fn make_fenced(&self) {
        // Relaxed: only the calling thread exists to read it.
        self.foreign.fetch_or(FENCED, Ordering::Relaxed);
    }

    /// The owner's fast entry: it enters unless `foreign` is not 0 (a
    /// foreign holder is there or coming, or the process runs the fallback,
    /// where the owner must fence itself): then it returns false at once,
    /// and the caller takes its slow path, which calls `enter_fenced`.
    #[inline(always)]
    pub(crate) fn enter(&self) -> bool {
        self.busy.store(1, Ordering::Relaxed);
        #[cfg(not(loom))]
        {
            // Only a compiler barrier: the foreign side's `membarrier` is the
            // full barrier between this store and our read of `foreign` (see
            // `crate::barrier`); the compiler must not move the read above
            // the store.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        #[cfg(loom)]
        {
            // The full barrier of the scheme.
            crate::sync::fence(Ordering::SeqCst);
        }
        // Relaxed, then an Acquire fence once inside: the scheme's read (its
        // ordering after our store comes from the barriers above and the
        // foreign side's `membarrier`); the fence pairs with the Release of
        // `unhold`, so we see what the last foreign holder wrote. On x86-64
        // both are plain: a load the compiler can fold into a compare.
        if self.foreign.load(Ordering::Relaxed) == 0 {
            crate::sync::fence(Ordering::Acquire);
            return true;
        }
        self.exit();
        false
    }

    /// The owner's entry on its slow paths: as `enter`, and in the fallback
    /// (`FENCED`) it fences its own store before reading `foreign` again.
    #[cold]
    pub(crate) fn enter_fenced(&self) -> bool {
        self.busy.store(1, Ordering::Relaxed);
        // SeqCst fence between our store of `busy` and the read: with the
        // foreign side's own store-fence-read, one of the two reads sees
        // the other's store. (Needless with `membarrier`, and harmless.)
        crate::sync::fence(Ordering::SeqCst);
        if self.foreign.load(LOAD) & FOREIGN == 0 {
            return true;
        }
        self.exit();
        false
    }

    /// The owner leaves.
    #[inline(always)]
    pub(crate) fn exit(&self) {
        // Release: hands our writes to the next foreign holder.
        crate::sync::release_u32(&self.busy);
    }

    /// `enter_fenced`, waiting for a foreign holder to leave.
    #[cold]
    pub(crate) fn enter_wait(&self) {
        let mut spin = Spin::new();
        while !self.enter_fenced() {
            spin.wait();
        }
    }

    /// A foreign holder announces itself; after `settle()`, `wait_owner`
    /// completes the hold. From `settle()` on, the owner cannot enter until
    /// `unhold`.
    pub(crate) fn announce(&self) {
        // SeqCst: in the fallback this store, the fence of `settle` and the
        // read of `busy` face the owner's store, fence and read (Dekker with
        // fences); the `FENCED` bit stays as it is.
        self.foreign.fetch_or(FOREIGN, Ordering::SeqCst);
    }

    /// After `announce` and `settle`: waits until the owner is out of the
    /// operation it had begun, if any.
    pub(crate) fn wait_owner(&self) {
        let mut spin = Spin::new();
        // SeqCst (Acquire under loom): the scheme's read; as an acquire it
        // pairs with the owner's Release in `exit`, so we see its writes.
        while self.busy.load(LOAD) != 0 {
            spin.wait();
        }
    }

    /// After `announce` and `settle`: is the owner out (and kept out until `unhold`)?
    /// False while it is inside the operation it had begun: the caller may
    /// `unhold` and do without the value rather than wait.
    pub(crate) fn owner_out(&self) -> bool {
        // SeqCst (Acquire under loom): as in `wait_owner`.
        self.busy.load(LOAD) == 0
    }

    /// Takes the value from outside: exclusive until `unhold`.
    pub(crate) fn hold(&self) {
        self.announce();
        settle();
        self.wait_owner();
    }

    pub(crate) fn unhold(&self) {
        // Release: hands our writes back to the owner (its read of `foreign`
        // acquires); the `FENCED` bit stays.
        self.foreign.fetch_and(!FOREIGN, Ordering::Release);
    }

    /// Runs `f` on the value.
    ///
    /// # Safety
    /// The caller is inside (owner between `enter` and `exit`, or foreign
    /// holder between `hold` (or `announce` + `wait_owner`) and `unhold`).
    #[inline(always)]
    pub(crate) unsafe fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: exclusive access is what the scheme gives (caller guarantee).
        self.val.with_mut(|p| f(unsafe { &mut *p }))
    }

    /// The value, for the owner's fast path (one pointer, no closure).
    ///
    /// # Safety
    /// As `with`, for as long as the reference is used. Under loom the
    /// access is not tracked: the fast path is not modelled there.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self) -> &mut T {
        // SAFETY: exclusive access is what the scheme gives (caller guarantee).
        self.val.with_mut(|p| unsafe { &mut *p })
    }

    /// Runs `f` on the value, held from outside.
    pub(crate) fn with_held<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.hold();
        // SAFETY: we hold the value.
        let r = unsafe { self.with(f) };
        self.unhold();
        r
    }
}

/// The foreign side's full barrier, between its `announce`s and its reads
/// of `busy` (one call serves any number of announces).
pub(crate) fn settle() {
    #[cfg(not(loom))]
    crate::barrier::heavy();
    #[cfg(loom)]
    crate::sync::fence(Ordering::SeqCst);
}

#[cfg(not(loom))]
const LOAD: Ordering = Ordering::SeqCst;
#[cfg(loom)]
const LOAD: Ordering = Ordering::Acquire;

/// Loom models: an owner pushing and popping a small stack of objects
/// against a foreign thief that steals and a foreign drainer that takes
/// everything. No object is lost or handed out twice, and loom's cell
/// tracking reports any access to the stack by two threads at once.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;

    /// A tiny stack of object ids (non-zero), as a thread cache holds them.
    struct Stack {
        items: [usize; 4],
        n: usize,
    }

    impl Stack {
        fn pop(&mut self) -> usize {
            if self.n == 0 {
                return 0;
            }
            self.n -= 1;
            self.items[self.n]
        }
        fn push(&mut self, v: usize) {
            self.items[self.n] = v;
            self.n += 1;
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// Where each object ended: the owner's hands, the thief's, the drain's, the stack.
    fn account(mut got: Vec<usize>, c: &Owned<Stack>) {
        // SAFETY: every model thread joined: nobody else is inside.
        unsafe { c.with(|s| got.extend_from_slice(&s.items[..s.n])) };
        got.sort_unstable();
        assert_eq!(got, vec![1, 2], "an object was lost or handed out twice");
    }

    /// The owner's side: take an object (alloc), give it back (free), take
    /// one again. A refused entry is the slow path: an allocation then takes
    /// nothing from the stack, a free sends the object elsewhere (`away`).
    fn owner(c: &Owned<Stack>, away: &mut Vec<usize>) -> usize {
        let mut held = 0;
        if c.enter() {
            // SAFETY: inside as owner.
            held = unsafe { c.with(|s| s.pop()) };
            c.exit();
        }
        if held != 0 {
            if c.enter() {
                // SAFETY: inside as owner.
                unsafe { c.with(|s| s.push(held)) };
                c.exit();
            } else {
                away.push(held);
            }
            held = 0;
        }
        if c.enter() {
            // SAFETY: inside as owner.
            held = unsafe { c.with(|s| s.pop()) };
            c.exit();
        }
        held
    }

    #[test]
    fn loom_owner_against_thief() {
        model(|| {
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }, false));
            let c2 = c.clone();
            // The thief takes one object from outside (a search at the limit).
            let thief = loom::thread::spawn(move || c2.with_held(|s| s.pop()));
            let mut got = vec![];
            let held = owner(&c, &mut got);
            let stolen = thief.join().unwrap();
            got.extend([held, stolen].into_iter().filter(|&v| v != 0));
            account(got, &c);
        });
    }

    /// A counter that never waits: it reads the stack only if the owner is
    /// out, else does without it.
    #[test]
    fn loom_owner_against_counter() {
        model(|| {
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }, false));
            let c2 = c.clone();
            let counter = loom::thread::spawn(move || {
                c2.announce();
                settle();
                // SAFETY: announced, and the owner is out.
                let n = if c2.owner_out() { Some(unsafe { c2.with(|s| s.n) }) } else { None };
                c2.unhold();
                n
            });
            let mut away = vec![];
            let held = owner(&c, &mut away);
            if let Some(n) = counter.join().unwrap() {
                assert!(n <= 2, "a count of the stack between two operations");
            }
            away.push(held);
            account(away.into_iter().filter(|&v| v != 0).collect(), &c);
        });
    }

    #[test]
    fn loom_owner_against_drain() {
        model(|| {
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }, false));
            let c2 = c.clone();
            // The drainer empties the stack from outside (gc, destroy).
            let drain = loom::thread::spawn(move || {
                c2.with_held(|s| {
                    let mut v = vec![];
                    while s.n > 0 {
                        v.push(s.pop());
                    }
                    v
                })
            });
            let mut away = vec![];
            let held = owner(&c, &mut away);
            let mut got = drain.join().unwrap();
            got.extend(away);
            if held != 0 {
                got.push(held);
            }
            account(got, &c);
        });
    }
}
