//! The process-wide barrier of the thread caches' protocol (`owned.rs`).
//!
//! The owner of a thread cache must not run a locked instruction or a fence
//! on its fast path (on this kind of virtual machine a locked operation on
//! a thread-local line costs about 10 ns, a plain store 0.5 ns). So the
//! full barrier that Dekker's scheme needs on the owner's side is paid by
//! the rare foreign side instead: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`
//! makes every thread of the process that is running at that moment
//! execute a full memory barrier (an IPI), and a thread that is not running
//! went through the scheduler, which is a full barrier too. After the
//! foreign side's `membarrier` returns, every owner store that preceded it
//! in the owner's program order is visible, exactly as if the owner had
//! had a fence there. The cost moves to the foreign side: about 0.14 us per
//! call here, once per hold or per snapshot of all caches.
//!
//! Where `membarrier` cannot be had (an old kernel, a seccomp filter,
//! valgrind, a TSan build that cannot see it, or `BUFPOOL_CACHE_SYNC=fence`
//! in the environment), the library falls back, once and for the whole
//! process, to a fenced owner: its `busy` store is an `xchg`. Decided at
//! the first use, before any thread cache exists, and reported by
//! `dump_pools_to_fd`.
//!
//! This is the membarrier flavour of userspace RCU and of folly's
//! asymmetric barriers, applied to a per-thread lock.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

/// Not decided yet / membarrier / fence on the owner's side.
const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCED: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);
/// Why the fallback runs (for the dump), as an index into `REASONS`.
static REASON: AtomicU8 = AtomicU8::new(0);
static DECIDE: Once = Once::new();

const REASONS: [&str; 5] = [
    "",
    "BUFPOOL_CACHE_SYNC=fence in the environment",
    "membarrier(2) has no private expedited command here",
    "membarrier(2) registration refused",
    "a build that cannot see membarrier (ThreadSanitizer, loom)",
];

// Commands of membarrier(2) (linux/membarrier.h).
const CMD_QUERY: libc::c_int = 0;
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_int) }
}

/// Registers this process for private expedited barriers and checks that
/// one works. The reason index on failure.
fn try_register() -> Result<(), u8> {
    let cmds = membarrier(CMD_QUERY);
    if cmds < 0 || cmds & CMD_PRIVATE_EXPEDITED as libc::c_long == 0 {
        return Err(2);
    }
    if membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) != 0 || membarrier(CMD_PRIVATE_EXPEDITED) != 0 {
        return Err(3);
    }
    Ok(())
}

/// Decides the mode, once per process.
fn decide() -> u8 {
    DECIDE.call_once(|| {
        // SAFETY: a NUL-terminated name; the result is null or a C string of the environment.
        let env = unsafe { libc::getenv(c"BUFPOOL_CACHE_SYNC".as_ptr()) };
        // SAFETY: getenv returned a NUL-terminated string.
        let forced = !env.is_null() && unsafe { std::ffi::CStr::from_ptr(env) }.to_bytes() == b"fence";
        let result = if forced {
            Err(1)
        } else if cfg!(any(loom, bufpool_tsan)) {
            Err(4)
        } else {
            try_register()
        };
        let (mode, reason) = match result {
            Ok(()) => (MEMBARRIER, 0),
            Err(r) => (FENCED, r),
        };
        // Relaxed: the Once orders these for every later reader.
        REASON.store(reason, Ordering::Relaxed);
        MODE.store(mode, Ordering::Relaxed);
    });
    MODE.load(Ordering::Relaxed)
}

/// Must the owner fence its `busy` store itself (the fallback)? Decided at
/// the first call; a thread cache copies the answer when it is made.
pub(crate) fn owner_fences() -> bool {
    let m = MODE.load(Ordering::Relaxed);
    let m = if m == UNDECIDED { decide() } else { m };
    m == FENCED
}

/// The foreign side's barrier, after its `foreign` stores and before its
/// reads of `busy`: a process-wide barrier, or, in the fallback, a fence.
pub(crate) fn heavy() {
    if owner_fences() || membarrier(CMD_PRIVATE_EXPEDITED) != 0 {
        // The fallback; or membarrier failed after it worked at
        // registration (it does not): the owners then fence themselves,
        // as they were made to, and a fence here pairs with them.
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// One line for the dump: which protocol the thread caches run.
pub(crate) fn describe(w: &mut impl std::fmt::Write) {
    let _ = if owner_fences() {
        let why = REASONS[REASON.load(Ordering::Relaxed) as usize];
        writeln!(w, "Thread caches: fenced owner (a full fence per call): {why}.")
    } else {
        writeln!(w, "Thread caches: membarrier (no atomic instruction on the owner's fast path).")
    };
}

/// In a child after `fork()`: registration is made again (the child is a
/// new process for membarrier). False when it is refused there: the caller
/// then makes the child's caches fence their owners.
pub(crate) fn fork_child() -> bool {
    if owner_fences() {
        return true;
    }
    if try_register().is_ok() {
        return true;
    }
    // Relaxed: the child has one thread, which makes every later cache.
    REASON.store(3, Ordering::Relaxed);
    MODE.store(FENCED, Ordering::Relaxed);
    false
}
