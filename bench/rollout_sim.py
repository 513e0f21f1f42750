"""Simulate the rollout gate (proxy/control/rollout.py) on synthetic traffic: how often a
healthy canary is rolled back during a whole ramp, how often a worse one is promoted, and
how long each takes. Seeded; outside ``make test``; numpy for the draws (the bench's extra).

    .venv/bin/python bench/rollout_sim.py --docs docs/rollout-gate.md    # about 3 minutes on 2 cores

Each run drives the real ``Rollouts`` controller with injected clocks: every simulated
second, Poisson arrivals at ``rate`` requests/s are split by the current weight, each arm's
failures are binomial, and the counts go to the controller as the request path would hand
them over; then one tick. The ramp is the issue's: 1 → 5 → 20 → 50 → 100 %, 5 minutes and
100 canary requests a step, failure check max 3 %, max_over_stable 2 points.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import parse_config  # noqa: E402
from proxy.control.plane import ControlPlane  # noqa: E402
from proxy.control.rollout import Rollouts  # noqa: E402
from proxy.control.rollout_state import Evidence, Phase  # noqa: E402
from proxy.control.routing import RouteTable  # noqa: E402
from proxy.metrics import ProxyMetrics  # noqa: E402

ROLLOUT = {"steps": [1, 5, 20, 50], "interval": "5m", "min_requests": 100,
           "checks": {"failure_ratio": {"max": 0.03, "max_over_stable": 0.02}}}
HORIZON_S = 6 * 3600  # a run that has not ended after 6 simulated hours counts as "held"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def one_run(rng: np.random.Generator, rate: float, p_stable: float, p_canary: float, workdir: str) -> tuple[str, float]:
    config = parse_config({"routes": {"chat": {"stable": "s", "canary": "c", "rollout": ROLLOUT}}}, environ={})
    wall, mono = Clock(1.8e9), Clock(0.0)
    plane = ControlPlane(config, RouteTable(config), ProxyMetrics(), clock=wall)
    rollouts = Rollouts(plane, plane.metrics, lambda: config.decisions, clock=wall, monotonic=mono)
    rollouts.tick()
    rollouts.start("chat")
    t = 0
    while t < HORIZON_S:
        rollout = plane.rollouts["chat"]
        if not rollout.active:
            return ("promoted" if rollout.phase == Phase.SUCCEEDED else "rolled back"), t
        weight = plane.get("chat").effective_weight / 100
        n = rng.poisson(rate)
        c_n = rng.binomial(n, weight)
        s_n = n - c_n
        ev = Evidence()
        ev.canary.requests, ev.canary.failures = int(c_n), int(rng.binomial(c_n, p_canary))
        ev.stable.requests, ev.stable.failures = int(s_n), int(rng.binomial(s_n, p_stable))
        rollouts.pending["chat"] = ev
        wall.now += 1
        mono.now += 1
        t += 1
        rollouts.tick()
    return "held", float(t)


def cell(seed: int, runs: int, rate: float, p_stable: float, p_canary: float) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    outcomes, times = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(runs):
            outcome, t = one_run(rng, rate, p_stable, p_canary, workdir)
            outcomes.append(outcome)
            times.append(t)
    times_arr = np.array(times)
    out: dict[str, object] = {"runs": runs}
    for kind in ("promoted", "rolled back", "held"):
        mine = times_arr[[o == kind for o in outcomes]]
        out[kind] = len(mine)
        out[f"{kind} median min"] = float(np.median(mine) / 60) if len(mine) else None
    return out


def upper95(k: int, n: int) -> float:
    """Clopper–Pearson upper bound (one-sided 95 %) by bisection on the binomial tail."""
    from proxy.control.decisions import binomial_tail
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1.0 - binomial_tail(k + 1, n, mid) > 0.05:  # P(X <= k) at mid
            lo = mid
        else:
            hi = mid
    return hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--docs", type=Path)
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # a run logs every step and rollback
    started = time.monotonic()
    healthy = [(rate, p) for rate in (2.0, 10.0) for p in (0.01, 0.03)]
    worse = [(10.0, 0.01, pc) for pc in (0.03, 0.05, 0.10, 0.50)]
    lines = ["# The rollout gate, simulated", "",
             "From one run of `bench/rollout_sim.py` (seeded; outside `make test`):", "",
             f"    .venv/bin/python bench/rollout_sim.py --runs {a.runs} --seed {a.seed} --docs docs/rollout-gate.md",
             "", __doc__.split("\n\n", 2)[2].strip(), "",
             "## A healthy canary (both arms fail alike)", "",
             "| total req/s | failures | promoted | rolled back (95 % bound) | held 6 h | median time to promotion |",
             "|---:|---:|---:|---:|---:|---:|"]
    seed = a.seed
    for rate, p in healthy:
        seed += 1
        r = cell(seed, a.runs, rate, p, p)
        lines.append(f"| {rate:g} | {p:.0%} | {r['promoted']}/{a.runs} | {r['rolled back']}/{a.runs} "
                     f"(≤{upper95(int(r['rolled back']), a.runs):.3f}) | {r['held']} | "
                     f"{_m(r['promoted median min'])} |")
        print(lines[-1], flush=True)
    lines += ["", "## A worse canary (stable fails 1 %)", "",
              "| total req/s | canary failures | rolled back | promoted (95 % bound) | held 6 h | median time to rollback |",
              "|---:|---:|---:|---:|---:|---:|"]
    for rate, ps, pc in worse:
        seed += 1
        r = cell(seed, a.runs, rate, ps, pc)
        lines.append(f"| {rate:g} | {pc:.0%} | {r['rolled back']}/{a.runs} | {r['promoted']}/{a.runs} "
                     f"(≤{upper95(int(r['promoted']), a.runs):.3f}) | {r['held']} | "
                     f"{_m(r['rolled back median min'])} |")
        print(lines[-1], flush=True)
    lines += ["", f"This run: {time.monotonic() - started:.0f} s, {a.runs} runs per cell, seed {a.seed}.", ""]
    if a.docs:
        a.docs.write_text("\n".join(lines))
    return 0


def _m(minutes: object) -> str:
    return "-" if minutes is None else f"{minutes:.1f} min"


if __name__ == "__main__":
    sys.exit(main())
