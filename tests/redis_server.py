"""A real ``redis-server`` (Debian's package) on a free port, for the replica tests.

Started with its append-only file fsynced at every write, as a Redis that holds state
should be run, so a test can kill it and start it again on the same port and data, or
stop it for good. Missing binary: the test fails under CI=true, skips locally.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from proxy.commands.children import free_port
from tests.binaries import redis_server_binary, require_binary


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None, tls: bool = False) -> None:
        self.binary = redis_server_binary()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        if tls:
            self.ca = make_certificates(directory)

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        ports = (["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.dir / "server.crt"),
                  "--tls-key-file", str(self.dir / "server.key"), "--tls-ca-cert-file", str(self.ca),
                  "--tls-auth-clients", "no"] if self.tls else ["--port", str(self.port)])
        args = [self.binary, *ports, "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                pass
            assert self.proc.poll() is None, f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.tls else {}
        return redis.Redis(host="localhost" if self.tls else "127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=2, decode_responses=True, **tls)

    def kill(self) -> None:
        """Gone at once, as a crashed or partitioned Redis is (its data stays on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()


def make_certificates(directory: Path) -> Path:
    """A private CA and a server certificate for localhost, with Debian's openssl; the CA's path."""
    openssl = require_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=ollama-sidecar test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return directory / "ca.crt"
