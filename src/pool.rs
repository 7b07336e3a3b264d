//! The pool core: what a pool is, where its objects come from and go to,
//! and its counters.
//!
//! An object is always in exactly one of four places: held by a caller,
//! idle in a thread cache, idle in the pool's shared cache, or back with
//! the OS. The pool counts `allocated` (taken from the OS, alive) and `out`
//! (out of the shared layer: held by callers or idle in thread caches);
//! `used` is `out` minus what the thread caches hold, counted on demand
//! from a snapshot of every thread cache taken at once, so that the fast
//! path touches no shared counter and the count is never torn.
//!
//! Objects on their way out of sight (detached from a cache or a shared
//! cache and not yet pushed elsewhere, or not yet subtracted from
//! `allocated` on their way to the OS) are "in transit": an allocation at
//! the limit that finds nothing waits for the transit to end rather than
//! fail while an object it could have had is moving.

use crate::cache::{self, Slot};
use crate::debug;
use crate::ffi::{
    MEM_F_EXACT, MEM_F_SHARED, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE,
    POOL_F_SHARED_XCHG,
};
use crate::os::{free_box, heap_alloc, heap_free, try_box, write_all, StackLine};
use crate::shared::{next_of, Link, Shared};
use crate::sync::Spin;
use crossbeam_utils::CachePadded;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

/// Largest object size a pool accepts (2 GiB).
pub(crate) const MAX_SIZE: u32 = 1 << 31;
/// Largest alignment a pool accepts (1 MiB).
pub(crate) const MAX_ALIGN: u32 = 1 << 20;
/// Smallest object the pool asks of the OS: room for an idle object's link.
const MIN_OBJECT: usize = 16;
/// Object sizes are rounded up to this unless `MEM_F_EXACT`.
const SIZE_ROUND: usize = 16;
/// Samples in the moving average of the need.
const NEED_SAMPLES: usize = 1024;
const NAME_LEN: usize = 32;
/// Rounds of the search for room or an idle object at the limit.
const LIMIT_ROUNDS: usize = 3;
/// Retries of that search after a transit ended, before giving up: each
/// retry follows an object's arrival somewhere, so this bounds only a
/// pathological stream of them.
const TRANSIT_RETRIES: usize = 1 << 16;

const ALGO_FLAGS: u32 = POOL_F_SHARED_XCHG | POOL_F_SHARED_LOCKED | POOL_F_SHARED_DWCAS | POOL_F_SHARED_NONE;
const KNOWN_FLAGS: u32 = MEM_F_SHARED | MEM_F_EXACT | ALGO_FLAGS | POOL_F_NO_LOCAL_CACHE;

/// A pool of objects of one size. C sees it as the opaque `struct pool_head`.
pub struct Pool {
    /// Object size as callers see it.
    pub(crate) size: usize,
    /// Bytes asked of the OS for each object (debug words included).
    pub(crate) alloc_size: usize,
    /// Alignment asked of the OS; 0 for malloc's own.
    pub(crate) align: usize,
    flags: u32,
    /// The library's own pool (the buffer pool): never merged with another.
    private: bool,
    /// This pool's slot in every thread cache; `None`: no thread cache.
    pub(crate) slot: Option<Slot>,
    pub(crate) shared: Shared,
    name: [u8; NAME_LEN],
    users: AtomicUsize,
    limit: AtomicUsize,
    minavail: AtomicUsize,
    /// Set while `allocated` is above a lowered limit: released objects go
    /// to the OS, not to a cache, until it is back within the limit.
    capped: AtomicBool,
    c: CachePadded<Counters>,
    /// The object debug modes this pool was created with.
    dbg: debug::PoolDebug,
}

/// Statistics and accounting. `allocated`, `out`, `failed`, `need_sum`:
/// Relaxed, they count objects and guard no memory; exactness at quiescence
/// comes from the caller's own synchronisation (thread join, locks) with
/// the threads that moved objects. `transit` and `arrived`: SeqCst, see
/// `alloc_new_or_idle`.
struct Counters {
    allocated: AtomicUsize,
    out: AtomicUsize,
    failed: AtomicUsize,
    /// Moving sum of `out` sampled at each release; the average is sum / NEED_SAMPLES.
    need_sum: AtomicUsize,
    /// Transits under way.
    transit: AtomicUsize,
    /// Transits ended so far.
    arrived: AtomicUsize,
}

/// A transit of this pool's objects, from `begin_transit` until dropped.
pub(crate) struct Transit<'a>(&'a Pool);

impl Drop for Transit<'_> {
    fn drop(&mut self) {
        // SeqCst, both: `arrived` moves before `transit` falls, so a searcher
        // that sees no transit under way also sees that one ended (see
        // `alloc_new_or_idle`).
        self.0.c.arrived.fetch_add(1, SeqCst);
        let was = self.0.c.transit.fetch_sub(1, SeqCst);
        debug_assert!(was > 0, "a transit ends once");
    }
}

struct PoolPtr(NonNull<Pool>);
// SAFETY: pools are shared by design; all their mutable state is atomic.
unsafe impl Send for PoolPtr {}

/// Every live pool. Lock order: `POOLS`, then the thread-cache registry.
static POOLS: Mutex<Vec<PoolPtr>> = Mutex::new(Vec::new());

fn pools() -> MutexGuard<'static, Vec<PoolPtr>> {
    POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    // ---- the fast path -------------------------------------------------

    /// Takes an object: from this thread's cache if it has one, else the slow path.
    #[inline(always)]
    pub(crate) fn alloc(&self) -> *mut u8 {
        let p = cache::take(self);
        if !p.is_null() {
            return p;
        }
        self.alloc_slow()
    }

    /// `alloc`, with the object's `size` bytes set to zero.
    pub(crate) fn zalloc(&self) -> *mut u8 {
        let obj = self.alloc();
        if !obj.is_null() {
            // SAFETY: a fresh object of this pool is at least `size` bytes.
            unsafe { obj.write_bytes(0, self.size) };
        }
        obj
    }

    /// Gives an object back: to this thread's cache if it fits, else released.
    ///
    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    #[inline(always)]
    pub(crate) unsafe fn free(&self, ptr: *mut u8) {
        match cache::put(self, ptr) {
            cache::Put::Done => {}
            cache::Put::OverBudget => cache::evict_current(),
            // SAFETY: the caller's guarantee, passed on unchanged.
            cache::Put::Refused => unsafe { self.free_slow(ptr) },
        }
    }

    // ---- the slow path -------------------------------------------------

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self) -> *mut u8 {
        if self.dbg.on() {
            return self.alloc_debug(|| self.alloc_plain());
        }
        self.alloc_plain()
    }

    fn alloc_plain(&self) -> *mut u8 {
        let p = self.idle_pop();
        if !p.is_null() {
            self.c.out.fetch_add(1, Relaxed);
            return p.cast();
        }
        self.alloc_new_or_idle()
    }

    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(&self, ptr: *mut u8) {
        if !cache::put_slow(self, ptr) {
            // SAFETY: the caller holds `ptr`, an object of this pool counted out.
            unsafe { self.release(ptr.cast()) };
        }
    }

    /// Takes a new object from the OS, or, at the limit, any idle object.
    ///
    /// At the limit the search runs a few rounds: while it looks through one
    /// cache, an idle object can appear in a cache it already looked at. It
    /// also waits for objects in transit: when a round finds nothing while a
    /// transit is under way, or after one ended since the round began, it
    /// runs again (that object is now idle somewhere, or gone to the OS and
    /// out of `allocated`). It fails only when rounds found neither room
    /// nor an idle object and no object moved meanwhile.
    fn alloc_new_or_idle(&self) -> *mut u8 {
        let mut spin = Spin::new();
        let (mut rounds, mut retries) = (0, 0);
        loop {
            let arrived = self.c.arrived.load(SeqCst);
            if self.reserve_one() {
                let p = self.os_alloc();
                if p.is_null() {
                    self.c.allocated.fetch_sub(1, Relaxed);
                    self.c.failed.fetch_add(1, Relaxed);
                } else {
                    self.c.out.fetch_add(1, Relaxed);
                }
                return p;
            }
            // At the limit, idle objects must not make us fail, wherever they sit.
            let p = cache::steal(self);
            if !p.is_null() {
                return p; // it was already counted out
            }
            let p = self.idle_pop();
            if !p.is_null() {
                self.c.out.fetch_add(1, Relaxed);
                return p.cast();
            }
            // SeqCst, both: a transit that began after our searches ended
            // moves an object we would have found; one that ended before has
            // moved `arrived` first (see `Transit::drop`).
            let moving = self.c.transit.load(SeqCst) != 0 || self.c.arrived.load(SeqCst) != arrived;
            if moving && retries < TRANSIT_RETRIES {
                retries += 1;
                spin.wait();
                continue;
            }
            rounds += 1;
            if rounds == LIMIT_ROUNDS {
                break;
            }
        }
        self.c.failed.fetch_add(1, Relaxed);
        null_mut()
    }

    /// Counts one more allocated object if the limit allows it.
    fn reserve_one(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        self.c
            .allocated
            .fetch_update(Relaxed, Relaxed, |a| (limit == 0 || a < limit).then_some(a + 1))
            .is_ok()
    }

    /// Starts a transit: until the guard drops, a search at the limit that
    /// finds nothing waits rather than fail (see `alloc_new_or_idle`).
    pub(crate) fn begin_transit(&self) -> Transit<'_> {
        // SeqCst: ordered before the detaching that follows, for the searchers.
        self.c.transit.fetch_add(1, SeqCst);
        Transit(self)
    }

    /// Is `allocated` above the limit? Released objects then go to the OS.
    fn over_limit(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        limit != 0 && self.c.allocated.load(Relaxed) > limit
    }

    /// Are released objects to go to the OS rather than to a thread cache
    /// (the pool is above a lowered limit)? One relaxed load: the fast path asks.
    #[inline(always)]
    pub(crate) fn is_capped(&self) -> bool {
        self.capped.load(Relaxed)
    }

    /// Sends an object out of the caller's hands or a thread cache to the
    /// shared cache, or to the OS when the pool is crowded or above its limit.
    ///
    /// # Safety
    /// `item` is an object of this pool counted in `out` that the caller owns.
    pub(crate) unsafe fn release(&self, item: *mut Link) {
        // SAFETY: the caller's guarantee, passed on unchanged.
        unsafe { self.release_or_keep(item, false) };
    }

    /// `release`; with `keep`, the object stays idle even in a crowded pool
    /// (the reserve that `dynbuf` keeps allocated without a limit). Returns
    /// whether the object stayed idle in the pool (false: it went to the OS).
    ///
    /// # Safety
    /// As `release`.
    pub(crate) unsafe fn release_or_keep(&self, item: *mut Link, keep: bool) -> bool {
        if self.dbg.on() {
            // SAFETY: the caller's guarantee, checked here in tag/uaf modes.
            unsafe { self.dbg.check_free(self, item.cast()) };
        }
        let out = self.c.out.load(Relaxed);
        self.sample_need(out);
        let over = self.over_limit();
        // SAFETY: the caller owns `item`, an object of this pool.
        let kept = !over && (keep || !self.is_crowded()) && unsafe { self.idle_push(item) };
        if !kept {
            // SAFETY: the object is ours and in no list.
            unsafe { self.to_os(item.cast()) };
        }
        let was = self.c.out.fetch_sub(1, Relaxed);
        debug_assert!(was > 0, "out counts the object released");
        if over && !self.over_limit() {
            self.capped.store(false, Relaxed);
        }
        kept
    }

    /// Gives an object back to the OS: out of `allocated` first, so that an
    /// allocation at the limit finds room as soon as the object is out of
    /// sight (it may briefly exceed the limit by the objects being freed).
    ///
    /// # Safety
    /// `p` came from `os_alloc` of this pool and is in no list.
    unsafe fn to_os(&self, p: *mut u8) {
        let was = self.c.allocated.fetch_sub(1, Relaxed);
        debug_assert!(was > 0, "allocated counts the object freed");
        // SAFETY: the caller's guarantee, passed on unchanged.
        unsafe { self.os_free(p) };
    }

    /// `release` for each object of a null-terminated chain.
    ///
    /// # Safety
    /// Every object of the chain is of this pool, counted out, owned by the caller.
    pub(crate) unsafe fn release_chain(&self, mut p: *mut Link) {
        while !p.is_null() {
            // SAFETY: the chain is ours; read the link before `release` reuses it.
            let next = unsafe { next_of(p) };
            // SAFETY: an object of the caller's chain: ours, of this pool, counted out.
            unsafe { self.release(p) };
            p = next;
        }
    }

    /// Lost updates under contention only nudge the average; it is an estimate.
    fn sample_need(&self, out: usize) {
        let s = self.c.need_sum.load(Relaxed);
        self.c.need_sum.store(s - s / NEED_SAMPLES + out, Relaxed);
    }

    pub(crate) fn needed_avg(&self) -> usize {
        self.c.need_sum.load(Relaxed) / NEED_SAMPLES
    }

    /// Crowded: at least `minavail` idle objects in the shared cache, and a
    /// quarter more objects allocated than the recent need.
    /// A debug pool is never crowded: its store keeps every idle object
    /// until flush, gc or destroy, so that misuse of a freed object is caught.
    fn is_crowded(&self) -> bool {
        if self.dbg.on() {
            return false;
        }
        let allocated = self.c.allocated.load(Relaxed);
        let idle = allocated.saturating_sub(self.c.out.load(Relaxed));
        let need = self.needed_avg();
        idle >= self.minavail.load(Relaxed) && allocated >= need + need / 4
    }

    // ---- the OS --------------------------------------------------------

    fn os_alloc(&self) -> *mut u8 {
        if self.dbg.on() {
            return self.dbg.os_alloc(self);
        }
        heap_alloc(self.alloc_size, self.align)
    }

    /// # Safety
    /// `p` came from `os_alloc` of this pool and is in no list.
    unsafe fn os_free(&self, p: *mut u8) {
        if self.dbg.on() {
            // SAFETY: the caller's guarantee, passed on unchanged.
            return unsafe { self.dbg.os_free(self, p) };
        }
        // SAFETY: the caller's guarantee: a block of `heap_alloc`, unused.
        unsafe { heap_free(p) }
    }

    // ---- debug pools: the debug store replaces the shared cache ---------

    /// Takes an idle object from the shared cache (the debug store for a debug pool).
    fn idle_pop(&self) -> *mut Link {
        if self.dbg.on() {
            return self.dbg.pop_idle(self).cast();
        }
        self.shared.pop()
    }

    /// Keeps an idle object; false when the caller must free it to the OS.
    ///
    /// # Safety
    /// `item` is an object of this pool that the caller owns.
    unsafe fn idle_push(&self, item: *mut Link) -> bool {
        if self.dbg.on() {
            // SAFETY: the caller owns `item`, an object of this pool.
            return unsafe { self.dbg.push_idle(self, item.cast()) };
        }
        // SAFETY: the caller owns `item`, an object of this pool.
        unsafe { self.shared.push(item) }
    }

    /// An allocation of a debug pool: fault injection, then `alloc`, then
    /// the object's debug words and poison.
    fn alloc_debug(&self, alloc: impl FnOnce() -> *mut u8) -> *mut u8 {
        if self.dbg.inject_failure() {
            self.c.failed.fetch_add(1, Relaxed);
            return null_mut();
        }
        let p = alloc();
        if !p.is_null() {
            // SAFETY: a new object of this pool, ours until returned.
            unsafe { self.dbg.hand_out(self, p) };
        }
        p
    }

    // ---- the other entry points -----------------------------------------

    pub(crate) fn alloc_nocache(&self) -> *mut u8 {
        if self.dbg.on() {
            return self.alloc_debug(|| self.alloc_new_or_idle());
        }
        self.alloc_new_or_idle()
    }

    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    pub(crate) unsafe fn free_nocache(&self, ptr: *mut u8) {
        if self.dbg.on() {
            // SAFETY: the caller's guarantee, checked here in tag/uaf modes.
            unsafe { self.dbg.check_free(self, ptr) };
        }
        // SAFETY: the caller holds `ptr`, an object of this pool in no list.
        unsafe { self.to_os(ptr) };
        self.c.out.fetch_sub(1, Relaxed);
        if !self.over_limit() {
            self.capped.store(false, Relaxed);
        }
    }

    /// Frees every idle object of the shared cache to the OS.
    pub(crate) fn flush(&self) {
        let _moving = self.begin_transit();
        let mut p = if self.dbg.on() { self.idle_pop() } else { self.shared.take_all() };
        while !p.is_null() {
            // SAFETY: the detached chain is ours alone (a debug store links nothing).
            let next = if self.dbg.on() { self.idle_pop() } else { unsafe { next_of(p) } };
            // SAFETY: idle object of this pool, in no list any more.
            unsafe { self.to_os(p.cast()) };
            p = next;
        }
    }

    /// Moves every thread cache's idle objects of this pool to the shared
    /// cache, then frees idle objects above `minavail` to the OS.
    fn gc(&self) {
        self.trim(|allocated, out| allocated.saturating_sub(out) > self.minavail.load(Relaxed));
    }

    /// Moves every thread cache's idle objects of this pool to the shared
    /// cache, then frees idle objects to the OS while `too_many(allocated, out)`.
    fn trim(&self, too_many: impl Fn(usize, usize) -> bool) {
        let _moving = self.begin_transit();
        cache::drain(self, |chain| {
            let mut p = chain;
            while !p.is_null() {
                // SAFETY: the drained chain is ours; read the link before reuse.
                let next = unsafe { next_of(p) };
                // SAFETY: an idle object of this pool, ours, in no list.
                if !unsafe { self.idle_push(p) } {
                    // SAFETY: as above.
                    unsafe { self.to_os(p.cast()) };
                }
                self.c.out.fetch_sub(1, Relaxed);
                p = next;
            }
        });
        while too_many(self.c.allocated.load(Relaxed), self.c.out.load(Relaxed)) {
            let p = self.idle_pop();
            if p.is_null() {
                break;
            }
            // SAFETY: popped, so ours and in no list.
            unsafe { self.to_os(p.cast()) };
        }
    }

    /// Sets the limit. A limit below what is allocated takes effect at once:
    /// idle objects above it, in any cache, go back to the OS, and objects
    /// released later go to the OS too until the pool is within the limit.
    pub(crate) fn set_limit(&self, n: usize) {
        self.limit.store(n, Relaxed);
        if n != 0 && self.c.allocated.load(Relaxed) > n {
            // Caches first refuse new objects, then give up what they hold.
            self.capped.store(true, Relaxed);
            self.trim(|allocated, out| allocated > n && allocated > out);
        }
        if !self.over_limit() {
            self.capped.store(false, Relaxed);
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub(crate) fn set_minavail(&self, n: usize) {
        self.minavail.store(n, Relaxed);
    }

    pub(crate) fn allocated(&self) -> usize {
        self.c.allocated.load(Relaxed)
    }

    /// Idle objects in the shared cache (not in thread caches): cheap.
    pub(crate) fn shared_idle(&self) -> usize {
        self.c.allocated.load(Relaxed).saturating_sub(self.c.out.load(Relaxed))
    }

    /// Objects held by callers: `out` minus the thread caches' idle
    /// objects, read while every cache is held (a snapshot no owner can
    /// change; see `cache::snapshot`), so it never counts less than callers
    /// hold. Objects in flight inside a call count as held.
    pub(crate) fn used(&self) -> usize {
        let Some(slot) = self.slot else { return self.c.out.load(Relaxed) };
        let (out, idle) = cache::snapshot(slot, || self.c.out.load(SeqCst));
        debug_assert!(out >= idle, "every object idle in a thread cache counts as out");
        out.saturating_sub(idle)
    }

    pub(crate) fn failed(&self) -> usize {
        self.c.failed.load(Relaxed)
    }

    pub(crate) fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }
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
    crate::fork::ensure_registered();
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

    let dbg = debug::PoolDebug::snapshot(size, !debug::no_global() && algo != POOL_F_SHARED_NONE);
    let dbg_on = dbg.on();
    let mut reg = pools();
    if flags & MEM_F_SHARED != 0 && !private {
        for p in reg.iter() {
            // SAFETY: registered pools are alive while POOLS is locked.
            let q = unsafe { p.0.as_ref() };
            if !q.private && q.flags == flags && q.size == size && q.align == align && q.dbg.same(&dbg) {
                q.users.fetch_add(1, Relaxed);
                return p.0.as_ptr();
            }
        }
    }
    if reg.try_reserve(1).is_err() {
        return null_mut();
    }
    let shared = if debug::no_global() { Shared::None } else { Shared::for_flag(algo) };
    let mut stored = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN - 1);
    stored[..n].copy_from_slice(&name[..n]);
    let Some(pool) = try_box(Pool {
        size,
        alloc_size: (size + dbg.extra()).max(MIN_OBJECT),
        align,
        flags,
        private,
        slot: None,
        shared,
        name: stored,
        users: AtomicUsize::new(1),
        limit: AtomicUsize::new(0),
        minavail: AtomicUsize::new(0),
        capped: AtomicBool::new(false),
        c: CachePadded::new(Counters {
            allocated: AtomicUsize::new(0),
            out: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            need_sum: AtomicUsize::new(0),
            transit: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
        }),
        dbg,
    }) else {
        return null_mut();
    };
    // A debug pool has no thread cache: every object goes through the slow path.
    if flags & POOL_F_NO_LOCAL_CACHE == 0 && !debug::no_cache() && !dbg_on {
        // SAFETY: not yet shared with anyone.
        unsafe { (*pool.as_ptr()).slot = cache::claim_slot(pool.as_ptr()) };
    }
    reg.push(PoolPtr(pool));
    pool.as_ptr()
}

/// Destroys a pool whose objects are all back: null once freed (or when
/// other users of a merged pool remain), the pool itself while in use.
/// `on_free` is told the address of a pool that is freed, under the
/// registry lock (before another pool can take the address).
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
    if pool.users.fetch_sub(1, Relaxed) > 1 {
        return null_mut();
    }
    let q = reg.swap_remove(pos);
    free_pool(q.0);
    on_free(p);
    null_mut()
}

/// Frees a pool that is out of the registry and has no object in use.
fn free_pool(p: NonNull<Pool>) {
    // SAFETY: the caller took it out of the registry; we are its last user.
    let pool = unsafe { p.as_ref() };
    cache::drain(pool, |mut c| {
        while !c.is_null() {
            // SAFETY: drained objects are ours.
            let next = unsafe { next_of(c) };
            // SAFETY: idle object of this pool, in no list.
            unsafe { pool.os_free(c.cast()) };
            c = next;
        }
    });
    pool.flush();
    if let Some(slot) = pool.slot {
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
        if unsafe { reg[i].0.as_ref() }.used() == 0 {
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

/// Is `p` a live pool? (For the unit tests.)
#[cfg(all(test, not(loom)))]
pub(crate) fn is_live(p: *const Pool) -> bool {
    pools().iter().any(|q| q.0.as_ptr() as *const Pool == p)
}

/// Releases idle objects above `minavail` in every pool, then trims malloc.
pub(crate) fn gc_all() {
    for_each(|p| p.gc());
    trim_malloc();
}

/// Asks malloc to give free memory back to the OS, where it can.
fn trim_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no precondition.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn total_bytes() -> (u64, u64) {
    let (mut alloc, mut used) = (0u64, 0u64);
    for_each(|p| {
        alloc += (p.allocated() * p.size) as u64;
        used += (p.used() * p.size) as u64;
    });
    (alloc, used)
}

/// Writes the `show pools` text to `fd`, a line at a time, formatted on the
/// stack (it works when memory is exhausted) and written with the registry
/// unlocked (a slow reader does not stall pool creation). A pool created or
/// destroyed meanwhile may be missed or shown twice. `EINTR` is retried;
/// a bad fd ends it.
pub(crate) fn dump_to_fd(fd: i32) {
    use std::fmt::Write;
    let mut line = StackLine::new();
    let _ = writeln!(line, "Dumping pools usage.");
    if !write_all(fd, line.as_bytes()) {
        return;
    }
    let (mut n, mut alloc, mut used) = (0usize, 0usize, 0usize);
    for i in 0.. {
        line.clear();
        {
            let reg = pools();
            let Some(q) = reg.get(i) else { break };
            // SAFETY: registered pools are alive while POOLS is locked.
            let p = unsafe { q.0.as_ref() };
            let (a, u) = (p.allocated(), p.used());
            let _ = write!(
                line,
                "  - Pool {} ({} bytes) : {} allocated ({} bytes), {} used, needed_avg {}, {} failures, {} users, shared={}{}{}",
                p.name(),
                p.size,
                a,
                a * p.size,
                u,
                p.needed_avg(),
                p.failed(),
                p.users.load(Relaxed),
                p.shared.name(),
                if p.flags & MEM_F_SHARED != 0 { " [SHARED]" } else { "" },
                if p.slot.is_none() { " [NOCACHE]" } else { "" },
            );
            p.dbg.describe(&mut line);
            let _ = writeln!(line, " @{:p}", p as *const Pool);
            n += 1;
            alloc += a * p.size;
            used += u * p.size;
        }
        if !write_all(fd, line.as_bytes()) {
            return;
        }
    }
    line.clear();
    let _ = writeln!(line, "Total: {n} pools, {alloc} bytes allocated, {used} used.");
    write_all(fd, line.as_bytes());
}

// ---- fork ----------------------------------------------------------------

static FORK_HELD: crate::sync::ForkSlot<MutexGuard<'static, Vec<PoolPtr>>> = crate::sync::ForkSlot::new();

/// Before `fork()`: takes the registry, then every thread cache, then
/// every pool's shared cache and debug store, in the library's lock order.
pub(crate) fn fork_prepare() {
    let reg = pools();
    cache::fork_prepare();
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let p = unsafe { p.0.as_ref() };
        p.shared.fork_lock();
        p.dbg.fork_lock();
    }
    debug::fork_lock();
    FORK_HELD.put(reg);
}

/// After `fork()`, in the parent: everything taken by `fork_prepare`, let go.
pub(crate) fn fork_parent() {
    let Some(reg) = FORK_HELD.take() else { return };
    debug::fork_unlock();
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let p = unsafe { p.0.as_ref() };
        // SAFETY: locked by `fork_prepare` on this thread.
        unsafe {
            p.dbg.fork_unlock();
            p.shared.fork_unlock();
        }
    }
    cache::fork_parent();
    drop(reg);
}

/// After `fork()`, in the child (one thread): the same, and the state the
/// parent's other threads left behind is put right: their transits will
/// never end, and their thread caches are emptied into the shared caches.
pub(crate) fn fork_child() {
    let Some(reg) = FORK_HELD.take() else { return };
    debug::fork_unlock();
    for p in reg.iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        let p = unsafe { p.0.as_ref() };
        // SAFETY: locked by `fork_prepare` on this thread.
        unsafe {
            p.dbg.fork_unlock();
            p.shared.fork_unlock();
        }
        // Threads that were moving objects do not exist here.
        p.c.transit.store(0, SeqCst);
    }
    cache::fork_child();
    drop(reg);
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use std::sync::{mpsc, Mutex as StdMutex};

    /// The budget and the registry are process-wide: these tests run one at a time.
    static SERIAL: StdMutex<()> = StdMutex::new(());

    pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_pool(size: u32, flags: u32) -> &'static Pool {
        let p = create(b"t", size, 0, flags);
        assert!(!p.is_null());
        // SAFETY: freshly created; each test destroys its pools before returning.
        unsafe { &*p }
    }

    fn destroy_ok(p: &Pool) {
        assert!(destroy(p as *const Pool as *mut Pool, |_| {}).is_null());
    }

    #[test]
    fn objects_are_counted_where_they_sit() {
        let _g = serial();
        let p = new_pool(100, 0);
        assert_eq!(p.size, 112, "rounded up to 16");
        let objs: Vec<_> = (0..50).map(|_| p.alloc()).collect();
        assert!(objs.iter().all(|o| !o.is_null()));
        assert_eq!((p.allocated(), p.used()), (50, 50));
        for &o in &objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
        assert_eq!((p.allocated(), p.used(), cache::idle(p)), (50, 0, 50));
        // Taken again from this thread's cache: no new OS allocation.
        let again: Vec<_> = (0..50).map(|_| p.alloc()).collect();
        assert_eq!(p.allocated(), 50);
        for o in again {
            // SAFETY: as above.
            unsafe { p.free(o) };
        }
        gc_all();
        assert_eq!((p.allocated(), p.used()), (0, 0), "gc frees idle objects above minavail 0");
        destroy_ok(p);
    }

    #[test]
    fn eviction_takes_the_least_recently_used_pool_first() {
        let _g = serial();
        cache::set_budget(64 * 1024);
        let (a, b) = (new_pool(1024, 0), new_pool(1024, 0));
        let oa: Vec<_> = (0..40).map(|_| a.alloc()).collect();
        let ob: Vec<_> = (0..40).map(|_| b.alloc()).collect();
        for o in oa {
            // SAFETY: from `a`, given back once.
            unsafe { a.free(o) };
        }
        for o in ob {
            // SAFETY: from `b`, given back once.
            unsafe { b.free(o) };
        }
        let (ia, ib) = (cache::idle(a), cache::idle(b));
        cache::set_budget(512 * 1024);
        assert!((ia + ib) * 1024 <= 64 * 1024, "over budget: {ia} + {ib}");
        assert_eq!(ib, 40, "the pool used last keeps its objects");
        assert!(ia < 40, "the pool used least recently gave objects up");
        gc_all();
        destroy_ok(a);
        destroy_ok(b);
    }

    #[test]
    fn objects_larger_than_the_budget_are_never_cached() {
        let _g = serial();
        cache::set_budget(4096);
        let p = new_pool(8192, 0);
        let o = p.alloc();
        // SAFETY: from `p`, given back once.
        unsafe { p.free(o) };
        let cached = cache::idle(p);
        cache::set_budget(512 * 1024);
        assert_eq!(cached, 0);
        destroy_ok(p);
    }

    #[test]
    fn limit_steals_from_a_blocked_threads_cache() {
        let _g = serial();
        let p = new_pool(256, 0);
        let addr = p as *const Pool as usize;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: the pool outlives this thread (joined below).
            let p = unsafe { &*(addr as *const Pool) };
            let objs: Vec<_> = (0..8).map(|_| p.alloc() as usize).collect();
            for o in objs {
                // SAFETY: from `p`, given back once.
                unsafe { p.free(o as *mut u8) };
            }
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap(); // blocked, with 8 idle objects in its cache
        });
        ready_rx.recv().unwrap();
        p.set_limit(8);
        let mine: Vec<_> = (0..8).map(|_| p.alloc()).collect();
        assert!(mine.iter().all(|o| !o.is_null()), "idle objects made an allocation fail");
        assert_eq!(p.allocated(), 8);
        assert!(p.alloc().is_null(), "the limit holds once callers hold 8");
        assert_eq!(p.failed(), 1);
        go_tx.send(()).unwrap();
        t.join().unwrap();
        for o in mine {
            // SAFETY: from `p`, given back once.
            unsafe { p.free(o) };
        }
        gc_all();
        destroy_ok(p);
    }

    #[test]
    fn an_exiting_thread_gives_its_cache_back() {
        let _g = serial();
        let p = new_pool(64, 0);
        let addr = p as *const Pool as usize;
        std::thread::spawn(move || {
            // SAFETY: the pool outlives this thread (joined below).
            let p = unsafe { &*(addr as *const Pool) };
            let objs: Vec<_> = (0..10).map(|_| p.alloc() as usize).collect();
            for o in objs {
                // SAFETY: from `p`, given back once.
                unsafe { p.free(o as *mut u8) };
            }
            assert_eq!(cache::idle(p), 10);
        })
        .join()
        .unwrap();
        assert_eq!(cache::idle(p), 0);
        assert_eq!(p.used(), 0);
        p.flush();
        assert_eq!(p.allocated(), 0, "the exited thread's objects reached the shared cache or the OS");
        destroy_ok(p);
    }

    #[test]
    fn destroy_refuses_while_in_use_and_merges_count_users() {
        let _g = serial();
        let p = create(b"m", 40, 0, MEM_F_SHARED);
        let q = create(b"n", 48, 0, MEM_F_SHARED);
        assert_eq!(p, q, "40 rounds to 48: merged");
        let r = create(b"x", 48, 0, MEM_F_SHARED | MEM_F_EXACT);
        assert_ne!(p, r, "other flags: not merged");
        // SAFETY: live pool.
        let o = unsafe { &*p }.alloc();
        assert_eq!(destroy(p, |_| {}), p, "in use");
        // SAFETY: from `p`, given back once.
        unsafe { (*p).free(o) };
        assert!(destroy(p, |_| {}).is_null());
        assert!(is_live(p), "one user left");
        assert!(destroy(p, |_| {}).is_null());
        assert!(!is_live(p));
        assert!(destroy(r, |_| {}).is_null());
    }

    #[test]
    fn lowering_the_limit_frees_idle_objects_above_it() {
        let _g = serial();
        let p = new_pool(128, 0);
        p.set_minavail(100);
        let objs: Vec<_> = (0..10).map(|_| p.alloc()).collect();
        let held: Vec<_> = objs[..2].to_vec();
        for &o in &objs[2..] {
            // SAFETY: from `p`, given back once.
            unsafe { p.free(o) };
        }
        assert_eq!((p.allocated(), p.used()), (10, 2));
        p.set_limit(4);
        assert_eq!((p.allocated(), p.used()), (4, 2), "idle objects above the new limit went to the OS");
        p.set_limit(1);
        assert_eq!(p.allocated(), 2, "held objects stay; every idle one went");
        assert!(p.alloc().is_null(), "callers hold more than the limit");
        for o in held {
            // SAFETY: from `p`, given back once.
            unsafe { p.free(o) };
        }
        p.set_limit(0);
        gc_all();
        p.flush();
        destroy_ok(p);
    }

    #[test]
    fn gc_keeps_minavail() {
        let _g = serial();
        let p = new_pool(32, POOL_F_NO_LOCAL_CACHE);
        p.set_minavail(5);
        let objs: Vec<_> = (0..20).map(|_| p.alloc()).collect();
        for o in objs {
            // SAFETY: from `p`, given back once.
            unsafe { p.free(o) };
        }
        gc_all();
        assert_eq!(p.allocated(), 5);
        p.flush();
        assert_eq!(p.allocated(), 0);
        destroy_ok(p);
    }

    #[test]
    fn bad_creation_arguments_give_null() {
        assert!(create(b"z", 0, 0, 0).is_null());
        assert!(create(b"z", MAX_SIZE + 1, 0, 0).is_null());
        assert!(create(b"z", 8, 3, 0).is_null());
        assert!(create(b"z", 8, MAX_ALIGN * 2, 0).is_null());
        assert!(create(b"z", 8, 0, 0x8000_0000).is_null());
        assert!(create(b"z", 8, 0, POOL_F_SHARED_XCHG | POOL_F_SHARED_NONE).is_null());
    }
}
