"""pgrouter benchmark: the same PostgreSQL cluster reached four ways in one run —
direct, through pgrouter, through HAProxy (TCP mode) and through PgBouncer
(session mode) — with pgbench select-only at several client counts, with and
without -C (a new connection per transaction).

Reports TPS and each proxy's ratio to direct, the CPU time each proxy process
used per transaction (utime+stime from /proc/PID/stat), and its memory per idle
session (RSS growth with N idle sessions open / N).

With --tls every client connects with sslmode=require: PostgreSQL runs with
ssl=on (a test CA's certificate), pgrouter and PgBouncer terminate the
client's TLS and reach the server in plaintext, and HAProxy, which cannot
terminate PostgreSQL's TLS (it starts with an SSLRequest), passes it through in
TCP mode to the TLS-enabled server; "direct" is TLS to PostgreSQL itself.

Usage: /usr/bin/python3 bench/run.py [--duration 10] [--clients 1,8,32]
                                     [--idle 1000] [--workers 1] [--tls] [--out FILE]
"""
import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
from cluster import (PG_BIN, PgCluster, Router, as_postgres, chown_postgres,  # noqa: E402
                     cpu_seconds, free_port, rss_kb, stop_pid, track, untrack, wait_for)
from tlsca import TestCA  # noqa: E402
from wire import Wire  # noqa: E402



# client connections each proxy admits: raised with --idle (10,000 idle
# sessions need 20,000 descriptors in a proxy: the clients' and the servers')
CONN_LIMIT = 5000


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(65536, 3 * CONN_LIMIT)
    try:  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Proxy:
    """A proxy process started from its configuration file, stopped by PID."""

    def spawn(self, cmd):
        self.proc = track(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, preexec_fn=raise_nofile))
        wait_for(lambda: accepts(self.port), 10, self.name)
        return self

    def stop(self):
        stop_pid(self.proc.pid)
        self.proc.wait()
        untrack(self.proc)


class HAProxy(Proxy):
    name = "haproxy"

    def __init__(self, workdir, backend_port):
        self.port = free_port()
        self.conf = os.path.join(workdir, "haproxy.cfg")
        # TCP mode as in the usual Patroni setup (here a plain TCP check: there is
        # no Patroni REST API in this cluster)
        with open(self.conf, "w") as f:
            f.write("""global
    maxconn %d
defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:%d
    maxconn %d
    server primary 127.0.0.1:%d check inter 1s fall 2 rise 1
""" % (CONN_LIMIT + 300, self.port, CONN_LIMIT + 300, backend_port))

    def start(self):
        return self.spawn(["haproxy", "-f", self.conf, "-db"])


class PgBouncer(Proxy):
    name = "pgbouncer"

    def __init__(self, workdir, backend_port, tls=None):
        self.dir = os.path.join(workdir, "pgbouncer")
        os.makedirs(self.dir, exist_ok=True)
        chown_postgres(self.dir)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "pgbouncer.ini")
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write('"postgres" ""\n')
        with open(self.conf, "w") as f:
            f.write("""[databases]
* = host=127.0.0.1 port=%d
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/users.txt
pool_mode = session
max_client_conn = %d
default_pool_size = %d
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = %s/pgbouncer.log
pidfile =
log_connections = 0
log_disconnections = 0
""" % (backend_port, self.port, self.dir, CONN_LIMIT, max(2000, CONN_LIMIT), self.dir))
            if tls:
                f.write("client_tls_sslmode = require\nclient_tls_cert_file = %s\n"
                        "client_tls_key_file = %s\nserver_tls_sslmode = disable\n" % tls)
        for p in ("users.txt", "pgbouncer.ini"):
            chown_postgres(os.path.join(self.dir, p))

    def start(self):
        return self.spawn(as_postgres() + ["pgbouncer", self.conf])


class PgRouterTarget:
    name = "pgrouter"

    def __init__(self, workdir, cluster, workers, tls=None):
        settings = {}
        if tls:
            settings = {"client_tls": "require", "client_tls_cert": tls[0],
                        "client_tls_key": tls[1]}
        self.tls = bool(tls)
        self.router = Router([s.addr for s in cluster.servers],
                             {"rw": {"target_session_attrs": "read-write"}}, workdir,
                             workers=workers, log_level="warning",
                             max_client_conn=CONN_LIMIT, probe_interval="1s", **settings)

    def start(self):
        old = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise_nofile()  # inherited by pgrouter
        self.router.start(wait_topology=False)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
        wait_for(lambda: "topology" in self.router.log_text() or self._routes(), 10,
                 "pgrouter routing")
        self.port = self.router.port("rw")
        self.proc = self.router.proc
        return self

    def _routes(self):
        try:
            w = Wire(self.router.port("rw"), timeout=2)
            if self.tls:
                w.start_tls()
            w.login()
            w.close()
            return True
        except Exception:
            return False

    def stop(self):
        self.router.stop()


def pgbench(port, clients, duration, connect_each, extra=(), tls=False):
    threads = min(clients, 2)
    cmd = [os.path.join(PG_BIN, "pgbench"), "-n", "-S", "-T", str(duration), "-c", str(clients),
           "-j", str(threads), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    if connect_each:
        cmd.append("-C")
    cmd += list(extra) + ["postgres"]
    env = dict(os.environ, PGSSLMODE="require" if tls else "disable")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("pgbench failed: %s\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    tps = float(re.search(r"tps = ([\d.]+)", r.stdout).group(1))
    txns = int(re.search(r"number of transactions actually processed: (\d+)", r.stdout).group(1))
    failed = int(re.search(r"number of failed transactions: (\d+)", r.stdout).group(1))
    return tps, txns, failed


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def idle_rss_per_session(port, pid, n, tls=False, login=None):
    """RSS growth of pid per idle session, with n fully started sessions open.
    login(port) opens one (default: trust login, TLS with tls)."""
    def session():
        if login:
            return login(port)
        w = Wire(port)
        if tls:
            w.start_tls()
        w.login()
        return w
    warm = [session() for _ in range(20)]
    for w in warm:
        w.close()
    time.sleep(0.5)
    before = rss_kb(pid)
    held = []
    try:
        for _ in range(n):
            held.append(session())
        time.sleep(0.5)
        after = rss_kb(pid)
    finally:
        for w in held:
            w.close()
    return (after - before) * 1024.0 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="pgrouter worker threads (default: CPUs, as HAProxy's nbthread)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per cell; the median is reported (this machine is noisy)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--only", default="direct,pgrouter,haproxy,pgbouncer")
    ap.add_argument("--tls", action="store_true",
                    help="clients use TLS (sslmode=require); see the top of this file")
    ap.add_argument("--out", default=None, help="write results as JSON here")
    args = ap.parse_args()
    global CONN_LIMIT
    CONN_LIMIT = max(CONN_LIMIT, args.idle + 500)
    raise_nofile()
    clients = [int(c) for c in args.clients.split(",")]
    only = args.only.split(",")
    conf = {"max_connections": args.idle + 300}
    tls = None
    if args.tls:
        tlsdir = tempfile.mkdtemp(prefix="pgrouter-bench-tls-")
        os.chmod(tlsdir, 0o755)
        chown_postgres(tlsdir)
        tls = TestCA(tlsdir).issue("server", "127.0.0.1", ["IP:127.0.0.1"])
        conf.update(ssl="on", ssl_cert_file="'%s'" % tls[0], ssl_key_file="'%s'" % tls[1])
    cluster = PgCluster(2, conf=conf).start()
    targets = []
    results = {"runs": [], "idle_bytes": {}, "config": vars(args)}
    try:
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(args.scale),
                        "-h", "127.0.0.1", "-p", str(cluster.primary.port), "-U", "postgres",
                        "postgres"], check=True, capture_output=True)
        cluster.primary.sql("vacuum analyze")
        backend = cluster.primary.port
        if "pgrouter" in only:
            targets.append(PgRouterTarget(cluster.dir, cluster, args.workers, tls).start())
        if "haproxy" in only and shutil.which("haproxy"):
            targets.append(HAProxy(cluster.dir, backend).start())
        if "pgbouncer" in only and shutil.which("pgbouncer"):
            targets.append(PgBouncer(cluster.dir, backend, tls).start())
        ways = ([("direct", backend, None)] if "direct" in only else []) + \
            [(t.name, t.port, t.proc.pid) for t in targets]

        for connect_each in (False, True):
            for c in clients:
                samples = {name: [] for name, _, _ in ways}
                # interleave the ways so drift on this shared machine hits all alike
                for _ in range(args.repeat):
                    for name, port, pid in ways:
                        cpu0 = cpu_seconds(pid) if pid else 0
                        tps, txns, failed = pgbench(port, c, args.duration, connect_each,
                                                    tls=args.tls)
                        cpu = (cpu_seconds(pid) - cpu0) if pid else 0
                        samples[name].append((tps, txns, failed, cpu))
                for name, port, pid in ways:
                    ss = samples[name]
                    tps = median([x[0] for x in ss])
                    cpu_per = median([x[3] * 1e6 / x[1] for x in ss if x[1]]) if pid else None
                    run = {"way": name, "clients": c, "connect_each": connect_each,
                           "tps": tps, "tps_samples": [x[0] for x in ss],
                           "failed": sum(x[2] for x in ss), "cpu_us_per_txn": cpu_per}
                    results["runs"].append(run)
                    print("%-10s c=%-3d %-3s tps=%10.1f  cpu/txn=%s" % (
                        name, c, "-C" if connect_each else "", tps,
                        "%.2f us" % run["cpu_us_per_txn"] if run["cpu_us_per_txn"] else "-"),
                        flush=True)
        if args.idle:
            for t in targets:
                results["idle_bytes"][t.name] = idle_rss_per_session(t.port, t.proc.pid,
                                                                     args.idle, args.tls)
                print("%-10s %.0f bytes RSS per idle session (%d open)" % (
                    t.name, results["idle_bytes"][t.name], args.idle), flush=True)
    finally:
        for t in targets:
            t.stop()
        cluster.cleanup()
        if tls:
            shutil.rmtree(os.path.dirname(tls[0]), ignore_errors=True)

    report(results, clients)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def report(results, clients):
    runs = results["runs"]
    ways = []
    for r in runs:
        if r["way"] not in ways:
            ways.append(r["way"])

    def get(way, c, ce):
        for r in runs:
            if r["way"] == way and r["clients"] == c and r["connect_each"] == ce:
                return r
        return None

    print()
    print("pgbench -S (select-only)%s, TPS and ratio to direct" % (
        ", clients on TLS (sslmode=require)" if results["config"].get("tls") else ""))
    hdr = "| mode | clients | " + " | ".join(ways) + " |"
    print(hdr)
    print("|" + "---|" * (2 + len(ways)))
    for ce in (False, True):
        for c in clients:
            d = get("direct", c, ce)
            cells = []
            for w in ways:
                r = get(w, c, ce)
                if not r:
                    cells.append("-")
                elif w == "direct" or not d:
                    cells.append("%.0f" % r["tps"])
                else:
                    cells.append("%.0f (%.2f)" % (r["tps"], r["tps"] / d["tps"]))
            print("| %s | %d | %s |" % ("-C" if ce else "persistent", c, " | ".join(cells)))
    print()
    print("proxy CPU per transaction (µs, utime+stime of the proxy process)")
    proxies = [w for w in ways if w != "direct"]
    print("| mode | clients | " + " | ".join(proxies) + " |")
    print("|" + "---|" * (2 + len(proxies)))
    for ce in (False, True):
        for c in clients:
            cells = []
            for w in proxies:
                r = get(w, c, ce)
                cells.append("%.2f" % r["cpu_us_per_txn"] if r and r["cpu_us_per_txn"] else "-")
            print("| %s | %d | %s |" % ("-C" if ce else "persistent", c, " | ".join(cells)))
    if results["idle_bytes"]:
        print()
        print("memory per idle session (RSS growth / sessions)")
        for w, b in results["idle_bytes"].items():
            print("| %s | %.0f bytes |" % (w, b))


if __name__ == "__main__":
    main()
