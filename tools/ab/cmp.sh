#!/bin/sh
# tools/ab/cmp.sh BASE CAND... : the three measurements of candidates
# against BASE (variants built by tools/ab/build.sh under AB_DIR):
#   1. in-process (abso): W1 and W2 at 64 B through the PLT-shaped stubs,
#      BASE, each CAND, a copy of BASE (the A/A check) and tcmalloc;
#      ABSO_PROCS processes of ABSO_BATCHES batches of ABSO_OPS ops;
#   2. bench/bench.c (run.sh): .so and .a of BASE and each CAND, and
#      bench-tcmalloc, every W1/W2 cell, RUNS interleaved runs of OPS ops;
#   3. callgrind: instructions per op of W1 and W2.
# Output under AB_DIR/cmp-<CANDs>/.
set -eu
ab=${AB_DIR:-/work/ab}
here=$(dirname "$0")
base=$1; shift
tag=$(echo "$@" | tr ' ' '+')
out=$ab/cmp-$tag
mkdir -p "$out"
tc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
procs=${ABSO_PROCS:-3} batches=${ABSO_BATCHES:-400} aops=${ABSO_OPS:-20000}
runs=${RUNS:-15} ops=${OPS:-5000000}
cp -f "$ab/$base/lib/libbufpool.so.0" "$out/aa-copy.so"
libs="$ab/$base/lib/libbufpool.so.0"
for c; do libs="$libs $ab/$c/lib/libbufpool.so.0"; done
libs="$libs $out/aa-copy.so m:$tc"
: >"$out/abso.txt"
for w in w1 w2; do
    p=1
    while [ $p -le "$procs" ]; do
        "$ab/abso" $w 64 "$aops" "$batches" plt $libs | sed "s|^|$w $p |" >>"$out/abso.txt"
        p=$((p + 1))
    done
done
echo "== in-process (abso, ratio to $base in the same round; median over $procs processes of the per-process median)"
awk -v base="$ab/$base/" '{ n = $3; sub(".*/work/ab/", "", n); sub("/lib/libbufpool.so.0", "", n); sub(".*/", "", n)
    k = $1 " " n; r[k] = r[k] " " $9; t[k] = t[k] " " $4; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
    function med(s,   a, n, i, j, x) { n = split(s, a, " "); for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x } return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END { for (i = 1; i <= m; i++) printf "%-24s ns %6.2f  ratio %6.3f   (per process:%s)\n", order[i], med(t[order[i]]), med(r[order[i]]), r[order[i]] }' "$out/abso.txt"
set -- "$base" "$@"
bins=""
for c; do bins="$bins $c.so=$ab/$c/bench-so $c.a=$ab/$c/bench-a"; done
bins="$bins tc=$(pwd)/build/bench/bench-tcmalloc"
rm -f "$out/bench.txt"
"$here/run.sh" "$out/bench.txt" "$runs" "$ops" "w1:64 w1:1024 w1:16384 w2:64 w2:1024 w2:16384" $bins
echo "== bench/bench.c, $runs interleaved runs of $ops ops"
awk -f "$here/report.awk" -v base="$base.so" "$out/bench.txt"
echo "== callgrind (instructions per op, W1 W2)"
"$here/cg.sh" 100000 $(for c; do echo "$c.so=$ab/$c/bench-so $c.a=$ab/$c/bench-a"; done) | paste - - | awk '{ print $1, $3, $6 }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
