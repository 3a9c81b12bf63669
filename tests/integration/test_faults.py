"""Quiet failures: a peer whose packets vanish (iptables-legacy DROP rules on
the loopback port of the test's own server or listener, removed after), found
by TCP keepalive and tcp_user_timeout within the configured bound."""
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

from cluster import PgCluster, Router, wait_for  # noqa: E402
from cluster import query_one as one  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

IPTABLES = shutil.which("iptables-legacy") or "/usr/sbin/iptables-legacy"


class Partition:
    """Packets to and from a loopback port dropped, both ways, until heal()."""

    def __init__(self, port):
        self.rules = [["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
                      ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"]]
        self.on = False

    def cut(self):
        for r in self.rules:
            subprocess.run([IPTABLES, "-I"] + r, check=True)
        self.on = True
        return self

    def heal(self):
        if self.on:
            for r in self.rules:
                subprocess.run([IPTABLES, "-D"] + r, check=False)
        self.on = False


def can_partition():
    if os.geteuid() != 0 or not os.path.exists(IPTABLES):
        return False
    return subprocess.run([IPTABLES, "-L", "INPUT", "-n"], capture_output=True).returncode == 0


@unittest.skipUnless(can_partition(), "needs root and iptables-legacy (tests/deps.sh installs it)")
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
        p = Partition(port).cut()
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


if __name__ == "__main__":
    unittest.main()
