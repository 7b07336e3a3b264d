//! The buffer wait queue: entities that could not get a buffer wait here,
//! each with its own callback, until `offer` wakes them.
//!
//! One FIFO per criticality class, intrusive doubly-linked lists threaded
//! through the private part of the C `struct buffer_wait`, all under one
//! mutex. Callbacks run with the mutex released, so they may call anything
//! (allocate, queue, dequeue, offer).
//!
//! The dequeue guarantee. While a waiter's callback runs, a record of the
//! run (on the offering thread's stack) sits in the queue's list of running
//! callbacks, naming the waiter; it leaves that list only when the callback
//! has returned. Offers skip a waiter that has a running record, so a
//! callback never runs twice at once, even one that dequeued and queued
//! itself again. `dequeue` from another thread waits on the condition
//! variable while the waiter has a running record, whatever the callback
//! did meanwhile; `dequeue` from the thread that runs the callback (the
//! callback itself, or anything it calls) cannot wait for itself: it
//! unlinks the waiter and marks the record, and the offer then never
//! touches the waiter again (the callback may have freed it). Once
//! `dequeue` returns, the waiter is unlinked and no callback of it runs, so
//! no offer can reach it: the caller may free it.
//!
//! Waiting by margin. Each queued waiter also carries the margin its
//! callback claims with (`b_queue_margin`; the class's reserve tier for
//! `b_queue_crit`), counted per bucket under the mutex, with a map of the
//! non-empty buckets read without it (`fair_busy`: the refusal rule of
//! `b_alloc_margin_fair`). An offer by margin (`offer_fit`) calls each
//! waiter whose margin fits what can be had, passing over the others; it
//! keeps one buffer for a fitting waiter whose callback runs in another
//! offer, and marks that run `missed`: a callback that then answers 0 is
//! looked at again by the offer that ran it, with what can be had then.
//! `queue_fit` tells, under the mutex and with the waiter in, whether the
//! caller may claim at once, so that no release falls between a failed
//! allocation and the queueing.
//!
//! Each offer stamps the waiters it calls (`WaitLink::seen`) so as to call each
//! once. An offer made from a callback (same thread, `NEST`) uses the stamp
//! of the offer that runs the callback: with a stamp of its own it would
//! overwrite the outer offer's, which would then call a waiter twice.

use crate::sync::{AtomicU32, AtomicU64, Condvar, Mutex, MutexGuard, Ordering};
use core::ffi::{c_int, c_void};
use std::ptr::null_mut;

pub(crate) use crate::flags::CLASSES;
/// Words of the private part of `struct buffer_wait`.
const PRIVATE_WORDS: usize = 6;

/// An entity waiting for a buffer (C: `struct buffer_wait`). C code embeds
/// it by value, sets it up with `buffer_wait_init` (or zeroes it), and
/// must not change it while it is queued. `b_dequeue` it before freeing it.
#[repr(C)]
pub struct BufferWait {
    /// Handed to `wakeup_cb`; `offer_buffers(from, ...)` skips waiters whose
    /// target is `from`.
    pub target: *mut c_void,
    /// Called by `offer_buffers` when a buffer may be had, with no lock of
    /// the library held. Non-zero: woken, the waiter leaves the queue; zero:
    /// it stays queued in its place.
    pub wakeup_cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
    /// Private to the library (list linkage and state): all zero when not queued.
    pub private_: [usize; 6],
}

/// The private part, laid over `BufferWait::private_`. Only touched under
/// the queue mutex.
#[repr(C)]
struct WaitLink {
    next: *mut BufferWait,
    prev: *mut BufferWait,
    /// The last offer that visited it (so that an offer visits it once).
    seen: usize,
    /// 0 when not queued; while queued, its class + 1 in the low
    /// `CLASS_BITS` bits and above them the margin its claim will use
    /// (`pack`).
    queued: usize,
    /// `magic(w)` while queued, 0 when not: a queued waiter whose memory
    /// was reused (a stack waiter out of scope, a freed one) or overwritten
    /// is found out before its links or callback are used (`intact`).
    magic: usize,
    /// The `State::gen` under which its margin was counted in
    /// `State::margins`: a waiter lost behind broken ones (`evict`) was
    /// dropped from the counts by a recount and must not be taken out twice.
    gen: usize,
}

/// Bits of `WaitLink::queued` that hold the class + 1.
const CLASS_BITS: u32 = 8;
const CLASS_MASK: usize = (1 << CLASS_BITS) - 1;

/// The `queued` word of a waiter of `class` with `margin`.
fn pack(class: usize, margin: usize) -> usize {
    debug_assert!(class < CLASSES);
    (class + 1) | (margin.min(usize::MAX >> CLASS_BITS) << CLASS_BITS)
}

impl WaitLink {
    /// Its class + 1 (0: not queued).
    fn class1(&self) -> usize {
        self.queued & CLASS_MASK
    }

    /// The margin its claim will use (meaningful while queued).
    fn margin(&self) -> usize {
        self.queued >> CLASS_BITS
    }
}

/// Margins are counted in this many buckets, the last one for every margin
/// from `MARGIN_BUCKETS - 1` up (`bucket`): the refusal rule of
/// `b_alloc_margin_fair` tells margins apart up to 62 and takes the larger
/// ones as equal.
pub(crate) const MARGIN_BUCKETS: usize = 64;

fn bucket(margin: usize) -> usize {
    margin.min(MARGIN_BUCKETS - 1)
}

/// Mixed with a waiter's address into its `magic` word.
const WAIT_MAGIC: usize = 0x5bd1_e995_27d4_eb2d_u64 as usize;

/// The magic word of a waiter queued at `w`.
fn magic(w: *const BufferWait) -> usize {
    (w as usize).rotate_left(23) ^ WAIT_MAGIC
}

/// Is the queued waiter `w` as the queue left it? Its `magic` word and its
/// class.
///
/// # Safety
/// `w` is readable (a waiter, or memory that was one) and the mutex is held.
unsafe fn intact(w: *mut BufferWait, class: usize) -> bool {
    // SAFETY: the caller's guarantee; only read.
    let l = unsafe { link(w) };
    l.magic == magic(w) && l.class1() == class + 1
}

/// A queued waiter that is no longer one (`intact` said so): aborts under
/// an object debug mode, else returns and the queue drops it.
#[cold]
fn broken_waiter(w: *mut BufferWait, what: &str) {
    let pool = crate::dynbuf::buffer_pool();
    #[cfg(all(test, not(loom)))]
    if tests::QUIET.with(|q| q.get()) {
        return; // a unit test of the non-debug result, beside tests that turn modes on
    }
    if pool.map_or(crate::debug::object_modes().0 != 0, |p| p.debugged()) {
        crate::debug::die(format!(
            "{what} of stale waiter {w:p} to pool '{}' (its private part is not what the queue wrote: freed, out \
             of scope or overwritten while queued, or never set up by buffer_wait_init)",
            pool.map_or("buffer", |p| p.name())
        ));
    }
}

const _: () = assert!(core::mem::size_of::<WaitLink>() <= PRIVATE_WORDS * core::mem::size_of::<usize>());
const _: () = assert!(core::mem::size_of::<BufferWait>() == (PRIVATE_WORDS + 2) * core::mem::size_of::<usize>());
const _: () = assert!(core::mem::align_of::<WaitLink>() <= core::mem::align_of::<BufferWait>());

// The stamp of the offer whose callback this thread runs (0: none).
#[cfg(not(loom))]
std::thread_local! { static NEST: core::cell::Cell<usize> = const { core::cell::Cell::new(0) }; }
#[cfg(loom)]
loom::thread_local! { static NEST: core::cell::Cell<usize> = core::cell::Cell::new(0); }

/// What `WaitQueue::queue_fit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Not queued: the waiter has no callback.
    Refused,
    /// Queued (or already queued).
    Queued,
    /// Queued, and a buffer may be had now with no other waiter first in
    /// line: the caller may claim it at once.
    Claim,
}

/// One running callback, on the offering thread's stack, linked into
/// `State::running` from just before the call until just after it.
struct Running {
    /// The waiter whose callback runs. Only compared once `dequeued` is set
    /// (the callback may have freed it).
    w: *mut BufferWait,
    thread: usize,
    next: *mut Running,
    /// Set by `dequeue` from the running thread: the offer must forget the waiter.
    dequeued: bool,
    /// Set by `queue` while the callback runs: a new queueing, which a
    /// non-zero return must not undo (the waiter goes to the tail instead).
    requeued: bool,
    /// Set by another offer that found the waiter running and passed it
    /// over: if the callback answers 0, buffers may have come back since it
    /// looked, so the offer that runs it looks again (`settle`).
    missed: bool,
    /// The stamp of the last offer by margin that kept a buffer for it
    /// while it ran (`next_due`): each offer keeps one at most once.
    kept: usize,
}

/// # Safety
/// `w` points to a live `BufferWait` and the caller holds the queue mutex.
#[inline(always)]
unsafe fn link<'a>(w: *mut BufferWait) -> &'a mut WaitLink {
    // SAFETY: `private_` is big and aligned enough for `WaitLink` (asserted above);
    // the mutex gives exclusive access to every link (caller guarantee).
    unsafe { &mut *core::ptr::addr_of_mut!((*w).private_).cast::<WaitLink>() }
}

struct State {
    head: [*mut BufferWait; CLASSES],
    tail: [*mut BufferWait; CLASSES],
    /// Offers so far, to stamp `WaitLink::seen`.
    seq: usize,
    /// Threads waiting in `dequeue` for a callback to end.
    dequeuers: usize,
    /// The records of the callbacks running now.
    running: *mut Running,
    /// Queued waiters counted by the bucket of their margin (`bucket`),
    /// those of generation `gen` (see `WaitLink::gen`).
    margins: [u32; MARGIN_BUCKETS],
    gen: usize,
}

impl State {
    /// The record of `w`'s running callback, or null.
    fn running_of(&self, w: *mut BufferWait) -> *mut Running {
        let mut r = self.running;
        // SAFETY: records in the list are alive: each offer unlinks its own
        // before its stack frame ends; the mutex is held (we have `&self`).
        while !r.is_null() && unsafe { (*r).w } != w {
            // SAFETY: `r` is a live record of the list (as in the loop test), mutex held.
            r = unsafe { (*r).next };
        }
        r
    }

    /// Unlinks a record from `running`.
    fn forget_run(&mut self, rec: *mut Running) {
        let mut at: *mut *mut Running = &mut self.running;
        // SAFETY: as in `running_of`; `rec` is in the list (pushed by its offer).
        unsafe {
            while *at != rec {
                debug_assert!(!(*at).is_null(), "a running record is in the list until its offer removes it");
                at = &mut (**at).next;
            }
            *at = (*rec).next;
        }
    }
}

// SAFETY: the raw pointers are waiters owned by C callers, reached only under the mutex.
unsafe impl Send for State {}

/// A set of per-class FIFO queues.
pub struct WaitQueue {
    state: Mutex<State>,
    done: Condvar,
    /// Bit `c` set when class `c` has a waiter. Written under the mutex,
    /// read without it as a hint (the refusal rule of `b_alloc_crit`).
    map: AtomicU32,
    /// Bit `b` set when a waiter whose margin is in bucket `b` is queued.
    /// Written under the mutex, read without it as a hint (the refusal rule
    /// of `b_alloc_margin_fair`).
    mmap: AtomicU64,
    /// False only in a loom model's deliberate break: a running waiter
    /// another offer passed over is not looked at again (`Running::missed`).
    #[cfg(loom)]
    recall: bool,
}

const EMPTY: State = State {
    head: [null_mut(); CLASSES],
    tail: [null_mut(); CLASSES],
    seq: 0,
    dequeuers: 0,
    running: null_mut(),
    margins: [0; MARGIN_BUCKETS],
    gen: 0,
};

#[cfg(not(loom))]
static GLOBAL: WaitQueue =
    WaitQueue { state: Mutex::new(EMPTY), done: Condvar::new(), map: AtomicU32::new(0), mmap: AtomicU64::new(0) };

/// The process-wide queue of `b_queue` / `offer_buffers`.
#[cfg(not(loom))]
pub(crate) fn global() -> &'static WaitQueue {
    &GLOBAL
}

#[cfg(loom)]
loom::lazy_static! {
    static ref GLOBAL: WaitQueue = WaitQueue::new();
}

#[cfg(loom)]
pub(crate) fn global() -> &'static WaitQueue {
    &GLOBAL
}

/// Zeroes a waiter's private part: not queued.
///
/// # Safety
/// `w` is valid for writes and not queued.
pub(crate) unsafe fn init(
    w: *mut BufferWait,
    target: *mut c_void,
    cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
) {
    // SAFETY: the caller's guarantee: `w` is valid for writes and not queued.
    unsafe {
        (*w).target = target;
        (*w).wakeup_cb = cb;
        (*w).private_ = [0; PRIVATE_WORDS];
    }
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    pub fn new() -> Self {
        WaitQueue {
            state: Mutex::new(EMPTY),
            done: Condvar::new(),
            map: AtomicU32::new(0),
            mmap: AtomicU64::new(0),
            #[cfg(loom)]
            recall: true,
        }
    }

    /// The deliberate break of the loom models: no second look at a waiter
    /// whose callback declined after another offer passed it over.
    #[cfg(loom)]
    fn without_recall() -> Self {
        WaitQueue { recall: false, ..Self::new() }
    }

    #[cfg(loom)]
    fn recalls(&self) -> bool {
        self.recall
    }

    #[cfg(not(loom))]
    fn recalls(&self) -> bool {
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is a waiter of class `class` or a more critical one queued? A hint:
    /// it may lag a concurrent queue or dequeue on another thread.
    pub fn busy_from(&self, class: usize) -> bool {
        // Relaxed: a hint only; no memory is reached through it.
        self.map.load(Ordering::Relaxed) >> class != 0
    }

    /// Is a waiter whose margin is at most `margin` queued (its callback
    /// running or not)? A hint, as `busy_from`; margins from
    /// `MARGIN_BUCKETS - 1` up count as equal.
    pub fn fair_busy(&self, margin: usize) -> bool {
        let b = bucket(margin);
        let upto = if b == MARGIN_BUCKETS - 1 { u64::MAX } else { (1u64 << (b + 1)) - 1 };
        // Relaxed: a hint only; no memory is reached through it.
        self.mmap.load(Ordering::Relaxed) & upto != 0
    }

    /// Appends `w` to the FIFO of `class`, its claim to use `margin`.
    /// Already queued: stays in its place, class and margin (idempotent);
    /// if its callback is running, a non-zero return will send it to the
    /// tail instead of out. Returns false when `w` has no callback.
    ///
    /// # Safety
    /// `w` is a live waiter (initialised or zeroed) that its owner will
    /// dequeue before freeing.
    pub unsafe fn queue(&self, class: usize, w: *mut BufferWait, margin: usize) -> bool {
        // SAFETY: the caller's guarantee.
        unsafe { self.queue_fit(class, w, margin, false, None::<fn() -> isize>) != Queued::Refused }
    }

    /// `queue`, except that an already queued waiter takes the new margin
    /// when `retune`; then, with `avail` (the buffers that can be had now), tells
    /// whether the caller may claim a buffer at once: no other queued waiter
    /// has a margin at most `margin` (by bucket) and `avail() >= 1 + margin`.
    /// Checked under the mutex after the queueing, so a release whose offer
    /// ran before the queueing is seen here, and one whose offer runs after
    /// it sees the waiter: no wake-up is lost between a failed allocation
    /// and the queueing.
    ///
    /// # Safety
    /// As `queue`.
    pub unsafe fn queue_fit(
        &self,
        class: usize,
        w: *mut BufferWait,
        margin: usize,
        retune: bool,
        avail: Option<impl FnOnce() -> isize>,
    ) -> Queued {
        let class = class.min(CLASSES - 1);
        // SAFETY: `w` is live (caller guarantee); reading the callback is a plain read.
        if unsafe { (*w).wakeup_cb.is_none() } {
            return Queued::Refused;
        }
        let mut st = self.lock();
        // SAFETY: live waiter, mutex held.
        unsafe { self.check(&mut st, w, "b_queue") };
        // SAFETY: live waiter, mutex held.
        let l = unsafe { link(w) };
        if l.queued != 0 {
            let rec = st.running_of(w);
            // SAFETY: records in the list are alive (see `running_of`).
            if !rec.is_null() && !unsafe { (*rec).dequeued } {
                // SAFETY: a live record of the list; its fields are written only under the mutex, held.
                unsafe { (*rec).requeued = true };
            }
            if retune && l.margin() != margin {
                // SAFETY: live and queued, mutex held.
                unsafe { Self::uncount(&mut st, w) };
                l.queued = pack(l.class1() - 1, margin);
                // SAFETY: as above.
                unsafe { Self::count(&mut st, w) };
                self.set_map(&st);
            }
        } else {
            // SAFETY: `w` is live (the caller's guarantee) and not queued (checked above); mutex held.
            unsafe { self.append(&mut st, class, w, margin) };
        }
        let Some(avail) = avail else { return Queued::Queued };
        let ahead: u32 = st.margins[..=bucket(margin)].iter().sum();
        // The waiter itself is among them (counted by `append` or above).
        if ahead <= 1 && avail() > margin as isize {
            Queued::Claim
        } else {
            Queued::Queued
        }
    }

    /// Counts a queued waiter's margin.
    ///
    /// # Safety
    /// `w` is live and queued; `st` is the held mutex.
    unsafe fn count(st: &mut State, w: *mut BufferWait) {
        // SAFETY: the caller's guarantee.
        let l = unsafe { link(w) };
        l.gen = st.gen;
        st.margins[bucket(l.margin())] += 1;
    }

    /// Takes a queued waiter's margin out of the counts, if they hold it.
    ///
    /// # Safety
    /// `w` is live and queued; `st` is the held mutex.
    unsafe fn uncount(st: &mut State, w: *mut BufferWait) {
        // SAFETY: the caller's guarantee.
        let l = unsafe { link(w) };
        if l.gen == st.gen {
            let n = &mut st.margins[bucket(l.margin())];
            debug_assert!(*n > 0, "a counted waiter is in its bucket");
            *n = n.saturating_sub(1);
        }
    }

    /// Counts the margins again from the lists (after an eviction, which
    /// loses the waiters between two broken ones without reading them):
    /// a new generation, so that a lost waiter's dequeue takes nothing out.
    ///
    /// # Safety
    /// `st` is the held mutex.
    unsafe fn recount(st: &mut State) {
        st.gen = st.gen.wrapping_add(1);
        st.margins = [0; MARGIN_BUCKETS];
        for class in 0..CLASSES {
            let mut cur = st.head[class];
            // SAFETY: reached from the head through intact queued waiters, which are live.
            while !cur.is_null() && unsafe { intact(cur, class) } {
                // SAFETY: as above.
                unsafe { Self::count(st, cur) };
                // SAFETY: as above.
                cur = unsafe { link(cur) }.next;
            }
        }
    }

    /// # Safety
    /// `w` is live and not queued; `st` is the held mutex.
    unsafe fn append(&self, st: &mut State, class: usize, w: *mut BufferWait, margin: usize) {
        // SAFETY: the caller's guarantee: `w` is live and the mutex is held.
        let l = unsafe { link(w) };
        l.queued = pack(class, margin);
        l.magic = magic(w);
        l.next = null_mut();
        l.prev = st.tail[class];
        if l.prev.is_null() {
            st.head[class] = w;
        } else {
            // SAFETY: a queued waiter is live (its owner dequeues it before freeing).
            unsafe { link(l.prev) }.next = w;
        }
        st.tail[class] = w;
        // SAFETY: live and now queued, mutex held.
        unsafe { Self::count(st, w) };
        self.set_map(st);
    }

    /// # Safety
    /// `w` is live (initialised or zeroed).
    pub unsafe fn is_queued(&self, w: *const BufferWait) -> bool {
        let mut st = self.lock();
        // SAFETY: caller guarantee; mutex held.
        unsafe { self.check(&mut st, w.cast_mut(), "b_is_queued") };
        // SAFETY: caller guarantee; mutex held; only read.
        unsafe { link(w.cast_mut()) }.queued != 0
    }

    /// A waiter whose private part says "queued" but whose `magic` word
    /// does not match (never initialised, or overwritten while queued):
    /// reported (`broken_waiter`), taken out of the list if it is in it,
    /// and left not queued. A waiter not queued is left as it is.
    ///
    /// # Safety
    /// `w` is live; `st` is the held mutex.
    unsafe fn check(&self, st: &mut State, w: *mut BufferWait, what: &str) {
        // SAFETY: the caller's guarantee.
        let l = unsafe { link(w) };
        if l.queued == 0 || (l.class1() != 0 && l.class1() <= CLASSES && l.magic == magic(w)) {
            return;
        }
        broken_waiter(w, what);
        for class in 0..CLASSES {
            // SAFETY: mutex held.
            if let Some(prev) = unsafe { Self::prev_of(st, class, w) } {
                // SAFETY: `prev` precedes `w` in `class` (or is null: head); mutex held.
                unsafe { self.evict(st, class, prev, w) };
            }
        }
        // SAFETY: the caller's guarantee: `w` is live.
        unsafe { *link(w) = WaitLink { next: null_mut(), prev: null_mut(), seen: 0, queued: 0, magic: 0, gen: 0 } };
    }

    /// The waiter before `w` in `class` (null when `w` is the head), found
    /// from the head through intact waiters; None when `w` is not reached.
    ///
    /// # Safety
    /// The mutex is held (`st`).
    unsafe fn prev_of(st: &State, class: usize, w: *mut BufferWait) -> Option<*mut BufferWait> {
        let mut prev = null_mut();
        let mut cur = st.head[class];
        while !cur.is_null() {
            if cur == w {
                return Some(prev);
            }
            // SAFETY: reached through intact queued waiters, which are live.
            if !unsafe { intact(cur, class) } {
                return None;
            }
            prev = cur;
            // SAFETY: as above.
            cur = unsafe { link(cur) }.next;
        }
        None
    }

    /// Takes the broken waiter `bad`, which follows `prev` (null: it is the
    /// head) in `class`, out of the list without reading its links: its
    /// successor is found from the tail, walking back through intact
    /// waiters. When another broken waiter stands in that walk, both go, and
    /// the waiters between the two are lost: never woken again, and their
    /// `b_dequeue` touches no broken neighbour (`unlink`). `bad` itself is
    /// never written.
    ///
    /// # Safety
    /// The mutex is held (`st`); `prev` is null or an intact waiter of `class`
    /// whose `next` is `bad`.
    unsafe fn evict(&self, st: &mut State, class: usize, prev: *mut BufferWait, bad: *mut BufferWait) {
        // The earliest intact waiter seen from the tail: the successor.
        let mut succ = null_mut();
        let mut cur = st.tail[class];
        // SAFETY: reached from the tail through intact queued waiters (each
        // tested before its `prev` is followed), which are live.
        while !cur.is_null() && cur != bad && unsafe { intact(cur, class) } {
            succ = cur;
            // SAFETY: as above.
            cur = unsafe { link(cur) }.prev;
        }
        if prev.is_null() {
            st.head[class] = succ;
        } else {
            // SAFETY: the caller's guarantee: an intact waiter, live.
            unsafe { link(prev) }.next = succ;
        }
        if succ.is_null() {
            st.tail[class] = prev;
        } else {
            // SAFETY: intact (tested in the walk), live.
            unsafe { link(succ) }.prev = prev;
        }
        // SAFETY: mutex held.
        unsafe { Self::recount(st) };
        self.set_map(st);
    }

    /// Takes `w` out of its queue; waits while its callback runs on another
    /// thread. Returns with `w` unlinked and not running: never touched again.
    ///
    /// # Safety
    /// `w` is live (initialised or zeroed).
    pub unsafe fn dequeue(&self, w: *mut BufferWait) {
        let me = crate::sync::thread_token();
        let mut st = self.lock();
        // SAFETY: `w` is live (the caller's guarantee); mutex held.
        unsafe { self.check(&mut st, w, "b_dequeue") };
        loop {
            let rec = st.running_of(w);
            if rec.is_null() {
                break;
            }
            // SAFETY: records in the list are alive (see `running_of`);
            // written only under the mutex.
            let rec = unsafe { &mut *rec };
            if rec.thread == me {
                // Our own callback (at any depth): it cannot end while we
                // wait. The record stays until it returns: other threads'
                // dequeues wait for it, other offers skip the waiter.
                rec.dequeued = true;
                break;
            }
            st.dequeuers += 1;
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
            st.dequeuers -= 1;
        }
        // SAFETY: `w` is live (the caller's guarantee); mutex held.
        unsafe { self.unlink(&mut st, w) };
    }

    /// # Safety
    /// `w` is live; `st` is the held mutex.
    unsafe fn unlink(&self, st: &mut State, w: *mut BufferWait) {
        // SAFETY: the caller's guarantee: `w` is live and the mutex is held.
        let l = unsafe { link(w) };
        if l.queued == 0 {
            return;
        }
        let class = l.class1() - 1;
        // SAFETY: live and queued, mutex held.
        unsafe { Self::uncount(st, w) };
        let (prev, next) = (l.prev, l.next);
        // A neighbour is written only while it still links back to `w`: a
        // waiter lost behind broken ones (`evict`) may have broken
        // neighbours, which are never written.
        // SAFETY: queued neighbours are live, or the readable memory of a
        // broken waiter (only read, by `intact`).
        let linked = |n: *mut BufferWait| unsafe { intact(n, class) };
        if prev.is_null() {
            if st.head[class] == w {
                st.head[class] = next;
            }
        } else if linked(prev) {
            // SAFETY: an intact queued neighbour, live.
            let pl = unsafe { link(prev) };
            if pl.next == w {
                pl.next = next;
            }
        }
        if next.is_null() {
            if st.tail[class] == w {
                st.tail[class] = prev;
            }
        } else if linked(next) {
            // SAFETY: an intact queued neighbour, live.
            let nl = unsafe { link(next) };
            if nl.prev == w {
                nl.prev = prev;
            }
        }
        debug_assert!(st.head[class] != w && st.tail[class] != w, "an unlinked waiter is neither head nor tail");
        l.next = null_mut();
        l.prev = null_mut();
        l.queued = 0;
        l.magic = 0;
        self.set_map(st);
    }

    fn set_map(&self, st: &State) {
        #[cfg(debug_assertions)]
        {
            let mut n = 0u32;
            for class in 0..CLASSES {
                let mut cur = st.head[class];
                // SAFETY: reached from the head through intact queued waiters (live); mutex held.
                while !cur.is_null() && unsafe { intact(cur, class) } {
                    n += 1;
                    // SAFETY: as above.
                    cur = unsafe { link(cur) }.next;
                }
            }
            debug_assert!(n <= st.margins.iter().sum::<u32>(), "every listed waiter's margin is counted");
        }
        let map = (0..CLASSES).filter(|&c| !st.head[c].is_null()).fold(0, |m, c| m | 1 << c);
        // Relaxed: a hint for readers without the mutex (see `busy_from`).
        self.map.store(map, Ordering::Relaxed);
        let mmap = (0..MARGIN_BUCKETS).filter(|&b| st.margins[b] != 0).fold(0u64, |m, b| m | 1 << b);
        // Relaxed: a hint for readers without the mutex (see `fair_busy`).
        self.mmap.store(mmap, Ordering::Relaxed);
    }

    /// The least margin bucket with a waiter (`MARGIN_BUCKETS` when none).
    /// Called with the mutex held: then exact.
    fn least_margin(&self) -> usize {
        // Relaxed: written under the mutex, which the caller holds.
        self.mmap.load(Ordering::Relaxed).trailing_zeros() as usize
    }

    /// Wakes waiters, most critical class first, FIFO within a class, while
    /// `budget() - woken > threshold`. `budget` is evaluated once, under the
    /// mutex, and only when a waiter is queued. A waiter whose target is
    /// `from` (non-null) is skipped and kept. Each waiter is called at most
    /// once per offer, counting the offers its callbacks make (they share
    /// its `seen` stamp, through `NEST`), except a second look (`settle`).
    /// `avail` is the buffers that can be had now, for that second look.
    /// Returns the number woken.
    pub fn offer(
        &self,
        from: *mut c_void,
        threshold: isize,
        budget: impl FnOnce() -> isize,
        avail: impl FnMut() -> isize,
    ) -> usize {
        self.run(from, Some((threshold, budget)), avail)
    }

    /// Wakes every queued waiter that can succeed: most critical class
    /// first, FIFO within a class, each waiter whose margin `m` fits what
    /// is left (`avail()` when the offer starts, less one per waiter woken:
    /// `left >= 1 + m`); waiters that do not fit are passed over, the walk
    /// goes on. `avail` runs under the mutex, once (again after a second
    /// look), and only when a waiter is queued. Returns the number woken.
    pub fn offer_fit(&self, from: *mut c_void, avail: impl FnMut() -> isize) -> usize {
        self.run(from, None::<(isize, fn() -> isize)>, avail)
    }

    fn run(
        &self,
        from: *mut c_void,
        count: Option<(isize, impl FnOnce() -> isize)>,
        mut avail: impl FnMut() -> isize,
    ) -> usize {
        let mut st = self.lock();
        if st.head.iter().all(|h| h.is_null()) {
            return 0;
        }
        // Budget mode (`offer`): threshold and budget, evaluated once.
        let mut budget = count.map(|(t, b)| (t, b()));
        // What is left to give by margin (fit mode, and second looks):
        // taken when first needed, again after a second look.
        let mut left: Option<isize> = None;
        // An offer made from a callback continues the offer that runs the
        // callback: same stamp, so neither calls again whom the other called.
        let seq = match NEST.with(|n| n.get()) {
            0 => {
                st.seq = st.seq.wrapping_add(1).max(1);
                st.seq
            }
            outer => outer,
        };
        let me = crate::sync::thread_token();
        let mut woken = 0;
        'classes: for class in (0..CLASSES).rev() {
            let mut cur = st.head[class];
            // A waiter looked at again (`settle`): it must fit, in either mode.
            let mut again: *mut BufferWait = null_mut();
            loop {
                if matches!(budget, Some((t, b)) if b <= t) {
                    break;
                }
                if budget.is_none() && left.is_none() {
                    left = Some(avail());
                }
                cur = self.next_due(&mut st, class, cur, seq, from, left.as_mut().filter(|_| budget.is_none()));
                if cur.is_null() {
                    break;
                }
                // SAFETY: queued, hence live; mutex held.
                let l = unsafe { link(cur) };
                if budget.is_none() || cur == again {
                    let have = *left.get_or_insert_with(&mut avail);
                    if budget.is_none() && have <= self.least_margin() as isize {
                        break 'classes; // no queued margin fits what is left
                    }
                    if have <= l.margin() as isize {
                        again = null_mut();
                        cur = l.next;
                        continue;
                    }
                }
                again = null_mut();
                let mut rec = Running {
                    w: cur,
                    thread: me,
                    next: st.running,
                    dequeued: false,
                    requeued: false,
                    missed: false,
                    kept: 0,
                };
                let rec_ptr: *mut Running = &mut rec;
                st.running = rec_ptr;
                l.seen = seq;
                // SAFETY: queued, hence live; C does not change a queued waiter.
                let (cb, target) = unsafe { ((*cur).wakeup_cb, (*cur).target) };
                drop(st);
                let outer = NEST.with(|n| n.replace(seq));
                // SAFETY: the C contract of `wakeup_cb`; queued waiters have one.
                let r = cb.map_or(0, |f| unsafe { f(target) });
                NEST.with(|n| n.set(outer));
                st = self.lock();
                st.forget_run(rec_ptr);
                if r != 0 {
                    if let Some((_, b)) = budget.as_mut() {
                        *b -= 1;
                    }
                    if let Some(l) = left.as_mut() {
                        *l -= 1;
                    }
                    woken += 1;
                }
                // SAFETY: `rec` is ours, out of the list; `dequeue`, `queue`
                // and other offers wrote it only under the mutex, which we hold again.
                let (next, look_again) = unsafe { self.settle(&mut st, class, &*rec_ptr, r != 0) };
                cur = next;
                if look_again {
                    // Declined while another offer passed it over: buffers
                    // came back meanwhile. Counted afresh, it is called
                    // again if it fits.
                    left = None;
                    // SAFETY: our own record, out of the list, mutex held.
                    again = unsafe { (*rec_ptr).w };
                    // SAFETY: not dequeued by its callback (`settle`), so live and queued.
                    unsafe { link(again) }.seen = 0;
                    cur = again;
                }
                if st.dequeuers != 0 {
                    self.done.notify_all();
                }
            }
        }
        woken
    }

    /// The first waiter from `cur` on that this offer may call: not running
    /// (in another offer, or up the stack of this one), not yet called by
    /// this offer (stamp `seq`), and whose target is not `from`. Null: none.
    /// A broken waiter met on the way (`intact`) is reported
    /// (`broken_waiter`) and dropped from the class (`evict`), never called.
    /// `cur` is null or a waiter of `class` (reached from its head, or the
    /// successor of an intact one); `st` is the held mutex. With `left` (an
    /// offer by margin), a running waiter passed over whose margin fits
    /// takes one from it: its callback, running, is about to claim that
    /// buffer, which this offer must not give to a waiter behind it.
    fn next_due(
        &self,
        st: &mut State,
        class: usize,
        mut cur: *mut BufferWait,
        seq: usize,
        from: *mut c_void,
        mut left: Option<&mut isize>,
    ) -> *mut BufferWait {
        while !cur.is_null() {
            // SAFETY: a queued waiter, or the memory of one: readable (the
            // caller's memory stays mapped for a stack or heap waiter).
            if !unsafe { intact(cur, class) } {
                broken_waiter(cur, "offer_buffers");
                // SAFETY: mutex held.
                let Some(prev) = (unsafe { Self::prev_of(st, class, cur) }) else { return null_mut() };
                // SAFETY: `prev` precedes `cur` in `class`; mutex held.
                unsafe { self.evict(st, class, prev, cur) };
                cur = if prev.is_null() {
                    st.head[class]
                } else {
                    // SAFETY: intact, live.
                    unsafe { link(prev) }.next
                };
                continue;
            }
            // SAFETY: queued waiters are live; mutex held (we have `st`).
            let l = unsafe { link(cur) };
            // SAFETY: queued waiters are live; C does not change a queued waiter.
            let skip_from = !from.is_null() && unsafe { (*cur).target } == from;
            let rec = st.running_of(cur);
            if l.seen != seq && !skip_from && rec.is_null() {
                return cur;
            }
            if let Some(left) = left.as_deref_mut().filter(|_| !skip_from && !rec.is_null()) {
                // SAFETY: a live record of the list (see `running_of`), written only under the mutex.
                let rec = unsafe { &mut *rec };
                if rec.kept != seq && *left > l.margin() as isize {
                    rec.kept = seq;
                    *left -= 1;
                }
            }
            // SAFETY: records in the list are alive (see `running_of`); written only under the mutex.
            if !skip_from && !rec.is_null() && unsafe { (*rec).thread } != crate::sync::thread_token() {
                // Running in another thread's offer: that offer looks at it
                // again if it declines (`settle`). Not for this thread's own
                // records: a callback that offers would call itself again.
                // SAFETY: as above.
                unsafe { (*rec).missed = true };
            }
            cur = l.next;
        }
        cur
    }

    /// Applies a callback's answer (`woken`: it returned non-zero) to its
    /// waiter once it returned; returns where the offer goes on in `class`,
    /// and whether to look at the waiter again: it declined, it is still
    /// queued, and another offer passed it over while it ran (a release
    /// came meanwhile, which the callback may not have seen).
    ///
    /// # Safety
    /// `rec` is the record of the run that just ended, out of the running
    /// list; `st` is the held mutex.
    unsafe fn settle(&self, st: &mut State, class: usize, rec: &Running, woken: bool) -> (*mut BufferWait, bool) {
        if rec.dequeued {
            // Dequeued by its own callback: it may be gone. Rescan the class;
            // the `seen` stamps keep the order.
            return (st.head[class], false);
        }
        // Not dequeued by its callback, so its owner (whose dequeue waited
        // for the record to leave) has not freed it: it is live and queued.
        let cur = rec.w;
        // SAFETY: live, mutex held.
        let next = unsafe { link(cur) }.next;
        if woken {
            // SAFETY: live and queued, mutex held.
            let margin = unsafe { link(cur) }.margin();
            // SAFETY: live and queued, mutex held.
            unsafe { self.unlink(st, cur) };
            if rec.requeued {
                // Queued again while it ran: a new queueing, at the tail.
                // SAFETY: live, unlinked, mutex held.
                unsafe { self.append(st, class, cur, margin) };
            }
            return (next, false);
        }
        (next, rec.missed && self.recalls())
    }
}

#[cfg(not(loom))]
static FORK_HELD: crate::sync::ForkSlot<MutexGuard<'static, State>> = crate::sync::ForkSlot::new();

/// Before `fork()`: takes the queue's mutex (before the pool registry: an
/// offer counts buffers under it).
#[cfg(not(loom))]
pub(crate) fn fork_prepare() {
    FORK_HELD.put(GLOBAL.lock());
}

/// After `fork()`, in the parent.
#[cfg(not(loom))]
pub(crate) fn fork_parent() {
    drop(FORK_HELD.take());
}

/// After `fork()`, in the child: callbacks that ran on the parent's other
/// threads and dequeues that waited there are gone with those threads; the
/// waiters stay queued.
#[cfg(not(loom))]
pub(crate) fn fork_child() {
    if let Some(mut st) = FORK_HELD.take() {
        let me = crate::sync::thread_token();
        let mut keep = null_mut();
        let mut r = st.running;
        // Keep only this thread's records: the fork ran from a callback.
        while !r.is_null() {
            // SAFETY: records in the list are alive in the child's copy of
            // the memory; only those of this thread will ever be unlinked.
            let next = unsafe { (*r).next };
            // SAFETY: a record of the list, alive in the child's memory, mutex held.
            if unsafe { (*r).thread } == me {
                // SAFETY: the same record; no other thread exists to touch it.
                unsafe { (*r).next = keep };
                keep = r;
            }
            r = next;
        }
        st.running = keep;
        st.dequeuers = 0;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static LOG: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
        static ANSWER: RefCell<Vec<c_int>> = const { RefCell::new(Vec::new()) };
    }

    unsafe extern "C" fn cb(t: *mut c_void) -> c_int {
        let id = t as usize;
        LOG.with(|l| l.borrow_mut().push(id));
        ANSWER.with(|a| a.borrow().get(id).copied().unwrap_or(1))
    }

    /// Waiters at stable addresses (the vector is never grown), as C embeds them.
    fn waiters(n: usize) -> Vec<BufferWait> {
        let mut v: Vec<BufferWait> =
            (0..n).map(|_| BufferWait { target: null_mut(), wakeup_cb: None, private_: [7; PRIVATE_WORDS] }).collect();
        for (i, w) in v.iter_mut().enumerate() {
            // SAFETY: a live waiter, not queued.
            unsafe { init(w, i as *mut c_void, Some(cb)) };
        }
        v
    }

    fn log() -> Vec<usize> {
        LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    thread_local! {
        /// Set: a broken waiter never aborts on this thread (`broken_waiter`).
        pub(super) static QUIET: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    /// Overwrites a queued waiter's private part, as a reused stack would.
    fn clobber(w: &mut BufferWait) {
        w.private_ = [0xa5a5_a5a5_a5a5_a5a5_u64 as usize; PRIVATE_WORDS];
    }

    #[test]
    fn broken_waiters_are_dropped_never_called() {
        QUIET.with(|q| q.set(true));
        let q = WaitQueue::new();
        let mut w = waiters(5);
        for x in w.iter_mut() {
            // SAFETY: live waiters, dequeued below.
            assert!(unsafe { q.queue(2, x, 0) });
        }
        // One broken: the others are woken in order.
        clobber(&mut w[2]);
        log();
        assert_eq!(q.offer(null_mut(), 0, || 100, || 0), 4);
        assert_eq!(log(), vec![0, 1, 3, 4]);
        let st = q.lock();
        assert!(st.head[2].is_null() && st.tail[2].is_null());
        drop(st);
        // Two broken, one between them: that one is lost (never woken), its
        // dequeue writes to neither broken neighbour; the others are woken.
        let mut w = waiters(5);
        for x in w.iter_mut() {
            // SAFETY: live waiters, dequeued below.
            assert!(unsafe { q.queue(1, x, 0) });
        }
        // Only their check words overwritten: their links still name w[2].
        w[1].private_[4] = 0xa5a5_a5a5_a5a5_a5a5_u64 as usize;
        w[3].private_[4] = 0xa5a5_a5a5_a5a5_a5a5_u64 as usize;
        assert_eq!(q.offer(null_mut(), 0, || 100, || 0), 2);
        assert_eq!(log(), vec![0, 4]);
        let before = (w[1].private_, w[3].private_);
        // SAFETY: live waiters.
        unsafe { q.dequeue(&mut w[2]) };
        assert!((w[1].private_, w[3].private_) == before, "a broken neighbour is never written");
        // SAFETY: a live waiter.
        assert!(!unsafe { q.is_queued(&w[2]) });
        let st = q.lock();
        assert!(st.head[1].is_null() && st.tail[1].is_null());
        drop(st);
        // Broken head and tail: the ones between are lost.
        let mut w = waiters(3);
        for x in w.iter_mut() {
            // SAFETY: live waiters.
            assert!(unsafe { q.queue(3, x, 0) });
        }
        clobber(&mut w[0]);
        clobber(&mut w[2]);
        assert_eq!(q.offer(null_mut(), 0, || 100, || 0), 0);
        // SAFETY: a live waiter.
        unsafe { q.dequeue(&mut w[1]) };
        let st = q.lock();
        assert!(st.head[3].is_null() && st.tail[3].is_null());
        drop(st);
        // A waiter never set up is queued as a new one.
        let mut w = waiters(1);
        clobber(&mut w[0]);
        // SAFETY: a live waiter (garbage private part), dequeued below.
        unsafe {
            assert!(q.queue(0, &mut w[0], 0));
            assert!(q.is_queued(&w[0]));
        }
        assert_eq!(q.offer(null_mut(), 0, || 100, || 0), 1);
        assert_eq!(log(), vec![0]);
        // The margin counts survived the evictions (recounted, and the lost
        // waiters' dequeues took nothing out): nobody is queued.
        assert!(!q.fair_busy(usize::MAX));
        assert_eq!(q.lock().margins.iter().sum::<u32>(), 0);
        QUIET.with(|q| q.set(false));
    }

    #[test]
    fn fit_offers_call_every_waiter_whose_margin_fits() {
        let q = WaitQueue::new();
        let mut w = waiters(5);
        // (class, margin) of each.
        let at = [(2, 2), (4, 0), (2, 1), (2, 0), (0, 3)];
        for (x, &(c, m)) in w.iter_mut().zip(at.iter()) {
            // SAFETY: live waiters, dequeued (by offers or below) before `w` is dropped.
            assert!(unsafe { q.queue(c, x, m) });
        }
        assert!(q.fair_busy(0) && q.fair_busy(7));
        log();
        // Two to give: 1 (class 4, margin 0), then in class 2 neither 0
        // (margin 2) nor 2 (margin 1) fits the one left, 3 (margin 0) does.
        assert_eq!(q.offer_fit(null_mut(), || 2), 2);
        assert_eq!(log(), vec![1, 3]);
        assert!(!q.fair_busy(0) && q.fair_busy(1));
        // Three: 0 (margin 2) and 2 (margin 1) fit in turn, 4 (margin 3) not
        // with one left.
        assert_eq!(q.offer_fit(null_mut(), || 3), 2);
        assert_eq!(log(), vec![0, 2]);
        assert!(!q.fair_busy(2) && q.fair_busy(3));
        // Nothing fits: nobody is called.
        assert_eq!(q.offer_fit(null_mut(), || 3), 0);
        assert_eq!(log(), Vec::<usize>::new());
        // Queued again, it keeps its margin; with a margin given anew
        // (`b_queue_margin`), it takes it.
        // SAFETY: live, queued.
        assert!(unsafe { q.queue(0, &mut w[4], 1) });
        assert!(!q.fair_busy(2) && q.fair_busy(3));
        // SAFETY: live, queued.
        assert_eq!(unsafe { q.queue_fit(0, &mut w[4], 1, true, None::<fn() -> isize>) }, Queued::Queued);
        assert!(q.fair_busy(1) && !q.fair_busy(0));
        assert_eq!(q.offer_fit(null_mut(), || 2), 1);
        assert_eq!(log(), vec![4]);
        assert!(!q.fair_busy(usize::MAX));
    }

    #[test]
    fn queueing_says_when_the_caller_may_claim() {
        let q = WaitQueue::new();
        let mut w = waiters(3);
        // Alone, and a buffer for margin 1 (2 can be had): claim.
        // SAFETY: live waiters, dequeued below.
        assert_eq!(unsafe { q.queue_fit(2, &mut w[0], 1, true, Some(|| 2)) }, Queued::Claim);
        // One can be had: not enough for margin 1.
        // SAFETY: live waiters, dequeued below.
        assert_eq!(unsafe { q.queue_fit(2, &mut w[0], 1, true, Some(|| 1)) }, Queued::Queued);
        // Behind a waiter of margin 1, margin 1 waits its turn...
        // SAFETY: live waiters, dequeued below.
        assert_eq!(unsafe { q.queue_fit(2, &mut w[1], 1, true, Some(|| 5)) }, Queued::Queued);
        // ... a more critical margin 0 does not.
        // SAFETY: live waiters, dequeued below.
        assert_eq!(unsafe { q.queue_fit(2, &mut w[2], 0, true, Some(|| 5)) }, Queued::Claim);
        // SAFETY: live waiters.
        unsafe {
            for x in w.iter_mut() {
                q.dequeue(x);
            }
        }
        assert!(!q.fair_busy(usize::MAX));
    }

    #[test]
    fn fifo_classes_budget_from_and_zero_return() {
        let q = WaitQueue::new();
        let mut w = waiters(6);
        ANSWER.with(|a| *a.borrow_mut() = vec![1, 0, 1, 1, 1, 1]);
        // SAFETY: live waiters, dequeued (by offers) before `w` is dropped.
        unsafe {
            q.queue(2, &mut w[0], 0);
            q.queue(2, &mut w[1], 0);
            q.queue(2, &mut w[2], 0);
            q.queue(4, &mut w[3], 0);
            q.queue(0, &mut w[4], 0);
            q.queue(2, &mut w[0], 0); // idempotent: keeps its place
        }
        assert!(q.busy_from(2) && q.busy_from(4) && q.busy_from(0));
        // Budget 3, threshold 0: 3 wake-ups; 1 answers 0 and stays; `from` = 2 is skipped.
        assert_eq!(q.offer(2 as *mut c_void, 0, || 3, || 0), 3);
        assert_eq!(log(), vec![3, 0, 1, 4]);
        // SAFETY: live waiters.
        unsafe {
            assert!(q.is_queued(&w[1]) && q.is_queued(&w[2]));
            assert!(!q.is_queued(&w[0]) && !q.is_queued(&w[3]) && !q.is_queued(&w[4]));
        }
        assert!(!q.busy_from(3) && q.busy_from(2));
        // 1 kept its place ahead of 2.
        ANSWER.with(|a| a.borrow_mut()[1] = 1);
        assert_eq!(q.offer(null_mut(), 1, || 10, || 0), 2);
        assert_eq!(log(), vec![1, 2]);
        assert_eq!(q.offer(null_mut(), 0, || 10, || 0), 0);
        // SAFETY: a live waiter, never queued: a no-op.
        unsafe { q.dequeue(&mut w[5]) };
        drop(w);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::sync::Arc;

    /// One waiter's world: free buffers, what the waiter got, its liveness.
    struct World {
        q: WaitQueue,
        bw: *mut BufferWait,
        free: AtomicUsize,
        got: AtomicUsize,
        calls: AtomicUsize,
        freed: AtomicBool,
        running: AtomicBool,
    }
    // SAFETY: `bw` is only handed to the queue, which locks around it.
    unsafe impl Send for World {}
    unsafe impl Sync for World {}

    /// The waiter is made first, then its world, whose address is its target.
    fn world(cb: unsafe extern "C" fn(*mut c_void) -> c_int) -> Arc<World> {
        world_with(WaitQueue::new(), cb)
    }

    fn world_with(q: WaitQueue, cb: unsafe extern "C" fn(*mut c_void) -> c_int) -> Arc<World> {
        let bw =
            Box::into_raw(Box::new(BufferWait { target: null_mut(), wakeup_cb: None, private_: [0; PRIVATE_WORDS] }));
        let w = Arc::new(World {
            q,
            bw,
            free: AtomicUsize::new(0),
            got: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            freed: AtomicBool::new(false),
            running: AtomicBool::new(false),
        });
        // SAFETY: fresh, not queued; the world outlives every use of the target.
        unsafe { init(bw, Arc::as_ptr(&w) as *mut c_void, Some(cb)) };
        w
    }

    fn finish(w: Arc<World>) {
        // SAFETY: dequeued and every model thread joined: nothing reaches it.
        drop(unsafe { Box::from_raw(w.bw) });
    }

    fn try_take(w: &World) -> bool {
        w.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| f.checked_sub(1)).is_ok()
    }

    /// Frees a buffer and offers it by margin (`b_release`'s two steps).
    fn release_fit(w: &World) {
        w.free.fetch_add(1, Ordering::AcqRel);
        w.q.offer_fit(null_mut(), || w.free.load(Ordering::Acquire) as isize);
    }

    /// # Safety
    /// `t` is a live `World`.
    unsafe fn enter<'a>(t: *mut c_void) -> &'a World {
        // SAFETY: the caller's guarantee: `t` is a live `World`.
        let w = unsafe { &*(t as *const World) };
        // Acquire: pairs with the Release that marks the waiter freed.
        assert!(!w.freed.load(Ordering::Acquire), "callback after dequeue returned");
        w.calls.fetch_add(1, Ordering::Relaxed);
        w
    }

    unsafe extern "C" fn take_cb(t: *mut c_void) -> c_int {
        // SAFETY: the target is the world.
        let w = unsafe { enter(t) };
        if try_take(w) {
            w.got.fetch_add(1, Ordering::Relaxed);
            1
        } else {
            0
        }
    }

    /// A thread that wants a buffer (take, else queue then retry), and a
    /// thread that frees one and offers: once the offer is over, the waiter
    /// has the buffer, by its retry or by its callback (no lost wake-up).
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let w = world(take_cb);
            let w2 = w.clone();
            let offerer = loom::thread::spawn(move || {
                w2.free.fetch_add(1, Ordering::AcqRel);
                w2.q.offer(null_mut(), 0, || w2.free.load(Ordering::Acquire) as isize, || 0);
            });
            if try_take(&w) {
                w.got.fetch_add(1, Ordering::Relaxed);
            } else {
                // SAFETY: live waiter with a callback.
                assert!(unsafe { w.q.queue(2, w.bw, 0) });
                if try_take(&w) {
                    w.got.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Once the offer is over, the buffer is ours: by our retry or
            // by the callback. A lost wake-up leaves it with nobody.
            offerer.join().unwrap();
            assert_eq!(w.got.load(Ordering::Relaxed), 1, "lost wake-up");
            // SAFETY: live waiter.
            unsafe { w.q.dequeue(w.bw) };
            // SAFETY: live waiter.
            assert!(!unsafe { w.q.is_queued(w.bw) });
            finish(w);
        });
    }

    unsafe extern "C" fn self_dequeue_cb(t: *mut c_void) -> c_int {
        // SAFETY: the target is the world.
        let w = unsafe { enter(t) };
        // SAFETY: the waiter itself, from its own callback.
        unsafe { w.q.dequeue(w.bw) };
        1
    }

    unsafe extern "C" fn self_dequeue_then_run_cb(t: *mut c_void) -> c_int {
        // SAFETY: the target is the world.
        let w = unsafe { enter(t) };
        // SAFETY: the waiter itself, from its own callback.
        unsafe { w.q.dequeue(w.bw) };
        // Still running after dequeueing itself: an outside dequeue must
        // wait for this, and no other offer may call it meanwhile.
        // AcqRel/Release: the flag itself says whether a call is running.
        assert!(!w.running.swap(true, Ordering::AcqRel), "called twice at once");
        loom::thread::yield_now();
        w.running.store(false, Ordering::Release);
        1
    }

    /// An offer whose callback dequeues itself and keeps running, against
    /// a dequeue and a second offer on other threads: the dequeue returns
    /// only once the callback has returned, and the second offer never
    /// calls it meanwhile.
    #[test]
    fn loom_dequeue_waits_for_a_self_dequeued_callback() {
        loom::model(|| {
            let w = world(self_dequeue_then_run_cb);
            // SAFETY: live waiter with a callback.
            assert!(unsafe { w.q.queue(1, w.bw, 0) });
            let offer = |w: Arc<World>| loom::thread::spawn(move || w.q.offer(null_mut(), 0, || 1, || 0));
            let t1 = offer(w.clone());
            let t2 = offer(w.clone());
            // SAFETY: live waiter.
            unsafe { w.q.dequeue(w.bw) };
            // Acquire: pairs with the callback's Release when it ended.
            assert!(!w.running.load(Ordering::Acquire), "b_dequeue returned while the callback runs");
            w.freed.store(true, Ordering::Release);
            t1.join().unwrap();
            t2.join().unwrap();
            finish(w);
        });
    }

    /// Two offers race with a dequeue from a third thread; the callback
    /// dequeues itself. It runs at most once, never after the outside
    /// dequeue returned, and nothing deadlocks.
    #[test]
    fn loom_offers_race_dequeue() {
        loom::model(|| {
            let w = world(self_dequeue_cb);
            // SAFETY: live waiter with a callback.
            assert!(unsafe { w.q.queue(1, w.bw, 0) });
            let offer = |w: Arc<World>| loom::thread::spawn(move || w.q.offer(null_mut(), 0, || 1, || 0));
            let t1 = offer(w.clone());
            let t2 = offer(w.clone());
            // SAFETY: live waiter.
            unsafe { w.q.dequeue(w.bw) };
            w.freed.store(true, Ordering::Release);
            t1.join().unwrap();
            t2.join().unwrap();
            assert!(w.calls.load(Ordering::Relaxed) <= 1);
            finish(w);
        });
    }

    /// Takes a buffer for a waiter of margin 1: only while 2 are free.
    unsafe extern "C" fn take_margin1_cb(t: *mut c_void) -> c_int {
        // SAFETY: the target is the world.
        let w = unsafe { enter(t) };
        if w.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| (f >= 2).then(|| f - 1)).is_ok() {
            w.got.fetch_add(1, Ordering::Relaxed);
            1
        } else {
            0
        }
    }

    /// A waiter of margin 1, one buffer free. A budget offer calls it
    /// (budgets know no margins): it declines. Meanwhile a release brings a
    /// second buffer and offers by margin, which finds the waiter running
    /// and passes it over. Once both are over, the waiter must have its
    /// buffer: the offer that ran it looked again after the decline.
    fn declined_while_released(recall: bool) {
        loom::model(move || {
            let q = if recall { WaitQueue::new() } else { WaitQueue::without_recall() };
            let w = world_with(q, take_margin1_cb);
            w.free.store(1, Ordering::Release);
            // SAFETY: live waiter with a callback.
            assert!(unsafe { w.q.queue(2, w.bw, 1) });
            let w2 = w.clone();
            let budget = loom::thread::spawn(move || {
                w2.q.offer(null_mut(), 0, || 1, || w2.free.load(Ordering::Acquire) as isize);
            });
            let w3 = w.clone();
            let release = loom::thread::spawn(move || release_fit(&w3));
            budget.join().unwrap();
            release.join().unwrap();
            assert_eq!(w.got.load(Ordering::Relaxed), 1, "lost wake-up: a fitting waiter stays queued");
            // SAFETY: live waiter.
            unsafe { w.q.dequeue(w.bw) };
            finish(w);
        });
    }

    #[test]
    fn loom_a_declining_waiter_is_looked_at_again() {
        declined_while_released(true);
    }

    /// The deliberate break: without the second look, the release is lost
    /// on the waiter that was busy declining.
    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_break_no_second_look() {
        declined_while_released(false);
    }

    /// A thread that wants a buffer of margin 0 (take, else queue with the
    /// claim answer, claiming on `Claim`), and a thread that frees one and
    /// offers by margin: once both are over the waiter has the buffer. With
    /// `heed` false the claim answer is ignored (the deliberate break).
    fn claim_after_queueing(heed: bool) {
        loom::model(move || {
            let w = world(take_cb);
            let w2 = w.clone();
            let releaser = loom::thread::spawn(move || release_fit(&w2));
            if try_take(&w) {
                w.got.fetch_add(1, Ordering::Relaxed);
            } else {
                let avail = || w.free.load(Ordering::Acquire) as isize;
                // SAFETY: live waiter with a callback.
                let q = unsafe { w.q.queue_fit(2, w.bw, 0, true, Some(avail)) };
                if heed && q == Queued::Claim && try_take(&w) {
                    w.got.fetch_add(1, Ordering::Relaxed);
                }
            }
            releaser.join().unwrap();
            assert_eq!(w.got.load(Ordering::Relaxed), 1, "lost wake-up");
            // SAFETY: live waiter.
            unsafe { w.q.dequeue(w.bw) };
            finish(w);
        });
    }

    #[test]
    fn loom_the_claim_answer_loses_no_release() {
        claim_after_queueing(true);
    }

    #[test]
    #[should_panic(expected = "lost wake-up")]
    fn loom_break_claim_answer_ignored() {
        claim_after_queueing(false);
    }
}
