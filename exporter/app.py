"""Wire the exporter together: fetcher, NVML reader, caches, collector, registry, WSGI app.

Kept apart from the HTTP server so tests and the benchmark build the same exporter the
command runs and scrape it in-process or over HTTP.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app

from exporter.cache import SingleFlightCache
from exporter.collector import ExporterCollector
from exporter.nvml_reader import NvmlReader
from exporter.ollama_fetch import OllamaFetcher


class Exporter:
    """One exporter: its own registry (nothing global), closed with :meth:`close`."""

    def __init__(self, ollama_url: str, *, timeout: float = 3.0, cache: float = 1.0,
                 nvml: bool = True, nvml_retry: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``clock`` (cache ages, NVML retries) and ``wall_clock`` (``expires_at``) are
        injectable so tests move time instead of sleeping."""
        self.ollama_url = ollama_url
        self.fetcher = OllamaFetcher(ollama_url, timeout)
        self.nvml_reader = NvmlReader(retry_interval=nvml_retry, clock=clock) if nvml else None
        # None: switched off; else whether GPUs were visible at startup (for the log line).
        self.nvml_started = self.nvml_reader.start() if self.nvml_reader is not None else None
        ollama_cache = SingleFlightCache(self.fetcher.fetch, cache, clock)
        nvml_cache = SingleFlightCache(self.nvml_reader.read, cache, clock) if self.nvml_reader else None
        self.collector = ExporterCollector(
            ollama=ollama_cache.get,
            ollama_errors=self.fetcher.errors,
            nvml=nvml_cache.get if nvml_cache else None,
            wall_clock=wall_clock,
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
        if self.nvml_reader is not None:
            self.nvml_reader.close()


def _text(start_response: Callable, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]
