"""What a progressive rollout remembers: its plan, where it is, and the evidence so far.

All of it is persisted with the route state (a restart continues at the same step with
its evidence), so it is plain data with a JSON form; the logic lives in
:mod:`proxy.control.rollout` (moving) and :mod:`proxy.control.rollout_gate` (judging).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from proxy.control.decisions import CanarySPRT


class Phase(StrEnum):
    """``ollama_proxy_rollout_phase{phase}``: one series per phase, 1 for the current."""

    IDLE = "idle"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    STALLED = "stalled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ACTIVE_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.STALLED})
"""While a rollout is in one of these, it owns the route's weight."""


@dataclass
class ArmEvidence:
    """One arm's counts. ``warm``: successful requests that did not wait for a model load
    (the TTFT check's trials); ``slow``: those over the check's SLO."""

    requests: int = 0
    failures: int = 0
    warm: int = 0
    slow: int = 0
    load_waits: int = 0
    chats: int = 0  # chat requests with messages
    regenerations: int = 0
    ratings: int = 0  # answers rated (a re-rating replaces, never adds)
    negative: int = 0

    def add(self, other: "ArmEvidence") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_json(cls, data: Any) -> "ArmEvidence":
        data = data if isinstance(data, dict) else {}
        return cls(**{f.name: max(0, int(data.get(f.name, 0))) for f in fields(cls)})

    def rated(self, rating: str, replaced: str | None) -> None:
        """A rating of one of this arm's answers; ``replaced``: the one it replaces, if any."""
        if replaced is None:
            self.ratings += 1
        self.negative += (rating == "negative") - (replaced == "negative")


@dataclass
class Evidence:
    canary: ArmEvidence = field(default_factory=ArmEvidence)
    stable: ArmEvidence = field(default_factory=ArmEvidence)

    def add(self, other: "Evidence") -> None:
        self.canary.add(other.canary)
        self.stable.add(other.stable)

    def to_json(self) -> dict[str, Any]:
        return {"canary": asdict(self.canary), "stable": asdict(self.stable)}

    @classmethod
    def from_json(cls, data: Any) -> "Evidence":
        data = data if isinstance(data, dict) else {}
        return cls(ArmEvidence.from_json(data.get("canary")), ArmEvidence.from_json(data.get("stable")))


def sprt_to_json(test: CanarySPRT) -> dict[str, Any]:
    return {"llr": test.llr, "decision": test.decision, "canary_failures": test.canary_failures,
            "stable_failures": test.stable_failures, "canary_requests": test.canary_requests,
            "stable_requests": test.stable_requests, "uninformative": test.uninformative}


def sprt_from_json(data: Any, rate_ratio: float, alpha: float, floor: float | None) -> CanarySPRT:
    test = CanarySPRT(rate_ratio, alpha, floor=floor)
    if isinstance(data, dict):
        test.llr = float(data.get("llr", 0.0))
        test.decision = str(data.get("decision", test.decision))
        for name in ("canary_failures", "stable_failures", "canary_requests", "stable_requests", "uninformative"):
            setattr(test, name, int(data.get(name, 0)))
    return test


@dataclass
class Rollout:
    """One route's rollout. Times are wall-clock seconds (shown to people, persisted);
    ``step_elapsed`` counts only time the proxy was up, so a restart does not skip a step."""

    route: str
    canary: str
    plan: list[tuple[float, bool]]  # (weight, pause before it)
    interval: float
    min_requests: int
    on_complete: str
    salt: str
    started_at: float
    weight_before: float  # the route's weight before the rollout: `resume` after a failure restores it
    phase: Phase = Phase.PROGRESSING
    step: int = 0  # index into plan
    step_started_at: float = 0.0
    step_elapsed: float = 0.0
    pause_cleared: bool = False  # `rollout resume` let the step after a pause go ahead
    hold_at_end: bool = False  # on_complete: hold, and 100 % has passed: waiting for `rollout promote`
    total: Evidence = field(default_factory=Evidence)
    at_step: Evidence = field(default_factory=Evidence)
    before_full: Evidence | None = None  # stable's evidence before 100 %, what the last step compares with
    sprt: dict[str, dict[str, Any]] = field(default_factory=dict)  # check -> persisted CanarySPRT
    history: list[dict[str, Any]] = field(default_factory=list)
    config_seen: dict[str, Any] = field(default_factory=dict)  # the config's rollout definition last adopted
    ni_looks: int = 0  # non-inferiority looks taken at this step (each spends less of alpha)
    ni_last_look: float = 0.0  # step_elapsed at the last look
    reason: str = ""  # why it is in its phase (a hold, a rollback, a stall)
    need: dict[str, Any] = field(default_factory=dict)  # evidence still needed, for status

    @property
    def weight(self) -> float:
        return self.plan[self.step][0]

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def last_step(self) -> bool:
        return self.step == len(self.plan) - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "route": self.route, "canary": self.canary, "plan": [list(p) for p in self.plan],
            "interval": self.interval, "min_requests": self.min_requests, "on_complete": self.on_complete,
            "salt": self.salt, "started_at": self.started_at, "weight_before": self.weight_before,
            "phase": str(self.phase), "step": self.step, "step_started_at": self.step_started_at,
            "step_elapsed": self.step_elapsed, "pause_cleared": self.pause_cleared,
            "hold_at_end": self.hold_at_end, "total": self.total.to_json(), "at_step": self.at_step.to_json(),
            "before_full": self.before_full.to_json() if self.before_full else None,
            "sprt": self.sprt, "history": self.history, "reason": self.reason, "ni_looks": self.ni_looks,
            "ni_last_look": self.ni_last_look, "config_seen": self.config_seen,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Rollout":
        """A persisted rollout; ValueError when it cannot be trusted."""
        try:
            plan = [(float(w), bool(p)) for w, p in data["plan"]]
            if not plan or plan[-1][0] != 100.0 or not all(0 < w <= 100 for w, _ in plan):
                raise ValueError("plan must rise to 100")
            step = int(data["step"])
            if not 0 <= step < len(plan):
                raise ValueError("step out of range")
            before_full = data.get("before_full")
            return cls(
                route=str(data["route"]), canary=str(data["canary"]), plan=plan, interval=float(data["interval"]),
                min_requests=int(data["min_requests"]), on_complete=str(data.get("on_complete", "promote")),
                salt=str(data["salt"]), started_at=float(data["started_at"]),
                weight_before=float(data["weight_before"]), phase=Phase(data["phase"]), step=step,
                step_started_at=float(data.get("step_started_at", 0.0)),
                step_elapsed=float(data.get("step_elapsed", 0.0)), pause_cleared=bool(data.get("pause_cleared")),
                hold_at_end=bool(data.get("hold_at_end")), total=Evidence.from_json(data.get("total")),
                at_step=Evidence.from_json(data.get("at_step")),
                before_full=Evidence.from_json(before_full) if before_full else None,
                sprt=dict(data.get("sprt") or {}), history=list(data.get("history") or []),
                reason=str(data.get("reason", "")), ni_looks=int(data.get("ni_looks", 0)),
                ni_last_look=float(data.get("ni_last_look", 0.0)), config_seen=dict(data.get("config_seen") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"rollout of route {data.get('route')!r} is not valid: {exc}") from None
