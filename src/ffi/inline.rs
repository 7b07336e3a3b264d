//! The layout the header's inline fast path reads (`BUFPOOL_INLINE`): the
//! constants below are copied into `include/bufpool.h`, and each is checked
//! here, at compile time, against the structures it names. The C code that
//! uses them is in cbindgen.toml's trailer; docs/DESIGN.md, "The inline
//! fast path", argues it. A change that moves one of these words bumps
//! `BUFPOOL_INLINE_ABI` and renames the thread-local word after it
//! (`bufpool_fast_v1`, `crate::cache`'s `current.rs`), so that a program
//! built for the old layout fails to load instead of misreading the new.

#[cfg(not(loom))]
use crate::cache::layout;

/// The version of the inline fast path's view of the library (the layout
/// below and the protocol its code follows). The thread-local word it reads
/// carries the number in its name, `bufpool_fast_v1`: a library with
/// another layout does not export that name, and a program built with
/// `BUFPOOL_INLINE` against this header then fails to start, with the
/// dynamic linker's "undefined symbol: bufpool_fast_v1".
pub const BUFPOOL_INLINE_ABI: u32 = 1;

/// Inline fast path: offset of a pool's slot (`unsigned short`) in the
/// object a `struct pool_head *` points to. The slot is the byte offset of
/// the pool's stack in every thread cache; a pool without a thread cache
/// (and a destroyed pool's handle) has the slot of a stack that is always
/// empty and has no room, so its calls always reach the library.
pub const BUFPOOL_INLINE_POOL_SLOT: usize = 0;
/// Inline fast path: offset in a thread cache of the owner's `busy` word
/// (`unsigned int`): the slot while the owning thread works on one stack,
/// 0 when it is out.
pub const BUFPOOL_INLINE_BUSY: usize = 0;
/// Inline fast path: offset in a thread cache of the `foreign` word
/// (`unsigned int`): not 0 while another thread holds the cache or is
/// taking it, or when the owner must fence (the library's path then).
pub const BUFPOOL_INLINE_FOREIGN: usize = 8;
/// Inline fast path: offset of a stack's top object (`void *`, the first
/// word of each idle object links to the next) in a thread cache, less the
/// pool's slot.
pub const BUFPOOL_INLINE_TOP: usize = 32;
/// Inline fast path: offset of a stack's room (`unsigned int`: objects it
/// may still take) in a thread cache, less the pool's slot.
pub const BUFPOOL_INLINE_ROOM: usize = 40;
/// Inline fast path: offset in a thread cache of the owner's countdown of
/// releases to its next maintenance tick (`unsigned int`). The inline
/// release leaves the last one of each round to `pool_free`, which runs
/// the tick.
pub const BUFPOOL_INLINE_COUNTDOWN: usize = 6256;

#[cfg(not(loom))]
const _: () = {
    assert!(BUFPOOL_INLINE_POOL_SLOT == crate::pool::SLOT_OFFSET, "the header reads the pool's slot here");
    assert!(BUFPOOL_INLINE_BUSY == layout::BUSY, "the header's busy word");
    assert!(BUFPOOL_INLINE_FOREIGN == layout::FOREIGN, "the header's foreign word");
    assert!(BUFPOOL_INLINE_TOP == layout::TOP, "the header's stack top");
    assert!(BUFPOOL_INLINE_ROOM == layout::ROOM, "the header's stack room");
    assert!(BUFPOOL_INLINE_COUNTDOWN == layout::COUNTDOWN, "the header's countdown");
};
