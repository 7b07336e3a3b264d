#!/bin/sh
# tools/bench-readme.sh DIR   (make bench-readme, after a make bench into DIR)
#
# Refreshes the README's benchmark figures from a finished run: copies
# DIR/bench.png and DIR/memory.png to docs/, and replaces the text between
# the README's markers "<!-- bench:tables -->" and "<!-- /bench:tables -->"
# with DIR/table.md (the speed, memory and limit tables of that run, each
# carrying its date). `make bench` alone never writes outside build/.
set -eu
dir=${1:-build/bench}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
for f in table.md bench.png memory.png; do
    [ -s "$dir/$f" ] || { echo "bench-readme: $dir/$f is missing: run 'make bench' first" >&2; exit 1; }
done
grep -q '^<!-- bench:tables -->$' README.md && grep -q '^<!-- /bench:tables -->$' README.md ||
    { echo "bench-readme: README.md lacks the <!-- bench:tables --> ... <!-- /bench:tables --> markers" >&2; exit 1; }
cp "$dir/bench.png" docs/bench.png
cp "$dir/memory.png" docs/memory.png
tables="$dir/table.md"
if [ -s "$dir/limit.md" ]; then
    tables="$dir/readme-tables.md"
    { cat "$dir/table.md"; echo; cat "$dir/limit.md"; } >"$tables"
fi
stamp=$(date -u -r "$dir/table.md" '+%Y-%m-%d %H:%M UTC')
awk -v tables="$tables" -v stamp="$stamp" '
    $0 == "<!-- bench:tables -->" { print; print ""
        printf "Measured %s with `make bench` (then `make bench-readme`) on this 2-core shared VM. Speed: thread CPU time medians; in parentheses, the peer relative to bufpool.so (above 1: the peer is faster).\n\n", stamp
        while ((getline l < tables) > 0) print l; print ""; skip = 1; next }
    $0 == "<!-- /bench:tables -->" { skip = 0 }
    !skip' README.md >README.md.new
mv README.md.new README.md
echo "bench-readme: docs/bench.png, docs/memory.png and README.md's tables refreshed from $dir (review with git diff)"
