"""Connection-heavy clients: pgrouter's own authentication and pooling against
a direct connection, PgBouncer (session mode, same users), HAProxy (TCP), and
pgrouter passthrough, in one run on one PostgreSQL 15 server.

- pgbench -C (a new connection per transaction, `select 1`) with an md5 user
  and a SCRAM user: TPS and each proxy's CPU per new client connection.
- persistent pgbench -S at several client counts: pgrouter with auth = router
  and pool_mode = session next to today's relay (passthrough, no pool), and
  the peers, to show the per-message path is unchanged.
- memory: RSS growth per held session, pgrouter pooled vs not.

Every way is run in turn for each row (interleaved), --repeat times; medians.
Usage: /usr/bin/python3 bench/auth_pool.py [--duration 10] [--repeat 3]
       [--connect-clients 8] [--clients 1,8,32] [--idle 500] [--out FILE]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import PG_BIN, PgCluster, Router, as_postgres, chown_postgres, free_port  # noqa
from run import (HAProxy, Proxy, cpu_seconds, idle_rss_per_session, median,  # noqa: E402
                 raise_nofile)
from wire import Wire, scram_login  # noqa: E402

USERS = {"md5user": "md5pw", "scramuser": "scrampw"}
WORKERS = os.cpu_count()


class PgBouncerAuth(Proxy):
    """PgBouncer in session mode authenticating md5 and SCRAM users from an
    auth_file of their verifiers (the way pgrouter's auth_file works)."""
    name = "pgbouncer"

    def __init__(self, workdir, backend_port, userlist, pool_size):
        self.dir = os.path.join(workdir, "pgbouncer-auth")
        os.makedirs(self.dir, exist_ok=True)
        chown_postgres(self.dir)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "pgbouncer.ini")
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write(userlist)
        with open(self.conf, "w") as f:
            f.write("""[databases]
* = host=127.0.0.1 port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = md5
auth_file = %s/users.txt
pool_mode = session
max_client_conn = 5000
default_pool_size = %d
ignore_startup_parameters = extra_float_digits
logfile = %s/pgbouncer.log
pidfile =
log_connections = 0
log_disconnections = 0
""" % (backend_port, self.port, self.dir, pool_size, self.dir))
        for p in ("users.txt", "pgbouncer.ini"):
            chown_postgres(os.path.join(self.dir, p))

    def start(self):
        return self.spawn(as_postgres() + ["pgbouncer", self.conf])


class RouterWay:
    def __init__(self, name, workdir, cluster, auth, pool, pool_size):
        self.name = name
        listener = {"target_session_attrs": "read-write", "auth": auth}
        if pool:
            listener["pool_mode"] = "session"
            listener["pool_size"] = pool_size
        self.router = Router([s.addr for s in cluster.servers], {"rw": listener}, workdir,
                             workers=WORKERS, log_level="warning", max_client_conn=5000,
                             probe_interval="1s", queue_timeout="30s")

    def start(self):
        import resource
        old = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise_nofile()
        self.router.start(wait_topology=False)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
        self.port = self.router.port("rw")
        self.proc = self.router.proc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                w = Wire(self.port, timeout=2)
                msgs, _ = scram_login(w, "scramuser", "scrampw")
                w.close()
                if msgs and msgs[-1][0] == b"Z":
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError("%s does not route" % self.name)

    def stop(self):
        self.router.stop()


def pgbench(port, user, args):
    cmd = [os.path.join(PG_BIN, "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", user]
    cmd += args + ["postgres"]
    env = dict(os.environ, PGPASSWORD=USERS[user], PGSSLMODE="disable")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       input="select 1;\n" if "-f" in args else None)
    if r.returncode != 0:
        raise RuntimeError("pgbench failed: %s\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    tps = float(re.search(r"tps = ([\d.]+)", r.stdout).group(1))
    txns = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))
    return tps, txns


def scram_session(port, user="scramuser"):
    w = Wire(port)
    msgs, _ = scram_login(w, user, USERS[user])
    if not msgs or msgs[-1][0] != b"Z":
        raise RuntimeError("login failed: %r" % msgs[-1:])
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--connect-clients", type=int, default=8)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="pgrouter worker threads (default: CPUs)")
    ap.add_argument("--only", default=None,
                    help="comma-separated ways to run besides direct (default: all)")
    ap.add_argument("--rows", default="connect,persistent")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    global WORKERS
    WORKERS = args.workers
    raise_nofile()
    cluster = PgCluster(0, conf={"password_encryption": "'scram-sha-256'",
                                 "max_connections": args.idle * 2 + 300},
                        hba=["host all md5user 127.0.0.1/32 md5",
                             "host all scramuser 127.0.0.1/32 scram-sha-256"]).start()
    ways = []
    results = {"connect": [], "persistent": [], "held_bytes": {}, "config": vars(args)}
    try:
        p = cluster.primary
        p.sql("set password_encryption = 'md5'; create role md5user login password 'md5pw'")
        p.sql("create role scramuser login password 'scrampw'")
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(args.scale),
                        "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "postgres"],
                       check=True, capture_output=True)
        p.sql("grant select on all tables in schema public to md5user, scramuser")
        p.sql("vacuum analyze")
        userlist = "".join('"%s" "%s"\n' % tuple(line.split("|")) for line in p.sql(
            "select rolname || '|' || rolpassword from pg_authid where rolname in "
            "('md5user', 'scramuser')").splitlines())
        # the same pool size for PgBouncer and pgrouter, large enough for every row
        size = max(100, args.idle + 50)
        targets = [
            RouterWay("pgrouter-pass", cluster.dir, cluster, "passthrough", False, size).start(),
            RouterWay("pgrouter-auth", cluster.dir, cluster, "router", False, size).start(),
            RouterWay("pgrouter-pool", cluster.dir, cluster, "router", True, size).start(),
            PgBouncerAuth(cluster.dir, p.port, userlist, size).start(),
            HAProxy(cluster.dir, p.port).start(),
        ]
        if args.only:
            keep = args.only.split(",")
            for t in targets:
                if t.name not in keep:
                    t.stop()
            targets = [t for t in targets if t.name in keep]
        ways = [("direct", p.port, None)] + [(t.name, t.port, t.proc.pid) for t in targets]

        def row(kind, label, user, pgargs):
            samples = {name: [] for name, _, _ in ways}
            for _ in range(args.repeat):
                for name, port, pid in ways:
                    cpu0 = cpu_seconds(pid) if pid else 0
                    tps, txns = pgbench(port, user, pgargs)
                    cpu = (cpu_seconds(pid) - cpu0) if pid else 0
                    samples[name].append((tps, txns, cpu))
            for name, _, pid in ways:
                ss = samples[name]
                r = {"row": label, "user": user, "way": name,
                     "tps": median([x[0] for x in ss]), "tps_samples": [x[0] for x in ss],
                     "cpu_us": median([x[2] * 1e6 / x[1] for x in ss]) if pid else None}
                results[kind].append(r)
                print("%-22s %-10s %-14s tps=%9.1f cpu=%s" % (
                    label, user, name, r["tps"],
                    "%.1f us" % r["cpu_us"] if r["cpu_us"] is not None else "-"), flush=True)

        for user in ("md5user", "scramuser") if "connect" in args.rows else ():
            row("connect", "-C -c%d select 1" % args.connect_clients, user,
                ["-C", "-c", str(args.connect_clients), "-j", "2", "-T", str(args.duration),
                 "-f", "/dev/stdin"])
        for c in [int(x) for x in args.clients.split(",")] if "persistent" in args.rows else []:
            row("persistent", "-S -c%d" % c, "scramuser",
                ["-S", "-c", str(c), "-j", str(min(c, 2)), "-T", str(args.duration)])
        if args.idle:
            for t in targets:
                if t.name.startswith("pgrouter"):
                    b = idle_rss_per_session(t.port, t.proc.pid, args.idle,
                                             login=scram_session)
                    results["held_bytes"][t.name] = b
                    print("%-14s %.0f bytes RSS per held session (%d open)" % (
                        t.name, b, args.idle), flush=True)
    except BaseException:
        # keep the proxies' logs for a look at what went wrong
        keep = os.environ.get("BENCH_KEEP_LOGS", "/tmp/pgrouter-bench-logs")
        os.makedirs(keep, exist_ok=True)
        for name in os.listdir(cluster.dir):
            if name.endswith(".log"):
                shutil.copy(os.path.join(cluster.dir, name), keep)
        print("logs kept in " + keep, file=sys.stderr)
        raise
    finally:
        for t in ways and targets or []:
            t.stop()
        cluster.cleanup()
    report(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def report(results):
    for kind, title in (("connect", "connection per transaction: TPS (ratio to direct) / proxy "
                         "CPU µs per client connection"),
                        ("persistent", "persistent sessions, scramuser: TPS (ratio to direct) / "
                         "proxy CPU µs per transaction")):
        runs = results[kind]
        names = []
        for r in runs:
            if r["way"] not in names:
                names.append(r["way"])
        print()
        print(title)
        print("| load | user | " + " | ".join(names) + " |")
        print("|" + "---|" * (2 + len(names)))
        rows = []
        for r in runs:
            if (r["row"], r["user"]) not in rows:
                rows.append((r["row"], r["user"]))
        for label, user in rows:
            d = [r for r in runs if r["row"] == label and r["user"] == user and
                 r["way"] == "direct"][0]
            cells = []
            for n in names:
                r = [x for x in runs if x["row"] == label and x["user"] == user and
                     x["way"] == n][0]
                if n == "direct":
                    cells.append("%.0f" % r["tps"])
                else:
                    cells.append("%.0f (%.2f) / %.1f" % (r["tps"], r["tps"] / d["tps"],
                                                        r["cpu_us"]))
            print("| `%s` | %s | %s |" % (label, user, " | ".join(cells)))
    if results["held_bytes"]:
        print()
        print("RSS per held session (client + its server connection record where pooled)")
        for n, b in results["held_bytes"].items():
            print("| %s | %.0f bytes |" % (n, b))


if __name__ == "__main__":
    main()
