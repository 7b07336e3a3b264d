//! What a thread cache is made of: per pool slot, a stack of idle objects
//! (its `Head`), the byte budget's bookkeeping, and the few owner-only
//! words; and what a cache knows of a pool (its `Home`). The leaf of the
//! cache module: every other room builds on these.

use crate::link::{next_of, set_next, Link};
use crate::owned::Owned;
use core::cell::UnsafeCell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// How many pools can have a thread cache; the others work without one.
pub(crate) const MAX_POOLS: usize = 256;
/// Most objects moved at once between a thread cache and a shared cache.
pub(super) const STACK_BATCH: u32 = 32;

/// A pool's slot in every thread cache: an index below `MAX_POOLS`, kept
/// as the byte offset of its stack past the first (`(index + 1) * size of a
/// stack`), so that the fast path adds it to the cache's address without a
/// multiplication, and the same number tags the owner's `busy` word on the
/// fast path (the part of the cache it is in, see `crate::owned`). A pool
/// without a thread cache has no slot of its own: its fast path enters
/// `Slot::NONE`, a stack past the others that never has room nor objects,
/// so that the fast path needs no test for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot(core::num::NonZeroU16);

const HEAD: usize = core::mem::size_of::<Head>();
const _: () = assert!((MAX_POOLS + 1) * HEAD <= u16::MAX as usize, "every slot's offset fits a u16");

impl Slot {
    /// The stack of every pool without a thread cache: index `MAX_POOLS`,
    /// past the real slots. Its limit stays 0 (no slow path of the owner
    /// or the budget ever reaches it: they act on `Home::slot`, which is
    /// `None` for it), so its top stays null and its room 0: a fast
    /// allocation finds nothing, a fast release finds no room, and both
    /// take their slow paths as before.
    pub(crate) const NONE: Slot = match core::num::NonZeroU16::new(((MAX_POOLS + 1) * HEAD) as u16) {
        Some(off) => Slot(off),
        None => unreachable!(),
    };

    pub(super) fn new(index: usize) -> Self {
        debug_assert!(index < MAX_POOLS, "a slot is an index below MAX_POOLS");
        match core::num::NonZeroU16::new(((index + 1) * HEAD) as u16) {
            Some(off) => Slot(off),
            None => unreachable!("(index + 1) * HEAD is never 0"),
        }
    }

    #[inline(always)]
    pub(crate) fn index(self) -> usize {
        self.0.get() as usize / HEAD - 1
    }

    /// The owner's `busy` tag while it works on this slot's stack alone:
    /// never 0, never `owned::WHOLE`.
    #[inline(always)]
    pub(super) fn tag(self) -> u32 {
        self.0.get() as u32
    }
}

/// A stack of idle objects of one pool, in one thread's cache. `repr(C)`:
/// the header's inline fast path reads and writes `top` and `room`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Head {
    pub(super) top: *mut Link,
    /// Objects the stack may still take: `limit - count`. Kept instead of
    /// the count so that a release tests and takes room in one instruction.
    pub(super) room: u32,
    /// Objects the stack may hold; `limit * size` is part of `reserved`.
    /// Changed on slow paths only (never by the fast path), by whoever may
    /// touch the stack, through `budget::raise` and `budget::lower`, which
    /// keep the cache's `Stacks` bit of it.
    limit: u32,
    /// `Local::tick` when this stack last went to the slow path.
    pub(super) stamp: u64,
}

const EMPTY_HEAD: Head = Head { top: null_mut(), room: 0, limit: 0, stamp: 0 };

impl Head {
    /// Objects in the stack.
    pub(super) fn count(&self) -> u32 {
        debug_assert!(self.room <= self.limit(), "room is what the limit leaves");
        self.limit() - self.room
    }

    /// The limit.
    #[inline(always)]
    pub(super) fn limit(&self) -> u32 {
        self.limit
    }

    /// Sets the limit (`budget::raise` and `budget::lower` only).
    pub(super) fn set_limit(&mut self, v: u32) {
        self.limit = v;
    }

    #[cfg(all(test, not(loom)))]
    pub(super) fn with(room: u32, limit: u32) -> Head {
        Head { top: null_mut(), room, limit, stamp: 0 }
    }
}

/// The part of a thread cache that the owner/foreign protocol guards.
/// `repr(C)`: the header's inline fast path finds `heads` in it.
#[repr(C)]
pub(crate) struct Local {
    /// `sum(limit * size)` over the stacks: at most the budget (or what a
    /// change of budget left, until the cache conforms).
    pub(super) reserved: usize,
    pub(super) tick: u64,
    /// `tick` at the last decay: a stack stamped no later went a whole
    /// period without a slow call.
    pub(super) decayed: u64,
    /// `budget::GENERATION` when the cache last conformed to the settings
    /// (budget, capped pools).
    pub(super) generation: usize,
    /// The cache's `Stacks` (outside the guarded part, so that anyone may
    /// read it at any time); null in a cache that is never entered.
    pub(super) stacks: *const Stacks,
    /// One stack per slot, and the stack of `Slot::NONE` last.
    pub(super) heads: [Head; MAX_POOLS + 1],
}

pub(super) const EMPTY_LOCAL: Local = Local {
    reserved: 0,
    tick: 0,
    decayed: 0,
    generation: 0,
    stacks: core::ptr::null(),
    heads: [EMPTY_HEAD; MAX_POOLS + 1],
};

/// Which stacks of a cache have a non-zero limit: one bit per slot, set
/// before a limit leaves 0 and cleared after it falls to 0 (by whoever may
/// touch that stack). Read by foreign holders without holding the cache: a
/// clear bit means the stack holds nothing, and only a call on its own pool
/// can set it, so a search, a count or a drain of that pool need not look
/// into the cache at all (nor wait for its owner). Bits are set Relaxed (a
/// reader that happens after the release that followed sees it, by
/// coherence) and cleared Release (a reader that sees it clear, with
/// Acquire, sees the transit that moved the stack's objects).
pub(crate) struct Stacks([AtomicU64; MAX_POOLS / 64]);

impl Stacks {
    const fn new() -> Self {
        Stacks([const { AtomicU64::new(0) }; MAX_POOLS / 64])
    }

    pub(super) fn set(&self, i: usize) {
        // Relaxed: see the type.
        self.0[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
    }

    pub(super) fn clear(&self, i: usize) {
        // Release: see the type.
        self.0[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Release);
    }

    /// May the cache have a stack of slot `i` (a non-zero limit)?
    pub(super) fn has(&self, i: usize) -> bool {
        // Acquire: see the type.
        self.0[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }
}

// SAFETY: a `Local` is only reached under the owner/foreign protocol of its
// `Owned` (one thread at a time on each part); its raw pointers are idle
// objects that belong to whoever is inside.
unsafe impl Send for Local {}

/// A thread's cache: owned by its thread, held from outside now and then.
/// `repr(C)`, `cell` first: the cache's address is its `Owned`'s, so the
/// fast path's `foreign` compare (`Owned::enter`) addresses off the pointer
/// it just read from TLS, with no add.
#[repr(C)]
pub(crate) struct ThreadCache {
    pub(super) cell: Owned<Local>,
    /// Which stacks have a limit (see `Stacks`); `cell`'s `Local` points here.
    pub(super) stacks: Stacks,
    /// Releases into this cache left before the next maintenance tick
    /// (`crate::maintain`): the fast path's only clock, a decrement.
    /// Touched by the owner only (no foreign holder ever reads it), so it
    /// needs no entry into the cache.
    countdown: UnsafeCell<u32>,
}

// SAFETY: `cell` is Sync by its protocol; `countdown` is touched only by
// the thread that owns the cache (the fast path, `rearm`), or by the thread
// that frees the cache when no owner exists any more.
unsafe impl Sync for ThreadCache {}

/// Releases between two maintenance ticks of a thread.
pub(crate) const TICK_EVERY: u32 = 32;

impl ThreadCache {
    /// A cache; its `Local` points to its `Stacks` once it is at its final
    /// address (`link_stacks`).
    pub(super) fn new(fenced: bool) -> Self {
        ThreadCache {
            cell: Owned::new(EMPTY_LOCAL, fenced),
            stacks: Stacks::new(),
            countdown: UnsafeCell::new(TICK_EVERY),
        }
    }

    #[cfg(not(loom))]
    pub(super) const fn parked() -> Self {
        ThreadCache { cell: Owned::parked(EMPTY_LOCAL), stacks: Stacks::new(), countdown: UnsafeCell::new(TICK_EVERY) }
    }

    /// Points the cache's `Local` at its `Stacks`.
    ///
    /// # Safety
    /// The cache is at its final address and not shared yet.
    pub(super) unsafe fn link_stacks(&self) {
        let stacks: *const Stacks = &self.stacks;
        // SAFETY: not shared yet (the caller's guarantee): no one else is in.
        self.cell.with_unshared(|l| unsafe { (*l).stacks = stacks });
    }

    /// The countdown, for its owner.
    ///
    /// # Safety
    /// The caller is this cache's owner thread.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn countdown(&self) -> &mut u32 {
        // SAFETY: only the owner thread touches it (the caller's guarantee).
        unsafe { &mut *self.countdown.get() }
    }
}

/// The stack of `slot` in the cache at `l`: the cache's address plus the
/// slot's offset, as a raw pointer, so that the owner on one stack and a
/// foreign holder on another never make references that overlap.
///
/// # Safety
/// `l` points to a live `Local`.
#[inline(always)]
pub(super) unsafe fn head_ptr(l: *mut Local, slot: Slot) -> *mut Head {
    let off = slot.0.get() as usize - HEAD;
    debug_assert!(off / HEAD <= MAX_POOLS && off.is_multiple_of(HEAD), "a slot's offset names a stack");
    // SAFETY: `off` is `index * HEAD` with `index <= MAX_POOLS` (made by
    // `Slot::new`, or `Slot::NONE`), so it addresses one of `heads`,
    // aligned; no reference to the whole `Local` is made.
    unsafe { core::ptr::addr_of_mut!((*l).heads).cast::<u8>().add(off).cast::<Head>() }
}

/// What a thread cache knows of a pool: embedded in the pool, enough to
/// cache its objects and to send them back. The cache never sees the rest
/// of the pool. `repr(C)`, `stack` first: the pool's handle points to it
/// (the pool's first field), and the header's inline fast path reads the
/// slot there.
#[repr(C)]
pub(crate) struct Home {
    /// The stack the fast path enters: the pool's slot in every thread
    /// cache, or `Slot::NONE` for a pool without a thread cache.
    pub(crate) stack: Slot,
    /// Object size.
    pub(crate) size: usize,
    /// Set while released objects must go to the OS rather than to a cache
    /// (the pool is above a lowered limit). Read inside the cache, on the
    /// slow paths: capping a pool also drains it from every cache, which
    /// zeroes its stacks' limits, and no stack of it grows meanwhile.
    pub(crate) capped: AtomicBool,
    /// How many thread caches have a stack of this pool with a non-zero
    /// limit. 0: no cache holds an idle object of the pool, and a search at
    /// the limit needs to look into none (no barrier, no lock). Raised
    /// before a limit leaves 0 (by the cache's owner), lowered after one
    /// falls to 0 (Release: a searcher that sees it lower sees the transit
    /// that moved the stack's objects).
    pub(crate) stacks: AtomicUsize,
    /// Where objects that leave a cache go, and where a refill comes from.
    pub(crate) back: &'static Back,
}

/// The pool's side of a [`Home`].
pub(crate) struct Back {
    /// Objects of this home are about to leave a cache: a transit begins
    /// (a search at the pool's limit waits for them rather than fail).
    pub(crate) begin: fn(&Home),
    /// A chain of `n` objects that left a cache (still counted as out of
    /// the pool's shared layer) is the pool's again; the transit ends.
    pub(crate) take: unsafe fn(&Home, *mut Link, usize),
    /// Up to `n` idle objects of the pool's shared cache, counted out of
    /// it: the chain and its length; (null, 0) when there are none.
    pub(crate) fetch: fn(&Home, usize) -> (*mut Link, usize),
    /// Is the pool at its limit (a hint: a refill then caches nothing)?
    pub(crate) at_limit: fn(&Home) -> bool,
}

impl Home {
    /// The pool's slot in every thread cache; `None`: no thread cache.
    #[inline(always)]
    pub(crate) fn slot(&self) -> Option<Slot> {
        (self.stack != Slot::NONE).then_some(self.stack)
    }

    /// Sends a chain that left a cache back to the pool, in a transit begun
    /// before it was detached (`detach` runs inside it and returns the
    /// chain and its length).
    ///
    /// # Safety
    /// The chain `detach` returns is of objects of this home, cached until
    /// now, owned by the caller.
    pub(super) unsafe fn send_back(&self, detach: impl FnOnce() -> (*mut Link, u32)) {
        (self.back.begin)(self);
        let (chain, n) = detach();
        // SAFETY: the caller's guarantee; `take` ends the transit `begin` began.
        unsafe { (self.back.take)(self, chain, n as usize) };
    }
}

/// The pool that owns each slot (null: free). A pool keeps its slot until
/// it is freed, after every cache was drained of it: so a cache that holds
/// objects of slot `i` (or a limit for it) can always reach their pool's
/// `Home` through `SLOTS[i]`.
static SLOTS: [AtomicPtr<Home>; MAX_POOLS] = [const { AtomicPtr::new(null_mut()) }; MAX_POOLS];

/// Gives `home`'s pool a slot; `None` when all are taken.
/// Called under the pool registry lock.
pub(crate) fn claim_slot(home: *const Home) -> Option<Slot> {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.load(Ordering::Relaxed).is_null() {
            // Release: evicting threads that read the slot see the whole home.
            s.store(home.cast_mut(), Ordering::Release);
            return Some(Slot::new(i));
        }
    }
    None
}

/// Frees a slot (the caller checked that every cache is drained of it).
pub(super) fn free_slot(slot: Slot) {
    SLOTS[slot.index()].store(null_mut(), Ordering::Release);
}

/// The home of a slot that a cache holds objects of (or has a limit for).
pub(super) fn slot_home(idx: usize) -> &'static Home {
    // Acquire: pairs with the Release of `claim_slot`: we see the whole home.
    let p = SLOTS[idx].load(Ordering::Acquire);
    debug_assert!(!p.is_null(), "a slot with cached objects has its pool");
    // SAFETY: a pool keeps its slot (and stays alive) until every cache is
    // drained of it, and the caller's cache holds objects or a limit of it.
    unsafe { &*p }
}

// ---- one stack ---------------------------------------------------------

/// Pops the top of a stack, or null. The caller may touch the stack.
#[inline(always)]
pub(super) fn pop_head(head: &mut Head) -> *mut Link {
    let item = head.top;
    if !item.is_null() {
        debug_assert!(head.count() > 0, "a non-empty stack is counted");
        // SAFETY: `item` is idle in this stack, which the caller may touch.
        head.top = unsafe { next_of(item) };
        head.room = head.room.wrapping_add(1);
    }
    item
}

/// Pushes an object on a stack whose room the caller already took.
///
/// # Safety
/// `ptr` is an object of the stack's pool, given up by the caller, who may
/// touch the stack.
#[inline(always)]
pub(super) unsafe fn push_head(head: &mut Head, ptr: *mut Link) {
    // SAFETY: the object is ours until published in the stack.
    unsafe { set_next(ptr, head.top) };
    head.top = ptr;
}

/// Takes room and pushes (the slow paths).
///
/// # Safety
/// As `push_head`; the stack has room.
pub(super) unsafe fn push_counted(head: &mut Head, ptr: *mut Link) {
    debug_assert!(head.room > 0, "the caller made room");
    head.room -= 1;
    // SAFETY: the caller's guarantee.
    unsafe { push_head(head, ptr) };
}

/// Cuts the older half (rounded up) off a stack; returns it and its length.
#[cfg(all(test, not(loom)))]
pub(super) fn detach_older_half(head: &mut Head) -> (*mut Link, u32) {
    let keep = head.count() / 2;
    detach_older(head, keep)
}

/// Cuts all but the `keep` newest objects off a stack; returns them and
/// their number.
pub(super) fn detach_older(head: &mut Head, keep: u32) -> (*mut Link, u32) {
    let count = head.count();
    let keep = keep.min(count);
    let evicted = count - keep;
    head.room = head.limit - keep;
    if keep == 0 {
        return (std::mem::replace(&mut head.top, null_mut()), evicted);
    }
    let mut last_kept = head.top;
    for _ in 1..keep {
        // SAFETY: the stack holds `count` linked objects, ours to walk.
        last_kept = unsafe { next_of(last_kept) };
    }
    // SAFETY: `last_kept` is the keep-th of the stack's linked objects (keep <= count).
    let chain = unsafe { next_of(last_kept) };
    // SAFETY: the same object, idle in the stack the caller may touch.
    unsafe { set_next(last_kept, null_mut()) };
    (chain, evicted)
}

/// Detaches a whole stack: its chain and length.
pub(super) fn detach_all_of(head: &mut Head) -> (*mut Link, u32) {
    let n = head.count();
    head.room = head.limit();
    (std::mem::replace(&mut head.top, null_mut()), n)
}

/// Where the header's inline fast path (`BUFPOOL_INLINE`, `crate::ffi::inline`)
/// finds a thread cache's words, from the address the TLS word holds: the
/// owner's `busy` and `foreign`, a stack's `top` and `room` (each plus the
/// pool's slot), and the countdown.
#[cfg(not(loom))]
pub(crate) mod layout {
    use super::{Head, Local, ThreadCache, HEAD};
    use crate::owned;
    use core::mem::offset_of;

    const CELL: usize = offset_of!(ThreadCache, cell);
    /// `busy`.
    pub(crate) const BUSY: usize = CELL + owned::layout::BUSY;
    /// `foreign`.
    pub(crate) const FOREIGN: usize = CELL + owned::layout::FOREIGN;
    /// Where slot `s`'s stack is, less `s` (`head_ptr`: the heads, less one).
    const HEADS: usize = CELL + owned::layout::val::<Local>() + offset_of!(Local, heads) - HEAD;
    /// A stack's `top`, less the slot.
    pub(crate) const TOP: usize = HEADS + offset_of!(Head, top);
    /// A stack's `room`, less the slot.
    pub(crate) const ROOM: usize = HEADS + offset_of!(Head, room);
    /// The countdown to the next tick.
    pub(crate) const COUNTDOWN: usize = offset_of!(ThreadCache, countdown);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::link::Link;
    use crate::sync::RawCell;

    #[test]
    fn older_half_is_cut_off_the_bottom() {
        let nodes: Vec<*mut Link> =
            (0..5).map(|_| Box::into_raw(Box::new(Link { next: RawCell::new(null_mut()) }))).collect();
        let mut head = Head::with(8, 8);
        for &n in &nodes {
            // SAFETY: test-owned nodes, pushed once each, with room.
            unsafe { push_counted(&mut head, n) };
        }
        let (chain, n) = detach_older_half(&mut head);
        assert_eq!((n, head.count(), head.room), (3, 2, 6));
        assert_eq!(head.top, nodes[4], "the newest stays on top");
        // SAFETY: nodes are alive until freed below.
        assert_eq!(unsafe { next_of(nodes[3]) }, null_mut(), "the kept part is cut");
        assert_eq!(chain, nodes[2], "the evicted part starts with the newest of the old");
        for n in nodes {
            // SAFETY: made by Box::into_raw above.
            drop(unsafe { Box::from_raw(n) });
        }
    }
}
