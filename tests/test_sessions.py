"""Session labels: sticky values, a hard cap, eviction that really frees series."""

from __future__ import annotations

import requests

from proxy.app import FORWARDER
from proxy.config import parse_config
from proxy.dataplane.instrument import Recorder, RequestRecord
from proxy.dataplane.sessions import OVERFLOW, SessionLabels, extract_session, session_hash
from proxy.metrics import ProxyMetrics
from tests.conftest import FakeClock
from tests.ollama_fake import chat_chunks, ndjson, stream_response

MODEL = "llama3.2"


def test_sources_are_tried_in_order():
    sources = ("header:X-Session-ID", "header:X-User-ID", "body:user")
    assert extract_session(sources, {"X-User-ID": "u", "X-Session-ID": "s"}, {"user": "b"}) == "s"
    assert extract_session(sources, {"X-User-ID": "u"}, {"user": "b"}) == "u"
    assert extract_session(sources, {}, {"user": "b"}) == "b"
    assert extract_session(sources, {}, {"user": 42}) is None  # not a string: ignored
    assert extract_session(sources, {}, {}) is None


def test_hundred_thousand_session_ids_stay_capped():
    evicted: list[str] = []
    labels = SessionLabels(cap=200, ttl=900, on_evict=evicted.append, clock=FakeClock())
    values = {labels.label(f"user-{i}") for i in range(100_000)}
    assert len(values) == 201 and OVERFLOW in values
    assert len(labels) == 200
    assert labels.label("user-5") == "user-5"  # an admitted session keeps its label


def test_expired_values_are_evicted_and_free_their_slot():
    clock = FakeClock()
    evicted: list[str] = []
    labels = SessionLabels(cap=2, ttl=60, on_evict=evicted.append, clock=clock)
    assert labels.label("a") == "a" and labels.label("b") == "b"
    assert labels.label("c") == OVERFLOW
    clock.now += 30
    assert labels.label("b") == "b"  # b is refreshed
    clock.now += 31  # a is 61 s old, b only 31 s
    assert labels.label("c") == "c"
    assert evicted == ["a"]
    assert labels.label("none") == OVERFLOW and labels.label("other") == OVERFLOW  # reserved


def test_session_hash_is_short_and_stable():
    assert session_hash("alice") == session_hash("alice") != session_hash("bob")
    assert len(session_hash("alice")) == 12 and "alice" not in session_hash("alice")


def test_many_sessions_through_the_proxy_leave_at_most_cap_plus_two_values(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(session_label_cap=5) as p:
        with requests.Session() as http:
            for i in range(30):
                http.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []},
                          headers={"X-Session-ID": f"s{i}"})
            http.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []})  # no session
        sessions = {dict(labels)["session"] for (name, labels) in p.scrape()
                    if name == "ollama_proxy_requests_total"}
        assert sessions == {*(p.session_label(f"s{i}") for i in range(5)), "other", "none"}
        assert p.value("ollama_proxy_requests_total", session="other") == 25
        assert p.value("ollama_proxy_session_labels") == 5


def test_evicted_session_series_disappear_from_metrics(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(session_label_ttl=1) as p:
        requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, headers={"X-Session-ID": "gone"})
        gone = p.session_label("gone")
        assert p.value("ollama_proxy_tokens_total", session=gone) > 0
        recorder = p.app[FORWARDER].recorder
        recorder.sessions.sweep(recorder.sessions._clock() + 5)
        scraped = p.scrape()
        assert not [k for k in scraped if dict(k[1]).get("session") == gone]
        assert p.value("ollama_proxy_session_labels_evicted_total") == 1


def test_a_request_outliving_its_session_ttl_does_not_escape_the_cap():
    clock = FakeClock(0.0)
    labels = SessionLabels(cap=1, ttl=10, on_evict=lambda _: None, clock=clock)
    assert labels.label("long-stream") == "long-stream"
    clock.now = 20
    assert labels.label("newcomer") == "newcomer"  # long-stream expired and was evicted
    # at the end of the long request the recorder re-admits its label: no room, so `other`
    assert labels.label("long-stream") == "other"


def test_the_recorder_re_admits_a_session_at_the_end_of_a_request():
    clock = FakeClock(0.0)
    recorder = Recorder(ProxyMetrics(), parse_config({"session_label_cap": 1}, environ={}), clock=clock)
    label = recorder.session_label("long-stream")
    clock.now = 2000.0  # past the TTL: evicted as soon as someone else arrives
    assert recorder.session_label("newcomer") == "newcomer"
    recorder.record(RequestRecord("/api/chat", model=MODEL, session=label, duration=1.0))
    sessions = {s.labels["session"] for f in recorder.metrics.registry.collect()
                if f.name == "ollama_proxy_requests" for s in f.samples}
    assert sessions == {"other"}  # not "long-stream": the cap holds


def test_hashed_session_labels_survive_a_restart_through_the_key_beside_the_state_file(httpserver, tmp_path):
    from tests.conftest import running_proxy
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    settings = {"upstream": httpserver.url_for("/").rstrip("/"), "access_log": False,
                "state_file": str(tmp_path / "state.json")}
    labels = []
    for _ in range(2):  # a restart: same key, same label, so the user's series continue
        with running_proxy(settings) as p:
            requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, headers={"X-User-ID": "u-42"})
            (label,) = {dict(k[1])["session"] for k in p.scrape() if k[0] == "ollama_proxy_requests_total"}
            labels.append(label)
    assert labels[0] == labels[1] and "u-42" not in labels[0]
    key_file = tmp_path / "state.json.session-key"
    assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_a_configured_session_key_gives_every_replica_the_same_labels(httpserver, tmp_path):
    from tests.conftest import running_proxy
    key = tmp_path / "session.key"
    key.write_text("k" * 40)
    settings = {"upstream": "http://127.0.0.1:9", "access_log": False, "session_key_file": str(key)}
    with running_proxy(settings) as a, running_proxy(settings) as b:
        assert a.session_label("u-42") == b.session_label("u-42") != a.session_label("u-43")
    with running_proxy(settings, environ={"OLLAMA_SIDECAR_SESSION_KEY": "another key"}) as c:
        assert c.session_label("u-42") != a.session_label("u-42")  # the environment outranks the file
