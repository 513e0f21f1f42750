"""``ollama-sidecar exporter --fake-gpus N``: the demo's simulated GPUs (exporter/fake_nvml.py),
read through the real NVML reader, so the GPU panels have something to show on a machine
without a GPU, and never anything that would fire a GPU alert."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from exporter.fake_nvml import LiveFakeNvml, demo_gpus
from exporter.nvml_reader import NvmlReader
from proxy.monitoring import DEFAULT
from tests.test_exporter import series, value
from tests.test_exporter_server import ROOT, closed_port, start

FIXTURES = (start,)  # pytest finds fixtures by name in this module


def test_the_exporter_serves_simulated_gpus(start):
    exporter = start("--fake-gpus", "2", "--ollama", f"http://127.0.0.1:{closed_port()}")
    text = requests.get(f"{exporter.url}/metrics", timeout=10).text
    assert value(text, "nvml_up") == 1
    gpus = series(text, "gpu_info")
    assert sorted(g["gpu"] for g in gpus) == ["0", "1"]
    for metric in ("gpu_memory_used_bytes", "gpu_memory_total_bytes", "gpu_utilization_ratio",
                   "gpu_temperature_celsius", "gpu_process_memory_bytes"):
        assert {s["gpu"] for s in series(text, metric)} == {"0", "1"}, metric
    assert {s["gpu"] for s in series(text, "gpu_power_watts")} == {"0"}  # the consumer card has no reading
    assert "simulating 2 GPU(s)" in exporter.log()
    assert exporter.stop() == 0


@pytest.mark.parametrize("args", [["--fake-gpus", "2", "--no-nvml"], ["--fake-gpus", "-1"]])
def test_fake_gpus_refuses_a_contradiction(args):
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "exporter", "--listen", "127.0.0.1:0", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--fake-gpus" in r.stderr


@pytest.mark.parametrize("count", [1, 2, 4])
def test_simulated_readings_move_but_never_reach_a_gpu_alert(monkeypatch, count):
    now = [0.0]
    LiveFakeNvml(demo_gpus(count), clock=lambda: now[0]).install(monkeypatch)
    reader = NvmlReader(clock=lambda: now[0])
    assert reader.start()
    temperatures = set()
    for second in range(0, 120, 5):  # one period of the drift
        now[0] = float(second)
        snapshot = reader.read()
        assert snapshot.up and len(snapshot.gpus) == count
        for gpu in snapshot.gpus:
            temperatures.add(gpu.temperature_celsius)
            for profile in DEFAULT.profiles.values():
                assert gpu.temperature_celsius < profile.gpu_temperature_celsius
                assert gpu.memory_used_bytes / gpu.memory_total_bytes < profile.gpu_memory_ratio
            assert 0 <= gpu.utilization_ratio <= 1
    reader.close()
    assert len(temperatures) > count  # the graphs move


def test_the_fake_returns_the_bindings_own_types(monkeypatch):
    import pynvml

    from exporter.fake_nvml import FakeNvml, fleet_gpus
    FakeNvml(fleet_gpus()).install(monkeypatch)
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert isinstance(pynvml.nvmlDeviceGetMemoryInfo(handle), pynvml.c_nvmlMemory_t)
        v2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        assert isinstance(v2, pynvml.c_nvmlMemory_v2_t) and v2.reserved > 0
        assert isinstance(pynvml.nvmlDeviceGetUtilizationRates(handle), pynvml.c_nvmlUtilization_t)
        assert pynvml.nvmlDeviceGetPciInfo(handle).busId == "00000000:07:00.0"  # the struct decodes it
        (proc, *_) = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        assert isinstance(proc, pynvml.nvmlFriendlyObject) and proc.gpuInstanceId == 0xFFFFFFFF
        with pytest.raises(pynvml.NVMLError_NotSupported):  # the MIG parent
            pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(1))
    finally:
        pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
