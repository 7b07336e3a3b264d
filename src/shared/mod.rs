//! The shared cache: where a pool keeps idle objects that any thread may
//! take. Each algorithm lives in a file of its own; a pool picks one at
//! creation from its flags and keeps it for life.
//!
//! Every algorithm threads its list through the first word of each idle
//! object (a [`Link`]), so an idle object costs no memory besides itself.

pub(crate) mod xchg;

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

/// The algorithm a pool uses for its shared cache.
pub(crate) enum Shared {
    /// Self-locked head (seed 004): the default.
    Xchg(xchg::XchgList),
    /// No shared cache: released objects go back to the OS at once.
    None,
}

impl Shared {
    /// Takes one idle object, or null when there is none.
    #[inline]
    pub(crate) fn pop(&self) -> *mut Link {
        match self {
            Shared::Xchg(l) => l.pop(),
            Shared::None => core::ptr::null_mut(),
        }
    }

    /// Keeps an idle object. Returns false when this algorithm keeps
    /// nothing, in which case the caller frees it to the OS.
    ///
    /// # Safety
    /// `item` is an object of this pool that the caller owns.
    #[inline]
    pub(crate) unsafe fn push(&self, item: *mut Link) -> bool {
        match self {
            // SAFETY: forwarded caller guarantee.
            Shared::Xchg(l) => unsafe { l.push(item) },
            Shared::None => return false,
        }
        true
    }

    /// Detaches the whole list and returns its first object (null-terminated chain).
    #[inline]
    pub(crate) fn take_all(&self) -> *mut Link {
        match self {
            Shared::Xchg(l) => l.take_all(),
            Shared::None => core::ptr::null_mut(),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Shared::Xchg(_) => "xchg",
            Shared::None => "none",
        }
    }
}
