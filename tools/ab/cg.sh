#!/bin/sh
# tools/ab/cg.sh OPS LABEL=BINARY...: callgrind instructions per op of the
# W1 and W2 loops at 64 B (bufpool's path does not depend on the size), as
# bench/run.sh counts them (--toggle-collect on the loop function).
set -eu
ops=$1; shift
for lb; do
    label=${lb%%=*} bin=${lb#*=}
    for w in w1 w2; do
        f=$(mktemp)
        valgrind --tool=callgrind --callgrind-out-file="$f" --toggle-collect="bench_${w}_loop" "$bin" count "$w" 64 "$ops" >/dev/null 2>&1
        awk -v n="$ops" -v l="$label" -v w="$w" '/^totals:/ { printf "%s %s %.1f\n", l, w, $2 / n }' "$f"
        rm -f "$f"
    done
done
