"""Several Ollama servers behind the proxy, over real sockets: simulators with their own
installed models (and a pytest-httpserver that answers as a sick Ollama would), the union
of their listings, a model installed nowhere, failover before the first byte and never
after, busy 503s, ejection and recovery, labels that tell the truth, and a chaos test that
kills one of two servers under 200 concurrent streams and counts exactly which failed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from proxy.simulator.app import running_simulator
from tests.conftest import free_port, running_proxy, wait_for

HELLO = [{"role": "user", "content": "hello"}]
FAST = {"ttft_seconds": 0.01, "tokens_per_second": 500, "output_tokens": 5, "cold_load_seconds": 0,
        "keep_alive_seconds": -1}
SLOW = {"ttft_seconds": 0.05, "tokens_per_second": 10, "output_tokens": 15, "cold_load_seconds": 0,
        "keep_alive_seconds": -1}


def fleet_settings(**servers: str) -> dict:
    return {"upstreams": {name: {"url": url} for name, url in servers.items()}, "access_log": False,
            "discovery_interval": 0.2, "health_interval": 0.2, "health_timeout": 0.5}


def chat(p, model: str, session: str | None = None, stream: bool = False, path: str = "/api/chat"):
    headers = {"X-Session-ID": session} if session else {}
    body = {"model": model, "messages": HELLO, "stream": stream}
    return requests.post(f"{p.url}{path}", json=body, headers=headers, timeout=30)


def discovered(p, server: str, model: str) -> bool:
    return p.value("ollama_proxy_upstream_model_loaded", upstream=server) >= 0 and \
        any(m["name"] == model for m in requests.get(f"{p.url}/api/tags", timeout=5).json()["models"])


@pytest.fixture
def two():
    with running_simulator(profiles={"qwen3:8b": FAST, "llama3.2:latest": FAST}) as a, \
            running_simulator(profiles={"qwen3:8b": FAST, "gemma3:4b": FAST}) as b:
        yield a, b


def test_listings_are_the_union_and_each_model_goes_where_it_is_installed(two):
    a, b = two
    with running_proxy(fleet_settings(gpu1=a.url, gpu2=b.url)) as p:
        wait_for(lambda: discovered(p, "gpu2", "gemma3:4b"), 10, "discovery of both servers")
        names = {m["name"] for m in requests.get(f"{p.url}/api/tags").json()["models"]}
        assert names == {"qwen3:8b", "llama3.2:latest", "gemma3:4b"}
        assert chat(p, "llama3.2").headers["X-Sidecar-Upstream"] == "gpu1"
        assert chat(p, "gemma3:4b").headers["X-Sidecar-Upstream"] == "gpu2"
        # a model loaded on one server is served there: no cold load elsewhere
        wait_for(lambda: p.value("ollama_proxy_upstream_model_loaded", upstream="gpu2", model="gemma3:4b") == 1, 10,
                 "discovery of the loaded model")
        loaded = {m["name"] for m in requests.get(f"{p.url}/api/ps").json()["models"]}
        assert {"llama3.2:latest", "gemma3:4b"} <= loaded
        assert p.value("ollama_proxy_route_requests_total", upstream="gpu2", error_type="none") == 1


def test_a_session_stays_on_its_server(two):
    a, b = two
    with running_proxy(fleet_settings(gpu1=a.url, gpu2=b.url)) as p:
        for sim in (a, b):  # load the model on both
            requests.post(f"{sim.url}/api/chat", json={"model": "qwen3:8b", "messages": HELLO, "stream": False})
        wait_for(lambda: p.value("ollama_proxy_upstream_model_loaded", model="qwen3:8b") == 2, 10, "discovery")
        served = {s: {chat(p, "qwen3:8b", s).headers["X-Sidecar-Upstream"] for _ in range(3)}
                  for s in (f"user-{i}" for i in range(20))}
        assert all(len(v) == 1 for v in served.values())  # sticky
        assert {next(iter(v)) for v in served.values()} == {"gpu1", "gpu2"}  # spread


def test_a_model_installed_nowhere_is_ollamas_404_in_the_clients_protocol(two):
    a, b = two
    with running_proxy(fleet_settings(gpu1=a.url, gpu2=b.url)) as p:
        wait_for(lambda: discovered(p, "gpu2", "gemma3:4b"), 10, "discovery")
        r = chat(p, "nowhere:1b")
        assert r.status_code == 404 and r.json() == {"error": 'model "nowhere:1b" not found, try pulling it first'}
        r = chat(p, "nowhere:1b", path="/v1/chat/completions")
        assert r.status_code == 404 and r.json()["error"]["message"].startswith('model "nowhere:1b" not found')
        assert p.value("ollama_proxy_requests_total", model="unknown", error_type="model_not_found") == 2


def test_model_management_with_several_servers_names_its_target(two):
    a, b = two
    with running_proxy(fleet_settings(gpu1=a.url, gpu2=b.url)) as p:
        r = requests.post(f"{p.url}/api/delete", json={"model": "qwen3:8b"})
        assert r.status_code == 400 and "X-Sidecar-Upstream" in r.json()["error"]
        r = requests.delete(f"{p.url}/api/delete?upstream=gpu9", json={"model": "qwen3:8b"})
        assert r.status_code == 400 and "no upstream named 'gpu9'" in r.json()["error"]
        r = requests.post(f"{p.url}/api/show", json={"model": "gemma3:4b"}, headers={"X-Sidecar-Upstream": "gpu2"})
        assert r.status_code == 200


def sick_ollama(httpserver, chat_status: int, body: dict, installed=("qwen3:8b",)) -> None:
    tags = {"models": [{"name": m, "model": m} for m in installed]}
    httpserver.expect_request("/api/tags").respond_with_json(tags)
    # it says the model is loaded, so the balancer prefers it
    httpserver.expect_request("/api/ps").respond_with_json({"models": [{"name": m, "model": m, "size_vram": 1}
                                                                       for m in installed]})
    httpserver.expect_request("/api/version").respond_with_json({"version": "0.12.6"})
    httpserver.expect_request("/api/chat").respond_with_json(body, status=chat_status)


@pytest.mark.parametrize("status,body,reason", [
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, "busy"),
    (500, {"error": "llama runner process has terminated: exit status 2"}, "server_error"),
])
def test_a_busy_or_failing_server_hands_the_request_to_the_next_before_the_first_byte(httpserver, status, body,
                                                                                       reason):
    sick_ollama(httpserver, status, body)
    with running_simulator(profiles={"qwen3:8b": FAST}) as good, \
            running_proxy(dict(fleet_settings(sick=httpserver.url_for("/").rstrip("/"), good=good.url))) as p:
        wait_for(lambda: p.value("ollama_proxy_upstream_up", upstream="sick") == 1, 5, "discovery")
        outcomes = [chat(p, "qwen3:8b", f"s{i}") for i in range(12)]
        assert all(r.status_code == 200 and r.headers["X-Sidecar-Upstream"] == "good" for r in outcomes)
        assert p.value("ollama_proxy_upstream_retries_total", upstream="sick", reason=reason) >= 1
        # three server errors in a row eject the sick one: later requests go straight to the good one
        assert p.value("ollama_proxy_upstream_ejections_total", upstream="sick", reason="errors") >= 1


def test_client_errors_are_never_retried(httpserver):
    sick_ollama(httpserver, 400, {"error": "invalid options: num_ctx must be positive"})
    with running_simulator(profiles={"qwen3:8b": FAST}) as good, \
            running_proxy(dict(fleet_settings(strict=httpserver.url_for("/").rstrip("/"), other=good.url),
                               retries=1)) as p:
        wait_for(lambda: p.value("ollama_proxy_upstream_up", upstream="strict") == 1, 5, "discovery")
        results = {chat(p, "qwen3:8b", f"s{i}").status_code for i in range(10)}
        assert 400 in results  # the sessions that landed on `strict` got its answer, not a retry
        assert p.value("ollama_proxy_upstream_retries_total") == 0


def test_an_installed_model_that_cannot_load_keeps_its_label(httpserver):
    """Ollama answers 500 for an installed model it cannot load: the on-call must see
    which one, not `unknown`."""
    sick_ollama(httpserver, 500, {"error": "llama runner process has terminated: exit status 2"},
                installed=("broken:7b",))
    with running_proxy(dict(fleet_settings(only=httpserver.url_for("/").rstrip("/"),
                                           other=httpserver.url_for("/").rstrip("/") + "/"), retries=0)) as p:
        wait_for(lambda: any(m["name"] == "broken:7b" for m in requests.get(f"{p.url}/api/tags").json()["models"]),
                 5, "discovery")
        for _ in range(3):
            assert chat(p, "broken:7b").status_code == 500
        assert p.value("ollama_proxy_requests_total", model="broken:7b", error_type="upstream_5xx") == 3
        assert p.value("ollama_proxy_requests_total", model="unknown") == 0


def test_a_dead_server_is_failed_over_and_ejected(two):
    _, b = two
    with running_proxy(fleet_settings(gpu1=f"http://127.0.0.1:{free_port()}", gpu2=b.url)) as p:
        results = [chat(p, "qwen3:8b", f"user-{i}") for i in range(20)]
        assert all(r.status_code == 200 and r.headers["X-Sidecar-Upstream"] == "gpu2" for r in results)
        assert p.value("ollama_proxy_upstream_retries_total", upstream="gpu1", reason="connect") >= 1
        assert p.value("ollama_proxy_upstream_ejections_total", upstream="gpu1") >= 1
        wait_for(lambda: p.value("ollama_proxy_upstream_up", upstream="gpu1") == 0, 5, "the health check")


def test_a_server_that_comes_back_is_used_again(two):
    _, b = two
    port = free_port()
    with running_proxy(fleet_settings(gpu1=f"http://127.0.0.1:{port}", gpu2=b.url)) as p:
        wait_for(lambda: p.value("ollama_proxy_upstream_up", upstream="gpu1") == 0, 5, "gpu1 to be seen down")
        with running_simulator(profiles={"qwen3:8b": FAST}, port=port) as a:
            wait_for(lambda: p.value("ollama_proxy_upstream_up", upstream="gpu1") == 1, 10, "gpu1 to be seen up")
            for sim in (a, b):  # the model loaded on both: sessions spread by affinity
                requests.post(f"{sim.url}/api/chat", json={"model": "qwen3:8b", "messages": HELLO, "stream": False})
            wait_for(lambda: p.value("ollama_proxy_upstream_model_loaded", model="qwen3:8b") == 2, 10, "discovery")
            served = {chat(p, "qwen3:8b", f"user-{i}").headers["X-Sidecar-Upstream"] for i in range(30)}
            assert served == {"gpu1", "gpu2"}


def simulator_process(tmp_path, name: str, profiles: dict) -> tuple[subprocess.Popen, str]:
    """A simulator in a process of its own, so it can die as a server dies (SIGKILL)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"models": profiles}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "simulate", "--listen", f"127.0.0.1:{port}",
                             "--profiles", str(path), "--parallel", "200"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/api/version", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    wait_for(ready, 20, f"simulator {name}")
    return proc, url


def test_chaos_killing_one_of_two_servers_under_200_streams_fails_only_its_streams_in_flight(tmp_path):
    profiles = {"qwen3:8b": SLOW}
    dying, a = simulator_process(tmp_path, "gpu1", profiles)
    survivor, b = simulator_process(tmp_path, "gpu2", profiles)
    try:
        for url in (a, b):
            requests.post(f"{url}/api/chat", json={"model": "qwen3:8b", "messages": HELLO, "stream": False})
        with running_proxy(fleet_settings(gpu1=a, gpu2=b)) as p:
            wait_for(lambda: p.value("ollama_proxy_upstream_model_loaded", model="qwen3:8b") == 2, 10, "discovery")
            killed = threading.Event()
            first_half = threading.Barrier(101)

            def one(i: int) -> dict:
                if i >= 100:
                    killed.wait(30)  # the second half starts after gpu1 died
                with requests.post(f"{p.url}/api/chat", json={"model": "qwen3:8b", "messages": HELLO},
                                   headers={"X-Session-ID": f"user-{i}"}, stream=True, timeout=60) as r:
                    lines = r.iter_lines()
                    first = next(lines, b"")
                    if i < 100:
                        first_half.wait(30)
                    rest = list(lines)
                return {"i": i, "status": r.status_code, "upstream": r.headers.get("X-Sidecar-Upstream"),
                        "lines": [first, *rest]}

            with ThreadPoolExecutor(200) as pool:
                futures = [pool.submit(one, i) for i in range(200)]
                first_half.wait(30)  # 100 streams have begun, none has finished
                dying.kill()  # gpu1 dies with its streams in flight
                dying.wait(10)
                killed.set()
                results = [f.result() for f in futures]
    finally:
        for proc in (dying, survivor):
            proc.kill()
            proc.wait(10)
    failed = [r for r in results if json.loads(r["lines"][-1]).get("done") is not True]
    on_dead = [r for r in results[:100] if r["upstream"] == "gpu1"]
    assert on_dead and len(on_dead) < 100  # the sessions were spread over both servers
    # exactly the streams in flight on gpu1 failed, each ending with an in-protocol error line
    assert {r["i"] for r in failed} == {r["i"] for r in on_dead}
    assert all("error" in json.loads(r["lines"][-1]) for r in failed)
    # every request that had not started streaming succeeded, on gpu2
    later = results[100:]
    assert all(r["status"] == 200 and r["upstream"] == "gpu2" and json.loads(r["lines"][-1])["done"] is True
               for r in later)
