#!/bin/sh
# Tells beforehand what LD_PRELOAD=libbufpool.so will do to a program
# (README: Swapping bufpool in with LD_PRELOAD).
#   usage: tools/preload-check.sh PROGRAM [OLD_LIBRARY]
#   env:   BUFPOOL_SO (default build/lib/libbufpool.so)
# Exit 0: the program imports pool functions from a shared library, and all
#   of those bufpool has: they all go to bufpool.
# Exit 1: it imports none of bufpool's names: they are compiled in (or the
#   program is static), and LD_PRELOAD changes nothing.
# Exit 2: it also calls functions of OLD_LIBRARY that bufpool lacks: those
#   stay the old library's and would get bufpool's pools and objects.
set -u
prog=$1 old=${2:-}
so=${BUFPOOL_SO:-build/lib/libbufpool.so}
tmp=$(mktemp -d) || exit 3
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$so" | awk '{print $NF}' | sort -u > "$tmp/bufpool"
nm -D --undefined-only "$prog" 2>/dev/null | awk '{print $NF}' | sed 's/@.*//' | sort -u > "$tmp/imports"
swapped=$(comm -12 "$tmp/bufpool" "$tmp/imports" | tr '\n' ' ')
if [ -z "$swapped" ]; then
    echo "no-op: $prog imports none of bufpool's functions from a shared library (compiled in, inline, or static): LD_PRELOAD changes nothing"
    exit 1
fi
echo "swapped: $prog calls these through the dynamic linker, bufpool answers them: $swapped"
[ -n "$old" ] || exit 0
nm -D --defined-only "$old" | awk '$2 == "T" || $2 == "W" {print $NF}' | sort -u > "$tmp/old"
kept=$(comm -23 "$tmp/old" "$tmp/bufpool" | tr '\n' ' ')
used=$(comm -23 "$tmp/old" "$tmp/bufpool" | comm -12 - "$tmp/imports" | tr '\n' ' ')
[ -n "$kept" ] && echo "old only: $old also defines, and keeps under LD_PRELOAD: $kept"
if [ -n "$used" ]; then
    echo "mixed: $prog calls $used from $old, which would get bufpool's pools and objects: do not preload it"
    exit 2
fi
exit 0
