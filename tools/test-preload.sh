#!/bin/sh
# make test-preload: LD_PRELOAD=libbufpool.so in place of an old pool
# library (c_tests/preload/legacy_pool.c, malloc underneath), for a program
# linked against it (legacy_app.c). Checks:
#  1. as built, the old library answers (its dump says "legacy pools:");
#  2. with LD_PRELOAD, bufpool answers: its "show pools" dump, with the
#     program's pool in it;
#  3. the program's double free goes unseen by the old library (the same
#     object comes back twice), and with BUFPOOL_DEBUG=tag under LD_PRELOAD
#     bufpool aborts on it with its one-line message;
#  4. the limits, as tools/preload-check.sh reports them: the same program
#     with the pool code compiled in is left alone by LD_PRELOAD (checked by
#     running it), and one that calls pool_get_first(), which bufpool lacks,
#     is reported as mixed.
# Run from the repository root after make lib.
set -u
CC=${CC:-gcc}
CFLAGS_ALL=${CFLAGS_ALL:--std=c11 -Wall -Wextra -Werror -O2 -g -D_GNU_SOURCE -Iinclude -pthread}
out=build/preload
so=$(pwd)/build/lib/libbufpool.so
mkdir -p $out
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fail=1; }

# shellcheck disable=SC2086
$CC $CFLAGS_ALL -fPIC -shared c_tests/preload/legacy_pool.c -Wl,-soname,liblegacypool.so -o $out/liblegacypool.so &&
$CC $CFLAGS_ALL c_tests/preload/legacy_app.c -L$out -Wl,-rpath,"$(pwd)/$out" -llegacypool -o $out/legacy_app &&
$CC $CFLAGS_ALL -DCALLS_GET_FIRST c_tests/preload/legacy_app.c -L$out -Wl,-rpath,"$(pwd)/$out" -llegacypool -o $out/legacy_app_mixed &&
$CC $CFLAGS_ALL c_tests/preload/legacy_app.c c_tests/preload/legacy_pool.c -o $out/legacy_app_compiled_in ||
{ echo "FAIL: build"; exit 1; }

echo "LD_PRELOAD swap:"
o=$($out/legacy_app 2>&1); rc=$?
case "$o" in *"legacy pools:"*"session: "*) [ $rc = 0 ] && ok "plain run: the old library answers" || bad "plain run exit $rc";; *) bad "plain run: $o";; esac

o=$(LD_PRELOAD=$so $out/legacy_app 2>&1); rc=$?
case "$o" in
*"legacy pools:"*) bad "with LD_PRELOAD the old library still answers: $o";;
*"Dumping pools usage."*"Pool session ("*"1 used"*) [ $rc = 0 ] && ok "LD_PRELOAD=libbufpool.so: bufpool answers (its show pools dump, pool 'session', 1 used)" || bad "preloaded run exit $rc";;
*) bad "with LD_PRELOAD: $o";;
esac

o=$($out/legacy_app double-free 2>&1); rc=$?
case "$o" in *"double free not caught"*) [ $rc = 0 ] && ok "double free, old library: not caught, the same object handed out twice" || bad "exit $rc";; *) bad "double free, old library: $o";; esac

{ BUFPOOL_DEBUG=tag LD_PRELOAD=$so $out/legacy_app double-free >$out/tag.out 2>$out/tag.err; } 2>/dev/null; rc=$?
msg=$(grep '^bufpool: ' $out/tag.err)
case "$msg" in
"bufpool: double free of 0x"*" to pool 'session'"*)
    if [ $rc = 134 ] && [ "$(grep -c '^bufpool: ' $out/tag.err)" = 1 ] && ! grep -q "not caught" $out/tag.out; then
        ok "double free, BUFPOOL_DEBUG=tag under LD_PRELOAD: SIGABRT after one line: $msg"
    else bad "double free under tag: exit $rc (want 134, SIGABRT), stderr: $(cat $out/tag.err)"; fi;;
*) bad "double free under tag: exit $rc, stderr: $(cat $out/tag.err)";;
esac

o=$(LD_PRELOAD=$so $out/legacy_app_compiled_in 2>&1)
case "$o" in *"legacy pools:"*) ok "pool code compiled into the program: LD_PRELOAD changes nothing";; *) bad "compiled in: $o";; esac

BUFPOOL_SO=$so tools/preload-check.sh $out/legacy_app $out/liblegacypool.so > $out/check1.txt; rc=$?
[ $rc = 0 ] && grep -q "old only: .*pool_get_first" $out/check1.txt && ok "preload-check: legacy_app swaps whole (exit 0); the library's extra pool_get_first reported" || { bad "preload-check legacy_app: exit $rc"; cat $out/check1.txt; }
BUFPOOL_SO=$so tools/preload-check.sh $out/legacy_app_compiled_in > $out/check2.txt; rc=$?
[ $rc = 1 ] && grep -q "^no-op" $out/check2.txt && ok "preload-check: compiled-in program reported as a no-op (exit 1)" || { bad "preload-check compiled in: exit $rc"; cat $out/check2.txt; }
BUFPOOL_SO=$so tools/preload-check.sh $out/legacy_app_mixed $out/liblegacypool.so > $out/check3.txt; rc=$?
[ $rc = 2 ] && grep -q "^mixed: .*pool_get_first" $out/check3.txt && ok "preload-check: a program calling pool_get_first reported as mixed (exit 2)" || { bad "preload-check mixed: exit $rc"; cat $out/check3.txt; }

[ $fail = 0 ] && echo "test-preload: all passed"
exit $fail
