"""The proxy's aiohttp application: its own endpoints first, everything else forwarded.

``/metrics``, ``/healthz`` and ``/readyz`` belong to the proxy and are never forwarded;
the admin API lives under ``/admin/``. Any other path and method goes to Ollama.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.admission import AdmissionControl
from proxy.config import ProxyConfig
from proxy.forward import Forwarder
from proxy.instrument import Recorder
from proxy.metrics import ProxyMetrics
from proxy.routing import RouteTable

FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", ProxyMetrics)
CONFIG = web.AppKey("config", ProxyConfig)


def build_app(config: ProxyConfig, metrics: ProxyMetrics | None = None) -> web.Application:
    metrics = metrics or ProxyMetrics()
    recorder = Recorder(metrics, config)
    routes = RouteTable(config)
    forwarder = Forwarder(config, recorder, routes, AdmissionControl(config.admission, metrics.queue_length))
    # client_max_size bounds bodies we read ourselves; passthrough bodies stream untouched.
    app = web.Application(client_max_size=config.max_body_bytes, handler_args={"max_field_size": 65536})
    app[FORWARDER] = forwarder
    app[METRICS] = metrics
    app[CONFIG] = config

    async def lifecycle(app: web.Application):
        await forwarder.start()
        yield
        await forwarder.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", forwarder.handle)
    return app


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the default upstream answers GET /api/version."""
    forwarder = request.app[FORWARDER]
    upstream = request.app[CONFIG].upstream
    assert forwarder.session is not None
    try:
        async with asyncio.timeout(3):
            async with forwarder.session.get(f"{upstream}/api/version") as resp:
                payload = await resp.json(content_type=None)
                if resp.status == 200 and isinstance(payload, dict):
                    return web.json_response({"status": "ready", "upstream": upstream,
                                              "ollama_version": payload.get("version")})
                problem = f"GET /api/version answered {resp.status}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return web.json_response({"status": "not ready", "upstream": upstream, "problem": problem}, status=503)
