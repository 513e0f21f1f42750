"""Admission control (proxy/dataplane/admission.py) in one event loop: at most
``max_in_flight`` requests upstream, a bounded queue behind them shown in
``ollama_proxy_queue_length``, and a 503 with ``Retry-After`` rather than an unbounded
wait. Through a running proxy it is in test_proxy_errors.py."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Admission
from proxy.dataplane.admission import AdmissionControl
from proxy.dataplane.errors import ProxyError


class QueueGauge:
    """Stands in for ``ollama_proxy_queue_length``; lets a test wait for a queue length."""

    def __init__(self) -> None:
        self.value = 0.0
        self.history: list[float] = []
        self._changed = asyncio.Event()

    def set(self, value: float) -> None:
        self.value = value
        self.history.append(value)
        self._changed.set()

    async def reaches(self, value: float, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.value != value:
                self._changed.clear()
                await self._changed.wait()


def admission(max_in_flight: int = 1, max_queue: int = 1, queue_timeout: float = 30.0) -> tuple[AdmissionControl,
                                                                                                    QueueGauge]:
    gauge = QueueGauge()
    return AdmissionControl(Admission(max_in_flight, max_queue, queue_timeout), gauge), gauge  # type: ignore[arg-type]


async def hold(control: AdmissionControl, entered: asyncio.Event | None, release: asyncio.Event) -> str:
    async with control.slot():
        if entered is not None:
            entered.set()
        await release.wait()
    return "served"


async def test_off_by_default_every_request_goes_straight_through():
    control, gauge = admission(max_in_flight=0)
    release = asyncio.Event()
    tasks = [asyncio.create_task(hold(control, None, release)) for _ in range(50)]
    release.set()
    assert await asyncio.gather(*tasks) == ["served"] * 50
    assert gauge.history == []  # no queue to show


async def test_a_full_proxy_queues_then_sheds_with_retry_after():
    control, gauge = admission(max_in_flight=1, max_queue=1, queue_timeout=4.5)
    release = asyncio.Event()
    entered = asyncio.Event()
    first = asyncio.create_task(hold(control, entered, release))
    await entered.wait()
    queued = asyncio.create_task(hold(control, None, release))
    await gauge.reaches(1)  # one in flight, one queued
    with pytest.raises(ProxyError) as err:
        async with control.slot():
            pass
    assert (err.value.status, err.value.error_type) == (503, "overloaded")
    assert err.value.headers == {"Retry-After": "5"}  # the queue timeout, rounded up
    assert "1 requests in flight and 1 queued" in str(err.value)
    release.set()
    assert await first == "served" and await queued == "served"  # the queued one was served, not dropped
    assert gauge.value == 0


async def test_a_request_queued_longer_than_queue_timeout_is_shed():
    control, gauge = admission(queue_timeout=0.05)
    release = asyncio.Event()
    entered = asyncio.Event()
    first = asyncio.create_task(hold(control, entered, release))
    await entered.wait()
    with pytest.raises(ProxyError) as err:
        async with control.slot():
            pass
    assert err.value.status == 503 and "no slot within 0.05s" in str(err.value)
    assert err.value.headers == {"Retry-After": "1"}
    assert gauge.value == 0
    release.set()
    await first


async def test_a_client_that_leaves_the_queue_gives_its_place_back():
    control, gauge = admission(max_queue=1)
    release = asyncio.Event()
    entered = asyncio.Event()
    first = asyncio.create_task(hold(control, entered, release))
    await entered.wait()
    leaver = asyncio.create_task(hold(control, None, release))
    await gauge.reaches(1)
    leaver.cancel()
    await asyncio.gather(leaver, return_exceptions=True)
    assert gauge.value == 0
    second = asyncio.create_task(hold(control, None, release))  # the place is free again
    await gauge.reaches(1)
    release.set()
    assert await first == "served" and await second == "served"


async def test_a_request_that_fails_gives_its_slot_back():
    control, _ = admission(max_queue=0)
    with pytest.raises(RuntimeError):
        async with control.slot():
            raise RuntimeError("upstream blew up")
    async with control.slot():  # not refused: the slot came back
        pass
