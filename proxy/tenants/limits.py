"""One tenant's use against its limits: requests and tokens in the last minute, tokens
today (UTC), requests in flight.

Checked on the request path before anything is sent to Ollama, so the work is a few
comparisons and deque operations per request: the request window holds at most
``requests_per_minute`` timestamps (a request over the limit is not recorded), the token
window one entry per finished request of the last minute with a running sum. Tokens are
known only once a reply is done, so a tenant over its token budget is refused from its
next request on, as the issue asks; a request in flight is never cut.

Several replicas (``state:``): each adds what the others last reported
(:attr:`Usage.others`, refreshed off the request path by :mod:`proxy.tenants.shared`);
with Redis unreachable a replica enforces its share, the limit divided by the replicas
it last knew of.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from proxy.config import TenantLimits

WINDOW = 60.0
DAY = 86400.0

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
CONCURRENT = "concurrent"
LIMIT_NAMES = (REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, TOKENS_PER_DAY, CONCURRENT)


@dataclass
class Others:
    """What the other replicas last reported (all zero with one replica)."""

    requests: int = 0  # in their last minute
    tokens: int = 0  # in their last minute
    day_tokens: int = 0  # theirs on ``day`` (kept at the last known while Redis is down: a day is long)
    day: int = -1  # the UTC day day_tokens counts; another day's total says nothing about today
    in_flight: int = 0
    # The part of the per-minute and concurrency limits this replica enforces on its own
    # counts: 1 with one replica or Redis up, 1/N while Redis is down (the minute counts
    # above are then 0: what the others do is unknown).
    share: float = 1.0


@dataclass(frozen=True)
class Refusal:
    limit: str
    value: int
    retry_after: int  # seconds

    def message(self, tenant: str) -> str:
        what = {REQUESTS_PER_MINUTE: f"{self.value} requests per minute",
                TOKENS_PER_MINUTE: f"{self.value} tokens per minute",
                TOKENS_PER_DAY: f"{self.value} tokens per day (UTC)",
                CONCURRENT: f"{self.value} requests at once"}[self.limit]
        return (f"tenant {tenant!r} is over its limit of {what} (auth.tenants.{tenant}.limits.{self.limit}); "
                f"retry after {self.retry_after}s")


@dataclass
class Usage:
    limits: TenantLimits
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    day: int = -1  # the UTC day (days since the epoch) day_tokens counts
    day_tokens: int = 0  # this replica's, today
    in_flight: int = 0
    others: Others = field(default_factory=Others)

    def trim(self, now: float) -> None:
        horizon = now - WINDOW
        requests = self.requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] <= horizon:
            self.token_sum -= tokens.popleft()[1]

    def admit(self, now: float, wall: float) -> Refusal | None:
        """Take one request (None) or say which limit refuses it and for how long."""
        limits, others = self.limits, self.others
        share = others.share
        if limits.concurrent is not None and self.in_flight + others.in_flight >= _part(limits.concurrent, share):
            return Refusal(CONCURRENT, limits.concurrent, 1)
        self.trim(now)
        if limits.requests_per_minute is not None:
            allowed = _part(limits.requests_per_minute, share)
            if len(self.requests) + others.requests >= allowed:
                oldest = self.requests[0] if self.requests else now
                return Refusal(REQUESTS_PER_MINUTE, limits.requests_per_minute, _seconds(oldest + WINDOW - now))
        if limits.tokens_per_minute is not None:
            allowed = _part(limits.tokens_per_minute, share)
            if self.token_sum + others.tokens >= allowed:
                return Refusal(TOKENS_PER_MINUTE, limits.tokens_per_minute, self._tokens_free_in(now, allowed))
        if limits.tokens_per_day is not None:
            self.roll_day(wall)
            theirs = others.day_tokens if others.day == self.day else 0
            if self.day_tokens + theirs >= limits.tokens_per_day:
                return Refusal(TOKENS_PER_DAY, limits.tokens_per_day, _seconds(DAY - wall % DAY))
        if limits.requests_per_minute is not None:
            self.requests.append(now)
        self.in_flight += 1
        return None

    def finish(self, now: float, wall: float, tokens: int) -> None:
        """The tokens of a finished request (its slot was given back already)."""
        if tokens > 0:
            self.tokens.append((now, tokens))
            self.token_sum += tokens
            self.roll_day(wall)
            self.day_tokens += tokens

    def roll_day(self, wall: float) -> None:
        """Start the day's count over when the UTC day at ``wall`` is a new one."""
        day = int(wall // DAY)
        if day != self.day:
            self.day, self.day_tokens = day, 0

    def _tokens_free_in(self, now: float, allowed: int) -> int:
        """Seconds until enough of this replica's tokens leave the window to be under ``allowed``."""
        excess = self.token_sum + self.others.tokens - allowed
        for at, count in self.tokens:
            excess -= count
            if excess < 0:
                return _seconds(at + WINDOW - now)
        return _seconds(WINDOW)

    def window(self, now: float, wall: float) -> dict[str, int]:
        """Use against each limit now, every replica's (for the gauges and `usage`)."""
        self.trim(now)
        self.roll_day(wall)
        return {REQUESTS_PER_MINUTE: len(self.requests) + self.others.requests,
                TOKENS_PER_MINUTE: self.token_sum + self.others.tokens,
                TOKENS_PER_DAY: self.day_tokens + (self.others.day_tokens if self.others.day == self.day else 0),
                CONCURRENT: self.in_flight + self.others.in_flight}


def _part(limit: int, share: float) -> float:
    return limit if share >= 1 else max(1.0, limit * share)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))
