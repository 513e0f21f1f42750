"""Alert thresholds, windows and ``for:`` durations, as named profiles.

Two profiles share one set of rule names and expressions and differ only in numbers:

* ``production`` (the default): windows long enough that a handful of slow or failed
  requests on a busy route does not page anyone, and ``for:`` durations that ride out a
  scrape hiccup.
* ``fast``: the demo and the end-to-end test, where Prometheus scrapes and evaluates every
  second and the whole loop fault -> alert -> Alertmanager -> rollback must fit in ~15 s.

Recording rules are named without their window (``route_arm:ollama_proxy_requests:rate``,
not ``…:rate5m``) so the dashboards work against either file; the window a profile uses is
:attr:`Profile.window`, written in the header of each generated file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Every number an alert depends on. Durations are Prometheus duration strings."""

    name: str
    # Rule group evaluation interval; None leaves it to prometheus.yml's global setting.
    interval: str | None
    # Rate window of every recording rule (what the alerts and the Rollout dashboard see).
    window: str

    # Canary vs stable (drive the automatic rollback).
    canary_min_rate: float  # req/s an arm needs before its ratio counts as evidence
    canary_error_ratio: float  # the canary's server-side failure ratio must exceed this…
    canary_error_margin: float  # …and stable's ratio by at least this much
    canary_error_for: str
    latency_factor: float  # canary p95 must exceed stable p95 × factor…
    latency_margin_seconds: float  # …and stable p95 + margin (tiny latencies never fire)
    latency_for: str

    # Availability.
    down_for: str

    # Ollama and GPUs.
    spill_for: str
    gpu_memory_ratio: float
    gpu_memory_for: str
    gpu_temperature_celsius: float
    gpu_hot_for: str

    # Proxy health.
    queue_length: float
    overloaded_ratio: float  # share of requests rejected as overloaded (proxy or upstream)
    overloaded_for: str
    error_ratio: float  # route-wide server-side failure ratio (all arms)
    min_rate: float  # req/s a route (or arm) needs before ratios and quantiles count
    error_for: str
    ttft_p95_seconds: float
    ttft_for: str


PRODUCTION = Profile(
    name="production",
    interval=None,
    window="5m",
    canary_min_rate=0.1,  # 30 requests in the 5 min window
    canary_error_ratio=0.05,
    canary_error_margin=0.02,
    canary_error_for="2m",
    latency_factor=1.5,
    latency_margin_seconds=0.5,
    latency_for="5m",
    down_for="1m",
    spill_for="5m",
    gpu_memory_ratio=0.95,
    gpu_memory_for="15m",
    gpu_temperature_celsius=85,
    gpu_hot_for="10m",
    queue_length=5,
    overloaded_ratio=0.01,
    overloaded_for="5m",
    error_ratio=0.1,
    min_rate=0.1,
    error_for="5m",
    ttft_p95_seconds=10,
    ttft_for="10m",
)

FAST = Profile(
    name="fast",
    interval="1s",
    window="10s",
    canary_min_rate=0.2,  # 2 requests in the 10 s window
    canary_error_ratio=0.1,
    canary_error_margin=0.05,
    canary_error_for="2s",
    latency_factor=1.5,
    latency_margin_seconds=0.2,
    latency_for="3s",
    # Prometheus starts scraping up to 5 s after it starts (target updates are batched
    # every 5 s), so absent(up{…}) holds that long on a fresh start: stay above it.
    down_for="10s",
    spill_for="3s",
    gpu_memory_ratio=0.95,
    gpu_memory_for="3s",
    gpu_temperature_celsius=85,
    gpu_hot_for="3s",
    queue_length=5,
    overloaded_ratio=0.01,
    overloaded_for="3s",
    error_ratio=0.2,
    min_rate=0.2,
    error_for="3s",
    ttft_p95_seconds=2,
    ttft_for="3s",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PRODUCTION, FAST)}
