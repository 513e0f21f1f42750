"""The breaker's sequential test (proxy.control.decisions.CanarySPRT), vectorised with numpy.

CanarySPRT fed request by request changes its log-likelihood ratio only at failures: by
``up`` for a canary failure and ``down`` for a stable one (both fixed by π0 = the route's
weight and the rate ratio RR), clamped from below at ``floor``, and trips the first time
it reaches ``log(1/α)``. So its path over a day is a function of the sequence of whose
failure each failure was, and the clamped path has a closed form (Lindley's recursion):
with ``C_n`` the unclamped sum of the first n increments and the path started at ``s0``,

    S_n = C_n + max(s0, floor − min(C_1, ..., C_n)),

one cumulative sum and one running minimum (``np.minimum.accumulate``), no loop over
requests. :func:`check_against_class` compares it with the class itself.

Under H0 (both arms failing alike, independent weighted routing) every failure is the
canary's with probability exactly the weight, whatever the failure rate and traffic: a
healthy day is N failures with N ~ Poisson(all requests × p), each the canary's with
probability w. The chance of a false trip within 24 h therefore depends on the cell only
through its expected failures per day, and one walk per simulated day serves every cell
(each cell reads it up to its own N).
"""

from __future__ import annotations

import math

import numpy as np

from proxy.control.decisions import CanarySPRT, RoutingWeight


def increments(rate_ratio: float, share: float) -> tuple[float, float]:
    """``(up, down)``: what a canary failure and a stable failure add to the llr, from the class."""
    return CanarySPRT(rate_ratio=rate_ratio).steps(share)


def clamped(c: np.ndarray, floor: float | None, s0: float | np.ndarray = 0.0) -> np.ndarray:
    """The floored path from the unclamped cumulative sums ``c`` (last axis = failures)."""
    s0 = np.asarray(s0, dtype=np.float64)[..., None] if np.ndim(s0) else s0
    if floor is None:
        return c + s0
    running_min = np.minimum.accumulate(c, axis=-1)
    return c + np.maximum(s0, floor - running_min)


def day_maxima(rng: np.random.Generator, mean_failures: np.ndarray, days: int, share: float,
               configs: list[tuple[float, float | None]], chunk: int = 16) -> dict[tuple[float, float | None], np.ndarray]:
    """Healthy days (Poisson scenario): for each ``(rate_ratio, floor)``, the highest llr each
    cell reaches within a day, shape ``(cells, days)``; a day trips at α iff it is
    ``>= log(1/α)``. ``mean_failures``: expected failures per day of each cell, both arms."""
    cells = len(mean_failures)
    out = {cfg: np.empty((cells, days)) for cfg in configs}
    rates = sorted({rr for rr, _ in configs})
    for d0 in range(0, days, chunk):
        d = min(chunk, days - d0)
        n_fail = rng.poisson(mean_failures[:, None], size=(cells, d))
        longest = int(n_fail.max())
        if longest == 0:
            for cfg in configs:
                out[cfg][:, d0:d0 + d] = 0.0
            continue
        k = np.cumsum(rng.random((d, longest), dtype=np.float32) < share, axis=1, dtype=np.int32)
        n = np.arange(1, longest + 1, dtype=np.float64)
        for rr in rates:
            up, down = increments(rr, share)
            c = k * (up - down) + n * down
            running_min = np.minimum.accumulate(c, axis=1)
            for floor in [f for r, f in configs if r == rr]:
                path = c if floor is None else c + np.maximum(0.0, floor - running_min)
                best = np.maximum.accumulate(path, axis=1)
                idx = np.maximum(n_fail - 1, 0)
                got = np.take_along_axis(best, idx.T, axis=1).T  # (cells, d)
                out[(rr, floor)][:, d0:d0 + d] = np.where(n_fail > 0, np.maximum(got, 0.0), 0.0)
    return out


def increments_at(rate_ratio: float, share: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`increments` for an array of π0 (CanarySPRT.steps, vectorised)."""
    alt = rate_ratio * share / (1.0 + (rate_ratio - 1.0) * share)
    return np.log(alt / share), np.log((1.0 - alt) / (1.0 - share))


def sequence_maxima(labels: np.ndarray, valid: np.ndarray, share: float | np.ndarray,
                    configs: list[tuple[float, float | None]]) -> dict[tuple[float, float | None], np.ndarray]:
    """As :func:`day_maxima` for given failure sequences ``labels`` (runs × failures, True =
    the canary's; ``valid`` masks padding) scored at π0 ``share`` (a scalar, or one per
    failure): the sticky scenario, whose failures are not independent."""
    out = {}
    for rr, floor in configs:
        up, down = increments_at(rr, np.asarray(share, dtype=np.float64))
        inc = np.where(valid, np.where(labels, up, down), 0.0)
        c = np.cumsum(inc, axis=1)
        path = clamped(c, floor)
        out[(rr, floor)] = np.maximum(path.max(axis=1, initial=0.0), 0.0)
    return out


def time_to_trip(rng: np.random.Generator, runs: int, canary_rate: float, stable_rate: float, share: float,
                 rate_ratio: float, floor: float | None, threshold: float, horizon_s: float,
                 s0: np.ndarray | float = 0.0, block: int = 4096) -> np.ndarray:
    """Seconds from the start until the llr first reaches ``threshold`` for failures arriving as
    Poisson processes (``canary_rate``, ``stable_rate`` failures/s), starting at ``s0``;
    ``inf`` when not within ``horizon_s``."""
    total = canary_rate + stable_rate
    up, down = increments(rate_ratio, share)
    result = np.full(runs, np.inf)
    state = np.broadcast_to(np.asarray(s0, dtype=np.float64), (runs,)).copy()
    clock = np.zeros(runs)
    alive = state < threshold
    result[~alive] = 0.0
    if total <= 0:
        return result
    p_canary = canary_rate / total
    while alive.any():
        idx = np.flatnonzero(alive)
        m = idx.size
        gaps = rng.exponential(1.0 / total, size=(m, block))
        times = clock[idx, None] + np.cumsum(gaps, axis=1)
        inc = np.where(rng.random((m, block)) < p_canary, up, down)
        c = np.cumsum(inc, axis=1)
        path = clamped(c, floor, state[idx])
        crossed = path >= threshold
        hit = crossed.any(axis=1)
        first = crossed.argmax(axis=1)
        t_hit = times[np.arange(m), first]
        ok = hit & (t_hit <= horizon_s)
        result[idx[ok]] = t_hit[ok]
        state[idx] = path[:, -1]
        clock[idx] = times[:, -1]
        alive[idx[hit]] = False
        alive &= clock <= horizon_s
    return result


def state_after(rng: np.random.Generator, runs: int, failures_per_s: float, share: float, rate_ratio: float,
                floor: float | None, seconds: float) -> np.ndarray:
    """The llr after ``seconds`` of healthy traffic (every failure the canary's with
    probability ``share``), started at 0: where a canary that breaks later starts from."""
    n = rng.poisson(failures_per_s * seconds, size=runs)
    longest = max(int(n.max()), 1)
    up, down = increments(rate_ratio, share)
    inc = np.where(rng.random((runs, longest)) < share, up, down)
    inc[np.arange(longest)[None, :] >= n[:, None]] = 0.0
    path = clamped(np.cumsum(inc, axis=1), floor)
    return path[:, -1]


def check_against_class(rng: np.random.Generator, share: float, rate_ratio: float, floor: float | None,
                        alpha: float, runs: int = 20, length: int = 3000) -> int:
    """Feed the same request streams to CanarySPRT and to the vectorised path; the number of
    runs where the trip (failure index) differs. 0 expected."""
    threshold = math.log(1.0 / alpha)
    mismatches = 0
    labels = rng.random((runs, length)) < share
    up, down = increments(rate_ratio, share)
    path = clamped(np.cumsum(np.where(labels, up, down), axis=1), floor)
    crossed = path >= threshold
    vec = np.where(crossed.any(axis=1), crossed.argmax(axis=1) + 1, -1)
    for r in range(runs):
        sprt = CanarySPRT(rate_ratio=rate_ratio, alpha=alpha, exposure=RoutingWeight(share), floor=floor)
        for label in labels[r]:
            sprt.observe(canary=bool(label), failed=True)
        got = sprt.decided_after if sprt.decided_after is not None else -1
        mismatches += int(got != vec[r])
    return mismatches


def window_breaker_day(rng: np.random.Generator, days: int, canary_rps: float, stable_rps: float, p: float,
                       window: int = 60, min_requests: int = 20, failure_ratio: float = 0.2,
                       stable_margin: float | None = 0.05, seconds: int = 86400, chunk: int = 8) -> np.ndarray:
    """Today's breaker (proxy/control/breaker.py, sliding windows) on healthy days, at one-second
    resolution: after each second with a canary request, trip when the canary's window has
    ``min_requests`` and its failure ratio is at least ``failure_ratio`` (and above stable's +
    ``stable_margin``). Returns whether each day tripped."""
    tripped = np.zeros(days, dtype=bool)
    for d0 in range(0, days, chunk):
        d = min(chunk, days - d0)
        nc = rng.poisson(canary_rps, size=(d, seconds)).astype(np.int32)
        fc = rng.binomial(nc, p).astype(np.int32)
        ns = rng.poisson(stable_rps, size=(d, seconds)).astype(np.int32)
        fs = rng.binomial(ns, p).astype(np.int32)

        def windowed(x: np.ndarray) -> np.ndarray:
            cs = np.zeros((d, seconds + 1), dtype=np.int64)
            np.cumsum(x, axis=1, out=cs[:, 1:])
            w = cs[:, 1:].copy()
            w[:, window:] -= cs[:, 1:seconds + 1 - window]
            return w

        wn, wf = windowed(nc), windowed(fc)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = wf / wn
            trip = (nc > 0) & (wn >= min_requests) & (ratio >= failure_ratio)
            if stable_margin is not None:
                sn, sf = windowed(ns), windowed(fs)
                stable_ratio = np.where(sn > 0, sf / sn, 0.0)
                trip &= ratio > stable_ratio + stable_margin
        tripped[d0:d0 + d] = trip.any(axis=1)
    return tripped
