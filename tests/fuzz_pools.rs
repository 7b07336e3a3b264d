//! A seeded fuzzer of C-API call sequences, checked step by step against a
//! model (see docs/TESTING.md for why a seeded generator and not cargo-fuzz).
//!
//! Several pools of random sizes, alignments and flags take random calls:
//! alloc, zalloc, alloc_nocache, free, free_nocache, flush, gc, limit,
//! minavail, cache size, destroy/re-create. After every call, every counter
//! of every pool is compared with the model:
//! - `pool_used` is the model's count of objects held, exactly;
//! - an allocation returns NULL exactly when the pool is at its limit with
//!   no idle object anywhere (single-threaded, this is exact), and
//!   `pool_failed` counts exactly those;
//! - held objects are aligned, never overlap, and keep their contents (each
//!   is filled with its own pattern on allocation, checked on free);
//!   `pool_zalloc` gives zeroes, `poison` pools give the poison byte;
//! - `used <= allocated`, flush never raises `allocated`, gc leaves exactly
//!   `min(idle, minavail)` idle objects in pools with a shared cache;
//! - `pool_total_used` is the sum of `used * size` (the size rounding rule);
//! - `pool_destroy` succeeds exactly when nothing is held.
//!
//!
//! `BUFPOOL_FUZZ_OPS` sets the number of operations of both fuzzers (10^7
//! by default): four fifths here, split over seeds (9/10 plain pools, 1/10
//! pools in debug modes). The buffer fuzzer is `fuzz_buffers.rs`.

mod common;

use bufpool::ffi::*;
use bufpool::Pool;
use common::{buffer_ops, buffer_pool, fill, intact, total_ops, Rng};
use std::collections::BTreeMap;
use std::ptr::null_mut;

/// The model of one pool.
struct PoolModel {
    h: *mut Pool,
    /// Object size after rounding.
    size: usize,
    align: usize,
    flags: u32,
    /// Poison byte of a pool created in `poison` mode.
    poison: Option<u8>,
    limit: usize,
    minavail: usize,
    failed: u64,
    /// Objects held: (address, pattern id).
    held: Vec<(usize, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Alloc,
    Zalloc,
    AllocNocache,
    Free,
    FreeNocache,
    FreeNull,
    Flush,
    Gc,
    Limit,
    Minavail,
    CacheSize,
    Recreate,
}

/// Weighted op table: allocation and free dominate.
const OPS: [(Op, u32); 12] = [
    (Op::Alloc, 30),
    (Op::Zalloc, 6),
    (Op::AllocNocache, 4),
    (Op::Free, 34),
    (Op::FreeNocache, 4),
    (Op::FreeNull, 1),
    (Op::Flush, 2),
    (Op::Gc, 1),
    (Op::Limit, 3),
    (Op::Minavail, 2),
    (Op::CacheSize, 1),
    (Op::Recreate, 1),
];

struct Fuzz {
    rng: Rng,
    seed: u64,
    step: u64,
    pools: Vec<PoolModel>,
    /// Every held object of every pool: start → end, to catch overlaps.
    ranges: BTreeMap<usize, usize>,
    next_id: u64,
    /// Debug modes the pools of this run are created with ("" for none).
    modes: &'static str,
}

impl Fuzz {
    fn fail(&self, what: String) -> ! {
        panic!("fuzz divergence: seed {:#x}, modes '{}', step {}: {what}", self.seed, self.modes, self.step);
    }

    fn new_pool(&mut self) -> PoolModel {
        let size = self.rng.pick(&[1u32, 8, 16, 24, 40, 64, 100, 128, 250, 512, 1000, 4096]);
        let align = self.rng.pick(&[0u32, 0, 0, 8, 32, 64, 4096]);
        let flags = self.rng.pick(&[
            0u32,
            0,
            MEM_F_EXACT,
            POOL_F_SHARED_NONE,
            POOL_F_NO_LOCAL_CACHE,
            MEM_F_EXACT | POOL_F_NO_LOCAL_CACHE,
        ]);
        let cmodes = std::ffi::CString::new(self.modes).unwrap();
        assert_eq!(pool_set_debugging(cmodes.as_ptr()), 0);
        let h = create_aligned_pool(c"fuzz".as_ptr(), size, align, flags);
        assert_eq!(
            pool_set_debugging(c"no-tag,no-integrity,no-poison,hot-first,no-caller,no-uaf,cache,global".as_ptr()),
            0
        );
        if h.is_null() {
            self.fail(format!("create_aligned_pool({size}, {align}, {flags:#x}) gave NULL"));
        }
        let size = if flags & MEM_F_EXACT != 0 { size as usize } else { (size as usize).next_multiple_of(16) };
        let poison = self.modes.contains("poison").then_some(0x5a);
        PoolModel {
            h,
            size,
            align: (align as usize).max(16),
            flags,
            poison,
            limit: 0,
            minavail: 0,
            failed: 0,
            held: Vec::new(),
        }
    }

    fn choose_op(&mut self) -> Op {
        let total: u32 = OPS.iter().map(|o| o.1).sum();
        let mut r = self.rng.below(total as u64) as u32;
        for (op, w) in OPS {
            if r < w {
                return op;
            }
            r -= w;
        }
        unreachable!()
    }

    fn do_alloc(&mut self, k: usize, op: Op) {
        let (h, size, align, limit) = (self.pools[k].h, self.pools[k].size, self.pools[k].align, self.pools[k].limit);
        let before = pool_allocated(h) as usize;
        let used = self.pools[k].held.len();
        let must_fail = limit != 0 && before >= limit && before == used;
        let p = match op {
            Op::Alloc => pool_alloc(h),
            Op::Zalloc => pool_zalloc(h),
            _ => pool_alloc_nocache(h),
        } as usize;
        if p == 0 {
            if !must_fail {
                self.fail(format!("{op:?} gave NULL: pool {k}, used {used}, allocated {before}, limit {limit}"));
            }
            self.pools[k].failed += 1;
            return;
        }
        if must_fail {
            self.fail(format!(
                "{op:?} succeeded at the limit: pool {k}, used {used}, allocated {before}, limit {limit}"
            ));
        }
        if !p.is_multiple_of(align) {
            self.fail(format!("{op:?} gave {p:#x}, not aligned on {align}"));
        }
        if let Some((&s, &e)) = self.ranges.range(..p + size).next_back() {
            if e > p {
                self.fail(format!("{op:?} gave {p:#x}+{size}, overlapping the held {s:#x}..{e:#x}"));
            }
        }
        // SAFETY: a fresh object of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
        if matches!(op, Op::Zalloc) && bytes.iter().any(|&b| b != 0) {
            self.fail(format!("pool_zalloc gave {p:#x} with a non-zero byte"));
        }
        if let (Op::Alloc | Op::AllocNocache, Some(b)) = (op, self.pools[k].poison) {
            if bytes.iter().any(|&x| x != b) {
                self.fail(format!("{op:?} gave {p:#x} not poisoned with {b:#x}"));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        fill(p, size, id);
        self.ranges.insert(p, p + size);
        self.pools[k].held.push((p, id));
    }

    fn do_free(&mut self, k: usize, nocache: bool) {
        let m = &mut self.pools[k];
        if m.held.is_empty() {
            return;
        }
        let i = self.rng.below(m.held.len() as u64) as usize;
        let (p, id) = m.held.swap_remove(i);
        let (h, size) = (m.h, m.size);
        if !intact(p, size, id) {
            self.fail(format!("object {p:#x} of pool {k} lost its contents while held"));
        }
        self.ranges.remove(&p);
        if nocache {
            pool_free_nocache(h, p as *mut _);
        } else {
            pool_free(h, p as *mut _);
        }
    }

    fn step(&mut self) {
        let op = self.choose_op();
        let k = self.rng.below(self.pools.len() as u64) as usize;
        let h = self.pools[k].h;
        let before: Vec<usize> = self.pools.iter().map(|m| pool_allocated(m.h) as usize).collect();
        match op {
            Op::Alloc | Op::Zalloc | Op::AllocNocache => self.do_alloc(k, op),
            Op::Free => self.do_free(k, false),
            Op::FreeNocache => self.do_free(k, true),
            Op::FreeNull => {
                pool_free(h, null_mut());
                pool_free(null_mut(), null_mut());
            }
            Op::Flush => pool_flush(h),
            Op::Gc => pool_gc(null_mut()),
            Op::Limit => {
                let used = self.pools[k].held.len() as u64;
                let l = match self.rng.below(4) {
                    0 => 0,
                    1 => used + self.rng.below(3),
                    2 => used.saturating_sub(self.rng.below(3)),
                    _ => self.rng.below(64),
                };
                pool_set_limit(h, l as u32);
                self.pools[k].limit = l as usize;
            }
            Op::Minavail => {
                let n = self.rng.below(8);
                pool_set_minavail(h, n as u32);
                self.pools[k].minavail = n as usize;
            }
            Op::CacheSize => pool_set_cache_size(self.rng.pick(&[0usize, 4096, 65536, 512 * 1024])),
            Op::Recreate => {
                let held = !self.pools[k].held.is_empty();
                let r = pool_destroy(h);
                if held != (r == h.cast()) || (!held && !r.is_null()) {
                    self.fail(format!("pool_destroy with {} objects held gave {r:p}", self.pools[k].held.len()));
                }
                if !held {
                    self.pools[k] = self.new_pool();
                }
            }
        }
        self.check(op, k, &before);
    }

    /// Every counter of every pool against the model.
    fn check(&self, op: Op, k: usize, before: &[usize]) {
        let mut total_used = 0u64;
        for (j, m) in self.pools.iter().enumerate() {
            let (used, alloc, failed) = (pool_used(m.h) as usize, pool_allocated(m.h) as usize, pool_failed(m.h));
            if used != m.held.len() {
                self.fail(format!("after {op:?} on pool {k}: pool {j} used {used}, model {}", m.held.len()));
            }
            if failed != m.failed {
                self.fail(format!("after {op:?} on pool {k}: pool {j} failed {failed}, model {}", m.failed));
            }
            if alloc < used {
                self.fail(format!("after {op:?} on pool {k}: pool {j} allocated {alloc} < used {used}"));
            }
            let grew = alloc > before[j];
            if grew && !(j == k && matches!(op, Op::Alloc | Op::Zalloc | Op::AllocNocache) && alloc == before[j] + 1) {
                self.fail(format!("after {op:?} on pool {k}: pool {j} allocated went {} -> {alloc}", before[j]));
            }
            if grew && m.limit != 0 && alloc > m.limit {
                self.fail(format!("after {op:?}: pool {j} took a new object beyond its limit {}", m.limit));
            }
            if matches!(op, Op::Gc) {
                let idle_before = before[j] - used;
                let want = if m.flags & POOL_F_SHARED_NONE != 0 { 0 } else { idle_before.min(m.minavail) };
                if alloc - used != want {
                    self.fail(format!(
                        "after gc: pool {j} keeps {} idle, want min(idle {idle_before}, minavail {}) = {want}",
                        alloc - used,
                        m.minavail
                    ));
                }
            }
            total_used += (used * m.size) as u64;
        }
        if pool_total_used() != total_used {
            self.fail(format!("pool_total_used {} != model {total_used}", pool_total_used()));
        }
    }

    fn run(seed: u64, modes: &'static str, npools: usize, ops: u64) -> u64 {
        let mut f =
            Fuzz { rng: Rng(seed | 1), seed, step: 0, pools: Vec::new(), ranges: BTreeMap::new(), next_id: 1, modes };
        for _ in 0..npools {
            let m = f.new_pool();
            f.pools.push(m);
        }
        // The pools really are in the debug modes asked for (or in none).
        let path = std::env::temp_dir().join(format!("bufpool-fuzz-{}.txt", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        dump_pools_to_fd(std::os::fd::AsRawFd::as_raw_fd(&file));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let debug_pools = text.lines().filter(|l| l.contains("[DEBUG ")).count();
        assert_eq!(debug_pools, if modes.is_empty() { 0 } else { npools }, "{text}");
        while f.step < ops {
            f.step += 1;
            f.step();
        }
        // Tear down: everything back, every pool destroyed.
        for k in 0..f.pools.len() {
            while !f.pools[k].held.is_empty() {
                f.do_free(k, false);
            }
            if !pool_destroy(f.pools[k].h).is_null() {
                f.fail(format!("pool {k} not destroyed with nothing held"));
            }
        }
        pool_set_cache_size(512 * 1024);
        ops
    }
}

#[test]
fn api_sequences_match_the_model() {
    let total = total_ops() - buffer_ops();
    let plain = total / 10 * 9;
    let seeds = 8u64;
    let mut done = 0;
    for s in 0..seeds {
        done += Fuzz::run(0x5eed_0000 + s, "", 6, plain / seeds);
    }
    let debug_modes: [&'static str; 4] =
        ["tag,integrity", "poison=0x5a,cold-first", "tag,caller,integrity,cold-first", "uaf,tag"];
    let rest = total - done;
    for (i, modes) in debug_modes.iter().enumerate() {
        let n = if i + 1 == debug_modes.len() { total - done } else { rest / debug_modes.len() as u64 };
        done += Fuzz::run(0xdeb0_0000 + i as u64, modes, 4, n);
    }
    assert_eq!(done, total);
    // Every pool destroyed (this process makes no buffer pool).
    assert!(buffer_pool().is_null());
    assert_eq!(pool_total_allocated(), 0, "every pool destroyed");
    println!("fuzz: {done} pool operations matched the model");
}
