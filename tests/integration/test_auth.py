"""auth = router: pgrouter authenticates clients itself, from verifiers it
reads with auth_query (the SECURITY DEFINER set-up of conf/auth_query.sql, as
the README shows it) or from an auth_file, and logs in to PostgreSQL as the
client with the ClientKey recovered from the client's SCRAM proof or the md5
hash. pgrouter's own backend keys route cancels. Real PostgreSQL 15 primary
and replica with scram-sha-256 and md5 in pg_hba.conf."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

from cluster import PGROUTER, ROOT, PgCluster, Router, chown_postgres  # noqa: E402
from cluster import query_one as one  # noqa: E402
from cluster import pgbench_select1, wait_for  # noqa: E402
from tlsca import TestCA  # noqa: E402
from wire import Wire, error_fields, msg, scram_login, startup_packet  # noqa: E402

WRONG = 'password authentication failed for user "%s"'


def connect(dsn):
    c = psycopg2.connect(dsn)
    c.autocommit = True
    return c


def login_error(dsn):
    """The error text of a login that must fail."""
    try:
        psycopg2.connect(dsn).close()
    except psycopg2.OperationalError as e:
        return str(e)
    raise AssertionError("login succeeded: " + dsn)


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="pgrouter-auth-")
        os.chmod(cls.work, 0o755)
        chown_postgres(cls.work)
        cls.ca = TestCA(os.path.join(cls.work, "ca"))
        cls.crt, cls.key = cls.ca.issue("router", "pgrouter", ["IP:127.0.0.1"])
        cls.cluster = PgCluster(1, conf={"password_encryption": "'scram-sha-256'"}, hba=[
            "host all md5user 127.0.0.1/32 md5",
            "host all trusted 127.0.0.1/32 trust",
            "host all postgres 127.0.0.1/32 trust",
            "host all pgrouter_auth 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        p = cls.cluster.primary
        # psql as postgres over the Unix socket (trust there)
        p.sql("set password_encryption = 'md5'; create role md5user login password 'md5pw'")
        p.sql("create role scramuser login password 'scrampw'")
        p.sql("create role other login password 'otherpw'")
        p.sql("create role changing login password 'before'")
        p.sql("create role filed login password 'filedpw'")
        p.sql("create role trusted login")
        # exactly the README's set-up
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cls.cluster.dir,
                        "-p", str(p.port), "-U", "postgres", "-d", "postgres", "-f",
                        os.path.join(ROOT, "conf", "auth_query.sql")], check=True)
        p.sql("alter role pgrouter_auth password 'authpw'")
        cls.wait_replicated("pgrouter_auth")
        servers = [s.addr for s in cls.cluster.servers]
        listeners = {
            "rw": {"target_session_attrs": "read-write"},
            "ro": {"target_session_attrs": "standby"},
            "tls": {"target_session_attrs": "read-write", "client_tls": "require",
                    "client_tls_cert": cls.crt, "client_tls_key": cls.key},
            "pass": {"target_session_attrs": "read-write", "auth": "passthrough"},
        }
        cls.router = Router(servers, listeners, cls.work, auth_user="pgrouter_auth",
                            auth_password="authpw",
                            auth_query="SELECT username, password FROM pgrouter.get_auth($1)",
                            auth_trust_users="trusted", auth_cache_ttl="60s").start()
        cls.userlist = os.path.join(cls.work, "userlist.txt")
        cls.write_userlist(["filed", "md5user"])
        cls.frouter = Router(servers, {"rw": {"target_session_attrs": "read-write"}}, cls.work,
                             auth_file=cls.userlist).start()

    @classmethod
    def tearDownClass(cls):
        for r in (cls.router, cls.frouter):
            log = r.stop_clean()
            # never a password or a verifier in the log
            for secret in ("scrampw", "md5pw", "filedpw", "authpw", "SCRAM-SHA-256$"):
                if secret in log:
                    raise AssertionError("secret %r in pgrouter's log" % secret)
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def wait_replicated(cls, role):
        for r in cls.cluster.replicas:
            wait_for(lambda: r.sql("select count(*) from pg_roles where rolname = '%s'" % role)
                     == "1", 10, "role %s on %s" % (role, r.name))

    @classmethod
    def write_userlist(cls, users):
        rows = cls.cluster.primary.sql(
            "select rolname || ' ' || rolpassword from pg_authid where rolname in (%s)"
            % ",".join("'%s'" % u for u in users))
        with open(cls.userlist, "w") as f:
            f.write("; pgrouter test userlist\n")
            for line in rows.splitlines():
                user, verifier = line.split(" ", 1)
                f.write('"%s" "%s"\n' % (user, verifier))

    # -- logins ------------------------------------------------------------

    def test_scram_and_md5_through_auth_query(self):
        for user, pw in (("scramuser", "scrampw"), ("md5user", "md5pw")):
            for listener in ("rw", "ro"):
                with self.subTest(user=user, listener=listener):
                    dsn = self.router.dsn(listener, user=user, password=pw)
                    self.assertEqual(one(dsn, "select current_user"), user)
        # the auth role is not a superuser and reads pg_authid only through the function
        self.assertEqual(self.cluster.primary.sql(
            "select rolsuper from pg_roles where rolname = 'pgrouter_auth'"), "f")
        self.assertIn("permission denied", login_error_sql(
            self.cluster.primary.dsn(user="pgrouter_auth", password="authpw"),
            "select rolpassword from pg_authid"))

    def test_scram_and_md5_through_auth_file(self):
        for user, pw in (("filed", "filedpw"), ("md5user", "md5pw")):
            with self.subTest(user=user):
                self.assertEqual(one(self.frouter.dsn("rw", user=user, password=pw),
                                     "select current_user"), user)
        # a user not in the file is unknown there, whatever the server knows
        self.assertIn(WRONG % "scramuser",
                      login_error(self.frouter.dsn("rw", user="scramuser", password="scrampw")))

    def test_auth_file_reloaded_on_sighup(self):
        dsn = self.frouter.dsn("rw", user="other", password="otherpw")
        self.assertIn(WRONG % "other", login_error(dsn))
        self.write_userlist(["filed", "md5user", "other"])
        mark = len(self.frouter.log_text())
        os.kill(self.frouter.proc.pid, signal.SIGHUP)
        wait_for(lambda: "applied (generation" in self.frouter.log_text()[mark:], 5, "reload")
        self.assertEqual(one(dsn, "select current_user"), "other")
        # a file that does not load keeps the users in use
        with open(self.userlist, "a") as f:
            f.write('"plain" "a-plaintext-password"\n')
        mark = len(self.frouter.log_text())
        os.kill(self.frouter.proc.pid, signal.SIGHUP)
        wait_for(lambda: "reload failed, the running configuration stays" in
                 self.frouter.log_text()[mark:], 5, "refused reload")
        self.assertEqual(one(dsn, "select current_user"), "other")
        self.assertNotIn("a-plaintext-password", self.frouter.log_text())
        self.write_userlist(["filed", "md5user"])

    def test_trust_user(self):
        self.assertEqual(one(self.router.dsn("rw", user="trusted"), "select current_user"),
                         "trusted")

    def test_wrong_password_and_unknown_user_look_the_same(self):
        seen = {}
        for user, pw in (("scramuser", "wrong"), ("nosuchuser", "whatever"),
                         ("trustedless", "x")):
            w = Wire(self.router.port("rw"))
            msgs, mechs = scram_login(w, user, pw)
            t, body = msgs[-1]
            self.assertEqual(t, b"E", msgs)
            f = error_fields(body)
            self.assertEqual((f["S"], f["C"]), ("FATAL", "28P01"))
            self.assertEqual(f["M"], WRONG % user)
            self.assertEqual(len(msgs), 1, "anything besides the error: %r" % msgs)
            self.assertTrue(w.closed())
            w.close()
            seen[user] = mechs
        self.assertEqual(seen["scramuser"], seen["nosuchuser"])
        self.assertEqual(seen["scramuser"], ["SCRAM-SHA-256"])
        # the same salt for the same unknown user each time, as for a real one
        salts = set()
        for _ in range(2):
            w = Wire(self.router.port("rw"))
            w.send(startup_packet(user="nosuchuser"))
            w.read_msg()
            first = b"n,,n=,r=abcdef"
            w.send(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            t, body = w.read_msg()
            salts.add(dict(kv.split("=", 1) for kv in body[4:].decode().split(","))["s"])
            w.close()
        self.assertEqual(len(salts), 1)
        log = self.router.log_text()
        self.assertIn('password authentication failed for user "nosuchuser" from 127.0.0.1:', log)

    def test_channel_binding_require_on_tls_listener(self):
        for cb in ("require", "prefer", "disable"):
            with self.subTest(channel_binding=cb):
                dsn = self.router.dsn("tls", user="scramuser", password="scrampw",
                                      sslmode="require", channel_binding=cb)
                self.assertEqual(one(dsn, "select current_user"), "scramuser")
        # plaintext listener: pgrouter offers no -PLUS (there is nothing to bind
        # to), so libpq refuses require
        w = Wire(self.router.port("rw"))
        w.send(startup_packet(user="scramuser"))
        t, body = w.read_msg()
        self.assertEqual((t, struct.unpack("!I", body[:4])[0]), (b"R", 10))  # SASL
        self.assertEqual([m for m in body[4:].split(b"\0") if m], [b"SCRAM-SHA-256"])
        w.close()
        w = Wire(self.router.port("tls"))
        w.start_tls()
        w.send(startup_packet(user="scramuser"))
        t, body = w.read_msg()
        self.assertEqual([m for m in body[4:].split(b"\0") if m],
                         [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"])
        w.close()
        err = login_error(self.router.dsn("rw", user="scramuser", password="scrampw",
                                          channel_binding="require"))
        self.assertIn("channel binding required", err)

    def test_lookup_survives_its_connection_lost(self):
        """auth_query's connection ended under it (a switchover stops the server
        it asks; here its backend is terminated): the lookup is asked again,
        the client logs in (the soak saw 08001 "cannot look up" at switchovers)."""
        r = Router([s.addr for s in self.cluster.servers],
                   {"rw": {"target_session_attrs": "read-write"}}, self.work,
                   auth_user="pgrouter_auth", auth_password="authpw",
                   auth_query="SELECT username, password FROM pgrouter.get_auth($1)",
                   auth_cache_ttl="0").start()
        self.addCleanup(r.stop_clean)
        dsn = r.dsn("rw", user="scramuser", password="scrampw")
        self.assertEqual(one(dsn, "select current_user"), "scramuser")
        time.sleep(1.1)  # past the answer's freshness: the next login asks again
        killed = self.cluster.primary.sql(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where application_name = 'pgrouter-auth'")
        self.assertGreaterEqual(int(killed), 1)  # (the class's router's too)
        self.assertEqual(one(dsn, "select current_user"), "scramuser")
        self.assertIn("; asking again", r.log_text(), r.log_text())

    def test_password_change(self):
        old = connect(self.router.dsn("rw", user="changing", password="before"))
        try:
            self.cluster.primary.sql("alter role changing password 'after'")
            self.wait_replicated("changing")
            new = self.router.dsn("rw", user="changing", password="after")
            # the cached verifier is the old one: at most one failure, then the new
            # password works
            failures = 0
            for _ in range(2):
                try:
                    self.assertEqual(one(new, "select current_user"), "changing")
                    break
                except psycopg2.OperationalError as e:
                    self.assertIn("password", str(e))
                    failures += 1
            self.assertLessEqual(failures, 1)
            self.assertEqual(one(new, "select current_user"), "changing")
            # the old password no longer works anywhere
            self.assertIn("password", login_error(
                self.router.dsn("rw", user="changing", password="before")))
            # the session opened before the change goes on
            cur = old.cursor()
            cur.execute("select 42")
            self.assertEqual(cur.fetchone()[0], 42)
        finally:
            old.close()
            self.cluster.primary.sql("alter role changing password 'before'")

    def test_server_asks_cleartext(self):
        # pgrouter holds no passwords: a server that wants one in clear text is
        # refused with a message that says so
        p = self.cluster.primary
        p.sql("create role cleartext login password 'ctpw'")
        hba = os.path.join(p.datadir, "pg_hba.conf")
        with open(hba) as f:
            orig = f.read()
        try:
            with open(hba, "w") as f:
                f.write("host all cleartext 127.0.0.1/32 password\n" + orig)
            p.sql("select pg_reload_conf()")
            err = login_error(self.router.dsn("rw", user="cleartext", password="ctpw"))
            self.assertIn("cleartext password", err)
        finally:
            with open(hba, "w") as f:
                f.write(orig)
            p.sql("select pg_reload_conf()")

    def test_passthrough_listener_unchanged(self):
        dsn = self.router.dsn("pass", user="scramuser", password="scrampw")
        self.assertEqual(one(dsn, "select current_user"), "scramuser")
        self.assertIn("password authentication failed", login_error(
            self.router.dsn("pass", user="scramuser", password="bad")))

    def test_garbage_during_login(self):
        import struct
        for bad in (msg(b"Q", b"select 1\0"),                       # not a password message
                    msg(b"p", b"SCRAM-SHA-1\0" + struct.pack("!i", 3) + b"abc"),
                    msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 5) + b"n,,xx"),
                    b"p" + struct.pack("!I", 1 << 20)):              # oversize length
            with self.subTest(bad=bad[:20]):
                w = Wire(self.router.port("rw"))
                w.send(startup_packet(user="scramuser"))
                w.read_msg()
                w.send(bad)
                t, body = w.read_msg()
                self.assertEqual((t, error_fields(body)["C"]), (b"E", "08P01"))
                w.close()
        self.assert_serving()

    def assert_serving(self):
        self.assertEqual(one(self.router.dsn("rw", user="scramuser", password="scrampw"),
                             "select 1"), 1)

    # -- cancel keys ------------------------------------------------------------

    def test_own_backend_keys_and_cancel(self):
        a = connect(self.router.dsn("rw", user="scramuser", password="scrampw"))
        b = connect(self.router.dsn("rw", user="md5user", password="md5pw"))
        try:
            ca, cb = a.cursor(), b.cursor()
            ca.execute("select pg_backend_pid()")
            server_pid = ca.fetchone()[0]
            # the client holds pgrouter's key, not the server's
            self.assertNotEqual(a.get_backend_pid(), server_pid)
            done = {}

            def long_b():
                try:
                    cb.execute("select pg_sleep(3)")
                    done["b"] = "finished"
                except Exception as e:  # noqa: BLE001
                    done["b"] = e
            t = threading.Thread(target=long_b)
            t.start()
            threading.Timer(0.5, a.cancel).start()
            start = time.monotonic()
            with self.assertRaises(psycopg2.extensions.QueryCanceledError):
                ca.execute("select pg_sleep(10)")
            self.assertLess(time.monotonic() - start, 5)
            t.join()
            # the other client's query was not canceled
            self.assertEqual(done["b"], "finished")
            ca.execute("select 1")
        finally:
            a.close()
            b.close()

    # -- clients ----------------------------------------------------------------

    def test_pgbench_modes(self):
        for mode in ("simple", "extended", "prepared"):
            with self.subTest(mode=mode):
                pgbench_select1(self, self.router.port("rw"), "scramuser", "scrampw", mode)

    def test_psql(self):
        env = dict(os.environ, PGPASSWORD="md5pw")
        r = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p",
                            str(self.router.port("rw")), "-U", "md5user", "-d", "postgres",
                            "-c", "select current_user", "-c", "\\conninfo"], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("md5user", r.stdout)


def login_error_sql(dsn, sql):
    try:
        one(dsn, sql)
    except psycopg2.Error as e:
        return str(e)
    raise AssertionError("query succeeded")


class AuthConfigTest(unittest.TestCase):
    def check(self, text):
        d = tempfile.mkdtemp(prefix="pgrouter-authconf-")
        try:
            path = os.path.join(d, "p.ini")
            with open(path, "w") as f:
                f.write(text.replace("@DIR@", d))
            with open(os.path.join(d, "users.txt"), "w") as f:
                f.write('"u" "md5' + "0" * 32 + '"\n"v" "plaintext"\n')
            r = subprocess.run([PGROUTER, "--check", "-c", path], capture_output=True, text=True)
            return r.returncode, (r.stdout + r.stderr).replace(d, "@DIR@")
        finally:
            shutil.rmtree(d)

    def test_check(self):
        base = "[cluster]\nservers = 127.0.0.1:5432\n[listener a]\nlisten = 127.0.0.1:6000\n"
        rc, out = self.check("[pgrouter]\nauth = sometimes\n" + base)
        self.assertEqual(rc, 1)
        self.assertIn("p.ini:2: auth: must be passthrough or router", out)
        rc, out = self.check("[pgrouter]\nauth_query = select 1\n" + base)
        self.assertIn("p.ini:2: auth_query: must take the user name as $1", out)
        rc, out = self.check("[pgrouter]\nauth_cache_ttl = soon\n" + base)
        self.assertIn("p.ini:2: auth_cache_ttl:", out)
        rc, out = self.check("[pgrouter]\nauth_file = @DIR@/users.txt\n" + base)
        self.assertEqual(rc, 1)
        self.assertIn("users.txt:2: user \"v\": not a SCRAM-SHA-256 or md5 verifier", out)
        self.assertNotIn("plaintext\"", out.split("verifier")[0])
        rc, out = self.check("[pgrouter]\nauth_file = @DIR@/none.txt\n" + base)
        self.assertIn("p.ini:2: auth_file: cannot read", out)
        rc, out = self.check(base + "auth = router\n")
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
