//! A thread cache's life: made at its thread's first release into a
//! cached pool, registered, and emptied into the pools when the thread
//! exits.

use super::budget;
use super::current;
use super::list::{CachePtr, Registry};
use super::local::ThreadCache;
use crate::barrier::{self, Mode};
use crate::os::{free_box, try_box};
use std::cell::Cell;
use std::ptr::{null, NonNull};
use std::sync::OnceLock;

thread_local! {
    static EXITED: Cell<bool> = const { Cell::new(false) };
}

/// The thread-exit hook: a pthread key whose value is the thread's cache.
/// Not a Rust thread-local destructor: glibc runs those before the key
/// destructors and never runs one registered later, so a cache first made
/// while the thread exits (a C program freeing objects from its own key
/// destructor) would never be given back. Key destructors run again when a
/// destructor sets a key, which covers that case.
static EXIT_KEY: OnceLock<Option<libc::pthread_key_t>> = OnceLock::new();

pub(super) fn exit_key() -> Option<libc::pthread_key_t> {
    *EXIT_KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: `key` is a valid out-pointer and `on_thread_exit` has the destructor ABI.
        (unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0).then_some(key)
    })
}

/// Creates and registers this thread's cache; `None` when the thread exits
/// or memory is short (the thread then works without a cache). The mode of
/// the protocol is read under the registry's lock, where it changes: a
/// cache made after the process lost `membarrier` fences its owner from
/// the start.
#[cold]
#[inline(never)]
pub(super) fn attach() -> Option<&'static ThreadCache> {
    if EXITED.with(Cell::get) {
        return None;
    }
    let tc = try_box(ThreadCache::new(false))?;
    // SAFETY: boxed (its final address), not shared yet.
    unsafe { tc.as_ref().link_stacks() };
    let mut reg = Registry::lock();
    if barrier::mode() == Mode::Fenced {
        // SAFETY: not shared yet: its owner is us, outside it.
        unsafe { tc.as_ref() }.cell.make_fenced_alone(reg.side());
    }
    // SAFETY: the key is live (never deleted); its destructor gets `tc` back.
    let hooked = exit_key().is_some_and(|k| unsafe { libc::pthread_setspecific(k, tc.as_ptr().cast()) } == 0);
    if !hooked || reg.list_mut().try_reserve(1).is_err() {
        if hooked {
            // SAFETY: our own live key; the destructor then sees null and does nothing.
            unsafe { libc::pthread_setspecific(exit_key().unwrap_or(0), null()) };
        }
        drop(reg);
        // SAFETY: `tc` was never shared.
        unsafe { free_box(tc) };
        return None;
    }
    reg.list_mut().push(CachePtr(tc));
    // SAFETY: registered, and freed only by this thread's exit hook, which
    // resets the thread's word first.
    let tc: &'static ThreadCache = unsafe { tc.as_ref() };
    current::set(tc);
    Some(tc)
}

/// Is this thread past its exit hook (its releases bypass the cache)?
pub(super) fn exited() -> bool {
    EXITED.with(Cell::get)
}

/// The key destructor: gives a thread's cached objects back when it exits.
/// Objects the thread releases afterwards bypass the cache (`EXITED`).
///
/// # Safety
/// Called by the C library at thread exit with the value `attach` set: this
/// thread's registered cache, which no one else frees.
unsafe extern "C" fn on_thread_exit(tc: *mut libc::c_void) {
    EXITED.with(|e| e.set(true));
    current::set(current::no_cache());
    let Some(tc) = NonNull::new(tc.cast::<ThreadCache>()) else { return };
    // SAFETY: registered, so alive; only this thread frees it, below.
    let tcr = unsafe { tc.as_ref() };
    // A foreign holder may be in (briefly: none waits for anything there).
    let mut inside = tcr.cell.enter_wait();
    // SAFETY: inside our cache, whole.
    inside.with(|l| budget::empty(unsafe { &mut *l }));
    drop(inside);
    // Foreign holders hold the registry: once we have it, none is in our cache.
    Registry::lock().list_mut().retain(|p| p.0 != tc);
    // SAFETY: out of the registry, so no other thread can reach it any more;
    // this thread made it with try_box.
    unsafe { free_box(tc) };
}
