#!/usr/bin/env bash
# Reproduces the figures of docs/performance.md.
#
#   benches/run.sh                 every benchmark
#   benches/run.sh spawn snapshot  the ones named, in that order; each of: spawn load
#                                  snapshot stacks stall runner recorder chaos settle
#
# Builds the bench binary three ways, each in its own target directory (different
# RUSTFLAGS would otherwise rebuild each other): stable; --cfg tokio_unstable (what
# `cargo hangcheck test` builds); tokio_unstable with console-subscriber. Each benchmark
# prints JSON lines to target/bench/results.jsonl and a markdown table to stdout, every
# figure next to its ratio to the plain-tokio (or nextest) figure of the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
T=target/bench
mkdir -p "$T"
OUT="$T/results.jsonl"
if [ $# -eq 0 ]; then set -- all; fi

build() { # dir rustflags extra-args...
    local dir=$1 flags=$2
    shift 2
    RUSTFLAGS="$flags" cargo build --quiet -p hangcheck-bench --target-dir "$T/$dir" "$@"
}
STABLE=$T/stable/release/hangcheck-bench
UNSTABLE=$T/unstable/release/hangcheck-bench
CONSOLE=$T/console/release/hangcheck-bench
DEBUG=$T/debug/debug/hangcheck-bench
# needs BUILD... : builds what a benchmark runs (`runner`, `chaos` and `settle` build their
# own), each build once however many benchmarks are named: stable; unstable
# (tokio_unstable); console (tokio_unstable with console-subscriber); debug (servers under
# test are usually debug builds: stack symbolisation is measured there too).
built=" "
needs() {
    local b
    for b in "$@"; do
        case "$built" in *" $b "*) continue ;; esac
        built="$built$b "
        echo "building the bench binary ($b)..." >&2
        case "$b" in
        stable) build stable "" --release ;;
        unstable) build unstable "--cfg tokio_unstable" --release ;;
        console) build console "--cfg tokio_unstable" --release --features console ;;
        debug) build debug "" ;;
        esac
    done
}

machine() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(rustc --version)"
}

# table TITLE BENCH KEY... : renders the lines of one benchmark from $OUT.
table() {
    python3 - "$OUT" "$@" <<'PY'
import json, sys
path, title, bench, *keys = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip() and json.loads(l).get("bench") == bench]
print(f"\n### {title}\n")
print("| " + " | ".join(keys) + " |")
print("|" + "---|" * len(keys))
for r in rows:
    print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
PY
}

# ratio BENCH FIELD BASE_VARIANT : adds "<field>_ratio" to each line of BENCH, against BASE.
ratio() {
    python3 - "$OUT" "$@" <<'PY'
import json, sys
path, bench, field, base = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
ref = [l for l in lines if l.get("bench") == bench and l.get("variant") == base]
if ref:
    for l in lines:
        if l.get("bench") == bench and field in l:
            l[field + "_ratio"] = round(l[field] / ref[-1][field], 3)
with open(path, "w") as f:
    for l in lines:
        f.write(json.dumps(l) + "\n")
PY
}

# aggregate BENCH FIELD... : replaces the lines of BENCH by one line per variant holding
# the median of each FIELD over the rounds, and its min-max spread.
aggregate() {
    python3 - "$OUT" "$@" <<'PY'
import json, sys, statistics
path, bench, *fields = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
mine = [l for l in lines if l.get("bench") == bench]
rest = [l for l in lines if l.get("bench") != bench]
merged = {}
for l in mine:
    merged.setdefault(l["variant"], []).append(l)
for variant, rows in merged.items():
    row = dict(rows[0])
    row["rounds"] = len(rows)
    for f in fields:
        values = [r[f] for r in rows]
        row[f] = round(statistics.median(values), 1)
        row[f + "_spread"] = f"{min(values):g}-{max(values):g}"
    rest.append(row)
with open(path, "w") as out:
    for l in rest:
        out.write(json.dumps(l) + "\n")
PY
}

ROUNDS=${ROUNDS:-5}

run_spawn() {
    # Variants interleaved over rounds of separate processes: on a shared machine the
    # conditions drift, and interleaving exposes every variant to the same drift.
    for _ in $(seq "$ROUNDS"); do
        "$STABLE" spawn plain >>"$OUT"
        "$STABLE" spawn named >>"$OUT"
        "$UNSTABLE" spawn empty-hooks >>"$OUT"
        "$UNSTABLE" spawn hooks >>"$OUT"
        "$UNSTABLE" spawn named | sed 's/"variant":"named"/"variant":"named+hooks"/' >>"$OUT"
        # console-subscriber costs tens of microseconds a task: fewer tasks keep it short.
        "$CONSOLE" spawn console --tasks 20000 >>"$OUT"
    done
    aggregate spawn ns_per_task
    ratio spawn ns_per_task plain
    table "Spawn cost (1,000,000 trivial tasks a run, 2 workers; medians over $ROUNDS interleaved rounds; targets in instructions: hooks <= 1.25x plain, named+hooks <= 1.35x)" spawn \
        variant tokio_unstable rounds ns_per_task ns_per_task_spread ns_per_task_ratio
    if command -v valgrind >/dev/null; then
        spawn_instructions
    else
        echo "(valgrind is not installed: no instruction counts; apt-get install valgrind)"
    fi
}

# Instructions per spawned task under callgrind: repeatable where wall time is not (it
# counts work, not contention). The difference between 100,000 tasks and none cancels
# the runtime's start-up and the agent's symboliser warm-up.
spawn_instructions() {
    local bin variant n0 n1
    collected() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null | sed -n 's/.*Collected : //p'; }
    for spec in "$STABLE plain" "$STABLE named" "$UNSTABLE empty-hooks" "$UNSTABLE hooks" "$UNSTABLE named"; do
        read -r bin variant <<<"$spec"
        n0=$(collected "$bin" spawn "$variant" --tasks 0)
        n1=$(collected "$bin" spawn "$variant" --tasks 100000)
        label=$variant
        [ "$bin" = "$UNSTABLE" ] && [ "$variant" = named ] && label=named+hooks
        echo "{\"bench\":\"spawn-instructions\",\"variant\":\"$label\",\"instructions_per_task\":$(((n1 - n0) / 300000))}" >>"$OUT"
    done
    ratio spawn-instructions instructions_per_task plain
    table "Spawn cost in instructions (callgrind, 3 x 100,000 tasks minus none)" spawn-instructions \
        variant instructions_per_task instructions_per_task_ratio
}

# The flight recorder's cost: the hooked spawn variants (where the recorder takes a spawn
# and an end per task) at the default ring size and with the recorder off, interleaved,
# then their instructions per task.
run_recorder() {
    label_as() { sed "s/\"bench\":\"spawn\"/\"bench\":\"recorder\"/; s/\"variant\":\"[^\"]*\"/\"variant\":\"$1\"/"; }
    for _ in $(seq "$ROUNDS"); do
        "$STABLE" spawn plain | label_as plain >>"$OUT"
        "$UNSTABLE" spawn hooks | label_as "hooks, recorder 4096" >>"$OUT"
        HANGCHECK_RECORDER_EVENTS=0 "$UNSTABLE" spawn hooks | label_as "hooks, recorder off" >>"$OUT"
        "$UNSTABLE" spawn named | label_as "named+hooks, recorder 4096" >>"$OUT"
        HANGCHECK_RECORDER_EVENTS=0 "$UNSTABLE" spawn named | label_as "named+hooks, recorder off" >>"$OUT"
    done
    aggregate recorder ns_per_task
    ratio recorder ns_per_task plain
    table "Flight recorder: spawn cost with it on (4096 events) and off (medians over $ROUNDS interleaved rounds)" recorder \
        variant rounds ns_per_task ns_per_task_spread ns_per_task_ratio
    if ! command -v valgrind >/dev/null; then
        echo "(valgrind is not installed: no instruction counts; apt-get install valgrind)"
        return
    fi
    local collected n0 n1 events variant
    collected() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null | sed -n 's/.*Collected : //p'; }
    for variant in hooks named; do
        for events in 4096 0; do
            n0=$(HANGCHECK_RECORDER_EVENTS=$events collected "$UNSTABLE" spawn "$variant" --tasks 0)
            n1=$(HANGCHECK_RECORDER_EVENTS=$events collected "$UNSTABLE" spawn "$variant" --tasks 100000)
            echo "{\"bench\":\"recorder-instructions\",\"variant\":\"$variant, recorder $events\",\"instructions_per_task\":$(((n1 - n0) / 300000))}" >>"$OUT"
        done
    done
    table "Flight recorder in instructions per task (callgrind, 3 x 100,000 tasks minus none)" recorder-instructions \
        variant instructions_per_task
}

run_load() {
    for _ in $(seq "$ROUNDS"); do
        "$STABLE" load plain --runs 3 >>"$OUT"
        "$STABLE" load hangcheck --runs 3 >>"$OUT"
        "$UNSTABLE" load hangcheck-unstable --runs 3 >>"$OUT"
        "$CONSOLE" load console --runs 3 >>"$OUT"
    done
    aggregate load rps p50_us p99_us
    ratio load rps plain
    ratio load p50_us plain
    ratio load p99_us plain
    table "Server under load (PING round trips over loopback, 2 clients, 3 runs of 2 s per round; medians over $ROUNDS interleaved rounds; target: >= 0.97x plain requests/s)" load \
        variant tokio_unstable rps rps_spread rps_ratio p50_us p50_us_ratio p99_us p99_us_ratio
}

run_snapshot() {
    for n in 1000 10000 100000; do "$UNSTABLE" snapshot --tasks "$n" >>"$OUT"; done
    table "Snapshot cost (live tasks in 10 named groups; target at 100k: <= 0.3 ms, no worker held up beyond its own preemption)" snapshot \
        tasks median_ms max_ms worst_holdup_ms baseline_holdup_ms
}

run_stacks() {
    for n in 8 64 256; do "$STABLE" stacks --threads "$n" | sed 's/^{/{"build":"release",/' >>"$OUT"; done
    for n in 8 64 256; do "$DEBUG" stacks --threads "$n" | sed 's/^{/{"build":"debug",/' >>"$OUT"; done
    table "Stack capture (every thread of the process; target: 64 threads <= 50 ms warm)" stacks \
        build threads raw_cold_ms raw_warm_ms symbolised_cold_ms symbolised_warm_ms
}

run_stall() {
    "$STABLE" stall | sed 's/^{/{"build":"release",/' >>"$OUT"
    "$UNSTABLE" stall | sed 's/^{/{"build":"release",/' >>"$OUT"
    "$DEBUG" stall | sed 's/^{/{"build":"debug",/' >>"$OUT"
    table "Stall detection latency (a worker blocked in one poll, threshold 250 ms, 10 runs; target: caught within threshold + 100 ms)" stall \
        build tokio_unstable runs detected_past_threshold_median_ms detected_past_threshold_max_ms delivered_past_threshold_median_ms delivered_past_threshold_max_ms
}

# elapsed_ms COMMAND... : wall time of a command, in milliseconds.
elapsed_ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

run_runner() {
    # Warm every build first: only running is timed.
    cargo build --quiet -p cargo-hangcheck
    cargo hangcheck test -p hangcheck-bench >/dev/null 2>&1 || true
    cargo hangcheck test -p hangcheck-bench --test fifty_harness >/dev/null 2>&1 || true
    local server=target/hangcheck/build/debug/hangcheck-bench
    cargo test --quiet -p hangcheck-bench --test fifty --no-run >/dev/null 2>&1
    cargo nextest run -p hangcheck-bench --test fifty --no-run >/dev/null 2>&1 || true
    # nextest and cargo test need the server running already.
    "$server" serve plain >"$T/server.out" &
    local pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    until grep -q "listening on" "$T/server.out"; do sleep 0.1; done
    export HANGCHECK_ADDR_PING
    HANGCHECK_ADDR_PING=$(sed -n 's/^listening on //p' "$T/server.out")
    local hc=() nx=() nx1=() ct=() hh=() inst1=() hh1=() ct1=()
    local installed=() runner=target/debug/cargo-hangcheck
    for _ in 1 2 3; do
        hc+=("$(elapsed_ms cargo hangcheck test -p hangcheck-bench)")
        installed+=("$(elapsed_ms "$runner" hangcheck test -p hangcheck-bench)")
        hh+=("$(elapsed_ms "$runner" hangcheck test -p hangcheck-bench --test fifty_harness)")
        nx+=("$(elapsed_ms cargo nextest run -p hangcheck-bench --test fifty)")
        nx1+=("$(elapsed_ms cargo nextest run -p hangcheck-bench --test fifty --test-threads 1)")
        ct+=("$(elapsed_ms cargo test -q -p hangcheck-bench --test fifty)")
        # One test only: the fixed cost of each way, so the rest is the cost per test.
        inst1+=("$(elapsed_ms "$runner" hangcheck test -p hangcheck-bench t01)")
        hh1+=("$(elapsed_ms "$runner" hangcheck test -p hangcheck-bench --test fifty_harness t01)")
        ct1+=("$(elapsed_ms cargo test -q -p hangcheck-bench --test fifty t01)")
    done
    kill $pid 2>/dev/null || true
    trap - EXIT
    # The last run of each kind: process per test, then the harness.
    local report harness_report
    harness_report=$(ls -td target/hangcheck/runs/*/ | grep -v /latest/ | sed -n 3p)report.json
    report=$(ls -td target/hangcheck/runs/*/ | grep -v /latest/ | sed -n 4p)report.json
    python3 - "$OUT" "$(median3 "${hc[@]}")" "$(median3 "${installed[@]}")" "$(median3 "${nx[@]}")" "$(median3 "${nx1[@]}")" "$(median3 "${ct[@]}")" "$(median3 "${hh[@]}")" "$(median3 "${inst1[@]}")" "$(median3 "${hh1[@]}")" "$(median3 "${ct1[@]}")" "$report" "$harness_report" <<'PY'
import json, sys
out, hc, inst, nx, nx1, ct, hh, inst1, hh1, ct1, report, harness_report = sys.argv[1], *map(int, sys.argv[2:11]), *sys.argv[11:13]
with open(out, "a") as f:
    for name, one, fifty in [("process per test (installed binary)", inst1, inst), ("harness: one process (installed binary)", hh1, hh), ("cargo test, server already running", ct1, ct)]:
        f.write(json.dumps({"bench": "runner-per-test", "variant": name, "one_test_ms": one, "fifty_tests_ms": fifty, "per_test_ms": round((fifty - one) / 49, 1)}) + "\n")
    for name, ms in [("cargo hangcheck test (in-repo alias: cargo run)", hc), ("cargo-hangcheck hangcheck test (installed binary)", inst), ("cargo-hangcheck hangcheck test, harness: one process (installed binary)", hh), ("cargo nextest run", nx), ("cargo nextest run --test-threads 1", nx1), ("cargo test", ct)]:
        f.write(json.dumps({"bench": "runner", "variant": name, "wall_ms": ms, "vs_nextest": round(ms / nx, 2), "vs_cargo_test": round(ms / ct, 2)}) + "\n")
    for path in [report, harness_report]:
        r = json.load(open(path))
        tests = r["tests"]
        per_test = lambda k: sum(t[k] for t in tests) / len(tests)
        f.write(json.dumps({"bench": "runner-breakdown", "path": "harness" if "/harness-" in tests[0]["log"] else "process per test", "tests": len(tests),
            "run_ms": r["duration_ms"], "test_ms_per_test": round(per_test("duration_ms"), 1),
            "settle_ms_per_test": round(per_test("settle_ms"), 1),
            "other_ms_per_test": round((r["duration_ms"] - sum(t["duration_ms"] + t["settle_ms"] for t in tests)) / len(tests), 1)}) + "\n")
PY
    table "Runner overhead (50-test E2E suite, one server, warm builds, medians of 3; targets: hangcheck <= 1.2x nextest; with the harness <= 2x cargo test)" runner \
        variant wall_ms vs_nextest vs_cargo_test
    table "Cost per test: (50 tests - 1 test) / 49, the fixed cost of a run taken out" runner-per-test \
        variant one_test_ms fifty_tests_ms per_test_ms
    table "hangcheck's time per test, from its report.json" runner-breakdown \
        path tests run_ms test_ms_per_test settle_ms_per_test other_ms_per_test
}

# --chaos: the lost-wakeup race made rare (LOST_WAKEUP_PREPARE_US=100, about one hang in
# 100 rounds), its hang rate over 300 rounds and the time until --until-fail stops at the
# first hang, without and with --chaos.
run_chaos() {
    cargo build --quiet -p cargo-hangcheck
    local b=target/debug/cargo-hangcheck
    local a=(hangcheck test -p lost-wakeup --target-dir "$T/chaos" --color never
        --server-env LOST_WAKEUP_PREPARE_US=100 one_job)
    echo "| mode | hang rate (300 rounds) |"
    echo "|---|---|"
    for c in "" "--chaos=7"; do
        "$b" "${a[@]}" --repeat 300 $c >"$T/chaos.log" 2>&1 || true
        echo "| ${c:-plain} | $(grep -A1 'Flakes over' "$T/chaos.log" | tail -1 | grep -o 'hung [0-9]*') |"
    done
    echo "| mode | run | time to the first hang | rounds |"
    echo "|---|---|---|---|"
    for i in 1 2 3; do
        for c in "" "--chaos=$i"; do
            local s e
            s=$(date +%s.%N)
            "$b" "${a[@]}" --until-fail --repeat 2000 $c >"$T/chaos.log" 2>&1 || true
            e=$(date +%s.%N)
            echo "| ${c:-plain} | $i | $(echo "$e - $s" | bc) s | $(grep -o 'Flakes over [0-9]*' "$T/chaos.log" | grep -o '[0-9]*$') |"
        done
    done
}

# Settling after each test of the waiter-leak example (two of its seven tests leak a
# waiter): the runner's own time per test, from report.json's settle_ms, median of 3 runs.
run_settle() {
    cargo build --quiet -p cargo-hangcheck
    local reports=()
    for _ in 1 2 3; do
        target/debug/cargo-hangcheck hangcheck test -p waiter-leak --color never >"$T/settle.out" 2>&1 || true
        reports+=("$(sed -n 's/^Report: //p' "$T/settle.out")")
    done
    python3 - "${reports[@]}" <<'PY'
import json, statistics, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
leaked = {b["test"] for l in runs[0]["leaks"] for b in l["leaked_by"]}
print("| test | leaks | settle, median of 3 (ms) |\n|---|---|---|")
for i, t in enumerate(runs[0]["tests"]):
    ms = statistics.median(r["tests"][i]["settle_ms"] for r in runs)
    print(f"| {t['id']} | {'yes' if t['id'] in leaked else ''} | {ms:.0f} |")
PY
}

usage="usage: benches/run.sh [BENCHMARK...], each one of: spawn load snapshot stacks stall runner recorder chaos settle all"
# Every name is checked before anything runs: a typo must not cost the benchmarks before it.
for which in "$@"; do
    case "$which" in
    spawn | load | snapshot | stacks | stall | runner | recorder | chaos | settle | all) ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
    esac
done
: >"$OUT"
machine
for which in "$@"; do
    case "$which" in
    runner) run_runner ;;
    chaos) run_chaos ;;
    settle) run_settle ;;
    recorder) needs stable unstable && run_recorder ;;
    spawn | load) needs stable unstable console && "run_$which" ;;
    snapshot) needs unstable && run_snapshot ;;
    stacks) needs stable debug && run_stacks ;;
    stall) needs stable unstable debug && run_stall ;;
    all)
        needs stable unstable console debug
        for b in spawn load snapshot stacks stall runner recorder; do "run_$b"; done
        ;;
    esac
done
