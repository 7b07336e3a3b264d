#!/usr/bin/env bash
# make relay-demo: the relay against HAProxy 2.6 (Debian's haproxy), both in
# front of nginx on 127.0.0.1, driven by wrk and by loadgen (ours). Debian's
# nginx, wrk, haproxy and socat are installed with apt-get when we are root;
# otherwise one line says what was skipped. Everything listens on loopback.
# Usage: demo.sh BINDIR   (BINDIR holds relay, backend, loadgen)
# DEMO_SECONDS (10), DEMO_CONNS (200), DEMO_IDLE (10000), DEMO_BURST (2000)
# change the sizes; the wrk matrix (section 6) runs DEMO_ROUNDS (5) rounds of
# DEMO_MATRIX_SECONDS (3) per run over DEMO_MATRIX_CONNS
# ("50 500"); DEMO_MATRIX_ONLY=1 runs that section alone.
set -u
BIN=$(cd "${1:-build/relay}" && pwd)
SECS=${DEMO_SECONDS:-10}
CONNS=${DEMO_CONNS:-200}
IDLE=${DEMO_IDLE:-10000}
BURST=${DEMO_BURST:-2000}
ROUNDS=${DEMO_ROUNDS:-5}
MSECS=${DEMO_MATRIX_SECONDS:-3}
LIMIT=32
RESERVE=2
BUFSIZE=16384

# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
need=()
for t in nginx:nginx wrk:wrk haproxy:haproxy socat:socat; do
    command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || need+=("${t##*:}")
done
need_packages relay-demo "Debian packages" "${need[@]}" || exit 0
export PATH="$PATH:/usr/sbin"
for t in nginx wrk haproxy socat; do
    command -v $t >/dev/null 2>&1 || { echo "relay-demo: skipped: $t could not be installed"; exit 0; }
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
T=$(mktemp -d /tmp/relay-demo.XXXXXX)
trap cleanup EXIT

stop() {
    kill -TERM "$1" 2>/dev/null
    wait_for 10 eval "! kill -0 $1 2>/dev/null" || kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

# nginx, the backend: one worker, static files of our pattern.
NPORT=$(free_port 18081)
mkdir -p "$T/www/size" "$T/tmp"
for n in 100 1024 16384 1048576; do "$BIN/backend" --body $n > "$T/www/size/$n"; done
{ nginx_conf_head 8192; cat <<EOF
    gzip on;
    gzip_types application/octet-stream;
    server {
        # nginx's default backlog (511) drops SYNs when 2000 connections
        # arrive at once; a connect retried after 1 s, 3 s then runs into
        # the proxies' 5 s connect timeout (the relay does not retry).
        listen 127.0.0.1:$NPORT backlog=4096;
        root $T/www;
    }
}
EOF
} > "$T/nginx.conf"
nginx -c "$T/nginx.conf" &
PIDS+=($!)
wait_for 10 listening "$NPORT" || { echo "relay-demo: nginx did not start"; cat "$T/nginx-error.log"; exit 1; }

HMAN=/usr/share/doc/haproxy/configuration.txt.gz
hdoc() { [ -f "$HMAN" ] && zcat "$HMAN" | grep -q "^$1 "; }
HVER=$(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')

# relay_start NAME [options]: sets PID and PORT.
relay_start() {
    local name=$1; shift
    "$BIN/relay" --listen 127.0.0.1:0 --port-file "$T/$name.port" --server "127.0.0.1:$NPORT" \
        --stats "$T/$name.sock" --bufsize $BUFSIZE --threads 1 "$@" 2>"$T/$name.err" &
    PID=$!
    PIDS+=("$PID")
    wait_for 10 test -s "$T/$name.port" || { echo "relay-demo: relay did not start"; cat "$T/$name.err"; exit 1; }
    PORT=$(cat "$T/$name.port")
}

# haproxy_start NAME LIMIT MAXCONN: the same settings where 2.6 has them. Sets PID, PORT, HLIMITS.
haproxy_start() {
    local name=$1 limit=$2 maxconn=$3
    PORT=$(free_port 18090)
    HLIMITS="nbthread 1, tune.bufsize $BUFSIZE"
    {
        echo "global"
        echo "    nbthread 1"
        echo "    maxconn $((IDLE + 100))"
        echo "    ulimit-n $NOFILE"
        echo "    no strict-limits"
        echo "    tune.bufsize $BUFSIZE"
        if [ "$limit" != 0 ] && hdoc tune.buffers.limit; then
            echo "    tune.buffers.limit $limit"
            HLIMITS="$HLIMITS, tune.buffers.limit $limit"
        fi
        if hdoc tune.buffers.reserve; then
            echo "    tune.buffers.reserve $RESERVE"
            HLIMITS="$HLIMITS, tune.buffers.reserve $RESERVE"
        fi
        echo "    stats socket $T/$name.sock level admin"
        echo "defaults"
        echo "    mode http"
        echo "    timeout connect 5s"
        echo "    timeout client 120s"
        echo "    timeout server 120s"
        echo "    timeout queue 120s"
        echo "frontend fe"
        echo "    bind 127.0.0.1:$PORT"
        echo "    default_backend be"
        echo "backend be"
        echo "    server nginx 127.0.0.1:$NPORT maxconn $maxconn"
    } > "$T/$name.cfg"
    HLIMITS="$HLIMITS, server maxconn $maxconn"
    haproxy -f "$T/$name.cfg" -db >"$T/$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_for 10 listening "$PORT" || { echo "relay-demo: haproxy did not start"; cat "$T/$name.log"; exit 1; }
}

# run_wrk PORT: sets RPS P50 P99 ERRS TMO (and keeps the output in $T/wrk.out).
run_wrk() {
    wrk -t2 -c"$CONNS" -d"${SECS}s" --latency --timeout 2s "http://127.0.0.1:$1/size/1024" > "$T/wrk.out" 2>&1
    RPS=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$T/wrk.out")
    P50=$(awk '$1 == "50%" {print $2}' "$T/wrk.out")
    P99=$(awk '$1 == "99%" {print $2}' "$T/wrk.out")
    TMO=$(sed -n 's/.*timeout \([0-9]*\).*/\1/p' "$T/wrk.out")
    ERRS=$(awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' "$T/wrk.out")
    REQS=$(awk '/requests in/ {print $1}' "$T/wrk.out")
    TMO=${TMO:-0}
    if [ "${P50:-0us}" = "0.00us" ]; then P50=-; P99=-; fi
}
answers() { curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/size/1024" | grep -q 200; }
row() { printf '  %-44s %9s %10s %10s %8s %9s\n' "$@"; }

# == 6. The wrk matrix: 50 and 500 connections, 100 B, 16 KiB and 1 MiB
# bodies, the relay against HAProxy with the same settings (1 thread, no
# buffer limit, server maxconn = the connections), each run on a fresh
# process: ROUNDS rounds, each of every cell for both, the order swapped
# every round, and the median of each figure over the rounds.
HZ=$(getconf CLK_TCK)
# mrun KIND CONNS SIZE ROUND: one proxy, one wrk run; appends
# "req/s p99-ms cpu-us-per-request peak-rss-kB errors" to $T/m.KIND.CONNS.SIZE
mrun() {
    local kind=$1 c=$2 sz=$3 r=$4 name="m-$1-$2-$3-$4"
    if [ "$kind" = relay ]; then
        relay_start "$name" --buflimit 0 --reserve $RESERVE --maxconn "$c"
    else
        haproxy_start "$name" 0 "$c"
    fi
    local c0 c1 hwm
    c0=$(cpu_ticks "$PID")
    wrk -t2 -c"$c" -d"${MSECS}s" --latency --timeout 10s "http://127.0.0.1:$PORT/size/$sz" > "$T/$name.wrk" 2>&1
    c1=$(cpu_ticks "$PID")
    hwm=$(hwm_kb "$PID")
    stop "$PID"
    awk -v c0="$c0" -v c1="$c1" -v hz="$HZ" -v hwm="$hwm" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /m$/) return v * 60000; return v * 1000 }
        /^Requests\/sec/ { rps = $2 }
        $1 == "99%" { p99 = ms($2) }
        / requests in / { n = $1 }
        /Socket errors/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
        /Non-2xx/ { e += $5 }
        END { cpu = 0; if (n > 0) cpu = (c1 - c0) * 1e6 / hz / n; printf "%.0f %.3f %.1f %d %d\n", rps, p99, cpu, hwm, e }' \
        "$T/$name.wrk" >> "$T/m.$kind.$c.$sz"
}
# med FILE COLUMN: the median of a column
med() { sort -g -k"$2","$2" "$1" | awk -v k="$2" '{v[NR] = $k} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
matrix() {
    local sizes="100 16384 1048576" conns=${DEMO_MATRIX_CONNS:-50 500}
    echo
    echo "== 6. wrk -t2 -cN -d${MSECS}s --latency: N = ${conns// / and }, bodies of 100 B, 16 KiB, 1 MiB from nginx;"
    echo "   1 thread each, no buffer limit, server maxconn N; $ROUNDS interleaved rounds, a fresh process each run, medians"
    echo "   (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
    rm -f "$T"/m.*
    for r in $(seq 1 "$ROUNDS"); do
        for c in $conns; do
            for sz in $sizes; do
                if [ $((r % 2)) = 1 ]; then mrun relay "$c" "$sz" "$r"; mrun haproxy "$c" "$sz" "$r"
                else mrun haproxy "$c" "$sz" "$r"; mrun relay "$c" "$sz" "$r"; fi
            done
        done
        echo "   round $r of $ROUNDS done (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    done
    printf '  %-12s %26s %26s %26s %26s\n' "" "req/s" "p99 (ms)" "CPU per request (us)" "peak RSS (MB)"
    printf '  %-12s' "conns body"
    for i in 1 2 3 4; do printf ' %9s %9s %6s' relay haproxy ratio; done
    echo
    local errs_r=0 errs_h=0
    for c in $conns; do
        for sz in $sizes; do
            local fr="$T/m.relay.$c.$sz" fh="$T/m.haproxy.$c.$sz" body
            case $sz in 100) body="100 B" ;; 16384) body="16 KiB" ;; 1048576) body="1 MiB" ;; *) body="$sz B" ;; esac
            printf '  %5s %-6s' "$c" "$body"
            for col in 1 2 3 4; do
                local a b
                a=$(med "$fr" $col); b=$(med "$fh" $col)
                if [ $col = 4 ]; then a=$(awk -v v="$a" 'BEGIN {printf "%.1f", v / 1024}'); b=$(awk -v v="$b" 'BEGIN {printf "%.1f", v / 1024}'); fi
                if [ $col = 2 ]; then a=$(awk -v v="$a" 'BEGIN {printf "%.2f", v}'); b=$(awk -v v="$b" 'BEGIN {printf "%.2f", v}'); fi
                printf ' %9s %9s %6s' "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')"
            done
            echo
            errs_r=$((errs_r + $(awk '{s += $5} END {print s + 0}' "$fr")))
            errs_h=$((errs_h + $(awk '{s += $5} END {print s + 0}' "$fh")))
        done
    done
    echo "  ratio: relay / HAProxy (req/s: higher is better for the relay; the three others: lower is)."
    echo "  errors (wrk socket errors and non-2xx, all runs): relay $errs_r, haproxy $errs_h; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "  every round's req/s (relay | haproxy):"
    for c in $conns; do
        for sz in $sizes; do
            echo "    $c conns, /size/$sz: $(cut -d' ' -f1 "$T/m.relay.$c.$sz" | tr '\n' ' ')| $(cut -d' ' -f1 "$T/m.haproxy.$c.$sz" | tr '\n' ' ')"
        done
    done
}

echo "relay-demo: nginx $(nginx -v 2>&1 | sed 's/.*\///'), HAProxy $HVER, wrk $(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  (a shared 2-core machine: wrk, nginx and the proxy share the cores with other builds; figures are noisy)"
echo "  HAProxy ran with: nbthread 1, tune.bufsize $BUFSIZE$(hdoc tune.buffers.limit && echo ", tune.buffers.limit $LIMIT")$(hdoc tune.buffers.reserve && echo ", tune.buffers.reserve $RESERVE"), server maxconn 1"
echo "    (tune.buffers.limit and tune.buffers.reserve: $(hdoc tune.buffers.limit && hdoc tune.buffers.reserve && echo "both documented in" || echo "not both in") $HMAN)"
echo "  relay ran with:   --threads 1 --bufsize $BUFSIZE --buflimit $LIMIT --reserve $RESERVE --maxconn 1"
if [ "${DEMO_MATRIX_ONLY:-0}" = 1 ]; then
    matrix
    exit 0
fi

echo
echo "== 1. wrk -t2 -c$CONNS -d${SECS}s --timeout 2s, GET /size/1024 from nginx, server maxconn 1, 1 thread each"
row "" "req/s" "p50" "p99" "errors" "timeouts"
relay_start r1 --buflimit $LIMIT --reserve $RESERVE --maxconn 1
run_wrk "$PORT"
R_RPS=$RPS; R_ERRS=$ERRS
row "relay   buffer limit $LIMIT, reserve $RESERVE" "$RPS" "$P50" "$P99" "$ERRS" "$TMO"
quiet() { [ "$(socat - "UNIX-CONNECT:$T/$1.sock" <<< "show info" | sed -n 's/^sessions: //p')" = 0 ]; }
wait_for 10 quiet r1     # wrk closed its connections: wait until the relay saw them go
socat - "UNIX-CONNECT:$T/r1.sock" <<< "show pools" > "$T/r1.pools"
socat - "UNIX-CONNECT:$T/r1.sock" <<< "show info" > "$T/r1.info"
stop "$PID"

haproxy_start h1 $LIMIT 1
run_wrk "$PORT"
H_RPS=$RPS
hstate="answers afterwards"
answers "$PORT" || hstate="DEADLOCKED: no answer to curl afterwards"
row "haproxy same limits" "$RPS" "$P50" "$P99" "$ERRS" "$TMO"
echo "      ($REQS requests in ${SECS}s; $hstate)"
H1_STATE=$hstate
stop "$PID"

relay_start r0 --buflimit 0 --reserve $RESERVE --maxconn 1
run_wrk "$PORT"
R0_RPS=$RPS
row "relay   no buffer limit" "$RPS" "$P50" "$P99" "$ERRS" "$TMO"
stop "$PID"

haproxy_start h0 0 1
run_wrk "$PORT"
H0_RPS=$RPS
row "haproxy no buffer limit" "$RPS" "$P50" "$P99" "$ERRS" "$TMO"
stop "$PID"

echo
echo "  relay's show pools after its run (echo 'show pools' | socat - UNIX-CONNECT:<stats socket>):"
sed 's/^/    /' "$T/r1.pools"
echo "  relay's show info: $(grep -E '^(responses|failed buffer allocations|wake-ups by release offers|offers declined by a callback|stalls):' "$T/r1.info" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"

echo
echo "== 2. the same with the reserve taken away from requests (relay --req-margin 0, --timeout-queue 0)"
echo "   (no queue timeout: the default, 10 s, would answer the deadlocked requests 503 and end the stall)"
relay_start r2 --buflimit $LIMIT --reserve $RESERVE --req-margin 0 --maxconn 1 --timeout-queue 0
run_wrk "$PORT"
S_RPS=$RPS; S_TMO=$TMO
row "" "req/s" "p50" "p99" "errors" "timeouts"
row "relay   limit $LIMIT, request margin 0" "$RPS" "$P50" "$P99" "$ERRS" "$TMO"
echo "      ($REQS requests in ${SECS}s)"
grep 'watchdog' "$T/r2.err" | head -2 | sed 's/^/    /'
socat - "UNIX-CONNECT:$T/r2.sock" <<< "show info" | grep -E '^(stalled|buffers used|buffer waiters|server queue):' | tr '\n' ';' | sed 's/;$/\n/; s/;/; /g; s/^/    show info: /'
"$BIN/loadgen" load --port "$PORT" --conns 20 --path /size/1024 --timeout 3 > "$T/r2.lg" 2>&1
LG_RC=$?
echo "    a client of ours meanwhile: $(cat "$T/r2.lg") (exit $LG_RC: timed out)"
STALLED=0
grep -q 'watchdog: stalled' "$T/r2.err" && STALLED=1
stop "$PID"
echo "  HAProxy: n/a, its reserve cannot be taken away (tune.buffers.reserve: minimum 2); see its row in 1."

echo
echo "== 3. $IDLE idle keep-alive client connections (loadgen idle: one request each, then held)"
row "" "RSS before" "RSS idle" "per conn" "buffers" ""
idle_run() {     # NAME PID PORT: sets PER and BUFS
    local before after
    before=$(rss_kb "$2")
    rm -f "$T/$1.ready"
    "$BIN/loadgen" idle --port "$3" --conns "$IDLE" --parallel 16 --path /size/1024 --ready-file "$T/$1.ready" \
        --timeout 120 > "$T/$1.idle" 2>&1 &
    local lp=$!
    PIDS+=("$lp")
    wait_for 150 test -s "$T/$1.ready"
    IDLE_OK=$(cut -d' ' -f1 "$T/$1.ready" 2>/dev/null)
    after=$(rss_kb "$2")
    PER=$(awk -v a="$after" -v b="$before" -v n="${IDLE_OK:-0}" 'BEGIN {if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print "-"}')
    RSSB=$before; RSSA=$after
    kill -TERM "$lp"; wait "$lp" 2>/dev/null
}
relay_start r3 --buflimit $LIMIT --reserve $RESERVE --maxconn 1
idle_run r3 "$PID" "$PORT"
R_PER=$PER
R_BUFS=$(socat - "UNIX-CONNECT:$T/r3.sock" <<< "show info" | sed -n 's/^buffers used: //p')
row "relay   ($IDLE_OK idle)" "${RSSB} kB" "${RSSA} kB" "$PER B" "$R_BUFS used" ""
stop "$PID"
haproxy_start h3 $LIMIT 1
idle_run h3 "$PID" "$PORT"
H_PER=$PER
# HAProxy's "used" counts its thread caches' buffers too ("~N by thread caches").
H_BUFS=$(socat - "UNIX-CONNECT:$T/h3.sock" <<< "show pools" |
    sed -n 's/.*Pool buffer .* \([0-9]*\) used (~\([0-9]*\) by thread caches).*/\1 used, ~\2 of them cached/p' | head -1)
row "haproxy ($IDLE_OK idle)" "${RSSB} kB" "${RSSA} kB" "$PER B" "${H_BUFS:-?}" ""
stop "$PID"

echo
echo "== 4. a burst of $BURST connections, each a 1 MiB response, then closed (no buffer limit, server maxconn $BURST)"
row "" "peak RSS" "RSS +1 s" "RSS +5 s" "time" ""
burst_run() {    # NAME PID PORT
    "$BIN/loadgen" burst --port "$3" --conns "$BURST" --path /size/1048576 --verify --timeout 120 > "$T/$1.burst" 2>&1
    local rc=$? peak r1 r5
    peak=$(hwm_kb "$2")
    sleep 1; r1=$(rss_kb "$2")
    sleep 4; r5=$(rss_kb "$2")
    local t
    t=$(sed -n 's/.* \([0-9.]*\) s, .*/\1 s/p' "$T/$1.burst")
    [ $rc = 0 ] || t="$t (loadgen exit $rc)"
    row "$4" "$peak kB" "$r1 kB" "$r5 kB" "$t" ""
    [ $rc = 0 ] || sed 's/^/      /' "$T/$1.burst"
}
relay_start r4 --buflimit 0 --reserve $RESERVE --maxconn "$BURST"
burst_run r4 "$PID" "$PORT" "relay"
echo "      (relay: $(socat - "UNIX-CONNECT:$T/r4.sock" <<< "show info" | grep -E '^(pool gc runs|buffers allocated|aborts|errors sent):|timeouts: [1-9]' | tr '\n' ';' | sed 's/;$//; s/;/, /g'), after its idle gc)"
stop "$PID"
haproxy_start h4 0 "$BURST"
burst_run h4 "$PID" "$PORT" "haproxy"
stop "$PID"

echo
echo "== 5. a chunked answer of nginx (gzip) through the relay"
relay_start r5 --buflimit $LIMIT --reserve $RESERVE --maxconn 1
curl -s --compressed -D "$T/r5.hdr" -o "$T/r5.body" "http://127.0.0.1:$PORT/size/1048576"
if grep -qi '^transfer-encoding: chunked' "$T/r5.hdr" && cmp -s "$T/r5.body" "$T/www/size/1048576"; then
    echo "  GET /size/1048576 with Accept-Encoding: gzip: chunked, inflated by curl, identical to the file"
else
    echo "  GET /size/1048576 with gzip: NOT identical (or not chunked)"
fi
stop "$PID"

matrix

echo
echo "== targets"
verdict() { if [ "${1:-0}" = 1 ]; then echo "met"; else echo "MISSED"; fi; }
echo "  0 errors with the reserve: $(verdict $([ "$R_ERRS" = 0 ] && echo 1)) ($R_ERRS errors)"
echo "  a detected stall without it: $(verdict $([ $STALLED = 1 ] && [ $LG_RC = 3 ] && echo 1)) (watchdog line: $([ $STALLED = 1 ] && echo yes || echo no), wrk $S_RPS req/s, loadgen's requests timed out: exit $LG_RC)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "inf"}'; }
echo "  relay req/s >= 0.9x HAProxy's, same limits, 1 thread: $(verdict $(awk -v a="$R_RPS" -v b="$H_RPS" 'BEGIN {if (a >= 0.9 * b) print 1}')) ($R_RPS vs $H_RPS: $(ratio "$R_RPS" "$H_RPS")x; HAProxy $H1_STATE)"
echo "      against HAProxy without a buffer limit: relay limit $LIMIT $R_RPS vs $H0_RPS: $(ratio "$R_RPS" "$H0_RPS")x; relay without limit $R0_RPS: $(ratio "$R0_RPS" "$H0_RPS")x"
echo "  RSS per idle connection below HAProxy's, no buffer held: $(verdict $(awk -v a="$R_PER" -v b="$H_PER" -v u="$R_BUFS" 'BEGIN {if (a < b && u == 0) print 1}')) ($R_PER B vs $H_PER B, relay buffers used while idle: $R_BUFS)"
