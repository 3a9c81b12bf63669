#!/usr/bin/env bash
# Failover under load: pgbench through pgrouter (sessions move), pgrouter
# without credentials and HAProxy at once, on real Patroni clusters.
# Arguments go to bench/failover.py (--dcs, --duration, --clients, --scenarios, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh python3-matplotlib
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target pgrouter
exec /usr/bin/python3 bench/failover.py "$@"
