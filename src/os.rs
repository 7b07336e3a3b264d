//! The OS side: memory the library takes for objects and for itself, and
//! writes to a file descriptor.
//!
//! Nothing here aborts on memory exhaustion: every allocation returns null
//! (or `None`) and its caller turns that into its documented failure result.
//! Rust's `Box::new` and `Vec::push` abort the process instead, so the
//! library's own structures are made with [`try_box`] and grown with
//! `try_reserve`.

use std::alloc::Layout;
use std::ptr::{null_mut, NonNull};

/// Takes `size` bytes aligned on `align` (0: malloc's own) from the heap.
/// Null when the heap refuses.
pub(crate) fn heap_alloc(size: usize, align: usize) -> *mut u8 {
    if align == 0 {
        // SAFETY: malloc has no precondition; a null result is handled.
        return unsafe { libc::malloc(size) }.cast();
    }
    let mut p = null_mut();
    // SAFETY: align is a power of two and a multiple of the pointer size (checked at pool creation).
    if unsafe { libc::posix_memalign(&mut p, align, size) } != 0 {
        return null_mut();
    }
    p.cast()
}

/// Gives a block of `heap_alloc` back.
///
/// # Safety
/// `p` came from `heap_alloc` and is not used any more.
pub(crate) unsafe fn heap_free(p: *mut u8) {
    // SAFETY: caller guarantee; malloc and posix_memalign blocks both go to free.
    unsafe { libc::free(p.cast()) }
}

/// Takes the memory of one object of `size` bytes aligned on `align` (0:
/// malloc's own): from the heap, or, `mapped`, in a mapping of its own (the
/// `uaf` debug mode: unmapped on free, so any later access faults). Null
/// when the OS refuses.
pub(crate) fn alloc_object(size: usize, align: usize, mapped: bool) -> *mut u8 {
    if mapped {
        map_object(size, align)
    } else {
        heap_alloc(size, align)
    }
}

/// Gives an object's memory back to the OS.
///
/// # Safety
/// `p` came from `alloc_object(size, _, mapped)` and is not used any more.
pub(crate) unsafe fn free_object(p: *mut u8, size: usize, mapped: bool) {
    if mapped {
        // SAFETY: the caller's guarantee: a mapping of `map_object(size, _)`.
        unsafe { unmap_object(p, size) }
    } else {
        // SAFETY: the caller's guarantee: a heap block, unused.
        unsafe { heap_free(p) }
    }
}

/// Maps `len` bytes (a multiple of the page size) aligned on `align` (a
/// power of two, at least the page size), readable and writable. Null when
/// the OS refuses.
pub(crate) fn map_aligned(len: usize, align: usize) -> *mut u8 {
    let pg = page();
    let extra = if align > pg { align } else { 0 };
    // SAFETY: an anonymous private mapping has no precondition.
    let raw = unsafe {
        libc::mmap(
            null_mut(),
            len + extra,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return null_mut();
    }
    let raw = raw as usize;
    if extra == 0 {
        return raw as *mut u8;
    }
    let start = raw.next_multiple_of(align);
    // SAFETY: both ranges are parts of the mapping just made, outside [start, start + len).
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut _, start - raw);
        }
        if raw + len + extra > start + len {
            libc::munmap((start + len) as *mut _, raw + len + extra - (start + len));
        }
    }
    start as *mut u8
}

/// Unmaps a mapping of `map_aligned`.
///
/// # Safety
/// `p` and `len` are a mapping of `map_aligned` (or a part of one, page
/// aligned), not used any more.
pub(crate) unsafe fn unmap(p: *mut u8, len: usize) {
    // SAFETY: the caller's guarantee.
    unsafe { libc::munmap(p.cast(), len) };
}

/// Gives the pages of `[p, p + len)` back to the OS: they leave resident
/// memory at once and read as zeros when touched again.
///
/// # Safety
/// The range is page-aligned, inside a private anonymous mapping, and its
/// contents are not needed any more.
pub(crate) unsafe fn discard(p: *mut u8, len: usize) {
    // SAFETY: the caller's guarantee; MADV_DONTNEED on private anonymous
    // memory only drops contents.
    unsafe { libc::madvise(p.cast(), len, libc::MADV_DONTNEED) };
}

/// Milliseconds of a monotonic clock (coarse: a few ms of resolution, and
/// cheap to read: no system call).
pub(crate) fn now_ms() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// Asks malloc to give free memory back to the OS, where it can (glibc's
/// `malloc_trim`; other C libraries have none, or do it on `free`). One at
/// a time: a trim while another runs is skipped (it would find nothing
/// more, and glibc's trim initialises its arenas without a lock when no
/// `malloc` ran before it, as under a sanitizer that replaces `malloc`:
/// two at once crashed there).
pub(crate) fn trim_malloc() {
    #[cfg(target_env = "gnu")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        static TRIMMING: AtomicBool = AtomicBool::new(false);
        // Acquire: pairs with the Release below; one trim at a time.
        if TRIMMING.swap(true, Ordering::Acquire) {
            return;
        }
        // SAFETY: malloc_trim has no precondition.
        unsafe { libc::malloc_trim(0) };
        TRIMMING.store(false, Ordering::Release);
    }
}

/// `Box::new(v)` that returns `None` instead of aborting when memory is short.
/// The box is a raw pointer: give it back with [`free_box`].
pub(crate) fn try_box<T>(v: T) -> Option<NonNull<T>> {
    let layout = Layout::new::<T>();
    debug_assert!(layout.size() != 0, "no zero-sized library structure");
    // SAFETY: the layout has a non-zero size (asserted above).
    let p = NonNull::new(unsafe { std::alloc::alloc(layout) }.cast::<T>())?;
    // SAFETY: freshly allocated for a `T`, aligned, not yet initialised.
    unsafe { p.as_ptr().write(v) };
    Some(p)
}

/// Drops and frees a box made by [`try_box`].
///
/// # Safety
/// `p` came from `try_box::<T>` and nothing uses it any more.
pub(crate) unsafe fn free_box<T>(p: NonNull<T>) {
    // SAFETY: caller guarantee: a live, initialised `T` that we own.
    unsafe {
        p.as_ptr().drop_in_place();
        std::alloc::dealloc(p.as_ptr().cast(), Layout::new::<T>());
    }
}

/// The page size.
pub(crate) fn page() -> usize {
    // SAFETY: sysconf has no precondition.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Maps an object of `len` bytes at the end of its own pages (so that an
/// overrun past its debug words faults), aligned on `align` (0: 16).
pub(crate) fn map_object(len: usize, align: usize) -> *mut u8 {
    let pg = page();
    let size = len.next_multiple_of(pg);
    let align = align.max(16);
    let start = map_aligned(size, align.max(pg));
    if start.is_null() || align > pg {
        return start;
    }
    // Below a page, the object starts within the first page, as late as its
    // alignment allows: see unmap_object.
    start.wrapping_add((size - len) & !(align - 1))
}

/// # Safety
/// `p` came from `map_object(len, _)`: its mapping starts at its page.
pub(crate) unsafe fn unmap_object(p: *mut u8, len: usize) {
    let pg = page();
    let base = p as usize & !(pg - 1);
    // SAFETY: caller guarantee: [base, base + len rounded to pages) is that mapping.
    unsafe { libc::munmap(base as *mut _, len.next_multiple_of(pg)) };
}

/// Writes all of `buf` to `fd`: retries on `EINTR` and continues after
/// short writes. False when the fd refuses (bad fd, closed pipe, ...).
pub(crate) fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes; a bad fd just fails.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Sets the calling thread's `errno`, for a C caller to read.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// A line of text formatted on the stack, for output that must not touch
/// the heap (`dump_pools_to_fd` runs when memory is exhausted too). What
/// does not fit is cut, and the line ends with "...".
pub(crate) struct StackLine {
    buf: [u8; 512],
    len: usize,
    cut: bool,
}

impl StackLine {
    pub(crate) fn new() -> Self {
        StackLine { buf: [0; 512], len: 0, cut: false }
    }

    /// The bytes written so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.cut = false;
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.cut {
            return Ok(());
        }
        // Room for "...\n" stays free so that a cut line still ends well.
        let room = self.buf.len() - 4 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
            self.buf[self.len..self.len + 4].copy_from_slice(b"...\n");
            self.len += 4;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn stack_lines_cut_what_does_not_fit() {
        let mut l = StackLine::new();
        write!(l, "abc {}", 12).unwrap();
        assert_eq!(l.as_bytes(), b"abc 12");
        l.clear();
        for _ in 0..100 {
            write!(l, "0123456789").unwrap();
        }
        assert_eq!(l.as_bytes().len(), 512);
        assert!(l.as_bytes().ends_with(b"...\n"));
    }

    #[test]
    fn mapped_objects_end_at_their_last_page_and_honour_alignment() {
        let pg = page();
        for (len, align) in [(100, 0), (pg, 0), (pg + 8, 64), (40, 4 * pg)] {
            let p = map_object(len, align);
            assert!(!p.is_null());
            assert_eq!(p as usize % align.max(16), 0);
            // SAFETY: the mapping holds `len` bytes at `p`.
            unsafe { p.write_bytes(7, len) };
            if align <= pg {
                assert!(
                    len.next_multiple_of(pg) - (p as usize % pg + len) < align.max(16),
                    "the object ends the mapping"
                );
            }
            // SAFETY: made by map_object(len, _).
            unsafe { unmap_object(p, len) };
        }
    }

    #[test]
    fn boxes_round_trip() {
        let b = try_box([7u64; 100]).unwrap();
        // SAFETY: a live box made just above.
        assert_eq!(unsafe { b.as_ref() }[99], 7);
        // SAFETY: made by try_box, used no more.
        unsafe { free_box(b) };
    }
}
