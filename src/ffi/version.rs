//! The library's version, for a run-time check against the header's.

use core::ffi::c_char;

/// The version of the library actually loaded, as "MAJOR.MINOR.PATCH" (a
/// static string, never NULL). Compare it with the header's
/// `BUFPOOL_VERSION` at start-up to check that the library a program runs
/// with is the one it was compiled against:
/// `strcmp(bufpool_version(), BUFPOOL_VERSION) == 0`. Libraries of the same
/// `BUFPOOL_VERSION_MAJOR` share the soname `libbufpool.so.MAJOR`.
#[no_mangle]
pub extern "C" fn bufpool_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
