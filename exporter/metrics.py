"""Every metric the exporter exposes, in one place (see :mod:`proxy.metrics` for why).

The exporter builds its samples at scrape time from these specs, so a name used by a
dashboard or an alert exists only if it is listed here.
"""

from __future__ import annotations

from proxy.common.metric_spec import MetricSpec

# --- Ollama ----------------------------------------------------------------------------
OLLAMA_UP = MetricSpec("ollama_up", "gauge", "1 if the last scrape of Ollama's API succeeded, else 0.")
OLLAMA_VERSION_INFO = MetricSpec(
    "ollama_version_info", "gauge", "Always 1; Ollama's version in a label.", ("version",))
OLLAMA_SCRAPE_DURATION = MetricSpec(
    "ollama_scrape_duration_seconds", "gauge",
    "Time the last collection of Ollama's API took.", unit="seconds")
OLLAMA_SCRAPE_ERRORS = MetricSpec(
    "ollama_scrape_errors_total", "counter",
    "Failed fetches of Ollama's API, by endpoint (version, tags, ps).", ("endpoint",))
OLLAMA_MODELS_INSTALLED = MetricSpec(
    "ollama_models_installed", "gauge", "Models installed (GET /api/tags).")
OLLAMA_MODEL_SIZE = MetricSpec(
    "ollama_model_size_bytes", "gauge", "Size of an installed model on disk.", ("model",), unit="bytes")
OLLAMA_MODEL_INFO = MetricSpec(
    "ollama_model_info", "gauge", "Always 1 per installed model; its identity in labels.",
    ("model", "family", "parameter_size", "quantization_level", "format"))
OLLAMA_MODEL_LOADED = MetricSpec(
    "ollama_model_loaded", "gauge", "1 for each model loaded in memory (GET /api/ps).", ("model",))
OLLAMA_MODEL_LOADED_SIZE = MetricSpec(
    "ollama_model_loaded_size_bytes", "gauge", "Memory a loaded model takes, GPU and CPU together.",
    ("model",), unit="bytes")
OLLAMA_MODEL_VRAM = MetricSpec(
    "ollama_model_vram_bytes", "gauge", "Part of a loaded model held in GPU memory.", ("model",), unit="bytes")
OLLAMA_MODEL_VRAM_RATIO = MetricSpec(
    "ollama_model_vram_ratio", "gauge",
    "size_vram / size of a loaded model (0-1); below 1 the model spilled to the CPU and runs slowly.",
    ("model",))
OLLAMA_MODEL_EXPIRES_IN = MetricSpec(
    "ollama_model_expires_in_seconds", "gauge",
    "Seconds until Ollama unloads the model (keep_alive); negative when overdue.", ("model",), unit="seconds")
OLLAMA_MODEL_CONTEXT_LENGTH = MetricSpec(
    "ollama_model_context_length", "gauge", "Context length the model was loaded with (tokens).", ("model",))
OLLAMA_MODELS_LOADED = MetricSpec("ollama_models_loaded", "gauge", "Models loaded in memory.")

# --- NVIDIA GPUs (NVML) --------------------------------------------------------------------
GPU_LABELS = ("gpu", "uuid")
NVML_UP = MetricSpec("nvml_up", "gauge", "1 if NVML initialised and the last GPU read succeeded, else 0.")
GPU_INFO = MetricSpec(
    "gpu_info", "gauge", "Always 1 per GPU; its identity in labels.", ("gpu", "uuid", "name", "driver_version"))
GPU_MEMORY_USED = MetricSpec("gpu_memory_used_bytes", "gauge", "GPU memory in use.", GPU_LABELS, unit="bytes")
GPU_MEMORY_TOTAL = MetricSpec("gpu_memory_total_bytes", "gauge", "GPU memory in all.", GPU_LABELS, unit="bytes")
GPU_MEMORY_FREE = MetricSpec("gpu_memory_free_bytes", "gauge", "GPU memory free.", GPU_LABELS, unit="bytes")
GPU_UTILIZATION = MetricSpec(
    "gpu_utilization_ratio", "gauge", "Share of the last sample period a kernel ran (0-1).", GPU_LABELS)
GPU_MEMORY_UTILIZATION = MetricSpec(
    "gpu_memory_utilization_ratio", "gauge",
    "Share of the last sample period device memory was read or written (0-1).", GPU_LABELS)
GPU_TEMPERATURE = MetricSpec(
    "gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU_LABELS, unit="celsius")
GPU_POWER = MetricSpec("gpu_power_watts", "gauge", "Power draw.", GPU_LABELS, unit="watts")
GPU_POWER_LIMIT = MetricSpec(
    "gpu_power_limit_watts", "gauge", "Enforced power limit.", GPU_LABELS, unit="watts")
GPU_ENERGY = MetricSpec(
    "gpu_energy_joules_total", "counter", "Energy used since the driver was loaded.", GPU_LABELS, unit="joules")
GPU_PROCESS_MEMORY = MetricSpec(
    "gpu_process_memory_bytes", "gauge", "GPU memory used by one compute process.",
    ("gpu", "uuid", "pid", "process"), unit="bytes")

EXPORTER_BUILD_INFO = MetricSpec(
    "ollama_exporter_build_info", "gauge", "Always 1; the exporter's version in a label.", ("version",))

ALL: tuple[MetricSpec, ...] = (
    OLLAMA_UP, OLLAMA_VERSION_INFO, OLLAMA_SCRAPE_DURATION, OLLAMA_SCRAPE_ERRORS,
    OLLAMA_MODELS_INSTALLED, OLLAMA_MODEL_SIZE, OLLAMA_MODEL_INFO, OLLAMA_MODEL_LOADED,
    OLLAMA_MODEL_LOADED_SIZE, OLLAMA_MODEL_VRAM, OLLAMA_MODEL_VRAM_RATIO, OLLAMA_MODEL_EXPIRES_IN,
    OLLAMA_MODEL_CONTEXT_LENGTH, OLLAMA_MODELS_LOADED,
    NVML_UP, GPU_INFO, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_MEMORY_FREE, GPU_UTILIZATION,
    GPU_MEMORY_UTILIZATION, GPU_TEMPERATURE, GPU_POWER, GPU_POWER_LIMIT, GPU_ENERGY,
    GPU_PROCESS_MEMORY, EXPORTER_BUILD_INFO,
)
