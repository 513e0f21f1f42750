"""The proxy's settings: one declaration of every key drives validation and the JSON Schema.

Each key of the YAML file is declared once below (:data:`ROOT` and its sections): its
type, limits, description, default and environment variable (the declaration machinery is
:mod:`proxy.config_spec`). :func:`parse_config` checks
a file against those declarations and turns it into frozen dataclasses before anything
uses it, so a reload either replaces the old config entirely or not at all, and every
error names the key that is wrong (``routes.chat.canary_weight: must be at most 100, got
150``). :func:`config_schema` turns the same declarations into ``docs/config.schema.json``,
which editors use to validate and complete ``ollama-sidecar.yaml``.

Precedence, for every key, resolved by one helper (:func:`proxy.config_spec.resolve`): command-line flag >
environment > config file > default. One exception, on purpose: ``OLLAMA_HOST`` ranks
*below* the file's ``upstream:``. Users export it to point their clients at the proxy (the
README tells them to); if it outranked the file, a proxy started in that shell would
forward to itself. The upstream is therefore ``--upstream`` > ``OLLAMA_SIDECAR_UPSTREAM``
> the file > ``OLLAMA_HOST`` > ``http://127.0.0.1:11434``, and an upstream at the proxy's
own listen address is refused at start-up with a message that says why.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import yaml

from proxy.common.listen import parse_listen
from proxy.config_spec import ConfigError, Inputs, Section, Setting, check_keys, mapping
from proxy.decision_settings import (DEFAULT_DECISIONS, DESCRIPTIONS, DURATIONS, LIMITS, DecisionSettings,
                                     DecisionSettingsError, SequentialSettings, check_ttft_slo, not_a_bucket_bound,
                                     parse_decisions)
from proxy.metrics import TIME_TO_FIRST_TOKEN

__all__ = ["ADMIN_TOKEN_ENV", "DEFAULT_LISTEN", "DEFAULT_SESSION_SOURCES", "Admission", "BreakerConfig",
           "ConfigError", "ProxyConfig", "RouteConfig", "Timeouts", "config_schema", "load_config",
           "parse_config", "render_config_schema"]

DEFAULT_LISTEN = "127.0.0.1:11435"
DEFAULT_SESSION_SOURCES = ("header:X-Session-ID", "header:X-User-ID", "body:user")
ADMIN_TOKEN_ENV = "OLLAMA_SIDECAR_ADMIN_TOKEN"
SESSION_KEY_ENV = "OLLAMA_SIDECAR_SESSION_KEY"
METRICS_TOKEN_ENV = "OLLAMA_SIDECAR_METRICS_TOKEN"
REDIS_PASSWORD_ENV = "OLLAMA_SIDECAR_REDIS_PASSWORD"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 600.0  # a 32B model can take minutes to load
    idle: float = 120.0  # between two reads of a reply, stream or not; streams have no total limit
    shutdown: float = 900.0  # on SIGTERM, how long requests in flight may still run


@dataclass(frozen=True)
class UpstreamServer:
    """One Ollama server of the fleet (proxy.fleet)."""

    name: str
    url: str
    parallel: int = 1  # OLLAMA_NUM_PARALLEL there: slots per loaded model
    dedicated: bool = False  # given as models.M.upstream: serves only the models pinned to it


DEFAULT_SERVER = "default"  # the name of the server given by plain `upstream:`


@dataclass(frozen=True)
class Admission:
    max_in_flight: int = 0  # 0: admission control off
    max_queue: int = 100
    queue_timeout: float = 30.0


@dataclass(frozen=True)
class BreakerConfig:
    """In-process circuit breaker of one route (see proxy.control.breaker)."""

    enabled: bool = False
    window: float = 60.0
    min_requests: int = 20
    failure_ratio: float = 0.2
    stable_margin: float | None = None  # trip only if canary > stable + margin (when set)
    # The sequential test (proxy.control.decisions.CanarySPRT) that must say "worse" first;
    # unset per route, these are `decisions.sequential`'s (one vocabulary, see
    # proxy.decision_settings), whose defaults bench/decisions_sim.py set.
    rate_ratio: float = SequentialSettings.rate_ratio
    alpha: float = SequentialSettings.alpha
    floor: float | None = SequentialSettings.floor


PAUSE = "pause"


@dataclass(frozen=True)
class RolloutCheck:
    """One check of a rollout: the canary's ratio against ``max`` (absolute, broken only
    with significance) and against stable's (``max_over_stable``: the non-inferiority margin
    of the last move, to 100 %). ``slo`` is the TTFT check's threshold in seconds."""

    max: float | None = None
    max_over_stable: float = 0.02
    slo: float | None = None


@dataclass(frozen=True)
class RolloutConfig:
    """A route's progressive rollout (proxy.control.rollout)."""

    steps: tuple[float | str, ...] = (1.0, 5.0, 20.0, 50.0)  # percent; PAUSE waits; 100 is always last
    interval: float = 300.0
    min_requests: int = 100
    failure_ratio: RolloutCheck = field(default_factory=lambda: RolloutCheck(max=0.03, max_over_stable=0.02))
    ttft_over_slo: RolloutCheck | None = None
    # Quality (proxy.quality): regenerated turns per chat request, negative ratings per rating.
    regeneration_ratio: RolloutCheck | None = None
    negative_feedback: RolloutCheck | None = None
    on_complete: str = "promote"  # or "hold": stay at 100 % until `rollout promote`
    stall_after: float = 3600.0  # stalled when the evidence still needed would take longer at today's rate
    analysis_prometheus: str | None = None  # counts from Prometheus (every replica) instead of this proxy's

    def plan(self) -> list[tuple[float, bool]]:
        """(weight, pause before it) for every step, 100 last."""
        out: list[tuple[float, bool]] = []
        pause = False
        for step in self.steps:
            if step == PAUSE:
                pause = True
                continue
            out.append((float(step), pause))
            pause = False
        if not out or out[-1][0] != 100.0:
            out.append((100.0, pause))
        elif pause:
            out[-1] = (100.0, True)
        return out


@dataclass(frozen=True)
class RouteConfig:
    stable: str
    canary: str | None = None
    canary_weight: float = 0.0
    auto_resume: bool = False
    session_sources: tuple[str, ...] | None = None  # None: those of the session label
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    rollout: RolloutConfig | None = None


@dataclass(frozen=True)
class TenantLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    concurrent: int | None = None


@dataclass(frozen=True)
class TenantConfig:
    """A tenant: its name (a label value), the SHA-256 digests of its keys, its limits."""

    name: str
    digests: frozenset[bytes] = field(repr=False)
    limits: TenantLimits = field(default_factory=TenantLimits)


@dataclass(frozen=True)
class SharedStateConfig:
    """``state:``: the Redis that replicas share their routing state through (proxy.replicas)."""

    url: str  # redis:// or rediss://, with the password (if any) removed: safe to show
    password: str | None = field(default=None, repr=False)
    key_prefix: str = "ollama-sidecar:"
    journal: str | None = None  # webhook rollbacks made while Redis is down, replayed when it is back
    import_from: str | None = None  # a state_file imported once, when Redis holds no state yet
    lease: float = 10.0  # the rollout leader's lease; another replica takes over within it
    sync_interval: float = 0.5  # counts and request ids flushed; a full read every 10 of these
    connect_timeout: float = 1.0


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = DEFAULT_LISTEN
    upstream: str = "http://127.0.0.1:11434"
    model_upstreams: Mapping[str, str] = field(default_factory=dict)  # models.M.upstream: URL (compat)
    # The fleet: every Ollama server by name, and the models pinned to some of them. Plain
    # `upstream:` is a fleet of one named "default"; models.M.upstream: URL adds a server
    # named after its host and port and pins M to it.
    servers: Mapping[str, UpstreamServer] = field(default_factory=dict)
    model_pins: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    discovery_interval: float = 10.0
    health_interval: float = 5.0
    health_timeout: float = 2.0
    retries: int = 1
    session_active_window: float = 300.0
    session_tracking_cap: int = 100_000
    feedback_ttl: float = 3600.0
    feedback_cap: int = 100_000
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    state_file: str | None = None
    shared_state: SharedStateConfig | None = None  # `state:` (Redis); None: state_file or memory only
    session_sources: tuple[str, ...] = DEFAULT_SESSION_SOURCES
    session_label_cap: int = 200
    session_label_ttl: float = 900.0
    session_label: str = "hash"  # hash: a keyed hash of the id; raw: the id itself
    session_key: str | None = field(default=None, repr=False)  # None: persisted beside state_file
    model_label_cap: int = 100
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_bytes: int = 32 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_parsed_reply_bytes: int = 16 * 1024 * 1024  # longer non-stream replies are relayed unchecked
    max_header_bytes: int = 64 * 1024
    admission: Admission = field(default_factory=Admission)
    admin_token: str | None = field(default=None, repr=False)
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)  # none: no key is asked for
    alertmanager_url: str | None = None
    reconcile_interval: float = 15.0
    reconcile_grace: float = 10.0  # leave an alert this long to its webhook before acting on it
    reload_interval: float = 2.0
    access_log: bool = True
    metrics_token: str | None = field(default=None, repr=False)
    metrics_listen: str | None = None  # /metrics on its own address (and only there)
    decisions: DecisionSettings = DEFAULT_DECISIONS
    notify_url: str | None = None  # rollout notifications: one JSON POST per phase or step change
    notify_timeout: float = 5.0
    rollout_tick: float = 1.0  # seconds between two analyses of running rollouts
    config_path: str | None = None

    def upstream_for(self, model: str) -> str:
        """The URL of the first server ``model`` is pinned to, else of the first server."""
        pins = self.model_pins.get(model)
        if pins:
            return self.servers[pins[0]].url
        return next(iter(self.servers.values())).url if self.servers else self.upstream


# --- every key of the file, declared once (defaults come from the dataclasses above) ----------

BREAKER = Section("breaker", "The route's own circuit breaker: rolls the route back, without Prometheus, "
                  "when a sequential test on the stream of failures says the canary fails more than stable "
                  "and its failure ratio over the window is too high.", (
    Setting("enabled", "boolean", "Whether the breaker acts; true as soon as any breaker setting is given.",
            default=True),
    Setting("window", "duration", "Seconds of requests the failure ratio is computed over.", minimum=1),
    Setting("min_requests", "integer", "Fewest canary requests in the window for a verdict; fewer is "
            "inconclusive, never a failure.", minimum=1),
    Setting("failure_ratio", "number", "Canary failure ratio (0 to 1) at or above which the breaker trips.",
            minimum=0, maximum=1),
    Setting("stable_margin", "number", "When set, trip only if the canary's ratio also exceeds stable's "
            "by more than this.", minimum=0, maximum=1, nullable=True),
    Setting("rate_ratio", "number", "The least effect worth a rollback: the sequential test looks for a "
            "canary failing this many times as often as stable.", minimum=1.01),
    Setting("alpha", "number", "The sequential test's false-alarm level (with no floor, the chance a healthy "
            "canary is ever tripped).", minimum=1e-9, maximum=0.5),
    Setting("floor", "number", "Lowest value of the test's log-likelihood ratio, so a long healthy history "
            "cannot hide a canary that breaks later (a CUSUM); null for Wald's plain test.", maximum=0,
            nullable=True),
), model=BreakerConfig)

FAILURE_CHECK = Section("failure_ratio", "Server-side failures (a routed canary's 404, its model missing, is one).", (
    Setting("max", "number", "The canary's failure ratio that rolls it back on its own, once exceeded with "
            "significance.", minimum=0, maximum=1, nullable=True),
    Setting("max_over_stable", "number", "Non-inferiority margin: the last move, to 100 %, needs the upper limit "
            "of canary - stable below this.", minimum=1e-6, maximum=1),
), model=RolloutCheck)

TTFT_CHECK = Section("ttft_over_slo", "Share of successful, warm requests whose time to first token exceeds slo.", (
    Setting("slo", "duration", "Time to first token over which a request is slow; a bucket bound of the TTFT "
            "histogram (default: decisions.ttft_slo).", minimum=0.001, nullable=True),
    Setting("max", "number", "Share of slow requests that rolls the canary back on its own, once exceeded with "
            "significance.", minimum=0, maximum=1, nullable=True),
    Setting("max_over_stable", "number", "Non-inferiority margin of the share, for the last move.", minimum=1e-6,
            maximum=1),
), model=RolloutCheck)

def _share_check(name: str, doc: str) -> Section:
    """A rollout check on a share (quality signals): an absolute limit and a margin."""
    return Section(name, doc, (
        Setting("max", "number", "Share that rolls the canary back on its own, once exceeded with significance.",
                minimum=0, maximum=1, nullable=True),
        Setting("max_over_stable", "number", "Non-inferiority margin, for the last move.", minimum=1e-6, maximum=1),
    ), model=RolloutCheck)


REGENERATION_CHECK = _share_check("regeneration_ratio", "Chat requests that asked for the same turn again (the user "
                                  "did not like the answer), per chat request.")
NEGATIVE_FEEDBACK_CHECK = _share_check("negative_feedback", "Negative ratings (/api/feedback, /v1/feedback) per "
                                       "rating.")

CHECKS = Section("checks", "What each step is judged on; without `checks`, the failure ratio with its defaults.", (
    Setting("failure_ratio", "section", "", section=FAILURE_CHECK),
    Setting("ttft_over_slo", "section", "", section=TTFT_CHECK),
    Setting("regeneration_ratio", "section", "", section=REGENERATION_CHECK),
    Setting("negative_feedback", "section", "", section=NEGATIVE_FEEDBACK_CHECK),
))

ANALYSIS = Section("analysis", "Where the rollout's counts come from: this proxy's own (the default), or "
                   "Prometheus, which sees every replica.", (
    Setting("prometheus", "base_url", "Prometheus base URL; an unreachable Prometheus holds the rollout.",
            nullable=True),
))

ROLLOUT = Section("rollout", "A progressive rollout (`ollama-sidecar rollout start ROUTE`): the canary's weight "
                  "steps up while it stays healthy and rolls back the moment it is not.", (
    Setting("steps", "steps", "Percent of sessions at each step, rising; `pause` waits for `rollout resume`; 100 "
            "is always the last step."),
    Setting("interval", "duration", "Least time at each step.", minimum=0.1),
    Setting("min_requests", "integer", "Least canary requests at each step.", minimum=1),
    Setting("checks", "section", "", section=CHECKS),
    Setting("on_complete", "choice", "At 100 %: `promote` the canary, or `hold` until `rollout promote`.",
            choices=("promote", "hold")),
    Setting("stall_after", "duration", "A rollout is stalled when the evidence it still needs would take longer "
            "than this at the current canary rate.", minimum=1),
    Setting("analysis", "section", "", section=ANALYSIS),
), model=RolloutConfig)

ROUTE = Section("route", "A route alias: clients ask for it by name (\"model\": \"chat\") and each session "
                "keeps its arm, stable or canary.", (
    Setting("stable", "string", "The model that serves the route.", required="the model that serves the route"),
    Setting("canary", "string", "The model under test; none: every request goes to stable.", nullable=True),
    Setting("canary_weight", "number", "Percent of sessions sent to the canary, decimals allowed; above 0 "
            "needs a canary.", minimum=0, maximum=100),
    Setting("auto_resume", "boolean", "Whether a resolved rollback alert sends traffic back to the canary by "
            "itself (else `ollama-sidecar resume`)."),
    Setting("session_sources", "session_sources", "This route's session sources, first match wins "
            "(`header:NAME` or `body:FIELD`); default: those of the session label.", nullable=True),
    Setting("breaker", "section", "", section=BREAKER),
    Setting("rollout", "section", "", section=ROLLOUT),
), model=RouteConfig, nullable=False,
    needs=(("canary_weight", "canary", "is above 0 but the route has no canary model"),))

MODEL = Section("model", "Where one model is served, when not by every server that has it.", (
    Setting("upstream", "ollama_url", "This model's Ollama, written like OLLAMA_HOST (a server of its own, named "
            "after its host and port). Must not be the proxy's own listen address.", nullable=True),
    Setting("upstreams", "strings", "Names (under `upstreams`) of the only servers that may serve this model."),
))

UPSTREAM = Section("upstream", "One Ollama server of the fleet.", (
    Setting("url", "ollama_url", "Its address, written like OLLAMA_HOST.", required="the server's address"),
    Setting("parallel", "integer", "OLLAMA_NUM_PARALLEL on that server: requests one loaded model serves at once "
            "(embedding models: always 1).", minimum=1),
), model=UpstreamServer, nullable=False)

TIMEOUTS = Section("timeouts", "Durations: seconds, or e.g. 30s, 5m.", (
    Setting("connect", "duration", "Connecting to Ollama.", minimum=0.001),
    Setting("first_byte", "duration", "Until Ollama's first byte (a large model can take minutes to load).",
            minimum=0.001),
    Setting("idle", "duration", "Longest gap between two reads of a reply, stream or not; streams have no "
            "total limit.", minimum=0.001),
    Setting("shutdown", "duration", "On SIGTERM, how long requests in flight may still run.", minimum=0.001),
), model=Timeouts)

ADMISSION = Section("admission", "At most max_in_flight requests upstream, a bounded queue behind (503 beyond).", (
    Setting("max_in_flight", "integer", "Requests forwarded at once; 0 turns admission control off.", minimum=0),
    Setting("max_queue", "integer", "Requests waiting for a slot; beyond, 503 at once.", minimum=0),
    Setting("queue_timeout", "duration", "Seconds a request may wait for a slot.", minimum=0),
), model=Admission)

ADMIN = Section("admin", f"The admin API (/admin/). {ADMIN_TOKEN_ENV}, when set, is the token and outranks "
                "any token file; without a token the admin API answers loopback clients only.", (
    Setting("token_file", "string", "File holding the admin token; re-read on reload.", nullable=True,
            env=f"{ADMIN_TOKEN_ENV}_FILE"),
))

METRICS = Section("metrics", "Who may read /metrics, which carries model names and session labels. "
                  f"{METRICS_TOKEN_ENV}, when set, is the token and outranks any token file.", (
    Setting("token_file", "string", "File holding a token that scrapers must send (Authorization: Bearer); "
            "re-read on reload.", nullable=True, env=f"{METRICS_TOKEN_ENV}_FILE"),
    Setting("listen", "listen", "HOST:PORT where /metrics is served instead of the main listener (e.g. an "
            "address only Prometheus reaches). Takes effect at the next restart.", nullable=True),
))

TENANT_LIMITS = Section("limits", "What one tenant may use; a request over a limit gets 429 with Retry-After in "
                        "the client's protocol and is never sent to Ollama (error_type=\"rate_limited\"). With "
                        "`state:` (Redis) the limits hold across replicas.", (
    Setting("requests_per_minute", "integer", "Generation and embedding requests in any 60 s.", minimum=1,
            nullable=True),
    Setting("tokens_per_minute", "integer", "Tokens (prompt and completion, counted from the replies) in any 60 s: "
            "over it, refused from the next request on.", minimum=1, nullable=True),
    Setting("tokens_per_day", "integer", "Tokens per UTC day; refused until midnight UTC once spent.", minimum=1,
            nullable=True),
    Setting("concurrent", "integer", "Requests in flight at once.", minimum=1, nullable=True),
), model=TenantLimits)

TENANT = Section("tenant", "A team or app with its own keys, usage counters and limits. Its name is a label value "
                 "(from the config only, so bounded); its keys never reach logs, labels or Ollama.", (
    Setting("keys", "strings", "Its keys, or their SHA-256 digests written `sha256:<64 hex digits>` so the config "
            "never holds a key in clear."),
    Setting("keys_file", "string", "File of its keys (or digests), one a line (# starts a comment); re-read on "
            "reload, so keys rotate without a restart.", nullable=True),
    Setting("limits", "section", "", section=TENANT_LIMITS),
))

AUTH = Section("auth", "API keys clients must send (Authorization: Bearer); checked and not passed on to Ollama. "
               "`api_keys` is one tenant named `default`; `tenants` gives each team its own keys and limits.", (
    Setting("api_keys", "strings", "Accepted keys (tenant `default`)."),
    Setting("api_keys_file", "string", "File of accepted keys, one a line (# starts a comment).", nullable=True),
    Setting("tenants", "map", "Tenants by name.", section=TENANT),
))

def _decision_setting(name: str, default: object) -> Setting:
    low, high = LIMITS[name]
    kind = "integer" if isinstance(default, int) and not isinstance(default, bool) else "number"
    if name in DURATIONS:
        kind = "duration"
    return Setting(name.rsplit(".", 1)[-1], kind, DESCRIPTIONS[name], minimum=low, maximum=high,
                   nullable=name == "sequential.floor")


SEQUENTIAL = Section("sequential", "The sequential test on the stream of failures: the breaker's (a route's "
                     "`breaker` may override each key) and the rollout gate's.",
                     tuple(_decision_setting(f"sequential.{n}", getattr(SequentialSettings, n))
                           for n in ("rate_ratio", "alpha", "floor")), model=SequentialSettings)

NOTIFY = Section("notify", "Rollout notifications: one JSON POST per phase or step change (its `text` reads "
                 "well in Slack or Mattermost); a failed POST is logged and counted, never blocks the rollout.", (
    Setting("url", "base_url", "Incoming-webhook URL.", nullable=True),
    Setting("timeout", "duration", "Longest wait for the webhook.", minimum=0.1),
))

DECISIONS = Section("decisions", "The statistical settings of every automatic decision (breaker, rollout gate, "
                    "report, rollback alerts through `ollama-sidecar generate --config`), one vocabulary; see "
                    "docs/decisions.md.",
                    tuple(_decision_setting(n, getattr(DEFAULT_DECISIONS, n)) for n in LIMITS if "." not in n)
                    + (Setting("sequential", "section", "", section=SEQUENTIAL),), model=DecisionSettings)

STATE = Section("state", "Redis that several proxy replicas share their routing state, rollouts, counts and "
                "feedback ids through (docs/replicas.md). `state: redis://host:6379/0` is short for "
                f"`state: {{url: ...}}`. The password comes from the URL, {REDIS_PASSWORD_ENV} or "
                f"{REDIS_PASSWORD_ENV}_FILE, and is never shown.", (
    Setting("url", "string", "redis://[:password@]host:port/db, or rediss:// for TLS; redis-py's options may "
            "follow as a query (rediss://host:6380/0?ssl_ca_certs=/etc/redis/ca.pem for a private CA).",
            required="the Redis to share state through"),
    Setting("key_prefix", "string", "Prefix of every key, so several deployments can share one Redis."),
    Setting("journal", "string", "File where an Alertmanager rollback received while Redis is down is written "
            "before it is acknowledged; replayed into Redis when it is back. Without one such a webhook is "
            "applied on this replica and answered 503, so Alertmanager retries.", nullable=True),
    Setting("import_from", "string", "A state_file imported once, on the first start against a Redis that holds "
            "no state under key_prefix yet (switching from one replica to several).", nullable=True),
    Setting("lease", "duration", "The rollout leader's lease: if the leader dies, another replica takes over "
            "within this.", minimum=1, maximum=600),
    Setting("sync_interval", "duration", "Time between two flushes of this replica's counts and request ids "
            "to Redis.", minimum=0.05, maximum=10),
    Setting("connect_timeout", "duration", "Longest wait for Redis on each call.", minimum=0.05, maximum=30),
), model=SharedStateConfig)

ROOT = Section("ollama-sidecar proxy configuration", "The proxy's YAML config file (--config). Every key follows "
               "flag > environment > this file > default, except that OLLAMA_HOST ranks below this file's "
               "upstream. A wrong setting stops start-up (or a reload) with a message naming the key.", (
    Setting("listen", "listen", "HOST:PORT to listen on ([IPv6]:PORT; an empty host is loopback). Takes effect "
            "at the next restart.", nullable=True, flag="--listen", env="OLLAMA_SIDECAR_LISTEN"),
    Setting("upstream", "ollama_url", "Ollama's address, written like OLLAMA_HOST: host, host:port or "
            "http(s)://host[:port][/path]. Must not be the proxy's own listen address.",
            flag="--upstream", env="OLLAMA_SIDECAR_UPSTREAM", env_below_file="OLLAMA_HOST"),
    Setting("upstreams", "map", "Several Ollama servers by name; replaces `upstream`. Each request goes to a "
            "healthy server that has the model, preferring one where it is loaded.", section=UPSTREAM),
    Setting("models", "map", "Where models are served, by model name.", section=MODEL),
    Setting("discovery_interval", "duration", "Time between two reads of each server's installed and loaded "
            "models (/api/tags, /api/ps).", minimum=0.1),
    Setting("health_interval", "duration", "Time between two health checks (/api/version) of each server.",
            minimum=0.1),
    Setting("health_timeout", "duration", "How long a health check may take.", minimum=0.01),
    Setting("retries", "integer", "Other servers tried when the chosen one fails before the first byte reached "
            "the client (refused, timed out, busy 503, a 5xx before the body).", minimum=0),
    Setting("routes", "map", "Route aliases by name.", section=ROUTE),
    Setting("state_file", "string", "File where rollbacks and changes made through the admin API survive "
            "restarts (one replica). Several replicas share their state through `state` (Redis) instead; "
            "setting both is an error.", nullable=True),
    Setting("state", "url_or_section", "", section=STATE, nullable=True),
    Setting("session_sources", "session_sources", "Where a request's session comes from, first match wins: "
            "`header:NAME` or `body:FIELD`."),
    Setting("session_label_cap", "integer", "Most session label values live at once; beyond, `other`.",
            minimum=0),
    Setting("session_label_ttl", "duration", "Seconds after which an unused session label value and its series "
            "are removed.", minimum=1),
    Setting("session_label", "choice", "What a session's label value is: `hash`, a short keyed hash of the "
            "session id (the default: /metrics never shows user ids; `ollama-sidecar session-label ID` turns a "
            "known id into its label), or `raw`, the id itself.", choices=("hash", "raw")),
    Setting("session_key_file", "string", "File holding the key of session label hashes, so labels stay the "
            "same across restarts and replicas. Without one, a key is created beside state_file (else per "
            f"process). {SESSION_KEY_ENV}, when set, is the key.", nullable=True, env=f"{SESSION_KEY_ENV}_FILE"),
    Setting("model_label_cap", "integer", "Most models asked for by name that get their own label value; "
            "beyond, `other`.", minimum=0),
    Setting("timeouts", "section", "", section=TIMEOUTS),
    Setting("max_body_bytes", "integer", "Largest request body; beyond, 413.", minimum=1),
    Setting("max_line_bytes", "integer", "Longest stream line parsed for its counts; a longer one is "
            "relayed unparsed.", minimum=1024),
    Setting("max_parsed_reply_bytes", "integer", "Largest non-stream reply checked and read for its counts; "
            "a longer one is relayed as it arrives.", minimum=1024),
    Setting("max_header_bytes", "integer", "Largest request header block, in all; beyond, 431.", minimum=1024),
    Setting("admission", "section", "", section=ADMISSION),
    Setting("admin", "section", "", section=ADMIN),
    Setting("auth", "section", "", section=AUTH),
    Setting("metrics", "section", "", section=METRICS),
    Setting("alertmanager_url", "base_url", "Alertmanager to reconcile with: its active rollback alerts are "
            "read every reconcile_interval.", nullable=True),
    Setting("reconcile_interval", "duration", "Seconds between two reads of Alertmanager's active alerts.",
            minimum=0.1),
    Setting("reconcile_grace", "duration", "Seconds an alert is left to its webhook before reconcile acts on it.",
            minimum=0),
    Setting("reload_interval", "duration", "Seconds between two checks of the config file for changes.",
            minimum=0.1),
    Setting("access_log", "boolean", "One JSON line per request on the ollama_sidecar.access logger."),
    Setting("session_active_window", "duration", "A session is active while it sent a request within this; "
            "then it expires (ollama_proxy_active_sessions, ollama_proxy_sessions_total).", minimum=1),
    Setting("session_tracking_cap", "integer", "Most sessions tracked at once for the session flow and "
            "regenerations (a keyed hash and a few numbers each); beyond, counted as overflow.", minimum=0),
    Setting("feedback_ttl", "duration", "How long an answer's X-Request-ID can be rated (/api/feedback, "
            "/v1/feedback).", minimum=1),
    Setting("feedback_cap", "integer", "Most recent request ids remembered for feedback.", minimum=0),
    Setting("decisions", "section", "", section=DECISIONS),
    Setting("notify", "section", "", section=NOTIFY),
    Setting("rollout_tick", "duration", "Time between two analyses of running rollouts.", minimum=0.05),
), model=ProxyConfig)


# --- parsing: one small function per section ----------------------------------------------------

def parse_config(data: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None, config_path: str | None = None) -> ProxyConfig:
    """Build a validated config from the file's mapping, the environment and CLI flags
    (``overrides``: top-level key -> value, None for a flag not given)."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_keys(flags, ROOT.names, "")
    inputs = Inputs(os.environ if environ is None else environ, flags)
    top = ROOT.read(data, "", inputs)
    plain = {s.name: top[s.name] for s in ROOT.settings
             if s.kind not in ("section", "map", "url_or_section") and s.name in top and s.name != "session_key_file"}
    metrics = METRICS.read(top.get("metrics"), "metrics", inputs)
    decisions = _parse_decisions(top.get("decisions"), inputs)
    notify = NOTIFY.read(top.get("notify"), "notify", inputs)
    model_upstreams, model_pins = _parse_models(top.get("models"), inputs)
    servers = _parse_servers(top.get("upstreams"), plain.get("upstream", ProxyConfig.upstream), inputs)
    for model, url in model_upstreams.items():
        name = _server_name(url)
        servers.setdefault(name, UpstreamServer(name, url, dedicated=True))
        model_pins[model] = (name,)
    for model, names in model_pins.items():
        unknown = [n for n in names if n not in servers]
        if unknown:
            raise ConfigError(f"models.{model}.upstreams", f"no server named {', '.join(unknown)} under `upstreams` "
                                                           f"(known: {', '.join(sorted(servers))})")
    config = ProxyConfig(
        **plain,
        model_upstreams=model_upstreams,
        servers=servers,
        model_pins=model_pins,
        decisions=decisions,
        notify_url=notify.get("url"),
        notify_timeout=notify.get("timeout", 5.0),
        routes={str(name): _parse_route(str(name), spec, inputs, decisions)
                for name, spec in mapping(top.get("routes"), "routes").items()},
        timeouts=Timeouts(**TIMEOUTS.read(top.get("timeouts"), "timeouts", inputs)),
        admission=Admission(**ADMISSION.read(top.get("admission"), "admission", inputs)),
        admin_token=_parse_admin(top.get("admin"), inputs),
        tenants=_parse_auth(top.get("auth"), inputs),
        session_key=_secret(inputs, SESSION_KEY_ENV, top.get("session_key_file"), "session_key_file"),
        metrics_token=_secret(inputs, METRICS_TOKEN_ENV, metrics.get("token_file"), "metrics.token_file"),
        metrics_listen=metrics.get("listen"),
        shared_state=_parse_state(top.get("state"), plain.get("state_file"), inputs),
        config_path=config_path,
    )
    _refuse_self_loops(config, inputs.origins)
    return config


def _parse_models(value: Any, inputs: Inputs) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    urls, pins = {}, {}
    for model, spec in mapping(value, "models").items():
        entry = MODEL.read(spec, f"models.{model}", inputs)
        if "upstream" in entry and "upstreams" in entry:
            raise ConfigError(f"models.{model}", "give `upstream` (a URL) or `upstreams` (server names), not both")
        if "upstream" in entry:
            urls[str(model)] = entry["upstream"]
        if entry.get("upstreams"):
            pins[str(model)] = tuple(entry["upstreams"])
    return urls, pins


def _parse_servers(value: Any, upstream: str, inputs: Inputs) -> dict[str, UpstreamServer]:
    """``upstreams:`` by name, else plain ``upstream`` as a fleet of one named "default"."""
    if value is None:
        return {DEFAULT_SERVER: UpstreamServer(DEFAULT_SERVER, upstream)}
    if inputs.origins.get("upstream") == "the config file":
        raise ConfigError("upstreams", "give `upstreams` (several servers) or `upstream` (one), not both")
    servers = {}
    for name, spec in mapping(value, "upstreams").items():
        name = str(name)
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"upstreams.{name}", "a server name is letters, digits, '-', '_' or '.'")
        servers[name] = UpstreamServer(name, **UPSTREAM.read(spec, f"upstreams.{name}", inputs))
    if not servers:
        raise ConfigError("upstreams", "needs at least one server")
    return servers


def _server_name(url: str) -> str:
    """A server given only by its URL (models.M.upstream) is named after its host and port."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _parse_decisions(value: Any, inputs: Inputs) -> DecisionSettings:
    given = DECISIONS.read(value, "decisions", inputs)
    if "sequential" in given:
        raw = given["sequential"]
        given["sequential"] = SEQUENTIAL.read(raw, "decisions.sequential", inputs)
        if isinstance(raw, dict) and "floor" in raw and raw["floor"] is None:
            given["sequential"]["floor"] = None  # null is a value here: Wald's plain test
    try:
        decisions = parse_decisions(given)
        check_ttft_slo(decisions, TIME_TO_FIRST_TOKEN.buckets)
    except DecisionSettingsError as exc:
        raise ConfigError(f"decisions.{exc.key}", exc.message) from None
    return decisions


def _parse_route(name: str, value: Any, inputs: Inputs, decisions: DecisionSettings) -> RouteConfig:
    key = f"routes.{name}"
    route = ROUTE.read(value, key, inputs)
    breaker = _parse_breaker(route.pop("breaker", None), f"{key}.breaker", inputs, decisions.sequential)
    rollout = _parse_rollout(route.pop("rollout", None), f"{key}.rollout", inputs, decisions)
    return RouteConfig(**route, breaker=breaker, rollout=rollout)


def _parse_rollout(value: Any, key: str, inputs: Inputs, decisions: DecisionSettings) -> RolloutConfig | None:
    if value is None:
        return None
    given = ROLLOUT.read(value, key, inputs)
    checks = CHECKS.read(given.pop("checks", None), f"{key}.checks", inputs)
    failure = RolloutCheck(**{**{"max": 0.03, "max_over_stable": 0.02},
                              **FAILURE_CHECK.read(checks.get("failure_ratio"), f"{key}.checks.failure_ratio",
                                                   inputs)})
    ttft = None
    if "ttft_over_slo" in checks:
        fields = TTFT_CHECK.read(checks["ttft_over_slo"], f"{key}.checks.ttft_over_slo", inputs)
        ttft = RolloutCheck(**{"slo": decisions.ttft_slo, "max_over_stable": decisions.ttft_margin, **fields})
        problem = not_a_bucket_bound(ttft.slo or 0.0, TIME_TO_FIRST_TOKEN.buckets)
        if problem:
            raise ConfigError(f"{key}.checks.ttft_over_slo.slo", problem)
    quality = {}
    for name, section in (("regeneration_ratio", REGENERATION_CHECK), ("negative_feedback", NEGATIVE_FEEDBACK_CHECK)):
        if name in checks:
            fields = section.read(checks[name], f"{key}.checks.{name}", inputs)
            quality[name] = RolloutCheck(**{"max_over_stable": decisions.quality_margin, **fields})
    analysis = ANALYSIS.read(given.pop("analysis", None), f"{key}.analysis", inputs)
    return RolloutConfig(**given, failure_ratio=failure, ttft_over_slo=ttft, **quality,
                         analysis_prometheus=analysis.get("prometheus"))


def _parse_breaker(value: Any, key: str, inputs: Inputs, sequential: SequentialSettings) -> BreakerConfig:
    given = BREAKER.read(value, key, inputs)
    given.setdefault("enabled", bool(value))  # a breaker with any setting is on unless it says otherwise
    if isinstance(value, dict) and "floor" in value and value["floor"] is None:
        given["floor"] = None  # null is a value here: Wald's plain test, not "the default"
    for name in ("rate_ratio", "alpha", "floor"):  # unset here: the config's decisions.sequential
        if name not in given:
            given[name] = getattr(sequential, name)
    return BreakerConfig(**given)


def _parse_admin(value: Any, inputs: Inputs) -> str | None:
    """The token is OLLAMA_SIDECAR_ADMIN_TOKEN, else the content of ``admin.token_file``
    (itself flag > OLLAMA_SIDECAR_ADMIN_TOKEN_FILE > file)."""
    admin = ADMIN.read(value, "admin", inputs)
    token = inputs.environ.get(ADMIN_TOKEN_ENV) or None
    if token is None and admin.get("token_file"):
        token = _read_secret_file(admin["token_file"], "admin.token_file")
    return token


def _secret(inputs: Inputs, env: str, path: str | None, key: str) -> str | None:
    """A secret: the environment variable ``env`` itself, else the content of the file at
    ``path`` (whose own precedence the section already resolved)."""
    value = inputs.environ.get(env) or None
    if value is None and path:
        value = _read_secret_file(path, key)
    return value


def _parse_state(value: Any, state_file: str | None, inputs: Inputs) -> SharedStateConfig | None:
    if value is None:
        return None
    spec = STATE.read({"url": value} if isinstance(value, str) else value, "state", inputs)
    if state_file:
        raise ConfigError("state", "set `state` (Redis, for several replicas) or `state_file` (one replica), "
                                   "not both; to move a state file into Redis give it as state.import_from")
    url, password = split_redis_url(spec.pop("url"))
    password = password or _secret(inputs, REDIS_PASSWORD_ENV, inputs.environ.get(f"{REDIS_PASSWORD_ENV}_FILE"),
                                   f"{REDIS_PASSWORD_ENV}_FILE")
    return SharedStateConfig(url=url, password=password, **spec)


def split_redis_url(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password): the first is safe to log and show."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("redis", "rediss"):  # never quote the URL: it may hold the password
        raise ConfigError("state.url", "must start with redis:// or rediss:// (TLS)"
                          + (f", got {parts.scheme}://" if parts.scheme.isalnum() else ""))
    if not parts.hostname:
        raise ConfigError("state.url", "has no host (redis://host:6379/0)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("state.url", "has a port that is not a number between 0 and 65535") from None
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError("state.url", f"database must be a number (redis://host:6379/0), got {db!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    # redis-py's own options ride in the query (?ssl_ca_certs=/etc/redis/ca.pem for a
    # private CA): kept, except a password, which joins the others.
    query = parse_qsl(parts.query, keep_blank_values=True)
    password = next((v for k, v in query if k == "password"), None)
    options = urlencode([(k, v) for k, v in query if k != "password"])
    tail = f"/{db}" + (f"?{options}" if options else "")
    user = f"{parts.username}@" if parts.username and parts.password is not None else ""
    if parts.username and parts.password is None:  # redis://secret@host: the old password-only form
        return f"{parts.scheme}://{host}:{port or 6379}{tail}", unquote(parts.username)
    # percent-encoded in the URL (p%40ss for p@ss), sent as itself
    return f"{parts.scheme}://{user}{host}:{port or 6379}{tail}", (
        unquote(parts.password) if parts.password is not None else password)


DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
SHA256_KEY = re.compile(r"sha256:([0-9a-fA-F]{64})")


def _parse_auth(value: Any, inputs: Inputs) -> dict[str, TenantConfig]:
    """Every tenant with its key digests. ``api_keys`` is the tenant ``default``; a key may be
    given as ``sha256:<hex>``. A key in two tenants is refused, naming both, never the key."""
    auth = AUTH.read(value, "auth", inputs)
    sources: dict[str, tuple[str, list[str], dict[str, Any]]] = {}
    old = list(auth.get("api_keys", ())) + _key_lines(auth.get("api_keys_file"), "auth.api_keys_file")
    if old:
        sources[DEFAULT_TENANT] = ("auth.api_keys", old, {})
    for name, spec in mapping(auth.get("tenants"), "auth.tenants").items():
        where = f"auth.tenants.{name}"
        if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
            raise ConfigError(where, "a tenant name is 1-63 letters, digits, '.', '_' or '-', starting with a letter "
                                     "or digit (it becomes a label value)")
        if name in sources:
            raise ConfigError(where, "tenant `default` is what auth.api_keys already is: use one or the other")
        entry = TENANT.read(spec, where, inputs)
        keys = list(entry.get("keys", ())) + _key_lines(entry.get("keys_file"), f"{where}.keys_file")
        if not keys:
            raise ConfigError(where, "has no keys: give `keys` or `keys_file`")
        limits = TENANT_LIMITS.read(entry.get("limits"), f"{where}.limits", inputs)
        sources[name] = (f"{where}.keys", keys, limits)
    tenants: dict[str, TenantConfig] = {}
    owner: dict[bytes, str] = {}
    for name, (where, keys, limits) in sources.items():
        digests = set()
        for key in keys:
            digest = key_digest(key)
            if owner.get(digest, name) != name:
                raise ConfigError(where, f"a key of tenant {name!r} is also a key of tenant {owner[digest]!r}")
            owner[digest] = name
            digests.add(digest)
        tenants[name] = TenantConfig(name, frozenset(digests), TenantLimits(**limits))
    return tenants


def key_digest(key: str) -> bytes:
    """The SHA-256 digest a key is known by: given as ``sha256:<hex>``, or computed."""
    match = SHA256_KEY.fullmatch(key.strip())
    if match:
        return bytes.fromhex(match.group(1))
    return hashlib.sha256(key.strip().encode("utf-8", "surrogateescape")).digest()


def _key_lines(path: str | None, key: str) -> list[str]:
    if not path:
        return []
    text = _read_secret_file(path, key)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _read_secret_file(path: str, key: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


# --- an upstream that is the proxy itself ------------------------------------------------------

def _refuse_self_loops(config: ProxyConfig, origins: Mapping[str, str]) -> None:
    """A proxy whose upstream is its own listen address would forward every request back to
    itself until the connections run out; refuse to start (or reload) and say why."""
    upstreams = {"upstream": config.upstream}
    upstreams.update({f"models.{m}.upstream": url for m, url in config.model_upstreams.items()})
    upstreams.update({f"upstreams.{s.name}.url": s.url for s in config.servers.values()
                      if s.name != DEFAULT_SERVER})
    for key, url in upstreams.items():
        if not _reaches(url, config.listen):
            continue
        origin = origins.get(key, "the default")
        if origin == "OLLAMA_HOST":
            fix = ("OLLAMA_HOST, exported in this shell to point clients at the proxy, is the usual cause; say where "
                   "Ollama is with --upstream, OLLAMA_SIDECAR_UPSTREAM or `upstream:` in the config file")
        else:
            fix = f"Point {key} at Ollama, not at the proxy"
        raise ConfigError(key, f"{url} (from {origin}) is the proxy's own listen address {config.listen} (from "
                               f"{origins.get('listen', 'the default')}): the proxy would forward every request "
                               f"to itself. {fix}")


def _reaches(url: str, listen: str) -> bool:
    """Whether a connection to ``url`` from this machine lands on a listener at ``listen``."""
    host, port = parse_listen(listen)
    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if port == 0 or target_port != port:
        return False
    here, there = _host(host), _host(target.hostname or "")
    if here == there:
        return True
    if here in ("0.0.0.0", "::"):  # every interface, loopback included
        return _is_this_machine(there)
    return _is_loopback(here) and _is_loopback(there)


def _host(host: str) -> str:
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def _is_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


# --- the schema --------------------------------------------------------------------------------

def config_schema() -> dict[str, Any]:
    """The config file's JSON Schema (draft 2020-12), from the same declarations as the checks."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **ROOT.schema()}


def render_config_schema() -> str:
    """``docs/config.schema.json``'s text: stable key order, two-space indent, trailing newline."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def load_config(path: str | None, *, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> ProxyConfig:
    """Read and validate the YAML file at ``path`` (if any) with env and CLI overrides."""
    data: Any = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("(config file)", f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("(config file)", f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, environ=environ, overrides=overrides, config_path=path)
