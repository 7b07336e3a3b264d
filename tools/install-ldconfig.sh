#!/bin/sh
# The last step of `make install` and `make uninstall`: keep the dynamic
# linker's cache in step with libbufpool.so.MAJOR.
#   usage: tools/install-ldconfig.sh install|uninstall LIBDIR SONAME
#   env:   DESTDIR (staged install: nothing is run), LDCONFIG (default ldconfig)
# - DESTDIR set: skipped, as packagers expect (the package's own scripts run
#   ldconfig on the target system).
# - LIBDIR is one of the dynamic linker's directories (/usr/lib,
#   /usr/local/lib on most distributions: `ldconfig -v` lists them) and we
#   are root: ldconfig runs, and programs linked with -lbufpool start.
# - Otherwise nothing is run, and one note says how to make programs start.
set -u
action=$1 libdir=$2 soname=$3
LDCONFIG=${LDCONFIG:-ldconfig}
command -v "$LDCONFIG" >/dev/null 2>&1 || LDCONFIG=/sbin/ldconfig

if [ -n "${DESTDIR:-}" ]; then
    echo "ldconfig: not run (DESTDIR is set: run it on the system the files end up on)"
    exit 0
fi
real=$(readlink -f "$libdir" 2>/dev/null || echo "$libdir")
system=0
for d in $("$LDCONFIG" -v -N -X 2>/dev/null | sed -n 's|^\(/[^:]*\):.*|\1|p'); do
    [ "$(readlink -f "$d" 2>/dev/null || echo "$d")" = "$real" ] && system=1
done
if [ $system = 1 ] && [ "$(id -u)" = 0 ]; then
    echo "$LDCONFIG"
    "$LDCONFIG" || { echo "ldconfig failed"; exit 1; }
elif [ "$action" = uninstall ]; then
    [ $system = 1 ] && echo "note: run ldconfig as root to drop $soname from the dynamic linker's cache"
elif [ $system = 1 ]; then
    echo "note: run ldconfig as root, or programs linked with -lbufpool will not find $soname until then"
else
    echo "note: $libdir is not searched by the dynamic linker: a program linked with -lbufpool will not start"
    echo "      ($soname not found) unless linked with -Wl,-rpath,$libdir, run with LD_LIBRARY_PATH=$libdir,"
    echo "      or $libdir is added to /etc/ld.so.conf.d/ and ldconfig run as root (README: Installing)"
fi
exit 0
