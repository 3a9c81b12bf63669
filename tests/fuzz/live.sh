#!/usr/bin/env bash
# The live daemon fuzzed: mutated real client streams against the ASan build.
# Usage: tests/fuzz/live.sh [seconds]   (default 120)
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/deps.sh
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPGROUTER_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=66"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
exec /usr/bin/python3 tests/fuzz/live.py --pgrouter "$PWD/build-asan/pgrouter" --seconds "${1:-120}"
