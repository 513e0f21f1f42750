"""``/_simulator/*``: the knobs tests and the demo turn while traffic flows.

Plain JSON so a shell (``curl``), the e2e test and the demo drive it the same way. Changes
apply to requests that arrive afterwards; a request in flight keeps the profile it started
with, as a real fault would not rewrite what was already computed. The scheduler's limits
(``/_simulator/scheduler``) are the exception: more slots start waiting requests at once.
"""

from __future__ import annotations

import json

from aiohttp import web

from proxy.simulator.profiles import ProfileError
from proxy.simulator.scheduler import check_limits
from proxy.simulator.state import SimulatorState, state_of
from proxy.simulator.wire import json_reply, native_error


def _profiles_reply(state: SimulatorState) -> web.Response:
    return json_reply({"models": {name: profile.to_dict() for name, profile in state.profiles.items()}})


async def list_profiles(request: web.Request) -> web.Response:
    return _profiles_reply(state_of(request))


async def get_profile(request: web.Request) -> web.Response:
    state = state_of(request)
    name = state.resolve(request.match_info["model"])
    if name is None:
        return native_error(404, f"model '{request.match_info['model']}' not found")
    return json_reply({"model": name, "profile": state.profiles[name].to_dict()})


async def patch_profile(request: web.Request) -> web.Response:
    state = state_of(request)
    asked = request.match_info["model"]
    name = state.resolve(asked)
    if name is None:
        return native_error(404, f"model '{asked}' not found")
    try:
        changes = json.loads(await request.text())
    except json.JSONDecodeError as exc:
        return native_error(400, f"body is not JSON: {exc}")
    if not isinstance(changes, dict) or not changes:
        return native_error(400, "body must be a non-empty JSON object of profile fields")
    try:
        state.profiles[name] = state.profiles[name].updated(changes)
    except ProfileError as exc:
        return native_error(400, str(exc))
    return json_reply({"model": name, "profile": state.profiles[name].to_dict()})


async def stats(request: web.Request) -> web.Response:
    state = state_of(request)
    requests = {model: dict(sorted(counts.items())) for model, counts in sorted(state.stats.items())}
    loaded = [name for name, _ in state.loaded_models()]
    return json_reply({"requests": requests, "total": sum(sum(c.values()) for c in state.stats.values()), "loaded": loaded,
                       "scheduler": state.scheduler.snapshot()})


async def get_scheduler(request: web.Request) -> web.Response:
    return json_reply(state_of(request).scheduler.limits())


async def patch_scheduler(request: web.Request) -> web.Response:
    """``{"parallel": 2, "max_queue": 0}`` (either or both; ``parallel: null`` = no limit)."""
    scheduler = state_of(request).scheduler
    try:
        changes = json.loads(await request.text())
    except json.JSONDecodeError as exc:
        return native_error(400, f"body is not JSON: {exc}")
    if not isinstance(changes, dict) or not changes:
        return native_error(400, "body must be a non-empty JSON object with parallel and/or max_queue")
    unknown = sorted(set(changes) - {"parallel", "max_queue"})
    if unknown:
        return native_error(400, f"unknown scheduler field(s): {', '.join(unknown)} (known: parallel, max_queue)")
    try:
        parallel, max_queue = check_limits(changes.get("parallel", scheduler.parallel),
                                           changes.get("max_queue", scheduler.max_queue))
    except ValueError as exc:
        return native_error(400, str(exc))
    scheduler.configure(parallel, max_queue)
    return json_reply(scheduler.limits())


async def reset(request: web.Request) -> web.Response:
    state = state_of(request)
    state.reset()
    return _profiles_reply(state)


async def unload(request: web.Request) -> web.Response:
    """Forget that a model is loaded, so the next request pays a cold load now."""
    state = state_of(request)
    name = state.resolve(request.match_info["model"])
    if name is None:
        return native_error(404, f"model '{request.match_info['model']}' not found")
    state.unload(name)
    return json_reply({"model": name, "loaded": False})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_simulator/models", list_profiles)
    app.router.add_get("/_simulator/models/{model:.+}", get_profile)
    app.router.add_patch("/_simulator/models/{model:.+}", patch_profile)
    app.router.add_get("/_simulator/stats", stats)
    app.router.add_get("/_simulator/scheduler", get_scheduler)
    app.router.add_patch("/_simulator/scheduler", patch_scheduler)
    app.router.add_post("/_simulator/reset", reset)
    app.router.add_post("/_simulator/unload/{model:.+}", unload)
