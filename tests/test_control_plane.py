"""The control plane end to end, over real sockets: admin API, Alertmanager webhook and
reconcile, breaker, state file, config reload, CLI. Each piece alone, fast, is in
test_admin.py, test_alertmanager.py, test_breaker.py, test_plane.py, test_state.py and
test_reload.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests
import yaml

from proxy.commands.ctl import EXIT_OK, EXIT_REFUSED, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE
from proxy.config import load_config
from tests.conftest import free_port, running_proxy, wait_for
from tests.ollama_fake import chat_chunks, ndjson, stream_response

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}


@pytest.fixture
def admin_proxy(httpserver, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_SIDECAR_ADMIN_TOKEN", TOKEN)

    def make(**settings):
        settings.setdefault("upstream", httpserver.url_for("/").rstrip("/"))
        settings.setdefault("access_log", False)
        settings.setdefault("routes", {"chat": dict(ROUTE)})
        settings.setdefault("state_file", str(tmp_path / "state.json"))
        return running_proxy(settings, environ=dict(os.environ))
    return make


def alert(status="firing", route="chat", action="rollback", name="OllamaCanaryErrorRateHigh",
          fingerprint="c4ab2e1f0d9a8b7c", starts="2026-01-01T00:00:00Z"):
    labels = {"alertname": name, "route": route, "severity": "critical"}
    if action:
        labels["action"] = action
    return {"status": status, "labels": labels, "annotations": {"summary": "canary failing"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint}


def notification(*alerts, status="firing"):
    return {"version": "4", "groupKey": '{}/{action="rollback"}:{alertname="OllamaCanaryErrorRateHigh"}',
            "truncatedAlerts": 0, "status": status, "receiver": "rollback",
            "groupLabels": {"alertname": "OllamaCanaryErrorRateHigh"}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def route(p, name="chat"):
    return requests.get(f"{p.url}/admin/routes/{name}", headers=AUTH).json()


# --- admin API --------------------------------------------------------------------------------

def test_admin_needs_the_token_and_wrong_tokens_change_nothing(admin_proxy):
    with admin_proxy() as p:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = requests.post(f"{p.url}/admin/routes/chat/rollback", headers=headers)
            assert r.status_code == 401 and "admin token" in r.json()["error"]
        assert route(p)["rolled_back"] is False
        r = requests.post(f"{p.url}/admin/alertmanager", json=notification(alert()))
        assert r.status_code == 401
        assert p.value("ollama_proxy_alertmanager_notifications_total", outcome="unauthorized") == 1
        assert route(p)["rolled_back"] is False


def test_without_token_admin_answers_loopback_only(httpserver):
    with running_proxy({"upstream": httpserver.url_for("/"), "routes": {"chat": ROUTE}, "access_log": False}) as p:
        assert requests.get(f"{p.url}/admin/routes").status_code == 200  # we are on loopback
    from proxy.control.admin import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("10.0.0.5")


def test_put_rollback_resume_promote(admin_proxy):
    with admin_proxy() as p:
        r = requests.put(f"{p.url}/admin/routes/chat", json={"canary_weight": 12.5}, headers=AUTH)
        assert r.status_code == 200 and r.json()["weight"] == 12.5
        r = requests.put(f"{p.url}/admin/routes/chat", json={"canary_weight": 120}, headers=AUTH)
        assert r.status_code == 400 and "between 0 and 100" in r.json()["error"]
        r = requests.post(f"{p.url}/admin/routes/chat/rollback", json={"reason": "bad vibes"}, headers=AUTH)
        assert r.json()["rolled_back"] is True and r.json()["effective_weight"] == 0
        assert r.json()["reason"] == "admin:bad vibes"
        assert p.value("ollama_proxy_route_rolled_back", route="chat") == 1
        assert p.value("ollama_proxy_route_canary_weight", route="chat") == 0
        r = requests.post(f"{p.url}/admin/routes/chat/resume", headers=AUTH)
        assert r.json()["rolled_back"] is False and r.json()["weight"] == 12.5  # restored
        assert requests.post(f"{p.url}/admin/routes/chat/resume", headers=AUTH).status_code == 409
        r = requests.post(f"{p.url}/admin/routes/chat/promote", headers=AUTH)
        assert (r.json()["stable"], r.json()["canary"], r.json()["weight"]) == ("qwen3:8b-ft", None, 0)
        assert requests.post(f"{p.url}/admin/routes/nope/rollback", headers=AUTH).status_code == 404
        for reason in ("admin", "resume", "promote"):
            assert p.value("ollama_proxy_route_changes_total", route="chat", reason=reason) >= 1


# --- Alertmanager webhook ---------------------------------------------------------------------

def test_webhook_firing_rolls_back_once_and_duplicates_change_nothing(admin_proxy):
    with admin_proxy() as p:
        url = f"{p.url}/admin/alertmanager"
        r = requests.post(url, json=notification(alert()), headers=AUTH)
        assert r.status_code == 200 and r.json()["applied"] == 1
        state = route(p)
        assert state["rolled_back"] and state["reason"] == "alert:OllamaCanaryErrorRateHigh"
        since = state["since"]
        for _ in range(3):  # retries and the HA twin deliver the same alert again
            r = requests.post(url, json=notification(alert()), headers=AUTH)
            assert r.status_code == 200 and r.json()["duplicate"] == 1
        assert route(p)["since"] == since
        assert p.value("ollama_proxy_route_changes_total", route="chat", reason="alert:OllamaCanaryErrorRateHigh") == 1
        assert p.value("ollama_proxy_alertmanager_notifications_total", outcome="duplicate") == 3


def test_webhook_ignores_what_it_has_no_business_with(admin_proxy):
    with admin_proxy() as p:
        url = f"{p.url}/admin/alertmanager"
        r = requests.post(url, json=notification(alert(route="unknown"), alert(action=None, fingerprint="x2"),
                                                 alert(action="page", fingerprint="x3")), headers=AUTH)
        assert r.status_code == 200 and r.json()["ignored"] == 3
        assert route(p)["rolled_back"] is False
        assert p.value("ollama_proxy_alertmanager_notifications_total", outcome="ignored") == 3


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"alerts": "nope"}', b'{"version": "3", "alerts": []}',
                                  json.dumps(notification({"status": "firing", "labels": {"route": "chat"}})).encode(),
                                  json.dumps(notification(dict(alert(), status="weird"))).encode()])
def test_malformed_payload_is_400_with_a_reason_and_changes_nothing(admin_proxy, body):
    with admin_proxy() as p:
        r = requests.post(f"{p.url}/admin/alertmanager", data=body, headers=AUTH)
        assert r.status_code == 400 and "invalid Alertmanager payload" in r.json()["error"]
        assert route(p)["rolled_back"] is False
        assert p.value("ollama_proxy_alertmanager_notifications_total", outcome="invalid") == 1


def test_resolved_alert_resumes_only_with_auto_resume(admin_proxy):
    with admin_proxy(routes={"chat": dict(ROUTE), "auto": dict(ROUTE, auto_resume=True)}) as p:
        url = f"{p.url}/admin/alertmanager"
        for name, fp in (("chat", "f1"), ("auto", "f2")):
            requests.post(url, json=notification(alert(route=name, fingerprint=fp)), headers=AUTH)
        for name, fp in (("chat", "f1"), ("auto", "f2")):
            requests.post(url, json=notification(alert(route=name, fingerprint=fp, status="resolved"),
                                                 status="resolved"), headers=AUTH)
        assert route(p, "chat")["rolled_back"] is True
        auto = route(p, "auto")
        # resumed on probation: the probe weight until the canary passed its probe (test_probe.py)
        assert auto["rolled_back"] is False and (auto["weight"], auto["probe_weight_after"]) == (5, 50)


# --- reconcile ---------------------------------------------------------------------------------

def test_reconcile_rolls_back_a_route_whose_webhook_never_came(httpserver, tmp_path, monkeypatch):
    from pytest_httpserver import HTTPServer
    am = HTTPServer(host="127.0.0.1", port=free_port())
    am.start()
    try:
        active = [dict(alert(), status={"state": "active", "silencedBy": [], "inhibitedBy": []}),
                  dict(alert(route="chat2", fingerprint="s1"),
                       status={"state": "suppressed", "silencedBy": ["x"], "inhibitedBy": []})]
        am.expect_request("/api/v2/alerts", query_string={"active": "true", "filter": 'action="rollback"'}
                          ).respond_with_json(active)
        settings = {"upstream": httpserver.url_for("/"), "access_log": False,
                    "routes": {"chat": ROUTE, "chat2": ROUTE}, "alertmanager_url": am.url_for("/"),
                    "reconcile_interval": 0.2}
        with running_proxy(settings) as p:
            wait_for(lambda: p.value("ollama_proxy_route_rolled_back", route="chat") == 1, 5,
                     "reconcile to roll back chat")
            polls = p.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok")
            wait_for(lambda: p.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok") >= polls + 2, 5,
                     "two more reconcile polls")
            assert p.value("ollama_proxy_route_changes_total", route="chat", reason="reconcile") == 1  # once only
            assert p.value("ollama_proxy_route_rolled_back", route="chat2") == 0  # silenced: left alone
            assert p.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok") >= 2
    finally:
        am.stop()


def test_reconcile_with_alertmanager_down_changes_nothing(httpserver):
    settings = {"upstream": httpserver.url_for("/"), "access_log": False, "routes": {"chat": ROUTE},
                "alertmanager_url": f"http://127.0.0.1:{free_port()}", "reconcile_interval": 0.1}
    with running_proxy(settings) as p:
        wait_for(lambda: p.value("ollama_proxy_alertmanager_reconciles_total", outcome="error") >= 2, 5,
                 "two failed reconcile polls")
        assert p.value("ollama_proxy_route_rolled_back", route="chat") == 0


# --- breaker ------------------------------------------------------------------------------------

def _split_upstream(httpserver, canary_status: int):
    def handler(request):
        model = json.loads(request.get_data())["model"]
        if model.endswith("-ft") and canary_status != 200:
            return stream_response([json.dumps({"error": "runner crashed"}).encode()], "application/json") \
                if canary_status == 0 else _status(canary_status)
        return stream_response([ndjson(chat_chunks(model, ["ok"]))])
    httpserver.expect_request("/api/chat").respond_with_handler(handler)


def _status(code):
    from werkzeug import Response
    return Response(json.dumps({"error": "boom"}), status=code, content_type="application/json")


def _drive(p, n, session_prefix="s"):
    for i in range(n):
        requests.post(f"{p.url}/api/chat", json={"model": "chat", "messages": []},
                      headers={"X-Session-ID": f"{session_prefix}{i}"})


def test_breaker_trips_on_a_failing_canary(admin_proxy, httpserver):
    _split_upstream(httpserver, 500)
    breaker = {"window": 60, "min_requests": 10, "failure_ratio": 0.5}
    with admin_proxy(routes={"chat": dict(ROUTE, breaker=breaker)}) as p:
        _drive(p, 60)
        state = route(p)
        assert state["rolled_back"] and state["reason"] == "breaker"
        assert p.value("ollama_proxy_route_changes_total", reason="breaker") == 1
        failed_canary = p.value("ollama_proxy_requests_total", arm="canary", error_type="upstream_5xx")
        # At the shipped settings (rate ratio 5, threshold log(1/2e-5) = 10.8) each canary
        # failure beside a healthy stable at a 50 % split adds log(5/3): the 22nd trips it.
        assert 15 <= failed_canary < 30
        assert p.value("ollama_proxy_breaker_canary_failure_ratio", route="chat") == 1


def test_breaker_needs_min_requests_and_ignores_client_errors(admin_proxy, httpserver):
    _split_upstream(httpserver, 400)  # the canary refuses the requests: a client-side matter
    breaker = {"window": 60, "min_requests": 10, "failure_ratio": 0.5}
    with admin_proxy(routes={"chat": dict(ROUTE, breaker=breaker)}) as p:
        _drive(p, 40)
        assert route(p)["rolled_back"] is False
    httpserver.clear()
    _split_upstream(httpserver, 500)
    with admin_proxy(routes={"chat": dict(ROUTE, breaker=dict(breaker, min_requests=1000))}) as p:
        _drive(p, 40)  # ~20 failing canary requests: too few to conclude anything
        assert route(p)["rolled_back"] is False


def test_a_routed_canary_whose_model_is_missing_trips_the_breaker(admin_proxy, httpserver):
    _split_upstream(httpserver, 404)  # every user of the canary arm fails: that is the canary's failure
    breaker = {"window": 60, "min_requests": 10, "failure_ratio": 0.5}
    with admin_proxy(routes={"chat": dict(ROUTE, breaker=breaker)}) as p:
        _drive(p, 60)
        assert route(p)["rolled_back"] is True and route(p)["reason"] == "breaker"


def test_breaker_with_stable_margin_does_not_trip_when_both_arms_fail(admin_proxy, httpserver):
    httpserver.expect_request("/api/chat").respond_with_handler(lambda r: _status(500))
    breaker = {"window": 60, "min_requests": 5, "failure_ratio": 0.5, "stable_margin": 0.1}
    with admin_proxy(routes={"chat": dict(ROUTE, breaker=breaker)}) as p:
        _drive(p, 40)
        assert route(p)["rolled_back"] is False  # Ollama is sick, not the canary


# --- state file ---------------------------------------------------------------------------------

def test_rolled_back_state_survives_a_restart(admin_proxy, tmp_path):
    with admin_proxy() as p:
        requests.put(f"{p.url}/admin/routes/chat", json={"canary_weight": 30}, headers=AUTH)
        requests.post(f"{p.url}/admin/alertmanager", json=notification(alert()), headers=AUTH)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["routes"]["chat"]["rolled_back"] is True
    with admin_proxy() as p:
        state = route(p)
        assert state["rolled_back"] and state["reason"] == "alert:OllamaCanaryErrorRateHigh"
        assert state["weight_before_rollback"] == 30
        assert p.value("ollama_proxy_route_rolled_back", route="chat") == 1
        r = requests.post(f"{p.url}/admin/alertmanager", json=notification(alert()), headers=AUTH)
        assert r.json()["duplicate"] == 1  # remembered across the restart
        assert requests.post(f"{p.url}/admin/routes/chat/resume", headers=AUTH).json()["weight"] == 30


def test_corrupt_state_file_is_moved_aside_and_counted(admin_proxy, tmp_path):
    (tmp_path / "state.json").write_text("{half a file")
    with admin_proxy() as p:
        assert route(p)["rolled_back"] is False and route(p)["weight"] == 50  # from the config
        assert p.value("ollama_proxy_state_errors_total", kind="corrupt") == 1
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{half a file"


# --- config reload ------------------------------------------------------------------------------

def test_config_reload_on_change_validates_and_never_undoes_a_rollback(httpserver, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_SIDECAR_ADMIN_TOKEN", TOKEN)
    cfg = tmp_path / "proxy.yaml"
    base = {"upstream": httpserver.url_for("/"), "access_log": False, "reload_interval": 0.1,
            "routes": {"chat": dict(ROUTE), "other": dict(ROUTE)}}
    cfg.write_text(yaml.safe_dump(base))
    config = load_config(str(cfg), environ=dict(os.environ))
    with running_proxy({}, config=config) as p:
        requests.post(f"{p.url}/admin/routes/chat/rollback", headers=AUTH)
        cfg.write_text(yaml.safe_dump(dict(base, routes={"chat": dict(ROUTE, canary_weight=70),
                                                         "other": dict(ROUTE, canary_weight=5)})))
        wait_for(lambda: route(p, "other")["weight"] == 5, 5, "the edited config to be reloaded")
        chat = route(p, "chat")
        assert chat["rolled_back"] is True and chat["weight_before_rollback"] == 70
        cfg.write_text("routes:\n  chat:\n    stable: a\n    canary_weight: 10\n")  # invalid
        wait_for(lambda: requests.get(f"{p.url}/admin/routes", headers=AUTH).json()["last_reload_error"], 5,
                 "the invalid config to be rejected")
        doc = requests.get(f"{p.url}/admin/routes", headers=AUTH).json()
        assert "routes.chat.canary_weight" in doc["last_reload_error"]
        assert route(p, "other")["weight"] == 5  # the old config stays in force
        assert p.value("ollama_proxy_config_reloads_total", outcome="failure") >= 1
        assert p.value("ollama_proxy_config_reloads_total", outcome="success") >= 1


# --- CLI against a running proxy ---------------------------------------------------------------

def _cli(p, *args, token=TOKEN):
    env = dict(os.environ, OLLAMA_SIDECAR_URL=p.url if p else f"http://127.0.0.1:{free_port()}")
    env.pop("OLLAMA_SIDECAR_ADMIN_TOKEN", None)
    if token:
        env["OLLAMA_SIDECAR_ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def test_cli_commands_against_a_running_proxy(admin_proxy):
    with admin_proxy() as p:
        r = _cli(p, "status")
        assert r.returncode == EXIT_OK
        assert "chat" in r.stdout and "qwen3:8b-ft" in r.stdout and "50%" in r.stdout
        r = _cli(p, "route", "set", "chat", "--weight", "25")
        assert r.returncode == EXIT_OK and "25%" in r.stdout
        r = _cli(p, "rollback", "chat", "--reason", "latency")
        assert r.returncode == EXIT_OK and "YES" in r.stdout and "admin:latency" in r.stdout
        assert _cli(p, "rollback", "chat").stdout.strip().endswith("nothing changed")
        r = _cli(p, "resume", "chat")
        assert r.returncode == EXIT_OK and "25%" in r.stdout
        r = _cli(p, "promote", "chat")
        assert r.returncode == EXIT_OK and route(p)["stable"] == "qwen3:8b-ft"
        r = _cli(p, "rollback", "nope")
        assert r.returncode == EXIT_REFUSED and "unknown route 'nope'" in r.stderr
        r = _cli(p, "status", token="wrong")
        assert r.returncode == EXIT_UNAUTHORIZED and "admin token" in r.stderr
    r = _cli(None, "status")
    assert r.returncode == EXIT_UNREACHABLE and "cannot reach the proxy" in r.stderr


def test_sighup_reloads_the_config_of_a_running_proxy(httpserver, tmp_path):
    cfg = tmp_path / "proxy.yaml"
    base = {"upstream": httpserver.url_for("/"), "reload_interval": 3600, "routes": {"chat": dict(ROUTE)}}
    cfg.write_text(yaml.safe_dump(base))
    port = free_port()
    env = dict(os.environ, OLLAMA_SIDECAR_ADMIN_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "proxy", "--config", str(cfg),
                             "--listen", f"127.0.0.1:{port}"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 15, "the proxy to answer /healthz")
        cfg.write_text(yaml.safe_dump(dict(base, routes={"chat": dict(ROUTE, canary_weight=7)})))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: requests.get(f"{url}/admin/routes/chat", headers=AUTH).json()["weight"] == 7, 5,
                 "SIGHUP to reload the config")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "config reloaded" in err and TOKEN not in err  # the secret never reaches the log


def _up(url):
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


# --- review follow-ups: state and reload edge cases --------------------------------------------

@pytest.mark.parametrize("fields", [
    {"weight": "abc"}, {"weight": 500}, {"weight": None}, {"stable": 5}, {"rolled_back": "false"},
    {"since": "yesterday"},
])
def test_state_file_with_untrustworthy_values_is_moved_aside(admin_proxy, tmp_path, fields):
    with admin_proxy() as p:
        requests.post(f"{p.url}/admin/routes/chat/rollback", headers=AUTH)
    state = json.loads((tmp_path / "state.json").read_text())
    state["routes"]["chat"].update(fields)
    (tmp_path / "state.json").write_text(json.dumps(state))
    with admin_proxy() as p:
        r = route(p)
        assert (r["rolled_back"], r["weight"], r["stable"]) == (False, 50, "qwen3:8b")  # the config
        assert p.value("ollama_proxy_state_errors_total", kind="corrupt") == 1
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


def test_config_edited_while_down_wins_but_a_rollback_stays(admin_proxy, tmp_path):
    with admin_proxy() as p:
        requests.post(f"{p.url}/admin/routes/chat/rollback", headers=AUTH)
    edited = {"chat": {"stable": "new-stable", "canary": "new-canary", "canary_weight": 30}}
    with admin_proxy(routes=edited) as p:
        r = route(p)
        assert (r["stable"], r["canary"]) == ("new-stable", "new-canary")
        assert r["rolled_back"] is True and r["weight_before_rollback"] == 30
        assert requests.post(f"{p.url}/admin/routes/chat/resume", headers=AUTH).json()["weight"] == 30
        requests.put(f"{p.url}/admin/routes/chat", json={"canary_weight": 12}, headers=AUTH)
    with admin_proxy(routes=edited) as p:  # unchanged config: the API's change persists
        assert route(p)["rolled_back"] is False and route(p)["weight"] == 12


def test_reload_survives_a_file_that_is_not_utf8_and_picks_up_the_next_good_one(httpserver, tmp_path):
    cfg = tmp_path / "proxy.yaml"
    base = {"upstream": httpserver.url_for("/"), "access_log": False, "reload_interval": 0.1,
            "routes": {"chat": dict(ROUTE)}}
    cfg.write_text(yaml.safe_dump(base))
    config = load_config(str(cfg), environ={"OLLAMA_SIDECAR_ADMIN_TOKEN": TOKEN})
    with running_proxy({}, config=config) as p:
        cfg.write_bytes(b"# mod\xe8le\nroutes: {}\n")
        wait_for(lambda: requests.get(f"{p.url}/admin/routes", headers=AUTH).json()["last_reload_error"], 5,
                 "the non-UTF-8 config to be rejected")
        assert "not UTF-8" in requests.get(f"{p.url}/admin/routes", headers=AUTH).json()["last_reload_error"]
        cfg.write_text(yaml.safe_dump(dict(base, routes={"chat": dict(ROUTE, canary_weight=9)})))
        wait_for(lambda: route(p)["weight"] == 9, 5, "the next good config")  # the watcher is still alive


def test_admin_token_rotates_on_reload(httpserver, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": httpserver.url_for("/"), "access_log": False,
                                   "admin": {"token_file": str(token_file)}, "routes": {"chat": dict(ROUTE)}}))
    config = load_config(str(cfg), environ={})
    with running_proxy({}, config=config) as p:
        assert requests.get(f"{p.url}/admin/routes", headers={"Authorization": "Bearer first"}).ok
        token_file.write_text("second\n")
        assert requests.post(f"{p.url}/admin/reload", headers={"Authorization": "Bearer first"}).ok
        assert requests.get(f"{p.url}/admin/routes", headers={"Authorization": "Bearer first"}).status_code == 401
        assert requests.get(f"{p.url}/admin/routes", headers={"Authorization": "Bearer second"}).ok


def test_reconcile_tolerates_odd_answers(httpserver):
    from pytest_httpserver import HTTPServer
    am = HTTPServer(host="127.0.0.1", port=free_port())
    am.start()
    try:
        am.expect_request("/api/v2/alerts").respond_with_json(
            ["junk", {"status": "weird"}, dict(alert(), status={"state": "active"})])
        settings = {"upstream": httpserver.url_for("/"), "access_log": False, "routes": {"chat": ROUTE},
                    "alertmanager_url": am.url_for("/"), "reconcile_interval": 0.1}
        with running_proxy(settings) as p:
            wait_for(lambda: p.value("ollama_proxy_route_rolled_back", route="chat") == 1, 5,
                     "reconcile to act on the one readable alert")
    finally:
        am.stop()


def test_cli_reports_a_missing_token_file_without_a_traceback(admin_proxy, tmp_path):
    with admin_proxy() as p:
        r = _cli(p, "status", "--token-file", str(tmp_path / "nope"))
        assert r.returncode == 2 and "cannot read the admin token file" in r.stderr
        assert "Traceback" not in r.stderr


def test_reconcile_leaves_a_new_alert_to_its_webhook_for_the_grace_period(httpserver):
    from datetime import datetime, timezone

    from pytest_httpserver import HTTPServer
    am = HTTPServer(host="127.0.0.1", port=free_port())
    am.start()
    try:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as AM writes
        am.expect_request("/api/v2/alerts").respond_with_json([dict(alert(starts=now), status={"state": "active"})])
        settings = {"upstream": httpserver.url_for("/"), "access_log": False, "routes": {"chat": ROUTE},
                    "alertmanager_url": am.url_for("/"), "reconcile_interval": 0.1, "reconcile_grace": 1.5}
        with running_proxy(settings) as p:
            wait_for(lambda: p.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok") >= 3, 5,
                     "three reconcile polls")
            assert p.value("ollama_proxy_route_rolled_back", route="chat") == 0  # still within the grace
            wait_for(lambda: p.value("ollama_proxy_route_rolled_back", route="chat") == 1, 5,
                     "reconcile to act once the grace is over")
    finally:
        am.stop()
