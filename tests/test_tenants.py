"""Tenants: attribution, limits and their refusals, keys (digests, rotation, the old form),
over real sockets with a faithful fake Ollama behind the proxy."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from proxy.config import ConfigError, TenantLimits, load_config, parse_config
from proxy.tenants.limits import Usage
from tests.conftest import running_proxy, wait_for
from tests.ollama_fake import chat_chunks, generate_chunks, ndjson, sse_chat
from tests.redis_server import RedisServer

NS = 1_000_000_000
FINAL = {"prompt_eval_count": 12, "eval_count": 3, "load_duration": int(0.5 * NS),
         "prompt_eval_duration": int(0.25 * NS), "eval_duration": int(1.0 * NS), "total_duration": 2 * NS}
GPU_SECONDS = 1.75  # what FINAL says the GPU spent


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class FakeOllama:
    """Answers every instrumented endpoint as Ollama does, streamed or not; counts what it
    receives per key it should never see, and holds replies while ``gate`` is closed."""

    def __init__(self) -> None:
        self.seen_authorization: list[str | None] = []
        self.in_flight = 0
        self.most_in_flight: dict[str, int] = {}
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def handle(self, request: Request) -> Response:
        body = json.loads(request.get_data() or b"{}")
        model, path = body.get("model", ""), request.path
        tag = (body.get("messages") or [{}])[0].get("content", "") if isinstance(body.get("messages"), list) else ""
        with self.lock:
            self.seen_authorization.append(request.headers.get("Authorization"))
            self.in_flight += 1
            self.most_in_flight[tag] = max(self.most_in_flight.get(tag, 0), self.in_flight)
        try:
            self.gate.wait(10)
            return self._reply(path, model, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _reply(self, path: str, model: str, body: dict[str, Any]) -> Response:
        stream = body.get("stream", path.startswith("/api/")) is not False
        if path == "/api/chat":
            chunks = chat_chunks(model, ["Hi", "!"], final=dict(FINAL))
        elif path == "/api/generate":
            chunks = generate_chunks(model, ["Hi", "!"], final=dict(FINAL))
        elif path == "/api/embed":  # Ollama's embed reply: its load and the prompt's count, no evaluation times
            return Response(json.dumps({"model": model, "embeddings": [[0.1, 0.2]], "total_duration": 2 * NS,
                                        "load_duration": FINAL["load_duration"], "prompt_eval_count": 12}),
                            content_type="application/json")
        elif path == "/api/embeddings":  # the legacy endpoint: a vector, no counts
            return Response(json.dumps({"embedding": [0.1, 0.2]}), content_type="application/json")
        elif path == "/v1/embeddings":
            return Response(json.dumps({"object": "list", "model": model, "data": [
                {"object": "embedding", "embedding": [0.1, 0.2], "index": 0}],
                "usage": {"prompt_tokens": 12, "total_tokens": 12}}), content_type="application/json")
        elif path == "/v1/completions":
            if stream:
                return Response(sse_chat(model, ["Hi", "!"], include_usage=True, prompt_tokens=12, kind="completion"),
                                content_type="text/event-stream")
            return Response(json.dumps({"id": "c1", "object": "text_completion", "model": model, "choices": [
                {"index": 0, "text": "Hi!", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
                content_type="application/json")
        elif path == "/v1/chat/completions":
            if stream:
                return Response(sse_chat(model, ["Hi", "!"], include_usage=True, prompt_tokens=12),
                                content_type="text/event-stream")
            return Response(json.dumps({"id": "c1", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
                content_type="application/json")
        else:
            return Response(json.dumps({"error": "unexpected"}), status=500, content_type="application/json")
        if stream:
            return Response(ndjson(chunks), content_type="application/x-ndjson")
        return Response(json.dumps(chunks[-1] | {"message": {"role": "assistant", "content": "Hi!"}}),
                        content_type="application/json")


@pytest.fixture
def httpserver():
    """Threaded, as Ollama answers requests side by side (the flood test holds some)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def fake(httpserver):
    ollama = FakeOllama()
    for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/chat/completions",
                 "/v1/completions", "/v1/embeddings"):
        httpserver.expect_request(path).respond_with_handler(ollama.handle)
    httpserver.expect_request("/api/version").respond_with_json({"version": "0.12.6"})
    return ollama


def settings(httpserver, tenants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"upstream": httpserver.url_for("/").rstrip("/"), "access_log": False,
            "auth": {"tenants": tenants}, **extra}


TWO = {"support-bot": {"keys": ["sk-support-1"]}, "analytics": {"keys": [digest("sk-analytics-1")]}}


def chat(url: str, key: str, *, stream: bool = True, tag: str = "q") -> requests.Response:
    return requests.post(f"{url}/api/chat", headers=bearer(key), timeout=15,
                         json={"model": "llama3:8b", "stream": stream, "messages": [{"role": "user", "content": tag}]})


# --- attribution -----------------------------------------------------------------------------------------

# (path, body, tokens, GPU seconds): Ollama's durations are its GPU time; an embedding reports only
# its load; the OpenAI-compatible API reports none; the fake's stream counts one token a word.
CALLS = [
    ("/api/chat", {"messages": [{"role": "user", "content": "q"}]}, 15, GPU_SECONDS),
    ("/api/chat", {"messages": [{"role": "user", "content": "q"}], "stream": False}, 15, GPU_SECONDS),
    ("/api/generate", {"prompt": "q"}, 15, GPU_SECONDS),
    ("/api/generate", {"prompt": "q", "stream": False}, 15, GPU_SECONDS),
    ("/api/embed", {"input": "q"}, 12, 0.5),
    ("/api/embeddings", {"prompt": "q"}, 0, 0.0),
    ("/v1/completions", {"prompt": "q", "stream": True}, 14, 0.0),
    ("/v1/completions", {"prompt": "q"}, 15, 0.0),
    ("/v1/embeddings", {"input": "q"}, 12, 0.0),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "stream": True}, 14, 0.0),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}]}, 15, 0.0),
]


@pytest.mark.parametrize("path, body, tokens, gpu", CALLS)
def test_every_instrumented_endpoint_is_attributed_to_its_tenant(httpserver, fake, path, body, tokens, gpu):
    with running_proxy(settings(httpserver, TWO)) as p:
        resp = requests.post(f"{p.url}{path}", headers=bearer("sk-analytics-1"), json={"model": "llama3:8b", **body},
                             timeout=15)
        assert resp.status_code == 200, resp.text
        wait_for(lambda: p.value("ollama_proxy_tenant_requests_total", tenant="analytics") == 1, 5, "attribution")
        assert p.value("ollama_proxy_tenant_requests_total", tenant="analytics", route="none",
                       model="llama3:8b", error_type="none") == 1
        assert p.value("ollama_proxy_tenant_requests_total", tenant="support-bot") == 0
        got = p.value("ollama_proxy_tenant_tokens_total", tenant="analytics", model="llama3:8b")
        assert got == tokens
        assert p.value("ollama_proxy_tenant_gpu_seconds_total", tenant="analytics") == pytest.approx(gpu)
        # the key reached neither Ollama nor /metrics
        assert all(a is None for a in fake.seen_authorization)
        assert "sk-analytics-1" not in requests.get(f"{p.url}/metrics", timeout=5).text


def test_the_old_api_keys_form_is_tenant_default_and_bad_keys_get_401(httpserver, fake, caplog):
    caplog.set_level("INFO", logger="ollama_sidecar.access")
    with running_proxy({"upstream": httpserver.url_for("/").rstrip("/"), "access_log": True,
                        "auth": {"api_keys": ["old-key"]}}) as p:
        assert chat(p.url, "old-key").status_code == 200
        wait_for(lambda: '"tenant": "default"' in caplog.text, 5, "the access log line with its tenant")
        assert "old-key" not in caplog.text
        assert p.value("ollama_proxy_tenant_requests_total", tenant="default") == 1
        for headers in ({}, bearer("nope"), {"Authorization": "Basic b2xkLWtleQ=="}):
            resp = requests.post(f"{p.url}/api/chat", headers=headers, json={"model": "m"}, timeout=5)
            assert resp.status_code == 401 and "gateway token missing or invalid" in resp.json()["error"]
        openai = requests.post(f"{p.url}/v1/chat/completions", headers=bearer("nope"), json={"model": "m"}, timeout=5)
        assert openai.status_code == 401 and openai.json()["error"]["code"] == "invalid_api_key"


def test_keys_rotate_by_reload(httpserver, fake, tmp_path):
    keys = tmp_path / "support.keys"
    keys.write_text("# support-bot\nsk-old\n")
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps(settings(httpserver, {"support-bot": {"keys_file": str(keys)}}, reload_interval=0.1)))
    with running_proxy({}, config=load_config(str(config), environ={})) as p:
        assert chat(p.url, "sk-old").status_code == 200
        keys.write_text(f"{digest('sk-new')}\n")
        time.sleep(0.05)
        config.touch()
        wait_for(lambda: chat(p.url, "sk-new").status_code == 200, 5, "the new key to work after the reload")
        assert chat(p.url, "sk-old").status_code == 401
        assert p.value("ollama_proxy_tenant_requests_total", tenant="support-bot", error_type="none") == 2


# --- limits --------------------------------------------------------------------------------------------------

def test_requests_per_minute_refused_in_both_protocols_with_retry_after(httpserver, fake):
    tenants = {"batch": {"keys": ["sk-batch"], "limits": {"requests_per_minute": 3}}}
    with running_proxy(settings(httpserver, tenants)) as p:
        for _ in range(3):
            assert chat(p.url, "sk-batch").status_code == 200
        seen = len(fake.seen_authorization)
        native = chat(p.url, "sk-batch")
        assert native.status_code == 429
        assert "requests_per_minute" in native.json()["error"] and "3 requests per minute" in native.json()["error"]
        assert 1 <= int(native.headers["Retry-After"]) <= 60
        openai = requests.post(f"{p.url}/v1/chat/completions", headers=bearer("sk-batch"), timeout=5,
                               json={"model": "llama3:8b", "messages": [{"role": "user", "content": "q"}]})
        assert openai.status_code == 429 and openai.headers["Retry-After"]
        error = openai.json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert len(fake.seen_authorization) == seen  # nothing reached Ollama
        assert p.value("ollama_proxy_tenant_limited_total", tenant="batch", limit="requests_per_minute") == 2
        assert p.value("ollama_proxy_tenant_requests_total", tenant="batch", error_type="rate_limited") == 2
        assert p.value("ollama_proxy_requests_total", error_type="rate_limited") == 2


def test_token_limits_refuse_from_the_next_request_once_spent(httpserver, fake):
    tenants = {"batch": {"keys": ["sk-batch"], "limits": {"tokens_per_minute": 20, "tokens_per_day": 1000}},
               "daily": {"keys": ["sk-daily"], "limits": {"tokens_per_day": 20}}}
    with running_proxy(settings(httpserver, tenants)) as p:
        assert chat(p.url, "sk-batch").status_code == 200  # 15 tokens: under 20
        assert chat(p.url, "sk-batch").status_code == 200  # 30 now: this one was admitted at 15
        refused = chat(p.url, "sk-batch")
        assert refused.status_code == 429 and "20 tokens per minute" in refused.json()["error"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert chat(p.url, "sk-daily").status_code == 200
        assert chat(p.url, "sk-daily").status_code == 200
        day = chat(p.url, "sk-daily")
        assert day.status_code == 429 and "tokens per day (UTC)" in day.json()["error"]
        midnight = 86400 - time.time() % 86400
        assert abs(int(day.headers["Retry-After"]) - midnight) < 5
        openai = requests.post(f"{p.url}/v1/chat/completions", headers=bearer("sk-daily"), timeout=5,
                               json={"model": "llama3:8b", "messages": [{"role": "user", "content": "q"}]})
        assert openai.json()["error"]["type"] == "tokens"
        wait_for(lambda: p.value("ollama_proxy_tenant_usage", tenant="daily", limit="tokens_per_day") == 30, 3,
                 "the usage gauge")
        assert p.value("ollama_proxy_tenant_limit", tenant="daily", limit="tokens_per_day") == 20


def test_a_flood_from_one_tenant_leaves_the_other_unharmed(httpserver, fake):
    """The batch tenant (concurrent 2) sends 40 requests at once while Ollama holds every
    reply; support-bot's requests are all served, and Ollama never holds more than 2 of
    batch's at once: the rest were refused at the door, not queued in front of others."""
    tenants = {"batch": {"keys": ["sk-batch"], "limits": {"concurrent": 2}},
               "support-bot": {"keys": ["sk-support"]}}
    with running_proxy(settings(httpserver, tenants)) as p:
        fake.gate.clear()
        results: dict[str, list[int]] = {"batch": [], "support": []}
        threads = [threading.Thread(target=lambda: results["batch"].append(chat(p.url, "sk-batch", tag="batch")
                                                                           .status_code)) for _ in range(40)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results["batch"]) >= 38, 10, "batch's excess to be refused at once")
        support = [threading.Thread(target=lambda: results["support"].append(
            chat(p.url, "sk-support", tag="support").status_code)) for _ in range(5)]
        for t in support:
            t.start()
        wait_for(lambda: fake.most_in_flight.get("support", 0) >= 1, 5, "support-bot's requests to reach Ollama")
        fake.gate.set()
        for t in threads + support:
            t.join(15)
        assert results["support"] == [200] * 5
        assert sorted(results["batch"]).count(200) == 2 and results["batch"].count(429) == 38
        assert fake.most_in_flight["batch"] <= 2
        assert p.value("ollama_proxy_tenant_limited_total", tenant="batch", limit="concurrent") == 38
        assert p.value("ollama_proxy_tenant_limited_total", tenant="support-bot") == 0


# --- config ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth, message", [
    ({"tenants": {"a": {"keys": ["k"]}, "b": {"keys": [digest("k")]}}}, "a key of tenant 'b' is also a key of tenant 'a'"),
    ({"api_keys": ["k"], "tenants": {"default": {"keys": ["x"]}}}, "auth.tenants.default"),
    ({"tenants": {"bad name!": {"keys": ["k"]}}}, "a tenant name is"),
    ({"tenants": {"a": {}}}, "has no keys"),
    ({"tenants": {"a": {"keys": ["k"], "limits": {"concurrent": 0}}}}, "auth.tenants.a.limits.concurrent"),
    ({"tenants": {"a": {"keys": ["k"], "limits": {"per_hour": 5}}}}, "auth.tenants.a.limits.per_hour"),
])
def test_bad_tenant_config_names_its_key_never_the_key(auth, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")) as err:
        parse_config({"auth": auth}, environ={})
    assert "'k'" not in str(err.value)


def test_a_tenant_key_may_be_given_as_its_digest_only():
    config = parse_config({"auth": {"tenants": {"a": {"keys": [digest("sk-a")]}}}}, environ={})
    assert config.tenants["a"].digests == {hashlib.sha256(b"sk-a").digest()}
    assert "sk-a" not in repr(config)


def test_a_minute_window_frees_its_oldest_request_first():
    usage = Usage(TenantLimits(requests_per_minute=2))
    assert usage.admit(0.0, 0.0) is None and usage.admit(10.0, 10.0) is None
    refusal = usage.admit(20.0, 20.0)
    assert refusal is not None and refusal.retry_after == 40  # the request at 0 leaves the window at 60
    assert usage.admit(60.5, 60.5) is None


# --- shared through Redis ---------------------------------------------------------------------------------------

def shared_settings(httpserver, redis: RedisServer, tenants: dict[str, Any]) -> dict[str, Any]:
    return settings(httpserver, tenants, state={"url": redis.url, "sync_interval": "0.1s", "lease": "2s"})


def test_limits_hold_for_the_deployment_not_for_each_replica(httpserver, fake, tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    tenants = {"batch": {"keys": ["sk-batch"], "limits": {"requests_per_minute": 6, "tokens_per_day": 60}}}
    try:
        with ExitStack() as stack:
            ps = [stack.enter_context(running_proxy(shared_settings(httpserver, redis, tenants))) for _ in range(3)]
            wait_for(lambda: all(requests.get(f"{p.url}/admin/routes", timeout=5).json()["state"]["up"]
                                 for p in ps), 10, "the replicas to join")
            for p in ps:
                for _ in range(2):
                    assert chat(p.url, "sk-batch").status_code == 200
            time.sleep(0.5)  # several syncs: every replica knows the others' use
            refused = [chat(p.url, "sk-batch") for p in ps]
            assert [r.status_code for r in refused] == [429, 429, 429]
            assert all("requests_per_minute" in r.json()["error"] for r in refused)
            # the day's 90 tokens are the deployment's: over 60 on every replica
            for p in ps:
                wait_for(lambda: p.value("ollama_proxy_tenant_usage", tenant="batch", limit="tokens_per_day") == 90,
                         3, "the shared day total")
            state = requests.get(f"{ps[0].url}/admin/routes", timeout=5).json()["state"]
            assert state["tenant_limits"] == "shared by 3 replica(s)"
            # Redis away: each replica enforces a third of the minute limit on its own count
            redis.kill()
            wait_for(lambda: all("share (1/3)" in (requests.get(f"{p.url}/admin/routes", timeout=5).json()["state"]
                                                   ["tenant_limits"] or "") for p in ps), 5, "each replica alone")
            assert all(chat(p.url, "sk-batch").status_code == 429 for p in ps)  # 2 each already: at its share
    finally:
        redis.stop()


def test_a_broken_count_from_ollama_never_costs_a_tenant_its_slot(httpserver, tmp_path):
    """Ollama answering a negative token count is no count; the tenant at concurrent: 1
    gets its slot back and is served again."""
    final = dict(FINAL, prompt_eval_count=-1)
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: Response(ndjson(chat_chunks("llama3:8b", ["Hi"], final=final)), content_type="application/x-ndjson"))
    tenants = {"batch": {"keys": ["sk-batch"], "limits": {"concurrent": 1}}}
    with running_proxy(settings(httpserver, tenants)) as p:
        assert [chat(p.url, "sk-batch").status_code for _ in range(3)] == [200, 200, 200]
        assert p.value("ollama_proxy_tenant_tokens_total", tenant="batch", kind="prompt") == 0
        assert p.value("ollama_proxy_tenant_tokens_total", tenant="batch", kind="completion") == 3 * 3


def test_a_daily_budget_survives_a_restart_of_a_single_proxy(httpserver, fake, tmp_path):
    tenants = {"daily": {"keys": ["sk-daily"], "limits": {"tokens_per_day": 20}}}
    state = {"state_file": str(tmp_path / "state.json")}
    with running_proxy(settings(httpserver, tenants, **state)) as p:
        assert [chat(p.url, "sk-daily").status_code for _ in range(3)] == [200, 200, 429]
    saved = json.loads((tmp_path / "state.json.tenants").read_text())
    assert saved["tenant_days"]["daily"]["tokens"] == 30
    with running_proxy(settings(httpserver, tenants, **state)) as p:
        refused = chat(p.url, "sk-daily")
        assert refused.status_code == 429 and "tokens per day" in refused.json()["error"]
