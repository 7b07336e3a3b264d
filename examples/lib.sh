# examples/lib.sh: the shell helpers the examples' tests and demos share
# (relay/test-relay.sh, relay/demo.sh, haproxy/test.sh, haproxy/demo.sh).
# Sourced by bash; defines functions and two arrays, runs nothing.
#
# The caller sets T (its scratch directory) before `trap cleanup EXIT`, and
# appends to PIDS every process it starts in the background.

PIDS=()
PASS=0
FAIL=0

# At exit: the background processes stopped and reaped, T removed (kept,
# and said, when KEEP is set).
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}

# Checks: ok NAME, bad NAME [FILE] (FILE's last BAD_TAIL lines shown),
# check NAME EXPR [FILE] (EXPR evaluated: ok when it holds, else bad).
ok()   { PASS=$((PASS + 1)); echo "  ok   $1"; }
bad()  { FAIL=$((FAIL + 1)); echo "  FAIL $1"; [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/       | /' "$2" | tail -"${BAD_TAIL:-15}"; }
check() { if eval "$2"; then ok "$1"; else bad "$1" "${3:-}"; fi; }

# wait_for TIMEOUT CMD...: polls CMD until it succeeds (0), or 1 after
# TIMEOUT seconds. A poll of a state, not a wait standing for one.
wait_for() {
    local timeout=$1; shift
    local end=$((SECONDS + timeout))
    until "$@"; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.05
    done
}
alive() { kill -0 "$1" 2>/dev/null; }
listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q LISTEN; }
# free_port FROM: the first TCP port from FROM on that nothing listens on
free_port() {
    local p=$1
    while listening "$p"; do p=$((p + 1)); done
    echo "$p"
}
# A process's figures: CPU (utime + stime, clock ticks), RSS and peak RSS (KiB)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# need_packages WHAT WHY PACKAGE...: installs the Debian packages given
# (the names of those missing), as root, with one `apt-get update` only if
# the first try fails, and stops the services the packages started (ours
# listen on 127.0.0.1). Returns 1, after one line "WHAT: skipped: ...",
# when they cannot be installed.
need_packages() {
    local what=$1 why=$2; shift 2
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$what: skipped: needs $* (apt-get install $*, as root)"
        return 1
    fi
    echo "$what: apt-get install $* ($why)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; }; } ||
        { echo "$what: skipped: apt-get install $* failed"; return 1; }
    local svc
    for svc in nginx haproxy; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" >/dev/null 2>&1
        elif command -v invoke-rc.d >/dev/null 2>&1; then
            invoke-rc.d "$svc" stop >/dev/null 2>&1
        fi
    done
    return 0
}

# nginx_conf_head WORKER_CONNECTIONS: the first lines of an nginx.conf for
# a demo, up to inside its http block (the caller adds its own server
# block and the closing brace): one worker in the foreground, everything
# under T, no access log, keep-alive for ever; NOFILE its fd limit.
nginx_conf_head() {
    cat <<EOF
worker_processes 1;
daemon off;
master_process off;
error_log $T/nginx-error.log;
pid $T/nginx.pid;
worker_rlimit_nofile $NOFILE;
events { worker_connections $1; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $T/tmp/body;
    proxy_temp_path $T/tmp/proxy;
    fastcgi_temp_path $T/tmp/fastcgi;
    uwsgi_temp_path $T/tmp/uwsgi;
    scgi_temp_path $T/tmp/scgi;
    default_type application/octet-stream;
EOF
}
