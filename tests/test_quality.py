"""Quality signals (proxy/quality/): exact session flow under churn and expiry, the
tracking cap, regenerations told apart from retries and new turns on both APIs, feedback
attributed to the arm that answered, and nothing of a prompt or a session id kept."""

from __future__ import annotations

import json
import pickle

import pytest
import requests

from proxy.metrics import ProxyMetrics
from proxy.quality.feedback import FeedbackError, FeedbackStore, rating_of, request_id_from
from proxy.quality.sessions import NEW_TURN, REGENERATION, RETRY, SessionTracker, conversation_hash, user_turns
from tests.conftest import FakeClock
from tests.ollama_fake import chat_chunks, ndjson, openai_chat_handler, stream_response

Q1 = [{"role": "user", "content": "What is the capital of Australia?"}]
A1 = {"role": "assistant", "content": "Canberra."}
Q2 = Q1 + [A1, {"role": "user", "content": "And its population?"}]


def sample(metrics: ProxyMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- sessions -------------------------------------------------------------------------------------

def test_sessions_are_counted_exactly_under_churn_and_expiry():
    clock, metrics = FakeClock(), ProxyMetrics()
    tracker = SessionTracker(metrics, active_window=300, cap=10_000, clock=clock)
    for i in range(100):
        tracker.observe(f"user-{i}", "chat", "canary" if i % 4 == 0 else "stable", None, False)
    assert sample(metrics, "ollama_proxy_active_sessions", route="chat", arm="stable") == 75
    assert sample(metrics, "ollama_proxy_sessions_total", route="chat", arm="canary", event="started") == 25
    clock.advance(200)
    for i in range(50):  # half come back: still the same sessions
        tracker.observe(f"user-{i}", "chat", "canary" if i % 4 == 0 else "stable", None, False)
    clock.advance(200)  # the other half were last seen 400 s ago
    assert tracker.sweep() == 50  # user-50..99: 38 stable, 12 canary
    assert sample(metrics, "ollama_proxy_sessions_total", route="chat", arm="stable", event="expired") == 38
    assert sample(metrics, "ollama_proxy_active_sessions", route="chat", arm="stable") == 37
    assert sample(metrics, "ollama_proxy_session_duration_seconds_count", route="chat", arm="stable") == 38
    clock.advance(400)
    assert tracker.sweep() == 50
    assert sample(metrics, "ollama_proxy_active_sessions", route="chat", arm="canary") == 0
    # the ones that came back lasted 200 s and made 2 requests
    assert sample(metrics, "ollama_proxy_session_requests_sum", route="chat", arm="stable") == 38 + 37 * 2
    assert sample(metrics, "ollama_proxy_session_duration_seconds_sum", route="chat", arm="stable") == 37 * 200
    # a session seen again after its window is a new session
    tracker.observe("user-1", "chat", "stable", None, False)
    assert sample(metrics, "ollama_proxy_sessions_total", route="chat", arm="stable", event="started") == 76


def test_beyond_the_cap_sessions_are_counted_as_overflow_not_tracked():
    metrics = ProxyMetrics()
    tracker = SessionTracker(metrics, active_window=300, cap=10, clock=FakeClock())
    for i in range(15):
        tracker.observe(f"u{i}", "chat", "stable", None, False)
    assert len(tracker.sessions) == 10
    assert sample(metrics, "ollama_proxy_sessions_total", route="chat", arm="stable", event="overflow") == 5


def test_regenerations_retries_and_new_turns_are_told_apart():
    tracker = SessionTracker(ProxyMetrics(), active_window=300, cap=100, clock=FakeClock())
    see = lambda messages, failed=False: tracker.observe("alice", "chat", "stable",  # noqa: E731
                                                         conversation_hash(messages), failed)
    assert see(Q1) == NEW_TURN
    assert see(Q1) == REGENERATION  # the same turn asked again
    assert see(Q2) == NEW_TURN  # the conversation went on
    edited = [dict(Q2[0], content="What is the capital of Austria?"), *Q2[1:]]
    assert see(edited) == NEW_TURN  # an edited earlier message is not the same turn
    assert see(Q1) == NEW_TURN  # a new conversation in the same session
    assert see(Q1, failed=True) == REGENERATION
    assert see(Q1) == RETRY  # sent again after a failure: a retry, not a regeneration
    assert tracker.observe("bob", "chat", "stable", conversation_hash(Q1), False) == NEW_TURN  # per session


def test_turns_count_user_messages_only():
    assert user_turns(Q2) == 2 and user_turns([]) == 0 and user_turns("text") == 0


def test_the_tracker_keeps_no_prompt_and_no_session_id_in_clear():
    tracker = SessionTracker(ProxyMetrics(), active_window=300, cap=100, clock=FakeClock())
    tracker.observe("alice@example.com", "chat", "stable", conversation_hash(Q2), False)
    dump = pickle.dumps(tracker.sessions) + repr(tracker.sessions).encode()
    for secret in (b"alice@example.com", b"Canberra", b"Australia", b"population"):
        assert secret not in dump


# --- feedback ---------------------------------------------------------------------------------------

def test_scores_map_to_ratings():
    assert [rating_of(s) for s in (1, -1, 0.5, 0.49, 0, 0.9)] == \
        ["positive", "negative", "positive", "negative", "negative", "positive"]
    assert [rating_of(s) for s in (2, -0.5, "1", True, None)] == [None] * 5


def test_a_clients_request_id_is_kept_only_when_well_formed():
    assert request_id_from("trace-42:a.b") == "trace-42:a.b"
    for bad in ("x" * 129, "has space", "new\nline", "", None):
        generated = request_id_from(bad)
        assert generated != bad and len(generated) == 24


def test_rating_the_same_answer_twice_counts_once_and_expired_ids_are_unknown():
    clock, metrics = FakeClock(), ProxyMetrics()
    store = FeedbackStore(metrics, ttl=3600, cap=1000, clock=clock)
    store.remember("r1", "chat", "canary", "qwen3:8b-ft", b"k")
    store.rate({"request_id": "r1", "score": -1, "comment": "wrong capital"}, b"k")
    store.rate({"request_id": "r1", "score": 1}, b"k")  # changed their mind: the last rating wins
    labels = {"route": "chat", "arm": "canary", "model": "qwen3:8b-ft"}
    net = {r: sample(metrics, "ollama_proxy_feedback_total", **labels, rating=r)
           - sample(metrics, "ollama_proxy_feedback_retracted_total", **labels, rating=r)
           for r in ("positive", "negative")}
    assert net == {"positive": 1, "negative": 0}
    with pytest.raises(FeedbackError) as other_key:
        store.rate({"request_id": "r1", "score": 1}, b"other")
    assert other_key.value.status == 404
    clock.advance(3601)
    with pytest.raises(FeedbackError) as expired:
        store.rate({"request_id": "r1", "score": 1}, b"k")
    assert expired.value.status == 404
    for body in ({"request_id": "r1"}, {"score": 1}, [], {"request_id": "r1", "score": 3}):
        with pytest.raises(FeedbackError) as bad:
            store.rate(body, b"k")
        assert bad.value.status == 400


def test_the_store_is_bounded():
    store = FeedbackStore(ProxyMetrics(), ttl=3600, cap=100, clock=FakeClock())
    for i in range(250):
        store.remember(f"r{i}", "chat", "stable", "m", b"")
    assert len(store.served) == 100 and "r249" in store.served and "r0" not in store.served


# --- through the proxy --------------------------------------------------------------------------------

ROUTES = {"chat": {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}}


def test_regenerations_on_both_apis_and_feedback_reach_the_arm_that_answered(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks(json.loads(r.get_data())["model"], ["Canberra."]))]))
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(openai_chat_handler("qwen3:8b", ["x"]))
    with proxy_for(routes=ROUTES) as p:
        def ask(messages, path="/api/chat", **headers):
            return requests.post(f"{p.url}{path}", json={"model": "chat", "messages": messages},
                                 headers={"X-Session-ID": "alice", **headers})
        first = ask(Q1, **{"X-Request-ID": "client-trace-1"})
        assert first.headers["X-Request-ID"] == "client-trace-1"
        arm = first.headers["X-Sidecar-Arm"]
        ask(Q1)  # the same turn again
        ask(Q2)
        ask(Q2, path="/v1/chat/completions")  # the same turn again, through the OpenAI API
        assert p.value("ollama_proxy_regenerations_total", route="chat", arm=arm) == 2
        assert p.value("ollama_proxy_conversation_turns_count", route="chat", arm=arm) == 4
        assert p.value("ollama_proxy_active_sessions", route="chat", arm=arm) == 1

        r = requests.post(f"{p.url}/api/feedback", json={"request_id": "client-trace-1", "score": -1})
        assert r.status_code == 200 and r.json()["arm"] == arm and r.json()["rating"] == "negative"
        assert p.value("ollama_proxy_feedback_total", route="chat", arm=arm, rating="negative") == 1
        r = requests.post(f"{p.url}/v1/feedback", json={"request_id": "nope", "score": 1})
        assert r.status_code == 404 and "no recent answer" in r.json()["error"]["message"]  # OpenAI's shape
        r = requests.post(f"{p.url}/api/feedback", data=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_feedback_needs_the_data_plane_key_and_ids_are_scoped_to_it(httpserver, proxy_for):
    httpserver.expect_request("/api/chat").respond_with_handler(
        lambda r: stream_response([ndjson(chat_chunks("qwen3:8b", ["ok"]))]))
    with proxy_for(auth={"api_keys": ["key-a", "key-b"]}) as p:
        a = {"Authorization": "Bearer key-a"}
        rid = requests.post(f"{p.url}/api/chat", json={"model": "qwen3:8b", "messages": Q1},
                            headers=a).headers["X-Request-ID"]
        assert requests.post(f"{p.url}/api/feedback", json={"request_id": rid, "score": 1}).status_code == 401
        other = requests.post(f"{p.url}/api/feedback", json={"request_id": rid, "score": 1},
                              headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 404  # another key's answer is not found, not forbidden
        assert requests.post(f"{p.url}/api/feedback", json={"request_id": rid, "score": 1},
                             headers=a).status_code == 200
