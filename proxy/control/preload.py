"""Before a rollout's first step: the canary must exist where it will be served, and be loaded.

A misspelled canary should fail ``rollout start``, not the first 1 % of users, and the
first users should not pay for a cold load (at 1 % the canary is often cold). So the
start asks the canary's Ollama for the model (``POST /api/show``: 404 when it is not
installed) and loads it (``POST /api/generate`` with no prompt, which Ollama answers once
the model is in memory).
"""

from __future__ import annotations

import aiohttp

from proxy.control.plane import RouteError


async def prepare_canary(session: aiohttp.ClientSession, upstream: str, model: str, *, timeout: float) -> None:
    """Raise :class:`RouteError` (400 not installed, 502 unreachable or failing) unless
    ``model`` is installed on ``upstream`` and loaded."""
    base = upstream.rstrip("/")
    try:
        async with session.post(f"{base}/api/show", json={"model": model},
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status == 404:
                raise RouteError(400, f"the canary {model!r} is not installed on {upstream} (ollama pull {model})")
            if resp.status >= 400:
                raise RouteError(502, f"{upstream} answered {resp.status} to /api/show for {model!r}")
        async with session.post(f"{base}/api/generate", json={"model": model},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status >= 400:
                raise RouteError(502, f"{upstream} could not load {model!r} (HTTP {resp.status})")
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RouteError(502, f"cannot prepare the canary {model!r} on {upstream}: {type(exc).__name__}") from None
