"""The admin API under ``/admin/`` and the Alertmanager webhook.

Access: with a token configured (``OLLAMA_SIDECAR_ADMIN_TOKEN`` or a token file) every
admin request needs ``Authorization: Bearer <token>``, compared in constant time; with
none configured, only loopback clients are answered, so a proxy bound to 0.0.0.0 by
mistake does not hand its routing to the network.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from proxy.common.bearer import token_matches
from proxy.common.jsonutil import parse_json
from proxy.config import ROLLOUT, ConfigError
from proxy.control.alertmanager import PayloadError, handle_notification, parse_payload
from proxy.control.breaker import Breakers
from proxy.control.changes import Changes
from proxy.control.plane import ControlPlane, RouteError
from proxy.control.preload import prepare_canary
from proxy.control.rollout import Rollouts

log = logging.getLogger("ollama_sidecar.admin")

CONTROL = web.AppKey("control", ControlPlane)
BREAKERS = web.AppKey("breakers", Breakers)
RELOAD = web.AppKey("reload", Callable)
ROLLOUTS = web.AppKey("rollouts", Rollouts)
UPSTREAM_SESSION = web.AppKey("upstream_session", Callable)  # () -> the forwarder's aiohttp session
CHANGES = web.AppKey("changes", Changes)  # where changes become durable: the state file or Redis
STATE_VIEW = web.AppKey("state_view", Callable)  # () -> what status shows of the state backend


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def make_auth_middleware(precheck: Callable[[web.Request], web.StreamResponse | None] | None = None):
    """Reads the token from the live config, so a rotated token file takes effect on reload.
    ``precheck`` runs first on every request (one middleware layer, not two, on the
    request path) and answers for it when it returns a response."""

    @web.middleware
    async def admin_auth(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if precheck is not None and (refused := precheck(request)) is not None:
            return refused
        if not request.path.startswith("/admin/"):
            return await handler(request)
        token = request.app[CONTROL].config.admin_token
        expected = token.encode() if token else None
        if expected is None:
            if not is_loopback(request.remote):
                return _unauthorized(request, 403, "admin API answers only loopback clients when no admin "
                                     "token is configured (set OLLAMA_SIDECAR_ADMIN_TOKEN)")
            return await handler(request)
        if not token_matches(request.headers.get("Authorization"), (expected,)):
            return _unauthorized(request, 401, "missing or wrong admin token: send 'Authorization: Bearer <token>'")
        return await handler(request)

    return admin_auth


def _unauthorized(request: web.Request, status: int, message: str) -> web.Response:
    if request.path == "/admin/alertmanager":
        request.app[CONTROL].metrics.alertmanager_notifications.labels("unauthorized").inc()
    log.warning("refused admin request %s %s from %s: %s", request.method, request.path, request.remote, message)
    return _error(status, message)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = parse_json(await request.read())
    except ValueError as exc:
        raise RouteError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RouteError(400, "body must be a JSON object")
    return body


def _route_view(request: web.Request, name: str) -> dict[str, Any]:
    control = request.app[CONTROL]
    view = control.describe(control.get(name))
    view["live"] = request.app[BREAKERS].live(name)
    return view


async def list_routes(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    return web.json_response({
        "routes": [_route_view(request, name) for name in sorted(control.routes.routes)],
        "last_reload_error": control.last_reload_error,
        "last_reload_at": control.last_reload_at,
        "config_file": control.config.config_path,
        "state_file": control.config.state_file,
        "state": request.app[STATE_VIEW](),
    })


def _guard(fn: Callable[[web.Request], Awaitable[web.Response]]):
    async def wrapper(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except RouteError as err:
            return _error(err.status, err.message)
    return wrapper


@_guard
async def get_route(request: web.Request) -> web.Response:
    return web.json_response(_route_view(request, request.match_info["route"]))


@_guard
async def put_route(request: web.Request) -> web.Response:
    body = await _json_body(request)
    unknown = set(body) - {"stable", "canary", "canary_weight", "weight"}
    if unknown:
        raise RouteError(400, f"unknown field(s) {sorted(unknown)}; allowed: stable, canary, canary_weight")
    weight = body.get("canary_weight", body.get("weight"))
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise RouteError(400, f"canary_weight must be a number between 0 and 100, got {weight!r}")
    for key in ("stable", "canary"):
        if key in body and body[key] is not None and (not isinstance(body[key], str) or not body[key]):
            raise RouteError(400, f"{key} must be a model name")
    if "stable" in body and body["stable"] is None:
        raise RouteError(400, "stable cannot be removed")
    kwargs: dict[str, Any] = {"stable": body.get("stable"), "weight": weight}
    if "canary" in body:
        kwargs["canary"] = body["canary"]
    name = request.match_info["route"]
    control = request.app[CONTROL]
    await request.app[CHANGES].apply([name], lambda: control.set_route(name, **kwargs))
    return web.json_response(_route_view(request, name))


@_guard
async def rollback_route(request: web.Request) -> web.Response:
    body = await _json_body(request)
    note = body.get("reason")
    reason = f"admin:{note}" if isinstance(note, str) and note else "admin"
    name = request.match_info["route"]
    control = request.app[CONTROL]
    _, changed = await request.app[CHANGES].apply([name], lambda: control.rollback(name, reason))
    view = _route_view(request, name)
    view["changed"] = changed
    return web.json_response(view)


@_guard
async def promote_route(request: web.Request) -> web.Response:
    name = request.match_info["route"]
    control = request.app[CONTROL]
    await request.app[CHANGES].apply([name], lambda: control.promote(name))
    return web.json_response(_route_view(request, name))


@_guard
async def resume_route(request: web.Request) -> web.Response:
    name = request.match_info["route"]
    control = request.app[CONTROL]
    await request.app[CHANGES].apply([name], lambda: control.resume(name))
    return web.json_response(_route_view(request, name))


# --- rollouts -------------------------------------------------------------------------------------

def _rollout_view(request: web.Request, name: str) -> dict[str, Any]:
    doc = request.app[ROLLOUTS].status(name)
    doc["route_state"] = _route_view(request, name)
    return doc


@_guard
async def list_rollouts(request: web.Request) -> web.Response:
    return web.json_response({"rollouts": [_rollout_view(request, name)
                                           for name in sorted(request.app[CONTROL].routes.routes)]})


@_guard
async def get_rollout(request: web.Request) -> web.Response:
    return web.json_response(_rollout_view(request, request.match_info["route"]))


@_guard
async def start_rollout(request: web.Request) -> web.Response:
    """``POST /admin/routes/{route}/rollout {"canary"?, "steps"?, "interval"?}``: checks that
    the canary is installed and loads it, then starts at the first step."""
    body = await _json_body(request)
    unknown = set(body) - {"canary", "steps", "interval"}
    if unknown:
        raise RouteError(400, f"unknown field(s) {sorted(unknown)}; allowed: canary, steps, interval")
    name = request.match_info["route"]
    control, rollouts = request.app[CONTROL], request.app[ROLLOUTS]
    state = control.get(name)
    canary = body.get("canary") or state.canary
    if canary is not None and not isinstance(canary, str):
        raise RouteError(400, "canary must be a model name")
    settings = {s.name: s for s in ROLLOUT.settings}
    try:  # checked as the config file's rollout.steps and rollout.interval are
        steps = None if body.get("steps") is None else list(settings["steps"].check(body["steps"], "steps"))
        interval = None if body.get("interval") is None else settings["interval"].check(body["interval"], "interval")
    except ConfigError as exc:
        raise RouteError(400, str(exc)) from None
    current = control.rollouts.get(name)
    changes = request.app[CHANGES]
    if current is not None and current.active:
        await changes.apply([name], lambda: rollouts.start(name, canary=canary))  # refuses, naming it
    if not canary:
        raise RouteError(400, f"route {name!r} has no canary: give one (\"canary\": MODEL)")
    await prepare_canary(request.app[UPSTREAM_SESSION](), control.config.upstream_for(canary), canary,
                         timeout=control.config.timeouts.first_byte)
    await changes.apply([name], lambda: rollouts.start(name, canary=canary, steps=steps, interval=interval))
    return web.json_response(_rollout_view(request, name))


def _rollout_action(action: str):
    @_guard
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["route"]
        rollouts = request.app[ROLLOUTS]
        if action == "promote":
            body = await _json_body(request)
            full = body.get("full", False)
            if not isinstance(full, bool):
                raise RouteError(400, "full must be true or false")
            await request.app[CHANGES].apply([name], lambda: rollouts.promote(name, full=full))
        else:
            await request.app[CHANGES].apply([name], lambda: getattr(rollouts, action)(name))
        return web.json_response(_rollout_view(request, name))
    return handler


async def reload_config(request: web.Request) -> web.Response:
    ok, message = request.app[RELOAD]()
    return web.json_response({"reloaded": ok, "message": message}, status=200 if ok else 400)


async def alertmanager_webhook(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    body = await request.read()
    try:
        alerts = parse_payload(body)
    except PayloadError as exc:
        control.metrics.alertmanager_notifications.labels("invalid").inc()
        log.warning("rejected Alertmanager notification: %s", exc)
        return _error(400, f"invalid Alertmanager payload: {exc}")
    routes = [a.labels.get("route", "") for a in alerts]
    counts, durable = await request.app[CHANGES].safety(
        routes, lambda: handle_notification(control, control.metrics, alerts))
    if not durable:
        # Applied on this replica, but neither in Redis nor in a journal: Alertmanager must
        # retry (it does on 5xx) until the shared state can take it.
        return _error(503, "shared state unavailable and no state.journal: the rollback holds on this replica "
                           "only; retry")
    return web.json_response({"status": "ok", **counts})


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/routes", list_routes)
    r.add_get("/admin/routes/{route}", get_route)
    r.add_put("/admin/routes/{route}", put_route)
    r.add_post("/admin/routes/{route}/rollback", rollback_route)
    r.add_post("/admin/routes/{route}/promote", promote_route)
    r.add_post("/admin/routes/{route}/resume", resume_route)
    r.add_get("/admin/rollouts", list_rollouts)
    r.add_get("/admin/routes/{route}/rollout", get_rollout)
    r.add_post("/admin/routes/{route}/rollout", start_rollout)
    for action in ("pause", "resume", "promote", "abort"):
        r.add_post(f"/admin/routes/{{route}}/rollout/{action}", _rollout_action(action))
    r.add_post("/admin/reload", reload_config)
    r.add_post("/admin/alertmanager", alertmanager_webhook)
