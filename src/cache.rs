//! The thread-local cache: each thread keeps, per pool, a stack of the
//! objects it released last, under one byte budget for all pools
//! (`pool_set_cache_size`, 512 KiB by default).
//!
//! Who may touch a cache. Its own thread (the owner) works on it for a few
//! instructions per operation; other threads (foreign holders) take it only
//! to steal an idle object when a pool is at its limit, to drain a pool
//! (destroy, gc, a lowered limit), to apply a new budget, or to count. The
//! protocol between them is [`crate::owned`]: the owner never waits (when a
//! foreign holder is in its cache it takes its slow path), and a foreign
//! holder waits at most for the one operation the owner had begun, so the
//! limit's search, `pool_used` and the drains are bounded however busy the
//! owners are. Foreign holders are serialised by the registry mutex
//! `CACHES`.
//!
//! Objects leave a cache for the shared cache or the OS (eviction, thread
//! exit, drains) inside the cache, in a transit of their pool, so a search
//! at the limit never misses them.
//!
//! The budget, in objects per stack. Each stack has a `limit`: the fast
//! path caches an object only while `count < limit`, and touches no byte
//! count and no clock. The slow path keeps `sum(limit * size) <= budget`
//! over the stacks (`reserved`): a full stack grows its limit while the
//! budget allows, else the stack that went to its slow path least recently
//! gives up the older half of its objects (a batch, one push to its pool's
//! shared cache) and its limit shrinks to what it keeps. An empty stack
//! refills with a batch from its pool's shared cache. So objects move
//! between a thread cache and a shared cache in batches, and a stack that
//! the thread uses steadily never leaves the fast path. LRU is per pool and
//! stamped on the slow path only: a pool that stays on the fast path looks
//! cold, is the first to give objects up, and comes back on its next slow
//! call.

use crate::link::{next_of, set_next, Link};
use crate::os::{free_box, try_box};
use crate::owned::{settle, Owned};
use std::cell::Cell;
use std::ptr::{null, null_mut, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// How many pools can have a thread cache; the others work without one.
pub(crate) const MAX_POOLS: usize = 256;
/// Most objects moved at once between a thread cache and a shared cache.
const BATCH: u32 = 32;

/// A pool's slot in every thread cache: an index below `MAX_POOLS`, kept
/// as the byte offset of its stack past the first (`(index + 1) * size of a
/// stack`), so that the fast path adds it to the cache's address without a
/// multiplication and `Option<Slot>` is two bytes. A pool without a thread
/// cache has no slot (`None`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot(core::num::NonZeroU16);

const HEAD: usize = core::mem::size_of::<Head>();
const _: () = assert!(MAX_POOLS * HEAD <= u16::MAX as usize, "every slot's offset fits a u16");

impl Slot {
    fn new(index: usize) -> Self {
        debug_assert!(index < MAX_POOLS, "a slot is an index below MAX_POOLS");
        match core::num::NonZeroU16::new(((index + 1) * HEAD) as u16) {
            Some(off) => Slot(off),
            None => unreachable!("(index + 1) * HEAD is never 0"),
        }
    }

    #[inline(always)]
    fn index(self) -> usize {
        self.0.get() as usize / HEAD - 1
    }
}

impl Local {
    /// The stack of `slot`: the cache's address plus the slot's offset.
    #[inline(always)]
    fn head(&mut self, slot: Slot) -> &mut Head {
        let off = slot.0.get() as usize - HEAD;
        debug_assert!(off / HEAD < MAX_POOLS && off.is_multiple_of(HEAD), "a slot's offset names a stack");
        // SAFETY: `off` is `index * HEAD` with `index < MAX_POOLS` (made by
        // `Slot::new`), so it addresses one of `heads`, aligned.
        unsafe { &mut *self.heads.as_mut_ptr().cast::<u8>().add(off).cast::<Head>() }
    }
}

/// What a thread cache knows of a pool: embedded in the pool, enough to
/// cache its objects and to send them back. The cache never sees the rest
/// of the pool.
pub(crate) struct Home {
    /// The pool's slot in every thread cache; `None`: no thread cache.
    pub(crate) slot: Option<Slot>,
    /// Object size.
    pub(crate) size: usize,
    /// Set while released objects must go to the OS rather than to a cache
    /// (the pool is above a lowered limit). Read on the slow path only:
    /// capping a pool also drains it from every cache, which zeroes its
    /// stacks' limits.
    pub(crate) capped: AtomicBool,
    /// Where objects that leave a cache go, and where a refill comes from.
    pub(crate) back: &'static Back,
}

/// The pool's side of a [`Home`].
pub(crate) struct Back {
    /// Objects of this home are about to leave a cache: a transit begins
    /// (a search at the pool's limit waits for them rather than fail).
    pub(crate) begin: fn(&Home),
    /// A chain of `n` objects that left a cache (still counted as out of
    /// the pool's shared layer) is the pool's again; the transit ends.
    pub(crate) take: unsafe fn(&Home, *mut Link, usize),
    /// Up to `n` idle objects of the pool's shared cache, counted out of
    /// it: the chain and its length; (null, 0) when there are none.
    pub(crate) fetch: fn(&Home, usize) -> (*mut Link, usize),
}

impl Home {
    /// Sends a chain that left a cache back to the pool, in a transit begun
    /// before it was detached (`detach` runs inside it and returns the
    /// chain and its length).
    ///
    /// # Safety
    /// The chain `detach` returns is of objects of this home, cached until
    /// now, owned by the caller.
    unsafe fn send_back(&self, detach: impl FnOnce() -> (*mut Link, u32)) {
        (self.back.begin)(self);
        let (chain, n) = detach();
        // SAFETY: the caller's guarantee; `take` ends the transit `begin` began.
        unsafe { (self.back.take)(self, chain, n as usize) };
    }
}

/// Per-thread byte budget, all pools together.
static BUDGET: AtomicUsize = AtomicUsize::new(512 * 1024);

/// The pool that owns each slot (null: free). A pool keeps its slot until
/// it is freed, after every cache was drained of it: so a cache that holds
/// objects of slot `i` can always reach their pool's `Home` through `SLOTS[i]`.
static SLOTS: [AtomicPtr<Home>; MAX_POOLS] = [const { AtomicPtr::new(null_mut()) }; MAX_POOLS];

/// Every live thread cache. Lock order: `CACHES`, then a cache's `foreign` hold.
static CACHES: Mutex<Vec<CachePtr>> = Mutex::new(Vec::new());

struct CachePtr(NonNull<ThreadCache>);
// SAFETY: a cache is shared between threads only through its busy/foreign protocol.
unsafe impl Send for CachePtr {}

#[derive(Clone, Copy)]
struct Head {
    top: *mut Link,
    /// Objects the stack may still take: `limit - count`. Kept instead of
    /// the count so that a release tests and takes room in one instruction.
    room: u32,
    /// Objects the stack may hold; `limit * size` is part of `reserved`.
    limit: u32,
    /// `Local::tick` when this stack last went to the slow path.
    stamp: u64,
}

const EMPTY_HEAD: Head = Head { top: null_mut(), room: 0, limit: 0, stamp: 0 };

impl Head {
    /// Objects in the stack.
    fn count(&self) -> u32 {
        debug_assert!(self.room <= self.limit, "room is what the limit leaves");
        self.limit - self.room
    }
}

pub(crate) struct Local {
    /// Releases into this cache left before the next maintenance tick
    /// (`crate::maintain`): the fast path's only clock, a decrement.
    countdown: u32,
    /// `sum(limit * size)` over the stacks: at most the budget.
    reserved: usize,
    tick: u64,
    /// `tick` at the last decay: a stack stamped no later went a whole
    /// period without a slow call.
    decayed: u64,
    heads: [Head; MAX_POOLS],
}

/// Releases between two maintenance ticks of a thread.
pub(crate) const TICK_EVERY: u32 = 32;

const EMPTY_LOCAL: Local =
    Local { countdown: TICK_EVERY, reserved: 0, tick: 0, decayed: 0, heads: [EMPTY_HEAD; MAX_POOLS] };

/// A thread's cache: owned by its thread, held from outside now and then.
pub(crate) type ThreadCache = Owned<Local>;

// SAFETY: a `Local` is only reached under the owner/foreign protocol of its
// `Owned` (one thread at a time); its raw pointers are idle objects that
// belong to whoever is inside.
unsafe impl Send for Local {}

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

/// The stand-in cache of a thread that has none (yet, or any more): empty,
/// and no owner ever enters it (its `foreign` word is set for good), so the
/// fast path needs no test for "no cache": it fails its usual `foreign`
/// test and the slow path sees `NO_CACHE`. Never registered: no foreign
/// holder ever reaches it. Its `busy` word is written by every thread
/// without a cache, which is harmless (nobody reads it).
#[cfg(not(loom))]
static NO_CACHE: ThreadCache = Owned::parked(EMPTY_LOCAL);

#[cfg(loom)]
loom::lazy_static! {
    static ref NO_CACHE: ThreadCache = {
        let c = Owned::new(EMPTY_LOCAL, false);
        c.announce();
        c
    };
}

/// The stand-in cache.
#[cfg(not(loom))]
fn no_cache() -> &'static ThreadCache {
    &NO_CACHE
}

#[cfg(loom)]
fn no_cache() -> &'static ThreadCache {
    &NO_CACHE
}

/// Is `tc` the stand-in of a thread without a cache?
fn is_none(tc: &ThreadCache) -> bool {
    core::ptr::eq(tc, no_cache())
}

/// The pointer to this thread's cache, in one thread-local word, never
/// null: `NO_CACHE` until the thread makes its own.
///
/// On x86-64 Linux the word lives in the static TLS block (initial-exec
/// model), read with two instructions, and starts as `&NO_CACHE` (the TLS
/// image holds the address, relocated at load). Rust's own `thread_local!`
/// in a shared object goes through `__tls_get_addr`, a call that costs more
/// than the rest of the fast path. mimalloc makes the same choice; glibc
/// keeps spare static TLS for libraries loaded with `dlopen`, and one word
/// fits.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom)))]
mod current {
    use super::{ThreadCache, NO_CACHE};

    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl bufpool_tls_cache",
        ".hidden bufpool_tls_cache",
        ".type bufpool_tls_cache, @object",
        ".size bufpool_tls_cache, 8",
        "bufpool_tls_cache:",
        ".quad {no_cache}",
        ".popsection",
        no_cache = sym NO_CACHE,
    );

    #[inline(always)]
    pub(super) fn get() -> &'static ThreadCache {
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
        // SAFETY: the word holds `&NO_CACHE` (its initial value) or a live
        // cache of this thread (`set` by `attach`, reset before it is freed).
        unsafe { &*p }
    }

    #[inline(always)]
    pub(super) fn set(p: &'static ThreadCache) {
        // SAFETY: writes this thread's own word of the static TLS block.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + bufpool_tls_cache@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {p}",
                t = out(reg) _,
                p = in(reg) p as *const ThreadCache,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Portable fallback: Rust's `thread_local!`.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(loom))))]
mod current {
    use super::{no_cache, ThreadCache};
    use std::cell::Cell;

    thread_local! {
        static CURRENT: Cell<*const ThreadCache> = const { Cell::new(std::ptr::null()) };
    }

    #[inline(always)]
    pub(super) fn get() -> &'static ThreadCache {
        let p = CURRENT.with(Cell::get);
        // SAFETY: null, or a live cache of this thread (`set` by `attach`,
        // reset before it is freed).
        unsafe { p.as_ref() }.unwrap_or(no_cache())
    }

    pub(super) fn set(p: &'static ThreadCache) {
        CURRENT.with(|c| c.set(p))
    }
}

fn caches() -> MutexGuard<'static, Vec<CachePtr>> {
    CACHES.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the fast path -------------------------------------------------------

/// Takes an idle object of `home`'s pool from this thread's cache; null if none.
#[inline(always)]
pub(crate) fn take(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot else { return null_mut() };
    let tc = current::get();
    if !tc.enter() {
        return null_mut();
    }
    // SAFETY: we are inside our cache.
    let item = pop_head(unsafe { tc.get() }.head(slot));
    tc.exit();
    item.cast()
}

/// Pops the top of a stack, or null. The caller is inside its cache.
#[inline(always)]
fn pop_head(head: &mut Head) -> *mut Link {
    let item = head.top;
    if !item.is_null() {
        debug_assert!(head.count() > 0, "a non-empty stack is counted");
        // SAFETY: `item` is idle in this stack, whose cache the caller is inside.
        head.top = unsafe { next_of(item) };
        head.room = head.room.wrapping_add(1);
    }
    item
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
    let Some(slot) = home.slot else { return REFUSED };
    let tc = current::get();
    if !tc.enter() {
        return REFUSED;
    }
    // SAFETY: we are inside our cache.
    let local = unsafe { tc.get() };
    let head = local.head(slot);
    let mut r = REFUSED;
    if head.room != 0 {
        head.room -= 1;
        // SAFETY: the caller gives the object up; we are inside our cache.
        unsafe { push_head(head, ptr.cast()) };
        local.countdown -= 1;
        r = CACHED;
        if local.countdown == 0 {
            // Rearmed here, so that a caller that does not run the tick
            // loses only that tick; the tick may rearm it sooner.
            local.countdown = TICK_EVERY;
            r = CACHED_TICK;
        }
    }
    tc.exit();
    r
}

/// Rearms this thread's countdown to its next maintenance tick, after
/// `every` releases.
#[cold]
pub(crate) fn rearm(every: u32) {
    let tc = current::get();
    if !is_none(tc) && tc.enter_fenced() {
        // SAFETY: we are inside our cache.
        unsafe { tc.get() }.countdown = every.max(1);
        tc.exit();
    }
}

/// Pushes an object on a stack whose room the caller already took. The
/// caller is inside its cache.
///
/// # Safety
/// `ptr` is an object of the stack's pool, given up by the caller.
#[inline(always)]
unsafe fn push_head(head: &mut Head, ptr: *mut Link) {
    // SAFETY: the object is ours until published in our own stack.
    unsafe { set_next(ptr, head.top) };
    head.top = ptr;
}

/// Takes room and pushes (the slow paths). The caller is inside its cache.
///
/// # Safety
/// As `push_head`; the stack has room.
unsafe fn push_counted(head: &mut Head, ptr: *mut Link) {
    debug_assert!(head.room > 0, "the caller made room");
    head.room -= 1;
    // SAFETY: the caller's guarantee.
    unsafe { push_head(head, ptr) };
}

// ---- the slow paths ------------------------------------------------------

/// The slow side of `take`: an object of the stack (in the fallback, where
/// the fast path never enters), else an empty stack refills from its pool's
/// shared cache with a batch and hands out one object of it; null when the
/// shared cache is empty, there is no cache for this pool, or a foreign
/// holder is in ours.
#[cold]
#[inline(never)]
pub(crate) fn refill(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot else { return null_mut() };
    let tc = current::get();
    if is_none(tc) || !tc.enter_fenced() {
        return (home.back.fetch)(home, 1).0.cast();
    }
    // SAFETY: we are inside our cache.
    let local = unsafe { tc.get() };
    // The fast path's work, when it came here for the fallback's fence.
    let item = pop_head(local.head(slot));
    if !item.is_null() {
        tc.exit();
        return item.cast();
    }
    let budget = BUDGET.load(Ordering::Relaxed);
    local.tick += 1;
    let i = slot.index();
    local.heads[i].stamp = local.tick;
    // Room for the next batch: the limit doubles (up to a batch more) while
    // the budget allows, so that a stack grows with what the thread uses
    // and a decayed one starts small again.
    let limit = local.heads[i].limit;
    grow(local, i, home.size, limit + limit.clamp(1, BATCH), budget);
    let want = local.heads[i].room.min(BATCH) as usize + 1;
    let (chain, n) = (home.back.fetch)(home, want);
    let mut item = chain;
    if n > 1 {
        // SAFETY: the fetched chain is ours, `n` linked objects.
        let rest = unsafe { next_of(chain) };
        // SAFETY: `chain` leaves the chain for the caller.
        unsafe { set_next(chain, null_mut()) };
        let mut p = rest;
        while !p.is_null() {
            // SAFETY: objects of the fetched chain, ours; read the link first.
            let next = unsafe { next_of(p) };
            // SAFETY: an idle object of this pool, counted out, now cached;
            // `want` was at most the room plus the one handed out.
            unsafe { push_counted(&mut local.heads[i], p) };
            p = next;
        }
    } else if n == 0 {
        item = null_mut();
    }
    tc.exit();
    item.cast()
}

/// Raises stack `i`'s limit towards `want` objects while the budget
/// allows. The caller is inside the cache.
fn grow(local: &mut Local, i: usize, size: usize, want: u32, budget: usize) {
    let head = &mut local.heads[i];
    if head.limit >= want || size == 0 {
        return;
    }
    let more = (budget.saturating_sub(local.reserved) / size).min((want - head.limit) as usize) as u32;
    head.limit += more;
    head.room += more;
    local.reserved += more as usize * size;
}

/// The slow side of `put`: gives this thread a cache if it has none, makes
/// room in a full stack (a larger limit, or objects of the least recently
/// used stack sent to their pool), and caches the object. Returns false
/// when the object cannot be cached here now (no slot for this pool,
/// larger than the budget, pool above a lowered limit, thread exiting, no
/// memory for a cache, or a foreign holder in the cache): the caller then
/// releases it to the pool. Never waits.
#[cold]
#[inline(never)]
pub(crate) fn put_slow(home: &Home, ptr: *mut u8) -> bool {
    let Some(slot) = home.slot else { return false };
    let budget = BUDGET.load(Ordering::Relaxed);
    // Relaxed `capped`: a setting; a release racing its change may go either way.
    if home.size > budget || home.capped.load(Ordering::Relaxed) {
        return false;
    }
    let mut tc = current::get();
    if is_none(tc) {
        match attach() {
            Some(t) => tc = t,
            None => return false,
        }
    }
    if !tc.enter_fenced() {
        return false;
    }
    // SAFETY: we are inside our cache.
    let local = unsafe { tc.get() };
    let i = slot.index();
    if local.heads[i].room == 0 {
        // A full stack: the slow path proper (not just the fallback's fence).
        local.tick += 1;
        local.heads[i].stamp = local.tick;
        make_room(local, i, home.size, budget);
    }
    let cached = local.heads[i].room > 0;
    if cached {
        // SAFETY: the caller gives the object up; we are inside our cache; room checked.
        unsafe { push_counted(&mut local.heads[i], ptr.cast()) };
    }
    tc.exit();
    cached
}

/// Makes room for one more object in stack `i` (of objects of `size`
/// bytes): a larger limit if the budget allows (doubling, by a batch at
/// most), else the least recently used stack gives up the older half of its
/// objects to its pool and its limit shrinks to what it keeps (when that
/// stack is `i` itself, its limit stays: the room is the half it gave up).
/// The caller is inside the cache.
fn make_room(local: &mut Local, i: usize, size: usize, budget: usize) {
    loop {
        let head = local.heads[i];
        if head.room > 0 {
            return;
        }
        grow(local, i, size, head.limit + head.limit.clamp(1, BATCH), budget);
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
/// as one batch; with `shrink`, its limit falls to what it keeps. The
/// caller is inside the cache.
fn evict_half(local: &mut Local, v: usize, shrink: bool) {
    // SAFETY: a pool keeps its slot until every cache is drained of it,
    // and this cache holds objects of it (the caller picked a non-empty stack).
    let home = unsafe { &*slot_home(v) };
    // SAFETY: detached from our cache: objects of this home, ours; they
    // still count as out of the pool's shared layer, so the pool cannot be
    // destroyed under us.
    unsafe { home.send_back(|| detach_older_half(&mut local.heads[v])) };
    if shrink {
        let head = &mut local.heads[v];
        local.reserved -= head.room as usize * home.size;
        head.limit -= head.room;
        head.room = 0;
    }
}

/// Brings a cache within `budget`: the least recently used stacks give up
/// their objects and their limits until `reserved <= budget`. The caller
/// is inside the cache.
fn shrink_to(local: &mut Local, budget: usize) {
    while local.reserved > budget {
        let victim = local.heads.iter().enumerate().filter(|(_, h)| h.limit > 0).min_by_key(|(_, h)| h.stamp);
        let Some((v, _)) = victim else { break };
        // SAFETY: a pool keeps its slot while its stack has a limit (drains zero it first).
        let home = unsafe { &*slot_home(v) };
        if local.heads[v].count() > 0 {
            // SAFETY: detached from our cache: objects of this home, ours, counted out.
            unsafe { home.send_back(|| detach_all_of(&mut local.heads[v])) };
        }
        local.reserved -= local.heads[v].limit as usize * home.size;
        local.heads[v].limit = 0;
        local.heads[v].room = 0;
    }
    debug_assert!(local.reserved <= budget || local.heads.iter().all(|h| h.limit == 0));
}

/// The home of a slot that a cache holds objects of (or has a limit for).
fn slot_home(idx: usize) -> *const Home {
    // Acquire: pairs with the Release of `claim_slot`: we see the whole home.
    let p = SLOTS[idx].load(Ordering::Acquire);
    debug_assert!(!p.is_null(), "a slot with cached objects has its pool");
    p
}

/// Cuts the older half (rounded up) off a stack; returns it and its length.
fn detach_older_half(head: &mut Head) -> (*mut Link, u32) {
    let count = head.count();
    let keep = count / 2;
    let evicted = count - keep;
    head.room = head.limit - keep;
    if keep == 0 {
        return (std::mem::replace(&mut head.top, null_mut()), evicted);
    }
    let mut last_kept = head.top;
    for _ in 1..keep {
        // SAFETY: the stack holds `count` linked objects; the caller is inside its cache.
        last_kept = unsafe { next_of(last_kept) };
    }
    // SAFETY: `last_kept` is the keep-th of the stack's linked objects (keep < count).
    let chain = unsafe { next_of(last_kept) };
    // SAFETY: the same object, idle in the stack whose cache the caller is inside.
    unsafe { set_next(last_kept, null_mut()) };
    (chain, evicted)
}

/// Detaches a whole stack: its chain and length. The caller is inside the cache.
fn detach_all_of(head: &mut Head) -> (*mut Link, u32) {
    let n = head.count();
    head.room = head.limit;
    (std::mem::replace(&mut head.top, null_mut()), n)
}

/// Sends every cached object of `local` back to its pool and zeroes every
/// limit. The caller is inside the cache.
fn empty_into_pools(local: &mut Local) {
    shrink_to(local, 0);
    debug_assert!(local.heads.iter().all(|h| h.limit == 0 && h.room == 0), "an emptied cache holds nothing");
    local.reserved = 0;
}

/// Creates and registers this thread's cache; `None` when the thread exits
/// or memory is short (the thread then works without a cache).
#[cold]
#[inline(never)]
fn attach() -> Option<&'static ThreadCache> {
    if EXITED.with(Cell::get) {
        return None;
    }
    let fenced = crate::barrier::owner_fences();
    let tc = try_box(Owned::new(EMPTY_LOCAL, fenced))?;
    let mut reg = caches();
    // SAFETY: the key is live (never deleted); its destructor gets `tc` back.
    let hooked = exit_key().is_some_and(|k| unsafe { libc::pthread_setspecific(k, tc.as_ptr().cast()) } == 0);
    if !hooked || reg.try_reserve(1).is_err() {
        if hooked {
            // SAFETY: our own live key; the destructor then sees null and does nothing.
            unsafe { libc::pthread_setspecific(exit_key().unwrap_or(0), null()) };
        }
        drop(reg);
        // SAFETY: `tc` was never shared.
        unsafe { free_box(tc) };
        return None;
    }
    reg.push(CachePtr(tc));
    // SAFETY: registered, and freed only by this thread's exit hook, which
    // resets the thread's word first.
    let tc: &'static ThreadCache = unsafe { tc.as_ref() };
    current::set(tc);
    Some(tc)
}

/// The key destructor: gives a thread's cached objects back when it exits.
/// Objects the thread releases afterwards bypass the cache (`EXITED`).
///
/// # Safety
/// Called by the C library at thread exit with the value `attach` set: this
/// thread's registered cache, which no one else frees.
unsafe extern "C" fn on_thread_exit(tc: *mut libc::c_void) {
    EXITED.with(|e| e.set(true));
    current::set(no_cache());
    let Some(tc) = NonNull::new(tc.cast::<ThreadCache>()) else { return };
    // SAFETY: registered, so alive; only this thread frees it, below.
    let tcr = unsafe { tc.as_ref() };
    tcr.enter_wait();
    // SAFETY: we are inside our cache.
    unsafe { tcr.with(empty_into_pools) };
    tcr.exit();
    // Foreign holders hold CACHES: once we have it, none is in our cache.
    caches().retain(|p| p.0 != tc);
    // SAFETY: out of the registry, so no other thread can reach it any more;
    // this thread made it with try_box.
    unsafe { free_box(tc) };
}

// ---- from outside --------------------------------------------------------

/// Takes one idle object of `home`'s pool from any thread's cache (the limit path).
pub(crate) fn steal(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot else { return null_mut() };
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        let item = with_held(tc, |local| pop_head(local.head(slot)));
        if !item.is_null() {
            return item.cast();
        }
    }
    null_mut()
}

/// Detaches every idle object of `home`'s pool from every thread's cache
/// and hands each chain to `f`, inside that cache's foreign hold; the
/// stacks' limits fall to 0 (a capped pool's caches refuse its objects
/// from then on). Returns how many objects were detached.
pub(crate) fn drain(home: &Home, mut f: impl FnMut(*mut Link)) -> usize {
    let Some(slot) = home.slot else { return 0 };
    let mut total = 0;
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        total += with_held(tc, |local| {
            let head = local.head(slot);
            let (chain, n) = detach_all_of(head);
            let freed = head.limit as usize * home.size;
            head.limit = 0;
            head.room = 0;
            local.reserved -= freed;
            if !chain.is_null() {
                f(chain);
            }
            n as usize
        });
    }
    total
}

/// Holds every thread cache whose owner is not inside an operation, all at
/// once, then calls `read` and counts the idle objects of `slot` in the
/// caches held: a snapshot no owner can change while it is taken. A busy
/// owner is given a few microseconds (spinning, no yield) to finish its
/// operation, which takes nanoseconds unless its thread was preempted in
/// the middle; a cache whose owner is still busy then is counted as
/// holding nothing. So the count never waits on the scheduler, and it never
/// counts more idle objects than there are: `read() - idle` never falls
/// below what callers hold. At quiescence no owner is busy and the count is
/// exact. Returns `(read(), idle)`.
pub(crate) fn snapshot(slot: Slot, read: impl FnOnce() -> usize) -> (usize, usize) {
    let reg = caches();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        unsafe { tc.0.as_ref() }.announce();
    }
    // One barrier for every cache announced; none when the only cache is
    // our own (we are not inside it: its owner is us).
    let own: *const ThreadCache = current::get();
    if reg.iter().any(|tc| !core::ptr::eq(tc.0.as_ptr(), own)) {
        settle();
    }
    let mut idle = 0;
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        if owner_out_soon(tc) {
            // SAFETY: held: announced, settled, and the owner is out.
            idle += unsafe { tc.with(|local| local.head(slot).count() as usize) };
        }
        // Busy: counted as holding nothing (the safe side); it stays
        // announced (its owner takes its slow path) until the end.
    }
    let r = read();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        unsafe { tc.0.as_ref() }.unhold();
    }
    (r, idle)
}

/// Runs `f` on a cache held from outside. Our own cache needs no barrier:
/// we are not inside it.
fn with_held<R>(tc: &ThreadCache, f: impl FnOnce(&mut Local) -> R) -> R {
    if core::ptr::eq(tc, current::get()) {
        tc.announce();
        // SAFETY: our own cache, and we are not inside it: announced, no one else enters it.
        let r = unsafe { tc.with(f) };
        tc.unhold();
        r
    } else {
        tc.with_held(f)
    }
}

/// After `announce` and `settle`: waits a little for a busy owner (see `snapshot`).
fn owner_out_soon(tc: &ThreadCache) -> bool {
    for _ in 0..OWNER_SPINS {
        if tc.owner_out() {
            return true;
        }
        core::hint::spin_loop();
    }
    tc.owner_out()
}

/// `pause`s a count gives a busy owner: a few microseconds at most.
const OWNER_SPINS: u32 = 256;

/// Every stack of every thread's cache that went a whole period without a
/// slow call (no refill, no full stack) and still holds objects gives the
/// older half of them to its pool: a cache whose objects stay idle drains,
/// half a period's worth at a time, into the shared caches, where what
/// stays idle a whole period goes back to the OS. Called once a period.
pub(crate) fn decay_all() {
    decay(&caches());
}

/// `decay_all`, unless the registry of caches is busy (then false): for
/// the free path's tick, which must not wait.
pub(crate) fn try_decay_all() -> bool {
    let Ok(reg) = CACHES.try_lock() else { return false };
    decay(&reg);
    true
}

fn decay(reg: &[CachePtr]) {
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        with_held(tc, |local| {
            for v in 0..MAX_POOLS {
                let h = &local.heads[v];
                if h.count() > 0 && h.stamp <= local.decayed {
                    evict_half(local, v, true);
                }
            }
            local.tick += 1;
            local.decayed = local.tick;
        });
    }
}

/// How many idle objects of `home`'s pool sit in thread caches (for the tests).
#[cfg(all(test, not(loom)))]
pub(crate) fn idle(home: &Home) -> usize {
    match home.slot {
        Some(slot) => snapshot(slot, || 0).1,
        None => 0,
    }
}

/// Gives `home`'s pool a slot; `None` when all are taken.
/// Called under the pool registry lock.
pub(crate) fn claim_slot(home: *const Home) -> Option<Slot> {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.load(Ordering::Relaxed).is_null() {
            // Release: evicting threads that read the slot see the whole home.
            s.store(home.cast_mut(), Ordering::Release);
            return Some(Slot::new(i));
        }
    }
    None
}

/// Frees a slot once every cache is drained of its pool.
pub(crate) fn release_slot(slot: Slot) {
    debug_assert!(
        caches().iter().all(|tc| {
            // SAFETY: a registered cache stays alive while CACHES is locked.
            let tc = unsafe { tc.0.as_ref() };
            tc.with_held(|l| l.heads[slot.index()].limit == 0 && l.heads[slot.index()].room == 0)
        }),
        "a pool keeps its slot until every cache is drained of it"
    );
    SLOTS[slot.index()].store(null_mut(), Ordering::Release);
}

/// Sets the per-thread budget and applies it to every thread's cache now:
/// a cache above the new budget gives up the objects and the limits of its
/// least recently used stacks until it is within it.
pub(crate) fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        with_held(tc, |local| shrink_to(local, bytes));
    }
}

// ---- fork ----------------------------------------------------------------

/// The registry lock, held across `fork()` by the forking thread.
static FORK_HELD: crate::sync::ForkSlot<MutexGuard<'static, Vec<CachePtr>>> = crate::sync::ForkSlot::new();

/// Before `fork()`: takes the registry and holds every cache, so that no
/// thread is inside one when the process is copied. Lock order: after the
/// pool registry, before the shared caches.
pub(crate) fn fork_prepare() {
    let _ = exit_key(); // never copied half-initialised
    let reg = caches();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        unsafe { tc.0.as_ref() }.announce();
    }
    settle();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        unsafe { tc.0.as_ref() }.wait_owner();
    }
    FORK_HELD.put(reg);
}

/// After `fork()`, in the parent: lets every cache go.
pub(crate) fn fork_parent() {
    if let Some(reg) = FORK_HELD.take() {
        for tc in reg.iter() {
            // SAFETY: a registered cache stays alive while CACHES is locked.
            unsafe { tc.0.as_ref() }.unhold();
        }
    }
}

/// After `fork()`, in the child, once the shared caches are usable again:
/// the caches of the parent's other threads (threads that do not exist
/// here, whose exit hooks will never run) are emptied into their pools'
/// shared caches and freed; this thread's own cache is let go (and made to
/// fence its owner if the child cannot have `membarrier`).
pub(crate) fn fork_child() {
    let Some(mut reg) = FORK_HELD.take() else { return };
    let own: *const ThreadCache = current::get();
    let membarrier = crate::barrier::fork_child();
    reg.retain(|tc| {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let r = unsafe { tc.0.as_ref() };
        if core::ptr::eq(tc.0.as_ptr(), own) {
            if !membarrier {
                r.make_fenced();
            }
            r.unhold();
            return true;
        }
        // SAFETY: held since `fork_prepare`, and its owner does not exist here.
        unsafe { r.with(empty_into_pools) };
        // SAFETY: out of the registry once `retain` drops it; made by try_box;
        // its thread does not exist in this process.
        unsafe { free_box(tc.0) };
        false
    });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::RawCell;

    #[test]
    fn older_half_is_cut_off_the_bottom() {
        let nodes: Vec<*mut Link> =
            (0..5).map(|_| Box::into_raw(Box::new(Link { next: RawCell::new(null_mut()) }))).collect();
        let mut head = Head { top: null_mut(), room: 8, limit: 8, stamp: 0 };
        for &n in &nodes {
            // SAFETY: test-owned nodes, pushed once each, with room.
            unsafe { push_counted(&mut head, n) };
        }
        let (chain, n) = detach_older_half(&mut head);
        assert_eq!((n, head.count(), head.room), (3, 2, 6));
        assert_eq!(head.top, nodes[4], "the newest stays on top");
        // SAFETY: nodes are alive until freed below.
        assert_eq!(unsafe { next_of(nodes[3]) }, null_mut(), "the kept part is cut");
        assert_eq!(chain, nodes[2], "the evicted part starts with the newest of the old");
        for n in nodes {
            // SAFETY: made by Box::into_raw above.
            drop(unsafe { Box::from_raw(n) });
        }
    }

    #[test]
    fn limits_grow_within_the_budget() {
        let mut local = EMPTY_LOCAL;
        grow(&mut local, 3, 1024, 40, 16 * 1024);
        assert_eq!((local.heads[3].limit, local.reserved), (16, 16 * 1024), "no further than the budget");
        grow(&mut local, 4, 1024, 10, 16 * 1024);
        assert_eq!(local.heads[4].limit, 0, "the budget is spent");
        grow(&mut local, 5, 8192, 1, 4096);
        assert_eq!(local.heads[5].limit, 0, "larger than the budget: never cached");
    }
}
