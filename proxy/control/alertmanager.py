"""Alertmanager drives rollbacks: the webhook receiver and the reconcile loop.

Alertmanager retries 5xx and treats every 2xx as delivered (its notify/webhook/webhook.go
and the docs' ``<webhook_config>``). So the receiver validates the whole payload first
(400 and no change when malformed: retrying it would not help), acknowledges alerts it
has no business with (200, counted as ignored, or Alertmanager would retry them until
group_interval), and is idempotent on ``fingerprint@startsAt`` because retries and HA
pairs deliver the same alert twice.

Webhooks get lost (a proxy restarting, a network blip after Alertmanager gave up), and
with several proxy replicas each must act. The reconcile loop asks Alertmanager which
rollback alerts are active and acts on those it has not acted on yet, and resumes (with
``auto_resume``) routes whose alert has gone, so every replica converges on the same
state in both directions; both paths decide through :func:`alert_decision`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from proxy.common.jsonutil import parse_json
from proxy.common.rfc3339 import parse_rfc3339
from proxy.control.changes import Changes, LocalChanges
from proxy.control.plane import ControlPlane, RouteError
from proxy.control.routing import RouteState
from proxy.metrics import ProxyMetrics

log = logging.getLogger("ollama_sidecar.alertmanager")


def parse_time(text: str) -> float | None:
    """Unix time of an RFC 3339 timestamp as Alertmanager writes it (nanoseconds, ``Z``)."""
    return parse_rfc3339(text)


class PayloadError(ValueError):
    """The webhook body is not an Alertmanager notification."""


@dataclass(frozen=True)
class Alert:
    status: str  # firing | resolved
    labels: dict[str, str]
    fingerprint: str
    starts_at: str

    @property
    def key(self) -> str:
        return f"{self.fingerprint}@{self.starts_at}"

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "unnamed")


def parse_payload(body: bytes) -> list[Alert]:
    """Validate a webhook payload (version 4) whole; raise PayloadError naming the problem."""
    try:
        doc = parse_json(body)
    except ValueError as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    if "version" in doc and str(doc["version"]) != "4":
        raise PayloadError(f"unsupported webhook version {doc['version']!r} (expected \"4\")")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("'alerts' must be a list")
    return [parse_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)]


def parse_alert(raw: Any, where: str, status: str | None = None) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where} must be an object")
    labels = raw.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PayloadError(f"{where}.labels must be an object of strings")
    status = status or raw.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status must be 'firing' or 'resolved', got {status!r}")
    starts_at = raw.get("startsAt")
    if not isinstance(starts_at, str) or not starts_at:
        raise PayloadError(f"{where}.startsAt is missing")
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        fingerprint = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return Alert(status, labels, fingerprint, starts_at)


def rolled_back_by(state: RouteState, alertname: str) -> bool:
    """Whether the route's current rollback was made by the alert ``alertname`` (through
    its webhook or through reconcile)."""
    head, _, tail = state.reason.partition(":")
    return state.rolled_back and head in ("alert", "reconcile") and tail == alertname


def alert_decision(state: RouteState, alertname: str, firing: bool) -> str | None:
    """What a rollback alert's state means for a route: ``rollback``, ``resume`` or None.

    The webhook and the reconcile loop both decide through here, so every replica reaches
    the same state whichever path told it: one replica may hear the resolved webhook
    while another only sees the alert gone from Alertmanager. A resolved alert resumes a
    route only with ``auto_resume`` and only the rollback that alert made."""
    if firing:
        return None if state.rolled_back else "rollback"
    if state.auto_resume and rolled_back_by(state, alertname):
        return "resume"
    return None


def _is_rollback_alert(control: ControlPlane, labels: dict[str, str]) -> bool:
    route = labels.get("route")
    return labels.get("action") == "rollback" and bool(route) and route in control.routes.routes


def handle_alert(control: ControlPlane, alert: Alert, *, via: str = "alert") -> str:
    """Act on one alert; returns its outcome (applied, duplicate, ignored)."""
    if not _is_rollback_alert(control, alert.labels):
        return "ignored"
    route = alert.labels["route"]
    state = control.routes.routes[route]
    if alert.status == "firing":
        if not control.remember_alert(alert.key):
            return "duplicate"
        if alert_decision(state, alert.name, firing=True) is None:
            return "duplicate"
        control.rollback(route, f"{via}:{alert.name}")
        return "applied"
    if alert_decision(state, alert.name, firing=False) == "resume" \
            and control.remember_alert(alert.key + "/resolved"):
        try:
            control.resume(route, "resume", probe=True)
        except RouteError:
            return "duplicate"
        return "applied"
    return "ignored"


def resume_resolved(control: ControlPlane, active: list[Alert], *, now: float, grace: float) -> list[str]:
    """Resume every route whose rollback alert is no longer active in Alertmanager (the
    reconcile side of :func:`alert_decision`); returns the routes resumed. A rollback
    younger than ``grace`` is left alone: an HA peer may not list its alert yet."""
    still = {(a.labels.get("route"), a.name) for a in active}
    resumed = []
    for name, state in list(control.routes.routes.items()):
        if not state.rolled_back or now - state.since < grace:
            continue
        alertname = state.reason.partition(":")[2]
        if (name, alertname) in still or alert_decision(state, alertname, firing=False) != "resume":
            continue
        try:
            control.resume(name, "resume", probe=True)
        except RouteError:
            continue
        log.info("route %s: alert %s is no longer active in Alertmanager; resumed on probation (auto_resume)",
                 name, alertname)
        resumed.append(name)
    return resumed


def handle_notification(control: ControlPlane, metrics: ProxyMetrics, alerts: list[Alert]) -> dict[str, int]:
    counts = {"applied": 0, "duplicate": 0, "ignored": 0}
    for alert in alerts:
        outcome = handle_alert(control, alert)
        counts[outcome] += 1
        metrics.alertmanager_notifications.labels(outcome).inc()
        if outcome != "ignored":
            log.info("alert %s (%s) for route %s: %s", alert.name, alert.status, alert.labels.get("route"), outcome)
    return counts


class Reconciler:
    """Polls Alertmanager's API for active rollback alerts."""

    def __init__(self, control: ControlPlane, metrics: ProxyMetrics, url: str, interval: float,
                 grace: float = 0.0, clock: Callable[[], float] = time.time, changes: Changes | None = None) -> None:
        self.control = control
        self.changes: Changes = changes or LocalChanges()
        self.metrics = metrics
        self.url = url.rstrip("/")
        self.interval = interval
        # The webhook is the fast path; reconcile is for webhooks that were lost. Acting on
        # an alert younger than this would race the webhook and blur which path acted.
        self.grace = grace
        self.clock = clock
        self._failing = False

    async def once(self, session: aiohttp.ClientSession) -> int:
        """One poll; returns how many routes it rolled back."""
        try:
            async with asyncio.timeout(max(1.0, min(10.0, self.interval))):
                async with session.get(f"{self.url}/api/v2/alerts",
                                       params={"active": "true", "filter": 'action="rollback"'}) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                          message=f"HTTP {resp.status}")
                    doc = await resp.json(content_type=None)
            if not isinstance(doc, list):
                raise ValueError("expected a list of alerts")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.metrics.alertmanager_reconciles.labels("error").inc()
            if not self._failing:
                log.error("cannot read active alerts from Alertmanager at %s: %s; routes unchanged, "
                          "retrying every %gs", self.url, exc or type(exc).__name__, self.interval)
            self._failing = True
            return 0
        if self._failing:
            log.info("Alertmanager at %s answers again", self.url)
        self._failing = False
        self.metrics.alertmanager_reconciles.labels("ok").inc()
        listed: list[Alert] = []
        due: list[Alert] = []
        for i, raw in enumerate(doc):
            try:
                alert = parse_alert(raw, f"[{i}]", status="firing")
            except PayloadError:
                continue
            listed.append(alert)  # silenced or not, it has not resolved
            status = raw.get("status")
            state = status.get("state") if isinstance(status, dict) else None
            if state not in (None, "active"):
                continue  # silenced or inhibited: a human said no
            started = parse_time(alert.starts_at)
            if started is not None and self.clock() - started < self.grace:
                continue  # its webhook is probably on the way; look again next poll
            due.append(alert)

        def act() -> int:
            applied = sum(handle_alert(self.control, alert, via="reconcile") == "applied" for alert in due)
            resume_resolved(self.control, listed, now=self.clock(), grace=self.grace)
            return applied

        applied, _ = await self.changes.safety(list(self.control.routes.routes), act)
        return applied

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                await self.once(session)
            except Exception:  # the loop must outlive any one bad answer
                self.metrics.alertmanager_reconciles.labels("error").inc()
                log.exception("reconcile with Alertmanager at %s failed", self.url)
            await asyncio.sleep(self.interval)
