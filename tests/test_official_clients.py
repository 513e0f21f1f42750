"""The official ollama and openai Python clients work unchanged through the proxy."""

from __future__ import annotations

import json

import ollama
import openai

from tests.ollama_fake import chat_chunks, ndjson, openai_chat_handler, pieces, stream_response

MODEL = "llama3.2"


def test_ollama_client_stream_and_non_stream(httpserver, proxy_for):
    def chat(request):
        body = json.loads(request.get_data())
        chunks = chat_chunks(MODEL, ["Hello", " there"])
        if body.get("stream") is False:
            final = dict(chunks[-1], message={"role": "assistant", "content": "Hello there"})
            return stream_response([json.dumps(final).encode()], "application/json")
        return stream_response(pieces(ndjson(chunks), 6))

    httpserver.expect_request("/api/chat").respond_with_handler(chat)
    httpserver.expect_request("/api/embed").respond_with_json(
        {"model": "all-minilm", "embeddings": [[0.5, 0.25]], "prompt_eval_count": 2})
    with proxy_for() as p:
        client = ollama.Client(host=p.url)
        parts = [c.message.content for c in client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                          stream=True)]
        assert "".join(parts) == "Hello there"
        reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=False)
        assert reply.message.content == "Hello there" and reply.eval_count == 15
        assert client.embed(model="all-minilm", input="x").embeddings == [[0.5, 0.25]]
        assert p.value("ollama_proxy_requests_total", endpoint="/api/chat", error_type="none") == 2
        assert p.value("ollama_proxy_tokens_total", endpoint="/api/embed", kind="prompt") == 2


def test_ollama_client_sees_ollama_errors(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_json({"error": "model 'nope' not found"}, status=404)
    with proxy_for() as p:
        client = ollama.Client(host=p.url)
        try:
            client.chat(model="nope", messages=[], stream=False)
        except ollama.ResponseError as exc:
            assert exc.status_code == 404 and "not found" in exc.error
        else:
            raise AssertionError("expected ResponseError")


def test_openai_sdk_stream_and_non_stream(httpserver, proxy_for):
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(
        openai_chat_handler(MODEL, ["Hi", "!"]))
    with proxy_for() as p:
        client = openai.OpenAI(base_url=f"{p.url}/v1", api_key="ollama")
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi!"
        assert all(c.usage is None for c in chunks)  # not asked for, not delivered
        with_usage = list(client.chat.completions.create(
            model=MODEL, messages=[], stream=True, stream_options={"include_usage": True}))
        assert with_usage[-1].usage.completion_tokens == 2
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert reply.choices[0].message.content == "Hi!" and reply.usage.prompt_tokens == 12
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 6


def test_openai_sdk_gets_proxy_errors_as_api_errors(proxy_for):
    with proxy_for(upstream="http://127.0.0.1:9") as p:
        client = openai.OpenAI(base_url=f"{p.url}/v1", api_key="ollama", max_retries=0)
        try:
            client.chat.completions.create(model=MODEL, messages=[])
        except openai.APIStatusError as exc:
            assert exc.status_code == 502 and "refused the connection" in exc.message
        else:
            raise AssertionError("expected APIStatusError")
