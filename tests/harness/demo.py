"""Local demo: a PostgreSQL primary and two streaming replicas on loopback with
pgrouter in front (read-write and read-only ports). Ctrl-C stops everything."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import PgCluster, Router  # noqa: E402


def main():
    print("starting a primary and 2 streaming replicas (PostgreSQL 15) on 127.0.0.1 ...")
    cluster = PgCluster(2).start()
    router = None
    try:
        router = Router([s.addr for s in cluster.servers],
                        {"rw": {"target_session_attrs": "read-write"},
                         "ro": {"target_session_attrs": "prefer-standby",
                                "load_balance": "least-connections"}},
                        cluster.dir, probe_interval="1s", queue_timeout="10s").start()
        print()
        print("servers:  primary %s, replicas %s" % (cluster.primary.addr, ", ".join(
            r.addr for r in cluster.replicas)))
        print("config:   %s" % router.conf_path)
        print("log:      %s" % router.log_path)
        print()
        print("read-write DSN:  postgresql://postgres@127.0.0.1:%d/postgres" % router.port("rw"))
        print("read-only DSN:   postgresql://postgres@127.0.0.1:%d/postgres" % router.port("ro"))
        print()
        print("try:  psql 'postgresql://postgres@127.0.0.1:%d/postgres' -c "
              "'select inet_server_port(), pg_is_in_recovery()'" % router.port("ro"))
        print("      stop a replica:  kill -INT %d   (it leaves the read rotation within ~2s)"
              % cluster.replicas[1].pid)
        print()
        print("Ctrl-C stops pgrouter and the servers.")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        while router.proc.poll() is None:
            time.sleep(0.5)
        print("pgrouter exited with %s; see %s" % (router.proc.returncode, router.log_path))
    except KeyboardInterrupt:
        pass
    finally:
        if router:
            router.stop()
        cluster.cleanup()
        print("stopped.")


if __name__ == "__main__":
    main()
