"""Ollama and GPUs: which models are loaded, where their weights live, how the GPUs fare.

Variables: ``exporter`` (the exporter's instances: every panel but the two cold-load ones,
which read the proxy) and ``model`` (the models the exporter lists: every per-model panel,
the proxy's cold loads too). GPUs are shared by every loaded model, so the GPU panels say
they are not filtered by model. The proxy's routes and instances are not shown here.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import (DEFAULT, HOST_COMPLETION_TOKENS_RATE, HOST_ENERGY_PER_TOKEN, HOST_GPU_POWER,
                              MonitoringConfig)

GPU_LEGEND = "GPU {{gpu}} ({{instance}})"
PER_GPU = "NVML reports per GPU and process, and every loaded model shares the GPUs."
PER_EXPORTER = "the exporter reads Ollama and NVML for every model at once."


def gpu(panel):
    """A GPU panel: shown under the model variable, which no GPU series can honour."""
    return c.unfiltered(panel, PER_GPU, "Model")


def build(config: MonitoringConfig = DEFAULT) -> g.Dashboard:
    s = c.Selectors(config)
    INST = s.exporter_instance
    MODEL = f'{INST}, model=~"$model"'
    LOAD_FILTER = f'{s.proxy}, model=~"$model"'
    lay = c.Layout()
    lay.row(
        "Ollama",
        (c.unfiltered(c.stat("Ollama up", (f"{em.OLLAMA_UP.name}{{{INST}}}", "{{instance}}"), "none",
                             steps=c.UP_STEPS, mappings=c.UP_DOWN),
                      PER_EXPORTER, "Model"), 6),
        # The selected models; 0 (not "no data") while the exporter reports and none matches.
        (c.stat("Models loaded", (f"count({em.OLLAMA_MODEL_LOADED.name}{{{MODEL}}})\n"
                                  f"or 0 * sum({em.OLLAMA_MODELS_LOADED.name}{{{INST}}})", "loaded"), "short"), 6),
        (c.stat("Models installed", (f"count({em.OLLAMA_MODEL_INFO.name}{{{MODEL}}})\n"
                                     f"or 0 * sum({em.OLLAMA_MODELS_INSTALLED.name}{{{INST}}})", "installed"),
                "short"), 6),
        (c.unfiltered(c.stat("NVML up", (f"{em.NVML_UP.name}{{{INST}}}", "{{instance}}"), "none", steps=c.UP_STEPS,
                             mappings=c.UP_DOWN, no_value="NVML off",
                             description="0 on a CPU-only host, or when the driver is missing; no value when "
                                         "the exporter runs with --no-nvml."),
                      PER_EXPORTER, "Model"), 6),
        height=4,
    )
    lay.row(
        "Loaded models",
        (c.table("Loaded models", [
            (f"{em.OLLAMA_MODEL_LOADED_SIZE.name}{{{MODEL}}}", "In memory"),
            (f"{em.OLLAMA_MODEL_VRAM.name}{{{MODEL}}}", "In VRAM"),
            (f"{em.OLLAMA_MODEL_VRAM_RATIO.name}{{{MODEL}}}", "VRAM ratio"),
            (f"{em.OLLAMA_MODEL_EXPIRES_IN.name}{{{MODEL}}}", "Unloads in"),
        ], "bytes", units={"VRAM ratio": "percentunit", "Unloads in": "s"}, sort_by="In memory",
            description="A VRAM ratio below 100 % means part of the model runs on the CPU."), 24),
    )
    lay.row(
        "VRAM and expiry",
        (c.timeseries("VRAM per model", (f"{em.OLLAMA_MODEL_VRAM.name}{{{MODEL}}}", "{{model}}"),
                      "bytes"), 8),
        (c.timeseries("VRAM ratio (below 100 % = spilled to CPU)",
                      (f"{em.OLLAMA_MODEL_VRAM_RATIO.name}{{{MODEL}}}", "{{model}}"), "percentunit",
                      steps=c.thresholds(("red", None), ("green", 1)), threshold_lines=True, max_=1), 8),
        (c.timeseries("Time until unload", (f"{em.OLLAMA_MODEL_EXPIRES_IN.name}{{{MODEL}}}", "{{model}}"),
                      "s"), 8),
    )
    load = pm.UPSTREAM_LOAD_DURATION.name
    lay.row(
        "Cold loads",
        (c.timeseries("Upstream load duration p95 by model",
                      (c.quantile(0.95, load, LOAD_FILTER, "model"), "{{model}}"), "s",
                      description="Ollama's load_duration as the proxy saw it: long = the model was loaded cold."), 12),
        (c.timeseries("Cold loads/s (load over 1 s)",
                      (f'sum by (model) (rate({load}_bucket{{{LOAD_FILTER}, le="+Inf"}}[{c.RATE}]))\n'
                       f'- sum by (model) (rate({load}_bucket{{{LOAD_FILTER}, le="1.0"}}[{c.RATE}]))', "{{model}}"),
                      "ops"), 12),
    )
    used, total = em.GPU_MEMORY_USED.name, em.GPU_MEMORY_TOTAL.name
    limits = config.thresholds  # the alerts' thresholds, drawn where the alert looks
    lay.row(
        "GPUs",
        (gpu(c.gauge("GPU memory used", (f"{used}{{{INST}}} / {total}{{{INST}}}", GPU_LEGEND), "percentunit",
                     c.thresholds(("green", None), ("orange", round(limits.gpu_memory_ratio - 0.05, 4)),
                                  ("red", limits.gpu_memory_ratio)),
                     no_value=c.NO_GPU)), 6),
        (gpu(c.timeseries("GPU memory used / total", [
            (f"{used}{{{INST}}}", "used " + GPU_LEGEND), (f"{total}{{{INST}}}", "total " + GPU_LEGEND),
        ], "bytes", no_value=c.NO_GPU)), 6),
        (gpu(c.timeseries("GPU utilisation", (f"{em.GPU_UTILIZATION.name}{{{INST}}}", GPU_LEGEND),
                          "percentunit", max_=1, no_value=c.NO_GPU)), 6),
        (gpu(c.timeseries("GPU power", [
            (f"{em.GPU_POWER.name}{{{INST}}}", "draw " + GPU_LEGEND),
            (f"{em.GPU_POWER_LIMIT.name}{{{INST}}}", "limit " + GPU_LEGEND),
        ], "watt", no_value=c.NO_GPU,
            description="GPUs that do not report power (many consumer cards) have no line.")), 6),
    )
    lay.row(
        "GPU health",
        (gpu(c.timeseries("GPU temperature", (f"{em.GPU_TEMPERATURE.name}{{{INST}}}", GPU_LEGEND), "celsius",
                          steps=c.thresholds(("green", None), ("orange", limits.gpu_temperature_celsius - 5),
                                             ("red", limits.gpu_temperature_celsius)),
                          threshold_lines=True, no_value=c.NO_GPU)), 12),
        (gpu(c.timeseries("VRAM per process", (f"{em.GPU_PROCESS_MEMORY.name}{{{INST}}}",
                                               "{{process}} ({{pid}}) on GPU {{gpu}}"), "bytes",
                          no_value=c.NO_GPU)), 12),
    )
    UUID_LEGEND = "GPU {{gpu}} {{uuid}} ({{instance}})"
    lay.row(
        "GPU errors, clocks and accounting",
        (gpu(c.timeseries("GPUs that cannot be read", [
            (f"{em.GPU_UP.name}{{{INST}}}", "up " + UUID_LEGEND),
            (f"{em.NVML_STALE.name}{{{INST}}}", "NVML stale ({{instance}})"),
            (f"increase({em.NVML_READ_TIMEOUTS.name}{{{INST}}}[{c.RATE}])", "NVML read timeouts ({{instance}})"),
        ], "short", no_value=c.NO_GPU,
            description=f"gpu_up 0: a real NVML error (not 'not supported') or a lost GPU; which call fails with "
                        f"which error is in {em.NVML_ERRORS.name}{{uuid=...}} (no series while all is well, so "
                        f"not drawn here). NVML stale 1: a hung driver call, GPU series absent meanwhile. "
                        f"Find the card by uuid: the NVML index is not the CUDA index.")), 6),
        (gpu(c.timeseries("Clocks and throttle reasons", [
            (f"{em.GPU_SM_CLOCK.name}{{{INST}}}", "SM " + GPU_LEGEND),
            (f"{em.GPU_CLOCK_EVENT_REASON.name}{{{INST}}} * on (instance, uuid) group_left "
             f"{em.GPU_SM_CLOCK.name}{{{INST}}}", "{{reason}} " + GPU_LEGEND),
        ], "hertz", no_value=c.NO_GPU,
            description="The SM clock, and one line at the clock for each active clock-event (throttle) reason: "
                        "sw_power_cap and gpu_idle are normal; hw_slowdown, *_thermal_slowdown and "
                        "hw_power_brake_slowdown cost tokens/s.")), 6),
        (gpu(c.timeseries("ECC, XID and row remapping", [
            (f"increase({em.GPU_XID_ERRORS.name}{{{INST}}}[{c.RATE}])", "XID errors " + GPU_LEGEND),
            (f'increase({em.GPU_ECC_ERRORS.name}{{{INST}, error_type="uncorrected", counter="volatile"}}[{c.RATE}])',
             "uncorrected ECC " + GPU_LEGEND),
            (f"{em.GPU_ROW_REMAP_PENDING.name}{{{INST}}} + 2 * {em.GPU_ROW_REMAP_FAILED.name}{{{INST}}}",
             "row remap (1 pending, 2+ failed) " + GPU_LEGEND),
        ], "short", no_value=c.NO_GPU,
            description=f"Absent on GPUs without ECC or XID events (most GeForce cards). The last XID code is "
                        f"{em.GPU_LAST_XID.name} (no series until one arrives).")), 6),
        (gpu(c.timeseries("VRAM Ollama accounts for vs in use", [
            (f"sum by (instance) ({em.OLLAMA_MODEL_VRAM.name}{{{INST}}})", "Ollama's models ({{instance}})"),
            (f"sum by (instance) ({em.GPU_MEMORY_USED.name}{{{INST}}})", "in use ({{instance}})"),
            (f"sum by (instance) ({em.GPU_MEMORY_FREE.name}{{{INST}}})", "free ({{instance}})"),
        ], "bytes", no_value=c.NO_GPU,
            description="The gap between 'in use' and Ollama's models is memory held by CUDA contexts or other "
                        "processes. A model spilled to the CPU (VRAM ratio < 100 %) while 'free' is larger than "
                        "the spilled part points at configuration (num_gpu, OLLAMA_GPU_OVERHEAD, context), "
                        "not a full GPU.")), 6),
    )
    P = s.proxy
    PER_SERVER = "{{upstream}}"
    lay.row(
        "Ollama servers (the proxy's fleet)",
        # Each proxy replica checks and ejects servers on its own: the share of replicas that
        # have a server in rotation shows one replica's ejection, which max would hide.
        (c.timeseries("Servers up (share of proxy replicas)",
                      (f"avg by (upstream) ({pm.UPSTREAM_UP.name}{{{P}}})", PER_SERVER), "percentunit",
                      max_=1, description="A server is up on a replica while it passes that replica's health check "
                                          "(/api/version) and its traffic has not ejected it: 100 % on every "
                                          "replica, 0 on none (OllamaUpstreamDown); the replicas where it is down "
                                          "send it nothing."), 6),
        # Each replica counts only its own requests in flight: the server's load is their sum.
        (c.timeseries("Saturation and queue by server", [
            (f"sum by (upstream) ({pm.UPSTREAM_SATURATION.name}{{{P}}})", "saturation " + PER_SERVER),
            (f"sum by (upstream) ({pm.UPSTREAM_QUEUED.name}{{{P}}})", "queued (estimate) " + PER_SERVER),
        ], "short", description="Saturation: the busiest model's requests in flight over its parallel slots (1 = "
                                "full), summed over the proxy's replicas (exact when their busiest model is the same, "
                                "an upper bound otherwise). Queued: requests beyond the slots, waiting in Ollama's own "
                                "queue; an estimate from each replica's own requests (replicas each under the slots "
                                "can fill them together), Ollama exposes no queue."), 6),
        (c.table("Where each model is loaded", [
            (f'max by (upstream, model) ({pm.UPSTREAM_MODEL_LOADED.name}{{{P}, model=~"$model"}})', "Loaded"),
        ], "none", description="From each server's /api/ps at the proxy's last discovery: the balancer sends a "
                               "model's requests where it is loaded."), 6),
        (c.timeseries("Cold loads, failovers and ejections", [
            (f'sum by (upstream) (rate({pm.COLD_LOADS.name}{{{P}, model=~"$model"}}[{c.RATE}]))',
             "cold loads/s " + PER_SERVER),
            (f"sum by (upstream) (rate({pm.UPSTREAM_RETRIES.name}{{{P}}}[{c.RATE}]))", "failovers/s " + PER_SERVER),
            (f"sum by (upstream) (rate({pm.UPSTREAM_EJECTIONS.name}{{{P}}}[{c.RATE}]))",
             "ejections/s " + PER_SERVER),
        ], "ops", description="A cold load: a request that waited for the server to load the model. A failover: a "
                              "request moved to the next server before its first byte. An ejection: a server taken "
                              "out after a refused connection, server errors in a row, or failed health checks."), 6),
    )
    lay.row(
        "Energy",
        (c.timeseries("Energy per generated token, per host",
                      (f"{HOST_ENERGY_PER_TOKEN}", "{{host}}"), "suffix: J/token",
                      description="Every GPU's energy on the host over the completion tokens the host's proxy saw "
                                  "generated (recording rule, per `host` target label). It charges idle power and "
                                  "any other GPU work to the tokens: the cost of a token on this box, not of one "
                                  "model. Lower is better; it rises when the GPUs idle between requests."), 12),
        (c.timeseries("GPU power and completion tokens, per host", [
            (f"{HOST_GPU_POWER}", "GPU power {{host}}"),
            (f"{HOST_COMPLETION_TOKENS_RATE}", "tokens/s {{host}}"),
        ], "short", description="The two sides of the ratio: watts (J/s) on the hosts' GPUs, completion "
                                "tokens/s through the hosts' proxies."), 12),
    )
    return c.dashboard(
        config, config.dashboard_uids.gpus, "Ollama sidecar / Ollama and GPUs",
        "Loaded models, VRAM and spill to CPU, cold loads, and every GPU's memory, load, power and heat.",
        lay, c.variables(
            config, c.exporter_instance_variable(config),
            c.query_variable("model", "Model", f"label_values({em.OLLAMA_MODEL_INFO.name}{{{INST}}}, model)"),
        ),
    )
