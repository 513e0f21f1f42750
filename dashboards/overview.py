"""Overview: is it up, how much traffic, how many failures, how slow, is a route rolled back."""

from __future__ import annotations

from grafanalib import core as g

from alerts.alerting import EXPORTER_JOB, PROXY_JOB
from dashboards import common as c
from dashboards import uids
from exporter import metrics as em
from proxy import metrics as pm

F = c.PROXY_FILTER
NOT_SUCCESS = F + ', error_type!="none"'
REQ = pm.REQUESTS.name

ROLLED_BACK = c.value_mapping({"0": ("serving", "green"), "1": ("ROLLED BACK", "red")})
FAILURE_STEPS = c.thresholds(("green", None), ("orange", 0.05), ("red", 0.1))


def build() -> g.Dashboard:
    lay = c.Layout()
    lay.row(
        "Is it up",
        (c.stat("Proxy up", (f'up{{job="{PROXY_JOB}", instance=~"$instance"}}', "{{instance}}"),
                "none", steps=c.UP_STEPS, mappings=c.UP_DOWN,
                description="Prometheus's scrape of the proxy's /metrics."), 4),
        (c.stat("Exporter up", (f'up{{job="{EXPORTER_JOB}"}}', "{{instance}}"), "none",
                steps=c.UP_STEPS, mappings=c.UP_DOWN), 4),
        (c.stat("Ollama up", (em.OLLAMA_UP.name, "{{instance}}"), "none", steps=c.UP_STEPS,
                mappings=c.UP_DOWN, description="The exporter's last call to Ollama's API."), 4),
        (c.stat("Requests/s", (c.rate(REQ), "requests/s"), "reqps", graph=True), 4),
        (c.stat("Server-side failure ratio",
                (f"{c.rate(REQ, f'{F}, {c.SERVER_SIDE}')}\n/\n{c.rate(REQ)}", "failures"),
                "percentunit", steps=FAILURE_STEPS, graph=True,
                description="upstream 5xx, timeouts, connection errors and cut streams over all requests."), 4),
        (c.stat("Queued requests", (f'sum({pm.QUEUE_LENGTH.name}{{instance=~"$instance"}})', "queued"),
                "short", steps=c.thresholds(("green", None), ("orange", 1), ("red", 5)), graph=True,
                description="Requests waiting for an admission slot (max_in_flight)."), 4),
        height=4,
    )
    lay.row(
        "Traffic and errors",
        (c.timeseries("Request rate by route and arm", (c.rate(REQ, by="route, arm"), "{{route}} {{arm}}"),
                      "reqps"), 12),
        (c.timeseries(
            "Error ratio by error_type",
            (f"{c.rate(REQ, NOT_SUCCESS, by='error_type')}\n"
             f"/ ignoring (error_type) group_left\n{c.rate(REQ)}", "{{error_type}}"),
            "percentunit", stacked=True,
            description="Share of all requests that ended with each error_type (client errors included)."), 12),
    )
    lay.row(
        "Latency and throughput",
        (c.timeseries("Request latency p50 / p95 / p99", [
            (c.quantile(q, pm.REQUEST_DURATION.name), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)
        ], "s", description="Arrival to last byte, all routes and arms together."), 8),
        (c.timeseries("Time to first token p95 by route and arm",
                      (c.quantile(0.95, pm.TIME_TO_FIRST_TOKEN.name, "route, arm"), "{{route}} {{arm}}"),
                      "s", steps=c.thresholds(("green", None), ("orange", 5), ("red", 10)),
                      threshold_lines=True), 8),
        (c.timeseries("Tokens/s by kind", (c.rate(pm.TOKENS.name, by="kind"), "{{kind}}"),
                      "suffix: tok/s", description="prompt = input tokens processed, completion = generated."), 8),
    )
    lay.row(
        "Capacity and routing",
        (c.timeseries("In flight and queued", [
            (f"sum by (route, arm) ({pm.IN_FLIGHT.name}{{{F}}})", "in flight {{route}} {{arm}}"),
            (f'sum({pm.QUEUE_LENGTH.name}{{instance=~"$instance"}})', "queued"),
        ], "short"), 8),
        (c.stat("Canary weight per route",
                (f'max by (route) ({pm.ROUTE_CANARY_WEIGHT.name}{{instance=~"$instance", route=~"$route"}})',
                 "{{route}}"), "percent",
                description="Share of sessions sent to the canary arm (0 after a rollback)."), 8),
        (c.stat("Rolled back per route",
                (f'max by (route) ({pm.ROUTE_ROLLED_BACK.name}{{instance=~"$instance", route=~"$route"}})',
                 "{{route}}"), "none", mappings=ROLLED_BACK,
                steps=c.thresholds(("green", None), ("red", 1)),
                description="ROLLED BACK until 'ollama-sidecar resume ROUTE'."), 8),
    )
    return c.dashboard(
        uids.OVERVIEW, "Ollama sidecar / Overview",
        "Is it up, how much traffic, how many failures, how slow, is any route rolled back.",
        lay, c.variables(**c.PROXY_VARIABLES),
    )
