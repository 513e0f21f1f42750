"""The one monitoring config that dashboards/ and alerts/ both read (the mixin ``_config``).

Scrape job names (every query selects on them), the pinned Grafana datasource uid, the
dashboard uids (alert annotations link to them), the dashboards' refresh, and every alert
threshold, window and ``for:`` duration, as named profiles. The names of the recording
rules live here too: alerts define them and the Rollout dashboard reads them.

It sits at the top of ``proxy/`` beside :mod:`proxy.metrics` (the metric names both
packages already import) so that ``dashboards/`` and ``alerts/`` never import each other,
and it imports neither grafanalib nor YAML: ``ollama-sidecar generate --overrides FILE``
parses the file and hands the mapping to :func:`with_overrides`.

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

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from proxy.decision_settings import (DEFAULT_DECISIONS, DecisionSettings, DecisionSettingsError, check_ttft_slo,
                                     parse_decisions)
from proxy.metrics import TIME_TO_FIRST_TOKEN  # the TTFT SLO must be one of its bucket bounds

# --- recording rules: names shared by alerts/ (which define them) and dashboards/ ------------

# Per route and arm, every proxy replica together.
REQUESTS_RATE = "route_arm:ollama_proxy_requests:rate"
FAILED_RATE = "route_arm:ollama_proxy_requests_failed:rate"
FAILED_RATIO = "route_arm:ollama_proxy_requests_failed_per_requests:ratio_rate"
LATENCY_P95 = "route_arm:ollama_proxy_request_duration_seconds:p95"
TTFT_P95 = "route_arm:ollama_proxy_time_to_first_token_seconds:p95"
COMPLETION_TOKENS_RATE = "route_arm:ollama_proxy_completion_tokens:rate"
# Time to first token of successful, warm requests (what the histogram holds), and those
# over the profile's SLO (decisions.ttft_slo): the latency rollback alert's inputs.
TTFT_RATE = "route_arm:ollama_proxy_time_to_first_token:rate"
TTFT_OVER_SLO_RATE = "route_arm:ollama_proxy_time_to_first_token_over_slo:rate"
TTFT_OVER_SLO_RATIO = "route_arm:ollama_proxy_time_to_first_token_over_slo_per_time_to_first_token:ratio_rate"
# Quality signals per route and arm: regenerations over chat requests, negative ratings
# over ratings (a changed rating counted once: ratings minus retracted ones).
CHAT_RATE = "route_arm:ollama_proxy_chat_requests:rate"
REGENERATIONS_RATE = "route_arm:ollama_proxy_regenerations:rate"
REGENERATION_RATIO = "route_arm:ollama_proxy_regenerations_per_chat_requests:ratio_rate"
RATINGS_RATE = "route_arm:ollama_proxy_feedback:rate"
NEGATIVE_RATINGS_RATE = "route_arm:ollama_proxy_feedback_negative:rate"
NEGATIVE_RATIO = "route_arm:ollama_proxy_feedback_negative_per_feedback:ratio_rate"
# Per host (the `host` target label shared by the exporter's and the proxy's series): GPU
# power, completion tokens, and their ratio, the energy per generated token.
HOST_GPU_POWER = "host:gpu_energy_joules:rate"
HOST_COMPLETION_TOKENS_RATE = "host:ollama_proxy_completion_tokens:rate"
HOST_ENERGY_PER_TOKEN = "host:gpu_energy_joules_per_completion_token:ratio_rate"
# Per route, all arms together.
ROUTE_REQUESTS_RATE = "route:ollama_proxy_requests:rate"
ROUTE_FAILED_RATIO = "route:ollama_proxy_requests_failed_per_requests:ratio_rate"

RECORDED_NAMES: tuple[str, ...] = (
    REQUESTS_RATE, FAILED_RATE, FAILED_RATIO, ROUTE_REQUESTS_RATE, ROUTE_FAILED_RATIO,
    LATENCY_P95, TTFT_P95, COMPLETION_TOKENS_RATE, TTFT_RATE, TTFT_OVER_SLO_RATE, TTFT_OVER_SLO_RATIO,
    HOST_GPU_POWER, HOST_COMPLETION_TOKENS_RATE, HOST_ENERGY_PER_TOKEN,
    CHAT_RATE, REGENERATIONS_RATE, REGENERATION_RATIO, RATINGS_RATE, NEGATIVE_RATINGS_RATE, NEGATIVE_RATIO,
)


# --- thresholds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """Every number an alert depends on. Durations are Prometheus duration strings."""

    name: str
    # Rule group evaluation interval; None leaves it to prometheus.yml's global setting.
    interval: str | None
    # Rate window of every recording rule (what the alerts and the Rollout dashboard see).
    window: str

    # Canary vs stable (drive the automatic rollback): the statistical settings, in the one
    # vocabulary the proxy's breaker, rollout gate and report read (proxy.decision_settings).
    # The failure alert needs evidence, as bench/decisions_sim.py chose (docs/decisions.md):
    # at least `min_failures` canary failures in the window, at least `min_expected_failures`
    # expected at stable's ratio (floored at `stable_ratio_floor`), and a canary ratio above
    # `rate_ratio` x stable's + `worse_margin`; with no stable traffic (a route at 100 %) the
    # absolute `max_failure_ratio` decides. The latency alert is the same test on the share of
    # successful, warm requests whose time to first token exceeds `ttft_slo`, with
    # `ttft_margin` as its margin.
    decisions: DecisionSettings
    canary_error_for: str
    latency_for: str
    quality_for: str
    # A rolled-back canary gets no traffic, so its alert would resolve by itself; it keeps
    # firing this long after its condition last held, so silence is never read as health.
    rollback_keep_firing_for: str

    # Availability.
    down_for: str

    # Ollama and GPUs.
    spill_for: str
    gpu_memory_ratio: float
    gpu_memory_for: str
    gpu_temperature_celsius: float
    gpu_hot_for: str
    gpu_unreadable_for: str  # a GPU NVML can no longer read (a real error, not "not supported")
    nvml_stale_for: str  # NVML reads past the exporter's deadline (a wedged driver)
    gpu_xid_window: str  # XID errors counted over this window
    gpu_throttled_for: str  # a thermal or hardware clock-event reason active this long
    exporter_window: str  # rate window over the exporter's series (at least four of its scrapes)

    # The fleet of Ollama servers.
    upstream_down_for: str
    fleet_saturated_for: str
    cold_loads_per_minute: float
    cold_loads_for: str

    # Progressive rollouts.
    rollout_stalled_for: str
    rollout_failed_window: str  # OllamaRolloutFailed fires this long after a rollout failed

    # Proxy health.
    queue_length: float
    overloaded_ratio: float  # share of requests rejected as overloaded (proxy or upstream)
    overloaded_for: str
    error_ratio: float  # route-wide server-side failure ratio (all arms)
    min_rate: float  # req/s a route (or arm) needs before ratios and quantiles count
    error_for: str
    ttft_p95_seconds: float
    ttft_for: str

    # Tenants (auth.tenants): how long a tenant's requests have been refused by one of its
    # limits before a human hears of it. Longer than the profile's window, so a burst of
    # refusals (a retry storm, a batch job's first minute) does not fire it.
    tenant_limited_for: str


PRODUCTION = Profile(
    name="production",
    interval=None,
    window="5m",
    decisions=DEFAULT_DECISIONS,
    canary_error_for="5m",
    latency_for="5m",
    quality_for="10m",
    rollback_keep_firing_for="30m",
    down_for="1m",
    spill_for="5m",
    gpu_memory_ratio=0.95,
    gpu_memory_for="15m",
    gpu_temperature_celsius=85,
    gpu_hot_for="10m",
    gpu_unreadable_for="10m",
    nvml_stale_for="5m",
    gpu_xid_window="10m",
    gpu_throttled_for="15m",
    exporter_window="5m",
    upstream_down_for="2m",
    fleet_saturated_for="10m",
    cold_loads_per_minute=2,
    cold_loads_for="15m",
    rollout_stalled_for="5m",
    rollout_failed_window="1h",
    queue_length=5,
    overloaded_ratio=0.01,
    overloaded_for="5m",
    error_ratio=0.1,
    min_rate=0.1,
    error_for="5m",
    ttft_p95_seconds=10,
    ttft_for="10m",
    tenant_limited_for="15m",
)

FAST = Profile(
    name="fast",
    interval="1s",
    window="10s",
    # A demo's few seconds cannot hold the evidence production asks for: fewer failures
    # and expected failures, the same comparison with stable; the simulator's first tokens
    # come in well under a second, so its SLO is 1 s.
    decisions=dataclasses.replace(DEFAULT_DECISIONS, min_failures=3, min_expected_failures=0.1,
                                  max_failure_ratio=0.1, worse_margin=0.05, ttft_slo=1.0),
    canary_error_for="2s",
    latency_for="3s",
    quality_for="3s",
    rollback_keep_firing_for="30s",
    # Prometheus starts scraping up to 5 s after it starts (target updates are batched
    # every 5 s), so absent(up{…}) holds that long on a fresh start: stay above it.
    down_for="10s",
    spill_for="3s",
    gpu_memory_ratio=0.95,
    gpu_memory_for="3s",
    gpu_temperature_celsius=85,
    gpu_hot_for="3s",
    gpu_unreadable_for="3s",
    nvml_stale_for="3s",
    gpu_xid_window="1m",
    gpu_throttled_for="3s",
    exporter_window="20s",  # the fast config scrapes the exporter every 5 s
    upstream_down_for="3s",
    fleet_saturated_for="3s",
    cold_loads_per_minute=2,
    cold_loads_for="3s",
    rollout_stalled_for="2s",
    rollout_failed_window="1m",
    queue_length=5,
    overloaded_ratio=0.01,
    overloaded_for="3s",
    error_ratio=0.2,
    min_rate=0.2,
    error_for="3s",
    ttft_p95_seconds=2,
    ttft_for="3s",
    tenant_limited_for="20s",  # twice the 10 s window: a few seconds of refusals stay silent
)


# --- the config ----------------------------------------------------------------------------

_UID = re.compile(r"[A-Za-z0-9_-]{1,40}")  # Grafana's limit is 40 characters
_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


@dataclass(frozen=True)
class DashboardUids:
    """Stable dashboard uids. Alert annotations link to these (``/d/<uid>``), so a uid
    never changes once shipped (Grafana allows 40 characters)."""

    overview: str = "ollama-sidecar-overview"
    rollout: str = "ollama-sidecar-rollout"
    gpus: str = "ollama-sidecar-gpus"
    sessions: str = "ollama-sidecar-sessions"
    tenants: str = "ollama-sidecar-tenants"

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class MonitoringConfig:
    """What dashboards and rules are rendered for. :data:`DEFAULT` renders the committed
    ``provisioning/`` files; :func:`with_overrides` makes another for a user's setup."""

    # Scrape job names, as in prometheus.yml. Every proxy and exporter series a dashboard
    # or rule reads is selected on its job.
    proxy_job: str = "ollama-proxy"
    exporter_job: str = "ollama-exporter"
    # The Grafana datasource uid the dashboards default to (pinned in the provisioned
    # datasource: an unpinned one changes uid on every fresh Grafana volume).
    datasource_uid: str = "ollama-sidecar-prometheus"
    dashboard_uids: DashboardUids = field(default_factory=DashboardUids)
    refresh: str = "30s"  # dashboards' auto-refresh
    # Where every alert's runbook_url points (the anchor is the alert name in lower case).
    runbook_base: str = "https://github.com/ollama-sidecar/ollama-sidecar/blob/main/docs/runbooks.md"
    # Rule profiles by name; each becomes one rule file.
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: {p.name: p for p in (PRODUCTION, FAST)})
    # The profile whose thresholds the dashboards draw as lines.
    dashboard_profile: str = "production"

    def __post_init__(self) -> None:
        # A required selector fails loudly when missing: an empty job name would select
        # every job's series (or none) without anyone noticing.
        for name in ("proxy_job", "exporter_job", "datasource_uid", "refresh", "runbook_base"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"monitoring config: {name} must be a non-empty string")
        if self.proxy_job == self.exporter_job:
            raise ValueError("monitoring config: proxy_job and exporter_job must differ")
        for name, uid in zip((f.name for f in fields(DashboardUids)), self.dashboard_uids.all):
            if not _UID.fullmatch(uid):
                raise ValueError(f"monitoring config: dashboard_uids.{name} must be 1-40 letters, "
                                 f"digits, '-' or '_', got {uid!r}")
        if self.dashboard_profile not in self.profiles:
            raise ValueError(f"monitoring config: dashboard_profile {self.dashboard_profile!r} is not "
                             f"one of {sorted(self.profiles)}")

    @property
    def proxy_selector(self) -> str:
        """The matcher every proxy series is selected with."""
        return f'job="{_escape(self.proxy_job)}"'

    @property
    def exporter_selector(self) -> str:
        """The matcher every exporter series is selected with."""
        return f'job="{_escape(self.exporter_job)}"'

    @property
    def thresholds(self) -> Profile:
        """The profile the dashboards draw thresholds from."""
        return self.profiles[self.dashboard_profile]


DEFAULT = MonitoringConfig()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --- overrides -----------------------------------------------------------------------------

def with_overrides(overrides: Mapping[str, Any], base: MonitoringConfig = DEFAULT) -> MonitoringConfig:
    """``base`` with the keys of ``overrides`` (a mapping as read from YAML) replaced.

    Accepted keys: ``proxy_job``, ``exporter_job``, ``datasource_uid``, ``refresh``,
    ``runbook_base``, ``dashboard_profile``, ``dashboard_uids`` (a mapping of overview,
    rollout, gpus, sessions), ``profiles`` (a mapping of profile name -> the
    :class:`Profile` fields to change; ``decisions`` is a mapping in the proxy config's
    vocabulary) and ``decisions`` (the production profile's decisions, as the proxy config's
    ``decisions:`` section, which ``generate --config`` passes here). Every error names its key.
    """
    if not isinstance(overrides, Mapping):
        raise ValueError("overrides: expected a mapping of keys to values")
    simple = {"proxy_job", "exporter_job", "datasource_uid", "refresh", "runbook_base", "dashboard_profile"}
    known = simple | {"dashboard_uids", "profiles", "decisions"}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"overrides: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if key in simple:
            changes[key] = _string(value, key)
        elif key == "dashboard_uids":
            changes[key] = _replace(base.dashboard_uids, value, key, lambda v, where, _: _string(v, where))
        elif key == "profiles":
            changes[key] = _profiles(changes.get("profiles", base.profiles), value)
    if "decisions" in overrides:
        profiles = dict(changes.get("profiles", base.profiles))
        production = profiles[PRODUCTION.name]
        profiles[PRODUCTION.name] = dataclasses.replace(
            production, decisions=_decisions(overrides["decisions"], production.decisions, "decisions"))
        changes["profiles"] = profiles
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise ValueError(str(exc).replace("monitoring config:", "overrides:")) from None


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"overrides: {where} must be a non-empty string, got {value!r}")
    return value


def _profiles(base: Mapping[str, Profile], value: Any) -> dict[str, Profile]:
    if not isinstance(value, Mapping):
        raise ValueError("overrides: profiles must be a mapping of profile name to fields")
    out = dict(base)
    for name, changes in value.items():
        if name not in base:
            raise ValueError(f"overrides: profiles.{name}: no such profile (known: {', '.join(sorted(base))})")
        out[name] = _replace(base[name], changes, f"profiles.{name}", _profile_field)
    return out


def _decisions(value: Any, current: DecisionSettings, where: str) -> DecisionSettings:
    try:
        settings = parse_decisions(value, current)
        check_ttft_slo(settings, TIME_TO_FIRST_TOKEN.buckets)
    except DecisionSettingsError as exc:
        key = where if exc.key == "decisions" else f"{where}.{exc.key}"
        raise ValueError(f"overrides: {key}: {exc.message}") from None
    return settings


def _profile_field(value: Any, where: str, current: Any) -> Any:
    if isinstance(current, DecisionSettings):
        return _decisions(value, current, where)
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"overrides: {where} must be a number >= 0, got {value!r}")
        return float(value)
    if value is None and where.endswith(".interval"):
        return None  # leave the evaluation interval to prometheus.yml
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise ValueError(f"overrides: {where} must be a Prometheus duration such as 30s or 5m, got {value!r}")
    return value


def _replace(obj: Any, changes: Any, where: str, convert) -> Any:
    if not isinstance(changes, Mapping):
        raise ValueError(f"overrides: {where} must be a mapping")
    names = {f.name for f in fields(obj)} - {"name"}
    out = {}
    for key, value in changes.items():
        if key not in names:
            raise ValueError(f"overrides: unknown key {where}.{key} (known: {', '.join(sorted(names))})")
        out[key] = convert(value, f"{where}.{key}", getattr(obj, key))
    return dataclasses.replace(obj, **out)
