"""Canary splits: sticky, proportional, monotonic; aliases rewritten; switches cut no stream."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from proxy.config import parse_config
from proxy.control.routing import RouteState, RouteTable, bucket, choose_arm
from proxy.simulator import running_simulator
from tests.ollama_fake import chat_chunks, ndjson, slow, stream_response

HELLO = [{"role": "user", "content": "hello"}]
ROUTES = {"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 20}}


def test_sticky_split_matches_the_weight_over_10000_sessions():
    state = RouteState("chat", "s", "c", 20.0)
    arms = [choose_arm(state, f"session-{i}") for i in range(10_000)]
    share = arms.count("canary") / len(arms)
    assert abs(share - 0.20) < 0.015  # ~3.7 standard deviations
    assert arms == [choose_arm(state, f"session-{i}") for i in range(10_000)]  # sticky


def test_weight_changes_only_move_sessions_in_one_direction():
    keys = [f"s{i}" for i in range(5000)]
    before = {k: choose_arm(RouteState("chat", "s", "c", 20.0), k) for k in keys}
    up = {k: choose_arm(RouteState("chat", "s", "c", 35.5), k) for k in keys}
    down = {k: choose_arm(RouteState("chat", "s", "c", 5.0), k) for k in keys}
    assert all(up[k] == "canary" for k in keys if before[k] == "canary")  # raising never reshuffles
    assert all(down[k] == "stable" for k in keys if before[k] == "stable")  # lowering never adds canary
    assert sum(v == "canary" for v in up.values()) > sum(v == "canary" for v in before.values()) \
        > sum(v == "canary" for v in down.values())


def test_unkeyed_requests_are_a_weighted_draw_and_rollback_means_zero():
    state = RouteState("chat", "s", "c", 30.0)
    share = sum(choose_arm(state, None) == "canary" for _ in range(10_000)) / 10_000
    assert abs(share - 0.30) < 0.02
    rolled = RouteState("chat", "s", "c", 0.0, rolled_back=True, weight_before_rollback=30.0)
    assert {choose_arm(rolled, f"k{i}") for i in range(1000)} == {"stable"}
    assert 0 <= bucket("chat", "x") < 100 and bucket("chat", "x") != bucket("other", "x")


def test_route_decisions_pick_model_and_upstream():
    cfg = parse_config({"upstream": "http://a:1", "routes": ROUTES,
                        "models": {"qwen3:8b-ft": {"upstream": "http://gpu2:11434"}}}, environ={})
    table = RouteTable(cfg)
    decisions = {table.decide("chat", f"k{i}") for i in range(200)}
    assert {(d.arm, d.model, d.upstream) for d in decisions} == {
        ("stable", "qwen3:8b", "http://a:1"), ("canary", "qwen3:8b-ft", "http://gpu2:11434")}
    direct = table.decide("llama3.2", "k")
    assert (direct.route, direct.arm, direct.model) == ("none", "direct", "llama3.2")


def _echo_model_stream(delay: float = 0.0):
    def handler(request):
        model = json.loads(request.get_data())["model"]
        chunks = [ndjson([c]) for c in chat_chunks(model, ["a", "b", "c"])]
        return stream_response(slow(chunks, delay) if delay else chunks)
    return handler


def test_alias_is_rewritten_and_labelled_with_route_and_arm(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(_echo_model_stream())
    with proxy_for(routes=ROUTES) as p:
        served = {}
        for i in range(60):
            r = requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": []},
                              headers={"X-Session-ID": f"user{i}"})
            assert r.status_code == 200
            first = json.loads(r.content.splitlines()[0])
            assert first["model"] == r.headers["X-Sidecar-Model"]  # the upstream saw the real model
            assert r.headers["X-Sidecar-Route"] == "chat"
            served[r.headers["X-Sidecar-Arm"]] = r.headers["X-Sidecar-Model"]
            again = requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": []},
                                  headers={"X-Session-ID": f"user{i}"})
            assert again.headers["X-Sidecar-Arm"] == r.headers["X-Sidecar-Arm"]  # sticky
        assert served == {"stable": "qwen3:8b", "canary": "qwen3:8b-ft"}
        stable = p.value("ollama_proxy_requests_total", route="chat", arm="stable", model="qwen3:8b")
        canary = p.value("ollama_proxy_requests_total", route="chat", arm="canary", model="qwen3:8b-ft")
        assert stable + canary == 120 and canary > 0
        assert p.value("ollama_proxy_route_canary_weight", route="chat") == 20
        assert p.value("ollama_proxy_route_info", route="chat", stable="qwen3:8b", canary="qwen3:8b-ft") == 1


def test_tags_and_models_list_route_aliases(httpserver, proxy_for):
    httpserver.expect_request("/api/tags").respond_with_json({"models": [
        {"name": "qwen3:8b", "model": "qwen3:8b", "size": 5, "digest": "d", "details": {"family": "qwen3"}}]})
    httpserver.expect_request("/v1/models").respond_with_json(
        {"object": "list", "data": [{"id": "qwen3:8b", "object": "model", "created": 1, "owned_by": "library"}]})
    with proxy_for(routes=ROUTES) as p:
        tags = requests.get(f"{p.url}/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["qwen3:8b", "chat"]
        assert tags[1]["details"] == {"family": "qwen3"}  # the alias looks like its stable model
        ids = [m["id"] for m in requests.get(f"{p.url}/v1/models").json()["data"]]
        assert ids == ["qwen3:8b", "chat"]


def test_hot_switch_under_200_concurrent_streams_cuts_none(proxy_for):
    slow_model = {"ttft_seconds": 0.05, "tokens_per_second": 20, "output_tokens": 10, "cold_load_seconds": 0,
                  "keep_alive_seconds": -1}
    profiles = {"qwen3:8b": slow_model, "qwen3:8b-ft": slow_model}
    with running_simulator(profiles=profiles) as sim, \
            proxy_for(upstream=sim.url, routes={"chat": dict(ROUTES["chat"], canary_weight=50)}) as p:
        started = threading.Barrier(201)

        def one(i: int) -> tuple[str, str, list[bytes]]:
            with requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": HELLO},
                               headers={"X-Session-ID": f"u{i}"}, stream=True, timeout=30) as r:
                lines = r.iter_lines()
                first = next(lines)
                started.wait(20)
                return r.headers["X-Sidecar-Arm"], r.headers["X-Sidecar-Model"], [first, *lines]

        with ThreadPoolExecutor(200) as pool:
            futures = [pool.submit(one, i) for i in range(200)]
            started.wait(20)  # every stream has begun and none has finished
            assert requests.post(f"{p.url}/admin/routes/chat/rollback").status_code == 200
            results = [f.result() for f in futures]
        for arm, model, lines in results:
            objs = [json.loads(x) for x in lines]
            assert objs[-1]["done"] is True and objs[-1]["eval_count"] == 10  # every stream finished
            assert {o["model"] for o in objs} == {model}  # on the model it started on
        assert {arm for arm, _, _ in results} == {"stable", "canary"}
        assert p.value("ollama_proxy_requests_total", route="chat", error_type="none") == 200
        after = requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": []},
                              headers={"X-Session-ID": "u1"})
        assert after.headers["X-Sidecar-Arm"] == "stable"


@pytest.mark.parametrize("weight", [0, 100])
def test_weight_extremes(weight):
    state = RouteState("chat", "s", "c", float(weight))
    assert {choose_arm(state, f"k{i}") for i in range(500)} == {"stable" if weight == 0 else "canary"}



def test_route_series_exist_at_zero_before_the_first_request(httpserver, proxy_for):
    # rate() and increase() cannot see the first increment of a series born at 1: the
    # canary's first failures would be invisible to the rollback alert.
    with proxy_for(routes=ROUTES) as p:
        scraped = p.scrape()
        for arm, model in (("stable", "qwen3:8b"), ("canary", "qwen3:8b-ft")):
            for error_type in ("none", "upstream_5xx", "timeout", "connect", "stream_interrupted"):
                key = ("ollama_proxy_route_requests_total",
                       tuple(sorted({"route": "chat", "arm": arm, "model": model, "upstream": "default",
                                         "error_type": error_type}.items())))
                assert scraped[key] == 0
        for reason in ("admin", "config", "breaker", "reconcile", "promote", "resume"):
            assert ("ollama_proxy_route_changes_total", (("reason", reason), ("route", "chat"))) in scraped
