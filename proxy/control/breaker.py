"""Per-route sliding windows of outcomes per arm, and the circuit breaker built on them.

The windows always run (they feed ``ollama-sidecar status``'s live rates); the breaker
acts only where a route enables it. It follows what progressive-delivery users ask for
in Flagger's and Argo Rollouts' issue trackers (and Argo's docs on inconclusive analysis
runs): too little canary traffic is inconclusive, never a failure;
only server-side failures count (a client's bad request says nothing about the model);
the canary can be compared with stable, not only with a fixed threshold; and each trip
is a recorded decision with a reason (``breaker``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from proxy.control.decisions import CanarySPRT, RecentRequests
from proxy.control.routing import Decision, RouteState, RouteTable
from proxy.metrics import ARM_FAILURES, NOT_EVIDENCE, Arm, ErrorType, ProxyMetrics

log = logging.getLogger("ollama_sidecar.breaker")

LIVE_WINDOW = 60.0


class ArmWindow:
    """Timestamps of requests and of server-side failures over the last ``window`` s."""

    __slots__ = ("requests", "failures")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.failures: deque[float] = deque()

    def add(self, now: float, failed: bool) -> None:
        self.requests.append(now)
        if failed:
            self.failures.append(now)

    def add_many(self, now: float, requests: int, failures: int) -> None:
        self.requests.extend([now] * requests)
        self.failures.extend([now] * failures)

    def trim(self, horizon: float) -> None:
        for q in (self.requests, self.failures):
            while q and q[0] < horizon:
                q.popleft()

    def counts(self) -> tuple[int, int]:
        return len(self.requests), len(self.failures)

    def clear(self) -> None:
        self.requests.clear()
        self.failures.clear()


class Breakers:
    """Receives every routed outcome; trips a route's breaker through ``trip(route)``.

    A trip needs two things: the sequential test (:class:`CanarySPRT` on the stream of
    failures, with each failure scored by the canary's share of recent requests) says
    "worse", and the canary's own numbers over the window pass the absolute limits
    (``min_requests``, ``failure_ratio``, ``stable_margin``). The test alone would roll
    back a canary at 0.3 % next to a stable at 0.1 %; the limits alone are what falsely
    tripped healthy canaries at low traffic (a 20 % ratio over 20 requests happens by
    chance at 5 % failures)."""

    def __init__(self, routes: RouteTable, metrics: ProxyMetrics, trip: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.routes = routes
        self.metrics = metrics
        self.trip = trip
        self.clock = clock
        self.windows: dict[tuple[str, str], ArmWindow] = {}
        self.tests: dict[str, CanarySPRT] = {}

    def _test(self, route: str, state: RouteState) -> CanarySPRT:
        cfg = state.breaker
        test = self.tests.get(route)
        if test is None or (test.rate_ratio, test.alpha, test.floor) != (cfg.rate_ratio, cfg.alpha, cfg.floor):
            test = self.tests[route] = CanarySPRT(cfg.rate_ratio, cfg.alpha, floor=cfg.floor,
                                                  exposure=RecentRequests(prior_share=state.effective_weight / 100))
        if test.reset_if_changed((state.canary, state.effective_weight, state.since)):
            # A new canary or weight, or a rollback and resume in between (every change to a
            # route is a new `since`): the evidence starts over, the exposure prior with it.
            test.exposure.restart(state.effective_weight / 100)  # type: ignore[union-attr]
        return test

    def observe(self, decision: Decision, error_type: ErrorType) -> None:
        if error_type in NOT_EVIDENCE or decision.arm == Arm.DIRECT:
            return
        state = self.routes.routes.get(decision.route)
        if state is not None and state.rolled_back:
            # Stragglers that started before the rollback are no evidence for after a resume,
            # which starts the test afresh.
            self.tests.pop(decision.route, None)
            if decision.arm == Arm.CANARY:
                return
        now = self.clock()
        key = (decision.route, decision.arm)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ArmWindow()
        failed = error_type in ARM_FAILURES
        window.add(now, failed)
        if state is None or state.rolled_back:
            return
        window.trim(now - self.horizon(decision.route))
        test = self._test(decision.route, state)
        test.observe(decision.arm == Arm.CANARY, failed)
        if decision.arm == Arm.CANARY:
            self._judge(decision.route, state, test, window, now)
        else:
            self.metrics.breaker_log_likelihood_ratio.labels(decision.route).set(test.llr)

    def observe_counts(self, route: str, canary_requests: int, canary_failures: int, stable_requests: int,
                       stable_failures: int) -> None:
        """Counts of an interval from every replica (proxy.replicas.counts), fed to the same
        windows and test as single requests are; the test takes them as one interval."""
        state = self.routes.routes.get(route)
        if state is None or not (canary_requests or stable_requests):
            return
        if state.rolled_back:
            self.tests.pop(route, None)
            canary_requests = canary_failures = 0
        now = self.clock()
        for arm, n, failed in ((Arm.CANARY, canary_requests, canary_failures),
                               (Arm.STABLE, stable_requests, stable_failures)):
            if n:
                window = self.windows.get((route, arm))
                if window is None:
                    window = self.windows[(route, arm)] = ArmWindow()
                window.add_many(now, n, failed)
                window.trim(now - self.horizon(route))
        if state.rolled_back:
            return
        window = self.windows.get((route, Arm.CANARY)) or ArmWindow()
        test = self._test(route, state)
        test.observe_interval(canary_requests, canary_failures, stable_requests, stable_failures)
        self._judge(route, state, test, window, now)

    def _judge(self, route: str, state: RouteState, test: CanarySPRT, window: ArmWindow, now: float) -> None:
        """After canary evidence: trip when the test says worse and the window's limits agree."""
        cfg = state.breaker
        self.metrics.breaker_log_likelihood_ratio.labels(route).set(test.llr)
        if not cfg.enabled:
            return
        n, failures = window.counts()
        ratio = failures / n if n else 0.0
        self.metrics.breaker_canary_failure_ratio.labels(route).set(ratio)
        if not test.worse or n < cfg.min_requests or ratio < cfg.failure_ratio:
            return
        if cfg.stable_margin is not None:
            stable = self.windows.get((route, Arm.STABLE))
            if stable:
                stable.trim(now - cfg.window)
            s_n, s_failed = stable.counts() if stable else (0, 0)
            stable_ratio = s_failed / s_n if s_n else 0.0
            if ratio <= stable_ratio + cfg.stable_margin:
                return  # the canary is no worse than stable: the upstream is sick, not the model
        log.warning("breaker tripped on route %s: sequential test says worse (log-likelihood ratio %.2f >= %.2f "
                    "after %d canary and %d stable failures); canary failure ratio %.2f over %d requests in %gs",
                    route, test.llr, test.threshold, test.canary_failures, test.stable_failures,
                    ratio, n, cfg.window)
        window.clear()
        self.trip(route)

    def horizon(self, route: str) -> float:
        """The window of a route: the breaker's when enabled, else a minute."""
        state = self.routes.routes.get(route)
        return state.breaker.window if state is not None and state.breaker.enabled else LIVE_WINDOW

    def live(self, route: str) -> dict[str, dict[str, float | int | str | None]]:
        """Request rate and server-side failure ratio per arm over the route's window, and
        the sequential test's state (``status`` shows both)."""
        now = self.clock()
        span = self.horizon(route)
        out: dict[str, dict[str, float | int | str | None]] = {}
        for arm in (Arm.STABLE, Arm.CANARY):
            window = self.windows.get((route, arm))
            if window:
                window.trim(now - span)
            n, failed = window.counts() if window else (0, 0)
            out[arm] = {"requests_per_second": n / span, "failure_ratio": failed / n if n else None,
                        "window_seconds": span}
        test = self.tests.get(route)
        if test is not None:
            out["sequential_test"] = test.state()
        return out
