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
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import metrics as em
from exporter.nvml_reader import NVML_DOWN, GpuReading, NvmlSnapshot
from exporter.ollama_fetch import ENDPOINTS, OllamaSnapshot
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


class ExporterCollector(Collector):
    """Reads Ollama and NVML side by side at each scrape.

    ``ollama`` and ``nvml`` are the (cached) snapshot getters, or None when that source
    is switched off (then its families, ``…_up`` included, are absent).
    """

    def __init__(self, ollama: Callable[[], OllamaSnapshot] | None,
                 ollama_errors: Callable[[], dict[str, int]],
                 nvml: Callable[[], NvmlSnapshot] | None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._ollama = ollama
        self._ollama_errors = ollama_errors
        self._nvml = nvml
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
        if self._nvml is not None:
            self._add_nvml(families, self._guarded(self._nvml, NVML_DOWN, "reading NVML"))
        if pending is not None:
            try:
                snapshot = pending.result()
            except Exception:  # a bug, not Ollama's state: keep serving the rest
                log.exception("collecting Ollama metrics failed")
                snapshot = OllamaSnapshot(0.0, None, None, None, {"exporter": "internal error"})
            self._add_ollama(families, snapshot)
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

    @staticmethod
    def _add_nvml(f: Families, snap: NvmlSnapshot) -> None:
        f.add(em.NVML_UP, 1 if snap.up else 0)
        for gpu in snap.gpus:
            _add_gpu(f, gpu, snap.driver_version)


def _add_gpu(f: Families, gpu: GpuReading, driver_version: str) -> None:
    ids = (str(gpu.index), gpu.uuid)
    f.add(em.GPU_INFO, 1, *ids, gpu.name, driver_version)
    f.add(em.GPU_MEMORY_USED, gpu.memory_used_bytes, *ids)
    f.add(em.GPU_MEMORY_TOTAL, gpu.memory_total_bytes, *ids)
    f.add(em.GPU_MEMORY_FREE, gpu.memory_free_bytes, *ids)
    f.add(em.GPU_UTILIZATION, gpu.utilization_ratio, *ids)
    f.add(em.GPU_MEMORY_UTILIZATION, gpu.memory_utilization_ratio, *ids)
    f.add(em.GPU_TEMPERATURE, gpu.temperature_celsius, *ids)
    f.add(em.GPU_POWER, gpu.power_watts, *ids)
    f.add(em.GPU_POWER_LIMIT, gpu.power_limit_watts, *ids)
    f.add(em.GPU_ENERGY, gpu.energy_joules, *ids)
    for proc in gpu.processes:
        f.add(em.GPU_PROCESS_MEMORY, proc.memory_bytes, *ids, str(proc.pid), proc.name)
