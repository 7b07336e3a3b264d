#!/usr/bin/env bash
# make haproxy-demo: HAProxy 2.6 with its pools served by bufpool (make
# haproxy) beside the same source built the same way with HAProxy's own
# pools ("plain": the pool layer's effect alone) and stock Debian HAProxy
# 2.6 (apt-get install haproxy: Debian's full build), the same
# configuration, nginx behind, wrk in front, on 127.0.0.1. For each
# connection count, rounds interleave the three (the order rotates each
# round),
# each run a fresh process: req/s, p99, CPU per request (utime + stime of
# the HAProxy process over the requests wrk completed), peak RSS (VmHWM);
# medians of the rounds, then the ratios bufpool/plain and bufpool/stock.
# Needs root (apt-get: nginx, wrk, haproxy) or prints one line saying what
# it skipped. Then h2load (HTTP/2, prior knowledge) at 2000 connections,
# 20 requests each; then a burst of 2000 slow 1 MiB downloads (slowread.c:
# 16 KiB per connection every 50 ms) and the RSS at its peak, 2 s and 10 s
# after the last one ended, the shim also with BUFPOOL_MAINTENANCE=thread.
# Usage: demo.sh [REPO_ROOT]; DEMO_SECONDS (5), DEMO_ROUNDS (3),
# DEMO_CONNS ("50 500"), DEMO_PATH (/size/1024), DEMO_THREADS (1),
# DEMO_H2_CONNS (2000, 0: none), DEMO_H2_REQUESTS (20 per connection),
# DEMO_SLOW_CONNS (2000, 0: none).
set -u
ROOT=$(cd "${1:-.}" && pwd)
HERE=$ROOT/examples/haproxy
SHIM=$ROOT/build/haproxy/haproxy
PLAIN=$ROOT/build/haproxy/haproxy-plain
SECS=${DEMO_SECONDS:-5}
ROUNDS=${DEMO_ROUNDS:-3}
CONNS_LIST=${DEMO_CONNS:-50 500}
DPATH=${DEMO_PATH:-/size/1024}
NBT=${DEMO_THREADS:-1}
H2CONNS=${DEMO_H2_CONNS:-2000}
H2REQS=${DEMO_H2_REQUESTS:-20}
SLOWN=${DEMO_SLOW_CONNS:-2000}

HAPROXY_WHAT=haproxy-demo HAPROXY_SKIP_RC=77 HAPROXY_PLAIN=1 "$HERE/build.sh" "$ROOT" > /tmp/haproxy-demo-build.$$ 2>&1
rc=$?
if [ $rc = 77 ]; then cat /tmp/haproxy-demo-build.$$; rm -f /tmp/haproxy-demo-build.$$; exit 0; fi
[ $rc = 0 ] && [ -x "$SHIM" ] && [ -x "$PLAIN" ] || { cat /tmp/haproxy-demo-build.$$; rm -f /tmp/haproxy-demo-build.$$; echo "haproxy-demo: make haproxy failed"; exit 1; }
rm -f /tmp/haproxy-demo-build.$$
[ -x "$ROOT/build/relay/backend" ] || { echo "haproxy-demo: build/relay/backend missing (make examples)"; exit 1; }

export PATH="$PATH:/usr/sbin"
# shellcheck source=../lib.sh
. "$ROOT/examples/lib.sh"
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
need_packages haproxy-demo "the backend, the client, stock HAProxy" "${need[@]}" || exit 0
STOCK=/usr/sbin/haproxy
for t in nginx wrk h2load; do command -v $t >/dev/null 2>&1 || { echo "haproxy-demo: skipped: no $t"; exit 0; }; done
[ -x "$STOCK" ] || { echo "haproxy-demo: skipped: no stock haproxy"; exit 0; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
HZ=$(getconf CLK_TCK)
T=$(mktemp -d /tmp/haproxy-demo.XXXXXX)
trap cleanup EXIT


# nginx, one worker, static files of the backend's pattern.
NPORT=$(free_port 18181)
mkdir -p "$T/www/size" "$T/tmp"
n=${DPATH##*/}
"$ROOT/build/relay/backend" --body "$n" > "$T/www/size/$n"
"$ROOT/build/relay/backend" --body 1048576 > "$T/www/size/1048576"
gcc -std=c11 -Wall -Wextra -Werror -O2 -D_GNU_SOURCE "$HERE/slowread.c" -o "$T/slowread" || { echo "haproxy-demo: slowread.c does not build"; exit 1; }
{ nginx_conf_head 16384; cat <<EOF
    server { listen 127.0.0.1:$NPORT; root $T/www; }
}
EOF
} > "$T/nginx.conf"
nginx -c "$T/nginx.conf" &
PIDS+=($!)
wait_for 10 listening "$NPORT" || { echo "haproxy-demo: nginx did not start"; cat "$T/nginx-error.log"; exit 1; }

HPORT=$(free_port 18190)
cat > "$T/haproxy.cfg" <<EOF
global
    nbthread $NBT
    maxconn 20000
    ulimit-n $NOFILE
    no strict-limits
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HPORT
    default_backend be
backend be
    server nginx 127.0.0.1:$NPORT
EOF
"$SHIM" -c -q -f "$T/haproxy.cfg" && "$PLAIN" -c -q -f "$T/haproxy.cfg" && "$STOCK" -c -q -f "$T/haproxy.cfg" || { echo "haproxy-demo: the configuration does not load"; exit 1; }

# run BIN CONNS: one fresh HAProxy under wrk; prints "rps p99_ms cpu_us_per_req hwm_kib errors"
run() {
    local bin=$1 conns=$2 pid t0 t1 reqs rps p99 errs hwm
    "$bin" -db -f "$T/haproxy.cfg" > "$T/h.log" 2>&1 &
    pid=$!
    wait_for 10 listening "$HPORT" || { echo "haproxy-demo: $bin did not start" >&2; cat "$T/h.log" >&2; exit 1; }
    t0=$(cpu_ticks "$pid")
    wrk -t2 -c"$conns" -d"${SECS}s" --latency --timeout 5s "http://127.0.0.1:$HPORT$DPATH" > "$T/wrk.out" 2>&1
    t1=$(cpu_ticks "$pid")
    hwm=$(hwm_kb "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    wait_for 10 eval "! listening $HPORT"
    reqs=$(awk '/requests in/ {print $1}' "$T/wrk.out")
    rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$T/wrk.out")
    p99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        printf "%.3f", (u == "us" ? v / 1000 : (u == "s" ? v * 1000 : v)) }' "$T/wrk.out")
    errs=$(awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' "$T/wrk.out")
    echo "${rps:-0} ${p99:-0} $(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="${reqs:-0}" 'BEGIN { printf "%.2f", r ? t * 1e6 / hz / r : 0 }') $hwm $errs"
}
# run_h2 BIN: one fresh HAProxy under h2load; prints
# "rps mean_ms p99_ms cpu_us_per_req hwm_kib failed" (h2load prints no
# percentile: the p99 comes from its per-request log, --log-file)
run_h2() {
    local bin=$1 pid t0 t1 hwm
    "$bin" -db -f "$T/haproxy.cfg" > "$T/h.log" 2>&1 &
    pid=$!
    wait_for 10 listening "$HPORT" || { echo "haproxy-demo: $bin did not start" >&2; cat "$T/h.log" >&2; exit 1; }
    t0=$(cpu_ticks "$pid")
    h2load -t2 -c"$H2CONNS" -m1 -n$((H2CONNS * H2REQS)) --log-file="$T/h2.lat" "http://127.0.0.1:$HPORT$DPATH" > "$T/h2.out" 2>&1
    t1=$(cpu_ticks "$pid")
    hwm=$(hwm_kb "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    wait_for 10 eval "! listening $HPORT"
    local p99
    p99=$(cut -f3 "$T/h2.lat" | sort -n | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; printf "%.3f", NR ? v[i] / 1000 : 0 }')
    rm -f "$T/h2.lat"
    awk -v t=$((t1 - t0)) -v hz="$HZ" -v hwm="$hwm" -v p99="$p99" '
        function ms(x,  u) { u = x; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", x); return u == "us" ? x / 1000 : (u == "s" ? x * 1000 : x) }
        /^finished in/ { rps = $4 + 0 }
        /^requests:/ { done = $8; failed = $10 + $12 + $14 }
        /^time for request:/ { mean = ms($6) }
        END { printf "%.0f %.3f %.3f %.2f %s %d\n", rps, mean, p99, done ? t * 1e6 / hz / done : 0, hwm, failed }' "$T/h2.out"
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "haproxy-demo: $("$SHIM" -v | head -1 | sed 's/ - https.*//') (pools on bufpool), $("$PLAIN" -v | head -1 | sed 's/ - https.*//') (the same build, HAProxy's pools),"
echo "  stock $("$STOCK" -v | head -1 | sed 's/ - https.*//') (Debian's build: Lua, Prometheus, OpenTracing, systemd in)"
echo "  nginx $(nginx -v 2>&1 | sed 's/.*\///') behind (1 worker), wrk $(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p') -t2 in front, GET $DPATH, keep-alive,"
echo "  nbthread $NBT, $ROUNDS interleaved rounds of ${SECS}s (the order rotating), a fresh process per run; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  (a shared 2-core machine: wrk, nginx and HAProxy share the cores with other work; figures are noisy)"

WHO=(shim plain stock)
label() { case $1 in shim) echo "bufpool (shim)";; plain) echo "plain (same build)";; stock) echo "stock Debian";; esac; }
binof() { case $1 in shim) echo "$SHIM";; plain) echo "$PLAIN";; stock) echo "$STOCK";; esac; }
for conns in $CONNS_LIST; do
    for who in "${WHO[@]}"; do : > "$T/$who.$conns"; done
    for r in $(seq 0 $((ROUNDS - 1))); do
        for k in 0 1 2; do
            who=${WHO[$(( (r + k) % 3 ))]}
            run "$(binof $who)" "$conns" >> "$T/$who.$conns"
        done
    done
    echo
    echo "== wrk -c$conns: medians of $ROUNDS rounds (each round's figures under them)"
    printf '  %-24s %10s %10s %14s %14s %8s\n' "" "req/s" "p99 ms" "CPU us/req" "peak RSS KiB" "errors"
    for who in "${WHO[@]}"; do
        printf '  %-24s %10s %10s %14s %14s %8s\n' "$(label $who)" \
            "$(cut -d' ' -f1 "$T/$who.$conns" | median)" "$(cut -d' ' -f2 "$T/$who.$conns" | median)" \
            "$(cut -d' ' -f3 "$T/$who.$conns" | median)" "$(cut -d' ' -f4 "$T/$who.$conns" | median)" \
            "$(cut -d' ' -f5 "$T/$who.$conns" | awk '{s += $1} END {print s + 0}')"
        sed 's/^/        /' "$T/$who.$conns"
    done
    ratio() { awk -v a="$(cut -d' ' -f"$1" "$T/shim.$conns" | median)" -v b="$(cut -d' ' -f"$1" "$T/$2.$conns" | median)" \
        'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
    for other in plain stock; do
        printf '  %-24s %10s %10s %14s %14s\n' "ratio bufpool/$other" "$(ratio 1 $other)" "$(ratio 2 $other)" "$(ratio 3 $other)" "$(ratio 4 $other)"
    done
done
if [ "$H2CONNS" -gt 0 ]; then
    for who in "${WHO[@]}"; do : > "$T/$who.h2"; done
    for r in $(seq 0 $((ROUNDS - 1))); do
        for k in 0 1 2; do
            who=${WHO[$(( (r + k) % 3 ))]}
            run_h2 "$(binof $who)" >> "$T/$who.h2"
        done
    done
    echo
    echo "== h2load -t2 -c$H2CONNS -m1 -n$((H2CONNS * H2REQS)) (HTTP/2, prior knowledge): medians of $ROUNDS rounds"
    printf '  %-24s %10s %10s %10s %14s %14s %8s\n' "" "req/s" "mean ms" "p99 ms" "CPU us/req" "peak RSS KiB" "failed"
    for who in "${WHO[@]}"; do
        printf '  %-24s %10s %10s %10s %14s %14s %8s\n' "$(label $who)" \
            "$(cut -d' ' -f1 "$T/$who.h2" | median)" "$(cut -d' ' -f2 "$T/$who.h2" | median)" \
            "$(cut -d' ' -f3 "$T/$who.h2" | median)" "$(cut -d' ' -f4 "$T/$who.h2" | median)" \
            "$(cut -d' ' -f5 "$T/$who.h2" | median)" "$(cut -d' ' -f6 "$T/$who.h2" | awk '{s += $1} END {print s + 0}')"
        sed 's/^/        /' "$T/$who.h2"
    done
    h2ratio() { awk -v a="$(cut -d' ' -f"$1" "$T/shim.h2" | median)" -v b="$(cut -d' ' -f"$1" "$T/$2.h2" | median)" \
        'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
    for other in plain stock; do
        printf '  %-24s %10s %10s %10s %14s %14s\n' "ratio bufpool/$other" "$(h2ratio 1 $other)" "$(h2ratio 2 $other)" \
            "$(h2ratio 3 $other)" "$(h2ratio 4 $other)" "$(h2ratio 5 $other)"
    done
fi
if [ "$SLOWN" -gt 0 ]; then
    echo
    echo "== $SLOWN slow downloads of 1 MiB at once (16 KiB per connection every 50 ms), RSS in KiB"
    printf '  %-34s %10s %10s %12s %12s %10s\n' "" "at start" "peak" "2 s after" "10 s after" "seconds"
    for who in shim shim-thread plain stock; do
        case $who in
            shim-thread) bin=$SHIM; lab="bufpool, BUFPOOL_MAINTENANCE=thread"; env="BUFPOOL_MAINTENANCE=thread";;
            *) bin=$(binof $who); lab=$(label $who); env="";;
        esac
        env $env "$bin" -db -f "$T/haproxy.cfg" > "$T/h.log" 2>&1 &
        pid=$!
        wait_for 10 listening "$HPORT" || { echo "haproxy-demo: $bin did not start"; cat "$T/h.log"; exit 1; }
        r0=$(rss_kb $pid)
        "$T/slowread" "$HPORT" "$SLOWN" /size/1048576 16384 50 > "$T/slow.out" 2>&1
        hwm=$(hwm_kb $pid)
        sleep 2; r2=$(rss_kb $pid)      # measuring at these times, not waiting for anything
        sleep 8; r10=$(rss_kb $pid)
        kill -TERM "$pid"; wait "$pid" 2>/dev/null
        wait_for 10 eval "! listening $HPORT"
        printf '  %-34s %10s %10s %12s %12s %10s  %s\n' "$lab" "$r0" "$hwm" "$r2" "$r10" \
            "$(sed -n 's/.*bytes, \([0-9.]*\) s$/\1/p' "$T/slow.out")" "$(grep -q "$SLOWN of $SLOWN" "$T/slow.out" || cat "$T/slow.out")"
        echo "$who $r0 $hwm $r2 $r10" >> "$T/slow.all"
    done
    sratio() { awk -v w="$2" -v c="$1" '$1 == "shim" { a = $c } $1 == w { b = $c } END { if (b > 0) printf "%.2f", a / b; else print "-" }' "$T/slow.all"; }
    for other in plain stock; do
        printf '  %-34s %10s %10s %12s %12s\n' "ratio bufpool/$other" "$(sratio 2 $other)" "$(sratio 3 $other)" "$(sratio 4 $other)" "$(sratio 5 $other)"
    done
fi
echo
echo "haproxy-demo: ratios above 1 mean more for bufpool: better for req/s, worse for p99, CPU and RSS."
