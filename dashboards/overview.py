"""Overview: is it up, how much traffic, how many failures, how slow, is a route rolled back,
and do the proxy's replicas agree.

Two instance variables, because the proxy and the exporter are different targets with
different addresses: ``instance`` (the proxy's) filters every proxy panel but the count of
rollout leaders (one lease for every replica), ``exporter`` filters "Exporter up" and
"Ollama up". ``route`` and ``model`` filter every panel whose series carry them; the
routing panels find a model through the route's arms (:func:`routes_serving`).

Several replicas (issue 13) are one Prometheus target each. Counts and rates are summed
over them where a total is meant; the routing gauges, which the replicas share through
Redis, are taken as their ``max`` per route (what any replica serves); the "Replicas" rows
show each replica apart: its shared state, the lease, its journal, its traffic and its
canary weights, where replicas that stopped agreeing part.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import DEFAULT, MonitoringConfig

REQ = pm.REQUESTS.name
NO_ERRORS = "no errors"

ROLLED_BACK = c.value_mapping({"0": ("serving", "green"), "1": ("ROLLED BACK", "red")})
FAILURE_STEPS = c.thresholds(("green", None), ("orange", 0.05), ("red", 0.1))
PER_PROCESS = "one proxy process serves every route and model."
PER_REPLICA_STATE = "a replica's shared state and lease serve every route and model."
LEADER = c.value_mapping({"0": ("follower", "text"), "1": ("LEADER", "blue")})
# 1 is right, 0 (nobody advances rollouts) and 2 or more (replicas that do not share one
# state) are wrong.
ONE_LEADER_STEPS = c.thresholds(("red", None), ("green", 1), ("red", 2))


def routes_serving(config: MonitoringConfig) -> str:
    """The routes (of $route) one of whose arms serves a model of $model: the per-route
    gauges have no model label, the route's info series names the model of each arm."""
    info = f'{pm.ROUTE_INFO.name}{{{config.proxy_selector}, instance=~"$instance", route=~"$route"'
    return f'({info}, stable=~"$model"}} or {info}, canary=~"$model"}})'


def rollout_leaders(config: MonitoringConfig) -> str:
    """Replicas that hold the rollout lease, as OllamaRolloutLeaderMissing and
    OllamaRolloutLeaderSplit count them: only replicas that share their state through Redis
    (they count a ``sync`` from their first attempt to reach it; a proxy with a state file
    never does). Without any, the proxies on state files, each of which leads itself."""
    leader, sync = pm.REPLICA_LEADER.name, pm.STATE_BACKEND_OPERATIONS.name
    sel = config.proxy_selector
    return (f'sum({leader}{{{sel}}} and on (job, instance) {sync}{{{sel}, operation="sync"}})\n'
            f"or sum({leader}{{{sel}}})")


def replicas_now(config: MonitoringConfig) -> list[tuple[object, int]]:
    """One stat per replica: is its shared state up, does it lead, what has it journaled."""
    s = c.Selectors(config)
    return [
        (c.unfiltered(c.stat("Rollout leaders", (rollout_leaders(config), "leaders"), "none",
                             steps=ONE_LEADER_STEPS,
                             description="Replicas holding the rollout lease (advancing rollouts, acting on the "
                                         "shared breaker and probe counts): exactly 1. 0: rollouts hold their step "
                                         "(OllamaRolloutLeaderMissing); 2 or more: replicas that do not share one "
                                         "state (OllamaRolloutLeaderSplit). A single proxy on a state file leads "
                                         "itself: 1."),
                      "one lease serves every replica, route and model.", "Proxy instance", "Route", "Model"), 4),
        (c.unfiltered(c.stat("Shared state per replica",
                             (f"{pm.STATE_BACKEND_UP.name}{{{s.proxy_instance}}}", "{{instance}}"), "none",
                             steps=c.UP_STEPS, mappings=c.UP_DOWN,
                             description="DOWN: the replica cannot reach Redis; it routes with the last state it "
                                         "knew, refuses admin changes (503) and journals rollbacks "
                                         "(OllamaStateBackendDown). Always UP with a state file."),
                      PER_REPLICA_STATE, "Route", "Model"), 7),
        (c.unfiltered(c.stat("Rollout leader per replica",
                             (f"{pm.REPLICA_LEADER.name}{{{s.proxy_instance}}}", "{{instance}}"), "none",
                             mappings=LEADER,
                             description="The replica holding the rollout lease; it passes to another within the "
                                         "lease (state.lease) when the leader stops or loses Redis."),
                      PER_REPLICA_STATE, "Route", "Model"), 7),
        (c.unfiltered(c.stat("Journaled rollbacks per replica",
                             (f"{pm.STATE_JOURNAL_ENTRIES.name}{{{s.proxy_instance}}}", "{{instance}}"), "short",
                             steps=c.thresholds(("green", None), ("orange", 1)),
                             description="Rollbacks (and auto-resumes) applied on this replica alone while Redis "
                                         "was away, waiting to be replayed into it: the other replicas do not "
                                         "know them yet. Back to 0 once the replica reaches Redis."),
                      PER_REPLICA_STATE, "Route", "Model"), 6),
    ]


def replicas_over_time(config: MonitoringConfig) -> list[tuple[object, int]]:
    """Each replica's traffic, its trouble with the shared state, and the canary weight it
    serves: lines that part are replicas that stopped agreeing."""
    s = c.Selectors(config)
    ops = pm.STATE_BACKEND_OPERATIONS.name
    per_replica = f"max by (instance) ({pm.STATE_BACKEND_UP.name}{{{s.proxy_instance}}})"
    errors = c.rate(ops, f'{s.proxy_instance}, outcome="error"', by="instance, operation")
    conflicts = c.rate(ops, f'{s.proxy_instance}, operation="conflict"', by="instance")
    return [
        (c.timeseries("Requests/s per replica", (c.rate(REQ, s.proxy_filter, by="instance"), "{{instance}}"),
                      "reqps", description="How the load balancer spreads the traffic over the replicas."), 8),
        (c.unfiltered(c.timeseries("Shared state: errors and conflicts per replica", [
            # No error yet: one 0 line per replica that says so, not "No data".
            (f'{errors}\nor on (instance) label_replace(0 * {per_replica}, "operation", "{NO_ERRORS}", "", "")',
             "{{operation}} errors {{instance}}"),
            (f"{conflicts}\nor 0 * {per_replica}", "conflicts {{instance}}"),
        ], "ops", description="Errors by operation (write, read, sync: a lost connection, replay). A conflict is "
                              "a change redone on fresher state because another replica wrote first: a few are "
                              "normal, many mean replicas fighting over a route. 0 with a state file."),
            PER_REPLICA_STATE, "Route", "Model"), 8),
        (c.timeseries("Canary weight per replica",
                      (f'{pm.ROUTE_CANARY_WEIGHT.name}{{{s.proxy_instance}, route=~"$route"}}\n'
                       f"and on (route) {routes_serving(config)}", "{{route}} {{instance}}"), "percent",
                      description="Replicas sharing their state agree within a second; a line apart is a "
                                  "replica that routes on its own: without Redis, or with a rollback not yet "
                                  "replayed."), 8),
    ]


def build(config: MonitoringConfig = DEFAULT) -> g.Dashboard:
    s = c.Selectors(config)
    F = s.proxy_filter
    not_success = F + ', error_type!="none"'
    lay = c.Layout()
    lay.row(
        "Is it up",
        (c.unfiltered(c.stat("Proxy up", (f"up{{{s.proxy_instance}}}", "{{instance}}"),
                             "none", steps=c.UP_STEPS, mappings=c.UP_DOWN,
                             description="Prometheus's scrape of the proxy's /metrics."),
                      PER_PROCESS, "Route", "Model"), 4),
        (c.stat("Exporter up", (f"up{{{s.exporter_instance}}}", "{{instance}}"), "none",
                steps=c.UP_STEPS, mappings=c.UP_DOWN,
                description="Prometheus's scrape of the exporter (Exporter instance)."), 4),
        (c.stat("Ollama up", (f"{em.OLLAMA_UP.name}{{{s.exporter_instance}}}", "{{instance}}"), "none",
                steps=c.UP_STEPS, mappings=c.UP_DOWN,
                description="The exporter's last call to Ollama's API (Exporter instance)."), 4),
        (c.stat("Requests/s", (c.rate(REQ, F), "requests/s"), "reqps", graph=True), 4),
        (c.stat("Server-side failure ratio",
                (c.ratio(c.rate(REQ, f"{F}, {c.SERVER_SIDE}"), c.rate(REQ, F)), "failures"),
                "percentunit", steps=FAILURE_STEPS, graph=True,
                description="upstream 5xx, timeouts, connection errors and cut streams over all requests."), 4),
        (c.unfiltered(c.stat("Queued requests", (f"sum({pm.QUEUE_LENGTH.name}{{{s.proxy_instance}}})", "queued"),
                             "short", steps=c.thresholds(("green", None), ("orange", 1), ("red", 5)), graph=True,
                             description="Requests waiting for an admission slot (max_in_flight)."),
                      "requests wait for admission before a route or model is chosen.", "Route", "Model"), 4),
        height=4,
    )
    lay.row("Replicas", *replicas_now(config), height=4)
    lay.row(
        "Traffic and errors",
        (c.timeseries("Request rate by route and arm", (c.rate(REQ, F, by="route, arm"), "{{route}} {{arm}}"),
                      "reqps"), 12),
        (c.timeseries(
            "Error ratio by error_type",
            (f"(\n  {c.rate(REQ, not_success, by='error_type')}\n"
             # Nothing failed in the window: one 0 series that says so, not "No data".
             f'  or on () label_replace(0 * {c.rate(REQ, F)}, "error_type", "{NO_ERRORS}", "", "")\n)\n'
             f"/ ignoring (error_type) group_left\n{c.rate(REQ, F)}", "{{error_type}}"),
            "percentunit", stacked=True,
            description="Share of all requests that ended with each error_type (client errors included); "
                        f"'{NO_ERRORS}' at 0 when no request failed."), 12),
    )
    lay.row(
        "Latency and throughput",
        (c.timeseries("Request latency p50 / p95 / p99", [
            (c.quantile(q, pm.REQUEST_DURATION.name, F), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)
        ], "s", description="Arrival to last byte, all routes and arms together."), 8),
        (c.timeseries("Time to first token p95 by route and arm",
                      (c.quantile(0.95, pm.TIME_TO_FIRST_TOKEN.name, F, "route, arm"), "{{route}} {{arm}}"),
                      "s", steps=c.thresholds(("green", None), ("orange", 5), ("red", 10)),
                      threshold_lines=True), 8),
        (c.timeseries("Tokens/s by kind", (c.rate(pm.TOKENS.name, F, by="kind"), "{{kind}}"),
                      "suffix: tok/s", description="prompt = input tokens processed, completion = generated."), 8),
    )
    lay.row(
        "Capacity and routing",
        (c.unfiltered(c.timeseries("In flight and queued", [
            (f"sum by (route, arm) ({pm.IN_FLIGHT.name}{{{F}}})", "in flight {{route}} {{arm}}"),
            (f"sum({pm.QUEUE_LENGTH.name}{{{s.proxy_instance}}})", "queued"),
        ], "short", description="Requests being forwarded upstream right now, and waiting for a slot."),
            "the queued line: requests wait for admission before a route or model is chosen.", "Route", "Model"), 8),
        (c.stat("Canary weight per route",
                (f'max by (route) ({pm.ROUTE_CANARY_WEIGHT.name}{{{s.proxy_instance}, route=~"$route"}})\n'
                 f"and on (route) {routes_serving(config)}", "{{route}}"), "percent",
                description="Share of sessions sent to the canary arm (0 after a rollback), for the "
                            "routes one of whose arms serves the selected models; the highest any replica "
                            "uses (\"Canary weight per replica\" shows them apart)."), 8),
        (c.stat("Rolled back per route",
                (f'max by (route) ({pm.ROUTE_ROLLED_BACK.name}{{{s.proxy_instance}, route=~"$route"}})\n'
                 f"and on (route) {routes_serving(config)}", "{{route}}"), "none", mappings=ROLLED_BACK,
                steps=c.thresholds(("green", None), ("red", 1)),
                description="ROLLED BACK until 'ollama-sidecar resume ROUTE'; the routes one of whose "
                            "arms serves the selected models. ROLLED BACK as soon as one replica is (a replica "
                            "without Redis rolls back on its own)."), 8),
    )
    lay.row("Replicas: traffic and shared state", *replicas_over_time(config))
    return c.dashboard(
        config, config.dashboard_uids.overview, "Ollama sidecar / Overview",
        "Is it up, how much traffic, how many failures, how slow, is any route rolled back.",
        lay, c.variables(config, *c.proxy_variables(config), c.exporter_instance_variable(config)),
    )
