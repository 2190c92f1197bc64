#!/usr/bin/env bash
# bench/instructions.sh BUILD_DIR [SECONDS] — instructions per durable
# create+confirm, counted by callgrind: a figure that does not drift with
# what else the machine is doing, for comparing two builds (run it on both).
# The daemon runs under valgrind with instrumentation off; after a 3 s
# warm-up it is switched on for SECONDS (20) of wrk with 8 connections, then
# off again. Prints payments, instructions and instructions per payment, and
# the ten most expensive functions (inclusive). Timed background work (the
# processor statistics, heartbeats) counts too and looks ~50 times dearer per
# payment than natively, valgrind being that much slower.
#
# Environment: BENCH_KEEP=1 keeps the temp dir (callgrind.out for
# callgrind_annotate). Exits non-zero only when something fails to start.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SECONDS]" >&2; exit 2; }
BIN=$(cd "$1" 2>/dev/null && pwd)/turnpike || { echo "bench: no directory $1" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: no executable $BIN" >&2; exit 1; }
SECS=${2:-20}
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || { echo "bench: SECONDS must be a positive integer" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate wrk sqlite3 python3; do
    command -v "$tool" >/dev/null || { echo "bench: missing $tool" >&2; exit 1; }
done
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/turnpike-instr.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
KEY=$("$BIN" merchant create --data "$TMP" --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])')
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/callgrind.out" \
    "$BIN" serve --listen 127.0.0.1:0 --data "$TMP" >/dev/null 2>"$TMP/serve.log" &
PID=$!
for _ in $(seq 1 600); do [ -s "$TMP/serve.addr" ] && break; sleep 0.1; done
[ -s "$TMP/serve.addr" ] || { tail -n 20 "$TMP/serve.log" >&2; echo "bench: no serve.addr" >&2; exit 1; }
ADDR=$(head -n 1 "$TMP/serve.addr")
load() { # SECONDS RUN_ID
    TURNPIKE_KEY=$KEY BENCH_RUN_ID=$2 timeout -k 5 $(($1 + 60)) \
        wrk -t 1 -c 8 -d "${1}s" --timeout 20s -s "$HERE/pay.lua" "http://$ADDR" >"$TMP/wrk.$2" 2>&1 || true
}
count() { sqlite3 -readonly -cmd '.timeout 5000' "$TMP/turnpike.db" "select count(*) from payment_intents"; }
load 3 "w$$"
sleep 1
N0=$(count)
callgrind_control -i on "$PID" >/dev/null
load "$SECS" "m$$"
sleep 1
callgrind_control -i off "$PID" >/dev/null
N1=$(count)
kill "$PID"; wait "$PID" 2>/dev/null || true
PID=
N=$((N1 - N0))
IR=$(awk '/^totals:/ {print $2; exit}' "$TMP/callgrind.out")
[ "$N" -gt 0 ] && [ -n "$IR" ] || { echo "bench: no payments or no counts" >&2; exit 1; }
echo "== instructions per create+confirm (callgrind, $SECS s, wrk 8 connections) =="
awk -v n="$N" -v ir="$IR" 'BEGIN { printf "payments %d  instructions %.0f  per payment %.0f\n", n, ir, ir / n }'
callgrind_annotate --inclusive=yes "$TMP/callgrind.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,11p'
