"""Sessions: who sends the traffic, and whether the session label cap is hiding anyone."""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from proxy import metrics as pm
from proxy.monitoring import DEFAULT, MonitoringConfig

REQ = pm.REQUESTS.name
OTHER_STEPS = c.thresholds(("green", None), ("orange", 0.2), ("red", 0.5))
# The label cap and its evictions have no route or model: one cap per proxy process.
PER_PROCESS = "the session label cap is per proxy process, shared by every route and model."


def build(config: MonitoringConfig = DEFAULT) -> g.Dashboard:
    s = c.Selectors(config)
    F = s.proxy_filter
    # 0 while every session fits under the cap (no "other" series exists yet).
    other_share = c.ratio(c.rate(REQ, f'{F}, session="{pm.OVERFLOW}"'), c.rate(REQ, F))
    lay = c.Layout()
    lay.row(
        "Session labels",
        (c.unfiltered(c.stat("Live session labels", (f"sum({pm.SESSION_LABELS.name}{{{s.proxy_instance}}})", "live"),
                             "short", graph=True,
                             description="Distinct session values with their own series (capped)."),
                      PER_PROCESS, "Route", "Model"), 8),
        (c.stat("Share of requests labelled other", (other_share, "other"), "percentunit", steps=OTHER_STEPS,
                graph=True, description="Requests whose session did not fit under the label cap."), 8),
        (c.unfiltered(c.stat("Evictions in range",
                             (f"sum(increase({pm.SESSION_LABELS_EVICTED.name}{{{s.proxy_instance}}}[$__range]))",
                              "evicted"), "short"),
                      PER_PROCESS, "Route", "Model"), 8),
        height=4,
    )
    lay.row(
        "Top sessions in range",
        (c.table("Top sessions by requests",
                 [(f"topk(10, sum by (session) (increase({REQ}{{{F}}}[$__range])))", "Requests")], "short",
                 sort_by="Requests"), 12),
        (c.table("Top sessions by tokens",
                 [(f"topk(10, sum by (session) (increase({pm.TOKENS.name}{{{F}}}[$__range])))", "Tokens")], "short",
                 sort_by="Tokens"), 12),
        height=10,
    )
    lay.row(
        "Over time",
        (c.timeseries("Requests/s by session (top 10)",
                      (f"topk(10, {c.rate(REQ, F, by='session')})", "{{session}}"), "reqps"), 12),
        (c.timeseries("Share of requests labelled other", (other_share, "other"), "percentunit",
                      steps=OTHER_STEPS, threshold_lines=True, max_=1), 6),
        (c.unfiltered(c.timeseries("Session label evictions/s",
                                   (f"sum(rate({pm.SESSION_LABELS_EVICTED.name}{{{s.proxy_instance}}}[{c.RATE}]))",
                                    "evictions"), "ops"),
                      PER_PROCESS, "Route", "Model"), 6),
    )
    return c.dashboard(
        config, config.dashboard_uids.sessions, "Ollama sidecar / Sessions",
        "Top sessions by requests and tokens, the share of traffic labelled other, and evictions.",
        lay, c.variables(config, *c.proxy_variables(config)),
    )
