#!/usr/bin/env bash
# The soak (issue 12), outside tests/run: 20 minutes of mixed load through
# pgrouter with a Patroni switchover every 2 minutes and an etcd member restart in
# between. Prints pgrouter's RSS and descriptors as a series and what failed.
# Usage: tests/soak.sh [--minutes N] [--asan] [--switchover-every S]
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
build=build dir_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
args=()
for a in "$@"; do
  if [ "$a" = --asan ]; then build=build-asan dir_args=(-DCMAKE_BUILD_TYPE=Debug -DPGROUTER_SANITIZE=ON)
  else args+=("$a"); fi
done
cmake -S . -B "$build" "${dir_args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=66"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
exec /usr/bin/python3 tests/soak.py --pgrouter "$PWD/$build/pgrouter" "${args[@]}"
