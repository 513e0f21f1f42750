"""Turns one finished request into samples, and forgets sessions that went quiet.

Kept apart from the forwarding code so the request path calls exactly one method per
request, and so the series bookkeeping needed to remove an evicted session's series
(prometheus_client removes series by their full label tuple) lives in one place.
"""

from __future__ import annotations

from collections import defaultdict

from proxy import __version__
from proxy.config import ProxyConfig
from proxy.dataplane.label_values import clean_label
from proxy.metrics import ProxyMetrics
from proxy.dataplane.observe import ENDPOINTS, ReplyStats
from proxy.dataplane.sessions import NO_SESSION, OVERFLOW, SessionLabels


def canonical_model(name: str) -> str:
    """A model's name as Ollama lists it (``/api/tags``, ``/api/ps``, so the exporter's
    labels): ``llama3.2`` is ``llama3.2:latest``. Clients may send either; one label."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class Recorder:
    def __init__(self, metrics: ProxyMetrics, config: ProxyConfig) -> None:
        self.metrics = metrics
        self.sessions = SessionLabels(config.session_label_cap, config.session_label_ttl, self._evict)
        # Models asked for directly, by name: a client could invent any number of them.
        self.model_label_cap = config.model_label_cap
        self._direct_models: set[str] = set()
        # session label -> label tuples it was used with, per metric
        self._request_series: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        self._token_series: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        metrics.build_info.labels(__version__).set(1)

    def session_label(self, raw: str | None) -> str:
        label = self.sessions.label(None if raw is None else clean_label(raw))
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

    def release_model(self, model: str) -> None:
        """Give back a label admitted for a model Ollama did not know (a typo, a scan)."""
        self._direct_models.discard(canonical_model(clean_label(model)))

    def _evict(self, label: str) -> None:
        m = self.metrics
        for labels in self._request_series.pop(label, ()):
            m.requests.remove(*labels)
        for labels in self._token_series.pop(label, ()):
            m.tokens.remove(*labels)
        m.session_labels_evicted.inc()

    def request(self, endpoint: str, route: str, arm: str, model: str, session: str,
                error_type: str, duration: float, stats: ReplyStats | None) -> None:
        """Record a finished request (``stats`` only for instrumented endpoints)."""
        m = self.metrics
        if session not in (NO_SESSION, OVERFLOW):
            # Re-admit: a request can outlive its session's TTL, and a series recreated for
            # an evicted value would escape the cap.
            session = self.session_label(session)
        labels = (endpoint, route, arm, model, session, error_type)
        self._request_series[session].add(labels)
        m.requests.labels(*labels).inc()
        if endpoint in ENDPOINTS:
            m.route_requests.labels(route, arm, model, error_type).inc()
        base = (endpoint, route, arm, model)
        m.request_duration.labels(*base).observe(duration)
        if stats is None:
            return
        for kind, count in (("prompt", stats.prompt_tokens), ("completion", stats.completion_tokens)):
            if count:
                token_labels = base + (session, kind)
                self._token_series[session].add(token_labels)
                m.tokens.labels(*token_labels).inc(count)
        for hist, value in ((m.load_duration, stats.load_duration),
                            (m.prompt_eval_duration, stats.prompt_eval_duration),
                            (m.eval_duration, stats.eval_duration)):
            if value is not None:
                hist.labels(*base).observe(value)

    def ttft(self, endpoint: str, route: str, arm: str, model: str, seconds: float) -> None:
        self.metrics.ttft.labels(endpoint, route, arm, model).observe(seconds)

    def tpot(self, endpoint: str, route: str, arm: str, model: str, seconds: float) -> None:
        self.metrics.tpot.labels(endpoint, route, arm, model).observe(seconds)
