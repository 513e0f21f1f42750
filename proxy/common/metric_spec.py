"""The type that names a metric once, shared by the proxy, the exporter, dashboards and rules.

It lives apart from :mod:`proxy.metrics` so the exporter can describe its own metrics
without importing the proxy's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric's identity. ``name`` is the name as it appears in PromQL (``…_total``
    included for counters); ``series`` lists every sample name Prometheus will store."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = field(default=())
    unit: str = ""

    @property
    def base(self) -> str:
        """The name prometheus_client wants (counters without ``_total``)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    @property
    def series(self) -> tuple[str, ...]:
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type == "counter":
            return (self.name, f"{self.base}_created")
        return (self.name,)
