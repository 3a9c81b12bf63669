"""Where each proxy spends its CPU: perf (cpu-clock sampling, kernel and user)
on pgrouter, HAProxy and PgBouncer, configured as bench/run.py configures them,
while pgbench runs one of bench/run.py's rows through each in turn.

Prints, per proxy, the share of samples by object (kernel, the proxy, libevent,
libc, OpenSSL), by the system call they were taken in (send, recv,
epoll_wait, ...: µs per transaction each) and the hottest symbols; with --syscalls also the system calls
per transaction (strace -c -f; strace slows everything, only the counts mean
something). Installs nothing: needs perf (linux-perf) and, for --syscalls, strace.

Usage: /usr/bin/python3 bench/profile.py [--row S-c8] [--seconds 8] [--top 25]
                                         [--only pgrouter,haproxy,pgbouncer] [--workers N]
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402
from run import PG_BIN, PgCluster, TestCA, chown_postgres, cpu_seconds  # noqa: E402


def perf_profile(pid, seconds, out):
    subprocess.run(["perf", "record", "-q", "-F", "4000", "-g", "-o", out, "-p", str(pid),
                    "--", "sleep", str(seconds)], check=True, capture_output=True)
    r = subprocess.run(["perf", "report", "-i", out, "--no-children", "--stdio", "-g", "none",
                        "--sort", "dso,sym", "--percent-limit", "0"],
                       capture_output=True, text=True)
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    return rows


SYSCALL_GROUPS = {"sendto": "send", "write": "send", "sendmsg": "send", "writev": "send",
                  "recvfrom": "recv", "read": "recv", "recvmsg": "recv", "readv": "recv",
                  "epoll_wait": "epoll_wait", "epoll_pwait": "epoll_wait"}


# Some system calls' __x64_sys_* entry is inlined into x64_sys_call (kernel
# 6.9 on): such a sample's chain names the function the entry called.
INLINED_ENTRIES = {"ksys_read": "recv", "ksys_write": "send", "do_writev": "send",
                   "do_readv": "recv", "__sys_sendto": "send", "__sys_recvfrom": "recv"}


def by_syscall(perf_file):
    """Share of samples by the system call each was taken in (from its call
    chain): what a send, a recv and a wait cost, including what the kernel
    does on their behalf (on loopback a send also runs the receiver's TCP
    input and wakes it; a wait includes switching out and back in)."""
    r = subprocess.run(["perf", "script", "-i", perf_file, "-F", "ip,sym"],
                       capture_output=True, text=True)
    groups = collections.Counter()
    total = 0
    stack = []
    for line in r.stdout.splitlines() + [""]:
        line = line.strip()
        if line:
            stack.append(line.split()[-1])
            continue
        if not stack:
            continue
        total += 1
        group = None
        for sym in stack:  # innermost first: the first syscall entry found
            m = re.match(r"__(?:x64|se)_sys_(\w+)|__do_sys_(\w+)", sym)
            if m:
                name = m.group(1) or m.group(2)
                group = SYSCALL_GROUPS.get(name, name)
                break
            # calls x64_sys_call inlines: named by the function it calls
            if sym in INLINED_ENTRIES:
                group = INLINED_ENTRIES[sym]
                break
        if group is None and any(s in ("__schedule", "schedule", "preempt_schedule_irq")
                                 for s in stack):
            # switched out on the way back to user space (the send that woke a
            # peer made it the one to run) or by an interrupt, then back in
            group = "preempted"
        if group is None and any(s in ("do_syscall_64", "entry_SYSCALL_64_after_hwframe")
                                 for s in stack):
            group = "system call entry and exit"
        if group is None:
            kernel = any(s.startswith(("asm_", "irq", "__sysvec", "sysvec", "do_softirq",
                                       "__do_softirq", "handle_softirqs", "ret_from_fork",
                                       "schedule", "__schedule")) for s in stack)
            group = "kernel, no system call (interrupts)" if kernel \
                else "user space"
        groups[group] += 1
        stack = []
    return {k: v * 100.0 / total for k, v in groups.items()} if total else {}


def switches(pid):
    """(voluntary, involuntary) context switches of every thread of pid."""
    v = i = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, t)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        v += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        i += int(line.split()[1])
        except OSError:
            pass
    return v, i


def by_object(rows):
    groups = collections.Counter()
    for pct, dso, _ in rows:
        if dso.startswith("[kernel"):
            g = "kernel"
        elif "libevent" in dso:
            g = "libevent"
        elif "libssl" in dso or "libcrypto" in dso:  # before libc: "libcrypto"
            g = "openssl"
        elif "libc" in dso:
            g = "libc"
        else:
            g = "proxy (%s)" % dso
        groups[g] += pct
    return groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", default="S-c8", help="one of bench/run.py's rows")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--only", default="pgrouter,haproxy,pgbouncer")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--syscalls", action="store_true")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("needs perf: tests/deps.sh linux-perf")
    row = [r for r in bench.ROWS if r[0] == args.row][0]
    _, label, clients, connect_each, tls_on, script = row
    only = args.only.split(",")
    work = tempfile.mkdtemp(prefix="pgrouter-profile-")
    os.chmod(work, 0o755)
    chown_postgres(work)
    tls = TestCA(work, key="ec").issue("server", "127.0.0.1", ["IP:127.0.0.1"])
    cluster = PgCluster(0, conf={"max_connections": 300, "ssl": "on",
                                 "ssl_cert_file": "'%s'" % tls[0],
                                 "ssl_key_file": "'%s'" % tls[1]}).start()
    try:
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", "10", "-h",
                        "127.0.0.1", "-p", str(cluster.primary.port), "-U", "postgres",
                        "postgres"], check=True, capture_output=True)
        starts = {"pgrouter": lambda: bench.PgRouterTarget(cluster.dir, cluster, args.workers,
                                                           tls).start(),
                  "haproxy": lambda: bench.HAProxy(cluster.dir, cluster.primary.port).start(),
                  "pgbouncer": lambda: bench.PgBouncer(cluster.dir, cluster.primary.port,
                                                       tls).start()}
        for name in only:
            t = starts[name]()
            try:
                result = {}
                extra = ["-S"] if script == "-S" else []

                def load():
                    result["r"] = bench.pgbench(t.port, clients, args.seconds + 2, connect_each,
                                                extra, tls_on)
                th = threading.Thread(target=load)
                cpu0 = cpu_seconds(t.proc.pid)
                sw0 = switches(t.proc.pid)
                th.start()
                rows = perf_profile(t.proc.pid, args.seconds,
                                    os.path.join(work, name + ".perf"))
                th.join()
                cpu = cpu_seconds(t.proc.pid) - cpu0
                sw = [b - a for a, b in zip(sw0, switches(t.proc.pid))]
                tps, txns, _ = result["r"]
                print("\n## %s, %s: %.0f TPS, %.2f µs CPU per transaction, %.2f sleeps "
                      "(voluntary context switches) and %.2f preemptions per transaction" % (
                          name, label, tps, cpu * 1e6 / txns, sw[0] / txns, sw[1] / txns))
                print("by object: " + ", ".join("%s %.1f%%" % kv for kv in
                                                 by_object(rows).most_common()))
                per_txn = cpu * 1e6 / txns
                calls = by_syscall(os.path.join(work, name + ".perf"))
                print("by system call (µs of CPU per transaction): " + ", ".join(
                    "%s %.2f (%.1f%%)" % (k, v * per_txn / 100, v)
                    for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v >= 0.5))
                for pct, dso, sym in rows[:args.top]:
                    print("  %5.2f%%  %-22s %s" % (pct, os.path.basename(dso)[:22], sym[:70]))
                sys.stdout.flush()
            finally:
                t.stop()
    finally:
        cluster.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
