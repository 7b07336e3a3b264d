# `make bench` runs this (after `make lib`): the peer comparison (speed),
# then the memory part (a spike and its release; the fluctuating 2 MB need),
# then the limit part (what pool_alloc costs at a pool's limit).
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
#   make bench RUNS=5 W1_OPS=5000000 W2_OPS=5000000 W3_MS=300 W4_MS=300 CG_OPS=100000 PNG=build/bench/bench.png MEMPNG=build/bench/memory.png
#
# Then the memory part, bench/memory.sh (about 90 s):
#   build/bench/spike-VARIANT  bench/spike.c: a spike of SPIKE_MB MiB of 16 KiB
#              objects, its release, light traffic, RSS over 5 s and after the
#              explicit call; variants bufpool (modes pool and dynbuf,
#              against libbufpool.so), glibc, jemalloc, mimalloc (linked as
#              above)
#   build/bench/fluct, fluct.musl  bench/fluct.c: the fluctuating 2 MB need on
#              the shared path, default release period against never freeing,
#              FLUCT_RUNS runs of FLUCT_MS ms each; fluct.musl is linked
#              statically with musl-gcc against libbufpool.a (as make demo
#              does) when musl-gcc is there
#
#   make bench SPIKE_MB=1024 FLUCT_MS=1000 FLUCT_RUNS=3
#
# Then the limit part, bench/limit.sh (about 10 s):
#   build/bench/limit  bench/limit.c, against libbufpool.so: for each of
#              LIMIT_THREADS threads, a pool of 1 KiB objects at its limit
#              (LIMIT_PER objects held by each thread, none idle): a failed
#              pool_alloc, a successful one on the slow path (the shared
#              cache, pool_set_cache_size(0)) and one that steals the only
#              idle object from another thread's cache; run twice, as the
#              library comes and with BUFPOOL_CACHE_SYNC=fence; then, with
#              strace, membarrier and futex calls per failed pool_alloc for
#              LIMIT_STRACE_THREADS (LIMIT_STRACE failed calls against none).
#              The table goes to build/bench/limit.md.
#
#   make bench LIMIT_THREADS="4 16 64" LIMIT_PER=4 LIMIT_BATCHES=5 LIMIT_BATCH_MS=20 LIMIT_STEAL=1000 LIMIT_STRACE=20 LIMIT_STRACE_THREADS="4 64"
#   make -f bench/bench.mk speed     the speed part alone (after make lib)
#   make -f bench/bench.mk memory    the memory part alone (after make lib)
#   make -f bench/bench.mk limit     the limit part alone (after make lib)

CC       ?= gcc
LIBDIR   := build/lib
BENCHDIR := build/bench
RUNS     ?= 5
W1_OPS   ?= 5000000
W2_OPS   ?= 5000000
W3_MS    ?= 300
W4_MS    ?= 300
CG_OPS   ?= 100000
PNG      ?= $(BENCHDIR)/bench.png
MEMPNG   ?= $(BENCHDIR)/memory.png
SPIKE_MB ?= 1024
FLUCT_MS ?= 1000
FLUCT_RUNS ?= 3
MUSLCC   ?= musl-gcc
LIMIT_THREADS ?= 4 16 64
LIMIT_PER ?= 4
LIMIT_BATCHES ?= 5
LIMIT_BATCH_MS ?= 20
LIMIT_STEAL ?= 1000
LIMIT_STRACE ?= 20
LIMIT_STRACE_THREADS ?= 4 64

# -O2 as any C user would build; -g so that callgrind names the loops.
BENCH_CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 -g -D_GNU_SOURCE -Iinclude -pthread
SRC      := bench/bench.c include/bufpool.h
PEERS    := jemalloc:-ljemalloc mimalloc:-lmimalloc tcmalloc:-ltcmalloc_minimal

MEM_PEERS := jemalloc:-ljemalloc mimalloc:-lmimalloc
SPEED_BINS := $(BENCHDIR)/bench-so $(BENCHDIR)/bench-a $(BENCHDIR)/bench-inline $(BENCHDIR)/bench-glibc peers
MEM_BINS := $(BENCHDIR)/spike-bufpool $(BENCHDIR)/spike-glibc $(BENCHDIR)/fluct $(BENCHDIR)/crowd mem-peers fluct-musl

.PHONY: run speed memory limit deps peers mem-peers fluct-musl

LIMIT_RUN = sh bench/limit.sh $(BENCHDIR) $(LIMIT_PER) $(LIMIT_BATCHES) $(LIMIT_BATCH_MS) $(LIMIT_STEAL) \
	$(LIMIT_STRACE) "$(LIMIT_THREADS)" "$(LIMIT_STRACE_THREADS)"

# The three parts one after the other, never side by side (make -j).
run: deps $(SPEED_BINS) $(MEM_BINS) $(BENCHDIR)/limit
	@sh bench/run.sh $(BENCHDIR) $(RUNS) $(W1_OPS) $(W2_OPS) $(W3_MS) $(W4_MS) $(CG_OPS) $(PNG)
	@sh bench/memory.sh $(BENCHDIR) $(SPIKE_MB) $(FLUCT_MS) $(FLUCT_RUNS) append $(MEMPNG)
	@$(LIMIT_RUN)

speed: deps $(SPEED_BINS)
	@sh bench/run.sh $(BENCHDIR) $(RUNS) $(W1_OPS) $(W2_OPS) $(W3_MS) $(W4_MS) $(CG_OPS) $(PNG)

memory: deps $(MEM_BINS)
	@sh bench/memory.sh $(BENCHDIR) $(SPIKE_MB) $(FLUCT_MS) $(FLUCT_RUNS) new $(MEMPNG)

limit: deps $(BENCHDIR)/limit
	@$(LIMIT_RUN)

deps:
	@sh bench/deps.sh

$(BENCHDIR)/bench-so: $(SRC) $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) -DBENCH_POOL $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

# The same loops with the header's inline fast path (BUFPOOL_INLINE), against the .so.
$(BENCHDIR)/bench-inline: $(SRC) $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) -DBENCH_POOL -DBUFPOOL_INLINE $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

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

# ---- the memory part ----------------------------------------------------------
$(BENCHDIR)/spike-bufpool: bench/spike.c include/bufpool.h $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) -DSPIKE_BUFPOOL $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool -ldl

$(BENCHDIR)/spike-glibc: bench/spike.c include/bufpool.h
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ -ldl

$(BENCHDIR)/fluct: bench/fluct.c include/bufpool.h $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

# A crowded pool under thread-cache traffic (bench/crowd.c).
$(BENCHDIR)/crowd: bench/crowd.c include/bufpool.h $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool

# Relinked on every run, as the speed part's peers; -DSPIKE_JEMALLOC etc.
# select the peer's explicit call (found with dlsym at run time).
mem-peers: deps
	@mkdir -p $(BENCHDIR)
	@for pl in $(MEM_PEERS); do p=$${pl%%:*}; l=$${pl#*:}; d=$$(echo $$p | tr a-z A-Z); rm -f $(BENCHDIR)/spike-$$p; \
	  echo "$(CC) $(BENCH_CFLAGS) -DSPIKE_$$d bench/spike.c -o $(BENCHDIR)/spike-$$p -Wl,--no-as-needed $$l -ldl"; \
	  $(CC) $(BENCH_CFLAGS) -DSPIKE_$$d bench/spike.c -o $(BENCHDIR)/spike-$$p -Wl,--no-as-needed $$l -ldl >$(BENCHDIR)/spike-$$p.log 2>&1 || true; \
	done

# Static musl (tools/musl-stubs.c fills in the glibc names the Rust runtime
# mentions), when musl-gcc is there; bench/memory.sh says so when it is not.
fluct-musl: deps $(LIBDIR)/libbufpool.a
	@mkdir -p $(BENCHDIR)
	@rm -f $(BENCHDIR)/fluct.musl
	@if command -v $(MUSLCC) >/dev/null 2>&1; then \
	  echo "$(MUSLCC) $(BENCH_CFLAGS) bench/fluct.c -static -Wl,--gc-sections tools/musl-stubs.c $(LIBDIR)/libbufpool.a -o $(BENCHDIR)/fluct.musl"; \
	  $(MUSLCC) $(BENCH_CFLAGS) bench/fluct.c -static -Wl,--gc-sections tools/musl-stubs.c $(LIBDIR)/libbufpool.a \
	    -o $(BENCHDIR)/fluct.musl >$(BENCHDIR)/fluct.musl.log 2>&1 || true; \
	else echo "$(MUSLCC) not found" >$(BENCHDIR)/fluct.musl.log; fi

# ---- the limit part -----------------------------------------------------------
$(BENCHDIR)/limit: bench/limit.c include/bufpool.h $(LIBDIR)/libbufpool.so
	@mkdir -p $(BENCHDIR)
	$(CC) $(BENCH_CFLAGS) $< -o $@ -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool
