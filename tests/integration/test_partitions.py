"""Partitions around a Patroni cluster on etcd, all on this machine's loopback.
iptables-legacy DROP rules in OUTPUT match the sending process's user (-m owner):
pgrouter runs as root while Patroni, PostgreSQL and etcd run as postgres, so a
rule for uid 0 cuts pgrouter alone off a port and the cluster still sees
itself. Checks on the servers during a cut go through their Unix sockets."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

import netfault  # noqa: E402
from cluster import Router, free_port, log_time, port_of, wait_for  # noqa: E402
from patroni import PatroniCluster  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

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


@unittest.skipUnless(netfault.available(owner=True),
                     "needs root and iptables-legacy with the owner match")
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
        cut = netfault.cut(self.pc.etcd.port)
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
        cut = netfault.cut(leader.pg_port)
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


@unittest.skipUnless(netfault.available(owner=True),
                     "needs root and iptables-legacy with the owner match")
class IsolatedPrimaryTest(unittest.TestCase):
    def test_old_primary_cut_from_patroni_and_the_dcs(self):
        """The primary's Patroni loses etcd (its relay turns into a black hole) and
        the other members lose its REST API, while pgrouter still reaches it: the
        others elect a new leader, and pgrouter, following etcd, sends no write
        to the old primary once it has seen the new leader key (counted on the
        old primary itself, by commit time)."""
        pc = PatroniCluster(3)
        self.addCleanup(pc.cleanup)
        proxy = TcpProxy(pc.etcd.port)
        self.addCleanup(proxy.stop)
        old = pc.nodes[0]  # started first: the first leader
        old.dcs_yaml = "etcd3:\n  hosts: 127.0.0.1:%d\n  protocol: http\n  use_proxies: true" % proxy.port
        pc.start()
        self.assertIs(pc.leader(), old)
        local_sql(old, "create table w(i serial primary key, at timestamptz not null "
                       "default clock_timestamp(), port int not null default inet_server_port())")
        r = Router(None, {"rw": {"target_session_attrs": "read-write"}}, pc.dir,
                   cluster={"source": "etcd", "etcd_endpoints": pc.etcd.url, "scope": pc.scope},
                   probe_interval="500ms", queue_timeout="30s").start()
        self.addCleanup(r.stop_clean)
        stop = threading.Event()
        acked = []

        def writer():
            while not stop.is_set():
                try:
                    c = psycopg2.connect(r.dsn("rw", connect_timeout=40))
                    c.autocommit = True
                    cur = c.cursor()
                    cur.execute("insert into w default values returning inet_server_port()")
                    acked.append((time.time(), cur.fetchone()[0]))
                    c.close()
                except psycopg2.Error:
                    time.sleep(0.1)
                time.sleep(0.02)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        self.addCleanup(stop.set)
        wait_for(lambda: len(acked) > 20, 20, "writes flowing")
        mark = len(r.log_text())
        t_cut = time.time()
        proxy.blackhole()
        api = netfault.cut(old.api_port, user="postgres")
        self.addCleanup(api.heal)
        self.addCleanup(proxy.blackhole, False)
        seen = re.compile(r".*etcd: leader key now names (pg2|pg3).*")
        wait_for(lambda: seen.search(r.log_text()[mark:]), 90, "a new leader key")
        t_seen = log_time(r.log_text()[mark:], seen.search(r.log_text()[mark:]).group(0))
        new = [n for n in pc.nodes if n.name == seen.search(r.log_text()[mark:]).group(1)][0]
        wait_for(lambda: any(p == new.pg_port and at > t_seen for at, p in acked), 60,
                 "writes on the new leader")
        stop.set()
        t.join(60)
        # on the old primary itself: nothing committed after pgrouter saw the new
        # leader (half a second for a transaction routed just before, in flight)
        late = int(local_sql(old, "select count(*) from w where port = %d and at > "
                                  "to_timestamp(%f)" % (old.pg_port, t_seen + 0.5)))
        last_old = local_sql(old, "select extract(epoch from max(at)) from w where port = %d"
                                  % old.pg_port)
        self.assertEqual(late, 0)
        self.assertFalse([a for a in acked if a[1] == old.pg_port and a[0] > t_seen + 0.5])
        print("\n  isolated primary: pgrouter saw the new leader %s %.1fs after the cut; "
              "the last commit on the old primary was %.1fs before that; %d writes "
              "acknowledged" % (new.name, t_seen - t_cut, t_seen - float(last_old), len(acked)),
              file=sys.stderr)


@unittest.skipUnless(netfault.available(owner=True),
                     "needs root and iptables-legacy with the owner match")
class EtcdMembersTest(unittest.TestCase):
    """Patroni on a three-member etcd cluster; pgrouter is given all three
    endpoints and watches the first."""

    @classmethod
    def setUpClass(cls):
        cls.pc = PatroniCluster(2, etcd_members=3).start()
        cls.addClassCleanup(cls.pc.cleanup)
        cls.members = cls.pc.etcd.members
        cls.http = free_port()
        cls.router = Router(None, {"rw": {"target_session_attrs": "read-write"}}, cls.pc.dir,
                            cluster={"source": "etcd", "scope": cls.pc.scope,
                                     "etcd_endpoints": ",".join(cls.pc.etcd.urls)},
                            probe_interval="500ms", http_listen="127.0.0.1:%d" % cls.http,
                            ready_max_stale="2s", queue_timeout="20s").start()
        cls.addClassCleanup(cls.router.stop_clean)

    def readyz(self):
        return get("http://127.0.0.1:%d/readyz" % self.http)[0]

    def watched(self):
        """The member pgrouter last started to read from."""
        urls = re.findall(r"etcd: (?:watching \S+ on|read \d+ key\(s\) under \S+ from) (\S+)",
                          self.router.log_text())
        return [m for m in self.members if m.url == urls[-1]][0]

    def test_a_watched_member_vanishes(self):
        """pgrouter's packets to the member it watches vanish (no RST, no FIN:
        a host gone dark): the idle watch is given up by TCP keepalive and read
        again from another member, and a switchover after that is seen in
        etcd, not only by the probes."""
        wait_for(lambda: self.readyz() == 200, 30, "pgrouter ready")
        first = self.watched()
        self.assertIs(first, self.members[0])
        mark = len(self.router.log_text())
        t_cut = time.time()
        cut = netfault.cut(first.port)
        self.addCleanup(cut.heal)
        again = re.compile(r"etcd: read \d+ key\(s\) under \S+ from (\S+)")
        wait_for(lambda: again.search(self.router.log_text()[mark:]), 30,
                 "the watch read again from another member")
        line = again.search(self.router.log_text()[mark:])
        self.assertNotEqual(line.group(1), first.url)
        took = log_time(self.router.log_text()[mark:], line.group(0)) - t_cut
        self.assertLess(took, 15)
        old = self.pc.leader()
        candidate = self.pc.replicas()[0]
        mark = len(self.router.log_text())
        self.pc.switchover(candidate)
        wait_for(lambda: "etcd: leader key now names %s" % candidate.name
                 in self.router.log_text()[mark:], 30, "the new leader key read through etcd")
        wait_for(lambda: self.write_port() == candidate.pg_port, 30, "writes on the new leader")
        self.assertNotEqual(old, candidate)
        cut.heal()
        print("\n  etcd member cut: pgrouter read again from another member %.1fs after the "
              "cut and followed a switchover there" % took, file=sys.stderr)

    def test_b_watched_member_hangs(self):
        """The member pgrouter watches stops (SIGSTOP: a process hung on its
        disk, say): its kernel still answers keepalives, so only a request
        shows it: the heartbeat beside the watch gets no answer and pgrouter
        reads from another member."""
        wait_for(lambda: self.readyz() == 200, 30, "pgrouter ready")
        hung = self.watched()
        mark = len(self.router.log_text())
        t_stop = time.time()
        os.kill(hung.proc.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, hung.proc.pid, signal.SIGCONT)
        again = re.compile(r"etcd: read \d+ key\(s\) under \S+ from (\S+)")
        wait_for(lambda: again.search(self.router.log_text()[mark:]), 30,
                 "the watch read again from another member")
        line = again.search(self.router.log_text()[mark:])
        self.assertNotEqual(line.group(1), hung.url)
        self.assertIn("no answer to a heartbeat", self.router.log_text()[mark:])
        took = log_time(self.router.log_text()[mark:], line.group(0)) - t_stop
        os.kill(hung.proc.pid, signal.SIGCONT)
        wait_for(hung.healthy, 30, "the member back")
        self.pc.wait_healthy(120)
        print("\n  etcd member hung: pgrouter read again from another member %.1fs after "
              "it stopped" % took, file=sys.stderr)

    def test_c_member_without_quorum(self):
        """The other two members stop: the member pgrouter watches is alive and
        its TCP connection well, but it has no leader. Its answers could be
        arbitrarily old, so pgrouter asks for a leader (etcd's
        WithRequireLeader): the watch ends ("no leader") and the view is
        marked stale; before, the watch stayed open and silent and pgrouter
        called a frozen view current."""
        wait_for(lambda: self.readyz() == 200, 30, "pgrouter ready")
        watched = self.watched()
        others = [m for m in self.members if m is not watched]
        mark = len(self.router.log_text())
        t_stop = time.time()
        for m in others:
            m.stop()
        self.addCleanup(self.heal_quorum)
        wait_for(lambda: "no leader" in self.router.log_text()[mark:], 30,
                 "the watch ended: no leader")
        took = log_time(self.router.log_text()[mark:], "no leader") - t_stop
        wait_for(lambda: self.readyz() == 503, 15, "/readyz to say stale")
        self.heal_quorum()
        wait_for(lambda: self.readyz() == 200, 60, "/readyz ready again")
        print("\n  etcd quorum lost: the watch on the surviving member ended %.1fs after "
              "the others stopped" % took, file=sys.stderr)

    def heal_quorum(self):
        self.pc.etcd.start()
        self.pc.wait_healthy(120)

    def write_port(self):
        try:
            return port_of(self.router.dsn("rw", connect_timeout=5))
        except psycopg2.Error:
            return None


if __name__ == "__main__":
    unittest.main()
