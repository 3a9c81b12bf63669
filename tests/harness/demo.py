"""Local demo: a 3-node Patroni cluster (PostgreSQL 15) with etcd on loopback,
pgrouter in front following it through etcd: a read-write port and a read-only
port. Ctrl-C stops everything."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Router, free_port  # noqa: E402
from patroni import PatroniCluster  # noqa: E402


def main():
    print("starting etcd and 3 Patroni nodes (PostgreSQL 15) on 127.0.0.1 ...", flush=True)
    pc = PatroniCluster(3, scope="demo").start()
    router = None
    console_port, http_port = free_port(), free_port()
    try:
        router = Router(None, {"rw": {"target_session_attrs": "read-write"},
                               "ro": {"target_session_attrs": "prefer-standby",
                                      "load_balance": "least-connections"}},
                        pc.dir, cluster={"source": "etcd", "etcd_endpoints": pc.etcd.url,
                                         "scope": pc.scope},
                        probe_interval="1s", queue_timeout="30s",
                        admin_listen="%s:%d" % (pc.dir, console_port),
                        http_listen="127.0.0.1:%d" % http_port).start()
        leader = pc.leader()
        print()
        print("etcd:     %s   (Patroni keys under /service/%s/)" % (pc.etcd.url, pc.scope))
        for n in pc.nodes:
            print("%s:      postgres %s, REST %s  %s" % (n.name, n.pg_addr, n.api,
                                                        "(leader)" if n is leader else ""))
        print("config:   %s" % router.conf_path)
        print("log:      %s" % router.log_path)
        print()
        print("read-write DSN:  postgresql://postgres@127.0.0.1:%d/postgres" % router.port("rw"))
        print("read-only DSN:   postgresql://postgres@127.0.0.1:%d/postgres" % router.port("ro"))
        print()
        print("admin console:   psql -h %s -p %d -d pgrouter -c 'SHOW SERVERS'"
              % (pc.dir, console_port))
        print("metrics, status: http://127.0.0.1:%d/metrics  /status  /readyz" % http_port)
        print()
        print("try:  psql 'postgresql://postgres@127.0.0.1:%d/postgres' -c "
              "'select inet_server_port(), pg_is_in_recovery()'" % router.port("rw"))
        print("      switch over:  setpriv --reuid=postgres --regid=postgres --init-groups "
              "env HOME=%s patronictl -c %s switchover --force" % (pc.nodes[0].dir,
                                                                   pc.nodes[0].conf)
              if os.geteuid() == 0 else
              "      switch over:  patronictl -c %s switchover --force" % pc.nodes[0].conf)
        print("      (write sessions on the old primary get 57P01; new ones wait for the new one)")
        print()
        print("Ctrl-C stops pgrouter, Patroni, PostgreSQL and etcd.", flush=True)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while router.proc.poll() is None:
            time.sleep(0.5)
        print("pgrouter exited with %s; see %s" % (router.proc.returncode, router.log_path))
    except KeyboardInterrupt:
        pass
    finally:
        if router:
            router.stop()
        pc.cleanup()
        print("stopped.")


if __name__ == "__main__":
    main()
