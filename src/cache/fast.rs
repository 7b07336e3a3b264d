//! The fast path: an allocation takes the top of its stack in this
//! thread's cache, a release pushes on it while it has room. No atomic
//! read-modify-write, no fence, no shared counter: one plain store of the
//! owner's `busy` tag, a read of `foreign`, the stack, one plain store.

use super::current;
use super::local::{head_ptr, pop_head, push_head, Home, TICK_EVERY};
use std::ptr::null_mut;

/// Takes an idle object of `home`'s pool from this thread's cache; null if
/// none (or no cache, or a foreign holder in it): the caller's slow path.
#[inline(always)]
pub(crate) fn take(home: &Home) -> *mut u8 {
    // A pool without a cache enters `Slot::NONE`, which has nothing.
    let slot = home.stack;
    let tc = current::get();
    let Some(mut inside) = tc.cell.enter(slot.tag()) else { return null_mut() };
    // SAFETY: inside our cache, on this slot's stack.
    inside.with(|l| pop_head(unsafe { &mut *head_ptr(l, slot) })).cast()
}

/// What `put` did.
pub(crate) const REFUSED: u8 = 0;
/// Cached.
pub(crate) const CACHED: u8 = 1;
/// Cached, and this thread's maintenance tick is due (`crate::maintain`).
pub(crate) const CACHED_TICK: u8 = 2;

/// Keeps a released object in this thread's cache if its stack has room,
/// without waiting. `REFUSED`: the caller takes the slow path (`put_slow`).
#[inline(always)]
pub(crate) fn put(home: &Home, ptr: *mut u8) -> u8 {
    // A pool without a cache enters `Slot::NONE`, which has no room.
    let slot = home.stack;
    let tc = current::get();
    let Some(mut inside) = tc.cell.enter(slot.tag()) else { return REFUSED };
    let cached = inside.with(|l| {
        // SAFETY: inside our cache, on this slot's stack.
        let head = unsafe { &mut *head_ptr(l, slot) };
        // Takes a unit of room and tests for none in one decrement (`sub;
        // jb`): the stack is ours until we leave, so a borrow is undone
        // before anyone can see it.
        let (room, none) = head.room.overflowing_sub(1);
        head.room = room;
        if none {
            head.room = 0;
            return false;
        }
        // SAFETY: the caller gives the object up; the stack is ours now.
        unsafe { push_head(head, ptr.cast()) };
        true
    });
    drop(inside);
    if !cached {
        return REFUSED;
    }
    // SAFETY: our own cache's countdown (we are its owner: it is this
    // thread's, and not the stand-in, which no owner enters).
    let countdown = unsafe { tc.countdown() };
    *countdown -= 1;
    if *countdown != 0 {
        return CACHED;
    }
    // Rearmed here, so that a caller that does not run the tick loses only
    // that tick; the tick may rearm it sooner.
    *countdown = TICK_EVERY;
    CACHED_TICK
}
