"""System calls per transaction of each proxy (issue 13's first profile).

One PostgreSQL 15 server (pgbench scale 10); pgrouter (each --workers value),
HAProxy and PgBouncer in front of it as bench/run.py configures them. For
each, `strace -c -f` is attached to the proxy while pgbench -S runs through it,
and the calls are divided by the transactions pgbench completed. strace slows
the proxy down a lot: the counts are what this measures, not the speed.

Needs strace (tests/deps.sh strace installs it).
Usage: /usr/bin/python3 bench/syscalls.py [--clients 8] [--seconds 5] [--connect] [--tls]
                                          [--workers 2,1] [--only pgrouter,haproxy,pgbouncer]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))

import run as bench  # noqa: E402
from cluster import PG_BIN, PgCluster, chown_postgres  # noqa: E402
from tlsca import TestCA  # noqa: E402

PGBENCH = os.path.join(PG_BIN, "pgbench")


def per_transaction(proc_pid, port, clients, seconds, workdir, name, connect=False, tls=False):
    """{syscall: calls per transaction} while pgbench -S runs through port
    (connect: -C, a new connection per transaction; tls: clients on TLS)."""
    out_file = os.path.join(workdir, name + ".strace")
    st = subprocess.Popen(["strace", "-c", "-f", "-p", str(proc_pid), "-o", out_file],
                          stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached to every thread
    r = subprocess.run([PGBENCH, "-n", "-S"] + (["-C"] if connect else []) +
                       ["-c", str(clients), "-j", str(min(clients, 2)),
                        "-T", str(seconds), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "postgres", "postgres"], capture_output=True, text=True,
                       env=dict(os.environ, PGSSLMODE="require" if tls else "disable"))
    st.terminate()
    st.wait()
    m = re.search(r"transactions actually processed: (\d+)", r.stdout)
    if not m or int(m.group(1)) == 0:
        raise RuntimeError("pgbench through %s: %s" % (name, r.stdout[-500:] + r.stderr[-500:]))
    txns = int(m.group(1))
    calls = {}
    with open(out_file) as f:
        for line in f:
            # % time, seconds, usecs/call, calls, [errors,] syscall
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1)) / txns
    return txns, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workers", default="2,1", help="pgrouter worker counts to try")
    ap.add_argument("--only", default="pgrouter,haproxy,pgbouncer")
    ap.add_argument("--connect", action="store_true",
                    help="pgbench -C: a new connection per transaction")
    ap.add_argument("--tls", action="store_true",
                    help="clients on TLS (HAProxy passes it through to PostgreSQL)")
    args = ap.parse_args()
    if not shutil.which("strace"):
        sys.exit("needs strace: tests/deps.sh strace")
    only = args.only.split(",")
    workdir = tempfile.mkdtemp(prefix="pgrouter-syscalls-")
    conf = {"max_connections": 300}
    tls = None
    if args.tls:
        os.chmod(workdir, 0o755)
        chown_postgres(workdir)
        tls = TestCA(workdir, key="ec").issue("server", "127.0.0.1", ["IP:127.0.0.1"])
        conf.update(ssl="on", ssl_cert_file="'%s'" % tls[0], ssl_key_file="'%s'" % tls[1])
    cluster = PgCluster(0, conf=conf).start()
    rows = []
    try:
        subprocess.run([PGBENCH, "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p",
                        str(cluster.primary.port), "-U", "postgres", "postgres"],
                       check=True, capture_output=True)
        targets = []
        if "pgrouter" in only:
            targets += [("pgrouter w=%s" % w, lambda w=w: bench.PgRouterTarget(
                cluster.dir, cluster, int(w), tls).start()) for w in args.workers.split(",")]
        if "haproxy" in only:
            targets.append(("haproxy", lambda: bench.HAProxy(cluster.dir,
                                                            cluster.primary.port).start()))
        if "pgbouncer" in only:
            targets.append(("pgbouncer", lambda: bench.PgBouncer(cluster.dir,
                                                                cluster.primary.port,
                                                                tls).start()))
        for name, start in targets:
            t = start()
            try:
                txns, calls = per_transaction(t.proc.pid, t.port, args.clients, args.seconds,
                                              workdir, name.replace(" ", "_").replace("=", ""),
                                              args.connect, args.tls)
            finally:
                t.stop()
            rows.append((name, txns, calls))
            print("%-14s %d transactions" % (name, txns), flush=True)
    finally:
        cluster.cleanup()
    names = sorted({k for _, _, c in rows for k, v in c.items() if v >= 0.01},
                   key=lambda k: -max(c.get(k, 0) for _, _, c in rows))
    print("\nsystem calls per transaction, %spgbench -S%s -c%d (strace -c -f on the proxy)"
          % ("TLS " if args.tls else "", " -C" if args.connect else "", args.clients))
    print("| call | " + " | ".join(n for n, _, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in names:
        print("| %s | " % k + " | ".join("%.2f" % c.get(k, 0) for _, _, c in rows) + " |")
    print("| total | " + " | ".join("%.2f" % sum(c.values()) for _, _, c in rows) + " |")


if __name__ == "__main__":
    main()
