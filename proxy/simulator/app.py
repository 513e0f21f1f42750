"""Build the simulator app, or run it in a background thread for tests and benchmarks.

``running_simulator`` gives synchronous code (pytest, bench scripts, the demo) a live
simulator on a free loopback port without a subprocess: startup is milliseconds and the
same process can read its state.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from aiohttp import web

from proxy.simulator import control, native, openai_compat
from proxy.simulator.profiles import DEFAULT_PROFILES_PATH, ModelProfile, load_profiles, profiles_from_dict
from proxy.simulator.scheduler import DEFAULT_MAX_QUEUE
from proxy.simulator.state import SPLIT_WRITES_KEY, STATE_KEY, SimulatorState

ProfilesArg = Mapping[str, ModelProfile] | Mapping[str, Mapping] | str | Path | None


def coerce_profiles(profiles: ProfilesArg) -> dict[str, ModelProfile]:
    """Accept profiles as objects, plain dicts of fields, a YAML path, or None (defaults)."""
    if profiles is None:
        return load_profiles(DEFAULT_PROFILES_PATH)
    if isinstance(profiles, (str, Path)):
        return load_profiles(profiles)
    if all(isinstance(p, ModelProfile) for p in profiles.values()):
        return dict(profiles)  # type: ignore[arg-type]
    return profiles_from_dict({"models": {name: dict(p) for name, p in profiles.items()}})


@web.middleware
async def _not_found_like_gin(request: web.Request, handler):
    """Gin answers unknown paths with a plain ``404 page not found``, not aiohttp's HTML."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed", content_type="text/plain")


def build_app(profiles: ProfilesArg = None, seed: int | None = None, split_writes: bool = True,
              parallel: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> web.Application:
    """The simulator as an aiohttp application (mount it with any runner).

    ``parallel``: slots per loaded model (``OLLAMA_NUM_PARALLEL``); None, the in-process
    default, sets no limit, so tests that hold hundreds of streams open at once keep doing
    so; pass a number to test queueing (``ollama-sidecar simulate`` defaults to 4).
    ``max_queue``: requests that may wait before the rest get 503 (``OLLAMA_MAX_QUEUE``).

    Run it with ``handler_cancellation=True`` so requests whose client left stop at once
    (and leave their slot or queue place); without it they stop within ~50 ms by polling
    the transport once they run.
    """
    app = web.Application(middlewares=[_not_found_like_gin])
    state = SimulatorState(coerce_profiles(profiles), seed, parallel, max_queue)
    app[STATE_KEY] = state
    app[SPLIT_WRITES_KEY] = split_writes

    async def _stop_hanging(_: web.Application) -> None:
        state.shutting_down.set()

    app.on_shutdown.append(_stop_hanging)
    native.add_routes(app)
    openai_compat.add_routes(app)
    control.add_routes(app)
    return app


@dataclass
class RunningSimulator:
    """A simulator serving on ``url`` from a background thread."""

    url: str
    app: web.Application

    @property
    def state(self) -> SimulatorState:
        return self.app[STATE_KEY]


@contextmanager
def running_simulator(
    profiles: ProfilesArg = None, seed: int | None = 0, split_writes: bool = True, host: str = "127.0.0.1", port: int = 0,
    parallel: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
) -> Iterator[RunningSimulator]:
    """``with running_simulator(profiles=..., seed=1) as sim: requests.get(sim.url + "/api/ps")``.

    ``parallel``/``max_queue`` as in ``build_app`` (no slot limit unless asked).
    """
    app = build_app(profiles, seed, split_writes, parallel, max_queue)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ollama-simulator", daemon=True)
    thread.start()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        return runner.addresses[0][1]

    async def stop() -> None:
        app[STATE_KEY].shutting_down.set()
        await runner.cleanup()

    try:
        bound = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        yield RunningSimulator(url=f"http://{host}:{bound}", app=app)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()



