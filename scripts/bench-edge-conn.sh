#!/usr/bin/env bash
# What one edge connection costs: server RSS per idle joined WebSocket viewer,
# and batch frames written per server CPU-second while RATE danmaku/s reach
# all of them (BENCHMARKS.md, "Edge cost per connection").
#
#   cargo build --release -p danmaku --bin danmaku
#   cargo build --release -p danmaku-edge --example idle_viewers
#   VIEWERS=10000 RATE=1000 SECS=20 scripts/bench-edge-conn.sh
#
# The server is pinned to CPU 0 and the viewers + poster to CPU 1 (taskset), so
# the CPU the server spends is its own. BIN and EXAMPLE may point at other
# builds (e.g. an older commit's) to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release/danmaku}
EXAMPLE=${EXAMPLE:-$TARGET/release/examples/idle_viewers}
VIEWERS=${VIEWERS:-10000}
RATE=${RATE:-1000}
SECS=${SECS:-20}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
SECRET=bench-secret
DATA=$(mktemp -d)
ulimit -n 20000

taskset -c 0 "$BIN" standalone --listen "127.0.0.1:$PORT" --data "$DATA" --auth-secret "$SECRET" \
    --user-rate "$((RATE * 2))" --user-burst "$((RATE * 2))" --channel-rate "$((RATE * 4))" \
    --max-conns-per-ip 100000 \
    >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    sleep 0.1
done
sleep 2 # let the process settle before the first RSS reading
SERVER_PID=$SERVER taskset -c 1 "$EXAMPLE" "127.0.0.1:$PORT" "$SECRET" "$VIEWERS" room:bench "$SECS" "$RATE"
