"""A short-lived cache that lets concurrent scrapes share one fetch.

Several Prometheus servers (HA pairs, a federating one, a person with curl) often scrape
the exporter within the same second. Without this each scrape would hit Ollama and NVML
again; with it, a scrape that arrives while a fetch is running waits for that fetch
instead of starting its own, and scrapes within ``ttl`` seconds of it reuse its result.
With ``ttl=0`` every scrape fetches, but concurrent ones still share the running fetch
(so a hanging Ollama never holds one scrape for longer than one timeout).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class SingleFlightCache(Generic[T]):
    def __init__(self, load: Callable[[], T], ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded_at: float | None = None
        self._running: Future[T] | None = None

    def get(self) -> T:
        with self._lock:
            if self._loaded_at is not None and self._clock() - self._loaded_at < self._ttl:
                return self._value  # type: ignore[return-value]
            running = self._running
            if running is None:
                future: Future[T] = Future()
                self._running = future
        if running is not None:
            return running.result()
        try:
            value = self._load()
        except BaseException as exc:
            with self._lock:
                self._running = None
            future.set_exception(exc)
            raise
        with self._lock:
            self._value, self._loaded_at, self._running = value, self._clock(), None
        future.set_result(value)
        return value
