# bench/plot.gp: the peer comparison as grouped bars, one panel a workload.
#   gnuplot -e "dir='build/bench'; out='build/bench/bench.png'; ncol=7; colors='#d62728 ...'; cores='2'; stamp='DATE'; runs='5'" bench/plot.gp
# Reads dir/plot-w1.dat .. plot-w4.dat (bench/report.awk, mode=plot): a
# header line "size VARIANT...", then one line a size.

set terminal pngcairo size 1400,950 font "sans,11" noenhanced
set output out
set multiplot layout 2,2 title sprintf("bufpool vs malloc peers: medians of %s interleaved runs (make bench, %s, %s cores)", runs, stamp, cores) font "sans,13"

set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key autotitle columnheader
set key top center horizontal maxrows 1 font "sans,9" samplen 1.5 width -1
set yrange [0:*]
set offsets 0, 0, graph 0.25, 0
set xrange [-0.55:2.55]
nv = ncol - 1
# The centre of bar I (2..ncol) of row X in a clustered histogram with gap 1;
# each bar carries its value.
bx(x, i) = x + (i - 2 - (nv - 1) / 2.0) / (nv + 1)
val(y) = y >= 100 ? sprintf("%.0f", y) : y >= 10 ? sprintf("%.1f", y) : sprintf("%.2f", y)

# colors: one a variant, in the order of the columns (bench/run.sh)

set title "W1 pair: alloc + free, 1 thread\nns per pair (thread CPU time): lower is better"
set ylabel "ns"
plot for [i=2:ncol] dir."/plot-w1.dat" using i:xtic(1) title columnheader(i) lc rgb word(colors, i-1), \
     for [i=2:ncol] dir."/plot-w1.dat" using (bx($0, i)):(column(i)):(val(column(i))) with labels rotate by 90 left offset 0, 0.3 font "sans,8" notitle

set title "W2 ring of 256 live: free oldest + alloc + write 64 B, 1 thread\nns per op (thread CPU time): lower is better"
plot for [i=2:ncol] dir."/plot-w2.dat" using i:xtic(1) title columnheader(i) lc rgb word(colors, i-1), \
     for [i=2:ncol] dir."/plot-w2.dat" using (bx($0, i)):(column(i)):(val(column(i))) with labels rotate by 90 left offset 0, 0.3 font "sans,8" notitle

set title sprintf("W3 4 threads on %s cores, each the W2 ring, one shared pool\nMops/s (wall time): higher is better", cores)
set ylabel "Mops/s"
plot for [i=2:ncol] dir."/plot-w3.dat" using i:xtic(1) title columnheader(i) lc rgb word(colors, i-1), \
     for [i=2:ncol] dir."/plot-w3.dat" using (bx($0, i)):(column(i)):(val(column(i))) with labels rotate by 90 left offset 0, 0.3 font "sans,8" notitle

# W4 spans two orders of magnitude across allocators: log scale.
set title "W4 producer allocates, consumer frees, 16 KiB, 2 threads\nMops/s (wall time), log scale: higher is better"
set logscale y
set yrange [*:*]
set xrange [-0.6:0.6]
plot for [i=2:ncol] dir."/plot-w4.dat" using i:xtic(1) title columnheader(i) lc rgb word(colors, i-1), \
     for [i=2:ncol] dir."/plot-w4.dat" using (bx($0, i)):(column(i)):(val(column(i))) with labels rotate by 90 left offset 0, 0.3 font "sans,8" notitle

unset multiplot
