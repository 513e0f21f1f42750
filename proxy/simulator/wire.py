"""Bytes on the wire the way Ollama (Go) writes them: compact JSON, RFC 3339 times,
NDJSON/SSE framing, and TCP-like write boundaries that ignore line boundaries.

Consumers that split raw chunks on newlines lose lines: TCP reads do not align with the
NDJSON lines Ollama streams (its docs/api.md, "Streaming responses"). So by default the
stream writer deliberately splits lines across writes and packs several lines into one
write; a faithful fake must break naive framing the way a real network does.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON_UTF8 = "application/json; charset=utf-8"


def dumps(obj: Any) -> str:
    """Go's ``json.Marshal`` shape: no spaces, UTF-8 left as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def rfc3339(ts: float, utc: bool = True) -> str:
    """Go's RFC3339Nano for a ``time.Time``: trailing zeros of the fraction dropped, ``Z`` for UTC."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc) if utc else datetime.fromtimestamp(ts).astimezone()
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{dt.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    offset = dt.strftime("%z")
    return text + ("Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}")


def ns(seconds: float) -> int:
    return max(0, int(round(seconds * 1e9)))


def without_zeros(fields: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``omitempty``: zero counts and durations are absent, not 0."""
    return {key: value for key, value in fields.items() if value not in (0, None, "", [])}


def json_reply(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json", charset="utf-8")


def native_error(status: int, message: str) -> web.Response:
    return json_reply({"error": message}, status)


def openai_error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return json_reply({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


class StreamWriter:
    """Writes framed events to a streaming response, with network-like write boundaries.

    With ``split`` on, each event is either held back (packed with the next one), written
    whole, or written up to a point inside it (the rest goes with the next write). Nothing
    is held past ``flush``, so the final line always arrives.
    """

    def __init__(self, response: web.StreamResponse, rng: random.Random, split: bool) -> None:
        self.response = response
        self.rng = rng
        self.split = split
        self.pending = b""
        self.held_events = 0

    async def send(self, event: bytes) -> None:
        self.pending += event
        if not self.split:
            await self.flush()
            return
        roll = self.rng.random()
        if roll < 0.3 and self.held_events < 3:
            self.held_events += 1  # pack: goes out with the next event
        elif roll < 0.7 and len(event) > 1:
            cut = len(self.pending) - self.rng.randint(1, len(event) - 1)
            await self._write(self.pending[:cut])
            self.pending = self.pending[cut:]
            self.held_events = 0
        else:
            await self.flush()

    async def flush(self) -> None:
        await self._write(self.pending)
        self.pending = b""
        self.held_events = 0

    async def send_partial_then_cut(self, event: bytes, request: web.Request) -> None:
        """Write what is pending plus part of ``event``, then drop the connection."""
        keep = self.rng.randint(1, max(1, len(event) - 1))
        await self._write(self.pending + event[:keep])
        self.pending = b""
        if request.transport is not None:
            request.transport.close()

    async def _write(self, data: bytes) -> None:
        if data:
            await self.response.write(data)


def ndjson_line(obj: Any) -> bytes:
    return (dumps(obj) + "\n").encode()


def sse_event(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
