"""Turns one finished request into label values, samples and an access-log line.

The request path builds one :class:`RequestRecord` and hands it over; everything that
decides a label value lives here: the session cap, the model-label bound, relabelling a
model name Ollama never confirmed, and the series bookkeeping needed to remove an
evicted session's series (prometheus_client removes series by their full label tuple;
its ``remove_by_labels`` scans every series of a metric per call, which a sweep of 200
sessions would turn into a stall on the request path).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from proxy import __version__
from proxy.config import ProxyConfig
from proxy.dataplane.label_values import clean_label
from proxy.dataplane.observe import ENDPOINTS, ReplyStats
from proxy.dataplane.sessions import SessionLabels, keyed_session_label, session_hash
from proxy.metrics import (NO_MODEL, NO_ROUTE, NO_SESSION, NO_UPSTREAM, OVERFLOW, UNCONFIRMED_MODEL, Arm, ErrorType,
                           ProxyMetrics, remove_series)

access_log = logging.getLogger("ollama_sidecar.access")


def canonical_model(name: str) -> str:
    """A model's name as Ollama lists it (``/api/tags``, ``/api/ps``, so the exporter's
    labels): ``llama3.2`` is ``llama3.2:latest``. Clients may send either; one label."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request, in label values (``model`` and ``session`` as the
    recorder issued them). ``model_admitted`` says this request took a new model-label
    slot, which it gives back if Ollama never confirmed the name."""

    endpoint: str
    route: str = NO_ROUTE
    arm: Arm = Arm.DIRECT
    model: str = NO_MODEL
    session: str = NO_SESSION
    error_type: ErrorType = ErrorType.NONE
    status: int = 0
    duration: float = 0.0
    start: float = 0.0  # perf_counter at arrival, for time to first token
    stats: ReplyStats | None = None
    model_admitted: bool = field(default=False)
    # Set by the recorder for the decisions that read them (rollout checks): the time to
    # first token of a successful, warm request, and whether it waited for a model load.
    ttft: float | None = None
    load_wait: bool = False
    upstream: str = NO_UPSTREAM  # the server that answered (its name in the config)
    chat: bool = False  # a chat request with messages (set by the quality signals)
    regenerated: bool = False  # the same turn asked again after a successful answer
    tenant: str | None = None  # whose key made it (auth.tenants); never the key


class BaseChildren:
    """The labelled children of one (endpoint, route, arm, model), resolved once: each
    ``labels()`` call takes prometheus_client's lock and builds a key, and a request made
    seven of them. None of these series is ever removed, and their label values are bounded
    (endpoints, routes, arms, the model label cap), so neither is this cache."""

    __slots__ = ("duration", "load", "prompt_eval", "eval", "ttft", "tpot", "load_waits")

    def __init__(self, m: ProxyMetrics, base: tuple[str, str, str, str]) -> None:
        # Only the series the endpoint can have: no upstream timings for passthrough, no
        # first token for embeddings (a series at 0 would say something happened).
        endpoint = ENDPOINTS.get(base[0])
        self.duration = m.request_duration.labels(*base)
        if endpoint is not None:
            self.load = m.load_duration.labels(*base)
            self.prompt_eval = m.prompt_eval_duration.labels(*base)
            self.eval = m.eval_duration.labels(*base)
        if endpoint is not None and endpoint.generates:
            self.ttft = m.ttft.labels(*base)
            self.tpot = m.tpot.labels(*base)
            self.load_waits = m.model_load_waits.labels(*base[1:])


class Recorder:
    def __init__(self, metrics: ProxyMetrics, config: ProxyConfig,
                 clock: Callable[[], float] = time.monotonic, session_key: bytes | None = None) -> None:
        self.metrics = metrics
        # With a key, a session's label is a keyed hash of its id (the default): /metrics
        # may be read by more people than the user ids in it should be.
        self.session_key = session_key
        self.sessions = SessionLabels(config.session_label_cap, config.session_label_ttl, self._evict, clock)
        # Models asked for directly, by name: a client could invent any number of them.
        self.model_label_cap = config.model_label_cap
        self.access_log = config.access_log
        self.load_wait = config.decisions.load_wait
        self._upstream_tokens: dict[tuple[str, str, str], Any] = {}  # resolved children (models are bounded)
        self._route_children: dict[tuple[str, ...], Any] = {}
        self._children: dict[tuple[str, str, str, str], BaseChildren] = {}
        # Whether a server lists the model as installed (the fleet's discovery); set by the app.
        self.installed: Callable[[str], bool] = lambda model: False
        self._direct_models: set[str] = set()
        # session label -> label tuples it was used with, per metric
        self._request_series: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        self._token_series: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        metrics.build_info.labels(__version__).set(1)

    # --- label values --------------------------------------------------------------------------
    def label_of(self, session: str) -> str:
        """The label value a session id gets (before the cap)."""
        return keyed_session_label(session, self.session_key) if self.session_key else clean_label(session)

    def session_label(self, raw: str | None) -> str:
        return self._admit(None if raw is None else self.label_of(raw))

    def _admit(self, label: str | None) -> str:
        label = self.sessions.label(label)
        self.metrics.session_labels.set(len(self.sessions))
        return label

    def model_label(self, model: str, routed: bool) -> tuple[str, bool]:
        """The label for ``model`` and whether this call admitted it. Routed models are
        bounded by the config; direct ones by ``model_label_cap`` (then ``other``)."""
        label = canonical_model(clean_label(model))
        if routed or label in self._direct_models:
            return label, False
        if len(self._direct_models) >= self.model_label_cap:
            return OVERFLOW, False
        self._direct_models.add(label)
        return label, True

    def _confirm_model(self, rec: RequestRecord) -> None:
        """A name Ollama has not confirmed (a typo, a scanner's guess, a request that failed
        before Ollama could say) gets no series of its own and keeps no slot. A model a
        server lists as installed keeps its label even when every request to it fails (a
        model that cannot load answers 500): the on-call must see which one is broken."""
        if rec.route != NO_ROUTE or not (rec.error_type == ErrorType.MODEL_NOT_FOUND
                                         or (rec.model_admitted and not 200 <= rec.status < 300)):
            return
        if rec.error_type != ErrorType.MODEL_NOT_FOUND and self.installed(rec.model):
            return
        self._direct_models.discard(rec.model)
        if rec.model_admitted:
            remove_series(self.metrics.in_flight, rec.route, rec.arm, rec.model)
        rec.model = UNCONFIRMED_MODEL

    def _evict(self, label: str) -> None:
        m = self.metrics
        for labels in self._request_series.pop(label, ()):
            remove_series(m.requests, *labels)
        for labels in self._token_series.pop(label, ()):
            remove_series(m.tokens, *labels)
        m.session_labels_evicted.inc()

    # --- samples -----------------------------------------------------------------------------
    def record(self, rec: RequestRecord) -> None:
        """Record a finished request (``stats`` only for instrumented endpoints)."""
        m = self.metrics
        self._confirm_model(rec)
        session = rec.session
        if session not in (NO_SESSION, OVERFLOW):
            # Re-admit: a request can outlive its session's TTL, and a series recreated for
            # an evicted value would escape the cap.
            session = rec.session = self._admit(session)
        base = (rec.endpoint, rec.route, rec.arm, rec.model)
        labels = (*base, session, rec.error_type)
        self._request_series[session].add(labels)
        m.requests.labels(*labels).inc()
        if rec.endpoint in ENDPOINTS:
            key = (rec.route, rec.arm, rec.model, rec.upstream, rec.error_type)
            counter = self._route_children.get(key)
            if counter is None:
                counter = self._route_children[key] = m.route_requests.labels(*key)
            counter.inc()
        children = self._children.get(base)
        if children is None:
            children = self._children[base] = BaseChildren(m, base)
        children.duration.observe(rec.duration)
        stats = rec.stats
        if stats is not None:
            for kind, count in (("prompt", stats.prompt_tokens), ("completion", stats.completion_tokens)):
                if count:
                    token_labels = (*base, session, kind)
                    self._token_series[session].add(token_labels)
                    m.tokens.labels(*token_labels).inc(count)
                    key = (rec.upstream, rec.model, kind)
                    per_server = self._upstream_tokens.get(key)
                    if per_server is None:
                        per_server = self._upstream_tokens[key] = m.upstream_tokens.labels(*key)
                    per_server.inc(count)
            for hist, value in ((children.load, stats.load_duration),
                                (children.prompt_eval, stats.prompt_eval_duration),
                                (children.eval, stats.eval_duration)):
                if value is not None:
                    hist.observe(value)
            if ENDPOINTS[rec.endpoint].generates:
                self._timings(rec, children, stats)
            if self.access_log:
                self._log(rec)

    def _timings(self, rec: RequestRecord, children: "BaseChildren", stats: ReplyStats) -> None:
        """Time to first token of successful requests that did not wait for a model load,
        so that the latency decisions compare like with like: a failed request's "first
        token" may be an error, and a cold load measures Ollama's scheduler, not the model.
        The loads are counted apart. (OpenAI-compatible replies carry no load_duration:
        their loads cannot be told apart and stay in.)"""
        if stats.load_duration is not None and stats.load_duration >= self.load_wait:
            rec.load_wait = True
            children.load_waits.inc()
        elif rec.error_type != ErrorType.NONE:
            pass
        elif stats.first_content_at is not None:
            rec.ttft = stats.first_content_at - rec.start
        elif stats.load_duration is not None or stats.prompt_eval_duration is not None:
            # Non-stream reply: the upstream's own account of time before the first token.
            rec.ttft = (stats.load_duration or 0.0) + (stats.prompt_eval_duration or 0.0)
        if rec.ttft is not None:
            children.ttft.observe(rec.ttft)
        n = stats.completion_tokens
        if stats.eval_duration is not None and n:
            children.tpot.observe(stats.eval_duration / n)
        elif n and n > 1 and stats.first_content_at is not None and stats.last_content_at is not None:
            children.tpot.observe((stats.last_content_at - stats.first_content_at) / (n - 1))

    def _log(self, rec: RequestRecord) -> None:
        """One JSON line per instrumented request: label values and numbers, never a prompt
        and never a session id in clear (a hashed label is logged as is, so a log line and
        its series correlate)."""
        stats = rec.stats or ReplyStats()
        in_clear = self.session_key is None and rec.session not in (NO_SESSION, OVERFLOW)
        access_log.info(json.dumps({
            "endpoint": rec.endpoint, "route": rec.route, "arm": rec.arm, "model": rec.model,
            "session": session_hash(rec.session) if in_clear else rec.session,
            "status": rec.status or 499, "error_type": rec.error_type, "duration": round(rec.duration, 6),
            "ttft": round(stats.first_content_at - rec.start, 6) if stats.first_content_at else None,
            "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "tenant": rec.tenant,
        }))
