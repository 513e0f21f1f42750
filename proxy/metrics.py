"""Every metric the proxy exposes: names, help, labels and buckets, in one place.

Dashboards and alert rules import the names from here (``REQUESTS.name`` …) instead of
copying strings, and a test proves that every PromQL expression they contain names a
metric defined in this module or in :mod:`exporter.metrics`.

Metrics are instantiated per :class:`ProxyMetrics` object on a registry of its own, so
tests and benchmarks can run several proxies in one process without sharing counters.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.common.metric_spec import MetricSpec, MetricType

__all__ = ["MetricSpec", "MetricType", "ProxyMetrics"]

# Label names shared by every instrumented series.
REQUEST_LABELS = ("endpoint", "route", "arm", "model")

# Buckets: OpenTelemetry GenAI semantic conventions, with vLLM's long tail added so a cold
# load of a 70B model (minutes) does not vanish into +Inf.
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 655.36,
)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)
# Time per output token: OpenTelemetry's buckets stop at 2.5 s, where a decode stall (a
# model spilled to CPU, a GPU shared with a training job) would vanish into +Inf.
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0)
PHASE_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
    160.0, 320.0, 640.0,
)


# --- request path ------------------------------------------------------------------
REQUESTS = MetricSpec(
    "ollama_proxy_requests_total", "counter",
    "Requests answered by the proxy, by endpoint, route, arm, model, session and error type "
    "(error_type=\"none\" on success).",
    REQUEST_LABELS + ("session", "error_type"),
)
ROUTE_REQUESTS = MetricSpec(
    "ollama_proxy_route_requests_total", "counter",
    "Requests by route, arm, model, the server that answered (upstream) and error type, without "
    "the session label. Every route arm's success and server-side failure series exist from start "
    "at 0 on every server, so rate() sees the first failure (on a series born at 1 it would not): "
    "alerts and reports read this one.",
    ("route", "arm", "model", "upstream", "error_type"),
)
REQUEST_DURATION = MetricSpec(
    "ollama_proxy_request_duration_seconds", "histogram",
    "Time from request arrival to the last byte sent to the client.",
    REQUEST_LABELS, DURATION_BUCKETS, "seconds",
)
TIME_TO_FIRST_TOKEN = MetricSpec(
    "ollama_proxy_time_to_first_token_seconds", "histogram",
    "Successful requests that did not wait for a model load (see "
    "ollama_proxy_model_load_waits_total). Streams: request arrival to the first chunk carrying "
    "generated content. Non-stream: upstream prompt_eval_duration (+ load_duration).",
    REQUEST_LABELS, TTFT_BUCKETS, "seconds",
)
MODEL_LOAD_WAITS = MetricSpec(
    "ollama_proxy_model_load_waits_total", "counter",
    "Requests whose upstream load_duration reached decisions.load_wait: they waited for Ollama "
    "to load the model and are left out of the time to first token histogram (a cold load is "
    "the scheduler's doing, not the model's). Every route arm's series starts at 0.",
    ("route", "arm", "model"),
)
TIME_PER_OUTPUT_TOKEN = MetricSpec(
    "ollama_proxy_time_per_output_token_seconds", "histogram",
    "Decode time per generated token (eval_duration / eval_count when the upstream reports "
    "it, else the gap between first and last content chunk over completion tokens).",
    REQUEST_LABELS, TPOT_BUCKETS, "seconds",
)
TOKENS = MetricSpec(
    "ollama_proxy_tokens_total", "counter",
    "Tokens processed, kind=\"prompt\" (input) or \"completion\" (generated).",
    REQUEST_LABELS + ("session", "kind"),
)
UPSTREAM_LOAD_DURATION = MetricSpec(
    "ollama_proxy_upstream_load_duration_seconds", "histogram",
    "Upstream-reported load_duration: time Ollama spent loading the model (cold starts).",
    REQUEST_LABELS, PHASE_BUCKETS, "seconds",
)
UPSTREAM_PROMPT_EVAL_DURATION = MetricSpec(
    "ollama_proxy_upstream_prompt_eval_duration_seconds", "histogram",
    "Upstream-reported prompt_eval_duration: time to process the prompt.",
    REQUEST_LABELS, PHASE_BUCKETS, "seconds",
)
UPSTREAM_EVAL_DURATION = MetricSpec(
    "ollama_proxy_upstream_eval_duration_seconds", "histogram",
    "Upstream-reported eval_duration: time spent generating the completion.",
    REQUEST_LABELS, PHASE_BUCKETS, "seconds",
)
IN_FLIGHT = MetricSpec(
    "ollama_proxy_in_flight_requests", "gauge",
    "Requests being forwarded upstream right now.",
    ("route", "arm", "model"),
)
QUEUE_LENGTH = MetricSpec(
    "ollama_proxy_queue_length", "gauge",
    "Requests waiting for an admission slot (max_in_flight).",
)
SESSION_LABELS = MetricSpec(
    "ollama_proxy_session_labels", "gauge",
    "Distinct session label values live right now (at most session_label_cap).",
)
SESSION_LABELS_EVICTED = MetricSpec(
    "ollama_proxy_session_labels_evicted_total", "counter",
    "Session label values evicted after session_label_ttl; their series were removed.",
)
UNPARSED_LINES = MetricSpec(
    "ollama_proxy_unparsed_lines_total", "counter",
    "Stream lines (and non-stream replies) forwarded but not parsed whole: longer than "
    "max_line_bytes (max_parsed_reply_bytes), or not JSON.",
    ("endpoint", "reason"),
)
BUILD_INFO = MetricSpec(
    "ollama_proxy_build_info", "gauge",
    "Always 1; the proxy's version in a label.",
    ("version",),
)

# --- sessions and quality signals (proxy.quality) -----------------------------------------
SESSION_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
SESSION_REQUESTS_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233)
TURN_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
ACTIVE_SESSIONS = MetricSpec(
    "ollama_proxy_active_sessions", "gauge",
    "Sessions that sent a request within session_active_window, by the route and arm of their first request "
    "(exact, independent of the session label cap, up to session_tracking_cap).",
    ("route", "arm"),
)
SESSIONS = MetricSpec(
    "ollama_proxy_sessions_total", "counter",
    "Sessions by event: started, expired (no request within session_active_window), overflow (not tracked: "
    "session_tracking_cap reached).",
    ("route", "arm", "event"),
)
SESSION_DURATION = MetricSpec(
    "ollama_proxy_session_duration_seconds", "histogram",
    "First to last request of an expired session.", ("route", "arm"), SESSION_DURATION_BUCKETS, "seconds",
)
SESSION_REQUESTS = MetricSpec(
    "ollama_proxy_session_requests", "histogram",
    "Requests an expired session made.", ("route", "arm"), SESSION_REQUESTS_BUCKETS,
)
CONVERSATION_TURNS = MetricSpec(
    "ollama_proxy_conversation_turns", "histogram",
    "User messages in each chat request (native and OpenAI): how deep conversations go.",
    ("endpoint", "route", "arm"), TURN_BUCKETS,
)
REGENERATIONS = MetricSpec(
    "ollama_proxy_regenerations_total", "counter",
    "Chat requests whose messages were exactly those of the same session's previous request, which had "
    "succeeded: the user asked for the same turn again.",
    ("route", "arm", "model"),
)
CLIENT_RETRIES = MetricSpec(
    "ollama_proxy_client_retries_total", "counter",
    "Chat requests sent again after the same session's previous request failed or was cut (not regenerations).",
    ("route", "arm", "model"),
)
FEEDBACK = MetricSpec(
    "ollama_proxy_feedback_total", "counter",
    "Ratings received on /api/feedback or /v1/feedback for answers of this route, arm and model.",
    ("route", "arm", "model", "rating"),
)
FEEDBACK_RETRACTED = MetricSpec(
    "ollama_proxy_feedback_retracted_total", "counter",
    "Ratings replaced by a later rating of the same answer (the last one wins): subtract from "
    "ollama_proxy_feedback_total.",
    ("route", "arm", "model", "rating"),
)

# --- the fleet of Ollama servers (proxy.fleet) ------------------------------------------
UPSTREAM_UP = MetricSpec(
    "ollama_proxy_upstream_up", "gauge",
    "1 while the server is healthy (its health check passes and traffic has not ejected it).",
    ("upstream",),
)
UPSTREAM_IN_FLIGHT = MetricSpec(
    "ollama_proxy_upstream_in_flight", "gauge", "Requests this proxy has in flight on the server.", ("upstream",))
UPSTREAM_SATURATION = MetricSpec(
    "ollama_proxy_upstream_saturation", "gauge",
    "Requests in flight for the server's busiest model over its parallel slots (1 = every slot busy).",
    ("upstream",),
)
UPSTREAM_QUEUED = MetricSpec(
    "ollama_proxy_upstream_queued", "gauge",
    "Estimated requests waiting in the server's queue: this proxy's in-flight requests beyond `parallel` "
    "per model (Ollama exposes no queue length).",
    ("upstream",),
)
UPSTREAM_REQUESTS = MetricSpec(
    "ollama_proxy_upstream_requests_total", "counter",
    "Attempts on each server by outcome (ok, error: a 5xx or a cut stream, connect: refused or timed out).",
    ("upstream", "outcome"),
)
UPSTREAM_RETRIES = MetricSpec(
    "ollama_proxy_upstream_retries_total", "counter",
    "Requests retried on another server because this one failed before the first byte, by reason "
    "(connect, timeout, busy, server_error).",
    ("upstream", "reason"),
)
UPSTREAM_EJECTIONS = MetricSpec(
    "ollama_proxy_upstream_ejections_total", "counter",
    "Times the server was taken out of rotation, by reason (connect, errors, health_check).",
    ("upstream", "reason"),
)
UPSTREAM_MODEL_LOADED = MetricSpec(
    "ollama_proxy_upstream_model_loaded", "gauge",
    "1 for each model loaded on each server, as its /api/ps said at the last discovery.",
    ("upstream", "model"),
)
COLD_LOADS = MetricSpec(
    "ollama_proxy_cold_loads_total", "counter",
    "Requests that had to wait for the server to load the model (load_duration at least decisions.load_wait).",
    ("upstream", "model"),
)
BALANCER_DECISIONS = MetricSpec(
    "ollama_proxy_balancer_decisions_total", "counter",
    "Why the balancer chose a server: loaded (the model was loaded there), cold (loaded nowhere), affinity "
    "(the session's server), saturated (every server with it loaded was full), failover (a retry).",
    ("reason",),
)
UPSTREAM_TOKENS = MetricSpec(
    "ollama_proxy_upstream_tokens_total", "counter",
    "Tokens processed per server, kind=\"prompt\" or \"completion\" (no session label), to join with the "
    "exporter's per-host series (energy per token).",
    ("upstream", "model", "kind"),
)

# --- routing control plane -----------------------------------------------------------
ROUTE_INFO = MetricSpec(
    "ollama_proxy_route_info", "gauge",
    "Always 1 per route: which models the stable and canary arms serve right now.",
    ("route", "stable", "canary"),
)
ROUTE_CANARY_WEIGHT = MetricSpec(
    "ollama_proxy_route_canary_weight", "gauge",
    "Percentage (0-100) of sessions routed to the canary arm.",
    ("route",),
)
ROUTE_ROLLED_BACK = MetricSpec(
    "ollama_proxy_route_rolled_back", "gauge",
    "1 while the route is rolled back (canary weight forced to 0), else 0.",
    ("route",),
)
ROUTE_CHANGES = MetricSpec(
    "ollama_proxy_route_changes_total", "counter",
    "Route changes by reason (admin, config, alert:<name>, breaker, reconcile, promote, resume, probe: "
    "auto-resume's probe passed or failed, rollout: a rollout's gate rolled back, rollout_step: a rollout "
    "moved to its next step).",
    ("route", "reason"),
)
BREAKER_CANARY_FAILURE_RATIO = MetricSpec(
    "ollama_proxy_breaker_canary_failure_ratio", "gauge",
    "Server-side failure ratio of the canary arm over the breaker window (0-1).",
    ("route",),
)
BREAKER_LOG_LIKELIHOOD_RATIO = MetricSpec(
    "ollama_proxy_breaker_log_likelihood_ratio", "gauge",
    "The breaker's sequential test: log-likelihood ratio of 'canary fails rate_ratio x stable' against "
    "'equal'; it trips at log(1/alpha) (with the window's limits met).",
    ("route",),
)
ROLLOUT_PHASE = MetricSpec(
    "ollama_proxy_rollout_phase", "gauge",
    "One series per phase (idle, progressing, paused, stalled, succeeded, failed); 1 for the route's "
    "rollout's current phase.",
    ("route", "phase"),
)
ROLLOUT_STEP = MetricSpec(
    "ollama_proxy_rollout_step", "gauge",
    "The rollout's current step, 1-based (0 when the route never had a rollout).",
    ("route",),
)
ROLLOUT_ANALYSES = MetricSpec(
    "ollama_proxy_rollout_analyses_total", "counter",
    "Judgements of the rollout gate by check (failure_ratio, ttft_over_slo) and result (continue, "
    "non_inferior, inconclusive, worse).",
    ("route", "check", "result"),
)
ROLLOUT_CHECK_VALUE = MetricSpec(
    "ollama_proxy_rollout_check_value", "gauge",
    "Each check's ratio (0-1) over the whole rollout, per arm: what the gate compares.",
    ("route", "check", "arm"),
)
ROLLOUT_CHECK_LIMIT = MetricSpec(
    "ollama_proxy_rollout_check_limit", "gauge",
    "Each check's absolute limit (max) and non-inferiority margin (max_over_stable), 0-1.",
    ("route", "check", "limit"),
)
ROLLOUT_NOTIFICATIONS = MetricSpec(
    "ollama_proxy_rollout_notifications_total", "counter",
    "Rollout notifications POSTed to notify.url, by outcome (sent, failed).",
    ("outcome",),
)
ALERTMANAGER_NOTIFICATIONS = MetricSpec(
    "ollama_proxy_alertmanager_notifications_total", "counter",
    "Alerts received on the Alertmanager webhook, by outcome "
    "(applied, duplicate, ignored, invalid, unauthorized).",
    ("outcome",),
)
ALERTMANAGER_RECONCILES = MetricSpec(
    "ollama_proxy_alertmanager_reconciles_total", "counter",
    "Polls of Alertmanager's API for active rollback alerts, by outcome (ok, error).",
    ("outcome",),
)
CONFIG_RELOADS = MetricSpec(
    "ollama_proxy_config_reloads_total", "counter",
    "Config file reloads by outcome (success, failure).",
    ("outcome",),
)
STATE_ERRORS = MetricSpec(
    "ollama_proxy_state_errors_total", "counter",
    "State file problems by kind (corrupt, write).",
    ("kind",),
)
STATE_BACKEND_UP = MetricSpec(
    "ollama_proxy_state_backend_up", "gauge",
    "1 while this replica reads and writes its shared state (state: Redis); 0 while it serves with the "
    "last state it knew, refuses admin changes (503) and journals rollbacks. With a state file (one replica), always 1.",
)
STATE_BACKEND_OPERATIONS = MetricSpec(
    "ollama_proxy_state_backend_operations_total", "counter",
    "Calls to the shared state by kind (write, conflict, read, sync, replay) and outcome (ok, error): "
    "a conflict is a change redone on fresher state because another replica wrote first.",
    ("operation", "outcome"),
)
STATE_JOURNAL_ENTRIES = MetricSpec(
    "ollama_proxy_state_journal_entries", "gauge",
    "Rollbacks applied on this replica while the shared state was down and not yet replayed into it.",
)
REPLICA_LEADER = MetricSpec(
    "ollama_proxy_replica_leader", "gauge",
    "1 on the replica that holds the rollout lease (advances rollouts and acts on the shared breaker "
    "and probe counts), else 0. With a state file, always 1.",
)
TENANT_REQUESTS = MetricSpec(
    "ollama_proxy_tenant_requests_total", "counter",
    "Generation and embedding requests by tenant (auth.tenants; `default` for auth.api_keys), route, model "
    "and error type; refused by a limit: error_type=\"rate_limited\", route and model \"none\".",
    ("tenant", "route", "model", "error_type"),
)
TENANT_TOKENS = MetricSpec(
    "ollama_proxy_tenant_tokens_total", "counter",
    "Tokens by tenant, model and kind (prompt, completion), as Ollama reported them.",
    ("tenant", "model", "kind"),
)
TENANT_GPU_SECONDS = MetricSpec(
    "ollama_proxy_tenant_gpu_seconds_total", "counter",
    "GPU time Ollama reported for a tenant's requests (load + prompt evaluation + generation durations), by "
    "model: long prompts cost what they cost.",
    ("tenant", "model"),
)
TENANT_LIMITED = MetricSpec(
    "ollama_proxy_tenant_limited_total", "counter",
    "Requests refused with 429 by a tenant limit (requests_per_minute, tokens_per_minute, tokens_per_day, "
    "concurrent); each configured limit's series starts at 0.",
    ("tenant", "limit"),
)
TENANT_LIMIT = MetricSpec(
    "ollama_proxy_tenant_limit", "gauge",
    "A tenant's configured limit (only limits that are set).",
    ("tenant", "limit"),
)
TENANT_USAGE = MetricSpec(
    "ollama_proxy_tenant_usage", "gauge",
    "A tenant's use against each configured limit now: requests and tokens in the last 60 s, tokens today (UTC), "
    "requests in flight; with Redis, every replica's (so do not sum it over replicas: take max).",
    ("tenant", "limit"),
)

ALL: tuple[MetricSpec, ...] = (
    REQUESTS, ROUTE_REQUESTS, REQUEST_DURATION, TIME_TO_FIRST_TOKEN, MODEL_LOAD_WAITS, TIME_PER_OUTPUT_TOKEN, TOKENS,
    UPSTREAM_LOAD_DURATION, UPSTREAM_PROMPT_EVAL_DURATION, UPSTREAM_EVAL_DURATION,
    IN_FLIGHT, QUEUE_LENGTH, SESSION_LABELS, SESSION_LABELS_EVICTED, UNPARSED_LINES,
    BUILD_INFO,
    ACTIVE_SESSIONS, SESSIONS, SESSION_DURATION, SESSION_REQUESTS, CONVERSATION_TURNS, REGENERATIONS, CLIENT_RETRIES,
    FEEDBACK, FEEDBACK_RETRACTED,
    UPSTREAM_UP, UPSTREAM_IN_FLIGHT, UPSTREAM_SATURATION, UPSTREAM_QUEUED, UPSTREAM_REQUESTS, UPSTREAM_RETRIES,
    UPSTREAM_EJECTIONS, UPSTREAM_MODEL_LOADED, COLD_LOADS, BALANCER_DECISIONS, UPSTREAM_TOKENS,
    ROUTE_INFO, ROUTE_CANARY_WEIGHT, ROUTE_ROLLED_BACK, ROUTE_CHANGES,
    BREAKER_CANARY_FAILURE_RATIO, BREAKER_LOG_LIKELIHOOD_RATIO, ALERTMANAGER_NOTIFICATIONS, ALERTMANAGER_RECONCILES,
    ROLLOUT_PHASE, ROLLOUT_STEP, ROLLOUT_ANALYSES, ROLLOUT_CHECK_VALUE, ROLLOUT_CHECK_LIMIT, ROLLOUT_NOTIFICATIONS,
    CONFIG_RELOADS, STATE_ERRORS, STATE_BACKEND_UP, STATE_BACKEND_OPERATIONS, STATE_JOURNAL_ENTRIES,
    REPLICA_LEADER,
    TENANT_REQUESTS, TENANT_TOKENS, TENANT_GPU_SECONDS, TENANT_LIMITED, TENANT_LIMIT, TENANT_USAGE,
)

# Route change reasons besides alert:<alertname>; their series start at 0 for every route.
ROUTE_CHANGE_REASONS = ("admin", "config", "breaker", "reconcile", "promote", "resume", "probe", "rollout",
                        "rollout_step")

class ErrorType(StrEnum):
    """``error_type``: what went wrong with a request, from the client's point of view
    (docs/metrics.md explains each). ``NONE`` is success."""

    NONE = "none"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    MODEL_NOT_FOUND = "model_not_found"
    UPSTREAM_4XX = "upstream_4xx"
    UPSTREAM_5XX = "upstream_5xx"
    OVERLOADED = "overloaded"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    STREAM_INTERRUPTED = "stream_interrupted"
    UPSTREAM_INVALID = "upstream_invalid"
    CLIENT_DISCONNECT = "client_disconnect"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class Arm(StrEnum):
    """``arm``: which side of a route served a request; ``DIRECT`` when no route did."""

    STABLE = "stable"
    CANARY = "canary"
    DIRECT = "direct"


# Label values that stand for "does not apply". They share a spelling on the wire
# (dashboards and rules rely on it) but not a name in code.
NO_ROUTE = "none"  # route: the client asked for a model, not a route alias
NO_MODEL = "none"  # model: the request names no model (passthrough, refused early)
NO_SESSION = "none"  # session: the request carried no session id
NO_UPSTREAM = "none"  # upstream: no server was tried (refused before, or no server has the model)
OVERFLOW = "other"  # a capped label (session, model) that is full
UNCONFIRMED_MODEL = "unknown"  # model: a name Ollama did not confirm (404, failed request)

ERROR_TYPES = tuple(e.value for e in ErrorType)
SERVER_SIDE_ERRORS = frozenset({ErrorType.UPSTREAM_5XX, ErrorType.TIMEOUT, ErrorType.CONNECT,
                                ErrorType.STREAM_INTERRUPTED, ErrorType.UPSTREAM_INVALID})
"""Server-side failures: what the breaker and the canary alerts count against an arm."""
NOT_EVIDENCE = frozenset({ErrorType.BAD_REQUEST, ErrorType.CLIENT_DISCONNECT, ErrorType.UNAUTHORIZED,
                          ErrorType.RATE_LIMITED})
"""Requests that say nothing about the model (the client's own mistakes and hang-ups): the
breaker, the auto-resume probe and the rollouts leave them out of their counts."""
ARM_FAILURES = frozenset(SERVER_SIDE_ERRORS | {ErrorType.MODEL_NOT_FOUND})
"""What counts against a routed arm in a decision (breaker, report): the server-side errors,
and a 404, since the arm's model is missing and every user of that arm fails."""


def remove_series(metric: Any, *labels: str) -> None:
    """Remove one labelled series if it exists (older prometheus_client raised KeyError)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def _build(spec: MetricSpec, registry: CollectorRegistry):
    if spec.type == "counter":
        return Counter(spec.base, spec.help, spec.labels, registry=registry)
    if spec.type == "gauge":
        return Gauge(spec.base, spec.help, spec.labels, registry=registry)
    return Histogram(spec.base, spec.help, spec.labels, registry=registry, buckets=spec.buckets)


class ProxyMetrics:
    """The live metric objects of one proxy, each an attribute named after its spec."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        m = lambda spec: _build(spec, self.registry)  # noqa: E731
        self.requests = m(REQUESTS)
        self.route_requests = m(ROUTE_REQUESTS)
        self.request_duration = m(REQUEST_DURATION)
        self.ttft = m(TIME_TO_FIRST_TOKEN)
        self.model_load_waits = m(MODEL_LOAD_WAITS)
        self.tpot = m(TIME_PER_OUTPUT_TOKEN)
        self.tokens = m(TOKENS)
        self.load_duration = m(UPSTREAM_LOAD_DURATION)
        self.prompt_eval_duration = m(UPSTREAM_PROMPT_EVAL_DURATION)
        self.eval_duration = m(UPSTREAM_EVAL_DURATION)
        self.in_flight = m(IN_FLIGHT)
        self.queue_length = m(QUEUE_LENGTH)
        self.session_labels = m(SESSION_LABELS)
        self.session_labels_evicted = m(SESSION_LABELS_EVICTED)
        self.unparsed_lines = m(UNPARSED_LINES)
        self.build_info = m(BUILD_INFO)
        self.active_sessions = m(ACTIVE_SESSIONS)
        self.sessions = m(SESSIONS)
        self.session_duration = m(SESSION_DURATION)
        self.session_requests = m(SESSION_REQUESTS)
        self.conversation_turns = m(CONVERSATION_TURNS)
        self.regenerations = m(REGENERATIONS)
        self.client_retries = m(CLIENT_RETRIES)
        self.feedback = m(FEEDBACK)
        self.feedback_retracted = m(FEEDBACK_RETRACTED)
        self.upstream_up = m(UPSTREAM_UP)
        self.upstream_in_flight = m(UPSTREAM_IN_FLIGHT)
        self.upstream_saturation = m(UPSTREAM_SATURATION)
        self.upstream_queued = m(UPSTREAM_QUEUED)
        self.upstream_requests = m(UPSTREAM_REQUESTS)
        self.upstream_retries = m(UPSTREAM_RETRIES)
        self.upstream_ejections = m(UPSTREAM_EJECTIONS)
        self.upstream_model_loaded = m(UPSTREAM_MODEL_LOADED)
        self.cold_loads = m(COLD_LOADS)
        self.balancer_decisions = m(BALANCER_DECISIONS)
        self.upstream_tokens = m(UPSTREAM_TOKENS)
        self.route_info = m(ROUTE_INFO)
        self.route_canary_weight = m(ROUTE_CANARY_WEIGHT)
        self.route_rolled_back = m(ROUTE_ROLLED_BACK)
        self.route_changes = m(ROUTE_CHANGES)
        self.breaker_canary_failure_ratio = m(BREAKER_CANARY_FAILURE_RATIO)
        self.breaker_log_likelihood_ratio = m(BREAKER_LOG_LIKELIHOOD_RATIO)
        self.rollout_phase = m(ROLLOUT_PHASE)
        self.rollout_step = m(ROLLOUT_STEP)
        self.rollout_analyses = m(ROLLOUT_ANALYSES)
        self.rollout_check_value = m(ROLLOUT_CHECK_VALUE)
        self.rollout_check_limit = m(ROLLOUT_CHECK_LIMIT)
        self.rollout_notifications = m(ROLLOUT_NOTIFICATIONS)
        self.alertmanager_notifications = m(ALERTMANAGER_NOTIFICATIONS)
        self.alertmanager_reconciles = m(ALERTMANAGER_RECONCILES)
        self.config_reloads = m(CONFIG_RELOADS)
        self.state_errors = m(STATE_ERRORS)
        self.state_backend_up = m(STATE_BACKEND_UP)
        self.state_backend_operations = m(STATE_BACKEND_OPERATIONS)
        self.state_journal_entries = m(STATE_JOURNAL_ENTRIES)
        self.replica_leader = m(REPLICA_LEADER)
        self.tenant_requests = m(TENANT_REQUESTS)
        self.tenant_tokens = m(TENANT_TOKENS)
        self.tenant_gpu_seconds = m(TENANT_GPU_SECONDS)
        self.tenant_limited = m(TENANT_LIMITED)
        self.tenant_limit = m(TENANT_LIMIT)
        self.tenant_usage = m(TENANT_USAGE)
        # Counters with a small closed label set start at zero so rate() works from the
        # first scrape and alerts can tell "nothing happened" from "no data".
        for outcome in ("applied", "duplicate", "ignored", "invalid", "unauthorized"):
            self.alertmanager_notifications.labels(outcome)
        for outcome in ("success", "failure"):
            self.config_reloads.labels(outcome)
        for outcome in ("sent", "failed"):
            self.rollout_notifications.labels(outcome)
        for reason in ("loaded", "cold", "affinity", "saturated", "failover"):
            self.balancer_decisions.labels(reason)
        self.queue_length.set(0)
