"""Planned switchover under load: pgrouter (etcd source), pgrouter (Patroni REST
source, GET /cluster every 500 ms) and HAProxy configured the usual Patroni way (option httpchk GET /primary, inter 1s fall 2 rise 1,
on-marked-down shutdown-sessions), on the same real 3-node Patroni cluster.

Load: --clients threads, each opening a new connection per transaction (like
pgbench -C) and committing one INSERT through the proxy's read-write port. A
thread keeps going after a failure (pgbench -C would abort that client, hiding
later failures). Reported per proxy:
  failed      transactions that got an error (connection refused, FATAL, ...)
  stall       longest time with no transaction committed by any thread
  key→write   from the leader key change in etcd (pgrouter's log timestamp of
              the watch event) to the first write committed on the new primary
  key→route   pgrouter only: leader key change to that pgrouter publishing the
              new primary as routable (log timestamps; the etcd-source pgrouter
              runs throughout and is the clock for the leader key change)

Usage: /usr/bin/python3 bench/failover.py [--clients 4] [--rounds 2]
"""
import argparse
import calendar
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
import psycopg2  # noqa: E402

from cluster import Router, free_port, wait_for  # noqa: E402
from patroni import PatroniCluster  # noqa: E402
from run import Proxy  # noqa: E402


class PatroniHAProxy(Proxy):
    name = "haproxy"

    def __init__(self, workdir, nodes):
        self.port = free_port()
        self.conf = os.path.join(workdir, "haproxy-patroni.cfg")
        servers = "".join("    server %s 127.0.0.1:%d maxconn 500 check port %d\n" % (
            n.name, n.pg_port, n.api_port) for n in nodes)
        with open(self.conf, "w") as f:
            f.write("""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    timeout check 2s
listen primary
    bind 127.0.0.1:%d
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
%s""" % (self.port, servers))

    def start(self):
        return self.spawn(["haproxy", "-f", self.conf, "-db"])


def log_times(log, pattern):
    out = []
    for line in log.splitlines():
        if re.search(pattern, line):
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) UTC", line)
            if m:
                out.append((calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) +
                            int(m.group(2)) / 1000.0, line))
    return out


def load(port, clients, stop, results):
    def worker(k):
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.time()
            try:
                c = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                     dbname="postgres", connect_timeout=30)
                c.autocommit = True
                cur = c.cursor()
                cur.execute("insert into fo values (%s, %s) returning inet_server_port()",
                            (k, i))
                p = cur.fetchone()[0]
                c.close()
                results.append((t0, time.time(), True, p))
            except psycopg2.Error as e:
                results.append((t0, time.time(), False, str(e).strip().splitlines()[0]))
    ths = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in ths:
        t.start()
    return ths


def one_round(pc, router, name, port, clients, routing_log):
    old = pc.leader()
    results = []
    stop = threading.Event()
    ths = load(port, clients, stop, results)
    time.sleep(3)
    mark = len(router.log_text())
    rmark = len(routing_log.log_text()) if routing_log else 0
    t_cmd = time.time()
    pc.switchover()
    new = pc.wait_healthy(90)
    time.sleep(4)
    stop.set()
    for t in ths:
        t.join(40)
    log = router.log_text()[mark:]
    key = log_times(log, r"leader key now names %s" % new.name)
    t_key = key[0][0] if key else None
    rlog = routing_log.log_text()[rmark:] if routing_log else ""
    route = log_times(rlog, r"topology: 127\.0\.0\.1:%d primary" % new.pg_port)
    t_route = next((t for t, _ in route if t_key and t >= t_key), None)
    ok = sorted(r[1] for r in results if r[2])
    failed = [r for r in results if not r[2]]
    window = [t for t in ok if t >= t_cmd - 1]
    stall = max((b - a for a, b in zip(window, window[1:])), default=None)
    first_new = min((r[1] for r in results if r[2] and r[3] == new.pg_port), default=None)
    return {
        "proxy": name, "old": old.name, "new": new.name, "committed": len(ok),
        "failed": len(failed), "errors": sorted({f[3][:80] for f in failed}),
        "stall": stall,
        "key_to_write": (first_new - t_key) if (first_new and t_key) else None,
        "key_to_route": (t_route - t_key) if (t_route and t_key) else None,
        "cmd_to_key": (t_key - t_cmd) if t_key else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dcs", choices=("etcd", "zookeeper"), default="etcd",
                    help="Patroni's DCS; pgrouter's first instance follows it, the second "
                         "polls Patroni's REST API")
    args = ap.parse_args()
    pc = PatroniCluster(3, dcs=args.dcs).start()
    try:
        pc.leader().sql("create table fo (k int, i int)")
        dcs_conf = ({"source": "etcd", "etcd_endpoints": pc.etcd.url, "scope": pc.scope}
                    if args.dcs == "etcd" else
                    {"source": "zookeeper", "zookeeper_hosts": pc.zk.hostport,
                     "scope": pc.scope})
        router = Router(None, {"rw": {"target_session_attrs": "read-write"}}, pc.dir,
                        cluster=dcs_conf,
                        probe_interval="1s", queue_timeout="30s", log_level="info").start()
        rest = Router(None, {"rw": {"target_session_attrs": "read-write"}}, pc.dir,
                      cluster={"source": "patroni", "poll_interval": "500ms",
                               "patroni_urls": ", ".join(n.api for n in pc.nodes)},
                      probe_interval="1s", queue_timeout="30s", log_level="info").start()
        haproxy = PatroniHAProxy(pc.dir, pc.nodes).start()
        wait_for(lambda: _works(haproxy.port), 20, "haproxy routing to the primary")
        rows = []
        ways = (("pgrouter-" + args.dcs, router.port("rw"), router),
                ("pgrouter-rest", rest.port("rw"), rest),
                ("haproxy", haproxy.port, None))
        for r in range(args.rounds):
            for name, port, routing_log in ways:
                pc.wait_healthy(120)
                wait_for(lambda: _works(port), 30, name + " routing")
                res = one_round(pc, router, name, port, args.clients, routing_log)
                rows.append(res)
                print("round %d %-8s %s→%s committed=%d failed=%d stall=%s key→write=%s "
                      "key→route=%s errors=%s" % (
                          r + 1, name, res["old"], res["new"], res["committed"], res["failed"],
                          fmt(res["stall"]), fmt(res["key_to_write"]),
                          fmt(res["key_to_route"]), res["errors"]), flush=True)
        haproxy.stop()
        rest.stop()
        router.stop()
    finally:
        pc.cleanup()
    print()
    print("| proxy | round | failed txns | longest stall | leader key → first write on new "
          "primary | leader key → routed (pgrouter log) |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print("| %s | %d | %d of %d | %s | %s | %s |" % (
            r["proxy"], i // 3 + 1, r["failed"], r["failed"] + r["committed"], fmt(r["stall"]),
            fmt(r["key_to_write"]), fmt(r["key_to_route"])))


def _works(port):
    try:
        c = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             connect_timeout=3)
        cur = c.cursor()
        cur.execute("select pg_is_in_recovery()")
        ok = cur.fetchone()[0] is False
        c.close()
        return ok
    except psycopg2.Error:
        return False


def fmt(x):
    return "-" if x is None else "%.2fs" % x


if __name__ == "__main__":
    main()
