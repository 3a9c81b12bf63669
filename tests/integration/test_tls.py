"""TLS toward clients and toward servers, with a test CA made here: libpq's
sslmodes against pgrouter, direct TLS with ALPN, client certificates, SCRAM
and channel binding, server-side TLS modes against PostgreSQL with ssl=on,
cancel over TLS, bad handshakes, certificate reload."""
import calendar
import os
import shutil
import socket
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402

from cluster import (PG_BIN, PGROUTER, PgCluster, Router, chown_postgres, free_port,  # noqa: E402
                     wait_for)
from cluster import query_one as one  # noqa: E402
from tlsca import TestCA  # noqa: E402
from wire import Wire, cstr, error_fields, msg, startup_packet  # noqa: E402

PLUS_REFUSED = "SCRAM channel binding cannot pass through pgrouter"


def connect(dsn):
    return psycopg2.connect(dsn)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="pgrouter-tls-")
        os.chmod(cls.work, 0o755)
        chown_postgres(cls.work)
        cls.ca = TestCA(os.path.join(cls.work, "ca"))
        ca = cls.ca
        cls.router_crt, cls.router_key = ca.issue("router", "pgrouter",
                                                  ["IP:127.0.0.1", "DNS:localhost"])
        cls.router2_crt, cls.router2_key = ca.issue("router2", "pgrouter second",
                                                    ["IP:127.0.0.1"])
        cls.pg_crt, cls.pg_key = ca.issue("pg", "127.0.0.1", ["IP:127.0.0.1"])
        cls.wrong_crt, cls.wrong_key = ca.issue("pg-wrong", "db.other.test",
                                                ["DNS:db.other.test"])
        cls.client_crt, cls.client_key = ca.issue("client", "postgres", client=True)
        # the server's live certificate files: tests swap their contents
        cls.live_crt = os.path.join(ca.dir, "live.crt")
        cls.live_key = os.path.join(ca.dir, "live.key")
        cls.use_server_cert(cls.pg_crt, cls.pg_key, reload=False)
        cls.pg = PgCluster(replicas=0, conf={
            "ssl": "on", "ssl_cert_file": "'%s'" % cls.live_crt,
            "ssl_key_file": "'%s'" % cls.live_key,
            "password_encryption": "'scram-sha-256'"}, hba=[
            "hostssl all tlsuser 127.0.0.1/32 scram-sha-256",
            "host all tlsuser 127.0.0.1/32 reject",
            "host all scram 127.0.0.1/32 scram-sha-256"]).start()
        cls.pg.primary.sql("create user scram password 'scram-pw'")
        cls.pg.primary.sql("create user tlsuser password 'tls-pw'")
        cls.routers = []
        cls.router = cls.make_router()

    @classmethod
    def tearDownClass(cls):
        errors = []
        for r in cls.routers:  # each one's exit code and sanitizer report, read
            try:
                r.stop_clean()
            except AssertionError as e:
                errors.append(e)
        cls.pg.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)
        if errors:
            raise errors[0]

    @classmethod
    def use_server_cert(cls, crt, key, reload=True):
        for src, dst in ((crt, cls.live_crt), (key, cls.live_key)):
            shutil.copyfile(src, dst)
            chown_postgres(dst)
        os.chmod(cls.live_key, 0o600)
        if reload:
            cls.pg.primary.sql("select pg_reload_conf()")
            time.sleep(0.5)

    @classmethod
    def make_router(cls, listeners=None, **settings):
        conf = {"client_tls": "allow", "client_tls_cert": cls.router_crt,
                "client_tls_key": cls.router_key, "queue_timeout": "2s"}
        conf.update(settings)
        listeners = listeners or {
            "tls": {"client_tls": "require"},
            "opt": {},
            "plain": {"client_tls": "disable"},
            "mtls": {"client_tls": "require", "client_tls_ca": cls.ca.cert},
        }
        r = Router([s.addr for s in cls.pg.servers], listeners, cls.work, **conf)
        r.start()
        cls.routers.append(r)
        return r

    def tearDown(self):
        for r in self.routers:
            log = r.log_text()
            for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
                self.assertNotIn(bad, log)

    def dsn(self, listener="tls", router=None, **kw):
        return (router or self.router).dsn(listener, **kw)

    # ---- client side ------------------------------------------------------

    def test_tls_metrics(self):
        """The certificate's expiry and failed handshakes, on /metrics."""
        import urllib.request
        port = free_port()
        r = self.make_router(listeners={"tls": {"client_tls": "require"}},
                             http_listen="127.0.0.1:%d" % port)

        def metrics():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as f:
                return f.read().decode()

        def value(text, series):
            for line in text.splitlines():
                if line.startswith(series + " "):
                    return float(line.split()[-1])
            return None
        out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", self.router_crt],
                             capture_output=True, text=True, check=True).stdout
        end = calendar.timegm(time.strptime(out.strip().split("=", 1)[1],
                                            "%b %d %H:%M:%S %Y %Z"))
        self.assertEqual(value(metrics(), 'pgrouter_tls_certificate_expiry_timestamp_seconds'
                                          '{listener="tls"}'), end)
        series = 'pgrouter_tls_handshake_failures_total{listener="tls"}'
        before = value(metrics(), series)
        # an SSLRequest answered 'S', then bytes that are no ClientHello
        s = socket.create_connection(("127.0.0.1", r.port("tls")))
        s.sendall(struct.pack("!II", 8, 80877103))
        self.assertEqual(s.recv(1), b"S")
        s.sendall(b"\x16\x03\x01\x00\x05hello, not TLS")
        s.recv(100)
        s.close()
        wait_for(lambda: value(metrics(), series) == before + 1, 5, "the failure counted")

    def test_sslmode_require_verify_ca_verify_full(self):
        for mode in ("require", "verify-ca", "verify-full"):
            c = connect(self.dsn(sslmode=mode, sslrootcert=self.ca.cert))
            try:
                self.assertTrue(c.info.ssl_in_use, mode)
                self.assertEqual(c.info.ssl_attribute("protocol"), "TLSv1.3")
                cur = c.cursor()
                cur.execute("select 1")
                self.assertEqual(cur.fetchone()[0], 1)
            finally:
                c.close()
        # verify-full checks the name the client asked for: localhost is in
        # pgrouter's certificate, db.other.test is not
        c = connect(self.dsn(sslmode="verify-full", sslrootcert=self.ca.cert,
                             host="localhost", hostaddr="127.0.0.1"))
        c.close()
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.dsn(sslmode="verify-full", sslrootcert=self.ca.cert,
                             host="db.other.test", hostaddr="127.0.0.1"))
        self.assertIn("does not match host name", str(e.exception))
        # and a CA that did not sign it is refused
        other = TestCA(os.path.join(self.work, "other-ca"), name="another CA")
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.dsn(sslmode="verify-ca", sslrootcert=other.cert))
        self.assertIn("certificate verify failed", str(e.exception))

    def test_plaintext_refused_when_required(self):
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.dsn(sslmode="disable"))
        self.assertIn('listener "tls" requires TLS', str(e.exception))
        w = Wire(self.router.port("tls"))
        w.send(startup_packet())
        t, body = w.read_msg()
        self.assertEqual((t, error_fields(body)["C"]), (b"E", "28000"))
        w.close()
        # the allow listener takes both; the disable listener answers 'N'
        self.assertTrue(one(self.dsn("opt", sslmode="disable"), "select true"))
        c = connect(self.dsn("opt", sslmode="require"))
        self.assertTrue(c.info.ssl_in_use)
        c.close()
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.dsn("plain", sslmode="require"))
        self.assertIn("does not support SSL", str(e.exception))
        c = connect(self.dsn("plain", sslmode="prefer"))
        self.assertFalse(c.info.ssl_in_use)
        c.close()
        w = Wire(self.router.port("tls"))
        w.send(struct.pack("!II", 8, 80877104))  # GSSENCRequest
        self.assertEqual(w.read_byte(), b"N")
        w.close()

    def test_direct_tls_with_alpn(self):
        """PostgreSQL 17's sslnegotiation=direct, as libpq 17 does it (this
        machine's libpq is 15, so the handshake is made here): ClientHello
        first, ALPN "postgresql", then the startup packet over TLS."""
        w = Wire(self.router.port("tls"))
        s = w.start_tls(cafile=self.ca.cert, alpn=["postgresql"], direct=True)
        self.assertEqual(s.selected_alpn_protocol(), "postgresql")
        w.login()
        w.send(msg(b"Q", cstr("select 42")))
        rows = [b for t, b in w.read_until_ready() if t == b"D"]
        self.assertEqual(rows[0][6:], b"42")
        w.close()
        # without ALPN: PostgreSQL 17 refuses direct TLS, and so does pgrouter
        w = Wire(self.router.port("tls"))
        w.start_tls(cafile=self.ca.cert, direct=True)
        self.assertTrue(w.closed())
        # an ALPN list without "postgresql": the handshake itself fails
        w = Wire(self.router.port("tls"))
        with self.assertRaises(ssl.SSLError):
            w.start_tls(cafile=self.ca.cert, alpn=["http/1.1"], direct=True)
        w.close()
        # a listener without TLS closes a direct TLS connection
        w = Wire(self.router.port("plain"))
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            w.start_tls(alpn=["postgresql"], direct=True)
            w.login()
        w.close()
        log = self.router.log_text()
        self.assertIn("direct TLS connection without ALPN", log)
        self.assertIn("client_tls = disable; closed", log)

    def test_client_certificates(self):
        c = connect(self.dsn("mtls", sslmode="verify-full", sslrootcert=self.ca.cert,
                             sslcert=self.client_crt, sslkey=self.client_key))
        self.assertTrue(c.info.ssl_in_use)
        c.close()
        with self.assertRaises(psycopg2.OperationalError):
            connect(self.dsn("mtls", sslmode="require", sslcert="/nonexistent",
                             sslkey="/nonexistent"))
        wait_for(lambda: "TLS handshake with the client failed" in self.router.log_text(), 5,
                 "the refused client certificate logged")

    def test_scram_server_plaintext(self):
        """TLS ends at pgrouter, the server is reached in plaintext: the server
        offers no -PLUS, plain SCRAM works for channel_binding=prefer, and
        require gets libpq's own clear error."""
        dsn = self.dsn(user="scram", password="scram-pw", sslmode="require")
        self.assertEqual(one(dsn + " channel_binding=prefer", "select current_user"), "scram")
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(dsn + " channel_binding=require")
        self.assertIn("channel binding", str(e.exception))
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(self.dsn(user="scram", password="wrong", sslmode="require"))
        self.assertIn("password authentication failed", str(e.exception))

    def test_cancel_over_tls(self):
        # libpq 15 sends its CancelRequest in plaintext, even for a TLS session
        c = connect(self.dsn(sslmode="require"))
        cur = c.cursor()
        threading.Timer(0.5, c.cancel).start()
        t0 = time.monotonic()
        with self.assertRaises(psycopg2.errors.QueryCanceled):
            cur.execute("select pg_sleep(20)")
        self.assertLess(time.monotonic() - t0, 10)
        c.close()
        # libpq 17 sends it over TLS: SSLRequest, handshake, CancelRequest
        w = Wire(self.router.port("tls"))
        w.start_tls()
        msgs = w.login()
        key = [b for t, b in msgs if t == b"K"][0]
        pid, secret = struct.unpack("!II", key)
        w.send(msg(b"Q", cstr("select pg_sleep(20)")))
        time.sleep(0.3)
        k = Wire(self.router.port("tls"))
        k.start_tls()
        k.send(struct.pack("!IIII", 16, 80877102, pid, secret))
        self.assertTrue(k.closed())
        errors = [error_fields(b)["C"] for t, b in w.read_until_ready() if t == b"E"]
        self.assertEqual(errors, ["57014"])
        w.close()

    def test_bad_handshakes(self):
        """Garbage instead of a ClientHello, and a client that stops in the
        middle of its handshake: each is logged and closed, an established TLS
        session meanwhile keeps working."""
        c = connect(self.dsn(sslmode="require"))
        cur = c.cursor()
        w = Wire(self.router.port("tls"))
        w.send(struct.pack("!II", 8, 80877103))
        self.assertEqual(w.read_byte(), b"S")
        w.send(b"\x16\x03\x01\xff\xffthis is not a ClientHello" * 10)
        self.assertTrue(w.closed())
        stall = Wire(self.router.port("tls"))
        stall.send(struct.pack("!II", 8, 80877103))
        self.assertEqual(stall.read_byte(), b"S")
        stall.send(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        cur.execute("select 1")
        self.assertEqual(cur.fetchone()[0], 1)
        self.assertTrue(stall.closed(timeout=10))
        self.assertGreater(time.monotonic() - t0, 2)  # startup_timeout is 3s
        cur.execute("select 2")
        self.assertEqual(cur.fetchone()[0], 2)
        c.close()
        log = self.router.log_text()
        self.assertIn("TLS handshake with the client failed", log)
        # (unencrypted bytes sent along with the SSLRequest, CVE-2021-23214: test_startup,
        # against PostgreSQL's own answer)

    # ---- server side ------------------------------------------------------

    def server_ssl(self, dsn):
        return one(dsn, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")

    def test_server_tls_modes(self):
        self.assertFalse(self.server_ssl(self.dsn(sslmode="require")))
        for mode in ("prefer", "require"):
            r = self.make_router(server_tls=mode)
            self.assertTrue(self.server_ssl(self.dsn(router=r, sslmode="require")), mode)
            # a cancel reaches a session whose server connection is TLS (pgrouter
            # forwards it over TLS too)
            c = connect(self.dsn(router=r, sslmode="require"))
            threading.Timer(0.5, c.cancel).start()
            with self.assertRaises(psycopg2.errors.QueryCanceled):
                c.cursor().execute("select pg_sleep(20)")
            c.close()
            # hostssl-only user: reachable only over TLS to the server
            self.assertEqual(one(self.dsn("plain", router=r, user="tlsuser", password="tls-pw"),
                                 "select current_user"), "tlsuser")
            r.stop_clean()
        full = self.make_router(server_tls="verify-full", server_tls_ca=self.ca.cert)
        self.assertTrue(self.server_ssl(self.dsn("plain", router=full)))
        held = connect(self.dsn("plain", router=full))
        # the server now presents a certificate for another name
        self.use_server_cert(self.wrong_crt, self.wrong_key)
        try:
            with self.assertRaises(psycopg2.OperationalError) as e:
                connect(self.dsn("plain", router=full))
            self.assertIn("no server satisfies", str(e.exception))
            log = full.log_text()
            self.assertIn("certificate verify failed", log)
            self.assertIn("server_tls = verify-full", log)
            # the session opened before is not affected
            cur = held.cursor()
            cur.execute("select 3")
            self.assertEqual(cur.fetchone()[0], 3)
            # verify-ca checks the chain, not the name
            ca_only = self.make_router(server_tls="verify-ca", server_tls_ca=self.ca.cert)
            self.assertTrue(self.server_ssl(self.dsn("plain", router=ca_only)))
            ca_only.stop_clean()
            # a CA that did not sign the server's certificate
            other = TestCA(os.path.join(self.work, "other-ca2"), name="yet another CA")
            bad = self.make_router(server_tls="verify-ca", server_tls_ca=other.cert)
            with self.assertRaises(psycopg2.OperationalError):
                connect(self.dsn("plain", router=bad))
            self.assertIn("certificate verify failed", bad.log_text())
            bad.stop_clean()
        finally:
            held.close()
            self.use_server_cert(self.pg_crt, self.pg_key)
        self.assertTrue(self.server_ssl(self.dsn("plain", router=full)))
        full.stop_clean()

    def test_server_without_tls(self):
        """server_tls = require against a server that answers 'N': refused and
        logged; prefer goes on in plaintext."""
        plain = PgCluster(replicas=0).start()
        try:
            listeners = {"plain": {"client_tls": "disable"}}
            req = Router([plain.primary.addr], listeners, self.work, server_tls="require",
                         queue_timeout="1s").start()
            self.routers.append(req)
            # the probe (with libpq's sslmode=require) finds it unusable first
            with self.assertRaises(psycopg2.OperationalError) as e:
                connect(req.dsn("plain"))
            self.assertIn("no server satisfies", str(e.exception))
            self.assertIn("server does not support SSL, but SSL was required", req.log_text())
            req.stop_clean()
            pref = Router([plain.primary.addr], listeners, self.work,
                          server_tls="prefer").start()
            self.routers.append(pref)
            self.assertFalse(self.server_ssl(pref.dsn("plain")))
            pref.stop_clean()
        finally:
            plain.cleanup()

    def test_scram_tls_both_sides(self):
        """Server on TLS too: it offers -PLUS, which pgrouter takes out.
        channel_binding=require: libpq's own error; prefer: the server refuses
        a client that supports binding, and pgrouter says why; disable works."""
        r = self.make_router(server_tls="require")
        dsn = self.dsn(router=r, user="scram", password="scram-pw", sslmode="require")
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(dsn + " channel_binding=require")
        self.assertIn("channel binding is required, but server did not offer", str(e.exception))
        with self.assertRaises(psycopg2.OperationalError) as e:
            connect(dsn + " channel_binding=prefer")
        self.assertIn(PLUS_REFUSED, str(e.exception))
        self.assertEqual(one(dsn + " channel_binding=disable", "select current_user"), "scram")
        # a plaintext client never offers binding: works
        self.assertEqual(one(self.dsn("opt", router=r, user="scram", password="scram-pw",
                                      sslmode="disable"), "select current_user"), "scram")
        r.stop_clean()

    def test_scram_shared_certificate(self):
        """pgrouter presenting the servers' own certificate: the binding holds
        end to end, -PLUS stays in the offer, channel_binding=require works."""
        r = self.make_router(server_tls="verify-full", server_tls_ca=self.ca.cert,
                             client_tls_cert=self.pg_crt, client_tls_key=self.pg_key)
        dsn = self.dsn(router=r, user="scram", password="scram-pw", sslmode="verify-full",
                       sslrootcert=self.ca.cert)
        for cb in ("require", "prefer"):
            self.assertEqual(one(dsn + " channel_binding=" + cb, "select current_user"),
                             "scram", cb)
        r.stop_clean()

    def test_pgbench_over_tls(self):
        r = self.make_router(server_tls="verify-full", server_tls_ca=self.ca.cert)
        env = dict(os.environ, PGSSLMODE="verify-full", PGSSLROOTCERT=self.ca.cert,
                   PGCONNECT_TIMEOUT="10")
        args = ["-h", "127.0.0.1", "-p", str(r.port("tls")), "-U", "postgres"]
        subprocess.run([os.path.join(PG_BIN, "pgbench"), "-i", "-s", "1", "-q"] + args +
                       ["postgres"], check=True, capture_output=True, env=env)
        out = subprocess.run([os.path.join(PG_BIN, "pgbench"), "-c", "4", "-j", "2", "-t", "200",
                              "-M", "extended"] + args + ["postgres"], check=True,
                             capture_output=True, text=True, env=env).stdout
        self.assertIn("number of transactions actually processed: 800/800", out)
        self.assertIn("number of failed transactions: 0", out)
        r.stop_clean()

    # ---- configuration and reload -----------------------------------------

    def check(self, text):
        path = os.path.join(self.work, "check-%d.ini" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(text)
        res = subprocess.run([PGROUTER, "--check", "-c", path], capture_output=True, text=True)
        return res.returncode, path, res.stderr.strip()

    def test_check_bad_files(self):
        garbage = os.path.join(self.work, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        base = ("[pgrouter]\nclient_tls = require\nclient_tls_cert = %s\nclient_tls_key = %s\n"
                "[cluster]\nservers = 127.0.0.1:5432\n[listener a]\nlisten = 127.0.0.1:6432\n")
        rc, _, err = self.check(base % (self.router_crt, self.router_key))
        self.assertEqual(rc, 0, err)
        rc, path, err = self.check(base % (garbage, self.router_key))
        self.assertEqual(rc, 1)
        self.assertTrue(err.startswith(path + ":3: client_tls_cert: " + garbage), err)
        rc, path, err = self.check(base % (self.router_crt, self.pg_key))
        self.assertEqual(rc, 1)
        self.assertIn(":4: client_tls_key: %s: " % self.pg_key, err)
        self.assertIn("mismatch", err)
        rc, path, err = self.check(base % (self.router_crt, "/nonexistent.key"))
        self.assertEqual((rc, err), (1, path + ":4: client_tls_key: cannot read "
                                     "/nonexistent.key: No such file or directory"))
        rc, path, err = self.check("[pgrouter]\nclient_tls = require\n[cluster]\n"
                                   "servers = 127.0.0.1\n[listener a]\nlisten = 127.0.0.1:1\n")
        self.assertIn(":2: client_tls: client_tls = require needs client_tls_cert", err)
        rc, path, err = self.check("[pgrouter]\nserver_tls = verify-full\n[cluster]\n"
                                   "servers = 127.0.0.1\n[listener a]\nlisten = 127.0.0.1:1\n")
        self.assertIn(":2: server_tls: verify-full needs server_tls_ca", err)
        rc, path, err = self.check(base % (self.router_crt, self.router_key) +
                                   "client_tls_min_version = TLSv1.1\n")
        self.assertIn(":9: client_tls_min_version: must be TLSv1.2 or TLSv1.3", err)

    def test_sighup_reloads_certificates(self):
        crt = os.path.join(self.work, "reload.crt")
        key = os.path.join(self.work, "reload.key")
        shutil.copyfile(self.router_crt, crt)
        shutil.copyfile(self.router_key, key)
        r = self.make_router(client_tls_cert=crt, client_tls_key=key)

        def served_cn():
            w = Wire(r.port("tls"))
            s = w.start_tls(cafile=self.ca.cert)
            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            w.close()
            return cn
        self.assertEqual(served_cn(), "pgrouter")
        held = connect(self.dsn(router=r, sslmode="require"))
        shutil.copyfile(self.router2_crt, crt)
        shutil.copyfile(self.router2_key, key)
        r.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "applied (generation 2)" in r.log_text(), 5, "reload")
        self.assertEqual(served_cn(), "pgrouter second")
        with open(crt, "w") as f:
            f.write("garbage\n")
        r.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, the running configuration stays" in r.log_text(), 5,
                 "failed reload logged")
        self.assertEqual(served_cn(), "pgrouter second")  # the last good one stays
        cur = held.cursor()
        cur.execute("select 4")
        self.assertEqual(cur.fetchone()[0], 4)
        held.close()
        r.stop_clean()


if __name__ == "__main__":
    unittest.main()
