#!/usr/bin/env bash
# The browser side: the JavaScript SDK's tests (sdk/js) and the player page (web/)
# in headless Chromium, both against a real `danmaku standalone` started by the
# tests on a free port with a temporary data directory.
#
# Installs what it needs, idempotently, so it works on a fresh Debian machine:
#   apt: chromium, fonts-noto-cjk (Chinese danmaku render as text, not boxes),
#        fonts-noto-color-emoji,
#        nodejs + npm when node is missing;
#   npm: the packages in sdk/js and web/test package-lock.json (npm ci, skipped
#        while the lock file is unchanged).
# Environment:
#   CARGO_TARGET_DIR   where the danmaku binary is built (default ~/.cache/danmaku/target)
#   DANMAKU_BIN        use this binary instead of building one
#   DANMAKU_BROWSER_RELEASE=1  build and use the release binary: the debug server
#                      answers ~400-900 of the 1,000 posts/s the load test offers on a
#                      busy 2-core box (its report says how many); the release one
#                      keeps up. CI uses the debug build; BENCHMARKS.md says which.
#   DANMAKU_ARTIFACTS  screenshots (PNG) and the load report (default artifacts/browser)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku/target}"
export DANMAKU_ARTIFACTS="${DANMAKU_ARTIFACTS:-$PWD/artifacts/browser}"

echo "==> browser tests: install what is missing"
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || need+=(fonts-noto-color-emoji)
if [ ${#need[@]} -gt 0 ]; then
  echo "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
node --version
/usr/bin/chromium --version 2>/dev/null || true

npm_install() { # dir: npm ci unless node_modules matches the lock file
  local dir=$1 stamp="$1/node_modules/.danmaku-lock.sha256" sum
  sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$sum" > "$stamp"
  fi
}
npm_install sdk/js
npm_install web/test

echo "==> SDK bundle is up to date (web/ serves sdk/js/dist/danmaku.min.js)"
(cd sdk/js && node scripts/build.mjs --check)

if [ -z "${DANMAKU_BIN:-}" ] && [ "${DANMAKU_BROWSER_RELEASE:-0}" = 1 ]; then
  echo "==> cargo build --release (DANMAKU_BROWSER_RELEASE=1)"
  cargo build -p danmaku --release --locked --quiet
  export DANMAKU_BIN="$CARGO_TARGET_DIR/release/danmaku"
elif [ -z "${DANMAKU_BIN:-}" ]; then
  echo "==> cargo build (the danmaku binary the tests start)"
  cargo build -p danmaku --locked --quiet
  export DANMAKU_BIN="$CARGO_TARGET_DIR/debug/danmaku"
fi
echo "binary: $DANMAKU_BIN"

echo "==> SDK tests (node --test, real standalone)"
(cd sdk/js && npm test)

echo "==> player page in headless Chromium (puppeteer-core, real standalone)"
mkdir -p "$DANMAKU_ARTIFACTS"
(cd web/test && npm test)
echo "screenshots and load report:"
ls -1 "$DANMAKU_ARTIFACTS"/*.png "$DANMAKU_ARTIFACTS"/*.json 2>/dev/null || true
