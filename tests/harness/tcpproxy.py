"""A TCP relay on loopback the tests put between pgrouter and a server, to
misbehave on purpose: stall one connection's server-to-client direction
after the server's first bytes (a server that hangs mid-login), close a
connection on its startup packet (a server that fails the login), delay
every chunk (a slow link), or pass nothing at all for a while (blackhole);
and keep what clients sent (record). Threads, one pair per connection; stop()
closes all."""
import socket
import struct
import threading
import time

from cluster import free_port


def startup_user(data):
    """The user named in a StartupMessage, or None."""
    if len(data) < 8 or struct.unpack("!I", data[4:8])[0] >> 16 != 3:
        return None
    parts = data[8:].split(b"\0")
    for k, v in zip(parts[::2], parts[1::2]):
        if k == b"user":
            return v.decode(errors="replace")
    return None


class TcpProxy:
    def __init__(self, target_port, stall_user=None, kill_user=None, delay=0.0, record=False):
        self.target = ("127.0.0.1", target_port)
        self.streams = [] if record else None  # each connection's client bytes, in order
        self.stall_user = stall_user  # its server side goes quiet after the first chunk
        self.kill_user = kill_user    # its connection is closed on its startup packet
        self.killed = 0
        self.delay = delay            # seconds added to every chunk, both ways
        self.port = free_port()
        self.stalled = threading.Event()
        self.open = threading.Event()  # cleared: a black hole (see blackhole())
        self.open.set()
        self.socks = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(128)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while self.running:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.open.wait()  # a black hole accepts and says nothing
            try:
                s = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, s]
            state = {"user": None, "sent": bytearray()}
            if self.streams is not None:
                self.streams.append(state["sent"])
            threading.Thread(target=self._pump, args=(c, s, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, state, False), daemon=True).start()

    def _pump(self, src, dst, state, to_server):
        first = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_server and first:
                    state["user"] = startup_user(data)
                    if self.kill_user and state["user"] == self.kill_user:
                        self.killed += 1
                        break  # a server that fails the login: closed, no answer
                first = False
                if self.delay:
                    time.sleep(self.delay)
                self.open.wait()  # held, not lost, while the hole lasts
                if not to_server and self.stall_user and state["user"] == self.stall_user \
                        and state.get("forwarded"):
                    self.stalled.set()
                    continue  # swallowed: the server seems to hang
                dst.sendall(data)
                if to_server and self.streams is not None:
                    state["sent"] += data
                if not to_server:
                    state["forwarded"] = True
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def blackhole(self, on=True):
        """Nothing passes either way (bytes are held, new connections wait) until
        blackhole(False): a peer that vanished without a word, seen from the
        application (the kernel still acknowledges: use iptables for TCP's view)."""
        if on:
            self.open.clear()
        else:
            self.open.set()

    def close_all(self):
        """End every connection open now with a FIN both ways, as a server that
        closes without a word would (new connections still pass)."""
        with self.lock:
            socks, self.socks = self.socks, []
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.running = False
        self.open.set()
        self.ls.close()
        with self.lock:
            for x in self.socks:
                x.close()
