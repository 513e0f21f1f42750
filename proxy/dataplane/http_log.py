"""Malformed HTTP requests: one short line at INFO, not a traceback at ERROR.

aiohttp answers a request it cannot parse with 400 by itself and logs the parser's
exception with its traceback at ERROR on ``aiohttp.server``. A port scanner or a
misconfigured health check then fills the log with alarms nobody can act on, and the
exception's text quotes the offending bytes, which may hold a header value (a token).
This filter replaces those records with one INFO line per ``interval`` on
``ollama_sidecar.http`` that says how many there were, without their bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("ollama_sidecar.http")


class MalformedRequestFilter(logging.Filter):
    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.unreported = 0
        self._next_report = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.unreported += 1
        now = self.clock()
        if now >= self._next_report:
            self._next_report = now + self.interval
            log.info("refused %d malformed HTTP request(s) with %s (last: %s); at most one such line every %gs",
                     self.unreported, exc.code or 400, type(exc).__name__, self.interval)
            self.unreported = 0
        return False


def install_malformed_request_filter() -> None:
    """Attach the filter to aiohttp's server logger once per process."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
