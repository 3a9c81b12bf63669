"""pool_mode = session: server connections reset and reused from client to
client, against a real PostgreSQL 15 primary and replica. Clients log in to
pgrouter (auth = router) with SCRAM and md5 users; the server sees one backend
serve several clients in turn."""
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

from cluster import PgCluster, Router, pgbench_select1, wait_for  # noqa: E402
from wire import Wire, error_fields  # noqa: E402

HBA = ["host all md5user 127.0.0.1/32 md5",
       "host all postgres 127.0.0.1/32 trust",
       "host all all 127.0.0.1/32 scram-sha-256"]


def connect(dsn):
    c = psycopg2.connect(dsn)
    c.autocommit = True
    return c


def q(conn, sql, *args):
    cur = conn.cursor()
    cur.execute(sql, args)
    return cur.fetchone()


class PoolTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(1, conf={"password_encryption": "'scram-sha-256'"},
                                hba=HBA).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        p = cls.cluster.primary
        p.sql("set password_encryption = 'md5'; create role md5user login password 'md5pw'")
        p.sql("create role scramuser login replication password 'scrampw'")
        p.sql("create role small login password 'smallpw'")
        p.sql("create role reuser login password 'reuserpw'")
        p.sql("create role walker login password 'walkerpw'")
        for r in cls.cluster.replicas:
            wait_for(lambda: r.sql("select count(*) from pg_roles where rolname = 'reuser'")
                     == "1", 10, "roles on the replica")
        servers = [s.addr for s in cls.cluster.servers]
        cls.router = Router(servers, {
            "rw": {"target_session_attrs": "read-write", "pool_mode": "session"},
            "ro": {"target_session_attrs": "standby", "pool_mode": "session"},
            "one": {"target_session_attrs": "read-write", "pool_mode": "session",
                    "pool_size": 1},
            "plain": {"target_session_attrs": "read-write"},
        }, cls.cluster.dir, auth="router", workers=1, queue_timeout="2s").start()

        # two workers sharing one connection: its idle copy must move to
        # whichever worker the next client lands on
        cls.router2 = Router(servers, {
            "one": {"target_session_attrs": "read-write", "pool_mode": "session",
                    "pool_size": 1}}, cls.cluster.dir, auth="router", workers=2,
            queue_timeout="3s").start()

    @classmethod
    def tearDownClass(cls):
        for r in (cls.router, cls.router2):
            r.stop_clean()

    def test_pool_size_across_workers(self):
        # 30 clients one after the other, on whichever worker the kernel picks:
        # none waits for the pool's one connection for long, none gets 53300
        dsn = self.router2.dsn("one", user="walker", password="walkerpw")
        slowest = 0
        for _ in range(30):
            t0 = time.monotonic()
            c = connect(dsn)
            slowest = max(slowest, time.monotonic() - t0)
            self.assertEqual(q(c, "select 1")[0], 1)
            c.close()
        self.assertLess(slowest, 2.0)
        wait_for(lambda: int(self.cluster.primary.sql(
            "select count(*) from pg_stat_activity where usename = 'walker'")) <= 1, 5,
            "at most pool_size backends")

    def dsn(self, listener="rw", user="scramuser", password="scrampw", **kw):
        return self.router.dsn(listener, user=user, password=password, **kw)

    def test_reuse_visible_on_server(self):
        c = connect(self.dsn(user="reuser", password="reuserpw"))
        pid, start = q(c, "select pg_backend_pid(), backend_start from pg_stat_activity"
                          " where pid = pg_backend_pid()")
        c.close()
        time.sleep(0.2)
        before = time.time()
        c = connect(self.dsn(user="reuser", password="reuserpw"))
        try:
            pid2, start2, now = q(c, "select pg_backend_pid(), backend_start, now()"
                                     " from pg_stat_activity where pid = pg_backend_pid()")
            self.assertEqual(pid2, pid)
            self.assertEqual(start2, start)
            # the backend is older than this client
            self.assertLess(start2.timestamp(), before)
        finally:
            c.close()
        # and the server did not fork for the second client
        self.assertEqual(int(self.cluster.primary.sql(
            "select count(*) from pg_stat_activity where usename = 'reuser'")), 1)

    def test_reset_between_clients(self):
        c = connect(self.dsn(user="md5user", password="md5pw"))
        pid = q(c, "select pg_backend_pid()")[0]
        cur = c.cursor()
        cur.execute("create temp table secret(x int); insert into secret values (1)")
        cur.execute("set work_mem = '7MB'")
        cur.execute("prepare sneaky as select 1")
        c.close()
        time.sleep(0.2)
        c = connect(self.dsn(user="md5user", password="md5pw"))
        try:
            self.assertEqual(q(c, "select pg_backend_pid()")[0], pid)
            self.assertEqual(q(c, "select count(*) from pg_class"
                                  " where relname = 'secret'")[0], 0)
            self.assertNotEqual(q(c, "show work_mem")[0], "7MB")
            self.assertEqual(q(c, "select count(*) from pg_prepared_statements")[0], 0)
        finally:
            c.close()

    def test_client_parameters_on_reused_connection(self):
        c = connect(self.dsn(application_name="first", client_encoding="LATIN1"))
        pid = q(c, "select pg_backend_pid()")[0]
        self.assertEqual(q(c, "show application_name")[0], "first")
        self.assertEqual(q(c, "show client_encoding")[0], "LATIN1")
        c.close()
        time.sleep(0.2)
        c = psycopg2.connect(self.dsn(application_name="second", client_encoding="UTF8"))
        try:
            self.assertEqual(q(c, "select pg_backend_pid()")[0], pid)
            self.assertEqual(q(c, "show application_name")[0], "second")
            self.assertEqual(q(c, "show client_encoding")[0], "UTF8")
            # libpq was told, too: it tracks the server's parameters
            self.assertEqual(c.get_parameter_status("application_name"), "second")
            self.assertEqual(c.get_parameter_status("client_encoding"), "UTF8")
            self.assertIsNotNone(c.get_parameter_status("server_version"))
            self.assertIsNotNone(c.get_parameter_status("TimeZone"))
            self.assertEqual(q(c, "select current_setting('application_name') ="
                                  " (select application_name from pg_stat_activity"
                                  " where pid = pg_backend_pid())")[0], True)
        finally:
            c.close()
        # a parameter the server refuses: the error PostgreSQL gives a bad startup
        w = Wire(self.router.port("rw"))
        from wire import scram_login
        msgs, _ = scram_login(w, "scramuser", "scrampw", DateStyle="Nonsense")
        t, body = msgs[-1]
        self.assertEqual(t, b"E")
        f = error_fields(body)
        self.assertEqual(f["S"], "FATAL")
        self.assertEqual(f["C"], "22023")
        w.close()

    def test_pool_exhaustion_waits_then_53300(self):
        a = connect(self.dsn("one", user="small", password="smallpw"))
        got = {}

        def second():
            t0 = time.monotonic()
            c = connect(self.dsn("one", user="small", password="smallpw"))
            got["waited"] = time.monotonic() - t0
            got["pid"] = q(c, "select pg_backend_pid()")[0]
            c.close()
        apid = q(a, "select pg_backend_pid()")[0]
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.7)
        a.close()
        t.join(10)
        self.assertGreater(got["waited"], 0.5)
        self.assertEqual(got["pid"], apid)
        # nobody gives the connection back: queue_timeout, then 53300
        a = connect(self.dsn("one", user="small", password="smallpw"))
        try:
            w = Wire(self.router.port("one"))
            from wire import scram_login
            msgs, _ = scram_login(w, "small", "smallpw")
            t, body = msgs[-1]
            f = error_fields(body)
            self.assertEqual((t, f["C"]), (b"E", "53300"), msgs)
            self.assertIn("pool_size=1", f["M"])
            w.close()
        finally:
            a.close()

    def test_mid_transaction_exit_closes_the_connection(self):
        c = psycopg2.connect(self.dsn(user="small", password="smallpw", application_name="mid"))
        cur = c.cursor()
        cur.execute("select pg_backend_pid()")
        pid = cur.fetchone()[0]
        self.assertEqual(c.get_transaction_status(),
                         psycopg2.extensions.TRANSACTION_STATUS_INTRANS)
        c.close()  # psycopg2 leaves inside a transaction
        wait_for(lambda: self.cluster.primary.sql(
            "select count(*) from pg_stat_activity where pid = %d" % pid) == "0", 5,
            "backend of an abandoned transaction to go")

    def test_cancel_after_reuse(self):
        a = connect(self.dsn())
        apid = q(a, "select pg_backend_pid()")[0]
        a.close()
        time.sleep(0.2)
        a = connect(self.dsn())
        b = connect(self.dsn(user="md5user", password="md5pw"))
        try:
            self.assertEqual(q(a, "select pg_backend_pid()")[0], apid)
            done = {}

            def long_b():
                try:
                    b.cursor().execute("select pg_sleep(2.5)")
                    done["b"] = "finished"
                except Exception as e:  # noqa: BLE001
                    done["b"] = e
            t = threading.Thread(target=long_b)
            t.start()
            threading.Timer(0.5, a.cancel).start()
            t0 = time.monotonic()
            with self.assertRaises(psycopg2.extensions.QueryCanceledError):
                a.cursor().execute("select pg_sleep(10)")
            self.assertLess(time.monotonic() - t0, 5)
            t.join()
            self.assertEqual(done["b"], "finished")
            self.assertEqual(q(a, "select 1")[0], 1)
        finally:
            a.close()
            b.close()

    def test_replication_never_pooled(self):
        env = dict(os.environ, PGPASSWORD="scrampw")
        dsn = "host=127.0.0.1 port=%d user=scramuser dbname=postgres replication=database" \
            % self.router.port("rw")
        r = subprocess.run(["psql", "-X", "-At", "-d", dsn, "-c", "IDENTIFY_SYSTEM"], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        # the walsender does not stay behind for the next client
        wait_for(lambda: self.cluster.primary.sql(
            "select count(*) from pg_stat_activity where backend_type = 'walsender'"
            " and usename = 'scramuser'") == "0", 5, "walsender to end")

    def test_pgbench_and_psql(self):
        env = dict(os.environ, PGPASSWORD="scrampw")
        for mode in ("simple", "extended", "prepared"):
            with self.subTest(mode=mode):
                pgbench_select1(self, self.router.port("rw"), "scramuser", "scrampw", mode)
        # -C through the pool forks at most pool_size backends
        n = int(self.cluster.primary.sql(
            "select count(*) from pg_stat_activity where usename = 'scramuser'"))
        self.assertLessEqual(n, 20)
        self.assertGreaterEqual(n, 1)
        r = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p",
                            str(self.router.port("rw")), "-U", "scramuser", "-d", "postgres",
                            "-c", "select current_user"], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "scramuser")

    def test_standby_pool(self):
        c = connect(self.dsn("ro"))
        pid = q(c, "select pg_backend_pid()")[0]
        self.assertTrue(q(c, "select pg_is_in_recovery()")[0])
        c.close()
        time.sleep(0.2)
        c = connect(self.dsn("ro"))
        try:
            self.assertEqual(q(c, "select pg_backend_pid()")[0], pid)
        finally:
            c.close()


class PoolRoleChangeTest(unittest.TestCase):
    """Its own cluster: a replica is promoted under a standby pool."""

    def test_promoted_server_pool_closed(self):
        cluster = PgCluster(1, conf={"password_encryption": "'scram-sha-256'"}, hba=HBA).start()
        self.addCleanup(cluster.cleanup)
        cluster.primary.sql("create role scramuser login password 'scrampw'")
        wait_for(lambda: cluster.replicas[0].sql(
            "select count(*) from pg_roles where rolname = 'scramuser'") == "1", 10, "role")
        router = Router([s.addr for s in cluster.servers], {
            "ro": {"target_session_attrs": "standby", "pool_mode": "session"},
            "any": {"target_session_attrs": "any", "pool_mode": "session"}},
            cluster.dir, auth="router", workers=1, queue_timeout="2s").start()
        self.addCleanup(router.stop)
        replica = cluster.replicas[0]
        dsn = router.dsn("ro", user="scramuser", password="scrampw")
        c = connect(dsn)
        pid = q(c, "select pg_backend_pid()")[0]
        c.close()
        time.sleep(0.3)  # reset, then idle in the pool
        self.assertEqual(replica.sql(
            "select count(*) from pg_stat_activity where pid = %d" % pid), "1")
        replica.promote()
        # the idle connection was made for a standby: closed at once, never handed out
        wait_for(lambda: replica.sql(
            "select count(*) from pg_stat_activity where pid = %d" % pid) == "0", 10,
            "pooled connection to the promoted server to close")
        self.assertIn("changed role", router.log_text())
        # a standby session now finds no standby
        with self.assertRaises(psycopg2.OperationalError):
            connect(dsn)
        # the promoted server serves "any" with new connections
        c = connect(router.dsn("any", user="scramuser", password="scrampw"))
        self.assertNotEqual(q(c, "select pg_backend_pid()")[0], pid)
        c.close()


if __name__ == "__main__":
    unittest.main()
