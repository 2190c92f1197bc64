#!/usr/bin/env bash
# bench/orchestration.sh BUILD_DIR — processor orchestration figures (issue 3)
# against the real `turnpike sim` on loopback:
#   1. throughput through the REST connector and through the ISO 8583 link
#      (sim latency 0): payments/s, p50, p99;
#   2. fault run: three REST processors, c answers 5xx 20% of the time, a
#      goes down a third into the run: success rate, recovered share of
#      transient failures, time from outage to reroute, double charges;
#   3. routing run: processors with different true approval rates (sim
#      decline_rate) and fees: the router vs the best single processor vs an
#      even split ("round robin"); then a segmented run, where each of two
#      processors is the better one for one card brand (half the payments
#      visa, half mastercard): the router vs each single processor vs the
#      split.
# See docs/routing.md for what the figures mean.
#
# Environment: BENCH_SECONDS (5), BENCH_CONNS (64, as bench/run.sh), BENCH_THREADS (2),
# BENCH_KEEP=1 keeps the temp dir. Exits non-zero only when something fails
# to start; never because a figure is low.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BIN=$(cd "$1" 2>/dev/null && pwd)/turnpike || { echo "bench: no directory $1" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: no executable $BIN" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${BENCH_SECONDS:-5}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
for v in SECS CONNS THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "bench: $v must be a positive integer" >&2; exit 2; }
done
for tool in wrk python3; do
    command -v "$tool" >/dev/null || { echo "bench: missing $tool" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/turnpike-orch.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
fail() { echo "bench: $*" >&2; exit 1; }
R() { python3 "$HERE/orch_report.py" "$@"; }

# wait_file FILE LINES PID: until FILE has LINES lines (20 s)
wait_file() {
    local i
    for i in $(seq 1 200); do
        [ -s "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_sim() {
    mkdir -p "$TMP/sim"
    "$BIN" sim --listen 127.0.0.1:0 --iso-listen 127.0.0.1:0 --data "$TMP/sim" >"$TMP/sim.log" 2>&1 &
    SIM_PID=$!
    PIDS+=("$SIM_PID")
    wait_file "$TMP/sim/sim.addr" 2 "$SIM_PID" || { tail -n 20 "$TMP/sim.log" >&2; fail "sim did not start"; }
    SIM_REST=$(sed -n 1p "$TMP/sim/sim.addr")
    SIM_ISO=$(sed -n 2p "$TMP/sim/sim.addr")
}

# start_gw NAME CONFIG_TEXT: a fresh gateway; sets GW, KEY, GW_PID, GW_DB. Returns 1 if it fails to start.
start_gw() {
    local dir=$TMP/gw-$1
    mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir.ini"
    "$BIN" merchant create --data "$dir" --name bench >"$dir.merchant" 2>>"$dir.log" || return 1
    KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_key"])' "$dir.merchant")
    "$BIN" serve --listen 127.0.0.1:0 --data "$dir" --config "$dir.ini" >>"$dir.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_file "$dir/serve.addr" 1 "$GW_PID" || return 1
    GW=$(sed -n 1p "$dir/serve.addr")
    GW_DB=$dir/turnpike.db
}

stop_gw() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
}

# run_wrk LABEL SECONDS: load on $GW; prints payments/s p50 p99 from the BENCH line.
run_wrk() {
    TURNPIKE_KEY=$KEY BENCH_RUN_ID="$1-$$" wrk -t "$THREADS" -c "$CONNS" -d "${2}s" --timeout 15s --latency \
        -s "$HERE/pay.lua" "http://$GW" >"$TMP/$1.wrk" 2>&1 || fail "wrk ($1) failed"
    python3 - "$TMP/$1.wrk" "$1" <<'EOF'
import re, sys
line = [l for l in open(sys.argv[1]) if l.startswith("BENCH ")][-1]
f = dict(kv.split("=") for kv in line.split()[1:])
secs = int(f["duration_us"]) / 1e6
print("%-14s payments/s %8.0f  p50 %6.1f ms  p99 %7.1f ms  (200: %s, non-2xx: %s, socket errors: %s)" % (
    sys.argv[2], int(f["n200"]) / secs, int(f["p50_us"]) / 1000, int(f["p99_us"]) / 1000,
    f["n200"], f["non2xx"], f["sock_errors"]))
EOF
}

rest_proc() { # NAME [extra lines]
    printf '[processor.%s]\ntype = restjson\nendpoint = http://%s/p/%s\ntimeout_ms = 1000\n%s\n' "$1" "$SIM_REST" "$1" "${2:-}"
}

start_sim
echo "== Turnpike orchestration bench ($(nproc) cores shared, wrk $THREADS threads / $CONNS conns, ${SECS}s per run) =="

# ---- 1. throughput ---------------------------------------------------------
echo "-- 1. throughput, sim latency 0"
R faults "$SIM_REST" r '{"latency_ms_min":0,"latency_ms_max":0}'
if start_gw rest "$(rest_proc r 'health_interval_ms = 0')"; then
    run_wrk rest-warm 1 >/dev/null
    run_wrk rest "$SECS"
    stop_gw
else
    echo "rest           gateway did not start: $(tail -n 3 "$TMP/gw-rest.log")"
fi
ISO_CFG=$(printf '[processor.iso]\ntype = iso8583\nendpoint = %s\ntimeout_ms = 1000\nterminal_id = TERM0001\nmerchant_id = BENCH0000000001\nhealth_interval_ms = 0\n' "$SIM_ISO")
if start_gw iso "$ISO_CFG"; then
    run_wrk iso-warm 1 >/dev/null
    run_wrk iso "$SECS"
    stop_gw
else
    echo "iso8583        not measured: the gateway did not start with an iso8583 processor ($(grep -o '"error":"[^"]*"' "$TMP/gw-iso.log" | tail -n 1))"
fi

# ---- 2. fault run --------------------------------------------------------------
PROBE_DELAY=$(awk -v s="$SECS" 'BEGIN { d = s / 3; if (d < 1) d = 1; printf "%.3f", d }')
echo "-- 2. fault run: a goes down at ${PROBE_DELAY}s, c returns 5xx 20% of the time"
for p in a b c; do R faults "$SIM_REST" $p '{"outage":false,"error_rate":0,"latency_ms_min":1,"latency_ms_max":5}'; done
R faults "$SIM_REST" c '{"error_rate":0.2}'
FAULT_CFG="$(printf '[routing]\nrecovery_interval_ms = 1000\n')
$(rest_proc a 'priority = 1')
$(rest_proc b 'priority = 2')
$(rest_proc c 'priority = 3')"
if start_gw fault "$FAULT_CFG"; then
    PROBE_AT=$(awk -v now="$(date +%s.%N)" -v d="$PROBE_DELAY" 'BEGIN { printf "%.3f", now + d }')
    R probe "$GW" "$KEY" "$SIM_REST" a "$PROBE_AT" "$TMP/reroute.ms" &
    PROBE_PID=$!
    run_wrk fault "$SECS"
    wait "$PROBE_PID" || true
    sleep 1
    echo "time from outage to first payment routed around a: $(head -n 1 "$TMP/reroute.ms") ms (client probe; includes breaker detection)"
    R failover "$GW_DB" "$TMP/gw-fault.log" a "$TMP/reroute.ms"
    R fault-stats "$GW_DB" "$SIM_REST"
    stop_gw
else
    echo "fault run: gateway did not start"
fi
R faults "$SIM_REST" a '{"outage":false}'

# ---- 3. routing run ---------------------------------------------------------------
# routing_run TAG PROCS FEES STRATEGY=RULE...: one fresh gateway per strategy
# (PROCS plus that strategy's route rule, "" for the router), the same load,
# then its authorization rate, fees and net per payment.
routing_run() {
    local tag=$1 procs=$2 fees=$3 spec strategy rule
    shift 3
    for spec in "$@"; do
        strategy=${spec%%=*}
        rule=${spec#*=}
        if start_gw "$tag-$strategy" "$procs
$(printf '%b' "$rule")"; then
            run_wrk "$tag-$strategy" "$SECS" >/dev/null
            sleep 0.5
            R route-stats "$GW_DB" "$strategy" "$fees"
            stop_gw
        else
            echo "$strategy: gateway did not start"
        fi
    done
}

echo "-- 3. routing run: true approval a 95% fee 3.0%, b 85% fee 2.0%, c 70% fee 1.0%"
R faults "$SIM_REST" a '{"error_rate":0,"decline_rate":0.05,"latency_ms_min":1,"latency_ms_max":3}'
R faults "$SIM_REST" b '{"error_rate":0,"decline_rate":0.15,"latency_ms_min":1,"latency_ms_max":3}'
R faults "$SIM_REST" c '{"error_rate":0,"decline_rate":0.30,"latency_ms_min":1,"latency_ms_max":3}'
routing_run route "$(rest_proc a 'fee_percent = 3.0')
$(rest_proc b 'fee_percent = 2.0')
$(rest_proc c 'fee_percent = 1.0')" "a:3.0,b:2.0,c:1.0" \
    "router=" \
    'best_single=[route.only_a]\nmerchant = *\nprocessors = a\n' \
    'round_robin=[route.even]\nmerchant = *\nprocessors = a,b,c\nsplit = a:34,b:33,c:33\n'

echo "-- 3b. segmented routing run: a approves visa 95% / mastercard 70%, b the reverse; fees 2.0% both"
R faults "$SIM_REST" sa '{"error_rate":0,"decline_rate":0,"decline_rate.visa":0.05,"decline_rate.mastercard":0.30,"latency_ms_min":1,"latency_ms_max":3}'
R faults "$SIM_REST" sb '{"error_rate":0,"decline_rate":0,"decline_rate.visa":0.30,"decline_rate.mastercard":0.05,"latency_ms_min":1,"latency_ms_max":3}'
export BENCH_BODIES="amount=1999&currency=usd&confirm=true&payment_method=pm_card_visa|amount=1999&currency=usd&confirm=true&payment_method=pm_card_mastercard"
routing_run seg "$(rest_proc sa 'fee_percent = 2.0')
$(rest_proc sb 'fee_percent = 2.0')" "sa:2.0,sb:2.0" \
    "router=" \
    'only_a=[route.only_a]\nmerchant = *\nprocessors = sa\n' \
    'only_b=[route.only_b]\nmerchant = *\nprocessors = sb\n' \
    'round_robin=[route.even]\nmerchant = *\nprocessors = sa,sb\nsplit = sa:50,sb:50\n'
unset BENCH_BODIES
