"""The decisions simulation (bench/decisions_sim.py) evaluates the rollback alerts with its own
transcription of Prometheus: rate() with its extrapolation, the recording rules, the alert
expressions and the alert state machine (``for``, ``keep_firing_for``). Its figures mean
something only if that transcription is Prometheus, so here the real promtool evaluates
the same seeded series and must agree at every evaluation: every recorded canary value bit
for bit, every alert's firing state.

The bench itself (numpy) is outside ``make test``; this checks its plain-Python reference
(bench/sim_prom.py, no numpy), which the bench checks its vectorised evaluator against on
every run. With numpy installed it also checks the vectorised one here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.binaries import require_binary

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # sim_vec imports sim_prom by name
    spec.loader.exec_module(module)
    return module


sp = _load("sim_prom")

EVAL_MS = 15_000
MINUTES = 45
EVALS = MINUTES * 4 + 1

# The production rule (with a short keep_firing_for, so that it resolves within the series)
# and a candidate of the comparative form, loose enough to fire on this traffic.
RULES = [
    sp.CurrentRule(keep_firing_s=300),
    sp.ComparativeRule(k=3, m=0.5, rr=2.0, margin=0.01, for_s=60, keep_firing_s=0, stable_floor=0.005),
]


def _series(seed: int, canary_rps: float, stable_p: float = 0.01) -> "sp.Series":
    # 15 minutes healthy, 15 minutes with the canary failing 12 %, 15 minutes healthy again.
    return sp.seeded_series(seed, MINUTES, 15, canary_rps, 0.1, [(0, stable_p), (15, 0.12), (30, stable_p)], stable_p)


# The third: a stable that hardly fails, so that the candidate's clamp_min on stable's ratio acts.
@pytest.mark.parametrize("seed, canary_rps, stable_p", [(7, 1.0, 0.01), (11, 0.3, 0.01), (5, 0.5, 0.002)])
def test_reference_evaluator_matches_promtool(seed, canary_rps, stable_p):
    promtool = require_binary("promtool")
    series = _series(seed, canary_rps, stable_p)
    values, states = sp.evaluate(series, RULES, EVAL_MS, EVALS)
    for state in states:  # the series exercises both outcomes of each rule
        assert sp.FIRING in state and state[0] == sp.INACTIVE
    result = sp.run_promtool(*sp.promtool_files(series, RULES, EVAL_MS, EVALS, values, states), binary=promtool,
                             timeout=60)
    assert result.ok, result.output[-4000:]


def test_rate_extrapolation_by_hand():
    # 20 samples 15 s apart, 5 s after the evaluation grid: the window [t-300, t] holds 285 s of
    # samples, extrapolated by 5 s at the start and 10 s at the end: rate = increase / 285.
    samples = [(5_000 + 15_000 * k, float(3 * k)) for k in range(40)]
    t = 600_000
    inside = [v for ts, v in samples if t - 300_000 <= ts <= t]
    assert len(inside) == 20
    assert sp.prom_rate(samples, t) == pytest.approx((inside[-1] - inside[0]) / 285)
    # a counter born at 0 inside the window is not extrapolated below its zero point
    young = [(0, 0.0), (15_000, 6.0), (30_000, 12.0)]
    assert sp.prom_rate(young, 30_000) == pytest.approx(12.0 / 300)
    assert sp.prom_rate(young[:1], 30_000) is None


def test_alert_state_machine_by_hand():
    # for 30s at 15s evaluations: firing on the third consecutive true evaluation; keep_firing_for
    # 30s holds it through two false evaluations and resolves it on the third.
    conditions = [False, True, True, True, False, False, False, True]
    states = sp.alert_states(conditions, 15_000, 30, 30)
    assert states == ["inactive", "pending", "pending", "firing", "firing", "firing", "inactive", "pending"]


def test_vectorised_evaluator_matches_reference():
    import numpy as np  # in the test extra: a missing numpy fails, never skips
    sv = _load("sim_vec")
    series = _series(7, 1.0)
    values, states = sp.evaluate(series, RULES, EVAL_MS, EVALS)
    scrapes = len(series.counters[("canary", False)])
    plan = sv.Plan(scrapes, EVALS, 15, 15, 0.0)
    counters = {key: np.asarray(v, dtype=float)[None, :] for key, v in series.counters.items()}
    rec = plan.recorded(counters)
    for i, v in enumerate(values):
        for name in ("requests", "failed", "ratio"):
            for arm in sp.ARMS:
                ref, got = getattr(v, name)[arm], getattr(rec, name)[arm][0, i]
                if ref is None:
                    assert not plan.valid[i]
                else:
                    assert ref == got or (ref != ref and got != got), (name, arm, i)
    for rule, state in zip(RULES, states):
        first = sv.first_firing(sv.condition(rule, rec), sv.for_evals(rule.for_s, 15))[0]
        assert first == state.index(sp.FIRING)
