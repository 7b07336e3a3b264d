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
DYNBUF_DEF := $(shell grep -q dynbuf_init $(HEADER) 2>/dev/null && echo -DBUFPOOL_HAVE_DYNBUF)
CFLAGS_ALL := -std=c11 $(CWARN) $(CFLAGS) -D_GNU_SOURCE -Iinclude -pthread $(DYNBUF_DEF)
LDSO     := -L$(LIBDIR) -Wl,-rpath,$(abspath $(LIBDIR)) -lbufpool -pthread
LDSTATIC := $(ARCHIVE) -pthread -ldl -lm

C_TESTS  := $(patsubst c_tests/%.c,$(BINDIR)/%,$(wildcard c_tests/test_*.c))

.PHONY: all lib header check-header check-symbols test test-rust test-loom test-c test-sanitize bench demo install clean

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
	@printf '#include "bufpool.h"\nint main(void){return 0;}\n' > build/hdr.c
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

test-rust:
	$(CARGO) test --release

# Loom models need their own build of the crate (cfg(loom)).
test-loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test --release --lib loom

test-c: $(C_TESTS)
	@pass=0; fail=0; for t in $(C_TESTS); do \
	  if $$t; then pass=$$((pass+1)); else echo "FAIL: $$t"; fail=$$((fail+1)); fi; \
	done; echo "C harnesses: $$pass passed, $$fail failed"; [ $$fail -eq 0 ]

test: check-header check-symbols test-rust test-loom test-c
	@echo "make test: all passed"

# The C harnesses under ASan+UBSan and under TSan, the Rust tests under ASan
# (nightly), and valgrind memcheck: see tools/test-sanitize.sh.
test-sanitize: lib
	@CC="$(CC)" CFLAGS_ALL="$(CFLAGS_ALL)" LDSO="$(LDSO)" CARGO="$(CARGO)" tools/test-sanitize.sh

bench: lib
	@$(MAKE) --no-print-directory -f bench/bench.mk

demo: lib
	@echo "make demo comes with the race issue"

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
