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
        assert sessions == {"s0", "s1", "s2", "s3", "s4", "other", "none"}
        assert p.value("ollama_proxy_requests_total", session="other") == 25
        assert p.value("ollama_proxy_session_labels") == 5


def test_evicted_session_series_disappear_from_metrics(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(MODEL, ["a"]))]))
    with proxy_for(session_label_ttl=1) as p:
        requests.post(f"{p.url}/api/chat", json={"model": MODEL, "messages": []}, headers={"X-Session-ID": "gone"})
        assert p.value("ollama_proxy_tokens_total", session="gone") > 0
        recorder = p.app[FORWARDER].recorder
        recorder.sessions.sweep(recorder.sessions._clock() + 5)
        scraped = p.scrape()
        assert not [k for k in scraped if dict(k[1]).get("session") == "gone"]
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
