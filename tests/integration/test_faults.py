"""Quiet failures: a peer whose packets vanish (iptables-legacy DROP rules on
the loopback port of the test's own server or listener, removed after), found
by TCP keepalive and tcp_user_timeout within the configured bound; an open
files limit far below max_client_conn under an accept storm."""
import os
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import time
import unittest

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import netfault  # noqa: E402
from cluster import PgCluster, Router, wait_for  # noqa: E402
from cluster import query_one as one  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

@unittest.skipUnless(netfault.available(), "needs root and iptables-legacy (tests/deps.sh installs it)")
class SilentPeerTest(unittest.TestCase):
    """Each test partitions what it uses, so each has its own server and router."""

    def setUp(self):
        self.cluster = PgCluster(0).start()
        self.addCleanup(self.cluster.cleanup)
        # a silent peer is given up 3 s after its last packet
        self.router = Router([self.cluster.primary.addr], {"rw": {}}, self.cluster.dir,
                             tcp_keepidle="1s", tcp_keepintvl="1s", tcp_keepcnt="2",
                             tcp_user_timeout="3s", queue_timeout="3s",
                             connect_timeout="1s").start()
        self.addCleanup(self.router.stop_clean)
        self.direct = self.cluster.primary.dsn()

    def partition(self, port):
        p = netfault.partition(port)
        self.addCleanup(p.heal)
        return p

    def assert_went_silent(self, w, started, bound=7):
        """The client is told, in a FATAL, which server went silent — at the bound."""
        w.sock.settimeout(15)
        t, body = w.read_msg()
        took = time.monotonic() - started
        f = error_fields(body)
        self.assertEqual((t, f.get("S"), f.get("C")), (b"E", "FATAL", "08006"),
                         str(f) + self.router.log_text()[-1500:])
        self.assertIn("server %s went silent" % self.cluster.primary.addr, f.get("M"))
        self.assertEqual(w.rest(), b"")
        self.assertLess(took, bound)
        self.assertGreater(took, 2)  # not before the bound (3 s)

    def test_server_silent_during_a_long_query(self):
        """The server's packets vanish while it runs a query: no byte is owed,
        keepalive finds it."""
        w = Wire(self.router.port("rw"))
        w.login()
        w.send(msg(b"Q", cstr("select pg_sleep(60)")))
        wait_for(lambda: one(self.direct, "select count(*) from pg_stat_activity "
                                          "where query = 'select pg_sleep(60)'") == 1,
                 10, "the query running")
        started = time.monotonic()
        self.partition(self.cluster.primary.port)
        self.assert_went_silent(w, started)
        w.close()

    def test_server_silent_with_bytes_unacknowledged(self):
        """A query sent into the partition is never acknowledged: tcp_user_timeout."""
        w = Wire(self.router.port("rw"))
        w.login()
        started = time.monotonic()
        self.partition(self.cluster.primary.port)
        w.send(msg(b"Q", cstr("select 2")))
        self.assert_went_silent(w, started)
        w.close()
        # new sessions wait for a server that answers, then get 08001
        c = Wire(self.router.port("rw"))
        c.send(startup_packet())
        t, body = c.read_msg()
        self.assertEqual((t, error_fields(body).get("C")), (b"E", "08001"))
        c.close()

    def test_client_silent_frees_its_server_connection(self):
        """A client whose packets vanish: its session ends at the bound and the
        server connection it held is closed (the backend goes away)."""
        w = Wire(self.router.port("rw"))
        w.login(application_name="vanishing")
        count = "select count(*) from pg_stat_activity where application_name = 'vanishing'"
        self.assertEqual(one(self.direct, count), 1)
        self.partition(self.router.port("rw"))
        started = time.monotonic()
        wait_for(lambda: one(self.direct, count) == 0, 10, "the backend to go")
        self.assertGreater(time.monotonic() - started, 2)
        w.close()


def fatal_of(data):
    """(SQLSTATE, message) of the ErrorResponse data starts with, or None."""
    if not data or data[:1] != b"E":
        return None
    f = error_fields(data[5:])
    return f.get("C"), f.get("M")


class OpenFilesTest(unittest.TestCase):
    """Clients past what the open files limit has room for get 53300 at once
    instead of waiting in the kernel's backlog; sessions already open go on."""

    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        cls.cluster = PgCluster(0).start()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.cleanup()

    def router(self, nofile=None):
        r = Router([self.cluster.primary.addr], {"rw": {}}, self.cluster.dir,
                   startup_timeout="3s", queue_timeout="2s")
        r.nofile = nofile
        r.start()
        self.addCleanup(r.stop_clean)
        return r

    def test_silent_storm_under_a_low_limit(self):
        """An open files limit of 300 and 1,000 connections that send nothing (the
        measurement in issue 12: a client waited 9.2 s in the backlog, 790 log lines)."""
        r = self.router(nofile=300)
        room = int(re.search(r"room for about (\d+) clients", r.log_text()).group(1))
        self.assertTrue(50 < room < 150, room)
        held = psycopg2.connect(r.dsn("rw"))
        cur = held.cursor()
        cur.execute("select 1")
        silent = []
        try:
            for _ in range(1000):
                silent.append(socket.create_connection(("127.0.0.1", r.port("rw"))))
            # a client arriving now is answered at once, not left in the backlog
            # (libpq with sslmode=prefer shows an error that comes before its
            # SSLRequest is answered only as "an error response during SSL exchange")
            for mode in ("prefer", "disable"):
                started = time.monotonic()
                with self.assertRaises(psycopg2.OperationalError) as cm:
                    psycopg2.connect(r.dsn("rw", sslmode=mode))
                self.assertLess(time.monotonic() - started, 2)
            self.assertIn("sorry, too many clients already", str(cm.exception))
            cur.execute("select 2")  # the session already open goes on
            self.assertEqual(cur.fetchone()[0], 2)
            # every silent connection past the room got 53300 and was closed
            refused = 0
            deadline = time.monotonic() + 2
            pending = list(silent)
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select(pending, [], [], 0.2)
                for s in ready:
                    pending.remove(s)
                    s.settimeout(1)
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if fatal_of(data) and fatal_of(data)[0] == "53300":
                        refused += 1
            # (32 past the room at a time get a second to send a startup packet
            # and 53300 after it; these send none and are closed at that second)
            self.assertGreaterEqual(refused, 1000 - room - 32 - 5)
            self.assertLessEqual(refused, 1000 - room + 5)
        finally:
            for s in silent:
                s.close()
        # the room comes back as clients leave (the silent ones within it at startup_timeout)
        wait_for(lambda: self.connects(r), 10, "a new session")
        held.close()
        log = r.log_text()
        # a line per 10 s, not one per refusal
        self.assertLessEqual(log.count("refused at once with 53300"), 2, log[-3000:])

    def connects(self, r):
        try:
            psycopg2.connect(r.dsn("rw", connect_timeout=2)).close()
            return True
        except psycopg2.OperationalError:
            return False

    def test_out_of_descriptors_refused_with_the_spare(self):
        """The limit lowered under a running pgrouter (prlimit) until accept() fails
        with EMFILE: waiting clients are taken with the spare descriptor and refused."""
        r = self.router()
        held = psycopg2.connect(r.dsn("rw"))
        pid = r.proc.pid
        top = max(int(f) for f in os.listdir("/proc/%d/fd" % pid))
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (top + 1, hard))
        waiting = []
        try:
            answer = None
            for _ in range(100):
                w = Wire(r.port("rw"))
                waiting.append(w)
                w.send(startup_packet())
                w.sock.settimeout(1)
                try:
                    answer = fatal_of(w.sock.recv(4096))
                except socket.timeout:
                    continue  # accepted into a free descriptor below the limit
                if answer:
                    break
            self.assertEqual(answer, ("53300", "sorry, too many clients already"))
            # more of them: each answered, one line for all
            for _ in range(20):
                w = Wire(r.port("rw"))
                waiting.append(w)
                w.send(startup_packet())
                self.assertEqual(fatal_of(w.rest(timeout=2))[0], "53300")
        finally:
            for w in waiting:
                w.close()
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_for(lambda: self.connects(r), 10, "a new session")
        held.close()
        log = r.log_text()
        self.assertIn("Too many open files; refused", log)
        self.assertLessEqual(log.count("pausing accepts"), 2, log[-3000:])


class LoginStallTest(unittest.TestCase):
    """A server that stops answering halfway through a login (here: a relay that
    swallows its SASL continuation) no longer holds the session for ever: the
    login must end within startup_timeout."""

    def test_server_stalls_mid_login(self):
        cluster = PgCluster(0, hba=["host all stall 127.0.0.1/32 scram-sha-256"]).start()
        self.addCleanup(cluster.cleanup)
        cluster.primary.sql("create user stall password 'stall-pw'")
        proxy = TcpProxy(cluster.primary.port, stall_user="stall")
        self.addCleanup(proxy.stop)
        r = Router([proxy.addr], {"rw": {}}, cluster.dir, startup_timeout="2s").start()
        self.addCleanup(r.stop_clean)
        started = time.monotonic()
        with self.assertRaises(psycopg2.OperationalError) as cm:
            psycopg2.connect(r.dsn("rw", user="stall", password="stall-pw"))
        took = time.monotonic() - started
        self.assertTrue(proxy.stalled.is_set())
        self.assertIn("the login through server %s did not finish within 2.0s" % proxy.addr,
                      str(cm.exception))
        self.assertTrue(1.5 < took < 6, took)
        # others log in meanwhile and after
        psycopg2.connect(r.dsn("rw")).close()


@unittest.skipUnless(netfault.available(), "needs root and iptables-legacy (tests/deps.sh installs it)")
class SlowLossyLinkTest(unittest.TestCase):
    def test_200ms_rtt_and_2_percent_loss(self):
        """The server link through a relay adding 100 ms each way, with 2 % of its
        packets dropped: pgbench's sessions (persistent and one per transaction)
        slow down, none fails, no update is lost."""
        cluster = PgCluster(0).start()
        self.addCleanup(cluster.cleanup)
        cluster.primary.sql("create table kv(k int primary key, v int not null)")
        proxy = TcpProxy(cluster.primary.port, delay=0.1)
        self.addCleanup(proxy.stop)
        r = Router([proxy.addr], {"rw": {}}, cluster.dir, connect_timeout="5s",
                   queue_timeout="20s", probe_interval="1s").start()
        self.addCleanup(r.stop_clean)
        loss = netfault.loss(proxy.port, 0.02)
        self.addCleanup(loss.heal)
        script = ("\\set k random(1, 50)\n"
                  "insert into kv values (:k, 1) on conflict (k) do update set v = kv.v + 1;\n")
        done = 0
        for extra in ([], ["-C"]):
            res = subprocess.run(["pgbench", "-n", "-c", "4", "-T", "8", "-f", "/dev/stdin",
                                  "-h", "127.0.0.1", "-p", str(r.port("rw")), "-U", "postgres",
                                  "postgres"] + extra, input=script, capture_output=True,
                                 text=True, timeout=120)
            self.assertEqual(res.returncode, 0, res.stdout + res.stderr + r.log_text()[-2000:])
            self.assertIn("number of failed transactions: 0", res.stdout)
            n = int(re.search(r"number of transactions actually processed: (\d+)",
                              res.stdout).group(1))
            self.assertGreater(n, 4, extra)
            done += n
        loss.heal()
        self.assertEqual(int(cluster.primary.sql("select sum(v) from kv")), done)


class RetryTest(unittest.TestCase):
    def test_pipelined_query_survives_a_server_given_up(self):
        """A query sent right behind the StartupMessage still reaches the server
        pgrouter tries after the first one closed the connection mid-login."""
        cluster = PgCluster(0).start()
        self.addCleanup(cluster.cleanup)
        cluster.primary.sql("create role app login")
        proxy = TcpProxy(cluster.primary.port, kill_user="app")
        self.addCleanup(proxy.stop)
        r = Router([proxy.addr, cluster.primary.addr], {"rw": {}}, cluster.dir).start()
        self.addCleanup(r.stop_clean)
        for i in range(4):  # round-robin: some try the failing one first
            w = Wire(r.port("rw"))
            w.send(startup_packet(user="app") + msg(b"Q", cstr("select %d" % i)))
            self.assertEqual(w.read_until_ready()[-1], (b"Z", b"I"))
            rows = [b for t, b in w.read_until_ready() if t == b"D"]
            self.assertEqual(rows, [struct.pack("!HI", 1, len(str(i))) + str(i).encode()])
            w.close()
        self.assertGreaterEqual(proxy.killed, 1)
        self.assertIn("server attempt failed", r.log_text())


class ServerClosesTest(unittest.TestCase):
    def test_request_in_flight_told_idle_session_closed(self):
        """The server's connection ends without an error message (an immediate
        shutdown, a killed backend, a middlebox): a client with a request in
        flight gets FATAL 08006 naming the server and saying the request's
        outcome is unknown; an idle one sees the connection close, as it would
        with PostgreSQL itself."""
        cluster = PgCluster(0).start()
        self.addCleanup(cluster.cleanup)
        proxy = TcpProxy(cluster.primary.port)
        self.addCleanup(proxy.stop)
        r = Router([proxy.addr], {"rw": {}}, cluster.dir).start()
        self.addCleanup(r.stop_clean)
        busy, idle = Wire(r.port("rw")), Wire(r.port("rw"))
        busy.login()
        idle.login()
        busy.send(msg(b"Q", cstr("select pg_sleep(30)")))
        wait_for(lambda: cluster.primary.sql("select count(*) from pg_stat_activity where "
                                             "query = 'select pg_sleep(30)'") == "1",
                 10, "the sleep running")
        proxy.close_all()
        t, body = busy.read_msg()
        f = error_fields(body)
        self.assertEqual((t, f.get("S"), f.get("C")), (b"E", "FATAL", "08006"), f)
        self.assertIn("server %s closed the connection with a request in flight" % proxy.addr,
                      f["M"])
        self.assertTrue(busy.closed())
        idle.sock.settimeout(5)
        self.assertEqual(idle.sock.recv(65536), b"")  # closed, nothing said
        busy.close()
        idle.close()


if __name__ == "__main__":
    unittest.main()
