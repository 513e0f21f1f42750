"""A faithful stand-in for NVML, installed by replacing the ``pynvml`` functions.

It behaves like the real bindings where the exporter can tell: errors are the real
``pynvml.NVMLError`` subclasses (built from their codes, as pynvml does), every device
call before ``nvmlInit`` raises ``NVMLError_Uninitialized``, init and shutdown are
reference counted, power/energy come in milli-units, utilisation in integer percent,
strings as ``str`` and ``usedGpuMemory`` may be ``None``. Shared by the tests,
``bench/bench_exporter.py`` and ``ollama-sidecar exporter --fake-gpus N`` (the demo stack's
simulated GPUs, :func:`install_demo_gpus`). Nothing else imports it: the exporter reads
real NVML unless that option is given.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Protocol

import pynvml

GiB = 1024 ** 3


class Patcher(Protocol):
    def setattr(self, target: Any, name: str, value: Any) -> None: ...


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None  # None: NVML_VALUE_NOT_AVAILABLE
    path: str = "/usr/local/bin/ollama"


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    memory_total: int = 80 * GiB
    memory_used: int = 0
    util_gpu: int = 0  # percent
    util_memory: int = 0  # percent
    temperature: int = 40  # degrees Celsius
    power_mw: int | None = None  # None: this GPU does not support the reading
    power_limit_mw: int | None = None
    energy_mj: int | None = None
    processes: list[FakeProcess] = field(default_factory=list)
    lost: bool = False  # fell off the bus: every call raises GpuIsLost


@dataclass(frozen=True)
class FakeHandle:
    index: int


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml turns the code into its subclass


class FakeNvml:
    """``init_error`` (an NVML error code) makes ``nvmlInit`` fail until cleared;
    ``driver_gone`` makes every call fail as if the driver was unloaded."""

    FUNCTIONS = (
        "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlSystemGetDriverVersion",
        "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetComputeRunningProcesses",
        "nvmlSystemGetProcessName",
    )

    def __init__(self, gpus: list[FakeGpu], driver_version: str = "550.54.15") -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.init_error: int | None = None
        self.driver_gone = False
        self.refcount = 0
        self.calls: Counter[str] = Counter()

    def install(self, patcher: Patcher) -> FakeNvml:
        for name in self.FUNCTIONS:
            patcher.setattr(pynvml, name, self._counted(name))
        return self

    def _counted(self, name: str):
        method = getattr(self, name)

        def call(*args: Any) -> Any:
            self.calls[name] += 1
            return method(*args)
        return call

    # --- library -------------------------------------------------------------------------
    def _check_library(self) -> None:
        if self.driver_gone:
            raise _error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        if self.refcount == 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise _error(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        if self.refcount == 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self.refcount -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_library()
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_library()
        return self.driver_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._check_library()
        for gpu in self.gpus:
            for proc in gpu.processes:
                if proc.pid == pid:
                    return proc.path
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    # --- devices -------------------------------------------------------------------------
    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        self._check_library()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    @staticmethod
    def _supported(value: int | None) -> int:
        if value is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_library()
        if not 0 <= index < len(self.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        handle = FakeHandle(index)
        self._gpu(handle)
        return handle

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> SimpleNamespace:
        gpu = self._gpu(handle)
        return SimpleNamespace(total=gpu.memory_total, used=gpu.memory_used,
                               free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        gpu = self._gpu(handle)
        return SimpleNamespace(gpu=gpu.util_gpu, memory=gpu.util_memory)

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle).power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle).power_limit_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle).energy_mj)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        gpu = self._gpu(handle)
        return [SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF) for p in gpu.processes]


def two_gpus() -> list[FakeGpu]:
    """A datacenter card with every reading, and a consumer card without power readings,
    whose second process reports no memory (``usedGpuMemory=None``)."""
    return [
        FakeGpu(
            uuid="GPU-11111111-2222-3333-4444-555555555555", name="NVIDIA A100-SXM4-80GB",
            memory_total=80 * GiB, memory_used=20 * GiB, util_gpu=37, util_memory=12,
            temperature=61, power_mw=245_500, power_limit_mw=400_000, energy_mj=1_234_567,
            processes=[FakeProcess(4242, 19 * GiB, "/usr/local/bin/ollama"),
                       FakeProcess(5151, 512 * 1024 ** 2, "/usr/bin/python3")],
        ),
        FakeGpu(
            uuid="GPU-66666666-7777-8888-9999-000000000000", name="NVIDIA GeForce RTX 3090",
            memory_total=24 * GiB, memory_used=3 * GiB, util_gpu=100, util_memory=0,
            temperature=45,
            processes=[FakeProcess(4243, 2 * GiB, "/usr/local/bin/ollama"),
                       FakeProcess(6000, None, "/usr/bin/Xorg")],
        ),
    ]


# --- the demo's GPUs ---------------------------------------------------------------------------

class _Module:
    """A patcher that replaces attributes for the life of the process (no undo)."""

    def setattr(self, target: Any, name: str, value: Any) -> None:
        setattr(target, name, value)


class LiveFakeNvml(FakeNvml):
    """A fake whose utilisation, temperature and power drift with ``clock``, so the demo's
    GPU graphs move; every reading stays below the GPU alerts' thresholds."""

    def __init__(self, gpus: list[FakeGpu], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(gpus)
        self._clock = clock
        self._base = [(g.util_gpu, g.temperature, g.power_mw) for g in gpus]

    def _drift(self, index: int) -> float:
        """-1..1, a slow wave per GPU (one period every two minutes, GPUs out of phase)."""
        return math.sin(self._clock() * 2 * math.pi / 120 + index)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        gpu = super()._gpu(handle)
        util, temperature, power = self._base[handle.index]
        wave = self._drift(handle.index)
        gpu.util_gpu = max(0, min(100, round(util + 25 * wave)))
        gpu.temperature = round(temperature + 6 * wave)
        if power is not None:
            gpu.power_mw = round(power * (1 + 0.2 * wave))
        return gpu


def demo_gpus(count: int) -> list[FakeGpu]:
    """``count`` GPUs in the style of :func:`two_gpus` (the first two are those), each with
    an Ollama process holding memory; readings well below every GPU alert threshold."""
    gpus = two_gpus()
    for i in range(2, count):
        gpus.append(FakeGpu(
            uuid=f"GPU-{i:08x}-0000-4000-8000-{i:012x}", name="NVIDIA L4", memory_total=24 * GiB,
            memory_used=6 * GiB, util_gpu=40, util_memory=15, temperature=55, power_mw=42_000,
            power_limit_mw=72_000, energy_mj=500_000, processes=[FakeProcess(4300 + i, 5 * GiB)]))
    return gpus[:count]


def install_demo_gpus(count: int) -> LiveFakeNvml:
    """Replace ``pynvml`` in this process with ``count`` simulated GPUs (the exporter's
    ``--fake-gpus``). For demos and tests only: real GPUs are never read afterwards."""
    if count < 1:
        raise ValueError("fake GPUs: count must be at least 1")
    return LiveFakeNvml(demo_gpus(count)).install(_Module())
