"""The Ollama simulator speaks Ollama's API faithfully (Ollama's docs/api.md; the handlers
in server/routes.go and the OpenAI-compatible layer in openai/openai.go) and its faults
look to a client exactly like Ollama's: the e2e test, the demo and the benchmarks rely on it.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import subprocess
import sys
import time
from datetime import datetime

import pytest
import requests

from proxy.simulator import (ModelProfile, ProfileError, get_profiles, get_stats, load_profiles, reset,
                             running_simulator, set_profile, unload)
from proxy.simulator.profiles import DEFAULT_PROFILES_PATH, profiles_from_dict
from tests.conftest import wait_for

FAST = {"ttft_seconds": 0.001, "tokens_per_second": 2000.0, "output_tokens": 6, "cold_load_seconds": 0.0}
PROFILES = {
    "stable:latest": {**FAST, "family": "qwen3", "size_bytes": 6_000_000_000, "context_length": 8192},
    "canary:latest": {**FAST, "output_tokens": 5},
    "sleepy:latest": {**FAST, "cold_load_seconds": 0.05, "keep_alive_seconds": 0.15},
    "embedder:latest": {**FAST, "kind": "embedding", "embedding_dim": 8, "family": "bert"},
}
MIDSTREAM_ERROR = {"error": "an error was encountered while running the model"}


@pytest.fixture(scope="module")
def sim():
    with running_simulator(profiles=PROFILES, seed=7) as running:
        yield running


@pytest.fixture
def url(sim):
    reset(sim.url)
    yield sim.url
    reset(sim.url)


def ndjson(raw: bytes) -> list[dict]:
    """Parse an NDJSON body strictly: every line complete, the body ends with a newline."""
    text = raw.decode()
    assert text.endswith("\n"), "NDJSON body must end with a newline"
    return [json.loads(line) for line in text[:-1].split("\n")]


def sse(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: "):] for event in events]


def post(url: str, path: str, body, **kw) -> requests.Response:
    return requests.post(url + path, json=body, timeout=5, **kw)


def chat_body(model="stable:latest", **extra):
    return {"model": model, "messages": [{"role": "user", "content": "why is the sky blue?"}], **extra}


# --- general endpoints ---------------------------------------------------------------
def test_root_get_and_head(url):
    reply = requests.get(url, timeout=5)
    assert (reply.status_code, reply.text) == (200, "Ollama is running")
    assert requests.head(url, timeout=5).status_code == 200


def test_version_and_tags(url):
    assert set(requests.get(url + "/api/version", timeout=5).json()) == {"version"}
    models = requests.get(url + "/api/tags", timeout=5).json()["models"]
    assert [m["name"] for m in models] == list(PROFILES)
    stable = models[0]
    assert stable["model"] == "stable:latest" and stable["size"] == 6_000_000_000
    assert len(stable["digest"]) == 64
    assert stable["details"] == {
        "parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],
        "parameter_size": "8.0B", "quantization_level": "Q4_K_M",
    }
    datetime.fromisoformat(stable["modified_at"])


def test_unknown_path_is_gin_404(url):
    reply = requests.get(url + "/api/nope", timeout=5)
    assert (reply.status_code, reply.text) == (404, "404 page not found")


# --- /api/chat and /api/generate -----------------------------------------------------
def test_chat_stream_is_ndjson_with_a_consistent_final_object(url):
    reply = post(url, "/api/chat", chat_body())
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(reply.content)
    *chunks, final = lines
    assert all(c["done"] is False and c["message"]["role"] == "assistant" for c in chunks)
    assert len(chunks) == 6 and "".join(c["message"]["content"] for c in chunks).strip()
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"] == {"role": "assistant", "content": ""}
    assert final["model"] == "stable:latest" and final["created_at"].endswith("Z")
    assert final["eval_count"] == 6 and final["prompt_eval_count"] > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]
    tokens_per_second = final["eval_count"] / final["eval_duration"] * 1e9
    assert tokens_per_second <= 2000 * 1.01  # never faster than the profile allows


def test_chat_non_stream_is_one_json_object(url):
    reply = post(url, "/api/chat", chat_body(stream=False))
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    body = reply.json()
    assert body["done"] is True and body["eval_count"] == 6 and body["message"]["content"].strip()


def test_generate_stream_has_context_and_response_fields(url):
    lines = ndjson(post(url, "/api/generate", {"model": "stable", "prompt": "hello"}).content)
    *chunks, final = lines
    assert all("response" in c and c["done"] is False for c in chunks)
    assert final["response"] == "" and final["done_reason"] == "stop"
    assert final["model"] == "stable"  # echoes the name as asked; 'stable' means 'stable:latest'
    assert len(final["context"]) == final["prompt_eval_count"] + final["eval_count"]


def test_num_predict_limits_output_with_done_reason_length(url):
    final = post(url, "/api/generate", {"model": "stable:latest", "prompt": "hi", "stream": False,
                                        "options": {"num_predict": 2}}).json()
    assert final["eval_count"] == 2 and final["done_reason"] == "length"


def test_empty_prompt_only_loads_and_keep_alive_zero_unloads(url):
    loaded = post(url, "/api/generate", {"model": "canary:latest"})
    assert loaded.headers["Content-Type"].startswith("application/json")
    body = loaded.json()
    assert body["done_reason"] == "load" and body["done"] is True
    assert not {"total_duration", "load_duration", "eval_count", "context"} & set(body)  # omitempty
    assert "canary:latest" in [m["name"] for m in requests.get(url + "/api/ps", timeout=5).json()["models"]]
    body = post(url, "/api/generate", {"model": "canary:latest", "keep_alive": 0}).json()
    assert body["done_reason"] == "unload"
    assert requests.get(url + "/api/ps", timeout=5).json() == {"models": []}


def test_chat_with_an_embedding_model_is_refused(url):
    reply = post(url, "/api/chat", chat_body("embedder:latest"))
    assert reply.status_code == 400 and reply.json() == {"error": '"embedder:latest" does not support chat'}


# --- embeddings ----------------------------------------------------------------------
def test_embed_string_and_list(url):
    one = post(url, "/api/embed", {"model": "embedder:latest", "input": "hello"}).json()
    many = post(url, "/api/embed", {"model": "embedder:latest", "input": ["hello", "world"]}).json()
    assert len(one["embeddings"]) == 1 and len(many["embeddings"]) == 2
    assert one["embeddings"][0] == many["embeddings"][0]  # same text, same vector
    assert all(len(v) == 8 and math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in many["embeddings"])
    assert many["prompt_eval_count"] > one["prompt_eval_count"] > 0 and many["total_duration"] > 0
    short = post(url, "/api/embed", {"model": "embedder:latest", "input": "hello", "dimensions": 4}).json()
    assert len(short["embeddings"][0]) == 4
    assert post(url, "/api/embed", {"model": "embedder:latest", "input": 3}).status_code == 400


def test_legacy_embeddings(url):
    body = post(url, "/api/embeddings", {"model": "embedder:latest", "prompt": "hello"}).json()
    assert set(body) == {"embedding"} and len(body["embedding"]) == 8
    assert post(url, "/api/embeddings", {"model": "embedder:latest", "prompt": ""}).json() == {"embedding": []}


# --- /api/ps and residency -----------------------------------------------------------
def test_ps_lists_loaded_models_latest_expiry_first_with_spill(url):
    assert requests.get(url + "/api/ps", timeout=5).json() == {"models": []}
    set_profile(url, "stable:latest", vram_ratio=0.25)
    post(url, "/api/chat", chat_body("stable:latest", stream=False, keep_alive="10m"))
    post(url, "/api/chat", chat_body("canary:latest", stream=False, keep_alive=60))
    models = requests.get(url + "/api/ps", timeout=5).json()["models"]
    assert [m["name"] for m in models] == ["stable:latest", "canary:latest"]
    stable = models[0]
    assert stable["size"] == 6_000_000_000 and stable["size_vram"] == 1_500_000_000  # spilled: 25 % on GPU
    assert stable["context_length"] == 8192 and stable["details"]["family"] == "qwen3"
    expires = datetime.fromisoformat(stable["expires_at"])
    assert 500 < expires.timestamp() - time.time() <= 600
    assert models[1]["size_vram"] == models[1]["size"]


def test_cold_load_after_idle_shows_in_load_duration_and_ps(url):
    cold = post(url, "/api/chat", chat_body("sleepy:latest", stream=False)).json()
    warm = post(url, "/api/chat", chat_body("sleepy:latest", stream=False)).json()
    assert cold["load_duration"] >= 50_000_000 > warm["load_duration"]
    assert "sleepy:latest" in get_stats(url)["loaded"]

    def unloaded() -> bool:
        return "sleepy:latest" not in [m["name"] for m in requests.get(url + "/api/ps", timeout=5).json()["models"]]

    wait_for(unloaded, 5, "sleepy:latest to unload after its keep_alive (0.15 s)")
    again = post(url, "/api/chat", chat_body("sleepy:latest", stream=False)).json()
    assert again["load_duration"] >= 50_000_000
    unload(url, "sleepy:latest")
    assert post(url, "/api/chat", chat_body("sleepy:latest", stream=False)).json()["load_duration"] >= 50_000_000


def test_show(url):
    body = post(url, "/api/show", {"model": "stable:latest"}).json()
    assert body["details"]["family"] == "qwen3" and body["capabilities"] == ["completion"]
    assert body["model_info"]["qwen3.context_length"] == 8192 and "FROM" in body["modelfile"]
    assert post(url, "/api/show", {"name": "embedder:latest"}).json()["capabilities"] == ["embedding"]


# --- errors like Ollama ------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/embeddings"])
def test_native_request_errors(url, path):
    missing = post(url, path, {"model": "nope:1b", "messages": [], "prompt": "x", "input": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope:1b' not found"})
    assert post(url, path, {"prompt": "x"}).json() == {"error": "model is required"}
    empty = requests.post(url + path, data=b"", timeout=5)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    bad = requests.post(url + path, data=b"{nope", timeout=5)
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid character")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_openai_unknown_model_is_404_in_openai_shape(url, path):
    body = {"model": "nope:1b", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x"}
    reply = post(url, path, body)
    assert reply.status_code == 404
    assert reply.json() == {"error": {"message": "model 'nope:1b' not found", "type": "not_found_error", "param": None, "code": None}}
    bad = requests.post(url + path, data=b"{nope", timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_counted_in_stats(url):
    post(url, "/api/chat", chat_body("nope:1b"))
    assert get_stats(url)["requests"]["nope:1b"] == {"not_found": 1}


def test_error_rate_gives_500_before_streaming(url):
    set_profile(url, "canary:latest", error_rate=1.0)
    native = post(url, "/api/chat", chat_body("canary:latest"))
    assert native.status_code == 500 and set(native.json()) == {"error"}
    openai = post(url, "/v1/chat/completions", chat_body("canary:latest", stream=True))
    assert openai.status_code == 500 and openai.json()["error"]["type"] == "api_error"
    assert get_stats(url)["requests"]["canary:latest"] == {"error": 2}
    assert post(url, "/api/chat", chat_body("stable:latest")).status_code == 200  # other models unaffected


def test_midstream_error_keeps_200_and_ends_with_an_error_line(url):
    set_profile(url, "canary:latest", midstream_error_rate=1.0)
    reply = post(url, "/api/chat", chat_body("canary:latest"))
    assert reply.status_code == 200
    lines = ndjson(reply.content)
    assert lines[-1] == MIDSTREAM_ERROR and not any(line.get("done") for line in lines)
    assert len(lines) >= 2  # some content came first
    whole = post(url, "/api/chat", chat_body("canary:latest", stream=False))
    assert (whole.status_code, whole.json()) == (500, MIDSTREAM_ERROR)
    events = sse(post(url, "/v1/chat/completions", chat_body("canary:latest", stream=True)).content)
    assert "[DONE]" not in events and json.loads(events[-1])["error"]["message"] == MIDSTREAM_ERROR["error"]
    assert get_stats(url)["requests"]["canary:latest"] == {"midstream_error": 3}


def _read_until_dropped(response: requests.Response) -> bytes:
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(None):
            received += chunk
    return received


def test_midstream_cut_drops_the_connection_without_a_final_line(url):
    set_profile(url, "canary:latest", midstream_cut_rate=1.0)
    reply = post(url, "/api/chat", chat_body("canary:latest"), stream=True)
    assert reply.status_code == 200
    received = _read_until_dropped(reply)
    assert received and b'"done":true' not in received
    reply = post(url, "/v1/chat/completions", chat_body("canary:latest", stream=True), stream=True)
    assert b"[DONE]" not in _read_until_dropped(reply)
    with pytest.raises(requests.exceptions.ConnectionError):
        post(url, "/api/chat", chat_body("canary:latest", stream=False))
    assert get_stats(url)["requests"]["canary:latest"] == {"cut": 3}


def test_hang_never_answers_until_the_client_leaves(url):
    set_profile(url, "canary:latest", hang_rate=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(url + "/api/chat", json=chat_body("canary:latest"), timeout=0.3)
    # the simulator notices the client left and records it
    wait_for(lambda: get_stats(url)["requests"].get("canary:latest") == {"hang": 1}, 5,
             "the simulator to record the hang", interval=0.02)


# --- OpenAI-compatible ---------------------------------------------------------------
def test_openai_chat_non_stream_always_has_usage(url):
    reply = post(url, "/v1/chat/completions", chat_body())
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"] == "fp_ollama" and body["model"] == "stable:latest"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_chat_stream_usage_chunk_only_when_asked(url, include_usage):
    body = chat_body(stream=True, **({"stream_options": {"include_usage": True}} if include_usage else {}))
    reply = post(url, "/v1/chat/completions", body)
    assert reply.headers["Content-Type"] == "text/event-stream"
    events = sse(reply.content)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"]]
    assert len(content) == 6 and all(c["choices"][0]["finish_reason"] is None for c in content)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    usage = [c for c in chunks if "usage" in c]
    if include_usage:
        assert len(usage) == 1 and usage[0]["choices"] == [] and chunks[-1] is usage[0]
        assert usage[0]["usage"]["completion_tokens"] == 6
    else:
        assert usage == []


def test_openai_completions(url):
    whole = post(url, "/v1/completions", {"model": "stable:latest", "prompt": "hi", "max_tokens": 3}).json()
    assert whole["object"] == "text_completion" and whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 3 and whole["id"].startswith("cmpl-")
    events = sse(post(url, "/v1/completions", {"model": "stable:latest", "prompt": "hi", "stream": True,
                                               "stream_options": {"include_usage": True}}).content)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]).strip()


def test_openai_embeddings_float_and_base64(url):
    body = post(url, "/v1/embeddings", {"model": "embedder:latest", "input": ["a", "b"]}).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    packed = post(url, "/v1/embeddings", {"model": "embedder:latest", "input": "a", "encoding_format": "base64"}).json()
    floats = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(floats, body["data"][0]["embedding"]))
    assert post(url, "/v1/embeddings", {"model": "embedder:latest", "input": "a", "encoding_format": "hex"}).status_code == 400


def test_openai_models(url):
    listing = requests.get(url + "/v1/models", timeout=5).json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == list(PROFILES)
    assert listing["data"][0]["owned_by"] == "library" and listing["data"][0]["object"] == "model"
    assert requests.get(url + "/v1/models/stable:latest", timeout=5).json()["id"] == "stable:latest"
    missing = requests.get(url + "/v1/models/nope:1b", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


# --- framing -------------------------------------------------------------------------
def test_streams_split_lines_across_writes_by_default():
    with running_simulator(profiles=PROFILES, seed=1) as split, running_simulator(profiles=PROFILES, seed=1, split_writes=False) as whole:
        def reads(base: str) -> list[bytes]:
            body = chat_body(options={"num_predict": 6})
            with requests.post(base + "/api/chat", json={**body, "model": "stable:latest"}, stream=True, timeout=5) as r:
                return list(r.iter_content(None))
        split_reads = [chunk for _ in range(5) for chunk in reads(split.url)]
        assert any(not chunk.endswith(b"\n") for chunk in split_reads)
        assert all(chunk.endswith(b"\n") for _ in range(3) for chunk in reads(whole.url))


def test_same_seed_same_answers():
    def answer() -> str:
        with running_simulator(profiles=PROFILES, seed=42) as running:
            return post(running.url, "/api/generate", {"model": "stable:latest", "prompt": "x", "stream": False}).json()["response"]

    assert answer() == answer()


# --- control endpoint ----------------------------------------------------------------
def test_control_patch_validates_and_reset_restores(url):
    profile = set_profile(url, "canary:latest", error_rate=0.5, ttft_seconds=1)
    assert profile["error_rate"] == 0.5 and profile["ttft_seconds"] == 1.0 and profile["output_tokens"] == 5
    assert get_profiles(url)["canary:latest"]["error_rate"] == 0.5
    for bad in ({"nonsense": 1}, {"error_rate": 2}, {"tokens_per_second": "fast"}, {"output_tokens": 1.5},
                {"kind": "vision"}, {"tokens_per_second": 0}, {"hang_rate": True}, {}):
        reply = requests.patch(url + "/_simulator/models/canary:latest", json=bad, timeout=5)
        assert reply.status_code == 400 and reply.json()["error"], bad
    assert get_profiles(url)["canary:latest"]["error_rate"] == 0.5  # a refused change changes nothing
    missing = requests.patch(url + "/_simulator/models/nope:1b", json={"error_rate": 0}, timeout=5)
    assert missing.status_code == 404
    with pytest.raises(ValueError, match="unknown profile field"):
        set_profile(url, "canary:latest", nonsense=1)
    assert reset(url)["canary:latest"]["error_rate"] == 0.0


def test_stats_count_requests_per_model_and_outcome(url):
    for _ in range(3):
        post(url, "/api/chat", chat_body("stable:latest"))
    post(url, "/v1/chat/completions", chat_body("canary:latest"))
    stats = get_stats(url)
    assert stats["requests"] == {"stable:latest": {"ok": 3}, "canary:latest": {"ok": 1}}
    assert stats["total"] == 4 and set(stats["loaded"]) == {"stable:latest", "canary:latest"}


# --- official clients ------------------------------------------------------------------
def test_official_ollama_client(url):
    import ollama

    client = ollama.Client(host=url)
    whole = client.chat(model="stable:latest", messages=[{"role": "user", "content": "hi"}])
    assert whole.message.content and whole.done and whole.eval_count == 6
    parts = list(client.chat(model="stable:latest", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert parts[-1].done and "".join(p.message.content for p in parts).strip()
    assert len(client.embed(model="embedder:latest", input=["a", "b"]).embeddings) == 2
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404


def test_official_openai_client(url):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    whole = client.chat.completions.create(model="stable:latest", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content and whole.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="stable:latest", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert len(client.embeddings.create(model="embedder:latest", input=["a", "b"]).data) == 2
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])


# --- profiles file and CLI -----------------------------------------------------------
def test_default_profiles_file_has_the_demo_models():
    profiles = load_profiles(DEFAULT_PROFILES_PATH)
    assert {"qwen3:8b", "qwen3:8b-ft", "llama3.2:latest", "all-minilm:latest"} <= set(profiles)
    assert profiles["all-minilm:latest"].kind == "embedding"
    assert all(isinstance(p, ModelProfile) for p in profiles.values())


def test_bad_profiles_are_refused_with_the_model_named(tmp_path):
    with pytest.raises(ProfileError, match="'m:1'.*error_rate"):
        profiles_from_dict({"models": {"m:1": {"error_rate": -1}}})
    path = tmp_path / "p.yaml"
    path.write_text("models:\n  m:1:\n    ttft: 1\n")
    with pytest.raises(ProfileError, match="unknown profile field"):
        load_profiles(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_refuses_bad_profiles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\n")
    cli = [sys.executable, "-m", "proxy.cli", "simulate"]
    refused = subprocess.run([*cli, "--profiles", str(bad)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "models" in refused.stderr
    port = _free_port()
    process = subprocess.Popen([*cli, "--listen", f"127.0.0.1:{port}", "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def root() -> str | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/", timeout=1).text
        except requests.ConnectionError:
            return None

    try:
        try:
            text = wait_for(root, 15, "the simulator CLI to answer")
        except AssertionError:
            process.terminate()
            pytest.fail("simulator did not start: " + process.communicate(timeout=10)[1].decode())
        assert text == "Ollama is running"
        assert "qwen3:8b-ft" in [m["name"] for m in requests.get(f"http://127.0.0.1:{port}/api/tags", timeout=1).json()["models"]]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_stream_flag_must_be_a_boolean_as_in_go(url):
    r = post(url, "/api/chat", {"model": "stable", "messages": [{"role": "user", "content": "x"}], "stream": "false"})
    assert r.status_code == 400 and "of type bool" in r.json()["error"]
    r = post(url, "/v1/chat/completions", {"model": "stable", "messages": [{"role": "user", "content": "x"}],
                                            "stream": 0})
    assert r.status_code == 400 and "of type bool" in r.json()["error"]["message"]
