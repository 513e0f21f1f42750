"""A faithful stand-in for NVML, installed by replacing the ``pynvml`` functions.

It behaves like the real bindings where the exporter can tell, because the exporter has
only ever met this fake in CI and every difference is a bug that ships:
- errors are the real ``pynvml.NVMLError`` subclasses (built from their codes, as pynvml
  does), and the failures that are not NVMLErrors are raised too: ``NVMLLibraryMismatchError``
  from the unversioned process query on a driver before R510 (``FakeNvml.driver_branch``),
  ``UnicodeDecodeError`` from a process path that is not UTF-8 (a ``bytes`` path);
- every device call before ``nvmlInit`` raises ``NVMLError_Uninitialized``; init and
  shutdown are reference counted;
- results are the bindings' own types: ``c_nvmlMemory_t`` / ``c_nvmlMemory_v2_t`` (v1 "used"
  includes the driver's reservation, v2 reports it apart), ``c_nvmlUtilization_t``,
  ``nvmlPciInfo_t``, process lists as ``nvmlFriendlyObject`` from ``c_nvmlProcessInfo_v2_t``
  with ``usedGpuMemory`` possibly ``None``; power/energy in milli-units, clocks in MHz,
  utilisation in integer percent, strings as ``str``;
- any call can be made to fail (``FakeGpu.fail``: call name -> exception) or to hang
  until ``FakeNvml.release`` is set (``FakeNvml.hang``: call names), as a wedged driver does;
- MIG: a GPU with ``mig_instances`` is in MIG mode: utilisation is ``NotSupported`` on the
  parent and each instance has its own handle, memory and processes;
- XID critical errors arrive through the event API (:meth:`FakeNvml.inject_xid`).

Shared by the tests, ``bench/bench_exporter.py`` and ``ollama-sidecar exporter --fake-gpus N``
(the demo stack's simulated GPUs, :func:`install_demo_gpus`). Nothing else imports it: the
exporter reads real NVML unless that option is given.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import pynvml

GiB = 1024 ** 3
MiB = 1024 ** 2


class Patcher(Protocol):
    def setattr(self, target: Any, name: str, value: Any) -> None: ...


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None  # None: NVML_VALUE_NOT_AVAILABLE
    path: str | bytes = "/usr/local/bin/ollama"  # bytes that are not UTF-8: UnicodeDecodeError


@dataclass
class FakeMigInstance:
    uuid: str
    gpu_instance: int
    compute_instance: int
    memory_total: int
    memory_used: int = 0
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    memory_total: int = 80 * GiB
    memory_used: int = 0  # allocated, without the reservation (what nvidia-smi calls "used")
    memory_reserved: int = 0  # the driver's own; v1 counts it in "used"
    util_gpu: int = 0  # percent
    util_memory: int = 0  # percent
    temperature: int = 40  # degrees Celsius
    power_mw: int | None = None  # None: this GPU does not support the reading
    power_limit_mw: int | None = None
    energy_mj: int | None = None
    processes: list[FakeProcess] = field(default_factory=list)
    lost: bool = False  # fell off the bus: every call raises GpuIsLost
    pci_bus_id: str = ""  # "" : derived from the index
    sm_clock_mhz: int | None = 1410
    memory_clock_mhz: int | None = 1215
    clock_event_reasons: int | None = 0  # nvmlClocksEventReason* bitmask
    pstate: int | None = 0
    encoder_util: int | None = 0  # percent
    decoder_util: int | None = 0
    ecc: dict[tuple[int, int], int] | None = None  # (error type, counter type) -> count; None: no ECC
    remapped_rows: tuple[int, int, int, int] | None = None  # (corr, unc, pending, failed)
    pcie_replays: int | None = 0
    xid_events: bool = True  # supports XID event registration
    mig_instances: list[FakeMigInstance] | None = None  # None: no MIG support; a list: MIG on
    fail: dict[str, BaseException] = field(default_factory=dict)  # call name -> raised every time


@dataclass(frozen=True)
class FakeHandle:
    index: int
    mig: int | None = None  # MIG device slot under the parent GPU


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # pynvml turns the code into its subclass


def _friendly(struct_type: type, **values: Any) -> Any:
    """A process entry as the real bindings return it (struct -> nvmlFriendlyObject)."""
    obj = pynvml.nvmlStructToFriendlyObject(struct_type(**{k: v for k, v in values.items() if v is not None}))
    if values.get("usedGpuMemory") is None:
        obj.usedGpuMemory = None
    return obj


class FakeNvml:
    """``init_error`` (an NVML error code) makes ``nvmlInit`` fail until cleared;
    ``driver_gone`` makes every call fail as if the driver was unloaded; ``driver_branch``
    below 510 removes the ``_v3`` process query and memory v2 (as R470 lacks them);
    ``temperature_v`` False removes ``nvmlDeviceGetTemperatureV`` (drivers before R565);
    ``hang`` names calls that block until ``release`` is set (``entered`` says one did)."""

    FUNCTIONS = (
        "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlSystemGetDriverVersion",
        "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlSystemGetProcessName", "nvmlDeviceGetClockInfo", "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetPerformanceState", "nvmlDeviceGetEncoderUtilization", "nvmlDeviceGetDecoderUtilization",
        "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows", "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetMigDeviceHandleByIndex",
        "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
        "nvmlEventSetCreate", "nvmlDeviceRegisterEvents", "nvmlEventSetWait", "nvmlEventSetFree",
    )

    def __init__(self, gpus: list[FakeGpu], driver_version: str = "550.54.15") -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.init_error: int | None = None
        self.driver_gone = False
        self.temperature_v = True
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self.hang: set[str] = set()
        self.release = threading.Event()
        self.entered = threading.Event()
        self._events: queue.Queue[tuple[int, int]] = queue.Queue()
        self._registered: set[int] = set()

    @property
    def driver_branch(self) -> int:
        return int(self.driver_version.split(".")[0])

    def install(self, patcher: Patcher) -> FakeNvml:
        for name in self.FUNCTIONS:
            patcher.setattr(pynvml, name, self._counted(name))
        return self

    def _counted(self, name: str):
        method = getattr(self, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in self.hang:
                self.entered.set()
                self.release.wait()
            return method(*args, **kwargs)
        return call

    def inject_xid(self, index: int, xid: int) -> None:
        """The driver reports XID ``xid`` on GPU ``index`` (seen if it was registered)."""
        if index in self._registered:
            self._events.put((index, xid))

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
            for proc in gpu.processes + [p for m in gpu.mig_instances or () for p in m.processes]:
                if proc.pid == pid:
                    if isinstance(proc.path, bytes):
                        return proc.path.decode()  # strict, as the bindings decode
                    return proc.path
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    # --- devices -------------------------------------------------------------------------
    def _gpu(self, handle: FakeHandle, call: str = "") -> FakeGpu:
        self._check_library()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if call in gpu.fail:
            raise gpu.fail[call]
        return gpu

    def _mig(self, handle: FakeHandle, call: str) -> FakeMigInstance | None:
        gpu = self._gpu(handle, call)
        return None if handle.mig is None else (gpu.mig_instances or [])[handle.mig]

    @staticmethod
    def _supported(value: Any) -> Any:
        if value is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_library()
        if not 0 <= index < len(self.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        handle = FakeHandle(index)
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        mig = self._mig(handle, "nvmlDeviceGetUUID")
        return mig.uuid if mig is not None else self.gpus[handle.index].uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        bus_id = gpu.pci_bus_id or f"00000000:{0x17 + handle.index:02X}:00.0"
        info.busId = bus_id.encode()  # c_char array: bytes, as the real call returns it
        info.bus = int(bus_id.split(":")[1], 16)
        return info

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        mig = self._mig(handle, "nvmlDeviceGetMemoryInfo")
        gpu = self.gpus[handle.index]
        if mig is not None:
            total, used, reserved = mig.memory_total, mig.memory_used, 0
        else:
            total, used, reserved = gpu.memory_total, gpu.memory_used, gpu.memory_reserved
        if not version:
            return pynvml.c_nvmlMemory_t(total=total, free=total - used - reserved, used=used + reserved)
        if self.driver_branch < 510:
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # no nvmlDeviceGetMemoryInfo_v2
        if version != pynvml.nvmlMemory_v2:
            raise _error(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return pynvml.c_nvmlMemory_v2_t(version=version, total=total, reserved=reserved,
                                        free=total - used - reserved, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        if gpu.mig_instances is not None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.util_gpu, memory=gpu.util_memory)

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetTemperatureV(self, handle: FakeHandle, sensor: int, version: int | None = None) -> int:
        if not self.temperature_v:
            self._check_library()
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        gpu = self._gpu(handle, "nvmlDeviceGetTemperatureV")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj)

    def _processes(self, handle: FakeHandle, call: str) -> list[Any]:
        mig = self._mig(handle, call)
        gpu = self.gpus[handle.index]
        if mig is not None:
            procs, gi, ci = mig.processes, mig.gpu_instance, mig.compute_instance
        elif gpu.mig_instances is not None:
            raise _error(pynvml.NVML_ERROR_NO_PERMISSION)  # the parent of a MIG GPU, unprivileged
        else:
            procs, gi, ci = gpu.processes, 0xFFFFFFFF, 0xFFFFFFFF
        return [_friendly(pynvml.c_nvmlProcessInfo_v2_t, pid=p.pid, usedGpuMemory=p.used_memory,
                          gpuInstanceId=gi, computeInstanceId=ci) for p in procs]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: FakeHandle) -> list[Any]:
        if self.driver_branch < 510:
            self._check_library()
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeHandle) -> list[Any]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        """nvidia-ml-py 13: ``_v3`` behind ``throwOnVersionMismatch``."""
        try:
            return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)
        except pynvml.NVMLError_FunctionNotFound:
            raise pynvml.NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match the NVML lib version.") from None

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetClockInfo")
        if clock_type == pynvml.NVML_CLOCK_SM:
            return self._supported(gpu.sm_clock_mhz)
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return self._supported(gpu.memory_clock_mhz)
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clock_event_reasons)

    def nvmlDeviceGetPerformanceState(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetPerformanceState").pstate)

    def nvmlDeviceGetEncoderUtilization(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetEncoderUtilization")
        return [self._supported(gpu.encoder_util), 167_000]

    def nvmlDeviceGetDecoderUtilization(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetDecoderUtilization")
        return [self._supported(gpu.decoder_util), 167_000]

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int, counter_type: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        return self._supported(None if gpu.ecc is None else gpu.ecc.get((error_type, counter_type), 0))

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:
        return self._supported(self._gpu(handle, "nvmlDeviceGetRemappedRows").remapped_rows)

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:
        return self._supported(self._gpu(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replays)

    # --- MIG -----------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetMigMode")
        if gpu.mig_instances is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return 7 if gpu.mig_instances is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, slot: int) -> FakeHandle:
        gpu = self._gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if gpu.mig_instances is None or not 0 <= slot < 7:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if slot >= len(gpu.mig_instances):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)  # an empty slot
        return FakeHandle(handle.index, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        mig = self._mig(handle, "nvmlDeviceGetGpuInstanceId")
        if mig is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeHandle) -> int:
        mig = self._mig(handle, "nvmlDeviceGetComputeInstanceId")
        if mig is None:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.compute_instance

    # --- events --------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> object:
        self._check_library()
        return object()

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int, event_set: object) -> None:
        gpu = self._gpu(handle, "nvmlDeviceRegisterEvents")
        if not gpu.xid_events:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self._registered.add(handle.index)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> Any:
        self._check_library()
        try:
            index, xid = self._events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise _error(pynvml.NVML_ERROR_TIMEOUT) from None
        return pynvml.nvmlFriendlyObject({"device": FakeHandle(index), "eventType": pynvml.nvmlEventTypeXidCriticalError,
                                          "eventData": xid, "gpuInstanceId": 0xFFFFFFFF,
                                          "computeInstanceId": 0xFFFFFFFF})

    def nvmlEventSetFree(self, event_set: object) -> None:
        self._check_library()
        self._registered.clear()


def two_gpus() -> list[FakeGpu]:
    """A datacenter card with every reading (ECC, row remapping, a 512 MiB driver
    reservation), and a consumer card without power, ECC or remapping readings, whose
    second process reports no memory (``usedGpuMemory=None``)."""
    return [
        FakeGpu(
            uuid="GPU-11111111-2222-3333-4444-555555555555", name="NVIDIA A100-SXM4-80GB",
            memory_total=80 * GiB, memory_used=20 * GiB, memory_reserved=512 * MiB, util_gpu=37, util_memory=12,
            temperature=61, power_mw=245_500, power_limit_mw=400_000, energy_mj=1_234_567,
            processes=[FakeProcess(4242, 19 * GiB, "/usr/local/bin/ollama"),
                       FakeProcess(5151, 512 * 1024 ** 2, "/usr/bin/python3")],
            pci_bus_id="00000000:07:00.0", sm_clock_mhz=1410, memory_clock_mhz=1593,
            clock_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap, pstate=0,
            ecc={(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 3,
                 (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): 17},
            remapped_rows=(2, 0, 0, 0), pcie_replays=5,
        ),
        FakeGpu(
            uuid="GPU-66666666-7777-8888-9999-000000000000", name="NVIDIA GeForce RTX 3090",
            memory_total=24 * GiB, memory_used=3 * GiB, memory_reserved=300 * MiB, util_gpu=100, util_memory=0,
            temperature=45,
            processes=[FakeProcess(4243, 2 * GiB, "/usr/local/bin/ollama"),
                       FakeProcess(6000, None, "/usr/bin/Xorg")],
            pci_bus_id="00000000:41:00.0", sm_clock_mhz=1695, memory_clock_mhz=9751,
            clock_event_reasons=0, pstate=2, encoder_util=12, decoder_util=0, pcie_replays=None,
        ),
    ]


def fleet_gpus() -> list[FakeGpu]:
    """What a real mixed box holds: :func:`two_gpus`'s A100, an H100 in MIG mode with two
    instances (one serving an Ollama runner) and a GeForce RTX 4090 that does report power
    (most recent GeForce cards do) but has no ECC."""
    a100 = two_gpus()[0]
    h100 = FakeGpu(
        uuid="GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", name="NVIDIA H100 80GB HBM3",
        memory_total=80 * GiB, memory_used=30 * GiB, memory_reserved=600 * MiB, temperature=52,
        power_mw=310_000, power_limit_mw=700_000, energy_mj=9_000_000, pci_bus_id="00000000:18:00.0",
        sm_clock_mhz=1980, memory_clock_mhz=2619, ecc={}, remapped_rows=(0, 0, 0, 0),
        mig_instances=[
            FakeMigInstance("MIG-11111111-aaaa-bbbb-cccc-000000000001", gpu_instance=1, compute_instance=0,
                            memory_total=40 * GiB, memory_used=25 * GiB,
                            processes=[FakeProcess(7001, 24 * GiB, "/usr/bin/ollama")]),
            FakeMigInstance("MIG-11111111-aaaa-bbbb-cccc-000000000002", gpu_instance=2, compute_instance=0,
                            memory_total=20 * GiB, memory_used=0),
        ],
    )
    rtx4090 = FakeGpu(
        uuid="GPU-44444444-0909-0909-0909-444444444444", name="NVIDIA GeForce RTX 4090",
        memory_total=24 * GiB, memory_used=9 * GiB, memory_reserved=400 * MiB, util_gpu=88, util_memory=40,
        temperature=71, power_mw=402_250, power_limit_mw=450_000, energy_mj=77_000_000,
        pci_bus_id="00000000:81:00.0", sm_clock_mhz=2520, memory_clock_mhz=10501,
        clock_event_reasons=pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonSwPowerCap,
        pstate=2, xid_events=False,
        processes=[FakeProcess(7002, 8 * GiB, "/usr/bin/ollama")],
    )
    return [a100, h100, rtx4090]


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

    def _gpu(self, handle: FakeHandle, call: str = "") -> FakeGpu:
        gpu = super()._gpu(handle, call)
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
