//! The pool itself: where its objects come from and go to, and its
//! counters. Creation, merging and destruction live in [`crate::registry`],
//! the `show pools` report in [`crate::report`].
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
//!
//! Names say which counter a function moves: `to_os` lowers `allocated`,
//! `release` lowers `out`, `reserve_one` raises `allocated`.

use crate::cache::{self, Back, Home};
use crate::debug::Checks;
use crate::link::{next_of, Link};
use crate::os;
use crate::pages::Pages;
use crate::shared::Shared;
use crate::sync::{Spin, SpinLock};
use crossbeam_utils::CachePadded;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

/// The release period, ms (`pool_set_release_period`, `BUFPOOL_RELEASE_PERIOD`):
/// objects idle in a pool's shared cache for a whole period go back to the
/// OS. 0: at once (above `minavail`); `u32::MAX`: never by time.
static PERIOD_MS: AtomicU32 = AtomicU32::new(DEFAULT_PERIOD_MS);
/// The default release period, ms: short enough that a spike is back
/// within a second (an object goes back between one period and a period
/// and a window after it went idle, then the give-back itself), long enough
/// that a need fluctuating within half a second keeps its objects.
pub(crate) const DEFAULT_PERIOD_MS: u32 = 400;

/// Objects given back to the OS per batch: sorted by address together, so
/// that objects of one run of pages, freed by several threads in any
/// order, cost one system call per run (or per stretch) touched.
const GIVE_BACK_CHUNK: usize = 256;

/// System calls one batch of a release slice may make: objects given back
/// from scattered runs cost one `madvise` per stretch, and in a process
/// whose other threads run elsewhere each one waits for a TLB shootdown
/// (tens to hundreds of microseconds on this kind of virtual machine), so a
/// slice's batch is cut where its calls would exceed this; the rest stay in
/// the shared cache for the next slice.
const SLICE_CALLS: usize = 4;

/// A release period is watched in this many windows (see `Pool::maintain`).
pub(crate) const WINDOWS: usize = 4;

/// The release policy's record of the last `WINDOWS` windows.
#[derive(Default)]
pub(crate) struct Windows {
    /// Fewest idle objects in the shared cache during each, newest first.
    lows: [usize; WINDOWS],
    /// Most objects out of the shared layer during each, newest first.
    peaks: [usize; WINDOWS],
    /// Windows recorded so far, up to `WINDOWS`.
    seen: usize,
}

/// Set while objects are owed back to the OS (by `crate::maintain`): the
/// slow releases tick at every call then, as the cached ones do.
static HURRY: AtomicBool = AtomicBool::new(false);

/// See `HURRY`.
pub(crate) fn set_hurry(on: bool) {
    HURRY.store(on, Relaxed);
}

/// The release period now, ms.
pub(crate) fn release_period() -> u32 {
    // Relaxed: a setting; a release racing its change may follow either.
    PERIOD_MS.load(Relaxed)
}

/// Sets the release period, ms.
pub(crate) fn set_release_period(ms: u32) {
    PERIOD_MS.store(ms, Relaxed);
}
/// Bytes of a pool's name kept, with its terminating NUL.
pub(crate) const NAME_LEN: usize = 32;
/// Rounds of the search for room or an idle object at the limit: one, since
/// the caches are held all at once (no object can move between two of
/// them while the search looks); transits are waited for on top of it.
const LIMIT_ROUNDS: usize = 1;
/// Retries of that search after a transit ended, before giving up: each
/// retry follows an object's arrival somewhere, so this bounds only a
/// pathological stream of them.
const TRANSIT_RETRIES: usize = 1 << 16;
/// Retries of that search when it skipped a cache whose owner was inside a
/// call (`cache::Backoff`: spins and yields, then sleeps from 50 us to 1 ms,
/// about 80 ms in all): a preempted owner gets time slices to run and
/// leave; one stopped for longer has its objects counted as held.
const BUSY_RETRIES: usize = 100;

/// Where a handle's slot is: the first field of the pool's `Home`, the
/// pool's first field (`repr(C)` both), a `u16`.
#[cfg(not(loom))]
pub(crate) const SLOT_OFFSET: usize = core::mem::offset_of!(Pool, home) + core::mem::offset_of!(Home, stack);
const _: () =
    assert!(core::mem::size_of::<crate::cache::Slot>() == 2, "the header reads the slot as an unsigned short");

/// A pool of objects of one size. C sees it as the opaque `struct pool_head`
/// (declared in cbindgen.toml: cbindgen would print a `repr(C)` struct's
/// fields). `repr(C)`, `home` first: a handle points to the pool's slot,
/// which the header's inline fast path reads (`crate::ffi::inline`).
#[repr(C)]
pub struct Pool {
    /// What the thread caches know of the pool: its slot, object size, cap.
    pub(crate) home: Home,
    /// Bytes asked of the OS for each object (debug words included).
    pub(crate) alloc_size: usize,
    /// Alignment asked of the OS; 0 for malloc's own.
    pub(crate) align: usize,
    /// Where objects' memory comes from.
    pub(crate) mem: Memory,
    /// The `MEM_F_*`/`POOL_F_*` flags it was created with.
    pub(crate) flags: u32,
    /// The library's own pool (the buffer pool): never merged with another.
    pub(crate) private: bool,
    /// Where idle objects wait for any thread: a shared-cache algorithm,
    /// the debug store of a debug pool, or nothing.
    pub(crate) shared: Shared,
    pub(crate) name: [u8; NAME_LEN],
    /// Users of a merged pool (`MEM_F_SHARED`); the registry counts them.
    pub(crate) users: AtomicUsize,
    limit: AtomicUsize,
    minavail: AtomicUsize,
    pub(crate) c: CachePadded<Counters>,
    /// The release policy's windows (`maintain`, one slice at a time).
    windows: SpinLock<Windows>,
    /// The object debug modes it was created with; `None`: none.
    pub(crate) dbg: Option<Checks>,
    /// The head's life: odd while a pool lives in it, even once destroyed;
    /// each creation and each destruction in this head adds one (the
    /// generation is `life / 2`). Heads are never given back to the OS
    /// (`crate::registry`), so a stale handle reads this word safely.
    /// Written only under the registry lock; read anywhere.
    pub(crate) life: AtomicUsize,
    /// Created with an object debug mode: a use of its handle after its
    /// destruction aborts (kept in its tombstone).
    pub(crate) checked: bool,
}

/// Where a pool's objects' memory comes from.
pub(crate) enum Memory {
    /// `malloc` (objects smaller than a page).
    Heap,
    /// Runs mapped by the library (objects of a page or more): an object
    /// given back to the OS leaves resident memory at once.
    Pages(Pages),
    /// One mapping per object, unmapped on free (the `uaf` debug mode).
    Mapped,
    /// One mapping per object, of whole pages (objects larger than half a
    /// run): given back = unmapped.
    Own,
}

/// Statistics and accounting. `allocated`, `out`, `failed`, `released`,
/// and the release policy's `idle_low`, `peak`, `need`, `debt`, `since`:
/// Relaxed, they count objects and guard no memory; exactness at quiescence
/// comes from the caller's own synchronisation (thread join, locks) with
/// the threads that moved objects. `transit` and `arrived`: SeqCst, see
/// `alloc_new_or_idle`.
#[derive(Default)]
pub(crate) struct Counters {
    allocated: AtomicUsize,
    out: AtomicUsize,
    failed: AtomicUsize,
    /// Objects given back to the OS so far.
    released: AtomicUsize,
    /// The fewest idle objects the shared cache held since the period began:
    /// that many stayed idle the whole period.
    idle_low: AtomicUsize,
    /// The most objects out of the shared layer since the period began.
    peak: AtomicUsize,
    /// `pool_needed_avg`: the average of the periods' peaks (weight 1/4).
    need: AtomicUsize,
    /// Objects still to give back, found idle a whole period.
    debt: AtomicUsize,
    /// When the period began, ms.
    since: AtomicU64,
    /// Transits under way.
    pub(crate) transit: AtomicUsize,
    /// Transits ended so far.
    arrived: AtomicUsize,
}

/// A transit of a pool's objects, from `begin_transit` until dropped.
pub(crate) struct Transit<'a>(&'a Pool);

impl Drop for Transit<'_> {
    fn drop(&mut self) {
        self.0.end_transit();
    }
}

/// The pool's side of its `Home`, for the thread caches.
pub(crate) static BACK: Back = Back { begin: home_begin, take: home_take, fetch: home_fetch, at_limit: home_at_limit };

/// The pool a `Home` is embedded in.
fn pool_of(home: &Home) -> &Pool {
    let at = core::mem::offset_of!(Pool, home);
    // SAFETY: every `Home` the caches are given is the `home` field of a
    // live `Pool` (made only by `Pool::new`, reached through the pool).
    unsafe { &*(home as *const Home).byte_sub(at).cast::<Pool>() }
}

fn home_begin(home: &Home) {
    pool_of(home).start_transit();
}

/// # Safety
/// As `Back::take`: a chain of `n` objects of this pool, out of every
/// cache, counted out, owned by the caller; `home_begin` began the transit.
unsafe fn home_take(home: &Home, chain: *mut Link, n: usize) {
    let pool = pool_of(home);
    // SAFETY: the caller's guarantee, which is `release_batch`'s.
    unsafe { pool.release_batch(chain, n) };
    pool.end_transit();
}

fn home_fetch(home: &Home, n: usize) -> (*mut Link, usize) {
    pool_of(home).fetch_batch(n)
}

fn home_at_limit(home: &Home) -> bool {
    let pool = pool_of(home);
    let limit = pool.limit.load(Relaxed);
    // Relaxed, both: a hint (see `Back::at_limit`).
    limit != 0 && pool.c.allocated.load(Relaxed) >= limit
}

impl Pool {
    /// A pool not yet registered. The registry boxes it, then gives it a slot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: [u8; NAME_LEN],
        size: usize,
        alloc_size: usize,
        align: usize,
        flags: u32,
        private: bool,
        shared: Shared,
        dbg: Option<Checks>,
    ) -> Self {
        Pool {
            home: Home {
                stack: cache::Slot::NONE,
                size,
                capped: AtomicBool::new(false),
                stacks: AtomicUsize::new(0),
                back: &BACK,
            },
            alloc_size,
            align,
            mem: if dbg.as_ref().is_some_and(Checks::mapped) {
                Memory::Mapped
            } else if dbg.is_none() && crate::pages::fits(alloc_size) {
                Memory::Pages(Pages::new(alloc_size, align))
            } else if dbg.is_none() && crate::pages::own_mapping(alloc_size) {
                Memory::Own
            } else {
                Memory::Heap
            },
            flags,
            private,
            shared,
            name,
            users: AtomicUsize::new(1),
            limit: AtomicUsize::new(0),
            minavail: AtomicUsize::new(0),
            c: CachePadded::new(Counters::default()),
            windows: SpinLock::new(Windows { lows: [0; WINDOWS], peaks: [0; WINDOWS], seen: 0 }),
            checked: dbg.is_some(),
            dbg,
            life: AtomicUsize::new(1),
        }
    }

    /// What stays in the head of this pool once it is destroyed: a pool
    /// with its name, size and flags, no thread cache (`Slot::NONE`, so
    /// that the fast path of a stale handle misses and takes the slow
    /// path, which refuses), no shared cache, no memory, every counter 0,
    /// and a life one past this pool's (even: dead).
    pub(crate) fn tombstone(&self) -> Pool {
        let t = Pool::new(self.name, self.size(), 0, 0, self.flags, self.private, Shared::None, None);
        // Relaxed: written under the registry lock, which the readers that matter hold.
        t.life.store(self.life.load(Relaxed) + 1, Relaxed);
        Pool { checked: self.checked, ..t }
    }

    /// Is a pool alive in this head? False for a stale handle (the pool
    /// was destroyed). Relaxed: the word is only compared; a handle racing
    /// its pool's destruction is the caller's bug (`pool_destroy`).
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.life.load(Relaxed) & 1 == 1
    }

    /// Does a misuse around this pool abort? When it was created with an
    /// object debug mode, or one is on now.
    pub(crate) fn debugged(&self) -> bool {
        self.checked || crate::debug::object_modes().0 != 0
    }

    /// A call `what` on the handle of a destroyed pool: aborts with one
    /// line when the pool had an object debug mode or one is on now, else
    /// returns so that the call does nothing (its documented result).
    #[cold]
    #[inline(never)]
    pub(crate) fn stale(&self, what: &str) {
        debug_assert!(!self.is_live(), "only a destroyed pool's handle is stale");
        if self.debugged() {
            crate::debug::die(format!(
                "{what} of destroyed pool {:p} to pool '{}' (the handle is stale: generation {} was destroyed)",
                self as *const Pool,
                self.name(),
                self.life.load(Relaxed) / 2
            ));
        }
    }

    /// Object size as callers see it.
    #[inline(always)]
    pub(crate) fn size(&self) -> usize {
        self.home.size
    }

    // ---- the fast path -------------------------------------------------

    /// Takes an object: from this thread's cache if it has one, else the slow path.
    #[inline(always)]
    pub(crate) fn alloc(&self) -> *mut u8 {
        let p = cache::take(&self.home);
        if !p.is_null() {
            return p;
        }
        self.alloc_slow()
    }

    /// Gives an object back: to this thread's cache if it fits, else
    /// released. True when this thread's maintenance tick is due (the
    /// caller runs `crate::maintain::tick`).
    ///
    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    #[inline(always)]
    #[must_use]
    pub(crate) unsafe fn free(&self, ptr: *mut u8) -> bool {
        match cache::put(&self.home, ptr) {
            cache::CACHED => false,
            // SAFETY: the caller holds `ptr`, an object of this pool.
            cache::REFUSED => unsafe { self.free_slow(ptr) },
            _ => true,
        }
    }

    /// `free`, then the maintenance tick when it is due (`pool_free`). The
    /// cached case returns at once and the others go through cold calls, so
    /// that the fast path ends in a `ret` of its own instead of a taken
    /// branch to the one the null checks share.
    ///
    /// # Safety
    /// As `free`.
    #[inline(always)]
    pub(crate) unsafe fn free_ticking(&self, ptr: *mut u8) {
        match cache::put(&self.home, ptr) {
            cache::CACHED => {}
            // SAFETY: the caller holds `ptr`, an object of this pool.
            cache::REFUSED => unsafe { self.free_slow_ticking(ptr) },
            _ => crate::maintain::tick(),
        }
    }

    /// `free_slow`, then the tick when it is due.
    ///
    /// # Safety
    /// As `free`.
    #[cold]
    #[inline(never)]
    unsafe fn free_slow_ticking(&self, ptr: *mut u8) {
        // SAFETY: the caller's guarantee.
        if unsafe { self.free_slow(ptr) } {
            crate::maintain::tick();
        }
    }

    /// `alloc`, with the object's `size` bytes set to zero.
    pub(crate) fn zalloc(&self) -> *mut u8 {
        let obj = self.alloc();
        if !obj.is_null() {
            // SAFETY: a fresh object of this pool is at least `size` bytes.
            unsafe { obj.write_bytes(0, self.size()) };
        }
        obj
    }

    // ---- the slow path -------------------------------------------------

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self) -> *mut u8 {
        // A stale handle's head is a tombstone: its fast path always ends here.
        if !self.is_live() {
            self.stale("pool_alloc");
            return null_mut();
        }
        if self.home.slot().is_some() {
            debug_assert!(self.dbg.is_none(), "a debug pool has no thread cache");
            // An empty stack refills with a batch from the shared cache;
            // null: the shared cache had none (refill looked).
            let p = cache::refill(&self.home);
            if !p.is_null() {
                return p;
            }
            return self.alloc_new_or_idle().0;
        }
        match &self.dbg {
            None => self.take_idle_or_new().0,
            Some(d) => self.alloc_checked(d, || self.take_idle_or_new()),
        }
    }

    /// An idle object of the shared cache, else a new or, at the limit, any
    /// idle one; and whether it was idle (reused).
    fn take_idle_or_new(&self) -> (*mut u8, bool) {
        let p = self.shared.pop();
        if !p.is_null() {
            self.count_out(1);
            return (p.cast(), true);
        }
        self.alloc_new_or_idle()
    }

    /// `n` objects leave the shared layer: `out` rises, and the release
    /// policy notes the period's peak need and its fewest idle objects.
    ///
    /// The peak and the low are read first and written only when they
    /// move: in a steady load they seldom do, and the no-cache path then
    /// pays one read-modify-write here instead of three. (A read that
    /// misses a window's reset only counts this value in the window before.)
    fn count_out(&self, n: usize) {
        let out = self.c.out.fetch_add(n, Relaxed) + n;
        // Relaxed, all: statistics for the release policy, no ordering with objects.
        if out > self.c.peak.load(Relaxed) {
            self.c.peak.fetch_max(out, Relaxed);
        }
        let idle = self.c.allocated.load(Relaxed).saturating_sub(out);
        if idle < self.c.idle_low.load(Relaxed) {
            self.c.idle_low.fetch_min(idle, Relaxed);
        }
    }

    /// Returns whether this thread's maintenance tick is due: every
    /// `cache::TICK_EVERY` slow releases too, so that a thread whose frees
    /// never reach a cache (no-cache pools) still ticks.
    ///
    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    #[cold]
    #[inline(never)]
    unsafe fn free_slow(&self, ptr: *mut u8) -> bool {
        // A tombstone refuses every object: it was destroyed with none held,
        // so `ptr` is not one of its objects; it is not touched.
        if !self.is_live() {
            self.stale("pool_free");
            return false;
        }
        // A pool without a thread cache goes straight to the shared layer.
        if self.home.slot().is_none() || !cache::put_slow(&self.home, ptr) {
            // SAFETY: the caller holds `ptr`, an object of this pool counted out.
            unsafe { self.release(ptr.cast()) };
        }
        // Relaxed: a hint; a tick more or less changes nothing.
        cache::count_slow_free().is_multiple_of(cache::TICK_EVERY) || HURRY.load(Relaxed)
    }

    /// Takes a new object from the OS, or, at the limit, any idle object;
    /// and whether it was idle (reused).
    ///
    /// At the limit the search runs a few rounds: while it looks through one
    /// cache, an idle object can appear in a cache it already looked at. It
    /// also waits for objects in transit: when a round finds nothing while a
    /// transit is under way, or after one ended since the round began, it
    /// runs again (that object is now idle somewhere, or gone to the OS and
    /// out of `allocated`). It fails only when rounds found neither room
    /// nor an idle object and no object moved meanwhile.
    fn alloc_new_or_idle(&self) -> (*mut u8, bool) {
        let mut spin = Spin::new();
        let mut backoff = cache::Backoff::new();
        let (mut rounds, mut retries, mut busy_retries) = (0, 0, 0);
        loop {
            // SeqCst: read before the searches (see below).
            let arrived = self.c.arrived.load(SeqCst);
            if self.reserve_one() {
                let p = self.os_alloc();
                if p.is_null() {
                    self.c.allocated.fetch_sub(1, Relaxed);
                    self.c.failed.fetch_add(1, Relaxed);
                } else {
                    self.count_out(1);
                }
                return (p, false);
            }
            // At the limit, idle objects must not make us fail, wherever they sit.
            let (p, busy) = cache::find_idle(&self.home);
            if !p.is_null() {
                return (p, true); // it was already counted out
            }
            let p = self.shared.pop();
            if !p.is_null() {
                self.count_out(1);
                return (p.cast(), true);
            }
            // SeqCst, both: a transit that began after our searches ended
            // moves an object we would have found; one that ended before has
            // moved `arrived` first (see `end_transit`).
            let moving = self.c.transit.load(SeqCst) != 0 || self.c.arrived.load(SeqCst) != arrived;
            if moving && retries < TRANSIT_RETRIES {
                retries += 1;
                spin.wait();
                continue;
            }
            // A cache with a stack of this pool whose owner was inside a call
            // (on this pool, or a slow path) may hold idle objects freed
            // before we began: looked at again, with no lock held, a bounded
            // number of times (a preempted owner gets a few time slices; one
            // stopped for longer has its objects counted as held).
            if busy && busy_retries < BUSY_RETRIES {
                busy_retries += 1;
                backoff.wait();
                continue;
            }
            rounds += 1;
            if rounds == LIMIT_ROUNDS {
                break;
            }
        }
        self.c.failed.fetch_add(1, Relaxed);
        (null_mut(), false)
    }

    /// An allocation of a debug pool: `fail=`, then `alloc`, then the
    /// object's checks (a reused one must be intact), words and poison.
    fn alloc_checked(&self, d: &Checks, alloc: impl FnOnce() -> (*mut u8, bool)) -> *mut u8 {
        if d.refuse() {
            self.c.failed.fetch_add(1, Relaxed);
            return null_mut();
        }
        let (p, reused) = alloc();
        // SAFETY: an object of this pool, now ours; a reused one went idle
        // through `release_or_keep`, which ran `check_free` on it.
        if !p.is_null() && !unsafe { d.hand_out(p, reused) } {
            // A new object that could not be registered (no memory): it
            // never reaches the caller.
            // SAFETY: ours, in no list, never handed out.
            unsafe { self.to_os(p, false) };
            self.c.out.fetch_sub(1, Relaxed);
            self.c.failed.fetch_add(1, Relaxed);
            return null_mut();
        }
        p
    }

    /// Counts one more allocated object if the limit allows it.
    fn reserve_one(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        self.c.allocated.fetch_update(Relaxed, Relaxed, |a| (limit == 0 || a < limit).then_some(a + 1)).is_ok()
    }

    /// Starts a transit: until the guard drops, a search at the limit that
    /// finds nothing waits rather than fail (see `alloc_new_or_idle`).
    pub(crate) fn begin_transit(&self) -> Transit<'_> {
        self.start_transit();
        Transit(self)
    }

    fn start_transit(&self) {
        // SeqCst: ordered before the detaching that follows, for the searchers.
        self.c.transit.fetch_add(1, SeqCst);
    }

    fn end_transit(&self) {
        // SeqCst, both: `arrived` moves before `transit` falls, so a searcher
        // that sees no transit under way also sees that one ended.
        self.c.arrived.fetch_add(1, SeqCst);
        let was = self.c.transit.fetch_sub(1, SeqCst);
        debug_assert!(was > 0, "a transit ends once");
    }

    /// Is `allocated` above the limit? Released objects then go to the OS.
    fn over_limit(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        limit != 0 && self.c.allocated.load(Relaxed) > limit
    }

    /// Lets the caches take objects again once the pool is within its limit.
    fn uncap_if_within(&self) {
        if self.home.capped.load(Relaxed) && !self.over_limit() {
            // Relaxed: a setting the caches read as a hint (see `cache::put`).
            self.home.capped.store(false, Relaxed);
        }
    }

    /// Sends an object out of the caller's hands or a thread cache to the
    /// shared cache, or to the OS when the pool is crowded or above its
    /// limit; `out` falls by one.
    ///
    /// # Safety
    /// `item` is an object of this pool counted in `out` that the caller owns.
    pub(crate) unsafe fn release(&self, item: *mut Link) {
        // SAFETY: the caller's guarantee, which is `release_or_keep`'s.
        unsafe { self.release_or_keep(item, false) };
    }

    /// `release`; with `keep`, the object stays idle even when the release
    /// period is 0 (the reserve that `dynbuf` keeps allocated without a
    /// limit). Returns whether the object stayed idle in the pool (false: it
    /// went to the OS).
    ///
    /// # Safety
    /// As `release`.
    pub(crate) unsafe fn release_or_keep(&self, item: *mut Link, keep: bool) -> bool {
        if let Some(d) = &self.dbg {
            // SAFETY: the caller's guarantee; in tag/uaf modes any pointer is checked first.
            unsafe { d.check_free(item.cast()) };
        }
        // `out` falls after the push, not before: an object counted idle
        // before it is in the list would, with many threads freeing at
        // once, make `release_now` see more idle objects than the list
        // holds and keep fewer than `minavail` (the musl race test's
        // poppers then find the list empty: it stops showing the race).
        let over = self.over_limit();
        // SAFETY: the caller owns `item`, an object of this pool.
        let kept = !over && (keep || !self.release_now()) && unsafe { self.shared.push(item) };
        if !kept {
            // SAFETY: the object is ours and in no list.
            unsafe { self.to_os(item.cast(), false) };
        }
        let was = self.c.out.fetch_sub(1, Relaxed);
        debug_assert!(was > 0, "out counts the object released");
        self.uncap_if_within();
        kept
    }

    /// Gives an object back to the OS; `allocated` falls first, so that an
    /// allocation at the limit finds room as soon as the object is out of
    /// sight (the pool may briefly exceed its limit by the objects being
    /// freed).
    ///
    /// `idle`: the object was idle in the pool (a debug pool checks that
    /// nothing wrote to it meanwhile).
    ///
    /// # Safety
    /// `p` is an object of this pool (from `os_alloc`), in no list, owned
    /// by the caller.
    unsafe fn to_os(&self, p: *mut u8, idle: bool) {
        let was = self.c.allocated.fetch_sub(1, Relaxed);
        debug_assert!(was > 0, "allocated counts the object freed");
        self.c.released.fetch_add(1, Relaxed);
        if let Some(d) = &self.dbg {
            // SAFETY: the caller's guarantee; an idle one went idle through `check_free`.
            unsafe { d.retire(p, idle) };
        }
        match &self.mem {
            // SAFETY: the caller's guarantee: an allocated object of these pages.
            Memory::Pages(pages) => unsafe { pages.release(&mut [p]) },
            // SAFETY: the caller's guarantee: made by `alloc_object` with these arguments.
            Memory::Heap => unsafe { os::free_object(p, self.alloc_size, false) },
            // SAFETY: as above, a mapping of its own.
            Memory::Mapped => unsafe { os::free_object(p, self.alloc_size, true) },
            // SAFETY: a mapping of `own_len` bytes of its own, unused.
            Memory::Own => unsafe { os::unmap(p, self.own_len()) },
        }
    }

    /// The length of an object's own mapping (`Memory::Own`).
    fn own_len(&self) -> usize {
        self.alloc_size.next_multiple_of(os::page())
    }

    /// An object's memory from the OS; null when it refuses.
    fn os_alloc(&self) -> *mut u8 {
        match &self.mem {
            Memory::Pages(pages) => pages.alloc(),
            Memory::Heap => os::alloc_object(self.alloc_size, self.align, false),
            Memory::Mapped => os::alloc_object(self.alloc_size, self.align, true),
            Memory::Own => os::map_aligned(self.own_len(), self.align.max(os::page())),
        }
    }

    /// Released objects go to the OS at once: the release period is 0 and
    /// the shared cache already keeps `minavail` idle objects (a store that
    /// keeps everything, a debug pool's, never releases this way).
    fn release_now(&self) -> bool {
        release_period() == 0 && !self.shared.keeps_all() && self.shared_idle() >= self.minavail.load(Relaxed)
    }

    /// `release` for a null-terminated chain of `n` objects: in one push
    /// of the whole chain when the pool keeps them (one exchange or CAS on
    /// the self-locked head), else object by object.
    ///
    /// # Safety
    /// Every object of the chain is of this pool, counted out, owned by the
    /// caller; the chain has `n` objects.
    pub(crate) unsafe fn release_batch(&self, first: *mut Link, n: usize) {
        if n == 0 {
            return;
        }
        if self.dbg.is_none() && !self.over_limit() && !self.release_now() {
            let mut last = first;
            for _ in 1..n {
                // SAFETY: the chain is ours and has `n` objects.
                last = unsafe { next_of(last) };
            }
            debug_assert!(!last.is_null(), "the chain has n objects");
            // SAFETY: the caller's chain, of this pool, linked from `first` to `last`.
            if unsafe { self.shared.push_chain(first, last, n) } {
                let was = self.c.out.fetch_sub(n, Relaxed);
                debug_assert!(was >= n, "out counts the objects released");
                return;
            }
        }
        let mut p = first;
        while !p.is_null() {
            // SAFETY: the chain is ours; read the link before `release` reuses it.
            let next = unsafe { next_of(p) };
            // SAFETY: an object of the caller's chain: ours, of this pool, counted out.
            unsafe { self.release(p) };
            p = next;
        }
    }

    /// Up to `n` idle objects of the shared cache, counted out of it: the
    /// chain and its length (for a thread cache's refill).
    pub(crate) fn fetch_batch(&self, n: usize) -> (*mut Link, usize) {
        let (chain, got) = self.shared.pop_batch(n.max(1));
        if got != 0 {
            self.count_out(got);
        }
        (chain, got)
    }

    /// `pool_needed_avg`: the average over the recent release periods of
    /// the most objects the pool had out of its shared cache (held by
    /// callers or idle in thread caches) during each: each period moves it
    /// a quarter of the way to that period's peak.
    pub(crate) fn needed_avg(&self) -> usize {
        self.c.need.load(Relaxed)
    }

    /// Objects given back to the OS so far.
    pub(crate) fn released(&self) -> usize {
        self.c.released.load(Relaxed)
    }

    /// The time-based release (`crate::maintain` calls it). A period is
    /// watched in `WINDOWS` windows: the shared cache's fewest idle objects
    /// during each (`idle_low`) and the most objects out (`peak`) are kept
    /// for the last `WINDOWS`; the fewest over them all stayed idle for the
    /// whole period, and, above `minavail`, are owed back to the OS. So an
    /// object goes back between one period and a period and a window after
    /// it went idle, and objects needed again within the period stay. Up to
    /// `max` of what is owed goes back now, in one batch. Returns the
    /// objects given back, and when (ms) this pool next needs a call: `now`
    /// again while something is still owed.
    pub(crate) fn maintain(&self, now: u64, max: usize) -> (usize, u64) {
        let period = release_period();
        if period == u32::MAX || self.shared.keeps_all() {
            return (0, u64::MAX);
        }
        let window = (period as u64 / WINDOWS as u64).max(1);
        let since = self.c.since.load(Relaxed);
        if since == 0 {
            // First sight of this pool: its first window begins.
            self.c.since.store(now, Relaxed);
            self.c.idle_low.store(self.shared_idle(), Relaxed);
            return (0, now + window);
        }
        if now >= since + window {
            // Only one maintenance slice runs at a time: the windows are its own.
            let mut w = self.windows.lock();
            let idle = self.shared_idle();
            let low = self.c.idle_low.swap(idle, Relaxed).min(idle);
            let peak = self.c.peak.swap(self.c.out.load(Relaxed), Relaxed);
            // Windows that ended unobserved (no call came) have the fewest
            // idle and the peak seen since the last one: no better is known.
            let ended = ((now - since) / window).min(WINDOWS as u64) as usize;
            for _ in 0..ended {
                w.lows.rotate_right(1);
                w.lows[0] = low;
                w.peaks.rotate_right(1);
                w.peaks[0] = peak;
            }
            w.seen = (w.seen + ended).min(WINDOWS);
            if w.seen == WINDOWS {
                let idle_all_period = w.lows.iter().copied().min().unwrap_or(0);
                let owed = idle_all_period.saturating_sub(self.minavail.load(Relaxed));
                // Those objects are owed once: the windows' lows no longer
                // count them, and they add to what is still owed.
                for l in w.lows.iter_mut() {
                    *l = l.saturating_sub(owed);
                }
                self.c.debt.fetch_add(owed, Relaxed);
            }
            // The average moves a quarter of the way to the period's peak
            // each window (rounded up, so that it reaches a steady peak).
            let peak = w.peaks.iter().copied().max().unwrap_or(0);
            let need = self.c.need.load(Relaxed);
            self.c.need.store((need * 3 + peak).div_ceil(4), Relaxed);
            self.c.since.store(now - (now - since) % window, Relaxed);
        }
        let owed = self.c.debt.load(Relaxed);
        let mut done = 0;
        if owed > 0 {
            let _moving = self.begin_transit();
            // Never below `minavail` idle, whatever was owed.
            let room = self.shared_idle().saturating_sub(self.minavail.load(Relaxed));
            let want = owed.min(max).min(room);
            done = self.give_back(want, SLICE_CALLS);
            // What is still owed, but never more than is idle above
            // `minavail` (a batch cut short by its system calls leaves the
            // rest owed; a shared cache that ran dry, nothing).
            let left = self.shared_idle().saturating_sub(self.minavail.load(Relaxed));
            self.c.debt.store((owed - done.min(owed)).min(left), Relaxed);
        }
        let next = if self.c.debt.load(Relaxed) > 0 { now } else { self.c.since.load(Relaxed) + window };
        (done, next)
    }

    /// Gives up to `n` idle objects of the shared cache back to the OS, in
    /// batches, making at most about `calls` system calls (a batch is cut
    /// where they would exceed it, and the rest goes back to the shared
    /// cache; `usize::MAX`: no bound). The caller holds a transit. Returns
    /// how many went back.
    fn give_back(&self, n: usize, calls: usize) -> usize {
        const CHUNK: usize = GIVE_BACK_CHUNK;
        let mut done = 0;
        if self.shared.keeps_all() {
            // The debug store: one object at a time, never linked through
            // its memory (its `integrity` pattern must stay as it was).
            while done < n {
                let p = self.shared.pop();
                if p.is_null() {
                    break;
                }
                // SAFETY: popped: an idle object of this pool, ours, in no list.
                unsafe { self.to_os(p.cast(), true) };
                done += 1;
            }
            return done;
        }
        let mut calls_left = calls;
        while done < n && calls_left > 0 {
            let (chain, got) = self.shared.pop_batch((n - done).min(CHUNK));
            if got == 0 {
                break;
            }
            let mut objs = [null_mut::<u8>(); CHUNK];
            let mut p = chain;
            for slot in objs.iter_mut().take(got) {
                *slot = p.cast();
                // SAFETY: the popped chain is ours, `got` objects long.
                p = unsafe { next_of(p) };
            }
            // How many of them fit the calls left, and the calls they take.
            let (keep, used) = match &self.mem {
                Memory::Pages(pages) => {
                    objs[..got].sort_unstable();
                    pages.prefix_within(&objs[..got], calls_left)
                }
                Memory::Own => (got.min(calls_left), got.min(calls_left)),
                _ => (got, 0),
            };
            calls_left = calls_left.saturating_sub(used);
            if keep < got {
                // SAFETY: the objects past `keep` are idle objects of this
                // pool we popped: ours, still counted in `allocated`.
                unsafe { self.push_back(&objs[keep..got]) };
            }
            let was = self.c.allocated.fetch_sub(keep, Relaxed);
            debug_assert!(was >= keep, "allocated counts the objects given back");
            self.c.released.fetch_add(keep, Relaxed);
            match &self.mem {
                // SAFETY: idle objects of these pages, popped: ours, in no list.
                Memory::Pages(pages) => unsafe { pages.release(&mut objs[..keep]) },
                _ => {
                    for &o in &objs[..keep] {
                        if let Some(d) = &self.dbg {
                            // SAFETY: an idle object of this pool, now ours.
                            unsafe { d.retire(o, true) };
                        }
                        match &self.mem {
                            // SAFETY: an idle object of this pool, a mapping of its own, ours.
                            Memory::Own => unsafe { os::unmap(o, self.own_len()) },
                            // SAFETY: an idle object of this pool from `os_alloc`, ours.
                            m => unsafe { os::free_object(o, self.alloc_size, matches!(m, Memory::Mapped)) },
                        }
                    }
                }
            }
            done += keep;
            if keep < got {
                break;
            }
        }
        done
    }

    /// Puts popped idle objects back into the shared cache, as one chain.
    ///
    /// # Safety
    /// Each is an idle object of this pool the caller popped (counted in
    /// `allocated`, not in `out`), in no list.
    unsafe fn push_back(&self, objs: &[*mut u8]) {
        let Some((&first, rest)) = objs.split_first() else { return };
        let mut last = first.cast::<Link>();
        for &o in rest {
            // SAFETY: ours (the caller's guarantee); linked before publishing.
            unsafe { crate::link::set_next(last, o.cast()) };
            last = o.cast();
        }
        // SAFETY: the chain `first`..`last` of `objs.len()` objects, ours.
        let kept = unsafe { self.shared.push_chain(first.cast(), last, objs.len()) };
        debug_assert!(kept, "a shared cache we popped from keeps what we push back");
    }

    /// Does it take its memory from `malloc` (whose free memory the
    /// maintenance trims now and then)?
    pub(crate) fn on_heap(&self) -> bool {
        matches!(self.mem, Memory::Heap)
    }

    // ---- the other entry points -----------------------------------------

    pub(crate) fn alloc_nocache(&self) -> *mut u8 {
        match &self.dbg {
            None => self.alloc_new_or_idle().0,
            Some(d) => self.alloc_checked(d, || self.alloc_new_or_idle()),
        }
    }

    /// # Safety
    /// `ptr` came from this pool and the caller holds it.
    pub(crate) unsafe fn free_nocache(&self, ptr: *mut u8) {
        if let Some(d) = &self.dbg {
            // SAFETY: the caller's guarantee; in tag/uaf modes any pointer is checked first.
            unsafe { d.check_free(ptr) };
        }
        // SAFETY: the caller holds `ptr`, an object of this pool in no list.
        unsafe { self.to_os(ptr, false) };
        let was = self.c.out.fetch_sub(1, Relaxed);
        debug_assert!(was > 0, "out counts the object freed");
        self.uncap_if_within();
    }

    /// Frees every idle object of the shared cache to the OS, in batches.
    pub(crate) fn flush(&self) {
        let _moving = self.begin_transit();
        while self.give_back(usize::MAX, usize::MAX) != 0 {}
    }

    /// Moves every thread cache's idle objects of this pool to the shared
    /// cache, then frees idle objects above `minavail` to the OS. A cache
    /// whose owner is inside a call on this pool is skipped.
    pub(crate) fn gc(&self) {
        self.drain_caches_to_shared();
        self.give_back_excess(|allocated, out| {
            allocated.saturating_sub(out).saturating_sub(self.minavail.load(Relaxed))
        });
    }

    /// One round of moving every thread cache's idle objects of this pool
    /// to the shared cache (or the OS, for a store that keeps nothing), in
    /// a transit of its own: what it could not reach.
    fn drain_caches_to_shared(&self) -> cache::Missed {
        let _moving = self.begin_transit();
        let (_, missed) = cache::drain(&self.home, |chain| {
            let mut p = chain;
            while !p.is_null() {
                // SAFETY: the drained chain is ours; read the link before reuse.
                let next = unsafe { next_of(p) };
                // SAFETY: an idle object of this pool, ours, in no list.
                if !unsafe { self.shared.push(p) } {
                    // SAFETY: the same object, refused by the shared cache: still ours, in no list.
                    unsafe { self.to_os(p.cast(), true) };
                }
                let was = self.c.out.fetch_sub(1, Relaxed);
                debug_assert!(was > 0, "out counts every cached object");
                p = next;
            }
        });
        missed
    }

    /// Frees to the OS, in batches, as many idle objects of the shared
    /// cache as `excess(allocated, out)` says.
    fn give_back_excess(&self, excess: impl Fn(usize, usize) -> usize) {
        let _moving = self.begin_transit();
        loop {
            let n = excess(self.c.allocated.load(Relaxed), self.c.out.load(Relaxed));
            if n == 0 || self.give_back(n.min(GIVE_BACK_CHUNK), usize::MAX) == 0 {
                break;
            }
        }
    }

    /// Sets the limit. A limit below what is allocated takes effect at once:
    /// the pool is capped (no cache takes its objects, no stack of it
    /// grows), idle objects above it, in any cache, go back to the OS, and
    /// objects released later go to the OS too until the pool is within the
    /// limit. A thread stopped inside a call on this pool delays the caller
    /// until its call ends (`settle_cap`), and no one else.
    pub(crate) fn set_limit(&self, n: usize) {
        self.set_limit_nowait(n);
        self.settle_cap();
    }

    /// `set_limit` without the wait: caches that cannot be reached now (an
    /// owner inside a call on this pool) conform at their owner's next slow
    /// call (for a caller that holds a lock others need: `dynbuf_init`).
    pub(crate) fn set_limit_nowait(&self, n: usize) {
        self.limit.store(n, Relaxed);
        if n != 0 && self.c.allocated.load(Relaxed) > n {
            // Caches first refuse new objects, then give up what they hold;
            // those no one can reach now catch up at their owner's next call.
            // Relaxed: a setting the caches read inside themselves, after the
            // hold that drains them (or the generation that makes them conform).
            self.home.capped.store(true, Relaxed);
            cache::settings_changed();
            self.drain_caches_to_shared();
            self.give_back_over_limit();
        }
        self.uncap_if_within();
    }

    /// While the pool is capped: comes back, round after round with no lock
    /// held and no transit open between them (an allocation at the limit
    /// meanwhile is not kept waiting), to every cache whose owner was inside
    /// a call on this pool, until none is; then gives back the idle objects
    /// above the limit.
    pub(crate) fn settle_cap(&self) {
        let mut backoff = cache::Backoff::new();
        // Relaxed: a setting (see `set_limit_nowait`).
        while self.home.capped.load(Relaxed) {
            let missed = self.drain_caches_to_shared();
            if missed.busy == 0 {
                break;
            }
            backoff.wait();
        }
        self.give_back_over_limit();
        self.uncap_if_within();
    }

    /// Gives back the idle objects above the limit.
    fn give_back_over_limit(&self) {
        let n = self.limit.load(Relaxed);
        if n != 0 {
            self.give_back_excess(|allocated, out| allocated.saturating_sub(n).min(allocated.saturating_sub(out)));
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
        let Some(slot) = self.home.slot() else { return self.c.out.load(Relaxed) };
        let (out, idle) = cache::snapshot(slot, || self.c.out.load(SeqCst));
        debug_assert!(out >= idle, "every object idle in a thread cache counts as out");
        out.saturating_sub(idle)
    }

    pub(crate) fn failed(&self) -> usize {
        self.c.failed.load(Relaxed)
    }

    /// The name's bytes as stored (at most `NAME_LEN - 1`, maybe not UTF-8).
    pub(crate) fn name_bytes(&self) -> &[u8] {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        &self.name[..n]
    }

    pub(crate) fn minavail(&self) -> usize {
        self.minavail.load(Relaxed)
    }

    pub(crate) fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }

    /// Frees every idle object this pool has, in thread caches and in its
    /// shared cache, for its destruction: no object of it may be in use.
    /// False, with nothing freed but what the caches the owners let us reach
    /// held, when a cache could not be reached (its owner inside a call on
    /// this pool: the pool is in use after all).
    pub(crate) fn free_all_idle(&self) -> bool {
        let (_, missed) = cache::drain(&self.home, |mut c| {
            while !c.is_null() {
                // SAFETY: drained objects are ours; read the link before freeing.
                let next = unsafe { next_of(c) };
                // SAFETY: an idle object of this pool, in no list.
                unsafe { self.to_os(c.cast(), true) };
                self.c.out.fetch_sub(1, Relaxed);
                c = next;
            }
        });
        if !missed.none() {
            return false;
        }
        self.flush();
        debug_assert_eq!(self.allocated(), 0, "a pool destroyed with no object in use has none left");
        if let Memory::Pages(pages) = &self.mem {
            pages.unmap_all();
        }
        true
    }
}
