//! The thread-local cache: each thread keeps, per pool, a stack of the
//! objects it released last, under one byte budget for all pools
//! (`pool_set_cache_size`, 512 KiB by default).
//!
//! Each cache has a lock word. Its own thread takes it for a few
//! instructions per operation (an uncontended `xchg` on a line no other
//! core touches); other threads take it only to steal an idle object when a
//! pool is at its limit, to drain a pool (destroy, gc) or to count. That is
//! what lets an allocation find idle objects in the cache of a thread that
//! is blocked. Objects leave a cache for the shared cache or the OS (eviction,
//! thread exit, gc) under its lock, so such a search never misses them.
//!
//! Eviction is least-recently-used first: each pool's stack is ordered by
//! recency, and each pool's slot is stamped when the thread last released
//! into it. Over budget, the thread sends the older half of the stack of
//! the pool it used least recently to the shared cache, and repeats until
//! it is back to 7/8 of its budget.

use crate::pool::Pool;
use crate::shared::{next_of, set_next, Link};
use crate::sync::Spin;
use std::cell::{Cell, UnsafeCell};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// How many pools can have a thread cache; the others work without one.
pub(crate) const MAX_POOLS: usize = 256;
/// The cache index of a pool that has no thread cache.
pub(crate) const NO_INDEX: usize = MAX_POOLS;

/// Per-thread byte budget, all pools together.
static BUDGET: AtomicUsize = AtomicUsize::new(512 * 1024);

/// The pool that owns each cache index (null: free index).
static SLOTS: [AtomicPtr<Pool>; MAX_POOLS] = [const { AtomicPtr::new(null_mut()) }; MAX_POOLS];

/// Every live thread cache. Lock order: `CACHES`, then a cache's own lock.
static CACHES: Mutex<Vec<CachePtr>> = Mutex::new(Vec::new());

struct CachePtr(*const ThreadCache);
// SAFETY: a cache is shared between threads only through its lock word.
unsafe impl Send for CachePtr {}

#[derive(Clone, Copy)]
struct Head {
    top: *mut Link,
    count: u32,
    /// `Local::tick` when this thread last released into this pool.
    stamp: u64,
}

struct Local {
    bytes: usize,
    tick: u64,
    /// One more than `MAX_POOLS`: `NO_INDEX` names an always-empty head,
    /// so `take` needs no bounds check.
    heads: [Head; MAX_POOLS + 1],
}

pub(crate) struct ThreadCache {
    /// 1 while held. A u32, not a bool, so that taking it is one `lock bts`.
    lock: AtomicU32,
    local: UnsafeCell<Local>,
}

thread_local! {
    static EXITED: Cell<bool> = const { Cell::new(false) };
}

/// The thread-exit hook: a pthread key whose value is the thread's cache.
/// Not a Rust thread-local destructor: glibc runs those before the key
/// destructors and never runs one registered later, so a cache first made
/// while the thread exits (a C program freeing objects from its own key
/// destructor) would never be given back. Key destructors run again when a
/// destructor sets a key, which covers that case.
static EXIT_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

fn exit_key() -> Option<libc::pthread_key_t> {
    *EXIT_KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: `key` is a valid out-pointer and `on_thread_exit` has the destructor ABI.
        (unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0).then_some(key)
    })
}

/// The pointer to this thread's cache, in one thread-local word.
///
/// On x86-64 Linux the word lives in the static TLS block (initial-exec
/// model), read with two instructions. Rust's own `thread_local!` in a
/// shared object goes through `__tls_get_addr`, a call that costs more than
/// the rest of the fast path. mimalloc makes the same choice; glibc keeps
/// spare static TLS for libraries loaded with `dlopen`, and one word fits.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom)))]
mod current {
    use super::ThreadCache;

    core::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 3",
        ".globl bufpool_tls_cache",
        ".hidden bufpool_tls_cache",
        ".type bufpool_tls_cache, @object",
        ".size bufpool_tls_cache, 8",
        "bufpool_tls_cache:",
        ".zero 8",
        ".popsection",
    );

    #[inline(always)]
    pub(super) fn get() -> *const ThreadCache {
        let p: *const ThreadCache;
        // SAFETY: reads this thread's own word of the static TLS block defined
        // above; the GOT entry holds its offset from the thread pointer.
        unsafe {
            core::arch::asm!(
                "mov {p}, qword ptr [rip + bufpool_tls_cache@GOTTPOFF]",
                "mov {p}, qword ptr fs:[{p}]",
                p = out(reg) p,
                options(nostack, readonly, preserves_flags),
            );
        }
        p
    }

    #[inline(always)]
    pub(super) fn set(p: *const ThreadCache) {
        // SAFETY: writes this thread's own word of the static TLS block.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + bufpool_tls_cache@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {p}",
                t = out(reg) _,
                p = in(reg) p,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Portable fallback: Rust's `thread_local!`.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(loom))))]
mod current {
    use super::ThreadCache;
    use std::cell::Cell;

    thread_local! {
        static CURRENT: Cell<*const ThreadCache> = const { Cell::new(std::ptr::null()) };
    }

    #[inline(always)]
    pub(super) fn get() -> *const ThreadCache {
        CURRENT.with(Cell::get)
    }

    pub(super) fn set(p: *const ThreadCache) {
        CURRENT.with(|c| c.set(p))
    }
}

fn caches() -> MutexGuard<'static, Vec<CachePtr>> {
    CACHES.lock().unwrap_or_else(|e| e.into_inner())
}

impl ThreadCache {
    /// Takes the lock if it is free. The owner never waits on the fast
    /// path: when another thread holds the lock for a moment, the operation
    /// goes to the slow path, which is as correct and rare.
    #[inline(always)]
    fn try_lock(&self) -> bool {
        // Acquire: pairs with the Release of `unlock`, so we see the last holder's writes.
        // A fetch_or whose other bits are unused compiles to `lock bts` + `jc`.
        self.lock.fetch_or(1, Ordering::Acquire) & 1 == 0
    }

    #[inline(always)]
    fn lock(&self) {
        // Acquire: pairs with the Release of `unlock`, so we see the last holder's writes.
        if !self.try_lock() {
            self.lock_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spin = Spin::new();
        loop {
            spin.wait();
            if self.lock.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return;
            }
        }
    }

    #[inline(always)]
    fn unlock(&self) {
        // Release: hands our writes to `Local` to the next holder.
        self.lock.store(0, Ordering::Release);
    }

    /// # Safety
    /// The caller holds `self.lock` and keeps no other reference to `Local`.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn local(&self) -> &mut Local {
        // SAFETY: exclusive access is what the lock gives (caller guarantee).
        unsafe { &mut *self.local.get() }
    }

    /// Runs `f` on the stack of pool `idx` under the lock.
    fn with_head<R>(&self, idx: usize, f: impl FnOnce(&mut Head, &mut Local) -> R) -> R {
        self.lock();
        // SAFETY: we hold the lock.
        let local = unsafe { self.local() };
        let mut head = local.heads[idx];
        let r = f(&mut head, local);
        local.heads[idx] = head;
        self.unlock();
        r
    }
}

/// Takes an idle object of `pool` from this thread's cache; null if none.
#[inline(always)]
pub(crate) fn take(pool: &Pool) -> *mut u8 {
    let tc = current::get();
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    let Some(tc) = (unsafe { tc.as_ref() }) else { return null_mut() };
    if !tc.try_lock() {
        return null_mut();
    }
    // SAFETY: we hold the lock; cache_idx <= NO_INDEX, and heads has NO_INDEX + 1 entries.
    let local = unsafe { tc.local() };
    let head = unsafe { local.heads.get_unchecked_mut(pool.cache_idx) };
    // SAFETY: we hold the lock of the cache that owns `head` and `local.bytes`.
    let item = unsafe { pop_locked(head, &mut local.bytes, pool.size) };
    tc.unlock();
    item.cast()
}

/// Pops the top of a stack, or null; keeps its count and the cache's bytes.
///
/// # Safety
/// The caller holds the lock of the cache that owns `head` and `bytes`, and
/// `size` is the object size of the stack's pool.
#[inline(always)]
unsafe fn pop_locked(head: &mut Head, bytes: &mut usize, size: usize) -> *mut Link {
    let item = head.top;
    if !item.is_null() {
        // SAFETY: `item` is idle in this stack, under its lock (caller guarantee).
        head.top = unsafe { next_of(item) };
        head.count = head.count.wrapping_sub(1);
        *bytes = bytes.wrapping_sub(size);
    }
    item
}

/// What `put` did with an object.
pub(crate) enum Put {
    /// Cached.
    Done,
    /// Cached, and the cache is now over budget: call `evict_current`.
    OverBudget,
    /// Not cached: call `put_slow`.
    Refused,
}

/// Keeps a released object in this thread's cache, if it can without waiting.
#[inline(always)]
pub(crate) fn put(pool: &Pool, ptr: *mut u8) -> Put {
    let budget = BUDGET.load(Ordering::Relaxed);
    let tc = current::get();
    // `cache_size` is the object size, or usize::MAX for a pool without a thread cache.
    if pool.cache_size > budget || tc.is_null() {
        return Put::Refused;
    }
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    let tc = unsafe { &*tc };
    if !tc.try_lock() {
        return Put::Refused;
    }
    // SAFETY: we hold the lock, and the caller gives the object up.
    let over = unsafe { push_locked(tc, pool, ptr, budget) };
    tc.unlock();
    if over {
        Put::OverBudget
    } else {
        Put::Done
    }
}

/// # Safety
/// The caller holds `tc`'s lock; `ptr` is an object of `pool` it gave up;
/// `pool` has a cache index.
#[inline(always)]
unsafe fn push_locked(tc: &ThreadCache, pool: &Pool, ptr: *mut u8, budget: usize) -> bool {
    // SAFETY: caller guarantees (lock held, index < MAX_POOLS).
    let local = unsafe { tc.local() };
    let head = unsafe { local.heads.get_unchecked_mut(pool.cache_idx) };
    // SAFETY: the object is ours until published in our own stack.
    unsafe { set_next(ptr.cast(), head.top) };
    head.top = ptr.cast();
    head.count = head.count.wrapping_add(1);
    local.tick += 1;
    head.stamp = local.tick;
    local.bytes += pool.size;
    local.bytes > budget
}

/// The slow side of `put`: gives this thread a cache if it has none, and
/// waits for its lock. Returns false when the object cannot be cached here
/// (no thread cache for this pool, larger than the budget, thread exiting).
#[cold]
#[inline(never)]
pub(crate) fn put_slow(pool: &Pool, ptr: *mut u8) -> bool {
    let budget = BUDGET.load(Ordering::Relaxed);
    if pool.cache_size > budget {
        return false;
    }
    let mut tc = current::get();
    if tc.is_null() {
        tc = attach();
        if tc.is_null() {
            return false;
        }
    }
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    let tc = unsafe { &*tc };
    tc.lock();
    // SAFETY: we hold the lock, and the caller gives the object up.
    let over = unsafe { push_locked(tc, pool, ptr, budget) };
    tc.unlock();
    if over {
        evict(tc, budget);
    }
    true
}

/// Brings this thread's cache back under its budget (after `Put::OverBudget`).
#[cold]
#[inline(never)]
pub(crate) fn evict_current() {
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    if let Some(tc) = unsafe { current::get().as_ref() } {
        evict(tc, BUDGET.load(Ordering::Relaxed));
    }
}

/// Brings this thread's cache back to 7/8 of `budget`, least recently used first.
#[cold]
#[inline(never)]
fn evict(tc: &ThreadCache, budget: usize) {
    let target = budget - budget / 8;
    loop {
        tc.lock();
        // SAFETY: we hold the lock.
        let local = unsafe { tc.local() };
        let victim = local
            .heads
            .iter()
            .enumerate()
            .filter(|(_, h)| h.count > 0)
            .min_by_key(|(_, h)| h.stamp)
            .map(|(i, _)| i);
        let (idx, pool) = match victim {
            Some(i) if local.bytes > target => (i, SLOTS[i].load(Ordering::Acquire)),
            _ => {
                tc.unlock();
                return;
            }
        };
        // SAFETY: a pool keeps its index until every cache is drained of it,
        // and this cache still holds objects of it.
        let size = unsafe { (*pool).size };
        let head = &mut local.heads[idx];
        let (chain, n) = detach_older_half(head);
        local.bytes -= n as usize * size;
        // Released before unlocking: see `move_out`.
        // SAFETY: the objects left our cache but still count as out of the
        // pool's shared layer, so the pool cannot be destroyed under us.
        unsafe { (*pool).release_chain(chain) };
        tc.unlock();
    }
}

/// Cuts the older half (rounded up) off a stack; returns it and its length.
fn detach_older_half(head: &mut Head) -> (*mut Link, u32) {
    let keep = head.count / 2;
    let evicted = head.count - keep;
    head.count = keep;
    if keep == 0 {
        return (std::mem::replace(&mut head.top, null_mut()), evicted);
    }
    let mut last_kept = head.top;
    for _ in 1..keep {
        // SAFETY: the stack holds `count` linked objects, under our lock.
        last_kept = unsafe { next_of(last_kept) };
    }
    // SAFETY: as above; `last_kept` is the keep-th object.
    let chain = unsafe { next_of(last_kept) };
    // SAFETY: as above.
    unsafe { set_next(last_kept, null_mut()) };
    (chain, evicted)
}

/// Creates and registers this thread's cache; null when the thread exits.
#[cold]
#[inline(never)]
fn attach() -> *const ThreadCache {
    if EXITED.with(Cell::get) {
        return null();
    }
    let empty = Head { top: null_mut(), count: 0, stamp: 0 };
    let tc = Box::into_raw(Box::new(ThreadCache {
        lock: AtomicU32::new(0),
        local: UnsafeCell::new(Local { bytes: 0, tick: 0, heads: [empty; MAX_POOLS + 1] }),
    }));
    // SAFETY: the key is live (never deleted); its destructor gets `tc` back.
    let hooked = exit_key().is_some_and(|k| unsafe { libc::pthread_setspecific(k, tc.cast()) } == 0);
    if !hooked {
        // No exit hook: this thread works without a cache.
        // SAFETY: `tc` was never shared.
        drop(unsafe { Box::from_raw(tc) });
        return null();
    }
    caches().push(CachePtr(tc));
    current::set(tc);
    tc
}

/// The key destructor: gives a thread's cached objects back when it exits.
/// Objects the thread releases afterwards bypass the cache (`EXITED`).
///
/// # Safety
/// Called by the C library at thread exit with the value `attach` set: this
/// thread's registered cache, which no one else frees.
unsafe extern "C" fn on_thread_exit(tc: *mut libc::c_void) {
    EXITED.with(|e| e.set(true));
    current::set(null());
    let tc: *const ThreadCache = tc.cast();
    if tc.is_null() {
        return;
    }
    // SAFETY: registered, so alive; only this thread frees it, below.
    let tcr = unsafe { &*tc };
    for idx in 0..MAX_POOLS {
        move_out(tcr, idx, |chain| {
            let pool = SLOTS[idx].load(Ordering::Acquire);
            // SAFETY: the pool holds its index while objects of it are cached,
            // and the objects still count as out of its shared layer.
            unsafe { (*pool).release_chain(chain) };
        });
    }
    caches().retain(|p| p.0 != tc);
    // SAFETY: out of the registry, so no other thread can reach it any more;
    // this thread made it with Box::into_raw.
    drop(unsafe { Box::from_raw(tc as *mut ThreadCache) });
}

/// Detaches every idle object of pool `idx` from `tc` and hands the chain to
/// `f` before unlocking. A thread at a pool's limit looks for idle objects
/// in every cache, then in the shared cache: objects moving from a cache to
/// the shared cache (or to the OS) under the cache's lock are never out of
/// its sight, so it cannot fail while idle objects exist.
fn move_out(tc: &ThreadCache, idx: usize, f: impl FnOnce(*mut Link)) -> usize {
    tc.with_head(idx, |h, local| {
        let (chain, n) = detach_all(h, local, idx);
        if !chain.is_null() {
            f(chain);
        }
        n as usize
    })
}

fn detach_all(head: &mut Head, local: &mut Local, idx: usize) -> (*mut Link, u32) {
    let n = head.count;
    if n == 0 {
        return (null_mut(), 0);
    }
    let pool = SLOTS[idx].load(Ordering::Acquire);
    // SAFETY: the pool holds its index while objects of it are cached.
    local.bytes -= n as usize * unsafe { (*pool).size };
    head.count = 0;
    (std::mem::replace(&mut head.top, null_mut()), n)
}

/// Takes one idle object of `pool` from any thread's cache (the limit path).
pub(crate) fn steal(pool: &Pool) -> *mut u8 {
    let idx = pool.cache_idx;
    if idx >= MAX_POOLS {
        return null_mut();
    }
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { &*tc.0 };
        // SAFETY: `with_head` holds this cache's lock.
        let item = tc.with_head(idx, |head, local| unsafe { pop_locked(head, &mut local.bytes, pool.size) });
        if !item.is_null() {
            return item.cast();
        }
    }
    null_mut()
}

/// Detaches every idle object of `pool` from every thread's cache and hands
/// each chain to `f`, under that cache's lock (see `move_out`). Returns how
/// many objects were detached.
pub(crate) fn drain(pool: &Pool, mut f: impl FnMut(*mut Link)) -> usize {
    let idx = pool.cache_idx;
    if idx >= MAX_POOLS {
        return 0;
    }
    let mut total = 0;
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        total += move_out(unsafe { &*tc.0 }, idx, &mut f);
    }
    total
}

/// How many idle objects of `pool` sit in thread caches.
pub(crate) fn idle(pool: &Pool) -> usize {
    let idx = pool.cache_idx;
    if idx >= MAX_POOLS {
        return 0;
    }
    caches()
        .iter()
        // SAFETY: a registered cache stays alive while CACHES is locked.
        .map(|tc| unsafe { &*tc.0 }.with_head(idx, |h, _| h.count as usize))
        .sum()
}

/// Gives `pool` a cache index; `NO_INDEX` when all are taken.
/// Called under the pool registry lock.
pub(crate) fn claim_index(pool: *mut Pool) -> usize {
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot.load(Ordering::Relaxed).is_null() {
            // Release: evicting threads that read the slot see the whole pool.
            slot.store(pool, Ordering::Release);
            return i;
        }
    }
    NO_INDEX
}

/// Frees a cache index once every cache is drained of its pool.
pub(crate) fn release_index(idx: usize) {
    if idx < MAX_POOLS {
        SLOTS[idx].store(null_mut(), Ordering::Release);
    }
}

pub(crate) fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::RawCell;

    #[test]
    fn older_half_is_cut_off_the_bottom() {
        let nodes: Vec<*mut Link> =
            (0..5).map(|_| Box::into_raw(Box::new(Link { next: RawCell::new(null_mut()) }))).collect();
        let mut head = Head { top: null_mut(), count: 0, stamp: 0 };
        for &n in &nodes {
            // SAFETY: test-owned nodes, pushed once each.
            unsafe { set_next(n, head.top) };
            head.top = n;
            head.count += 1;
        }
        let (chain, n) = detach_older_half(&mut head);
        assert_eq!((n, head.count), (3, 2));
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
