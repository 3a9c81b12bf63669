#!/usr/bin/env bash
# Local demo: installs dependencies, builds pgrouter, starts a PostgreSQL primary
# and two streaming replicas on loopback with pgrouter in front, prints the DSNs.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target pgrouter
exec /usr/bin/python3 tests/harness/demo.py
