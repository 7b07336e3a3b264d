//! The owner's slow paths: what the fast path hands over when the stack is
//! empty or full, when the thread has no cache yet, when a foreign holder
//! is in, or in the fenced mode (where every call comes here for its
//! fence). Each enters the cache itself, never waits, and, entered whole,
//! first brings the cache in line with the settings (`budget::conform`).

use super::budget::{self, conform, make_room};
use super::current;
use super::life;
use super::local::{head_ptr, push_counted, Home, Local, Slot, ThreadCache};
use crate::link::{next_of, set_next};
use crate::owned::WHOLE;
use std::ptr::null_mut;
use std::sync::atomic::Ordering;

/// The fast path's own work, in the fenced mode: entered with a fence, on
/// `slot`'s stack alone (so that an owner stopped here still lets foreign
/// holders reach its other stacks). `None`: a foreign holder is in (or the
/// cache must conform first: the caller enters whole).
fn fenced_stack<R>(tc: &ThreadCache, slot: Slot, f: impl FnOnce(*mut Local) -> R) -> Option<Option<R>> {
    let mut inside = tc.cell.enter_slow(slot.tag())?;
    Some(inside.with(|l| {
        // SAFETY: inside on one stack: `generation` is written only by whole
        // holders (the owner entered whole, or a foreign holder whom the
        // protocol keeps out while we are in), so reading it is ours too.
        if unsafe { (*l).generation } != budget::generation() {
            return None;
        }
        Some(f(l))
    }))
}

/// The slow side of `take`: an object of the stack (in the fenced mode,
/// where the fast path never enters), else an empty stack refills from its
/// pool's shared cache with a batch and hands out one object of it; null
/// when the shared cache is empty, there is no cache for this pool, or a
/// foreign holder is in ours. The stack grows only by what it then holds,
/// and never while its pool is capped.
#[cold]
#[inline(never)]
pub(crate) fn refill(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot() else { return null_mut() };
    let tc = current::get();
    if current::is_none(tc) {
        return (home.back.fetch)(home, 1).0.cast();
    }
    if tc.cell.fences_itself() {
        // SAFETY: inside on this slot's stack.
        match fenced_stack(tc, slot, |l| unsafe { budget::take_one(l, slot) }) {
            None => return (home.back.fetch)(home, 1).0.cast(),
            Some(Some(item)) if !item.is_null() => return item.cast(),
            Some(_) => {}
        }
    }
    let Some(mut inside) = tc.cell.enter_slow(WHOLE) else {
        return (home.back.fetch)(home, 1).0.cast();
    };
    // SAFETY: inside our cache, whole.
    inside.with(|l| refill_in(unsafe { &mut *l }, slot, home)).cast()
}

fn refill_in(local: &mut Local, slot: Slot, home: &Home) -> *mut crate::link::Link {
    conform(local);
    let l: *mut Local = local;
    // SAFETY: the whole cache is ours.
    let item = unsafe { budget::take_one(l, slot) };
    if !item.is_null() {
        return item;
    }
    let i = slot.index();
    local.tick += 1;
    local.heads[i].stamp = local.tick;
    // Relaxed: a setting, read inside the cache (see `Home::capped`).
    if home.capped.load(Ordering::Relaxed) || (home.back.at_limit)(home) {
        // Capped, or at the limit: nothing is cached (a stack that grew here
        // would make every failed search at the limit look into this cache
        // again); the one object fetched, if any, goes to the caller.
        return (home.back.fetch)(home, 1).0;
    }
    // Room for a batch first, then the batch: its objects leave the shared
    // cache for a stack that is already counted (`Home::stacks`, the cache's
    // `Stacks` bit), so a search at the limit meanwhile finds this cache,
    // its owner busy, and looks again, rather than miss them. The limit
    // doubles (up to a batch more) while the budget allows, so that a stack
    // grows with what the thread uses and a decayed one starts small again.
    let limit = local.heads[i].limit();
    budget::grow(local, i, home, limit + limit.clamp(1, super::local::STACK_BATCH), budget::budget());
    let want = local.heads[i].room.min(super::local::STACK_BATCH) as usize + 1;
    let (chain, n) = (home.back.fetch)(home, want);
    #[cfg(all(test, not(loom)))]
    test_hook::fetched();
    if n <= 1 {
        return chain;
    }
    // SAFETY: the fetched chain is ours, `n` linked objects.
    let mut p = unsafe { next_of(chain) };
    // SAFETY: `chain` leaves the chain for the caller.
    unsafe { set_next(chain, null_mut()) };
    while !p.is_null() {
        // SAFETY: objects of the fetched chain, ours; read the link first.
        let next = unsafe { next_of(p) };
        // SAFETY: an idle object of this pool, counted out, now cached;
        // `want` was at most the room plus the one handed out.
        unsafe { push_counted(&mut local.heads[i], p) };
        p = next;
    }
    chain
}

/// The slow side of `put`: gives this thread a cache if it has none, makes
/// room in a full stack (a larger limit, or objects of the least recently
/// used stack sent to their pool), and caches the object. Returns false
/// when the object cannot be cached here now (no slot for this pool,
/// larger than the budget, pool above a lowered limit, thread exiting, no
/// memory for a cache, or a foreign holder in the cache): the caller then
/// releases it to the pool. Never waits. The budget and the cap are read
/// inside the cache, so a change made before we entered is seen.
#[cold]
#[inline(never)]
pub(crate) fn put_slow(home: &Home, ptr: *mut u8) -> bool {
    let Some(slot) = home.slot() else { return false };
    let mut tc = current::get();
    if current::is_none(tc) {
        if life::exited() {
            return false;
        }
        match life::attach() {
            Some(t) => tc = t,
            None => return false,
        }
    }
    if tc.cell.fences_itself() {
        let pushed = fenced_stack(tc, slot, |l| {
            // SAFETY: inside on this slot's stack.
            let head = unsafe { &mut *head_ptr(l, slot) };
            let fits = head.room > 0;
            if fits {
                // SAFETY: the caller gives the object up; room checked.
                unsafe { push_counted(head, ptr.cast()) };
            }
            fits
        });
        match pushed {
            None => return false,
            Some(Some(true)) => return true,
            Some(_) => {}
        }
    }
    let Some(mut inside) = tc.cell.enter_slow(WHOLE) else { return false };
    // SAFETY: inside our cache, whole.
    inside.with(|l| put_in(unsafe { &mut *l }, slot, home, ptr))
}

fn put_in(local: &mut Local, slot: Slot, home: &Home, ptr: *mut u8) -> bool {
    conform(local);
    let budget = budget::budget();
    // Relaxed: a setting, read inside the cache (see `Home::capped`).
    if home.size > budget || home.capped.load(Ordering::Relaxed) {
        return false;
    }
    let i = slot.index();
    if local.heads[i].room == 0 {
        // A full stack: the slow path proper (not just the fenced mode's fence).
        local.tick += 1;
        local.heads[i].stamp = local.tick;
        make_room(local, i, home, budget);
    }
    let cached = local.heads[i].room > 0;
    if cached {
        // SAFETY: the caller gives the object up; inside our cache; room checked.
        unsafe { push_counted(&mut local.heads[i], ptr.cast()) };
    }
    cached
}

/// Rearms this thread's countdown to its next maintenance tick, after
/// `every` releases. The countdown is the owner's alone: no entry needed.
#[cold]
pub(crate) fn rearm(every: u32) {
    let tc = current::get();
    if !current::is_none(tc) {
        // SAFETY: this thread's own cache.
        *unsafe { tc.countdown() } = every.max(1);
    }
}

/// A pause between a refill's fetch and its pushes, for the unit test of
/// that window (a search at the limit must not miss what it fetched).
#[cfg(all(test, not(loom)))]
pub(crate) mod test_hook {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
    }
    pub(crate) static PAUSED: AtomicBool = AtomicBool::new(false);
    pub(crate) static RESUME: AtomicBool = AtomicBool::new(false);

    /// The calling thread's next refill pauses after its fetch.
    pub(crate) fn arm() {
        ARMED.with(|a| a.set(true));
    }

    pub(super) fn fetched() {
        if ARMED.with(|a| a.replace(false)) {
            PAUSED.store(true, SeqCst);
            while !RESUME.load(SeqCst) {
                std::thread::yield_now();
            }
        }
    }
}
