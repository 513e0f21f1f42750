"""A faithful fake of Ollama's HTTP API for pytest-httpserver (Ollama's docs/api.md and
docs/openai.md; the Go source that writes the replies is server/routes.go, api/types.go
and openai/openai.go).

Replies are built the way Ollama builds them: NDJSON lines for native streams (the final
one carrying nanosecond durations and counts, zero fields omitted: ``omitempty`` on
api/types.go's ``Metrics``), SSE events for the OpenAI-compatible API (the usage event
only when ``stream_options.include_usage`` is set), and streams delivered in pieces that
split lines and pack several together.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Iterator

from werkzeug import Request, Response

CREATED = "2025-07-07T20:22:19.19314Z"
FINAL_TIMINGS = {"total_duration": 182242375, "load_duration": 41295167, "prompt_eval_count": 169,
                 "prompt_eval_duration": 24573166, "eval_count": 15, "eval_duration": 115959084}


def ndjson(objs: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objs)


def chat_chunks(model: str, words: list[str], final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = [{"model": model, "created_at": CREATED, "message": {"role": "assistant", "content": w},
            "done": False} for w in words]
    last = {"model": model, "created_at": CREATED, "message": {"role": "assistant", "content": ""},
            "done_reason": "stop", "done": True}
    last.update(FINAL_TIMINGS if final is None else final)
    out.append(last)
    return out


def generate_chunks(model: str, words: list[str], final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = [{"model": model, "created_at": CREATED, "response": w, "done": False} for w in words]
    last = {"model": model, "created_at": CREATED, "response": "", "done": True, "done_reason": "stop",
            "context": [1, 2, 3]}
    last.update(FINAL_TIMINGS if final is None else final)
    out.append(last)
    return out


def sse_chat(model: str, words: list[str], include_usage: bool, prompt_tokens: int = 12,
             kind: str = "chat") -> bytes:
    """An OpenAI-compatible stream exactly as Ollama writes it."""
    events = []
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    for w in words:
        choice = ({"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": None}
                  if kind == "chat" else {"index": 0, "text": w, "finish_reason": None})
        event = {"id": "chatcmpl-1", "object": obj, "created": 1720000000, "model": model,
                 "system_fingerprint": "fp_ollama", "choices": [choice]}
        if include_usage and kind != "chat":
            # Ollama's /v1/completions zero-fills usage on every chunk when it was asked for.
            event["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        events.append(event)
    finish = ({"index": 0, "delta": {}, "finish_reason": "stop"} if kind == "chat"
              else {"index": 0, "text": "", "finish_reason": "stop"})
    events.append({"id": "chatcmpl-1", "object": obj, "created": 1720000000, "model": model,
                   "system_fingerprint": "fp_ollama", "choices": [finish]})
    if include_usage:
        events.append({"id": "chatcmpl-1", "object": obj, "created": 1720000000, "model": model,
                       "system_fingerprint": "fp_ollama", "choices": [],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                                 "total_tokens": prompt_tokens + len(words)}})
    body = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def pieces(data: bytes, size: int = 7) -> Iterator[bytes]:
    """Deliver ``data`` in small pieces: lines split across reads, several per read."""
    for i in range(0, len(data), size):
        yield data[i: i + size]


def slow(chunks: Iterable[bytes], delay: float) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        time.sleep(delay)


def stream_response(body: Iterable[bytes], content_type: str = "application/x-ndjson") -> Response:
    return Response(body, status=200, content_type=content_type, direct_passthrough=True)


def openai_chat_handler(model_ok: str, words: list[str]):
    """A handler for /v1/chat/completions honouring stream and include_usage like Ollama."""
    def handler(request: Request) -> Response:
        body = json.loads(request.get_data())
        if body.get("model") != model_ok:
            return Response(json.dumps({"error": {"message": f"model '{body.get('model')}' not found",
                                                  "type": "not_found_error", "param": None, "code": None}}),
                            status=404, content_type="application/json")
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return stream_response(pieces(sse_chat(model_ok, words, usage), 11), "text/event-stream")
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1720000000, "model": model_ok,
                 "system_fingerprint": "fp_ollama",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}}
        return Response(json.dumps(reply), content_type="application/json")
    return handler
