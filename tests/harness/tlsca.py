"""A throwaway certificate authority for tests: a CA and certificates it signs,
made with the openssl command line, readable by the postgres user (PostgreSQL
refuses a key others can read)."""
import os
import subprocess

from cluster import chown_postgres


class TestCA:
    def __init__(self, directory, name="pgrouter test CA", key="rsa"):
        """key: "rsa" (2048 bits) or "ec" (P-256), for the CA and what it issues."""
        self.dir = directory
        self.newkey = ["-newkey", "rsa:2048"] if key == "rsa" else \
            ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.crt")
        self.key = os.path.join(directory, "ca.key")
        self._run("req", "-x509", *self.newkey, "-nodes", "-days", "2",
                  "-subj", "/CN=" + name, "-keyout", self.key, "-out", self.cert)
        self._own(self.cert)

    def _run(self, *args):
        subprocess.run(("openssl",) + args, check=True, capture_output=True)

    def _own(self, path, mode=0o644):
        os.chmod(path, mode)
        chown_postgres(path)

    def issue(self, name, cn, sans=(), client=False):
        """(cert, key) paths for a certificate with subject CN=cn and the given
        subjectAltNames ("IP:127.0.0.1", "DNS:localhost")."""
        crt = os.path.join(self.dir, name + ".crt")
        key = os.path.join(self.dir, name + ".key")
        csr = crt + ".csr"
        self._run("req", *self.newkey, "-nodes", "-subj", "/CN=" + cn,
                  "-keyout", key, "-out", csr)
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            if sans:
                f.write("subjectAltName=%s\n" % ",".join(sans))
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
        self._run("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                  "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt)
        self._own(crt)
        self._own(key, 0o600)
        return crt, key
