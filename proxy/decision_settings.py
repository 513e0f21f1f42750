"""The statistical settings of every automatic decision, in one vocabulary.

The breaker, the rollout gate, the A/B report and the generated rollback alerts used to
carry their own keys for the same ideas (a margin here, an α there). They all read a
:class:`DecisionSettings` now: the proxy's config file has it as ``decisions:``, the
monitoring config's profiles carry one (``generate --config`` takes the proxy file's, so
rules and proxy agree), and the report's options default to it. A key means the same
thing wherever it appears; a route's ``breaker`` may override the sequential test's three.

The defaults come from ``bench/decisions_sim.py`` (``docs/decisions.md``): false rollback
of a healthy canary within 24 h at most 1 % in every simulated cell.

This module imports nothing of the proxy, so ``dashboards/`` and ``alerts/`` can read it
through :mod:`proxy.monitoring` without pulling in the request path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from proxy.common.durations import parse_duration


@dataclass(frozen=True)
class SequentialSettings:
    """The sequential test on the stream of failures (``CanarySPRT``): the breaker's, and
    the rollout gate's "worse" between looks."""

    rate_ratio: float = 5.0  # the least effect worth a rollback: canary failing RR x stable
    alpha: float = 2e-5  # sets the threshold log(1/alpha); with a floor it is not a bound
    floor: float | None = -4.6  # CUSUM floor of the log-likelihood ratio; None: Wald's plain test


@dataclass(frozen=True)
class DecisionSettings:
    """Every number a decision depends on. Ratios are fractions (0.02 is 2 points)."""

    # Fixed-sample tests (the report, each rollout step): one-sided level of "worse", and
    # the non-inferiority margins (upper limit of canary - stable below the margin passes).
    alpha: float = 0.025
    failure_margin: float = 0.02
    # Latency: the share of successful, warm requests whose time to first token exceeds
    # ttft_slo (a bucket bound of the TTFT histogram), compared like a failure ratio.
    ttft_slo: float = 2.5
    ttft_margin: float = 0.05
    # The rollback alerts' evidence (failures, or slow requests for latency): at least
    # min_failures in the window, at least min_expected_failures expected at stable's ratio
    # (never taken below stable_ratio_floor), and a canary ratio above rate_ratio x
    # stable's + worse_margin (ttft_margin for latency).
    min_failures: int = 6
    min_expected_failures: float = 0.5
    rate_ratio: float = 3.0
    stable_ratio_floor: float = 0.005
    worse_margin: float = 0.01
    # Quality: the regeneration ratio and the negative-feedback ratio, compared like the
    # failure ratio, with this margin over rate_ratio x stable's.
    quality_margin: float = 0.05
    # With no stable traffic (a route at 100 %), the canary's absolute failure limit.
    max_failure_ratio: float = 0.05
    # A request whose upstream load_duration is at least this many seconds waited for a
    # model load: left out of the latency decisions and counted apart.
    load_wait: float = 1.0
    # Auto-resume: after a rollback alert resolves the canary gets probe_weight % of
    # sessions until probe_requests canary requests pass (not worse than stable), and only
    # then its weight back; silence alone never resumes it.
    probe_weight: float = 5.0
    probe_requests: int = 20
    sequential: SequentialSettings = field(default_factory=SequentialSettings)


DEFAULT_DECISIONS = DecisionSettings()

# (minimum, maximum) of each number; None: unbounded on that side. Checked by the proxy's
# config, the monitoring overrides and the report, so each says the same thing.
LIMITS: Mapping[str, tuple[float | None, float | None]] = {
    "alpha": (1e-9, 0.5), "failure_margin": (1e-6, 1), "ttft_slo": (0.001, None), "ttft_margin": (1e-6, 1),
    "min_failures": (1, None), "min_expected_failures": (0, None), "rate_ratio": (1, None),
    "stable_ratio_floor": (0, 1), "worse_margin": (0, 1), "quality_margin": (0, 1), "max_failure_ratio": (0, 1), "load_wait": (0, None),
    "probe_weight": (0.001, 100), "probe_requests": (1, None),
    "sequential.rate_ratio": (1.01, None), "sequential.alpha": (1e-9, 0.5), "sequential.floor": (None, 0),
}

DURATIONS = frozenset({"ttft_slo", "load_wait"})
"""Keys that are durations: seconds, or e.g. ``2.5s``."""

DESCRIPTIONS: Mapping[str, str] = {
    "alpha": "One-sided level of the fixed-sample 'worse' tests (the report, each rollout step).",
    "failure_margin": "Non-inferiority margin of the failure ratio: a step passes when the upper limit of "
                      "canary - stable is below it (0.02 is 2 points).",
    "ttft_slo": "Seconds of time to first token over which a successful, warm request is slow; a bucket "
                "bound of the TTFT histogram.",
    "ttft_margin": "Non-inferiority margin of the share of slow requests, and the latency rollback alert's "
                   "margin over stable.",
    "min_failures": "Rollback alerts: fewest canary failures (slow requests) in the window before they can fire.",
    "min_expected_failures": "Rollback alerts: fewest failures expected at stable's ratio before they can fire.",
    "rate_ratio": "Rollback alerts: the canary's ratio must exceed this many times stable's (plus a margin).",
    "stable_ratio_floor": "Rollback alerts: stable's ratio is never taken below this.",
    "worse_margin": "Rollback alert on failures: the canary's ratio must exceed rate_ratio x stable's plus this.",
    "max_failure_ratio": "Canary failure ratio that is too high on its own, used when stable has no traffic.",
    "quality_margin": "Quality rollback alert: the canary's regeneration or negative-feedback ratio must exceed "
                      "rate_ratio x stable's plus this.",
    "load_wait": "Seconds of upstream load_duration that mark a request as one that waited for a model "
                 "load: left out of latency decisions, counted apart.",
    "probe_weight": "Percent of sessions a canary gets after its rollback alert resolved (auto_resume), until "
                    "it passed probe_requests requests.",
    "probe_requests": "Canary requests the auto-resume probe needs, none of them significantly worse than "
                      "stable, before the canary gets its weight back.",
    "sequential.rate_ratio": "The sequential test's least effect worth a rollback: canary failing this many "
                             "times as often as stable.",
    "sequential.alpha": "The sequential test's false-alarm level (with no floor, the chance a healthy canary "
                        "is ever tripped).",
    "sequential.floor": "Lowest value of the sequential test's log-likelihood ratio (a CUSUM); null for Wald's "
                        "plain test.",
}


class DecisionSettingsError(ValueError):
    """A bad value; ``key`` is its dotted name below ``decisions``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def parse_decisions(value: Any, base: DecisionSettings = DEFAULT_DECISIONS) -> DecisionSettings:
    """``base`` with the keys of ``value`` (a mapping as read from YAML) replaced, each
    checked against :data:`LIMITS`. Errors name the key (below ``decisions``)."""
    if value is None:
        return base
    if not isinstance(value, Mapping):
        raise DecisionSettingsError("decisions", "must be a mapping")
    changes: dict[str, Any] = {}
    names = {f.name for f in fields(DecisionSettings)}
    for key, raw in value.items():
        if key not in names:
            raise DecisionSettingsError(str(key), f"unknown key (known: {', '.join(sorted(names))})")
        if key == "sequential":
            changes[key] = _parse_sequential(raw, base.sequential)
        elif key in DURATIONS:
            try:
                seconds = parse_duration(raw)
            except ValueError as exc:
                raise DecisionSettingsError(key, str(exc)) from None
            changes[key] = _number(key, seconds)
        else:
            changes[key] = _number(key, raw, integer=isinstance(getattr(base, key), int))
    return replace(base, **changes)


def _parse_sequential(value: Any, base: SequentialSettings) -> SequentialSettings:
    if not isinstance(value, Mapping):
        raise DecisionSettingsError("sequential", "must be a mapping of rate_ratio, alpha, floor")
    names = {f.name for f in fields(SequentialSettings)}
    changes = {}
    for key, raw in value.items():
        if key not in names:
            raise DecisionSettingsError(f"sequential.{key}", f"unknown key (known: {', '.join(sorted(names))})")
        if key == "floor" and raw is None:
            changes[key] = None
        else:
            changes[key] = _number(f"sequential.{key}", raw)
    return replace(base, **changes)


def _number(key: str, raw: Any, integer: bool = False) -> float | int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw:
        raise DecisionSettingsError(key, f"must be a number, got {raw!r}")
    if integer and int(raw) != raw:
        raise DecisionSettingsError(key, f"must be a whole number, got {raw!r}")
    low, high = LIMITS[key]
    if low is not None and raw < low:
        raise DecisionSettingsError(key, f"must be at least {low:g}, got {raw!r}")
    if high is not None and raw > high:
        raise DecisionSettingsError(key, f"must be at most {high:g}, got {raw!r}")
    return int(raw) if integer else float(raw)


def not_a_bucket_bound(slo: float, buckets: tuple[float, ...]) -> str | None:
    """Why ``slo`` cannot be a TTFT SLO (the share over it is read from one bucket), or None."""
    if slo in buckets:
        return None
    bounds = " ".join(f"{b:g}" for b in buckets)
    return f"{slo:g} is not a bucket bound of the time to first token histogram: use one of {bounds}"


def check_ttft_slo(settings: DecisionSettings, buckets: tuple[float, ...]) -> None:
    problem = not_a_bucket_bound(settings.ttft_slo, buckets)
    if problem:
        raise DecisionSettingsError("ttft_slo", problem)
