"""The circuit breaker (proxy/control/breaker.py) on a fake clock: when it trips, when it
must not, and the live rates ``ollama-sidecar status`` shows. The same breaker end to
end, through a proxy and its upstream, is in test_control_plane.py."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import parse_config
from proxy.control.breaker import Breakers
from proxy.control.plane import ControlPlane
from proxy.control.routing import Decision, RouteTable
from proxy.metrics import ProxyMetrics
from tests.conftest import FakeClock

# The sequential test at rate ratio 3 and alpha 0.01 keeps the arithmetic of these tests
# readable (threshold 4.6); the shipped defaults are stricter (docs/decisions.md).
BREAKER = {"window": 60, "min_requests": 10, "failure_ratio": 0.5, "rate_ratio": 3, "alpha": 0.01}
CANARY = Decision("chat", "canary", "qwen3:8b-ft", "http://ollama:11434")
STABLE = Decision("chat", "stable", "qwen3:8b", "http://ollama:11434")


class Setup:
    """A route ``chat`` with a breaker, its control plane, and the breakers on a fake clock."""

    def __init__(self, breaker: dict[str, Any] | None = BREAKER) -> None:
        route = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}
        if breaker is not None:
            route["breaker"] = breaker
        config = parse_config({"routes": {"chat": route}}, environ={})
        self.routes = RouteTable(config)
        self.metrics = ProxyMetrics()
        self.control = ControlPlane(config, self.routes, self.metrics)
        self.clock = FakeClock()
        self.tripped: list[str] = []
        self.breakers = Breakers(self.routes, self.metrics, trip=self._trip, clock=self.clock)

    def _trip(self, route: str) -> None:
        self.tripped.append(route)
        self.control.rollback(route, "breaker")

    def send(self, decision: Decision, error_type: str, n: int = 1) -> None:
        for _ in range(n):
            self.breakers.observe(decision, error_type)

    @property
    def rolled_back(self) -> bool:
        return self.routes.routes["chat"].rolled_back

    def ratio_gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("ollama_proxy_breaker_canary_failure_ratio",
                                                      {"route": "chat"})


def fail_canary_beside_healthy_stable(s: Setup, n: int) -> None:
    for _ in range(n):
        s.send(STABLE, "none")
        s.send(CANARY, "upstream_5xx")


def test_trips_when_the_sequential_test_and_the_window_agree():
    s = Setup()
    fail_canary_beside_healthy_stable(s, 9)
    assert s.tripped == []  # nine failures are too few to conclude anything
    test = s.breakers.live("chat")["sequential_test"]
    assert 0 < test["llr"] < test["threshold"] and test["canary_failures"] == 9
    fail_canary_beside_healthy_stable(s, 6)
    assert s.tripped == ["chat"] and s.rolled_back
    assert s.routes.routes["chat"].reason == "breaker"
    assert s.ratio_gauge() == 1
    # At a 50 % split each canary failure beside a healthy stable adds about log(1.5) (rate
    # ratio 3; a little more as the canary's share of recent requests settles): log(1/0.01)
    # = 4.6 is crossed at the 11th.
    assert s.metrics.registry.get_sample_value("ollama_proxy_breaker_log_likelihood_ratio",
                                               {"route": "chat"}) >= 4.6


def test_failures_of_the_canary_alone_with_no_stable_to_compare_do_not_trip_it_quickly():
    s = Setup()
    s.send(CANARY, "upstream_5xx", 10)  # the old rule tripped here; whose failure it is says little
    assert s.tripped == []


def test_a_routed_arms_404_counts_against_it():
    s = Setup()
    for _ in range(15):
        s.send(STABLE, "none")
        s.send(CANARY, "model_not_found")  # the canary's model is missing: every user of it fails
    assert s.tripped == ["chat"]


def test_a_canary_failing_less_than_the_ratio_is_left_alone():
    s = Setup()
    for _ in range(20):
        s.send(CANARY, "upstream_5xx")
        s.send(CANARY, "none")
        s.send(CANARY, "none")
    assert s.tripped == [] and s.ratio_gauge() == pytest.approx(1 / 3)


@pytest.mark.parametrize("error_type", ["bad_request", "client_disconnect", "unauthorized"])
def test_client_side_outcomes_count_neither_for_nor_against_the_canary(error_type):
    s = Setup()
    s.send(CANARY, error_type, 50)
    assert s.tripped == []
    assert s.breakers.live("chat")["canary"]["failure_ratio"] is None  # nothing counted at all


def test_failures_older_than_the_window_are_forgotten():
    s = Setup()
    s.send(CANARY, "upstream_5xx", 9)
    s.clock.advance(61)
    s.send(CANARY, "upstream_5xx")  # 1 in the window, not 10
    assert s.tripped == []
    s.send(CANARY, "upstream_5xx", 8)
    s.clock.advance(30)  # the last nine are 30 s old: still inside the window
    s.send(CANARY, "upstream_5xx")
    assert s.tripped == ["chat"]


def test_with_a_stable_margin_a_sick_upstream_is_not_blamed_on_the_canary():
    s = Setup(dict(BREAKER, stable_margin=0.1))
    s.send(STABLE, "upstream_5xx", 20)
    s.send(CANARY, "upstream_5xx", 20)
    assert s.tripped == []  # both arms fail alike: Ollama is sick, not the canary
    s.clock.advance(61)  # stable's failures leave the window; stable is healthy now
    s.send(STABLE, "none", 20)
    s.send(CANARY, "upstream_5xx", 10)
    assert s.tripped == ["chat"]


def test_a_rolled_back_route_is_not_tripped_again():
    s = Setup()
    s.send(CANARY, "upstream_5xx", 10)
    s.send(CANARY, "upstream_5xx", 30)  # requests decided before the rollback still finish
    assert s.tripped == ["chat"]
    assert s.metrics.registry.get_sample_value("ollama_proxy_route_changes_total",
                                               {"route": "chat", "reason": "breaker"}) == 1


def test_after_resume_the_failures_that_tripped_it_do_not_count_again():
    s = Setup()
    fail_canary_beside_healthy_stable(s, 15)
    assert s.tripped == ["chat"]
    s.send(CANARY, "upstream_5xx", 20)  # stragglers that finish after the rollback: no evidence
    s.control.resume("chat")
    fail_canary_beside_healthy_stable(s, 9)
    assert s.tripped == ["chat"]  # judged afresh: nine are too few
    fail_canary_beside_healthy_stable(s, 6)
    assert s.tripped == ["chat", "chat"]


def test_without_a_breaker_a_failing_canary_is_only_shown_never_rolled_back():
    s = Setup(breaker=None)
    s.send(CANARY, "upstream_5xx", 50)
    s.send(STABLE, "none", 30)
    assert s.tripped == [] and not s.rolled_back
    live = s.breakers.live("chat")
    assert live["canary"] == {"requests_per_second": 50 / 60, "failure_ratio": 1.0, "window_seconds": 60}
    assert live["stable"] == {"requests_per_second": 30 / 60, "failure_ratio": 0.0, "window_seconds": 60}


def test_live_rates_cover_the_breakers_window_and_age_out():
    s = Setup(dict(BREAKER, window=30, min_requests=1000))
    s.send(CANARY, "upstream_5xx", 15)
    s.send(CANARY, "none", 15)
    assert s.breakers.live("chat")["canary"] == {"requests_per_second": 1.0, "failure_ratio": 0.5,
                                                 "window_seconds": 30}
    s.clock.advance(31)
    assert s.breakers.live("chat")["canary"]["requests_per_second"] == 0
    assert s.breakers.live("chat")["canary"]["failure_ratio"] is None


def test_requests_for_a_model_by_name_are_not_tracked():
    s = Setup()
    s.send(Decision("none", "direct", "llama3.2", "http://ollama:11434"), "upstream_5xx", 50)
    assert s.breakers.windows == {} and s.tripped == []


def test_a_rollback_by_alert_then_resume_starts_the_sequential_test_afresh():
    s = Setup()
    fail_canary_beside_healthy_stable(s, 10)  # just short of the threshold
    assert s.tripped == []
    s.control.rollback("chat", "alert:OllamaCanaryErrorRateHigh")
    s.control.resume("chat")
    fail_canary_beside_healthy_stable(s, 9)
    assert s.tripped == []  # the evidence from before the rollback is gone
    assert s.breakers.live("chat")["sequential_test"]["canary_failures"] == 9
