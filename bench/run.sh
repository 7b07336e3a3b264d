#!/bin/sh
# bench/run.sh BINDIR "SIZES" PAIRS REPS CG_PAIRS  (called by bench/bench.mk)
#
# For each object size: times pool_alloc + pool_free through the .so and
# the .a, and malloc + free, in the same processes (interleaved, best of
# REPS loops of PAIRS pairs); then counts instructions per pair with
# callgrind (--toggle-collect on the loop function: only the CG_PAIRS
# measured pairs, calls included, warm-up excluded) and splits them by
# function, __tls_get_addr included, to show what thread-local storage
# costs in the shared object.
set -eu

dir=$1 sizes=$2 pairs=$3 reps=$4 cgpairs=$5
so=$dir/pair-so a=$dir/pair-a lib=build/lib/libbufpool.so
target=40

valgrind=${VALGRIND:-valgrind}
cg=""
if ! command -v "$valgrind" >/dev/null 2>&1; then
    cg="$valgrind is not installed (apt-get install valgrind)"
elif ! command -v callgrind_annotate >/dev/null 2>&1; then
    cg="callgrind_annotate is not installed (it comes with valgrind)"
elif ! "$valgrind" --tool=callgrind --callgrind-out-file=/dev/null true >/dev/null 2>&1; then
    cg="valgrind --tool=callgrind does not run here"
fi

# callgrind BIN MODE SIZE TAG: runs the counted loop, leaves $dir/cg-TAG.out.
callgrind() {
    out=$dir/cg-$4.out
    if ! "$valgrind" --tool=callgrind --callgrind-out-file="$out" --toggle-collect="bench_$2_loop" \
            "$1" count "$2" "$3" "$cgpairs" >"$out.log" 2>&1; then
        echo "bench: callgrind run of $1 $2 failed:" >&2
        cat "$out.log" >&2
        exit 1
    fi
}

# per_pair TAG: instructions per pair of a callgrind run.
# Fails when nothing was counted (the loop function was not found).
per_pair() {
    awk -v n="$cgpairs" '/^totals:/ { t = $2 } END { if (t > 0) printf "%.1f", t / n; else exit 1 }' "$dir/cg-$1.out" ||
        { echo "bench: callgrind counted nothing in $dir/cg-$1.out (loop function renamed or inlined?)" >&2; exit 1; }
}

# by_function TAG: "name instructions-per-pair" for each function of the
# loop (self cost; PLT stubs count in their caller, callgrind's default).
by_function() {
    callgrind_annotate --threshold=100 --inclusive=no "$dir/cg-$1.out" | awk -v n="$cgpairs" '
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

ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x == "-" || y == "-" || y == 0) print "-"; else printf "%.2f", x / y }'; }

echo "bufpool pair benchmark: pool_alloc + pool_free on the thread-cache path vs glibc malloc + free"
echo "timing: best of $reps loops of $pairs pairs, interleaved with malloc in the same process;"
if [ -z "$cg" ]; then
    echo "instructions: callgrind, $cgpairs pairs after a warm-up, loop and calls included"
else
    echo "instructions: skipped callgrind: $cg"
fi

for size in $sizes; do
    t_so=$("$so" time "$size" "$pairs" "$reps")
    t_a=$("$a" time "$size" "$pairs" "$reps")
    ns_so=$(echo "$t_so" | awk '$2 == "pool" { print $3 }')
    ns_m=$(echo "$t_so" | awk '$2 == "malloc" { print $3 }')
    ns_a=$(echo "$t_a" | awk '$2 == "pool" { print $3 }')
    ns_m_a=$(echo "$t_a" | awk '$2 == "malloc" { print $3 }')
    i_so=- i_a=- i_m=-
    if [ -z "$cg" ]; then
        callgrind "$so" pool "$size" "so-$size"
        callgrind "$a" pool "$size" "a-$size"
        callgrind "$so" malloc "$size" "malloc-$size"
        # One assignment a line: set -e sees each substitution's failure.
        i_so=$(per_pair "so-$size")
        i_a=$(per_pair "a-$size")
        i_m=$(per_pair "malloc-$size")
    fi

    echo
    echo "== $size-byte objects =="
    printf '%-24s %9s %11s %13s %16s\n' variant ns/pair instr/pair "ns vs malloc" "instr vs malloc"
    printf '%-24s %9s %11s %13s %16s\n' "bufpool via .so" "$ns_so" "$i_so" "$(ratio "$ns_so" "$ns_m")" "$(ratio "$i_so" "$i_m")"
    printf '%-24s %9s %11s %13s %16s\n' "bufpool via .a" "$ns_a" "$i_a" "$(ratio "$ns_a" "$ns_m_a")" "$(ratio "$i_a" "$i_m")"
    printf '%-24s %9s %11s %13s %16s\n' "glibc malloc + free" "$ns_m" "$i_m" 1.00 "$(ratio "$i_m" "$i_m")"
    echo "(the .a row's ns ratio is against the malloc loop of its own process: $ns_m_a ns/pair)"
    if [ -n "$cg" ]; then
        continue
    fi

    for v in so a; do
        printf 'instr/pair by function, .%s:' "$v"
        by_function "$v-$size" | awk '{ printf " %s %s |", $1, $2 }' | sed 's/ |$//'
        echo
    done
    tls=$(by_function "so-$size" | awk '$1 == "__tls_get_addr" { print $2 }')
    sites=$(objdump -d --no-show-raw-insn "$lib" | awk '/^[0-9a-f]+ <pool_(alloc|free)>:$/ { on = 1; next } /^$/ { on = 0 } on && /call.*__tls_get_addr/ { n++ } END { print n + 0 }')
    echo "TLS: .so: $(tls_shape "$lib"); .a: $(tls_shape "$a")."
    diff=$(awk -v x="$i_so" -v y="$i_a" 'BEGIN { printf "%.1f", x - y }')
    if [ "$sites" -gt 0 ]; then
        echo "TLS: the .so pair costs $diff instr more than the .a pair: ${tls:-0} inside __tls_get_addr" \
             "($(awk -v t="${tls:-0}" -v n="$sites" 'BEGIN { printf "%.1f", t / n }') a call, $sites call sites in pool_alloc + pool_free)," \
             "the rest its call sequence and the caller's PLT jumps into the .so."
    else
        echo "TLS: no __tls_get_addr call: the .so reads its initial-exec TLS slot with 2 instructions (GOT offset + %fs load);" \
             "the .so pair costs $diff instr more than the .a pair, the caller's PLT jumps into the .so."
    fi
    if awk -v x="$i_so" -v t="$target" 'BEGIN { exit !(x <= t) }'; then
        echo "target <= $target instr/pair through the .so: met ($i_so)"
    else
        echo "target <= $target instr/pair through the .so: NOT met ($i_so)"
    fi
done
