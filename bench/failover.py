"""Failover under load, measured the way users measure it: pgbench through
each proxy at the same time, on one real 3-node Patroni cluster, through the
same switchovers and the same crash.

Proxies (all on the cluster's read-write role):
  pgrouter          auth = router, following the DCS: sessions move
  pgrouter-rest     auth = router, following Patroni's REST API (GET /cluster)
  pgrouter-pass     auth = passthrough (no credentials), following the DCS:
                    sessions are shed, as before sessions could move
  haproxy           the usual Patroni set-up: option httpchk GET /primary,
                    inter 1s fall 2 rise 1, on-marked-down shutdown-sessions
                    (check timeout 5s: a loaded 2-core machine answers slowly)

Scenarios, for each DCS (--dcs etcd,zookeeper):
  switchover   pgbench -n -c8 -j2 -T60 -M prepared (TPC-B-like writes, user
               "app", SCRAM) through two planned switchovers (patronictl)
  connect      pgbench -n -C -c4 -T14 (select 1) through one switchover
  crash        pgbench -n -c8 -j2 -T40 -R4 -M prepared (8 sessions of an
               application's pool, each idle about 2s between transactions),
               kill -9 of the primary's Patroni and PostgreSQL

Reported per proxy: pgbench's exit code, failed transactions and aborted
clients (pgbench's own counts), transactions done, the longest stall (the
largest gap between two transactions completed by any client, from pgbench's
per-transaction log) next to Patroni's no-leader window (leader key deleted to
new leader key, from pgrouter's watch), and pgrouter's moved/shed sessions.
A PNG timeline (transactions per 100 ms per proxy) of each switchover run.

Usage: bench/failover.sh [--dcs etcd,zookeeper] [--duration 60] [--clients 8]
                         [--scenarios switchover,connect,crash] [--out DIR]
"""
import argparse
import calendar
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "harness"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import PG_BIN, Router, chown_postgres, free_port, wait_for  # noqa: E402
from patroni import PatroniCluster  # noqa: E402
from run import Proxy  # noqa: E402

USER, PASSWORD = "app", "apppw"
PGBENCH = os.path.join(PG_BIN, "pgbench")


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
    timeout check 5s
listen primary
    bind 127.0.0.1:%d
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
%s""" % (self.port, servers))

    def start(self):
        return self.spawn(["haproxy", "-f", self.conf, "-db"])


def log_times(text, pattern):
    """(epoch seconds, line) of pgrouter log lines matching pattern."""
    out = []
    for line in text.splitlines():
        if re.search(pattern, line):
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) UTC", line)
            if m:
                out.append((calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) +
                            int(m.group(2)) / 1000.0, line))
    return out


class Bench:
    """One pgbench run through one proxy, with its per-transaction log."""

    def __init__(self, name, port, workdir, args):
        self.name = name
        self.prefix = os.path.join(workdir, "tx-" + name)
        for f in glob.glob(self.prefix + ".*"):
            os.unlink(f)
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        cmd = [PGBENCH, "-n", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-l",
               "--log-prefix", self.prefix] + args + ["postgres"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)

    def finish(self):
        out, err = self.proc.communicate(timeout=600)
        self.rc = self.proc.returncode
        self.out, self.err = out, err
        num = lambda pat: int(m.group(1)) if (m := re.search(pat, out)) else None  # noqa
        self.done = num(r"number of transactions actually processed: (\d+)")
        self.failed = num(r"number of failed transactions: (\d+)")
        self.aborted = len(set(re.findall(r"client (\d+)\b[^\n]*aborted", err)))
        self.errors = sorted({l.split("aborted in command")[0].strip()[:160]
                              for l in err.splitlines() if "error" in l.lower()})[:3]
        self.times = []
        for path in glob.glob(self.prefix + ".*"):
            with open(path) as f:
                for line in f:
                    p = line.split()
                    if len(p) >= 6 and p[2].isdigit():
                        self.times.append(int(p[4]) + int(p[5]) / 1e6)
        self.times.sort()
        return self

    def stall(self, t0, t1):
        """Longest gap between completed transactions from t0 to t1 (the end of
        the run counts as the last point when nothing completed after t0)."""
        pts = [t0] + [t for t in self.times if t0 <= t <= t1] + [t1]
        return max(b - a for a, b in zip(pts, pts[1:]))


def no_leader_window(log, since):
    gone = [t for t, _ in log_times(log, r"leader key is gone") if t >= since]
    named = [t for t, _ in log_times(log, r"leader key now names") if t >= since]
    if not gone:
        return None
    later = [t for t in named if t >= gone[0]]
    return (gone[0], later[0]) if later else None


def counts(router, mark):
    log = router.log_text()[mark:]
    return (len(re.findall(r"moved from \S+ to \S+ after", log)),
            len(re.findall(r"FATAL 57P01", log)))


def draw(path, title, benches, events, t_start):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    for b in benches:
        if not b.times:
            continue
        end = b.times[-1]
        n = int((end - t_start) / 0.1) + 1
        bins = [0] * n
        for t in b.times:
            k = int((t - t_start) / 0.1)
            if 0 <= k < n:
                bins[k] += 1
        ax.plot([i * 0.1 for i in range(n)], bins, label=b.name, linewidth=0.9)
    for label, a, z in events:
        if z is None:
            ax.axvline(a - t_start, color="black", linestyle=":", linewidth=0.8)
            ax.text(a - t_start, ax.get_ylim()[1] * 0.95, " " + label, fontsize=8, va="top")
        else:
            ax.axvspan(a - t_start, z - t_start, color="grey", alpha=0.25)
            ax.text(a - t_start, ax.get_ylim()[1] * 0.85, " " + label, fontsize=8, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("transactions per 100 ms")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_scenario(kind, pc, proxies, dcs_router, args, work):
    """Start pgbench through every proxy, do the scenario's event(s), report."""
    for name, port, _ in proxies:
        wait_for(lambda: _works(port), 60, name + " routing writes")
    marks = {name: len(r.log_text()) for name, _, r in proxies if r}
    if kind == "switchover":
        pgargs = ["-c", str(args.clients), "-j", "2", "-T", str(args.duration), "-M",
                  "prepared"]
    elif kind == "connect":
        script = os.path.join(work, "select1.sql")
        with open(script, "w") as f:
            f.write("select 1;\n")
        pgargs = ["-C", "-c", "4", "-T", "14", "-f", script]
    else:
        pgargs = ["-c", str(args.clients), "-j", "2", "-T", "40", "-R", "4", "-M", "prepared"]
    run_secs = float(pgargs[pgargs.index("-T") + 1])
    t_start = time.time()
    benches = [Bench(name, port, work, pgargs) for name, port, _ in proxies]
    events = []
    since = time.time()
    old = pc.leader()
    if kind == "switchover":
        gap = args.duration / 3.0
        for i in range(2):
            time.sleep(max(0, t_start + gap * (i + 1) - time.time()))
            pc.wait_healthy(120)
            t = time.time()
            events.append(("switchover %d" % (i + 1), t, None))
            pc.switchover()
    elif kind == "connect":
        time.sleep(5)
        events.append(("switchover", time.time(), None))
        pc.switchover()
    else:
        time.sleep(8)
        events.append(("kill -9 " + old.name, time.time(), None))
        old.kill9()
    results = [b.finish() for b in benches]
    t_end = t_start + run_secs  # a run whose clients all aborted ended early
    log = dcs_router.log_text()
    windows = []
    s = since
    while True:
        w = no_leader_window(log, s)
        if not w:
            break
        windows.append(w)
        s = w[1] + 0.001
    if kind == "crash":
        # no leader from the crash until the key's TTL ran out and another took it
        named = [t for t, _ in log_times(log, r"leader key now names") if t >= events[0][1]]
        windows = [(events[0][1], named[0])] if named else []
    for a, z in windows:
        events.append(("no leader %.2fs" % (z - a), a, z))
    if kind == "crash":
        old.start()
    pc.wait_healthy(180)
    rows = []
    for b in results:
        r = next(r for n, _, r in proxies if n == b.name)
        moved, shed = counts(r, marks[b.name]) if r else (None, None)
        rows.append((b, b.stall(events[0][1] - 1, t_end), moved, shed))
    png = None
    if kind in ("switchover", "crash") and args.out:
        png = os.path.join(args.out, "failover-%s-%s.png" % (kind, pc.dcs))
        draw(png, "%s (%s), pgbench %s" % (kind, pc.dcs, " ".join(pgargs)), results, events,
             t_start)
    return rows, windows, png


def _works(port):
    try:
        r = subprocess.run(["psql", "-X", "-At", "-c", "select pg_is_in_recovery()",
                            "host=127.0.0.1 port=%d user=%s dbname=postgres connect_timeout=3"
                            % (port, USER)], capture_output=True, text=True, timeout=10,
                           env=dict(os.environ, PGPASSWORD=PASSWORD))
        return r.stdout.strip() == "f"
    except subprocess.TimeoutExpired:
        return False


def fmt(x):
    return "-" if x is None else "%.2fs" % x


def one_dcs(dcs, args):
    pc = PatroniCluster(3, dcs=dcs, hba=["host all app 127.0.0.1/32 scram-sha-256"]).start()
    routers = []
    haproxy = None
    try:
        leader = pc.leader()
        leader.sql("create role app login password 'apppw'")
        subprocess.run([PGBENCH, "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p",
                        str(leader.pg_port), "-U", "postgres", "postgres"], check=True,
                       capture_output=True)
        leader.sql("grant all on all tables in schema public to app")
        dcs_conf = ({"source": "etcd", "etcd_endpoints": pc.etcd.url, "scope": pc.scope}
                    if dcs == "etcd" else
                    {"source": "zookeeper", "zookeeper_hosts": pc.zk.hostport, "scope": pc.scope})
        rest_conf = {"source": "patroni", "poll_interval": "500ms",
                     "patroni_urls": ", ".join(n.api for n in pc.nodes)}
        common = dict(probe_interval="1s", queue_timeout="30s", log_level="info",
                      max_client_conn=2000)
        rw = {"rw": {"target_session_attrs": "read-write"}}
        mover = Router(None, rw, pc.dir, cluster=dcs_conf, auth="router", **common).start()
        rest = Router(None, rw, pc.dir, cluster=rest_conf, auth="router", **common).start()
        passthrough = Router(None, rw, pc.dir, cluster=dcs_conf, **common).start()
        routers = [mover, rest, passthrough]
        haproxy = PatroniHAProxy(pc.dir, pc.nodes).start()
        proxies = [("pgrouter", mover.port("rw"), mover),
                   ("pgrouter-rest", rest.port("rw"), rest),
                   ("pgrouter-pass", passthrough.port("rw"), passthrough),
                   ("haproxy", haproxy.port, None)]
        work = tempfile.mkdtemp(prefix="pgrouter-failover-")
        chown_postgres(work)
        out = []
        for kind in args.scenarios:
            rows, windows, png = run_scenario(kind, pc, proxies, mover, args, work)
            out.append((kind, rows, windows, png))
            report(dcs, kind, rows, windows, png)
        return out
    finally:
        if haproxy:
            haproxy.stop()
        for r in routers:
            r.stop()
        pc.cleanup()


def report(dcs, kind, rows, windows, png):
    print("\n### %s, %s%s" % (kind, dcs, (" — timeline: " + png) if png else ""))
    print("Patroni's no-leader window(s): %s" % (
        ", ".join("%.2fs" % (z - a) for a, z in windows) or "-"))
    print("| proxy | pgbench exit | transactions | failed | aborted clients | longest stall "
          "| sessions moved | sessions shed (57P01) |")
    print("|---|---|---|---|---|---|---|---|")
    for b, stall, moved, shed in rows:
        print("| %s | %s | %s | %s | %d | %s | %s | %s |" % (
            b.name, b.rc, b.done, b.failed, b.aborted, fmt(stall),
            "-" if moved is None else moved, "-" if shed is None else shed))
    for b, _, _, _ in rows:
        if b.errors:
            print("  %s: %s" % (b.name, " / ".join(b.errors)))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dcs", default="etcd,zookeeper")
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--scenarios", default="switchover,connect,crash")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    args = ap.parse_args()
    args.scenarios = args.scenarios.split(",")
    os.makedirs(args.out, exist_ok=True)
    for dcs in args.dcs.split(","):
        one_dcs(dcs, args)


if __name__ == "__main__":
    main()
