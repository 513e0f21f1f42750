"""The proxy's aiohttp application: its own endpoints first, everything else forwarded.

``/metrics``, ``/healthz`` and ``/readyz`` belong to the proxy and are never forwarded;
the admin API and the Alertmanager webhook live under ``/admin/``. Any other path and
method goes to Ollama. Background work (config watch, Alertmanager reconcile) runs as
tasks tied to the application's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from proxy.common.bearer import token_matches
from proxy.common.jsonutil import parse_json
from proxy.common.listen import parse_listen
from proxy.config import ProxyConfig
from proxy.control.admin import (BREAKERS, CHANGES, CONTROL, RELOAD, ROLLOUTS, STATE_VIEW, UPSTREAM_SESSION,
                                 add_admin_routes, make_auth_middleware)
from proxy.control.alertmanager import Reconciler
from proxy.control.breaker import Breakers
from proxy.control.changes import Changes, LocalChanges
from proxy.control.notify import Notifier
from proxy.control.plane import ControlPlane
from proxy.control.probe import Probes
from proxy.control.reload import ConfigReloader
from proxy.control.rollout import Rollouts
from proxy.control.routing import Decision, RouteTable
from proxy.control.state import StateFile, persisted_key
from proxy.dataplane.admission import AdmissionControl
from proxy.dataplane.errors import ProxyError, error_response
from proxy.dataplane.forward import Forwarder
from proxy.dataplane.guards import make_request_guard
from proxy.dataplane.http_log import install_malformed_request_filter
from proxy.dataplane.instrument import Recorder, RequestRecord
from proxy.dataplane.label_values import CleanedRegistry
from proxy.fleet.fleet import Fleet
from proxy.metrics import ARM_FAILURES, NOT_EVIDENCE, Arm, ErrorType, ProxyMetrics
from proxy.quality.feedback import REQUEST_ID, FeedbackError, key_hash
from proxy.quality.signals import QualitySignals
from proxy.tenants.tenants import Tenants

if TYPE_CHECKING:  # imported when `state:` asks for it: redis-py costs a single proxy 7 MB
    from proxy.replicas.replica import Replica

log = logging.getLogger("ollama_sidecar.proxy")



class Drain:
    """Whether the proxy is stopping: ``/readyz`` says so at once, so a load balancer
    stops sending new work while requests in flight finish."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.time()


FORWARDER = web.AppKey("forwarder", Forwarder)
METRICS = web.AppKey("metrics", ProxyMetrics)
DRAIN = web.AppKey("drain", Drain)


def build_app(config: ProxyConfig, metrics: ProxyMetrics | None = None,
              overrides: dict[str, Any] | None = None) -> web.Application:
    """Assemble the proxy. ``overrides`` are the CLI flags, re-applied on every reload."""
    metrics = metrics or ProxyMetrics()
    install_malformed_request_filter()
    recorder = Recorder(metrics, config, session_key=session_label_key(config))
    routes = RouteTable(config)
    control = ControlPlane(config, routes, metrics)
    notifier = Notifier(metrics, lambda: forwarder.config.notify_url, lambda: forwarder.config.notify_timeout)
    rollouts = Rollouts(control, metrics, lambda: forwarder.config.decisions, notify=notifier.send)
    tenants = Tenants(config, metrics)
    # One proxy: the day's tokens per tenant survive restarts beside the state file (with
    # Redis they are the deployment's, there).
    tenant_days = StateFile(f"{config.state_file}.tenants") if config.state_file and config.tenants else None
    if tenant_days is not None:
        tenants.restore_day_usage(tenant_days.load()[0].get("tenant_days"))
    replica: Replica | None = None
    if config.shared_state is not None:
        from proxy.replicas.replica import Replica
        replica = Replica(config.shared_state, control, metrics, rollouts, tenants=tenants)
        replica.send_event, rollouts.notify = notifier.send, replica.hold_event
    changes: Changes = replica if replica is not None else LocalChanges()
    breakers = Breakers(routes, metrics, trip=lambda route: changes.decide(
        [route], lambda: control.rollback(route, "breaker")))
    probes = Probes(routes, lambda: forwarder.config.decisions, finish=lambda route, passed, why: changes.decide(
        [route], lambda: control.end_probe(route, passed, why)))

    if replica is None:
        metrics.state_backend_up.set(1)
        metrics.replica_leader.set(1)

        def on_result(decision: Decision, rec: RequestRecord) -> None:
            breakers.observe(decision, rec.error_type)
            probes.observe(decision, rec.error_type)
            rollouts.observe(decision, rec)
    else:
        # Several replicas: the request path only tallies; the breaker and the probe decide on
        # every replica's tallies, summed in Redis (proxy.replicas.counts).
        outcomes = replica.outcomes
        rollouts.shared_totals = {}
        rollouts.save_every = 5.0

        def on_result(decision: Decision, rec: RequestRecord) -> None:
            if decision.arm != Arm.DIRECT and rec.error_type not in NOT_EVIDENCE:
                outcomes.add(decision.route, decision.arm == Arm.CANARY, rec.error_type in ARM_FAILURES)
            rollouts.observe(decision, rec)

        def feed(route: str, tally: tuple[int, int, int, int]) -> None:
            breakers.observe_counts(route, *tally)
            probes.observe_counts(route, *tally)
        replica.feed_breakers = feed

    fleet = Fleet(config, metrics)
    recorder.installed = fleet.installed_anywhere
    quality = QualitySignals(config, metrics)
    quality.feedback.on_rating = rollouts.rated
    if replica is not None:
        quality.feedback.outbox = replica.served
    forwarder = Forwarder(config, recorder, routes, AdmissionControl(config.admission, metrics.queue_length),
                          fleet, on_result=on_result, quality=quality, tenants=tenants)

    def apply(new: ProxyConfig, old: ProxyConfig) -> None:
        forwarder.update_config(new)
        fleet.update_config(new)
        control.apply_config(new, old)
        if replica is not None:
            asyncio.get_running_loop().create_task(replica.adopt_config())

    def record_reload(ok: bool, error: str | None) -> None:
        metrics.config_reloads.labels("success" if ok else "failure").inc()
        control.last_reload_error = error
        control.last_reload_at = time.time()

    reloader = (ConfigReloader(config.config_path, overrides or {}, lambda: forwarder.config, apply, record_reload)
                if config.config_path else None)

    # client_max_size bounds bodies we read ourselves; passthrough bodies stream untouched.
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[make_auth_middleware(precheck=make_front_guard(forwarder))])
    app[FORWARDER] = forwarder
    app[METRICS] = metrics
    app[DRAIN] = Drain()
    app[CONTROL] = control
    app[BREAKERS] = breakers
    app[ROLLOUTS] = rollouts
    app[UPSTREAM_SESSION] = lambda: forwarder.session
    app[CHANGES] = changes
    app[STATE_VIEW] = replica.describe if replica is not None else (
        lambda: {"backend": "file" if config.state_file else "memory", "path": config.state_file, "up": True})
    app[RELOAD] = reloader.reload if reloader else (lambda: (False, "no config file to reload (start with --config)"))

    async def lifecycle(app: web.Application):
        await forwarder.start()
        tasks = []
        if reloader is not None:
            tasks.append(asyncio.create_task(reloader.watch(config.reload_interval)))
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.reload)
        if config.alertmanager_url:
            reconciler = Reconciler(control, metrics, config.alertmanager_url, config.reconcile_interval,
                                    config.reconcile_grace, changes=changes)
            assert forwarder.session is not None
            tasks.append(asyncio.create_task(reconciler.run(forwarder.session)))
        notifier.session = forwarder.session
        # Plain `upstream:`: nothing to choose, so no discovery or health traffic to it.
        tasks.append(asyncio.create_task(run_fleet(fleet, lambda: forwarder.session)))
        tasks.append(asyncio.create_task(sweep_sessions(quality)))
        tasks.append(asyncio.create_task(export_tenant_usage(tenants, tenant_days)))
        tasks.append(asyncio.create_task(run_rollouts(rollouts, lambda: forwarder.config.rollout_tick,
                                                      lambda: forwarder.session, replica)))
        if replica is not None:
            tasks.append(asyncio.create_task(replica.run()))
        yield
        if replica is not None:
            replica.stopping = True  # its loop leaves at its next turn, cancelled or not
        for task in tasks:
            task.cancel()
        # Bounded: a background task stuck in a library call must not hold up the stop (the
        # requests in flight have had their drain already).
        await asyncio.wait(tasks, timeout=3.0)
        for task in list(notifier.tasks):
            task.cancel()
        if tenant_days is not None:
            save_tenant_days(tenants, tenant_days, {})
        if replica is not None:
            if replica.leader:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2 * config.shared_state.connect_timeout):
                        await replica.transact(list(control.rollouts), control.save)  # the latest evidence
            await replica.close()
        else:
            control.save()  # the rollouts' latest evidence
        await forwarder.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/metrics", make_metrics_handler(metrics.registry))
    app.router.add_post("/admin/session-label", session_label_handler)
    feedback = make_feedback_handler(forwarder, quality, replica)
    app.router.add_post("/api/feedback", feedback)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_admin_routes(app)
    app.router.add_route("*", "/{tail:.*}", forwarder.handle)
    return app


TENANT_DAYS_SAVE_EVERY = 30.0


async def export_tenant_usage(tenants: Tenants, days_file: StateFile | None = None) -> None:
    """Each tenant's use against its limits as gauges, every second, off the request path;
    with a state file, the day's tokens saved beside it every 30 s (and at shutdown)."""
    last_saved: dict[str, Any] = {}
    next_save = time.monotonic() + TENANT_DAYS_SAVE_EVERY
    while True:
        await asyncio.sleep(1.0)
        tenants.export_usage()
        if days_file is not None and time.monotonic() >= next_save:
            next_save = time.monotonic() + TENANT_DAYS_SAVE_EVERY
            last_saved = save_tenant_days(tenants, days_file, last_saved)


def save_tenant_days(tenants: Tenants, days_file: StateFile, last: dict[str, Any]) -> dict[str, Any]:
    usage = tenants.day_usage()
    if usage != last:
        try:
            days_file.save({"tenant_days": usage})
        except OSError as exc:
            log.error("cannot save tenants' daily token use to %s: %s", days_file.path, exc)
    return usage


async def sweep_sessions(quality: QualitySignals) -> None:
    """Expire idle sessions (their duration and request count are observed then), at most
    a quarter of the active window late."""
    while True:
        await asyncio.sleep(min(5.0, quality.tracker.active_window / 4))
        quality.tracker.sweep()


def make_feedback_handler(forwarder: Forwarder, quality: QualitySignals, replica: Replica | None = None
                          ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /api/feedback`` and ``/v1/feedback``: a rating for an answer, by its
    X-Request-ID. Data-plane auth applies; errors speak the client's protocol. With
    several replicas the answer may have come from another one: Redis says who served it
    and how it was rated so far."""
    async def feedback(request: web.Request) -> web.Response:
        path = request.path
        try:
            forwarder.authorize(request)
            if request.content_length is not None and request.content_length > 64 * 1024:
                raise ProxyError(413, ErrorType.BAD_REQUEST, "feedback body over 64 KiB")
            try:
                body = parse_json(await request.read())
            except ValueError as exc:
                raise ProxyError(400, ErrorType.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
            store = quality.feedback
            request_id = body.get("request_id") if isinstance(body, dict) else None
            key = key_hash(request.headers.get("Authorization"))
            if replica is not None and isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id):
                mine = store.served.get(request_id)
                served, rating = await replica.lookup_served(request_id, key,
                                                             wait=mine is None or mine.key != key)
                store.adopt(request_id, served, rating, key)
            try:
                result = store.rate(body, key)
            except FeedbackError as exc:
                raise ProxyError(exc.status, ErrorType.BAD_REQUEST, exc.message) from None
            if replica is not None:
                await replica.record_rating(result["request_id"], key, result["rating"])
        except ProxyError as err:
            return error_response(path, err)
        return web.json_response(result)
    return feedback


async def run_fleet(fleet: Fleet, session: Callable[[], aiohttp.ClientSession | None]) -> None:
    """Discovery and health checks while the config lists servers (a reload may add some)."""
    while True:
        if fleet.discovers:
            try:
                await fleet.run(session, while_=lambda: fleet.discovers)
            except Exception:
                log.exception("fleet discovery failed; retrying")
        await asyncio.sleep(1.0)


async def run_rollouts(rollouts: Rollouts, interval: Callable[[], float],
                       session: Callable[[], aiohttp.ClientSession | None], replica: Replica | None = None) -> None:
    """The rollouts' analysis, every ``rollout_tick``: off the request path, and a bug in
    it is logged, never fatal (the request path goes on; the next tick tries again). With
    several replicas only the lease holder analyses, on every replica's counts."""
    while True:
        await asyncio.sleep(interval())
        try:
            http = session()
            if http is not None and (replica is None or replica.leader):
                await rollouts.refresh(http)
            if replica is not None:
                await replica.tick_rollouts()
            else:
                rollouts.tick()
        except Exception:
            log.exception("rollout analysis failed; retrying at the next tick")


def on_listener(request: web.Request, listen: str) -> bool:
    """Whether ``request`` arrived on the listener bound to ``listen`` (by its port)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return bool(sockname) and sockname[1] == parse_listen(listen)[1]


def make_front_guard(forwarder: Forwarder) -> Callable[[web.Request], web.StreamResponse | None]:
    """What every request passes first: the request guard, and on a separate metrics
    listener nothing but /metrics (it is meant for Prometheus's network only)."""
    request_guard = make_request_guard(forwarder)

    def front_guard(request: web.Request) -> web.StreamResponse | None:
        listen = forwarder.config.metrics_listen
        if listen and request.path != "/metrics" and on_listener(request, listen):
            return web.json_response({"error": "this listener (metrics.listen) serves /metrics only"}, status=404)
        return request_guard(request)

    return front_guard


async def session_label_handler(request: web.Request) -> web.Response:
    """``POST /admin/session-label {"session": ID}``: the label this proxy gives the id, so
    on-call can find a known user's series when labels are hashed. The id travels in the
    body, never in a URL that access logs keep."""
    try:
        body = parse_json(await request.read())
    except ValueError as exc:
        return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)
    session = body.get("session") if isinstance(body, dict) else None
    if not isinstance(session, str) or not session:
        return web.json_response({"error": "send {\"session\": \"<id>\"}"}, status=400)
    recorder = request.app[FORWARDER].recorder
    return web.json_response({"label": recorder.label_of(session[:256]),
                              "hashed": recorder.session_key is not None})


def session_label_key(config: ProxyConfig) -> bytes | None:
    """The key of hashed session labels: configured, else kept beside the state file, else
    made for this process only (labels then change at each restart: said once)."""
    if config.session_label == "raw":
        return None
    if config.session_key:
        return config.session_key.encode("utf-8", "surrogateescape")
    if config.state_file:
        path = Path(config.state_file)
        return persisted_key(path.with_name(path.name + ".session-key"))
    log.warning("session labels are hashed with a key made for this process: they change at every restart "
                "and differ between replicas; set session_key_file (or OLLAMA_SIDECAR_SESSION_KEY) or state_file")
    return os.urandom(32)


def make_metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """prometheus_client's own aiohttp handler (text or OpenMetrics by the Accept header,
    gzip when asked), with a net under it: labels are cleaned where they are made, but
    should one ever slip through, the scrape is served with it cleaned instead of failing,
    so one bad series can never blind Prometheus and with it the rollback alerts."""
    plain = make_aiohttp_handler(registry)
    cleaned = make_aiohttp_handler(CleanedRegistry(registry))  # type: ignore[arg-type]

    async def metrics_handler(request: web.Request) -> web.Response:
        config = request.app[FORWARDER].config
        if config.metrics_listen and not on_listener(request, config.metrics_listen):
            return web.json_response({"error": f"/metrics is served on {config.metrics_listen} (metrics.listen)"},
                                     status=404)
        if config.metrics_token and not token_matches(request.headers.get("Authorization"),
                                                      (config.metrics_token.encode(),)):
            return web.json_response({"error": "missing or wrong metrics token: send 'Authorization: Bearer "
                                      "<token>' (metrics.token_file)"}, status=401)
        try:
            return await plain(request)
        except UnicodeError:
            log.error("a label value is not valid UTF-8; /metrics served with it cleaned")
            return await cleaned(request)

    return metrics_handler


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the default upstream answers GET /api/version and the proxy is not stopping."""
    forwarder = request.app[FORWARDER]
    upstream = forwarder.config.upstream
    if request.app[DRAIN].draining:
        return web.json_response({"status": "draining", "upstream": upstream,
                                  "problem": "the proxy is stopping; requests in flight are finishing"},
                                 status=503)
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
