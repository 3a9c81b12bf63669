"""The operator's HTTP endpoint ([admin] http_listen): /metrics checked by
promtool and scraped by a real Prometheus server, /livez, /readyz, /status,
against a real PostgreSQL 15 primary and replica."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PGROUTER, ROOT, PgCluster, Router, free_port, stop_pid, track  # noqa: E402
from cluster import untrack, wait_for  # noqa: E402
from wire import Wire, cstr, msg  # noqa: E402


def get(url, timeout=5):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, **labels):
    """The value of one series in a /metrics text, or None."""
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or series == "%s{%s}" % (name, want):
            return float(value)
    return None


class AdminHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.http_port = free_port()
        cls.router = Router([s.addr for s in cls.cluster.servers],
                            {"rw": {"target_session_attrs": "read-write"},
                             "ro": {"target_session_attrs": "standby"},
                             "pool": {"target_session_attrs": "read-write", "auth": "router",
                                      "pool_mode": "session"}},
                            cls.cluster.dir, probe_interval="250ms", queue_timeout="2s",
                            auth_trust_users="postgres",
                            http_listen="127.0.0.1:%d" % cls.http_port).start()
        cls.url = "http://127.0.0.1:%d" % cls.http_port

        def probed():  # both servers' first probe answered
            st = json.loads(get(cls.url + "/status")[1])
            return {s["role"] for s in st["servers"]} == {"primary", "standby"}
        wait_for(probed, 20, "both servers probed")

    @classmethod
    def tearDownClass(cls):
        cls.router.stop_clean()

    def metrics(self):
        status, body = get(self.url + "/metrics")
        self.assertEqual(status, 200)
        return body

    def test_health_and_status(self):
        self.assertEqual(get(self.url + "/livez"), (200, "ok\n"))
        self.assertEqual(get(self.url + "/readyz"), (200, "ready\n"))
        status, body = get(self.url + "/status")
        self.assertEqual(status, 200)
        st = json.loads(body)
        self.assertEqual([l["name"] for l in st["listeners"]], ["rw", "ro", "pool"])
        roles = {s["server"]: s["role"] for s in st["servers"]}
        self.assertEqual(roles, {self.cluster.primary.addr: "primary",
                                 self.cluster.replicas[0].addr: "standby"})
        self.assertEqual(st["discovery"]["source"], "static")
        self.assertFalse(st["draining"])
        self.assertEqual(get(self.url + "/nope")[0], 404)

    def test_status_cli(self):
        """pgrouter --status -c FILE: a patronictl-like table of the running one."""
        c = psycopg2.connect(self.router.dsn("rw"))
        r = subprocess.run([PGROUTER, "--status", "-c", self.router.conf_path],
                           capture_output=True, text=True, timeout=20)
        c.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {l.split()[0]: l.split() for l in r.stdout.splitlines()[1:]}
        primary = rows[self.cluster.primary.addr]
        self.assertEqual((primary[2], primary[3], primary[-1]), ("primary", "running", "1"))
        self.assertEqual(rows[self.cluster.replicas[0].addr][2], "standby")
        self.assertIn("source static", r.stdout)
        self.assertEqual(rows["rw"][2:4], ["read-write", "1"])

    def test_metrics_valid_and_moving(self):
        text = self.metrics()
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        before = metric(text, "pgrouter_client_connections", listener="rw")
        total = metric(text, "pgrouter_client_connections_total", listener="rw")
        c = psycopg2.connect(self.router.dsn("rw"))
        text = self.metrics()
        self.assertEqual(metric(text, "pgrouter_client_connections", listener="rw"), before + 1)
        self.assertEqual(metric(text, "pgrouter_client_connections_total", listener="rw"),
                         total + 1)
        primary = self.cluster.primary.addr
        self.assertEqual(metric(text, "pgrouter_server_sessions", server=primary,
                                listener="rw"), 1)
        self.assertEqual(metric(text, "pgrouter_server_status", server=primary,
                                state="primary"), 1)
        self.assertEqual(metric(text, "pgrouter_server_status", server=primary,
                                state="standby"), 0)
        self.assertGreaterEqual(metric(text, "pgrouter_server_connect_seconds_count",
                                       server=primary), 1)
        got = metric(text, "pgrouter_server_bytes_received_total", server=primary)
        sent = metric(text, "pgrouter_server_bytes_sent_total", server=primary)
        cur = c.cursor()
        cur.execute("select repeat('x', 100000)")
        text = self.metrics()
        self.assertGreater(metric(text, "pgrouter_server_bytes_received_total", server=primary),
                           got + 100000)
        self.assertGreater(metric(text, "pgrouter_server_bytes_sent_total", server=primary),
                           sent + 20)
        c.close()
        wait_for(lambda: metric(self.metrics(), "pgrouter_client_connections",
                                listener="rw") == before, 5, "the gauge to come down")
        # no standby for "ro" once the replica is gone: queued, then refused with
        # no_server after queue_timeout
        rej = metric(text, "pgrouter_client_connections_rejected_total", listener="ro",
                     reason="no_server")
        # a pgrouter that probes rarely still thinks the stopped replica is up:
        # its session is refused there (a connect error, by reason)
        port2 = free_port()
        slow = Router([self.cluster.replicas[0].addr], {"any": {"target_session_attrs": "any"}},
                      self.cluster.dir, probe_interval="1m", queue_timeout="1s",
                      http_listen="127.0.0.1:%d" % port2).start()
        self.cluster.replicas[0].stop()
        try:
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(slow.dsn("any"))
            _, text2 = get("http://127.0.0.1:%d/metrics" % port2)
            # (a refused session tries again after a second: here, at its deadline)
            self.assertIn(metric(text2, "pgrouter_server_connect_errors_total",
                                 server=self.cluster.replicas[0].addr, reason="refused"), (1, 2))
            slow.stop_clean()
            wait_for(lambda: metric(self.metrics(), "pgrouter_server_status",
                                    server=self.cluster.replicas[0].addr,
                                    state="unreachable") == 1, 10, "replica unreachable")
            self.assertGreater(metric(self.metrics(), "pgrouter_server_probe_failures_total",
                                      server=self.cluster.replicas[0].addr), 0)
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(self.router.dsn("ro"))
            text = self.metrics()
            self.assertEqual(metric(text, "pgrouter_client_connections_rejected_total",
                                    listener="ro", reason="no_server"), rej + 1)
            self.assertEqual(metric(text, "pgrouter_queue_wait_seconds_count", listener="ro"),
                             metric(text, "pgrouter_queue_wait_seconds_bucket", listener="ro",
                                    le="+Inf"))
            self.assertGreaterEqual(metric(text, "pgrouter_queue_wait_seconds_sum",
                                           listener="ro"), 1.9)
        finally:
            self.cluster.replicas[0].start()
            wait_for(lambda: metric(self.metrics(), "pgrouter_server_status",
                                    server=self.cluster.replicas[0].addr,
                                    state="standby") == 1, 20, "replica back")

    def test_probe_pool_and_reload_metrics(self):
        primary = self.cluster.primary.addr
        text = self.metrics()
        self.assertGreater(metric(text, "pgrouter_server_probes_total", server=primary), 0)
        self.assertGreater(metric(text, "pgrouter_server_probe_duration_seconds",
                                  server=primary), 0)
        # a pooled connection stays when its client leaves
        c = psycopg2.connect(self.router.dsn("pool"))
        self.assertEqual(metric(self.metrics(), "pgrouter_pool_server_connections",
                                server=primary, state="in_use"), 1)
        c.close()
        wait_for(lambda: metric(self.metrics(), "pgrouter_pool_server_connections",
                                server=primary, state="idle") == 1, 5, "the connection parked")
        ok = metric(text, "pgrouter_reloads_total", result="ok")
        os.kill(self.router.proc.pid, signal.SIGHUP)
        wait_for(lambda: metric(self.metrics(), "pgrouter_reloads_total", result="ok") == ok + 1,
                 5, "the reload counted")
        text = self.metrics()
        self.assertEqual(metric(text, "pgrouter_last_reload_success"), 1)
        self.assertGreater(metric(text, "pgrouter_last_reload_timestamp_seconds"),
                           time.time() - 60)

    def test_scraped_by_prometheus(self):
        work = tempfile.mkdtemp(prefix="pgrouter-prom-")
        os.chmod(work, 0o777)
        port = free_port()
        conf = os.path.join(work, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                    "  - job_name: pgrouter\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % self.http_port)
        log = open(os.path.join(work, "prometheus.log"), "wb")
        proc = track(subprocess.Popen(
            ["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" + work + "/data",
             "--web.listen-address=127.0.0.1:%d" % port], stdout=log,
            stderr=subprocess.STDOUT))
        try:
            q = "http://127.0.0.1:%d/api/v1/query?query=pgrouter_build_info" % port

            def scraped():
                try:
                    status, body = get(q, timeout=2)
                except OSError:
                    return False
                res = json.loads(body).get("data", {}).get("result", []) if status == 200 else []
                return bool(res) and res[0]["value"][1] == "1"
            wait_for(scraped, 60, "Prometheus to scrape pgrouter", interval=0.5)
            status, body = get("http://127.0.0.1:%d/api/v1/query?query="
                               "pgrouter_server_status%%7Bstate%%3D%%22primary%%22%%7D%%3D%%3D1"
                               % port)
            res = json.loads(body)["data"]["result"]
            self.assertEqual([r["metric"]["server"] for r in res], [self.cluster.primary.addr])
        finally:
            stop_pid(proc.pid, signal.SIGTERM)
            proc.wait()
            untrack(proc)
            log.close()
            subprocess.run(["rm", "-rf", work])

    def test_zz_readyz_while_draining(self):
        """Last: it stops the router (tearDownClass copes)."""
        w = Wire(self.router.port("rw"))
        w.login()
        w.send(msg(b"Q", cstr("begin")))
        w.read_until_ready()
        os.kill(self.router.proc.pid, signal.SIGTERM)
        wait_for(lambda: get(self.url + "/readyz")[0] == 503, 5, "readyz to say draining")
        self.assertIn("draining", get(self.url + "/readyz")[1])
        self.assertEqual(get(self.url + "/livez")[0], 200)
        self.assertEqual(metric(self.metrics(), "pgrouter_draining"), 1)
        w.send(msg(b"Q", cstr("commit")))
        w.read_until_ready()
        w.close()
        wait_for(lambda: self.router.proc.poll() is not None, 10, "pgrouter to exit")


class LogTest(unittest.TestCase):
    """log_format = json and log_file, reopened on SIGHUP (logrotate)."""

    def test_json_lines_and_reopen(self):
        cluster = PgCluster(0).start()
        self.addCleanup(cluster.cleanup)
        path = os.path.join(cluster.dir, "pgrouter-file.log")
        r = Router([cluster.primary.addr], {"rw": {"target_session_attrs": "read-write"}},
                   cluster.dir, log_format="json", log_file=path, log_level="debug")
        r.start(wait_topology=False)
        self.addCleanup(r.stop)
        wait_for(lambda: os.path.exists(path) and "topology:" in open(path).read(), 10,
                 "the log file")
        os.rename(path, path + ".1")
        os.kill(r.proc.pid, signal.SIGHUP)
        wait_for(lambda: os.path.exists(path), 5, "a new log file after SIGHUP")
        psycopg2.connect(r.dsn("rw")).close()
        self.assertEqual(r.stop(), 0)
        for f in (path + ".1", path):
            with open(f) as fh:
                lines = [json.loads(l) for l in fh]  # every line is one JSON object
            self.assertTrue(lines, f)
            for rec in lines:
                self.assertEqual(set(rec), {"ts", "pid", "level", "msg"})
        with open(path) as fh:
            new = fh.read()
        self.assertIn("accepted", new)  # the session after the reopen went to the new file
        self.assertIn("pgrouter stopped", new)


class SystemdTest(unittest.TestCase):
    """conf/pgrouter.service's commands run as written (paths swapped for the
    test's), and pgrouter speaks systemd's notify protocol to $NOTIFY_SOCKET."""
    UNIT = os.path.join(ROOT, "conf", "pgrouter.service")

    def setUp(self):
        self.cluster = PgCluster(0).start()
        self.addCleanup(self.cluster.cleanup)
        r = Router([self.cluster.primary.addr], {"rw": {"target_session_attrs": "read-write"}},
                   self.cluster.dir)
        r.write_conf()
        self.conf = r.conf_path

    def unit_commands(self, key):
        out = []
        with open(self.UNIT) as f:
            for line in f:
                if line.startswith(key + "="):
                    cmd = line.split("=", 1)[1].strip()
                    cmd = cmd.replace("/usr/local/bin/pgrouter", PGROUTER)
                    out.append(cmd.replace("/etc/pgrouter/pgrouter.ini", self.conf))
        self.assertTrue(out, key)
        return out

    def recv(self, sock, want, timeout=10):
        sock.settimeout(timeout)
        got = []
        while True:
            data = sock.recv(4096).decode()
            got.append(data)
            if want in data:
                return data

    def test_unit_runs_and_notifies(self):
        for cmd in self.unit_commands("ExecStartPre"):
            self.assertEqual(subprocess.run(cmd, shell=True).returncode, 0, cmd)
        path = os.path.join(self.cluster.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        [start] = self.unit_commands("ExecStart")
        log = open(os.path.join(self.cluster.dir, "systemd-pgrouter.log"), "wb")
        proc = track(subprocess.Popen(start.split(), env=dict(os.environ, NOTIFY_SOCKET=path),
                                      stdout=log, stderr=subprocess.STDOUT))
        try:
            self.assertIn("READY=1", self.recv(sock, "READY=1"))
            for cmd in self.unit_commands("ExecReload"):
                cmd = cmd.replace("$MAINPID", str(proc.pid))
                self.assertEqual(subprocess.run(cmd, shell=True).returncode, 0, cmd)
            msg_ = self.recv(sock, "RELOADING=1")
            self.assertRegex(msg_, r"MONOTONIC_USEC=\d+")
            self.assertIn("READY=1", self.recv(sock, "READY=1"))
            os.kill(proc.pid, signal.SIGTERM)
            self.assertIn("STOPPING=1", self.recv(sock, "STOPPING=1"))
            self.assertEqual(proc.wait(30), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            untrack(proc)
            log.close()

    def test_cmake_install(self):
        build = os.path.dirname(PGROUTER)
        dest = tempfile.mkdtemp(prefix="pgrouter-install-")
        self.addCleanup(subprocess.run, ["rm", "-rf", dest])
        r = subprocess.run(["cmake", "--install", build, "--prefix", "/usr/local"],
                           env=dict(os.environ, DESTDIR=dest), capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for f in ("usr/local/bin/pgrouter", "usr/local/lib/systemd/system/pgrouter.service",
                  "usr/local/etc/pgrouter/pgrouter.ini.example"):
            self.assertTrue(os.path.exists(os.path.join(dest, f)), f)


if __name__ == "__main__":
    unittest.main()
