"""``ollama-sidecar exporter`` as a user starts it: a real process, real HTTP, real NVML
library (on a machine without a GPU, ``nvmlInit`` really fails)."""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
import requests

from exporter import server
from proxy import __version__
from tests.test_exporter import series, serve, threaded_server, value

ROOT = Path(__file__).resolve().parent.parent
STARTUP = re.compile(r"serving (http://\S+)/metrics")


def real_nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """An exporter process; its log lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", server.LISTEN_ENV)}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "exporter", "--listen", "127.0.0.1:0", *args],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_startup()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _wait_for_startup(self) -> str:
        while True:
            line = self._queue.get(timeout=30)
            if line is None:
                raise AssertionError("exporter exited before serving:\n" + "".join(self.lines))
            self.lines.append(line)
            if match := STARTUP.search(line):
                return match.group(1)

    def log(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "".join(self.lines)
            if line is not None:
                self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def start() -> Iterator:
    running: list[Running] = []

    def start_(*args: str, env: dict[str, str] | None = None) -> Running:
        running.append(Running(*args, env=env))
        return running[-1]

    yield start_
    for proc in running:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=10)


def test_real_nvml_and_no_ollama_still_serves(start):
    exporter = start("--ollama", f"http://127.0.0.1:{closed_port()}", "--timeout", "0.5", "--cache", "0")
    for _ in range(2):
        reply = requests.get(exporter.url + "/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.text
    assert value(text, "ollama_up") == 0
    assert value(text, "ollama_scrape_errors_total", endpoint="ps") == 2
    assert value(text, "ollama_exporter_build_info", version=__version__) == 1
    if real_nvml_works():
        assert value(text, "nvml_up") == 1 and series(text, "gpu_info")
    else:  # this project's CI: no GPU, the real library raises NVMLError_LibraryNotFound
        assert value(text, "nvml_up") == 0 and series(text, "gpu_info") == []
        assert exporter.log().count("NVML cannot be initialised") == 1  # once, not per scrape
    assert requests.get(exporter.url + "/healthz", timeout=10).text == "ok\n"
    assert requests.get(exporter.url + "/nope", timeout=10).status_code == 404
    assert exporter.stop() == 0
    assert "stopping" in exporter.log()


def test_ollama_host_is_honoured_and_openmetrics_negotiated(start):
    ollama = threaded_server()
    try:
        serve(ollama)
        exporter = start("--no-nvml", env={"OLLAMA_HOST": f"127.0.0.1:{ollama.port}"})
        assert f"Ollama http://127.0.0.1:{ollama.port}" in exporter.log()
        text = requests.get(exporter.url + "/metrics", timeout=10).text
        assert value(text, "ollama_up") == 1
        assert value(text, "ollama_model_vram_ratio", model="qwen2.5:72b") == 0.5
        assert value(text, "nvml_up") is None  # --no-nvml: no GPU families at all
        reply = requests.get(exporter.url + "/metrics", timeout=10,
                             headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        assert "# UNIT ollama_model_vram_bytes bytes" in reply.text
        assert exporter.stop() == 0
    finally:
        ollama.stop()


def test_listen_address_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "exporter", "--listen", f"127.0.0.1:{port}", "--no-nvml"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server.add_arguments(parser, "exporter")
    return parser.parse_args(argv)


def test_options_and_defaults(monkeypatch):
    monkeypatch.delenv(server.LISTEN_ENV, raising=False)
    args = parse([])
    assert (args.listen, args.timeout, args.cache, args.nvml, args.ollama) == (
        ("127.0.0.1", 9101), 3.0, 1.0, True, None)
    monkeypatch.setenv(server.LISTEN_ENV, "0.0.0.0:9200")
    assert parse([]).listen == ("0.0.0.0", 9200)
    assert parse(["--listen", "127.0.0.1:9300"]).listen == ("127.0.0.1", 9300)


@pytest.mark.parametrize("argv", [["--timeout", "0"], ["--cache", "-1"], ["--listen", "nonsense"]])
def test_bad_options_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err
