"""Forwarding (proxy/dataplane/forward.py): what the proxy sends on is what Ollama would
have read from the client."""

from __future__ import annotations

import json

import requests
from werkzeug import Request, Response

from tests.ollama_fake import openai_chat_handler, sse_chat

MODEL = "llama3.2"


def test_lone_surrogate_in_a_prompt_is_forwarded_as_ollama_would_read_it(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append(json.loads(request.get_data()))
        return openai_chat_handler(MODEL, ["a"])(request)

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(handler)
    with proxy_for() as p:
        body = '{"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": "x\\ud83d"}]}'
        r = requests.post(f"{p.url}/v1/chat/completions", data=body.encode())
        assert r.status_code == 200 and r.content == sse_chat(MODEL, ["a"], False)
        assert seen[0]["messages"][0]["content"] == "x\ud83d"
