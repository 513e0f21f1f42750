"""RFC 3339 timestamps as Go writes them (Ollama's ``expires_at``, Alertmanager's ``startsAt``).

One parser for the exporter and the webhook: Go writes up to nine fractional digits and
numeric offsets, which ``datetime.fromisoformat`` does not read on every Python version.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})$")


def parse_rfc3339(value: Any) -> float | None:
    """Unix seconds of a Go ``time.Time`` in JSON, or None when absent or unreadable.

    Go writes up to nine fractional digits (``…31.123456789Z``) and numeric offsets
    (``…31.83753-07:00``); ``datetime.fromisoformat`` stops at six digits on some Python
    versions, so the fraction is read separately. Go's zero time (year 1) means "not
    set" and reads as None.
    """
    if not isinstance(value, str):
        return None
    match = _RFC3339.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if int(year) <= 1:
        return None
    try:
        if offset in ("Z", "z"):
            tz = timezone.utc
        else:
            sign = -1 if offset[0] == "-" else 1
            digits = offset[1:].replace(":", "")
            tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute),
                          min(int(second), 59), tzinfo=tz)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)
