"""Ollama's OpenAI-compatible API (``/v1/*``): SSE streams (off by default), OpenAI errors.

Spelled as Ollama's ``openai`` middleware writes it: ``chatcmpl-N`` ids,
``system_fingerprint: fp_ollama``, a finish chunk, the ``choices: []`` usage chunk only when
``stream_options.include_usage`` is true (``/v1/completions`` then also carries zeroed
``usage`` on every chunk, as upstream does), and ``data: [DONE]``.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from aiohttp import web

from proxy.simulator import models_info
from proxy.simulator.inference import Inference, chat_prompt_tokens, estimate_tokens
from proxy.simulator.native import embed_inputs, embed_texts
from proxy.simulator.parse import BadRequest, read_body, require_model, stream_flag
from proxy.simulator.serve import client_gone, serve
from proxy.simulator.state import SimulatorState, state_of
from proxy.simulator.wire import SSE, SSE_DONE, json_reply, openai_error, sse_event

FINGERPRINT = "fp_ollama"


def _usage(inference: Inference) -> dict[str, int]:
    return {
        "prompt_tokens": inference.prompt_tokens,
        "completion_tokens": inference.eval_count,
        "total_tokens": inference.prompt_tokens + inference.eval_count,
    }


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class _ChatFormat:
    content_type = SSE
    object_name = "chat.completion.chunk"

    def __init__(self, state: SimulatorState, asked: str, include_usage: bool, prefix: str = "chatcmpl") -> None:
        self.id = f"{prefix}-{state.rng.randint(0, 998)}"
        self.created = int(time.time())
        self.asked = asked
        self.include_usage = include_usage

    def _envelope(self, object_name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.asked,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        delta = {} if text is None else {"role": "assistant", "content": text}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason}

    def chunk(self, text: str) -> bytes:
        return sse_event(self._envelope(self.object_name, [self._choice(text, None)]))

    def final(self, inference: Inference) -> list[bytes]:
        events = [sse_event(self._envelope(self.object_name, [self._choice(None, inference.done_reason)]))]
        if self.include_usage:
            events.append(sse_event({**self._envelope(self.object_name, []), "usage": _usage(inference)}))
        return events + [SSE_DONE]

    def error_event(self, message: str) -> bytes:
        return sse_event({"error": {"message": message, "type": "api_error", "param": None, "code": None}})

    def whole(self, text: str, inference: Inference) -> web.Response:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": inference.done_reason}
        return json_reply({**self._envelope("chat.completion", [choice]), "usage": _usage(inference)})

    error = staticmethod(openai_error)


class _CompletionFormat(_ChatFormat):
    object_name = "text_completion"

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text or "", "index": 0, "finish_reason": finish_reason}

    def _with_zero_usage(self, envelope: dict[str, Any]) -> dict[str, Any]:
        if self.include_usage:
            envelope["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return envelope

    def chunk(self, text: str) -> bytes:
        return sse_event(self._with_zero_usage(self._envelope(self.object_name, [self._choice(text, None)])))

    def final(self, inference: Inference) -> list[bytes]:
        events = [sse_event(self._with_zero_usage(self._envelope(self.object_name, [self._choice("", inference.done_reason)])))]
        if self.include_usage:
            events.append(sse_event({**self._envelope(self.object_name, []), "usage": _usage(inference)}))
        return events + [SSE_DONE]

    def whole(self, text: str, inference: Inference) -> web.Response:
        choice = {"text": text, "index": 0, "finish_reason": inference.done_reason}
        return json_reply({**self._envelope("text_completion", [choice]), "usage": _usage(inference)})


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_body(request, openai_error, empty_message="EOF")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(openai_error(400, "[] is too short - 'messages'"))
        asked, name = require_model(state, body, openai_error)
        if state.profiles[name].kind != "chat":
            state.record(name, "bad_request")
            raise BadRequest(openai_error(400, f'"{asked}" does not support chat'))
    except BadRequest as exc:
        return exc.response
    fmt = _ChatFormat(state, asked, _include_usage(body))
    inference = Inference(state, name, chat_prompt_tokens(messages), _max_tokens(body), client_gone=client_gone(request))
    return await serve(request, inference, fmt, stream_flag(body, default=False))


async def completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_body(request, openai_error, empty_message="EOF")
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest(openai_error(400, "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string"))
        asked, name = require_model(state, body, openai_error)
        if state.profiles[name].kind != "chat":
            state.record(name, "bad_request")
            raise BadRequest(openai_error(400, f'"{asked}" does not support generate'))
    except BadRequest as exc:
        return exc.response
    fmt = _CompletionFormat(state, asked, _include_usage(body), prefix="cmpl")
    inference = Inference(state, name, estimate_tokens(prompt) + 8, _max_tokens(body), client_gone=client_gone(request))
    return await serve(request, inference, fmt, stream_flag(body, default=False))


def _float32_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_body(request, openai_error, empty_message="EOF")
        encoding = body.get("encoding_format") or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            raise BadRequest(
                openai_error(400, f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].")
            )
        raw = body.get("input")
        if raw is None or raw == []:
            raise BadRequest(openai_error(400, "invalid input"))
        texts = embed_texts([""] if raw == "" else raw, openai_error)
        asked, name = require_model(state, body, openai_error)
    except BadRequest as exc:
        return exc.response
    inference = Inference(state, name, sum(estimate_tokens(t) + 2 for t in texts), client_gone=client_gone(request))
    result = await embed_inputs(request, inference, texts, openai_error)
    if isinstance(result, web.StreamResponse):
        return result
    encode = _float32_base64 if encoding.lower() == "base64" else (lambda v: v)
    data = [{"object": "embedding", "embedding": encode(vector), "index": i} for i, vector in enumerate(result)]
    usage = {"prompt_tokens": inference.prompt_tokens, "total_tokens": inference.prompt_tokens}
    return json_reply({"object": "list", "data": data, "model": asked, "usage": usage})


def _model_entry(state: SimulatorState, name: str) -> dict[str, Any]:
    index = list(state.profiles).index(name)
    namespace = name.split("/")[-2] if "/" in name else "library"
    created = int(models_info.modified_at(state.started_at, index))
    return {"id": name, "object": "model", "created": created, "owned_by": namespace}


async def list_models(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_reply({"object": "list", "data": [_model_entry(state, name) for name in state.profiles]})


async def retrieve_model(request: web.Request) -> web.Response:
    state = state_of(request)
    asked = request.match_info["model"]
    name = state.resolve(asked)
    if name is None:
        return openai_error(404, f"model '{asked}' not found")
    return json_reply({**_model_entry(state, name), "id": asked})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
