"""The quality signals of one finished request: conversation depth, regenerations and
retries, the session flow, and the request id feedback can later name.

Called once per instrumented request, after it ended, with what the request path already
has (no prompt text leaves this function: only a hash of the messages is kept, in the
session's record).
"""

from __future__ import annotations

from typing import Any

from proxy.config import ProxyConfig
from proxy.control.routing import Decision
from proxy.dataplane.instrument import RequestRecord
from proxy.metrics import NO_MODEL, ErrorType, ProxyMetrics
from proxy.quality.feedback import FeedbackStore, key_hash
from proxy.quality.sessions import REGENERATION, RETRY, SessionTracker, conversation_hash, user_turns

CHAT_ENDPOINTS = frozenset({"/api/chat", "/v1/chat/completions"})


class QualitySignals:
    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
        self.tracker = SessionTracker(metrics, config.session_active_window, config.session_tracking_cap)
        self.feedback = FeedbackStore(metrics, config.feedback_ttl, config.feedback_cap)
        self._turns: dict[tuple[str, str, str], Any] = {}  # resolved histogram children

    def observe(self, endpoint: str, decision: Decision, rec: RequestRecord, session: str | None,
                messages: Any, authorization: str | None) -> None:
        if rec.model == NO_MODEL:
            return  # refused before a model was known: nothing to attribute
        failed = rec.error_type != ErrorType.NONE
        conversation = None
        if endpoint in CHAT_ENDPOINTS:
            turns = user_turns(messages)
            if turns:
                key = (endpoint, rec.route, rec.arm)
                histogram = self._turns.get(key)
                if histogram is None:
                    histogram = self._turns[key] = self.metrics.conversation_turns.labels(*key)
                histogram.observe(turns)
                rec.chat = True
                # Only a session can regenerate: no session, no hash to compute.
                conversation = conversation_hash(messages) if session else None
        if session:
            kind = self.tracker.observe(session, rec.route, rec.arm, conversation, failed)
            if kind == REGENERATION:
                rec.regenerated = True
                self.metrics.regenerations.labels(rec.route, rec.arm, rec.model).inc()
            elif kind == RETRY:
                self.metrics.client_retries.labels(rec.route, rec.arm, rec.model).inc()
        if decision.request_id and not failed:
            self.feedback.remember(decision.request_id, rec.route, rec.arm, rec.model, key_hash(authorization))
