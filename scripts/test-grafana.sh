#!/usr/bin/env bash
# The checks of the dashboards and alert rules that are not cargo tests (scripts/test.sh
# runs this; tests/dashboards.rs and tests/prometheus.rs are the cargo side):
#   1. grafana/dashboards/*.json equal a fresh generation by grafana/generate.py
#      (Grafana's Foundation SDK, the version pinned in grafana/requirements.txt);
#   2. promtool: deploy/prometheus.yml and deploy/rules.yml are valid, and the unit
#      tests of the alerts (deploy/rules.test.yml) pass.
# Installs what it needs, idempotently, on a fresh Debian machine: a venv with the SDK
# under .services/venv-grafana, and Debian's `prometheus` package (promtool, and the
# server tests/prometheus.rs starts).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DANMAKU_SERVICES_DIR:-$PWD/.services}/venv-grafana"

apt_install() {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v python3 >/dev/null 2>&1; then apt_install python3 python3-venv; fi
if [ ! -x "$VENV/bin/pip" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
fi
# A no-op (no download) when the pinned version is already installed.
"$VENV/bin/pip" install -q --disable-pip-version-check -r grafana/requirements.txt
echo "dashboards: generated JSON matches grafana/dashboards"
"$VENV/bin/python" grafana/generate.py --check

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  apt_install prometheus
fi
# Warnings about target files that deploy/local-cluster.sh has not written are expected.
promtool check config deploy/prometheus.yml
promtool check rules deploy/rules.yml
promtool test rules deploy/rules.test.yml
