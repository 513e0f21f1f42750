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

from proxy.control.routing import Decision, RouteTable
from proxy.metrics import SERVER_SIDE_ERRORS, Arm, ErrorType, ProxyMetrics

log = logging.getLogger("ollama_sidecar.breaker")

# Outcomes that say nothing about the model's health: left out of both counts.
NOT_COUNTED = frozenset({ErrorType.BAD_REQUEST, ErrorType.CLIENT_DISCONNECT, ErrorType.MODEL_NOT_FOUND,
                         ErrorType.UNAUTHORIZED})
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
    """Receives every routed outcome; trips a route's breaker through ``trip(route)``."""

    def __init__(self, routes: RouteTable, metrics: ProxyMetrics, trip: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.routes = routes
        self.metrics = metrics
        self.trip = trip
        self.clock = clock
        self.windows: dict[tuple[str, str], ArmWindow] = {}

    def observe(self, decision: Decision, error_type: ErrorType) -> None:
        if error_type in NOT_COUNTED or decision.arm == Arm.DIRECT:
            return
        now = self.clock()
        key = (decision.route, decision.arm)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ArmWindow()
        window.add(now, error_type in SERVER_SIDE_ERRORS)
        state = self.routes.routes.get(decision.route)
        if state is None:
            return
        cfg = state.breaker
        window.trim(now - self.horizon(decision.route))
        if not cfg.enabled or decision.arm != Arm.CANARY or state.rolled_back:
            return
        n, failed = window.counts()
        ratio = failed / n if n else 0.0
        self.metrics.breaker_canary_failure_ratio.labels(decision.route).set(ratio)
        if n < cfg.min_requests or ratio < cfg.failure_ratio:
            return
        if cfg.stable_margin is not None:
            stable = self.windows.get((decision.route, Arm.STABLE))
            if stable:
                stable.trim(now - cfg.window)
            s_n, s_failed = stable.counts() if stable else (0, 0)
            stable_ratio = s_failed / s_n if s_n else 0.0
            if ratio <= stable_ratio + cfg.stable_margin:
                return  # the canary is no worse than stable: the upstream is sick, not the model
        log.warning("breaker tripped on route %s: canary failure ratio %.2f over %d requests in %gs",
                    decision.route, ratio, n, cfg.window)
        window.clear()
        self.trip(decision.route)

    def horizon(self, route: str) -> float:
        """The window of a route: the breaker's when enabled, else a minute."""
        state = self.routes.routes.get(route)
        return state.breaker.window if state is not None and state.breaker.enabled else LIVE_WINDOW

    def live(self, route: str) -> dict[str, dict[str, float | None]]:
        """Request rate and server-side failure ratio per arm over the route's window."""
        now = self.clock()
        span = self.horizon(route)
        out: dict[str, dict[str, float | None]] = {}
        for arm in (Arm.STABLE, Arm.CANARY):
            window = self.windows.get((route, arm))
            if window:
                window.trim(now - span)
            n, failed = window.counts() if window else (0, 0)
            out[arm] = {"requests_per_second": n / span, "failure_ratio": failed / n if n else None,
                        "window_seconds": span}
        return out
