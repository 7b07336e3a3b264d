# `make bench` runs this (after `make lib`): the peer comparison.
#
# bench/bench.c is compiled once per variant, with the same flags, into
# build/bench/bench-VARIANT:
#   so, a      -DBENCH_POOL: pool_alloc/pool_free, against libbufpool.so
#              (rpath) or libbufpool.a
#   glibc      malloc/free, nothing more linked
#   jemalloc   malloc/free, linked with -ljemalloc          (libjemalloc-dev)
#   mimalloc   malloc/free, linked with -lmimalloc          (libmimalloc-dev)
#   tcmalloc   malloc/free, linked with -ltcmalloc_minimal  (libgoogle-perftools-dev)
# A peer's library, linked (--no-as-needed), comes before libc in the
# lookup order: its malloc serves the whole process, as with LD_PRELOAD;
# `bench-VARIANT info` prints where malloc comes from. bench/deps.sh
# installs missing peers, valgrind and gnuplot when run as root; a peer
# that does not link is skipped, with one line saying why.
#
# Then bench/run.sh times the four workloads (bench/bench.c says what they
# are), RUNS runs of each variant interleaved, counts instructions of W1 and
# W2 under callgrind, prints the tables and the targets, and renders the plot.
#
#   make bench RUNS=5 W1_OPS=5000000 W2_OPS=5000000 W3_MS=300 W4_MS=300 CG_OPS=100000 PNG=docs/bench.png

CC       ?= gcc
LIBDIR   := build/lib
BENCHDIR := build/bench
RUNS     ?= 5
W1_OPS   ?= 5000000
W2_OPS   ?= 5000000
W3_MS    ?= 300
W4_MS    ?= 300
CG_OPS   ?= 100000
PNG      ?= docs/bench.png

# -O2 as any C user would build; -g so that callgrind names the loops.
BENCH_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -g -D_GNU_SOURCE -Iinclude -pthread
SRC      := bench/bench.c include/bufpool.h
PEERS    := jemalloc:-ljemalloc mimalloc:-lmimalloc tcmalloc:-ltcmalloc_minimal

.PHONY: run deps peers

run: deps $(BENCHDIR)/bench-so $(BENCHDIR)/bench-a $(BENCHDIR)/bench-glibc peers
	@sh bench/run.sh $(BENCHDIR) $(RUNS) $(W1_OPS) $(W2_OPS) $(W3_MS) $(W4_MS) $(CG_OPS) $(PNG)

deps:
	@sh bench/deps.sh

$(BENCHDIR)/bench-so: $(SRC) $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) -DBENCH_POOL $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

$(BENCHDIR)/bench-a: $(SRC) $(LIBDIR)/libbufpool.a
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) -DBENCH_POOL $< -o $@ $(LIBDIR)/libbufpool.a -pthread -ldl -lm

$(BENCHDIR)/bench-glibc: $(SRC)
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@

# Relinked on every run (cheap): a peer installed since the last run is picked up.
peers: deps
	@mkdir -p $(BENCHDIR)
	@for pl in $(PEERS); do p=$${pl%%:*}; l=$${pl#*:}; rm -f $(BENCHDIR)/bench-$$p; \
	  echo "$(CC) $(BENCH_CFLAGS) bench/bench.c -o $(BENCHDIR)/bench-$$p -Wl,--no-as-needed $$l"; \
	  $(CC) $(BENCH_CFLAGS) bench/bench.c -o $(BENCHDIR)/bench-$$p -Wl,--no-as-needed $$l >$(BENCHDIR)/bench-$$p.log 2>&1 || true; \
	done
