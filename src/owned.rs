//! A value that one thread (its owner) works on without ever waiting, and
//! that other threads may hold from outside now and then: the protocol of
//! the thread caches.
//!
//! Two flags, each written by one side only (Dekker's scheme):
//!
//! - the owner stores a non-zero `busy` (which part of the value it works
//!   on: a tag, or `WHOLE`), makes the store visible with a full barrier,
//!   then reads `foreign`: if a foreign holder is there or coming, it
//!   clears `busy` and gives up (its caller takes a slow path that does not
//!   need the value);
//! - a foreign holder sets `foreign`, makes it visible with a full barrier,
//!   then reads `busy` once: [`Owner::Out`], the owner is out and stays out
//!   until `unhold`; [`Owner::In`], the owner is inside the one operation it
//!   had begun, on the part its tag names, and will begin no other until
//!   `unhold` (every later entry sees `foreign`); [`Owner::Whole`], inside
//!   on any part. A foreign holder never waits for the owner here: what it
//!   does with a busy value is its caller's choice (skip it, count it as
//!   held, come back later without holding any lock).
//!
//! With a full barrier between each side's store and its load, at least
//! one of them sees the other's flag. Foreign holders exclude each other by
//! other means: every foreign method takes a [`ForeignSide`], which only the
//! holder of the caches' registry lock can show.
//!
//! Where the owner's barrier comes from ([`crate::barrier`]): normally the
//! foreign side pays for both, with `membarrier()`; the owner's `busy`
//! store is then a plain store behind a compiler barrier, and its fast path
//! has no atomic read-modify-write and no fence. In the fenced mode the
//! owner fences after its store, on a cold path that the `OWNER_FENCES` bit
//! of `foreign` sends it to. When the mode is lost at run time, that bit is
//! set on every live value, and the foreign side trusts a value only once
//! its owner has acknowledged it (`acked`, stored after the owner's first
//! fence): an owner that read `foreign` before the bit arrived may still be
//! inside an operation whose `busy` store nobody can see, and its next
//! entry, fenced, is what proves that operation over.
//!
//! Under loom the owner's barrier is modelled both ways: as a SeqCst fence
//! in the owner (the fenced mode), and as the kernel's barrier injected
//! into the owner at a point of its choosing while the foreign side waits
//! for it (the membarrier mode: `loom_ipi`).

use crate::sync::{AtomicU32, Ordering, RawCell};

/// `foreign`: a foreign holder is in or coming.
const FOREIGN: u32 = 1;
/// `foreign`: the owner fences its own `busy` store. Set for the value's
/// life when it is made in the fenced mode, or by the switch when the
/// process loses `membarrier`; never cleared. Keeping it in the word the
/// owner reads anyway costs the fast path nothing: any non-zero `foreign`
/// sends the owner to its slow path and `enter_slow`.
const OWNER_FENCES: u32 = 2;

/// `busy`: the owner is out.
const OUT: u32 = 0;
/// `busy` on the owner's slow paths: any part of the value may be in use.
pub(crate) const WHOLE: u32 = u32::MAX;

/// What the owner is doing, as a foreign holder sees it after its barrier.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Owner {
    /// Out, and kept out until `unhold`: the whole value is the holder's.
    Out,
    /// Inside one operation on the part its tag names (never `WHOLE`), and
    /// no other until `unhold`: every other part is the holder's.
    In(u32),
    /// Inside, on any part: nothing is the holder's.
    Whole,
    /// Cannot be told: the process lost `membarrier` and this owner has not
    /// fenced itself since. Nothing is the holder's.
    Unsettled,
}

impl Owner {
    /// May a foreign holder touch the part tagged `tag` (`WHOLE`: the
    /// whole value)?
    pub(crate) fn lets(self, tag: u32) -> bool {
        match self {
            Owner::Out => true,
            Owner::In(t) => tag != WHOLE && t != tag,
            Owner::Whole | Owner::Unsettled => false,
        }
    }
}

/// `repr(C)`, the three words first: their offsets are the same for every
/// `T`, and the header's inline fast path (`BUFPOOL_INLINE`, see
/// `crate::ffi::inline`) addresses them.
#[repr(C)]
pub(crate) struct Owned<T> {
    /// What the owner works on: `OUT`, a tag, or `WHOLE`. Written by the
    /// owner only.
    busy: AtomicU32,
    /// 1 once the owner fences its own `busy` store and every entry it made
    /// without a fence is over. Written by the owner only (and set at birth
    /// for a value made fenced).
    acked: AtomicU32,
    /// `FOREIGN` while a foreign thread holds the value or is taking it
    /// (written by foreign holders only), and `OWNER_FENCES`.
    foreign: AtomicU32,
    val: RawCell<T>,
}

/// Where an `Owned`'s words and value are, from its start (the same for
/// every `T` but `val`'s, which is `T`'s alignment away).
#[cfg(not(loom))]
pub(crate) mod layout {
    use super::Owned;
    /// `busy`.
    pub(crate) const BUSY: usize = core::mem::offset_of!(Owned<u8>, busy);
    /// `foreign`.
    pub(crate) const FOREIGN: usize = core::mem::offset_of!(Owned<u8>, foreign);
    /// The value, for an `Owned<T>`.
    pub(crate) const fn val<T>() -> usize {
        core::mem::offset_of!(Owned<T>, val)
    }
    /// `foreign` in any `Owned<T>`: the first three words do not move with `T`.
    const _: () = assert!(core::mem::offset_of!(Owned<u64>, foreign) == FOREIGN);
    const _: () = assert!(core::mem::offset_of!(Owned<[u64; 4]>, busy) == BUSY);
}

// SAFETY: `val` is reached by the owner between `enter*` and the drop of
// its `Inside`, and by a foreign holder between `announce` and `unhold`,
// on the parts that `Owner::lets` gives it: never the same part by both
// (the scheme above); it moves between threads with the Release/Acquire
// pairs named at each flag access.
unsafe impl<T: Send> Sync for Owned<T> {}

/// The owner is inside, on the part it entered with; it leaves on drop.
pub(crate) struct Inside<'a, T> {
    cell: &'a Owned<T>,
}

impl<T> Drop for Inside<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // Release: hands our writes to the next foreign holder.
        crate::sync::release_u32(&self.cell.busy);
        #[cfg(loom)]
        loom_ipi::point();
    }
}

impl<T> Inside<'_, T> {
    /// The value, for the part the owner entered with (the whole value on
    /// a `WHOLE` entry). Under loom the access is tracked.
    #[inline(always)]
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(*mut T) -> R) -> R {
        self.cell.val.with_mut(f)
    }
}

/// Proof that the caller is the only foreign holder of every value it
/// touches: the holder of the caches' registry lock (or a thread that
/// stands alone, in a child after `fork()`, or at its own exit).
pub(crate) struct ForeignSide {
    _private: (),
}

impl ForeignSide {
    /// # Safety
    /// No other thread holds any value from outside while the result lives.
    pub(crate) const unsafe fn assume() -> Self {
        ForeignSide { _private: () }
    }
}

/// Proof that the foreign side's barrier ran after the caller's announces,
/// and what it can be trusted for.
pub(crate) struct Settled<'a> {
    _side: &'a ForeignSide,
    /// The barrier made every owner's earlier stores visible (membarrier,
    /// or the model's injected barrier). False: only owners that fence
    /// themselves, and acknowledged it, can be read.
    process: bool,
}

impl<'a> Settled<'a> {
    /// After the process-wide barrier (`process`) or a fence.
    pub(crate) fn new(side: &'a ForeignSide, process: bool) -> Self {
        Settled { _side: side, process }
    }

    /// Did the barrier make every owner's earlier stores visible?
    #[cfg(not(loom))]
    pub(crate) fn is_process(&self) -> bool {
        self.process
    }

    /// For values no owner can enter any more (their owner is gone, or is
    /// the caller itself, outside them): nothing to settle.
    pub(crate) fn alone(side: &'a ForeignSide) -> Self {
        Settled { _side: side, process: true }
    }
}

impl<T> Owned<T> {
    /// A value no owner may ever enter (the stand-in cache of threads that
    /// have none: their fast path fails at its `foreign` test).
    #[cfg(not(loom))]
    pub(crate) const fn parked(v: T) -> Self {
        Owned {
            busy: AtomicU32::new(0),
            acked: AtomicU32::new(1),
            foreign: AtomicU32::new(FOREIGN),
            val: RawCell::new(v),
        }
    }

    /// A value whose owner fences itself if `fenced`.
    pub(crate) fn new(v: T, fenced: bool) -> Self {
        let (foreign, acked) = if fenced { (OWNER_FENCES, 1) } else { (0, 0) };
        Owned {
            busy: AtomicU32::new(0),
            acked: AtomicU32::new(acked),
            foreign: AtomicU32::new(foreign),
            val: RawCell::new(v),
        }
    }

    // ---- the owner's side ------------------------------------------------

    /// The owner's fast entry, on the part `tag` names (never `WHOLE`, never
    /// 0): it enters unless `foreign` is not 0 (a foreign holder is there or
    /// coming, or the owner must fence itself): then it returns `None` at
    /// once, and the caller takes its slow path, which calls `enter_slow`.
    #[inline(always)]
    pub(crate) fn enter(&self, tag: u32) -> Option<Inside<'_, T>> {
        debug_assert!(tag != OUT && tag != WHOLE, "a fast entry names one part");
        self.busy.store(tag, Ordering::Relaxed);
        #[cfg(not(loom))]
        {
            // Only a compiler barrier: the foreign side's `membarrier` is the
            // full barrier between this store and our read of `foreign` (see
            // `crate::barrier`); the compiler must not move the read above
            // the store.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        #[cfg(loom)]
        loom_ipi::point();
        // Relaxed, then an Acquire fence once inside: the scheme's read (its
        // ordering after our store comes from the barriers above and the
        // foreign side's `membarrier`); the fence pairs with the Release of
        // `unhold`, so we see what the last foreign holder wrote. On x86-64
        // both are plain: the load is one compare (`foreign_is_clear`), the
        // fence no instruction.
        if self.foreign_is_clear() {
            crate::sync::fence(Ordering::Acquire);
            #[cfg(loom)]
            loom_ipi::point();
            return Some(Inside { cell: self });
        }
        crate::sync::release_u32(&self.busy);
        None
    }

    /// The fast entry's read of `foreign`: is it 0? On x86-64 one
    /// `cmp dword ptr [..], 0` and a branch: a relaxed atomic load that
    /// LLVM would not fold into the compare (a `mov` and a `test`, one
    /// instruction more per call). The asm reads memory, so the compiler
    /// keeps our `busy` store before it, as `compiler_fence` does.
    #[inline(always)]
    fn foreign_is_clear(&self) -> bool {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        {
            // SAFETY: an aligned 4-byte load of `foreign`, a live atomic of
            // `self`: on x86-64 a relaxed atomic load (a plain `mov` would be
            // the same instruction); it writes nothing and touches no stack.
            unsafe {
                core::arch::asm!(
                    "cmp dword ptr [{s} + {off}], 0",
                    "jne {set}",
                    s = in(reg) self as *const Self,
                    off = const core::mem::offset_of!(Self, foreign),
                    set = label { return false; },
                    options(nostack, readonly),
                );
            }
            true
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        {
            self.foreign.load(Ordering::Relaxed) == 0
        }
    }

    /// The owner's entry on its slow paths, on the part `tag` names (or
    /// `WHOLE`). With `membarrier` it is the fast entry's store and read
    /// (the foreign side's barrier covers it); in the fenced mode it fences
    /// between them, and acknowledges the mode the first time (what makes
    /// a foreign holder trust this owner again after the switch). `None`
    /// while a foreign holder is in or coming.
    #[cold]
    pub(crate) fn enter_slow(&self, tag: u32) -> Option<Inside<'_, T>> {
        debug_assert!(tag != OUT, "an entry names a part");
        self.busy.store(tag, Ordering::Relaxed);
        #[cfg(not(loom))]
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        #[cfg(loom)]
        loom_ipi::point();
        // Relaxed: the membarrier mode's read (as in `enter`); the fenced
        // mode reads again below.
        let mut f = self.foreign.load(Ordering::Relaxed);
        if f & OWNER_FENCES != 0 {
            // SeqCst fence between our store of `busy` and the read: with the
            // foreign side's own store-fence-read, one of the two reads sees
            // the other's store.
            crate::sync::fence(Ordering::SeqCst);
            f = self.foreign.load(LOAD);
            // Relaxed: only this thread writes `acked`.
            if self.acked.load(Ordering::Relaxed) == 0 {
                // Release: whoever reads the acknowledgement sees every store
                // this owner made before it (the end of each unfenced entry);
                // after the fence above, so that this entry's `busy` is among
                // them, and every later entry of ours is fenced (the bit
                // never clears).
                self.acked.store(1, Ordering::Release);
            }
        }
        if f & FOREIGN == 0 {
            // Acquire: pairs with the Release of `unhold` (as in `enter`).
            crate::sync::fence(Ordering::Acquire);
            return Some(Inside { cell: self });
        }
        crate::sync::release_u32(&self.busy);
        None
    }

    /// Must the owner fence itself (the fenced mode, from birth or since the
    /// switch)? For the owner's slow paths, to choose their entry; a stale
    /// answer only makes an entry coarser or finer, both correct.
    pub(crate) fn fences_itself(&self) -> bool {
        // Relaxed: a hint (see above); the entry itself reads `foreign` again.
        self.foreign.load(Ordering::Relaxed) & OWNER_FENCES != 0
    }

    /// `enter_slow(WHOLE)`, waiting for a foreign holder to leave (thread
    /// exit only: foreign holders never wait for owners, and hold briefly).
    #[cold]
    pub(crate) fn enter_wait(&self) -> Inside<'_, T> {
        let mut spin = crate::sync::Spin::new();
        loop {
            if let Some(g) = self.enter_slow(WHOLE) {
                return g;
            }
            spin.wait();
        }
    }

    // ---- the foreign side ------------------------------------------------

    /// A foreign holder announces itself; after `settle`, `owner` says what
    /// is the holder's. From the barrier on, the owner cannot begin an entry
    /// until `unhold`.
    pub(crate) fn announce(&self, _: &ForeignSide) {
        // SeqCst: in the fenced mode this store, the fence of the barrier
        // and the read of `busy` face the owner's store, fence and read
        // (Dekker with fences); the `OWNER_FENCES` bit stays as it is.
        self.foreign.fetch_or(FOREIGN, Ordering::SeqCst);
    }

    /// After `announce` and the barrier: what the owner is doing (see
    /// `Owner`). Read once; it can only become `Out` later.
    pub(crate) fn owner(&self, s: &Settled<'_>) -> Owner {
        // Acquire: pairs with the owner's Release of its acknowledgement.
        if !s.process && self.acked.load(Ordering::Acquire) == 0 {
            return Owner::Unsettled;
        }
        // SeqCst (Acquire under loom): the scheme's read; as an acquire it
        // pairs with the owner's Release on leaving, so we see its writes.
        match self.busy.load(LOAD) {
            OUT => Owner::Out,
            WHOLE => Owner::Whole,
            tag => Owner::In(tag),
        }
    }

    /// Is the value announced? Only foreign holders write the bit, and the
    /// caller is the only one (its `ForeignSide` says so): its own answer.
    pub(crate) fn is_announced(&self, _: &ForeignSide) -> bool {
        // Relaxed: our own writes.
        self.foreign.load(Ordering::Relaxed) & FOREIGN != 0
    }

    /// The holder leaves.
    pub(crate) fn unhold(&self, _: &ForeignSide) {
        // Release: hands our writes back to the owner (its read of `foreign`
        // acquires); the `OWNER_FENCES` bit stays.
        self.foreign.fetch_and(!FOREIGN, Ordering::Release);
    }

    /// Makes the owner fence itself from now on, and trusted only once it
    /// acknowledges (the process lost `membarrier`).
    pub(crate) fn make_fenced(&self, _: &ForeignSide) {
        // SeqCst: ordered with the announces and reads around it.
        self.foreign.fetch_or(OWNER_FENCES, Ordering::SeqCst);
    }

    /// Makes the owner fence itself, trusted at once (a child after
    /// `fork()` where `membarrier` was refused: only the caller's thread
    /// exists, and it is this value's owner, outside it).
    pub(crate) fn make_fenced_alone(&self, side: &ForeignSide) {
        self.make_fenced(side);
        // Relaxed: only the calling thread exists.
        self.acked.store(1, Ordering::Relaxed);
    }

    /// The value, before it is shared with anyone.
    pub(crate) fn with_unshared<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.val.with_mut(f)
    }

    /// The value, from outside: the caller announced it, settled, and
    /// `owner` lets it touch what it touches. Under loom the access is
    /// tracked (the whole cell).
    pub(crate) fn with_held<R>(&self, _: &Settled<'_>, f: impl FnOnce(*mut T) -> R) -> R {
        self.val.with_mut(f)
    }
}

#[cfg(not(loom))]
const LOAD: Ordering = Ordering::SeqCst;
#[cfg(loom)]
const LOAD: Ordering = Ordering::Acquire;

/// The kernel's barrier, modelled for loom: `membarrier()` makes each other
/// thread run a full barrier at some point during the call (or the thread
/// was not running, which is a barrier too). The foreign side raises a
/// request and waits until the owner has passed a `point` (where it runs a
/// SeqCst fence and acknowledges) or has ended; the owner calls `point`
/// between each of its steps, so loom tries the barrier in every gap.
#[cfg(loom)]
pub(crate) mod loom_ipi {
    use loom::sync::atomic::{AtomicUsize, Ordering};

    loom::lazy_static! {
        static ref REQ: AtomicUsize = AtomicUsize::new(0);
        static ref ACK: AtomicUsize = AtomicUsize::new(0);
        static ref OWNER_DONE: AtomicUsize = AtomicUsize::new(0);
        /// 1: the model has a membarrier owner (else `point` does nothing).
        pub(crate) static ref ON: AtomicUsize = AtomicUsize::new(0);
        /// 1: the barrier "fails": requests are never served (the switch model).
        pub(crate) static ref DENIED: AtomicUsize = AtomicUsize::new(0);
    }

    /// A point of the owner where the kernel's barrier may land.
    pub(crate) fn point() {
        if ON.load(Ordering::Relaxed) == 0 || DENIED.load(Ordering::Relaxed) != 0 {
            return;
        }
        // Acquire: the request's announce happened before; our later reads see it.
        let r = REQ.load(Ordering::Acquire);
        if r > ACK.load(Ordering::Relaxed) {
            loom::sync::atomic::fence(Ordering::SeqCst);
            // Release: our earlier stores are visible to the waiting side.
            ACK.store(r, Ordering::Release);
        }
    }

    /// The owner thread ends (it went through the scheduler for good).
    #[cfg(test)]
    pub(crate) fn owner_done() {
        loom::sync::atomic::fence(Ordering::SeqCst);
        OWNER_DONE.store(1, Ordering::Release);
    }

    /// The foreign side's `membarrier()`: false when it is denied.
    #[cfg(test)]
    pub(crate) fn membarrier() -> bool {
        if DENIED.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let r = REQ.fetch_add(1, Ordering::AcqRel) + 1;
        while ACK.load(Ordering::Acquire) < r && OWNER_DONE.load(Ordering::Acquire) == 0 {
            loom::thread::yield_now();
        }
        loom::sync::atomic::fence(Ordering::SeqCst);
        true
    }
}

/// Loom models: an owner pushing and popping a small stack of objects
/// against a foreign thief, a drainer and a counter that never wait. No
/// object is lost or handed out twice, and loom's cell tracking reports any
/// access to the stack by two threads at once. Each runs in three
/// protocols: both sides fenced (the fenced mode); the owner with no fence
/// at all and the kernel's barrier injected into it (the membarrier mode);
/// and the membarrier mode lost under the foreign side's feet (the switch:
/// the owner is made to fence itself and trusted only once it acknowledged).
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::Ordering::Relaxed;
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

    #[derive(Clone, Copy, PartialEq)]
    enum Proto {
        Fenced,
        Membarrier,
        Switch,
    }

    const TAG: u32 = 1;

    fn model(proto: Proto, f: impl Fn(Proto) + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            loom_ipi::ON.store((proto != Proto::Fenced) as usize, Relaxed);
            loom_ipi::DENIED.store((proto == Proto::Switch) as usize, Relaxed);
            f(proto)
        });
    }

    fn stack(proto: Proto) -> Owned<Stack> {
        Owned::new(Stack { items: [1, 2, 0, 0], n: 2 }, proto == Proto::Fenced)
    }

    /// Where each object ended: the owner's hands, the thief's, the drain's, the stack.
    fn account(mut got: Vec<usize>, c: &Owned<Stack>) {
        // SAFETY: every model thread joined: nobody else holds the value.
        let side = unsafe { ForeignSide::assume() };
        c.with_held(&Settled::alone(&side), |s| {
            // SAFETY: joined: the stack is ours.
            let s = unsafe { &*s };
            got.extend_from_slice(&s.items[..s.n])
        });
        got.sort_unstable();
        assert_eq!(got, vec![1, 2], "an object was lost or handed out twice");
    }

    /// One owner entry: the fast one (with the fenced fallback the slow path
    /// takes), as the thread cache does.
    fn enter(c: &Owned<Stack>) -> Option<Inside<'_, Stack>> {
        c.enter(TAG).or_else(|| c.enter_slow(TAG))
    }

    /// The owner's side: take an object (alloc), give it back (free), take
    /// one again. A refused entry is the slow path: an allocation then takes
    /// nothing from the stack, a free sends the object elsewhere (`away`).
    fn owner(c: &Owned<Stack>, away: &mut Vec<usize>) -> usize {
        let mut held = 0;
        if let Some(mut g) = enter(c) {
            // SAFETY: inside as owner.
            held = g.with(|s| unsafe { (*s).pop() });
        }
        if held != 0 {
            if let Some(mut g) = enter(c) {
                // SAFETY: inside as owner.
                g.with(|s| unsafe { (*s).push(held) });
            } else {
                away.push(held);
            }
            held = 0;
        }
        if let Some(mut g) = enter(c) {
            // SAFETY: inside as owner.
            held = g.with(|s| unsafe { (*s).pop() });
        }
        loom_ipi::owner_done();
        held
    }

    /// The foreign side's barrier in each protocol; under `Switch` the
    /// membarrier fails and the owner is switched (`make_fenced`). With
    /// `broken`, the barrier is skipped (the deliberate break).
    fn settle<'a>(side: &'a ForeignSide, c: &Owned<Stack>, proto: Proto, broken: bool) -> Settled<'a> {
        if broken {
            return Settled::new(side, true);
        }
        match proto {
            Proto::Fenced => {
                loom::sync::atomic::fence(Ordering::SeqCst);
                Settled::new(side, false)
            }
            Proto::Membarrier => Settled::new(side, loom_ipi::membarrier()),
            Proto::Switch => {
                assert!(!loom_ipi::membarrier(), "denied in this model");
                c.make_fenced(side);
                loom::sync::atomic::fence(Ordering::SeqCst);
                Settled::new(side, false)
            }
        }
    }

    /// A foreign operation that does without the value when the owner is
    /// in: `f` runs only when `owner` lets it touch the stack.
    fn foreign<R>(c: &Owned<Stack>, proto: Proto, broken: bool, f: impl FnOnce(&mut Stack) -> R) -> Option<R> {
        // SAFETY: the model's only foreign thread.
        let side = unsafe { ForeignSide::assume() };
        c.announce(&side);
        let s = settle(&side, c, proto, broken);
        let r = if c.owner(&s).lets(TAG) {
            // SAFETY: announced, settled, and the owner is out.
            Some(c.with_held(&s, |p| f(unsafe { &mut *p })))
        } else {
            None
        };
        c.unhold(&side);
        r
    }

    fn against_thief(proto: Proto, broken: bool) {
        model(proto, move |proto| {
            let c = Arc::new(stack(proto));
            let c2 = c.clone();
            // The thief takes one object from outside (a search at the limit).
            let thief = loom::thread::spawn(move || foreign(&c2, proto, broken, |s| s.pop()).unwrap_or(0));
            let mut got = vec![];
            let held = owner(&c, &mut got);
            let stolen = thief.join().unwrap();
            got.extend([held, stolen].into_iter().filter(|&v| v != 0));
            account(got, &c);
        });
    }

    fn against_drain(proto: Proto, broken: bool) {
        model(proto, move |proto| {
            let c = Arc::new(stack(proto));
            let c2 = c.clone();
            // The drainer empties the stack from outside (gc, destroy).
            let drain = loom::thread::spawn(move || {
                foreign(&c2, proto, broken, |s| {
                    let mut v = vec![];
                    while s.n > 0 {
                        v.push(s.pop());
                    }
                    v
                })
                .unwrap_or_default()
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

    fn against_counter(proto: Proto) {
        model(proto, move |proto| {
            let c = Arc::new(stack(proto));
            let c2 = c.clone();
            let counter = loom::thread::spawn(move || foreign(&c2, proto, false, |s| s.n));
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
    fn loom_fenced_owner_against_thief() {
        against_thief(Proto::Fenced, false);
    }

    #[test]
    fn loom_fenced_owner_against_drain() {
        against_drain(Proto::Fenced, false);
    }

    #[test]
    fn loom_fenced_owner_against_counter() {
        against_counter(Proto::Fenced);
    }

    /// The owner with no fence at all: the kernel's barrier, injected.
    #[test]
    fn loom_membarrier_owner_against_thief() {
        against_thief(Proto::Membarrier, false);
    }

    #[test]
    fn loom_membarrier_owner_against_drain() {
        against_drain(Proto::Membarrier, false);
    }

    #[test]
    fn loom_membarrier_owner_against_counter() {
        against_counter(Proto::Membarrier);
    }

    /// membarrier lost: the owner is switched under the foreign side.
    #[test]
    fn loom_switched_owner_against_thief() {
        against_thief(Proto::Switch, false);
    }

    #[test]
    fn loom_switched_owner_against_drain() {
        against_drain(Proto::Switch, false);
    }

    /// The deliberate breaks: the foreign side's barrier dropped, with an
    /// owner that has no fence of its own (membarrier mode), and a switched
    /// owner trusted without its acknowledgement. Loom must find the two
    /// threads in the stack at once (`should_panic`).
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_break_membarrier_without_barrier() {
        against_drain(Proto::Membarrier, true);
    }

    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_break_switch_trusted_without_ack() {
        against_drain(Proto::Switch, true);
    }
}
