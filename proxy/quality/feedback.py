"""User feedback on answers: ``POST /api/feedback`` or ``/v1/feedback`` with a request id.

Every instrumented response carries ``X-Request-ID`` (the client's own when it sent a
well-formed one, else a new one). The proxy remembers, for ``feedback_ttl`` and at most
``feedback_cap`` ids, which route, arm and model served each request and which API key made
it (a hash), so a rating can be attributed without the client knowing the arm. A rating is
``1`` / ``-1`` or a number in [0, 1] (0.5 and above is positive); a comment is accepted and
dropped. The same request rated again counts once: the last rating wins, and the one it
replaces is counted in ``ollama_proxy_feedback_retracted_total``, so the negative ratio is
(rated − retracted) over the same.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import time
from collections import deque
from typing import Any, Callable, NamedTuple

from proxy.metrics import ProxyMetrics

POSITIVE, NEGATIVE = "positive", "negative"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what a client's own X-Request-ID may be


_PREFIX = secrets.token_hex(6)  # this process's, random: ids do not repeat across restarts
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A unique id without a system call per request: a random per-process prefix and a
    counter (24 hex digits). Not a secret: feedback is scoped to the API key that asked."""
    return f"{_PREFIX}{next(_COUNTER):012x}"


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when well formed (bounded length and characters), else a new one."""
    return header if header is not None and REQUEST_ID.fullmatch(header) else new_request_id()


_NO_KEY = hashlib.blake2b(b"", digest_size=8).digest()


def key_hash(authorization: str | None) -> bytes:
    """Who may rate a request: a hash of the API key that made it (empty without keys)."""
    if not authorization:
        return _NO_KEY
    return hashlib.blake2b(authorization.encode(), digest_size=8).digest()


def rating_of(score: Any) -> str | None:
    """``positive`` or ``negative`` for a valid score, else None."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    if score == 1 or score == -1:
        return POSITIVE if score == 1 else NEGATIVE
    if 0 <= score <= 1:
        return POSITIVE if score >= 0.5 else NEGATIVE
    return None


class Served(NamedTuple):
    """Who served a request. A tuple of strings and numbers, which the garbage collector
    stops tracking, so a full store (100 000 ids) adds nothing to its passes."""

    route: str
    arm: str
    model: str
    key: bytes
    expires: float


class FeedbackError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FeedbackStore:
    def __init__(self, metrics: ProxyMetrics, ttl: float, cap: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        # (route, arm, rating, the rating it replaces or None): the rollouts' quality checks
        self.on_rating: Callable[[str, str, str, str | None], None] = lambda *rating: None
        self.ttl = ttl
        self.cap = cap
        self.clock = clock
        self.served: dict[str, Served] = {}
        self._order: deque[tuple[float, str]] = deque()  # (expiry, id), oldest first
        self.ratings: dict[str, str] = {}  # request id -> its current rating (rated answers only)
        # With several replicas: (id, route, arm, model, key) of each answer, for Redis (proxy.replicas)
        self.outbox: deque[tuple[str, str, str, str, bytes]] | None = None

    def remember(self, request_id: str, route: str, arm: str, model: str, key: bytes) -> None:
        now = self.clock()
        expires = now + self.ttl
        self.served[request_id] = Served(route, arm, model, key, expires)
        if self.outbox is not None:
            self.outbox.append((request_id, route, arm, model, key))
        order = self._order
        order.append((expires, request_id))
        # the oldest ids go as new ones arrive (over the cap, or expired): bounded work per request
        for _ in range(2):
            if len(order) > self.cap or (order and order[0][0] < now):
                old_expires, old_id = order.popleft()
                entry = self.served.get(old_id)
                if entry is not None and entry.expires == old_expires:  # not since reused by a client
                    del self.served[old_id]
                    self._forget(old_id)

    def adopt(self, request_id: str, served: dict[str, Any] | None, rating: str | None, key: bytes) -> None:
        """What another replica recorded of ``request_id`` for the API key ``key`` (its
        answer, its rating so far); another key's entry here is left alone."""
        mine = self.served.get(request_id)
        if mine is not None and mine.key != key:
            return
        if served is not None and mine is None:
            try:
                entry = Served(str(served["route"]), str(served["arm"]), str(served["model"]),
                               bytes.fromhex(str(served["key"])), self.clock() + self.ttl)
            except (KeyError, ValueError):
                return
            self.served[request_id] = entry
            self._order.append((entry.expires, request_id))
        if rating in (POSITIVE, NEGATIVE) and request_id in self.served:
            self.ratings[request_id] = rating

    def _forget(self, request_id: str) -> None:
        if self.ratings:
            self.ratings.pop(request_id, None)

    def rate(self, body: Any, key: bytes) -> dict[str, Any]:
        """Attribute one rating; raises :class:`FeedbackError` (400 malformed, 404 unknown)."""
        if not isinstance(body, dict):
            raise FeedbackError(400, 'body must be a JSON object: {"request_id": "...", "score": 1}')
        request_id, score = body.get("request_id"), body.get("score")
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise FeedbackError(400, "request_id must be the X-Request-ID of an answer (1-128 letters, digits, ._:-)")
        rating = rating_of(score)
        if rating is None:
            raise FeedbackError(400, "score must be 1 (positive), -1 (negative) or a number in [0, 1] "
                                     "(0.5 and above is positive)")
        if "comment" in body and not isinstance(body["comment"], str):
            raise FeedbackError(400, "comment must be a string")
        served = self.served.get(request_id)
        if served is None or served.expires < self.clock() or served.key != key:
            # another key's request is as unknown as an expired one: ids do not leak across keys
            raise FeedbackError(404, f"no recent answer with request_id {request_id!r} (ids are kept "
                                     f"{self.ttl:g}s, for the API key that made the request)")
        m = self.metrics
        previous = self.ratings.get(request_id)
        if previous is not None:
            m.feedback_retracted.labels(served.route, served.arm, served.model, previous).inc()
        self.on_rating(served.route, served.arm, rating, previous)
        self.ratings[request_id] = rating
        m.feedback.labels(served.route, served.arm, served.model, rating).inc()
        return {"request_id": request_id, "rating": rating, "route": served.route, "arm": served.arm,
                "model": served.model}
