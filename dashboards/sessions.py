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
    # Session flow and quality per arm (proxy.quality): sessions and conversations carry no
    # model label (a session is counted under the route and arm of its first request).
    NO_MODEL = "sessions and conversations are counted per route and arm, not per model."
    SF = f'{s.proxy_instance}, route=~"$route", arm=~"stable|canary"'
    ARM = "{{route}} {{arm}}"
    lay.row(
        "Session flow",
        (c.unfiltered(c.timeseries("Active sessions by arm",
                                   (f"sum by (route, arm) ({pm.ACTIVE_SESSIONS.name}{{{SF}}})", ARM), "short",
                                   description="Sessions with a request within session_active_window; exact up to "
                                               "session_tracking_cap, independent of the session label cap. Summed "
                                               "over proxy replicas: exact when a session stays on one replica "
                                               "(session affinity), else counted once per replica it reached."),
                      NO_MODEL, "Model"), 8),
        (c.unfiltered(c.timeseries("Sessions started and expired /s by arm",
                                   (f'sum by (route, arm, event) (rate({pm.SESSIONS.name}{{{SF}}}[{c.RATE}]))',
                                    "{{route}} {{arm}} {{event}}"), "ops",
                                   description="overflow: sessions not tracked (session_tracking_cap reached)."),
                      NO_MODEL, "Model"), 8),
        (c.unfiltered(c.timeseries("Session duration p50 / p95 by arm", [
            (c.quantile(q, pm.SESSION_DURATION.name, SF, "route, arm"), f"p{round(q * 100)} {ARM}")
            for q in (0.5, 0.95)], "s", description="First to last request of sessions that expired."),
            NO_MODEL, "Model"), 8),
    )
    lay.row(
        "Conversations and quality by arm",
        (c.unfiltered(c.timeseries("Requests per session and turns per conversation (means)", [
            (c.ratio(c.rate(f"{pm.SESSION_REQUESTS.name}_sum", SF, "route, arm"),
                     c.rate(f"{pm.SESSION_REQUESTS.name}_count", SF, "route, arm")), "requests/session " + ARM),
            (c.ratio(c.rate(f"{pm.CONVERSATION_TURNS.name}_sum", SF, "route, arm"),
                     c.rate(f"{pm.CONVERSATION_TURNS.name}_count", SF, "route, arm")), "turns/chat " + ARM),
        ], "short", description="A worse model often shortens sessions: users give up sooner."),
            NO_MODEL, "Model"), 8),
        (c.unfiltered(c.timeseries("Regenerated turns, share by arm", (
            c.ratio(c.rate(pm.REGENERATIONS.name, SF, "route, arm"),
                    c.rate(f"{pm.CONVERSATION_TURNS.name}_count", SF, "route, arm")), ARM), "percentunit",
            description="Chat requests that asked for the same turn again after a successful answer: the user did "
                        "not like it. The quality rollback alert compares the arms on this (and on ratings)."),
            NO_MODEL, "Model"), 8),
        (c.timeseries("Negative ratings, share by arm",
                      (f'(sum by (route, arm) (rate({pm.FEEDBACK.name}{{{F}, rating="negative"}}[{c.RATE}]))'
                       f" - on (route, arm) (sum by (route, arm) (rate({pm.FEEDBACK_RETRACTED.name}"
                       f'{{{F}, rating="negative"}}[{c.RATE}])) or 0 * sum by (route, arm) (rate({pm.FEEDBACK.name}'
                       f'{{{F}, rating="negative"}}[{c.RATE}]))))\n/ on (route, arm)\n'
                       f"(sum by (route, arm) (rate({pm.FEEDBACK.name}{{{F}}}[{c.RATE}]))"
                       f" - on (route, arm) (sum by (route, arm) (rate({pm.FEEDBACK_RETRACTED.name}{{{F}}}[{c.RATE}]))"
                       f" or 0 * sum by (route, arm) (rate({pm.FEEDBACK.name}{{{F}}}[{c.RATE}]))))", ARM),
                      "percentunit", description="Ratings on /api/feedback and /v1/feedback, net of ratings "
                                                 "replaced by a later one (the last rating of an answer wins)."), 8),
    )
    return c.dashboard(
        config, config.dashboard_uids.sessions, "Ollama sidecar / Sessions",
        "Top sessions by requests and tokens, the share of traffic labelled other, and evictions; the session "
        "flow, conversations and quality signals per arm.",
        lay, c.variables(config, *c.proxy_variables(config)),
    )
