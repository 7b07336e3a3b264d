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
//! The owner's barrier is an `xchg` (a locked instruction); under loom both
//! barriers are SeqCst fences, which loom models fully (it treats SeqCst
//! accesses as AcqRel, which would make the model report false races).

use crate::sync::{release_u32, AtomicU32, Ordering, RawCell, Spin};

pub(crate) struct Owned<T> {
    /// 1 while the owner works on `val`. Written by the owner only.
    busy: AtomicU32,
    /// 1 while a foreign thread holds the value or is taking it. Written by
    /// foreign holders only.
    foreign: AtomicU32,
    val: RawCell<T>,
}

// SAFETY: `val` is reached only by the owner between `enter` and `exit`, or
// by a foreign holder between `hold` and `unhold`, never both at once (the
// scheme above); it moves between threads with the Release/Acquire pairs
// named at each flag access.
unsafe impl<T: Send> Sync for Owned<T> {}

impl<T> Owned<T> {
    pub(crate) fn new(v: T) -> Self {
        Owned { busy: AtomicU32::new(0), foreign: AtomicU32::new(0), val: RawCell::new(v) }
    }

    /// The owner enters, unless a foreign holder is there or coming: then
    /// it returns false at once.
    #[inline(always)]
    pub(crate) fn enter(&self) -> bool {
        #[cfg(not(loom))]
        {
            // SeqCst swap: `busy` is visible before we read `foreign` (`xchg`
            // is a full barrier): the owner's half of the scheme.
            self.busy.swap(1, Ordering::SeqCst);
        }
        #[cfg(loom)]
        {
            self.busy.store(1, Ordering::Relaxed);
            // The full barrier of the scheme (the xchg of the real build).
            crate::sync::fence(Ordering::SeqCst);
        }
        // SeqCst (Acquire under loom, after the fence): the scheme's read; as
        // an acquire it pairs with the Release of `unhold`, so we see what
        // the last foreign holder wrote.
        if self.foreign.load(LOAD) == 0 {
            return true;
        }
        self.exit();
        false
    }

    /// The owner leaves.
    #[inline(always)]
    pub(crate) fn exit(&self) {
        // Release: hands our writes to the next foreign holder.
        release_u32(&self.busy);
    }

    /// `enter`, waiting for a foreign holder to leave.
    #[cold]
    pub(crate) fn enter_wait(&self) {
        let mut spin = Spin::new();
        while !self.enter() {
            spin.wait();
        }
    }

    /// A foreign holder announces itself; `wait_owner` completes the hold.
    /// From here on, the owner cannot enter until `unhold`.
    pub(crate) fn announce(&self) {
        #[cfg(not(loom))]
        {
            // SeqCst store: visible before we read `busy` (the scheme's other half).
            self.foreign.store(1, Ordering::SeqCst);
        }
        #[cfg(loom)]
        {
            self.foreign.store(1, Ordering::Relaxed);
            crate::sync::fence(Ordering::SeqCst);
        }
    }

    /// After `announce`: waits until the owner is out of the operation it
    /// had begun, if any.
    pub(crate) fn wait_owner(&self) {
        let mut spin = Spin::new();
        // SeqCst (Acquire under loom): the scheme's read; as an acquire it
        // pairs with the owner's Release in `exit`, so we see its writes.
        while self.busy.load(LOAD) != 0 {
            spin.wait();
        }
    }

    /// After `announce`: is the owner out (and kept out until `unhold`)?
    /// False while it is inside the operation it had begun: the caller may
    /// `unhold` and do without the value rather than wait.
    pub(crate) fn owner_out(&self) -> bool {
        // SeqCst (Acquire under loom): as in `wait_owner`.
        self.busy.load(LOAD) == 0
    }

    /// Takes the value from outside: exclusive until `unhold`.
    pub(crate) fn hold(&self) {
        self.announce();
        self.wait_owner();
    }

    pub(crate) fn unhold(&self) {
        // Release: hands our writes back to the owner.
        release_u32(&self.foreign);
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
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }));
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
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }));
            let c2 = c.clone();
            let counter = loom::thread::spawn(move || {
                c2.announce();
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
            let c = Arc::new(Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }));
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
