//! Memory of the pools whose objects are a page or more: mapped by the
//! library itself, in runs of up to 64 objects, so that an object given
//! back to the OS really leaves the process's resident memory.
//!
//! Why not `malloc`: `free()` of a 16 KiB block leaves it resident (glibc
//! keeps it unless it is at the top of the heap or `malloc_trim` runs, and
//! `malloc_trim` of 1 GiB takes 80 ms in one call that cannot be sliced);
//! `madvise` of the block's own pages after `free()` leaves the quarter of
//! them that hold the allocator's headers. Here objects are page-aligned
//! with no header, so giving one back is `madvise(MADV_DONTNEED)` of its
//! pages (RSS falls at once; the address range stays with the run, ready
//! to be handed out again, zero-filled on first touch), and a run whose
//! objects are all given back is unmapped whole (its address space goes
//! back too). Releases are grouped per run: a batch of objects costs one
//! system call per run touched, not per object.
//!
//! A run's slots are in one of two states, tracked by a 64-bit mask: in
//! use (allocated: held by a caller or idle in a cache) or available
//! (never handed out, or given back: no resident memory). Runs with an
//! available slot sit on a stack (`partial`), so an allocation takes the
//! most recently freed run first.

use crate::sync::SpinLock;
use std::ptr::null_mut;

/// Most objects in one run (one bit each in a `u64`).
const MAX_RUN_OBJECTS: usize = 64;
/// The size a run aims at: objects smaller than this share a run.
const RUN_TARGET: usize = 1 << 20;

/// The objects of one pool, mapped in runs.
pub(crate) struct Pages {
    /// Bytes of one object, a multiple of the page size.
    stride: usize,
    /// Alignment of a run (and so of its first object): the page, or the
    /// pool's alignment when larger.
    align: usize,
    /// Objects per run.
    per_run: usize,
    runs: SpinLock<Runs>,
}

struct Run {
    base: usize,
    /// Bit `i` set: slot `i` is available (not allocated).
    avail: u64,
}

/// The runs, sorted by base address (found by binary search on release),
/// and `partial`: the bases of runs with an available slot.
struct Runs {
    all: Vec<Run>,
    partial: Vec<usize>,
}

/// The page size.
pub(crate) fn page() -> usize {
    crate::os::page()
}

/// Does a pool of objects of `size` bytes take its memory here? Objects of
/// a page or more that two or more fit in a run; larger ones are mapped one
/// by one (`os::map_aligned`), as musl and glibc do with large blocks.
pub(crate) fn fits(size: usize) -> bool {
    size >= page() && size.next_multiple_of(page()) <= RUN_TARGET / 2
}

/// Objects this large or larger are mapped one by one.
pub(crate) fn own_mapping(size: usize) -> bool {
    size >= page() && !fits(size)
}

impl Pages {
    pub(crate) fn new(size: usize, align: usize) -> Self {
        let pg = page();
        let stride = size.next_multiple_of(pg).next_multiple_of(align.max(1));
        let per_run = (RUN_TARGET / stride).clamp(1, MAX_RUN_OBJECTS);
        Pages {
            stride,
            align: align.max(pg),
            per_run,
            runs: SpinLock::new(Runs { all: Vec::new(), partial: Vec::new() }),
        }
    }

    fn run_len(&self) -> usize {
        self.stride * self.per_run
    }

    fn full_mask(&self) -> u64 {
        if self.per_run == 64 {
            u64::MAX
        } else {
            (1u64 << self.per_run) - 1
        }
    }

    /// An object's memory: an available slot of a run (zero-filled by the
    /// kernel on first touch), mapping a new run when none has one. Null
    /// when the OS or memory for the bookkeeping refuses.
    pub(crate) fn alloc(&self) -> *mut u8 {
        let mut r = self.runs.lock();
        while let Some(&base) = r.partial.last() {
            let Some(i) = find(&r.all, base) else {
                r.partial.pop();
                continue;
            };
            let run = &mut r.all[i];
            if run.avail == 0 {
                r.partial.pop();
                continue;
            }
            let slot = run.avail.trailing_zeros() as usize;
            run.avail &= !(1 << slot);
            if run.avail == 0 {
                r.partial.pop();
            }
            return (base + slot * self.stride) as *mut u8;
        }
        // No run has room: a new one.
        if r.all.try_reserve(1).is_err() || r.partial.try_reserve(1).is_err() {
            return null_mut();
        }
        let base = crate::os::map_aligned(self.run_len(), self.align);
        if base.is_null() {
            return null_mut();
        }
        let base = base as usize;
        let avail = self.full_mask() & !1;
        let at = r.all.partition_point(|run| run.base < base);
        r.all.insert(at, Run { base, avail });
        if avail != 0 {
            r.partial.push(base);
        }
        base as *mut u8
    }

    /// Gives objects back to the OS: their pages leave resident memory, and
    /// a run left with no object allocated is unmapped. `objs` is sorted
    /// here, 64 at a time; one system call per run touched (or per stretch of
    /// adjacent objects), made with the lock released: a run that this
    /// batch empties leaves the list first, then is unmapped; other objects
    /// are discarded first, and only then marked available (so that no one
    /// can be handed one while its pages are being discarded). The runs of
    /// the batch stay put meanwhile: a run leaves only when all its objects
    /// are available, and ours are not yet.
    ///
    /// # Safety
    /// Every pointer came from `alloc` of this `Pages`, is allocated, and
    /// is not used any more by anyone.
    pub(crate) unsafe fn release(&self, objs: &mut [*mut u8]) {
        // Sorted whole first, so that each run's objects fall together.
        objs.sort_unstable();
        for chunk in objs.chunks_mut(64) {
            // SAFETY: the caller's guarantee, for each part.
            unsafe { self.release_some(chunk) };
        }
    }

    /// `release` of at most 64 objects: marks the runs (`begin`), discards
    /// or unmaps them with the lock let go, then marks the slots available
    /// (`finish`).
    ///
    /// # Safety
    /// As `release`.
    unsafe fn release_some(&self, objs: &mut [*mut u8]) {
        let mut batch = self.begin(objs);
        // SAFETY: the caller's guarantee.
        unsafe { self.discard(&batch) };
        self.finish(&mut batch);
    }

    /// The first step of a release, under the lock: groups the objects by
    /// run; a run that this batch empties leaves the list.
    fn begin(&self, objs: &mut [*mut u8]) -> Batch {
        debug_assert!(objs.len() <= 64, "a batch of at most 64 objects");
        objs.sort_unstable();
        let mut b = Batch { groups: [(0usize, 0u64, false); 64], n: 0 };
        let mut r = self.runs.lock();
        let mut k = 0;
        while k < objs.len() && b.n < b.groups.len() {
            let p = objs[k] as usize;
            let Some(i) = r.all.partition_point(|run| run.base <= p).checked_sub(1) else {
                debug_assert!(false, "an object of these pages");
                k += 1;
                continue;
            };
            let base = r.all[i].base;
            debug_assert!(p < base + self.run_len(), "an object inside its run");
            let mut mask = 0u64;
            while k < objs.len() && (objs[k] as usize) < base + self.run_len() {
                mask |= 1 << ((objs[k] as usize - base) / self.stride);
                k += 1;
            }
            debug_assert!(r.all[i].avail & mask == 0, "an allocated object is released once");
            let emptied = r.all[i].avail | mask == self.full_mask();
            if emptied {
                r.all.remove(i);
                if let Some(at) = r.partial.iter().position(|&b| b == base) {
                    r.partial.swap_remove(at);
                }
            }
            b.groups[b.n] = (base, mask, emptied);
            b.n += 1;
        }
        b
    }

    /// The second step, with the lock let go: runs the batch emptied are
    /// unmapped, the other objects' pages discarded.
    ///
    /// # Safety
    /// The batch's objects are allocated objects of these pages that no one
    /// uses any more (`release`'s guarantee).
    unsafe fn discard(&self, b: &Batch) {
        for &(base, mask, emptied) in &b.groups[..b.n] {
            if emptied {
                // SAFETY: the run was mapped by `map_aligned(run_len, _)` at
                // `base`, is out of the list, and none of its objects is used.
                unsafe { crate::os::unmap(base as *mut u8, self.run_len()) };
                continue;
            }
            let mut m = mask;
            while m != 0 {
                let first = m.trailing_zeros() as usize;
                let len = (m >> first).trailing_ones() as usize;
                // SAFETY: slots `first..first + len` of this run are allocated
                // objects the caller gives up (its guarantee).
                unsafe { crate::os::discard((base + first * self.stride) as *mut u8, len * self.stride) };
                let bits = if len == 64 { u64::MAX } else { ((1u64 << len) - 1) << first };
                m &= !bits;
            }
        }
    }

    /// The last step, under the lock: the discarded slots become available.
    /// A run whose every slot is then available (another release of the
    /// same run, running beside this one, marked the rest meanwhile) leaves
    /// the list and is unmapped, with the lock let go.
    fn finish(&self, b: &mut Batch) {
        let mut empty = [0usize; 64];
        let mut n_empty = 0;
        {
            let mut r = self.runs.lock();
            for &(base, mask, emptied) in &b.groups[..b.n] {
                if emptied {
                    continue;
                }
                let Some(i) = find(&r.all, base) else {
                    debug_assert!(false, "a run with slots of this batch stays listed");
                    continue;
                };
                let was_full = r.all[i].avail == 0;
                r.all[i].avail |= mask;
                if r.all[i].avail == self.full_mask() {
                    r.all.remove(i);
                    if let Some(at) = r.partial.iter().position(|&p| p == base) {
                        r.partial.swap_remove(at);
                    }
                    empty[n_empty] = base;
                    n_empty += 1;
                } else if was_full && r.partial.try_reserve(1).is_ok() {
                    r.partial.push(base);
                }
            }
        }
        for &base in &empty[..n_empty] {
            // SAFETY: mapped by `map_aligned(run_len, _)`, out of the list,
            // every slot available (given back): no object of it is used.
            unsafe { crate::os::unmap(base as *mut u8, self.run_len()) };
        }
    }

    /// Of `objs` (sorted by address), how many, from the first, a `release`
    /// can give back with about `calls` system calls at most (one per run
    /// emptied or per stretch of adjacent objects of a run: each stretch of
    /// adjacent addresses counts as one call, so two runs that happen to be
    /// mapped side by side may cost one more than counted), and how many
    /// calls that takes.
    pub(crate) fn prefix_within(&self, objs: &[*mut u8], calls: usize) -> (usize, usize) {
        let (mut used, mut prev) = (0usize, None::<usize>);
        for (k, &o) in objs.iter().enumerate() {
            let o = o as usize;
            if prev.is_none_or(|p| o != p + self.stride) {
                if used == calls {
                    return (k, used);
                }
                used += 1;
            }
            prev = Some(o);
        }
        (objs.len(), used)
    }

    /// Unmaps every run (the pool is destroyed: no object is allocated).
    pub(crate) fn unmap_all(&self) {
        let mut r = self.runs.lock();
        for run in r.all.drain(..) {
            // SAFETY: mapped by `map_aligned(run_len, _)`; the pool is being
            // destroyed, so none of its objects is used.
            unsafe { crate::os::unmap(run.base as *mut u8, self.run_len()) };
        }
        r.partial.clear();
    }

    /// Before `fork()`: takes the lock.
    #[cfg(not(loom))]
    pub(crate) fn fork_lock(&self) {
        self.runs.lock_forever();
    }

    /// # Safety
    /// `fork_lock` took the lock on this thread.
    #[cfg(not(loom))]
    pub(crate) unsafe fn fork_unlock(&self) {
        // SAFETY: the caller's guarantee: this thread holds it by `fork_lock`.
        unsafe { self.runs.unlock_forever() };
    }
}

/// A release in progress: per run touched, its base, the slots of the
/// batch in it, and whether the batch empties it.
struct Batch {
    groups: [(usize, u64, bool); 64],
    n: usize,
}

/// The index of the run at `base`.
fn find(all: &[Run], base: usize) -> Option<usize> {
    all.binary_search_by_key(&base, |r| r.base).ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn runs_fill_release_and_unmap() {
        let pg = page();
        let pages = Pages::new(4 * pg, 0);
        assert_eq!(pages.per_run, (RUN_TARGET / (4 * pg)).clamp(1, 64));
        let n = pages.per_run * 2 + 3;
        let mut objs: Vec<*mut u8> = (0..n).map(|_| pages.alloc()).collect();
        assert!(objs.iter().all(|p| !p.is_null() && (*p as usize).is_multiple_of(pg)));
        for (i, &p) in objs.iter().enumerate() {
            // SAFETY: an allocated object of 4 pages.
            unsafe { p.write_bytes(i as u8, 4 * pg) };
        }
        let mut sorted = objs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), n, "no object handed out twice");
        assert_eq!(pages.runs.lock().all.len(), 3);
        // Give back one object of the first run: it is zero when handed out again.
        let first = objs.remove(0);
        // SAFETY: allocated, given up.
        unsafe { pages.release(&mut [first]) };
        let again = pages.alloc();
        assert_eq!(again, first, "the freed slot is reused first");
        // SAFETY: an allocated object of 4 pages, discarded then handed out.
        assert!(unsafe { std::slice::from_raw_parts(again, 4 * pg) }.iter().all(|&b| b == 0));
        objs.push(again);
        // Give everything back: every run is unmapped.
        // SAFETY: all allocated, given up.
        unsafe { pages.release(&mut objs) };
        assert_eq!(pages.runs.lock().all.len(), 0);
        assert!(pages.runs.lock().partial.is_empty());
    }

    /// Two releases of the halves of one run, interleaved as two threads
    /// can: both begin (neither empties the run by itself), both discard,
    /// both finish. The run, all of it given back, must be unmapped.
    #[test]
    fn interleaved_releases_of_one_run_unmap_it() {
        let pg = page();
        let pages = Pages::new(4 * pg, 0);
        let n = pages.per_run;
        let objs: Vec<*mut u8> = (0..n).map(|_| pages.alloc()).collect();
        assert_eq!(pages.runs.lock().all.len(), 1);
        let (mut a, mut b) = (objs[..n / 2].to_vec(), objs[n / 2..].to_vec());
        let mut ba = pages.begin(&mut a);
        let mut bb = pages.begin(&mut b);
        assert!(!ba.groups[0].2 && !bb.groups[0].2, "neither half empties the run alone");
        // SAFETY: allocated objects, given up, each in one batch.
        unsafe {
            pages.discard(&ba);
            pages.discard(&bb);
        }
        pages.finish(&mut ba);
        pages.finish(&mut bb);
        assert_eq!(pages.runs.lock().all.len(), 0, "a run given back whole is unmapped");
        assert!(pages.runs.lock().partial.is_empty());
    }
}
