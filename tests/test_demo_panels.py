"""Every panel of every dashboard shows something during the demo.

The demo's stack (simulator, proxy, exporter with two simulated GPUs, real Prometheus and
Alertmanager with the fast rules) runs the scenarios that feed the panels: sticky traffic
on both arms from 60 sessions, a canary that starts failing, and the rollback the alert
path makes. Then every panel target's query, as Grafana would send it, runs against that
Prometheus twice: over the healthy traffic before the fault (where an event that did not
happen, a failure, an overflow, must show 0, not nothing) and over the whole scenario. A
target with no sample is a panel that would say "No data", and fails the test with the
dashboard and panel named.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import requests

from proxy.commands.demo import stack_options
from proxy.commands.stack import DEMO_KEYS, ROUTE, LocalStack
from proxy.commands.traffic import TrafficDriver
from proxy import metrics as pm
from proxy.monitoring import REQUESTS_RATE
from tests.binaries import alertmanager_binary, require_binary
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

DASHBOARDS = Path(__file__).resolve().parent.parent / "provisioning" / "grafana" / "dashboards"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval is at a 1 s scrape interval and a short range


def grafana_expr(expr: str, range_seconds: int) -> str:
    """The query Grafana sends with every variable on "All"."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{range_seconds}s")
    return re.sub(r"\$\{?(instance|exporter|route|model|tenant)\}?", ".*", expr)


def has_a_sample(prometheus: str, expr: str, start: float, end: float, instant: bool) -> bool:
    if instant:
        r = requests.get(f"{prometheus}/api/v1/query", params={"query": expr, "time": end}, timeout=10)
        values = [s["value"] for s in r.json()["data"]["result"]]
    else:
        r = requests.get(f"{prometheus}/api/v1/query_range",
                         params={"query": expr, "start": start, "end": end, "step": 1}, timeout=10)
        values = [v for s in r.json()["data"]["result"] for v in s["values"]]
    assert r.status_code == 200, f"{expr}: {r.text}"
    return any(not math.isnan(float(v[1])) for v in values)


def both_arms_seen(prometheus: str) -> bool:
    r = requests.get(f"{prometheus}/api/v1/query",
                     params={"query": f'count({REQUESTS_RATE}{{route="{ROUTE}"}} > 0)'}, timeout=5)
    result = r.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == 2


def sessions_expired_on_both_arms(prometheus: str) -> bool:
    """The session flow's panels need sessions that ended: the traffic's visitors ask once
    and leave, and expire after the stack's short session window."""
    expr = (f'count(sum by (arm) (rate({pm.SESSION_DURATION.name}_count{{route="{ROUTE}"}}[1m])) > 0)')
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    result = r.json()["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == 2


def test_every_panel_shows_something_during_the_demo(tmp_path):
    require_binary("prometheus")
    alertmanager_binary()
    with LocalStack(stack_options(tmp_path, monitoring=True, preferred_ports=False)) as stack:
        prometheus = stack.url("prometheus")
        start = time.time()
        traffic = TrafficDriver(stack.url("proxy"), ROUTE, workers=6, sessions=60, pause=0.02, keys=DEMO_KEYS).start()
        try:
            wait_for(lambda: both_arms_seen(prometheus), 30, "Prometheus to see traffic on both arms")
            wait_for(lambda: sessions_expired_on_both_arms(prometheus), 30, "sessions to end on both arms")
            time.sleep(2.0)  # healthy traffic on both arms, scraped
            fault = time.time()
            stack.break_canary(error_rate=0.6)
            wait_for(lambda: stack.route_state()["rolled_back"], 40, "the rollback")
            time.sleep(3.0)  # a few scrapes of the rolled-back route
        finally:
            traffic.stop()
        end = time.time()

        empty, checked = [], 0
        for phase, until in (("healthy traffic", fault), ("fault and rollback", end)):
            span = math.ceil(until - start) + 1
            for path in sorted(DASHBOARDS.glob("*.json")):
                dashboard = json.loads(path.read_text())
                for panel in dashboard["panels"]:
                    for target in panel.get("targets", []):
                        checked += 1
                        expr = grafana_expr(target["expr"], span)
                        if not has_a_sample(prometheus, expr, start, until, target.get("instant", False)):
                            empty.append(f"{phase}: {dashboard['title']} / {panel['title']!r} / "
                                         f"{target['refId']}: {expr}")
        assert checked >= 100  # 53 panels, some with several queries, in two phases
        assert not empty, "panels with no data during the demo:\n" + "\n".join(empty)
