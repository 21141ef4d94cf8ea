#!/usr/bin/env bash
# The one test command: formatting, lints and the whole test suite.
# Installs what it needs (idempotently) so it works on a fresh machine; CI runs it
# through .ci/run. Environment:
#   CARGO_TARGET_DIR  build cache outside the clone (default ~/.cache/danmaku/target)
#   DANMAKU_TEST_SKIP_LINT=1  skip fmt and clippy (local iteration only)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cc >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc g++ make pkg-config >/dev/null
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

if [ "${DANMAKU_TEST_SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "fuzz targets build (cargo check)"
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet
step "fuzz targets run (~20 s each)"; bash scripts/test-fuzz.sh

step "dashboards and alert rules (generation check, promtool)"; bash scripts/test-grafana.sh

step "services (real Kafka-API broker, PostgreSQL and Prometheus on loopback)"
# Stop on exit only what this run started; a developer's running services stay up.
# The trap is set before anything starts, so a start that fails half-way, a failing
# test run or an interrupt stop what was started up to then.
started=()
# The status is read whole first: `grep -q` in a pipe ends early and, with
# pipefail, the writer's SIGPIPE would read as "not up".
status=$(bash scripts/services.sh status 2>/dev/null || true)
for svc in kafka postgres prometheus; do
  grep -q "^$svc: up" <<<"$status" || started+=("$svc")
done
stop_started() {
  [ ${#started[@]} -eq 0 ] || bash scripts/services.sh stop "${started[@]}" || true
}
trap stop_started EXIT
trap 'exit 130' INT TERM
bash scripts/services.sh start kafka postgres prometheus
# shellcheck disable=SC1091
source .services/env
echo "DANMAKU_TEST_KAFKA=$DANMAKU_TEST_KAFKA DANMAKU_TEST_POSTGRES=$DANMAKU_TEST_POSTGRES"

step "tests (cargo nextest)"
# Tests start processes of their own (private brokers, edges, ingests, PostgreSQL
# servers). A test that crashes (a segfault, an abort) never runs the code that
# would stop them, so the run goes into a PID namespace of its own when the machine
# allows it: when the run ends, however it ends, the kernel ends everything left in
# it. `bash` as the namespace's first process reaps what is orphaned meanwhile.
in_own_pids=()
if unshare --pid --fork --kill-child --mount-proc true 2>/dev/null; then
  in_own_pids=(unshare --pid --fork --kill-child --mount-proc bash -c '"$@"; exit $?' bash)
else
  echo "(no PID namespace here: processes of crashed tests may outlive the run)"
fi
"${in_own_pids[@]}" cargo nextest run --workspace --locked --no-fail-fast --profile ci
bash scripts/test-browser.sh  # JavaScript SDK + player page in headless Chromium (installs chromium, fonts, npm packages)
bash deploy/netns-cluster.sh test  # a cluster across network namespaces: scheduler picks, drain, every gift once (~20 s)
