#!/bin/sh
# Tells beforehand what LD_PRELOAD=libbufpool.so will do to a program
# (README: Swapping bufpool in with LD_PRELOAD). `make install` installs it
# as $(bindir)/bufpool-preload-check.
#   usage: preload-check.sh PROGRAM [OLD_LIBRARY]
#   PROGRAM without a slash that is not a file here is looked up in PATH.
#   The bufpool library compared with, the first found of:
#     $BUFPOOL_SO (when set, it must exist);
#     the clone's build/lib (this script's directory/../build/lib), or, for
#     the installed copy, the libdir `make install` wrote into it (below);
#     $(pkg-config --variable=libdir bufpool)/libbufpool.so.
# Exit 0: the program imports pool functions from a shared library, and all
#   of those bufpool has: they all go to bufpool.
# Exit 1: it imports none of bufpool's names: they are compiled in (or the
#   program is static), and LD_PRELOAD changes nothing.
# Exit 2: it also calls functions of OLD_LIBRARY that bufpool lacks: those
#   stay the old library's and would get bufpool's pools and objects.
# Exit 3: no bufpool library found: no verdict (one line on stderr).
# Exit 4: usage, or PROGRAM or OLD_LIBRARY not found or not readable by
#   nm: no verdict (one line on stderr).
set -u
me=$(basename "$0")
# make install replaces this line with the installed libdir.
installed_libdir=
die() { code=$1; shift; echo "$me: $*" >&2; exit "$code"; }
[ $# -ge 1 ] && [ $# -le 2 ] || die 4 "usage: $me PROGRAM [OLD_LIBRARY]"
prog=$1 old=${2:-}
case $prog in
    */*) ;;
    *) [ -e "$prog" ] || prog=$(command -v "$prog" 2>/dev/null) || die 4 "$1: not found (neither a file here nor a command in PATH)";;
esac
[ -r "$prog" ] || die 4 "$prog: not found or not readable"
[ -z "$old" ] || [ -r "$old" ] || die 4 "$old: not found or not readable"

# The first libbufpool.so (or libbufpool.so.N, a runtime-only install) in a directory.
in_dir() {
    [ -n "$1" ] || return 1
    for f in "$1/libbufpool.so" "$1"/libbufpool.so.[0-9]*; do
        [ -e "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}
# The installed copy looks in its libdir, the clone's in its build/lib.
[ -n "$installed_libdir" ] && dir=$installed_libdir || dir=$(cd "$(dirname "$0")/.." && pwd)/build/lib
if [ -n "${BUFPOOL_SO:-}" ]; then
    so=$BUFPOOL_SO
    [ -e "$so" ] || die 3 "BUFPOOL_SO=$so: no such file"
elif so=$(in_dir "$dir"); then :
elif so=$(in_dir "$(pkg-config --variable=libdir bufpool 2>/dev/null)"); then :
else
    die 3 "libbufpool.so not found (not in $dir, and pkg-config knows no bufpool): run make, or make install, or set BUFPOOL_SO"
fi

tmp=$(mktemp -d) || die 4 "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$so" 2> "$tmp/err" | awk '{print $NF}' | sort -u > "$tmp/bufpool"
[ -s "$tmp/bufpool" ] || die 3 "$so: no dynamic symbols ($(head -n 1 "$tmp/err"))"
# A static program has no dynamic symbols: nm says so, and that is a verdict (no-op).
nm -D --undefined-only "$prog" > "$tmp/nm" 2> "$tmp/err" ||
    grep -q -i "no symbols" "$tmp/err" || die 4 "$prog: nm cannot read it ($(head -n 1 "$tmp/err"))"
awk '{print $NF}' "$tmp/nm" | sed 's/@.*//' | sort -u > "$tmp/imports"
swapped=$(comm -12 "$tmp/bufpool" "$tmp/imports" | tr '\n' ' ')
if [ -z "$swapped" ]; then
    echo "no-op: $prog imports none of bufpool's functions from a shared library (compiled in, inline, or static): LD_PRELOAD changes nothing"
    exit 1
fi
echo "swapped: $prog calls these through the dynamic linker, bufpool answers them: $swapped"
[ -n "$old" ] || exit 0
nm -D --defined-only "$old" 2> "$tmp/err" | awk '$2 == "T" || $2 == "W" {print $NF}' | sort -u > "$tmp/old"
[ -s "$tmp/old" ] || die 4 "$old: no functions in its dynamic symbol table ($(head -n 1 "$tmp/err"))"
kept=$(comm -23 "$tmp/old" "$tmp/bufpool" | tr '\n' ' ')
used=$(comm -23 "$tmp/old" "$tmp/bufpool" | comm -12 - "$tmp/imports" | tr '\n' ' ')
[ -n "$kept" ] && echo "old only: $old also defines, and keeps under LD_PRELOAD: $kept"
if [ -n "$used" ]; then
    echo "mixed: $prog calls $used from $old, which would get bufpool's pools and objects: do not preload it"
    exit 2
fi
exit 0
