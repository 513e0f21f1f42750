"""``ollama-sidecar usage``: who used the GPU, per tenant.

One row per tenant (``--by-model``: per tenant and model): requests, those refused by a
tenant limit, those that failed otherwise, prompt and completion tokens, and the GPU time
Ollama reported (load + prompt evaluation + generation), with each tenant's share of it.
Rows are sorted by GPU time, most first, under a total row.

Two sources, because they answer different questions:

- without ``--prometheus``, the proxy's own counters (``GET /metrics``): exact, but only
  since that one proxy started, and only that replica's traffic;
- with ``--prometheus URL``, ``increase(...[--since])`` summed over every instance of the
  proxies' scrape job: the history and every replica. ``increase()`` extrapolates to the
  window's edges and misses a series' first scrape, so counts are rounded to whole
  requests and tokens and are approximations, as in ``ollama-sidecar report``.

``--since`` only makes sense for Prometheus: the proxy cannot say what it counted in the
last hour, only since it started, so ``--since`` without ``--prometheus`` is refused rather
than silently ignored.

Exit codes (those of the other client commands, :mod:`proxy.commands.ctl`): 0 a table was
printed (an empty one too), 1 the source answered but not usefully (a query Prometheus
rejected, a URL that is not the proxy's /metrics), 2 usage error, 3 the proxy or
Prometheus is unreachable, 4 the proxy wants a (different) metrics token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import requests

from proxy.commands.ctl import (EXIT_OK, EXIT_REFUSED, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, UsageError,
                                usage_errors_exit_2)
from proxy.common.durations import format_duration, parse_duration
from proxy.config import METRICS_TOKEN_ENV
from proxy.metrics import BUILD_INFO, TENANT_GPU_SECONDS, TENANT_REQUESTS, TENANT_TOKENS, ErrorType
from proxy.monitoring import DEFAULT as MONITORING

DEFAULT_SINCE = "24h"
"""With Prometheus and no ``--since``: "who used the GPU yesterday"."""

Sample = tuple[str, dict[str, str], float]
"""(metric name as in PromQL, labels, value): what both sources are reduced to."""


class SourceError(Exception):
    """The proxy or Prometheus could not give the figures; printed as one line, and the
    exit code says which kind of trouble it was."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the figures -------------------------------------------------------------------------------

@dataclass
class Row:
    """One tenant's (or one tenant's and model's) use; floats, since Prometheus's
    ``increase()`` is one. ``requests`` includes the refused and failed ones."""

    tenant: str
    model: str | None = None
    requests: float = 0.0
    refused: float = 0.0
    errors: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    gpu_seconds: float = 0.0

    def is_empty(self) -> bool:
        return not any((self.requests, self.prompt_tokens, self.completion_tokens, self.gpu_seconds))

    def add(self, other: Row) -> None:
        for name in ("requests", "refused", "errors", "prompt_tokens", "completion_tokens", "gpu_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def tally(samples: Iterable[Sample], by_model: bool) -> list[Row]:
    """Rows from the tenant counters, whichever source they came from: the request counter
    gives requests, refusals (``error_type="rate_limited"``) and other errors; the token
    counter prompt and completion tokens; the GPU counter GPU seconds. Tenants without any
    use are left out (a zero-valued series says nothing about who used the GPU). Sorted by
    GPU seconds, most first, then by name, so equal rows keep a stable order."""
    rows: dict[tuple[str, str | None], Row] = {}
    for name, labels, value in samples:
        if not math.isfinite(value) or "tenant" not in labels:
            continue
        key = (labels["tenant"], labels.get("model", "") if by_model else None)
        row = rows.setdefault(key, Row(*key))
        if name == TENANT_REQUESTS.name:
            row.requests += value
            error_type = labels.get("error_type", ErrorType.NONE)
            if error_type == ErrorType.RATE_LIMITED:
                row.refused += value
            elif error_type != ErrorType.NONE:
                row.errors += value
        elif name == TENANT_TOKENS.name:
            if labels.get("kind") == "prompt":
                row.prompt_tokens += value
            elif labels.get("kind") == "completion":
                row.completion_tokens += value
        elif name == TENANT_GPU_SECONDS.name:
            row.gpu_seconds += value
    kept = [row for row in rows.values() if not row.is_empty()]
    return sorted(kept, key=lambda r: (-r.gpu_seconds, r.tenant, r.model or ""))


def total(rows: list[Row]) -> Row:
    out = Row("TOTAL")
    for row in rows:
        out.add(row)
    return out


def share(part: float, whole: float) -> float | None:
    """A tenant's share of the GPU time; None when nobody used any (no 0/0 = 0 %)."""
    return part / whole if whole > 0 else None


# --- source 1: the proxy's own /metrics --------------------------------------------------------

def metrics_token(args: argparse.Namespace) -> str | None:
    """The token /metrics may ask for (``metrics.token_file`` on the proxy), found the way
    the admin commands find theirs: a token file (option, else env ``…_FILE``), else the
    environment variable itself."""
    path = args.metrics_token_file or os.environ.get(f"{METRICS_TOKEN_ENV}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the metrics token file {path}: {getattr(exc, 'strerror', None) or exc}")
    return os.environ.get(METRICS_TOKEN_ENV) or None


def metrics_url(args: argparse.Namespace) -> str:
    """``--metrics-url`` (a base URL gets ``/metrics``), else the proxy's own ``/metrics``.
    With ``metrics.listen`` the proxy serves /metrics on that listener only."""
    if args.metrics_url:
        url = _with_scheme(args.metrics_url)
        return url + "/metrics" if not re.match(r"^[a-z]+://[^/]+/.", url) else url
    return _with_scheme(args.proxy) + "/metrics"


def _with_scheme(url: str) -> str:
    """``localhost:9090`` is what people type; requests would reject it without a scheme."""
    return (url if "://" in url else f"http://{url}").rstrip("/")


def _why(exc: requests.RequestException, timeout: float) -> str:
    """The root cause in a few words, not urllib3's paragraph with the URL in it twice."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s (--timeout)"
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return errno.group(0) if errno else type(exc).__name__


def _error_of(response: requests.Response) -> str:
    """The proxy's JSON ``error`` (it says why, e.g. where metrics.listen serves /metrics)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return str(body.get("error") or f"HTTP {response.status_code}") if isinstance(body, dict) \
        else f"HTTP {response.status_code}"


def scrape_proxy(url: str, token: str | None, timeout: float) -> str:
    """The exposition text of the proxy's /metrics, or a :class:`SourceError` that says
    what to do about it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise SourceError(EXIT_UNREACHABLE, f"cannot reach the proxy's metrics at {url}: {_why(exc, timeout)}") \
            from None
    if response.status_code in (401, 403):
        raise SourceError(EXIT_UNAUTHORIZED, f"{url} refused the scrape: {_error_of(response)}; give the metrics "
                          f"token in env {METRICS_TOKEN_ENV} or with --metrics-token-file")
    if response.status_code == 404:
        raise SourceError(EXIT_REFUSED, f"{url}: {_error_of(response)}; point --metrics-url at the listener that "
                          "serves /metrics")
    if response.status_code >= 400:
        raise SourceError(EXIT_REFUSED, f"{url} answered HTTP {response.status_code}: {_error_of(response)}")
    return response.text


def proxy_samples(text: str, url: str) -> list[Sample]:
    """The tenant counters' samples from exposition text. A page without the proxy's
    build info is not the proxy's (the exporter's /metrics, say): an empty table would
    wrongly say that nobody used anything."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {TENANT_REQUESTS.name, TENANT_TOKENS.name, TENANT_GPU_SECONDS.name}
    samples: list[Sample] = []
    proxy = False
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                proxy = proxy or s.name == BUILD_INFO.name
                if s.name in wanted:
                    samples.append((s.name, dict(s.labels), float(s.value)))
    except ValueError as exc:
        raise SourceError(EXIT_REFUSED, f"{url} did not answer with Prometheus metrics ({exc}): is it the "
                          "proxy's /metrics?") from None
    if not proxy:
        raise SourceError(EXIT_REFUSED, f"{url} serves no {BUILD_INFO.name}: is it the proxy's /metrics?")
    return samples


# --- source 2: Prometheus -----------------------------------------------------------------------

def promql_duration(seconds: float) -> str:
    """A PromQL range for ``seconds`` (PromQL takes no fractions: ``1.5s`` is ``1500ms``)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def queries(selector: str, window: str, by_model: bool) -> dict[str, str]:
    """One query per counter, summed over instances (several replicas are one proxy to a
    tenant), kept apart by the labels the table needs. Names come from the metric specs."""
    model = ", model" if by_model else ""
    by = {TENANT_REQUESTS.name: f"tenant, error_type{model}", TENANT_TOKENS.name: f"tenant, kind{model}",
          TENANT_GPU_SECONDS.name: f"tenant{model}"}
    return {name: f"sum by ({labels}) (increase({name}{{{selector}}}[{window}]))" for name, labels in by.items()}


class Prometheus:
    """Instant queries at one evaluation time, so the three counters agree with each other."""

    def __init__(self, url: str, timeout: float, at: float | None = None) -> None:
        self.url = _with_scheme(url)
        self.timeout = timeout
        self.at = round(time.time(), 3) if at is None else at  # now, not the last whole second: fresh samples count

    def vector(self, promql: str) -> Iterator[tuple[dict[str, str], float]]:
        try:
            response = requests.get(f"{self.url}/api/v1/query", params={"query": promql, "time": f"{self.at:.3f}"},
                                    timeout=self.timeout)
        except requests.RequestException as exc:
            raise SourceError(EXIT_UNREACHABLE, f"cannot reach Prometheus at {self.url}: "
                              f"{_why(exc, self.timeout)}") from None
        try:
            body = response.json()
        except ValueError:
            raise SourceError(EXIT_REFUSED, f"{self.url} did not answer like Prometheus (HTTP "
                              f"{response.status_code}, not JSON): is it the right URL?") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "no reason given") if isinstance(body, dict) else body
            raise SourceError(EXIT_REFUSED, f"Prometheus at {self.url} rejected a query (HTTP "
                              f"{response.status_code}): {error}; query: {promql}")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise SourceError(EXIT_REFUSED, f"Prometheus at {self.url} did not return an instant vector for: {promql}")
        for sample in data.get("result") or []:
            try:
                yield dict(sample["metric"]), float(sample["value"][1])
            except (AttributeError, KeyError, IndexError, TypeError, ValueError):
                continue  # a sample we cannot read is no data, like NaN


def prometheus_samples(prometheus: Prometheus, selector: str, window: str, by_model: bool) -> list[Sample]:
    return [(name, labels, value) for name, promql in queries(selector, window, by_model).items()
            for labels, value in prometheus.vector(promql)]


# --- output ------------------------------------------------------------------------------------

def _count(value: float) -> str:
    return f"{round(value):,}"


def render_table(rows: list[Row], header: str, by_model: bool) -> str:
    """The header line, then the table with its total row; numbers right-aligned."""
    if not rows:
        return f"{header}\nno tenant traffic in this period (requests are attributed to tenants only when the " \
               "proxy asks for keys: auth.tenants or auth.api_keys)"
    everything = total(rows)
    titles = ["TENANT", *(["MODEL"] if by_model else []), "REQUESTS", "REFUSED", "ERRORS", "PROMPT TOKENS",
              "COMPLETION TOKENS", "GPU SECONDS", "GPU SHARE"]

    def cells(row: Row) -> list[str]:
        part = share(row.gpu_seconds, everything.gpu_seconds)
        return [row.tenant, *([row.model or ""] if by_model else []), _count(row.requests), _count(row.refused),
                _count(row.errors), _count(row.prompt_tokens), _count(row.completion_tokens),
                f"{row.gpu_seconds:,.3f}", "-" if part is None else f"{part:.1%}"]

    table = [titles, *(cells(r) for r in rows), cells(everything)]
    text_columns = 2 if by_model else 1
    widths = [max(len(line[i]) for line in table) for i in range(len(titles))]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < text_columns else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    lines = [line(v) for v in table]
    lines.insert(-1, "  ".join("-" * w for w in widths))
    return "\n".join([header, *lines])


def row_json(row: Row, whole: float, by_model: bool) -> dict[str, Any]:
    """Counts as whole numbers (``increase()`` is extrapolated: 3.07 requests are 3)."""
    out: dict[str, Any] = {"tenant": row.tenant}
    if by_model:
        out["model"] = row.model
    out |= {"requests": round(row.requests), "refused": round(row.refused), "errors": round(row.errors),
            "prompt_tokens": round(row.prompt_tokens), "completion_tokens": round(row.completion_tokens),
            "gpu_seconds": round(row.gpu_seconds, 6), "gpu_share": share(row.gpu_seconds, whole)}
    return out


def render_json(rows: list[Row], source: dict[str, Any], by_model: bool) -> str:
    everything = total(rows)
    doc = {**source, "rows": [row_json(r, everything.gpu_seconds, by_model) for r in rows],
           "total": {k: v for k, v in row_json(everything, everything.gpu_seconds, by_model).items()
                     if k not in ("tenant", "model")}}
    return json.dumps(doc, indent=2)


# --- the subcommand ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Without --prometheus the figures are the proxy's own counters since it started (one replica);\n"
        "with it, increase() over --since summed over every instance of the proxies' scrape job.\n\n"
        "Exit status: 0 table printed; 1 the source answered but not usefully; 2 bad option;\n"
        "3 proxy or Prometheus unreachable; 4 the proxy wants a (different) metrics token."
    )
    parser.add_argument("--prometheus", metavar="URL",
                        help="read Prometheus (e.g. http://127.0.0.1:9090) instead of the proxy's own counters")
    parser.add_argument("--since", metavar="DURATION",
                        help=f"with --prometheus: how far back, e.g. 30m, 24h, 7d or seconds (default: {DEFAULT_SINCE})")
    parser.add_argument("--job", default=MONITORING.proxy_job,
                        help=f"with --prometheus: the proxies' scrape job (default: {MONITORING.proxy_job}, as the "
                             "generated rules and dashboards)")
    parser.add_argument("--proxy", default=os.environ.get("OLLAMA_SIDECAR_URL", "http://127.0.0.1:11435"),
                        help="proxy base URL (env OLLAMA_SIDECAR_URL; default http://127.0.0.1:11435)")
    parser.add_argument("--metrics-url", metavar="URL",
                        help="the proxy's /metrics when metrics.listen serves it elsewhere, "
                             "e.g. http://127.0.0.1:9464/metrics (default: PROXY/metrics)")
    parser.add_argument("--metrics-token-file", metavar="FILE",
                        help=f"file holding the metrics token, if the proxy asks for one (else env "
                             f"{METRICS_TOKEN_ENV} or {METRICS_TOKEN_ENV}_FILE)")
    parser.add_argument("--by-model", action="store_true", help="one row per tenant and model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the proxy or each Prometheus query (default: 10)")


def since_seconds(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--since {exc}") from None
    if seconds < 0.001:
        raise UsageError(f"--since must be longer than 0, got {text!r}")
    return seconds


def collect(args: argparse.Namespace) -> tuple[list[Sample], str, dict[str, Any]]:
    """The samples, the header line and the source's description for ``--json``."""
    if args.prometheus is None:
        if args.since is not None:
            raise UsageError("--since needs --prometheus: the proxy's own counters cover the time since it "
                             "started, not a chosen period (add --prometheus URL, or leave --since out)")
        url = metrics_url(args)
        samples = proxy_samples(scrape_proxy(url, metrics_token(args), args.timeout), url)
        return samples, f"Tenant usage since the proxy started ({url}; this replica only)", \
            {"source": "proxy", "url": url, "since": None}
    if args.metrics_url:
        raise UsageError("--metrics-url reads one proxy; with --prometheus the figures come from Prometheus "
                         "(leave one of them out)")
    seconds = since_seconds(args.since or DEFAULT_SINCE)
    try:
        selector = dataclasses.replace(MONITORING, proxy_job=args.job).proxy_selector
    except ValueError as exc:
        raise UsageError(f"--job: {exc}") from None
    prometheus = Prometheus(args.prometheus, args.timeout)
    samples = prometheus_samples(prometheus, selector, promql_duration(seconds), args.by_model)
    period = format_duration(seconds)
    return samples, f"Tenant usage over the last {period} from Prometheus at {prometheus.url} (job " \
                    f"{args.job}, all instances)", \
        {"source": "prometheus", "url": prometheus.url, "job": args.job, "since": seconds, "at": prometheus.at}


def _run(args: argparse.Namespace) -> int:
    try:
        samples, header, source = collect(args)
    except SourceError as exc:
        print(f"ollama-sidecar usage: {exc}", file=sys.stderr)
        return exc.code
    rows = tally(samples, args.by_model)
    if args.json:
        print(render_json(rows, {**source, "period": header}, args.by_model))
    else:
        print(render_table(rows, header, args.by_model))
    return EXIT_OK


run = usage_errors_exit_2(_run)
