#!/bin/sh
# bench/memory.sh DIR SPIKE_MB FLUCT_MS FLUCT_RUNS append|new   (called by bench/bench.mk)
#
# The memory part of `make bench`, after the speed part (bench/run.sh):
#
# 1. The spike table: DIR/spike-VARIANT (bench/spike.c says what a run
#    is), one fresh process per row, one run per row: bufpool's pool and
#    dynbuf with the default release period, 1 thread releasing at once and
#    4 threads releasing over 2 s, one more row with
#    pool_set_release_period(250), then glibc, jemalloc and mimalloc, the
#    same two ways. RSS at 0.1 s, 1 s and 5 s after the release, after the
#    explicit call, and when it came within 10% of idle + 2 MiB.
# 2. The fluctuating 2 MB need on the shared path: DIR/fluct (glibc,
#    M_MMAP_THRESHOLD 128 KB) and DIR/fluct.musl (static musl, when it was
#    built), the default release period against the same pool made never
#    to free, FLUCT_RUNS runs of FLUCT_MS ms each, interleaved; medians.
#
# Prints each row as it completes, then both tables as Markdown (appended
# to DIR/table.md, or written anew with "new") and the targets. The
# spike's SPIKE_MB is scaled down, with a line saying so, when less than
# 3 GiB (or 3 x SPIKE_MB) of memory is available.
set -eu

dir=$1 spike_mb=$2 fluct_ms=$3 fluct_runs=$4 table_mode=${5:-append} mem_png=${6:-$1/memory.png}
start=$(date +%s)
cores=$(nproc)
stamp=$(date -u '+%Y-%m-%d %H:%M UTC')

busy_steal() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9; exit }' /proc/stat; }
ours() { times >"$1"; awk 'NR == 2 { gsub("s", ""); split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$1"; }
hz=$(getconf CLK_TCK)
ours0=$(ours "$dir/mem-times.txt")
set -- $(busy_steal)
busy0=$1 steal0=$2

echo
echo "bufpool memory benchmark, $stamp: make bench (SPIKE_MB=$spike_mb FLUCT_MS=$fluct_ms FLUCT_RUNS=$fluct_runs)"
echo "machine: $cores cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for v in BUFPOOL_RELEASE_PERIOD BUFPOOL_MAINTENANCE BUFPOOL_DEBUG; do
    if eval "[ -n \"\${$v+x}\" ]"; then
        echo "  $v was set in the environment: unset for these runs (bufpool as it comes)"
        unset "$v"
    fi
done

# ---- memory available ----------------------------------------------------------
avail_mb=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
need_mb=$((spike_mb * 3 > 3072 ? spike_mb * 3 : 3072))
if [ "$avail_mb" -lt "$need_mb" ]; then
    scaled=$((avail_mb / 3 / 64 * 64))
    [ "$scaled" -ge 64 ] || scaled=64
    echo "memory: only $avail_mb MiB available (MemAvailable), less than $need_mb MiB: the spike is scaled down from $spike_mb to $scaled MiB"
    spike_mb=$scaled
else
    echo "memory: $avail_mb MiB available (MemAvailable): the spike is $spike_mb MiB"
fi
objs=$((spike_mb * 64))

# ---- 1. the spike ---------------------------------------------------------------
variants="" skipped=""
for v in bufpool glibc jemalloc mimalloc; do
    bin=$dir/spike-$v
    if [ -x "$bin" ] && info=$("$bin" info 2>&1); then
        variants="$variants $v"
        echo "  spike-$v: $info"
    elif [ ! -x "$bin" ] && grep -q 'cannot find -l' "$bin.log" 2>/dev/null; then
        skipped="$skipped $v (not installed: lib$v-dev)"
    elif [ ! -x "$bin" ]; then
        skipped="$skipped $v (did not link: $(grep -m1 -i error "$bin.log" 2>/dev/null || echo "see $bin.log"))"
    else
        skipped="$skipped $v (does not run: $info)"
    fi
done
case " $variants " in *" bufpool "*) ;; *) echo "bench: spike-bufpool does not run" >&2; exit 1 ;; esac
[ -z "$skipped" ] || echo "skipped peers:$skipped; 'make bench' as root installs them"

echo
echo "== Spike: $objs x 16 KiB ($spike_mb MiB) allocated and written, then all released: by 1 thread at once, or by"
echo "   4 threads (a quarter each) over 2 s; then light traffic (one 16 KiB alloc + 64 B write + free per ms per"
echo "   thread, the same threads), no explicit call. RSS (Rss of /proc/self/smaps_rollup, MiB) after the end of"
echo "   the release, read every 10 ms; then the explicit call; one run per row, each a fresh process"

# ID VARIANT MODE THREADS PERIOD LABEL (~ for a space)
rows="pool1 bufpool pool 1 default bufpool~pool,~period~400~ms~(default)
pool4 bufpool pool 4 default bufpool~pool,~period~400~ms~(default)
pool1p bufpool pool 1 250 bufpool~pool,~pool_set_release_period(250)
dynbuf1 bufpool dynbuf 1 default bufpool~dynbuf,~period~400~ms~(default)
dynbuf4 bufpool dynbuf 4 default bufpool~dynbuf,~period~400~ms~(default)
glibc1 glibc malloc 1 default glibc
glibc4 glibc malloc 4 default glibc
jemalloc1 jemalloc malloc 1 default jemalloc
jemalloc4 jemalloc malloc 4 default jemalloc
mimalloc1 mimalloc malloc 1 default mimalloc
mimalloc4 mimalloc malloc 4 default mimalloc"

: >"$dir/spike.txt"
echo "$rows" | while read -r id v mode threads period label; do
    case " $variants " in *" $v "*) ;; *) continue ;; esac
    # SPIKE_TRACE: the monitor also prints every reading (for the plot).
    if ! line=$(SPIKE_TRACE=1 "$dir/spike-$v" "$mode" "$threads" "$period" "$spike_mb" </dev/null 2>"$dir/spike-$id.trace"); then
        cat "$dir/spike-$id.trace" >&2
        echo "bench: spike-$v $mode $threads $period $spike_mb failed" >&2
        exit 1
    fi
    printf '%s\t%s\t%s\t%s\n' "$id" "$(echo "$label" | tr '~' ' ')" "$threads" "$line" >>"$dir/spike.txt"
    awk -F'\t' -f bench/memory.awk -v mode=spike-row -v id="$id" "$dir/spike.txt"
done

# The plot: RSS over the 5 s after the release, one line a row released by
# one thread (bench/plot-mem.gp reads DIR/plot-rss.dat: a header line, then
# "ms MiB..." a reading).
plot_ids="" plot_names=""
for id in pool1 dynbuf1 glibc1 jemalloc1 mimalloc1; do
    [ -s "$dir/spike-$id.trace" ] || continue
    plot_ids="$plot_ids $id"
    plot_names="$plot_names $(awk -F'\t' -v id="$id" '$1 == id { split($2, w, ","); gsub(" ", "-", w[1]); print w[1]; exit }' "$dir/spike.txt")"
done
# shellcheck disable=SC2086
awk -v names="$plot_names" -v n="$(echo $plot_ids | wc -w)" '
    FNR == 1 { f++ }
    /spike: +[0-9]+ ms +[0-9]+ KiB/ { for (i = 1; i < NF; i++) if ($(i + 1) == "ms") { ms = $i; kib = $(i + 2); break }
                                      rss[ms, f] = kib / 1024; if (!(ms in seen)) { seen[ms] = 1; order[++k] = ms } }
    END { printf "ms %s\n", names; for (j = 1; j <= k; j++) { ms = order[j]; printf "%d", ms
          for (i = 1; i <= n; i++) printf " %s", ((ms, i) in rss) ? sprintf("%.1f", rss[ms, i]) : "-"; printf "\n" } }' \
    $(for id in $plot_ids; do echo "$dir/spike-$id.trace"; done) >"$dir/plot-rss.dat"
if command -v gnuplot >/dev/null 2>&1; then
    gnuplot -e "dat='$dir/plot-rss.dat'; out='$mem_png'; ncol=$(($(echo $plot_ids | wc -w) + 1)); stamp='$(date -u '+%Y-%m-%d')'; mb='$spike_mb'" bench/plot-mem.gp &&
        echo "plot: $mem_png (RSS after the spike, one line an allocator)"
else
    echo "plot: skipped: gnuplot is not installed (apt-get install gnuplot-nox; 'make bench' as root installs it)"
fi

# ---- 2. the fluctuating 2 MB need ------------------------------------------------
libcs="glibc"
if [ -x "$dir/fluct.musl" ]; then
    libcs="glibc musl"
else
    echo
    echo "musl: skipped ($(head -n 1 "$dir/fluct.musl.log" 2>/dev/null || echo "not built")): only the glibc run stands; 'make bench' as root installs musl-tools"
fi
echo
echo "== Fluctuating need on the shared path: 2 threads (pinned to 2 cores) each holding 0 to 3 objects of 2 MB"
echo "   (POOL_F_NO_LOCAL_CACHE), a new random target after each change, 64 B written into each new object;"
echo "   Mops/s = allocations (each with its free) per second of wall time; $fluct_runs runs of $fluct_ms ms, interleaved"
: >"$dir/fluct.txt"
r=1
while [ "$r" -le "$fluct_runs" ]; do
    order="default never"
    [ $((r % 2)) = 1 ] || order="never default"
    for c in $libcs; do
        bin=$dir/fluct
        [ "$c" = glibc ] || bin=$dir/fluct.musl
        for m in $order; do
            if ! line=$("$bin" "$m" "$fluct_ms"); then
                echo "bench: $bin $m $fluct_ms failed" >&2
                exit 1
            fi
            echo "$c $m $r $(echo "$line" | sed 's/[a-z_]*=//g')" >>"$dir/fluct.txt"
        done
    done
    r=$((r + 1))
done
awk -f bench/memory.awk -v mode=fluct-runs "$dir/fluct.txt"

# ---- a crowded pool under thread-cache traffic ------------------------------------
echo
echo "3. A crowded pool (bench/crowd.c: 4096 objects of 1 KiB freed, then 4 allocations + 4 frees through the thread cache every 0.1 ms; period 400 ms), 3 runs:"
: >"$dir/crowd.txt"
for r in 1 2 3; do
    line=$("$dir/crowd" 400 4096 64)
    echo "  $line"
    echo "$line" >>"$dir/crowd.txt"
done

# ---- the tables, the targets ------------------------------------------------------
if [ "$table_mode" = new ]; then : >"$dir/table.md"; else echo >>"$dir/table.md"; fi
{
    echo
    echo "Spike, $stamp ($spike_mb MiB of 16 KiB objects; RSS in MiB; within: when RSS first came within 10% of idle + 2 MiB after the release; one run per row):"
    echo
    awk -F'\t' -f bench/memory.awk -v mode=spike-table "$dir/spike.txt"
    echo
    echo "Fluctuating 2 MB need on the shared path, $stamp (2 threads x 0..3 objects, POOL_F_NO_LOCAL_CACHE; Mops/s from wall time, median of $fluct_runs runs of $fluct_ms ms; released: objects given back to the OS during a run, median):"
    echo
    awk -f bench/memory.awk -v mode=fluct-table "$dir/fluct.txt"
} | tee -a "$dir/table.md"
echo
echo "Targets (this run):"
awk -F'\t' -f bench/memory.awk -v mode=spike-targets "$dir/spike.txt"
awk -f bench/memory.awk -v mode=fluct-targets "$dir/fluct.txt"
awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "periods") p[++n] = kv[2] } }
     END { worst = 0; for (i = 1; i <= n; i++) { if (p[i] < 0 || p[i] > 2) ok = 0; if (p[i] < 0 || p[i] > worst) worst = (p[i] < 0 ? 99 : p[i]) }
           printf "target a crowded pool gives back what thread-cache traffic keeps idle within 2 periods: %s (worst of %d runs: %s periods)\n",
               (n && worst <= 2) ? "met" : "NOT met", n, worst == 99 ? "never (20)" : sprintf("%.2f", worst) }' "$dir/crowd.txt"

# ---- machine load ---------------------------------------------------------------
ours1=$(ours "$dir/mem-times.txt")
set -- $(busy_steal)
elapsed=$(($(date +%s) - start))
awk -v b="$(($1 - busy0))" -v st="$(($2 - steal0))" -v hz="$hz" -v ours="$ours1" -v ours0="$ours0" -v t="$elapsed" -v n="$cores" 'BEGIN {
    others = b / hz - (ours - ours0); if (others < 0) others = 0
    printf "\nmachine load: other processes kept %.2f of the %d cores busy on average during the memory part (%.0f s of CPU), the hypervisor stole %.0f s;\n", others / t, n, others, st / hz
    if (others / t > 0.25 || st / hz > 0.05 * t * n)
        print "  the figures are noisy: the release under light traffic runs in the traffic thread (a busy core slows it), and the 2 MB need runs on both cores"
}'
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); memory part: $elapsed s"
