"""Session labels with a hard cap, so a client cannot explode the metric cardinality.

Per-session series are what make "which user hammers the GPU" answerable, but session
ids are unbounded. At most ``cap`` values are live; a new value beyond the cap is
labelled ``other``; a value unused for ``ttl`` seconds is evicted and every series that
carried it is removed from the registry, which frees its slot. ``none`` (no session) and
``other`` are always available, so /metrics holds at most cap + 2 session values.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Callable, Iterable, Mapping

from proxy.metrics import NO_SESSION, OVERFLOW


def session_hash(value: str) -> str:
    """A short, stable digest for logs: correlates requests without revealing the id."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def keyed_session_label(session: str, key: bytes) -> str:
    """The label value of a session id under ``key``: 12 hex digits, the same on every
    replica and after restarts that share the key, and no way back to the id without it."""
    return hashlib.blake2b(session.encode("utf-8", "surrogatepass"), key=key[:64], digest_size=6).hexdigest()


def extract_session(sources: Iterable[str], headers: Mapping[str, str], body: object) -> str | None:
    """The first non-empty value among ``header:NAME`` / ``body:FIELD`` sources."""
    for source in sources:
        kind, _, name = source.partition(":")
        if kind == "header":
            value = headers.get(name)
        elif isinstance(body, dict):
            value = body.get(name)
        else:
            value = None
        if isinstance(value, str) and value:
            return value[:256]
    return None


class SessionLabels:
    """Maps raw session ids to label values and removes the series of evicted ones.

    ``on_evict(label)`` is called for each evicted value so the metrics layer can
    remove the series it created with that label.
    """

    def __init__(self, cap: int, ttl: float, on_evict: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.ttl = ttl
        self._on_evict = on_evict
        self._clock = clock
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._next_sweep = clock() + min(ttl, 30.0)

    def __len__(self) -> int:
        return len(self._last_seen)

    def label(self, session: str | None) -> str:
        if not session:
            return NO_SESSION
        if session in (NO_SESSION, OVERFLOW):
            return OVERFLOW  # a client cannot impersonate the reserved values
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        seen = self._last_seen
        if session in seen:
            seen[session] = now
            seen.move_to_end(session)
            return session
        if len(seen) >= self.cap:
            # Full: make room only if the least recently used value has expired.
            oldest, last = next(iter(seen.items()), (None, now))
            if oldest is None or now - last < self.ttl:
                return OVERFLOW
            self.sweep(now)
        seen[session] = now
        return session

    def sweep(self, now: float | None = None) -> int:
        """Evict every value unused for ``ttl``; returns how many went."""
        now = self._clock() if now is None else now
        self._next_sweep = now + min(self.ttl, 30.0)
        seen = self._last_seen
        evicted = 0
        while seen:
            oldest, last = next(iter(seen.items()))
            if now - last < self.ttl:
                break
            del seen[oldest]
            self._on_evict(oldest)
            evicted += 1
        return evicted
