"""Passthrough (proxy/dataplane/passthrough.py): bodies stream through untouched in both
directions, a cut stream is never reported as complete, and route aliases answer the
look-ups clients make before using a model."""

from __future__ import annotations

import http.client
import time

import requests
from werkzeug import Request, Response

from tests.test_proxy_streaming import HEAD, RawUpstream, _chunk, _read_request


def test_uploads_stream_through_with_their_content_length_and_no_first_byte_limit(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append((request.headers.get("Content-Length"), request.headers.get("Transfer-Encoding"),
                     len(request.get_data())))
        return Response("", status=201)

    httpserver.expect_request("/api/blobs/sha256:abc", method="POST").respond_with_handler(handler)

    with proxy_for(timeouts={"first_byte": 0.5}) as p:
        conn = http.client.HTTPConnection(p.url.removeprefix("http://"), timeout=10)
        conn.putrequest("POST", "/api/blobs/sha256:abc")
        conn.putheader("Content-Length", "5000")
        conn.endheaders()
        for _ in range(5):
            time.sleep(0.2)  # a 1 s upload against a 0.5 s first-byte limit
            conn.send(b"x" * 1000)
        assert conn.getresponse().status == 201
    assert seen == [("5000", None, 5000)]


def test_passthrough_stream_cut_by_the_upstream_is_not_reported_as_complete(proxy_for):
    def script(server, conn):
        _read_request(conn)
        conn.sendall(HEAD + _chunk(b'{"status":"pulling manifest"}\n'))
        time.sleep(0.1)
        conn.close()

    upstream = RawUpstream(script)
    try:
        with proxy_for(upstream=upstream.url) as p:
            try:
                r = requests.post(f"{p.url}/api/pull", json={"model": "x"}, stream=True, timeout=10)
                body = b"".join(r.iter_content(None))
            except requests.exceptions.ChunkedEncodingError:
                body = None  # the client sees the break, as it would without the proxy
            assert body is None
            assert p.value("ollama_proxy_requests_total", endpoint="/api/pull", error_type="stream_interrupted") == 1
    finally:
        upstream.close()


def test_route_alias_answers_show_and_model_lookups(httpserver, proxy_for):
    httpserver.expect_request("/api/show", json={"model": "qwen3:8b"}).respond_with_json(
        {"details": {"family": "qwen3"}, "capabilities": ["completion"]})
    httpserver.expect_request("/v1/models/qwen3:8b").respond_with_json(
        {"id": "qwen3:8b", "object": "model", "created": 1, "owned_by": "library"})
    with proxy_for(routes={"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 10}}) as p:
        r = requests.post(f"{p.url}/api/show", json={"model": "chat"})
        assert r.status_code == 200 and r.json()["details"]["family"] == "qwen3"
        r = requests.get(f"{p.url}/v1/models/chat")
        assert r.status_code == 200 and r.json()["id"] == "chat"
