"""A real Patroni cluster on loopback: etcd (single node) and N Patroni nodes,
each with its own PostgreSQL 15, free ports, one temp dir, stopped by PID."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from cluster import (PG_BIN, as_postgres, chown_postgres, free_port, pid_alive, stop_pid,
                     track, untrack, wait_for)


def stop_tracked(proc, sig=signal.SIGTERM):
    """Stop a process the harness started (by PID) and forget it."""
    if proc and proc.poll() is None:
        stop_pid(proc.pid, sig)
        proc.wait()
    if proc:
        untrack(proc)


def http_json(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Etcd:
    def __init__(self, workdir, tls=None, name="n1"):
        """tls: (cert, key, ca) files: serve https with cert/key, signed by ca.
        A member of several: see etcd_cluster()."""
        self.dir = os.path.join(workdir, "etcd-%d" % free_port())
        os.makedirs(self.dir, exist_ok=True)
        chown_postgres(self.dir)
        self.port = free_port()
        self.peer = free_port()
        self.tls = tls
        self.name = name
        self.initial_cluster = "%s=%s" % (name, self.peer_url)
        self.endpoints = self.url  # what etcdctl is pointed at (all members of a cluster)
        self.proc = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer

    def start(self, wait=True):
        """wait=False: a member of several, healthy only once a quorum runs."""
        log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = track(subprocess.Popen(
            as_postgres() + ["etcd", "--name", self.name,
                             "--data-dir", os.path.join(self.dir, "data"),
                             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                             "--listen-peer-urls", self.peer_url,
                             "--initial-advertise-peer-urls", self.peer_url,
                             "--initial-cluster", self.initial_cluster,
                             "--initial-cluster-state", "new" if not os.path.exists(
                                 os.path.join(self.dir, "data")) else "existing",
                             "--log-level", "warn"] +
            (["--cert-file", self.tls[0], "--key-file", self.tls[1]] if self.tls else []),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
        if wait:
            wait_for(self.healthy, 20, "etcd healthy")
        return self

    def healthy(self):
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls[2]) if self.tls else None
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5, context=ctx) as r:
                return json.loads(r.read().decode()).get("health") == "true"
        except Exception:
            return False

    def etcdctl(self, *args, user=None):
        cmd = ["etcdctl", "--endpoints", self.endpoints, "--dial-timeout", "1s"]
        if self.tls:
            cmd += ["--cacert", self.tls[2]]
        if user:
            cmd += ["--user", user]
        return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=20,
                              env=dict(os.environ, ETCDCTL_API="3"))

    def stop(self, sig=signal.SIGTERM):
        stop_tracked(self.proc, sig)

    def get_prefix(self, prefix):
        """{key: value} under prefix, through etcdctl (v3)."""
        r = subprocess.run(["etcdctl", "--endpoints", self.endpoints, "get", "--prefix", prefix,
                            "-w", "json"], capture_output=True, text=True, check=True,
                           env=dict(os.environ, ETCDCTL_API="3"))
        import base64
        out = {}
        for kv in json.loads(r.stdout).get("kvs", []):
            out[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv["value"]).decode()
        return out


class EtcdCluster:
    """Several etcd members on loopback, one Raft cluster. Members are Etcd
    objects (stop and start one to restart it; etcdctl through any)."""

    def __init__(self, workdir, members=3):
        self.members = [Etcd(workdir, name="n%d" % (i + 1)) for i in range(members)]
        initial = ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)
        urls = ",".join(m.url for m in self.members)
        for m in self.members:
            m.initial_cluster, m.endpoints = initial, urls

    def __getattr__(self, name):  # etcdctl, get_prefix, url: the first member's
        return getattr(self.members[0], name)

    @property
    def urls(self):
        return [m.url for m in self.members]

    def start(self):
        for m in self.members:
            if not (m.proc and m.proc.poll() is None):
                m.start(wait=False)
        for m in self.members:
            wait_for(m.healthy, 30, "etcd member %s healthy" % m.name)
        return self

    def stop(self, sig=signal.SIGTERM):
        for m in self.members:
            m.stop(sig)


class ZooKeeper:
    """Standalone ZooKeeper on loopback (the server class run directly: zkServer.sh
    wants /var/log and, as root, opens JMX on all interfaces)."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "zk-%d" % free_port())
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        chown_postgres(self.dir)
        chown_postgres(os.path.join(self.dir, "data"))
        self.port = free_port()
        self.conf = os.path.join(self.dir, "zoo.cfg")
        with open(self.conf, "w") as f:
            f.write("tickTime=1000\ndataDir=%s/data\nclientPort=%d\nclientPortAddress=127.0.0.1\n"
                    "admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n"
                    "forceSync=no\nminSessionTimeout=2000\n" % (self.dir, self.port))
        self.proc = None

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        log = open(os.path.join(self.dir, "zk.log"), "ab")
        self.proc = track(subprocess.Popen(
            as_postgres() + ["java", "-Xms32m", "-Xmx128m", "-XX:+UseSerialGC",
                             "-XX:TieredStopAtLevel=1", "-cp",
                             "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar",
                             "org.apache.zookeeper.server.ZooKeeperServerMain", self.conf],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir))
        log.close()
        wait_for(self.healthy, 30, "zookeeper imok")
        return self

    def healthy(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"ruok")
                return s.recv(16) == b"imok"
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM):
        stop_tracked(self.proc, sig)


class PatroniNode:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.dir = os.path.join(cluster.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        chown_postgres(self.dir)
        self.pg_port = free_port()
        self.api_port = free_port()
        self.conf = os.path.join(self.dir, "patroni.yml")
        self.proc = None
        self.dcs_yaml = None  # this member's own DCS section (a relay the test controls)

    @property
    def pg_addr(self):
        return "127.0.0.1:%d" % self.pg_port

    @property
    def api(self):
        return "http://127.0.0.1:%d" % self.api_port

    def write_conf(self):
        c = self.cluster
        dcs = self.dcs_yaml or c.dcs_yaml()
        with open(self.conf, "w") as f:
            f.write("""scope: %(scope)s
namespace: /service/
name: %(name)s
restapi:
  listen: 127.0.0.1:%(api)d
  connect_address: 127.0.0.1:%(api)d
%(dcs)s
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 16777216
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_retrieve_retry_interval: 500ms
        fsync: 'off'
        synchronous_commit: 'off'
        full_page_writes: 'on'
        shared_buffers: 32MB
        max_connections: 200
        wal_log_hints: 'on'
        hot_standby: 'on'
        wal_level: replica
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
  - encoding: UTF8
  - locale: C
postgresql:
  listen: 127.0.0.1:%(pg)d
  connect_address: 127.0.0.1:%(pg)d
  data_dir: %(dir)s/data
  bin_dir: %(bin)s
  pgpass: %(dir)s/pgpass
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: postgres-pass
    rewind:
      username: postgres
      password: postgres-pass
  parameters:
    unix_socket_directories: '%(dir)s'
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 trust
%(hba)s  - host all all 127.0.0.1/32 trust
watchdog:
  mode: off
tags:
%(tags)s
""" % {"scope": c.scope, "name": self.name, "api": self.api_port, "dcs": dcs,
                "pg": self.pg_port, "dir": self.dir, "bin": PG_BIN,
                "hba": "".join("  - %s\n" % h for h in c.hba),
                "tags": "".join("  %s: %s\n" % kv for kv in self.cluster.tags.get(
                    self.name, {}).items()) or "  {}\n"})
        chown_postgres(self.conf)

    def start(self):
        self.write_conf()
        log = open(os.path.join(self.dir, "patroni.log"), "ab")
        self.proc = track(subprocess.Popen(
            as_postgres() + ["env", "HOME=" + self.dir, "patroni", self.conf],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
        return self

    def status(self):
        try:
            return http_json(self.api + "/patroni", 1)
        except Exception:
            return None

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                return int(f.readline())
        except (FileNotFoundError, ValueError):
            return None

    def kill9(self):
        """Crash: kill -9 of Patroni and of its postmaster."""
        pm = self.postmaster_pid()
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            untrack(self.proc)
        if pm and pid_alive(pm):
            os.kill(pm, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pm), 10, "postmaster to die")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGTERM, timeout=30)
            self.proc.wait()
        if self.proc:
            untrack(self.proc)
        pm = self.postmaster_pid()
        if pm and pid_alive(pm):  # a postmaster left behind (Patroni killed) stops on SIGINT
            stop_pid(pm, signal.SIGINT)

    def sql(self, query):
        r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                            "host=127.0.0.1 port=%d user=postgres dbname=postgres "
                            "connect_timeout=3" % self.pg_port, "-c", query],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr)
        return r.stdout.strip()


class PatroniCluster:
    def __init__(self, nodes=3, scope=None, workdir=None, tags=None, dcs="etcd", hba=(),
                 etcd_members=1):
        self.dir = workdir or tempfile.mkdtemp(prefix="pgrouter-patroni-")
        os.chmod(self.dir, 0o755)
        chown_postgres(self.dir)
        self.scope = scope or "demo%d" % os.getpid()
        self.tags = tags or {}
        self.hba = list(hba)  # pg_hba.conf lines before the final "host all all trust"
        self.dcs = dcs
        self.etcd = None
        if dcs == "etcd":
            self.etcd = Etcd(self.dir) if etcd_members == 1 else EtcdCluster(self.dir, etcd_members)
        self.zk = ZooKeeper(self.dir) if dcs == "zookeeper" else None
        self.nodes = [PatroniNode(self, "pg%d" % (i + 1)) for i in range(nodes)]

    @property
    def dcs_server(self):
        return self.etcd or self.zk

    def dcs_yaml(self):
        if self.zk:
            return "zookeeper:\n  hosts:\n  - %s" % self.zk.hostport
        hosts = self.etcd.members if isinstance(self.etcd, EtcdCluster) else [self.etcd]
        return "etcd3:\n  hosts: %s\n  protocol: http" % ",".join(
            "127.0.0.1:%d" % m.port for m in hosts)

    def start(self, timeout=90):
        try:
            self.dcs_server.start()
            self.nodes[0].start()
            wait_for(lambda: self.role_of(self.nodes[0]) == "primary", timeout, "pg1 primary")
            for n in self.nodes[1:]:
                n.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def role_of(self, node):
        s = node.status()
        if not s or s.get("state") != "running":
            return None
        return "primary" if s.get("role") in ("master", "primary") else s.get("role")

    def leader(self):
        for n in self.nodes:
            if self.role_of(n) == "primary":
                return n
        return None

    def replicas(self):
        return [n for n in self.nodes if self.role_of(n) == "replica"]

    def wait_healthy(self, timeout=90, nodes=None):
        nodes = nodes or self.nodes

        def ok():
            leader = self.leader()
            if not leader:
                return False
            others = [n for n in nodes if n is not leader]
            if any(self.role_of(n) != "replica" for n in others):
                return False
            try:
                names = leader.sql("select string_agg(application_name, ',') from "
                                   "pg_stat_replication where state = 'streaming'").split(",")
            except RuntimeError:
                return False
            return all(n.name in names for n in others)
        wait_for(ok, timeout, "patroni cluster healthy", 0.2)
        return self.leader()

    def patronictl(self, *args):
        node = self.nodes[0]
        return subprocess.run(as_postgres() + ["env", "HOME=" + node.dir, "patronictl", "-c",
                                               node.conf] + list(args),
                              capture_output=True, text=True, timeout=120)

    def switchover(self, candidate=None):
        leader = self.leader()
        args = ["switchover", "--force", "--leader", leader.name]
        if candidate:
            args += ["--candidate", candidate.name]
        r = self.patronictl(*args)
        if r.returncode:
            raise RuntimeError("switchover failed: %s %s" % (r.stdout, r.stderr))
        return r

    def request_switchover(self, candidate):
        """Write Patroni's failover key into the DCS, as patronictl does when the
        leader's REST API does not take the request; the leader acts on it in its
        next HA loop (etcd: up to loop_wait; ZooKeeper's watch wakes it)."""
        leader = self.leader()
        value = json.dumps({"leader": leader.name, "member": candidate.name})
        key = "/service/%s/failover" % self.scope
        if self.etcd:
            r = self.etcd.etcdctl("put", key, value)
            if r.returncode:
                raise RuntimeError("etcdctl put: %s" % r.stderr)
            return
        from kazoo.client import KazooClient  # Debian's python3-kazoo (Patroni's own)
        zk = KazooClient(hosts=self.zk.hostport)
        zk.start(timeout=10)
        try:
            if zk.exists(key):
                zk.set(key, value.encode())
            else:
                zk.create(key, value.encode(), makepath=True)
        finally:
            zk.stop()
            zk.close()

    def stop(self):
        for n in self.nodes:
            n.stop()
        self.dcs_server.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    # capture Patroni's keys from a real cluster (used for the parser's unit tests)
    c = PatroniCluster(3).start()
    try:
        time.sleep(2)
        print(json.dumps(c.etcd.get_prefix("/service/%s/" % c.scope), indent=1))
    finally:
        c.cleanup()
