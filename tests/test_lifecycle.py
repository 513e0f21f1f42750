"""The proxy's life as a process: how it stops, what it says at start-up, how it shrugs off
malformed requests, and what it tidies up from a previous life.

The stop and start-up tests run ``ollama-sidecar proxy`` as a real process (signals, the
listener and the exit status are what a supervisor sees) in front of a small threaded fake
Ollama that streams slowly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from proxy.app import DRAIN
from tests.conftest import free_port, running_proxy, wait_for
from tests.ollama_fake import chat_chunks

MODEL = "llama3.2"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}



# --- a threaded fake Ollama whose /api/chat streams slowly --------------------------------------

class SlowOllama:
    """GET /api/version, and POST /api/chat streaming ``lines`` NDJSON lines ``delay`` seconds
    apart (the last one ``done: true``); ``"stream": false`` answers at once."""

    def __init__(self, lines: int, delay: float) -> None:
        self.lines = lines
        self.delay = delay
        self.started = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._json({"version": "0.9.0"})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                words = [f"w{i} " for i in range(owner.lines - 1)]
                chunks = chat_chunks(body.get("model", MODEL), words)
                if body.get("stream") is False:
                    final = dict(chunks[-1], message={"role": "assistant", "content": "".join(words)})
                    self._json(final)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                owner.started.set()
                try:
                    for i, chunk in enumerate(chunks):
                        if i:
                            time.sleep(owner.delay)
                        line = json.dumps(chunk, separators=(",", ":")).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass  # the proxy went away: stop generating

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def slow_ollama(lines: int, delay: float) -> Iterator[SlowOllama]:
    upstream = SlowOllama(lines, delay)
    try:
        yield upstream
    finally:
        upstream.close()


# --- the proxy as a process ---------------------------------------------------------------------

def sidecar_command() -> list[str]:
    script = Path(sys.executable).with_name("ollama-sidecar")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]


class ProxyProcess:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def exited_within(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


@contextmanager
def proxy_process(tmp_path: Path, settings: dict[str, Any], listen_host: str = "127.0.0.1",
                  extra_args: tuple[str, ...] = ()) -> Iterator[ProxyProcess]:
    """``ollama-sidecar proxy --config FILE --listen HOST:PORT``, up and answering /healthz.
    Always killed afterwards; its stderr is in a file (no pipe to fill up)."""
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump(dict({"access_log": False}, **settings)))
    port = free_port()
    log = tmp_path / "proxy-stderr.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OLLAMA_SIDECAR_ADMIN_TOKEN", None)
    with open(log, "wb") as err:
        proc = subprocess.Popen([*sidecar_command(), "proxy", "--config", str(cfg),
                                 "--listen", f"{listen_host}:{port}", *extra_args],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    p = ProxyProcess(proc, port, log)
    try:
        def up() -> bool:
            assert proc.poll() is None, f"the proxy exited at start ({proc.returncode}):\n{p.stderr()}"
            try:
                return requests.get(f"{p.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_for(up, 20, "the proxy to answer /healthz")
        yield p
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


class StreamReader(threading.Thread):
    """A client reading one /api/chat stream line by line, in the background."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lines: list[bytes] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.first_line = threading.Event()

    def run(self) -> None:
        try:
            with requests.post(f"{self.url}/api/chat", json=CHAT, stream=True, timeout=60) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.first_line.set()
        except BaseException as exc:  # a cut stream: what the client got so far is what matters
            self.error = exc
        finally:
            self.first_line.set()

    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def got_done(self) -> bool:
        return any(o.get("done") is True for o in self.objects())


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


# --- 9. graceful stop ----------------------------------------------------------------------------

def test_sigterm_lets_a_stream_in_flight_finish_refuses_new_connections_and_exits_0(tmp_path):
    # 66 lines 0.2 s apart: 13 s, longer than aiohttp's own graceful stop lets a handler run
    # (shutdown_timeout 5 s to finish, then 5 s more after cancelling it: 10 s in all).
    with slow_ollama(lines=66, delay=0.2) as upstream, \
            proxy_process(tmp_path, {"upstream": upstream.url}) as p:
        client = StreamReader(p.url)
        client.start()
        assert client.first_line.wait(10) and client.lines, f"no stream started: {client.error!r}"
        p.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(p.port), 3, "the listener to close after SIGTERM")
        assert p.proc.poll() is None  # still serving the stream in flight
        client.join(30)
        assert not client.is_alive()
        assert client.status == 200 and client.error is None, repr(client.error)
        objects = client.objects()
        assert len(objects) == 66 and objects[-1]["done"] is True  # complete, with its final line
        assert [o["message"]["content"] for o in objects[:-1]] == [f"w{i} " for i in range(65)]
        assert p.exited_within(10) == 0, p.stderr()


def test_shutdown_timeout_cuts_a_stream_that_runs_too_long(tmp_path):
    with slow_ollama(lines=200, delay=0.2) as upstream, \
            proxy_process(tmp_path, {"upstream": upstream.url, "timeouts": {"shutdown": 1}}) as p:
        client = StreamReader(p.url)
        client.start()
        assert client.first_line.wait(10) and client.lines, f"no stream started: {client.error!r}"
        p.proc.send_signal(signal.SIGTERM)
        code = p.exited_within(10)  # the stream alone would take 40 s
        assert code is not None, "the proxy kept draining past timeouts.shutdown"
        client.join(10)
        assert not client.is_alive()
        assert not client.got_done()  # it was cut, not finished
        assert len(client.lines) < 200


def test_a_second_sigterm_while_draining_exits_at_once(tmp_path):
    with slow_ollama(lines=200, delay=0.2) as upstream, \
            proxy_process(tmp_path, {"upstream": upstream.url}) as p:
        client = StreamReader(p.url)
        client.start()
        assert client.first_line.wait(10) and client.lines, f"no stream started: {client.error!r}"
        p.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(p.port), 3, "the listener to close after SIGTERM")
        seen = len(client.lines)
        wait_for(lambda: len(client.lines) >= seen + 3, 5, "the stream to keep flowing while draining")
        assert p.proc.poll() is None  # draining, not gone
        p.proc.send_signal(signal.SIGTERM)
        assert p.exited_within(3) is not None, "a second SIGTERM did not stop the proxy"
        client.join(10)
        assert not client.got_done()


def test_draining_makes_readyz_answer_503(tmp_path):
    with slow_ollama(lines=2, delay=0) as upstream, \
            running_proxy({"upstream": upstream.url, "access_log": False}) as p:
        r = requests.get(f"{p.url}/readyz", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ready"

        async def begin() -> None:
            p.app[DRAIN].begin()

        asyncio.run_coroutine_threadsafe(begin(), p.loop).result(5)
        r = requests.get(f"{p.url}/readyz", timeout=5)
        assert r.status_code == 503
        assert r.json()["status"] == "draining"


# --- 10. warn when the data plane is open to the network -----------------------------------------

def _api_keys_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "auth.api_keys" in line]


def _exercise(p: ProxyProcess) -> None:
    """A few requests, so a warning logged per request (not once) would show."""
    for _ in range(3):
        assert requests.get(f"{p.url}/metrics", timeout=5).status_code == 200
        assert requests.post(f"{p.url}/api/chat", json=dict(CHAT, stream=False), timeout=10).status_code == 200


def _stop(p: ProxyProcess) -> str:
    p.proc.send_signal(signal.SIGTERM)
    if p.exited_within(10) is None:
        p.proc.kill()
        p.proc.wait(10)
    return p.stderr()


def test_listening_beyond_loopback_without_api_keys_warns_once_naming_the_setting(tmp_path):
    with slow_ollama(lines=2, delay=0) as upstream, \
            proxy_process(tmp_path, {"upstream": upstream.url}, listen_host="0.0.0.0") as p:
        _exercise(p)
        stderr = _stop(p)
    lines = _api_keys_lines(stderr)
    assert len(lines) == 1, stderr
    assert " WARNING " in lines[0], lines[0]


@pytest.mark.parametrize("listen_host, settings", [
    ("127.0.0.1", {}),
    ("0.0.0.0", {"auth": {"api_keys": ["k-123"]}}),
], ids=["loopback", "non-loopback-with-api-keys"])
def test_no_open_to_the_network_warning_when_it_does_not_apply(tmp_path, listen_host, settings):
    with slow_ollama(lines=2, delay=0) as upstream, \
            proxy_process(tmp_path, dict(settings, upstream=upstream.url), listen_host=listen_host) as p:
        if not settings:
            _exercise(p)
        stderr = _stop(p)
    assert "proxy listening on" in stderr  # the process did log at start-up
    assert _api_keys_lines(stderr) == [], stderr


# --- 11. malformed HTTP requests ----------------------------------------------------------------

MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"G\x00T /api/tags HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
]


def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        reply = b""
        while b"\r\n" not in reply:
            piece = s.recv(65536)
            if not piece:
                break
            reply += piece
        return reply


def test_malformed_requests_get_400_and_a_rate_limited_info_line_not_a_traceback(tmp_path):
    with slow_ollama(lines=2, delay=0) as upstream, \
            proxy_process(tmp_path, {"upstream": upstream.url}) as p:
        for i in range(50):
            data = MALFORMED[i % len(MALFORMED)]
            status_line = _send_raw(p.port, data).split(b"\r\n", 1)[0]
            assert re.match(rb"HTTP/1\.[01] 400 ", status_line), (data, status_line)
        # The proxy is unharmed: /metrics parses and a normal request succeeds.
        from prometheus_client.parser import text_string_to_metric_families
        r = requests.get(f"{p.url}/metrics", timeout=5)
        assert r.status_code == 200 and list(text_string_to_metric_families(r.text))
        r = requests.post(f"{p.url}/api/chat", json=dict(CHAT, stream=False), timeout=10)
        assert r.status_code == 200 and r.json()["done"] is True
        stderr = _stop(p)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not [line for line in stderr.splitlines() if " ERROR " in line], stderr[-3000:]
    http_lines = [line for line in stderr.splitlines() if " ollama_sidecar.http " in line]
    assert 1 <= len(http_lines) <= 2, stderr[-3000:]  # 50 bad requests in a few seconds: one line, maybe two
    assert all(" INFO " in line for line in http_lines), http_lines


# --- 13. stale temporary state files ------------------------------------------------------------

ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}
STALE = [".state.json.abc12345", ".state.json.k2_9xq0z", ".state.json.tmpAB_cd"]


def _proxy_settings(tmp_path: Path, upstream: str) -> dict[str, Any]:
    return {"upstream": upstream, "access_log": False, "routes": {"chat": dict(ROUTE)},
            "state_file": str(tmp_path / "state.json")}


def test_stale_state_temp_files_are_removed_at_start_up_and_nothing_else(tmp_path):
    with slow_ollama(lines=2, delay=0) as upstream:
        settings = _proxy_settings(tmp_path, upstream.url)
        with running_proxy(settings) as p:  # a previous life: rolled back, state saved
            r = requests.post(f"{p.url}/admin/routes/chat/rollback", json={"reason": "bad"}, timeout=5)
            assert r.status_code == 200 and r.json()["rolled_back"] is True
        state = (tmp_path / "state.json").read_bytes()
        for name in STALE:  # what kill -9 during a write leaves behind
            (tmp_path / name).write_text('{"version": 1, "rou')
        keep = {"notes.txt": "mine", ".other.json.abc12345": "another file's temp",
                "state.json.corrupt-1700000000": "{half", ".state.json": "not a temp name"}
        for name, text in keep.items():
            (tmp_path / name).write_text(text)

        with running_proxy(settings) as p:
            r = requests.get(f"{p.url}/admin/routes/chat", timeout=5).json()
            assert r["rolled_back"] is True and r["reason"] == "admin:bad"  # the state still holds
            assert p.value("ollama_proxy_state_errors_total") == 0
            leftover = sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(".state.json."))
            assert leftover == [], leftover

    assert (tmp_path / "state.json").read_bytes() == state
    for name, text in keep.items():
        assert (tmp_path / name).read_text() == text, name


def test_stale_temp_files_are_removed_even_before_the_first_state_was_written(tmp_path):
    # kill -9 during the very first write: a temp file, no state file yet.
    (tmp_path / ".state.json.abc12345").write_text('{"version": 1')
    with slow_ollama(lines=2, delay=0) as upstream:
        with running_proxy(_proxy_settings(tmp_path, upstream.url)) as p:
            r = requests.get(f"{p.url}/admin/routes/chat", timeout=5).json()
            assert r["rolled_back"] is False and r["weight"] == 50
    assert not (tmp_path / ".state.json.abc12345").exists()
