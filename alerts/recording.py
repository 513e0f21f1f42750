"""Recording rules: the per route/arm series that alerts and dashboards share.

Names follow ``level:metric:operations`` without the window (see :mod:`proxy.monitoring`,
where the names live so the dashboards read them without importing this package).
Ratios aggregate numerator and denominator separately and divide last, so a ratio over
many proxy replicas is weighted by traffic, not averaged. Every input is selected on the
proxy's scrape job.
"""

from __future__ import annotations

from prometheus_client.utils import floatToGoString

from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import (  # noqa: F401  (re-exported: the rule names' one home is proxy.monitoring)
    COMPLETION_TOKENS_RATE, DEFAULT, FAILED_RATE, FAILED_RATIO, HOST_COMPLETION_TOKENS_RATE, HOST_ENERGY_PER_TOKEN,
    HOST_GPU_POWER, LATENCY_P95, RECORDED_NAMES, REQUESTS_RATE, ROUTE_FAILED_RATIO, ROUTE_REQUESTS_RATE,
    TTFT_OVER_SLO_RATE, TTFT_OVER_SLO_RATIO, TTFT_P95, TTFT_RATE, MonitoringConfig, Profile)
from proxy.monitoring import (CHAT_RATE, NEGATIVE_RATINGS_RATE, NEGATIVE_RATIO, RATINGS_RATE, REGENERATION_RATIO,
                              REGENERATIONS_RATE)

# error_type values that count against an arm, as a regex matcher value (sorted: stable output).
SERVER_SIDE_ERRORS_RE = "|".join(sorted(pm.SERVER_SIDE_ERRORS))


def recording_rules(profile: Profile, config: MonitoringConfig = DEFAULT) -> list[dict[str, str]]:
    """Rules in dependency order: a rule may read the ones above it in the same group,
    which Prometheus evaluates in order at one timestamp."""
    w = profile.window
    job = config.proxy_selector
    requests = pm.ROUTE_REQUESTS.name  # session-free, first failure visible (see its help)
    ttft, slo = pm.TIME_TO_FIRST_TOKEN.name, floatToGoString(profile.decisions.ttft_slo)
    return [
        {"record": REQUESTS_RATE, "expr": f"sum by (host, route, arm) (rate({requests}{{{job}}}[{w}]))"},
        {
            # Without the `or`, an arm that never failed has no failure series at all, its
            # ratio would be missing instead of 0, and canary-vs-stable could not compare.
            "record": FAILED_RATE,
            "expr": (
                f'sum by (host, route, arm) (rate({requests}{{{job}, error_type=~"{SERVER_SIDE_ERRORS_RE}"}}[{w}]))\n'
                f"or\n0 * {REQUESTS_RATE}"
            ),
        },
        # No traffic in the window gives 0/0 = NaN: every comparison with NaN is false, so
        # an idle arm never fires an alert.
        {"record": FAILED_RATIO, "expr": f"{FAILED_RATE}\n/\n{REQUESTS_RATE}"},
        {"record": ROUTE_REQUESTS_RATE, "expr": f"sum by (host, route) ({REQUESTS_RATE})"},
        {
            "record": ROUTE_FAILED_RATIO,
            "expr": f"sum by (host, route) ({FAILED_RATE})\n/\nsum by (host, route) ({REQUESTS_RATE})",
        },
        {
            "record": LATENCY_P95,
            "expr": _p95(pm.REQUEST_DURATION.name, job, w),
        },
        {
            "record": TTFT_P95,
            "expr": _p95(pm.TIME_TO_FIRST_TOKEN.name, job, w),
        },
        # The TTFT histogram holds successful, warm requests only (failures and model-load
        # waits stay out), so the share over the SLO is a proportion like the failure ratio.
        # The SLO is a bucket bound, spelt as prometheus_client spells its `le` labels.
        {"record": TTFT_RATE, "expr": f"sum by (host, route, arm) (rate({ttft}_count{{{job}}}[{w}]))"},
        {
            "record": TTFT_OVER_SLO_RATE,
            "expr": (f"{TTFT_RATE}\n- on (host, route, arm)\n"
                     f'sum by (host, route, arm) (rate({ttft}_bucket{{{job}, le="{slo}"}}[{w}]))'),
        },
        {"record": TTFT_OVER_SLO_RATIO, "expr": f"{TTFT_OVER_SLO_RATE}\n/\n{TTFT_RATE}"},
        {
            "record": COMPLETION_TOKENS_RATE,
            "expr": f'sum by (host, route, arm) (rate({pm.TOKENS.name}{{{job}, kind="completion"}}[{w}]))',
        },
        # Quality: a regeneration is the user asking for the same turn again; ratings are net of
        # the ones replaced by a later rating of the same answer. `or 0 *` keeps a ratio at 0
        # (not missing) for an arm with chat requests but no regeneration yet.
        {"record": CHAT_RATE,
         "expr": f"sum by (host, route, arm) (rate({pm.CONVERSATION_TURNS.name}_count{{{job}}}[{w}]))"},
        {"record": REGENERATIONS_RATE,
         "expr": f"sum by (host, route, arm) (rate({pm.REGENERATIONS.name}{{{job}}}[{w}]))\nor\n0 * {CHAT_RATE}"},
        {"record": REGENERATION_RATIO, "expr": f"{REGENERATIONS_RATE}\n/\n{CHAT_RATE}"},
        {"record": RATINGS_RATE,
         "expr": (f"sum by (host, route, arm) (rate({pm.FEEDBACK.name}{{{job}}}[{w}]))\n"
                  f"- on (host, route, arm)\n(sum by (host, route, arm) (rate({pm.FEEDBACK_RETRACTED.name}{{{job}}}[{w}]))"
                  f"\n or 0 * sum by (host, route, arm) (rate({pm.FEEDBACK.name}{{{job}}}[{w}])))")},
        {"record": NEGATIVE_RATINGS_RATE,
         "expr": (f'sum by (host, route, arm) (rate({pm.FEEDBACK.name}{{{job}, rating="negative"}}[{w}]))\n'
                  f"- on (host, route, arm)\n"
                  f'(sum by (host, route, arm) (rate({pm.FEEDBACK_RETRACTED.name}{{{job}, rating="negative"}}[{w}]))'
                  f'\n or 0 * sum by (host, route, arm) (rate({pm.FEEDBACK.name}{{{job}, rating="negative"}}[{w}])))'
                  f"\nor\n0 * {RATINGS_RATE}")},
        {"record": NEGATIVE_RATIO, "expr": f"{NEGATIVE_RATINGS_RATE}\n/\n{RATINGS_RATE}"},
        # Energy per generated token, per host: every GPU's energy counter on the host over the
        # tokens the host's proxy saw generated. A host's GPUs also burn power idle and for
        # other work, so this is the energy cost of a token on that box, not of the model alone.
        {"record": HOST_GPU_POWER,
         "expr": f"sum by (host) (rate({em.GPU_ENERGY.name}{{{config.exporter_selector}}}[{profile.exporter_window}]))"},
        {"record": HOST_COMPLETION_TOKENS_RATE, "expr": f"sum by (host) ({COMPLETION_TOKENS_RATE})"},
        {"record": HOST_ENERGY_PER_TOKEN,
         "expr": f"{HOST_GPU_POWER}\n/ on (host)\n({HOST_COMPLETION_TOKENS_RATE} > 0)"},
    ]


def _p95(histogram: str, job: str, window: str) -> str:
    return f"histogram_quantile(0.95, sum by (host, route, arm, le) (rate({histogram}_bucket{{{job}}}[{window}])))"
