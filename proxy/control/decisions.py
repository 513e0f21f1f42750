"""Statistical decisions about a canary, for every automatic decision the sidecar makes
(issue 16): the breaker, the rule generator's rollback alerts, the report's verdict and the
rollout gate all decide with these functions, so that they agree with each other and hold
their error rates at low traffic.

Pure functions, plus one small stateful class (the sequential test). No scipy or numpy: the
normal distribution comes from the standard library (``math.erfc``, ``statistics.NormalDist``),
binomial and hypergeometric tails are sums in log space (``math.lgamma``), and the
group-sequential boundaries are a short numerical integration.

Why each piece is the way it is (standard results; Jennison & Turnbull, *Group Sequential
Methods with Applications to Clinical Trials*, 2000; Wald, *Sequential Tests of
Statistical Hypotheses*, 1945; Kulldorff et al., *A maximized sequential probability ratio
test for drug and vaccine safety surveillance*, 2011; Johari et al., *Peeking at A/B
tests*, 2017):

- **Small counts.** The pooled two-proportion z-test is an approximation that needs about
  five expected events in every cell (Cochran, 1954). A canary at a 5-10 % weight sees a
  handful of failures, and there the z-test is wrong, with unbalanced arms in the
  direction of "canary worse" (and, with a 1:9 split, still at 10-20 expected canary
  failures: see :func:`worse_test`). Below ``min_expected`` expected failures per arm the
  decision uses an exact conditional test instead: Fisher's (1935), one-sided, with
  Lancaster's (1961) mid-p by default (see :func:`fisher_worse`).
- **"Worse" is one-sided**, and every result carries the α it was tested at: the question
  a rollback asks is only "is the canary worse"; spending half the error rate on "better"
  would be waste, and a two-sided p-value misreports the rate the decision actually runs at.
- **"As good" is non-inferiority, never "no significant difference".** A test that fails
  to reject says nothing at 30 requests (with 30 requests per arm a canary failing 10 %
  against 1 % is detected only about a quarter of the time). A pass needs the upper
  confidence limit of ``p_canary − p_stable`` below a margin δ (Newcombe's hybrid score
  interval, 1998, built from Wilson's limits); otherwise the verdict is *inconclusive*,
  with an estimate of how many more canary requests would settle it (Blackwelder's
  sample size, 1982, computed on Wilson's limits so that it stays honest at 0 failures).
- **Continuous monitoring** (a breaker that looks after every request) uses Wald's
  sequential probability ratio test on the stream of failures, one-sided, without an
  early "not worse" exit (:class:`CanarySPRT`): its likelihood ratio is a martingale under
  H0, so by Ville's inequality its false-alarm probability over the *whole* stream, at
  every look, is bounded, which no test that restarts after each "not worse" can offer.
- **A fixed schedule of looks** (a rollout gate that checks at the end of each step) keeps
  its overall α by spending it across the looks: O'Brien & Fleming (1979) boundaries for
  equal looks, Lan & DeMets (1983) spending functions for any schedule
  (:func:`obrien_fleming_bounds`, :func:`lan_demets_bounds`). Testing the same growing
  data at 1.96 five times gives a one-sided false rate of 0.071 instead of 0.025
  (Armitage, McPherson & Rowe, 1969).
- **Latency** is tested as a proportion, the share of successful requests whose time to
  first token is over an SLO bucket boundary, with the same machinery
  (:func:`assess_latency_slo`): quantiles read from doubling histogram buckets are coarser
  than any sensible margin and carry no sampling error to test.

Conventions: counts are whole requests; "canary" is always the first arm; every p-value is
one-sided for "canary worse"; rates are probabilities in [0, 1], weights shares in [0, 1]
(the route table's percentages divided by 100).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist
from typing import Callable, Hashable, Protocol, Sequence

# --- defaults: the config vocabulary of issue 16 overrides them -------------------------

ALPHA = 0.025
"""One-sided α of a single "worse" test and of the non-inferiority limit. 0.025 one-sided is
the "worse" half of the conventional two-sided 95 % test, so the upper non-inferiority
limit is the upper end of the familiar 95 % interval."""

POWER = 0.8
"""Power assumed when estimating how many more requests an inconclusive verdict needs."""

MIN_EXPECTED = 5.0
"""Expected events per cell below which the z-test gives way to the exact test (Cochran)."""

SPRT_ALPHA = 0.01
"""The sequential test's false-alarm bound over the whole life of one canary at one weight."""

SPRT_RATE_RATIO = 2.0
"""The sequential test's minimum effect: the canary failing at least twice as often."""

_NORMAL = NormalDist()


# --- the normal distribution ---------------------------------------------------------------

def norm_sf(z: float) -> float:
    """Upper tail ``P(Z > z)`` of the standard normal, accurate far out (``erfc``, not 1 − cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def norm_isf(p: float) -> float:
    """The ``z`` with ``P(Z > z) = p``; ``inf`` at 0 and ``-inf`` at 1."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return -math.inf
    return -_NORMAL.inv_cdf(p) if p < 0.5 else _NORMAL.inv_cdf(1.0 - p)


def _norm_pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def z_from_p(p_value: float) -> float:
    """A one-sided p-value on the z scale, e.g. an exact test's p against a group-sequential
    bound from :func:`obrien_fleming_bounds`."""
    return norm_isf(p_value)


# --- exact tails -----------------------------------------------------------------------------

def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _upper_tail(logpmf: Callable[[int], float], k: int, lo: int, hi: int, mode: int) -> tuple[float, float]:
    """``(P(X >= k), P(X = k))`` of a unimodal distribution on ``lo..hi`` with ``mode``.

    Sums the shorter side: from ``k`` upwards when ``k`` is past the mode (stopping once
    the terms no longer change the sum), else ``1 −`` the sum below ``k`` (downwards).
    """
    if k <= lo:
        return 1.0, math.exp(logpmf(lo)) if k == lo else 0.0
    if k > hi:
        return 0.0, 0.0
    at_k = math.exp(logpmf(k))
    total = 0.0
    if k > mode:
        for i in range(k, hi + 1):
            term = math.exp(logpmf(i))
            total += term
            if term <= total * 1e-17:
                break
        return min(1.0, total), at_k
    for i in range(k - 1, lo - 1, -1):
        term = math.exp(logpmf(i))
        total += term
        if i < mode and term <= total * 1e-17:
            break
    return max(0.0, 1.0 - total), at_k


def binomial_tail(k: int, n: int, p: float, *, mid_p: bool = False) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``; with ``mid_p``, ``P(X > k) + ½·P(X = k)``."""
    _check_count("k", k)
    _check_count("n", n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], not {p!r}")
    if k > n:
        return 0.0
    if p == 0.0 or p == 1.0:
        certain = 0 if p == 0.0 else n  # X is this value surely
        at_least = 1.0 if certain >= k else 0.0
        return at_least - (0.5 if mid_p and certain == k else 0.0)
    log_p, log_q = math.log(p), math.log1p(-p)

    def logpmf(i: int) -> float:
        return _log_comb(n, i) + i * log_p + (n - i) * log_q

    mode = min(n, int((n + 1) * p))
    at_least, at_k = _upper_tail(logpmf, k, 0, n, mode)
    return max(0.0, at_least - 0.5 * at_k) if mid_p else at_least


def hypergeometric_tail(k: int, population: int, successes: int, draws: int, *, mid_p: bool = False) -> float:
    """``P(X >= k)`` for ``X`` the successes among ``draws`` taken without replacement from
    ``population`` items of which ``successes`` are successes; ``mid_p`` as in
    :func:`binomial_tail`."""
    for name, value in (("k", k), ("population", population), ("successes", successes), ("draws", draws)):
        _check_count(name, value)
    if successes > population or draws > population:
        raise ValueError("successes and draws cannot exceed the population")
    lo, hi = max(0, draws - (population - successes)), min(successes, draws)
    if k > hi:
        return 0.0
    if lo == hi:  # no variation: X is lo surely
        return (0.5 if mid_p and k == lo else 1.0) if k <= lo else 0.0
    base = _log_comb(population, draws)

    def logpmf(i: int) -> float:
        return _log_comb(successes, i) + _log_comb(population - successes, draws - i) - base

    mode = min(hi, max(lo, (draws + 1) * (successes + 1) // (population + 2)))
    at_least, at_k = _upper_tail(logpmf, k, lo, hi, mode)
    return max(0.0, at_least - 0.5 * at_k) if mid_p else at_least


# --- single tests of "canary worse" ----------------------------------------------------------

def _check_arm(events: int, trials: int, what: str) -> None:
    _check_count(f"{what} events", events)
    _check_count(f"{what} trials", trials)
    if events > trials:
        raise ValueError(f"{what}: {events} events in {trials} trials")


def binomial_share_worse(canary_failures: int, stable_failures: int, canary_share: float, *,
                         mid_p: bool = True) -> float:
    """One-sided p-value for "canary worse" from the split of the failures alone.

    Given ``F`` failures in both arms and equal failure rates, each failure is the canary's
    with probability ``π0 = canary_share`` (the canary's share of the exposure), so the
    canary's count is Binomial(F, π0): the conditional test for two Poisson rates
    (Przyborowski & Wilenski, 1940; Lehmann & Romano, *Testing Statistical Hypotheses*,
    §4.5). It needs no estimate of the failure rate, and ``canary_share`` may come from
    anything proportional to exposure (requests, tokens, seconds at a weight).

    It treats failures as rare events: with Bernoulli requests it is exact only as the
    failure ratio goes to 0. When many requests fail it ignores that an arm cannot fail
    more requests than it served (the hypergeometric is narrower than the binomial), so it
    loses power: 28 of 30 canary requests failing against 200 of 270 gives p = 0.15 here
    and 0.011 with Fisher's test. For request counts use :func:`fisher_worse`, its exact
    counterpart; this one is for exposures that are not request counts, and it is the
    fixed-sample form of what :class:`CanarySPRT` does sequentially.

    Mid-p by default, for the reason given there; ``mid_p=False`` gives the conventional
    ``P(X >= observed)``. With no failures it returns 1 (0.5 with mid-p).
    """
    _check_count("canary_failures", canary_failures)
    _check_count("stable_failures", stable_failures)
    if not 0.0 <= canary_share <= 1.0:
        raise ValueError(f"canary_share must be in [0, 1], not {canary_share!r}")
    total = canary_failures + stable_failures
    return binomial_tail(canary_failures, total, canary_share, mid_p=mid_p)


def fisher_worse(canary_failures: int, canary_requests: int, stable_failures: int, stable_requests: int,
                 *, mid_p: bool = True) -> float:
    """One-sided p-value of Fisher's exact test for "canary worse".

    Conditional on the total number of failures and on the requests per arm, the canary's
    failures are hypergeometric under H0 (equal failure ratios): the exact conditional
    test for two binomial proportions (Fisher, 1935), valid at any count, 0 and all
    failures included.

    Mid-p by default (Lancaster, 1961: ``P(X > x) + ½·P(X = x)``): the conventional
    ``P(X >= x)`` is conservative at small counts, its real size often a fraction of the
    nominal α, which costs power exactly where a canary's counts are small; the mid-p
    version's size is close to α on average over the nuisance failure rate, occasionally
    slightly above it at a given rate (Hirji, Tan & Elashoff, 1991; Agresti, *Categorical
    Data Analysis*, 3rd ed., §1.4.5 and §3.5.4). ``mid_p=False`` guarantees the size at or
    below α. With no failures at all (or only failures) the arms cannot differ: 1, or 0.5
    with mid-p.
    """
    _check_arm(canary_failures, canary_requests, "canary")
    _check_arm(stable_failures, stable_requests, "stable")
    population = canary_requests + stable_requests
    failures = canary_failures + stable_failures
    return hypergeometric_tail(canary_failures, population, failures, canary_requests, mid_p=mid_p)


@dataclass(frozen=True)
class ZTest:
    """A pooled two-proportion z-test, one-sided for "canary worse"."""

    z: float
    p_value: float


def z_test_worse(canary_failures: int, canary_requests: int, stable_failures: int,
                 stable_requests: int) -> ZTest | None:
    """Pooled two-proportion z-test, one-sided: ``z > 0`` when the canary fails more often.

    ``None`` when an arm has no requests. With no failures at all, or only failures, the
    arms cannot differ: z = 0, p = 1. Valid only with about five expected failures and
    five expected successes per arm; :func:`worse_test` chooses it only then.
    """
    _check_arm(canary_failures, canary_requests, "canary")
    _check_arm(stable_failures, stable_requests, "stable")
    if canary_requests == 0 or stable_requests == 0:
        return None
    pooled = (canary_failures + stable_failures) / (canary_requests + stable_requests)
    variance = pooled * (1.0 - pooled) * (1.0 / canary_requests + 1.0 / stable_requests)
    if variance <= 0.0:
        return ZTest(0.0, 1.0)
    z = (canary_failures / canary_requests - stable_failures / stable_requests) / math.sqrt(variance)
    return ZTest(z, norm_sf(z))


FISHER_MID_P = "fisher mid-p"
FISHER = "fisher"
Z_POOLED = "pooled z"


@dataclass(frozen=True)
class WorseTest:
    """The result of :func:`worse_test`.

    ``method`` names the test (``FISHER_MID_P``, ``FISHER`` or ``Z_POOLED``); ``statistic``
    is z for the z-test and the canary's failure count for the exact tests; ``p_value`` is
    one-sided for "canary worse", ``worse`` is ``p_value < alpha``; the expected counts are
    the failures each arm would have at the pooled ratio (what chose the method).
    """

    method: str
    statistic: float
    p_value: float
    alpha: float
    worse: bool
    expected_canary: float
    expected_stable: float

    def describe(self) -> str:
        return f"one-sided {self.method} p {_format_p(self.p_value)}, α {self.alpha:g}"


def worse_test(canary_failures: int, canary_requests: int, stable_failures: int, stable_requests: int,
               *, alpha: float = ALPHA, min_expected: float = MIN_EXPECTED, mid_p: bool = True) -> WorseTest | None:
    """Is the canary's failure ratio higher than stable's? One-sided, at level ``alpha``.

    The pooled z-test when each arm expects at least ``min_expected`` failures *and* as many
    successes at the pooled ratio (Cochran's rule for the normal approximation), Fisher's
    exact test otherwise (:func:`fisher_worse`, mid-p unless ``mid_p=False``). ``None``
    when an arm has no requests: there is nothing to compare (a route at 100 % compares
    with stable's figures from before, which the caller passes as the stable arm).

    The threshold matters most with unbalanced arms, where the skew of the small arm's
    count makes the one-sided z-test anti-conservative long after five expected
    failures. Exact sizes at one-sided α 0.025 (enumerating both binomials, equal true
    ratios): 30 canary against 270 stable requests, z-test 0.037-0.042 at 1-5 %
    failures, this function (Fisher mid-p there) 0.011-0.022; 100 against 900 at 10 %
    (10 expected canary failures) z-test 0.031, Fisher mid-p 0.024; 400 against 3600 at
    5 % (20 expected) z-test 0.030, Fisher mid-p 0.025. Fisher's test costs little at
    any count (the tail sum stops once its terms vanish), so a larger ``min_expected``
    is cheap; the z-test is here because it is what a PromQL rule can compute.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    _check_arm(canary_failures, canary_requests, "canary")
    _check_arm(stable_failures, stable_requests, "stable")
    if canary_requests == 0 or stable_requests == 0:
        return None
    pooled = (canary_failures + stable_failures) / (canary_requests + stable_requests)
    expected_c, expected_s = pooled * canary_requests, pooled * stable_requests
    smallest = min(expected_c, expected_s, canary_requests - expected_c, stable_requests - expected_s)
    if smallest >= min_expected:
        z = z_test_worse(canary_failures, canary_requests, stable_failures, stable_requests)
        assert z is not None
        return WorseTest(Z_POOLED, z.z, z.p_value, alpha, z.p_value < alpha, expected_c, expected_s)
    p = fisher_worse(canary_failures, canary_requests, stable_failures, stable_requests, mid_p=mid_p)
    return WorseTest(FISHER_MID_P if mid_p else FISHER, float(canary_failures), p, alpha, p < alpha,
                     expected_c, expected_s)


# --- intervals, non-inferiority and sample sizes --------------------------------------------

def wilson_interval(events: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson's (1927) score interval for a proportion; ``None`` without trials.

    Unlike ``p ± z·sqrt(p(1−p)/n)`` it does not collapse to [0, 0] at 0 events: at 0/n its
    upper limit is ``z²/(n + z²)``.
    """
    _check_arm(events, trials, "wilson")
    if trials == 0:
        return None
    return _wilson(events / trials, trials, z)


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z * math.sqrt(max(0.0, p * (1.0 - p)) / n + z2 / (4.0 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(canary_events: int, canary_trials: int, stable_events: int, stable_trials: int,
                      z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval for ``p_canary − p_stable`` (Newcombe, 1998, method 10).

    Each arm's Wilson limits ``(l, u)`` around its ratio ``p``; with ``d = p_c − p_s``:
    lower ``d − sqrt((p_c − l_c)² + (u_s − p_s)²)``, upper ``d + sqrt((u_c − p_c)² + (p_s − l_s)²)``.
    Its coverage is close to nominal at small counts and at 0 or all events, where the
    Wald interval for a difference fails. ``z`` = 1.96 is a two-sided 95 % interval, whose
    upper end is the one-sided 97.5 % upper limit. ``None`` when an arm has no trials.
    """
    _check_arm(canary_events, canary_trials, "canary")
    _check_arm(stable_events, stable_trials, "stable")
    if canary_trials == 0 or stable_trials == 0:
        return None
    return _newcombe(canary_events / canary_trials, canary_trials, stable_events / stable_trials, stable_trials, z)


def _newcombe(p_c: float, n_c: float, p_s: float, n_s: float, z: float) -> tuple[float, float]:
    canary, stable = _wilson(p_c, n_c, z), _wilson(p_s, n_s, z)
    d = p_c - p_s
    low = d - math.sqrt((p_c - canary[0]) ** 2 + (stable[1] - p_s) ** 2)
    high = d + math.sqrt((canary[1] - p_c) ** 2 + (p_s - stable[0]) ** 2)
    return max(-1.0, low), min(1.0, high)


def sample_size_difference(p_stable: float, p_canary: float, *, alpha: float = ALPHA,
                           power: float = POWER) -> int:
    """Requests per arm for a one-sided test at ``alpha`` to detect ``p_stable → p_canary``
    with ``power``: the pooled-variance formula without continuity correction (Fleiss,
    Levin & Paik, *Statistical Methods for Rates and Proportions*, 3rd ed., §4.2),

        n = (z_α·sqrt(2·p̄·q̄) + z_β·sqrt(p_s·q_s + p_c·q_c))² / (p_c − p_s)²,  p̄ = (p_s + p_c)/2.

    1 % → 3 % at one-sided 0.025 and power 0.8 needs 769 per arm.
    """
    if not (0.0 <= p_stable <= 1.0 and 0.0 <= p_canary <= 1.0) or p_canary == p_stable:
        raise ValueError("need two different rates in [0, 1]")
    z_a, z_b = norm_isf(alpha), norm_isf(1.0 - power)
    mean = (p_stable + p_canary) / 2.0
    spread = (z_a * math.sqrt(2.0 * mean * (1.0 - mean))
              + z_b * math.sqrt(p_stable * (1.0 - p_stable) + p_canary * (1.0 - p_canary)))
    return math.ceil(spread * spread / (p_canary - p_stable) ** 2)


def sample_size_noninferiority(p_stable: float, p_canary: float, margin: float, *, alpha: float = ALPHA,
                               power: float = POWER, ratio: float = 1.0) -> int | None:
    """Canary requests for a non-inferiority test of ``p_canary − p_stable < margin`` at
    one-sided ``alpha`` to succeed with ``power`` when the true ratios are the ones given,
    with ``ratio`` stable requests per canary request (Blackwelder, 1982; Chow, Shao &
    Wang, *Sample Size Calculations in Clinical Research*, §4.2):

        n_canary = (z_α + z_β)² · (p_c·q_c + p_s·q_s / ratio) / (margin − (p_c − p_s))².

    ``None`` when ``p_canary − p_stable >= margin``: no number of requests shows
    non-inferiority for a canary that is really that much worse.
    """
    if margin <= 0.0 or ratio <= 0.0:
        raise ValueError("margin and ratio must be > 0")
    gap = margin - (p_canary - p_stable)
    if gap <= 1e-12:
        return None
    z = norm_isf(alpha) + norm_isf(1.0 - power)
    variance = p_canary * (1.0 - p_canary) + p_stable * (1.0 - p_stable) / ratio
    return max(1, math.ceil(z * z * variance / (gap * gap)))


class Outcome(str, Enum):
    """The three answers a decision may give; never a pass on no evidence."""

    WORSE = "worse"
    NON_INFERIOR = "non-inferior"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """The answer of :func:`assess_failures` or :func:`assess_latency_slo`, with its numbers.

    ``difference`` is ``p_canary − p_stable`` and ``lower``/``upper`` its Newcombe limits at
    one-sided ``alpha`` each (``None`` when an arm is empty); ``test`` the "worse" test
    (``None`` when an arm is empty); ``more_canary_requests`` when inconclusive, about how
    many more canary requests would settle it with probability ``power`` if the observed
    ratios held (:func:`projected_canary_requests`; ``None`` when no number would: the
    canary looks at least ``margin`` worse, or there is nothing to go on).
    """

    outcome: Outcome
    reason: str
    canary_events: int
    canary_trials: int
    stable_events: int
    stable_trials: int
    margin: float
    alpha: float
    difference: float | None
    lower: float | None
    upper: float | None
    test: WorseTest | None
    more_canary_requests: int | None = None


def assess_failures(canary_failures: int, canary_requests: int, stable_failures: int, stable_requests: int,
                    *, margin: float, alpha: float = ALPHA, power: float = POWER,
                    min_expected: float = MIN_EXPECTED, mid_p: bool = True) -> Verdict:
    """Worse, non-inferior or inconclusive, for the failure ratios of one window.

    1. *worse* when :func:`worse_test` rejects at one-sided ``alpha``. It comes first: an
       established excess, however small, is not passed (a false rollback is safe, a false
       pass ships a bad model).
    2. *non-inferior* when the upper Newcombe limit of ``p_canary − p_stable`` at one-sided
       ``alpha`` (1.96 for 0.025) is below ``margin`` (an absolute difference: 0.01 is one
       percentage point).
    3. *inconclusive* otherwise, with ``more_canary_requests`` from
       :func:`projected_canary_requests` at the observed ratios and the observed
       stable/canary request ratio (an empty arm planned at the other arm's ratio).

    An empty arm is inconclusive, never a pass. When stable has no traffic (a route at
    100 %) pass stable's figures from before as the stable arm.
    """
    return _assess(canary_failures, canary_requests, stable_failures, stable_requests, "failed",
                   margin=margin, alpha=alpha, power=power, min_expected=min_expected, mid_p=mid_p)


def assess_latency_slo(canary_slow: int, canary_successes: int, stable_slow: int, stable_successes: int,
                       *, margin: float, alpha: float = ALPHA, power: float = POWER,
                       min_expected: float = MIN_EXPECTED, mid_p: bool = True) -> Verdict:
    """Latency as a proportion: the share of *successful* requests whose time to first
    token is over an SLO (a histogram bucket boundary), canary against stable, decided
    exactly as :func:`assess_failures` decides failures (``margin`` is an absolute
    difference in that share).

    Why a proportion: quantiles interpolated from histogram buckets that double in width
    are coarser than any useful margin and carry no sampling error to test, while the
    share over a bucket boundary is an exact count. Time to first token, not whole-request
    latency (longer answers would look slower), and successes only (a failure is counted
    once, as a failure). Requests that waited for a model load are left out by the caller
    and counted apart: they measure the load, not the model.
    """
    return _assess(canary_slow, canary_successes, stable_slow, stable_successes, "over the SLO",
                   margin=margin, alpha=alpha, power=power, min_expected=min_expected, mid_p=mid_p)


def _assess(c_events: int, c_trials: int, s_events: int, s_trials: int, what: str, *, margin: float,
            alpha: float, power: float, min_expected: float, mid_p: bool) -> Verdict:
    if margin <= 0.0:
        raise ValueError(f"margin must be > 0, not {margin!r}")
    _check_arm(c_events, c_trials, "canary")
    _check_arm(s_events, s_trials, "stable")
    counts = (c_events, c_trials, s_events, s_trials, margin, alpha)
    figures = f"canary {c_events}/{c_trials} {what}, stable {s_events}/{s_trials}"
    more = _more_canary_requests(c_events, c_trials, s_events, s_trials, margin, alpha, power)
    if c_trials == 0 or s_trials == 0:
        empty = [arm for arm, n in (("canary", c_trials), ("stable", s_trials)) if n == 0]
        has = "have" if len(empty) == 2 else "has"
        return Verdict(Outcome.INCONCLUSIVE, f"inconclusive: {' and '.join(empty)} {has} no requests{_need(more)}",
                       *counts, None, None, None, None, more)
    test = worse_test(c_events, c_trials, s_events, s_trials, alpha=alpha, min_expected=min_expected, mid_p=mid_p)
    assert test is not None
    interval = newcombe_interval(c_events, c_trials, s_events, s_trials, z=norm_isf(alpha))
    assert interval is not None
    d = c_events / c_trials - s_events / s_trials
    low, high = interval
    numbers = (*counts, d, low, high, test)
    limit = f"upper {1 - alpha:.1%} limit of canary − stable {_pp(high)}"
    if test.worse:
        return Verdict(Outcome.WORSE, f"worse: {figures} ({test.describe()})", *numbers)
    if high < margin:
        return Verdict(Outcome.NON_INFERIOR, f"non-inferior: {figures}, {limit} < margin {_pp(margin)}", *numbers)
    need = _need(more) if more is not None else (
        f"; the observed excess {_pp(d)} is at least the margin: more requests are not expected to show "
        "non-inferiority")
    return Verdict(Outcome.INCONCLUSIVE, f"inconclusive: {figures}, {limit} ≥ margin {_pp(margin)}, "
                   f"not worse at α {alpha:g} ({test.describe()}){need}", *numbers, more)


def projected_canary_requests(p_canary: float, p_stable: float, margin: float, *, alpha: float = ALPHA,
                              power: float = POWER, ratio: float = 1.0) -> int | None:
    """The canary requests at which, if both arms keep the failure ratios given (with
    ``ratio`` stable requests per canary request), the Newcombe upper limit of
    ``p_canary − p_stable`` computed with ``z_α + z_β`` falls below ``margin``.

    With many events this is Blackwelder's :func:`sample_size_noninferiority`
    (``d + (z_α + z_β)·se < margin``). At rare events it follows Wilson's limits instead of
    the normal approximation, which promises certainty at 0 failures: 0 failures in both
    arms need ``n > (z_α + z_β)²·(1 − margin)/margin`` canary requests, 385 for a
    2-point margin at α 0.025 and power 0.8, where Blackwelder's formula says 1.
    ``None`` when ``p_canary − p_stable >= margin`` (no number of requests would do).
    """
    if margin <= 0.0 or ratio <= 0.0:
        raise ValueError("margin and ratio must be > 0")
    if margin - (p_canary - p_stable) <= 1e-12:
        return None
    z = norm_isf(alpha) + norm_isf(1.0 - power)

    def settled(n: int) -> bool:
        return _newcombe(p_canary, n, p_stable, n * ratio, z)[1] < margin

    lo, hi = 0, 1
    while not settled(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 50:
            return None
    while hi - lo > 1:  # settled(hi), not settled(lo) (or lo = 0)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if settled(mid) else (mid, hi)
    return hi


def _more_canary_requests(c_events: int, c_trials: int, s_events: int, s_trials: int, margin: float,
                          alpha: float, power: float) -> int | None:
    if c_trials == 0 and s_trials == 0:
        return None
    # An empty arm is planned as if it had the other arm's ratio (a canary as good as stable).
    p_c = c_events / c_trials if c_trials else s_events / s_trials
    p_s = s_events / s_trials if s_trials else p_c
    ratio = s_trials / c_trials if c_trials and s_trials else 1.0
    needed = projected_canary_requests(p_c, p_s, margin, alpha=alpha, power=power, ratio=ratio)
    if needed is None:
        return None
    return max(1, needed - c_trials)


def _need(more: int | None) -> str:
    return f"; need about {more} more canary requests" if more is not None else ""


def _pp(x: float) -> str:
    return f"{x * 100:+.2f} pp" if x < 0 else f"{x * 100:.2f} pp"


def _format_p(p: float) -> str:
    return "< 0.0001" if p < 0.0001 else f"= {p:.3g}"


# --- the sequential test for continuous monitoring ------------------------------------------

class Exposure(Protocol):
    """Where :class:`CanarySPRT` gets π0, the canary's share of exposure at this moment."""

    def canary_share(self) -> float: ...

    def record(self, canary: bool) -> None: ...


class RoutingWeight:
    """π0 = the route's canary weight (a share in [0, 1]).

    Exact when each request is routed by an independent weighted draw (no session key):
    under H0 every failure is then the canary's with probability exactly the weight,
    whatever the failure rate and however traffic varies. ``set`` changes π0 for the
    failures that follow, never for those already scored.
    """

    def __init__(self, weight: float) -> None:
        self.set(weight)

    def set(self, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be a share in [0, 1], not {weight!r}")
        self.weight = weight

    def canary_share(self) -> float:
        return self.weight

    def record(self, canary: bool) -> None:
        pass


class RecentRequests:
    """π0 = the canary's share of the last ``size`` routed requests, shrunk towards
    ``prior_share`` by ``prior_requests`` pseudo-requests.

    For sticky routing (a session keeps its arm), where the share of requests can drift
    far from the weight. The share is read before the current request is recorded, so a
    request never weighs in its own π0. After a weight change call ``restart`` with the
    new weight: a window still describing the old weight would overstate the evidence of
    every canary failure after an increase.
    """

    def __init__(self, size: int = 1000, prior_share: float = 0.5, prior_requests: float = 20.0) -> None:
        if size < 1 or prior_requests <= 0.0:
            raise ValueError("size must be >= 1 and prior_requests > 0")
        self.size = size
        self.prior_requests = prior_requests
        self.arms: deque[bool] = deque(maxlen=size)
        self.canary = 0
        self.restart(prior_share)

    def restart(self, prior_share: float) -> None:
        if not 0.0 <= prior_share <= 1.0:
            raise ValueError(f"prior_share must be in [0, 1], not {prior_share!r}")
        self.prior_share = prior_share
        self.arms.clear()
        self.canary = 0

    def canary_share(self) -> float:
        return (self.canary + self.prior_share * self.prior_requests) / (len(self.arms) + self.prior_requests)

    def record(self, canary: bool) -> None:
        if len(self.arms) == self.size:
            self.canary -= self.arms[0]
        self.arms.append(canary)
        self.canary += canary


CONTINUE = "continue"
WORSE = "worse"


def alternative_share(canary_share: float, rate_ratio: float) -> float:
    """π1: the chance a failure is the canary's when the canary fails ``rate_ratio`` times as
    often as stable and gets ``canary_share`` of the exposure: ``RR·π0 / (1 + (RR − 1)·π0)``."""
    return rate_ratio * canary_share / (1.0 + (rate_ratio - 1.0) * canary_share)


def rate_ratio_for_margin(stable_rate: float, margin: float) -> float:
    """The rate ratio that stands for "stable + ``margin``" at a stable failure ratio:
    ``(p_s + margin) / p_s``. For a breaker configured with an absolute margin; ``p_s``
    from stable's figures, with a floor so that a quiet stable does not make RR huge."""
    if stable_rate <= 0.0 or margin <= 0.0:
        raise ValueError("stable_rate and margin must be > 0")
    return (stable_rate + margin) / stable_rate


class CanarySPRT:
    """Wald's sequential probability ratio test on the stream of failures, one-sided, for a
    breaker that looks after every request.

    For each failure the only question is whose it was. Under H0 (equal failure rates) it
    is the canary's with probability π0, the canary's share of exposure at that moment;
    under H1 (the canary fails ``rate_ratio`` = RR times as often) with
    ``π1 = RR·π0 / (1 + (RR − 1)·π0)``. Each failure adds ``log(π1/π0)`` (canary) or
    ``log((1 − π1)/(1 − π0))`` (stable) to the log-likelihood ratio ``llr``; the decision
    is "worse" when ``llr >= log((1 − β)/α)`` (Wald, 1945). No baseline failure rate is
    needed (it cancels), and π0 may change between failures (a weight change, a traffic
    shift): each failure is scored with the π0 of its moment, history is never rescored.

    No early "not worse" exit, deliberately: the likelihood ratio is a non-negative
    martingale under H0, so by Ville's inequality the chance that it *ever* reaches
    ``(1 − β)/α`` is at most ``α/(1 − β)``, over the whole stream, looked at after every
    request. A test that stopped at "not worse" and restarted would spend α again at each
    restart and could hold no false-alarm rate per day. Reset (``reset``/
    ``reset_if_changed``) only when the canary or its weight changes.

    ``beta`` is Wald's type II error. Without the lower boundary the test has power one
    against RR (under H1 the ratio grows without bound), so β only lowers the threshold;
    it defaults to 0, which makes ``alpha`` itself the bound on false alarms. β = 0.2 gives
    the textbook threshold 2.77 at α = 0.05 and a bound of 0.0625.

    ``rate_ratio`` is the minimum effect worth detecting ("the canary fails at least RR
    times as often as stable"; for "stable + margin" see :func:`rate_ratio_for_margin`).
    The expected step per failure is positive, so the test eventually says "worse", for a
    true ratio above a crossover below RR (for small π0 about (RR − 1)/ln RR, e.g. 1.44 for
    RR = 2); a larger RR reaches the threshold sooner for a badly broken
    canary and misses milder ones. :meth:`expected_failures_to_worse` gives Wald's
    approximation of the time.

    ``floor`` (default ``None``) clamps ``llr`` from below. With no floor a long healthy
    history drives ``llr`` far negative and a canary that breaks later needs as much
    evidence to climb back; a floor (0 makes this Page's CUSUM, 1954) bounds that delay
    but gives up the bound over the whole stream: its false alarms per day must then be
    set by simulation.

    A fixed RR is simple to configure and to show. Without a minimum effect to commit to,
    the maximized SPRT (Kulldorff et al., 2011) or a mixture over RR (the always-valid
    p-values of Johari et al., 2017) would replace it, at the price of a threshold that
    has to be computed rather than read off ``log(1/α)``.

    ``exposure`` gives π0 for :meth:`observe` (:class:`RoutingWeight` or
    :class:`RecentRequests`); the other ``observe_*`` methods take π0 or the exposure
    counts directly. Failures with π0 at 0 or 1 (an arm without exposure) carry no
    information and are counted in ``uninformative``. Once "worse", the decision stays
    until a reset; the counts keep running.
    """

    def __init__(self, rate_ratio: float = SPRT_RATE_RATIO, alpha: float = SPRT_ALPHA, beta: float = 0.0,
                 exposure: Exposure | None = None, floor: float | None = None) -> None:
        if not rate_ratio > 1.0:
            raise ValueError(f"rate_ratio must be > 1, not {rate_ratio!r}")
        if not 0.0 < alpha < 1.0 or not 0.0 <= beta < 1.0 - alpha:
            raise ValueError("need 0 < alpha < 1 and 0 <= beta < 1 - alpha")
        if floor is not None and floor > 0.0:
            raise ValueError("floor must be <= 0")
        self.rate_ratio = rate_ratio
        self.alpha = alpha
        self.beta = beta
        self.threshold = math.log((1.0 - beta) / alpha)
        self.exposure = exposure
        self.floor = floor
        self.key: Hashable = None
        self.reset()

    def reset(self) -> None:
        """Start again: a new canary or a new weight. The exposure source is the caller's."""
        self.llr = 0.0
        self.canary_failures = 0
        self.stable_failures = 0
        self.canary_requests = 0
        self.stable_requests = 0
        self.uninformative = 0
        self.canary_share: float | None = None
        self.decision = CONTINUE
        self.decided_after: int | None = None

    def reset_if_changed(self, key: Hashable) -> bool:
        """Reset when ``key`` (e.g. ``(canary model, weight)``) differs from the last one seen."""
        if key == self.key:
            return False
        self.key = key
        self.reset()
        return True

    @property
    def worse(self) -> bool:
        return self.decision == WORSE

    @property
    def failures(self) -> int:
        return self.canary_failures + self.stable_failures

    def steps(self, canary_share: float) -> tuple[float, float]:
        """The llr increments ``(canary failure, stable failure)`` at this π0."""
        alt = alternative_share(canary_share, self.rate_ratio)
        return math.log(alt / canary_share), math.log((1.0 - alt) / (1.0 - canary_share))

    def observe(self, canary: bool, failed: bool) -> str:
        """One routed request with its outcome; π0 from ``exposure`` as it was before it."""
        if self.exposure is None:
            raise ValueError("observe needs an exposure source; use observe_failure or observe_interval")
        share = self.exposure.canary_share()
        self.exposure.record(canary)
        if canary:
            self.canary_requests += 1
        else:
            self.stable_requests += 1
        if failed:
            return self.observe_counts(int(canary), int(not canary), share)
        return self.decision

    def observe_failure(self, canary: bool, canary_share: float) -> str:
        """One failure, the canary's or stable's, at canary exposure share ``canary_share``."""
        return self.observe_counts(int(canary), int(not canary), canary_share)

    def observe_counts(self, canary_failures: int, stable_failures: int, canary_share: float) -> str:
        """Failures that happened at one π0 (a batch: scored together, checked once after)."""
        _check_count("canary_failures", canary_failures)
        _check_count("stable_failures", stable_failures)
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError(f"canary_share must be in [0, 1], not {canary_share!r}")
        self.canary_failures += canary_failures
        self.stable_failures += stable_failures
        self.canary_share = canary_share
        if not 0.0 < canary_share < 1.0:
            self.uninformative += canary_failures + stable_failures
            return self.decision
        up, down = self.steps(canary_share)
        self.llr += canary_failures * up + stable_failures * down
        if self.floor is not None and self.llr < self.floor:
            self.llr = self.floor
        if self.decision == CONTINUE and self.llr >= self.threshold:
            self.decision = WORSE
            self.decided_after = self.failures
        return self.decision

    def observe_interval(self, canary_requests: int, canary_failures: int, stable_requests: int,
                         stable_failures: int) -> str:
        """Counts from one interval (e.g. a scrape's increments): π0 is the canary's share of
        that interval's requests. Keep intervals short next to weight changes and traffic
        shifts, since π0 is taken as constant within one."""
        _check_arm(canary_failures, canary_requests, "canary")
        _check_arm(stable_failures, stable_requests, "stable")
        self.canary_requests += canary_requests
        self.stable_requests += stable_requests
        total = canary_requests + stable_requests
        if total == 0:
            return self.decision
        return self.observe_counts(canary_failures, stable_failures, canary_requests / total)

    def expected_failures_to_worse(self, true_rate_ratio: float, canary_share: float) -> float:
        """Wald's approximation of the failures (both arms) until "worse" when the canary truly
        fails ``true_rate_ratio`` times as often, at a constant π0: threshold / expected step.
        ``inf`` when the expected step is not positive (the test drifts away from "worse")."""
        share = alternative_share(canary_share, true_rate_ratio)
        up, down = self.steps(canary_share)
        drift = share * up + (1.0 - share) * down
        return self.threshold / drift if drift > 0.0 else math.inf

    def state(self) -> dict[str, float | int | str | None]:
        """What ``status`` and the metrics show."""
        return {
            "decision": self.decision,
            "llr": self.llr,
            "threshold": self.threshold,
            "rate_ratio": self.rate_ratio,
            "alpha": self.alpha,
            "beta": self.beta,
            "canary_failures": self.canary_failures,
            "stable_failures": self.stable_failures,
            "canary_requests": self.canary_requests,
            "stable_requests": self.stable_requests,
            "uninformative": self.uninformative,
            "canary_share": self.canary_share,
            "decided_after": self.decided_after,
        }


# --- a fixed schedule of looks: group-sequential boundaries --------------------------------

def obrien_fleming_spending(t: float, alpha: float) -> float:
    """Lan & DeMets' (1983) O'Brien–Fleming-type spending, one-sided:
    ``α(t) = 2·(1 − Φ(z_{1−α/2} / √t))``. Spends almost nothing early."""
    if t <= 0.0:
        return 0.0
    return 2.0 * norm_sf(norm_isf(alpha / 2.0) / math.sqrt(min(t, 1.0)))


def pocock_spending(t: float, alpha: float) -> float:
    """Lan & DeMets' Pocock-type spending: ``α(t) = α·ln(1 + (e − 1)·t)``. Spends evenly."""
    if t <= 0.0:
        return 0.0
    return alpha * math.log(1.0 + (math.e - 1.0) * min(t, 1.0))


_GRID_R = 16  # Jennison & Turnbull's grid size parameter: 6r − 1 points before midpoints


def _grid(sd: float, upper_z: float) -> tuple[list[float], list[float]]:
    """Points and Simpson weights for integrating a density of sd ``sd`` (mean 0) below
    ``upper_z``·sd: Jennison & Turnbull's (2000, §19.2) grid, dense in the middle,
    logarithmically spaced in the tails out to ±14 sd, with midpoints added."""
    r = _GRID_R
    zs = []
    for i in range(1, 6 * r):
        if i < r:
            z = -3.0 - 4.0 * math.log(r / i)
        elif i <= 5 * r:
            z = -3.0 + 3.0 * (i - r) / (2 * r)
        else:
            z = 3.0 + 4.0 * math.log(r / (6 * r - i))
        zs.append(z)
    if upper_z <= zs[0]:
        return [], []
    if upper_z < zs[-1]:
        zs = [z for z in zs if z < upper_z] + [upper_z]
    points, weights = [zs[0] * sd], [0.0]
    for a, b in zip(zs, zs[1:]):
        width = (b - a) * sd
        weights[-1] += width / 6.0
        points += [(a + b) / 2.0 * sd, b * sd]
        weights += [4.0 * width / 6.0, width / 6.0]
    return points, weights


class _Recursion:
    """Armitage, McPherson & Rowe's (1969) recursion for a one-sided group-sequential test
    under H0: Brownian motion ``B(t)`` observed at information fractions ``t_k``, stopping
    the first time ``B(t_k)/√t_k >= b_k``. Holds the sub-density of ``B(t_k)`` on the paths
    that have not stopped yet."""

    def __init__(self) -> None:
        self.t = 0.0
        self.points: list[float] = []
        self.density: list[float] = []
        self.weights: list[float] = []

    def crossing(self, t: float, bound: float) -> float:
        """Probability of stopping first at a look at ``t`` with z bound ``bound``."""
        if bound == math.inf:
            return 0.0
        if self.t == 0.0:
            return norm_sf(bound)
        s = math.sqrt(t - self.t)
        u = bound * math.sqrt(t)
        return sum(w * f * norm_sf((u - x) / s) for x, f, w in zip(self.points, self.density, self.weights))

    def advance(self, t: float, bound: float) -> None:
        """Move past the look at ``t`` with bound ``bound``: keep the paths below it."""
        if t <= self.t:
            raise ValueError("information fractions must increase")
        sd = math.sqrt(t)
        points, weights = _grid(sd, bound)
        if self.t == 0.0:
            density = [_norm_pdf(x / sd) / sd for x in points]
        else:
            s = math.sqrt(t - self.t)
            previous = [(x, w * f) for x, f, w in zip(self.points, self.density, self.weights)]
            density = [sum(m * math.exp(-0.5 * ((y - x) / s) ** 2) for x, m in previous)
                       / (s * math.sqrt(2.0 * math.pi)) for y in points]
        self.t, self.points, self.density, self.weights = t, points, density, weights


def _fractions(looks: int | Sequence[float]) -> list[float]:
    fractions = [(k + 1) / looks for k in range(looks)] if isinstance(looks, int) else [float(t) for t in looks]
    if not fractions or any(b <= a for a, b in zip([0.0, *fractions], fractions)) or fractions[-1] > 1.0 + 1e-12:
        raise ValueError("looks: a positive count, or increasing information fractions in (0, 1]")
    return fractions


def crossing_probability(bounds: Sequence[float], looks: int | Sequence[float] | None = None) -> float:
    """Under H0, the probability that a one-sided test with z ``bounds`` stops at some look.

    ``looks`` are the information fractions (default: equal looks), e.g. the share of the
    planned requests seen at each look. 1.96 at each of 5 equal looks gives 0.071
    (Armitage, McPherson & Rowe, 1969: 0.142 two-sided).
    """
    fractions = _fractions(len(bounds) if looks is None else looks)
    if len(fractions) != len(bounds):
        raise ValueError("one bound per look")
    recursion, total = _Recursion(), 0.0
    for k, (t, b) in enumerate(zip(fractions, bounds)):
        total += recursion.crossing(t, b)
        if k + 1 < len(bounds):
            recursion.advance(t, b)
    return total


def lan_demets_bounds(looks: int | Sequence[float], alpha: float = ALPHA,
                      spending: Callable[[float, float], float] = obrien_fleming_spending) -> list[float]:
    """One-sided z bounds that spend ``alpha`` by the ``spending`` function (Lan & DeMets,
    1983) at the given looks (a count of equal looks, or information fractions).

    For a schedule fixed in advance but not necessarily equal (the gate looks at the end of
    each rollout step, when each step has seen its share of the planned requests): the
    bound at look k makes the chance of first stopping there exactly
    ``α(t_k) − α(t_{k−1})``. With O'Brien–Fleming-type spending and 5 equal looks at
    one-sided 0.025: 4.88, 3.36, 2.68, 2.29, 2.03. ``inf`` where nothing is spent.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    fractions = _fractions(looks)
    recursion, bounds, spent = _Recursion(), [], 0.0
    for k, t in enumerate(fractions):
        target = spending(t, alpha) - spent
        if target <= 0.0:
            bound = math.inf
        elif recursion.t == 0.0:
            bound = norm_isf(target)
        else:
            bound = _solve_decreasing(lambda b: recursion.crossing(t, b), target, -10.0, 40.0)
        spent += recursion.crossing(t, bound)
        bounds.append(bound)
        if k + 1 < len(fractions):
            recursion.advance(t, bound)
    return bounds


def obrien_fleming_bounds(looks: int, alpha: float = ALPHA) -> list[float]:
    """O'Brien & Fleming's (1979) one-sided z bounds for ``looks`` equal looks at overall
    ``alpha``: ``c·sqrt(K/k)`` at look k, with ``c`` such that the chance of ever crossing
    under H0 is ``alpha``. Nearly the whole α is kept for the last look, which is tested at
    little more than the fixed-sample bound. 5 looks at one-sided 0.025: c = 2.04, bounds
    4.56, 3.23, 2.63, 2.28, 2.04 (Jennison & Turnbull, 2000, Table 2.3).

    Lan–DeMets spending with :func:`obrien_fleming_spending` approximates these
    boundaries and allows unequal or unplanned looks (:func:`lan_demets_bounds`); the two
    differ noticeably only at the first looks (4.88 against 4.56 at the first of five).
    """
    if not isinstance(looks, int) or looks < 1:
        raise ValueError(f"looks must be a whole number >= 1, not {looks!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    shape = [math.sqrt(looks / (k + 1)) for k in range(looks)]

    def crossed(c: float) -> float:
        return crossing_probability([c * s for s in shape])

    c = _solve_decreasing(crossed, alpha, norm_isf(alpha) - 0.5, norm_isf(alpha / looks) + 0.5)
    return [c * s for s in shape]


def _solve_decreasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The ``x`` in [lo, hi] with ``f(x) = target`` for a decreasing ``f`` (Illinois regula
    falsi on ``log f``, which is close to linear for normal tails; bisection as a guard)."""
    def g(x: float) -> float:
        value = f(x)
        return (math.log(value) if value > 0.0 else -745.0) - math.log(target)

    g_lo, g_hi = g(lo), g(hi)
    if g_lo < 0.0 or g_hi > 0.0:
        raise ValueError("no solution in the bracket")
    side = 0
    for _ in range(100):
        x = hi - g_hi * (hi - lo) / (g_hi - g_lo) if g_hi != g_lo else (lo + hi) / 2.0
        if not lo < x < hi:
            x = (lo + hi) / 2.0
        g_x = g(x)
        if abs(g_x) < 1e-10 or hi - lo < 1e-10:
            return x
        if g_x > 0.0:
            lo, g_lo = x, g_x
            if side == -1:
                g_hi /= 2.0
            side = -1
        else:
            hi, g_hi = x, g_x
            if side == 1:
                g_lo /= 2.0
            side = 1
    return x
