#!/usr/bin/env bash
# Installs what pgrouter needs to build, test, benchmark and run its demo, from
# Debian's packages. Safe to run again: it installs only what is missing.
# Extra package names may be given as arguments (bench/failover.sh: matplotlib).
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang
  libevent-dev libssl-dev libpq-dev libcurl4-openssl-dev libinih-dev libjansson-dev liburing-dev
  libcmocka-dev
  postgresql-15 postgresql-client-15
  python3 python3-psycopg2 util-linux procps iproute2 iptables openssl
  pgbouncer haproxy
  etcd-server etcd-client patroni python3-etcd
  zookeeper libzookeeper-mt-dev python3-kazoo
  prometheus
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts no services in these containers, but make sure the packaged
# proxies are not holding ports: the benchmark starts its own on free ports.
for svc in haproxy pgbouncer etcd patroni prometheus; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
