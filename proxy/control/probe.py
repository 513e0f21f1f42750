"""Auto-resume's probe: a canary comes back on evidence, never on silence.

A rolled-back canary gets no traffic, so the alert that rolled it back resolves by itself
once ``keep_firing_for`` has passed, and a plain resume would hand the broken canary its
whole weight again every half hour. With ``auto_resume`` a resolved alert therefore starts
a probe instead (:meth:`ControlPlane.resume` with ``probe=True``): the canary gets
``decisions.probe_weight`` % of sessions until it has served ``decisions.probe_requests``
requests. Then the same test as the report's decides on the probe's counts (failures as
every decision counts them, :data:`proxy.metrics.ARM_FAILURES`):

* significantly worse than stable at ``decisions.alpha`` (or, with no stable traffic,
  above ``decisions.max_failure_ratio``): rolled back again, reason ``probe``;
* otherwise the canary gets the weight it had before the rollback.

The breaker keeps watching during the probe, as at any weight. Counting happens on the
request path (a few integer additions per request of a probing route); the test runs once
per probe, when its last request is counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from proxy.control import decisions
from proxy.control.routing import Decision, RouteTable
from proxy.decision_settings import DecisionSettings
from proxy.metrics import ARM_FAILURES, NOT_EVIDENCE, Arm, ErrorType

log = logging.getLogger("ollama_sidecar.control")


@dataclass
class ArmCounts:
    """Requests and failures of both arms since one route change (``key``)."""

    key: float
    canary_requests: int = 0
    canary_failures: int = 0
    stable_requests: int = 0
    stable_failures: int = 0

    def add(self, canary: bool, failed: bool) -> None:
        if canary:
            self.canary_requests += 1
            self.canary_failures += failed
        else:
            self.stable_requests += 1
            self.stable_failures += failed


def probe_passes(counts: ArmCounts, settings: DecisionSettings) -> tuple[bool, str]:
    """Whether a finished probe lets the canary back, and why (for the log and ``status``)."""
    c_f, c_n, s_f, s_n = counts.canary_failures, counts.canary_requests, counts.stable_failures, counts.stable_requests
    if s_n == 0:
        ratio = c_f / c_n
        if ratio > settings.max_failure_ratio:
            return False, (f"canary failed {c_f}/{c_n} with no stable traffic to compare, above "
                           f"{settings.max_failure_ratio:.0%}")
        return True, f"canary failed {c_f}/{c_n} (no stable traffic), within {settings.max_failure_ratio:.0%}"
    test = decisions.worse_test(c_f, c_n, s_f, s_n, alpha=settings.alpha)
    assert test is not None  # both arms have requests
    summary = f"canary {c_f}/{c_n} failed against stable {s_f}/{s_n} ({test.describe()})"
    return (not test.worse), summary


class Probes:
    """Counts the outcomes of probing routes and ends each probe once it has its requests.
    ``finish(route, passed, why)`` acts on the verdict (the control plane's)."""

    def __init__(self, routes: RouteTable, settings: Callable[[], DecisionSettings],
                 finish: Callable[[str, bool, str], None]) -> None:
        self.routes = routes
        self.settings = settings
        self.finish = finish
        self.counts: dict[str, ArmCounts] = {}

    def observe(self, decision: Decision, error_type: ErrorType) -> None:
        if decision.arm == Arm.DIRECT or error_type in NOT_EVIDENCE:
            return
        state = self.routes.routes.get(decision.route)
        if state is None or state.probe_weight_after is None or state.rolled_back:
            self.counts.pop(decision.route, None)
            return
        counts = self.counts.get(decision.route)
        if counts is None or counts.key != state.since:
            counts = self.counts[decision.route] = ArmCounts(state.since)
        counts.add(decision.arm == Arm.CANARY, error_type in ARM_FAILURES)
        self._maybe_finish(decision.route, counts)

    def observe_counts(self, route: str, canary_requests: int, canary_failures: int, stable_requests: int,
                       stable_failures: int) -> None:
        """Counts of an interval from every replica (proxy.replicas.counts)."""
        state = self.routes.routes.get(route)
        if state is None or state.probe_weight_after is None or state.rolled_back:
            self.counts.pop(route, None)
            return
        counts = self.counts.get(route)
        if counts is None or counts.key != state.since:
            counts = self.counts[route] = ArmCounts(state.since)
        counts.canary_requests += canary_requests
        counts.canary_failures += canary_failures
        counts.stable_requests += stable_requests
        counts.stable_failures += stable_failures
        self._maybe_finish(route, counts)

    def _maybe_finish(self, route: str, counts: ArmCounts) -> None:
        settings = self.settings()
        if counts.canary_requests < settings.probe_requests:
            return
        del self.counts[route]
        passed, why = probe_passes(counts, settings)
        log.warning("route %s: auto-resume probe %s: %s", route, "passed" if passed else "FAILED", why)
        self.finish(route, passed, why)

    def progress(self, route: str) -> dict[str, int] | None:
        """The running probe's counts, for ``status``."""
        counts = self.counts.get(route)
        state = self.routes.routes.get(route)
        if state is None or state.probe_weight_after is None:
            return None
        if counts is None or counts.key != state.since:
            return {"canary_requests": 0, "canary_failures": 0, "stable_requests": 0, "stable_failures": 0}
        return {"canary_requests": counts.canary_requests, "canary_failures": counts.canary_failures,
                "stable_requests": counts.stable_requests, "stable_failures": counts.stable_failures}
