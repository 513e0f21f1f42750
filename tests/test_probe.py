"""Auto-resume's probe (proxy/control/probe.py): a canary whose rollback alert resolved
comes back at a small weight and gets its own back only after it served enough requests
without being significantly worse than stable; silence alone never resumes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from proxy.config import parse_config
from proxy.control.alertmanager import Alert, handle_alert
from proxy.control.plane import ControlPlane
from proxy.control.probe import ArmCounts, Probes, probe_passes
from proxy.control.routing import Decision, RouteTable
from proxy.decision_settings import DEFAULT_DECISIONS
from proxy.metrics import Arm, ErrorType, ProxyMetrics

ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50, "auto_resume": True}
ALERT = "OllamaCanaryErrorRateHigh"


def make(state_file: Path | None = None, **decisions: Any) -> tuple[ControlPlane, Probes]:
    settings: dict[str, Any] = {"routes": {"chat": dict(ROUTE)}, "decisions": decisions}
    if state_file is not None:
        settings["state_file"] = str(state_file)
    config = parse_config(settings, environ={})
    routes = RouteTable(config)
    plane = ControlPlane(config, routes, ProxyMetrics())
    return plane, Probes(routes, lambda: plane.config.decisions, plane.end_probe)


def alert(status: str) -> Alert:
    return Alert(status, {"alertname": ALERT, "route": "chat", "action": "rollback"}, "f1", "2026-11-29T10:00:00Z")


def serve(probes: Probes, arm: Arm, n: int, failures: int = 0) -> None:
    for i in range(n):
        error = ErrorType.UPSTREAM_5XX if i < failures else ErrorType.NONE
        probes.observe(Decision("chat", arm, "m", "http://u"), error)


def rolled_back_then_resolved(plane: ControlPlane) -> None:
    assert handle_alert(plane, alert("firing")) == "applied"
    assert plane.get("chat").rolled_back
    assert handle_alert(plane, alert("resolved")) == "applied"


def test_a_resolved_alert_resumes_at_the_probe_weight_and_a_healthy_probe_restores_the_weight():
    plane, probes = make()
    rolled_back_then_resolved(plane)
    state = plane.get("chat")
    assert (state.rolled_back, state.effective_weight, state.probe_weight_after) == (False, 5.0, 50.0)
    serve(probes, Arm.STABLE, 200, failures=2)
    serve(probes, Arm.CANARY, 19)
    assert plane.get("chat").effective_weight == 5.0  # one request short of the probe
    assert probes.progress("chat")["canary_requests"] == 19
    serve(probes, Arm.CANARY, 1)
    state = plane.get("chat")
    assert (state.effective_weight, state.probe_weight_after, state.reason) == (50.0, None, "probe")


def test_a_canary_still_broken_fails_its_probe_and_is_rolled_back_again_to_the_same_weight():
    plane, probes = make()
    rolled_back_then_resolved(plane)
    serve(probes, Arm.STABLE, 200, failures=2)
    serve(probes, Arm.CANARY, 20, failures=8)
    state = plane.get("chat")
    assert (state.rolled_back, state.reason, state.weight_before_rollback) == (True, "probe", 50.0)
    # An operator's resume later gives the canary the weight it had before the first rollback.
    assert plane.resume("chat").effective_weight == 50.0


def test_with_no_stable_traffic_the_probe_uses_the_absolute_limit():
    counts = ArmCounts(0.0, canary_requests=20, canary_failures=2)
    assert probe_passes(counts, DEFAULT_DECISIONS)[0] is False  # 10 % > 5 %
    counts.canary_failures = 1
    assert probe_passes(counts, DEFAULT_DECISIONS)[0] is True  # 5 % is not above 5 %


def test_a_probe_needs_a_significant_difference_to_fail_not_one_unlucky_failure():
    ok, why = probe_passes(ArmCounts(0.0, 20, 1, 200, 2), DEFAULT_DECISIONS)
    assert ok and "canary 1/20 failed against stable 2/200" in why


def test_a_weight_at_or_below_the_probe_weight_resumes_directly():
    plane, _ = make(probe_weight=60)
    rolled_back_then_resolved(plane)
    state = plane.get("chat")
    assert (state.effective_weight, state.probe_weight_after) == (50.0, None)


def test_an_operators_weight_change_ends_the_probe():
    plane, probes = make()
    rolled_back_then_resolved(plane)
    plane.set_route("chat", weight=10)
    serve(probes, Arm.CANARY, 40, failures=40)
    state = plane.get("chat")
    assert (state.effective_weight, state.probe_weight_after, state.rolled_back) == (10.0, None, False)


def test_a_probe_survives_a_restart(tmp_path):
    state_file = tmp_path / "state.json"
    plane, _ = make(state_file)
    rolled_back_then_resolved(plane)
    assert json.loads(state_file.read_text())["routes"]["chat"]["probe_weight_after"] == 50.0
    plane, probes = make(state_file)
    assert (plane.get("chat").effective_weight, plane.get("chat").probe_weight_after) == (5.0, 50.0)
    serve(probes, Arm.STABLE, 100)
    serve(probes, Arm.CANARY, 20)
    assert plane.get("chat").effective_weight == 50.0


def test_an_operators_resume_is_not_a_probe():
    plane, _ = make()
    plane.rollback("chat", "admin")
    assert plane.resume("chat").effective_weight == 50.0
