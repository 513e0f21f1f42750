"""Route aliases and the stable/canary split (the data-plane half of routing).

A client asks for a route alias (``chat``); the proxy picks an arm and rewrites the
model. With a session key the choice is ``hash(route, key)`` mapped onto [0, 100) and
compared with the canary weight: a session keeps its arm for as long as the weight
allows, and changing the weight only moves the sessions between the old and the new
weight, never reshuffles the rest. Without a key the choice is a weighted draw.

A :class:`Decision` is taken once per request and carried to the end of it, so a route
change never affects a request (or a stream) already in flight.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field, replace
from typing import Mapping

from proxy.config import BreakerConfig, ProxyConfig, RouteConfig
from proxy.metrics import NO_ROUTE, Arm


@dataclass(frozen=True)
class Decision:
    route: str  # alias, or NO_ROUTE when a concrete model was asked for
    arm: Arm
    model: str  # the model that serves the request
    upstream: str  # base URL of the Ollama that serves it
    server: str = ""  # that Ollama's name in the config (set once the fleet chose it)
    request_id: str = ""  # X-Request-ID of the answer (feedback names it)


@dataclass(frozen=True)
class RouteState:
    """A route as it is now: its config plus what operators and automation did to it."""

    name: str
    stable: str
    canary: str | None
    weight: float
    rolled_back: bool = False
    reason: str = "config"
    since: float = field(default_factory=time.time)
    weight_before_rollback: float | None = None
    # Auto-resume's probe (proxy.control.probe): the weight the canary gets back once it
    # passed; None when no probe runs.
    probe_weight_after: float | None = None
    # A rollout's hash salt, fixed for its duration, so the same users are not always the
    # first to meet every new model; "" outside rollouts (the split sessions had before).
    salt: str = ""
    auto_resume: bool = False
    session_sources: tuple[str, ...] | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    @property
    def effective_weight(self) -> float:
        return 0.0 if self.rolled_back or not self.canary else self.weight

    @classmethod
    def from_config(cls, name: str, cfg: RouteConfig) -> "RouteState":
        return cls(name=name, stable=cfg.stable, canary=cfg.canary, weight=cfg.canary_weight,
                   auto_resume=cfg.auto_resume, session_sources=cfg.session_sources, breaker=cfg.breaker)

    def with_config(self, cfg: RouteConfig) -> "RouteState":
        """Apply a reloaded config without undoing a rollback."""
        return replace(self, stable=cfg.stable, canary=cfg.canary, weight=cfg.canary_weight,
                       auto_resume=cfg.auto_resume, session_sources=cfg.session_sources,
                       breaker=cfg.breaker)


def bucket(route: str, key: str, salt: str = "") -> float:
    """Where a session falls on [0, 100) for a route; stable across processes and restarts.
    A session is on the canary while its point is below the weight, so a rising weight
    only ever moves sessions from stable to the canary."""
    name = f"{route}\x00{salt}" if salt else route
    digest = hashlib.blake2b(f"{name}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


def choose_arm(state: RouteState, session_key: str | None, rng: random.Random = random._inst) -> Arm:  # type: ignore[attr-defined]
    weight = state.effective_weight
    if weight <= 0:
        return Arm.STABLE
    if weight >= 100:
        return Arm.CANARY
    point = bucket(state.name, session_key, state.salt) if session_key else rng.random() * 100.0
    return Arm.CANARY if point < weight else Arm.STABLE


class RouteTable:
    """The live routes. Replaced entries are new immutable objects, so readers never lock."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.routes: dict[str, RouteState] = {
            name: RouteState.from_config(name, cfg) for name, cfg in config.routes.items()}

    def decide(self, requested: str, session_key: str | None, request_id: str = "") -> Decision:
        state = self.routes.get(requested)
        if state is None:
            return Decision(NO_ROUTE, Arm.DIRECT, requested, self.config.upstream_for(requested), "", request_id)
        arm = choose_arm(state, session_key)
        model = state.canary if arm == Arm.CANARY and state.canary else state.stable
        return Decision(state.name, arm, model, self.config.upstream_for(model), "", request_id)

    def session_sources(self, requested: str) -> tuple[str, ...] | None:
        state = self.routes.get(requested)
        return state.session_sources if state is not None else None

    def aliases(self) -> Mapping[str, RouteState]:
        return self.routes
