"""The soak (issue 12): mixed load through pgrouter in front of a three-member
Patroni cluster on etcd, with a Patroni switchover every --switchover-every
seconds and an etcd member restart half-way between two, for --minutes
(three etcd members, restarted in turn; --etcd-members 1 restarts the only
one: Patroni then has no DCS for a few seconds).

Load: writers that insert numbered rows and remember which commits they saw
acknowledged (one connecting per transaction, two on persistent connections
that reconnect after an error), and pgbench -S (persistent and -C) on the
standby port. pgrouter authenticates the clients itself (auth = router), so
its sessions move at a switchover instead of ending.

Checks, at the end: every acknowledged row is on the final primary (a write
acknowledged by a demoted primary would be rewound away and missing: none
may be; each missing row is printed with the server that acknowledged it,
when, and the leader changes pgrouter read and Patroni recorded, so that a
row lost by the cluster's own failover can be told from one pgrouter sent to
a server that was no longer primary), pgrouter exited cleanly with no
sanitizer report, and it prints
pgrouter's RSS and open descriptors as a series (every 10 s) with the
number of failed transactions per kind.

Usage: tests/soak.sh [--minutes 20] [--asan]   (runs this with the build it makes)
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness"))

import psycopg2  # noqa: E402

from cluster import PG_BIN, Router, log_time, rss_kb, wait_for  # noqa: E402
from patroni import PatroniCluster  # noqa: E402

PGBENCH = os.path.join(PG_BIN, "pgbench")


class Writer(threading.Thread):
    def __init__(self, dsn, first, persistent):
        super().__init__(daemon=True)
        self.dsn, self.next, self.persistent = dsn, first, persistent
        self.stop = threading.Event()
        self.acked, self.failed = [], []

    def run(self):
        c = None
        while not self.stop.is_set():
            i = self.next
            self.next += 1
            try:
                if c is None:
                    c = psycopg2.connect(self.dsn + " connect_timeout=60")
                    c.autocommit = True
                cur = c.cursor()
                cur.execute("insert into soak values (%s) returning port", (i,))
                self.acked.append((i, time.time(), cur.fetchone()[0]))
                if not self.persistent:
                    c.close()
                    c = None
            except psycopg2.Error as e:
                self.failed.append((time.time(), i, str(e).strip().splitlines()[0]))
                try:
                    c.close()
                except Exception:
                    pass
                c = None
                time.sleep(0.2)
            time.sleep(0.005)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--switchover-every", type=int, default=120)
    ap.add_argument("--etcd-members", type=int, default=3)
    ap.add_argument("--pgrouter", required=True)
    args = ap.parse_args()
    pc = PatroniCluster(3, hba=["host all app 127.0.0.1/32 scram-sha-256"],
                        etcd_members=args.etcd_members).start()
    etcds = pc.etcd.members if args.etcd_members > 1 else [pc.etcd]
    router = None
    try:
        leader = pc.leader()
        leader.sql("create table soak(i bigint primary key, at timestamptz not null default "
                   "clock_timestamp(), port int not null default inet_server_port())")
        leader.sql("create role app login password 'apppw'; grant all on soak to app")
        subprocess.run([PGBENCH, "-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p",
                        str(leader.pg_port), "-U", "postgres", "postgres"], check=True,
                       capture_output=True)
        leader.sql("grant select on all tables in schema public to app")
        pc.wait_healthy(60)
        # the role and its grants replayed on the standbys before pgbench reads
        # there (it gave up at once in the first soak: permission denied)
        for n in pc.replicas():
            wait_for(lambda: n.sql("select has_table_privilege('app', 'pgbench_branches', "
                                   "'select')") == "t", 60, "grants replayed on " + n.name)
        router = Router(None, {"rw": {"target_session_attrs": "read-write"},
                               "ro": {"target_session_attrs": "prefer-standby"}}, pc.dir,
                        pgrouter=args.pgrouter,
                        cluster={"source": "etcd",
                                 "etcd_endpoints": ",".join(m.url for m in etcds),
                                 "scope": pc.scope},
                        auth="router", probe_interval="500ms", queue_timeout="40s",
                        drain_timeout="5s", log_level="info").start()
        pid = router.proc.pid
        dsn = router.dsn("rw", user="app", password="apppw")
        writers = [Writer(dsn, 1, False), Writer(dsn, 10 ** 9, True),
                   Writer(dsn, 2 * 10 ** 9, True)]
        for w in writers:
            w.start()
        env = dict(os.environ, PGPASSWORD="apppw")
        seconds = int(args.minutes * 60)
        benches = [subprocess.Popen([PGBENCH, "-n", "-S", "-c", "4", "-T", str(seconds)] + extra
                                    + ["-h", "127.0.0.1", "-p", str(router.port("ro")), "-U",
                                       "app", "postgres"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                   for extra in ([], ["-C"])]
        series, events = [], []
        restarts = 0
        start = time.monotonic()
        next_switch = start + args.switchover_every
        next_etcd = start + args.switchover_every / 2
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_switch:
                try:
                    old = pc.wait_healthy(120)
                    pc.switchover()
                    events.append((round(now - start), "switchover from %s" % old.name))
                except Exception as e:
                    events.append((round(now - start), "switchover failed: %s" % e))
                next_switch += args.switchover_every
            elif now >= next_etcd:
                member = etcds[restarts % len(etcds)]
                restarts += 1
                member.stop()
                time.sleep(3)
                member.start()
                events.append((round(now - start), "etcd %s restarted" % member.name))
                next_etcd += args.switchover_every
            if not series or now - start - series[-1][0] >= 10:
                series.append((round(now - start), rss_kb(pid), len(os.listdir("/proc/%d/fd" % pid))))
            time.sleep(1)
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(120)
        outs = [b.communicate(timeout=120)[0] for b in benches]
        final = pc.wait_healthy(120)
        present = set(int(x) for x in final.sql("select i from soak").split())
        missing = sorted((a for w in writers for a in w.acked if a[0] not in present),
                         key=lambda a: a[1])
        print("pgrouter RSS kB / open descriptors, every 10 s:")
        print("  " + " ".join("%ds:%d/%d" % s for s in series))
        print("events: %s" % events)
        for w, kind in zip(writers, ("per-transaction", "persistent", "persistent")):
            print("writer (%s): %d acknowledged, %d failed%s" % (
                kind, len(w.acked), len(w.failed),
                (": " + "; ".join("%s" % f[2] for f in w.failed[:3])) if w.failed else ""))
        for out, kind in zip(outs, ("persistent", "-C")):
            m = re.search(r"number of failed transactions: (\d+)", out or "")
            t = re.search(r"number of transactions actually processed: (\d+)", out or "")
            print("pgbench -S %s on the standby port: %s transactions, %s failed%s" % (
                kind, t.group(1) if t else "?", m.group(1) if m else "?",
                "" if m else ": " + (out or "")[-500:]))
        print("acknowledged rows missing on the final primary: %d" % len(missing))
        log = router.stop_clean()
        failures = sorted(f for w in writers for f in w.failed)
        if failures:
            # what pgrouter logged in the seconds before each failure
            wall0 = time.time() - (time.monotonic() - start)
            print("failed writes, at seconds into the run, with pgrouter's log before them:")
            for t, i, err in failures[:10]:
                print("  %.1fs row %d: %s" % (t - wall0, i, err))
                for line in log.splitlines():
                    lt = log_time(line, "")
                    if lt is not None and t - 3 <= lt <= t + 0.5:
                        print("    " + line[:220])
        if missing:
            def at(t):
                return time.strftime("%H:%M:%S", time.gmtime(t)) + ".%03d" % (t % 1 * 1000)
            by_port = {}
            for i, t, port in missing:
                by_port.setdefault(port, []).append((t, i))
            for port, rows in sorted(by_port.items()):
                print("  acknowledged by the server on port %d: %d rows, %s to %s UTC, e.g. %s"
                      % (port, len(rows), at(rows[0][0]), at(rows[-1][0]),
                         [i for _, i in rows[:5]]))
            print("  servers: %s" % ", ".join("%s=%d" % (n.name, n.pg_port) for n in pc.nodes))
            print("  pgrouter's leader changes:")
            for line in log.splitlines():
                if "leader key" in line or "keeping the last cluster state" in line:
                    print("    " + line[:160])
            print("  Patroni's history:\n" + pc.patronictl("history").stdout)
        print("pgrouter exited 0, no sanitizer report; %d moves, %d sheds logged" % (
            log.count("moved from"), log.count("FATAL 57P01")))
        rss = [s[1] for s in series]
        fds = [s[2] for s in series]
        print("RSS first/max/last: %d/%d/%d kB; descriptors first/max/last: %d/%d/%d" % (
            rss[0], max(rss), rss[-1], fds[0], max(fds), fds[-1]))
        router = None
        return 1 if missing else 0
    finally:
        if router:
            router.stop()
        pc.cleanup()


if __name__ == "__main__":
    sys.exit(main())
