//! The first word of an idle object, seen as a list link: the thread
//! caches and the shared caches thread their lists through it, so an idle
//! object costs no memory besides itself. A leaf module.

use crate::sync::RawCell;

/// The first word of an idle object, seen as a list link.
#[repr(C)]
pub(crate) struct Link {
    pub(crate) next: RawCell<*mut Link>,
}

/// Reads the link of an idle object.
///
/// # Safety
/// `l` points to an idle object that the caller owns or holds the list
/// lock for, so its memory is mapped and no one writes its link meanwhile.
#[inline(always)]
pub(crate) unsafe fn next_of(l: *mut Link) -> *mut Link {
    // SAFETY: the caller guarantees `l` is a live idle object (see above).
    unsafe { (*l).next.with(|p| *p) }
}

/// Writes the link of an idle object.
///
/// # Safety
/// `l` points to an object that the caller owns (not yet published).
#[inline(always)]
pub(crate) unsafe fn set_next(l: *mut Link, n: *mut Link) {
    // SAFETY: the caller owns `l` exclusively (see above).
    unsafe { (*l).next.with_mut(|p| *p = n) }
}
