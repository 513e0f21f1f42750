"""Tenants: who sends the traffic, who uses the GPU, and who is refused by a limit.

A tenant is a team with its own API keys (``auth.tenants``; ``auth.api_keys`` is the tenant
``default``). Its limits (requests_per_minute, tokens_per_minute, tokens_per_day,
concurrent) are enforced by the proxy, which refuses a request over one with 429 and
Retry-After before anything reaches Ollama.

Several replicas are one Prometheus target each: the tenant counters are summed over them;
the use gauges already hold every replica's figure when the replicas share Redis, so they
are taken as their ``max`` per tenant and limit, never summed (the limit gauges, one config
seen by every replica, likewise).

Variables: ``instance`` (the proxy's replicas) and ``tenant``; the tenant series have no
route, and the model is shown as a legend rather than a variable. The GPU share's
denominator is every tenant's GPU time, whatever ``tenant`` selects: a share of the whole.
"""

from __future__ import annotations

from grafanalib import core as g

from dashboards import common as c
from proxy import metrics as pm
from proxy.monitoring import DEFAULT, MonitoringConfig

REQ = pm.TENANT_REQUESTS.name
TOKENS = pm.TENANT_TOKENS.name
GPU = pm.TENANT_GPU_SECONDS.name
LIMITED = pm.TENANT_LIMITED.name
LIMIT = pm.TENANT_LIMIT.name
USAGE = pm.TENANT_USAGE.name

REFUSED = pm.ErrorType.RATE_LIMITED.value
SUCCESS = pm.ErrorType.NONE.value
NO_ERRORS = "no errors"

# Use against a limit: 80 % is close, 100 % is refused.
LIMIT_STEPS = c.thresholds(("green", None), ("orange", 0.8), ("red", 1))
SHARE_STEPS = c.thresholds(("blue", None))
WHAT_USE_IS = ("requests_per_minute: requests in the last 60 s; tokens_per_minute: tokens in the last 60 s; "
               "tokens_per_day: tokens since 00:00 UTC; concurrent: requests in flight. Every replica's use "
               "together when the replicas share Redis (the highest any replica reports).")
GPU_TIME = ("GPU time is what Ollama reports for each request: model load + prompt evaluation + generation. "
            "Requests that share a GPU in parallel slots each count their own time, so the sum can exceed the "
            "number of GPUs; compare tenants with it, not GPUs.")


def tenant_variable(config: MonitoringConfig) -> g.Template:
    """Tenants that sent requests (refused ones included) to the selected replicas."""
    s = c.Selectors(config)
    return c.query_variable("tenant", "Tenant", f"label_values({REQ}{{{s.proxy_instance}}}, tenant)")


def use_against_limits(config: MonitoringConfig) -> str:
    """Each tenant's use against each configured limit, 0-1 (above 1: over it)."""
    T = f'{c.Selectors(config).proxy_instance}, tenant=~"$tenant"'
    return f"max by (tenant, limit) ({USAGE}{{{T}}})\n/ max by (tenant, limit) ({LIMIT}{{{T}}})"


def gpu_share(config: MonitoringConfig, over_range: bool) -> str:
    """The selected tenants' GPU time over every tenant's: over the range, or now."""
    s = c.Selectors(config)
    T = f'{s.proxy_instance}, tenant=~"$tenant"'
    if over_range:
        return (f"{c.in_range(GPU, T, 'tenant')}\n/ on () group_left\n"
                f"{c.in_range(GPU, s.proxy_instance)}")
    return (f"{c.rate(GPU, T, 'tenant')}\n/ on () group_left\n"
            f"{c.rate(GPU, s.proxy_instance)}")


def who_used_the_gpu(config: MonitoringConfig) -> list[tuple[str, str]]:
    """The range table's columns: one row per tenant, 0 where a tenant has none of a column
    (only refused, no tokens yet, no limit configured)."""
    T = f'{c.Selectors(config).proxy_instance}, tenant=~"$tenant"'
    every = c.in_range(REQ, T, "tenant")

    def or_zero(expr: str) -> str:
        return f"{expr}\nor on (tenant) 0 * {every}"

    return [
        (or_zero(c.in_range(REQ, f'{T}, error_type!="{REFUSED}"', "tenant")), "Requests served"),
        (or_zero(c.in_range(TOKENS, f'{T}, kind="prompt"', "tenant")), "Prompt tokens"),
        (or_zero(c.in_range(TOKENS, f'{T}, kind="completion"', "tenant")), "Completion tokens"),
        (or_zero(c.in_range(GPU, T, "tenant")), "GPU seconds"),
        (or_zero(gpu_share(config, over_range=True)), "GPU share"),
        (or_zero(c.in_range(LIMITED, T, "tenant")), "Refused"),
    ]


def build(config: MonitoringConfig = DEFAULT) -> g.Dashboard:
    s = c.Selectors(config)
    T = f'{s.proxy_instance}, tenant=~"$tenant"'
    admitted = f'{T}, error_type!="{REFUSED}"'
    failed = f'{T}, error_type!~"{SUCCESS}|{REFUSED}"'
    lay = c.Layout()
    lay.row(
        "Limits: who is refused, who is close",
        (c.bar_gauge("Use against each limit now", (use_against_limits(config), "{{tenant}} {{limit}}"),
                     "percentunit", LIMIT_STEPS,
                     description="Each tenant's use against each of its configured limits (auth.tenants.<tenant>."
                                 "limits). Orange from 80 %; red at 100 %: its next request is refused with 429 "
                                 "and Retry-After (over a token limit, from the next request on: a reply in "
                                 f"flight is never cut, so tokens can pass 100 %). {WHAT_USE_IS} Limits not set "
                                 "have no bar."), 8),
        (c.timeseries("Refused requests/s by tenant and limit",
                      (c.rate(LIMITED, T, "tenant, limit"), "{{tenant}} {{limit}}"), "reqps",
                      description="Requests the proxy answered 429 (error_type rate_limited) because a tenant "
                                  "limit was reached; none of them reached Ollama and no other tenant is "
                                  "affected. A line for every configured limit, 0 while nothing is refused. "
                                  "Sustained refusals fire OllamaTenantAtLimit."), 8),
        (c.timeseries("Use against each limit over time", (use_against_limits(config), "{{tenant}} {{limit}}"),
                      "percentunit", steps=LIMIT_STEPS, threshold_lines=True,
                      description=f"Since when a tenant is close to (80 %) or at (100 %) a limit. {WHAT_USE_IS}"),
         8),
        height=9,
    )
    lay.row(
        "Traffic and errors",
        (c.timeseries("Requests/s per tenant", (c.rate(REQ, T, "tenant"), "{{tenant}}"), "reqps",
                      stacked=True,
                      description="Generation and embedding requests of each tenant, refused ones included: "
                                  "what its clients ask for. Requests without a valid key (401) belong to no "
                                  "tenant."), 8),
        (c.timeseries("Requests/s per tenant and model", (c.rate(REQ, admitted, "tenant, model"),
                                                         "{{tenant}} {{model}}"), "reqps",
                      description="Requests the proxy admitted (sent to Ollama or failed there), by the model "
                                  "that served them."), 8),
        (c.timeseries(
            "Error ratio per tenant",
            (f"(\n  {c.rate(REQ, failed, 'tenant, error_type')}\n"
             # A tenant with no failure: one 0 line that says so, not "No data".
             f'  or on (tenant) label_replace(0 * {c.rate(REQ, admitted, "tenant")}, "error_type", '
             f'"{NO_ERRORS}", "", "")\n)\n'
             f"/ ignoring (error_type) group_left\n{c.rate(REQ, admitted, 'tenant')}",
             "{{tenant}} {{error_type}}"), "percentunit",
            description="Share of each tenant's admitted requests that ended with each error_type (its own "
                        "mistakes too: bad_request, model_not_found, client_disconnect). Refusals by a limit "
                        f"are not errors here: see \"Refused requests/s\". '{NO_ERRORS}' at 0 for a tenant "
                        "whose requests all succeeded."), 8),
    )
    lay.row(
        "Tokens and GPU time",
        (c.timeseries("Tokens/s per tenant, prompt and completion",
                      (c.rate(TOKENS, T, "tenant, kind"), "{{tenant}} {{kind}}"), "suffix: tok/s",
                      description="As Ollama reported them: prompt = input tokens processed, completion = "
                                  "generated. What tokens_per_minute and tokens_per_day count."), 8),
        (c.timeseries("GPU time per tenant (GPUs busy)", (c.rate(GPU, T, "tenant"), "{{tenant}}"), "short",
                      stacked=True,
                      description="GPU-seconds per second: 1 is one GPU kept busy all the time. " + GPU_TIME), 8),
        (c.timeseries("Share of GPU time per tenant", (gpu_share(config, over_range=False), "{{tenant}}"),
                      "percentunit", stacked=True, max_=1,
                      description="Each tenant's GPU time over every tenant's (all tenants, whatever Tenant "
                                  "selects): 100 % stacked when every tenant is selected. " + GPU_TIME), 8),
    )
    lay.row(
        "Who used the GPU in the dashboard range",
        (c.bar_gauge("Share of GPU time in range", (gpu_share(config, over_range=True), "{{tenant}}"),
                     "percentunit", SHARE_STEPS,
                     description="Each tenant's GPU time over every tenant's, over the dashboard's time range. "
                                 + GPU_TIME), 6),
        (c.table("Who used the GPU", who_used_the_gpu(config), "short", sort_by="GPU seconds",
                 units={"GPU seconds": "s", "GPU share": "percentunit"},
                 description="Per tenant over the dashboard's time range: requests served (refusals apart), "
                             "tokens, GPU time and its share of every tenant's, and requests refused by a "
                             "limit. " + GPU_TIME), 12),
        (c.table("Configured limits and use now",
                 [(f"max by (tenant, limit) ({LIMIT}{{{T}}})", "Limit"),
                  (f"max by (tenant, limit) ({USAGE}{{{T}}})", "Use now")], "short",
                 description="auth.tenants.<tenant>.limits as the proxy runs them (a reload changes them), and "
                             f"use against each now. {WHAT_USE_IS}"), 6),
        height=10,
    )
    return c.dashboard(
        config, config.dashboard_uids.tenants, "Ollama sidecar / Tenants",
        "Per tenant (auth.tenants): use against each limit and the requests refused by it, requests, errors, "
        "tokens and GPU time, each tenant's share of the GPU, and who used the GPU over the range.",
        lay, c.variables(config, c.proxy_instance_variable(config), tenant_variable(config)),
    )
