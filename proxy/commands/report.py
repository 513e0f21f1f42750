"""``ollama-sidecar report ROUTE --prometheus URL``: is the canary worse, as good, or is it
too early to say?

Answers from Prometheus's HTTP API rather than from the proxy's own counters because
Prometheus holds every replica's traffic and the history a decision needs; the proxy
only knows itself since its last restart. One instant query per quantity, all at the
same evaluation time (``--at``, else now), so the numbers in a report agree.

Per arm (``arm="stable"`` and ``arm="canary"`` of ``route="ROUTE"``) over ``--window``:

- requests and failures: ``increase()`` of the route requests counter summed by arm.
  Failures are :data:`FAILURE_TYPES`: the server-side errors
  (:data:`proxy.metrics.SERVER_SIDE_ERRORS`) and ``model_not_found``, which on a routed
  arm means the arm's model is missing (every user of that arm fails);
- the share of requests whose time to first token is over the SLO (``--ttft-slo``, a
  bucket boundary of the TTFT histogram): its ``+Inf`` bucket minus its ``le`` bucket;
- per session (``ollama_proxy_requests_total{session}``, capped by the proxy): how many
  of an arm's failures came from its top session;
- for reading, not for deciding: request latency p50/p95 and TTFT p95 interpolated from
  histogram buckets, the mean time per output token and ``1 / mean TPOT`` as tokens/s.

The verdict comes from :mod:`proxy.control.decisions`, the module the breaker, the
rollback alerts and the rollout gate decide with (issue 16); the rules are
:data:`RULES_TEXT` (in ``--help``).

Exit codes: 0 a report was printed, whatever its verdict (an unknown route or a window
without traffic is "inconclusive", not an error); 2 the report could not be made: a bad
option, Prometheus unreachable (the message names the URL) or answering with an error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import requests

from proxy import metrics as pm
from proxy.config import ConfigError, load_config
from proxy.control import decisions
from proxy.control.decisions import Outcome
from proxy.decision_settings import DEFAULT_DECISIONS

ARMS = ("stable", "canary")
# Prometheus's duration syntax (units in descending order, each at most once).
_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")

FAILURE_TYPES = pm.ARM_FAILURES
"""What counts against an arm: server-side errors, and ``model_not_found``, which on a
route's arm (the only series the report reads) means that arm's model is missing."""

# Defaults from the one vocabulary of decision settings (the proxy config's `decisions:`,
# which `--config` reads), so the report judges as the rollout gate does.
MARGIN = DEFAULT_DECISIONS.failure_margin
"""Non-inferiority margin: canary − stable, an absolute difference of proportions."""
LATENCY_MARGIN = DEFAULT_DECISIONS.ttft_margin
"""Non-inferiority margin of the share of first tokens over the SLO."""
TTFT_SLO = DEFAULT_DECISIONS.ttft_slo
"""Time to first token (seconds) over which a request counts as slow: a TTFT bucket bound."""
MIN_REQUESTS = 1
"""Requests each arm needs before any verdict but "inconclusive". The exact tests need no
floor; an empty arm is inconclusive anyway."""
CLUSTER_SHARE = 0.5
"""Failures cluster when one session holds at least this share of an arm's failures…"""
CLUSTER_MIN_FAILURES = 2
"""…and at least this many of them (one failure cannot cluster)."""

WORSE, NON_INFERIOR, INCONCLUSIVE = (o.value for o in Outcome)
VERDICTS = (WORSE, NON_INFERIOR, INCONCLUSIVE)

RULES_TEXT = f"""\
Verdicts (defaults in brackets; the tests are those of proxy/control/decisions.py):

"worse" when the canary's failure ratio, or its share of requests with a time to
   first token over --ttft-slo ({TTFT_SLO:g} s), is higher than stable's by a one-sided test at
   --alpha ({decisions.ALPHA:g}): Fisher's exact test (mid-p) where an arm expects fewer than
   --min-expected ({decisions.MIN_EXPECTED:g}) events or non-events, else the pooled z-test.
   Failures: server-side errors ({", ".join(sorted(pm.SERVER_SIDE_ERRORS))})
   and model_not_found (the arm's model is missing); client errors never count.
"non-inferior" when neither is worse and, for both, the upper one-sided 1 − alpha limit
   of canary − stable (Newcombe's interval) is below --margin ({MARGIN:g}, an absolute
   difference: 0.02 is 2 percentage points; --latency-margin ({LATENCY_MARGIN:g}) for the
   TTFT share). --config FILE takes these defaults from a proxy config's `decisions:`. Not "no significant difference": equal-looking arms with
   little traffic are not a pass.
"inconclusive: need about N more canary requests" otherwise: N is how many more the
   canary needs, at the observed ratios and request split, to settle it with power
   {decisions.POWER:g}. No N when the canary looks at least the margin worse without being
   significantly worse, or when neither arm has requests. Also inconclusive: an arm
   with fewer than --min-requests ({MIN_REQUESTS}) requests, unless the canary is clearly worse.

Sessions: routing is sticky, so the failures of one session are not independent. When
one session holds at least {CLUSTER_SHARE:.0%} of an arm's failures (and {CLUSTER_MIN_FAILURES} or more), the
verdict says so: the tests count requests as independent, it may be overconfident.

The TTFT histogram holds successful requests that did not wait for a model load (the
proxy counts those apart: ollama_proxy_model_load_waits_total). Counts come from increase(), which extrapolates
to the window's edges; they are rounded to whole requests.
"""
__doc__ = f"{__doc__}\n{RULES_TEXT}"

TTFT_NOTE = ("TTFT counts successful requests that did not wait for a model load; OpenAI-compatible "
             "replies carry no load time, so their cold loads cannot be left out")


class ReportError(Exception):
    """Something the user has to fix; printed as one line, exit status 2."""


@dataclass(frozen=True)
class Rules:
    """The settings of a verdict; the CLI exposes each as an option."""

    alpha: float = decisions.ALPHA
    margin: float = MARGIN
    latency_margin: float = LATENCY_MARGIN
    ttft_slo: float = TTFT_SLO
    min_expected: float = decisions.MIN_EXPECTED
    min_requests: int = MIN_REQUESTS

    def check(self) -> None:
        problems = []
        if not 0 < self.alpha < 0.5:
            problems.append("--alpha must be in (0, 0.5) (one-sided)")
        if not 0 < self.margin < 1 or not 0 < self.latency_margin < 1:
            problems.append("--margin and --latency-margin must be in (0, 1) (0.02 is 2 points)")
        if self.ttft_slo not in pm.TIME_TO_FIRST_TOKEN.buckets:
            bounds = " ".join(f"{b:g}" for b in pm.TIME_TO_FIRST_TOKEN.buckets)
            problems.append(f"--ttft-slo {self.ttft_slo:g} is not a bucket bound of the TTFT histogram: use one of {bounds}")
        if self.min_expected < 0:
            problems.append("--min-expected must be ≥ 0")
        if self.min_requests < 1:
            problems.append("--min-requests must be ≥ 1")
        if problems:
            raise ReportError("; ".join(problems))


def parse_window(text: str) -> str:
    """Check a window before it reaches Prometheus, which would only say 'parse error'."""
    if not text or not _DURATION.match(text) or not re.search(r"[1-9]", text):
        raise ReportError(
            f"bad --window {text!r}: use a Prometheus duration such as 30m, 1h, 6h or 1d2h"
        )
    return text


def parse_at(text: str | None) -> float:
    """Evaluation time: unix seconds or RFC 3339 (``2026-01-01T12:00:00Z``); None = now."""
    if text is None:
        return float(int(time.time()))  # whole seconds: a report names a time one can reuse
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"bad --at {text!r}: use unix seconds or RFC 3339 like 2026-01-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _label_value(value: str) -> str:
    """A PromQL string literal, so a route name cannot break (or inject into) a query."""
    return json.dumps(value)


class Prometheus:
    """The one endpoint the report needs: instant queries at a fixed time."""

    def __init__(self, url: str, at: float, timeout: float) -> None:
        # "localhost:9090" is what people type; requests would reject it without a scheme.
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.at = at
        self.timeout = timeout

    def _why(self, exc: requests.RequestException) -> str:
        """The root cause in a few words, not urllib3's paragraph with the query in it."""
        if isinstance(exc, requests.Timeout):
            return f"no answer within {self.timeout:g} s (--timeout)"
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        return errno.group(0) if errno else type(exc).__name__

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Run ``promql`` (an instant vector): each sample's labels and finite value."""
        endpoint = f"{self.url}/api/v1/query"
        try:
            response = requests.get(
                endpoint, params={"query": promql, "time": f"{self.at:.3f}"}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ReportError(f"cannot reach Prometheus at {self.url}: {self._why(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            raise ReportError(
                f"{self.url} did not answer like Prometheus (HTTP {response.status_code}, "
                "not JSON): is it the right URL?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "no reason given") if isinstance(body, dict) else body
            raise ReportError(
                f"Prometheus at {self.url} rejected a query (HTTP {response.status_code}): "
                f"{error}; query: {promql}"
            )
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise ReportError(f"Prometheus at {self.url} did not return an instant vector for: {promql}")
        samples = []
        for sample in data.get("result") or []:
            try:
                labels, value = dict(sample["metric"]), float(sample["value"][1])
            except (AttributeError, KeyError, IndexError, TypeError, ValueError):
                continue  # a sample we cannot read is no data, like NaN
            if math.isfinite(value):
                samples.append((labels, value))
        return samples

    def by_arm(self, promql: str) -> dict[str, float]:
        """Run ``promql`` (a vector with an ``arm`` label): value per arm."""
        return {labels["arm"]: value for labels, value in self.vector(promql) if labels.get("arm") in ARMS}


@dataclass(frozen=True)
class Queries:
    """The PromQL behind each number, built from the metric specs (never copied names)."""

    route: str
    window: str

    def _selector(self, extra: str = "") -> str:
        arms = "|".join(ARMS)
        return f"{{route={_label_value(self.route)},arm=~\"{arms}\"{extra}}}"

    def requests(self) -> str:
        return f"sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{self._selector()}[{self.window}]))"

    def failures(self) -> str:
        errors = "|".join(sorted(FAILURE_TYPES))
        selector = self._selector(f',error_type=~"{errors}"')
        return f"sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{selector}[{self.window}]))"

    def buckets(self, spec: pm.MetricSpec) -> str:
        """Every bucket's increase by arm and ``le``: the share over a bound, exactly."""
        return f"sum by (arm, le) (increase({spec.series[0]}{self._selector()}[{self.window}]))"

    def quantile(self, spec: pm.MetricSpec, q: float) -> str:
        bucket = spec.series[0]
        return (
            f"histogram_quantile({q:g}, sum by (arm, le) "
            f"(increase({bucket}{self._selector()}[{self.window}])))"
        )

    def mean(self, spec: pm.MetricSpec) -> str:
        _, total, count = spec.series
        return (
            f"sum by (arm) (increase({total}{self._selector()}[{self.window}])) / "
            f"sum by (arm) (increase({count}{self._selector()}[{self.window}]))"
        )

    def quality(self) -> dict[str, str]:
        """Per arm: sessions started, chat requests and their user turns, regenerations, and
        ratings net of the ones replaced by a later rating (the last one wins)."""
        w = self.window

        def inc(name: str, extra: str = "") -> str:
            return f"sum by (arm) (increase({name}{self._selector(extra)}[{w}]))"

        def net(extra: str = "") -> str:
            return f"({inc(pm.FEEDBACK.name, extra)} - ({inc(pm.FEEDBACK_RETRACTED.name, extra)} or 0 * " \
                   f"{inc(pm.FEEDBACK.name, extra)}))"
        return {
            "sessions_started": inc(pm.SESSIONS.name, ',event="started"'),
            "chat_requests": inc(f"{pm.CONVERSATION_TURNS.name}_count"),
            "turns": inc(f"{pm.CONVERSATION_TURNS.name}_sum"),
            "regenerations": inc(pm.REGENERATIONS.name),
            "ratings": net(),
            "negative_ratings": net(',rating="negative"'),
        }

    # Per session: each series' growth over the window, worked out in Python from its last
    # value in the window and its value at the window's start. increase() would miss the
    # first request of every session series born inside the window (the series appears at
    # 1, and increase() sees no growth before its first sample), which is most of them.
    def sessions_end(self) -> str:
        return f"last_over_time({pm.REQUESTS.name}{self._selector()}[{self.window}])"

    def sessions_start(self) -> str:
        return f"{pm.REQUESTS.name}{self._selector()} offset {self.window}"


# --- per-session counts ---------------------------------------------------------------------

UNLABELLED_SESSIONS = frozenset({pm.NO_SESSION, pm.OVERFLOW})
"""Session values that stand for many sessions: no session id, or over the label cap."""


@dataclass(frozen=True)
class SessionCounts:
    """One arm's requests and failures per session label over the window."""

    requests: dict[str, int]
    failures: dict[str, int]


def session_counts(end: Iterable[tuple[dict[str, str], float]],
                   start: Iterable[tuple[dict[str, str], float]]) -> dict[str, SessionCounts]:
    """Per arm and session, each series' growth: last value in the window minus its value
    at the start (0 for a series born in the window; the last value alone after a counter
    reset: a restart, or a session label evicted after ``session_label_ttl`` and back)."""
    def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))

    before = {key(labels): value for labels, value in start}
    out = {arm: SessionCounts({}, {}) for arm in ARMS}
    for labels, value in end:
        arm = labels.get("arm")
        if arm not in out:
            continue
        previous = before.get(key(labels), 0.0)
        grown = round(value - previous if value >= previous else value)
        if grown <= 0:
            continue
        session = labels.get("session", pm.NO_SESSION)
        counts = out[arm]
        counts.requests[session] = counts.requests.get(session, 0) + grown
        if labels.get("error_type") in FAILURE_TYPES:
            counts.failures[session] = counts.failures.get(session, 0) + grown
    return out


def concentration(counts: SessionCounts) -> dict[str, Any]:
    """How concentrated an arm's failures are in one session (JSON-ready)."""
    requests_total = sum(counts.requests.values())
    failures_total = sum(counts.failures.values())
    labelled = {s: n for s, n in counts.failures.items() if s not in UNLABELLED_SESSIONS}
    top, top_failures = max(labelled.items(), key=lambda item: (item[1], item[0]), default=(None, 0))
    return {
        "requests": requests_total,
        "failures": failures_total,
        "labelled_sessions": sum(1 for s in counts.requests if s not in UNLABELLED_SESSIONS),
        "failing_sessions": len(labelled),
        "unlabelled_failures": failures_total - sum(labelled.values()),
        "top_session": top,
        "top_session_failures": top_failures,
        "top_session_failure_share": top_failures / failures_total if failures_total else None,
        "top_session_request_share": (counts.requests.get(top, 0) / requests_total
                                      if top is not None and requests_total else None),
        "clustered": bool(failures_total and top_failures >= CLUSTER_MIN_FAILURES
                          and top_failures / failures_total >= CLUSTER_SHARE),
    }


def describe_sessions(sessions: dict[str, dict[str, Any]]) -> str:
    """One line on how failures spread over sessions, per arm."""
    if not any(s["labelled_sessions"] for s in sessions.values()):
        return ("no session labels in the window (clients send no session id, or all are over "
                "the label cap): clustering by session unknown")
    parts = []
    for arm in reversed(ARMS):  # canary first: it is what the verdict is about
        s = sessions[arm]
        if not s["failures"]:
            parts.append(f"{arm}: no failures")
            continue
        text = f"{arm}: {s['failures']} failures"
        if s["top_session"] is not None:
            text += (f", {s['top_session_failures']} from session {s['top_session']} "
                     f"({s['top_session_failure_share']:.0%}; it sent {s['top_session_request_share']:.0%} "
                     f"of {arm}'s requests), {s['failing_sessions']} failing session"
                     f"{'' if s['failing_sessions'] == 1 else 's'}")
        if s["unlabelled_failures"]:
            text += f", {s['unlabelled_failures']} without a session label"
        parts.append(text)
    return "; ".join(parts)


def clustering_warning(sessions: dict[str, dict[str, Any]]) -> str | None:
    clustered = [arm for arm in reversed(ARMS) if sessions[arm]["clustered"]]
    if not clustered:
        return None
    which = ", ".join(
        f"{arm}: {sessions[arm]['top_session_failures']} of {sessions[arm]['failures']} from one session"
        for arm in clustered)
    return (f"failures cluster by session ({which}); the tests count requests as independent, "
            "so the verdict may be overconfident")


# --- collecting ---------------------------------------------------------------------------

def _over_slo(buckets: list[tuple[dict[str, str], float]], slo: float) -> dict[str, tuple[int, int]]:
    """Per arm ``(observations, observations over slo)`` from ``sum by (arm, le)`` buckets.
    ``le`` is matched as a number: Prometheus 3 writes ``1.0`` where 2 kept ``1``."""
    total: dict[str, float] = {}
    under: dict[str, float] = {}
    for labels, value in buckets:
        arm, le = labels.get("arm"), labels.get("le", "")
        if arm not in ARMS:
            continue
        try:
            bound = float(le)
        except ValueError:
            continue
        if bound == math.inf:
            total[arm] = value
        elif bound == slo:
            under[arm] = value
    out = {}
    for arm in ARMS:
        n = round(total.get(arm, 0.0))
        out[arm] = (n, min(n, max(0, round(total.get(arm, 0.0) - under.get(arm, 0.0)))))
    return out


def collect(prometheus: Prometheus, queries: Queries, rules: Rules) -> dict[str, Any]:
    """Every number of the report, as JSON-ready dicts (None where no data): ``arms`` per
    arm, ``sessions`` per arm."""
    requests_by_arm = prometheus.by_arm(queries.requests())
    failures_by_arm = prometheus.by_arm(queries.failures())
    ttft = _over_slo(prometheus.vector(queries.buckets(pm.TIME_TO_FIRST_TOKEN)), rules.ttft_slo)
    p50 = prometheus.by_arm(queries.quantile(pm.REQUEST_DURATION, 0.5))
    p95 = prometheus.by_arm(queries.quantile(pm.REQUEST_DURATION, 0.95))
    ttft_p95 = prometheus.by_arm(queries.quantile(pm.TIME_TO_FIRST_TOKEN, 0.95))
    tpot_mean = prometheus.by_arm(queries.mean(pm.TIME_PER_OUTPUT_TOKEN))
    per_session = session_counts(prometheus.vector(queries.sessions_end()),
                                 prometheus.vector(queries.sessions_start()))
    quality = {name: prometheus.by_arm(q) for name, q in queries.quality().items()}
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        n = round(requests_by_arm.get(arm, 0.0))
        # Extrapolation can round failures above requests on a tiny window; clamp.
        failures = min(round(failures_by_arm.get(arm, 0.0)), n)
        observed, slow = ttft[arm]
        interval = decisions.wilson_interval(failures, n)
        slow_interval = decisions.wilson_interval(slow, observed)
        tpot = tpot_mean.get(arm)
        arms[arm] = {
            "requests": n,
            "failures": failures,
            "failure_ratio": failures / n if n else None,
            "failure_ratio_ci95": list(interval) if interval else None,
            "ttft_observations": observed,
            "ttft_over_slo": slow,
            "ttft_over_slo_ratio": slow / observed if observed else None,
            "ttft_over_slo_ci95": list(slow_interval) if slow_interval else None,
            "latency_p50_seconds": p50.get(arm),
            "latency_p95_seconds": p95.get(arm),
            "ttft_p95_seconds": ttft_p95.get(arm),
            "tpot_mean_seconds": tpot,
            "tokens_per_second": 1 / tpot if tpot else None,
            **quality_numbers({name: values.get(arm, 0.0) for name, values in quality.items()}),
        }
    return {"arms": arms, "sessions": {arm: concentration(per_session[arm]) for arm in ARMS}}


def quality_numbers(q: dict[str, float]) -> dict[str, Any]:
    """One arm's quality signals with 95 % intervals (counts rounded: increase() extrapolates)."""
    chats = round(q.get("chat_requests", 0.0))
    regens = min(round(q.get("regenerations", 0.0)), chats)
    ratings = max(0, round(q.get("ratings", 0.0)))
    negative = min(max(0, round(q.get("negative_ratings", 0.0))), ratings)
    regen_ci = decisions.wilson_interval(regens, chats)
    sat_ci = decisions.wilson_interval(ratings - negative, ratings)
    return {
        "sessions_started": round(q.get("sessions_started", 0.0)),
        "chat_requests": chats,
        "mean_turns": q["turns"] / q["chat_requests"] if q.get("chat_requests") else None,
        "regenerations": regens,
        "regeneration_ratio": regens / chats if chats else None,
        "regeneration_ratio_ci95": list(regen_ci) if regen_ci else None,
        "ratings": ratings,
        "negative_ratings": negative,
        "satisfaction": (ratings - negative) / ratings if ratings else None,
        "satisfaction_ci95": list(sat_ci) if sat_ci else None,
    }


def quality_worse(arms: dict[str, dict[str, Any]], rules: Rules) -> list[tuple[str, decisions.WorseTest, str]]:
    """The quality signals in which the canary is significantly worse (one-sided, at
    ``alpha``): regenerations per chat request, negative ratings per rating. Quality only
    ever makes a verdict worse: too few ratings say nothing either way."""
    s, c = arms["stable"], arms["canary"]
    out = []
    for label, events, trials in (("regeneration ratio", "regenerations", "chat_requests"),
                                  ("negative ratings", "negative_ratings", "ratings")):
        test = decisions.worse_test(c.get(events, 0), c.get(trials, 0), s.get(events, 0), s.get(trials, 0),
                                    alpha=rules.alpha, min_expected=rules.min_expected)
        if test is not None and test.worse:
            text = (f"canary {c[events]}/{c[trials]} against stable's {s[events]}/{s[trials]}")
            out.append((label, test, text))
    return out


# --- deciding -----------------------------------------------------------------------------

def assess_failures(arms: dict[str, dict[str, Any]], rules: Rules) -> decisions.Verdict:
    s, c = arms["stable"], arms["canary"]
    return decisions.assess_failures(c["failures"], c["requests"], s["failures"], s["requests"],
                                     margin=rules.margin, alpha=rules.alpha, min_expected=rules.min_expected)


def assess_latency(arms: dict[str, dict[str, Any]], rules: Rules) -> decisions.Verdict | None:
    """The share of TTFT observations over the SLO; ``None`` when neither arm has any (a
    route that generates nothing, e.g. embeddings, has no time to first token)."""
    s, c = arms["stable"], arms["canary"]
    if not s["ttft_observations"] and not c["ttft_observations"]:
        return None
    return decisions.assess_latency_slo(c["ttft_over_slo"], c["ttft_observations"], s["ttft_over_slo"],
                                        s["ttft_observations"], margin=rules.latency_margin,
                                        alpha=rules.alpha, min_expected=rules.min_expected)


def _more_requests(verdict: decisions.Verdict, arm: dict[str, Any], per_request: bool) -> int | None:
    """A component's "more canary requests", in requests: the latency test counts TTFT
    observations, so its figure is scaled by the canary's requests per observation."""
    more = verdict.more_canary_requests
    if more is None or per_request or not arm["ttft_observations"]:
        return more
    return math.ceil(more * max(1.0, arm["requests"] / arm["ttft_observations"]))


def _component_json(verdict: decisions.Verdict | None, more: int | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    test = verdict.test
    return {
        "outcome": verdict.outcome.value,
        "reason": verdict.reason,
        "canary": [verdict.canary_events, verdict.canary_trials],
        "stable": [verdict.stable_events, verdict.stable_trials],
        "difference": verdict.difference,
        "lower": verdict.lower,
        "upper": verdict.upper,
        "margin": verdict.margin,
        "alpha": verdict.alpha,
        "test": None if test is None else {
            "method": test.method, "statistic": test.statistic, "p_value": test.p_value,
            "expected_canary": test.expected_canary, "expected_stable": test.expected_stable,
        },
        "more_canary_requests": more,
    }


def _ratio_text(verdict: decisions.Verdict) -> str:
    p_c = verdict.canary_events / verdict.canary_trials
    p_s = verdict.stable_events / verdict.stable_trials
    return f"{p_c:.2%} against stable's {p_s:.2%}"


def _describe(verdict: decisions.Verdict) -> str:
    assert verdict.test is not None  # every verdict on two non-empty arms has its test
    return verdict.test.describe()


def _limit_text(verdict: decisions.Verdict, relation: str) -> str:
    assert verdict.upper is not None
    return (f"upper {1 - verdict.alpha:.1%} limit of canary − stable {verdict.upper * 100:+.2f} pp "
            f"{relation} margin {verdict.margin * 100:.2f} pp")


def _open_detail(label: str, verdict: decisions.Verdict) -> str:
    """Why one component is inconclusive, in a few words."""
    if verdict.test is None:  # an arm without data
        empty = [arm for arm, n in (("canary", verdict.canary_trials), ("stable", verdict.stable_trials)) if not n]
        return f"{label}: no data from {' and '.join(empty)}"
    return f"{label}: {_limit_text(verdict, '≥')}, not worse ({_describe(verdict)})"


def decide(arms: dict[str, dict[str, Any]], sessions: dict[str, dict[str, Any]], rules: Rules) -> dict[str, Any]:
    """The verdict from the counts: ``verdict``, ``reason``, ``more_canary_requests`` and
    the two components (``failures``, ``latency``) with their numbers.

    worse if either component is worse; else inconclusive if an arm is under
    ``min_requests`` or either component is inconclusive (about N more canary requests:
    the larger of the two components' N); else non-inferior.
    """
    failures = assess_failures(arms, rules)
    latency = assess_latency(arms, rules)
    components = [("failure ratio", failures, _more_requests(failures, arms["canary"], True))]
    if latency is not None:
        components.append((f"share of TTFT over {rules.ttft_slo:g} s", latency,
                           _more_requests(latency, arms["canary"], False)))
    worse = [(label, v) for label, v, _ in components if v.outcome is Outcome.WORSE]
    open_ = [(label, v, more) for label, v, more in components if v.outcome is Outcome.INCONCLUSIVE]
    thin = [f"{arm} has {arms[arm]['requests']} requests" for arm in ARMS
            if 0 < arms[arm]["requests"] < rules.min_requests]

    more_needed: int | None = None
    quality = quality_worse(arms, rules)
    if worse or quality:
        verdict = WORSE
        reason = "worse: " + "; ".join(
            [f"{label} {_ratio_text(v)} ({_describe(v)})" for label, v in worse]
            + [f"{label}: {text} ({test.describe()})" for label, test, text in quality])
    elif not open_ and not thin:
        verdict = NON_INFERIOR
        reason = "non-inferior: " + "; ".join(
            f"{label} within the margin ({_limit_text(v, '<')})" for label, v, _ in components)
        if latency is None:
            reason += "; latency not assessed (no time to first token in either arm)"
    else:
        verdict = INCONCLUSIVE
        unsettled = [(label, v) for label, v, more in open_ if more is None]
        if unsettled:  # both arms empty, or the canary looks at least the margin worse
            label, v = unsettled[0]
            reason = f"inconclusive: {label}: {v.reason.removeprefix('inconclusive: ')}"
        else:
            shortfall = max(0, rules.min_requests - arms["canary"]["requests"])
            more_needed = max([more for _, _, more in open_ if more is not None] + [shortfall])
            details = [f"{' and '.join(thin)}, fewer than --min-requests {rules.min_requests}"] if thin else []
            details += [_open_detail(label, v) for label, v, _ in open_]
            reason = f"inconclusive: need about {more_needed} more canary requests ({'; '.join(details)})"
    warning = clustering_warning(sessions)
    if warning:
        reason += f"; {warning}"
    return {
        "verdict": verdict,
        "reason": reason,
        "more_canary_requests": more_needed,
        "failures": _component_json(failures, components[0][2]),
        "latency": None if latency is None else {
            "ttft_slo_seconds": rules.ttft_slo, **(_component_json(latency, components[1][2]) or {})},
        "clustered": warning is not None,
        "quality_worse": [label for label, _, _ in quality],
    }


def build_report(prometheus: Prometheus, route: str, window: str, rules: Rules) -> dict[str, Any]:
    """The whole report as a dict with stable keys: what ``--json`` prints."""
    numbers = collect(prometheus, Queries(route, window), rules)
    arms, sessions = numbers["arms"], numbers["sessions"]
    decision = decide(arms, sessions, rules)
    return {
        "route": route,
        "window": window,
        "at": datetime.fromtimestamp(prometheus.at, timezone.utc).isoformat().replace("+00:00", "Z"),
        "prometheus": prometheus.url,
        "arms": arms,
        "failures": decision["failures"],
        "latency": decision["latency"],
        "sessions": {**sessions, "summary": describe_sessions(sessions), "clustered": decision["clustered"]},
        "quality_worse": decision["quality_worse"],
        "verdict": decision["verdict"],
        "reason": decision["reason"],
        "more_canary_requests": decision["more_canary_requests"],
        "notes": [TTFT_NOTE],
        "rules": asdict(rules),
    }


# --- the human-readable table ----------------------------------------------------------

def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _share(events: int, trials: int, ratio: float | None, ci: list[float] | None) -> str:
    if ratio is None or ci is None:
        return "n/a"
    return f"{events:,}/{trials:,} = {ratio:.2%} [{ci[0]:.2%} – {ci[1]:.2%}]"


ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("requests", lambda a: f"{a['requests']:,}"),
    ("failures [95% CI]", lambda a: _share(a["failures"], a["requests"], a["failure_ratio"],
                                           a["failure_ratio_ci95"])),
    ("TTFT over SLO [95% CI]", lambda a: _share(a["ttft_over_slo"], a["ttft_observations"],
                                                a["ttft_over_slo_ratio"], a["ttft_over_slo_ci95"])),
    ("latency p50", lambda a: _seconds(a["latency_p50_seconds"])),
    ("latency p95", lambda a: _seconds(a["latency_p95_seconds"])),
    ("TTFT p95", lambda a: _seconds(a["ttft_p95_seconds"])),
    ("time/output token (mean)", lambda a: _seconds(a["tpot_mean_seconds"])),
    ("sessions started", lambda a: f"{a.get('sessions_started', 0):,}"),
    ("turns per chat (mean)", lambda a: "n/a" if a.get("mean_turns") is None else f"{a['mean_turns']:.2f}"),
    ("regenerated [95% CI]", lambda a: _share(a.get("regenerations", 0), a.get("chat_requests", 0),
                                              a.get("regeneration_ratio"), a.get("regeneration_ratio_ci95"))),
    ("satisfied [95% CI]", lambda a: _share(a.get("ratings", 0) - a.get("negative_ratings", 0),
                                            a.get("ratings", 0), a.get("satisfaction"), a.get("satisfaction_ci95"))),
    ("tokens/s (1 / mean TPOT)", lambda a: "n/a" if a["tokens_per_second"] is None
     else f"{a['tokens_per_second']:.1f}"),
)


def render_table(report: dict[str, Any]) -> str:
    """Aligned columns a person reads at a glance; the verdict is the last line."""
    cells = [["", *ARMS]] + [
        [label, *(fmt(report["arms"][arm]) for arm in ARMS)] for label, fmt in ROWS
    ]
    cells[3][0] = f"TTFT > {report['rules']['ttft_slo']:g} s [95% CI]"
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        f"route {report['route']!r}, window {report['window']} ending {report['at']}, "
        f"{report['prometheus']}",
        "",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    lines += ["", f"failures: {report['failures']['reason']}"]
    if report["latency"] is not None:
        lines.append(f"TTFT over {report['latency']['ttft_slo_seconds']:g} s: {report['latency']['reason']}")
    else:
        lines.append("latency: no time to first token in either arm, not assessed")
    lines.append(f"sessions: {report['sessions']['summary']}")
    lines += [f"note: {note}" for note in report["notes"]]
    lines += ["", f"verdict: {report['reason']}"]
    return "\n".join(lines)


# --- the subcommand ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = RULES_TEXT + (
        "\nExit status: 0 report printed (any verdict); 2 bad option, Prometheus "
        "unreachable or\nanswering with an error."
    )
    defaults = Rules()
    parser.add_argument("route", metavar="ROUTE", help="route alias, e.g. chat")
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--window", default="1h",
                        help="PromQL duration to look back over (default: 1h)")
    parser.add_argument("--at", metavar="TIME",
                        help="evaluate at this time (unix seconds or RFC 3339) instead of now")
    parser.add_argument("--json", action="store_true", help="print JSON (stable keys) instead of a table")
    parser.add_argument("--alpha", type=float, default=None,
                        help=f"one-sided level of the 'worse' tests and of the non-inferiority limit "
                             f"(default: {defaults.alpha:g})")
    parser.add_argument("--margin", type=float, default=None,
                        help="non-inferiority margin on the failure ratio, canary − stable as an absolute "
                             f"difference (default: {defaults.margin:g}, i.e. {defaults.margin * 100:g} points)")
    parser.add_argument("--latency-margin", type=float, default=None,
                        help="non-inferiority margin on the share of requests over --ttft-slo, absolute "
                             f"(default: {defaults.latency_margin:g})")
    parser.add_argument("--config", metavar="FILE",
                        help="the proxy's config file: its `decisions:` section gives the defaults of "
                             "--alpha, --margin, --latency-margin and --ttft-slo")
    parser.add_argument("--ttft-slo", type=float, default=None, metavar="SECONDS",
                        help="time to first token over which a request counts as slow; a bucket bound of "
                             f"the TTFT histogram (default: {defaults.ttft_slo:g})")
    parser.add_argument("--min-expected", type=float, default=defaults.min_expected,
                        help="expected events per arm below which the exact test replaces the z-test "
                             f"(default: {defaults.min_expected:g})")
    parser.add_argument("--min-requests", type=int, default=defaults.min_requests,
                        help="requests each arm needs before any verdict but inconclusive "
                             f"(default: {defaults.min_requests}: the exact tests need no floor)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each Prometheus query (default: 10)")


def rules_from(args: argparse.Namespace) -> Rules:
    """The options as :class:`Rules`, checked: an option given wins, then the config file's
    ``decisions:`` (``--config``), then the defaults of the one vocabulary."""
    settings = DEFAULT_DECISIONS
    if getattr(args, "config", None):
        try:
            settings = load_config(args.config, environ={}).decisions
        except ConfigError as exc:
            raise ReportError(f"--config {args.config}: {exc}") from None

    def pick(given: float | None, default: float) -> float:
        return default if given is None else given

    rules = Rules(pick(args.alpha, settings.alpha), pick(args.margin, settings.failure_margin),
                  pick(args.latency_margin, settings.ttft_margin), pick(args.ttft_slo, settings.ttft_slo),
                  args.min_expected, args.min_requests)
    rules.check()
    return rules


def run(args: argparse.Namespace) -> int:
    try:
        window = parse_window(args.window)
        rules = rules_from(args)
        prometheus = Prometheus(args.prometheus, parse_at(args.at), args.timeout)
        report = build_report(prometheus, args.route, window, rules)
    except ReportError as exc:
        print(f"ollama-sidecar report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0
