"""Progressive rollouts (proxy/control/rollout.py, rollout_gate.py) with an injected clock:
the ramp climbs while the canary is healthy, holds on low traffic, stalls, rolls back a
worse canary at once, refuses the last move without non-inferiority, leaves cold loads
out, yields to an alert, the breaker or an operator, pauses and resumes, and survives a
restart with its evidence."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from proxy.config import parse_config
from proxy.control.plane import ControlPlane, RouteError
from proxy.control.rollout import Rollouts
from proxy.control.rollout_state import Phase
from proxy.control.routing import Decision, RouteTable, bucket, choose_arm
from proxy.dataplane.instrument import RequestRecord
from proxy.metrics import Arm, ErrorType, ProxyMetrics
from tests.conftest import FakeClock

ROUTE = {"stable": "qwen3:32b", "canary": "qwen3:32b-ft-v2", "canary_weight": 0}
FAST = {"steps": [1, 5, 20, 50], "interval": "1m", "min_requests": 100}


class Rig:
    """A control plane, its rollouts, and a traffic source that routes like the proxy."""

    def __init__(self, tmp_path: Path, rollout: dict[str, Any] | None = None, **top: Any) -> None:
        self.state_file = tmp_path / "state.json"
        self.settings = {"routes": {"chat": dict(ROUTE, rollout=dict(FAST, **(rollout or {})))},
                         "state_file": str(self.state_file), **top}
        self.wall, self.mono = FakeClock(1_800_000_000.0), FakeClock(100.0)
        self.notes: list[dict[str, Any]] = []
        self.rng = random.Random(7)
        self.restart()

    def restart(self) -> None:
        config = parse_config(self.settings, environ={})
        self.plane = ControlPlane(config, RouteTable(config), ProxyMetrics(), clock=self.wall)
        self.rollouts = Rollouts(self.plane, self.plane.metrics, lambda: self.plane.config.decisions,
                                 notify=self.notes.append, clock=self.wall, monotonic=self.mono,
                                 new_salt=lambda: f"{self.rng.getrandbits(64):016x}")  # seeded: tests repeat
        self.rollouts.tick()  # the first tick after a start counts no time

    @property
    def rollout(self):
        return self.plane.rollouts["chat"]

    @property
    def state(self):
        return self.plane.get("chat")

    def serve(self, seconds: float, rps: float, *, canary_fail: float = 0.0, stable_fail: float = 0.0,
              canary_ttft: float = 0.2, stable_ttft: float = 0.2, cold: float = 0.0, tick: float = 1.0,
              canary_regen: float = 0.0, stable_regen: float = 0.0, canary_negative: float = 0.0,
              stable_negative: float = 0.0, rated: float = 0.0) -> None:
        """Sessions arrive at ``rps`` and are routed by the plane's current state; the
        rollouts tick every ``tick`` seconds of fake time."""
        for _ in range(int(seconds / tick)):
            for _ in range(int(rps * tick)):
                state = self.state
                arm = choose_arm(state, f"s{self.rng.randrange(10**9)}")
                canary = arm == Arm.CANARY
                failed = self.rng.random() < (canary_fail if canary else stable_fail)
                rec = RequestRecord("/api/chat", route="chat", arm=arm,
                                    error_type=ErrorType.UPSTREAM_5XX if failed else ErrorType.NONE)
                if not failed:
                    if self.rng.random() < cold:
                        rec.load_wait = True
                    else:
                        rec.ttft = canary_ttft if canary else stable_ttft
                rec.chat = True
                rec.regenerated = self.rng.random() < (canary_regen if canary else stable_regen)
                if not failed and self.rng.random() < rated:
                    negative = self.rng.random() < (canary_negative if canary else stable_negative)
                    self.rollouts.rated("chat", arm, "negative" if negative else "positive", None)
                self.rollouts.observe(Decision("chat", arm, state.canary if canary else state.stable, "u"), rec)
            self.wall.advance(tick)
            self.mono.advance(tick)
            self.rollouts.tick()

    def weights(self) -> list[float]:
        """The weights the ramp went through: each step left, then 100 % at promotion."""
        return [h["weight"] for h in self.rollout.history if h["event"] in ("step", "promoted")]


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_a_healthy_canary_climbs_every_step_and_is_promoted(rig):
    rig.rollouts.start("chat")
    assert (rig.state.effective_weight, rig.rollout.phase) == (1.0, Phase.PROGRESSING)
    rig.serve(60 * 30, 20, canary_fail=0.005, stable_fail=0.005)
    assert rig.weights() == [1, 5, 20, 50, 100]
    assert rig.rollout.phase == Phase.SUCCEEDED
    assert (rig.state.stable, rig.state.canary, rig.state.effective_weight) == ("qwen3:32b-ft-v2", None, 0.0)
    assert [n["event"] for n in rig.notes] == ["started", "step", "step", "step", "step", "succeeded"]
    assert all(n["text"] and n["route"] == "chat" for n in rig.notes)
    changes = rig.plane.metrics.registry.get_sample_value
    assert changes("ollama_proxy_route_changes_total", {"route": "chat", "reason": "rollout_step"}) == 5
    assert changes("ollama_proxy_route_changes_total", {"route": "chat", "reason": "breaker"}) == 0


def test_no_session_goes_back_to_stable_during_a_successful_ramp(rig):
    rig.rollouts.start("chat")
    sessions = [f"user-{i}" for i in range(5000)]
    seen_canary: set[str] = set()
    while rig.rollout.phase == Phase.PROGRESSING and rig.state.canary:
        arms = {s: choose_arm(rig.state, s) for s in sessions}
        assert not {s for s in seen_canary if arms[s] != Arm.CANARY}, "a session went back to stable"
        seen_canary |= {s for s, arm in arms.items() if arm == Arm.CANARY}
        rig.serve(30, 20)
    assert len(seen_canary) > 2000  # at 50 % about half of them


def test_each_rollout_has_its_own_salt_so_other_users_go_first(rig):
    rig.rollouts.start("chat")
    first = rig.state.salt
    rig.rollouts.abort("chat")
    rig.plane.resume("chat")
    rig.rollouts.start("chat")
    assert first and rig.state.salt and rig.state.salt != first
    early = lambda salt: {s for s in (f"u{i}" for i in range(2000)) if bucket("chat", s, salt) < 5}  # noqa: E731
    assert len(early(first) & early(rig.state.salt)) < 20  # about 5 % of 5 %


def test_low_traffic_holds_the_step_and_says_how_many_requests_it_still_needs(rig):
    rig.rollouts.start("chat")
    rig.serve(120, 5)  # 1 % of 5/s: about 6 canary requests in two minutes
    assert rig.rollout.step == 0 and rig.rollout.phase in (Phase.PROGRESSING, Phase.STALLED)
    assert rig.rollout.need["canary_requests"] >= 80
    assert "more canary requests" in rig.rollout.reason


def test_a_step_that_would_take_longer_than_stall_after_is_stalled_then_recovers(tmp_path):
    rig = Rig(tmp_path, {"stall_after": "10m"})
    rig.rollouts.start("chat")
    rig.serve(120, 2)  # 0.02 canary req/s: 100 requests take over an hour
    assert rig.rollout.phase == Phase.STALLED and "stalled" in rig.rollout.reason
    assert rig.plane.metrics.registry.get_sample_value("ollama_proxy_rollout_phase",
                                                       {"route": "chat", "phase": "stalled"}) == 1
    rig.serve(120, 300)  # traffic comes back
    assert rig.rollout.phase == Phase.PROGRESSING and rig.rollout.step >= 1


def test_a_canary_that_fails_much_more_is_rolled_back_within_its_step(rig):
    rig.rollouts.start("chat")
    rig.serve(60 * 3, 100)
    assert rig.rollout.step >= 1
    rig.serve(60, 100, canary_fail=0.5, stable_fail=0.01)
    assert rig.rollout.phase == Phase.FAILED and rig.state.rolled_back
    assert rig.state.reason == "rollout" and "failure_ratio" in rig.rollout.reason
    assert rig.notes[-1]["event"] == "failed" and "ROLLED BACK" in rig.notes[-1]["text"]
    # resume after a failed rollout restores the weight from before it, not the ramp
    assert rig.plane.resume("chat").effective_weight == 0.0 and rig.state.salt == ""


def test_the_last_move_needs_non_inferiority_not_just_time(tmp_path):
    # A canary failing 2 % against stable's 1 %: too mild for the sequential test (rate
    # ratio 5: below its crossover, about 2.5, its log-likelihood drifts down), but never
    # shown within 1 point of stable, so it holds at 50 %.
    rig = Rig(tmp_path, {"min_requests": 30, "checks": {"failure_ratio": {"max": None, "max_over_stable": 0.01}}})
    rig.rollouts.start("chat")
    rig.serve(60 * 12, 10, canary_fail=0.02, stable_fail=0.01)
    assert (rig.rollout.step, rig.state.effective_weight, rig.state.rolled_back) == (3, 50.0, False)
    assert rig.rollout.ni_looks >= 2  # one look per interval, each at a smaller share of alpha
    value = rig.plane.metrics.registry.get_sample_value
    assert (value("ollama_proxy_rollout_analyses_total", {"route": "chat", "check": "failure_ratio",
                                                          "result": "inconclusive"}) or 0) \
        + (value("ollama_proxy_rollout_analyses_total", {"route": "chat", "check": "failure_ratio",
                                                         "result": "worse"}) or 0) >= 2
    assert value("ollama_proxy_rollout_analyses_total", {"route": "chat", "check": "failure_ratio",
                                                         "result": "non_inferior"}) is None


def test_non_inferiority_looks_spend_alpha_in_shares_that_sum_to_it():
    from proxy.control.rollout_gate import look_alpha
    assert look_alpha(0.025, 1) == pytest.approx(0.025 * 6 / 3.14159265 ** 2)
    assert sum(look_alpha(0.025, k) for k in range(1, 100_000)) == pytest.approx(0.025, rel=1e-4)


def test_cold_loads_are_left_out_of_the_latency_check(tmp_path):
    rig = Rig(tmp_path, {"checks": {"ttft_over_slo": {"slo": 2.5, "max_over_stable": 0.05}}})
    rig.rollouts.start("chat")
    rig.serve(60 * 30, 20, cold=0.2)
    total = rig.rollout.total
    assert total.canary.load_waits > 0 and total.canary.slow == 0
    assert rig.rollout.phase == Phase.SUCCEEDED


def test_a_canary_slow_to_its_first_token_is_rolled_back(tmp_path):
    rig = Rig(tmp_path, {"checks": {"ttft_over_slo": {"slo": 2.5, "max_over_stable": 0.05}}})
    rig.rollouts.start("chat")
    rig.serve(60 * 3, 20)
    rig.serve(120, 20, canary_ttft=4.0)
    assert rig.rollout.phase == Phase.FAILED and "ttft_over_slo" in rig.rollout.reason


@pytest.mark.parametrize("how", ["alert", "breaker", "admin"])
def test_an_external_rollback_aborts_the_rollout_and_keeps_its_reason(rig, how):
    rig.rollouts.start("chat")
    rig.serve(60 * 3, 20)
    reason = {"alert": "alert:OllamaCanaryErrorRateHigh", "breaker": "breaker", "admin": "admin"}[how]
    rig.plane.rollback("chat", reason)
    rig.serve(10, 20)
    assert rig.rollout.phase == Phase.FAILED and rig.state.reason == reason
    assert rig.rollout.reason == f"rolled back: {reason}"
    assert [n["event"] for n in rig.notes][-1] == "failed"  # announced though the rollout did not do it
    assert f"rolled back: {reason}" in rig.notes[-1]["text"]
    count = len(rig.notes)
    rig.serve(10, 20)
    assert len(rig.notes) == count  # once


def test_while_a_rollout_runs_it_owns_the_weight(tmp_path):
    rig = Rig(tmp_path)
    rig.rollouts.start("chat")
    with pytest.raises(RouteError) as info:
        rig.plane.set_route("chat", weight=30)
    assert info.value.status == 409 and "rollout" in info.value.message
    # an edited canary_weight in the file is recorded, not applied
    old = rig.plane.config
    rig.settings["routes"]["chat"]["canary_weight"] = 40
    new = parse_config(rig.settings, environ={})
    rig.plane.apply_config(new, old)
    view = rig.plane.describe(rig.state)
    assert (view["effective_weight"], view["configured_weight"]) == (1.0, 40)


def test_pause_holds_and_resume_goes_on(rig):
    rig.rollouts.start("chat")
    rig.rollouts.pause("chat")
    rig.serve(60 * 5, 20)
    assert rig.rollout.step == 0 and rig.rollout.phase == Phase.PAUSED
    rig.rollouts.resume("chat")
    rig.serve(60 * 2, 100)
    assert rig.rollout.step >= 1


def test_a_pause_step_waits_for_resume(tmp_path):
    rig = Rig(tmp_path, {"steps": [1, 5, "pause"]})
    rig.rollouts.start("chat")
    rig.serve(60 * 10, 50)
    assert (rig.rollout.weight, rig.rollout.phase) == (5.0, Phase.PAUSED)
    assert "rollout resume" in rig.rollout.reason
    rig.rollouts.resume("chat")
    rig.serve(60 * 5, 50)
    assert rig.rollout.phase == Phase.SUCCEEDED


def test_promote_moves_one_step_and_full_goes_to_the_end(rig):
    rig.rollouts.start("chat")
    rig.rollouts.promote("chat")
    assert rig.state.effective_weight == 5.0
    rig.rollouts.promote("chat", full=True)
    assert rig.rollout.phase == Phase.SUCCEEDED and rig.state.stable == "qwen3:32b-ft-v2"


def test_hold_on_complete_waits_for_promote(tmp_path):
    rig = Rig(tmp_path, {"on_complete": "hold"})
    rig.rollouts.start("chat")
    rig.serve(60 * 30, 20)
    assert (rig.state.effective_weight, rig.rollout.phase) == (100.0, Phase.PAUSED)
    with pytest.raises(RouteError):
        rig.rollouts.resume("chat")
    rig.rollouts.promote("chat")
    assert rig.rollout.phase == Phase.SUCCEEDED


def test_a_second_start_is_refused_while_one_runs(rig):
    rig.rollouts.start("chat")
    with pytest.raises(RouteError) as info:
        rig.rollouts.start("chat")
    assert info.value.status == 409


def test_a_restart_continues_at_the_same_step_with_its_evidence_and_no_downtime_counted(rig):
    rig.rollouts.start("chat")
    rig.serve(60 * 3 + 30, 20)
    step, requests = rig.rollout.step, rig.rollout.total.canary.requests
    elapsed = rig.rollout.step_elapsed
    rig.plane.save()
    rig.wall.advance(3600)  # an hour down
    rig.mono.advance(3600)
    rig.restart()
    assert (rig.rollout.step, rig.rollout.total.canary.requests) == (step, requests)
    assert rig.rollout.step_elapsed == pytest.approx(elapsed)  # the hour down is not time at the step
    assert rig.state.salt == rig.rollout.salt and rig.state.effective_weight == rig.rollout.weight
    rig.serve(60 * 30, 20)
    assert rig.rollout.phase == Phase.SUCCEEDED


def test_an_old_state_file_without_rollouts_still_loads_its_rollback(tmp_path):
    state = {"version": 1, "routes": {"chat": {"stable": "qwen3:32b", "canary": "qwen3:32b-ft-v2", "weight": 0,
                                               "rolled_back": True, "reason": "alert:X", "since": 1.0,
                                               "weight_before_rollback": 10}},
             "acted_alerts": []}
    (tmp_path / "state.json").write_text(json.dumps(state))
    rig = Rig(tmp_path)
    assert rig.state.rolled_back and rig.state.weight_before_rollback == 10 and "chat" not in rig.plane.rollouts


def test_metrics_show_phase_step_and_checks(rig):
    rig.rollouts.start("chat")
    rig.serve(60 * 3, 20, canary_fail=0.01, stable_fail=0.01)
    value = rig.plane.metrics.registry.get_sample_value
    assert value("ollama_proxy_rollout_phase", {"route": "chat", "phase": "progressing"}) == 1
    assert value("ollama_proxy_rollout_phase", {"route": "chat", "phase": "failed"}) == 0
    assert value("ollama_proxy_rollout_step", {"route": "chat"}) == rig.rollout.step + 1
    assert value("ollama_proxy_rollout_check_value", {"route": "chat", "check": "failure_ratio", "arm": "stable"}) \
        is not None
    assert value("ollama_proxy_rollout_check_limit", {"route": "chat", "check": "failure_ratio", "limit": "max"}) \
        == 0.03


def test_a_reloaded_rollout_definition_applies_from_the_next_step_and_never_restarts_the_ramp(rig):
    rig.rollouts.start("chat")
    rig.serve(60 * 4, 100)
    assert rig.rollout.step >= 1
    done = [w for w, _ in rig.rollout.plan[:rig.rollout.step + 1]]
    old = rig.plane.config
    rig.settings["routes"]["chat"]["rollout"] = dict(FAST, steps=[1, 10, 30, 60], interval="2m")
    rig.plane.apply_config(parse_config(rig.settings, environ={}), old)
    rig.serve(60 * 30, 100)
    weights = rig.weights()
    assert weights[:len(done)] == done  # nothing done is redone
    assert [w for w in weights[len(done):] if w < 100] == [w for w in (10, 30, 60) if w > done[-1]]
    assert rig.rollout.phase == Phase.SUCCEEDED


def test_a_canary_whose_users_regenerate_more_is_rolled_back_without_any_failure(tmp_path):
    rig = Rig(tmp_path, {"checks": {"regeneration_ratio": {"max_over_stable": 0.05}}})
    rig.rollouts.start("chat")
    rig.serve(60 * 3, 100, canary_regen=0.02, stable_regen=0.02)
    assert rig.rollout.step >= 1 and rig.rollout.phase == Phase.PROGRESSING
    rig.serve(60 * 5, 100, canary_regen=0.4, stable_regen=0.02)
    assert rig.rollout.phase == Phase.FAILED and "regeneration_ratio" in rig.rollout.reason
    assert rig.rollout.total.canary.failures == 0


def test_negative_ratings_roll_back_and_a_changed_rating_counts_once(tmp_path):
    rig = Rig(tmp_path, {"checks": {"negative_feedback": {"max_over_stable": 0.05}}})
    rig.rollouts.start("chat")
    rig.rollouts.rated("chat", "canary", "negative", None)
    rig.rollouts.rated("chat", "canary", "positive", "negative")  # the user changed their mind
    rig.serve(1, 1)
    assert (rig.rollout.total.canary.ratings, rig.rollout.total.canary.negative) == (1, 0)
    rig.serve(60 * 8, 100, rated=0.3, canary_negative=0.6, stable_negative=0.1)
    assert rig.rollout.phase == Phase.FAILED and "negative_feedback" in rig.rollout.reason


def test_healthy_quality_signals_let_the_ramp_complete(tmp_path):
    rig = Rig(tmp_path, {"checks": {"regeneration_ratio": {"max_over_stable": 0.05},
                                    "negative_feedback": {"max_over_stable": 0.1}}})
    rig.rollouts.start("chat")
    rig.serve(60 * 40, 100, canary_regen=0.03, stable_regen=0.03, rated=0.3, canary_negative=0.1,
              stable_negative=0.1)
    assert rig.rollout.phase == Phase.SUCCEEDED
