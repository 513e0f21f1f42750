"""Admission control: at most ``max_in_flight`` requests upstream, a bounded queue behind.

Ollama queues internally too (OLLAMA_MAX_QUEUE) but a long queue there is invisible and
ends in 503s after minutes. Queuing in the proxy makes the queue a metric
(``ollama_proxy_queue_length``) and lets it shed load early with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import asynccontextmanager
from typing import AsyncIterator

from prometheus_client import Gauge

from proxy.config import Admission
from proxy.dataplane.errors import ProxyError
from proxy.metrics import ErrorType


class AdmissionControl:
    def __init__(self, settings: Admission, queue_gauge: Gauge) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_in_flight) if settings.max_in_flight else None
        self._waiting = 0
        self._gauge = queue_gauge

    def _overloaded(self, why: str) -> ProxyError:
        retry = str(max(1, math.ceil(self.settings.queue_timeout)))
        return ProxyError(503, ErrorType.OVERLOADED, f"proxy overloaded: {why}; retry later",
                          headers={"Retry-After": retry})

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        slots = self._slots
        if slots is None:
            yield
            return
        if slots.locked():
            if self._waiting >= self.settings.max_queue:
                raise self._overloaded(f"{self.settings.max_in_flight} requests in flight and "
                                       f"{self._waiting} queued")
            self._waiting += 1
            self._gauge.set(self._waiting)
            try:
                await asyncio.wait_for(slots.acquire(), self.settings.queue_timeout)
            except asyncio.TimeoutError:
                raise self._overloaded(f"no slot within {self.settings.queue_timeout:g}s") from None
            finally:
                self._waiting -= 1
                self._gauge.set(self._waiting)
        else:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()
