"""proxy/control/decisions.py: every decision function against values worked out by hand,
by exact computation (explicit sums with ``fractions``, enumeration of both binomials) or
from published tables, at the edges (0 and all failures, an empty arm, tiny counts, weight
changes mid-stream), plus seeded Monte-Carlo checks of the sequential test."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from proxy.control import decisions as d

Z975 = 1.959963984540054
Z80 = 0.8416212335729143


# --- the normal distribution -------------------------------------------------------------

def test_normal_tails_match_the_tables():
    assert d.norm_sf(Z975) == pytest.approx(0.025, rel=1e-12)
    assert d.norm_sf(0.0) == 0.5
    assert d.norm_sf(5.0) == pytest.approx(2.866515718791939e-07, rel=1e-10)  # erfc, not 1 - cdf
    assert d.norm_isf(0.025) == pytest.approx(Z975, abs=1e-12)
    assert d.norm_isf(0.2) == pytest.approx(Z80, abs=1e-12)
    assert d.norm_isf(0.975) == pytest.approx(-Z975, abs=1e-12)
    assert d.norm_isf(1e-12) == pytest.approx(7.034483825, abs=1e-8)
    assert (d.norm_isf(0.0), d.norm_isf(1.0)) == (math.inf, -math.inf)
    assert d.z_from_p(0.025) == pytest.approx(Z975)


# --- exact tails by explicit summation ------------------------------------------------------

def binomial_tail_by_hand(k: int, n: int, p: Fraction, mid_p: bool) -> float:
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    above = sum(pmf[k + 1:], Fraction(0))
    at = pmf[k] if k <= n else Fraction(0)
    return float(above + at / 2 if mid_p else above + at)


@pytest.mark.parametrize("mid_p", [False, True])
@pytest.mark.parametrize(("k", "n", "p"), [
    (0, 10, Fraction(1, 10)),     # the whole distribution
    (1, 10, Fraction(1, 10)),
    (4, 5, Fraction(1, 10)),
    (10, 10, Fraction(1, 10)),    # all of them
    (3, 40, Fraction(1, 20)),     # just past the mode
    (1, 40, Fraction(1, 20)),     # below the mode: summed as 1 - lower tail
    (25, 200, Fraction(1, 20)),   # far tail
    (60, 120, Fraction(1, 2)),
])
def test_binomial_tail_matches_an_explicit_sum(k, n, p, mid_p):
    assert d.binomial_tail(k, n, float(p), mid_p=mid_p) == pytest.approx(
        binomial_tail_by_hand(k, n, p, mid_p), rel=1e-9, abs=1e-15)


def test_binomial_tail_edges():
    assert d.binomial_tail(0, 0, 0.3) == 1.0
    assert d.binomial_tail(0, 0, 0.3, mid_p=True) == 0.5
    assert d.binomial_tail(6, 5, 0.3) == 0.0
    assert d.binomial_tail(0, 5, 0.0) == 1.0 and d.binomial_tail(1, 5, 0.0) == 0.0
    assert d.binomial_tail(5, 5, 1.0) == 1.0 and d.binomial_tail(5, 5, 1.0, mid_p=True) == 0.5
    assert d.binomial_tail(4, 5, 1.0, mid_p=True) == 1.0
    with pytest.raises(ValueError):
        d.binomial_tail(1, 5, 1.5)
    with pytest.raises(ValueError):
        d.binomial_tail(-1, 5, 0.5)


def test_binomial_share_test_by_hand():
    # 4 of 5 failures on a canary with 10 % of the exposure:
    # P(X >= 4) = 5·0.1⁴·0.9 + 0.1⁵ = 0.00045 + 0.00001; mid-p = 0.00001 + 0.00045/2.
    assert d.binomial_share_worse(4, 1, 0.1, mid_p=False) == pytest.approx(0.00046, rel=1e-9)
    assert d.binomial_share_worse(4, 1, 0.1) == pytest.approx(0.000235, rel=1e-9)
    assert d.binomial_share_worse(0, 0, 0.1, mid_p=False) == 1.0  # no failures, no evidence
    assert d.binomial_share_worse(0, 7, 0.1, mid_p=False) == 1.0


def fisher_by_hand(x: int, n_c: int, y: int, n_s: int, mid_p: bool) -> float:
    k, n = x + y, n_c + n_s
    pmf = {i: Fraction(math.comb(k, i) * math.comb(n - k, n_c - i), math.comb(n, n_c))
           for i in range(max(0, n_c - (n - k)), min(k, n_c) + 1)}
    above = sum((v for i, v in pmf.items() if i > x), Fraction(0))
    return float(above + pmf.get(x, Fraction(0)) / (2 if mid_p else 1))


def test_fisher_on_the_lady_tasting_tea():
    # Fisher (1935): 3 of 4 right; P(X >= 3) = (4·4 + 1)/C(8, 4) = 17/70, mid-p 1/70 + 8/70.
    assert d.fisher_worse(3, 4, 1, 4, mid_p=False) == pytest.approx(17 / 70, rel=1e-12)
    assert d.fisher_worse(3, 4, 1, 4) == pytest.approx(9 / 70, rel=1e-12)


@pytest.mark.parametrize("mid_p", [False, True])
@pytest.mark.parametrize(("x", "n_c", "y", "n_s"), [
    (1, 30, 3, 270), (3, 30, 3, 270), (5, 30, 2, 270), (0, 30, 9, 270), (30, 30, 200, 270),
    (2, 10, 1, 90), (12, 300, 40, 2700), (7, 50, 7, 50),
])
def test_fisher_matches_an_explicit_hypergeometric_sum(x, n_c, y, n_s, mid_p):
    assert d.fisher_worse(x, n_c, y, n_s, mid_p=mid_p) == pytest.approx(
        fisher_by_hand(x, n_c, y, n_s, mid_p), rel=1e-9, abs=1e-15)


def test_fisher_edges_no_failures_all_failures_empty_arm():
    assert d.fisher_worse(0, 30, 0, 270, mid_p=False) == 1.0
    assert d.fisher_worse(0, 30, 0, 270) == 0.5
    assert d.fisher_worse(30, 30, 270, 270, mid_p=False) == 1.0  # everything fails: no contrast
    assert d.fisher_worse(30, 30, 270, 270) == 0.5
    assert d.fisher_worse(0, 0, 5, 270, mid_p=False) == 1.0
    # At high failure ratios the split of failures alone (binomial) ignores that an arm
    # cannot fail more requests than it served, and loses the power Fisher's test keeps:
    # request counts go to Fisher's test.
    assert d.fisher_worse(28, 30, 200, 270, mid_p=False) == pytest.approx(
        fisher_by_hand(28, 30, 200, 270, False), rel=1e-9)
    assert d.fisher_worse(28, 30, 200, 270, mid_p=False) < 0.02
    assert d.binomial_share_worse(28, 200, 30 / 300, mid_p=False) > 0.1
    with pytest.raises(ValueError):
        d.fisher_worse(31, 30, 0, 270)


def test_fisher_is_fast_at_large_counts():
    # The tail sum stops once its terms vanish: a million requests per arm cost little.
    p = d.fisher_worse(10_300, 1_000_000, 10_000, 1_000_000)
    z = d.z_test_worse(10_300, 1_000_000, 10_000, 1_000_000)
    assert p == pytest.approx(z.p_value, rel=0.05)


# --- the z-test and the choice between tests ------------------------------------------------

def test_z_test_by_hand():
    # Pooled 0.5, n = 200 each: se = sqrt(0.25·2/200) = 0.05, difference 0.1, z = 2, one-sided.
    test = d.z_test_worse(110, 200, 90, 200)
    assert test.z == pytest.approx(2.0)
    assert test.p_value == pytest.approx(0.0227501, abs=1e-7)
    assert d.z_test_worse(90, 200, 110, 200).p_value == pytest.approx(1 - 0.0227501, abs=1e-7)
    assert d.z_test_worse(0, 30, 0, 270) == d.ZTest(0.0, 1.0)
    assert d.z_test_worse(30, 30, 270, 270) == d.ZTest(0.0, 1.0)
    assert d.z_test_worse(0, 0, 1, 270) is None


def test_worse_test_chooses_by_expected_failures():
    small = d.worse_test(3, 30, 5, 270)  # pooled 8/300: expects 0.8 canary failures
    assert small.method == d.FISHER_MID_P and small.statistic == 3
    assert small.expected_canary == pytest.approx(0.8) and small.expected_stable == pytest.approx(7.2)
    assert small.p_value == pytest.approx(fisher_by_hand(3, 30, 5, 270, True), rel=1e-9)
    assert d.worse_test(3, 30, 5, 270, mid_p=False).method == d.FISHER
    large = d.worse_test(60, 1000, 40, 1000)  # expects 50 per arm
    assert large.method == d.Z_POOLED and large.p_value == d.z_test_worse(60, 1000, 40, 1000).p_value
    assert d.worse_test(3, 30, 5, 270, min_expected=0.5).method == d.Z_POOLED  # the threshold is a parameter
    assert d.worse_test(60, 1000, 40, 1000, min_expected=math.inf).method == d.FISHER_MID_P
    # Expected *successes* count too: at 99.6 % failures the canary expects 1.1 successes.
    assert d.worse_test(29, 30, 268, 270).method == d.FISHER_MID_P
    assert d.worse_test(0, 0, 1, 10) is None


def test_worse_test_states_its_alpha():
    test = d.worse_test(4, 30, 2, 270, alpha=0.01)
    assert test.alpha == 0.01 and test.worse == (test.p_value < 0.01)
    assert "one-sided" in test.describe() and "α 0.01" in test.describe()
    with pytest.raises(ValueError):
        d.worse_test(4, 30, 2, 270, alpha=0.0)


def exact_size(test, n_c: int, n_s: int, p: float) -> float:
    """P(test says "worse") under equal failure ratios p, by enumerating both binomials."""
    def pmf(n: int) -> list[float]:
        return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                         + k * math.log(p) + (n - k) * math.log1p(-p)) for k in range(n + 1)]
    canary, stable = pmf(n_c), pmf(n_s)
    return sum(canary[x] * stable[y] for x in range(n_c + 1) if canary[x] > 1e-12
               for y in range(n_s + 1) if stable[y] > 1e-12 and test(x, y))


@pytest.mark.parametrize("p", [0.01, 0.02, 0.05])
def test_at_30_against_270_requests_the_chosen_test_holds_alpha_and_the_z_test_does_not(p):
    # The report case: the z-test says "worse" 1.5-1.7 times its nominal rate.
    chosen = exact_size(lambda x, y: d.worse_test(x, 30, y, 270).worse, 30, 270, p)
    z_only = exact_size(lambda x, y: d.z_test_worse(x, 30, y, 270).p_value < d.ALPHA, 30, 270, p)
    assert chosen <= d.ALPHA
    assert z_only >= 1.45 * d.ALPHA


def test_with_unbalanced_arms_the_z_test_stays_anti_conservative_past_five_expected_failures():
    # 100 against 900 requests at 10 %: 10 expected canary failures, over Cochran's 5.
    z_only = exact_size(lambda x, y: d.z_test_worse(x, 100, y, 900).p_value < d.ALPHA, 100, 900, 0.1)
    mid_p = exact_size(lambda x, y: d.fisher_worse(x, 100, y, 900) < d.ALPHA, 100, 900, 0.1)
    assert z_only > 1.15 * d.ALPHA
    assert mid_p <= d.ALPHA


# --- intervals and sample sizes -------------------------------------------------------------

@pytest.mark.parametrize(("events", "n", "low", "high"), [
    (0, 10, 0.0, 0.27753),  # z²/(n + z²)
    (10, 10, 0.72247, 1.0),
    (5, 10, 0.23659, 0.76341),
    (1, 10, 0.01788, 0.40415),
])
def test_wilson_interval_by_hand(events, n, low, high):
    got = d.wilson_interval(events, n)
    assert got == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("counts", "low", "high"), [
    # Newcombe (1998), Table II, method 10 (hybrid score, no continuity correction).
    ((56, 70, 48, 80), 0.0524, 0.3339),
    ((9, 10, 3, 10), 0.1705, 0.8090),
    ((6, 7, 2, 7), 0.0582, 0.8062),
    ((5, 56, 0, 29), -0.0381, 0.1926),
    ((0, 10, 0, 20), -0.1611, 0.2775),  # by hand: -(z²/(20 + z²)), z²/(10 + z²)
    ((0, 10, 0, 10), -0.2775, 0.2775),
    ((10, 10, 0, 20), 0.6791, 1.0),
    ((10, 10, 0, 10), 0.6075, 1.0),
])
def test_newcombe_interval_matches_the_published_examples(counts, low, high):
    got = d.newcombe_interval(*counts)
    assert got == pytest.approx((low, high), abs=6e-5)


def test_newcombe_interval_without_an_arm_is_none():
    assert d.newcombe_interval(0, 0, 3, 10) is None
    assert d.newcombe_interval(3, 10, 0, 0) is None


def test_sample_size_for_1_to_3_percent_is_about_770_per_arm():
    # (1.96·sqrt(2·0.02·0.98) + 0.8416·sqrt(0.0099 + 0.0291))² / 0.02² = 0.5543² / 0.0004 = 768.1
    assert d.sample_size_difference(0.01, 0.03) == 769
    assert d.sample_size_difference(0.03, 0.01) == 769
    with pytest.raises(ValueError):
        d.sample_size_difference(0.01, 0.01)


def test_sample_size_for_non_inferiority_by_hand():
    # (1.96 + 0.8416)² · (0.0099 + 0.0099) / 0.02² = 7.8489 · 0.0198 / 0.0004 = 388.5
    assert d.sample_size_noninferiority(0.01, 0.01, 0.02) == 389
    # Nine stable requests per canary one: 7.8489 · (0.0099 + 0.0011) / 0.0004 = 215.8
    assert d.sample_size_noninferiority(0.01, 0.01, 0.02, ratio=9) == 216
    assert d.sample_size_noninferiority(0.01, 0.03, 0.02) is None  # truly 2 points worse


def test_projected_requests_follow_blackwelder_at_large_counts_and_wilson_at_zero():
    projected = d.projected_canary_requests(0.2, 0.2, 0.05)
    assert projected == pytest.approx(d.sample_size_noninferiority(0.2, 0.2, 0.05), rel=0.02)
    # 0 failures in both arms: the upper limit is Wilson's z²/(n + z²) with z = z_α + z_β,
    # below 0.02 once n > 7.84888 · 0.98 / 0.02 = 384.6.
    assert d.projected_canary_requests(0.0, 0.0, 0.02) == 385
    assert d.projected_canary_requests(0.05, 0.0, 0.02) is None


# --- the verdict ----------------------------------------------------------------------------

def test_verdict_worse_at_tiny_counts_uses_the_exact_test():
    v = d.assess_failures(4, 30, 2, 270, margin=0.02)
    assert v.outcome == d.Outcome.WORSE
    assert v.test.method == d.FISHER_MID_P and v.test.p_value == pytest.approx(
        fisher_by_hand(4, 30, 2, 270, True), rel=1e-9)
    assert v.more_canary_requests is None
    assert "α 0.025" in v.reason and "fisher mid-p" in v.reason


def test_verdict_with_no_failures_anywhere_is_inconclusive_with_the_requests_it_needs():
    v = d.assess_failures(0, 30, 0, 270, margin=0.02)
    assert v.outcome == d.Outcome.INCONCLUSIVE
    assert v.difference == 0.0 and v.upper == pytest.approx(3.8415 / (30 + 3.8415), abs=1e-4)
    assert v.more_canary_requests == 385 - 30  # see the projection test above
    assert "need about 355 more canary requests" in v.reason


def test_verdict_non_inferior_needs_the_upper_limit_below_the_margin():
    v = d.assess_failures(50, 5000, 500, 50000, margin=0.01)
    assert v.outcome == d.Outcome.NON_INFERIOR and v.test.method == d.Z_POOLED
    # d = 0; Wald's limit 1.96·sqrt(0.0099/5000 + 0.0099/50000) = 0.0029 is close to Newcombe's.
    assert v.upper == pytest.approx(0.0029, abs=0.0004) and v.upper < 0.01
    assert d.assess_failures(50, 5000, 500, 50000, margin=0.002).outcome == d.Outcome.INCONCLUSIVE


def test_verdict_with_an_observed_excess_over_the_margin_needs_no_more_requests_estimate():
    v = d.assess_failures(1, 20, 0, 20, margin=0.02)  # 5 points worse, p = 0.25
    assert v.outcome == d.Outcome.INCONCLUSIVE and v.more_canary_requests is None
    assert "at least the margin" in v.reason


def test_verdict_all_failures_is_relative_to_stable():
    # Both arms fail every request: the canary is no worse than stable. Absolute limits are
    # the caller's: non-inferiority only compares.
    v = d.assess_failures(30, 30, 270, 270, margin=0.02)
    assert v.test.p_value == 0.5 and not v.test.worse
    assert v.outcome == d.Outcome.NON_INFERIOR
    assert v.upper == pytest.approx(3.8415 / (270 + 3.8415), abs=1e-4)  # 1 - Wilson lower of 270/270


def test_verdict_with_an_empty_arm_is_inconclusive():
    no_canary = d.assess_failures(0, 0, 3, 270, margin=0.02)
    assert no_canary.outcome == d.Outcome.INCONCLUSIVE and no_canary.test is None
    assert no_canary.upper is None and no_canary.more_canary_requests > 0
    assert "canary has no requests" in no_canary.reason
    no_stable = d.assess_failures(3, 270, 0, 0, margin=0.02)
    assert no_stable.outcome == d.Outcome.INCONCLUSIVE and "stable has no requests" in no_stable.reason
    nothing = d.assess_failures(0, 0, 0, 0, margin=0.02)
    assert nothing.more_canary_requests is None and "have no requests" in nothing.reason


def test_verdict_worse_comes_before_non_inferior():
    # 1.2 % against 1.0 % over 100 000 requests each: significant (z = 4.3), yet within 1 point.
    v = d.assess_failures(1200, 100_000, 1000, 100_000, margin=0.01)
    assert v.upper < 0.01
    assert v.outcome == d.Outcome.WORSE


def test_verdict_rejects_nonsense():
    with pytest.raises(ValueError):
        d.assess_failures(1, 10, 1, 10, margin=0.0)
    with pytest.raises(ValueError):
        d.assess_failures(11, 10, 1, 10, margin=0.02)


def test_latency_is_the_same_test_on_the_share_over_the_slo():
    slo = d.assess_latency_slo(4, 30, 2, 270, margin=0.02)
    failures = d.assess_failures(4, 30, 2, 270, margin=0.02)
    assert (slo.outcome, slo.test, slo.upper) == (failures.outcome, failures.test, failures.upper)
    assert "over the SLO" in slo.reason
    assert d.assess_latency_slo(3, 300, 30, 2700, margin=0.05).outcome == d.Outcome.NON_INFERIOR


# --- the sequential test --------------------------------------------------------------------

def test_sprt_steps_and_threshold_by_hand():
    s = d.CanarySPRT(rate_ratio=2.0, alpha=0.05, beta=0.2)
    assert s.threshold == pytest.approx(math.log(16))  # 2.77, as in the textbook
    assert d.alternative_share(0.1, 2.0) == pytest.approx(0.2 / 1.1)
    up, down = s.steps(0.1)
    assert up == pytest.approx(math.log(2 / 1.1)) and down == pytest.approx(math.log(0.9 / 1.1 / 0.9))
    assert d.CanarySPRT(alpha=0.01).threshold == pytest.approx(math.log(100))
    assert d.rate_ratio_for_margin(0.01, 0.02) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        d.CanarySPRT(rate_ratio=1.0)
    with pytest.raises(ValueError):
        d.CanarySPRT(alpha=0.05, beta=0.96)


def test_sprt_says_worse_at_the_failure_that_crosses_and_stays_there():
    s = d.CanarySPRT(rate_ratio=2.0, alpha=0.05)  # threshold ln 20 = 2.996; each step ln(2/1.1) = 0.598
    for _ in range(5):
        assert s.observe_failure(True, 0.1) == d.CONTINUE  # 5 · 0.598 = 2.989
    assert s.observe_failure(True, 0.1) == d.WORSE
    assert s.decided_after == 6 and s.worse
    for _ in range(50):  # no "not worse" exit, and no way back short of a reset
        s.observe_failure(False, 0.1)
    assert s.worse and s.llr < 0
    state = s.state()
    assert state["decision"] == "worse" and state["canary_failures"] == 6 and state["stable_failures"] == 50
    assert state["threshold"] == pytest.approx(math.log(20))


def test_sprt_with_no_failures_and_with_only_failures():
    s = d.CanarySPRT(exposure=d.RoutingWeight(0.1))
    for i in range(1000):
        s.observe(i % 10 == 0, failed=False)
    assert (s.llr, s.decision, s.canary_requests, s.stable_requests) == (0.0, d.CONTINUE, 100, 900)
    # Every request failing, split as the exposure is: the evidence points to H0.
    s.observe_counts(10, 90, 0.1)
    up, down = s.steps(0.1)
    assert s.llr == pytest.approx(10 * up + 90 * down) and s.llr < -2.5


def test_sprt_failures_without_exposure_on_an_arm_carry_no_information():
    s = d.CanarySPRT()
    s.observe_failure(True, 1.0)   # a route at 100 %: every failure is the canary's anyway
    s.observe_failure(False, 0.0)  # the canary has no traffic
    s.observe_interval(0, 0, 50, 3)
    assert s.llr == 0.0 and s.uninformative == 5 and s.failures == 5
    assert s.observe_interval(0, 0, 0, 0) == d.CONTINUE


def test_sprt_weight_changes_alter_the_future_not_the_history():
    weight = d.RoutingWeight(0.1)
    s = d.CanarySPRT(rate_ratio=2.0, alpha=0.01, exposure=weight)
    for _ in range(3):
        s.observe(True, failed=True)
    before = s.llr
    assert before == pytest.approx(3 * math.log(2 / 1.1))
    weight.set(0.5)  # π1 = 2/3: a canary failure now weighs ln(4/3), a stable one ln(2/3)
    assert s.llr == before
    s.observe(True, failed=True)
    s.observe(False, failed=True)
    assert s.llr == pytest.approx(before + math.log(4 / 3) + math.log(2 / 3))
    assert s.state()["canary_share"] == 0.5
    # The breaker resets on a new canary or a new weight, and only then.
    assert s.reset_if_changed(("qwen3:8b-ft", 50)) is True and s.llr == 0.0 and s.failures == 0
    s.observe(True, failed=True)
    assert s.reset_if_changed(("qwen3:8b-ft", 50)) is False and s.failures == 1


def test_sprt_interval_counts_use_the_interval_share():
    s = d.CanarySPRT(rate_ratio=3.0)
    s.observe_interval(canary_requests=20, canary_failures=2, stable_requests=180, stable_failures=1)
    up, down = s.steps(0.1)
    assert s.llr == pytest.approx(2 * up + down)
    assert (s.canary_requests, s.stable_requests, s.canary_failures, s.stable_failures) == (20, 180, 2, 1)
    with pytest.raises(ValueError):
        s.observe_interval(1, 2, 10, 0)
    with pytest.raises(ValueError):
        d.CanarySPRT().observe(True, True)  # needs an exposure source


def test_recent_requests_share_is_read_before_the_request_and_restarts_with_a_weight():
    recent = d.RecentRequests(size=4, prior_share=0.5, prior_requests=2)
    assert recent.canary_share() == 0.5
    s = d.CanarySPRT(exposure=recent)
    s.observe(True, failed=True)  # scored at the prior 0.5, not at its own arm
    assert s.state()["canary_share"] == 0.5
    for canary in (False, False, False, False):
        recent.record(canary)
    assert recent.canary_share() == pytest.approx((0 + 1) / (4 + 2))  # the window holds 4
    recent.restart(0.2)
    assert recent.canary_share() == 0.2


def test_sprt_floor_bounds_the_credit_of_a_long_healthy_history():
    free, floored = d.CanarySPRT(alpha=0.05), d.CanarySPRT(alpha=0.05, floor=-1.0)
    for s in (free, floored):
        s.observe_counts(0, 500, 0.1)
    assert free.llr < -40 and floored.llr == -1.0
    with pytest.raises(ValueError):
        d.CanarySPRT(floor=1.0)


def test_sprt_expected_failures_match_walds_approximation():
    s = d.CanarySPRT(rate_ratio=2.0, alpha=0.01)
    assert s.expected_failures_to_worse(1.0, 0.1) == math.inf  # a healthy canary drifts away
    assert s.expected_failures_to_worse(1.4, 0.1) == math.inf  # below the crossover (RR-1)/ln RR
    approx = s.expected_failures_to_worse(4.0, 0.1)
    share = d.alternative_share(0.1, 4.0)
    up, down = s.steps(0.1)
    assert approx == pytest.approx(math.log(100) / (share * up + (1 - share) * down))
    rng = random.Random(7)
    needed = []
    for _ in range(200):
        t = d.CanarySPRT(rate_ratio=2.0, alpha=0.01)
        while not t.worse:
            t.observe_failure(rng.random() < share, 0.1)
        needed.append(t.decided_after)
    assert approx <= sum(needed) / len(needed) <= 1.3 * approx  # Wald ignores the overshoot


def false_alarms(runs: int, failures: int, schedule, seed: int, alpha: float = 0.1) -> float:
    """Share of equal-arm streams on which the test ever says "worse"; ``schedule(i)`` is
    π0 at failure i (under H0 each failure is the canary's with exactly that chance)."""
    rng = random.Random(seed)
    shares = [schedule(i) for i in range(failures)]
    alarms = 0
    for _ in range(runs):
        s = d.CanarySPRT(rate_ratio=2.0, alpha=alpha)
        for share in shares:
            if s.observe_failure(rng.random() < share, share) == d.WORSE:
                alarms += 1
                break
    return alarms / runs


def test_sprt_false_alarms_over_a_long_stream_stay_below_alpha():
    # 800 failures is some 80 000 requests at 1 %; by then the ratio has drifted so far down
    # (about -21, sd 6) that a later crossing is out of reach. α = 0.1 keeps the rate
    # measurable with 600 streams (standard error 0.012): Ville's bound is 0.1, the
    # overshoot of the last step puts the real rate near 0.07.
    assert false_alarms(600, 800, lambda i: 0.1, seed=1) <= 0.1


def test_sprt_false_alarms_stay_below_alpha_across_weight_changes():
    def weights(i: int) -> float:
        return 0.05 if i < 200 else 0.5 if i < 500 else 0.2
    assert false_alarms(600, 800, weights, seed=2) <= 0.1


# --- a fixed schedule of looks --------------------------------------------------------------

def test_obrien_fleming_bounds_for_five_looks():
    # Jennison & Turnbull (2000), Table 2.3: C_B(5, 0.05) = 2.040, bounds 2.040·sqrt(5/k).
    bounds = d.obrien_fleming_bounds(5, alpha=0.025)
    assert bounds == pytest.approx([4.56, 3.23, 2.63, 2.28, 2.04], abs=0.02)
    assert bounds[-1] == pytest.approx(2.040, abs=0.002)
    assert d.crossing_probability(bounds) == pytest.approx(0.025, abs=1e-6)


def test_lan_demets_obrien_fleming_spending_for_five_looks():
    bounds = d.lan_demets_bounds(5, alpha=0.025)
    assert bounds == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=0.005)
    assert bounds[0] == pytest.approx(d.norm_isf(d.obrien_fleming_spending(0.2, 0.025)))
    assert d.crossing_probability(bounds) == pytest.approx(0.025, abs=1e-6)
    uneven = [0.1, 0.3, 0.7, 1.0]
    assert d.crossing_probability(d.lan_demets_bounds(uneven), uneven) == pytest.approx(0.025, abs=1e-6)
    pocock = d.lan_demets_bounds(5, spending=d.pocock_spending)
    assert all(2.3 < b < 2.5 for b in pocock)
    assert d.crossing_probability(pocock) == pytest.approx(0.025, abs=1e-6)


def test_repeated_looks_at_a_fixed_bound_inflate_the_false_rate():
    # Armitage, McPherson & Rowe (1969): 5 looks at 1.96 give 0.142 two-sided, 0.071 one-sided.
    assert d.crossing_probability([Z975] * 5) == pytest.approx(0.0710, abs=0.0005)
    # Pocock (1977): a constant 2.413 over 5 looks holds 0.05 two-sided.
    assert d.crossing_probability([2.413] * 5) == pytest.approx(0.025, abs=0.0002)


def test_a_single_look_is_the_fixed_sample_test():
    assert d.obrien_fleming_bounds(1) == pytest.approx([Z975], abs=1e-6)
    assert d.lan_demets_bounds(1) == pytest.approx([Z975], abs=1e-9)
    assert d.crossing_probability([math.inf, Z975]) == pytest.approx(0.025, abs=1e-6)
    with pytest.raises(ValueError):
        d.lan_demets_bounds([0.5, 0.4])
    with pytest.raises(ValueError):
        d.obrien_fleming_bounds(0)
