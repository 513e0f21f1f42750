"""The admin API and the Alertmanager webhook (proxy/control/admin.py) through
pytest-aiohttp's in-loop client against ``build_app``: who may change routes, what a
refused change says, and what each answer shows. The same API over real sockets, with
the CLI in front of it, is in test_control_plane.py."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.app import METRICS, build_app
from proxy.config import parse_config
from tests.test_control_plane import ROUTE, TOKEN, alert, notification

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(tmp_path, token: str | None = TOKEN, **settings: Any) -> web.Application:
    settings.setdefault("upstream", "http://127.0.0.1:9")  # never reached by the admin API
    settings.setdefault("access_log", False)
    settings.setdefault("routes", {"chat": dict(ROUTE)})
    settings.setdefault("state_file", str(tmp_path / "state.json"))
    environ = {"OLLAMA_SIDECAR_ADMIN_TOKEN": token} if token else {}
    return build_app(parse_config(settings, environ=environ))


@pytest.fixture
def admin(aiohttp_client, tmp_path):
    """``client = await admin(**settings)``: an in-loop client of a proxy with an admin token."""
    async def make(token: str | None = TOKEN, **settings: Any):
        return await aiohttp_client(make_app(tmp_path, token, **settings))
    return make


def sample(client, name: str, **labels: str) -> float | None:
    return client.app[METRICS].registry.get_sample_value(name, labels)


async def route(client, name: str = "chat") -> dict[str, Any]:
    r = await client.get(f"/admin/routes/{name}", headers=AUTH)
    assert r.status == 200
    return await r.json()


# --- access -------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
async def test_a_missing_or_wrong_token_is_401_and_changes_nothing(admin, headers):
    client = await admin()
    r = await client.post("/admin/routes/chat/rollback", headers=headers)
    assert r.status == 401 and "admin token" in (await r.json())["error"]
    r = await client.post("/admin/alertmanager", json=notification(alert()), headers=headers)
    assert r.status == 401
    assert sample(client, "ollama_proxy_alertmanager_notifications_total", outcome="unauthorized") == 1
    assert (await route(client))["rolled_back"] is False


async def test_without_a_token_loopback_clients_are_answered(admin):
    client = await admin(token=None)
    r = await client.post("/admin/routes/chat/rollback")  # the in-loop client is on loopback
    assert r.status == 200 and (await r.json())["rolled_back"] is True


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.20", "2001:db8::1"])
async def test_without_a_token_other_clients_get_403_and_reach_nothing(tmp_path, peer):
    app = make_app(tmp_path, token=None)
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    request = make_mocked_request("POST", "/admin/routes/chat/rollback", app=app, transport=transport)
    reached = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(request)
        return web.json_response({})

    middleware, = app.middlewares
    r = await middleware(request, handler)
    assert r.status == 403 and "only loopback clients" in json.loads(r.body)["error"]
    assert reached == []


async def test_the_data_plane_needs_no_admin_token(admin):
    client = await admin()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


# --- routes -------------------------------------------------------------------------------------

async def test_the_route_list_shows_each_route_its_live_rates_and_the_files_in_use(admin, tmp_path):
    client = await admin(routes={"chat": dict(ROUTE), "solo": {"stable": "llama3.2"}})
    doc = await (await client.get("/admin/routes", headers=AUTH)).json()
    assert [r["name"] for r in doc["routes"]] == ["chat", "solo"]
    chat = doc["routes"][0]
    assert (chat["stable"], chat["canary"], chat["weight"], chat["effective_weight"]) == (
        "qwen3:8b", "qwen3:8b-ft", 50, 50)
    assert chat["live"]["canary"] == {"requests_per_second": 0, "failure_ratio": None, "window_seconds": 60}
    assert chat["breaker"]["enabled"] is False
    assert (doc["last_reload_error"], doc["config_file"]) == (None, None)
    assert doc["state_file"] == str(tmp_path / "state.json")


@pytest.mark.parametrize("body, problem", [
    ({"canary_weight": 10, "bogus": 1}, "unknown field(s) ['bogus']"),
    ({"canary_weight": True}, "canary_weight must be a number"),
    ({"canary_weight": "50"}, "canary_weight must be a number"),
    ({"canary_weight": 120}, "between 0 and 100"),
    ({"stable": None}, "stable cannot be removed"),
    ({"stable": 5}, "stable must be a model name"),
    ({"canary": ""}, "canary must be a model name"),
    (b"weight=10", "body is not valid JSON"),
    (b"[10]", "body must be a JSON object"),
])
async def test_a_bad_change_is_a_400_that_says_why_and_changes_nothing(admin, body, problem):
    client = await admin()
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    r = await client.put("/admin/routes/chat", headers=AUTH, **kwargs)
    assert r.status == 400 and problem in (await r.json())["error"]
    assert (await route(client))["weight"] == 50
    assert sample(client, "ollama_proxy_route_changes_total", route="chat", reason="admin") == 0


async def test_put_changes_the_weight_and_the_canary(admin):
    client = await admin()
    r = await client.put("/admin/routes/chat", json={"weight": 20}, headers=AUTH)  # `weight` is accepted too
    assert r.status == 200 and (await r.json())["weight"] == 20
    r = await client.put("/admin/routes/chat", json={"canary": "qwen3:8b-ft2", "canary_weight": 5}, headers=AUTH)
    assert ((await r.json())["canary"], (await r.json())["weight"]) == ("qwen3:8b-ft2", 5)
    r = await client.put("/admin/routes/chat", json={"canary": None}, headers=AUTH)
    assert ((await r.json())["canary"], (await r.json())["effective_weight"]) == (None, 0)
    assert sample(client, "ollama_proxy_route_changes_total", route="chat", reason="admin") == 3


async def test_rollback_records_the_operators_reason_and_says_whether_it_changed_anything(admin):
    client = await admin()
    r = await client.post("/admin/routes/chat/rollback", json={"reason": "latency"}, headers=AUTH)
    doc = await r.json()
    assert (doc["rolled_back"], doc["changed"], doc["reason"], doc["effective_weight"]) == (
        True, True, "admin:latency", 0)
    doc = await (await client.post("/admin/routes/chat/rollback", headers=AUTH)).json()
    assert (doc["changed"], doc["reason"]) == (False, "admin:latency")
    assert sample(client, "ollama_proxy_route_changes_total", route="chat", reason="admin") == 1


async def test_resume_and_promote_and_the_errors_they_answer(admin):
    client = await admin()
    assert (await client.post("/admin/routes/chat/resume", headers=AUTH)).status == 409  # not rolled back
    await client.post("/admin/routes/chat/rollback", headers=AUTH)
    doc = await (await client.post("/admin/routes/chat/resume", headers=AUTH)).json()
    assert (doc["rolled_back"], doc["weight"]) == (False, 50)
    doc = await (await client.post("/admin/routes/chat/promote", headers=AUTH)).json()
    assert (doc["stable"], doc["canary"], doc["weight"]) == ("qwen3:8b-ft", None, 0)
    assert (await client.post("/admin/routes/chat/promote", headers=AUTH)).status == 409  # no canary left
    r = await client.get("/admin/routes/nope", headers=AUTH)
    assert r.status == 404 and "unknown route 'nope' (known: chat)" in (await r.json())["error"]


async def test_reload_without_a_config_file_says_how_to_get_one(admin):
    client = await admin()
    r = await client.post("/admin/reload", headers=AUTH)
    assert r.status == 400
    assert await r.json() == {"reloaded": False, "message": "no config file to reload (start with --config)"}


# --- the webhook ----------------------------------------------------------------------------

async def test_the_webhook_acts_once_and_answers_what_it_did(admin):
    client = await admin()
    r = await client.post("/admin/alertmanager", json=notification(alert()), headers=AUTH)
    assert r.status == 200
    assert await r.json() == {"status": "ok", "applied": 1, "duplicate": 0, "ignored": 0}
    assert (await route(client))["reason"] == "alert:OllamaCanaryErrorRateHigh"
    r = await client.post("/admin/alertmanager", json=notification(alert(), alert(route="unknown")), headers=AUTH)
    assert await r.json() == {"status": "ok", "applied": 0, "duplicate": 1, "ignored": 1}


async def test_a_malformed_notification_is_a_400_alertmanager_will_not_retry(admin):
    client = await admin()
    r = await client.post("/admin/alertmanager", data=b'{"version": "3", "alerts": []}', headers=AUTH)
    assert r.status == 400  # 4xx: Alertmanager does not retry it
    assert "invalid Alertmanager payload: unsupported webhook version" in (await r.json())["error"]
    assert sample(client, "ollama_proxy_alertmanager_notifications_total", outcome="invalid") == 1
    assert (await route(client))["rolled_back"] is False
