"""The cost of metrics on the data path: persistent pgbench -S -c8 through two
pgrouters of the same binary on one PostgreSQL server — one with the HTTP
endpoint on and scraped every second, one without — interleaved, --repeat
times. Reports TPS and each pgrouter's CPU per transaction (utime + stime).

Usage: /usr/bin/python3 bench/metrics_cost.py [--duration 10] [--repeat 5] [--clients 8]
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
from cluster import PG_BIN, PgCluster, Router, cpu_seconds, free_port  # noqa: E402

PGBENCH = os.path.join(PG_BIN, "pgbench")


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    c = PgCluster(0).start()
    try:
        p = c.primary
        subprocess.run([PGBENCH, "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", str(p.port),
                        "-U", "postgres", "postgres"], check=True, capture_output=True)
        rw = {"rw": {"target_session_attrs": "read-write"}}
        http = free_port()
        on = Router([p.addr], rw, c.dir, workers=2, log_level="warning",
                    http_listen="127.0.0.1:%d" % http).start()
        off = Router([p.addr], rw, c.dir, workers=2, log_level="warning").start()
        stop = threading.Event()
        scrapes = [0]

        def scrape():
            while not stop.wait(1.0):
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http) as r:
                    r.read()
                scrapes[0] += 1
        th = threading.Thread(target=scrape, daemon=True)
        th.start()
        res = {"on": ([], []), "off": ([], [])}
        for _ in range(args.repeat):
            for name, r in (("on", on), ("off", off)):
                c0 = cpu_seconds(r.proc.pid)
                out = subprocess.run([PGBENCH, "-n", "-S", "-M", "prepared", "-c",
                                      str(args.clients), "-j", "2", "-T", str(args.duration),
                                      "-h", "127.0.0.1", "-p", str(r.port("rw")), "-U",
                                      "postgres", "postgres"], capture_output=True,
                                     text=True).stdout
                n = int(re.search(r"actually processed: (\d+)", out).group(1))
                tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
                res[name][0].append(tps)
                res[name][1].append((cpu_seconds(r.proc.pid) - c0) / n * 1e6)
        stop.set()
        th.join()
        on.stop()
        off.stop()
    finally:
        c.cleanup()
    print("| pgrouter | TPS (median of %d) | CPU µs/txn (median) |" % args.repeat)
    print("|---|---|---|")
    for name in ("off", "on"):
        print("| metrics %s | %.0f | %.2f |" % (name, median(res[name][0]), median(res[name][1])))
    print("ratio on/off: TPS %.3f, CPU %.3f (%d scrapes)" % (
        median(res["on"][0]) / median(res["off"][0]),
        median(res["on"][1]) / median(res["off"][1]), scrapes[0]))


if __name__ == "__main__":
    main()
