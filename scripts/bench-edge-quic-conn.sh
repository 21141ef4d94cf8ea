#!/usr/bin/env bash
# Server RSS per idle joined QUIC viewer (BENCHMARKS.md, "Edge cost per QUIC
# connection"). The viewers are examples/idle_quic_viewers.rs.
#
#   cargo build --release -p danmaku --bin danmaku --example idle_quic_viewers
#   N=2000 scripts/bench-edge-quic-conn.sh
#
# BIN and EXAMPLE may point at other builds (e.g. an older commit's) to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release/danmaku}
EXAMPLE=${EXAMPLE:-$TARGET/release/examples/idle_quic_viewers}
N=${N:-2000}
PORT=$((20000 + RANDOM % 20000)); DATA=$(mktemp -d); SECRET=bench-secret
ulimit -n 20000
"$BIN" standalone --listen "127.0.0.1:$PORT" --data "$DATA" --auth-secret "$SECRET" --max-conns-per-ip 100000 --max-conns-per-user 100000 >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
sleep 2
SERVER_PID=$SERVER "$EXAMPLE" "127.0.0.1:$PORT" "$SECRET" "$N" room:bench
