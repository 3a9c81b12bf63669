#!/usr/bin/env bash
# Fuzz pgwire's parsers with libFuzzer (clang). Usage: tests/fuzz/run.sh [seconds per target]
# New inputs go to a scratch copy of the corpus; the committed seeds stay as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
CC=clang cmake -S . -B build-fuzz -DPGROUTER_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_startup fuzz_frame fuzz_message fuzz_scram
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in startup frame message scram; do
  mkdir -p "$work/$t"
  cp tests/fuzz/corpus/$t/* "$work/$t/"
  echo "== fuzz_$t for ${secs}s"
  build-fuzz/fuzz_$t -max_total_time="$secs" -max_len=12000 -print_final_stats=1 \
    -artifact_prefix="$work/" "$work/$t" 2>&1 | grep -E "^stat::number_of_executed_units|^stat::new_units_added|ERROR|SUMMARY" || true
  # any one of the kinds is a failure (ls of all three fails when one kind is absent)
  found=$(find "$work" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \))
  if [ -n "$found" ]; then
    echo "fuzz_$t found a failing input:"; echo "$found"
    exit 1
  fi
done
echo "== no crashes"
