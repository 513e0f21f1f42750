"""Rollout: the canary and stable arms of a route side by side, and every routing decision.

The error, latency and TTFT panels read the same recording rules the rollback alerts read,
so the on-call sees exactly the numbers that made (or will make) the proxy roll back. Those
series are per route and arm, summed over proxy replicas and without a model label: the
rollback decision is per route, and an arm is one model (the "Models per route now" table
says which). So this dashboard shows one variable, the route, and every panel, the raw ones
too, reads every proxy replica and both arms' models: a replica or a model filter here
would filter some panels and not the ones the alert reads. Per-instance and per-model views
are on the Overview. Threshold lines show the thresholds of the config's dashboard profile
(production by default).
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from proxy import metrics as pm
from proxy import monitoring as r
from proxy.monitoring import DEFAULT, MonitoringConfig

ARMS = 'arm=~"stable|canary"'
REC = f'route=~"$route", {ARMS}'
LEGEND = "{{route}} {{arm}}"
# The breaker panels: a route without a breaker shows "off", not "No data".
BREAKER_OFF = -1
BREAKER_MAPPINGS = c.value_mapping({str(BREAKER_OFF): ("off", "text")})


def route_change_annotation(config: MonitoringConfig) -> dict:
    x = f'{pm.ROUTE_CHANGES.name}{{{config.proxy_selector}, route=~"$route"}}'
    return {
        "name": "Route changes",
        "datasource": c.DATASOURCE,
        "enable": True,
        "iconColor": "orange",
        # changes() misses a series' first sample, and a new reason (alert:<name>) is a new
        # series born at 1; the `unless … offset` half catches those.
        "expr": (
            f"sum by (route, reason) (changes({x}[1m]) > 0)\n"
            f"or sum by (route, reason) ({x} unless {x} offset 1m)"
        ),
        "step": "30s",
        "titleFormat": "route {{route}}: {{reason}}",
        "tagKeys": "route,reason",
        "textFormat": "Route {{route}} changed (reason: {{reason}})",
        "useValueForTime": False,
    }

FIRING = 'ALERTS{alertstate="firing", alertname=~"Ollama.*"'
FIRING_ALERTS_ANNOTATION = {
    "name": "Firing alerts",
    "datasource": c.DATASOURCE,
    "enable": True,
    "iconColor": "red",
    # The selected routes' alerts, and those about no route (Ollama down, GPU hot…).
    "expr": f'{FIRING}, route=~"$route"}}\nor {FIRING}, route=""}}',
    "step": "30s",
    "titleFormat": "{{alertname}}",
    "tagKeys": "alertname,route,severity,action",
    "textFormat": "{{alertname}} firing (route {{route}})",
    "useValueForTime": False,
}



# The routing gauges (weight, rolled back, rollout phase and step) are shared by the
# replicas through Redis: one value per route, their max, which is every replica's while
# they agree.
ONE_STATE = ("Replicas sharing their state agree within a second; Overview, \"Canary weight per replica\", "
             "shows them apart.")
# Route changes are counted by the replica that made them (the others read the change from
# Redis and count nothing), so summing over replicas counts each once; a config reload is
# the exception: every replica that loads the file counts it.
COUNTED_ONCE = ("Each change is counted once, by the replica that made it; a config reload once per replica "
                "that loaded it.")


def changes_in_range(by: str, config: MonitoringConfig = DEFAULT) -> str:
    """Route changes in the dashboard's range. A reason's series is born at 1 on its first
    change (``alert:<name>`` cannot be created at 0 in advance), and increase() cannot see a
    series' first increment: series that existed at the start of the range count their
    increase, series born inside it count their whole value."""
    x = f'{pm.ROUTE_CHANGES.name}{{{config.proxy_selector}, route=~"$route"}}'
    return f"sum{f' by ({by})' if by else ''} ((increase({x}[$__range]) and {x} offset $__range) or {x})"


def breaker_ratio(config: MonitoringConfig) -> str:
    """The breaker's canary failure ratio per route, or -1 ("off") for a route without a
    breaker, whose gauge does not exist."""
    sel = f'{config.proxy_selector}, route=~"$route"'
    return (f"max by (route) ({pm.BREAKER_CANARY_FAILURE_RATIO.name}{{{sel}}})\n"
            f"or on (route)\n{BREAKER_OFF} * max by (route) ({pm.ROUTE_INFO.name}{{{sel}}})")


def build(config: MonitoringConfig = DEFAULT) -> g.Dashboard:
    s = c.Selectors(config)
    limits = config.thresholds
    ROUTE = f'{s.proxy}, route=~"$route"'
    RAW = f"{ROUTE}, {ARMS}"
    alert_view = (f"Recording rule {{}} (rate window of the loaded rule profile: {limits.window} "
                  f"in {limits.name}).")
    breaker_description = ("The circuit breaker's own window; 'off' for a route without a breaker. With "
                           "several replicas, the highest any of them computes (they count on every replica's "
                           "requests, shared through Redis).")
    lay = c.Layout()
    lay.row(
        "Routing state",
        (c.stat("Canary weight", (f"max by (route) ({pm.ROUTE_CANARY_WEIGHT.name}{{{ROUTE}}})",
                                  "{{route}}"), "percent", graph=True,
                description="The highest weight any proxy replica serves. " + ONE_STATE), 6),
        (c.stat("Rolled back", (f"max by (route) ({pm.ROUTE_ROLLED_BACK.name}{{{ROUTE}}})",
                                "{{route}}"), "none",
                mappings=c.value_mapping({"0": ("no", "green"), "1": ("ROLLED BACK", "red")}),
                steps=c.thresholds(("green", None), ("red", 1)),
                description="ROLLED BACK as soon as one proxy replica is (one without Redis rolls back on its "
                            "own). " + ONE_STATE), 6),
        (c.stat("Breaker: canary failure ratio",
                (breaker_ratio(config), "{{route}}"),
                "percentunit", graph=True, mappings=BREAKER_MAPPINGS,
                steps=c.thresholds(("green", None), ("orange", limits.decisions.max_failure_ratio)),
                description=breaker_description), 6),
        (c.stat("Route changes in range",
                (changes_in_range("", config), "changes"),
                "short", steps=c.thresholds(("green", None), ("orange", 1)), description=COUNTED_ONCE), 6),
        height=4,
    )
    phase, step = pm.ROLLOUT_PHASE.name, pm.ROLLOUT_STEP.name
    lay.row(
        "Progressive rollout",
        (c.table("Rollout phase and step", [
            (f"max by (route, phase) ({phase}{{{ROUTE}}}) == 1", "Phase"),
        ], "none", description="The current phase of each route's rollout (idle: none ever ran; succeeded or "
                               "failed: the last one). `ollama-sidecar rollout status ROUTE` has the details."), 6),
        (c.timeseries("Canary weight and rollout step", [
            (f"max by (route) ({pm.ROUTE_CANARY_WEIGHT.name}{{{ROUTE}}})", "weight % {{route}}"),
            (f"max by (route) ({step}{{{ROUTE}}})", "step {{route}}"),
        ], "short", description="The weight climbs one step at a time while the canary stays healthy; a drop "
                                "to 0 is a rollback (the annotations say whose)."), 9),
        (c.timeseries("Rollout checks: canary and stable over the rollout, and the limits", [
            (f"max by (route, check, arm) ({pm.ROLLOUT_CHECK_VALUE.name}{{{ROUTE}}})\n"
             f"or max by (route, check, limit) ({pm.ROLLOUT_CHECK_LIMIT.name}{{{ROUTE}}})",
             "{{route}} {{check}} {{arm}}{{limit}}"),
        ], "percentunit", description="Each check's ratio over the whole rollout per arm (failure ratio; share "
                                      "of first tokens over the SLO), the absolute limit `max` and the margin "
                                      "`max_over_stable` the last move to 100 % must be within."), 9),
    )
    lay.row(
        "Traffic",
        (c.timeseries("Traffic share by arm",
                      (f"{c.rate(pm.ROUTE_REQUESTS.name, RAW, 'route, arm')}\n/ ignoring (arm) group_left\n"
                       f"{c.rate(pm.ROUTE_REQUESTS.name, RAW, 'route')}", LEGEND),
                      "percentunit", stacked=True, max_=1,
                      description="Should follow the canary weight; 0 for the canary after a rollback."), 12),
        (c.timeseries("Requests/s by arm", (f"{r.REQUESTS_RATE}{{{REC}}}", LEGEND), "reqps",
                      description=alert_view.format(r.REQUESTS_RATE)), 12),
    )
    lay.row(
        "Errors",
        (c.timeseries("Server-side failure ratio by arm (what the rollback alert sees)",
                      (f"{r.FAILED_RATIO}{{{REC}}}", LEGEND), "percentunit",
                      steps=c.thresholds(("green", None), ("red", limits.decisions.max_failure_ratio)),
                      threshold_lines=True, description=alert_view.format(r.FAILED_RATIO)), 12),
        (c.timeseries("Server-side failure ratio by arm (dashboard resolution)",
                      (c.ratio(c.rate(pm.ROUTE_REQUESTS.name, f"{RAW}, {c.SERVER_SIDE}", "route, arm"),
                               c.rate(pm.ROUTE_REQUESTS.name, RAW, "route, arm")), LEGEND), "percentunit",
                      description="Same ratio over Grafana's rate interval instead of the rule's window."), 12),
    )
    lay.row(
        "Latency",
        (c.timeseries("p95 latency by arm", (f"{r.LATENCY_P95}{{{REC}}}", LEGEND), "s",
                      description=alert_view.format(r.LATENCY_P95)), 6),
        (c.timeseries(f"First token over {limits.decisions.ttft_slo:g}s, share by arm (what the latency "
                      "rollback alert sees)", (f"{r.TTFT_OVER_SLO_RATIO}{{{REC}}}", LEGEND), "percentunit",
                      description="Share of successful requests that did not wait for a model load whose time "
                      "to first token exceeded the SLO (decisions.ttft_slo). "
                      + alert_view.format(r.TTFT_OVER_SLO_RATIO)), 6),
        (c.timeseries("p95 time to first token by arm", (f"{r.TTFT_P95}{{{REC}}}", LEGEND), "s",
                      steps=c.thresholds(("green", None), ("red", limits.ttft_p95_seconds)),
                      threshold_lines=True, description="Successful requests that did not wait for a model "
                      "load. " + alert_view.format(r.TTFT_P95)), 6),
        (c.timeseries("Requests that waited for a model load, by arm",
                      (c.rate(pm.MODEL_LOAD_WAITS.name, RAW, "route, arm"), LEGEND), "reqps",
                      description="Requests whose upstream load_duration reached decisions.load_wait: left out "
                      "of the time to first token above (a cold load is the scheduler's doing, not the model's)."),
         6),
    )
    lay.row(
        "Throughput and breaker",
        (c.timeseries("Completion tokens/s by arm", (f"{r.COMPLETION_TOKENS_RATE}{{{REC}}}", LEGEND),
                      "suffix: tok/s", description=alert_view.format(r.COMPLETION_TOKENS_RATE)), 8),
        (c.timeseries("p95 time per output token by arm",
                      (c.quantile(0.95, pm.TIME_PER_OUTPUT_TOKEN.name, RAW, "route, arm"), LEGEND), "s"), 8),
        (c.timeseries("Breaker: canary failure ratio",
                      (breaker_ratio(config), "{{route}}"),
                      "percentunit", mappings=BREAKER_MAPPINGS,
                      description=breaker_description + " An 'off' route's line stays below the axis."), 8),
    )
    lay.row(
        "Decisions",
        (c.table("Route changes in range by reason",
                 [(changes_in_range("route, reason", config),
                   "Changes")], "short", sort_by="Changes",
                 description="admin, config, alert:<name>, breaker, reconcile, promote, resume, probe, rollout, "
                             "rollout_step. " + COUNTED_ONCE), 12),
        (c.table("Models per route now",
                 [(f"max by (route, stable, canary) ({pm.ROUTE_INFO.name}{{{ROUTE}}})", "Configured")],
                 "none"), 12),
        height=7,
    )
    return c.dashboard(
        config, config.dashboard_uids.rollout, "Ollama sidecar / Rollout: canary vs stable",
        "Canary and stable arms side by side; annotations mark every route change and firing alert.",
        lay, c.variables(config, c.query_variable(
            "route", "Route", f"label_values({pm.ROUTE_INFO.name}{{{s.proxy}}}, route)")),
        annotations=[route_change_annotation(config), FIRING_ALERTS_ANNOTATION],
    )
