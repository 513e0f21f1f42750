"""Session flow and conversations per arm, without keeping a session id or a prompt.

Each session is a keyed hash of its id (a per-process key: these hashes never become label
values) mapped to a compact record: where it was routed, when it started and was last
seen, how many requests it made, a hash of its last conversation and whether that request
failed. From those records:

* **sessions**: a session is active while it sent a request within ``active_window``;
  ``started`` when first seen, ``expired`` when the window passes without a request, when
  its duration and request count are observed. Exact, independent of the session label
  cap, up to ``cap`` tracked sessions (then counted as overflow, never tracked).
* **regenerations**: a chat request whose messages hash equals the same session's previous
  request's is the user asking for the same turn again, because the answer was not good
  enough. After a failed or cut reply it is a retry instead, counted apart.

Counting happens on the request path (a dict lookup and a hash per request); expiry runs
in a background sweep. Behind several replicas, a session must stay on one replica for
these counts to be exact (docs/metrics.md says what they mean otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from proxy.metrics import ProxyMetrics

STARTED, EXPIRED, OVERFLOWED = "started", "expired", "overflow"
REGENERATION, RETRY, NEW_TURN = "regeneration", "retry", "turn"


def conversation_hash(messages: Any) -> bytes | None:
    """A fingerprint of a chat request's messages (roles and contents, in order); None when
    the body has none. Only the hash is kept."""
    if not isinstance(messages, list) or not messages:
        return None
    try:
        text = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError):
        return None
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


def user_turns(messages: Any) -> int:
    """User messages in a chat request (native and OpenAI use the same shape)."""
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "user")


@dataclass(slots=True)
class SessionRecord:
    route: str
    arm: str
    started: float
    last_seen: float
    requests: int = 0
    last_conversation: bytes | None = None
    last_failed: bool = False


class SessionTracker:
    def __init__(self, metrics: ProxyMetrics, active_window: float, cap: int,
                 clock: Callable[[], float] = time.monotonic, key: bytes | None = None) -> None:
        self.metrics = metrics
        self.active_window = active_window
        self.cap = cap
        self.clock = clock
        self.key = key or os.urandom(16)  # per process: these hashes are never label values
        self.sessions: OrderedDict[bytes, SessionRecord] = OrderedDict()  # least recently seen first
        self.active: dict[tuple[str, str], int] = {}

    def _id(self, session: str) -> bytes:
        return hashlib.blake2b(session.encode("utf-8", "surrogatepass"), key=self.key, digest_size=12).digest()

    def observe(self, session: str, route: str, arm: str, conversation: bytes | None, failed: bool) -> str | None:
        """One finished request of ``session``; returns whether it was a regeneration, a
        retry or a new turn of the conversation (None when it had no messages)."""
        now = self.clock()
        sid = self._id(session)
        record = self.sessions.get(sid)
        m = self.metrics
        if record is not None and now - record.last_seen > self.active_window:
            self._expire(sid, record)
            record = None
        if record is None:
            if len(self.sessions) >= self.cap:
                m.sessions.labels(route, arm, OVERFLOWED).inc()
                return None
            record = self.sessions[sid] = SessionRecord(route, arm, now, now)
            m.sessions.labels(route, arm, STARTED).inc()
            self.active[(route, arm)] = self.active.get((route, arm), 0) + 1
            m.active_sessions.labels(route, arm).set(self.active[(route, arm)])
        else:
            self.sessions.move_to_end(sid)
        record.last_seen = now
        record.requests += 1
        kind = None
        if conversation is not None:
            if conversation == record.last_conversation:
                kind = RETRY if record.last_failed else REGENERATION
            else:
                kind = NEW_TURN
            record.last_conversation = conversation
            record.last_failed = failed
        return kind

    def sweep(self) -> int:
        """Expire the sessions whose window passed (least recently seen first); returns how many."""
        now = self.clock()
        expired = 0
        while self.sessions:
            sid, record = next(iter(self.sessions.items()))
            if now - record.last_seen <= self.active_window:
                break
            self._expire(sid, record)
            expired += 1
        return expired

    def _expire(self, sid: bytes, record: SessionRecord) -> None:
        del self.sessions[sid]
        m = self.metrics
        key = (record.route, record.arm)
        self.active[key] = max(0, self.active.get(key, 0) - 1)
        m.active_sessions.labels(*key).set(self.active[key])
        m.sessions.labels(record.route, record.arm, EXPIRED).inc()
        m.session_duration.labels(*key).observe(record.last_seen - record.started)
        m.session_requests.labels(*key).observe(record.requests)
