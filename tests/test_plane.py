"""The routing control plane (proxy/control/plane.py) without a server: every change is
validated, counted with a bounded reason, shown in the route gauges and saved before the
caller hears of it; a restart and a config reload keep what operators did. The admin API
and the CLI in front of it are in test_admin.py and test_control_plane.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config import parse_config
from proxy.control.plane import MAX_REMEMBERED_ALERTS, ControlPlane, RouteError, reason_label
from proxy.control.routing import RouteTable
from proxy.metrics import ROUTE_CHANGE_REASONS, ProxyMetrics

ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}


def make_plane(routes: dict[str, Any] | None = None, state_file: Path | None = None) -> ControlPlane:
    settings: dict[str, Any] = {"routes": {"chat": dict(ROUTE)} if routes is None else routes}
    if state_file is not None:
        settings["state_file"] = str(state_file)
    config = parse_config(settings, environ={})
    return ControlPlane(config, RouteTable(config), ProxyMetrics())


def sample(plane: ControlPlane, name: str, **labels: str) -> float | None:
    return plane.metrics.registry.get_sample_value(name, labels)


def changes(plane: ControlPlane, reason: str, route: str = "chat") -> float | None:
    return sample(plane, "ollama_proxy_route_changes_total", route=route, reason=reason)


# --- operations -----------------------------------------------------------------------------

def test_every_route_series_starts_at_zero_so_the_first_change_shows_in_rate():
    plane = make_plane()
    assert {reason: changes(plane, reason) for reason in ROUTE_CHANGE_REASONS} == dict.fromkeys(
        ROUTE_CHANGE_REASONS, 0.0)
    assert sample(plane, "ollama_proxy_route_canary_weight", route="chat") == 50
    assert sample(plane, "ollama_proxy_route_rolled_back", route="chat") == 0
    assert sample(plane, "ollama_proxy_route_info", route="chat", stable="qwen3:8b", canary="qwen3:8b-ft") == 1


def test_rollback_sends_everything_to_stable_once_and_keeps_free_text_out_of_labels():
    plane = make_plane()
    state, changed = plane.rollback("chat", "admin:latency doubled")
    assert changed and state.rolled_back and state.effective_weight == 0
    assert (state.reason, state.weight_before_rollback) == ("admin:latency doubled", 50)
    assert sample(plane, "ollama_proxy_route_canary_weight", route="chat") == 0
    assert sample(plane, "ollama_proxy_route_rolled_back", route="chat") == 1
    assert changes(plane, "admin") == 1
    again, changed = plane.rollback("chat", "breaker")
    assert not changed and again.reason == "admin:latency doubled"  # the first reason stands
    assert changes(plane, "breaker") == 0


@pytest.mark.parametrize("reason, label", [
    ("admin:bad vibes", "admin"), ("admin", "admin"), ("alert:OllamaCanaryErrorRateHigh", "alert:OllamaCanaryErrorRateHigh"),
    ("reconcile:OllamaCanaryErrorRateHigh", "reconcile"), ("breaker", "breaker"),
])
def test_the_reason_label_is_bounded(reason, label):
    assert reason_label(reason) == label


def test_resume_restores_the_weight_from_before_the_rollback():
    plane = make_plane()
    plane.rollback("chat", "admin")
    state = plane.resume("chat")
    assert not state.rolled_back and state.weight == 50 and state.weight_before_rollback is None
    assert sample(plane, "ollama_proxy_route_rolled_back", route="chat") == 0
    assert changes(plane, "resume") == 1
    with pytest.raises(RouteError) as err:
        plane.resume("chat")
    assert err.value.status == 409 and "not rolled back" in err.value.message


def test_a_weight_set_while_rolled_back_waits_for_resume():
    plane = make_plane()
    plane.rollback("chat", "admin")
    state = plane.set_route("chat", weight=10)
    assert state.rolled_back and state.effective_weight == 0 and state.weight_before_rollback == 10
    assert sample(plane, "ollama_proxy_route_canary_weight", route="chat") == 0
    assert plane.resume("chat").weight == 10


def test_changes_that_would_route_wrongly_are_refused_and_change_nothing():
    plane = make_plane({"chat": dict(ROUTE), "solo": {"stable": "llama3.2"}})
    refusals = [
        (lambda: plane.set_route("chat", weight=120), 400, "between 0 and 100"),
        (lambda: plane.set_route("solo", weight=5), 400, "has no canary"),
        (lambda: plane.rollback("nope", "admin"), 404, "known: chat, solo"),
        (lambda: plane.promote("solo"), 409, "no canary to promote"),
    ]
    for attempt, status, fragment in refusals:
        with pytest.raises(RouteError) as err:
            attempt()
        assert err.value.status == status and fragment in err.value.message
    assert plane.get("chat").weight == 50 and changes(plane, "admin") == 0


def test_removing_the_canary_sends_everything_to_stable():
    plane = make_plane()
    state = plane.set_route("chat", canary=None)
    assert state.canary is None and state.effective_weight == 0


def test_promote_makes_the_canary_stable_and_drops_the_old_route_info():
    plane = make_plane()
    state = plane.promote("chat")
    assert (state.stable, state.canary, state.weight) == ("qwen3:8b-ft", None, 0)
    assert sample(plane, "ollama_proxy_route_info", route="chat", stable="qwen3:8b", canary="qwen3:8b-ft") is None
    assert sample(plane, "ollama_proxy_route_info", route="chat", stable="qwen3:8b-ft", canary="") == 1
    assert changes(plane, "promote") == 1


def test_an_alert_instance_is_remembered_and_the_memory_is_bounded():
    plane = make_plane()
    assert plane.remember_alert("f0@t") is True
    assert plane.remember_alert("f0@t") is False  # a retry or the HA twin
    for i in range(1, MAX_REMEMBERED_ALERTS + 1):
        plane.remember_alert(f"f{i}@t")
    assert len(plane.acted_alerts) == MAX_REMEMBERED_ALERTS
    assert plane.remember_alert("f0@t") is True  # the oldest was forgotten first
    assert plane.remember_alert(f"f{MAX_REMEMBERED_ALERTS}@t") is False


# --- persistence ----------------------------------------------------------------------------

def test_every_change_is_saved_and_a_restart_restores_it(tmp_path):
    path = tmp_path / "state.json"
    plane = make_plane(state_file=path)
    plane.set_route("chat", weight=30)
    plane.remember_alert("c4ab@2026-01-01T00:00:00Z")
    plane.rollback("chat", "alert:OllamaCanaryErrorRateHigh")
    saved = json.loads(path.read_text())
    assert saved["routes"]["chat"]["rolled_back"] is True
    assert saved["acted_alerts"] == ["c4ab@2026-01-01T00:00:00Z"]
    restarted = make_plane(state_file=path)
    state = restarted.get("chat")
    assert state.rolled_back and state.reason == "alert:OllamaCanaryErrorRateHigh"
    assert state.weight_before_rollback == 30
    assert sample(restarted, "ollama_proxy_route_rolled_back", route="chat") == 1
    assert restarted.remember_alert("c4ab@2026-01-01T00:00:00Z") is False  # not acted on twice
    assert restarted.resume("chat").weight == 30


def test_a_config_edited_while_down_wins_but_a_rollback_stays(tmp_path):
    path = tmp_path / "state.json"
    make_plane(state_file=path).rollback("chat", "admin")
    edited = {"chat": {"stable": "new-stable", "canary": "new-canary", "canary_weight": 30}}
    state = make_plane(edited, state_file=path).get("chat")
    assert (state.stable, state.canary) == ("new-stable", "new-canary")
    assert state.rolled_back and state.effective_weight == 0 and state.weight_before_rollback == 30


def test_a_route_the_config_no_longer_defines_is_not_restored(tmp_path, caplog):
    path = tmp_path / "state.json"
    make_plane({"chat": dict(ROUTE), "old": dict(ROUTE)}, state_file=path).rollback("old", "admin")
    plane = make_plane(state_file=path)
    assert set(plane.routes.routes) == {"chat"}
    assert "state file has route 'old', which the config no longer defines" in caplog.text


@pytest.mark.parametrize("fields", [
    {"weight": "abc"}, {"weight": 500}, {"weight": None}, {"stable": 5}, {"rolled_back": "false"},
    {"since": "yesterday"}, {"canary": 7}, {"weight_before_rollback": -1}, {"config": []},
])
def test_a_state_file_with_untrustworthy_values_is_set_aside_for_the_config(tmp_path, fields):
    path = tmp_path / "state.json"
    make_plane(state_file=path).rollback("chat", "admin")
    saved = json.loads(path.read_text())
    saved["routes"]["chat"].update(fields)
    path.write_text(json.dumps(saved))
    plane = make_plane(state_file=path)
    state = plane.get("chat")
    assert (state.rolled_back, state.weight, state.stable) == (False, 50, "qwen3:8b")  # the config
    assert sample(plane, "ollama_proxy_state_errors_total", kind="corrupt") == 1
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_acted_alerts_that_are_not_strings_set_the_state_aside(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "routes": {}, "acted_alerts": [1, 2]}))
    plane = make_plane(state_file=path)
    assert sample(plane, "ollama_proxy_state_errors_total", kind="corrupt") == 1


def test_a_state_file_that_cannot_be_written_leaves_the_change_live_and_is_counted(tmp_path, caplog):
    (tmp_path / "not-a-directory").write_text("")
    plane = make_plane(state_file=tmp_path / "not-a-directory" / "state.json")
    state, changed = plane.rollback("chat", "admin")
    assert changed and state.rolled_back
    assert sample(plane, "ollama_proxy_state_errors_total", kind="write") == 1
    assert "will not survive a restart" in caplog.text


# --- config reload --------------------------------------------------------------------------

def test_a_reloaded_config_changes_only_the_routes_it_changed():
    old = parse_config({"routes": {"chat": dict(ROUTE), "other": dict(ROUTE), "gone": dict(ROUTE)}}, environ={})
    plane = ControlPlane(old, RouteTable(old), ProxyMetrics())
    plane.rollback("chat", "admin")
    plane.set_route("other", weight=12)  # an operator's change, config untouched
    new = parse_config({"routes": {"chat": dict(ROUTE, canary_weight=70), "other": dict(ROUTE),
                                   "fresh": {"stable": "llama3.2"}}}, environ={})
    assert sorted(plane.apply_config(new, old)) == ["chat", "fresh", "gone"]
    chat = plane.get("chat")
    assert chat.rolled_back and chat.effective_weight == 0 and chat.weight_before_rollback == 70
    assert plane.get("other").weight == 12
    assert "gone" not in plane.routes.routes
    assert sample(plane, "ollama_proxy_route_canary_weight", route="gone") is None
    assert sample(plane, "ollama_proxy_route_rolled_back", route="gone") is None
    assert sample(plane, "ollama_proxy_route_info", route="gone", stable="qwen3:8b", canary="qwen3:8b-ft") is None
    assert changes(plane, "config", route="fresh") == 1
    assert sample(plane, "ollama_proxy_route_canary_weight", route="fresh") == 0
