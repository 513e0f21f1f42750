"""Every way a request can fail: a clear message in the client's protocol and the right label."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from werkzeug import Response

from tests.conftest import free_port, wait_for
from tests.ollama_fake import chat_chunks, ndjson, stream_response

MODEL = "llama3.2"
OLLAMA_PATHS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"]
OPENAI_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


def assert_ollama_error(r: requests.Response, status: int, fragment: str) -> None:
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert fragment in body["error"]


def assert_openai_error(r: requests.Response, status: int, fragment: str, type_: str) -> None:
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment in err["message"] and err["type"] == type_


@pytest.mark.parametrize("path", OLLAMA_PATHS + OPENAI_PATHS)
def test_malformed_json_missing_model_and_empty_body_are_rejected_before_upstream(httpserver, proxy_for, path):
    with proxy_for() as p:
        cases = [(b"{not json", "not valid JSON"), (b'{"messages": []}', "model is required"),
                 (b"", "missing request body"), (b"[1, 2]", "must be a JSON object")]
        for body, fragment in cases:
            r = requests.post(f"{p.url}{path}", data=body, headers={"Content-Type": "application/json"})
            if path.startswith("/v1/"):
                assert_openai_error(r, 400, fragment, "invalid_request_error")
            else:
                assert_ollama_error(r, 400, fragment)
        assert p.value("ollama_proxy_requests_total", endpoint=path, error_type="bad_request") == 4
    assert len(httpserver.log) == 0  # nothing reached Ollama


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_oversized_body_gets_413_before_anything_is_sent(httpserver, proxy_for, path):
    with proxy_for(max_body_bytes=1000) as p:
        big = json.dumps({"model": MODEL, "prompt": "x" * 5000})
        r = requests.post(f"{p.url}{path}", data=big)
        assert r.status_code == 413 and "max_body_bytes" in r.text
        # chunked upload (no Content-Length) is bounded too
        r = requests.post(f"{p.url}{path}", data=iter([big.encode()[:600], big.encode()[600:]]))
        assert r.status_code == 413
        assert p.value("ollama_proxy_requests_total", error_type="bad_request") == 2
    assert len(httpserver.log) == 0


@pytest.mark.parametrize("stream", [True, False])
def test_unknown_model_404_is_forwarded_as_ollama_said_it(httpserver, proxy_for, stream):
    httpserver.expect_request("/api/chat").respond_with_json({"error": "model 'nope' not found"}, status=404)
    httpserver.expect_request("/v1/chat/completions").respond_with_json(
        {"error": {"message": "model 'nope' not found", "type": "not_found_error", "param": None, "code": None}},
        status=404)
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": "nope", "messages": [], "stream": stream})
        assert_ollama_error(r, 404, "model 'nope' not found")
        r = requests.post(f"{p.url}/v1/chat/completions", json={"model": "nope", "messages": [], "stream": stream})
        assert_openai_error(r, 404, "model 'nope' not found", "not_found_error")
        assert p.value("ollama_proxy_requests_total", model="unknown", error_type="model_not_found") == 2
        # a name Ollama does not know never becomes a label value (typos, scanners)
        assert not [k for k in p.scrape() if dict(k[1]).get("model") == "nope"]


@pytest.mark.parametrize("status,error_type", [(500, "upstream_5xx"), (503, "overloaded"), (429, "overloaded"),
                                               (400, "upstream_4xx")])
def test_upstream_error_statuses_are_labelled(httpserver, proxy_for, status, error_type):
    httpserver.expect_request("/api/generate").respond_with_json({"error": "boom"}, status=status)
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/generate", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == status and r.json() == {"error": "boom"}
        assert p.value("ollama_proxy_requests_total", error_type=error_type) == 1


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_refused_connection_is_502_with_a_human_message(proxy_for, path):
    dead = f"http://127.0.0.1:{free_port()}"
    with proxy_for(upstream=dead) as p:
        r = requests.post(f"{p.url}{path}", json={"model": MODEL, "messages": []})
        message = f"upstream Ollama at {dead} refused the connection"
        if path.startswith("/v1/"):
            assert_openai_error(r, 502, message, "api_error")
        else:
            assert_ollama_error(r, 502, message)
        assert p.value("ollama_proxy_requests_total", error_type="connect") == 1
        r = requests.get(f"{p.url}/api/tags")
        assert_ollama_error(r, 502, "refused the connection")


def test_first_byte_timeout_is_504_timeout(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: (time.sleep(1.5), Response("{}"))[1])
    with proxy_for(timeouts={"first_byte": 0.3}) as p:
        r = requests.post(f"{p.url}/v1/chat/completions".replace("/v1/chat/completions", "/api/chat"),
                          json={"model": MODEL, "messages": []})
        assert_ollama_error(r, 504, "sent no response within 0.3s")
        assert p.value("ollama_proxy_requests_total", error_type="timeout") == 1


def test_admission_control_queues_then_sheds_with_retry_after(httpserver, proxy_for):
    release = threading.Event()

    def slow_stream(request):
        release.wait(10)
        return stream_response([ndjson(chat_chunks(MODEL, ["a"]))])

    httpserver.expect_request("/api/chat").respond_with_handler(slow_stream)
    with proxy_for(admission={"max_in_flight": 1, "max_queue": 1, "queue_timeout": 5}) as p:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}).status_code))
            for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: p.value("ollama_proxy_queue_length") == 1, 5,  # one in flight, one queued
                 "one request in flight and one queued", interval=0.02)
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert_ollama_error(r, 503, "proxy overloaded")
        assert r.headers["Retry-After"] == "5"
        release.set()
        for t in threads:
            t.join(10)
        assert sorted(results) == [200, 200]  # the queued one was served, not dropped
        assert p.value("ollama_proxy_requests_total", error_type="overloaded") == 1
        assert p.value("ollama_proxy_queue_length") == 0


def test_api_keys_guard_the_data_plane_in_the_clients_protocol(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(auth={"api_keys": ["s3cret-key"]}) as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert_ollama_error(r, 401, "gateway token missing")
        r = requests.post(f"{p.url}/v1/chat/completions", json={"model": MODEL, "messages": []},
                          headers={"Authorization": "Bearer wrong"})
        assert_openai_error(r, 401, "gateway token missing", "invalid_request_error")
        assert r.json()["error"]["code"] == "invalid_api_key"
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []},
                          headers={"Authorization": "Bearer s3cret-key"})
        assert r.status_code == 200
        assert p.value("ollama_proxy_requests_total", error_type="unauthorized") == 2
        assert requests.get(f"{p.url}/metrics").status_code == 200  # the proxy's own endpoints stay open


def test_passthrough_forwards_method_path_query_headers_and_status(httpserver, proxy_for):
    httpserver.expect_request("/api/delete", method="DELETE", json={"model": "old"}).respond_with_data(
        "", status=200)
    httpserver.expect_request("/api/tags", query_string="x=1&y=%2F", headers={"X-Trace": "t1"}).respond_with_json(
        {"models": []}, headers={"X-Upstream": "yes"})
    httpserver.expect_request("/api/show").respond_with_json({"error": "model 'z' not found"}, status=404)
    with proxy_for() as p:
        r = requests.get(f"{p.url}/api/tags?x=1&y=%2F", headers={"X-Trace": "t1", "Connection": "keep-alive"})
        assert r.status_code == 200 and r.json() == {"models": []} and r.headers["X-Upstream"] == "yes"
        assert requests.delete(f"{p.url}/api/delete", json={"model": "old"}).status_code == 200
        r = requests.post(f"{p.url}/api/show", json={"model": "z"})
        assert r.status_code == 404
        assert p.value("ollama_proxy_requests_total", endpoint="/api/tags", error_type="none") == 1
        assert p.value("ollama_proxy_requests_total", endpoint="/api/show", error_type="upstream_4xx") == 1
        assert p.value("ollama_proxy_request_duration_seconds_count", endpoint="/api/delete") == 1
        requests.get(f"{p.url}/random/scanner/path/{time.time()}")
        assert p.value("ollama_proxy_requests_total", endpoint="other") == 1  # no label per path


def test_own_endpoints_are_never_forwarded(httpserver, proxy_for):
    httpserver.expect_request("/api/version").respond_with_json({"version": "0.5.1"})
    with proxy_for() as p:
        assert requests.get(f"{p.url}/healthz").json() == {"status": "ok"}
        ready = requests.get(f"{p.url}/readyz")
        assert ready.status_code == 200 and ready.json()["ollama_version"] == "0.5.1"
        assert "ollama_proxy_build_info" in requests.get(f"{p.url}/metrics").text
    assert [e[0].path for e in httpserver.log] == ["/api/version"]


def test_readyz_is_503_when_ollama_is_down(proxy_for):
    with proxy_for(upstream=f"http://127.0.0.1:{free_port()}") as p:
        r = requests.get(f"{p.url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert requests.get(f"{p.url}/healthz").status_code == 200


def test_model_name_with_control_characters_is_a_clear_400(httpserver, proxy_for):
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": "bad\nname", "messages": []})
        assert r.status_code == 400 and "control characters" in r.json()["error"]
    assert len(httpserver.log) == 0


def test_deeply_nested_json_is_a_400_not_a_crash(httpserver, proxy_for):
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", data=b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
        assert p.value("ollama_proxy_requests_total", error_type="bad_request") == 1


def test_internal_errors_answer_in_protocol_and_are_labelled(httpserver, proxy_for, monkeypatch):
    from proxy.dataplane import observe
    httpserver.expect_request("/api/chat").respond_with_json(chat_chunks(MODEL, ["a"])[-1])

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    with proxy_for() as p:
        monkeypatch.setattr("proxy.dataplane.forward.read_reply_body", broken)
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": [], "stream": False})
        assert r.status_code == 500 and "internal error" in r.json()["error"]
        assert p.value("ollama_proxy_requests_total", error_type="internal") == 1
        assert observe.read_reply_body is not broken
