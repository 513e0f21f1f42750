"""The connection to Ollama (proxy/dataplane/upstream.py): what the proxy forwards of a
request's headers, and what it keeps to itself."""

from __future__ import annotations

import requests
from werkzeug import Request, Response

from tests.ollama_fake import chat_chunks, ndjson, stream_response

MODEL = "llama3.2"


def test_gateway_key_is_not_forwarded_to_ollama(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return stream_response([ndjson(chat_chunks(MODEL, ["a"]))])

    httpserver.expect_request("/api/chat").respond_with_handler(handler)
    httpserver.expect_request("/api/tags").respond_with_handler(
        lambda r: (seen.append(r.headers.get("Authorization")), Response('{"models":[]}'))[1])
    with proxy_for(auth={"api_keys": ["gw-secret"]}) as p:
        auth = {"Authorization": "Bearer gw-secret"}
        assert requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, headers=auth).ok
        assert requests.get(f"{p.url}/api/tags", headers=auth).ok
    assert seen == [None, None]


def test_hop_by_hop_headers_and_those_connection_lists_are_not_forwarded(httpserver, proxy_for):
    seen = []
    httpserver.expect_request("/api/tags").respond_with_handler(
        lambda r: (seen.append(dict(r.headers)), Response('{"models":[]}'))[1])
    with proxy_for() as p:
        requests.get(f"{p.url}/api/tags", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret",
                                                   "X-Kept": "1", "Proxy-Authorization": "Basic x"})
    assert seen[0].get("X-Kept") == "1"
    assert "X-Hop" not in seen[0] and "Proxy-Authorization" not in seen[0]
