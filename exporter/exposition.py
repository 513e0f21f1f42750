"""Serve /metrics in the two formats Prometheus asks for, at a fraction of the cost.

prometheus_client renders OpenMetrics (what Prometheus 2.x and 3.x ask for first) by
escaping every sample *name* one character at a time; for the few hundred samples of
8 GPUs and 20 models that is most of a scrape's time (about 4 ms of 6). Every name here
comes from :mod:`exporter.metrics` and is a valid legacy name, so nothing needs escaping
but label values and help texts. The output is byte for byte what prometheus_client
writes (a test holds it to that); anything unusual in the request (``name[]`` filters,
OpenMetrics 2.0, text 1.0.0 with another escaping) goes to prometheus_client's own app.

Replies are gzipped at level 1: prometheus_client uses level 9, a millisecond per
scrape for a few per cent less on loopback or a LAN.
"""

from __future__ import annotations

import gzip
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_1_0_0
from prometheus_client.utils import floatToGoString

# Content type chosen by prometheus_client's negotiation -> render as OpenMetrics?
_FAST = {
    CONTENT_TYPE_PLAIN_0_0_4: False,
    OPENMETRICS_1_0_0: True,
    OPENMETRICS_1_0_0 + "; escaping=underscores": True,
}


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample_lines(metric: Metric, out: list[str], skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Append the sample lines of ``metric``; samples whose name ends in one of ``skip``
    are returned by suffix instead (the text format moves them to families of their own)."""
    held: dict[str, list[str]] = {}
    for sample in metric.samples:
        if sample.labels:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(sample.labels.items()))
            line = f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}\n"
        else:
            line = f"{sample.name} {floatToGoString(sample.value)}\n"
        suffix = next((s for s in skip if sample.name == metric.name + s), None)
        (held.setdefault(suffix, []) if suffix else out).append(line)
    return held


def render_openmetrics(metrics: Iterable[Metric]) -> bytes:
    out: list[str] = []
    for metric in metrics:
        out.append(f"# HELP {metric.name} {_label_value(metric.documentation)}\n"
                   f"# TYPE {metric.name} {metric.type}\n")
        if metric.unit:
            out.append(f"# UNIT {metric.name} {metric.unit}\n")
        _sample_lines(metric, out)
    out.append("# EOF\n")
    return "".join(out).encode()


def render_text(metrics: Iterable[Metric]) -> bytes:
    """Text format 0.0.4 (counters and gauges: all the exporter builds)."""
    out: list[str] = []
    for metric in metrics:
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {metric.type}\n")
        held = _sample_lines(metric, out, skip=("_created",))
        for suffix, lines in sorted(held.items()):
            out.append(f"# HELP {metric.name}{suffix} {help_text}\n# TYPE {metric.name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


def metrics_app(registry: CollectorRegistry) -> Callable[[dict, Callable], Iterable[bytes]]:
    """The WSGI app for /metrics."""
    fallback = make_wsgi_app(registry, disable_compression=True)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        _, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        openmetrics = _FAST.get(content_type)
        if openmetrics is None or environ.get("QUERY_STRING"):
            status: list[str] = []
            headers: list[tuple[str, str]] = []
            body = b"".join(fallback(environ, lambda s, h: (status.append(s), headers.extend(h))))
            content_type = dict(headers).get("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        else:
            status = ["200 OK"]
            body = (render_openmetrics if openmetrics else render_text)(registry.collect())
        reply_headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=1)
            reply_headers.append(("Content-Encoding", "gzip"))
        start_response(status[0], reply_headers + [("Content-Length", str(len(body)))])
        return [body]

    return app
