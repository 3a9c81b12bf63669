"""The admin console ([admin] listen): psql on a Unix socket (peer credentials)
and on TCP (SCRAM against auth_file), its SHOW commands, PAUSE/RESUME, SET
SERVER READY|DRAIN|MAINT, KILL, RELOAD and SHUTDOWN, against a real PostgreSQL
15 primary and replica."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PgCluster, Router, as_postgres, free_port, wait_for  # noqa: E402
from wire import Wire, cstr, error_fields, msg, scram_login  # noqa: E402


class ConsoleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        p = cls.cluster.primary
        p.sql("create role ops login password 'opspw'")
        p.sql("create role app login password 'apppw'")
        cls.userlist = os.path.join(cls.cluster.dir, "userlist.txt")
        rows = p.sql("select rolname || ' ' || rolpassword from pg_authid "
                     "where rolname in ('ops', 'app')")
        with open(cls.userlist, "w") as f:
            for line in rows.splitlines():
                user, verifier = line.split(" ", 1)
                f.write('"%s" "%s"\n' % (user, verifier))
        cls.sock_dir = tempfile.mkdtemp(prefix="pgrouter-console-")
        os.chmod(cls.sock_dir, 0o755)
        cls.sock_port = free_port()
        cls.tcp_port = free_port()
        cls.http_port = free_port()
        cls.router = Router([s.addr for s in cls.cluster.servers],
                            {"rw": {"target_session_attrs": "read-write"},
                             "ps": {"target_session_attrs": "prefer-standby", "auth": "router"}},
                            cls.cluster.dir, probe_interval="250ms", queue_timeout="2s",
                            auth="passthrough", auth_file=cls.userlist,
                            auth_trust_users="postgres", admin_users="ops",
                            admin_listen="%s:%d, 127.0.0.1:%d" % (cls.sock_dir, cls.sock_port,
                                                                  cls.tcp_port),
                            http_listen="127.0.0.1:%d" % cls.http_port).start()

        def probed():
            rows = cls.psql("SHOW SERVERS").stdout.splitlines()
            return sorted(r.split("|")[2] for r in rows) == ["primary", "standby"]
        wait_for(probed, 20, "both servers probed")

    @classmethod
    def tearDownClass(cls):
        cls.router.stop_clean()

    @classmethod
    def psql(cls, command, tcp=False, user="root", password=None, database="pgrouter",
             prefix=()):
        """psql -c command on the console; the CompletedProcess (rows: 'a|b|c')."""
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        host, port = ("127.0.0.1", cls.tcp_port) if tcp else (cls.sock_dir, cls.sock_port)
        return subprocess.run(list(prefix) + ["psql", "-X", "-A", "-t", "-w", "-h", host,
                                              "-p", str(port), "-U", user, "-d", database,
                                              "-c", command],
                              capture_output=True, text=True, env=env, timeout=30)

    def ok(self, command, **kw):
        r = self.psql(command, **kw)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [line.split("|") for line in r.stdout.splitlines()]

    def servers(self):
        return {r[0]: r for r in self.ok("SHOW SERVERS")}

    # -- who gets in ----------------------------------------------------------

    def test_unix_socket_peer_credentials(self):
        self.assertEqual(self.ok("SHOW VERSION")[0][0][:9], "pgrouter ")
        # another OS user, not in admin_users: refused, whatever it claims to be
        r = self.psql("SHOW VERSION", user="ops", prefix=as_postgres())
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('peer authentication failed for user "ops"', r.stderr)
        # the console's database only
        r = self.psql("SHOW VERSION", database="postgres")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('database "postgres" does not exist', r.stderr)

    def test_tcp_scram(self):
        self.assertEqual(self.ok("SHOW VERSION", tcp=True, user="ops", password="opspw")[0][0][:9],
                         "pgrouter ")
        for user, pw in (("ops", "wrong"), ("app", "apppw"), ("nobody", "x")):
            with self.subTest(user=user):
                r = self.psql("SHOW VERSION", tcp=True, user=user, password=pw)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn('password authentication failed for user "%s"' % user, r.stderr)
        r = self.psql("SHOW VERSION", tcp=True, user="ops")  # no password at all
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("password", r.stderr)
        self.assertIn("not an admin user", self.router.log_text())

    def test_simple_protocol_only_and_bad_commands(self):
        c = psycopg2.connect(host=self.sock_dir, port=self.sock_port, user="root",
                             dbname="pgrouter")
        c.autocommit = True
        cur = c.cursor()
        for bad in ("SHOW NOTHING", "FLY AWAY", "KILL abc", "SET SERVER 'x:1' UP",
                    "SET SERVER 'nosuch:1' DRAIN", "PAUSE nosuch", "KILL 999999999"):
            with self.subTest(command=bad):
                with self.assertRaises(psycopg2.Error) as e:
                    cur.execute(bad)
                self.assertIn(e.exception.pgcode, ("42601", "22023", "42704"))
        cur.execute("SHOW VERSION; SHOW HELP")  # two statements: the last one's rows
        self.assertIn("SHUTDOWN", "".join(r[0] for r in cur.fetchall()))
        c.close()
        # extended protocol: refused with an error, the connection stays usable
        w = Wire(self.tcp_port)
        out, mechs = scram_login(w, "ops", "opspw", database="pgrouter")
        self.assertEqual((out[-1][0], mechs), (b"Z", ["SCRAM-SHA-256"]))
        w.send(msg(b"P", cstr("") + cstr("select 1") + b"\0\0") + msg(b"B", b"\0" * 8) +
               msg(b"E", b"\0" * 5) + msg(b"S"))
        got = w.read_until_ready()
        self.assertEqual([t for t, _ in got], [b"E", b"Z"])
        self.assertEqual(error_fields(got[0][1])["C"], "0A000")
        w.send(msg(b"Q", cstr("SHOW VERSION")))
        self.assertEqual([t for t, _ in w.read_until_ready()], [b"T", b"D", b"C", b"Z"])
        w.send(msg(b"Q", cstr(" ; ")))
        self.assertEqual([t for t, _ in w.read_until_ready()], [b"I", b"Z"])
        w.send(msg(b"X"))
        self.assertTrue(w.closed())
        w.close()

    # -- SHOW --------------------------------------------------------------------

    def test_show(self):
        c = psycopg2.connect(self.router.dsn("rw"))
        c.autocommit = True
        cur = c.cursor()
        cur.execute("select 1")
        primary, replica = self.cluster.primary.addr, self.cluster.replicas[0].addr
        srv = self.servers()
        self.assertEqual(srv[primary][2:5], ["primary", "up", "ready"])
        self.assertEqual(srv[replica][2], "standby")
        self.assertGreaterEqual(int(srv[primary][6]), 1)
        ls = {r[0]: r for r in self.ok("SHOW LISTENERS")}
        self.assertEqual(ls["rw"][2], "read-write")
        self.assertEqual(ls["ps"][4], "router")
        self.assertGreaterEqual(int(ls["rw"][8]), 1)
        sessions = [r for r in self.ok("SHOW SESSIONS") if r[1] == "rw" and r[5] == "relay"]
        self.assertTrue(any(r[3] == "postgres" and r[4] == "postgres" and r[6] == primary
                            and r[7] == "I" for r in sessions), sessions)
        stats = dict(self.ok("SHOW STATS"))
        self.assertGreaterEqual(int(stats["sessions_accepted"]), 1)
        self.assertGreater(float(stats["uptime_seconds"]), 0)
        conf = self.ok("SHOW CONFIG")
        self.assertIn(["admin", "admin_users", "ops"], [r[:3] for r in conf])
        self.assertEqual(conf[0][:3], ["(file)", "path", self.router.conf_path])
        c.close()

    # -- operator's word on servers ------------------------------------------------

    def test_drain_and_maint(self):
        primary, replica = self.cluster.primary.addr, self.cluster.replicas[0].addr
        old = Wire(self.router.port("rw"))
        self.assertEqual(old.login()[-1][0], b"Z")
        moving = psycopg2.connect(self.router.dsn("ps"))
        moving.autocommit = True
        mc = moving.cursor()
        mc.execute("set application_name = 'kept'")
        mc.execute("select pg_is_in_recovery()")
        self.assertTrue(mc.fetchone()[0])  # prefer-standby: on the replica
        try:
            # DRAIN the primary: no new write sessions, the open one goes on
            self.ok("SET SERVER '%s' DRAIN" % primary)
            self.assertEqual(self.servers()[primary][4], "drain")
            st = json.loads(urllib.request.urlopen(
                "http://127.0.0.1:%d/status" % self.http_port, timeout=5).read())
            self.assertEqual({s["server"]: s["admin"] for s in st["servers"]}[primary], "drain")
            t0 = time.time()
            with self.assertRaises(psycopg2.OperationalError) as e:
                psycopg2.connect(self.router.dsn("rw"))
            self.assertIn("no server satisfies", str(e.exception))
            self.assertGreater(time.time() - t0, 1.5)  # it waited queue_timeout
            old.send(msg(b"Q", cstr("select 2")))
            self.assertEqual([t for t, _ in old.read_until_ready()], [b"T", b"D", b"C", b"Z"])
            self.ok("SET SERVER '%s' READY" % primary)
            psycopg2.connect(self.router.dsn("rw")).close()

            # MAINT the replica: the session pgrouter logged in moves to the primary
            # at once (it is idle), settings and all; a new one goes there too
            self.ok("SET SERVER '%s' MAINT" % replica)
            wait_for(lambda: "moved from %s to %s" % (replica, primary)
                     in self.router.log_text(), 10, "the prefer-standby session moved")
            mc.execute("select pg_is_in_recovery(), current_setting('application_name')")
            self.assertEqual(mc.fetchone(), (False, "kept"))
            n = psycopg2.connect(self.router.dsn("ps"))
            nc = n.cursor()
            nc.execute("select pg_is_in_recovery()")
            self.assertFalse(nc.fetchone()[0])
            n.close()
            # MAINT the primary: a passthrough session cannot move: shed at its boundary
            self.ok("SET SERVER '%s' MAINT" % primary)
            t, body = old.read_msg()
            f = error_fields(body)
            self.assertEqual((t, f["C"]), (b"E", "57P01"), f)
            self.assertIn("taken out of service by an operator", f["M"])
            self.assertTrue(old.closed())
        finally:
            self.ok("SET SERVER '%s' READY" % primary)
            self.ok("SET SERVER '%s' READY" % replica)
            old.close()
            moving.close()
        self.assertEqual(self.servers()[replica][4], "ready")

    # -- sessions ------------------------------------------------------------------

    def test_kill(self):
        w = Wire(self.router.port("rw"))
        self.assertEqual(w.login(application_name="victim")[-1][0], b"Z")
        mine = [r for r in self.ok("SHOW SESSIONS") if r[1] == "rw" and r[5] == "relay"]
        self.assertEqual(len(mine), 1, mine)
        self.ok("KILL %s" % mine[0][0])
        t, body = w.read_msg()
        f = error_fields(body)
        self.assertEqual((t, f["S"], f["C"], f["M"]),
                         (b"E", "FATAL", "57P01",
                          "terminating connection due to administrator command"))
        self.assertTrue(w.closed())
        w.close()
        r = self.psql("KILL %s" % mine[0][0])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not exist", r.stderr)
        self.assertGreaterEqual(int(dict(self.ok("SHOW STATS"))["sessions_killed"]), 1)

    def test_pause_resume(self):
        idle = psycopg2.connect(self.router.dsn("rw"))
        idle.autocommit = True
        ic = idle.cursor()
        ic.execute("select 1")
        self.ok("PAUSE rw")
        done = {}

        def new_session():
            c = psycopg2.connect(self.router.dsn("rw"))
            c.close()
            done["new"] = time.time()

        def next_query():
            ic.execute("select 2")
            done["query"] = time.time()
        threads = [threading.Thread(target=new_session), threading.Thread(target=next_query)]
        try:
            for t in threads:
                t.start()
            time.sleep(3)  # past queue_timeout: a PAUSE is not bounded by it
            self.assertEqual(done, {})
            ls = {r[0]: r for r in self.ok("SHOW LISTENERS")}
            self.assertEqual((ls["rw"][7], ls["ps"][7]), ("yes", "no"))
            self.assertIn("yes", [r[8] for r in self.ok("SHOW SESSIONS") if r[1] == "rw"])
            # the other listener is not paused
            psycopg2.connect(self.router.dsn("ps")).close()
            resumed = time.time()
        finally:
            self.ok("RESUME rw")
        for t in threads:
            t.join(10)
        self.assertEqual(set(done), {"new", "query"})
        self.assertLess(max(done.values()) - resumed, 5)
        self.assertEqual(ic.fetchone()[0], 2)
        idle.close()
        # PAUSE with no listener pauses them all
        self.ok("PAUSE")
        self.assertEqual({r[7] for r in self.ok("SHOW LISTENERS")}, {"yes"})
        self.ok("RESUME")
        self.assertEqual({r[7] for r in self.ok("SHOW LISTENERS")}, {"no"})

    def test_reload(self):
        self.assertEqual(self.psql("RELOAD").returncode, 0)
        self.assertGreaterEqual(int(dict(self.ok("SHOW STATS"))["reloads_ok"]), 1)


class ConsoleShutdownTest(unittest.TestCase):
    def test_shutdown(self):
        cluster = PgCluster(0).start()
        self.addCleanup(cluster.cleanup)
        sock_dir = tempfile.mkdtemp(prefix="pgrouter-console-")
        port = free_port()
        router = Router([cluster.primary.addr], {"rw": {"target_session_attrs": "read-write"}},
                        cluster.dir, admin_listen="%s:%d" % (sock_dir, port)).start()
        r = subprocess.run(["psql", "-X", "-h", sock_dir, "-p", str(port), "-d", "pgrouter",
                            "-c", "SHUTDOWN"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        router.proc.wait(20)
        self.assertEqual(router.proc.returncode, 0)
        log = router.stop_clean()
        self.assertIn("asked for SHUTDOWN", log)
        self.assertFalse(os.path.exists(os.path.join(sock_dir, ".s.PGSQL.%d" % port)))


if __name__ == "__main__":
    unittest.main()
