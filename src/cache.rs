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
//! exit, drains) inside such a section, so a search at the limit never
//! misses them: it waits for the section, then finds them in the shared
//! cache.
//!
//! Eviction is least-recently-used first: each pool's stack is ordered by
//! recency, and each pool's slot is stamped when the thread last released
//! into it. Over budget, the thread sends the older half of the stack of
//! the pool it used least recently to the shared cache, and repeats until
//! it is back to 7/8 of its budget.

use crate::link::{next_of, set_next, Link};
use crate::os::{free_box, try_box};
use crate::owned::Owned;
use std::cell::Cell;
use std::ptr::{null, null_mut, NonNull};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// How many pools can have a thread cache; the others work without one.
pub(crate) const MAX_POOLS: usize = 256;

/// A pool's slot in every thread cache: an index below `MAX_POOLS`. A pool
/// without a thread cache has no slot (`Option<Slot>` is `None`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot(u8);

const _: () = assert!(MAX_POOLS == u8::MAX as usize + 1, "a Slot's u8 covers every index");

impl Slot {
    #[inline(always)]
    fn index(self) -> usize {
        self.0 as usize
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
    /// (the pool is above a lowered limit). One relaxed load on the fast path.
    pub(crate) capped: AtomicBool,
    /// Where objects that leave a cache go.
    pub(crate) back: &'static Back,
}

/// The pool's side of a [`Home`].
pub(crate) struct Back {
    /// Objects of this home are about to leave a cache: a transit begins
    /// (a search at the pool's limit waits for them rather than fail).
    pub(crate) begin: fn(&Home),
    /// A chain of objects that left a cache (still counted as out of the
    /// pool's shared layer) is the pool's again; the transit ends.
    pub(crate) take: unsafe fn(&Home, *mut Link),
}

impl Home {
    /// Sends a chain that left a cache back to the pool, in a transit begun
    /// before it was detached (`detach` runs inside it).
    ///
    /// # Safety
    /// The chain `detach` returns is of objects of this home, cached until
    /// now, owned by the caller.
    unsafe fn send_back(&self, detach: impl FnOnce() -> *mut Link) {
        (self.back.begin)(self);
        let chain = detach();
        // SAFETY: the caller's guarantee; `take` ends the transit `begin` began.
        unsafe { (self.back.take)(self, chain) };
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
    count: u32,
    /// `Local::tick` when this thread last released into this pool.
    stamp: u64,
}

const EMPTY_HEAD: Head = Head { top: null_mut(), count: 0, stamp: 0 };

pub(crate) struct Local {
    bytes: usize,
    tick: u64,
    heads: [Head; MAX_POOLS],
}

/// A thread's cache: owned by its thread, held from outside now and then.
pub(crate) type ThreadCache = Owned<Local>;

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

/// Takes an idle object of `pool` from this thread's cache; null if none.
#[inline(always)]
pub(crate) fn take(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot else { return null_mut() };
    let tc = current::get();
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    let Some(tc) = (unsafe { tc.as_ref() }) else { return null_mut() };
    if !tc.enter() {
        return null_mut();
    }
    // SAFETY: we are inside our cache.
    let local = unsafe { tc.get() };
    // SAFETY: a slot's index is below MAX_POOLS, the length of `heads`.
    let head = unsafe { local.heads.get_unchecked_mut(slot.index()) };
    let item = pop_head(head, &mut local.bytes, home.size);
    tc.exit();
    item.cast()
}

/// Pops the top of a stack, or null; keeps its count and the cache's bytes.
/// The caller is inside the cache that owns `head` and `bytes`.
#[inline(always)]
fn pop_head(head: &mut Head, bytes: &mut usize, size: usize) -> *mut Link {
    let item = head.top;
    if !item.is_null() {
        debug_assert!(head.count > 0 && *bytes >= size, "a non-empty stack is counted");
        // SAFETY: `item` is idle in this stack, whose cache the caller is inside.
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
pub(crate) fn put(home: &Home, ptr: *mut u8) -> Put {
    let Some(slot) = home.slot else { return Put::Refused };
    let budget = BUDGET.load(Ordering::Relaxed);
    let tc = current::get();
    // Relaxed `capped`: a setting; a release racing its change may go either way.
    if home.size > budget || tc.is_null() || home.capped.load(Ordering::Relaxed) {
        return Put::Refused;
    }
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    let tc = unsafe { &*tc };
    if !tc.enter() {
        return Put::Refused;
    }
    // SAFETY: we are inside our cache, and the caller gives the object up.
    let over = unsafe { push_head(tc.get(), slot, home.size, ptr, budget) };
    tc.exit();
    if over {
        Put::OverBudget
    } else {
        Put::Done
    }
}

/// Pushes an object on the stack of `slot`; true when now over `budget`.
///
/// # Safety
/// The caller is inside the cache that owns `local`; `ptr` is an object of
/// `size` bytes of the pool of `slot`, given up by the caller.
#[inline(always)]
unsafe fn push_head(local: &mut Local, slot: Slot, size: usize, ptr: *mut u8, budget: usize) -> bool {
    // SAFETY: a slot's index is below MAX_POOLS, the length of `heads`.
    let head = unsafe { local.heads.get_unchecked_mut(slot.index()) };
    // SAFETY: the object is ours until published in our own stack.
    unsafe { set_next(ptr.cast(), head.top) };
    head.top = ptr.cast();
    head.count = head.count.wrapping_add(1);
    local.tick += 1;
    head.stamp = local.tick;
    local.bytes += size;
    local.bytes > budget
}

/// The slow side of `put`: gives this thread a cache if it has none.
/// Returns false when the object cannot be cached here now (no slot for
/// this pool, larger than the budget, pool above a lowered limit, thread
/// exiting, no memory for a cache, or a foreign holder in the cache): the
/// caller then releases it to the pool. Never waits.
#[cold]
#[inline(never)]
pub(crate) fn put_slow(home: &Home, ptr: *mut u8) -> bool {
    let Some(slot) = home.slot else { return false };
    let budget = BUDGET.load(Ordering::Relaxed);
    // Relaxed `capped`: as in `put`.
    if home.size > budget || home.capped.load(Ordering::Relaxed) {
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
    if !tc.enter() {
        return false;
    }
    // SAFETY: we are inside our cache, and the caller gives the object up.
    unsafe {
        tc.with(|local| {
            if push_head(local, slot, home.size, ptr, budget) {
                evict_inside(local, budget);
            }
        })
    };
    tc.exit();
    true
}

/// Brings this thread's cache back under its budget (after `Put::OverBudget`).
/// When a foreign holder is in the cache, it gives up: the next release
/// into the cache finds it over budget again.
#[cold]
#[inline(never)]
pub(crate) fn evict_current() {
    // SAFETY: the pointer is non-null only while this thread's cache is alive.
    if let Some(tc) = unsafe { current::get().as_ref() } {
        if tc.enter() {
            // SAFETY: we are inside our cache.
            unsafe { tc.with(|local| evict_inside(local, BUDGET.load(Ordering::Relaxed))) };
            tc.exit();
        }
    }
}

/// Brings a cache back to 7/8 of `budget`, least recently used pool first,
/// by sending objects to their pools. The caller is inside the cache.
#[cold]
#[inline(never)]
fn evict_inside(local: &mut Local, budget: usize) {
    let target = budget - budget / 8;
    while local.bytes > target {
        let victim = local.heads.iter().enumerate().filter(|(_, h)| h.count > 0).min_by_key(|(_, h)| h.stamp);
        let Some((idx, _)) = victim else {
            debug_assert_eq!(local.bytes, 0, "bytes count only cached objects");
            return;
        };
        // SAFETY: a pool keeps its slot until every cache is drained of it,
        // and this cache still holds objects of it.
        let home = unsafe { &*slot_home(idx) };
        // SAFETY: detached from our cache: objects of this home, ours; they
        // still count as out of the pool's shared layer, so the pool cannot
        // be destroyed under us.
        unsafe {
            home.send_back(|| {
                let (chain, n) = detach_older_half(&mut local.heads[idx]);
                local.bytes -= n as usize * home.size;
                chain
            })
        };
    }
}

/// The home of a slot that a cache holds objects of.
fn slot_home(idx: usize) -> *const Home {
    // Acquire: pairs with the Release of `claim_slot`: we see the whole home.
    let p = SLOTS[idx].load(Ordering::Acquire);
    debug_assert!(!p.is_null(), "a slot with cached objects has its pool");
    p
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
fn detach_all(local: &mut Local, idx: usize, size: usize) -> (*mut Link, u32) {
    let head = &mut local.heads[idx];
    let n = head.count;
    if n == 0 {
        return (null_mut(), 0);
    }
    debug_assert!(local.bytes >= n as usize * size, "bytes count every cached object");
    local.bytes -= n as usize * size;
    head.count = 0;
    (std::mem::replace(&mut head.top, null_mut()), n)
}

/// Sends every cached object of `local` back to its pool. The caller is inside the cache.
fn empty_into_pools(local: &mut Local) {
    for idx in 0..MAX_POOLS {
        if local.heads[idx].count == 0 {
            continue;
        }
        // SAFETY: a pool keeps its slot while objects of it are cached.
        let home = unsafe { &*slot_home(idx) };
        // SAFETY: detached from the cache: objects of this home, ours, still
        // counted out of the pool's shared layer.
        unsafe { home.send_back(|| detach_all(local, idx, home.size).0) };
    }
    debug_assert_eq!(local.bytes, 0, "an emptied cache holds no bytes");
}

/// Creates and registers this thread's cache; null when the thread exits
/// or memory is short (the thread then works without a cache).
#[cold]
#[inline(never)]
fn attach() -> *const ThreadCache {
    if EXITED.with(Cell::get) {
        return null();
    }
    let Some(tc) = try_box(Owned::new(Local { bytes: 0, tick: 0, heads: [EMPTY_HEAD; MAX_POOLS] })) else {
        return null();
    };
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
        return null();
    }
    reg.push(CachePtr(tc));
    current::set(tc.as_ptr());
    tc.as_ptr()
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

/// Takes one idle object of `pool` from any thread's cache (the limit path).
pub(crate) fn steal(home: &Home) -> *mut u8 {
    let Some(slot) = home.slot else { return null_mut() };
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        let item = tc.with_held(|local| pop_head(&mut local.heads[slot.index()], &mut local.bytes, home.size));
        if !item.is_null() {
            return item.cast();
        }
    }
    null_mut()
}

/// Detaches every idle object of `pool` from every thread's cache and hands
/// each chain to `f`, inside that cache's foreign hold (see the module
/// comment). Returns how many objects were detached.
pub(crate) fn drain(home: &Home, mut f: impl FnMut(*mut Link)) -> usize {
    let Some(slot) = home.slot else { return 0 };
    let mut total = 0;
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        total += tc.with_held(|local| {
            let (chain, n) = detach_all(local, slot.index(), home.size);
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
/// the middle; a cache whose owner is still busy then is let go and counted
/// as holding nothing. So the count never waits on the scheduler, and it
/// never counts more idle objects than there are: `read() - idle` never
/// falls below what callers hold. At quiescence no owner is busy and the
/// count is exact.
/// Returns `(read(), idle)`.
pub(crate) fn snapshot(slot: Slot, read: impl FnOnce() -> usize) -> (usize, usize) {
    let reg = caches();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        unsafe { tc.0.as_ref() }.announce();
    }
    let mut idle = 0;
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        if owner_out_soon(tc) {
            // SAFETY: held: announced, and the owner is out.
            idle += unsafe { tc.with(|local| local.heads[slot.index()].count as usize) };
        } else {
            // Busy: counted as holding nothing (the safe side), let go now.
            tc.unhold();
        }
    }
    let r = read();
    for tc in reg.iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked. A
        // second unhold of a skipped cache only clears a flag that is
        // already clear and that only CACHES holders write.
        unsafe { tc.0.as_ref() }.unhold();
    }
    (r, idle)
}

/// After `announce`: waits a little for a busy owner (see `snapshot`).
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

/// How many idle objects of `pool` sit in thread caches (for the tests).
#[cfg(all(test, not(loom)))]
pub(crate) fn idle(home: &Home) -> usize {
    match home.slot {
        Some(slot) => snapshot(slot, || 0).1,
        None => 0,
    }
}

/// Gives `pool` a slot; `None` when all are taken.
/// Called under the pool registry lock.
pub(crate) fn claim_slot(home: *const Home) -> Option<Slot> {
    for (i, s) in SLOTS.iter().enumerate() {
        if s.load(Ordering::Relaxed).is_null() {
            // Release: evicting threads that read the slot see the whole home.
            s.store(home.cast_mut(), Ordering::Release);
            return Some(Slot(i as u8));
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
            tc.with_held(|l| l.heads[slot.index()].count == 0)
        }),
        "a pool keeps its slot until every cache is drained of it"
    );
    SLOTS[slot.index()].store(null_mut(), Ordering::Release);
}

/// Sets the per-thread budget and applies it to every thread's cache now:
/// a cache above the new budget sends its least recently used objects to
/// their pools until it is back to 7/8 of it.
pub(crate) fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
    for tc in caches().iter() {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let tc = unsafe { tc.0.as_ref() };
        tc.with_held(|local| {
            if local.bytes > bytes {
                evict_inside(local, bytes)
            }
        });
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
        unsafe { tc.0.as_ref() }.hold();
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
/// shared caches and freed; this thread's own cache is let go.
pub(crate) fn fork_child() {
    let Some(mut reg) = FORK_HELD.take() else { return };
    let own = current::get();
    reg.retain(|tc| {
        // SAFETY: a registered cache stays alive while CACHES is locked.
        let r = unsafe { tc.0.as_ref() };
        if core::ptr::eq(tc.0.as_ptr(), own) {
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
