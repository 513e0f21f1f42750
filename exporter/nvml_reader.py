"""Read NVIDIA GPUs through NVML, surviving a missing library, a lost GPU or a driver reload.

dcgm-exporter refuses to start without NVML; this exporter's first job is Ollama's model
state, so it starts anyway, reports ``nvml_up 0``, says why in ONE log line, and retries
initialisation every ``retry_interval`` seconds so a driver that comes back (after an
upgrade, or a container started before the device plugin) is picked up without a restart.

Failures come in four sizes, and each is contained at its size:
- a field one GPU lacks (``NotSupported``, ``FunctionNotFound``): that field is absent for
  that GPU, quietly (see :mod:`exporter.nvml_device`);
- a field that fails for real (``NoPermission``, ``Unknown``, ``Timeout``,
  ``NVMLLibraryMismatchError``, a non-UTF-8 name…): that field is absent, the failure is
  counted in ``gpu_nvml_errors_total{gpu, uuid, call, error}`` and logged once, the GPU's
  ``gpu_up`` is 0 and so is ``nvml_up``; every other series stays;
- a GPU that fell off the bus (``GpuIsLost``): only its ``gpu_up 0`` and its error count
  remain this read, ``nvml_up`` is 0, the other GPUs are still reported;
- the library or driver gone (``Uninitialized``, ``DriverNotLoaded``, ``LibraryNotFound``):
  no GPU series at all, ``nvml_up`` 0, and initialisation is retried later.

A call that hangs (a wedged driver) is the one failure this module cannot contain: the
exporter reads through :class:`exporter.nvml_deadline.DeadlineRunner`, which abandons a
read that overruns and never starts a second one while the first is stuck.

Values leave in base units (bytes, watts, joules, hertz, ratios 0-1): NVML's milliwatts,
millijoules, MHz and percentages are converted in :mod:`exporter.nvml_device` and nowhere else.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import pynvml

from exporter.nvml_device import Fields, GpuLost, LibraryGone, read_gpu, text
from exporter.nvml_errors import ErrorCounts, Kind, kind
from exporter.nvml_records import NVML_DOWN, GpuProcess, GpuReading, NvmlSnapshot

__all__ = ["NVML_DOWN", "GpuProcess", "GpuReading", "NvmlReader", "NvmlSnapshot"]

log = logging.getLogger(__name__)


class NvmlReader:
    def __init__(self, retry_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 errors: ErrorCounts | None = None) -> None:
        self.retry_interval = retry_interval
        self.errors = errors if errors is not None else ErrorCounts()
        self._clock = clock
        self._lock = threading.Lock()
        self._initialised = False
        self._next_try = 0.0
        self._count = 0
        self._driver_version = ""
        self._identity: dict[int, tuple[Any, str, str, str]] = {}  # index -> (handle, uuid, name, bus id)
        self._last_uuid: dict[int, str] = {}  # kept across a lost GPU, for its gpu_up 0 series
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
            for index in range(self._count):
                try:
                    reading = self._read_one(index)
                except LibraryGone as exc:
                    self._lose(exc.cause)
                    return NVML_DOWN
                gpus.append(reading)
                if reading.readable and index in self._failing_gpus:
                    self._failing_gpus.discard(index)
                    log.info("GPU %d answers NVML again", index)
            up = all(g.readable for g in gpus)
            return NvmlSnapshot(up=up, driver_version=self._driver_version, gpus=tuple(gpus))

    def close(self, timeout: float = 1.0) -> None:
        """Shut NVML down, unless a hung read holds the lock (then leave it: the process
        is ending and a blocked nvmlShutdown would hang the exit too)."""
        if self._lock.acquire(timeout=timeout):
            try:
                if self._initialised:
                    self._shutdown()
            finally:
                self._lock.release()

    # --- initialisation ------------------------------------------------------------------
    def _try_init(self) -> bool:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._give_up(exc, "NVML cannot be initialised")
            return False
        try:
            self._count = int(pynvml.nvmlDeviceGetCount())
            self._driver_version = text(pynvml.nvmlSystemGetDriverVersion())
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

    def _give_up(self, exc: BaseException, what: str) -> None:
        self._next_try = self._clock() + self.retry_interval
        reason = f"{what}: {exc}"
        if reason != self._logged_reason:  # one line per kind of outage, not one per scrape
            self._logged_reason = reason
            log.warning("%s; GPU metrics are off (nvml_up 0), retrying every %gs",
                        reason, self.retry_interval)
        else:
            log.debug("%s (still)", reason)

    def _lose(self, exc: BaseException) -> None:
        self._shutdown()
        self._give_up(exc, "NVML stopped working")

    def _shutdown(self) -> None:
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass  # already gone: nothing to release

    # --- reading -------------------------------------------------------------------------
    def _read_one(self, index: int) -> GpuReading:
        """One GPU; a lost or unidentifiable GPU becomes a reading with only its identity."""
        try:
            identity = self._identify(index)
        except LibraryGone:
            raise
        except GpuLost:
            return self._unreadable(index, "GpuIsLost", lost=True)
        except Exception as exc:  # noqa: BLE001 -- e.g. NoPermission on the handle: this GPU only
            self.errors.record(str(index), self._last_uuid.get(index, ""), "nvmlDeviceGetHandleByIndex", exc)
            return self._unreadable(index, str(exc), lost=False)
        handle, uuid, name, bus_id = identity
        try:
            return read_gpu(index, handle, uuid, name, bus_id, self.errors)
        except GpuLost:
            return self._unreadable(index, "GpuIsLost", lost=True)

    def _unreadable(self, index: int, why: str, lost: bool) -> GpuReading:
        self._identity.pop(index, None)  # re-read the handle next time
        uuid = self._last_uuid.get(index, "")
        if lost:
            self.errors.record(str(index), uuid, "device", pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST))
        if index not in self._failing_gpus:
            self._failing_gpus.add(index)
            log.warning("GPU %d cannot be read (%s); only gpu_up 0 remains for it and nvml_up is 0", index, why)
        return GpuReading(index=index, uuid=uuid, name="", readable=False, reached=False, lost=lost)

    def _identify(self, index: int) -> tuple[Any, str, str, str]:
        if index not in self._identity:
            handle = _strict(pynvml.nvmlDeviceGetHandleByIndex, index)
            uuid = text(_strict(pynvml.nvmlDeviceGetUUID, handle))
            self._last_uuid[index] = uuid
            name = self._optional(index, uuid, "nvmlDeviceGetName", handle)
            pci = self._optional(index, uuid, "nvmlDeviceGetPciInfo", handle)
            bus_id = text(getattr(pci, "busId", "")) if pci is not None else ""
            self._identity[index] = (handle, uuid, text(name) if name is not None else "", bus_id)
        return self._identity[index]

    def _optional(self, index: int, uuid: str, call: str, *args: Any) -> Any:
        return Fields(str(index), uuid, self.errors).get(call, *args)


def _strict(call: Callable[..., Any], *args: Any) -> Any:
    """An identity call: a GPU without a handle or UUID cannot be reported at all."""
    try:
        return call(*args)
    except pynvml.NVMLError as exc:
        what = kind(exc)
        if what is Kind.GPU_LOST:
            raise GpuLost() from exc
        if what is Kind.LIBRARY_GONE:
            raise LibraryGone(exc) from exc
        raise
