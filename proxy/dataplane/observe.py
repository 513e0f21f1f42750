"""What the proxy learns from a reply without changing it: tokens, timings and errors.

Ollama's native API reports everything in the final ``done`` object (durations in
nanoseconds, every field optional); the OpenAI-compatible API reports only ``usage``.
Observers read complete lines handed over by :class:`proxy.dataplane.framing.LineFramer`. After
the first content chunk they parse only lines that can matter (the final object, an
error, usage), because JSON-decoding every token of 500 concurrent streams is the most
expensive thing a proxy like this could do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.common.jsonutil import json_or_none
from proxy.dataplane.framing import LongLine
from proxy.metrics import OVERFLOW

NS = 1e-9


@dataclass(frozen=True)
class Endpoint:
    """An instrumented endpoint: how to read its requests and replies."""

    name: str
    protocol: str  # "ollama" or "openai"
    generates: bool  # produces tokens (chat/generate) rather than embeddings
    stream_default: bool


ENDPOINTS: dict[str, Endpoint] = {
    "/api/chat": Endpoint("/api/chat", "ollama", True, True),
    "/api/generate": Endpoint("/api/generate", "ollama", True, True),
    "/api/embed": Endpoint("/api/embed", "ollama", False, False),
    "/api/embeddings": Endpoint("/api/embeddings", "ollama", False, False),
    "/v1/chat/completions": Endpoint("/v1/chat/completions", "openai", True, False),
    "/v1/completions": Endpoint("/v1/completions", "openai", True, False),
    "/v1/embeddings": Endpoint("/v1/embeddings", "openai", False, False),
}

# Known Ollama paths that are forwarded with a request counter and duration only. Any
# other path is labelled endpoint="other" so a scanner cannot mint label values.
PASSTHROUGH_ENDPOINTS = frozenset({
    "/", "/api/tags", "/api/ps", "/api/show", "/api/version", "/api/pull", "/api/push",
    "/api/create", "/api/copy", "/api/delete", "/v1/models",
})


def endpoint_label(path: str) -> str:
    if path in ENDPOINTS or path in PASSTHROUGH_ENDPOINTS:
        return path
    if path.startswith("/api/blobs/"):
        return "/api/blobs"
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return OVERFLOW


@dataclass
class ReplyStats:
    """Facts gathered from one reply; all optional, like Ollama's own fields."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_content_at: float | None = None  # loop time of the first generated content
    last_content_at: float | None = None
    load_duration: float | None = None  # seconds, upstream-reported
    prompt_eval_duration: float | None = None
    eval_duration: float | None = None
    finished: bool = False  # saw the final object / [DONE]
    error: str | None = None  # an {"error": …} line mid-stream


def _seconds(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return value * NS if isinstance(value, (int, float)) and value > 0 else None


def _count(value: Any) -> int | None:
    """A token count as Ollama reports it; a negative one (a broken server) is no count."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def read_native_final(stats: ReplyStats, obj: dict[str, Any]) -> None:
    """Counts and durations from Ollama's final object (or a non-stream reply)."""
    stats.prompt_tokens = _count(obj.get("prompt_eval_count"))
    stats.completion_tokens = _count(obj.get("eval_count"))
    stats.load_duration = _seconds(obj, "load_duration")
    stats.prompt_eval_duration = _seconds(obj, "prompt_eval_duration")
    stats.eval_duration = _seconds(obj, "eval_duration")
    stats.finished = True


def read_openai_usage(stats: ReplyStats, obj: dict[str, Any]) -> None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        stats.prompt_tokens = _count(usage.get("prompt_tokens"))
        stats.completion_tokens = _count(usage.get("completion_tokens"))


_loads = json_or_none

# A long object's ends are cut at a member boundary (``,"``) and closed again; a few
# dozen tries find one. Positions inside nested values give unbalanced text and fail.
_MAX_CUTS = 64


def read_long_object(line: LongLine) -> dict[str, Any] | None:
    """The top-level members that fit in the kept ends of an over-long JSON object.

    Ollama's final ``/api/generate`` object carries ``context`` (every token id) between
    ``done`` at its start and the counts at its end; a long conversation pushes it past
    any sane line limit. The object's first and last members are what we need."""
    head, tail = line.head, line.tail
    if line.size == len(head):  # short enough to have been kept whole
        whole = _loads(head)
        return whole if isinstance(whole, dict) else None
    found: dict[str, Any] = {}
    cut, tries = len(head), 0
    while tries < _MAX_CUTS and (cut := head.rfind(b',"', 0, cut)) > 0:
        tries += 1
        obj = _loads(head[:cut] + b"}")
        if isinstance(obj, dict):
            found.update(obj)
            break
    end = tail.rstrip()
    cut, tries = -1, 0
    while tries < _MAX_CUTS and (cut := end.find(b',"', cut + 1)) >= 0:
        tries += 1
        obj = _loads(b"{" + end[cut + 1:])
        if isinstance(obj, dict):
            found.update(obj)
            break
    return found or None


def _native_has_content(obj: dict[str, Any]) -> bool:
    message = obj.get("message")
    if isinstance(message, dict):
        return bool(message.get("content") or message.get("thinking") or message.get("tool_calls"))
    return bool(obj.get("response") or obj.get("thinking"))


class NativeStreamObserver:
    """Reads an NDJSON stream of /api/chat or /api/generate."""

    __slots__ = ("stats", "unparsed")

    def __init__(self, stats: ReplyStats) -> None:
        self.stats = stats
        self.unparsed = 0

    def line(self, line: bytes, now: float) -> None:
        stats = self.stats
        if stats.first_content_at is not None and b'"done":false' in line and b'"error"' not in line:
            stats.last_content_at = now  # a token chunk: no need to decode it
            return
        if not line.strip():
            return
        obj = _loads(line)
        if not isinstance(obj, dict):
            self.unparsed += 1
            return
        if "error" in obj:
            stats.error = str(obj["error"])[:200]
            return
        if _native_has_content(obj):
            if stats.first_content_at is None:
                stats.first_content_at = now
            stats.last_content_at = now
        if obj.get("done") is True:
            read_native_final(stats, obj)

    def long_line(self, line: LongLine, now: float) -> None:
        """An over-long line: content, or the final object with a long ``context``."""
        obj = read_long_object(line)
        if obj is None:
            return
        if "error" in obj:
            self.stats.error = str(obj["error"])[:200]
        elif obj.get("done") is True:
            read_native_final(self.stats, obj)
        elif self.stats.first_content_at is None:
            self.stats.first_content_at = self.stats.last_content_at = now
        else:
            self.stats.last_content_at = now


# With include_usage, Ollama's /v1/completions puts this on every chunk (Go's encoder
# writes it byte for byte the same each time); without it the field is omitted.
ZERO_USAGE = b',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'


class SSEStreamObserver:
    """Reads an OpenAI SSE stream; optionally hides the usage the proxy asked for.

    When the client did not ask for ``stream_options.include_usage`` the proxy asks for
    it upstream (it is the only place token counts appear) and removes what that adds
    (the final usage event, and the zeroed usage field /v1/completions puts on every
    chunk), so the client receives exactly the bytes it would have got without the proxy.
    """

    __slots__ = ("stats", "strip_usage", "unparsed", "_drop_blank")

    def __init__(self, stats: ReplyStats, strip_usage: bool) -> None:
        self.stats = stats
        self.strip_usage = strip_usage
        self.unparsed = 0
        self._drop_blank = False

    def long_line(self, line: LongLine, now: float) -> None:
        """An over-long event line: only ever content (usage and [DONE] are short)."""
        if line.head.startswith(b"data:") and self.stats.first_content_at is not None:
            self.stats.last_content_at = now

    def line(self, line: bytes, now: float) -> bytes | None:
        """Observe one line; return what the client gets of it (None: nothing)."""
        if not line.startswith(b"data:"):
            if self._drop_blank and not line.strip():
                self._drop_blank = False
                return None
            return line
        self._drop_blank = False
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.stats.finished = True
            return line
        if self.strip_usage and ZERO_USAGE in line:
            line = line.replace(ZERO_USAGE, b"", 1)
            payload = payload.replace(ZERO_USAGE, b"", 1)
        stats = self.stats
        if (stats.first_content_at is not None and b'"usage"' not in payload
                and b'"error"' not in payload):
            stats.last_content_at = now
            return line
        obj = _loads(payload)
        if not isinstance(obj, dict):
            self.unparsed += 1
            return line
        if "error" in obj:
            err = obj["error"]
            stats.error = str(err.get("message") if isinstance(err, dict) else err)[:200]
            return line
        if obj.get("usage"):
            read_openai_usage(stats, obj)
            if self.strip_usage and obj.get("choices") == []:
                self._drop_blank = True
                return None
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") or delta.get("reasoning") or delta.get("tool_calls") \
                if isinstance(delta, dict) else choice.get("text")
            if text:
                if stats.first_content_at is None:
                    stats.first_content_at = now
                stats.last_content_at = now
        return line


def read_reply_body(endpoint: Endpoint, obj: dict[str, Any], stats: ReplyStats) -> None:
    """Fill ``stats`` from a complete (non-stream) JSON reply, already decoded."""
    if endpoint.protocol == "ollama":
        read_native_final(stats, obj)
    else:
        read_openai_usage(stats, obj)
        stats.finished = True
