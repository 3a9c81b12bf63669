#!/usr/bin/env bash
# Benchmark: pgbench through pgrouter vs direct vs HAProxy vs PgBouncer, one run.
# Extra arguments go to bench/run.py (--duration, --clients, --idle, --workers, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target pgrouter
exec /usr/bin/python3 bench/run.py "$@"
