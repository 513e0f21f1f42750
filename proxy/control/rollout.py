"""Progressive rollouts: the canary's weight climbs 1 → 5 → 20 → 50 → 100 % while it stays
healthy, and the route rolls back the moment it is not.

The request path only counts (:meth:`Rollouts.observe`: a few integer additions per
request of a route in a rollout); a background task (:meth:`Rollouts.run`) takes those
counts every ``rollout_tick``, adds them to the rollout's evidence, feeds each check's
sequential test with them, asks the gate (:mod:`proxy.control.rollout_gate`) and acts:
next step, hold, stall, or rollback. Every weight change goes through the control plane
(reason ``rollout_step``), so it is counted, exported and persisted like any other; while
a rollout runs, the plane refuses anyone else's weight change.

Sessions only ever move from stable to the canary: the split is a hash of the session
against the weight (:func:`proxy.control.routing.bucket`), salted per rollout, so a user
who reached the canary stays there for the whole ramp, and the next rollout's first
users are other users.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
from dataclasses import fields, replace
from typing import Any, Callable

import aiohttp

from proxy.config import PAUSE, RolloutConfig
from proxy.control import rollout_source as source
from proxy.control.decisions import CanarySPRT
from proxy.control.plane import ROLLOUT_STEP, ControlPlane, RouteError
from proxy.control.rollout_gate import ADVANCE, ROLLBACK, checks_of, judge
from proxy.control.rollout_state import ACTIVE_PHASES, Evidence, Phase, Rollout, sprt_from_json, sprt_to_json
from proxy.control.routing import Decision
from proxy.dataplane.instrument import RequestRecord
from proxy.decision_settings import DecisionSettings
from proxy.metrics import ARM_FAILURES, NOT_EVIDENCE, Arm, ProxyMetrics

log = logging.getLogger("ollama_sidecar.rollout")

SAVE_EVERY = 30.0  # seconds between two saves of the evidence (phase and step changes save at once)
PROMETHEUS_EVERY = 5.0  # seconds between two reads of Prometheus for a rollout that analyses on it


def definition(cfg: RolloutConfig) -> dict[str, Any]:
    """The parts of a rollout's config that shape its ramp (what a reload may change)."""
    return {"steps": [s if s == PAUSE else float(s) for s in cfg.steps], "interval": cfg.interval,
            "min_requests": cfg.min_requests, "on_complete": cfg.on_complete}


def rollout_config(plane: ControlPlane, route: str, *, steps: list[float | str] | None = None,
                   interval: float | None = None) -> RolloutConfig:
    """The route's configured rollout (defaults when it has none) with the start's overrides."""
    cfg = plane.config.routes[route].rollout or RolloutConfig()
    if steps is not None:
        cfg = replace(cfg, steps=tuple(steps))
    if interval is not None:
        cfg = replace(cfg, interval=float(interval))
    return cfg


class Rollouts:
    """Every route's rollout: operations (start, pause, resume, promote, abort), status,
    counting on the request path, and the periodic analysis."""

    def __init__(self, plane: ControlPlane, metrics: ProxyMetrics, settings: Callable[[], DecisionSettings],
                 notify: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 new_salt: Callable[[], str] = lambda: secrets.token_hex(8)) -> None:
        self.plane = plane
        self.new_salt = new_salt
        self.metrics = metrics
        self.settings = settings
        self.notify = notify or (lambda event: None)
        self.clock = clock
        self.monotonic = monotonic
        self.pending: dict[str, Evidence] = {}  # counted since the last tick
        self.tests: dict[str, dict[str, CanarySPRT]] = {}
        self.rates: dict[str, float] = {}  # canary requests per second at the current step
        self._last_tick: float | None = None
        self._last_save = monotonic()
        # analysis: {prometheus: URL}: the counts read since the last tick, or why they could not be
        self.fetched: dict[str, tuple[Evidence, Evidence]] = {}
        self.unavailable: dict[str, str] = {}
        self._last_refresh: float | None = None
        # With Redis (proxy.replicas): every replica's counts per running rollout, summed; the
        # leader's tick judges on these instead of this replica's own pending counts.
        self.shared_totals: dict[str, Evidence] | None = None
        # Seconds between two saves of the evidence; with Redis shorter, since a new leader
        # continues from the last save (its step time; the counts themselves are in Redis).
        self.save_every = SAVE_EVERY
        # (phase, step) last announced per route: a rollout ended by someone else (an alert,
        # the breaker, `rollback`, `promote`) is announced at the next tick.
        self._announced: dict[str, tuple[str, int]] = {
            route: (str(r.phase), r.step) for route, r in plane.rollouts.items()}
        self._exported: set[str] = set()
        for route in plane.routes.routes:
            self._export(route)

    # --- the request path: counting only ---------------------------------------------------------
    def observe(self, decision: Decision, rec: RequestRecord) -> None:
        rollout = self.plane.rollouts.get(decision.route)
        if rollout is None or not rollout.active or rec.error_type in NOT_EVIDENCE or decision.arm == Arm.DIRECT:
            return
        pending = self.pending.get(decision.route)
        if pending is None:
            pending = self.pending[decision.route] = Evidence()
        arm = pending.canary if decision.arm == Arm.CANARY else pending.stable
        arm.requests += 1
        if rec.error_type in ARM_FAILURES:
            arm.failures += 1
        if rec.load_wait:
            arm.load_waits += 1
        elif rec.ttft is not None:
            arm.warm += 1
            cfg = self._config(decision.route)
            if cfg.ttft_over_slo is not None and rec.ttft > (cfg.ttft_over_slo.slo or 0.0):
                arm.slow += 1
        arm.chats += rec.chat
        arm.regenerations += rec.regenerated

    def rated(self, route: str, arm: str, rating: str, replaced: str | None) -> None:
        """A rating arrived for an answer of ``route`` (the feedback store calls this)."""
        rollout = self.plane.rollouts.get(route)
        if rollout is None or not rollout.active or arm not in (Arm.STABLE, Arm.CANARY):
            return
        pending = self.pending.get(route)
        if pending is None:
            pending = self.pending[route] = Evidence()
        (pending.canary if arm == Arm.CANARY else pending.stable).rated(rating, replaced)

    # --- operations ------------------------------------------------------------------------------
    def start(self, route: str, *, canary: str | None = None, steps: list[float | str] | None = None,
              interval: float | None = None) -> Rollout:
        plane = self.plane
        state = plane.get(route)
        current = plane.rollouts.get(route)
        if current is not None and current.active:
            raise RouteError(409, f"route {route!r} already has a rollout ({current.phase}, step "
                                  f"{current.step + 1} of {len(current.plan)}); abort it first")
        model = canary or state.canary
        if not model:
            raise RouteError(400, f"route {route!r} has no canary: give one (--canary MODEL)")
        if model == state.stable:
            raise RouteError(400, f"the canary {model!r} is route {route!r}'s stable model")
        cfg = rollout_config(plane, route, steps=steps, interval=interval)
        now = self.clock()
        rollout = Rollout(route=route, canary=model, plan=cfg.plan(), interval=cfg.interval,
                          min_requests=cfg.min_requests, on_complete=cfg.on_complete, salt=self.new_salt(),
                          started_at=now, weight_before=0.0 if state.rolled_back else state.weight,
                          step_started_at=now, config_seen=definition(self._config(route)))
        rollout.history.append({"event": "started", "weight": rollout.weight, "at": now, "canary": model})
        self._reset_tests(route, rollout)
        self.pending.pop(route, None)
        plane.start_rollout(rollout)
        self._event(rollout, "started", f"rollout of {model} on route {route} started at {rollout.weight:g}%")
        return rollout

    def pause(self, route: str) -> Rollout:
        rollout = self._active(route)
        rollout.phase, rollout.reason = Phase.PAUSED, "paused by an operator"
        self._event(rollout, "paused", f"rollout on route {route} paused at {rollout.weight:g}%")
        return rollout

    def resume(self, route: str) -> Rollout:
        rollout = self._active(route)
        if rollout.phase != Phase.PAUSED:
            raise RouteError(409, f"the rollout on route {route!r} is {rollout.phase}, not paused")
        if rollout.hold_at_end:
            raise RouteError(409, f"the rollout on route {route!r} is at 100 % waiting for `rollout promote`")
        rollout.phase, rollout.pause_cleared, rollout.reason = Phase.PROGRESSING, True, "resumed by an operator"
        self._event(rollout, "resumed", f"rollout on route {route} resumed at {rollout.weight:g}%")
        return rollout

    def promote(self, route: str, *, full: bool = False) -> Rollout:
        """The next step now (the gate's time and request minimums waived), or 100 % and
        promotion with ``full``. The sequential tests keep watching until the end."""
        rollout = self._active(route)
        if full or rollout.last_step:
            self.plane.promote(route)
            self._event(rollout, "promoted", f"rollout on route {route}: {rollout.canary} promoted to stable "
                                             "by an operator")
            return rollout
        rollout.phase, rollout.pause_cleared = Phase.PROGRESSING, True
        self._advance(rollout, "promoted to the next step by an operator")
        return rollout

    def abort(self, route: str) -> Rollout:
        rollout = self._active(route)
        self.plane.rollback(route, "rollout")
        rollout.reason = "aborted by an operator"
        self._event(rollout, "failed", f"rollout on route {route} aborted by an operator; traffic back on stable")
        return rollout

    def _active(self, route: str) -> Rollout:
        self.plane.get(route)
        rollout = self.plane.rollouts.get(route)
        if rollout is None or not rollout.active:
            phase = "none" if rollout is None else str(rollout.phase)
            raise RouteError(409, f"route {route!r} has no running rollout (last: {phase})")
        return rollout

    # --- the analysis, off the request path -------------------------------------------------------
    def tick(self) -> None:
        """Take the counts since the last tick into every running rollout, judge, act."""
        now_m = self.monotonic()
        dt = 0.0 if self._last_tick is None else max(0.0, now_m - self._last_tick)
        self._last_tick = now_m
        for route in self.plane.routes.routes.keys() - self._exported:
            self._export(route)  # a route added by a reload: its phase is idle, not absent
        for route, rollout in list(self.plane.rollouts.items()):
            if route not in self.plane.routes.routes:
                continue
            if not rollout.active:
                self.pending.pop(route, None)
                if self._announced.get(route) != (str(rollout.phase), rollout.step):
                    self._event(rollout, str(rollout.phase), f"rollout of {rollout.canary} on route {route} "
                                                             f"{rollout.phase} at {rollout.weight:g}%: {rollout.reason}")
                self._export(route)
                continue
            state = self.plane.get(route)
            if state.rolled_back:  # rolled back by someone else between two ticks
                self._export(route)
                continue
            rollout.step_elapsed += dt
            if self._config(route).analysis_prometheus:
                fresh = self._from_prometheus(rollout)
                if fresh is None:
                    self._export(route)
                    continue
            elif self.shared_totals is not None:
                fresh = self._from_shared(rollout)
            else:
                fresh = self.pending.pop(route, None) or Evidence()
                rollout.total.add(fresh)
                rollout.at_step.add(fresh)
            if dt > 0:
                self.rates[route] = rollout.at_step.canary.requests / max(rollout.step_elapsed, 1e-9)
            tests = self._tests(route, rollout)
            for check in checks_of(self._config(route)):
                # A re-rating can take a negative rating back: the sequential test only ever
                # sees events that happened (counts below zero are left out).
                c_e, c_n = (max(0, x) for x in check.counts(fresh.canary))
                s_e, s_n = (max(0, x) for x in check.counts(fresh.stable))
                tests[check.name].observe_interval(c_n, min(c_e, c_n), s_n, min(s_e, s_n))
            rollout.sprt = {name: sprt_to_json(test) for name, test in tests.items()}
            self._judge(rollout)
            self._export(route)
        if now_m - self._last_save >= self.save_every:
            self._last_save = now_m
            self.plane.save()

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        """Read Prometheus for the running rollouts that analyse on it (at most every
        PROMETHEUS_EVERY seconds); :meth:`tick` takes what was read."""
        now_m = self.monotonic()
        if self._last_refresh is not None and now_m - self._last_refresh < PROMETHEUS_EVERY:
            return
        self._last_refresh = now_m
        now = self.clock()
        for route, rollout in list(self.plane.rollouts.items()):
            cfg = self._config(route)
            if not rollout.active or not cfg.analysis_prometheus:
                continue
            slo = cfg.ttft_over_slo.slo if cfg.ttft_over_slo else None
            try:
                total = await source.evidence(session, cfg.analysis_prometheus, route, now - rollout.started_at, slo)
                at_step = await source.evidence(session, cfg.analysis_prometheus, route,
                                                now - rollout.step_started_at, slo)
            except source.PrometheusUnavailable as exc:
                self.unavailable[route] = str(exc)
                self.fetched.pop(route, None)
                continue
            self.unavailable.pop(route, None)
            self.fetched[route] = (total, at_step)

    def _from_prometheus(self, rollout: Rollout) -> Evidence | None:
        """What Prometheus counted since the last read (for the sequential tests), with the
        rollout's evidence replaced by Prometheus's; None: nothing new to judge on."""
        route = rollout.route
        self.pending.pop(route, None)  # this proxy's own counts are not the evidence here
        if route in self.unavailable:
            if rollout.phase == Phase.PROGRESSING:
                rollout.reason = f"holding: {self.unavailable[route]}"
            return None
        fetched = self.fetched.pop(route, None)
        if fetched is None:
            return None
        total, at_step = fetched
        fresh = Evidence()
        for mine, theirs, delta in ((rollout.total.canary, total.canary, fresh.canary),
                                    (rollout.total.stable, total.stable, fresh.stable)):
            for name in ("requests", "failures", "warm", "slow", "load_waits"):
                setattr(delta, name, max(0, getattr(theirs, name) - getattr(mine, name)))
        rollout.total, rollout.at_step = total, at_step
        return fresh

    def _from_shared(self, rollout: Rollout) -> Evidence:
        """What every replica counted since the evidence was last taken in: the shared total
        less the rollout's own. A new leader takes over the saved evidence and gets the rest
        from the totals, so nothing is lost or counted twice."""
        assert self.shared_totals is not None
        total = self.shared_totals.get(rollout.route)
        fresh = Evidence()
        if total is None:
            return fresh
        for mine, theirs, delta in ((rollout.total.canary, total.canary, fresh.canary),
                                    (rollout.total.stable, total.stable, fresh.stable)):
            for f in fields(delta):
                diff = getattr(theirs, f.name) - getattr(mine, f.name)
                setattr(delta, f.name, diff if f.name == "negative" else max(0, diff))  # a re-rating can lower it
        rollout.total.add(fresh)
        rollout.at_step.add(fresh)
        return fresh

    def pause_timing(self) -> None:
        """Time from here to the next tick is not time at the step (a replica that does not
        lead, or has just started to)."""
        self._last_tick = None

    def take_over(self) -> None:
        """A replica becomes (or stops being) the leader: tests rebuilt from the saved state,
        and what the rollouts are now counts as announced by whoever made it so."""
        self.pause_timing()
        for route in list(self.plane.rollouts):
            self.forget(route)
        self._announced = {route: (str(r.phase), r.step) for route, r in self.plane.rollouts.items()}

    def forget(self, route: str) -> None:
        """The route's rollout was replaced (another replica wrote it, or a change was undone):
        its tests are rebuilt from the saved state at the next tick."""
        self.tests.pop(route, None)
        self.rates.pop(route, None)
        if route in self.plane.routes.routes:
            self._export(route)

    def _judge(self, rollout: Rollout) -> None:
        cfg = self._config(rollout.route)
        # Non-inferiority is looked at once the step is otherwise ready, then once per interval.
        ready = rollout.step_elapsed >= rollout.interval and rollout.at_step.canary.requests >= rollout.min_requests
        look = 0
        if ready and (rollout.ni_looks == 0 or rollout.step_elapsed - rollout.ni_last_look >= rollout.interval):
            look = rollout.ni_looks + 1
        result = judge(rollout, cfg, self.settings(), self.tests[rollout.route], self.rates.get(rollout.route, 0.0),
                       ni_look=look)
        if look and any(outcome != "continue" for outcome in result.results.values()):
            rollout.ni_looks, rollout.ni_last_look = look, rollout.step_elapsed  # a look was taken
        for check, outcome in result.results.items():
            self.metrics.rollout_analyses.labels(rollout.route, check, outcome).inc()
        rollout.need = {"canary_requests": result.need_requests, "seconds": result.wait_seconds}
        if result.action == ROLLBACK:
            rollout.reason = result.reason
            log.warning("rollout on route %s: rolling back at %g%%: %s", rollout.route, rollout.weight, result.reason)
            self.plane.rollback(rollout.route, "rollout")
            self._event(rollout, "failed", f"rollout of {rollout.canary} on route {rollout.route} ROLLED BACK at "
                                           f"{rollout.weight:g}%: {result.reason}")
            return
        if rollout.phase == Phase.PAUSED:
            return
        if result.action == ADVANCE:
            self._advance(rollout, "step passed")
            return
        # The wait is judged at the step's measured canary rate, known once the step has
        # lasted its interval: a step is not stalled in its first seconds.
        stalled = (rollout.step_elapsed >= rollout.interval and result.wait_seconds is not None
                   and result.wait_seconds > cfg.stall_after)
        if stalled and rollout.phase != Phase.STALLED:
            rollout.phase, rollout.reason = Phase.STALLED, f"stalled: {result.reason}"
            self._event(rollout, "stalled", f"rollout on route {rollout.route} stalled at {rollout.weight:g}%: "
                                            f"{result.reason}")
        elif not stalled and rollout.phase == Phase.STALLED:
            rollout.phase, rollout.reason = Phase.PROGRESSING, result.reason
            self._event(rollout, "progressing", f"rollout on route {rollout.route} progressing again")
        else:
            rollout.reason = result.reason if rollout.phase == Phase.PROGRESSING else rollout.reason

    def _adopt_config(self, rollout: Rollout) -> None:
        """A reloaded rollout definition applies from the next step: the steps above the
        current weight, the interval and minimum requests; the ramp never restarts."""
        cfg = self._config(rollout.route)
        seen = definition(cfg)
        if seen == rollout.config_seen:
            return
        rollout.config_seen = seen
        ahead = [(w, p) for w, p in cfg.plan() if w > rollout.weight]
        rollout.plan = rollout.plan[:rollout.step + 1] + (ahead or [(100.0, False)])
        rollout.interval, rollout.min_requests, rollout.on_complete = cfg.interval, cfg.min_requests, cfg.on_complete
        log.info("rollout on route %s: the reloaded definition applies from the next step: %s", rollout.route,
                 " → ".join(f"{w:g}%" for w, _ in rollout.plan))

    def _advance(self, rollout: Rollout, why: str) -> None:
        route = rollout.route
        if not rollout.last_step:
            self._adopt_config(rollout)
        if rollout.last_step:
            if rollout.on_complete == "promote":
                self.plane.promote(route)
                self._event(rollout, "succeeded", f"rollout of {rollout.canary} on route {route} succeeded: "
                                                  "promoted to stable")
            elif not rollout.hold_at_end:
                rollout.hold_at_end, rollout.phase = True, Phase.PAUSED
                rollout.reason = "at 100 %: waiting for `rollout promote`"
                self._event(rollout, "paused", f"rollout of {rollout.canary} on route {route} passed 100 %; "
                                               "waiting for `rollout promote`")
            return
        nxt = rollout.step + 1
        weight, pause_before = rollout.plan[nxt]
        if pause_before and not rollout.pause_cleared:
            if rollout.phase != Phase.PAUSED:
                rollout.phase, rollout.reason = Phase.PAUSED, f"waiting for `rollout resume` before {weight:g}%"
                self._event(rollout, "paused", f"rollout on route {route} passed {rollout.weight:g}% and waits "
                                               f"for `rollout resume` before {weight:g}%")
            return
        now = self.clock()
        rollout.history.append({"event": "step", "weight": rollout.weight, "at": now, "verdict": why,
                                "seconds": round(rollout.step_elapsed, 1),
                                "canary_requests": rollout.at_step.canary.requests})
        if nxt == len(rollout.plan) - 1:
            rollout.before_full = copy.deepcopy(rollout.total)  # what 100 % compares with: stable has no traffic
        rollout.step, rollout.step_elapsed, rollout.step_started_at = nxt, 0.0, now
        rollout.at_step, rollout.pause_cleared = Evidence(), False
        rollout.ni_looks, rollout.ni_last_look = 0, 0.0
        rollout.phase, rollout.reason = Phase.PROGRESSING, why
        self.plane.set_route(route, weight=weight, reason=ROLLOUT_STEP)
        self._event(rollout, "step", f"rollout of {rollout.canary} on route {route}: step {nxt + 1} of "
                                     f"{len(rollout.plan)}, {weight:g}% ({why})")

    # --- views -----------------------------------------------------------------------------------
    def status(self, route: str) -> dict[str, Any]:
        self.plane.get(route)
        rollout = self.plane.rollouts.get(route)
        if rollout is None:
            return {"route": route, "phase": str(Phase.IDLE)}
        cfg = self._config(route)
        doc = rollout.to_json()
        doc["step"] = rollout.step + 1
        doc["steps"] = len(rollout.plan)
        doc["weight"] = rollout.weight
        doc["need"] = rollout.need
        doc["canary_rate"] = self.rates.get(route)
        doc["analysis"] = {"source": "prometheus" if cfg.analysis_prometheus else "proxy",
                           "prometheus": cfg.analysis_prometheus, "problem": self.unavailable.get(route)}
        doc["checks"] = {}
        for check in checks_of(cfg):
            c_e, c_n = check.counts(rollout.total.canary)
            stable = rollout.before_full.stable if rollout.last_step and rollout.before_full else rollout.total.stable
            s_e, s_n = check.counts(stable)
            doc["checks"][check.name] = {
                "canary": [c_e, c_n], "stable": [s_e, s_n], "max": check.limits.max,
                "max_over_stable": check.limits.max_over_stable, "slo": check.limits.slo,
                "sequential_test": (rollout.sprt.get(check.name) or {}),
            }
        return doc

    def _export(self, route: str) -> None:
        self._exported.add(route)
        m = self.metrics
        rollout = self.plane.rollouts.get(route)
        phase = Phase.IDLE if rollout is None else rollout.phase
        for p in Phase:
            m.rollout_phase.labels(route, p).set(1 if p == phase else 0)
        m.rollout_step.labels(route).set(0 if rollout is None else rollout.step + 1)
        cfg = self._config(route)
        for check in checks_of(cfg):
            m.rollout_check_limit.labels(route, check.name, "max").set(check.limits.max or 0)
            m.rollout_check_limit.labels(route, check.name, "max_over_stable").set(check.limits.max_over_stable)
            if rollout is None:
                continue
            for arm, evidence in ((Arm.CANARY, rollout.total.canary), (Arm.STABLE, rollout.total.stable)):
                events, trials = check.counts(evidence)
                if trials:
                    m.rollout_check_value.labels(route, check.name, arm).set(events / trials)

    # --- helpers -----------------------------------------------------------------------------------
    def _config(self, route: str) -> RolloutConfig:
        cfg = self.plane.config.routes.get(route)
        return (cfg.rollout if cfg is not None else None) or RolloutConfig()

    def _reset_tests(self, route: str, rollout: Rollout) -> None:
        self.tests.pop(route, None)
        rollout.sprt = {}
        self._tests(route, rollout)

    def _tests(self, route: str, rollout: Rollout) -> dict[str, CanarySPRT]:
        tests = self.tests.get(route)
        if tests is None:
            seq = self.settings().sequential
            tests = self.tests[route] = {check.name: sprt_from_json(rollout.sprt.get(check.name), seq.rate_ratio,
                                                                    seq.alpha, seq.floor)
                                         for check in checks_of(self._config(route))}
        return tests

    def _event(self, rollout: Rollout, event: str, text: str) -> None:
        """One JSON log line and one notification per phase or step change; saved at once."""
        self.plane.save()
        self._export(rollout.route)
        self._announced[rollout.route] = (str(rollout.phase), rollout.step)
        body = {"text": text, "event": event, "route": rollout.route, "canary": rollout.canary,
                "phase": str(rollout.phase), "step": rollout.step + 1, "steps": len(rollout.plan),
                "weight": rollout.weight, "reason": rollout.reason, "at": self.clock()}
        log.info("rollout %s", json.dumps(body, sort_keys=True))
        self.notify(body)


__all__ = ["ACTIVE_PHASES", "PAUSE", "Rollouts", "rollout_config"]
