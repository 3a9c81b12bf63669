"""The live daemon fuzzed (issue 12): real client streams (psql, pgbench in its
three protocol modes, a SCRAM login, an SSLRequest, a CancelRequest), captured
once into tests/fuzz/streams/, are mutated — bytes flipped, cut short, length
fields set to 0, 3, 4, huge or negative, messages duplicated, swapped or
dropped, garbage inserted, sent in small pieces — and sent to a running
pgrouter (the ASan build in tests/fuzz/live.sh) at every phase: startup, TLS,
authentication (passthrough and pgrouter's own SCRAM), relay, cancel.

Every connection must end: after its bytes pgrouter gets the client's EOF and
must close within 15 s (a hang otherwise). Every 100 connections a canary
session on each listener must work; at the end pgrouter must exit 0 with no
sanitizer report. Failing inputs are written to the --out directory.

Usage: tests/fuzz/live.sh [seconds]          (the ASan build, 120 s by default)
       /usr/bin/python3 tests/fuzz/live.py --capture   (rewrite the streams)
"""
import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "harness"))

import psycopg2  # noqa: E402

from cluster import PG_BIN, PgCluster, Router  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402
from tlsca import TestCA  # noqa: E402

STREAMS = os.path.join(HERE, "streams")


def capture(r, port_plain, port_auth):
    os.makedirs(STREAMS, exist_ok=True)
    rec = TcpProxy(port_plain, record=True)
    env = dict(os.environ, PGPASSWORD="fuzzpw", PGSSLMODE="disable")
    dsn = "host=127.0.0.1 port=%d dbname=postgres" % rec.port
    runs = {
        "psql": ["psql", "-X", "-d", dsn + " user=postgres", "-c",
                 "select 1; create temp table t(i int); insert into t values (1); "
                 "begin; select * from t; commit; copy (select 1) to stdout"],
    }
    for mode in ("simple", "extended", "prepared"):
        runs["pgbench-" + mode] = [os.path.join(PG_BIN, "pgbench"), "-n", "-M", mode, "-t", "5",
                                   "-f", "/dev/stdin", "-h", "127.0.0.1", "-p", str(rec.port),
                                   "-U", "postgres", "postgres"]
    for name, cmd in runs.items():
        before = len(rec.streams)
        subprocess.run(cmd, env=env, input="select 1;\nselect $$x$$ || 2;\n", check=True,
                       capture_output=True, text=True)
        time.sleep(0.3)
        for i, s in enumerate(rec.streams[before:]):
            open(os.path.join(STREAMS, "%s-%d.bin" % (name, i)), "wb").write(bytes(s))
    rec2 = TcpProxy(port_auth, record=True)
    subprocess.run(["psql", "-X", "-d", "host=127.0.0.1 port=%d dbname=postgres user=fuzz "
                    "sslmode=disable" % rec2.port, "-c", "select current_user"], env=env,
                   check=True, capture_output=True)
    time.sleep(0.3)
    open(os.path.join(STREAMS, "scram-0.bin"), "wb").write(bytes(rec2.streams[-1]))
    open(os.path.join(STREAMS, "sslrequest-0.bin"), "wb").write(
        struct.pack("!II", 8, 80877103) + bytes(rec.streams[0]))
    open(os.path.join(STREAMS, "cancel-0.bin"), "wb").write(
        struct.pack("!IIII", 16, 80877102, 1234, 5678))
    rec.stop()
    rec2.stop()
    print("captured %d streams into %s" % (len(os.listdir(STREAMS)), STREAMS))


def split_messages(data):
    """The stream as [first packet(s) without a type byte..., typed messages...]."""
    out, i = [], 0
    # untyped packets first: SSLRequest, StartupMessage, CancelRequest
    while i + 8 <= len(data):
        n = struct.unpack("!I", data[i:i + 4])[0]
        code = struct.unpack("!I", data[i + 4:i + 8])[0]
        if n < 8 or i + n > len(data) or not (code >> 16 == 3 or code >> 16 == 1234):
            break
        out.append(data[i:i + n])
        i += n
        if code >> 16 == 3:
            break
    while i + 5 <= len(data):
        n = struct.unpack("!I", data[i + 1:i + 5])[0]
        if n < 4 or i + 1 + n > len(data):
            break
        out.append(data[i:i + 1 + n])
        i += 1 + n
    if i < len(data):
        out.append(data[i:])
    return out


def mutate(rng, data):
    msgs = split_messages(data)
    kind = rng.choice(["flip", "cut", "length", "dup", "swap", "drop", "garbage", "none"])
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return kind, bytes(b)
    if kind == "cut":
        return kind, data[:rng.randrange(len(data))]
    if kind == "length" and msgs:
        k = rng.randrange(len(msgs))
        m = bytearray(msgs[k])
        off = 0 if k == 0 or m[:1] == b"\0" else 1
        if len(m) >= off + 4:
            v = rng.choice([0, 3, 4, 5, 7, 8, 10001, 0x7fffffff, 0x80000000, 0xffffffff,
                            rng.randrange(1 << 32)])
            m[off:off + 4] = struct.pack("!I", v)
        msgs[k] = bytes(m)
        return kind, b"".join(msgs)
    if kind == "dup" and msgs:
        k = rng.randrange(len(msgs))
        msgs.insert(k, msgs[k])
        return kind, b"".join(msgs)
    if kind == "swap" and len(msgs) > 2:
        a, b = rng.randrange(len(msgs)), rng.randrange(len(msgs))
        msgs[a], msgs[b] = msgs[b], msgs[a]
        return kind, b"".join(msgs)
    if kind == "drop" and len(msgs) > 1:
        del msgs[rng.randrange(len(msgs))]
        return kind, b"".join(msgs)
    if kind == "garbage":
        k = rng.randrange(len(data) + 1)
        return kind, data[:k] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + \
            data[k:]
    return "none", data


def one(port, data, rng, tls_ctx=None):
    """Send data (in pieces), then EOF; True when pgrouter closed within 15 s."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        if tls_ctx is not None:
            s.sendall(struct.pack("!II", 8, 80877103))
            if s.recv(1) != b"S":
                return True
            s = tls_ctx.wrap_socket(s, server_hostname="127.0.0.1")
        i = 0
        while i < len(data):
            n = rng.choice([len(data), 1, 3, 7, 64, 1000])
            s.sendall(data[i:i + n])
            i += n
            if rng.random() < 0.05:
                time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)  # (TLS: a bare TCP half-close, no close_notify)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError, OSError):
                return True
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return True
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--pgrouter", default=None)
    ap.add_argument("--capture", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default="/tmp/pgrouter-live-fuzz")
    args = ap.parse_args()
    import ssl
    c = PgCluster(0, conf={"password_encryption": "'scram-sha-256'"},
                  hba=["host all fuzz 127.0.0.1/32 scram-sha-256"]).start()
    r = None
    try:
        c.primary.sql("create role fuzz login password 'fuzzpw'")
        ca = TestCA(os.path.join(c.dir, "ca"))
        crt, key = ca.issue("router", "127.0.0.1", ["IP:127.0.0.1"])
        r = Router([c.primary.addr], {"plain": {"client_tls": "allow"},
                                      "auth": {"auth": "router", "client_tls": "allow"},
                                      "tls": {"client_tls": "require"}}, c.dir,
                   pgrouter=args.pgrouter, client_tls_cert=crt, client_tls_key=key,
                   auth_user="postgres", startup_timeout="5s", log_level="warning").start()
        if args.capture:
            capture(r, r.port("plain"), r.port("auth"))
            return 0
        names = sorted(os.listdir(STREAMS))
        streams = {n: open(os.path.join(STREAMS, n), "rb").read() for n in names}
        seed = args.seed if args.seed is not None else int(time.time())
        rng = random.Random(seed)
        ctx = ssl.create_default_context(cafile=ca.cert)
        ctx.check_hostname = False
        os.makedirs(args.out, exist_ok=True)
        start, count, hangs = time.monotonic(), 0, []
        kinds = {}
        while time.monotonic() - start < args.seconds:
            name = rng.choice(names)
            kind, data = mutate(rng, streams[name])
            kinds[kind] = kinds.get(kind, 0) + 1
            listener = "auth" if name.startswith("scram") else rng.choice(["plain", "tls"])
            tls = ctx if listener == "tls" and not name.startswith(("ssl", "cancel")) else None
            if not one(r.port(listener), data, rng, tls):
                path = os.path.join(args.out, "hang-%d-%s" % (count, name))
                open(path, "wb").write(data)
                hangs.append(path)
            count += 1
            if count % 100 == 0:
                if r.proc.poll() is not None:
                    raise SystemExit("pgrouter died after %d inputs (seed %d):\n%s" % (
                        count, seed, r.log_text()[-4000:]))
                for lst, user in (("plain", "postgres"), ("auth", "fuzz")):
                    cn = psycopg2.connect(r.dsn(lst, user=user, connect_timeout=5), **(
                        {"password": "fuzzpw"} if user == "fuzz" else {}))
                    cn.cursor().execute("select 1")
                    cn.close()
        print("%d connections in %ds from %d captured streams (seed %d); mutations: %s; "
              "canary sessions every 100: all served; hangs: %d %s" % (
                  count, args.seconds, len(names), seed, kinds, len(hangs), hangs[:5]))
        log = r.stop_clean()
        r = None
        print("pgrouter exited 0 with no sanitizer report (%d log lines)" % log.count("\n"))
        return 1 if hangs else 0
    finally:
        if r:
            r.stop()
        c.cleanup()


if __name__ == "__main__":
    sys.exit(main())
