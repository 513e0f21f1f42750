"""Errors the proxy itself produces, spoken in the client's protocol.

A client of Ollama's API parses ``{"error": "…"}``; an OpenAI SDK parses
``{"error": {"message", "type", "param", "code"}}``. A proxy error in the wrong shape
surfaces as a confusing parse failure in the user's app, so every error the proxy makes
goes through here. Each carries its ``error_type`` label value.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from proxy.metrics import ErrorType

OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error",
                413: "invalid_request_error", 431: "invalid_request_error"}


class ProxyError(Exception):
    """A request the proxy answers itself, with a status and a human message."""

    def __init__(self, status: int, error_type: ErrorType, message: str,
                 headers: dict[str, str] | None = None, code: str | None = None, openai_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.code = code  # the OpenAI error object's `code` (rate_limit_exceeded, …)
        self.openai_type = openai_type  # its `type`, where the status alone does not say it


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(path: str, status: int, message: str, code: str | None = None,
               openai_type: str | None = None) -> bytes:
    if is_openai_path(path):
        payload: dict = {"error": {"message": message, "type": openai_type or OPENAI_TYPES.get(status, "api_error"),
                                   "param": None, "code": code}}
    else:
        payload = {"error": message}
    return json.dumps(payload).encode()


def error_response(path: str, err: ProxyError) -> web.Response:
    code = err.code or ("invalid_api_key" if err.status == 401 else None)
    return web.Response(status=err.status, body=error_body(path, err.status, err.message, code, err.openai_type),
                        content_type="application/json", headers=err.headers)


def stream_error_line(path: str, message: str) -> bytes:
    """The line that ends a stream on error, as Ollama itself ends one (status stays 200)."""
    if is_openai_path(path):
        return b"data: " + error_body(path, 500, message) + b"\n\n"
    return error_body(path, 500, message) + b"\n"


_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
MAX_QUOTED = 200


def describe_body(body: bytes) -> str:
    """An upstream body that is not the JSON it should be, shortened for a message: an HTML
    error page from a load balancer reads as its words, never as a page of markup."""
    text = body[: 64 * 1024].decode("utf-8", "replace")
    text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    if not text:
        return "(empty body)" if not body else "(no readable text)"
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 1] + "…"


def classify_upstream_status(status: int, instrumented: bool) -> ErrorType:
    """error_type for an upstream reply status (the reply itself is forwarded as-is)."""
    if status < 400:
        return ErrorType.NONE
    if status == 404 and instrumented:
        return ErrorType.MODEL_NOT_FOUND
    if status in (429, 503):
        return ErrorType.OVERLOADED
    if status == 499:
        return ErrorType.CLIENT_DISCONNECT
    return ErrorType.UPSTREAM_5XX if status >= 500 else ErrorType.UPSTREAM_4XX
