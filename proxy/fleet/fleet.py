"""The fleet of Ollama servers: who has which model, who is healthy, where to send a
request, and the background tasks that keep that knowledge fresh.

The request path calls :meth:`Fleet.choose`, :meth:`Fleet.acquire` / :meth:`Fleet.release`
and :meth:`Fleet.outcome` (dict lookups and counters); discovery (``/api/tags``,
``/api/ps`` every ``discovery_interval``) and health checks (``/api/version`` every
``health_interval``) run in background tasks (:meth:`Fleet.run`). A model missing from
every cached list gets one fresh look on the request path (:meth:`Fleet.refresh_models`)
before the proxy answers 404, so a model pulled a second ago is found.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiohttp

from proxy.config import DEFAULT_SERVER, ProxyConfig
from proxy.dataplane.instrument import canonical_model
from proxy.fleet.balancer import COLD, REASONS, Choice, choose
from proxy.fleet.servers import Loaded, Server
from proxy.metrics import ProxyMetrics, remove_series

log = logging.getLogger("ollama_sidecar.fleet")

# ollama_proxy_upstream_requests_total{outcome} and ollama_proxy_upstream_retries_total{reason}
OK, ERROR, CONNECT = "ok", "error", "connect"
RETRY_CONNECT, RETRY_TIMEOUT, RETRY_BUSY, RETRY_SERVER_ERROR = "connect", "timeout", "busy", "server_error"


class Fleet:
    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self.servers: dict[str, Server] = {}
        self.update_config(config)

    # --- config ------------------------------------------------------------------------------------
    def update_config(self, config: ProxyConfig) -> None:
        """Adopt a (reloaded) server list: servers kept keep what is known about them."""
        self.config = config
        old = self.servers
        self.servers = {name: old[name] if name in old and old[name].config.url == cfg.url else
                        Server(cfg, self.clock) for name, cfg in config.servers.items()}
        for name, server in self.servers.items():
            server.config = config.servers[name]
        for gone in old.keys() - self.servers.keys():
            self._forget(gone)
        m = self.metrics
        single = list(self.servers.values())
        self._only = (Choice((single[0],), COLD, model="") if len(single) == 1 and not config.model_pins
                      and not self.discovers else None)
        # Per-request counters resolved once (labels() takes a lock and builds a key).
        self._decisions = {reason: m.balancer_decisions.labels(reason) for reason in REASONS}
        self._requests = {(name, outcome): m.upstream_requests.labels(name, outcome)
                          for name in self.servers for outcome in (OK, ERROR, CONNECT)}
        for name, server in self.servers.items():
            # Gauges read at scrape time: the request path never writes them, and an
            # ejection's end shows without anyone touching the server.
            m.upstream_up.labels(name).set_function(lambda s=server: 1.0 if s.up else 0.0)
            m.upstream_in_flight.labels(name).set_function(lambda s=server: float(s.total_in_flight))
            m.upstream_saturation.labels(name).set_function(lambda s=server: max(
                (s.saturation(model, False) for model in s.in_flight), default=0.0))
            # Estimates: Ollama exposes neither its slots in use nor its queue. Requests
            # beyond `parallel` per model wait in Ollama's queue.
            m.upstream_queued.labels(name).set_function(lambda s=server: float(sum(
                max(0, n - s.config.parallel) for n in s.in_flight.values())))
            self._export(server)
            # Counters that alerts and dashboards take rates of exist from the start at 0.
            for reason in (RETRY_CONNECT, RETRY_TIMEOUT, RETRY_BUSY, RETRY_SERVER_ERROR):
                m.upstream_retries.labels(name, reason)
            for reason in (CONNECT, "errors", "health_check"):
                m.upstream_ejections.labels(name, reason)

    @property
    def several(self) -> bool:
        return len(self.servers) > 1

    @property
    def discovers(self) -> bool:
        """Discovery and health checks run for servers listed under ``upstreams:`` (even
        one); plain ``upstream:`` (and ``models.M.upstream``) send Ollama nothing but the
        clients' requests, as before the fleet existed: there is no choice to make."""
        return any(s.name != DEFAULT_SERVER and not s.config.dedicated for s in self.servers.values())

    # --- the request path ---------------------------------------------------------------------------
    def eligible(self, model: str) -> list[Server]:
        """Servers that may serve ``model``: its pinned ones, else those that list it (a
        server never listed yet counts as having it: better a 404 from Ollama than none)."""
        pins = self.config.model_pins.get(model) or self.config.model_pins.get(canonical_model(model))
        if pins:
            return [self.servers[n] for n in pins if n in self.servers]
        name = canonical_model(model)
        return [s for s in self.servers.values() if not s.config.dedicated
                and (s.installed is None or name in s.installed)]

    def choose(self, model: str, session: str | None, embedding: bool) -> Choice | None:
        if self._only is not None:  # plain `upstream:`: nothing to choose, nothing to count
            return self._only
        choice = choose(self.eligible(model), canonical_model(model), session, embedding)
        if choice is not None:
            self._decisions[choice.reason].inc()
        return choice

    def installed_anywhere(self, model: str) -> bool:
        name = canonical_model(model)
        return any(s.installed is not None and name in s.installed for s in self.servers.values())

    def acquire(self, server: Server, model: str) -> None:
        """One more request for ``model`` (as Ollama lists it: ``Choice.model``) on ``server``."""
        server.in_flight[model] = server.in_flight.get(model, 0) + 1

    def release(self, server: Server, model: str) -> None:
        left = server.in_flight.get(model, 0) - 1
        if left > 0:
            server.in_flight[model] = left
        else:
            server.in_flight.pop(model, None)

    def outcome(self, server: Server, outcome: str, *, connect: bool = False) -> None:
        """A request's fate on ``server``: ``ok``, ``error`` (a 5xx or a cut) or ``connect``."""
        self._requests[server.name, outcome].inc()
        if outcome == OK:
            server.success()
        elif server.failure(connect):
            self.metrics.upstream_ejections.labels(server.name, CONNECT if connect else "errors").inc()
            log.warning("upstream %s ejected for %gs after %s", server.name, server.ejected_until - self.clock(),
                        "a connection failure" if connect else "server errors in a row")
            self._export(server)

    def retried(self, server: Server, reason: str) -> None:
        self.metrics.upstream_retries.labels(server.name, reason).inc()
        self.metrics.balancer_decisions.labels("failover").inc()

    def cold_load(self, server: Server, model: str) -> None:
        self.metrics.cold_loads.labels(server.name, canonical_model(model)).inc()  # rare: no cache

    # --- background: discovery and health -----------------------------------------------------------
    async def run(self, session: Callable[[], aiohttp.ClientSession | None],
                  while_: Callable[[], bool] = lambda: True) -> None:
        """Discovery and health checks while ``while_()`` holds (until cancelled)."""
        last_discovery = last_health = -1e18
        while while_():
            http = session()
            now = self.clock()
            if http is not None:
                jobs = []
                if now - last_health >= self.config.health_interval:
                    last_health = now
                    jobs += [self._health(http, s) for s in list(self.servers.values())]
                if now - last_discovery >= self.config.discovery_interval:
                    last_discovery = now
                    jobs += [self._discover(http, s) for s in list(self.servers.values())]
                if jobs:
                    await asyncio.gather(*jobs, return_exceptions=True)
            await asyncio.sleep(min(self.config.health_interval, self.config.discovery_interval, 1.0))

    async def refresh_models(self, session: aiohttp.ClientSession) -> None:
        """One fresh look at every server's models (for a model no cached list has)."""
        await asyncio.gather(*(self._discover(session, s) for s in list(self.servers.values())),
                             return_exceptions=True)

    async def _get(self, session: aiohttp.ClientSession, server: Server, path: str, timeout: float) -> Any:
        async with session.get(f"{server.url.rstrip('/')}{path}",
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            return await resp.json(content_type=None)

    async def _health(self, session: aiohttp.ClientSession, server: Server) -> None:
        try:
            await self._get(session, server, "/api/version", self.config.health_timeout)
            ok = True
        except Exception:  # noqa: BLE001 - any failure is a failed check
            ok = False
        changed = server.check_result(ok)
        if changed is not None:
            log.warning("upstream %s is %s (health check /api/version)", server.name, "UP" if changed else "DOWN")
            if not changed:
                self.metrics.upstream_ejections.labels(server.name, "health_check").inc()
        self._export(server)

    async def _discover(self, session: aiohttp.ClientSession, server: Server) -> None:
        timeout = max(self.config.health_timeout, 5.0)
        try:
            tags = await self._get(session, server, "/api/tags", timeout)
            ps = await self._get(session, server, "/api/ps", timeout)
        except Exception as exc:  # noqa: BLE001 - keep what we knew; health says whether it is down
            log.debug("discovery of %s failed: %s", server.name, exc)
            return
        installed = {m.get("name") or m.get("model") for m in (tags.get("models") or []) if isinstance(m, dict)}
        server.installed = frozenset(canonical_model(n) for n in installed if isinstance(n, str))
        for model in server.installed:
            self.metrics.cold_loads.labels(server.name, model)  # at 0 until the first cold load
        loaded = {}
        for m in ps.get("models") or []:
            if isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str):
                size = m.get("size_vram")
                loaded[canonical_model(m.get("name") or m.get("model"))] = Loaded(
                    size if isinstance(size, int) else 0, str(m.get("expires_at", "")))
        for gone in server.loaded.keys() - loaded.keys():
            remove_series(self.metrics.upstream_model_loaded, server.name, gone)
        server.loaded = loaded
        self._export(server)

    # --- metrics ---------------------------------------------------------------------------------------
    def _export(self, server: Server) -> None:
        for model in server.loaded:
            self.metrics.upstream_model_loaded.labels(server.name, model).set(1)

    def _forget(self, name: str) -> None:
        m = self.metrics
        for metric in (m.upstream_up, m.upstream_in_flight, m.upstream_saturation, m.upstream_queued):
            remove_series(metric, name)
        for reason in (RETRY_CONNECT, RETRY_TIMEOUT, RETRY_BUSY, RETRY_SERVER_ERROR):
            remove_series(m.upstream_retries, name, reason)
        for reason in (CONNECT, "errors", "health_check"):
            remove_series(m.upstream_ejections, name, reason)
        for outcome in (OK, ERROR, CONNECT):
            remove_series(m.upstream_requests, name, outcome)
