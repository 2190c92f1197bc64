#!/usr/bin/env bash
# tests/tsan.sh [BUILD_DIR] [TEST ...] — the daemon and the simulator under
# ThreadSanitizer: builds BUILD_DIR (build-tsan) with -fsanitize=thread and
# runs integration tests against it (by default the ones that drive every
# thread at once: concurrent payments, the pipelined and full commit paths,
# the REST and ISO 8583 connectors, webhooks, the event stream, recovery
# after a kill, graceful shutdown), and both official SDKs' suites (`sdk`:
# tests/sdk with stripe-node, every API flow; test_sdk_python), and the API
# fuzz run with four walkers racing over the same objects. Fails when a test fails or when any
# process under test reported a data race, printing the reports.
#
# `make test` runs it after the ASan+UBSan suites. The libraries are not
# instrumented (jansson, SQLite, libmicrohttpd, libcurl); their pthread calls
# are seen, their own atomics are not.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build-tsan}
shift || true
TESTS=("$@")
if [ ${#TESTS[@]} -eq 0 ]; then
    TESTS=(test_orchestration test_concurrency test_flow_matrix test_commit_sync test_iso_link
           test_webhooks test_stream test_crash test_graceful test_chaos sdk test_sdk_python test_api_fuzz)
fi
cd "$ROOT"
[ -f "$BUILD/build.ninja" ] ||
    meson setup "$BUILD" --buildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false >/dev/null
ninja -C "$BUILD" turnpike >/dev/null
LOGS=$(mktemp -d /tmp/turnpike-tsan.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
export TURNPIKE_BIN="$ROOT/$BUILD/turnpike" PYTHONPATH="$ROOT/tests/integration"
# exitcode=0: a race fails the run through its report file, not through
# the daemon's exit status, which some tests read for their own reasons.
export TSAN_OPTIONS="log_path=$LOGS/race exitcode=0 second_deadlock_stack=1 history_size=4"
run_one() { # TEST: runs it, writes LOGS/TEST.rc
    local t=$1 start rc=0
    start=$(date +%s)
    # setarch -R: no address-space randomisation, which some kernels set
    # higher than this TSan's memory layout allows.
    if [ "$t" = test_api_fuzz ]; then
        TP_FUZZ_THREADS=4 TP_FUZZ_REQUESTS=3000 TP_FUZZ_SECONDS=90 \
            setarch "$(uname -m)" -R timeout 600 python3 "tests/integration/$t.py" >"$LOGS/$t.out" 2>&1 || rc=$?
    elif [ "$t" = sdk ]; then
        setarch "$(uname -m)" -R timeout 600 node tests/sdk/run.mjs >"$LOGS/$t.out" 2>&1 || rc=$?
    else
        setarch "$(uname -m)" -R timeout 600 python3 "tests/integration/$t.py" >"$LOGS/$t.out" 2>&1 || rc=$?
    fi
    echo "$rc $(($(date +%s) - start))" >"$LOGS/$t.rc"
}
# Two at a time (each test has its own ports and data directory).
for t in "${TESTS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    run_one "$t" &
done
wait
fail=0
for t in "${TESTS[@]}"; do
    read -r rc secs <"$LOGS/$t.rc"
    if [ "$rc" = 0 ]; then
        echo "tsan: $t ok ($secs s)"
    else
        echo "tsan: $t FAILED (exit $rc)"
        tail -n 40 "$LOGS/$t.out"
        fail=1
    fi
done
reports=$(find "$LOGS" -name 'race.*' | sort)
if [ -n "$reports" ]; then
    echo "tsan: data races reported:"
    cat $reports
    fail=1
else
    echo "tsan: no data race reported in ${#TESTS[@]} test files"
fi
exit $fail
