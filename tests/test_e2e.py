"""The product's promise with real components: a canary goes bad, Prometheus notices,
Alertmanager calls the proxy, traffic goes back to stable, and nobody on stable sees an
error. Real Prometheus and Alertmanager (Debian's packages) with the shipped configs and
the fast rule profile; the simulator stands in for Ollama.
"""

from __future__ import annotations

import time

import pytest
import requests

from proxy.commands.stack import DEMO_KEYS, LocalStack, StackOptions
from proxy.commands.traffic import TrafficDriver
from tests.binaries import alertmanager_binary, require_binary
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

ROLLBACK_BOUND_SECONDS = 15.0  # fault to rollback, fast profile (docs/performance.md records measurements)


@pytest.fixture(autouse=True)
def real_binaries():
    require_binary("prometheus")
    alertmanager_binary()



def prometheus_sees_both_arms(stack: LocalStack) -> bool:
    r = requests.get(f"{stack.url('prometheus')}/api/v1/query",
                     params={"query": 'count(route_arm:ollama_proxy_requests:rate{route="chat"} > 0)'}, timeout=5)
    result = r.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == 2


def proxy_metric(stack: LocalStack, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    text = requests.get(f"{stack.url('proxy')}/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def run_until_rollback(stack: LocalStack, timeout: float = 40.0):
    """Healthy traffic until Prometheus sees both arms, then break the canary; returns
    (traffic, fault time, rollback time, route state)."""
    traffic = TrafficDriver(stack.url("proxy"), "chat", workers=6, sessions=60, pause=0.02, keys=DEMO_KEYS).start()
    try:
        wait_for(lambda: prometheus_sees_both_arms(stack), 30, "Prometheus to see traffic on both arms")
        stack.break_canary(error_rate=0.6)
        fault = time.monotonic()
        state = wait_for(lambda: (s := stack.route_state())["rolled_back"] and s, timeout, "the rollback")
        flipped = time.monotonic()
        time.sleep(2.0)  # traffic after the flip
    finally:
        traffic.stop()
    return traffic, fault, flipped, state


def assert_nobody_on_stable_suffered(traffic: TrafficDriver, flipped: float) -> None:
    outcomes = traffic.snapshot()
    stable = [o for o in outcomes if o.arm == "stable"]
    assert stable and all(o.status == 200 and o.completed for o in stable), \
        [o for o in stable if not o.completed][:3]
    after = [o for o in outcomes if o.started > flipped + 0.05]
    assert after and {o.arm for o in after} == {"stable"}
    in_flight = [o for o in outcomes if o.started < flipped < o.ended and o.status == 200]
    assert all(o.completed for o in in_flight)  # streams in flight at the flip completed
    assert all(o.status in (200, 500) for o in outcomes)  # only the injected canary 500s failed


def test_alert_rolls_back_the_canary_and_the_state_survives_a_restart(tmp_path):
    with LocalStack(StackOptions(workdir=tmp_path)) as stack:
        traffic, fault, flipped, state = run_until_rollback(stack)
        elapsed = flipped - fault
        print(f"\nalert path: rolled back {elapsed:.1f}s after the fault ({state['reason']})")
        assert state["reason"] == "alert:OllamaCanaryErrorRateHigh"
        assert elapsed <= ROLLBACK_BOUND_SECONDS
        assert proxy_metric(stack, "ollama_proxy_route_changes_total", route="chat",
                            reason="alert:OllamaCanaryErrorRateHigh") == 1
        assert proxy_metric(stack, "ollama_proxy_alertmanager_notifications_total", outcome="applied") >= 1
        am_alerts = requests.get(f"{stack.url('alertmanager')}/api/v2/alerts", timeout=5).json()
        assert any(a["labels"]["alertname"] == "OllamaCanaryErrorRateHigh" and a["labels"]["route"] == "chat"
                   for a in am_alerts)
        assert_nobody_on_stable_suffered(traffic, flipped)

        stack.restart_proxy()
        after_restart = stack.route_state()
        assert after_restart["rolled_back"] and after_restart["reason"] == "alert:OllamaCanaryErrorRateHigh"
        assert proxy_metric(stack, "ollama_proxy_route_rolled_back", route="chat") == 1


def test_breaker_rolls_back_before_the_alert_path(tmp_path):
    # A short window: the breaker must win the race against the alert path (5-7 s) with a
    # margin even on a loaded CI machine; ~2 s here.
    breaker = {"window": 4, "min_requests": 5, "failure_ratio": 0.3}
    with LocalStack(StackOptions(workdir=tmp_path, breaker=breaker)) as stack:
        traffic, fault, flipped, state = run_until_rollback(stack)
        print(f"\nbreaker: rolled back {flipped - fault:.1f}s after the fault")
        assert state["reason"] == "breaker"
        assert proxy_metric(stack, "ollama_proxy_route_changes_total", reason="breaker") == 1
        assert proxy_metric(stack, "ollama_proxy_route_changes_total", reason="alert:OllamaCanaryErrorRateHigh") == 0
        assert_nobody_on_stable_suffered(traffic, flipped)


def test_reconcile_converges_when_the_webhook_is_lost(tmp_path):
    options = StackOptions(workdir=tmp_path, webhook_reachable=False, reconcile_interval=1.0)
    with LocalStack(options) as stack:
        traffic, fault, flipped, state = run_until_rollback(stack)
        print(f"\nreconcile: rolled back {flipped - fault:.1f}s after the fault")
        assert state["reason"] == "reconcile:OllamaCanaryErrorRateHigh"
        assert proxy_metric(stack, "ollama_proxy_route_changes_total", reason="reconcile") == 1
        assert proxy_metric(stack, "ollama_proxy_alertmanager_notifications_total", outcome="applied") == 0
        assert_nobody_on_stable_suffered(traffic, flipped)


def test_a_rollout_analysed_on_prometheus_climbs_on_its_counts_and_holds_when_it_is_gone(tmp_path):
    """analysis: {prometheus: URL}: the gate judges on what Prometheus counted (every
    replica's traffic), not on this proxy's own counts; with Prometheus gone the rollout
    holds, it never advances on counts it could not read."""
    rollout = {"steps": [10, 50], "interval": 3, "min_requests": 10, "stall_after": 600}
    options = StackOptions(workdir=tmp_path, canary_weight=0, rollout=rollout, rollout_on_prometheus=True)
    with LocalStack(options) as stack:
        traffic = TrafficDriver(stack.url("proxy"), "chat", workers=6, sessions=400, pause=0.02, keys=DEMO_KEYS).start()
        try:
            stack.rollout("", {})
            first = stack.rollout()
            assert first["analysis"]["source"] == "prometheus"
            wait_for(lambda: stack.rollout()["step"] >= 2, 60, "the rollout to pass its first step on Prometheus")
            doc = stack.rollout()
            # the evidence is Prometheus's increase(): whole requests, both arms
            assert doc["total"]["canary"]["requests"] >= 10 and doc["total"]["stable"]["requests"] > 0
            stack.processes["prometheus"].stop()
            wait_for(lambda: (stack.rollout()["analysis"]["problem"] or "").startswith("cannot query Prometheus"),
                     20, "the rollout to notice Prometheus is gone")
            held = stack.rollout()
            time.sleep(8)  # two intervals: it would have advanced
            after = stack.rollout()
            assert (after["step"], after["phase"]) == (held["step"], "progressing")
            assert after["reason"].startswith("holding: cannot query Prometheus")
        finally:
            traffic.stop()


def test_a_canary_that_answers_worse_without_any_error_is_rolled_back_on_quality(tmp_path):
    """Simulated users reject the canary's answers (they regenerate or rate them down) while
    every request succeeds: the quality rule fires through real Prometheus, Alertmanager
    calls the proxy, and the route is rolled back with the quality alert as its reason."""
    with LocalStack(StackOptions(workdir=tmp_path)) as stack:
        traffic = TrafficDriver(stack.url("proxy"), "chat", workers=6, sessions=40, pause=0.02,
                                simulator=stack.url("simulator"), keys=DEMO_KEYS).start()
        try:
            wait_for(lambda: prometheus_sees_both_arms(stack), 30, "Prometheus to see traffic on both arms")
            stack.set_canary_profile(answer_quality=0.3)
            state = wait_for(lambda: (s := stack.route_state())["rolled_back"] and s, 60, "the quality rollback")
        finally:
            traffic.stop()
        assert state["reason"] == "alert:OllamaCanaryQualityRegression"
        assert all(o.completed for o in traffic.snapshot()), "no request failed: quality alone"
        assert proxy_metric(stack, "ollama_proxy_regenerations_total", arm="canary") > \
            proxy_metric(stack, "ollama_proxy_regenerations_total", arm="stable")
