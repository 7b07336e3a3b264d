//! bufpool: HAProxy-style memory pools, margin allocation and buffer wait
//! queues, for C programs. The C contract is `include/bufpool.h`.
//!
//! Modules, one concern each:
//! - [`os`]: memory from the OS (fallible), writes to a file descriptor.
//! - [`owned`]: the owner/foreign protocol of the thread caches.
//! - [`pool`]: the pool core (objects, counters, limit, crowding, destroy).
//! - [`cache`]: the thread-local cache and its byte budget.
//! - [`shared`]: the shared-cache algorithms, one file each.
//! - [`debug`]: the debug modes.
//! - [`dynbuf`]: the buffer pool, margin and class allocation, offer budget.
//! - [`waitq`]: the buffer wait queue and its dequeue guarantee.
//! - [`fork`]: the `pthread_atfork` handlers.
//! - [`ffi`]: the exported C functions, checks and conversions only.

pub mod cache;
pub mod debug;
pub mod dynbuf;
pub mod ffi;
#[cfg(not(loom))]
pub(crate) mod fork;
pub(crate) mod os;
pub(crate) mod owned;
pub mod pool;
pub mod shared;
pub(crate) mod sync;
pub mod waitq;

pub use pool::Pool;

/// Under loom there is no process to fork.
#[cfg(loom)]
pub(crate) mod fork {
    pub(crate) fn ensure_registered() {}
}
