"""What one NVML read learned, as plain frozen records (no NVML types leak past here).

Values are already in base units (bytes, watts, joules, hertz, ratios 0-1). A field is
``None`` when the GPU does not have it or its read failed this time; the collector then
leaves that one series out instead of inventing a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class MigInstance:
    """One MIG device (a compute instance inside a GPU instance) of a parent GPU."""

    uuid: str
    gpu_instance: int | None
    compute_instance: int | None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment.

    ``readable`` is False when any read of it failed with a real error this time (the
    fields that did answer are still here); ``reached`` is False when nothing of it could
    be read (``lost``: NVML reported it gone, ``GpuIsLost``; else no handle, e.g.
    ``NoPermission``) and only its index and last known uuid are here.
    """

    index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    readable: bool = True
    reached: bool = True
    lost: bool = False
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    encoder_utilization_ratio: float | None = None
    decoder_utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    clock_event_reasons: tuple[str, ...] | None = None
    performance_state: int | None = None
    # (error_type, counter) -> count, e.g. ("uncorrected", "volatile") -> 0
    ecc_errors: tuple[tuple[str, str, int], ...] = ()
    remapped_rows: tuple[tuple[str, int], ...] = ()  # (cause, rows)
    row_remap_pending: bool | None = None
    row_remap_failed: bool | None = None
    pcie_replays: int | None = None
    mig_enabled: bool | None = None
    mig_unavailable: tuple[str, ...] = ()
    mig_instances: tuple[MigInstance, ...] = ()
    processes: tuple[GpuProcess, ...] = field(default=())


@dataclass(frozen=True)
class XidCount:
    """XID critical errors one GPU reported through NVML's event API since start."""

    index: int
    uuid: str
    count: int
    last_xid: int | None


@dataclass(frozen=True)
class NvmlSnapshot:
    """``up``: NVML initialised and every GPU answered in time without a real error.
    ``stale``: the read did not finish before the deadline (a hung call); no GPU readings."""

    up: bool
    driver_version: str = ""
    gpus: tuple[GpuReading, ...] = ()
    stale: bool = False


NVML_DOWN = NvmlSnapshot(up=False)
NVML_STALE = NvmlSnapshot(up=False, stale=True)
