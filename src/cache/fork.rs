//! The caches across `fork()`: the forking thread holds every cache while
//! the process is copied, so that no owner is inside one; the child then
//! empties and frees the caches of the parent's other threads (threads
//! that do not exist there, whose exit hooks will never run).

use super::budget;
use super::current;
use super::life;
use super::list::Registry;
use super::local::Local;
use crate::os::free_box;
use crate::owned::{Owner, Settled, WHOLE};
use crate::sync::{ForkSlot, Spin};

/// The registry, held across `fork()` by the forking thread, and whether
/// its barrier was the process-wide one.
static FORK_HELD: ForkSlot<(Registry, bool)> = ForkSlot::new();

/// Spins (then yields) a busy owner is given before the fork: a preempted
/// owner gets a few time slices to finish its call; one stopped for good
/// does not stop the fork (its cache is left alone in the child).
const FORK_WAIT_ROUNDS: u32 = 1000;

/// Before `fork()`: takes the registry and holds every cache. Lock order:
/// after the pool registry, before the shared caches.
pub(crate) fn fork_prepare() {
    let _ = life::exit_key(); // never copied half-initialised
    let reg = Registry::lock();
    let process = {
        let batch = reg.hold_all();
        for tc in batch.caches() {
            let mut spin = Spin::new();
            for _ in 0..FORK_WAIT_ROUNDS {
                if !matches!(batch.owner(tc, WHOLE), Owner::In(_) | Owner::Whole) {
                    break;
                }
                spin.wait();
            }
        }
        let process = batch.is_process();
        // Keep them held across the fork: the parent or child handler lets go.
        std::mem::forget(batch);
        process
    };
    FORK_HELD.put((reg, process));
}

/// After `fork()`, in the parent: lets every cache go.
pub(crate) fn fork_parent() {
    if let Some((reg, _)) = FORK_HELD.take() {
        for tc in reg.caches() {
            tc.cell.unhold(reg.side());
        }
    }
}

/// After `fork()`, in the child, once the shared caches are usable again:
/// the caches of the parent's other threads are emptied into their pools'
/// shared caches and freed, except one whose owner was inside a call at
/// the fork (or could not be told apart: the process had lost
/// `membarrier`), which is left alone (its objects stay counted as used);
/// this thread's own cache is let go (and made to fence its owner if the
/// child cannot have `membarrier`).
pub(crate) fn fork_child() {
    let Some((mut reg, process)) = FORK_HELD.take() else { return };
    let membarrier = crate::barrier::fork_child();
    reg.retain(|side, tc, ptr| {
        if current::is_own(tc) {
            if !membarrier {
                tc.cell.make_fenced_alone(side);
            }
            tc.cell.unhold(side);
            return true;
        }
        let settled = Settled::new(side, process);
        if tc.cell.owner(&settled) == Owner::Out {
            // SAFETY: held since `fork_prepare`, the owner out, and it does not exist here.
            tc.cell.with_held(&settled, |l: *mut Local| budget::empty(unsafe { &mut *l }));
            // SAFETY: out of the registry once `retain` drops it; made by try_box;
            // its thread does not exist in this process.
            unsafe { free_box(ptr) };
        }
        false
    });
}
