"""Real components on loopback for pgrouter's tests, benchmarks and demo.

PgCluster starts a PostgreSQL 15 primary and streaming replicas (initdb,
pg_basebackup) on free 127.0.0.1 ports in a private temp directory; Router
starts pgrouter with a generated configuration. Everything is stopped by PID.
Runs under Debian's /usr/bin/python3 (psycopg2 comes from python3-psycopg2).
"""
import atexit
import calendar
import itertools
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PGROUTER = os.environ.get("PGROUTER", os.path.join(ROOT, "build", "pgrouter"))


# Every process the harness starts, so that nothing outlives a failed test run.
_started = {}


def track(proc, sig=signal.SIGTERM):
    _started[proc.pid] = (proc, sig)
    return proc


def untrack(proc):
    _started.pop(proc.pid, None)


@atexit.register
def _stop_everything():
    for pid, (proc, sig) in list(_started.items()):
        if proc.poll() is None:
            stop_pid(pid, sig, timeout=10)
            proc.wait()


_handed_out = set()


def free_port():
    """A port nobody listens on right now (127.0.0.1), and not one this process
    handed out before: the kernel may offer a just-closed port again, and two
    listeners of one configuration must not get the same."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def as_postgres():
    """Command prefix: PostgreSQL refuses to run as root, so drop to 'postgres'."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def chown_postgres(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def wait_for(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_pid(pid, sig=signal.SIGTERM, timeout=30):
    """Signal pid and wait for it to exit; SIGKILL after timeout."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, "pid %d to die" % pid)


def query_one(dsn, query):
    """The first column of the first row of query, on a new session on dsn."""
    import psycopg2  # Debian's python3-psycopg2; only the tests need it
    c = psycopg2.connect(dsn)
    try:
        c.autocommit = True
        cur = c.cursor()
        cur.execute(query)
        return cur.fetchone()[0]
    finally:
        c.close()


def port_of(dsn):
    """inet_server_port() of a new session on dsn: which server it landed on."""
    return query_one(dsn, "select inet_server_port()")


def connect_in_background(dsn):
    """Open a session on dsn on a thread of its own (a client that waits for a
    primary): returns (thread, got); got fills in with "port" (the server it
    reached) or "error", and "waited" (seconds), once it is done."""
    import threading
    got = {}

    def connect():
        import psycopg2
        t0 = time.time()
        try:
            got["port"] = port_of(dsn)
        except psycopg2.Error as e:
            got["error"] = str(e)
        got["waited"] = time.time() - t0
    th = threading.Thread(target=connect, daemon=True)
    th.start()
    return th, got


def pgbench_select1(test, port, user, password, mode, clients=4, txns=50):
    """pgbench -C (a connection per transaction) with `select 1` in protocol
    mode (simple, extended, prepared) through port; asserts it ran clean."""
    env = dict(os.environ, PGPASSWORD=password)
    r = subprocess.run([os.path.join(PG_BIN, "pgbench"), "-n", "-M", mode, "-c", str(clients),
                        "-t", str(txns), "-C", "-f", "/dev/stdin", "-h", "127.0.0.1", "-p",
                        str(port), "-U", user, "postgres"], input="select 1;\n", env=env,
                       capture_output=True, text=True, timeout=120)
    test.assertEqual(r.returncode, 0, r.stderr)
    test.assertIn("number of failed transactions: 0", r.stdout)


def log_time(log, needle):
    """Wall-clock time (seconds since the epoch) of the first pgrouter log line
    with needle, or None."""
    for line in log.splitlines():
        if needle in line:
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) UTC", line)
            if m:
                return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + \
                    int(m.group(2)) / 1000.0
    return None


def cpu_seconds(pid):
    """CPU time a process used so far (utime + stime, from /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    """A process's resident memory (VmRSS), kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


class PgServer:
    """One PostgreSQL instance (primary or standby) started by PID."""

    def __init__(self, cluster, name, datadir, port):
        self.cluster = cluster
        self.name = name
        self.datadir = datadir
        self.port = port
        self.proc = None

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def dsn(self, **kw):
        parts = {"host": "127.0.0.1", "port": self.port, "user": "postgres",
                 "dbname": "postgres", "connect_timeout": 5}
        parts.update(kw)
        return " ".join("%s=%s" % (k, v) for k, v in parts.items())

    def start(self, wait=True):
        log = open(os.path.join(self.cluster.dir, "%s.log" % self.name), "ab")
        self.proc = subprocess.Popen(as_postgres() + [os.path.join(PG_BIN, "postgres"), "-D",
                                                      self.datadir],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        track(self.proc, signal.SIGQUIT)
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=60):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("postgres %s exited; see %s.log" % (self.name, self.name))
            r = subprocess.run([os.path.join(PG_BIN, "pg_isready"), "-q", "-h", "127.0.0.1",
                                "-p", str(self.port)])
            return r.returncode == 0
        wait_for(ready, timeout, "postgres %s on port %d" % (self.name, self.port), 0.1)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, mode="fast"):
        """fast: SIGINT (disconnect clients, clean shutdown); immediate: SIGQUIT."""
        if not self.running():
            return
        stop_pid(self.proc.pid, signal.SIGINT if mode == "fast" else signal.SIGQUIT)
        self.proc.wait()
        untrack(self.proc)

    def sql(self, query, dbname="postgres"):
        r = run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                 self.dsn(dbname=dbname), "-c", query])
        return r.stdout.strip()

    def promote(self):
        run(as_postgres() + [os.path.join(PG_BIN, "pg_ctl"), "promote", "-w", "-D",
                             self.datadir])


class PgCluster:
    """A primary and n streaming replicas on loopback."""

    def __init__(self, replicas=2, conf=None, workdir=None, hba=()):
        """conf: postgresql.conf settings; hba: pg_hba.conf lines placed before
        the default trust lines."""
        self.dir = workdir or tempfile.mkdtemp(prefix="pgrouter-pg-")
        self.hba = list(hba)
        os.chmod(self.dir, 0o755)
        chown_postgres(self.dir)
        self.nreplicas = replicas
        self.conf = conf or {}
        self.primary = None
        self.replicas = []

    @property
    def servers(self):
        return [self.primary] + self.replicas

    def _base_conf(self, port):
        c = {
            "listen_addresses": "'127.0.0.1'",
            "port": port,
            "unix_socket_directories": "'%s'" % self.dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": 200,
            "wal_level": "replica",
            "max_wal_senders": 10,
            "hot_standby": "on",
            "wal_retrieve_retry_interval": "'500ms'",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        c.update(self.conf)
        return c

    def _write_conf(self, datadir, port):
        with open(os.path.join(datadir, "postgresql.auto.conf"), "a") as f:
            for k, v in self._base_conf(port).items():
                f.write("%s = %s\n" % (k, v))

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        pdir = os.path.join(self.dir, "primary")
        run(as_postgres() + [os.path.join(PG_BIN, "initdb"), "-D", pdir, "-U", "postgres",
                             "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        with open(os.path.join(pdir, "pg_hba.conf"), "w") as f:
            f.write("".join(line + "\n" for line in self.hba))
            f.write("local all all trust\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "host replication all 127.0.0.1/32 trust\n")
        self.primary = PgServer(self, "primary", pdir, free_port())
        self._write_conf(pdir, self.primary.port)
        self.primary.start()
        for i in range(self.nreplicas):
            self.add_replica("replica%d" % (i + 1))

    def add_replica(self, name):
        rdir = os.path.join(self.dir, name)
        run(as_postgres() + [os.path.join(PG_BIN, "pg_basebackup"), "-D", rdir, "-h",
                             "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
                             "-R", "-X", "stream", "--no-sync", "-c", "fast"])
        r = PgServer(self, name, rdir, free_port())
        # pg_basebackup copied the primary's settings; the port must differ
        with open(os.path.join(rdir, "postgresql.auto.conf"), "a") as f:
            f.write("port = %d\n" % r.port)
        r.start()
        self.replicas.append(r)
        wait_for(lambda: self.primary.sql(
            "select count(*) from pg_stat_replication where state = 'streaming'") ==
            str(len(self.replicas)), 30, "%s streaming" % name)
        return r

    def stop(self):
        for s in self.servers:
            if s:
                s.stop("immediate")

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_router_names = itertools.count(1)


class Router:
    """pgrouter with a generated configuration, its log in the work dir."""

    def __init__(self, servers, listeners, workdir, pgrouter=None, cluster=None, **settings):
        """servers: static list; or cluster={"source": "etcd", "etcd_endpoints": ...}."""
        self.dir = workdir
        self.servers = servers or []
        self.cluster = cluster
        self.listeners = listeners  # name -> dict(target_session_attrs=..., ...)
        self.ports = {}
        self.settings = {"workers": 2, "log_level": "info", "connect_timeout": "2s",
                         "queue_timeout": "5s", "startup_timeout": "3s",
                         "shutdown_timeout": "5s", "probe_interval": "250ms"}
        # tests/run's sanitizer pass: every session with nothing in flight
        # moves to another worker every 100 ms, in every test that does not
        # set how workers share sessions itself
        if os.environ.get("PGROUTER_TEST_SHUFFLE") and not any(
                k.startswith("worker_") or k == "debug_worker_shuffle" for k in settings):
            self.settings["debug_worker_shuffle"] = "on"
        self.settings.update(settings)
        self.binary = pgrouter or PGROUTER
        self.nofile = None  # set before start(): RLIMIT_NOFILE
        self.proc = None
        # a name of its own: id(self) may be a dead Router's, whose log this
        # one would otherwise append to
        name = "pgrouter-%d-%d" % (os.getpid(), next(_router_names))
        self.conf_path = os.path.join(workdir, name + ".ini")
        self.log_path = os.path.join(workdir, name + ".log")

    def write_conf(self):
        s = dict(self.settings)
        cluster_keys = ("probe_interval", "probe_user", "probe_password", "probe_dbname",
                        "max_lag")
        # [admin]'s "listen" is admin_listen here (a listener has a listen too)
        admin_keys = ("http_listen", "ready_max_stale", "admin_listen", "admin_users")
        lines = ["[pgrouter]"]
        lines += ["%s = %s" % (k, v) for k, v in s.items()
                  if k not in cluster_keys and k not in admin_keys]
        if any(k in s for k in admin_keys):
            lines += ["[admin]"] + ["%s = %s" % ("listen" if k == "admin_listen" else k, v)
                                    for k, v in s.items() if k in admin_keys]
        if self.cluster:
            lines += ["[cluster]"] + ["%s = %s" % kv for kv in self.cluster.items()]
        else:
            lines += ["[cluster]", "source = static", "servers = " + ", ".join(self.servers)]
        lines += ["%s = %s" % (k, v) for k, v in s.items() if k in cluster_keys]
        for name, opts in self.listeners.items():
            port = self.ports.setdefault(name, free_port())
            lines += ["[listener %s]" % name, "listen = 127.0.0.1:%d" % port]
            lines += ["%s = %s" % (k, v) for k, v in opts.items()]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, wait_topology=True):
        self.write_conf()
        self.log = open(self.log_path, "ab")
        preexec = None
        if self.nofile:
            # an open files limit pgrouter cannot raise (soft = hard)
            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        self.proc = track(subprocess.Popen([self.binary, "-c", self.conf_path],
                                           stdout=self.log, stderr=subprocess.STDOUT,
                                           preexec_fn=preexec))
        try:
            for name in self.listeners:
                wait_for(lambda: self._accepts(self.ports[name]), 10,
                         "pgrouter listener " + name)
            if wait_topology and self.servers and \
                    self.settings.get("log_level") in ("info", "debug"):
                # every server probed at least once
                wait_for(lambda: self.log_text().count("topology:") >= len(self.servers), 10,
                         "first probe round")
        except BaseException:
            self.stop()
            raise
        return self

    def _accepts(self, port):
        if self.proc.poll() is not None:
            raise RuntimeError("pgrouter exited (%s): %s" % (self.proc.returncode,
                                                             self.log_text()[-2000:]))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def port(self, listener):
        return self.ports[listener]

    def dsn(self, listener, **kw):
        parts = {"host": "127.0.0.1", "port": self.ports[listener], "user": "postgres",
                 "dbname": "postgres", "connect_timeout": 10}
        parts.update(kw)
        return " ".join("%s=%s" % (k, v) for k, v in parts.items())

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=5, since=0):
        """Wait for a line containing text in the log (from offset since)."""
        wait_for(lambda: text in self.log_text()[since:], timeout, "log line %r" % text)

    def stop_clean(self):
        """Stop; raise unless pgrouter exited 0 with no sanitizer report. Returns its log."""
        rc = self.stop()
        log = self.log_text()
        if rc != 0:
            raise AssertionError("pgrouter exited with %s:\n%s" % (rc, log[-3000:]))
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            if bad in log:
                raise AssertionError("sanitizer report in pgrouter log:\n" + log[-5000:])
        return log

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, sig, timeout)
            self.proc.wait()
        if self.proc:
            untrack(self.proc)
            self.log.close()
        return self.proc.returncode if self.proc else None
