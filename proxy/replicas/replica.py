"""One proxy replica among several that act as one through Redis (``state:``).

The routing state lives in Redis; each replica keeps a copy in memory, which is what the
data plane reads (so a request never waits on Redis) and what it keeps serving from while
Redis is away. Three paths keep the copies equal:

* a change goes through :meth:`Replica.transact`: read the routes fresh from Redis, apply
  the change in memory, write every route it touched in one compare-and-set script; if
  another replica wrote first, undo and redo on the newer state. The caller is told only
  once Redis has the change. With Redis down, admin changes get a 503 and nothing moves;
* every write publishes the route's name: the other replicas read it at once (within
  milliseconds), and a full read every ten ``sync_interval`` repairs a missed message;
* safety first: an Alertmanager rollback (or the breaker's) is applied on this replica
  even with Redis down, written to the local journal, and replayed when Redis is back.

The background loop also flushes this replica's counts (breaker, probe, rollout evidence)
and feedback request ids to Redis, reads the totals back for the decisions, and holds or
seeks the rollout lease. It reconnects with backoff (0.2 s doubling to 5 s) and then
resynchronises: journal replayed first, then every route read.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import secrets
import socket
import time
from collections import deque
from typing import Any, Callable, Iterable, TypeVar

from redis.exceptions import RedisError

from proxy.config import SharedStateConfig
from proxy.control.plane import MAX_REMEMBERED_ALERTS, ControlPlane, RouteError, validate_state
from proxy.control.rollout import Rollouts
from proxy.control.rollout_state import Rollout
from proxy.control.state import StateFile
from proxy.metrics import ProxyMetrics
from proxy.replicas import counts as shared
from proxy.replicas.journal import Journal
from proxy.replicas.lease import Lease
from proxy.replicas.store import Conflict, Store, connect
from proxy.replicas.tenant_limits import SharedTenantLimits
from proxy.tenants.tenants import Tenants

log = logging.getLogger("ollama_sidecar.replicas")

T = TypeVar("T")
UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)
FULL_READ_EVERY = 10  # sync intervals between two full reads
MAX_RETRIES = 8


class RejoinNeeded(RedisError):
    """Redis failed a call outside the sync loop: the loop joins again."""


class BackendUnavailable(RouteError):
    def __init__(self, url: str, problem: str) -> None:
        super().__init__(503, f"the shared state (Redis at {url}) is unavailable ({problem}): the change was "
                              "NOT made, so replicas do not diverge; retry once it is back (status shows it)")


class Replica:
    def __init__(self, cfg: SharedStateConfig, plane: ControlPlane, metrics: ProxyMetrics, rollouts: Rollouts,
                 *, tenants: Tenants | None = None, replica_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.plane = plane
        self.metrics = metrics
        self.rollouts = rollouts
        self.clock = clock
        self.id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.redis = connect(cfg)
        self.store = Store(self.redis, cfg.key_prefix)
        self.journal = Journal(cfg.journal)
        self.lease = Lease(self.id, cfg.lease, self._leadership_changed)
        self.tenant_limits = SharedTenantLimits(tenants, self.id, cfg.sync_interval) if tenants is not None else None
        self.outcomes = shared.Outcomes()
        # (request id, route, arm, model, key hash): answers to publish for feedback on any replica
        self.served: deque[tuple[str, str, str, str, bytes]] = deque(maxlen=100_000)
        self.feed_breakers: Callable[[str, shared.Tally], None] = lambda route, tally: None
        self.up = False
        self.problem: str | None = "not connected yet"
        self.down_since: float | None = clock()
        self.revs: dict[str, int] = {}  # the rev of each route as this replica last read or wrote it
        self._seen_outcomes: dict[str, shared.Tally] = {}
        self.unjournaled: list[dict[str, Any]] = []  # effects made while down with no journal to keep them
        # Rollout notifications wait for their change to be in Redis: one that is undone
        # (a lost race, Redis gone) is never announced, one that is redone only once.
        self.send_event: Callable[[dict[str, Any]], None] = lambda event: None
        self._held_events: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._syncs = 0
        self._announced_down = False
        self._joined_before = False
        self.stopping = False  # set on shutdown: the loop leaves at its next turn
        metrics.state_backend_up.set(0)
        metrics.replica_leader.set(0)
        self._apply_journal_locally()

    # --- status -------------------------------------------------------------------------------
    @property
    def leader(self) -> bool:
        return self.up and self.lease.held

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows: never the password (the URL was stripped of it at parse)."""
        entries, _ = self.journal.entries()
        return {"backend": "redis", "url": self.cfg.url, "key_prefix": self.cfg.key_prefix, "up": self.up,
                "problem": self.problem, "down_since": self.down_since, "replica": self.id, "leader": self.leader,
                "journal": self.cfg.journal, "journal_entries": len(entries),
                "tenant_limits": None if self.tenant_limits is None else (
                    f"this replica's share (1/{self.tenant_limits.replicas}): Redis unavailable"
                    if self.tenant_limits.alone else f"shared by {self.tenant_limits.replicas} replica(s)")}

    # --- changes ------------------------------------------------------------------------------
    async def apply(self, routes: Iterable[str], op: Callable[[], T]) -> T:
        """An operator's change: in Redis before it is acknowledged, else refused with 503."""
        return await self.transact(routes, op)

    async def adopt_config(self) -> None:
        """After a reload: every route read afresh, so the ones whose config changed are
        written back with the new config (a rollback and a running rollout's weight stay)."""
        try:
            await self.transact(self.plane.routes.routes, lambda: None, force=True)
        except BackendUnavailable:
            pass  # the full read on rejoin does the same

    async def transact(self, routes: Iterable[str], op: Callable[[], T], *, force: bool = False) -> T:
        if not self.up:
            raise BackendUnavailable(self.cfg.url, self.problem or "not connected")
        async with self._lock:
            if not self.up:
                raise BackendUnavailable(self.cfg.url, self.problem or "not connected")
            return await self._transact_locked({r for r in routes}, op, force=force)

    async def _transact_locked(self, routes: set[str], op: Callable[[], T], *, force: bool) -> T:
        names = {r for r in routes if r in self.plane.routes.routes}
        for _ in range(MAX_RETRIES):
            snapshot = None
            try:
                edited = await self._refresh(names, force=force)
                snapshot = self._snapshot()
                self.plane.dirty.clear()
                self.plane.new_alerts.clear()
                result = op()
                self.plane.dirty.update(edited)
                await self._write_dirty()
                self._release_events()
                return result
            except Conflict as conflict:
                self._restore(snapshot)
                names.add(str(conflict))
                self.metrics.state_backend_operations.labels("conflict", "ok").inc()
            except UNAVAILABLE as exc:
                self._restore(snapshot)
                self._went_down(exc)
                raise BackendUnavailable(self.cfg.url, self.problem or "error") from None
            except BaseException:
                self._restore(snapshot)
                raise
        raise RouteError(409, "the route kept changing on other replicas while this change was made; retry")

    async def safety(self, routes: Iterable[str], op: Callable[[], T]) -> tuple[T, bool]:
        """A rollback that must happen even without Redis (an alert's, the breaker's): through
        Redis when it is up; else applied here and journaled. Returns (result, durable):
        False when it was applied here only and could not be journaled."""
        routes = list(routes)
        if self.up:
            try:
                return await self.transact(routes, op), True
            except BackendUnavailable:
                pass
        # Under the lock: a change in flight (or a rejoin's full read) must not undo this one;
        # a rejoin holding the lock replays the journal, this included, before it is up.
        async with self._lock:
            if self.up:  # joined while this waited: the normal path
                return await self._transact_locked(set(routes), op, force=False), True
            before = dict(self.plane.routes.routes)
            acted = set(self.plane.acted_alerts)
            self.plane.uncounted.clear()
            result = op()
            self._count_changes()
            effects = [e for name, old in before.items()
                       if (e := effect_of(old, self.plane.routes.routes.get(name), self.clock())) is not None]
            if effects:  # the alert instances acted on go with their effect, so no replica acts on them again
                effects[0]["alerts"] = [key for key in self.plane.acted_alerts if key not in acted]
            journaled = self.journal.append(effects) if effects else self.journal.durable
            if effects and journaled:
                self.metrics.state_journal_entries.set(len(self.journal.entries()[0]))
            elif effects:
                self.unjournaled.extend(effects)  # replayed on rejoin, unless this process dies first
        if effects:
            log.warning("shared state unavailable: %s applied on this replica only%s", ", ".join(
                f"{e['op']} of route {e['route']}" for e in effects),
                f"; journaled in {self.cfg.journal}, replayed when Redis is back" if self.journal.durable else
                " and NOT journaled (set state.journal)")
        # Without a journal nothing about a known route is durable until Redis is back, a
        # duplicate included (its first delivery may be the one held in memory only).
        relevant = any(r in self.plane.routes.routes for r in routes)
        return result, journaled or not relevant

    def decide(self, routes: list[str], op: Callable[[], Any]) -> None:
        """An automatic decision taken in the background (breaker, probe): acted on by the
        leader while Redis is up, by this replica alone (journaled) while it is down."""
        # A stalled renewal must not drop a verdict: a rollback twice is one rollback.
        if self.up and not self.lease.granted:
            return
        task = asyncio.get_running_loop().create_task(self.safety(routes, op))
        task.add_done_callback(_log_failure)

    def hold_event(self, event: dict[str, Any]) -> None:
        """The rollouts' notifier while changes go through Redis (see :meth:`_release_events`)."""
        if self._lock.locked():
            self._held_events.append(event)
        else:  # not inside a change (cannot be undone): out at once
            self.send_event(event)

    def _release_events(self) -> None:
        held, self._held_events = self._held_events, []
        for event in held:
            self.send_event(event)

    # --- the background loop --------------------------------------------------------------------
    async def run(self) -> None:
        delay = 0.2
        while not self.stopping:
            pubsub = self.redis.pubsub()
            try:
                # Subscribed first: a change written during the join is heard, not left to
                # the next full read.
                await pubsub.subscribe(self.store.channel)
                await self._join()
                delay = 0.2
                await self._serve(pubsub)
            except UNAVAILABLE as exc:
                self._went_down(exc)
            except Exception:  # a bug must not end the replica's sync for good
                log.exception("shared state sync failed")
                self._went_down(RuntimeError("internal error"))
            finally:
                await _close(pubsub)
            # While Redis is away this replica's own counts decide for it (its share).
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                self.feed_local_outcomes()
                await asyncio.sleep(min(self.cfg.sync_interval, left))
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """On stop: the last counts out, the lease handed back; each step bounded, so a
        Redis that does not answer never holds up a shutdown."""
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                await self._flush()
                await self.lease.release(self.store)
        except (*UNAVAILABLE, Exception):
            pass
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                await self.redis.aclose()
        except (*UNAVAILABLE, Exception):
            pass

    async def _join(self) -> None:
        """(Re)connect: first start imports, the journal is replayed, then every route read."""
        await self.redis.ping()
        async with self._lock:
            if await self.store.claim_first_start(self.id, self.clock()):
                await self._initialise()
                await self.store.mark_ready(self.clock())
            else:
                await self._wait_for_first_replica()
            # One section: a rollback made here while this runs waits for the lock and then
            # goes through Redis; one made before it is in the journal replayed here.
            await self._replay_journal()
            await self._full_read(force=True)
            was_down = self.down_since
            self.up, self.problem, self.down_since = True, None, None
            self._joined_before = True
        self.metrics.state_backend_up.set(1)
        self.metrics.state_backend_operations.labels("sync", "ok").inc()
        log.info("shared state: connected to Redis at %s (prefix %r) as replica %s%s", self.cfg.url,
                 self.cfg.key_prefix, self.id, "" if was_down is None else
                 f"; resynchronised after {self.clock() - was_down:.1f}s")
        self._announced_down = False
        await self.lease.tick(self.store)

    async def _wait_for_first_replica(self) -> None:
        """Another replica is writing the first state (an import, maybe): read after it.
        One that died halfway is given up on after 5 s; the routes it did not write are
        written from this replica's config."""
        deadline = time.monotonic() + 5.0
        while not await self.store.ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _initialise(self) -> None:
        """The first replica ever on this prefix writes the state: a state file's, when
        ``import_from`` names one, else its own (from the config)."""
        source = self.cfg.import_from
        if source and self._joined_before:
            # Redis came back empty (no persistence) while this replica ran: what it holds
            # is newer than any state file.
            log.warning("shared state: Redis at %s holds no state any more; writing this replica's", self.cfg.url)
            source = None
        if source:
            data, problem = StateFile(source).load(validate_state)
            if problem is None and data:
                self.plane.adopt_saved(data)
                log.warning("shared state: imported %s into Redis (first start on prefix %r)", source,
                            self.cfg.key_prefix)
                await self.store.mark_imported(source, self.clock())
            elif problem is None:
                log.info("shared state: nothing to import from %s (no such file); starting from the config", source)
        self.revs = {name: 0 for name in self.plane.routes.routes}
        records = {name: (0, self.plane.route_record(name)) for name in self.plane.routes.routes}
        alerts = [(key, self.clock()) for key in self.plane.acted_alerts]
        revs = await self.store.write_routes(records, alerts, MAX_REMEMBERED_ALERTS) if records else {}
        self.revs.update(revs)

    async def _serve(self, pubsub: Any) -> None:
        interval = self.cfg.sync_interval
        next_sync = time.monotonic()
        while not self.stopping:
            if not self.up:
                # A call elsewhere (a change, a rollout tick, a feedback lookup) found Redis
                # gone: leave, so the loop backs off and joins again (journal, full read).
                raise RejoinNeeded(self.problem or "shared state lost")
            timeout = max(0.0, next_sync - time.monotonic())
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is not None and message.get("type") == "message":
                name = str(message.get("data"))
                if name in self.plane.routes.routes:
                    async with self._lock:
                        edited = await self._refresh({name})
                    if edited:
                        await self.transact(edited, lambda: None)
            if time.monotonic() >= next_sync:
                next_sync = time.monotonic() + interval
                await self.sync()

    async def sync(self) -> None:
        """One flush-and-read: this replica's counts and ids out, the totals in; the lease; a
        full read of every route every FULL_READ_EVERY syncs."""
        await self._flush()
        await self.lease.tick(self.store)
        await self._feed_outcomes()
        if self.tenant_limits is not None:
            await self.tenant_limits.sync(self.store)
        self._syncs += 1
        if self._syncs % FULL_READ_EVERY == 0:
            async with self._lock:
                await self._full_read(force=False)
        self.metrics.state_backend_operations.labels("sync", "ok").inc()

    # --- counts -----------------------------------------------------------------------------------
    async def _flush(self) -> None:
        batches: dict[str, dict[str, int]] = {}
        taken = self.outcomes.take()
        for route, tally in taken.items():
            batches[self.store.key("outcomes", route)] = shared.outcome_fields(tally)
        pending, self.rollouts.pending = self.rollouts.pending, {}
        for route, evidence in pending.items():
            rollout = self.plane.rollouts.get(route)
            if rollout is not None and rollout.active:
                batches[self.store.key("evidence", route, rollout.salt)] = shared.evidence_fields(evidence)
        served = [self.served.popleft() for _ in range(len(self.served))]
        try:
            await self.store.add_counts(batches)
            ttl = int(self.plane.config.feedback_ttl)
            await self.store.put_served([(key.hex(), rid, json.dumps({"route": route, "arm": arm, "model": model}), ttl)
                                         for rid, route, arm, model, key in served])
        except UNAVAILABLE:
            # Not in Redis: this replica's own counts decide for it while Redis is away; the
            # rollouts hold (their leader has no lease), the ids stay for the next try.
            for route, tally in taken.items():
                self.feed_breakers(route, tally)
            self.served.extendleft(reversed(served))
            raise

    async def _feed_outcomes(self) -> None:
        routes = list(self.plane.routes.routes)
        rows = await self.store.read_counts([self.store.key("outcomes", r) for r in routes])
        for route, row in zip(routes, rows):
            total = shared.tally_of(row)
            seen = self._seen_outcomes.get(route)
            self._seen_outcomes[route] = total
            if seen is not None:  # the first read only sets where this replica starts
                self.feed_breakers(route, shared.increment(total, seen))

    def feed_local_outcomes(self) -> None:
        """While Redis is down: this replica's own counts to its own decisions."""
        for route, tally in self.outcomes.take().items():
            self.feed_breakers(route, tally)

    async def read_rollout_evidence(self) -> None:
        """The leader's read of every running rollout's shared counts, before its tick."""
        active = [(route, r) for route, r in self.plane.rollouts.items() if r.active]
        keys = [self.store.key("evidence", route, r.salt) for route, r in active]
        rows = await self.store.read_counts(keys)
        shortfalls = {}
        for key, (route, rollout), row in zip(keys, active, rows):
            if row.get("started"):
                continue
            # The leader marks each rollout's counter when it first reads it. A counter
            # without the mark was lost by Redis (no persistence, a flush, an eviction) and
            # holds only what came since: the evidence saved with the rollout goes back in,
            # so increments mean what they meant, for this leader and the next.
            saved = {f: v for f, v in shared.evidence_fields(rollout.total).items() if v}
            shortfalls[key] = {"started": 1, **saved}
            for field, value in saved.items():
                row[field] = row.get(field, 0) + value
            if saved:
                log.warning("rollout on route %s: its shared counts were lost by Redis; the evidence saved with "
                            "the rollout is put back", route)
        if shortfalls:
            await self.store.add_counts(shortfalls)
        self.rollouts.shared_totals = {route: shared.evidence_of(row) for (route, _), row in zip(active, rows)}

    async def tick_rollouts(self) -> None:
        """The leader advances rollouts on everyone's counts; others only keep their views."""
        if not self.leader:
            self.rollouts.pause_timing()  # time as a follower is not time at the step
            return
        try:
            await self._flush()
            await self.read_rollout_evidence()
        except UNAVAILABLE as exc:
            self._went_down(exc)
            return
        routes = [route for route, r in self.plane.rollouts.items() if r.active]

        def tick() -> None:
            if self.leader:  # still, after the awaits and the wait for the lock
                self.rollouts.tick()
        try:
            await self.transact(routes, tick)
        except BackendUnavailable:
            pass

    # --- feedback ---------------------------------------------------------------------------------
    async def lookup_served(self, request_id: str, key: bytes, wait: bool = True
                            ) -> tuple[dict[str, Any] | None, str | None]:
        """Who served ``request_id`` for the API key hashed as ``key`` and its current
        rating, as any replica recorded them. With ``wait``, an id not there yet is asked
        for again after two flushes."""
        if not self.up:
            return None, None
        try:
            served, rating = await self.store.get_served(key.hex(), request_id)
            if served is None and wait:  # the replica that answered may not have flushed yet
                await asyncio.sleep(self.cfg.sync_interval * 2)
                served, rating = await self.store.get_served(key.hex(), request_id)
        except UNAVAILABLE as exc:
            self._went_down(exc)
            return None, None
        try:
            doc = json.loads(served) if served else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            doc["key"] = key.hex()
            return doc, rating
        return None, rating

    async def record_rating(self, request_id: str, key: bytes, rating: str) -> None:
        if not self.up:
            return
        try:
            await self.store.put_rating(key.hex(), request_id, rating, int(self.plane.config.feedback_ttl))
        except UNAVAILABLE as exc:
            self._went_down(exc)

    # --- reading and writing routes -------------------------------------------------------------------
    async def _refresh(self, names: Iterable[str], force: bool = False) -> set[str]:
        """Install every route of ``names`` that Redis has newer than this replica (or all,
        with ``force``); returns those whose saved config differs from ours (ours wins and
        must be written back)."""
        names = [n for n in names if n in self.plane.routes.routes]
        if not names:
            return set()
        rows = await self.store.read_routes(names)
        edited = set()
        for name, (rev, record) in rows.items():
            if record is None:
                self.revs[name] = 0
                edited.add(name)  # never written: this replica's state goes in
                continue
            if rev == self.revs.get(name) and not force:
                continue
            try:
                if "corrupt" in record:
                    raise ValueError("not JSON")
                validate_state({"routes": {name: record}})
            except ValueError as exc:
                self.metrics.state_errors.labels("corrupt").inc()
                log.error("shared state: route %s in Redis is not valid (%s); keeping this replica's state and "
                          "writing it back", name, exc)
                self.revs[name] = rev
                edited.add(name)
                continue
            self.revs[name] = rev
            if self.plane.install_route(name, record, record.get("rollout")):
                edited.add(name)
            self.rollouts.forget(name)
        return edited

    async def _full_read(self, force: bool) -> None:
        edited = await self._refresh(self.plane.routes.routes, force=force)
        for key in await self.store.acted_alerts(MAX_REMEMBERED_ALERTS):
            self.plane.acted_alerts.setdefault(key, 0.0)
        if edited:
            self.plane.dirty = set(edited)
            self.plane.new_alerts.clear()
            try:
                await self._write_dirty()
            except Conflict:
                pass  # someone wrote meanwhile: the next read takes theirs
        self.metrics.state_backend_operations.labels("read", "ok").inc()

    async def _write_dirty(self) -> None:
        plane = self.plane
        names = [n for n in plane.dirty if n in plane.routes.routes and n in plane.config.routes]
        alerts = [(key, self.clock()) for key in plane.new_alerts]
        plane.dirty.clear()
        plane.new_alerts.clear()
        if not names and not alerts:
            return
        records = {name: (self.revs.get(name, 0), plane.route_record(name)) for name in names}
        try:
            revs = await self.store.write_routes(records, alerts, MAX_REMEMBERED_ALERTS)
        except UNAVAILABLE:
            self.metrics.state_backend_operations.labels("write", "error").inc()
            raise
        self.revs.update(revs)
        self.metrics.state_backend_operations.labels("write", "ok").inc()
        self._count_changes()

    def _count_changes(self) -> None:
        """``route_changes_total`` counts a change once, on the replica that made it, once
        it is in Redis (or, with Redis down, once it holds here): never a change undone."""
        for route, reason in self.plane.uncounted:
            self.metrics.route_changes.labels(route, reason).inc()
        self.plane.uncounted.clear()

    def _snapshot(self) -> tuple[Any, ...]:
        plane = self.plane
        return (dict(plane.routes.routes), {name: r.to_json() for name, r in plane.rollouts.items()},
                dict(plane.acted_alerts), dict(self.revs), list(plane.uncounted))

    def _restore(self, snapshot: Any) -> None:
        """Undo a change Redis did not take: routes, rollouts and alerts as they were."""
        if snapshot is None:
            return
        plane = self.plane
        states, rollouts, alerts, revs, uncounted = snapshot
        for name, state in states.items():
            if plane.routes.routes.get(name) is not state and name in plane.routes.routes:
                current = plane.routes.routes[name]
                plane.routes.routes[name] = state
                plane._export(state, current)
        for name in set(plane.rollouts) | set(rollouts):
            before = rollouts.get(name)
            if before is None:
                plane.rollouts.pop(name, None)
            elif plane.rollouts.get(name) is None or plane.rollouts[name].to_json() != before:
                plane.rollouts[name] = Rollout.from_json(copy.deepcopy(before))
            self.rollouts.forget(name)
        plane.acted_alerts.clear()
        plane.acted_alerts.update(alerts)
        self.revs = revs
        plane.dirty.clear()
        plane.new_alerts.clear()
        plane.uncounted[:] = uncounted
        self._held_events.clear()

    # --- the journal ----------------------------------------------------------------------------------
    def _apply_journal_locally(self) -> None:
        """A replica restarted while Redis is down: its journaled rollbacks hold here too."""
        entries, _ = self.journal.entries()
        for entry in entries:
            replay(self.plane, entry)
        self.plane.uncounted.clear()  # counted when they were made
        self.metrics.state_journal_entries.set(len(entries))
        if entries:
            log.warning("shared state: %d journaled change(s) from %s applied on this replica; they go to Redis "
                        "once it answers", len(entries), self.cfg.journal)

    async def _replay_journal(self) -> None:
        """Journaled effects into Redis (the lock is held), oldest first; the journal is
        emptied only of what was written."""
        held = sorted(self.unjournaled, key=lambda e: e.get("at", 0))
        for entry in held:
            await self._replay_locked(entry)
            self.unjournaled.remove(entry)
        entries, lines = self.journal.entries()
        if not lines:
            return
        for entry in entries:
            await self._replay_locked(entry)
        self.journal.clear(lines)
        self.metrics.state_journal_entries.set(len(self.journal.entries()[0]))
        self.metrics.state_backend_operations.labels("replay", "ok").inc()
        log.warning("shared state: replayed %d journaled change(s) into Redis", len(entries))

    async def _replay_locked(self, entry: dict[str, Any]) -> None:
        names = {entry["route"]} & set(self.plane.routes.routes)
        for _ in range(MAX_RETRIES):
            edited = await self._refresh(names, force=True)
            snapshot = self._snapshot()
            self.plane.dirty.clear()
            self.plane.new_alerts.clear()
            replay(self.plane, entry)
            self.plane.uncounted.clear()  # counted when it was made, on this replica
            self.plane.dirty.update(edited)
            try:
                await self._write_dirty()
                return
            except Conflict:
                self._restore(snapshot)
        self.metrics.state_backend_operations.labels("replay", "error").inc()
        raise RejoinNeeded(f"could not replay a journaled {entry.get('op')} of route {entry.get('route')}: "
                           "the route kept changing; retrying")

    # --- up and down --------------------------------------------------------------------------------
    def _went_down(self, exc: BaseException) -> None:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up or not self._announced_down:
            log.error("shared state: Redis at %s is unavailable (%s); serving with the last state known, admin "
                      "changes refused (503), rollbacks journaled%s; reconnecting", self.cfg.url, problem,
                      f" in {self.cfg.journal}" if self.cfg.journal else " (no state.journal: webhooks get 503)")
            self._announced_down = True
        if self.up:
            self.down_since = self.clock()
        self.up, self.problem = False, problem
        self.metrics.state_backend_up.set(0)
        self.metrics.state_backend_operations.labels("sync", "error").inc()
        self.lease.lost()
        self._seen_outcomes.clear()  # totals are re-based after the next join
        if self.tenant_limits is not None:
            self.tenant_limits.unreachable()

    def _leadership_changed(self, held: bool) -> None:
        self.metrics.replica_leader.set(1 if held else 0)
        self.rollouts.take_over()  # a new leader announces only what changes from here on


def effect_of(before: Any, after: Any, now: float) -> dict[str, Any] | None:
    """What of a local change the journal keeps: a rollback, or an auto-resume."""
    if after is None or before is after:
        return None
    if after.rolled_back and not before.rolled_back:
        return {"op": "rollback", "route": after.name, "reason": after.reason, "at": now}
    if before.rolled_back and not after.rolled_back:
        return {"op": "resume", "route": after.name, "undoes": before.reason,
                "probe": after.probe_weight_after is not None, "at": now}
    return None


def replay(plane: ControlPlane, entry: dict[str, Any]) -> None:
    """Apply one journaled effect to the state as it is now: a rollback that is already in
    place, or a resume of a rollback that is no longer the one it undid, changes nothing."""
    for key in entry.get("alerts") or ():
        if isinstance(key, str):  # known here already: to Redis with the change
            plane.acted_alerts.setdefault(key, 0.0)
            plane.new_alerts.append(key)
    state = plane.routes.routes.get(entry.get("route", ""))
    if state is None:
        return
    if entry.get("op") == "rollback":
        plane.rollback(state.name, str(entry.get("reason") or "replayed"))
    elif entry.get("op") == "resume" and state.rolled_back and state.reason == entry.get("undoes"):
        try:
            plane.resume(state.name, "resume", probe=bool(entry.get("probe")))
        except RouteError:
            pass


async def _close(pubsub: Any) -> None:
    try:
        async with asyncio.timeout(1.0):
            await pubsub.aclose()
    except (*UNAVAILABLE, Exception):
        pass


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("shared state: an automatic decision could not be applied: %s", task.exception())
