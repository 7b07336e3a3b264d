#!/bin/sh
# make demo's opening legend and closing verdict.
#   demo/verdict.sh legend          what the four algorithms are, what to look for
#   demo/verdict.sh verdict FILE    the verdict in words, computed from FILE: the
#                                   lines race_demo and throughput appended to it
#                                   (BUFPOOL_DEMO_SUMMARY=FILE)
# Exit status of verdict: 0 when the run came out as expected (dwcas crashed,
# xchg never did), 1 otherwise, 2 when FILE holds no figures.
case "${1:-}" in
legend)
    cat <<'TXT'
== make demo: what you are about to see
  The same pool, four ways for its shared cache of idle objects:
    xchg    the DEFAULT: a self-locked head (a popper swaps the head with a busy marker,
            so only it reads the first object's link)
    locked  a spin lock around the list: the reference to compare with
    dwcas   the OLD lock-free list (pointer + counter, cmpxchg16b), kept only to show its
            bug: it can read the link of an object another thread has just freed to the OS
    none    no shared cache: every free goes straight back to the allocator (malloc and
            free; for 256 KB and 2 MB, mmap and munmap)
  Part 1, the race: 16 threads allocate and free 2 MB objects while others are unmapped.
    "survived" is the good outcome; "killed by SIGSEGV" is the bug. Expected: dwcas killed,
    the three others survive.
  Part 2, throughput: millions of operations per second per algorithm (higher is better);
    xchg/locked and xchg/none above 1x mean the default is faster, dwcas/xchg below 1x
    that the old list is slower. A verdict in words closes the demo.
TXT
    ;;
verdict)
    [ -s "${2:-}" ] || { echo "verdict: no figures in '${2:-}'"; exit 2; }
    awk '
    function med(arr, n,    i, j, t) {   # median of arr[1..n], sorted in place
        for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
        return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
    }
    function x(v) { return v >= 10 ? sprintf("%.0fx", v) : sprintf("%.2fx", v) }
    function ratios(name, what, arr, n, lo, hi,   m) {
        if (n == 0) { printf "    %-26s no cell where both ran\n", name; return 0 }
        m = med(arr, n)
        printf "    %-26s median %s, from %s to %s over %d cells%s\n", name, x(m), x(lo), x(hi), n, what
        return m
    }
    $1 == "race" {
        if (!($2 in libc)) { libc[$2] = 1; order[++nlibc] = $2 }
        key = $2 SUBSEP $3
        runs[$3] += $4; segv[$3] += $5; clean[$3] += $6
        if ($5 > 0) crash_ms[key] = $8; segv_l[key] = $5; runs_l[key] = $4
    }
    $1 == "tp" {
        cells++
        if ($5 > 0 && $6 > 0) { nl++; rl[nl] = $5 / $6; if (nl == 1 || rl[nl] < lol) lol = rl[nl]; if (nl == 1 || rl[nl] > hil) hil = rl[nl] }
        if ($5 > 0 && $8 > 0) { nn++; rn[nn] = $5 / $8; if (nn == 1 || rn[nn] < lon) lon = rn[nn]; if (nn == 1 || rn[nn] > hin) hin = rn[nn]
                                if ($5 < $8) { slow++; slowcells = slowcells (slow > 1 ? ", " : "") $2 " " $3 " " $4 "thr" }
                                if (!($2 in tlibc)) { tlibc[$2] = 1; torder[++ntlibc] = $2 }
                                if (!(($2, $3) in nsz)) { nsz[$2, $3] = 0; szorder[$2, ++nszl[$2]] = $3 }
                                k = ++nsz[$2, $3]; bysize[$2, $3, k] = $5 / $8 }
        if ($5 > 0 && $7 > 0) { nd++; rd[nd] = $7 / $5; if (nd == 1 || rd[nd] < lod) lod = rd[nd]; if (nd == 1 || rd[nd] > hid) hid = rd[nd] }
        if ($5 < 0) tpx++
        if ($7 < 0) tpd++
    }
    END {
        print "== Verdict, from the figures of this run"
        if (nlibc) {
            if (segv["dwcas"] > 0) {
                print "  Crash: dwcas, the old lock-free list, was killed by SIGSEGV"
                for (i = 1; i <= nlibc; i++) {
                    l = order[i]
                    if (segv_l[l, "dwcas"] > 0)
                        printf "    on %s in %d of %d runs, %.1f ms after the start (median)\n", l, segv_l[l, "dwcas"], runs_l[l, "dwcas"], crash_ms[l, "dwcas"]
                    else
                        printf "    on %s in none of its %d runs\n", l, runs_l[l, "dwcas"]
                }
            } else
                printf "  Crash: dwcas did not crash this time (0 of %d runs): the widened window still needs luck on this machine.\n", runs["dwcas"]
            printf "  xchg, the default, survived %d of %d runs; locked %d of %d; none %d of %d.\n", clean["xchg"], runs["xchg"], clean["locked"], runs["locked"], clean["none"], runs["none"]
        }
        if (cells) {
            print "  Speed of the default, xchg, in throughput (ratios of Mops/s; above 1x, xchg is faster):"
            ml = ratios("against the lock (locked):", "", rl, nl, lol, hil)
            mn = ratios("against no cache (none):", slow ? sprintf("; slower than no cache in %d: %s", slow, slowcells) : "", rn, nn, lon, hin)
            for (i = 1; i <= ntlibc; i++) {
                l = torder[i]; line = ""
                for (j = 1; j <= nszl[l]; j++) {
                    z = szorder[l, j]; n = nsz[l, z]
                    for (k = 1; k <= n; k++) tmp[k] = bysize[l, z, k]
                    line = line (j > 1 ? ", " : "") x(med(tmp, n)) " at " z
                }
                printf "      on %s, by object size (median over thread counts): %s\n", l, line
            }
            md = ratios("dwcas against xchg:", "", rd, nd, lod, hid)
            if (tpx) printf "    xchg crashed in %d throughput cells\n", tpx
            if (tpd) printf "    dwcas crashed in %d throughput cells (no widened window there)\n", tpd
        }
        expected = nlibc && segv["dwcas"] > 0 && segv["xchg"] == 0 && clean["xchg"] == runs["xchg"] && tpx == 0
        if (nlibc && segv["xchg"] > 0)
            print "  => UNEXPECTED: xchg, the default, crashed. That is a bug in bufpool: please report it."
        else if (nlibc) {
            s = segv["dwcas"] > 0 ? "  => The default (xchg) does not have the crash of the old list (dwcas)" : "  => The default (xchg) survived every run"
            if (cells && nl) s = s sprintf(", at %s", ml >= 0.9 && ml <= 1.1 ? "the speed of the lock" : (ml > 1.1 ? x(ml) " the speed of the lock" : "a cost against the lock (" x(ml) ")"))
            if (cells && nn) s = s sprintf(", and %s no cache (%s to %s)", mn >= 1 ? x(mn) " the speed of" : "slower than", x(lon), x(hin))
            print s "."
        } else if (cells)
            print "  (no race figures in this run)"
        exit expected ? 0 : 1
    }' "$2"
    ;;
*)
    echo "usage: $0 legend | verdict FILE" >&2
    exit 2
    ;;
esac
