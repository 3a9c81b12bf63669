"""source = stolon: Stolon's clusterdata in a real etcd, routing real PostgreSQL
15 servers. No Stolon binaries are packaged here, so the test writes the
clusterdata key the way Stolon's sentinel does (format version 1, its JSON
field names) and drives the sentinel's failover sequence itself: masterDbUid
emptied and the generation bumped, pg_ctl promote on the chosen standby,
masterDbUid set to it and the generation bumped again."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PgCluster, Router, connect_in_background, port_of, wait_for  # noqa: E402
from patroni import Etcd  # noqa: E402
from wire import Wire, error_fields  # noqa: E402

CLUSTER = "pgr-test"
KEY = "stolon/cluster/%s/clusterdata" % CLUSTER


def clusterdata(master, dbs, generation, enabled=()):
    """dbs: uid -> (server, role, follows, healthy, xlogpos)."""
    out = {"formatVersion": 1, "changeTime": "2026-11-23T20:00:00Z",
           "cluster": {"uid": "c0ffee", "generation": 1, "spec": {"initMode": "new"},
                       "status": {"currentGeneration": 1, "phase": "normal", "master": master}},
           "keepers": {}, "dbs": {},
           "proxy": {"uid": "p%d" % generation, "generation": generation,
                     "spec": {"masterDbUid": master, "enabledProxies": list(enabled)},
                     "status": {}}}
    for uid, (server, role, follows, healthy, xlog) in dbs.items():
        spec = {"keeperUID": "keeper-" + uid, "role": role, "followers": []}
        if follows:
            spec["followConfig"] = {"type": "internal", "dbuid": follows}
        status = {"listenAddress": "127.0.0.1", "port": str(server.port), "timelineID": 1,
                  "xLogPos": xlog, "currentGeneration": 1}
        if healthy:  # Stolon leaves it out when false (omitempty)
            status["healthy"] = True
        out["dbs"][uid] = {"uid": uid, "generation": 1, "spec": spec, "status": status}
        out["keepers"]["keeper-" + uid] = {"uid": "keeper-" + uid, "status": {"healthy": healthy}}
    if not master:
        del out["proxy"]["spec"]["masterDbUid"]  # omitempty, as the sentinel writes it
    return json.dumps(out)


class StolonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(2).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.etcd = Etcd(cls.cluster.dir).start()
        cls.addClassCleanup(cls.etcd.stop)
        p, r1, r2 = cls.cluster.primary, cls.cluster.replicas[0], cls.cluster.replicas[1]
        cls.generation = 1
        cls.dbs = {"db0": (p, "master", None, True, 50000000),
                   "db1": (r1, "standby", "db0", True, 50000000),
                   "db2": (r2, "standby", "db0", True, 49000000)}
        cls.write("db0")
        cls.router = Router(None, {"rw": {"target_session_attrs": "read-write"},
                                   "ro": {"target_session_attrs": "standby"}},
                            cls.cluster.dir,
                            cluster={"source": "stolon", "etcd_endpoints": cls.etcd.url,
                                     "stolon_cluster": CLUSTER},
                            probe_interval="250ms", queue_timeout="30s").start()

    @classmethod
    def tearDownClass(cls):
        cls.router.stop_clean()

    @classmethod
    def write(cls, master, enabled=()):
        r = cls.etcd.etcdctl("put", KEY, clusterdata(master, cls.dbs, cls.generation, enabled))
        assert r.returncode == 0, r.stderr

    def test_a_routing(self):
        p, r1, r2 = self.cluster.primary, self.cluster.replicas[0], self.cluster.replicas[1]
        wait_for(lambda: port_of(self.router.dsn("rw")) == p.port, 20, "writes to db0")
        ports = {port_of(self.router.dsn("ro")) for _ in range(6)}
        self.assertEqual(ports, {r1.port, r2.port})
        self.assertIn("master db now db0", self.router.log_text())
        # db2 reported unhealthy: reads only on db1
        self.dbs["db2"] = (r2, "standby", "db0", False, 49000000)
        self.write("db0")
        wait_for(lambda: "127.0.0.1:%d not routable (db db2 is not healthy)" % r2.port
                 in self.router.log_text(), 10, "db2 out")
        self.assertEqual({port_of(self.router.dsn("ro")) for _ in range(6)}, {r1.port})
        self.dbs["db2"] = (r2, "standby", "db0", True, 49000000)
        self.write("db0")
        wait_for(lambda: len({port_of(self.router.dsn("ro")) for _ in range(6)}) == 2, 10,
                 "db2 back")

    def test_b_registered_as_proxy(self):
        """stolon_register = on: pgrouter keeps proxies/info/<uid> (a lease of
        2 x proxyTimeout) with the generation it applied, and, like stolon-proxy,
        routes writes only once the sentinel lists it in enabledProxies."""
        r2 = Router(None, {"rw": {"target_session_attrs": "read-write"}}, self.cluster.dir,
                    cluster={"source": "stolon", "etcd_endpoints": self.etcd.url,
                             "stolon_cluster": CLUSTER, "stolon_register": "on"},
                    probe_interval="250ms", queue_timeout="1s").start()
        try:
            prefix = "stolon/cluster/%s/proxies/info/" % CLUSTER

            def info():
                kv = self.etcd.get_prefix(prefix)
                return json.loads(list(kv.values())[0]) if len(kv) == 1 else None
            wait_for(lambda: info() is not None, 15, "the proxy info key")
            pi = info()
            self.assertEqual(pi["Generation"], StolonTest.generation)
            self.assertEqual(pi["ProxyTimeout"], 15 * 10**9)
            uid = pi["UID"]
            self.assertEqual(list(self.etcd.get_prefix(prefix)), [prefix + uid])
            lease = json.loads(self.etcd.etcdctl("get", prefix + uid, "-w", "json").stdout)
            self.assertNotEqual(lease["kvs"][0].get("lease", 0), 0)
            # not in enabledProxies: no master for it (the sentinel would not wait for it)
            with self.assertRaises(psycopg2.OperationalError):
                psycopg2.connect(r2.dsn("rw"))
            self.assertIn("not in proxy.spec.enabledProxies", r2.log_text())
            # the sentinel enables it and bumps the generation: writes go, the info follows
            StolonTest.generation += 1
            self.write("db0", enabled=[uid])
            wait_for(lambda: info()["Generation"] == StolonTest.generation, 10,
                     "the applied generation reported")
            wait_for(lambda: port_of(r2.dsn("rw")) == self.cluster.primary.port, 10,
                     "writes through the registered pgrouter")
        finally:
            r2.stop_clean()
        # its info goes with its lease, or is left to expire (2 x proxyTimeout)

    def test_z_sentinel_failover(self):
        p, r1, r2 = self.cluster.primary, self.cluster.replicas[0], self.cluster.replicas[1]
        wait_for(lambda: port_of(self.router.dsn("rw")) == p.port, 20, "writes to db0")
        writer = Wire(self.router.port("rw"))
        self.assertEqual(writer.login()[-1][0], b"Z")
        # 1. the sentinel empties masterDbUid: no primary; the write session is shed
        StolonTest.generation += 1
        self.write("")
        t, body = writer.read_msg()
        f = error_fields(body)
        self.assertEqual((t, f["C"]), (b"E", "57P01"), f)
        writer.close()
        wait_for(lambda: "no master: proxy.spec.masterDbUid is empty" in self.router.log_text(),
                 10, "no master logged")
        # ... and a new write session waits for the new master instead of failing
        th, got = connect_in_background(self.router.dsn("rw"))
        time.sleep(1.5)
        self.assertEqual(got, {})
        # reads go on on the healthy standbys meanwhile
        self.assertIn(port_of(self.router.dsn("ro")), (r1.port, r2.port))
        # 2. the chosen standby is promoted; 3. masterDbUid names it
        r1.promote()
        StolonTest.generation += 1
        self.dbs["db0"] = (p, "standby", "db1", False, 50000000)
        self.dbs["db1"] = (r1, "master", None, True, 50000000)
        self.write("db1")
        th.join(30)
        self.assertEqual(got.get("port"), r1.port, got)
        self.assertGreater(got["waited"], 1.4)
        self.assertIn("master db now db1", self.router.log_text())
        # db2 still follows db0: not a standby of the new master
        wait_for(lambda: "db db2 follows db0, not the master db1" in self.router.log_text(), 10,
                 "db2 not routable")
        with self.assertRaises(psycopg2.OperationalError):
            psycopg2.connect(self.router.dsn("ro", connect_timeout=3))


if __name__ == "__main__":
    unittest.main()
