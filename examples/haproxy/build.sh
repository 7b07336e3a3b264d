#!/bin/sh
# make haproxy: Debian bookworm's HAProxy 2.6 source package, built with its
# pool layer (src/pool.c, include/haproxy/pool.h, pool-t.h) replaced by the
# shim of this directory, every pool served by bufpool (libbufpool.a, linked
# in with all its symbols but the bridge's made local). Result:
# build/haproxy/haproxy. Needs root (apt-get) and the Debian archive; without
# them, one line says what was skipped, and the exit status is 0.
#
#   examples/haproxy/build.sh [REPO_ROOT]
#
# Nothing of HAProxy is kept in this repository: the source is fetched into
# build/haproxy/fetch, copied to build/haproxy/shim, and our three files
# are put in place of HAProxy's there.
set -eu

ROOT=$(cd "${1:-.}" && pwd)
HERE=$ROOT/examples/haproxy
B=$ROOT/build/haproxy
JOBS=${JOBS:-2}
VER=2.6.12

skip() { echo "${HAPROXY_WHAT:-make haproxy}: skipped: $*"; exit "${HAPROXY_SKIP_RC:-0}"; }

[ "$(id -u)" = 0 ] || skip "not root (apt-get source haproxy and the build packages need it)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get (a Debian system is needed for the source package)"
grep -q 'bookworm' /etc/os-release 2>/dev/null || echo "make haproxy: not bookworm: fetching bookworm's haproxy source anyway"

need=""
for p in dpkg-dev gcc make libssl-dev libpcre2-dev; do
	dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
	echo "make haproxy: apt-get install$need (to unpack and build HAProxy)"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null; } ||
		skip "apt-get install$need failed"
fi

mkdir -p "$B"

# 1. The source package, through a private apt configuration holding only a
#    deb-src line for bookworm (the system's sources and lists untouched).
SRC=$B/fetch/haproxy-$VER
if [ ! -f "$SRC/src/haproxy.c" ]; then
	A=$B/apt
	mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$B/fetch"
	echo "deb-src http://deb.debian.org/debian bookworm main" > "$A/sources.list"
	APT="-o Dir::Etc::SourceList=$A/sources.list -o Dir::Etc::SourceParts=/nonexistent \
	     -o Dir::State::Lists=$A/lists -o Dir::Cache=$A/cache -o APT::Sandbox::User=root"
	echo "make haproxy: apt-get source haproxy (bookworm) into $B/fetch"
	# shellcheck disable=SC2086
	apt-get $APT -qq update >/dev/null 2>"$B/apt.log" || skip "apt-get update of the deb-src line failed (see $B/apt.log)"
	# shellcheck disable=SC2086
	( cd "$B/fetch" && apt-get $APT source haproxy >>"$B/apt.log" 2>&1 ) || skip "apt-get source haproxy failed (see $B/apt.log)"
	[ -f "$SRC/src/haproxy.c" ] || skip "apt-get source haproxy gave no haproxy-$VER tree (see $B/apt.log)"
fi

# 2. bufpool behind a bridge: bridge.c (bufpool.h only) and libbufpool.a in
#    one relocatable object, in which only the hbp_* functions stay global.
#    bufpool's create_pool, pool_alloc, pool_head_buffer, b_alloc... are
#    then invisible to HAProxy's own definitions of the same names.
[ -f "$ROOT/build/lib/libbufpool.a" ] || { echo "make haproxy: build/lib/libbufpool.a missing (make lib)"; exit 1; }
CC=${CC:-gcc}
$CC -std=c11 -Wall -Wextra -Werror -O2 -g -fPIC -I"$ROOT/include" -c "$HERE/bridge.c" -o "$B/bridge.o"
ld -r "$B/bridge.o" "$ROOT/build/lib/libbufpool.a" -o "$B/bufpool-all.o"
grep -o 'hbp_[a-z_]*(' "$HERE/bridge.h" | tr -d '(' | sort -u > "$B/bridge.syms"
objcopy --keep-global-symbols="$B/bridge.syms" "$B/bufpool-all.o" "$B/bufpool-shim.o"
rm -f "$B/bufpool-all.o"
extra=$(nm -g --defined-only "$B/bufpool-shim.o" | awk '{print $3}' | grep -v '^hbp_' || true)
[ -z "$extra" ] || { echo "make haproxy: bufpool-shim.o still exports: $extra"; exit 1; }
LIBS=$(cat "$ROOT/build/lib/native-static-libs" 2>/dev/null || echo "-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc")

# 3. The shimmed tree: a copy of the fetched one with our files in place of
#    HAProxy's pool layer. HAProxy's Makefile tracks no header
#    dependencies: when our headers change, everything is rebuilt.
S=$B/shim
if [ ! -f "$S/src/haproxy.c" ]; then
	rm -rf "$S"
	cp -a "$SRC" "$S"
fi
hdrsum=$(cat "$HERE/pool.h" "$HERE/pool-t.h" "$HERE/bridge.h" | cksum)
if [ "$(cat "$S/.shim-headers" 2>/dev/null || true)" != "$hdrsum" ]; then
	cp "$HERE/pool.h" "$HERE/pool-t.h" "$S/include/haproxy/"
	cp "$HERE/bridge.h" "$S/src/"
	make -C "$S" clean >/dev/null 2>&1 || true
	echo "$hdrsum" > "$S/.shim-headers"
fi
cmp -s "$HERE/pool.c" "$S/src/pool.c" || cp "$HERE/pool.c" "$S/src/pool.c"

# Debian's build line, reduced: no Lua, no OpenTracing, no systemd, no
# Prometheus exporter; the same compiler options as Debian's (its default
# DEBUG, -DDEBUG_STRICT -DDEBUG_MEMORY_POOLS, stays).
DBGCF="-g -fstack-protector-strong -Wformat -Werror=format-security -D_FORTIFY_SOURCE=2"
hmake() {
	make -C "$S" TARGET=linux-glibc USE_OPENSSL=1 USE_PCRE2=1 USE_PCRE2_JIT=1 USE_SLZ=1 \
		IGNOREGIT=true VERSION=$VER SUBVERS=-bufpool "DEBUG_CFLAGS=$DBGCF" \
		"ADDLIB=$B/bufpool-shim.o $LIBS" "$@"
}
rm -f "$S/haproxy"
start=$(date +%s)
echo "make haproxy: building HAProxy $VER with the bufpool shim (-j$JOBS; log in $B/build.log)"
# Our pool.c first, alone, with -Werror on HAProxy's -Wall -Wextra (ERR=1).
if [ ! -f "$S/src/pool.o" ] || [ "$S/src/pool.c" -nt "$S/src/pool.o" ]; then
	rm -f "$S/src/pool.o"
	hmake ERR=1 src/pool.o >"$B/build-pool.log" 2>&1 ||
		{ cat "$B/build-pool.log"; echo "make haproxy: the shim's pool.c does not build warning-free"; exit 1; }
fi
if ! hmake -j"$JOBS" ${HAPROXY_GOAL:-haproxy} >"$B/build.log" 2>&1; then
	tail -n 30 "$B/build.log"
	echo "make haproxy: the build failed (whole log: $B/build.log)"
	exit 1
fi
[ -z "${HAPROXY_GOAL:-}" ] || { echo "make haproxy: built $HAPROXY_GOAL only"; exit 0; }
# Through a rename: a running copy (a test, a reg-test left over) keeps its inode.
cp "$S/haproxy" "$B/haproxy.new" && mv -f "$B/haproxy.new" "$B/haproxy"
echo "make haproxy: $B/haproxy built in $(( $(date +%s) - start )) s"
"$B/haproxy" -vv | grep -i bufpool

# 4. With HAPROXY_PLAIN=1 (make haproxy-demo): the same tree without the
#    shim, built with the same line: build/haproxy/haproxy-plain, HAProxy's
#    own pools, to tell the pool layer's effect from the build's.
[ "${HAPROXY_PLAIN:-}" = 1 ] || exit 0
P=$B/plain
[ -f "$P/src/haproxy.c" ] || { rm -rf "$P"; cp -a "$SRC" "$P"; }
if [ ! -x "$P/haproxy" ]; then
	start=$(date +%s)
	echo "make haproxy: building HAProxy $VER unchanged, the same way (log in $B/build-plain.log)"
	make -C "$P" -j"$JOBS" TARGET=linux-glibc USE_OPENSSL=1 USE_PCRE2=1 USE_PCRE2_JIT=1 USE_SLZ=1 \
		IGNOREGIT=true VERSION=$VER SUBVERS=-plain "DEBUG_CFLAGS=$DBGCF" haproxy >"$B/build-plain.log" 2>&1 ||
		{ tail -n 30 "$B/build-plain.log"; echo "make haproxy: the plain build failed"; exit 1; }
	echo "make haproxy: $P/haproxy built in $(( $(date +%s) - start )) s"
fi
cp "$P/haproxy" "$B/haproxy-plain.new" && mv -f "$B/haproxy-plain.new" "$B/haproxy-plain"
