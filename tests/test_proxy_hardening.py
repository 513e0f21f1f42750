"""Hostile or odd input and broken upstreams: a clear answer, bounded labels, nothing leaked."""

from __future__ import annotations

import http.client
import json
import threading
import time

import requests
from werkzeug import Request, Response

from proxy.dataplane.observe import NativeStreamObserver
from proxy.dataplane.sessions import SessionLabels
from tests.ollama_fake import chat_chunks, ndjson, openai_chat_handler, sse_chat, stream_response
from tests.test_proxy_streaming import HEAD, RawUpstream, _chunk, _read_request

MODEL = "llama3.2"


def test_lone_surrogate_in_a_prompt_is_forwarded_as_ollama_would_read_it(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append(json.loads(request.get_data()))
        return openai_chat_handler(MODEL, ["a"])(request)

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(handler)
    with proxy_for() as p:
        body = '{"model": "llama3.2", "stream": true, "messages": [{"role": "user", "content": "x\\ud83d"}]}'
        r = requests.post(f"{p.url}/v1/chat/completions", data=body.encode())
        assert r.status_code == 200 and r.content == sse_chat(MODEL, ["a"], False)
        assert seen[0]["messages"][0]["content"] == "x\ud83d"


def test_model_name_with_control_characters_is_a_clear_400(httpserver, proxy_for):
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": "bad\nname", "messages": []})
        assert r.status_code == 400 and "control characters" in r.json()["error"]
    assert len(httpserver.log) == 0


def test_unknown_and_invented_model_names_do_not_mint_series(httpserver, proxy_for):
    def handler(request: Request) -> Response:
        model = json.loads(request.get_data())["model"]
        if model.startswith("real-"):
            return stream_response([ndjson(chat_chunks(model, ["a"]))])
        return Response(json.dumps({"error": f"model '{model}' not found"}), status=404,
                        content_type="application/json")

    httpserver.expect_request("/api/chat").respond_with_handler(handler)
    with proxy_for(model_label_cap=3) as p:
        with requests.Session() as http:
            for i in range(50):
                http.post(f"{p.url}/api/chat", json={"model": f"guess-{i}", "messages": []})
            for i in range(5):
                http.post(f"{p.url}/api/chat", json={"model": f"real-{i}", "messages": []})
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {"unknown", "real-0:latest", "real-1:latest", "real-2:latest", "other"}
        assert p.value("ollama_proxy_requests_total", model="unknown") == 50
        assert p.value("ollama_proxy_requests_total", model="other") == 2


def test_gateway_key_is_not_forwarded_to_ollama(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return stream_response([ndjson(chat_chunks(MODEL, ["a"]))])

    httpserver.expect_request("/api/chat").respond_with_handler(handler)
    httpserver.expect_request("/api/tags").respond_with_handler(
        lambda r: (seen.append(r.headers.get("Authorization")), Response('{"models":[]}'))[1])
    with proxy_for(auth={"api_keys": ["gw-secret"]}) as p:
        auth = {"Authorization": "Bearer gw-secret"}
        assert requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, headers=auth).ok
        assert requests.get(f"{p.url}/api/tags", headers=auth).ok
    assert seen == [None, None]


def test_hop_by_hop_headers_and_those_connection_lists_are_not_forwarded(httpserver, proxy_for):
    seen = []
    httpserver.expect_request("/api/tags").respond_with_handler(
        lambda r: (seen.append(dict(r.headers)), Response('{"models":[]}'))[1])
    with proxy_for() as p:
        requests.get(f"{p.url}/api/tags", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret",
                                                   "X-Kept": "1", "Proxy-Authorization": "Basic x"})
    assert seen[0].get("X-Kept") == "1"
    assert "X-Hop" not in seen[0] and "Proxy-Authorization" not in seen[0]


def test_uploads_stream_through_with_their_content_length_and_no_first_byte_limit(httpserver, proxy_for):
    seen = []

    def handler(request: Request) -> Response:
        seen.append((request.headers.get("Content-Length"), request.headers.get("Transfer-Encoding"),
                     len(request.get_data())))
        return Response("", status=201)

    httpserver.expect_request("/api/blobs/sha256:abc", method="POST").respond_with_handler(handler)

    with proxy_for(timeouts={"first_byte": 0.5}) as p:
        conn = http.client.HTTPConnection(p.url.removeprefix("http://"), timeout=10)
        conn.putrequest("POST", "/api/blobs/sha256:abc")
        conn.putheader("Content-Length", "5000")
        conn.endheaders()
        for _ in range(5):
            time.sleep(0.2)  # a 1 s upload against a 0.5 s first-byte limit
            conn.send(b"x" * 1000)
        assert conn.getresponse().status == 201
    assert seen == [("5000", None, 5000)]


def test_passthrough_stream_cut_by_the_upstream_is_not_reported_as_complete(proxy_for):
    def script(server, conn):
        _read_request(conn)
        conn.sendall(HEAD + _chunk(b'{"status":"pulling manifest"}\n'))
        time.sleep(0.1)
        conn.close()

    upstream = RawUpstream(script)
    try:
        with proxy_for(upstream=upstream.url) as p:
            try:
                r = requests.post(f"{p.url}/api/pull", json={"model": "x"}, stream=True, timeout=10)
                body = b"".join(r.iter_content(None))
            except requests.exceptions.ChunkedEncodingError:
                body = None  # the client sees the break, as it would without the proxy
            assert body is None
            assert p.value("ollama_proxy_requests_total", endpoint="/api/pull", error_type="stream_interrupted") == 1
    finally:
        upstream.close()


def test_route_alias_answers_show_and_model_lookups(httpserver, proxy_for):
    httpserver.expect_request("/api/show", json={"model": "qwen3:8b"}).respond_with_json(
        {"details": {"family": "qwen3"}, "capabilities": ["completion"]})
    httpserver.expect_request("/v1/models/qwen3:8b").respond_with_json(
        {"id": "qwen3:8b", "object": "model", "created": 1, "owned_by": "library"})
    with proxy_for(routes={"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 10}}) as p:
        r = requests.post(f"{p.url}/api/show", json={"model": "chat"})
        assert r.status_code == 200 and r.json()["details"]["family"] == "qwen3"
        r = requests.get(f"{p.url}/v1/models/chat")
        assert r.status_code == 200 and r.json()["id"] == "chat"


def test_a_request_outliving_its_session_ttl_does_not_escape_the_cap():
    clock = [0.0]
    labels = SessionLabels(cap=1, ttl=10, on_evict=lambda _: None, clock=lambda: clock[0])
    assert labels.label("long-stream") == "long-stream"
    clock[0] = 20
    assert labels.label("newcomer") == "newcomer"  # long-stream expired and was evicted
    # at the end of the long request the recorder re-admits its label: no room, so `other`
    assert labels.label("long-stream") == "other"


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


def test_concurrent_first_requests_for_one_model_share_one_label(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(model_label_cap=1) as p:
        threads = [threading.Thread(target=requests.post, args=(f"{p.url}/api/chat",),
                                    kwargs={"json": {"model": MODEL, "messages": []}}) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert p.value("ollama_proxy_requests_total", model=f"{MODEL}:latest") == 10


def test_deeply_nested_json_is_a_400_not_a_crash(httpserver, proxy_for):
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", data=b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
        assert p.value("ollama_proxy_requests_total", error_type="bad_request") == 1


def test_a_bug_mid_stream_ends_the_stream_in_protocol_instead_of_a_second_response(httpserver, proxy_for,
                                                                                      monkeypatch):
    body = ndjson(chat_chunks(MODEL, ["a", "b", "c"]))
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response([body[:60], body[60:]]))
    calls = {"n": 0}
    original = NativeStreamObserver.line

    def flaky(self, line, now):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("bug")
        return original(self, line, now)

    monkeypatch.setattr(NativeStreamObserver, "line", flaky)
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert r.status_code == 200 and b"HTTP/1.1" not in r.content
        assert "internal error" in json.loads(r.content.splitlines()[-1])["error"]
        assert p.value("ollama_proxy_requests_total", error_type="internal") == 1


def test_a_new_model_name_that_never_succeeded_keeps_no_label(proxy_for):
    from tests.conftest import free_port
    with proxy_for(upstream=f"http://127.0.0.1:{free_port()}", model_label_cap=1) as p:
        for i in range(5):
            requests.post(f"{p.url}/api/chat", json={"model": f"name-{i}", "messages": []})
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {"unknown"}  # an outage does not fill the cap with unconfirmed names


def test_the_recorder_re_admits_a_session_at_the_end_of_a_request():
    from proxy.config import parse_config
    from proxy.dataplane.instrument import Recorder
    from proxy.metrics import ProxyMetrics
    recorder = Recorder(ProxyMetrics(), parse_config({"session_label_cap": 1}, environ={}))
    clock = [0.0]
    recorder.sessions._clock = lambda: clock[0]
    label = recorder.session_label("long-stream")
    clock[0] = 2000.0  # past the TTL: evicted as soon as someone else arrives
    assert recorder.session_label("newcomer") == "newcomer"
    recorder.request("/api/chat", "none", "direct", MODEL, label, "none", 1.0, None)
    sessions = {s.labels["session"] for f in recorder.metrics.registry.collect()
                if f.name == "ollama_proxy_requests" for s in f.samples}
    assert sessions == {"other"}  # not "long-stream": the cap holds


def test_a_model_with_and_without_its_latest_tag_is_one_label(httpserver, proxy_for):
    # Ollama lists models with their tag (so does the exporter): the proxy's label matches.
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for() as p:
        for name in (MODEL, f"{MODEL}:latest"):
            r = requests.post(f"{p.url}/api/chat", json={"model": name, "messages": []})
            assert r.headers["X-Sidecar-Model"] == name  # what the client asked, forwarded as is
        models = {dict(k[1])["model"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
        assert models == {f"{MODEL}:latest"}
