"""The rollout leader's lease: exactly one replica advances rollouts and acts on the shared
breaker and probe counts.

The holder renews the lease every third of its length; a replica that cannot renew (Redis
down, or another holds it) stops acting at once, before its lease can have run out, so two
replicas never act together. When the holder dies its key expires and the next replica to
ask takes it, within the lease time; the rollout continues from the step saved in Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from proxy.replicas.store import Store

log = logging.getLogger("ollama_sidecar.replicas")


class Lease:
    def __init__(self, replica: str, length: float, on_change: Callable[[bool], None],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.replica = replica
        self.length = length
        self.on_change = on_change
        self.monotonic = monotonic
        self._held = False
        self._valid_until = 0.0  # monotonic: the lease as granted, less a margin for clock drift
        self._next = 0.0

    @property
    def granted(self) -> bool:
        """Granted at the last renewal, maybe since expired: enough for an idempotent act
        (a rollback), not for one that must happen once (a rollout step)."""
        return self._held

    @property
    def held(self) -> bool:
        """Held, and not possibly expired: a renewal delayed past the lease (a stalled loop)
        means another replica may already hold it, so this one stops acting by itself."""
        return self._held and self.monotonic() < self._valid_until

    async def tick(self, store: Store) -> None:
        """Take or renew the lease when due (every length/3)."""
        now = self.monotonic()
        if now < self._next and self.held:
            return
        held = await store.hold_lease(self.replica, self.length)
        self._next = now + self.length / 3
        if held:
            self._valid_until = now + self.length * 0.9  # from before the call: never later than Redis's
        self._set(held)

    def lost(self) -> None:
        """Redis is unreachable: act as if the lease were gone (another may hold it soon)."""
        self._next = 0.0
        self._set(False)

    async def release(self, store: Store) -> None:
        if self._held:
            await store.drop_lease(self.replica)
            self._set(False)

    def _set(self, held: bool) -> None:
        if held != self._held:
            self._held = held
            log.warning("replica %s %s the rollout lease", self.replica, "took" if held else "no longer holds")
            self.on_change(held)
