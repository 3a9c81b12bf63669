"""source = kubernetes: pods and their role labels from a Kubernetes API — the
suite's own small API server (tests/harness/kubeapi.py: list, chunked watch,
410 on an expired resourceVersion over HTTP and in the stream, bearer token
over HTTPS with a test CA; no API server is packaged here) — whose pods point
at real PostgreSQL 15 servers on loopback, with the label sets of KubeBlocks,
CloudNativePG, Zalando's Spilo and Patroni (with its status annotations and
its leader lock in a ConfigMap or Endpoints)."""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

from cluster import PGROUTER, ROOT, PgCluster, Router, connect_in_background  # noqa: E402
from cluster import port_of, wait_for  # noqa: E402
from kubeapi import KubeAPI  # noqa: E402
from tlsca import TestCA  # noqa: E402
from wire import Wire, error_fields  # noqa: E402

# operator: (namespace, selector labels, role label, primary value, replica value)
OPERATORS = {
    "kubeblocks": ("kb", {"app.kubernetes.io/instance": "pg-kb"}, "kubeblocks.io/role",
                   "primary", "secondary"),
    "cloudnativepg": ("cnpg", {"cnpg.io/cluster": "pg1"}, "cnpg.io/instanceRole", "primary",
                      "replica"),
    "spilo": ("spilo", {"application": "spilo", "cluster-name": "pg"}, "spilo-role", "master",
              "replica"),
    "patroni": ("patroni", {"cluster-name": "pgp"}, "role", "primary", "replica"),
}


class KubernetesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = PgCluster(1).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.ca = TestCA(os.path.join(cls.cluster.dir, "k8s-ca"))
        cls.api = KubeAPI(cls.ca, cls.cluster.dir).start()
        cls.addClassCleanup(cls.api.stop)
        cls.token = os.path.join(cls.cluster.dir, "token")
        with open(cls.token, "w") as f:
            f.write("test-token\n")
        p, r = cls.cluster.primary, cls.cluster.replicas[0]
        for op, (ns, sel, label, prim, repl) in OPERATORS.items():
            ann = ({}, {})
            ports = (p.port, r.port)
            if op == "patroni":
                # Patroni's member JSON in the "status" annotation: its conn_url wins
                # over the container port (made wrong here on purpose)
                ann = ({"status": cls.patroni_status(p.port, "running", 50000000)},
                       {"status": cls.patroni_status(r.port, "streaming", 49995904)})
                ports = (1, 1)
            cls.api.add_pod(ns, op + "-0", "127.0.0.1", dict(sel, **{label: prim}),
                            port=ports[0], annotations=ann[0])
            cls.api.add_pod(ns, op + "-1", "127.0.0.1", dict(sel, **{label: repl}),
                            port=ports[1], annotations=ann[1])
        # Patroni's leader lock (its Kubernetes DCS, use_endpoints off)
        cls.api.set_object("configmaps", "patroni", "pgp-leader", {"leader": "patroni-0"})
        # a pod of another cluster in the same namespace: not selected
        cls.api.add_pod("cnpg", "other-0", "127.0.0.1",
                        {"cnpg.io/cluster": "other", "cnpg.io/instanceRole": "primary"},
                        port=r.port)

    @staticmethod
    def patroni_status(port, state, xlog):
        return json.dumps({"conn_url": "postgres://127.0.0.1:%d/postgres" % port,
                           "api_url": "http://127.0.0.1:8008/patroni", "state": state,
                           "role": "replica", "version": "3.0.2", "xlog_location": xlog,
                           "timeline": 1})

    def router(self, op, **kw):
        ns, sel, label, prim, repl = OPERATORS[op]
        return Router(None, {"rw": {"target_session_attrs": "read-write"},
                             "ro": {"target_session_attrs": "standby"}},
                      self.cluster.dir,
                      cluster={"source": "kubernetes", "kubernetes_api": self.api.url,
                               "kubernetes_cacert": self.ca.cert,
                               "kubernetes_token_file": self.token,
                               "kubernetes_namespace": ns,
                               "kubernetes_selector": ",".join("%s=%s" % kv for kv in sel.items()),
                               "kubernetes_role_label": label,
                               "kubernetes_primary_values": prim,
                               "kubernetes_replica_values": repl},
                      probe_interval="250ms", **kw).start()

    def test_a_operators_label_sets(self):
        p, r = self.cluster.primary, self.cluster.replicas[0]
        for op in OPERATORS:
            with self.subTest(operator=op):
                router = self.router(op, queue_timeout="5s")
                try:
                    wait_for(lambda: port_of(router.dsn("rw")) == p.port, 10, "writes")
                    self.assertEqual({port_of(router.dsn("ro")) for _ in range(4)}, {r.port})
                    self.assertIn("primary pod now %s-0" % op, router.log_text())
                    if op == "patroni":  # lag from the annotations' xlog_location
                        self.assertIn("127.0.0.1:%d standby lag=4096" % r.port,
                                      router.log_text())
                finally:
                    router.stop_clean()
        ok = [a for _, a in self.api.requests]
        self.assertTrue(ok and all(a == "Bearer test-token" for a in ok))

    def test_b_watch_410_and_token_rotation(self):
        r = self.cluster.replicas[0]
        router = self.router("cloudnativepg", queue_timeout="5s")
        try:
            wait_for(lambda: port_of(router.dsn("ro")) == r.port, 10, "reads")
            # not Ready: out of the view (the watch carries it)
            self.api.set_ready("cnpg", "cloudnativepg-1", False)
            wait_for(lambda: "cloudnativepg-1: pod not Ready" in router.log_text(), 10,
                     "not ready seen")
            self.api.set_ready("cnpg", "cloudnativepg-1", True)
            # the token rotates; history expires under the open watch, which just
            # ends: the next watch gets HTTP 410, then a new list (new token)
            with open(self.token, "w") as f:
                f.write("rotated-token\n")
            self.api.token = "rotated-token"
            self.api.gone_in_stream = False
            mark = len(router.log_text())
            self.api.compact()
            wait_for(lambda: "(HTTP 410); listing again" in router.log_text()[mark:], 10,
                     "HTTP 410 handled")
            # ... and in the stream: an ERROR event with code 410
            self.api.gone_in_stream = True
            mark = len(router.log_text())
            self.api.compact()
            wait_for(lambda: "is gone (410); listing again" in router.log_text()[mark:], 10,
                     "in-stream 410 handled")
            self.assertEqual(self.api.requests[-1][1], "Bearer rotated-token")
            # still following changes after both
            self.api.set_ready("cnpg", "cloudnativepg-1", False)
            wait_for(lambda: "cloudnativepg-1: pod not Ready" in router.log_text()[mark:], 10,
                     "a change after the relists")
            self.api.set_ready("cnpg", "cloudnativepg-1", True)
            wait_for(lambda: port_of(router.dsn("ro")) == r.port, 10, "reads again")
        finally:
            self.api.token = "test-token"
            with open(self.token, "w") as f:
                f.write("test-token\n")
            router.stop_clean()

    def test_d_patroni_state(self):
        """Patroni's own state in its annotation: a member not running is not routable."""
        r = self.cluster.replicas[0]
        router = self.router("patroni", queue_timeout="2s")
        try:
            wait_for(lambda: port_of(router.dsn("ro")) == r.port, 10, "reads")
            self.api.set_annotation("patroni", "patroni-1", "status",
                                    self.patroni_status(r.port, "starting", 49995904))
            wait_for(lambda: "patroni-1: Patroni says starting" in router.log_text(), 10,
                     "starting member out")
            self.api.set_annotation("patroni", "patroni-1", "status",
                                    self.patroni_status(r.port, "streaming", 49995904))
            wait_for(lambda: port_of(router.dsn("ro")) == r.port, 10, "reads again")
        finally:
            router.stop_clean()

    def test_e_patroni_leader_lock(self):
        """A pod labelled primary is writable only while it holds Patroni's
        leader lock (ConfigMap <scope>-leader; scope from the cluster-name label)."""
        p = self.cluster.primary
        router = self.router("patroni", queue_timeout="30s")
        try:
            wait_for(lambda: port_of(router.dsn("rw")) == p.port, 10, "writes")
            self.assertIn("Patroni scope pgp: its leader lock in ConfigMap pgp-leader",
                          router.log_text())
            w = Wire(router.port("rw"))
            self.assertEqual(w.login()[-1][0], b"Z")
            # another member took the lock; the label has not changed (yet)
            self.api.set_object("configmaps", "patroni", "pgp-leader", {"leader": "patroni-1"})
            t, body = w.read_msg()
            f = error_fields(body)
            self.assertEqual((t, f["C"]), (b"E", "57P01"), f)
            w.close()
            self.assertIn("patroni-0: labelled primary without Patroni's leader lock "
                          "(held by patroni-1)", router.log_text())
            th, got = connect_in_background(router.dsn("rw"))
            time.sleep(1.5)
            self.assertEqual(got, {})  # waits: no pod is both labelled and locked
            self.api.set_object("configmaps", "patroni", "pgp-leader", {"leader": "patroni-0"})
            th.join(30)
            self.assertEqual(got.get("port"), p.port, got)
            # the lock object gone: nobody holds it, no writes
            self.api.set_object("configmaps", "patroni", "pgp-leader", None)
            wait_for(lambda: "leader lock released" in router.log_text(), 10, "lock released")
            th, got = connect_in_background(router.dsn("rw"))
            time.sleep(1.5)
            self.assertEqual(got, {})
            self.api.set_object("configmaps", "patroni", "pgp-leader", {"leader": "patroni-0"})
            th.join(30)
            self.assertEqual(got.get("port"), p.port, got)
        finally:
            self.api.set_object("configmaps", "patroni", "pgp-leader", {"leader": "patroni-0"})
            router.stop_clean()

    def test_f_patroni_leader_in_endpoints(self):
        """use_endpoints: the lock in the Endpoints <scope>, the scope configured."""
        p = self.cluster.primary
        self.api.set_object("endpoints", "patroni", "pgp", {"leader": "patroni-1"})
        ns, sel, label, prim, repl = OPERATORS["patroni"]
        mark = len(self.api.requests)
        router = Router(None, {"rw": {"target_session_attrs": "read-write"}}, self.cluster.dir,
                        cluster={"source": "kubernetes", "kubernetes_api": self.api.url,
                                 "kubernetes_cacert": self.ca.cert,
                                 "kubernetes_token_file": self.token,
                                 "kubernetes_namespace": ns, "kubernetes_selector": "cluster-name=pgp",
                                 "kubernetes_patroni_scope": "pgp",
                                 "kubernetes_patroni_leader": "endpoints"},
                        probe_interval="250ms", queue_timeout="30s").start()
        try:
            wait_for(lambda: "leader lock held by patroni-1" in router.log_text(), 10, "lock read")
            th, got = connect_in_background(router.dsn("rw"))
            time.sleep(1.5)
            self.assertEqual(got, {})
            self.api.set_object("endpoints", "patroni", "pgp", {"leader": "patroni-0"})
            th.join(30)
            self.assertEqual(got.get("port"), p.port, got)
            self.assertIn("its leader lock in Endpoints pgp", router.log_text())
            mine = [q for q, _ in self.api.requests[mark:]]
            self.assertIn("/api/v1/namespaces/patroni/endpoints?fieldSelector=metadata.name%3Dpgp",
                          mine)
            self.assertFalse([q for q in mine if "/configmaps" in q], mine)
        finally:
            router.stop_clean()
            self.api.set_object("endpoints", "patroni", "pgp", None)

    def test_c_example_config_and_in_cluster_defaults(self):
        """conf/kubernetes.ini: valid inside a pod (the API from the environment),
        and outside one it says what is missing."""
        conf = os.path.join(ROOT, "conf", "kubernetes.ini")
        env = dict(os.environ, KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
        r = subprocess.run([PGROUTER, "--check", "-c", conf], capture_output=True, text=True,
                           env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        env.pop("KUBERNETES_SERVICE_HOST")
        r = subprocess.run([PGROUTER, "--check", "-c", conf], capture_output=True, text=True,
                           env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("kubernetes_api: source = kubernetes needs the API's URL", r.stderr)

    def test_z_role_change(self):
        """The operator's failover: the old primary's label says replica (its
        write session is shed, new writes wait), the chosen replica is promoted
        and labelled primary (the waiting session lands there)."""
        p, r = self.cluster.primary, self.cluster.replicas[0]
        router = self.router("spilo", queue_timeout="30s")
        try:
            wait_for(lambda: port_of(router.dsn("rw")) == p.port, 10, "writes")
            w = Wire(router.port("rw"))
            self.assertEqual(w.login()[-1][0], b"Z")
            self.api.set_label("spilo", "spilo-0", "spilo-role", "replica")
            t, body = w.read_msg()
            f = error_fields(body)
            self.assertEqual((t, f["C"]), (b"E", "57P01"), f)
            w.close()
            th, got = connect_in_background(router.dsn("rw"))
            time.sleep(1.5)
            self.assertEqual(got, {})
            r.promote()
            self.api.set_label("spilo", "spilo-1", "spilo-role", "master")
            th.join(30)
            self.assertEqual(got.get("port"), r.port, got)
            self.assertIn("primary pod now spilo-1", router.log_text())
        finally:
            router.stop_clean()


if __name__ == "__main__":
    unittest.main()
