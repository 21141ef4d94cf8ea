#!/usr/bin/env bash
# A distributed danmaku on one machine: a Kafka-API broker, PostgreSQL, 2 ingest
# nodes, 3 edges and a scheduler, all on loopback. Prints the URLs; Ctrl-C stops everything.
#
#   deploy/local-cluster.sh                 # uses target/release/danmaku (builds it if missing)
#   DANMAKU_BUS=kafka://my-broker:9092 deploy/local-cluster.sh   # use your own Kafka/Redpanda
#   DANMAKU_STORE=postgres://user@db/danmaku                    # use your own PostgreSQL
#   DANMAKU_AUTH_SECRET=…                    # token key (default: a fixed dev secret)
#   DANMAKU_CLUSTER_EDGES=5                  # how many edges (default 3)
#   DANMAKU_PROMETHEUS_TARGETS=DIR           # where to write file_sd targets (default deploy/targets,
#                                            # read by deploy/prometheus.yml; removed on exit)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${DANMAKU_BIN:-$ROOT/target/release/danmaku}"
if [ ! -x "$BIN" ]; then
  echo "building $BIN" >&2
  cargo build --release --bin danmaku
fi
SECRET="${DANMAKU_AUTH_SECRET:-local-cluster-secret}"
LOGS="$ROOT/.services/cluster"
mkdir -p "$LOGS"
EDGES="${DANMAKU_CLUSTER_EDGES:-3}"
TARGETS="${DANMAKU_PROMETHEUS_TARGETS:-$ROOT/deploy/targets}"
mkdir -p "$TARGETS"

if [ -z "${DANMAKU_BUS:-}" ]; then
  bash scripts/services.sh start kafka >/dev/null
  # shellcheck disable=SC1091
  source .services/env
  DANMAKU_BUS="kafka://$DANMAKU_TEST_KAFKA"
fi
if [ -z "${DANMAKU_STORE:-}" ]; then
  bash scripts/services.sh start postgres >/dev/null
  # shellcheck disable=SC1091
  source .services/env
  DANMAKU_STORE="$DANMAKU_TEST_POSTGRES"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pids=()
cleanup() {
  rm -f "$TARGETS/edge-local-cluster.json" "$TARGETS/ingest-local-cluster.json" "$TARGETS/scheduler-local-cluster.json"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() { # name, args...
  local name=$1; shift
  "$BIN" "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
}

wait_healthy() {
  for _ in $(seq 200); do
    curl -fs "http://$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$1 did not become healthy; see $LOGS" >&2
  exit 1
}

edges=()
for i in $(seq "$EDGES"); do
  port=$(free_port)
  start "edge$i" edge --listen "127.0.0.1:$port" --bus "$DANMAKU_BUS" --store "$DANMAKU_STORE" --auth-secret "$SECRET" --advertise "127.0.0.1:$port"
  edges+=("127.0.0.1:$port")
done
ingests=()
for i in 1 2; do
  port=$(free_port)
  start "ingest$i" ingest --listen "127.0.0.1:$port" --bus "$DANMAKU_BUS" --store "$DANMAKU_STORE" --auth-secret "$SECRET"
  ingests+=("127.0.0.1:$port")
done
edge_flags=()
for i in "${!edges[@]}"; do
  edge_flags+=(--edge "edge$((i + 1))=ws://${edges[$i]}/v1/ws|${edges[$i]}")
done
sched_port=$(free_port)
start scheduler scheduler --listen "127.0.0.1:$sched_port" "${edge_flags[@]}"

for a in "${edges[@]}" "${ingests[@]}" "127.0.0.1:$sched_port"; do wait_healthy "$a"; done

# Prometheus file-based service discovery (deploy/prometheus.yml): one file per role,
# written atomically (rename), so Prometheus never reads half a file.
write_targets() { # role, addresses...
  local role=$1; shift
  local file="$TARGETS/$role-local-cluster.json" list
  list=$(printf '"%s",' "$@")
  printf '[{"targets":[%s],"labels":{"cluster":"local"}}]\n' "${list%,}" >"$file.tmp"
  mv "$file.tmp" "$file"
}
write_targets edge "${edges[@]}"
write_targets ingest "${ingests[@]}"
write_targets scheduler "127.0.0.1:$sched_port"

cat <<TXT
danmaku local cluster is up (bus: $DANMAKU_BUS, store: $DANMAKU_STORE, logs: $LOGS)
  edges:     ${edges[*]}      (WebSocket ws://ADDR/v1/ws, QUIC udp ADDR, metrics http://ADDR/metrics)
  ingest:    ${ingests[*]}
  scheduler: http://127.0.0.1:$sched_port/v1/edges
  prometheus targets: $TARGETS  (prometheus --config.file=deploy/prometheus.yml --storage.tsdb.path=/tmp/danmaku-tsdb)
Try:
  TOKEN=\$($BIN token --auth-secret $SECRET --user alice)
  curl -XPOST http://${ingests[0]}/v1/channels/room:1/messages -H "authorization: Bearer \$TOKEN" \\
       -H 'content-type: application/json' -d '{"kind":"danmaku","text":"hello"}'
  cargo run -p danmaku-client --example viewer -- http://${edges[0]} room:1 bob ws-json
Ctrl-C stops the cluster.
TXT
wait
