"""Wire the exporter together: fetcher, NVML reader, caches, collector, registry, WSGI app.

Kept apart from the HTTP server so tests and the benchmark build the same exporter the
command runs and scrape it in-process or over HTTP.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

from exporter.cache import SingleFlightCache
from exporter.collector import ExporterCollector, NvmlCounters
from exporter.nvml_deadline import DeadlineRunner
from exporter.nvml_errors import ErrorCounts
from exporter.nvml_reader import NvmlReader
from exporter.nvml_records import NVML_STALE
from exporter.ollama_fetch import OllamaFetcher
from exporter.runners import BlobIndex, RunnerMapper, read_cmdline
from exporter.xid_watcher import XidWatcher


class Exporter:
    """One exporter: its own registry (nothing global), closed with :meth:`close`."""

    def __init__(self, ollama_url: str, *, timeout: float = 3.0, cache: float = 1.0,
                 nvml: bool = True, nvml_retry: float = 30.0, nvml_timeout: float | None = None,
                 xid_events: bool = True,
                 cmdline: Callable[[int], list[str] | None] = read_cmdline,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``clock`` (cache ages, NVML retries) and ``wall_clock`` (``expires_at``) are
        injectable so tests move time instead of sleeping; ``cmdline`` (how a runner's
        command line is read, /proc by default) so tests need no real processes.
        ``nvml_timeout`` (default ``timeout``): the most a scrape waits for NVML."""
        self.ollama_url = ollama_url
        self.fetcher = OllamaFetcher(ollama_url, timeout)
        self.nvml_errors = ErrorCounts()
        self.nvml_reader = NvmlReader(retry_interval=nvml_retry, clock=clock,
                                      errors=self.nvml_errors) if nvml else None
        self.nvml_deadline: DeadlineRunner | None = None
        self.xid_watcher: XidWatcher | None = None
        nvml_get = None
        counters = None
        if self.nvml_reader is not None:
            reader = self.nvml_reader
            deadline = timeout if nvml_timeout is None else nvml_timeout
            # Startup goes through a deadline too: a wedged driver must not stop the
            # exporter from serving Ollama's series.
            started = DeadlineRunner(reader.start, deadline, False, name="nvml-init").run()
            self.nvml_deadline = DeadlineRunner(reader.read, deadline, NVML_STALE)
            nvml_get = SingleFlightCache(self.nvml_deadline.run, cache, clock).get
            if xid_events:
                self.xid_watcher = XidWatcher(self.nvml_errors, retry_interval=nvml_retry)
                self.xid_watcher.start()
            watcher = self.xid_watcher
            counters = NvmlCounters(errors=self.nvml_errors.snapshot,
                                    timeouts=lambda: self.nvml_deadline.timeouts if self.nvml_deadline else 0,
                                    xids=watcher.counts if watcher is not None else tuple)
        # None: switched off; else whether GPUs were visible at startup (for the log line).
        self.nvml_started = started if self.nvml_reader is not None else None
        ollama_cache = SingleFlightCache(self.fetcher.fetch, cache, clock)
        self.collector = ExporterCollector(
            ollama=ollama_cache.get,
            ollama_errors=self.fetcher.errors,
            nvml=nvml_get,
            wall_clock=wall_clock,
            nvml_counters=counters,
            runners=RunnerMapper(cmdline, BlobIndex(self.fetcher.show_modelfile)),
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._metrics_app = make_wsgi_app(self.registry)

    def scrape(self) -> str:
        """The text exposition, as Prometheus would get it from /metrics."""
        return generate_latest(self.registry).decode()

    def wsgi_app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """/metrics, /healthz (the exporter itself is alive, whatever Ollama's state) and
        a pointer at /."""
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/":
            return _text(start_response, "200 OK", "ollama-sidecar exporter: metrics at /metrics\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics\n")

    def close(self) -> None:
        self.collector.close()
        self.fetcher.close()
        if self.xid_watcher is not None:
            self.xid_watcher.close()
        if self.nvml_reader is not None:
            self.nvml_reader.close()


def _text(start_response: Callable, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]
