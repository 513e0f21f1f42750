"""The exporter's /metrics as a user reads it: exact values and units, against a fake
Ollama (pytest-httpserver, faithful to Ollama's docs/api.md for ``/api/tags``, ``/api/ps``
and ``/api/version``) and a fake NVML (the real ``pynvml`` functions replaced, see
exporter/fake_nvml.py)."""

from __future__ import annotations

import gzip
import logging
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

import pynvml
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from exporter import metrics as em
from exporter.app import Exporter
from exporter.cache import SingleFlightCache
from exporter.collector import NvmlCounters
from exporter.fake_nvml import FakeNvml, GiB, MiB, fleet_gpus, two_gpus
from exporter.ollama_api import parse_rfc3339
from exporter.ollama_fetch import without_credentials
from exporter.xid_watcher import XidWatcher
from tests.binaries import require_binary
from tests.conftest import FakeClock

# --- helpers -------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(text: str, metric: str, /, **labels: str) -> float | None:
    return samples(text).get((metric, tuple(sorted(labels.items()))))


def series(text: str, name: str) -> list[dict[str, str]]:
    """Label sets of every sample called ``name``."""
    return [dict(labels) for (n, labels) in samples(text) if n == name]



# /api/ps's example expires_at is 2024-06-04T21:38:31.83753Z; "now" is five minutes before.
NOW = datetime(2024, 6, 4, 21, 33, 31, tzinfo=timezone.utc).timestamp()

TAGS = {"models": [
    {"name": "llama3.2:latest", "model": "llama3.2:latest",
     "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 2019393189, "digest": "a80c4f17",
     "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}},
    {"name": "mistral:latest", "model": "mistral:latest", "modified_at": "2024-05-01T10:00:00Z",
     "size": 4113301824, "digest": "2ae6f6dd",
     "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "7.2B", "quantization_level": "Q4_0"}},
    {"name": "qwen2.5:72b", "model": "qwen2.5:72b", "modified_at": "2024-09-20T08:00:00Z",
     "size": 47415724378, "digest": "424bad2c",
     "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                 "parameter_size": "72.7B", "quantization_level": "Q4_K_M"}},
]}

PS = {"models": [
    {"name": "mistral:latest", "model": "mistral:latest", "size": 5137025024, "digest": "2ae6f6dd",
     "details": TAGS["models"][1]["details"], "expires_at": "2024-06-04T14:38:31.83753-07:00",
     "size_vram": 5137025024, "context_length": 4096},
    {"name": "qwen2.5:72b", "model": "qwen2.5:72b", "size": 48000000000, "digest": "424bad2c",
     "details": TAGS["models"][2]["details"], "expires_at": "2024-06-04T21:43:31.123456789Z",
     "size_vram": 24000000000, "context_length": 32768},
]}


def serve(server: HTTPServer, version: object = None, tags: object = None, ps: object = None) -> None:
    """(Re)program the fake Ollama; a dict is served as JSON, a Response as is."""
    server.clear_all_handlers()
    for path, body in (("/api/version", version or {"version": "0.5.1"}),
                       ("/api/tags", tags or TAGS), ("/api/ps", ps or PS)):
        handler = server.expect_request(path, method="GET")
        if isinstance(body, Response):
            handler.respond_with_response(body)
        elif callable(body):
            handler.respond_with_handler(body)
        else:
            handler.respond_with_json(body)


def threaded_server() -> HTTPServer:
    # threaded: Ollama answers the three calls side by side, and one hanging must not
    # hold up the others.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


@pytest.fixture(scope="module")
def _ollama_server():
    server = threaded_server()  # one per module: stopping one takes half a second
    yield server
    server.stop()


@pytest.fixture
def ollama(_ollama_server):
    _ollama_server.clear()
    _ollama_server.release = threading.Event()  # type: ignore[attr-defined]
    yield _ollama_server
    _ollama_server.release.set()  # type: ignore[attr-defined]


@pytest.fixture
def make_exporter(ollama):
    made: list[Exporter] = []

    def make(**options) -> Exporter:
        options.setdefault("timeout", 5.0)
        options.setdefault("cache", 0.0)
        options.setdefault("nvml", False)
        options.setdefault("wall_clock", lambda: NOW)
        options.setdefault("xid_events", False)  # its thread is tested in test_exporter_nvml_failures.py
        options.setdefault("cmdline", lambda pid: None)  # never this machine's /proc
        exporter = Exporter(ollama.url_for("/").rstrip("/"), **options)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.close()


@pytest.fixture
def fake_nvml(monkeypatch) -> FakeNvml:
    return FakeNvml(two_gpus()).install(monkeypatch)


def requests_to(server: HTTPServer, path: str) -> int:
    return sum(1 for request, _ in server.log if request.path == path)


# --- Ollama ----------------------------------------------------------------------------------


def test_installed_and_loaded_models_with_exact_values(ollama, make_exporter):
    serve(ollama)
    text = make_exporter().scrape()

    assert value(text, "ollama_up") == 1
    assert value(text, "ollama_version_info", version="0.5.1") == 1
    assert value(text, "ollama_models_installed") == 3
    assert value(text, "ollama_model_size_bytes", model="llama3.2:latest") == 2019393189
    assert value(text, "ollama_model_info", model="qwen2.5:72b", family="qwen2", parameter_size="72.7B",
                 quantization_level="Q4_K_M", format="gguf") == 1
    assert value(text, "ollama_models_loaded") == 2
    assert {s["model"] for s in series(text, "ollama_model_loaded")} == {"mistral:latest", "qwen2.5:72b"}
    assert value(text, "ollama_model_loaded_size_bytes", model="mistral:latest") == 5137025024
    assert value(text, "ollama_model_vram_bytes", model="mistral:latest") == 5137025024
    assert value(text, "ollama_model_vram_ratio", model="mistral:latest") == 1.0
    assert value(text, "ollama_model_context_length", model="qwen2.5:72b") == 32768
    # 14:38:31.83753-07:00 is 21:38:31.83753Z: 300.83753 s after NOW.
    assert value(text, "ollama_model_expires_in_seconds", model="mistral:latest") == pytest.approx(300.83753)
    assert value(text, "ollama_model_expires_in_seconds", model="qwen2.5:72b") == pytest.approx(600.123456789)
    for endpoint in ("version", "tags", "ps"):
        assert value(text, "ollama_scrape_errors_total", endpoint=endpoint) == 0
    assert value(text, "ollama_scrape_duration_seconds") > 0


def test_partly_spilled_model_shows_its_vram_ratio(ollama, make_exporter):
    serve(ollama)
    text = make_exporter().scrape()
    assert value(text, "ollama_model_vram_bytes", model="qwen2.5:72b") == 24000000000
    assert value(text, "ollama_model_vram_ratio", model="qwen2.5:72b") == 0.5


def test_nothing_loaded(ollama, make_exporter):
    serve(ollama, ps={"models": []})
    text = make_exporter().scrape()
    assert value(text, "ollama_up") == 1
    assert value(text, "ollama_models_loaded") == 0
    assert series(text, "ollama_model_loaded") == []
    assert value(text, "ollama_models_installed") == 3


def test_missing_optional_fields_skip_only_their_series(ollama, make_exporter):
    # An old Ollama: no context_length; a client-built entry without details, expires_at
    # or size_vram; an installed model without details or size.
    ps = {"models": [{"name": "tinyllama:latest", "model": "tinyllama:latest", "size": 637700138}]}
    tags = {"models": [{"name": "tinyllama:latest"}]}
    serve(ollama, tags=tags, ps=ps)
    text = make_exporter().scrape()

    assert value(text, "ollama_up") == 1
    assert value(text, "ollama_model_loaded", model="tinyllama:latest") == 1
    assert value(text, "ollama_model_loaded_size_bytes", model="tinyllama:latest") == 637700138
    for name in ("ollama_model_vram_bytes", "ollama_model_vram_ratio", "ollama_model_expires_in_seconds",
                 "ollama_model_context_length", "ollama_model_size_bytes"):
        assert series(text, name) == [], name
    assert value(text, "ollama_model_info", model="tinyllama:latest", family="", parameter_size="",
                 quantization_level="", format="") == 1


def test_duplicate_and_malformed_entries_do_not_break_the_scrape(ollama, make_exporter):
    # A duplicate series would make Prometheus reject the whole scrape.
    ps = {"models": [PS["models"][0], PS["models"][0], "junk", {"size": 1}, {"name": 7}]}
    serve(ollama, ps=ps)
    text = make_exporter().scrape()
    assert value(text, "ollama_up") == 1
    assert series(text, "ollama_model_loaded") == [{"model": "mistral:latest"}]
    assert value(text, "ollama_models_loaded") == 1


def test_server_error_counts_and_drops_only_that_endpoint(ollama, make_exporter):
    serve(ollama, ps=Response('{"error":"boom"}', status=500, content_type="application/json"))
    exporter = make_exporter()
    text = exporter.scrape()
    assert value(text, "ollama_up") == 0
    assert value(text, "ollama_scrape_errors_total", endpoint="ps") == 1
    assert value(text, "ollama_scrape_errors_total", endpoint="tags") == 0
    assert series(text, "ollama_model_loaded") == [] and value(text, "ollama_models_loaded") is None
    assert value(text, "ollama_models_installed") == 3  # what did answer is still shown
    text = exporter.scrape()
    assert value(text, "ollama_scrape_errors_total", endpoint="ps") == 2


@pytest.mark.parametrize("body", [
    Response("<html>502 Bad Gateway</html>", status=200, content_type="text/html"),
    Response('{"models": [', status=200, content_type="application/json"),
    Response('{"models": "none"}', status=200, content_type="application/json"),
    Response('[1, 2, 3]', status=200, content_type="application/json"),
], ids=["html", "truncated-json", "models-not-a-list", "not-an-object"])
def test_garbage_replies_mean_down(ollama, make_exporter, body):
    serve(ollama, tags=body)
    text = make_exporter().scrape()
    assert value(text, "ollama_up") == 0
    assert value(text, "ollama_scrape_errors_total", endpoint="tags") == 1
    assert series(text, "ollama_model_info") == [] and series(text, "ollama_model_size_bytes") == []


@pytest.mark.parametrize("style", ["silent", "trickle"])
def test_hang_longer_than_timeout_gives_up_on_time(ollama, make_exporter, style):
    # Ollama hangs for up to 3 s and THEN answers properly: an exporter that waited past
    # its 0.3 s timeout would report ollama_up 1. "trickle" sends a byte every 50 ms, so
    # a socket read timeout alone would never fire: only the scrape's deadline ends it.
    def late_ps():
        yield '{"models": ['
        for _ in range(60):
            if ollama.release.wait(0.05):
                break
            if style == "trickle":
                yield " "
        yield "]}"

    def hang(request: Request) -> Response:
        if style == "silent":
            body = "".join(late_ps())
            return Response(body, content_type="application/json")
        return Response(late_ps(), content_type="application/json")

    serve(ollama, ps=hang)
    text = make_exporter(timeout=0.3).scrape()
    assert value(text, "ollama_up") == 0
    assert value(text, "ollama_scrape_errors_total", endpoint="ps") == 1
    assert value(text, "ollama_scrape_errors_total", endpoint="version") == 0
    assert value(text, "ollama_version_info", version="0.5.1") == 1
    assert series(text, "ollama_model_loaded") == []


def test_no_stale_model_series_after_ollama_goes_away(caplog):
    ollama = threaded_server()
    serve(ollama)
    url = ollama.url_for("/")
    exporter = Exporter(url.rstrip("/"), timeout=1.0, cache=0.0, nvml=False)
    assert len(series(exporter.scrape(), "ollama_model_loaded")) == 2
    ollama.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=1)
    with caplog.at_level(logging.WARNING, logger="exporter.ollama_fetch"):
        for _ in range(3):
            text = exporter.scrape()
    assert value(text, "ollama_up") == 0
    assert value(text, "ollama_scrape_errors_total", endpoint="ps") == 3
    for name in ("ollama_model_loaded", "ollama_model_vram_ratio", "ollama_model_info",
                 "ollama_model_size_bytes", "ollama_version_info", "ollama_models_loaded",
                 "ollama_models_installed"):
        assert series(text, name) == [], name
    assert len([r for r in caplog.records if "not answering" in r.message]) == 1  # not one per scrape
    exporter.close()


def test_cache_shares_one_fetch_between_scrapes(ollama, make_exporter):
    serve(ollama)
    clock = FakeClock()
    exporter = make_exporter(cache=1.0, clock=clock)
    exporter.scrape()
    exporter.scrape()
    assert requests_to(ollama, "/api/ps") == 1
    clock.advance(1.0)
    exporter.scrape()
    assert requests_to(ollama, "/api/ps") == 2


def test_cache_zero_fetches_every_scrape(ollama, make_exporter):
    serve(ollama)
    exporter = make_exporter(cache=0.0)
    for _ in range(3):
        exporter.scrape()
    assert [requests_to(ollama, p) for p in ("/api/version", "/api/tags", "/api/ps")] == [3, 3, 3]


def test_concurrent_gets_share_one_load():
    release, entered = threading.Event(), threading.Event()
    loads: list[int] = []

    def load() -> object:
        loads.append(1)
        entered.set()
        release.wait(10)
        return object()

    cache: SingleFlightCache[object] = SingleFlightCache(load, ttl=60)
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(cache.get()))
    first.start()
    entered.wait(10)
    others = [threading.Thread(target=lambda: results.append(cache.get())) for _ in range(7)]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(loads) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


@pytest.mark.parametrize("text, expected", [
    ("2024-06-04T14:38:31.83753-07:00", datetime(2024, 6, 4, 21, 38, 31, 837530, timezone.utc)),
    ("2024-06-04T21:38:31.123456789Z", datetime(2024, 6, 4, 21, 38, 31, 123457, timezone.utc)),
    ("2024-06-04T21:38:31Z", datetime(2024, 6, 4, 21, 38, 31, tzinfo=timezone.utc)),
    ("2024-06-05T03:08:31.5+05:30", datetime(2024, 6, 4, 21, 38, 31, 500000, timezone.utc)),
])
def test_rfc3339_with_nanoseconds_and_offsets(text, expected):
    assert parse_rfc3339(text) == pytest.approx(expected.timestamp(), abs=1e-6)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "", "tomorrow", None, 17, "2024-13-40T25:00:00Z",
                                  "2024-06-04T21:38:31+99:00"])
def test_rfc3339_unset_or_unreadable_is_none(text):
    assert parse_rfc3339(text) is None


# --- NVML ------------------------------------------------------------------------------------

A100 = {"gpu": "0", "uuid": "GPU-11111111-2222-3333-4444-555555555555"}
RTX = {"gpu": "1", "uuid": "GPU-66666666-7777-8888-9999-000000000000"}


def test_two_gpus_in_base_units(ollama, make_exporter, fake_nvml):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()

    assert value(text, "nvml_up") == 1
    assert value(text, "gpu_info", **A100, name="NVIDIA A100-SXM4-80GB", driver_version="550.54.15",
                 pci_bus_id="00000000:07:00.0") == 1
    assert value(text, "gpu_info", **RTX, name="NVIDIA GeForce RTX 3090", driver_version="550.54.15",
                 pci_bus_id="00000000:41:00.0") == 1
    assert value(text, "gpu_up", **A100) == 1 and value(text, "gpu_up", **RTX) == 1
    assert value(text, "gpu_memory_total_bytes", **A100) == 80 * GiB == 85899345920
    # memory v2: "used" without the driver's 512 MiB reservation, which is reported apart
    assert value(text, "gpu_memory_used_bytes", **A100) == 20 * GiB
    assert value(text, "gpu_memory_reserved_bytes", **A100) == 512 * MiB
    assert value(text, "gpu_memory_free_bytes", **A100) == 60 * GiB - 512 * MiB
    assert value(text, "gpu_utilization_ratio", **A100) == 0.37  # NVML: 37 %
    assert value(text, "gpu_memory_utilization_ratio", **A100) == 0.12
    assert value(text, "gpu_utilization_ratio", **RTX) == 1.0
    assert value(text, "gpu_memory_utilization_ratio", **RTX) == 0.0
    assert value(text, "gpu_temperature_celsius", **A100) == 61
    assert value(text, "gpu_power_watts", **A100) == 245.5  # NVML: 245500 mW
    assert value(text, "gpu_power_limit_watts", **A100) == 400.0
    assert value(text, "gpu_energy_joules_total", **A100) == 1234.567  # NVML: 1234567 mJ
    assert value(text, "gpu_process_memory_bytes", **A100, pid="4242", process="ollama") == 19 * GiB
    assert value(text, "gpu_process_memory_bytes", **A100, pid="5151", process="python3") == 512 * 1024 ** 2
    assert value(text, "ollama_up") == 1  # both sources in one scrape


def test_unsupported_power_is_skipped_for_that_gpu_only(ollama, make_exporter, fake_nvml):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    assert value(text, "nvml_up") == 1
    for name in ("gpu_power_watts", "gpu_power_limit_watts", "gpu_energy_joules_total"):
        assert [s["gpu"] for s in series(text, name)] == ["0"], name
    assert value(text, "gpu_memory_used_bytes", **RTX) == 3 * GiB


def test_process_without_memory_figure_is_left_out(ollama, make_exporter, fake_nvml):
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    on_rtx = [s for s in series(text, "gpu_process_memory_bytes") if s["gpu"] == "1"]
    assert on_rtx == [{**RTX, "pid": "4243", "process": "ollama"}]  # Xorg (usedGpuMemory=None) absent


def test_no_library_still_serves_ollama_logs_once_and_retries(ollama, make_exporter, fake_nvml, caplog):
    serve(ollama)
    fake_nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="exporter.nvml_reader"):
        exporter = make_exporter(nvml=True, nvml_retry=30.0, clock=clock)
        for _ in range(3):
            text = exporter.scrape()
            clock.advance(5)  # 15 s in all: no retry yet
        assert fake_nvml.calls["nvmlInit"] == 1
        assert value(text, "nvml_up") == 0
        assert series(text, "gpu_info") == [] and series(text, "gpu_memory_used_bytes") == []
        assert value(text, "ollama_up") == 1 and value(text, "ollama_models_loaded") == 2

        clock.advance(30)  # retry, still missing
        exporter.scrape()
        assert fake_nvml.calls["nvmlInit"] == 2
        failures = [r for r in caplog.records if "cannot be initialised" in r.message]
        assert len(failures) == 1 and "Not Found" in failures[0].message

        fake_nvml.init_error = None  # the driver came back
        assert value(exporter.scrape(), "nvml_up") == 0  # not before the next retry
        clock.advance(30)
        text = exporter.scrape()
    assert value(text, "nvml_up") == 1
    assert value(text, "gpu_memory_used_bytes", **A100) == 20 * GiB
    assert any("initialised again" in r.message for r in caplog.records)


def test_gpu_lost_mid_scrape_drops_that_gpu_only(ollama, make_exporter, fake_nvml, caplog):
    serve(ollama)
    exporter = make_exporter(nvml=True)
    assert value(exporter.scrape(), "gpu_memory_used_bytes", **RTX) == 3 * GiB

    fake_nvml.gpus[1].lost = True
    with caplog.at_level(logging.WARNING, logger="exporter.nvml_reader"):
        for _ in range(2):
            text = exporter.scrape()
    assert value(text, "nvml_up") == 0
    assert {s["gpu"] for s in series(text, "gpu_info")} == {"0"}
    # Of the lost GPU only what says it is lost remains, keyed by the uuid it had.
    assert {name for name, labels in samples(text) if dict(labels).get("gpu") == "1"} == {
        "gpu_up", "gpu_nvml_errors_total", "gpu_nvml_errors_created"}
    assert value(text, "gpu_up", **RTX) == 0
    assert value(text, "gpu_nvml_errors_total", **RTX, call="device", error="GpuIsLost") == 2
    assert value(text, "gpu_memory_used_bytes", **A100) == 20 * GiB
    assert value(text, "ollama_up") == 1
    assert len([r for r in caplog.records if "GPU 1 cannot be read" in r.message]) == 1

    fake_nvml.gpus[1].lost = False
    text = exporter.scrape()
    assert value(text, "nvml_up") == 1 and value(text, "gpu_up", **RTX) == 1
    assert value(text, "gpu_memory_used_bytes", **RTX) == 3 * GiB


def test_driver_unloaded_mid_run_reinitialises_later(ollama, make_exporter, fake_nvml):
    serve(ollama)
    clock = FakeClock()
    exporter = make_exporter(nvml=True, nvml_retry=10.0, clock=clock)
    assert value(exporter.scrape(), "nvml_up") == 1

    fake_nvml.driver_gone = True
    text = exporter.scrape()
    assert value(text, "nvml_up") == 0 and series(text, "gpu_info") == []
    assert fake_nvml.refcount == 0  # released what it held

    fake_nvml.driver_gone = False
    clock.advance(10)
    text = exporter.scrape()
    assert value(text, "nvml_up") == 1 and len(series(text, "gpu_info")) == 2
    assert fake_nvml.calls["nvmlInit"] == 2


def test_nvml_reads_are_cached_like_ollama(ollama, make_exporter, fake_nvml):
    serve(ollama)
    clock = FakeClock()
    exporter = make_exporter(nvml=True, cache=1.0, clock=clock)
    exporter.scrape()
    exporter.scrape()
    assert fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == 2  # one read of each GPU
    clock.advance(1.0)
    exporter.scrape()
    assert fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == 4
    assert value(exporter.scrape(), "nvml_read_timeouts_total") == 0


def test_no_nvml_option_leaves_gpu_families_out(ollama, make_exporter, fake_nvml):
    serve(ollama)
    text = make_exporter(nvml=False).scrape()
    assert value(text, "nvml_up") is None and series(text, "gpu_info") == []
    assert fake_nvml.calls["nvmlInit"] == 0


# --- the exposition as a whole -----------------------------------------------------------------


def test_every_spec_is_exposed_and_nothing_else(ollama, make_exporter, monkeypatch):
    # Every family appears on a box with MIG, a failing field, an XID and a runner whose
    # command line names its model; the series of each are tested elsewhere.
    from tests.test_exporter_runners import BLOB_QWEN, runner_cmdline, show_handler
    fake = FakeNvml(fleet_gpus()).install(monkeypatch)
    fake.gpus[2].fail["nvmlDeviceGetPerformanceState"] = pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
    serve(ollama)
    ollama.expect_request("/api/show", method="POST").respond_with_handler(show_handler)
    exporter = make_exporter(nvml=True, xid_events=False, cmdline={4242: runner_cmdline(BLOB_QWEN)}.get)
    watcher = exporter.xid_watcher = XidWatcher(exporter.nvml_errors)
    watcher.open()
    fake.inject_xid(0, 79)
    watcher.poll(0)
    exporter.collector._nvml_counters = NvmlCounters(exporter.nvml_errors.snapshot, lambda: 0, watcher.counts)
    text = exporter.scrape()
    watcher.release()
    exporter.xid_watcher = None
    exposed = {name for name, _ in samples(text)}
    allowed = {s for spec in em.ALL for s in spec.series}
    assert exposed <= allowed, exposed - allowed
    assert {spec.name for spec in em.ALL} <= exposed
    specs = {spec.base: spec for spec in em.ALL}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created") and family.name[: -len("_created")] in specs:
            continue  # a counter's creation time, exposed as a gauge by the text format
        spec = specs[family.name]
        assert family.type == spec.type and family.documentation == spec.help


def test_exposition_passes_promtool(ollama, make_exporter, fake_nvml):
    promtool = require_binary("promtool")
    serve(ollama)
    text = make_exporter(nvml=True).scrape()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


def call_app(exporter: Exporter, path: str = "/metrics", query: str = "", **headers: str):
    reply: dict = {}

    def start_response(status, response_headers):
        reply["status"], reply["headers"] = status, dict(response_headers)

    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET",
               **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
    reply["body"] = b"".join(exporter.wsgi_app(environ, start_response))
    return reply


def test_metrics_negotiation_gzip_and_filters(ollama, make_exporter):
    serve(ollama)
    exporter = make_exporter()
    reply = call_app(exporter, accept=PROMETHEUS_ACCEPT, accept_encoding="gzip")
    assert reply["status"] == "200 OK"
    assert reply["headers"]["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply["headers"]["Content-Encoding"] == "gzip"
    text = gzip.decompress(reply["body"]).decode()
    assert text.endswith("# EOF\n") and "# UNIT ollama_model_vram_bytes bytes" in text

    plain = call_app(exporter)
    assert plain["headers"]["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(plain["body"].decode(), "ollama_model_vram_ratio", model="qwen2.5:72b") == 0.5

    only_up = call_app(exporter, query="name[]=ollama_up").get("body").decode()
    assert {name for name, _ in samples(only_up)} == {"ollama_up"}
    assert call_app(exporter, "/healthz")["body"] == b"ok\n"
    assert call_app(exporter, "/other")["status"].startswith("404")


@pytest.mark.parametrize("url, shown", [
    ("https://user:secret@ollama.internal:443/base", "https://ollama.internal:443/base"),
    ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
])
def test_logged_ollama_url_never_carries_a_password(url, shown):
    assert without_credentials(url) == shown


def test_every_exporter_metric_is_documented_with_its_type():
    text = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    section = text.split("## Exporter", 1)[1]
    for spec in em.ALL:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"{spec.name} missing from docs/metrics.md ## Exporter"
        assert row.split("|")[2].strip() == spec.type, spec.name
