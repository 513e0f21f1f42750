"""The processes a benchmark run compares: fake upstream, the proxy, nginx.

Each runs in its own process on a free 127.0.0.1 port so none shares an event loop or
the GIL with another or with the load generator. They are started and stopped by the same
supervisor as the demo stack (:mod:`proxy.commands.children`): each dies with the bench,
even when the bench is SIGKILLed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from a checkout

from proxy.commands.children import Child, free_port  # noqa: E402

NGINX = "/usr/sbin/nginx"


def wait_http(url: str, what: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:g}s")
        time.sleep(0.05)


def _spawn(stack: ExitStack, argv: list[str], log: Path) -> subprocess.Popen:
    log.unlink(missing_ok=True)  # one run's output per file
    child = Child(Path(argv[0]).name, argv, log).start()
    stack.callback(child.stop, 5.0)
    assert child.proc is not None
    return child.proc


def start_upstream(stack: ExitStack, tmp: Path, interval_ms: float) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = _spawn(stack, [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port),
                          "--interval-ms", str(interval_ms)], tmp / "upstream.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", "fake upstream", proc)
    return url, proc


def start_proxy(stack: ExitStack, tmp: Path, upstream: str, loop: str) -> tuple[str, subprocess.Popen]:
    """``ollama-sidecar proxy`` as a user starts it, access log off (config file)."""
    port = free_port()
    config = tmp / "proxy.yml"
    config.write_text("access_log: false\n")
    argv = [str(Path(sys.executable).parent / "ollama-sidecar"), "proxy", "--upstream", upstream,
            "--listen", f"127.0.0.1:{port}", "--config", str(config), "--log-level", "WARNING", "--loop", loop]
    proc = _spawn(stack, argv, tmp / f"proxy-{loop}.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", "proxy", proc)
    return url, proc


NGINX_CONF = """
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream ollama {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx_available() -> bool:
    return Path(NGINX).exists() or shutil.which("nginx") is not None


def start_nginx(stack: ExitStack, tmp: Path, upstream: str, workers: int) -> tuple[str, subprocess.Popen]:
    """nginx in the foreground (``daemon off``) with a reverse-proxy config like a user's."""
    binary = NGINX if Path(NGINX).exists() else shutil.which("nginx")
    assert binary
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, tmp=tmp, port=port,
                                      upstream=upstream.removeprefix("http://")))
    proc = _spawn(stack, [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log"),
                          "-g", "daemon off;"], tmp / "nginx.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/version", "nginx", proc)
    return url, proc


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
