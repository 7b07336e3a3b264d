#!/bin/sh
# tools/ab/build.sh NAME [REV] [-- RUSTC_ARGS...]
#   env: CFLAGS_EXTRA (bench C flags), LDFLAGS_SO (extra link flags of bench-so),
#        RUSTFLAGS (all crates), AB_DIR (default /work/ab),
#        LIB_FROM=OTHER (no build: the library of AB_DIR/OTHER)
# Builds the library of REV (default: the work tree as it is) with the same
# command as `make lib` (cargo rustc --release --lib --crate-type
# cdylib,staticlib, the -C llvm-args of the tree's Makefile, RUSTC_ARGS
# appended, for the bufpool crate only), into
# AB_DIR/NAME/lib, then bench/bench.c of *this* tree against it:
# AB_DIR/NAME/bench-so (rpath to AB_DIR/NAME/lib) and AB_DIR/NAME/bench-a.
set -eu
name=$1; shift
rev=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rev=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
top=$(git rev-parse --show-toplevel)
ab=${AB_DIR:-/work/ab}
out=$ab/$name
src=$top
if [ -n "$rev" ]; then
    src=$ab/src-$name
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$top" archive "$rev" | tar -x -m -C "$src"
fi
mkdir -p "$out/lib"
if [ -n "${LIB_FROM:-}" ]; then
    if [ "$LIB_FROM" != "$name" ]; then
        cp -f "$ab/$LIB_FROM/lib/libbufpool.so.0" "$ab/$LIB_FROM/lib/libbufpool.a" "$out/lib/"
    fi
else
    # One target dir per variant: cargo once kept one variant's library for the next.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ab/target-$name}"
    # The rustc flags the tree's Makefile gives the C libraries (-C llvm-args=...).
    mk=$(grep -o -- '-C llvm-args=[^ ]*' "$src/Makefile" | tr '\n' ' ' || true)
    ( cd "$src" && cargo rustc --release --lib --crate-type cdylib,staticlib -q -- $mk "$@" )
    cp -f "$CARGO_TARGET_DIR/release/libbufpool.so" "$out/lib/libbufpool.so.0"
    cp -f "$CARGO_TARGET_DIR/release/libbufpool.a" "$out/lib/libbufpool.a"
fi
ln -sf libbufpool.so.0 "$out/lib/libbufpool.so"
cf="-std=c11 -Wall -Wextra -Werror -O2 -g -D_GNU_SOURCE -I$src/include -pthread -DBENCH_POOL ${CFLAGS_EXTRA:-}"
gcc $cf "$top/bench/bench.c" -o "$out/bench-so" -L"$out/lib" -Wl,-rpath,"$out/lib" ${LDFLAGS_SO:-} -lbufpool
gcc $cf "$top/bench/bench.c" -o "$out/bench-a" "$out/lib/libbufpool.a" -pthread -ldl -lm
echo "$name: ${rev:-worktree} rustc+[$*] RUSTFLAGS=[${RUSTFLAGS:-}] CFLAGS_EXTRA=[${CFLAGS_EXTRA:-}] LDFLAGS_SO=[${LDFLAGS_SO:-}] LIB_FROM=[${LIB_FROM:-}]" > "$out/what"
cat "$out/what"
