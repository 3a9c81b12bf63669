"""A reload that reloads everything (SIGHUP and the console's RELOAD): servers,
timeouts, log level and format, listeners added, removed and changed, a broken
file (the running configuration stays), settings that need a restart; against
a real PostgreSQL 15 primary and replica."""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PgCluster, Router, free_port, wait_for  # noqa: E402
from wire import Wire, error_fields  # noqa: E402


class ReloadTest(unittest.TestCase):
    def setUp(self):
        self.sock_dir = tempfile.mkdtemp(prefix="pgrouter-reload-")
        self.sock_port = free_port()
        self.http_port = free_port()
        self.router = Router([self.cluster.primary.addr],
                             {"rw": {"target_session_attrs": "read-write"},
                              "sb": {"target_session_attrs": "standby"},
                              "flex": {"target_session_attrs": "any"}},
                             self.cluster.dir, queue_timeout="2s",
                             admin_listen="%s:%d" % (self.sock_dir, self.sock_port),
                             http_listen="127.0.0.1:%d" % self.http_port).start()

    def tearDown(self):
        self.router.stop_clean()

    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(1).start()
        cls.addClassCleanup(cls.cluster.cleanup)

    def console(self, command):
        return subprocess.run(["psql", "-X", "-A", "-t", "-h", self.sock_dir, "-p",
                               str(self.sock_port), "-d", "pgrouter", "-c", command],
                              capture_output=True, text=True, timeout=30)

    def rows(self, command):
        r = self.console(command)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [line.split("|") for line in r.stdout.splitlines()]

    def reload(self):
        self.router.write_conf()
        r = self.console("RELOAD")
        self.assertEqual(r.returncode, 0, r.stderr + self.router.log_text()[-2000:])

    def status(self):
        return json.loads(urllib.request.urlopen("http://127.0.0.1:%d/status" % self.http_port,
                                                 timeout=5).read())

    def refused_after(self, listener):
        """Seconds until a session on listener is refused (no server for it)."""
        t0 = time.time()
        with self.assertRaises(psycopg2.OperationalError) as e:
            psycopg2.connect(self.router.dsn(listener))
        return time.time() - t0, str(e.exception)

    def test_servers_and_timeouts(self):
        rw = psycopg2.connect(self.router.dsn("rw"))
        rw.autocommit = True
        cur = rw.cursor()
        cur.execute("select pg_backend_pid()")
        pid = cur.fetchone()[0]
        took, why = self.refused_after("sb")
        self.assertGreater(took, 1.8)
        self.assertIn("after 2.0s", why)
        # a shorter queue_timeout, and the replica added: the standby listener
        # routes, the write session is untouched (same backend)
        self.router.settings["queue_timeout"] = "700ms"
        self.router.servers.append(self.cluster.replicas[0].addr)
        self.reload()
        wait_for(lambda: len(self.rows("SHOW SERVERS")) == 2 and
                 "standby" in [r[2] for r in self.rows("SHOW SERVERS")], 10, "replica probed")
        c = psycopg2.connect(self.router.dsn("sb"))
        cc = c.cursor()
        cc.execute("select pg_is_in_recovery()")
        self.assertTrue(cc.fetchone()[0])
        c.close()
        cur.execute("select pg_backend_pid()")
        self.assertEqual(cur.fetchone()[0], pid)
        # the replica taken out of the list again: the new timeout applies
        self.router.servers.pop()
        self.reload()
        wait_for(lambda: len(self.rows("SHOW SERVERS")) == 1, 10, "replica gone")
        took, why = self.refused_after("sb")
        self.assertLess(took, 1.5)
        self.assertIn("after 0.7s", why)
        cur.execute("select 1")
        rw.close()
        self.assertNotIn("shed", self.router.log_text())
        st = self.status()
        self.assertEqual(st["config_generation"], 3)
        self.assertTrue(st["last_reload_ok"])

    def keepalive_timers(self, listener):
        """Seconds left on the keepalive timer of each of pgrouter's sockets
        accepted on listener (from ss: pgrouter's own side of each client)."""
        out = subprocess.run(["ss", "-tnoH", "state", "established",
                              "( sport = :%d )" % self.router.port(listener)],
                             capture_output=True, text=True, check=True).stdout
        timers = []
        for m in re.finditer(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?", out):
            mins, secs, ms = (int(x or 0) for x in m.groups())
            timers.append(mins * 60 + secs + ms / 1000)
        return timers

    def test_keepalive_of_new_clients(self):
        """tcp_keep* are set on the listening sockets and inherited by each
        client socket: a reload changes them for clients accepted after it."""
        first = psycopg2.connect(self.router.dsn("rw"))
        wait_for(lambda: len(self.keepalive_timers("rw")) == 1, 5, "the client's socket")
        (t,) = self.keepalive_timers("rw")
        self.assertTrue(5 < t <= 20, t)  # the default tcp_keepidle, 20 s
        self.router.settings["tcp_keepidle"] = "300s"
        self.reload()
        second = psycopg2.connect(self.router.dsn("rw"))
        # (ss shows the retransmission timer instead until the client's delayed
        # ACK of the login's last bytes arrives)
        wait_for(lambda: len(self.keepalive_timers("rw")) == 2, 5, "both sockets idle")
        timers = sorted(self.keepalive_timers("rw"))
        self.assertTrue(timers[0] <= 20 and 200 < timers[1] <= 300, timers)
        first.close()
        second.close()

    def test_log_level_and_format_by_sighup(self):
        psycopg2.connect(self.router.dsn("rw")).close()
        self.assertNotIn("accepted", self.router.log_text())  # a debug line
        self.router.settings["log_level"] = "debug"
        self.router.settings["log_format"] = "json"
        self.router.write_conf()
        mark = len(self.router.log_text())
        os.kill(self.router.proc.pid, signal.SIGHUP)
        wait_for(lambda: "applied (generation 2)" in self.router.log_text()[mark:], 10,
                 "the reload")
        mark = len(self.router.log_text())
        psycopg2.connect(self.router.dsn("rw")).close()
        wait_for(lambda: "accepted" in self.router.log_text()[mark:], 5, "a debug line")
        lines = [l for l in self.router.log_text()[mark:].splitlines() if l]
        self.assertTrue(lines)
        for line in lines:
            self.assertEqual(json.loads(line)["pid"], self.router.proc.pid)

    def test_listeners_added_removed_and_changed(self):
        flex = Wire(self.router.port("flex"))
        self.assertEqual(flex.login()[-1][0], b"Z")
        kept = psycopg2.connect(self.router.dsn("flex"))
        kept.autocommit = True
        # a new listener; "flex" now asks for a standby: its sessions on the
        # primary no longer fit and are shed, as on a role change
        self.router.listeners["extra"] = {"target_session_attrs": "primary"}
        self.router.listeners["flex"] = {"target_session_attrs": "standby"}
        self.reload()
        t, body = flex.read_msg()
        f = error_fields(body)
        self.assertEqual((t, f["C"]), (b"E", "57P01"), f)
        self.assertIn("no longer satisfies target_session_attrs=standby", f["M"])
        flex.close()
        c = psycopg2.connect(self.router.dsn("extra"))
        c.close()
        names = [r[0] for r in self.rows("SHOW LISTENERS")]
        self.assertEqual(names, ["rw", "sb", "flex", "extra"])
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.http_port,
                                         timeout=5).read().decode()
        self.assertIn('pgrouter_client_connections_total{listener="extra"} 1', metrics)
        # "rw" removed: no new sessions there; its open one finishes its work
        rw = psycopg2.connect(self.router.dsn("rw"))
        rw.autocommit = True
        port = self.router.port("rw")
        del self.router.listeners["rw"]
        self.reload()
        wait_for(lambda: not self.router._accepts(port), 5, "the rw socket closed")
        cur = rw.cursor()
        cur.execute("select 42")
        self.assertEqual(cur.fetchone()[0], 42)
        self.assertIn("rw", [r[1] for r in self.rows("SHOW SESSIONS")])
        rw.close()
        kept.close()
        self.assertNotIn("rw", [r[0] for r in self.rows("SHOW LISTENERS")])

    def test_broken_file_and_restart_needed(self):
        with open(self.router.conf_path) as f:
            good = f.read()
        with open(self.router.conf_path, "a") as f:
            f.write("[pgrouter]\nqueue_timeout = soon\n")
        r = self.console("RELOAD")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("queue_timeout: invalid duration", r.stderr)
        self.assertIn("%s:" % self.router.conf_path, r.stderr)
        mark = len(self.router.log_text())
        os.kill(self.router.proc.pid, signal.SIGHUP)
        wait_for(lambda: "reload failed" in self.router.log_text()[mark:], 5, "SIGHUP's failure")
        stats = dict(self.rows("SHOW STATS"))
        self.assertEqual(stats["reloads_failed"], "2")
        self.assertFalse(self.status()["last_reload_ok"])
        took, _ = self.refused_after("sb")  # still 2s
        self.assertGreater(took, 1.8)
        with open(self.router.conf_path, "w") as f:
            f.write(good)
        # workers and an address need a restart: said, kept, the rest applied
        self.router.settings["workers"] = 3
        self.router.settings["queue_timeout"] = "600ms"
        self.router.write_conf()
        r = self.console("RELOAD")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(self.router.log_text()[mark:],
                         r"reload: [^\n]*workers[^\n]* changed in the file but needs? a restart")
        conf = {(row[0], row[1]): row for row in self.rows("SHOW CONFIG")}
        self.assertEqual(conf[("pgrouter", "workers")][2:], ["3", conf[("pgrouter",
                                                                        "workers")][3], "yes"])
        self.assertEqual(conf[("pgrouter", "queue_timeout")][4], "no")
        self.assertEqual(self.status()["restart_needed"], "workers")
        took, _ = self.refused_after("sb")
        self.assertLess(took, 1.5)
        # ExecReload's check of the file
        r = subprocess.run([self.router.binary, "--check", "-c", self.router.conf_path],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
