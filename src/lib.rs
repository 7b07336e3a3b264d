//! bufpool: HAProxy-style memory pools, margin allocation and buffer wait
//! queues, for C programs. The C contract is `include/bufpool.h`.
//!
//! Modules, one concern each:
//! - [`barrier`]: `membarrier()`, the foreign side's barrier of the thread caches.
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

pub(crate) mod barrier;
pub mod cache;
pub mod debug;
pub mod dynbuf;
pub mod ffi;
pub mod flags;
#[cfg(not(loom))]
pub(crate) mod fork;
pub(crate) mod link;
pub(crate) mod maintain;
pub(crate) mod os;
pub(crate) mod owned;
pub(crate) mod pages;
pub mod pool;
pub(crate) mod registry;
pub(crate) mod report;
pub mod shared;
pub(crate) mod sync;
pub mod waitq;

pub use pool::Pool;

#[cfg(all(test, not(loom)))]
mod core_tests;

/// What the unit tests share.
#[cfg(all(test, not(loom)))]
pub(crate) mod test_support {
    use std::sync::{Mutex, MutexGuard};

    /// The budget, the debug modes and the registry are process-wide:
    /// tests that touch them run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    pub(crate) fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Under loom there is no process to fork.
#[cfg(loom)]
pub(crate) mod fork {
    pub(crate) fn ensure_registered() {}
}
