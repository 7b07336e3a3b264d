# bench/memory.awk: the memory part's tables and targets (bench/memory.sh).
#
# Spike (awk -F'\t'), reads spike.txt: "ID<TAB>LABEL<TAB>THREADS<TAB>k=v k=v..."
# (the k=v line of bench/spike.c):
#   mode=spike-row -v id=ID   the line printed as a row completes
#   mode=spike-table          the Markdown table
#   mode=spike-targets        bufpool back within 10% of idle + 2 MiB in <= 1 s
# Fluctuating need, reads fluct.txt: "LIBC MODE RUN MOPS OPS CPU_NS RELEASED ALLOCATED NEED":
#   mode=fluct-runs           each run, and the medians
#   mode=fluct-table          the Markdown table
#   mode=fluct-targets        default period >= 0.99x never-free, per libc
# mawk has no asort: medians go through an insertion sort.

function sortn(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) {
        t = a[i]
        for (j = i - 1; j >= 1 && a[j] > t; j--)
            a[j + 1] = a[j]
        a[j + 1] = t
    }
}

function mib(kib) { return kib == "" || kib < 0 ? "-" : sprintf("%.1f", kib / 1024) }
function within(ms) { return ms < 0 ? "never (5 s)" : sprintf("%.2f s", ms / 1000) }
function release(i) { return T[i] == 1 ? sprintf("1 thread, at once (%.0f ms)", F[i, "release_ms"]) : sprintf("%d threads, over 2 s", T[i]) }
function call(i) {
    return sprintf("%s (%s, %s ms)", mib(F[i, "call_kib"]), F[i, "purge"], F[i, "call_ms"] >= 10 ? sprintf("%.0f", F[i, "call_ms"]) : sprintf("%.1f", F[i, "call_ms"]))
}

# ---- spike ------------------------------------------------------------------------
mode ~ /^spike/ {
    n++
    ID[n] = $1; L[n] = $2; T[n] = $3; row[$1] = n
    m = split($4, kv, " ")
    for (j = 1; j <= m; j++) {
        eq = index(kv[j], "=")
        v = substr(kv[j], eq + 1)
        F[n, substr(kv[j], 1, eq - 1)] = (v ~ /^-?[0-9.]+$/) ? v + 0 : v
    }
    next
}

# ---- fluctuating need ---------------------------------------------------------------
{
    k = $1 SUBSEP $2
    c = ++cnt[k]
    mops[k, c] = $4 + 0; cpu[k, c] = $6 + 0; rel[k, c] = $7 + 0
    byrun[$1, $2, $3] = $4 + 0
    if (!(($1, $3) in seenrun)) { seenrun[$1, $3] = 1; nrun[$1]++; runid[$1, nrun[$1]] = $3 }
    if (!($1 in seenlibc)) { seenlibc[$1] = 1; libcs[++nlibc] = $1 }
}

function med(arr, k,   i, a, c) {
    c = cnt[k]
    if (c == 0) return ""
    for (i = 1; i <= c; i++) a[i] = arr[k, i]
    sortn(a, c)
    return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
}
function runs(arr, k, fmt,   i, s) {
    s = ""
    for (i = 1; i <= cnt[k]; i++) s = s (i > 1 ? " " : "") sprintf(fmt, arr[k, i])
    return s
}
function libcname(c) { return c == "glibc" ? "glibc (M_MMAP_THRESHOLD 128 KB), libbufpool.so" : c == "musl" ? "musl 1.2 (static, musl-gcc), libbufpool.a" : c }
# The median of the paired ratios: run r's default over run r's never (the
# two ran back to back, in alternating order), so that the machine's drift
# from run to run cancels out of each ratio.
function ratio(c,   i, r, n, a) {
    n = 0
    for (i = 1; i <= nrun[c]; i++) {
        r = runid[c, i]
        if ((c, "default", r) in byrun && (c, "never", r) in byrun && byrun[c, "never", r] > 0)
            a[++n] = byrun[c, "default", r] / byrun[c, "never", r]
    }
    if (n == 0) return ""
    sortn(a, n)
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}

END {
    if (mode == "spike-row") spike_row(row[id])
    else if (mode == "spike-table") spike_table()
    else if (mode == "spike-targets") spike_targets()
    else if (mode == "fluct-runs") fluct_runs()
    else if (mode == "fluct-table") fluct_table()
    else if (mode == "fluct-targets") fluct_targets()
}

function spike_row(i,   s) {
    s = sprintf("  %-48s %-28s idle %s, peak %s; +0.1 s %s, +1 s %s, +5 s %s; after the call %s; within: %s; slowest light op %.2f ms CPU; light ops %d/s per thread",
        L[i], release(i) ":", mib(F[i, "idle_kib"]), mib(F[i, "peak_kib"]), mib(F[i, "rss01_kib"]), mib(F[i, "rss1_kib"]),
        mib(F[i, "rss5_kib"]), call(i), within(F[i, "within_ms"]), F[i, "slowest_us"] / 1000, F[i, "traffic_hz"])
    if (F[i, "allocated"] >= 0)
        s = s sprintf("; at +5 s the pool has %d objects, %d given back to the OS", F[i, "allocated"], F[i, "released"])
    print s
}

function spike_table(   i) {
    print "| allocator | release | idle | peak | +0.1 s | +1 s | +5 s | after the explicit call (call, its time) | within 10% of idle + 2 MiB | slowest light op (CPU) |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for (i = 1; i <= n; i++)
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f ms |\n", L[i], release(i), mib(F[i, "idle_kib"]),
            mib(F[i, "peak_kib"]), mib(F[i, "rss01_kib"]), mib(F[i, "rss1_kib"]), mib(F[i, "rss5_kib"]), call(i),
            within(F[i, "within_ms"]), F[i, "slowest_us"] / 1000
}

function spike_targets(   ids, k, i, ok, d, w, name) {
    split("pool1 pool4 dynbuf1 dynbuf4", ids, " ")
    ok = 1; d = ""
    for (k = 1; k <= 4; k++) {
        i = row[ids[k]]
        if (i == "") { ok = 0; continue }
        w = F[i, "within_ms"]
        if (w < 0 || w > 1000) ok = 0
        name = (ids[k] ~ /^pool/ ? "pool" : "dynbuf") " " (T[i] == 1 ? "1 thread" : T[i] " threads")
        d = d (d == "" ? "" : ", ") name " " within(w)
    }
    printf "target bufpool pool and dynbuf within 10%% of idle + 2 MiB <= 1 s after the release, default period: %s (%s)\n",
        ok ? "met" : "NOT met", d
    ok = 1; d = ""
    for (k = 1; k <= 4; k++) {
        i = row[ids[k]]
        if (i == "") { ok = 0; continue }
        if (F[i, "slowest_us"] > 1000) ok = 0
        name = (ids[k] ~ /^pool/ ? "pool" : "dynbuf") " " (T[i] == 1 ? "1 thread" : T[i] " threads")
        d = d (d == "" ? "" : ", ") name sprintf(" %.2f ms", F[i, "slowest_us"] / 1000)
    }
    printf "target the slowest light operation during the release at most 1 ms (CPU), default period: %s (%s)\n",
        ok ? "met" : "NOT met", d
    i = row["pool1p"]
    if (i != "")
        printf "  the same with pool_set_release_period(250), pool, 1 thread: %s (%s)\n",
            (F[i, "within_ms"] >= 0 && F[i, "within_ms"] <= 1000) ? "met" : "NOT met", within(F[i, "within_ms"])
}

function fluct_runs(   j, c, k, m, modes) {
    split("default never", modes, " ")
    for (j = 1; j <= nlibc; j++) {
        c = libcs[j]
        for (m = 1; m <= 2; m++) {
            k = c SUBSEP modes[m]
            printf "  %-6s %-8s Mops/s %s (median %.2f), CPU ns per alloc + free %s, released %s\n", c, modes[m],
                runs(mops, k, "%.2f"), med(mops, k), runs(cpu, k, "%.0f"), runs(rel, k, "%d")
        }
        printf "  %-6s default / never: %.3fx (median of the paired runs' ratios)\n", c, ratio(c)
    }
}

function fluct_table(   j, c) {
    print "| libc | default period (400 ms): Mops/s | released | never frees (period UINT_MAX, minavail 64): Mops/s | released | default / never |"
    print "| --- | --- | --- | --- | --- | --- |"
    for (j = 1; j <= nlibc; j++) {
        c = libcs[j]
        printf "| %s | %.2f | %d | %.2f | %d | %.3fx |\n", libcname(c), med(mops, c SUBSEP "default"), med(rel, c SUBSEP "default"),
            med(mops, c SUBSEP "never"), med(rel, c SUBSEP "never"), ratio(c)
    }
}

function fluct_targets(   j, c, r, ok, d) {
    ok = 1; d = ""
    for (j = 1; j <= nlibc; j++) {
        c = libcs[j]; r = ratio(c)
        if (r == "" || r < 0.99) ok = 0
        d = d (j > 1 ? ", " : "") c " " sprintf("%.3fx", r)
    }
    printf "target 2 MB shared path, default period >= 0.99x the never-freeing pool: %s (%s)\n", ok ? "met" : "NOT met", d
}
