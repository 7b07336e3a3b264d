//! The C face of bufpool: argument checks and conversions, no logic of its
//! own. Every doc comment here is copied by cbindgen into `include/bufpool.h`.

mod buffers;
mod pools;

pub use buffers::*;
pub use pools::*;
mod version; pub use version::*;
