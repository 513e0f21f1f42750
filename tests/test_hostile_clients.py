"""Hostile client input (issue 14): bad bytes in every label source, odd request targets,
deeply nested JSON on every JSON endpoint, oversized headers.

Each case asserts the status and the error in the client's protocol, the ``error_type``
the monitoring records, that nothing reached an upstream it should not, and then that the
proxy is still fine: ``/metrics`` answers and parses, and a plain chat request succeeds.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import running_proxy
from tests.ollama_fake import chat_chunks
from tests.test_hostile_upstream import PROBE_REPLY, assert_metrics_parse, assert_protocol_error, assert_still_healthy

MODEL = "llama3.2"
HELLO = [{"role": "user", "content": "hi"}]
TOKEN = "hostile-test-admin-token"
ROUTES = {"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 10}}


# --- a fake Ollama that answers any model ---------------------------------------------------------

def _ollama(request: Request) -> Response:
    try:
        body = json.loads(request.get_data())
    except (ValueError, RecursionError):  # what Ollama answers a body it cannot decode
        return Response(json.dumps({"error": "invalid character in request body"}), status=400,
                        content_type="application/json")
    model = body.get("model") if isinstance(body, dict) else None
    if request.path.startswith("/v1/"):
        reply: Any = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1720000000, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    elif request.path == "/api/show":
        reply = {"details": {"family": "qwen3"}, "capabilities": ["completion"]}
    else:
        reply = dict(chat_chunks(model, [])[-1], message={"role": "assistant", "content": "ok"})
    return Response(json.dumps(reply), content_type="application/json")


@pytest.fixture
def ollama(httpserver):
    """The fake Ollama: answers the health probe first, then any request."""
    httpserver.expect_request("/api/chat", headers={"X-Probe": "healthy"}).respond_with_json(PROBE_REPLY)
    httpserver.expect_request("/api/tags").respond_with_json({"models": []})
    httpserver.expect_request(re.compile(r"^/(api|v1)/(chat|generate|embed|embeddings|show|completions|"
                                         r"chat/completions)$")).respond_with_handler(_ollama)
    httpserver.expect_request(re.compile(".*")).respond_with_json({"models": []})
    return httpserver


def forwarded(server: HTTPServer) -> list[Request]:
    """Requests that reached ``server``, the health probe left out."""
    return [req for req, _ in server.log if req.headers.get("X-Probe") != "healthy"]


@pytest.fixture(scope="module")
def _other_server():
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def other_host(_other_server):
    """A second server: the host an absolute-form target names. It must never hear from the proxy."""
    _other_server.clear()
    _other_server.expect_request(re.compile(".*")).respond_with_json({"models": [{"name": "stolen"}]})
    yield _other_server
    _other_server.clear()


def proxy(ollama: HTTPServer, environ: dict[str, str] | None = None, **settings: Any):
    settings.setdefault("upstream", ollama.url_for("/").rstrip("/"))
    settings.setdefault("access_log", False)
    return running_proxy(settings, environ=environ)


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_exchange(url: str, data: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send bytes as they are; read one HTTP response."""
    with socket.create_connection(_addr(url), timeout=10) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode())
        resp.begin()
        return resp.status, resp.headers, resp.read()


def post_raw(url: str, path: str, body: bytes, headers: dict[str, bytes | str] | None = None):
    """POST with header values sent as raw bytes (http.client allows any byte but CR/LF)."""
    conn = http.client.HTTPConnection(*_addr(url), timeout=10)
    try:
        conn.putrequest("POST", path)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def label_values(p, metric: str, label: str, **where: str) -> set[str]:
    return {dict(lbls)[label] for (name, lbls), _ in p.scrape().items()
            if name == metric and all(dict(lbls).get(k) == v for k, v in where.items())}


def chat_body(path: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "stream": False, **extra}


# === 1. labels from client input are valid, printable UTF-8 ======================================

HEADER_CASES = {
    # raw bytes on the wire -> the session label
    "latin1_byte": (b"caf\xe9", "caf\ufffd"),
    "two_undecodable_bytes": (b"\xff\xfe", "\ufffd\ufffd"),
    "utf8_c1_control": ("a\u0085b".encode(), "a\ufffdb"),
    "utf8_line_separator": ("a\u2028b".encode(), "a\ufffdb"),
    "valid_utf8_is_kept": ("café ☕".encode(), "café ☕"),
    "long_with_a_bad_byte": (b"x" * 255 + b"\xe9" + b"y" * 7_500, "x" * 255 + "\ufffd"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
@pytest.mark.parametrize("header", ["X-Session-ID", "X-User-ID"])
def test_session_header_bytes_become_a_printable_utf8_label(ollama, header, case):
    raw, label = HEADER_CASES[case]
    with proxy(ollama, session_label="raw") as p:  # the id itself as label: cleaned
        status, _, body = post_raw(p.url, "/api/chat", json.dumps(chat_body("/api/chat")).encode(), {header: raw})
        assert status == 200 and json.loads(body)["message"]["content"] == "ok"
        assert_metrics_parse(p.url)  # 200 and parseable, right after the request
        assert label_values(p, "ollama_proxy_requests_total", "session", endpoint="/api/chat") == {label}
        assert label_values(p, "ollama_proxy_tokens_total", "session", endpoint="/api/chat") == {label}
        assert_still_healthy(p.url)


BODY_USER_CASES = {
    # the JSON text of the `user` field -> the session label
    "lone_high_surrogate": (r'"\ud800"', "\ufffd"),
    "lone_low_surrogate": (r'"a\udce9b"', "a\ufffdb"),
    "reversed_surrogate_pair": (r'"\ude00\ud83d"', "\ufffd\ufffd"),
    "nul": (r'"a\u0000b"', "a\ufffdb"),
    "newline": (r'"a\nb"', "a\ufffdb"),
    "escape_sequence": (r'"a\u001b[31mb"', "a\ufffd[31mb"),
    "delete": (r'"a\u007fb"', "a\ufffdb"),
    "valid_surrogate_pair_is_kept": (r'"\ud83d\ude00"', "\U0001F600"),
    "valid_non_ascii_is_kept": ('"café"', "café"),
    "a_megabyte": ('"' + "u" * 1_000_000 + '"', "u" * 256),
}


@pytest.mark.parametrize("case", list(BODY_USER_CASES))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_body_user_becomes_a_printable_utf8_label(ollama, path, case):
    user, label = BODY_USER_CASES[case]
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": false, "user": %s}'
            % (MODEL, user)).encode()
    with proxy(ollama, session_label="raw") as p:  # the id itself as label: cleaned
        status, _, reply = post_raw(p.url, path, body)
        assert status == 200, reply[:300]
        assert_metrics_parse(p.url)
        assert label_values(p, "ollama_proxy_requests_total", "session", endpoint=path) == {label}
        assert label_values(p, "ollama_proxy_tokens_total", "session", endpoint=path) == {label}
        assert_still_healthy(p.url)


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_by_default_any_session_id_becomes_a_short_hex_label(ollama, case):
    raw, _ = HEADER_CASES[case]
    with proxy(ollama) as p:
        status, _, _ = post_raw(p.url, "/api/chat", json.dumps(chat_body("/api/chat")).encode(), {"X-Session-ID": raw})
        assert status == 200
        (label,) = label_values(p, "ollama_proxy_requests_total", "session", endpoint="/api/chat")
        assert re.fullmatch(r"[0-9a-f]{12}", label), label
        assert_still_healthy(p.url)


def test_metrics_answers_whatever_a_series_holds(ollama):
    # Defence in depth: even a series created with an unencodable label value (as a
    # future label source might) must not take /metrics down.
    with proxy(ollama) as p:
        p.metrics.requests.labels("/api/chat", "none", "direct", "x\udce9", "caf\udce9\ud800", "none").inc()
        samples = assert_metrics_parse(p.url, promtool=True)
        assert any(s.name == "ollama_proxy_build_info" for s in samples)
        assert any(s.name == "ollama_proxy_requests_total" and s.labels.get("session", "").startswith("caf")
                   for s in samples)
        assert_still_healthy(p.url)


def test_sticky_routing_uses_the_raw_session_value_not_its_label(ollama):
    # b"k3\xe9" and b"k3\xff" share the label "k3\ufffd" but are different sessions: each
    # keeps its own arm, so with a 50 % canary some pair must split.
    routes = {"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}}
    body = json.dumps(chat_body("/api/chat", model="chat")).encode()
    with proxy(ollama, routes=routes, session_label="raw") as p:
        arms: dict[bytes, str] = {}
        for i in range(16):
            for raw in (b"k%d\xe9" % i, b"k%d\xff" % i):
                for _ in range(2):
                    status, headers, _ = post_raw(p.url, "/api/chat", body, {"X-Session-ID": raw})
                    assert status == 200
                    assert arms.setdefault(raw, headers["X-Sidecar-Arm"]) == headers["X-Sidecar-Arm"]  # sticky
        assert any(arms[b"k%d\xe9" % i] != arms[b"k%d\xff" % i] for i in range(16)), arms
        assert label_values(p, "ollama_proxy_requests_total", "session", route="chat") == {
            f"k{i}\ufffd" for i in range(16)}
        assert_still_healthy(p.url)


@pytest.mark.parametrize("model", ["bad\u0001name", "bad\nname", "bad\u007fname", "bad\u0085name", "\u0000"])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_model_names_with_control_characters_are_a_400_in_protocol(ollama, path, model):
    with proxy(ollama) as p:
        status, headers, body = post_raw(p.url, path, json.dumps(chat_body(path, model=model)).encode())
        assert status == 400 and headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        if path.startswith("/v1/"):
            assert set(doc["error"]) == {"message", "type", "param", "code"}
            assert doc["error"]["type"] == "invalid_request_error"
        else:
            assert isinstance(doc["error"], str) and doc["error"]
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type="bad_request") == 1
        assert forwarded(ollama) == []
        assert_still_healthy(p.url)


@pytest.mark.parametrize("raw_model,label", [
    (rb'"llama\ud800"', "llama\ufffd:latest"),  # lone surrogate
    (rb'"llama\u2028x"', "llama\ufffdx:latest"),  # a separator, not printable
    (b'"caf\xe9"', "caf\ufffd:latest"),  # not UTF-8 at all
])
def test_unprintable_or_undecodable_model_names_never_reach_a_label_raw(ollama, raw_model, label):
    # Either refused (400 in protocol) or served with a clean label: never a 500, never a
    # label /metrics cannot print.
    body = b'{"model": ' + raw_model + b', "messages": [], "stream": false}'
    with proxy(ollama) as p:
        status, _, reply = post_raw(p.url, "/api/chat", body)
        assert status in (200, 400), reply[:300]
        models = label_values(p, "ollama_proxy_requests_total", "model", endpoint="/api/chat")
        if status == 400:
            assert isinstance(json.loads(reply)["error"], str)
            assert p.value("ollama_proxy_requests_total", endpoint="/api/chat", error_type="bad_request") == 1
        else:
            assert models == {label}
        assert_still_healthy(p.url)


def test_printable_model_names_with_exposition_syntax_are_escaped_not_mangled(ollama):
    model = 'we"ird\\name{x="1"}'
    with proxy(ollama) as p:
        r = requests.post(f"{p.url}/api/chat", json=chat_body("/api/chat", model=model), timeout=10)
        assert r.status_code == 200
        assert label_values(p, "ollama_proxy_requests_total", "model", endpoint="/api/chat") == {f"{model}:latest"}
        assert_still_healthy(p.url)


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x00b", b"a\x1b[31mb"])
def test_ascii_control_bytes_in_a_header_are_refused_and_not_forwarded(ollama, value):
    with proxy(ollama) as p:
        status, _, _ = post_raw(p.url, "/api/chat", json.dumps(chat_body("/api/chat")).encode(),
                                {"X-Session-ID": value})
        assert status == 400
        assert forwarded(ollama) == []
        assert_still_healthy(p.url)


# === 6. request targets that are not a path ========================================================

def _targets(other: int, upstream: int) -> dict[str, bytes]:
    return {
        "absolute_form_other_host": b"GET http://127.0.0.1:%d/api/tags HTTP/1.1" % other,
        "absolute_form_upstream_itself": b"GET http://127.0.0.1:%d/api/tags HTTP/1.1" % upstream,
        "absolute_form_https": b"GET https://127.0.0.1:%d/api/tags HTTP/1.1" % other,
        "absolute_form_no_path": b"GET http://127.0.0.1:%d HTTP/1.1" % other,
        "absolute_form_instrumented": b"POST http://127.0.0.1:%d/api/chat HTTP/1.1" % other,
        "asterisk_form": b"OPTIONS * HTTP/1.1",
        "authority_form": b"CONNECT 127.0.0.1:%d HTTP/1.1" % other,
    }


TARGETS = list(_targets(1, 2))


@pytest.mark.parametrize("target", TARGETS)
def test_a_target_that_is_not_a_path_is_a_400_and_goes_nowhere(ollama, other_host, target):
    line = _targets(other_host.port, ollama.port)[target]
    payload = json.dumps(chat_body("/api/chat")).encode() if line.startswith(b"POST") else b""
    request = (line + b"\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               + (b"Content-Length: %d\r\n" % len(payload) if payload else b"")
               + b"Connection: close\r\n\r\n" + payload)
    with proxy(ollama) as p:
        status, headers, body = raw_exchange(p.url, request)
        assert status == 400, body[:300]
        assert headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]  # Ollama shape
        assert p.value("ollama_proxy_requests_total", error_type="bad_request") == 1
        assert forwarded(ollama) == [] and other_host.log == []
        assert_still_healthy(p.url)
    assert other_host.log == []


@pytest.mark.parametrize("line", [b"GET api/tags HTTP/1.1", b"GET * HTTP/1.1", b"GET /api/ta\xffgs HTTP/1.1",
                                  b"GET /api/tags?x=\xff HTTP/1.1"])
def test_targets_the_http_parser_refuses_are_a_400_and_go_nowhere(ollama, other_host, line):
    with proxy(ollama) as p:
        status, _, _ = raw_exchange(p.url, line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 400
        assert forwarded(ollama) == [] and other_host.log == []
        assert_still_healthy(p.url)


def test_a_double_slash_path_goes_to_the_configured_upstream_only(ollama, other_host):
    request = (b"GET //127.0.0.1:%d/api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
               % other_host.port)
    with proxy(ollama) as p:
        status, _, body = raw_exchange(p.url, request)
        assert status == 200 and json.loads(body) == {"models": []}  # the configured upstream's answer
        assert len(forwarded(ollama)) == 1
        assert other_host.log == []
        assert_still_healthy(p.url)


# === 7. deeply nested JSON ========================================================================

NESTED = {
    "unclosed_arrays": b"[" * 100_000,
    "balanced_in_a_field": b'{"model": "llama3.2", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "objects": b'{"a": ' * 100_000,
}
INSTRUMENTED = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/chat/completions",
                "/v1/completions", "/v1/embeddings"]


@pytest.mark.parametrize("shape", list(NESTED))
@pytest.mark.parametrize("path", INSTRUMENTED)
def test_deeply_nested_json_to_every_instrumented_endpoint_is_a_400_in_protocol(ollama, path, shape):
    with proxy(ollama) as p:
        r = requests.post(f"{p.url}{path}", data=NESTED[shape], timeout=10)
        message = assert_protocol_error(r, path, 400)
        if path.startswith("/v1/"):
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert re.search(r"nest|deep", message, re.I), message
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type="bad_request") == 1
        assert forwarded(ollama) == []
        assert_still_healthy(p.url)


ADMIN_CALLS = [("POST", "/admin/alertmanager"), ("PUT", "/admin/routes/chat"),
               ("POST", "/admin/routes/chat/rollback")]


@pytest.mark.parametrize("auth", ["loopback", "token"])
@pytest.mark.parametrize("shape", ["unclosed_arrays", "objects"])
@pytest.mark.parametrize("method,path", ADMIN_CALLS)
def test_deeply_nested_json_to_the_admin_api_is_a_400_with_a_reason(ollama, method, path, shape, auth):
    environ = {"OLLAMA_SIDECAR_ADMIN_TOKEN": TOKEN} if auth == "token" else None
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth == "token" else {}
    with proxy(ollama, environ=environ, routes=ROUTES) as p:
        r = requests.request(method, f"{p.url}{path}", data=NESTED[shape],
                             headers={"Content-Type": "application/json", **headers}, timeout=10)
        assert r.status_code == 400, (r.status_code, r.text[:300])
        doc = r.json()
        assert set(doc) == {"error"} and isinstance(doc["error"], str)
        assert re.search(r"nest|deep", doc["error"], re.I), doc
        if path == "/admin/alertmanager":
            assert p.value("ollama_proxy_alertmanager_notifications_total", outcome="invalid") == 1
        route = requests.get(f"{p.url}/admin/routes/chat", headers=headers, timeout=5).json()
        assert route["rolled_back"] is False and route["weight"] == 10  # nothing changed
        assert forwarded(ollama) == []
        assert_still_healthy(p.url)


@pytest.mark.parametrize("shape", ["unclosed_arrays", "objects"])
def test_deeply_nested_json_to_api_show_with_a_route_alias_is_never_a_500(ollama, shape):
    with proxy(ollama, routes=ROUTES) as p:
        r = requests.post(f"{p.url}/api/show", data=NESTED[shape], timeout=10)
        # Refused by the proxy or forwarded unchanged for Ollama to refuse: a 400 either way.
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert isinstance(r.json()["error"], str)
        assert p.value("ollama_proxy_requests_total", error_type="internal") == 0
        assert_still_healthy(p.url)


# === 12. request headers too large in total ========================================================

def _pad_headers(count: int, size: int) -> dict[str, str]:
    return {f"X-Pad-{i:03d}": "p" * size for i in range(count)}


@pytest.mark.parametrize("method,path", [("POST", "/api/chat"), ("POST", "/v1/chat/completions"),
                                         ("GET", "/api/tags")])
def test_a_hundred_headers_of_8kb_are_a_431_in_protocol_and_not_forwarded(ollama, method, path):
    with proxy(ollama) as p:
        r = requests.request(method, f"{p.url}{path}", json=chat_body(path) if method == "POST" else None,
                             headers=_pad_headers(100, 8000), timeout=10)
        assert_protocol_error(r, path, 431)
        assert p.value("ollama_proxy_requests_total", error_type="bad_request") == 1
        assert forwarded(ollama) == []
        assert_still_healthy(p.url)


def test_headers_just_under_the_default_bound_are_forwarded(ollama):
    with proxy(ollama) as p:
        r = requests.post(f"{p.url}/api/chat", json=chat_body("/api/chat"), headers=_pad_headers(7, 8000),
                          timeout=10)  # ~56 KB of headers, under 64 KiB
        assert r.status_code == 200 and r.json()["message"]["content"] == "ok"
        sent = forwarded(ollama)
        assert len(sent) == 1 and sent[0].headers["X-Pad-006"] == "p" * 8000
        assert p.value("ollama_proxy_requests_total", error_type="none") == 1
        assert_still_healthy(p.url)


def test_max_header_bytes_is_configurable(ollama):
    with proxy(ollama, max_header_bytes=4096) as p:
        r = requests.post(f"{p.url}/v1/chat/completions", json=chat_body("/v1/chat/completions"),
                          headers=_pad_headers(5, 1000), timeout=10)
        assert_protocol_error(r, "/v1/chat/completions", 431)
        assert forwarded(ollama) == []
        r = requests.post(f"{p.url}/v1/chat/completions", json=chat_body("/v1/chat/completions"),
                          headers=_pad_headers(2, 1000), timeout=10)
        assert r.status_code == 200
        assert p.value("ollama_proxy_requests_total", endpoint="/v1/chat/completions", error_type="bad_request") == 1
        assert p.value("ollama_proxy_requests_total", endpoint="/v1/chat/completions", error_type="none") == 1
        assert_still_healthy(p.url)
