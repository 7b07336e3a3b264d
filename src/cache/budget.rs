//! The budget, in objects per stack, and eviction: how a cache's stacks
//! grow, give objects up and conform to the settings. Everything here
//! works on a cache that the caller may touch (the owner inside it, or a
//! foreign holder the protocol lets in); it never enters or holds one.
//!
//! Each stack has a `limit`: the fast path caches an object only while
//! `count < limit`, and touches no byte count and no clock. The slow path
//! keeps `sum(limit * size) <= budget` over the stacks (`reserved`): a full
//! stack grows its limit while the budget allows, else the stack that went
//! to its slow path least recently gives up the older half of its objects
//! (a batch, one push to its pool's shared cache) and its limit shrinks to
//! what it keeps. An empty stack refills with a batch from its pool's
//! shared cache, and grows only by what it then holds. LRU is per pool and
//! stamped on the slow path only: a pool that stays on the fast path looks
//! cold, is the first to give objects up, and comes back on its next slow
//! call.
//!
//! Every change of a limit goes through `raise` or `lower`, which keep
//! `reserved` and the pool's count of caches with a stack of it
//! (`Home::stacks`) true.

use super::local::{detach_all_of, detach_older, head_ptr, pop_head, slot_home, Head, Home, Local, Slot};
use super::local::{MAX_POOLS, STACK_BATCH};
use crate::link::Link;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Per-thread byte budget, all pools together.
static BUDGET: AtomicUsize = AtomicUsize::new(512 * 1024);

/// Raised (Release) after every change a cache must conform to: a lower
/// budget, a capped pool. A cache that sees it move (Acquire) conforms on
/// its owner's next slow entry (`conform`): the one way a cache that no
/// foreign holder could reach (its owner stopped inside a call, or not yet
/// acknowledging the fenced protocol) catches up.
static GENERATION: AtomicUsize = AtomicUsize::new(0);

/// The budget now (read inside the cache, so that a change made before the
/// cache was entered is seen: see `set`).
pub(super) fn budget() -> usize {
    // Relaxed: a setting; its change is ordered for the caches by the
    // holds that apply it, and by `GENERATION` for those it could not reach.
    BUDGET.load(Ordering::Relaxed)
}

/// Stores a new budget; the caller then applies it to every cache.
pub(super) fn set(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
    changed();
}

/// A setting the caches conform to changed (a budget, a cap): every cache
/// conforms at its next slow entry, whoever reaches it first.
pub(super) fn changed() {
    // Release: pairs with the Acquire in `conform`, which then sees the change.
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The generation of the settings now (see `GENERATION`).
pub(super) fn generation() -> usize {
    // Acquire: as in `conform`.
    GENERATION.load(Ordering::Acquire)
}

/// Brings a cache in line with the settings if they changed since it last
/// did: within the budget, and no stack of a capped pool.
pub(super) fn conform(local: &mut Local) {
    // Acquire: we see every setting stored before the generation we read.
    let g = GENERATION.load(Ordering::Acquire);
    if local.generation == g {
        return;
    }
    local.generation = g;
    shrink_to(local, budget());
    for v in 0..MAX_POOLS {
        if local.heads[v].limit() > 0 {
            let home = slot_home(v);
            // Relaxed: a setting, ordered by the generation read above.
            if home.capped.load(Ordering::Relaxed) {
                drain_whole(local, v, home);
            }
        }
    }
}

/// Raises stack `i`'s limit by `more` objects of `home`'s pool.
fn raise(local: &mut Local, i: usize, home: &Home, more: u32) {
    if more == 0 {
        return;
    }
    if local.heads[i].limit() == 0 {
        // Relaxed: before the limit leaves 0 and anything is pushed; a
        // search that happens after a push sees it (coherence).
        home.stacks.fetch_add(1, Ordering::Relaxed);
        // SAFETY: null, or the `Stacks` of the cache this `Local` is in.
        if let Some(st) = unsafe { local.stacks.as_ref() } {
            st.set(i);
        }
    }
    let head = &mut local.heads[i];
    head.set_limit(head.limit() + more);
    head.room += more;
    local.reserved += more as usize * home.size;
}

/// Lowers the limit of the stack at `head` (in the cache at `l`) to
/// `limit`, at least what it holds.
///
/// # Safety
/// `head` is a stack of the cache at `l`, of `home`'s pool; the caller may
/// touch that stack and `reserved` (not necessarily the rest of the cache).
unsafe fn lower(l: *mut Local, head: *mut Head, home: &Home, limit: u32) {
    // SAFETY: the caller's guarantee: this stack is ours to touch.
    let h = unsafe { &mut *head };
    debug_assert!(limit >= h.count() && limit <= h.limit(), "a lower limit, above what the stack holds");
    let cut = h.limit() - limit;
    if cut == 0 {
        return;
    }
    h.room -= cut;
    h.set_limit(limit);
    // SAFETY: `reserved` is the caller's to touch (its guarantee); a place
    // of its own, no reference to the whole cache.
    unsafe { (*l).reserved -= cut as usize * home.size };
    if limit == 0 {
        // SAFETY: `stacks` is a field the caller may read (it never changes
        // once the cache is shared): null, or its cache's `Stacks`.
        if let Some(st) = unsafe { (*l).stacks.as_ref() } {
            // SAFETY: `head` is a stack of the cache at `l`.
            let i = unsafe { head.offset_from(core::ptr::addr_of!((*l).heads).cast::<Head>()) } as usize;
            st.clear(i);
        }
        // Release: after the stack's objects left (in a transit); a searcher
        // that reads this count acquires it and sees that transit.
        home.stacks.fetch_sub(1, Ordering::Release);
    }
}

/// Raises stack `i`'s limit towards `want` objects while the budget allows.
pub(super) fn grow(local: &mut Local, i: usize, home: &Home, want: u32, budget: usize) {
    let limit = local.heads[i].limit();
    if limit >= want || home.size == 0 {
        return;
    }
    let wanted = (want - limit) as usize;
    let left = budget.saturating_sub(local.reserved);
    // A multiplication first: the division (tens of cycles) only when the
    // budget is short.
    let more = if left >= wanted.saturating_mul(home.size) { wanted } else { (left / home.size).min(wanted) };
    raise(local, i, home, more as u32);
}

/// Makes room for one more object in stack `i`: a larger limit if the
/// budget allows (doubling, by a batch at most), else the least recently
/// used stack gives up the older half of its objects to its pool and its
/// limit shrinks to what it keeps (when that stack is `i` itself, its limit
/// stays: the room is the half it gave up).
pub(super) fn make_room(local: &mut Local, i: usize, home: &Home, budget: usize) {
    loop {
        let (room, limit) = (local.heads[i].room, local.heads[i].limit());
        if room > 0 {
            return;
        }
        grow(local, i, home, limit + limit.clamp(1, STACK_BATCH), budget);
        if local.heads[i].room > 0 {
            return;
        }
        let victim =
            local.heads.iter().enumerate().filter(|(_, h)| h.count() > 0).min_by_key(|(_, h)| h.stamp).map(|(v, _)| v);
        let Some(v) = victim else { return };
        evict_half(local, v, v != i);
    }
}

/// Stack `v` sends the older half of its objects (rounded up) to its pool,
/// as one batch; with `shrink`, its limit falls to what it keeps.
pub(super) fn evict_half(local: &mut Local, v: usize, shrink: bool) {
    let keep = local.heads[v].count() / 2;
    evict_older(local, v, keep, shrink);
}

/// Stack `v` keeps its `keep` newest objects and sends the older rest to
/// its pool, as one batch; with `shrink`, its limit falls to what it keeps.
pub(super) fn evict_older(local: &mut Local, v: usize, keep: u32, shrink: bool) {
    let home = slot_home(v);
    // SAFETY: detached from a cache we may touch: objects of this home,
    // ours; they still count as out of the pool's shared layer, so the pool
    // cannot be destroyed under us.
    unsafe { home.send_back(|| detach_older(&mut local.heads[v], keep)) };
    if shrink {
        let keep = local.heads[v].count();
        let l: *mut Local = local;
        // SAFETY: the whole cache is ours (we hold `&mut`); stack `v` of it.
        unsafe { lower(l, core::ptr::addr_of_mut!((*l).heads[v]), home, keep) };
    }
}

/// Stack `v` (of `home`'s pool) sends all its objects back and its limit
/// falls to 0.
fn drain_whole(local: &mut Local, v: usize, home: &Home) {
    if local.heads[v].count() > 0 {
        // SAFETY: detached from a cache we may touch: objects of this home, ours, counted out.
        unsafe { home.send_back(|| detach_all_of(&mut local.heads[v])) };
    }
    let l: *mut Local = local;
    // SAFETY: the whole cache is ours (we hold `&mut`); stack `v` of it, now empty.
    unsafe { lower(l, core::ptr::addr_of_mut!((*l).heads[v]), home, 0) };
}

/// Brings a cache within `budget`: the least recently used stacks give up
/// their objects and their limits until `reserved <= budget`.
pub(super) fn shrink_to(local: &mut Local, budget: usize) {
    while local.reserved > budget {
        let victim = local.heads.iter().enumerate().filter(|(_, h)| h.limit() > 0).min_by_key(|(_, h)| h.stamp);
        let Some((v, _)) = victim else { break };
        drain_whole(local, v, slot_home(v));
    }
    debug_assert!(local.reserved <= budget || local.heads.iter().all(|h| h.limit() == 0));
}

/// Sends every cached object back to its pool and zeroes every limit.
pub(super) fn empty(local: &mut Local) {
    shrink_to(local, 0);
    debug_assert!(local.heads.iter().all(|h| h.limit() == 0 && h.room == 0), "an emptied cache holds nothing");
    debug_assert_eq!(local.reserved, 0, "an emptied cache reserves nothing");
}

/// Once a window (a quarter of the release period): every stack that went
/// the whole window without a slow call (no refill, never full) keeps at
/// most half of its objects, and at most a batch, and gives the older rest
/// to its pool; its limit shrinks to what it keeps (an empty one gives its
/// limit up). A thread that keeps using a few objects through its cache
/// gives its surplus back within a window or two (it then sits in the
/// shared cache, where what stays idle a period goes back to the OS); one
/// whose need is larger soon refills, which stamps its stack and stops the
/// decay.
pub(super) fn decay(local: &mut Local) {
    for v in 0..MAX_POOLS {
        let h = &local.heads[v];
        if h.limit() > 0 && h.stamp <= local.decayed {
            let count = h.count();
            if count > 0 {
                evict_older(local, v, (count / 2).min(STACK_BATCH), true);
            } else {
                let l: *mut Local = local;
                // SAFETY: the whole cache is ours; stack `v`, empty.
                unsafe { lower(l, core::ptr::addr_of_mut!((*l).heads[v]), slot_home(v), 0) };
            }
        }
    }
    local.tick += 1;
    local.decayed = local.tick;
}

// ---- one stack, from outside ---------------------------------------------
// A foreign holder that the protocol lets touch one stack (its owner may be
// inside another) uses these: they reach that stack and `reserved` through
// raw places, never a reference to the whole cache.

/// Takes one idle object of `slot`'s stack, or null.
///
/// # Safety
/// `l` is a live cache whose stack `slot` (and `reserved`) the caller may touch.
pub(super) unsafe fn take_one(l: *mut Local, slot: Slot) -> *mut Link {
    // SAFETY: the caller's guarantee.
    let head = unsafe { &mut *head_ptr(l, slot) };
    let top = head.top;
    // Between reading the stack and taking from it: an owner that entered
    // the stack now (it must not) would lose or double an object here.
    crate::sync::race_window();
    debug_assert!(core::ptr::eq(top, head.top), "nobody else touches a held stack");
    pop_head(head)
}

/// Objects idle in `slot`'s stack.
///
/// # Safety
/// As `take_one`.
pub(super) unsafe fn count_of(l: *mut Local, slot: Slot) -> usize {
    // SAFETY: the caller's guarantee.
    unsafe { (*head_ptr(l, slot)).count() as usize }
}

/// Detaches every object of `slot`'s stack and zeroes its limit: the chain
/// and its length. The caller sends the chain on (inside a transit begun
/// before this call).
///
/// # Safety
/// As `take_one`; `home` is the slot's pool.
pub(super) unsafe fn drain_stack(l: *mut Local, slot: Slot, home: &Home) -> (*mut Link, u32) {
    // SAFETY: the caller's guarantee: `l` is a live cache.
    let head = unsafe { head_ptr(l, slot) };
    // SAFETY: the caller's guarantee.
    let (chain, n) = detach_all_of(unsafe { &mut *head });
    // SAFETY: as above; the stack is now empty.
    unsafe { lower(l, head, home, 0) };
    (chain, n)
}

/// Zeroes the limit of `slot`'s stack if it holds nothing (so that a
/// search at the pool's limit need not look into this cache again).
///
/// # Safety
/// As `drain_stack`.
pub(super) unsafe fn forget_if_empty(l: *mut Local, slot: Slot, home: &Home) {
    // SAFETY: the caller's guarantee: `l` is a live cache.
    let head = unsafe { head_ptr(l, slot) };
    // SAFETY: the caller's guarantee.
    let h = unsafe { &*head };
    if h.limit() > 0 && h.count() == 0 {
        // SAFETY: the caller's guarantee; the stack is empty.
        unsafe { lower(l, head, home, 0) };
    }
}

/// `reserved`, for a foreign holder that may not touch the whole cache.
///
/// # Safety
/// As `take_one` (`reserved` changes only on the owner's whole entries).
pub(super) unsafe fn reserved_of(l: *mut Local) -> usize {
    // SAFETY: the caller's guarantee.
    unsafe { (*l).reserved }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::local::EMPTY_LOCAL;
    use super::*;

    #[test]
    fn limits_grow_within_the_budget() {
        static BACK: super::super::local::Back = super::super::local::Back {
            begin: |_| {},
            take: |_, _, _| {},
            fetch: |_, _| (std::ptr::null_mut(), 0),
            at_limit: |_| false,
        };
        let home = |size| Home {
            stack: super::super::local::Slot::NONE,
            size,
            capped: Default::default(),
            stacks: AtomicUsize::new(0),
            back: &BACK,
        };
        let (a, b) = (home(1024), home(8192));
        let mut local = EMPTY_LOCAL;
        grow(&mut local, 3, &a, 40, 16 * 1024);
        assert_eq!((local.heads[3].limit(), local.reserved), (16, 16 * 1024), "no further than the budget");
        assert_eq!(a.stacks.load(Ordering::Relaxed), 1, "one cache has a stack of it");
        grow(&mut local, 4, &a, 10, 16 * 1024);
        assert_eq!(local.heads[4].limit(), 0, "the budget is spent");
        assert_eq!(a.stacks.load(Ordering::Relaxed), 1, "no limit, no stack counted");
        grow(&mut local, 5, &b, 1, 4096);
        assert_eq!(local.heads[5].limit(), 0, "larger than the budget: never cached");
        let l: *mut Local = &mut local;
        // SAFETY: a test-owned cache; stack 3 is empty.
        unsafe { lower(l, core::ptr::addr_of_mut!((*l).heads[3]), &a, 0) };
        assert_eq!((local.reserved, a.stacks.load(Ordering::Relaxed)), (0, 0), "given up, uncounted");
    }

    /// A stack that went a window without a slow call keeps at most half of
    /// its objects and at most a batch (it kept half before: a thread that
    /// keeps using a few objects through its cache held a crowded pool's
    /// surplus for periods), and gives the older rest to its pool.
    #[test]
    fn decay_keeps_at_most_a_batch_of_an_untouched_stack() {
        use super::super::local::{claim_slot, free_slot, push_counted, Back};
        use crate::link::{next_of, Link};
        use crate::sync::RawCell;
        static TAKEN: AtomicUsize = AtomicUsize::new(0);
        /// # Safety
        /// A chain of `n` test nodes made by `Box::into_raw`.
        unsafe fn take(_: &Home, mut c: *mut Link, n: usize) {
            TAKEN.fetch_add(n, Ordering::Relaxed);
            while !c.is_null() {
                // SAFETY: a test node of the chain; read its link first.
                let next = unsafe { next_of(c) };
                // SAFETY: made by Box::into_raw below, given back once.
                drop(unsafe { Box::from_raw(c) });
                c = next;
            }
        }
        static BACK: Back = Back { begin: |_| {}, take, fetch: |_, _| (std::ptr::null_mut(), 0), at_limit: |_| false };
        let _g = crate::test_support::serial();
        let home: &'static mut Home = Box::leak(Box::new(Home {
            stack: super::super::local::Slot::NONE,
            size: 64,
            capped: Default::default(),
            stacks: AtomicUsize::new(0),
            back: &BACK,
        }));
        let slot = claim_slot(home).expect("a free slot");
        let i = slot.index();
        let mut local = EMPTY_LOCAL;
        raise(&mut local, i, home, 464);
        for _ in 0..464 {
            let n = Box::into_raw(Box::new(Link { next: RawCell::new(std::ptr::null_mut()) }));
            // SAFETY: a fresh test node, pushed once, with room.
            unsafe { push_counted(&mut local.heads[i], n) };
        }
        TAKEN.store(0, Ordering::Relaxed);
        decay(&mut local); // stamp 0 <= decayed 0: untouched for a window
        assert_eq!((local.heads[i].count(), TAKEN.load(Ordering::Relaxed)), (32, 432), "at most a batch stays");
        assert_eq!(local.heads[i].limit(), 32, "the limit shrinks to what it keeps");
        decay(&mut local);
        assert_eq!(local.heads[i].count(), 16, "then half, window after window");
        empty(&mut local);
        assert_eq!(TAKEN.load(Ordering::Relaxed), 464, "every object given back once");
        free_slot(slot);
        // SAFETY: made by Box::leak above; its slot is free, nothing points at it now.
        drop(unsafe { Box::from_raw(home as *mut Home) });
    }
}
