//! The pool functions of the C face (the pool part of the C contract).

use crate::pool::Pool;
use crate::{registry, report};
use core::ffi::{c_char, c_int, c_uint, c_ulong, c_ulonglong, c_void, CStr};
use std::ptr::null_mut;

/// Converts a pool handle from C; None for NULL. The fast paths of
/// `pool_alloc` and `pool_free` take it as it is: a destroyed pool's head
/// is a tombstone whose fast path always misses, and its slow path refuses.
#[inline(always)]
fn pool_ref<'a>(p: *const Pool) -> Option<&'a Pool> {
    // SAFETY: a non-null handle is one create_pool returned (C contract).
    // Heads are never freed (`crate::registry`): a destroyed pool's is a
    // valid tombstone, so a stale handle reads valid memory.
    unsafe { p.as_ref() }
}

/// `pool_ref` for the calls off the fast path: None for NULL and for a
/// destroyed pool's handle, which a debug mode reports (`Pool::stale`).
#[inline]
fn live_ref<'a>(p: *const Pool, what: &str) -> Option<&'a Pool> {
    let pool = pool_ref(p)?;
    if pool.is_live() {
        Some(pool)
    } else {
        pool.stale(what);
        None
    }
}

/// Creates a pool of objects of `size` bytes named `name` (copied, at most
/// 31 bytes kept; NULL gives an empty name). `flags` is a combination of
/// `MEM_F_*` and at most one `POOL_F_SHARED_*`, plus `POOL_F_NO_LOCAL_CACHE`.
/// With `MEM_F_SHARED`, an existing pool of the same rounded size, alignment
/// and flags is returned instead (it counts one more user).
/// Returns NULL when `size` is 0 or above 2 GiB, when flags are unknown or
/// name two algorithms, or when memory is short (no function of the library
/// aborts for lack of memory: each returns its documented failure; a thread
/// that cannot get memory for its cache works without one).
#[no_mangle]
pub extern "C" fn create_pool(name: *const c_char, size: c_uint, flags: c_uint) -> *mut Pool {
    create_aligned_pool(name, size, 0, flags)
}

/// Like `create_pool`, with every object aligned on `align` bytes: a power
/// of two up to 1 MiB, or 0 for malloc's own alignment (16 bytes). Returns
/// NULL for any other `align`.
#[no_mangle]
pub extern "C" fn create_aligned_pool(name: *const c_char, size: c_uint, align: c_uint, flags: c_uint) -> *mut Pool {
    let name = if name.is_null() {
        &[][..]
    } else {
        // SAFETY: a non-null name is a NUL-terminated string (C contract).
        unsafe { CStr::from_ptr(name) }.to_bytes()
    };
    crate::fork::ensure_registered();
    crate::maintain::init_from_env();
    registry::create(name, size, align, flags)
}

/// Destroys a pool. Returns NULL once done: the pool is freed, or, for a
/// merged pool, one user fewer remains. Returns `pool` itself, untouched,
/// while it is in use: callers hold objects of it, or a call on it is in
/// flight on another thread (a thread stopped inside `pool_alloc(pool)`
/// counts). Other threads may meanwhile call anything on other pools, and
/// the calls that act on every pool (`pool_gc`, `pool_set_cache_size`,
/// `pool_set_release_period`, `pool_maintain`, the dump, the totals). Any
/// call with this pool's handle racing its destruction (an allocation,
/// `pool_flush`, `pool_set_limit`, `pool_used`...), or any use of the
/// handle after NULL was returned, is the caller's bug, as a `free()`
/// racing the use of the memory is. Idle objects
/// of the pool in other threads' caches are freed with it, even when those
/// threads are stopped inside a call on another pool. NULL, or a pointer
/// that is not a live pool, is ignored and gives NULL (nothing is read
/// through it). A destroyed pool's handle too: under an object debug mode
/// (the pool had one, or one is on now) that aborts with `bufpool:
/// pool_destroy of destroyed pool <ptr> to pool '<name>' (...)`.
/// NULL does not tell "freed" from "one user fewer" for a merged pool: use
/// `pool_destroy_ex` to know which.
#[no_mangle]
pub extern "C" fn pool_destroy(pool: *mut Pool) -> *mut c_void {
    if pool.is_null() {
        return null_mut();
    }
    registry::destroy(pool, super::buffers::forget_buffer_pool).cast()
}

/// `pool_destroy`, telling its outcomes apart: returns 0 when the pool was
/// freed (its handle is now stale), the number of users left (1 or more)
/// when a merged pool (`MEM_F_SHARED`) only lost one user and lives on for
/// the others, -1 when it is in use and was left untouched (as
/// `pool_destroy` returning the pool), and -2 for NULL or a pointer that
/// is not a live pool (a destroyed pool's handle: aborts under an object
/// debug mode, as `pool_destroy`). A module that owns one user of a merged
/// pool calls it once; a positive return means other modules still use it.
#[no_mangle]
pub extern "C" fn pool_destroy_ex(pool: *mut Pool) -> c_int {
    if pool.is_null() {
        return -2;
    }
    match registry::destroy_counted(pool, "pool_destroy_ex", super::buffers::forget_buffer_pool) {
        registry::Destroyed::Freed => 0,
        registry::Destroyed::Users(n) => n.min(c_int::MAX as usize) as c_int,
        registry::Destroyed::InUse => -1,
        registry::Destroyed::NotAPool => -2,
    }
}

/// The users of a live pool: 1, plus one for each `create_pool` that was
/// merged into it (`MEM_F_SHARED`), minus the `pool_destroy` calls that
/// only took one user away. 0 for NULL, for a pointer that is not a pool,
/// and for a destroyed pool's handle (aborts under an object debug mode).
/// It takes the pool registry's lock: not for a hot loop.
#[no_mangle]
pub extern "C" fn pool_users(pool: *const Pool) -> c_uint {
    if pool.is_null() {
        return 0;
    }
    registry::users(pool).min(c_uint::MAX as usize) as c_uint
}

/// Destroys every pool whose objects are all back, whatever its number of
/// users (for the end of a process). Pools still in use stay valid.
#[no_mangle]
pub extern "C" fn pool_destroy_all() {
    registry::destroy_all(super::buffers::forget_buffer_pool)
}

/// Takes an object from the pool: this thread's cache first, then the
/// shared cache, then the OS. Returns NULL when the pool is at its limit with
/// every object held by callers, when the OS has no memory, or when `pool`
/// is NULL. The contents are undefined.
///
/// Handles. A destroyed pool's handle (after `pool_destroy` freed it or
/// `pool_destroy_all`) gives NULL and counts nothing, in every function
/// taking a pool: a pool's head is never given back to the OS but kept as
/// a tombstone, whose fast path always misses and whose slow path refuses.
/// Under an object debug mode (the pool had one, or one is on now) such a
/// call aborts instead, with `bufpool: <call> of destroyed pool <ptr> to
/// pool '<name>' (...)`. Not caught: a handle whose head was reused by a
/// new pool (the oldest tombstone is reused once 256 pools were destroyed
/// after it, never under an object debug mode), which then acts on the new
/// pool; a pointer that never was a pool (the fast path reads through it:
/// undefined, no mode catches it; `pool_destroy`, `pool_destroy_ex` and
/// `pool_users` alone check the pointer first); a call racing the
/// destruction on another thread (undefined).
#[no_mangle]
pub extern "C" fn pool_alloc(pool: *mut Pool) -> *mut c_void {
    match pool_ref(pool) {
        Some(p) => p.alloc().cast(),
        None => null_mut(),
    }
}

/// Like `pool_alloc`, with the object's `size` bytes set to zero.
#[no_mangle]
pub extern "C" fn pool_zalloc(pool: *mut Pool) -> *mut c_void {
    match pool_ref(pool) {
        Some(p) => p.zalloc().cast(),
        None => null_mut(),
    }
}

/// Gives an object back to its pool. `ptr` NULL is a no-op, and so is a
/// NULL `pool` (the object is then leaked). `ptr` must come from `pool`.
/// Without a debug mode nothing is checked: an object freed twice is idle
/// twice, and the pool hands the same object out to two callers. Run with
/// `BUFPOOL_DEBUG=tag` to have a double free abort with one line instead.
/// Undefined without a debug mode, caught by `tag` (and `uaf`) for pools
/// created under it: an object of another pool (of another size too: a
/// 64-byte object freed into a 16 KiB pool is later handed out as 16 KiB
/// and corrupts the heap; `tag` reports `wrong-pool free` when the owner is
/// a `tag` pool, `foreign free` otherwise), a pointer from `malloc` or the
/// stack (handed out again as an object; `tag`: `foreign free`), a pointer
/// inside an object. Freed into a destroyed pool's handle: nothing
/// happens, `ptr` is not touched (see `pool_alloc`, Handles).
#[no_mangle]
pub extern "C" fn pool_free(pool: *mut Pool, ptr: *mut c_void) {
    if let (Some(p), false) = (pool_ref(pool), ptr.is_null()) {
        // SAFETY: `ptr` came from `pool` and the caller gives it up (C contract).
        unsafe { p.free_ticking(ptr.cast()) }
    }
}

/// Takes a new object from the OS, bypassing both caches. At the pool's
/// limit it hands out an idle object instead, if there is one. NULL on
/// failure or for a NULL pool.
#[no_mangle]
pub extern "C" fn pool_alloc_nocache(pool: *mut Pool) -> *mut c_void {
    match live_ref(pool, "pool_alloc_nocache") {
        Some(p) => p.alloc_nocache().cast(),
        None => null_mut(),
    }
}

/// Frees an object of the pool straight to the OS. NULL `ptr` or `pool`: no-op.
#[no_mangle]
pub extern "C" fn pool_free_nocache(pool: *mut Pool, ptr: *mut c_void) {
    if let (Some(p), false) = (live_ref(pool, "pool_free_nocache"), ptr.is_null()) {
        // SAFETY: `ptr` came from `pool` and the caller gives it up (C contract).
        unsafe { p.free_nocache(ptr.cast()) }
    }
}

/// Frees every idle object of the pool's shared cache to the OS (objects
/// idle in thread caches stay there). NULL: no-op.
#[no_mangle]
pub extern "C" fn pool_flush(pool: *mut Pool) {
    if let Some(p) = live_ref(pool, "pool_flush") {
        p.flush()
    }
}

/// For every pool: moves the idle objects of every thread's cache (the
/// caller's included) to the shared cache, frees idle objects above the
/// pool's minavail to the OS, then asks malloc to return free memory to the
/// OS. A thread that is inside a call on a pool at that moment keeps that
/// pool's objects in its cache (no thread is waited for). The immediate version of the release period's work, in one call: it
/// stalls its caller for the whole of it (about 90 ms for 1 GiB of 16 KiB
/// objects on the machine this was measured on). `pool_ctx` is ignored
/// (HAProxy's signature).
#[no_mangle]
pub extern "C" fn pool_gc(pool_ctx: *mut Pool) {
    let _ = pool_ctx;
    registry::gc_all()
}

/// Caps the number of objects of the pool, held and idle alike; 0 means
/// unlimited. Idle objects never make an allocation fail: at the limit they
/// are handed out from wherever they sit, another thread's cache included,
/// and an object on its way to the OS (by `pool_flush`, `pool_gc` or a
/// release) is waited for rather than failed on. A limit below the objects
/// allocated takes effect at once: idle objects above it go back to the OS,
/// and objects freed while the pool is still above it go back to the OS
/// too, until the pool is within the limit. Objects being freed to the OS
/// may exceed the limit for the length of their `free()`. Lowering the
/// limit below what is allocated waits, with no lock held, for calls on
/// this pool in flight on other threads to end (a thread stopped inside
/// one delays this call, and no other thread).
#[no_mangle]
pub extern "C" fn pool_set_limit(pool: *mut Pool, max_objects: c_uint) {
    if let Some(p) = live_ref(pool, "pool_set_limit") {
        p.set_limit(max_objects as usize)
    }
}

/// Sets how many idle objects the pool keeps before releasing to the OS.
#[no_mangle]
pub extern "C" fn pool_set_minavail(pool: *mut Pool, min_idle: c_uint) {
    if let Some(p) = live_ref(pool, "pool_set_minavail") {
        p.set_minavail(min_idle as usize)
    }
}

/// Sets the per-thread cache budget in bytes, all pools together (512 KiB by
/// default; 0 caches nothing, `SIZE_MAX` is no budget). Objects larger than
/// the budget are never cached in a thread. It takes effect at once in every
/// thread's cache: when it returns, a cache above the new budget has sent
/// its least recently used objects to their pools' shared caches until it
/// is within it, and a release racing the call sees the new budget. A
/// lower budget waits, with no lock held, for calls in flight on other
/// threads to end (a thread stopped inside a call delays this one, and no
/// other thread). After the process lost `membarrier(2)`, the cache of a
/// thread that has not called the library since conforms at its next call.
#[no_mangle]
pub extern "C" fn pool_set_cache_size(bytes: usize) {
    crate::cache::set_budget(bytes)
}

/// Objects taken from the OS and alive (held, or idle in any cache). 0 for NULL.
#[no_mangle]
pub extern "C" fn pool_allocated(pool: *const Pool) -> c_ulong {
    live_ref(pool, "pool_allocated").map_or(0, |p| p.allocated() as c_ulong)
}

/// Objects held by callers (idle objects in thread caches are not). Exact
/// when no call on this pool is in flight, and never less than callers
/// hold: an object inside a pool call on another thread counts as held. It
/// reads every thread cache that has this pool's objects at once, without
/// ever waiting for another thread: a thread stopped in the middle of a
/// call on this pool (preempted on a busy machine, or in a debugger) has
/// its idle objects of this pool counted as held for that call, erring
/// high rather than waiting; a thread stopped inside a call on another
/// pool hides nothing. Some microseconds at most (the registry of thread
/// caches is held that long by whoever holds it): not for a hot loop.
/// 0 for NULL.
#[no_mangle]
pub extern "C" fn pool_used(pool: *const Pool) -> c_ulong {
    live_ref(pool, "pool_used").map_or(0, |p| p.used() as c_ulong)
}

/// What the pool needed recently: the average, over recent release periods,
/// of the most objects it had out of its shared cache during each (held by
/// callers or idle in thread caches); each quarter of a period moves it a
/// quarter of the way to the peak of the last period. It is updated by the
/// release work (the free-path tick, `pool_maintain`, the maintenance
/// thread). 0 for NULL.
#[no_mangle]
pub extern "C" fn pool_needed_avg(pool: *const Pool) -> c_ulong {
    live_ref(pool, "pool_needed_avg").map_or(0, |p| p.needed_avg() as c_ulong)
}

/// Allocations of the pool that returned NULL: at the limit, for lack of
/// memory, or by `fail=PERCENT`. Buffer allocations refused before they ask
/// the buffer pool are not counted: those that would eat into the reserve
/// (the margin of `b_alloc_margin`, the class tier of `b_alloc_crit`), those
/// refused because a waiter is queued (`b_alloc_crit`), and those refused
/// while callers hold more buffers than a lowered limit. 0 for NULL.
#[no_mangle]
pub extern "C" fn pool_failed(pool: *const Pool) -> c_ulong {
    live_ref(pool, "pool_failed").map_or(0, |p| p.failed() as c_ulong)
}

/// Objects of the pool given back to the OS so far (by the release
/// period, `pool_flush`, `pool_gc`, a lowered limit, `pool_free_nocache`,
/// or at once with a release period of 0). 0 for NULL.
#[no_mangle]
pub extern "C" fn pool_released(pool: *const Pool) -> c_ulong {
    live_ref(pool, "pool_released").map_or(0, |p| p.released() as c_ulong)
}

/// Sets the release period, in ms, for every pool (400 by default, or
/// `BUFPOOL_RELEASE_PERIOD` in the environment, read at the first pool):
/// objects that stayed idle in a pool's shared cache for a whole period,
/// above its minavail, go back to the OS; objects the pool needed again
/// within the period stay. A thread cache's stack that went a quarter of a
/// period without a slow call keeps at most half of its objects, and at
/// most 32, and gives the rest to its pool. 0: released objects go back at once whenever
/// the shared cache already holds minavail idle objects. `UINT_MAX`: never
/// by time (`pool_gc` and `pool_flush` still do). A new period takes effect
/// at every thread's next tick. The work runs in slices
/// of at most about 0.4 ms inside the library's calls (a tick
/// every 32 `pool_free`s of a thread, every one while objects are owed
/// back; `pool_maintain`; or the maintenance thread). Objects of a page or
/// more live in memory the library maps itself, so that one given back
/// leaves the process's resident memory at once; smaller ones go back to
/// malloc, whose free memory `pool_gc` and the maintenance thread trim.
#[no_mangle]
pub extern "C" fn pool_set_release_period(ms: c_uint) {
    crate::maintain::init_from_env();
    crate::pool::set_release_period(ms);
    crate::maintain::period_changed();
}

/// Runs one slice of the release work that is due (at most about half a
/// millisecond), and returns the milliseconds until the next slice is due:
/// for a program that goes idle, call it from the event loop's timer. 0:
/// more work is owed right away.
#[no_mangle]
pub extern "C" fn pool_maintain() -> c_uint {
    crate::maintain::maintain_now().min(c_uint::MAX as u64) as c_uint
}

/// Starts (`on` non-zero) or stops the library's maintenance thread, which
/// runs the release work on its own (for programs that may go idle without
/// calling `pool_maintain`). Off by default; `BUFPOOL_MAINTENANCE=thread` in
/// the environment starts it at the first pool. A start returns once the
/// thread exists (or was already running), a stop once it has exited (it
/// may finish the slice of work it is in, about 0.4 ms): a
/// stop then a start always leaves one thread running. Safe across
/// `fork()`: a child whose parent ran it starts its own at its first
/// `pool_free` tick or `pool_maintain`. Returns 0, or -1 when the thread
/// could not be started.
#[no_mangle]
pub extern "C" fn pool_maintenance_thread(on: c_int) -> c_int {
    crate::maintain::init_from_env();
    if crate::maintain::set_thread(on != 0) {
        0
    } else {
        -1
    }
}

/// Bytes allocated by all pools (objects times object size).
#[no_mangle]
pub extern "C" fn pool_total_allocated() -> c_ulonglong {
    report::total_bytes().0
}

/// Bytes held by callers in all pools.
#[no_mangle]
pub extern "C" fn pool_total_used() -> c_ulonglong {
    report::total_bytes().1
}

/// Writes the state of every pool to `fd`, one line a pool, in the style of
/// HAProxy's `show pools`, then a total line. The second line names the
/// protocol the thread caches run (`membarrier`, or `fenced owner` with the
/// reason: a `membarrier(2)` that failed after start switches every cache
/// to the fenced protocol, and says so there and once on stderr). Each line is written with
/// `write(2)` as soon as it is formatted (without heap allocation, so it
/// works when memory is exhausted): interrupted writes (`EINTR`) are
/// retried and short writes continued. A pool created or destroyed on
/// another thread during the dump may be missed. A bad fd is ignored. Not
/// async-signal-safe (it takes the pool registry's lock): from a signal
/// handler, hand the request to a thread. Its lines go straight to the fd:
/// `fflush` a `FILE *` on the same fd first.
#[no_mangle]
pub extern "C" fn dump_pools_to_fd(fd: c_int) {
    report::dump_to_fd(fd)
}

/// `dump_pools_to_fd` with choices, in the words of HAProxy's CLI command
/// `show pools`: `opts` is a list of words separated by blanks, in any
/// order, each at most once:
/// - `byname` (names in byte order), `bysize` (largest objects first) or
///   `byusage` (most bytes allocated first): at most one of them; ties go
///   by name, then by address. Without one, the order of
///   `dump_pools_to_fd` (the registry's).
/// - `match PREFIX`: only the pools whose name starts with PREFIX (bytes,
///   case-sensitive; names keep at most 31 bytes).
/// - a decimal number N above 0: at most N pools (the first N of the order).
/// - `detailed`: more fields for each pool: `released` (objects given back
///   to the OS, as `pool_released`), `limit` (0: none), `minavail`,
///   `align` (as asked; 0: malloc's own), `footprint` (bytes asked of the
///   OS per object, debug words included), `flags` (as given to
///   `create_pool`).
/// - `json`: JSON instead of text (below).
///
/// NULL or an empty string is the plain dump (the text of
/// `dump_pools_to_fd`). The text form is that of `dump_pools_to_fd`, the
/// detailed fields inserted before the address as `; released R, limit
/// L, minavail M, align A, footprint F bytes, flags 0xX`; its `Total:` line
/// counts the pools shown. The JSON form is one array, `[` on the first
/// line, `]` on the last, and one object per pool on each line between
/// (every one but the last ending with a comma), with the keys `name`
/// (escaped: `\"`, `\\`, `\n`, `\t`, `\r`, other control characters as
/// `\u00XX`; a name that is not UTF-8 has its bytes above 0x7f as
/// `\u00XX` too), `size`, `allocated`, `allocated_bytes`, `used`,
/// `used_bytes`, `needed_avg`, `failures`, `users`, `shared` (the
/// algorithm's name), `mem_f_shared` and `thread_cache` (booleans),
/// `debug` (an array of the pool's debug modes), the detailed keys with
/// `detailed`, and `addr` (a string, `"0x..."`). No header line and no
/// total in JSON.
///
/// Returns 0 once everything is written. Returns -1 with `errno` set to
/// `EINVAL`, having written nothing, for an unknown word, a second sort
/// word, `match` without a prefix or given twice, a count of 0 or given
/// twice; -1 with the `errno` of `write(2)` when a write failed (a bad or
/// closed fd: the dump stops there). Like `dump_pools_to_fd`: formatted
/// on the stack without heap allocation, written with `write(2)` as each
/// line is ready (`EINTR` retried, short writes continued) with no lock
/// of the library held, so a slow reader stalls no other thread; it takes
/// the pool registry's lock between writes (never one the allocation
/// paths take), so it is not async-signal-safe. A sorted dump ranks 64
/// pools per walk of the registry and walks again for the next ones: a
/// pool created or destroyed during the dump may be missed, and with more
/// than 64 pools `byusage` ranks later pools by their usage at a later
/// walk, so a pool whose usage moves during the dump may show twice or not
/// at all.
#[no_mangle]
pub extern "C" fn dump_pools_to_fd_opts(fd: c_int, opts: *const c_char) -> c_int {
    let text = if opts.is_null() {
        &[][..]
    } else {
        // SAFETY: a non-null `opts` is a NUL-terminated string (C contract).
        unsafe { CStr::from_ptr(opts) }.to_bytes()
    };
    let Ok(o) = report::parse_opts(text) else {
        crate::os::set_errno(libc::EINVAL);
        return -1;
    };
    if report::dump_opts_to_fd(fd, &o) {
        0
    } else {
        -1
    }
}

/// Applies debug options at run time, like `BUFPOOL_DEBUG` (read once, at
/// the first call that creates state): a comma-separated list of
/// `poison[=BYTE]` (fill objects handed out with BYTE, default 0x50),
/// `integrity` (idle objects hold a changing pattern, checked on reuse and
/// on flush: a write after free aborts), `tag` (a word after each object
/// names its pool: a double free, a free to the wrong pool, a free of a
/// pointer no pool gave out, or an overrun of the word aborts), `caller`
/// (each object remembers its last allocating or freeing caller, named in
/// the abort message as `file+0xoffset`), `cold-first` (idle objects are
/// reused oldest first), `uaf` (each object in its own mapping, unmapped on
/// free: any later access faults), `fail=PERCENT` (that share of
/// allocations returns NULL; the buffer pool's critical allocations are
/// spared), `no-cache`, `no-global`, `race-window=N|yield`, `help` (lists
/// the words on stderr). `no-WORD` turns an object mode off (`cache`,
/// `global`, `hot-first`, `fail=0` likewise).
/// The object modes (poison to fail) are fixed into each pool when it is
/// created: pools created before a mode is turned on stay without it. A
/// pool with any of them has no thread cache and keeps its idle objects in
/// a debug store of its own instead of the shared cache. A misuse they catch
/// prints one line, `bufpool: <what> of <ptr> to pool '<name>' (...)`, on
/// stderr, then calls `abort()`.
/// Returns 0, or -1 on an unknown or malformed word (then nothing
/// changes, and the word is reported on stderr). NULL returns -1.
#[no_mangle]
pub extern "C" fn pool_set_debugging(opts: *const c_char) -> c_int {
    if opts.is_null() {
        return -1;
    }
    crate::debug::init_from_env();
    // SAFETY: a non-null `opts` is a NUL-terminated string (C contract).
    // Not valid UTF-8: no word can match, so the whole text is the bad word.
    let s = unsafe { CStr::from_ptr(opts) }.to_str().unwrap_or("\u{fffd}");
    match crate::debug::apply(s) {
        Ok(()) => 0,
        Err(word) => {
            eprintln!("bufpool: unknown debug word '{word}' (try \"help\")");
            -1
        }
    }
}
