"""Read NVIDIA GPUs through NVML, surviving a missing library, a lost GPU or a driver reload.

dcgm-exporter refuses to start without NVML; this exporter's first job is Ollama's model
state, so it starts anyway, reports ``nvml_up 0``, says why in ONE log line, and retries
initialisation every ``retry_interval`` seconds so a driver that comes back (after an
upgrade, or a container started before the device plugin) is picked up without a restart.

Failures come in three sizes, and each is contained at its size:
- a field one GPU does not support (``NotSupported``, ``NoPermission`` …): that field is
  skipped for that GPU;
- a GPU that fell off the bus (``GpuIsLost``): that GPU is skipped this scrape and
  ``nvml_up`` is 0, the other GPUs are still reported;
- the library or driver gone (``Uninitialized``, ``DriverNotLoaded``, ``LibraryNotFound``):
  no GPU series at all, ``nvml_up`` 0, and initialisation is retried later.

Values leave this module in base units (bytes, watts, joules, ratios 0-1): NVML's
milliwatts, millijoules and percentages are converted here and nowhere else.
NVML calls are blocking C calls; the exporter makes them on the HTTP server's request
thread (there is no event loop to block), under a lock so concurrent scrapes share one read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pynvml

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; a field is None when the GPU does not support it."""

    index: int
    uuid: str
    name: str
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    processes: tuple[GpuProcess, ...] = field(default=())


@dataclass(frozen=True)
class NvmlSnapshot:
    up: bool
    driver_version: str = ""
    gpus: tuple[GpuReading, ...] = ()


NVML_DOWN = NvmlSnapshot(up=False)


def _library_gone(exc: pynvml.NVMLError) -> bool:
    return isinstance(exc, (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded,
                            pynvml.NVMLError_LibraryNotFound))


def _gpu_gone(exc: pynvml.NVMLError) -> bool:
    return isinstance(exc, pynvml.NVMLError_GpuIsLost) or _library_gone(exc)


def _text(value: Any) -> str:
    """NVML strings: ``str`` from nvidia-ml-py >= 11.515, ``bytes`` from older ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class NvmlReader:
    def __init__(self, retry_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._initialised = False
        self._next_try = 0.0
        self._count = 0
        self._driver_version = ""
        self._identity: dict[int, tuple[Any, str, str]] = {}  # index -> (handle, uuid, name)
        self._logged_reason: str | None = None
        self._failing_gpus: set[int] = set()

    def start(self) -> bool:
        """Initialise now, so the startup log says at once whether GPUs are visible."""
        with self._lock:
            return self._initialised or self._try_init()

    def read(self) -> NvmlSnapshot:
        with self._lock:
            if not self._initialised:
                if self._clock() < self._next_try or not self._try_init():
                    return NVML_DOWN
            gpus = []
            up = True
            for index in range(self._count):
                try:
                    gpus.append(self._read_gpu(index))
                except pynvml.NVMLError as exc:
                    if _library_gone(exc):
                        self._lose(exc)
                        return NVML_DOWN
                    up = False
                    self._gpu_failed(index, exc)
                else:
                    if index in self._failing_gpus:
                        self._failing_gpus.discard(index)
                        log.info("GPU %d answers NVML again", index)
            return NvmlSnapshot(up=up, driver_version=self._driver_version, gpus=tuple(gpus))

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._shutdown()

    # --- initialisation ------------------------------------------------------------------
    def _try_init(self) -> bool:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._give_up(exc, "NVML cannot be initialised")
            return False
        try:
            self._count = int(pynvml.nvmlDeviceGetCount())
            self._driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as exc:
            self._shutdown()
            self._give_up(exc, "NVML initialised but cannot list GPUs")
            return False
        self._initialised = True
        self._identity.clear()
        self._failing_gpus.clear()
        recovered = " again" if self._logged_reason is not None else ""
        self._logged_reason = None
        log.info("NVML initialised%s: %d GPU(s), driver %s", recovered, self._count, self._driver_version)
        return True

    def _give_up(self, exc: pynvml.NVMLError, what: str) -> None:
        self._next_try = self._clock() + self.retry_interval
        reason = f"{what}: {exc}"
        if reason != self._logged_reason:  # one line per kind of outage, not one per scrape
            self._logged_reason = reason
            log.warning("%s; GPU metrics are off (nvml_up 0), retrying every %gs",
                        reason, self.retry_interval)
        else:
            log.debug("%s (still)", reason)

    def _lose(self, exc: pynvml.NVMLError) -> None:
        self._shutdown()
        self._give_up(exc, "NVML stopped working")

    def _shutdown(self) -> None:
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass  # already gone: nothing to release

    # --- reading -------------------------------------------------------------------------
    def _gpu_failed(self, index: int, exc: pynvml.NVMLError) -> None:
        self._identity.pop(index, None)  # re-read the handle next time
        if index not in self._failing_gpus:
            self._failing_gpus.add(index)
            log.warning("GPU %d cannot be read (%s); its series are dropped and nvml_up is 0", index, exc)

    def _identify(self, index: int) -> tuple[Any, str, str]:
        if index not in self._identity:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            name = self._field(pynvml.nvmlDeviceGetName, handle) or ""
            self._identity[index] = (handle, uuid, _text(name))
        return self._identity[index]

    def _read_gpu(self, index: int) -> GpuReading:
        handle, uuid, name = self._identify(index)
        memory = self._field(pynvml.nvmlDeviceGetMemoryInfo, handle)
        rates = self._field(pynvml.nvmlDeviceGetUtilizationRates, handle)
        return GpuReading(
            index=index, uuid=uuid, name=name,
            memory_used_bytes=_attr(memory, "used"),
            memory_total_bytes=_attr(memory, "total"),
            memory_free_bytes=_attr(memory, "free"),
            utilization_ratio=_scaled(_attr(rates, "gpu"), 100),
            memory_utilization_ratio=_scaled(_attr(rates, "memory"), 100),
            temperature_celsius=_scaled(
                self._field(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU), 1),
            power_watts=_scaled(self._field(pynvml.nvmlDeviceGetPowerUsage, handle), 1000),
            power_limit_watts=_scaled(self._field(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle), 1000),
            energy_joules=_scaled(self._field(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle), 1000),
            processes=self._processes(handle),
        )

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        """Compute processes with known memory, one per pid (a pid listed twice, as on
        MIG, is summed: a duplicate series would fail the whole scrape)."""
        memory: dict[int, int] = {}
        for proc in self._field(pynvml.nvmlDeviceGetComputeRunningProcesses, handle) or ():
            used = getattr(proc, "usedGpuMemory", None)
            if used is None:  # NVML_VALUE_NOT_AVAILABLE (Windows WDDM, some MIG setups)
                continue
            memory[int(proc.pid)] = memory.get(int(proc.pid), 0) + int(used)
        return tuple(
            GpuProcess(pid, self._process_name(pid), used) for pid, used in sorted(memory.items()))

    def _process_name(self, pid: int) -> str:
        name = self._field(pynvml.nvmlSystemGetProcessName, pid)
        return os.path.basename(_text(name)) if name else ""

    @staticmethod
    def _field(call: Callable[..., T], *args: Any) -> T | None:
        """One NVML read that a GPU may not support: None instead of an error. A lost GPU
        or a vanished library still raises: that is not a missing field."""
        try:
            return call(*args)
        except pynvml.NVMLError as exc:
            if _gpu_gone(exc):
                raise
            return None


def _attr(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None) if obj is not None else None
    return int(value) if value is not None else None


def _scaled(value: Any, divisor: float) -> float | None:
    return None if value is None else float(value) / divisor
