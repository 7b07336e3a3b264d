#!/bin/sh
# bench/run.sh DIR RUNS W1_OPS W2_OPS W3_MS W4_MS CG_OPS PNG   (called by bench/bench.mk)
#
# Runs DIR/bench-VARIANT (bench/bench.c, one binary per variant) for every
# workload and size: RUNS runs of each (W1 and W2: 3 x RUNS, which cost
# little: a process lands in one of two speeds there, by where its stack
# falls in its page, see docs/BENCH.md), interleaved (run 1 of every variant,
# then run 2 of every variant..., the order rotated from run to run), each
# run a fresh process; prints the medians of each workload as it completes,
# then instructions per op under callgrind (W1 and W2), the summary as a
# Markdown table (also in DIR/table.md), the targets, and renders the plot
# to PNG with gnuplot (bench/plot.gp).
set -eu

dir=$1 runs=$2 ops1=$3 ops2=$4 ms3=$5 ms4=$6 cgops=$7 png=$8
start=$(date +%s)
limit=40
sizes="64 1024 16384"
cores=$(nproc)

label() { case $1 in so) echo bufpool.so ;; a) echo bufpool.a ;; inline) echo bufpool.so+inline ;; *) echo "$1" ;; esac; }
color() { case $1 in so) echo "#d62728" ;; a) echo "#f4a3a3" ;; inline) echo "#8c564b" ;; glibc) echo "#7f7f7f" ;; jemalloc) echo "#1f77b4" ;; mimalloc) echo "#2ca02c" ;; tcmalloc) echo "#ff7f0e" ;; esac; }
package() { case $1 in jemalloc) echo libjemalloc-dev ;; mimalloc) echo libmimalloc-dev ;; tcmalloc) echo libgoogle-perftools-dev ;; esac; }

# rotate K V1 V2 ...: the list started at its (K mod n)-th element.
rotate() {
    k=$1; shift; k=$((k % $#)); i=0; first="" rest=""
    for v; do
        if [ $i -lt $k ]; then rest="$rest $v"; else first="$first $v"; fi
        i=$((i + 1))
    done
    echo $first $rest
}

# busy_steal: "BUSY STEAL" jiffies of all CPUs so far (/proc/stat: busy = user
# nice system irq softirq; steal: taken by the hypervisor).
busy_steal() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9; exit }' /proc/stat; }
# ours FILE: CPU seconds used so far by this script's children (the
# benchmarks, valgrind...): `times` runs in this shell, not in a subshell.
ours() { times >"$1"; awk 'NR == 2 { gsub("s", ""); split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$1"; }
hz=$(getconf CLK_TCK)
set -- $(busy_steal)
busy0=$1 steal0=$2

echo "bufpool peer benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): make bench" \
     "(RUNS=$runs W1_OPS=$ops1 W2_OPS=$ops2 W3_MS=$ms3 W4_MS=$ms4 CG_OPS=$cgops)"
echo "machine: $cores cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "each variant: bench/bench.c, gcc -O2 -g, the same flags; timing: thread CPU time (CLOCK_THREAD_CPUTIME_ID) and wall time, medians of $runs interleaved runs ($((runs * 3)) for W1 and W2)"

variants="" skipped=""
for v in so a inline glibc jemalloc mimalloc tcmalloc; do
    bin=$dir/bench-$v
    if [ -x "$bin" ] && info=$("$bin" info 2>&1); then
        variants="$variants $v"
        printf '  %-11s %s\n' "$(label "$v")" "$info"
    elif [ ! -x "$bin" ] && grep -q 'cannot find -l' "$bin.log" 2>/dev/null; then
        skipped="$skipped $v (not installed: $(package "$v"))"
    elif [ ! -x "$bin" ]; then
        skipped="$skipped $v (did not link: $(grep -m1 -i error "$bin.log" 2>/dev/null || echo "see $bin.log"))"
    else
        skipped="$skipped $v (does not run: $info)"
    fi
done
case " $variants " in *" so "*) ;; *) echo "bench: the bufpool.so variant does not run" >&2; exit 1 ;; esac
[ -z "$skipped" ] || echo "skipped peers:$skipped; 'make bench' as root installs them"

# ---- callgrind: instructions per op of W1 and W2 ------------------------------
: >"$dir/instr.txt"
valgrind=${VALGRIND:-valgrind}
cg=""
if ! command -v "$valgrind" >/dev/null 2>&1; then
    cg="valgrind is not installed (apt-get install valgrind; 'make bench' as root installs it)"
elif ! "$valgrind" --tool=callgrind --callgrind-out-file=/dev/null true >/dev/null 2>&1; then
    cg="valgrind --tool=callgrind does not run here"
fi

# by_function OUT: "name instructions-per-op" for each function of the loop
# (self cost; PLT stubs count in their caller, callgrind's default).
by_function() {
    callgrind_annotate --threshold=100 --inclusive=no "$1" | awk -v n="$cgops" '
        /file:function/ { on = 1; next }
        on && /^ *[0-9][0-9,]* / {
            ir = $1; gsub(",", "", ir)
            line = $0; sub(/^ *[0-9,]+ +\([^)]*\) +/, "", line); sub(/ \[[^]]*\]$/, "", line)
            sub(/^[^:]*:/, "", line)    # drop the source file
            cost[line] += ir; seen = 1
        }
        seen && /^-----/ { exit }
        END { for (f in cost) printf "%s %.1f\n", f, cost[f] / n }' | sort -k2 -n -r
}

# tls_shape BIN: instructions of pool_alloc + pool_free that address %fs
# (an inline TLS access) and calls to __tls_get_addr, in a binary or library.
tls_shape() {
    objdump -d --no-show-raw-insn "$1" | awk '
        /^[0-9a-f]+ <pool_(alloc|free)>:$/ { on = 1; next }
        /^$/ { on = 0 }
        on && /%fs:/ { fs++ }
        on && /call.*__tls_get_addr/ { gd++ }
        END { printf "%d inline %%fs access(es), %d call(s) to __tls_get_addr", fs, gd }'
}

if [ -z "$cg" ]; then
    for w in w1 w2; do
        for size in $sizes; do
            for v in $variants; do
                out=$dir/cg-$w-$size-$v.out
                if ! "$valgrind" --tool=callgrind --callgrind-out-file="$out" --toggle-collect="bench_${w}_loop" \
                        "$dir/bench-$v" count "$w" "$size" "$cgops" >"$out.log" 2>&1; then
                    echo "bench: callgrind run of bench-$v count $w $size failed:" >&2
                    cat "$out.log" >&2
                    exit 1
                fi
                ipo=$(awk -v n="$cgops" '/^totals:/ { t = $2 } END { if (t > 0) printf "%.1f", t / n }' "$out")
                if [ -z "$ipo" ]; then
                    echo "bench: callgrind counted nothing in $out (loop function renamed or inlined?)" >&2
                    exit 1
                fi
                echo "$w $size $v $ipo" >>"$dir/instr.txt"
            done
        done
    done
    echo "instructions: callgrind, $cgops ops after a warm-up, the loop and its calls (W2: the 64-byte write too)"
else
    echo "instructions: skipped callgrind: $cg"
fi

# ---- timing -------------------------------------------------------------------
: >"$dir/results.txt"
for cell in "w1 64" "w1 1024" "w1 16384" "w2 64" "w2 1024" "w2 16384" \
            "w3 64" "w3 1024" "w3 16384" "w4 16384"; do
    set -- $cell
    w=$1 size=$2
    case $w in w1) arg=$ops1 ;; w2) arg=$ops2 ;; w3) arg=$ms3 ;; w4) arg=$ms4 ;; esac
    n=$runs
    case $w in w1|w2) n=$((runs * 3)) ;; esac
    r=1
    while [ "$r" -le "$n" ]; do
        for v in $(rotate "$r" $variants); do
            if ! line=$("$dir/bench-$v" "$w" "$size" "$arg"); then
                echo "bench: bench-$v $w $size $arg failed" >&2
                exit 1
            fi
            echo "$w $size $v $r $(echo "$line" | sed 's/[a-z_0-9]*=//g')" >>"$dir/results.txt"
        done
        r=$((r + 1))
    done
    awk -f bench/report.awk -v mode=cell -v w="$w" -v size="$size" -v variants="$variants" -v cores="$cores" \
        "$dir/instr.txt" "$dir/results.txt"
done

# ---- instruction details, summary, targets, plot --------------------------------
if [ -z "$cg" ]; then
    echo
    for v in so a inline; do
        [ -f "$dir/cg-w1-64-$v.out" ] || continue
        printf 'W1 64 B, instr/pair by function, %s:' "$(label "$v")"
        by_function "$dir/cg-w1-64-$v.out" | awk '{ printf " %s %s |", $1, $2 }' | sed 's/ |$//'
        echo
    done
    echo "TLS: libbufpool.so: $(tls_shape build/lib/libbufpool.so); bench-a (static): $(tls_shape "$dir/bench-a")."
fi

echo
echo "Summary (median of $runs, W1 and W2 of $((runs * 3)); W1, W2: ns per op from thread CPU time; W3, W4: Mops/s from wall time;"
echo "in parentheses: speed vs bufpool.so, above 1 = faster than bufpool.so):"
echo
awk -f bench/report.awk -v mode=table -v variants="$variants" -v cores="$cores" "$dir/instr.txt" "$dir/results.txt" | tee "$dir/table.md"
awk -f bench/report.awk -v mode=targets -v variants="$variants" -v cores="$cores" -v limit="$limit" "$dir/instr.txt" "$dir/results.txt"

echo
awk -f bench/report.awk -v mode=plot -v dir="$dir" -v variants="$variants" -v cores="$cores" "$dir/instr.txt" "$dir/results.txt"
if command -v gnuplot >/dev/null 2>&1; then
    mkdir -p "$(dirname "$png")"
    colors=$(for v in $variants; do color "$v"; done | tr '\n' ' ')
    gnuplot -e "dir='$dir'; out='$png'; ncol=$(($(echo $variants | wc -w) + 1)); colors='$colors'; cores='$cores'; stamp='$(date -u '+%Y-%m-%d')'; runs='$runs'" bench/plot.gp
    echo "plot: $png"
else
    echo "plot: skipped: gnuplot is not installed (apt-get install gnuplot-nox; 'make bench' as root installs it)"
fi
ours "$dir/times.txt" >"$dir/ours.txt"
set -- $(busy_steal)
elapsed=$(($(date +%s) - start))
awk -v b="$(($1 - busy0))" -v st="$(($2 - steal0))" -v hz="$hz" -v ours="$(cat "$dir/ours.txt")" -v t="$elapsed" -v n="$cores" 'BEGIN {
    others = b / hz - ours; if (others < 0) others = 0
    printf "machine load: other processes kept %.2f of the %d cores busy on average during the run (%.0f s of CPU), the hypervisor stole %.0f s;\n", others / t, n, others, st / hz
    if (others / t > 0.25 || st / hz > 0.05 * t * n)
        print "  the figures are noisy: wall times (W3, W4) most of all, and the threaded workloads ran on fewer free cores"
}'
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); total $elapsed s"
