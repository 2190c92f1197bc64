#!/usr/bin/env bash
# bench/floor.sh — what the storage shape of a payment costs by itself.
# Builds bench/floor.c (libmicrohttpd + SQLite WAL synchronous=FULL, two
# group commits per payment, no business logic; see its header) and runs the
# wrk load of bench/run.sh (bench/pay.lua, 64 connections, 2 threads) against
# it once per shape: extra rows per outcome commit x bytes per row, in a table
# with a second index. Prints payments/s, p99 and the floor's CPU per payment.
#
# Environment: BENCH_SECONDS (8), BENCH_CONNS (64), BENCH_THREADS (2),
# FLOOR_SHAPES ("0x0 3x300 10x30 1x3000 10x300": ROWSxBYTES, space-separated).
# Exits non-zero only when something fails to build or start.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${BENCH_SECONDS:-8}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
SHAPES=${FLOOR_SHAPES:-0x0 3x300 10x30 1x3000 10x300}
for tool in cc wrk; do
    command -v "$tool" >/dev/null || { echo "floor: missing $tool" >&2; exit 1; }
done
TMP=$(mktemp -d /tmp/turnpike-floor.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
cc -O2 -o "$TMP/floor" -I"$HERE/../src" "$HERE/floor.c" "$HERE/../src/store/sqlite/pcache.c" -lmicrohttpd -lsqlite3 -lpthread || { echo "floor: build failed" >&2; exit 1; }
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
printf "%-22s %12s %10s %10s %16s\n" "extra rows x bytes" "payments/s" "p50" "p99" "CPU/payment"
for shape in $SHAPES; do
    rows=${shape%x*}
    bytes=${shape#*x}
    [[ $rows =~ ^[0-9]+$ && $bytes =~ ^[0-9]+$ ]] || { echo "floor: bad shape $shape" >&2; exit 2; }
    rm -rf "$TMP/data" && mkdir "$TMP/data"
    FLOOR_EXTRA_ROWS=$rows FLOOR_EXTRA_BYTES=$bytes "$TMP/floor" "$TMP/data" &
    PID=$!
    for _ in $(seq 1 50); do [ -s "$TMP/data/floor.addr" ] && break; sleep 0.1; done
    [ -s "$TMP/data/floor.addr" ] || { echo "floor: did not start" >&2; exit 1; }
    ADDR=$(head -n 1 "$TMP/data/floor.addr")
    t0=$(ticks "$PID")
    TURNPIKE_KEY=x BENCH_RUN_ID=floor$rows$bytes timeout -k 5 $((SECS + 60)) \
        wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --timeout 10s --latency -s "$HERE/pay.lua" "http://$ADDR" \
        >"$TMP/wrk.out" 2>&1 || { cat "$TMP/wrk.out" >&2; echo "floor: wrk failed" >&2; exit 1; }
    t1=$(ticks "$PID")
    kill "$PID"
    wait "$PID" || true
    PID=
    line=$(grep '^BENCH ' "$TMP/wrk.out")
    get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$line"; }
    req=$(get requests) us=$(get duration_us)
    [ "${req:-0}" -gt 0 ] || { echo "floor: no requests completed" >&2; exit 1; }
    awk -v s="${rows} x ${bytes}" -v r="$req" -v us="$us" -v p50="$(get p50_us)" -v p99="$(get p99_us)" \
        -v t=$((t1 - t0)) -v hz="$HZ" -v n2="$(get n200)" 'BEGIN {
        printf "%-22s %12.0f %8.2f ms %8.2f ms %13.1f us%s\n", s, r / (us / 1e6), p50 / 1000, p99 / 1000,
            t / hz * 1e6 / r, (n2 == r ? "" : "  (non-200 answers!)")
    }'
done
