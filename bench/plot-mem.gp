# bench/plot-mem.gp: RSS over time after the spike's release, one line an
# allocator (the rows released by one thread).
#   gnuplot -e "dat='build/bench/plot-rss.dat'; out='build/bench/memory.png'; ncol=6; stamp='DATE'; mb='1024'" bench/plot-mem.gp
# Reads dat (bench/memory.sh): a header line "ms NAME...", then one line a
# reading, "-" where a run had none.

set terminal pngcairo size 1100,600 font "sans,11" noenhanced
set output out
set title sprintf("RSS after a %s MiB spike of 16 KiB objects is released, light traffic, no explicit call (make bench, %s)", mb, stamp)
set xlabel "ms after the release"
set ylabel "RSS, MiB"
set grid
set key top right
set datafile missing "-"
set xrange [0:5000]
set yrange [0:*]
plot for [i=2:ncol] dat using 1:i with lines lw 2 title columnheader(i)
