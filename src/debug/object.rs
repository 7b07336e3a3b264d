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

use super::{in_critical, M_CALLER, M_COLD_FIRST, M_FAIL, M_INTEGRITY, M_POISON, M_TAG, M_UAF};
use crate::os::heap_alloc;
use crate::pool::Pool;
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};

const WORD: usize = core::mem::size_of::<usize>();
const NONE: usize = usize::MAX;

/// Live objects of `tag`/`uaf` pools: address → owning pool.
static REGISTRY: Lock<AddrMap> = Lock::new(AddrMap::new());
/// Seeds of the integrity patterns: each fill gets a new one.
static SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
/// State of the fault-injection generator.
static FAIL_RNG: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

fn registry() -> Guard<'static, AddrMap> {
    REGISTRY.lock()
}

/// A small lock of our own rather than `std::sync::Mutex`: its acquire and
/// release are atomics compiled into this crate, so ThreadSanitizer sees
/// the hand-over of objects between threads through a debug pool (std's
/// mutex is compiled into an uninstrumented std). Debug paths only.
struct Lock<T> {
    held: AtomicBool,
    val: UnsafeCell<T>,
}

// SAFETY: `val` is only reached through a `Guard`, one at a time.
unsafe impl<T: Send> Sync for Lock<T> {}

struct Guard<'a, T>(&'a Lock<T>);

impl<T> Lock<T> {
    const fn new(v: T) -> Self {
        Lock { held: AtomicBool::new(false), val: UnsafeCell::new(v) }
    }

    fn lock(&self) -> Guard<'_, T> {
        // Acquire: pairs with the Release in `drop(Guard)`: we see the last holder's writes.
        while self.held.swap(true, Ordering::Acquire) {
            std::thread::yield_now();
        }
        Guard(self)
    }

    /// Takes the lock and keeps it past this call (across `fork()`).
    fn lock_forever(&self) {
        std::mem::forget(self.lock());
    }

    /// Releases a lock taken by `lock_forever`.
    ///
    /// # Safety
    /// This thread took it with `lock_forever` and holds no guard of it.
    unsafe fn unlock_forever(&self) {
        // Release: as in `drop(Guard)`.
        self.held.store(false, Ordering::Release);
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.0.val.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock.
        unsafe { &mut *self.0.val.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // Release: publishes our writes to the next holder.
        self.0.held.store(false, Ordering::Release);
    }
}

/// The object modes of one pool, fixed at its creation.
pub(crate) struct PoolDebug {
    modes: u32,
    poison: u8,
    fail_pct: u32,
    /// Offsets of the debug words from the object's start, or `NONE`.
    tag_at: usize,
    caller_at: usize,
    seed_at: usize,
    /// Bytes of debug words after the object.
    extra: usize,
    /// Idle objects; None when they go straight back to the OS.
    idle: Option<Lock<VecDeque<usize>>>,
}

impl PoolDebug {
    /// The modes set now, for a new pool of `size` bytes. `keep_idle`: the
    /// pool has a shared cache (its idle objects then go to the store).
    pub(crate) fn snapshot(size: usize, keep_idle: bool) -> Self {
        let (modes, poison, fail_pct) = super::object_modes();
        let mut at = size.next_multiple_of(WORD);
        let mut word = |bit: u32| {
            if modes & bit == 0 {
                return NONE;
            }
            at += WORD;
            at - WORD
        };
        let (tag_at, caller_at, seed_at) = (word(M_TAG), word(M_CALLER), word(M_INTEGRITY));
        let extra = if modes == 0 { 0 } else { at - size };
        let keep = modes != 0 && keep_idle && modes & M_UAF == 0;
        PoolDebug {
            modes,
            poison,
            fail_pct,
            tag_at,
            caller_at,
            seed_at,
            extra,
            idle: keep.then(|| Lock::new(VecDeque::new())),
        }
    }

    /// Any object mode on: the pool takes the slow path for everything.
    #[inline(always)]
    pub(crate) fn on(&self) -> bool {
        self.modes != 0
    }

    /// Bytes of debug words to add after each object.
    pub(crate) fn extra(&self) -> usize {
        self.extra
    }

    /// Two pools may merge only with the same modes.
    pub(crate) fn same(&self, o: &PoolDebug) -> bool {
        (self.modes, self.poison, self.fail_pct) == (o.modes, o.poison, o.fail_pct)
    }

    fn has(&self, bit: u32) -> bool {
        self.modes & bit != 0
    }

    /// The modes, for `dump_pools_to_fd`: " [DEBUG a,b]", or nothing.
    /// Written without heap allocation.
    pub(crate) fn describe(&self, w: &mut impl std::fmt::Write) {
        let names = ["poison", "integrity", "tag", "caller", "cold-first", "uaf", "fail"];
        let mut sep = " [DEBUG ";
        for (i, n) in names.iter().enumerate() {
            if self.modes & (1 << i) != 0 {
                let _ = write!(w, "{sep}{n}");
                sep = ",";
            }
        }
        if self.modes != 0 {
            let _ = w.write_str("]");
        }
    }

    /// Before `fork()`: takes this pool's store.
    pub(crate) fn fork_lock(&self) {
        if let Some(store) = &self.idle {
            store.lock_forever();
        }
    }

    /// After `fork()`, parent or child: lets the store go.
    ///
    /// # Safety
    /// `fork_lock` took it on this thread.
    pub(crate) unsafe fn fork_unlock(&self) {
        if let Some(store) = &self.idle {
            // SAFETY: caller guarantee.
            unsafe { store.unlock_forever() };
        }
    }

    /// `fail=PERCENT`: should this allocation fail? Never inside a
    /// `critical()` section.
    pub(crate) fn inject_failure(&self) -> bool {
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
        // SAFETY: `at` is inside the object's allocation (caller guarantee).
        unsafe { p.add(at).cast::<usize>().read_unaligned() }
    }

    /// # Safety
    /// As `word`, and the caller owns `p`.
    unsafe fn set_word(&self, p: *mut u8, at: usize, v: usize) {
        // SAFETY: as above; the object is ours to write.
        unsafe { p.add(at).cast::<usize>().write_unaligned(v) }
    }

    /// " (last allocated or freed by X)" when `caller` is on.
    ///
    /// # Safety
    /// As `word`.
    unsafe fn last(&self, p: *mut u8) -> String {
        if !self.has(M_CALLER) {
            return String::new();
        }
        // SAFETY: forwarded.
        format!(", last allocated or freed by {}", describe(unsafe { self.word(p, self.caller_at) }))
    }

    /// "; this call from X" when `caller` is on.
    fn this_call(&self) -> String {
        if self.has(M_CALLER) {
            format!(", this call from {}", describe(caller()))
        } else {
            String::new()
        }
    }

    // ---- hooks the pool calls -------------------------------------------

    /// An object leaves the pool for a caller (new or reused): tag it
    /// allocated, note the caller, poison it.
    ///
    /// # Safety
    /// `p` is an object of `pool` that the caller now owns.
    pub(crate) unsafe fn hand_out(&self, pool: &Pool, p: *mut u8) {
        if self.has(M_TAG) {
            // SAFETY: an owned object of this pool, with its tag word.
            unsafe { self.set_word(p, self.tag_at, tag(pool, false)) };
        }
        if self.has(M_CALLER) {
            // SAFETY: as above, with its caller word.
            unsafe { self.set_word(p, self.caller_at, caller()) };
        }
        if self.has(M_POISON) {
            // SAFETY: an owned object of `size` bytes.
            unsafe { p.write_bytes(self.poison, pool.size) };
        }
    }

    /// A caller gives `p` back to `pool`: aborts with one line on stderr
    /// when it is not an object of this pool held by a caller; else marks it
    /// idle and notes the caller.
    ///
    /// # Safety
    /// In `tag` or `uaf` mode any `p`; otherwise `p` is an object of `pool`.
    pub(crate) unsafe fn check_free(&self, pool: &Pool, p: *mut u8) {
        let name = pool.name();
        if self.has(M_TAG | M_UAF) {
            let reg = registry();
            match reg.get(p as usize) {
                None => die(format!(
                    "foreign free of {p:p} to pool '{name}' (not an object of any tag/uaf-mode pool, or already \
                     returned to the OS){}",
                    self.this_call()
                )),
                Some(owner) if owner != pool as *const Pool as usize => {
                    // SAFETY: a pool outlives its registered objects (it
                    // unregisters them all before it is freed) and we hold the lock.
                    let other = unsafe { &*(owner as *const Pool) }.name();
                    die(format!(
                        "wrong-pool free of {p:p} to pool '{name}' (it belongs to pool '{other}'){}",
                        self.this_call()
                    ))
                }
                Some(_) => {}
            }
        }
        if self.has(M_TAG) {
            // SAFETY: registered in this pool, so mapped with its words.
            let t = unsafe { self.word(p, self.tag_at) };
            if t == tag(pool, true) {
                // SAFETY: as above.
                die(format!("double free of {p:p} to pool '{name}'{}{}", unsafe { self.last(p) }, self.this_call()));
            }
            if t != tag(pool, false) {
                die(format!(
                    "overrun free of {p:p} to pool '{name}' (the tag word after its {} bytes was overwritten){}{}",
                    pool.size,
                    // SAFETY: as above.
                    unsafe { self.last(p) },
                    self.this_call()
                ));
            }
            // SAFETY: as above; the caller gives it up.
            unsafe { self.set_word(p, self.tag_at, tag(pool, true)) };
        }
        if self.has(M_CALLER) {
            // SAFETY: an object of this pool that the caller gives up.
            unsafe { self.set_word(p, self.caller_at, caller()) };
        }
    }

    /// Keeps an idle object; false when the pool keeps none (the caller
    /// frees it to the OS).
    ///
    /// # Safety
    /// `p` is an object of `pool`, checked by `check_free`, owned by the caller.
    pub(crate) unsafe fn push_idle(&self, pool: &Pool, p: *mut u8) -> bool {
        let Some(store) = &self.idle else { return false };
        if self.has(M_INTEGRITY) {
            // Relaxed: only needs a different value each time.
            let seed = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed) as usize;
            // SAFETY: owned object with its words.
            unsafe {
                fill(p, pool.size, seed);
                self.set_word(p, self.seed_at, seed);
            }
        }
        let mut s = store.lock();
        // No memory for the store: the object goes to the OS instead.
        if s.try_reserve(1).is_err() {
            return false;
        }
        s.push_back(p as usize);
        true
    }

    /// Takes an idle object (the coldest with `cold-first`), checking that
    /// nothing wrote to it while idle. Null when there is none.
    pub(crate) fn pop_idle(&self, pool: &Pool) -> *mut u8 {
        let Some(store) = &self.idle else { return null_mut() };
        let mut s = store.lock();
        let p = if self.has(M_COLD_FIRST) { s.pop_front() } else { s.pop_back() };
        drop(s);
        let Some(p) = p.map(|a| a as *mut u8) else { return null_mut() };
        let name = pool.name();
        if self.has(M_INTEGRITY) {
            // SAFETY: an idle object of this pool, now ours.
            let seed = unsafe { self.word(p, self.seed_at) };
            // SAFETY: as above.
            if let Some(at) = unsafe { check(p, pool.size, seed) } {
                die(format!(
                    "write after free of {p:p} in pool '{name}' (byte {at} of {} changed while idle){}",
                    pool.size,
                    // SAFETY: as above.
                    unsafe { self.last(p) }
                ));
            }
        }
        // SAFETY: as above.
        if self.has(M_TAG) && unsafe { self.word(p, self.tag_at) } != tag(pool, true) {
            die(format!(
                "write after free of {p:p} in pool '{name}' (the tag word after its {} bytes changed while idle){}",
                pool.size,
                // SAFETY: as above.
                unsafe { self.last(p) }
            ));
        }
        p
    }

    /// Takes an object from the OS: its own mapping in `uaf` mode, else the
    /// heap; registers it in `tag`/`uaf` modes.
    pub(crate) fn os_alloc(&self, pool: &Pool) -> *mut u8 {
        let p = if self.has(M_UAF) {
            map_object(pool.alloc_size, pool.align)
        } else {
            heap_alloc(pool.alloc_size, pool.align)
        };
        if !p.is_null() && self.has(M_TAG | M_UAF) && !registry().insert(p as usize, pool as *const Pool as usize) {
            // No memory to register it: fail the allocation rather than hand
            // out an object the checks would call foreign.
            // SAFETY: just made above, never handed out.
            unsafe { self.free_unregistered(p, pool) };
            return null_mut();
        }
        p
    }

    /// Gives an object back to the OS: unmapped in `uaf` mode, else freed.
    ///
    /// # Safety
    /// `p` came from `os_alloc` of `pool` and is in no list.
    pub(crate) unsafe fn os_free(&self, pool: &Pool, p: *mut u8) {
        if self.has(M_TAG | M_UAF) {
            registry().remove(p as usize);
        }
        // SAFETY: the caller's guarantee, passed on unchanged.
        unsafe { self.free_unregistered(p, pool) };
    }

    /// # Safety
    /// As `os_free`, and `p` is not in the registry.
    unsafe fn free_unregistered(&self, p: *mut u8, pool: &Pool) {
        if self.has(M_UAF) {
            // SAFETY: caller guarantee: a mapping made by `map_object`.
            unsafe { unmap_object(p, pool.alloc_size) };
        } else {
            // SAFETY: caller guarantee: a heap block.
            unsafe { libc::free(p.cast()) };
        }
    }
}

/// Takes the registry across `fork()`.
pub(crate) fn fork_lock() {
    REGISTRY.lock_forever();
}

/// # Safety
/// `fork_lock` took it on this thread.
pub(crate) unsafe fn fork_unlock() {
    // SAFETY: caller guarantee.
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

/// The tag word of an object of `pool`.
fn tag(pool: &Pool, idle: bool) -> usize {
    // The secret changes with ASLR, so a tag is not a plain pool address.
    let secret = (tag as *const () as usize).rotate_left(29) ^ 0x6b43_a9b5_9e37_79b9;
    ((pool as *const Pool as usize ^ secret) & !1) | idle as usize
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

fn page() -> usize {
    // SAFETY: sysconf has no precondition.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Maps an object of `len` bytes at the end of its own pages (so that an
/// overrun past its debug words faults), aligned on `align` (0: 16).
fn map_object(len: usize, align: usize) -> *mut u8 {
    let pg = page();
    let size = len.next_multiple_of(pg);
    let align = align.max(16);
    let extra = if align > pg { align } else { 0 };
    // SAFETY: an anonymous private mapping has no precondition.
    let raw = unsafe {
        libc::mmap(null_mut(), size + extra, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if raw == libc::MAP_FAILED {
        return null_mut();
    }
    let raw = raw as usize;
    if extra == 0 {
        // Below a page, the object starts within the first page: see unmap_object.
        return (raw + ((size - len) & !(align - 1))) as *mut u8;
    }
    let start = raw.next_multiple_of(align);
    // SAFETY: both ranges are parts of the mapping just made, outside [start, start + size).
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut _, start - raw);
        }
        if raw + extra > start {
            libc::munmap((start + size) as *mut _, raw + extra - start);
        }
    }
    start as *mut u8
}

/// # Safety
/// `p` came from `map_object(len, _)`: its mapping starts at its page.
unsafe fn unmap_object(p: *mut u8, len: usize) {
    let pg = page();
    let base = p as usize & !(pg - 1);
    // SAFETY: caller guarantee: [base, base + len rounded to pages) is that mapping.
    unsafe { libc::munmap(base as *mut _, len.next_multiple_of(pg)) };
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
fn die(msg: String) -> ! {
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
        // SAFETY: as above.
        assert_eq!(unsafe { check(buf.as_mut_ptr(), 37, 12345) }, None);
        for at in [0, 8, 36] {
            buf[at] ^= 1;
            // SAFETY: as above.
            assert_eq!(unsafe { check(buf.as_mut_ptr(), 37, 12345) }, Some(at));
            buf[at] ^= 1;
        }
        // SAFETY: as above.
        assert!(unsafe { check(buf.as_mut_ptr(), 37, 12346) }.is_some(), "another seed, another pattern");
    }

    #[test]
    fn mapped_objects_end_at_their_last_page_and_honour_alignment() {
        let pg = page();
        for (len, align) in [(100, 0), (pg, 0), (pg + 8, 64), (40, 4 * pg)] {
            let p = map_object(len, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align.max(16), 0);
            // SAFETY: the mapping holds `len` bytes at `p`.
            unsafe { p.write_bytes(7, len) };
            if align <= pg {
                assert!(len.next_multiple_of(pg) - (p as usize % pg + len) < align.max(16), "the object ends the mapping");
            }
            // SAFETY: made by map_object(len, _).
            unsafe { unmap_object(p, len) };
        }
    }
}
