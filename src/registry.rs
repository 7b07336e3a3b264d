//! The registry of pools: creation (and merging of `MEM_F_SHARED` pools),
//! destruction, the walk over every pool that `pool_gc` and the report
//! make, and the pools' part of the `fork()` handlers.
//!
//! Pool heads are never given back to the OS. A destroyed pool's head
//! becomes a tombstone (`Pool::tombstone`: no cache, no memory, counters 0,
//! its `life` word even) and stays in the registry, so that a stale handle
//! reads valid memory and its calls find a dead pool. A tombstone is
//! reused for a new pool only once `QUARANTINE` others wait before it
//! (oldest first), and never when either pool has an object debug mode:
//! there a stale handle is caught however many pools come and go.
//!
//! Lock order: `POOLS`, then the thread-cache registry (a pool is drained
//! from every cache when it is destroyed), then the shared caches.

use crate::cache;
use crate::debug::{self, Checks};
use crate::flags::{
    MEM_F_EXACT, MEM_F_SHARED, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE,
    POOL_F_SHARED_XCHG,
};
use crate::os::try_box;
#[cfg(not(loom))]
use crate::pool::Memory;
use crate::pool::{Pool, NAME_LEN};
use crate::shared::{debug_store::DebugStore, Shared};
use std::collections::VecDeque;
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

/// Tombstones that wait before the oldest one is reused for a new pool: a
/// stale handle of one of the last `QUARANTINE` pools destroyed is always
/// told from a live pool (a head is a few hundred bytes).
const QUARANTINE: usize = 256;

/// Every pool head the library made.
struct Heads {
    /// The live pools.
    live: Vec<PoolPtr>,
    /// Tombstones of pools without debug modes, oldest first: reusable.
    dead: VecDeque<PoolPtr>,
    /// Tombstones of pools with debug modes: never reused.
    kept: Vec<PoolPtr>,
}

impl core::ops::Deref for Heads {
    type Target = Vec<PoolPtr>;
    fn deref(&self) -> &Vec<PoolPtr> {
        &self.live
    }
}

impl core::ops::DerefMut for Heads {
    fn deref_mut(&mut self) -> &mut Vec<PoolPtr> {
        &mut self.live
    }
}

static POOLS: Mutex<Heads> = Mutex::new(Heads { live: Vec::new(), dead: VecDeque::new(), kept: Vec::new() });

fn pools() -> MutexGuard<'static, Heads> {
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
    if reg.try_reserve(1).is_err() || reg.dead.try_reserve(1).is_err() || reg.kept.try_reserve(1).is_err() {
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
    let new = Pool::new(stored, size, alloc_size, align, flags, private, shared, checks);
    let reuse = new.dbg.is_none() && reg.dead.len() > QUARANTINE;
    let head = if reuse { reg.dead.pop_front() } else { None };
    let pool = match head {
        Some(head) => {
            // SAFETY: a tombstone of the registry, in no list any more and
            // reached by no call of the library (stale handles' calls are
            // the caller's bug racing nothing we do here under the lock).
            let old = unsafe { head.0.as_ptr().replace(new) };
            // SAFETY: as above: the head now holds the new pool.
            let pool = unsafe { head.0.as_ref() };
            // Relaxed: under the registry lock, like every write of it.
            pool.life.store(old.life.load(Relaxed) + 1, Relaxed);
            debug_assert!(!old.is_live() && pool.is_live(), "a tombstone comes back to life");
            head.0
        }
        None => match try_box(new) {
            Some(p) => p,
            None => return null_mut(),
        },
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
    match destroy_counted(p, "pool_destroy", on_free) {
        Destroyed::InUse => p,
        _ => null_mut(),
    }
}

/// `destroy`, telling its outcomes apart. `what` names the call in the
/// report of a destroyed pool's handle.
pub(crate) fn destroy_counted(p: *mut Pool, what: &str, on_free: impl FnOnce(*const Pool)) -> Destroyed {
    let mut reg = pools();
    let Some(pos) = reg.iter().position(|q| q.0.as_ptr() == p) else {
        stale_head(&reg, p, what);
        return Destroyed::NotAPool; // not a live pool: nothing to do
    };
    // SAFETY: registered, hence alive while POOLS is locked.
    let pool = unsafe { &*p };
    if pool.used() != 0 {
        return Destroyed::InUse;
    }
    let users = pool.users.load(Relaxed);
    if users > 1 {
        // Merged: one user fewer (users change only under POOLS).
        pool.users.fetch_sub(1, Relaxed);
        return Destroyed::Users(users - 1);
    }
    if !pool.free_all_idle() {
        return Destroyed::InUse;
    }
    let q = reg.swap_remove(pos);
    free_pool(&mut reg, q.0);
    on_free(p);
    Destroyed::Freed
}

/// Ends a pool that is out of the live list, has no object in use and
/// none idle (`Pool::free_all_idle` said so): its resources are freed and
/// its head becomes a tombstone, kept in `reg`.
fn free_pool(reg: &mut Heads, p: NonNull<Pool>) {
    // SAFETY: the caller took it out of the live list; we are its last user.
    let pool = unsafe { p.as_ref() };
    if let Some(slot) = pool.home.slot() {
        cache::release_slot(slot);
    }
    let tomb = pool.tombstone();
    // SAFETY: the head is ours (above); the old pool is dropped, freeing
    // its shared cache and memory, and the tombstone takes its place.
    drop(unsafe { p.as_ptr().replace(tomb) });
    // SAFETY: the head holds the tombstone now.
    debug_assert!(!unsafe { p.as_ref() }.is_live(), "a destroyed pool's head is dead");
    // Room was reserved at the pool's creation for its tombstone.
    // SAFETY: as above.
    if unsafe { p.as_ref() }.checked {
        reg.kept.push(PoolPtr(p));
    } else {
        reg.dead.push_back(PoolPtr(p));
    }
}

/// What `destroy_counted` did.
pub(crate) enum Destroyed {
    /// The pool was freed.
    Freed,
    /// A merged pool lost one user; this many remain.
    Users(usize),
    /// In use: returned untouched.
    InUse,
    /// Not a live pool (NULL, a destroyed pool's handle, or no pool).
    NotAPool,
}

/// The users of a live pool; 0 for a destroyed one (and a debug mode
/// reports it) or a pointer that is no pool head.
pub(crate) fn users(p: *const Pool) -> usize {
    let reg = pools();
    if let Some(q) = reg.live.iter().find(|q| std::ptr::eq(q.0.as_ptr(), p)) {
        // SAFETY: registered, hence alive while POOLS is locked.
        return unsafe { q.0.as_ref() }.users.load(Relaxed);
    }
    stale_head(&reg, p, "pool_users");
    0
}

/// Reports the use of a tombstone's handle (`Pool::stale`) if `p` is one.
fn stale_head(reg: &Heads, p: *const Pool, what: &str) {
    if let Some(t) = reg.dead.iter().chain(reg.kept.iter()).find(|q| std::ptr::eq(q.0.as_ptr(), p)) {
        // SAFETY: tombstones are never freed; the lock is held.
        unsafe { t.0.as_ref() }.stale(what);
    }
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
            free_pool(&mut reg, q.0);
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
static FORK_HELD: crate::sync::ForkSlot<MutexGuard<'static, Heads>> = crate::sync::ForkSlot::new();

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
