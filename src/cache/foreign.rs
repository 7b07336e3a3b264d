//! What other threads do in a cache: take an idle object at a pool's
//! limit, drain a pool, count, decay, apply a budget. Each operation locks
//! the registry, holds every cache at once with one barrier
//! (`Registry::hold_all`), and touches in each cache only what its owner
//! lets it (`Owner::lets`): all of it when the owner is out, every stack
//! but one when the owner is inside a call on that one, nothing when it is
//! inside a slow path or (after the process lost `membarrier`) has not
//! acknowledged the fenced protocol yet. No operation waits for an owner
//! while it holds the registry: a cache it cannot reach is skipped (and
//! counted as holding nothing), or, for the two changes that must reach
//! every cache (a lower budget, a capped pool), revisited after the lock is
//! let go, and caught up by its owner's next slow entry anyway
//! (`budget::conform`).

use super::budget;
use super::list::Registry;
use super::local::{free_slot, Home, Slot};
use crate::link::Link;
use crate::owned::{Owner, WHOLE};
use crate::sync::Spin;
use std::ptr::null_mut;
use std::sync::atomic::Ordering;

/// Takes one idle object of `home`'s pool from any thread's cache (the
/// limit's path), or null when none is to be had: none of the caches the
/// owners let us reach holds one. Costs nothing when no cache has a stack
/// of the pool (`Home::stacks`); else one lock and one barrier for all the
/// caches that have one, whose empty stacks of the pool then give up their
/// limits (so that the next search costs nothing again). The second value
/// says that a cache with a stack of the pool could not be looked into (its
/// owner inside a call on this pool, or a slow path, even after a few
/// microseconds): the caller may look again later, with no lock held.
pub(crate) fn find_idle(home: &Home) -> (*mut u8, bool) {
    let Some(slot) = home.slot() else { return (null_mut(), false) };
    // Acquire: pairs with the Release of a stack's limit falling to 0, so
    // that we see the transit that moved its objects (the caller checks it).
    if home.stacks.load(Ordering::Acquire) == 0 {
        return (null_mut(), false);
    }
    let reg = Registry::lock();
    let batch = reg.hold(|tc| tc.stacks.has(slot.index()));
    let mut found: *mut Link = null_mut();
    let mut busy = false;
    for tc in batch.caches() {
        // Unsettled too: an owner that calls the library acknowledges soon.
        if !batch.owner(tc, slot.tag()).lets(slot.tag()) {
            busy = true;
            continue;
        }
        batch.with(tc, |l| {
            if found.is_null() {
                // SAFETY: held, and the owner lets us touch this slot's stack.
                found = unsafe { budget::take_one(l, slot) };
            }
            // SAFETY: as above.
            unsafe { budget::forget_if_empty(l, slot, home) };
        });
    }
    (found.cast(), busy && found.is_null())
}

/// What a drain could not reach.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Missed {
    /// Caches whose owner was inside a call on this pool, or a slow path.
    pub(crate) busy: usize,
    /// Caches whose owner has not acknowledged the fenced protocol yet (the
    /// process lost `membarrier`): they conform at their owner's next call.
    pub(crate) unsettled: usize,
}

impl Missed {
    pub(crate) fn none(&self) -> bool {
        self.busy == 0 && self.unsettled == 0
    }
}

/// Detaches every idle object of `home`'s pool from every thread's cache
/// the owners let us reach, and hands each chain to `f` (inside the hold);
/// those stacks' limits fall to 0 (a capped pool's caches refuse its
/// objects from then on). Returns the objects detached and what it missed.
pub(crate) fn drain(home: &Home, mut f: impl FnMut(*mut Link)) -> (usize, Missed) {
    let Some(slot) = home.slot() else { return (0, Missed::default()) };
    let reg = Registry::lock();
    // A cache with no stack of the pool holds nothing of it, and only a
    // call on the pool could give it one.
    let batch = reg.hold(|tc| tc.stacks.has(slot.index()));
    let (mut total, mut missed) = (0, Missed::default());
    for tc in batch.caches() {
        match batch.owner(tc, slot.tag()) {
            o if o.lets(slot.tag()) => {}
            Owner::Unsettled => {
                missed.unsettled += 1;
                continue;
            }
            _ => {
                missed.busy += 1;
                continue;
            }
        }
        total += batch.with(tc, |l| {
            // SAFETY: held, and the owner lets us touch this slot's stack.
            let (chain, n) = unsafe { budget::drain_stack(l, slot, home) };
            if !chain.is_null() {
                f(chain);
            }
            n as usize
        });
    }
    (total, missed)
}

/// Holds every thread cache whose owner lets us read `slot`'s stack, all
/// at once with one barrier, then calls `read` and counts the idle objects
/// of `slot` in them: a snapshot no owner can change while it is taken. A
/// cache whose owner is inside a call on this pool (or a slow path) is
/// counted as holding nothing: the count errs high, never low, and never
/// waits on the scheduler; an owner inside a call on another pool does not
/// hide this one's objects. At quiescence the count is exact. Returns
/// `(read(), idle)`.
pub(crate) fn snapshot(slot: Slot, read: impl FnOnce() -> usize) -> (usize, usize) {
    let reg = Registry::lock();
    let batch = reg.hold(|tc| tc.stacks.has(slot.index()));
    let mut idle = 0;
    for tc in batch.caches() {
        if batch.owner(tc, slot.tag()).lets(slot.tag()) {
            // SAFETY: held, and the owner lets us read this slot's stack.
            idle += batch.with(tc, |l| unsafe { budget::count_of(l, slot) });
        }
    }
    let r = read();
    drop(batch);
    (r, idle)
}

/// Every stack of every thread's cache that went a whole period without a
/// slow call (no refill, never full) gives the older half of its objects
/// to its pool (an empty one, its limit): a cache whose objects stay idle
/// drains, half a period's worth at a time, into the shared caches, where
/// what stays idle a whole period goes back to the OS. Called once a
/// period. A cache whose owner is inside a call is left for the next.
pub(crate) fn decay_all() {
    decay(&Registry::lock());
}

/// `decay_all`, unless the registry of caches is busy (then false): for
/// the free path's tick, which must not wait.
pub(crate) fn try_decay_all() -> bool {
    let Some(reg) = Registry::try_lock() else { return false };
    decay(&reg);
    true
}

fn decay(reg: &Registry) {
    let batch = reg.hold_all();
    for tc in batch.caches() {
        if batch.owner(tc, WHOLE) == Owner::Out {
            batch.with(tc, |l| {
                // SAFETY: held, and the owner is out: the whole cache is ours.
                let local = unsafe { &mut *l };
                budget::conform(local);
                budget::decay(local);
            });
        }
    }
}

/// How many idle objects of `home`'s pool sit in thread caches (for the tests).
#[cfg(all(test, not(loom)))]
pub(crate) fn idle(home: &Home) -> usize {
    match home.slot() {
        Some(slot) => snapshot(slot, || 0).1,
        None => 0,
    }
}

/// Frees a slot once every cache is drained of its pool.
pub(crate) fn release_slot(slot: Slot) {
    debug_assert!(
        Registry::lock().caches().all(|tc| !tc.stacks.has(slot.index())),
        "a pool keeps its slot until every cache is drained of it"
    );
    free_slot(slot);
}

/// Sets the per-thread budget and applies it to every thread's cache: a
/// cache above the new budget gives up the objects and the limits of its
/// least recently used stacks until it is within it. A higher budget needs
/// no cache to change. A lower one is applied to every cache whose owner
/// is out now; caches whose owner is inside a call are revisited (with the
/// registry let go between rounds) until they conform, so that when this
/// returns no cache is above the budget, but those of owners not yet
/// acknowledging the fenced protocol, which conform at their next call. A
/// thread stopped inside a call delays the caller of a lower budget, and
/// no one else.
pub(crate) fn set_budget(bytes: usize) {
    let old = budget::budget();
    budget::set(bytes);
    if bytes >= old {
        return;
    }
    let mut backoff = Backoff::new();
    loop {
        let mut waiting = false;
        {
            let reg = Registry::lock();
            let batch = reg.hold_all();
            let target = budget::budget();
            for tc in batch.caches() {
                match batch.owner(tc, WHOLE) {
                    // SAFETY: held, and the owner is out: the whole cache is ours.
                    Owner::Out => batch.with(tc, |l| budget::conform(unsafe { &mut *l })),
                    // Inside a fast call: its `reserved` is ours to read.
                    // SAFETY: the owner touches one stack, never `reserved`, there.
                    Owner::In(_) => waiting |= batch.with(tc, |l| unsafe { budget::reserved_of(l) }) > target,
                    Owner::Whole => waiting = true,
                    Owner::Unsettled => {}
                }
            }
        }
        if !waiting {
            return;
        }
        backoff.wait();
    }
}

/// The wait between the rounds of an operation that must reach every
/// cache: spins, then `sched_yield()`, then sleeps growing from 50 us to
/// 1 ms (a thread stopped inside a call may stay stopped for long; we hold
/// no lock meanwhile).
pub(crate) struct Backoff {
    spin: Spin,
    rounds: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { spin: Spin::new(), rounds: 0 }
    }

    pub(crate) fn wait(&mut self) {
        self.rounds += 1;
        if self.rounds < 16 {
            self.spin.wait();
        } else {
            let us = (50u32 << (self.rounds - 16).min(5)).min(1000);
            let t = libc::timespec { tv_sec: 0, tv_nsec: us as libc::c_long * 1000 };
            // SAFETY: a valid timespec; the remainder is not wanted.
            unsafe { libc::nanosleep(&t, null_mut()) };
        }
    }
}
