"""Label values that came from a client, made safe to expose.

Prometheus' text format is UTF-8. A session id sent as raw bytes (aiohttp decodes header
bytes with ``surrogateescape``) or a JSON ``"\\ud800"`` escape becomes a ``str`` holding
lone surrogates, which ``generate_latest`` cannot encode: one such request turned every
scrape into a 500 until its series expired, and the rollback alerts went blind. Every
client-supplied value is cleaned once, where it becomes a label; ``/metrics`` also falls
back to cleaning on output, so no series can ever take the endpoint down.
"""

from __future__ import annotations

from typing import Any, Iterable

REPLACEMENT = "\ufffd"


def clean_label(text: str) -> str:
    """``text`` with every character that is not printable UTF-8 (lone surrogates,
    control characters, line breaks) replaced by U+FFFD."""
    if text.isprintable():  # surrogates and controls are not printable: the common fast path
        return text
    return "".join(c if c.isprintable() else REPLACEMENT for c in text)


class CleanedRegistry:
    """A registry view whose label values are cleaned: the fallback renderer of /metrics."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def restricted_registry(self, names: Iterable[str]) -> "CleanedRegistry":
        return CleanedRegistry(self.registry.restricted_registry(names))

    def collect(self) -> Iterable[Any]:
        for family in self.registry.collect():
            family.samples = [s._replace(labels={k: clean_label(v) for k, v in s.labels.items()})
                              for s in family.samples]
            yield family
