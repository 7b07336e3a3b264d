#!/bin/sh
# bench/deps.sh: installs what `make bench` compares with and measures with,
# when it is missing and we are root with apt-get (Debian's packages):
# the peers' development packages, valgrind (callgrind), gnuplot (the
# plot), musl-tools (musl-gcc: the memory part's static musl run) and
# strace (the limit part's system calls). Not root: nothing; bench/run.sh,
# bench/memory.sh and bench/limit.sh name what they skipped, in one line.
# apt-get install is retried once after an apt-get update.

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing="" why=""
need() { missing="$missing $1"; why="$why
bench: installing $1 for $2"; }
have_pkg libjemalloc-dev || need libjemalloc-dev "the jemalloc peer"
have_pkg libmimalloc-dev || need libmimalloc-dev "the mimalloc peer"
have_pkg libgoogle-perftools-dev || need libgoogle-perftools-dev "the tcmalloc peer"
command -v valgrind >/dev/null 2>&1 || need valgrind "callgrind's instruction counts"
command -v gnuplot >/dev/null 2>&1 || need gnuplot-nox "the plot"
command -v "${MUSLCC:-musl-gcc}" >/dev/null 2>&1 || need musl-tools "the memory part's static musl run"
command -v strace >/dev/null 2>&1 || need strace "the limit part's system calls"

[ -n "$missing" ] || exit 0
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || exit 0
echo "${why#?}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $missing >/dev/null 2>&1; } ||
    echo "bench: apt-get install$missing failed: those peers or tools are skipped"
exit 0
