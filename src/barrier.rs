//! The process-wide barrier of the thread caches' protocol (`owned.rs`),
//! and what happens when it goes away.
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
//! had a fence there. About 0.14 us per call here, once per batch of
//! caches held.
//!
//! Two modes, and one way from the first to the second:
//!
//! - `Membarrier`: owners fence nothing; the foreign side's barrier is the
//!   system call.
//! - `Fenced`: every owner fences its own `busy` store (on a cold path a
//!   bit of its cache's `foreign` word sends it to), and the foreign side's
//!   barrier is a fence. Decided at the first use where `membarrier` cannot
//!   be had (an old kernel, a seccomp filter already in place, valgrind, a
//!   TSan or loom build, `BUFPOOL_CACHE_SYNC=fence`), or entered at run
//!   time the first time the system call fails (a seccomp filter installed
//!   after start: `EPERM`). A failed call is never trusted: its caller gets
//!   [`Barrier::Lost`] and must make every cache's owner fence itself, and
//!   trust a cache only once its owner has acknowledged (`owned.rs`).
//!
//! Why not a barrier that "cannot fail" instead, such as the `mprotect`
//! TLB-shootdown trick (.NET's `FlushProcessWriteBuffers`, older userspace
//! RCU): a seccomp filter can deny `mprotect` as well, and the trick rests
//! on how one kernel on one architecture flushes TLBs (an IPI to every CPU
//! running the process); arm64 broadcasts TLB invalidations without
//! interrupting anyone, and x86 kernels with broadcast invalidation
//! (AMD's INVLPGB) need no IPI either. `docs/DESIGN.md` has the argument.
//!
//! This is the membarrier flavour of userspace RCU and of folly's
//! asymmetric barriers, applied to a per-thread lock.

use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Once;

/// The protocol the thread caches run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// The foreign side's barrier is `membarrier(2)`; owners fence nothing.
    Membarrier,
    /// Owners fence themselves; the foreign side's barrier is a fence.
    Fenced,
}

/// What the foreign side's barrier did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Barrier {
    /// `membarrier` ran: every owner's earlier stores are visible.
    Process,
    /// A fence ran (the fenced mode): only owners that fence themselves
    /// can be trusted.
    Fence,
    /// `membarrier` failed just now, for the first time: the process is
    /// in the fenced mode from now on, and nothing was made visible. The
    /// caller (holding every cache's registry) must make every cache's
    /// owner fence itself.
    Lost,
}

/// 0: not decided yet; else a `Mode` (1 membarrier, 2 fenced).
static MODE: AtomicU8 = AtomicU8::new(0);
/// Why the fenced mode runs (for the dump), as an index into `REASONS`.
static REASON: AtomicU8 = AtomicU8::new(0);
/// The errno of the failed call, when the mode was lost at run time.
static LOST_ERRNO: AtomicI32 = AtomicI32::new(0);
static DECIDE: Once = Once::new();

const REASON_ENV: u8 = 1;
const REASON_NO_CMD: u8 = 2;
const REASON_REFUSED: u8 = 3;
const REASON_BUILD: u8 = 4;
const REASON_LOST: u8 = 5;

const REASONS: [&str; 6] = [
    "",
    "BUFPOOL_CACHE_SYNC=fence in the environment",
    "membarrier(2) has no private expedited command here",
    "membarrier(2) registration refused",
    "a build that cannot see membarrier (ThreadSanitizer, loom)",
    "membarrier(2) failed after start",
];

// Commands of membarrier(2) (linux/membarrier.h).
const CMD_QUERY: libc::c_int = 0;
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Tests count the foreign side's barriers (one per batch of caches, never
/// one per cache; in either mode).
#[cfg(test)]
pub(crate) static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_int) }
}

/// Registers this process for private expedited barriers and checks that
/// one works. The reason index on failure.
fn try_register() -> Result<(), u8> {
    let cmds = membarrier(CMD_QUERY);
    if cmds < 0 || cmds & CMD_PRIVATE_EXPEDITED as libc::c_long == 0 {
        return Err(REASON_NO_CMD);
    }
    if membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) != 0 || membarrier(CMD_PRIVATE_EXPEDITED) != 0 {
        return Err(REASON_REFUSED);
    }
    Ok(())
}

/// Decides the mode, once per process.
fn decide() -> Mode {
    DECIDE.call_once(|| {
        // SAFETY: a NUL-terminated name; the result is null or a C string of the environment.
        let env = unsafe { libc::getenv(c"BUFPOOL_CACHE_SYNC".as_ptr()) };
        // SAFETY: getenv returned a NUL-terminated string.
        let forced = !env.is_null() && unsafe { std::ffi::CStr::from_ptr(env) }.to_bytes() == b"fence";
        let result = if forced {
            Err(REASON_ENV)
        } else if cfg!(any(loom, bufpool_tsan)) {
            Err(REASON_BUILD)
        } else {
            try_register()
        };
        // Relaxed, both: the Once orders them for every later reader.
        match result {
            Ok(()) => MODE.store(1, Ordering::Relaxed),
            Err(r) => {
                REASON.store(r, Ordering::Relaxed);
                MODE.store(2, Ordering::Relaxed);
            }
        }
    });
    mode_now()
}

fn mode_now() -> Mode {
    // Relaxed: the mode changes once, from membarrier to fenced, under the
    // cache registry's lock (which every reader that acts on it holds);
    // the Once orders the first decision.
    if MODE.load(Ordering::Relaxed) == 1 {
        Mode::Membarrier
    } else {
        Mode::Fenced
    }
}

/// The mode now (decided at the first call). A cache made now copies it:
/// in `Fenced`, its owner fences itself from the start. Read it under the
/// cache registry's lock, where the mode can change.
pub(crate) fn mode() -> Mode {
    if MODE.load(Ordering::Relaxed) == 0 {
        decide()
    } else {
        mode_now()
    }
}

/// The foreign side's barrier, after its announces and before its reads
/// of the owners' `busy` words. Call it with the cache registry's lock
/// held: on [`Barrier::Lost`] the caller switches every cache under it.
pub(crate) fn heavy() -> Barrier {
    #[cfg(test)]
    CALLS.fetch_add(1, Ordering::Relaxed);
    if mode() == Mode::Fenced {
        std::sync::atomic::fence(Ordering::SeqCst);
        return Barrier::Fence;
    }
    if membarrier(CMD_PRIVATE_EXPEDITED) == 0 {
        return Barrier::Process;
    }
    lose(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    // The fence still orders our own announces before our reads; the
    // owners' stores are what cannot be trusted any more.
    std::sync::atomic::fence(Ordering::SeqCst);
    Barrier::Lost
}

/// `membarrier` failed at run time: the fenced mode from now on, said once
/// on stderr (a protocol change the operator should know of).
#[cold]
fn lose(errno: i32) {
    // Relaxed: under the cache registry's lock (see `mode_now`).
    LOST_ERRNO.store(errno, Ordering::Relaxed);
    REASON.store(REASON_LOST, Ordering::Relaxed);
    MODE.store(2, Ordering::Relaxed);
    let mut line = crate::os::StackLine::new();
    let _ = std::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "bufpool: membarrier(2) failed after start (errno {errno}): every thread cache switches to owners that fence themselves\n"
        ),
    );
    crate::os::write_all(2, line.as_bytes());
}

/// One line for the dump: which protocol the thread caches run.
pub(crate) fn describe(w: &mut impl std::fmt::Write) {
    let _ = if mode() == Mode::Fenced {
        let r = REASON.load(Ordering::Relaxed);
        let why = REASONS[r as usize];
        if r == REASON_LOST {
            let errno = LOST_ERRNO.load(Ordering::Relaxed);
            writeln!(w, "Thread caches: fenced owner (a full fence per call): {why} (errno {errno}).")
        } else {
            writeln!(w, "Thread caches: fenced owner (a full fence per call): {why}.")
        }
    } else {
        writeln!(w, "Thread caches: membarrier (no atomic instruction on the owner's fast path).")
    };
}

/// In a child after `fork()`: registration is made again (the child is a
/// new process for membarrier). False when it is refused there: the caller
/// then makes the child's caches fence their owners.
#[cfg(not(loom))]
pub(crate) fn fork_child() -> bool {
    if mode() == Mode::Fenced {
        return true;
    }
    if try_register().is_ok() {
        return true;
    }
    // Relaxed: the child has one thread, which makes every later cache.
    REASON.store(REASON_REFUSED, Ordering::Relaxed);
    MODE.store(2, Ordering::Relaxed);
    false
}
