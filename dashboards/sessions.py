"""Sessions: who sends the traffic, and whether the session label cap is hiding anyone."""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from dashboards import uids
from proxy import metrics as pm

F = c.PROXY_FILTER
REQ = pm.REQUESTS.name
OTHER = F + ', session="other"'
OTHER_SHARE = f"{c.rate(REQ, OTHER)}\n/\n{c.rate(REQ)}"
OTHER_STEPS = c.thresholds(("green", None), ("orange", 0.2), ("red", 0.5))


def build() -> g.Dashboard:
    lay = c.Layout()
    lay.row(
        "Session labels",
        (c.stat("Live session labels", (f'sum({pm.SESSION_LABELS.name}{{instance=~"$instance"}})', "live"),
                "short", graph=True, description="Distinct session values with their own series (capped)."), 8),
        (c.stat("Share of requests labelled other", (OTHER_SHARE, "other"), "percentunit", steps=OTHER_STEPS,
                graph=True, description="Requests whose session did not fit under the label cap."), 8),
        (c.stat("Evictions in range",
                (f'sum(increase({pm.SESSION_LABELS_EVICTED.name}{{instance=~"$instance"}}[$__range]))', "evicted"),
                "short"), 8),
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
                      (f"topk(10, {c.rate(REQ, by='session')})", "{{session}}"), "reqps"), 12),
        (c.timeseries("Share of requests labelled other", (OTHER_SHARE, "other"), "percentunit",
                      steps=OTHER_STEPS, threshold_lines=True, max_=1), 6),
        (c.timeseries("Session label evictions/s",
                      (f'sum(rate({pm.SESSION_LABELS_EVICTED.name}{{instance=~"$instance"}}[{c.RATE}]))', "evictions"),
                      "ops"), 6),
    )
    return c.dashboard(
        uids.SESSIONS, "Ollama sidecar / Sessions",
        "Top sessions by requests and tokens, the share of traffic labelled other, and evictions.",
        lay, c.variables(**c.PROXY_VARIABLES),
    )
