#!/usr/bin/env bash
# Load-test presets that start everything they need on this host, run, report
# and stop everything. Also reached as `danmaku loadtest --preset NAME`.
#
#   scripts/bench.sh room-100k      # 100,000 viewers in one room through the scheduler
#
# room-100k: a Kafka-API broker and PostgreSQL (scripts/services.sh), INGESTS
# ingest nodes, EDGES edges (each ≤19k viewers: the open-file limit is 20,000 per
# process), a scheduler; then `danmaku loadtest` with WORKERS worker processes and
# one source address per worker (127.0.0.2…), viewers asking the scheduler for an
# edge like real clients, RATE danmaku/s + GIFT_RATE gifts/s for DURATION s.
# Overrides (environment): VIEWERS=100000 EDGES=6 INGESTS=2 WORKERS=6 RATE=1000
# GIFT_RATE=10 DURATION=60 RAMP=2000 PROBE=0.01 TRANSPORT=ws-pb REPORT=bench-room-100k.json
# ACK_INTERVAL=1s CLIENT_ACK_INTERVAL=5s RETRANSMIT=15s MAX_WINDOW=2s DRAIN_GRACE=10 FETCH_WAIT_MS=100
# BIN=target/release/danmaku EXTRA="…more loadtest flags" EDGE_EXTRA="…more edge flags".
# WRITE_BUDGET (frame writes/s per edge, default 40000 ÷ EDGES): the edges share
# what the host's 2 cores have left for frame writes after the broker, ingest and
# the load generator's own reads; the big room's window then reaches MAX_WINDOW
# (edge --max-window), i.e. one frame per viewer per MAX_WINDOW. CLIENT_ACK_INTERVAL
# (edge --client-ack-interval, announced to every viewer): each ack is a frame an
# edge reads, so viewers acking every tick would double the frames; ACK_INTERVAL
# is the viewers' own floor (the slower of the two wins, as in the SDKs).
# FETCH_WAIT_MS (default 100; the bus default is 25): each edge's Kafka fetch
# wait. tansu answers a fetch only when the wait is over, so it is both the hop's
# latency and the broker's polling cost, and its memory engine's cost per fetch
# grows with the topic (BENCHMARKS.md, "Bus hop: broker CPU vs fetch settings").
#
# Edges register themselves with the scheduler when the build has edge
# self-registration (`danmaku edge --help` lists --capacity); otherwise the
# scheduler gets a static --edge list.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PRESET="${1:-}"
case "$PRESET" in
  room-100k) ;;
  *) echo "usage: scripts/bench.sh room-100k" >&2; exit 2 ;;
esac

BIN="${BIN:-$ROOT/target/release/danmaku}"
if [ ! -x "$BIN" ]; then
  echo "building $BIN" >&2
  cargo build --release --bin danmaku
fi
VIEWERS="${VIEWERS:-100000}"
EDGES="${EDGES:-6}"
INGESTS="${INGESTS:-2}"
WORKERS="${WORKERS:-6}"
RATE="${RATE:-1000}"
GIFT_RATE="${GIFT_RATE:-10}"
DURATION="${DURATION:-60}"
RAMP="${RAMP:-2000}"
PROBE="${PROBE:-0.01}"
TRANSPORT="${TRANSPORT:-ws-pb}"
REPORT="${REPORT:-bench-room-100k.json}"
WRITE_BUDGET="${WRITE_BUDGET:-$(( 40000 / EDGES ))}"
FETCH_WAIT_MS="${FETCH_WAIT_MS:-100}"
MAX_WINDOW="${MAX_WINDOW:-2s}"
# Viewers ack gifts every CLIENT_ACK_INTERVAL (or ACK_INTERVAL, if slower); edges
# resend after RETRANSMIT (must exceed the pace plus MAX_WINDOW).
ACK_INTERVAL="${ACK_INTERVAL:-1s}"
CLIENT_ACK_INTERVAL="${CLIENT_ACK_INTERVAL:-5s}"
RETRANSMIT="${RETRANSMIT:-15s}"
DRAIN_GRACE="${DRAIN_GRACE:-10}"
SECRET="bench-secret-$$"
LOGS="$ROOT/.services/bench"
mkdir -p "$LOGS"

per_edge=$(( (VIEWERS + EDGES - 1) / EDGES ))
if [ "$per_edge" -gt 19000 ]; then
  echo "each edge would hold $per_edge viewers (> 19,000, the open-file limit): raise EDGES" >&2
  exit 2
fi
per_worker=$(( (VIEWERS + WORKERS - 1) / WORKERS ))
if [ "$per_worker" -gt 19000 ]; then
  echo "each worker would hold $per_worker viewers (> 19,000): raise WORKERS" >&2
  exit 2
fi

# Everything this run starts is stopped on every exit path: its own processes, and
# the broker and PostgreSQL unless they were already running before (a developer's
# services stay up).
pids=()
started=()
# The status is read whole first: `grep -q` in a pipe ends early and, with
# pipefail, the writer's SIGPIPE would read as "not up".
status=$(bash scripts/services.sh status 2>/dev/null || true)
for svc in kafka postgres; do
  grep -q "^$svc: up" <<<"$status" || started+=("$svc")
done
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ ${#started[@]} -eq 0 ] || bash scripts/services.sh stop "${started[@]}" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bash scripts/services.sh start kafka postgres >/dev/null
# shellcheck disable=SC1091
source "${DANMAKU_SERVICES_DIR:-$ROOT/.services}/env"
BUS="kafka://$DANMAKU_TEST_KAFKA"
STORE="$DANMAKU_TEST_POSTGRES"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
start() { # name, args…
  local name=$1; shift
  "$BIN" "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
}
wait_healthy() {
  for _ in $(seq 400); do
    curl -fs "http://$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$1 did not become healthy; see $LOGS" >&2
  exit 1
}

self_register=0
if "$BIN" edge --help 2>/dev/null | grep -q -- '--capacity'; then self_register=1; fi

sched_port=$(free_port)
edges=()
for i in $(seq "$EDGES"); do edges+=("127.0.0.1:$(free_port)"); done
sched_args=(scheduler --listen "127.0.0.1:$sched_port")
if [ "$self_register" = 1 ]; then
  sched_args+=(--auth-secret "$SECRET")
else
  for i in "${!edges[@]}"; do
    sched_args+=(--edge "edge$((i + 1))=ws://${edges[$i]}/v1/ws|${edges[$i]}")
  done
fi
start scheduler "${sched_args[@]}"
for i in "${!edges[@]}"; do
  args=(edge --listen "${edges[$i]}" --bus "$BUS?fetch_wait_ms=$FETCH_WAIT_MS" --store "$STORE" --auth-secret "$SECRET"
        --advertise "${edges[$i]}" --write-budget "$WRITE_BUDGET" --batch-max-events 2000
        --retransmit-initial "$RETRANSMIT" --client-ack-interval "$CLIENT_ACK_INTERVAL"
        --max-window "$MAX_WINDOW")
  if [ "$self_register" = 1 ]; then
    args+=(--scheduler "http://127.0.0.1:$sched_port" --capacity 19000)
  fi
  # shellcheck disable=SC2206
  args+=(${EDGE_EXTRA:-})
  start "edge$((i + 1))" "${args[@]}"
done
ingests=()
for i in $(seq "$INGESTS"); do
  port=$(free_port)
  start "ingest$i" ingest --listen "127.0.0.1:$port" --bus "$BUS" --store "$STORE" \
    --auth-secret "$SECRET" --channel-rate 100000
  ingests+=("http://127.0.0.1:$port")
done
for a in "${edges[@]}" "127.0.0.1:$sched_port" "${ingests[@]#http://}"; do wait_healthy "$a"; done
# Let self-registration reach the scheduler before viewers ask it.
[ "$self_register" = 1 ] && sleep 3

srcs=()
for w in $(seq "$WORKERS"); do srcs+=("127.0.0.$((w + 1))"); done
server_pids=$(IFS=,; echo "${pids[*]},$DANMAKU_TEST_KAFKA_PID")
echo "bench $PRESET: $VIEWERS viewers, $EDGES edges, $INGESTS ingest, $WORKERS workers; logs in $LOGS" >&2
ingest_list=$(IFS=,; echo "${ingests[*]}")
src_list=$(IFS=,; echo "${srcs[*]}")
# shellcheck disable=SC2086
"$BIN" loadtest --auth-secret "$SECRET" --ingest "$ingest_list" \
  --scheduler "http://127.0.0.1:$sched_port" \
  --connections "$VIEWERS" --rooms 1 --rate "$RATE" --gift-rate "$GIFT_RATE" \
  --duration "$DURATION" --workers "$WORKERS" --source-addrs "$src_list" --ramp "$RAMP" \
  --probe-fraction "$PROBE" --transport "$TRANSPORT" --server-pids "$server_pids" \
  --ack-interval "$ACK_INTERVAL" --drain-grace "$DRAIN_GRACE" \
  --report "$REPORT" ${EXTRA:-}
# Keep every server's final /metrics next to its log, for the post-mortem.
for i in "${!edges[@]}"; do
  curl -fs "http://${edges[$i]}/metrics" >"$LOGS/edge$((i + 1)).metrics" 2>/dev/null || true
done
for i in "${!ingests[@]}"; do
  curl -fs "${ingests[$i]}/metrics" >"$LOGS/ingest$((i + 1)).metrics" 2>/dev/null || true
done
curl -fs "http://127.0.0.1:$sched_port/metrics" >"$LOGS/scheduler.metrics" 2>/dev/null || true
echo "report: $REPORT (server logs and final metrics in $LOGS)" >&2
