//! bufpool: HAProxy-style memory pools, margin allocation and buffer wait
//! queues, for C programs. The C contract is `include/bufpool.h`.
//!
//! Modules, one concern each:
//! - [`pool`]: the pool core (objects, counters, limit, crowding, destroy).
//! - [`cache`]: the thread-local cache and its byte budget.
//! - [`shared`]: the shared-cache algorithms, one file each.
//! - [`debug`]: the debug modes.
//! - [`dynbuf`]: the buffer pool, margin and class allocation, offer budget.
//! - [`waitq`]: the buffer wait queue and its dequeue guarantee.
//! - [`ffi`]: the exported C functions, checks and conversions only.

pub mod cache;
pub mod debug;
pub mod dynbuf;
pub mod ffi;
pub mod pool;
pub mod shared;
pub(crate) mod sync;
pub mod waitq;

pub use pool::Pool;
