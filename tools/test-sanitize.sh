#!/usr/bin/env bash
# make test-sanitize: four passes, each a failure on any report.
#  1. every c_tests/test_*.c built with -fsanitize=address,undefined against
#     (run twice: the default protocol of the thread caches and the fallback)
#     build/lib/libbufpool.so, and run (ASan's malloc serves the library's
#     objects, so overruns of pool objects by C code are caught);
#  2. the same under -fsanitize=thread, except the harnesses whose name
#     starts with $CRASH_SKIP (default test_race: the race harness crashes
#     the DWCAS list on purpose, and its threads race by design);
#  3. the Rust tests with -Zsanitizer=address (nightly; skipped, with one
#     line, when no nightly toolchain is installed);
#  4. valgrind memcheck on the harnesses that end with pool_destroy_all()
#     (except $CRASH_SKIP ones): no definite or indirect leak, no error
#     (valgrind is installed with apt-get when missing and we are root).
# Under ASan, SIGSEGV stays a signal (handle_segv=0), so harnesses that
# check how a child died see the same thing as without ASan.
# Run from the repository root, after `make lib`.
set -uo pipefail
CC=${CC:-gcc}
CARGO=${CARGO:-cargo}
: "${CFLAGS_ALL:?run through make test-sanitize}" "${LDSO:?run through make test-sanitize}"
CRASH_SKIP=${CRASH_SKIP:-test_race}
OUT=build/san
mkdir -p "$OUT"
fail=0
note() { printf '%s\n' "$*"; }
bad() { note "FAIL: $*"; fail=1; }

# 1 and 2: the C harnesses, sanitized (-O1 keeps frames readable).
run_c() { # kind flags env...  (binaries keep their names, in $OUT/kind/)
    local kind=$1 flags=$2; shift 2
    local n=0
    mkdir -p "$OUT/$kind"
    for src in c_tests/test_*.c; do
        local t; t=$(basename "$src" .c)
        if [[ $t == $CRASH_SKIP* ]]; then note "$kind: skipping $t (it crashes on purpose, and needs the system allocator to unmap on free: the sanitizer replaces it)"; continue; fi
        # shellcheck disable=SC2086
        $CC $CFLAGS_ALL -O1 -fno-omit-frame-pointer $flags "$src" $EXTRA_SRC -o "$OUT/$kind/$t" $LDSO || { bad "$kind: build $t"; continue; }
        if env "$@" "$OUT/$kind/$t" > "$OUT/$kind/$t.log" 2>&1; then n=$((n + 1)); else bad "$kind: $t (log: $OUT/$kind/$t.log)"; tail -20 "$OUT/$kind/$t.log"; fi
    done
    note "$kind: $n C harnesses passed"
}
ASAN_ENV="ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:handle_segv=0:handle_sigbus=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
# shellcheck disable=SC2086
EXTRA_SRC="" run_c asan "-fsanitize=address,undefined -fno-sanitize-recover=all" $ASAN_ENV
# 1b: the same ASan binaries with the thread caches' fallback protocol (each
# owner fences itself, as where membarrier(2) cannot be had). TSan, below,
# runs in the fallback too (its build cannot see membarrier).
n=0
for b in "$OUT"/asan/test_*; do
    [[ -x $b && $b != *.log ]] || continue
    t=$(basename "$b")
    # shellcheck disable=SC2086
    if env BUFPOOL_CACHE_SYNC=fence $ASAN_ENV "$b" > "$OUT/asan/$t.fence.log" 2>&1; then n=$((n + 1)); else bad "asan, fallback protocol: $t (log: $OUT/asan/$t.fence.log)"; tail -20 "$OUT/asan/$t.fence.log"; fi
done
note "asan (BUFPOOL_CACHE_SYNC=fence): $n C harnesses passed"
# TSan must see the library's own synchronisation, std's locks included,
# or every object handed from one thread to another through a pool looks
# like a race: on nightly, the library and std are rebuilt with
# -Zsanitizer=thread (-Zbuild-std, which needs the rust-src component: it
# is installed when missing; compiler_builtins stays uninstrumented, hence
# the ABI-mismatch allowance), and the harnesses link against that build.
host=$(rustc -vV | sed -n 's/^host: //p')
have_nightly=0; rustup toolchain list 2>/dev/null | grep -q '^nightly' && have_nightly=1
have_src() { [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; }
TSAN_LDSO=$LDSO
TSAN_SHIM=""
TSAN_RUN=1
if [ $have_nightly = 1 ] && ! have_src; then
    note "tsan: adding the rust-src component to nightly (rustup), to rebuild std instrumented"
    timeout 300 rustup component add rust-src --toolchain nightly > "$OUT/rust-src.log" 2>&1 || true
fi
if [ $have_nightly = 1 ] && have_src; then
    if RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer --cfg bufpool_tsan" CARGO_TARGET_DIR=target/tsan \
        $CARGO +nightly build -Zbuild-std=std,panic_abort --release --lib --target "$host" > "$OUT/tsan-lib.log" 2>&1; then
        mkdir -p "$OUT/tsanlib"
        cp -f "target/tsan/$host/release/libbufpool.so" "$OUT/tsanlib/libbufpool.so.0"
        ln -sf libbufpool.so.0 "$OUT/tsanlib/libbufpool.so"
        TSAN_LDSO="-L$OUT/tsanlib -Wl,-rpath,$(pwd)/$OUT/tsanlib -lbufpool -pthread"
        TSAN_SHIM=tools/tsan-shim.c
    else
        bad "tsan: instrumented library build (log: $OUT/tsan-lib.log)"
    fi
else
    TSAN_RUN=0
    note "tsan: skipped: needs nightly Rust with rust-src to instrument the library and std (-Zbuild-std); make test still runs the buffer harnesses under TSan (test-tsan)"
fi
# TSan maps memory at fixed places: run without address randomisation.
SETARCH=""; setarch "$(uname -m)" -R true 2>/dev/null && SETARCH="setarch $(uname -m) -R"
[ $TSAN_RUN = 0 ] || LDSO=$TSAN_LDSO EXTRA_SRC=$TSAN_SHIM run_c tsan "-fsanitize=thread" TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $SETARCH

# 3: the Rust tests under ASan.
if [ $have_nightly = 1 ]; then
    if RUSTFLAGS="-Zsanitizer=address -Cunsafe-allow-abi-mismatch=sanitizer" CARGO_TARGET_DIR=target/asan BUFPOOL_FUZZ_OPS=${BUFPOOL_FUZZ_OPS_ASAN:-1000000} \
        ASAN_OPTIONS=detect_leaks=1 $CARGO +nightly test --release --target "$host" > "$OUT/rust-asan.log" 2>&1; then
        note "rust asan: $(grep -c '^test result: ok' "$OUT/rust-asan.log") test binaries passed"
    else
        bad "rust asan (log: $OUT/rust-asan.log)"; tail -30 "$OUT/rust-asan.log"
    fi
else
    note "rust asan: skipped, no nightly toolchain (rustup toolchain install nightly)"
fi

# 4: valgrind memcheck, leaks included, on harnesses ending with pool_destroy_all.
# Installed when missing, if we are root with apt-get.
if ! command -v valgrind > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    note "valgrind: installing valgrind for memcheck"
    apt-get install -y -q valgrind > /dev/null 2>&1 || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q valgrind > /dev/null 2>&1; }
fi
if command -v valgrind > /dev/null; then
    n=0
    mkdir -p "$OUT/vg"
    for src in $(grep -l 'pool_destroy_all()' c_tests/test_*.c); do
        t=$(basename "$src" .c)
        if [[ $t == $CRASH_SKIP* ]]; then note "valgrind: skipping $t (crashes on purpose)"; continue; fi
        # A race harness under valgrind, which runs one thread at a time,
        # races nothing and can starve its threads for minutes on a loaded
        # machine; ASan and TSan run it instead.
        if [[ $t == test_pool_races ]]; then note "valgrind: skipping $t (a race harness: valgrind serialises threads; ASan and TSan run it)"; continue; fi
        # shellcheck disable=SC2086
        $CC $CFLAGS_ALL "$src" -o "$OUT/vg/$t" $LDSO || { bad "valgrind: build $t"; continue; }
        if valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
            "$OUT/vg/$t" > "$OUT/vg/$t.log" 2>&1; then n=$((n + 1)); else bad "valgrind: $t (log: $OUT/vg/$t.log)"; tail -30 "$OUT/vg/$t.log"; fi
    done
    note "valgrind: $n harnesses clean (no error, no definite or indirect leak)"
else
    bad "valgrind not installed (apt-get install valgrind; make test-sanitize as root installs it)"
fi

[ $fail -eq 0 ] && note "make test-sanitize: all passed"
exit $fail
