//! `fork()` from a multi-threaded program: the child gets a copy of memory
//! and one thread. Any lock another thread held at that moment would stay
//! held in the child forever, and a structure it was changing would stay
//! half-changed. So the library registers `pthread_atfork` handlers:
//!
//! - before the fork, the forking thread takes every lock of the library,
//!   in the library's lock order (`docs/DESIGN.md` has the table): the
//!   maintenance thread's start/stop lock, `dynbuf_init`'s lock, the wait
//!   queue's mutex, the pool registry, the thread-cache registry, every
//!   thread cache (held from outside: an owner inside one is given a few
//!   time slices to leave, and a cache whose owner stays inside is left
//!   alone in the child), every pool's shared cache, page runs and debug
//!   store, the debug registry, the maintenance thread's state;
//! - after it, the parent lets them all go;
//! - the child lets them go too, after putting right what the parent's
//!   other threads left behind: their thread caches are emptied into the
//!   pools' shared caches and freed (their exit hooks will never run),
//!   their transits and running callbacks are forgotten.
//!
//! The handlers are registered when the library is loaded (an ELF
//! constructor) and, in case a loader skipped it, by the C functions that
//! create state (`create_pool`, `dynbuf_init`, `b_queue_crit`). Objects that the parent's other threads held are held by
//! nobody in the child: they stay counted as used.

use std::sync::Once;

static REGISTER: Once = Once::new();

/// Registers the fork handlers, once per process.
pub(crate) fn ensure_registered() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers have the C ABI pthread_atfork expects
        // and stay mapped for the life of the process (the .so is linked
        // -z nodelete). A failure (ENOMEM) leaves fork as unsafe as before.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}

/// The ELF constructor: registration at load time, before any thread of
/// the program can call us.
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    ensure_registered();
}

extern "C" fn prepare() {
    // Never copied half-done: the once-only initialisations are forced
    // before the locks (`BUFPOOL_DEBUG`, `BUFPOOL_RELEASE_PERIOD`, the
    // protocol's mode).
    crate::debug::init_from_env();
    crate::maintain::init_from_env();
    let _ = crate::barrier::mode();
    crate::maintain::fork_prepare_outer();
    crate::dynbuf::fork_prepare();
    crate::waitq::fork_prepare();
    crate::registry::fork_prepare();
    crate::maintain::fork_prepare_inner();
}

extern "C" fn parent() {
    crate::maintain::fork_parent();
    crate::registry::fork_parent();
    crate::waitq::fork_parent();
    crate::dynbuf::fork_release();
}

extern "C" fn child() {
    crate::maintain::fork_child();
    crate::registry::fork_child();
    crate::waitq::fork_child();
    crate::dynbuf::fork_release();
}
