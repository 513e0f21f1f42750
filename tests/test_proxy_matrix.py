"""Every instrumented endpoint × stream / non-stream × success and each error class."""

from __future__ import annotations

import json

import pytest
import requests
from werkzeug import Request, Response

from tests.conftest import free_port
from tests.ollama_fake import chat_chunks, generate_chunks, ndjson, pieces, sse_chat, stream_response

MODEL = "llama3.2"
GENERATING = ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"]
EMBEDDING = ["/api/embed", "/api/embeddings", "/v1/embeddings"]
CASES = [(path, stream) for path in GENERATING for stream in (True, False)] + [(p, False) for p in EMBEDDING]


def request_body(path: str, stream: bool) -> dict:
    body: dict = {"model": MODEL, "stream": stream}
    if path in ("/api/chat", "/v1/chat/completions"):
        body["messages"] = [{"role": "user", "content": "hi"}]
    elif path in ("/api/embed", "/v1/embeddings"):
        body["input"] = "hi"
    else:
        body["prompt"] = "hi"
    return body


def success(path: str, stream: bool):
    """A handler answering like Ollama for this endpoint, and the completion tokens it reports."""
    def handler(request: Request) -> Response:
        if path == "/api/chat":
            chunks = chat_chunks(MODEL, ["a", "b"])
        elif path == "/api/generate":
            chunks = generate_chunks(MODEL, ["a", "b"])
        elif path == "/api/embed":
            return Response(json.dumps({"model": MODEL, "embeddings": [[0.1]], "prompt_eval_count": 3}),
                            content_type="application/json")
        elif path == "/api/embeddings":
            return Response(json.dumps({"embedding": [0.1]}), content_type="application/json")
        elif path == "/v1/embeddings":
            return Response(json.dumps({"object": "list", "data": [{"object": "embedding", "embedding": [0.1],
                                        "index": 0}], "model": MODEL, "usage": {"prompt_tokens": 3,
                                                                                  "total_tokens": 3}}),
                            content_type="application/json")
        else:
            kind = "chat" if "chat" in path else "completion"
            if stream:
                return stream_response(pieces(sse_chat(MODEL, ["a", "b"], True, kind=kind), 9), "text/event-stream")
            return Response(json.dumps({"id": "x", "object": "chat.completion", "model": MODEL, "choices": [],
                                        "usage": {"prompt_tokens": 12, "completion_tokens": 2,
                                                  "total_tokens": 14}}), content_type="application/json")
        if stream:
            return stream_response(pieces(ndjson(chunks), 9))
        return Response(json.dumps(chunks[-1]), content_type="application/json")
    return handler


@pytest.mark.parametrize("path,stream", CASES)
def test_success_is_counted_with_tokens(httpserver, proxy_for, path, stream):
    httpserver.expect_request(path).respond_with_handler(success(path, stream))
    with proxy_for() as p:
        r = requests.post(f"{p.url}{path}", json=request_body(path, stream))
        assert r.status_code == 200
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type="none", model=f"{MODEL}:latest") == 1
        if path in GENERATING:
            assert p.value("ollama_proxy_tokens_total", endpoint=path, kind="completion") > 0
            assert p.value("ollama_proxy_time_to_first_token_seconds_count", endpoint=path) == \
                (0 if path.startswith("/v1/") and not stream else 1)


@pytest.mark.parametrize("path,stream", CASES)
@pytest.mark.parametrize("status,error_type", [(404, "model_not_found"), (400, "upstream_4xx"),
                                               (500, "upstream_5xx"), (503, "overloaded")])
def test_upstream_errors_are_forwarded_and_labelled(httpserver, proxy_for, path, stream, status, error_type):
    if path.startswith("/v1/"):
        payload = {"error": {"message": "boom", "type": "api_error", "param": None, "code": None}}
    else:
        payload = {"error": "boom"}
    httpserver.expect_request(path).respond_with_json(payload, status=status)
    with proxy_for() as p:
        r = requests.post(f"{p.url}{path}", json=request_body(path, stream))
        assert r.status_code == status and r.json() == payload  # Ollama's own answer, untouched
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type=error_type) == 1


@pytest.mark.parametrize("path,stream", CASES)
def test_unreachable_upstream_is_a_502_in_the_clients_protocol(proxy_for, path, stream):
    with proxy_for(upstream=f"http://127.0.0.1:{free_port()}") as p:
        r = requests.post(f"{p.url}{path}", json=request_body(path, stream))
        assert r.status_code == 502
        err = r.json()["error"]
        assert isinstance(err, dict) if path.startswith("/v1/") else isinstance(err, str)
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type="connect") == 1
