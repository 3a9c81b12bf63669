#!/usr/bin/env bash
# Local demo: installs dependencies, builds pgrouter, starts etcd and a 3-node
# Patroni cluster (PostgreSQL 15) on loopback with pgrouter in front following it
# through etcd, and prints the DSNs. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target pgrouter
exec /usr/bin/python3 tests/harness/demo.py
