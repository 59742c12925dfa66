#!/usr/bin/env bash
# The runner's peak memory while a failing test prints 300 MB (docs/performance.md,
# "Runner memory with a flooding test"). The runner must show the test's last lines
# without reading the whole log: target under 64 MB of peak RSS.
#
#   benches/log_tail_rss.sh
#
# Runs the survivor fixture's `floods_its_log_and_fails` once to build, then again while
# reading the runner's VmHWM (peak resident set) from /proc every 20 ms until it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
T=target/bench/log-tail
cargo build --quiet -p cargo-hangcheck
RUNNER=target/debug/cargo-hangcheck
args=(hangcheck test -p survivor --color never --target-dir "$T" floods_its_log_and_fails)
echo "building the fixture..." >&2
"$RUNNER" "${args[@]}" >/dev/null 2>&1 || true
"$RUNNER" "${args[@]}" >"$T/out.txt" 2>&1 &
runner=$!
peak=0
while kill -0 "$runner" 2>/dev/null; do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$runner/status" 2>/dev/null || true)
    if [ -n "$v" ]; then peak=$v; fi
    sleep 0.02
done
code=0
wait "$runner" || code=$?
log=$(find "$T/hangcheck/runs/latest/tests" -name 'floods_its_log_and_fails.log' -printf '%s')
echo "exit code $code (4: the test failed, as it should); test log $((log / 1024 / 1024)) MiB; runner peak RSS $((peak / 1024)) MiB"
grep -m1 -A3 "FAIL" "$T/out.txt" || true
