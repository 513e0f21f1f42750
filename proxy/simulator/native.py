"""Ollama's native API (``/api/*``): NDJSON streams by default, ``{"error": ...}`` errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from proxy.simulator import models_info
from proxy.simulator.inference import (CANCELLED, CUT, HANG, MIDSTREAM_ERROR, MIDSTREAM_ERROR_OUTCOME, ClientGone,
                                       Inference, chat_prompt_tokens, embedding_vector, estimate_tokens)
from proxy.simulator.parse import (BadRequest, ErrorFn, keep_alive_seconds, num_predict, read_body, require_model,
                                   stream_flag)
from proxy.simulator.scheduler import BUSY_MESSAGE, ServerBusy
from proxy.simulator.serve import client_gone, drop_connection, serve
from proxy.simulator.state import SimulatorState, state_of
from proxy.simulator.wire import NDJSON, json_reply, native_error, ndjson_line, rfc3339

OLLAMA_VERSION = "0.12.6"


def _now() -> str:
    return rfc3339(time.time())


class _ChatFormat:
    content_type = NDJSON

    def __init__(self, asked: str) -> None:
        self.asked = asked

    def _head(self, content: str) -> dict[str, Any]:
        return {"model": self.asked, "created_at": _now(), "message": {"role": "assistant", "content": content}}

    def chunk(self, text: str) -> bytes:
        return ndjson_line({**self._head(text), "done": False})

    def _done(self, text: str, inference: Inference) -> dict[str, Any]:
        return {**self._head(text), "done_reason": inference.done_reason, "done": True, **inference.final_metrics()}

    def final(self, inference: Inference) -> list[bytes]:
        return [ndjson_line(self._done("", inference))]

    def error_event(self, message: str) -> bytes:
        return ndjson_line({"error": message})

    def whole(self, text: str, inference: Inference) -> web.Response:
        return json_reply(self._done(text, inference))

    error = staticmethod(native_error)


class _GenerateFormat(_ChatFormat):
    def _head(self, content: str) -> dict[str, Any]:
        return {"model": self.asked, "created_at": _now(), "response": content}

    def _done(self, text: str, inference: Inference) -> dict[str, Any]:
        return {
            **self._head(text),
            "done": True,
            "done_reason": inference.done_reason,
            "context": inference.context(),
            **inference.final_metrics(),
        }


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def version(request: web.Request) -> web.Response:
    return json_reply({"version": OLLAMA_VERSION})


async def tags(request: web.Request) -> web.Response:
    state = state_of(request)
    entries = [
        models_info.tag_entry(name, profile, models_info.modified_at(state.started_at, index))
        for index, (name, profile) in enumerate(state.profiles.items())
    ]
    return json_reply({"models": entries})


async def ps(request: web.Request) -> web.Response:
    state = state_of(request)
    entries = [models_info.ps_entry(name, state.profiles[name], entry) for name, entry in state.loaded_models()]
    return json_reply({"models": entries})


async def show(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_body(request, native_error)
        key = "model" if body.get("model") else "name"
        _, name = require_model(state, body, native_error, key=key)
    except BadRequest as exc:
        return exc.response
    index = list(state.profiles).index(name)
    return json_reply(models_info.show_entry(name, state.profiles[name], models_info.modified_at(state.started_at, index)))


async def load_only(state: SimulatorState, name: str, keep_alive: float | None) -> None:
    """An empty request only loads the model (paying a cold load if it was idle)."""
    await state.acquire(name)
    state.release(name, keep_alive)
    state.record(name, "load")


async def _load_or_unload(state: SimulatorState, name: str, keep_alive: float | None, fmt: _ChatFormat) -> web.Response:
    """Empty prompt/messages: ``done_reason`` ``load``, or ``unload`` with keep_alive 0."""
    if keep_alive == 0:
        state.unload(name)
        state.record(name, "unload")
        reason = "unload"
    else:
        await load_only(state, name, keep_alive)
        reason = "load"
    return json_reply({**fmt._head(""), "done": True, "done_reason": reason})


async def _generating(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = state_of(request)
    try:
        body = await read_body(request, native_error)
        asked, name = require_model(state, body, native_error)
        keep_alive = keep_alive_seconds(body.get("keep_alive"), native_error)
        if endpoint == "chat":
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise BadRequest(native_error(400, "json: cannot unmarshal into Go struct field ChatRequest.messages"))
            prompt_tokens, empty = chat_prompt_tokens(messages), not messages
        else:
            prompt = body.get("prompt") or ""
            system = body.get("system") or ""
            if not isinstance(prompt, str) or not isinstance(system, str):
                raise BadRequest(native_error(400, "json: cannot unmarshal into Go struct field GenerateRequest.prompt of type string"))
            prompt_tokens, empty = estimate_tokens(system) + estimate_tokens(prompt) + 8, not prompt
        if state.profiles[name].kind != "chat":
            state.record(name, "bad_request")
            raise BadRequest(native_error(400, f'"{asked}" does not support {endpoint}'))
    except BadRequest as exc:
        return exc.response
    fmt = _ChatFormat(asked) if endpoint == "chat" else _GenerateFormat(asked)
    if empty:
        return await _load_or_unload(state, name, keep_alive, fmt)
    inference = Inference(state, name, prompt_tokens, num_predict(body), keep_alive, client_gone(request))
    return await serve(request, inference, fmt, stream_flag(body, default=True))


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generating(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generating(request, "generate")


async def embed_inputs(
    request: web.Request, inference: Inference, texts: list[str], error: ErrorFn = native_error
) -> list[list[float]] | web.StreamResponse:
    """Run the fates and timing of an embedding request; vectors, or the reply to send instead."""
    try:
        message = await inference.begin()
        if message is not None:
            return error(500, message)
        if inference.outcome == MIDSTREAM_ERROR_OUTCOME:
            return error(500, MIDSTREAM_ERROR)
        if inference.outcome == CUT:
            return drop_connection(request)
        dim = inference.profile.embedding_dim
        return [embedding_vector(inference.model, text, dim) for text in texts]
    except ServerBusy:
        return error(503, BUSY_MESSAGE)
    except ClientGone:
        return drop_connection(request)
    except asyncio.CancelledError:
        if inference.outcome != HANG:
            inference.outcome = CANCELLED
        raise
    finally:
        inference.end()


def embed_texts(value: Any, error: ErrorFn) -> list[str]:
    """``input`` as Ollama accepts it: a string (empty means none) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest(error(400, "invalid input type"))


async def embed(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_body(request, native_error)
        asked, name = require_model(state, body, native_error)
        texts = embed_texts(body.get("input"), native_error)
        keep_alive = keep_alive_seconds(body.get("keep_alive"), native_error)
    except BadRequest as exc:
        return exc.response
    if not texts:
        await load_only(state, name, keep_alive)
        return json_reply({"model": asked, "embeddings": []})
    prompt_tokens = sum(estimate_tokens(text) + 2 for text in texts)
    inference = Inference(state, name, prompt_tokens, keep_alive=keep_alive, client_gone=client_gone(request))
    result = await embed_inputs(request, inference, texts)
    if isinstance(result, web.StreamResponse):
        return result
    dimensions = body.get("dimensions")
    if isinstance(dimensions, int) and 0 < dimensions < len(result[0]):
        result = [_renormalised(vector[:dimensions]) for vector in result]
    metrics = inference.final_metrics()
    reply = {"model": asked, "embeddings": result}
    reply.update({key: metrics[key] for key in ("total_duration", "load_duration", "prompt_eval_count") if key in metrics})
    return json_reply(reply)


def _renormalised(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [round(v / norm, 8) for v in vector]


async def embeddings_legacy(request: web.Request) -> web.Response:
    """``/api/embeddings`` (deprecated): ``{model, prompt}`` → ``{"embedding": [...]}``."""
    state = state_of(request)
    try:
        body = await read_body(request, native_error)
        _, name = require_model(state, body, native_error)
        keep_alive = keep_alive_seconds(body.get("keep_alive"), native_error)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest(native_error(400, "json: cannot unmarshal into Go struct field EmbeddingRequest.prompt of type string"))
    except BadRequest as exc:
        return exc.response
    if not prompt:
        await load_only(state, name, keep_alive)
        return json_reply({"embedding": []})
    inference = Inference(state, name, estimate_tokens(prompt), keep_alive=keep_alive, client_gone=client_gone(request))
    result = await embed_inputs(request, inference, [prompt])
    if isinstance(result, web.StreamResponse):
        return result
    return json_reply({"embedding": result[0]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)  # aiohttp answers HEAD for GET routes
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)
