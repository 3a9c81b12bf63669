"""The first packets of a connection, compared byte for byte in what the client
sees with PostgreSQL 15 itself (ssl = on, the same test CA): packets it
cannot frame are closed without a word, bad startup packets get the same
FATAL, encryption requests are answered in the same order, unencrypted
bytes after an encryption request are refused, and a client that never
finishes its startup is closed quietly — without costing CPU while it stalls."""
import os
import re
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

from cluster import PgCluster, Router, chown_postgres, cpu_seconds  # noqa: E402
from tlsca import TestCA  # noqa: E402
from wire import Wire, error_fields, startup_packet  # noqa: E402

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSS_REQUEST = struct.pack("!II", 8, 80877104)


def packet(version, *kv, terminated=True):
    body = struct.pack("!I", version)
    for s in kv:
        body += s.encode() + b"\0"
    if terminated:
        body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def norm(message):
    """PostgreSQL 15 speaks protocol 3.0 only; pgrouter up to 3.2."""
    return re.sub(r"server supports 3\.0 to 3\.[0-9]", "server supports 3.0 to 3.x", message)


class StartupTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="pgrouter-startup-")
        os.chmod(cls.work, 0o755)
        chown_postgres(cls.work)
        ca = TestCA(os.path.join(cls.work, "ca"))
        cls.ca = ca
        crt, key = ca.issue("both", "127.0.0.1", ["IP:127.0.0.1"])
        os.chmod(key, 0o600)
        cls.pg = PgCluster(replicas=0, conf={
            "ssl": "on", "ssl_cert_file": "'%s'" % crt, "ssl_key_file": "'%s'" % key,
            "authentication_timeout": "'1s'"}).start()
        # one worker: the CPU test measures the thread the stalled handshakes land on
        cls.router = Router([cls.pg.primary.addr], {
            "tls": {"client_tls": "allow"}, "plain": {"client_tls": "disable"}}, cls.work,
            client_tls_cert=crt, client_tls_key=key, workers=1,
            startup_timeout="1s").start()

    @classmethod
    def tearDownClass(cls):
        cls.router.stop()
        cls.pg.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def tearDown(self):
        log = self.router.log_text()
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            self.assertNotIn(bad, log)

    def ports(self):
        """(what, port): PostgreSQL first, then pgrouter's listener with TLS."""
        return (("postgresql", self.pg.primary.port), ("pgrouter", self.router.port("tls")))

    def answer(self, port, data, tls_after=None):
        """What the server sends for data, until it closes: (plaintext bytes,
        bytes sent over TLS when tls_after names the plaintext answer to take
        TLS on)."""
        w = Wire(port)
        w.send(data)
        if tls_after is None:
            got = w.rest()
            w.close()
            return got, None
        first = w.sock.recv(1)
        if first != tls_after:
            got = first + (w.rest() or b"")
            w.close()
            return got, None
        ctx = ssl.create_default_context(cafile=self.ca.cert)
        ctx.check_hostname = False
        s = ctx.wrap_socket(w.sock, server_hostname="127.0.0.1")
        s.settimeout(5)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        s.close()
        return first, got

    def fatal(self, data):
        """(SQLSTATE, message) of the FATAL each server answers data with."""
        out = []
        for what, port in self.ports():
            got, _ = self.answer(port, data)
            self.assertIsNotNone(got, "%s kept the connection open" % what)
            self.assertEqual(got[:1], b"E", "%s answered %r" % (what, got[:40]))
            if got.startswith(b"EFATAL:  "):
                # a protocol 2 client's error: the text it prints, no fields
                self.assertEqual(got[-2:], b"\n\0")
                out.append(("v2", norm(got[9:-2].decode())))
                continue
            f = error_fields(got[5:])
            self.assertEqual(f.get("S"), "FATAL", f)
            out.append((f.get("C"), norm(f.get("M"))))
        return out

    def test_unframeable_packets_close_without_a_word(self):
        cases = {
            "length 0": struct.pack("!I", 0) + b"\0" * 8,
            "length 4": struct.pack("!I", 4) + b"\0" * 8,
            "length 7": struct.pack("!I", 7) + b"\0" * 8,
            "length 10001": struct.pack("!I", 10001) + b"\0" * 16,
            "negative length": struct.pack("!I", 0x80000000) + b"\0" * 8,
            "an HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        for name, data in cases.items():
            for what, port in self.ports():
                with self.subTest(case=name, server=what):
                    self.assertEqual(self.answer(port, data)[0], b"")
        self.assertIn("invalid length of startup packet (10001 bytes)", self.router.log_text())

    def test_bad_startup_packets_get_postgresql_s_fatal(self):
        cases = {
            "protocol 2.0": packet(2 << 16, "user", "postgres"),
            "protocol 4.0": packet(4 << 16, "user", "postgres"),
            "no user": packet(3 << 16, "database", "postgres"),
            "unterminated": packet(3 << 16, "user", "postgres", terminated=False),
            "replication = bogus": packet(3 << 16, "user", "postgres", "replication", "bogus"),
        }
        for name, data in cases.items():
            with self.subTest(case=name):
                pg, router = self.fatal(data)
                self.assertEqual(router, pg)

    def test_encryption_requests_in_postgresql_s_order(self):
        # a second SSLRequest inside TLS is no special packet: a version 1234.5679
        pg, router = [self.answer(port, SSL_REQUEST, tls_after=b"S")
                      for _, port in self.ports()]
        self.assertEqual(router[0], b"S")
        for name, second in (("SSLRequest", SSL_REQUEST), ("plain startup", None)):
            with self.subTest(inside_tls=name):
                res = []
                for _, port in self.ports():
                    w = Wire(port)
                    w.send(SSL_REQUEST)
                    self.assertEqual(w.sock.recv(1), b"S")
                    ctx = ssl.create_default_context(cafile=self.ca.cert)
                    ctx.check_hostname = False
                    s = ctx.wrap_socket(w.sock, server_hostname="127.0.0.1")
                    s.sendall(second or startup_packet(user="nosuchuser"))
                    t = s.recv(1)
                    res.append(t)
                    if second:
                        rest = s.recv(65536)
                        f = error_fields(rest[4:])
                        res.append((f.get("C"), norm(f.get("M"))))
                    s.close()
                self.assertEqual(res[len(res) // 2:], res[:len(res) // 2])
        # pgrouter never offers GSSAPI encryption: 'N', then TLS may still be asked for
        w = Wire(self.router.port("tls"))
        w.send(GSS_REQUEST)
        self.assertEqual(w.sock.recv(1), b"N")
        w.send(SSL_REQUEST)
        self.assertEqual(w.sock.recv(1), b"S")
        w.close()
        # after 'N' to an SSLRequest (a listener without TLS), another SSLRequest is
        # a bad version; a GSSENCRequest between them makes it fair again (as
        # ProcessStartupPacket's ssl_done/gss_done), and the startup goes on
        w = Wire(self.router.port("plain"))
        for req in (SSL_REQUEST, GSS_REQUEST, SSL_REQUEST):
            w.send(req)
            self.assertEqual(w.sock.recv(1), b"N")
        self.assertEqual(w.login()[-1][0], b"Z")
        w.close()
        w = Wire(self.router.port("plain"))
        w.send(SSL_REQUEST)
        self.assertEqual(w.sock.recv(1), b"N")
        w.send(SSL_REQUEST)
        t, body = w.read_msg()
        self.assertEqual((t, error_fields(body).get("C")), (b"E", "0A000"))
        w.close()

    def test_unencrypted_bytes_after_the_request_are_refused(self):
        """CVE-2021-23214: a startup packet sent along with the SSLRequest could be a
        man in the middle's. PostgreSQL finishes the handshake, then says FATAL."""
        data = SSL_REQUEST + startup_packet()
        res = []
        for what, port in self.ports():
            first, over_tls = self.answer(port, data, tls_after=b"S")
            self.assertEqual(first, b"S", what)
            self.assertEqual(over_tls[:1], b"E", what)
            f = error_fields(over_tls[5:])
            res.append((f.get("S"), f.get("C"), f.get("M")))
        self.assertEqual(res[1], res[0])
        self.assertEqual(res[0][1], "08P01")
        # after 'N' the bytes are plaintext, but were still sent before the answer
        w = Wire(self.router.port("plain"))
        w.send(data)
        self.assertEqual(w.sock.recv(1), b"N")
        t, body = w.read_msg()
        f = error_fields(body)
        self.assertEqual((t, f.get("C"), f.get("M")),
                         (b"E", "08P01", "received unencrypted data after SSL request"))
        w.close()

    def test_stalled_startup_closed_quietly(self):
        """authentication_timeout there, startup_timeout here (both 1 s): closed, no message."""
        for what, port in self.ports():
            with self.subTest(server=what):
                w = Wire(port)
                w.send(struct.pack("!I", 64))  # a length, then nothing
                start = time.monotonic()
                self.assertEqual(w.rest(timeout=10), b"")
                self.assertLess(time.monotonic() - start, 5)
                w.close()
        self.router.wait_log("startup packet not received within 1.0s; closed")

    def test_stalled_tls_handshakes_cost_no_cpu(self):
        """Half a ClientHello after 'S', twenty times: pgrouter waits for readable
        sockets (it once spun on them) and closes them at startup_timeout."""
        hello = bytes([22, 3, 1, 0x02, 0x00]) + b"\x01\x00\x01\xfc" + b"\x03\x03"
        socks = []
        before = cpu_seconds(self.router.proc.pid)
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", self.router.port("tls")))
            s.sendall(SSL_REQUEST)
            self.assertEqual(s.recv(1), b"S")
            s.sendall(hello)  # a record that promises 512 bytes, 6 given
            socks.append(s)
        time.sleep(4)
        used = cpu_seconds(self.router.proc.pid) - before
        for s in socks:
            s.settimeout(1)
            self.assertEqual(s.recv(100), b"")  # closed at startup_timeout
            s.close()
        self.assertLess(used, 0.3)


if __name__ == "__main__":
    unittest.main()
