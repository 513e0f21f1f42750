"""Counts that automatic decisions take from every replica, not from one.

With N replicas behind a load balancer each sees 1/N of the traffic. N breakers each
testing their own share would run N tests, with N times the false-alarm rate, and a
rollout judged on one replica's counts would see a fraction of its canary. So with Redis
the request path only adds to a local tally (:class:`Outcomes`, and the rollouts' pending
evidence); every ``sync_interval`` each replica adds its tally to shared totals in Redis
(HINCRBY: nothing is lost or counted twice, whoever reads), and decisions are taken on
the totals' increments: by every replica for what it shows, acted on by the leader only.
"""

from __future__ import annotations

from dataclasses import fields

from proxy.control.rollout_state import ArmEvidence, Evidence

OUTCOME_FIELDS = ("canary.requests", "canary.failures", "stable.requests", "stable.failures")
EVIDENCE_FIELDS = tuple(f"{arm}.{f.name}" for arm in ("canary", "stable") for f in fields(ArmEvidence))

Tally = tuple[int, int, int, int]  # canary requests, canary failures, stable requests, stable failures


class Outcomes:
    """The breaker's and the probe's counts of this replica since the last flush."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: dict[str, list[int]] = {}

    def add(self, route: str, canary: bool, failed: bool) -> None:
        """One routed request's outcome: the only work on the request path."""
        tally = self.pending.get(route)
        if tally is None:
            tally = self.pending[route] = [0, 0, 0, 0]
        i = 0 if canary else 2
        tally[i] += 1
        tally[i + 1] += failed

    def take(self) -> dict[str, Tally]:
        taken, self.pending = self.pending, {}
        return {route: (t[0], t[1], t[2], t[3]) for route, t in taken.items()}


def outcome_fields(tally: Tally) -> dict[str, int]:
    return dict(zip(OUTCOME_FIELDS, tally))


def tally_of(row: dict[str, int]) -> Tally:
    c_n, c_f, s_n, s_f = (row.get(name, 0) for name in OUTCOME_FIELDS)
    return c_n, c_f, s_n, s_f


def increment(total: Tally, seen: Tally | None) -> Tally:
    """What a shared total gained since it was last seen (all of it the first time)."""
    if seen is None:
        return total
    c_n, c_f, s_n, s_f = (max(0, a - b) for a, b in zip(total, seen))
    return c_n, c_f, s_n, s_f


def evidence_fields(evidence: Evidence) -> dict[str, int]:
    out = {}
    for arm, counts in (("canary", evidence.canary), ("stable", evidence.stable)):
        for f in fields(ArmEvidence):
            out[f"{arm}.{f.name}"] = getattr(counts, f.name)
    return out


def evidence_of(row: dict[str, int]) -> Evidence:
    evidence = Evidence()
    for arm, counts in (("canary", evidence.canary), ("stable", evidence.stable)):
        for f in fields(ArmEvidence):
            setattr(counts, f.name, row.get(f"{arm}.{f.name}", 0))
    return evidence
