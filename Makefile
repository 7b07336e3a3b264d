# bufpool: build, test, bench, demo, install.
# `make` builds the libraries into build/lib and refreshes include/bufpool.h.
# `make test` is what CI runs: header check, symbol check, Rust tests, loom
# models, and every C harness in c_tests/.

CARGO    ?= cargo
CC       ?= gcc
PREFIX   ?= /usr/local
VERSION  := 0.1.0
SOMAJOR  := 0

TARGET   := target/release
LIBDIR   := build/lib
BINDIR   := build/bin
SO       := $(LIBDIR)/libbufpool.so
SOFULL   := $(LIBDIR)/libbufpool.so.$(VERSION)
ARCHIVE  := $(LIBDIR)/libbufpool.a
HEADER   := include/bufpool.h

CWARN    := -Wall -Wextra -Werror
CFLAGS   ?= -O2 -g
# The buffer rows of the C harnesses compile once the header has the buffer API.
CFLAGS_ALL := -std=c11 $(CWARN) $(CFLAGS) -D_GNU_SOURCE -Iinclude -pthread
LDSO     := -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool -pthread
LDSTATIC := $(ARCHIVE) -pthread -ldl -lm

C_TESTS  := $(patsubst c_tests/%.c,$(BINDIR)/%,$(wildcard c_tests/test_*.c))
# The C harnesses that TSan runs: the threaded ones and the seed scenarios.
TSAN_TESTS := $(patsubst c_tests/test_%.c,$(BINDIR)/tsan_%,$(wildcard c_tests/test_dynbuf_*.c c_tests/test_00[0-3]_*.c))

# Real musl: the race harness and the demo are also linked statically with
# musl-gcc against libbufpool.a (built for the GNU target; tools/musl-stubs.c
# fills in the few glibc names the Rust runtime mentions).
MUSLCC   ?= musl-gcc
MUSL_LD  := -static -Wl,--gc-sections tools/musl-stubs.c $(ARCHIVE)
HAVE_MUSL = command -v $(MUSLCC) >/dev/null 2>&1
NO_MUSL_MSG = echo "musl: $(MUSLCC) not found (apt-get install musl-tools): only the glibc run (M_MMAP_THRESHOLD=128K) stands"
DEMO_CFLAGS := $(CFLAGS_ALL) -Ic_tests

.PHONY: all lib header check-header check-symbols test test-rust test-loom test-c test-musl musl-tools test-tsan test-sanitize bench demo install clean examples relay-demo test-relay

all: lib header

# The Rust build; build.rs regenerates target/release/bufpool.h.
$(TARGET)/libbufpool.so $(TARGET)/libbufpool.a $(TARGET)/bufpool.h: FORCE
	$(CARGO) build --release --lib
FORCE:

lib: $(TARGET)/libbufpool.so
	@mkdir -p $(LIBDIR)
	@cp -f $(TARGET)/libbufpool.so $(SOFULL)
	@ln -sf libbufpool.so.$(VERSION) $(LIBDIR)/libbufpool.so.$(SOMAJOR)
	@ln -sf libbufpool.so.$(SOMAJOR) $(SO)
	@cp -f $(TARGET)/libbufpool.a $(ARCHIVE)

header: lib
	@cmp -s $(TARGET)/bufpool.h $(HEADER) || { cp $(TARGET)/bufpool.h $(HEADER); echo "updated $(HEADER)"; }

# Fails when the checked-in header differs from a fresh generation, or when
# it does not compile as pedantic C99 and as C++.
check-header: lib
	@cmp -s $(TARGET)/bufpool.h $(HEADER) || { echo "FAIL: $(HEADER) is stale: run 'make header' and commit it"; diff -u $(HEADER) $(TARGET)/bufpool.h | head -40; exit 1; }
	@printf '#include "bufpool.h"\nstatic struct buffer s = BUF_NULL_INIT;\nint main(void){struct buffer b = BUF_NULL; return (int)(b.size + s.size);}\n' > build/hdr.c
	@$(CC) -std=c99 -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr.c -o build/hdr.o
	@g++ -x c++ -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr.c -o build/hdrpp.o
	@echo "header: up to date, compiles as C99 and C++"

# Only the names of the C contract may be exported by the .so.
check-symbols: lib
	@bad=$$(nm -D --defined-only $(SO) | awk '{print $$3}' | grep -v -E -f tools/exported-symbols.txt || true); \
	if [ -n "$$bad" ]; then echo "FAIL: unexpected exported symbols:"; echo "$$bad"; exit 1; fi; \
	echo "symbols: only the C contract is exported ($$(nm -D --defined-only $(SO) | wc -l) names)"
	@readelf -d $(SO) | grep -q 'SONAME.*libbufpool.so.$(SOMAJOR)' && echo "soname: libbufpool.so.$(SOMAJOR)"

$(BINDIR)/test_%: c_tests/test_%.c c_tests/harness.h $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LDSO)

$(BINDIR)/test_race: c_tests/race.h

$(BINDIR)/test_race.musl: c_tests/test_race.c c_tests/race.h c_tests/harness.h tools/musl-stubs.c $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(MUSLCC) $(CFLAGS_ALL) $< $(MUSL_LD) -o $@

$(BINDIR)/race_demo $(BINDIR)/throughput: $(BINDIR)/%: demo/%.c c_tests/race.h $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(CC) $(DEMO_CFLAGS) $< -o $@ $(LDSO)

$(BINDIR)/race_demo.musl $(BINDIR)/throughput.musl: $(BINDIR)/%.musl: demo/%.c c_tests/race.h tools/musl-stubs.c $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(MUSLCC) $(DEMO_CFLAGS) $< $(MUSL_LD) -o $@

# Installs musl-gcc when missing, if we are root with apt-get; else nothing.
musl-tools:
	@$(HAVE_MUSL) || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "musl: installing musl-tools for $(MUSLCC)"; \
	  apt-get install -y -q musl-tools >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q musl-tools >/dev/null 2>&1; } || true; }

# The same harnesses built with -fsanitize=thread. Only the C side is
# instrumented: the Rust library is the ordinary build, so TSan checks the
# harnesses' own memory and the callbacks' accesses to their entities, not
# the library's internals (its locking is invisible to TSan).
$(BINDIR)/tsan_%: c_tests/test_%.c c_tests/harness.h $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(CC) $(CFLAGS_ALL) -O1 -fsanitize=thread $< -o $@ $(LDSO)

test-tsan: $(TSAN_TESTS)
	@pass=0; fail=0; for t in $(TSAN_TESTS); do \
	  if TSAN_OPTIONS="halt_on_error=1 exitcode=66 $$TSAN_OPTIONS" $$t >/dev/null; then pass=$$((pass+1)); else echo "FAIL (tsan): $$t"; fail=$$((fail+1)); fi; \
	done; echo "TSan harnesses: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

test-rust:
	$(CARGO) test --release

# Loom models need their own build of the crate (cfg(loom)).
test-loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test --release --lib loom

test-c: $(C_TESTS)
	@pass=0; fail=0; for t in $(C_TESTS); do \
	  if $$t; then pass=$$((pass+1)); else echo "FAIL: $$t"; fail=$$((fail+1)); fi; \
	done; echo "c_tests: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# The race harness again, on real musl (static), when musl-gcc is there.
test-musl: lib musl-tools
	@if $(HAVE_MUSL); then $(MAKE) --no-print-directory $(BINDIR)/test_race.musl && $(BINDIR)/test_race.musl; \
	else $(NO_MUSL_MSG); fi

test: check-header check-symbols test-rust test-loom test-c test-musl test-tsan test-relay
	@echo "make test: all passed"

# The C harnesses under ASan+UBSan and under TSan, the Rust tests under ASan
# (nightly), and valgrind memcheck: see tools/test-sanitize.sh.
test-sanitize: lib
	@CC="$(CC)" CFLAGS_ALL="$(CFLAGS_ALL)" LDSO="$(LDSO)" CARGO="$(CARGO)" tools/test-sanitize.sh

bench: lib
	@$(MAKE) --no-print-directory -f bench/bench.mk

# The main job: the race of seed 004 from C on each algorithm, then the
# throughput table; on glibc (mmap threshold fixed at 128 KB) and on musl.
DEMO_RUNS    ?= 5
DEMO_SECONDS ?= 1
DEMO_CELL    ?= 0.2
demo: lib musl-tools $(BINDIR)/race_demo $(BINDIR)/throughput
	@$(BINDIR)/race_demo $(DEMO_RUNS) $(DEMO_SECONDS)
	@if $(HAVE_MUSL); then $(MAKE) --no-print-directory -s $(BINDIR)/race_demo.musl $(BINDIR)/throughput.musl >/dev/null && \
	  $(BINDIR)/race_demo.musl $(DEMO_RUNS) $(DEMO_SECONDS); else $(NO_MUSL_MSG); fi
	@$(BINDIR)/throughput $(DEMO_CELL)
	@if $(HAVE_MUSL); then $(BINDIR)/throughput.musl $(DEMO_CELL); fi

# examples/relay: an HTTP/1.1 reverse proxy on bufpool (README: "A proxy on
# bufpool"). It is built the way a user builds it: against a staged
# `make install` (header, .so, bufpool.pc) in build/relay/prefix, nothing else.
RELAY_DIR    := examples/relay
RELAY_BIN    := build/relay
RELAY_PREFIX := $(abspath $(RELAY_BIN)/prefix)
RELAY_CFLAGS := -std=c11 $(CWARN) $(CFLAGS) -D_GNU_SOURCE -pthread -I$(RELAY_PREFIX)/include
RELAY_LD     := -L$(RELAY_PREFIX)/lib -Wl,-rpath,$(RELAY_PREFIX)/lib -lbufpool -pthread
RELAY_STAGED := $(RELAY_PREFIX)/include/bufpool.h $(RELAY_PREFIX)/lib/libbufpool.so.$(VERSION)
RELAY_HTTP   := $(RELAY_DIR)/http.c $(RELAY_DIR)/http.h

examples: lib
	@$(MAKE) --no-print-directory install PREFIX=$(RELAY_PREFIX) >/dev/null
	@$(MAKE) --no-print-directory $(RELAY_BIN)/relay $(RELAY_BIN)/backend $(RELAY_BIN)/loadgen

$(RELAY_BIN)/relay: $(RELAY_DIR)/relay.c $(RELAY_DIR)/ctl.c $(RELAY_DIR)/relay.h $(RELAY_HTTP) $(RELAY_STAGED)
	$(CC) $(RELAY_CFLAGS) $(filter %.c,$^) -o $@ $(RELAY_LD)

# The test backend and client use no bufpool at all.
$(RELAY_BIN)/backend $(RELAY_BIN)/loadgen: $(RELAY_BIN)/%: $(RELAY_DIR)/%.c $(RELAY_DIR)/pattern.h $(RELAY_HTTP)
	@mkdir -p $(RELAY_BIN)
	$(CC) $(RELAY_CFLAGS) $(filter %.c,$^) -o $@

# The relay under curl and its own client, against its own backend, on
# loopback (about 30 s): see examples/relay/test-relay.sh.
test-relay: examples
	@$(RELAY_DIR)/test-relay.sh $(RELAY_BIN)

# The relay against HAProxy 2.6, both in front of nginx, driven by wrk
# (Debian packages, installed when root): see examples/relay/demo.sh.
relay-demo: examples
	@$(RELAY_DIR)/demo.sh $(RELAY_BIN)

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(SOFULL) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libbufpool.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbufpool.so.$(SOMAJOR)
	ln -sf libbufpool.so.$(SOMAJOR) $(DESTDIR)$(PREFIX)/lib/libbufpool.so
	install -m 644 $(ARCHIVE) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(HEADER) $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' bufpool.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/bufpool.pc

clean:
	rm -rf build
	$(CARGO) clean
