"""Fetch Ollama's version, installed and loaded models concurrently, under one deadline.

The three GETs run side by side on a small thread pool so a scrape costs one round trip,
and the scrape waits for them at most ``timeout`` seconds in all: a hung Ollama makes
``ollama_up`` 0 on time instead of making Prometheus time out the whole scrape (and lose
the GPU metrics with it). A request still hanging after the deadline is abandoned; its
own socket timeout (the same ``timeout``) ends it in the background.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

import urllib3

from exporter.ollama_api import InstalledModel, LoadedModel, OllamaReplyError, parse_ps, parse_tags, parse_version

log = logging.getLogger(__name__)

# endpoint label -> (path, parser). The label values are those of ollama_scrape_errors_total.
ENDPOINTS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "version": ("/api/version", parse_version),
    "tags": ("/api/tags", parse_tags),
    "ps": ("/api/ps", parse_ps),
}
_WORKERS = 12  # 3 endpoints x a few abandoned generations while Ollama hangs


@dataclass(frozen=True)
class OllamaSnapshot:
    """What one fetch learned. A field is None when its endpoint failed this time, so the
    collector emits nothing for it rather than last time's (stale) values."""

    duration: float
    version: str | None
    installed: list[InstalledModel] | None
    loaded: list[LoadedModel] | None
    failures: dict[str, str]  # endpoint -> reason, for this fetch only

    @property
    def up(self) -> bool:
        return not self.failures


class OllamaFetcher:
    """Fetches snapshots and counts failures per endpoint over the exporter's life."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = without_credentials(self.base_url)  # for logs: never a password
        self.timeout = timeout
        # urllib3 rather than requests: a third of the cost per call, and the scrape budget
        # is milliseconds. Keep-alive connections, no retries (the next scrape retries).
        self._http = urllib3.PoolManager(maxsize=_WORKERS, retries=False,
                                         timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="ollama-fetch")
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(ENDPOINTS, 0)
        self._was_up: bool | None = None

    def errors(self) -> dict[str, int]:
        """Failed fetches so far, by endpoint (every endpoint present, from 0)."""
        with self._lock:
            return dict(self._errors)

    def fetch(self) -> OllamaSnapshot:
        start = time.perf_counter()
        futures: dict[str, Future[Any]] = {
            name: self._pool.submit(self._get, path, parse) for name, (path, parse) in ENDPOINTS.items()
        }
        wait(futures.values(), timeout=self.timeout)
        results: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for name, future in futures.items():
            if not future.done():
                future.cancel()
                failures[name] = f"no answer within {self.timeout:g}s"
            elif future.exception() is not None:
                failures[name] = _describe(future.exception())
            else:
                results[name] = future.result()
        snapshot = OllamaSnapshot(
            duration=time.perf_counter() - start,
            version=results.get("version"),
            installed=results.get("tags"),
            loaded=results.get("ps"),
            failures=failures,
        )
        self._account(snapshot)
        return snapshot

    def show_modelfile(self, model: str) -> str | None:
        """``POST /api/show``'s ``modelfile`` (its ``FROM`` lines name the model's blobs),
        or None when Ollama does not answer it properly: the caller tries again later."""
        try:
            reply = self._http.request("POST", self.base_url + "/api/show", body=json.dumps({"model": model}),
                                       headers={"Content-Type": "application/json"})
            body = json.loads(reply.data) if reply.status == 200 else None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return None
        modelfile = body.get("modelfile") if isinstance(body, dict) else None
        return modelfile if isinstance(modelfile, str) else None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.clear()

    def _get(self, path: str, parse: Callable[[Any], Any]) -> Any:
        reply = self._http.request("GET", self.base_url + path)
        if reply.status != 200:
            raise OllamaReplyError(f"{path}: HTTP {reply.status}")
        try:
            body = json.loads(reply.data)
        except ValueError:  # UnicodeDecodeError included
            raise OllamaReplyError(f"{path}: reply is not JSON") from None
        return parse(body)

    def _account(self, snapshot: OllamaSnapshot) -> None:
        """Count failures, and log only when Ollama's state changes (not every scrape)."""
        with self._lock:
            for name in snapshot.failures:
                self._errors[name] += 1
            was_up, self._was_up = self._was_up, snapshot.up
        if not snapshot.up and was_up is not False:
            reasons = "; ".join(f"{name}: {why}" for name, why in snapshot.failures.items())
            log.warning("Ollama at %s is not answering properly (%s); ollama_up is 0 until it does",
                        self.display_url, reasons)
        elif snapshot.up and was_up is False:
            log.info("Ollama at %s answers again; ollama_up is 1", self.display_url)


def without_credentials(url: str) -> str:
    """``https://user:secret@host:1/x`` -> ``https://host:1/x``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"


def _describe(exc: BaseException) -> str:
    """A short reason for a log line; never the body (it could hold anything)."""
    if isinstance(exc, OllamaReplyError):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before TimeoutError: a subclass
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return "connection failed"
    return type(exc).__name__
