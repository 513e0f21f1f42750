"""How one key of the config file is declared: its check, its precedence, its JSON Schema.

:mod:`proxy.config` declares every key once, as a :class:`Setting` inside a
:class:`Section`; this module turns those declarations into the three things the proxy
needs from them, so none is written twice: reading a section of the file (unknown keys
refused, every value checked, every error naming its key), resolving each key from flag,
environment and file by one rule (:func:`resolve`), and describing the section in JSON
Schema (draft 2020-12) for editors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from proxy.common.durations import PATTERN as DURATION_PATTERN
from proxy.common.durations import parse_duration
from proxy.common.listen import parse_listen
from proxy.common.ollama_host import parse_ollama_host


class ConfigError(ValueError):
    """A setting is wrong; the message starts with the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# --- value checks: each returns the checked value or raises ConfigError naming the key ------

def mapping(value: Any, key: str) -> Mapping[str, Any]:
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


def _duration(value: Any, key: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    if minimum is not None and seconds < minimum:
        raise ConfigError(key, f"must be at least {minimum:g}s, got {value!r}")
    if maximum is not None and seconds > maximum:
        raise ConfigError(key, f"must be at most {maximum:g}s, got {value!r}")
    return seconds


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def check_keys(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
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


def _steps(value: Any, key: str) -> tuple[float | str, ...]:
    """Rising percentages of a rollout, with ``pause`` where it should wait for a person."""
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list such as [1, 5, 20, 50, pause]")
    out: list[float | str] = []
    last = 0.0
    for i, item in enumerate(value):
        if item == "pause":
            out.append("pause")
            continue
        weight = _number(item, f"{key}[{i}]", minimum=0.001, maximum=100)
        if weight <= last:
            raise ConfigError(f"{key}[{i}]", f"steps must rise: {weight:g} after {last:g}")
        out.append(weight)
        last = weight
    if last == 0.0:
        raise ConfigError(key, "needs at least one percentage")
    return tuple(out)


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of strings")
    return tuple(_string(item, f"{key}[{i}]") for i, item in enumerate(value))


# --- kinds of value: how each is checked, and how the schema shows it ---------------------------

# JSON Schema patterns (ECMA 262, unanchored) that accept what the checks above accept.
_TEXT = r"\S"
_PORT = r"0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LISTEN = r"^\s*(\[[^\]]*\]|[^:\[\]]*):" + _PORT + r"\s*$"
_OLLAMA_URL = r"^(?=.*\S)\s*(https?://|(?!.*://))"  # no scheme, or http(s)://, as OLLAMA_HOST
_SOURCE = r"^\s*(header|body):.*\S"

# kind: (check, schema). Kinds "section" and "map" hold mappings that their own parser reads.
_KINDS: dict[str, tuple[Callable[[Setting, Any, str], Any], Callable[[Setting], dict[str, Any]]]] = {
    "number": (lambda s, v, k: _number(v, k, minimum=s.minimum, maximum=s.maximum),
               lambda s: _bounds({"type": "number"}, s)),
    "integer": (lambda s, v, k: _number(v, k, minimum=s.minimum, maximum=s.maximum, integer=True),
                lambda s: _bounds({"type": "integer"}, s)),
    "duration": (lambda s, v, k: _duration(v, k, minimum=s.minimum, maximum=s.maximum),
                 lambda s: {"oneOf": [_bounds({"type": "number"}, s),
                                      {"type": "string", "pattern": DURATION_PATTERN}]}),
    "boolean": (lambda s, v, k: _bool(v, k), lambda s: {"type": "boolean"}),
    "steps": (lambda s, v, k: _steps(v, k),
              lambda s: {"type": "array", "minItems": 1, "items": {"oneOf": [
                  {"type": "number", "exclusiveMinimum": 0, "maximum": 100}, {"const": "pause"}]}}),
    "string": (lambda s, v, k: _string(v, k), lambda s: {"type": "string", "pattern": _TEXT}),
    "choice": (lambda s, v, k: _choice(v, k, s.choices), lambda s: {"type": "string", "enum": list(s.choices)}),
    "base_url": (lambda s, v, k: _string(v, k).rstrip("/"), lambda s: {"type": "string", "pattern": _TEXT}),
    "listen": (lambda s, v, k: _listen(v, k), lambda s: {"type": "string", "pattern": _LISTEN}),
    "ollama_url": (lambda s, v, k: _url(v, k), lambda s: {"type": "string", "pattern": _OLLAMA_URL}),
    "session_sources": (lambda s, v, k: _session_sources(v, k),
                        lambda s: {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _SOURCE}}),
    "strings": (lambda s, v, k: _strings(v, k),
                lambda s: {"type": "array", "items": {"type": "string", "pattern": _TEXT}}),
    "section": (lambda s, v, k: v, lambda s: s.section.schema()),
    # a section that a single URL may stand for (`state: redis://host:6379/0` is `state: {url: ...}`)
    "url_or_section": (lambda s, v, k: v, lambda s: {"oneOf": [{"type": "string", "pattern": _TEXT},
                                                               s.section.schema()]}),
    "map": (lambda s, v, k: v,
            lambda s: {"type": ["object", "null"], "additionalProperties": s.section.schema()}),
}


def _bounds(schema: dict[str, Any], s: Setting) -> dict[str, Any]:
    if s.minimum is not None:
        schema["minimum"] = s.minimum
    if s.maximum is not None:
        schema["maximum"] = s.maximum
    return schema


_UNSET: Any = object()


# --- a key, a section, and the one precedence rule --------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One key of the config file."""

    name: str
    kind: str  # a key of _KINDS
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False  # `key: null` in the file is the same as leaving the key out
    flag: str | None = None  # command-line flag that outranks everything
    env: str | None = None  # environment variable that outranks the file (string kinds only)
    env_below_file: str | None = None  # environment variable that the file outranks (OLLAMA_HOST)
    required: str | None = None  # why the key is required, when it is
    default: Any = _UNSET  # for the schema; else the default of the section's dataclass field
    section: Section | None = None  # kind "section": its keys; kind "map": each entry's keys
    choices: tuple[str, ...] = ()  # kind "choice": the accepted words

    def check(self, value: Any, key: str) -> Any:
        return _KINDS[self.kind][0](self, value, key)

    def schema(self, default: Any) -> dict[str, Any]:
        out = {"description": self.doc + self._precedence()} if self.doc else {}
        out.update(_KINDS[self.kind][1](self))
        if self.nullable and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if default is not _UNSET:
            out["default"] = default
        return out

    def _precedence(self) -> str:
        if not (self.flag or self.env or self.env_below_file):
            return ""
        order = [self.flag, self.env, "this file", self.env_below_file, "default"]
        return " Precedence: " + " > ".join(o for o in order if o) + "."


@dataclass(frozen=True)
class Inputs:
    """What a config is resolved from besides the file; ``origins`` records, per key, what set it."""

    environ: Mapping[str, str]
    flags: Mapping[str, Any]
    origins: dict[str, str] = field(default_factory=dict)


def resolve(s: Setting, key: str, file: Mapping[str, Any], inputs: Inputs) -> tuple[Any, str]:
    """The one precedence rule: flag > environment > config file > default.

    ``OLLAMA_HOST`` (a setting's ``env_below_file``) comes after the file, on purpose (see
    :mod:`proxy.config`). Returns the raw value and its origin (the flag, the variable,
    ``"the config file"``), or ``(_UNSET, "the default")``. An empty environment variable
    counts as unset, and so does ``key: null`` in the file for a nullable key."""
    if inputs.flags.get(key) is not None:
        return inputs.flags[key], s.flag or f"--{key}"
    if s.env and inputs.environ.get(s.env):
        return inputs.environ[s.env], s.env
    if s.name in file and not (file[s.name] is None and s.nullable):
        return file[s.name], "the config file"
    if s.env_below_file and inputs.environ.get(s.env_below_file):
        return inputs.environ[s.env_below_file], s.env_below_file
    return _UNSET, "the default"


@dataclass(frozen=True)
class Section:
    """A mapping of settings: the file's top level, a section, or one entry of a map."""

    title: str
    doc: str
    settings: tuple[Setting, ...]
    model: type | None = None  # the dataclass whose field defaults the schema shows
    nullable: bool = True  # `section: null` is an empty section
    needs: tuple[tuple[str, str, str], ...] = ()  # (key, other, problem): key above 0 needs other set

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.settings}

    def read(self, value: Any, key: str, inputs: Inputs) -> dict[str, Any]:
        """Check every key given (file, environment or flag); return {name: value} for those set."""
        data = mapping(value, key or "(config file)")
        check_keys(data, self.names, key)
        out = {}
        for s in self.settings:
            path = f"{key}.{s.name}" if key else s.name
            if s.required and s.name not in data:
                raise ConfigError(path, f"is required: {s.required}")
            raw, origin = resolve(s, path, data, inputs)
            if raw is _UNSET:
                continue
            inputs.origins[path] = origin
            try:
                out[s.name] = s.check(raw, path)
            except ConfigError as exc:
                if origin == "the config file":
                    raise
                raise ConfigError(exc.key, f"{exc.problem} (from {origin})") from None
        for name, other, problem in self.needs:
            if out.get(name, 0) > 0 and out.get(other) is None:
                raise ConfigError(f"{key}.{name}" if key else name, problem)
        return out

    def schema(self) -> dict[str, Any]:
        defaults = _json_defaults(self.model)
        out: dict[str, Any] = {"title": self.title, "description": self.doc,
                               "type": ["object", "null"] if self.nullable else "object"}
        out["properties"] = {s.name: s.schema(s.default if s.default is not _UNSET else defaults.get(s.name, _UNSET))
                             for s in self.settings}
        if required := [s.name for s in self.settings if s.required]:
            out["required"] = required
        if self.needs:
            out["allOf"] = [{"if": {"properties": {name: {"exclusiveMinimum": 0}}, "required": [name]},
                             "then": {"properties": {other: {"not": {"type": "null"}}}, "required": [other]}}
                            for name, other, _ in self.needs]
        out["additionalProperties"] = False
        return out


def _json_defaults(model: type | None) -> dict[str, Any]:
    """A dataclass's field defaults that a YAML file could spell (no None, no nested objects)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(model) if model else ():
        value = f.default if f.default is not dataclasses.MISSING else _UNSET
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (bool, int, float, str, list)):
            out[f.name] = value
    return out
