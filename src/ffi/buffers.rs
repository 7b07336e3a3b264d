//! The buffer and wait-queue functions of the C face (the buffer part of the C contract).

use crate::dynbuf::{self, Buffer};
use crate::flags::{DynbufCrit, DB_F_NOQUEUE};
use crate::pool::Pool;
use crate::waitq::{self, BufferWait, Queued, CLASSES};
use core::ffi::{c_int, c_long, c_uint, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The buffer pool, set by `dynbuf_init` (NULL before). Read it, never
/// write it; it may be passed to the `pool_*` functions (`pool_used`,
/// `pool_set_limit`...). It is the library's own pool: no `create_pool`
/// ever merges with it. `pool_destroy_all()`, or `pool_destroy()` of it,
/// ends it when no buffer is held: `pool_head_buffer` is then NULL again,
/// the buffer functions behave as before `dynbuf_init`, and `dynbuf_init`
/// may be called again (with any `bufsize`). Make no buffer call on another
/// thread while that destroy runs.
#[no_mangle]
pub static mut pool_head_buffer: *mut Pool = null_mut();

/// Told by the pool registry that the pool at `freed` was freed: when it
/// was the buffer pool, the buffer functions and `pool_head_buffer` go back
/// to their state before `dynbuf_init`.
pub(crate) fn forget_buffer_pool(freed: *const Pool) {
    if dynbuf::forget(freed) {
        // SAFETY: the address of our own static, aligned for a pointer;
        // written only here and in `dynbuf_init`, never read non-atomically by Rust.
        let head = unsafe { AtomicPtr::from_ptr(core::ptr::addr_of_mut!(pool_head_buffer)) };
        // Release: pairs with C readers that load it after the destroy returned.
        head.store(null_mut(), Ordering::Release);
    }
}

/// Creates the process-wide buffer pool ("buffer", `MEM_F_SHARED |
/// MEM_F_EXACT`, objects of `bufsize` bytes) and sets `pool_head_buffer`.
/// `reserved_bufs` buffers are the reserve: margin allocations leave them to
/// the more critical ones. The pool keeps `max(reserved_bufs, 3)` idle
/// buffers (its minavail), allocated at once. `limit` caps the buffers,
/// held and idle (0: unlimited). Call it before other threads use buffers;
/// calling it again with the same `bufsize` retunes the reserve and the
/// limit (a limit lowered below the buffers allocated takes effect as they
/// come back: released buffers above it go to the OS). Returns 0, -1 on bad
/// input (`bufsize` 0 or above 2 GiB, `limit` not above `reserved_bufs`,
/// another `bufsize` than the first call, or an absurd reserve:
/// `max(reserved_bufs, 3) * bufsize` above half of the physical memory, or
/// of `RLIMIT_AS` when that is lower; nothing changes), or -2 when the idle reserve could not be made: memory is
/// short, or, on a retune, callers already hold so many buffers that the
/// new limit leaves no room for it. With -2 the pool and the new reserve
/// and limit are in place all the same; the reserve fills as buffers come
/// back.
#[no_mangle]
pub extern "C" fn dynbuf_init(bufsize: usize, reserved_bufs: c_uint, limit: c_uint) -> c_int {
    crate::fork::ensure_registered();
    crate::maintain::init_from_env();
    dynbuf::init(bufsize, reserved_bufs as usize, limit as usize, |p| {
        // SAFETY: the address of our own static, aligned for a pointer.
        // It is written here under `init`'s lock and only when it changes,
        // and in `forget_buffer_pool`: Rust never reads it non-atomically.
        let head = unsafe { AtomicPtr::from_ptr(core::ptr::addr_of_mut!(pool_head_buffer)) };
        // Release: C threads started after this see the pool built.
        if head.load(Ordering::Relaxed) != p {
            head.store(p, Ordering::Release);
        }
    })
}

/// Converts a waiter pointer from C; None for NULL.
fn waiter(bw: *mut BufferWait) -> Option<*mut BufferWait> {
    (!bw.is_null()).then_some(bw)
}

/// Converts a buffer pointer from C.
fn buf_mut<'a>(buf: *mut Buffer) -> Option<&'a mut Buffer> {
    // SAFETY: a non-null `buf` is a valid `struct buffer` the caller lets us
    // write for the duration of the call (C contract).
    unsafe { buf.as_mut() }
}

/// `buf` when `alloc` allocated it with `margin` (a negative one counts as
/// 0), else NULL (NULL `buf` too): the C face of both margin allocations.
fn alloc_by(buf: *mut Buffer, margin: c_int, alloc: fn(&mut Buffer, usize) -> bool) -> *mut Buffer {
    match buf_mut(buf).map(|b| alloc(b, margin.max(0) as usize)) {
        Some(true) => buf,
        _ => null_mut(),
    }
}

/// Allocates `*buf` if, after it, `margin` more buffers can still be had
/// (with a limit `L`: `used + 1 + margin <= L`; without a limit the reserve
/// is kept really allocated, taken from the OS if needed). When `buf->size`
/// is not 0 the buffer is already allocated: returns `buf` untouched. On
/// success `*buf` is `{bufsize, area, 0, 0}` and `buf` is returned; on
/// failure NULL is returned and `*buf` is left as it was. A negative margin
/// counts as 0. NULL `buf`, or no `dynbuf_init` yet: NULL. It ignores the
/// wait queue (see `b_alloc_crit`). Racing allocations on other threads are
/// checked against the margin each on its own. Without a limit, a margin
/// whose buffers would exceed half of the memory the process can have (as
/// for `dynbuf_init`'s reserve) is refused at once: NULL. In the `uaf` and
/// `no-global` debug modes no idle buffer can be kept, so a margin without
/// a limit reserves nothing (buffers come from the OS when asked for).
///
/// An uninitialised `struct buffer`: set it to `BUF_NULL` first. One whose
/// `size` is neither 0 nor the buffer size (after `dynbuf_init`) is no
/// buffer of the pool: NULL, `*buf` untouched (the buffer functions never
/// take it for allocated); under an object debug mode (the buffer pool was
/// created under one, or one is on now) it aborts with `bufpool: b_alloc of
/// uninitialised buffer <ptr> to pool 'buffer' (...)`. Garbage whose size
/// happens to be the buffer size is not caught here (see `b_free`).
#[no_mangle]
pub extern "C" fn b_alloc_margin(buf: *mut Buffer, margin: c_int) -> *mut Buffer {
    alloc_by(buf, margin, dynbuf::alloc_margin)
}

/// `b_alloc_margin(buf, 0)`: fails only when callers really hold `limit`
/// buffers (idle ones in any thread's cache are handed out), or when the OS
/// has no memory.
#[no_mangle]
pub extern "C" fn b_alloc(buf: *mut Buffer) -> *mut Buffer {
    b_alloc_margin(buf, 0)
}

/// Gives `*buf` back to the buffer pool and sets it to `BUF_NULL`. A buffer
/// that is not allocated (size 0), or NULL `buf`, is a no-op. It offers
/// nothing: call `offer_buffers` after it to wake waiters. A `struct
/// buffer` whose `size` is not the buffer size (uninitialised, or
/// overwritten) is not freed, and is set to `BUF_NULL`; under an object
/// debug mode it aborts with `bufpool: b_free of uninitialised buffer
/// <ptr> to pool 'buffer' (...)`. An `area` that is not a buffer of the
/// pool with the right size (garbage, `malloc`, another pool's object, a
/// buffer freed before) is undefined without a debug mode; `tag` and `uaf`
/// (a buffer pool created under them) abort on it (`foreign free`,
/// `wrong-pool free`, `double free`) before reading a byte through it.
#[no_mangle]
pub extern "C" fn b_free(buf: *mut Buffer) {
    if let Some(b) = buf_mut(buf) {
        if dynbuf::free(b) {
            crate::maintain::tick();
        }
    }
}

/// `b_free(buf)`, then `offer_buffers_margin(NULL)`: gives the buffer back
/// and wakes every queued waiter that can now succeed. With it as the only
/// way buffers go back, a waiter never needs a retry timer: each release
/// calls, in the order of `offer_buffers` (most critical class first, FIFO
/// within a class), each waiter whose margin fits what the pool can give.
/// The callbacks run on the calling thread, inside this call, with no lock
/// of the library held: do not call it while holding a lock your callbacks
/// take. Nothing allocated (`buf->size == 0`), NULL `buf`, or a `struct
/// buffer` that is no buffer of the pool (see `b_free`): nothing is released
/// and nothing offered. `b_free` stays as the contract has it (it offers
/// nothing), and so does `pool_free(pool_head_buffer, area)`, a fast path
/// that wakes nobody: after either, call `offer_buffers_margin`.
#[no_mangle]
pub extern "C" fn b_release(buf: *mut Buffer) {
    let Some(b) = buf_mut(buf) else { return };
    let (freed, tick) = dynbuf::release(b, "b_release");
    if freed {
        waitq::global().offer_fit(null_mut(), dynbuf::avail);
    }
    if tick {
        crate::maintain::tick();
    }
}

/// `b_alloc_margin(buf, margin)` that waits its turn: refused (NULL, `*buf`
/// untouched) while a waiter queued with a margin at most `margin` is in
/// the wait queue, in any class, its callback running or not. Such a waiter
/// came first and can succeed whenever this call could, so a session with
/// fresh bytes no longer takes the buffer a release is about to give it. A
/// waiter queued with a larger margin (a less critical one: a request
/// waiter, say, when this is a response with margin 0) does not hold it
/// back, as HAProxy 3 lets a more critical class ahead. The margin of a
/// waiter is the one given to `b_queue_margin`; `b_queue_crit` and
/// `b_queue` give the class's reserve tier (the margin `b_alloc_crit` uses).
/// Margins from 63 up count as equal. The queue is read without a lock: a
/// queueing or a dequeue on another thread is seen with a small lag.
///
/// The name: "fair" as a fair lock is, one that lets no newcomer barge past
/// its waiters; "queued" would read as if the call queued the caller, which
/// it does not. The caller that is itself queued must not use it to claim
/// (it would wait for itself): a callback, or the caller told by
/// `b_queue_margin` that it may claim, uses `b_alloc_margin`.
///
/// `buf->size != 0`: `buf`, untouched (a size that is not the buffer size:
/// NULL, or an abort under a debug mode, as `b_alloc_margin`); NULL `buf`,
/// or no `dynbuf_init` yet: NULL; a negative margin counts as 0.
#[no_mangle]
pub extern "C" fn b_alloc_margin_fair(buf: *mut Buffer, margin: c_int) -> *mut Buffer {
    alloc_by(buf, margin, dynbuf::alloc_margin_fair)
}

/// Moves the buffer held by `*src` into `*dst` (`size`, `area`, `data` and
/// `head`, bytes and all; no byte is copied) and sets `*src` to
/// `BUF_NULL`: the way to hand a buffer to another thread's owner (a
/// buffer a wakeup callback took for a session of another thread, say)
/// without rebuilding a `struct buffer` from a pointer and the buffer size.
/// Returns `dst`, or NULL with nothing changed when `*dst` already holds a
/// buffer (`dst->size != 0`: release one of them first), when `*src` holds
/// none, when either is NULL, before `dynbuf_init`, or when `*src` is no
/// buffer of the pool (its size is not the buffer size; an abort under an
/// object debug mode, as `b_free`).
///
/// Threads: a buffer belongs to no thread. It may be released (`b_free`,
/// `b_release`) by any thread, and its memory goes to the cache of the
/// thread that releases it, not to the one that allocated it; moving it
/// touches no cache and no counter (it stays counted as used). `b_move`
/// itself makes no memory ordering: publish `*dst` to the other thread as
/// you publish the rest of your hand-over (under the mutex that guards it,
/// or by a release store / acquire load), and let only one thread touch a
/// `struct buffer` at a time.
#[no_mangle]
pub extern "C" fn b_move(dst: *mut Buffer, src: *mut Buffer) -> *mut Buffer {
    if dst == src {
        return null_mut(); // one buffer cannot move into itself (and `&mut` twice would alias)
    }
    match (buf_mut(dst), buf_mut(src)) {
        (Some(d), Some(s)) => {
            if dynbuf::move_buf(d, s) {
                dst
            } else {
                null_mut()
            }
        }
        _ => null_mut(),
    }
}

/// Allocates `*buf` for class `crit` (an `enum dynbuf_crit`, optionally
/// OR-ed with `DB_F_NOQUEUE`). Refused (NULL) while a waiter of the same or
/// a more critical class is queued, unless `DB_F_NOQUEUE` is given, so that
/// a newcomer never takes the buffer of a woken waiter; otherwise as
/// `b_alloc_margin` with the class's reserve tier as margin. The queue test
/// sees other threads' queueing with a small lag. The two most critical
/// classes (`DB_MUX_TX`, `DB_PERMANENT`) are spared by the `fail=PERCENT`
/// debug mode. An unknown class or flag, or NULL `buf`: NULL.
/// `buf->size != 0`: `buf`, untouched; a size that is not the buffer size:
/// NULL, or an abort under a debug mode, as `b_alloc_margin`.
#[no_mangle]
pub extern "C" fn b_alloc_crit(buf: *mut Buffer, crit: c_uint) -> *mut Buffer {
    let class = (crit & !DB_F_NOQUEUE) as usize;
    let Some(b) = buf_mut(buf) else { return null_mut() };
    if class >= CLASSES {
        return null_mut();
    }
    if dynbuf::alloc_crit(b, class, crit & DB_F_NOQUEUE != 0) {
        buf
    } else {
        null_mut()
    }
}

/// Sets up a waiter: not queued, woken by `wakeup_cb(target)`. A zeroed
/// `struct buffer_wait` (static, calloc) is a valid unqueued waiter too.
/// Must not be called on a queued waiter. NULL `bw`: no-op.
#[no_mangle]
pub extern "C" fn buffer_wait_init(
    bw: *mut BufferWait,
    target: *mut c_void,
    wakeup_cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
) {
    if let Some(bw) = waiter(bw) {
        // SAFETY: a non-null `bw` is writable and not queued (C contract).
        unsafe { waitq::init(bw, target, wakeup_cb) }
    }
}

/// Appends `bw` to the wait queue of class `crit` (0 to `DB_PERMANENT`).
/// Returns 1 once queued; an already queued waiter stays in its place and
/// class (idempotent). While its callback runs (on any thread) the waiter is
/// still queued; queueing it then counts as a new queueing: if the callback
/// returns non-zero, the waiter goes to the tail of its class instead of
/// leaving, so that no wake-up is lost. Returns 0 for NULL `bw`, a NULL
/// `wakeup_cb` or an unknown class. To miss no wake-up while another thread
/// frees buffers, retry the allocation after queueing (with `DB_F_NOQUEUE`
/// for `b_alloc_crit`) and `b_dequeue` on success. `b_dequeue` it before
/// freeing it. A waiter never set up (neither `buffer_wait_init` nor zeroed)
/// whose private part says "queued" without the queue's check word is taken
/// as not queued (and out of the queue if it is in it), then queued; under
/// an object debug mode it aborts (`bufpool: b_queue of stale waiter ...`).
/// `b_dequeue` and `b_is_queued` do the same check. The waiter's margin,
/// for `b_alloc_margin_fair` and the offers by margin, is the class's
/// reserve tier (the margin `b_alloc_crit` uses), taken when it is queued
/// (an already queued waiter keeps its own).
#[no_mangle]
pub extern "C" fn b_queue_crit(crit: c_uint, bw: *mut BufferWait) -> c_int {
    crate::fork::ensure_registered();
    match waiter(bw) {
        // SAFETY: a non-null `bw` is an initialised (or zeroed) waiter that
        // its owner dequeues before freeing (C contract).
        Some(bw) if (crit as usize) < CLASSES => unsafe {
            waitq::global().queue(crit as usize, bw, dynbuf::class_margin(crit as usize)) as c_int
        },
        _ => 0,
    }
}

/// Appends `bw` to the wait queue of class `crit` (0 to `DB_PERMANENT`,
/// which sets the order in which offers call waiters), saying that its
/// callback will claim a buffer with `margin` (a negative margin counts as
/// 0). Offers by margin (`b_release`, `offer_buffers_margin`) call it only
/// when that margin fits, and `b_alloc_margin_fair` callers with a margin
/// at least this one wait behind it. Returns 0 (not queued) for NULL `bw`,
/// a NULL `wakeup_cb` or an unknown class; 1 once queued; 2 once queued
/// when a buffer for `margin` can be had now and no other queued waiter has
/// a margin at most `margin`: the caller may claim it at once with
/// `b_alloc_margin(buf, margin)` and `b_dequeue(bw)` on success (if the
/// claim fails, someone else took the buffer, and the waiter stays queued
/// for the release that brings it back). This answer replaces the retry
/// after queueing: it is computed under the queue's lock after the waiter
/// is in, so a release made between the caller's failed allocation and the
/// queueing is never missed. An already queued waiter keeps its place and
/// class and takes the new margin; otherwise as `b_queue_crit`. Costs one
/// look at every thread's cache when 2 is possible (as `pool_used`).
#[no_mangle]
pub extern "C" fn b_queue_margin(crit: c_uint, bw: *mut BufferWait, margin: c_int) -> c_int {
    crate::fork::ensure_registered();
    let Some(bw) = waiter(bw) else { return 0 };
    if crit as usize >= CLASSES {
        return 0;
    }
    // SAFETY: a non-null `bw` is an initialised (or zeroed) waiter that its
    // owner dequeues before freeing (C contract).
    match unsafe { waitq::global().queue_fit(crit as usize, bw, margin.max(0) as usize, true, Some(dynbuf::avail)) } {
        Queued::Refused => 0,
        Queued::Queued => 1,
        Queued::Claim => 2,
    }
}

/// `b_queue_crit(DB_CHANNEL, bw)`.
#[no_mangle]
pub extern "C" fn b_queue(bw: *mut BufferWait) -> c_int {
    b_queue_crit(DynbufCrit::DB_CHANNEL as c_uint, bw)
}

/// Takes `bw` out of the wait queue (not queued: no-op). If its callback is
/// running on another thread, waits for it to return, even if that callback
/// dequeued (or dequeued and queued) itself meanwhile. Once it returns, no
/// callback for `bw` runs or is running, and the library never touches
/// `bw` again: it may be freed. Called from inside `bw`'s own callback (or
/// anything that callback calls), it does not wait. A callback never runs
/// twice at once: an offer skips a waiter whose callback is running. Do not dequeue, from a
/// callback, a waiter whose callback may be running on another thread that
/// dequeues yours: each would wait for the other. NULL: no-op.
#[no_mangle]
pub extern "C" fn b_dequeue(bw: *mut BufferWait) {
    if let Some(bw) = waiter(bw) {
        // SAFETY: a non-null `bw` is an initialised (or zeroed) waiter (C contract).
        unsafe { waitq::global().dequeue(bw) }
    }
}

/// 1 if `bw` is queued (its callback running or not), else 0 (NULL too).
#[no_mangle]
pub extern "C" fn b_is_queued(bw: *const BufferWait) -> c_int {
    match waiter(bw.cast_mut()) {
        // SAFETY: a non-null `bw` is an initialised (or zeroed) waiter (C contract).
        Some(bw) => unsafe { waitq::global().is_queued(bw) as c_int },
        None => 0,
    }
}

/// Wakes waiters, most critical class first and FIFO within a class, while
/// the buffers that can be had (with a limit `L`: `L - used`; without a
/// limit: unbounded) minus `reserved_bufs / 2`, minus one per waiter woken
/// so far, exceed `threshold`. Each `wakeup_cb(target)` runs on the calling
/// thread with no lock of the library held: it may allocate, queue, dequeue
/// and offer. Non-zero: the waiter leaves the queue and uses one buffer of
/// the budget; zero: it stays queued in its place. A waiter whose `target`
/// is `from` (when `from` is not NULL) is skipped and stays queued, and so
/// is a waiter whose callback another thread is running. Every waiter is
/// visited at most once per call, but one: a waiter whose callback answered
/// 0 while another offer passed it over (it was running) is called once
/// more if its margin (see `b_queue_margin`) fits what can be had then, so
/// that the other offer's buffers are not lost on it. A call made from
/// inside a callback continues the call that runs that callback: neither
/// calls again a waiter the other called (each keeps its own budget and
/// `from`). It knows nothing of the waiters' margins otherwise: to wake
/// every waiter that can succeed, and only those, use
/// `offer_buffers_margin` (or release with `b_release`).
///
/// A queued waiter whose memory was reused before `b_dequeue` (a waiter on
/// the stack whose function returned, a freed one, one overwritten) is
/// undefined, but is caught when its private part changed: each queued
/// waiter carries a word derived from its address, set by the queueing and
/// cleared by the dequeue, checked before its links or callback are used.
/// Such a waiter is dropped from the queue without being called (nor
/// written to), the others are woken as usual; under an object debug mode
/// (the buffer pool was created under one, or one is on now) it aborts with
/// `bufpool: offer_buffers of stale waiter <ptr> to pool 'buffer' (...)`.
/// With two broken waiters in one class, the waiters queued between them
/// cannot be reached: they are never woken again (their `b_dequeue` is
/// still safe). Not caught: reused memory that still holds the waiter's
/// bytes (its callback then runs with its old target).
#[no_mangle]
pub extern "C" fn offer_buffers(from: *mut c_void, threshold: c_uint) {
    waitq::global().offer(from, threshold as isize, dynbuf::offer_budget, dynbuf::avail);
}

/// Wakes every queued waiter that can succeed now, by its own margin (the
/// one given to `b_queue_margin`, or the class's reserve tier for
/// `b_queue_crit` and `b_queue`): most critical class first, FIFO within a
/// class, each waiter whose margin `m` fits what is left
/// (`b_available(m) >= 1`, less one per waiter woken so far in this call)
/// is called; one that does not fit is passed over and the walk goes on.
/// Without a limit
/// every waiter is called. A waiter whose `target` is `from` (when not
/// NULL) is skipped. Callbacks run as for `offer_buffers`. A waiter whose
/// callback is running on another thread is passed over, keeping one
/// buffer for it when its margin fits (its callback is about to claim it),
/// and if that callback then returns 0 the offer that ran it looks again
/// and calls it once more if its margin fits: a release is never lost on a
/// waiter that was busy saying no. Offers running at once on several
/// threads each count what can be had, so a callback may still find its
/// buffer taken: it answers 0 and keeps its place. `b_release` calls it;
/// call it yourself after `b_free` or `pool_free` of a buffer, or after
/// `dynbuf_init` raised the limit. No threshold: every waiter that can
/// succeed is called.
#[no_mangle]
pub extern "C" fn offer_buffers_margin(from: *mut c_void) {
    waitq::global().offer_fit(from, dynbuf::avail);
}

/// How many allocations with margin `margin` could succeed one after the
/// other now: with a limit `L`, `L - used - margin` (at least 0), that is
/// `b_alloc_margin(buf, margin)` succeeds now if and only if this is at
/// least 1; without a limit, `LONG_MAX`; before `dynbuf_init`, 0. A
/// negative margin counts as 0. What `offer_buffers` budgets is
/// `b_available(reserved_bufs / 2)`: it wakes while that, less the waiters
/// woken, exceeds its threshold; so a caller that offers to waiters of
/// margin `m` with `offer_buffers` wakes one exactly when
/// `b_available(m) >= 1` by passing the threshold `m - reserved_bufs / 2`
/// (0 when negative) plus what it wants kept back, instead of copying the formula
/// (offers by margin, `b_release` and `offer_buffers_margin`, need no
/// threshold at all). Exact when no call is in flight; it looks at every
/// thread's cache (as `pool_used`), so it is for decisions and reports, not
/// for every event of a hot loop.
#[no_mangle]
pub extern "C" fn b_available(margin: c_int) -> c_long {
    dynbuf::available(margin.max(0) as usize).min(c_long::MAX as isize) as c_long
}
