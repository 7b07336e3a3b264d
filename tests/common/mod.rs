//! What the two fuzzers share: the seeded generator and the share of
//! `BUFPOOL_FUZZ_OPS` of each.
#![allow(dead_code)] // each fuzzer uses a part

use bufpool::ffi::pool_head_buffer;
use bufpool::Pool;

/// A small, fast, seedable generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `BUFPOOL_FUZZ_OPS` (10^7 by default): the operations of both fuzzers.
pub fn total_ops() -> u64 {
    std::env::var("BUFPOOL_FUZZ_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000)
}

/// The buffer fuzzer's share of the operations: a fifth.
pub fn buffer_ops() -> u64 {
    total_ops() / 5
}

/// The buffer pool, NULL before the buffer fuzzer's `dynbuf_init`.
pub fn buffer_pool() -> *mut Pool {
    // SAFETY: written by `dynbuf_init` only, on the fuzzer's one thread.
    unsafe { std::ptr::addr_of!(pool_head_buffer).read() }
}

/// Fills a held object with the pattern of `id`.
pub fn fill(p: usize, size: usize, id: u64) {
    for i in (0..size).step_by(8) {
        let w = mix(id ^ i as u64).to_le_bytes();
        let n = (size - i).min(8);
        // SAFETY: a held object of `size` bytes.
        unsafe { std::ptr::copy_nonoverlapping(w.as_ptr(), (p + i) as *mut u8, n) };
    }
}

/// Does a held object still hold the pattern of `id`?
pub fn intact(p: usize, size: usize, id: u64) -> bool {
    (0..size).step_by(8).all(|i| {
        let w = mix(id ^ i as u64).to_le_bytes();
        let n = (size - i).min(8);
        // SAFETY: a held object of `size` bytes.
        let got = unsafe { std::slice::from_raw_parts((p + i) as *const u8, n) };
        got == &w[..n]
    })
}
