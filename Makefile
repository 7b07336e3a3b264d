# bufpool: build, test, bench, demo, install.
# `make` builds the libraries into build/lib and refreshes include/bufpool.h.
# `make test` is what CI runs: header check, symbol check, Rust tests, loom
# models, every C harness in c_tests/, the install through pkg-config, the
# LD_PRELOAD swap.

CARGO    ?= cargo
CC       ?= gcc
STRIP    ?= strip
OBJCOPY  ?= objcopy
PKG_CONFIG ?= pkg-config
LDCONFIG ?= ldconfig
PREFIX   ?= /usr/local
libdir   ?= $(PREFIX)/lib
bindir   ?= $(PREFIX)/bin
includedir ?= $(PREFIX)/include
pkgconfigdir ?= $(libdir)/pkgconfig
# The version has one source, Cargo.toml; build.rs derives the soname and
# the header's BUFPOOL_VERSION* macros from the same line.
VERSION  := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
SOMAJOR  := $(firstword $(subst ., ,$(VERSION)))

TARGET   := target/release
LIBDIR   := build/lib
BINDIR   := build/bin
SO       := $(LIBDIR)/libbufpool.so
SOFULL   := $(LIBDIR)/libbufpool.so.$(VERSION)
ARCHIVE  := $(LIBDIR)/libbufpool.a
HEADER   := include/bufpool.h
# What make install copies: the .so without its debug info but with its
# symbol table (backtraces and perf name its functions), its debug info in
# a file of its own installed as $(libdir)/.debug/libbufpool.so.VERSION.debug,
# which the .so names in its .gnu_debuglink section (with a CRC): gdb looks
# for that name beside the .so, in .debug/ beside it, and under
# /usr/lib/debug, and then shows file and line; the .a without debug info.
# build/lib keeps it all, for make bench and debuggers.
DIST     := build/dist
DEBUGDIR := $(libdir)/.debug

CWARN    := -Wall -Wextra -Werror
CFLAGS   ?= -O2 -g
# The buffer rows of the C harnesses compile once the header has the buffer API.
CFLAGS_ALL := -std=c11 $(CWARN) $(CFLAGS) -D_GNU_SOURCE -Iinclude -pthread
LDSO     := -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool -pthread
LDSTATIC := $(ARCHIVE) -pthread -ldl -lm

# Every harness twice: as written, and built with BUFPOOL_INLINE (the
# header's inline fast path: pool_alloc/pool_free served in the program),
# but test_inline (inline already) and test_bad_input (its rows name the
# program, and its inputs are the library's to refuse: test_inline has the
# inline path's NULL rows).
INLINE_SRC := $(filter-out c_tests/test_inline.c c_tests/test_bad_input.c,$(wildcard c_tests/test_*.c))
C_TESTS  := $(patsubst c_tests/%.c,$(BINDIR)/%,$(wildcard c_tests/test_*.c)) \
	$(patsubst c_tests/test_%.c,$(BINDIR)/inline_%,$(INLINE_SRC))
# The C harnesses that TSan runs: the threaded ones and the scenarios of the
# HAProxy fixes this library grew out of (test_00N_*).
TSAN_TESTS := $(patsubst c_tests/test_%.c,$(BINDIR)/tsan_%,$(wildcard c_tests/test_dynbuf_*.c c_tests/test_00[0-3]_*.c))

# Real musl: the race harness and the demo are also linked statically with
# musl-gcc against libbufpool.a (built for the GNU target; tools/musl-stubs.c
# fills in the few glibc names the Rust runtime mentions).
MUSLCC   ?= musl-gcc
MUSL_LD  := -static -Wl,--gc-sections tools/musl-stubs.c $(ARCHIVE)
HAVE_MUSL = command -v $(MUSLCC) >/dev/null 2>&1
NO_MUSL_MSG = echo "musl: $(MUSLCC) not found (apt-get install musl-tools): only the glibc run (M_MMAP_THRESHOLD=128K) stands"
DEMO_CFLAGS := $(CFLAGS_ALL) -Ic_tests

.PHONY: all lib dist header check-header check-symbols check-license test test-rust test-debug test-fallback lint test-loom \
	test-c test-musl musl-tools test-tsan test-sanitize test-install test-preload test-cargo-build test-output \
	test-demo-verdict test-dlopen bench bench-readme demo install uninstall clean examples relay-demo test-relay \
	haproxy test-haproxy haproxy-demo haproxy-regtests

all: lib header

# The C libraries; build.rs regenerates target/release/bufpool.h. `cargo
# rustc` with the C crate types only: rustc then builds the standard library
# into them by LTO, keeping only what bufpool reaches. With the rlib among
# the crate types (Cargo.toml has it for the Rust tests, so a plain `cargo
# build` does that), the .a carries all of std as one object file, and a
# `-static` link pulls in getaddrinfo and getpwuid_r with it (README: Static
# linking). The native libraries the .a needs, as rustc prints them, are
# kept for bufpool.pc's Libs.private.
# Every function 64-byte aligned (-align-all-functions=6, 14 KiB more text):
# where pool_alloc and pool_free start within a cache line moved them by up
# to 5% from one build to the next (tools/ab), the fast paths' 72 and 89
# bytes now take two lines each, always the same way.
CARGO_LIB := $(CARGO) rustc --release --lib --crate-type cdylib,staticlib -- --print native-static-libs \
	-C llvm-args=-align-all-functions=6
$(TARGET)/libbufpool.so $(TARGET)/libbufpool.a $(TARGET)/bufpool.h: FORCE
	@mkdir -p build
	@echo "$(CARGO) rustc --release --lib --crate-type cdylib,staticlib"
	@{ $(CARGO_LIB) 2>&1; echo $$? > build/cargo-lib.rc; } | tee build/cargo-lib.log | grep -v -e '^note: ' -e '^$$' || true
	@exit $$(cat build/cargo-lib.rc)
FORCE:

lib: $(TARGET)/libbufpool.so
	@mkdir -p $(LIBDIR)
	@cp -f $(TARGET)/libbufpool.so $(SOFULL)
	@ln -sf libbufpool.so.$(VERSION) $(LIBDIR)/libbufpool.so.$(SOMAJOR)
	@ln -sf libbufpool.so.$(SOMAJOR) $(SO)
	@cp -f $(TARGET)/libbufpool.a $(ARCHIVE)
	@sed -n 's/^note: native-static-libs: //p' build/cargo-lib.log | tail -n 1 > $(LIBDIR)/native-static-libs

# The installed copies: debug info stripped (the .so's set apart in its
# .debug file, linked to by name and CRC), symbol tables kept.
dist: lib
	@mkdir -p $(DIST)
	@$(OBJCOPY) --only-keep-debug $(SOFULL) $(DIST)/libbufpool.so.$(VERSION).debug
	@$(STRIP) --strip-debug -o $(DIST)/libbufpool.so.$(VERSION) $(SOFULL)
	@cd $(DIST) && $(OBJCOPY) --add-gnu-debuglink=libbufpool.so.$(VERSION).debug libbufpool.so.$(VERSION)
	@$(STRIP) --strip-debug -o $(DIST)/libbufpool.a $(ARCHIVE)
	@sed "s|^installed_libdir=$$|installed_libdir='$(libdir)'|" tools/preload-check.sh > $(DIST)/bufpool-preload-check
	@echo "$(DIST): libbufpool.so.$(VERSION) $$(du -k $(DIST)/libbufpool.so.$(VERSION) | cut -f1) KiB (its debug info: $$(du -k $(DIST)/libbufpool.so.$(VERSION).debug | cut -f1) KiB apart), libbufpool.a $$(du -k $(DIST)/libbufpool.a | cut -f1) KiB (debug info stripped)"

header: lib
	@cmp -s $(TARGET)/bufpool.h $(HEADER) || { cp $(TARGET)/bufpool.h $(HEADER); echo "updated $(HEADER)"; }

# Fails when the checked-in header differs from a fresh generation, or when
# it does not compile as pedantic C99 and as C++.
check-header: lib
	@cmp -s $(TARGET)/bufpool.h $(HEADER) || { echo "FAIL: $(HEADER) is stale: run 'make header' and commit it"; diff -u $(HEADER) $(TARGET)/bufpool.h | head -40; exit 1; }
	@printf '#include "bufpool.h"\nstatic struct buffer s = BUF_NULL_INIT;\nint main(void){struct buffer b = BUF_NULL; return (int)(b.size + s.size);}\n' > build/hdr.c
	@$(CC) -std=c99 -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr.c -o build/hdr.o
	@g++ -x c++ -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr.c -o build/hdrpp.o
	@printf '#define BUFPOOL_INLINE\n#include "bufpool.h"\n#ifndef BUFPOOL_INLINE_ACTIVE\n#error no inline fast path\n#endif\nvoid *f(struct pool_head *p);\nvoid *f(struct pool_head *p){void *o = pool_alloc(p); pool_free(p, o); return (pool_alloc)(p);}\n' > build/hdr-inline.c
	@$(CC) -std=c99 -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr-inline.c -o build/hdr-inline.o
	@g++ -x c++ -Wall -Wextra -Wpedantic -Werror -Iinclude -c build/hdr-inline.c -o build/hdr-inlinepp.o
	@echo "header: up to date, compiles as C99 and C++ (with BUFPOOL_INLINE too)"

# Only the names of the C contract may be exported by the .so.
check-symbols: lib
	@bad=$$(nm -D --defined-only $(SO) | awk '{print $$3}' | grep -v -E -f tools/exported-symbols.txt || true); \
	if [ -n "$$bad" ]; then echo "FAIL: unexpected exported symbols:"; echo "$$bad"; exit 1; fi; \
	echo "symbols: only the C contract is exported ($$(nm -D --defined-only $(SO) | wc -l) names)"
	@readelf -d $(SO) | grep -q 'SONAME.*libbufpool.so.$(SOMAJOR)' && echo "soname: libbufpool.so.$(SOMAJOR)"

$(BINDIR)/test_%: c_tests/test_%.c c_tests/harness.h $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(CC) $(CFLAGS_ALL) $< -o $@ $(LDSO)

$(BINDIR)/inline_%: c_tests/test_%.c c_tests/harness.h $(HEADER) lib
	@mkdir -p $(BINDIR)
	$(CC) $(CFLAGS_ALL) -DBUFPOOL_INLINE $< -o $@ $(LDSO)

$(BINDIR)/test_race: c_tests/race.h
$(BINDIR)/inline_race: c_tests/race.h

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

# The invariants the code states as debug_assert! are checked in a debug
# build: the Rust tests (the fuzzers scaled down), then every C harness
# against the debug library (a failed assertion aborts the harness).
DEBUG_FUZZ_OPS ?= 300000
test-debug: $(C_TESTS)
	BUFPOOL_FUZZ_OPS=$(DEBUG_FUZZ_OPS) $(CARGO) test
	$(CARGO) build --lib
	@mkdir -p build/lib-debug && cp -f target/debug/libbufpool.so build/lib-debug/libbufpool.so.$(SOMAJOR)
	@pass=0; fail=0; for t in $(C_TESTS); do \
	  if LD_LIBRARY_PATH=build/lib-debug $$t > $$t.debug.log 2>&1; then pass=$$((pass+1)); else echo "FAIL (debug library): $$t (log: $$t.debug.log)"; tail -5 $$t.debug.log; fail=$$((fail+1)); fi; \
	done; echo "c_tests against the debug library: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# The whole protocol once more in its fallback: every owner fences itself,
# as where membarrier(2) cannot be had (BUFPOOL_CACHE_SYNC=fence, read once
# per process). The Rust tests (the fuzzers scaled down) and every C harness.
FALLBACK_FUZZ_OPS ?= 1000000
test-fallback: $(C_TESTS)
	BUFPOOL_CACHE_SYNC=fence BUFPOOL_FUZZ_OPS=$(FALLBACK_FUZZ_OPS) $(CARGO) test --release
	@pass=0; fail=0; for t in $(C_TESTS); do \
	  if BUFPOOL_CACHE_SYNC=fence $$t > $$t.fallback.log 2>&1; then pass=$$((pass+1)); else echo "FAIL (fallback protocol): $$t (log: $$t.fallback.log)"; tail -5 $$t.fallback.log; fail=$$((fail+1)); fi; \
	done; echo "c_tests with the fallback protocol (BUFPOOL_CACHE_SYNC=fence): $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# The gates: clippy with every warning an error (the crate's [lints] deny
# unsafe operations without their own unsafe block and unsafe blocks
# without a SAFETY comment), and rustfmt.
lint:
	@$(CARGO) clippy --version >/dev/null 2>&1 && $(CARGO) fmt --version >/dev/null 2>&1 || \
	  { echo "lint: adding the clippy and rustfmt components"; rustup component add clippy rustfmt; }
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check

# Loom models need their own build of the crate (cfg(loom)). A warning
# there is an error: what only the real build uses (the fork handlers, the
# membarrier paths) is cfg(not(loom)), item by item.
test-loom:
	RUSTFLAGS="--cfg loom -D warnings" CARGO_TARGET_DIR=target/loom $(CARGO) test --release --lib loom

test-c: $(C_TESTS)
	@pass=0; fail=0; for t in $(C_TESTS); do \
	  if $$t; then pass=$$((pass+1)); else echo "FAIL: $$t"; fail=$$((fail+1)); fi; \
	done; echo "c_tests: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

# The race harness again, on real musl (static), when musl-gcc is there.
test-musl: lib musl-tools
	@if $(HAVE_MUSL); then $(MAKE) --no-print-directory $(BINDIR)/test_race.musl && $(BINDIR)/test_race.musl; \
	else $(NO_MUSL_MSG); fi

# Every target runs, each in its own make, even after one has failed; the
# last line counts them and names the failed ones (exit 1 if any). The
# crates are fetched first, so that a fresh clone's downloads do not come
# in the middle of the first target's output.
TEST_TARGETS := lint check-header check-symbols check-license test-rust test-debug test-loom test-c test-fallback test-musl \
	test-tsan test-output test-cargo-build test-dlopen test-install test-preload test-demo-verdict test-relay test-haproxy
test:
	@$(CARGO) fetch --quiet || echo "make test: cargo fetch failed: the targets that build will download or fail"
	@pass=0; failed=""; for t in $(TEST_TARGETS); do \
	  if $(MAKE) --no-print-directory $$t; then pass=$$((pass+1)); else failed="$$failed $$t"; echo "make test: $$t FAILED"; fi; \
	done; \
	if [ -z "$$failed" ]; then echo "make test: $(words $(TEST_TARGETS)) targets, $$pass passed"; \
	else echo "make test: $(words $(TEST_TARGETS)) targets, $$pass passed, $$(($(words $(TEST_TARGETS)) - pass)) failed:$$failed"; exit 1; fi

# Both licence texts, and the header's SPDX line saying what Cargo.toml says.
check-license: header
	@lic=$$(sed -n 's/^license *= *"\(.*\)"/\1/p' Cargo.toml); \
	grep -q "SPDX-License-Identifier: $$lic \*/" $(HEADER) || { echo "FAIL: $(HEADER) lacks 'SPDX-License-Identifier: $$lic'"; exit 1; }; \
	grep -q "Copyright (c) .* the bufpool authors" LICENSE-MIT && grep -q "Apache License" LICENSE-APACHE && grep -q "Version 2.0, January 2004" LICENSE-APACHE || \
	  { echo "FAIL: LICENSE-MIT or LICENSE-APACHE missing or not the standard text"; exit 1; }; \
	echo "licence: $$lic, LICENSE-MIT and LICENSE-APACHE present, SPDX line in the header"

# What the library prints for people: the help text's lines are indented
# under its first line, continuation lines under the descriptions.
test-output: $(BINDIR)/test_pool_failed
	@BUFPOOL_DEBUG=help $(BINDIR)/test_pool_failed 2> build/help.txt > /dev/null; \
	if sed -n '2,$$p' build/help.txt | grep -q '^[^ ]'; then echo "FAIL: BUFPOOL_DEBUG=help has unindented lines:"; cat build/help.txt; exit 1; fi; \
	grep -q '^                   [^ ]' build/help.txt || { echo "FAIL: help's continuation lines are not under the descriptions"; cat build/help.txt; exit 1; }; \
	echo "help text: $$(wc -l < build/help.txt) lines, indented"

# A plain `cargo build` gives a library a C program can link and run: the
# soname link libbufpool.so.$(SOMAJOR) is beside libbufpool.so (build.rs).
test-cargo-build: lib
	@$(CARGO) build --release --lib --quiet
	@test -e $(TARGET)/libbufpool.so.$(SOMAJOR) || { echo "FAIL: cargo build left no $(TARGET)/libbufpool.so.$(SOMAJOR)"; exit 1; }
	@mkdir -p $(BINDIR)
	@$(CC) -std=c11 $(CWARN) -I$(TARGET) c_tests/install/app.c -L$(TARGET) -lbufpool -o $(BINDIR)/app_cargo
	@out=$$(LD_LIBRARY_PATH=$(TARGET) $(BINDIR)/app_cargo) || { echo "FAIL: a program linked against a plain cargo build does not run"; exit 1; }; \
	echo "cargo build: -L$(TARGET) -lbufpool and LD_LIBRARY_PATH=$(TARGET) run ($$out)"

# A program not linked against bufpool loads it with dlopen() after start
# (its initial-exec TLS word comes from glibc's spare static TLS).
test-dlopen: lib
	@mkdir -p $(BINDIR)
	@$(CC) $(CFLAGS_ALL) c_tests/dlopen/app.c -o $(BINDIR)/dlopen_app -ldl
	@$(BINDIR)/dlopen_app $(abspath $(SOFULL))

# make install into temporary prefixes, programs built through pkg-config.
test-install: all
	@VERSION=$(VERSION) SOMAJOR=$(SOMAJOR) CC="$(CC)" MAKE="$(MAKE)" PKG_CONFIG="$(PKG_CONFIG)" tools/test-install.sh

# LD_PRELOAD=libbufpool.so in place of an old pool library.
test-preload: lib
	@CC="$(CC)" CFLAGS_ALL="$(CFLAGS_ALL)" tools/test-preload.sh

# The C harnesses under ASan+UBSan and under TSan, the Rust tests under ASan
# (nightly), and valgrind memcheck: see tools/test-sanitize.sh.
test-sanitize: lib
	@CC="$(CC)" CFLAGS_ALL="$(CFLAGS_ALL)" LDSO="$(LDSO)" CARGO="$(CARGO)" tools/test-sanitize.sh

# Results stay under build/bench (tables, bench.png, memory.png): a run
# leaves the checkout clean. `make bench-readme` then copies that run's
# pictures to docs/ and its tables into the README (tools/bench-readme.sh).
bench: lib
	@$(MAKE) --no-print-directory -f bench/bench.mk

bench-readme:
	@tools/bench-readme.sh build/bench

# The main job: the musl race of the lock-free shared cache from C on each
# algorithm, then the
# throughput table; on glibc (mmap threshold fixed at 128 KB) and on musl.
DEMO_RUNS    ?= 5
DEMO_SECONDS ?= 1
DEMO_CELL    ?= 0.2
# A legend first; each program appends its figures to build/demo-summary.txt,
# from which demo/verdict.sh writes the closing verdict.
DEMO_SUM := build/demo-summary.txt
demo: lib musl-tools $(BINDIR)/race_demo $(BINDIR)/throughput
	@demo/verdict.sh legend
	@rm -f $(DEMO_SUM)
	@BUFPOOL_DEMO_SUMMARY=$(DEMO_SUM) $(BINDIR)/race_demo $(DEMO_RUNS) $(DEMO_SECONDS) || true
	@if $(HAVE_MUSL); then $(MAKE) --no-print-directory -s $(BINDIR)/race_demo.musl $(BINDIR)/throughput.musl >/dev/null && \
	  { BUFPOOL_DEMO_SUMMARY=$(DEMO_SUM) $(BINDIR)/race_demo.musl $(DEMO_RUNS) $(DEMO_SECONDS) || true; }; else $(NO_MUSL_MSG); fi
	@BUFPOOL_DEMO_SUMMARY=$(DEMO_SUM) $(BINDIR)/throughput $(DEMO_CELL)
	@if $(HAVE_MUSL); then BUFPOOL_DEMO_SUMMARY=$(DEMO_SUM) $(BINDIR)/throughput.musl $(DEMO_CELL); fi
	@demo/verdict.sh verdict $(DEMO_SUM)

# The verdict's arithmetic on fixed figures (the README's run: expected
# outcome, exit 0; the same with one xchg crash: UNEXPECTED, exit 1), then
# a tiny real run (1 race run per algorithm, 2 ms cells) so that the
# programs' summary lines and the script keep agreeing.
test-demo-verdict: $(BINDIR)/race_demo $(BINDIR)/throughput
	@out=$$(demo/verdict.sh verdict demo/testdata/summary-readme.txt) || { echo "FAIL: verdict on the README figures: exit $$?"; echo "$$out"; exit 1; }; \
	for want in "on glibc in 5 of 5 runs, 92.7 ms" "on musl in 5 of 5 runs, 67.7 ms" "survived 10 of 10 runs" \
	    "against the lock (locked): median 1.00x, from 0.52x to 1.99x over 13 cells" "against no cache (none):   median 305x" \
	    "slower than no cache in 1: glibc 16K 1thr" "on musl, by object size (median over thread counts): 72x at 16K, 193x at 48K" \
	    "dwcas against xchg:        median 0.83x" "at the speed of the lock, and 305x the speed of no cache (0.80x to 743x)"; do \
	  case "$$out" in *"$$want"*) ;; *) echo "FAIL: verdict lacks '$$want':"; echo "$$out"; exit 1;; esac; done
	@sed 's/^race glibc xchg 5 0 5/race glibc xchg 5 1 4/' demo/testdata/summary-readme.txt > build/demo-bad.txt; \
	out=$$(demo/verdict.sh verdict build/demo-bad.txt); rc=$$?; \
	case "$$out" in *"UNEXPECTED: xchg, the default, crashed"*) [ $$rc = 1 ] || { echo "FAIL: verdict exit $$rc on an xchg crash"; exit 1; };; \
	  *) echo "FAIL: an xchg crash is not called unexpected:"; echo "$$out"; exit 1;; esac
	@rm -f build/demo-tiny.txt; BUFPOOL_DEMO_SUMMARY=build/demo-tiny.txt $(BINDIR)/race_demo 1 0.2 > /dev/null || true; \
	BUFPOOL_DEMO_SUMMARY=build/demo-tiny.txt $(BINDIR)/throughput 0.002 > /dev/null; \
	out=$$(demo/verdict.sh verdict build/demo-tiny.txt); rc=$$?; \
	if [ $$rc -gt 1 ] || [ $$(grep -c '^race ' build/demo-tiny.txt) != 4 ] || [ $$(grep -c '^tp ' build/demo-tiny.txt) != 12 ]; then \
	  echo "FAIL: the demo programs' figures and demo/verdict.sh disagree:"; cat build/demo-tiny.txt; echo "$$out"; exit 1; fi; \
	case "$$out" in *"xchg, the default, survived"*"against the lock (locked): median"*"=>"*) ;; \
	  *) echo "FAIL: verdict of a tiny run:"; echo "$$out"; exit 1;; esac
	@echo "demo verdict: computed from the figures (README run, an xchg crash, a tiny real run)"

# bufpool.pc for PREFIX. Libs.private: what rustc printed for the .a, less
# -lgcc_s and -lc, which gcc adds by itself (and -lgcc_s, a shared library
# only, would break `gcc -static`: there gcc links libgcc_eh.a instead).
build/bufpool.pc: bufpool.pc.in lib FORCE
	@libs=$$(tr ' ' '\n' < $(LIBDIR)/native-static-libs | grep -v -x -e '' -e -lgcc_s -e -lc | tr '\n' ' ' | sed 's/ $$//'); \
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(libdir)|' -e 's|@INCLUDEDIR@|$(includedir)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e "s|@LIBS_PRIVATE@|$${libs:--lpthread -ldl -lm}|" bufpool.pc.in > $@

# Stripped libraries, the .so's debug info apart, the header, bufpool.pc,
# bufpool-preload-check (tools/preload-check.sh); then ldconfig when it is due
# (root, a directory of the dynamic linker, no DESTDIR), else one note on
# how programs will find the library (tools/install-ldconfig.sh).
install: all dist build/bufpool.pc
	install -d $(DESTDIR)$(libdir) $(DESTDIR)$(DEBUGDIR) $(DESTDIR)$(includedir) $(DESTDIR)$(pkgconfigdir) $(DESTDIR)$(bindir)
	install -m 755 $(DIST)/libbufpool.so.$(VERSION) $(DESTDIR)$(libdir)/
	install -m 644 $(DIST)/libbufpool.so.$(VERSION).debug $(DESTDIR)$(DEBUGDIR)/
	ln -sf libbufpool.so.$(VERSION) $(DESTDIR)$(libdir)/libbufpool.so.$(SOMAJOR)
	ln -sf libbufpool.so.$(SOMAJOR) $(DESTDIR)$(libdir)/libbufpool.so
	install -m 644 $(DIST)/libbufpool.a $(DESTDIR)$(libdir)/
	install -m 644 $(HEADER) $(DESTDIR)$(includedir)/
	install -m 644 build/bufpool.pc $(DESTDIR)$(pkgconfigdir)/
	install -m 755 $(DIST)/bufpool-preload-check $(DESTDIR)$(bindir)/
	@DESTDIR="$(DESTDIR)" LDCONFIG="$(LDCONFIG)" tools/install-ldconfig.sh install $(libdir) libbufpool.so.$(SOMAJOR)

# Removes what install put there (same PREFIX, libdir, DESTDIR).
uninstall:
	rm -f $(DESTDIR)$(libdir)/libbufpool.so.$(VERSION) $(DESTDIR)$(libdir)/libbufpool.so.$(SOMAJOR) \
	      $(DESTDIR)$(libdir)/libbufpool.so $(DESTDIR)$(libdir)/libbufpool.a \
	      $(DESTDIR)$(includedir)/bufpool.h $(DESTDIR)$(pkgconfigdir)/bufpool.pc \
	      $(DESTDIR)$(DEBUGDIR)/libbufpool.so.$(VERSION).debug $(DESTDIR)$(bindir)/bufpool-preload-check
	@rmdir $(DESTDIR)$(DEBUGDIR) 2>/dev/null || true
	@DESTDIR="$(DESTDIR)" LDCONFIG="$(LDCONFIG)" tools/install-ldconfig.sh uninstall $(libdir) libbufpool.so.$(SOMAJOR)

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

# HAProxy 2.6 itself (Debian bookworm's source package, fetched and built
# under build/haproxy) with its pool layer replaced by the shim of
# examples/haproxy, every pool served by bufpool: build/haproxy/haproxy.
# Needs root and the Debian archive, or prints one line saying what it
# skipped (docs/HAPROXY.md).
haproxy: lib
	@examples/haproxy/build.sh .

# That HAProxy in front of examples/relay's backend: bodies through
# keep-alive and pipelining, show pools, -dM, reload, soft stop, nothing
# left in use, master-worker (about 35 s once built; the build from
# scratch, about 80 s).
test-haproxy: lib examples
	@examples/haproxy/test.sh .

# That HAProxy beside stock Debian HAProxy 2.6, nginx behind, wrk at 50 and
# 500 connections, interleaved rounds: req/s, p99, CPU per request, peak
# RSS, ratios; h2load at 2000; RSS after 2000 slow 1 MiB downloads (about
# 4 minutes; DEMO_SECONDS, DEMO_ROUNDS, DEMO_CONNS...).
haproxy-demo: lib examples
	@examples/haproxy/demo.sh .

# HAProxy's own reg-tests (its scripts/run-regtests.sh, VTest) against that
# HAProxy and against the same build with HAProxy's own pools; every test
# that fails in either run, run again alone (a few minutes; VTest built from
# VTEST_SRC or a clone of its public repository, or the target skips).
haproxy-regtests: haproxy
	@examples/haproxy/regtests.sh .

clean:
	rm -rf build
	$(CARGO) clean
