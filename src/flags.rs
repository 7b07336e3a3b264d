//! The flags and constants of the C contract, in one leaf module: the core
//! reads them from here, and the C face re-exports them (cbindgen writes
//! them into the header from here, doc comments included).

/// Pool flag: the pool may be merged with another pool of the same
/// (rounded) size, the same alignment and the same flags.
pub const MEM_F_SHARED: u32 = 0x1;
/// Pool flag: never round the object size up (sizes are otherwise rounded
/// up to a multiple of 16 bytes).
pub const MEM_F_EXACT: u32 = 0x2;
/// Shared-cache algorithm (the default when no `POOL_F_SHARED_*` is given):
/// a self-locked head, taken by exchanging it with a busy marker. Immune to
/// the read-after-unmap race of the lock-free list.
pub const POOL_F_SHARED_XCHG: u32 = 0x10;
/// Shared-cache algorithm: a spin lock around the list (waiters back off to
/// `sched_yield()`). Immune to the read-after-unmap race; the reference the
/// others are compared with.
pub const POOL_F_SHARED_LOCKED: u32 = 0x20;
/// Shared-cache algorithm: the old lock-free list (pointer + pop counter,
/// swapped by one double-width CAS, `cmpxchg16b`). The counter stops ABA,
/// not the read of a popped object's link from memory another thread may
/// already have freed to the OS: with an allocator that unmaps large blocks
/// at once (musl) it crashes. Kept ONLY to reproduce that bug (`make demo`)
/// and to compare speed. On CPUs other than x86-64 with `cmpxchg16b`, the
/// pool gets `POOL_F_SHARED_LOCKED` instead.
pub const POOL_F_SHARED_DWCAS: u32 = 0x40;
/// Shared-cache algorithm: none; released objects go back to the OS at once.
pub const POOL_F_SHARED_NONE: u32 = 0x80;
/// Pool flag: no thread-local cache for this pool.
pub const POOL_F_NO_LOCAL_CACHE: u32 = 0x100;

/// Criticality classes of a buffer allocation, least critical first. Each
/// class has its own FIFO wait queue; `offer_buffers` wakes the most
/// critical class first. Reserve tiers (`R` = the `reserved_bufs` of
/// `dynbuf_init`): an allocation of class `c` must leave
/// `ceil(R * (DB_PERMANENT - c) / DB_PERMANENT)` buffers to be had after it,
/// so `DB_MUX_RX` never touches the reserve and `DB_PERMANENT` may take the
/// last buffer. With `R = 2`: 2, 2, 1, 1, 0.
#[repr(C)]
#[allow(non_camel_case_types)]
pub enum DynbufCrit {
    /// Receive buffer of a multiplexer (least critical).
    DB_MUX_RX = 0,
    /// Receive buffer of a stream endpoint.
    DB_SE_RX = 1,
    /// A channel's buffer (the class of plain `b_queue`).
    DB_CHANNEL = 2,
    /// Send buffer of a multiplexer.
    DB_MUX_TX = 3,
    /// A buffer that must not fail (most critical).
    DB_PERMANENT = 4,
}

/// Flag OR-ed into a class for `b_alloc_crit`: allocate even though waiters
/// of the same or a more critical class are queued. A woken waiter claims
/// its buffer with it (it is still queued while its callback runs).
pub const DB_F_NOQUEUE: u32 = 0x100;

/// Number of criticality classes (`enum dynbuf_crit`).
pub(crate) const CLASSES: usize = DynbufCrit::DB_PERMANENT as usize + 1;
