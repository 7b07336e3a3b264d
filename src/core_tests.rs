//! Unit tests of the pool core, the thread caches and the debug modes,
//! through the registry (pools are made and destroyed as C does).

use crate::cache;
use crate::flags::{MEM_F_EXACT, MEM_F_SHARED, POOL_F_NO_LOCAL_CACHE, POOL_F_SHARED_NONE, POOL_F_SHARED_XCHG};
use crate::pool::Pool;
use crate::registry::{create, destroy, gc_all, is_live, MAX_ALIGN, MAX_SIZE};
use crate::test_support::serial;
use std::sync::mpsc;

fn new_pool(size: u32, flags: u32) -> &'static Pool {
    let p = create(b"t", size, 0, flags);
    assert!(!p.is_null());
    // SAFETY: freshly created; each test destroys its pools before returning.
    unsafe { &*p }
}

fn destroy_ok(p: &Pool) {
    assert!(destroy(p as *const Pool as *mut Pool, |_| {}).is_null());
}

#[test]
fn objects_are_counted_where_they_sit() {
    let _g = serial();
    let p = new_pool(100, 0);
    assert_eq!(p.size(), 112, "rounded up to 16");
    let objs: Vec<_> = (0..50).map(|_| p.alloc()).collect();
    assert!(objs.iter().all(|o| !o.is_null()));
    assert_eq!((p.allocated(), p.used()), (50, 50));
    for &o in &objs {
        // SAFETY: each object came from `p` and is given back once.
        let _ = unsafe { p.free(o) };
    }
    assert_eq!((p.allocated(), p.used(), cache::idle(&p.home)), (50, 0, 50));
    // Taken again from this thread's cache: no new OS allocation.
    let again: Vec<_> = (0..50).map(|_| p.alloc()).collect();
    assert_eq!(p.allocated(), 50);
    for o in again {
        // SAFETY: each object came from `p` and is given back once.
        let _ = unsafe { p.free(o) };
    }
    gc_all();
    assert_eq!((p.allocated(), p.used()), (0, 0), "gc frees idle objects above minavail 0");
    destroy_ok(p);
}

#[test]
fn eviction_takes_the_least_recently_used_pool_first() {
    let _g = serial();
    cache::set_budget(64 * 1024);
    let (a, b) = (new_pool(1024, 0), new_pool(1024, 0));
    let oa: Vec<_> = (0..40).map(|_| a.alloc()).collect();
    let ob: Vec<_> = (0..40).map(|_| b.alloc()).collect();
    for o in oa {
        // SAFETY: from `a`, given back once.
        let _ = unsafe { a.free(o) };
    }
    for o in ob {
        // SAFETY: from `b`, given back once.
        let _ = unsafe { b.free(o) };
    }
    let (ia, ib) = (cache::idle(&a.home), cache::idle(&b.home));
    cache::set_budget(512 * 1024);
    assert!((ia + ib) * 1024 <= 64 * 1024, "over budget: {ia} + {ib}");
    assert_eq!(ib, 40, "the pool used last keeps its objects");
    assert!(ia < 40, "the pool used least recently gave objects up");
    gc_all();
    destroy_ok(a);
    destroy_ok(b);
}

#[test]
fn objects_larger_than_the_budget_are_never_cached() {
    let _g = serial();
    cache::set_budget(4096);
    let p = new_pool(8192, 0);
    let o = p.alloc();
    // SAFETY: from `p`, given back once.
    let _ = unsafe { p.free(o) };
    let cached = cache::idle(&p.home);
    cache::set_budget(512 * 1024);
    assert_eq!(cached, 0);
    destroy_ok(p);
}

#[test]
fn limit_steals_from_a_blocked_threads_cache() {
    let _g = serial();
    let p = new_pool(256, 0);
    let addr = p as *const Pool as usize;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // SAFETY: the pool outlives this thread (joined below).
        let p = unsafe { &*(addr as *const Pool) };
        let objs: Vec<_> = (0..8).map(|_| p.alloc() as usize).collect();
        for o in objs {
            // SAFETY: from `p`, given back once.
            let _ = unsafe { p.free(o as *mut u8) };
        }
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap(); // blocked, with 8 idle objects in its cache
    });
    ready_rx.recv().unwrap();
    p.set_limit(8);
    let mine: Vec<_> = (0..8).map(|_| p.alloc()).collect();
    assert!(mine.iter().all(|o| !o.is_null()), "idle objects made an allocation fail");
    assert_eq!(p.allocated(), 8);
    assert!(p.alloc().is_null(), "the limit holds once callers hold 8");
    assert_eq!(p.failed(), 1);
    go_tx.send(()).unwrap();
    t.join().unwrap();
    for o in mine {
        // SAFETY: from `p`, given back once.
        let _ = unsafe { p.free(o) };
    }
    gc_all();
    destroy_ok(p);
}

/// At the limit with every object held by callers (a proxy at maxconn), a
/// failed allocation costs no barrier per thread cache: the first search
/// holds the caches with a stack of the pool at once, with one barrier,
/// finds each stack empty and forgets it; later failures know from the
/// pool's count that no cache can hold an object, and cost none.
#[test]
fn failed_allocations_at_the_limit_cost_no_barrier_per_cache() {
    use std::sync::atomic::Ordering::Relaxed;
    const THREADS: usize = 16;
    const EACH: usize = 4;
    const FAILS: usize = 1000;
    let _g = serial();
    let p = new_pool(256, 0);
    let addr = p as *const Pool as usize;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut go = vec![];
    let mut threads = vec![];
    for _ in 0..THREADS {
        let ready_tx = ready_tx.clone();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        threads.push(std::thread::spawn(move || {
            // SAFETY: the pool outlives this thread (joined below).
            let p = unsafe { &*(addr as *const Pool) };
            let objs: Vec<_> = (0..EACH).map(|_| p.alloc() as usize).collect();
            for &o in &objs {
                // SAFETY: from `p`, given back once.
                let _ = unsafe { p.free(o as *mut u8) };
            }
            // Held again: this thread's stack of the pool is empty, with a limit.
            let held: Vec<_> = (0..EACH).map(|_| p.alloc() as usize).collect();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            for o in held {
                // SAFETY: from `p`, given back once.
                let _ = unsafe { p.free(o as *mut u8) };
            }
        }));
    }
    for _ in 0..THREADS {
        ready_rx.recv().unwrap();
    }
    assert_eq!((p.allocated(), p.used()), (THREADS * EACH, THREADS * EACH));
    p.set_limit(THREADS * EACH);
    let before = crate::barrier::CALLS.load(Relaxed);
    let got = (0..FAILS).filter(|_| !p.alloc().is_null()).count();
    let barriers = crate::barrier::CALLS.load(Relaxed) - before;
    assert_eq!((got, p.failed()), (0, FAILS), "every object is held: every allocation fails");
    assert!(barriers <= 1, "{FAILS} failed allocations with {THREADS} thread caches ran {barriers} barriers");
    for g in go {
        g.send(()).unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    gc_all();
    destroy_ok(p);
}

/// A refill below the limit takes a batch from the shared cache and pushes
/// it into its stack: a search at the limit that runs in between must find
/// those objects (the stack is counted before the batch leaves the shared
/// cache, and the search looks again while the refilling owner is busy),
/// not fail while they were idle all along. The refilling thread is paused
/// between its fetch and its pushes; main takes the last object the limit
/// allows, then searches; the pause ends once the search has begun.
#[test]
fn a_search_at_the_limit_finds_what_a_refill_is_carrying() {
    use std::sync::atomic::Ordering::SeqCst;
    let _g = serial();
    let p = new_pool(256, 0);
    let q = new_pool(64, 0);
    let (pa, qa) = (p as *const Pool as usize, q as *const Pool as usize);
    p.set_limit(3);
    p.set_minavail(2);
    let (a, b) = (p.alloc(), p.alloc());
    // SAFETY: from `p`, given back once each.
    unsafe {
        let _ = p.free(a);
        let _ = p.free(b);
    }
    gc_all(); // both idle in the shared cache (minavail 2), no stack has a limit
    assert_eq!((p.allocated(), p.used()), (2, 0));
    cache::test_hook::PAUSED.store(false, SeqCst);
    cache::test_hook::RESUME.store(false, SeqCst);
    let t = std::thread::spawn(move || {
        // SAFETY: the pools outlive this thread (joined below).
        let (p, q) = unsafe { (&*(pa as *const Pool), &*(qa as *const Pool)) };
        let x = q.alloc();
        // SAFETY: from `q`, given back once: this thread now has a cache.
        let _ = unsafe { q.free(x) };
        cache::test_hook::arm();
        p.alloc() as usize // below the limit: refills both, pauses, keeps one
    });
    while !cache::test_hook::PAUSED.load(SeqCst) {
        std::thread::yield_now();
    }
    let third = p.alloc(); // the last one the limit allows: a new object
    assert!(!third.is_null());
    assert_eq!(p.allocated(), 3);
    let resume = std::thread::spawn(|| {
        // Let the search begin (it finds the refilling owner busy), then go on.
        for _ in 0..1000 {
            std::thread::yield_now();
        }
        cache::test_hook::RESUME.store(true, SeqCst);
    });
    let mine = p.alloc(); // at the limit: the one object T is carrying
    resume.join().unwrap();
    let theirs = t.join().unwrap() as *mut u8;
    assert!(!theirs.is_null());
    assert!(!mine.is_null(), "an allocation at the limit failed while an object was idle (on its way to a stack)");
    assert_eq!(p.failed(), 0);
    for o in [mine, theirs, third] {
        // SAFETY: from `p`, given back once each.
        let _ = unsafe { p.free(o) };
    }
    gc_all();
    destroy_ok(p);
    destroy_ok(q);
}

#[test]
fn an_exiting_thread_gives_its_cache_back() {
    let _g = serial();
    let p = new_pool(64, 0);
    let addr = p as *const Pool as usize;
    std::thread::spawn(move || {
        // SAFETY: the pool outlives this thread (joined below).
        let p = unsafe { &*(addr as *const Pool) };
        let objs: Vec<_> = (0..10).map(|_| p.alloc() as usize).collect();
        for o in objs {
            // SAFETY: from `p`, given back once.
            let _ = unsafe { p.free(o as *mut u8) };
        }
        assert_eq!(cache::idle(&p.home), 10);
    })
    .join()
    .unwrap();
    assert_eq!(cache::idle(&p.home), 0);
    assert_eq!(p.used(), 0);
    p.flush();
    assert_eq!(p.allocated(), 0, "the exited thread's objects reached the shared cache or the OS");
    destroy_ok(p);
}

#[test]
fn destroy_refuses_while_in_use_and_merges_count_users() {
    let _g = serial();
    let p = create(b"m", 40, 0, MEM_F_SHARED);
    let q = create(b"n", 48, 0, MEM_F_SHARED);
    assert_eq!(p, q, "40 rounds to 48: merged");
    let r = create(b"x", 48, 0, MEM_F_SHARED | MEM_F_EXACT);
    assert_ne!(p, r, "other flags: not merged");
    // SAFETY: live pool.
    let o = unsafe { &*p }.alloc();
    assert_eq!(destroy(p, |_| {}), p, "in use");
    // SAFETY: from `p`, given back once.
    let _ = unsafe { (*p).free(o) };
    assert!(destroy(p, |_| {}).is_null());
    assert!(is_live(p), "one user left");
    assert!(destroy(p, |_| {}).is_null());
    assert!(!is_live(p));
    assert!(destroy(r, |_| {}).is_null());
}

#[test]
fn lowering_the_limit_frees_idle_objects_above_it() {
    let _g = serial();
    let p = new_pool(128, 0);
    p.set_minavail(100);
    let objs: Vec<_> = (0..10).map(|_| p.alloc()).collect();
    let held: Vec<_> = objs[..2].to_vec();
    for &o in &objs[2..] {
        // SAFETY: from `p`, given back once.
        let _ = unsafe { p.free(o) };
    }
    assert_eq!((p.allocated(), p.used()), (10, 2));
    p.set_limit(4);
    assert_eq!((p.allocated(), p.used()), (4, 2), "idle objects above the new limit went to the OS");
    p.set_limit(1);
    assert_eq!(p.allocated(), 2, "held objects stay; every idle one went");
    assert!(p.alloc().is_null(), "callers hold more than the limit");
    for o in held {
        // SAFETY: from `p`, given back once.
        let _ = unsafe { p.free(o) };
    }
    p.set_limit(0);
    gc_all();
    p.flush();
    destroy_ok(p);
}

#[test]
fn gc_keeps_minavail() {
    let _g = serial();
    let p = new_pool(32, POOL_F_NO_LOCAL_CACHE);
    p.set_minavail(5);
    let objs: Vec<_> = (0..20).map(|_| p.alloc()).collect();
    for o in objs {
        // SAFETY: from `p`, given back once.
        let _ = unsafe { p.free(o) };
    }
    gc_all();
    assert_eq!(p.allocated(), 5);
    p.flush();
    assert_eq!(p.allocated(), 0);
    destroy_ok(p);
}

#[test]
fn bad_creation_arguments_give_null() {
    assert!(create(b"z", 0, 0, 0).is_null());
    assert!(create(b"z", MAX_SIZE + 1, 0, 0).is_null());
    assert!(create(b"z", 8, 3, 0).is_null());
    assert!(create(b"z", 8, MAX_ALIGN * 2, 0).is_null());
    assert!(create(b"z", 8, 0, 0x8000_0000).is_null());
    assert!(create(b"z", 8, 0, POOL_F_SHARED_XCHG | POOL_F_SHARED_NONE).is_null());
}

#[test]
fn fault_injection_spares_critical_sections_and_is_fixed_at_creation() {
    let _g = serial();
    crate::debug::apply("fail=100").unwrap();
    let p = create(b"f", 64, 0, 0);
    crate::debug::apply("fail=0").unwrap();
    // SAFETY: a live pool, destroyed below.
    let pool = unsafe { &*p };
    assert!(pool.alloc().is_null());
    assert!(pool.alloc_nocache().is_null());
    assert_eq!(pool.failed(), 2);
    let o = {
        let _c = crate::debug::critical();
        pool.alloc()
    };
    assert!(!o.is_null(), "a critical allocation is spared");
    assert!(pool.alloc().is_null(), "the guard is gone, the pool still has fail=100");
    // SAFETY: from `pool`, given back once.
    let _ = unsafe { pool.free(o) };
    assert!(destroy(p, |_| {}).is_null());
}
