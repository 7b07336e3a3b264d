//! The registry of pools: creation (and merging of `MEM_F_SHARED` pools),
//! destruction, the walk over every pool that `pool_gc` and the report
//! make, and the pools' part of the `fork()` handlers.
//!
//! Lock order: `POOLS`, then the thread-cache registry (a pool is drained
//! from every cache when it is destroyed), then the shared caches.

use crate::cache;
use crate::debug::{self, Checks};
use crate::flags::{
    MEM_F_EXACT, MEM_F_SHARED, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE,
    POOL_F_SHARED_XCHG,
};
use crate::os::{free_box, try_box};
#[cfg(not(loom))]
use crate::pool::Memory;
use crate::pool::{Pool, NAME_LEN};
use crate::shared::{debug_store::DebugStore, Shared};
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::Ordering::Relaxed;
#[cfg(not(loom))]
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Mutex, MutexGuard};

/// Largest object size a pool accepts (2 GiB).
pub(crate) const MAX_SIZE: u32 = 1 << 31;
/// Largest alignment a pool accepts (1 MiB).
pub(crate) const MAX_ALIGN: u32 = 1 << 20;
/// Smallest object the pool asks of the OS: room for an idle object's link.
const MIN_OBJECT: usize = 16;
/// Object sizes are rounded up to this unless `MEM_F_EXACT`.
const SIZE_ROUND: usize = 16;

const ALGO_FLAGS: u32 = POOL_F_SHARED_XCHG | POOL_F_SHARED_LOCKED | POOL_F_SHARED_DWCAS | POOL_F_SHARED_NONE;
const KNOWN_FLAGS: u32 = MEM_F_SHARED | MEM_F_EXACT | ALGO_FLAGS | POOL_F_NO_LOCAL_CACHE;

struct PoolPtr(NonNull<Pool>);
// SAFETY: pools are shared by design; all their mutable state is atomic or
// behind their own locks.
unsafe impl Send for PoolPtr {}

/// Every live pool.
static POOLS: Mutex<Vec<PoolPtr>> = Mutex::new(Vec::new());

fn pools() -> MutexGuard<'static, Vec<PoolPtr>> {
    POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates a pool, or returns the pool it merges with. Null on bad input
/// or when memory is short.
pub(crate) fn create(name: &[u8], size: u32, align: u32, flags: u32) -> *mut Pool {
    create_with(name, size, align, flags, false)
}

/// Creates one of the library's own pools: never merged with another.
pub(crate) fn create_private(name: &[u8], size: u32, flags: u32) -> *mut Pool {
    create_with(name, size, 0, flags, true)
}

fn create_with(name: &[u8], size: u32, align: u32, flags: u32, private: bool) -> *mut Pool {
    debug::init_from_env();
    let algo = flags & ALGO_FLAGS;
    if size == 0
        || size > MAX_SIZE
        || align > MAX_ALIGN
        || (align != 0 && !align.is_power_of_two())
        || flags & !KNOWN_FLAGS != 0
        || algo.count_ones() > 1
    {
        return null_mut();
    }
    let size = if flags & MEM_F_EXACT != 0 { size as usize } else { (size as usize).next_multiple_of(SIZE_ROUND) };
    // Alignments up to malloc's own (16 on the 64-bit targets) come free.
    let align = if align as usize <= 16 { 0 } else { align as usize };
    let mut stored = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN - 1);
    stored[..n].copy_from_slice(&name[..n]);

    let checks = Checks::snapshot(size, &stored[..n]);
    let mut reg = pools();
    if flags & MEM_F_SHARED != 0 && !private {
        for p in reg.iter() {
            // SAFETY: registered pools are alive while POOLS is locked.
            let q = unsafe { p.0.as_ref() };
            if !q.private
                && q.flags == flags
                && q.size() == size
                && q.align == align
                && Checks::same(q.dbg.as_ref(), checks.as_ref())
            {
                q.users.fetch_add(1, Relaxed);
                return p.0.as_ptr();
            }
        }
    }
    if reg.try_reserve(1).is_err() {
        return null_mut();
    }
    let global = !debug::no_global() && algo != POOL_F_SHARED_NONE;
    let shared = match &checks {
        Some(c) if global && c.keeps_idle() => Shared::Debug(DebugStore::new(c.cold_first())),
        Some(_) => Shared::None,
        None if global => Shared::for_flag(algo),
        None => Shared::None,
    };
    let cached = flags & POOL_F_NO_LOCAL_CACHE == 0 && !debug::no_cache() && checks.is_none();
    let alloc_size = (size + checks.as_ref().map_or(0, Checks::extra)).max(MIN_OBJECT);
    let Some(pool) = try_box(Pool::new(stored, size, alloc_size, align, flags, private, shared, checks)) else {
        return null_mut();
    };
    // A debug pool has no thread cache: every object goes through the slow path.
    if cached {
        // SAFETY: not yet shared with anyone; the home is at its final address.
        unsafe { (*pool.as_ptr()).home.stack = cache::claim_slot(&(*pool.as_ptr()).home).unwrap_or(cache::Slot::NONE) };
    }
    reg.push(PoolPtr(pool));
    pool.as_ptr()
}

/// Destroys a pool whose objects are all back: null once freed (or when
/// other users of a merged pool remain), the pool itself while in use
/// (callers hold objects of it, or a call on it is in flight on another
/// thread, whose cache it cannot drain then). `on_free` is told the address
/// of a pool that is freed, under the registry lock (before another pool
/// can take the address).
pub(crate) fn destroy(p: *mut Pool, on_free: impl FnOnce(*const Pool)) -> *mut Pool {
    let mut reg = pools();
    let Some(pos) = reg.iter().position(|q| q.0.as_ptr() == p) else {
        return null_mut(); // not a live pool: nothing to do
    };
    // SAFETY: registered, hence alive while POOLS is locked.
    let pool = unsafe { &*p };
    if pool.used() != 0 {
        return p;
    }
    if pool.users.load(Relaxed) > 1 {
        // Merged: one user fewer (users change only under POOLS).
        pool.users.fetch_sub(1, Relaxed);
        return null_mut();
    }
    if !pool.free_all_idle() {
        return p;
    }
    let q = reg.swap_remove(pos);
    free_pool(q.0);
    on_free(p);
    null_mut()
}

/// Frees a pool that is out of the registry, has no object in use and
/// none idle (`Pool::free_all_idle` said so).
fn free_pool(p: NonNull<Pool>) {
    // SAFETY: the caller took it out of the registry; we are its last user.
    let pool = unsafe { p.as_ref() };
    if let Some(slot) = pool.home.slot() {
        cache::release_slot(slot);
    }
    // SAFETY: made by try_box in `create_with`, now unreachable.
    unsafe { free_box(p) };
}

/// Destroys every pool with no object in use, whatever its number of users.
/// `on_free` is told each freed pool's address, under the registry lock.
pub(crate) fn destroy_all(mut on_free: impl FnMut(*const Pool)) {
    let mut reg = pools();
    let mut i = 0;
    while i < reg.len() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let pool = unsafe { reg[i].0.as_ref() };
        if pool.used() == 0 && pool.free_all_idle() {
            let q = reg.swap_remove(i);
            free_pool(q.0);
            on_free(q.0.as_ptr());
        } else {
            i += 1;
        }
    }
}

/// Runs `f` on every live pool, under the registry lock.
pub(crate) fn for_each(mut f: impl FnMut(&Pool)) {
    for p in pools().iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        f(unsafe { p.0.as_ref() });
    }
}

/// Runs `f` on the `i`-th live pool, if there is one, under the registry lock.
pub(crate) fn with_nth<R>(i: usize, f: impl FnOnce(&Pool) -> R) -> Option<R> {
    let reg = pools();
    // SAFETY: registered pools are alive while POOLS is locked.
    reg.get(i).map(|p| f(unsafe { p.0.as_ref() }))
}

/// Runs `f` on the pool at `p` if it is a live pool, under the registry lock.
pub(crate) fn with_ptr<R>(p: *const Pool, f: impl FnOnce(&Pool) -> R) -> Option<R> {
    let reg = pools();
    // SAFETY: registered pools are alive while POOLS is locked.
    reg.iter().find(|q| std::ptr::eq(q.0.as_ptr(), p)).map(|q| f(unsafe { q.0.as_ref() }))
}

/// Is `p` a live pool? (For the unit tests.)
#[cfg(all(test, not(loom)))]
pub(crate) fn is_live(p: *const Pool) -> bool {
    pools().iter().any(|q| std::ptr::eq(q.0.as_ptr(), p))
}

/// Runs `f` on every live pool, unless the registry is busy (then false):
/// for the maintenance, which must not wait on the free path.
pub(crate) fn try_for_each(mut f: impl FnMut(&Pool)) -> bool {
    let Ok(reg) = POOLS.try_lock() else { return false };
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        f(unsafe { p.0.as_ref() });
    }
    true
}

/// Releases idle objects above `minavail` in every pool, then trims malloc.
pub(crate) fn gc_all() {
    for_each(|p| p.gc());
    crate::os::trim_malloc();
}

// ---- fork ----------------------------------------------------------------

#[cfg(not(loom))]
static FORK_HELD: crate::sync::ForkSlot<MutexGuard<'static, Vec<PoolPtr>>> = crate::sync::ForkSlot::new();

/// Before `fork()`: takes the registry, then every thread cache, then
/// every pool's shared cache (or debug store), then the debug registry.
#[cfg(not(loom))]
pub(crate) fn fork_prepare() {
    let reg = pools();
    cache::fork_prepare();
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let p = unsafe { p.0.as_ref() };
        p.shared.fork_lock();
        if let Memory::Pages(pages) = &p.mem {
            pages.fork_lock();
        }
    }
    debug::fork_lock();
    FORK_HELD.put(reg);
}

/// Lets go of the shared caches and the debug registry taken by `fork_prepare`.
#[cfg(not(loom))]
fn fork_unlock_stores(reg: &[PoolPtr]) {
    debug::fork_unlock();
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let p = unsafe { p.0.as_ref() };
        if let Memory::Pages(pages) = &p.mem {
            // SAFETY: this thread locked them in `fork_prepare`.
            unsafe { pages.fork_unlock() };
        }
        // SAFETY: this thread locked each shared cache in `fork_prepare`.
        unsafe { p.shared.fork_unlock() };
    }
}

/// After `fork()`, in the parent: everything taken by `fork_prepare`, let go.
#[cfg(not(loom))]
pub(crate) fn fork_parent() {
    let Some(reg) = FORK_HELD.take() else { return };
    fork_unlock_stores(&reg);
    cache::fork_parent();
    drop(reg);
}

/// After `fork()`, in the child (one thread): the same, and the state the
/// parent's other threads left behind is put right: their transits will
/// never end, and their thread caches are emptied into the shared caches.
#[cfg(not(loom))]
pub(crate) fn fork_child() {
    let Some(reg) = FORK_HELD.take() else { return };
    fork_unlock_stores(&reg);
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        // Threads that were moving objects do not exist here.
        unsafe { p.0.as_ref() }.c.transit.store(0, SeqCst);
    }
    cache::fork_child();
    drop(reg);
}
