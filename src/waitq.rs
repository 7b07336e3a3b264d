//! The buffer wait queue: entities that could not get a buffer wait here,
//! each with its own callback, until `offer` wakes them.
//!
//! One FIFO per criticality class, intrusive doubly-linked lists threaded
//! through the private part of the C `struct buffer_wait`, all under one
//! mutex. Callbacks run with the mutex released, so they may call anything
//! (allocate, queue, dequeue, offer).
//!
//! The dequeue guarantee. While a waiter's callback runs, the waiter stays
//! linked in its place and carries `run`, a pointer to a record on the
//! offering thread's stack. Other offers skip a waiter that is running.
//! `dequeue` from another thread waits on the condition variable until
//! `run` is clear; `dequeue` from the thread that runs the callback (the
//! callback itself, or anything it calls) cannot wait for itself: it
//! unlinks the waiter, clears `run` and marks the record, and the offer
//! then never touches the waiter again (the callback may have freed it).
//! Once `dequeue` returns, the waiter is unlinked and not running, so no
//! offer can reach it: the caller may free it.
//!
//! Each offer stamps the waiters it calls (`Link::seen`) so as to call each
//! once. An offer made from a callback (same thread, `NEST`) uses the stamp
//! of the offer that runs the callback: with a stamp of its own it would
//! overwrite the outer offer's, which would then call a waiter twice.

use crate::sync::{AtomicU32, Condvar, Mutex, MutexGuard, Ordering};
use core::ffi::{c_int, c_void};
use std::ptr::null_mut;

/// Number of criticality classes (`enum dynbuf_crit`).
pub(crate) const CLASSES: usize = 5;
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
struct Link {
    next: *mut BufferWait,
    prev: *mut BufferWait,
    /// While its callback runs: the offer's record, else null.
    run: *mut Running,
    /// The last offer that visited it (so that an offer visits it once).
    seen: usize,
    /// Its class + 1 while queued, 0 when not.
    queued: usize,
}

const _: () = assert!(core::mem::size_of::<Link>() <= PRIVATE_WORDS * core::mem::size_of::<usize>());
const _: () = assert!(core::mem::size_of::<BufferWait>() == (PRIVATE_WORDS + 2) * core::mem::size_of::<usize>());
const _: () = assert!(core::mem::align_of::<Link>() <= core::mem::align_of::<BufferWait>());

// The stamp of the offer whose callback this thread runs (0: none).
#[cfg(not(loom))]
std::thread_local! { static NEST: core::cell::Cell<usize> = const { core::cell::Cell::new(0) }; }
#[cfg(loom)]
loom::thread_local! { static NEST: core::cell::Cell<usize> = core::cell::Cell::new(0); }

/// One running callback, on the offering thread's stack.
struct Running {
    thread: usize,
    /// Set by `dequeue` from the running thread: the offer must forget the waiter.
    dequeued: bool,
    /// Set by `queue` while the callback runs: a new queueing, which a
    /// non-zero return must not undo (the waiter goes to the tail instead).
    requeued: bool,
}

/// # Safety
/// `w` points to a live `BufferWait` and the caller holds the queue mutex.
#[inline(always)]
unsafe fn link<'a>(w: *mut BufferWait) -> &'a mut Link {
    // SAFETY: `private_` is big and aligned enough for `Link` (asserted above);
    // the mutex gives exclusive access to every link (caller guarantee).
    unsafe { &mut *core::ptr::addr_of_mut!((*w).private_).cast::<Link>() }
}

struct State {
    head: [*mut BufferWait; CLASSES],
    tail: [*mut BufferWait; CLASSES],
    /// Offers so far, to stamp `Link::seen`.
    seq: usize,
    /// Threads waiting in `dequeue` for a callback to end.
    dequeuers: usize,
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
}

const EMPTY: State = State { head: [null_mut(); CLASSES], tail: [null_mut(); CLASSES], seq: 0, dequeuers: 0 };

#[cfg(not(loom))]
static GLOBAL: WaitQueue = WaitQueue { state: Mutex::new(EMPTY), done: Condvar::new(), map: AtomicU32::new(0) };

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
pub(crate) unsafe fn init(w: *mut BufferWait, target: *mut c_void, cb: Option<unsafe extern "C" fn(*mut c_void) -> c_int>) {
    // SAFETY: caller guarantee.
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
        WaitQueue { state: Mutex::new(EMPTY), done: Condvar::new(), map: AtomicU32::new(0) }
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

    /// Appends `w` to the FIFO of `class`. Already queued: stays in its place
    /// and class; if its callback is running, a non-zero return will send it
    /// to the tail instead of out. Returns false when `w` has no callback.
    ///
    /// # Safety
    /// `w` is a live waiter (initialised or zeroed) that its owner will
    /// dequeue before freeing.
    pub unsafe fn queue(&self, class: usize, w: *mut BufferWait) -> bool {
        let class = class.min(CLASSES - 1);
        // SAFETY: `w` is live (caller guarantee); reading the callback is a plain read.
        if unsafe { (*w).wakeup_cb.is_none() } {
            return false;
        }
        let mut st = self.lock();
        // SAFETY: live waiter, mutex held.
        let l = unsafe { link(w) };
        if l.queued != 0 {
            if !l.run.is_null() {
                // SAFETY: a non-null `run` is a running offer's record.
                unsafe { (*l.run).requeued = true };
            }
            return true;
        }
        // SAFETY: as above.
        unsafe { self.append(&mut st, class, w) };
        true
    }

    /// # Safety
    /// `w` is live and not queued; `st` is the held mutex.
    unsafe fn append(&self, st: &mut State, class: usize, w: *mut BufferWait) {
        // SAFETY: caller guarantee.
        let l = unsafe { link(w) };
        l.queued = class + 1;
        l.next = null_mut();
        l.prev = st.tail[class];
        if l.prev.is_null() {
            st.head[class] = w;
        } else {
            // SAFETY: a queued waiter is live (its owner dequeues it before freeing).
            unsafe { link(l.prev) }.next = w;
        }
        st.tail[class] = w;
        self.set_map(st);
    }

    /// # Safety
    /// `w` is live (initialised or zeroed).
    pub unsafe fn is_queued(&self, w: *const BufferWait) -> bool {
        let _st = self.lock();
        // SAFETY: caller guarantee; mutex held; only read.
        unsafe { link(w.cast_mut()) }.queued != 0
    }

    /// Takes `w` out of its queue; waits while its callback runs on another
    /// thread. Returns with `w` unlinked and not running: never touched again.
    ///
    /// # Safety
    /// `w` is live (initialised or zeroed).
    pub unsafe fn dequeue(&self, w: *mut BufferWait) {
        let me = crate::sync::thread_token();
        let mut st = self.lock();
        loop {
            // SAFETY: live waiter (caller guarantee), mutex held.
            let l = unsafe { link(w) };
            if l.run.is_null() {
                break;
            }
            // SAFETY: a non-null `run` is the record of an offer that is
            // still inside its callback (it clears `run` before leaving).
            let rec = unsafe { &mut *l.run };
            if rec.thread == me {
                // Our own callback (at any depth): it cannot end while we wait.
                rec.dequeued = true;
                l.run = null_mut();
                break;
            }
            st.dequeuers += 1;
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
            st.dequeuers -= 1;
        }
        // SAFETY: as above.
        unsafe { self.unlink(&mut st, w) };
    }

    /// # Safety
    /// `w` is live; `st` is the held mutex.
    unsafe fn unlink(&self, st: &mut State, w: *mut BufferWait) {
        // SAFETY: caller guarantee.
        let l = unsafe { link(w) };
        if l.queued == 0 {
            return;
        }
        let class = l.queued - 1;
        let (prev, next) = (l.prev, l.next);
        if prev.is_null() {
            st.head[class] = next;
        } else {
            // SAFETY: queued neighbours are live.
            unsafe { link(prev) }.next = next;
        }
        if next.is_null() {
            st.tail[class] = prev;
        } else {
            // SAFETY: queued neighbours are live.
            unsafe { link(next) }.prev = prev;
        }
        l.next = null_mut();
        l.prev = null_mut();
        l.queued = 0;
        self.set_map(st);
    }

    fn set_map(&self, st: &State) {
        let map = (0..CLASSES).filter(|&c| !st.head[c].is_null()).fold(0, |m, c| m | 1 << c);
        // Relaxed: a hint for readers without the mutex (see `busy_from`).
        self.map.store(map, Ordering::Relaxed);
    }

    /// Wakes waiters, most critical class first, FIFO within a class, while
    /// `budget() - woken > threshold`. `budget` is evaluated once, under the
    /// mutex, and only when a waiter is queued. A waiter whose target is
    /// `from` (non-null) is skipped and kept. Each waiter is called at most
    /// once per offer, counting the offers its callbacks make (they share
    /// its `seen` stamp, through `NEST`). Returns the number woken.
    pub fn offer(&self, from: *mut c_void, threshold: isize, budget: impl FnOnce() -> isize) -> usize {
        let mut st = self.lock();
        if st.head.iter().all(|h| h.is_null()) {
            return 0;
        }
        let mut budget = budget();
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
        for class in (0..CLASSES).rev() {
            let mut cur = st.head[class];
            loop {
                if budget <= threshold {
                    return woken;
                }
                // Skip what another offer is running, what we saw, and `from`.
                while !cur.is_null() {
                    // SAFETY: queued waiters are live; mutex held.
                    let l = unsafe { link(cur) };
                    // SAFETY: as above.
                    let skip_from = !from.is_null() && unsafe { (*cur).target } == from;
                    if l.run.is_null() && l.seen != seq && !skip_from {
                        break;
                    }
                    cur = l.next;
                }
                if cur.is_null() {
                    break;
                }
                let mut rec = Running { thread: me, dequeued: false, requeued: false };
                let rec_ptr: *mut Running = &mut rec;
                // SAFETY: queued, hence live; mutex held.
                let l = unsafe { link(cur) };
                l.seen = seq;
                l.run = rec_ptr;
                // SAFETY: as above; C does not change a queued waiter.
                let (cb, target) = unsafe { ((*cur).wakeup_cb, (*cur).target) };
                drop(st);
                let outer = NEST.with(|n| n.replace(seq));
                // SAFETY: the C contract of `wakeup_cb`; queued waiters have one.
                let r = cb.map_or(0, |f| unsafe { f(target) });
                NEST.with(|n| n.set(outer));
                st = self.lock();
                if r != 0 {
                    budget -= 1;
                    woken += 1;
                }
                // SAFETY: `rec` is ours; `dequeue` writes it only under the mutex.
                if unsafe { (*rec_ptr).dequeued } {
                    // Dequeued by its own callback: it may be gone. Rescan
                    // the class; the `seen` stamps keep the order.
                    cur = st.head[class];
                } else {
                    // Still running (only `dequeue` from our thread clears it),
                    // so its owner waited for us and it is live.
                    // SAFETY: live, mutex held.
                    let l = unsafe { link(cur) };
                    l.run = null_mut();
                    let next = l.next;
                    if r != 0 {
                        // SAFETY: live, mutex held.
                        unsafe { self.unlink(&mut st, cur) };
                        // SAFETY: `rec` is ours, written only under the mutex.
                        if unsafe { (*rec_ptr).requeued } {
                            // Queued again while it ran: a new queueing, at the tail.
                            // SAFETY: live, unlinked, mutex held.
                            unsafe { self.append(&mut st, class, cur) };
                        }
                    }
                    cur = next;
                }
                if st.dequeuers != 0 {
                    self.done.notify_all();
                }
            }
        }
        woken
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

    fn waiters(n: usize) -> Vec<Box<BufferWait>> {
        (0..n)
            .map(|i| {
                let mut w = Box::new(BufferWait { target: null_mut(), wakeup_cb: None, private_: [7; PRIVATE_WORDS] });
                // SAFETY: fresh box.
                unsafe { init(&mut *w, i as *mut c_void, Some(cb)) };
                w
            })
            .collect()
    }

    fn log() -> Vec<usize> {
        LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    #[test]
    fn fifo_classes_budget_from_and_zero_return() {
        let q = WaitQueue::new();
        let mut w = waiters(6);
        ANSWER.with(|a| *a.borrow_mut() = vec![1, 0, 1, 1, 1, 1]);
        unsafe {
            q.queue(2, &mut *w[0]);
            q.queue(2, &mut *w[1]);
            q.queue(2, &mut *w[2]);
            q.queue(4, &mut *w[3]);
            q.queue(0, &mut *w[4]);
            q.queue(2, &mut *w[0]); // idempotent: keeps its place
        }
        assert!(q.busy_from(2) && q.busy_from(4) && q.busy_from(0));
        // Budget 3, threshold 0: 3 wake-ups; 1 answers 0 and stays; `from` = 2 is skipped.
        assert_eq!(q.offer(2 as *mut c_void, 0, || 3), 3);
        assert_eq!(log(), vec![3, 0, 1, 4]);
        unsafe {
            assert!(q.is_queued(&mut *w[1]) && q.is_queued(&mut *w[2]));
            assert!(!q.is_queued(&mut *w[0]) && !q.is_queued(&mut *w[3]) && !q.is_queued(&mut *w[4]));
        }
        assert!(!q.busy_from(3) && q.busy_from(2));
        // 1 kept its place ahead of 2.
        ANSWER.with(|a| a.borrow_mut()[1] = 1);
        assert_eq!(q.offer(null_mut(), 1, || 10), 2);
        assert_eq!(log(), vec![1, 2]);
        assert_eq!(q.offer(null_mut(), 0, || 10), 0);
        unsafe { q.dequeue(&mut *w[5]) }; // never queued: no-op
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
    }
    // SAFETY: `bw` is only handed to the queue, which locks around it.
    unsafe impl Send for World {}
    unsafe impl Sync for World {}

    /// The waiter is made first, then its world, whose address is its target.
    fn world(cb: unsafe extern "C" fn(*mut c_void) -> c_int) -> Arc<World> {
        let bw = Box::into_raw(Box::new(BufferWait { target: null_mut(), wakeup_cb: None, private_: [0; PRIVATE_WORDS] }));
        let w = Arc::new(World {
            q: WaitQueue::new(),
            bw,
            free: AtomicUsize::new(0),
            got: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            freed: AtomicBool::new(false),
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

    /// # Safety
    /// `t` is a live `World`.
    unsafe fn enter<'a>(t: *mut c_void) -> &'a World {
        // SAFETY: caller guarantee.
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
                w2.q.offer(null_mut(), 0, || w2.free.load(Ordering::Acquire) as isize);
            });
            if try_take(&w) {
                w.got.fetch_add(1, Ordering::Relaxed);
            } else {
                // SAFETY: live waiter with a callback.
                assert!(unsafe { w.q.queue(2, w.bw) });
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

    /// Two offers race with a dequeue from a third thread; the callback
    /// dequeues itself. It runs at most once, never after the outside
    /// dequeue returned, and nothing deadlocks.
    #[test]
    fn loom_offers_race_dequeue() {
        loom::model(|| {
            let w = world(self_dequeue_cb);
            // SAFETY: live waiter with a callback.
            assert!(unsafe { w.q.queue(1, w.bw) });
            let offer = |w: Arc<World>| loom::thread::spawn(move || w.q.offer(null_mut(), 0, || 1));
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
}
