#!/bin/sh
# make haproxy-regtests: HAProxy's own regression tests (reg-tests/, run by
# its scripts/run-regtests.sh with VTest) against the shimmed build
# (build/haproxy/haproxy, from `make haproxy`) and against the plain build
# of the same fetched tree with the same make line and HAProxy's own pools
# (build/haproxy/haproxy-plain), and Debian's /usr/sbin/haproxy when it is
# installed, one after the other. Each test that fails in any run is run
# again alone, RERUNS times on each build, so that a test that fails only
# under the parallel run's load is told apart from one that fails every
# time.
#
#   examples/haproxy/regtests.sh [REPO_ROOT]
#
# VTest is not a Debian package and is never kept here: VTEST_PROGRAM names
# a built vtest; else VTEST_SRC (a git repository or a source tree of
# https://github.com/vtest/VTest) is built into build/haproxy/vtest; else
# that address is cloned. Without any of them, one line says what was
# skipped (exit 0). REGTEST_JOBS (2) is run-regtests.sh's --j.
set -eu

ROOT=$(cd "${1:-.}" && pwd)
B=$ROOT/build/haproxy
VER=2.6.12
SRC=$B/fetch/haproxy-$VER
JOBS=${REGTEST_JOBS:-2}
RERUNS=${REGTEST_RERUNS:-3}

skip() { echo "make haproxy-regtests: skipped: $*"; exit 0; }

[ -x "$B/haproxy" ] && [ -f "$SRC/scripts/run-regtests.sh" ] || skip "no shimmed build (make haproxy did not build $B/haproxy)"

# 1. VTest.
VT=${VTEST_PROGRAM:-}
if [ -z "$VT" ]; then
	VT=$B/vtest/vtest
	if [ ! -x "$VT" ]; then
		rm -rf "$B/vtest"
		from=${VTEST_SRC:-https://github.com/vtest/VTest}
		if [ -d "$from" ] && [ ! -d "$from/.git" ] && [ ! -f "$from/HEAD" ]; then
			cp -a "$from" "$B/vtest"
		else
			git clone -q "$from" "$B/vtest" 2>/dev/null || skip "VTest: cannot clone $from (set VTEST_SRC or VTEST_PROGRAM)"
		fi
		dpkg -s libpcre2-dev >/dev/null 2>&1 || [ "$(id -u)" != 0 ] ||
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpcre2-dev >/dev/null; } ||
			skip "VTest needs libpcre2-dev"
		make -C "$B/vtest" -j2 >"$B/vtest.log" 2>&1 || skip "VTest did not build (see $B/vtest.log)"
	fi
fi
[ -x "$VT" ] || skip "no vtest program at $VT"

# 2. The plain build: the same fetched tree and make line, HAProxy's own
#    pools (build.sh with HAPROXY_PLAIN=1, as make haproxy-demo has it).
HAPROXY_PLAIN=1 "$ROOT/examples/haproxy/build.sh" "$ROOT" >"$B/regtests-build.log" 2>&1 ||
	{ tail -n 5 "$B/regtests-build.log"; skip "the plain build failed"; }
[ -x "$B/haproxy-plain" ] || skip "no plain build (see $B/regtests-build.log)"

# 3. The runs, from the fetched tree (its reg-tests/ and scripts/): plain,
#    shim, and Debian's own binary when it is installed (the package's
#    build line: Lua and the Prometheus exporter too, so more tests run).
BUILDS="plain shim"
[ ! -x /usr/sbin/haproxy ] || BUILDS="$BUILDS debian"
binof() { case $1 in shim) echo "$B/haproxy" ;; plain) echo "$B/haproxy-plain" ;; debian) echo /usr/sbin/haproxy ;; esac; }
# The tests' UNIX sockets live under TMPDIR, whose path must stay well
# under the 108 bytes of sun_path: a short one under /tmp, not build/.
OUT=$B/regtests
rm -rf "$OUT"
mkdir -p "$OUT"
TMPT=$(mktemp -d /tmp/hart.XXXXXX)
# vtest kills a test that runs past its time with its haproxy still up:
# whatever still runs from this TMPDIR is stopped after each run.
reap() { pkill -KILL -f "$TMPT/" 2>/dev/null || true; }
trap 'reap; rm -rf "$TMPT"' EXIT
run() { # run BINARY [TESTS...] > log
	rbin=$1
	shift
	rm -rf "${TMPT:?}"/*
	(cd "$SRC" && env VTEST_PROGRAM="$VT" HAPROXY_PROGRAM="$rbin" TMPDIR="$TMPT" \
		sh scripts/run-regtests.sh --j "$JOBS" "$@" 2>&1) || true
	reap
}
for name in $BUILDS; do
	bin=$(binof "$name")
	echo "make haproxy-regtests: reg-tests/ against the $name build (--j $JOBS)"
	run "$bin" >"$OUT/$name.log"
	grep 'tests failed' "$OUT/$name.log" | sed "s/^/  $name: /" || echo "  $name: no summary line (see $OUT/$name.log)"
done

# 4. Every test that failed in either run, alone, RERUNS times on each build.
logs=$(for name in $BUILDS; do echo "$OUT/$name.log"; done)
# shellcheck disable=SC2086
failed=$(sed -n 's/^#  *top  *TEST \(.*\.vtc\) FAILED.*/\1/p' $logs | sort -u)
[ -n "$failed" ] || { echo "make haproxy-regtests: no test failed in either run"; exit 0; }
echo "make haproxy-regtests: the failed tests, alone, $RERUNS times on each build (passes/runs):"
for t in $failed; do
	line="  $t:"
	for name in $BUILDS; do
		bin=$(binof "$name")
		first=0
		grep -q "TEST $t FAILED" "$OUT/$name.log" && first=1
		pass=0 i=0
		while [ "$i" -lt "$RERUNS" ]; do
			i=$((i + 1))
			run "$bin" "$t" >"$OUT/rerun.log"
			grep -q '^0 tests failed, 0 tests skipped, 1 tests passed' "$OUT/rerun.log" && pass=$((pass + 1))
		done
		line="$line $name $( [ $first = 1 ] && echo failed || echo passed ) in the full run, alone $pass/$RERUNS;"
	done
	echo "$line"
	# The first reason vtest gave, from whichever full run failed it.
	why=$(awk -v t="$t" '$0 == "###### Test case: " t " ######" { on = 1; next }
	    on && /^---- / { print; exit } on && /^###### / { exit }' $logs | head -n 1)
	[ -z "$why" ] || echo "      ($why)"
done
