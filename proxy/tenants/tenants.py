"""Tenants: who a request belongs to, whether its tenant may send it now, and what it used.

A key is known by its SHA-256 digest only (configs may hold just the digests): the
presented key is hashed once and looked up. An attacker cannot steer a digest's bytes,
so the lookup's timing says nothing about any key; the key itself never reaches logs,
labels or Ollama. The tenant's name comes from the config, so its label is bounded.

Attribution goes on session-free counters: requests by route, model and error type,
tokens by kind, and the GPU time Ollama reports (load, prompt evaluation and generation),
so a team sending long prompts is seen as the cost it is.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from proxy.common.bearer import bearer_token
from proxy.config import ProxyConfig, TenantConfig
from proxy.dataplane.instrument import RequestRecord
from proxy.metrics import NO_MODEL, NO_ROUTE, ErrorType, ProxyMetrics, remove_series
from proxy.tenants.limits import DAY, LIMIT_NAMES, Refusal, Usage


class Tenants:
    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.usage: dict[str, Usage] = {}
        # Labelled children, bounded as their labels are (tenants from the config, routes,
        # capped models, error types); a removed tenant's stay until restart, at their value.
        self._requests: dict[tuple[str, str, str, str], Any] = {}
        self._per_model: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.update_config(config)

    def update_config(self, config: ProxyConfig) -> None:
        """Keys and limits from a (reloaded) config: a rotated key works at once, a removed
        one is refused at once; use so far is kept for tenants that stay."""
        tenants = config.tenants
        self.by_digest: dict[bytes, str] = {d: t.name for t in tenants.values() for d in t.digests}
        self.required = bool(tenants)
        for name, tenant in tenants.items():
            usage = self.usage.get(name)
            if usage is None:
                self.usage[name] = Usage(tenant.limits)
            else:
                usage.limits = tenant.limits
            self._zero_series(tenant)  # a limit added by a reload too
            for limit in LIMIT_NAMES:
                value = getattr(tenant.limits, limit)
                if value is None:
                    remove_series(self.metrics.tenant_limit, name, limit)
                    remove_series(self.metrics.tenant_usage, name, limit)
                else:
                    self.metrics.tenant_limit.labels(name, limit).set(value)
        for gone in set(self.usage) - set(tenants):
            del self.usage[gone]
            for limit in LIMIT_NAMES:
                remove_series(self.metrics.tenant_limit, gone, limit)
                remove_series(self.metrics.tenant_usage, gone, limit)

    def _zero_series(self, tenant: TenantConfig) -> None:
        """Refusals start at 0 for every configured limit, so rate() and increase() (the
        alert, `usage --prometheus`) see the first one."""
        limited = False
        for limit in LIMIT_NAMES:
            if getattr(tenant.limits, limit) is not None:
                self.metrics.tenant_limited.labels(tenant.name, limit)
                limited = True
        if limited:
            self.metrics.tenant_requests.labels(tenant.name, NO_ROUTE, NO_MODEL, ErrorType.RATE_LIMITED)

    # --- the request path ---------------------------------------------------------------------
    def identify(self, authorization: str | None) -> str | None:
        """The tenant of a request's key, or None for a missing or unknown key."""
        token = bearer_token(authorization)
        if not token:
            return None
        return self.by_digest.get(hashlib.sha256(token).digest())

    def admit(self, tenant: str) -> Refusal | None:
        usage = self.usage.get(tenant)
        if usage is None:
            return None
        refusal = usage.admit(self.clock(), self.wall())
        if refusal is not None:
            self.metrics.tenant_limited.labels(tenant, refusal.limit).inc()
        return refusal

    def finish(self, tenant: str, rec: RequestRecord, admitted: bool) -> None:
        """Attribute one finished request (refused ones included) to its tenant."""
        model = rec.model if admitted else NO_MODEL
        usage = self.usage.get(tenant) if admitted else None
        if usage is not None:
            usage.in_flight -= 1  # first: nothing below may keep the slot
        key = (tenant, rec.route if admitted else NO_ROUTE, model, rec.error_type)
        requests = self._requests.get(key)
        if requests is None:  # children resolved once: labels() takes a lock and builds a key
            requests = self._requests[key] = self.metrics.tenant_requests.labels(*key)
        requests.inc()
        if not admitted:
            return
        stats = rec.stats
        tokens = 0
        if stats is not None:
            children = self._per_model.get((tenant, model))
            if children is None:
                m = self.metrics
                children = self._per_model[(tenant, model)] = (
                    m.tenant_tokens.labels(tenant, model, "prompt"), m.tenant_tokens.labels(tenant, model, "completion"),
                    m.tenant_gpu_seconds.labels(tenant, model))
            if stats.prompt_tokens:
                children[0].inc(stats.prompt_tokens)
                tokens += stats.prompt_tokens
            if stats.completion_tokens:
                children[1].inc(stats.completion_tokens)
                tokens += stats.completion_tokens
            gpu = (stats.load_duration or 0.0) + (stats.prompt_eval_duration or 0.0) + (stats.eval_duration or 0.0)
            if gpu:
                children[2].inc(gpu)
        if usage is not None:
            usage.finish(self.clock(), self.wall(), tokens)

    # --- off the request path -------------------------------------------------------------------
    def day_usage(self) -> dict[str, dict[str, int]]:
        """Each tenant's tokens today (UTC), to survive a restart (a daily budget would
        otherwise start over whenever the proxy does)."""
        wall = self.wall()
        out = {}
        for name, usage in self.usage.items():
            usage.roll_day(wall)
            if usage.day_tokens:
                out[name] = {"day": usage.day, "tokens": usage.day_tokens}
        return out

    def restore_day_usage(self, saved: Any) -> None:
        """Take back :meth:`day_usage` as saved; another day's, or a tenant gone, is dropped."""
        day = int(self.wall() // DAY)
        for name, entry in (saved if isinstance(saved, dict) else {}).items():
            usage = self.usage.get(name)
            if usage is None or not isinstance(entry, dict) or entry.get("day") != day:
                continue
            tokens = entry.get("tokens")
            if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
                usage.roll_day(self.wall())
                usage.day_tokens = max(usage.day_tokens, tokens)

    def export_usage(self) -> None:
        """``ollama_proxy_tenant_usage``: each tenant's use against each of its limits."""
        now, wall = self.clock(), self.wall()
        for name, usage in self.usage.items():
            for limit, value in usage.window(now, wall).items():
                if getattr(usage.limits, limit) is not None:
                    self.metrics.tenant_usage.labels(name, limit).set(value)
