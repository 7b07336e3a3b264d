#!/bin/sh
# tools/ab/run.sh OUT RUNS OPS CELLS LABEL=BINARY...
# Times each binary (bench/bench.c built by tools/ab/build.sh, or a peer)
# on each cell ("w1:64 w1:1024 ..."), RUNS rounds, each round every binary
# once in an order rotated from round to round, a fresh process each time.
# Appends "CELL LABEL ROUND CPU_NS" to OUT. Then tools/ab/report.awk.
set -eu
out=$1 runs=$2 ops=$3 cells=$4; shift 4
n=$#
for cell in $cells; do
    w=${cell%%:*} size=${cell#*:}
    r=1
    while [ "$r" -le "$runs" ]; do
        k=$((r % n)) i=0
        for pass in 1 2; do
            i=0
            for lb; do
                if { [ $pass -eq 1 ] && [ $i -ge $k ]; } || { [ $pass -eq 2 ] && [ $i -lt $k ]; }; then
                    label=${lb%%=*} bin=${lb#*=}
                    line=$("$bin" "$w" "$size" "$ops")
                    cpu=$(echo "$line" | sed 's/.*cpu_ns=\([0-9.]*\).*/\1/')
                    echo "$cell $label $r $cpu" >>"$out"
                fi
                i=$((i + 1))
            done
        done
        r=$((r + 1))
    done
done
