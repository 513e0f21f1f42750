"""The scrape-time collector: Ollama and NVML snapshots in, metric families out.

Every family is built from its :class:`~proxy.metrics.MetricSpec` in
:mod:`exporter.metrics` (name, help, labels, type, unit), so the exposition cannot drift
from what dashboards and alerts import. Series exist only for what the latest snapshot
saw: a model that was unloaded, or everything while Ollama is down, simply has no series
(no stale values that look alive), and a field a GPU does not support is left out for that
GPU rather than reported as 0.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import metrics as em
from exporter.nvml_records import NVML_DOWN, GpuProcess, GpuReading, NvmlSnapshot, XidCount
from exporter.ollama_fetch import ENDPOINTS, OllamaSnapshot
from exporter.runners import LoadedModelRef, RunnerMapper
from proxy import __version__
from proxy.common.metric_spec import MetricSpec

log = logging.getLogger(__name__)


class Families:
    """The families of one scrape, created on first use from their specs."""

    def __init__(self) -> None:
        self._by_spec: dict[MetricSpec, Metric] = {}

    def add(self, spec: MetricSpec, value: float | None, *labels: str, created: float | None = None) -> None:
        """One sample; ``None`` (unknown, unsupported) adds nothing."""
        if value is None:
            return
        family = self._by_spec.get(spec)
        if family is None:
            family = self._by_spec[spec] = _family(spec)
        if isinstance(family, CounterMetricFamily):
            family.add_metric(list(labels), value, created=created)
        else:
            family.add_metric(list(labels), value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_spec.values())


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.base, spec.help, labels=spec.labels, unit=spec.unit)
    if spec.type == "gauge":
        return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels, unit=spec.unit)
    raise ValueError(f"{spec.name}: the exporter builds counters and gauges only")


@dataclass(frozen=True)
class NvmlCounters:
    """The cumulative GPU figures kept outside a snapshot: they survive a stale read.
    ``errors``: (gpu, uuid, call, error) -> count."""

    errors: Callable[[], dict[tuple[str, str, str, str], int]]
    timeouts: Callable[[], int]
    xids: Callable[[], tuple[XidCount, ...]] = tuple


class ExporterCollector(Collector):
    """Reads Ollama and NVML side by side at each scrape.

    ``ollama`` and ``nvml`` are the (cached) snapshot getters, or None when that source
    is switched off (then its families, ``…_up`` included, are absent). ``runners`` joins
    the two into ``ollama_runner_info`` when both are on.
    """

    def __init__(self, ollama: Callable[[], OllamaSnapshot] | None,
                 ollama_errors: Callable[[], dict[str, int]],
                 nvml: Callable[[], NvmlSnapshot] | None,
                 wall_clock: Callable[[], float] = time.time,
                 nvml_counters: NvmlCounters | None = None,
                 runners: RunnerMapper | None = None) -> None:
        self._ollama = ollama
        self._ollama_errors = ollama_errors
        self._nvml = nvml
        self._nvml_counters = nvml_counters
        self._runners = runners
        self._wall_clock = wall_clock
        self._created = wall_clock()
        # Ollama is fetched on this thread while NVML is read on the scrape's own thread,
        # so a scrape takes max(Ollama, NVML) rather than the sum.
        self._side = ThreadPoolExecutor(4, thread_name_prefix="scrape")

    def describe(self) -> Iterable[Metric]:
        """Every family this collector can yield (empty): the registry maps names to
        collectors from it, which ``/metrics?name[]=…`` filters rely on."""
        return [_family(spec) for spec in em.ALL]

    def collect(self) -> Iterator[Metric]:
        families = Families()
        pending = self._side.submit(self._ollama) if self._ollama is not None else None
        gpus: NvmlSnapshot | None = None
        if self._nvml is not None:
            gpus = self._guarded(self._nvml, NVML_DOWN, "reading NVML")
            self._add_nvml(families, gpus)
        snapshot: OllamaSnapshot | None = None
        if pending is not None:
            try:
                snapshot = pending.result()
            except Exception:  # a bug, not Ollama's state: keep serving the rest
                log.exception("collecting Ollama metrics failed")
                snapshot = OllamaSnapshot(0.0, None, None, None, {"exporter": "internal error"})
            self._add_ollama(families, snapshot)
        if gpus is not None and snapshot is not None and snapshot.loaded and self._runners is not None:
            self._add_runners(families, gpus, snapshot)
        families.add(em.EXPORTER_BUILD_INFO, 1, __version__)
        yield from families

    def close(self) -> None:
        self._side.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _guarded(read: Callable[[], NvmlSnapshot], fallback: NvmlSnapshot, what: str) -> NvmlSnapshot:
        try:
            return read()
        except Exception:
            log.exception("%s failed", what)
            return fallback

    def _add_ollama(self, f: Families, snap: OllamaSnapshot) -> None:
        f.add(em.OLLAMA_UP, 1 if snap.up else 0)
        f.add(em.OLLAMA_SCRAPE_DURATION, snap.duration)
        errors = self._ollama_errors()
        for endpoint in ENDPOINTS:
            f.add(em.OLLAMA_SCRAPE_ERRORS, errors.get(endpoint, 0), endpoint, created=self._created)
        if snap.version is not None:
            f.add(em.OLLAMA_VERSION_INFO, 1, snap.version)
        if snap.installed is not None:
            f.add(em.OLLAMA_MODELS_INSTALLED, len(snap.installed))
            for m in snap.installed:
                f.add(em.OLLAMA_MODEL_SIZE, m.size, m.name)
                f.add(em.OLLAMA_MODEL_INFO, 1, m.name, m.family, m.parameter_size,
                      m.quantization_level, m.format)
        if snap.loaded is not None:
            now = self._wall_clock()
            f.add(em.OLLAMA_MODELS_LOADED, len(snap.loaded))
            for m in snap.loaded:
                f.add(em.OLLAMA_MODEL_LOADED, 1, m.name)
                f.add(em.OLLAMA_MODEL_LOADED_SIZE, m.size, m.name)
                f.add(em.OLLAMA_MODEL_VRAM, m.size_vram, m.name)
                f.add(em.OLLAMA_MODEL_VRAM_RATIO, m.vram_ratio, m.name)
                f.add(em.OLLAMA_MODEL_EXPIRES_IN,
                      None if m.expires_at is None else m.expires_at - now, m.name)
                f.add(em.OLLAMA_MODEL_CONTEXT_LENGTH, m.context_length, m.name)

    def _add_nvml(self, f: Families, snap: NvmlSnapshot) -> None:
        f.add(em.NVML_UP, 1 if snap.up else 0)
        f.add(em.NVML_STALE, 1 if snap.stale else 0)
        for gpu in snap.gpus:
            _add_gpu(f, gpu, snap.driver_version)
        counters = self._nvml_counters
        if counters is None:
            return
        f.add(em.NVML_READ_TIMEOUTS, counters.timeouts(), created=self._created)
        try:
            errors, xids = counters.errors(), counters.xids()
        except Exception:  # a bug: the snapshot's series are still worth serving
            log.exception("reading NVML counters failed")
            return
        for (gpu_index, uuid, call, error), count in sorted(errors.items()):
            f.add(em.NVML_ERRORS, count, gpu_index, uuid, call, error, created=self._created)
        for xid in xids:
            ids = (str(xid.index), xid.uuid)
            f.add(em.GPU_XID_ERRORS, xid.count, *ids, created=self._created)
            f.add(em.GPU_LAST_XID, xid.last_xid, *ids)

    def _add_runners(self, f: Families, gpus: NvmlSnapshot, snap: OllamaSnapshot) -> None:
        assert self._runners is not None and snap.loaded is not None
        loaded = [LoadedModelRef(m.name, m.digest, m.size_vram) for m in snap.loaded]
        try:
            runners = self._runners.map(gpus.gpus, loaded)
        except Exception:  # a bug: the rest of the scrape stands
            log.exception("mapping Ollama runners to models failed")
            return
        for runner in runners:
            f.add(em.OLLAMA_RUNNER_INFO, 1, str(runner.pid), runner.model, runner.gpu, runner.uuid)


def _add_gpu(f: Families, gpu: GpuReading, driver_version: str) -> None:
    ids = (str(gpu.index), gpu.uuid)
    f.add(em.GPU_UP, 1 if gpu.readable else 0, *ids)
    if not gpu.reached:
        return  # only its gpu_up 0 (and its error count) until it answers again
    f.add(em.GPU_INFO, 1, *ids, gpu.name, driver_version, gpu.pci_bus_id)
    f.add(em.GPU_MEMORY_USED, gpu.memory_used_bytes, *ids)
    f.add(em.GPU_MEMORY_TOTAL, gpu.memory_total_bytes, *ids)
    f.add(em.GPU_MEMORY_FREE, gpu.memory_free_bytes, *ids)
    f.add(em.GPU_UTILIZATION, gpu.utilization_ratio, *ids)
    f.add(em.GPU_MEMORY_UTILIZATION, gpu.memory_utilization_ratio, *ids)
    f.add(em.GPU_TEMPERATURE, gpu.temperature_celsius, *ids)
    f.add(em.GPU_POWER, gpu.power_watts, *ids)
    f.add(em.GPU_POWER_LIMIT, gpu.power_limit_watts, *ids)
    f.add(em.GPU_ENERGY, gpu.energy_joules, *ids)
    _add_processes(f, em.GPU_PROCESS_MEMORY, gpu.processes, ids)
    f.add(em.GPU_MEMORY_RESERVED, gpu.memory_reserved_bytes, *ids)
    f.add(em.GPU_ENCODER_UTILIZATION, gpu.encoder_utilization_ratio, *ids)
    f.add(em.GPU_DECODER_UTILIZATION, gpu.decoder_utilization_ratio, *ids)
    f.add(em.GPU_SM_CLOCK, gpu.sm_clock_hertz, *ids)
    f.add(em.GPU_MEMORY_CLOCK, gpu.memory_clock_hertz, *ids)
    for reason in gpu.clock_event_reasons or ():
        f.add(em.GPU_CLOCK_EVENT_REASON, 1, *ids, reason)
    f.add(em.GPU_PERFORMANCE_STATE, gpu.performance_state, *ids)
    for error_type, counter, count in gpu.ecc_errors:
        f.add(em.GPU_ECC_ERRORS, count, *ids, error_type, counter)
    for cause, rows in gpu.remapped_rows:
        f.add(em.GPU_REMAPPED_ROWS, rows, *ids, cause)
    f.add(em.GPU_ROW_REMAP_PENDING, _flag(gpu.row_remap_pending), *ids)
    f.add(em.GPU_ROW_REMAP_FAILED, _flag(gpu.row_remap_failed), *ids)
    f.add(em.GPU_PCIE_REPLAYS, gpu.pcie_replays, *ids)
    f.add(em.GPU_MIG_MODE, _flag(gpu.mig_enabled), *ids)
    for field_name in gpu.mig_unavailable:
        f.add(em.GPU_MIG_UNAVAILABLE, 1, *ids, field_name)
    seen: set[tuple[str, str]] = set()
    for inst in gpu.mig_instances:
        mig_ids = (*ids, _label(inst.gpu_instance), _label(inst.compute_instance))
        if mig_ids[2:] in seen:
            continue  # a duplicate series would fail the whole scrape
        seen.add(mig_ids[2:])
        f.add(em.GPU_MIG_INFO, 1, *mig_ids, inst.uuid)
        f.add(em.GPU_MIG_MEMORY_USED, inst.memory_used_bytes, *mig_ids)
        f.add(em.GPU_MIG_MEMORY_TOTAL, inst.memory_total_bytes, *mig_ids)
        _add_processes(f, em.GPU_MIG_PROCESS_MEMORY, inst.processes, mig_ids)


def _add_processes(f: Families, spec: MetricSpec, processes: Iterable[GpuProcess], ids: tuple[str, ...]) -> None:
    for proc in processes:
        f.add(spec, proc.memory_bytes, *ids, str(proc.pid), proc.name)


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _label(value: int | None) -> str:
    return "" if value is None else str(value)
