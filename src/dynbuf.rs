//! Dynamic buffers: the process-wide buffer pool, allocation with a margin
//! (the reserve that keeps responses flowing when memory is short), the
//! reserve tiers of the criticality classes, and the budget of an offer.
//!
//! The margin rule. With a limit `L`, an allocation with margin `m`
//! succeeds only if `used + 1 + m <= L`: `m` buffers can still be had after
//! it. `used <= allocated`, so the cheap `allocated + 1 + m <= L` settles
//! most calls; only near the limit are the thread caches visited for the
//! exact `used`. A margin-0 allocation is the pool's own: it fails only when
//! callers really hold `L` buffers (the core steals idle ones at the limit).
//! Without a limit, the reserve is kept really allocated: after taking a
//! buffer, `m` idle ones are made to exist (taken from the OS if needed).
//!
//! Concurrent allocations check the margin each on its own: two threads
//! may both pass a check that only one of them would pass after the other.
//! The reserve bends by at most the number of racing threads; it is the
//! margin-0 limit that is exact.
//!
//! A reserve (or a margin without a limit) whose bytes exceed half of the
//! memory the process can have ([`max_reserve_bytes`]) is refused up front:
//! it could only fill the address space before failing.

use crate::flags::{DynbufCrit, CLASSES, MEM_F_EXACT, MEM_F_SHARED};
use crate::pool::Pool;
use crate::registry::{self, MAX_SIZE};
use core::ffi::c_char;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// A buffer in HAProxy's layout (C: `struct buffer`). `size` 0 means "not
/// allocated" (`BUF_NULL`); an allocated buffer has `size` bytes at `area`.
/// `data` and `head` belong to the caller (bytes held, offset of the first).
#[repr(C)]
pub struct Buffer {
    /// Bytes at `area`; 0 when the buffer is not allocated.
    pub size: usize,
    /// The storage, from the buffer pool; NULL when not allocated.
    pub area: *mut c_char,
    /// Bytes of data held (the caller's).
    pub data: usize,
    /// Offset of the first byte of data (the caller's).
    pub head: usize,
}

impl Buffer {
    pub(crate) const NULL: Buffer = Buffer { size: 0, area: null_mut(), data: 0, head: 0 };
}

/// The buffer pool, null until `init`. Release/Acquire: publishes the
/// pool's construction to the threads that load it.
static POOL: AtomicPtr<Pool> = AtomicPtr::new(null_mut());
/// Relaxed, both: plain settings, read next to `POOL` (Acquire) and set
/// before it is stored (Release) on first init.
static BUFSIZE: AtomicUsize = AtomicUsize::new(0);
static RESERVED: AtomicUsize = AtomicUsize::new(0);
/// Serialises `init`.
static INIT: Mutex<()> = Mutex::new(());

/// The buffer pool once `init` ran.
pub(crate) fn buffer_pool<'a>() -> Option<&'a Pool> {
    // SAFETY: a non-null POOL is a pool created by `init`, alive until a
    // destroy frees it, which resets POOL first (`forget`); C makes no buffer
    // call concurrently with that destroy (documented at `pool_head_buffer`).
    unsafe { POOL.load(Ordering::Acquire).as_ref() }
}

/// Told that the pool at `freed` was freed (by `pool_destroy_all`, or
/// `pool_destroy` of the buffer pool): if it was the buffer pool, the
/// buffer functions go back to their state before `init`. True when it was.
pub(crate) fn forget(freed: *const Pool) -> bool {
    // AcqRel: the reset is seen by any later `init` that acquires POOL.
    if POOL.compare_exchange(freed as *mut Pool, null_mut(), Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    BUFSIZE.store(0, Ordering::Relaxed);
    RESERVED.store(0, Ordering::Relaxed);
    true
}

/// The most bytes a reserve may make the buffer pool keep: half of the
/// physical memory, or of the address-space limit (`RLIMIT_AS`, which
/// HAProxy's `-m` sets) when that is lower.
pub(crate) fn max_reserve_bytes() -> usize {
    // SAFETY: sysconf has no precondition.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let mut max = if pages > 0 && page > 0 { (pages as usize).saturating_mul(page as usize) } else { usize::MAX };
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
        max = max.min(lim.rlim_cur as usize);
    }
    max / 2
}

/// Would keeping `n` idle buffers of `bufsize` bytes be absurd?
fn absurd_reserve(n: usize, bufsize: usize) -> bool {
    n.checked_mul(bufsize).is_none_or(|bytes| bytes > max_reserve_bytes())
}

pub(crate) fn reserved() -> usize {
    RESERVED.load(Ordering::Relaxed)
}

/// Creates (or retunes) the buffer pool. `publish` is told the pool, under
/// `init`'s lock, as soon as it is in place (also when the reserve then
/// fails with -2). Returns 0 or an error code.
pub(crate) fn init(bufsize: usize, reserved: usize, limit: usize, publish: impl FnOnce(*mut Pool)) -> i32 {
    let (r, pool) = init_locked(bufsize, reserved, limit, publish);
    // With `INIT` let go: a lowered limit waits for calls on the buffer pool
    // in flight on other threads (which `fork()`, taking `INIT`, must not).
    if let Some(pool) = pool {
        pool.settle_cap();
    }
    r
}

fn init_locked(
    bufsize: usize,
    reserved: usize,
    limit: usize,
    publish: impl FnOnce(*mut Pool),
) -> (i32, Option<&'static Pool>) {
    if bufsize == 0
        || bufsize > MAX_SIZE as usize
        || (limit != 0 && limit <= reserved)
        || absurd_reserve(reserved.max(3), bufsize)
    {
        return (-1, None);
    }
    let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = POOL.load(Ordering::Acquire);
    if p.is_null() {
        // The library's own pool: a user's pool of the same size and flags
        // never merges with it (its limit and minavail are ours to set).
        p = registry::create_private(b"buffer", bufsize as u32, MEM_F_SHARED | MEM_F_EXACT);
        if p.is_null() {
            return (-2, None);
        }
    }
    // SAFETY: created above or by an earlier init, never destroyed while in use.
    let pool: &'static Pool = unsafe { &*p };
    if pool.size() != bufsize {
        return (-1, None);
    }
    let minavail = reserved.max(3);
    pool.set_limit_nowait(limit);
    pool.set_minavail(minavail);
    BUFSIZE.store(bufsize, Ordering::Relaxed);
    RESERVED.store(reserved, Ordering::Relaxed);
    POOL.store(p, Ordering::Release);
    publish(p);
    // The reserve, and one more, exist from the start (at most the limit).
    let keep = if limit == 0 { minavail } else { minavail.min(limit) };
    // The reserve is what keeps responses flowing: `fail=PERCENT` spares it.
    let _spared = crate::debug::critical();
    if top_up(pool, keep) == Reserve::Refused {
        return (-2, Some(pool));
    }
    (0, Some(pool))
}

/// What `top_up` achieved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// The idle buffers exist.
    Held,
    /// The OS refused a buffer.
    Refused,
    /// The pool keeps no idle object (`uaf` and `no-global` debug modes: a
    /// released buffer goes straight to the OS): no reserve can be held,
    /// and buffers come from the OS when asked for.
    Unkeepable,
}

/// Makes at least `keep` buffers idle in the pool, taking new ones from the
/// OS. Idle buffers in the shared cache alone are
/// a lower bound of all idle ones: the exact count, which visits every
/// thread cache under its lock, is taken only when that bound falls short,
/// and once. At most `keep` buffers are taken (at the limit an idle one can
/// come back instead of a new one).
pub(crate) fn top_up(pool: &Pool, keep: usize) -> Reserve {
    if pool.shared_idle() >= keep {
        return Reserve::Held;
    }
    let mut idle = pool.allocated().saturating_sub(pool.used());
    while idle < keep {
        let p = pool.alloc_nocache();
        if p.is_null() {
            return Reserve::Refused;
        }
        // SAFETY: just taken from this pool; we give it back idle, kept
        // even when the pool is crowded (a plain free could send it to the OS).
        if !unsafe { pool.release_or_keep(p.cast(), true) } {
            // It went to the OS: it is not idle, and no other would be.
            return Reserve::Unkeepable;
        }
        idle += 1;
    }
    Reserve::Held
}

/// Allocates `*buf` if it may leave `margin` buffers to be had after it.
/// True with `*buf` allocated (or already allocated), false with `*buf`
/// untouched.
pub(crate) fn alloc_margin(buf: &mut Buffer, margin: usize) -> bool {
    if buf.size != 0 {
        return !is_garbage(buf, "b_alloc");
    }
    let Some(pool) = buffer_pool() else { return false };
    let limit = pool.limit();
    if limit == 0 && margin != 0 && absurd_reserve(margin, pool.size()) {
        return false;
    }
    // used <= allocated: the exact count only near the limit. Margin 0 is
    // the pool's own limit, exact while the pool is within it; after a
    // limit was lowered below what callers hold, it is checked here too.
    if limit != 0 && (margin != 0 || pool.allocated() > limit) {
        let need = 1 + margin;
        if pool.allocated() + need > limit && pool.used() + need > limit {
            return false;
        }
    }
    let p = pool.alloc();
    if p.is_null() {
        return false;
    }
    if limit == 0 && margin != 0 && top_up(pool, margin) == Reserve::Refused {
        // SAFETY: just taken from this pool. (A tick due is left to the next release.)
        let _ = unsafe { pool.free(p) };
        return false;
    }
    *buf = Buffer { size: BUFSIZE.load(Ordering::Relaxed), area: p.cast(), data: 0, head: 0 };
    true
}

/// `alloc_margin`, refused while a waiter whose margin is at most
/// `margin` is queued (`WaitQueue::fair_busy`): such a waiter is one a
/// release would serve whenever this allocation could succeed, and it came
/// first. A waiter with a larger margin does not hold it back (it is the
/// less critical), as in HAProxy 3's classes.
pub(crate) fn alloc_margin_fair(buf: &mut Buffer, margin: usize) -> bool {
    if buf.size != 0 {
        return !is_garbage(buf, "b_alloc_margin_fair");
    }
    if crate::waitq::global().fair_busy(margin) {
        return false;
    }
    alloc_margin(buf, margin)
}

/// Moves the buffer of `*src` (with its `data` and `head`) into `*dst`,
/// which must hold none, and leaves `*src` `BUF_NULL`. False, nothing
/// changed, when `*dst` holds a buffer, `*src` holds none, `*src` is no
/// buffer of the pool (`is_garbage`) or no pool exists.
pub(crate) fn move_buf(dst: &mut Buffer, src: &mut Buffer) -> bool {
    if dst.size != 0 || src.size == 0 || buffer_pool().is_none() || is_garbage(src, "b_move") {
        return false;
    }
    *dst = Buffer { size: src.size, area: src.area, data: src.data, head: src.head };
    *src = Buffer::NULL;
    true
}

/// The least critical class whose allocations must not fail: responses and
/// permanent buffers (`DB_MUX_TX` and above). `fail=PERCENT` spares them.
const CRITICAL_CLASS: usize = DynbufCrit::DB_MUX_TX as usize;

/// Allocates `*buf` for criticality class `class` (< `CLASSES`): refused
/// while a waiter of the same or a more critical class is queued (unless
/// `noqueue`: a woken waiter claiming its buffer), else `alloc_margin` with
/// the class's reserve tier.
pub(crate) fn alloc_crit(buf: &mut Buffer, class: usize, noqueue: bool) -> bool {
    if buf.size != 0 {
        return !is_garbage(buf, "b_alloc_crit");
    }
    if !noqueue && crate::waitq::global().busy_from(class) {
        return false;
    }
    let _spared = (class >= CRITICAL_CLASS).then(crate::debug::critical);
    alloc_margin(buf, class_margin(class))
}

/// Is `*buf`, whose size is not 0, no buffer of the pool? Every buffer
/// the pool hands out has the pool's buffer size: another size is an
/// uninitialised or overwritten `struct buffer`. A misuse that aborts in
/// the debug modes (`Pool::debugged`) with one line naming `what`; else
/// the caller's documented result (refused, nothing freed). Before `init`
/// nothing can be told (no size to compare with): false.
fn is_garbage(buf: &Buffer, what: &str) -> bool {
    let Some(pool) = buffer_pool() else { return false };
    let size = BUFSIZE.load(Ordering::Relaxed);
    if buf.size == size {
        return false;
    }
    if pool.debugged() {
        crate::debug::die(format!(
            "{what} of uninitialised buffer {:p} to pool '{}' (its size {} is not the buffer size {size}; area {:p})",
            buf as *const Buffer,
            pool.name(),
            buf.size,
            buf.area
        ));
    }
    true
}

/// Gives `*buf` back to the pool and leaves it `BUF_NULL`. True when this
/// thread's maintenance tick is due (see `Pool::free`).
#[must_use]
pub(crate) fn free(buf: &mut Buffer) -> bool {
    release(buf, "b_free").1
}

/// `free`, for the call named `what`: (was a buffer given back, is this
/// thread's maintenance tick due).
pub(crate) fn release(buf: &mut Buffer, what: &str) -> (bool, bool) {
    let mut done = (false, false);
    if buf.size != 0 && !buf.area.is_null() && !is_garbage(buf, what) {
        if let Some(pool) = buffer_pool() {
            // SAFETY: an allocated buffer's area came from the buffer pool
            // (C contract) and the caller gives it up.
            done = (true, unsafe { pool.free(buf.area.cast()) });
        }
    }
    *buf = Buffer::NULL;
    done
}

/// The margin of a class: the least critical keeps the whole reserve, the
/// most critical none, linear in between (rounded up).
pub(crate) fn class_margin(class: usize) -> usize {
    let top = CLASSES - 1;
    (reserved() * (top - class.min(top))).div_ceil(top)
}

/// Buffers that can be had now: with a limit `L`, `L - used` (negative
/// while callers hold more than a lowered limit); without one, more than
/// any queue holds. 0 before `init`. Exact at quiescence (`Pool::used`).
pub(crate) fn avail() -> isize {
    let Some(pool) = buffer_pool() else { return 0 };
    match pool.limit() {
        0 => isize::MAX / 4,
        l => l as isize - pool.used() as isize,
    }
}

/// Allocations of margin `margin` that could succeed one after the other
/// now: `L - used - margin`, at least 0; without a limit `isize::MAX`.
pub(crate) fn available(margin: usize) -> isize {
    let Some(pool) = buffer_pool() else { return 0 };
    if pool.limit() == 0 {
        return isize::MAX;
    }
    avail().saturating_sub(margin.min(isize::MAX as usize) as isize).max(0)
}

/// Buffers that can be had now, minus half the reserve: the budget of an
/// offer. Without a limit every waiter can have one.
pub(crate) fn offer_budget() -> isize {
    match buffer_pool() {
        Some(pool) if pool.limit() != 0 => avail() - (reserved() / 2) as isize,
        _ => avail(), // 0 before `init`, isize::MAX / 4 without a limit
    }
}

#[cfg(not(loom))]
static FORK_HELD: crate::sync::ForkSlot<std::sync::MutexGuard<'static, ()>> = crate::sync::ForkSlot::new();

/// Before `fork()`: takes `init`'s lock (first of all the library's locks:
/// `init` creates a pool under it).
#[cfg(not(loom))]
pub(crate) fn fork_prepare() {
    FORK_HELD.put(INIT.lock().unwrap_or_else(|e| e.into_inner()));
}

/// After `fork()`, parent or child.
#[cfg(not(loom))]
pub(crate) fn fork_release() {
    drop(FORK_HELD.take());
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// In `no-global` and `uaf` modes a released buffer goes to the OS: the
    /// reserve cannot be held, and must not be counted as held.
    #[test]
    fn a_reserve_is_not_counted_from_buffers_sent_to_the_os() {
        let _g = crate::test_support::serial();
        for mode in ["no-global", "uaf"] {
            crate::debug::apply(mode).unwrap();
            let p = registry::create_private(b"r", 4096, MEM_F_SHARED | MEM_F_EXACT);
            crate::debug::apply(if mode == "uaf" { "no-uaf" } else { "global" }).unwrap();
            // SAFETY: created above, destroyed below.
            let pool = unsafe { &*p };
            assert_eq!(top_up(pool, 4), Reserve::Unkeepable, "{mode}");
            assert_eq!(pool.allocated(), 0, "{mode}: nothing idle, nothing kept");
            assert!(registry::destroy(p, |_| {}).is_null());
        }
        let p = registry::create_private(b"r", 4096, MEM_F_SHARED | MEM_F_EXACT);
        // SAFETY: created above, destroyed below.
        let pool = unsafe { &*p };
        assert_eq!(top_up(pool, 4), Reserve::Held);
        assert_eq!((pool.allocated(), pool.used()), (4, 0), "four idle buffers");
        pool.set_minavail(0);
        pool.flush();
        assert!(registry::destroy(p, |_| {}).is_null());
    }

    #[test]
    fn absurd_reserves_are_refused() {
        assert!(absurd_reserve(u32::MAX as usize - 1, 65536));
        assert!(absurd_reserve(usize::MAX, 2));
        assert!(!absurd_reserve(2, 65536));
        assert!(max_reserve_bytes() > 1 << 20);
    }

    #[test]
    fn class_margins_are_tiers() {
        RESERVED.store(2, Ordering::Relaxed);
        let m: Vec<usize> = (0..CLASSES).map(class_margin).collect();
        assert_eq!(m, vec![2, 2, 1, 1, 0]);
        RESERVED.store(8, Ordering::Relaxed);
        let m: Vec<usize> = (0..CLASSES).map(class_margin).collect();
        assert_eq!(m, vec![8, 6, 4, 2, 0]);
        RESERVED.store(0, Ordering::Relaxed);
    }
}
