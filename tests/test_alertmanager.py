"""Alertmanager drives rollbacks (proxy/control/alertmanager.py), without a proxy: the
payload check, the one decision both paths share, the webhook's outcomes, and the
reconcile poll against an in-loop fake Alertmanager on a fake clock. The webhook over
HTTP is in test_admin.py; both paths against a real Alertmanager are in
test_control_plane.py and test_alert_convergence.py.

Payloads follow Alertmanager's webhook format (version 4, its docs' ``<webhook_config>``)
and its API v2 ``GET /api/v2/alerts`` answer (``status.state``: active, suppressed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import RouteConfig
from proxy.control.alertmanager import (PayloadError, Reconciler, alert_decision, handle_alert, handle_notification,
                                        parse_payload, parse_time, resume_resolved)
from proxy.control.plane import ControlPlane
from proxy.control.routing import RouteState
from tests.conftest import FakeClock, free_port
from tests.test_control_plane import ROUTE, alert, notification
from tests.test_plane import make_plane, sample

NAME = "OllamaCanaryErrorRateHigh"
STARTS = "2026-01-01T00:00:00Z"
STARTED = 1767225600.0  # STARTS in Unix seconds
AUTO = {"chat": dict(ROUTE, auto_resume=True)}


def parse(doc: Any) -> list:
    return parse_payload(json.dumps(doc).encode())


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # ns, as AM writes


# --- the payload ----------------------------------------------------------------------------

def test_a_notification_is_read_whole_and_keyed_by_fingerprint_and_start():
    alerts = parse(notification(alert(), alert(status="resolved", fingerprint="x2")))
    assert [(a.status, a.name, a.labels["route"]) for a in alerts] == [
        ("firing", NAME, "chat"), ("resolved", NAME, "chat")]
    assert alerts[0].key == f"c4ab2e1f0d9a8b7c@{STARTS}"


def test_an_alert_without_a_fingerprint_is_keyed_by_its_labels():
    bare = {k: v for k, v in alert().items() if k != "fingerprint"}
    one, same, other = parse(notification(bare, bare, dict(bare, labels={**bare["labels"], "route": "b"})))
    assert one.key == same.key != other.key


@pytest.mark.parametrize("body, problem", [
    (b"{not json", "body is not JSON"),
    (b"[]", "body must be a JSON object"),
    (b'{"version": "3", "alerts": []}', "unsupported webhook version '3'"),
    (b'{"alerts": "nope"}', "'alerts' must be a list"),
    (json.dumps(notification("x")).encode(), "alerts[0] must be an object"),
    (json.dumps(notification(dict(alert(), labels={"route": 5}))).encode(), "alerts[0].labels must be an object"),
    (json.dumps(notification(dict(alert(), status="weird"))).encode(), "alerts[0].status must be 'firing' or"),
    (json.dumps(notification({"status": "firing", "labels": {"route": "chat"}})).encode(), "alerts[0].startsAt"),
    (json.dumps(notification(alert(), dict(alert(), status="weird"))).encode(), "alerts[1].status"),
])
def test_a_malformed_payload_is_refused_whole_naming_the_problem(body, problem):
    with pytest.raises(PayloadError) as err:
        parse_payload(body)
    assert problem in str(err.value)


def test_start_times_are_read_as_alertmanager_writes_them():
    assert parse_time(STARTS) == STARTED
    assert parse_time("2026-01-01T00:00:00.123456789Z") == pytest.approx(STARTED + 0.123456789, abs=1e-6)
    assert parse_time("yesterday") is None


# --- the decision both paths share ----------------------------------------------------------

def route_state(rolled_back: bool = False, reason: str = "config", auto_resume: bool = True) -> RouteState:
    state = RouteState.from_config("chat", RouteConfig("qwen3:8b", "qwen3:8b-ft", 50, auto_resume=auto_resume))
    return replace(state, rolled_back=rolled_back, reason=reason)


@pytest.mark.parametrize("state, firing, decision", [
    (route_state(), True, "rollback"),
    (route_state(True, f"alert:{NAME}"), True, None),  # already rolled back
    (route_state(True, "admin"), True, None),
    (route_state(True, f"alert:{NAME}"), False, "resume"),
    (route_state(True, f"reconcile:{NAME}"), False, "resume"),  # whichever path rolled it back
    (route_state(True, f"alert:{NAME}", auto_resume=False), False, None),
    (route_state(True, "alert:SomeOtherAlert"), False, None),  # only the rollback this alert made
    (route_state(True, "admin"), False, None),  # never undo a human's rollback
    (route_state(True, "breaker"), False, None),
    (route_state(), False, None),
])
def test_alert_decision(state, firing, decision):
    assert alert_decision(state, NAME, firing=firing) == decision


# --- the webhook's outcomes -----------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    {"route": "unknown"}, {"action": None}, {"action": "page"}, {"route": ""},
])
def test_alerts_it_has_no_business_with_are_ignored(labels):
    plane = make_plane()
    raw = alert(action=labels.pop("action", "rollback"))
    raw["labels"].update(labels)
    assert handle_alert(plane, parse(notification(raw))[0]) == "ignored"
    assert not plane.get("chat").rolled_back


def test_a_firing_alert_rolls_back_once_and_every_repeat_is_a_duplicate():
    plane = make_plane()
    first, = parse(notification(alert()))
    assert handle_alert(plane, first) == "applied"
    state = plane.get("chat")
    assert state.rolled_back and state.reason == f"alert:{NAME}"
    assert handle_alert(plane, first) == "duplicate"  # a retry or the HA twin
    later, = parse(notification(alert(starts="2026-01-01T01:00:00Z")))
    assert handle_alert(plane, later) == "duplicate"  # a new instance, but nothing left to do
    assert plane.get("chat").since == state.since
    assert sample(plane, "ollama_proxy_route_changes_total", route="chat", reason=f"alert:{NAME}") == 1


def test_a_resolved_alert_resumes_only_with_auto_resume_and_only_once():
    plane = make_plane({"chat": dict(ROUTE), "auto": dict(ROUTE, auto_resume=True)})
    for name in ("chat", "auto"):
        handle_alert(plane, parse(notification(alert(route=name, fingerprint=name)))[0])
    resolved = {name: parse(notification(alert(status="resolved", route=name, fingerprint=name)))[0]
                for name in ("chat", "auto")}
    assert handle_alert(plane, resolved["chat"]) == "ignored"
    assert handle_alert(plane, resolved["auto"]) == "applied"
    assert plane.get("chat").rolled_back and not plane.get("auto").rolled_back
    # On probation: the probe weight until the canary has passed its probe (test_probe.py).
    assert (plane.get("auto").weight, plane.get("auto").probe_weight_after) == (5, 50)
    assert handle_alert(plane, resolved["auto"]) == "ignored"  # a repeat changes nothing


def test_a_resolved_alert_leaves_an_operators_rollback_alone():
    plane = make_plane(AUTO)
    plane.rollback("chat", "admin:latency")
    assert handle_alert(plane, parse(notification(alert(status="resolved")))[0]) == "ignored"
    assert plane.get("chat").rolled_back


def test_the_notification_counts_each_outcome():
    plane = make_plane()
    alerts = parse(notification(alert(), alert(), alert(route="unknown", fingerprint="u")))
    assert handle_notification(plane, plane.metrics, alerts) == {"applied": 1, "duplicate": 1, "ignored": 1}
    for outcome in ("applied", "duplicate", "ignored"):
        assert sample(plane, "ollama_proxy_alertmanager_notifications_total", outcome=outcome) == 1


# --- resuming what Alertmanager no longer lists ----------------------------------------------

def rolled_back_by_alert(plane: ControlPlane, route: str = "chat") -> float:
    handle_alert(plane, parse(notification(alert(route=route, fingerprint=route)))[0])
    return plane.get(route).since


def test_a_rollback_whose_alert_is_gone_is_resumed_after_the_grace():
    plane = make_plane(AUTO)
    since = rolled_back_by_alert(plane)
    assert resume_resolved(plane, [], now=since + 9, grace=10) == []  # an HA peer may not list it yet
    assert resume_resolved(plane, [], now=since + 10.5, grace=10) == ["chat"]
    assert not plane.get("chat").rolled_back


def test_a_rollback_whose_alert_is_still_listed_stays():
    plane = make_plane(AUTO)
    since = rolled_back_by_alert(plane)
    active = parse(notification(alert()))
    assert resume_resolved(plane, active, now=since + 60, grace=10) == []
    assert plane.get("chat").rolled_back


@pytest.mark.parametrize("routes, reason", [(AUTO, "admin"), (AUTO, "breaker"), ({"chat": ROUTE}, f"alert:{NAME}")])
def test_rollbacks_that_are_not_an_auto_resume_alerts_are_never_resumed(routes, reason):
    plane = make_plane(routes)
    plane.rollback("chat", reason)
    assert resume_resolved(plane, [], now=plane.get("chat").since + 3600, grace=10) == []


# --- reconcile against an in-loop fake Alertmanager ----------------------------------------

class FakeAlertmanager:
    """``GET /api/v2/alerts`` answering ``alerts`` (or ``status`` with ``body``)."""

    def __init__(self) -> None:
        self.alerts: Any = []
        self.status = 200
        self.body: bytes | None = None
        self.queries: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/v2/alerts", self.handle)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.body is not None or self.status != 200:
            return web.Response(status=self.status, body=self.body or b"")
        return web.json_response(self.alerts)


def listed(state: str = "active", **kwargs: Any) -> dict[str, Any]:
    silenced = ["s1"] if state == "suppressed" else []
    return dict(alert(**kwargs), status={"state": state, "silencedBy": silenced, "inhibitedBy": []})


@pytest.fixture
async def alertmanager(aiohttp_server):
    fake = FakeAlertmanager()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url(""))
    return fake


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def reconciler(plane: ControlPlane, url: str, clock: FakeClock, grace: float = 10.0) -> Reconciler:
    return Reconciler(plane, plane.metrics, url, interval=1.0, grace=grace, clock=clock)


def reconciles(plane: ControlPlane, outcome: str) -> float | None:
    return sample(plane, "ollama_proxy_alertmanager_reconciles_total", outcome=outcome)


async def test_reconcile_acts_once_on_an_active_alert_whose_webhook_never_came(alertmanager, session):
    plane = make_plane()
    alertmanager.alerts = [listed()]
    r = reconciler(plane, alertmanager.url, FakeClock(STARTED + 60))
    assert await r.once(session) == 1
    state = plane.get("chat")
    assert state.rolled_back and state.reason == f"reconcile:{NAME}"
    assert await r.once(session) == 0  # acted on once only
    assert await r.once(session) == 0
    assert sample(plane, "ollama_proxy_route_changes_total", route="chat", reason="reconcile") == 1
    assert reconciles(plane, "ok") == 3
    assert alertmanager.queries[0] == {"active": "true", "filter": 'action="rollback"'}


async def test_reconcile_leaves_silenced_and_inhibited_alerts_alone(alertmanager, session):
    plane = make_plane({"chat": ROUTE, "chat2": ROUTE})
    alertmanager.alerts = [listed("suppressed"), listed("suppressed", route="chat2", fingerprint="s2")]
    assert await reconciler(plane, alertmanager.url, FakeClock(STARTED + 60)).once(session) == 0
    assert not plane.get("chat").rolled_back and not plane.get("chat2").rolled_back


async def test_reconcile_leaves_a_new_alert_to_its_webhook_for_the_grace_period(alertmanager, session):
    plane = make_plane()
    alertmanager.alerts = [listed(starts=rfc3339(STARTED))]
    clock = FakeClock(STARTED + 1)
    r = reconciler(plane, alertmanager.url, clock, grace=10)
    assert await r.once(session) == 0
    assert not plane.get("chat").rolled_back  # still within the grace
    clock.advance(10)
    assert await r.once(session) == 1


async def test_reconcile_skips_entries_it_cannot_read_and_acts_on_the_rest(alertmanager, session):
    plane = make_plane()
    alertmanager.alerts = ["junk", {"status": "weird"}, dict(alert(), status={"state": "active"})]
    assert await reconciler(plane, alertmanager.url, FakeClock(STARTED + 60)).once(session) == 1
    assert plane.get("chat").rolled_back


@pytest.mark.parametrize("status, body", [(500, b"boom"), (200, b'{"alerts": []}'), (200, b"<html>")])
async def test_an_unusable_answer_changes_nothing_and_is_counted(alertmanager, session, caplog, status, body):
    caplog.set_level(logging.INFO, logger="ollama_sidecar.alertmanager")
    plane = make_plane()
    alertmanager.status, alertmanager.body = status, body
    r = reconciler(plane, alertmanager.url, FakeClock(STARTED + 60))
    assert await r.once(session) == 0 and await r.once(session) == 0
    assert reconciles(plane, "error") == 2 and not plane.get("chat").rolled_back
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and "routes unchanged" in errors[0].getMessage()  # one line, not one per poll
    alertmanager.status, alertmanager.body, alertmanager.alerts = 200, None, [listed()]
    assert await r.once(session) == 1
    assert "answers again" in caplog.text


async def test_an_unreachable_alertmanager_changes_nothing_and_is_counted(session):
    plane = make_plane()
    r = reconciler(plane, f"http://127.0.0.1:{free_port()}", FakeClock(STARTED + 60))
    assert await r.once(session) == 0
    assert reconciles(plane, "error") == 1 and reconciles(plane, "ok") is None


async def test_reconcile_resumes_an_auto_resume_route_once_its_alert_is_gone(alertmanager, session):
    plane = make_plane(AUTO)
    clock = FakeClock(time.time())  # route changes are stamped with the wall clock
    alertmanager.alerts = [listed(starts=rfc3339(clock.now - 60))]
    r = reconciler(plane, alertmanager.url, clock, grace=10)
    assert await r.once(session) == 1
    alertmanager.alerts = [listed("suppressed", starts=rfc3339(clock.now - 60))]
    clock.advance(11)
    await r.once(session)
    assert plane.get("chat").rolled_back  # silenced is not resolved
    alertmanager.alerts = []
    await r.once(session)
    state = plane.get("chat")
    assert not state.rolled_back and state.reason == "resume"
    assert (state.weight, state.probe_weight_after) == (5, 50)  # on probation (test_probe.py)
