//! The thread caches: each thread keeps, per pool, a stack of the objects
//! it released last, under one byte budget for all pools
//! (`pool_set_cache_size`, 512 KiB by default).
//!
//! Who may touch a cache. Its own thread (the owner) works on it for a few
//! instructions per operation; other threads (foreign holders) take it only
//! to take an idle object when a pool is at its limit, to drain a pool
//! (destroy, gc, a lowered limit), to apply a new budget, to decay, or to
//! count. The protocol between them is [`crate::owned`]: the owner never
//! waits (when a foreign holder is in its cache it takes its slow path),
//! and a foreign holder never waits for an owner either: it touches what
//! the owner lets it (every stack but the one an owner inside a fast call
//! works on), and skips or revisits the rest. Foreign holders are
//! serialised by the registry's lock, and hold a batch of caches with one
//! barrier.
//!
//! Objects leave a cache for the shared cache or the OS (eviction, thread
//! exit, drains) inside the cache, in a transit of their pool, so a search
//! at the limit never misses them.
//!
//! The rooms, each of one concern, leaves first:
//! - `local`: what a cache is made of (stacks, slots, the pool's `Home`);
//! - `budget`: the budget and eviction, on a cache the caller may touch;
//! - `current`: which cache is this thread's (the TLS word);
//! - `list`: the registry of caches, and holding a batch of them;
//! - `life`: a cache made at a thread's first release, emptied at its exit;
//! - `fast`: the fast path;
//! - `owner`: the owner's slow paths;
//! - `foreign`: what other threads do in a cache;
//! - `fork`: the caches across `fork()`.

mod budget;
mod current;
mod fast;
mod foreign;
#[cfg(not(loom))]
mod fork;
mod life;
mod list;
mod local;
mod owner;

pub(crate) use current::count_slow_free;
pub(crate) use fast::{put, take, CACHED, REFUSED};
#[cfg(all(test, not(loom)))]
pub(crate) use foreign::idle;
pub(crate) use foreign::{
    decay_all, drain, find_idle, release_slot, set_budget, snapshot, try_decay_all, Backoff, Missed,
};
#[cfg(not(loom))]
pub(crate) use fork::{fork_child, fork_parent, fork_prepare};
#[cfg(not(loom))]
pub(crate) use local::layout;
pub(crate) use local::{claim_slot, Back, Home, Slot, TICK_EVERY};
#[cfg(all(test, not(loom)))]
pub(crate) use owner::test_hook;
pub(crate) use owner::{put_slow, rearm, refill};

/// A setting the caches conform to changed (a pool was capped): each cache
/// catches up at its owner's next slow entry, or when a foreign holder
/// reaches it.
pub(crate) fn settings_changed() {
    budget::changed()
}
