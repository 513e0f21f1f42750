"""The rollout gate: may the canary go on, must it wait, or must it go back?

Pure judgement over counts, with the decision module's tests (issue 16), so it is tested
against hand-worked numbers and shared with the report:

* **Back, at once** when the sequential test on a check's stream (:class:`CanarySPRT`,
  valid at every look) says the canary is worse, when an absolute limit (``max``) is
  exceeded with significance (exact binomial tail at ``decisions.sequential.alpha``: the
  gate looks every tick, so a fixed-sample α would be spent many times over), or, at 100 %
  where stable has no traffic, when the canary is worse than stable's figures from before.
* **On** when the step has lasted ``interval`` and seen ``min_requests`` canary requests,
  and nothing above says "back". The last move, to 100 %, also needs **non-inferiority** on
  every check over the whole rollout (upper limit of canary − stable below the check's
  ``max_over_stable``): equal-looking arms with little traffic are not a pass. The gate
  looks at non-inferiority once the step is otherwise ready and then once per
  ``interval``, and look k spends ``α·6/(π²k²)`` of ``decisions.alpha`` (the terms sum to α),
  so waiting for more evidence cannot turn into a pass by repeated looks. A fixed-sample
  "worse" there holds the ramp; rolling back is the sequential test's job, which stays
  valid at every look (a fixed-sample test looked at every tick rolled back healthy
  canaries).
* **Wait** otherwise, saying for what: time, canary requests, or evidence (with the
  canary requests still needed and how long they take at the current canary rate). A
  wait longer than ``stall_after`` is a stall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from proxy.config import RolloutCheck, RolloutConfig
from proxy.control import decisions
from proxy.control.decisions import CanarySPRT, Outcome
from proxy.control.rollout_state import ArmEvidence, Rollout
from proxy.decision_settings import DecisionSettings

FAILURE_CHECK = "failure_ratio"
TTFT_CHECK = "ttft_over_slo"
REGENERATION_CHECK = "regeneration_ratio"
FEEDBACK_CHECK = "negative_feedback"
# check -> (events, trials) fields of ArmEvidence
COUNTS = {FAILURE_CHECK: ("failures", "requests"), TTFT_CHECK: ("slow", "warm"),
          REGENERATION_CHECK: ("regenerations", "chats"), FEEDBACK_CHECK: ("negative", "ratings")}

ROLLBACK, ADVANCE, HOLD = "rollback", "advance", "hold"


@dataclass(frozen=True)
class Check:
    """A check's name, its limits, and which counts it reads."""

    name: str
    limits: RolloutCheck

    def counts(self, arm: ArmEvidence) -> tuple[int, int]:
        """(events, trials): failures of requests, slow first tokens of warm successes,
        regenerations of chat requests, negative ratings of ratings."""
        events, trials = COUNTS[self.name]
        return getattr(arm, events), getattr(arm, trials)


def checks_of(config: RolloutConfig) -> list[Check]:
    out = [Check(FAILURE_CHECK, config.failure_ratio)]
    for name in (TTFT_CHECK, REGENERATION_CHECK, FEEDBACK_CHECK):
        limits = getattr(config, name)
        if limits is not None:
            out.append(Check(name, limits))
    return out


@dataclass
class GateResult:
    action: str  # ROLLBACK, ADVANCE or HOLD
    reason: str
    check: str | None = None  # the check that sent it back
    need_requests: int | None = None  # canary requests still needed at this step (HOLD)
    wait_seconds: float | None = None  # how long the wait takes at the current rate (HOLD; inf: no traffic)
    results: dict[str, str] = field(default_factory=dict)  # check -> worse, non_inferior, inconclusive, continue


def _ratio(events: int, trials: int) -> str:
    return f"{events}/{trials} ({events / trials:.1%})" if trials else "0/0"


def look_alpha(alpha: float, look: int) -> float:
    """The share of ``alpha`` that non-inferiority look ``look`` (1-based) may spend."""
    return alpha * 6.0 / (math.pi ** 2 * look ** 2)


def judge(rollout: Rollout, config: RolloutConfig, settings: DecisionSettings, tests: dict[str, CanarySPRT],
          canary_rate: float, ni_look: int = 1) -> GateResult:
    """The gate's verdict now. ``tests`` are the checks' sequential tests, fed by the caller;
    ``canary_rate`` is canary requests per second at this step (for the wait); ``ni_look``
    is the number of this non-inferiority look (0: not a look now, the last move waits)."""
    checks = checks_of(config)
    results = {c.name: "continue" for c in checks}
    # 1. Back, at once.
    for check in checks:
        test = tests.get(check.name)
        if test is not None and test.worse:
            results[check.name] = "worse"
            return GateResult(ROLLBACK, f"{check.name}: the sequential test finds the canary worse than stable "
                                        f"(log-likelihood ratio {test.llr:.1f} >= {test.threshold:.1f} after "
                                        f"{test.canary_failures} canary and {test.stable_failures} stable events)",
                              check.name, results=results)
        events, trials = check.counts(rollout.total.canary)
        limit = check.limits.max
        if limit is not None and trials and events / trials > limit:
            p = decisions.binomial_tail(events, trials, limit)
            if p < settings.sequential.alpha:
                results[check.name] = "worse"
                return GateResult(ROLLBACK, f"{check.name}: canary {_ratio(events, trials)} is above its limit "
                                            f"{limit:.1%} (binomial p {p:.1e} < {settings.sequential.alpha:g})",
                                  check.name, results=results)
        if rollout.last_step and rollout.before_full is not None:
            c_e, c_n = check.counts(rollout.at_step.canary)
            s_e, s_n = check.counts(rollout.before_full.stable)
            test100 = decisions.worse_test(c_e, c_n, s_e, s_n, alpha=settings.sequential.alpha)
            if test100 is not None and test100.worse:
                results[check.name] = "worse"
                return GateResult(ROLLBACK, f"{check.name}: at 100 % the canary's {_ratio(c_e, c_n)} is worse than "
                                            f"stable's {_ratio(s_e, s_n)} before ({test100.describe()})",
                                  check.name, results=results)
    # 2. Wait for time and requests at this step.
    elapsed, requests = rollout.step_elapsed, rollout.at_step.canary.requests
    time_left = max(0.0, rollout.interval - elapsed)
    missing = max(0, rollout.min_requests - requests)
    waits = [time_left, _seconds_for(missing, canary_rate)]
    reasons = []
    if time_left > 0:
        reasons.append(f"{time_left:.0f}s of the step's {rollout.interval:g}s left")
    if missing:
        reasons.append(f"{missing} more canary requests for the step's {rollout.min_requests}")
    need = missing
    # 3. The last move needs non-inferiority on every check, over the whole rollout.
    if rollout.step + 1 == len(rollout.plan) - 1 and not rollout.last_step:
        if reasons or ni_look == 0:
            if not reasons:
                reasons.append("waiting for the next non-inferiority look (one per interval)")
            return GateResult(HOLD, "; ".join(reasons), need_requests=need or None, wait_seconds=max(waits),
                              results=results)
        alpha = look_alpha(settings.alpha, ni_look)
        for check in checks:
            c_e, c_n = check.counts(rollout.total.canary)
            s_e, s_n = check.counts(rollout.total.stable)
            assess = decisions.assess_latency_slo if check.name == TTFT_CHECK else decisions.assess_failures
            verdict = assess(c_e, c_n, s_e, s_n, margin=check.limits.max_over_stable, alpha=alpha)
            results[check.name] = verdict.outcome.value.replace("-", "_")
            if verdict.outcome == Outcome.WORSE:
                reasons.append(f"{check.name} not shown non-inferior, looks worse (look {ni_look}: "
                               f"{verdict.reason}); the sequential test decides on a rollback")
                waits.append(math.inf)
            elif verdict.outcome == Outcome.INCONCLUSIVE:
                more = verdict.more_canary_requests
                if more is not None and check.name != FAILURE_CHECK and c_n:
                    more = math.ceil(more * max(1.0, rollout.total.canary.requests / c_n))
                reasons.append(f"{check.name} not yet shown non-inferior ({verdict.reason})")
                need = max(need, more) if more is not None else need
                waits.append(_seconds_for(more, canary_rate) if more is not None else math.inf)
    if reasons:
        return GateResult(HOLD, "; ".join(reasons), need_requests=need or None, wait_seconds=max(waits),
                          results=results)
    return GateResult(ADVANCE, "step passed", results=results)


def _seconds_for(requests: int | None, rate: float) -> float:
    if not requests:
        return 0.0
    return requests / rate if rate > 0 else math.inf
