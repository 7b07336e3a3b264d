//! The C face of bufpool: argument checks and conversions, no logic of its
//! own. Every doc comment here is copied by cbindgen into `include/bufpool.h`.
//!
//! Raw pointers at the boundary. The exported functions are safe `extern
//! "C" fn`s that take raw pointers from C: the C ABI cannot mark a function
//! unsafe, and each function's doc comment (the header) states what its
//! pointers must be. Each function checks for NULL and converts a pointer to
//! a reference in one place, with a `// SAFETY:` line naming that contract.
//! Clippy's `not_unsafe_ptr_arg_deref` objects to exactly this design, so
//! it is allowed here, once, for the whole C face.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod buffers;
mod inline;
mod pools;

pub use crate::flags::*;
pub use buffers::*;
pub use inline::*;
pub use pools::*;
mod version;
pub use version::*;
