"""Progressive rollouts end to end over real sockets: the CLI and admin API in front of a
running proxy, a faithful fake Ollama behind it (/api/show answers 404 for a model it
lacks, /api/generate with no prompt loads the model), sticky sessions, a canary that
breaks mid-ramp, and notifications to a webhook that sometimes fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import requests
from werkzeug import Request, Response

from proxy.commands.ctl import EXIT_OK, EXIT_REFUSED
from tests.conftest import running_proxy, wait_for
from tests.ollama_fake import chat_chunks, ndjson, stream_response

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STABLE, CANARY = "qwen3:32b", "qwen3:32b-ft-v2"
INSTALLED = {STABLE, CANARY}


class FakeOllama:
    """Chat, show and load as Ollama answers them; the canary can be broken on demand."""

    def __init__(self) -> None:
        self.canary_broken = False
        self.loaded: list[str] = []
        self.notes: list[dict] = []
        self.notify_fail = False
        self.lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        body = json.loads(request.get_data() or b"{}")
        model = body.get("model", "")
        if request.path == "/hook":
            with self.lock:
                self.notes.append(body)
            return Response("no", status=500) if self.notify_fail else Response("ok")
        if model not in INSTALLED:
            return Response(json.dumps({"error": f"model '{model}' not found"}), status=404,
                            content_type="application/json")
        if request.path == "/api/show":
            return Response(json.dumps({"modelfile": "FROM x", "details": {"family": "qwen3"}}),
                            content_type="application/json")
        if request.path == "/api/generate" and "prompt" not in body:
            with self.lock:
                self.loaded.append(model)
            return Response(json.dumps({"model": model, "created_at": "2026-11-29T10:00:00Z", "response": "",
                                        "done": True, "done_reason": "load"}), content_type="application/json")
        if model == CANARY and self.canary_broken:
            return Response(json.dumps({"error": "an error was encountered while running the model"}), status=500,
                            content_type="application/json")
        return stream_response([ndjson(chat_chunks(model, ["ok"]))])


@pytest.fixture
def fake(httpserver):
    ollama = FakeOllama()
    for path in ("/api/chat", "/api/show", "/api/generate", "/hook"):
        httpserver.expect_request(path).respond_with_handler(ollama.handle)
    return ollama


@pytest.fixture
def proxy(httpserver, fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_SIDECAR_ADMIN_TOKEN", TOKEN)
    settings = {
        "upstream": httpserver.url_for("/").rstrip("/"), "access_log": False,
        "state_file": str(tmp_path / "state.json"), "rollout_tick": 0.05,
        "notify": {"url": httpserver.url_for("/hook")},
        "routes": {"chat": {"stable": STABLE, "canary": CANARY, "canary_weight": 0,
                            "rollout": {"steps": [10, 50], "interval": 0.5, "min_requests": 20}}},
    }
    with running_proxy(settings, environ=dict(os.environ)) as p:
        yield p


def cli(p, *args):
    env = dict(os.environ, OLLAMA_SIDECAR_URL=p.url, OLLAMA_SIDECAR_ADMIN_TOKEN=TOKEN)
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def chat(p, session: str) -> requests.Response:
    return requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": []},
                         headers={"X-Session-ID": session})


def traffic(p, sessions: int = 200) -> dict[str, str]:
    """One request per session; returns the model that served each session."""
    return {f"s{i}": chat(p, f"s{i}").headers["X-Sidecar-Model"] for i in range(sessions)}


def status(p) -> dict:
    return requests.get(f"{p.url}/admin/routes/chat/rollout", headers=AUTH).json()


def test_a_rollout_started_from_the_cli_climbs_the_ramp_and_promotes_the_canary(proxy, fake):
    r = cli(proxy, "rollout", "start", "chat")
    assert r.returncode == EXIT_OK, r.stderr
    assert "PROGRESSING, step 1 of 3 at 10%" in r.stdout
    assert fake.loaded == [CANARY]  # loaded before the first user met it
    canary_sessions: set[str] = set()
    while status(proxy)["phase"] == "progressing":
        models = traffic(proxy, 100)
        assert not {s for s in canary_sessions if models[s] != CANARY}, "a session went back to stable"
        canary_sessions |= {s for s, model in models.items() if model == CANARY}
    doc = status(proxy)
    assert doc["phase"] == "succeeded"
    assert [h["weight"] for h in doc["history"] if h["event"] in ("step", "promoted")] == [10, 50, 100]
    state = requests.get(f"{proxy.url}/admin/routes/chat", headers=AUTH).json()
    assert (state["stable"], state["canary"]) == (CANARY, None)
    assert proxy.value("ollama_proxy_rollout_phase", route="chat", phase="succeeded") == 1
    wait_for(lambda: [n["event"] for n in fake.notes][-1:] == ["succeeded"], 5, "the last notification")
    assert all("text" in n for n in fake.notes)


def test_a_canary_that_breaks_mid_ramp_is_rolled_back_and_resume_restores_the_old_weight(proxy, fake):
    assert cli(proxy, "rollout", "start", "chat").returncode == EXIT_OK
    traffic(proxy, 100)
    fake.canary_broken = True
    fake.notify_fail = True  # a chat outage never holds a rollback
    wait_for(lambda: (traffic(proxy, 50) and status(proxy)["phase"] == "failed"), 30, "the rollback")
    doc = status(proxy)
    assert "failure_ratio" in doc["reason"] and doc["route_state"]["rolled_back"]
    assert doc["route_state"]["reason"] == "rollout"
    assert proxy.value("ollama_proxy_rollout_notifications_total", outcome="failed") >= 1
    r = cli(proxy, "rollout", "status", "chat")
    assert "FAILED" in r.stdout and "failure_ratio" in r.stdout
    assert cli(proxy, "resume", "chat").returncode == EXIT_OK
    assert requests.get(f"{proxy.url}/admin/routes/chat", headers=AUTH).json()["effective_weight"] == 0


def test_a_missing_canary_fails_the_start_not_the_users(proxy, fake):
    r = cli(proxy, "rollout", "start", "chat", "--canary", "qwen3:32b-ft-v3")
    assert r.returncode == EXIT_REFUSED and "not installed" in r.stderr
    assert status(proxy)["phase"] == "idle" and fake.loaded == []


def test_while_a_rollout_runs_route_set_is_refused_and_a_second_start_too(proxy):
    assert cli(proxy, "rollout", "start", "chat").returncode == EXIT_OK
    r = cli(proxy, "route", "set", "chat", "--weight", "30")
    assert r.returncode == EXIT_REFUSED and "rollout" in r.stderr
    assert cli(proxy, "rollout", "start", "chat").returncode == EXIT_REFUSED
    assert cli(proxy, "rollout", "pause", "chat").returncode == EXIT_OK
    assert status(proxy)["phase"] == "paused"
    r = cli(proxy, "rollout", "abort", "chat")
    assert r.returncode == EXIT_OK and "FAILED" in r.stdout
    assert cli(proxy, "rollout", "abort", "chat").returncode == EXIT_REFUSED  # nothing running


def test_bad_start_requests_get_clear_errors(proxy):
    for body, message in (({"steps": [50, 10]}, "steps must rise"), ({"interval": "soon"}, "duration"),
                          ({"bogus": 1}, "unknown field")):
        r = requests.post(f"{proxy.url}/admin/routes/chat/rollout", json=body, headers=AUTH)
        assert r.status_code == 400 and message in r.json()["error"]
    r = requests.post(f"{proxy.url}/admin/routes/nope/rollout", json={}, headers=AUTH)
    assert r.status_code == 404


def test_a_rollouts_evidence_includes_regenerations_and_ratings_seen_by_the_proxy(proxy):
    assert cli(proxy, "rollout", "start", "chat").returncode == EXIT_OK
    messages = [{"role": "user", "content": "hi"}]
    rids = []
    for i in range(40):
        for _ in range(2):  # the same turn twice: a regeneration
            r = requests.post(f"{proxy.url}/api/chat", json={"model": "chat", "messages": messages},
                              headers={"X-Session-ID": f"s{i}"})
        rids.append(r.headers["X-Request-ID"])
    for rid in rids:
        assert requests.post(f"{proxy.url}/api/feedback", json={"request_id": rid, "score": -1}).status_code == 200
    def counted(doc: dict) -> bool:
        return sum(doc["total"][arm]["regenerations"] for arm in ("stable", "canary")) == 40 and \
            sum(doc["total"][arm]["negative"] for arm in ("stable", "canary")) == 40
    wait_for(lambda: counted(status(proxy)), 5, "the rollout to count the regenerations and ratings")
    doc = status(proxy)
    assert doc["phase"] == "progressing"
    assert sum(doc["total"][arm]["chats"] for arm in ("stable", "canary")) == 80
    assert sum(doc["total"][arm]["negative"] for arm in ("stable", "canary")) == 40
