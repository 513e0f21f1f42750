"""Ollama's scheduler as a client sees it: parallel slots per loaded model, a bounded queue,
and the 503 that says the queue is full.

Ollama (``server/sched.go``, ``envconfig/config.go``) serves ``OLLAMA_NUM_PARALLEL``
requests at once per loaded model (1 for embedding models, whatever the setting) and
holds the rest; ``OLLAMA_MAX_QUEUE`` (default 512) bounds what it holds, and past it
answers **503** ``server busy, please try again.  maximum pending requests exceeded``
(two spaces, in Ollama's own string). A proxy that balances or fails over between servers
has to be tested against exactly that: a request that waits its turn, a FIFO order, and a
503 that arrives at once rather than after a timeout.

One simplification, on purpose: here every request waiting for a load or a slot counts
against ``max_queue`` (except the one whose arrival starts a load). In Ollama a request for a model already loaded leaves the bounded
channel at once and waits on the runner's slots unbounded (ollama #7758), so a real
server 503s mostly while it loads or swaps models; bounding both keeps a test's overload
one knob away (``parallel=1, max_queue=1``, three requests).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"  # two spaces, as Ollama

CLI_DEFAULT_PARALLEL = 4  # Ollama's automatic OLLAMA_NUM_PARALLEL when memory allows (else 1)
DEFAULT_MAX_QUEUE = 512  # OLLAMA_MAX_QUEUE's default


class ServerBusy(Exception):
    """The request would wait and the queue is full: answer 503 ``BUSY_MESSAGE`` now."""

    def __init__(self) -> None:
        super().__init__(BUSY_MESSAGE)


def check_limits(parallel: Any, max_queue: Any) -> tuple[int | None, int]:
    """``parallel``: an int >= 1, or None for no limit; ``max_queue``: an int >= 0."""
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"parallel must be an integer >= 1 or null (no limit), not {parallel!r}")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
        raise ValueError(f"max_queue must be an integer >= 0, not {max_queue!r}")
    return parallel, max_queue


@dataclass
class _ModelSlots:
    """One model's slots: who runs, who waits (FIFO), how many were turned away."""

    one_slot: bool = False  # embedding models: Ollama forces a single slot
    in_flight: int = 0
    queued: int = 0  # admitted, not yet in a slot (waiting for the load or for a slot)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Scheduler:
    """Slots and queue for every model of one simulator (one event loop, no locks).

    A request goes ``admit`` (may raise ``ServerBusy``) → ``take_slot`` → ``release``; one
    that leaves between admission and its slot calls ``withdraw``.
    """

    def __init__(self, parallel: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.parallel, self.max_queue = check_limits(parallel, max_queue)
        self.initial = (self.parallel, self.max_queue)
        self.busy: Counter[str] = Counter()
        self._models: dict[str, _ModelSlots] = {}

    def slots(self, model: str) -> int | None:
        """Slots of ``model`` now; None: no limit."""
        entry = self._models.get(model)
        return 1 if entry is not None and entry.one_slot else self.parallel

    def pending(self) -> int:
        """Requests waiting, all models together (Ollama's queue is server-wide)."""
        return sum(entry.queued for entry in self._models.values())

    def _has_free_slot(self, model: str) -> bool:
        entry = self._models[model]
        limit = self.slots(model)
        return limit is None or entry.in_flight < limit

    def admit(self, model: str, one_slot: bool, ready: bool) -> None:
        """Queue the request, or raise ``ServerBusy`` when it would wait and the queue is full.

        ``ready``: the model is loaded, so a free slot (and nobody ahead) means no wait.
        """
        entry = self._models.setdefault(model, _ModelSlots())
        entry.one_slot = one_slot
        would_wait = not ready or bool(entry.waiters) or not self._has_free_slot(model)
        # The request that starts a load is the scheduler's work in hand, not pending: Ollama
        # takes it off the queue and loads for it (so max_queue 0 still serves a cold model).
        starts_load = not ready and not entry.queued
        if would_wait and not starts_load and self.pending() >= self.max_queue:
            self.busy[model] += 1
            raise ServerBusy()
        entry.queued += 1

    async def take_slot(self, model: str) -> None:
        """Wait (first come, first served) for a slot of an admitted request's model."""
        entry = self._models[model]
        if not entry.waiters and self._has_free_slot(model):
            entry.queued -= 1
            entry.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        try:
            await waiter  # ``_grant`` moved us from queued to in flight
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                entry.in_flight -= 1  # granted, but we are leaving: hand the slot on
                entry.queued += 1
                self._grant(model)
            elif waiter in entry.waiters:
                entry.waiters.remove(waiter)
            raise

    def withdraw(self, model: str) -> None:
        """An admitted request leaves before it had a slot (error, client gone)."""
        self._models[model].queued -= 1

    def release(self, model: str) -> None:
        """A request leaves its slot; the next waiter takes it."""
        self._models[model].in_flight -= 1
        self._grant(model)

    def _grant(self, model: str) -> None:
        entry = self._models[model]
        while entry.waiters and self._has_free_slot(model):
            waiter = entry.waiters.popleft()
            if not waiter.done():
                entry.queued -= 1
                entry.in_flight += 1
                waiter.set_result(None)

    def configure(self, parallel: Any = ..., max_queue: Any = ...) -> None:
        """Change the limits at run time (``...``: keep). More slots start waiters at once;
        fewer let the running requests finish and hold new ones back."""
        self.parallel, self.max_queue = check_limits(
            self.parallel if parallel is ... else parallel, self.max_queue if max_queue is ... else max_queue
        )
        for model in list(self._models):
            self._grant(model)

    def reset(self) -> None:
        """Limits back to the start's, 503 count cleared; requests in flight keep their slots."""
        self.configure(*self.initial)
        self.busy.clear()
        for model, entry in list(self._models.items()):
            if not entry.in_flight and not entry.queued:
                del self._models[model]

    def limits(self) -> dict[str, Any]:
        return {"parallel": self.parallel, "max_queue": self.max_queue}

    def snapshot(self) -> dict[str, Any]:
        """What ``/_simulator/stats`` shows under ``scheduler``."""
        models = {
            model: {"slots": self.slots(model), "in_flight": entry.in_flight, "queued": entry.queued,
                    "busy": self.busy[model]}
            for model, entry in sorted(self._models.items())
        }
        return {**self.limits(), "queued": self.pending(), "busy": sum(self.busy.values()), "models": models}
