//! The report: `dump_pools_to_fd` (HAProxy's `show pools`) and the totals.

use crate::flags::MEM_F_SHARED;
use crate::os::{write_all, StackLine};
use crate::pool::Pool;
use crate::registry;
use std::sync::atomic::Ordering::Relaxed;

/// Bytes allocated and used by all pools.
pub(crate) fn total_bytes() -> (u64, u64) {
    let (mut alloc, mut used) = (0u64, 0u64);
    registry::for_each(|p| {
        alloc += (p.allocated() * p.size()) as u64;
        used += (p.used() * p.size()) as u64;
    });
    (alloc, used)
}

/// Formats one pool's line.
fn pool_line(line: &mut StackLine, p: &Pool, a: usize, u: usize) {
    use std::fmt::Write;
    let _ = write!(
        line,
        "  - Pool {} ({} bytes) : {} allocated ({} bytes), {} used, needed_avg {}, {} failures, {} users, shared={}{}{}",
        p.name(),
        p.size(),
        a,
        a * p.size(),
        u,
        p.needed_avg(),
        p.failed(),
        p.users.load(Relaxed),
        p.shared.name(),
        if p.flags & MEM_F_SHARED != 0 { " [SHARED]" } else { "" },
        if p.home.slot().is_none() { " [NOCACHE]" } else { "" },
    );
    if let Some(d) = &p.dbg {
        d.describe(line);
    }
    let _ = writeln!(line, " @{:p}", p as *const Pool);
}

/// Writes the `show pools` text to `fd`, a line at a time, formatted on the
/// stack (it works when memory is exhausted) and written with the registry
/// unlocked (a slow reader does not stall pool creation). A pool created or
/// destroyed meanwhile may be missed or shown twice. `EINTR` is retried;
/// a bad fd ends it.
pub(crate) fn dump_to_fd(fd: i32) {
    use std::fmt::Write;
    let mut line = StackLine::new();
    let _ = writeln!(line, "Dumping pools usage.");
    crate::barrier::describe(&mut line);
    if !write_all(fd, line.as_bytes()) {
        return;
    }
    let (mut n, mut alloc, mut used) = (0usize, 0usize, 0usize);
    for i in 0.. {
        line.clear();
        let Some((a, u, size)) = registry::with_nth(i, |p| {
            let (a, u) = (p.allocated(), p.used());
            pool_line(&mut line, p, a, u);
            (a, u, p.size())
        }) else {
            break;
        };
        n += 1;
        alloc += a * size;
        used += u * size;
        if !write_all(fd, line.as_bytes()) {
            return;
        }
    }
    line.clear();
    let _ = writeln!(line, "Total: {n} pools, {alloc} bytes allocated, {used} used.");
    write_all(fd, line.as_bytes());
}
