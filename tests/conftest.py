"""Shared test helpers: a proxy running in a background thread in front of a fake Ollama,
the one deadline-polling helper (:func:`wait_for`) and the one fake clock (:class:`FakeClock`)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import requests
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import FORWARDER, METRICS, build_app
from proxy.commands.children import free_port  # noqa: F401  (tests import it from here)
from proxy.commands.server import new_event_loop
from proxy.config import ProxyConfig, parse_config


def wait_for(predicate, timeout: float, what: str = "a condition", interval: float = 0.05):
    """Poll ``predicate`` until it is truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(interval)


class FakeClock:
    """A clock that moves only when the test moves it, for every constructor that takes a
    ``clock`` (a callable returning seconds): ``clock = FakeClock(); ...; clock.advance(30)``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class RunningProxy:
    def __init__(self, app: web.Application, url: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.url = url
        self.loop = loop  # the proxy's event loop, for tests that act on the app

    @property
    def metrics(self):
        return self.app[METRICS]

    def session_label(self, session: str) -> str:
        """The label value this proxy gives a session id (a keyed hash by default)."""
        return self.app[FORWARDER].recorder.label_of(session)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples from /metrics as {(name, sorted labels): value}."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for (n, lbls), v in self.scrape().items():
            if n == name and all(dict(lbls).get(k) == val for k, val in labels.items()):
                total += v
        return total


@contextmanager
def running_proxy(settings: dict[str, Any], environ: dict[str, str] | None = None,
                  config: ProxyConfig | None = None) -> Iterator[RunningProxy]:
    """Start the proxy (real server, real sockets) in a thread; stop it afterwards."""
    config = config or parse_config(settings, environ=environ or {})
    app = build_app(config)
    loop = new_event_loop("auto")  # the loop `ollama-sidecar proxy` runs on
    port = free_port()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "proxy did not start"
    try:
        yield RunningProxy(app, f"http://127.0.0.1:{port}", loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def proxy_for(httpserver):
    """``with proxy_for(**settings) as p`` — a proxy whose upstream is the fake Ollama."""
    def make(**settings: Any):
        settings.setdefault("upstream", httpserver.url_for("/").rstrip("/"))
        settings.setdefault("access_log", False)
        return running_proxy(settings)
    return make
