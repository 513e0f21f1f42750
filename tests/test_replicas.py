"""Several proxy replicas that act as one through a real Redis (issue 13).

Every test here runs real ``redis-server`` processes (Debian's package; under CI=true a
missing binary fails the test) and proxies on real sockets in front of a faithful fake
Ollama. Timing: the issue asks that a change is seen everywhere within 1 s; that is the
only deadline asserted, the rest wait with generous ones.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import requests
import yaml

from proxy.commands.children import Child, free_port
from proxy.control.routing import bucket
from tests.conftest import RunningProxy, running_proxy, wait_for
from tests.ollama_fake import chat_chunks, ndjson
from tests.redis_server import RedisServer
from tests.test_rollout_api import CANARY, STABLE, FakeOllama

ROUTE = {"stable": "llama3:8b", "canary": "qwen2:7b", "canary_weight": 50}
WEBHOOK = {"version": "4", "status": "firing", "receiver": "proxy", "groupLabels": {}, "commonLabels": {},
           "commonAnnotations": {}, "externalURL": "http://am", "groupKey": "k", "truncatedAlerts": 0}


def rollback_alert(name: str = "OllamaCanaryErrorRateHigh", starts: str = "2026-11-29T10:00:00Z") -> dict[str, Any]:
    alert = {"status": "firing", "labels": {"alertname": name, "route": "chat", "action": "rollback"},
             "annotations": {}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
             "fingerprint": f"fp-{name}"}
    return dict(WEBHOOK, alerts=[alert])


def route(p: RunningProxy, name: str = "chat") -> dict[str, Any]:
    return requests.get(f"{p.url}/admin/routes/{name}", timeout=5).json()


def backend(p: RunningProxy) -> dict[str, Any]:
    return requests.get(f"{p.url}/admin/routes", timeout=5).json()["state"]


def serve_chat(httpserver) -> None:
    """The fake Ollama answers /api/chat for both models with a short stream."""
    def handler(request):
        from werkzeug.wrappers import Response
        model = json.loads(request.data)["model"]
        return Response(ndjson(chat_chunks(model, ["Hi", " there"])), content_type="application/x-ndjson")
    httpserver.expect_request("/api/chat", method="POST").respond_with_handler(handler)
    httpserver.expect_request("/api/version").respond_with_json({"version": "0.12.6"})


def chat(p: RunningProxy, session: str, request_id: str | None = None) -> requests.Response:
    headers = {"X-Session-ID": session}
    if request_id:
        headers["X-Request-ID"] = request_id
    return requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": [{"role": "user", "content": "q"}]},
                         headers=headers, timeout=10)


@contextmanager
def replicas(tmp_path: Path, httpserver, n: int = 3, redis: RedisServer | None = None, *,
             routes: dict[str, Any] | None = None, journal: bool = True, wait_up: bool = True,
             **settings: Any) -> Iterator[tuple[RedisServer, list[RunningProxy]]]:
    own = redis is None
    redis = redis or RedisServer(tmp_path / "redis").start()
    try:
        with ExitStack() as stack:
            proxies = [stack.enter_context(running_proxy(replica_settings(tmp_path, httpserver, redis, i, routes=routes,
                                                                          journal=journal, **settings)))
                       for i in range(n)]
            if wait_up:
                wait_for(lambda: all(backend(p)["up"] for p in proxies), 10, "every replica to join Redis")
            yield redis, proxies
    finally:
        if own:
            redis.stop()


def replica_settings(tmp_path: Path, httpserver, redis: RedisServer, i: int, *, routes: dict[str, Any] | None = None,
                     journal: bool = True, **settings: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"url": redis.url, "lease": "2s", "sync_interval": "0.1s"}
    if journal:
        state["journal"] = str(tmp_path / f"replica-{i}" / "journal.jsonl")
    return {"upstream": httpserver.url_for("/").rstrip("/"), "access_log": False,
            "routes": routes or {"chat": dict(ROUTE)}, "state": state, **settings}


# --- a change anywhere is a change everywhere ----------------------------------------------------

def test_a_change_through_one_replica_is_seen_by_the_others_within_a_second(tmp_path, httpserver):
    with replicas(tmp_path, httpserver) as (_, (a, b, c)):
        for weight, via in ((30, a), (70, b), (10, c)):
            resp = requests.put(f"{via.url}/admin/routes/chat", json={"canary_weight": weight}, timeout=5)
            assert resp.status_code == 200, resp.text
            wait_for(lambda: all(route(p)["weight"] == weight for p in (a, b, c)), 1.0,
                     f"every replica to show weight {weight} within 1 s")
        # and the data plane follows: every replica's gauge says the same
        for p in (a, b, c):
            assert p.value("ollama_proxy_route_canary_weight", route="chat") == 10


def test_rollback_promote_and_resume_through_any_replica_reach_all(tmp_path, httpserver):
    with replicas(tmp_path, httpserver) as (_, (a, b, c)):
        assert requests.post(f"{a.url}/admin/routes/chat/rollback", json={"reason": "bad answers"},
                             timeout=5).status_code == 200
        wait_for(lambda: all(route(p)["rolled_back"] and route(p)["reason"] == "admin:bad answers"
                             for p in (a, b, c)), 1.0, "the rollback everywhere")
        assert requests.post(f"{b.url}/admin/routes/chat/resume", timeout=5).status_code == 200
        wait_for(lambda: all(not route(p)["rolled_back"] and route(p)["weight"] == 50 for p in (a, b, c)), 1.0,
                 "the resume everywhere")
        assert requests.post(f"{c.url}/admin/routes/chat/promote", timeout=5).status_code == 200
        wait_for(lambda: all(route(p)["stable"] == "qwen2:7b" and route(p)["canary"] is None for p in (a, b, c)),
                 1.0, "the promotion everywhere")


def test_concurrent_conflicting_changes_end_in_one_consistent_state(tmp_path, httpserver):
    with replicas(tmp_path, httpserver) as (redis, proxies):
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            for i in range(30):
                via = proxies[i % 3]
                body = {"canary_weight": i} if i % 2 else {"canary": f"model-{i}:1b"}
                jobs.append(pool.submit(requests.put, f"{via.url}/admin/routes/chat", json=body, timeout=10))
        assert all(j.result().status_code == 200 for j in jobs), [j.result().text for j in jobs]
        saved = json.loads(redis.client().hget("ollama-sidecar:route:chat", "doc"))
        wait_for(lambda: len({json.dumps({k: route(p)[k] for k in ("stable", "canary", "weight")}, sort_keys=True)
                              for p in proxies}) == 1, 2, "the replicas to agree")
        final = route(proxies[0])
        assert (final["canary"], final["weight"]) == (saved["canary"], saved["weight"])
        # every change was applied on the state before it, none lost in a mix: the last
        # canary written and the last weight written are both there
        assert final["canary"].startswith("model-") and final["weight"] in range(1, 30, 2)
        assert redis.client().hget("ollama-sidecar:route:chat", "rev") == str(30 + 1)  # 30 changes + the first write
        # each change counted once, by the replica that made it, races redone or not
        assert sum(p.value("ollama_proxy_route_changes_total", route="chat", reason="admin") for p in proxies) == 30


def single_proxy_rolled_back(tmp_path: Path, httpserver, reason: str) -> Path:
    """The state file of one proxy (as before replicas) whose route an operator rolled back."""
    state_file = tmp_path / "state.json"
    with running_proxy({"upstream": httpserver.url_for("/").rstrip("/"), "access_log": False,
                        "routes": {"chat": dict(ROUTE)}, "state_file": str(state_file)}) as single:
        requests.post(f"{single.url}/admin/routes/chat/rollback", json={"reason": reason}, timeout=5)
    return state_file


def importing_replicas(stack: ExitStack, tmp_path: Path, httpserver, redis: RedisServer, state_file: Path,
                       **state: Any) -> list[RunningProxy]:
    """Two replicas with ``state.import_from`` the file, joined."""
    ps = []
    for i in range(2):
        settings = replica_settings(tmp_path, httpserver, redis, i)
        settings["state"].update(import_from=str(state_file), **state)
        ps.append(stack.enter_context(running_proxy(settings)))
    wait_for(lambda: all(backend(p)["up"] for p in ps), 10, "the replicas to join")
    return ps


def test_a_state_file_is_imported_once_on_the_first_start(tmp_path, httpserver):
    state_file = single_proxy_rolled_back(tmp_path, httpserver, "before replicas")
    redis = RedisServer(tmp_path / "redis").start()
    try:
        for start in ("first", "second"):
            with ExitStack() as stack:
                ps = importing_replicas(stack, tmp_path, httpserver, redis, state_file, key_prefix="prod:")
                if start == "first":
                    assert all(route(p)["rolled_back"] and route(p)["reason"] == "admin:before replicas" for p in ps)
                    assert requests.post(f"{ps[0].url}/admin/routes/chat/resume", timeout=5).status_code == 200
                else:  # Redis's state stands: the file is not imported again
                    assert all(not route(p)["rolled_back"] and route(p)["weight"] == 50 for p in ps)
        assert json.loads(redis.client().hget("prod:meta", "imported"))["from"] == str(state_file)
    finally:
        redis.stop()


def test_a_redis_that_comes_back_empty_gets_the_replicas_state_not_the_old_file(tmp_path, httpserver):
    """Redis loses its data (FLUSHALL here; a restart without persistence in life) while the
    replicas run: they write what they hold, the operator's resume included, and the state
    file imported at the first start is not imported again."""
    state_file = single_proxy_rolled_back(tmp_path, httpserver, "old")
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ExitStack() as stack:
            ps = importing_replicas(stack, tmp_path, httpserver, redis, state_file)
            assert requests.post(f"{ps[0].url}/admin/routes/chat/resume", timeout=5).status_code == 200
            wait_for(lambda: not route(ps[1])["rolled_back"], 1.0, "the resume everywhere")
            redis.client().flushall()
            redis.kill()
            redis.start()
            wait_for(lambda: all(backend(p)["up"] for p in ps), 10, "the replicas to join again")
            time.sleep(0.5)
            assert all(not route(p)["rolled_back"] for p in ps)
            saved = json.loads(redis.client().hget("ollama-sidecar:route:chat", "doc"))
            assert saved["rolled_back"] is False and saved["reason"] == "resume"
    finally:
        redis.stop()


# --- Redis away --------------------------------------------------------------------------------------

def test_with_redis_down_requests_are_served_admin_changes_get_503_and_state_converges_after(tmp_path, httpserver):
    serve_chat(httpserver)
    with replicas(tmp_path, httpserver) as (redis, (a, b, c)):
        redis.kill()
        failures = []
        for i in range(30):
            resp = chat((a, b, c)[i % 3], f"user-{i}")
            if resp.status_code != 200 or b'"done":true' not in resp.content.replace(b" ", b""):
                failures.append(resp.status_code)
        assert failures == []
        wait_for(lambda: not any(backend(p)["up"] for p in (a, b, c)), 5, "every replica to notice Redis is gone")
        refused = requests.put(f"{b.url}/admin/routes/chat", json={"canary_weight": 5}, timeout=5)
        assert refused.status_code == 503 and "NOT made" in refused.json()["error"]
        assert route(b)["weight"] == 50  # nothing applied on one replica alone
        assert b.value("ollama_proxy_route_changes_total", route="chat", reason="admin") == 0
        assert b.value("ollama_proxy_state_backend_up") == 0
        assert "Connection" in (backend(b)["problem"] or "")
        redis.start()
        wait_for(lambda: all(backend(p)["up"] for p in (a, b, c)), 10, "every replica to reconnect")
        assert b.value("ollama_proxy_state_backend_up") == 1
        assert requests.put(f"{b.url}/admin/routes/chat", json={"canary_weight": 5}, timeout=5).status_code == 200
        wait_for(lambda: all(route(p)["weight"] == 5 for p in (a, b, c)), 1.0, "the change everywhere")


def test_a_replica_that_met_a_redis_stall_joins_again_by_itself(tmp_path, httpserver):
    """Redis stops answering writes for 1.5 s (CLIENT PAUSE, as during a failover): a change
    then is refused, and afterwards the replica is up, leads or follows, and takes changes."""
    with replicas(tmp_path, httpserver, 2) as (redis, (a, b)):
        redis.client().execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        refused = requests.put(f"{a.url}/admin/routes/chat", json={"canary_weight": 7}, timeout=10)
        assert refused.status_code == 503
        wait_for(lambda: backend(a)["up"] and backend(b)["up"], 10, "both replicas to join again")
        wait_for(lambda: sum(p.value("ollama_proxy_replica_leader") for p in (a, b)) == 1, 10, "one leader again")
        assert requests.put(f"{a.url}/admin/routes/chat", json={"canary_weight": 7}, timeout=5).status_code == 200
        wait_for(lambda: route(b)["weight"] == 7, 1.0, "the change on the other replica")


def test_a_webhook_delivered_to_one_replica_while_redis_is_down_reaches_all_once_it_is_back(tmp_path, httpserver):
    with replicas(tmp_path, httpserver) as (redis, (a, b, c)):
        redis.kill()
        wait_for(lambda: not backend(b)["up"], 5, "replica b to notice")
        resp = requests.post(f"{b.url}/admin/alertmanager", json=rollback_alert(), timeout=5)
        assert resp.status_code == 200 and resp.json()["applied"] == 1
        assert route(b)["rolled_back"]  # safety first: this replica at once
        assert not route(a)["rolled_back"] and not route(c)["rolled_back"]
        assert backend(b)["journal_entries"] == 1 and b.value("ollama_proxy_state_journal_entries") == 1
        journal = Path(backend(b)["journal"])
        assert json.loads(journal.read_text())["op"] == "rollback"
        redis.start()
        wait_for(lambda: all(route(p)["rolled_back"] and route(p)["reason"] == "alert:OllamaCanaryErrorRateHigh"
                             for p in (a, b, c)), 10, "the rollback on every replica")
        assert journal.read_text() == ""
        assert backend(b)["journal_entries"] == 0
        # the alert instance it acted on went to Redis with it: no replica acts on it again
        assert redis.client().zscore("ollama-sidecar:alerts", "fp-OllamaCanaryErrorRateHigh@2026-11-29T10:00:00Z")


def test_without_a_journal_a_webhook_while_redis_is_down_gets_503_until_redis_has_it(tmp_path, httpserver):
    with replicas(tmp_path, httpserver, 2, journal=False) as (redis, (a, b)):
        redis.kill()
        wait_for(lambda: not backend(a)["up"], 5, "replica a to notice")
        first = requests.post(f"{a.url}/admin/alertmanager", json=rollback_alert(), timeout=5)
        assert first.status_code == 503 and "retry" in first.json()["error"]
        assert route(a)["rolled_back"]  # applied here all the same
        retry = requests.post(f"{a.url}/admin/alertmanager", json=rollback_alert(), timeout=5)
        assert retry.status_code == 503  # a duplicate is no more durable than the first
        redis.start()
        wait_for(lambda: route(b)["rolled_back"], 10, "the held rollback to reach b")
        wait_for(lambda: backend(a)["up"], 10, "a to finish joining")
        assert requests.post(f"{a.url}/admin/alertmanager", json=rollback_alert(), timeout=5).status_code == 200


def test_status_says_where_the_state_is_and_what_a_down_redis_means(tmp_path, httpserver):
    with replicas(tmp_path, httpserver, 1) as (redis, (a,)):
        up = ctl_status(a.url)
        assert f"shared state: Redis {redis.url} (prefix ollama-sidecar:) up" in up and "rollout leader" in up
        redis.kill()
        wait_for(lambda: not backend(a)["up"], 5, "the replica to notice")
        down = ctl_status(a.url)
        assert f"shared state: Redis {redis.url} DOWN" in down
        assert "admin changes are refused (503)" in down


def ctl_status(url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "status", "--proxy", url], capture_output=True,
                          text=True, timeout=30, env={k: v for k, v in os.environ.items()
                                                      if not k.startswith("OLLAMA_SIDECAR_ADMIN")})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_replica_started_while_redis_is_down_serves_from_config_and_joins_when_it_is_back(tmp_path, httpserver):
    serve_chat(httpserver)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with replicas(tmp_path, httpserver, 1, redis) as (_, (a,)):
            requests.put(f"{a.url}/admin/routes/chat", json={"canary_weight": 20}, timeout=5)
            redis.kill()
            with running_proxy(replica_settings(tmp_path, httpserver, redis, 1)) as late:
                assert not backend(late)["up"]
                assert route(late)["weight"] == 50  # from its config
                assert chat(late, "someone").status_code == 200
                redis.start()
                wait_for(lambda: backend(late)["up"], 10, "the late replica to join")
                wait_for(lambda: route(late)["weight"] == 20, 2, "the late replica to take the shared state")
    finally:
        redis.stop()


def test_wrong_password_is_a_clear_problem_and_the_password_is_never_shown(tmp_path, httpserver, caplog):
    redis = RedisServer(tmp_path / "redis", password="s3cret-pw").start()
    try:
        good = replica_settings(tmp_path, httpserver, redis, 0)
        good["state"]["url"] = f"redis://:s3cret-pw@127.0.0.1:{redis.port}/0"
        with running_proxy(good) as a:
            wait_for(lambda: backend(a)["up"], 10, "the replica with the password to join")
            shown = requests.get(f"{a.url}/admin/routes", timeout=5).text
            assert "s3cret-pw" not in shown and backend(a)["url"] == f"redis://127.0.0.1:{redis.port}/0"
        with running_proxy(replica_settings(tmp_path, httpserver, redis, 1),
                           environ={"OLLAMA_SIDECAR_REDIS_PASSWORD": "b4d-pa55word"}) as b:
            wait_for(lambda: backend(b)["problem"] and "not connected" not in backend(b)["problem"], 5, "a problem")
            assert not backend(b)["up"]
            assert "password" in backend(b)["problem"].lower() or "auth" in backend(b)["problem"].lower()
        assert "s3cret-pw" not in caplog.text and "b4d-pa55word" not in caplog.text
    finally:
        redis.stop()


def test_replicas_share_state_over_tls_and_refuse_a_server_they_cannot_verify(tmp_path, httpserver, caplog):
    redis = RedisServer(tmp_path / "redis", tls=True).start()
    try:
        with replicas(tmp_path, httpserver, 2, redis) as (_, (a, b)):
            assert backend(a)["url"].startswith("rediss://localhost:")
            assert requests.put(f"{a.url}/admin/routes/chat", json={"canary_weight": 3}, timeout=5).status_code == 200
            wait_for(lambda: route(b)["weight"] == 3, 1.0, "the change over TLS")
        unverified = replica_settings(tmp_path, httpserver, redis, 2)
        unverified["state"]["url"] = f"rediss://localhost:{redis.port}/0"  # the private CA not given
        with running_proxy(unverified) as c:
            wait_for(lambda: "not connected" not in (backend(c)["problem"] or "not connected"), 5, "a problem")
            assert not backend(c)["up"] and "certificate" in backend(c)["problem"].lower()
    finally:
        redis.stop()


def test_two_deployments_on_one_redis_keep_apart_by_prefix(tmp_path, httpserver):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ExitStack() as stack:
            ps = []
            for i, prefix in enumerate(("team-a:", "team-b:")):
                settings = replica_settings(tmp_path, httpserver, redis, i)
                settings["state"]["key_prefix"] = prefix
                ps.append(stack.enter_context(running_proxy(settings)))
            wait_for(lambda: all(backend(p)["up"] for p in ps), 10, "both to join")
            requests.put(f"{ps[0].url}/admin/routes/chat", json={"canary_weight": 1}, timeout=5)
            time.sleep(0.5)
            assert route(ps[1])["weight"] == 50
            assert ps[0].value("ollama_proxy_replica_leader") == ps[1].value("ollama_proxy_replica_leader") == 1
    finally:
        redis.stop()


# --- automatic decisions on everyone's counts -------------------------------------------------------

def test_the_breaker_decides_on_the_sum_of_every_replica(tmp_path, httpserver):
    """Each replica alone sees 12 failing canary requests (and 12 good stable ones), under
    the breaker's minimum of 30; the sum (36) is over it, and the route is rolled back on
    all three, by one decision."""
    def handler(request):
        from werkzeug.wrappers import Response
        model = json.loads(request.data)["model"]
        if model == "qwen2:7b":
            return Response(json.dumps({"error": "runner crashed"}), status=500, content_type="application/json")
        return Response(ndjson(chat_chunks(model, ["ok"])), content_type="application/x-ndjson")
    httpserver.expect_request("/api/chat", method="POST").respond_with_handler(handler)
    breaker = {"enabled": True, "min_requests": 30, "failure_ratio": 0.5, "window": 120}
    routes = {"chat": dict(ROUTE, breaker=breaker)}
    with replicas(tmp_path, httpserver, routes=routes) as (_, proxies):
        for p in proxies:
            canary = canary_sessions("", 50, 12, p.url)
            stable = [k for k in (f"{p.url}-s{i}" for i in range(100)) if bucket("chat", k) >= 50][:12]
            for c, s in zip(canary, stable):
                # 500 from the broken canary, until the sum trips the breaker (with the last
                # replica's requests): stable answers that session then
                answered = chat(p, c)
                assert answered.status_code == 500 or answered.headers["X-Sidecar-Arm"] == "stable"
                assert chat(p, s).status_code == 200
            if p is proxies[0]:
                time.sleep(0.5)  # flushed and summed several times over: one replica's 12 are not enough
                assert not any(route(q)["rolled_back"] for q in proxies)
        wait_for(lambda: all(route(p)["rolled_back"] and route(p)["reason"] == "breaker" for p in proxies), 10,
                 "the shared breaker to roll back every replica")
        assert sum(p.value("ollama_proxy_route_changes_total", route="chat", reason="breaker") for p in proxies) == 1


def test_feedback_resolves_on_any_replica_and_a_rerating_replaces(tmp_path, httpserver):
    serve_chat(httpserver)
    with replicas(tmp_path, httpserver) as (_, (a, b, c)):
        answered = chat(a, "rater", request_id="answer-1")
        assert answered.headers["X-Request-ID"] == "answer-1"
        rated = requests.post(f"{b.url}/api/feedback", json={"request_id": "answer-1", "score": -1}, timeout=10)
        assert rated.status_code == 200, rated.text
        arm = rated.json()["arm"]
        again = requests.post(f"{c.url}/v1/feedback", json={"request_id": "answer-1", "score": 1}, timeout=10)
        assert again.status_code == 200 and again.json()["arm"] == arm
        assert c.value("ollama_proxy_feedback_retracted_total", route="chat", arm=arm, rating="negative") == 1
        unknown = requests.post(f"{c.url}/api/feedback", json={"request_id": "never-served", "score": 1}, timeout=10)
        assert unknown.status_code == 404


# --- the rollout leader -----------------------------------------------------------------------------

def test_exactly_one_replica_leads_and_another_takes_over_within_the_lease(tmp_path, httpserver):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with ExitStack() as outer:
            ps = [outer.enter_context(running_proxy(replica_settings(tmp_path, httpserver, redis, i)))
                  for i in range(2)]
            wait_for(lambda: all(backend(p)["up"] for p in ps), 10, "both to join")
            wait_for(lambda: sum(p.value("ollama_proxy_replica_leader") for p in ps) == 1, 5, "one leader")
            with running_proxy(replica_settings(tmp_path, httpserver, redis, 2)) as third:
                wait_for(lambda: backend(third)["up"], 10, "the third to join")
                time.sleep(1)
                assert sum(p.value("ollama_proxy_replica_leader") for p in (*ps, third)) == 1
    finally:
        redis.stop()


def canary_sessions(salt: str, weight: float, n: int, tag: str) -> list[str]:
    """``n`` session ids that the rollout's salted hash puts on the canary at ``weight``."""
    out = []
    i = 0
    while len(out) < n:
        key = f"{tag}-{i}"
        if bucket("chat", key, salt) < weight:
            out.append(key)
        i += 1
    return out


def test_a_rollout_advances_on_counts_from_every_replica(tmp_path, httpserver):
    """min_requests 12 per step and each of three replicas sees 5 canary requests: only
    the sum (15) lets the step pass; the step is announced once, by the leader."""
    fake = FakeOllama()
    for path in ("/api/chat", "/api/show", "/api/generate", "/hook"):
        httpserver.expect_request(path).respond_with_handler(fake.handle)
    rollout = {"steps": [20, 50], "interval": "0.5s", "min_requests": 12}
    routes = {"chat": {"stable": STABLE, "canary": CANARY, "canary_weight": 0, "rollout": rollout}}
    with replicas(tmp_path, httpserver, routes=routes, rollout_tick=0.1,
                  notify={"url": httpserver.url_for("/hook")}) as (_, proxies):
        started = requests.post(f"{proxies[1].url}/admin/routes/chat/rollout", json={}, timeout=10)
        assert started.status_code == 200, started.text
        salt = started.json()["salt"]
        wait_for(lambda: all(route(p)["weight"] == 20 for p in proxies), 1.0, "the first step everywhere")
        time.sleep(1.0)  # the step's interval has passed: only the count holds it
        for p in proxies:
            for session in canary_sessions(salt, 20, 5, p.url):
                assert chat(p, session).status_code == 200
        for p in proxies:
            assert p.value("ollama_proxy_route_requests_total", route="chat", arm="canary") == 5
        wait_for(lambda: all(route(p)["weight"] == 50 for p in proxies), 5, "the ramp to move on the summed counts")
        status = requests.get(f"{proxies[2].url}/admin/routes/chat/rollout", timeout=5).json()
        assert status["step"] == 2 and status["history"][-1]["canary_requests"] >= 12
        wait_for(lambda: any(n["event"] == "step" for n in fake.notes), 5, "the step's notification")
        time.sleep(0.5)
        events = [n["event"] for n in fake.notes]
        assert events.count("started") == 1 and events.count("step") == 1  # (held on 0 canary/s: stalled first)




# --- a leader that dies mid-rollout ----------------------------------------------------------------

def proxy_process(tmp_path: Path, name: str, settings: dict[str, Any]) -> tuple[Child, str]:
    """``ollama-sidecar proxy`` as its own process, so it can be killed with SIGKILL."""
    port = free_port()
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    child = Child(name, [sys.executable, "-m", "proxy.cli", "proxy", "--config", str(config), "--listen",
                         f"127.0.0.1:{port}", "--log-level", "warning"], tmp_path / f"{name}.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{url}/healthz"), 15, f"{name} to listen")
    return child, url


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _leader(url: str) -> bool:
    return requests.get(f"{url}/admin/routes", timeout=5).json()["state"]["leader"]


def test_killing_the_lease_holder_mid_rollout_another_continues_from_the_same_step(tmp_path, httpserver):
    fake = FakeOllama()
    for path in ("/api/chat", "/api/show", "/api/generate"):
        httpserver.expect_request(path).respond_with_handler(fake.handle)
    redis = RedisServer(tmp_path / "redis").start()
    children: list[Child] = []
    try:
        rollout = {"steps": [10, 20, 40], "interval": "0.5s", "min_requests": 3}
        routes = {"chat": {"stable": STABLE, "canary": CANARY, "canary_weight": 0, "rollout": rollout}}
        urls = []
        for i in range(3):
            settings = replica_settings(tmp_path, httpserver, redis, i, routes=routes, rollout_tick=0.1)
            child, url = proxy_process(tmp_path, f"replica-{i}", settings)
            children.append(child)
            urls.append(url)
        wait_for(lambda: all(requests.get(f"{u}/admin/routes", timeout=5).json()["state"]["up"] for u in urls), 10,
                 "the replicas to join")
        started = requests.post(f"{urls[0]}/admin/routes/chat/rollout", json={}, timeout=10)
        assert started.status_code == 200, started.text
        salt = started.json()["salt"]

        def step(url: str) -> int:
            return requests.get(f"{url}/admin/routes/chat/rollout", timeout=5).json()["step"]

        def drive(targets: list[str], weight: float, tag: str) -> None:
            for i, session in enumerate(canary_sessions(salt, weight, 4, tag)):
                requests.post(f"{targets[i % len(targets)]}/api/chat", headers={"X-Session-ID": session},
                              json={"model": "chat", "messages": [{"role": "user", "content": "q"}]}, timeout=10)

        drive(urls, 10, "first")
        wait_for(lambda: step(urls[1]) == 2, 10, "the rollout to reach its second step")
        leader = wait_for(lambda: [i for i, u in enumerate(urls) if _leader(u)], 5, "a leader")[0]
        children[leader].kill()  # SIGKILL: no lease handed back
        survivors = [u for i, u in enumerate(urls) if i != leader]
        assert all(step(u) == 2 for u in survivors)
        # another replica takes the lease within the lease time (2 s), plus one renewal round
        wait_for(lambda: any(_leader(u) for u in survivors), 2 + 1, "a survivor to take the lease")
        assert all(step(u) == 2 for u in survivors)  # the same step, not the start again
        drive(survivors, 20, "second")
        wait_for(lambda: step(survivors[0]) == 3, 10, "the new leader to move the rollout on")
        status = requests.get(f"{survivors[1]}/admin/routes/chat/rollout", timeout=5).json()
        assert [h["event"] for h in status["history"]].count("started") == 1
        assert requests.get(f"{survivors[1]}/admin/routes/chat", timeout=5).json()["weight"] == 40
    finally:
        for child in children:
            child.stop()
        redis.stop()


def test_the_auto_resume_probe_counts_every_replica(tmp_path, httpserver):
    """A resolved alert starts the probe (5 %); its 20 canary requests come 7 from each of
    three replicas, fewer than any one needs: the leader passes it on the sum and the
    canary gets its weight back everywhere."""
    serve_chat(httpserver)
    routes = {"chat": dict(ROUTE, auto_resume=True)}
    with replicas(tmp_path, httpserver, routes=routes) as (_, proxies):
        firing = rollback_alert()
        assert requests.post(f"{proxies[0].url}/admin/alertmanager", json=firing, timeout=5).status_code == 200
        resolved = dict(firing, status="resolved", alerts=[dict(firing["alerts"][0], status="resolved",
                                                                endsAt="2026-11-29T10:05:00Z")])
        assert requests.post(f"{proxies[1].url}/admin/alertmanager", json=resolved, timeout=5).status_code == 200
        wait_for(lambda: all(route(p)["weight"] == 5 and route(p)["probe_weight_after"] == 50 for p in proxies), 1.0,
                 "the probe everywhere")
        for p in proxies:
            for session in canary_sessions("", 5, 7, p.url):
                assert chat(p, session).status_code == 200
        wait_for(lambda: all(route(p)["weight"] == 50 and route(p)["probe_weight_after"] is None for p in proxies),
                 5, "the probe to pass on the summed counts")
        assert sum(p.value("ollama_proxy_route_changes_total", route="chat", reason="probe") for p in proxies) == 1
