#!/usr/bin/env bash
# `make fuzz`: builds the cargo-fuzz targets of fuzz/ on the nightly toolchain and runs each for
# FUZZ_SECONDS (default 60), starting from the corpus kept in fuzz/corpus/<target>. New inputs
# go to fuzz/target/corpus/<target> (scratch); a crashing input is copied to
# fuzz/regressions/<target>/, where tests/fuzz_corpus.rs replays it in `make test` until fixed.
# FUZZ_TARGETS narrows the run to some targets. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-$(ls fuzz_targets | sed 's/\.rs$//')}

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

# Safe Rust has nothing for AddressSanitizer to find; without it a target runs about twice as
# fast. Debug assertions stay on, so an arithmetic overflow is a crash.
flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"

failed=()
printf '\n| target | seconds | executions | corpus | crashes |\n|---|---|---|---|---|\n' > target/summary.md
for target in $targets; do
  mkdir -p "target/corpus/$target"
  log="target/$target.log"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -dict=pushlite.dict -max_len=8192 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  corpus=$(find "target/corpus/$target" "corpus/$target" -type f | wc -l)
  crashes=0
  if [ "$status" != 0 ]; then
    mkdir -p "regressions/$target"
    for artifact in artifacts/"$target"/*; do
      [ -f "$artifact" ] && cp "$artifact" "regressions/$target/" && crashes=$((crashes + 1))
    done
    failed+=("$target")
    tail -40 "$log"
  fi
  printf '| %s | %s | %s | %s | %s |\n' "$target" "$seconds" "$runs" "$corpus" "$crashes" | tee -a target/summary.md
done
cat target/summary.md
if [ ${#failed[@]} != 0 ]; then
  echo "make fuzz: crashes in ${failed[*]}; the inputs are in fuzz/regressions/ (replayed by tests/fuzz_corpus.rs)"
  exit 1
fi
