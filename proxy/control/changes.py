"""How a change to the routes is made durable: the seam between the control plane and
where its state lives.

One replica (:class:`LocalChanges`): the plane applies the change and writes its state
file before returning, so there is nothing to wait for. Several replicas
(:class:`proxy.replicas.replica.Replica`, same three methods): the change is made on
fresh state from Redis and written there before it is acknowledged. The admin API, the
Alertmanager webhook, the reconcile loop, the breaker and the probe call these and do
not know which one they have.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, TypeVar

T = TypeVar("T")


class Changes(Protocol):
    async def apply(self, routes: Iterable[str], op: Callable[[], T]) -> T:
        """An operator's change: acknowledged only once durable (else RouteError 503)."""

    async def safety(self, routes: Iterable[str], op: Callable[[], T]) -> tuple[T, bool]:
        """A rollback that must happen even when the state cannot be shared: (result, durable)."""

    def decide(self, routes: list[str], op: Callable[[], Any]) -> None:
        """An automatic decision from a background count (breaker, probe)."""


class LocalChanges:
    """One replica: the control plane saves its state file itself."""

    async def apply(self, routes: Iterable[str], op: Callable[[], T]) -> T:
        return op()

    async def safety(self, routes: Iterable[str], op: Callable[[], T]) -> tuple[T, bool]:
        return op(), True

    def decide(self, routes: list[str], op: Callable[[], Any]) -> None:
        op()
