#!/bin/sh
# make test-install: make install into temporary prefixes, then C programs
# built through pkg-config against what was installed, and run:
#  1. ldconfig runs when installing as root into a directory of the dynamic
#     linker, not into any other, never under DESTDIR (a stand-in ldconfig
#     records its calls and names the prefix as a linker directory or not);
#  2. the installed .so and .a carry no debug info; build/lib keeps it; the
#     .so keeps its symbol table (nm names pool_alloc) and names its debug
#     file in .gnu_debuglink, installed in $libdir/.debug, where gdb finds
#     it (file and line of pool_alloc, when gdb is installed);
#  3. pkg-config --modversion is Cargo.toml's version; the soname file exists;
#  4. shared: `pkg-config --cflags --libs`, run with LD_LIBRARY_PATH (the
#     installed library is the one loaded) and with -Wl,-rpath;
#  5. static: `gcc -static ... pkg-config --static --libs`: links without a
#     warning (no getaddrinfo, getpwuid_r), no dynamic section, runs;
#  6. static bufpool, dynamic libc: -Wl,-Bstatic -lbufpool -Wl,-Bdynamic and
#     the pc's staticlibs: no libbufpool.so needed, runs;
#  7. the version check: the program compares bufpool_version() with the
#     header's BUFPOOL_VERSION; built against a header saying 9.9.9 it must
#     refuse to run (exit 2);
#  8. bufpool-preload-check, installed in $bindir, run from / with no
#     pkg-config path: finds the installed library, says a program built
#     against it is swapped (exit 0); tools/preload-check.sh of the clone,
#     run from /, finds build/lib; a copy away from both exits 3 with one
#     line;
#  9. make uninstall leaves no bufpool file behind.
# Run from the repository root (make test-install sets VERSION and SOMAJOR).
set -u
CC=${CC:-gcc}
MAKE=${MAKE:-make}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
: "${VERSION:?run through make test-install}" "${SOMAJOR:?run through make test-install}"
CW="-std=c11 -Wall -Wextra -Werror -O2"
repo=$(pwd)
t=$repo/build/itest
rm -rf "$t"; mkdir -p "$t"
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fail=1; }

if ! command -v "$PKG_CONFIG" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test-install: installing pkg-config (programs are built through it)"
        apt-get install -y -q pkg-config >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q pkg-config >/dev/null 2>&1; }
    fi
    command -v "$PKG_CONFIG" >/dev/null 2>&1 || { echo "test-install: skipped, $PKG_CONFIG not found (apt-get install pkg-config)"; exit 0; }
fi

# A stand-in for ldconfig: logs each call; `-v` names $FAKE_SYSTEM_DIR as a linker directory.
cat > "$t/ldconfig" <<'SH'
#!/bin/sh
echo "call:$*" >> "$FAKE_LOG"
[ "${1:-}" = -v ] && [ -n "${FAKE_SYSTEM_DIR:-}" ] && echo "$FAKE_SYSTEM_DIR: (from the test)"
exit 0
SH
chmod +x "$t/ldconfig"
inst() { # log system_dir make-args...
    log=$1 sys=$2; shift 2
    FAKE_LOG=$log FAKE_SYSTEM_DIR=$sys $MAKE --no-print-directory -s install LDCONFIG="$t/ldconfig" "$@" > "$log.out" 2>&1 ||
        { bad "make install $*"; cat "$log.out"; }
    touch "$log"
}

echo "install:"
root=0; [ "$(id -u)" = 0 ] && root=1
inst "$t/sys.log" "$t/sys/lib" PREFIX="$t/sys"
if [ $root = 1 ]; then
    grep -qx "call:" "$t/sys.log" && ok "root, prefix among the linker's directories: ldconfig ran" || bad "ldconfig not run for a system prefix: $(cat "$t/sys.log")"
else
    ! grep -qx "call:" "$t/sys.log" && grep -q "run ldconfig as root" "$t/sys.log.out" && ok "not root: ldconfig not run, the note says to run it" || bad "non-root install: $(cat "$t/sys.log.out")"
fi
p=$t/prefix
inst "$t/other.log" "" PREFIX="$p"
! grep -qx "call:" "$t/other.log" && grep -q "is not searched by the dynamic linker" "$t/other.log.out" &&
    ok "prefix outside the linker's directories: ldconfig not run, the note names rpath, LD_LIBRARY_PATH, ld.so.conf.d" || bad "other prefix: $(cat "$t/other.log" "$t/other.log.out")"
inst "$t/destdir.log" "/usr/lib" DESTDIR="$t/stage" PREFIX=/usr
[ ! -s "$t/destdir.log" ] && [ -f "$t/stage/usr/lib/libbufpool.so.$VERSION" ] && grep -qx "prefix=/usr" "$t/stage/usr/lib/pkgconfig/bufpool.pc" &&
    ok "DESTDIR: staged under DESTDIR with prefix /usr, ldconfig not called" || bad "DESTDIR: ldconfig log: $(cat "$t/destdir.log")"

dbg() { readelf -S "$1" 2>/dev/null | grep -c '\.debug_info'; }
so=$p/lib/libbufpool.so.$VERSION
if [ "$(dbg "$so")" = 0 ] && [ "$(dbg "$p/lib/libbufpool.a")" = 0 ] && [ "$(dbg "build/lib/libbufpool.so.$VERSION")" != 0 ] && [ "$(dbg build/lib/libbufpool.a)" != 0 ]; then
    ok "installed without debug info: .so $(du -k "$so" | cut -f1) KiB (build/lib: $(du -kL "build/lib/libbufpool.so.$VERSION" | cut -f1)), .a $(du -k "$p/lib/libbufpool.a" | cut -f1) KiB (build/lib: $(du -k build/lib/libbufpool.a | cut -f1))"
else bad "debug info: installed .so $(dbg "$so") .a $(dbg "$p/lib/libbufpool.a") sections, build/lib .so $(dbg "build/lib/libbufpool.so.$VERSION")"; fi
nm "$so" 2>&1 | grep -q ' T pool_alloc$' && ok "the installed .so keeps its symbol table: nm names pool_alloc" || bad "no symbol table in $so: $(nm "$so" 2>&1 | head -n 1)"
link=$(objcopy --dump-section .gnu_debuglink="$t/debuglink" "$so" /dev/null 2>&1 && tr '\0' '\n' < "$t/debuglink" | head -n 1)
dfile=$p/lib/.debug/libbufpool.so.$VERSION.debug
if [ "$link" = "libbufpool.so.$VERSION.debug" ] && [ "$(dbg "$dfile")" != 0 ]; then
    ok ".gnu_debuglink names $link, installed with its debug info in $p/lib/.debug ($(du -k "$dfile" | cut -f1) KiB)"
    if command -v gdb >/dev/null 2>&1; then
        line=$(gdb -nx -batch -ex 'info line pool_alloc' "$so" 2>&1 | tail -n 1)
        case $line in "Line "[0-9]*" of "*) ok "gdb finds it: $(echo "$line" | cut -c1-90)...";; *) bad "gdb: no line for pool_alloc: $line";; esac
    else echo "  skipped gdb's look-up: gdb not installed"; fi
else bad "debug link: .gnu_debuglink '$link', $dfile: $(dbg "$dfile") .debug_info sections"; fi

export PKG_CONFIG_PATH="$p/lib/pkgconfig"
mv=$($PKG_CONFIG --modversion bufpool)
[ "$mv" = "$VERSION" ] && [ -L "$p/lib/libbufpool.so.$SOMAJOR" ] && ok "pkg-config --modversion bufpool: $mv (Cargo.toml), libbufpool.so.$SOMAJOR installed" || bad "modversion '$mv', want '$VERSION'"

echo "shared, through pkg-config:"
# shellcheck disable=SC2046
$CC $CW c_tests/install/app.c $($PKG_CONFIG --cflags --libs bufpool) -o "$t/app_shared" || bad "shared link"
if readelf -d "$t/app_shared" | grep -q "NEEDED.*libbufpool.so.$SOMAJOR"; then
    o=$(LD_LIBRARY_PATH=$p/lib "$t/app_shared") && ok "LD_LIBRARY_PATH=$p/lib: $o" || bad "shared run: $o"
    LD_LIBRARY_PATH=$p/lib ldd "$t/app_shared" | grep -q "libbufpool.so.$SOMAJOR => $p/lib/" && ok "the installed libbufpool.so.$SOMAJOR is the one loaded" || bad "ldd: $(LD_LIBRARY_PATH=$p/lib ldd "$t/app_shared")"
else bad "app_shared does not need libbufpool.so.$SOMAJOR"; fi
# shellcheck disable=SC2046
$CC $CW c_tests/install/app.c $($PKG_CONFIG --cflags --libs bufpool) -Wl,-rpath,"$($PKG_CONFIG --variable=libdir bufpool)" -o "$t/app_rpath" &&
    o=$(env -u LD_LIBRARY_PATH "$t/app_rpath") && ok "-Wl,-rpath,\$(pkg-config --variable=libdir bufpool): runs with no environment" || bad "rpath run: $o"

echo "bufpool-preload-check:"
none=$t/no-pc
mkdir -p "$none" "$t/lone"
o=$(cd / && env -u BUFPOOL_SO PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR="$none" "$p/bin/bufpool-preload-check" "$t/app_shared" 2>&1); rc=$?
[ $rc = 0 ] && case $o in "swapped: "*pool_free*) true;; *) false;; esac &&
    ok "the installed one, run from / with no pkg-config path, reads $p/lib: app_shared swapped (exit 0)" || bad "installed bufpool-preload-check: exit $rc: $o"
o=$(cd / && env -u BUFPOOL_SO PKG_CONFIG_LIBDIR="$none" "$repo/tools/preload-check.sh" "$t/app_shared" 2>&1); rc=$?
[ $rc = 0 ] && case $o in "swapped: "*pool_free*) true;; *) false;; esac &&
    ok "tools/preload-check.sh run from / reads the clone's build/lib (exit 0)" || bad "tools/preload-check.sh from /: exit $rc: $o"
cp tools/preload-check.sh "$t/lone/"
o=$(cd / && env -u BUFPOOL_SO PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR="$none" "$t/lone/preload-check.sh" "$t/app_shared" 2>&1 >/dev/null); rc=$?
[ $rc = 3 ] && [ "$(echo "$o" | wc -l)" = 1 ] && case $o in *"libbufpool.so not found"*) true;; *) false;; esac &&
    ok "a copy with no library to read exits 3: $o" || bad "no library: exit $rc: $o"

echo "static, through pkg-config:"
# shellcheck disable=SC2046
if $CC $CW -static c_tests/install/app.c $($PKG_CONFIG --static --cflags --libs bufpool) -o "$t/app_static" > "$t/static.log" 2>&1; then
    if [ -s "$t/static.log" ]; then bad "gcc -static warns: $(cat "$t/static.log")"; else ok "gcc -static \$(pkg-config --static --cflags --libs bufpool): no warning ($($PKG_CONFIG --static --libs bufpool))"; fi
    readelf -d "$t/app_static" 2>&1 | grep -q "no dynamic section" || bad "app_static has a dynamic section"
    o=$("$t/app_static") && ok "static program runs: $o" || bad "static run: $o"
elif grep -q "cannot find -lc" "$t/static.log"; then
    echo "  skipped gcc -static: no static C library (apt-get install libc6-dev)"
else bad "gcc -static: $(cat "$t/static.log")"; fi
# shellcheck disable=SC2046
if $CC $CW c_tests/install/app.c $($PKG_CONFIG --cflags --libs-only-L bufpool) -Wl,-Bstatic -lbufpool -Wl,-Bdynamic \
    $($PKG_CONFIG --variable=staticlibs bufpool) -o "$t/app_mixed" > "$t/mixed.log" 2>&1 && [ ! -s "$t/mixed.log" ]; then
    if readelf -d "$t/app_mixed" | grep -q "NEEDED.*libbufpool"; then bad "app_mixed still needs libbufpool.so"
    else o=$(env -u LD_LIBRARY_PATH "$t/app_mixed") && ok "-Wl,-Bstatic -lbufpool -Wl,-Bdynamic \$(pkg-config --variable=staticlibs bufpool): libc shared, bufpool inside, runs" || bad "mixed run: $o"; fi
else bad "mixed link: $(cat "$t/mixed.log")"; fi

echo "version check:"
mkdir -p "$t/badhdr"
sed 's/^#define BUFPOOL_VERSION ".*"/#define BUFPOOL_VERSION "9.9.9"/' "$p/include/bufpool.h" > "$t/badhdr/bufpool.h"
$CC $CW -I"$t/badhdr" c_tests/install/app.c -L"$p/lib" -Wl,-rpath,"$p/lib" -lbufpool -o "$t/app_badhdr" || bad "badhdr build"
"$t/app_badhdr" > /dev/null 2> "$t/badhdr.err"; rc=$?
[ $rc = 2 ] && grep -q "version mismatch: header 9.9.9, library $VERSION" "$t/badhdr.err" &&
    ok "a program built with another header's version refuses to run: $(cat "$t/badhdr.err")" || bad "mismatch not caught: exit $rc $(cat "$t/badhdr.err")"

echo "uninstall:"
FAKE_LOG=$t/un.log $MAKE --no-print-directory -s uninstall PREFIX="$p" LDCONFIG="$t/ldconfig" > /dev/null 2>&1 || bad "make uninstall"
left=$(find "$p" -name '*bufpool*')
[ -z "$left" ] && [ ! -d "$p/lib/.debug" ] && ok "make uninstall: no bufpool file left in $p" || bad "left after uninstall: $left"

[ $fail = 0 ] && echo "test-install: all passed"
exit $fail
