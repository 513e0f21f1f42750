"""Every replica converges on the same routing, in both directions (README: "every replica
converges").

Two proxy replicas A and B serve one route. A real Alertmanager (Debian's package) holds the
rollback alert and delivers its webhook to A only; B never hears from it and learns what
is going on by polling Alertmanager's API (reconcile). Alerts are posted to Alertmanager's
/api/v2/alerts as Prometheus posts them, and resolved the way Prometheus resolves them: the
same labels again with endsAt in the past.
"""

from __future__ import annotations

import datetime
import subprocess
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import requests
import yaml

from tests.binaries import alertmanager_binary
from tests.conftest import RunningProxy, free_port, running_proxy, wait_for

ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}
ALERT_LABELS = {"alertname": "OllamaCanaryErrorRateHigh", "route": "chat", "action": "rollback",
                "severity": "critical"}
CONVERGE_S = 15.0  # liveness bound: reconcile polls every 0.2 s, Alertmanager flushes every 1 s



def rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Alertmanager:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def post(self, starts: datetime.datetime, ends: datetime.datetime | None = None) -> None:
        alert: dict[str, Any] = {"labels": ALERT_LABELS, "annotations": {"summary": "canary failing"},
                                 "startsAt": rfc3339(starts), "generatorURL": "http://prometheus:9090/graph"}
        if ends is not None:
            alert["endsAt"] = rfc3339(ends)
        r = requests.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5)
        assert r.status_code == 200, r.text

    def active_rollback_alerts(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v2/alerts", params={"active": "true", "filter": 'action="rollback"'},
                         timeout=5)
        return [a for a in r.json() if a["status"]["state"] == "active"]


@contextmanager
def alertmanager(tmp_path: Path, port: int, webhook_url: str) -> Iterator[Alertmanager]:
    """A real Alertmanager on ``port`` whose only receiver is the webhook at ``webhook_url``."""
    binary = alertmanager_binary()
    config = {
        "route": {"receiver": "rollback", "group_by": ["alertname", "route"],
                  "group_wait": "100ms", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "rollback",
                       "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / "alertmanager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                                 "--log.level=warn"], stdout=out, stderr=subprocess.STDOUT)
    am = Alertmanager(f"http://127.0.0.1:{port}", proc, log)
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"Alertmanager exited:\n{log.read_text()}"
            try:
                return requests.get(f"{am.url}/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_for(ready, 20, "Alertmanager to be ready")
        yield am
    finally:
        proc.kill()
        proc.wait(10)


def route_state(p: RunningProxy) -> dict[str, Any]:
    r = requests.get(f"{p.url}/admin/routes/chat", timeout=5)  # loopback: no admin token needed
    assert r.status_code == 200, r.text
    return r.json()


def notifications(p: RunningProxy) -> float:
    """How many alerts A's webhook has processed, whatever it made of them."""
    return p.value("ollama_proxy_alertmanager_notifications_total")


@contextmanager
def two_replicas_and_alertmanager(tmp_path: Path, httpserver, auto_resume: bool
                                  ) -> Iterator[tuple[RunningProxy, RunningProxy, Alertmanager]]:
    am_port = free_port()
    am_url = f"http://127.0.0.1:{am_port}"
    route = {"chat": dict(ROUTE, auto_resume=auto_resume)}
    upstream = httpserver.url_for("/").rstrip("/")
    base = {"upstream": upstream, "access_log": False, "routes": route, "alertmanager_url": am_url,
            "reconcile_interval": 0.2}
    with ExitStack() as stack:
        # A acts on the webhook: its reconcile leaves every alert to the webhook (a grace far
        # longer than the test), so the webhook path is the one exercised on A.
        a = stack.enter_context(running_proxy(dict(base, reconcile_grace=3600)))
        # B never gets a webhook: reconcile is all it has.
        b = stack.enter_context(running_proxy(dict(base, reconcile_grace=0)))
        am = stack.enter_context(alertmanager(tmp_path, am_port, f"{a.url}/admin/alertmanager"))
        yield a, b, am


def fire_and_converge(a: RunningProxy, b: RunningProxy, am: Alertmanager) -> datetime.datetime:
    for p in (a, b):
        state = route_state(p)
        assert state["rolled_back"] is False and state["effective_weight"] == 50
    starts = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    am.post(starts)
    wait_for(lambda: route_state(a)["rolled_back"] and route_state(b)["rolled_back"], CONVERGE_S,
             "both replicas to roll back")
    sa, sb = route_state(a), route_state(b)
    assert sa["reason"] == "alert:OllamaCanaryErrorRateHigh"  # A: by its webhook
    assert sb["reason"] == "reconcile:OllamaCanaryErrorRateHigh"  # B: by reconcile
    for p in (a, b):
        assert route_state(p)["effective_weight"] == 0
        assert p.value("ollama_proxy_route_canary_weight", route="chat") == 0
        assert p.value("ollama_proxy_route_rolled_back", route="chat") == 1
    return starts


def resolve(am: Alertmanager, starts: datetime.datetime) -> None:
    am.post(starts, ends=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1))
    wait_for(lambda: not am.active_rollback_alerts(), CONVERGE_S, "Alertmanager to see the alert resolved")


def test_with_auto_resume_both_replicas_resume_when_the_alert_resolves(tmp_path, httpserver):
    with two_replicas_and_alertmanager(tmp_path, httpserver, auto_resume=True) as (a, b, am):
        starts = fire_and_converge(a, b, am)
        resolve(am, starts)
        wait_for(lambda: not route_state(a)["rolled_back"], CONVERGE_S,
                 "A to resume on the resolved webhook")
        wait_for(lambda: not route_state(b)["rolled_back"], CONVERGE_S,
                 "B to resume once the alert is gone from Alertmanager (only A resumed: replicas diverge)")
        for p in (a, b):
            state = route_state(p)
            # On probation: the probe weight until the canary passed its probe (test_probe.py).
            assert (state["effective_weight"], state["probe_weight_after"]) == (5, 50)
            assert p.value("ollama_proxy_route_canary_weight", route="chat") == 5
            assert p.value("ollama_proxy_route_rolled_back", route="chat") == 0


def test_without_auto_resume_neither_replica_resumes(tmp_path, httpserver):
    with two_replicas_and_alertmanager(tmp_path, httpserver, auto_resume=False) as (a, b, am):
        starts = fire_and_converge(a, b, am)
        seen = notifications(a)
        resolve(am, starts)
        # Give both paths their chance: A processes the resolved webhook, B polls
        # Alertmanager several times after the alert is gone.
        wait_for(lambda: notifications(a) > seen, CONVERGE_S, "A to receive the resolved webhook")
        polls = b.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok")
        wait_for(lambda: b.value("ollama_proxy_alertmanager_reconciles_total", outcome="ok") >= polls + 5,
                 CONVERGE_S, "B to poll Alertmanager after the resolution")
        for p in (a, b):
            state = route_state(p)
            assert state["rolled_back"] is True and state["effective_weight"] == 0
            assert p.value("ollama_proxy_route_canary_weight", route="chat") == 0
            assert p.value("ollama_proxy_route_rolled_back", route="chat") == 1
