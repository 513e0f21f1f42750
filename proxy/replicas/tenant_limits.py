"""Tenant limits that hold across replicas: each replica reports its use to Redis every
sync and reads what the others report, so a tenant limited to 600 requests a minute gets
600 from the deployment, not 600 from each replica.

Per tenant:

* ``P tenant:TENANT:window`` hash, one field per replica: its requests and tokens in the
  last minute and its requests in flight, with the time it said so. A replica's report
  older than ``STALE_AFTER`` syncs is ignored (it died or lost Redis).
* ``P tenant:TENANT:day:DAY`` counter: every replica adds the tokens it counted since its
  last flush, so the daily budget is the deployment's and survives restarts.

The request path never waits on Redis: it compares its own counts plus the others' last
report with the limit. Between two syncs a tenant can therefore overshoot by what the
other replicas admit in one ``sync_interval``. With Redis unreachable each replica
enforces its share of the per-minute and concurrency limits (the limit divided by the
replicas it last saw) and keeps the day's total it last read; it says so once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from proxy.replicas.store import Store
from proxy.tenants.limits import DAY, Others
from proxy.tenants.tenants import Tenants

log = logging.getLogger("ollama_sidecar.replicas")

STALE_AFTER = 5  # syncs
DAY_TTL = 2 * 86400


class SharedTenantLimits:
    def __init__(self, tenants: Tenants, replica: str, sync_interval: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.tenants = tenants
        self.replica = replica
        self.stale_after = max(2.0, STALE_AFTER * sync_interval)
        self.clock = clock
        self.wall = wall
        self.replicas = 1  # live replicas (this one included) at the last read
        self.flushed: dict[str, tuple[int, int]] = {}  # tenant -> (day, this replica's tokens already added)
        self.alone = False

    async def sync(self, store: Store) -> None:
        """Report this replica's use, read the others'; every tenant's ``others`` updated."""
        tenants = self.tenants
        if not tenants.usage:
            return
        now, wall = self.clock(), self.wall()
        day = int(wall // DAY)
        names = list(tenants.usage)
        sent: dict[str, int] = {}
        async with store.redis.pipeline(transaction=False) as pipe:
            for name in names:
                usage = tenants.usage[name]
                usage.trim(now)
                usage.roll_day(wall)
                window = store.key("tenant", name, "window")
                pipe.hset(window, self.replica, json.dumps({
                    "requests": len(usage.requests), "tokens": usage.token_sum, "in_flight": usage.in_flight,
                    "at": wall}))
                pipe.expire(window, 120)
                done_day, done = self.flushed.get(name, (day, 0))
                if done_day != day:
                    done = 0
                day_key = store.key("tenant", name, "day", str(day))
                sent[name] = usage.day_tokens  # what this flush covers: tokens finishing meanwhile go next time
                pipe.incrby(day_key, max(0, usage.day_tokens - done))
                pipe.expire(day_key, DAY_TTL)
                pipe.hgetall(window)
            rows = await pipe.execute()
        live = {self.replica}
        for i, name in enumerate(names):
            usage = tenants.usage[name]
            day_total, reports = int(rows[i * 5 + 2]), rows[i * 5 + 4]
            self.flushed[name] = (day, sent[name])
            others = Others(day_tokens=max(0, day_total - sent[name]), day=day)
            stale = []
            for replica, raw in reports.items():
                try:
                    report = json.loads(raw)
                except ValueError:
                    report = {}
                if replica == self.replica:
                    continue
                if wall - float(report.get("at", 0)) > self.stale_after:
                    if wall - float(report.get("at", 0)) > 60:
                        stale.append(replica)  # a replica gone for a minute: its field goes
                    continue
                live.add(replica)
                others.requests += int(report.get("requests", 0))
                others.tokens += int(report.get("tokens", 0))
                others.in_flight += int(report.get("in_flight", 0))
            usage.others = others
            if stale:
                await store.redis.hdel(store.key("tenant", name, "window"), *stale)
        self.replicas = len(live)
        if self.alone:
            log.warning("tenant limits: shared again through Redis (%d replicas)", self.replicas)
            self.alone = False

    def unreachable(self) -> None:
        """Redis is away: enforce this replica's share of each per-minute and concurrency limit."""
        share = 1.0 / max(1, self.replicas)
        for usage in self.tenants.usage.values():
            usage.others = Others(day_tokens=usage.others.day_tokens, day=usage.others.day, share=share)
        if not self.alone:
            log.warning("tenant limits: Redis unavailable; each replica enforces its share (1/%d) of the per-minute "
                        "and concurrency limits, and the day's total it last read", self.replicas)
            self.alone = True
