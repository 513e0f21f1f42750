"""What the simulated server remembers between requests: profiles, loaded models, stats.

Ollama keeps a model in memory for ``keep_alive`` after its last use and pays a cold load
when it comes back; ``/api/ps`` lists only what is loaded. Modelling that here (rather than
listing every profile as loaded) is what lets the exporter and the dashboards see models
come and go, and lets tests observe ``load_duration`` after idle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Mapping

from aiohttp import web

from proxy.simulator.profiles import ModelProfile
from proxy.simulator.scheduler import DEFAULT_MAX_QUEUE, Scheduler

FOREVER_SECONDS = 10 * 365 * 24 * 3600.0  # Ollama shows a far-future expiry for keep_alive < 0


@dataclass
class LoadedModel:
    """A model resident in (simulated) memory."""

    expires_at: float  # wall-clock seconds since the epoch
    in_use: int = 0


class SimulatorState:
    """Shared by every handler of one simulator app (one event loop, so no thread locks)."""

    def __init__(self, profiles: Mapping[str, ModelProfile], seed: int | None = None,
                 parallel: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if not profiles:
            raise ValueError("the simulator needs at least one model profile")
        self.initial_profiles: dict[str, ModelProfile] = dict(profiles)
        self.profiles: dict[str, ModelProfile] = dict(profiles)
        self.seed = seed
        self.rng = random.Random(seed)
        self.loaded: dict[str, LoadedModel] = {}
        self.stats: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._load_locks: dict[str, asyncio.Lock] = {}
        self.scheduler = Scheduler(parallel, max_queue)
        self.shutting_down = asyncio.Event()
        self.started_at = time.time()

    def reset(self) -> None:
        """Back to the state at start: the file's profiles and limits, nothing loaded, no stats."""
        self.profiles = dict(self.initial_profiles)
        self.scheduler.reset()
        self.rng = random.Random(self.seed)
        self.loaded.clear()
        self.stats.clear()

    def resolve(self, name: str) -> str | None:
        """The profile name ``name`` refers to; Ollama treats ``x`` as ``x:latest``."""
        if name in self.profiles:
            return name
        if ":" not in name.rpartition("/")[2] and f"{name}:latest" in self.profiles:
            return f"{name}:latest"
        return None

    def record(self, model: str, outcome: str) -> None:
        self.stats[model][outcome] += 1

    # --- residency -------------------------------------------------------------------
    def is_loaded(self, model: str, now: float | None = None) -> bool:
        entry = self.loaded.get(model)
        if entry is None:
            return False
        if entry.in_use or entry.expires_at > (time.time() if now is None else now):
            return True
        del self.loaded[model]
        return False

    async def acquire(self, model: str) -> float:
        """Mark ``model`` in use, loading it first if it went idle; returns seconds spent loading.

        Concurrent requests for a cold model wait for the same load, as in Ollama.
        """
        start = time.monotonic()
        lock = self._load_locks.setdefault(model, asyncio.Lock())
        async with lock:
            if not self.is_loaded(model):
                await asyncio.sleep(self.profiles[model].cold_load_seconds)
                self.loaded[model] = LoadedModel(expires_at=time.time())
            entry = self.loaded[model]
            entry.in_use += 1
            entry.expires_at = max(entry.expires_at, self._expiry(self.profiles[model].keep_alive_seconds))
        return time.monotonic() - start

    @staticmethod
    def _expiry(keep_alive: float) -> float:
        return time.time() + (FOREVER_SECONDS if keep_alive < 0 else keep_alive)

    def release(self, model: str, keep_alive: float | None) -> None:
        """The request is done; the model stays for ``keep_alive`` (profile's when None)."""
        entry = self.loaded.get(model)
        if entry is None:
            return
        entry.in_use = max(0, entry.in_use - 1)
        seconds = self.profiles[model].keep_alive_seconds if keep_alive is None else keep_alive
        entry.expires_at = self._expiry(seconds)
        if not entry.in_use and seconds == 0:
            del self.loaded[model]

    def unload(self, model: str) -> None:
        self.loaded.pop(model, None)

    def loaded_models(self) -> list[tuple[str, LoadedModel]]:
        """Resident models, latest expiry first (the order of ``/api/ps``)."""
        now = time.time()
        live = [(name, entry) for name, entry in list(self.loaded.items()) if self.is_loaded(name, now)]
        return sorted(live, key=lambda item: item[1].expires_at, reverse=True)


STATE_KEY = web.AppKey("state", SimulatorState)
SPLIT_WRITES_KEY = web.AppKey("split_writes", bool)


def state_of(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]
