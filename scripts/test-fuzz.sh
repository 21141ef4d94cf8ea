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

# Every fuzz_targets/*.rs must be a target `cargo fuzz list` knows (a file left out
# of fuzz/Cargo.toml would otherwise never run), and a subset may name only those.
listed=$(cargo fuzz list)
files=$(cd fuzz_targets && ls -1 -- *.rs | sed 's/\.rs$//')
for f in $files; do
  grep -qx -- "$f" <<<"$listed" || { echo "fuzz_targets/$f.rs is not a target in fuzz/Cargo.toml" >&2; exit 1; }
done
targets="${DANMAKU_FUZZ_TARGETS:-$listed}"
for t in $targets; do
  grep -qx -- "$t" <<<"$listed" || { echo "no fuzz target named $t (targets: $(echo $listed))" >&2; exit 1; }
done
[ -n "${targets// /}" ] || { echo "no fuzz target to run" >&2; exit 1; }
cargo fuzz build --sanitizer none -O --target-dir "$target_dir"

failed=()
ran=()
for t in $targets; do
  echo "--- fuzz $t for ${secs}s"
  mkdir -p "artifacts/$t"
  log="$target_dir/$t.log"
  # libFuzzer's progress lines go to a file; a clean run prints only its totals.
  if cargo fuzz run --sanitizer none -O --target-dir "$target_dir" "$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || true
    # A clean exit is not proof of a run: libFuzzer must report executed inputs.
    units=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ -z "$units" ] || [ "$units" -eq 0 ]; then
      tail -n 20 "$log"
      echo "fuzz target $t reported no executed inputs" >&2
      failed+=("$t")
    else
      ran+=("$t ($units inputs)")
    fi
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
  echo "fuzzing failed for: ${failed[*]} (crash inputs under fuzz/artifacts/)" >&2
  exit 1
fi
if [ ${#ran[@]} -ne "$(wc -w <<<"$targets")" ]; then
  echo "fuzzing: ran ${#ran[@]} of $(wc -w <<<"$targets") targets" >&2
  exit 1
fi
echo "fuzzing: ${#ran[@]} targets ran ${secs}s each without a crash:"
printf '  %s\n' "${ran[@]}"
