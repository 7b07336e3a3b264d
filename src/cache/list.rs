//! The registry of live thread caches, and the one way to hold caches from
//! outside: lock the registry (that is what makes the holder the only
//! foreign side), announce a batch of caches, run one barrier for all of
//! them, then see, cache by cache, what its owner lets the holder touch.
//! Nothing here waits for an owner.
//!
//! Lock order: the pool registry, then `CACHES`, then a cache's foreign
//! hold, then the shared caches.

use super::current;
use super::local::{Local, ThreadCache};
use crate::barrier::{self, Barrier};
use crate::owned::{ForeignSide, Owner, Settled};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

/// Every live thread cache.
static CACHES: Mutex<Vec<CachePtr>> = Mutex::new(Vec::new());

pub(super) struct CachePtr(pub(super) NonNull<ThreadCache>);
// SAFETY: a cache is shared between threads only through its busy/foreign protocol.
unsafe impl Send for CachePtr {}

/// The registry, locked: the holder is the only foreign side of every
/// registered cache, which stays alive until the guard drops.
pub(super) struct Registry {
    list: MutexGuard<'static, Vec<CachePtr>>,
    side: ForeignSide,
}

impl Registry {
    pub(super) fn lock() -> Registry {
        let list = CACHES.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every foreign holder holds `CACHES`, and we do now.
        Registry { list, side: unsafe { ForeignSide::assume() } }
    }

    /// `lock`, unless another thread has it (the free path never waits).
    pub(super) fn try_lock() -> Option<Registry> {
        let list = CACHES.try_lock().ok()?;
        // SAFETY: as in `lock`.
        Some(Registry { list, side: unsafe { ForeignSide::assume() } })
    }

    pub(super) fn side(&self) -> &ForeignSide {
        &self.side
    }

    /// The caches registered now.
    pub(super) fn caches(&self) -> impl Iterator<Item = &ThreadCache> + '_ {
        // SAFETY: a registered cache stays alive while the registry is locked.
        self.list.iter().map(|c| unsafe { c.0.as_ref() })
    }

    pub(super) fn list_mut(&mut self) -> &mut Vec<CachePtr> {
        &mut self.list
    }

    /// Keeps the caches for which `f` says true.
    #[cfg(not(loom))]
    pub(super) fn retain(&mut self, mut f: impl FnMut(&ForeignSide, &ThreadCache, NonNull<ThreadCache>) -> bool) {
        let side = &self.side;
        // SAFETY: a registered cache stays alive while the registry is locked.
        self.list.retain(|c| f(side, unsafe { c.0.as_ref() }, c.0));
    }

    /// Announces every registered cache, then runs one barrier for them all
    /// (none when the only one is the caller's own, which it is not inside).
    pub(super) fn hold_all(&self) -> Batch<'_> {
        self.hold(|_| true)
    }

    /// `hold_all`, of the caches `pick` names only (the others are not
    /// touched at all: no announce, no barrier).
    pub(super) fn hold(&self, pick: impl Fn(&ThreadCache) -> bool) -> Batch<'_> {
        let mut others = false;
        for tc in self.caches() {
            if pick(tc) {
                tc.cell.announce(&self.side);
                others |= !current::is_own(tc);
            }
        }
        Batch { reg: self, settled: self.barrier(others) }
    }

    /// The foreign side's barrier after its announces. If `membarrier`
    /// fails now for the first time, every cache is made to fence its owner
    /// (and is trusted only once that owner acknowledges): a failed barrier
    /// is never taken as a barrier.
    fn barrier(&self, others: bool) -> Settled<'_> {
        if !others {
            return Settled::alone(&self.side);
        }
        match barrier::heavy() {
            Barrier::Process => Settled::new(&self.side, true),
            Barrier::Fence => Settled::new(&self.side, false),
            Barrier::Lost => {
                for tc in self.caches() {
                    tc.cell.make_fenced(&self.side);
                }
                // SeqCst: the switch is ordered before our reads of `acked`.
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                Settled::new(&self.side, false)
            }
        }
    }
}

/// Every registered cache, announced and settled; each is let go when the
/// batch drops.
pub(super) struct Batch<'a> {
    reg: &'a Registry,
    settled: Settled<'a>,
}

impl Batch<'_> {
    /// Was the barrier the process-wide one (every owner's earlier stores
    /// are visible)?
    #[cfg(not(loom))]
    pub(super) fn is_process(&self) -> bool {
        self.settled.is_process()
    }

    /// The caches held.
    pub(super) fn caches(&self) -> impl Iterator<Item = &ThreadCache> + '_ {
        self.reg.caches().filter(|tc| tc.cell.is_announced(&self.reg.side))
    }

    /// What `tc`'s owner does, once it lets us touch the part `tag` names
    /// (`owned::WHOLE`: the whole cache), or a few microseconds at most
    /// after we asked: an owner inside an operation takes nanoseconds,
    /// unless its thread was preempted in the middle, and we never wait
    /// for the scheduler.
    pub(super) fn owner(&self, tc: &ThreadCache, tag: u32) -> Owner {
        for _ in 0..OWNER_SPINS {
            let o = tc.cell.owner(&self.settled);
            if o.lets(tag) || o == Owner::Unsettled {
                return o;
            }
            core::hint::spin_loop();
        }
        tc.cell.owner(&self.settled)
    }

    /// Runs `f` on the cache, which the caller may touch in the parts that
    /// `owner(tc)` lets it.
    pub(super) fn with<R>(&self, tc: &ThreadCache, f: impl FnOnce(*mut Local) -> R) -> R {
        tc.cell.with_held(&self.settled, f)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for tc in self.caches() {
            tc.cell.unhold(&self.reg.side);
        }
    }
}

/// `pause`s a busy owner is given: a few microseconds at most.
const OWNER_SPINS: u32 = 256;
