"""What the proxy knows about each Ollama server: health, installed and loaded models,
requests in flight. Written by discovery and health checks (background tasks) and by the
request path's outcomes; read by the balancer on every request, so reads are plain
attribute and dict lookups.

Health has two sources, as in Envoy: an active check (``/api/version`` every
``health_interval``; down after 2 failures in a row, up after 2 successes) and outlier
detection on real traffic (a refused connection or 3 server errors in a row eject the
server for a backoff that doubles from 30 s to 5 min and resets after a success).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from proxy.config import UpstreamServer

FALL, RISE = 2, 2  # active check: failures to go down, successes to come back
ERRORS_TO_EJECT = 3  # server errors in a row that eject a server
BACKOFF_MIN, BACKOFF_MAX = 30.0, 300.0


@dataclass
class Loaded:
    size_vram: int = 0
    expires_at: str = ""


@dataclass
class Server:
    config: UpstreamServer
    clock: Callable[[], float] = time.monotonic
    checked_up: bool = True  # the active check's verdict; optimistic until it says otherwise
    fails: int = 0
    oks: int = 0
    errors_in_a_row: int = 0
    ejected_until: float = 0.0
    backoff: float = BACKOFF_MIN
    ejections: int = 0
    installed: frozenset[str] | None = None  # None: never listed (unreachable since start)
    loaded: dict[str, Loaded] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)  # per model

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def ejected(self) -> bool:
        return self.clock() < self.ejected_until

    @property
    def up(self) -> bool:
        """Healthy: the active check says up and traffic has not ejected it."""
        return self.checked_up and not self.ejected

    def slots(self, embedding: bool) -> int:
        return 1 if embedding else self.config.parallel

    def saturation(self, model: str, embedding: bool) -> float:
        return self.in_flight.get(model, 0) / self.slots(embedding)

    @property
    def total_in_flight(self) -> int:
        return sum(self.in_flight.values())

    # --- active check ------------------------------------------------------------------------------
    def check_result(self, ok: bool) -> bool | None:
        """Count one health check; returns the new state when it changed."""
        if ok:
            self.oks, self.fails = self.oks + 1, 0
            if not self.checked_up and self.oks >= RISE:
                self.checked_up = True
                return True
        else:
            self.fails, self.oks = self.fails + 1, 0
            if self.checked_up and self.fails >= FALL:
                self.checked_up = False
                return False
        return None

    # --- outlier detection on traffic -------------------------------------------------------------
    def success(self) -> None:
        self.errors_in_a_row = 0
        if not self.ejected:
            self.backoff = BACKOFF_MIN

    def failure(self, connect: bool) -> bool:
        """A request failed on this server; returns True when that ejects it."""
        self.errors_in_a_row += 1
        if self.ejected or not (connect or self.errors_in_a_row >= ERRORS_TO_EJECT):
            return False
        self.ejected_until = self.clock() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        self.errors_in_a_row = 0
        self.ejections += 1
        return True
