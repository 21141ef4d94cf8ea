#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time on the stable toolchain
# (libFuzzer with coverage, `--sanitizer none`: the targets look for panics, which
# need no sanitizer; see fuzz/README.md). A crash fails the run; libFuzzer's input is
# kept under fuzz/artifacts/<target>/ and printed as hex so a CI log alone can
# reproduce it:  cargo fuzz run --sanitizer none -O <target> fuzz/artifacts/<target>/crash-…
# Environment:
#   DANMAKU_FUZZ_SECS        seconds per target (default 20)
#   DANMAKU_FUZZ_TARGETS     space-separated subset (default: every target)
#   CARGO_TARGET_DIR         the fuzz build goes to $CARGO_TARGET_DIR/fuzz (its own
#                            flags, so it never invalidates the main build)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${DANMAKU_FUZZ_SECS:-20}"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku/target}/fuzz"

# Idempotent: installs only when `cargo fuzz` is missing.
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Seeds first: without them the zstd paths stay unexplored (fuzz/README.md).
CARGO_TARGET_DIR="$target_dir/seeds" cargo run --quiet --example make_seeds

targets="${DANMAKU_FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fuzz build --sanitizer none -O --target-dir "$target_dir"

failed=()
for t in $targets; do
  echo "--- fuzz $t for ${secs}s"
  mkdir -p "artifacts/$t"
  log="$target_dir/$t.log"
  # libFuzzer's progress lines go to a file; a clean run prints only its totals.
  if cargo fuzz run --sanitizer none -O --target-dir "$target_dir" "$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
  else
    tail -n 60 "$log"
    failed+=("$t")
    for f in "artifacts/$t"/*; do
      [ -f "$f" ] || continue
      echo "crash input saved: fuzz/$f ($(wc -c <"$f") bytes), hex:"
      od -An -tx1 -v "$f" | tr -d ' \n' | head -c 8192
      echo
    done
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing: every target ran ${secs}s without a crash"
