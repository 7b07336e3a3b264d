# `make bench` runs this (after `make lib`): builds bench/pair.c against
# libbufpool.so (with an rpath) and against libbufpool.a, then bench/run.sh
# times both beside glibc malloc + free and counts instructions per pair
# under callgrind.
#
#   make bench SIZES="16384 64" PAIRS=200000 REPS=50 CG_PAIRS=100000
#
# Timing keeps the best of REPS short loops (10^7 timed pairs per variant in
# all): on a shared machine a loop of a few ms is often left alone, and the
# minimum is the least disturbed figure.

CC       ?= gcc
LIBDIR   := build/lib
BENCHDIR := build/bench
SIZES    ?= 16384 64
PAIRS    ?= 200000
REPS     ?= 50
CG_PAIRS ?= 100000

# -O2 as any C user would build; -g so that callgrind names the loops.
BENCH_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -g -D_GNU_SOURCE -Iinclude -pthread

.PHONY: run
run: $(BENCHDIR)/pair-so $(BENCHDIR)/pair-a
	@sh bench/run.sh $(BENCHDIR) "$(SIZES)" $(PAIRS) $(REPS) $(CG_PAIRS)

$(BENCHDIR)/pair-so: bench/pair.c include/bufpool.h $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

$(BENCHDIR)/pair-a: bench/pair.c include/bufpool.h $(LIBDIR)/libbufpool.a
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ $(LIBDIR)/libbufpool.a -pthread -ldl -lm
