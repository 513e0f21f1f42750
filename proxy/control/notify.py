"""Rollout notifications: one JSON POST per phase or step change, never in the way.

The body's ``text`` reads well in Slack or Mattermost (their incoming webhooks show it);
the other fields carry the same facts for machines. A POST runs in its own task with a
timeout; a failure is logged and counted (``ollama_proxy_rollout_notifications_total``)
and the rollout goes on: a chat outage must not hold a rollback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import aiohttp

from proxy.metrics import ProxyMetrics

log = logging.getLogger("ollama_sidecar.rollout")


class Notifier:
    def __init__(self, metrics: ProxyMetrics, url: Callable[[], str | None], timeout: Callable[[], float]) -> None:
        self.metrics = metrics
        self.url = url
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task] = set()

    def send(self, body: dict[str, Any]) -> None:
        """Queue one notification (returns at once; no-op without a URL or a loop)."""
        url = self.url()
        if not url or self.session is None:
            return
        task = asyncio.get_running_loop().create_task(self._post(url, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        assert self.session is not None
        try:
            async with self.session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout())) as resp:
                if resp.status >= 400:
                    raise RuntimeError(f"HTTP {resp.status}")
            self.metrics.rollout_notifications.labels("sent").inc()
        except Exception as exc:  # noqa: BLE001 - any failure is logged and counted, never raised
            self.metrics.rollout_notifications.labels("failed").inc()
            log.warning("rollout notification to the notify URL failed (%s): %s", type(exc).__name__, exc)
