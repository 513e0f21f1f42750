"""Streams through the proxy: bytes unchanged, tokens and timings counted, breakage labelled."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from proxy.dataplane.observe import NativeStreamObserver
from proxy.dataplane.sessions import session_hash
from tests.conftest import wait_for
from tests.ollama_fake import (FINAL_TIMINGS, chat_chunks, generate_chunks, ndjson, openai_chat_handler, pieces, slow,
                               sse_chat, stream_response)

MODEL = "llama3.2"


def test_native_chat_stream_is_relayed_byte_for_byte_and_counted(httpserver, proxy_for):
    body = ndjson(chat_chunks(MODEL, ["The", " sky", " is", " blue"]))
    httpserver.expect_request("/api/chat", method="POST").respond_with_handler(
        lambda r: stream_response(pieces(body, 5)))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                          headers={"X-Session-ID": "alice"})
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["Content-Type"] == "application/x-ndjson"
        alice = p.session_label("alice")
        assert p.value("ollama_proxy_requests_total", endpoint="/api/chat", model=f"{MODEL}:latest", session=alice,
                       error_type="none", arm="direct", route="none") == 1
        assert p.value("ollama_proxy_tokens_total", kind="prompt", session=alice) == 169
        assert p.value("ollama_proxy_tokens_total", kind="completion", session=alice) == 15
        assert p.value("ollama_proxy_time_to_first_token_seconds_count", endpoint="/api/chat") == 1
        # eval_duration / eval_count from the final object
        assert p.value("ollama_proxy_time_per_output_token_seconds_sum") == pytest.approx(115959084e-9 / 15)
        assert p.value("ollama_proxy_upstream_load_duration_seconds_sum") == pytest.approx(41295167e-9)
        assert p.value("ollama_proxy_upstream_eval_duration_seconds_count") == 1


def test_final_line_split_across_two_reads_is_not_lost(httpserver, proxy_for):
    body = ndjson(generate_chunks(MODEL, ["a", "b"]))
    cut = body.rfind(b'"done":true') + 3  # the final line arrives in two pieces
    httpserver.expect_request("/api/generate").respond_with_handler(
        lambda r: stream_response(slow([body[:cut], body[cut:]], 0.05)))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/generate", json={"model": MODEL, "prompt": "hi"})
        assert r.content == body
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 15
        assert p.value("ollama_proxy_requests_total", error_type="none") == 1


def test_a_thousand_chunks_with_many_lines_per_read(httpserver, proxy_for):
    words = [f"w{i} " for i in range(1000)]
    final = dict(FINAL_TIMINGS, eval_count=1000)
    body = ndjson(chat_chunks(MODEL, words, final))
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response(pieces(body, 4096)))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, stream=True)
        lines = [json.loads(line) for line in r.iter_lines()]
        assert len(lines) == 1001 and lines[-1]["done"] is True
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 1000


def test_missing_optional_fields_count_what_is_there(httpserver, proxy_for):
    # Ollama omits zero fields: a cached prompt has no prompt_eval_*, a warm model no load_duration.
    final = {"total_duration": 1000, "eval_count": 3}
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["x", "y", "z"], final))]))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert r.status_code == 200
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 3
        assert p.value("ollama_proxy_tokens_total", kind="prompt") == 0
        assert p.value("ollama_proxy_upstream_load_duration_seconds_count") == 0
        assert p.value("ollama_proxy_requests_total", error_type="none") == 1


def test_error_line_mid_stream_is_forwarded_and_labelled(httpserver, proxy_for):
    body = ndjson(chat_chunks(MODEL, ["a"])[:1]) + b'{"error":"an error was encountered while running the model"}\n'
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response(pieces(body, 9)))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert r.status_code == 200
        assert r.content == body  # the client sees Ollama's own error line, once
        assert p.value("ollama_proxy_requests_total", error_type="stream_interrupted") == 1


def test_stream_without_final_object_is_interrupted_and_the_client_is_told(httpserver, proxy_for):
    body = ndjson(chat_chunks(MODEL, ["a", "b"])[:2])  # no done line
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response([body]))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        lines = r.content.splitlines()
        assert b"".join(line + b"\n" for line in lines[:2]) == body
        assert "without its final message" in json.loads(lines[-1])["error"]
        assert p.value("ollama_proxy_requests_total", error_type="stream_interrupted") == 1


class RawUpstream:
    """A TCP server that speaks just enough HTTP/1.1 to misbehave on purpose."""

    def __init__(self, script) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = script
        self.closed_by_peer = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.script, args=(self, conn), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += conn.recv(65536)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_upstream_closing_the_socket_mid_stream_is_labelled_and_reported(proxy_for):
    first = ndjson(chat_chunks(MODEL, ["a"])[:1])

    def script(server, conn):
        _read_request(conn)
        conn.sendall(HEAD + _chunk(first))
        time.sleep(0.05)
        conn.close()  # no terminating chunk, no done line

    upstream = RawUpstream(script)
    try:
        with proxy_for(upstream=upstream.url) as p:
            r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
            lines = r.content.splitlines(keepends=True)
            assert lines[0] == first
            assert "closed the stream early" in json.loads(lines[-1])["error"]
            assert p.value("ollama_proxy_requests_total", error_type="stream_interrupted") == 1
    finally:
        upstream.close()


def test_idle_upstream_mid_stream_times_out_and_is_labelled(proxy_for):
    def script(server, conn):
        _read_request(conn)
        conn.sendall(HEAD + _chunk(ndjson(chat_chunks(MODEL, ["a"])[:1])))
        time.sleep(3)
        conn.close()

    upstream = RawUpstream(script)
    try:
        with proxy_for(upstream=upstream.url, timeouts={"idle": 0.3}) as p:
            r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
            assert "sent nothing for 0.3s" in json.loads(r.content.splitlines()[-1])["error"]
            assert p.value("ollama_proxy_requests_total", error_type="timeout") == 1
    finally:
        upstream.close()


def test_client_disconnect_cancels_the_upstream_request(proxy_for):
    def script(server, conn):
        _read_request(conn)
        conn.sendall(HEAD + _chunk(ndjson(chat_chunks(MODEL, ["a"])[:1])))
        conn.settimeout(10)
        try:
            while conn.recv(1024):  # a generating Ollama: silent until the proxy hangs up
                pass
            server.closed_by_peer.set()
        except OSError:
            server.closed_by_peer.set()

    upstream = RawUpstream(script)
    try:
        with proxy_for(upstream=upstream.url) as p:
            client = socket.create_connection(("127.0.0.1", int(p.url.rsplit(":", 1)[1])))
            payload = json.dumps({"model": MODEL, "messages": []}).encode()
            client.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            received = b""
            while b'"content":"a"' not in received:
                received += client.recv(65536)
            client.close()
            # the upstream sees its connection closed long before its own 10 s timeout
            assert upstream.closed_by_peer.wait(5)
            wait_for(lambda: p.value("ollama_proxy_requests_total", error_type="client_disconnect") == 1, 5,
                     "the disconnect to be counted as client_disconnect")
            assert p.value("ollama_proxy_in_flight_requests") == 0
    finally:
        upstream.close()


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_stream_client_sees_exactly_what_it_asked_for(httpserver, proxy_for, include_usage):
    words = ["Hel", "lo", "!"]
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(openai_chat_handler(MODEL, words))
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    with proxy_for() as p:
        r = requests.post(f"{p.url}/v1/chat/completions", json=request)
        assert r.content == sse_chat(MODEL, words, include_usage)
        # the proxy asked for usage upstream either way, so tokens are counted either way
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 3
        assert p.value("ollama_proxy_tokens_total", kind="prompt") == 12
        assert p.value("ollama_proxy_time_to_first_token_seconds_count", endpoint="/v1/chat/completions") == 1
        assert p.value("ollama_proxy_time_per_output_token_seconds_count") == 1


def test_openai_completions_stream_usage_is_stripped_too(httpserver, proxy_for):
    def handler(request):
        body = json.loads(request.get_data())
        assert body["stream_options"] == {"include_usage": True}  # asked on the client's behalf
        return stream_response(pieces(sse_chat(MODEL, ["x", "y"], True, kind="completion"), 13),
                               "text/event-stream")
    httpserver.expect_request("/v1/completions").respond_with_handler(handler)
    with proxy_for() as p:
        r = requests.post(f"{p.url}/v1/completions", json={"model": MODEL, "prompt": "p", "stream": True})
        assert r.content == sse_chat(MODEL, ["x", "y"], False, kind="completion")
        assert p.value("ollama_proxy_tokens_total", kind="completion") == 2


def test_non_stream_replies_keep_content_length_and_count_tokens(httpserver, proxy_for):
    reply = dict(chat_chunks(MODEL, [])[-1], message={"role": "assistant", "content": "The sky is blue."})
    httpserver.expect_request("/api/chat").respond_with_json(reply)
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(openai_chat_handler(MODEL, ["a", "b"]))
    with proxy_for() as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": [], "stream": False})
        assert r.json() == reply
        assert int(r.headers["Content-Length"]) == len(r.content)
        r = requests.post(f"{p.url}/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert r.json()["usage"]["completion_tokens"] == 2
        assert int(r.headers["Content-Length"]) == len(r.content)
        assert p.value("ollama_proxy_tokens_total", endpoint="/api/chat", kind="completion") == 15
        assert p.value("ollama_proxy_tokens_total", endpoint="/v1/chat/completions", kind="completion") == 2
        # non-stream TTFT is the upstream's load + prompt eval time (documented in docs/metrics.md)
        assert p.value("ollama_proxy_time_to_first_token_seconds_sum", endpoint="/api/chat") == \
            pytest.approx((41295167 + 24573166) * 1e-9)


@pytest.mark.parametrize("path,request_body,reply,prompt_tokens", [
    ("/api/embed", {"model": "all-minilm", "input": ["a", "b"]},
     {"model": "all-minilm", "embeddings": [[0.1], [0.2]], "total_duration": 14143917,
      "load_duration": 1019500, "prompt_eval_count": 8}, 8),
    ("/api/embeddings", {"model": "all-minilm", "prompt": "a"}, {"embedding": [0.1, 0.2]}, 0),
    ("/v1/embeddings", {"model": "all-minilm", "input": "a"},
     {"object": "list", "data": [{"object": "embedding", "embedding": [0.1], "index": 0}], "model": "all-minilm",
      "usage": {"prompt_tokens": 4, "total_tokens": 4}}, 4),
])
def test_embedding_endpoints(httpserver, proxy_for, path, request_body, reply, prompt_tokens):
    httpserver.expect_request(path).respond_with_json(reply)
    with proxy_for() as p:
        r = requests.post(f"{p.url}{path}", json=request_body)
        assert r.json() == reply
        assert p.value("ollama_proxy_requests_total", endpoint=path, model="all-minilm:latest", error_type="none") == 1
        assert p.value("ollama_proxy_tokens_total", endpoint=path, kind="prompt") == prompt_tokens
        assert p.value("ollama_proxy_time_to_first_token_seconds_count") == 0  # embeddings generate nothing


def test_overlong_line_is_forwarded_but_not_parsed(httpserver, proxy_for):
    big = json.dumps({"model": MODEL, "created_at": "x", "message": {"role": "assistant", "content": "x" * 5000},
                      "done": False}).encode() + b"\n"
    body = big + ndjson(chat_chunks(MODEL, [])[-1:])
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response(pieces(body, 1000)))
    with proxy_for(max_line_bytes=1024) as p:
        r = requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert r.content == body
        assert p.value("ollama_proxy_unparsed_lines_total", reason="too_long") == 1
        assert p.value("ollama_proxy_requests_total", error_type="none") == 1


def test_access_log_has_one_json_line_per_request_and_no_prompt_or_session_id(httpserver, proxy_for, caplog):
    secret_prompt = "my password is hunter2"
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a", "b"]))]))
    with caplog.at_level("INFO", logger="ollama_sidecar.access"), proxy_for(access_log=True) as p:
        requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": secret_prompt}]},
                      headers={"X-Session-ID": "alice@example.com"})
        alice = p.session_label("alice@example.com")
    lines = [r.getMessage() for r in caplog.records if r.name == "ollama_sidecar.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["endpoint"] == "/api/chat" and entry["status"] == 200 and entry["error_type"] == "none"
    assert entry["completion_tokens"] == 15 and entry["ttft"] is not None
    assert entry["session"] == alice  # the hashed label, so a log line and its series correlate
    assert secret_prompt not in lines[0] and "alice" not in lines[0] and "hunter2" not in caplog.text


def test_a_slow_client_is_not_mistaken_for_an_idle_upstream(httpserver, proxy_for):
    # A client that stops reading for a second: the proxy waits on it (backpressure)
    # longer than timeouts.idle, but the upstream was never idle, so nothing times out.
    body = ndjson(chat_chunks(MODEL, ["x" * 4000] * 3000))  # 12 MB: more than socket buffers hold
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response(pieces(body, 65536)))
    with proxy_for(timeouts={"idle": 0.3}) as p:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.connect(("127.0.0.1", int(p.url.rsplit(":", 1)[1])))
        payload = json.dumps({"model": MODEL, "messages": []}).encode()
        client.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        received = client.recv(65536)
        time.sleep(1.0)  # the reader looks away
        while chunk := client.recv(1 << 20):
            received += chunk
        client.close()
        assert b'"done":true' in received and b"sent nothing" not in received
        assert p.value("ollama_proxy_requests_total", error_type="none") == 1


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


def test_with_raw_session_labels_the_access_log_still_hides_the_id(httpserver, proxy_for, caplog):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with caplog.at_level("INFO", logger="ollama_sidecar.access"), \
            proxy_for(access_log=True, session_label="raw") as p:
        requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []},
                      headers={"X-Session-ID": "alice@example.com"})
        assert p.value("ollama_proxy_requests_total", session="alice@example.com") == 1  # as configured
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ollama_sidecar.access"]
    assert json.loads(line)["session"] == session_hash("alice@example.com") and "alice" not in line


def test_time_to_first_token_counts_successful_warm_requests_and_counts_load_waits_apart(httpserver, proxy_for):
    """The latency decisions compare the first tokens of requests that succeeded without
    waiting for a model load: a cold load is the scheduler's doing, a failure's "first
    token" may be an error."""
    cold = dict(FINAL_TIMINGS, load_duration=12_500_000_000)  # 12.5 s loading the model
    warm = chat_chunks(MODEL, ["a", "b"])
    replies = iter([
        [ndjson(chat_chunks(MODEL, ["a"], final=cold))],  # waited for a load
        [ndjson(warm)],  # warm: observed
        [ndjson(warm[:1]), b'{"error":"an error was encountered while running the model"}\n'],  # failed mid-stream
    ])
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: stream_response(next(replies)))
    with proxy_for() as p:
        for _ in range(3):
            requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})
        assert p.value("ollama_proxy_time_to_first_token_seconds_count", endpoint="/api/chat") == 1
        assert p.value("ollama_proxy_model_load_waits_total", model=f"{MODEL}:latest") == 1
        assert p.value("ollama_proxy_requests_total", endpoint="/api/chat", error_type="stream_interrupted") == 1
        assert p.value("ollama_proxy_upstream_load_duration_seconds_count", endpoint="/api/chat") >= 2
