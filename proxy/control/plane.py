"""The routing control plane: every change to a route goes through here.

Operators (admin API, CLI), the config reload, Alertmanager (webhook and reconcile) and
the circuit breaker all call the same few methods, so each change is validated the same
way, counted in ``ollama_proxy_route_changes_total{reason}``, reflected in the route
gauges, logged with its reason and persisted before the caller is told it happened.

Route states are immutable and replaced whole in the route table: a request that took
its decision before a change keeps it to the end, so no stream is cut by a switch.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from typing import Any, Callable

from proxy.config import ProxyConfig, RouteConfig
from proxy.control.rollout_state import ACTIVE_PHASES, Phase, Rollout
from proxy.control.routing import RouteState, RouteTable
from proxy.control.state import StateFile
from proxy.dataplane.instrument import canonical_model
from proxy.metrics import ROUTE_CHANGE_REASONS, SERVER_SIDE_ERRORS, Arm, ErrorType, ProxyMetrics, remove_series

log = logging.getLogger("ollama_sidecar.control")

PERSISTED_FIELDS = ("stable", "canary", "weight", "rolled_back", "reason", "since", "weight_before_rollback",
                    "probe_weight_after", "salt")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_state(data: dict[str, Any]) -> None:
    """Refuse a state file whose values would route traffic wrongly if trusted."""
    for name, fields in data.get("routes", {}).items():
        where = f"routes.{name}"
        if not isinstance(fields, dict):
            raise ValueError(f"{where} is not an object")
        if not isinstance(fields.get("stable"), str) or not fields["stable"]:
            raise ValueError(f"{where}.stable is not a model name")
        if fields.get("canary") is not None and not isinstance(fields["canary"], str):
            raise ValueError(f"{where}.canary is not a model name")
        for key, optional in (("weight", False), ("weight_before_rollback", True), ("probe_weight_after", True)):
            value = fields.get(key)
            if (value is None and not optional) or (value is not None and (not _finite(value) or not 0 <= value <= 100)):
                raise ValueError(f"{where}.{key} is not a weight between 0 and 100")
        if not isinstance(fields.get("salt", ""), str):
            raise ValueError(f"{where}.salt is not a string")
        if not isinstance(fields.get("rolled_back"), bool):
            raise ValueError(f"{where}.rolled_back is not true or false")
        if not isinstance(fields.get("reason"), str) or not _finite(fields.get("since")):
            raise ValueError(f"{where} has no valid reason and time")
        base = fields.get("config")
        if base is not None and not isinstance(base, dict):
            raise ValueError(f"{where}.config is not an object")
    acted = data.get("acted_alerts", [])
    if not isinstance(acted, list) or not all(isinstance(k, str) for k in acted):
        raise ValueError("acted_alerts is not a list of strings")


def _config_view(cfg: RouteConfig) -> dict[str, Any]:
    """What of a route's config the state file remembers, to notice edits made while down."""
    return {"stable": cfg.stable, "canary": cfg.canary, "canary_weight": cfg.canary_weight}
MAX_REMEMBERED_ALERTS = 1000


class RouteError(Exception):
    """A change that cannot be made; ``status`` is the HTTP status the admin API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ROLLOUT_STEP = "rollout_step"  # the reason of a rollout's own weight changes


def reason_label(reason: str) -> str:
    """The bounded label value of a reason: ``alert:OllamaCanaryErrorRateHigh`` stays, free
    text after ``admin:`` does not become a label."""
    head, _, tail = reason.partition(":")
    return f"alert:{tail}" if head == "alert" and tail else head


class ControlPlane:
    def __init__(self, config: ProxyConfig, routes: RouteTable, metrics: ProxyMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # wall time: `since` is shown to people and compared with alert times
        self.config = config
        self.routes = routes
        self.metrics = metrics
        self.state_file = StateFile(None if config.shared_state else config.state_file)
        self.acted_alerts: OrderedDict[str, float] = OrderedDict()  # fingerprint@startsAt
        self.last_reload_error: str | None = None
        self.last_reload_at: float | None = None
        self.rollouts: dict[str, Rollout] = {}  # route -> its rollout, running or the last one
        # With Redis (proxy.replicas) there is no state file: changes are marked here and the
        # replica writes them, all of one change at once; acted alerts likewise.
        self.shared = config.shared_state is not None
        self.dirty: set[str] = set()
        self.new_alerts: list[str] = []
        self.uncounted: list[tuple[str, str]] = []  # (route, reason) of changes not yet in Redis
        self._load_state()
        for state in self.routes.routes.values():
            self._export(state)

    # --- persistence ------------------------------------------------------------------------
    def _load_state(self) -> None:
        data, problem = self.state_file.load(validate_state)
        if problem is not None:
            self.metrics.state_errors.labels("corrupt").inc()
        self.adopt_saved(data)
        if data.get("routes"):
            log.info("loaded route state from %s: %s", self.state_file.path, ", ".join(
                f"{s.name}{' (rolled back: ' + s.reason + ')' if s.rolled_back else ''}"
                for s in self.routes.routes.values()))

    def adopt_saved(self, data: dict[str, Any]) -> None:
        """Take saved state (a state file's, validated) as this plane's: its routes, rollouts
        and acted alerts. Routes the config no longer has are ignored."""
        for name, fields in data.get("routes", {}).items():
            if name not in self.routes.routes:
                log.warning("state file has route %r, which the config no longer defines; ignored", name)
                continue
            self.install_route(name, fields, (data.get("rollouts") or {}).get(name))
        for key in data.get("acted_alerts", []):
            self.acted_alerts[str(key)] = 0.0

    def install_route(self, name: str, fields: dict[str, Any], rollout: dict[str, Any] | None) -> bool:
        """Make saved fields (a state file's, or another replica's through Redis) this route's
        state. A config edited since they were saved wins, and a rollback stays; returns
        True when it did, so the caller can write the config's values back."""
        current = self.routes.routes[name]
        restored = replace(current, **{k: fields[k] for k in PERSISTED_FIELDS if k in fields})
        cfg = self.config.routes[name]
        edited = fields.get("config") not in (None, _config_view(cfg))
        if edited:
            log.warning("route %s: config changed since the state was saved; using the config "
                        "(stable=%s canary=%s weight=%g)%s", name, cfg.stable, cfg.canary,
                        cfg.canary_weight, ", still rolled back" if restored.rolled_back else "")
            in_rollout = isinstance(rollout, dict) and rollout.get("phase") in {str(p) for p in ACTIVE_PHASES}
            restored = restored.with_config(cfg)
            if in_rollout:  # the rollout owns the weight (as on a reload)
                restored = replace(restored, weight=float(fields["weight"]), canary=fields.get("canary"),
                                   salt=str(fields.get("salt", "")))
            if restored.rolled_back:
                restored = replace(restored, weight=0.0, weight_before_rollback=cfg.canary_weight)
        self.routes.routes[name] = restored
        self._export(restored, current)
        self.rollouts.pop(name, None)
        if isinstance(rollout, dict):
            try:
                self.rollouts[name] = Rollout.from_json(rollout)
            except ValueError as exc:
                log.error("saved state: %s; the rollout is dropped, the route keeps its saved weight", exc)
        return edited

    def route_record(self, name: str) -> dict[str, Any]:
        """What is saved of a route: its state fields, the config they were made under, its rollout."""
        state = self.routes.routes[name]
        rollout = self.rollouts.get(name)
        return {**{k: getattr(state, k) for k in PERSISTED_FIELDS}, "config": _config_view(self.config.routes[name]),
                "rollout": None if rollout is None else rollout.to_json()}

    def save(self) -> None:
        """Persist now (the rollout controller saves its evidence now and then)."""
        self.dirty.update(name for name in self.rollouts if name in self.config.routes)
        self._save()

    def _save(self) -> None:
        if self.shared:
            return  # proxy.replicas writes the dirty routes to Redis
        data = {"routes": {name: {**{k: getattr(s, k) for k in PERSISTED_FIELDS},
                                  "config": _config_view(self.config.routes[name])}
                           for name, s in self.routes.routes.items() if name in self.config.routes},
                "acted_alerts": list(self.acted_alerts),
                "rollouts": {name: r.to_json() for name, r in self.rollouts.items() if name in self.config.routes}}
        try:
            self.state_file.save(data)
        except OSError as exc:
            self.metrics.state_errors.labels("write").inc()
            log.error("could not write state file %s: %s; the change is live but will not "
                      "survive a restart", self.state_file.path, exc)

    # --- metrics ----------------------------------------------------------------------------
    def _export(self, state: RouteState, previous: RouteState | None = None) -> None:
        m = self.metrics
        if previous is not None and (previous.stable, previous.canary) != (state.stable, state.canary):
            remove_series(m.route_info, previous.name, previous.stable, previous.canary or "")
        m.route_info.labels(state.name, state.stable, state.canary or "").set(1)
        # Zero-valued series for what alerts and dashboards take rates and increases of: a
        # series born at 1 hides its first increment from rate() and increase().
        for arm, model in ((Arm.STABLE, state.stable), (Arm.CANARY, state.canary)):
            if model:
                for upstream in self._servers_for(model):
                    for error_type in (ErrorType.NONE, *sorted(SERVER_SIDE_ERRORS)):
                        m.route_requests.labels(state.name, arm, canonical_model(model), upstream, error_type)
                m.model_load_waits.labels(state.name, arm, canonical_model(model))
                # The quality signals' counters start at 0 too (their ratios feed a rollback alert).
                for metric in (m.regenerations, m.client_retries):
                    metric.labels(state.name, arm, canonical_model(model))
                for rating in ("positive", "negative"):
                    m.feedback.labels(state.name, arm, canonical_model(model), rating)
                    m.feedback_retracted.labels(state.name, arm, canonical_model(model), rating)
        for arm in (Arm.STABLE, Arm.CANARY):
            for event in ("started", "expired", "overflow"):
                m.sessions.labels(state.name, arm, event)
            m.active_sessions.labels(state.name, arm)
            m.session_duration.labels(state.name, arm)
            m.session_requests.labels(state.name, arm)
            for endpoint in ("/api/chat", "/v1/chat/completions"):
                m.conversation_turns.labels(endpoint, state.name, arm)
        for reason in ROUTE_CHANGE_REASONS:
            m.route_changes.labels(state.name, reason)
        m.route_canary_weight.labels(state.name).set(state.effective_weight)
        m.route_rolled_back.labels(state.name).set(1 if state.rolled_back else 0)

    def _servers_for(self, model: str) -> tuple[str, ...]:
        """The servers that may serve ``model``: its pinned ones, else every shared one."""
        pins = self.config.model_pins.get(model) or self.config.model_pins.get(canonical_model(model))
        return pins or tuple(s.name for s in self.config.servers.values() if not s.dedicated)

    def _commit(self, new: RouteState, reason: str) -> RouteState:
        old = self.routes.routes[new.name]
        new = replace(new, reason=reason, since=self.clock())
        self.routes.routes[new.name] = new
        self.dirty.add(new.name)
        if self.shared:
            self.uncounted.append((new.name, reason_label(reason)))  # counted once Redis has it
        else:
            self.metrics.route_changes.labels(new.name, reason_label(reason)).inc()
        self._export(new, old)
        self._save()
        log.warning("route %s changed (%s): stable=%s canary=%s weight=%g effective=%g rolled_back=%s",
                    new.name, reason, new.stable, new.canary, new.weight, new.effective_weight, new.rolled_back)
        return new

    # --- operations -------------------------------------------------------------------------
    def get(self, name: str) -> RouteState:
        state = self.routes.routes.get(name)
        if state is None:
            known = ", ".join(sorted(self.routes.routes)) or "none configured"
            raise RouteError(404, f"unknown route {name!r} (known: {known})")
        return state

    def set_route(self, name: str, *, stable: str | None = None, canary: str | None | type[...] = ...,
                  weight: float | None = None, reason: str = "admin") -> RouteState:
        state = self.get(name)
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.active and reason != ROLLOUT_STEP \
                and (weight is not None or (canary is not ... and canary != state.canary)):
            raise RouteError(409, f"route {name!r} is in a rollout ({rollout.phase}, step {rollout.step + 1} of "
                                  f"{len(rollout.plan)}, {rollout.weight:g}%), which owns its weight and canary: "
                                  "use `ollama-sidecar rollout pause|promote|abort`")
        new_canary = state.canary if canary is ... else canary
        if weight is not None and not 0 <= weight <= 100:
            raise RouteError(400, f"canary_weight must be between 0 and 100, got {weight:g}")
        new_weight = state.weight if weight is None else float(weight)
        if new_canary is None and canary is not ... and weight is None:
            new_weight = 0.0
        if new_canary is None and new_weight > 0:
            raise RouteError(400, f"route {name!r} has no canary: cannot send {new_weight:g}% to it")
        # An operator's change ends a running probe: what they set is what they want.
        new = replace(state, stable=stable or state.stable, canary=new_canary, weight=new_weight,
                      probe_weight_after=None if weight is not None or new_canary != state.canary
                      else state.probe_weight_after)
        if new.rolled_back and weight is not None:
            # Still rolled back: the new weight is what `resume` will restore.
            new = replace(new, weight=0.0, weight_before_rollback=new_weight)
        return self._commit(new, reason)

    def rollback(self, name: str, reason: str) -> tuple[RouteState, bool]:
        """Send all of a route's traffic to stable. Returns (state, changed)."""
        state = self.get(name)
        if state.rolled_back:
            return state, False
        # A probe that fails goes back to where the rollback before it left off.
        before = state.weight if state.probe_weight_after is None else state.probe_weight_after
        salt = state.salt
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.active:
            # Any rollback ends a rollout on the spot (an alert, the breaker, an operator, its
            # own gate); a later `resume` restores the weight from before the rollout.
            before, salt = rollout.weight_before, ""
            rollout.phase = Phase.FAILED
            rollout.reason = rollout.reason if reason == "rollout" else f"rolled back: {reason}"
            rollout.history.append({"event": "failed", "weight": rollout.weight, "at": self.clock(),
                                    "reason": rollout.reason})
        new = replace(state, rolled_back=True, weight_before_rollback=before, weight=0.0, probe_weight_after=None,
                      salt=salt)
        return self._commit(new, reason), True

    def resume(self, name: str, reason: str = "resume", *, probe: bool = False) -> RouteState:
        """Undo a rollback. With ``probe`` (auto-resume) the canary first gets at most
        ``decisions.probe_weight`` % until the probe passes (:mod:`proxy.control.probe`)."""
        state = self.get(name)
        if not state.rolled_back:
            raise RouteError(409, f"route {name!r} is not rolled back")
        restored = state.weight_before_rollback if state.weight_before_rollback is not None else state.weight
        restored = restored if state.canary else 0.0
        probe_weight = self.config.decisions.probe_weight
        if probe and restored > probe_weight:
            new = replace(state, rolled_back=False, weight=probe_weight, weight_before_rollback=None,
                          probe_weight_after=restored)
        else:
            new = replace(state, rolled_back=False, weight=restored, weight_before_rollback=None)
        return self._commit(new, reason)

    def end_probe(self, name: str, passed: bool, why: str) -> None:
        """The probe's verdict: the canary's weight back, or a rollback (reason ``probe``)."""
        state = self.routes.routes.get(name)
        if state is None or state.probe_weight_after is None or state.rolled_back:
            return
        if passed:
            self._commit(replace(state, weight=state.probe_weight_after, probe_weight_after=None), "probe")
        else:
            self.rollback(name, "probe")

    def start_rollout(self, rollout: Rollout) -> RouteState:
        """Hand a route to a rollout: its canary, first weight and salt in one change."""
        state = self.get(rollout.route)
        new = replace(state, canary=rollout.canary, weight=rollout.weight, salt=rollout.salt, rolled_back=False,
                      weight_before_rollback=None, probe_weight_after=None)
        self.rollouts[rollout.route] = rollout
        return self._commit(new, ROLLOUT_STEP)

    def promote(self, name: str) -> RouteState:
        state = self.get(name)
        if not state.canary:
            raise RouteError(409, f"route {name!r} has no canary to promote")
        new = replace(state, stable=state.canary, canary=None, weight=0.0, rolled_back=False,
                      weight_before_rollback=None, probe_weight_after=None, salt="")
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.active:
            rollout.phase = Phase.SUCCEEDED
            rollout.reason = "promoted"
            rollout.history.append({"event": "promoted", "weight": 100.0, "at": self.clock()})
        return self._commit(new, "promote")

    # --- alerts -----------------------------------------------------------------------------
    def remember_alert(self, key: str) -> bool:
        """True the first time an alert instance (fingerprint@startsAt) is seen."""
        if key in self.acted_alerts:
            return False
        self.acted_alerts[key] = self.clock()
        if self.shared:
            self.new_alerts.append(key)
        while len(self.acted_alerts) > MAX_REMEMBERED_ALERTS:
            self.acted_alerts.popitem(last=False)
        return True

    # --- config reload ----------------------------------------------------------------------
    def apply_config(self, new_config: ProxyConfig, old_config: ProxyConfig) -> list[str]:
        """Adopt a validated config. Routes whose config changed take the new values (a
        rolled-back route stays rolled back); routes whose config did not change keep what
        operators did to them. Returns the names of changed routes."""
        changed = []
        table = self.routes
        table.config = new_config
        self.config = new_config
        for name in list(table.routes):
            if name not in new_config.routes:
                old = table.routes.pop(name)
                for metric in (self.metrics.route_canary_weight, self.metrics.route_rolled_back):
                    remove_series(metric, name)
                remove_series(self.metrics.route_info, name, old.stable, old.canary or "")
                changed.append(name)
        for name, cfg in new_config.routes.items():
            current = table.routes.get(name)
            if current is None:
                table.routes[name] = RouteState.from_config(name, cfg)
                self._export(table.routes[name])
                self.metrics.route_changes.labels(name, "config").inc()
                changed.append(name)
                continue
            if old_config.routes.get(name) == cfg:
                continue
            new = current.with_config(cfg)
            rollout = self.rollouts.get(name)
            if rollout is not None and rollout.active:
                # The rollout owns the weight: an edited canary_weight is recorded (status
                # shows it) and applies once the rollout is over.
                new = replace(new, weight=current.weight, canary=current.canary, salt=current.salt)
            if current.rolled_back:
                new = replace(new, rolled_back=True, weight=0.0, weight_before_rollback=cfg.canary_weight)
            self._commit(new, "config")
            changed.append(name)
        if changed:
            self._save()
        return changed

    # --- views ------------------------------------------------------------------------------
    def describe(self, state: RouteState) -> dict[str, Any]:
        d = asdict(state)
        d["effective_weight"] = state.effective_weight
        d["breaker"] = asdict(state.breaker)
        d["configured_weight"] = self.config.routes[state.name].canary_weight if state.name in self.config.routes \
            else None
        rollout = self.rollouts.get(state.name)
        d["rollout"] = None if rollout is None else {"phase": str(rollout.phase), "step": rollout.step + 1,
                                                     "steps": len(rollout.plan), "weight": rollout.weight,
                                                     "reason": rollout.reason}
        return d
