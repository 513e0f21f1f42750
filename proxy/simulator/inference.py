"""One simulated inference: which fate it meets, how long each phase takes, what it reports.

Both protocols (native NDJSON and OpenAI SSE) drive the same ``Inference`` so a profile
change has the same effect whichever API the proxy is using, and the durations in the final
object are the ones the client actually experienced (measured, not invented): a proxy that
derives TTFT or tokens/s from them sees numbers consistent with its own clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from proxy.simulator.profiles import ModelProfile
from proxy.simulator.scheduler import ServerBusy
from proxy.simulator.state import SimulatorState
from proxy.simulator.wire import ns, without_zeros

MIDSTREAM_ERROR = "an error was encountered while running the model"
RUNNER_ERROR = "llama runner process has terminated: exit status 2"

# Outcomes recorded in the stats, per model.
OK, ERROR, MIDSTREAM_ERROR_OUTCOME, CUT, HANG, CANCELLED = "ok", "error", "midstream_error", "cut", "hang", "cancelled"
BUSY = "busy"  # 503: the scheduler's queue was full

# Where a request is with the scheduler, so ``end`` gives back what it holds.
_OUTSIDE, _QUEUED, _IN_SLOT = "outside", "queued", "in_slot"

_WORDS = (
    "the model answers with a short and plausible sentence about observability canary "
    "routing metrics latency tokens streams prometheus alerts rollback stable traffic "
    "requests errors budget window quantile histogram gauge counter label series"
).split()


def estimate_tokens(text: str) -> int:
    """About four characters per token, like the usual BPE rule of thumb."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def chat_prompt_tokens(messages: list[dict]) -> int:
    """Content tokens plus the chat template's per-message overhead."""
    total = 3
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += 4 + (estimate_tokens(content) if isinstance(content, str) else 0)
    return total


def embedding_vector(model: str, text: str, dim: int) -> list[float]:
    """Deterministic, unit-length vector per (model, text): same input, same embedding."""
    rng = random.Random(hashlib.sha256(f"{model}\0{text}".encode()).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 8) for v in values]


def draw_outcome(rng: random.Random, profile: ModelProfile) -> str:
    """Fate of one request; always four draws so a seed replays the same sequence."""
    draws = [rng.random() for _ in range(4)]
    if draws[0] < profile.hang_rate:
        return HANG
    if draws[1] < profile.error_rate:
        return ERROR
    if draws[2] < profile.midstream_error_rate:
        return MIDSTREAM_ERROR_OUTCOME
    if draws[3] < profile.midstream_cut_rate:
        return CUT
    return OK


class ClientGone(Exception):
    """The client left (or the server is stopping) before there was anything to send."""


@dataclass
class Inference:
    """Lifecycle: ``begin`` (queue / 500 / load / slot / hang / prompt eval) → ``tokens`` →
    ``final_metrics`` → ``end`` (always, in ``finally``)."""

    state: SimulatorState
    model: str  # profile name
    prompt_tokens: int
    max_tokens: int | None = None
    keep_alive: float | None = None
    client_gone: Callable[[], bool] = lambda: False
    started: float = field(default_factory=time.monotonic)
    outcome: str = OK
    load_seconds: float = 0.0
    prompt_eval_seconds: float = 0.0
    eval_started: float = 0.0
    eval_count: int = 0
    failed_at: int | None = None  # token index where a mid-stream failure happens
    _acquired: bool = False
    _scheduled: str = _OUTSIDE

    def __post_init__(self) -> None:
        self.profile = self.state.profiles[self.model]  # snapshot: later PATCHes apply to later requests
        self.rng = random.Random(self.state.rng.getrandbits(64))
        self.outcome = draw_outcome(self.state.rng, self.profile)
        self.output_tokens = self.profile.output_tokens
        if self.max_tokens is not None and 0 < self.max_tokens < self.output_tokens:
            self.output_tokens = self.max_tokens
        if self.outcome in (MIDSTREAM_ERROR_OUTCOME, CUT):
            self.failed_at = self.rng.randint(1, max(1, self.output_tokens - 1))

    @property
    def done_reason(self) -> str:
        return "length" if self.output_tokens < self.profile.output_tokens else "stop"

    async def begin(self, prompt_phase: float | None = None) -> str | None:
        """Run up to the first token. Returns an error message for an HTTP 500, else None.

        Raises ``ServerBusy`` (answer 503) when the request would have to wait and the
        scheduler's queue is full. Otherwise it waits its turn: for the model's load (shared
        with every request for it) and then for one of its slots, which it holds until
        ``end``. A hanging request holds its slot until the client leaves or the server
        stops, then raises ``ClientGone``: there is nobody left to answer.
        """
        scheduler = self.state.scheduler
        try:
            scheduler.admit(self.model, one_slot=self.profile.kind == "embedding", ready=self.state.is_loaded(self.model))
        except ServerBusy:
            self.outcome = BUSY
            raise
        self._scheduled = _QUEUED
        if self.outcome == ERROR:
            return RUNNER_ERROR
        self.load_seconds = await self.state.acquire(self.model)
        self._acquired = True
        await scheduler.take_slot(self.model)
        self._scheduled = _IN_SLOT
        if self.outcome == HANG:
            while not self.state.shutting_down.is_set() and not self.client_gone():
                try:
                    await asyncio.wait_for(self.state.shutting_down.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
            raise ClientGone()
        t0 = time.monotonic()
        await asyncio.sleep(self.profile.ttft_seconds if prompt_phase is None else prompt_phase)
        self.prompt_eval_seconds = time.monotonic() - t0
        self.eval_started = time.monotonic()
        return None

    async def tokens(self) -> AsyncIterator[str]:
        """Token texts at the profile's pace; stops early where a mid-stream failure is due."""
        interval = 1.0 / self.profile.tokens_per_second
        for index in range(self.output_tokens):
            if self.failed_at is not None and index == self.failed_at:
                return
            delay = self.eval_started + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            word = self.rng.choice(_WORDS)
            self.eval_count = index + 1
            yield word.capitalize() if index == 0 else " " + word + ("." if index == self.output_tokens - 1 else "")
        delay = self.eval_started + self.output_tokens * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def context(self) -> list[int]:
        """Token ids of prompt + answer, as ``/api/generate`` returns them."""
        return [self.rng.randint(1, 151_000) for _ in range(self.prompt_tokens + self.eval_count)]

    def final_metrics(self) -> dict[str, int]:
        """The ``done`` object's timing and count fields, zero ones left out."""
        now = time.monotonic()
        return without_zeros(
            {
                "total_duration": ns(now - self.started),
                "load_duration": ns(self.load_seconds),
                "prompt_eval_count": self.prompt_tokens,
                "prompt_eval_duration": ns(self.prompt_eval_seconds),
                "eval_count": self.eval_count,
                "eval_duration": ns(now - self.eval_started) if self.eval_count else 0,
            }
        )

    def end(self) -> None:
        """Free the slot (or the queue place), record the outcome, start the keep-alive clock."""
        if self._scheduled == _IN_SLOT:
            self.state.scheduler.release(self.model)
        elif self._scheduled == _QUEUED:
            self.state.scheduler.withdraw(self.model)
        self._scheduled = _OUTSIDE
        if self._acquired:
            self.state.release(self.model, self.keep_alive)
            self._acquired = False
        self.state.record(self.model, self.outcome)
