"""No single NVML failure or hang removes other series: each failure the real bindings
can produce (exporter/fake_nvml.py raises them as they do), and the series that must
survive it. Also the fields added for real GPU boxes: clocks, throttling, ECC, MIG, XID."""

from __future__ import annotations

import logging
import threading

import pynvml
import pytest

from exporter.fake_nvml import FakeNvml, GiB, MiB, fleet_gpus, two_gpus
from exporter.nvml_errors import ErrorCounts
from exporter.xid_watcher import XidWatcher
from tests.test_exporter import (A100, RTX, _ollama_server, make_exporter, ollama, samples, series, serve,  # noqa: F401
                                 value)

FIXTURES = (make_exporter, ollama, _ollama_server)  # pytest finds fixtures by name in this module

H100 = {"gpu": "1", "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}
RTX4090 = {"gpu": "2", "uuid": "GPU-44444444-0909-0909-0909-444444444444"}


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    return FakeNvml(two_gpus()).install(monkeypatch)


@pytest.fixture
def fleet(monkeypatch) -> FakeNvml:
    return FakeNvml(fleet_gpus()).install(monkeypatch)


def gpu_series(text: str, gpu: str) -> set[str]:
    return {name for name, labels in samples(text) if dict(labels).get("gpu") == gpu}


def errors(text: str) -> dict[tuple[str, str, str], float]:
    return {(s["gpu"], s["call"], s["error"]): value(text, "gpu_nvml_errors_total", **s)
            for s in series(text, "gpu_nvml_errors_total")}


# --- one field fails ---------------------------------------------------------------------------

@pytest.mark.parametrize("code, name", [
    (pynvml.NVML_ERROR_NO_PERMISSION, "NoPermission"),
    (pynvml.NVML_ERROR_UNKNOWN, "Unknown"),
    (pynvml.NVML_ERROR_TIMEOUT, "Timeout"),
    (pynvml.NVML_ERROR_RESET_REQUIRED, "ResetRequired"),
])
def test_a_real_error_drops_one_field_and_is_counted(ollama, make_exporter, fake, caplog, code, name):
    serve(ollama)
    exporter = make_exporter(nvml=True)
    before = gpu_series(exporter.scrape(), "0")
    fake.gpus[0].fail["nvmlDeviceGetPowerUsage"] = pynvml.NVMLError(code)
    with caplog.at_level(logging.WARNING, logger="exporter.nvml_reader"):
        exporter.scrape()
        text = exporter.scrape()
    assert gpu_series(text, "0") == before - {"gpu_power_watts"} | {"gpu_nvml_errors_total",
                                                                    "gpu_nvml_errors_created"}
    assert value(text, "gpu_nvml_errors_total", **A100, call="nvmlDeviceGetPowerUsage", error=name) == 2
    assert value(text, "gpu_up", **A100) == 0 and value(text, "gpu_up", **RTX) == 1
    assert value(text, "nvml_up") == 0
    assert value(text, "gpu_power_limit_watts", **A100) == 400.0  # the next field of the same GPU
    assert value(text, "gpu_memory_used_bytes", **RTX) == 3 * GiB and value(text, "ollama_up") == 1
    assert len([r for r in caplog.records if "nvmlDeviceGetPowerUsage failed" in r.message]) == 1


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND])
def test_not_supported_is_a_missing_field_not_an_error(ollama, make_exporter, fake, code):
    serve(ollama)
    fake.gpus[0].fail["nvmlDeviceGetClockInfo"] = pynvml.NVMLError(code)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_sm_clock_hertz", **A100) is None and value(text, "gpu_sm_clock_hertz", **RTX)
    assert series(text, "gpu_nvml_errors_total") == []
    assert value(text, "gpu_up", **A100) == 1 and value(text, "nvml_up") == 1


def test_a_missing_binding_is_a_missing_field(ollama, make_exporter, fake, monkeypatch):
    serve(ollama)
    monkeypatch.delattr(pynvml, "nvmlDeviceGetPcieReplayCounter")
    text = make_exporter(nvml=True).scrape()
    assert series(text, "gpu_pcie_replays_total") == [] and series(text, "gpu_nvml_errors_total") == []
    assert value(text, "gpu_temperature_celsius", **A100) == 61


def test_library_mismatch_on_the_process_query_falls_back_to_v2(ollama, make_exporter, fake):
    # R470: no _v3 process query (nvidia-ml-py's unversioned call raises
    # NVMLLibraryMismatchError) and no memory v2 ("used" then includes the reservation).
    fake.driver_version = "470.239.06"
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlInit()
        try:
            pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_process_memory_bytes", **A100, pid="4242", process="ollama") == 19 * GiB
    assert value(text, "gpu_memory_used_bytes", **A100) == 20 * GiB + 512 * MiB  # v1
    assert value(text, "gpu_memory_reserved_bytes", **A100) is None
    assert series(text, "gpu_nvml_errors_total") == [] and value(text, "nvml_up") == 1


def test_library_mismatch_with_no_fallback_left_is_contained(ollama, make_exporter, fake):
    fake.driver_version = "470.239.06"
    fake.gpus[0].fail["nvmlDeviceGetComputeRunningProcesses_v2"] = pynvml.NVMLLibraryMismatchError("mismatch")
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert [s for s in series(text, "gpu_process_memory_bytes") if s["gpu"] == "0"] == []
    assert value(text, "gpu_nvml_errors_total", **A100, call="nvmlDeviceGetComputeRunningProcesses_v3",
                 error="LibraryMismatch") == 1
    assert value(text, "gpu_memory_used_bytes", **A100) is not None
    assert value(text, "gpu_process_memory_bytes", **RTX, pid="4243", process="ollama") == 2 * GiB


def test_a_process_path_that_is_not_utf8_keeps_its_memory_series(ollama, make_exporter, fake):
    fake.gpus[0].processes[1].path = b"/opt/caf\xe9/python3"
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_process_memory_bytes", **A100, pid="5151", process="") == 512 * MiB
    assert value(text, "gpu_process_memory_bytes", **A100, pid="4242", process="ollama") == 19 * GiB
    assert value(text, "gpu_nvml_errors_total", **A100, call="nvmlSystemGetProcessName",
                 error="UnicodeDecodeError") == 1


def test_temperature_uses_the_current_api_and_falls_back(ollama, make_exporter, fake, monkeypatch):
    serve(ollama)
    exporter = make_exporter(nvml=True)
    assert value(exporter.scrape(), "gpu_temperature_celsius", **A100) == 61
    assert fake.calls["nvmlDeviceGetTemperatureV"] == 2 and fake.calls["nvmlDeviceGetTemperature"] == 0
    fake.temperature_v = False  # a driver before the V call: FunctionNotFound
    assert value(exporter.scrape(), "gpu_temperature_celsius", **A100) == 61
    assert fake.calls["nvmlDeviceGetTemperature"] == 2
    monkeypatch.delattr(pynvml, "nvmlDeviceGetTemperature")  # a release that dropped the deprecated call
    text = exporter.scrape()
    assert value(text, "gpu_temperature_celsius", **A100) is None
    assert series(text, "gpu_nvml_errors_total") == [] and value(text, "gpu_up", **A100) == 1


def test_gpu_lost_in_the_middle_of_its_read(ollama, make_exporter, fake):
    serve(ollama)
    fake.gpus[1].fail["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    text = make_exporter(nvml=True).scrape()
    assert gpu_series(text, "1") == {"gpu_up", "gpu_nvml_errors_total", "gpu_nvml_errors_created"}
    assert value(text, "gpu_up", **RTX) == 0
    assert value(text, "gpu_memory_used_bytes", **A100) == 20 * GiB and value(text, "ollama_up") == 1


def test_a_gpu_without_a_handle_is_reported_unreadable(ollama, make_exporter, fake):
    serve(ollama)
    fake.gpus[1].fail["nvmlDeviceGetHandleByIndex"] = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_up", gpu="1", uuid="") == 0
    assert value(text, "gpu_nvml_errors_total", gpu="1", uuid="", call="nvmlDeviceGetHandleByIndex",
                 error="NoPermission") == 1
    assert series(text, "gpu_info") == [{**A100, "name": "NVIDIA A100-SXM4-80GB", "driver_version": "550.54.15",
                                         "pci_bus_id": "00000000:07:00.0"}]


# --- a call hangs ------------------------------------------------------------------------------

def nvml_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "nvml-read" and t.is_alive())


def test_a_hung_call_leaves_ollama_served_and_never_piles_up_threads(ollama, make_exporter, fake):
    serve(ollama)
    exporter = make_exporter(nvml=True, nvml_timeout=0.2)
    fake.hang = {"nvmlDeviceGetPowerUsage"}
    try:
        for scrape in (1, 2, 3):
            text = exporter.scrape()
            assert fake.entered.is_set()
            assert value(text, "nvml_up") == 0 and value(text, "nvml_stale") == 1
            assert value(text, "nvml_read_timeouts_total") == scrape
            assert series(text, "gpu_info") == [] and series(text, "gpu_memory_used_bytes") == []
            assert value(text, "ollama_up") == 1 and value(text, "ollama_models_loaded") == 2
            assert nvml_threads() == 1  # later scrapes wait on the stuck read, never start another
            assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    finally:
        fake.release.set()
    fake.hang = set()
    for _ in range(50):  # the stuck read ends once released; the next scrape reads afresh
        text = exporter.scrape()
        if value(text, "nvml_up") == 1:
            break
    assert value(text, "nvml_stale") == 0 and value(text, "gpu_power_watts", **A100) == 245.5
    assert value(text, "nvml_read_timeouts_total") >= 3


def test_a_hung_init_does_not_stop_the_exporter(ollama, make_exporter, fake):
    serve(ollama)
    fake.hang = {"nvmlInit"}
    try:
        exporter = make_exporter(nvml=True, nvml_timeout=0.2)
        assert exporter.nvml_started is False
        text = exporter.scrape()
        assert value(text, "ollama_up") == 1 and value(text, "nvml_up") == 0
    finally:
        fake.release.set()


# --- the new fields --------------------------------------------------------------------------

def test_clocks_throttling_ecc_remapping_and_pcie(ollama, make_exporter, fake):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_sm_clock_hertz", **A100) == 1_410_000_000
    assert value(text, "gpu_memory_clock_hertz", **RTX) == 9_751_000_000
    assert series(text, "gpu_clock_event_reason") == [{**A100, "reason": "sw_power_cap"}]
    assert value(text, "gpu_performance_state", **A100) == 0 and value(text, "gpu_performance_state", **RTX) == 2
    assert value(text, "gpu_ecc_errors_total", **A100, error_type="corrected", counter="volatile") == 3
    assert value(text, "gpu_ecc_errors_total", **A100, error_type="corrected", counter="aggregate") == 17
    assert value(text, "gpu_ecc_errors_total", **A100, error_type="uncorrected", counter="volatile") == 0
    assert {s["gpu"] for s in series(text, "gpu_ecc_errors_total")} == {"0"}  # the GeForce has no ECC
    assert value(text, "gpu_remapped_rows_total", **A100, cause="correctable") == 2
    assert value(text, "gpu_row_remap_pending", **A100) == 0 and value(text, "gpu_row_remap_failed", **A100) == 0
    assert value(text, "gpu_row_remap_pending", **RTX) is None
    assert value(text, "gpu_pcie_replays_total", **A100) == 5 and value(text, "gpu_pcie_replays_total", **RTX) is None
    assert value(text, "gpu_encoder_utilization_ratio", **RTX) == 0.12
    assert series(text, "gpu_mig_mode") == []  # neither GPU supports MIG


def test_every_active_clock_event_reason_is_one_series(ollama, make_exporter, fake):
    fake.gpus[0].clock_event_reasons = (pynvml.nvmlClocksEventReasonHwSlowdown
                                        | pynvml.nvmlClocksEventReasonSwThermalSlowdown | 0x4000)
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert sorted(s["reason"] for s in series(text, "gpu_clock_event_reason") if s["gpu"] == "0") == [
        "hw_slowdown", "other", "sw_thermal_slowdown"]


def test_mig_instances_and_what_mig_hides_on_the_parent(ollama, make_exporter, fleet):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_mig_mode", **H100) == 1
    assert {s["field"] for s in series(text, "gpu_mig_unavailable_field") if s["gpu"] == "1"} == {
        "utilization", "memory_utilization", "encoder_utilization", "decoder_utilization", "processes"}
    assert value(text, "gpu_utilization_ratio", **H100) is None
    assert value(text, "gpu_utilization_ratio", **RTX4090) == 0.88
    gi1 = {**H100, "gpu_instance": "1", "compute_instance": "0"}
    assert value(text, "gpu_mig_instance_info", **gi1, mig_uuid="MIG-11111111-aaaa-bbbb-cccc-000000000001") == 1
    assert value(text, "gpu_mig_memory_used_bytes", **gi1) == 25 * GiB
    assert value(text, "gpu_mig_memory_total_bytes", **H100, gpu_instance="2", compute_instance="0") == 20 * GiB
    assert value(text, "gpu_mig_process_memory_bytes", **gi1, pid="7001", process="ollama") == 24 * GiB
    assert value(text, "gpu_memory_used_bytes", **H100) == 30 * GiB  # the parent's memory stays
    assert series(text, "gpu_nvml_errors_total") == [] and value(text, "nvml_up") == 1


def test_a_geforce_card_with_power_readings(ollama, make_exporter, fleet):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "gpu_power_watts", **RTX4090) == 402.25
    assert value(text, "gpu_energy_joules_total", **RTX4090) == 77_000
    assert sorted(s["reason"] for s in series(text, "gpu_clock_event_reason") if s["gpu"] == "2") == [
        "sw_power_cap", "sw_thermal_slowdown"]


# --- XID events ---------------------------------------------------------------------------------

def test_xid_events_are_counted_per_gpu(fleet):
    errors = ErrorCounts()
    watcher = XidWatcher(errors)
    watcher.open()
    try:
        counts = {c.uuid: c for c in watcher.counts()}
        # The GeForce cannot deliver XID events: no series rather than a reassuring 0.
        assert set(counts) == {A100["uuid"], H100["uuid"]}
        assert counts[A100["uuid"]].count == 0 and counts[A100["uuid"]].last_xid is None
        fleet.inject_xid(1, 79)
        fleet.inject_xid(1, 48)
        fleet.inject_xid(2, 13)  # not registered: never delivered
        assert watcher.poll(0) and watcher.poll(0) and not watcher.poll(0)
        counts = {c.uuid: c for c in watcher.counts()}
        assert (counts[H100["uuid"]].count, counts[H100["uuid"]].last_xid) == (2, 48)
    finally:
        watcher.release()
    assert fleet.refcount == 0 and errors.snapshot() == {}


def test_xid_series_through_the_exporter(ollama, make_exporter, fleet):
    serve(ollama)
    exporter = make_exporter(nvml=True, xid_events=True)
    assert exporter.xid_watcher is not None
    for _ in range(100):  # the watcher registers on its own thread
        if exporter.xid_watcher.counts():
            break
        threading.Event().wait(0.05)
    fleet.inject_xid(0, 31)
    for _ in range(100):
        text = exporter.scrape()
        if value(text, "gpu_xid_errors_total", **A100) == 1:
            break
        threading.Event().wait(0.05)
    assert value(text, "gpu_xid_errors_total", **A100) == 1 and value(text, "gpu_last_xid", **A100) == 31
    assert value(text, "gpu_xid_errors_total", **H100) == 0 and value(text, "gpu_last_xid", **H100) is None
    assert value(text, "gpu_xid_errors_total", **RTX4090) is None
