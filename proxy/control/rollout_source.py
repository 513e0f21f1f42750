"""Where a rollout's counts come from when ``analysis: {prometheus: URL}`` is set.

The proxy's own counts see one replica. Prometheus sees every replica, so with several
proxies behind a load balancer the rollout should judge on it: each analysis asks it for
the ``increase()`` of the route's counters over the rollout's span and over the step's
span (instant queries, asynchronously, off the request path). The counts replace the
proxy's own for that rollout; an unreachable or failing Prometheus holds the rollout
(it never advances on counts it could not read), and says so in ``status``.

Counters are the session-free route counters the alerts read: requests and failures from
``ollama_proxy_route_requests_total``; warm successes and slow first tokens from the TTFT
histogram (its count and the SLO's bucket); load waits from
``ollama_proxy_model_load_waits_total``. ``increase()`` extrapolates to the span's edges,
so the counts are rounded to whole requests.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
from prometheus_client.utils import floatToGoString

from proxy import metrics as pm
from proxy.control.rollout_state import ArmEvidence, Evidence

ARMS = (pm.Arm.STABLE, pm.Arm.CANARY)
FAILURES_RE = "|".join(sorted(pm.ARM_FAILURES))


class PrometheusUnavailable(Exception):
    """Prometheus could not answer; the message says why in a few words."""


def queries(route: str, span: float, slo: float | None) -> dict[str, str]:
    """field of :class:`ArmEvidence` -> PromQL by arm over the last ``span`` seconds."""
    window = f"{max(1, math.ceil(span))}s"
    sel = f'route="{route}", arm=~"stable|canary"'
    out = {
        "requests": f"sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{{{sel}}}[{window}]))",
        "failures": f'sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{{{sel}, error_type=~"{FAILURES_RE}"}}[{window}]))',
        "warm": f"sum by (arm) (increase({pm.TIME_TO_FIRST_TOKEN.name}_count{{{sel}}}[{window}]))",
        "load_waits": f"sum by (arm) (increase({pm.MODEL_LOAD_WAITS.name}{{{sel}}}[{window}]))",
    }
    if slo is not None:
        bucket = f'{pm.TIME_TO_FIRST_TOKEN.name}_bucket{{{sel}, le="{floatToGoString(slo)}"}}'
        out["slow"] = f"{out['warm']}\n- sum by (arm) (increase({bucket}[{window}]))"
    return out


async def evidence(session: aiohttp.ClientSession, url: str, route: str, span: float, slo: float | None,
                   timeout: float = 10.0) -> Evidence:
    """Both arms' counts over the last ``span`` seconds; :class:`PrometheusUnavailable`
    when any query fails (a partial picture is no picture)."""
    out = Evidence()
    if span <= 0:
        return out
    for field, promql in queries(route, span, slo).items():
        for arm, value in (await _by_arm(session, url, promql, timeout)).items():
            setattr(_arm(out, arm), field, max(0, round(value)))
    return out


def _arm(evidence: Evidence, arm: str) -> ArmEvidence:
    return evidence.canary if arm == pm.Arm.CANARY else evidence.stable


async def _by_arm(session: aiohttp.ClientSession, url: str, promql: str, timeout: float) -> dict[str, float]:
    endpoint = f"{url.rstrip('/')}/api/v1/query"
    try:
        async with session.get(endpoint, params={"query": promql},
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body: Any = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(body, dict) or body.get("status") != "success":
                error = body.get("error") if isinstance(body, dict) else None
                raise PrometheusUnavailable(f"Prometheus at {url} answered {resp.status}: {error or 'no result'}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PrometheusUnavailable(f"cannot query Prometheus at {url}: {type(exc).__name__}") from None
    values: dict[str, float] = {}
    for sample in body.get("data", {}).get("result", []):
        arm = sample.get("metric", {}).get("arm")
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if arm in ARMS and math.isfinite(value):
            values[arm] = value
    return values
