"""Certificates and a TLS-only Redis server for the TLS tests, made with the ``openssl``
command (no Python package needed).

``make_certs(dir)`` writes a CA, a server certificate for 127.0.0.1 signed by it, a
client certificate signed by it, and a second, unrelated CA (one the server's
certificate does not chain to). ``TLSServer`` runs Debian's ``redis-server`` with
``--port 0`` (no plaintext listener) and ``--tls-port`` on 127.0.0.1, asking clients
for a certificate of the CA.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.servers import _die_with_parent, _free_port


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting only it, a client rejects the server."""


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
             "-subj", f"/CN=streamq test {name}", "-keyout", key, "-out", cert)
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> None:
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj",
             f"/CN=streamq test {name}", "-keyout", key, "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext,
             "-out", directory / f"{name}.crt")


def make_certs(directory: Path) -> Certs:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    _signed(directory, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n")
    _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    other, _ = _ca(directory, "other-ca")
    return Certs(ca[0], directory / "server.crt", directory / "server.key",
                 directory / "client.crt", directory / "client.key", other)


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


class TLSServer:
    """``redis-server`` listening on TLS only, on 127.0.0.1, with ``password`` for the
    default user; stopped (by its own PID) in ``stop``."""

    def __init__(self, binary: str, workdir: Path, certs: Certs, password: str) -> None:
        self.binary, self.workdir, self.certs = binary, workdir, certs
        self.password = password
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, *, ca: Path | None = None, client: bool = True, **extra: str) -> str:
        """A ``rediss://`` URL with the password, the CA and (by default) the client
        certificate as query parameters."""
        params = {"ssl_ca_certs": str(ca or self.certs.ca), "ssl_cert_reqs": "required"}
        if client:
            params |= {"ssl_certfile": str(self.certs.client_cert),
                       "ssl_keyfile": str(self.certs.client_key)}
        params |= extra
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items())
        return (f"rediss://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"
                f"?{query}")

    def start(self) -> TLSServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis-tls.log"
        for _ in range(5):
            self.port = _free_port()
            with open(log, "ab") as out:
                self._proc = subprocess.Popen(
                    [self.binary, "--port", "0", "--tls-port", str(self.port),
                     "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(self.workdir), "--daemonize", "no",
                     "--tls-cert-file", str(self.certs.server_cert),
                     "--tls-key-file", str(self.certs.server_key),
                     "--tls-ca-cert-file", str(self.certs.ca),
                     "--tls-auth-clients", "yes", "--requirepass", self.password],
                    cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            if self._wait_ready():
                return self
        raise RuntimeError(f"redis-server with TLS did not start; log:\n"
                           f"{log.read_text(errors='replace')[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False  # the port was taken: the caller picks another
            try:
                with self.client() as client:
                    if client.ping():
                        return True
            except (redis.RedisError, OSError):  # not up yet
                time.sleep(0.05)
        self.stop()
        return False

    def client(self) -> redis.Redis:
        """A plain redis-py client over TLS (for the test's own checks)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           ssl=True, ssl_ca_certs=str(self.certs.ca),
                           ssl_certfile=str(self.certs.client_cert),
                           ssl_keyfile=str(self.certs.client_key), socket_timeout=5)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
