#!/usr/bin/env bash
# bench/instructions.sh BUILD_DIR [SECONDS] — instructions per durable
# create+confirm, counted by callgrind: a figure that does not drift with
# what else the machine is doing, for comparing two builds (run it on both).
# The daemon runs under valgrind with instrumentation off; after a 3 s
# warm-up it is switched on for SECONDS (20) of wrk with 8 connections, then
# off again. Timed background work (heartbeats, processor statistics) runs
# whatever the load, and under valgrind (~50 times slower) it would weigh on
# the per-payment figure by how many payments the machine let through: the
# daemon is then measured idle for BENCH_IDLE (5) seconds and that rate is
# taken off. Prints payments, instructions, instructions per payment, the
# group-commit writer's part of it and the rest, and the ten most expensive
# functions (inclusive).
#
# Environment: BENCH_KEEP=1 keeps the temp dir (callgrind.out for
# callgrind_annotate); BENCH_FLOW=saved charges one customer's saved card
# off-session, as bench/run.sh does. Exits non-zero only when something
# fails to start.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SECONDS]" >&2; exit 2; }
BIN=$(cd "$1" 2>/dev/null && pwd)/turnpike || { echo "bench: no directory $1" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: no executable $BIN" >&2; exit 1; }
SECS=${2:-20}
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || { echo "bench: SECONDS must be a positive integer" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate wrk sqlite3 python3 bc; do
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
export BENCH_BODY=
if [ "${BENCH_FLOW:-token}" = saved ]; then
    api() { curl -fsS --max-time 60 -u "$KEY:" "http://$ADDR$1" "${@:2}"; }
    pyid() { python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
    CUS=$(api /v1/customers -d email=bench@example.test | pyid)
    PM=$(api /v1/payment_methods -d type=card -d 'card[number]=4242424242424242' -d 'card[exp_month]=12' \
        -d "card[exp_year]=$(($(date +%Y) + 3))" -d 'card[cvc]=123' | pyid)
    api "/v1/payment_methods/$PM/attach" -d "customer=$CUS" >/dev/null
    BENCH_BODY="amount=1999&currency=usd&confirm=true&customer=$CUS&payment_method=$PM&off_session=true"
fi
load() { # SECONDS RUN_ID
    TURNPIKE_KEY=$KEY BENCH_RUN_ID=$2 timeout -k 5 $(($1 + 60)) \
        wrk -t 1 -c 8 -d "${1}s" --timeout 20s -s "$HERE/pay.lua" "http://$ADDR" >"$TMP/wrk.$2" 2>&1 || true
}
count() { sqlite3 -readonly -cmd '.timeout 5000' "$TMP/turnpike.db" "select count(*) from payment_intents"; }
load 3 "w$$"
sleep 1
N0=$(count)
callgrind_control -z "$PID" >/dev/null
callgrind_control -i on "$PID" >/dev/null
T0=$(date +%s.%N)
load "$SECS" "m$$"
sleep 1
T1=$(date +%s.%N)
callgrind_control -d load "$PID" >/dev/null
N1=$(count)
# The same daemon idle for IDLE seconds: timed work (heartbeats, statistics)
# goes on without payments; its rate is taken off the loaded window.
IDLE=${BENCH_IDLE:-5}
I0=$(date +%s.%N)
sleep "$IDLE"
I1=$(date +%s.%N)
callgrind_control -d idle "$PID" >/dev/null
callgrind_control -i off "$PID" >/dev/null
kill "$PID"; wait "$PID" 2>/dev/null || true
PID=
N=$((N1 - N0))
part() { awk '/^totals:/ {print $2; exit}' "$(ls "$TMP"/callgrind.out.* | xargs grep -l "^desc: Trigger: dump $1" | head -n 1)"; }
IR=$(part load)
IR_IDLE=$(part idle)
[ "$N" -gt 0 ] && [ -n "$IR" ] && [ -n "$IR_IDLE" ] || { echo "bench: no payments or no counts" >&2; exit 1; }
LOADF=$(ls "$TMP"/callgrind.out.* | xargs grep -l "^desc: Trigger: dump load" | head -n 1)
callgrind_annotate --inclusive=yes "$LOADF" 2>/dev/null >"$TMP/annotate.txt"
# The group-commit writer's share depends on how many change sets each
# commit gathers, which varies between runs; the rest does not.
WRITER=$(awk '/store\/writer.c:writer_main/ {gsub(",", "", $1); print $1; exit}' "$TMP/annotate.txt")
echo "== instructions per create+confirm (callgrind, $SECS s, wrk 8 connections) =="
awk -v n="$N" -v ir="$IR" -v idle="$IR_IDLE" -v w="${WRITER:-0}" -v lt="$(echo "$T1 - $T0" | bc)" \
    -v it="$(echo "$I1 - $I0" | bc)" 'BEGIN {
    rate = idle / it
    printf "payments %d  instructions %.0f over %.1f s (idle %.0f/s taken off)\n", n, ir, lt, rate
    printf "per payment %.0f   writer thread %.0f   everything else %.0f\n",
        (ir - rate * lt) / n, w / n, (ir - rate * lt - w) / n }'
grep -E '^ *[0-9,]+ \(' "$TMP/annotate.txt" | sed -n '2,11p'
