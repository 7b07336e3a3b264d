//! The old lock-free list (`POOL_F_SHARED_DWCAS`), kept ONLY to reproduce
//! the crash that HAProxy fixed by replacing it with the self-locked head
//! (large buffers freed to an allocator that unmaps them, musl) and to
//! compare speed. Do not use it for real work.
//!
//! The head is a pair (first object, pop counter) that a pop replaces in one
//! double-width compare-and-swap (`lock cmpxchg16b` on x86-64). The counter
//! defeats ABA: a pop that read (A, n) cannot install A's stale link once
//! another pop has bumped the counter. It does not make the read of that
//! link safe: between reading the head and reading `A->next`, another thread
//! can pop A, use it and release it; if the pool is crowded A goes back to
//! the OS, and an allocator that unmaps large blocks at once (musl) leaves
//! the first thread reading unmapped memory: SIGSEGV. `c_tests/test_race.c`
//! shows exactly that.
//!
//! Available on x86-64 CPUs with `cmpxchg16b` (checked at pool creation);
//! elsewhere, and in loom builds, `POOL_F_SHARED_DWCAS` pools get the
//! locked list instead (see `pool::create`).
//!
//! The CAS is inline assembly rather than `core::arch::x86_64::cmpxchg16b`:
//! that intrinsic gets inlined into callers built without the feature, where
//! it turns into a call to libatomic's `__atomic_compare_exchange_16`, which
//! the library does not link.
//!
//! Memory model note: the two halves of the pair are also read, and the
//! head half pushed to, with 8-byte atomics. Mixed-size atomic accesses are
//! outside Rust's model but well defined on x86-64, the only target here.
//! There is no loom model: the algorithm is racy by design.

use super::{set_next, Link};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// The head pair, 16-byte aligned as `cmpxchg16b` requires.
#[repr(C, align(16))]
struct Pair {
    head: AtomicPtr<Link>,
    pops: AtomicU64,
}

pub(crate) struct DwcasList {
    pair: CachePadded<Pair>,
}

/// Compares the 16 bytes at `dst` with `old` and, if equal, stores `new`,
/// in one locked instruction. Returns true on success.
///
/// # Safety
/// `dst` is 16-byte aligned, valid for writes, and the CPU has `cmpxchg16b`.
#[inline(always)]
unsafe fn cas16(dst: *mut u64, old: (u64, u64), new: (u64, u64)) -> bool {
    let (lo, hi): (u64, u64);
    // SAFETY: caller guarantees alignment, validity and the CPU feature.
    // rbx is reserved by LLVM, so the low new word goes through a scratch
    // register and rbx is restored before the block ends. `lock cmpxchg16b`
    // is a full barrier, stronger than the Acquire/Release the pop needs.
    unsafe {
        core::arch::asm!(
            "xchg {t}, rbx",
            "lock cmpxchg16b xmmword ptr [{d}]",
            "mov rbx, {t}",
            t = inout(reg) new.0 => _,
            d = in(reg) dst,
            inout("rax") old.0 => lo,
            inout("rdx") old.1 => hi,
            in("rcx") new.1,
            options(nostack),
        );
    }
    (lo, hi) == old
}

impl DwcasList {
    /// None when the CPU lacks `cmpxchg16b`.
    pub(crate) fn new() -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("cmpxchg16b") {
            return None;
        }
        Some(DwcasList {
            pair: CachePadded::new(Pair { head: AtomicPtr::new(core::ptr::null_mut()), pops: AtomicU64::new(0) }),
        })
    }

    fn pair_ptr(&self) -> *mut u64 {
        (&*self.pair as *const Pair).cast_mut().cast()
    }

    /// Takes the first idle object, or null when the list is empty.
    /// RACY: may read the link of an object another thread has freed.
    pub(crate) fn pop(&self) -> *mut Link {
        loop {
            // Acquire on both: we read the link the pusher published with Release.
            let pops = self.pair.pops.load(Ordering::Acquire);
            let first = self.pair.head.load(Ordering::Acquire);
            if first.is_null() {
                return first;
            }
            crate::sync::race_window();
            // SAFETY: NOT guaranteed, and that is the point of this file: by
            // now another thread may have popped `first` and freed it to the
            // OS (SIGSEGV here), or be rewriting its link (a stale value the
            // CAS below then rejects, as `pops` has moved). A volatile read
            // so the compiler neither drops nor moves this load.
            let next = unsafe { (*first).next.with(|p| p.read_volatile()) };
            // SAFETY: `pair` is 16-byte aligned and alive; `new` checked the CPU.
            if unsafe { cas16(self.pair_ptr(), (first as u64, pops), (next as u64, pops.wrapping_add(1))) } {
                return first;
            }
        }
    }

    /// Puts an idle object at the head: a single-width CAS on the head half
    /// (only pops need the counter, since ABA needs a pop of the same head).
    ///
    /// # Safety
    /// `item` is an object the caller owns and that is in no list.
    pub(crate) unsafe fn push(&self, item: *mut Link) {
        let mut seen = self.pair.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns `item`; it is published only by the CAS.
            unsafe { set_next(item, seen) };
            // Release: publishes the link we just wrote to the popper that acquires the head.
            match self.pair.head.compare_exchange_weak(seen, item, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// Detaches the whole list. Bumps the counter too, so that a pop that
    /// read the old head cannot install its link afterwards.
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> *mut Link {
        loop {
            // Acquire: the caller reads every link of the chain.
            let pops = self.pair.pops.load(Ordering::Acquire);
            let first = self.pair.head.load(Ordering::Acquire);
            if first.is_null() {
                return first;
            }
            // SAFETY: `pair` is 16-byte aligned and alive; `new` checked the CPU.
            if unsafe { cas16(self.pair_ptr(), (first as u64, pops), (0, pops.wrapping_add(1))) } {
                return first;
            }
        }
    }
}
