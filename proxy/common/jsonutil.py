"""JSON from untrusted sources: one way to parse it, one way to fail.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on deeply nested input,
so ``[[[[…`` sent to any endpoint used to escape every ``except ValueError`` and end as
a 500, which Alertmanager retries forever. Every body the proxy reads from a client or
from Ollama goes through :func:`parse_json`.
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(raw: bytes | str) -> Any:
    """The decoded document; ValueError with a reason for anything that is not JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None


def json_or_none(raw: bytes | str) -> Any:
    """The decoded document, or None when ``raw`` is not JSON (for replies we only observe)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None
