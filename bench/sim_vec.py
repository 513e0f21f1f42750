"""The rollback alert's Prometheus evaluation, vectorised with numpy over many simulated days.

The same operations as ``bench/sim_prom.py`` (the plain-Python reference, itself checked
against promtool), in the same order, over arrays shaped ``(runs, scrapes)``: counters
scraped every ``scrape_s`` at ``offset_s`` past the evaluation grid, ``rate()`` over
``range_s`` at evaluations every ``eval_s``, the recording rules, the rule conditions,
and the first evaluation at which an alert fires (its condition true for ``for``).
Counters here never reset, so ``rate()``'s reset correction is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim_prom import RANGE_S, ComparativeRule, CurrentRule


@dataclass
class Recorded:
    """The recording rules per arm, each ``(runs, evals)``; ``valid`` marks evaluations where
    the series exist (two samples or more in the range)."""

    requests: dict[str, np.ndarray]
    failed: dict[str, np.ndarray]
    ratio: dict[str, np.ndarray]
    valid: np.ndarray  # (evals,)


class Plan:
    """Which scrapes each evaluation's range holds, and the extrapolation constants that
    depend only on timestamps (the same for every run and series)."""

    def __init__(self, scrapes: int, evals: int, scrape_s: int = 15, eval_s: int = 15, offset_s: float = 5.0,
                 range_s: int = RANGE_S, left_open: bool = False) -> None:
        self.scrape_ms, self.eval_ms, self.range_ms = scrape_s * 1000, eval_s * 1000, range_s * 1000
        self.offset_ms = int(round(offset_s * 1000))
        self.scrapes, self.evals, self.eval_s = scrapes, evals, eval_s
        t_scrape = self.offset_ms + self.scrape_ms * np.arange(scrapes, dtype=np.int64)
        t_eval = self.eval_ms * np.arange(evals, dtype=np.int64)
        start = t_eval - self.range_ms
        first = np.searchsorted(t_scrape, start, side="right" if left_open else "left")
        last = np.searchsorted(t_scrape, t_eval, side="right") - 1
        self.valid = (last - first) >= 1
        first = np.where(self.valid, first, 0)
        last = np.where(self.valid, last, 1)
        self.first, self.last = first, last
        ts_first, ts_last = t_scrape[first], t_scrape[last]
        self.to_start = (ts_first - start) / 1000
        self.to_end = (t_eval - ts_last) / 1000
        self.sampled = (ts_last - ts_first) / 1000
        self.average = self.sampled / (last - first)
        self.threshold = self.average * 1.1
        self.range_s_f = self.range_ms / 1000

    def rate(self, counter: np.ndarray) -> np.ndarray:
        """``rate(x[range])`` at every evaluation for counters ``(runs, scrapes)``."""
        first = counter[..., self.first]
        result = counter[..., self.last] - first
        with np.errstate(divide="ignore", invalid="ignore"):
            to_zero = self.sampled * (first / result)
        to_start = np.where((result > 0) & (first >= 0) & (to_zero < self.to_start), to_zero, self.to_start)
        extrapolate = self.sampled + np.where(to_start < self.threshold, to_start, self.average / 2)
        extrapolate = extrapolate + np.where(self.to_end < self.threshold, self.to_end, self.average / 2)
        factor = extrapolate / self.sampled
        factor = factor / self.range_s_f
        return result * factor

    def recorded(self, counters: dict[tuple[str, bool], np.ndarray]) -> Recorded:
        """The three recording rules from the counters ``{(arm, failed): (runs, scrapes)}``."""
        requests, failed, ratio = {}, {}, {}
        for arm in ("canary", "stable"):
            ok, bad = self.rate(counters[(arm, False)]), self.rate(counters[(arm, True)])
            total = ok + bad
            requests[arm], failed[arm] = total, bad
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio[arm] = bad / total
        return Recorded(requests, failed, ratio, self.valid)


def condition(rule: CurrentRule | ComparativeRule, r: Recorded) -> np.ndarray:
    """The rule's expression at every evaluation: a boolean ``(runs, evals)``."""
    rc, rs = r.ratio["canary"], r.ratio["stable"]
    with np.errstate(invalid="ignore"):
        if isinstance(rule, CurrentRule):
            stable = np.where(r.requests["stable"] >= rule.min_rate, rs, 0 * rc)
            out = (rc > rule.threshold) & (r.requests["canary"] >= rule.min_rate) & ((rc - stable) > rule.margin)
        else:
            if rule.stable_floor > 0:
                rs = np.maximum(rs, rule.stable_floor)  # NaN stays NaN, as with Go's math.Max
            out = ((r.failed["canary"] * rule.range_s >= rule.k)
                   & (r.requests["canary"] * rs * rule.range_s >= rule.m)
                   & (rc > rule.rr * rs + rule.margin))
    return out & r.valid


def for_evals(for_s: int, eval_s: int) -> int:
    """Consecutive true evaluations an alert needs to fire: t − activeAt >= for."""
    return -(-for_s // eval_s) + 1


def first_firing(cond: np.ndarray, needed: int) -> np.ndarray:
    """Index of the first evaluation at which the alert fires (its condition true at this
    and the ``needed − 1`` evaluations before), ``-1`` where it never does."""
    cs = np.zeros(cond.shape[:-1] + (cond.shape[-1] + 1,), dtype=np.int32)
    np.cumsum(cond, axis=-1, out=cs[..., 1:])
    full = (cs[..., needed:] - cs[..., :-needed]) == needed  # window ending at index needed-1+j
    hit = full.any(axis=-1)
    return np.where(hit, full.argmax(axis=-1) + needed - 1, -1)


def rolling_all(cond: np.ndarray, needed: int) -> np.ndarray:
    """``out[..., i]``: the condition held at evaluations ``i − needed + 1 .. i`` (False for
    ``i < needed − 1``)."""
    cs = np.zeros(cond.shape[:-1] + (cond.shape[-1] + 1,), dtype=np.int32)
    np.cumsum(cond, axis=-1, out=cs[..., 1:])
    out = np.zeros(cond.shape, dtype=bool)
    out[..., needed - 1:] = (cs[..., needed:] - cs[..., :-needed]) == needed
    return out


def rolling_min(x: np.ndarray, needed: int) -> np.ndarray:
    """``out[..., i] = min(x[..., i − needed + 1 .. i])`` (``-inf`` for ``i < needed − 1``;
    NaN counts as ``-inf``): a sparse table, log2(needed) passes."""
    base = np.where(np.isnan(x), -np.inf, x)
    levels = {1: base}
    span = 1
    while span * 2 <= needed:
        prev = levels[span]
        nxt = np.full_like(prev, -np.inf)
        nxt[..., span:] = np.minimum(prev[..., span:], prev[..., :-span])
        levels[span * 2] = nxt
        span *= 2
    top = levels[span]
    if span == needed:
        return top
    shift = needed - span
    out = np.full_like(top, -np.inf)
    out[..., shift:] = np.minimum(top[..., shift:], top[..., :-shift])
    return out
