"""pgrouter against a real PostgreSQL 15 primary and two streaming replicas.

Tests in CoreTest share one cluster and one pgrouter and leave both as they
found them; tests that change roles or stop servers build their own.
"""
import hashlib
import io
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402  (Debian's python3-psycopg2)
import psycopg2.extensions  # noqa: E402

from cluster import PG_BIN, PgCluster, Router, port_of, rss_kb, wait_for  # noqa: E402
from cluster import query_one as one  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

POLICIES = ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]
PROBE = 0.25  # probe_interval in seconds used by these tests


def connect(dsn, **kw):
    c = psycopg2.connect(dsn, **kw)
    c.autocommit = True
    return c


def server_port(dsn):
    return port_of(dsn)


def libpq_accepts(server, policy):
    """Does libpq itself accept this server for target_session_attrs=policy?"""
    try:
        connect(server.dsn(target_session_attrs=policy)).close()
        return True
    except psycopg2.OperationalError:
        return False


def libpq_set(servers, policy):
    """The servers libpq accepts for policy, as a multi-host DSN would pick them.
    prefer-standby: libpq takes standbys if any accepts, else any server."""
    if policy == "prefer-standby":
        standbys = {s.port for s in servers if libpq_accepts(s, "standby")}
        return standbys or {s.port for s in servers if libpq_accepts(s, "any")}
    return {s.port for s in servers if libpq_accepts(s, policy)}


def multihost_pick(servers, policy, order):
    hosts = ",".join("127.0.0.1" for _ in order)
    ports = ",".join(str(servers[i].port) for i in order)
    return server_port("host=%s port=%s user=postgres dbname=postgres target_session_attrs=%s"
                       % (hosts, ports, policy))


def router_set(router, listener, n=24):
    return {server_port(router.dsn(listener)) for _ in range(n)}


def all_policy_listeners(**extra):
    ls = {}
    for p in POLICIES:
        opts = {"target_session_attrs": p}
        opts.update(extra)
        ls[p] = opts
    return ls


class RouterCase(unittest.TestCase):
    """Helpers shared by the test classes."""

    def assert_fatal(self, w, sqlstate, contains=None):
        t, body = w.read_msg()
        self.assertEqual(t, b"E", body)
        f = error_fields(body)
        self.assertEqual(f.get("S"), "FATAL", f)
        self.assertEqual(f.get("C"), sqlstate, f)
        if contains:
            self.assertIn(contains, f.get("M", ""))
        self.assertTrue(w.closed(), "connection not closed after FATAL")
        w.close()
        return f

    def assert_serving(self, router, listener="any"):
        self.assertIsInstance(server_port(router.dsn(listener)), int)

    def assert_clean_log(self, router):
        log = router.log_text()
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(bad, log)


class CoreTest(RouterCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(2, conf={"password_encryption": "'scram-sha-256'"}).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.setup_auth_users(cls.cluster)
        cls.router = Router([s.addr for s in cls.cluster.servers],
                            dict(all_policy_listeners(),
                                 lc={"target_session_attrs": "standby",
                                     "load_balance": "least-connections"},
                                 rnd={"target_session_attrs": "any", "load_balance": "random"}),
                            cls.cluster.dir, probe_interval="%dms" % (PROBE * 1000),
                            max_client_conn=400).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.router.stop()
        log = cls.router.log_text()
        if rc != 0:
            raise AssertionError("pgrouter exited with %s:\n%s" % (rc, log[-3000:]))
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            if bad in log:
                raise AssertionError("sanitizer report in pgrouter log:\n" + log[-5000:])

    @staticmethod
    def setup_auth_users(cluster):
        p = cluster.primary
        p.sql("set password_encryption = 'md5'; create role md5user login password 'md5pw'")
        p.sql("set password_encryption = 'scram-sha-256';"
              " create role scramuser login password 'scrampw'")
        hba = os.path.join(p.datadir, "pg_hba.conf")
        with open(hba) as f:
            rest = f.read()
        with open(hba, "w") as f:
            f.write("host all md5user 127.0.0.1/32 md5\n"
                    "host all scramuser 127.0.0.1/32 scram-sha-256\n" + rest)
        p.sql("select pg_reload_conf()")
        for r in cluster.replicas:
            # replicas have their own pg_hba.conf (copied at basebackup time)
            with open(hba) as src, open(os.path.join(r.datadir, "pg_hba.conf"), "w") as f:
                f.write(src.read())
            r.sql("select pg_reload_conf()")

    # -- routing ---------------------------------------------------------

    def test_policies_match_libpq(self):
        servers = self.cluster.servers
        for policy in POLICIES:
            with self.subTest(policy=policy):
                want = libpq_set(servers, policy)
                self.assertTrue(want, "libpq accepts no server for " + policy)
                got = router_set(self.router, policy)
                self.assertEqual(got, want)
                # libpq given every server as a multi-host DSN picks inside the set too
                for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
                    self.assertIn(multihost_pick(servers, policy, order), want)

    def test_round_robin_spreads(self):
        counts = {}
        for _ in range(40):
            p = server_port(self.router.dsn("standby"))
            counts[p] = counts.get(p, 0) + 1
        self.assertEqual(set(counts), {r.port for r in self.cluster.replicas})
        for p, n in counts.items():
            self.assertGreaterEqual(n, 15, counts)

    def test_random_and_least_connections(self):
        got = router_set(self.router, "rnd", 60)
        self.assertEqual(got, {s.port for s in self.cluster.servers})
        # least-connections: 6 sessions split 3/3; empty one server and the
        # next 3 new sessions all go to it
        def port_on(c):
            k = c.cursor()
            k.execute("select inet_server_port()")
            return k.fetchone()[0]
        held = [connect(self.router.dsn("lc")) for _ in range(6)]
        try:
            by_server = {}
            for c in held:
                by_server.setdefault(port_on(c), []).append(c)
            self.assertEqual(sorted(len(v) for v in by_server.values()), [3, 3])
            emptied = min(by_server)
            for c in by_server[emptied]:
                c.close()
                held.remove(c)
            time.sleep(0.2)
            for _ in range(3):
                c = connect(self.router.dsn("lc"))
                held.append(c)
                self.assertEqual(port_on(c), emptied)
        finally:
            for c in held:
                c.close()

    # -- relay ------------------------------------------------------------

    def test_authentication_passes_through(self):
        for user, pw in (("md5user", "md5pw"), ("scramuser", "scrampw")):
            with self.subTest(user=user):
                dsn = self.router.dsn("read-write", user=user, password=pw)
                self.assertEqual(one(dsn, "select current_user"), user)
                with self.assertRaises(psycopg2.OperationalError) as e:
                    connect(self.router.dsn("read-write", user=user, password="wrong"))
                self.assertIn("password authentication failed", str(e.exception))
        # channel binding needs TLS; over plaintext libpq refuses, as it would directly
        with self.assertRaises(psycopg2.OperationalError):
            connect(self.router.dsn("read-write", user="scramuser", password="scrampw",
                                    channel_binding="require"))

    def test_ssl_and_gss_requests_answered_no(self):
        # libpq's default sslmode=prefer sends SSLRequest first and continues in plaintext
        self.assertEqual(one(self.router.dsn("any", sslmode="prefer"), "select 1"), 1)
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.router.dsn("any", sslmode="require"))
        self.assertIn("SSL", str(e.exception))
        w = Wire(self.router.port("any"))
        w.send(struct.pack("!II", 8, 80877104))  # GSSENCRequest
        self.assertEqual(w.read_byte(), b"N")
        w.send(struct.pack("!II", 8, 80877103))  # then SSLRequest
        self.assertEqual(w.read_byte(), b"N")
        msgs = w.login()
        self.assertEqual(msgs[-1], (b"Z", b"I"))
        w.close()

    def test_protocol_32_startup(self):
        # PostgreSQL 15 answers a 3.2 startup with NegotiateProtocolVersion; it passes through
        w = Wire(self.router.port("read-write"))
        msgs = w.login(version=(3, 2))
        types = [t for t, _ in msgs]
        self.assertIn(b"v", types)
        self.assertIn(b"K", types)
        self.assertEqual(msgs[-1], (b"Z", b"I"))
        w.send(msg(b"Q", cstr("select 42")))
        rows = [b for t, b in w.read_until_ready() if t == b"D"]
        self.assertEqual(rows[0][-2:], b"42")
        w.close()

    def test_extended_protocol_pipelined(self):
        w = Wire(self.router.port("read-write"))
        w.login()
        batch = b""
        for i in range(3):
            batch += msg(b"P", cstr("") + cstr("select $1::int * 2") + struct.pack("!H", 0))
            batch += msg(b"B", cstr("") + cstr("") + struct.pack("!HHIsH", 0, 1, 1,
                                                                 str(i).encode(), 0))
            batch += msg(b"E", cstr("") + struct.pack("!I", 0))
            batch += msg(b"S")
        w.send(batch)
        values = []
        for _ in range(3):
            for t, b in w.read_until_ready():
                if t == b"D":
                    values.append(int(b[6:]))
        self.assertEqual(values, [0, 2, 4])
        w.close()

    def test_pgbench_extended_and_prepared(self):
        env = dict(os.environ, PGCONNECT_TIMEOUT="10")
        dsn = self.router.dsn("read-write")
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", "1", dsn], env=env,
                       check=True, capture_output=True)
        for mode in ("simple", "extended", "prepared"):
            with self.subTest(mode=mode):
                r = subprocess.run([os.path.join(PG_BIN, "pgbench"), "-M", mode, "-c", "4",
                                    "-j", "2", "-t", "300", dsn], env=env, capture_output=True,
                                   text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("number of failed transactions: 0", r.stdout)
                self.assertIn("number of transactions actually processed: 1200", r.stdout)

    def test_copy_both_directions_and_large_results(self):
        c = connect(self.router.dsn("read-write"))
        try:
            cur = c.cursor()
            cur.execute("create temp table t (i int, s text)")
            data = "".join("%d\t%s\n" % (i, "x" * (i % 200)) for i in range(200000)).encode()
            cur.copy_expert("copy t from stdin", io.BytesIO(data))
            cur.execute("select count(*), sum(length(s)) from t")
            self.assertEqual(cur.fetchone(), (200000, sum(i % 200 for i in range(200000))))
            out = io.BytesIO()
            cur.copy_expert("copy (select * from t order by i) to stdout", out)
            self.assertEqual(hashlib.sha256(out.getvalue()).hexdigest(),
                             hashlib.sha256(data).hexdigest())
            # a large result set, checked against the server's own digest
            cur.execute("select md5(string_agg(g::text || repeat('y', 50), ',' order by g))"
                        " from generate_series(1, 300000) g")
            want = cur.fetchone()[0]
            cur.execute("select g::text || repeat('y', 50) from generate_series(1, 300000) g")
            got = hashlib.md5(",".join(r[0] for r in cur.fetchall()).encode()).hexdigest()
            self.assertEqual(got, want)
            # COPY error mid-stream leaves the session usable
            with self.assertRaises(psycopg2.Error):
                cur.copy_expert("copy t from stdin", io.BytesIO(b"1\tok\nnot-a-number\tx\n"))
            cur.execute("select 1")
            self.assertEqual(cur.fetchone()[0], 1)
        finally:
            c.close()

    def test_notify(self):
        a = connect(self.router.dsn("read-write"))
        b = connect(self.router.dsn("read-write"))
        try:
            a.cursor().execute("listen chan")
            b.cursor().execute("notify chan, 'hello'")
            deadline = time.monotonic() + 5
            while not a.notifies and time.monotonic() < deadline:
                select.select([a], [], [], 0.5)
                a.poll()
            self.assertEqual([(n.channel, n.payload) for n in a.notifies], [("chan", "hello")])
        finally:
            a.close()
            b.close()

    def test_cancel(self):
        # cancels arrive on a new connection that may land on either worker and
        # either listener; every one must reach the right server
        for listener in ("read-write", "standby", "standby", "any"):
            with self.subTest(listener=listener):
                c = connect(self.router.dsn(listener))
                cur = c.cursor()
                tag = "select pg_sleep(20) -- %s %d" % (listener, time.monotonic_ns())

                def cancel_once_running():
                    # not on a timer: the query must be running when the cancel comes
                    wait_for(lambda: self.running_anywhere(tag), 10, "the query to run")
                    c.cancel()
                t = threading.Thread(target=cancel_once_running)
                t.start()
                start = time.monotonic()
                with self.assertRaises(psycopg2.extensions.QueryCanceledError):
                    cur.execute(tag)
                t.join()
                self.assertLess(time.monotonic() - start, 5)
                cur.execute("select 1")  # the session survives its cancel
                self.assertEqual(cur.fetchone()[0], 1)
                c.close()

    def test_cancel_unknown_key_is_ignored(self):
        w = Wire(self.router.port("any"))
        w.send(struct.pack("!IIII", 16, 80877102, 12345, 678))
        self.assertTrue(w.closed())
        w.close()
        self.assertIn("cancel request for a key no live session holds", self.router.log_text())
        self.assert_serving(self.router)

    # -- bad input ----------------------------------------------------------

    def assert_closed_silently(self, w, log_line):
        """PostgreSQL's answer to a packet it cannot frame: a log line, no message."""
        self.assertEqual(w.rest(), b"")
        w.close()
        self.router.wait_log(log_line)

    def test_garbage_closed_silently(self):
        w = Wire(self.router.port("any"))
        w.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assert_closed_silently(w, "invalid length of startup packet (1195725856 bytes)")
        self.assert_serving(self.router)

    def test_oversize_and_negative_lengths(self):
        for length in (20000, 0x80000000, 4, 0):
            with self.subTest(length=length):
                w = Wire(self.router.port("any"))
                w.send(struct.pack("!I", length) + b"\0" * 8)
                self.assert_closed_silently(
                    w, "invalid length of startup packet (%d bytes)" % length)
        self.assert_serving(self.router)

    def test_malformed_startup_and_bad_version(self):
        w = Wire(self.router.port("any"))
        body = struct.pack("!I", 3 << 16) + b"user\0postgres"  # unterminated
        w.send(struct.pack("!I", len(body) + 4) + body)
        self.assert_fatal(w, "08P01", "invalid startup packet layout: expected terminator")
        w = Wire(self.router.port("any"))
        w.send(startup_packet(version=(4, 0)))
        self.assert_fatal(w, "0A000", "unsupported frontend protocol 4.0")
        # a protocol 2 client gets the error as it would read one (PostgreSQL too)
        w = Wire(self.router.port("any"))
        w.send(startup_packet(version=(2, 0)))
        self.assertTrue(w.rest().startswith(b"EFATAL:  unsupported frontend protocol 2.0"))
        w.close()
        self.assert_serving(self.router)

    def test_bad_client_framing_after_startup(self):
        w = Wire(self.router.port("read-write"))
        w.login()
        w.send(b"Q" + struct.pack("!I", 2))  # length below 4
        self.assert_fatal(w, "08P01", "invalid message length")
        self.assert_serving(self.router)

    def test_truncated_startup_then_close(self):
        w = Wire(self.router.port("any"))
        w.send(struct.pack("!I", 100) + b"\0\3\0\0user\0")
        w.close()
        time.sleep(0.2)
        self.assert_serving(self.router)

    def test_slowloris_closed_at_startup_timeout(self):
        slow = [Wire(self.router.port("any")) for _ in range(20)]
        for w in slow:
            w.send(struct.pack("!I", 64))  # a length, then nothing
        start = time.monotonic()
        # others are served meanwhile
        self.assert_serving(self.router)
        for w in slow:
            self.assertEqual(w.rest(), b"")  # PostgreSQL too: no message
            w.close()
        took = time.monotonic() - start
        self.assertGreater(took, 2.0)  # startup_timeout = 3s
        self.assertLess(took, 6.0)
        self.router.wait_log("startup packet not received within 3.0s; closed")

    def test_max_client_conn(self):
        held = []
        try:
            # 400 allowed; fill up with idle, fully started sessions
            for _ in range(400):
                w = Wire(self.router.port("any"))
                w.login()
                held.append(w)
            extra = Wire(self.router.port("any"))
            extra.send(startup_packet())
            self.assert_fatal(extra, "53300", "too many clients")
            with self.assertRaises(psycopg2.OperationalError) as e:
                connect(self.router.dsn("any"))
            self.assertIn("too many clients", str(e.exception))
        finally:
            for w in held:
                w.close()
        wait_for(lambda: self._serves(), 5, "pgrouter to accept again")
        self.assertIn("max_client_conn=400", self.router.log_text())

    def _serves(self):
        try:
            return server_port(self.router.dsn("any")) > 0
        except psycopg2.OperationalError:
            return False

    def running_anywhere(self, query, wait_event=None):
        """Is query active on one of the servers (waiting on wait_event, if given)?"""
        q = "select count(*) from pg_stat_activity where state = 'active' and query = %s"
        args = [query]
        if wait_event:
            q += " and wait_event = %s"
            args.append(wait_event)
        for srv in self.cluster.servers:
            with psycopg2.connect(srv.dsn()) as c, c.cursor() as cur:
                cur.execute(q, args)
                n = cur.fetchone()[0]
            c.close()
            if n:
                return True
        return False

    def test_backpressure_bounds_memory(self):
        """A client that stops reading a large result must not grow pgrouter's memory."""
        w = Wire(self.router.port("read-write"))
        w.login()
        before = rss_kb(self.router.proc.pid)
        # ~500 MB of result that the client does not read for a while
        query = "select repeat('z', 1000) from generate_series(1, 500000)"
        w.send(msg(b"Q", cstr(query)))
        # until the server itself is blocked writing: the backpressure reached it
        wait_for(lambda: self.running_anywhere(query, "ClientWrite"), 30,
                 "the server blocked on its write to pgrouter")
        time.sleep(0.5)
        grown = rss_kb(self.router.proc.pid) - before
        self.assertLess(grown, 16 * 1024, "pgrouter grew by %d kB" % grown)
        # then the client reads everything, intact
        w.sock.settimeout(60)
        rows = 0
        while True:
            t, b = w.read_msg()
            if t == b"D":
                rows += 1
            if t == b"Z":
                break
        self.assertEqual(rows, 500000)
        w.close()


class StaleTopologyTest(RouterCase):
    """The server's own report is checked after authentication: a stale view never
    lets a read-write session land on a read-only server."""

    def test_read_only_primary_is_refused_after_auth(self):
        cluster = PgCluster(1).start()
        router = None
        try:
            # probes so rare the router keeps believing the primary is writable
            router = Router([s.addr for s in cluster.servers], all_policy_listeners(),
                            cluster.dir, probe_interval="1h").start()
            cluster.primary.sql("alter system set default_transaction_read_only = on")
            cluster.primary.sql("select pg_reload_conf()")
            w = Wire(router.port("read-write"))
            w.send(startup_packet())
            seen = []
            while True:
                t, b = w.read_msg()
                seen.append(t)
                if t == b"E":
                    f = error_fields(b)
                    break
            self.assertNotIn(b"Z", seen)  # ReadyForQuery never reached the client
            self.assertEqual(f["C"], "08001")
            self.assertIn("does not satisfy target_session_attrs=read-write", f["M"])
            self.assertIn("default_transaction_read_only=on", f["M"])
            self.assertTrue(w.closed())
            # a read-only session is fine wherever it lands
            self.assertEqual(one(router.dsn("read-only"), "show transaction_read_only"), "on")
            self.assertEqual(router.stop(), 0)
            self.assert_clean_log(router)
        finally:
            if router:
                router.stop()
            cluster.cleanup()


class RoleChangeTest(RouterCase):
    """Roles change under pgrouter: standby stopped, primary read-only, promotion."""

    def setUp(self):
        self.cluster = PgCluster(2).start()
        self.addCleanup(self.cluster.cleanup)
        self.router = Router([s.addr for s in self.cluster.servers], all_policy_listeners(),
                             self.cluster.dir, probe_interval="%dms" % (PROBE * 1000),
                             queue_timeout="20s").start()

    def tearDown(self):
        rc = self.router.stop()
        self.assert_clean_log(self.router)
        self.assertEqual(rc, 0)

    def test_stopped_standby_leaves_rotation(self):
        gone = self.cluster.replicas[1]
        gone.stop()
        t0 = time.monotonic()
        # within ~2 probe intervals no new session goes there (and none fails)
        time.sleep(2 * PROBE + 0.1)
        got = router_set(self.router, "standby", 20)
        self.assertEqual(got, {self.cluster.replicas[0].port})
        self.assertLess(time.monotonic() - t0, 10)
        gone.start()
        wait_for(lambda: router_set(self.router, "standby", 10) ==
                 {r.port for r in self.cluster.replicas}, 10, "standby back in rotation")

    def test_read_only_primary_changes_routing(self):
        p = self.cluster.primary
        p.sql("alter system set default_transaction_read_only = on")
        p.sql("select pg_reload_conf()")
        time.sleep(2 * PROBE + 0.2)
        self.assertIn(p.port, router_set(self.router, "read-only", 30))
        self.assertEqual(router_set(self.router, "primary", 5), {p.port})
        # no read-write server: the session waits, then gets 08001 naming the policy
        start = time.monotonic()
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.router.dsn("read-write", connect_timeout=60))
        self.assertIn("no server satisfies target_session_attrs=read-write", str(e.exception))
        self.assertIn('listener "read-write"', str(e.exception))
        self.assertGreater(time.monotonic() - start, 19)
        p.sql("alter system reset default_transaction_read_only")
        p.sql("select pg_reload_conf()")
        wait_for(lambda: self._rw_port() == p.port, 5, "primary writable again")

    def _rw_port(self):
        try:
            return server_port(self.router.dsn("read-write"))
        except psycopg2.OperationalError:
            return None

    def test_failover_queues_then_connects_to_promoted(self):
        old = self.cluster.primary
        new = self.cluster.replicas[0]
        old.stop()
        time.sleep(2 * PROBE + 0.1)
        result = {}

        def waiter():
            t = time.monotonic()
            try:
                c = connect(self.router.dsn("read-write", connect_timeout=60))
                cur = c.cursor()
                cur.execute("create table after_failover(i int); insert into after_failover"
                            " values (1); select inet_server_port()")
                result["port"] = cur.fetchone()[0]
                c.close()
            except Exception as e:  # reported below
                result["error"] = e
            result["waited"] = time.monotonic() - t

        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(1.5)
        self.assertTrue(th.is_alive(), "session did not wait for a primary: %s" % result)
        new.promote()
        th.join(30)
        self.assertNotIn("error", result)
        self.assertEqual(result["port"], new.port)
        self.assertGreater(result["waited"], 1.4)
        self.assertIn("waiting up to", self.router.log_text())
        # reads: the promoted server is no longer a standby
        self.assertEqual(router_set(self.router, "standby", 10),
                         {self.cluster.replicas[1].port}
                         if self._streams(self.cluster.replicas[1]) else set())

    @staticmethod
    def _streams(r):
        try:
            return r.sql("select pg_is_in_recovery()") == "t"
        except subprocess.CalledProcessError:
            return False


class MoveStaticTest(RouterCase):
    """auth = router on the static source: a session between transactions whose
    server goes away moves (here to a promoted replica) or, with nowhere to go,
    gets 08001 after queue_timeout; one an administrator ended is told so."""

    def setUp(self):
        self.cluster = PgCluster(1).start()
        self.addCleanup(self.cluster.cleanup)
        self.router = Router([s.addr for s in self.cluster.servers],
                             {"rw": {"target_session_attrs": "read-write"}}, self.cluster.dir,
                             probe_interval="250ms", queue_timeout="20s", auth="router",
                             auth_trust_users="postgres", inspect_idle="300ms").start()

    def tearDown(self):
        rc = self.router.stop()
        self.assert_clean_log(self.router)
        self.assertEqual(rc, 0)

    def query(self, w, sql):
        w.send(msg(b"Q", cstr(sql)))
        return w.read_until_ready()

    def test_server_gone_session_moves_to_promoted(self):
        w = Wire(self.router.port("rw"), timeout=30)
        w.login()
        self.query(w, "set work_mem = '4MB'")
        time.sleep(1.5)  # idle: pgrouter reads its state
        self.cluster.primary.stop()
        time.sleep(1)
        self.cluster.replicas[0].promote()
        got = self.query(w, "select current_setting('work_mem') || ' ' || inet_server_port()")
        rows = [b for t, b in got if t == b"D"]
        self.assertEqual(len(rows), 1, got)
        self.assertIn(("4MB %d" % self.cluster.replicas[0].port).encode(), rows[0])
        self.assertRegex(self.router.log_text(), r"moved from \S+ to \S+ after \d+ ms")

    def test_nowhere_to_go_gets_08001(self):
        self.router.stop()
        self.router = Router([self.cluster.primary.addr],
                             {"rw": {"target_session_attrs": "read-write"}}, self.cluster.dir,
                             probe_interval="250ms", queue_timeout="2s", auth="router",
                             auth_trust_users="postgres").start()
        w = Wire(self.router.port("rw"), timeout=30)
        w.login()
        self.cluster.primary.stop()
        time.sleep(0.5)
        t0 = time.monotonic()
        w.send(msg(b"Q", cstr("select 1")))  # held, never sent anywhere
        self.assert_fatal(w, "08001", "no server satisfies")
        self.assertLess(time.monotonic() - t0, 6)

    def test_terminated_by_administrator_is_told(self):
        w = Wire(self.router.port("rw"), timeout=30)
        w.login(application_name="victim")
        self.cluster.primary.sql("select pg_terminate_backend(pid) from pg_stat_activity"
                                 " where application_name = 'victim'")
        f = self.assert_fatal(w, "57P01", "closed the session")
        self.assertIn("administrator command", f["M"])


class ShutdownTest(RouterCase):
    def setUp(self):
        self.cluster = PgCluster(0).start()
        self.addCleanup(self.cluster.cleanup)

    def _router(self, **kw):
        return Router([self.cluster.primary.addr], {"rw": {"target_session_attrs": "read-write"}},
                      self.cluster.dir, probe_interval="250ms", **kw).start()

    def _shutdown(self, sig):
        router = self._router(shutdown_timeout="4s")
        idle = Wire(router.port("rw"))
        idle.login()
        self.cluster.primary.sql("create table if not exists s(i int)")
        busy = Wire(router.port("rw"))
        busy.login()
        busy.send(msg(b"Q", cstr("begin; insert into s values (1)")))  # open transaction
        self.assertEqual(busy.read_until_ready()[-1], (b"Z", b"T"))
        stuck = Wire(router.port("rw"))
        stuck.login()
        stuck.send(msg(b"Q", cstr("begin")))
        self.assertEqual(stuck.read_until_ready()[-1], (b"Z", b"T"))
        os.kill(router.proc.pid, sig)
        # idle session: FATAL 57P01 at once (libpq, like with PostgreSQL's own
        # terminate, shows an idle session only "server closed the connection")
        t0 = time.monotonic()
        self.assert_fatal(idle, "57P01", "shutting down")
        self.assertLess(time.monotonic() - t0, 1)
        # new sessions are refused
        with self.assertRaises(psycopg2.OperationalError):
            connect(router.dsn("rw", connect_timeout=2))
        # the open transaction finishes and commits
        busy.send(msg(b"Q", cstr("insert into s values (2); commit")))
        self.assertEqual(busy.read_until_ready()[-1], (b"Z", b"I"))
        self.assertEqual(self.cluster.primary.sql("select count(*) from s"), "2")
        # at that boundary the session is closed too, with PostgreSQL's code for it
        self.assert_fatal(busy, "57P01", "shutting down")
        # the one that stays in its transaction is closed at shutdown_timeout
        self.assert_fatal(stuck, "57P01", "shutting down")
        self.assertGreater(time.monotonic() - t0, 3.5)
        wait_for(lambda: router.proc.poll() is not None, 10, "pgrouter to exit")
        self.assertLess(time.monotonic() - t0, 7)
        self.assertEqual(router.stop(), 0)
        self.assert_clean_log(router)

    def test_sigterm(self):
        self._shutdown(signal.SIGTERM)

    def test_sigint(self):
        self._shutdown(signal.SIGINT)


class DrainWatchTest(RouterCase):
    def test_discovery_goes_on_and_a_second_signal_ends_the_drain(self):
        """While draining, pgrouter still follows the cluster (a role change in
        those seconds is seen) and a second SIGTERM closes what is left at once."""
        cluster = PgCluster(1).start()
        self.addCleanup(cluster.cleanup)
        replica = cluster.replicas[0]
        router = Router([s.addr for s in cluster.servers],
                        {"rw": {"target_session_attrs": "read-write"}}, cluster.dir,
                        probe_interval="250ms", shutdown_timeout="60s").start()
        stuck = Wire(router.port("rw"))
        stuck.login()
        stuck.send(msg(b"Q", cstr("begin")))
        self.assertEqual(stuck.read_until_ready()[-1], (b"Z", b"T"))
        os.kill(router.proc.pid, signal.SIGTERM)
        router.wait_log("received SIGTERM")
        mark = len(router.log_text())
        replica.stop(mode="immediate")
        router.wait_log("topology: %s not routable" % replica.addr, timeout=10, since=mark)
        self.assertIsNone(router.proc.poll())  # still draining: the transaction is open
        t0 = time.monotonic()
        os.kill(router.proc.pid, signal.SIGTERM)
        self.assert_fatal(stuck, "57P01", "shutting down")
        wait_for(lambda: router.proc.poll() is not None, 10, "pgrouter to exit")
        self.assertLess(time.monotonic() - t0, 3)
        self.assertEqual(router.stop(), 0)
        self.assertIn("received SIGTERM again: closing the remaining sessions now",
                      router.log_text())
        self.assert_clean_log(router)


class BoundaryTest(RouterCase):
    """"Between transactions" must be exact: draining (and shedding, and moving
    sessions) acts there and nowhere else."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(0).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.primary.sql("create table if not exists bnd(i int)")

    def _router(self):
        router = Router([self.cluster.primary.addr], {"rw": {"target_session_attrs": "read-write"}},
                        self.cluster.dir, probe_interval="250ms", shutdown_timeout="6s").start()
        self.addCleanup(router.stop)
        return router

    def _drained_at_once(self, router, w):
        os.kill(router.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        self.assert_fatal(w, "57P01", "shutting down")
        self.assertLess(time.monotonic() - t0, 2)

    def test_idle_after_notification(self):
        """Asynchronous messages after ReadyForQuery (here a NotificationResponse)
        leave the session between transactions."""
        router = self._router()
        w = Wire(router.port("rw"))
        w.login()
        w.send(msg(b"Q", cstr("listen bnd_chan")))
        w.read_until_ready()
        self.cluster.primary.sql("notify bnd_chan, 'hello'")
        t, body = w.read_msg()
        self.assertEqual(t, b"A")
        self.assertIn(b"hello", body)
        self._drained_at_once(router, w)

    def test_unsynced_extended_messages_are_not_a_boundary(self):
        """Parse/Bind/Execute without Sync: the server already runs an implicit
        transaction; the session is not idle until its Sync is answered."""
        router = self._router()
        w = Wire(router.port("rw"))
        w.login()
        w.send(msg(b"P", cstr("") + cstr("insert into bnd values (7)") + struct.pack("!H", 0))
               + msg(b"B", cstr("") + cstr("") + struct.pack("!HHH", 0, 0, 0))
               + msg(b"E", cstr("") + struct.pack("!I", 0)))
        time.sleep(0.3)
        os.kill(router.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        w.send(msg(b"S"))
        types = [t for t, _ in w.read_until_ready()]
        self.assertEqual(types, [b"1", b"2", b"C", b"Z"])
        self.assert_fatal(w, "57P01", "shutting down")
        self.assertEqual(self.cluster.primary.sql("select count(*) from bnd where i = 7"), "1")

    def test_query_pipelined_before_first_ready(self):
        """A query sent with the startup packet is counted like any other."""
        router = self._router()
        w = Wire(router.port("rw"))
        w.send(startup_packet() + msg(b"Q", cstr("select 1")))
        w.read_until_ready()
        msgs = w.read_until_ready()
        self.assertEqual(msgs[-1], (b"Z", b"I"))
        self.assertIn(b"C", [t for t, _ in msgs])
        self._drained_at_once(router, w)


class CheckTest(unittest.TestCase):
    def test_check_and_version(self):
        from cluster import PGROUTER
        r = subprocess.run([PGROUTER, "--version"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^pgrouter \d+\.\d+\.\d+")
        for name in ("pgrouter.ini", "patroni-etcd.ini", "patroni-zookeeper.ini"):
            conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conf",
                                name)
            r = subprocess.run([PGROUTER, "--check", "-c", conf], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
        bad = "/tmp/pgrouter-check-%d.ini" % os.getpid()
        with open(bad, "w") as f:
            f.write("[pgrouter]\nworkers = 2\nqueue_timeout = soon\n")
        try:
            r = subprocess.run([PGROUTER, "--check", "-c", bad], capture_output=True, text=True)
        finally:
            os.unlink(bad)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip().split(": ")[0], bad + ":3")
        self.assertIn("queue_timeout: invalid duration", r.stderr)


if __name__ == "__main__":
    unittest.main()
