"""A small Kubernetes API server for tests: pods, ConfigMaps and Endpoints,
over HTTPS with a test CA, bearer-token checked — what pgrouter's kubernetes
source reads:

  GET /api/v1/namespaces/NS/pods?labelSelector=S            a PodList
  GET /api/v1/namespaces/NS/configmaps?fieldSelector=metadata.name=N
                                                            (endpoints alike)
  GET ...&watch=1&resourceVersion=N[&allowWatchBookmarks=true]
      a chunked stream of newline-delimited events from N on (ADDED,
      MODIFIED, DELETED, BOOKMARK); a version older than the history kept is
      answered 410 (HTTP) or, with gone_in_stream, by an ERROR event whose
      Status has code 410 — as a real API server does one way or the other.

Not a Kubernetes: equality selectors only ("k=v,k2=v2"; metadata.name as the
only field), one resourceVersion sequence for all kinds.
"""
import copy
import json
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cluster import free_port


class KubeAPI:
    def __init__(self, ca, workdir, token="test-token"):
        self.token = token
        self.lock = threading.Condition()
        self.rv = 100
        self.objects = {}   # (resource, ns, name) -> object
        self.history = []   # (rv, resource, ns, type, object)
        self.oldest = 0     # versions below this are gone
        self.epoch = 0      # compactions: a watch open across one ends
        self.gone_in_stream = False
        self.requests = []  # (path, authorization) seen
        self.port = free_port()
        crt, key = ca.issue("kubeapi-%d" % self.port, "kubernetes", sans=("IP:127.0.0.1",))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.server = None
        self.closing = False

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port

    # -- state changes, as an operator's controller would make them --------

    def _event(self, ns, kind, obj, resource="pods"):
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, resource, ns, kind, copy.deepcopy(obj)))
        self.lock.notify_all()

    @property
    def pods(self):
        return {(ns, n): o for (r, ns, n), o in self.objects.items() if r == "pods"}

    def add_pod(self, ns, name, ip, labels, port=5432, ready=True, phase="Running",
                annotations=None):
        with self.lock:
            pod = {"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"name": name, "namespace": ns, "labels": dict(labels),
                                "annotations": dict(annotations or {})},
                   "spec": {"containers": [{"name": "postgres", "ports": [
                       {"name": "postgresql", "containerPort": port, "protocol": "TCP"}]}]},
                   "status": {"phase": phase, "podIP": ip,
                              "conditions": [{"type": "Ready",
                                              "status": "True" if ready else "False"}]}}
            self.objects[("pods", ns, name)] = pod
            self._event(ns, "ADDED", pod)

    def set_label(self, ns, name, key, value):
        with self.lock:
            pod = self.objects[("pods", ns, name)]
            pod["metadata"]["labels"][key] = value
            self._event(ns, "MODIFIED", pod)

    def set_annotation(self, ns, name, key, value):
        with self.lock:
            pod = self.objects[("pods", ns, name)]
            pod["metadata"]["annotations"][key] = value
            self._event(ns, "MODIFIED", pod)

    def set_ready(self, ns, name, ready):
        with self.lock:
            pod = self.objects[("pods", ns, name)]
            pod["status"]["conditions"][0]["status"] = "True" if ready else "False"
            self._event(ns, "MODIFIED", pod)

    def delete_pod(self, ns, name):
        with self.lock:
            pod = self.objects.pop(("pods", ns, name))
            self._event(ns, "DELETED", pod)

    def set_object(self, resource, ns, name, annotations):
        """Create or update a ConfigMap/Endpoints (Patroni's leader lock lives
        in its annotations); annotations=None deletes it."""
        kind = {"configmaps": "ConfigMap", "endpoints": "Endpoints"}[resource]
        with self.lock:
            key = (resource, ns, name)
            if annotations is None:
                self._event(ns, "DELETED", self.objects.pop(key), resource)
                return
            obj = self.objects.get(key)
            new = obj is None
            if new:
                obj = self.objects[key] = {"kind": kind, "apiVersion": "v1", "metadata": {
                    "name": name, "namespace": ns, "labels": {}, "annotations": {}}}
            obj["metadata"]["annotations"] = dict(annotations)
            self._event(ns, "ADDED" if new else "MODIFIED", obj, resource)

    def compact(self):
        """Forget the history: every version so far is gone (410)."""
        with self.lock:
            self.rv += 1  # changes elsewhere, never seen by the watchers, then forgotten
            self.oldest = self.rv  # watching from the newest version is still fine
            self.history = []
            self.epoch += 1
            self.lock.notify_all()  # open watches end with 410 on their next read

    # -- serving -----------------------------------------------------------------

    def start(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def chunk(self, obj):
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_GET(self):
                auth = self.headers.get("Authorization", "")
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                api.requests.append((self.path, auth))
                if auth != "Bearer " + api.token:
                    return self.reply(401, {"kind": "Status", "code": 401,
                                            "message": "Unauthorized"})
                parts = u.path.strip("/").split("/")
                if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or \
                        parts[4] not in ("pods", "configmaps", "endpoints"):
                    return self.reply(404, {"kind": "Status", "code": 404})
                ns, resource = parts[3], parts[4]
                sel = dict(kv.split("=", 1) for kv in
                           q.get("labelSelector", [""])[0].split(",") if "=" in kv)
                fields = dict(kv.split("=", 1) for kv in
                              q.get("fieldSelector", [""])[0].split(",") if "=" in kv)
                if set(fields) - {"metadata.name"}:
                    return self.reply(400, {"kind": "Status", "code": 400,
                                            "message": "field label not supported"})

                def match(obj):
                    labels = obj["metadata"]["labels"]
                    return all(labels.get(k) == v for k, v in sel.items()) and \
                        obj["metadata"]["name"] == fields.get("metadata.name",
                                                              obj["metadata"]["name"])
                if q.get("watch", ["0"])[0] not in ("1", "true"):
                    with api.lock:
                        items = [copy.deepcopy(o) for (r, n, _), o in sorted(api.objects.items())
                                 if r == resource and n == ns and match(o)]
                        return self.reply(200, {"kind": "List", "apiVersion": "v1",
                                                "metadata": {"resourceVersion": str(api.rv)},
                                                "items": items})
                since = int(q.get("resourceVersion", ["0"])[0])
                with api.lock:
                    gone = since < api.oldest
                    epoch = api.epoch
                    if gone and not api.gone_in_stream:
                        return self.reply(410, {"kind": "Status", "code": 410,
                                                "reason": "Expired", "message": "too old"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if gone:
                        self.chunk({"type": "ERROR", "object": {
                            "kind": "Status", "code": 410, "reason": "Expired",
                            "message": "too old resource version"}})
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    sent = since
                    while not api.closing:
                        with api.lock:
                            if api.epoch != epoch:
                                evs = None
                            else:
                                evs = [h for h in api.history if h[0] > sent]
                            if evs == []:
                                api.lock.wait(0.5)
                                continue
                        if evs is None:  # compacted under an open watch
                            if api.gone_in_stream:
                                self.chunk({"type": "ERROR", "object": {
                                    "kind": "Status", "code": 410, "reason": "Expired"}})
                            # else the watch just ends: the next one asks for a
                            # version that is gone and gets HTTP 410
                            self.wfile.write(b"0\r\n\r\n")
                            return
                        for rv, r, n, kind, obj in evs:
                            sent = rv
                            if r == resource and n == ns and match(obj):
                                self.chunk({"type": kind, "object": obj})
                        self.chunk({"type": "BOOKMARK", "object": {
                            "metadata": {"resourceVersion": str(sent)}}})
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.socket = self.ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.closing = True
        with self.lock:
            self.lock.notify_all()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
