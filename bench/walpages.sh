#!/usr/bin/env bash
# bench/walpages.sh BUILD_DIR [SECONDS] — which b-trees the group commits
# write. Runs the create+confirm load (64 connections) for SECONDS (3), kills
# the daemon with SIGKILL so the WAL stays, then reads the frames of the
# WAL's current generation and names the table or index owning each page
# (SQLite's dbstat on a copy). Prints frames per commit, and per b-tree the
# frames per commit and how many of them are interior pages. Every frame is
# a whole page written and fdatasynced, so this is where a commit's bytes go.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SECONDS]" >&2; exit 2; }
BIN=$(cd "$1" 2>/dev/null && pwd)/turnpike || { echo "bench: no directory $1" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: no executable $BIN" >&2; exit 1; }
SECS=${2:-3}
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || { echo "bench: SECONDS must be a positive integer" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/turnpike-walpages.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
KEY=$("$BIN" merchant create --data "$TMP" --name bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_key"])')
"$BIN" serve --listen 127.0.0.1:0 --data "$TMP" >/dev/null 2>"$TMP/serve.log" &
PID=$!
for _ in $(seq 1 100); do [ -s "$TMP/serve.addr" ] && break; sleep 0.1; done
[ -s "$TMP/serve.addr" ] || { tail -n 20 "$TMP/serve.log" >&2; echo "bench: no serve.addr" >&2; exit 1; }
TURNPIKE_KEY=$KEY BENCH_RUN_ID=$$-$RANDOM timeout -k 5 $((SECS + 30)) \
    wrk -t 2 -c 64 -d "${SECS}s" -s "$HERE/pay.lua" "http://$(head -n 1 "$TMP/serve.addr")" >/dev/null
kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
mkdir "$TMP/copy"
cp "$TMP/turnpike.db" "$TMP/turnpike.db-wal" "$TMP/copy/"
python3 - "$TMP/copy" <<'PY'
import collections, sqlite3, struct, sys
d = sys.argv[1]
wal = open(d + "/turnpike.db-wal", "rb").read()
page = struct.unpack(">I", wal[8:12])[0]
salt = wal[16:24]
frames, off = [], 32
while off + 24 + page <= len(wal) and wal[off + 8:off + 16] == salt:
    frames.append(struct.unpack(">II", wal[off:off + 8]))
    off += 24 + page
commits = sum(1 for _, c in frames if c) or 1
# Frames after the last commit mark are not committed: leave them out.
while frames and frames[-1][1] == 0:
    frames.pop()
owner = {p: (n, t) for n, p, t in sqlite3.connect(d + "/turnpike.db").execute(
    "SELECT name, pageno, pagetype FROM dbstat")}
total, interior = collections.Counter(), collections.Counter()
for p, _ in frames:
    name, kind = owner.get(p, ("(free or new)", ""))
    total[name] += 1
    interior[name] += kind == "internal"
print("page size %d: %d commits, %.1f frames (%.0f KB) per commit" %
      (page, commits, len(frames) / commits, len(frames) * page / 1024 / commits))
for name, n in total.most_common():
    print("  %-34s %6.2f per commit (interior %.2f)" % (name, n / commits, interior[name] / commits))
PY
