//! The per-object work of the object debug modes, for pools created while
//! one of them was on.
//!
//! Layout of an object of a debug pool: its `size` bytes, rounded up to a
//! word, then one word per active mode among, in this order:
//! - `tag`: the owning pool's address mixed with a per-process secret, with
//!   bit 0 set while the object is idle;
//! - `caller`: the return address of the last C caller that allocated or
//!   freed it;
//! - `integrity`: the seed of the pattern the idle object is filled with.
//!
//! Idle objects of a debug pool sit in a store of their own (a deque under
//! a lock, LIFO, or FIFO with `cold-first`), never threaded through their
//! own memory: a write after free cannot corrupt a list, and `integrity`
//! covers every byte. In `tag` and `uaf` modes every live object is also in
//! a registry (address → pool), so a pointer is looked up before a single
//! byte of it is read: a foreign pointer is reported, never dereferenced.

use super::{in_critical, mode_name, M_CALLER, M_COLD_FIRST, M_FAIL, M_INTEGRITY, M_POISON, M_TAG, M_UAF};
use crate::sync::{SpinGuard, SpinLock};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const WORD: usize = core::mem::size_of::<usize>();
const NONE: usize = usize::MAX;
/// Bytes of a pool's name kept (as the pool keeps them).
const NAME_LEN: usize = 31;

/// Live objects of `tag`/`uaf` pools: address → owning pool.
static REGISTRY: SpinLock<AddrMap> = SpinLock::new(AddrMap::new());
/// Seeds of the integrity patterns: each fill gets a new one.
static SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
/// State of the fault-injection generator.
static FAIL_RNG: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

fn registry() -> SpinGuard<'static, AddrMap> {
    REGISTRY.lock()
}

/// The object modes of one pool, fixed at its creation, and what they
/// need: where each debug word sits in an object, the pool's name for the
/// messages. It lives inside its pool and never moves: its address is the
/// pool's identity in the tag words and in the registry.
pub(crate) struct Checks {
    name: [u8; NAME_LEN],
    modes: u32,
    poison: u8,
    fail_pct: u32,
    /// Object size as callers see it.
    size: usize,
    /// Offsets of the debug words from the object's start, or `NONE`.
    tag_at: usize,
    caller_at: usize,
    seed_at: usize,
    /// Bytes of debug words after the object.
    extra: usize,
}

impl Checks {
    /// The modes set now, for a new pool of `size` bytes named `name`;
    /// `None` when no object mode is on.
    pub(crate) fn snapshot(size: usize, name: &[u8]) -> Option<Self> {
        let (modes, poison, fail_pct) = super::object_modes();
        if modes == 0 {
            return None;
        }
        let mut at = size.next_multiple_of(WORD);
        let mut word = |bit: u32| {
            if modes & bit == 0 {
                return NONE;
            }
            at += WORD;
            at - WORD
        };
        let (tag_at, caller_at, seed_at) = (word(M_TAG), word(M_CALLER), word(M_INTEGRITY));
        let mut stored = [0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN);
        stored[..n].copy_from_slice(&name[..n]);
        Some(Checks { name: stored, modes, poison, fail_pct, size, tag_at, caller_at, seed_at, extra: at - size })
    }

    /// Bytes of debug words to add after each object.
    pub(crate) fn extra(&self) -> usize {
        self.extra
    }

    /// Two pools may merge only with the same modes (or none).
    pub(crate) fn same(a: Option<&Checks>, b: Option<&Checks>) -> bool {
        let key = |c: Option<&Checks>| c.map(|c| (c.modes, c.poison, c.fail_pct));
        key(a) == key(b)
    }

    fn has(&self, bit: u32) -> bool {
        self.modes & bit != 0
    }

    /// The pool's identity in tag words and in the registry.
    fn id(&self) -> usize {
        self as *const Checks as usize
    }

    fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        std::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }

    /// `uaf`: each object in its own mapping, unmapped when it goes back to the OS.
    pub(crate) fn mapped(&self) -> bool {
        self.has(M_UAF)
    }

    /// Can idle objects be kept? Not in `uaf` mode: every free unmaps.
    pub(crate) fn keeps_idle(&self) -> bool {
        !self.has(M_UAF)
    }

    /// `cold-first`: idle objects are reused oldest first.
    pub(crate) fn cold_first(&self) -> bool {
        self.has(M_COLD_FIRST)
    }

    /// The modes, for `dump_pools_to_fd`: " [DEBUG a,b]". Written without
    /// heap allocation.
    pub(crate) fn describe(&self, w: &mut impl std::fmt::Write) {
        let mut sep = " [DEBUG ";
        for bit in (0..u32::BITS).map(|i| 1 << i).filter(|&b| self.has(b)) {
            let _ = write!(w, "{sep}{}", mode_name(bit));
            sep = ",";
        }
        let _ = w.write_str("]");
    }

    /// Calls `f` with the name of each mode the pool has, in the order
    /// `describe` lists them (for the JSON dump).
    pub(crate) fn each_mode(&self, mut f: impl FnMut(&str)) {
        for bit in (0..u32::BITS).map(|i| 1 << i).filter(|&b| self.has(b)) {
            f(mode_name(bit));
        }
    }

    /// `fail=PERCENT`: should this allocation fail? Never inside a
    /// `critical()` section.
    pub(crate) fn refuse(&self) -> bool {
        if !self.has(M_FAIL) || in_critical() {
            return false;
        }
        // Relaxed: a random stream; its order across threads is irrelevant.
        let x = mix(FAIL_RNG.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed));
        ((x >> 32) % 100) < self.fail_pct as u64
    }

    // ---- the objects' words --------------------------------------------

    /// # Safety
    /// `p` is an object of this pool (mapped, with its debug words).
    unsafe fn word(&self, p: *mut u8, at: usize) -> usize {
        // SAFETY: `at` is one of this pool's word offsets, inside the
        // object's allocation of `size + extra` bytes (caller guarantee).
        unsafe { p.add(at).cast::<usize>().read_unaligned() }
    }

    /// # Safety
    /// As `word`, and the caller owns `p`.
    unsafe fn set_word(&self, p: *mut u8, at: usize, v: usize) {
        // SAFETY: `at` is inside the object (as in `word`), which the caller owns.
        unsafe { p.add(at).cast::<usize>().write_unaligned(v) }
    }

    /// ", last allocated or freed by X" when `caller` is on.
    ///
    /// # Safety
    /// As `word`.
    unsafe fn last(&self, p: *mut u8) -> String {
        if !self.has(M_CALLER) {
            return String::new();
        }
        // SAFETY: `p` is an object of this pool with its caller word (caller guarantee).
        format!(", last allocated or freed by {}", describe(unsafe { self.word(p, self.caller_at) }))
    }

    /// ", this call from X" when `caller` is on.
    fn this_call(&self) -> String {
        if self.has(M_CALLER) {
            format!(", this call from {}", describe(caller()))
        } else {
            String::new()
        }
    }

    // ---- the hooks the pool calls ---------------------------------------

    /// An object leaves the pool for a caller. A `reused` one was idle: it
    /// must still hold what it held when it went idle (the integrity
    /// pattern, the idle tag), or something wrote to it after its free. A
    /// new one is registered (`tag`, `uaf`). Then it is tagged allocated,
    /// its caller noted, and it is poisoned. False when a new object could
    /// not be registered (no memory): the pool then frees it and fails.
    ///
    /// # Safety
    /// `p` is an object of `owner`'s pool that the caller now owns; a
    /// `reused` one went idle through `check_free`.
    pub(crate) unsafe fn hand_out(&self, p: *mut u8, reused: bool) -> bool {
        let name = self.name();
        if reused && self.has(M_INTEGRITY) {
            // SAFETY: an idle object of this pool, now ours, filled by `check_free`.
            unsafe { self.check_pattern(p) };
        }
        // SAFETY: a reused object of this pool, now ours, with its tag word.
        if reused && self.has(M_TAG) && unsafe { self.word(p, self.tag_at) } != tag(self.id(), true) {
            die(format!(
                "write after free of {p:p} in pool '{name}' (the tag word after its {} bytes changed while idle){}",
                self.size,
                // SAFETY: the same object, with its caller word.
                unsafe { self.last(p) }
            ));
        }
        if !reused && self.has(M_TAG | M_UAF) && !registry().insert(p as usize, self.id()) {
            return false;
        }
        if self.has(M_TAG) {
            // SAFETY: an owned object of this pool, with its tag word.
            unsafe { self.set_word(p, self.tag_at, tag(self.id(), false)) };
        }
        if self.has(M_CALLER) {
            // SAFETY: an owned object of this pool, with its caller word.
            unsafe { self.set_word(p, self.caller_at, caller()) };
        }
        if self.has(M_POISON) {
            // SAFETY: an owned object of `size` bytes.
            unsafe { p.write_bytes(self.poison, self.size) };
        }
        true
    }

    /// A caller gives `p` back to `owner`'s pool: aborts with one line on
    /// stderr when it is not an object of this pool held by a caller; else
    /// marks it idle, notes the caller, and fills it with a fresh pattern.
    ///
    /// # Safety
    /// In `tag` or `uaf` mode any `p`; otherwise `p` is an object of the pool.
    pub(crate) unsafe fn check_free(&self, p: *mut u8) {
        let name = self.name();
        if self.has(M_TAG | M_UAF) {
            let reg = registry();
            match reg.get(p as usize) {
                None => die(format!(
                    "foreign free of {p:p} to pool '{name}' (not an object of any tag/uaf-mode pool, or already \
                     returned to the OS){}",
                    self.this_call()
                )),
                Some(other) if other != self.id() => die(format!(
                    "wrong-pool free of {p:p} to pool '{name}' (it belongs to pool '{}'){}",
                    // SAFETY: registered objects' owners are live `Checks`
                    // (a pool retires all its objects before it is freed),
                    // and we hold the registry's lock.
                    unsafe { &*(other as *const Checks) }.name(),
                    self.this_call()
                )),
                Some(_) => {}
            }
        }
        if self.has(M_TAG) {
            // SAFETY: registered in this pool, so mapped with its words.
            let t = unsafe { self.word(p, self.tag_at) };
            if t == tag(self.id(), true) {
                // SAFETY: registered in this pool, so mapped with its caller word.
                die(format!("double free of {p:p} to pool '{name}'{}{}", unsafe { self.last(p) }, self.this_call()));
            }
            if t != tag(self.id(), false) {
                die(format!(
                    "overrun free of {p:p} to pool '{name}' (the tag word after its {} bytes was overwritten){}{}",
                    self.size,
                    // SAFETY: registered in this pool, so mapped with its caller word.
                    unsafe { self.last(p) },
                    self.this_call()
                ));
            }
            // SAFETY: registered in this pool, mapped with its tag word; the caller gives it up.
            unsafe { self.set_word(p, self.tag_at, tag(self.id(), true)) };
        }
        if self.has(M_CALLER) {
            // SAFETY: an object of this pool that the caller gives up, with its caller word.
            unsafe { self.set_word(p, self.caller_at, caller()) };
        }
        if self.has(M_INTEGRITY) {
            // Relaxed: only needs a different value each time.
            let seed = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed) as usize;
            // SAFETY: an object of this pool given up by the caller, with its seed word.
            unsafe {
                fill(p, self.size, seed);
                self.set_word(p, self.seed_at, seed);
            }
        }
    }

    /// An object goes back to the OS: an `idle` one must still hold its
    /// pattern (`integrity`: a write after free aborts here too), and it
    /// leaves the registry.
    ///
    /// # Safety
    /// `p` is an object of this pool; an `idle` one went idle through
    /// `check_free` and is now the caller's.
    pub(crate) unsafe fn retire(&self, p: *mut u8, idle: bool) {
        if idle && self.has(M_INTEGRITY) {
            // SAFETY: the caller's guarantee: an idle object of this pool with its seed word.
            unsafe { self.check_pattern(p) };
        }
        if self.has(M_TAG | M_UAF) {
            registry().remove(p as usize);
        }
    }

    /// Aborts when an idle object no longer holds its pattern.
    ///
    /// # Safety
    /// `p` is an idle object of this pool, filled by `check_free`, now the caller's.
    unsafe fn check_pattern(&self, p: *mut u8) {
        // SAFETY: the caller's guarantee: the object has its seed word.
        let seed = unsafe { self.word(p, self.seed_at) };
        // SAFETY: the caller's guarantee: an object of this pool, `size` bytes long.
        if let Some(at) = unsafe { check(p, self.size, seed) } {
            die(format!(
                "write after free of {p:p} in pool '{}' (byte {at} of {} changed while idle){}",
                self.name(),
                self.size,
                // SAFETY: the same object, with its caller word.
                unsafe { self.last(p) }
            ));
        }
    }
}

/// Takes the registry across `fork()`.
#[cfg(not(loom))]
pub(crate) fn fork_lock() {
    REGISTRY.lock_forever();
}

/// # Safety
/// `fork_lock` took it on this thread.
#[cfg(not(loom))]
pub(crate) unsafe fn fork_unlock() {
    // SAFETY: the caller's guarantee: this thread took it in `fork_lock`.
    unsafe { REGISTRY.unlock_forever() };
}

/// A map from object address to pool address that grows without aborting
/// when memory is short (`insert` says so instead). Open addressing with
/// linear probing over a power-of-two table; deletion shifts the following
/// entries back, so there are no tombstones. Keys are never 0.
struct AddrMap {
    slots: Vec<(usize, usize)>,
    len: usize,
}

impl AddrMap {
    const fn new() -> Self {
        AddrMap { slots: Vec::new(), len: 0 }
    }

    fn home(&self, key: usize) -> usize {
        mix(key as u64) as usize & (self.slots.len() - 1)
    }

    fn find(&self, key: usize) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.slots[i].0 {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get(&self, key: usize) -> Option<usize> {
        self.find(key).map(|i| self.slots[i].1)
    }

    /// Adds or replaces an entry; false when the table could not grow.
    fn insert(&mut self, key: usize, val: usize) -> bool {
        debug_assert!(key != 0, "0 marks an empty entry");
        if let Some(i) = self.find(key) {
            self.slots[i].1 = val;
            return true;
        }
        // At most half full, so that probes stay short.
        if (self.len + 1) * 2 > self.slots.len() && !self.grow() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        while self.slots[i].0 != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = (key, val);
        self.len += 1;
        true
    }

    fn grow(&mut self) -> bool {
        let cap = (self.slots.len() * 2).max(64);
        let mut bigger = Vec::new();
        if bigger.try_reserve_exact(cap).is_err() {
            return false;
        }
        bigger.resize(cap, (0, 0));
        let old = std::mem::replace(&mut self.slots, bigger);
        self.len = 0;
        for (k, v) in old.into_iter().filter(|e| e.0 != 0) {
            let mask = self.slots.len() - 1;
            let mut i = self.home(k);
            while self.slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = (k, v);
            self.len += 1;
        }
        true
    }

    fn remove(&mut self, key: usize) {
        let Some(mut hole) = self.find(key) else { return };
        let mask = self.slots.len() - 1;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let k = self.slots[i].0;
            if k == 0 {
                break;
            }
            // An entry may fill the hole if its home is not in (hole, i].
            let home = self.home(k);
            let between = if hole <= i { hole < home && home <= i } else { hole < home || home <= i };
            if !between {
                self.slots[hole] = self.slots[i];
                hole = i;
            }
        }
        self.slots[hole] = (0, 0);
        self.len -= 1;
    }
}

/// The tag word of an object of the pool whose `Checks` is at `owner`.
fn tag(owner: usize, idle: bool) -> usize {
    // The secret changes with ASLR, so a tag is not a plain pool address.
    let secret = (tag as *const () as usize).rotate_left(29) ^ 0x6b43_a9b5_9e37_79b9;
    ((owner ^ secret) & !1) | idle as usize
}

/// A 64-bit mixer (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The pattern word at byte offset `i` for `seed`.
fn pattern(seed: usize, i: usize) -> [u8; 8] {
    mix(seed as u64 ^ i as u64).to_le_bytes()
}

/// # Safety
/// `p` is valid for `len` bytes of writes.
unsafe fn fill(p: *mut u8, len: usize, seed: usize) {
    for i in (0..len).step_by(8) {
        let w = pattern(seed, i);
        let n = (len - i).min(8);
        // SAFETY: `i + n <= len` (caller guarantee for `len`).
        unsafe { core::ptr::copy_nonoverlapping(w.as_ptr(), p.add(i), n) };
    }
}

/// The first byte that differs from the pattern, if any.
///
/// # Safety
/// `p` is valid for `len` bytes of reads.
unsafe fn check(p: *mut u8, len: usize, seed: usize) -> Option<usize> {
    for i in (0..len).step_by(8) {
        let w = pattern(seed, i);
        for (j, b) in w.iter().enumerate().take((len - i).min(8)) {
            // SAFETY: `i + j < len`.
            if unsafe { *p.add(i + j) } != *b {
                return Some(i + j);
            }
        }
    }
    None
}

/// The return address of the first frame outside this library: the C
/// caller of the exported function. 0 when unknown (e.g. a static link,
/// where the caller shares our object file). Uses glibc's `backtrace()`;
/// other C libraries (musl) have none, and get 0.
#[cfg(not(target_env = "gnu"))]
fn caller() -> usize {
    0
}

/// See above.
#[cfg(target_env = "gnu")]
fn caller() -> usize {
    let mut frames = [null_mut::<libc::c_void>(); 32];
    // SAFETY: the buffer holds 32 entries.
    let n = unsafe { libc::backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
    let own = module_of(caller as *const () as usize);
    // Skip the frames before ours (a sanitizer intercepts backtrace()),
    // then ours: the next one is the caller.
    frames[..n.max(0) as usize]
        .iter()
        .map(|&f| f as usize)
        .skip_while(|&f| module_of(f) != own)
        .find(|&f| module_of(f).is_some_and(|m| Some(m) != own))
        .unwrap_or(0)
}

/// The base address of the object file holding `addr`.
#[cfg_attr(not(target_env = "gnu"), allow(dead_code))]
fn module_of(addr: usize) -> Option<usize> {
    // SAFETY: Dl_info is plain data; an all-zero value is valid.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads `addr` as a number and fills `info`.
    if unsafe { libc::dladdr(addr as *const _, &mut info) } == 0 {
        return None;
    }
    Some(info.dli_fbase as usize)
}

/// "file+0xOFFSET" (for addr2line), or the bare address.
fn describe(addr: usize) -> String {
    if addr == 0 {
        return "an unknown caller".into();
    }
    // SAFETY: as in `module_of`.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: as in `module_of`.
    if unsafe { libc::dladdr(addr as *const _, &mut info) } == 0 || info.dli_fname.is_null() {
        return format!("{addr:#x}");
    }
    // SAFETY: dladdr gave a NUL-terminated file name.
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    let base = file.rsplit('/').next().unwrap_or(&file).to_string();
    format!("{base}+{:#x}", addr - info.dli_fbase as usize)
}

/// Reports a misuse on one line of stderr and aborts.
#[cold]
pub(crate) fn die(msg: String) -> ! {
    let line = format!("bufpool: {msg}\n");
    // SAFETY: writing a live buffer to fd 2; a failure changes nothing.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::abort()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_address_map_agrees_with_a_model() {
        let mut m = AddrMap::new();
        let mut model = std::collections::BTreeMap::new();
        let mut x = 1u64;
        for step in 0..20_000u64 {
            x = mix(x + step);
            // Few distinct keys, so that removals and replacements are common.
            let key = ((x % 500) as usize + 1) * 16;
            match x >> 62 {
                0 | 1 => {
                    assert!(m.insert(key, step as usize));
                    model.insert(key, step as usize);
                }
                2 => {
                    m.remove(key);
                    model.remove(&key);
                }
                _ => assert_eq!(m.get(key), model.get(&key).copied(), "step {step}"),
            }
            assert_eq!(m.len, model.len());
        }
        for (&k, &v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
    }

    #[test]
    fn the_pattern_catches_any_changed_byte() {
        let mut buf = vec![0u8; 37];
        // SAFETY: `buf` has 37 bytes.
        unsafe { fill(buf.as_mut_ptr(), 37, 12345) };
        // SAFETY: `buf` has 37 bytes.
        assert_eq!(unsafe { check(buf.as_mut_ptr(), 37, 12345) }, None);
        for at in [0, 8, 36] {
            buf[at] ^= 1;
            // SAFETY: `buf` has 37 bytes.
            assert_eq!(unsafe { check(buf.as_mut_ptr(), 37, 12345) }, Some(at));
            buf[at] ^= 1;
        }
        // SAFETY: `buf` has 37 bytes.
        assert!(unsafe { check(buf.as_mut_ptr(), 37, 12346) }.is_some(), "another seed, another pattern");
    }
}
