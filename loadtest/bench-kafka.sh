#!/usr/bin/env bash
# Kafka path vs memory path, on loopback (BENCHMARKS.md, "Kafka path vs memory path").
#
#   loadtest/bench-kafka.sh [memory] [kafka] [foreign]     (default: all three)
#
# memory:  standalone + loadtest (1000 viewers, 1 room, 100 msg/s, 10 s, ws-pb)
# kafka:   1 ingest + 2 edges over Kafka (fresh topic), the same load split over the edges
# foreign: as kafka, plus --foreign-rate $FOREIGN_RATE to rooms no viewer joined
# For kafka runs it prints each edge's CPU seconds (utime+stime from /proc) over the
# loadtest and its danmaku_edge_bus_events_total deltas, and the CPU of ingest, the
# broker and the load generator. Reports go to $OUT.
#
# Environment: DANMAKU_BIN (default $CARGO_TARGET_DIR/release/danmaku), CONNECTIONS
# (1000), RATE (100), DURATION (10), FOREIGN_RATE (2000), OUT (a fresh temp dir).
# Needs a broker: `scripts/services.sh start kafka` (this script does not stop it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${DANMAKU_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/danmaku}"
CONNECTIONS="${CONNECTIONS:-1000}"
RATE="${RATE:-100}"
DURATION="${DURATION:-10}"
FOREIGN_RATE="${FOREIGN_RATE:-2000}"
OUT="${OUT:-$(mktemp -d /tmp/danmaku-bench.XXXXXX)}"
SECRET="bench-secret"
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(memory kafka foreign)

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_healthy() {
  for _ in $(seq 200); do
    curl -fs "http://$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$1 did not become healthy; see $OUT" >&2
  exit 1
}
cpu_ticks() { # pid → utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
bus_events() { # host:port → "result=count …" of danmaku_edge_bus_events_total
  curl -fs "http://$1/metrics" | awk -F'[{}" ]+' '/^danmaku_edge_bus_events_total\{/ {
      for (i = 2; i < NF; i++) if ($i == "result=") r = $(i + 1)
      printf "%s=%s ", r, $NF } END { print "" }'
}
loadtest() { # name, extra args…
  local name=$1; shift
  echo "== $name: $BIN loadtest --connections $CONNECTIONS --rooms 1 --rate $RATE --duration $DURATION --transport ws-pb $*" >&2
  /usr/bin/time -f "loadgen cpu_s %U+%S" -o "$OUT/$name.time" \
    "$BIN" loadtest --connections "$CONNECTIONS" --rooms 1 --rate "$RATE" --duration "$DURATION" \
    --transport ws-pb --report "$OUT/$name.json" "$@" 2>"$OUT/$name.loadtest.log" | tee "$OUT/$name.txt"
  tee -a "$OUT/$name.txt" <"$OUT/$name.time"
}

run_memory() {
  local port; port=$(free_port)
  "$BIN" standalone --listen "127.0.0.1:$port" --data "$OUT/standalone-data" >"$OUT/standalone.log" 2>&1 &
  pids+=($!)
  local pid=$!
  wait_healthy "127.0.0.1:$port"
  local c0; c0=$(cpu_ticks "$pid")
  loadtest memory --target "http://127.0.0.1:$port"
  echo "standalone cpu_s $(( $(cpu_ticks "$pid") - c0 ))/$HZ" | tee -a "$OUT/memory.txt"
  cleanup
}

run_kafka() { # name, extra loadtest args…
  local name=$1; shift
  # shellcheck disable=SC1091
  source .services/env
  [ -n "${DANMAKU_TEST_KAFKA:-}" ] || { echo "no broker: scripts/services.sh start kafka" >&2; exit 1; }
  local bus="kafka://$DANMAKU_TEST_KAFKA?topic=bench-$name-$$-$(date +%s)"
  local edges=() edge_pids=() ingest
  for i in 1 2; do
    local port; port=$(free_port)
    "$BIN" edge --listen "127.0.0.1:$port" --bus "$bus" --store "embedded:$OUT/$name-edge$i.db" \
      --auth-secret "$SECRET" --advertise "127.0.0.1:$port" >"$OUT/$name-edge$i.log" 2>&1 &
    pids+=($!)
    edge_pids+=($!)
    edges+=("127.0.0.1:$port")
  done
  ingest=127.0.0.1:$(free_port)
  "$BIN" ingest --listen "$ingest" --bus "$bus" --store "embedded:$OUT/$name-ingest.db" \
    --auth-secret "$SECRET" --user-rate 100000 --user-burst 100000 >"$OUT/$name-ingest.log" 2>&1 &
  pids+=($!)
  local ingest_pid=$!
  for a in "${edges[@]}" "$ingest"; do wait_healthy "$a"; done
  sleep 1 # edges assign partitions
  local c0=() m0=() ci0 cb0=0
  for i in 0 1; do c0+=("$(cpu_ticks "${edge_pids[$i]}")"); m0+=("$(bus_events "${edges[$i]}")"); done
  ci0=$(cpu_ticks "$ingest_pid")
  [ -n "${DANMAKU_TEST_KAFKA_PID:-}" ] && cb0=$(cpu_ticks "$DANMAKU_TEST_KAFKA_PID")
  local t0; t0=$(date +%s.%N)
  loadtest "$name" --auth-secret "$SECRET" --ingest "http://$ingest" \
    --edges "http://${edges[0]},http://${edges[1]}" "$@"
  local t1; t1=$(date +%s.%N)
  {
    echo "wall_s $(echo "$t1 - $t0" | bc)"
    for i in 0 1; do
      echo "edge$((i + 1)) cpu_s $(( $(cpu_ticks "${edge_pids[$i]}") - c0[i] ))/$HZ" \
        "rss_kb $(awk '/VmRSS/ {print $2}' "/proc/${edge_pids[$i]}/status")"
      echo "edge$((i + 1)) bus_events before: ${m0[$i]}"
      echo "edge$((i + 1)) bus_events after:  $(bus_events "${edges[$i]}")"
    done
    echo "ingest cpu_s $(( $(cpu_ticks "$ingest_pid") - ci0 ))/$HZ"
    [ -n "${DANMAKU_TEST_KAFKA_PID:-}" ] &&
      echo "broker cpu_s $(( $(cpu_ticks "$DANMAKU_TEST_KAFKA_PID") - cb0 ))/$HZ (shared broker: includes anyone else's use)"
  } | tee -a "$OUT/$name.txt"
  cleanup
}

for r in "${runs[@]}"; do
  case $r in
    memory) run_memory ;;
    kafka) run_kafka kafka ;;
    foreign) run_kafka foreign --foreign-rate "$FOREIGN_RATE" ;;
    *) echo "unknown run $r (memory|kafka|foreign)" >&2; exit 2 ;;
  esac
done
echo "reports in $OUT" >&2
