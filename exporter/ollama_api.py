"""Turn Ollama's /api/version, /api/tags and /api/ps replies into plain records.

Ollama omits zero values (Go ``omitempty``) and older versions lack newer fields
(``context_length`` came in 0.9.7), so every field except a model's name is optional
here: a missing field becomes ``None`` and the collector skips that one series instead of
inventing a zero. A reply of the wrong *shape* (not an object, ``models`` not a list) is
an error for the whole endpoint; one malformed entry in an otherwise good list is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.common.rfc3339 import parse_rfc3339

__all__ = ["parse_rfc3339"]


class OllamaReplyError(ValueError):
    """Ollama answered, but not with the shape its API documents."""


@dataclass(frozen=True)
class InstalledModel:
    """One entry of ``GET /api/tags``."""

    name: str
    size: int | None
    family: str
    parameter_size: str
    quantization_level: str
    format: str


@dataclass(frozen=True)
class LoadedModel:
    """One entry of ``GET /api/ps``. ``expires_at`` is a Unix timestamp in seconds."""

    name: str
    size: int | None
    size_vram: int | None
    expires_at: float | None
    context_length: int | None
    digest: str | None = None  # the manifest digest: with the name, fixes the model's blobs

    @property
    def vram_ratio(self) -> float | None:
        """``size_vram / size``; below 1 the model spilled to the CPU."""
        if self.size is None or self.size_vram is None or self.size <= 0:
            return None
        return self.size_vram / self.size


def parse_version(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("version"), str):
        raise OllamaReplyError("/api/version: expected an object with a 'version' string")
    return body["version"]


def parse_tags(body: Any) -> list[InstalledModel]:
    models = []
    for entry in _model_entries(body, "/api/tags"):
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        models.append(InstalledModel(
            name=entry["name"],
            size=_count(entry.get("size")),
            family=_text(details.get("family")),
            parameter_size=_text(details.get("parameter_size")),
            quantization_level=_text(details.get("quantization_level")),
            format=_text(details.get("format")),
        ))
    return models


def parse_ps(body: Any) -> list[LoadedModel]:
    return [
        LoadedModel(
            name=entry["name"],
            size=_count(entry.get("size")),
            size_vram=_count(entry.get("size_vram")),
            expires_at=parse_rfc3339(entry.get("expires_at")),
            context_length=_count(entry.get("context_length")),
            digest=entry.get("digest") if isinstance(entry.get("digest"), str) else None,
        )
        for entry in _model_entries(body, "/api/ps")
    ]


def _model_entries(body: Any, endpoint: str) -> list[dict[str, Any]]:
    """The usable entries of a ``{"models": [...]}`` reply, one per model name.

    Entries are keyed by ``name`` (``model`` as a fallback: both hold ``llama3.2:latest``).
    A name seen twice is kept once: a duplicate series would make Prometheus reject the
    whole scrape.
    """
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        raise OllamaReplyError(f"{endpoint}: expected an object with a 'models' list")
    seen: set[str] = set()
    entries = []
    for entry in body["models"]:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        entries.append({**entry, "name": name})
    return entries


def _count(value: Any) -> int | None:
    """A non-negative integer field, or None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
