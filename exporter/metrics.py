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
    "gpu_info", "gauge", "Always 1 per GPU; its identity in labels.",
    ("gpu", "uuid", "name", "driver_version", "pci_bus_id"))
GPU_UP = MetricSpec(
    "gpu_up", "gauge",
    "1 if every NVML read of this GPU succeeded (or the GPU lacks the field), 0 if one failed or the GPU is lost.",
    GPU_LABELS)
NVML_ERRORS = MetricSpec(
    "gpu_nvml_errors_total", "counter",
    "NVML calls that failed for a reason other than 'not supported', by call and error.",
    ("gpu", "uuid", "call", "error"))
NVML_READ_TIMEOUTS = MetricSpec(
    "nvml_read_timeouts_total", "counter",
    "NVML reads abandoned at their deadline (a hung driver call); GPU series are absent meanwhile.")
NVML_STALE = MetricSpec(
    "nvml_stale", "gauge", "1 while the last NVML read did not finish before its deadline, else 0.")
GPU_MEMORY_USED = MetricSpec(
    "gpu_memory_used_bytes", "gauge", "GPU memory in use, without the driver's reservation where NVML tells it apart.",
    GPU_LABELS, unit="bytes")
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
GPU_MEMORY_RESERVED = MetricSpec(
    "gpu_memory_reserved_bytes", "gauge",
    "GPU memory the driver reserves (not in gpu_memory_used_bytes); NVML memory v2 only.", GPU_LABELS, unit="bytes")
GPU_ENCODER_UTILIZATION = MetricSpec(
    "gpu_encoder_utilization_ratio", "gauge", "Share of the sample period the video encoder was busy (0-1).",
    GPU_LABELS)
GPU_DECODER_UTILIZATION = MetricSpec(
    "gpu_decoder_utilization_ratio", "gauge", "Share of the sample period the video decoder was busy (0-1).",
    GPU_LABELS)
GPU_SM_CLOCK = MetricSpec("gpu_sm_clock_hertz", "gauge", "Current SM clock.", GPU_LABELS, unit="hertz")
GPU_MEMORY_CLOCK = MetricSpec("gpu_memory_clock_hertz", "gauge", "Current memory clock.", GPU_LABELS, unit="hertz")
GPU_CLOCK_EVENT_REASON = MetricSpec(
    "gpu_clock_event_reason", "gauge",
    "1 for each clock-event (throttle) reason active now; inactive reasons have no series.",
    ("gpu", "uuid", "reason"))
GPU_PERFORMANCE_STATE = MetricSpec(
    "gpu_performance_state", "gauge", "Performance state: 0 (P0, fastest) to 15 (P15, slowest).", GPU_LABELS)
GPU_ECC_ERRORS = MetricSpec(
    "gpu_ecc_errors_total", "counter",
    "ECC memory errors: volatile (since the driver loaded) and aggregate (lifetime), corrected and uncorrected.",
    ("gpu", "uuid", "error_type", "counter"))
GPU_REMAPPED_ROWS = MetricSpec(
    "gpu_remapped_rows_total", "counter", "Memory rows remapped, by the kind of error that caused it.",
    ("gpu", "uuid", "cause"))
GPU_ROW_REMAP_PENDING = MetricSpec(
    "gpu_row_remap_pending", "gauge", "1 when a row remap waits for a GPU reset to take effect.", GPU_LABELS)
GPU_ROW_REMAP_FAILED = MetricSpec(
    "gpu_row_remap_failed", "gauge", "1 when a row remap failed: the GPU needs service.", GPU_LABELS)
GPU_PCIE_REPLAYS = MetricSpec(
    "gpu_pcie_replays_total", "counter", "PCIe replays (link-level retransmissions).", GPU_LABELS)
GPU_XID_ERRORS = MetricSpec(
    "gpu_xid_errors_total", "counter", "XID critical errors reported through NVML's event API since start.",
    GPU_LABELS)
GPU_LAST_XID = MetricSpec(
    "gpu_last_xid", "gauge", "Code of the last XID critical error seen since start.", GPU_LABELS)
GPU_MIG_MODE = MetricSpec("gpu_mig_mode", "gauge", "1 when MIG is enabled on this GPU, else 0.", GPU_LABELS)
GPU_MIG_UNAVAILABLE = MetricSpec(
    "gpu_mig_unavailable_field", "gauge",
    "1 for each field MIG mode makes unavailable on the parent GPU (reported per instance or not at all).",
    ("gpu", "uuid", "field"))
MIG_LABELS = ("gpu", "uuid", "gpu_instance", "compute_instance")
GPU_MIG_INFO = MetricSpec(
    "gpu_mig_instance_info", "gauge", "Always 1 per MIG device; its own UUID in a label.",
    (*MIG_LABELS, "mig_uuid"))
GPU_MIG_MEMORY_USED = MetricSpec(
    "gpu_mig_memory_used_bytes", "gauge", "Memory in use in one MIG instance.", MIG_LABELS, unit="bytes")
GPU_MIG_MEMORY_TOTAL = MetricSpec(
    "gpu_mig_memory_total_bytes", "gauge", "Memory of one MIG instance.", MIG_LABELS, unit="bytes")
GPU_MIG_PROCESS_MEMORY = MetricSpec(
    "gpu_mig_process_memory_bytes", "gauge", "GPU memory used by one compute process in one MIG instance.",
    (*MIG_LABELS, "pid", "process"), unit="bytes")
OLLAMA_RUNNER_INFO = MetricSpec(
    "ollama_runner_info", "gauge", "Always 1 per (Ollama runner process, GPU it uses): the model it serves.",
    ("pid", "model", "gpu", "uuid"))
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
    GPU_PROCESS_MEMORY, GPU_UP, NVML_ERRORS, NVML_READ_TIMEOUTS, NVML_STALE, GPU_MEMORY_RESERVED,
    GPU_ENCODER_UTILIZATION, GPU_DECODER_UTILIZATION, GPU_SM_CLOCK, GPU_MEMORY_CLOCK, GPU_CLOCK_EVENT_REASON,
    GPU_PERFORMANCE_STATE, GPU_ECC_ERRORS, GPU_REMAPPED_ROWS, GPU_ROW_REMAP_PENDING, GPU_ROW_REMAP_FAILED,
    GPU_PCIE_REPLAYS, GPU_XID_ERRORS, GPU_LAST_XID, GPU_MIG_MODE, GPU_MIG_UNAVAILABLE, GPU_MIG_INFO,
    GPU_MIG_MEMORY_USED, GPU_MIG_MEMORY_TOTAL, GPU_MIG_PROCESS_MEMORY, OLLAMA_RUNNER_INFO,
    EXPORTER_BUILD_INFO,
)
