//! The pool core: what a pool is, where its objects come from and go to,
//! and its counters.
//!
//! An object is always in exactly one of four places: held by a caller,
//! idle in a thread cache, idle in the pool's shared cache, or back with
//! the OS. The pool counts `allocated` (taken from the OS, alive) and `out`
//! (out of the shared layer: held by callers or idle in thread caches);
//! `used` is `out` minus what the thread caches hold, computed on demand so
//! that the fast path touches no shared counter.

use crate::cache::{self, NO_INDEX};
use crate::debug;
use crate::ffi::{
    MEM_F_EXACT, MEM_F_SHARED, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_DWCAS, POOL_F_SHARED_LOCKED, POOL_F_SHARED_NONE,
    POOL_F_SHARED_XCHG,
};
use crate::shared::{next_of, Link, Shared};
use crossbeam_utils::CachePadded;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
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
    /// This pool's slot in every thread cache, or `NO_INDEX`.
    pub(crate) cache_idx: usize,
    /// `size` when the pool has a thread cache, usize::MAX otherwise: one
    /// compare against the budget tells whether a thread may cache an object.
    pub(crate) cache_size: usize,
    pub(crate) shared: Shared,
    name: [u8; NAME_LEN],
    users: AtomicUsize,
    limit: AtomicUsize,
    minavail: AtomicUsize,
    c: CachePadded<Counters>,
    /// The object debug modes this pool was created with.
    dbg: debug::PoolDebug,
}

/// Statistics and accounting. Relaxed throughout: they count objects and
/// guard no memory; exactness at quiescence comes from the caller's own
/// synchronisation (thread join, locks) with the threads that moved objects.
struct Counters {
    allocated: AtomicUsize,
    out: AtomicUsize,
    failed: AtomicUsize,
    /// Moving sum of `out` sampled at each release; the average is sum / NEED_SAMPLES.
    need_sum: AtomicUsize,
}

struct PoolPtr(*mut Pool);
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
            // SAFETY: forwarded caller guarantee.
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
            // SAFETY: forwarded caller guarantee.
            unsafe { self.release(ptr.cast()) };
        }
    }

    /// Takes a new object from the OS, or, at the limit, any idle object.
    ///
    /// At the limit the search runs a few rounds: while it looks through one
    /// cache, an idle object can appear in a cache it already looked at, or a
    /// crowded release can free one to the OS and make room. It fails only
    /// when every round found neither room nor an idle object.
    fn alloc_new_or_idle(&self) -> *mut u8 {
        for _ in 0..LIMIT_ROUNDS {
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

    /// Sends an object out of the caller's hands or a thread cache to the
    /// shared cache, or to the OS when the pool is crowded.
    ///
    /// # Safety
    /// `item` is an object of this pool counted in `out` that the caller owns.
    pub(crate) unsafe fn release(&self, item: *mut Link) {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.release_or_keep(item, false) }
    }

    /// `release`; with `keep`, the object stays idle even in a crowded pool
    /// (the reserve that `dynbuf` keeps allocated without a limit).
    ///
    /// # Safety
    /// As `release`.
    pub(crate) unsafe fn release_or_keep(&self, item: *mut Link, keep: bool) {
        if self.dbg.on() {
            // SAFETY: forwarded caller guarantee (checked here in tag/uaf modes).
            unsafe { self.dbg.check_free(self, item.cast()) };
        }
        let out = self.c.out.load(Relaxed);
        self.sample_need(out);
        // SAFETY: forwarded caller guarantee.
        if (!keep && self.is_crowded()) || !unsafe { self.idle_push(item) } {
            // SAFETY: the object is ours and in no list.
            unsafe { self.os_free(item.cast()) };
            self.c.allocated.fetch_sub(1, Relaxed);
        }
        self.c.out.fetch_sub(1, Relaxed);
    }

    /// `release` for each object of a null-terminated chain.
    ///
    /// # Safety
    /// Every object of the chain is of this pool, counted out, owned by the caller.
    pub(crate) unsafe fn release_chain(&self, mut p: *mut Link) {
        while !p.is_null() {
            // SAFETY: the chain is ours; read the link before `release` reuses it.
            let next = unsafe { next_of(p) };
            // SAFETY: forwarded caller guarantee.
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
            // SAFETY: forwarded caller guarantee.
            return unsafe { self.dbg.os_free(self, p) };
        }
        // SAFETY: caller guarantee; malloc and posix_memalign blocks both go to free.
        unsafe { libc::free(p.cast()) }
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
            // SAFETY: forwarded caller guarantee.
            return unsafe { self.dbg.push_idle(self, item.cast()) };
        }
        // SAFETY: forwarded caller guarantee.
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
            // SAFETY: forwarded caller guarantee (checked here in tag/uaf modes).
            unsafe { self.dbg.check_free(self, ptr) };
        }
        // SAFETY: caller guarantee.
        unsafe { self.os_free(ptr) };
        self.c.allocated.fetch_sub(1, Relaxed);
        self.c.out.fetch_sub(1, Relaxed);
    }

    /// Frees every idle object of the shared cache to the OS.
    pub(crate) fn flush(&self) {
        let mut p = if self.dbg.on() { self.idle_pop() } else { self.shared.take_all() };
        while !p.is_null() {
            // SAFETY: the detached chain is ours alone (a debug store links nothing).
            let next = if self.dbg.on() { self.idle_pop() } else { unsafe { next_of(p) } };
            // SAFETY: idle object of this pool, in no list any more.
            unsafe { self.os_free(p.cast()) };
            self.c.allocated.fetch_sub(1, Relaxed);
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
        cache::drain(self, |chain| {
            let mut p = chain;
            while !p.is_null() {
                // SAFETY: the drained chain is ours; read the link before reuse.
                let next = unsafe { next_of(p) };
                // SAFETY: an idle object of this pool, ours, in no list.
                if !unsafe { self.idle_push(p) } {
                    // SAFETY: as above.
                    unsafe { self.os_free(p.cast()) };
                    self.c.allocated.fetch_sub(1, Relaxed);
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
            unsafe { self.os_free(p.cast()) };
            self.c.allocated.fetch_sub(1, Relaxed);
        }
    }

    /// Sets the limit. A limit below what is allocated takes effect at once:
    /// idle objects above it, in any cache, go back to the OS.
    pub(crate) fn set_limit(&self, n: usize) {
        self.limit.store(n, Relaxed);
        if n != 0 && self.c.allocated.load(Relaxed) > n {
            self.trim(|allocated, out| allocated > n && allocated > out);
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

    /// Objects held by callers. Counts the thread caches under their locks:
    /// call it off the fast path.
    pub(crate) fn used(&self) -> usize {
        self.c.out.load(Relaxed).saturating_sub(cache::idle(self))
    }

    pub(crate) fn failed(&self) -> usize {
        self.c.failed.load(Relaxed)
    }

    pub(crate) fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }
}

/// Takes `size` bytes aligned on `align` (0: malloc's own) from the heap.
pub(crate) fn heap_alloc(size: usize, align: usize) -> *mut u8 {
    if align == 0 {
        // SAFETY: malloc has no precondition; a null result is handled.
        return unsafe { libc::malloc(size) }.cast();
    }
    let mut p = null_mut();
    // SAFETY: align is a power of two and a multiple of the pointer size (checked at creation).
    if unsafe { libc::posix_memalign(&mut p, align, size) } != 0 {
        return null_mut();
    }
    p.cast()
}

/// Creates a pool, or returns the pool it merges with. Null on bad input.
pub(crate) fn create(name: &[u8], size: u32, align: u32, flags: u32) -> *mut Pool {
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

    let dbg = debug::PoolDebug::snapshot(size, !debug::no_global() && algo != POOL_F_SHARED_NONE);
    let dbg_on = dbg.on();
    let mut reg = pools();
    if flags & MEM_F_SHARED != 0 {
        for p in reg.iter() {
            // SAFETY: registered pools are alive while POOLS is locked.
            let q = unsafe { &*p.0 };
            if q.flags == flags && q.size == size && q.align == align && q.dbg.same(&dbg) {
                q.users.fetch_add(1, Relaxed);
                return p.0;
            }
        }
    }
    let shared = if debug::no_global() {
        Shared::None
    } else {
        Shared::for_flag(algo)
    };
    let mut stored = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN - 1);
    stored[..n].copy_from_slice(&name[..n]);
    let pool = Box::into_raw(Box::new(Pool {
        size,
        alloc_size: (size + dbg.extra()).max(MIN_OBJECT),
        align,
        flags,
        cache_idx: NO_INDEX,
        cache_size: usize::MAX,
        shared,
        name: stored,
        users: AtomicUsize::new(1),
        limit: AtomicUsize::new(0),
        minavail: AtomicUsize::new(0),
        c: CachePadded::new(Counters {
            allocated: AtomicUsize::new(0),
            out: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            need_sum: AtomicUsize::new(0),
        }),
        dbg,
    }));
    // A debug pool has no thread cache: every object goes through the slow path.
    if flags & POOL_F_NO_LOCAL_CACHE == 0 && !debug::no_cache() && !dbg_on {
        // SAFETY: not yet shared with anyone.
        unsafe {
            (*pool).cache_idx = cache::claim_index(pool);
            if (*pool).cache_idx != NO_INDEX {
                (*pool).cache_size = size;
            }
        }
    }
    reg.push(PoolPtr(pool));
    pool
}

/// Destroys a pool whose objects are all back: null once freed (or when
/// other users of a merged pool remain), the pool itself while in use.
pub(crate) fn destroy(p: *mut Pool) -> *mut Pool {
    let mut reg = pools();
    let Some(pos) = reg.iter().position(|q| q.0 == p) else {
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
    reg.swap_remove(pos);
    drop(reg);
    free_pool(p);
    null_mut()
}

/// Frees a pool that is out of the registry and has no object in use.
fn free_pool(p: *mut Pool) {
    // SAFETY: the caller took it out of the registry; we are its last user.
    let pool = unsafe { &*p };
    cache::drain(pool, |mut c| {
        while !c.is_null() {
            // SAFETY: drained objects are ours.
            let next = unsafe { next_of(c) };
            // SAFETY: idle object of this pool.
            unsafe { pool.os_free(c.cast()) };
            c = next;
        }
    });
    pool.flush();
    cache::release_index(pool.cache_idx);
    // SAFETY: made by Box::into_raw in `create`, now unreachable.
    drop(unsafe { Box::from_raw(p) });
}

/// Destroys every pool with no object in use, whatever its number of users.
pub(crate) fn destroy_all() {
    let mut reg = pools();
    let mut keep = Vec::new();
    for p in reg.drain(..) {
        // SAFETY: registered pools are alive while POOLS is locked.
        if unsafe { &*p.0 }.used() == 0 {
            free_pool(p.0);
        } else {
            keep.push(p);
        }
    }
    *reg = keep;
}

/// Runs `f` on every live pool, under the registry lock.
pub(crate) fn for_each(mut f: impl FnMut(&Pool)) {
    for p in pools().iter() {
        // SAFETY: registered pools are alive while POOLS is locked.
        f(unsafe { &*p.0 });
    }
}

/// Is `p` a live pool? (For the unit tests.)
#[cfg(all(test, not(loom)))]
pub(crate) fn is_live(p: *const Pool) -> bool {
    pools().iter().any(|q| q.0 as *const Pool == p)
}

/// Releases idle objects above `minavail` in every pool, then trims malloc.
pub(crate) fn gc_all() {
    for_each(|p| p.gc());
    // SAFETY: malloc_trim has no precondition.
    unsafe { libc::malloc_trim(0) };
}

pub(crate) fn total_bytes() -> (u64, u64) {
    let (mut alloc, mut used) = (0u64, 0u64);
    for_each(|p| {
        alloc += (p.allocated() * p.size) as u64;
        used += (p.used() * p.size) as u64;
    });
    (alloc, used)
}

/// Writes the `show pools` text to `fd`; a bad fd or a short write ends it.
pub(crate) fn dump_to_fd(fd: i32) {
    let text = dump();
    let mut buf = text.as_bytes();
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; a bad fd just fails.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        buf = &buf[n as usize..];
    }
}

/// The `show pools` text.
pub(crate) fn dump() -> String {
    use std::fmt::Write;
    let mut s = String::from("Dumping pools usage.\n");
    let (mut n, mut alloc, mut used) = (0usize, 0usize, 0usize);
    for_each(|p| {
        let (a, u) = (p.allocated(), p.used());
        let _ = writeln!(
            s,
            "  - Pool {} ({} bytes) : {} allocated ({} bytes), {} used, needed_avg {}, {} failures, {} users, shared={}{}{}{} @{:p}",
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
            if p.cache_idx == NO_INDEX { " [NOCACHE]" } else { "" },
            p.dbg.describe(),
            p as *const Pool,
        );
        n += 1;
        alloc += a * p.size;
        used += u * p.size;
    });
    let _ = writeln!(s, "Total: {n} pools, {alloc} bytes allocated, {used} used.");
    s
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
        assert!(destroy(p as *const Pool as *mut Pool).is_null());
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
        assert_eq!(destroy(p), p, "in use");
        // SAFETY: from `p`, given back once.
        unsafe { (*p).free(o) };
        assert!(destroy(p).is_null());
        assert!(is_live(p), "one user left");
        assert!(destroy(p).is_null());
        assert!(!is_live(p));
        assert!(destroy(r).is_null());
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
