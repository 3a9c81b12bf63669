"""pgrouter benchmark: the same PostgreSQL cluster reached four ways in one run —
direct, through pgrouter, through HAProxy (TCP mode) and through PgBouncer
(session mode) — row by row (ROWS below: pgbench select-only at 1, 8 and 32
clients, TPC-B, a new connection per transaction (-C), and the same over TLS),
the ways interleaved within each row so that drift on a shared machine hits
all alike.

Reports, per row and way, the median of --repeat runs and their spread: TPS
and its ratio to direct, and the CPU time each proxy process used per
transaction (utime+stime from /proc/PID/stat); then memory per idle session
(RSS growth with N logged-in sessions held / N), plaintext and TLS; and
pgrouter's CPU against the cheaper peer's and its TPS against the best peer's.
--out writes every sample as JSON, for comparison between commits.

pgrouter and PgBouncer are configured alike: they authenticate the client
themselves (trust), pool server connections in session mode, and terminate
the client's TLS (reaching the server in plaintext). HAProxy cannot terminate
PostgreSQL's TLS (it starts with an SSLRequest, not a ClientHello), so it passes
it through in TCP mode to PostgreSQL, which runs with ssl=on; "direct" on a TLS
row is TLS to PostgreSQL itself. Every TLS endpoint has the same certificate
(--cert: ECDSA P-256 by default, or RSA 2048).

Usage: /usr/bin/python3 bench/run.py [--duration 8] [--repeat 3] [--rows S-c8,tls-S-c8]
                                     [--idle 1000] [--workers N] [--cert ec|rsa] [--out FILE]
                                     [--variant io_uring=off]
--variant adds a second pgrouter with other settings, taking turns with the
others in every row (an A/B of one setting on the same machine, same minutes).
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
                f.write("client_tls_sslmode = allow\nclient_tls_cert_file = %s\n"
                        "client_tls_key_file = %s\nserver_tls_sslmode = disable\n" % tls)
        for p in ("users.txt", "pgbouncer.ini"):
            chown_postgres(os.path.join(self.dir, p))

    def start(self):
        return self.spawn(as_postgres() + ["pgbouncer", self.conf])


class PgRouterTarget:
    name = "pgrouter"

    def __init__(self, workdir, cluster, workers, tls=None, pool=True, extra=None, name=None):
        # configured as PgBouncer is below: it authenticates the client itself
        # (trust), pools server connections in session mode, and takes
        # plaintext and TLS clients alike
        settings = {}
        if tls:
            settings = {"client_tls": "allow", "client_tls_cert": tls[0],
                        "client_tls_key": tls[1]}
        # A second listener in the default configuration (the server
        # authenticates the client through pgrouter; no pool), for memory.
        listener = {"target_session_attrs": "read-write"}
        listeners = {"rw": dict(listener), "passthrough": listener}
        if pool:
            listeners["rw"].update(auth="router", pool_mode="session", pool_size=CONN_LIMIT)
            settings["auth_trust_users"] = "postgres"
        settings.update(extra or {})
        if name:
            self.name = name
        self.tls = False
        self.router = Router([s.addr for s in cluster.servers], listeners, workdir,
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
    """pgbench's default script unless extra says otherwise ("-S": select-only)."""
    cmd = [os.path.join(PG_BIN, "pgbench"), "-n", "-T", str(duration), "-c", str(clients),
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


# The rows of the comparison: (key, label, clients, connect_each, tls, script).
# "-S" is pgbench's select-only script, "tpcb" its default TPC-B-like one (seven
# statements per transaction, writes).
ROWS = [
    ("S-c1", "-S -c1", 1, False, False, "-S"),
    ("S-c8", "-S -c8", 8, False, False, "-S"),
    ("S-c32", "-S -c32", 32, False, False, "-S"),
    ("tpcb-c8", "TPC-B -c8", 8, False, False, "tpcb"),
    ("C-c1", "-C -S -c1", 1, True, False, "-S"),
    ("C-c8", "-C -S -c8", 8, True, False, "-S"),
    ("tls-S-c8", "TLS -S -c8", 8, False, True, "-S"),
    ("tls-C-c8", "TLS -C -S -c8", 8, True, True, "-S"),
]


def spread(xs):
    """(max - min) / median, as a fraction: how far the repeats of a cell disagree."""
    m = median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def run_row(row, ways, args):
    key, label, c, connect_each, tls, script = row
    samples = {name: [] for name, _, _ in ways}
    extra = ["-S"] if script == "-S" else []
    # interleave the ways so drift on this shared machine hits all alike, and
    # rotate their order each repeat: whichever runs right after another
    # (after "direct", whose clients' backends are still exiting) is not
    # always the same one
    for r in range(args.repeat):
        k = r % len(ways)
        for name, port, pid in ways[k:] + ways[:k]:
            cpu0 = cpu_seconds(pid) if pid else 0
            tps, txns, failed = pgbench(port, c, args.duration, connect_each, extra, tls)
            cpu = (cpu_seconds(pid) - cpu0) if pid else 0
            samples[name].append((tps, txns, failed, cpu))
    out = {"row": key, "label": label, "clients": c, "connect_each": connect_each,
           "tls": tls, "script": script, "ways": {}}
    for name, port, pid in ways:
        ss = samples[name]
        tps = [x[0] for x in ss]
        cell = {"tps": median(tps), "tps_samples": tps, "tps_spread": spread(tps),
                "failed": sum(x[2] for x in ss)}
        if pid:
            cpu = [x[3] * 1e6 / x[1] for x in ss if x[1]]
            cell.update(cpu_us_per_txn=median(cpu), cpu_samples=cpu, cpu_spread=spread(cpu))
        out["ways"][name] = cell
        print("%-14s %-10s tps=%9.1f ±%4.1f%%  cpu/txn=%s" % (
            label, name, cell["tps"], 50 * cell["tps_spread"],
            "%.2f us ±%.1f%%" % (cell["cpu_us_per_txn"], 50 * cell["cpu_spread"])
            if pid else "-"), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=8, help="seconds per pgbench run")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per cell, interleaved; the median is reported")
    ap.add_argument("--rows", default=",".join(r[0] for r in ROWS),
                    help="which rows (default all): " + ", ".join(r[0] for r in ROWS))
    ap.add_argument("--idle", type=int, default=1000,
                    help="idle sessions held for the memory rows (0: skip them)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="pgrouter worker threads (default: CPUs, as HAProxy's nbthread)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--only", default="direct,pgrouter,haproxy,pgbouncer")
    ap.add_argument("--cert", choices=("ec", "rsa"), default="ec",
                    help="key of the certificate every TLS endpoint uses (default ec: P-256)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--variant", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also run a second pgrouter with these settings, interleaved "
                         "with the others (e.g. io_uring=off)")
    args = ap.parse_args()
    rows = [r for r in ROWS if r[0] in args.rows.split(",")]
    global CONN_LIMIT
    CONN_LIMIT = max(CONN_LIMIT, args.idle + 500)
    raise_nofile()
    only = args.only.split(",")
    tlsdir = tempfile.mkdtemp(prefix="pgrouter-bench-tls-")
    os.chmod(tlsdir, 0o755)
    chown_postgres(tlsdir)
    tls = TestCA(tlsdir, key=args.cert).issue("server", "127.0.0.1", ["IP:127.0.0.1"])
    # one cluster and one proxy of each kind for every row: plaintext and TLS
    # clients alike (PostgreSQL with ssl=on takes both; the proxies allow both)
    conf = {"max_connections": args.idle + 300, "ssl": "on",
            "ssl_cert_file": "'%s'" % tls[0], "ssl_key_file": "'%s'" % tls[1]}
    cluster = PgCluster(2, conf=conf).start()
    targets = []
    results = {"rows": [], "idle_bytes": {}, "config": vars(args),
               "commit": git_commit(), "versions": versions()}
    try:
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(args.scale),
                        "-h", "127.0.0.1", "-p", str(cluster.primary.port), "-U", "postgres",
                        "postgres"], check=True, capture_output=True)
        cluster.primary.sql("vacuum analyze")
        backend = cluster.primary.port
        starts = []
        if "pgrouter" in only:
            starts.append(("pgrouter", lambda: PgRouterTarget(cluster.dir, cluster, args.workers,
                                                              tls).start()))
        if args.variant and "pgrouter" in only:
            extra = dict(kv.split("=", 1) for kv in args.variant.split(","))
            vname = "pgrouter[%s]" % args.variant
            starts.append((vname, lambda: PgRouterTarget(cluster.dir, cluster, args.workers, tls,
                                                         extra=extra, name=vname).start()))
        if "haproxy" in only and shutil.which("haproxy"):
            starts.append(("haproxy", lambda: HAProxy(cluster.dir, backend).start()))
        if "pgbouncer" in only and shutil.which("pgbouncer"):
            starts.append(("pgbouncer", lambda: PgBouncer(cluster.dir, backend, tls).start()))
        targets = [start() for _, start in starts]
        ways = ([("direct", backend, None)] if "direct" in only else []) + \
            [(t.name, t.port, t.proc.pid) for t in targets]
        for row in rows:
            results["rows"].append(run_row(row, ways, args))
        while targets:
            targets.pop().stop()
        if args.idle:
            # each measured in a process of its own: memory the last sessions
            # freed would otherwise be reused by the next (and a pool's
            # server connections would be held)
            for name, start in starts:
                if name.startswith("pgrouter["):
                    continue  # the variant: CPU and TPS only
                variants = [(name, None)]
                if name == "pgrouter":
                    variants.append(("pgrouter-passthrough", "passthrough"))
                for label, listener in variants:
                    for tls_on in (False, True):
                        t = start()
                        targets.append(t)
                        port = t.router.port(listener) if listener else t.port
                        b = idle_rss_per_session(port, t.proc.pid, args.idle, tls_on)
                        targets.pop().stop()
                        results["idle_bytes"][("tls-" if tls_on else "") + label] = b
                        print("%-20s %.0f bytes RSS per idle %ssession (%d open)" % (
                            label, b, "TLS " if tls_on else "", args.idle), flush=True)
    finally:
        for t in targets:
            t.stop()
        cluster.cleanup()
        shutil.rmtree(tlsdir, ignore_errors=True)

    report(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def git_commit():
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    return r.stdout.strip() or None


def versions():
    v = {}
    for name, cmd in (("haproxy", ["haproxy", "-v"]), ("pgbouncer", ["pgbouncer", "--version"]),
                      ("pgbench", [os.path.join(PG_BIN, "pgbench"), "--version"])):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            v[name] = (r.stdout or r.stderr).splitlines()[0]
        except (OSError, IndexError):
            pass
    return v


def report(results):
    """The comparison as a table: per row, TPS (ratio to direct) and proxy CPU
    per transaction, medians with their spread; then pgrouter against the
    cheaper peer's CPU and the best peer's TPS."""
    rows = results["rows"]
    if not rows:
        return
    ways = list(rows[0]["ways"])
    proxies = [w for w in ways if w != "direct"]
    peers = [w for w in proxies if not w.startswith("pgrouter")]
    print()
    print("TPS (ratio to direct) / proxy CPU µs per transaction (utime+stime); medians of %d,"
          " ±half the spread in %%" % results["config"]["repeat"])
    print("| row | " + " | ".join(ways) + (" | pgrouter CPU / cheaper peer | pgrouter TPS /"
                                            " best peer |" if peers and "pgrouter" in ways
                                            else " |"))
    print("|---|" + "---|" * (len(ways) + (2 if peers and "pgrouter" in ways else 0)))
    for r in rows:
        d = r["ways"].get("direct")
        cells = []
        for w in ways:
            x = r["ways"][w]
            s = "%.0f" % x["tps"]
            if w != "direct" and d:
                s += " (%.2f)" % (x["tps"] / d["tps"])
            s += " ±%.0f%%" % (50 * x["tps_spread"])
            if "cpu_us_per_txn" in x:
                s += " / %.1f ±%.0f%%" % (x["cpu_us_per_txn"], 50 * x["cpu_spread"])
            cells.append(s)
        if peers and "pgrouter" in ways:
            pr = r["ways"]["pgrouter"]
            cheap = min(peers, key=lambda p: r["ways"][p]["cpu_us_per_txn"])
            best = max(peers, key=lambda p: r["ways"][p]["tps"])
            cells.append("%.2f (%s)" % (pr["cpu_us_per_txn"] / r["ways"][cheap]["cpu_us_per_txn"],
                                        cheap))
            cells.append("%.2f (%s)" % (pr["tps"] / r["ways"][best]["tps"], best))
        print("| %s | %s |" % (r["label"], " | ".join(cells)))
    if results["idle_bytes"]:
        print()
        print("memory per idle session (RSS growth / %d sessions held)" %
              results["config"]["idle"])
        print("| proxy | plaintext | TLS |")
        print("|---|---|---|")
        for w in proxies + (["pgrouter-passthrough"] if "pgrouter" in proxies else []):
            p = results["idle_bytes"].get(w)
            t = results["idle_bytes"].get("tls-" + w)
            print("| %s | %s | %s |" % (w, "%.0f B" % p if p is not None else "-",
                                        "%.0f B" % t if t is not None else "-"))


if __name__ == "__main__":
    main()
