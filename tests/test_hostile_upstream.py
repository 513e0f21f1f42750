"""A misbehaving Ollama (issue 14): cut streams, resets, long lines, garbage, slow drips, huge bodies.

Every case asserts what the client notices (status, the error in its own protocol) and what
the monitoring records (``error_type``), then that the proxy is still fine: ``/metrics``
answers and parses, and a plain chat request still succeeds.

The upstream is a raw TCP server (:class:`HostileUpstream`) so that each byte and each
pause is under the test's control; it answers the health probe like a well-behaved Ollama.
"""

from __future__ import annotations

import hashlib
import http
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from typing import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ConfigError, parse_config
from tests.conftest import running_proxy
from tests.ollama_fake import FINAL_TIMINGS, chat_chunks, generate_chunks, ndjson, sse_chat

MODEL = "llama3.2"
HELLO = [{"role": "user", "content": "hi"}]
PROBE_HEADER = {"X-Probe": "healthy"}
ERROR_KEYS = {"message", "type", "param", "code"}


# --- "still healthy": shared with test_hostile_clients.py ---------------------------------------

def assert_metrics_parse(url: str, promtool: bool = False) -> list:
    """GET /metrics: 200, strict UTF-8, parsed by Prometheus' parser, every label value printable;
    with ``promtool``, also by Prometheus' own Go parser when it is installed."""
    r = requests.get(f"{url}/metrics", timeout=5)
    assert r.status_code == 200, r.text[:300]
    text = r.content.decode("utf-8")  # strict: invalid UTF-8 fails here
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert samples
    for s in samples:
        for name, value in s.labels.items():
            assert value.isprintable(), f"{s.name}{{{name}={value!r}}} is not printable"
    binary = shutil.which("promtool") if promtool else None
    if binary:  # lint findings (naming advice) are not parse errors
        out = subprocess.run([binary, "check", "metrics"], input=r.content, capture_output=True, timeout=30)
        report = (out.stdout + out.stderr).decode("utf-8", "replace")
        assert "error while linting" not in report and "parsing error" not in report, report
    return samples


def assert_healthy_chat(url: str) -> None:
    r = requests.post(f"{url}/api/chat", json={"model": MODEL, "messages": HELLO, "stream": False},
                      headers=PROBE_HEADER, timeout=10)
    assert r.status_code == 200, r.text[:300]
    reply = r.json()
    assert reply["done"] is True and reply["message"]["content"] == "healthy"


def assert_still_healthy(url: str) -> None:
    assert_metrics_parse(url)
    assert_healthy_chat(url)
    assert_metrics_parse(url, promtool=True)


# --- a raw upstream that misbehaves on purpose ---------------------------------------------------

PROBE_REPLY = dict(chat_chunks(MODEL, [])[-1], message={"role": "assistant", "content": "healthy"})


def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("client went away")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return head, body


def response_head(status: int = 200, ctype: str = "application/json", length: int | None = None) -> bytes:
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s\r\nConnection: close\r\n\r\n"
            % (status, http.HTTPStatus(status).phrase.encode(), ctype.encode(), framing))


def whole(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    return response_head(status, ctype, len(body)) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
NDJSON_HEAD = response_head(200, "application/x-ndjson")
SSE_HEAD = response_head(200, "text/event-stream")


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


Script = Callable[["HostileUpstream", socket.socket, bytes, bytes], None]


class HostileUpstream:
    """Each connection carries one request: the health probe gets a normal non-stream chat
    reply, every other request is handed to ``script(server, conn, head, body)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.requests: list[tuple[bytes, bytes]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            head, body = read_request(conn)
            if b"\r\nx-probe: healthy" in head.lower():
                conn.sendall(whole(200, json.dumps(PROBE_REPLY).encode()))
            else:
                self.requests.append((head, body))
                self.script(self, conn, head, body)
        except OSError:
            pass  # the proxy hung up: expected in several scripts
        finally:
            conn.close()

    def pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the test is over."""
        self.stop.wait(seconds)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def hostile():
    """``with hostile(script, **settings) as (upstream, proxy)``."""
    upstreams: list[HostileUpstream] = []

    def make(script: Script, **settings):
        upstream = HostileUpstream(script)
        upstreams.append(upstream)
        settings.setdefault("upstream", upstream.url)
        settings.setdefault("access_log", False)
        return _Pair(upstream, running_proxy(settings))

    yield make
    for u in upstreams:
        u.close()


class _Pair:
    def __init__(self, upstream, proxy_cm) -> None:
        self.upstream, self.proxy_cm = upstream, proxy_cm

    def __enter__(self):
        return self.upstream, self.proxy_cm.__enter__()

    def __exit__(self, *exc):
        return self.proxy_cm.__exit__(*exc)


# --- what a client can parse ------------------------------------------------------------------

def ndjson_lines(body: bytes) -> list[dict]:
    """Every line of a native stream is a JSON object and the body ends with a newline."""
    assert body.endswith(b"\n"), body[-200:]
    out = []
    for line in body.split(b"\n")[:-1]:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def sse_events(body: bytes) -> list[bytes]:
    """Events split on blank lines; the body ends with one."""
    assert body.endswith(b"\n\n"), body[-200:]
    return body[:-2].split(b"\n\n")


def sse_payloads(body: bytes) -> list:
    """Every event is ``data: <JSON>`` or ``data: [DONE]``: one line each."""
    out = []
    for event in sse_events(body):
        assert event.startswith(b"data: ") and b"\n" not in event, event[:300]
        payload = event[len(b"data: "):]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def assert_openai_stream_error(event: dict, *words: str) -> str:
    err = event["error"]
    assert set(err) >= ERROR_KEYS and err["type"] == "api_error", err
    for word in words:
        assert word in err["message"], err
    return err["message"]


def assert_protocol_error(r: requests.Response, path: str, status: int) -> str:
    """The proxy's (or the upstream's, translated) error in the client's protocol."""
    assert r.status_code == status, (r.status_code, r.content[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    if path.startswith("/v1/"):
        assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
        assert isinstance(doc["error"]["type"], str)
        return doc["error"]["message"]
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"], doc
    return doc["error"]


def requests_total(p, **labels) -> float:
    return p.value("ollama_proxy_requests_total", **labels)


def chat_request(path: str, stream: bool, include_usage: bool | None = None) -> dict:
    body: dict = {"model": MODEL, "messages": HELLO, "stream": stream}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


# === 2. a stream cut in the middle of a line ===================================================

@pytest.mark.parametrize("path,chunks", [("/api/chat", chat_chunks), ("/api/generate", generate_chunks)])
def test_native_stream_cut_mid_line_ends_with_an_error_line_of_its_own(hostile, path, chunks):
    objs = chunks(MODEL, ["The", " sky", " is"])
    complete = ndjson(objs[:2])
    third = ndjson(objs[2:3])
    partial = third[:third.index(b'" is"') + 4]  # '{"model":…,"content":" is"' and no more

    def script(server, conn, head, body):
        conn.sendall(NDJSON_HEAD + chunk(complete))
        server.pause(0.1)  # the proxy relays the complete lines first
        conn.sendall(chunk(partial))
        server.pause(0.1)
        conn.close()  # FIN: no last chunk, no newline, no done line

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json={"model": MODEL, "prompt": "hi", "messages": HELLO}, timeout=10)
        assert r.status_code == 200
        assert r.content.startswith(complete)
        assert partial not in r.content  # only complete lines reach the client
        lines = ndjson_lines(r.content)
        assert lines[:2] == objs[:2] and len(lines) == 3
        assert lines[2]["error"].startswith("upstream Ollama closed the stream early (")
        assert requests_total(p, endpoint=path, error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


@pytest.mark.parametrize("include_usage", [False, True], ids=["proxy_asks_usage", "client_asks_usage"])
@pytest.mark.parametrize("cut", ["mid_data_line", "after_data_line_before_blank_line"])
def test_sse_stream_cut_ends_with_an_error_event_of_its_own(hostile, include_usage, cut):
    events = sse_chat(MODEL, ["The", " sky", " is"], include_usage=True)
    second = events.index(b"\n\n") + 2  # the first event is delivered whole
    third = events.index(b"\n\n", second) + 2
    if cut == "mid_data_line":
        sent = events[:second + 30]
    else:
        sent = events[:third - 1]  # 'data: {...}\n' of the second event, without its blank line
    delivered = [events[:second - 2]]  # the first event, whole

    def script(server, conn, head, body):
        conn.sendall(SSE_HEAD + chunk(events[:second]))
        server.pause(0.1)
        conn.sendall(chunk(sent[second:]))
        server.pause(0.1)
        conn.close()

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}/v1/chat/completions",
                          json=chat_request("/v1/chat/completions", True, include_usage or None), timeout=10)
        assert r.status_code == 200
        assert r.content.startswith(events[:second])
        payloads = sse_payloads(r.content)  # each event parses: nothing glued onto a partial one
        got = sse_events(r.content)
        # what came before the error: the complete events, perhaps with the complete data line
        assert got[:-1] in (delivered, delivered + [events[second:third - 2]]), got[:-1]
        assert_openai_stream_error(payloads[-1], "upstream Ollama closed the stream early (")
        assert requests_total(p, endpoint="/v1/chat/completions", error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


def test_overlong_native_line_cut_mid_way_is_ended_before_the_error_line(hostile):
    first = ndjson(chat_chunks(MODEL, ["a"])[:1])
    partial = b'{"model":"llama3.2","created_at":"x","message":{"role":"assistant","content":"' + b"y" * 5000

    def script(server, conn, head, body):
        conn.sendall(NDJSON_HEAD + chunk(first))
        server.pause(0.05)
        conn.sendall(chunk(partial[:3000]))
        server.pause(0.05)
        conn.sendall(chunk(partial[3000:]))
        server.pause(0.1)
        conn.close()

    with hostile(script, max_line_bytes=1024) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": HELLO}, timeout=10)
        assert r.status_code == 200
        # a line too long to hold is relayed as it arrives, then terminated before the error
        assert r.content.startswith(first + partial + b"\n"), r.content[-300:]
        rest = r.content[len(first + partial + b"\n"):]
        error = ndjson_lines(rest)
        assert len(error) == 1 and error[0]["error"].startswith("upstream Ollama closed the stream early (")
        assert requests_total(p, error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


@pytest.mark.parametrize("include_usage", [False, True], ids=["proxy_asks_usage", "client_asks_usage"])
def test_overlong_sse_line_cut_mid_way_is_ended_before_the_error_event(hostile, include_usage):
    events = sse_chat(MODEL, ["a"], include_usage=True)
    first = events[:events.index(b"\n\n") + 2]
    partial = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"content":"' \
        + b"y" * 5000

    def script(server, conn, head, body):
        conn.sendall(SSE_HEAD + chunk(first))
        server.pause(0.05)
        conn.sendall(chunk(partial[:3000]))
        server.pause(0.05)
        conn.sendall(chunk(partial[3000:]))
        server.pause(0.1)
        conn.close()

    with hostile(script, max_line_bytes=1024) as (upstream, p):
        r = requests.post(f"{p.url}/v1/chat/completions",
                          json=chat_request("/v1/chat/completions", True, include_usage or None), timeout=10)
        assert r.status_code == 200
        assert r.content.startswith(first + partial + b"\n"), r.content[-300:]
        got = sse_events(r.content)
        assert got[0] == first[:-2] and got[1] == partial  # the cut event, ended
        assert len(got) == 3 and got[2].startswith(b"data: ") and b"\n" not in got[2]
        assert_openai_stream_error(json.loads(got[2][len(b"data: "):]), "closed the stream early")
        assert requests_total(p, error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_reset_mid_stream_is_an_interrupted_stream_with_a_parseable_error(hostile, path):
    if path == "/api/chat":
        head_bytes, body = NDJSON_HEAD, ndjson(chat_chunks(MODEL, ["a", "b", "c"]))
        complete = body[:body.index(b"\n") + 1]
    else:
        head_bytes, body = SSE_HEAD, sse_chat(MODEL, ["a", "b", "c"], include_usage=True)
        complete = body[:body.index(b"\n\n") + 2]

    def script(server, conn, head, request_body):
        conn.sendall(head_bytes + chunk(complete))
        server.pause(0.2)  # let the proxy read it before the reset discards anything
        conn.sendall(chunk(body[len(complete):len(complete) + 20]))
        server.pause(0.05)
        reset(conn)

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=chat_request(path, True), timeout=10)
        assert r.status_code == 200 and r.content.startswith(complete)
        if path == "/api/chat":
            lines = ndjson_lines(r.content)
            assert len(lines) == 2
            assert lines[-1]["error"].startswith("upstream Ollama closed the stream early (")
        else:
            payloads = sse_payloads(r.content)
            assert len(payloads) == 2
            assert_openai_stream_error(payloads[-1], "upstream Ollama closed the stream early (")
        assert requests_total(p, endpoint=path, error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


def test_stream_silent_mid_line_times_out_with_an_error_line_of_its_own(hostile):
    objs = chat_chunks(MODEL, ["a", "b"])
    complete = ndjson(objs[:1])

    def script(server, conn, head, body):
        conn.sendall(NDJSON_HEAD + chunk(complete + ndjson(objs[1:2])[:30]))
        server.pause(5)  # silent, mid-line, far longer than timeouts.idle

    with hostile(script, timeouts={"idle": 0.3}) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": HELLO}, timeout=10)
        assert r.status_code == 200
        lines = ndjson_lines(r.content)
        assert lines[:1] == objs[:1] and len(lines) == 2
        assert "sent nothing for 0.3s" in lines[1]["error"]
        assert requests_total(p, error_type="timeout") == 1
        assert_still_healthy(p.url)


# === 3. a complete stream whose final object is longer than max_line_bytes =====================

@pytest.mark.parametrize("piece", [700, 1 << 20], ids=["many_reads", "one_read"])
def test_generate_final_object_longer_than_max_line_bytes_is_a_success_and_counted(hostile, piece):
    final = dict(FINAL_TIMINGS, context=list(range(5000)))  # ~24 KB final line
    body = ndjson(generate_chunks(MODEL, ["The", " sky"], final))
    assert len(body.rstrip(b"\n").rsplit(b"\n", 1)[-1]) > 20 * 1024

    def script(server, conn, head, request_body):
        conn.sendall(NDJSON_HEAD)
        for i in range(0, len(body), piece):
            conn.sendall(chunk(body[i:i + piece]))
            server.pause(0.002)
        conn.sendall(LAST_CHUNK)

    with hostile(script, max_line_bytes=1024) as (upstream, p):
        r = requests.post(f"{p.url}/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=10)
        assert r.status_code == 200
        assert r.content == body  # exactly the upstream's bytes: nothing appended
        assert requests_total(p, endpoint="/api/generate", error_type="none") == 1
        assert requests_total(p, error_type="stream_interrupted") == 0
        assert p.value("ollama_proxy_tokens_total", endpoint="/api/generate", kind="prompt") == 169
        assert p.value("ollama_proxy_tokens_total", endpoint="/api/generate", kind="completion") == 15
        assert_still_healthy(p.url)


# === 4. a 200 that is not the JSON it must be; an error page that is not JSON ==================

HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
             b"<body><h1>Please sign in to the network</h1></body></html>\n")
GARBAGE_200 = {
    "html_page": (HTML_PAGE, "text/html; charset=utf-8"),
    "truncated_json": (b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.19314Z","message":{"role":"assis',
                       "application/json; charset=utf-8"),
    "json_array": (b'[{"model":"llama3.2"}]', "application/json; charset=utf-8"),
    "empty_body": (b"", "application/json; charset=utf-8"),
}


def _request_for(path: str, stream: bool = False) -> dict:
    if path in ("/api/embed", "/v1/embeddings"):
        return {"model": MODEL, "input": "hi"}
    if path == "/api/embeddings":
        return {"model": MODEL, "prompt": "hi"}
    if path == "/api/generate":
        return {"model": MODEL, "prompt": "hi", "stream": stream}
    if path == "/v1/completions":
        return {"model": MODEL, "prompt": "hi", "stream": stream}
    return {"model": MODEL, "messages": HELLO, "stream": stream}


@pytest.mark.parametrize("garbage", list(GARBAGE_200))
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_200_whose_body_is_not_a_json_object_is_a_502_upstream_invalid(hostile, path, garbage):
    body, ctype = GARBAGE_200[garbage]

    def script(server, conn, head, request_body):
        conn.sendall(whole(200, body, ctype))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert_protocol_error(r, path, 502)
        if path.startswith("/v1/"):
            assert r.json()["error"]["type"] == "api_error"
        assert requests_total(p, endpoint=path, error_type="upstream_invalid") == 1
        assert requests_total(p, error_type="none") == 0
        assert_still_healthy(p.url)


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings", "/api/generate", "/v1/completions"])
def test_an_html_200_on_other_instrumented_endpoints_is_a_502_upstream_invalid(hostile, path):
    def script(server, conn, head, request_body):
        conn.sendall(whole(200, HTML_PAGE, "text/html"))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert_protocol_error(r, path, 502)
        assert requests_total(p, endpoint=path, error_type="upstream_invalid") == 1
        assert_still_healthy(p.url)


def test_a_stream_request_answered_by_an_html_200_is_a_502_upstream_invalid(hostile):
    def script(server, conn, head, request_body):
        conn.sendall(whole(200, HTML_PAGE, "text/html"))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": HELLO}, timeout=10)  # stream
        assert_protocol_error(r, "/api/chat", 502)
        assert requests_total(p, endpoint="/api/chat", error_type="upstream_invalid") == 1
        assert_still_healthy(p.url)


WORDS = " ".join(f"w{i:04d}" for i in range(600))  # 3000 characters of text
LB_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
          b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n"
          b"<p>\t" + WORDS.encode() + b"</p>\r\n</body>\r\n</html>\r\n")
LB_TEXT = "502 Bad Gateway 502 Bad Gateway nginx/1.25.3 " + WORDS  # the page's words, whitespace collapsed


def _longest_common_run(message: str, text: str) -> int:
    best = 0
    for i in range(len(message)):
        j = i + best + 1
        while j <= len(message) and message[i:j] in text:
            best = j - i
            j += 1
    return best


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/api/embed"])
def test_an_html_502_from_a_load_balancer_reaches_the_client_in_its_protocol(hostile, path):
    def script(server, conn, head, request_body):
        conn.sendall(whole(502, LB_502, "text/html"))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        message = assert_protocol_error(r, path, 502)  # status kept
        if path.startswith("/v1/"):
            assert r.json()["error"]["type"] == "api_error"
        assert "502 Bad Gateway" in message
        assert "<" not in message and ">" not in message  # no markup
        assert not re.search(r"\s\s|[\r\n\t]", message), message  # whitespace runs collapsed
        run = _longest_common_run(message, LB_TEXT)
        assert 15 <= run <= 200, (run, message)  # the upstream's text, shortened
        assert len(re.findall(r"w\d{4}", message)) <= 200 // 6
        assert requests_total(p, endpoint=path, error_type="upstream_5xx") == 1
        assert_still_healthy(p.url)


def test_a_plain_text_500_reaches_the_client_in_its_protocol(hostile):
    def script(server, conn, head, request_body):
        conn.sendall(whole(500, b"Internal Server Error\n", "text/plain; charset=utf-8"))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}/v1/chat/completions", json=_request_for("/v1/chat/completions"), timeout=10)
        message = assert_protocol_error(r, "/v1/chat/completions", 500)
        assert "Internal Server Error" in message and "\n" not in message
        assert requests_total(p, error_type="upstream_5xx") == 1
        assert_still_healthy(p.url)


@pytest.mark.parametrize("path,body", [
    ("/api/chat", b'{"error":"an error was encountered while running the model"}'),
    ("/v1/chat/completions", b'{"error":{"message":"an error was encountered while running the model",'
                             b'"type":"api_error","param":null,"code":null}}'),
])
def test_an_upstream_json_error_is_relayed_unchanged(hostile, path, body):
    def script(server, conn, head, request_body):
        conn.sendall(whole(500, body, "application/json; charset=utf-8"))

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert r.status_code == 500 and r.content == body
        assert requests_total(p, endpoint=path, error_type="upstream_5xx") == 1
        assert_still_healthy(p.url)


# === 5. slow, silent and huge non-stream bodies ================================================

def _openai_reply() -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1720000000, "model": MODEL,
                       "system_fingerprint": "fp_ollama",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "The sky is blue"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}).encode()


@pytest.mark.parametrize("path,framing", [("/api/chat", "content_length"), ("/v1/chat/completions", "chunked"),
                                          ("/api/chat", "chunked")])
def test_a_slow_but_steady_non_stream_body_is_not_cut_by_the_idle_timeout(hostile, path, framing):
    body = (json.dumps(chat_chunks(MODEL, [])[-1]).encode() if path == "/api/chat" else _openai_reply())
    size = -(-len(body) // 6)
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    assert len(parts) == 6

    def script(server, conn, head, request_body):
        chunked = framing == "chunked"
        conn.sendall(response_head(200, "application/json; charset=utf-8", None if chunked else len(body)))
        for part in parts:  # 6 pieces 0.2 s apart: 1 s in all, longer than idle, each gap shorter
            server.pause(0.2)
            conn.sendall(chunk(part) if chunked else part)
        if chunked:
            conn.sendall(LAST_CHUNK)

    with hostile(script, timeouts={"idle": 0.6}) as (upstream, p):
        started = time.monotonic()
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert time.monotonic() - started > 0.6  # the drip really outlasted timeouts.idle
        assert r.status_code == 200, r.content[:300]
        assert r.content == body
        assert requests_total(p, endpoint=path, error_type="none") == 1
        assert p.value("ollama_proxy_tokens_total", endpoint=path, kind="completion") == (
            15 if path == "/api/chat" else 4)
        assert_still_healthy(p.url)


def test_a_slow_but_steady_stream_is_not_cut_by_the_idle_timeout(hostile):
    body = ndjson(chat_chunks(MODEL, ["a", "b", "c", "d", "e"]))

    def script(server, conn, head, request_body):
        conn.sendall(NDJSON_HEAD)
        for i in range(0, len(body), len(body) // 5 + 1):
            server.pause(0.2)
            conn.sendall(chunk(body[i:i + len(body) // 5 + 1]))
        conn.sendall(LAST_CHUNK)

    with hostile(script, timeouts={"idle": 0.6}) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": HELLO}, timeout=10)
        assert r.status_code == 200 and r.content == body
        assert requests_total(p, error_type="none") == 1
        assert_still_healthy(p.url)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_non_stream_body_silent_longer_than_idle_is_a_504_timeout(hostile, path):
    body = json.dumps(chat_chunks(MODEL, [])[-1]).encode() if path == "/api/chat" else _openai_reply()

    def script(server, conn, head, request_body):
        conn.sendall(response_head(200, "application/json", len(body)) + body[:40])
        server.pause(5)  # silent mid-body
        conn.sendall(body[40:])

    with hostile(script, timeouts={"idle": 0.3}) as (upstream, p):
        started = time.monotonic()
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert time.monotonic() - started < 4  # the proxy gave up, not the upstream
        message = assert_protocol_error(r, path, 504)
        assert "timeouts.idle" in message
        assert requests_total(p, endpoint=path, error_type="timeout") == 1
        assert_still_healthy(p.url)


def test_a_non_stream_body_cut_mid_way_is_a_502_in_protocol(hostile):
    body = json.dumps(chat_chunks(MODEL, [])[-1]).encode()

    def script(server, conn, head, request_body):
        conn.sendall(response_head(200, "application/json", len(body)) + body[:40])
        server.pause(0.1)
        reset(conn)

    with hostile(script) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json=_request_for("/api/chat"), timeout=10)
        assert_protocol_error(r, "/api/chat", 502)
        assert requests_total(p, endpoint="/api/chat", error_type="stream_interrupted") == 1
        assert_still_healthy(p.url)


def _huge_embed_reply(path: str) -> bytes:
    vector = [round((i % 997) * 0.001234567, 9) for i in range(80_000)]
    if path == "/api/embed":
        doc = {"model": MODEL, "embeddings": [vector], "total_duration": 14143917, "prompt_eval_count": 8}
    else:
        doc = {"object": "list", "data": [{"object": "embedding", "embedding": vector, "index": 0}],
               "model": MODEL, "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) > 800_000
    return body


@pytest.mark.parametrize("path,framing", [("/api/embed", "content_length"), ("/v1/embeddings", "chunked")])
def test_a_reply_longer_than_max_parsed_reply_bytes_is_relayed_byte_identical_and_counted(hostile, path,
                                                                                           framing):
    body = _huge_embed_reply(path)

    def script(server, conn, head, request_body):
        if framing == "chunked":
            conn.sendall(response_head(200, "application/json; charset=utf-8"))
            for i in range(0, len(body), 65536):
                conn.sendall(chunk(body[i:i + 65536]))
            conn.sendall(LAST_CHUNK)
        else:
            conn.sendall(response_head(200, "application/json; charset=utf-8", len(body)) + body)

    with hostile(script, max_parsed_reply_bytes=4096) as (upstream, p):
        r = requests.post(f"{p.url}{path}", json=_request_for(path), timeout=10)
        assert r.status_code == 200
        assert r.content == body  # byte-identical
        assert p.value("ollama_proxy_unparsed_lines_total", endpoint=path, reason="too_long") == 1
        assert requests_total(p, endpoint=path, error_type="none") == 1
        assert_still_healthy(p.url)


def test_a_reply_longer_than_max_parsed_reply_bytes_is_not_held_whole(hostile):
    body = b'{"model":"llama3.2","embeddings":[[' + b"0.123456789," * 700_000 + b'0.5]]}'  # ~8 MB
    digest = hashlib.sha256(body).hexdigest()

    def script(server, conn, head, request_body):
        conn.sendall(response_head(200, "application/json; charset=utf-8", len(body)))
        view = memoryview(body)
        for i in range(0, len(body), 65536):
            conn.sendall(view[i:i + 65536])

    with hostile(script, max_parsed_reply_bytes=4096) as (upstream, p):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            with requests.post(f"{p.url}/api/embed", json=_request_for("/api/embed"), stream=True,
                               timeout=30) as r:
                assert r.status_code == 200
                received, seen = hashlib.sha256(), 0
                for piece in r.iter_content(65536):  # read and dropped: the test holds nothing
                    received.update(piece)
                    seen += len(piece)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert seen == len(body) and received.hexdigest() == digest
        # Holding the reply whole (as bytes, plus the join) would take >= 8 MB in this process.
        assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for an {len(body) / 1e6:.1f} MB reply"
        assert p.value("ollama_proxy_unparsed_lines_total", endpoint="/api/embed", reason="too_long") == 1
        assert_still_healthy(p.url)


def test_a_reply_within_max_parsed_reply_bytes_is_still_checked_and_parsed(hostile):
    body = json.dumps(dict(chat_chunks(MODEL, [])[-1], eval_count=7)).encode()

    def script(server, conn, head, request_body):
        garbage = b"<html>" + b"x" * 2000 + b"</html>" if b'"garbage"' in request_body else None
        conn.sendall(whole(200, garbage, "text/html") if garbage else whole(200, body))

    with hostile(script, max_parsed_reply_bytes=4096) as (upstream, p):
        r = requests.post(f"{p.url}/api/chat", json=_request_for("/api/chat"), timeout=10)
        assert r.status_code == 200 and r.content == body
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 7
        r = requests.post(f"{p.url}/api/chat", json=dict(_request_for("/api/chat"), options={"garbage": 1}),
                          timeout=10)
        assert_protocol_error(r, "/api/chat", 502)
        assert requests_total(p, error_type="upstream_invalid") == 1
        assert p.value("ollama_proxy_unparsed_lines_total", reason="too_long") == 0
        assert_still_healthy(p.url)


def test_max_parsed_reply_bytes_setting_has_a_default_and_a_minimum():
    assert parse_config({}, environ={}).max_parsed_reply_bytes == 16 * 1024 * 1024
    assert parse_config({"max_parsed_reply_bytes": 1024}, environ={}).max_parsed_reply_bytes == 1024
    with pytest.raises(ConfigError, match="max_parsed_reply_bytes"):
        parse_config({"max_parsed_reply_bytes": 1023}, environ={})
