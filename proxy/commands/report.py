"""``ollama-sidecar report ROUTE --prometheus URL``: is the canary better or worse?

Answers from Prometheus's HTTP API rather than from the proxy's own counters because
Prometheus holds every replica's traffic and the history a decision needs; the proxy
only knows itself since its last restart. One instant query per quantity, all at the
same evaluation time (``--at``, else now), so the numbers in a report agree.

Per arm (``arm="stable"`` and ``arm="canary"`` of ``route="ROUTE"``) over ``--window``:

- requests and server-side failures: ``increase()`` of the requests counter summed by
  arm; failures are the error types in :data:`proxy.metrics.SERVER_SIDE_ERRORS`;
- failure ratio with a 95 % Wilson interval, and a pooled two-proportion z-test of the
  canary against stable (p-value);
- request latency p50/p95 and time to first token p95: ``histogram_quantile`` over the
  window's bucket increases (so they are interpolated within histogram buckets);
- time per output token: the MEAN over requests, ``increase(_sum) / increase(_count)``
  (a mean because tokens/s is derived from it and a mean inverts sensibly);
- tokens/s: ``1 / mean time per output token``, i.e. generated tokens per second of
  decode time for a typical request, not the arm's aggregate throughput.

Then a one-line verdict; the rules are :data:`proxy.commands.stats.RULES_TEXT` (in ``--help``).

Exit codes: 0 a report was printed, whatever its verdict (an unknown route or a window
without traffic is "not enough data", not an error); 2 the report could not be made:
bad ``--window``/``--at``, Prometheus unreachable (the message names the URL) or
answering with an error.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import requests

from proxy import metrics as pm
from proxy.commands import stats

ARMS = ("stable", "canary")
# Prometheus's duration syntax (units in descending order, each at most once).
_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")


class ReportError(Exception):
    """Something the user has to fix; printed as one line, exit status 2."""


def parse_window(text: str) -> str:
    """Check a window before it reaches Prometheus, which would only say 'parse error'."""
    if not text or not _DURATION.match(text) or not re.search(r"[1-9]", text):
        raise ReportError(
            f"bad --window {text!r}: use a Prometheus duration such as 30m, 1h, 6h or 1d2h"
        )
    return text


def parse_at(text: str | None) -> float:
    """Evaluation time: unix seconds or RFC 3339 (``2026-01-01T12:00:00Z``); None = now."""
    if text is None:
        return float(int(time.time()))  # whole seconds: a report names a time one can reuse
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"bad --at {text!r}: use unix seconds or RFC 3339 like 2026-01-01T12:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _label_value(value: str) -> str:
    """A PromQL string literal, so a route name cannot break (or inject into) a query."""
    return json.dumps(value)


class Prometheus:
    """The one endpoint the report needs: instant queries at a fixed time."""

    def __init__(self, url: str, at: float, timeout: float) -> None:
        # "localhost:9090" is what people type; requests would reject it without a scheme.
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.at = at
        self.timeout = timeout

    def _why(self, exc: requests.RequestException) -> str:
        """The root cause in a few words, not urllib3's paragraph with the query in it."""
        if isinstance(exc, requests.Timeout):
            return f"no answer within {self.timeout:g} s (--timeout)"
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        return errno.group(0) if errno else type(exc).__name__

    def by_arm(self, promql: str) -> dict[str, float]:
        """Run ``promql`` (a vector with an ``arm`` label); NaN/Inf values are dropped."""
        endpoint = f"{self.url}/api/v1/query"
        try:
            response = requests.get(
                endpoint, params={"query": promql, "time": f"{self.at:.3f}"}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ReportError(f"cannot reach Prometheus at {self.url}: {self._why(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            raise ReportError(
                f"{self.url} did not answer like Prometheus (HTTP {response.status_code}, "
                "not JSON): is it the right URL?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "no reason given") if isinstance(body, dict) else body
            raise ReportError(
                f"Prometheus at {self.url} rejected a query (HTTP {response.status_code}): "
                f"{error}; query: {promql}"
            )
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise ReportError(f"Prometheus at {self.url} did not return an instant vector for: {promql}")
        values: dict[str, float] = {}
        for sample in data.get("result") or []:
            try:
                arm, value = sample["metric"].get("arm"), float(sample["value"][1])
            except (AttributeError, KeyError, IndexError, TypeError, ValueError):
                continue  # a sample we cannot read is no data, like NaN
            if arm in ARMS and math.isfinite(value):
                values[arm] = value
        return values


@dataclass(frozen=True)
class Queries:
    """The PromQL behind each number, built from the metric specs (never copied names)."""

    route: str
    window: str

    def _selector(self, extra: str = "") -> str:
        arms = "|".join(ARMS)
        return f"{{route={_label_value(self.route)},arm=~\"{arms}\"{extra}}}"

    def requests(self) -> str:
        return f"sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{self._selector()}[{self.window}]))"

    def failures(self) -> str:
        errors = "|".join(sorted(pm.SERVER_SIDE_ERRORS))
        selector = self._selector(f',error_type=~"{errors}"')
        return f"sum by (arm) (increase({pm.ROUTE_REQUESTS.name}{selector}[{self.window}]))"

    def quantile(self, spec: pm.MetricSpec, q: float) -> str:
        bucket = spec.series[0]
        return (
            f"histogram_quantile({q:g}, sum by (arm, le) "
            f"(increase({bucket}{self._selector()}[{self.window}])))"
        )

    def mean(self, spec: pm.MetricSpec) -> str:
        _, total, count = spec.series
        return (
            f"sum by (arm) (increase({total}{self._selector()}[{self.window}])) / "
            f"sum by (arm) (increase({count}{self._selector()}[{self.window}]))"
        )


def collect(prometheus: Prometheus, queries: Queries) -> dict[str, dict[str, Any]]:
    """Every per-arm number of the report, as JSON-ready dicts (None where no data)."""
    requests_by_arm = prometheus.by_arm(queries.requests())
    failures_by_arm = prometheus.by_arm(queries.failures())
    p50 = prometheus.by_arm(queries.quantile(pm.REQUEST_DURATION, 0.5))
    p95 = prometheus.by_arm(queries.quantile(pm.REQUEST_DURATION, 0.95))
    ttft_p95 = prometheus.by_arm(queries.quantile(pm.TIME_TO_FIRST_TOKEN, 0.95))
    tpot_mean = prometheus.by_arm(queries.mean(pm.TIME_PER_OUTPUT_TOKEN))
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        n = round(requests_by_arm.get(arm, 0.0))
        # Extrapolation can round failures above requests on a tiny window; clamp.
        failures = min(round(failures_by_arm.get(arm, 0.0)), n)
        interval = stats.wilson_interval(failures, n)
        tpot = tpot_mean.get(arm)
        arms[arm] = {
            "requests": n,
            "failures": failures,
            "failure_ratio": failures / n if n else None,
            "failure_ratio_ci95": list(interval) if interval else None,
            "latency_p50_seconds": p50.get(arm),
            "latency_p95_seconds": p95.get(arm),
            "ttft_p95_seconds": ttft_p95.get(arm),
            "tpot_mean_seconds": tpot,
            "tokens_per_second": 1 / tpot if tpot else None,
        }
    return arms


def build_report(
    prometheus: Prometheus, route: str, window: str, rules: stats.Rules
) -> dict[str, Any]:
    """The whole report as a dict with stable keys: what ``--json`` prints."""
    arms = collect(prometheus, Queries(route, window))
    numbers = {
        arm: stats.ArmNumbers(a["requests"], a["failures"], a["latency_p95_seconds"])
        for arm, a in arms.items()
    }
    verdict = stats.decide(numbers["stable"], numbers["canary"], rules)
    stable_ratio = arms["stable"]["failure_ratio"]
    canary_ratio = arms["canary"]["failure_ratio"]
    return {
        "route": route,
        "window": window,
        "at": datetime.fromtimestamp(prometheus.at, timezone.utc).isoformat().replace("+00:00", "Z"),
        "prometheus": prometheus.url,
        "arms": arms,
        "comparison": {
            "failure_ratio_difference": (
                canary_ratio - stable_ratio
                if canary_ratio is not None and stable_ratio is not None else None
            ),
            "z": verdict.test.z if verdict.test else None,
            "p_value": verdict.test.p_value if verdict.test else None,
            "latency_p95_ratio": verdict.latency_p95_ratio,
        },
        "verdict": verdict.verdict,
        "reason": verdict.reason,
        "rules": {
            "min_requests": rules.min_requests,
            "alpha": rules.alpha,
            "latency_margin": rules.latency_margin,
        },
    }


# --- the human-readable table ----------------------------------------------------------

def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(arm: dict[str, Any]) -> str:
    if arm["failure_ratio"] is None:
        return "n/a"
    low, high = arm["failure_ratio_ci95"]
    return f"{arm['failure_ratio']:.2%} [{low:.2%} – {high:.2%}]"


ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("requests", lambda a: f"{a['requests']:,}"),
    ("server-side failures", lambda a: f"{a['failures']:,}"),
    ("failure ratio [95% CI]", _ratio),
    ("latency p50", lambda a: _seconds(a["latency_p50_seconds"])),
    ("latency p95", lambda a: _seconds(a["latency_p95_seconds"])),
    ("TTFT p95", lambda a: _seconds(a["ttft_p95_seconds"])),
    ("time/output token (mean)", lambda a: _seconds(a["tpot_mean_seconds"])),
    ("tokens/s (1 / mean TPOT)", lambda a: "n/a" if a["tokens_per_second"] is None
     else f"{a['tokens_per_second']:.1f}"),
)


def render_table(report: dict[str, Any]) -> str:
    """Aligned columns a person reads at a glance; the verdict is the last line."""
    cells = [["", *ARMS]] + [
        [label, *(fmt(report["arms"][arm]) for arm in ARMS)] for label, fmt in ROWS
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        f"route {report['route']!r}, window {report['window']} ending {report['at']}, "
        f"{report['prometheus']}",
        "",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    comparison = report["comparison"]
    parts = []
    if comparison["failure_ratio_difference"] is not None:
        parts.append(f"failure ratio {comparison['failure_ratio_difference'] * 100:+.2f} pp")
    if comparison["z"] is not None:
        parts.append(f"z = {comparison['z']:.2f}, {stats.format_p(comparison['p_value'])}")
    if comparison["latency_p95_ratio"] is not None:
        parts.append(f"p95 latency {comparison['latency_p95_ratio']:.2f}× stable")
    if parts:
        lines += ["", "canary vs stable: " + "; ".join(parts)]
    lines += ["", f"verdict: {report['verdict']} — {report['reason']}"]
    return "\n".join(lines)


# --- the subcommand ----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = stats.RULES_TEXT + (
        "\nExit status: 0 report printed (any verdict); 2 bad option, Prometheus "
        "unreachable or\nanswering with an error."
    )
    defaults = stats.Rules()
    parser.add_argument("route", metavar="ROUTE", help="route alias, e.g. chat")
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--window", default="1h",
                        help="PromQL duration to look back over (default: 1h)")
    parser.add_argument("--at", metavar="TIME",
                        help="evaluate at this time (unix seconds or RFC 3339) instead of now")
    parser.add_argument("--json", action="store_true", help="print JSON (stable keys) instead of a table")
    parser.add_argument("--min-requests", type=int, default=defaults.min_requests,
                        help=f"requests each arm needs for a verdict (default: {defaults.min_requests})")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help=f"significance level of the failure-ratio test (default: {defaults.alpha:g})")
    parser.add_argument("--latency-margin", type=float, default=defaults.latency_margin,
                        help="p95 latency change that counts, as a fraction of stable's "
                             f"(default: {defaults.latency_margin:g})")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each Prometheus query (default: 10)")


def run(args: argparse.Namespace) -> int:
    try:
        window = parse_window(args.window)
        if args.min_requests < 1 or not 0 < args.alpha < 1 or args.latency_margin < 0:
            raise ReportError("--min-requests must be ≥ 1, --alpha in (0, 1), --latency-margin ≥ 0")
        prometheus = Prometheus(args.prometheus, parse_at(args.at), args.timeout)
        rules = stats.Rules(args.min_requests, args.alpha, args.latency_margin)
        report = build_report(prometheus, args.route, window, rules)
    except ReportError as exc:
        print(f"ollama-sidecar report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0
