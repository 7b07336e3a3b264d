//! The report: `dump_pools_to_fd` (HAProxy's `show pools`) and the totals.

use crate::flags::MEM_F_SHARED;
use crate::os::{write_all, StackLine};
use crate::pool::{Pool, NAME_LEN};
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
fn pool_line(line: &mut StackLine, p: &Pool, a: usize, u: usize, detailed: bool) {
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
    if detailed {
        let _ = write!(
            line,
            "; released {}, limit {}, minavail {}, align {}, footprint {} bytes, flags 0x{:x}",
            p.released(),
            p.limit(),
            p.minavail(),
            p.align,
            p.alloc_size,
            p.flags
        );
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
            pool_line(&mut line, p, a, u, false);
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

/// The order of a dump with options.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Order {
    /// The registry's order (as `dump_pools_to_fd`).
    Registry,
    /// Names in byte order.
    Name,
    /// Largest objects first.
    Size,
    /// Most bytes allocated first.
    Usage,
}

/// The options of `dump_pools_to_fd_opts`, parsed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct DumpOpts<'a> {
    pub(crate) order: Order,
    /// Only pools whose name starts with these bytes.
    pub(crate) prefix: Option<&'a [u8]>,
    /// At most this many pools.
    pub(crate) max: usize,
    pub(crate) detailed: bool,
    pub(crate) json: bool,
}

impl DumpOpts<'_> {
    /// The plain dump's options.
    pub(crate) const PLAIN: DumpOpts<'static> =
        DumpOpts { order: Order::Registry, prefix: None, max: usize::MAX, detailed: false, json: false };
}

/// Parses an options string: words separated by blanks, in any order:
/// `byname`, `bysize`, `byusage` (at most one of them), `match PREFIX`
/// (once), a decimal count above 0 (once; a huge one saturates),
/// `detailed`, `json`. Err on anything else.
pub(crate) fn parse_opts(s: &[u8]) -> Result<DumpOpts<'_>, ()> {
    let mut o = DumpOpts::PLAIN;
    let (mut sorted, mut counted) = (false, false);
    let mut words = s.split(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')).filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        let order = match w {
            b"byname" => Some(Order::Name),
            b"bysize" => Some(Order::Size),
            b"byusage" => Some(Order::Usage),
            _ => None,
        };
        if let Some(order) = order {
            if sorted && o.order != order {
                return Err(());
            }
            (sorted, o.order) = (true, order);
        } else if w == b"detailed" {
            o.detailed = true;
        } else if w == b"json" {
            o.json = true;
        } else if w == b"match" {
            if o.prefix.is_some() {
                return Err(());
            }
            o.prefix = Some(words.next().ok_or(())?);
        } else if w.iter().all(u8::is_ascii_digit) {
            let n = w.iter().fold(0usize, |n, d| n.saturating_mul(10).saturating_add((d - b'0') as usize));
            if counted || n == 0 {
                return Err(());
            }
            (counted, o.max) = (true, n);
        } else {
            return Err(());
        }
    }
    Ok(o)
}

/// A pool's place in a sorted dump, copied out of the pool so that it
/// outlives the registry lock: the sort key, the name, the address (the
/// last tie-breaker: every pool has its own rank).
#[derive(Clone, Copy)]
struct Rank {
    key: u64,
    name: [u8; NAME_LEN],
    len: u8,
    addr: usize,
}

impl Rank {
    const EMPTY: Rank = Rank { key: 0, name: [0; NAME_LEN], len: 0, addr: 0 };

    fn of(p: &Pool, order: Order) -> Rank {
        let key = match order {
            Order::Size => p.size() as u64,
            Order::Usage => (p.allocated() as u64).saturating_mul(p.size() as u64),
            Order::Name | Order::Registry => 0,
        };
        let n = p.name_bytes();
        let mut r = Rank { key, name: [0; NAME_LEN], len: n.len() as u8, addr: p as *const Pool as usize };
        r.name[..n.len()].copy_from_slice(n);
        r
    }

    fn name(&self) -> &[u8] {
        &self.name[..self.len as usize]
    }

    /// The dump's order: by size and by usage the larger key first, then
    /// the name, then the address.
    fn cmp(&self, other: &Rank) -> std::cmp::Ordering {
        other.key.cmp(&self.key).then_with(|| self.name().cmp(other.name())).then(self.addr.cmp(&other.addr))
    }
}

/// Pools ranked per walk of the registry in a sorted dump: the stack
/// holds this many ranks (3 KiB), and a dump of more pools walks again for
/// the next ones.
const BATCH: usize = 64;

/// Formats one pool of a dump with options into `line`: a text line as
/// `dump_pools_to_fd` has it (and the detailed fields), or a JSON object,
/// preceded by `,\n` unless it is the first. Returns its allocated and
/// used bytes.
fn opts_line(line: &mut StackLine, p: &Pool, o: &DumpOpts<'_>, first: bool) -> (usize, usize) {
    use std::fmt::Write;
    let (a, u) = (p.allocated(), p.used());
    if !o.json {
        pool_line(line, p, a, u, o.detailed);
        return (a * p.size(), u * p.size());
    }
    if !first {
        let _ = line.write_str(",\n");
    }
    let _ = line.write_str("{\"name\":\"");
    json_escape(line, p.name_bytes());
    let _ = write!(
        line,
        "\",\"size\":{},\"allocated\":{},\"allocated_bytes\":{},\"used\":{},\"used_bytes\":{},\"needed_avg\":{},\
         \"failures\":{},\"users\":{},\"shared\":\"{}\",\"mem_f_shared\":{},\"thread_cache\":{},\"debug\":[",
        p.size(),
        a,
        a * p.size(),
        u,
        u * p.size(),
        p.needed_avg(),
        p.failed(),
        p.users.load(Relaxed),
        p.shared.name(),
        p.flags & MEM_F_SHARED != 0,
        p.home.slot().is_some(),
    );
    if let Some(d) = &p.dbg {
        let mut sep = "";
        d.each_mode(|m| {
            let _ = write!(line, "{sep}\"{m}\"");
            sep = ",";
        });
    }
    let _ = line.write_str("]");
    if o.detailed {
        let _ = write!(
            line,
            ",\"released\":{},\"limit\":{},\"minavail\":{},\"align\":{},\"footprint\":{},\"flags\":{}",
            p.released(),
            p.limit(),
            p.minavail(),
            p.align,
            p.alloc_size,
            p.flags
        );
    }
    let _ = write!(line, ",\"addr\":\"{:p}\"}}", p as *const Pool);
    (a * p.size(), u * p.size())
}

/// Writes `name` as the inside of a JSON string: `"` and `\` escaped,
/// control characters (and DEL) as `\u00XX`; other bytes as they are when
/// the name is UTF-8, else every byte above 0x7f as `\u00XX` too (read as
/// Latin-1), so that the output is valid JSON whatever the name's bytes.
fn json_escape(line: &mut StackLine, name: &[u8]) {
    use std::fmt::Write;
    let utf8 = std::str::from_utf8(name).is_ok();
    let mut start = 0;
    for (i, &b) in name.iter().enumerate() {
        let plain = b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f && (b < 0x80 || utf8);
        if plain {
            continue;
        }
        // The run before `i` is plain ASCII or whole UTF-8 characters.
        let _ = line.write_str(std::str::from_utf8(&name[start..i]).unwrap_or(""));
        let _ = match b {
            b'"' => line.write_str("\\\""),
            b'\\' => line.write_str("\\\\"),
            b'\n' => line.write_str("\\n"),
            b'\t' => line.write_str("\\t"),
            b'\r' => line.write_str("\\r"),
            _ => write!(line, "\\u{:04x}", b),
        };
        start = i + 1;
    }
    let _ = line.write_str(std::str::from_utf8(&name[start..]).unwrap_or(""));
}

/// Does the pool pass the dump's filter?
fn wanted(p: &Pool, o: &DumpOpts<'_>) -> bool {
    o.prefix.is_none_or(|pre| p.name_bytes().starts_with(pre))
}

/// Writes the dump with options to `fd` (see `dump_pools_to_fd_opts`):
/// formatted on the stack, each line written with the registry unlocked.
/// Sorted orders rank up to `BATCH` pools per walk of the registry (under
/// its lock), then write them, then walk again for the pools ranked after
/// the last one written. False when a write failed (errno says why).
pub(crate) fn dump_opts_to_fd(fd: i32, o: &DumpOpts<'_>) -> bool {
    use std::fmt::Write;
    let mut line = StackLine::new();
    if o.json {
        let _ = line.write_str("[\n");
    } else {
        let _ = writeln!(line, "Dumping pools usage.");
        crate::barrier::describe(&mut line);
    }
    if !write_all(fd, line.as_bytes()) {
        return false;
    }
    let (mut n, mut alloc, mut used) = (0usize, 0usize, 0usize);
    if o.order == Order::Registry {
        let mut i = 0;
        while n < o.max {
            line.clear();
            let Some(shown) = registry::with_nth(i, |p| wanted(p, o).then(|| opts_line(&mut line, p, o, n == 0)))
            else {
                break;
            };
            i += 1;
            let Some((a, u)) = shown else { continue };
            n += 1;
            alloc += a;
            used += u;
            if !write_all(fd, line.as_bytes()) {
                return false;
            }
        }
    } else {
        let mut batch = [Rank::EMPTY; BATCH];
        let mut last: Option<Rank> = None;
        while n < o.max {
            // The first `want` pools ranked after `last`, in order.
            let want = BATCH.min(o.max - n);
            let mut k = 0;
            registry::for_each(|p| {
                if !wanted(p, o) {
                    return;
                }
                let r = Rank::of(p, o.order);
                if last.is_some_and(|l| r.cmp(&l).is_le()) || (k == want && r.cmp(&batch[k - 1]).is_ge()) {
                    return;
                }
                let at = batch[..k].partition_point(|b| b.cmp(&r).is_lt());
                k = (k + 1).min(want);
                batch.copy_within(at..k - 1, at + 1);
                batch[at] = r;
            });
            for r in &batch[..k] {
                line.clear();
                // Gone since the walk: skipped (the dump may miss a pool
                // destroyed meanwhile, as the plain dump does).
                let Some((a, u)) = registry::with_ptr(r.addr as *const Pool, |p| {
                    wanted(p, o).then(|| opts_line(&mut line, p, o, n == 0))
                })
                .flatten() else {
                    continue;
                };
                n += 1;
                alloc += a;
                used += u;
                if !write_all(fd, line.as_bytes()) {
                    return false;
                }
            }
            if k < want {
                break;
            }
            last = Some(batch[k - 1]);
        }
    }
    line.clear();
    if o.json {
        let _ = line.write_str(if n == 0 { "]\n" } else { "\n]\n" });
    } else {
        let _ = writeln!(line, "Total: {n} pools, {alloc} bytes allocated, {used} used.");
    }
    write_all(fd, line.as_bytes())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn options_parse_in_any_order_and_bad_ones_are_refused() {
        let o = parse_opts(b" byusage\tmatch buf 10 detailed json ").unwrap();
        assert_eq!(o, DumpOpts { order: Order::Usage, prefix: Some(b"buf"), max: 10, detailed: true, json: true });
        assert_eq!(parse_opts(b"").unwrap(), DumpOpts::PLAIN);
        assert_eq!(parse_opts(b"10 bysize bysize").unwrap().order, Order::Size);
        assert_eq!(parse_opts(b"99999999999999999999999999").unwrap().max, usize::MAX);
        for bad in [
            &b"bogus"[..],
            b"byname bysize",
            b"match",
            b"match a match b",
            b"0",
            b"3 4",
            b"-1",
            b"10x",
            b"JSON",
            b"\xff",
        ] {
            assert!(parse_opts(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn names_are_escaped_into_valid_json() {
        let esc = |n: &[u8]| {
            let mut l = StackLine::new();
            json_escape(&mut l, n);
            String::from_utf8(l.as_bytes().to_vec()).unwrap()
        };
        assert_eq!(esc(b"plain"), "plain");
        assert_eq!(esc(b"a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(esc(b"\n\t\r\x01\x1f\x7f"), "\\n\\t\\r\\u0001\\u001f\\u007f");
        assert_eq!(esc("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(esc(b"caf\xe9\""), "caf\\u00e9\\\"");
    }
}
