#!/usr/bin/env bash
# bench/run.sh BUILD_DIR — throughput of durable create+confirm payments
# through `turnpike serve`, next to nginx returning a constant 200 and the
# floor (bench/floor.c: libmicrohttpd and SQLite with two group commits per
# payment and nothing else) on the same machine with the same wrk load. See
# bench/README.md for how to read it.
#
# Environment: BENCH_SECONDS (10), BENCH_CONNS (64), BENCH_THREADS (2),
# BENCH_WARMUP (2), BENCH_KEEP=1 keeps the temp dir (database, logs),
# NGINX (/usr/sbin/nginx), BENCH_FLOW: token (default: every payment
# confirms with pm_card_visa, which creates a PaymentMethod and a vault
# record per payment, as Stripe does) or saved (every payment charges one
# customer's saved card off-session: the PaymentMethod and its vault record
# are read, not written).
#
# BENCH_CONFIG=FILE starts the daemon with --config FILE (to compare settings).
#
# BENCH_WEBHOOK=1 subscribes one webhook endpoint to every event, the nginx
# baseline answering it (POST /hook: 200), before the load; the report adds
# the deliveries made during the turnpike run and how fast the backlog then
# drains (up to 120 s, before nginx and the floor are measured).
#
# BENCH_NOSYNC=1 preloads bench/nosync.c into the daemon (fsync/fdatasync
# return at once): NOT DURABLE, measurement only, to show what the durable
# commit costs; the report says so.
#
# After the run it prints each thread's CPU per payment (ticks from
# /proc/PID/task/*/stat) and the time it spent runnable but waiting for a
# core (/proc/PID/task/*/schedstat), per second of the run.
#
# Exits non-zero only when something fails to start or dies; never because a
# figure is low.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR   (BUILD_DIR holds the turnpike binary)" >&2; exit 2; }
[ $# -eq 1 ] || usage
BIN=$(cd "$1" 2>/dev/null && pwd)/turnpike || { echo "bench: no directory $1" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: no executable $BIN" >&2; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
DURATION=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
WARMUP=${BENCH_WARMUP:-2}
NGINX=${NGINX:-/usr/sbin/nginx}
CORES=$(nproc)
HZ=$(getconf CLK_TCK)

for v in DURATION CONNS THREADS WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "bench: $v must be a positive integer" >&2; exit 2; }
done
[ "$CONNS" -ge "$THREADS" ] || { echo "bench: BENCH_CONNS must be >= BENCH_THREADS" >&2; exit 2; }
for tool in wrk sqlite3 python3 curl "$NGINX"; do
    command -v "$tool" >/dev/null || { echo "bench: missing $tool" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/turnpike-bench.XXXXXX)
DATA=$TMP/data
NGX=$TMP/nginx
mkdir -p "$DATA" "$NGX"
DAEMON_PID=
NGINX_PID=
WRK_PID=

# A child that exited but was not reaped still answers kill -0, so look at
# its state instead.
alive() {
    local st
    [ -n "$1" ] && st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}

# Ask politely, wait up to $3 seconds, then force; always reap.
stop() {
    local pid=$1 sig=$2 secs=$3 i
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        kill -"$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    set +e
    stop "$WRK_PID" TERM 5
    stop "$DAEMON_PID" TERM 10
    DAEMON_PID=
    stop "$NGINX_PID" QUIT 5
    NGINX_PID=
    stop "${FLOOR_PID:-}" TERM 5
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "bench: $*" >&2
    exit 1
}

# Total CPU ticks (user+system, all threads) of a process.
cpu_ticks() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    st=${st##*) }
    # Fields after the command name start at field 3 (state); utime is 14,
    # stime is 15.
    local -a f
    read -r -a f <<<"$st"
    echo $((f[11] + f[12]))
}

# Per thread name (threads of one name summed): CPU ticks, then run and
# run-queue wait in ns (schedstat), one line each.
thread_snap() {
    local t st name rest
    for t in /proc/"$DAEMON_PID"/task/*; do
        st=$(cat "$t/stat" 2>/dev/null) || continue
        name=${st#*(}
        name=${name%%)*}
        rest=${st##*) }
        read -r -a f <<<"$rest"
        echo "${name// /_} $((f[11] + f[12])) $(cat "$t/schedstat" 2>/dev/null || echo '0 0 0')"
    done | awk '{c[$1] += $2; r[$1] += $3; w[$1] += $4} END {for (k in c) print k, c[k], r[k], w[k]}' | sort
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Read-only count of succeeded PaymentIntents; "n/a" if the query fails.
durable_rows() {
    sqlite3 -readonly -cmd '.timeout 5000' "$DATA/turnpike.db" \
        "select count(*) from payment_intents where status='succeeded'" 2>/dev/null || echo n/a
}

# run_wrk LABEL URL SECONDS RUN_ID KEY: runs wrk, prints its output, leaves
# the parsed "BENCH ..." fields in $TMP/LABEL.out.
run_wrk() {
    local label=$1 url=$2 secs=$3 run_id=$4 key=$5 rc=0
    # In the background so a signal to this script is handled at once (bash
    # defers traps until a foreground child returns); cleanup stops it.
    TURNPIKE_KEY=$key BENCH_RUN_ID=$run_id \
        timeout -k 5 $((secs + 60)) \
        wrk -t "$THREADS" -c "$CONNS" -d "${secs}s" --timeout 10s --latency \
        -s "$HERE/pay.lua" "$url" >"$TMP/$label.out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    sed "s/^/  [$label] /" "$TMP/$label.out"
    [ $rc -eq 0 ] || fail "wrk ($label) exited with $rc"
    grep -q '^BENCH ' "$TMP/$label.out" || fail "wrk ($label) printed no BENCH line"
}

# field LABEL NAME: one number from the BENCH line of a wrk run.
field() {
    sed -n "s/^BENCH .*\b$2=\([0-9]*\).*/\1/p" "$TMP/$1.out"
}

# ---- 1. Turnpike ----------------------------------------------------------
"$BIN" merchant create --data "$DATA" --name bench >"$TMP/merchant.json" 2>"$TMP/merchant.err" ||
    { cat "$TMP/merchant.err" >&2; fail "turnpike merchant create failed"; }
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_key"])' "$TMP/merchant.json") ||
    fail "no secret_key in: $(cat "$TMP/merchant.json")"

rm -f "$DATA/serve.addr"
PRELOAD=
if [ "${BENCH_NOSYNC:-0}" = 1 ]; then
    command -v cc >/dev/null || fail "BENCH_NOSYNC needs a C compiler"
    cc -shared -fPIC -O2 -o "$TMP/nosync.so" "$HERE/nosync.c" || fail "cannot build bench/nosync.c"
    PRELOAD=$TMP/nosync.so
    echo "bench: BENCH_NOSYNC=1: fsync/fdatasync are no-ops in the daemon: NOT DURABLE, measurement only"
fi
LD_PRELOAD=$PRELOAD "$BIN" serve --listen 127.0.0.1:0 --data "$DATA" ${BENCH_CONFIG:+--config "$BENCH_CONFIG"} >"$TMP/serve.out" 2>"$TMP/serve.log" &
DAEMON_PID=$!
for ((i = 0; i < 200; i++)); do
    [ -s "$DATA/serve.addr" ] && break
    alive "$DAEMON_PID" || { tail -n 20 "$TMP/serve.log" >&2; fail "turnpike serve exited during start"; }
    sleep 0.1
done
[ -s "$DATA/serve.addr" ] || { tail -n 20 "$TMP/serve.log" >&2; fail "no $DATA/serve.addr after 20 s"; }
TP_ADDR=$(head -n 1 "$DATA/serve.addr")
[[ $TP_ADDR =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "unexpected serve.addr: $TP_ADDR"
curl -fsS --max-time 5 "http://$TP_ADDR/healthz" >/dev/null || fail "GET /healthz failed on $TP_ADDR"
FLOW=${BENCH_FLOW:-token}
export BENCH_BODY=
case $FLOW in
token) FLOW_LABEL="create+confirm (durable):  " ;;
saved)
    api() { curl -fsS --max-time 10 -u "$KEY:" "http://$TP_ADDR$1" "${@:2}"; }
    pyid() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
    CUS=$(api /v1/customers -d email=bench@example.test | pyid) || fail "customer create failed"
    PM=$(api /v1/payment_methods -d type=card -d 'card[number]=4242424242424242' -d 'card[exp_month]=12' \
        -d "card[exp_year]=$(($(date +%Y) + 3))" -d 'card[cvc]=123' | pyid) || fail "PaymentMethod create failed"
    api "/v1/payment_methods/$PM/attach" -d "customer=$CUS" >/dev/null || fail "attach failed"
    BENCH_BODY="amount=1999&currency=usd&confirm=true&customer=$CUS&payment_method=$PM&off_session=true"
    FLOW_LABEL="saved card, off-session:   "
    ;;
*) fail "BENCH_FLOW must be token or saved" ;;
esac
[ -n "$PRELOAD" ] && FLOW_LABEL="${FLOW:0:5} flow, NO fsync:        "

# ---- 2. nginx -------------------------------------------------------------
mkdir -p "$NGX"/{body,proxy,fastcgi,uwsgi,scgi}
USER_LINE=
# As root nginx would drop its workers to "nobody"; stay the same user.
[ "$(id -u)" -eq 0 ] && USER_LINE="user $(id -un) $(id -gn);"
NGX_PORT=
for attempt in 1 2 3; do
    port=$(free_port)
    sed -e "s|@PREFIX@|$NGX|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$CORES|g" \
        -e "s|@USER_LINE@|$USER_LINE|g" "$HERE/nginx.conf.in" >"$NGX/nginx.conf"
    "$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" >"$NGX/stdout" 2>&1 &
    NGINX_PID=$!
    for ((i = 0; i < 100; i++)); do
        alive "$NGINX_PID" || break
        if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$port/"; then
            NGX_PORT=$port
            break
        fi
        sleep 0.1
    done
    [ -n "$NGX_PORT" ] && break
    # Lost the race for the port (or something else); try another one.
    stop "$NGINX_PID" TERM 3
    NGINX_PID=
done
[ -n "$NGX_PORT" ] || { cat "$NGX/error.log" "$NGX/stdout" >&2 2>/dev/null; fail "nginx did not start"; }

# ---- 2b. a webhook endpoint (BENCH_WEBHOOK=1) ------------------------------
WEBHOOK=${BENCH_WEBHOOK:-0}
delivered() {
    sqlite3 -readonly -cmd '.timeout 5000' "$DATA/turnpike.db" \
        "select count(*) from webhook_deliveries where state='succeeded'" 2>/dev/null || echo 0
}
owed() {
    sqlite3 -readonly -cmd '.timeout 5000' "$DATA/turnpike.db" \
        "select count(*) from webhook_deliveries where state='pending'" 2>/dev/null || echo 0
}
if [ "$WEBHOOK" = 1 ]; then
    curl -fsS --max-time 10 -u "$KEY:" "http://$TP_ADDR/v1/webhook_endpoints" \
        -d "url=http://127.0.0.1:$NGX_PORT/hook" -d 'enabled_events[]=*' >/dev/null ||
        fail "webhook endpoint create failed"
    echo "bench: webhook endpoint -> nginx at 127.0.0.1:$NGX_PORT/hook, every event"
fi

# ---- 3. load --------------------------------------------------------------
echo "bench: turnpike at $TP_ADDR, nginx at 127.0.0.1:$NGX_PORT; $THREADS threads, $CONNS connections"
echo "bench: warmup ${WARMUP} s"
run_wrk tp-warm "http://$TP_ADDR" "$WARMUP" "$$-$RANDOM-w" "$KEY"
run_wrk ngx-warm "http://127.0.0.1:$NGX_PORT" "$WARMUP" "$$-w" ""
# Let requests that were in flight when wrk stopped reach the database
# before taking the baseline.
sleep 0.5
alive "$DAEMON_PID" || { tail -n 20 "$TMP/serve.log" >&2; fail "turnpike serve died during warmup"; }
ROWS0=$(durable_rows)
WH0=$(delivered)
CPU0=$(cpu_ticks "$DAEMON_PID")
thread_snap >"$TMP/threads0"

echo "bench: turnpike ${DURATION} s"
run_wrk tp "http://$TP_ADDR" "$DURATION" "$$-$RANDOM-m" "$KEY"
sleep 0.5
alive "$DAEMON_PID" || { tail -n 20 "$TMP/serve.log" >&2; fail "turnpike serve died during the run"; }
CPU1=$(cpu_ticks "$DAEMON_PID")
thread_snap >"$TMP/threads1"
HWM_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status")
ROWS1=$(durable_rows)
WH1=$(delivered)
WH_OWED1=$(owed)
WH_T1=$(date +%s.%N)
# The backlog drains before the baselines, so that they run on a quiet
# machine.
if [ "$WEBHOOK" = 1 ]; then
    for ((i = 0; i < 240; i++)); do
        [ "$(owed)" = 0 ] && break
        sleep 0.5
    done
    WH2=$(delivered)
    WH_OWED2=$(owed)
    WH_T2=$(date +%s.%N)
fi


echo "bench: nginx ${DURATION} s"
run_wrk ngx "http://127.0.0.1:$NGX_PORT" "$DURATION" "$$-n" ""

# ---- 3b. the floor (bench/floor.c) ----------------------------------------
# libmicrohttpd and SQLite as Turnpike uses them, two group commits per
# payment, one row each, nothing else: what a durable payment costs here
# before any of the work a payment is for.
FLOOR_PID=

if cc -O2 -o "$TMP/floor" -I"$HERE/../src" "$HERE/floor.c" "$HERE/../src/store/sqlite/pcache.c" -lmicrohttpd -lsqlite3 -lpthread 2>"$TMP/floor.err"; then
    mkdir -p "$TMP/floor.d"
    "$TMP/floor" "$TMP/floor.d" 2>"$TMP/floor.log" &
    FLOOR_PID=$!
    for ((i = 0; i < 50; i++)); do [ -s "$TMP/floor.d/floor.addr" ] && break; sleep 0.1; done
fi
if [ -n "$FLOOR_PID" ] && [ -s "$TMP/floor.d/floor.addr" ]; then
    FL_ADDR=$(head -n 1 "$TMP/floor.d/floor.addr")
    echo "bench: floor ${DURATION} s (bench/floor.c at $FL_ADDR)"
    FL_CPU0=$(cpu_ticks "$FLOOR_PID")
    run_wrk floor "http://$FL_ADDR" "$DURATION" "$$-f" ""
    FL_CPU1=$(cpu_ticks "$FLOOR_PID")
    stop "$FLOOR_PID" TERM 5
    FLOOR_PID=
else
    echo "bench: the floor did not build or start; skipped ($(head -c 300 "$TMP/floor.err" "$TMP/floor.log" 2>/dev/null))"
    [ -n "$FLOOR_PID" ] && stop "$FLOOR_PID" KILL 1
    FLOOR_PID=
fi

# ---- 4. report ------------------------------------------------------------
TP_US=$(field tp duration_us)
TP_200=$(field tp n200)
TP_NON2XX=$(field tp non2xx)
TP_SOCK=$(field tp sock_errors)
NG_US=$(field ngx duration_us)
NG_2XX=$(field ngx n2xx)
NG_NON2XX=$(field ngx non2xx)

if [[ $ROWS0 =~ ^[0-9]+$ && $ROWS1 =~ ^[0-9]+$ ]]; then
    ROWS=$((ROWS1 - ROWS0))
else
    ROWS="n/a (sqlite3 query failed)"
fi

awk -v cores="$CORES" -v conns="$CONNS" -v secs="$DURATION" -v hz="$HZ" \
    -v tp_us="$TP_US" -v tp_200="$TP_200" -v tp_non2xx="$TP_NON2XX" -v tp_sock="$TP_SOCK" \
    -v tp_p50="$(field tp p50_us)" -v tp_p90="$(field tp p90_us)" -v tp_p99="$(field tp p99_us)" \
    -v ng_us="$NG_US" -v ng_2xx="$NG_2XX" -v ng_non2xx="$NG_NON2XX" \
    -v ng_p50="$(field ngx p50_us)" -v ng_p90="$(field ngx p90_us)" -v ng_p99="$(field ngx p99_us)" \
    -v fl_us="$(field floor duration_us 2>/dev/null)" -v fl_200="$(field floor n200 2>/dev/null)" \
    -v fl_p50="$(field floor p50_us 2>/dev/null)" -v fl_p90="$(field floor p90_us 2>/dev/null)" \
    -v fl_p99="$(field floor p99_us 2>/dev/null)" -v fl_cpu="$((${FL_CPU1:-0} - ${FL_CPU0:-0}))" \
    -v hwm_kb="$HWM_KB" -v cpu="$((CPU1 - CPU0))" -v rows="$ROWS" -v flow="$FLOW_LABEL" '
BEGIN {
    tp_rate = tp_us > 0 ? tp_200 / (tp_us / 1e6) : 0
    ng_rate = ng_us > 0 ? ng_2xx / (ng_us / 1e6) : 0
    printf "\n== Turnpike bench (%d cores, %d conns, %d s) ==\n", cores, conns, secs
    printf "turnpike  %s%6.0f payments/s  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  non-2xx %d  socket errors %d  peak RSS %.1f MiB\n",
        flow, tp_rate, tp_p50 / 1000, tp_p90 / 1000, tp_p99 / 1000, tp_non2xx, tp_sock, hwm_kb / 1024
    printf "nginx     constant 200:              %6.0f req/s       p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  non-2xx %d\n",
        ng_rate, ng_p50 / 1000, ng_p90 / 1000, ng_p99 / 1000, ng_non2xx
    if (fl_us > 0 && fl_200 > 0) {
        fl_rate = fl_200 / (fl_us / 1e6)
        printf "floor     MHD+SQLite, 2 commits:     %6.0f payments/s  p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  CPU %.1f us/payment\n",
            fl_rate, fl_p50 / 1000, fl_p90 / 1000, fl_p99 / 1000, fl_cpu / hz * 1e6 / fl_200
    }
    if (ng_rate > 0) printf "ratio turnpike/nginx: %.2f\n", tp_rate / ng_rate
    if (fl_rate > 0) printf "ratio turnpike/floor: %.2f\n", tp_rate / fl_rate
    cpu_s = cpu / hz
    if (tp_200 > 0)
        printf "turnpike CPU: %.1f ms per 1000 payments (%.2f of %d cores busy)\n",
            cpu_s * 1000 / (tp_200 / 1000), cpu_s / (tp_us / 1e6), cores
    printf "durable rows: %s (wrk counted 200s: %d)\n", rows, tp_200
}'
if [ "$WEBHOOK" = 1 ]; then
    awk -v d0="$WH0" -v d1="$WH1" -v d2="$WH2" -v o1="$WH_OWED1" -v o2="$WH_OWED2" -v us="$TP_US" \
        -v t1="$WH_T1" -v t2="$WH_T2" 'BEGIN {
        printf "webhooks: %d delivered during the run (%.0f/s), %d owed at its end; then %.0f/s for %.1f s, %d still owed\n",
            d1 - d0, (d1 - d0) / (us / 1e6), o1, (t2 > t1 ? (d2 - d1) / (t2 - t1) : 0), t2 - t1, o2
    }'
fi
# Per thread: CPU per payment, and per second of the run the time on a core
# and runnable but waiting for one.
join "$TMP/threads0" "$TMP/threads1" | awk -v n="$TP_200" -v hz="$HZ" -v us="$TP_US" '
BEGIN { print "threads (CPU per payment by ticks; per second of the run: on a core / waiting for one):" }
{
    cpu = ($5 - $2) / hz * 1e6 / (n > 0 ? n : 1)
    run = ($6 - $3) / (us / 1e6) / 1e6
    wait = ($7 - $4) / (us / 1e6) / 1e6
    if (cpu >= 0.5 || run >= 5)
        printf "  %-14s %7.1f us/payment   %6.1f / %6.1f ms/s\n", $1, cpu, run, wait
}'
if [ -n "$PRELOAD" ]; then
    echo "NOT DURABLE: fsync/fdatasync were no-ops (BENCH_NOSYNC=1); a measurement of the commit's cost only"
fi
if [[ $ROWS =~ ^[0-9]+$ ]]; then
    diff=$((ROWS - TP_200))
    if [ "$diff" -ge 0 ] && [ "$diff" -le "$CONNS" ]; then
        verdict=consistent
    else
        verdict=MISMATCH
    fi
    # wrk drops the answers to requests in flight when it stops, yet the
    # daemon commits them: up to one per connection more rows than 200s.
    echo "durability check: rows - 200s = $diff (0..$CONNS expected): $verdict"
fi
