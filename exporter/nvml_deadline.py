"""Read NVML with a deadline, on one background thread, so a hung driver never holds a scrape.

A wedged driver leaves NVML calls in uninterruptible sleep (D state): no timeout inside
the call, no way to cancel it. The scrape must not wait for it, or Prometheus times out
the whole scrape and loses Ollama's series with the GPUs'. So each read runs on a thread
of its own and the caller waits at most ``timeout`` seconds; past that it gets
``NVML_STALE`` (``nvml_up 0``, no GPU readings) and ``timeouts`` grows.

Threads never pile up: while a read is still running (stuck or slow), later calls wait on
*that* read instead of starting another, so at most one thread is ever blocked in NVML.
When the stuck call returns, the next scrape starts a fresh read.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Generic, TypeVar

log = logging.getLogger("exporter.nvml_reader")
T = TypeVar("T")


class DeadlineRunner(Generic[T]):
    """``run()`` returns ``load()``'s result, or ``on_timeout`` when it takes longer than
    ``timeout`` seconds; an exception from ``load`` propagates."""

    def __init__(self, load: Callable[[], T], timeout: float, on_timeout: T,
                 name: str = "nvml-read") -> None:
        self._load = load
        self.timeout = timeout
        self._on_timeout = on_timeout
        self._name = name
        self._lock = threading.Lock()
        self._running: Future[T] | None = None
        self._timeouts = 0
        self._stuck_logged = False

    @property
    def timeouts(self) -> int:
        """Reads abandoned at their deadline since start."""
        with self._lock:
            return self._timeouts

    @property
    def busy(self) -> bool:
        """A read is running now (the stuck one, after a timeout)."""
        with self._lock:
            return self._running is not None and not self._running.done()

    def run(self) -> T:
        with self._lock:
            future = self._running
            if future is None or future.done():
                future = self._running = Future()
                threading.Thread(target=self._work, args=(future,), name=self._name, daemon=True).start()
        try:
            value = future.result(self.timeout)
        except FutureTimeout:
            with self._lock:
                self._timeouts += 1
                first = not self._stuck_logged
                self._stuck_logged = True
            if first:
                log.warning("NVML did not answer within %gs (a hung driver call?); GPU series are left out "
                            "and nvml_up is 0 until it does; Ollama's series are still served", self.timeout)
            return self._on_timeout
        with self._lock:
            recovered, self._stuck_logged = self._stuck_logged, False
        if recovered:
            log.info("NVML answers in time again")
        return value

    def _work(self, future: Future[T]) -> None:
        try:
            value = self._load()
        except BaseException as exc:  # handed to whoever waits
            future.set_exception(exc)
        else:
            future.set_result(value)
