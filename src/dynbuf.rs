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

use crate::ffi::{MEM_F_EXACT, MEM_F_SHARED};
use crate::pool::{self, Pool, MAX_SIZE};
use crate::waitq::CLASSES;
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
    // SAFETY: a non-null POOL is a pool created by `init`. The library never
    // destroys it; C must not either, and calls no buffer function after
    // `pool_destroy_all` (documented at `pool_head_buffer`).
    unsafe { POOL.load(Ordering::Acquire).as_ref() }
}

pub(crate) fn reserved() -> usize {
    RESERVED.load(Ordering::Relaxed)
}

/// Creates (or retunes) the buffer pool. Returns the pool, or an error code.
pub(crate) fn init(bufsize: usize, reserved: usize, limit: usize) -> Result<*mut Pool, i32> {
    if bufsize == 0 || bufsize > MAX_SIZE as usize || (limit != 0 && limit <= reserved) {
        return Err(-1);
    }
    let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = POOL.load(Ordering::Acquire);
    if p.is_null() {
        p = pool::create(b"buffer", bufsize as u32, 0, MEM_F_SHARED | MEM_F_EXACT);
        if p.is_null() {
            return Err(-2);
        }
    }
    // SAFETY: created above or by an earlier init, never destroyed while in use.
    let pool = unsafe { &*p };
    if pool.size != bufsize {
        return Err(-1);
    }
    let minavail = reserved.max(3);
    pool.set_limit(limit);
    pool.set_minavail(minavail);
    BUFSIZE.store(bufsize, Ordering::Relaxed);
    RESERVED.store(reserved, Ordering::Relaxed);
    POOL.store(p, Ordering::Release);
    // The reserve, and one more, exist from the start (at most the limit).
    let keep = if limit == 0 { minavail } else { minavail.min(limit) };
    // The reserve is what keeps responses flowing: `fail=PERCENT` spares it.
    let _spared = crate::debug::critical();
    if !top_up(pool, keep) {
        return Err(-2);
    }
    Ok(p)
}

/// Makes at least `keep` buffers idle in the pool, taking new ones from the
/// OS. False when the OS refuses. Idle buffers in the shared cache alone are
/// a lower bound of all idle ones: the exact count, which visits every
/// thread cache under its lock, is taken only when that bound falls short,
/// and once. At most `keep` buffers are taken (at the limit an idle one can
/// come back instead of a new one).
fn top_up(pool: &Pool, keep: usize) -> bool {
    if pool.shared_idle() >= keep {
        return true;
    }
    let mut idle = pool.allocated().saturating_sub(pool.used());
    while idle < keep {
        let p = pool.alloc_nocache();
        if p.is_null() {
            return false;
        }
        // SAFETY: just taken from this pool; we give it back idle, kept
        // even when the pool is crowded (a plain free could send it to the OS).
        unsafe { pool.release_or_keep(p.cast(), true) };
        idle += 1;
    }
    true
}

/// Allocates `*buf` if it may leave `margin` buffers to be had after it.
/// True with `*buf` allocated (or already allocated), false with `*buf`
/// untouched.
pub(crate) fn alloc_margin(buf: &mut Buffer, margin: usize) -> bool {
    if buf.size != 0 {
        return true;
    }
    let Some(pool) = buffer_pool() else { return false };
    let limit = pool.limit();
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
    if limit == 0 && margin != 0 && !top_up(pool, margin) {
        // SAFETY: just taken from this pool.
        unsafe { pool.free(p) };
        return false;
    }
    *buf = Buffer { size: BUFSIZE.load(Ordering::Relaxed), area: p.cast(), data: 0, head: 0 };
    true
}

/// The least critical class whose allocations must not fail: responses and
/// permanent buffers (`DB_MUX_TX` and above). `fail=PERCENT` spares them.
const CRITICAL_CLASS: usize = crate::ffi::DynbufCrit::DB_MUX_TX as usize;

/// Allocates `*buf` for criticality class `class` (< `CLASSES`): refused
/// while a waiter of the same or a more critical class is queued (unless
/// `noqueue`: a woken waiter claiming its buffer), else `alloc_margin` with
/// the class's reserve tier.
pub(crate) fn alloc_crit(buf: &mut Buffer, class: usize, noqueue: bool) -> bool {
    if buf.size != 0 {
        return true;
    }
    if !noqueue && crate::waitq::global().busy_from(class) {
        return false;
    }
    let _spared = (class >= CRITICAL_CLASS).then(crate::debug::critical);
    alloc_margin(buf, class_margin(class))
}

/// Gives `*buf` back to the pool and leaves it `BUF_NULL`.
pub(crate) fn free(buf: &mut Buffer) {
    if buf.size != 0 && !buf.area.is_null() {
        if let Some(pool) = buffer_pool() {
            // SAFETY: an allocated buffer's area came from the buffer pool
            // (C contract) and the caller gives it up.
            unsafe { pool.free(buf.area.cast()) };
        }
    }
    *buf = Buffer::NULL;
}

/// The margin of a class: the least critical keeps the whole reserve, the
/// most critical none, linear in between (rounded up).
pub(crate) fn class_margin(class: usize) -> usize {
    let top = CLASSES - 1;
    (reserved() * (top - class.min(top))).div_ceil(top)
}

/// Buffers that can be had now, minus half the reserve: the budget of an
/// offer. Without a limit every waiter can have one.
pub(crate) fn offer_budget() -> isize {
    let Some(pool) = buffer_pool() else { return 0 };
    let half = (reserved() / 2) as isize;
    match pool.limit() {
        0 => isize::MAX / 4,
        l => l as isize - pool.used() as isize - half,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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
