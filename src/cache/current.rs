//! Which cache is this thread's: one thread-local word, never null, that
//! points to the thread's cache or to a stand-in that no owner can enter.

use super::local::ThreadCache;

/// The stand-in cache of a thread that has none (yet, or any more): empty,
/// and no owner ever enters it (its `foreign` word is set for good), so the
/// fast path needs no test for "no cache": it fails its usual `foreign`
/// test and the slow path sees `is_none`. Never registered: no foreign
/// holder ever reaches it. Its `busy` word is written by every thread
/// without a cache, which is harmless (nobody reads it).
#[cfg(not(loom))]
static NO_CACHE: ThreadCache = ThreadCache::parked();

#[cfg(loom)]
loom::lazy_static! {
    static ref NO_CACHE: ThreadCache = {
        let c = ThreadCache::new(false);
        // SAFETY: the stand-in is never registered: no foreign holder exists for it.
        c.cell.announce(&unsafe { crate::owned::ForeignSide::assume() });
        c
    };
}

/// The stand-in cache.
pub(super) fn no_cache() -> &'static ThreadCache {
    &NO_CACHE
}

/// Is `tc` the stand-in of a thread without a cache?
pub(super) fn is_none(tc: &ThreadCache) -> bool {
    core::ptr::eq(tc, no_cache())
}

/// Is `tc` the calling thread's own cache?
pub(super) fn is_own(tc: &ThreadCache) -> bool {
    core::ptr::eq(tc, get())
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
///
/// The word is exported as `bufpool_fast_v1` (build.rs adds it to the
/// shared object's exports): the header's inline fast path
/// (`BUFPOOL_INLINE`, `crate::ffi::inline`) reads it from the program. The
/// number is the inline ABI's (`BUFPOOL_INLINE_ABI`): a change of the
/// layout that path reads renames the word, so that a program built for
/// the old layout fails to load instead of misreading the new one.
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom)))]
mod word {
    use super::{ThreadCache, NO_CACHE};

    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl bufpool_fast_v1",
        ".type bufpool_fast_v1, @object",
        ".size bufpool_fast_v1, 8",
        "bufpool_fast_v1:",
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
                "mov {p}, qword ptr [rip + bufpool_fast_v1@GOTTPOFF]",
                "mov {p}, qword ptr fs:[{p}]",
                p = out(reg) p,
                options(nostack, readonly, preserves_flags),
            );
        }
        // SAFETY: the word holds `&NO_CACHE` (its initial value) or a live
        // cache of this thread (`set` by `attach`, reset before it is freed).
        unsafe { &*p }
    }

    // The thread's count of slow releases (`count_slow_free`), a second
    // word of the static TLS block: global for the other codegen units
    // that read it, hidden (never exported).
    core::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 2",
        ".globl bufpool_slow_frees",
        ".hidden bufpool_slow_frees",
        ".type bufpool_slow_frees, @object",
        ".size bufpool_slow_frees, 4",
        "bufpool_slow_frees:",
        ".zero 4",
        ".popsection",
    );

    /// Adds one to this thread's count of slow releases; the new count.
    #[inline(always)]
    pub(super) fn count_slow_free() -> u32 {
        let v: u32;
        // SAFETY: this thread's own word of the static TLS block defined
        // above, through the GOT entry of its offset.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + bufpool_slow_frees@GOTTPOFF]",
                "add dword ptr fs:[{t}], 1",
                "mov {v:e}, dword ptr fs:[{t}]",
                t = out(reg) _,
                v = out(reg) v,
                options(nostack),
            );
        }
        v
    }

    #[inline(always)]
    pub(super) fn set(p: &'static ThreadCache) {
        // SAFETY: writes this thread's own word of the static TLS block.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + bufpool_fast_v1@GOTTPOFF]",
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
mod word {
    use super::{no_cache, ThreadCache};
    use std::cell::Cell;

    #[cfg(not(loom))]
    thread_local! {
        static CURRENT: Cell<*const ThreadCache> = const { Cell::new(std::ptr::null()) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static CURRENT: Cell<*const ThreadCache> = Cell::new(std::ptr::null());
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

    #[cfg(not(loom))]
    thread_local! {
        static SLOW_FREES: Cell<u32> = const { Cell::new(0) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static SLOW_FREES: Cell<u32> = Cell::new(0);
    }

    pub(super) fn count_slow_free() -> u32 {
        SLOW_FREES.with(|n| {
            let v = n.get().wrapping_add(1);
            n.set(v);
            v
        })
    }
}

/// Adds one to this thread's count of releases that reached a slow path
/// (the clock of threads whose releases never reach a cache); the new
/// count. One word of the static TLS block beside the cache's (a Rust
/// `thread_local!` in the shared object costs a `__tls_get_addr` call).
#[inline(always)]
pub(crate) fn count_slow_free() -> u32 {
    word::count_slow_free()
}

/// This thread's cache, or the stand-in.
#[inline(always)]
pub(super) fn get() -> &'static ThreadCache {
    word::get()
}

/// Makes `p` this thread's cache (the stand-in when it goes away).
pub(super) fn set(p: &'static ThreadCache) {
    word::set(p)
}
