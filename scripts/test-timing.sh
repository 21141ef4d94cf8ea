#!/usr/bin/env bash
# Runs the timing-sensitive tests a few times, alone and beside a CPU hog, and
# reports pass/fail per test and run: a test that passes only on a machine of one
# speed shows up here, not in a stranger's first run.
#
#   scripts/test-timing.sh            # 3 runs alone, 3 runs beside the hog
#   ITERATIONS=5 scripts/test-timing.sh
#
# The tests: the drains (HTTP and SIGTERM), every chaos test (the reconnect storm
# at its CI size, DANMAKU_CHAOS_STORM_CLIENTS default 500), the reliable-queue
# overflow, the scheduler end to end, and the Kafka bus's broker-restart tests.
# The hog is one busy loop per core (HOG_CORES, default all), each bounded by
# `timeout` and stopped after every run. Environment: ITERATIONS (3), HOG_CORES
# (nproc), FILTER (a nextest filterset replacing the default), OUT (results
# directory, default .services/timing). Exit status 1 if any run failed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku/target}"
export CARGO_TERM_COLOR=never
ITERATIONS="${ITERATIONS:-3}"
HOG_CORES="${HOG_CORES:-$(nproc)}"
OUT="${OUT:-$ROOT/.services/timing}"
FILTER="${FILTER:-binary_id(danmaku::control_plane) & (test(drain_moves) | test(sigterm_drains))
  | binary_id(danmaku::chaos)
  | binary_id(danmaku::reliable_queue)
  | binary_id(danmaku::scheduler)
  | binary_id(danmaku-bus::kafka) & test(restart)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
: >"$RESULTS"

hog=()
stop_hog() {
  for p in "${hog[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${hog[@]}"; do wait "$p" 2>/dev/null || true; done
  hog=()
}
start_hog() {
  for _ in $(seq "$HOG_CORES"); do
    timeout 3600 bash -c 'while :; do :; done' &
    hog+=($!)
  done
}

# Services: like scripts/test.sh, stop on exit only what this run started.
started=()
# The status is read whole first: `grep -q` in a pipe ends early and, with
# pipefail, the writer's SIGPIPE would read as "not up".
status=$(bash scripts/services.sh status 2>/dev/null || true)
for svc in kafka postgres prometheus; do
  grep -q "^$svc: up" <<<"$status" || started+=("$svc")
done
cleanup() {
  stop_hog
  [ ${#started[@]} -eq 0 ] || bash scripts/services.sh stop "${started[@]}" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash scripts/services.sh start kafka postgres prometheus >/dev/null
# shellcheck disable=SC1091
source .services/env

in_own_pids=()
if unshare --pid --fork --kill-child --mount-proc true 2>/dev/null; then
  in_own_pids=(unshare --pid --fork --kill-child --mount-proc bash -c '"$@"; exit $?' bash)
fi

echo "building the tests once" >&2
cargo nextest run --workspace --locked --profile ci --no-run >/dev/null

failed=0
for mode in alone hog; do
  for i in $(seq "$ITERATIONS"); do
    [ "$mode" = hog ] && start_hog
    log="$OUT/$mode-$i.log"
    started_at=$(date +%s)
    set +e
    "${in_own_pids[@]}" cargo nextest run --workspace --locked --profile ci --no-fail-fast \
      -E "$FILTER" >"$log" 2>&1
    rc=$?
    set -e
    stop_hog
    [ "$rc" -eq 0 ] || failed=1
    # nextest's per-test lines: "  STATUS [ 1.234s] (n/m) binary test".
    grep -E '^ +(PASS|FAIL|SIGSEGV|SIGABRT|SIGKILL|TIMEOUT|LEAK) \[' "$log" |
      sed -E 's/^ +([A-Z]+) \[ *([0-9.]+)s\] \( *[0-9]+\/[0-9]+\) (.*)$/\1\t\2\t\3/' |
      awk -v m="$mode" -v i="$i" -F'\t' '{ printf "%s\t%s\t%s\t%s\t%s\n", m, i, $1, $2, $3 }' >>"$RESULTS"
    echo "$mode run $i: exit $rc in $(( $(date +%s) - started_at )) s, load $(cut -d' ' -f1-3 /proc/loadavg) (log $log)" >&2
  done
done

echo
echo "per test: passed / runs, alone and beside the CPU hog ($HOG_CORES busy loops); slowest run"
awk -F'\t' '
  { key = $5; runs[key, $1]++; if ($3 == "PASS") ok[key, $1]++; if ($4 > max[key]) max[key] = $4; tests[key] = 1 }
  END {
    for (t in tests)
      printf "%-90s alone %d/%d  hog %d/%d  max %.1f s\n", t, ok[t, "alone"], runs[t, "alone"], ok[t, "hog"], runs[t, "hog"], max[t]
  }' "$RESULTS" | sort
echo
grep -v -P '\tPASS\t' "$RESULTS" | sed 's/^/not passed: /' || true
exit "$failed"
