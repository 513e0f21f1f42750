"""Synthetic traffic for the decisions simulation: counts per scrape interval for the alert
rules, and the stream of failures for the breaker.

Two scenarios. *Poisson*: every request is independent, routed to the canary with
probability ``weight`` (so each arm's arrivals are Poisson, stable's at ``(1 − w)/w``
times the canary's rate) and failing with its arm's probability. *Sticky*: routing is by
session; sessions arrive as a Poisson process, each keeps its arm, sends a request every
scrape interval for a geometric number of requests (mean ``session_requests``), and has
its own failure propensity ``q ~ Beta(p·φ, (1 − p)·φ)`` (mean p, intra-session
correlation 1/(φ + 1)), so failures cluster by session as they do behind sticky routing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_S = 86400


@dataclass(frozen=True)
class Arms:
    """One cell: the canary's request rate, the route's weight, each arm's failure probability."""

    canary_rps: float
    weight: float
    canary_p: float
    stable_p: float

    @property
    def stable_rps(self) -> float:
        return self.canary_rps * (1.0 - self.weight) / self.weight

    def rate(self, arm: str) -> float:
        return self.canary_rps if arm == "canary" else self.stable_rps

    def p(self, arm: str) -> float:
        return self.canary_p if arm == "canary" else self.stable_p


def counters_from_bins(requests: np.ndarray, failures: np.ndarray) -> dict[bool, np.ndarray]:
    """Counter values at each scrape from counts per interval ``(runs, bins)``: the first
    scrape reads 0 (the series exist from the proxy's start at 0), scrape k reads the
    first k intervals."""
    out = {}
    for failed, counts in ((False, requests - failures), (True, failures)):
        c = np.zeros(counts.shape[:-1] + (counts.shape[-1] + 1,), dtype=np.float64)
        np.cumsum(counts, axis=-1, out=c[..., 1:])
        out[failed] = c
    return out


def poisson_bins(rng: np.random.Generator, runs: int, bins: int, bin_s: float, rps: float,
                 p: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Requests and failures per interval: Poisson(rps·bin_s) requests, Binomial failures;
    ``p`` a scalar or a per-interval array (a canary that breaks mid-run)."""
    n = rng.poisson(rps * bin_s, size=(runs, bins)).astype(np.int32)
    f = rng.binomial(n, np.broadcast_to(p, (runs, bins))).astype(np.int32)
    return n, f


@dataclass(frozen=True)
class Sticky:
    """Session clustering: mean requests per session, one request every ``gap_s``, and the
    Beta concentration φ of the per-session failure propensity."""

    session_requests: float = 20.0
    phi: float = 10.0
    gap_s: float = 15.0


def sticky_day(rng: np.random.Generator, runs: int, bins: int, bin_s: float, rps: float, p: float,
               sticky: Sticky, warm_s: float = 600.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One arm's sessions over ``runs`` days: ``(requests per bin, failures per bin, failure
    run index, failure time)``. Sessions that started up to ``warm_s`` before 0 are in
    progress at 0. One request per ``gap_s`` (the scrape interval: one per bin)."""
    if abs(sticky.gap_s - bin_s) > 1e-9:
        raise ValueError("sticky sessions send one request per scrape interval")
    span = bins * bin_s + warm_s
    per_run = rng.poisson(rps / sticky.session_requests * span, size=runs)
    total = int(per_run.sum())
    run = np.repeat(np.arange(runs, dtype=np.int64), per_run)
    start = rng.uniform(-warm_s, bins * bin_s, size=total)
    length = rng.geometric(1.0 / sticky.session_requests, size=total).astype(np.int64)
    a, b = p * sticky.phi, (1.0 - p) * sticky.phi
    q = rng.beta(a, b, size=total)
    first_bin = np.floor(start / bin_s).astype(np.int64) + 1  # first request in the bin after the start
    # requests per bin: +1 from first_bin to first_bin + length − 1, clipped to [0, bins)
    lo = np.clip(first_bin, 0, bins)
    hi = np.clip(first_bin + length, 0, bins)
    width = bins + 1
    diff = np.bincount(run * width + lo, minlength=runs * width) - np.bincount(run * width + hi, minlength=runs * width)
    requests = np.cumsum(diff.reshape(runs, width), axis=1)[:, :bins].astype(np.int32)
    nfail = rng.binomial(length, q)
    # The session's failing requests: nfail distinct ones of its `length`, spread evenly from
    # a random phase (distinct without materialising every request).
    frun = np.repeat(run, nfail)
    n_total = int(nfail.sum())
    j = np.arange(n_total, dtype=np.int64) - np.repeat(np.cumsum(nfail) - nfail, nfail)
    flen, fcount = np.repeat(length, nfail), np.repeat(nfail, nfail)
    phase = np.repeat(rng.random(total), nfail)
    fpos = np.repeat(first_bin, nfail) + (np.floor(phase * flen + j * flen / fcount).astype(np.int64) % flen)
    keep = (fpos >= 0) & (fpos < bins)
    frun, fpos = frun[keep], fpos[keep]
    failures = np.bincount(frun * bins + fpos, minlength=runs * bins).reshape(runs, bins).astype(np.int32)
    ftime = fpos * bin_s + rng.random(fpos.size) * bin_s
    return requests, failures, frun, ftime


def recent_share(canary: np.ndarray, stable: np.ndarray, size: float, prior_share: float,
                 prior_requests: float = 20.0) -> np.ndarray:
    """π0 as ``RecentRequests(size, prior_share, prior_requests)`` gives it, per bin, from
    requests per bin ``(runs, bins)``: the canary's share of about the last ``size``
    requests before the bin (the whole bins that hold them on average), shrunk towards
    ``prior_share``."""
    total_rate = (canary.sum() + stable.sum()) / canary.size  # requests per bin
    width = max(1, int(round(size / max(total_rate, 1e-9))))

    def trailing(x: np.ndarray) -> np.ndarray:
        cs = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), dtype=np.float64)
        np.cumsum(x, axis=-1, out=cs[..., 1:])
        lo = np.maximum(np.arange(x.shape[-1]) - width, 0)
        return cs[..., :-1] - cs[..., lo]  # bins [b - width, b)

    c, n = trailing(canary), trailing(canary) + trailing(stable)
    return (c + prior_share * prior_requests) / (n + prior_requests)


def failure_labels(rng: np.random.Generator, shape: tuple[int, int], share: float) -> np.ndarray:
    """Whose each failure is (True: the canary's), independent with probability ``share``:
    the Poisson scenario's stream of failures, in order."""
    return rng.random(shape, dtype=np.float32) < share
