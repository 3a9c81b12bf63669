"""Partitions around a Patroni cluster on etcd, all on this machine's loopback.
iptables-legacy DROP rules in OUTPUT match the sending process's user (-m owner):
pgrouter runs as root while Patroni, PostgreSQL and etcd run as postgres, so a
rule for uid 0 cuts pgrouter alone off a port and the cluster still sees
itself. Checks on the servers during a cut go through their Unix sockets."""
import os
import shutil
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import Router, free_port, wait_for  # noqa: E402
from patroni import PatroniCluster  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

IPTABLES = shutil.which("iptables-legacy") or "/usr/sbin/iptables-legacy"


def can_cut():
    if os.geteuid() != 0 or not os.path.exists(IPTABLES):
        return False
    probe = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", "1", "-m", "owner",
             "--uid-owner", "0", "-j", "DROP"]
    if subprocess.run([IPTABLES, "-A"] + probe, capture_output=True).returncode:
        return False
    subprocess.run([IPTABLES, "-D"] + probe, capture_output=True)
    return True


class Cut:
    """Packets root's processes (pgrouter) send to a loopback port dropped."""

    def __init__(self, port):
        self.rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-m", "owner",
                     "--uid-owner", "0", "-j", "DROP"]
        subprocess.run([IPTABLES, "-I"] + self.rule, check=True)
        self.on = True

    def heal(self):
        if self.on:
            subprocess.run([IPTABLES, "-D"] + self.rule, check=False)
        self.on = False


def local_sql(node, query):
    """psql over the node's Unix socket: no iptables rule applies."""
    r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", node.dir, "-p",
                        str(node.pg_port), "-U", "postgres", "-d", "postgres", "-c", query],
                       capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(r.stderr)
    return r.stdout.strip()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as f:
            return f.status, f.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@unittest.skipUnless(can_cut(), "needs root and iptables-legacy with the owner match")
class PartitionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pc = PatroniCluster(3).start()
        cls.addClassCleanup(cls.pc.cleanup)
        local_sql(cls.pc.leader(), "create table w(i serial primary key, at timestamptz "
                                    "not null default clock_timestamp())")
        cls.http = free_port()
        cls.router = Router(None, {"rw": {"target_session_attrs": "read-write"}}, cls.pc.dir,
                            cluster={"source": "etcd", "etcd_endpoints": cls.pc.etcd.url,
                                     "scope": cls.pc.scope},
                            probe_interval="500ms", http_listen="127.0.0.1:%d" % cls.http,
                            ready_max_stale="3s", queue_timeout="5s", connect_timeout="2s",
                            tcp_keepidle="1s", tcp_keepintvl="1s", tcp_keepcnt="2",
                            tcp_user_timeout="3s").start()
        cls.addClassCleanup(cls.router.stop_clean)

    def readyz(self):
        return get("http://127.0.0.1:%d/readyz" % self.http)

    def write(self):
        """One write session through the rw port: (server port, in recovery) or the error."""
        try:
            c = psycopg2.connect(self.router.dsn("rw", connect_timeout=15))
            c.autocommit = True
            cur = c.cursor()
            cur.execute("insert into w default values returning inet_server_port(), "
                        "pg_is_in_recovery()")
            row = cur.fetchone()
            c.close()
            return row
        except psycopg2.Error as e:
            return str(e).strip()

    def test_a_cut_from_the_dcs(self):
        """pgrouter cut from etcd, not from the servers: it keeps its last view,
        says it is stale (log, /readyz), and its probes keep writes off a primary
        that stops being one (a switchover it cannot read in etcd)."""
        old = self.pc.leader()
        self.assertEqual(self.write(), (old.pg_port, False))
        mark = len(self.router.log_text())
        cut = Cut(self.pc.etcd.port)
        self.addCleanup(cut.heal)
        t0 = time.monotonic()
        self.router.wait_log("keeping the last cluster state (stale)", timeout=20, since=mark)
        found = time.monotonic() - t0
        wait_for(lambda: self.readyz()[0] == 503, 10, "/readyz to fail")
        self.assertIn("stale", self.readyz()[1])
        # the last view still routes
        self.assertEqual(self.write(), (old.pg_port, False))
        # a switchover pgrouter cannot see in etcd
        self.pc.switchover()
        wait_for(lambda: self.pc.role_of(old) == "replica", 60, "the old primary demoted")
        outcomes = [self.write() for _ in range(3)]
        for o in outcomes:
            if isinstance(o, tuple):  # a write went through: never to a server in recovery
                self.assertFalse(o[1], outcomes)
                self.assertNotEqual(o[0], old.pg_port, outcomes)
        cut.heal()
        wait_for(lambda: self.readyz()[0] == 200, 20, "/readyz to recover")
        new = self.pc.leader()
        wait_for(lambda: self.write() == (new.pg_port, False), 20, "writes on the new leader")
        print("\n  cut from etcd: stale noticed after %.1fs; writes after a hidden "
              "switchover: %s" % (found, outcomes), file=sys.stderr)

    def test_b_cut_from_the_primary(self):
        """pgrouter cut from the primary while Patroni still sees it: the write
        session on it ends within the bound (08006, naming it), new ones wait
        and get 08001, and no write lands anywhere else meanwhile."""
        self.pc.wait_healthy(60)
        leader = self.pc.leader()
        w = Wire(self.router.port("rw"))
        w.login()
        before = local_sql(leader, "select count(*) from w")
        cut = Cut(leader.pg_port)
        self.addCleanup(cut.heal)
        t0 = time.monotonic()
        w.send(msg(b"Q", cstr("insert into w default values")))
        w.sock.settimeout(20)
        t, body = w.read_msg()
        took = time.monotonic() - t0
        f = error_fields(body)
        # whichever comes first: the probes give the server up (connect_timeout)
        # and the session is shed, or TCP does (tcp_user_timeout); both name it
        self.assertEqual(t, b"E")
        self.assertIn(f.get("C"), ("57P01", "08006"), f)
        self.assertIn("server %s" % leader.pg_addr, f.get("M"))
        self.assertLess(took, 8)
        w.close()
        # new write sessions: nowhere to go (the leader key still names it)
        c = Wire(self.router.port("rw"), timeout=20)
        c.send(startup_packet())
        t, body = c.read_msg()
        self.assertEqual((t, error_fields(body).get("C")), (b"E", "08001"))
        c.close()
        for n in self.pc.nodes:
            if n is not leader:
                self.assertEqual(local_sql(n, "select pg_is_in_recovery()"), "t")
        cut.heal()
        wait_for(lambda: self.write() == (leader.pg_port, False), 20, "writes again")
        # the insert sent into the cut never reached the server: one row more,
        # the one written after the heal
        after = int(local_sql(leader, "select count(*) from w"))
        self.assertEqual(after - int(before), 1)
        print("\n  cut from the primary: its session ended after %.1fs (%s)" % (took, f.get("C")),
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
