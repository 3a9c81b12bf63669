"""A minimal PostgreSQL wire client for tests that libpq cannot express:
bad packets, protocol 3.2 startup, pipelined extended-protocol messages."""
import socket
import ssl
import struct


def startup_packet(user="postgres", database="postgres", version=(3, 0), **params):
    body = struct.pack("!I", (version[0] << 16) | version[1])
    kv = dict(user=user, database=database, **params)
    for k, v in kv.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def msg(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


class Wire:
    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def start_tls(self, cafile=None, alpn=None, direct=False, hostname="127.0.0.1"):
        """TLS on this connection: after SSLRequest and 'S', or directly (PostgreSQL
        17's sslnegotiation=direct: the ClientHello is the first byte sent).
        Returns the SSLSocket; raises on 'N' or a failed handshake."""
        if not direct:
            self.send(struct.pack("!II", 8, 80877103))
            answer = self.read_byte()
            if answer != b"S":
                raise ConnectionError("SSLRequest answered %r" % answer)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cafile:
            ctx.load_verify_locations(cafile)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname)
        return self.sock

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed with %d bytes buffered" % len(self.buf))
            self.buf += chunk

    def read_byte(self):
        self._fill(1)
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def read_msg(self):
        """(type, body) of the next message."""
        self._fill(5)
        t = self.buf[:1]
        (n,) = struct.unpack("!I", self.buf[1:5])
        self._fill(1 + n)
        body = self.buf[5:1 + n]
        self.buf = self.buf[1 + n:]
        return t, body

    def read_until_ready(self):
        msgs = []
        while True:
            t, b = self.read_msg()
            msgs.append((t, b))
            if t == b"Z":
                return msgs

    def closed(self, timeout=5):
        """True once the peer closed (reads EOF), discarding any bytes."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def rest(self, timeout=5):
        """Every byte the peer sends until it closes (b"" when it closes without a
        word, as PostgreSQL does for a packet it cannot even frame); None on timeout."""
        self.sock.settimeout(timeout)
        data = self.buf
        self.buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return data
                data += chunk
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return data
        except socket.timeout:
            return None

    def login(self, **kw):
        """Startup with trust auth; returns the messages up to ReadyForQuery."""
        self.send(startup_packet(**kw))
        return self.read_until_ready()

    def close(self):
        self.sock.close()


def error_fields(body):
    """ErrorResponse body → {code: value}."""
    out = {}
    for field in body.split(b"\0"):
        if field:
            out[chr(field[0])] = field[1:].decode(errors="replace")
    return out


def scram_client_first(nonce="pgroutertestnonce"):
    """The gs2 header and client-first-message-bare of a SCRAM exchange."""
    return "n,,", "n=,r=" + nonce


def scram_proof(password, server_first, client_first_bare, gs2="n,,"):
    """client-final-message for server_first (str), from the password."""
    import base64
    import hashlib
    import hmac
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salt = base64.b64decode(attrs["s"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(ck).digest()
    without = "c=%s,r=%s" % (base64.b64encode(gs2.encode()).decode(), attrs["r"])
    am = ",".join((client_first_bare, server_first, without)).encode()
    sig = hmac.new(stored, am, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    return without + ",p=" + base64.b64encode(proof).decode()


def scram_login(w, user, password, **params):
    """Startup + SCRAM-SHA-256 on Wire w. Returns the messages that followed
    the client-final message (up to ReadyForQuery or an ErrorResponse), and
    the SASL mechanism list offered."""
    w.send(startup_packet(user=user, **params))
    t, body = w.read_msg()
    if t != b"R" or struct.unpack("!I", body[:4])[0] != 10:
        return [(t, body)], []
    mechs = [m.decode() for m in body[4:].split(b"\0") if m]
    gs2, bare = scram_client_first()
    first = (gs2 + bare).encode()
    w.send(msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
    t, body = w.read_msg()
    if t != b"R":
        return [(t, body)], mechs
    server_first = body[4:].decode()
    w.send(msg(b"p", scram_proof(password, server_first, bare).encode()))
    out = []
    while True:
        t, body = w.read_msg()
        out.append((t, body))
        if t in (b"Z", b"E"):
            return out, mechs
