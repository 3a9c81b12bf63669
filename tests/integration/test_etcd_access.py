"""How pgrouter reaches etcd: token auth, https with a CA file, several endpoints.
Each test runs its own etcd holding Patroni-format keys written by the test,
whose member points at a real PostgreSQL server."""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PgCluster, Router, free_port, port_of, wait_for  # noqa: E402
from patroni import Etcd  # noqa: E402
from tlsca import TestCA  # noqa: E402

SCOPE = "access"


class EtcdAccessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster(0).start()
        cls.addClassCleanup(cls.pg.cleanup)

    def put_keys(self, etcd, user=None):
        member = {"conn_url": "postgres://127.0.0.1:%d/postgres" % self.pg.primary.port,
                  "state": "running", "role": "master", "xlog_location": 1, "timeline": 1}
        for k, v in (("leader", "m1"), ("members/m1", json.dumps(member)),
                     ("status", '{"optime":1}')):
            r = etcd.etcdctl("put", "/service/%s/%s" % (SCOPE, k), v, user=user)
            self.assertEqual(r.returncode, 0, r.stderr)

    def router(self, **cluster):
        conf = {"source": "etcd", "scope": SCOPE, "probe_interval": "500ms"}
        conf.update(cluster)
        r = Router(None, {"rw": {"target_session_attrs": "read-write"}}, self.pg.dir,
                   cluster=conf, queue_timeout="3s")
        self.addCleanup(r.stop_clean)
        return r.start()

    def routes(self, r):
        wait_for(lambda: self._try(r), 15, "routing through etcd")

    def _try(self, r):
        try:
            return port_of(r.dsn("rw", connect_timeout=5)) == self.pg.primary.port
        except psycopg2.Error:
            return False

    def test_several_endpoints_first_dead(self):
        etcd = Etcd(self.pg.dir).start()
        self.addCleanup(etcd.stop)
        self.put_keys(etcd)
        dead = "http://127.0.0.1:%d" % free_port()
        r = self.router(etcd_endpoints="%s, %s" % (dead, etcd.url))
        self.routes(r)
        self.assertIn(dead, r.log_text())  # it tried, failed, moved on

    def test_token_auth(self):
        etcd = Etcd(self.pg.dir).start()
        self.addCleanup(etcd.stop)
        for args in (("user", "add", "root:rootpw"), ("user", "add", "pgr:pgrpw"),
                     ("role", "add", "reader"),
                     ("role", "grant-permission", "reader", "read", "/service/%s/" % SCOPE,
                      "--prefix=true"),
                     ("user", "grant-role", "pgr", "reader"), ("auth", "enable")):
            res = etcd.etcdctl(*args)
            self.assertEqual(res.returncode, 0, (args, res.stderr))
        self.put_keys(etcd, user="root:rootpw")
        r = self.router(etcd_endpoints=etcd.url, etcd_user="pgr", etcd_password="pgrpw")
        self.routes(r)
        bad = self.router(etcd_endpoints=etcd.url, etcd_user="pgr", etcd_password="nope")
        wait_for(lambda: "authentication failed" in bad.log_text(), 10, "auth failure logged")
        with self.assertRaises(psycopg2.OperationalError) as e:
            port_of(bad.dsn("rw", connect_timeout=10))
        self.assertIn("no server satisfies", str(e.exception))

    def test_https_with_ca_file(self):
        tca = TestCA(os.path.join(self.pg.dir, "tls"))
        ca = tca.cert
        crt, key = tca.issue("etcd", "127.0.0.1", ["IP:127.0.0.1"])
        etcd = Etcd(self.pg.dir, tls=(crt, key, ca)).start()
        self.addCleanup(etcd.stop)
        self.put_keys(etcd)
        self.assertTrue(etcd.url.startswith("https://"))
        r = self.router(etcd_endpoints=etcd.url, etcd_cacert=ca)
        self.routes(r)
        # without the CA the certificate is not trusted: nothing is routable
        untrusted = self.router(etcd_endpoints=etcd.url)
        wait_for(lambda: "certificate" in untrusted.log_text().lower(), 10,
                 "certificate error logged")
        self.assertFalse(self._try(untrusted))


if __name__ == "__main__":
    unittest.main()
