"""Read every field of one GPU, each call contained on its own.

A GPU is read as some thirty independent NVML calls. Each goes through :meth:`Fields.get`,
which turns every way a call can fail into "this one field is absent": the GPU lacks it
(``NotSupported``, ``FunctionNotFound``, a binding the installed nvidia-ml-py does not
have) quietly; anything else counted in ``gpu_nvml_errors_total`` and logged once. Only
two failures escape a field: the GPU is lost (the rest of it is skipped this read) and
NVML itself is gone (the reader shuts down and retries).

Calls that changed across NVML versions are tried newest first and fall back:
memory ``_v2`` (reserved apart, so "used" matches nvidia-smi) then v1; the process query
``_v3`` then ``_v2`` (nvidia-ml-py 13 raises ``NVMLLibraryMismatchError`` for ``_v3`` on
drivers before R510); ``nvmlDeviceGetTemperatureV`` then the deprecated
``nvmlDeviceGetTemperature``; clock-event reasons then the older "throttle reasons" name.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pynvml

from exporter.nvml_errors import ErrorCounts, Kind, kind
from exporter.nvml_records import GpuProcess, GpuReading, MigInstance

MHZ = 1_000_000

# Clock-event reason bits (nvmlClocksEventReason*) -> label value; unknown bits -> "other".
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# Fields NVML does not give on a GPU in MIG mode: they are reported per instance (memory,
# processes) or not at all (utilisation), and the parent says so in gpu_mig_unavailable_field.
MIG_UNAVAILABLE = ("utilization", "memory_utilization", "encoder_utilization", "decoder_utilization",
                   "processes")

_PSTATE_UNKNOWN = 32


class GpuLost(Exception):
    """The GPU fell off the bus during this read."""


class LibraryGone(Exception):
    """NVML stopped working (driver unloaded, library gone)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


# An alternative that exists but does not fit this driver or binding: try the next one.
# NVMLLibraryMismatchError is a plain Exception (nvidia-ml-py 13, ``_v3`` on drivers < R510);
# TypeError: an older binding without the ``version`` argument.
_TRY_NEXT = (pynvml.NVMLLibraryMismatchError, pynvml.NVMLError_ArgumentVersionMismatch, TypeError)


class _Unsupported(Exception):
    """Internal: this alternative of a call does not exist here; try the next one."""


class Fields:
    """Reads fields of one GPU; remembers whether any real error happened."""

    def __init__(self, gpu: str, uuid: str, errors: ErrorCounts) -> None:
        self.gpu, self.uuid, self.errors = gpu, uuid, errors
        self.failed = False

    def get(self, call: str, *args: Any, fallbacks: tuple[tuple[str, tuple[Any, ...]], ...] = (),
            quiet: tuple[type[BaseException], ...] = (), **kwargs: Any) -> Any:
        """``pynvml.<call>(*args)``, else each ``(name, args)`` of ``fallbacks`` in turn;
        None when none works. ``quiet``: errors that mean "absent" for this call only."""
        attempts = ((call, args, kwargs), *((name, fargs, {}) for name, fargs in fallbacks))
        last: BaseException | None = None
        for index, (name, call_args, call_kwargs) in enumerate(attempts):
            final = index == len(attempts) - 1
            try:
                return self._one(name, call_args, call_kwargs)
            except _Unsupported:
                continue
            except (GpuLost, LibraryGone):
                raise
            except quiet:
                return None
            except Exception as exc:  # noqa: BLE001 -- contained to this field, counted below
                last = exc
                if isinstance(exc, _TRY_NEXT) and not final:
                    continue
            break
        if last is not None:
            self.failed = True
            self.errors.record(self.gpu, self.uuid, call, last)
        return None

    @staticmethod
    def _one(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = getattr(pynvml, name, None)
        if function is None:  # an nvidia-ml-py without this binding (dropped or too old)
            raise _Unsupported()
        try:
            return function(*args, **kwargs)
        except pynvml.NVMLError as exc:
            what = kind(exc)
            if what is Kind.UNSUPPORTED:
                raise _Unsupported() from None
            if what is Kind.GPU_LOST:
                raise GpuLost() from exc
            if what is Kind.LIBRARY_GONE:
                raise LibraryGone(exc) from exc
            raise


def read_gpu(index: int, handle: Any, uuid: str, name: str, pci_bus_id: str,
             errors: ErrorCounts) -> GpuReading:
    """Every field of one GPU. Raises :class:`GpuLost` or :class:`LibraryGone` only."""
    f = Fields(str(index), uuid, errors)
    mode = f.get("nvmlDeviceGetMigMode", handle)
    mig = None if mode is None else int(mode[0]) == pynvml.NVML_DEVICE_MIG_ENABLE
    used, total, free, reserved = _memory(f, handle)
    values: dict[str, Any] = {}
    if not mig:
        rates = f.get("nvmlDeviceGetUtilizationRates", handle)
        values.update(
            utilization_ratio=_scaled(_attr(rates, "gpu"), 100),
            memory_utilization_ratio=_scaled(_attr(rates, "memory"), 100),
            encoder_utilization_ratio=_scaled(_first(f.get("nvmlDeviceGetEncoderUtilization", handle)), 100),
            decoder_utilization_ratio=_scaled(_first(f.get("nvmlDeviceGetDecoderUtilization", handle)), 100),
            processes=processes(f, handle),
        )
    reasons = f.get("nvmlDeviceGetCurrentClocksEventReasons", handle,
                    fallbacks=(("nvmlDeviceGetCurrentClocksThrottleReasons", (handle,)),))
    pstate = f.get("nvmlDeviceGetPerformanceState", handle)
    remap = f.get("nvmlDeviceGetRemappedRows", handle)
    reading = GpuReading(
        index=index, uuid=uuid, name=name, pci_bus_id=pci_bus_id,
        memory_used_bytes=used, memory_total_bytes=total, memory_free_bytes=free,
        memory_reserved_bytes=reserved,
        temperature_celsius=_scaled(f.get(
            "nvmlDeviceGetTemperatureV", handle, pynvml.NVML_TEMPERATURE_GPU,
            fallbacks=(("nvmlDeviceGetTemperature", (handle, pynvml.NVML_TEMPERATURE_GPU)),)), 1),
        power_watts=_scaled(f.get("nvmlDeviceGetPowerUsage", handle), 1000),
        power_limit_watts=_scaled(f.get("nvmlDeviceGetEnforcedPowerLimit", handle), 1000),
        energy_joules=_scaled(f.get("nvmlDeviceGetTotalEnergyConsumption", handle), 1000),
        sm_clock_hertz=_times(f.get("nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_SM), MHZ),
        memory_clock_hertz=_times(f.get("nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_MEM), MHZ),
        clock_event_reasons=None if reasons is None else reason_names(int(reasons)),
        performance_state=None if pstate is None or int(pstate) == _PSTATE_UNKNOWN else int(pstate),
        ecc_errors=_ecc(f, handle),
        remapped_rows=() if remap is None else (("correctable", int(remap[0])), ("uncorrectable", int(remap[1]))),
        row_remap_pending=None if remap is None else bool(remap[2]),
        row_remap_failed=None if remap is None else bool(remap[3]),
        pcie_replays=_int(f.get("nvmlDeviceGetPcieReplayCounter", handle)),
        mig_enabled=mig,
        mig_unavailable=MIG_UNAVAILABLE if mig else (),
        mig_instances=_mig_instances(f, handle) if mig else (),
        **values,
    )
    if f.failed:
        reading = replace(reading, readable=False)
    return reading


def reason_names(mask: int) -> tuple[str, ...]:
    """The active clock-event reasons of a bitmask, in bit order; "other" for unknown bits."""
    names = [label for bit, label in CLOCK_EVENT_REASONS.items() if mask & bit]
    if mask & ~sum(CLOCK_EVENT_REASONS):
        names.append("other")
    return tuple(names)


def processes(f: Fields, handle: Any) -> tuple[GpuProcess, ...]:
    """Compute processes with known memory, one per pid (a pid listed twice is summed: a
    duplicate series would fail the whole scrape)."""
    listed = f.get("nvmlDeviceGetComputeRunningProcesses_v3", handle,
                   fallbacks=(("nvmlDeviceGetComputeRunningProcesses_v2", (handle,)),))
    memory: dict[int, int] = {}
    for proc in listed or ():
        used = getattr(proc, "usedGpuMemory", None)
        if used is None:  # NVML_VALUE_NOT_AVAILABLE (Windows WDDM, some MIG setups)
            continue
        memory[int(proc.pid)] = memory.get(int(proc.pid), 0) + int(used)
    return tuple(GpuProcess(pid, process_name(f, pid), used) for pid, used in sorted(memory.items()))


def process_name(f: Fields, pid: int) -> str:
    """The executable's base name; "" when NVML cannot give it (the process ended:
    ``NotFound``, quietly; a name that is not UTF-8: counted)."""
    name = f.get("nvmlSystemGetProcessName", pid, quiet=(pynvml.NVMLError_NotFound,))
    return os.path.basename(text(name)) if name else ""


def text(value: Any) -> str:
    """NVML strings: ``str`` from most nvidia-ml-py releases, ``bytes`` from some calls."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _memory(f: Fields, handle: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """(used, total, free, reserved): v2 where the driver has it (used without the
    driver's reservation), else v1 (used includes it; reserved unknown)."""
    memory = f.get("nvmlDeviceGetMemoryInfo", handle, version=pynvml.nvmlMemory_v2,
                   fallbacks=(("nvmlDeviceGetMemoryInfo", (handle,)),))
    return (_attr(memory, "used"), _attr(memory, "total"), _attr(memory, "free"),
            _attr(memory, "reserved"))


def _ecc(f: Fields, handle: Any) -> tuple[tuple[str, str, int], ...]:
    counts = []
    for error_type, error_code in (("corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                   ("uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
        for counter, counter_code in (("volatile", pynvml.NVML_VOLATILE_ECC),
                                      ("aggregate", pynvml.NVML_AGGREGATE_ECC)):
            value = f.get("nvmlDeviceGetTotalEccErrors", handle, error_code, counter_code)
            if value is not None:
                counts.append((error_type, counter, int(value)))
    return tuple(counts)


def _mig_instances(f: Fields, handle: Any) -> tuple[MigInstance, ...]:
    count = _int(f.get("nvmlDeviceGetMaxMigDeviceCount", handle)) or 0
    instances = []
    for slot in range(count):
        # An empty slot answers NotFound: no instance there, not an error.
        mig = f.get("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot, quiet=(pynvml.NVMLError_NotFound,))
        if mig is None:
            continue
        uuid = f.get("nvmlDeviceGetUUID", mig)
        if uuid is None:
            continue
        used, total, _, _ = _memory(f, mig)
        instances.append(MigInstance(
            uuid=text(uuid),
            gpu_instance=_int(f.get("nvmlDeviceGetGpuInstanceId", mig)),
            compute_instance=_int(f.get("nvmlDeviceGetComputeInstanceId", mig)),
            memory_used_bytes=used, memory_total_bytes=total,
            processes=processes(f, mig),
        ))
    return tuple(instances)


def _first(pair: Any) -> Any:
    """Encoder/decoder utilisation come as ``[percent, sampling period µs]``."""
    return None if pair is None else pair[0]


def _attr(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None) if obj is not None else None
    return int(value) if value is not None else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _scaled(value: Any, divisor: float) -> float | None:
    return None if value is None else float(value) / divisor


def _times(value: Any, factor: int) -> float | None:
    return None if value is None else float(int(value) * factor)

