"""Simulation of the rollback decisions (issue 16): false rollbacks of a healthy canary within
24 h and time to roll back a broken one, for the production alert, candidate alert rules
and the breaker's sequential test, on synthetic traffic. Seeded; not part of `make test`.

    .venv/bin/python bench/decisions_sim.py --docs docs/decisions.md   # full run, about 5 minutes on 2 cores
    .venv/bin/python bench/decisions_sim.py --quick                    # smoke run, under a minute

Needs numpy (``.venv/bin/pip install numpy``; the ``bench`` extra) and, for the promtool
check, promtool on PATH. What it does, in order:

1. checks itself: the vectorised rule evaluator (bench/sim_vec.py) against the plain-Python
   one (bench/sim_prom.py), both against promtool on whole seeded days (every recorded
   value bit for bit, every alert state at every evaluation), and the vectorised
   sequential test against CanarySPRT fed request by request;
2. healthy cells, both arms failing alike at p ∈ {1, 2, 3, 5} % with the canary at
   λ ∈ {0.1, 0.5, 1, 5} requests/s and stable at (1 − w)/w times that (w = 10 %): false
   rollbacks within 24 h of the production alert, of a grid of candidate rules (the
   canary's failures in the window at least k, its expected failures at stable's ratio
   at least m, its ratio above RR × stable's + margin, for F), and of the sequential test
   over a grid of (rate ratio, floor), its α set by the simulation; Poisson traffic, and
   sticky sessions that cluster failures;
3. picks the candidate rule and the breaker settings that meet the targets (false
   rollback within 24 h ≤ 1 % in every cell, as the 95 % upper confidence bound; a 10 %
   canary against 1 % stable rolled back by the alert within 15 minutes at 0.5 canary
   requests/s; a 50 % canary tripped by the breaker within 1 minute at 1 request/s; each
   in at least 99 % of runs), then measures the choice again on fresh healthy days;
4. times to roll back canaries failing 5×, 10× and 50 % against 1 % stable (and 50 %
   against a stable failing 0.1 %);
5. prints the tables and, with ``--docs``, writes them into docs/decisions.md.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sim_breaker as sb  # noqa: E402
import sim_prom as sp  # noqa: E402
import sim_traffic as st  # noqa: E402
import sim_vec as sv  # noqa: E402
from proxy.control.decisions import binomial_tail  # noqa: E402

PS = (0.01, 0.02, 0.03, 0.05)
LAMBDAS = (0.1, 0.5, 1.0, 5.0)
CELLS = tuple(product(PS, LAMBDAS))  # (p, canary req/s)
TARGET_FALSE = 0.01
TARGET_SHARE = 0.99  # of runs that must meet a time target
ALERT_LIMIT_S = 900  # the 10 % canary at 0.5 req/s, by the alert
BREAKER_LIMIT_S = 60  # the 50 % canary at 1 req/s, by the breaker
BROKEN = ((0.05, "5× (5 %)"), (0.10, "10× (10 %)"), (0.50, "50 %"))
STABLE_P = 0.01
QUIET_STABLE_P = 0.001  # a stable that hardly fails: the clamp on its ratio matters

# Candidate rule grid (b); k is applied afterwards, from the per-day statistics.
GRID_RR = (2.0, 3.0, 4.0)
GRID_MARGIN = (0.0, 0.01, 0.02, 0.03, 0.05)
GRID_FOR = (0, 60, 120, 180, 240, 300, 420)
GRID_M = (0.5, 1.0)  # the target canary (0.5 req/s against 1 %) expects 1.5 failures a window: m must stay below
GRID_K = tuple(range(3, 16))
STABLE_FLOOR = 0.005  # stable's ratio taken as at least this (clamp_min), below every simulated p

# Breaker grid (c): α is then the largest that meets the false-trip target.
BREAKER_RR = (2.0, 3.0, 4.0, 5.0, 8.0)
BREAKER_FLOOR = (None, 0.0, -2.0, -4.6)


def _config_default() -> tuple[float, float, float | None]:
    """(rate_ratio, alpha, floor): proxy/config.py's BreakerConfig defaults, for comparison."""
    try:
        from proxy.config import BreakerConfig
        cfg = BreakerConfig()
        return float(cfg.rate_ratio), float(cfg.alpha), cfg.floor
    except (ImportError, AttributeError, TypeError):
        return 3.0, 0.01, -4.6  # the defaults when this was written


CONFIG_DEFAULT = _config_default()
README_WINDOW = dict(window=60, min_requests=20, failure_ratio=0.2, stable_margin=0.05)


@dataclass(frozen=True)
class Settings:
    weight: float
    scrape_s: int
    eval_s: int
    offset_s: float
    alert_days: int
    sticky_days: int
    breaker_days: int
    window_days: int
    runs: int
    promtool_days: int
    sticky: tuple[tuple[str, st.Sticky], ...]
    seed: int
    workers: int
    warm_s: int = 1800
    horizon_s: int = 6 * 3600
    healthy_before_s: int = 3600

    @property
    def bins(self) -> int:
        return st.DAY_S // self.scrape_s


# --- statistics ----------------------------------------------------------------------------

def upper_bound(events: int, n: int, confidence: float = 0.95) -> float:
    """Clopper–Pearson one-sided upper confidence bound for a binomial proportion."""
    if n == 0:
        return 1.0
    if events >= n:
        return 1.0
    lo, hi = events / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        # P(X <= events | mid) = 1 - P(X >= events + 1)
        if 1.0 - binomial_tail(events + 1, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def allowed_events(n: int) -> int:
    """The most false rollbacks in n days whose 95 % upper bound is still ≤ the target; with too
    few days for any (a --quick run), the most whose estimate is ≤ the target."""
    x = -1
    while upper_bound(x + 1, n) <= TARGET_FALSE:
        x += 1
    return x if x >= 0 else int(TARGET_FALSE * n)


def fmt_rate(events: int, n: int) -> str:
    return f"{events / n:.3f} (≤{upper_bound(events, n):.3f})"


def fmt_time(seconds: np.ndarray, limit: float | None = None) -> str:
    finite = np.isfinite(seconds)
    if not finite.any():
        return ">6h"
    med = np.median(seconds)
    p95 = np.quantile(seconds, 0.95)

    def t(x: float) -> str:
        if not np.isfinite(x):
            return ">6h"
        return f"{x:.0f}s" if x < 120 else f"{x / 60:.1f}m"
    out = f"{t(med)} / {t(p95)}"
    if limit is not None:
        out += f" ({np.mean(seconds <= limit):.0%})"
    return out


# --- alerts: healthy days ----------------------------------------------------------------

def rule_grid() -> list[tuple[float, float, int, float]]:
    return list(product(GRID_RR, GRID_MARGIN, GRID_FOR, GRID_M))


def counters(rng: np.random.Generator, arms: st.Arms, runs: int, bins: int, scrape_s: int,
             canary_p: np.ndarray | float | None = None) -> dict[tuple[str, bool], np.ndarray]:
    out = {}
    for arm in ("canary", "stable"):
        p = arms.p(arm) if (arm == "stable" or canary_p is None) else canary_p
        n, f = st.poisson_bins(rng, runs, bins, scrape_s, arms.rate(arm), p)
        c = st.counters_from_bins(n, f)
        out[(arm, False)], out[(arm, True)] = c[False], c[True]
    return out


def sticky_counters(rng: np.random.Generator, arms: st.Arms, runs: int, s: Settings, sticky: st.Sticky):
    """Counters, failure events ``(run, time, canary?)`` and π0 per bin as RecentRequests(1000)
    would give it, for one chunk of sticky-session days."""
    out, events, requests = {}, [], {}
    for arm in ("canary", "stable"):
        n, f, frun, ftime = st.sticky_day(rng, runs, s.bins, s.scrape_s, arms.rate(arm), arms.p(arm), sticky)
        c = st.counters_from_bins(n, f)
        out[(arm, False)], out[(arm, True)] = c[False], c[True]
        events.append((frun, ftime, np.full(frun.size, arm == "canary")))
        requests[arm] = n
    recent = st.recent_share(requests["canary"], requests["stable"], 1000, s.weight)
    return out, events, recent


@dataclass
class GridStats:
    """Per healthy day: for each (rr, margin, for, m), the highest k at which the candidate
    rule would have fired (−inf: never), so that fires(k) = stat >= k."""

    best: dict[tuple[float, float, int, float], np.ndarray]
    current_fired: np.ndarray


def grid_stats(rec: sv.Recorded, s: Settings) -> GridStats:
    valid = rec.valid
    rc, rs = rec.ratio["canary"], np.maximum(rec.ratio["stable"], STABLE_FLOOR)
    with np.errstate(invalid="ignore"):
        c = np.where(valid, rec.failed["canary"] * sp.RANGE_S, -np.inf)
        e = np.where(valid, rec.requests["canary"] * rs * sp.RANGE_S, -np.inf)
    needed = {f: sv.for_evals(f, s.eval_s) for f in GRID_FOR}
    min_c = {f: sv.rolling_min(c, n) for f, n in needed.items()}
    min_e = {f: sv.rolling_min(e, n) for f, n in needed.items()}
    best = {}
    for rr, margin in product(GRID_RR, GRID_MARGIN):
        with np.errstate(invalid="ignore"):
            z = (rc > rr * rs + margin) & valid
        for f, n in needed.items():
            all_z = sv.rolling_all(z, n)
            mc = np.where(all_z, min_c[f], -np.inf)
            for m in GRID_M:
                best[(rr, margin, f, m)] = np.where(min_e[f] >= m, mc, -np.inf).max(axis=1)
    current = sv.first_firing(sv.condition(sp.CurrentRule(), rec), sv.for_evals(120, s.eval_s)) >= 0
    return GridStats(best, current)


def merge(stats: list[GridStats]) -> GridStats:
    return GridStats({key: np.concatenate([g.best[key] for g in stats]) for key in stats[0].best},
                     np.concatenate([g.current_fired for g in stats]))


def alert_cell(args: tuple) -> tuple[int, GridStats, dict[str, GridStats], dict[str, dict[str, np.ndarray]]]:
    """One healthy cell: grid statistics over Poisson days and over each level of sticky
    sessions, and on the sticky days the breaker's daily maxima (setting ``breaker``) with
    π0 from the weight and from RecentRequests(1000)."""
    index, s, seed_seq, breaker = args
    p, lam = CELLS[index]
    arms = st.Arms(lam, s.weight, p, p)
    plan = sv.Plan(s.bins + 1, s.bins + 1, s.scrape_s, s.eval_s, s.offset_s)
    rng_poisson, *rng_sticky = (np.random.default_rng(x) for x in seed_seq.spawn(1 + len(s.sticky)))
    chunk = 100
    parts = []
    for d0 in range(0, s.alert_days, chunk):
        d = min(chunk, s.alert_days - d0)
        parts.append(grid_stats(plan.recorded(counters(rng_poisson, arms, d, s.bins, s.scrape_s)), s))
    poisson = merge(parts)
    sticky, sticky_breaker = {}, {}
    for (level, model), rng in zip(s.sticky, rng_sticky):
        if not s.sticky_days:
            break
        parts, maxima = [], {"weight": [], "recent": []}
        for d0 in range(0, s.sticky_days, 20):
            d = min(20, s.sticky_days - d0)
            cnt, events, recent = sticky_counters(rng, arms, d, s, model)
            parts.append(grid_stats(plan.recorded(cnt), s))
            for exposure in maxima:
                maxima[exposure].append(sticky_breaker_maxima(events, d, s, breaker, recent if exposure == "recent" else None))
        sticky[level] = merge(parts)
        sticky_breaker[level] = {e: np.concatenate(m) for e, m in maxima.items()}
    return index, poisson, sticky, sticky_breaker


def holdout_cell(args: tuple) -> tuple[int, dict[str, np.ndarray]]:
    """One healthy cell on fresh days (not those the rule was chosen on): whether each rule fired."""
    index, s, seed_seq, rules = args
    p, lam = CELLS[index]
    arms = st.Arms(lam, s.weight, p, p)
    plan = sv.Plan(s.bins + 1, s.bins + 1, s.scrape_s, s.eval_s, s.offset_s)
    rng = np.random.default_rng(seed_seq)
    fired: dict[str, list[np.ndarray]] = {name: [] for name in rules}
    for d0 in range(0, s.alert_days, 100):
        rec = plan.recorded(counters(rng, arms, min(100, s.alert_days - d0), s.bins, s.scrape_s))
        for name, rule in rules.items():
            fired[name].append(sv.first_firing(sv.condition(rule, rec), sv.for_evals(rule.for_s, s.eval_s)) >= 0)
    return index, {name: np.concatenate(v) for name, v in fired.items()}


def run_cells(fn, jobs: list, workers: int, done) -> None:
    """``fn`` over the jobs (the costliest cells first), ``done(result)`` for each as it ends."""
    jobs = sorted(jobs, key=lambda job: -CELLS[job[0]][1] * (1 + CELLS[job[0]][0]))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for result in pool.imap_unordered(fn, jobs):
                done(result)
    else:
        for job in jobs:
            done(fn(job))


def sticky_breaker_maxima(events, runs: int, s: Settings, breaker: tuple[float, float | None],
                          recent: np.ndarray | None) -> np.ndarray:
    """The breaker's highest llr per day over the sticky failures in time order, π0 the weight
    (``recent`` None) or the share of recent requests in the failure's bin."""
    run = np.concatenate([e[0] for e in events])
    t = np.concatenate([e[1] for e in events])
    canary = np.concatenate([e[2] for e in events])
    order = np.lexsort((t, run))
    run, canary, t = run[order], canary[order], t[order]
    counts = np.bincount(run, minlength=runs)
    longest = max(int(counts.max()), 1)
    starts = np.cumsum(counts) - counts
    pos = np.arange(run.size) - starts[run]
    labels = np.zeros((runs, longest), dtype=bool)
    valid = np.zeros((runs, longest), dtype=bool)
    labels[run, pos] = canary
    valid[run, pos] = True
    if recent is None:
        share: float | np.ndarray = s.weight
    else:
        share = np.full((runs, longest), s.weight)
        share[run, pos] = recent[run, np.minimum((t // s.scrape_s).astype(np.int64), s.bins - 1)]
    return sb.sequence_maxima(labels, valid, share, [breaker])[breaker]


def fires(stats: GridStats, key: tuple[float, float, int, float], k: float) -> np.ndarray:
    return stats.best[key] >= k


# --- alerts: broken canaries ----------------------------------------------------------------

@dataclass
class Scenario:
    canary_rps: float
    canary_p: float
    warm: bool  # True: healthy for warm_s, then broken; False: deployed broken
    stable_p: float = STABLE_P

    def label(self) -> str:
        return f"{self.canary_p:.0%} at {self.canary_rps:g} req/s, {'after 30m healthy' if self.warm else 'from deploy'}"


def broken_recorded(rng: np.random.Generator, sc: Scenario, s: Settings, runs: int, after_s: int) -> tuple[sv.Recorded, float]:
    """Recorded series of a canary that breaks (at ``break_s``) and the break time."""
    before = s.warm_s // s.scrape_s if sc.warm else 0
    bins = before + after_s // s.scrape_s
    p = np.full(bins, sc.stable_p)
    p[before:] = sc.canary_p
    arms = st.Arms(sc.canary_rps, s.weight, sc.stable_p, sc.stable_p)
    plan = sv.Plan(bins + 1, bins + 1, s.scrape_s, s.eval_s, s.offset_s)
    rec = plan.recorded(counters(rng, arms, runs, bins, s.scrape_s, canary_p=p))
    break_s = before * s.scrape_s + s.offset_s  # bin `before` starts at scrape `before`
    return rec, break_s


def times_from_first(first: np.ndarray, eval_s: int, break_s: float) -> np.ndarray:
    t = np.where(first >= 0, first * eval_s - break_s, np.inf)
    return np.maximum(t, 0.0)


def grid_detection(rec: sv.Recorded, break_s: float, s: Settings) -> dict:
    """Time to fire for every grid point (rr, margin, for, m, k) on broken-canary runs."""
    valid = rec.valid
    rc, rs = rec.ratio["canary"], np.maximum(rec.ratio["stable"], STABLE_FLOOR)
    with np.errstate(invalid="ignore"):
        c = np.where(valid, rec.failed["canary"] * sp.RANGE_S, -np.inf)
        e = np.where(valid, rec.requests["canary"] * rs * sp.RANGE_S, -np.inf)
    out = {}
    for f in GRID_FOR:
        n = sv.for_evals(f, s.eval_s)
        min_c, min_e = sv.rolling_min(c, n), sv.rolling_min(e, n)
        for rr, margin in product(GRID_RR, GRID_MARGIN):
            with np.errstate(invalid="ignore"):
                all_z = sv.rolling_all((rc > rr * rs + margin) & valid, n)
            for m in GRID_M:
                base = all_z & (min_e >= m)
                for k in GRID_K:
                    ok = base & (min_c >= k)
                    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
                    out[(rr, margin, f, m, k)] = times_from_first(first, s.eval_s, break_s)
    return out


def rule_detection(rule: sp.CurrentRule | sp.ComparativeRule, rec: sv.Recorded, break_s: float, s: Settings) -> np.ndarray:
    first = sv.first_firing(sv.condition(rule, rec), sv.for_evals(rule.for_s, s.eval_s))
    return times_from_first(first, s.eval_s, break_s)


# --- self-checks -----------------------------------------------------------------------------

def self_checks(s: Settings, rng: np.random.Generator, rules: list, log) -> list[str]:
    notes = []
    # 1. vectorised evaluator against the plain-Python reference, two seeded hours per cell kind
    mismatches = 0
    compared = 0
    for lam, p, off in ((0.1, 0.05, 5.0), (0.5, 0.03, 0.0), (5.0, 0.02, 7.0)):
        arms = st.Arms(lam, s.weight, p, p)
        bins = 240
        cnt = counters(rng, arms, 2, bins, s.scrape_s)
        plan = sv.Plan(bins + 1, bins + 1, s.scrape_s, s.eval_s, off)
        rec = plan.recorded(cnt)
        for run in range(2):
            series = sp.Series({key: list(v[run]) for key, v in cnt.items()}, s.scrape_s * 1000, int(off * 1000))
            values, states = sp.evaluate(series, rules, s.eval_s * 1000, bins + 1)
            for i, v in enumerate(values):
                for name in ("requests", "failed", "ratio"):
                    for arm in ("canary", "stable"):
                        a, b = getattr(v, name)[arm], getattr(rec, name)[arm][run, i]
                        compared += 1
                        if a is None:
                            mismatches += int(bool(plan.valid[i]))
                        elif not (a == b or (math.isnan(a) and math.isnan(b))):
                            mismatches += 1
            for rule, state in zip(rules, states):
                first = sv.first_firing(sv.condition(rule, rec)[run][None], sv.for_evals(rule.for_s, s.eval_s))[0]
                ref = state.index(sp.FIRING) if sp.FIRING in state else -1
                compared += 1
                mismatches += int(first != ref)
    notes.append(f"vectorised evaluator = plain-Python reference: {compared - mismatches}/{compared} values and "
                 "first firings identical")
    log(notes[-1])
    # 2. promtool on whole seeded days
    binary = sp.promtool()
    if s.promtool_days and binary:
        ok_days, total_failures, seconds = 0, 0, 0.0
        for day in range(s.promtool_days):
            lam, p = ((0.5, 0.03), (1.0, 0.02), (0.1, 0.05))[day % 3]
            arms = st.Arms(lam, s.weight, p, p)
            cnt = counters(rng, arms, 1, s.bins, s.scrape_s)
            plan = sv.Plan(s.bins + 1, s.bins + 1, s.scrape_s, s.eval_s, 0.0)  # promtool: samples at k·interval
            rec = plan.recorded(cnt)
            states = [sp.alert_states(sv.condition(r, rec)[0], s.eval_s * 1000, r.for_s, r.keep_firing_s) for r in rules]
            values = [sp.Values(*({a: (float(getattr(rec, nm)[a][0, i]) if plan.valid[i] else None)
                                   for a in ("canary", "stable")} for nm in ("requests", "failed", "ratio")))
                      for i in range(s.bins + 1)]
            series = sp.Series({key: list(v[0]) for key, v in cnt.items()}, s.scrape_s * 1000, 0)
            t0 = time.time()
            result = sp.run_promtool(*sp.promtool_files(series, rules, s.eval_s * 1000, s.bins + 1, values, states))
            seconds += time.time() - t0
            ok_days += int(result.ok)
            total_failures += result.failures
            fired = [st_.count(sp.FIRING) for st_ in states]
            log(f"  promtool day {day + 1} (λ {lam:g}, p {p:.0%}): {'match' if result.ok else 'MISMATCH'}; "
                f"evaluations firing per rule: {fired}")
        notes.append(f"promtool {sp_version(binary)} on {s.promtool_days} seeded whole days (λ 0.5/1/0.1, "
                     f"p 3/2/5 %): {ok_days}/{s.promtool_days} days identical, every recorded canary value and "
                     f"every alert state at each of the {s.bins + 1} evaluations a day ({seconds:.0f} s)")
        if total_failures:
            notes[-1] += f"; {total_failures} mismatches"
        log(notes[-1])
    elif s.promtool_days:
        notes.append("promtool not found: evaluator not checked against it in this run")
        log(notes[-1])
    # 3. the vectorised sequential test against CanarySPRT, request by request
    bad = 0
    for rr, floor in ((3.0, -4.6), (5.0, 0.0), (2.0, None)):
        bad += sb.check_against_class(rng, s.weight, rr, floor, alpha=1e-3)
    notes.append(f"vectorised sequential test = CanarySPRT fed per request: {60 - bad}/60 streams trip at the same failure")
    log(notes[-1])
    return notes


def sp_version(binary: str) -> str:
    import subprocess
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split()[2] if out.startswith("promtool") else "?"
    except Exception:  # noqa: BLE001
        return "?"


# --- the run ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few days, few runs")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--weight", type=float, default=0.1, help="canary weight (share of requests)")
    ap.add_argument("--offset", type=float, default=5.0, help="scrape offset past the evaluation grid, s")
    ap.add_argument("--alert-days", type=int, help="healthy days per cell for the alerts (default 1000)")
    ap.add_argument("--sticky-days", type=int, help="sticky-session days per cell and level (default 200)")
    ap.add_argument("--breaker-days", type=int, help="healthy days per cell for the breaker (default 1000)")
    ap.add_argument("--window-days", type=int, help="days per cell for today's window breaker (default 40)")
    ap.add_argument("--runs", type=int, help="runs per broken-canary scenario (default 1000)")
    ap.add_argument("--promtool-days", type=int, help="whole days checked against promtool (default 2)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--docs", type=Path, help="write the results into this markdown file")
    a = ap.parse_args(argv)
    scrape_s, eval_s = sp.intervals()
    q = a.quick

    def pick(value: int | None, quick: int, full: int) -> int:
        return value if value is not None else (quick if q else full)
    s = Settings(
        weight=a.weight, scrape_s=scrape_s, eval_s=eval_s, offset_s=a.offset,
        alert_days=pick(a.alert_days, 30, 1000), sticky_days=pick(a.sticky_days, 10, 200),
        breaker_days=pick(a.breaker_days, 30, 1000), window_days=pick(a.window_days, 2, 40),
        runs=pick(a.runs, 100, 1000), promtool_days=pick(a.promtool_days, 0, 2),
        sticky=(("mild", st.Sticky(10, 100.0, scrape_s)), ("strong", st.Sticky(20, 10.0, scrape_s))),
        seed=a.seed, workers=a.workers)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    seeds = np.random.SeedSequence(s.seed).spawn(8)
    rng_check, rng_detect, rng_breaker, rng_bdetect, rng_window = (np.random.default_rng(x) for x in seeds[:5])
    cell_seeds = seeds[5].spawn(len(CELLS))
    log(f"prometheus.yml: scrape every {scrape_s}s, rules every {eval_s}s; scrape offset {s.offset_s:g}s; "
        f"weight {s.weight:g}; per cell {s.alert_days} alert days, {s.sticky_days} sticky days per level, "
        f"{s.breaker_days} breaker days; {s.runs} runs per broken canary")
    shipped = sp.production_rule()

    def norm(expr: str) -> str:  # one host: matching on (host, route) is matching on (route)
        return " ".join(expr.split()).replace("on (host, route)", "on (route)")
    if shipped and norm(shipped["expr"]) == norm(sp.CurrentRule().expr()) and shipped.get("for") == "2m":
        shipped_note = ("the production rules file's OllamaCanaryErrorRateHigh is, for one host, the rule "
                        "simulated as 'current'")
    else:
        shipped_note = ("the production rules file's OllamaCanaryErrorRateHigh differs from the rule simulated as "
                        "'current', which is the one shipped at commit bd4079d")
    log(shipped_note)

    # 1. self-checks (with a representative candidate)
    probe = sp.ComparativeRule(k=6, m=1.0, rr=2.0, margin=0.01, for_s=120, keep_firing_s=1800)
    checks = self_checks(s, rng_check, [sp.CurrentRule(), probe], log)

    # 2. the breaker on healthy days (Poisson: one walk per day serves every cell), its choice
    brk = choose_breaker(s, rng_breaker, rng_bdetect, log)
    chosen = brk["chosen"]

    # 3. alerts (and the breaker with sticky sessions) on healthy days, per cell in parallel
    jobs = [(i, s, cell_seeds[i], chosen["cfg"]) for i in range(len(CELLS))]
    poisson_stats: dict[int, GridStats] = {}
    sticky_stats: dict[int, dict[str, GridStats]] = {}
    sticky_breaker: dict[int, dict[str, dict[str, np.ndarray]]] = {}

    def collect(result) -> None:
        index, pst, sst, sbm = result
        poisson_stats[index], sticky_stats[index], sticky_breaker[index] = pst, sst, sbm
        log(f"  healthy cell p {CELLS[index][0]:.0%}, λ {CELLS[index][1]:g}: done")
    run_cells(alert_cell, jobs, s.workers, collect)
    log("healthy days: alerts done")

    # 4. the candidate rule: false-rollback bound, then the 15-minute target, then sensitivity
    select_scenarios = [Scenario(0.5, 0.10, True), Scenario(0.5, 0.10, False),
                        Scenario(0.5, 0.05, True), Scenario(1.0, 0.05, True)]
    detect = []
    for sc in select_scenarios:
        rec, break_s = broken_recorded(rng_detect, sc, s, s.runs, 1800)
        detect.append(grid_detection(rec, break_s, s))
    log("broken canaries for the grid: done")
    allowed = allowed_events(s.alert_days)
    levels = [name for name, _ in s.sticky] if s.sticky_days else []
    candidates = []
    for key in rule_grid():
        for k in GRID_K:
            false = [int(fires(poisson_stats[i], key, k).sum()) for i in range(len(CELLS))]
            if max(false) > allowed:
                continue
            sticky_false = {lv: max(int(fires(sticky_stats[i][lv], key, k).sum()) for i in range(len(CELLS)))
                            for lv in levels}
            t_target = [d[(*key, k)] for d in detect[:2]]
            met = min(float(np.mean(t <= ALERT_LIMIT_S)) for t in t_target)
            sens = float(np.mean([np.mean(d[(*key, k)] <= ALERT_LIMIT_S) for d in detect[2:]]))
            candidates.append(dict(key=key, k=k, false=false, sticky=sticky_false, met=met, sens=sens,
                                   med=float(np.median(t_target[0]))))
            break  # the smallest k that meets the false-rollback bound is the most sensitive
    feasible = [c for c in candidates if c["met"] >= TARGET_SHARE]
    mild_ok = [c for c in feasible if levels and c["sticky"][levels[0]] <= TARGET_FALSE * s.sticky_days]
    ranked = sorted(mild_ok or feasible or candidates,
                    key=lambda c: (-c["sens"], c["med"], max(c["false"]), sum(c["sticky"].values())))
    log(f"candidate rules meeting the false-rollback bound: {len(candidates)}; also the 15-minute target: "
        f"{len(feasible)}; also ≤ 1 % false with mild sticky sessions: {len(mild_ok)}")
    for c in ranked[:8]:
        log("  " + describe_candidate(c, s))
    best = ranked[0]
    rr, margin, f, m = best["key"]
    proposed = sp.ComparativeRule(k=best["k"], m=m, rr=rr, margin=margin, for_s=f, keep_firing_s=1800,
                                  stable_floor=STABLE_FLOOR)
    log(f"alert choice: {proposed.describe()}")

    # 5. both rules on fresh healthy days: the figures to report (the choice saw the others)
    holdout: dict[int, dict[str, np.ndarray]] = {}
    holdout_seeds = seeds[6].spawn(len(CELLS))
    rules = {"current": sp.CurrentRule(), "proposed": proposed}
    run_cells(holdout_cell, [(i, s, holdout_seeds[i], rules) for i in range(len(CELLS))], s.workers,
              lambda result: holdout.__setitem__(result[0], result[1]))
    worst = max(int(holdout[i]["proposed"].sum()) for i in range(len(CELLS)))
    log(f"fresh healthy days: proposed alert's worst cell {worst}/{s.alert_days}")
    fresh = sb.day_maxima(np.random.default_rng(seeds[7]),
                          np.array([lam / s.weight * p * st.DAY_S for p, lam in CELLS]), s.breaker_days, s.weight,
                          [chosen["cfg"], brk["default_cfg"]])
    log(f"fresh healthy days: breaker's worst cell {int(max((fresh[chosen['cfg']] >= chosen['h']).sum(axis=1)))}"
        f"/{s.breaker_days}")

    # 6. times to roll back, for the report
    report_rules = {"current": sp.CurrentRule(), "proposed": proposed}
    detection_rows = []
    for (p_c, name), stable_p in [*((b, STABLE_P) for b in BROKEN), (BROKEN[-1], QUIET_STABLE_P)]:
        for lam in LAMBDAS:
            for warm in (False, True):
                sc = Scenario(lam, p_c, warm, stable_p)
                rec, break_s = broken_recorded(rng_detect, sc, s, s.runs, s.horizon_s)
                row = dict(p=p_c, name=name, lam=lam, warm=warm, stable_p=stable_p)
                for label, rule in report_rules.items():
                    row[label] = rule_detection(rule, rec, break_s, s)
                times = breaker_times(rng_bdetect, s, st.Arms(lam, s.weight, p_c, stable_p), chosen["cfg"][0],
                                      chosen["cfg"][1], chosen["h"], s.runs, horizon=s.horizon_s)
                row["breaker"] = times[1] if warm else times[0]
                detection_rows.append(row)
    log("times to roll back: done")

    # 7. today's window breaker, for comparison
    window_false = {}
    for i, (p, lam) in enumerate(CELLS):
        window_false[i] = int(sb.window_breaker_day(rng_window, s.window_days, lam, lam * (1 - s.weight) / s.weight, p,
                                                    **README_WINDOW).sum())
    log("today's window breaker: done")

    elapsed = time.time() - started
    text = report(s, a, elapsed, checks, shipped_note, poisson_stats, sticky_stats, sticky_breaker, proposed,
                  candidates, feasible, ranked, brk, window_false, detection_rows, holdout, fresh)
    print(text)
    log(f"total {elapsed:.0f}s")
    if a.docs:
        a.docs.write_text(text)
        log(f"wrote {a.docs}")
    return 0


def describe_candidate(c: dict, s: Settings) -> str:
    rr, margin, f, m = c["key"]
    sticky = ", ".join(f"{lv} {n}/{s.sticky_days}" for lv, n in c["sticky"].items())
    return (f"k {c['k']:>2} m {m:g} RR {rr:g} margin {margin:g} for {f}s: 10 % at 0.5 req/s within 15m "
            f"{c['met']:.3f}, 5× within 15m {c['sens']:.3f}, median {c['med']:.0f}s, worst cell false "
            f"{max(c['false'])}/{s.alert_days}, sticky worst {sticky}")


def choose_breaker(s: Settings, rng: np.random.Generator, rng_detect: np.random.Generator, log) -> dict:
    """False trips of every (rate ratio, floor) on healthy days; for each the largest α meeting
    the bound in every cell; then the 1-minute target and the 5× canary decide."""
    configs = list(product(BREAKER_RR, BREAKER_FLOOR))
    default_cfg = (CONFIG_DEFAULT[0], CONFIG_DEFAULT[2])
    if default_cfg not in configs:
        configs.append(default_cfg)
    mean_failures = np.array([lam / s.weight * p * st.DAY_S for p, lam in CELLS])
    maxima = sb.day_maxima(rng, mean_failures, s.breaker_days, s.weight, configs)
    log("healthy days: breaker done")
    allowed = allowed_events(s.breaker_days)
    rows = []
    for cfg in configs:
        need = max(float(np.sort(row)[::-1][allowed]) for row in maxima[cfg]) + 1e-9
        alpha = nice_alpha(math.exp(-need))
        rows.append(dict(cfg=cfg, alpha=alpha, h=math.log(1 / alpha)))
    target = st.Arms(1.0, s.weight, 0.5, STABLE_P)
    five = st.Arms(1.0, s.weight, 0.05, STABLE_P)
    for row in rows:
        rr, floor = row["cfg"]
        times = breaker_times(rng_detect, s, target, rr, floor, row["h"], s.runs, horizon=1800)
        row["met"] = min(float(np.mean(t <= BREAKER_LIMIT_S)) for t in times)
        times = breaker_times(rng_detect, s, five, rr, floor, row["h"], s.runs, horizon=s.horizon_s)
        row["five_fresh"], row["five"] = (float(np.median(t)) for t in times)
    ok = [r for r in rows if r["met"] >= TARGET_SHARE]
    ranked = sorted(ok or rows, key=lambda r: (r["five"] + r["five_fresh"], -r["alpha"]))
    for r in ranked[:6]:
        log(f"  breaker RR {r['cfg'][0]:g} floor {r['cfg'][1]} α {r['alpha']:.0e}: 50 % within 1m {r['met']:.3f}, "
            f"5× median {r['five_fresh']:.0f}s from the start, {r['five']:.0f}s after 1h healthy")
    chosen = ranked[0]
    log(f"breaker choice: RR {chosen['cfg'][0]:g}, floor {chosen['cfg'][1]}, α {chosen['alpha']:.0e}")
    return dict(rows=rows, chosen=chosen, maxima=maxima, default_cfg=default_cfg,
                default_h=math.log(1 / CONFIG_DEFAULT[1]))


def nice_alpha(alpha: float) -> float:
    """Round α down to one significant digit in {1, 2, 5}."""
    if alpha <= 0:
        return 0.0
    exp = math.floor(math.log10(alpha))
    mant = alpha / 10 ** exp
    for step in (5, 2, 1):
        if mant >= step:
            return step * 10 ** exp
    return 10 ** exp


def breaker_times(rng, s: Settings, arms: st.Arms, rr: float, floor: float | None, h: float, runs: int,
                  horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Seconds to trip for a canary broken from its start, and after ``healthy_before_s`` healthy."""
    canary_rate, stable_rate = arms.canary_rps * arms.canary_p, arms.stable_rps * arms.stable_p
    fresh = sb.time_to_trip(rng, runs, canary_rate, stable_rate, s.weight, rr, floor, h, horizon)
    healthy_failures = (arms.canary_rps + arms.stable_rps) * arms.stable_p
    s0 = sb.state_after(rng, runs, healthy_failures, s.weight, rr, floor, s.healthy_before_s)
    late = sb.time_to_trip(rng, runs, canary_rate, stable_rate, s.weight, rr, floor, h, horizon, s0=s0)
    return fresh, late


# --- the report --------------------------------------------------------------------------------

def findings(s: Settings, holdout, fresh, brk, sticky_stats, sticky_breaker, proposed, detection_rows) -> list[str]:
    """Sentences computed from this run's figures (so that they stay true when the figures move)."""
    n, nb, ns = s.alert_days, s.breaker_days, s.sticky_days
    cells = range(len(CELLS))
    out = []

    def where(idx: list[int]) -> str:
        return ", ".join(f"p {CELLS[i][0]:.0%} at {CELLS[i][1]:g}/s" for i in idx)
    cur = [int(holdout[i]["current"].sum()) for i in cells]
    bad = [i for i in cells if cur[i] > 0.5 * n]
    out.append(f"The current alert rolls back a healthy canary within 24 h with probability over 1/2 in {len(bad)} of "
               f"the 16 cells ({where(bad)}), and above 1 % in {sum(c > 0.01 * n for c in cur)}.")
    prop = [int(holdout[i]["proposed"].sum()) for i in cells]
    cfg, h = brk["chosen"]["cfg"], brk["chosen"]["h"]
    brk_false = [int((fresh[cfg][i] >= h).sum()) for i in cells]
    out.append(f"The proposed alert's worst cell: {max(prop)} false rollbacks in {n} days (95 % bound "
               f"{max(upper_bound(x, n) for x in prop):.4f}); the proposed breaker's: {max(brk_false)} in {nb} "
               f"({max(upper_bound(x, nb) for x in brk_false):.4f}). Both on days the choice did not see.")
    dcfg, dh = brk["default_cfg"], brk["default_h"]
    dflt = [int((fresh[dcfg][i] >= dh).sum()) for i in cells]
    out.append(f"The sequential test at the config defaults (rate ratio {dcfg[0]:g}, α {math.exp(-dh):g}, floor "
               f"{dcfg[1]}) trips falsely within 24 h with probability up to {max(dflt) / nb:.2f}: with a floor, α "
               "is not a bound on false trips, and a busy route sees hundreds of thousands of failures a day.")
    quiet = [r for r in detection_rows if r["lam"] == 0.1 and r["stable_p"] == STABLE_P]
    never = [name for _, name in BROKEN
             if any(r["name"] == name and np.median(r["proposed"]) > ALERT_LIMIT_S for r in quiet)]
    expected = 0.1 * sp.RANGE_S * max(STABLE_P, proposed.stable_floor)
    if never and expected < proposed.m:
        out.append(f"At 0.1 canary req/s the proposed alert does not decide within 15 minutes (median) on the "
                   f"{', '.join(never)} canary: a 5m window holds about 30 canary requests, {expected:.2g} expected "
                   f"failures at stable's 1 %, under its minimum of {proposed.m:g}; it stays silent (inconclusive) "
                   "rather than guess. The breaker still decides there, on the whole stream of failures (slowly for "
                   "small effects: the table of times).")
    if ns and s.sticky:
        strong = s.sticky[-1][0]
        worst_alert = max(int(fires(sticky_stats[i][strong], (proposed.rr, proposed.margin, proposed.for_s, proposed.m),
                                    proposed.k).sum()) for i in cells)
        worst_brk = max(int((sticky_breaker[i][strong]["recent"] >= h).sum()) for i in cells)
        out.append(f"Clustered failures break every per-request decision: with {strong} sticky-session clustering the "
                   f"proposed alert rolls back falsely on up to {worst_alert}/{ns} days in a cell and the breaker "
                   f"(π0 from recent requests) on up to {worst_brk}/{ns}. Where sessions cluster failures like that, "
                   "decisions need per-session counts (a failing session counted once) or a variance inflated by "
                   "the design effect; RecentRequests fixes only the drift of the canary's share of requests.")
    return out


def cell_table(title: str, values: dict[int, str]) -> list[str]:
    lines = [f"| {title} | " + " | ".join(f"λ {lam:g}/s" for lam in LAMBDAS) + " |",
             "|---|" + "---:|" * len(LAMBDAS)]
    for p in PS:
        cells = [values[CELLS.index((p, lam))] for lam in LAMBDAS]
        lines.append(f"| p {p:.0%} | " + " | ".join(cells) + " |")
    return lines


def report(s: Settings, a, elapsed: float, checks, shipped_note, poisson_stats, sticky_stats, sticky_breaker,
           proposed: sp.ComparativeRule, candidates, feasible, ranked, brk, window_false, detection_rows,
           holdout, fresh) -> str:
    n, ns, nb = s.alert_days, s.sticky_days, s.breaker_days
    key = (proposed.rr, proposed.margin, proposed.for_s, proposed.m)
    chosen = brk["chosen"]
    cfg = chosen["cfg"]
    cells = range(len(CELLS))
    lines: list[str] = []
    w = lines.append

    def table(title: str, values: dict[int, str]) -> None:
        lines.extend(cell_table(title, values))
        w("")
    w("# Rollback decisions: simulated false rollbacks and times to roll back")
    w("")
    w("Issue 16's proof: how often each automatic rollback decision rolls back a **healthy** canary within")
    w("24 hours, and how long it takes to roll back a broken one, on synthetic traffic. Every figure below")
    w("comes from one run of `bench/decisions_sim.py` (seeded, outside `make test`):")
    w("")
    w("    .venv/bin/pip install numpy    # the bench's only extra dependency, never the proxy's")
    w("    .venv/bin/python bench/decisions_sim.py --docs docs/decisions.md" + (" --quick" if a.quick else ""))
    w("")
    w(f"This run: {elapsed / 60:.1f} minutes on {os.cpu_count()} cores ({platform.machine()}, Python "
      f"{platform.python_version()}, numpy {np.__version__}), {s.workers} worker processes, seed {s.seed}. "
      "`--quick` is a smoke run (well under a minute) with too few days for its bounds to mean anything.")
    if a.quick:
        w("")
        w("**This file comes from a `--quick` run: its figures are not the record.**")
    w("")
    w("## Targets, and whether the recommended settings meet them")
    w("")
    prop_false = [int(holdout[i]["proposed"].sum()) for i in cells]  # fresh days, not those of the choice
    brk_false = [int((fresh[cfg][i] >= chosen["h"]).sum()) for i in cells]
    target_rows = [r for r in detection_rows if r["p"] == 0.10 and r["lam"] == 0.5 and r["stable_p"] == STABLE_P]
    alert_share = min(float(np.mean(r["proposed"] <= ALERT_LIMIT_S)) for r in target_rows)
    brk_rows = [r for r in detection_rows if r["p"] == 0.50 and r["lam"] == 1.0 and r["stable_p"] == STABLE_P]
    brk_share = min(float(np.mean(r["breaker"] <= BREAKER_LIMIT_S)) for r in brk_rows)
    w("| target | proposed alert | proposed breaker |")
    w("|---|---|---|")
    w(f"| false rollback within 24 h ≤ 1 % in every healthy cell (95 % upper bound, worst cell; fresh days) | "
      f"{max(upper_bound(x, n) for x in prop_false):.4f} ({max(prop_false)}/{n} days) | "
      f"{max(upper_bound(x, nb) for x in brk_false):.4f} ({max(brk_false)}/{nb} days) |")
    w(f"| 10 % canary against 1 % stable at 0.5 canary req/s rolled back within 15 min | "
      f"{alert_share:.1%} of runs (worse of from deploy / after 30 m healthy) | – |")
    w(f"| 50 % canary at 1 canary req/s tripped within 1 min | – | {brk_share:.1%} of runs (worse of from "
      "start / after 1 h healthy) |")
    w("")
    w("## What the figures say")
    w("")
    for line in findings(s, holdout, fresh, brk, sticky_stats, sticky_breaker, proposed, detection_rows):
        w(f"- {line}")
    w("")
    w("## Set-up")
    w("")
    w(f"- **Cells**: both arms healthy and failing alike, each request independently with probability "
      f"p ∈ {{1, 2, 3, 5}} %; the canary gets λ ∈ {{0.1, 0.5, 1, 5}} requests/s and stable {(1 - s.weight) / s.weight:g}× "
      f"that (a {s.weight:.0%} weight; `--weight`). Poisson arrivals, drawn as counts per scrape interval (the "
      "sum of per-second Poisson counts, and all the counters can show), failures binomial.")
    w(f"- **Prometheus as shipped** (`provisioning/prometheus/prometheus.yml`): the counters "
      f"(`ollama_proxy_route_requests_total`, a success and a failure series per arm, existing from the proxy's "
      f"start at 0) scraped every {s.scrape_s} s, {s.offset_s:g} s after the rule evaluations, which run every "
      f"{s.eval_s} s; `rate()` over 5m with Prometheus' extrapolation; the production recording rules; the alert "
      "expression; Prometheus' alert state machine (`for`). A day is a canary's first 24 h with its counters "
      "starting at 0; a false rollback is the alert *firing* (Alertmanager's `group_wait`, 5 s for rollback "
      "alerts, and the webhook come after).")
    w("- **The evaluator is checked**: the vectorised evaluator (`bench/sim_vec.py`) against the plain-Python "
      "one (`bench/sim_prom.py`, a transcription of Prometheus' `extrapolatedRate` and alert state machine), and "
      "both against promtool, bit for bit (`tests/test_decisions_sim.py` runs the promtool check on a seeded "
      "45 minutes in `make test`). This run:")
    for note in checks:
        w(f"  - {note};")
    w(f"  - {shipped_note}.")
    w(f"- **The breaker**: `CanarySPRT` of `proxy/control/decisions.py` with `RoutingWeight({s.weight:g})`, fed "
      "request by request. Its llr moves only at failures, so a day is a walk over whose failure each failure "
      "was (the canary's with probability w when both arms fail alike); the floor (CUSUM) is Lindley's "
      "recursion in closed form, one running minimum, vectorised over days (`bench/sim_breaker.py`). Under "
      "this H0 a cell's false-trip probability depends on the cell only through its failures per day, "
      "λ/w·p·86 400 (so one walk per simulated day serves all 16 cells).")
    w(f"- **Sticky sessions** (the second scenario): routing by session; sessions of a geometric number of "
      f"requests, one every {s.scrape_s} s, each with its own failure propensity q ~ Beta(pφ, (1 − p)φ) (mean p, "
      "intra-session correlation 1/(φ + 1)); failures cluster by session, and the canary's share of the "
      "requests drifts from the weight. Two levels: "
      + "; ".join(f"*{name}*, {m.session_requests:g} requests a session, φ {m.phi:g} (correlation "
                  f"{1 / (m.phi + 1):.2f})" for name, m in s.sticky)
      + ". The breaker there is shown with π0 = the weight and with π0 from `RecentRequests(1000)`, which "
      "`decisions.py` provides for sticky routing.")
    w(f"- **Sizes**: per cell {n} days for the alerts, {nb} for the breaker, {ns} per sticky level, "
      f"{s.window_days} for today's window breaker; {s.runs} runs per broken-canary scenario. A false-rollback "
      "figure is `estimate (95 % upper confidence bound)`, Clopper–Pearson; a setting meets the target when the "
      f"bound is ≤ 0.01 in every cell (with {n} days: at most {allowed_events(n)} false days in a cell).")
    w("")
    w("## False rollback of a healthy canary within 24 h")
    w("")
    w("The settings were chosen on one set of simulated days; the figures here come from a second, fresh set "
      "of the same size (the set used for the choice would flatter the winner).")
    w("")
    w("**Current alert** (`OllamaCanaryErrorRateHigh` as shipped: the canary's 5m failure ratio > 5 % and > "
      f"stable's + 2 points, `for: 2m`), {n} days per cell:")
    w("")
    table("current alert", {i: fmt_rate(int(holdout[i]["current"].sum()), n) for i in cells})
    w(f"**Proposed alert** ({proposed.describe()}; the expression is below), {n} days per cell:")
    w("")
    table("proposed alert", {i: fmt_rate(prop_false[i], n) for i in cells})
    w(f"**Proposed breaker** (`rate_ratio` {cfg[0]:g}, `alpha` {chosen['alpha']:.0e}, `floor` {cfg[1]}), "
      f"{nb} days per cell:")
    w("")
    table("breaker (proposed)", {i: fmt_rate(brk_false[i], nb) for i in cells})
    dcfg, dh = brk["default_cfg"], brk["default_h"]
    w(f"For comparison, the sequential test at `proxy/config.py`'s defaults at the time of this run "
      f"(`rate_ratio` {dcfg[0]:g}, `alpha` {math.exp(-dh):g}, `floor` {dcfg[1]}), {nb} days, and today's window "
      f"breaker with the README's settings (`window` 60, `min_requests` 20, `failure_ratio` 0.2, "
      f"`stable_margin` 0.05; one-second resolution), {s.window_days} days:")
    w("")
    table("SPRT at the config defaults", {i: fmt_rate(int((fresh[dcfg][i] >= dh).sum()), nb) for i in cells})
    table("window breaker (README)", {i: fmt_rate(window_false[i], s.window_days) for i in cells})
    if ns:
        for level, model in s.sticky:
            w(f"**Sticky sessions, {level}** ({model.session_requests:g} requests a session, φ {model.phi:g}), "
              f"{ns} days per cell:")
            w("")
            table(f"current alert, {level}",
                  {i: fmt_rate(int(sticky_stats[i][level].current_fired.sum()), ns) for i in cells})
            table(f"proposed alert, {level}",
                  {i: fmt_rate(int(fires(sticky_stats[i][level], key, proposed.k).sum()), ns) for i in cells})
            table(f"breaker, π0 = weight, {level}",
                  {i: fmt_rate(int((sticky_breaker[i][level]["weight"] >= chosen["h"]).sum()), ns) for i in cells})
            table(f"breaker, π0 = RecentRequests, {level}",
                  {i: fmt_rate(int((sticky_breaker[i][level]["recent"] >= chosen["h"]).sum()), ns) for i in cells})
    w("## Time to roll back a broken canary")
    w("")
    w("Stable fails 1 % (and, last, 0.1 %: a stable that hardly fails); the canary fails 5 % (5×), 10 % (10×) or "
      "50 %, either from its deploy (both arms' counters and "
      "the breaker's test start with it) or after a healthy period: 30 minutes for the alerts (full windows), 1 hour for "
      "the breaker (its llr has settled near the floor). Each cell: `median / 95th percentile (share within the "
      f"target)`, the target 15 minutes for the alerts and 1 minute for the breaker; '>6h' is beyond the "
      f"{s.horizon_s // 3600} h simulated. Alert times are to *firing*; Alertmanager's `group_wait` (5 s) and the "
      "webhook come on top.")
    w("")
    w("| canary | stable | λ (req/s) | from | current alert | proposed alert | proposed breaker |")
    w("|---|---:|---:|---|---:|---:|---:|")
    for row in detection_rows:
        start = "healthy period" if row["warm"] else "deploy"
        w(f"| {row['name']} | {row['stable_p']:.1%} | {row['lam']:g} | {start} | {fmt_time(row['current'], ALERT_LIMIT_S)} | "
          f"{fmt_time(row['proposed'], ALERT_LIMIT_S)} | {fmt_time(row['breaker'], BREAKER_LIMIT_S)} |")
    w("")
    w("## Recommended settings")
    w("")
    w("### Alert `OllamaCanaryErrorRateHigh`")
    w("")
    w("Over the production recording rules (5m windows; `rate × 300` is the window's count as `increase(…[5m])` "
      "gives it: the count in the 20 scrapes of the window times 300/285):")
    w("")
    w("```yaml")
    w("- alert: OllamaCanaryErrorRateHigh")
    w("  expr: |-")
    for line in proposed.expr().splitlines():
        w(f"    {line}")
    w(f"  for: {sp._duration(proposed.for_s)}")
    w("  keep_firing_for: 30m")
    w("```")
    w("")
    w(f"In words: at least {proposed.k:g} canary failures in the window; at least {proposed.m:g} failures expected "
      "from the canary's requests at stable's ratio (below that the window cannot tell and the rule stays "
      f"silent: inconclusive, never a pass); the canary's ratio above {proposed.rr:g} × stable's + "
      f"{proposed.margin:g}; all for {sp._duration(proposed.for_s)}. Stable's ratio counts as at least "
      f"{proposed.stable_floor:g} (`clamp_min`): without it, next to a stable failing 0.1 % a canary at 0.5 req/s "
      "would expect 0.15 failures a window, under the minimum whatever the canary does, and the rule could not "
      "fire; with it, the last rows of the table above. Every simulated healthy cell has p ≥ 1 %, so the "
      "false-rollback figures hardly depend on it. Its labels and `$value` (the canary's ratio) are the current "
      "rule's.")
    w("")
    w(f"How it was chosen: a grid of RR ∈ {GRID_RR}, margin ∈ {GRID_MARGIN}, for ∈ {GRID_FOR} s, "
      f"m ∈ {GRID_M} and k ∈ {GRID_K[0]}…{GRID_K[-1]} (m ≤ 1: the target canary, 0.5 req/s against 1 %, expects "
      "1.5 failures a window). For each (RR, margin, for, m) the smallest k that meets "
      f"the false-rollback bound in every cell ({len(candidates)} settings); of those, the ones that roll back "
      f"the 10 % canary at 0.5 req/s within 15 minutes in ≥ 99 % of runs, from deploy and after 30 minutes "
      f"healthy ({len(feasible)}); preferring those also ≤ 1 % false with mild sticky sessions; ranked by "
      "how often they roll back a 5× canary (0.5 and 1 req/s, after 30 minutes healthy) within 15 minutes. The "
      "best of them:")
    w("")
    w("Figures on the days of the choice:")
    w("")
    w("| k | m | RR | margin | for | 10 % at 0.5/s within 15 min | 5× within 15 min | median (10 %) | worst cell false | "
      + " | ".join(f"sticky {lv}, worst cell" for lv, _ in s.sticky) + " |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(s.sticky))
    for c in ranked[:8]:
        rr, margin, f, m = c["key"]
        w(f"| {c['k']} | {m:g} | {rr:g} | {margin:g} | {sp._duration(f)} | {c['met']:.1%} | {c['sens']:.1%} | "
          f"{c['med']:.0f} s | {max(c['false'])}/{n} | "
          + " | ".join(f"{c['sticky'].get(lv, 0)}/{ns}" for lv, _ in s.sticky) + " |")
    w("")
    w("A route at 100 % (no stable traffic) has no stable ratio, so this expression is silent there. Keep an "
      "absolute branch for that case, e.g. `or (<ratio>{arm=\"canary\"} > 0.05 and on (host, route) "
      f"<failed>{{arm=\"canary\"}} * 300 >= {proposed.k:g} unless on (host, route) <requests>{{arm=\"stable\"}} > 0)` "
      "(not simulated: every simulated cell has stable traffic).")
    w("")
    w("### Breaker")
    w("")
    w("```yaml")
    w(f"breaker: {{rate_ratio: {cfg[0]:g}, alpha: {chosen['alpha']:.0e}, floor: {cfg[1]}}}")
    w("```")
    w("")
    w(f"Threshold log(1/α) = {chosen['h']:.2f}. With a floor the test is a CUSUM: α is then not its false-alarm "
      "probability (Ville's bound holds without a floor only), it sets the threshold, which the simulation "
      "chose so that the busiest cell (5 % failures at 5 canary req/s, "
      f"{5 / s.weight * 0.05 * st.DAY_S:,.0f} failures a day) stays within the bound. Without a floor (`null`) the "
      "bound holds by Ville's inequality in every cell, but a long healthy history drives the llr so low that a "
      "canary breaking later is caught late (the table: a 50 % canary after an hour healthy).")
    w("")
    w(f"How it was chosen: for each rate ratio in {BREAKER_RR} and floor in {BREAKER_FLOOR}, the largest α "
      "(1, 2 or 5 × 10^k) meeting the false-trip bound in every cell; of those, the ones tripping on the 50 % "
      "canary at 1 req/s within 1 minute in ≥ 99 % of runs, from its start and after an hour healthy; ranked by "
      "the median times to trip on a 5× canary at 1 req/s (from its start plus after an hour healthy).")
    w("")
    w("| rate_ratio | floor | α | log(1/α) | 50 % at 1/s within 1 min | 5× at 1/s, median from start | "
      "5× at 1/s, median after 1 h healthy |")
    w("|---:|---:|---:|---:|---:|---:|---:|")

    def secs(x: float) -> str:
        return f"{x:.0f} s" if np.isfinite(x) else f"> {s.horizon_s // 3600} h"
    for r in sorted(brk["rows"], key=lambda r: (r["cfg"][0], -(r["cfg"][1] if r["cfg"][1] is not None else 99))):
        mark = " **(proposed)**" if r is chosen else ""
        w(f"| {r['cfg'][0]:g}{mark} | {r['cfg'][1]} | {r['alpha']:.0e} | {r['h']:.1f} | {r['met']:.1%} | "
          f"{secs(r['five_fresh'])} | {secs(r['five'])} |")
    w("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
