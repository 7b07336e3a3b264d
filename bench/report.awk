# bench/report.awk: medians, tables, targets and plot data of a bench run.
# Reads instr.txt ("W SIZE VARIANT INSTR_PER_OP", may be empty) and
# results.txt ("W SIZE VARIANT RUN CPU_NS WALL_NS OPS MALLOCS ALLOC0 ALLOC1 MINFLT").
#
#   awk -f bench/report.awk -v mode=cell -v w=w1 -v size=64 -v variants="so a glibc" instr.txt results.txt
#   mode=cell     the block of one workload and size
#   mode=table    the summary, as a Markdown table
#   mode=targets  the issue's targets, met or NOT met
#   mode=plot     writes DIR/plot-wN.dat (-v dir=DIR) for bench/plot.gp
#
# "speed vs .so" is the variant's speed over bufpool.so's: bufpool.so's
# CPU ns / the variant's CPU ns for W1 and W2, the variant's Mops/s (wall)
# / bufpool.so's for W3 and W4; above 1 the variant is faster.
# mawk has no asort: medians go through an insertion sort.

function sortn(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) {
        t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--)
            a[j + 1] = a[j]
        a[j + 1] = t
    }
}

# med(W, SIZE, V, FIELD): median over the runs; FIELD "mops" is 1000 / wall ns,
# "cores" CPU time over wall time (the cores the workload's threads kept busy).
function med(w, size, v, f,   k, n, i, a) {
    k = w SUBSEP size SUBSEP v
    n = cnt[k]
    if (n == 0)
        return ""
    for (i = 1; i <= n; i++)
        a[i] = (f == "mops") ? 1000 / val[k, i, "wall"] : (f == "cores") ? val[k, i, "cpu"] / val[k, i, "wall"] : val[k, i, f]
    sortn(a, n)
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

function label(v) { return v == "so" ? "bufpool.so" : v == "a" ? "bufpool.a" : v == "inline" ? "bufpool.so+inline" : v }
function threaded(w) { return w == "w3" || w == "w4" }
function sizename(s) { return s == 64 ? "64 B" : s == 1024 ? "1 KiB" : s == 16384 ? "16 KiB" : s " B" }
function title(w) {
    if (w == "w1") return "W1 pair: alloc + free"
    if (w == "w2") return "W2 ring: 256 live, free oldest + alloc + write 64 B"
    if (w == "w3") return "W3 4 threads on " cores " cores, each the W2 ring, one shared pool"
    return "W4 producer allocates + writes 64 B, consumer frees, 1024-slot SPSC ring"
}
# The figure the ratio and the table use: CPU ns (W1, W2) or Mops/s from wall time (W3, W4).
function fig(w, size, v) { return med(w, size, v, threaded(w) ? "mops" : "cpu") }
function speed(w, size, v,   x, s) {
    x = fig(w, size, v); s = fig(w, size, "so")
    if (x == "" || s == "" || x == 0 || s == 0) return ""
    return threaded(w) ? x / s : s / x
}
function f1(x) { return x == "" ? "-" : sprintf(x >= 100 ? "%.0f" : x >= 10 ? "%.1f" : "%.2f", x) }
function isize(w, size, v) { return ((w, size, v) in instr) ? instr[w, size, v] : "" }

FILENAME ~ /instr/ { instr[$1, $2, $3] = $4; ninstr++; next }
{
    k = $1 SUBSEP $2 SUBSEP $3
    n = ++cnt[k]
    val[k, n, "cpu"] = $5; val[k, n, "wall"] = $6; val[k, n, "ops"] = $7
    val[k, n, "mallocs"] = $8; val[k, n, "alloc0"] = $9; val[k, n, "alloc1"] = $10; val[k, n, "minflt"] = $11
    runs = n > runs ? n : runs
}

END {
    nv = split(variants, V, " ")
    if (cores == "") cores = 2
    if (mode == "cell") cell()
    else if (mode == "table") table()
    else if (mode == "targets") targets()
    else if (mode == "plot") plot()
}

function cell(   i, v, x, m, ops, per) {
    printf "\n== %s, %s: median of %d runs ==\n", title(w), sizename(size), cnt[w SUBSEP size SUBSEP "so"]
    if (!threaded(w)) {
        printf "%-12s %10s %10s %12s %13s\n", "variant", "CPU ns/op", "wall ns/op", "instr/op", "speed vs .so"
        for (i = 1; i <= nv; i++) {
            v = V[i]
            printf "%-12s %10s %10s %12s %13s\n", label(v), f1(med(w, size, v, "cpu")), f1(med(w, size, v, "wall")),
                f1(isize(w, size, v)), f1(speed(w, size, v))
        }
        return
    }
    printf "%-12s %13s %10s %6s %13s %14s %15s", "variant", "Mops/s (wall)", "CPU ns/op", "cores", "speed vs .so", "mallocs/1k op", "pool_allocated"
    if (w == "w4") printf " %15s", "minflt/1k op"
    printf "\n"
    for (i = 1; i <= nv; i++) {
        v = V[i]
        m = med(w, size, v, "mallocs"); ops = med(w, size, v, "ops")
        per = (m == "" || m < 0) ? "(malloc)" : f1(1000 * m / ops)
        x = med(w, size, v, "alloc0")
        printf "%-12s %13s %10s %6s %13s %14s %15s", label(v), f1(med(w, size, v, "mops")), f1(med(w, size, v, "cpu")),
            f1(med(w, size, v, "cores")), f1(speed(w, size, v)), per, (x == "" || x < 0) ? "-" : sprintf("%d -> %d", x, med(w, size, v, "alloc1"))
        if (w == "w4") printf " %15s", f1(1000 * med(w, size, v, "minflt") / ops)
        printf "\n"
    }
}

function row(name, unit, w, sizes,   i, j, v, s, n, S, c, x, r) {
    n = split(sizes, S, " ")
    printf "| %s | %s |", name, unit
    for (i = 1; i <= nv; i++) {
        v = V[i]; c = ""
        for (j = 1; j <= n; j++) {
            x = (unit == "instr") ? isize(w, S[j], v) : fig(w, S[j], v)
            c = c (j > 1 ? " / " : "") f1(x)
        }
        if (unit != "instr" && v != "so") {
            r = ""
            for (j = 1; j <= n; j++)
                r = r (j > 1 ? " / " : "") f1(speed(w, S[j], v))
            c = c " (" r ")"
        }
        printf " %s |", c
    }
    printf "\n"
}

function table(   i, s) {
    s = "| workload (64 B / 1 KiB / 16 KiB) | unit |"
    for (i = 1; i <= nv; i++) s = s " " label(V[i]) " |"
    print s
    s = "| --- | --- |"
    for (i = 1; i <= nv; i++) s = s " --- |"
    print s
    row("W1 pair: alloc + free", "ns (CPU)", "w1", "64 1024 16384")
    row("W2 ring of 256 live: free oldest + alloc + write 64 B", "ns (CPU)", "w2", "64 1024 16384")
    row("W3 4 threads on " cores " cores, each the W2 ring, one shared pool", "Mops/s (wall)", "w3", "64 1024 16384")
    row("W4 producer allocates, consumer frees (16 KiB only)", "Mops/s (wall)", "w4", "16384")
    if (ninstr > 0) {
        row("W1 pair, callgrind", "instr", "w1", "64 1024 16384")
        row("W2 ring, callgrind", "instr", "w2", "64 1024 16384")
    }
}

# verdict(NAME, W, PEER, CMP, SIZES): bufpool.so against PEER at every size,
# CMP "le" (ns: at or below) or "ge" (Mops/s: at or above). Medians within
# 1% of each other are a tie, which counts as "at": run-to-run noise is larger.
function verdict(name, w, peer, cmp, sizes,   n, S, j, a, b, ok, d, tie) {
    n = split(sizes, S, " ")
    ok = 1; d = ""
    for (j = 1; j <= n; j++) {
        a = fig(w, S[j], "so"); b = fig(w, S[j], peer)
        if (b == "") { printf "target %s: not measured (%s skipped)\n", name, peer; return }
        tie = (a <= b * 1.01 && b <= a * 1.01)
        if (!tie && ((cmp == "le" && a > b) || (cmp == "ge" && a < b))) ok = 0
        d = d (j > 1 ? ", " : "") sizename(S[j]) " " f3(a) " vs " f3(b) (tie ? " (tie)" : "")
    }
    printf "target %s: %s (%s)\n", name, ok ? "met" : "NOT met", d
}

# paired(W, SIZE, V, PEER): the median over the rounds of V's CPU ns over
# PEER's in the same round (each round runs every variant once, one after
# the other): the machine's drifts over minutes hit both sides of a pair.
function paired(w, size, v, peer,   kv, kp, n, i, a) {
    kv = w SUBSEP size SUBSEP v; kp = w SUBSEP size SUBSEP peer
    n = cnt[kv] < cnt[kp] ? cnt[kv] : cnt[kp]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = val[kv, i, "cpu"] / val[kp, i, "cpu"]
    sortn(a, n)
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

# ratio_verdict: V's CPU ns at most K times PEER's at every size, by the
# paired ratio (1% over K is a tie, which counts as met).
function ratio_verdict(name, w, peer, sizes, v, k,   n, S, j, r, ok, d) {
    n = split(sizes, S, " ")
    ok = 1; d = ""
    for (j = 1; j <= n; j++) {
        r = paired(w, S[j], v, peer)
        if (r == "") { printf "target %s: not measured (%s or %s did not run)\n", name, label(v), peer; return }
        if (r > k * 1.01) ok = 0
        d = d (j > 1 ? ", " : "") sizename(S[j]) " " sprintf("%.2fx", r)
    }
    printf "target %s: %s (%s; median of the rounds' ratios)\n", name, ok ? "met" : "NOT met", d
}
function f3(x) { return sprintf(x >= 100 ? "%.1f" : x >= 10 ? "%.2f" : "%.3f", x) }

function targets(   a, m, ops, i, s, ok, d) {
    print ""
    print "Targets (bufpool.so against the peer, medians of this run; within 1% is a tie, which counts as at):"
    verdict("W1 pair at or below tcmalloc's CPU ns at every size", "w1", "tcmalloc", "le", "64 1024 16384")
    verdict("W2 ring at or below tcmalloc's CPU ns at every size", "w2", "tcmalloc", "le", "64 1024 16384")
    verdict("W3 4 threads at or above tcmalloc's Mops/s at every size", "w3", "tcmalloc", "ge", "64 1024 16384")
    verdict("W4 producer/consumer at or above glibc's Mops/s", "w4", "glibc", "ge", "16384")
    m = med("w4", 16384, "so", "mallocs"); ops = med("w4", 16384, "so", "ops")
    if (m != "")
        printf "target W4 no malloc call per object in steady state (< 1 per 100 objects): %s (%d malloc calls for %d objects while timed, median; pool_allocated %d -> %d)\n",
            (m / ops < 0.01) ? "met" : "NOT met", m, ops, med("w4", 16384, "so", "alloc0"), med("w4", 16384, "so", "alloc1")
    # Issue 17's bar: 0.8x tcmalloc's time, through the .so's calls and
    # with the header's inline fast path (BUFPOOL_INLINE) over the .so.
    ratio_verdict("W1 pair through the .so's calls at or below 0.8x tcmalloc's CPU ns", "w1", "tcmalloc", "64 1024 16384", "so", 0.8)
    ratio_verdict("W2 ring through the .so's calls at or below 0.8x tcmalloc's CPU ns", "w2", "tcmalloc", "64 1024 16384", "so", 0.8)
    ratio_verdict("W1 pair, .so with BUFPOOL_INLINE, at or below 0.8x tcmalloc's CPU ns", "w1", "tcmalloc", "64 1024 16384", "inline", 0.8)
    ratio_verdict("W2 ring, .so with BUFPOOL_INLINE, at or below 0.8x tcmalloc's CPU ns", "w2", "tcmalloc", "64 1024 16384", "inline", 0.8)
    if (ninstr == 0) {
        printf "target <= %d instr/pair through the .so: not measured (no callgrind)\n", limit
        return
    }
    instr_target("through the .so's calls", "so")
    instr_target("with BUFPOOL_INLINE", "inline")
}

function instr_target(how, v,   ok, d, s, i, a) {
    ok = 1; d = ""
    split("64 1024 16384", s, " ")
    for (i = 1; i <= 3; i++) {
        a = isize("w1", s[i], v)
        if (a == "") { printf "target W1 <= %d instr/pair %s: not measured (%s did not run)\n", limit, how, label(v); return }
        if (a > limit) ok = 0
        d = d (i > 1 ? ", " : "") sizename(s[i]) " " f1(a)
    }
    printf "target W1 <= %d instr/pair %s: %s (%s)\n", limit, how, ok ? "met" : "NOT met", d
}

function plot(   w, j, n, S, i, f, line) {
    for (w = 1; w <= 4; w++) {
        f = dir "/plot-w" w ".dat"
        line = "size"
        for (i = 1; i <= nv; i++) line = line " " label(V[i])
        print line > f
        n = split(w == 4 ? "16384" : "64 1024 16384", S, " ")
        for (j = 1; j <= n; j++) {
            line = "\"" sizename(S[j]) "\""
            for (i = 1; i <= nv; i++) line = line " " (fig("w" w, S[j], V[i]) == "" ? "NaN" : fig("w" w, S[j], V[i]))
            print line > f
        }
        close(f)
    }
}
