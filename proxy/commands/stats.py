"""The statistics and the decision rule behind ``ollama-sidecar report``.

Kept apart from the Prometheus plumbing so the arithmetic can be checked against values
worked out by hand, and so the rule that turns numbers into a verdict is one small
function anyone can read. No scipy: the normal distribution's tail is ``math.erfc``.

The decision rule is RULES_TEXT below (appended to this docstring, and printed by
``ollama-sidecar report --help``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.metrics import SERVER_SIDE_ERRORS

# Two-sided 95 %: the 0.975 quantile of the standard normal distribution.
Z95 = 1.959963984540054

NOT_ENOUGH_DATA = "not enough data"
CANARY_WORSE = "canary worse"
CANARY_BETTER = "canary better"
NO_DIFFERENCE = "no significant difference"
VERDICTS = (CANARY_BETTER, CANARY_WORSE, NO_DIFFERENCE, NOT_ENOUGH_DATA)


def wilson_interval(failures: int, requests: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a failure ratio; ``None`` without requests.

    Wilson rather than the textbook ``p ± z·sqrt(p(1-p)/n)`` because a canary's failure
    counts are small: the textbook interval collapses to [0, 0] at 0 failures and
    leaves [0, 1] at the extremes, Wilson stays honest there.
    """
    if requests <= 0:
        return None
    p = failures / requests
    z2 = z * z
    denominator = 1 + z2 / requests
    centre = (p + z2 / (2 * requests)) / denominator
    half = z * math.sqrt(p * (1 - p) / requests + z2 / (4 * requests * requests)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float


def two_proportion_z_test(
    failures_a: int, requests_a: int, failures_b: int, requests_b: int
) -> ZTest | None:
    """Pooled two-proportion z-test of a (canary) against b (stable), two-sided.

    ``z`` > 0 means a fails more often. ``None`` when an arm has no requests. When the
    pooled ratio is 0 or 1 (no failures anywhere, or only failures) the arms cannot
    differ: z = 0, p = 1.
    """
    if requests_a <= 0 or requests_b <= 0:
        return None
    pooled = (failures_a + failures_b) / (requests_a + requests_b)
    variance = pooled * (1 - pooled) * (1 / requests_a + 1 / requests_b)
    if variance <= 0:
        return ZTest(0.0, 1.0)
    z = (failures_a / requests_a - failures_b / requests_b) / math.sqrt(variance)
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)))


@dataclass(frozen=True)
class Rules:
    """The knobs of :func:`decide`; the CLI exposes each as an option."""

    min_requests: int = 30
    alpha: float = 0.05
    latency_margin: float = 0.2


_DEFAULT = Rules()
RULES_TEXT = f"""\
Verdict rules, applied in order (defaults in brackets):

1. "not enough data" when either arm served fewer than --min-requests
   ({_DEFAULT.min_requests}) requests in the window. Too little traffic is inconclusive:
   never a pass, never a failure.
2. "canary worse" when the canary's server-side failure ratio is higher than
   stable's and a two-sided pooled two-proportion z-test gives p < --alpha
   ({_DEFAULT.alpha:g}). Server-side errors: {", ".join(sorted(SERVER_SIDE_ERRORS))};
   client errors never count.
3. "canary worse" when the canary's p95 request latency is more than
   --latency-margin ({_DEFAULT.latency_margin:g}, i.e. {_DEFAULT.latency_margin:.0%}) above stable's. Histogram quantiles carry no
   sampling error to test, so a margin, not a p-value, guards against noise.
4. "canary better" when its failure ratio is significantly lower (as in 2), or its
   p95 latency is more than the margin below stable's.
5. "no significant difference" otherwise: enough traffic on both arms and nothing
   that tells them apart. A pass for the canary, unlike "not enough data" (wait).

Counts come from increase(), which extrapolates to the window's edges; they are
rounded to whole requests before the statistics.
"""
__doc__ = f"{__doc__}\n{RULES_TEXT}"


@dataclass(frozen=True)
class ArmNumbers:
    """What the decision needs from one arm (counts already rounded to whole requests)."""

    requests: int
    failures: int
    latency_p95: float | None = None


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    test: ZTest | None
    latency_p95_ratio: float | None


def decide(stable: ArmNumbers, canary: ArmNumbers, rules: Rules = Rules()) -> Verdict:
    """Apply the rule in the module docstring."""
    test = two_proportion_z_test(canary.failures, canary.requests, stable.failures, stable.requests)
    ratio = None
    if canary.latency_p95 is not None and stable.latency_p95:
        ratio = canary.latency_p95 / stable.latency_p95

    def verdict(name: str, reason: str) -> Verdict:
        return Verdict(name, reason, test, ratio)

    thin = [
        f"{arm} has {numbers.requests} requests"
        for arm, numbers in (("stable", stable), ("canary", canary))
        if numbers.requests < rules.min_requests
    ]
    if thin or test is None:
        detail = " and ".join(thin) or "an arm has no requests"
        return verdict(NOT_ENOUGH_DATA, f"{detail} (need {rules.min_requests} per arm)")

    significant = test.p_value < rules.alpha
    p_text = f"{format_p(test.p_value)}, alpha {rules.alpha:g}"
    slower = ratio is not None and ratio > 1 + rules.latency_margin
    faster = ratio is not None and ratio < 1 - rules.latency_margin
    if significant and test.z > 0:
        return verdict(CANARY_WORSE, f"failure ratio significantly higher ({p_text})")
    if slower:
        return verdict(
            CANARY_WORSE,
            f"p95 latency {ratio:.2f}× stable's (margin {rules.latency_margin:.0%})",
        )
    if significant and test.z < 0:
        return verdict(CANARY_BETTER, f"failure ratio significantly lower ({p_text})")
    if faster:
        return verdict(
            CANARY_BETTER,
            f"p95 latency {ratio:.2f}× stable's (margin {rules.latency_margin:.0%})",
        )
    latency = (
        f", p95 latency {ratio:.2f}× stable's (margin {rules.latency_margin:.0%})"
        if ratio is not None else ", no latency data"
    )
    return verdict(
        NO_DIFFERENCE,
        f"failure ratios indistinguishable ({format_p(test.p_value)}){latency}",
    )


def format_p(p: float) -> str:
    """p-values people can read: three significant digits, a floor instead of 1e-23."""
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.3g}"
