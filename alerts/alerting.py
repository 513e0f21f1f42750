"""Alert rules. Each says what is wrong, links its runbook section and the dashboard to open.

Only the canary alerts (:data:`ROLLBACK_ALERTS`) carry ``action="rollback"``: the proxy's
Alertmanager webhook rolls a route back when one of them fires. Every other alert is for
humans, including :data:`ROUTE_ROLLED_BACK`, which says that automation acted, the
replica alerts (a replica without Redis, a rollout lease held by none or by several) and
:data:`TENANT_AT_LIMIT` (a tenant refused by its limits for a while).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from alerts import recording as r
from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import DEFAULT, DashboardUids, MonitoringConfig, Profile

# One base for every runbook link (MonitoringConfig.runbook_base); the anchor is the alert
# name in lower case, which is what GitHub generates for a heading that is exactly the
# alert name. Dashboard links are Grafana paths (relative to Grafana's root URL, which only
# the deployment knows); Grafana resolves /d/<uid> without the slug.
RUNBOOK_BASE = DEFAULT.runbook_base

CANARY_ERROR_RATE_HIGH = "OllamaCanaryErrorRateHigh"
CANARY_LATENCY_REGRESSION = "OllamaCanaryLatencyRegression"
CANARY_QUALITY_REGRESSION = "OllamaCanaryQualityRegression"
OLLAMA_DOWN = "OllamaDown"
PROXY_DOWN = "OllamaProxyDown"
EXPORTER_DOWN = "OllamaExporterDown"
MODEL_SPILLED = "OllamaModelSpilledToCPU"
GPU_MEMORY_NEARLY_FULL = "OllamaGPUMemoryNearlyFull"
GPU_HOT = "OllamaGPUHot"
PROXY_OVERLOADED = "OllamaProxyOverloaded"
HIGH_ERROR_RATE = "OllamaHighErrorRate"
SLOW_TTFT = "OllamaSlowTimeToFirstToken"
ROUTE_ROLLED_BACK = "OllamaRouteRolledBack"
GPU_UNREADABLE = "OllamaGPUUnreadable"
NVML_STALE = "OllamaNVMLStale"
GPU_XID_ERRORS = "OllamaGPUXidErrors"
GPU_THROTTLED = "OllamaGPUThrottled"
UPSTREAM_DOWN = "OllamaUpstreamDown"
FLEET_SATURATED = "OllamaFleetSaturated"
COLD_LOADS_FREQUENT = "OllamaColdLoadsFrequent"
ROLLOUT_STALLED = "OllamaRolloutStalled"
ROLLOUT_FAILED = "OllamaRolloutFailed"
STATE_BACKEND_DOWN = "OllamaStateBackendDown"
ROLLOUT_LEADER_MISSING = "OllamaRolloutLeaderMissing"
ROLLOUT_LEADER_SPLIT = "OllamaRolloutLeaderSplit"
TENANT_AT_LIMIT = "OllamaTenantAtLimit"

# Clock-event reasons that mean heat or hardware holds the clocks down (not the power cap a
# busy GPU sits at, nor idle).
THROTTLE_REASONS_RE = "hw_slowdown|hw_thermal_slowdown|hw_power_brake_slowdown|sw_thermal_slowdown"

ROLLBACK_ALERTS = (CANARY_ERROR_RATE_HIGH, CANARY_LATENCY_REGRESSION, CANARY_QUALITY_REGRESSION)


@dataclass(frozen=True)
class Alert:
    """One alert rule before it becomes YAML."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard: str
    dashboard_vars: tuple[str, ...] = ()  # alert labels passed on as Grafana variables
    labels: dict[str, str] = field(default_factory=dict)
    runbook_base: str = RUNBOOK_BASE
    keep_firing_for: str = "0s"

    def runbook_url(self) -> str:
        return f"{self.runbook_base}#{self.name.lower()}"

    def dashboard_url(self) -> str:
        query = "&".join(f"var-{v}={{{{ $labels.{v} }}}}" for v in self.dashboard_vars)
        return f"/d/{self.dashboard}" + (f"?{query}" if query else "")

    def rule(self) -> dict:
        rule: dict = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0s":
            rule["for"] = self.for_
        if self.keep_firing_for != "0s":
            rule["keep_firing_for"] = self.keep_firing_for
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": self.runbook_url(),
            "dashboard_url": self.dashboard_url(),
        }
        return rule


def _seconds(duration: str) -> float:
    """Seconds of a Prometheus duration such as ``5m`` or ``10s``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if duration.endswith(unit) and duration[: -len(unit)].replace(".", "", 1).isdigit():
            return float(duration[: -len(unit)]) * units[unit]
    raise ValueError(f"not a simple Prometheus duration: {duration!r}")


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _canary_worse(ratio: str, events: str, trials: str, margin: float, p: Profile) -> str:
    """The canary's ratio (failures, or slow first tokens) is worse than stable's, with
    evidence: enough canary events, enough expected at stable's ratio, and a ratio above
    ``rate_ratio`` x stable's + ``margin``. The form and numbers come from
    bench/decisions_sim.py (docs/decisions.md): a fixed threshold on a 5-minute ratio rolled
    back a healthy canary at low traffic within a day almost surely."""
    d, seconds = p.decisions, _seconds(p.window)
    canary, stable = f'{ratio}{{arm="canary"}}', f'{ratio}{{arm="stable"}}'
    stable_ratio = f"clamp_min({stable}, {d.stable_ratio_floor:g})"
    return (
        f"{canary}\n"
        f'and on (host, route) {events}{{arm="canary"}} * {seconds:g} >= {d.min_failures:g}\n'
        f"and on (host, route) (\n"
        f'    {trials}{{arm="canary"}} * on (host, route) {stable_ratio} * {seconds:g}'
        f" >= {d.min_expected_failures:g}\n"
        f"  and on (host, route) {canary} > on (host, route) {d.rate_ratio:g} * {stable_ratio}"
        f" + {margin:g}\n"
    )


def _canary_error_rate_high(p: Profile, u: DashboardUids) -> Alert:
    d = p.decisions
    canary = f'{r.FAILED_RATIO}{{arm="canary"}}'
    expr = (
        _canary_worse(r.FAILED_RATIO, r.FAILED_RATE, r.REQUESTS_RATE, d.worse_margin, p)
        + f"  or\n"
        f"    {canary} > {d.max_failure_ratio:g}\n"
        f'  unless on (host, route) {r.REQUESTS_RATE}{{arm="stable"}} > 0\n'
        f")"
    )
    return Alert(
        CANARY_ERROR_RATE_HIGH, expr, p.canary_error_for, "critical",
        "Canary of route {{ $labels.route }} fails more than stable",
        "The canary arm of route {{ $labels.route }} failed {{ $value | humanizePercentage }} of its "
        f"requests over {p.window} (server-side errors; at least {d.min_failures:g} failures, more than "
        f"{d.rate_ratio:g}x stable's ratio + {_pct(d.worse_margin)}, or above "
        f"{_pct(d.max_failure_ratio)} when stable has no traffic). The proxy rolls the route back to stable "
        "when Alertmanager delivers this alert.",
        u.rollout, ("route",), {"action": "rollback"}, keep_firing_for=p.rollback_keep_firing_for,
    )


def _canary_latency_regression(p: Profile, u: DashboardUids) -> Alert:
    # Time to first token, not the whole request: a fine-tune that answers at greater
    # length takes longer per request without being any slower, and must not be rolled back.
    # The share of successful, warm requests over the SLO is a proportion, tested as the
    # failure ratio is; comparing p95s read from doubling buckets said "worse" in 18 % of
    # windows for two identical arms at 30 canary requests. With no stable traffic there is
    # nothing to compare with: OllamaSlowTimeToFirstToken tells a human.
    d = p.decisions
    expr = _canary_worse(r.TTFT_OVER_SLO_RATIO, r.TTFT_OVER_SLO_RATE, r.TTFT_RATE, d.ttft_margin, p) + ")"
    return Alert(
        CANARY_LATENCY_REGRESSION, expr, p.latency_for, "warning",
        "Canary of route {{ $labels.route }} is slower than stable",
        "{{ $value | humanizePercentage }} of the successful, warm requests of the canary arm of route "
        f"{{{{ $labels.route }}}} waited more than {d.ttft_slo:g}s for their first token over {p.window}: "
        f"at least {d.min_failures:g} of them, and more than {d.rate_ratio:g}x stable's share + "
        f"{_pct(d.ttft_margin)}. The proxy rolls the route back to stable when Alertmanager delivers this alert.",
        u.rollout, ("route",), {"action": "rollback"}, keep_firing_for=p.rollback_keep_firing_for,
    )


def _canary_quality_regression(p: Profile, u: DashboardUids) -> Alert:
    # A worse model rarely errors: its users ask for the same turn again, or rate it down.
    # Either signal, tested like the failure ratio (the same evidence minimums), rolls back.
    d = p.decisions
    expr = (_canary_worse(r.REGENERATION_RATIO, r.REGENERATIONS_RATE, r.CHAT_RATE, d.quality_margin, p) + ")\n"
            "or\n"
            + _canary_worse(r.NEGATIVE_RATIO, r.NEGATIVE_RATINGS_RATE, r.RATINGS_RATE, d.quality_margin, p) + ")")
    return Alert(
        CANARY_QUALITY_REGRESSION, expr, p.quality_for, "warning",
        "Canary of route {{ $labels.route }} answers worse than stable",
        "Users of the canary arm of route {{ $labels.route }} ask for the same turn again, or rate answers "
        f"down, more than {d.rate_ratio:g}x as often as stable's + {_pct(d.quality_margin)} over {p.window} "
        f"(at least {d.min_failures:g} times; value {{{{ $value | humanizePercentage }}}}), without any HTTP "
        "error. The proxy rolls the route back to stable when Alertmanager delivers this alert.",
        u.rollout, ("route",), {"action": "rollback"}, keep_firing_for=p.rollback_keep_firing_for,
    )


def _target_down(name: str, job: str, selector: str, what: str, p: Profile, u: DashboardUids) -> Alert:
    return Alert(
        name, f"up{{{selector}}} == 0\nor absent(up{{{selector}}})", p.down_for, "critical",
        f"{what} is down or not scraped",
        f'Prometheus cannot scrape job "{job}"{{{{ with $labels.instance }}}} at {{{{ . }}}}'
        "{{ end }}, or has no such target at all.",
        u.overview,
    )


def _duration(seconds: float) -> str:
    """A Prometheus duration for whole seconds, in minutes when they are whole minutes."""
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def _leader_for(p: Profile) -> str:
    """How long the rollout lease may stay unheld, or held twice, before a human hears of it:
    three times a replica's ``down_for``. A leader that dies is replaced within the lease
    (``state.lease``, 10 s by default) and a rolling restart hands the lease on replica by
    replica; neither lasts that long, and a rollout step lasts minutes anyway."""
    return _duration(3 * _seconds(p.down_for))


def _rollout_leaders(proxy: str) -> str:
    """Replicas that hold the rollout lease, per job, counting only the replicas that share
    their state through Redis. Those, and only those, count a ``sync`` from their first
    attempt to reach Redis on; a proxy with a state file leads itself (its gauge is always 1)
    and takes part in no lease, so a job of single proxies on state files (one per host) is
    neither leaderless nor split, and one among Redis replicas cannot hide a missing leader."""
    shared = f'{pm.STATE_BACKEND_OPERATIONS.name}{{{proxy}, operation="sync"}}'
    return f"sum by (job) (\n  {pm.REPLICA_LEADER.name}{{{proxy}}}\n  and on (job, instance) {shared}\n)"


def _replica_alerts(p: Profile, proxy: str, u: DashboardUids) -> list[Alert]:
    """Several replicas sharing their state through Redis (issue 13): a replica that lost
    Redis, and a deployment whose rollout lease nobody, or more than one, holds. Warnings
    for people: none of them is a reason to roll a canary back."""
    leader_for = _leader_for(p)
    leaders = _rollout_leaders(proxy)
    return [
        Alert(
            STATE_BACKEND_DOWN, f"{pm.STATE_BACKEND_UP.name}{{{proxy}}} == 0", p.down_for, "warning",
            "Proxy replica {{ $labels.instance }} has lost the shared state (Redis)",
            f"Replica {{{{ $labels.instance }}}} has not reached the shared state for {p.down_for}: it routes "
            "with the last state it knew, refuses admin changes (503) and applies rollbacks (Alertmanager's, "
            "its breaker's) on itself only, journaled until Redis is back; the other replicas do not see them "
            "meanwhile.",
            u.overview, ("instance",),
        ),
        Alert(
            ROLLOUT_LEADER_MISSING, f"{leaders} == 0", leader_for, "warning",
            "No proxy replica of job {{ $labels.job }} holds the rollout lease",
            f"For {leader_for} none of the replicas that share their state through Redis has held the rollout "
            "lease: progressive rollouts hold their step, and the breaker and the auto-resume probe do not act "
            "on the shared counts. Alertmanager's rollbacks still apply on every replica.",
            u.overview,
        ),
        Alert(
            ROLLOUT_LEADER_SPLIT, f"{leaders} > 1", leader_for, "warning",
            "{{ $value }} proxy replicas of job {{ $labels.job }} hold a rollout lease",
            f"For {leader_for} more than one replica of the job has held a rollout lease. There is one lease per "
            "Redis and state.key_prefix, so these replicas do not share one state: each group routes, rolls out "
            "and trips its breaker on its own, and their routes can differ.",
            u.overview,
        ),
    ]


def _tenant_at_limit(p: Profile, proxy: str, u: DashboardUids) -> Alert:
    """A tenant refused by one of its limits (auth.tenants) again and again: at least one
    refusal in every window for ``tenant_limited_for``. A warning for people: the tenant's
    users get 429 and Retry-After, nothing else suffers, and it may be exactly what the limit
    is for. Refusals are summed over replicas; each configured limit's counter starts at 0, so
    the first refusal counts."""
    return Alert(
        TENANT_AT_LIMIT,
        f"sum by (tenant, limit) (increase({pm.TENANT_LIMITED.name}{{{proxy}}}[{p.window}])) > 0",
        p.tenant_limited_for, "warning",
        "Tenant {{ $labels.tenant }} is refused by its {{ $labels.limit }} limit",
        f"For {p.tenant_limited_for} the proxy has kept refusing requests of tenant {{{{ $labels.tenant }}}} "
        f"(at least one in every {p.window}) because its {{{{ $labels.limit }}}} limit is reached "
        f"(auth.tenants.{{{{ $labels.tenant }}}}.limits.{{{{ $labels.limit }}}}): "
        f'{{{{ $value | printf "%.0f" }}}} refused in the last {p.window}. The tenant\'s users get 429 with '
        "Retry-After and none of these requests reached Ollama; other tenants are unharmed. Raise the limit or "
        "talk to the team (a runaway batch job?).",
        u.tenants, ("tenant",),
    )


def alert_rules(p: Profile, config: MonitoringConfig = DEFAULT) -> list[dict]:
    """Every alert of profile ``p``, sorted by name (stable output). Every proxy and
    exporter series is selected on its scrape job (``config``)."""
    u = config.dashboard_uids
    proxy, exporter = config.proxy_selector, config.exporter_selector
    alerts = [
        _canary_error_rate_high(p, u),
        _canary_latency_regression(p, u),
        _canary_quality_regression(p, u),
        Alert(
            OLLAMA_DOWN, f"{em.OLLAMA_UP.name}{{{exporter}}} == 0", p.down_for, "critical",
            "Ollama does not answer the exporter",
            "The exporter on {{ $labels.instance }} cannot reach Ollama's API.",
            u.overview,
        ),
        _target_down(PROXY_DOWN, config.proxy_job, proxy, "The ollama-sidecar proxy", p, u),
        _target_down(EXPORTER_DOWN, config.exporter_job, exporter, "The ollama-sidecar exporter", p, u),
        Alert(
            # Only where the exporter sees GPUs: on a CPU-only host every model is "spilled".
            MODEL_SPILLED,
            f"{em.OLLAMA_MODEL_VRAM_RATIO.name}{{{exporter}}} < 1\n"
            f"and on (job, instance) (count by (job, instance) ({em.GPU_INFO.name}{{{exporter}}}) > 0)",
            p.spill_for, "warning",
            "Model {{ $labels.model }} spilled to the CPU",
            "Only {{ $value | humanizePercentage }} of model {{ $labels.model }} is in GPU memory; "
            "the rest runs on the CPU, much slower.",
            u.gpus, ("model",),
        ),
        Alert(
            GPU_MEMORY_NEARLY_FULL,
            f"{em.GPU_MEMORY_USED.name}{{{exporter}}} / {em.GPU_MEMORY_TOTAL.name}{{{exporter}}} > {p.gpu_memory_ratio:g}",
            p.gpu_memory_for, "warning",
            "GPU {{ $labels.gpu }} memory nearly full",
            "GPU {{ $labels.gpu }} on {{ $labels.instance }} uses {{ $value | humanizePercentage }} "
            "of its memory; the next model to load will spill to the CPU.",
            u.gpus,
        ),
        Alert(
            GPU_HOT, f"{em.GPU_TEMPERATURE.name}{{{exporter}}} > {p.gpu_temperature_celsius:g}", p.gpu_hot_for,
            "warning",
            "GPU {{ $labels.gpu }} is hot",
            "GPU {{ $labels.gpu }} on {{ $labels.instance }} is at {{ $value }} °C "
            f"(threshold {p.gpu_temperature_celsius:g} °C); it will throttle.",
            u.gpus,
        ),
        Alert(
            PROXY_OVERLOADED,
            f"sum by (job, instance) ({pm.QUEUE_LENGTH.name}{{{proxy}}}) > {p.queue_length:g}\n"
            f"or\nsum by (job, instance) (rate({pm.ROUTE_REQUESTS.name}"
            f'{{{proxy}, error_type="overloaded"}}[{p.window}]))\n'
            f"/ sum by (job, instance) (rate({pm.ROUTE_REQUESTS.name}{{{proxy}}}[{p.window}])) > {p.overloaded_ratio:g}",
            p.overloaded_for, "warning",
            "Proxy {{ $labels.instance }} is saturated",
            f"More than {p.queue_length:g} requests wait for an admission slot, or more than "
            f"{_pct(p.overloaded_ratio)} of requests are rejected as overloaded (value {{{{ $value }}}}).",
            u.overview,
        ),
        Alert(
            HIGH_ERROR_RATE,
            f"{r.ROUTE_FAILED_RATIO} > {p.error_ratio:g}\n"
            f"and on (host, route) {r.ROUTE_REQUESTS_RATE} >= {p.min_rate:g}",
            p.error_for, "critical",
            "Route {{ $labels.route }} fails {{ $value | humanizePercentage }} of requests",
            "Server-side failures (upstream 5xx, timeouts, connection errors, cut streams) are "
            f"{{{{ $value | humanizePercentage }}}} of requests on route {{{{ $labels.route }}}} over "
            f"{p.window}, all arms together (threshold {_pct(p.error_ratio)}).",
            u.overview, ("route",),
        ),
        Alert(
            SLOW_TTFT,
            f"{r.TTFT_P95} > {p.ttft_p95_seconds:g}\nand {r.REQUESTS_RATE} >= {p.min_rate:g}",
            p.ttft_for, "warning",
            "Slow first token on route {{ $labels.route }} ({{ $labels.arm }})",
            "p95 time to first token on route {{ $labels.route }}, arm {{ $labels.arm }}, is "
            f"{{{{ $value | humanizeDuration }}}} over {p.window} (threshold {p.ttft_p95_seconds:g}s).",
            u.rollout, ("route",),
        ),
        Alert(
            GPU_UNREADABLE, f"min by (job, instance, gpu, uuid) ({em.GPU_UP.name}{{{exporter}}}) == 0",
            p.gpu_unreadable_for, "warning",
            "GPU {{ $labels.uuid }} on {{ $labels.instance }} cannot be read by NVML",
            "NVML reads of GPU {{ $labels.uuid }} (NVML index {{ $labels.gpu }}) have failed for "
            f"{p.gpu_unreadable_for} with a real error (not 'not supported'), or the GPU is lost. "
            f"{em.NVML_ERRORS.name} of this uuid names the call and the error.",
            u.gpus,
        ),
        Alert(
            NVML_STALE, f"max by (job, instance) ({em.NVML_STALE.name}{{{exporter}}}) == 1", p.nvml_stale_for,
            "critical",
            "NVML hangs on {{ $labels.instance }}: GPU metrics are missing",
            "NVML reads have not finished within the exporter's deadline for "
            f"{p.nvml_stale_for}: a wedged driver. Ollama's series are still served; the GPU series are not.",
            u.gpus,
        ),
        Alert(
            GPU_XID_ERRORS,
            f"max by (job, instance, gpu, uuid) (increase({em.GPU_XID_ERRORS.name}{{{exporter}}}[{p.gpu_xid_window}])) > 0\n"
            f"or max by (job, instance, gpu, uuid) ({em.GPU_ROW_REMAP_FAILED.name}{{{exporter}}}) == 1",
            "0s", "warning",
            "GPU {{ $labels.uuid }} on {{ $labels.instance }} reported XID errors or a failed row remap",
            f"XID critical errors in the last {p.gpu_xid_window} (the last code is {em.GPU_LAST_XID.name} of this "
            "uuid), or a row remap failed. Hardware XIDs "
            "(48, 63, 64, 74, 79, 92-95) or a failed remap: drain the host and reset the GPU.",
            u.gpus,
        ),
        Alert(
            GPU_THROTTLED,
            f"max by (job, instance, gpu, uuid) ({em.GPU_CLOCK_EVENT_REASON.name}"
            f'{{{exporter}, reason=~"{THROTTLE_REASONS_RE}"}}) == 1',
            p.gpu_throttled_for, "warning",
            "GPU {{ $labels.uuid }} on {{ $labels.instance }} is throttled by heat or hardware",
            f"A thermal, hardware or power-brake clock-event reason has been active for {p.gpu_throttled_for}; "
            "the SM clock is held down and tokens/s drop (the power cap and idle do not fire this).",
            u.gpus,
        ),
        Alert(
            UPSTREAM_DOWN,
            f"max by (upstream) ({pm.UPSTREAM_UP.name}{{{proxy}}}) == 0\n"
            f"and on () count(max by (upstream) ({pm.UPSTREAM_UP.name}{{{proxy}}}) == 1) > 0",
            p.upstream_down_for, "warning",
            "Ollama server {{ $labels.upstream }} is out of the proxy's rotation",
            "The proxy has not sent requests to {{ $labels.upstream }} for " + p.upstream_down_for + ": its health "
            "check (/api/version) fails or traffic ejected it. The other servers serve its share.",
            u.gpus,
        ),
        Alert(
            FLEET_SATURATED,
            # Summed over replicas: each counts only its own requests in flight (exact when
            # their busiest model on the server is the same one, an upper bound otherwise).
            f"min(\n  sum by (upstream) ({pm.UPSTREAM_SATURATION.name}{{{proxy}}})\n"
            f"  and on (upstream) max by (upstream) ({pm.UPSTREAM_UP.name}{{{proxy}}}) == 1\n) >= 1",
            p.fleet_saturated_for, "warning",
            "Every Ollama server is saturated",
            "Every healthy server has as many requests in flight for its busiest model as it has parallel slots, "
            f"for {p.fleet_saturated_for}: new requests wait in Ollama's queues (and get 503 once they are full).",
            u.gpus,
        ),
        Alert(
            COLD_LOADS_FREQUENT,
            f"sum by (upstream) (rate({pm.COLD_LOADS.name}{{{proxy}}}[{p.window}])) * 60 > {p.cold_loads_per_minute:g}",
            p.cold_loads_for, "warning",
            "Ollama server {{ $labels.upstream }} keeps loading models",
            f"More than {p.cold_loads_per_minute:g} requests a minute waited for {{{{ $labels.upstream }}}} to load "
            f"their model, for {p.cold_loads_for}: models are evicted and reloaded (too many models for its memory, "
            "OLLAMA_MAX_LOADED_MODELS or keep_alive too low).",
            u.gpus,
        ),
        Alert(
            ROLLOUT_STALLED, f'max by (route) ({pm.ROLLOUT_PHASE.name}{{{proxy}, phase="stalled"}}) == 1',
            p.rollout_stalled_for, "warning",
            "Rollout on route {{ $labels.route }} is stalled",
            "The progressive rollout on route {{ $labels.route }} needs more canary traffic than it will get "
            "within its stall_after at the current rate: it holds its step. `ollama-sidecar rollout status "
            "{{ $labels.route }}` says what it still needs.",
            u.rollout, ("route",),
        ),
        Alert(
            ROLLOUT_FAILED,
            f'max by (route) ({pm.ROLLOUT_PHASE.name}{{{proxy}, phase="failed"}}) == 1\n'
            f"and on (route) max by (route) (changes({pm.ROLLOUT_PHASE.name}"
            f'{{{proxy}, phase="failed"}}[{p.rollout_failed_window}])) > 0',
            "0s", "warning",
            "Rollout on route {{ $labels.route }} ended in a rollback",
            "The progressive rollout on route {{ $labels.route }} failed in the last "
            f"{p.rollout_failed_window}: its gate, an alert, the breaker or an operator rolled the route back "
            "to stable. `ollama-sidecar rollout status {{ $labels.route }}` shows the check and the numbers.",
            u.rollout, ("route",),
        ),
        Alert(
            ROUTE_ROLLED_BACK, f"max by (route) ({pm.ROUTE_ROLLED_BACK.name}{{{proxy}}}) == 1", "0s",
            "warning",
            "Route {{ $labels.route }} was rolled back to stable",
            "Route {{ $labels.route }} sends all traffic to its stable model (automatic rollback "
            "or an operator) and stays so until 'ollama-sidecar resume {{ $labels.route }}' "
            "(or, with auto_resume, until the rollback alert resolves and the canary passes a probe at a small "
            "weight).",
            u.rollout, ("route",),
        ),
        *_replica_alerts(p, proxy, u),
        _tenant_at_limit(p, proxy, u),
    ]
    return [dataclasses.replace(a, runbook_base=config.runbook_base).rule()
            for a in sorted(alerts, key=lambda a: a.name)]
