"""Per-model behaviour of the simulator, read from YAML and changed at run time.

A profile is the only knob a test or the demo turns: making a canary slow or broken is a
field change, so every field is validated here once (the control endpoint and the YAML
loader share it) and a bad value is refused with a message instead of surfacing later as
a confusing stream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_PROFILES_PATH = Path(__file__).with_name("default_profiles.yaml")

KINDS = ("chat", "embedding")


class ProfileError(ValueError):
    """A profile field is unknown or its value is unusable."""


@dataclass(frozen=True)
class ModelProfile:
    """How one simulated model behaves. Times in seconds, rates in [0, 1]."""

    kind: str = "chat"
    ttft_seconds: float = 0.08
    tokens_per_second: float = 80.0
    output_tokens: int = 30
    cold_load_seconds: float = 0.5
    keep_alive_seconds: float = 300.0  # Ollama's default 5m; < 0 keeps it loaded forever
    error_rate: float = 0.0
    midstream_error_rate: float = 0.0
    midstream_cut_rate: float = 0.0
    hang_rate: float = 0.0
    size_bytes: int = 5_000_000_000
    vram_ratio: float = 1.0
    context_length: int = 4096
    family: str = "llama"
    parameter_size: str = "8.0B"
    quantization_level: str = "Q4_K_M"
    embedding_dim: int = 384
    # How good its answers are to the simulated users of the demo's traffic (the share they
    # accept; the others are regenerated or rated down). No effect on the HTTP exchange: a
    # worse model that never errors.
    answer_quality: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> "ModelProfile":
        """A copy with ``changes`` applied, validated as a whole."""
        return profile_from_dict({**self.to_dict(), **dict(changes)})


_TYPES_BY_NAME = {"str": str, "float": float, "int": int}
FIELD_TYPES: dict[str, type] = {f.name: _TYPES_BY_NAME[str(f.type)] for f in fields(ModelProfile)}
RATE_FIELDS = ("error_rate", "midstream_error_rate", "midstream_cut_rate", "hang_rate", "vram_ratio",
               "answer_quality")
NON_NEGATIVE_FIELDS = ("ttft_seconds", "cold_load_seconds", "size_bytes")
POSITIVE_FIELDS = ("tokens_per_second", "output_tokens", "context_length", "embedding_dim")


def _coerce(name: str, value: Any) -> Any:
    want = FIELD_TYPES[name]
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{name} must be an integer, got {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ProfileError(f"{name} must be a non-empty string, got {value!r}")
    return value


def profile_from_dict(data: Mapping[str, Any]) -> ModelProfile:
    """Build a validated profile; unspecified fields take the dataclass defaults."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"a profile must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELD_TYPES))
    if unknown:
        raise ProfileError(f"unknown profile field(s) {', '.join(unknown)}; known: {', '.join(FIELD_TYPES)}")
    values = {name: _coerce(name, value) for name, value in data.items()}
    profile = ModelProfile(**values)
    for name in RATE_FIELDS:
        if not 0.0 <= getattr(profile, name) <= 1.0:
            raise ProfileError(f"{name} must be between 0 and 1, got {getattr(profile, name)}")
    for name in NON_NEGATIVE_FIELDS:
        if getattr(profile, name) < 0:
            raise ProfileError(f"{name} must be >= 0, got {getattr(profile, name)}")
    for name in POSITIVE_FIELDS:
        if getattr(profile, name) <= 0:
            raise ProfileError(f"{name} must be > 0, got {getattr(profile, name)}")
    if profile.kind not in KINDS:
        raise ProfileError(f"kind must be one of {', '.join(KINDS)}, got {profile.kind!r}")
    return profile


def profiles_from_dict(data: Mapping[str, Any]) -> dict[str, ModelProfile]:
    """``{"defaults": {...}, "models": {name: {...}}}`` → validated profiles by model name.

    ``defaults`` saves repeating shared fields; a model's own fields win.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping) or not data["models"]:
        raise ProfileError("profiles need a non-empty 'models' mapping of model name -> fields")
    unknown = sorted(set(data) - {"defaults", "models"})
    if unknown:
        raise ProfileError(f"unknown top-level key(s) {', '.join(unknown)}; expected 'defaults' and 'models'")
    defaults = data.get("defaults") or {}
    profiles: dict[str, ModelProfile] = {}
    for name, fields_ in data["models"].items():
        if not isinstance(name, str) or not name:
            raise ProfileError(f"model names must be non-empty strings, got {name!r}")
        try:
            profiles[name] = profile_from_dict({**defaults, **(fields_ or {})})
        except ProfileError as exc:
            raise ProfileError(f"model {name!r}: {exc}") from None
    return profiles


def load_profiles(path: str | Path = DEFAULT_PROFILES_PATH) -> dict[str, ModelProfile]:
    """Read a profiles YAML file (see ``default_profiles.yaml`` for the format)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return profiles_from_dict(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
