//! A seeded fuzzer of the buffer and wait-queue calls, checked step by step
//! against a model (see docs/TESTING.md).
//!
//! The buffers and the wait queue (`buffers_and_wait_queue_match_the_model`)
//! take random calls on the process-wide buffer pool of `dynbuf_init`:
//! `b_alloc`, `b_alloc_margin` (margins -3 to 12), `b_alloc_crit` (every
//! class, with and without `DB_F_NOQUEUE`, unknown classes and flags),
//! `b_free`, `buffer_wait_init` (with and without a callback, or zeroing),
//! `b_queue`, `b_queue_crit`, `b_dequeue`, `offer_buffers` (random `from`
//! and threshold), `pool_set_limit`, `dynbuf_init` again (retuning), the
//! cache size, gc and flush, and NULL arguments; and the margin calls:
//! `b_alloc_margin_fair`, `b_queue_margin`, `b_release`,
//! `offer_buffers_margin`, `b_move`, `b_available`. The model holds the
//! buffers held, the limit and reserve, and one FIFO per class; after every
//! call (and after every call made from inside a callback):
//! - `pool_used(pool_head_buffer)` is the number held, exactly;
//! - an allocation succeeds exactly when the margin rule allows it (with a
//!   limit `L`: `held + 1 + margin <= L`; the margin of `b_alloc_crit` is
//!   its class's tier `ceil(R * (4 - c) / 4)`), and `b_alloc_crit` without
//!   `DB_F_NOQUEUE` is refused while a waiter of its class or a more
//!   critical one is queued; a failure leaves `*buf` untouched, a success
//!   gives `{bufsize, area, 0, 0}` with a fresh area whose contents stay
//!   intact until `b_free`; without a limit, `margin` idle buffers exist
//!   after a margin allocation;
//! - `b_is_queued` of every waiter matches the model;
//! - every callback of an offer is the one the contract says is due: most
//!   critical class first, FIFO inside, each waiter once, `from` skipped,
//!   while (buffers that can be had - reserved/2 - non-zero answers so far)
//!   exceeds the threshold; and the offer returns only when none is due.
//!   Callbacks answer 0 or 1 at random (0 keeps the waiter in its place)
//!   and, from inside, dequeue themselves, queue themselves again (to the
//!   tail on a non-zero answer), queue or dequeue other waiters, allocate
//!   (claiming with `DB_F_NOQUEUE`, or not), free, and offer (nested up to
//!   3 deep: the nested offer has its own budget and `from`, skips the
//!   waiters whose callbacks run, and calls no waiter the offers around it
//!   called, nor they one it called);
//! - every waiter has a margin (the class's tier for `b_queue_crit`, its
//!   own for `b_queue_margin`); `b_alloc_margin_fair` is refused exactly
//!   while a waiter of a margin at most its own (by bucket) is queued;
//!   `b_queue_margin` answers 2 exactly when no other waiter of a margin at
//!   most its own is queued and the margin rule allows it; an offer by
//!   margin (`offer_buffers_margin`, `b_release`) calls, in the offers'
//!   order, every waiter whose margin fits what is left (`left > margin`,
//!   `left` = what can be had when it starts, less one per non-zero
//!   answer, less one for each running waiter it passes over that fits,
//!   once), passes over the others, and stops once `left` is at most the
//!   least queued margin.
//!
//! The callbacks reach the model through a thread-local: the buffer part
//! runs in one test thread (the buffer pool is process-wide).
//!
//! `BUFPOOL_FUZZ_OPS` sets the number of operations of both fuzzers (10^7
//! by default): a fifth here, over 4 seeds.

mod common;

use bufpool::ffi::*;
use bufpool::Pool;
use common::{buffer_ops, buffer_pool, fill, intact, Rng};
use std::ptr::null_mut;

use bufpool::dynbuf::Buffer;
use bufpool::waitq::BufferWait;
use core::ffi::{c_int, c_long, c_uint, c_void};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Buffer size of the process-wide buffer pool (`MEM_F_EXACT`).
const BUFSIZE: usize = 256;
/// Buffers (`struct buffer`) the fuzzer plays with.
const SLOTS: usize = 24;
/// Waiters (`struct buffer_wait`).
const WAITERS: usize = 10;
/// `enum dynbuf_crit`: DB_MUX_RX .. DB_PERMANENT.
const CLASSES: usize = 5;

/// A waiter's target: a distinct fake address (the library never
/// dereferences targets), from which the callback finds the waiter.
fn target_of(w: usize) -> *mut c_void {
    (0x7000_0000 + 16 * w) as *mut c_void
}

#[derive(Debug, Clone, Copy)]
enum BOp {
    Alloc,
    AllocMargin,
    AllocCrit,
    Free,
    NullArgs,
    InitWaiter,
    Queue,
    QueueCrit,
    Dequeue,
    Offer,
    Limit,
    Retune,
    CacheSize,
    GcFlush,
    AllocFair,
    QueueMargin,
    Release,
    OfferFit,
    Move,
    Available,
}

const BOPS: [(BOp, u32); 20] = [
    (BOp::Alloc, 8),
    (BOp::AllocMargin, 10),
    (BOp::AllocCrit, 14),
    (BOp::Free, 30),
    (BOp::NullArgs, 1),
    (BOp::InitWaiter, 2),
    (BOp::Queue, 6),
    (BOp::QueueCrit, 9),
    (BOp::Dequeue, 5),
    (BOp::Offer, 12),
    (BOp::Limit, 3),
    (BOp::Retune, 1),
    (BOp::CacheSize, 1),
    (BOp::GcFlush, 1),
    (BOp::AllocFair, 10),
    (BOp::QueueMargin, 8),
    (BOp::Release, 12),
    (BOp::OfferFit, 6),
    (BOp::Move, 3),
    (BOp::Available, 2),
];

/// A library call that runs callbacks, made with no borrow of the model held.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// `offer_buffers(from, threshold)`.
    Budget(*mut c_void, c_uint),
    /// `offer_buffers_margin(from)`.
    Fit(*mut c_void),
    /// `b_release` of a slot (the model freed it already).
    Release(usize),
}

/// The margin buckets of the refusal rule: 0 to 62, then 63 and up.
fn bucket(m: usize) -> usize {
    m.min(63)
}

/// What an allocation must do: return NULL and leave `*buf` as it was,
/// return `buf` untouched (already allocated), or allocate it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Null,
    Same,
    New,
}

/// How an allocation is asked for.
#[derive(Debug, Clone, Copy)]
enum How {
    Plain,
    Margin(c_int),
    Crit(c_uint),
    Fair(c_int),
}

/// The callback the model lets run: its waiter, the class it sits in, its
/// answer, and what it did to itself from inside.
struct Running {
    w: usize,
    class: usize,
    ret: c_int,
    dequeued: bool,
    requeued: bool,
    /// An offer by margin passed it over while it ran and kept a buffer for it.
    kept: bool,
}

/// The model of one `offer_buffers` (or offer by margin) call in progress.
struct Offer {
    from: *mut c_void,
    threshold: i64,
    /// Buffers that can be had minus reserved/2, taken when the call starts.
    budget: i64,
    /// Non-zero answers so far.
    woken: i64,
    /// The class being walked, most critical (4) first.
    class: usize,
    running: Option<Running>,
    /// An offer by margin: `left` instead of budget and threshold.
    fit: bool,
    /// What can be had when it started, less what it gave and kept.
    left: i64,
    /// Where its walk of `class` goes on, as the library's walk does.
    pos: Pos,
    /// It stopped: nothing queued fits what is left.
    done: bool,
}

/// A walk's place in a class: its head, a waiter (included), or past its end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pos {
    Head,
    At(usize),
    End,
}

/// How often each path was taken: every one must be, or the run proves little.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    allocated: u64,
    refused_by_margin: u64,
    refused_by_queue: u64,
    callbacks: u64,
    woken: u64,
    kept_in_place: u64,
    dequeued_from_inside: u64,
    requeued_to_tail: u64,
    offers_from_queued: u64,
    init_refused_at_limit: u64,
    nested_offers: u64,
    refused_by_fair: u64,
    claim_answers: u64,
    fit_calls: u64,
    fit_passed: u64,
    kept_for_running: u64,
    moved: u64,
}

impl Seen {
    fn add(&mut self, o: &Seen) {
        self.allocated += o.allocated;
        self.refused_by_margin += o.refused_by_margin;
        self.refused_by_queue += o.refused_by_queue;
        self.callbacks += o.callbacks;
        self.woken += o.woken;
        self.kept_in_place += o.kept_in_place;
        self.dequeued_from_inside += o.dequeued_from_inside;
        self.requeued_to_tail += o.requeued_to_tail;
        self.offers_from_queued += o.offers_from_queued;
        self.init_refused_at_limit += o.init_refused_at_limit;
        self.nested_offers += o.nested_offers;
        self.refused_by_fair += o.refused_by_fair;
        self.claim_answers += o.claim_answers;
        self.fit_calls += o.fit_calls;
        self.fit_passed += o.fit_passed;
        self.kept_for_running += o.kept_for_running;
        self.moved += o.moved;
    }

    fn all_taken(&self) -> bool {
        let s = self;
        [s.allocated, s.refused_by_margin, s.refused_by_queue, s.callbacks, s.woken, s.kept_in_place]
            .into_iter()
            .chain([
                s.dequeued_from_inside,
                s.requeued_to_tail,
                s.offers_from_queued,
                s.init_refused_at_limit,
                s.nested_offers,
                s.refused_by_fair,
                s.claim_answers,
                s.fit_calls,
                s.fit_passed,
                s.kept_for_running,
                s.moved,
            ])
            .all(|n| n > 0)
    }
}

struct BufFuzz {
    rng: Rng,
    seed: u64,
    step: u64,
    pool: *mut Pool,
    /// SLOTS buffers, boxed once: the library writes them through raw pointers.
    bufs: *mut Buffer,
    /// Pattern id of each allocated buffer, 0 when not allocated.
    ids: [u64; SLOTS],
    held: usize,
    next_id: u64,
    limit: usize,
    reserved: usize,
    /// WAITERS waiters, boxed once, reached through raw pointers only.
    waiters: *mut BufferWait,
    has_cb: [bool; WAITERS],
    /// The per-class FIFOs.
    queues: [VecDeque<usize>; CLASSES],
    class_of: [Option<usize>; WAITERS],
    /// The margin of each queued waiter.
    margin_of: [usize; WAITERS],
    /// The offers in progress: an offer made from a callback is pushed on
    /// the one that runs the callback.
    offers: Vec<Offer>,
    /// Waiters called by the outermost offer and the offers nested in it.
    visited: [bool; WAITERS],
    seen: Seen,
}

thread_local! {
    /// The buffer fuzzer of this thread, reached by the callbacks.
    static BF: RefCell<Option<BufFuzz>> = const { RefCell::new(None) };
    /// A divergence found inside a callback, re-raised once `offer_buffers` returns
    /// (a panic must not unwind through the library).
    static CB_PANIC: RefCell<Option<Box<dyn std::any::Any + Send>>> = const { RefCell::new(None) };
}

/// The callback of every waiter: the model says whether it was due, and
/// what it does and answers.
unsafe extern "C" fn wake(target: *mut c_void) -> c_int {
    if CB_PANIC.with(|p| p.borrow().is_some()) {
        return 0;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        let with = |g: &mut dyn FnMut(&mut BufFuzz)| {
            BF.with(|f| g(f.borrow_mut().as_mut().expect("callback outside the fuzzer")))
        };
        let mut ret = 0;
        with(&mut |f| ret = f.begin_wake(target));
        loop {
            let mut nested = None;
            with(&mut |f| nested = f.act());
            let Some(call) = nested else { break };
            let buf = BF.with(|f| f.borrow().as_ref().map(|f| f.bufs)).unwrap_or(null_mut());
            make_call(call, buf);
            if CB_PANIC.with(|p| p.borrow().is_some()) {
                return 0;
            }
            with(&mut |f| f.end_offer());
        }
        ret
    }));
    r.unwrap_or_else(|e| {
        CB_PANIC.with(|p| *p.borrow_mut() = Some(e));
        0
    })
}

/// Makes a call that runs callbacks; `bufs` is the fuzzer's slot array.
fn make_call(call: Call, bufs: *mut Buffer) {
    match call {
        Call::Budget(from, threshold) => offer_buffers(from, threshold),
        Call::Fit(from) => offer_buffers_margin(from),
        // SAFETY: a slot of the boxed array (index < SLOTS, checked by the model).
        Call::Release(i) => b_release(unsafe { bufs.add(i) }),
    }
}

impl BufFuzz {
    fn fail(&self, what: String) -> ! {
        panic!("buffer fuzz divergence: seed {:#x}, step {}: {what}", self.seed, self.step);
    }

    fn buf(&self, i: usize) -> *mut Buffer {
        // SAFETY: i < SLOTS, inside the boxed array.
        unsafe { self.bufs.add(i) }
    }

    fn bw(&self, w: usize) -> *mut BufferWait {
        // SAFETY: w < WAITERS, inside the boxed array.
        unsafe { self.waiters.add(w) }
    }

    fn read(&self, i: usize) -> (usize, usize, usize, usize) {
        // SAFETY: our slot; the library writes it only during a call.
        let b = unsafe { self.buf(i).read() };
        (b.size, b.area as usize, b.data, b.head)
    }

    /// The reserve tier of a class: ceil(R * (4 - c) / 4).
    fn tier(&self, class: usize) -> usize {
        (self.reserved * (CLASSES - 1 - class)).div_ceil(CLASSES - 1)
    }

    /// The margin rule: with a limit, `held + 1 + margin <= limit`.
    fn can_have(&self, margin: usize) -> bool {
        self.limit == 0 || self.held + 1 + margin <= self.limit
    }

    /// A waiter of class `class` or a more critical one is queued.
    fn busy_from(&self, class: usize) -> bool {
        self.queues[class..].iter().any(|q| !q.is_empty())
    }

    /// Queued waiters other than `not` whose margin's bucket is at most `m`'s.
    fn ahead(&self, m: usize, not: Option<usize>) -> usize {
        (0..WAITERS)
            .filter(|&x| Some(x) != not && self.class_of[x].is_some() && bucket(self.margin_of[x]) <= bucket(m))
            .count()
    }

    fn choose_op(&mut self) -> BOp {
        let total: u32 = BOPS.iter().map(|o| o.1).sum();
        let mut r = self.rng.below(total as u64) as u32;
        for (op, w) in BOPS {
            if r < w {
                return op;
            }
            r -= w;
        }
        unreachable!()
    }

    fn random_how(&mut self) -> How {
        match self.rng.below(3) {
            0 => How::Plain,
            1 => How::Margin(self.rng.below(16) as c_int - 3),
            _ => {
                let class =
                    if self.rng.below(40) == 0 { 5 + self.rng.below(4) as c_uint } else { self.rng.below(5) as c_uint };
                let flag = if self.rng.below(3) == 0 {
                    DB_F_NOQUEUE
                } else if self.rng.below(60) == 0 {
                    0x200
                } else {
                    0
                };
                How::Crit(class | flag)
            }
        }
    }

    fn alloc(&mut self, i: usize, how: How) {
        let b = self.buf(i);
        let allocated = self.ids[i] != 0;
        if !allocated {
            // Not allocated, with stray data and head: a failure must leave them.
            let (d, h) = (self.rng.below(1000) as usize, self.rng.below(1000) as usize);
            // SAFETY: our slot.
            unsafe { b.write(Buffer { size: 0, area: null_mut(), data: d, head: h }) };
        }
        let before = self.read(i);
        // The margin this call must leave, and what it must do.
        let margin = match how {
            How::Plain => 0,
            How::Margin(m) => m.max(0) as usize,
            How::Crit(c) => self.tier(((c & !DB_F_NOQUEUE) as usize).min(CLASSES - 1)),
            How::Fair(m) => m.max(0) as usize,
        };
        let want = match how {
            How::Crit(c) if (c & !DB_F_NOQUEUE) as usize >= CLASSES => Want::Null,
            _ if allocated => Want::Same,
            How::Crit(c) if c & DB_F_NOQUEUE == 0 && self.busy_from(c as usize) => {
                self.seen.refused_by_queue += 1;
                Want::Null
            }
            How::Fair(_) if self.ahead(margin, None) > 0 => {
                self.seen.refused_by_fair += 1;
                Want::Null
            }
            _ if self.can_have(margin) => Want::New,
            _ => {
                self.seen.refused_by_margin += 1;
                Want::Null
            }
        };
        let r = match how {
            How::Plain => b_alloc(b),
            How::Margin(m) => b_alloc_margin(b, m),
            How::Crit(c) => b_alloc_crit(b, c),
            How::Fair(m) => b_alloc_margin_fair(b, m),
        };
        let after = self.read(i);
        let ctx = format!(
            "{how:?} on slot {i} (held {}, limit {}, reserved {}, queues {:?})",
            self.held, self.limit, self.reserved, self.queues
        );
        let ctx = || &ctx;
        match want {
            Want::Null => {
                if !r.is_null() || after != before {
                    self.fail(format!("{} gave {r:p}, buffer {before:?} -> {after:?}; want NULL, untouched", ctx()));
                }
            }
            Want::Same => {
                if r != b || after != before {
                    self.fail(format!("{} on an allocated buffer gave {r:p}, {before:?} -> {after:?}", ctx()));
                }
            }
            Want::New => {
                let (size, area, data, head) = after;
                if r != b || size != BUFSIZE || area == 0 || data != 0 || head != 0 || area % 16 != 0 {
                    self.fail(format!(
                        "{} gave {r:p} with {after:?}; want {b:p} with {{{BUFSIZE}, area, 0, 0}}",
                        ctx()
                    ));
                }
                if let Some(j) = (0..SLOTS).find(|&j| j != i && self.ids[j] != 0 && self.read(j).1 == area) {
                    self.fail(format!("{} gave area {area:#x}, already held by slot {j}", ctx()));
                }
                let id = self.next_id;
                self.next_id += 1;
                self.seen.allocated += 1;
                fill(area, BUFSIZE, id);
                self.ids[i] = id;
                self.held += 1;
                if self.limit == 0 && margin != 0 {
                    let idle = pool_allocated(self.pool) as usize - pool_used(self.pool) as usize;
                    if idle < margin {
                        self.fail(format!(
                            "{} without a limit left {idle} idle buffers, want >= margin {margin}",
                            ctx()
                        ));
                    }
                }
            }
        }
    }

    fn free(&mut self, i: usize) {
        let b = self.buf(i);
        let (_, area, _, _) = self.read(i);
        if self.ids[i] != 0 && !intact(area, BUFSIZE, self.ids[i]) {
            self.fail(format!("buffer {area:#x} of slot {i} lost its contents while held"));
        }
        b_free(b);
        let after = self.read(i);
        if self.ids[i] != 0 {
            if after != (0, 0, 0, 0) {
                self.fail(format!("b_free of slot {i} left {after:?}, want BUF_NULL"));
            }
            self.ids[i] = 0;
            self.held -= 1;
        } else if after.0 != 0 || after.1 != 0 {
            self.fail(format!("b_free of the unallocated slot {i} left {after:?}"));
        }
    }

    /// The callback of `w` while it runs, not dequeued (at most one offer
    /// level runs it: nested offers skip a running waiter).
    fn running_mut(&mut self, w: usize) -> Option<&mut Running> {
        self.offers.iter_mut().filter_map(|o| o.running.as_mut()).find(|r| r.w == w && !r.dequeued)
    }

    /// `b_queue_crit(class, w)` (`b_queue` for DB_CHANNEL) in library and model.
    fn queue(&mut self, w: usize, class: c_uint, plain: bool) {
        let r = if plain { b_queue(self.bw(w)) } else { b_queue_crit(class, self.bw(w)) };
        let want = (class as usize) < CLASSES && self.has_cb[w];
        if r != want as c_int {
            self.fail(format!("b_queue_crit({class}, waiter {w}) gave {r}, want {}", want as c_int));
        }
        if want && self.enlist(w, class as usize) {
            self.margin_of[w] = self.tier(class as usize);
        }
    }

    /// The model's queueing of `w` in `class`: already queued, it stays in
    /// place (and while its callback runs, that is a new queueing); else it
    /// goes to the tail. True when it was not queued before.
    fn enlist(&mut self, w: usize, class: usize) -> bool {
        if self.class_of[w].is_some() {
            if let Some(run) = self.running_mut(w) {
                run.requeued = true;
            }
            false
        } else {
            self.queues[class].push_back(w);
            self.class_of[w] = Some(class);
            true
        }
    }

    /// `b_queue_margin(class, w, m)` in library and model.
    fn queue_margin(&mut self, w: usize, class: c_uint, m: c_int) {
        let r = b_queue_margin(class, self.bw(w), m);
        let m = m.max(0) as usize;
        let ok = (class as usize) < CLASSES && self.has_cb[w];
        if ok {
            self.enlist(w, class as usize);
            self.margin_of[w] = m;
        }
        let want = if !ok {
            0
        } else if self.ahead(m, Some(w)) == 0 && self.can_have(m) {
            self.seen.claim_answers += 1;
            2
        } else {
            1
        };
        if r != want {
            self.fail(format!(
                "b_queue_margin({class}, waiter {w}, {m}) gave {r}, want {want} (held {}, limit {}, queues {:?}, \
                 margins {:?})",
                self.held, self.limit, self.queues, self.margin_of
            ));
        }
    }

    /// `b_move(slot j, slot i)` in library and model.
    fn move_buf(&mut self, j: usize, i: usize) {
        let (bi, bj) = (self.buf(i), self.buf(j));
        let (before_i, before_j) = (self.read(i), self.read(j));
        let r = b_move(bj, bi);
        let ok = i != j && self.ids[j] == 0 && self.ids[i] != 0;
        if !ok {
            if !r.is_null() || self.read(i) != before_i || self.read(j) != before_j {
                self.fail(format!("b_move(slot {j}, slot {i}) gave {r:p}; want NULL, both untouched"));
            }
            return;
        }
        if r != bj || self.read(j) != before_i || self.read(i) != (0, 0, 0, 0) {
            self.fail(format!(
                "b_move(slot {j}, slot {i}) gave {r:p}, slots {:?} {:?}; want slot {j} = {before_i:?}, slot {i} BUF_NULL",
                self.read(j),
                self.read(i)
            ));
        }
        self.ids[j] = self.ids[i];
        self.ids[i] = 0;
        self.seen.moved += 1;
    }

    /// Gives slot `i` back in the model for `b_release`; the offer by
    /// margin that follows is pushed when a buffer went back. None: nothing
    /// held, the call made here (no offer).
    fn release(&mut self, i: usize) -> Option<Call> {
        if self.ids[i] == 0 {
            let before = self.read(i);
            b_release(self.buf(i));
            let after = self.read(i);
            if after.0 != 0 || after.1 != 0 {
                self.fail(format!("b_release of the unallocated slot {i}: {before:?} -> {after:?}"));
            }
            return None;
        }
        let (_, area, _, _) = self.read(i);
        if !intact(area, BUFSIZE, self.ids[i]) {
            self.fail(format!("buffer {area:#x} of slot {i} lost its contents while held"));
        }
        self.ids[i] = 0;
        self.held -= 1;
        self.push_fit(null_mut());
        Some(Call::Release(i))
    }
    fn dequeue(&mut self, w: usize) {
        b_dequeue(self.bw(w));
        if let Some(c) = self.class_of[w].take() {
            self.queues[c].retain(|&x| x != w);
        }
        if let Some(run) = self.running_mut(w) {
            run.dequeued = true;
        }
    }

    fn random_limit(&mut self) -> usize {
        let held = self.held;
        match self.rng.below(4) {
            0 => 0,
            1 => held + self.rng.below(6) as usize,
            2 => held.saturating_sub(self.rng.below(3) as usize),
            _ => self.rng.below(40) as usize,
        }
    }

    /// `dynbuf_init` again with the same size: retunes the reserve and the limit.
    fn retune(&mut self, reserved: usize, limit: usize) {
        let r = dynbuf_init(BUFSIZE, reserved as c_uint, limit as c_uint);
        let want = if limit != 0 && limit <= reserved {
            -1
        } else if limit != 0 && self.held >= limit {
            self.seen.init_refused_at_limit += 1;
            -2 // the reserve cannot be made to exist at all: callers hold the limit
        } else {
            0
        };
        if r != want {
            self.fail(format!(
                "dynbuf_init({BUFSIZE}, {reserved}, {limit}) with {} held gave {r}, want {want}",
                self.held
            ));
        }
        if want != -1 {
            self.reserved = reserved;
            self.limit = limit;
        }
        if want == 0 {
            let keep = reserved.max(3);
            let keep = if limit == 0 { keep } else { keep.min(limit - self.held) };
            let idle = pool_allocated(self.pool) as usize - pool_used(self.pool) as usize;
            if idle < keep {
                self.fail(format!("dynbuf_init({BUFSIZE}, {reserved}, {limit}) left {idle} idle, want >= {keep}"));
            }
        }
        if buffer_pool() != self.pool {
            self.fail(format!("pool_head_buffer moved: {:p} -> {:p}", self.pool, buffer_pool()));
        }
    }

    /// The next waiter the offer must call, by the contract: most critical
    /// class first, FIFO inside, each waiter once, `from` skipped, while
    /// budget - woken > threshold.
    fn next_due(&mut self) -> Option<usize> {
        if self.offers.last()?.fit {
            return self.next_fit();
        }
        let running: Vec<usize> =
            self.offers.iter().filter_map(|o| o.running.as_ref()).filter(|r| !r.dequeued).map(|r| r.w).collect();
        let o = self.offers.last_mut()?;
        loop {
            if o.budget - o.woken <= o.threshold {
                return None;
            }
            let from = o.from;
            let due = |w: usize| !self.visited[w] && (from.is_null() || target_of(w) != from) && !running.contains(&w);
            if let Some(&w) = self.queues[o.class].iter().find(|&&w| due(w)) {
                return Some(w);
            }
            if o.class == 0 {
                return None;
            }
            o.class -= 1;
        }
    }

    /// The next waiter an offer by margin must call, walking as the
    /// library does: from its place in the class, the first waiter not yet
    /// called, not `from`, not running (a running one on the way that fits
    /// takes one from `left`, once); the offer stops when `left` is at most
    /// the least queued margin; a waiter whose margin does not fit is passed
    /// over (the walk goes on after it).
    fn next_fit(&mut self) -> Option<usize> {
        let top = self.offers.len() - 1;
        loop {
            let o = &self.offers[top];
            if o.done {
                return None;
            }
            let (from, class) = (o.from, o.class);
            let order: Vec<usize> = self.queues[class].iter().copied().collect();
            let start = match o.pos {
                Pos::Head => 0,
                Pos::At(y) => order.iter().position(|&x| x == y).expect("the walk's place is queued in its class"),
                Pos::End => order.len(),
            };
            let mut cand = None;
            for &x in &order[start..] {
                let skip_from = !from.is_null() && target_of(x) == from;
                let rec = self.offers.iter().position(|o| o.running.as_ref().is_some_and(|r| r.w == x));
                if !self.visited[x] && !skip_from && rec.is_none() {
                    cand = Some(x);
                    break;
                }
                if let Some(k) = rec.filter(|_| !skip_from) {
                    let fits = self.offers[top].left > self.margin_of[x] as i64;
                    let r = self.offers[k].running.as_mut().unwrap();
                    if !r.kept && fits {
                        r.kept = true;
                        self.offers[top].left -= 1;
                        self.seen.kept_for_running += 1;
                    }
                }
            }
            let Some(x) = cand else {
                if class == 0 {
                    return None;
                }
                self.offers[top].class -= 1;
                self.offers[top].pos = Pos::Head;
                continue;
            };
            let least = (0..WAITERS)
                .filter(|&y| self.class_of[y].is_some())
                .map(|y| bucket(self.margin_of[y]))
                .min()
                .unwrap_or(64);
            let next = self.after(class, x);
            let o = &mut self.offers[top];
            if o.left <= least as i64 {
                o.done = true;
                return None;
            }
            if o.left <= self.margin_of[x] as i64 {
                o.pos = next;
                self.seen.fit_passed += 1;
                continue;
            }
            o.pos = Pos::At(x);
            return Some(x);
        }
    }

    /// The place after `x` in `class`.
    fn after(&self, class: usize, x: usize) -> Pos {
        let q = &self.queues[class];
        match q.iter().position(|&y| y == x) {
            Some(k) if k + 1 < q.len() => Pos::At(q[k + 1]),
            _ => Pos::End,
        }
    }

    /// What the library does once a callback returned: a non-zero answer
    /// takes one unit of budget and the waiter out (to the tail if it was
    /// queued again from inside); zero keeps it in place.
    fn finish_running(&mut self) {
        let Some(o) = self.offers.last() else { return };
        let Some(run) = o.running.as_ref() else { return };
        // Where the library's walk goes on: the head again when the
        // callback dequeued itself, else the waiter after it.
        let pos = if run.dequeued { Pos::Head } else { self.after(run.class, run.w) };
        let o = self.offers.last_mut().unwrap();
        o.pos = pos;
        let run = o.running.take().unwrap();
        if run.ret != 0 {
            o.woken += 1;
            if o.fit {
                o.left -= 1;
            }
            self.seen.woken += 1;
        } else if !run.dequeued {
            self.seen.kept_in_place += 1;
        }
        if run.dequeued {
            self.seen.dequeued_from_inside += 1;
        }
        if !run.dequeued && run.ret != 0 {
            self.queues[run.class].retain(|&x| x != run.w);
            self.class_of[run.w] = None;
            if run.requeued {
                self.seen.requeued_to_tail += 1;
                self.queues[run.class].push_back(run.w);
                self.class_of[run.w] = Some(run.class);
            }
        }
    }

    /// The callback of a waiter starts: it must be the one due. Returns its answer.
    fn begin_wake(&mut self, target: *mut c_void) -> c_int {
        self.finish_running();
        self.seen.callbacks += 1;
        let Some(w) = self.next_due() else {
            self.fail(format!(
                "callback for target {target:p}, but the offer should have stopped (queues {:?})",
                self.queues
            ));
        };
        if target != target_of(w) {
            let offers: Vec<String> = self
                .offers
                .iter()
                .map(|o| {
                    format!(
                        "{{fit {} left {} budget {} woken {} class {} from {:p} pos {:?} running {:?} done {}}}",
                        o.fit,
                        o.left,
                        o.budget,
                        o.woken,
                        o.class,
                        o.from,
                        o.pos,
                        o.running.as_ref().map(|r| (r.w, r.dequeued, r.kept)),
                        o.done
                    )
                })
                .collect();
            self.fail(format!(
                "callback for target {target:p}, want waiter {w} ({:p}); queues {:?}, margins {:?}, visited {:?}, \
                 held {}, limit {}, offers {offers:?}",
                target_of(w),
                self.queues,
                self.margin_of,
                self.visited,
                self.held,
                self.limit
            ));
        }
        let class = self.class_of[w].expect("a due waiter is queued");
        let ret = self.rng.below(2) as c_int;
        self.visited[w] = true;
        let o = self.offers.last_mut().unwrap();
        if o.fit {
            self.seen.fit_calls += 1;
        }
        o.running = Some(Running { w, class, ret, dequeued: false, requeued: false, kept: false });
        if b_is_queued(self.bw(w)) != 1 {
            self.fail(format!("waiter {w} not queued while its callback runs"));
        }
        ret
    }

    /// Re-entrancy: a few calls from inside the running callback. Stops at
    /// an offer, returning its arguments: the caller makes it with no
    /// borrow of the model held, then calls `act` again.
    fn act(&mut self) -> Option<Call> {
        let run = self.offers.last().and_then(|o| o.running.as_ref()).expect("inside a callback");
        let (w, class) = (run.w, run.class);
        for _ in 0..self.rng.below(3) {
            match self.rng.below(24) {
                0 | 1 => self.dequeue(w),
                2..=4 => {
                    // The woken waiter claims its buffer, as the header says.
                    let i = self.rng.below(SLOTS as u64) as usize;
                    self.alloc(i, How::Crit(class as c_uint | DB_F_NOQUEUE));
                }
                5 | 6 => {
                    let (i, how) = (self.rng.below(SLOTS as u64) as usize, self.random_how());
                    self.alloc(i, how);
                }
                7 | 8 => {
                    let i = self.rng.below(SLOTS as u64) as usize;
                    self.free(i)
                }
                9..=12 => {
                    let (x, c) = (self.rng.below(WAITERS as u64) as usize, self.rng.below(CLASSES as u64) as c_uint);
                    self.queue(x, c, false);
                }
                13..=15 => {
                    let x = self.rng.below(WAITERS as u64) as usize;
                    self.dequeue(x);
                }
                17 => {
                    // A claim by margin, as an offer by margin's callback makes it.
                    let i = self.rng.below(SLOTS as u64) as usize;
                    let m = self.margin_of[w] as c_int;
                    self.alloc(i, How::Margin(m));
                }
                18 => {
                    let (i, m) = (self.rng.below(SLOTS as u64) as usize, self.rng.below(8) as c_int - 1);
                    self.alloc(i, How::Fair(m));
                }
                19 => {
                    let (x, c, m) = (
                        self.rng.below(WAITERS as u64) as usize,
                        self.rng.below(CLASSES as u64) as c_uint,
                        self.rng.below(8) as c_int - 1,
                    );
                    self.queue_margin(x, c, m);
                }
                20 | 21 if self.offers.len() < 3 => {
                    self.seen.nested_offers += 1;
                    let i = self.rng.below(SLOTS as u64) as usize;
                    if let Some(call) = self.release(i) {
                        return Some(call);
                    }
                }
                22 if self.offers.len() < 3 => {
                    self.seen.nested_offers += 1;
                    let x = self.rng.below(WAITERS as u64) as usize;
                    let from = self.random_from(x);
                    return Some(self.push_fit(from));
                }
                _ if self.offers.len() < 3 => {
                    self.seen.nested_offers += 1;
                    let w = self.rng.below(WAITERS as u64) as usize;
                    return Some(self.push_offer(w));
                }
                _ => {}
            }
            self.check("inside a callback");
        }
        None
    }

    fn random_from(&mut self, w: usize) -> *mut c_void {
        match self.rng.below(8) {
            0..=3 => null_mut(),
            7 => target_of(WAITERS),
            _ => target_of(w),
        }
    }

    /// A new offer by margin in the model (nested when one is in progress).
    fn push_fit(&mut self, from: *mut c_void) -> Call {
        let left = if self.limit == 0 { i64::MAX / 4 } else { self.limit as i64 - self.held as i64 };
        if self.offers.is_empty() {
            self.visited = [false; WAITERS];
        }
        self.offers.push(Offer {
            from,
            threshold: 0,
            budget: 0,
            woken: 0,
            class: CLASSES - 1,
            running: None,
            fit: true,
            left,
            pos: Pos::Head,
            done: false,
        });
        Call::Fit(from)
    }

    /// A new offer in the model (nested when one is in progress); its arguments.
    fn push_offer(&mut self, w: usize) -> Call {
        let from = self.random_from(w);
        let threshold = self.rng.pick(&[0u32, 0, 0, 1, 2, 3, 5, u32::MAX]);
        if !from.is_null() && (0..WAITERS).any(|x| target_of(x) == from && self.class_of[x].is_some()) {
            self.seen.offers_from_queued += 1;
        }
        let half = (self.reserved / 2) as i64;
        let budget = if self.limit == 0 { i64::MAX / 4 } else { self.limit as i64 - self.held as i64 - half };
        if self.offers.is_empty() {
            self.visited = [false; WAITERS];
        }
        self.offers.push(Offer {
            from,
            threshold: threshold as i64,
            budget,
            woken: 0,
            class: CLASSES - 1,
            running: None,
            fit: false,
            left: 0,
            pos: Pos::Head,
            done: false,
        });
        Call::Budget(from, threshold)
    }

    /// One step outside callbacks; returns the arguments of an offer to make
    /// with no borrow of the model held.
    fn step(&mut self) -> Option<Call> {
        let op = self.choose_op();
        let i = self.rng.below(SLOTS as u64) as usize;
        let w = self.rng.below(WAITERS as u64) as usize;
        match op {
            BOp::Alloc => self.alloc(i, How::Plain),
            BOp::AllocMargin => {
                let m = self.rng.below(16) as c_int - 3;
                self.alloc(i, How::Margin(m))
            }
            BOp::AllocCrit => {
                let h = loop {
                    if let h @ How::Crit(_) = self.random_how() {
                        break h;
                    }
                };
                self.alloc(i, h)
            }
            BOp::Free => self.free(i),
            BOp::NullArgs => {
                let ok = b_alloc(null_mut()).is_null()
                    && b_alloc_margin(null_mut(), 1).is_null()
                    && b_alloc_crit(null_mut(), 4).is_null()
                    && b_queue(null_mut()) == 0
                    && b_queue_crit(4, null_mut()) == 0
                    && b_is_queued(std::ptr::null()) == 0
                    && b_alloc_margin_fair(null_mut(), 0).is_null()
                    && b_queue_margin(2, null_mut(), 0) == 0
                    && b_move(null_mut(), self.buf(i)).is_null()
                    && b_move(self.buf(i), null_mut()).is_null();
                b_release(null_mut());
                b_free(null_mut());
                b_dequeue(null_mut());
                buffer_wait_init(null_mut(), null_mut(), Some(wake));
                if !ok {
                    self.fail("a buffer function accepted NULL".into());
                }
            }
            BOp::InitWaiter => {
                if self.class_of[w].is_none() {
                    match self.rng.below(8) {
                        0 => {
                            buffer_wait_init(self.bw(w), target_of(w), None);
                            self.has_cb[w] = false;
                        }
                        1 => {
                            // SAFETY: our waiter, not queued: a zeroed one is valid.
                            unsafe { self.bw(w).write_bytes(0, 1) };
                            self.has_cb[w] = false;
                        }
                        _ => {
                            buffer_wait_init(self.bw(w), target_of(w), Some(wake));
                            self.has_cb[w] = true;
                        }
                    }
                }
            }
            BOp::Queue => self.queue(w, 2, true),
            BOp::QueueCrit => {
                let c = if self.rng.below(30) == 0 {
                    5 + self.rng.below(100) as c_uint
                } else {
                    self.rng.below(5) as c_uint
                };
                self.queue(w, c, false)
            }
            BOp::Dequeue => self.dequeue(w),
            BOp::Offer => return Some(self.push_offer(w)),
            BOp::AllocFair => {
                let m = self.rng.below(10) as c_int - 2;
                self.alloc(i, How::Fair(m))
            }
            BOp::QueueMargin => {
                let c = if self.rng.below(30) == 0 { 5 } else { self.rng.below(5) as c_uint };
                let m = self.rng.below(10) as c_int - 2;
                self.queue_margin(w, c, m)
            }
            BOp::Release => {
                if let Some(call) = self.release(i) {
                    return Some(call);
                }
            }
            BOp::OfferFit => {
                let from = self.random_from(w);
                return Some(self.push_fit(from));
            }
            BOp::Move => {
                let j = self.rng.below(SLOTS as u64) as usize;
                self.move_buf(j, i)
            }
            BOp::Available => {
                let m = self.rng.below(8) as c_int - 2;
                let got = b_available(m);
                let want = if self.limit == 0 {
                    c_long::MAX
                } else {
                    (self.limit as c_long - self.held as c_long - m.max(0) as c_long).max(0)
                };
                if got != want {
                    self.fail(format!(
                        "b_available({m}) = {got}, want {want} (held {}, limit {})",
                        self.held, self.limit
                    ));
                }
            }
            BOp::Limit => {
                let l = self.random_limit();
                pool_set_limit(self.pool, l as c_uint);
                self.limit = l;
            }
            BOp::Retune => {
                let (r, l) = (self.rng.below(7) as usize, self.random_limit());
                self.retune(r, l);
            }
            BOp::CacheSize => pool_set_cache_size(self.rng.pick(&[0usize, 4096, 65536, 512 * 1024])),
            BOp::GcFlush => {
                if self.rng.below(2) == 0 {
                    let idle = pool_allocated(self.pool) as usize - self.held;
                    pool_gc(null_mut());
                    let after = pool_allocated(self.pool) as usize - self.held;
                    let want = idle.min(self.reserved.max(3));
                    if after != want {
                        self.fail(format!(
                            "pool_gc left {after} idle buffers, want min(idle {idle}, minavail) = {want}"
                        ));
                    }
                } else {
                    pool_flush(self.pool);
                }
            }
        }
        self.check(&format!("after {op:?}"));
        None
    }

    /// After the offer returned: it must have called every waiter that was due.
    fn end_offer(&mut self) {
        self.finish_running();
        if let Some(w) = self.next_due() {
            self.fail(format!("offer_buffers returned without calling waiter {w}; queues {:?}", self.queues));
        }
        self.offers.pop();
        self.check("after an offer");
    }

    fn check(&self, when: &str) {
        let used = pool_used(self.pool) as usize;
        if used != self.held {
            self.fail(format!("{when}: pool_used(pool_head_buffer) {used}, model {}", self.held));
        }
        for w in 0..WAITERS {
            let q = b_is_queued(self.bw(w));
            if q != self.class_of[w].is_some() as c_int {
                self.fail(format!("{when}: b_is_queued(waiter {w}) = {q}, model queues {:?}", self.queues));
            }
        }
    }

    fn run(seed: u64, ops: u64) -> (u64, Seen) {
        let mut rng = Rng(seed | 1);
        let reserved = rng.below(5) as usize;
        let limit = if rng.below(4) == 0 { 0 } else { reserved + 1 + rng.below(20) as usize };
        assert_eq!(dynbuf_init(BUFSIZE, reserved as c_uint, limit as c_uint), 0);
        let pool = buffer_pool();
        assert!(!pool.is_null());
        let bufs = Box::into_raw(Box::new([const { Buffer { size: 0, area: null_mut(), data: 0, head: 0 } }; SLOTS]))
            .cast::<Buffer>();
        let waiters = Box::into_raw(Box::new(
            [const { BufferWait { target: null_mut(), wakeup_cb: None, private_: [0; 6] } }; WAITERS],
        ))
        .cast::<BufferWait>();
        let f = BufFuzz {
            rng,
            seed,
            step: 0,
            pool,
            bufs,
            ids: [0; SLOTS],
            held: 0,
            next_id: 1,
            limit,
            reserved,
            waiters,
            has_cb: [true; WAITERS],
            queues: Default::default(),
            class_of: [None; WAITERS],
            margin_of: [0; WAITERS],
            offers: Vec::new(),
            visited: [false; WAITERS],
            seen: Seen::default(),
        };
        for w in 0..WAITERS {
            buffer_wait_init(f.bw(w), target_of(w), Some(wake));
        }
        BF.with(|b| *b.borrow_mut() = Some(f));
        let with = |g: &mut dyn FnMut(&mut BufFuzz)| BF.with(|b| g(b.borrow_mut().as_mut().unwrap()));
        for _ in 0..ops {
            let mut offer = None;
            with(&mut |f| {
                f.step += 1;
                offer = f.step();
            });
            if let Some(call) = offer {
                make_call(call, bufs);
                if let Some(e) = CB_PANIC.with(|p| p.borrow_mut().take()) {
                    resume_unwind(e);
                }
                with(&mut |f| f.end_offer());
            }
        }
        // Tear down: every waiter out, every buffer back.
        let f = BF.with(|b| b.borrow_mut().take()).unwrap();
        let mut f = f;
        for w in 0..WAITERS {
            f.dequeue(w);
        }
        for i in 0..SLOTS {
            f.free(i);
        }
        f.check("at the end");
        pool_set_cache_size(512 * 1024);
        // SAFETY: made by Box::into_raw above; nothing is queued or held any more.
        unsafe {
            drop(Box::from_raw(bufs.cast::<[Buffer; SLOTS]>()));
            drop(Box::from_raw(waiters.cast::<[BufferWait; WAITERS]>()));
        }
        (ops, f.seen)
    }
}

#[test]
fn buffers_and_wait_queue_match_the_model() {
    let total = buffer_ops();
    let seeds = 4u64;
    let (mut done, mut seen) = (0, Seen::default());
    for s in 0..seeds {
        let n = if s + 1 == seeds { total - done } else { total / seeds };
        let (d, c) = BufFuzz::run(0xb0f_0000 + s, n);
        done += d;
        seen.add(&c);
    }
    assert_eq!(done, total);
    assert_eq!(pool_used(buffer_pool()), 0);
    println!("fuzz: {done} buffer and queue operations matched the model: {seen:?}");
    // A short run (BUFPOOL_FUZZ_OPS small) may miss a path; the default one must not.
    assert!(total < 100_000 || seen.all_taken(), "a path was never taken: {seen:?}");
}
