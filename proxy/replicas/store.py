"""Every Redis key and command the replicas use, in one place.

Layout under the configured prefix ``P``::

    P route:NAME          hash {rev, doc}: one route's saved state (JSON), rev bumped per write
    P alerts              sorted set: alert instances acted on (fingerprint@startsAt), by time
    P meta                hash {created, ready, imported}: set once, by the first replica
    P changes             channel: a route's name after each write to it
    P leader              string: the rollout leader's replica id, with the lease as its TTL
    P outcomes:ROUTE      hash {canary.requests, ...}: every replica's breaker counts, summed
    P evidence:ROUTE:SALT hash {canary.requests, ...}: one rollout's counts from every replica
    P served:KEY:ID       string: who served a request (feedback) for one API key's hash, with the TTL
    P rating:KEY:ID       string: that request's current rating

Route writes are one Lua script: it compares each route's ``rev`` with the one the change
was made on and writes all of them or none, so two operators changing one route at once
end in one of the two orders, never in a mix; the loser retries on the fresh state.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.config import SharedStateConfig

# KEYS: the routes' keys, then the alerts key. ARGV[1]: JSON {routes: [[name, rev, doc]],
# alerts: [[key, time]], channel, cap}. Returns {1, rev...} or {0, index of the stale route}.
WRITE_ROUTES = """
local spec = cjson.decode(ARGV[1])
local routes = spec['routes']
for i, r in ipairs(routes) do
  local rev = redis.call('HGET', KEYS[i], 'rev') or '0'
  if tonumber(rev) ~= tonumber(r[2]) then return {0, i} end
end
local out = {1}
for i, r in ipairs(routes) do
  out[i + 1] = redis.call('HINCRBY', KEYS[i], 'rev', 1)
  redis.call('HSET', KEYS[i], 'doc', r[3])
end
local alerts_key = KEYS[#routes + 1]
for _, a in ipairs(spec['alerts']) do
  redis.call('ZADD', alerts_key, a[2], a[1])
end
if #spec['alerts'] > 0 then
  redis.call('ZREMRANGEBYRANK', alerts_key, 0, -(spec['cap'] + 1))
end
for _, r in ipairs(routes) do
  redis.call('PUBLISH', spec['channel'], r[1])
end
return out
"""

# KEYS[1]: the leader key. ARGV: replica id, lease in ms. 1: this replica holds the lease.
HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1]: the leader key. ARGV[1]: replica id. Give the lease up (on a clean stop) only if held.
DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COUNT_TTL = 7 * 24 * 3600  # counts of a route or rollout nobody touched for a week go


class Conflict(Exception):
    """A route changed in Redis since it was read: read it again and redo the change."""


def connect(cfg: SharedStateConfig) -> Redis:
    """A client that fails fast: no retries inside redis-py (the replica reconnects with its
    own backoff and says so), and every call bounded by ``connect_timeout``."""
    return Redis.from_url(cfg.url, password=cfg.password, socket_timeout=cfg.connect_timeout,
                          socket_connect_timeout=cfg.connect_timeout, retry=Retry(NoBackoff(), 0),
                          decode_responses=True, health_check_interval=0, client_name="ollama-sidecar")


class Store:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.channel = f"{prefix}changes"
        self._write = redis.register_script(WRITE_ROUTES)
        self._hold = redis.register_script(HOLD_LEASE)
        self._drop = redis.register_script(DROP_LEASE)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # --- routes -----------------------------------------------------------------------------
    async def read_routes(self, names: Iterable[str]) -> dict[str, tuple[int, dict[str, Any] | None]]:
        """{route: (rev, saved record or None)}; rev 0 and None for a route never written."""
        names = list(names)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.key("route", name), "rev", "doc")
            rows = await pipe.execute()
        out: dict[str, tuple[int, dict[str, Any] | None]] = {}
        for name, (rev, doc) in zip(names, rows):
            try:
                record = json.loads(doc) if doc else None
            except ValueError:
                record = {"corrupt": doc[:200]}
            if record is not None and not isinstance(record, dict):
                record = {"corrupt": str(record)[:200]}
            out[name] = (int(rev or 0), record)
        return out

    async def write_routes(self, records: dict[str, tuple[int, dict[str, Any]]], alerts: list[tuple[str, float]],
                           cap: int) -> dict[str, int]:
        """Write every route at once if none changed since its ``rev``; their new revs."""
        names = list(records)
        spec = {"routes": [[name, records[name][0], json.dumps(records[name][1], sort_keys=True)] for name in names],
                "alerts": [[key, at] for key, at in alerts], "channel": self.channel, "cap": cap}
        result = await self._write(keys=[self.key("route", n) for n in names] + [self.key("alerts")],
                                   args=[json.dumps(spec)])
        if int(result[0]) != 1:
            raise Conflict(names[int(result[1]) - 1])
        return {name: int(rev) for name, rev in zip(names, result[1:])}

    async def acted_alerts(self, cap: int) -> list[str]:
        return list(await self.redis.zrange(self.key("alerts"), -cap, -1))

    async def claim_first_start(self, replica: str, now: float) -> bool:
        """True for exactly one replica ever (per prefix): the one that initialises Redis."""
        return bool(await self.redis.hsetnx(self.key("meta"), "created", json.dumps({"at": now, "by": replica})))

    async def mark_ready(self, now: float) -> None:
        """The first replica has written every route: the others may read them."""
        await self.redis.hset(self.key("meta"), "ready", json.dumps({"at": now}))

    async def ready(self) -> bool:
        return bool(await self.redis.hexists(self.key("meta"), "ready"))

    async def mark_imported(self, source: str, now: float) -> None:
        await self.redis.hset(self.key("meta"), "imported", json.dumps({"from": source, "at": now}))

    # --- the rollout leader's lease -------------------------------------------------------
    async def hold_lease(self, replica: str, lease: float) -> bool:
        return bool(await self._hold(keys=[self.key("leader")], args=[replica, int(lease * 1000)]))

    async def drop_lease(self, replica: str) -> None:
        await self._drop(keys=[self.key("leader")], args=[replica])

    async def leader(self) -> str | None:
        return await self.redis.get(self.key("leader"))

    # --- counts every replica adds to -------------------------------------------------------
    async def add_counts(self, batches: dict[str, dict[str, int]]) -> None:
        """HINCRBY each field of each key (a key per route or rollout) in one round trip."""
        if not batches:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, fields in batches.items():
                for field, value in fields.items():
                    if value:
                        pipe.hincrby(key, field, value)
                pipe.expire(key, COUNT_TTL)
            await pipe.execute()

    async def read_counts(self, keys: list[str]) -> list[dict[str, int]]:
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = await pipe.execute()
        return [{k: int(v) for k, v in row.items()} for row in rows]

    # --- feedback ids ---------------------------------------------------------------------
    async def put_served(self, entries: list[tuple[str, str, str, int]]) -> None:
        """(key hash in hex, request id, JSON of who served it, seconds to keep it) per
        answer. Keyed by the API key's hash too: a client chooses its X-Request-ID, and one
        tenant's id must never name, or hide, another's answer."""
        if not entries:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, request_id, doc, ttl in entries:
                pipe.set(self.key("served", key, request_id), doc, ex=max(1, ttl))
            await pipe.execute()

    async def get_served(self, key: str, request_id: str) -> tuple[str | None, str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key("served", key, request_id))
            pipe.get(self.key("rating", key, request_id))
            served, rating = await pipe.execute()
        return served, rating

    async def put_rating(self, key: str, request_id: str, rating: str, ttl: int) -> None:
        await self.redis.set(self.key("rating", key, request_id), rating, ex=max(1, ttl))
