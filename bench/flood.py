"""Floods, measured (issue 12): many client connections that send nothing, a
client that stops reading a large result — against one pgrouter in front of one
PostgreSQL server, with a pgbench -S run beside each to see whether anyone else
slows down.

  1. --silent N connections that never send a byte: pgrouter's RSS per
     connection, pgbench's TPS during the flood against before it, and the
     time until startup_timeout closed them all.
  2. A client that stops reading a --result-mb MB result for 10 s: pgrouter's
     RSS growth meanwhile (backpressure), then the result read whole.

Usage: /usr/bin/python3 bench/flood.py [--silent 9000] [--result-mb 1024]
"""
import argparse
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
from cluster import PG_BIN, PgCluster, Router, rss_kb  # noqa: E402
from wire import Wire, cstr, msg  # noqa: E402

PGBENCH = os.path.join(PG_BIN, "pgbench")


def pgbench_tps(port, seconds):
    r = subprocess.run([PGBENCH, "-n", "-S", "-c", "4", "-j", "2", "-T", str(seconds), "-h",
                        "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
                       capture_output=True, text=True, check=True)
    return float(re.search(r"tps = ([0-9.]+)", r.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--silent", type=int, default=9000)
    ap.add_argument("--result-mb", type=int, default=1024)
    ap.add_argument("--startup-timeout", type=int, default=10)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    c = PgCluster(0).start()
    try:
        p = c.primary
        subprocess.run([PGBENCH, "-i", "-q", "-s", "5", "-h", "127.0.0.1", "-p", str(p.port),
                        "-U", "postgres", "postgres"], check=True, capture_output=True)
        r = Router([p.addr], {"rw": {}}, c.dir, workers=2, log_level="warning",
                   max_client_conn=10000, startup_timeout="%ds" % args.startup_timeout).start()
        pid = r.proc.pid
        port = r.port("rw")
        base_tps = pgbench_tps(port, 5)
        base_rss = rss_kb(pid)

        # 1. silent connections
        t0 = time.monotonic()
        socks = []
        for _ in range(args.silent):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        opened = time.monotonic() - t0
        time.sleep(0.5)
        flood_rss = rss_kb(pid)
        flood_tps = pgbench_tps(port, 5)
        pending = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        refused = closed = 0
        while pending and time.monotonic() - t0 < args.startup_timeout + 20:
            for fd, _ in poller.poll(500):
                s = pending.pop(fd)
                poller.unregister(fd)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data[:1] == b"E":
                    refused += 1
                else:
                    closed += 1
        all_closed = time.monotonic() - t0
        for s in socks:
            s.close()
        time.sleep(1)
        after_rss = rss_kb(pid)
        after_tps = pgbench_tps(port, 5)
        per_conn = (flood_rss - base_rss) * 1024.0 / args.silent
        print("silent connections: %d opened in %.1fs; pgrouter RSS %d -> %d kB "
              "(%.0f bytes per connection); %d refused with 53300, %d closed quietly, "
              "%d still open, the last after %.1fs (startup_timeout %ds); RSS after: %d kB"
              % (args.silent, opened, base_rss, flood_rss, per_conn, refused, closed,
                 len(pending), all_closed, args.startup_timeout, after_rss))
        print("pgbench -S -c4 beside them: %.0f TPS before, %.0f during, %.0f after (during / "
              "mean of before and after: %.2f)" % (base_tps, flood_tps, after_tps,
                                                   2 * flood_tps / (base_tps + after_tps)))

        # 2. a client that stops reading a large result
        rows = args.result_mb * 1024  # 1 kB rows
        w = Wire(port, timeout=120)
        w.login()
        before = rss_kb(pid)
        w.send(msg(b"Q", cstr("select repeat('z', 1000) from generate_series(1, %d)" % rows)))
        peak = before
        for _ in range(20):
            time.sleep(0.5)
            peak = max(peak, rss_kb(pid))
        got = 0
        while True:
            t, b = w.read_msg()
            if t == b"D":
                got += 1
            elif t == b"Z":
                break
        w.close()
        print("a client not reading a %d MB result for 10 s: pgrouter RSS %d kB -> peak %d kB "
              "(+%d kB); then %d of %d rows read" % (args.result_mb, before, peak,
                                                     peak - before, got, rows))
        r.stop_clean()
    finally:
        c.cleanup()


if __name__ == "__main__":
    main()
