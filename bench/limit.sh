#!/bin/sh
# bench/limit.sh DIR PER BATCHES BATCH_MS STEAL STRACE_CALLS "THREADS" "STRACE_THREADS"
# (called by bench/bench.mk)
#
# The limit part of `make bench`: what pool_alloc costs at a pool's limit
# (bench/limit.c says what each figure is). DIR/limit runs twice, once
# per protocol of the thread caches (BUFPOOL_CACHE_SYNC is read once per
# process): as the library comes (membarrier where the kernel has it), then
# with BUFPOOL_CACHE_SYNC=fence; one row per thread count of THREADS. Then,
# when strace is installed, the system calls of the failed allocations in
# the default protocol, for each thread count of STRACE_THREADS:
# `strace -f -e trace=membarrier,futex` of `limit count`, STRACE_CALLS
# failed allocations; the calls of all threads made during them, per call.
# Prints the raw lines as they come, then the table (also written to
# DIR/limit.md, with the raw lines in DIR/limit.txt) and the target.
set -eu

dir=$1 per=$2 batches=$3 batch_ms=$4 steal=$5 strace_calls=$6 threads=$7 strace_threads=$8
bin=$dir/limit
start=$(date +%s)

echo
echo "bufpool limit benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): make bench" \
     "(LIMIT_THREADS=\"$threads\" LIMIT_PER=$per LIMIT_BATCHES=$batches LIMIT_BATCH_MS=$batch_ms LIMIT_STEAL=$steal" \
     "LIMIT_STRACE=$strace_calls LIMIT_STRACE_THREADS=\"$strace_threads\")"
echo "machine: $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for v in BUFPOOL_CACHE_SYNC BUFPOOL_RELEASE_PERIOD BUFPOOL_MAINTENANCE BUFPOOL_DEBUG; do
    if eval "[ -n \"\${$v+x}\" ]"; then
        echo "  $v was set in the environment: unset for these runs (bufpool as it comes)"
        unset "$v"
    fi
done

: >"$dir/limit.txt"
# shellcheck disable=SC2086
"$bin" rows "$per" "$batches" "$batch_ms" "$steal" $threads | sed 's/^/default /' | tee -a "$dir/limit.txt"
# shellcheck disable=SC2086
BUFPOOL_CACHE_SYNC=fence "$bin" rows "$per" "$batches" "$batch_ms" "$steal" $threads | sed 's/^/fence /' | tee -a "$dir/limit.txt"

# ---- system calls per failed allocation (default protocol) -------------------------
# `limit count` makes its failed calls between two getppid() calls: the
# calls of every thread that strace logs between them are theirs (setup and
# teardown, whose futex calls vary with timing, left out).
sc=""
if ! command -v strace >/dev/null 2>&1; then
    sc="strace is not installed (apt-get install strace; 'make bench' as root installs it)"
elif ! strace -f -o /dev/null true >/dev/null 2>&1; then
    sc="strace does not run here (ptrace not permitted?)"
fi
if [ -z "$sc" ]; then
    for t in $strace_threads; do
        log=$dir/limit-strace-$t.txt
        strace -f -e trace=membarrier,futex,getppid -o "$log" "$bin" count "$per" "$t" "$strace_calls" >/dev/null
        awk -v t="$t" -v n="$strace_calls" '
            / getppid\(/ { mark++; next }
            mark == 1 && /^[0-9]+ +membarrier\(/ { m++ }
            mark == 1 && /^[0-9]+ +futex\(/ { f++ }
            END {
                if (mark != 2) { print "bench: limit: no getppid markers in the strace log" > "/dev/stderr"; exit 1 }
                printf "syscalls threads=%s failed=%s membarrier=%d futex=%d\n", t, n, m, f
            }' "$log" | tee -a "$dir/limit.txt"
    done
else
    echo "syscalls: skipped: $sc"
fi

# ---- the table and the target --------------------------------------------------------
echo
awk -v per="$per" -v batches="$batches" -v batch_ms="$batch_ms" -v steal="$steal" -v sc="$sc" -v ncalls="$strace_calls" '
function val(line, key,    i, n, f, kv) {
    n = split(line, f, " ")
    for (i = 1; i <= n; i++) { split(f[i], kv, "="); if (kv[1] == key) return kv[2] }
    return ""
}
function fmt(x) {
    if (x == "") return "-"
    x += 0
    if (x >= 100) return sprintf("%.0f", x)
    if (x >= 10) return sprintf("%.1f", x)
    return sprintf("%.2f", x)
}
function ratio(a, b) { return (a == "" || b == "" || b + 0 <= 0) ? "" : (a + 0) / (b + 0) }
$1 == "default" || $1 == "fence" {
    p = $1; t = val($0, "threads")
    if (!(t in seen)) { seen[t] = 1; order[++nt] = t }
    lim[t] = val($0, "limit"); proto[p] = val($0, "proto")
    fail[p, t] = val($0, "fail_ns"); slow[p, t] = val($0, "slow_ns"); st[p, t] = val($0, "steal_ns")
}
$1 == "syscalls" {
    t = val($0, "threads"); n = val($0, "failed")
    mb[t] = val($0, "membarrier") / n; fx[t] = val($0, "futex") / n
}
END {
    print "pool_alloc at a pool'"'"'s limit: 1 KiB objects, limit = threads x " per ", every thread with a thread cache holding the pool; ns per call,"
    print "default protocol (" proto["default"] ") / BUFPOOL_CACHE_SYNC=fence (" proto["fence"] "):"
    print ""
    print "| threads | limit | failed pool_alloc at the limit, ns (CPU) | slow-path pool_alloc from the shared cache, ns (CPU) | failed / slow | pool_alloc stealing from another cache, ns (wall) | membarrier per failed call | futex per failed call |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for (i = 1; i <= nt; i++) {
        t = order[i]
        printf "| %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s | %s |\n", t, lim[t],
            fmt(fail["default", t]), fmt(fail["fence", t]), fmt(slow["default", t]), fmt(slow["fence", t]),
            fmt(ratio(fail["default", t], slow["default", t])), fmt(ratio(fail["fence", t], slow["fence", t])),
            fmt(st["default", t]), fmt(st["fence", t]),
            (t in mb) ? fmt(mb[t]) : "-", (t in fx) ? fmt(fx[t]) : "-"
    }
    print ""
    print "- failed: pool_alloc returning NULL (each call checked) with every object held by the threads (" per " each) and none idle, the other threads blocked on a semaphore; thread CPU time of the calling thread, median of " batches " batches of at least " batch_ms " ms."
    print "- slow path: pool_set_cache_size(0), the pool below its limit: each pool_alloc misses the thread cache and pops an object from the pool'"'"'s shared cache; pool_alloc alone (runs of 256 calls timed, their pool_free untimed), thread CPU time, median of " batches " batches of at least " batch_ms " ms."
    print "- steal: the pool at its limit, one idle object in the cache of the last thread created, last in the registry (the search holds every other cache once); pool_alloc takes it, the blocked thread frees it into its own cache again; CLOCK_MONOTONIC around pool_alloc alone, median of " steal " calls."
    if (sc == "")
        print "- system calls: strace -f -e trace=membarrier,futex, every thread'"'"'s calls made during " ncalls " failed calls, default protocol."
    else
        print "- system calls: skipped: " sc "."
    # The target: the row of 64 threads.
    t = 64
    for (k = 1; k <= 2; k++) {
        p = k == 1 ? "default" : "fence"
        label = k == 1 ? "default protocol, " proto["default"] : "BUFPOOL_CACHE_SYNC=fence"
        if (!((p, t) in fail)) { tl[k] = "target failed allocation at the limit within 2x of a successful slow-path allocation with 64 threads (" label "): not measured (no 64-thread row)"; continue }
        r = ratio(fail[p, t], slow[p, t])
        tl[k] = sprintf("target failed allocation at the limit within 2x of a successful slow-path allocation with 64 threads (%s): %s (%s ns vs %s ns, %sx)",
            label, r <= 2 ? "PASS" : "MISS", fmt(fail[p, t]), fmt(slow[p, t]), fmt(r))
    }
    print ""
    for (k = 1; k <= 2; k++) if (k in tl) print tl[k]
}' "$dir/limit.txt" | tee "$dir/limit.md"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); total $(($(date +%s) - start)) s"
