"""The proxy's settings: defaults, the YAML file, environment variables and flags.

A config is validated whole and turned into frozen dataclasses before anything uses it,
so a reload either replaces the old config entirely or not at all, and every error names
the key that is wrong (``routes.chat.canary_weight: must be between 0 and 100``).
Precedence: command-line flag > environment > config file > default.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from proxy.common.listen import parse_listen
from proxy.common.ollama_host import parse_ollama_host, resolve_ollama_url

DEFAULT_LISTEN = "127.0.0.1:11435"
DEFAULT_SESSION_SOURCES = ("header:X-Session-ID", "header:X-User-ID", "body:user")


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 600.0  # a 32B model can take minutes to load
    idle: float = 120.0  # between two reads of a reply, stream or not; streams have no total limit
    shutdown: float = 900.0  # on SIGTERM, how long requests in flight may still run


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


@dataclass(frozen=True)
class RouteConfig:
    stable: str
    canary: str | None = None
    canary_weight: float = 0.0
    auto_resume: bool = False
    session_sources: tuple[str, ...] | None = None  # None: those of the session label
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = DEFAULT_LISTEN
    upstream: str = "http://127.0.0.1:11434"
    model_upstreams: Mapping[str, str] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    state_file: str | None = None
    session_sources: tuple[str, ...] = DEFAULT_SESSION_SOURCES
    session_label_cap: int = 200
    session_label_ttl: float = 900.0
    model_label_cap: int = 100
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_body_bytes: int = 32 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    max_parsed_reply_bytes: int = 16 * 1024 * 1024  # longer non-stream replies are relayed unchecked
    max_header_bytes: int = 64 * 1024
    admission: Admission = field(default_factory=Admission)
    admin_token: str | None = field(default=None, repr=False)
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    alertmanager_url: str | None = None
    reconcile_interval: float = 15.0
    reconcile_grace: float = 10.0  # leave an alert this long to its webhook before acting on it
    reload_interval: float = 2.0
    access_log: bool = True
    config_path: str | None = None

    def upstream_for(self, model: str) -> str:
        return self.model_upstreams.get(model, self.upstream)


# --- validation helpers --------------------------------------------------------------------

def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _number(value: Any, key: str, *, minimum: float | None = None, maximum: float | None = None,
            integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(key, f"must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(where, f"unknown setting (known: {', '.join(sorted(allowed))})")


def _listen(value: Any, key: str) -> str:
    text = _string(value, key)
    try:
        parse_listen(text)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return text


def _url(value: Any, key: str) -> str:
    try:
        return parse_ollama_host(_string(value, key))
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _session_sources(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list such as ['header:X-Session-ID', 'body:user']")
    out = []
    for i, item in enumerate(value):
        text = _string(item, f"{key}[{i}]")
        kind, _, name = text.partition(":")
        if kind not in ("header", "body") or not name:
            raise ConfigError(f"{key}[{i}]", f"must be 'header:NAME' or 'body:FIELD', got {text!r}")
        out.append(text)
    return tuple(out)


def _breaker(value: Any, key: str) -> BreakerConfig:
    data = _mapping(value, key)
    _check_keys(data, {"enabled", "window", "min_requests", "failure_ratio", "stable_margin"}, key)
    d = BreakerConfig()
    margin = data.get("stable_margin", d.stable_margin)
    return BreakerConfig(
        enabled=_bool(data.get("enabled", True if data else False), f"{key}.enabled"),
        window=_number(data.get("window", d.window), f"{key}.window", minimum=1),
        min_requests=int(_number(data.get("min_requests", d.min_requests), f"{key}.min_requests",
                                 minimum=1, integer=True)),
        failure_ratio=_number(data.get("failure_ratio", d.failure_ratio), f"{key}.failure_ratio",
                              minimum=0, maximum=1),
        stable_margin=None if margin is None else _number(margin, f"{key}.stable_margin", minimum=0, maximum=1),
    )


def parse_route(name: str, value: Any) -> RouteConfig:
    key = f"routes.{name}"
    data = _mapping(value, key)
    _check_keys(data, {"stable", "canary", "canary_weight", "auto_resume", "session_sources", "breaker"}, key)
    if "stable" not in data:
        raise ConfigError(f"{key}.stable", "is required: the model that serves the route")
    canary = data.get("canary")
    weight = _number(data.get("canary_weight", 0), f"{key}.canary_weight", minimum=0, maximum=100)
    if canary is None and weight > 0:
        raise ConfigError(f"{key}.canary_weight", "is above 0 but the route has no canary model")
    sources = data.get("session_sources")
    return RouteConfig(
        stable=_string(data["stable"], f"{key}.stable"),
        canary=None if canary is None else _string(canary, f"{key}.canary"),
        canary_weight=weight,
        auto_resume=_bool(data.get("auto_resume", False), f"{key}.auto_resume"),
        session_sources=None if sources is None else _session_sources(sources, f"{key}.session_sources"),
        breaker=_breaker(data.get("breaker"), f"{key}.breaker"),
    )


def _read_secret_file(path: str, key: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


TOP_LEVEL_KEYS = {
    "listen", "upstream", "models", "routes", "state_file", "session_sources", "session_label_cap",
    "session_label_ttl", "model_label_cap", "timeouts", "max_body_bytes", "max_line_bytes", "admission",
    "max_parsed_reply_bytes", "max_header_bytes", "admin",
    "auth", "alertmanager_url", "reconcile_interval", "reconcile_grace", "reload_interval", "access_log",
}


def parse_config(data: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None, config_path: str | None = None) -> ProxyConfig:
    """Build a validated config from the file's mapping, the environment and CLI overrides."""
    env = os.environ if environ is None else environ
    data = dict(_mapping(data, "(config file)"))
    _check_keys(data, TOP_LEVEL_KEYS, "")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    d = ProxyConfig()

    listen = data.get("listen") or env.get("OLLAMA_SIDECAR_LISTEN") or d.listen
    if "upstream" in data:
        upstream = _url(data["upstream"], "upstream")
    else:
        upstream = resolve_ollama_url(None, env)

    models = _mapping(data.get("models"), "models")
    model_upstreams = {}
    for model, spec in models.items():
        spec = _mapping(spec, f"models.{model}")
        _check_keys(spec, {"upstream"}, f"models.{model}")
        if "upstream" in spec:
            model_upstreams[str(model)] = _url(spec["upstream"], f"models.{model}.upstream")

    routes = {str(name): parse_route(str(name), spec)
              for name, spec in _mapping(data.get("routes"), "routes").items()}

    timeouts_data = _mapping(data.get("timeouts"), "timeouts")
    _check_keys(timeouts_data, {"connect", "first_byte", "idle", "shutdown"}, "timeouts")
    timeouts = Timeouts(**{k: _number(v, f"timeouts.{k}", minimum=0.001) for k, v in timeouts_data.items()})

    adm = _mapping(data.get("admission"), "admission")
    _check_keys(adm, {"max_in_flight", "max_queue", "queue_timeout"}, "admission")
    admission = Admission(
        max_in_flight=int(_number(adm.get("max_in_flight", 0), "admission.max_in_flight", minimum=0, integer=True)),
        max_queue=int(_number(adm.get("max_queue", Admission.max_queue), "admission.max_queue", minimum=0, integer=True)),
        queue_timeout=_number(adm.get("queue_timeout", Admission.queue_timeout), "admission.queue_timeout", minimum=0),
    )

    admin = _mapping(data.get("admin"), "admin")
    _check_keys(admin, {"token_file"}, "admin")
    admin_token = env.get("OLLAMA_SIDECAR_ADMIN_TOKEN") or None
    token_file = env.get("OLLAMA_SIDECAR_ADMIN_TOKEN_FILE") or admin.get("token_file")
    if admin_token is None and token_file:
        admin_token = _read_secret_file(str(token_file), "admin.token_file")

    auth = _mapping(data.get("auth"), "auth")
    _check_keys(auth, {"api_keys", "api_keys_file"}, "auth")
    keys: set[str] = set()
    raw_keys = auth.get("api_keys", [])
    if not isinstance(raw_keys, list):
        raise ConfigError("auth.api_keys", "must be a list of strings")
    keys.update(_string(k, f"auth.api_keys[{i}]") for i, k in enumerate(raw_keys))
    if auth.get("api_keys_file"):
        text = _read_secret_file(str(auth["api_keys_file"]), "auth.api_keys_file")
        keys.update(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))

    state_file = data.get("state_file")
    am_url = data.get("alertmanager_url")
    return ProxyConfig(
        listen=_listen(listen, "listen"),
        upstream=upstream,
        model_upstreams=model_upstreams,
        routes=routes,
        state_file=None if state_file is None else _string(state_file, "state_file"),
        session_sources=_session_sources(data["session_sources"], "session_sources")
        if "session_sources" in data else d.session_sources,
        session_label_cap=int(_number(data.get("session_label_cap", d.session_label_cap), "session_label_cap",
                                      minimum=0, integer=True)),
        session_label_ttl=_number(data.get("session_label_ttl", d.session_label_ttl), "session_label_ttl", minimum=1),
        model_label_cap=int(_number(data.get("model_label_cap", d.model_label_cap), "model_label_cap",
                                    minimum=0, integer=True)),
        timeouts=timeouts,
        max_body_bytes=int(_number(data.get("max_body_bytes", d.max_body_bytes), "max_body_bytes",
                                   minimum=1, integer=True)),
        max_line_bytes=int(_number(data.get("max_line_bytes", d.max_line_bytes), "max_line_bytes",
                                   minimum=1024, integer=True)),
        max_parsed_reply_bytes=int(_number(data.get("max_parsed_reply_bytes", d.max_parsed_reply_bytes),
                                           "max_parsed_reply_bytes", minimum=1024, integer=True)),
        max_header_bytes=int(_number(data.get("max_header_bytes", d.max_header_bytes), "max_header_bytes",
                                     minimum=1024, integer=True)),
        admission=admission,
        admin_token=admin_token,
        api_keys=frozenset(keys),
        alertmanager_url=None if am_url is None else _string(am_url, "alertmanager_url").rstrip("/"),
        reconcile_grace=_number(data.get("reconcile_grace", d.reconcile_grace), "reconcile_grace", minimum=0),
        reconcile_interval=_number(data.get("reconcile_interval", d.reconcile_interval), "reconcile_interval",
                                   minimum=0.1),
        reload_interval=_number(data.get("reload_interval", d.reload_interval), "reload_interval", minimum=0.1),
        access_log=_bool(data.get("access_log", True), "access_log"),
        config_path=config_path,
    )


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
