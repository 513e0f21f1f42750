"""A tiny synchronous client for the simulator's control endpoint (tests, demo, benches)."""

from __future__ import annotations

from typing import Any

import requests

TIMEOUT = 5.0


def _check(response: requests.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise ValueError(f"simulator control: HTTP {response.status_code}: {response.text}")
    return response.json()


def set_profile(url: str, model: str, **fields: Any) -> dict[str, Any]:
    """Change some fields of ``model``'s profile; returns the whole new profile."""
    return _check(requests.patch(f"{url}/_simulator/models/{model}", json=fields, timeout=TIMEOUT))["profile"]


def get_profiles(url: str) -> dict[str, dict[str, Any]]:
    return _check(requests.get(f"{url}/_simulator/models", timeout=TIMEOUT))["models"]


def get_stats(url: str) -> dict[str, Any]:
    """``{"requests": {model: {outcome: n}}, "total": n, "loaded": [model, ...], "scheduler": {"parallel": n,
    "max_queue": n, "queued": n, "busy": n, "models": {model: {"slots", "in_flight", "queued", "busy"}}}}``."""
    return _check(requests.get(f"{url}/_simulator/stats", timeout=TIMEOUT))


def set_scheduler(url: str, **limits: Any) -> dict[str, Any]:
    """Change ``parallel`` (slots per model; None: no limit) and/or ``max_queue``; returns both."""
    return _check(requests.patch(f"{url}/_simulator/scheduler", json=limits, timeout=TIMEOUT))


def reset(url: str) -> dict[str, dict[str, Any]]:
    """Profiles and scheduler limits back to the start's, nothing loaded, stats cleared."""
    return _check(requests.post(f"{url}/_simulator/reset", timeout=TIMEOUT))["models"]


def unload(url: str, model: str) -> None:
    """Make ``model`` idle now, so the next request pays its cold load."""
    _check(requests.post(f"{url}/_simulator/unload/{model}", timeout=TIMEOUT))
