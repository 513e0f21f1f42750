"""Which server serves a request for model M: the balancer, on the request path.

In order (issue 11):

1. Healthy servers that have M installed, or M's pinned servers. If none of them is
   healthy, all of them anyway: the last server that has a model is never ejected for it.
2. Servers where M is loaded first (no cold load); among the others, one with nothing
   loaded (loading M evicts nothing) before one with other models loaded.
3. Then the least saturated: M's requests in flight there ÷ its slots for M.
4. Among servers with M loaded and not saturated, the session's own server by rendezvous
   hashing (Ollama keeps the session's prompt cache in that server's slots; adding or
   removing a server moves only that server's sessions).

The result is an ordered list of candidates: the first is tried, the others are the
failover order. It costs a few microseconds for a handful of servers (bench:
``bench/bench_balancer.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from proxy.fleet.servers import Server

LOADED, COLD, AFFINITY, SATURATED, FAILOVER = "loaded", "cold", "affinity", "saturated", "failover"
REASONS = (LOADED, COLD, AFFINITY, SATURATED, FAILOVER)


@dataclass(frozen=True)
class Choice:
    servers: tuple[Server, ...]  # first: the one to try; the rest: failover order
    reason: str  # why the first: loaded, cold, affinity, saturated
    all_down: bool = False  # every server that has the model is down: tried anyway
    model: str = ""  # the model's name as Ollama lists it (the servers' in-flight counts key on it)


def rendezvous(server: str, session: str) -> int:
    """Highest-random-weight hashing: each (server, session) gets a score; the session goes
    to the highest. A new or removed server changes only the sessions it wins or held."""
    return int.from_bytes(hashlib.blake2b(f"{server}\x00{session}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


def choose(candidates: Iterable[Server], model: str, session: str | None, embedding: bool) -> Choice | None:
    """The servers to try for ``model``, best first; None when no server has it."""
    eligible = list(candidates)
    if not eligible:
        return None
    healthy = [s for s in eligible if s.up]
    all_down = not healthy
    pool = healthy or eligible

    def key(s: Server) -> tuple[int, int, float, str]:
        loaded = model in s.loaded
        return (0 if loaded else 1, 0 if loaded or not s.loaded else 1, s.saturation(model, embedding), s.name)

    ordered = sorted(pool, key=key)
    first = ordered[0]
    reason = LOADED if model in first.loaded else COLD
    if session:
        warm = [s for s in ordered if model in s.loaded and s.saturation(model, embedding) < 1]
        if warm:
            mine = max(warm, key=lambda s: rendezvous(s.name, session))
            if mine is not first:
                reason = AFFINITY
            ordered.remove(mine)
            ordered.insert(0, mine)
            first = mine
        elif any(model in s.loaded for s in ordered):
            reason = SATURATED  # every server with the model loaded is full: the least full
    elif model in first.loaded and first.saturation(model, embedding) >= 1:
        reason = SATURATED
    return Choice(tuple(ordered), reason, all_down, model)
