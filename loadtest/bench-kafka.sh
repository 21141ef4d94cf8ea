#!/usr/bin/env bash
# Kafka path vs memory path, on loopback (BENCHMARKS.md, "Kafka path vs memory path").
#
#   loadtest/bench-kafka.sh [memory] [kafka] [foreign] [bus]   (default: the first three)
#
# memory:  standalone + loadtest (1000 viewers, 1 room, 100 msg/s, 10 s, ws-pb)
# kafka:   1 ingest + 2 edges over Kafka (fresh topic), the same load split over the edges
# foreign: as kafka, plus --foreign-rate $FOREIGN_RATE to rooms no viewer joined
# bus:     the bus hop alone (BENCHMARKS.md, "Bus hop: broker CPU vs fetch settings"):
#          the broker's CPU-seconds with idle consumers and at $BUS_RATE msgs/s, and the
#          publish→receive latency, for each client setting in $BUS_POINTS; each point
#          $REPEAT times on a fresh topic, with bus/examples/throughput.rs. Table: $OUT/bus-table.txt
# For kafka runs it prints each edge's CPU seconds (utime+stime from /proc) over the
# loadtest and its danmaku_edge_bus_events_total deltas, and the CPU of ingest, the
# broker and the load generator. Reports go to $OUT.
#
# Environment: DANMAKU_BIN (default $CARGO_TARGET_DIR/release/danmaku), CONNECTIONS
# (1000), RATE (100), DURATION (10), FOREIGN_RATE (2000), OUT (a fresh temp dir);
# for bus: THROUGHPUT_BIN (default $CARGO_TARGET_DIR/release/examples/throughput:
# `cargo build --release -p danmaku-bus --example throughput`), BUS_RATE (200),
# BUS_SECS (10 per point), REPEAT (2), BUS_POINTS (one point per line:
# `label;idle|latency|procs;consumers;URL query`, default below).
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

# The bus points: label;kind;consumers;query. kind: idle (N subscriptions in one
# process, no traffic), latency (N subscriptions in one process, BUS_RATE msgs/s from
# the same process), procs (N processes with one subscription each, a publisher
# process at BUS_RATE).
DEFAULT_BUS_POINTS="
idle 1, P16 W10;idle;1;partitions=16&fetch_wait_ms=10
idle 2, P16 W10;idle;2;partitions=16&fetch_wait_ms=10
idle 6, P16 W10;idle;6;partitions=16&fetch_wait_ms=10
idle 8, P16 W10;idle;8;partitions=16&fetch_wait_ms=10
idle 6, P16 W25;idle;6;partitions=16&fetch_wait_ms=25
idle 6, P16 W50;idle;6;partitions=16&fetch_wait_ms=50
idle 6, P16 W100;idle;6;partitions=16&fetch_wait_ms=100
idle 6, P16 W500;idle;6;partitions=16&fetch_wait_ms=500
idle 6, P1 W10;idle;6;partitions=1&fetch_wait_ms=10
idle 6, P1 W25;idle;6;partitions=1&fetch_wait_ms=25
idle 6, P1 W50;idle;6;partitions=1&fetch_wait_ms=50
idle 6, P4 W25;idle;6;partitions=4&fetch_wait_ms=25
idle 8, P1 W25;idle;8;partitions=1&fetch_wait_ms=25
publish only, no consumers, P16;procs;0;partitions=16
publish only, no consumers, P1;procs;0;partitions=1
load 6, P16 W10;latency;6;partitions=16&fetch_wait_ms=10
load 6, P16 W25;latency;6;partitions=16&fetch_wait_ms=25
load 6, P16 W50;latency;6;partitions=16&fetch_wait_ms=50
load 6, P16 W100;latency;6;partitions=16&fetch_wait_ms=100
load 6, P16 W500;latency;6;partitions=16&fetch_wait_ms=500
load 6, P1 W10;latency;6;partitions=1&fetch_wait_ms=10
load 6, P1 W25;latency;6;partitions=1&fetch_wait_ms=25
load 6, P1 W50;latency;6;partitions=1&fetch_wait_ms=50
load 6, P1 W100;latency;6;partitions=1&fetch_wait_ms=100
load 6, P4 W25;latency;6;partitions=4&fetch_wait_ms=25
load 6, P16 W10, min bytes 1024;latency;6;partitions=16&fetch_wait_ms=10&fetch_min_bytes=1024
load 6, P16 W10, min bytes 64k;latency;6;partitions=16&fetch_wait_ms=10&fetch_min_bytes=65536
load 6, P1 W25, min bytes 64k;latency;6;partitions=1&fetch_wait_ms=25&fetch_min_bytes=65536
load 6, P16 W10, queued min 1000;latency;6;partitions=16&fetch_wait_ms=10&queued_min_messages=1000
load 6, P1 W25, linger 0;latency;6;partitions=1&fetch_wait_ms=25&linger_ms=0
load 6, P1 W25, linger 5;latency;6;partitions=1&fetch_wait_ms=25&linger_ms=5
load 6, P1 W25, linger 20;latency;6;partitions=1&fetch_wait_ms=25&linger_ms=20
load 6, P1 W25, batch 1;latency;6;partitions=1&fetch_wait_ms=25&batch_num_messages=1
procs 6, P16 W10;procs;6;partitions=16&fetch_wait_ms=10
procs 6, P1 W25;procs;6;partitions=1&fetch_wait_ms=25
"

run_bus() {
  # shellcheck disable=SC1091
  source .services/env
  [ -n "${DANMAKU_TEST_KAFKA:-}" ] && [ -n "${DANMAKU_TEST_KAFKA_PID:-}" ] ||
    { echo "no broker: scripts/services.sh start kafka" >&2; exit 1; }
  local tbin="${THROUGHPUT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/throughput}"
  [ -x "$tbin" ] || { echo "no $tbin: cargo build --release -p danmaku-bus --example throughput" >&2; exit 1; }
  local rate="${BUS_RATE:-200}" secs="${BUS_SECS:-10}" repeat="${REPEAT:-2}" n=0
  local bpid=$DANMAKU_TEST_KAFKA_PID
  echo "| point | query | broker CPU-s | broker core | p50 ms | p99 ms | clients CPU-s |" | tee "$OUT/bus-table.txt"
  echo "|---|---|---|---|---|---|---|" | tee -a "$OUT/bus-table.txt"
  while IFS=';' read -r label kind consumers query; do
    [ -n "$label" ] || continue
    for _ in $(seq "$repeat"); do
      n=$((n + 1))
      local url="kafka://$DANMAKU_TEST_KAFKA?topic=bench-bus-$$-$n${query:+&$query}"
      local log="$OUT/bus-$n.txt" result
      case $kind in
        idle|latency)
          "$tbin" "$url" --mode "$kind" --consumers "$consumers" --rate "$rate" \
            --duration "$secs" --broker-pid "$bpid" >"$log" 2>"$OUT/bus-$n.err"
          result=$(grep '^RESULT' "$log") ;;
        procs)
          local cpids=() i
          for i in $(seq "$consumers"); do
            "$tbin" "$url" --mode consume --rate "$rate" --duration "$secs" \
              >"$OUT/bus-$n-c$i.txt" 2>"$OUT/bus-$n-c$i.err" &
            cpids+=($!)
          done
          for i in $(seq "$consumers"); do
            for _ in $(seq 200); do grep -q READY "$OUT/bus-$n-c$i.txt" 2>/dev/null && break; sleep 0.05; done
          done
          sleep 1
          local b0 t0
          b0=$(cpu_ticks "$bpid"); t0=$(date +%s.%N)
          "$tbin" "$url" --mode publish --rate "$rate" --duration "$secs" >"$log" 2>"$OUT/bus-$n.err"
          for p in "${cpids[@]}"; do wait "$p" || true; done
          local b=$(( $(cpu_ticks "$bpid") - b0 )) wall
          wall=$(echo "$(date +%s.%N) - $t0" | bc)
          # Per-process p50 / p99: the median of the p50s and the largest p99.
          local p50=- p99=-
          [ "$consumers" -gt 0 ] && p50=$(cat "$OUT"/bus-"$n"-c*.txt | sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
          [ "$consumers" -gt 0 ] && p99=$(cat "$OUT"/bus-"$n"-c*.txt | sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' | sort -n | tail -1)
          result="RESULT $(awk -v b="$b" -v hz="$HZ" -v w="$wall" 'BEGIN {printf "broker_cpu_s=%.2f broker_core=%.3f", b / hz, b / hz / w}') p50_ms=$p50 p99_ms=$p99 own_cpu_s=n/a" ;;
        *) echo "unknown kind $kind" >&2; exit 2 ;;
      esac
      field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
      echo "| $label | \`${query:--}\` | $(field broker_cpu_s) | $(field broker_core) | $(field p50_ms) | $(field p99_ms) | $(field own_cpu_s) |" | tee -a "$OUT/bus-table.txt"
    done
  done <<<"${BUS_POINTS:-$DEFAULT_BUS_POINTS}"
}

for r in "${runs[@]}"; do
  case $r in
    memory) run_memory ;;
    kafka) run_kafka kafka ;;
    foreign) run_kafka foreign --foreign-rate "$FOREIGN_RATE" ;;
    bus) run_bus ;;
    *) echo "unknown run $r (memory|kafka|foreign|bus)" >&2; exit 2 ;;
  esac
done
echo "reports in $OUT" >&2
