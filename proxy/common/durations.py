"""Durations as people write them in a config file: ``90``, ``2.5``, ``30s``, ``5m``, ``1h30m``.

Every duration key of the config takes either form, so a value copied from a Prometheus
rule (``5m``) and one written as seconds (``300``) mean the same thing.
"""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PATTERN = r"^\s*((\d+(\.\d+)?(ms|s|m|h|d))+|\d+(\.\d+)?)\s*$"
"""What :func:`parse_duration` accepts as text (for the JSON Schema)."""


def parse_duration(value: object) -> float:
    """Seconds of ``value``: a number (seconds) or a string of number-unit parts. Raises
    ValueError with what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration (seconds, or e.g. 30s, 5m, 1h), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"must be a duration (seconds, or e.g. 30s, 5m, 1h), got {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"must be a duration (seconds, or e.g. 30s, 5m, 1h), got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form: ``45s``, ``5m``, ``1h30m``, ``2.5s``."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"
