#!/usr/bin/env bash
# make test-relay: the relay under real clients (curl, and loadgen, a client
# of our own) in front of backend, a tiny origin of our own, everything on
# 127.0.0.1. Needs curl only. No sleep is used to synchronise: we wait for
# port files, log lines and stats answers, polling with a deadline.
# Usage: test-relay.sh BINDIR   (BINDIR holds relay, backend, loadgen)
set -u
BIN=$(cd "${1:-build/relay}" && pwd)
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
T=$(mktemp -d /tmp/relay-test.XXXXXX)
trap cleanup EXIT

lowfd() { ulimit -n 64 && exec "$@"; }
cpu() { cpu_ticks "$1"; }
ctl() { "$BIN/loadgen" ctl --unix "$T/$1.sock" "${@:2}"; }
info() { ctl "$1" show info | sed -n "s/^$2: //p"; }
# info_ge NAME KEY N: show info's KEY is at least N (for wait_for: asked each time)
info_ge() { local v; v=$(info "$1" "$2"); [ -n "$v" ] && [ "$v" -ge "$3" ]; }
# held_ge NAME USED BUSY: 'buffers used' and 'server busy' at least USED
# and BUSY in one look, which is kept in $T/NAME.held ("USED BUSY") for the
# check that follows: a second look could come after a send timer freed one.
held_ge() {
    local u b
    u=$(info "$1" 'buffers used'); b=$(info "$1" 'server busy')
    echo "$u $b" > "$T/$1.held"
    [ -n "$u" ] && [ -n "$b" ] && [ "$u" -ge "$2" ] && [ "$b" -ge "$3" ]
}

# raw NAME: stdin to the relay ($RPORT) on a new connection, its answer into $T/NAME
raw() {
    exec 3<>"/dev/tcp/127.0.0.1/$RPORT"
    cat >&3
    timeout 10 cat <&3 > "$T/$1"
    exec 3<&-
}

# start_relay NAME [relay options]: a relay in front of the backend; sets
# RPORT and RPID; its stderr goes to $T/NAME.err. RELAY_WRAP=lowfd runs it
# with a descriptor limit of 64.
start_relay() {
    local name=$1; shift
    rm -f "$T/$name.port"
    ${RELAY_WRAP:-} "$BIN/relay" --listen 127.0.0.1:0 --port-file "$T/$name.port" --server "127.0.0.1:$BPORT" \
        --stats "$T/$name.sock" --quiet "$@" 2>"$T/$name.err" &
    RPID=$!
    PIDS+=("$RPID")
    if ! wait_for 10 test -s "$T/$name.port"; then
        echo "relay $name did not start"; cat "$T/$name.err"; exit 1
    fi
    RPORT=$(cat "$T/$name.port")
}

# stop_relay NAME: SIGTERM, then its exit status in RC (0: clean, no leak).
stop_relay() {
    kill -TERM "$RPID"
    wait "$RPID"
    RC=$?
}

"$BIN/backend" --port-file "$T/backend.port" --log "$T/backend.log" &
PIDS+=($!)
wait_for 10 test -s "$T/backend.port" || { echo "backend did not start"; exit 1; }
BPORT=$(cat "$T/backend.port")
URL() { echo "http://127.0.0.1:$RPORT$1"; }

echo "test-relay: backend on 127.0.0.1:$BPORT"

# 1. curl through the relay: bodies byte for byte, every framing, keep-alive on both sides.
echo "1. curl, bodies byte for byte (2 threads, buffer limit 8, bufsize 4096)"
start_relay curl --threads 2 --buflimit 8 --reserve 2 --bufsize 4096
for n in 0 1 4095 4096 100000 1048576; do
    "$BIN/backend" --body $n > "$T/want.$n"
done
for n in 1 4096 100000 1048576; do
    curl -sS -o "$T/got" "$(URL /size/$n)"
    check "GET /size/$n (Content-Length)" "cmp -s '$T/got' '$T/want.$n'"
done
for n in 0 4095 1048576; do
    curl -sS -o "$T/got" --raw "$(URL /chunked/$n)" && curl -sS -o "$T/got2" "$(URL /chunked/$n)"
    check "GET /chunked/$n (chunked, de-chunked by curl)" "cmp -s '$T/got2' '$T/want.$n' && [ \$(stat -c %s '$T/got') -gt $n ]"
done
curl -sS -o "$T/got" "$(URL /close/100000)"
check "GET /close/100000 (body ends with the server's close)" "cmp -s '$T/got' '$T/want.100000'"
curl -sS -I "$(URL /size/100000)" > "$T/head"
check "HEAD /size/100000 (headers, no body)" "grep -qi '^content-length: 100000' '$T/head'"
curl -sS -H 'Expect:' --data-binary "@$T/want.1048576" -o "$T/got" "$(URL /echo)"
check "POST /echo 1 MiB (request body, Content-Length)" "cmp -s '$T/got' '$T/want.1048576'"
curl -sS -H 'Expect:' -H 'Transfer-Encoding: chunked' --data-binary "@$T/want.100000" -o "$T/got" "$(URL /echo)"
check "POST /echo 100 KB (chunked request body)" "cmp -s '$T/got' '$T/want.100000'"
urls=()
for i in $(seq 1 20); do urls+=("$(URL /size/4096)"); done
conns=$(curl -sS -o /dev/null -w '%{num_connects}\n' "${urls[@]}" | awk '{s += $1} END {print s}')
check "20 requests on one client connection (keep-alive: $conns connect)" "[ '$conns' = 1 ]"
curl -sS -0 -o "$T/got" "$(URL /size/100000)"
check "HTTP/1.0 client (closed after the response)" "cmp -s '$T/got' '$T/want.100000'"
# Two pipelined requests in one write, the second with Connection: close.
exec 3<>"/dev/tcp/127.0.0.1/$RPORT"
printf 'GET /size/4095 HTTP/1.1\r\nhost: t\r\n\r\nGET /chunked/4096 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n' >&3
timeout 10 cat <&3 > "$T/pipe"
exec 3<&-
check "pipelined requests, answered in order, then closed" \
    "[ \$(grep -ao 'HTTP/1.1 200' '$T/pipe' | wc -l) = 2 ] && grep -q 'x-trailer: 4096' '$T/pipe' && [ \$(stat -c %s '$T/pipe') -gt 8191 ]"
curl -sS -o /dev/null "$(URL /nope)" -w '%{http_code}' > "$T/code"
check "a 404 of the server passes" "[ \$(cat '$T/code') = 404 ]"
check "no buffer held once idle" "[ \"\$(info curl 'buffers used')\" = 0 ]"
stop_relay curl
check "clean exit, nothing leaked (exit $RC)" "[ $RC = 0 ]" "$T/curl.err"

# Server keep-alive: 1 thread, maxconn 1, 50 requests: one server connection.
start_relay ka --buflimit 8
"$BIN/loadgen" load --port "$RPORT" --conns 5 --requests 10 --path /size/2000 --verify --timeout 20 > "$T/ka.out" 2>&1
check "server connection reused (50 requests, $(info ka 'server connections opened') opened)" \
    "[ \"\$(info ka 'server connections opened')\" = 1 ]" "$T/ka.out"
stop_relay ka

# 2. Few buffers, many sessions: all complete, with contention.
echo "2. buffer limit 16, reserve 2, maxconn 2, 2 threads: 300 connections x 20 requests of 40 KB"
start_relay lim --threads 2 --buflimit 16 --reserve 2 --maxconn 2 --watchdog 3000
"$BIN/loadgen" load --port "$RPORT" --conns 300 --requests 20 --path /size/40000 --verify --timeout 40 > "$T/lim.out" 2>&1
lrc=$?
cat "$T/lim.out" | sed 's/^/       /'
check "every session completes, bodies intact (loadgen exit $lrc)" "[ $lrc = 0 ]" "$T/lim.out"
fails=$(info lim 'failed buffer allocations')
check "buffers were short ($fails failed allocations, each answered by a wake-up)" "[ \"\${fails:-0}\" -gt 0 ]"
# No timer retries a waiter: each wait ends by a release (b_release's offer,
# or the claim b_queue_margin allows), else its queue timeout would fire.
wakes=$(info lim 'wake-ups by release offers')
check "every buffer wait ended by a release, no timer ($wakes wake-ups, $(info lim 'wake-ups sent to another thread') to another thread, $(info lim 'queue timeouts') queue timeouts)" \
    "[ \"\${wakes:-0}\" -gt 0 ] && [ \"\$(info lim 'queue timeouts')\" = 0 ]"
check "no buffer held, no waiter left once done" \
    "[ \"\$(info lim 'buffers used')\" = 0 ] && [ \"\$(info lim 'buffer waiters')\" = 0 ]"
check "the watchdog saw no stall" "[ \"\$(info lim 'stalls')\" = 0 ]" "$T/lim.err"
stop_relay lim
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/lim.err"

# 3. The same without the reserve for requests: the deadlock, detected.
echo "3. request margin 0 (the reserve taken away): must stall"
start_relay stall --buflimit 16 --reserve 2 --req-margin 0 --maxconn 1 --watchdog 500
"$BIN/loadgen" load --port "$RPORT" --conns 100 --requests 20 --path /size/40000 --timeout 30 > "$T/stall.out" 2>&1 &
LPID=$!
PIDS+=("$LPID")
wait_for 20 grep -q 'watchdog: stalled' "$T/stall.err"
check "the watchdog reports the stall" "grep -q 'watchdog: stalled' '$T/stall.err'" "$T/stall.err"
sed -n 's/^relay: /       relay: /p' "$T/stall.err" | head -2
check "show info: stalled, every buffer held, the server's slot holder waiting" \
    "[ \"\$(info stall stalled)\" = 1 ] && [ \"\$(info stall 'buffers used')\" = 16 ] && [ \"\$(info stall 'server busy')\" = 1 ]"
kill -TERM "$LPID"
wait "$LPID"
lrc=$?
check "the client saw requests never answered (loadgen exit $lrc: incomplete)" "[ $lrc = 3 ]" "$T/stall.out"
stop_relay stall
check "a stalled relay still stops cleanly (exit $RC)" "[ $RC = 0 ]" "$T/stall.err"

# 4. BUFPOOL_DEBUG=tag,integrity: the same traffic, no abort.
echo "4. BUFPOOL_DEBUG=tag,integrity"
BUFPOOL_DEBUG=tag,integrity start_relay dbg --threads 2 --buflimit 16 --reserve 2 --maxconn 2
"$BIN/loadgen" load --port "$RPORT" --conns 100 --requests 10 --path /size/40000 --verify --timeout 40 > "$T/dbg.out" 2>&1
lrc=$?
check "100 x 10 requests complete under tag,integrity (loadgen exit $lrc)" "[ $lrc = 0 ]" "$T/dbg.out"
curl -sS -o "$T/got" "$(URL /chunked/1048576)"
check "curl through it, 1 MiB chunked" "cmp -s '$T/got' '$T/want.1048576'"
check "the debug modes reached the relay's pools" "ctl dbg show pools | grep -q 'relay_sess.*DEBUG'"
stop_relay dbg
check "no abort, no bufpool report, clean exit (exit $RC)" "[ $RC = 0 ] && ! grep -q '^bufpool:' '$T/dbg.err'" "$T/dbg.err"

# 5. The stats socket, SIGUSR1, and idle connections that hold no buffer.
echo "5. stats socket, SIGUSR1, 500 idle keep-alive connections"
start_relay st --buflimit 32
"$BIN/loadgen" idle --port "$RPORT" --conns 500 --parallel 100 --path /size/20000 --ready-file "$T/idle.ready" --timeout 30 > "$T/idle.out" 2>&1 &
LPID=$!
PIDS+=("$LPID")
wait_for 30 test -s "$T/idle.ready"
check "500 connections idle after one request each" "[ \"\$(cut -d' ' -f1 '$T/idle.ready')\" = 500 ]" "$T/idle.out"
ctl st show pools > "$T/pools"
sed 's/^/       /' "$T/pools"
check "show pools lists the relay's pools and the buffer pool" \
    "grep -q 'Pool relay_conn' '$T/pools' && grep -q 'Pool relay_sess' '$T/pools' && grep -q 'Pool buffer' '$T/pools' && grep -q '^Total' '$T/pools'"
check "relay_sess: 500 sessions used" "grep -q 'Pool relay_sess.* 500 used' '$T/pools'"
ctl st show pools byusage match relay_ 1 detailed > "$T/pools-opts"
sed 's/^/       /' "$T/pools-opts"
check "show pools byusage match relay_ 1 detailed: one relay_ pool, with its limit" \
    "[ \$(grep -c '^  - Pool ' '$T/pools-opts') = 1 ] && grep -q '^  - Pool relay_.*; released .*, limit ' '$T/pools-opts' && grep -q '^Total: 1 pools' '$T/pools-opts'"
ctl st show pools json bysize > "$T/pools.json"
check "show pools json: an array, relay_sess with 500 used, the buffer pool" \
    "[ \"\$(head -n 1 '$T/pools.json')\" = '[' ] && [ \"\$(tail -n 1 '$T/pools.json')\" = ']' ] && grep -q '^{\"name\":\"relay_sess\",.*\"used\":500,' '$T/pools.json' && grep -q '^{\"name\":\"buffer\",' '$T/pools.json'"
check "show pools with a bad option is answered" "ctl st show pools bogus | grep -q 'Bad options'"
check "idle connections hold no buffer (buffers used: $(info st 'buffers used'))" "[ \"\$(info st 'buffers used')\" = 0 ]"
check "show info counts them ($(info st sessions) sessions)" "[ \"\$(info st sessions)\" = 500 ]"
check "an unknown command is answered" "ctl st show nothing | grep -q 'Unknown command'"
kill -USR1 "$RPID"
wait_for 10 grep -q 'Pool relay_sess' "$T/st.err"
check "SIGUSR1 writes show pools to stderr" "grep -q 'Pool relay_sess' '$T/st.err'"
kill -TERM "$LPID"
wait "$LPID"
stop_relay st
check "clean exit with 500 connections open (exit $RC)" "[ $RC = 0 ]" "$T/st.err"

# 6. HTTP/1.1 framing and forwarding (RFC 9112, docs/RELAY.md "HTTP framing"):
# raw requests on one connection each, the last one closing it.
echo "6. HTTP framing: smuggling, bad header lines, lengths, hop-by-hop fields, persistence"
start_relay http
is400() { [ "$(grep -ac '^HTTP/1.1 ' "$T/$1")" = 1 ] && head -n 1 "$T/$1" | grep -q '^HTTP/1.1 400 '; }
printf 'POST /smuggle-a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n' | raw smuggle
check "Transfer-Encoding with Content-Length: 400, closed, the backend saw neither request" \
    "is400 smuggle && ! grep -q 'smuggle' '$T/backend.log'" "$T/smuggle"
printf 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc' | raw te-gzip
check "Transfer-Encoding: gzip (chunked not final): 400" "is400 te-gzip" "$T/te-gzip"
printf 'POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n' | raw te-order
check "Transfer-Encoding: chunked, gzip: 400" "is400 te-order" "$T/te-order"
printf 'GET / HTTP/1.1\r\nHost: t\r\nX-No-Colon\r\n\r\n' | raw nocolon
check "a header line without a colon: 400" "is400 nocolon" "$T/nocolon"
printf 'GET / HTTP/1.1\r\nHost : t\r\n\r\n' | raw spcolon
check "whitespace before the colon: 400" "is400 spcolon" "$T/spcolon"
printf 'GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n' | raw fold
check "an obs-fold continuation line: 400" "is400 fold" "$T/fold"
printf 'GET / HTTP/1.1\r\nHost: t\r\nX-A: a\001b\r\n\r\n' | raw ctlchar
check "a control character in a value: 400" "is400 ctlchar" "$T/ctlchar"
printf 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd' | raw cl2
check "two Content-Length headers that differ: 400" "is400 cl2" "$T/cl2"
printf 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd' | raw cllist
check "Content-Length: 3, 4: 400" "is400 cllist" "$T/cllist"
printf 'POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc' | raw clsame
check "two identical Content-Length headers: accepted as one" \
    "head -n 1 '$T/clsame' | grep -q '^HTTP/1.1 200 ' && [ \"\$(tail -c 3 '$T/clsame')\" = abc ]" "$T/clsame"
printf 'GET /echo-headers HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Forwarded-For: 10.0.0.1\r\nX-Kept: yes\r\n\r\nGET /size/10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | raw hop
sed -n '/^GET \/echo-headers/,/^\r$/p' "$T/hop" > "$T/hop.seen"
check "the backend got no hop-by-hop field: not Connection's tokens (X-Secret), Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade" \
    "grep -qi '^x-kept: yes' '$T/hop.seen' && ! grep -Eqi '^(x-secret|keep-alive|proxy-connection|te|trailer|upgrade):' '$T/hop.seen' && [ \"\$(grep -ci '^connection:' '$T/hop.seen')\" = 1 ] && grep -qi '^connection: keep-alive' '$T/hop.seen'" "$T/hop"
check "X-Forwarded-For at the backend: the client's address appended" \
    "grep -q '^X-Forwarded-For: 10.0.0.1, 127.0.0.1' '$T/hop.seen'" "$T/hop"
printf 'GET /conn-close/100 HTTP/1.1\r\nHost: t\r\n\r\nGET /size/4095 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | raw srvclose
check "the server's Connection: close does not reach the client, whose connection stays open for the next request" \
    "[ \$(grep -ao 'HTTP/1.1 200 ' '$T/srvclose' | wc -l) = 2 ] && [ \$(grep -aci '^connection: close' '$T/srvclose') = 1 ] && [ \$(stat -c %s '$T/srvclose') -gt 4195 ]" "$T/srvclose"
printf 'GET /close/100 HTTP/1.1\r\nHost: t\r\n\r\n' | raw eofbody
check "a close-delimited response: Connection: close to the client, then closed" \
    "grep -aqi '^connection: close' '$T/eofbody' && [ \$(grep -ac '^HTTP/1.1 200 ' '$T/eofbody') = 1 ]" "$T/eofbody"
stop_relay http
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/http.err"
# 7. Timeouts: slowloris clients, a server that never answers.
echo "7. timeouts: 40 slowloris clients (1 byte / 200 ms) against 32 buffers; a server that never answers"
start_relay to --buflimit 32 --reserve 2 --maxconn 4 --timeout-client 1000 --timeout-queue 4000 --timeout-server 500 \
    --timeout-idle 500
"$BIN/loadgen" slow --port "$RPORT" --conns 40 --interval 200 --ready-file "$T/slow.ready" --timeout 30 > "$T/slow.out" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 20 test -s "$T/slow.ready"
"$BIN/loadgen" load --port "$RPORT" --conns 5 --requests 20 --path /size/20000 --verify --timeout 20 > "$T/fast.out" 2>&1
lrc=$?
slow_alive=no; alive "$SPID" && slow_alive=yes
check "100 fast requests succeeded alongside 40 slow clients (loadgen exit $lrc, slow client still running: $slow_alive)" \
    "[ $lrc = 0 ] && [ $slow_alive = yes ]" "$T/fast.out"
wait "$SPID"
src=$?
sed 's/^/       /' "$T/slow.out"
check "every slow connection was closed by the relay (loadgen slow exit $src)" \
    "[ $src = 0 ] && grep -q 'loadgen slow: 40 connections, 40 closed by the proxy' '$T/slow.out'" "$T/slow.out"
check "slow heads were answered 408 ($(info to 'client timeouts') client timeouts)" \
    "grep -q ' [1-9][0-9]* answered 408' '$T/slow.out' && [ \"\$(info to 'client timeouts')\" -ge 1 ]" "$T/slow.out"
curl -sS -o /dev/null -w '%{http_code}' "$(URL /hang)" > "$T/code"
check "a server that never answers: 504 ($(cat "$T/code"))" "[ \"\$(cat '$T/code')\" = 504 ] && [ \"\$(info to 'server timeouts')\" = 1 ]"
curl -sS -o "$T/got" "$(URL /size/100000)"
check "served normally afterwards" "cmp -s '$T/got' '$T/want.100000'"
check "no buffer held once the slow clients are gone" "[ \"\$(info to 'buffers used')\" = 0 ]"
"$BIN/loadgen" idle --port "$RPORT" --conns 10 --path /size/100 --timeout 30 > "$T/idle-to.out" 2>&1 &
LPID=$!
PIDS+=("$LPID")
wait_for 20 info_ge to 'idle timeouts' 10
kill -TERM "$LPID"; wait "$LPID"
check "10 idle keep-alive connections closed by the relay ($(info to 'idle timeouts') idle timeouts)" \
    "grep -q '10 idle connections closed by the proxy' '$T/idle-to.out' && [ \"\$(info to sessions)\" = 0 ]" "$T/idle-to.out"
stop_relay to
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/to.err"
start_relay q --maxconn 1 --timeout-server 3000 --timeout-queue 300
curl -sS -o /dev/null -w '%{http_code}' "$(URL /hang)" > "$T/code1" &
CPID=$!
wait_for 10 info_ge q 'server busy' 1
curl -sS -o /dev/null -w '%{http_code}' "$(URL /size/100)" > "$T/code2"
wait "$CPID"
check "queued behind a stuck request: 503 ($(cat "$T/code2")), the stuck one 504 ($(cat "$T/code1"))" \
    "[ \"\$(cat '$T/code2')\" = 503 ] && [ \"\$(cat '$T/code1')\" = 504 ] && [ \"\$(info q 'queue timeouts')\" = 1 ]"
stop_relay q
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/q.err"

# 8. --max-clients pauses the listener: the next client waits, then is served.
echo "8. --max-clients 2: the third client waits in the backlog, is not refused"
start_relay mc --max-clients 2 --timeout-client 60000
"$BIN/loadgen" slow --port "$RPORT" --conns 2 --interval 0 --ready-file "$T/mc.ready" --timeout 30 > "$T/mc.out" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 20 test -s "$T/mc.ready"
wait_for 10 info_ge mc sessions 2
curl -sS -o "$T/got" --max-time 20 "$(URL /size/4096)" &
CPID=$!
wait_for 10 info_ge mc 'listener pauses' 1
check "the listener paused at 2 clients, the third is waiting (curl running)" \
    "[ \"\$(info mc 'listener pauses')\" -ge 1 ] && alive $CPID && [ \"\$(info mc accepted)\" = 2 ]"
kill -TERM "$SPID"; wait "$SPID"
wait "$CPID"
crc=$?
check "served once a client left (curl exit $crc), none accepted-then-closed (refused $(info mc refused))" \
    "[ $crc = 0 ] && cmp -s '$T/got' '$T/want.4096' && [ \"\$(info mc refused)\" = 0 ]"
stop_relay mc
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/mc.err"

# 9. Out of descriptors: ulimit -n 64, 100 idle connections. No busy loop.
echo "9. ulimit -n 64, 100 idle connections: the listener pauses on EMFILE"
RELAY_WRAP=lowfd start_relay fd --timeout-client 60000
"$BIN/loadgen" slow --port "$RPORT" --conns 100 --interval 0 --ready-file "$T/fd.ready" --timeout 60 > "$T/fdslow.out" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 20 test -s "$T/fd.ready"
c0=$(cpu "$RPID")
sleep 3                                     # a measurement over 3 s, not a synchronisation
c1=$(cpu "$RPID")
ticks=$((c1 - c0))
check "idle at the descriptor limit: $ticks ticks of CPU in 3 s (< 60; a busy loop uses ~300)" "[ $ticks -lt 60 ]"
kill -TERM "$SPID"; wait "$SPID"
wait_for 20 curl -sS -o "$T/got" --max-time 5 "$(URL /size/4096)"
check "a new connection is served once the others closed" "cmp -s '$T/got' '$T/want.4096'"
check "the listener was paused ($(info fd 'listener pauses') times)" "[ \"\$(info fd 'listener pauses')\" -ge 1 ]"
stop_relay fd
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/fd.err"

# 10. SIGTERM drains: a response in flight completes, then exit 0.
echo "10. SIGTERM during a 32 MiB response read at 8 MB/s: it completes"
"$BIN/backend" --body 33554432 > "$T/want.32m"
start_relay dr --grace 30000
curl -sS --limit-rate 8M -o "$T/got.32m" "$(URL /size/33554432)" &
CPID=$!
wait_for 10 test -s "$T/got.32m"
stop_relay dr
wait "$CPID"
crc=$?
check "the response in flight completed byte for byte (curl exit $crc)" "[ $crc = 0 ] && cmp -s '$T/got.32m' '$T/want.32m'"
check "the relay exited 0 after draining (exit $RC)" "[ $RC = 0 ]" "$T/dr.err"

# 11. Clients that stop reading: the send timer resets them, their buffers go back.
echo "11. 3 clients that never read a 64 MiB response (--timeout-send 4000), buffer limit 8, maxconn 4"
start_relay snd --buflimit 8 --reserve 2 --maxconn 4 --timeout-send 4000
"$BIN/loadgen" stuck --port "$RPORT" --conns 3 --path /size/67108864 --timeout 30 > "$T/stuck.out" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 20 held_ge snd 3 3
read -r used busy < "$T/snd.held"
check "the stuck clients hold a response buffer and a server slot each ($used buffers used, $busy slots busy)" \
    "[ '$used' = 3 ] && [ '$busy' = 3 ]"
"$BIN/loadgen" load --port "$RPORT" --conns 5 --requests 20 --path /size/20000 --verify --timeout 20 > "$T/snd-fast.out" 2>&1
lrc=$?
stuck_alive=no; alive "$SPID" && stuck_alive=yes
check "100 requests of other clients served meanwhile (loadgen exit $lrc, stuck clients still held: $stuck_alive)" \
    "[ $lrc = 0 ] && [ $stuck_alive = yes ]" "$T/snd-fast.out"
wait "$SPID"
src=$?
sed 's/^/       /' "$T/stuck.out"
check "every stuck client was reset by the relay (loadgen stuck exit $src)" \
    "[ $src = 0 ] && grep -q ' 3 reset or closed by the proxy' '$T/stuck.out'" "$T/stuck.out"
check "3 send timeouts ($(info snd 'send timeouts')), buffers used back to 0, no session, no slot held" \
    "[ \"\$(info snd 'send timeouts')\" = 3 ] && [ \"\$(info snd 'buffers used')\" = 0 ] && [ \"\$(info snd sessions)\" = 0 ] && [ \"\$(info snd 'server busy')\" = 0 ]"
curl -sS -o "$T/got" "$(URL /size/100000)"
check "served normally afterwards" "cmp -s '$T/got' '$T/want.100000'"
stop_relay snd
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/snd.err"
# More stuck readers than buffers: response buffers are taken with margin 0,
# so they get the reserve too and nothing is left for requests; the send
# timer is what ends the starvation, well before the queue timeout (10 s).
echo "   10 stuck clients against 8 buffers, then a client of 5 x 20 requests"
start_relay snd2 --buflimit 8 --reserve 2 --maxconn 12 --timeout-send 2000
"$BIN/loadgen" stuck --port "$RPORT" --conns 10 --path /size/67108864 --timeout 30 > "$T/stuck2.out" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 20 held_ge snd2 8 0
read -r used busy < "$T/snd2.held"
check "the stuck clients hold every buffer, the reserve included ($used of 8 used)" "[ '$used' = 8 ]"
"$BIN/loadgen" load --port "$RPORT" --conns 5 --requests 20 --path /size/20000 --verify --timeout 20 > "$T/snd2-fast.out" 2>&1
lrc=$?
check "all 100 requests served once the send timer freed buffers (loadgen exit $lrc, $(info snd2 'queue timeouts') queue timeouts)" \
    "[ $lrc = 0 ] && [ \"\$(info snd2 'queue timeouts')\" = 0 ]" "$T/snd2-fast.out"
wait "$SPID"
src=$?
check "the 10 stuck clients reset ($(info snd2 'send timeouts') send timeouts), no buffer held after" \
    "[ $src = 0 ] && [ \"\$(info snd2 'send timeouts')\" = 10 ] && [ \"\$(info snd2 'buffers used')\" = 0 ]" "$T/stuck2.out"
stop_relay snd2
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/snd2.err"

# 12. A server that never completes the handshake: the connect timeout, 503.
# backend --blackhole listens with a backlog of 0 that one connection of its
# own fills, and never accepts: the kernel drops the relay's SYN. (Not an
# unroutable address such as 10.255.255.1: without a route it fails at once
# with ENETUNREACH, and behind an intercepting network something answers it.)
echo "12. a server whose accept queue is full (SYNs dropped): --timeout-connect 300"
rm -f "$T/bh.port"
"$BIN/backend" --blackhole --port-file "$T/bh.port" &
PIDS+=($!)
wait_for 10 test -s "$T/bh.port" || { echo "backend --blackhole did not start"; exit 1; }
BPORT=$(cat "$T/bh.port") start_relay ct --timeout-connect 300 --timeout-server 3000
curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "$(URL /size/100)" > "$T/code"
check "no handshake: 503 ($(cat "$T/code")), one connect timeout ($(info ct 'connect timeouts')), no server timeout" \
    "[ \"\$(cat '$T/code')\" = 503 ] && [ \"\$(info ct 'connect timeouts')\" = 1 ] && [ \"\$(info ct 'server timeouts')\" = 0 ]"
check "nothing held after it (buffers used $(info ct 'buffers used'), server busy $(info ct 'server busy'), sessions $(info ct sessions))" \
    "[ \"\$(info ct 'buffers used')\" = 0 ] && [ \"\$(info ct 'server busy')\" = 0 ] && [ \"\$(info ct sessions)\" = 0 ]"
stop_relay ct
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/ct.err"

# 13. Response framing (RFC 9112): what the relay does with what a server
# sends. backend's /raw/NAME are canned responses, the connection kept open.
# One thread, maxconn 1, no idle gc: the relay keeps one server connection
# and reuses it unless it closes it (server connections opened counts).
echo "13. response framing: Content-Length with Transfer-Encoding, differing lengths, bad lines, hop-by-hop, Connection: close"
start_relay rsp --idle-gc 0
curl -sS -o /dev/null "$(URL /size/10)"
opened0=$(info rsp 'server connections opened')
bad_resp=0
for name in te-cl cl-differ cl-list no-colon sp-colon fold ctl status; do
    printf 'GET /raw/%s HTTP/1.1\r\nHost: t\r\n\r\n' "$name" | raw "r-$name"
    check "a response with $name: 502, the client connection closed" \
        "[ \"\$(grep -ac '^HTTP/1.1 ' '$T/r-$name')\" = 1 ] && head -n 1 '$T/r-$name' | grep -q '^HTTP/1.1 502 '" "$T/r-$name"
    bad_resp=$((bad_resp + 1))
done
curl -sS -o "$T/got" "$(URL /size/4096)"
opened1=$(info rsp 'server connections opened')
check "each bad response closed its server connection, none was reused ($((opened1 - opened0)) opened for $bad_resp bad responses and 1 more request, which got its body byte for byte)" \
    "[ $((opened1 - opened0)) = $bad_resp ] && cmp -s '$T/got' '$T/want.4096'"
printf 'GET /raw/cl-same HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | raw r-cl-same
check "two identical Content-Lengths: 200, one Content-Length: 3, the body" \
    "head -n 1 '$T/r-cl-same' | grep -q '^HTTP/1.1 200 ' && [ \"\$(grep -aci '^content-length: 3' '$T/r-cl-same')\" = 1 ] && [ \"\$(tail -c 3 '$T/r-cl-same')\" = abc ]" "$T/r-cl-same"
printf 'GET /raw/hop HTTP/1.1\r\nHost: t\r\n\r\nGET /size/10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | raw r-hop
sed -n '1,/^\r$/p' "$T/r-hop" > "$T/r-hop.head"
check "hop-by-hop fields of a response are not forwarded (X-Hop named by Connection, Keep-Alive, Proxy-Connection, Trailer, Upgrade, Connection)" \
    "grep -qi '^x-kept: yes' '$T/r-hop.head' && ! grep -Eqi '^(x-hop|keep-alive|proxy-connection|trailer|upgrade|connection):' '$T/r-hop.head' && [ \$(grep -ao 'HTTP/1.1 200 ' '$T/r-hop' | wc -l) = 2 ]" "$T/r-hop"
opened0=$(info rsp 'server connections opened')
printf 'GET /conn-close/10 HTTP/1.1\r\nHost: t\r\n\r\nGET /size/10 HTTP/1.1\r\nHost: t\r\n\r\nGET /size/20 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' | raw r-close
opened1=$(info rsp 'server connections opened')
check "the server's Connection: close: the client connection stays (3 answers on it, 1 Connection: close, the relay's own), the server's is not reused ($((opened1 - opened0)) opened)" \
    "[ \$(grep -ao 'HTTP/1.1 200 ' '$T/r-close' | wc -l) = 3 ] && [ \"\$(grep -aci '^connection:' '$T/r-close')\" = 1 ] && [ $((opened1 - opened0)) = 1 ]" "$T/r-close"
stop_relay rsp
check "clean exit (exit $RC)" "[ $RC = 0 ]" "$T/rsp.err"

echo "test-relay: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
